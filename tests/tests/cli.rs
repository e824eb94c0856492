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
}

#[test]
fn doctor_passes_and_each_failure_prints_its_fix() {
    if skip_docker() {
        return;
    }
    let _g = settings().bind_to_scope();
    let env = Env::new("");
    env.up();
    let o = env.ctl(&["doctor", "--build-test"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    insta::assert_snapshot!("doctor_ok", redact(&env, &text(&o)));

    // nix.conf says false.
    say_substitutes_false(&env);
    let o = env.ctl(&["doctor"]);
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
    let o = env.ctl(&["doctor"]);
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

    // A public key that is not the private key's.
    keygen(&env.path("other"), "ed25519");
    let good = std::fs::read(env.path("home/.ssh/id_ed25519.pub")).unwrap();
    std::fs::copy(env.path("other.pub"), env.path("home/.ssh/id_ed25519.pub")).unwrap();
    let o = env.ctl(&["doctor"]);
    assert_eq!(o.status.code(), Some(4));
    let out = text(&o);
    assert!(out.contains("FAIL  keys"), "{out}");
    insta::assert_snapshot!("doctor_wrong_key", redact(&env, &out));
    std::fs::write(env.path("home/.ssh/id_ed25519.pub"), good).unwrap();

    // A stopped container, with no daemon to start it again.
    env.ctl_ok(&["shutdown"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.path("state/builderd.sock").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(env.docker(&["stop", "-t", "1", &env.name]).status.success());
    let o = env.ctl(&["doctor"]);
    assert_eq!(o.status.code(), Some(4));
    let out = text(&o);
    assert!(
        out.contains("FAIL  builder    container") && out.contains("exited"),
        "{out}"
    );
    insta::assert_snapshot!("doctor_stopped_container", redact(&env, &out));

    // Another process holds the port while the builder is down.
    env.up();
    env.ctl_ok(&["down"]);
    let thief = TcpListener::bind(("127.0.0.1", env.port)).unwrap();
    let o = env.ctl(&["doctor"]);
    assert_eq!(o.status.code(), Some(4));
    let out = text(&o);
    assert!(
        out.contains(&format!("is taken by pid {}", std::process::id())),
        "{out}"
    );
    insta::assert_snapshot!("doctor_port_taken", redact(&env, &out));
    drop(thief);
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
