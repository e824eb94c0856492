//! On demand: the relay on the builder's port, the idle stop, and waking at a connection.

use super::*;
use crate::relay::{Activity, Backend};

/// The supervisor's side of the relay.
pub(super) struct OnDemand {
    /// Where the relay sends connections.
    pub backend: watch::Sender<Backend>,
    /// Cloned into each relay the supervisor starts.
    pub events: mpsc::Sender<crate::relay::RelayEvent>,
    pub activity: watch::Sender<Activity>,
    /// The running relay: its stop signal and task.
    pub running: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
    /// The container was stopped for idleness; the next connection wakes it.
    pub sleeping: bool,
    /// The container put to sleep, and its privileges: what a wake starts without looking
    /// anything up.
    pub slept: Option<(String, docker::Privileges)>,
    /// When the builder goes to sleep unless a connection comes first.
    pub idle_deadline: Option<Instant>,
    /// The container's sshd at its own address, when the host routes there.
    pub direct: Option<std::net::SocketAddr>,
}

impl OnDemand {
    pub fn new(
        events: mpsc::Sender<crate::relay::RelayEvent>,
        activity: watch::Sender<Activity>,
    ) -> OnDemand {
        OnDemand {
            backend: watch::channel(Backend::Asleep).0,
            events,
            activity,
            running: None,
            sleeping: false,
            slept: None,
            idle_deadline: None,
            direct: None,
        }
    }
}

impl Supervisor {
    /// Listens on the builder's port when on demand (and stops listening when not), so that a
    /// connection can wake the builder.
    pub(super) fn ensure_relay(&mut self) -> Result<(), Failure> {
        let want = self.cfg.on_demand && self.persisted.desired == Desired::Up;
        if !want {
            self.stop_relay();
            return Ok(());
        }
        if self.on_demand.running.is_some() {
            return Ok(());
        }
        let port = self.cfg.port;
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| {
                Failure::from(DockerError::PortTaken {
                    port,
                    holder: crate::port::holder(port)
                        .map(|h| format!(" by {h}"))
                        .unwrap_or_else(|| format!(" ({e})")),
                })
            })?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(crate::relay::run(
            listener,
            self.on_demand.backend.subscribe(),
            self.on_demand.events.clone(),
            self.on_demand.activity.clone(),
            stop_rx,
        ));
        tracing::info!(port, "on demand: relaying 127.0.0.1:{port} to the builder");
        self.on_demand.running = Some((stop_tx, task));
        Ok(())
    }

    pub(super) fn stop_relay(&mut self) {
        self.on_demand.slept = None;
        if let Some((stop, task)) = self.on_demand.running.take() {
            let _ = stop.send(true);
            task.abort();
            tracing::info!("on demand: the relay stopped");
        }
        self.on_demand.backend.send_replace(Backend::Asleep);
        self.on_demand.sleeping = false;
        self.on_demand.idle_deadline = None;
    }

    /// The builder answered: connections go to it, and the idle clock starts if none is open.
    pub(super) fn relay_awake(&mut self) {
        if self.on_demand.running.is_none() {
            return;
        }
        self.on_demand.sleeping = false;
        self.on_demand
            .backend
            .send_replace(Backend::Awake(self.sshd_port, self.on_demand.direct));
        let a = *self.on_demand.activity.borrow();
        self.note_activity(a);
    }

    /// Open connections keep the builder awake; the last one closing starts the idle clock.
    pub(super) fn note_activity(&mut self, a: Activity) {
        if self.on_demand.running.is_none() || self.on_demand.sleeping {
            return;
        }
        self.on_demand.idle_deadline =
            (a.open == 0).then(|| Instant::now() + Duration::from_secs(self.cfg.idle_stop));
    }

    /// No connection for `idle_stop`: stops the container (the store and the registrations
    /// stay; a connection wakes it).
    pub(super) async fn go_to_sleep(&mut self) {
        self.on_demand.idle_deadline = None;
        if self.on_demand.running.is_none() || self.persisted.desired != Desired::Up {
            return;
        }
        // New connections wait from here on; one that came in just before keeps it awake.
        self.on_demand.backend.send_replace(Backend::Asleep);
        if self.on_demand.activity.borrow().open > 0 {
            self.relay_awake();
            return;
        }
        self.on_demand.sleeping = true;
        self.retry.cancel();
        let stopped = match self.our_container().await {
            Ok(Some((d, f))) => {
                let r = docker::container::stop(&d, &f.id, Duration::from_secs(5))
                    .await
                    .map_err(|e| e.to_string());
                if r.is_ok()
                    && let Ok((tag, _)) = docker::image_for(&self.cfg)
                {
                    let sizing = self
                        .sizing
                        .unwrap_or_else(|| docker::Sizing::new(&self.cfg.builder, None));
                    let spec = docker::spec(&self.cfg, &tag, &sizing);
                    if f.spec_hash.as_deref() == Some(spec.hash().as_str()) {
                        self.on_demand.slept = Some((f.id.clone(), spec.privileges));
                    }
                }
                r
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = stopped {
            tracing::warn!(error = %e, "on demand: could not stop the idle builder");
        }
        let idle = self.cfg.idle_stop;
        tracing::info!(
            idle_secs = idle,
            "on demand: no connection for {idle} s, the builder sleeps"
        );
        self.set(|s| {
            if let Some(c) = &mut s.container {
                c.state = "exited".into();
            }
        });
        self.set_state(
            State::Sleeping,
            Some(format!(
                "no connection for {idle} s; the next connection to 127.0.0.1:{} wakes it",
                self.cfg.port
            )),
        );
    }

    /// The container's own sshd address, when the host routes to it (a Linux engine): the
    /// relay then skips Docker's userland port proxy, which costs a copy of every byte and a
    /// connection of its own. Docker Desktop gives a Mac no route to it: there, and wherever
    /// the address does not answer, connections keep to the published loopback port. sshd
    /// stays unpublished beyond loopback either way: the bridge is internal to the host.
    pub(super) async fn find_direct(&mut self, docker: &crate::docker::Engine, id: &str) {
        self.on_demand.direct = None;
        if docker::base::HostOs::current() != docker::base::HostOs::Linux {
            return;
        }
        let Ok(Some(ip)) = docker::container::bridge_address(docker, id).await else {
            return;
        };
        let addr = std::net::SocketAddr::new(ip, 22);
        // Routable: it connects, or the container itself refuses (sshd not listening yet).
        let probe = tokio::net::TcpStream::connect(addr);
        self.on_demand.direct = match tokio::time::timeout(Duration::from_millis(500), probe).await
        {
            Ok(Ok(_)) => Some(addr),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(addr),
            _ => None,
        };
        tracing::debug!(direct = ?self.on_demand.direct, "on demand: the container's own address");
    }

    /// Starts the stopped container; returns its sshd's port. `None` when anything is not as
    /// it was left (the reconcile then does the whole work).
    async fn start_sleeping_container(&mut self) -> Option<u16> {
        let (id, privileges) = self.on_demand.slept.take()?;
        let d = self.docker.clone()?;
        docker::start(&d, &id, 0, &privileges).await.ok()?;
        self.find_direct(&d, &id).await;
        docker::container::published_port(&d, &id).await.ok()?
    }

    /// A connection arrived while the builder sleeps: bring it up; the relay holds the
    /// connection until sshd answers.
    pub(super) async fn wake(&mut self) {
        if !self.on_demand.sleeping || self.persisted.desired != Desired::Up {
            return;
        }
        tracing::info!("on demand: a connection wakes the builder");
        self.on_demand.sleeping = false;
        let started = Instant::now();
        // The fast way first: start the container it stopped and hand its port to the relay,
        // which holds the connection until sshd accepts it. The reconcile that follows checks
        // health and registrations as always (and re-creates whatever went missing).
        if let Some(port) = self.start_sleeping_container().await {
            self.sshd_port = port;
            self.relay_awake();
        }
        if self.reconcile(&|_| {}).await.is_ok() {
            tracing::info!(
                ms = started.elapsed().as_millis() as u64,
                "on demand: the builder is awake"
            );
        }
    }
}
