//! The Docker side as builderd's config drives it: the `builderd-docker` crate, re-exported,
//! and the few functions that turn the config into the narrow values that crate takes.

pub use builderd_docker::*;

use builderd_docker::base::{BaseError, BaseSpec, HostOs};

use crate::config::Config;

/// The engine `cfg` names, or the one the environment and the docker context name.
pub fn resolve_endpoint(cfg: &Config) -> Endpoint {
    engine::resolve_endpoint(cfg.docker_host.as_deref(), &crate::config::home_dir())
}

/// The platform passed to the build: the configured one, else `linux/arm64` on Apple Silicon
/// and the engine's own elsewhere.
pub fn build_platform(cfg: &Config) -> String {
    cfg.image
        .platform
        .clone()
        .unwrap_or_else(|| image::default_build_platform(std::env::consts::ARCH))
}

/// The image tag for `cfg`, and the context it is built from.
pub fn image_for(cfg: &Config) -> Result<(String, Context), DockerError> {
    image::image_for(&ImageSpec {
        context: cfg.image.context.as_deref(),
        repository: &cfg.image.repository,
        base_image: &cfg.image.base_image,
        platform: &build_platform(cfg),
    })
}

/// Builds `tag` from `ctx` (from `base`, for the embedded context).
pub async fn build_image(
    docker: &Engine,
    cfg: &Config,
    tag: &str,
    ctx: &Context,
    base: Option<&str>,
    step: &(dyn Fn(String, Option<(u64, u64)>) + Send + Sync),
) -> Result<(), DockerError> {
    image::build_image(docker, tag, ctx, base, &build_platform(cfg), step).await
}

/// Makes the embedded context's base available; returns the image to build from.
pub async fn ensure_base(
    docker: &Engine,
    cfg: &Config,
    say: &(dyn Fn(String) + Send + Sync),
) -> Result<String, BaseError> {
    let spec = BaseSpec {
        image: &cfg.image.base_image,
        platform: &cfg.platform(),
        mirror: &cfg.image.debian_mirror,
        work_dir: &cfg.state_dir.join("base-rootfs"),
    };
    base::ensure(docker, &spec, HostOs::current(), say).await
}

/// What the builder's container is created from.
pub fn spec(cfg: &Config, image: &str) -> Spec {
    let b = &cfg.builder;
    let mut env = vec![
        format!("NIX_BUILDER_SANDBOX={}", b.sandbox),
        format!("NIX_BUILDER_SUBSTITUTERS={}", b.substituters),
        format!("NIX_BUILDER_MIN_FREE={}", b.min_free),
        format!("NIX_BUILDER_MAX_FREE={}", b.max_free),
    ];
    if let Some(k) = &b.trusted_public_keys {
        env.push(format!("NIX_BUILDER_TRUSTED_PUBLIC_KEYS={k}"));
    }
    if image_is_emulated(&cfg.platform(), std::env::consts::ARCH) {
        env.push("NIX_BUILDER_EMULATED=1".into());
    }
    Spec {
        name: cfg.container_name.clone(),
        owner: owner_id(&cfg.state_dir),
        state_dir: cfg.state_dir.clone(),
        image: image.to_string(),
        // On demand, builderd holds the port and relays to one the engine picks.
        port: if cfg.on_demand { 0 } else { cfg.port },
        volume: cfg.volume_dir(),
        privileges: Privileges::for_builder(b.privileged, b.sandbox),
        env,
    }
}

/// Removes the image built for `cfg`, unless a container still uses it. The base image stays:
/// it is shared, and making it again takes a while.
pub async fn purge_image(cfg: &Config) -> Result<Option<String>, DockerError> {
    let docker = connect(&resolve_endpoint(cfg)).await?;
    let (tag, _) = image_for(cfg)?;
    Ok(container::purge_image(&docker, &tag).await?.then_some(tag))
}
