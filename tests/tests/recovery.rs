//! Always there: the builder comes back by itself after a killed or removed container, a
//! reboot, and a Docker outage; a container that keeps dying is not restarted in a hot loop.

use std::process::Command;
use std::time::{Duration, Instant};

use builderd_tests::{DockerProxy, Env, p50, skip_docker};

fn healthy(s: &serde_json::Value) -> bool {
    s["state"] == "up" && s["healthy"] == true
}

/// Up, after a health check that passed and was made after `before` was taken: a later check
/// of the same daemon, or any check of a new one. "healthy" alone can be left over from
/// before a failure.
fn healthy_since(before: serde_json::Value) -> impl Fn(&serde_json::Value) -> bool {
    let seq = |s: &serde_json::Value| s["last_health"]["seq"].as_u64().unwrap_or(0);
    move |s| {
        healthy(s)
            && s["last_health"]["ok"] == true
            && (s["pid"] != before["pid"] || seq(s) > seq(&before))
    }
}

#[test]
fn killed_and_removed_containers_come_back_with_the_same_host_key() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    env.up();
    let fp = env.status()["host_key_fingerprint"].clone();
    let mut kill_times = Vec::new();
    for _ in 0..5 {
        let before = env.status();
        let id_before = before["container"]["id"].clone();
        let t = Instant::now();
        assert!(env.docker(&["kill", &env.name]).status.success());
        // Healthy again, with no command: a new health check after the kill.
        let again = healthy_since(before);
        env.wait_status(Duration::from_secs(30), "healthy after docker kill", |s| {
            again(s)
                && s["container"]["state"] == "running"
                && env.container_state().as_deref() == Some("running")
        });
        kill_times.push(t.elapsed());
        assert_eq!(
            env.status()["container"]["id"],
            id_before,
            "the same container is started again"
        );
    }
    let mut rm_times = Vec::new();
    for _ in 0..5 {
        let before = env.status();
        let t = Instant::now();
        assert!(env.docker(&["rm", "-f", &env.name]).status.success());
        let again = healthy_since(before);
        env.wait_status(Duration::from_secs(30), "healthy after docker rm -f", |s| {
            again(s)
                && s["container"]["state"] == "running"
                && env.container_state().as_deref() == Some("running")
        });
        rm_times.push(t.elapsed());
    }
    eprintln!(
        "docker kill -> healthy p50 {:?}; docker rm -f -> healthy p50 {:?}",
        p50(&mut kill_times),
        p50(&mut rm_times)
    );
    assert_eq!(env.status()["host_key_fingerprint"], fp);
    // Ten times brought back: each one a restart in status.
    let restarts = env.status()["container"]["restarts"].as_u64().unwrap();
    assert!(restarts >= 10, "{restarts} restarts counted");
    let o = env.ssh_pinned(&env.path("root/.ssh/known_hosts"), "echo 123");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Exactly one container of ours.
    assert_eq!(env.containers_of_ours(), 1);
}

#[test]
fn a_reboot_brings_it_back_and_down_stays_down() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    env.up();
    let mut times = Vec::new();
    for _ in 0..5 {
        // The machine goes down: the daemon dies, the container stops.
        let before = env.status();
        env.kill_daemon();
        assert!(env.docker(&["stop", "-t", "1", &env.name]).status.success());
        let t = Instant::now();
        env.start_daemon();
        env.wait_status(
            Duration::from_secs(30),
            "healthy after the reboot",
            healthy_since(before),
        );
        times.push(t.elapsed());
        let o = env.ssh_pinned(&env.path("home/.ssh/known_hosts"), "echo 123");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let before = env.status();
        env.kill_daemon();
        env.start_daemon();
        env.wait_status(Duration::from_secs(30), "healthy", healthy_since(before));
    }
    eprintln!("simulated reboot -> healthy p50 {:?}", p50(&mut times));

    // With the desired state down, a new daemon keeps it down.
    env.ctl_ok(&["down"]);
    env.kill_daemon();
    env.start_daemon();
    std::thread::sleep(Duration::from_secs(2));
    let st = env.status();
    assert_eq!(st["state"], "down");
    assert_eq!(st["desired"], "down");
    assert_eq!(env.container_state(), None);
    assert!(!env.path("etc/nix/machines").exists());
    env.ctl_ok(&["shutdown"]);
}

#[test]
fn a_docker_outage_is_waited_out() {
    if skip_docker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("docker.sock");
    let proxy = DockerProxy::new(sock.clone(), true);
    let env = Env::new(&format!("docker_host = \"unix://{}\"", sock.display()));
    env.up();

    // The engine goes away while the daemon runs, and comes back.
    let mut times = Vec::new();
    for _ in 0..5 {
        proxy.cut();
        env.wait_status(Duration::from_secs(30), "waiting-for-docker", |s| {
            s["state"] == "waiting-for-docker"
        });
        std::thread::sleep(Duration::from_millis(500));
        let before = env.status();
        let t = Instant::now();
        proxy.restore();
        env.wait_status(
            Duration::from_secs(60),
            "healthy after the outage",
            healthy_since(before),
        );
        times.push(t.elapsed());
    }
    eprintln!(
        "proxy restore -> healthy (running daemon) p50 {:?}",
        p50(&mut times)
    );

    // The daemon starts while the engine is away (Docker Desktop comes up after login).
    let mut times = Vec::new();
    for _ in 0..5 {
        let before = env.status();
        env.kill_daemon();
        proxy.cut();
        env.start_daemon();
        env.wait_status(
            Duration::from_secs(30),
            "waiting-for-docker at start",
            |s| s["state"] == "waiting-for-docker",
        );
        let t = Instant::now();
        proxy.restore();
        env.wait_status(
            Duration::from_secs(60),
            "healthy after the engine came",
            healthy_since(before),
        );
        times.push(t.elapsed());
    }
    eprintln!(
        "proxy restore -> healthy (daemon started during the outage) p50 {:?}",
        p50(&mut times)
    );
    // One container, and the wait was logged once per outage, not in a loop.
    assert_eq!(env.containers_of_ours(), 1);
    let log = env.daemon_log();
    let waits = log.matches("waiting for Docker").count();
    assert!((1..=12).contains(&waits), "{waits} wait lines:\n{log}");
}

#[test]
fn a_crash_loop_backs_off_and_is_degraded() {
    if skip_docker() {
        return;
    }
    // An image with the same contract whose entrypoint exits at once.
    let ctx = builderd_tests::context_from_base(
        "ENTRYPOINT [\"/bin/sh\", \"-c\", \"echo crashing on purpose >&2; exit 3\"]",
    );
    let env = Env::new(&format!("[image]\ncontext = \"{}\"", ctx.path().display()));
    let o = env.ctl(&["up"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("crashing on purpose"), "{err}");
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::thread::sleep(Duration::from_secs(20));
    let st = env.wait_status(Duration::from_secs(20), "degraded", |s| {
        s["state"] == "degraded"
    });
    assert!(
        st["reason"]
            .as_str()
            .unwrap()
            .contains("crashing on purpose"),
        "{st:#}"
    );
    let o = Command::new("docker")
        .args([
            "events",
            "--since",
            &since.to_string(),
            "--until",
            &(since + 20).to_string(),
            "--filter",
            &format!("container={}", env.name),
            "--filter",
            "event=start",
        ])
        .output()
        .unwrap();
    let starts = String::from_utf8_lossy(&o.stdout).lines().count();
    eprintln!("container starts in 20 s of a crash loop: {starts}");
    // Backoff 0.5 s, 1 s, 2 s, 4 s, 8 s, … allows about 6 starts in 20 s; a hot loop would make
    // dozens.
    assert!((2..=8).contains(&starts), "{starts} starts in 20 s");
}

#[test]
fn a_vital_task_that_dies_ends_the_daemon_non_zero_and_a_restart_brings_the_builder_back() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    env.up();
    shutdown_and_wait(&env);
    // The supervisor panics (a fault injected in debug builds): the daemon must not go on
    // serving a status nobody updates; it exits non-zero, so that launchd's KeepAlive or
    // systemd's Restart= starts it again.
    let mut faulty = std::process::Command::new(builderd_tests::bin_dir().join("builderd"))
        .arg("--config")
        .arg(&env.config)
        .env("BUILDERD_FAULT", "supervisor")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = faulty.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = faulty.kill();
            panic!("a daemon whose supervisor died is still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut faulty.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("a vital task stopped"), "{err}");
    assert!(err.contains("panicked"), "{err}");
    assert!(
        !env.path("state/builderd.sock").exists(),
        "the socket is removed"
    );
    // What the service manager does next: start it again. The builder is back, healthy.
    let mut daemon = std::process::Command::new(builderd_tests::bin_dir().join("builderd"))
        .arg("--config")
        .arg(&env.config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let seq = 0;
    env.wait_status(Duration::from_secs(60), "healthy after the restart", |s| {
        s["state"] == "up"
            && s["healthy"] == true
            && s["last_health"]["seq"].as_u64().unwrap_or(0) > seq
    });
    env.ctl_ok(&["shutdown"]);
    let _ = daemon.wait();
}

/// `builderctl shutdown`, then waits until that daemon's process is gone.
fn shutdown_and_wait(env: &Env) {
    let pid = std::fs::read_to_string(env.path("state/builderd.pid")).unwrap_or_default();
    env.ctl_ok(&["shutdown"]);
    let proc_dir = std::path::PathBuf::from(format!("/proc/{}", pid.trim()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pid.trim().is_empty() && proc_dir.exists() {
        assert!(Instant::now() < deadline, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}
