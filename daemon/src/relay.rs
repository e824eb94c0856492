//! The on-demand relay: builderd listens on the builder's port itself and relays each connection
//! to the container's sshd. A connection that arrives while the builder sleeps asks for it to be
//! woken and is held until sshd answers, so a build never fails because the builder was asleep.
//! The relay counts open connections; the supervisor stops the builder after it has had none for
//! the idle time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Where connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// sshd answers on 127.0.0.1 at this port.
    Awake(u16),
    /// The builder sleeps, or is being woken: connections wait.
    Asleep,
}

/// What the relay tells the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEvent {
    /// A connection arrived while the builder sleeps.
    Wake,
}

/// How many connections are open, and since when there were none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    pub open: usize,
    /// Connections accepted since the relay started.
    pub total: u64,
}

/// How long a connection waits for the builder to wake before it is closed.
pub const WAKE_TIMEOUT: Duration = Duration::from_secs(120);

/// Relays every connection `listener` accepts to the backend `backend` names, until `shutdown`.
/// Connection counts go to `activity`; a connection that finds the builder asleep sends
/// [`RelayEvent::Wake`] (once per connection) and waits for the backend to wake.
pub async fn run(
    listener: TcpListener,
    backend: watch::Receiver<Backend>,
    events: mpsc::Sender<RelayEvent>,
    activity: watch::Sender<Activity>,
    mut shutdown: watch::Receiver<bool>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut conns = JoinSet::new();
    let mut total = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = listener.accept() => a,
        };
        let (client, _) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "the relay could not accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        total += 1;
        let n = open.fetch_add(1, Ordering::SeqCst) + 1;
        activity.send_replace(Activity { open: n, total });
        let guard = OpenGuard {
            open: open.clone(),
            activity: activity.clone(),
            total,
        };
        let backend = backend.clone();
        let events = events.clone();
        conns.spawn(async move {
            let _guard = guard;
            if let Err(e) = relay_one(client, backend, events).await {
                tracing::debug!(error = %e, "a relayed connection ended");
            }
        });
    }
    conns.shutdown().await;
}

/// Counts a connection as closed when its task ends, however it ends.
struct OpenGuard {
    open: Arc<AtomicUsize>,
    activity: watch::Sender<Activity>,
    total: u64,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let n = self.open.fetch_sub(1, Ordering::SeqCst) - 1;
        let total = self.activity.borrow().total.max(self.total);
        self.activity.send_replace(Activity { open: n, total });
    }
}

async fn relay_one(
    mut client: TcpStream,
    mut backend: watch::Receiver<Backend>,
    events: mpsc::Sender<RelayEvent>,
) -> std::io::Result<()> {
    let _ = client.set_nodelay(true);
    let port = match *backend.borrow_and_update() {
        Backend::Awake(p) => Some(p),
        Backend::Asleep => None,
    };
    let port = match port {
        Some(p) => p,
        None => {
            let _ = events.send(RelayEvent::Wake).await;
            let woke = tokio::time::timeout(
                WAKE_TIMEOUT,
                backend.wait_for(|b| matches!(b, Backend::Awake(_))),
            )
            .await;
            match woke {
                Ok(Ok(b)) => match *b {
                    Backend::Awake(p) => p,
                    Backend::Asleep => unreachable!("waited for awake"),
                },
                _ => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the builder did not wake in time",
                    ));
                }
            }
        }
    };
    let mut server = TcpStream::connect(("127.0.0.1", port)).await?;
    let _ = server.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server that greets like sshd does, on a free port.
    async fn echo_server() -> (u16, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let h = tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    s.write_all(b"SSH-2.0-echo\r\n").await.unwrap();
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (port, h)
    }

    struct Harness {
        port: u16,
        backend: watch::Sender<Backend>,
        events: mpsc::Receiver<RelayEvent>,
        activity: watch::Receiver<Activity>,
        _shutdown: watch::Sender<bool>,
    }

    async fn relay(initial: Backend) -> Harness {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let (btx, brx) = watch::channel(initial);
        let (etx, erx) = mpsc::channel(16);
        let (atx, arx) = watch::channel(Activity { open: 0, total: 0 });
        let (stx, srx) = watch::channel(false);
        tokio::spawn(run(l, brx, etx, atx, srx));
        Harness {
            port,
            backend: btx,
            events: erx,
            activity: arx,
            _shutdown: stx,
        }
    }

    async fn greeting(s: &mut TcpStream) -> String {
        let mut buf = [0u8; 14];
        s.read_exact(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[tokio::test]
    async fn an_awake_backend_is_relayed_both_ways_and_counted() {
        let (echo, _h) = echo_server().await;
        let mut r = relay(Backend::Awake(echo)).await;
        let mut c = TcpStream::connect(("127.0.0.1", r.port)).await.unwrap();
        assert_eq!(greeting(&mut c).await, "SSH-2.0-echo\r\n");
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        r.activity.wait_for(|a| a.open == 1).await.unwrap();
        drop(c);
        let a = *r.activity.wait_for(|a| a.open == 0).await.unwrap();
        assert_eq!(a.total, 1);
        assert!(r.events.try_recv().is_err(), "nothing to wake");
    }

    #[tokio::test]
    async fn a_connection_to_a_sleeping_builder_asks_to_wake_it_and_waits() {
        let (echo, _h) = echo_server().await;
        let mut r = relay(Backend::Asleep).await;
        let mut c = TcpStream::connect(("127.0.0.1", r.port)).await.unwrap();
        assert_eq!(r.events.recv().await, Some(RelayEvent::Wake));
        // Held open, not refused, while the builder wakes.
        let mut buf = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(200), c.read(&mut buf))
                .await
                .is_err(),
            "nothing is read before the builder is awake"
        );
        r.backend.send_replace(Backend::Awake(echo));
        assert_eq!(greeting(&mut c).await, "SSH-2.0-echo\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_builder_that_never_wakes_closes_the_connection() {
        let mut r = relay(Backend::Asleep).await;
        let mut c = TcpStream::connect(("127.0.0.1", r.port)).await.unwrap();
        assert_eq!(r.events.recv().await, Some(RelayEvent::Wake));
        let mut buf = [0u8; 1];
        let n = c.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "closed after the wake timeout");
        r.activity.wait_for(|a| a.open == 0).await.unwrap();
    }
}
