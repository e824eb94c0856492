//! What a damaged state file, a socket path too long for the OS and a daemon that dies mid-`up`
//! do: each is told as it is, and none of them costs the builder.

use std::time::Duration;

use builderd_tests::{Env, skip_docker};

#[test]
fn a_damaged_state_file_never_removes_the_builder() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    env.up();
    let id = env.status()["container"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for bad in ["", "{\"desired\": \"u", "\u{0}garbage"] {
        env.kill_daemon();
        std::fs::write(env.path("state/state.json"), bad).unwrap();
        env.start_daemon();
        let st = env.wait_status(Duration::from_secs(60), "the builder back up", |s| {
            s["state"] == "up"
        });
        assert_eq!(st["container"]["id"], id.as_str(), "the same container");
        assert_eq!(st["desired"], "up");
        let problem = st["state_file_problem"].as_str().unwrap();
        assert!(
            problem.contains("state.json could not be read"),
            "{problem}"
        );
        assert!(problem.contains("kept as"), "{problem}");
        let kept: Vec<_> = std::fs::read_dir(env.path("state"))
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("state.json.corrupt-")
            })
            .collect();
        assert!(
            kept.iter()
                .any(|e| std::fs::read_to_string(e.path()).unwrap() == bad),
            "{bad:?} was not kept"
        );
        for k in kept {
            std::fs::remove_file(k.path()).unwrap();
        }
        assert!(env.daemon_log().contains("could not be read"));
        let human = env.ctl_ok(&["status"]);
        assert!(human.contains("state file"), "{human}");
        assert!(
            std::fs::read_to_string(env.path("etc/nix/machines"))
                .unwrap()
                .contains(&env.name)
        );
    }
    env.ctl_ok(&["down"]);
}

#[test]
fn a_socket_path_too_long_is_a_config_error() {
    let long = format!("/tmp/{}/builderd.sock", "s".repeat(110));
    let env = Env::new("");
    // The harness's `socket`, replaced.
    let text = env.config_text().replace(
        &format!("socket = \"{}\"", env.path("state/builderd.sock").display()),
        &format!("socket = \"{long}\""),
    );
    std::fs::write(&env.config, text).unwrap();
    for args in [&["status"][..], &["up"], &["down"]] {
        let o = env.ctl(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("line 5: `socket` is 129 bytes long"), "{err}");
        assert!(!err.contains("no builderd answers"), "{err}");
    }
}

#[test]
fn a_daemon_killed_during_up_is_reported_as_such() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    // The image first, so that the kill lands while the container starts.
    env.up();
    env.ctl_ok(&["down"]);
    let child = std::process::Command::new(builderd_tests::bin_dir().join("builderctl"))
        .arg("--config")
        .arg(&env.config)
        .arg("up")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while env.container_state().is_none() {
        assert!(std::time::Instant::now() < deadline, "no container");
        std::thread::sleep(Duration::from_millis(2));
    }
    env.kill_daemon();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("builderd stopped before it answered"), "{err}");
    assert!(!err.contains("protocol"), "{err}");
    // And `up` finishes it.
    env.up();
}

#[test]
fn a_state_dir_with_a_space_and_a_long_ssh_config_dir_work() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    let spaced = env.path("Library/Application Support/builderd");
    std::fs::create_dir_all(&spaced).unwrap();
    // The harness finds its daemon through `state`.
    std::os::unix::fs::symlink(&spaced, env.path("state")).unwrap();
    let long_dir = env.path(&format!("root/{}", "deep/".repeat(12)));
    std::fs::create_dir_all(&long_dir).unwrap();
    let long_cfg = long_dir.join("config");
    let text = env
        .config_text()
        .replace(
            &format!("\"{}/", env.path("state").display()),
            &format!("\"{}/", spaced.display()),
        )
        .replace(
            &format!("state_dir = \"{}\"", env.path("state").display()),
            &format!("state_dir = \"{}\"", spaced.display()),
        )
        .replace(
            &env.path("root/.ssh/config").display().to_string(),
            &long_cfg.display().to_string(),
        );
    assert!(text.contains("Application Support"), "{text}");
    std::fs::write(&env.config, text).unwrap();
    env.up();
    let o = env.ctl(&["ssh", "--", "echo", "through-builderctl"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("through-builderctl"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The alias in an ssh_config whose directory is too deep for a control socket.
    let o = env.ssh(
        &["-F", long_cfg.to_str().unwrap(), &env.name],
        "echo through-alias",
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("through-alias"),
        "{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(&long_cfg).unwrap()
    );
    env.ctl_ok(&["down"]);
}
