//! The on-demand relay: builderd listens on the builder's port itself and relays each connection
//! to the container's sshd. A connection that arrives while the builder sleeps asks for it to be
//! woken and is held until sshd answers, so a build never fails because the builder was asleep.
//! The relay counts open connections; the supervisor stops the builder after it has had none for
//! the idle time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Where connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// sshd answers on 127.0.0.1 at this port (published by the engine) and, where the host
    /// can route to it, at the container's own address (no userland proxy in between).
    Awake(u16, Option<SocketAddr>),
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
    let mut server = connect(&mut backend, &events).await?;
    let _ = server.set_nodelay(true);
    // Larger buffers than the default 8 KiB: a closure copy is one long stream.
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, RELAY_BUFFER, RELAY_BUFFER)
        .await?;
    Ok(())
}

const RELAY_BUFFER: usize = 256 * 1024;

/// Whether the server behind a fresh connection is there: it sends its banner (peeked, not
/// consumed: the client reads it) rather than closing. A server that says nothing for a while
/// is given the benefit of the doubt.
async fn answers(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(2), s.peek(&mut b)).await {
        Ok(Ok(n)) => n > 0,
        Ok(Err(_)) => false,
        Err(_) => true,
    }
}

/// Connects to sshd wherever the backend says it is. While the builder sleeps it asks (once)
/// for it to be woken and waits. Right after a wake the container runs but sshd may not listen
/// yet: the connection is refused, or (through Docker's port proxy, which accepts first) closed
/// before sshd's banner. Either is tried again every 5 ms, following the backend if it moves.
/// All of it for at most [`WAKE_TIMEOUT`].
async fn connect(
    backend: &mut watch::Receiver<Backend>,
    events: &mpsc::Sender<RelayEvent>,
) -> std::io::Result<TcpStream> {
    let deadline = tokio::time::Instant::now() + WAKE_TIMEOUT;
    let timed_out = || {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the builder did not answer in time",
        )
    };
    let mut asked = false;
    loop {
        let current = *backend.borrow_and_update();
        match current {
            Backend::Asleep => {
                if !asked {
                    asked = true;
                    let _ = events.send(RelayEvent::Wake).await;
                }
                match tokio::time::timeout_at(deadline, backend.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return Err(timed_out()),
                }
            }
            Backend::Awake(port, direct) => {
                let to = match direct {
                    Some(d) => d,
                    None => SocketAddr::from(([127, 0, 0, 1], port)),
                };
                match TcpStream::connect(to).await {
                    Ok(s) if answers(&s).await => {
                        tracing::debug!(port, "sshd answers");
                        return Ok(s);
                    }
                    Ok(_) => tracing::debug!(port, "closed before the banner"),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                    Err(e) => return Err(e),
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(timed_out());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
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
        let mut r = relay(Backend::Awake(echo, None)).await;
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
        r.backend.send_replace(Backend::Awake(echo, None));
        assert_eq!(greeting(&mut c).await, "SSH-2.0-echo\r\n");
    }

    #[tokio::test]
    async fn a_woken_builder_whose_sshd_is_not_listening_yet_is_waited_for() {
        // A port nothing listens on yet, as right after the container started.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let r = relay(Backend::Awake(port, None)).await;
        let mut c = TcpStream::connect(("127.0.0.1", r.port)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let l = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"SSH-2.0-late\r\n").await.unwrap();
        assert_eq!(greeting(&mut c).await, "SSH-2.0-late\r\n");
    }

    #[tokio::test]
    async fn a_proxy_that_accepts_and_closes_before_the_banner_is_tried_again() {
        // Docker's port proxy accepts, then closes when the container does not listen yet.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            for _ in 0..3 {
                let (s, _) = l.accept().await.unwrap();
                drop(s);
            }
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"SSH-2.0-ready\r\n").await.unwrap();
            let mut buf = [0u8; 4];
            let _ = s.read(&mut buf).await;
        });
        let r = relay(Backend::Awake(port, None)).await;
        let mut c = TcpStream::connect(("127.0.0.1", r.port)).await.unwrap();
        let mut buf = [0u8; 15];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"SSH-2.0-ready\r\n");
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
