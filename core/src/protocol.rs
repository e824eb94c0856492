//! Every type that crosses the client socket, and its framing.
//!
//! Framing: one JSON object per line (`\n`), at most [`MAX_FRAME`] bytes. A client sends one
//! [`Envelope`]; the daemon answers with zero or more [`Reply::Progress`] lines and then exactly
//! one final reply. Every envelope carries the client's [`PROTOCOL`]; the daemon refuses another
//! with [`ErrorKind::ProtocolMismatch`], except for `shutdown`, which every version honours so that
//! an old daemon can always be replaced.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL: u32 = 1;

/// The largest frame either side accepts, newline included.
pub const MAX_FRAME: usize = 64 * 1024;

/// What a client sends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    pub protocol: u32,
    pub request: Request,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Bring the builder up and register it; progress lines follow until it is healthy.
    Up,
    /// Stop and remove the container and builderd's registrations; the volume stays.
    Down,
    /// The daemon's current view, from state it already holds.
    Status,
    /// Run a health check now and return the status after it.
    Check,
    /// Collect garbage in the builder's store.
    Gc,
    /// Stop the daemon process; the builder is left as it is.
    Shutdown,
    /// Pin the host key a remote builder presented, as confirmed by the user; with
    /// `fingerprint`, only when it is that key.
    Trust {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
        /// Forget the pinned key instead, with the alias, known_hosts entries and machines
        /// line that went with it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        forget: bool,
    },
    /// Run the checks that need the daemon's knowledge (the engine, the port, the files it
    /// keeps, the host's Nix); answered with [`Reply::Doctor`].
    Doctor,
}

/// What the daemon sends back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Reply {
    /// A step of long work; more lines follow.
    Progress(Progress),
    /// The request succeeded; `message` is for people.
    Done { message: String },
    /// The daemon's status.
    Status(Box<Status>),
    /// The daemon's doctor findings.
    Doctor(Box<crate::doctor::Report>),
    /// The request failed.
    Error {
        kind: ErrorKind,
        message: String,
        /// Set with [`ErrorKind::ProtocolMismatch`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        daemon_protocol: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        daemon_version: Option<String>,
    },
}

impl Reply {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
        Reply::Error {
            kind,
            message: message.into(),
            daemon_protocol: None,
            daemon_version: None,
        }
    }

    /// True for every reply that ends a request.
    pub fn is_final(&self) -> bool {
        !matches!(self, Reply::Progress(_))
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The frame was not JSON, not an envelope, or too large.
    BadRequest,
    /// The client speaks another protocol version.
    ProtocolMismatch,
    /// The peer's uid is neither the owner's nor root's, or the administrator has not allowed
    /// what the config asks for (a root-equivalent builder for a served user).
    PermissionDenied,
    /// Invalid input: config, key files, port.
    Invalid,
    /// The request names something (a remote) that does not exist.
    UnknownName,
    /// The Docker engine could not be reached.
    Docker,
    /// Anything else that failed.
    Failed,
}

/// A step of long work.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// A stable name: `keys`, `base-image`, `image`, `container`, `host-key`, `health`, `register`.
    pub stage: String,
    pub message: String,
    /// For work with a known size, e.g. build steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

/// The overall state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Healthy and registered.
    Up,
    /// Coming up: image, container, waiting for sshd.
    Starting,
    /// Running, but something is wrong: a failing health check, a registration that failed, a
    /// container that keeps dying.
    Degraded,
    /// Not running, and not wanted.
    Down,
    /// Wanted up, but the Docker engine cannot be reached.
    WaitingForDocker,
    /// Wanted up, and bringing it up failed.
    Error,
    /// On demand: the container is stopped after an idle spell; the next connection wakes it.
    Sleeping,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Starting => "starting",
            State::Degraded => "degraded",
            State::Down => "down",
            State::WaitingForDocker => "waiting-for-docker",
            State::Error => "error",
            State::Sleeping => "sleeping",
        }
    }
}

/// The daemon's view of the builder. Its JSON form is the `status --json` schema.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// The daemon's version and protocol.
    pub version: String,
    pub protocol: u32,
    pub pid: u32,
    pub state: State,
    /// The last health check succeeded.
    pub healthy: bool,
    /// `up` or `down`: what the user last asked for.
    pub desired: String,
    /// Why the state is what it is, when not `up` or `down`.
    pub reason: Option<String>,
    pub port: u16,
    /// Unix time the builder last became healthy.
    pub up_since: Option<u64>,
    pub container: Option<ContainerInfo>,
    /// `SHA256:…`, as `ssh-keygen -lf` prints it.
    pub host_key_fingerprint: Option<String>,
    pub host_key_changed: Option<HostKeyChange>,
    pub last_health: Option<HealthReport>,
    pub builder: Option<BuilderInfo>,
    pub registrations: Vec<RegistrationStatus>,
    /// The Docker engine builderd talks to.
    pub docker_host: String,
    /// The last engine event about the container, and how long after the engine's own
    /// timestamp builderd saw it.
    #[serde(default)]
    pub last_event: Option<EventSeen>,
    /// The directory bind-mounted as the builder's volume (its host key is there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The state file could not be read at start: why, and where the bad file was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file_problem: Option<String>,
    /// The remote builders of the config, in its order.
    #[serde(default)]
    pub remotes: Vec<RemoteStatus>,
    /// The builder's jobs and cores, and the engine's size they follow.
    #[serde(default)]
    pub sizing: Option<SizingInfo>,
}

/// How many builds the builder runs at once, with how many cores each, and what the engine
/// reported giving it (absent when it could not be asked).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SizingInfo {
    pub max_jobs: u32,
    pub cores: u32,
    pub engine_cpus: Option<u32>,
    pub engine_memory_bytes: Option<u64>,
}

/// A remote builder as builderd sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RemoteStatus {
    pub name: String,
    pub address: String,
    pub port: u16,
    /// `checking` (no check yet), `up`, `unhealthy` (failing, still listed), `unlisted`
    /// (unhealthy too long: taken out of the machines file), `pending-trust` (its host key
    /// waits for `builderctl trust`), `host-key-mismatch`, `unreachable` (no key seen yet),
    /// `down`.
    pub state: String,
    pub healthy: bool,
    /// The pinned host key's fingerprint.
    pub host_key_fingerprint: Option<String>,
    /// `config` (given as `host_key`) or `trusted` (confirmed with `builderctl trust`).
    pub host_key_source: Option<String>,
    /// The key the host presented that nobody confirmed yet; never listed.
    pub pending_host_key: Option<String>,
    /// Its machines line is in the machines file.
    pub listed: bool,
    pub systems: Vec<String>,
    pub reason: Option<String>,
    pub last_health: Option<HealthReport>,
    /// Times builderd put its entries back after an outside edit.
    pub repairs: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventSeen {
    pub action: String,
    pub lag_ms: f64,
    /// Events seen since the daemon started.
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerInfo {
    pub name: String,
    pub id: String,
    pub image: String,
    /// The engine's state: `running`, `exited`, …
    pub state: String,
    pub restarts: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostKeyChange {
    pub from: String,
    pub to: String,
    pub at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HealthReport {
    /// Unix time of the check.
    pub at: u64,
    pub ok: bool,
    pub latency_ms: f64,
    /// `connect`, `handshake`, `auth`, `command`; `None` when it passed.
    pub failed_stage: Option<String>,
    pub error: Option<String>,
    pub consecutive_failures: u32,
    /// Health checks run since the daemon started.
    #[serde(default)]
    pub seq: u64,
}

/// Facts read from inside the builder at the last health check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuilderInfo {
    pub nix_version: String,
    /// The systems registered in the machines file: those the builder runs, as it reported them.
    pub systems: Vec<String>,
    /// How x86_64 binaries run: `native`, `rosetta`, `qemu`, `emulated` or `missing`.
    pub x86_64: String,
    /// Every system the builder reported running, and how (`native`, `rosetta`, `qemu`,
    /// `emulated`).
    #[serde(default)]
    pub platforms: Vec<PlatformInfo>,
    pub disk_free_bytes: Option<u64>,
    pub disk_total_bytes: Option<u64>,
    pub store_bytes: Option<u64>,
    /// Configured substituters the builder cannot reach: it builds and copies without them
    /// until they answer again.
    #[serde(default)]
    pub unreachable_substituters: Vec<String>,
}

/// A system the builder runs, and how.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlatformInfo {
    pub system: String,
    pub how: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegistrationStatus {
    /// `machines`, `nix.conf`, `known_hosts`, `ssh_config`.
    pub kind: String,
    pub path: String,
    /// `ok`, `removed`, `owned-by-nix-darwin`, `manual`, `failed`, `served-user-only` (left
    /// alone: every user's builds read it, and the builder is the served user's; see `detail`).
    pub state: String,
    /// Times builderd put its entries back after an outside edit.
    pub repairs: u32,
    /// What is wrong, and the lines to add by hand when builderd may not write the file.
    pub detail: Option<String>,
}

/// Encodes one frame, newline included.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec(msg).expect("protocol types always serialize");
    v.push(b'\n');
    v
}

/// How a frame failed to decode.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("request is not valid JSON for this protocol: {0}")]
    Malformed(String),
    #[error("protocol {client} is not spoken here (daemon speaks {PROTOCOL})")]
    Mismatch { client: u32, shutdown: bool },
}

/// Decodes a request frame (without its newline).
pub fn decode_request(line: &[u8]) -> Result<Envelope, DecodeError> {
    #[derive(Deserialize)]
    struct Probe {
        protocol: u32,
        #[serde(default)]
        request: Option<serde_json::Value>,
    }
    let probe: Probe =
        serde_json::from_slice(line).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if probe.protocol != PROTOCOL {
        let shutdown = probe
            .request
            .as_ref()
            .and_then(|r| r.get("type"))
            .and_then(|t| t.as_str())
            == Some("shutdown");
        return Err(DecodeError::Mismatch {
            client: probe.protocol,
            shutdown,
        });
    }
    serde_json::from_slice(line).map_err(|e| DecodeError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        for r in [
            Request::Up,
            Request::Down,
            Request::Status,
            Request::Check,
            Request::Gc,
            Request::Shutdown,
            Request::Trust {
                name: "big-box".into(),
                fingerprint: Some("SHA256:x".into()),
                forget: false,
            },
            Request::Trust {
                name: "big-box".into(),
                fingerprint: None,
                forget: true,
            },
        ] {
            let env = Envelope {
                protocol: PROTOCOL,
                request: r,
            };
            let bytes = encode(&env);
            assert_eq!(bytes.last(), Some(&b'\n'));
            assert_eq!(
                decode_request(&bytes[..bytes.len() - 1]).unwrap(),
                env.clone()
            );
        }
    }

    #[test]
    fn wire_form_is_stable() {
        let env = Envelope {
            protocol: 1,
            request: Request::Up,
        };
        assert_eq!(
            String::from_utf8(encode(&env)).unwrap(),
            "{\"protocol\":1,\"request\":{\"type\":\"up\"}}\n"
        );
    }

    #[test]
    fn garbage_unknown_and_mismatch() {
        assert!(matches!(
            decode_request(b"\x00\xffgarbage"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_request(br#"{"protocol":1,"request":{"type":"fly"}}"#),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(
            decode_request(br#"{"protocol":7,"request":{"type":"status"}}"#),
            Err(DecodeError::Mismatch {
                client: 7,
                shutdown: false
            })
        );
        assert_eq!(
            decode_request(br#"{"protocol":0,"request":{"type":"shutdown"}}"#),
            Err(DecodeError::Mismatch {
                client: 0,
                shutdown: true
            })
        );
    }
}
