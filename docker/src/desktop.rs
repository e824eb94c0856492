//! What a Mac user needs to know about their engine: how to start the one builderd looked for,
//! and the Docker Desktop settings that decide whether the builder works well (Rosetta, the
//! VM's CPUs, memory and disk, the default socket).
//!
//! Pure: the caller reads the files and hands their bytes in, so every branch is tested here on
//! any machine.

use std::path::Path;

use crate::engine::Endpoint;

/// How to start the engine builderd looked for at `ep`, for a message that already names the
/// address and its source. `macos` chooses the Mac's engines over a Linux service.
pub fn how_to_start(ep: &Endpoint, macos: bool) -> String {
    let context = ep.source.strip_prefix("docker context ").unwrap_or("");
    let named = |s: &[&str]| s.iter().any(|s| ep.host.contains(s) || context.contains(s));
    if named(&["colima"]) {
        return "start Colima: `colima start`".into();
    }
    if named(&["orbstack", "OrbStack"]) {
        return "start OrbStack: `orb start` (or open OrbStack)".into();
    }
    if named(&["/.docker/run/", "com.docker.docker", "desktop"]) {
        return "start Docker Desktop: `open -a Docker` (or open it from Applications)".into();
    }
    if !macos {
        return "start the engine (`sudo systemctl start docker`), or point `docker_host` in the config (or DOCKER_HOST) at the one you run".into();
    }
    if ep.host == "unix:///var/run/docker.sock" {
        // At boot, before Docker Desktop made its per-user socket, this is where builderd looks;
        // it looks again for the per-user socket while it waits.
        return "start Docker Desktop (`open -a Docker`), Colima (`colima start`) or OrbStack; with Docker Desktop, builderd finds ~/.docker/run/docker.sock once it is there".into();
    }
    "start the engine behind it (Docker Desktop: `open -a Docker`; Colima: `colima start`; OrbStack: `orb start`), or set `docker_host` in the config".into()
}

/// Docker Desktop's settings that matter to a Linux builder, as its settings file holds them
/// (`settings-store.json` since Docker Desktop 4.34, `settings.json` before; the keys are the
/// same but for the first letter's case). `None`: not in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesktopSettings {
    /// "Use Rosetta for x86_64/amd64 emulation on Apple Silicon".
    pub rosetta: Option<bool>,
    /// The VM's CPUs.
    pub cpus: Option<u64>,
    /// The VM's memory, MiB.
    pub memory_mib: Option<u64>,
    /// The virtual disk's size limit, MiB.
    pub disk_mib: Option<u64>,
    /// "Allow the default Docker socket to be used" (`/var/run/docker.sock`).
    pub default_socket: Option<bool>,
}

/// The files Docker Desktop keeps its settings in, newest first, under the user's home.
pub fn settings_files(home: &Path) -> [std::path::PathBuf; 2] {
    let dir = home.join("Library/Group Containers/group.com.docker");
    [dir.join("settings-store.json"), dir.join("settings.json")]
}

impl DesktopSettings {
    /// Parses one settings file; `None` when it is not a JSON object.
    pub fn parse(bytes: &[u8]) -> Option<DesktopSettings> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let o = v.as_object()?;
        // `UseVirtualizationFrameworkRosetta` (settings-store.json) or
        // `useVirtualizationFrameworkRosetta` (settings.json).
        let get = |key: &str| {
            let mut lower = key.to_string();
            lower[..1].make_ascii_lowercase();
            o.get(key).or_else(|| o.get(&lower))
        };
        let num = |key: &str| get(key).and_then(serde_json::Value::as_u64);
        let flag = |key: &str| get(key).and_then(serde_json::Value::as_bool);
        Some(DesktopSettings {
            rosetta: flag("UseVirtualizationFrameworkRosetta"),
            cpus: num("Cpus"),
            memory_mib: num("MemoryMiB"),
            disk_mib: num("DiskSizeMiB"),
            default_socket: flag("EnableDefaultDockerSocket"),
        })
    }

    /// The first of `files` that parses (the newer file wins when both exist).
    pub fn read(files: &[std::path::PathBuf]) -> Option<DesktopSettings> {
        files
            .iter()
            .find_map(|p| DesktopSettings::parse(&std::fs::read(p).ok()?))
    }

    /// One line naming each setting, for doctor.
    pub fn summary(&self) -> String {
        let onoff = |b: Option<bool>| match b {
            Some(true) => "on",
            Some(false) => "off",
            None => "not set",
        };
        let n = |v: Option<u64>, unit: &str| match v {
            Some(v) if unit.is_empty() => v.to_string(),
            Some(v) => format!("{:.1} {unit}", v as f64 / 1024.0),
            None => "not set".into(),
        };
        format!(
            "Rosetta {}, {} CPUs, {} memory, {} disk image, default Docker socket {}",
            onoff(self.rosetta),
            n(self.cpus, ""),
            n(self.memory_mib, "GiB"),
            n(self.disk_mib, "GiB"),
            onoff(self.default_socket),
        )
    }

    /// What to change, each with where in Docker Desktop: empty when nothing matters. `arm`:
    /// the Mac is Apple Silicon (Rosetta matters); `root_service`: builderd runs as root from
    /// launchd at boot, before the user's per-user socket exists.
    pub fn advice(&self, arm: bool, root_service: bool) -> Vec<String> {
        let mut out = Vec::new();
        if arm && self.rosetta == Some(false) {
            out.push("Settings → General: turn on \"Use Rosetta for x86_64/amd64 emulation on Apple Silicon\" (x86_64-linux builds run through it)".into());
        }
        if self.cpus.is_some_and(|c| c < 2) {
            out.push(
                "Settings → Resources: give the VM at least 2 CPUs (Nix builds in parallel)".into(),
            );
        }
        if self.memory_mib.is_some_and(|m| m < 4096) {
            out.push("Settings → Resources: give the VM at least 4 GB of memory".into());
        }
        if self.disk_mib.is_some_and(|d| d < 32 * 1024) {
            out.push("Settings → Resources: a disk image of at least 32 GB (the builder's Nix store lives in it)".into());
        }
        if root_service && self.default_socket == Some(false) {
            out.push("Settings → Advanced: \"Allow the default Docker socket to be used\" lets other tools find the engine at /var/run/docker.sock (builderd itself also finds ~/.docker/run/docker.sock)".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(host: &str, source: &str) -> Endpoint {
        Endpoint {
            host: host.into(),
            source: source.into(),
        }
    }

    #[test]
    fn the_engine_named_is_the_one_to_start() {
        let h = |host, source| how_to_start(&ep(host, source), true);
        assert!(
            h("unix:///Users/a/.colima/default/docker.sock", "DOCKER_HOST")
                .contains("colima start")
        );
        assert!(
            h(
                "unix:///Users/a/.orbstack/run/docker.sock",
                "docker context orbstack"
            )
            .contains("orb start")
        );
        assert!(
            h(
                "unix:///Users/a/.docker/run/docker.sock",
                "Docker Desktop's socket"
            )
            .contains("open -a Docker")
        );
        // A context's name tells what its socket path may not.
        assert!(h("unix:///tmp/x.sock", "docker context colima-arm").contains("colima start"));
        assert!(h("unix:///tmp/x.sock", "docker context desktop-linux").contains("open -a Docker"));
        let default = h("unix:///var/run/docker.sock", "default socket");
        for s in [
            "open -a Docker",
            "colima start",
            "OrbStack",
            "~/.docker/run/docker.sock",
        ] {
            assert!(default.contains(s), "{default}");
        }
        assert!(h("tcp://10.0.0.1:2375", "config docker_host").contains("docker_host"));
        let linux = how_to_start(&ep("unix:///var/run/docker.sock", "default socket"), false);
        assert!(linux.contains("systemctl start docker"), "{linux}");
    }

    #[test]
    fn both_settings_files_parse() {
        // settings-store.json (Docker Desktop 4.34 and later).
        let store = br#"{"UseVirtualizationFrameworkRosetta": true, "Cpus": 8, "MemoryMiB": 8192,
            "DiskSizeMiB": 65536, "EnableDefaultDockerSocket": false, "Other": 1}"#;
        let s = DesktopSettings::parse(store).unwrap();
        assert_eq!(
            s,
            DesktopSettings {
                rosetta: Some(true),
                cpus: Some(8),
                memory_mib: Some(8192),
                disk_mib: Some(65536),
                default_socket: Some(false),
            }
        );
        assert_eq!(
            s.summary(),
            "Rosetta on, 8 CPUs, 8.0 GiB memory, 64.0 GiB disk image, default Docker socket off"
        );
        // settings.json (older): the same keys, lower-case first letter.
        let old = br#"{"useVirtualizationFrameworkRosetta": false, "cpus": 1, "memoryMiB": 2048,
            "diskSizeMiB": 20480, "enableDefaultDockerSocket": true}"#;
        let s = DesktopSettings::parse(old).unwrap();
        assert_eq!(
            (s.rosetta, s.cpus, s.default_socket),
            (Some(false), Some(1), Some(true))
        );
        assert_eq!(s.advice(true, true).len(), 4, "{:?}", s.advice(true, true));
        // An Intel Mac does not use Rosetta.
        assert_eq!(s.advice(false, true).len(), 3);
        // Missing keys are unknown, not off; garbage is no settings at all.
        let none = DesktopSettings::parse(b"{}").unwrap();
        assert_eq!(none, DesktopSettings::default());
        assert!(none.advice(true, true).is_empty());
        assert!(none.summary().contains("Rosetta not set"));
        assert_eq!(DesktopSettings::parse(b"[1]"), None);
        assert_eq!(DesktopSettings::parse(b"{"), None);
    }

    #[test]
    fn the_newer_file_wins_and_a_broken_one_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let [store, old] = settings_files(d.path());
        std::fs::create_dir_all(store.parent().unwrap()).unwrap();
        std::fs::write(&old, br#"{"cpus": 2}"#).unwrap();
        assert_eq!(
            DesktopSettings::read(&[store.clone(), old.clone()])
                .unwrap()
                .cpus,
            Some(2)
        );
        std::fs::write(&store, br#"{"Cpus": 6}"#).unwrap();
        assert_eq!(
            DesktopSettings::read(&[store.clone(), old.clone()])
                .unwrap()
                .cpus,
            Some(6)
        );
        std::fs::write(&store, b"not json").unwrap();
        assert_eq!(DesktopSettings::read(&[store, old]).unwrap().cpus, Some(2));
    }

    #[test]
    fn root_service_default_socket_advice() {
        let s = DesktopSettings {
            default_socket: Some(false),
            ..Default::default()
        };
        assert!(s.advice(true, false).is_empty());
        assert_eq!(s.advice(true, true).len(), 1);
    }
}
