//! The daemon's log tells what happened: every lifecycle step once, never key material.

use builderd_tests::{Env, skip_docker};

#[test]
fn the_log_tells_the_story_of_an_up_and_a_recovery() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    env.up();
    let log = env.ctl_ok(&["logs"]);
    for step in [
        "builderd is serving",
        "created and started the container",
        "the builder is healthy",
        "wrote builderd's entries file=",
    ] {
        assert!(log.contains(step), "no `{step}` in the log:\n{log}");
    }
    // Every registration file is named.
    for f in [
        "etc/nix/machines",
        "home/.ssh/known_hosts",
        "root/.ssh/config",
    ] {
        let p = env.path(f).display().to_string();
        assert!(log.contains(&p), "{p} is not named in the log:\n{log}");
    }
    // A recovery says what happened and that the builder is back.
    let seq = env.status()["last_health"]["seq"].as_u64().unwrap_or(0);
    env.docker(&["kill", &env.name]);
    env.wait_status(std::time::Duration::from_secs(60), "healthy again", |s| {
        s["healthy"] == true && s["last_health"]["seq"].as_u64().unwrap_or(0) > seq
    });
    let log = env.ctl_ok(&["logs"]);
    assert!(log.contains("reconciling why=\"container-"), "{log}");
    assert!(log.contains("started the container"), "{log}");
    // No key material, public or private.
    let public = std::fs::read_to_string(env.path("home/.ssh/id_ed25519.pub")).unwrap();
    let blob = public.split_whitespace().nth(1).unwrap();
    assert!(!log.contains(blob), "the public key is in the log");
    assert!(!log.contains(&env.host_key_line().split(' ').nth(1).unwrap().to_string()));
    assert!(!log.contains("PRIVATE KEY"));
    // Each step once: an up with nothing to do adds no lifecycle lines.
    let lines = log.lines().count();
    env.up();
    let again = env.ctl_ok(&["logs"]);
    assert_eq!(
        again
            .lines()
            .filter(|l| l.contains("created and started"))
            .count(),
        log.lines()
            .filter(|l| l.contains("created and started"))
            .count()
    );
    assert!(again.lines().count() <= lines + 1, "{again}");
}
