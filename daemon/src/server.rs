//! The daemon process: one instance per state dir (a lock file), the client socket (mode 0600,
//! peer credentials checked), request framing, and a bounded graceful shutdown.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::protocol::{self, DecodeError, ErrorKind, MAX_FRAME, Reply, Request};
use crate::supervisor::{self, Command, Handle};

/// The uids allowed to drive this daemon: its owner and root.
#[derive(Debug, Clone, Copy)]
pub struct Owner(pub u32);

impl Owner {
    /// `BUILDERD_OWNER_UID` when a root daemon serves a user; else the daemon's own uid.
    pub fn from_env() -> Owner {
        let own = rustix::process::geteuid().as_raw();
        Owner(
            std::env::var("BUILDERD_OWNER_UID")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(own),
        )
    }

    pub fn allows(self, uid: u32) -> bool {
        uid == self.0 || uid == 0
    }
}

/// Takes the state dir's instance lock, or says which daemon holds it. The pid file is opened
/// never through a link (one planted there is removed), with the identity of whoever controls
/// the state dir.
pub fn lock_instance(state_dir: &Path) -> anyhow::Result<InstanceLock> {
    let path = state_dir.join(crate::config::PID_FILE);
    let open = || -> Result<File, crate::fsutil::FsError> {
        let err = |action, e| crate::fsutil::FsError {
            action,
            path: path.clone(),
            source: e,
        };
        std::fs::create_dir_all(state_dir)
            .map_err(|e| err("cannot create the state dir for", e))?;
        let open = || {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
        };
        match open() {
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                // A live daemon's pid file is never a link: this one was planted.
                std::fs::remove_file(&path).map_err(|e| err("cannot remove the link", e))?;
                open().map_err(|e| err("cannot open", e))
            }
            r => r.map_err(|e| err("cannot open", e)),
        }
    };
    let mut f = crate::fsutil::as_owner_of(&path, open)?;
    if !f.metadata()?.is_file() {
        bail!("{} is not a plain file: remove it", path.display());
    }
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!(
                "another builderd ({}) already runs for the state dir {}: use `builderctl shutdown` to stop it",
                holder_pid(&mut f),
                state_dir.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    use std::io::{Seek, Write};
    f.set_len(0)?;
    f.seek(std::io::SeekFrom::Start(0))?;
    writeln!(f, "{}", std::process::id())?;
    let entry = DirEntry::open(&path)?;
    Ok(InstanceLock { _file: f, entry })
}

/// The pid the lock holder wrote, read from the file that was opened and locked (never by its
/// name again, which the user may have swapped for a link since) and never echoed: only a pid
/// is shown.
fn holder_pid(f: &mut File) -> String {
    use std::io::{Read, Seek};
    let mut buf = Vec::new();
    let read = f
        .seek(std::io::SeekFrom::Start(0))
        .and_then(|_| f.take(32).read_to_end(&mut buf));
    match read.ok().and_then(|_| std::str::from_utf8(&buf).ok()) {
        Some(t) if t.trim().parse::<u32>().is_ok() => format!("pid {}", t.trim()),
        _ => "its pid file does not hold a pid".to_string(),
    }
}

/// A name in a directory opened once, at start: removed at shutdown under that directory's
/// descriptor, so that a directory swapped for a link since never makes root remove a file of
/// the same name elsewhere.
struct DirEntry {
    dir: std::os::fd::OwnedFd,
    name: std::ffi::OsString,
    /// Whoever controlled the directory: the removal runs as them, so that a directory that
    /// was a link to one of root's when it was opened still gets nothing done as root.
    owner: (u32, u32),
}

impl DirEntry {
    /// Opens `path`'s directory (as whoever controls it, never through a link).
    fn open(path: &Path) -> anyhow::Result<DirEntry> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        let name = path
            .file_name()
            .with_context(|| format!("{} names no file", path.display()))?
            .to_os_string();
        let owner = crate::fsutil::controller_of(dir);
        let fd = crate::fsutil::as_user(owner.0, owner.1, dir, || {
            rustix::fs::open(
                dir,
                rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::CLOEXEC
                    | rustix::fs::OFlags::RDONLY,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| crate::fsutil::FsError {
                action: "cannot open the directory",
                path: dir.to_path_buf(),
                source: e.into(),
            })
        })?;
        Ok(DirEntry {
            dir: fd,
            name,
            owner,
        })
    }

    fn unlink(&self) {
        let _ = crate::fsutil::as_user(self.owner.0, self.owner.1, Path::new(&self.name), || {
            rustix::fs::unlinkat(
                &self.dir,
                self.name.as_os_str(),
                rustix::fs::AtFlags::empty(),
            )
            .map_err(|e| crate::fsutil::FsError {
                action: "cannot remove",
                path: PathBuf::from(&self.name),
                source: e.into(),
            })
        });
    }
}

/// Holds the instance lock for the daemon's lifetime.
pub struct InstanceLock {
    _file: File,
    entry: DirEntry,
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        self.entry.unlink();
    }
}

/// Binds the client socket. A socket file that refuses connections is stale and replaced; one
/// that answers belongs to a running daemon. Bound with the identity of whoever controls its
/// directory; a socket root binds for its user is handed over without following a link.
pub async fn bind(path: &Path, owner: Owner) -> anyhow::Result<UnixListener> {
    if path.exists() && UnixStream::connect(path).await.is_ok() {
        bail!(
            "a daemon already answers on {}: use `builderctl shutdown` to stop it",
            path.display()
        );
    }
    let p = path.to_path_buf();
    let bind = || -> Result<std::os::unix::net::UnixListener, crate::fsutil::FsError> {
        let err = |action, e| crate::fsutil::FsError {
            action,
            path: p.clone(),
            source: e,
        };
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| err("cannot create the directory of the socket", e))?;
        }
        remove_stale_socket(&p).map_err(|e| err("cannot replace the stale socket", e))?;
        bind_private(&p).map_err(|e| err("cannot bind the socket", e))
    };
    let std_listener = crate::fsutil::as_owner_of(path, bind)?;
    std_listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(std_listener)?;
    if rustix::process::geteuid().is_root()
        && owner.0 != 0
        && crate::fsutil::controller_of(path).0 == 0
    {
        std::os::unix::fs::lchown(path, Some(owner.0), None)
            .with_context(|| format!("cannot give {} to uid {}", path.display(), owner.0))?;
    }
    Ok(listener)
}

/// Removes the socket file at `path` that refused a connection, and only a socket: looked at
/// and removed under a descriptor of its directory opened never through a link, so that a name
/// swapped for a file or a link, or a directory swapped for a link, makes nothing go.
fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let dir = path.parent().unwrap_or(Path::new("/"));
    let Some(name) = path.file_name() else {
        return Err(std::io::Error::other("it names no file"));
    };
    let fd = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY,
        Mode::empty(),
    )?;
    match rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Socket => {
            match rustix::fs::unlinkat(&fd, name, AtFlags::empty()) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Ok(_) => Err(std::io::Error::other(
            "it is not a socket, and builderd removes only a socket of its own there: move that file away, or set `socket` to another path",
        )),
    }
}

/// Binds a socket at `path` that is never open to others, even briefly, without the umask
/// (which is the process's: a file another thread made meanwhile would get the wrong mode). It
/// is bound in a fresh directory beside `path` that only this identity may enter, made 0600
/// there, and renamed into place. Where that directory's longer path would not fit a socket's
/// address, it is bound in place and made 0600 at once (every peer's uid is checked anyway).
fn bind_private(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let private_mode = || std::fs::Permissions::from_mode(0o600);
    let dir = path.parent().unwrap_or(Path::new("/"));
    sweep_stale_bind_dirs(dir);
    let short = format!(".bd-{}", &crate::fsutil::random_suffix()[..8]);
    let private = dir.join(&short);
    let inside = private.join("s");
    if inside.as_os_str().len() > crate::config::socket_path_max(cfg!(target_os = "macos")) {
        let l = std::os::unix::net::UnixListener::bind(path)?;
        std::fs::set_permissions(path, private_mode())?;
        return Ok(l);
    }
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let bound = (|| {
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
        let l = std::os::unix::net::UnixListener::bind(&inside)?;
        std::fs::set_permissions(&inside, private_mode())?;
        std::fs::rename(&inside, path)?;
        Ok(l)
    })();
    let _ = std::fs::remove_file(&inside);
    let _ = std::fs::remove_dir(&private);
    bound
}

/// The private directories [`bind_private`] makes (`.bd-` and 8 characters), left behind in
/// `dir` by a daemon killed while it bound: removed once a minute old, when they hold nothing
/// but the socket `s` (another daemon binding in the same directory takes well under a second).
fn sweep_stale_bind_dirs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(".bd-") && name.len() == 12) {
            continue;
        }
        let old = entry.metadata().ok().filter(|m| m.is_dir()).and_then(|m| {
            m.modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .filter(|age| *age > std::time::Duration::from_secs(60))
        });
        if old.is_some() {
            let _ = std::fs::remove_file(entry.path().join("s"));
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// Runs the daemon until SIGTERM, SIGINT or a `shutdown` request.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let _lock = lock_instance(&cfg.state_dir)?;
    let owner = Owner::from_env();
    let listener = bind(&cfg.socket, owner).await?;
    let socket_entry = DirEntry::open(&cfg.socket)?;
    tracing::info!(
        socket = %cfg.socket.display(),
        pid = std::process::id(),
        version = crate::VERSION,
        "builderd is serving"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let handle = supervisor::spawn(cfg.clone(), stop_rx.clone(), &mut tasks);
    let (shutdown_req_tx, mut shutdown_req) = mpsc::channel::<()>(1);
    let mut conns = JoinSet::new();
    let mut failed: Option<String> = None;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // A hang-up (a closed terminal) is not a reason to stop.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // SIGIO comes when a writer opens a file in the instant builderd holds a read lease on it
    // (to learn whether anyone is writing it); its default action would end the daemon.
    let mut lease_break = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::io())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = hangup.recv() => tracing::info!("SIGHUP ignored"),
            _ = lease_break.recv() => tracing::debug!("SIGIO: a writer opened a file builderd was looking at"),
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = shutdown_req.recv() => { tracing::info!("shutdown requested"); break; }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let handle = handle.clone();
                    let stop = shutdown_req_tx.clone();
                    let cfg = cfg.clone();
                    conns.spawn(async move {
                        if let Err(e) = serve_conn(stream, owner, handle, stop, cfg).await {
                            tracing::debug!(error = %e, "connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            // The supervisor and the event watcher only end at shutdown: one that ends before
            // has failed, and a daemon without it would serve stale status forever. Exiting
            // non-zero lets the service manager start a whole one again.
            Some(ended) = tasks.join_next() => {
                let why = match ended {
                    Err(e) if e.is_panic() => {
                        let p = e.into_panic();
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "a panic".into());
                        format!("it panicked: {msg}")
                    }
                    Err(e) => format!("it was cancelled: {e}"),
                    Ok(()) => "it returned".to_string(),
                };
                tracing::error!(why, "a vital task stopped: exiting so that the service manager restarts builderd");
                failed = Some(why);
                break;
            }
        }
    }
    let _ = stop_tx.send(true);
    socket_entry.unlink();
    let drain = async {
        while tasks.join_next().await.is_some() {}
        while conns.join_next().await.is_some() {}
    };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("tasks did not stop within 10 s; leaving them");
    }
    tracing::info!("builderd stopped");
    match failed {
        Some(why) => anyhow::bail!(
            "a vital task stopped ({why}); builderd exits so that it is started again"
        ),
        None => Ok(()),
    }
}

async fn write(stream: &mut (impl AsyncWriteExt + Unpin), reply: &Reply) -> std::io::Result<()> {
    stream.write_all(&protocol::encode(reply)).await
}

/// Reads one request frame: `Ok(None)` on a clean close before any byte.
async fn read_frame(
    reader: &mut (impl AsyncBufReadExt + Unpin),
) -> Result<Option<Vec<u8>>, &'static str> {
    let mut buf = Vec::new();
    let n = reader
        .take(MAX_FRAME as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|_| "the request could not be read")?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(if buf.len() > MAX_FRAME {
            "the request is larger than the 64 KiB limit"
        } else {
            "the request was cut off before its end of line"
        });
    }
    buf.pop();
    Ok(Some(buf))
}

async fn serve_conn(
    stream: UnixStream,
    owner: Owner,
    handle: Handle,
    stop: mpsc::Sender<()>,
    cfg: Config,
) -> anyhow::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    if !owner.allows(uid) {
        tracing::warn!(uid, "refused a client of another user");
        // Take its request off the socket first, so that the client reads the refusal rather
        // than a broken pipe; nothing of it is looked at.
        let _ = tokio::time::timeout(Duration::from_secs(1), read_frame(&mut reader)).await;
        write(
            &mut w,
            &Reply::error(
                ErrorKind::PermissionDenied,
                format!(
                    "uid {uid} may not drive this builder: only its owner (uid {}) and root may",
                    owner.0
                ),
            ),
        )
        .await?;
        return Ok(());
    }
    let frame = match tokio::time::timeout(Duration::from_secs(30), read_frame(&mut reader)).await {
        Err(_) => {
            write(
                &mut w,
                &Reply::error(ErrorKind::BadRequest, "no request within 30 s"),
            )
            .await?;
            return Ok(());
        }
        Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some(f))) => f,
        Ok(Err(msg)) => {
            write(&mut w, &Reply::error(ErrorKind::BadRequest, msg)).await?;
            return Ok(());
        }
    };
    let request = match protocol::decode_request(&frame) {
        Ok(env) => env.request,
        Err(DecodeError::Mismatch { shutdown: true, .. }) => Request::Shutdown,
        Err(DecodeError::Mismatch { client, .. }) => {
            let reply = Reply::Error {
                kind: ErrorKind::ProtocolMismatch,
                message: format!(
                    "this daemon (builderd {}) speaks protocol {}, the client speaks {client}: run `builderctl shutdown`, then retry so that a matching daemon starts",
                    crate::VERSION,
                    protocol::PROTOCOL
                ),
                daemon_protocol: Some(protocol::PROTOCOL),
                daemon_version: Some(crate::VERSION.into()),
            };
            write(&mut w, &reply).await?;
            return Ok(());
        }
        Err(e @ DecodeError::Malformed(_)) => {
            write(&mut w, &Reply::error(ErrorKind::BadRequest, e.to_string())).await?;
            return Ok(());
        }
    };
    match request {
        Request::Status => {
            let st = handle.status.borrow().clone();
            write(&mut w, &Reply::Status(Box::new(st))).await?;
        }
        Request::Doctor => {
            let st = handle.status.borrow().clone();
            let report = crate::doctor::report(&cfg, Some(st)).await;
            write(&mut w, &Reply::Doctor(Box::new(report))).await?;
        }
        Request::Shutdown => {
            write(
                &mut w,
                &Reply::Done {
                    message: "builderd is stopping; the builder is left as it is".into(),
                },
            )
            .await?;
            let _ = stop.send(()).await;
        }
        Request::Up => {
            let (ptx, mut prx) = mpsc::unbounded_channel();
            let (rtx, rrx) = oneshot::channel();
            handle
                .commands
                .send(Command::Up {
                    progress: ptx,
                    reply: rtx,
                })
                .await
                .map_err(|_| anyhow::anyhow!("the supervisor stopped"))?;
            // Progress lines until the supervisor drops the sender, then the final reply. A
            // client that goes away does not stop the work.
            let mut client_gone = false;
            while let Some(p) = prx.recv().await {
                if !client_gone && write(&mut w, &Reply::Progress(p)).await.is_err() {
                    client_gone = true;
                }
            }
            let result = rrx
                .await
                .map_err(|_| anyhow::anyhow!("the supervisor stopped"))?;
            if !client_gone {
                write(&mut w, &final_reply(result)).await?;
            }
        }
        Request::Down | Request::Check | Request::Gc | Request::Trust { .. } => {
            let (rtx, rrx) = oneshot::channel();
            let cmd = match request.clone() {
                Request::Down => Command::Down { reply: rtx },
                Request::Check => Command::Check { reply: rtx },
                Request::Trust {
                    name,
                    fingerprint,
                    forget,
                } => Command::Trust {
                    name,
                    fingerprint,
                    forget,
                    reply: rtx,
                },
                _ => Command::Gc { reply: rtx },
            };
            handle
                .commands
                .send(cmd)
                .await
                .map_err(|_| anyhow::anyhow!("the supervisor stopped"))?;
            let result = rrx
                .await
                .map_err(|_| anyhow::anyhow!("the supervisor stopped"))?;
            if matches!(request, Request::Check) && result.is_ok() {
                let st = handle.status.borrow().clone();
                write(&mut w, &Reply::Status(Box::new(st))).await?;
            } else {
                write(&mut w, &final_reply(result)).await?;
            }
        }
    }
    w.shutdown().await.ok();
    Ok(())
}

fn final_reply(result: Result<String, supervisor::Failure>) -> Reply {
    match result {
        Ok(message) => Reply::Done { message },
        Err(f) => Reply::error(f.kind, f.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

    /// What a daemon killed while it bound left beside the socket goes at the next bind; what
    /// is fresh (another daemon binding now) or holds anything else stays.
    #[test]
    fn a_killed_binds_private_directory_goes_at_the_next_bind() {
        let d = tempfile::tempdir().unwrap();
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let make = |name: &str, with: &[&str]| {
            let p = d.path().join(name);
            std::fs::create_dir(&p).unwrap();
            for f in with {
                if *f == "s" {
                    std::os::unix::net::UnixListener::bind(p.join(f)).unwrap();
                } else {
                    std::fs::write(p.join(f), "kept").unwrap();
                }
            }
            p
        };
        let killed = make(".bd-0a1b2c3d", &["s"]);
        let killed_empty = make(".bd-4e5f6a7b", &[]);
        let fresh = make(".bd-8c9d0e1f", &["s"]);
        let not_ours = make(".bd-23456789", &["notes"]);
        let other_name = make(".bd-keep", &[]);
        for p in [&killed, &killed_empty, &not_ours, &other_name] {
            std::fs::File::open(p)
                .unwrap()
                .set_modified(hour_ago)
                .unwrap();
        }
        let _l = bind_private(&d.path().join("builderd.sock")).unwrap();
        assert!(!killed.exists() && !killed_empty.exists());
        assert!(fresh.exists() && not_ours.join("notes").exists() && other_name.exists());
    }

    /// The socket is 0600 from the moment it has its name, and making it changes nothing of
    /// the process: a file another thread creates meanwhile gets the mode it asked for.
    #[test]
    fn the_socket_is_private_and_binding_it_leaves_other_files_alone() {
        let d = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let own = Owner(rustix::process::geteuid().as_raw());
        // What the process's umask makes of 0666, read once (and put back) before the race.
        let umask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
        rustix::process::umask(umask);
        // mode_t is u16 on macOS and u32 on Linux.
        #[allow(clippy::useless_conversion)]
        let expected = 0o666 & !u32::from(umask.as_raw_mode()) & 0o777;
        let stop = std::sync::atomic::AtomicBool::new(false);
        let files = d.path().join("files");
        std::fs::create_dir(&files).unwrap();
        std::thread::scope(|s| {
            let maker = s.spawn(|| {
                let mut wrong = Vec::new();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let p = files.join(format!("f{}", n % 64));
                    let _ = std::fs::remove_file(&p);
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o666)
                        .open(&p)
                        .unwrap();
                    let mode = f.metadata().unwrap().mode() & 0o777;
                    if mode != expected {
                        wrong.push(mode);
                    }
                    n += 1;
                }
                (n, wrong)
            });
            for i in 0..300 {
                let sock = d.path().join(format!("s{}", i % 4));
                let l = rt.block_on(bind(&sock, own)).unwrap();
                let m = std::fs::symlink_metadata(&sock).unwrap();
                assert_eq!(m.mode() & 0o777, 0o600, "{}", sock.display());
                drop(l);
                std::fs::remove_file(&sock).unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let (n, wrong) = maker.join().unwrap();
            assert!(n > 0);
            assert!(
                wrong.is_empty(),
                "{} of {n} files made while the socket was bound got another mode: {:o}",
                wrong.len(),
                wrong[0]
            );
        });
        // Nothing of the binding is left beside the socket.
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "files")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
