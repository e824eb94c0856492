//! Following the engine's events for the container.

use super::*;

/// Follows the engine's events for builderd's container and pokes the supervisor on each death.
/// When the stream ends (the engine restarted or went away) it reconnects with backoff and pokes
/// the supervisor, which then reconciles. The engine is found again at each connect, as the
/// supervisor does.
pub async fn watch_events(
    cfg: Config,
    name: String,
    tx: mpsc::Sender<Command>,
    mut shutdown: watch::Receiver<bool>,
) {
    use futures_util::StreamExt;
    // Failed connects in a row; the first one of a streak tells the supervisor.
    let mut failures = 0u32;
    let mut connected_before = false;
    loop {
        let endpoint = docker::resolve_endpoint(&cfg);
        let docker = tokio::select! {
            _ = shutdown.changed() => return,
            d = docker::connect(&endpoint) => d,
        };
        let docker = match docker {
            Ok(d) => {
                tracing::debug!(failures, "following the engine's events");
                if failures > 0 && connected_before {
                    let _ = tx.send(Command::Poke(Poke::DockerBack)).await;
                }
                failures = 0;
                connected_before = true;
                d
            }
            Err(e) => {
                tracing::debug!(error = %e, failures, "the event stream cannot connect");
                failures += 1;
                if failures == 1 && connected_before {
                    let _ = tx.send(Command::Poke(Poke::DockerUnreachable)).await;
                }
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(backoff(failures, Duration::from_secs(2))) => continue,
                }
            }
        };
        let mut events = docker::container::events(&docker, &name);
        // A death right after a kill or stop was asked for; only others count as crashes.
        let mut stopping: Option<Instant> = None;
        loop {
            let ev = tokio::select! {
                _ = shutdown.changed() => return,
                ev = events.next() => ev,
            };
            match ev {
                Some(Ok(ev)) => {
                    let action = ev.action;
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
                        "die" | "oom" if !asked => Poke::ContainerDied,
                        "die" | "oom" => {
                            stopping = None;
                            Poke::ContainerStopped
                        }
                        "destroy" => Poke::ContainerRemoved,
                        _ => continue,
                    };
                    tracing::info!(action, "container event");
                    let _ = tx.send(Command::Poke(why)).await;
                }
                _ => break,
            }
        }
        let _ = tx.send(Command::Poke(Poke::EventsEnded)).await;
    }
}
