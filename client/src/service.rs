//! Commands that work beside the daemon: ssh, logs, and installing the service.

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use builderd::config::Config;
use builderd::protocol::Request;
use builderd_launchd::{Os, Service, System};

use crate::exit;
use crate::output::Out;

/// The ssh command line that reaches the builder with the configured key and the pinned host key.
pub fn ssh_argv(cfg: &Config, known_hosts: &Path, command: &[String]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "ssh".into(),
        "-F".into(),
        "/dev/null".into(),
        "-i".into(),
        cfg.private_key.display().to_string(),
        "-p".into(),
        cfg.port.to_string(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".into(),
        format!("HostKeyAlias={}", cfg.alias()),
    ];
    if command.is_empty() {
        v.push("-t".into());
    }
    v.push("root@127.0.0.1".into());
    if !command.is_empty() {
        v.push("--".into());
        v.extend(command.iter().cloned());
    }
    v
}

/// `builderctl ssh [-- CMD…]`: replaces this process with ssh.
pub fn ssh(cfg: &Config, command: &[String]) -> u8 {
    let host_pub = cfg.volume_dir().join("id_ed25519.pub");
    let key = match builderd::keys::read_public(&host_pub) {
        Ok(k) => k,
        Err(_) => {
            eprintln!(
                "builderctl: the builder has no host key yet ({} is missing): run `builderctl up` first",
                host_pub.display()
            );
            return exit::FAILURE;
        }
    };
    let kh = cfg.state_dir.join("ssh_known_hosts");
    let line = format!("{} {}\n", cfg.alias(), builderd::keys::key_line(&key));
    if let Err(e) = builderd::fsutil::write_atomic(&kh, line.as_bytes(), 0o600) {
        eprintln!("builderctl: {e}");
        return exit::FAILURE;
    }
    let argv = ssh_argv(cfg, &kh, command);
    let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
    eprintln!("builderctl: cannot run ssh: {err}");
    exit::FAILURE
}

/// `builderctl logs [-f] [--container]`.
pub async fn logs(cfg: &Config, follow: bool, container: bool, out: &Out) -> u8 {
    if container {
        return container_logs(cfg, follow, out).await;
    }
    let candidates = [cfg.daemon_log(), cfg.log_dir().join("builderd.err.log")];
    let Some(path) = candidates.iter().find(|p| p.exists()) else {
        out.error(&format!(
            "no daemon log yet ({}): the daemon has not run with this config",
            cfg.daemon_log().display()
        ));
        return exit::FAILURE;
    };
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            out.error(&format!("cannot read {}: {e}", path.display()));
            return exit::FAILURE;
        }
    };
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if f.read_to_end(&mut buf).is_ok() && !buf.is_empty() {
            let _ = std::io::stdout().write_all(&buf);
            let _ = std::io::stdout().flush();
        }
        if !follow {
            return exit::OK;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        // A rotated or truncated log starts again from its beginning.
        if let Ok(m) = std::fs::metadata(path)
            && let Ok(pos) = f.stream_position()
            && m.len() < pos
        {
            let _ = f.seek(std::io::SeekFrom::Start(0));
        }
    }
}

async fn container_logs(cfg: &Config, follow: bool, out: &Out) -> u8 {
    use futures_util::StreamExt;
    let ep = builderd::docker::resolve_endpoint(cfg);
    let docker = match builderd::docker::connect(&ep).await {
        Ok(d) => d,
        Err(e) => {
            out.error(&e.to_string());
            return exit::FAILURE;
        }
    };
    let mut s = builderd::docker::logs_stream(&docker, &cfg.container_name, follow, 200);
    while let Some(item) = s.next().await {
        match item {
            Ok(chunk) => {
                print!("{chunk}");
                let _ = std::io::stdout().flush();
            }
            Err(e) => {
                out.error(&format!(
                    "cannot read the container's log: {e} (is the builder up?)"
                ));
                return exit::FAILURE;
            }
        }
    }
    exit::OK
}

/// The service definition for this user and config.
fn service_for(cfg: &Config, config_path: &Path, user: bool) -> Result<Service, String> {
    let program = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("builderd")))
        .filter(|p| p.is_file())
        .ok_or("cannot find the builderd binary next to builderctl")?;
    let config = std::path::absolute(config_path).map_err(|e| e.to_string())?;
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        std::env::var("PATH")
            .unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into()),
    );
    env.insert(
        "HOME".to_string(),
        builderd::config::home_dir().display().to_string(),
    );
    if let Ok(h) = std::env::var("DOCKER_HOST") {
        env.insert("DOCKER_HOST".to_string(), h);
    }
    let uid = std::env::var("SUDO_UID")
        .ok()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(builderd::fsutil::current_euid);
    if !user {
        env.insert("BUILDERD_OWNER_UID".to_string(), uid.to_string());
    }
    Ok(Service {
        program,
        config,
        log_dir: cfg.log_dir(),
        env,
        system: !user,
        uid,
    })
}

/// `builderctl install [--print] [--user]`.
pub fn install(cfg: &Config, config_path: &Path, print: bool, user: bool, out: &Out) -> u8 {
    let svc = match service_for(cfg, config_path, user) {
        Ok(s) => s,
        Err(e) => {
            out.error(&e);
            return exit::FAILURE;
        }
    };
    let os = Os::current();
    let home = builderd::config::home_dir();
    let path = svc.path(os, &home);
    if print {
        let def = match os {
            Os::MacOs => String::from_utf8_lossy(&svc.plist()).into_owned(),
            Os::Linux => svc.unit(),
        };
        println!("# {}\n{def}", path.display());
        for c in svc.install_commands(os, &path) {
            println!("$ {}", c.join(" "));
        }
        return exit::OK;
    }
    if !user && builderd::fsutil::current_euid() != 0 {
        out.error("a system service is installed as root: run `sudo builderctl install`, or `builderctl install --user` for a per-user service");
        return exit::FAILURE;
    }
    match svc.install(os, &home, &System) {
        Ok(p) => {
            out.info(&format!(
                "installed {}; builderd now starts at boot",
                p.display()
            ));
            exit::OK
        }
        Err(e) => {
            out.error(&e.to_string());
            exit::FAILURE
        }
    }
}

/// `builderctl uninstall [--purge]`.
pub async fn uninstall(cfg: &Config, config_path: &Path, purge: bool, user: bool, out: &Out) -> u8 {
    let svc = match service_for(cfg, config_path, user) {
        Ok(s) => s,
        Err(e) => {
            out.error(&e);
            return exit::FAILURE;
        }
    };
    let home = builderd::config::home_dir();
    if let Err(e) = svc.uninstall(Os::current(), &home, &System) {
        out.error(&e.to_string());
        return exit::FAILURE;
    }
    out.info("the service is removed");
    if purge {
        // Take it down through a daemon, so that nothing brings it back, then stop that daemon.
        let start = builderd::client::connect_or_start(
            cfg,
            config_path,
            &crate::daemon_binary(),
            Duration::from_secs(20),
        )
        .await;
        if let Ok(s) = start {
            if let Err(e) = builderd::client::exchange(s, Request::Down, |_| {}).await {
                out.error(&e.to_string());
                return exit::FAILURE;
            }
            let _ = builderd::client::request(&cfg.socket, Request::Shutdown, |_| {}).await;
        }
        match builderd::docker::purge_image(cfg).await {
            Ok(Some(tag)) => out.info(&format!("removed the image {tag}")),
            Ok(None) => {}
            Err(e) => out.error(&format!("could not remove the image: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        match std::fs::remove_dir_all(&cfg.state_dir) {
            Ok(()) => out.info(&format!(
                "purged: container, images, registrations and {} (the volume with the host key)",
                cfg.state_dir.display()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                out.error(&format!("cannot remove {}: {e}", cfg.state_dir.display()));
                return exit::FAILURE;
            }
        }
    }
    exit::OK
}
