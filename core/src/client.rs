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
