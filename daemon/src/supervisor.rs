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

use bollard::Docker;
use russh::keys::PublicKey;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;
use crate::docker::{self, DockerError, Endpoint, Spec};
use crate::health;
use crate::keys::{self, ClientKeys};
use crate::protocol::{
    BuilderInfo, ContainerInfo, ErrorKind, HealthReport, HostKeyChange, Progress, State, Status,
};
use crate::registration::{self, Wanted};
use crate::state::{Desired, Persisted};

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
        let kind = match &e {
            DockerError::Unreachable { .. } => ErrorKind::Docker,
            DockerError::Api { source, .. } if docker::is_connection_error(source) => {
                ErrorKind::Docker
            }
            DockerError::PortTaken { .. }
            | DockerError::PrivilegedRefused { .. }
            | DockerError::Context { .. } => ErrorKind::Invalid,
            _ => ErrorKind::Failed,
        };
        Failure::new(kind, e)
    }
}

pub type Reply = oneshot::Sender<Result<String, Failure>>;

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
    /// Something outside changed: a container event, a file edit. Reconcile.
    Poke(&'static str),
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
    docker: Option<Docker>,
    persisted: Persisted,
    status: watch::Sender<Status>,
    keys: Option<ClientKeys>,
    host_key: Option<PublicKey>,
    /// Repairs per registration file path.
    repairs: HashMap<String, u32>,
    failures: u32,
    /// Consecutive container deaths that builderd did not cause, for crash-loop backoff.
    deaths: u32,
    next_retry: Option<Instant>,
    docker_wait_logged: bool,
    /// What was last registered; re-applied when a file is edited.
    wanted: Option<Wanted>,
    watcher: Option<crate::watcher::FileWatcher>,
    /// Since when health checks fail (for taking the machines line out).
    unhealthy_since: Option<Instant>,
}

impl Supervisor {
    pub fn new(cfg: Config) -> (Supervisor, watch::Receiver<Status>) {
        let endpoint = docker::resolve_endpoint(&cfg);
        let persisted = Persisted::load(&cfg.state_dir);
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
        };
        let (tx, rx) = watch::channel(status);
        (
            Supervisor {
                cfg,
                endpoint,
                docker: None,
                persisted,
                status: tx,
                keys: None,
                host_key: None,
                repairs: HashMap::new(),
                failures: 0,
                deaths: 0,
                next_retry: None,
                docker_wait_logged: false,
                wanted: None,
                watcher: None,
                unhealthy_since: None,
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
        let (files_tx, mut files) = mpsc::channel(64);
        match crate::watcher::FileWatcher::new(files_tx) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch files; edits are repaired at the next health check")
            }
        }
        self.watch_files();
        if self.persisted.desired == Desired::Up {
            tracing::info!("desired state is up: bringing the builder back");
            let _ = self.reconcile(&|_| {}).await;
        } else {
            self.ensure_down_quietly().await;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(self.cfg.health_interval));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tick.reset();
        // A wall-clock jump beyond the monotonic one means the machine slept.
        let mut wall = SystemTime::now();
        let mut mono = Instant::now();
        loop {
            let retry = self.next_retry;
            tokio::select! {
                _ = shutdown.changed() => break,
                cmd = commands.recv() => match cmd {
                    None => break,
                    Some(cmd) => self.handle(cmd).await,
                },
                Some(changed) = files.recv() => self.file_changed(changed.0).await,
                _ = tick.tick() => {
                    let slept = SystemTime::now()
                        .duration_since(wall)
                        .unwrap_or_default()
                        .saturating_sub(mono.elapsed());
                    if slept > Duration::from_secs(5) {
                        tracing::info!(?slept, "the machine slept: checking the builder now");
                    }
                    wall = SystemTime::now();
                    mono = Instant::now();
                    if self.persisted.desired == Desired::Up {
                        self.periodic().await;
                    }
                }
                _ = sleep_until(retry), if retry.is_some() => {
                    self.next_retry = None;
                    if self.persisted.desired == Desired::Up {
                        let _ = self.reconcile(&|_| {}).await;
                    }
                }
            }
        }
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
                let r = if self.persisted.desired == Desired::Up {
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
            Command::Seen { action, lag_ms } => {
                self.set(|s| {
                    let count = s.last_event.as_ref().map_or(0, |e| e.count) + 1;
                    s.last_event = Some(crate::protocol::EventSeen {
                        action,
                        lag_ms,
                        count,
                    });
                });
            }
            Command::Poke(why) => {
                if self.persisted.desired == Desired::Up {
                    tracing::info!(why, "reconciling");
                    if why == "container-died" {
                        self.deaths += 1;
                    }
                    if self.deaths >= 2 && why != "container-died" {
                        // A retry with backoff is already scheduled.
                    } else if self.deaths >= 2 {
                        // A container that keeps dying by itself: back off.
                        let delay = backoff(self.deaths - 1, Duration::from_secs(60));
                        self.schedule_retry(delay);
                        let logs = self.container_logs().await;
                        self.set_state(
                            State::Degraded,
                            Some(format!(
                                "the container keeps exiting ({} times); next start in {:.0?}. Its last lines:\n{logs}",
                                self.deaths, delay
                            )),
                        );
                    } else {
                        let _ = self.reconcile(&|_| {}).await;
                    }
                }
            }
        }
    }

    /// The client key pair; an error names the config file, the line and the key too.
    fn client_keys(&self) -> Result<ClientKeys, Failure> {
        keys::load_client_keys(&self.cfg.public_key, &self.cfg.private_key).map_err(|e| {
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

    /// Schedules a reconcile after `delay`, keeping a later one already scheduled.
    fn schedule_retry(&mut self, delay: Duration) {
        let at = Instant::now() + delay;
        self.next_retry = Some(self.next_retry.map_or(at, |t| t.max(at)));
    }

    /// An explicit `up`: records the desired state, then reconciles with progress.
    async fn up(&mut self, say: Say<'_>) -> Result<String, Failure> {
        self.deaths = 0;
        // Bad input is refused before anything is recorded or started.
        self.client_keys()?;
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
                    self.next_retry = None;
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

    async fn docker(&mut self) -> Result<Docker, DockerError> {
        if let Some(d) = &self.docker {
            // A cheap ping tells whether the cached connection still reaches the engine.
            if d.ping().await.is_ok() {
                return Ok(d.clone());
            }
            self.docker = None;
        }
        let d = docker::connect(&self.endpoint).await?;
        self.docker = Some(d.clone());
        Ok(d)
    }

    /// Brings the builder to the desired state `up`. Returns whether anything changed.
    async fn reconcile(&mut self, say: Say<'_>) -> Result<bool, Failure> {
        let result = self.try_reconcile(say).await;
        match &result {
            Ok(_) => {
                self.docker_wait_logged = false;
                if self.deaths < 2 {
                    self.next_retry = None;
                }
            }
            Err(f) if f.kind == ErrorKind::Docker => {
                if !self.docker_wait_logged {
                    tracing::warn!(error = %f.message, "waiting for Docker");
                    self.docker_wait_logged = true;
                }
                self.failures += 1;
                self.schedule_retry(backoff(self.failures, Duration::from_secs(30)));
                self.set_state(State::WaitingForDocker, Some(f.message.clone()));
            }
            Err(f) => {
                tracing::warn!(error = %f.message, "bringing the builder up failed");
                self.failures += 1;
                self.schedule_retry(backoff(self.failures, Duration::from_secs(60)));
                if self.deaths >= 2 {
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

    async fn try_reconcile(&mut self, say: Say<'_>) -> Result<bool, Failure> {
        let cfg = self.cfg.clone();
        let mut changed = false;
        if self.status.borrow().state != State::Up {
            self.set_state(State::Starting, None);
        }

        say(step("keys", "checking the key pair"));
        let keys = self.client_keys()?;

        let docker = self.docker().await?;
        let (tag, ctx) = docker::image_for(&cfg)?;
        let spec = Spec::from_config(&cfg, &tag);
        if docker::name_taken_by_other(&docker, &cfg.container_name).await? {
            return Err(Failure::new(
                ErrorKind::Invalid,
                format!(
                    "a container named {} exists that builderd did not make: remove it (`docker rm -f {0}`) or set `container_name` in the config",
                    cfg.container_name
                ),
            ));
        }
        let mut found = docker::find(&docker, &cfg.container_name).await?;
        if let Some(f) = &found
            && f.spec_hash.as_deref() != Some(spec.hash().as_str())
        {
            say(step(
                "container",
                "the configuration changed: re-creating the container",
            ));
            docker::remove(&docker, &f.id).await?;
            found = None;
            changed = true;
        }
        if !found.as_ref().is_some_and(|f| f.running) && !crate::port::is_free(cfg.port) {
            return Err(DockerError::PortTaken {
                port: cfg.port,
                holder: crate::port::holder(cfg.port)
                    .map(|h| format!(" by {h}"))
                    .unwrap_or_default(),
            }
            .into());
        }

        if !docker::image_exists(&docker, &tag).await? {
            if ctx.embedded {
                say(step(
                    "base-image",
                    format!("checking the base image {}", cfg.image.base_image),
                ));
                let say_base = |m: String| say(step("base-image", m));
                crate::base_image::ensure(&docker, &cfg, &say_base)
                    .await
                    .map_err(|e| match e {
                        crate::base_image::BaseError::Docker(d) => Failure::from(d),
                        other => Failure::new(ErrorKind::Failed, other),
                    })?;
            }
            say(step("image", format!("building {tag}")));
            let say_build = |m: String, n: Option<(u64, u64)>| {
                say(Progress {
                    stage: "image".into(),
                    message: m,
                    current: n.map(|n| n.0),
                    total: n.map(|n| n.1),
                })
            };
            docker::build_image(&docker, &cfg, &tag, &ctx, &say_build).await?;
            changed = true;
        }

        // The volume: the client's public key as host.pub.
        let vol = cfg.volume_dir();
        std::fs::create_dir_all(&vol).map_err(|e| {
            Failure::new(
                ErrorKind::Failed,
                format!("cannot create {}: {e}", vol.display()),
            )
        })?;
        let host_pub = vol.join("host.pub");
        let line = format!("{}\n", keys.public_line);
        let key_changed = std::fs::read_to_string(&host_pub).ok().as_deref() != Some(line.as_str());
        if key_changed {
            crate::fsutil::write_atomic(&host_pub, line.as_bytes(), 0o644)
                .map_err(|e| Failure::new(ErrorKind::Failed, e))?;
        }

        let id = match found {
            Some(f) => {
                if !f.running {
                    say(step("container", "starting the container"));
                    docker::start(&docker, &f.id, cfg.port).await?;
                    changed = true;
                } else if key_changed {
                    say(step(
                        "container",
                        "the client key changed: updating authorized_keys",
                    ));
                    install_client_key(&docker, &f.id).await?;
                    changed = true;
                }
                f.id
            }
            None => {
                say(step(
                    "container",
                    format!("creating container {}", cfg.container_name),
                ));
                let id = docker::create(&docker, &spec).await?;
                if let Err(e) = docker::start(&docker, &id, cfg.port).await {
                    let _ = docker::remove(&docker, &id).await;
                    return Err(e.into());
                }
                changed = true;
                id
            }
        };
        self.set_container(&id, &tag, "running");
        self.finish_up(&docker, &id, keys, say, changed).await
    }

    fn set_container(&self, id: &str, image: &str, state: &str) {
        let name = self.cfg.container_name.clone();
        self.set(|s| {
            let restarts = s.container.as_ref().map_or(0, |c| c.restarts);
            s.container = Some(ContainerInfo {
                name,
                id: id.chars().take(12).collect(),
                image: image.into(),
                state: state.into(),
                restarts,
            })
        });
    }

    async fn finish_up(
        &mut self,
        docker: &Docker,
        id: &str,
        keys: ClientKeys,
        say: Say<'_>,
        mut changed: bool,
    ) -> Result<bool, Failure> {
        say(step("host-key", "waiting for the builder's host key"));
        let host_key = self.wait_host_key(docker, id).await?;
        let fp = keys::fingerprint(&host_key);
        if let Some(old) = &self.persisted.host_key_fingerprint
            && *old != fp
        {
            tracing::warn!(from = %old, to = %fp, "the builder's host key changed");
            let change = HostKeyChange {
                from: old.clone(),
                to: fp.clone(),
                at: now(),
            };
            self.set(|s| s.host_key_changed = Some(change));
        }
        self.set(|s| s.host_key_fingerprint = Some(fp.clone()));
        self.host_key = Some(host_key.clone());
        self.keys = Some(keys.clone());

        say(step("health", "waiting for sshd to answer"));
        let facts = self.wait_healthy(docker, id, &host_key, &keys).await?;

        say(step("register", "writing the registrations"));
        changed |= self.register(&host_key, &facts)?;
        if self.persisted.host_key_fingerprint.as_deref() != Some(fp.as_str()) {
            self.persisted.host_key_fingerprint = Some(fp);
            self.save()?;
        }
        self.failures = 0;
        Ok(changed)
    }

    async fn wait_host_key(&self, docker: &Docker, id: &str) -> Result<PublicKey, Failure> {
        let path = self.cfg.volume_dir().join("id_ed25519.pub");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut n = 0u32;
        loop {
            if let Ok(bytes) = std::fs::read(&path)
                && let Ok(k) = keys::parse_public(&path, &bytes)
            {
                return Ok(k);
            }
            n += 1;
            self.keep_waiting(docker, id, n, deadline, || {
                format!(
                    "the builder did not write its host key {} within 60 s",
                    path.display()
                )
            })
            .await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One more round of waiting for the container: every tenth round it must still run, and
    /// past `deadline` the wait fails with `why` and the container's log.
    async fn keep_waiting(
        &self,
        docker: &Docker,
        id: &str,
        round: u32,
        deadline: Instant,
        why: impl FnOnce() -> String,
    ) -> Result<(), Failure> {
        if round.is_multiple_of(10) {
            self.ensure_running(docker, id).await?;
        }
        if Instant::now() > deadline {
            return Err(Failure::new(
                ErrorKind::Failed,
                format!(
                    "{}; its log:\n{}",
                    why(),
                    docker::last_logs(docker, id, 20).await
                ),
            ));
        }
        Ok(())
    }

    async fn ensure_running(&self, docker: &Docker, id: &str) -> Result<(), Failure> {
        let c = docker.inspect_container(id, None).await.map_err(|e| {
            Failure::new(ErrorKind::Failed, format!("inspecting the container: {e}"))
        })?;
        let st = c.state.unwrap_or_default();
        if st.running == Some(true) {
            return Ok(());
        }
        Err(Failure::new(
            ErrorKind::Failed,
            format!(
                "the container exited (code {}); its last lines:\n{}",
                st.exit_code.unwrap_or(-1),
                docker::last_logs(docker, id, 20).await
            ),
        ))
    }

    async fn wait_healthy(
        &mut self,
        docker: &Docker,
        id: &str,
        host_key: &PublicKey,
        keys: &ClientKeys,
    ) -> Result<health::Facts, Failure> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut n = 0u32;
        loop {
            let out = health::check(self.cfg.port, host_key, keys.private.clone()).await;
            self.record_health(&out);
            match out.result {
                Ok(facts) => return Ok(facts),
                // The wrong host key or a refused client key will not fix itself.
                Err((stage @ (health::Stage::Auth | health::Stage::Handshake), msg))
                    if msg.contains("pinned") || stage == health::Stage::Auth =>
                {
                    return Err(Failure::new(
                        ErrorKind::Failed,
                        format!("health check failed at {}: {msg}", stage.as_str()),
                    ));
                }
                Err((stage, msg)) => {
                    n += 1;
                    self.keep_waiting(docker, id, n, deadline, || {
                        format!(
                            "the builder did not become healthy within 60 s (last failure at {}: {msg})",
                            stage.as_str()
                        )
                    })
                    .await?;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        }
    }

    fn record_health(&mut self, out: &health::Outcome) {
        let failures = match &out.result {
            Ok(_) => 0,
            Err(_) => {
                self.status
                    .borrow()
                    .last_health
                    .as_ref()
                    .map_or(0, |h| h.consecutive_failures)
                    + 1
            }
        };
        let report = HealthReport {
            at: now(),
            ok: out.result.is_ok(),
            latency_ms: out.latency.as_secs_f64() * 1000.0,
            failed_stage: out.result.as_ref().err().map(|e| e.0.as_str().to_string()),
            error: out.result.as_ref().err().map(|e| e.1.clone()),
            consecutive_failures: failures,
            seq: self
                .status
                .borrow()
                .last_health
                .as_ref()
                .map_or(0, |h| h.seq)
                + 1,
        };
        let systems = self.systems(out.result.as_ref().ok());
        self.set(|s| {
            s.last_health = Some(report);
            s.healthy = out.result.is_ok();
            if let Ok(f) = &out.result {
                s.builder = Some(BuilderInfo {
                    nix_version: f.nix_version.clone(),
                    systems,
                    x86_64: f.x86_64.clone(),
                    disk_free_bytes: f.disk_free_bytes,
                    disk_total_bytes: f.disk_total_bytes,
                    store_bytes: s.builder.as_ref().and_then(|b| b.store_bytes),
                });
            }
        });
    }

    fn systems(&self, facts: Option<&health::Facts>) -> Vec<String> {
        if let Some(s) = &self.cfg.builder.systems {
            return s.clone();
        }
        match facts.map(|f| f.arch.as_str()) {
            Some("aarch64" | "arm64") => vec!["x86_64-linux".into(), "aarch64-linux".into()],
            _ => vec!["x86_64-linux".into()],
        }
    }

    fn wanted(&self, host_key: &PublicKey, facts: Option<&health::Facts>) -> Wanted {
        let cfg = &self.cfg;
        let host_port =
            crate::hostnix::use_host_port(cfg.registration.uri, crate::hostnix::host_version());
        Wanted {
            instance: cfg.container_name.clone(),
            port: cfg.port,
            alias: cfg.alias().to_string(),
            host_key_line: keys::key_line(host_key),
            identity: cfg.private_key.clone(),
            uri: if host_port {
                format!("ssh-ng://root@localhost:{}", cfg.port)
            } else {
                format!("ssh-ng://{}", cfg.alias())
            },
            systems: self.systems(facts),
            max_jobs: cfg.builder.max_jobs,
            speed_factor: cfg.builder.speed_factor,
            features: cfg.builder.supported_features.clone(),
            machines_listed: true,
        }
    }

    /// The files to follow: every registration file, the public key, the builder's host key.
    fn watch_files(&mut self) {
        let Some(w) = &mut self.watcher else { return };
        let reg = &self.cfg.registration;
        let mut files = vec![
            reg.machines_file.clone(),
            reg.nix_conf.clone(),
            reg.nix_conf.with_file_name("nix.custom.conf"),
            self.cfg.public_key.clone(),
            self.cfg.volume_dir().join("id_ed25519.pub"),
        ];
        files.extend(reg.known_hosts.iter().cloned());
        files.extend(reg.ssh_config.iter().cloned());
        w.set_files(files);
    }

    /// A watched file changed.
    async fn file_changed(&mut self, path: PathBuf) {
        tracing::debug!(path = %path.display(), "a watched file changed");
        if self.persisted.desired != Desired::Up {
            return;
        }
        let is = |p: &Path| p == path || std::fs::canonicalize(p).is_ok_and(|c| c == path);
        if is(&self.cfg.public_key) {
            self.client_key_changed().await;
        } else if is(&self.cfg.volume_dir().join("id_ed25519.pub")) {
            tracing::info!("the builder's host key file changed");
            let _ = self.reconcile(&|_| {}).await;
        } else if let Some(w) = self.wanted.clone() {
            self.resync(&w, Some(&path));
        }
    }

    /// Re-applies the registrations; with `edited`, each file that had to be written counts as
    /// a repair.
    fn resync(&mut self, wanted: &Wanted, edited: Option<&Path>) {
        tracing::debug!(?edited, "re-applying the registrations");
        let synced = registration::sync(&self.cfg, Some(wanted), &mut self.persisted.created);
        let _ = self.save();
        if edited.is_some() {
            for w in &synced.written {
                let key = w.display().to_string();
                tracing::info!(file = %key, "repaired builderd's entries after an outside edit");
                *self.repairs.entry(key).or_default() += 1;
            }
        }
        if synced.nix_conf_changed && self.cfg.registration.restart_nix_daemon {
            restart_nix_daemon();
        }
        self.publish_registrations(synced.statuses);
        self.watch_files();
    }

    fn publish_registrations(&self, mut statuses: Vec<crate::protocol::RegistrationStatus>) {
        for s in &mut statuses {
            s.repairs = self.repairs.get(&s.path).copied().unwrap_or(0);
        }
        let failed: Vec<String> = statuses
            .iter()
            .filter(|s| s.state != "ok")
            .map(|s| format!("{} {}: {}", s.kind, s.path, s.state))
            .collect();
        let healthy = self.status.borrow().healthy;
        self.set(|s| {
            s.registrations = statuses;
            // Only a healthy builder's state follows its registrations; waiting for Docker or a
            // failed start stays what it is.
            if !healthy || !matches!(s.state, State::Up | State::Degraded | State::Starting) {
                return;
            }
            if failed.is_empty() {
                s.state = State::Up;
                s.reason = None;
            } else {
                s.state = State::Degraded;
                s.reason = Some(format!(
                    "some registrations need you (see `builderctl status`): {}",
                    failed.join("; ")
                ));
            }
        });
    }

    /// The user's public key file changed: a new key goes to the container's authorized_keys
    /// in place; a key that does not match the private key is refused and the old one kept.
    async fn client_key_changed(&mut self) {
        let keys = match keys::load_client_keys(&self.cfg.public_key, &self.cfg.private_key) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "the public key changed, but it cannot be used; keeping the old one");
                self.set(|s| {
                    s.reason = Some(format!(
                        "the public key changed, but builderd keeps the old one: {e}"
                    ));
                });
                return;
            }
        };
        if self
            .keys
            .as_ref()
            .is_some_and(|k| k.public_line == keys.public_line)
        {
            return;
        }
        tracing::info!(fingerprint = %keys.fingerprint, "the client key changed");
        let _ = self.reconcile(&|_| {}).await;
    }

    /// Writes the registrations. Returns whether a file changed.
    fn register(&mut self, host_key: &PublicKey, facts: &health::Facts) -> Result<bool, Failure> {
        let wanted = self.wanted(host_key, Some(facts));
        self.unhealthy_since = None;
        let synced = registration::sync(&self.cfg, Some(&wanted), &mut self.persisted.created);
        self.wanted = Some(wanted);
        self.watch_files();
        self.save()?;
        if synced.nix_conf_changed && self.cfg.registration.restart_nix_daemon {
            restart_nix_daemon();
        }
        let up_since = self.status.borrow().up_since.unwrap_or_else(now);
        self.set(|s| s.up_since = Some(up_since));
        self.publish_registrations(synced.statuses);
        Ok(synced.changed)
    }

    /// A periodic health check while up; restarts the container after repeated failures.
    async fn periodic(&mut self) {
        if self.next_retry.is_some() {
            // A retry with backoff is already scheduled; checking now would defeat it.
            return;
        }
        let (Some(host_key), Some(keys)) = (self.host_key.clone(), self.keys.clone()) else {
            let _ = self.reconcile(&|_| {}).await;
            return;
        };
        let out = health::check(self.cfg.port, &host_key, keys.private.clone()).await;
        self.record_health(&out);
        match out.result {
            Ok(_) => {
                self.deaths = 0;
                self.unhealthy_since = None;
                // The builder answers, but can the engine still be reached to keep it so?
                if self.docker().await.is_err() {
                    let _ = self.reconcile(&|_| {}).await;
                    return;
                }
                if let Some(w) = self.wanted.clone()
                    && !w.machines_listed
                {
                    tracing::info!("healthy again: listing the builder in the machines file");
                    let w = Wanted {
                        machines_listed: true,
                        ..w
                    };
                    self.wanted = Some(w.clone());
                    self.resync(&w, None);
                }
                if self.status.borrow().state != State::Up {
                    let _ = self.reconcile(&|_| {}).await;
                } else if let Some(w) = self.wanted.clone() {
                    // Files are watched; this also repairs what a watcher could not see.
                    self.resync(&w, Some(Path::new("")));
                }
            }
            Err((stage, msg)) => {
                let n = self
                    .status
                    .borrow()
                    .last_health
                    .as_ref()
                    .map_or(1, |h| h.consecutive_failures);
                tracing::warn!(stage = stage.as_str(), error = %msg, n, "health check failed");
                self.set_state(
                    State::Degraded,
                    Some(format!("health check failed at {}: {msg}", stage.as_str())),
                );
                let since = *self.unhealthy_since.get_or_insert_with(Instant::now);
                let reg = &self.cfg.registration;
                if reg.unlist_unhealthy
                    && since.elapsed() >= Duration::from_secs(reg.unlist_unhealthy_after)
                    && let Some(w) = self.wanted.clone()
                    && w.machines_listed
                {
                    tracing::warn!(
                        "unhealthy for {:?}: taking the builder out of the machines file",
                        since.elapsed()
                    );
                    let w = Wanted {
                        machines_listed: false,
                        ..w
                    };
                    self.wanted = Some(w.clone());
                    self.resync(&w, None);
                }
                if n >= self.cfg.health_failures_before_restart {
                    tracing::warn!("restarting the container after {n} failed health checks");
                    if let Ok(d) = self.docker().await
                        && let Ok(Some(f)) = docker::find(&d, &self.cfg.container_name).await
                    {
                        let _ = d.restart_container(&f.id, None).await;
                    }
                    let _ = self.reconcile(&|_| {}).await;
                }
            }
        }
    }

    async fn container_logs(&mut self) -> String {
        let Ok(d) = self.docker().await else {
            return String::new();
        };
        match docker::find(&d, &self.cfg.container_name).await {
            Ok(Some(f)) => docker::last_logs(&d, &f.id, 5).await,
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
        self.next_retry = None;
        self.set(|s| s.desired = "down".into());
        let mut removed_container = false;
        let docker_err = match self.docker().await {
            Ok(d) => match docker::find(&d, &self.cfg.container_name).await {
                Ok(Some(f)) => {
                    docker::remove(&d, &f.id).await?;
                    removed_container = true;
                    None
                }
                Ok(None) => None,
                Err(e) => Some(e.to_string()),
            },
            Err(e) => Some(e.to_string()),
        };
        let synced = registration::sync(&self.cfg, None, &mut self.persisted.created);
        self.save()?;
        if synced.nix_conf_changed && self.cfg.registration.restart_nix_daemon {
            restart_nix_daemon();
        }
        self.host_key = None;
        self.set(|s| {
            s.state = State::Down;
            s.healthy = false;
            s.reason = docker_err.clone();
            s.container = None;
            s.up_since = None;
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
        if let Ok(d) = self.docker().await
            && let Ok(Some(f)) = docker::find(&d, &self.cfg.container_name).await
        {
            let _ = docker::remove(&d, &f.id).await;
        }
        if !self.persisted.created.is_empty() || self.persisted.host_key_fingerprint.is_some() {
            let _ = registration::sync(&self.cfg, None, &mut self.persisted.created);
            let _ = self.save();
        }
    }

    async fn gc(&mut self) -> Result<String, Failure> {
        let (Some(host_key), Some(keys)) = (self.host_key.clone(), self.keys.clone()) else {
            return Err(Failure::new(
                ErrorKind::Invalid,
                "the builder is not up: run `builderctl up` first",
            ));
        };
        let out = health::run(
            self.cfg.port,
            &host_key,
            keys.private.clone(),
            "nix-collect-garbage 2>&1 | tail -n 3; du -sk /nix/store | cut -f1",
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
        let out = health::check(self.cfg.port, &host_key, keys.private.clone()).await;
        self.record_health(&out);
        Some(())
    }
}

/// Puts the volume's host.pub into root's authorized_keys in the running container.
async fn install_client_key(docker: &Docker, id: &str) -> Result<(), Failure> {
    let (code, out) = docker::exec(
        docker,
        id,
        &[
            "install",
            "-m",
            "600",
            "/var/lib/nix-builder/host.pub",
            "/root/.ssh/authorized_keys",
        ],
    )
    .await?;
    if code != 0 {
        return Err(Failure::new(
            ErrorKind::Failed,
            format!(
                "updating authorized_keys in the container failed ({code}): {}",
                out.trim()
            ),
        ));
    }
    Ok(())
}

fn restart_nix_daemon() {
    let runner = builderd_launchd::System;
    let os = builderd_launchd::Os::current();
    if let Some(cmd) = builderd_launchd::nix_daemon_restart(os, &runner) {
        match builderd_launchd::Runner::run(&runner, &cmd) {
            Ok(_) => tracing::info!(command = %cmd.join(" "), "restarted the nix-daemon"),
            Err(e) => tracing::warn!(error = %e, "could not restart the nix-daemon"),
        }
    }
}

/// Exponential backoff with jitter: 0.5 s · 2^(n-1), capped.
pub fn backoff(n: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1u32 << n.saturating_sub(1).min(16));
    let base = base.min(cap);
    // Up to 10 % jitter from the clock's low bits, so that several instances do not align.
    let jitter = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 1000)
        .unwrap_or(0) as u64;
    base + base.mul_f64(jitter as f64 / 10_000.0)
}

async fn sleep_until(at: Option<Instant>) {
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
    let endpoint = sup.endpoint.clone();
    tasks.spawn(sup.run(rx, shutdown.clone()));
    tasks.spawn(watch_events(
        endpoint,
        cfg.container_name.clone(),
        tx.clone(),
        shutdown,
    ));
    Handle {
        commands: tx,
        status,
    }
}

/// Follows the engine's events for builderd's container and pokes the supervisor on each death.
/// When the stream ends (the engine restarted or went away) it reconnects with backoff and pokes
/// the supervisor, which then reconciles.
pub async fn watch_events(
    endpoint: Endpoint,
    name: String,
    tx: mpsc::Sender<Command>,
    mut shutdown: watch::Receiver<bool>,
) {
    use futures_util::StreamExt;
    // Failed connects in a row; the first one of a streak tells the supervisor.
    let mut failures = 0u32;
    let mut connected_before = false;
    loop {
        let docker = tokio::select! {
            _ = shutdown.changed() => return,
            d = docker::connect(&endpoint) => d,
        };
        let docker = match docker {
            Ok(d) => {
                tracing::debug!(failures, "following the engine's events");
                if failures > 0 && connected_before {
                    let _ = tx.send(Command::Poke("docker-back")).await;
                }
                failures = 0;
                connected_before = true;
                d
            }
            Err(e) => {
                tracing::debug!(error = %e, failures, "the event stream cannot connect");
                failures += 1;
                if failures == 1 && connected_before {
                    let _ = tx.send(Command::Poke("docker-unreachable")).await;
                }
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff(failures, Duration::from_secs(2))) => continue,
                }
            }
        };
        let mut filters = HashMap::new();
        filters.insert("type".to_string(), vec!["container".to_string()]);
        // The label alone also matches the image build's intermediate containers.
        filters.insert("container".to_string(), vec![name.clone()]);
        filters.insert(
            "label".to_string(),
            vec![format!("{}={name}", docker::LABEL_INSTANCE)],
        );
        let mut events = docker.events(Some(bollard::system::EventsOptions::<String> {
            filters,
            ..Default::default()
        }));
        // A death right after a kill or stop was asked for; only others count as crashes.
        let mut stopping: Option<Instant> = None;
        loop {
            let ev = tokio::select! {
                _ = shutdown.changed() => return,
                ev = events.next() => ev,
            };
            match ev {
                Some(Ok(ev)) => {
                    let action = ev.action.unwrap_or_default();
                    if let Some(nanos) = ev.time_nano {
                        let now = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.as_nanos() as i64)
                            .unwrap_or(0);
                        let lag_ms = (now - nanos) as f64 / 1e6;
                        let _ = tx
                            .send(Command::Seen {
                                action: action.clone(),
                                lag_ms,
                            })
                            .await;
                    }
                    let asked = stopping.is_some_and(|t| t.elapsed() < Duration::from_secs(30));
                    let why = match action.as_str() {
                        "kill" | "stop" => {
                            stopping = Some(Instant::now());
                            continue;
                        }
                        "die" | "oom" if !asked => "container-died",
                        "die" | "oom" => {
                            stopping = None;
                            "container-stopped"
                        }
                        "destroy" => "container-removed",
                        _ => continue,
                    };
                    tracing::info!(action, "container event");
                    let _ = tx.send(Command::Poke(why)).await;
                }
                _ => break,
            }
        }
        let _ = tx.send(Command::Poke("docker-events-ended")).await;
    }
}
