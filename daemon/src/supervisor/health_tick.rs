//! The periodic health check, and what a failing one leads to.

use super::*;

/// The health report after `out`, counting on from `previous`: consecutive failures and the
/// sequence number.
pub(super) fn next_report(previous: Option<&HealthReport>, out: &health::Outcome) -> HealthReport {
    HealthReport {
        at: now(),
        ok: out.result.is_ok(),
        latency_ms: out.latency.as_secs_f64() * 1000.0,
        failed_stage: out.result.as_ref().err().map(|e| e.0.as_str().to_string()),
        error: out.result.as_ref().err().map(|e| e.1.clone()),
        consecutive_failures: match &out.result {
            Ok(_) => 0,
            Err(_) => previous.map_or(0, |h| h.consecutive_failures) + 1,
        },
        seq: previous.map_or(0, |h| h.seq) + 1,
    }
}

impl Supervisor {
    pub(super) fn record_health(&mut self, out: &health::Outcome) {
        let report = next_report(self.status.borrow().last_health.as_ref(), out);
        let systems = self.systems(out.result.as_ref().ok());
        self.set(|s| {
            s.last_health = Some(report);
            s.healthy = out.result.is_ok();
            if let Ok(f) = &out.result {
                s.builder = Some(BuilderInfo {
                    nix_version: f.nix_version.clone(),
                    systems,
                    x86_64: f.x86_64(),
                    platforms: f
                        .platforms
                        .iter()
                        .map(|p| PlatformInfo {
                            system: p.system.clone(),
                            how: p.how.clone(),
                        })
                        .collect(),
                    disk_free_bytes: f.disk_free_bytes,
                    disk_total_bytes: f.disk_total_bytes,
                    store_bytes: s.builder.as_ref().and_then(|b| b.store_bytes),
                    unreachable_substituters: f.unreachable_substituters.clone(),
                });
            }
        });
    }

    /// A periodic health check while up; restarts the container after repeated failures.
    pub(super) async fn periodic(&mut self) {
        if self.on_demand.sleeping {
            // A health check must not wake it: that is a connection's job.
            return;
        }
        if self.retry.scheduled() {
            // A retry with backoff is already scheduled; checking now would defeat it.
            return;
        }
        let (Some(host_key), Some(keys)) = (self.host_key.clone(), self.keys.clone()) else {
            let _ = self.reconcile(&|_| {}).await;
            return;
        };
        let out = health::check(self.sshd_port, &host_key, keys.private.clone()).await;
        self.record_health(&out);
        match out.result {
            Ok(_) => {
                if let Some(for_) = self.retry.healthy() {
                    tracing::info!(unhealthy_for = ?for_, "health checks pass again");
                }
                // The builder answers, but can the engine still be reached to keep it so?
                if self.docker().await.is_err() {
                    let _ = self.reconcile(&|_| {}).await;
                    return;
                }
                self.refresh_container_state().await;
                if let Some(w) = self.wanted.clone()
                    && !w.machines_listed
                {
                    tracing::info!("healthy again: listing the builder in the machines file");
                    let w = Wanted {
                        machines_listed: true,
                        ..w
                    };
                    self.wanted = Some(w.clone());
                    self.resync(&w, None).await;
                }
                if self.status.borrow().state != State::Up {
                    let _ = self.reconcile(&|_| {}).await;
                } else if let Some(w) = self.wanted.clone() {
                    // Files are watched; this also repairs what a watcher could not see.
                    self.resync(&w, Some(Path::new(""))).await;
                }
            }
            Err((stage, msg)) => {
                let n = self
                    .status
                    .borrow()
                    .last_health
                    .as_ref()
                    .map_or(1, |h| h.consecutive_failures);
                if n == 1 {
                    tracing::warn!(stage = stage.as_str(), error = %msg, "health check failed");
                } else {
                    tracing::debug!(stage = stage.as_str(), error = %msg, n, "health check failed again");
                }
                self.set_state(
                    State::Degraded,
                    Some(format!("health check failed at {}: {msg}", stage.as_str())),
                );
                let unhealthy_for = self.retry.unhealthy();
                let reg = &self.cfg.registration;
                if reg.unlist_unhealthy
                    && unhealthy_for >= Duration::from_secs(reg.unlist_unhealthy_after)
                    && let Some(w) = self.wanted.clone()
                    && w.machines_listed
                {
                    tracing::warn!(
                        "unhealthy for {unhealthy_for:?}: taking the builder out of the machines file"
                    );
                    let w = Wanted {
                        machines_listed: false,
                        ..w
                    };
                    self.wanted = Some(w.clone());
                    self.resync(&w, None).await;
                }
                if n >= self.cfg.health_failures_before_restart {
                    tracing::warn!("restarting the container after {n} failed health checks");
                    if let Ok(Some((d, f))) = self.our_container().await {
                        let _ = docker::restart(&d, &f.id).await;
                    }
                    let _ = self.reconcile(&|_| {}).await;
                }
            }
        }
    }
}
