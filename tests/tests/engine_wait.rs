//! A first-time Mac user's engine is not running yet: Docker Desktop not started, Colima
//! stopped, or builderd started by launchd at boot before Docker Desktop. `up` says which engine
//! it looked for and how to start it, `up --wait` waits for it, and the daemon waits too, never
//! exiting, finding the engine again at each attempt (a context switched while it waits).
//! The engine "comes" as a Unix-socket proxy to the real one, made only once the wait began.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use builderd_tests::*;
use sha2::Digest as _;

fn healthy(s: &serde_json::Value) -> bool {
    s["state"] == "up" && s["healthy"] == true
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Starts `builderd` as launchd would at boot: no client, these variables set.
fn start_daemon_with(env: &Env, vars: &[(&str, &Path)]) -> Child {
    std::fs::create_dir_all(env.path("state/logs")).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.path("state/logs/builderd.log"))
        .unwrap();
    let mut cmd = Command::new(bin_dir().join("builderd"));
    cmd.arg("--config")
        .arg(&env.config)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_CONTEXT")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.spawn().expect("builderd starts")
}

fn still_running(child: &mut Child, env: &Env) {
    assert!(
        child.try_wait().unwrap().is_none(),
        "builderd exited while it waited for the engine:\n{}",
        env.daemon_log()
    );
}

#[test]
fn up_and_the_daemon_wait_for_an_engine_that_is_not_there_yet() {
    if skip_docker() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("docker.sock");
    let host = format!("unix://{}", sock.display());
    let env = Env::new("");
    let vars = [("DOCKER_HOST", Some(host.as_str()))];
    let _guard = ImageBuildLock::take_if_needed(&env.config);

    // Without --wait: which engine, from where, how to start it, and that --wait waits.
    let o = env.ctl_env(&["up"], &vars);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    for want in [
        format!("cannot reach the Docker engine at {host} (from DOCKER_HOST)"),
        "To fix: start the engine".to_string(),
        "`builderctl up --wait`".to_string(),
    ] {
        assert!(out.contains(&want), "no {want:?} in:\n{out}");
    }
    assert_eq!(env.status()["state"], "waiting-for-docker");

    // --wait: the engine's socket appears only after the command began waiting.
    let waiting = {
        let env_vars: Vec<(String, Option<String>)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect();
        let config = env.config.clone();
        std::thread::spawn(move || {
            Command::new(bin_dir().join("builderctl"))
                .arg("--config")
                .arg(&config)
                .args(["up", "--wait"])
                .envs(env_vars.iter().map(|(k, v)| (k, v.as_deref().unwrap())))
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .output()
                .expect("builderctl runs")
        })
    };
    std::thread::sleep(Duration::from_secs(5));
    assert!(!waiting.is_finished(), "up --wait did not wait");
    let proxy = DockerProxy::new(sock.clone(), true);
    let o = waiting.join().unwrap();
    let out = text(&o);
    assert!(o.status.success(), "up --wait failed:\n{out}");
    assert!(
        out.contains("waiting for the Docker engine: cannot reach the Docker engine at")
            && out.contains("still waiting for the Docker engine"),
        "no progress while waiting:\n{out}"
    );
    assert!(healthy(&env.status()));

    // At boot: the engine's socket does not exist yet when builderd starts.
    env.kill_daemon();
    proxy.cut();
    assert!(!sock.exists());
    let mut child = start_daemon_with(&env, &[("DOCKER_HOST", &sock_host(&sock))]);
    env.wait_status(Duration::from_secs(30), "waiting-for-docker", |s| {
        s["state"] == "waiting-for-docker"
    });
    // Several retries' worth of waiting, and it is still there.
    std::thread::sleep(Duration::from_secs(6));
    still_running(&mut child, &env);
    proxy.restore();
    env.wait_status(
        Duration::from_secs(90),
        "healthy once the engine came",
        healthy,
    );
    still_running(&mut child, &env);
    let pid = std::fs::read_to_string(env.path("state/builderd.pid")).unwrap();
    assert_eq!(pid.trim(), child.id().to_string());

    // The engine is found again at each attempt: a docker context switched while builderd
    // waits (the user ran `docker context use`), with no DOCKER_HOST.
    env.kill_daemon();
    let _ = child.wait();
    proxy.cut();
    let home = env.path("home");
    let context = |name: &str, socket: &Path| {
        // Docker names a context's directory by the SHA-256 of its name.
        let digest = builderd_docker::hex(&sha2::Sha256::digest(name.as_bytes()));
        let meta = home.join(".docker/contexts/meta").join(digest);
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(
            meta.join("meta.json"),
            format!(
                r#"{{"Name":"{name}","Endpoints":{{"docker":{{"Host":"unix://{}"}}}}}}"#,
                socket.display()
            ),
        )
        .unwrap();
        std::fs::write(
            home.join(".docker/config.json"),
            format!(r#"{{"currentContext":"{name}"}}"#),
        )
        .unwrap();
    };
    context("stopped", &dir.path().join("never.sock"));
    let mut child = start_daemon_with(&env, &[("HOME", &home)]);
    let st = env.wait_status(Duration::from_secs(30), "waiting-for-docker", |s| {
        s["state"] == "waiting-for-docker"
    });
    assert!(
        st["docker_host"]
            .as_str()
            .unwrap()
            .contains("docker context stopped"),
        "{st:#}"
    );
    proxy.restore();
    context("running", &sock);
    let st = env.wait_status(
        Duration::from_secs(90),
        "healthy in the new context",
        healthy,
    );
    assert!(
        st["docker_host"]
            .as_str()
            .unwrap()
            .contains("docker context running"),
        "{st:#}"
    );
    still_running(&mut child, &env);
    let log = env.daemon_log();
    assert!(log.contains("the Docker engine is now found here"), "{log}");

    env.ctl_ok(&["down"]);
    env.ctl_ok(&["shutdown"]);
    let _ = child.wait();
}

fn sock_host(sock: &Path) -> std::path::PathBuf {
    format!("unix://{}", sock.display()).into()
}
