//! Keeping the registrations true: what is wanted, writing it, and following edits.

use super::*;

impl Supervisor {
    /// The systems to register: those the builder reported running (the native one first),
    /// narrowed to `systems` when the config names some. Never a system that does not run: Nix
    /// would send those builds here and see them refused.
    pub(super) fn systems(&self, facts: Option<&health::Facts>) -> Vec<String> {
        let reported: Vec<String> = match facts {
            Some(f) => f.platforms.iter().map(|p| p.system.clone()).collect(),
            // No facts yet: what was last registered still holds.
            None => {
                return self
                    .wanted
                    .as_ref()
                    .map(|w| w.systems.clone())
                    .unwrap_or_default();
            }
        };
        match &self.cfg.builder.systems {
            Some(only) => reported.into_iter().filter(|s| only.contains(s)).collect(),
            None => reported,
        }
    }

    pub(super) fn wanted(&self, host_key: &PublicKey, facts: Option<&health::Facts>) -> Wanted {
        let cfg = &self.cfg;
        let host_port = crate::hostnix::use_host_port(cfg.registration.uri);
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
            max_jobs: self
                .sizing
                .unwrap_or_else(|| docker::Sizing::new(&cfg.builder, None))
                .max_jobs,
            speed_factor: cfg.builder.speed_factor,
            features: cfg.builder.supported_features.clone(),
            machines_listed: true,
        }
    }

    /// Records the builder's size, and shows it in status.
    pub(super) fn set_sizing(&mut self, sizing: docker::Sizing) {
        self.sizing = Some(sizing);
        self.set(|s| {
            s.sizing = Some(crate::protocol::SizingInfo {
                max_jobs: sizing.max_jobs,
                cores: sizing.cores,
                engine_cpus: sizing.engine.map(|r| r.cpus),
                engine_memory_bytes: sizing.engine.map(|r| r.memory_bytes),
            });
        });
    }

    /// The files to follow: every registration file, the public key, the builder's host key.
    pub(super) fn watch_files(&mut self) {
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
    pub(super) async fn file_changed(&mut self, path: PathBuf) {
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
        } else {
            if let Some(w) = self.wanted.clone() {
                self.resync(&w, Some(&path)).await;
            }
            self.fleet_sync(true).await;
        }
    }

    /// Re-applies the registrations; with `edited`, each file that had to be written counts as
    /// a repair.
    pub(super) async fn resync(&mut self, wanted: &Wanted, edited: Option<&Path>) {
        tracing::debug!(?edited, "re-applying the registrations");
        let synced = self.sync_files(Some(wanted.clone())).await;
        let _ = self.save();
        if edited.is_some() {
            for w in &synced.written {
                let key = w.display().to_string();
                tracing::info!(file = %key, "repaired builderd's entries after an outside edit");
                *self.repairs.entry(key).or_default() += 1;
            }
        }
        if synced.nix_conf_changed && self.cfg.registration.restart_nix_daemon {
            restart_nix_daemon().await;
        }
        self.publish_registrations(synced.statuses);
        self.watch_files();
    }

    /// Applies `wanted` (or removes every entry, with `None`) to the registration files, off the
    /// async workers: editing a file takes a directory lock, waits for the file to be quiet and
    /// syncs it to disk.
    pub(super) async fn sync_files(&mut self, wanted: Option<Wanted>) -> registration::Synced {
        let cfg = self.cfg.clone();
        let mut created = self.persisted.created.clone();
        let (synced, created) = tokio::task::spawn_blocking(move || {
            let synced = registration::sync(&cfg, wanted.as_ref(), &mut created);
            (synced, created)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        self.persisted.created = created;
        synced
    }

    pub(super) fn publish_registrations(
        &self,
        mut statuses: Vec<crate::protocol::RegistrationStatus>,
    ) {
        for s in &mut statuses {
            s.repairs = self.repairs.get(&s.path).copied().unwrap_or(0);
        }
        let failed: Vec<String> = statuses
            .iter()
            .filter(|s| s.state != "ok" && s.state != crate::registration::SERVED_USER_ONLY)
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
    pub(super) async fn client_key_changed(&mut self) {
        let keys = match super::load_client_keys(&self.cfg).await {
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
    pub(super) async fn register(
        &mut self,
        host_key: &PublicKey,
        facts: &health::Facts,
    ) -> Result<bool, Failure> {
        let wanted = self.wanted(host_key, Some(facts));
        if wanted.systems.is_empty() {
            let runs: Vec<&str> = facts.platforms.iter().map(|p| p.system.as_str()).collect();
            return Err(Failure::new(
                ErrorKind::Invalid,
                self.cfg.key_error(
                    "systems",
                    format!(
                        "names no system the builder runs (it runs {}): name one of those, or remove `systems` to register them all",
                        runs.join(", ")
                    ),
                ),
            ));
        }
        self.retry.registered();
        let synced = self.sync_files(Some(wanted.clone())).await;
        for w in &synced.written {
            tracing::info!(file = %w.display(), "wrote builderd's entries");
        }
        self.wanted = Some(wanted);
        self.watch_files();
        self.save()?;
        if synced.nix_conf_changed && self.cfg.registration.restart_nix_daemon {
            restart_nix_daemon().await;
        }
        let up_since = self.status.borrow().up_since.unwrap_or_else(now);
        self.set(|s| s.up_since = Some(up_since));
        self.publish_registrations(synced.statuses);
        Ok(synced.changed)
    }
}

/// Restarts the nix-daemon (launchctl or systemctl), off the async workers.
pub(super) async fn restart_nix_daemon() {
    let restarted = tokio::task::spawn_blocking(|| {
        let runner = builderd_launchd::System;
        let os = builderd_launchd::Os::current();
        let cmd = builderd_launchd::nix_daemon_restart(os, &runner)?;
        Some((builderd_launchd::Runner::run(&runner, &cmd), cmd))
    })
    .await;
    match restarted {
        Ok(Some((Ok(_), cmd))) => {
            tracing::info!(command = %cmd.join(" "), "restarted the nix-daemon")
        }
        Ok(Some((Err(e), _))) => tracing::warn!(error = %e, "could not restart the nix-daemon"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "could not restart the nix-daemon"),
    }
}
