//! doctor's engine checks: the engine answers, (on an Apple Silicon Mac) Rosetta runs x86_64
//! programs for it, and Docker Desktop's settings suit the builder.

use std::path::{Path, PathBuf};

use builderd_core::doctor::{Finding, ROSETTA_SETTING};

use super::Ctx;

pub(super) fn check_docker(ctx: &Ctx) -> Vec<Finding> {
    let ep = &ctx.endpoint;
    vec![match &ctx.engine {
        Ok(()) => Finding::pass(
            "docker",
            format!("reachable at {} (from {})", ep.host, ep.source),
        ),
        Err(e) => Finding::fail(
            "docker",
            format!("not reachable at {} (from {}): {e}", ep.host, ep.source),
            "start Docker Desktop (or Colima/OrbStack), or set `docker_host` in the config to the engine's socket",
        ),
    }]
}

/// Which engine a socket path belongs to, by where it really leads.
#[derive(Debug, PartialEq, Eq)]
enum EngineKind {
    DockerDesktop,
    Colima,
    OrbStack,
    Other,
}

fn engine_kind(host: &str) -> EngineKind {
    let Some(path) = host.strip_prefix("unix://") else {
        return EngineKind::Other;
    };
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
    let real = real.to_string_lossy();
    if real.contains("/.colima/") {
        EngineKind::Colima
    } else if real.contains("/.orbstack/") || real.contains("/OrbStack/") {
        EngineKind::OrbStack
    } else if real.contains("/.docker/run/")
        || real.contains("/Library/Containers/com.docker.docker/")
        || real.contains("/.docker/desktop/")
    {
        EngineKind::DockerDesktop
    } else {
        EngineKind::Other
    }
}

pub(super) fn check_rosetta(ctx: &Ctx) -> Vec<Finding> {
    if !cfg!(target_os = "macos") {
        return vec![Finding::pass(
            "rosetta",
            format!("not needed: the host is {}-linux", std::env::consts::ARCH),
        )];
    }
    if std::env::consts::ARCH != "aarch64" {
        return vec![Finding::pass("rosetta", "not needed on an Intel Mac")];
    }
    if !Path::new("/Library/Apple/usr/libexec/oah/libRosettaRuntime").exists() {
        return vec![Finding::fail(
            "rosetta",
            "Rosetta is not installed",
            "softwareupdate --install-rosetta --agree-to-license",
        )];
    }
    let kind = engine_kind(&ctx.endpoint.host);
    if kind != EngineKind::DockerDesktop {
        // Docker Desktop's settings say nothing about another engine; the x86_64 check runs a
        // real program instead.
        return vec![Finding::pass(
            "rosetta",
            format!(
                "installed; the engine is {} (see the x86_64 check for how it runs x86_64)",
                match kind {
                    EngineKind::Colima => "Colima",
                    EngineKind::OrbStack => "OrbStack",
                    _ => "not Docker Desktop",
                }
            ),
        )];
    }
    let dir = crate::config::home_dir().join("Library/Group Containers/group.com.docker");
    let on = [dir.join("settings-store.json"), dir.join("settings.json")]
        .iter()
        .find_map(|p| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
            v.get("UseVirtualizationFrameworkRosetta")
                .or_else(|| v.get("useVirtualizationFrameworkRosetta"))
                .and_then(|b| b.as_bool())
        });
    vec![match on {
        Some(true) => Finding::pass("rosetta", "installed, and Docker Desktop uses it"),
        Some(false) => Finding::fail(
            "rosetta",
            "Docker Desktop's Rosetta setting is off",
            format!("Docker Desktop → Settings → General: turn on {ROSETTA_SETTING}"),
        ),
        None => Finding::warn(
            "rosetta",
            "installed; Docker Desktop's setting could not be read",
            format!("check Docker Desktop → Settings → General → {ROSETTA_SETTING}"),
        ),
    }]
}

/// macOS with Docker Desktop: the settings that matter to the builder (see
/// [`crate::docker::desktop`]), each named, with what to change.
pub(super) fn check_desktop(ctx: &Ctx) -> Vec<Finding> {
    use crate::docker::desktop::{DesktopSettings, settings_files};
    if !cfg!(target_os = "macos") || engine_kind(&ctx.endpoint.host) != EngineKind::DockerDesktop {
        return vec![];
    }
    let Some(s) = DesktopSettings::read(&settings_files(&crate::config::home_dir())) else {
        return vec![Finding::warn(
            "desktop",
            "Docker Desktop's settings could not be read",
            "check Docker Desktop → Settings: Rosetta (General), CPUs, memory and disk image (Resources), \"Allow the default Docker socket\" (Advanced)",
        )];
    };
    let root = crate::fsutil::current_euid() == 0;
    let advice = s.advice(std::env::consts::ARCH == "aarch64", root);
    vec![if advice.is_empty() {
        Finding::pass("desktop", s.summary())
    } else {
        Finding::warn("desktop", s.summary(), advice.join("; "))
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_kind_by_socket_path() {
        assert_eq!(
            engine_kind("unix:///Users/me/.colima/default/docker.sock"),
            EngineKind::Colima
        );
        assert_eq!(
            engine_kind("unix:///Users/me/.orbstack/run/docker.sock"),
            EngineKind::OrbStack
        );
        assert_eq!(
            engine_kind("unix:///Users/me/.docker/run/docker.sock"),
            EngineKind::DockerDesktop
        );
        assert_eq!(engine_kind("tcp://127.0.0.1:2375"), EngineKind::Other);
    }
}
