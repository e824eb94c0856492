//! The builder sized to what the engine gives it: the machines line's max-jobs and the
//! builder's `max-jobs` and `cores` follow the engine's CPUs (and memory) unless the config
//! sets them, and status shows them. The client's Nix, reading the nix.conf builderd registers,
//! looks again at a build it postponed (every slot busy) after 1 s, not Nix's 5.

use builderd_tests::{Env, skip_docker};

fn engine() -> (u32, u64) {
    let o = std::process::Command::new("docker")
        .args(["info", "-f", "{{.NCPU}} {{.MemTotal}}"])
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&o.stdout);
    let mut w = t.split_whitespace();
    (
        w.next().unwrap().parse().unwrap(),
        w.next().unwrap().parse().unwrap(),
    )
}

fn machines_jobs(env: &Env) -> String {
    let m = std::fs::read_to_string(env.path("etc/nix/machines")).unwrap();
    let line = m.lines().find(|l| l.starts_with("ssh-ng://")).unwrap();
    line.split(' ').nth(3).unwrap().to_string()
}

/// A setting as the host's Nix reads it from the registered nix.conf.
fn client_conf(env: &Env, key: &str) -> String {
    let o = std::process::Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "show-config",
        ])
        .env("NIX_CONF_DIR", env.path("etc/nix"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let prefix = format!("{key} = ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
        .to_string()
}

fn builder_conf(env: &Env, key: &str) -> String {
    let o = env.docker(&["exec", &env.name, "nix", "config", "show", key]);
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn jobs_and_cores_follow_the_engine_unless_set() {
    if skip_docker() {
        return;
    }
    let (cpus, mem) = engine();
    let jobs = cpus.min((mem >> 30) as u32).max(1);
    let env = Env::new("");
    env.up();
    assert_eq!(machines_jobs(&env), jobs.to_string());
    assert_eq!(builder_conf(&env, "max-jobs"), jobs.to_string());
    assert_eq!(builder_conf(&env, "cores"), cpus.to_string());
    assert_eq!(client_conf(&env, "build-poll-interval"), "1");
    let st = env.status();
    assert_eq!(st["sizing"]["engine_cpus"], cpus, "{st:#}");
    assert_eq!(st["sizing"]["max_jobs"], jobs, "{st:#}");
    let text = env.ctl_ok(&["status"]);
    assert!(
        text.contains(&format!(
            "{jobs} at once, {cpus} cores each (engine: {cpus} CPUs"
        )),
        "{text}"
    );

    // Set in the config: as set, on both sides, after `up` applies it.
    let text = env
        .config_text()
        .replace("[builder]\n", "[builder]\nmax_jobs = 3\ncores = 1\n");
    std::fs::write(&env.config, text).unwrap();
    env.up();
    assert_eq!(machines_jobs(&env), "3");
    assert_eq!(builder_conf(&env, "max-jobs"), "3");
    assert_eq!(builder_conf(&env, "cores"), "1");
}
