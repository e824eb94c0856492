//! builderd's Docker side. It knows nothing of builderd's config: callers hand it the few
//! values each step needs.
//!
//! Layout:
//! - [`engine`]: finding the engine (the configured address, `DOCKER_HOST`, the docker context,
//!   Docker Desktop's socket), connecting, and [`DockerError`].
//! - [`image`]: the build context (embedded from `context/`, or a directory), the image tag,
//!   the build.
//! - [`base`]: the base image: pulled (`debian:trixie-slim`), or on Linux made with debootstrap
//!   when no registry answers.
//! - [`container`]: the container's spec and privileges, its labels, its lifecycle, exec, logs.
//! - [`desktop`]: how to start the engine builderd looked for; Docker Desktop's settings that
//!   matter (Rosetta, CPUs, memory, disk, the default socket).
//! - [`probe`]: tiny static programs per architecture, to learn which systems really run.

pub mod base;
pub mod container;
pub mod desktop;
pub mod engine;
pub mod image;
pub use builderd_core::probe;

pub use container::{
    Event, Found, Inspected, LABEL_INSTANCE, LABEL_OWNER, LABEL_SPEC, LABEL_STATE_DIR, Privileges,
    Spec, create, exec, find, inspect, last_logs, logs_stream, name_taken_by_other, owner_id,
    remove, restart, start,
};
pub use engine::{
    DockerError, Endpoint, Engine, Resources, connect, hex, resolve_endpoint_in, resources,
};
pub use image::{
    Context, EMBEDDED_CONTEXT, ImageSpec, image_arch, image_exists, image_is_emulated,
};
