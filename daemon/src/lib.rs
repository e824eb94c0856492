//! builderd keeps a Linux Nix remote builder running in Docker for a Nix user on macOS (or Linux),
//! and keeps the files that point Nix and OpenSSH at it true.
//!
//! Layout:
//! - [`config`]: the TOML config, its platform defaults and its validation.
//! - [`protocol`]: every type that crosses the client socket, and its framing. Both binaries use it.
//! - [`keys`]: checking the user's key pair and the builder's host key; fingerprints.
//! - [`fault`]: faults injected on purpose in debug builds, for tests of failure.
//! - [`fsutil`]: atomic replace (mode and owner kept), directory locks, stale temp files.
//! - [`registration`]: the editors for machines, nix.conf, known_hosts and ssh_config, and the
//!   [`registration::Registrar`] that applies or removes builderd's entries.
//! - [`docker`]: the `builderd-docker` crate (engine, image and its base, container, probes),
//!   and what turns the config into the values it takes.
//! - [`doctor`]: the checks of `builderctl doctor` that need the daemon's knowledge.
//! - [`health`]: the SSH health check (russh, host key pinned).
//! - [`oneshot`]: what `builderctl` runs the `builderd` binary for: doctor's checks without a
//!   daemon, the container's log, removing the image.
//! - [`port`]: whether the host port is free, and which process holds it.
//! - [`hostnix`]: the host's Nix version and the store URI form it understands.
//! - [`state`]: what survives the daemon: the desired state and the files builderd created.
//! - [`supervisor`]: the one task that owns the builder and the remote builders: up, down,
//!   reconcile, health, events, the fleet.
//! - [`watcher`]: follows the files builderd keeps true, and reports their changes.
//! - [`root_equivalent`]: the builder a root service on Linux runs only with the administrator's consent.
//! - [`server`]: the Unix socket: peer credentials, framing, dispatch to the supervisor.
//! - [`client`]: connecting to the daemon (and starting it), used by `builderctl`.

pub use builderd_core::{client, config, protocol, served};

pub mod docker;
pub mod doctor;
pub mod fault;
pub mod fsutil;
pub mod health;
pub mod hostnix;
pub mod keys;
pub mod logline;
pub mod oneshot;
pub mod port;
pub mod registration;
pub mod relay;
pub mod root_equivalent;
pub mod server;
pub mod state;
pub mod supervisor;
pub mod watcher;

/// The daemon's version, reported in status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
