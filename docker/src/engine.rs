//! Finding the engine (the configured address, `DOCKER_HOST`, the docker context, Docker
//! Desktop's socket), connecting to it, and the errors of everything that talks to it.

use std::path::{Path, PathBuf};

use bollard::Docker;
use sha2::{Digest, Sha256};

/// A connection to the engine: the one door to it. Everything builderd does to the engine goes
/// through this crate's functions on an `Engine`; nothing outside the crate names the API client.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) api: Docker,
}

impl Engine {
    /// Whether the engine still answers on this connection.
    pub async fn answers(&self) -> bool {
        self.api.ping().await.is_ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "cannot reach the Docker engine at {host} (from {source_hint}): {reason}. To fix: {how}"
    )]
    Unreachable {
        host: String,
        source_hint: String,
        reason: String,
        /// How to start that engine.
        how: String,
    },
    #[error("the image build failed: {message}\n{log}")]
    Build { message: String, log: String },
    #[error("cannot read the build context {path}: {reason}")]
    Context { path: PathBuf, reason: String },
    #[error(
        "the Docker engine refused a privileged container ({reason}): remove `privileged = true` under [builder] in the config; the default (CAP_SYS_ADMIN, seccomp and AppArmor unconfined) is all Nix's sandbox needs"
    )]
    PrivilegedRefused { reason: String },
    #[error(
        "the Docker engine refused the privileges Nix's sandbox needs (CAP_SYS_ADMIN, seccomp and AppArmor unconfined): {reason}. Allow them on the engine, or set `sandbox = false` under [builder] in the config to build without the sandbox (builds may then differ from other Linux machines' bytes)"
    )]
    SandboxRefused { reason: String },
    #[error(
        "port {port} on 127.0.0.1 is taken{holder}: stop that, or set `port` in the config to a free port"
    )]
    PortTaken { port: u16, holder: String },
    #[error(
        "the container {name} belongs to another builderd, whose state dir is {state_dir}: builderd leaves it alone. Give this config another `container_name` (and `port`), or stop that one (`builderctl --config ITS_CONFIG down`)"
    )]
    OwnedByOther { name: String, state_dir: String },
    /// What was asked about (a container, an image) is not there.
    #[error("{action}: not found")]
    NotFound { action: String },
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: bollard::errors::Error,
    },
}

impl DockerError {
    pub(crate) fn api(
        action: impl Into<String>,
    ) -> impl FnOnce(bollard::errors::Error) -> DockerError {
        let action = action.into();
        move |source| match source {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            } => DockerError::NotFound { action },
            source => DockerError::Api { action, source },
        }
    }

    /// Names who holds the port of a [`DockerError::PortTaken`], as `find` tells it.
    pub fn with_port_holder(self, find: impl FnOnce(u16) -> Option<String>) -> DockerError {
        match self {
            DockerError::PortTaken { port, holder } if holder.is_empty() => {
                DockerError::PortTaken {
                    port,
                    holder: find(port).map(|h| format!(" by {h}")).unwrap_or_default(),
                }
            }
            other => other,
        }
    }

    /// The engine itself is not there (as opposed to refusing a request).
    pub fn is_unreachable(&self) -> bool {
        match self {
            DockerError::Unreachable { .. } => true,
            DockerError::Api { source, .. } => is_connection_error(source),
            _ => false,
        }
    }
}

pub(crate) fn is_connection_error(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError { .. } | E::JsonDataError { .. } => false,
        E::IOError { .. } | E::HyperResponseError { .. } | E::RequestTimeoutError => true,
        E::SocketNotFoundError(_) => true,
        other => {
            let s = other.to_string();
            s.contains("connect") || s.contains("Connection") || s.contains("broken pipe")
        }
    }
}

/// The engine address and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub host: String,
    pub source: String,
}

/// Finds the engine: the configured address, `DOCKER_HOST`, the current docker context,
/// Docker Desktop's per-user socket under `home`, then `/var/run/docker.sock`.
pub fn resolve_endpoint(configured: Option<&str>, home: &Path) -> Endpoint {
    resolve_endpoint_in(
        configured,
        std::env::var("DOCKER_HOST").ok().as_deref(),
        std::env::var("DOCKER_CONTEXT").ok().as_deref(),
        home,
    )
}

pub fn resolve_endpoint_in(
    configured: Option<&str>,
    env_host: Option<&str>,
    env_context: Option<&str>,
    home: &Path,
) -> Endpoint {
    let ep = |host: String, source: &str| Endpoint {
        host,
        source: source.to_string(),
    };
    if let Some(h) = configured.filter(|h| !h.is_empty()) {
        return ep(h.to_string(), "config docker_host");
    }
    if let Some(h) = env_host.filter(|h| !h.is_empty()) {
        return ep(h.to_string(), "DOCKER_HOST");
    }
    let docker_dir = home.join(".docker");
    let context = env_context.map(str::to_string).or_else(|| {
        let cfg = read_docker_file(&docker_dir.join("config.json"))?;
        let v: serde_json::Value = serde_json::from_slice(&cfg).ok()?;
        v.get("currentContext")?.as_str().map(str::to_string)
    });
    if let Some(ctx) = context.filter(|c| c != "default") {
        let digest = hex(&Sha256::digest(ctx.as_bytes()));
        let meta = docker_dir
            .join("contexts/meta")
            .join(digest)
            .join("meta.json");
        if let Some(host) = read_docker_file(&meta)
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                v.pointer("/Endpoints/docker/Host")?
                    .as_str()
                    .map(str::to_string)
            })
        {
            return ep(host, &format!("docker context {ctx}"));
        }
    }
    let desktop = docker_dir.join("run/docker.sock");
    if desktop.exists() {
        return ep(
            format!("unix://{}", desktop.display()),
            "Docker Desktop's socket",
        );
    }
    ep("unix:///var/run/docker.sock".into(), "default socket")
}

/// Root's own engine: `env_host` (the `DOCKER_HOST` of root's own environment), else
/// `/var/run/docker.sock`. No config value and nothing in a home is read.
pub fn root_endpoint(env_host: Option<&str>) -> Endpoint {
    match env_host.filter(|h| !h.is_empty()) {
        Some(h) => Endpoint {
            host: h.to_string(),
            source: "the service's DOCKER_HOST".into(),
        },
        None => Endpoint {
            host: "unix:///var/run/docker.sock".into(),
            source: "root's engine".into(),
        },
    }
}

/// The most a docker config file builderd reads may hold.
const DOCKER_FILE_LIMIT: u64 = 1 << 20;

/// A file of the user's docker config (`config.json`, a context's `meta.json`), read the way
/// every file a user controls is: with the identity of whoever controls its path, opened
/// without blocking, a regular file of at most [`DOCKER_FILE_LIMIT`] bytes. One that cannot be
/// read is logged (once per file and reason, never its contents) and taken as absent.
fn read_docker_file(path: &Path) -> Option<Vec<u8>> {
    match builderd_core::asuser::read_limited_as_owner(path, DOCKER_FILE_LIMIT, true) {
        Ok(bytes) => Some(bytes),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc_enotdir()) =>
        {
            None
        }
        Err(e) => {
            static SAID: std::sync::Mutex<Vec<(PathBuf, String)>> =
                std::sync::Mutex::new(Vec::new());
            let said = (path.to_path_buf(), e.to_string());
            let mut seen = SAID.lock().unwrap_or_else(|p| p.into_inner());
            if !seen.contains(&said) {
                tracing::warn!(file = %path.display(), error = %e, "cannot read this docker config file, so builderd ignores it: make it a plain file you can read, or remove it");
                seen.push(said);
            }
            None
        }
    }
}

fn libc_enotdir() -> i32 {
    rustix::io::Errno::NOTDIR.raw_os_error()
}

pub use builderd_core::ident::hex;

/// Connects to the engine and checks that it answers.
pub async fn connect(ep: &Endpoint) -> Result<Engine, DockerError> {
    let unreachable = |reason: String| DockerError::Unreachable {
        host: ep.host.clone(),
        source_hint: ep.source.clone(),
        reason,
        how: crate::desktop::how_to_start(ep, cfg!(target_os = "macos")),
    };
    let docker = if let Some(path) = ep.host.strip_prefix("unix://") {
        Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
    } else if ep.host.starts_with("tcp://") || ep.host.starts_with("http://") {
        Docker::connect_with_http(&ep.host, 120, bollard::API_DEFAULT_VERSION)
    } else {
        return Err(unreachable(
            "only unix:// and tcp:// engine addresses are supported".into(),
        ));
    }
    .map_err(|e| unreachable(e.to_string()))?;
    let docker = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        docker.negotiate_version(),
    )
    .await
    .map_err(|_| unreachable("no answer within 10 s".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    Ok(Engine { api: docker })
}

/// What the engine gives its containers: the CPUs and memory of its VM (Docker Desktop,
/// Colima, OrbStack) or of the machine it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    pub cpus: u32,
    pub memory_bytes: u64,
}

/// The engine's [`Resources`], as its `info` reports them now (a VM resized in Docker
/// Desktop's settings reports its new size after the engine restarts).
pub async fn resources(docker: &Engine) -> Result<Resources, DockerError> {
    let info = docker
        .api
        .info()
        .await
        .map_err(DockerError::api("engine info"))?;
    Ok(Resources {
        cpus: info.ncpu.unwrap_or(1).clamp(1, i64::from(u32::MAX)) as u32,
        memory_bytes: info.mem_total.unwrap_or(0).max(0) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_engine_is_its_own_docker_host_or_the_default_socket() {
        assert_eq!(root_endpoint(None).host, "unix:///var/run/docker.sock");
        assert_eq!(root_endpoint(Some("")).host, "unix:///var/run/docker.sock");
        assert_eq!(root_endpoint(Some("unix:///r.sock")).host, "unix:///r.sock");
    }

    #[test]
    fn endpoint_order() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path();
        assert_eq!(
            resolve_endpoint_in(Some("unix:///x"), Some("unix:///y"), None, home).source,
            "config docker_host"
        );
        assert_eq!(
            resolve_endpoint_in(None, Some("unix:///y"), None, home).host,
            "unix:///y"
        );
        assert_eq!(
            resolve_endpoint_in(None, None, None, home).host,
            "unix:///var/run/docker.sock"
        );
        // a docker context
        std::fs::create_dir_all(home.join(".docker")).unwrap();
        std::fs::write(
            home.join(".docker/config.json"),
            r#"{"currentContext":"colima"}"#,
        )
        .unwrap();
        let meta = home
            .join(".docker/contexts/meta")
            .join(hex(&Sha256::digest(b"colima")));
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(
            meta.join("meta.json"),
            r#"{"Name":"colima","Endpoints":{"docker":{"Host":"unix:///c.sock"}}}"#,
        )
        .unwrap();
        let ep = resolve_endpoint_in(None, None, None, home);
        assert_eq!(
            (ep.host.as_str(), ep.source.as_str()),
            ("unix:///c.sock", "docker context colima")
        );
        // Docker Desktop's socket is used when no context names another engine
        std::fs::remove_file(home.join(".docker/config.json")).unwrap();
        std::fs::create_dir_all(home.join(".docker/run")).unwrap();
        std::fs::write(home.join(".docker/run/docker.sock"), "").unwrap();
        assert_eq!(
            resolve_endpoint_in(None, None, None, home).source,
            "Docker Desktop's socket"
        );
    }
}
