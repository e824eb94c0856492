//! builderctl for people: the status table and doctor's checks as people see them (snapshots
//! against a real daemon), progress and `status --watch` in a real terminal, the exit codes.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use builderd_tests::{Env, keygen, redact, skip_docker};

fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_prepend_module_to_snapshot(false);
    s.add_filter(r"SHA256:[A-Za-z0-9+/]{43}", "[FINGERPRINT]");
    s.add_filter(r"builderd \d+\.\d+\.\d+", "builderd [VERSION]");
    s.add_filter(r"pid \d+", "pid [PID]");
    s.add_filter(r"\(Nix\) \d+\.\d+\.\d+", "(Nix) [NIXVERSION]");
    s.add_filter(r"Nix \d+\.\d+\.\d+", "Nix [NIXVERSION]");
    s.add_filter(r"\b[0-9a-f]{12}\b", "[ID]");
    s.add_filter(r"nix-builder:[0-9a-f]{16}", "nix-builder:[TAG]");
    s.add_filter(r"\d+(\.\d+)? (ms|s)\b", "[DURATION]");
    s.add_filter(r"\b\d+(m \d+)?s ago", "[AGO] ago");
    s.add_filter(r"for \d+(s|m \d+s)", "for [UPTIME]");
    s.add_filter(r"\d+\.\d (KiB|MiB|GiB|TiB)", "[SIZE]");
    s.add_filter(r"\(\d+×\)", "([N]×)");
    // The builder's jobs and cores follow the engine's CPUs and memory.
    s.add_filter(
        r"\d+ at once, \d+ cores each",
        "[N] at once, [N] cores each",
    );
    s.add_filter(r"engine: \d+ CPUs", "engine: [N] CPUs");
    s.add_filter(r"maxJobs = \d+;", "maxJobs = [N];");
    s.add_filter(r"unix://\S+ \([^)]*\)", "[ENGINE]");
    s.add_filter(
        r#"publicHostKey = "[^"]+""#,
        r#"publicHostKey = "[HOSTKEY]""#,
    );
    s.add_filter(r"\((cli|builderd_tests)-[0-9a-f]+\)", "([TEST])");
    s
}

/// nix.conf says `builders-use-substitutes = false`, which builderd reports and leaves alone.
fn say_substitutes_false(env: &Env) {
    std::fs::write(
        env.path("etc/nix/nix.conf"),
        "builders-use-substitutes = false\n",
    )
    .unwrap();
    env.wait_status(Duration::from_secs(10), "degraded", |s| {
        s["state"] == "degraded"
    });
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn status_in_each_state() {
    if skip_docker() {
        return;
    }
    let _g = settings().bind_to_scope();
    let env = Env::new("");
    // No daemon yet: exit 3 and what to do.
    let o = env.ctl(&["status"]);
    assert_eq!(o.status.code(), Some(3));
    insta::assert_snapshot!("status_no_daemon", redact(&env, &text(&o)));

    env.up();
    let o = env.ctl(&["status"]);
    assert_eq!(o.status.code(), Some(0));
    insta::assert_snapshot!("status_up", redact(&env, &text(&o)));

    // The container's state is the engine's word, not builderd's belief.
    assert_eq!(env.status()["container"]["state"], "running");
    assert!(env.docker(&["pause", &env.name]).status.success());
    env.wait_status(Duration::from_secs(30), "the container paused", |s| {
        s["container"]["state"] == "paused"
    });
    // doctor asks the engine too: a paused builder is not up, whatever was last seen.
    let o = env.doctor(&[]);
    assert_eq!(o.status.code(), Some(4));
    let out = text(&o);
    assert!(
        verdict(&out, "builder").starts_with("FAIL") && out.contains("container paused"),
        "{out}"
    );
    assert!(env.docker(&["unpause", &env.name]).status.success());
    env.wait_status(Duration::from_secs(10), "the container running", |s| {
        s["container"]["state"] == "running"
    });

    // A registration builderd must not override: degraded, with the reason.
    say_substitutes_false(&env);
    let o = env.ctl(&["status"]);
    insta::assert_snapshot!("status_degraded", redact(&env, &text(&o)));
    std::fs::write(env.path("etc/nix/nix.conf"), "").unwrap();
    env.wait_status(Duration::from_secs(10), "up", |s| s["state"] == "up");

    env.ctl_ok(&["down"]);
    let o = env.ctl(&["status"]);
    insta::assert_snapshot!("status_down", redact(&env, &text(&o)));

    // An engine that is not there.
    let gone = Env::new("docker_host = \"unix:///nonexistent/docker.sock\"");
    let o = gone.ctl(&["up"]);
    assert_eq!(o.status.code(), Some(1));
    insta::assert_snapshot!("up_without_docker", redact(&gone, &text(&o)));
    let o = gone.ctl(&["status"]);
    insta::assert_snapshot!("status_waiting_for_docker", redact(&gone, &text(&o)));
    let st = gone.status();
    assert_eq!(st["state"], "waiting-for-docker");
    let o = gone.doctor(&[]);
    assert_eq!(o.status.code(), Some(4));
    let out = text(&o);
    assert!(
        verdict(&out, "docker")
            .starts_with("FAIL  docker     not reachable at unix:///nonexistent/docker.sock"),
        "{out}"
    );
}

/// The line of doctor's output for check `name`, e.g. `FAIL  port       …`.
fn verdict<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.get(6..)
                .is_some_and(|r| r.starts_with(&format!("{name} ")))
        })
        .unwrap_or_else(|| panic!("no `{name}` line in:\n{out}"))
}

#[test]
fn doctor_passes_and_each_failure_prints_its_fix() {
    if skip_docker() {
        return;
    }
    let _g = settings().bind_to_scope();
    let env = Env::new("");
    env.up();
    let o = env.doctor(&["--build-test"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.lines().all(|l| l.starts_with("PASS")), "{out}");
    assert!(verdict(&out, "sandbox").contains("ran sandboxed"), "{out}");
    assert!(
        verdict(&out, "build").contains("x86_64-linux build (native) ran in this builder"),
        "{out}"
    );
    insta::assert_snapshot!("doctor_ok", redact(&env, &out));

    // nix.conf says false; the invoking user's own nix.conf says true, which the nix-daemon
    // never reads.
    say_substitutes_false(&env);
    let user_conf = env.path("home/.config/nix/nix.conf");
    std::fs::create_dir_all(user_conf.parent().unwrap()).unwrap();
    std::fs::write(&user_conf, "builders-use-substitutes = true\n").unwrap();
    for vars in [
        vec![("XDG_CONFIG_HOME", env.path("home/.config"))],
        vec![("NIX_USER_CONF_FILES", user_conf.clone())],
    ] {
        let vars: Vec<(&str, Option<&str>)> = vars
            .iter()
            .map(|(k, v)| (*k, Some(v.to_str().unwrap())))
            .collect();
        let o = env.ctl_env(&["doctor"], &vars);
        assert_eq!(o.status.code(), Some(4));
        let out = text(&o);
        assert!(
            verdict(&out, "substitute")
                .starts_with("FAIL  substitute builders-use-substitutes is false"),
            "{vars:?}: {out}"
        );
    }
    let o = env.doctor(&[]);
    assert_eq!(o.status.code(), Some(4));
    let out = text(&o);
    assert!(out.contains("FAIL  substitute"), "{out}");
    insta::assert_snapshot!("doctor_substitutes_false", redact(&env, &out));

    // nix.conf is nix-darwin's (put in place by rename, as nix-darwin's activation does).
    let link = env.path("etc/nix/.nix.conf.link");
    std::os::unix::fs::symlink(
        "/nix/store/00000000000000000000000000000000-nix.conf",
        &link,
    )
    .unwrap();
    std::fs::rename(&link, env.path("etc/nix/nix.conf")).unwrap();
    env.wait_status(
        Duration::from_secs(10),
        "nix.conf seen as nix-darwin's",
        |s| {
            s["registrations"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["kind"] == "nix.conf" && r["state"] == "owned-by-nix-darwin")
        },
    );
    let o = env.doctor(&[]);
    assert_eq!(o.status.code(), Some(4));
    let out = text(&o);
    assert!(out.contains("FAIL  nix.conf"), "{out}");
    assert!(
        out.contains("nix.settings.builders-use-substitutes = true"),
        "{out}"
    );
    insta::assert_snapshot!("doctor_nix_darwin", redact(&env, &out));
    std::fs::remove_file(env.path("etc/nix/nix.conf")).unwrap();
    env.wait_status(Duration::from_secs(10), "up again", |s| s["state"] == "up");

    // root's plain ssh reads root's real home, where this environment wrote nothing.
    let o = env.ctl(&["doctor"]);
    assert_eq!(o.status.code(), Some(4));
    let out = text(&o);
    let root_cfg = builderd_tests::root_home().join(".ssh/config");
    assert!(
        verdict(&out, "root-ssh").starts_with(&format!(
            "FAIL  root-ssh   root's `ssh {}` cannot resolve the alias: {}",
            env.name,
            root_cfg.display()
        )),
        "{out}"
    );

    // A public key that is not the private key's.
    keygen(&env.path("other"), "ed25519");
    let good = std::fs::read(env.path("home/.ssh/id_ed25519.pub")).unwrap();
    std::fs::copy(env.path("other.pub"), env.path("home/.ssh/id_ed25519.pub")).unwrap();
    let o = env.doctor(&[]);
    assert_eq!(o.status.code(), Some(4));
    let out = text(&o);
    assert!(out.contains("FAIL  keys"), "{out}");
    insta::assert_snapshot!("doctor_wrong_key", redact(&env, &out));
    std::fs::write(env.path("home/.ssh/id_ed25519.pub"), good).unwrap();

    // The engine publishes the builder on one port; the edited config names another, which
    // another process holds.
    let thief = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = thief.local_addr().unwrap().port();
    let cfg_text = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        cfg_text.replace(
            &format!("port = {}\n", env.port),
            &format!("port = {other}\n"),
        ),
    )
    .unwrap();
    let o = env.doctor(&[]);
    assert_eq!(o.status.code(), Some(4));
    let out = text(&o);
    assert!(
        verdict(&out, "port").starts_with(&format!(
            "FAIL  port       the engine publishes the builder on 127.0.0.1:{}, but {} says port {other} (taken by pid {}",
            env.port,
            env.config.display(),
            std::process::id()
        )),
        "{out}"
    );
    std::fs::write(&env.config, cfg_text).unwrap();
    drop(thief);

    // A stopped container, with no daemon to start it again.
    env.ctl_ok(&["shutdown"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.path("state/builderd.sock").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(env.docker(&["stop", "-t", "1", &env.name]).status.success());
    let o = env.doctor(&[]);
    assert_eq!(o.status.code(), Some(4));
    let out = text(&o);
    assert!(
        out.contains("FAIL  builder    container") && out.contains("exited"),
        "{out}"
    );
    insta::assert_snapshot!("doctor_stopped_container", redact(&env, &out));

    // After `down`: no stale facts about the removed container, no failure `up` would fix;
    // another process holds the port.
    env.up();
    env.ctl_ok(&["down"]);
    let thief = TcpListener::bind(("127.0.0.1", env.port)).unwrap();
    let o = env.doctor(&[]);
    assert_eq!(o.status.code(), Some(4));
    let out = text(&o);
    assert!(
        out.contains(&format!("is taken by pid {}", std::process::id())),
        "{out}"
    );
    assert!(!out.contains(" disk "), "{out}");
    assert!(verdict(&out, "substitute").starts_with("WARN"), "{out}");
    insta::assert_snapshot!("doctor_port_taken", redact(&env, &out));
    drop(thief);
}

#[test]
fn doctor_fails_a_builder_that_builds_unsandboxed() {
    if skip_docker() {
        return;
    }
    let env = Env::new("[builder]\nprivileged = false\nsandbox = false\nsubstituters = \"\"\n");
    env.up();
    let o = env.doctor(&[]);
    assert_eq!(o.status.code(), Some(4));
    let out = text(&o);
    let line = verdict(&out, "sandbox");
    assert!(
        line.starts_with("FAIL  sandbox    a build in the builder ran without the sandbox (it saw: notpid1 usr-present dir=/tmp/nix-build-"),
        "{out}"
    );
}

#[test]
fn doctor_on_demand_knows_the_relay_and_a_sleeping_builder() {
    if skip_docker() {
        return;
    }
    let env = Env::new("on_demand = true\nidle_stop = 2\n");
    env.up();
    env.wait_status(Duration::from_secs(30), "sleeping", |s| {
        s["state"] == "sleeping"
    });
    let o = env.doctor(&[]);
    let out = text(&o);
    assert!(
        verdict(&out, "builder").starts_with("PASS  builder    asleep on demand"),
        "{out}"
    );
    assert!(
        verdict(&out, "port").starts_with(&format!(
            "PASS  port       127.0.0.1:{} is builderd's relay",
            env.port
        )),
        "{out}"
    );
    // A build through builderd's line wakes it.
    let o = env.doctor(&["--build-test"]);
    let out = text(&o);
    assert!(
        verdict(&out, "build").starts_with("PASS  build      a tiny x86_64-linux build"),
        "{out}"
    );
}

#[test]
fn doctor_checks_the_files_and_the_line_themselves() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    env.up();
    // No daemon to put things back; the container keeps running.
    env.ctl_ok(&["shutdown"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.path("state/builderd.sock").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }

    // Field 8 names another key, while a shared ssh connection to the builder is open.
    let root_cfg = env.path("root/.ssh/config");
    let root_cfg = root_cfg.to_str().unwrap();
    let o = env.ssh(&["-F", root_cfg, &env.name], "true");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new("ssh")
        .args(["-F", root_cfg, "-O", "check", &env.name])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "no master is open: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    keygen(&env.path("stranger"), "ed25519");
    let stranger = std::fs::read_to_string(env.path("stranger.pub")).unwrap();
    let stranger = stranger
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let machines = env.path("etc/nix/machines");
    let text_before = std::fs::read_to_string(&machines).unwrap();
    let line = text_before
        .lines()
        .find(|l| l.starts_with("ssh-ng://"))
        .unwrap();
    let field8 = line.split(' ').nth(7).unwrap();
    let ours = env.host_key_line();
    assert!(!field8.is_empty());
    std::fs::write(
        &machines,
        text_before.replace(field8, &builderd_tests::b64(&format!("{stranger}\n"))),
    )
    .unwrap();
    assert_ne!(stranger, ours);
    let o = env.doctor(&["--build-test"]);
    assert_eq!(o.status.code(), Some(4));
    let out = text(&o);
    assert!(
        verdict(&out, "nix-uri").starts_with(
            "FAIL  nix-uri    field 8 of the machines line is not the builder's host key"
        ),
        "{out}"
    );
    assert!(
        verdict(&out, "build").starts_with("FAIL  build      x86_64-linux: the build failed"),
        "{out}"
    );
    std::fs::write(&machines, &text_before).unwrap();

    // No nix on PATH.
    let bin = env.path("bin-without-nix");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["ssh", "docker", "sh"] {
        let real = String::from_utf8(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        std::os::unix::fs::symlink(real.trim(), bin.join(tool)).unwrap();
    }
    let o = env.ctl_env(&["doctor"], &[("PATH", Some(bin.to_str().unwrap()))]);
    assert_eq!(o.status.code(), Some(4));
    let out = text(&o);
    assert!(
        verdict(&out, "nix-uri").starts_with("FAIL  nix-uri    no `nix`"),
        "{out}"
    );

    // nix.conf is a directory; the machines file is gone.
    std::fs::remove_file(env.path("etc/nix/nix.conf")).unwrap();
    std::fs::create_dir(env.path("etc/nix/nix.conf")).unwrap();
    std::fs::remove_file(&machines).unwrap();
    let o = env.doctor(&[]);
    assert_eq!(o.status.code(), Some(4));
    let out = text(&o);
    assert!(
        verdict(&out, "nix.conf").starts_with(&format!(
            "FAIL  nix.conf   {} is a directory",
            env.path("etc/nix/nix.conf").display()
        )),
        "{out}"
    );
    assert!(
        verdict(&out, "machines").starts_with(&format!(
            "FAIL  machines   {} does not exist",
            machines.display()
        )),
        "{out}"
    );
}

/// Runs `cmd` in a new detached tmux session of `height` lines, 120 columns wide.
fn tmux_session(session: &str, height: &str, cmd: &str) {
    tmux(&[
        "new-session",
        "-d",
        "-s",
        session,
        "-x",
        "120",
        "-y",
        height,
        cmd,
    ]);
}

fn tmux(args: &[&str]) -> String {
    let o = Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux runs (tests/run installs it)");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_real_terminal_shows_progress_and_status_watch() {
    if skip_docker() {
        return;
    }
    // A context of its own, with a slow step, so that the image build is there to be seen.
    let nonce = format!("{:?}", std::time::SystemTime::now());
    let ctx = builderd_tests::context_with(&format!(
        "RUN echo '{nonce}' > /etc/builderd-test-nonce && sleep 3"
    ));
    let env = Env::new(&format!("[image]\ncontext = \"{}\"", ctx.path().display()));
    let session = env.name.clone();
    let ctl = builderd_tests::bin_dir().join("builderctl");
    let cmd = format!(
        "{} --config {} up; sleep 60",
        ctl.display(),
        env.config.display()
    );
    tmux_session(&session, "20", &cmd);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut saw_progress = String::new();
    let mut done = String::new();
    while Instant::now() < deadline {
        let screen = tmux(&["capture-pane", "-p", "-t", &session]);
        if screen.contains("image [") && saw_progress.is_empty() {
            saw_progress = screen.clone();
        }
        if screen.contains("the builder is up") {
            done = screen;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !saw_progress.is_empty(),
        "no progress seen; last screen:\n{done}"
    );
    let step = regex::Regex::new(r"image \[\d+/\d+\]").unwrap();
    assert!(step.is_match(&saw_progress), "{saw_progress}");
    assert!(!done.is_empty(), "up did not finish in the terminal");
    // The spinner is cleared: the finished screen has the result, not the bar.
    assert!(!done.contains("waiting for sshd"), "{done}");
    tmux(&["kill-session", "-t", &session]);

    // The daemon that `up` started in that terminal outlives it.
    env.ctl_ok(&["status"]);
    let session = format!("{session}-watch");
    let cmd = format!(
        "{} --config {} status --watch",
        ctl.display(),
        env.config.display()
    );
    tmux_session(&session, "30", &cmd);
    let mut screens = Vec::new();
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && screens.len() < 2 {
        let s = tmux(&["capture-pane", "-p", "-t", &session]);
        if s.contains("refreshing every second") && screens.last() != Some(&s) {
            screens.push(s.clone());
        }
        last = s;
        std::thread::sleep(Duration::from_millis(300));
    }
    tmux(&["kill-session", "-t", &session]);
    assert!(
        screens.len() >= 2,
        "status --watch did not refresh; last screen:\n{last}\ndaemon log:\n{}",
        env.daemon_log()
    );
    assert!(screens[0].contains("state  up"), "{}", screens[0]);
}

#[test]
fn help_completions_and_exit_codes() {
    let env = Env::new("");
    for cmd in [
        "up",
        "down",
        "status",
        "check",
        "gc",
        "shutdown",
        "ssh",
        "logs",
        "install",
        "uninstall",
        "doctor",
        "completions",
    ] {
        let o = env.ctl(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd} --help");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("Example:"),
            "{cmd} --help has no example"
        );
    }
    for shell in ["bash", "zsh", "fish"] {
        let o = env.ctl(&["completions", shell]);
        assert!(o.status.success());
        assert!(String::from_utf8_lossy(&o.stdout).contains("builderctl"));
    }
    // usage
    assert_eq!(env.ctl(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        env.ctl(&["status", "--json", "--watch"]).status.code(),
        Some(2)
    );
    // daemon unreachable
    let o = env.ctl(&["down"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Is the daemon running?"));
    // a broken config
    std::fs::write(&env.config, "port = \"many\"\n").unwrap();
    let o = env.ctl(&["status"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 1") && err.contains("port"), "{err}");
}
