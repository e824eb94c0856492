//! Commands that work beside the daemon: ssh, logs, and installing the service.

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use builderd_core::config::{self, Config};
use builderd_core::hostkey;
use builderd_core::ident::{controller_of, current_euid};
use builderd_core::protocol::Request;
use builderd_launchd::{Os, Service, System};

use crate::copies::system_dir_under;
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
        // Quoted: ssh splits an option's value at spaces (this one takes several files), and
        // the state dir may hold one (`~/Library/Application Support/builderd`).
        format!(
            "UserKnownHostsFile=\"{}\"",
            known_hosts.display().to_string().replace('%', "%%")
        ),
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

/// A known_hosts file of builderd's own (in the state dir) that pins the builder's host key
/// (read from `host_pub`) under the alias: what `builderctl ssh` and doctor's probes trust, and
/// nothing else.
pub fn pinned_known_hosts(cfg: &Config, host_pub: &Path) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(host_pub)
        .map_err(|e| format!("cannot read {}: {e}", host_pub.display()))?;
    let key =
        hostkey::parse_host_key_line(&text).map_err(|e| format!("{} {e}", host_pub.display()))?;
    let kh = cfg.state_dir.join("ssh_known_hosts");
    let line = format!("{} {}\n", cfg.alias(), hostkey::key_line(&key));
    write_replacing(&kh, line.as_bytes(), 0o600)?;
    Ok(kh)
}

/// Writes `bytes` to `path` with `mode` through a temporary file beside it and a rename: a
/// reader sees the old file or the new one, never half of one, and a link at `path` is replaced,
/// never followed.
pub(crate) fn write_replacing(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    std::fs::create_dir_all(dir).map_err(fail)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    tmp.write_all(bytes).map_err(fail)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(fail)?;
    // Root writing into a directory a user controls (`sudo builderctl install --user`, the
    // user's state dir) leaves the file to that user, as if they had written it.
    let (uid, gid) = controller_of(dir);
    if current_euid() == 0 && uid != 0 {
        std::os::unix::fs::fchown(tmp.as_file(), Some(uid), Some(gid)).map_err(fail)?;
    }
    tmp.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

/// `builderctl ssh [-- CMD…]`: replaces this process with ssh.
pub fn ssh(cfg: &Config, command: &[String]) -> u8 {
    let host_pub = cfg.host_key_file();
    if !host_pub.exists() {
        eprintln!(
            "builderctl: the builder has no host key yet ({} is missing): run `builderctl up` first",
            host_pub.display()
        );
        return exit::FAILURE;
    }
    let kh = match pinned_known_hosts(cfg, &host_pub) {
        Ok(kh) => kh,
        Err(e) => {
            eprintln!("builderctl: {e}");
            return exit::FAILURE;
        }
    };
    let argv = ssh_argv(cfg, &kh, command);
    let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
    eprintln!("builderctl: cannot run ssh: {err}");
    exit::FAILURE
}

/// `builderctl logs [-f] [--container]`.
pub async fn logs(
    cfg: &Config,
    config_path: &Path,
    follow: bool,
    container: bool,
    out: &Out,
) -> u8 {
    if container {
        return container_logs(config_path, follow);
    }
    let system_logs = config::system_dir().join("logs");
    let candidates = [
        cfg.daemon_log(),
        cfg.log_dir().join("builderd.err.log"),
        system_logs.join("builderd.err.log"),
    ];
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

/// The container's log comes from the engine, which `builderd` talks to: this replaces itself
/// with `builderd container-logs`.
fn container_logs(config_path: &Path, follow: bool) -> u8 {
    let mut cmd = std::process::Command::new(crate::daemon_binary());
    cmd.arg("container-logs");
    if follow {
        cmd.arg("--follow");
    }
    if config_path.exists() {
        cmd.arg("--config").arg(config_path);
    }
    let err = cmd.exec();
    eprintln!(
        "builderctl: cannot run {}: {err}",
        crate::daemon_binary().display()
    );
    exit::FAILURE
}

/// What the administrator grants the served user at `sudo builderctl install`: recorded in the
/// service's environment, which only root can change, never in the user's config.
#[derive(Debug, Default, Clone, Copy)]
pub struct Grants {
    pub trust_user_with_root: bool,
    pub all_users: bool,
}

impl Grants {
    fn record(self, env: &mut BTreeMap<String, String>) {
        use builderd_core::served::{ALL_USERS, TRUST_USER_WITH_ROOT};
        for (on, var) in [
            (self.trust_user_with_root, TRUST_USER_WITH_ROOT),
            (self.all_users, ALL_USERS),
        ] {
            if on {
                env.insert(var.to_string(), "1".to_string());
            }
        }
    }

    /// What the service will do for the served user `uid`, said at install.
    fn describe(self, uid: u32, os: Os) -> Vec<String> {
        if uid == 0 || os != Os::Linux {
            return Vec::new();
        }
        let user = builderd_core::served::user_name(uid);
        vec![
            if self.trust_user_with_root {
                format!(
                    "{user} is trusted with root on this host (--trust-user-with-root): the builder runs with Nix's sandbox, and {user}'s root login into it is root here"
                )
            } else {
                format!(
                    "{user} is not trusted with root on this host: a builder with Nix's sandbox or `privileged` is refused (set `sandbox = false`, install with --trust-user-with-root, or use `builderctl install --user` as {user})"
                )
            },
            if self.all_users {
                format!(
                    "every user's builds may go to {user}'s builder (--all-users): it is listed in the system-wide machines file and nix.conf"
                )
            } else {
                format!(
                    "only {user}'s own builds go to the builder: it is listed in {user}'s files only (install with --all-users to list it system-wide)"
                )
            },
        ]
    }
}

/// The service definition for this user and config. A system service runs as root: it runs
/// root's own copies of builderd and the config ([`crate::copies::install_copies`]) with a fixed PATH, and
/// logs to a directory only root can change; nothing in it is a file the user could replace.
fn service_for(
    cfg: &Config,
    config_path: &Path,
    user: bool,
    grants: Grants,
    os: Os,
) -> Result<Service, String> {
    let program =
        crate::daemon_next_to_us().ok_or("cannot find the builderd binary next to builderctl")?;
    let config = std::path::absolute(config_path).map_err(|e| e.to_string())?;
    let mut env = BTreeMap::new();
    let path = if user {
        std::env::var("PATH")
            .unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into())
    } else {
        config::ROOT_PATH.to_string()
    };
    env.insert("PATH".to_string(), path);
    env.insert("HOME".to_string(), config::home_dir().display().to_string());
    if let Ok(h) = std::env::var("DOCKER_HOST") {
        env.insert("DOCKER_HOST".to_string(), h);
    }
    let uid = served_uid();
    if user {
        return Ok(Service {
            program,
            config,
            log_dir: cfg.log_dir(),
            env,
            system: false,
            uid,
        });
    }
    env.insert("BUILDERD_OWNER_UID".to_string(), uid.to_string());
    grants.record(&mut env);
    let dir = config::system_dir_for(os == Os::MacOs);
    Ok(Service {
        program: dir.join("builderd"),
        config: dir.join(config::SYSTEM_CONFIG_NAME),
        log_dir: dir.join("logs"),
        env,
        system: true,
        uid,
    })
}

/// The user a root service serves: the one who ran `sudo builderctl install`.
fn served_uid() -> u32 {
    std::env::var("SUDO_UID")
        .ok()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(current_euid)
}

/// What `builderctl install` was asked for.
pub struct Install {
    /// Show the definition and the commands only.
    pub print: bool,
    /// The user's agent rather than the root service.
    pub user: bool,
    pub grants: Grants,
    /// The service manager: this machine's, or macOS's for the release's printed definitions.
    pub os: Os,
}

/// `builderctl install [--print] [--user]`. With `prefix` (test builds only), only the copy step,
/// into the system directory below `prefix`: it is then tested for real, as root, without
/// installing a service on the machine that runs the tests.
pub async fn install(
    cfg: &Config,
    config_path: &Path,
    ask: Install,
    prefix: Option<&Path>,
    out: &Out,
) -> u8 {
    let Install {
        print,
        user,
        grants,
        os,
    } = ask;
    if let Some(prefix) = prefix {
        return copies_only(prefix, config_path, out);
    }
    let svc = match service_for(cfg, config_path, user, grants, os) {
        Ok(s) => s,
        Err(e) => {
            out.error(&e);
            return exit::FAILURE;
        }
    };
    let home = config::home_dir();
    let path = svc.path(os, &home);
    if print {
        let def = match os {
            Os::MacOs => String::from_utf8_lossy(&svc.plist()).into_owned(),
            Os::Linux => svc.unit(),
        };
        println!("# {}\n{def}", path.display());
        if svc.system {
            for line in grants.describe(svc.uid, os) {
                println!("# {line}");
            }
        }
        for c in svc.install_commands(os, &path) {
            println!("$ {}", c.join(" "));
        }
        return exit::OK;
    }
    if !user && current_euid() != 0 {
        out.error("a system service is installed as root: run `sudo builderctl install`, or `builderctl install --user` for a per-user service");
        return exit::FAILURE;
    }
    if !user {
        let ours = crate::daemon_path_next_to_us().unwrap_or_default();
        if let Err(e) = crate::copies::install_copies(
            &system_dir_under(None),
            &ours,
            config_path,
            Some(svc.uid),
        ) {
            out.error(&e);
            return exit::FAILURE;
        }
    }
    if let Err(e) = hand_over(cfg).await {
        out.error(&e);
        return exit::FAILURE;
    }
    let write = |p: &Path, bytes: &[u8], mode: u32| write_replacing(p, bytes, mode);
    match svc.install(os, &home, &System, &write) {
        Ok(p) => {
            out.info(&format!(
                "installed {}; builderd now starts at boot",
                p.display()
            ));
            if svc.system {
                for line in grants.describe(svc.uid, os) {
                    out.info(&line);
                }
            }
            exit::OK
        }
        Err(e) => {
            out.error(&e.to_string());
            exit::FAILURE
        }
    }
}

/// The copy step alone, into the system directory below `prefix`. Only a test build honours
/// it: a release's `sudo builderctl install` writes nowhere but the system directory.
fn copies_only(prefix: &Path, config_path: &Path, out: &Out) -> u8 {
    if !cfg!(debug_assertions) {
        out.error("--prefix is honoured by test builds only");
        return exit::USAGE;
    }
    if current_euid() != 0 {
        out.error("the copies are root's: run it as root");
        return exit::FAILURE;
    }
    let dir = system_dir_under(Some(prefix));
    let ours = crate::daemon_path_next_to_us().unwrap_or_default();
    match crate::copies::install_copies(&dir, &ours, config_path, Some(served_uid())) {
        Ok(()) => {
            out.info(&format!(
                "copied builderd and the config into {}",
                dir.display()
            ));
            exit::OK
        }
        Err(e) => {
            out.error(&e);
            exit::FAILURE
        }
    }
}

/// Stops a daemon that already serves this config as a user (one a plain `builderctl up`
/// started), so that the service's daemon can take the state dir's lock instead of exiting and
/// being restarted in a loop. The builder itself stays as it is; the service adopts it. A root
/// daemon answering is the service already installed: `bootout` replaces it.
async fn hand_over(cfg: &Config) -> Result<(), String> {
    let Ok(stream) = builderd_core::client::connect(&cfg.socket).await else {
        return Ok(());
    };
    if stream.peer_cred().is_ok_and(|c| c.uid() == 0) {
        return Ok(());
    }
    drop(stream);
    let _ = builderd_core::client::request(&cfg.socket, Request::Shutdown, |_| {}).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while builderd_core::client::connect(&cfg.socket).await.is_ok()
        || lock_is_held(&cfg.state_dir.join(config::PID_FILE))
    {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "the daemon on {} did not stop within 15 s: stop it with `builderctl shutdown`, then install again",
                cfg.socket.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Whether a daemon holds the instance lock on `pidfile`. The file is in the user's state dir:
/// opened as whoever controls it, never through a link and without blocking (a FIFO there
/// never hangs this), and only a regular file counts.
fn lock_is_held(pidfile: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc_flags::NONBLOCK_NOFOLLOW)
            .open(pidfile)
            .map_err(|e| builderd_core::asuser::FsError::new("cannot open", pidfile, e))
    };
    let Ok(f) = builderd_core::asuser::as_owner_of(pidfile, open) else {
        return false;
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock))
}

/// `builderctl uninstall [--purge]`.
pub async fn uninstall(cfg: &Config, config_path: &Path, purge: bool, user: bool, out: &Out) -> u8 {
    let svc = match service_for(cfg, config_path, user, Grants::default(), Os::current()) {
        Ok(s) => s,
        Err(e) => {
            out.error(&e);
            return exit::FAILURE;
        }
    };
    // Root under sudo, or on a config a user controls, acts for that user: it starts no daemon
    // of its own (`connect_or_start` refuses) and removes only what the user could remove.
    let for_user = builderd_core::client::root_may_not_start(config_path);
    // Whatever answers on the socket may be the user's own program: it is waited for so long.
    let wait = down_wait();
    let mut stalled = false;
    if purge {
        // The builder is taken down by the daemon that runs now (the service's, or the user's),
        // before the service goes: nothing brings it back then.
        let down = builderd_core::client::request(&cfg.socket, Request::Down, |_| {});
        if tokio::time::timeout(wait, down).await.is_err() {
            stalled = true;
            out.error(&format!(
                "what listens on {} did not take the builder down within {} s: going on without it. If the container {} still runs, remove it with `docker rm -f {}`",
                cfg.socket.display(),
                wait.as_secs(),
                cfg.container_name,
                cfg.container_name
            ));
        }
    }
    let home = config::home_dir();
    if let Err(e) = svc.uninstall(Os::current(), &home, &System) {
        out.error(&e.to_string());
        return exit::FAILURE;
    }
    if !user && current_euid() == 0 {
        crate::copies::remove_copies(&system_dir_under(None), purge);
    }
    out.info("the service is removed");
    if purge {
        // Take it down through a daemon, so that nothing brings it back, then stop that daemon.
        let start = if stalled {
            None
        } else {
            builderd_core::client::connect_or_start(
                cfg,
                config_path,
                &crate::daemon_binary(),
                Duration::from_secs(20),
            )
            .await
            .ok()
        };
        if let Some(s) = start {
            let down = builderd_core::client::exchange(s, Request::Down, |_| {});
            match tokio::time::timeout(wait, down).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    out.error(&e.to_string());
                    return exit::FAILURE;
                }
                Err(_) => out.error(&format!(
                    "the daemon at {} did not take the builder down within {} s: going on without it",
                    cfg.socket.display(),
                    wait.as_secs()
                )),
            }
            let shutdown = builderd_core::client::request(&cfg.socket, Request::Shutdown, |_| {});
            let _ = tokio::time::timeout(wait, shutdown).await;
        }
        // The image is the engine's: `builderd purge-image` removes it and says so.
        let mut purge = std::process::Command::new(crate::daemon_binary());
        purge.arg("purge-image").stdin(std::process::Stdio::null());
        if config_path.exists() {
            purge.arg("--config").arg(config_path);
        }
        if let Err(e) = purge.status() {
            out.error(&format!("could not remove the image: {e}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The volume a root service kept for this state dir (Linux), when there is one.
        let root_vol = config::root_volume_dir(&cfg.state_dir);
        if root_vol.exists() {
            match std::fs::remove_dir_all(&root_vol) {
                Ok(()) => out.info(&format!("removed {}", root_vol.display())),
                Err(e) => out.error(&format!("cannot remove {}: {e}", root_vol.display())),
            }
        }
        let state = cfg.state_dir.clone();
        let (controller, _) = builderd_core::ident::controller_of(&state);
        if let (Some(why), 0) = (&for_user, controller) {
            out.error(&format!(
                "not removing {}: root controls it, and {why}; builderd removes only a state dir its user controls. Remove it yourself if it is builderd's",
                state.display()
            ));
            return exit::FAILURE;
        }
        // As the state dir's controller: a link planted in it leads nowhere root's.
        let removed = builderd_core::asuser::as_owner_of(&state, || {
            std::fs::remove_dir_all(&state)
                .map_err(|e| builderd_core::asuser::FsError::new("remove", &state, e))
        });
        match removed.map_err(|e| e.source) {
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

/// How long `uninstall --purge` waits for a daemon to take the builder down: long enough for a
/// daemon that finishes a step first (stopping a container takes its grace period). A debug build
/// (the tests) takes `BUILDERD_TEST_DOWN_WAIT` seconds instead.
fn down_wait() -> Duration {
    #[cfg(debug_assertions)]
    if let Some(secs) = std::env::var("BUILDERD_TEST_DOWN_WAIT")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return Duration::from_secs(secs);
    }
    Duration::from_secs(120)
}

mod libc_flags {
    use rustix::fs::OFlags;
    /// `O_NONBLOCK | O_NOFOLLOW`.
    pub const NONBLOCK_NOFOLLOW: i32 = (OFlags::NONBLOCK.bits() | OFlags::NOFOLLOW.bits()) as i32;
}

#[cfg(test)]
mod tests {
    use super::lock_is_held;
    use std::process::Command;
    use std::time::Duration;

    #[test]
    fn a_pid_file_that_is_a_fifo_or_a_link_holds_no_lock_and_never_hangs() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("builderd.pid");
        assert!(
            Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let p = fifo.clone();
        std::thread::spawn(move || tx.send(lock_is_held(&p)));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(false));
        // A link to a file another process holds locked is not this state dir's lock.
        let real = d.path().join("real.pid");
        let held = std::fs::File::create(&real).unwrap();
        held.lock().unwrap();
        let link = d.path().join("link.pid");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(!lock_is_held(&link));
        assert!(lock_is_held(&real));
    }
}
