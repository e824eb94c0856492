//! The checks of `builderctl doctor` that need the daemon's knowledge: the engine's container,
//! the port, the key pair, the host's Nix and the files builderd keeps. The daemon answers the
//! `doctor` request with them; with no daemon running, `builderctl` runs `builderd doctor`,
//! which prints the same [`Report`] as JSON. The checks that must run as the user (their ssh,
//! root's ssh, a real build) are the client's.
//!
//! Each check looks at the effect itself (the engine's container, the files, `nix config
//! show`), never at what builderd believes it did.

mod builder;
mod engine;
mod files;
mod keys;
mod nix;
mod port;
mod remotes;

use builderd_core::doctor::{Finding, Report};
use builderd_core::protocol::Status;

use crate::config::Config;
use crate::docker::Endpoint;
use crate::registration::block;

/// The builder's container as the engine reports it.
struct Engine {
    state: String,
    running: bool,
    /// The host address and port that the engine publishes the container's port 22 on.
    published: Option<(String, u16)>,
}

/// Everything the checks look at, gathered once.
struct Ctx<'a> {
    cfg: &'a Config,
    /// The daemon's status; `None` when no daemon runs (`builderd doctor`).
    status: Option<&'a Status>,
    endpoint: Endpoint,
    engine: Result<(), String>,
    /// `None` when the engine has no such container (or cannot be asked).
    container: Option<Engine>,
}

impl Ctx<'_> {
    /// The daemon says healthy and the engine says the container runs.
    fn up(&self) -> bool {
        self.status.is_some_and(|s| s.healthy) && self.container.as_ref().is_some_and(|c| c.running)
    }

    /// Down on purpose: `builderctl down`, or no daemon and no container.
    fn down(&self) -> bool {
        match self.status {
            Some(s) => s.desired == "down",
            None => self.container.is_none(),
        }
    }

    /// Why the machines file does not carry the builder, when the daemon limits it to its user.
    fn limited(&self) -> Option<String> {
        self.status?
            .registrations
            .iter()
            .find(|r| r.kind == "machines" && r.state == crate::registration::SERVED_USER_ONLY)
            .map(|r| r.detail.clone().unwrap_or_default())
    }

    /// builderd's own line in the machines file.
    fn machines_line(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.cfg.registration.machines_file).ok()?;
        block::body(&text, &self.cfg.container_name).and_then(|b| b.first().cloned())
    }
}

type CheckFn = fn(&Ctx) -> Vec<Finding>;

/// The daemon's checks, by their name in [`builderd_core::doctor::ORDER`].
const CHECKS: &[(&str, CheckFn)] = &[
    ("builder", builder::check_builder),
    ("docker", engine::check_docker),
    ("rosetta", engine::check_rosetta),
    ("desktop", engine::check_desktop),
    ("port", port::check_port),
    ("keys", keys::check_keys),
    ("scope", nix::check_scope),
    ("nix-uri", nix::check_nix_uri),
    ("substitute", nix::check_substitute),
    ("builders", nix::check_builders),
    ("owners", files::check_owners),
    ("disk", builder::check_disk),
    ("caches", builder::check_caches),
    ("remotes", remotes::check_remotes),
];

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Asks the engine about builderd's container: its state and the port it publishes.
async fn engine_view(cfg: &Config, endpoint: &Endpoint) -> (Result<(), String>, Option<Engine>) {
    let d = match crate::docker::connect(endpoint).await {
        Ok(d) => d,
        Err(e) => return (Err(e.to_string()), None),
    };
    let Ok(Some(found)) = crate::docker::find(
        &d,
        &cfg.container_name,
        &crate::docker::owner_id(&cfg.state_dir),
    )
    .await
    else {
        return (Ok(()), None);
    };
    let published = crate::docker::inspect(&d, &found.id)
        .await
        .ok()
        .and_then(|c| c.published);
    (
        Ok(()),
        Some(Engine {
            state: found.state,
            running: found.running,
            published,
        }),
    )
}

/// Runs every check of the daemon's against `cfg` (its file read again when it changed: doctor
/// judges the config as it is now) and `status`, the daemon's own when one runs.
pub async fn report(cfg: &Config, status: Option<Status>) -> Report {
    let fresh = cfg.reloaded().ok().flatten();
    let cfg = fresh.unwrap_or_else(|| cfg.clone());
    let endpoint = crate::docker::resolve_endpoint(&cfg);
    let (engine, container) = engine_view(&cfg, &endpoint).await;
    // The checks run programs (`nix`, `lsof`) and read files: off the async workers.
    tokio::task::spawn_blocking(move || {
        let ctx = Ctx {
            cfg: &cfg,
            status: status.as_ref(),
            endpoint,
            engine,
            container,
        };
        let findings = CHECKS
            .iter()
            .flat_map(|(name, check)| {
                check(&ctx).into_iter().map(|mut f| {
                    f.check = name.to_string();
                    f
                })
            })
            .collect();
        Report {
            findings,
            up: ctx.up(),
            down: ctx.down(),
            machines_line: ctx.machines_line(),
            status: status.clone().map(Box::new),
        }
    })
    .await
    .expect("the doctor checks do not panic")
}
