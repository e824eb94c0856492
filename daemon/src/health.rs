//! The SSH health check: TCP connect, handshake with the host key pinned, public-key auth as
//! root, and one command that proves Nix answers and reports the builder's facts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};

pub use builderd_core::config::is_system;

use crate::keys::fingerprint;

/// The stage a check failed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Handshake,
    /// The handshake ended because the builder presented another host key than the pinned
    /// one: that does not fix itself by waiting.
    HostKey,
    Auth,
    Command,
}

impl Stage {
    /// The stage's name in status (a host key mismatch is a failed handshake there).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Handshake | Stage::HostKey => "handshake",
            Stage::Auth => "auth",
            Stage::Command => "command",
        }
    }

    /// Whether a failure at this stage is one that waiting will not fix (a wrong host key, a
    /// refused client key).
    pub fn is_permanent(self) -> bool {
        matches!(self, Stage::HostKey | Stage::Auth)
    }
}

/// Facts the command reports from inside the builder.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Facts {
    pub nix_version: String,
    pub arch: String,
    /// The systems that run on the builder and how, the native one first.
    pub platforms: Vec<Platform>,
    pub disk_free_bytes: Option<u64>,
    pub disk_total_bytes: Option<u64>,
    /// The configured substituters the builder found it cannot reach (and so does not use until
    /// they answer again), as its entrypoint's watcher last saw them.
    pub unreachable_substituters: Vec<String>,
}

/// A system the builder runs, and how: `native`, `rosetta`, `qemu` or `emulated` (a foreign
/// program ran, through a handler that could not be named).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub system: String,
    pub how: String,
}

impl Facts {
    /// How x86_64 programs run on the builder, or `missing`.
    pub fn x86_64(&self) -> String {
        self.platforms
            .iter()
            .find(|p| p.system == "x86_64-linux")
            .map_or_else(|| "missing".to_string(), |p| p.how.clone())
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub latency: Duration,
    pub result: Result<Facts, (Stage, String)>,
}

/// The command run on the builder. It prints `key=value` lines. The systems come from what the
/// entrypoint found by running a program of each architecture; an image of the user's own that
/// does not say gets its native system only.
pub const PROBE: &str = "printf 'nix=%s\\n' \"$(nix-store --version)\" && \
printf 'arch=%s\\n' \"$(uname -m)\" && \
if [ -r /run/nix-builder/systems ]; then sed 's/^/platform=/' /run/nix-builder/systems; \
else printf 'platform=%s-linux native\\n' \"$(uname -m | sed s/arm64/aarch64/)\"; fi && \
df -Pk /nix/store | awk 'NR==2 {print \"disk_total_kb=\" $2; print \"disk_free_kb=\" $4}' && \
{ sed 's/^/substituter=/' /run/nix-builder/substituters 2>/dev/null; true; }";

pub fn parse_facts(out: &str) -> Option<Facts> {
    let mut f = Facts::default();
    for line in out.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "nix" => f.nix_version = v.trim().to_string(),
            "arch" => f.arch = v.trim().to_string(),
            "platform" => {
                let mut w = v.split_whitespace();
                if let (Some(system), Some(how)) = (w.next(), w.next())
                    && is_system(system)
                    && !f.platforms.iter().any(|p| p.system == system)
                {
                    f.platforms.push(Platform {
                        system: system.to_string(),
                        how: how.to_string(),
                    });
                }
            }
            "disk_free_kb" => f.disk_free_bytes = v.trim().parse::<u64>().ok().map(|k| k * 1024),
            "disk_total_kb" => f.disk_total_bytes = v.trim().parse::<u64>().ok().map(|k| k * 1024),
            "substituter" => {
                if let Some(url) = v.trim().strip_prefix("unreachable ") {
                    f.unreachable_substituters.push(url.trim().to_string());
                }
            }
            _ => {}
        }
    }
    (f.nix_version.contains("Nix") && !f.arch.is_empty() && !f.platforms.is_empty()).then_some(f)
}

/// Trusts the host only when it presents `pinned` (never, without one), and remembers any other
/// key it presented.
struct HostKeyCheck {
    pinned: Option<PublicKey>,
    seen: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = server else {
            return Ok(false);
        };
        if self
            .pinned
            .as_ref()
            .is_some_and(|p| key.key_data() == p.key_data())
        {
            return Ok(true);
        }
        *self.seen.lock().expect("not poisoned") = Some(key.clone());
        Ok(false)
    }
}

type Handshake =
    Result<Result<client::Handle<HostKeyCheck>, russh::Error>, tokio::time::error::Elapsed>;

/// Connects to `target` and runs the SSH handshake until `deadline`, trusting only `pinned`.
/// Returns the handshake and the key the host presented when it was not the pinned one.
async fn handshake(
    target: Target<'_>,
    pinned: Option<&PublicKey>,
    timeout: Duration,
    deadline: Instant,
) -> Result<(Handshake, Option<PublicKey>), (Stage, String)> {
    let left = || deadline.saturating_duration_since(Instant::now());
    let stream = connect(target, left()).await?;
    let config = Arc::new(client::Config {
        inactivity_timeout: Some(timeout),
        ..Default::default()
    });
    let seen = Arc::new(Mutex::new(None));
    let handler = HostKeyCheck {
        pinned: pinned.cloned(),
        seen: seen.clone(),
    };
    let result =
        tokio::time::timeout(left(), client::connect_stream(config, stream, handler)).await;
    let other = seen.lock().expect("not poisoned").take();
    Ok((result, other))
}

/// Where a check connects, and as whom.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
}

impl Target<'_> {
    /// The local builder: root on 127.0.0.1:`port`.
    pub fn local(port: u16) -> Target<'static> {
        Target {
            host: "127.0.0.1",
            port,
            user: "root",
        }
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Runs `command` on the builder at 127.0.0.1:`port` as root, with the host key pinned.
/// Returns its standard output when it exits 0.
pub async fn run(
    port: u16,
    host_key: &PublicKey,
    client_key: Arc<PrivateKey>,
    command: &str,
    timeout: Duration,
) -> Result<String, (Stage, String)> {
    run_at(Target::local(port), host_key, client_key, command, timeout).await
}

async fn connect(
    target: Target<'_>,
    left: Duration,
) -> Result<tokio::net::TcpStream, (Stage, String)> {
    let addr = target.addr();
    let stream = tokio::time::timeout(
        left,
        tokio::net::TcpStream::connect((target.host, target.port)),
    )
    .await
    .map_err(|_| {
        (
            Stage::Connect,
            format!("{addr} did not accept within {left:?}"),
        )
    })?
    .map_err(|e| (Stage::Connect, format!("{addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Runs `command` on `target` with the host key pinned. Returns its standard output when it
/// exits 0.
pub async fn run_at(
    target: Target<'_>,
    host_key: &PublicKey,
    client_key: Arc<PrivateKey>,
    command: &str,
    timeout: Duration,
) -> Result<String, (Stage, String)> {
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let (result, other) = handshake(target, Some(host_key), timeout, deadline).await?;
    let mut session = result
        .map_err(|_| (Stage::Handshake, "SSH handshake timed out".to_string()))?
        .map_err(|e| match other {
            Some(k) => (
                Stage::HostKey,
                format!(
                    "the builder presented host key {}, not the pinned {}",
                    fingerprint(&k),
                    fingerprint(host_key)
                ),
            ),
            None => (Stage::Handshake, format!("SSH handshake failed: {e}")),
        })?;
    let auth = tokio::time::timeout(
        left(),
        session.authenticate_publickey(target.user, PrivateKeyWithHashAlg::new(client_key, None)),
    )
    .await
    .map_err(|_| (Stage::Auth, "authentication timed out".to_string()))?
    .map_err(|e| (Stage::Auth, format!("authentication failed: {e}")))?;
    if !auth.success() {
        return Err((
            Stage::Auth,
            format!(
                "the builder refused the client key for {} (is its authorized key the public half of the key builderd logs in with?)",
                target.user
            ),
        ));
    }
    let result = tokio::time::timeout(left(), exec(&session, command))
        .await
        .map_err(|_| (Stage::Command, "the command timed out".to_string()))?;
    let _ = session
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    result
}

async fn exec<H: client::Handler>(
    session: &client::Handle<H>,
    command: &str,
) -> Result<String, (Stage, String)> {
    let fail = |e: russh::Error| (Stage::Command, e.to_string());
    let mut ch = session.channel_open_session().await.map_err(fail)?;
    ch.exec(true, command).await.map_err(fail)?;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut code = None;
    while let Some(msg) = ch.wait().await {
        match msg {
            russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
            russh::ChannelMsg::ExtendedData { data, .. } => err.extend_from_slice(&data),
            russh::ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
            _ => {}
        }
    }
    match code {
        Some(0) => Ok(String::from_utf8_lossy(&out).into_owned()),
        other => Err((
            Stage::Command,
            format!(
                "`{}` exited with {}: {}",
                command.split_whitespace().next().unwrap_or(""),
                other.map_or("no status".to_string(), |c| c.to_string()),
                String::from_utf8_lossy(&err).trim()
            ),
        )),
    }
}

/// One health check of the local builder.
pub async fn check(port: u16, host_key: &PublicKey, client_key: Arc<PrivateKey>) -> Outcome {
    check_at(Target::local(port), host_key, client_key).await
}

/// One health check of the builder at `target`.
pub async fn check_at(
    target: Target<'_>,
    host_key: &PublicKey,
    client_key: Arc<PrivateKey>,
) -> Outcome {
    let start = Instant::now();
    let result = run_at(target, host_key, client_key, PROBE, Duration::from_secs(10))
        .await
        .and_then(|out| {
            parse_facts(&out).ok_or((
                Stage::Command,
                "the builder did not report a Nix version".to_string(),
            ))
        });
    Outcome {
        latency: start.elapsed(),
        result,
    }
}

/// The host key `target` presents, read from a handshake that is then refused: nothing is
/// authenticated or run on a host whose key nobody confirmed yet.
pub async fn scan_host_key(
    target: Target<'_>,
    timeout: Duration,
) -> Result<PublicKey, (Stage, String)> {
    // Never trusted here: the handshake stops before anything is sent to the host.
    let (result, seen) = handshake(target, None, timeout, Instant::now() + timeout).await?;
    if let Some(k) = seen {
        return Ok(k);
    }
    Err(match result {
        Err(_) => (Stage::Handshake, "SSH handshake timed out".to_string()),
        Ok(Err(e)) => (Stage::Handshake, format!("SSH handshake failed: {e}")),
        Ok(Ok(_)) => (Stage::Handshake, "the host presented no key".to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_parsed() {
        let f = parse_facts(
            "nix=nix-store (Nix) 2.26.3\narch=aarch64\nplatform=aarch64-linux native\nplatform=x86_64-linux rosetta\ndisk_total_kb=100\ndisk_free_kb=40\n",
        )
        .unwrap();
        assert_eq!(f.x86_64(), "rosetta");
        assert_eq!(
            f.platforms
                .iter()
                .map(|p| p.system.as_str())
                .collect::<Vec<_>>(),
            ["aarch64-linux", "x86_64-linux"]
        );
        assert_eq!(f.disk_free_bytes, Some(40 * 1024));
        assert!(f.unreachable_substituters.is_empty());
        assert_eq!(parse_facts("nothing"), None);
        let f = parse_facts(
            "nix=nix-store (Nix) 2.26.3\narch=x86_64\nplatform=x86_64-linux native\nsubstituter=reachable file:///cache\nsubstituter=unreachable https://cache.nixos.org/\n",
        )
        .unwrap();
        assert_eq!(f.unreachable_substituters, ["https://cache.nixos.org/"]);
        // A system name that would break the machines line is not taken.
        let f = parse_facts(
            "nix=nix-store (Nix) 2.26.3\narch=x86_64\nplatform=x86_64-linux native\nplatform=a,b-linux qemu\n",
        )
        .unwrap();
        assert_eq!(f.platforms.len(), 1);
        assert_eq!(f.x86_64(), "native");
    }
}
