//! The one task that owns the builder. Requests from clients, Docker events, health ticks and
//! file changes all arrive here over channels, so that everything that changes the builder or
//! its files happens one thing at a time.
//!
//! Architecture invariant: the supervisor reconciles. It computes what is wanted (from the
//! persisted desired state and the config), observes what is (the engine, the volume, the
//! files), acts on the difference, and records only what succeeded. A failure is reported in
//! status and retried with backoff; it never ends the daemon.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use russh::keys::PublicKey;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;
use crate::docker::{self, DockerError, Endpoint, Engine};
use crate::health;
use crate::keys::{self, ClientKeys};
use crate::protocol::{
    BuilderInfo, ContainerInfo, ErrorKind, HealthReport, HostKeyChange, PlatformInfo, Progress,
    State, Status,
};
use crate::registration::{self, Wanted};
use crate::state::{Desired, Persisted};

mod bring_up;
mod events;
mod fleet;
mod health_tick;
mod on_demand;
mod registrations;
mod retry;

pub use events::watch_events;
use registrations::restart_nix_daemon;
use retry::Retry;
pub use retry::backoff;

/// A failed request: its class and the message for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

impl Failure {
    fn new(kind: ErrorKind, message: impl std::fmt::Display) -> Failure {
        Failure {
            kind,
            message: message.to_string(),
        }
    }
}

impl From<DockerError> for Failure {
    fn from(e: DockerError) -> Failure {
        // A port another process holds is named with that process.
        let e = e.with_port_holder(crate::port::holder);
        let kind = match &e {
            e if e.is_unreachable() => ErrorKind::Docker,
            DockerError::PortTaken { .. }
            | DockerError::PrivilegedRefused { .. }
            | DockerError::SandboxRefused { .. }
            | DockerError::OwnedByOther { .. }
            | DockerError::Context { .. } => ErrorKind::Invalid,
            _ => ErrorKind::Failed,
        };
        Failure::new(kind, e)
    }
}

pub type Reply = oneshot::Sender<Result<String, Failure>>;

/// What made the supervisor look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poke {
    /// The container exited without being asked to: counts towards a crash loop.
    ContainerDied,
    /// The container stopped after a kill or stop was asked for.
    ContainerStopped,
    ContainerRemoved,
    /// The engine answers again after an outage.
    DockerBack,
    DockerUnreachable,
    /// The engine's event stream ended (the engine restarted or went away).
    EventsEnded,
}

impl Poke {
    pub fn as_str(self) -> &'static str {
        match self {
            Poke::ContainerDied => "container-died",
            Poke::ContainerStopped => "container-stopped",
            Poke::ContainerRemoved => "container-removed",
            Poke::DockerBack => "docker-back",
            Poke::DockerUnreachable => "docker-unreachable",
            Poke::EventsEnded => "docker-events-ended",
        }
    }
}

/// What the supervisor is asked to do.
pub enum Command {
    Up {
        progress: mpsc::UnboundedSender<Progress>,
        reply: Reply,
    },
    Down {
        reply: Reply,
    },
    Check {
        reply: Reply,
    },
    Gc {
        reply: Reply,
    },
    /// Pin the host key a remote presented (or, with `forget`, unpin it).
    Trust {
        name: String,
        fingerprint: Option<String>,
        forget: bool,
        reply: Reply,
    },
    /// Something outside changed: a container event, the engine. Reconcile.
    Poke(Poke),
    /// The engine reported `action` for the container, `lag_ms` after its own timestamp.
    Seen {
        action: String,
        lag_ms: f64,
    },
}

/// The client side of the supervisor.
#[derive(Clone)]
pub struct Handle {
    pub commands: mpsc::Sender<Command>,
    pub status: watch::Receiver<Status>,
}

type Say<'a> = &'a (dyn Fn(Progress) + Send + Sync);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn step(stage: &str, message: impl Into<String>) -> Progress {
    Progress {
        stage: stage.into(),
        message: message.into(),
        current: None,
        total: None,
    }
}

pub struct Supervisor {
    cfg: Config,
    endpoint: Endpoint,
    docker: Option<Engine>,
    persisted: Persisted,
    status: watch::Sender<Status>,
    keys: Option<ClientKeys>,
    host_key: Option<PublicKey>,
    /// Repairs per registration file path.
    repairs: HashMap<String, u32>,
    /// Failures, crash-loop deaths, the next retry, since when unhealthy.
    retry: Retry,
    docker_wait_logged: bool,
    /// What was last registered; re-applied when a file is edited.
    wanted: Option<Wanted>,
    watcher: Option<crate::watcher::FileWatcher>,
    /// Where the container's sshd answers: the configured port, or on demand the one the
    /// engine picked (the relay holds the configured one).
    sshd_port: u16,
    on_demand: on_demand::OnDemand,
    /// Taken by `run`: connections asking to wake the builder.
    relay_events: Option<mpsc::Receiver<crate::relay::RelayEvent>>,
    /// The remote builders.
    fleet: fleet::Fleet,
    /// The builder's jobs and cores, from the engine's size as of the last bring-up.
    sizing: Option<docker::Sizing>,
}

impl Supervisor {
    pub fn new(cfg: Config) -> (Supervisor, watch::Receiver<Status>) {
        let endpoint = docker::resolve_endpoint(&cfg);
        let (persisted, corrupt) = Persisted::load(&cfg.state_dir);
        let state_file_problem = corrupt.map(|c| {
            let msg = format!(
                "{} could not be read ({}){}; taken as `up`, so that the builder stays: run `builderctl down` if you want it down",
                crate::state::path(&cfg.state_dir).display(),
                c.error,
                c.kept_at
                    .map(|k| format!(" and was kept as {}", k.display()))
                    .unwrap_or_default()
            );
            tracing::warn!("{msg}");
            msg
        });
        let status = Status {
            version: crate::VERSION.into(),
            protocol: crate::protocol::PROTOCOL,
            pid: std::process::id(),
            state: State::Down,
            healthy: false,
            desired: persisted.desired.as_str().into(),
            reason: None,
            port: cfg.port,
            up_since: None,
            container: None,
            host_key_fingerprint: persisted.host_key_fingerprint.clone(),
            host_key_changed: None,
            last_health: None,
            builder: None,
            registrations: Vec::new(),
            docker_host: format!("{} ({})", endpoint.host, endpoint.source),
            last_event: None,
            remotes: Vec::new(),
            state_file_problem,
            volume: Some(cfg.volume_dir().display().to_string()),
            sizing: None,
        };
        let (tx, rx) = watch::channel(status);
        let (relay_tx, relay_rx) = mpsc::channel(64);
        let activity = watch::channel(crate::relay::Activity { open: 0, total: 0 }).0;
        (
            Supervisor {
                sshd_port: cfg.port,
                sizing: None,
                on_demand: on_demand::OnDemand::new(relay_tx, activity),
                relay_events: Some(relay_rx),
                cfg,
                endpoint,
                docker: None,
                persisted,
                status: tx,
                keys: None,
                host_key: None,
                repairs: HashMap::new(),
                retry: Retry::default(),
                docker_wait_logged: false,
                wanted: None,
                watcher: None,
                fleet: fleet::Fleet::default(),
            },
            rx,
        )
    }

    fn set(&self, f: impl FnOnce(&mut Status)) {
        self.status.send_modify(f);
    }

    fn set_state(&self, state: State, reason: Option<String>) {
        self.set(|s| {
            s.state = state;
            s.reason = reason;
            if state != State::Up && state != State::Degraded {
                s.healthy = false;
            }
        });
    }

    /// Runs until `shutdown` fires. `events` carries container events from [`watch_events`].
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        crate::fault::maybe_panic("supervisor");
        let (files_tx, mut files) = mpsc::channel(64);
        match crate::watcher::FileWatcher::new(files_tx) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch files; edits are repaired at the next health check")
            }
        }
        self.watch_files();
        let mut relay_events = self.relay_events.take().expect("run is called once");
        let mut activity = self.on_demand.activity.subscribe();
        self.fleet.load(&self.cfg.state_dir);
        if self.persisted.desired == Desired::Up {
            tracing::info!("desired state is up: bringing the builder back");
            self.fleet_round().await;
            let _ = self.reconcile(&|_| {}).await;
        } else {
            self.ensure_down_quietly().await;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(self.cfg.health_interval));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.reset();
        // A wall-clock jump beyond the monotonic one means the machine slept: the monotonic clock
        // stands still in sleep, so the health tick may be a whole interval away. A cheap look at
        // both clocks every few seconds sees the wake-up soon after it.
        let mut clocks = tokio::time::interval(SLEEP_LOOK);
        clocks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut wall = SystemTime::now();
        let mut mono = Instant::now();
        loop {
            let retry = self.retry.due();
            let idle = self.on_demand.idle_deadline;
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(crate::relay::RelayEvent::Wake) = relay_events.recv() => self.wake().await,
                Ok(()) = activity.changed() => {
                    let a = *activity.borrow_and_update();
                    self.note_activity(a);
                }
                _ = sleep_until(idle), if idle.is_some() => self.go_to_sleep().await,
                cmd = commands.recv() => match cmd {
                    None => break,
                    // A long request (an image build) gives way to shutdown; what it left half
                    // done, the next reconcile finishes.
                    Some(cmd) => tokio::select! {
                        _ = self.handle(cmd) => {}
                        _ = shutdown.changed() => break,
                    },
                },
                Some(changed) = files.recv() => self.file_changed(changed.0).await,
                Some(done) = self.fleet.checks.join_next(), if !self.fleet.checks.is_empty() => {
                    self.fleet_checked(done).await;
                }
                _ = tick.tick() => {
                    if self.persisted.desired == Desired::Up {
                        self.fleet_round().await;
                        self.periodic().await;
                    }
                }
                _ = clocks.tick() => {
                    let now = SystemTime::now();
                    if let Some(slept) = slept(wall, now, mono.elapsed()) {
                        tracing::info!(?slept, "the machine slept: checking the builder now");
                        if self.persisted.desired == Desired::Up {
                            self.periodic().await;
                            tick.reset();
                        }
                    }
                    wall = now;
                    mono = Instant::now();
                }
                _ = sleep_until(retry), if retry.is_some() => {
                    self.retry.cancel();
                    if self.persisted.desired == Desired::Up && !self.on_demand.sleeping {
                        let _ = self.reconcile(&|_| {}).await;
                    }
                }
            }
        }
        self.stop_relay();
        tracing::info!("supervisor stopped");
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Up { progress, reply } => {
                let say = move |p: Progress| {
                    let _ = progress.send(p);
                };
                let r = self.up(&say).await;
                let _ = reply.send(r);
            }
            Command::Down { reply } => {
                let r = self.down().await;
                let _ = reply.send(r);
            }
            Command::Check { reply } => {
                let r = if self.on_demand.sleeping {
                    Ok("the builder sleeps (on demand); a connection wakes it".to_string())
                } else if self.persisted.desired == Desired::Up {
                    self.fleet_round().await;
                    self.periodic().await;
                    Ok("checked".to_string())
                } else {
                    Err(Failure::new(
                        ErrorKind::Invalid,
                        "the builder is down: run `builderctl up` first",
                    ))
                };
                let _ = reply.send(r);
            }
            Command::Gc { reply } => {
                let r = self.gc().await;
                let _ = reply.send(r);
            }
            Command::Trust {
                name,
                fingerprint,
                forget,
                reply,
            } => {
                let r = if forget {
                    self.forget(&name).await
                } else {
                    self.trust(&name, fingerprint.as_deref()).await
                };
                let _ = reply.send(r);
            }
            Command::Seen { action, lag_ms } => {
                self.set(|s| {
                    let count = s.last_event.as_ref().map_or(0, |e| e.count) + 1;
                    s.last_event = Some(crate::protocol::EventSeen {
                        action,
                        lag_ms,
                        count,
                    });
                });
                self.refresh_container_state().await;
            }
            Command::Poke(why) => {
                if self.on_demand.sleeping {
                    // Its own stop, or anything else while it sleeps: the next connection
                    // brings it back through the same reconcile.
                    tracing::debug!(why = why.as_str(), "the builder sleeps: nothing to do");
                } else if self.persisted.desired == Desired::Up {
                    tracing::info!(why = why.as_str(), "reconciling");
                    let looping = if why == Poke::ContainerDied {
                        self.retry.died()
                    } else {
                        None
                    };
                    if let Some(delay) = looping {
                        // A container that keeps dying by itself: back off.
                        let logs = self.container_logs().await;
                        tracing::warn!(deaths = self.retry.deaths(), next_start_in = ?delay, "the container keeps exiting");
                        self.set_state(
                            State::Degraded,
                            Some(format!(
                                "the container keeps exiting ({} times); next start in {:.0?}. Its last lines:\n{logs}",
                                self.retry.deaths(),
                                delay
                            )),
                        );
                    } else if self.retry.in_crash_loop() {
                        // A start with backoff is already scheduled.
                    } else {
                        let _ = self.reconcile(&|_| {}).await;
                    }
                }
            }
        }
    }

    /// Takes up an edited config file, so that `up` after an edit uses it. What names this
    /// daemon (its socket and state dir) cannot change under it.
    fn reload_config(&mut self) -> Result<(), Failure> {
        let new = match self.cfg.reloaded() {
            Ok(Some(new)) => new,
            Ok(None) => return Ok(()),
            Err(e) => return Err(Failure::new(ErrorKind::Invalid, e)),
        };
        if new.socket != self.cfg.socket
            || new.state_dir != self.cfg.state_dir
            || new.container_name != self.cfg.container_name
        {
            return Err(Failure::new(
                ErrorKind::Invalid,
                "`socket`, `state_dir` or `container_name` changed in the config: with the old config, run `builderctl down` and `builderctl shutdown`; then `builderctl up`",
            ));
        }
        tracing::info!(file = %new.file.display(), "the config changed: using it");
        self.endpoint = docker::resolve_endpoint(&new);
        self.docker = None;
        self.cfg = new;
        let port = self.cfg.port;
        self.set(|s| s.port = port);
        self.watch_files();
        Ok(())
    }

    /// The client key pair; an error names the config file, the line and the key too.
    async fn client_keys(&self) -> Result<ClientKeys, Failure> {
        load_client_keys(&self.cfg).await.map_err(|e| {
            let key = e.config_key();
            let problem = e.to_string();
            Failure::new(
                ErrorKind::Invalid,
                format!(
                    "{problem}\n({})",
                    self.cfg.key_error(key, "names this file".into())
                ),
            )
        })
    }

    /// An explicit `up`: records the desired state, then reconciles with progress.
    async fn up(&mut self, say: Say<'_>) -> Result<String, Failure> {
        self.retry.forget_deaths();
        self.reload_config()?;
        // Bad input is refused before anything is recorded or started.
        self.client_keys().await?;
        self.fleet_round().await;
        let was_up = self.status.borrow().state == State::Up;
        let before = self.persisted.desired;
        if before != Desired::Up {
            let next = Persisted {
                desired: Desired::Up,
                ..self.persisted.clone()
            };
            self.save_as(&next)?;
            self.persisted = next;
            self.set(|s| s.desired = "up".into());
        }
        let changed = match self.reconcile(say).await {
            Ok(c) => c,
            Err(f) => {
                if f.kind == ErrorKind::Invalid && before != Desired::Up {
                    // Nothing will fix bad input by itself: do not keep retrying it.
                    self.persisted.desired = before;
                    let _ = self.save();
                    self.retry.cancel();
                    self.set(|s| s.desired = before.as_str().into());
                    self.set_state(State::Down, Some(f.message.clone()));
                }
                return Err(f);
            }
        };
        let st = self.status.borrow().clone();
        let lat = st
            .last_health
            .as_ref()
            .map(|h| format!(", health check {:.0} ms", h.latency_ms))
            .unwrap_or_default();
        Ok(if was_up && !changed {
            format!(
                "the builder is already up on 127.0.0.1:{}{lat}; nothing to do",
                self.cfg.port
            )
        } else {
            format!(
                "the builder is up on 127.0.0.1:{} (alias `{}`){lat}",
                self.cfg.port,
                self.cfg.alias()
            )
        })
    }

    fn save(&self) -> Result<(), Failure> {
        self.save_as(&self.persisted)
    }

    /// Writes `state`; the caller takes it as its own only when this succeeded.
    fn save_as(&self, state: &Persisted) -> Result<(), Failure> {
        state.save(&self.cfg.state_dir).map_err(|e| {
            let what = if e.is_disk_full() {
                "the disk holding the state dir is full: free some space and try again"
            } else {
                "check the state dir's permissions"
            };
            Failure::new(ErrorKind::Failed, format!("{e}: {what}"))
        })
    }

    async fn docker(&mut self) -> Result<Engine, DockerError> {
        if let Some(d) = &self.docker {
            // A cheap ping tells whether the cached connection still reaches the engine.
            if d.answers().await {
                return Ok(d.clone());
            }
            self.docker = None;
        }
        self.follow_endpoint();
        let d = docker::connect(&self.endpoint).await?;
        self.docker = Some(d.clone());
        Ok(d)
    }

    /// Finds the engine again before each new connection: at boot a launchd service starts
    /// before Docker Desktop made `~/.docker/run/docker.sock` (or the user switched contexts), so
    /// the address found at start may not be the one that comes up.
    fn follow_endpoint(&mut self) {
        let now = docker::resolve_endpoint(&self.cfg);
        if now != self.endpoint {
            tracing::info!(host = %now.host, source = %now.source, "the Docker engine is now found here");
            let shown = format!("{} ({})", now.host, now.source);
            self.set(|s| s.docker_host = shown);
            self.endpoint = now;
        }
    }

    /// Brings the builder to the desired state `up`. Returns whether anything changed.
    async fn reconcile(&mut self, say: Say<'_>) -> Result<bool, Failure> {
        let result = self.try_reconcile(say).await;
        match &result {
            Ok(_) => {
                let failures = self.retry.reconciled();
                if failures > 0 {
                    tracing::info!(failures, "the builder is back after failed attempts");
                }
                self.docker_wait_logged = false;
            }
            Err(f) if f.kind == ErrorKind::Docker => {
                if !self.docker_wait_logged {
                    tracing::warn!(error = %f.message, "waiting for Docker");
                    self.docker_wait_logged = true;
                }
                self.retry.reconcile_failed(true);
                self.set_state(State::WaitingForDocker, Some(f.message.clone()));
            }
            Err(f) => {
                let delay = self.retry.reconcile_failed(false);
                // The first failure of a streak, and a different one, at warn; the same again
                // only at debug, so that a retry loop does not fill the log.
                let same = self.status.borrow().reason.as_deref() == Some(f.message.as_str());
                if self.retry.failures() == 1 || !same {
                    tracing::warn!(error = %f.message, retry_in = ?delay, "bringing the builder up failed");
                } else {
                    tracing::debug!(error = %f.message, failures = self.retry.failures(), retry_in = ?delay, "bringing the builder up failed again");
                }
                if self.retry.in_crash_loop() {
                    self.set_state(
                        State::Degraded,
                        Some(format!("the container keeps exiting: {}", f.message)),
                    );
                } else {
                    self.set_state(State::Error, Some(f.message.clone()));
                }
            }
        }
        result
    }

    /// This builderd's container, if there is one, with the engine connection that found it.
    async fn our_container(&mut self) -> Result<Option<(Engine, docker::Found)>, DockerError> {
        let d = self.docker().await?;
        let owner = docker::owner_id(&self.cfg.state_dir);
        Ok(docker::find(&d, &self.cfg.container_name, &owner)
            .await?
            .map(|f| (d, f)))
    }

    /// A builder made before its privileges were refused (by an older release, or before the
    /// service lost `--trust-user-with-root`) is stopped: refusing means it does not run.
    async fn stop_refused_builder(&mut self) {
        if let Ok(Some((d, f))) = self.our_container().await
            && f.running
        {
            match docker::container::stop(&d, &f.id, Duration::from_secs(10)).await {
                Ok(()) => {
                    tracing::warn!(container = %self.cfg.container_name, "stopped the builder: its privileges are refused")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot stop the builder whose privileges are refused")
                }
            }
        }
    }

    async fn container_logs(&mut self) -> String {
        match self.our_container().await {
            Ok(Some((d, f))) => docker::last_logs(&d, &f.id, 5).await,
            _ => String::new(),
        }
    }

    /// `down`: records the desired state, removes the container and the registrations.
    async fn down(&mut self) -> Result<String, Failure> {
        let was = self.persisted.desired;
        let next = Persisted {
            desired: Desired::Down,
            ..self.persisted.clone()
        };
        self.save_as(&next)?;
        self.persisted = next;
        self.retry.cancel();
        self.set(|s| s.desired = "down".into());
        let mut removed_container = false;
        let docker_err = match self.our_container().await {
            Ok(Some((d, f))) => {
                docker::remove(&d, &f.id).await?;
                removed_container = true;
                None
            }
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        };
        self.stop_relay();
        self.fleet_down().await;
        let synced = self.sync_files(None).await;
        self.save()?;
        if synced.nix_conf_changed && self.cfg.registration.restart_nix_daemon {
            restart_nix_daemon().await;
        }
        self.host_key = None;
        self.set(|s| {
            s.state = State::Down;
            s.healthy = false;
            s.reason = docker_err.clone();
            s.container = None;
            s.up_since = None;
            // Facts about a container that is gone are not facts any more.
            s.last_health = None;
            s.builder = None;
            s.registrations = synced.statuses.clone();
        });
        if let Some(e) = docker_err {
            return Err(Failure::new(
                ErrorKind::Docker,
                format!("the registrations are removed, but the container could not be: {e}"),
            ));
        }
        Ok(
            if was == Desired::Down && !removed_container && !synced.changed {
                "the builder is already down; nothing to do".to_string()
            } else {
                "the builder is down: container removed, registrations removed (the volume and its host key stay)".to_string()
            },
        )
    }

    /// At start with desired `down`: nothing of ours runs, nothing is registered.
    async fn ensure_down_quietly(&mut self) {
        self.fleet_down().await;
        if let Ok(Some((d, f))) = self.our_container().await {
            let _ = docker::remove(&d, &f.id).await;
        }
        if !self.persisted.created.is_empty() || self.persisted.host_key_fingerprint.is_some() {
            let _ = self.sync_files(None).await;
            let _ = self.save();
        }
    }

    async fn gc(&mut self) -> Result<String, Failure> {
        if self.on_demand.sleeping {
            return Err(Failure::new(
                ErrorKind::Invalid,
                "the builder sleeps (on demand): wake it with a connection (`builderctl ssh -- true`), then run gc",
            ));
        }
        let (Some(host_key), Some(keys)) = (self.host_key.clone(), self.keys.clone()) else {
            return Err(Failure::new(
                ErrorKind::Invalid,
                "the builder is not up: run `builderctl up` first",
            ));
        };
        let out = health::run(
            self.sshd_port,
            &host_key,
            keys.private.clone(),
            // The collector's exit status is its own, not that of a pipe's last command.
            "out=$(nix-collect-garbage 2>&1); rc=$?; if [ $rc -ne 0 ]; then printf '%s\\n' \"$out\" | tail -n 3 >&2; exit $rc; fi; printf '%s\\n' \"$out\" | tail -n 3; du -sk /nix/store | cut -f1",
            Duration::from_secs(3600),
        )
        .await
        .map_err(|(stage, m)| {
            Failure::new(
                ErrorKind::Failed,
                format!("gc failed at {}: {m}", stage.as_str()),
            )
        })?;
        let kb = out
            .lines()
            .last()
            .and_then(|l| l.trim().parse::<u64>().ok());
        self.set(|s| {
            if let Some(b) = &mut s.builder {
                b.store_bytes = kb.map(|k| k * 1024);
            }
        });
        let _ = self.periodic_facts().await;
        Ok(out.trim().to_string())
    }

    async fn periodic_facts(&mut self) -> Option<()> {
        let host_key = self.host_key.clone()?;
        let keys = self.keys.clone()?;
        let out = health::check(self.sshd_port, &host_key, keys.private.clone()).await;
        self.record_health(&out);
        Some(())
    }
}

/// How often the clocks are compared to notice a wake-up from sleep.
const SLEEP_LOOK: Duration = Duration::from_secs(5);

/// How long the machine slept between two looks at the clocks: the wall clock ran on while the
/// monotonic clock stood still. Small differences are clock adjustments, not sleep.
pub fn slept(
    wall_before: SystemTime,
    wall_now: SystemTime,
    mono_elapsed: Duration,
) -> Option<Duration> {
    let wall = wall_now.duration_since(wall_before).unwrap_or_default();
    let gap = wall.saturating_sub(mono_elapsed);
    (gap > Duration::from_secs(3)).then_some(gap)
}

async fn sleep_until(at: Option<impl Into<tokio::time::Instant>>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Spawns the supervisor and the Docker event watcher; returns the handle.
pub fn spawn(
    cfg: Config,
    shutdown: watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Handle {
    let (sup, status) = Supervisor::new(cfg.clone());
    let (tx, rx) = mpsc::channel(64);
    tasks.spawn(sup.run(rx, shutdown.clone()));
    tasks.spawn(watch_events(
        cfg.clone(),
        cfg.container_name.clone(),
        tx.clone(),
        shutdown,
    ));
    Handle {
        commands: tx,
        status,
    }
}

/// The client key pair, read off the async workers: a key file the user points at a FIFO or a
/// slow disk holds up a blocking thread, never the supervisor's loop.
pub(crate) async fn load_client_keys(cfg: &Config) -> Result<ClientKeys, keys::KeyError> {
    let (public, private) = (cfg.public_key.clone(), cfg.private_key.clone());
    tokio::task::spawn_blocking(move || keys::load_client_keys(&public, &private))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_is_a_wall_clock_jump_beyond_the_monotonic_one() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // Awake: both clocks ran 5 s.
        assert_eq!(
            slept(t0, t0 + Duration::from_secs(5), Duration::from_secs(5)),
            None
        );
        // Slept 10 minutes between two looks 5 s apart in monotonic time.
        assert_eq!(
            slept(t0, t0 + Duration::from_secs(605), Duration::from_secs(5)),
            Some(Duration::from_secs(600))
        );
        // The wall clock set back: not sleep.
        assert_eq!(
            slept(t0, t0 - Duration::from_secs(60), Duration::from_secs(5)),
            None
        );
    }
}
