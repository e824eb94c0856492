//! `builderctl up` to a working remote builder, proven with the real ssh and nix clients, and
//! `down` giving every file back byte for byte.

use std::time::{Duration, Instant};

use builderd_tests::{Env, skip_docker, snapshot, ssh_keygen_fingerprint};

#[test]
fn up_gives_a_working_builder_and_down_restores_every_file() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    // The user's own files, in the shapes people have: CRLF, no trailing newline, a stale entry
    // for the builder's host and port, a global option before any Host line.
    let stale = format!(
        "[localhost]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOLDO\n",
        env.port
    );
    std::fs::write(env.path("home/.ssh/known_hosts"), "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\r\n").unwrap();
    std::fs::write(env.path("root/.ssh/known_hosts"), &stale).unwrap();
    std::fs::write(
        env.path("home/.ssh/config"),
        "ServerAliveInterval 30\nHost gh\n  HostName github.com",
    )
    .unwrap();
    std::fs::write(
        env.path("etc/nix/nix.conf"),
        "max-jobs = 2\nexperimental-features = nix-command",
    )
    .unwrap();
    let files = [
        env.path("home/.ssh/known_hosts"),
        env.path("home/.ssh/config"),
        env.path("root/.ssh/config"),
        env.path("etc/nix/nix.conf"),
        env.path("etc/nix/machines"),
    ];
    let before = snapshot(&files);

    let t = Instant::now();
    let out = env.up();
    eprintln!("up to healthy: {:?}", t.elapsed());
    assert!(out.contains("the builder is up"), "{out}");

    // status --json
    let st = env.status();
    assert_eq!(st["state"], "up", "{st:#}");
    assert_eq!(st["healthy"], true);
    assert_eq!(st["port"], env.port);
    assert_eq!(st["container"]["name"], env.name.as_str());
    assert!(st["last_health"]["latency_ms"].as_f64().unwrap() > 0.0);
    let fp = ssh_keygen_fingerprint(&env.path("state/volume/id_ed25519.pub"));
    assert!(fp.starts_with("SHA256:"));
    assert_eq!(st["host_key_fingerprint"], fp.as_str());

    // The stale entry for the same host and port is replaced, not duplicated.
    let root_kh = std::fs::read_to_string(env.path("root/.ssh/known_hosts")).unwrap();
    assert!(!root_kh.contains("OLDOLD"), "{root_kh}");
    assert_eq!(
        root_kh
            .matches(&format!("[localhost]:{} ", env.port))
            .count(),
        1
    );

    // The real ssh client, strict host key checking, with each written known_hosts file …
    for kh in ["home/.ssh/known_hosts", "root/.ssh/known_hosts"] {
        let o = env.ssh_pinned(&env.path(kh), "echo 123");
        assert!(
            o.status.success(),
            "{kh}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "123");
    }
    // … and through the alias of each written ssh_config, with no other flags.
    for cfg in ["home/.ssh/config", "root/.ssh/config"] {
        let p = env.path(cfg);
        let o = env.ssh(&["-F", p.to_str().unwrap(), &env.name], "echo 123");
        assert!(
            o.status.success(),
            "{cfg}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "123");
    }
    // The user's global option still applies to every host: the block is closed by `Host *`.
    let cfg_text = std::fs::read_to_string(env.path("home/.ssh/config")).unwrap();
    assert!(cfg_text.ends_with("ServerAliveInterval 30\nHost gh\n  HostName github.com"));
    // … as ssh itself resolves it: the alias gets builderd's options, every other host the
    // user's.
    let ssh_g = |host: &str| {
        let o = std::process::Command::new("ssh")
            .args([
                "-G",
                "-F",
                env.path("home/.ssh/config").to_str().unwrap(),
                host,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let alias = ssh_g(&env.name);
    assert!(alias.contains(&format!("\nport {}\n", env.port)), "{alias}");
    assert!(alias.contains("\nhostkeyalias "), "{alias}");
    // Copies go at the fastest cipher for this CPU, uncompressed on loopback, and the real ssh
    // and the builder's sshd agree on it.
    let fastest = builderd::registration::ciphers(builderd::registration::cpu_has_aes())[0];
    assert!(alias.contains(&format!("\nciphers {fastest},")), "{alias}");
    assert!(alias.contains("\ncompression no\n"), "{alias}");
    let p = env.path("home/.ssh/config");
    let o = env.ssh(
        &[
            "-v",
            "-F",
            p.to_str().unwrap(),
            "-o",
            "ControlPath=none",
            &env.name,
        ],
        "true",
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains(&format!("cipher: {fastest} ")), "{err}");
    let other = ssh_g("example.org");
    assert!(other.contains("\nport 22\n"), "{other}");
    assert!(other.contains("\nserveraliveinterval 30\n"), "{other}");
    assert!(
        !other.contains(&env.name) && !other.contains("builderd-"),
        "{other}"
    );
    let gh = ssh_g("gh");
    assert!(gh.contains("\nhostname github.com\n"), "{gh}");

    // The machines line has 8 fields, and the real nix client builds through it, field 8 and all.
    let machines = std::fs::read_to_string(env.path("etc/nix/machines")).unwrap();
    let line = machines
        .lines()
        .find(|l| l.starts_with("ssh-ng://"))
        .unwrap();
    assert_eq!(line.split(' ').count(), 8, "{line}");
    assert!(
        line.starts_with(&format!("ssh-ng://{} x86_64-linux ", env.name)),
        "{line}"
    );
    env.nix_build(
        &env.path("root/.ssh/config"),
        &format!("n{}", std::process::id()),
    );
    // The build checked the host key itself: with a shared connection open to the builder,
    // a field 8 naming another key is still refused.
    let root_cfg = env.path("root/.ssh/config");
    let o = env.ssh(&["-F", root_cfg.to_str().unwrap(), &env.name], "true");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let field8 = line.split(' ').nth(7).unwrap();
    let stranger = format!(
        "{}\n",
        std::fs::read_to_string(env.path("home/.ssh/id_ed25519.pub"))
            .unwrap()
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let wrong = env.path("machines-wrong-key");
    std::fs::write(
        &wrong,
        line.replace(field8, &builderd_tests::b64(&stranger)),
    )
    .unwrap();
    let err = env.nix_build_fails(&wrong, &root_cfg);
    assert!(err.contains("Host key verification failed"), "{err}");

    let conf = std::fs::read_to_string(env.path("etc/nix/nix.conf")).unwrap();
    assert!(
        conf.contains("\nbuilders-use-substitutes = true\n"),
        "{conf}"
    );

    // A second up is a quick no-op that says so.
    let out = env.up();
    assert!(out.contains("already up"), "{out}");

    // down: container gone, every file as it was, the volume (and host key) kept.
    let out = env.ctl_ok(&["down"]);
    assert!(out.contains("down"), "{out}");
    assert_eq!(env.container_state(), None);
    let after = snapshot(&files);
    for ((p, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a, b, "{} differs after down", p.display());
    }
    // root's known_hosts held only the stale entry, which up replaced: ours is gone again.
    assert!(
        !std::fs::read_to_string(env.path("root/.ssh/known_hosts"))
            .unwrap()
            .contains("ssh-ed25519")
    );
    assert!(env.path("state/volume/id_ed25519").exists());
    let out = env.ctl_ok(&["down"]);
    assert!(out.contains("already down"), "{out}");

    // up again: same host key, healthy.
    env.up();
    assert_eq!(env.status()["host_key_fingerprint"], fp.as_str());
    env.ctl_ok(&["down"]);
    let out = env.ctl_ok(&["shutdown"]);
    assert!(out.contains("stopping"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.path("state/builderd.sock").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !env.path("state/builderd.sock").exists(),
        "the socket is removed at shutdown"
    );
}

#[test]
fn privileged_mode_works_or_is_refused_with_the_fix() {
    if skip_docker() {
        return;
    }
    let env = Env::new("[builder]\nprivileged = true\nsubstituters = \"\"\n");
    let o = {
        let _g = builderd_tests::ImageBuildLock::take_if_needed(&env.config);
        env.ctl(&["up"])
    };
    if o.status.success() {
        // An engine that grants privileged containers: the sandbox works there too.
        env.nix_build(&env.path("root/.ssh/config"), "privileged");
    } else {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("refused a privileged container"), "{err}");
        assert!(err.contains("remove `privileged = true`"), "{err}");
        assert_eq!(
            env.container_state(),
            None,
            "a refused start leaves no container"
        );
        assert!(!env.path("etc/nix/machines").exists());
    }
}

#[test]
fn the_default_container_is_unprivileged_and_builds_sandboxed() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    env.up();
    // The narrow set: CAP_SYS_ADMIN, seccomp and AppArmor unconfined, no masked /proc paths;
    // never --privileged.
    let o = env.docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.Privileged}} {{json .HostConfig.CapAdd}} {{json .HostConfig.SecurityOpt}} {{json .HostConfig.MaskedPaths}} {{json .HostConfig.ReadonlyPaths}}",
        &env.name,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        r#"false ["SYS_ADMIN"] ["seccomp=unconfined","apparmor=unconfined"] [] []"#
    );
    let conf = env.docker(&["exec", &env.name, "cat", "/etc/nix/nix.conf"]);
    let conf = String::from_utf8_lossy(&conf.stdout);
    assert!(conf.contains("sandbox = true\n"), "{conf}");
    assert!(conf.contains("sandbox-fallback = false\n"), "{conf}");
    assert!(!conf.contains("filter-syscalls"), "{conf}");
    // nix_build asserts pid 1, no /usr and /build: a sandboxed build, through root's files.
    env.nix_build(&env.path("root/.ssh/config"), "sandboxed");

    // With the sandbox turned off the same build runs unsandboxed, and the helper says so:
    // proof that its checks can fail.
    std::fs::write(
        &env.config,
        env.config_text()
            .replace("[builder]\n", "[builder]\nsandbox = false\n"),
    )
    .unwrap();
    env.up();
    let conf = env.docker(&["exec", &env.name, "cat", "/etc/nix/nix.conf"]);
    assert!(String::from_utf8_lossy(&conf.stdout).contains("sandbox = false\n"));
    let env = std::panic::AssertUnwindSafe(env);
    let unsandboxed =
        std::panic::catch_unwind(|| env.nix_build(&env.path("root/.ssh/config"), "unsandboxed"));
    let msg = unsandboxed
        .err()
        .and_then(|p| p.downcast_ref::<String>().cloned())
        .expect("an unsandboxed build is caught");
    assert!(msg.contains("not sandboxed"), "{msg}");
}

#[test]
fn up_after_a_config_edit_uses_the_new_config() {
    if skip_docker() {
        return;
    }
    let mut env = Env::new("");
    env.up();
    let old = env.port;
    env.port = builderd_tests::free_port();
    env.write_config();
    let out = env.up();
    assert!(out.contains(&format!("127.0.0.1:{}", env.port)), "{out}");
    let st = env.status();
    assert_eq!(st["port"], env.port);
    let kh = std::fs::read_to_string(env.path("home/.ssh/known_hosts")).unwrap();
    assert!(
        kh.contains(&format!("[localhost]:{} ", env.port))
            && !kh.contains(&format!("[localhost]:{old} ")),
        "{kh}"
    );
    let o = env.ssh_pinned(&env.path("home/.ssh/known_hosts"), "echo 123");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A broken edit is refused with the line named, and the builder stays as it was.
    std::fs::write(&env.config, format!("{}\nbogus = 1\n", env.config_text())).unwrap();
    let o = env.ctl(&["up"]);
    assert_eq!(o.status.code(), Some(2));
    env.write_config();
    let o = env.ctl(&["up"]);
    assert!(o.status.success());
}
