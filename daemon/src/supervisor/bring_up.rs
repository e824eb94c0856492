//! Bringing the builder up: image, volume, container, host key, health, registrations.

use super::*;

impl Supervisor {
    pub(super) async fn try_reconcile(&mut self, say: Say<'_>) -> Result<bool, Failure> {
        let cfg = self.cfg.clone();
        // Before anything is built or started: a builder that would make the served user root
        // on this host runs only with the administrator's consent.
        let privileges =
            docker::Privileges::for_builder(cfg.builder.privileged, cfg.builder.sandbox);
        if let Some(why) = crate::root_equivalent::refusal_here(&privileges) {
            self.stop_refused_builder().await;
            return Err(Failure::new(ErrorKind::PermissionDenied, why));
        }
        let mut changed = false;
        // A healthy builder that is degraded by a registration stays what it is while the
        // reconcile runs: it is not starting, and it did not stop being healthy.
        let healthy_now = {
            let s = self.status.borrow();
            s.healthy && matches!(s.state, State::Up | State::Degraded)
        };
        if !healthy_now {
            self.set_state(State::Starting, None);
        }

        say(step("keys", "checking the key pair"));
        let keys = self.client_keys().await?;

        let docker = self.docker().await?;
        // A context directory is read as its controller, off the async workers.
        let (tag, ctx) = {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || docker::image_for(&cfg))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?
        };
        // Asked at every bring-up, so that a VM resized since is followed (a new size
        // re-creates the container, as any other change of its spec).
        let engine = docker::resources(&docker).await.ok();
        let sizing = docker::Sizing::new(&cfg.builder, engine);
        self.set_sizing(sizing);
        let spec = docker::spec(&cfg, &tag, &sizing);
        if docker::name_taken_by_other(&docker, &cfg.container_name).await? {
            return Err(Failure::new(
                ErrorKind::Invalid,
                format!(
                    "a container named {} exists that builderd did not make: remove it (`docker rm -f {0}`) or set `container_name` in the config",
                    cfg.container_name
                ),
            ));
        }
        let mut found = docker::find(
            &docker,
            &cfg.container_name,
            &docker::owner_id(&cfg.state_dir),
        )
        .await?;
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
        // On demand the relay holds the port; the container's own is one the engine picks.
        self.ensure_relay()?;
        if !cfg.on_demand
            && !found.as_ref().is_some_and(|f| f.running)
            && !crate::port::is_free(cfg.port)
        {
            return Err(DockerError::PortTaken {
                port: cfg.port,
                holder: crate::port::holder(cfg.port)
                    .map(|h| format!(" by {h}"))
                    .unwrap_or_default(),
            }
            .into());
        }

        if !docker::image_exists(&docker, &tag).await? {
            let started = Instant::now();
            let base = if ctx.embedded {
                say(step(
                    "base-image",
                    format!("checking the base image {}", cfg.image.base_image),
                ));
                let say_base = |m: String| say(step("base-image", m));
                let base = docker::ensure_base(&docker, &cfg, &say_base)
                    .await
                    .map_err(|e| match e {
                        docker::base::BaseError::Docker(d) => Failure::from(d),
                        other => Failure::new(ErrorKind::Failed, other),
                    })?;
                Some(base)
            } else {
                None
            };
            say(step(
                "image",
                match &base {
                    Some(b) => format!("building {tag} from {b}"),
                    None => format!("building {tag}"),
                },
            ));
            let say_build = |m: String, n: Option<(u64, u64)>| {
                say(Progress {
                    stage: "image".into(),
                    message: m,
                    current: n.map(|n| n.0),
                    total: n.map(|n| n.1),
                })
            };
            docker::build_image(&docker, &cfg, &tag, &ctx, base.as_deref(), &say_build).await?;
            tracing::info!(image = %tag, base = base.as_deref().unwrap_or("the context's own"), secs = started.elapsed().as_secs_f64(), "built the builder image");
            changed = true;
        }

        // The volume: the client's public key as host.pub.
        let vol = cfg.volume_dir();
        if vol.starts_with(crate::config::ROOT_VOLUMES) {
            let dir = Path::new(crate::config::ROOT_VOLUMES).to_path_buf();
            tokio::task::spawn_blocking(move || seal_root_volumes(&dir))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
                .map_err(|e| Failure::new(ErrorKind::Failed, e))?;
        }
        crate::fsutil::as_owner_of(&vol, || {
            std::fs::create_dir_all(&vol).map_err(|e| crate::fsutil::FsError {
                action: "cannot create",
                path: vol.clone(),
                source: e,
            })
        })
        .map_err(|e| Failure::new(ErrorKind::Failed, e))?;
        let host_pub = vol.join("host.pub");
        let line = format!("{}\n", keys.public_line);
        let key_changed = read_volume_file(&host_pub).await.as_deref() != Some(line.as_bytes());
        if key_changed {
            crate::fsutil::write_atomic(&host_pub, line.as_bytes(), 0o644)
                .map_err(|e| Failure::new(ErrorKind::Failed, e))?;
        }

        // A start or re-creation after the builder had been up is a restart, shown in status.
        let had_been_up = self.status.borrow().up_since.is_some();
        let mut started = false;
        let id = match found {
            Some(f) => {
                if !f.running {
                    say(step("container", "starting the container"));
                    docker::start(&docker, &f.id, cfg.port, &spec.privileges).await?;
                    tracing::info!(container = %cfg.container_name, id = %short(&f.id), "started the container");
                    changed = true;
                    started = true;
                } else if self.status.borrow().container.is_none() {
                    tracing::info!(container = %cfg.container_name, id = %short(&f.id), "adopted the running container");
                }
                if f.running && key_changed {
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
                if let Err(e) = docker::start(&docker, &id, cfg.port, &spec.privileges).await {
                    let _ = docker::remove(&docker, &id).await;
                    return Err(e.into());
                }
                tracing::info!(container = %cfg.container_name, id = %short(&id), image = %tag, privileges = ?spec.privileges, "created and started the container");
                changed = true;
                started = true;
                id
            }
        };
        let state = match docker::find(
            &docker,
            &cfg.container_name,
            &docker::owner_id(&cfg.state_dir),
        )
        .await
        {
            Ok(Some(f)) => f.state,
            _ => "unknown".to_string(),
        };
        self.set_container(&id, &tag, started && had_been_up, state);
        self.sshd_port = if cfg.on_demand {
            self.find_direct(&docker, &id).await;
            docker::container::published_port(&docker, &id)
                .await?
                .ok_or_else(|| {
                    Failure::new(
                        ErrorKind::Failed,
                        "the engine did not say which port the container's sshd is published on",
                    )
                })?
        } else {
            cfg.port
        };
        let up = self.finish_up(&docker, &id, keys, say, changed).await;
        if up.is_ok() {
            self.relay_awake();
        }
        up
    }

    pub(super) fn set_container(&self, id: &str, image: &str, restarted: bool, state: String) {
        let name = self.cfg.container_name.clone();
        self.set(|s| {
            let restarts = s.container.as_ref().map_or(0, |c| c.restarts) + u32::from(restarted);
            s.container = Some(ContainerInfo {
                name,
                id: id.chars().take(12).collect(),
                image: image.into(),
                state,
                restarts,
            })
        });
    }

    /// Puts the engine's own word on the container's state in status.
    pub(super) async fn refresh_container_state(&mut self) {
        // One call on the engine connection already held: this runs at every event and tick.
        let (Some(d), Some(id)) = (
            self.docker.clone(),
            self.status
                .borrow()
                .container
                .as_ref()
                .map(|c| c.id.clone()),
        ) else {
            return;
        };
        // The container itself, not the engine's list: the engine announces a pause before its
        // list shows it.
        let state = match docker::inspect(&d, &id).await {
            Ok(c) => match c.state {
                Some(s) => s,
                None => return,
            },
            Err(DockerError::NotFound { .. }) => "removed".to_string(),
            Err(_) => return,
        };
        self.set(|s| {
            if let Some(c) = &mut s.container
                && c.id == id
            {
                c.state = state;
            }
        });
    }

    pub(super) async fn finish_up(
        &mut self,
        docker: &Engine,
        id: &str,
        keys: ClientKeys,
        say: Say<'_>,
        mut changed: bool,
    ) -> Result<bool, Failure> {
        say(step("host-key", "waiting for the builder's host key"));
        let host_key = self.wait_host_key(docker, id).await?;
        let fp = keys::fingerprint(&host_key);
        self.hand_over_host_key(&host_key).await?;
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
        let was_up = self.status.borrow().state == State::Up;
        let facts = self.wait_healthy(docker, id, &host_key, &keys).await?;
        if changed || !was_up {
            let ms = self
                .status
                .borrow()
                .last_health
                .as_ref()
                .map_or(0.0, |h| h.latency_ms);
            let systems: Vec<String> = facts
                .platforms
                .iter()
                .map(|p| format!("{} ({})", p.system, p.how))
                .collect();
            tracing::info!(latency_ms = ms.round(), systems = %systems.join(", "), nix = %facts.nix_version, "the builder is healthy");
        }

        say(step("register", "writing the registrations"));
        changed |= self.register(&host_key, &facts).await?;
        if self.persisted.host_key_fingerprint.as_deref() != Some(fp.as_str()) {
            self.persisted.host_key_fingerprint = Some(fp);
            self.save()?;
        }
        Ok(changed)
    }

    /// A volume only root may reach (a root service on Linux) leaves the user's own tools
    /// (`builderctl ssh`, doctor) without the builder's public host key: root hands a copy of
    /// it to the state dir, written as the user. The copy only ever serves the user's own ssh;
    /// root pins the key it read from the volume itself.
    async fn hand_over_host_key(&self, host_key: &PublicKey) -> Result<(), Failure> {
        if !self
            .cfg
            .volume_dir()
            .starts_with(crate::config::ROOT_VOLUMES)
        {
            return Ok(());
        }
        let path = crate::config::host_key_copy(&self.cfg.state_dir);
        let line = format!("{}\n", keys::key_line(host_key));
        tokio::task::spawn_blocking(move || {
            if crate::fsutil::read_limited_as_owner(&path, 64 * 1024, false).ok()
                == Some(line.clone().into_bytes())
            {
                return Ok(());
            }
            crate::fsutil::write_atomic(&path, line.as_bytes(), 0o644)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .map_err(|e| Failure::new(ErrorKind::Failed, e))
    }

    pub(super) async fn wait_host_key(
        &self,
        docker: &Engine,
        id: &str,
    ) -> Result<PublicKey, Failure> {
        let path = self.cfg.volume_dir().join("id_ed25519.pub");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut n = 0u32;
        loop {
            if let Some(bytes) = read_volume_file(&path).await
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
    pub(super) async fn keep_waiting(
        &self,
        docker: &Engine,
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

    pub(super) async fn ensure_running(&self, docker: &Engine, id: &str) -> Result<(), Failure> {
        let c = docker::inspect(docker, id).await?;
        if c.running {
            return Ok(());
        }
        Err(Failure::new(
            ErrorKind::Failed,
            format!(
                "the container exited (code {}); its last lines:\n{}",
                c.exit_code.unwrap_or(-1),
                docker::last_logs(docker, id, 20).await
            ),
        ))
    }

    pub(super) async fn wait_healthy(
        &mut self,
        docker: &Engine,
        id: &str,
        host_key: &PublicKey,
        keys: &ClientKeys,
    ) -> Result<health::Facts, Failure> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut n = 0u32;
        loop {
            let out = health::check(self.sshd_port, host_key, keys.private.clone()).await;
            self.record_health(&out);
            match out.result {
                Ok(facts) => return Ok(facts),
                // The wrong host key or a refused client key will not fix itself.
                Err((stage, msg)) if stage.is_permanent() => {
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
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// The short form of a container id, as `docker ps` shows it.
fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Puts the volume's host.pub into root's authorized_keys in the running container.
async fn install_client_key(docker: &Engine, id: &str) -> Result<(), Failure> {
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

/// A small file in the volume, which the builder's root (the user) writes: never through a
/// link, a regular file only, at most 64 KiB, off the async workers. `None` when it is not such
/// a file (yet).
async fn read_volume_file(path: &Path) -> Option<Vec<u8>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        crate::fsutil::read_limited_as_owner(&path, 64 * 1024, false).ok()
    })
    .await
    .ok()
    .flatten()
}

/// The directory of the root service's volumes is root's alone (0700): the builder's root,
/// who is the user, may put set-user-ID programs and device nodes in a volume, and none of
/// them may be reachable from the host by anyone but root. An older release made it 0755:
/// it is closed again at every start.
fn seal_root_volumes(dir: &Path) -> Result<(), crate::fsutil::FsError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let err = |action, e| crate::fsutil::FsError {
        action,
        path: dir.to_path_buf(),
        source: e,
    };
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(err("cannot create", e)),
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| err("cannot inspect", e))?;
    if !m.is_dir() || m.uid() != 0 {
        return Err(err(
            "refusing to keep volumes in",
            std::io::Error::other("it is not a directory of root's: remove it"),
        ));
    }
    if m.mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err("cannot close", e))?;
        tracing::info!(dir = %dir.display(), "closed the volumes' directory to everyone but root");
    }
    Ok(())
}
