//! The remote builders: their host keys, their health and their registrations.
//!
//! The supervisor owns the fleet like the local builder: each round of checks runs as tasks in
//! one `JoinSet` that the supervisor's loop drains (dropping it aborts them), and every result
//! is applied by the supervisor itself, one at a time, before the files are brought to what is
//! wanted. A remote is listed in the machines file only once its pinned host key answered a
//! healthy check; it is taken out after its `unlist_after` seconds of failing checks (at
//! once when it presents another host key), and listed again at the first healthy check.
//!
//! A host key is pinned either by the config (`host_key`) or by `builderctl trust`, which
//! confirms the key the host presented at first contact. The confirmed keys, and the names whose
//! blocks are in the files, live in `state_dir/fleet.json`.

use std::collections::{BTreeMap, BTreeSet};

use russh::keys::PublicKey;
use serde::{Deserialize, Serialize};
use tokio::task::{JoinError, JoinSet};

use super::*;
use crate::config::RemoteConfig;
use crate::fsutil;
use crate::protocol::RemoteStatus;
use crate::registration::remote::{self, RemoteWanted};

/// What survives the daemon.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Saved {
    /// Confirmed host key lines by remote name.
    #[serde(default)]
    trusted: BTreeMap<String, String>,
    /// Remotes whose blocks builderd wrote, so that a remote taken out of the config loses them.
    #[serde(default)]
    registered: BTreeSet<String>,
}

fn saved_path(state_dir: &Path) -> PathBuf {
    state_dir.join("fleet.json")
}

/// What one check found.
pub(super) enum Found {
    /// The key a host with no pinned key presented.
    Scanned(Result<PublicKey, (health::Stage, String)>),
    Checked(health::Outcome),
}

/// One remote's runtime state.
#[derive(Debug, Default)]
struct Remote {
    pending: Option<PublicKey>,
    last: Option<HealthReport>,
    /// Systems the last healthy check reported.
    reported: Vec<String>,
    healthy: bool,
    unhealthy_since: Option<Instant>,
    listed: bool,
    state: String,
    reason: Option<String>,
    repairs: u32,
}

#[derive(Default)]
pub(super) struct Fleet {
    saved: Saved,
    remotes: BTreeMap<String, Remote>,
    pub(super) checks: JoinSet<(String, Found)>,
    in_flight: BTreeSet<String>,
}

impl Fleet {
    /// Reads `fleet.json` with the identity of whoever controls the state dir, as `state.json`.
    pub(super) fn load(&mut self, state_dir: &Path) {
        let p = saved_path(state_dir);
        // As `state.json`: never through a link, a regular file only, bounded.
        self.saved = fsutil::read_limited_as_owner(&p, crate::state::STATE_LIMIT, false)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
    }
}

/// The key a remote is pinned to, and by what.
fn pinned(r: &RemoteConfig, saved: &Saved) -> Option<(PublicKey, &'static str)> {
    if let Some(line) = &r.host_key {
        return keys::parse_host_key_line(line).ok().map(|k| (k, "config"));
    }
    let line = saved.trusted.get(&r.name)?;
    keys::parse_host_key_line(line).ok().map(|k| (k, "trusted"))
}

impl Supervisor {
    /// Starts a check of every remote that has none running.
    pub(super) async fn fleet_round(&mut self) {
        for r in self.cfg.remote.clone() {
            if self.fleet.in_flight.contains(&r.name) {
                continue;
            }
            let pin = pinned(&r, &self.fleet.saved).map(|p| p.0);
            let identity = self.cfg.remote_identity(&r).to_path_buf();
            self.fleet.in_flight.insert(r.name.clone());
            self.fleet.checks.spawn(async move {
                // Read off the async workers: the identity is a file the user may point anywhere.
                let key = tokio::task::spawn_blocking(move || keys::load_private(&identity))
                    .await
                    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                let target = health::Target {
                    host: &r.address,
                    port: r.port,
                    user: &r.user,
                };
                let found = match (pin, key) {
                    (None, _) => {
                        Found::Scanned(health::scan_host_key(target, Duration::from_secs(10)).await)
                    }
                    (Some(pin), Ok(key)) => {
                        Found::Checked(health::check_at(target, &pin, key).await)
                    }
                    (Some(_), Err(e)) => Found::Checked(health::Outcome {
                        latency: Duration::ZERO,
                        result: Err((health::Stage::Auth, e.to_string())),
                    }),
                };
                (r.name, found)
            });
        }
        if self.persisted.desired == Desired::Up {
            // Also drops the blocks of remotes taken out of the config, and repairs the rest.
            self.fleet_sync(false).await;
        } else {
            self.publish_fleet(&[]);
        }
    }

    /// Applies one finished check, then brings the files to what is wanted.
    pub(super) async fn fleet_checked(&mut self, done: Result<(String, Found), JoinError>) {
        let Ok((name, found)) = done else { return };
        self.fleet.in_flight.remove(&name);
        if self.persisted.desired != Desired::Up {
            return;
        }
        let Some(cfg) = self.cfg.remote.iter().find(|r| r.name == name).cloned() else {
            return;
        };
        let unlist_after = Duration::from_secs(cfg.unlist_after);
        let unlist = self.cfg.registration.unlist_unhealthy;
        let r = self.fleet.remotes.entry(name.clone()).or_default();
        match found {
            Found::Scanned(Ok(key)) => {
                let fp = keys::fingerprint(&key);
                if r.pending.as_ref() != Some(&key) {
                    tracing::info!(remote = %name, fingerprint = %fp, "a remote presented a host key that waits for confirmation");
                }
                r.state = "pending-trust".into();
                r.reason = Some(format!(
                    "{}:{} presented host key {fp}; if that is the host's key, pin it with `builderctl trust {name} {fp}`",
                    cfg.address, cfg.port
                ));
                r.pending = Some(key);
                r.listed = false;
                r.healthy = false;
            }
            Found::Scanned(Err((stage, msg))) => {
                r.state = "unreachable".into();
                r.reason = Some(format!("no host key seen yet ({}): {msg}", stage.as_str()));
                r.listed = false;
                r.healthy = false;
            }
            Found::Checked(out) => {
                r.pending = None;
                r.last = Some(super::health_tick::next_report(r.last.as_ref(), &out));
                match out.result {
                    Ok(facts) => {
                        r.reported = facts.platforms.iter().map(|p| p.system.clone()).collect();
                        if !r.healthy || !r.listed {
                            tracing::info!(remote = %name, "healthy: listing it in the machines file");
                        }
                        r.healthy = true;
                        r.unhealthy_since = None;
                        r.listed = true;
                        r.state = "up".into();
                        r.reason = None;
                    }
                    Err((stage, msg)) => {
                        r.healthy = false;
                        let since = *r.unhealthy_since.get_or_insert_with(Instant::now);
                        if stage == health::Stage::HostKey {
                            if r.listed {
                                tracing::warn!(remote = %name, error = %msg, "the host key differs from the pinned one: unlisting it");
                            }
                            r.listed = false;
                            r.state = "host-key-mismatch".into();
                            r.reason = Some(format!(
                                "{msg}: builderd does not list it. If the host's key really changed, give the new key as `host_key` in the config"
                            ));
                        } else {
                            if r.listed && unlist && since.elapsed() >= unlist_after {
                                tracing::warn!(remote = %name, "unhealthy for {:?}: taking it out of the machines file", since.elapsed());
                                r.listed = false;
                            }
                            r.state = if r.listed { "unhealthy" } else { "unlisted" }.into();
                            r.reason =
                                Some(format!("health check failed at {}: {msg}", stage.as_str()));
                        }
                    }
                }
            }
        }
        self.fleet_sync(false).await;
    }

    /// Brings the files to what the fleet wants: the blocks of every pinned remote that was
    /// checked at least once (its machines line only while listed), none for the others.
    pub(super) async fn fleet_sync(&mut self, edited: bool) {
        if self.persisted.desired != Desired::Up {
            return;
        }
        let mut wanted = Vec::new();
        let mut keep = BTreeSet::new();
        for r in &self.cfg.remote {
            let Some((key, _)) = pinned(r, &self.fleet.saved) else {
                continue;
            };
            let Some(st) = self.fleet.remotes.get(&r.name).filter(|s| s.last.is_some()) else {
                // Not checked since the daemon started: its blocks stay as they are.
                if self.fleet.saved.registered.contains(&r.name) {
                    keep.insert(r.name.clone());
                }
                continue;
            };
            let systems = match &r.systems {
                Some(s) => s.clone(),
                None => st.reported.clone(),
            };
            keep.insert(r.name.clone());
            wanted.push(RemoteWanted {
                name: r.name.clone(),
                address: r.address.clone(),
                port: r.port,
                user: r.user.clone(),
                identity: self.cfg.remote_identity(r).to_path_buf(),
                host_key_line: keys::key_line(&key),
                listed: st.listed && !systems.is_empty(),
                systems,
                max_jobs: r.max_jobs,
                speed_factor: r.speed_factor,
                features: r.supported_features.clone(),
            });
        }
        let gone: Vec<String> = self
            .fleet
            .saved
            .registered
            .iter()
            .filter(|n| !keep.contains(*n))
            .cloned()
            .collect();
        // Files are read and written off the async workers, as the local builder's are.
        let cfg = self.cfg.clone();
        let mut created = self.persisted.created.clone();
        let (synced, created, bodies) = tokio::task::spawn_blocking(move || {
            let before = edited.then(|| fleet_bodies(&cfg, &wanted));
            let synced = remote::sync(&cfg, &wanted, &gone, &mut created);
            let after = before.map(|b| (b, fleet_bodies(&cfg, &wanted)));
            (synced, created, after.map(|a| (wanted, a)))
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        self.persisted.created = created;
        let _ = self.save();
        if let Some((wanted, (before, after))) = bodies {
            // A remote whose block had to be written back was repaired.
            for (w, (b, a)) in wanted.iter().zip(before.iter().zip(&after)) {
                if b != a
                    && let Some(r) = self.fleet.remotes.get_mut(&w.name)
                {
                    tracing::info!(remote = %w.name, "repaired a remote's entries after an outside edit");
                    r.repairs += 1;
                }
            }
        }
        let failed: Vec<String> = synced
            .statuses
            .iter()
            .filter(|s| s.state != "ok" && s.state != "removed")
            .map(|s| format!("{} {}: {}", s.kind, s.path, s.state))
            .collect();
        self.fleet.saved.registered = keep;
        self.save_fleet();
        self.publish_fleet(&failed);
    }

    fn save_fleet(&self) {
        let bytes = serde_json::to_vec_pretty(&self.fleet.saved).expect("serializes");
        if let Err(e) = fsutil::write_atomic(&saved_path(&self.cfg.state_dir), &bytes, 0o600) {
            tracing::warn!(error = %e, "cannot save the fleet's host keys");
        }
    }

    fn publish_fleet(&self, failed: &[String]) {
        let down = self.persisted.desired != Desired::Up;
        let remotes: Vec<RemoteStatus> = self
            .cfg
            .remote
            .iter()
            .map(|r| {
                let st = self.fleet.remotes.get(&r.name);
                let pin = pinned(r, &self.fleet.saved);
                let mut reason = st.and_then(|s| s.reason.clone());
                if !failed.is_empty() && !down {
                    reason = Some(format!(
                        "{}some registration files need you: {}",
                        reason.map(|r| format!("{r}; ")).unwrap_or_default(),
                        failed.join("; ")
                    ));
                }
                RemoteStatus {
                    name: r.name.clone(),
                    address: r.address.clone(),
                    port: r.port,
                    state: if down {
                        "down".into()
                    } else {
                        st.map_or("checking".into(), |s| s.state.clone())
                    },
                    healthy: st.is_some_and(|s| s.healthy),
                    host_key_fingerprint: pin.as_ref().map(|p| keys::fingerprint(&p.0)),
                    host_key_source: pin.map(|p| p.1.to_string()),
                    pending_host_key: st.and_then(|s| s.pending.as_ref()).map(keys::fingerprint),
                    listed: !down && st.is_some_and(|s| s.listed),
                    systems: r
                        .systems
                        .clone()
                        .or_else(|| st.map(|s| s.reported.clone()))
                        .unwrap_or_default(),
                    reason,
                    last_health: st.and_then(|s| s.last.clone()),
                    repairs: st.map_or(0, |s| s.repairs),
                }
            })
            .collect();
        self.set(|s| s.remotes = remotes);
    }

    /// Removes the blocks this instance wrote for `gone` from the registration files (off the
    /// async workers) and saves what it created.
    async fn unregister(&mut self, gone: Vec<String>) {
        let cfg = self.cfg.clone();
        let mut created = self.persisted.created.clone();
        self.persisted.created = tokio::task::spawn_blocking(move || {
            let _ = remote::sync(&cfg, &[], &gone, &mut created);
            created
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let _ = self.save();
    }

    /// `down` (or a start with `down` recorded): every remote's blocks go.
    pub(super) async fn fleet_down(&mut self) {
        self.fleet.checks.abort_all();
        self.fleet.in_flight.clear();
        self.fleet.remotes.clear();
        let mut gone: BTreeSet<String> = self.fleet.saved.registered.clone();
        gone.extend(self.cfg.remote.iter().map(|r| r.name.clone()));
        if !gone.is_empty() {
            self.unregister(gone.into_iter().collect()).await;
        }
        if !self.fleet.saved.registered.is_empty() {
            self.fleet.saved.registered.clear();
            self.save_fleet();
        }
        self.publish_fleet(&[]);
    }

    /// `builderctl trust NAME --forget`: unpins the key `trust` confirmed and removes the
    /// alias, known_hosts entries and machines line kept for it. A remote still in the config
    /// is scanned again and waits for `trust`, as at first contact.
    pub(super) async fn forget(&mut self, name: &str) -> Result<String, Failure> {
        let _ = self.reload_config();
        let configured = self.cfg.remote.iter().find(|r| r.name == name).cloned();
        if configured.as_ref().is_some_and(|r| r.host_key.is_some()) {
            return Err(Failure::new(
                ErrorKind::Invalid,
                format!(
                    "{name}'s host key is pinned by `host_key` in the config; remove it there, then `builderctl up`"
                ),
            ));
        }
        let trusted = self.fleet.saved.trusted.remove(name);
        let registered = self.fleet.saved.registered.remove(name);
        if trusted.is_none() && !registered && configured.is_none() {
            let mut names: Vec<&str> = self.cfg.remote.iter().map(|r| r.name.as_str()).collect();
            names.extend(self.fleet.saved.trusted.keys().map(String::as_str));
            names.sort_unstable();
            names.dedup();
            return Err(Failure::new(
                ErrorKind::UnknownName,
                format!(
                    "no remote is named {name:?}: nothing to forget (remotes: {})",
                    listed(&names)
                ),
            ));
        }
        self.unregister(vec![name.to_string()]).await;
        self.save_fleet();
        self.fleet.remotes.remove(name);
        let fp = trusted
            .as_deref()
            .and_then(|l| keys::parse_host_key_line(l).ok())
            .map(|k| keys::fingerprint(&k));
        tracing::info!(remote = %name, fingerprint = ?fp, "host key forgotten");
        self.publish_fleet(&[]);
        if configured.is_some() && self.persisted.desired == Desired::Up {
            self.fleet_round().await;
        }
        Ok(match fp {
            Some(fp) => format!(
                "forgot {name}'s host key {fp}; its alias, known_hosts entries and machines line are removed{}",
                if configured.is_some() {
                    " (it waits for `builderctl trust` again)"
                } else {
                    ""
                }
            ),
            None => format!(
                "{name} had no confirmed host key; its alias, known_hosts entries and machines line are removed"
            ),
        })
    }

    /// `builderctl trust NAME [FINGERPRINT]`: pins the key the remote presented.
    pub(super) async fn trust(
        &mut self,
        name: &str,
        fingerprint: Option<&str>,
    ) -> Result<String, Failure> {
        let _ = self.reload_config();
        let Some(r) = self.cfg.remote.iter().find(|r| r.name == name).cloned() else {
            let names: Vec<&str> = self.cfg.remote.iter().map(|r| r.name.as_str()).collect();
            return Err(Failure::new(
                ErrorKind::Invalid,
                format!(
                    "no remote is named {name:?} in the config (remotes: {})",
                    listed(&names)
                ),
            ));
        };
        if r.host_key.is_some() {
            return Err(Failure::new(
                ErrorKind::Invalid,
                format!("{name}'s host key is pinned by `host_key` in the config; edit it there"),
            ));
        }
        let pending = self.fleet.remotes.get(name).and_then(|s| s.pending.clone());
        let Some(key) = pending else {
            if let Some(line) = self.fleet.saved.trusted.get(name)
                && let Ok(k) = keys::parse_host_key_line(line)
                && fingerprint.is_none_or(|f| f == keys::fingerprint(&k))
            {
                return Ok(format!(
                    "{name}'s host key {} is already pinned",
                    keys::fingerprint(&k)
                ));
            }
            return Err(Failure::new(
                ErrorKind::Invalid,
                format!(
                    "{name} has presented no host key yet (is `builderctl up` running and {}:{} reachable?); see `builderctl status`",
                    r.address, r.port
                ),
            ));
        };
        let fp = keys::fingerprint(&key);
        if let Some(f) = fingerprint
            && f != fp
        {
            return Err(Failure::new(
                ErrorKind::Invalid,
                format!("{name} presented {fp}, not {f}: nothing was pinned"),
            ));
        }
        self.fleet
            .saved
            .trusted
            .insert(name.to_string(), keys::key_line(&key));
        self.save_fleet();
        if let Some(s) = self.fleet.remotes.get_mut(name) {
            s.pending = None;
            s.state = "checking".into();
            s.reason = None;
        }
        tracing::info!(remote = %name, fingerprint = %fp, "host key confirmed and pinned");
        self.publish_fleet(&[]);
        if self.persisted.desired == Desired::Up {
            self.fleet_round().await;
        }
        Ok(format!(
            "pinned {name}'s host key {fp}; it is listed after its first healthy check"
        ))
    }
}

/// Each wanted remote's block bodies in every registration file, to tell a repair.
fn fleet_bodies(cfg: &Config, wanted: &[RemoteWanted]) -> Vec<Vec<Option<Vec<String>>>> {
    let reg = &cfg.registration;
    let texts: Vec<String> = std::iter::once(&reg.machines_file)
        .chain(&reg.known_hosts)
        .chain(&reg.ssh_config)
        .map(|p| fsutil::read_text_as_owner(p).unwrap_or_default())
        .collect();
    wanted
        .iter()
        .map(|w| {
            texts
                .iter()
                .map(|t| registration::block::body(t, &remote::block_name(cfg, &w.name)))
                .collect()
        })
        .collect()
}

/// Remote names for a message: comma-separated, or `none`.
fn listed(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}
