//! Installing builderd as a service: the launchd plist parsed back by Python's plistlib, the
//! systemd unit checked by `systemd-analyze verify`, `install --print`, and `uninstall --purge`.

use std::collections::BTreeMap;
use std::process::Command;

use builderd_launchd::{Os, Service};
use builderd_tests::{Env, bin_dir, skip_docker};

fn service(env: &Env, system: bool) -> Service {
    let mut vars = BTreeMap::new();
    vars.insert(
        "PATH".to_string(),
        "/usr/local/bin:/usr/bin:/bin".to_string(),
    );
    vars.insert("HOME".to_string(), env.path("home").display().to_string());
    vars.insert(
        "DOCKER_HOST".to_string(),
        "unix:///Users/me/.docker/run/docker.sock".to_string(),
    );
    Service {
        program: bin_dir().join("builderd"),
        config: env.config.clone(),
        log_dir: env.path("state/logs"),
        env: vars,
        system,
        uid: 501,
    }
}

#[test]
fn the_plist_parses_back_with_plistlib() {
    let env = Env::new("");
    let plist = env.path("org.builderd.builderd.plist");
    std::fs::write(&plist, service(&env, true).plist()).unwrap();
    let o = Command::new("python3")
        .arg("-c")
        .arg(
            "import json, plistlib, sys; print(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))",
        )
        .arg(&plist)
        .output()
        .expect("python3 runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(d["Label"], "org.builderd.builderd");
    assert_eq!(
        d["ProgramArguments"][0],
        bin_dir().join("builderd").display().to_string()
    );
    assert_eq!(d["ProgramArguments"][1], "--config");
    assert_eq!(d["ProgramArguments"][2], env.config.display().to_string());
    assert_eq!(d["RunAtLoad"], true);
    assert_eq!(d["KeepAlive"], true);
    assert_eq!(d["ProcessType"], "Background");
    assert_eq!(d["ThrottleInterval"], 10);
    assert!(
        d["StandardOutPath"]
            .as_str()
            .unwrap()
            .starts_with(&env.path("state/logs").display().to_string())
    );
    assert!(d["StandardErrorPath"].as_str().unwrap().ends_with(".log"));
    assert_eq!(
        d["EnvironmentVariables"]["DOCKER_HOST"],
        "unix:///Users/me/.docker/run/docker.sock"
    );
    assert_eq!(
        d["EnvironmentVariables"]["PATH"],
        "/usr/local/bin:/usr/bin:/bin"
    );
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let env = Env::new("");
    for system in [true, false] {
        let unit = env.path("builderd.service");
        std::fs::write(&unit, service(&env, system).unit()).unwrap();
        let o = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .expect("systemd-analyze runs (tests/run installs systemd)");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "systemd-analyze verify failed:\n{err}");
        assert!(
            !err.contains("builderd.service:"),
            "warnings about the unit:\n{err}"
        );
    }
}

#[test]
fn install_print_shows_the_definition_and_the_commands() {
    let env = Env::new("");
    let o = env.ctl(&["install", "--print", "--user"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    let expected_exec = format!(
        "ExecStart=\"{}\" --config \"{}\"",
        bin_dir().join("builderd").display(),
        env.config.display()
    );
    if Os::current() == Os::Linux {
        assert!(out.contains(&expected_exec), "{out}");
        assert!(out.contains("$ systemctl --user daemon-reload"), "{out}");
        assert!(
            out.contains("$ systemctl --user enable --now builderd.service"),
            "{out}"
        );
        assert!(out.contains("WantedBy=default.target"));
    }
    let o = env.ctl(&["install", "--print"]);
    let out = String::from_utf8_lossy(&o.stdout);
    if Os::current() == Os::Linux {
        assert!(
            out.contains("# /etc/systemd/system/builderd.service"),
            "{out}"
        );
        assert!(out.contains("BUILDERD_OWNER_UID="), "{out}");
        assert!(
            out.contains("$ systemctl enable --now builderd.service"),
            "{out}"
        );
    }
    // --print changes nothing.
    assert!(!std::path::Path::new("/etc/systemd/system/builderd.service").exists());
}

#[test]
fn uninstall_purge_removes_the_builder_image_state_and_registrations() {
    if skip_docker() {
        return;
    }
    // An image of its own, so that removing it touches no other test.
    let ctx = builderd_tests::context_with(&format!(
        "LABEL builderd-test-purge=\"{:?}\"",
        std::time::SystemTime::now()
    ));
    let env = Env::new(&format!("[image]\ncontext = \"{}\"", ctx.path().display()));
    std::fs::write(env.path("etc/nix/nix.conf"), "max-jobs = 2\n").unwrap();
    env.up();
    let cfg = builderd::config::Config::load(&env.config).unwrap();
    let (tag, _) = builderd::docker::image_for(&cfg).unwrap();
    assert!(env.docker(&["image", "inspect", &tag]).status.success());
    let o = env.ctl(&["uninstall", "--purge", "--user"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(env.container_state(), None);
    assert!(
        !env.docker(&["image", "inspect", &tag]).status.success(),
        "the image is removed"
    );
    assert!(
        !env.path("state").exists(),
        "the state dir and volume are removed"
    );
    assert!(!env.path("etc/nix/machines").exists());
    assert_eq!(
        std::fs::read_to_string(env.path("etc/nix/nix.conf")).unwrap(),
        "max-jobs = 2\n"
    );
    for kh in ["home/.ssh/known_hosts", "root/.ssh/known_hosts"] {
        let t = std::fs::read_to_string(env.path(kh)).unwrap_or_default();
        assert!(!t.contains("ssh-ed25519"), "{kh}:\n{t}");
    }
    for cfg in ["home/.ssh/config", "root/.ssh/config"] {
        let t = std::fs::read_to_string(env.path(cfg)).unwrap_or_default();
        assert!(
            !t.contains(&env.name) && !t.contains("builderd"),
            "{cfg}:\n{t}"
        );
    }
}
