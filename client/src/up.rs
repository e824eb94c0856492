//! `builderctl up [--wait]`: bring the builder up; with `--wait`, wait for a Docker engine that
//! is not running yet (Docker Desktop still starting, Colima stopped) instead of failing.

use std::path::Path;
use std::time::{Duration, Instant};

use builderd_core::client::{self, ClientError};
use builderd_core::config::Config;
use builderd_core::protocol::{ErrorKind, Progress, Request};

use crate::output::{self, Out};

/// How often `--wait` asks again.
const RETRY: Duration = Duration::from_secs(2);

pub async fn run(cfg: &Config, config_path: &Path, wait: bool, out: &Out) -> u8 {
    let progress = out.progress();
    let started = Instant::now();
    let mut told = false;
    loop {
        let stream = match client::connect_or_start(
            cfg,
            config_path,
            &crate::daemon_binary(),
            Duration::from_secs(20),
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                progress.finish();
                return crate::report(&e, out);
            }
        };
        let r = client::exchange(stream, Request::Up, |p| progress.step(&p)).await;
        match r {
            Err(ClientError::Daemon {
                kind: ErrorKind::Docker,
                message,
            }) if wait => {
                // The daemon keeps wanting the builder up and retries on its own; asking again
                // is how this command learns that the engine came.
                let waited = output::human_duration(started.elapsed().as_secs());
                let line = if told {
                    format!("still waiting for the Docker engine ({waited})")
                } else {
                    format!("waiting for the Docker engine: {message}")
                };
                progress.step(&Progress {
                    stage: "docker".into(),
                    message: line,
                    current: None,
                    total: None,
                });
                told = true;
                tokio::time::sleep(RETRY).await;
            }
            Err(ClientError::Daemon {
                kind: ErrorKind::Docker,
                message,
            }) => {
                progress.finish();
                out.error(&format!(
                    "{message}\nbuilderd keeps the builder wanted up and brings it up once the engine answers; `builderctl up --wait` waits for that"
                ));
                return crate::exit::FAILURE;
            }
            r => {
                progress.finish();
                return crate::done(r, out);
            }
        }
    }
}
