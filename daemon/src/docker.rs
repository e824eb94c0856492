//! The Docker side as builderd's config drives it: the `builderd-docker` crate, re-exported,
//! and the few functions that turn the config into the narrow values that crate takes.

pub use builderd_docker::*;

use builderd_docker::base::{BaseError, BaseSpec, HostOs};

use crate::config::Config;

/// The engine `cfg` names, or the one the environment and the docker context name. A root
/// builderd on Linux serving another user uses root's engine only: the `DOCKER_HOST` of its own
/// environment (the unit's, which root wrote), else `/var/run/docker.sock`; never an engine the
/// user names (the config's `docker_host`, their docker context or socket), which could lie
/// about the container, its mounts and what it runs. (On macOS the engine is the user's Docker
/// Desktop, by design.)
pub fn resolve_endpoint(cfg: &Config) -> Endpoint {
    if cfg!(target_os = "linux") && crate::config::served_user().is_some() {
        return engine::root_endpoint(std::env::var("DOCKER_HOST").ok().as_deref());
    }
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
        // Only root makes a base (debootstrap needs it), and only where root alone may go.
        work_root: std::path::Path::new(crate::config::ROOT_WORK),
    };
    base::ensure(docker, &spec, HostOs::current(), say).await
}

/// How many builds the builder runs at once and with how many cores each: what the config
/// says, else what the engine gives the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    pub max_jobs: u32,
    pub cores: u32,
    /// What the engine reported; `None` when it could not be asked.
    pub engine: Option<Resources>,
}

impl Sizing {
    pub fn new(b: &crate::config::BuilderConfig, engine: Option<Resources>) -> Sizing {
        // One build per CPU, but no more than one per GiB, so that parallel builds do not run
        // a small VM out of memory. Without the engine's word, Nix's usual 4.
        let auto = engine.map_or(4, |r| {
            let gib = u32::try_from(r.memory_bytes >> 30).unwrap_or(u32::MAX);
            r.cpus.min(gib).max(1)
        });
        Sizing {
            max_jobs: b.max_jobs.unwrap_or(auto),
            // Each build may use every CPU (Nix's `cores = 0`), told by number.
            cores: b.cores.unwrap_or(engine.map_or(0, |r| r.cpus)),
            engine,
        }
    }
}

/// What the builder's container is created from.
pub fn spec(cfg: &Config, image: &str, sizing: &Sizing) -> Spec {
    let b = &cfg.builder;
    let mut env = vec![
        format!("NIX_BUILDER_MAX_JOBS={}", sizing.max_jobs),
        format!("NIX_BUILDER_CORES={}", sizing.cores),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BuilderConfig;

    #[test]
    fn sizing_follows_the_engine_unless_the_config_says() {
        let vm = |cpus, gib: u64| {
            Some(Resources {
                cpus,
                memory_bytes: gib << 30,
            })
        };
        let auto = BuilderConfig::default();
        let s = Sizing::new(&auto, vm(8, 16));
        assert_eq!((s.max_jobs, s.cores), (8, 8));
        // A VM short of memory runs fewer builds at once, never none.
        assert_eq!(Sizing::new(&auto, vm(8, 3)).max_jobs, 3);
        assert_eq!(Sizing::new(&auto, vm(2, 0)).max_jobs, 1);
        // The engine could not be asked: Nix's usual numbers.
        let s = Sizing::new(&auto, None);
        assert_eq!((s.max_jobs, s.cores), (4, 0));
        let set = BuilderConfig {
            max_jobs: Some(3),
            cores: Some(2),
            ..BuilderConfig::default()
        };
        let s = Sizing::new(&set, vm(8, 16));
        assert_eq!((s.max_jobs, s.cores), (3, 2));
    }
}
