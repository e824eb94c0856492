//! Housekeeping and the everyday commands: gc, logs, ssh, and the machines line taken out while
//! the builder is unhealthy and put back when it recovers.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use builderd_tests::{Env, bin_dir, skip_docker};

#[test]
fn gc_logs_and_ssh() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    env.up();
    env.nix_build(&env.path("root/.ssh/config"), "garbage");
    let probes = || {
        let o = env.docker(&[
            "exec",
            &env.name,
            "sh",
            "-c",
            "ls -d /nix/store/*-builderd-probe 2>/dev/null || true",
        ]);
        String::from_utf8_lossy(&o.stdout).lines().count()
    };
    assert!(probes() > 0, "the build left nothing to collect");
    let out = env.ctl_ok(&["gc"]);
    assert!(out.contains("store paths deleted"), "{out}");
    assert_eq!(probes(), 0, "gc ran, yet the garbage stays: {out}");

    // A collector that fails makes gc fail, with its words.
    let roots = "/nix/var/nix/gcroots";
    let moved = env.docker(&[
        "exec",
        &env.name,
        "sh",
        "-c",
        &format!("mv {roots} {roots}.away && touch {roots}"),
    ]);
    assert!(moved.status.success());
    let o = env.ctl(&["gc"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("gcroots"), "{err}");
    let back = env.docker(&[
        "exec",
        &env.name,
        "sh",
        "-c",
        &format!("rm {roots} && mv {roots}.away {roots}"),
    ]);
    assert!(back.status.success());
    let st = env.status();
    assert!(st["builder"]["store_bytes"].as_u64().is_some(), "{st:#}");
    assert!(st["builder"]["disk_free_bytes"].as_u64().unwrap() > 0);

    let out = env.ctl_ok(&["logs"]);
    assert!(out.contains("builderd is serving"), "{out}");
    let out = env.ctl_ok(&["logs", "--container"]);
    assert!(out.contains("Server listening"), "{out}");

    let o = Command::new(bin_dir().join("builderctl"))
        .arg("--config")
        .arg(&env.config)
        .args(["ssh", "--", "uname", "-n"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "nix-builder");
}

#[test]
fn an_unhealthy_builder_leaves_the_machines_file_until_it_recovers() {
    if skip_docker() {
        return;
    }
    let env = Env::new("health_failures_before_restart = 1000");
    std::fs::write(
        &env.config,
        env.config_text().replace(
            "[registration]\n",
            "[registration]\nunlist_unhealthy_after = 1\n",
        ),
    )
    .unwrap();
    env.up();
    let machines = env.path("etc/nix/machines");
    assert!(
        std::fs::read_to_string(&machines)
            .unwrap()
            .contains("ssh-ng://")
    );

    // The builder stops taking the key: health checks fail, the container keeps running.
    assert!(
        env.docker(&["exec", &env.name, "rm", "/root/.ssh/authorized_keys"])
            .status
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&machines)
        .unwrap_or_default()
        .contains("ssh-ng://")
    {
        assert!(
            Instant::now() < deadline,
            "the machines line stayed while unhealthy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = env.status();
    assert_eq!(st["healthy"], false);
    assert_eq!(st["state"], "degraded");

    // Nix fails fast instead of hanging on SSH.
    let t = Instant::now();
    let o = Command::new("nix-build")
        .args(["-E", "derivation { name = \"x\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [\"-c\" \"echo > $out\"]; nonce = builtins.currentTime; }"])
        .args(["--max-jobs", "0", "--no-out-link", "--option", "substituters", "", "--option", "build-users-group", ""])
        .arg("--builders")
        .arg(format!("@{}", machines.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "nix hung for {:?}",
        t.elapsed()
    );

    // Healthy again: the line is back.
    assert!(
        env.docker(&[
            "exec",
            &env.name,
            "install",
            "-m",
            "600",
            "/var/lib/nix-builder/host.pub",
            "/root/.ssh/authorized_keys"
        ])
        .status
        .success()
    );
    env.wait_status(Duration::from_secs(30), "healthy again", |s| {
        s["state"] == "up"
    });
    assert!(
        std::fs::read_to_string(&machines)
            .unwrap()
            .contains("ssh-ng://")
    );
    env.nix_build(&env.path("root/.ssh/config"), "relisted");
}

#[test]
fn failing_health_checks_restart_the_container() {
    if skip_docker() {
        return;
    }
    let env = Env::new("health_failures_before_restart = 2");
    env.up();
    let started = |env: &Env| {
        let o = env.docker(&["inspect", "-f", "{{.State.StartedAt}}", &env.name]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let before = started(&env);
    // sshd stops taking the key; the container itself keeps running.
    assert!(
        env.docker(&["exec", &env.name, "rm", "/root/.ssh/authorized_keys"])
            .status
            .success()
    );
    env.wait_status(Duration::from_secs(30), "a failed health check", |s| {
        s["healthy"] == false
    });
    // Two failures in a row restart it; its entrypoint puts the key back, and it is healthy.
    env.wait_status(Duration::from_secs(60), "healthy after the restart", |s| {
        s["state"] == "up" && s["healthy"] == true
    });
    assert_ne!(started(&env), before, "the container was restarted");
    let log = env.daemon_log();
    assert!(
        log.contains("restarting the container after 2 failed health checks"),
        "{log}"
    );
}
