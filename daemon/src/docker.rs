//! The Docker engine: finding it (config, `DOCKER_HOST`, the docker context, Docker Desktop's
//! socket), building the image from the embedded context, and the builder's container.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::container::{
    Config as ContainerConfig, CreateContainerOptions, InspectContainerOptions,
    ListContainersOptions, LogsOptions, RemoveContainerOptions, StartContainerOptions,
};
use bollard::image::BuildImageOptions;
use bollard::models::{HostConfig, PortBinding};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::config::Config;

/// The label every container of builderd carries; its value is the instance name.
pub const LABEL_INSTANCE: &str = "io.builderd.instance";
/// A hash of everything the container was created from; a different one means re-create.
pub const LABEL_SPEC: &str = "io.builderd.spec";

/// The embedded build context.
pub const EMBEDDED_CONTEXT: &[(&str, &[u8], u32)] = &[
    (
        "Dockerfile",
        include_bytes!("../../docker/Dockerfile"),
        0o644,
    ),
    (
        "entrypoint.sh",
        include_bytes!("../../docker/entrypoint.sh"),
        0o755,
    ),
    (
        "sshd_config",
        include_bytes!("../../docker/sshd_config"),
        0o644,
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "cannot reach the Docker engine at {host} ({source_hint}): {reason}. Start Docker Desktop (or Colima/OrbStack) and try again, or set `docker_host` in the config"
    )]
    Unreachable {
        host: String,
        source_hint: String,
        reason: String,
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
    #[error("{action}: {source}")]
    Api {
        action: String,
        #[source]
        source: bollard::errors::Error,
    },
}

impl DockerError {
    fn api(action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError {
        let action = action.into();
        move |source| DockerError::Api { action, source }
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

pub fn is_connection_error(e: &bollard::errors::Error) -> bool {
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

/// Finds the engine: config, `DOCKER_HOST`, the current docker context, Docker Desktop's
/// per-user socket, then `/var/run/docker.sock`.
pub fn resolve_endpoint(cfg: &Config) -> Endpoint {
    resolve_endpoint_in(
        cfg.docker_host.as_deref(),
        std::env::var("DOCKER_HOST").ok().as_deref(),
        std::env::var("DOCKER_CONTEXT").ok().as_deref(),
        &crate::config::home_dir(),
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
        let cfg = std::fs::read(docker_dir.join("config.json")).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&cfg).ok()?;
        v.get("currentContext")?.as_str().map(str::to_string)
    });
    if let Some(ctx) = context.filter(|c| c != "default") {
        let digest = hex(&Sha256::digest(ctx.as_bytes()));
        let meta = docker_dir
            .join("contexts/meta")
            .join(digest)
            .join("meta.json");
        if let Some(host) = std::fs::read(&meta)
            .ok()
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

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Connects to the engine and checks that it answers.
pub async fn connect(ep: &Endpoint) -> Result<Docker, DockerError> {
    let unreachable = |reason: String| DockerError::Unreachable {
        host: ep.host.clone(),
        source_hint: ep.source.clone(),
        reason,
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
    Ok(docker)
}

/// The build context: the embedded one, or a directory.
#[derive(Debug, Clone)]
pub struct Context {
    /// (relative path, bytes, mode), sorted by path.
    pub files: Vec<(String, Vec<u8>, u32)>,
    pub embedded: bool,
}

impl Context {
    pub fn embedded() -> Context {
        let mut files: Vec<(String, Vec<u8>, u32)> = EMBEDDED_CONTEXT
            .iter()
            .map(|(p, b, m)| (p.to_string(), b.to_vec(), *m))
            .collect();
        for arch in crate::probe::Arch::ALL {
            files.push((
                format!("probe-{}", arch.name()),
                crate::probe::program(arch),
                0o755,
            ));
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Context {
            files,
            embedded: true,
        }
    }

    pub fn from_dir(dir: &Path) -> Result<Context, DockerError> {
        let mut files = Vec::new();
        let err = |reason: String| DockerError::Context {
            path: dir.to_path_buf(),
            reason,
        };
        fn walk(
            root: &Path,
            dir: &Path,
            files: &mut Vec<(String, Vec<u8>, u32)>,
        ) -> std::io::Result<()> {
            use std::os::unix::fs::PermissionsExt;
            for e in std::fs::read_dir(dir)? {
                let e = e?;
                let ty = e.file_type()?;
                let p = e.path();
                if ty.is_dir() {
                    walk(root, &p, files)?;
                } else if ty.is_file() {
                    let rel = p.strip_prefix(root).expect("under root");
                    let mode = e.metadata()?.permissions().mode() & 0o777;
                    files.push((rel.display().to_string(), std::fs::read(&p)?, mode));
                }
            }
            Ok(())
        }
        walk(dir, dir, &mut files).map_err(|e| err(e.to_string()))?;
        files.sort_by(|a, b| a.0.cmp(&b.0));
        if !files.iter().any(|f| f.0 == "Dockerfile") {
            return Err(err("it has no Dockerfile".into()));
        }
        Ok(Context {
            files,
            embedded: false,
        })
    }

    /// A hash of the context and the build arguments: the image tag.
    pub fn hash(&self, args: &[(&str, &str)]) -> String {
        let mut h = Sha256::new();
        for (p, b, m) in &self.files {
            h.update(p.as_bytes());
            h.update([0]);
            h.update(m.to_le_bytes());
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        }
        for (k, v) in args {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        hex(&h.finalize())[..16].to_string()
    }

    fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, bytes, mode) in &self.files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(*mode);
            header.set_mtime(0);
            header.set_cksum();
            b.append_data(&mut header, p, bytes.as_slice())
                .expect("writing to memory");
        }
        b.into_inner().expect("writing to memory")
    }
}

/// The image tag for `cfg`, and the context it is built from.
pub fn image_for(cfg: &Config) -> Result<(String, Context), DockerError> {
    let ctx = match &cfg.image.context {
        Some(dir) => Context::from_dir(dir)?,
        None => Context::embedded(),
    };
    let platform = build_platform(cfg);
    let tag = format!(
        "{}:{}",
        cfg.image.repository,
        ctx.hash(&[
            ("BASE_IMAGE", &cfg.image.base_image),
            ("platform", &platform)
        ])
    );
    Ok((tag, ctx))
}

/// The platform passed to the build: always on Apple Silicon (linux/arm64), and when configured.
pub fn build_platform(cfg: &Config) -> String {
    match &cfg.image.platform {
        Some(p) => p.clone(),
        None if std::env::consts::ARCH == "aarch64" => "linux/arm64".into(),
        None => String::new(),
    }
}

pub async fn image_exists(docker: &Docker, tag: &str) -> Result<bool, DockerError> {
    match docker.inspect_image(tag).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(DockerError::api(format!("inspecting image {tag}"))(e)),
    }
}

/// Builds `tag` from `ctx`, reporting each build step through `step`. `base` is the embedded
/// context's `BASE_IMAGE`: the configured base, or the local stand-in made when it could not be
/// pulled.
pub async fn build_image(
    docker: &Docker,
    cfg: &Config,
    tag: &str,
    ctx: &Context,
    base: Option<&str>,
    step: &(dyn Fn(String, Option<(u64, u64)>) + Send + Sync),
) -> Result<(), DockerError> {
    let mut buildargs = HashMap::new();
    if let Some(base) = base.filter(|_| ctx.embedded) {
        buildargs.insert("BASE_IMAGE".to_string(), base.to_string());
    }
    let opts = BuildImageOptions {
        dockerfile: "Dockerfile".to_string(),
        t: tag.to_string(),
        rm: true,
        forcerm: true,
        buildargs,
        platform: build_platform(cfg),
        ..Default::default()
    };
    let mut stream = docker.build_image(opts, None, Some(ctx.tar().into()));
    let mut log = Vec::<String>::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(e) = info.error {
                    return Err(DockerError::Build {
                        message: e.trim().to_string(),
                        log: tail(&log, 15),
                    });
                }
                if let Some(s) = info.stream {
                    for line in s.lines().filter(|l| !l.trim().is_empty()) {
                        log.push(line.to_string());
                        let n = parse_step(line);
                        step(line.trim().to_string(), n);
                    }
                }
            }
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                return Err(DockerError::Build {
                    message: error,
                    log: tail(&log, 15),
                });
            }
            Err(e) => {
                return Err(if is_connection_error(&e) {
                    DockerError::api("building the image")(e)
                } else {
                    DockerError::Build {
                        message: e.to_string(),
                        log: tail(&log, 15),
                    }
                });
            }
        }
    }
    if !image_exists(docker, tag).await? {
        return Err(DockerError::Build {
            message: "the engine reported no error, but the image is not there".into(),
            log: tail(&log, 15),
        });
    }
    Ok(())
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `Step 3/9 : RUN …` → (3, 9).
fn parse_step(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("Step ")?;
    let (frac, _) = rest.split_once(' ')?;
    let (a, b) = frac.split_once('/')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// What the container is created from. Its [`Spec::hash`] labels the container: a container
/// whose label differs was made from another spec (an edited config, an older release) and is
/// re-created, keeping the volume and so the host key.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Spec {
    pub name: String,
    pub image: String,
    pub port: u16,
    pub volume: PathBuf,
    pub privileges: Privileges,
    pub env: Vec<String>,
}

/// What the container may do beyond Docker's defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum Privileges {
    /// `--privileged`: only when asked for, for an engine where the narrow set is not enough.
    Privileged,
    /// The narrowest set under which Nix's sandbox starts: `CAP_SYS_ADMIN` (mount and the
    /// namespaces), seccomp and AppArmor unconfined (they refuse the namespace calls), and no
    /// masked or read-only /proc paths (Nix mounts a fresh /proc, which the kernel allows only
    /// when no part of the old one is covered). This is `--security-opt systempaths=unconfined`.
    Sandbox,
    /// Docker's defaults: no sandbox.
    Default,
}

impl Privileges {
    pub fn for_builder(privileged: bool, sandbox: bool) -> Privileges {
        match (privileged, sandbox) {
            (true, _) => Privileges::Privileged,
            (false, true) => Privileges::Sandbox,
            (false, false) => Privileges::Default,
        }
    }

    /// The host config fields that carry these privileges.
    pub fn host_config(&self) -> HostConfig {
        match self {
            Privileges::Privileged => HostConfig {
                privileged: Some(true),
                ..Default::default()
            },
            Privileges::Sandbox => HostConfig {
                privileged: Some(false),
                cap_add: Some(vec!["SYS_ADMIN".into()]),
                security_opt: Some(vec![
                    "seccomp=unconfined".into(),
                    "apparmor=unconfined".into(),
                ]),
                masked_paths: Some(Vec::new()),
                readonly_paths: Some(Vec::new()),
                ..Default::default()
            },
            Privileges::Default => HostConfig {
                privileged: Some(false),
                ..Default::default()
            },
        }
    }
}

impl Spec {
    pub fn from_config(cfg: &Config, image: &str) -> Spec {
        let b = &cfg.builder;
        let mut env = vec![
            format!("NIX_BUILDER_SANDBOX={}", b.sandbox),
            format!("NIX_BUILDER_SUBSTITUTERS={}", b.substituters),
            format!("NIX_BUILDER_MIN_FREE={}", b.min_free),
            format!("NIX_BUILDER_MAX_FREE={}", b.max_free),
        ];
        if let Some(k) = &b.trusted_public_keys {
            env.push(format!("NIX_BUILDER_TRUSTED_PUBLIC_KEYS={k}"));
        }
        Spec {
            name: cfg.container_name.clone(),
            image: image.to_string(),
            port: cfg.port,
            volume: cfg.volume_dir(),
            privileges: Privileges::for_builder(b.privileged, b.sandbox),
            env,
        }
    }

    /// A hash of the spec's fields (their JSON form, which does not change with the compiler).
    pub fn hash(&self) -> String {
        let json = serde_json::to_vec(self).expect("a spec serializes");
        hex(&Sha256::digest(&json))[..16].to_string()
    }

    /// The engine's container config for this spec.
    pub fn container_config(&self) -> ContainerConfig<String> {
        let mut labels = HashMap::new();
        labels.insert(LABEL_INSTANCE.to_string(), self.name.clone());
        labels.insert(LABEL_SPEC.to_string(), self.hash());
        let mut bindings = HashMap::new();
        bindings.insert(
            "22/tcp".to_string(),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(self.port.to_string()),
            }]),
        );
        let mut exposed = HashMap::new();
        exposed.insert("22/tcp".to_string(), HashMap::new());
        ContainerConfig {
            image: Some(self.image.clone()),
            hostname: Some("nix-builder".to_string()),
            env: Some(self.env.clone()),
            labels: Some(labels),
            exposed_ports: Some(exposed),
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                binds: Some(vec![format!(
                    "{}:/var/lib/nix-builder",
                    self.volume.display()
                )]),
                ..self.privileges.host_config()
            }),
            ..Default::default()
        }
    }
}

/// builderd's container as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub id: String,
    pub spec_hash: Option<String>,
    pub running: bool,
    pub state: String,
    pub image: String,
}

/// Every container, running or not, that matches one engine filter.
async fn list_containers(
    docker: &Docker,
    filter: &str,
    value: &str,
) -> Result<Vec<bollard::models::ContainerSummary>, DockerError> {
    let mut filters = HashMap::new();
    filters.insert(filter.to_string(), vec![value.to_string()]);
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters,
            ..Default::default()
        }))
        .await
        .map_err(DockerError::api("listing containers"))
}

/// Finds the container named `name` that carries builderd's label for this instance.
pub async fn find(docker: &Docker, name: &str) -> Result<Option<Found>, DockerError> {
    let list = list_containers(docker, "label", &format!("{LABEL_INSTANCE}={name}")).await?;
    let Some(c) = list.into_iter().find(|c| {
        c.names
            .iter()
            .flatten()
            .any(|n| n.trim_start_matches('/') == name)
    }) else {
        return Ok(None);
    };
    let id = c.id.unwrap_or_default();
    let labels = c.labels.unwrap_or_default();
    let state = c.state.unwrap_or_default();
    Ok(Some(Found {
        spec_hash: labels.get(LABEL_SPEC).cloned(),
        running: state == "running",
        state,
        image: c.image.unwrap_or_default(),

        id,
    }))
}

/// A container with this name that builderd does not own blocks us.
pub async fn name_taken_by_other(docker: &Docker, name: &str) -> Result<bool, DockerError> {
    match docker
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
    {
        Ok(c) => {
            let ours = c
                .config
                .and_then(|c| c.labels)
                .is_some_and(|l| l.get(LABEL_INSTANCE).map(String::as_str) == Some(name));
            Ok(!ours)
        }
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(DockerError::api("inspecting containers")(e)),
    }
}

pub async fn create(docker: &Docker, spec: &Spec) -> Result<String, DockerError> {
    let config = spec.container_config();
    let r = docker
        .create_container(
            Some(CreateContainerOptions {
                name: spec.name.clone(),
                platform: None,
            }),
            config,
        )
        .await
        .map_err(DockerError::api(format!(
            "creating container {}",
            spec.name
        )))?;
    Ok(r.id)
}

/// Starts the container, turning the engine's refusals into errors that say what to do.
pub async fn start(
    docker: &Docker,
    id: &str,
    port: u16,
    privileges: &Privileges,
) -> Result<(), DockerError> {
    match docker
        .start_container(id, None::<StartContainerOptions<String>>)
        .await
    {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 304, ..
        }) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError { message, .. })
            if message.contains("apply caps")
                || message.contains("privileged")
                || message.contains("seccomp")
                || message.contains("apparmor") =>
        {
            let reason = message.trim().to_string();
            Err(match privileges {
                Privileges::Privileged => DockerError::PrivilegedRefused { reason },
                _ => DockerError::SandboxRefused { reason },
            })
        }
        Err(bollard::errors::Error::DockerResponseServerError { message, .. })
            if message.contains("already allocated")
                || message.contains("address already in use") =>
        {
            Err(DockerError::PortTaken {
                port,
                holder: crate::port::holder(port)
                    .map(|h| format!(" by {h}"))
                    .unwrap_or_default(),
            })
        }
        Err(e) => Err(DockerError::api("starting the container")(e)),
    }
}

pub async fn remove(docker: &Docker, id: &str) -> Result<(), DockerError> {
    match docker
        .remove_container(
            id,
            Some(RemoveContainerOptions {
                force: true,
                v: false,
                link: false,
            }),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }) => Ok(()),
        Err(e) => Err(DockerError::api("removing the container")(e)),
    }
}

/// The last `n` lines the container printed.
pub async fn last_logs(docker: &Docker, id: &str, n: usize) -> String {
    let mut s = docker.logs(
        id,
        Some(LogsOptions::<String> {
            stdout: true,
            stderr: true,
            tail: n.to_string(),
            ..Default::default()
        }),
    );
    let mut out = String::new();
    while let Some(Ok(chunk)) = s.next().await {
        out.push_str(&chunk.to_string());
    }
    out.trim_end().to_string()
}

/// Runs `cmd` in the container; returns its exit code and output.
pub async fn exec(docker: &Docker, id: &str, cmd: &[&str]) -> Result<(i64, String), DockerError> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    let created = docker
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(cmd.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(DockerError::api("running a command in the container"))?;
    let mut text = String::new();
    if let StartExecResults::Attached { mut output, .. } = docker
        .start_exec(&created.id, None)
        .await
        .map_err(DockerError::api("running a command in the container"))?
    {
        while let Some(Ok(chunk)) = output.next().await {
            text.push_str(&chunk.to_string());
        }
    }
    let code = docker
        .inspect_exec(&created.id)
        .await
        .map_err(DockerError::api("reading a command's exit code"))?
        .exit_code
        .unwrap_or(-1);
    Ok((code, text))
}

/// The container's log as a stream of text chunks.
pub fn logs_stream<'a>(
    docker: &'a Docker,
    name: &str,
    follow: bool,
    tail: usize,
) -> impl futures_util::Stream<Item = Result<String, bollard::errors::Error>> + 'a {
    docker
        .logs(
            name,
            Some(LogsOptions::<String> {
                follow,
                stdout: true,
                stderr: true,
                tail: tail.to_string(),
                ..Default::default()
            }),
        )
        .map(|r| r.map(|c| c.to_string()))
}

/// Removes the image built for `cfg`, unless another container still uses it. The base image
/// stays: it is shared, and making it again takes a minute.
pub async fn purge_image(cfg: &Config) -> Result<Option<String>, DockerError> {
    let docker = connect(&resolve_endpoint(cfg)).await?;
    let (tag, _) = image_for(cfg)?;
    if !image_exists(&docker, &tag).await? {
        return Ok(None);
    }
    let users = list_containers(&docker, "ancestor", &tag).await?;
    if !users.is_empty() {
        return Ok(None);
    }
    docker
        .remove_image(&tag, None, None)
        .await
        .map_err(DockerError::api(format!("removing {tag}")))?;
    Ok(Some(tag))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn context_hash_changes_with_content_and_args() {
        let a = Context::embedded();
        let h1 = a.hash(&[("BASE_IMAGE", "x")]);
        assert_eq!(h1, a.hash(&[("BASE_IMAGE", "x")]));
        assert_ne!(h1, a.hash(&[("BASE_IMAGE", "y")]));
        let mut b = a.clone();
        b.files[0].1.push(b'\n');
        assert_ne!(h1, b.hash(&[("BASE_IMAGE", "x")]));
    }

    #[test]
    fn build_steps_are_parsed() {
        assert_eq!(parse_step("Step 3/9 : RUN x"), Some((3, 9)));
        assert_eq!(parse_step(" ---> abc"), None);
    }
}
