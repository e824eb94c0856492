//! The files a root builderd serving one user (`BUILDERD_OWNER_UID`) may be made to touch by the
//! config's values, which are the user's: the registration files, the socket, the names root's
//! ssh blocks carry, the port; and root's builderctl starting no daemon on a config the user may
//! write.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use builderd_tests::{Env, bin_dir};

/// A root-only file standing in for `/etc/shadow`: root's, mode 0600, in a directory only root
/// controls.
fn root_only(env: &Env, name: &str) -> PathBuf {
    let p = env.path(name);
    std::fs::write(&p, format!("{name}: root's own bytes\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn assert_untouched(p: &Path) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let name = p.file_name().unwrap().to_string_lossy();
    assert_eq!(m.uid(), 0, "{} was given away", p.display());
    assert_eq!(
        std::fs::read_to_string(p).unwrap(),
        format!("{name}: root's own bytes\n"),
        "root changed {}",
        p.display()
    );
}

/// The environment's config with `from` replaced by `to`.
fn rewrite(env: &Env, from: &str, to: &str) {
    let text = env.config_text();
    assert!(text.contains(from), "{from} is not in the config");
    std::fs::write(&env.config, text.replace(from, to)).unwrap();
}

/// Runs `builderd --config FILE` (as whoever runs the tests) on the test config with `from`
/// replaced by `to`.
fn builderd_on(from: &str, to: &str) -> (i32, String) {
    let env = Env::new("");
    let text = env.config_text();
    let from = if from == "port" {
        format!("port = {}\n", env.port)
    } else {
        from.to_string()
    };
    assert!(text.contains(&from), "{from} is not in the config");
    std::fs::write(&env.config, text.replacen(&from, to, 1)).unwrap();
    let log = env.path("builderd.err");
    let mut child = Command::new(bin_dir().join("builderd"))
        .arg("--config")
        .arg(&env.config)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // A config it takes makes it serve: stop it after a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code().unwrap_or(-1);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (code, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn registration_keys_naming_a_root_only_file_are_refused() {
    let (env, user) = Env::root_served("");
    let d = env.dir.path().display().to_string();
    let shadow = root_only(&env, "shadow");
    for (key, from) in [
        ("machines_file", format!("{d}/etc/nix/machines")),
        ("nix_conf", format!("{d}/etc/nix/nix.conf")),
        ("known_hosts", format!("{d}/root/.ssh/known_hosts")),
        ("ssh_config", format!("{d}/root/.ssh/config")),
    ] {
        rewrite(
            &env,
            &format!("\"{from}\""),
            &format!("\"{}\"", shadow.display()),
        );
        let e = env
            .start_root_daemon(user.uid)
            .expect_err("a root daemon started on a config naming root's file");
        assert!(e.contains("exit status: 2"), "{key}: {e}");
        assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
        assert!(e.contains(&shadow.display().to_string()), "{key}: {e}");
        assert!(e.contains("controls"), "{key}: {e}");
        assert_untouched(&shadow);
    }
    // Root's own file for another role (an ssh block in root's nix.conf) is refused too.
    rewrite(
        &env,
        &format!("\"{d}/root/.ssh/config\""),
        &format!("\"{d}/etc/nix/nix.conf\""),
    );
    let e = env.start_root_daemon(user.uid).unwrap_err();
    assert!(e.contains("`ssh_config`"), "{e}");
    // A file in a directory the user controls is theirs to name: served, edited as them.
    rewrite(
        &env,
        &format!("\"{d}/root/.ssh/config\""),
        &format!("\"{d}/home/.ssh/other_config\""),
    );
    env.start_root_daemon(user.uid).unwrap();
    let o = env.ctl_as(&user, &["shutdown"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_untouched(&shadow);
}

#[test]
fn aliases_and_remote_names_never_name_a_real_host() {
    for alias in ["github.com", "localhost", "10.0.0.1", "LocalHost", "::1"] {
        let (code, err) = builderd_on(
            "[registration]\n",
            &format!("[registration]\nalias = \"{alias}\"\n"),
        );
        assert_eq!(code, 2, "alias {alias}: {err}");
        assert!(err.contains("`alias`"), "{err}");
        assert!(err.contains("no dot"), "{err}");
    }
    let (code, err) = builderd_on(
        "[builder]\n",
        "[[remote]]\nname = \"github.com\"\naddress = \"192.0.2.1\"\nhost_key = \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\"\n[builder]\n",
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`name`"), "{err}");
    // A plain name is still fine.
    let (code, err) = builderd_on(
        "[builder]\n",
        "[[remote]]\nname = \"big-box_2\"\naddress = \"192.0.2.1\"\n[builder]\n",
    );
    assert_ne!(code, 2, "{err}");
}

#[test]
fn a_served_users_alias_never_takes_over_roots_ssh_to_a_real_host() {
    let (env, user) = Env::root_served("");
    let text = env.config_text().replace(
        "[registration]\n",
        "[registration]\nalias = \"github.com\"\n",
    );
    std::fs::write(&env.config, text).unwrap();
    let e = env.start_root_daemon(user.uid).unwrap_err();
    assert!(e.contains("exit status: 2"), "{e}");
    assert!(e.contains("`alias`"), "{e}");
    let root_cfg = std::fs::read_to_string(env.path("root/.ssh/config")).unwrap_or_default();
    assert!(!root_cfg.contains("github.com"), "{root_cfg}");
}

#[test]
fn a_port_below_1024_is_refused() {
    for port in [1, 80, 443, 1023] {
        let (code, err) = builderd_on("port", &format!("port = {port}\n"));
        assert_eq!(code, 2, "port {port}: {err}");
        assert!(err.contains("`port`"), "{err}");
        assert!(err.contains("1024"), "{err}");
    }
}

#[test]
fn the_socket_path_never_makes_root_remove_a_root_file() {
    let (env, user) = Env::root_served("");
    let d = env.dir.path().display().to_string();
    // The socket named at a root file in a directory only root controls.
    let victim = root_only(&env, "roots-file");
    rewrite(
        &env,
        &format!("\"{d}/state/builderd.sock\""),
        &format!("\"{}\"", victim.display()),
    );
    let e = env.start_root_daemon(user.uid).unwrap_err();
    assert!(e.contains("`socket`"), "{e}");
    assert!(e.contains("controls"), "{e}");
    assert_untouched(&victim);
}

#[test]
fn only_a_socket_is_ever_removed_at_the_socket_path() {
    let env = Env::new("");
    std::fs::create_dir_all(env.path("state")).unwrap();
    // Not a socket at the socket's name: a file of the user's, and a link to another.
    let sock = env.path("state/builderd.sock");
    std::fs::write(&sock, "not a socket\n").unwrap();
    let o = Command::new(bin_dir().join("builderd"))
        .arg("--config")
        .arg(&env.config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "not a socket\n");
    let other = env.path("other");
    std::fs::write(&other, "other\n").unwrap();
    std::fs::remove_file(&sock).unwrap();
    std::os::unix::fs::symlink(&other, &sock).unwrap();
    let o = Command::new(bin_dir().join("builderd"))
        .arg("--config")
        .arg(&env.config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is not a socket"), "{err}");
    assert!(std::fs::symlink_metadata(&sock).unwrap().is_symlink());
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "other\n");
}

/// Whether a builderd process runs on `config`.
fn daemon_runs_on(config: &Path) -> bool {
    let o = Command::new("pgrep")
        .args(["-f", &format!("builderd --config {}", config.display())])
        .output()
        .unwrap();
    o.status.success()
}

#[test]
fn roots_builderctl_starts_no_daemon_on_a_users_config() {
    let (env, user) = Env::root_served("");
    // The user's own config, as `sudo builderctl up` finds it in their home.
    let users = env.path("home/builderd.toml");
    std::fs::copy(&env.config, &users).unwrap();
    user.give(&users);
    for (config, sudo) in [(&users, true), (&users, false), (&env.config, true)] {
        // Bounded: a daemon that did start would go on to build the builder.
        let mut c = Command::new("timeout");
        c.arg("20").arg(bin_dir().join("builderctl"));
        c.arg("--config").arg(config).arg("up");
        c.env("NO_COLOR", "1").stdin(Stdio::null());
        if sudo {
            c.env("SUDO_USER", &user.name);
        } else {
            c.env_remove("SUDO_USER");
        }
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        let started = daemon_runs_on(config);
        if started {
            let _ = env.ctl(&["shutdown"]);
        }
        assert!(
            !started,
            "root started a daemon on {} ({err})",
            config.display()
        );
        assert!(!o.status.success(), "{err}");
        assert!(err.contains("sudo builderctl install"), "{err}");
        assert!(std::os::unix::net::UnixStream::connect(env.path("state/builderd.sock")).is_err());
    }
    drop(user);
}

#[test]
fn roots_uninstall_purge_removes_no_directory_root_controls() {
    let (env, user) = Env::root_served("");
    // A directory of root's, which the user's config names as its state dir.
    let roots = env.path("roots-dir");
    std::fs::create_dir_all(&roots).unwrap();
    std::fs::write(roots.join("keep"), "root's\n").unwrap();
    let users = env.path("home/builderd.toml");
    let text = std::fs::read_to_string(&env.config).unwrap();
    let state_line = format!("state_dir = \"{}\"", env.path("state").display());
    assert!(text.contains(&state_line), "{text}");
    std::fs::write(
        &users,
        text.replace(&state_line, &format!("state_dir = \"{}\"", roots.display())),
    )
    .unwrap();
    user.give(&users);
    // And a state dir of the user's own, holding a link to another of root's files.
    let theirs = env.path("home/state2");
    std::fs::create_dir_all(&theirs).unwrap();
    std::os::unix::fs::symlink(&roots, theirs.join("link")).unwrap();
    user.give(&theirs);
    let users2 = env.path("home/builderd2.toml");
    std::fs::write(
        &users2,
        text.replace(
            &state_line,
            &format!("state_dir = \"{}\"", theirs.display()),
        ),
    )
    .unwrap();
    user.give(&users2);
    let uninstall = |config: &Path| {
        // `--user`: the service part is the user's agent (systemctl --user fails here, as root
        // has no user manager); what is tested is the purge `sudo builderctl` does.
        Command::new("timeout")
            .arg("60")
            .arg(bin_dir().join("builderctl"))
            .arg("--config")
            .arg(config)
            .args(["uninstall", "--purge", "--user"])
            .env("NO_COLOR", "1")
            .env("SUDO_USER", &user.name)
            .env("HOME", env.path("home"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = uninstall(&users);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        std::fs::read_to_string(roots.join("keep")).ok().as_deref(),
        Some("root's\n"),
        "root removed its own directory for the user's config: {err}"
    );
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("root controls it"), "{err}");
    // The user's own state dir goes, as the user: the link goes, not what it points to.
    let o = uninstall(&users2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!theirs.exists(), "{err}");
    assert!(roots.join("keep").exists(), "{err}");
    drop(user);
}

/// A Unix socket the user listens on, as a fake engine would: each connection is recorded in
/// `log`.
fn users_listener(user: &builderd_tests::TestUser, sock: &Path, log: &Path) -> std::process::Child {
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.bind({sock:?})\n\
         s.listen(8)\n\
         while True:\n\
         \x20   c, _ = s.accept()\n\
         \x20   open({log:?}, 'a').write('connected\\n')\n\
         \x20   c.close()\n",
        sock = sock.display().to_string(),
        log = log.display().to_string(),
    );
    let child = user
        .command("python3")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the listener did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

#[test]
fn a_linux_root_service_never_uses_an_engine_the_user_names() {
    if !cfg!(target_os = "linux") {
        return;
    }
    let (env, user) = Env::root_served("");
    let home = env.path("home");
    // The user's docker context names a socket they listen on.
    let sock = env.path("home/fake-engine.sock");
    let log = env.path("home/connections");
    let mut listener = users_listener(&user, &sock, &log);
    let ctx = "mine";
    let digest = builderd::docker::engine::hex(&{
        use sha2::Digest;
        sha2::Sha256::digest(ctx.as_bytes())
    });
    user.sh(&format!(
        "mkdir -p {h}/.docker/contexts/meta/{digest} && \
         printf '{{\"currentContext\":\"{ctx}\"}}' > {h}/.docker/config.json && \
         printf '{{\"Name\":\"{ctx}\",\"Endpoints\":{{\"docker\":{{\"Host\":\"unix://{s}\"}}}}}}' > {h}/.docker/contexts/meta/{digest}/meta.json",
        h = home.display(),
        s = sock.display()
    ));
    // HOME is the user's, as `sudo builderctl install` writes it into the unit.
    let home_s = home.display().to_string();
    env.start_root_daemon_with(user.uid, &[("HOME", &home_s)])
        .unwrap();
    let o = env.ctl_as(&user, &["status", "--json"]);
    let status = String::from_utf8_lossy(&o.stdout).into_owned();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let _ = env.ctl_as(&user, &["shutdown"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::os::unix::net::UnixStream::connect(env.path("state/builderd.sock")).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not stop"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = listener.kill();
    let _ = listener.wait();
    assert!(
        !log.exists(),
        "the root service connected to the user's engine: {status}"
    );
    assert!(!status.contains("fake-engine"), "{status}");
    // The config's docker_host is the user's value too: refused.
    let text = env.config_text().replace(
        "health_interval = 2\n",
        &format!(
            "health_interval = 2\ndocker_host = \"unix://{}\"\n",
            sock.display()
        ),
    );
    std::fs::write(&env.config, text).unwrap();
    let e = env.start_root_daemon(user.uid).unwrap_err();
    assert!(e.contains("`docker_host`"), "{e}");
}

#[test]
fn what_the_user_writes_never_forges_a_line_of_roots_log() {
    let (env, user) = Env::root_served("");
    // A state.json whose bad value carries a line of its own into the error root logs.
    let forged = "2026-01-01T00:00:00.000000Z  INFO builderd::server: forged line";
    let state = env.path("state/state.json");
    std::fs::write(
        &state,
        format!("{{\"desired\": \"x\\n{forged}\\u001b[2K\"}}"),
    )
    .unwrap();
    user.give(&state);
    env.start_root_daemon(user.uid).unwrap();
    let _ = env.ctl_as(&user, &["shutdown"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let log = std::fs::read_to_string(env.path("root-daemon.log")).unwrap();
    assert!(log.contains("could not be read"), "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01")),
        "a line of the user's reached root's log as a line of its own:\n{log}"
    );
    assert!(!log.contains('\u{1b}'), "{log}");
    assert!(log.contains("forged line"), "{log}");
}

#[test]
fn a_config_the_root_daemon_refuses_is_one_line_of_its_log() {
    let (env, user) = Env::root_served("");
    // A TOML error quotes the config's lines, and this one reads like an event of root's log.
    let forged = "2026-01-01T00:00:00.000000Z  INFO builderd::server: forged line";
    let text = format!("{}{forged}\n", env.config_text());
    std::fs::write(&env.config, text).unwrap();
    let e = env.start_root_daemon(user.uid).unwrap_err();
    let log = std::fs::read_to_string(env.path("root-daemon.log")).unwrap();
    assert!(log.contains("TOML parse error"), "{e}");
    assert!(log.contains("forged line"), "{log}");
    assert_eq!(
        log.lines().count(),
        1,
        "the refused config's lines reached root's log as lines of their own:\n{log}"
    );
}

#[test]
fn roots_uninstall_purge_is_not_held_by_what_the_user_listens_with() {
    let (env, user) = Env::root_served("");
    // What answers on the user's socket is the user's: here it takes requests and never replies.
    let sock = env.path("state/builderd.sock");
    let script = format!(
        "import socket, time\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.bind({sock:?})\n\
         s.listen(8)\n\
         held = []\n\
         while True:\n\
         \x20   c, _ = s.accept()\n\
         \x20   held.append(c)\n",
        sock = sock.display().to_string(),
    );
    let mut listener = user
        .command("python3")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = Command::new("timeout")
        .arg("60")
        .arg(bin_dir().join("builderctl"))
        .arg("--config")
        .arg(&env.config)
        .args(["uninstall", "--purge", "--user"])
        .env("NO_COLOR", "1")
        .env("SUDO_USER", &user.name)
        .env("HOME", env.path("home"))
        .env("BUILDERD_TEST_DOWN_WAIT", "2")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = listener.kill();
    let _ = listener.wait();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(
        o.status.code(),
        Some(124),
        "root's uninstall waited on the user's listener until it was killed: {err}"
    );
    assert!(
        err.contains("did not take the builder down within 2 s"),
        "{err}"
    );
    assert!(err.contains("docker rm -f"), "{err}");
    drop(user);
}
