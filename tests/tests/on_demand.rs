//! On demand: builderd holds the builder's port, stops the container after an idle spell, and
//! wakes it at the next connection, holding that connection until sshd answers, so that a build
//! arriving while it sleeps never fails.

use std::time::Duration;

use builderd_tests::{Env, skip_docker};

fn sleeping(env: &Env) -> serde_json::Value {
    env.wait_status(Duration::from_secs(30), "the builder asleep", |s| {
        s["state"] == "sleeping"
    })
}

#[test]
fn an_idle_builder_sleeps_and_a_build_wakes_it() {
    if skip_docker() {
        return;
    }
    let env = Env::new("on_demand = true\nidle_stop = 2\n");
    env.up();
    // builderd itself listens on the port; the container's sshd is published elsewhere.
    let holder = builderd::port::holder(env.port).unwrap_or_default();
    assert!(holder.contains("builderd"), "the port is held by {holder}");
    let machines = std::fs::read_to_string(env.path("etc/nix/machines")).unwrap();

    let st = sleeping(&env);
    assert!(
        st["reason"]
            .as_str()
            .is_some_and(|r| r.contains("next connection")),
        "{st}"
    );
    assert_eq!(env.container_state().as_deref(), Some("exited"));
    // Health checks (every 2 s here) do not wake it, and the registrations stay.
    let seq = st["last_health"]["seq"].as_u64();
    std::thread::sleep(Duration::from_secs(5));
    let st = env.status();
    assert_eq!(st["state"], "sleeping", "{st}");
    assert_eq!(
        st["last_health"]["seq"].as_u64(),
        seq,
        "no health check ran"
    );
    assert_eq!(env.container_state().as_deref(), Some("exited"));
    assert_eq!(
        std::fs::read_to_string(env.path("etc/nix/machines")).unwrap(),
        machines
    );

    // A build through the machines file wakes it; the connection is held, not refused.
    env.nix_build(&env.path("root/.ssh/config"), "woken");
    assert_eq!(env.container_state().as_deref(), Some("running"));
    let st = env.wait_status(Duration::from_secs(10), "up after waking", |s| {
        s["state"] == "up" || s["state"] == "sleeping"
    });
    assert!(st["state"] == "up" || st["state"] == "sleeping", "{st}");

    // Open connections keep it awake (an ssh master the alias shares counts as one); once
    // they close it sleeps again.
    for cfg in ["home/.ssh/config", "root/.ssh/config"] {
        let _ = std::process::Command::new("ssh")
            .arg("-F")
            .arg(env.path(cfg))
            .args(["-O", "exit", &env.name])
            .output();
    }
    sleeping(&env);
    // Several connections at once, all while it sleeps: each gets through.
    let known_hosts = env.path("home/.ssh/known_hosts");
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let kh = known_hosts.clone();
            let port = env.port;
            let key = env.path("home/.ssh/id_ed25519");
            std::thread::spawn(move || {
                std::process::Command::new("ssh")
                    .args([
                        "-F",
                        "/dev/null",
                        "-o",
                        "BatchMode=yes",
                        "-o",
                        "IdentitiesOnly=yes",
                    ])
                    .args(["-o", "StrictHostKeyChecking=yes"])
                    .arg("-o")
                    .arg(format!("UserKnownHostsFile={}", kh.display()))
                    .arg("-i")
                    .arg(&key)
                    .args(["-p", &port.to_string(), "root@localhost"])
                    .arg(format!("echo woken-{i}"))
                    .output()
                    .unwrap()
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let o = h.join().unwrap();
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(&format!("woken-{i}")),
            "connection {i}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // down releases the port and removes everything as usual.
    env.ctl_ok(&["down"]);
    assert!(builderd::port::is_free(env.port), "down released the port");
    assert_eq!(env.container_state(), None);
}

/// On Linux the host routes to the container's own address: the relay connects there, not
/// through Docker's userland proxy on the published port (a copy of every byte the less).
#[test]
fn the_relay_goes_straight_to_the_container_on_linux() {
    if skip_docker() {
        return;
    }
    let env = Env::new("on_demand = true\nidle_stop = 60\n");
    env.up();
    let o = env.docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &env.name,
    ]);
    let ip = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(!ip.is_empty(), "the container has no bridge address");
    // A session held open through the relay, while the host's sockets are listed.
    let mut held = std::process::Command::new("ssh")
        .arg("-F")
        .arg(env.path("home/.ssh/config"))
        .args(["-o", "ControlPath=none", &env.name, "sleep 30"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let to_sshd = format!("{ip}:22");
    let mut seen = String::new();
    for _ in 0..200 {
        let o = std::process::Command::new("ss")
            .args(["-Htnp", "state", "established"])
            .output()
            .unwrap();
        seen = String::from_utf8_lossy(&o.stdout).into_owned();
        if seen
            .lines()
            .any(|l| l.contains(&to_sshd) && l.contains("builderd"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = held.kill();
    let _ = held.wait();
    assert!(
        seen.lines()
            .any(|l| l.contains(&to_sshd) && l.contains("\"builderd\"")),
        "builderd holds no connection to {to_sshd}:\n{seen}"
    );
    env.ctl_ok(&["down"]);
}
