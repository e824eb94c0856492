//! The builder's container: its spec and privileges, the labels that say whose it is, and its
//! lifecycle (find, create, start, remove), exec and logs.

use std::collections::HashMap;
use std::path::PathBuf;

use bollard::container::{
    Config as ContainerConfig, CreateContainerOptions, InspectContainerOptions,
    ListContainersOptions, LogsOptions, RemoveContainerOptions, StartContainerOptions,
};
use bollard::models::{HostConfig, PortBinding};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::engine::{DockerError, Engine, hex};

/// The label every container of builderd carries; its value is the instance name.
pub const LABEL_INSTANCE: &str = "io.builderd.instance";
/// A hash of everything the container was created from; a different one means re-create.
pub const LABEL_SPEC: &str = "io.builderd.spec";
/// Which builderd made the container: a hash of its state dir. Two configs that name the same
/// container never take each other's.
pub const LABEL_OWNER: &str = "io.builderd.owner";
/// The state dir of the builderd that made the container, for the message to the other one.
pub const LABEL_STATE_DIR: &str = "io.builderd.state-dir";

pub use builderd_core::ident::owner_id;

/// What the container is created from. Its [`Spec::hash`] labels the container: a container
/// whose label differs was made from another spec (an edited config, an older release) and is
/// re-created, keeping the volume and so the host key.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Spec {
    pub name: String,
    /// [`owner_id`] of the state dir, and the state dir itself.
    pub owner: String,
    pub state_dir: PathBuf,
    pub image: String,
    /// The host port sshd is published on, on 127.0.0.1; 0 for one the engine picks.
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
        labels.insert(LABEL_OWNER.to_string(), self.owner.clone());
        labels.insert(
            LABEL_STATE_DIR.to_string(),
            self.state_dir.display().to_string(),
        );
        let mut bindings = HashMap::new();
        bindings.insert(
            "22/tcp".to_string(),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                // 0: a port the engine picks (builderd relays to it).
                host_port: Some(if self.port == 0 {
                    String::new()
                } else {
                    self.port.to_string()
                }),
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
    docker: &Engine,
    filter: &str,
    value: &str,
) -> Result<Vec<bollard::models::ContainerSummary>, DockerError> {
    let mut filters = HashMap::new();
    filters.insert(filter.to_string(), vec![value.to_string()]);
    docker
        .api
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters,
            ..Default::default()
        }))
        .await
        .map_err(DockerError::api("listing containers"))
}

/// Finds the container named `name` that carries builderd's label for this instance and was
/// made by the builderd of `owner` ([`owner_id`]); one made by another is an error, so that
/// nothing of it is touched. A container without an owner label (an older release's) is ours.
pub async fn find(docker: &Engine, name: &str, owner: &str) -> Result<Option<Found>, DockerError> {
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
    if let Some(other) = labels.get(LABEL_OWNER)
        && other != owner
    {
        return Err(DockerError::OwnedByOther {
            name: name.to_string(),
            state_dir: labels
                .get(LABEL_STATE_DIR)
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
        });
    }
    let state = c.state.unwrap_or_default();
    Ok(Some(Found {
        spec_hash: labels.get(LABEL_SPEC).cloned(),
        running: state == "running",
        state,
        image: c.image.unwrap_or_default(),

        id,
    }))
}

/// A container as the engine's inspect tells it: what builderd asks of one.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspected {
    /// The engine's word on its state (`running`, `paused`, `exited`, …).
    pub state: Option<String>,
    pub running: bool,
    /// The code its main process exited with, once it has.
    pub exit_code: Option<i64>,
    /// Its [`LABEL_INSTANCE`] label.
    pub instance: Option<String>,
    /// The address and host port its sshd (22/tcp) is published on, while it runs.
    pub published: Option<(String, u16)>,
}

/// Inspects the container `id` (or name); [`DockerError::NotFound`] when there is none.
pub async fn inspect(docker: &Engine, id: &str) -> Result<Inspected, DockerError> {
    let c = docker
        .api
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .map_err(DockerError::api(format!("inspecting container {id}")))?;
    let st = c.state.unwrap_or_default();
    Ok(Inspected {
        state: st.status.map(|s| s.to_string()),
        running: st.running == Some(true),
        exit_code: st.exit_code,
        instance: c
            .config
            .and_then(|c| c.labels)
            .and_then(|mut l| l.remove(LABEL_INSTANCE)),
        published: c
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|p| p.get("22/tcp").cloned().flatten())
            .and_then(|b| {
                b.into_iter().find_map(|b| {
                    let port = b.host_port?.parse().ok()?;
                    Some((b.host_ip.unwrap_or_default(), port))
                })
            }),
    })
}

/// A container with this name that builderd does not own blocks us.
pub async fn name_taken_by_other(docker: &Engine, name: &str) -> Result<bool, DockerError> {
    match inspect(docker, name).await {
        Ok(c) => Ok(c.instance.as_deref() != Some(name)),
        Err(DockerError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

pub async fn create(docker: &Engine, spec: &Spec) -> Result<String, DockerError> {
    let config = spec.container_config();
    let r = docker
        .api
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
    docker: &Engine,
    id: &str,
    port: u16,
    privileges: &Privileges,
) -> Result<(), DockerError> {
    match docker
        .api
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
                holder: String::new(),
            })
        }
        Err(e) => Err(DockerError::api("starting the container")(e)),
    }
}

/// The host port the container's sshd is published on (the engine's pick, for a spec with
/// port 0), while it runs.
pub async fn published_port(docker: &Engine, id: &str) -> Result<Option<u16>, DockerError> {
    Ok(inspect(docker, id).await?.published.map(|(_, port)| port))
}

/// The container's own address on the engine's bridge network, while it runs. On a Linux
/// engine it is routable from the host, so a connection can reach sshd without Docker's
/// userland port proxy; in a VM (Docker Desktop) it is not.
pub async fn bridge_address(
    docker: &Engine,
    id: &str,
) -> Result<Option<std::net::IpAddr>, DockerError> {
    let c = docker
        .api
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .map_err(DockerError::api("inspecting the container"))?;
    Ok(c.network_settings.and_then(|n| n.networks).and_then(|n| {
        n.into_values()
            .find_map(|e| e.ip_address.filter(|a| !a.is_empty())?.parse().ok())
    }))
}

/// Stops the container (SIGTERM, then SIGKILL after `grace`), keeping it and its store.
pub async fn stop(
    docker: &Engine,
    id: &str,
    grace: std::time::Duration,
) -> Result<(), DockerError> {
    match docker
        .api
        .stop_container(
            id,
            Some(bollard::container::StopContainerOptions {
                t: grace.as_secs() as i64,
            }),
        )
        .await
    {
        Ok(())
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 304, ..
        }) => Ok(()),
        Err(e) => Err(DockerError::api("stopping the container")(e)),
    }
}

/// Restarts the container (SIGTERM, then SIGKILL after the engine's default grace).
pub async fn restart(docker: &Engine, id: &str) -> Result<(), DockerError> {
    docker
        .api
        .restart_container(id, None)
        .await
        .map_err(DockerError::api("restarting the container"))
}

pub async fn remove(docker: &Engine, id: &str) -> Result<(), DockerError> {
    match docker
        .api
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
pub async fn last_logs(docker: &Engine, id: &str, n: usize) -> String {
    let mut s = docker.api.logs(
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
pub async fn exec(docker: &Engine, id: &str, cmd: &[&str]) -> Result<(i64, String), DockerError> {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    let created = docker
        .api
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
        .api
        .start_exec(&created.id, None)
        .await
        .map_err(DockerError::api("running a command in the container"))?
    {
        while let Some(Ok(chunk)) = output.next().await {
            text.push_str(&chunk.to_string());
        }
    }
    let code = docker
        .api
        .inspect_exec(&created.id)
        .await
        .map_err(DockerError::api("reading a command's exit code"))?
        .exit_code
        .unwrap_or(-1);
    Ok((code, text))
}

/// The container's log as a stream of text chunks.
pub fn logs_stream<'a>(
    docker: &'a Engine,
    name: &str,
    follow: bool,
    tail: usize,
) -> impl futures_util::Stream<Item = Result<String, DockerError>> + 'a {
    docker
        .api
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
        .map({
            let what = format!("the container {name}");
            move |r| {
                r.map(|c| c.to_string())
                    .map_err(DockerError::api(what.clone()))
            }
        })
}

/// One event of the engine's about the container.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `die`, `kill`, `stop`, `destroy`, `oom`, `start`, …
    pub action: String,
    /// When the engine saw it, in nanoseconds since the epoch.
    pub time_nano: Option<i64>,
}

/// The engine's events about the container `name` of builderd's (by its name and instance
/// label; the label alone also matches the image build's intermediate containers).
pub fn events<'a>(
    docker: &'a Engine,
    name: &str,
) -> impl futures_util::Stream<Item = Result<Event, DockerError>> + 'a {
    let mut filters = HashMap::new();
    filters.insert("type".to_string(), vec!["container".to_string()]);
    filters.insert("container".to_string(), vec![name.to_string()]);
    filters.insert(
        "label".to_string(),
        vec![format!("{LABEL_INSTANCE}={name}")],
    );
    docker
        .api
        .events(Some(bollard::system::EventsOptions::<String> {
            filters,
            ..Default::default()
        }))
        .map(|r| {
            r.map(|e| Event {
                action: e.action.unwrap_or_default(),
                time_nano: e.time_nano,
            })
            .map_err(DockerError::api("following the engine's events"))
        })
}

/// Removes the image `tag`, unless a container still uses it. Returns whether it was removed.
pub async fn purge_image(docker: &Engine, tag: &str) -> Result<bool, DockerError> {
    if !crate::image::image_exists(docker, tag).await? {
        return Ok(false);
    }
    let users = list_containers(docker, "ancestor", tag).await?;
    if !users.is_empty() {
        return Ok(false);
    }
    docker
        .api
        .remove_image(tag, None, None)
        .await
        .map_err(DockerError::api(format!("removing {tag}")))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_privileges_are_the_narrow_set() {
        let h = Privileges::Sandbox.host_config();
        assert_eq!(h.privileged, Some(false));
        assert_eq!(h.cap_add, Some(vec!["SYS_ADMIN".to_string()]));
        assert_eq!(
            h.security_opt,
            Some(vec![
                "seccomp=unconfined".to_string(),
                "apparmor=unconfined".to_string()
            ])
        );
        // Empty, not absent: absent means the engine's default masks.
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["MaskedPaths"], serde_json::json!([]));
        assert_eq!(json["ReadonlyPaths"], serde_json::json!([]));
        assert_eq!(Privileges::for_builder(true, false), Privileges::Privileged);
        assert_eq!(Privileges::for_builder(false, false), Privileges::Default);
    }
}
