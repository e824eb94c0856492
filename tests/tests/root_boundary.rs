//! The root boundary: a root builderd serving one user (`BUILDERD_OWNER_UID`), attacked by a
//! real unprivileged account that owns the home and the state dir, as `sudo builderctl install`
//! lays them out. Whatever that user plants, root writes, reads, gives away and runs only what
//! the user could have themselves.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use builderd_tests::{Env, skip_docker};

/// A root-owned file the user may not write: what an attacker wants root to overwrite.
fn victim(env: &Env, name: &str) -> std::path::PathBuf {
    let p = env.path(name);
    std::fs::write(&p, format!("{name}: root's own bytes\n")).unwrap();
    p
}

fn assert_untouched(p: &Path) {
    let m = std::fs::symlink_metadata(p).unwrap();
    let name = p.file_name().unwrap().to_string_lossy();
    assert_eq!(m.uid(), 0, "{} was given away", p.display());
    assert_eq!(
        std::fs::read_to_string(p).unwrap(),
        format!("{name}: root's own bytes\n"),
        "root wrote through a link into {}",
        p.display()
    );
}

#[test]
fn planted_links_never_redirect_root() {
    if skip_docker() {
        return;
    }
    let (env, user) = Env::root_served("");
    let by_pidfile = victim(&env, "victim-pidfile");
    let by_temp = victim(&env, "victim-temp");
    let by_known_hosts = victim(&env, "victim-known-hosts");
    let state = env.path("state");
    // The pid file, before root starts.
    user.sh(&format!(
        "ln -s {} {}/builderd.pid",
        by_pidfile.display(),
        state.display()
    ));
    // Tools of the user's own on the PATH root was started with.
    let bin = env.path("home/bin");
    let marker = env.path("ran-as-root");
    user.sh(&format!(
        "mkdir -p {b} && for t in nix nix-store lsof launchctl systemctl debootstrap; do printf '#!/bin/sh\ntouch {m}\nexit 1\n' > {b}/$t; chmod 755 {b}/$t; done",
        b = bin.display(),
        m = marker.display()
    ));
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display());
    env.start_root_daemon_with(user.uid, &[("PATH", &path)])
        .unwrap();
    assert_untouched(&by_pidfile);
    let pid = std::fs::read_to_string(state.join("builderd.pid")).unwrap();
    let pid = pid.trim();
    assert!(
        !std::fs::symlink_metadata(state.join("builderd.pid"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // The socket is the user's, mode 0600.
    let sock = std::fs::metadata(state.join("builderd.sock")).unwrap();
    assert_eq!((sock.uid(), sock.mode() & 0o777), (user.uid, 0o600));

    // Temp files under the names a writer of state.json, host.pub and known_hosts would use,
    // and the user's known_hosts as a link to a root file.
    std::fs::create_dir_all(state.join("volume")).unwrap();
    user.give(&state.join("volume"));
    let planted = [
        format!("{}/.state.json.builderd-tmp.{pid}", state.display()),
        format!("{}/volume/.host.pub.builderd-tmp.{pid}", state.display()),
        format!(
            "{}/.known_hosts.builderd-tmp.{pid}",
            env.path("home/.ssh").display()
        ),
    ];
    for p in &planted {
        user.sh(&format!("ln -s {} {p}", by_temp.display()));
    }
    user.sh(&format!(
        "ln -s {} {}",
        by_known_hosts.display(),
        env.path("home/.ssh/known_hosts").display()
    ));

    let o = env.ctl_as(&user, &["up"]);
    assert!(
        o.status.success(),
        "up as the user: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        env.daemon_log()
    );
    assert_untouched(&by_pidfile);
    assert_untouched(&by_temp);
    assert_untouched(&by_known_hosts);
    assert!(!marker.exists(), "root ran a program from the user's PATH");

    // What the user could write is written, as theirs; what they could not is reported.
    let st = env.status();
    let regs = st["registrations"].as_array().unwrap();
    let kh = regs
        .iter()
        .find(|r| r["path"] == env.path("home/.ssh/known_hosts").display().to_string())
        .unwrap();
    assert_eq!(kh["state"], "failed", "{kh}");
    let root_kh = env.path("root/.ssh/known_hosts");
    assert!(
        std::fs::read_to_string(&root_kh)
            .unwrap()
            .contains("[localhost]")
    );
    assert_eq!(std::fs::metadata(&root_kh).unwrap().uid(), 0);
    let cfg = std::fs::metadata(env.path("home/.ssh/config")).unwrap();
    assert_eq!(cfg.uid(), user.uid, "the user's ssh config is the user's");
    let m = std::fs::symlink_metadata(state.join("state.json")).unwrap();
    assert!(m.is_file());
    assert_eq!(m.uid(), user.uid, "state.json is written as the user");
    // The volume is root's, out of the user's reach (see the volume test below).
    let vol = builderd::config::root_volume_dir(&state);
    let m = std::fs::symlink_metadata(vol.join("host.pub")).unwrap();
    assert!(m.is_file());
    assert_eq!(m.uid(), 0, "host.pub lives in root's volume dir");
    let o = env.ctl_as(&user, &["down"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_untouched(&by_temp);
    assert_untouched(&by_known_hosts);
}

/// `ssh -G ALIAS` with the user's ssh config: the option's value as ssh resolves it.
fn ssh_g(env: &Env, user: &builderd_tests::TestUser, option: &str) -> String {
    let o = user
        .command("ssh")
        .arg("-G")
        .arg("-F")
        .arg(env.path("home/.ssh/config"))
        .arg(&env.name)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(option))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn global_ssh_options_do_not_reach_the_alias() {
    if skip_docker() {
        return;
    }
    let (env, user) = Env::root_served("");
    env.start_root_daemon(user.uid).unwrap();
    let o = env.ctl_as(&user, &["up"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = env.path("home/.ssh/config");
    let global = "Host *\n  ProxyJump evil@127.0.0.1:1\n  ProxyCommand /bin/false %h\n  LocalCommand /bin/touch /tmp/pwned\n  PermitLocalCommand yes\n  RemoteCommand /bin/false\n  GlobalKnownHostsFile /tmp/planted-known-hosts\n  HostName 192.0.2.1\n  ForwardAgent yes\n";
    // Planted below the block, then above it (as the user, who owns the file).
    let below = format!("{}{global}", std::fs::read_to_string(&cfg).unwrap());
    user.sh(&format!(
        "printf '%s' '{below}' > {f}.new && mv {f}.new {f}",
        f = cfg.display()
    ));
    let first_line = |t: &str| t.lines().next().unwrap_or("").to_string();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let above = format!("{global}{}", std::fs::read_to_string(&cfg).unwrap());
    user.sh(&format!(
        "printf '%s' '{above}' > {f}.new && mv {f}.new {f}",
        f = cfg.display()
    ));
    // builderd puts its block back on top.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !first_line(&std::fs::read_to_string(&cfg).unwrap()).starts_with("# >>> builderd") {
        assert!(
            std::time::Instant::now() < deadline,
            "the block stayed below the user's Host *:\n{}",
            std::fs::read_to_string(&cfg).unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert_eq!(text.matches("ProxyJump evil").count(), 2, "{text}");
    for (option, want) in [
        ("proxyjump", ""),
        ("proxycommand", ""),
        ("permitlocalcommand", "permitlocalcommand no"),
        ("remotecommand", ""),
        ("globalknownhostsfile", "globalknownhostsfile /dev/null"),
        ("hostname", "hostname 127.0.0.1"),
        ("forwardagent", "forwardagent no"),
    ] {
        assert_eq!(ssh_g(&env, &user, option), want, "{option} in:\n{text}");
    }
    // And the real ssh, as the user, reaches the builder through that file.
    let o = user
        .command("ssh")
        .arg("-F")
        .arg(&cfg)
        .arg(&env.name)
        .arg("echo reached")
        .env("HOME", env.path("home"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("reached"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!Path::new("/tmp/pwned").exists());
    let _ = user
        .command("ssh")
        .arg("-F")
        .arg(&cfg)
        .args(["-O", "exit", &env.name])
        .output();
    let o = env.ctl_as(&user, &["down"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_root_daemon_reads_only_a_config_only_root_can_change() {
    let (env, user) = Env::root_served("");
    use std::os::unix::fs::PermissionsExt;
    // The user's own file (what the default path in their home would be).
    user.give(&env.config);
    let e = env.start_root_daemon(user.uid).unwrap_err();
    assert!(e.contains("exit status: 2"), "{e}");
    assert!(
        e.contains(&format!(
            "a root builderd serving uid {} reads only a config that only root can change",
            user.uid
        )),
        "{e}"
    );
    assert!(e.contains("sudo builderctl install"), "{e}");
    // Root's file, but anyone may write it.
    std::os::unix::fs::chown(&env.config, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = env.start_root_daemon(user.uid).unwrap_err();
    assert!(e.contains("writable by others than root"), "{e}");
    assert!(!env.path("state/builderd.sock").exists());
    // Root's link to a root file in a directory the user controls (who could swap the file).
    std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let in_home = env.path("home/builderd.toml");
    std::fs::copy(&env.config, &in_home).unwrap();
    let real = env.path("builderd.toml.real");
    std::fs::rename(&env.config, &real).unwrap();
    std::os::unix::fs::symlink(&in_home, &env.config).unwrap();
    let e = env.start_root_daemon(user.uid).unwrap_err();
    assert!(
        e.contains(&format!("uid {} owns it or a directory above it", user.uid)),
        "{e}"
    );
    std::fs::remove_file(&env.config).unwrap();
    std::fs::rename(&real, &env.config).unwrap();
    // Root's file that only root may write: served.
    env.start_root_daemon(user.uid).unwrap();
    let o = env.ctl_as(&user, &["status", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn config_values_cannot_add_lines_to_roots_files() {
    for (extra, key, line) in [
        (
            "[builder]\nprivileged = false\nsandbox = false\nsubstituters = \"\"\nsupported_features = [\"kvm - -\\nssh-ng://evil x86_64-linux\"]\n",
            "supported_features",
            12,
        ),
        (
            "[builder]\nprivileged = false\nsandbox = false\nsubstituters = \"\"\nsystems = [\"x86_64-linux\\n\"]\n",
            "systems",
            12,
        ),
    ] {
        let (env, user) = Env::root_served(extra);
        let e = env.start_root_daemon(user.uid).unwrap_err();
        assert!(e.contains("exit status: 2"), "{e}");
        assert!(e.contains(&format!("line {line}: `{key}`")), "{e}");
        let o = env.ctl_as(&user, &["status"]);
        assert_eq!(o.status.code(), Some(2));
        assert!(!env.path("etc/nix/machines").exists());
    }
    // A path that would end a line of root's ssh_config.
    let text = "[registration]\nknown_hosts = [\"/tmp/kh\\n  ProxyCommand /bin/sh -c id\"]\n";
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("c.toml");
    std::fs::write(&cfg, text).unwrap();
    let o = std::process::Command::new(builderd_tests::bin_dir().join("builderd"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 2: `known_hosts`"), "{err}");
}

#[test]
fn a_named_config_that_does_not_exist_is_a_usage_error() {
    let home = tempfile::tempdir().unwrap();
    let ctl = builderd_tests::bin_dir().join("builderctl");
    let run = |args: &[&str], env: Option<&str>| {
        let mut c = std::process::Command::new(&ctl);
        c.args(args)
            .env_remove("BUILDERD_CONFIG")
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .env("XDG_DATA_HOME", home.path().join(".local/share"));
        if let Some(v) = env {
            c.env("BUILDERD_CONFIG", v);
        }
        c.output().unwrap()
    };
    for (o, by) in [
        (
            run(&["--config", "/gone/builderd.toml", "down"], None),
            "--config",
        ),
        (
            run(&["down"], Some("/gone/builderd.toml")),
            "BUILDERD_CONFIG",
        ),
    ] {
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!(
                "config /gone/builderd.toml does not exist (named by {by})"
            )),
            "{err}"
        );
    }
    // Nothing was started or made for the default instance.
    assert_eq!(std::fs::read_dir(home.path()).unwrap().count(), 0);
}

#[test]
fn the_root_service_runs_roots_own_copies_with_a_fixed_path() {
    let (env, user) = Env::root_served("");
    let planted = env.path("home/bin");
    let o = std::process::Command::new(builderd_tests::bin_dir().join("builderctl"))
        .arg("--config")
        .arg(&env.config)
        .args(["install", "--print"])
        .env("SUDO_USER", &user.name)
        .env("SUDO_UID", user.uid.to_string())
        .env("PATH", format!("{}:/usr/bin:/bin", planted.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let unit = String::from_utf8_lossy(&o.stdout);
    assert!(
        unit.contains(
            "ExecStart=\"/usr/local/lib/builderd/builderd\" --config \"/usr/local/lib/builderd/config.toml\""
        ),
        "{unit}"
    );
    assert!(
        unit.contains(&format!(
            "Environment=\"PATH={}\"",
            builderd::config::ROOT_PATH
        )),
        "{unit}"
    );
    assert!(!unit.contains(&planted.display().to_string()), "{unit}");
    assert!(
        unit.contains(&format!("BUILDERD_OWNER_UID={}", user.uid)),
        "{unit}"
    );
}

#[test]
fn install_hands_over_from_a_daemon_the_user_started() {
    let (env, user) = Env::root_served("");
    // The user's own daemon, as a plain `builderctl up` starts it.
    let mut own = user
        .command(builderd_tests::bin_dir().join("builderd"))
        .arg("--config")
        .arg(&env.config)
        .env("HOME", env.path("home"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sock = env.path("state/builderd.sock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the user's daemon did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = env.ctl_as(&user, &["install", "--user"]);
    let err = String::from_utf8_lossy(&o.stderr);
    // The daemon the user started is gone before the service is loaded, so the service's daemon
    // finds the state dir free.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let status = loop {
        if let Some(st) = own.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the user's daemon still runs after install: {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "it shut down cleanly: {status}");
    assert!(std::os::unix::net::UnixStream::connect(&sock).is_err());
    if o.status.success() {
        // A machine with a user systemd: take the unit away again.
        let _ = env.ctl_as(&user, &["uninstall", "--user"]);
    } else {
        // This machine runs no systemd: the install stops at systemctl, after the hand-over.
        assert!(err.contains("systemctl --user daemon-reload"), "{err}");
    }
}

#[test]
fn root_reads_only_the_key_files_the_user_could_read() {
    if skip_docker() {
        return;
    }
    let (env, user) = Env::root_served("");
    // A key pair only root may read, and the user's key files as links to it.
    let roots = env.path("root/.ssh/id_ed25519");
    builderd_tests::keygen(&roots, "ed25519");
    for (link, target) in [
        ("home/.ssh/id_ed25519", roots.clone()),
        ("home/.ssh/id_ed25519.pub", roots.with_extension("pub")),
    ] {
        std::fs::remove_file(env.path(link)).unwrap();
        user.sh(&format!(
            "ln -s {} {}",
            target.display(),
            env.path(link).display()
        ));
    }
    env.start_root_daemon(user.uid).unwrap();
    let o = env.ctl_as(&user, &["up"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "root used a key the user cannot read");
    assert!(
        err.contains(&format!(
            "cannot load private key {}: Permission denied",
            env.path("home/.ssh/id_ed25519").display()
        )),
        "{err}"
    );
    assert_eq!(env.containers_of_ours(), 0);
}

#[test]
fn the_volume_a_root_engine_mounts_is_one_the_user_cannot_swap() {
    if skip_docker() {
        return;
    }
    let (env, user) = Env::root_served("");
    env.start_root_daemon(user.uid).unwrap();
    let o = env.ctl_as(&user, &["up"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let state = env.path("state");
    let root_vol = builderd::config::root_volume_dir(&state);
    let source = |env: &Env| {
        let o = env.docker(&[
            "inspect",
            "-f",
            "{{range .Mounts}}{{.Source}}{{end}}",
            &env.name,
        ]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(source(&env), root_vol.display().to_string());
    let m = std::fs::metadata(&root_vol).unwrap();
    assert_eq!(m.uid(), 0);
    // The user puts a link where the volume used to be, to a directory of root's, and has the
    // container made again: the engine still mounts root's volume dir, and root's directory
    // gets nothing.
    let target = env.path("roots-dir");
    std::fs::create_dir(&target).unwrap();
    user.sh(&format!(
        "rm -rf {v} && ln -s {t} {v}",
        v = state.join("volume").display(),
        t = target.display()
    ));
    let old_id = env.status()["container"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.docker(&["rm", "-f", &env.name]);
    env.wait_status(std::time::Duration::from_secs(60), "re-created", |s| {
        s["state"] == "up"
            && s["healthy"] == true
            && s["container"]["id"].as_str().is_some_and(|id| id != old_id)
    });
    assert_eq!(source(&env), root_vol.display().to_string());
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "nothing was written through the link"
    );
    // The user's own tools find the builder's host key there.
    let o = env.ctl_as(&user, &["ssh", "--", "true"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
