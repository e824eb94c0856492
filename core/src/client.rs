//! The client side of the socket: one request, its progress lines, its final reply; and starting
//! the daemon when none answers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::config::Config;
use crate::protocol::{self, Envelope, ErrorKind, Progress, Reply, Request};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no builderd answers on {socket}: {reason}. Is the daemon running? (`builderctl up` starts it)"
    )]
    Unreachable { socket: PathBuf, reason: String },
    #[error("builderd could not be started: {0}")]
    Start(String),
    #[error("{message}")]
    Daemon { kind: ErrorKind, message: String },
    #[error("the daemon's reply could not be read: {0}. Its protocol may differ from this builderctl's ({client}): run `builderctl shutdown`, then retry", client = protocol::PROTOCOL)]
    BadReply(String),
    #[error("the connection to builderd broke: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "builderd stopped before it answered (it was stopped or it crashed: `builderctl logs` tells which); what it was doing may be half done, and `builderctl up` or `down` finishes it"
    )]
    Closed,
}

impl ClientError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}

/// Connects to the daemon's socket.
pub async fn connect(socket: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(socket)
        .await
        .map_err(|e| ClientError::Unreachable {
            socket: socket.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Sends `request` on `stream`; calls `progress` for each progress line; returns the final
/// reply (errors from the daemon become [`ClientError::Daemon`]).
pub async fn exchange(
    stream: UnixStream,
    request: Request,
    mut progress: impl FnMut(Progress),
) -> Result<Reply, ClientError> {
    let (r, mut w) = stream.into_split();
    let env = Envelope {
        protocol: protocol::PROTOCOL,
        request,
    };
    // A daemon that refuses the request may close before it is read: its reply still counts.
    let sent = w.write_all(&protocol::encode(&env)).await;
    let mut lines = BufReader::new(r).lines();
    if let Err(e) = sent {
        return match lines.next_line().await {
            Ok(Some(line)) => match serde_json::from_str::<Reply>(&line) {
                Ok(Reply::Error { kind, message, .. }) => {
                    Err(ClientError::Daemon { kind, message })
                }
                _ => Err(e.into()),
            },
            _ => Err(e.into()),
        };
    }
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            // A reset is a daemon that died as much as a clean end of the stream is.
            Ok(None) => return Err(ClientError::Closed),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(ClientError::Closed);
            }
            Err(e) => return Err(e.into()),
        };
        if line.len() > protocol::MAX_FRAME * 16 {
            return Err(ClientError::BadReply("the reply is too large".into()));
        }
        let reply: Reply =
            serde_json::from_str(&line).map_err(|e| ClientError::BadReply(e.to_string()))?;
        match reply {
            Reply::Progress(p) => progress(p),
            Reply::Error { kind, message, .. } => {
                return Err(ClientError::Daemon { kind, message });
            }
            other => return Ok(other),
        }
    }
}

/// Sends one request to the daemon at `socket`.
pub async fn request(
    socket: &Path,
    request: Request,
    progress: impl FnMut(Progress),
) -> Result<Reply, ClientError> {
    exchange(connect(socket).await?, request, progress).await
}

/// Why root may not start a daemon on the config at `config_path`, when it may not: under
/// `sudo` (whose config, home and state dir are the invoking user's), or on a config that
/// another user controls or may write. The root service (`sudo builderctl install`) is the way
/// to run builderd as root for a user.
pub fn root_may_not_start(config_path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    if let Some(user) = std::env::var("SUDO_USER")
        .ok()
        .filter(|u| !u.is_empty() && u != "root")
    {
        return Some(format!(
            "under sudo its config {} is {user:?}'s",
            config_path.display()
        ));
    }
    let real = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    if let Some(uid) = [config_path, real.as_path()]
        .into_iter()
        .map(|p| crate::ident::controller_of(p).0)
        .find(|&u| u != 0)
    {
        return Some(format!(
            "uid {uid} controls its config {}",
            config_path.display()
        ));
    }
    match std::fs::metadata(config_path) {
        Ok(m) if m.uid() != 0 || m.mode() & 0o022 != 0 => Some(format!(
            "its config {} is writable by others than root (owner uid {}, mode {:o})",
            config_path.display(),
            m.uid(),
            m.mode() & 0o7777
        )),
        _ => None,
    }
}

/// Connects, starting the daemon first when nothing answers (the socket is missing or refuses).
/// Waits up to `wait` for it to answer, or reports why it failed.
pub async fn connect_or_start(
    cfg: &Config,
    config_path: &Path,
    daemon: &Path,
    wait: Duration,
) -> Result<UnixStream, ClientError> {
    match connect(&cfg.socket).await {
        Ok(s) => return Ok(s),
        Err(ClientError::Unreachable { reason, .. })
            if !(reason.contains("refused") || reason.contains("No such file")) =>
        {
            return Err(ClientError::Unreachable {
                socket: cfg.socket.clone(),
                reason,
            });
        }
        Err(_) => {}
    }
    if let Some(why) = root_may_not_start(config_path) {
        return Err(ClientError::Start(format!(
            "builderctl runs as root, and {why}: a daemon started here would run as root on values the user can change. Use `sudo builderctl install` to run builderd as the service serving the user, or run `builderctl up` as the user"
        )));
    }
    let log = cfg.daemon_log();
    std::fs::create_dir_all(cfg.log_dir()).map_err(|e| {
        ClientError::Start(format!("cannot create {}: {e}", cfg.log_dir().display()))
    })?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| ClientError::Start(format!("cannot open {}: {e}", log.display())))?;
    let start_len = out.metadata().map(|m| m.len()).unwrap_or(0);
    let mut cmd = std::process::Command::new(daemon);
    // A missing config is the default one (a named one that is missing is refused before
    // this): the daemon finds that default itself, and may not be told a missing file.
    if config_path.exists() {
        cmd.arg("--config").arg(config_path);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // The daemon leaves this terminal's session itself (setsid), which it may only do while it
    // leads no process group: so no process_group(0) here.
    let mut child = cmd
        .spawn()
        .map_err(|e| ClientError::Start(format!("cannot run {}: {e}", daemon.display())))?;
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(s) = UnixStream::connect(&cfg.socket).await {
            // Reap the child in the background so that it never lingers as a zombie of ours.
            std::thread::spawn(move || child.wait());
            return Ok(s);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = text
                .get(start_len as usize..)
                .unwrap_or("")
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            return Err(ClientError::Start(format!(
                "it exited with {status}; its log ({}):\n{tail}",
                log.display()
            )));
        }
        if Instant::now() > deadline {
            return Err(ClientError::Start(format!(
                "it did not answer on {} within {wait:?}; see {}",
                cfg.socket.display(),
                log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
