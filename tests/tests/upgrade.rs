//! Upgrading from the previous release, whose builder ran unsandboxed (or `--privileged`) from
//! the `builderd-base` image: the first daemon start of this release re-creates the container on
//! the new spec and keeps the volume, the host key and the registrations.

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use builderd_tests::{Env, bin_dir, skip_docker};

/// The builder's nix.conf once its entrypoint has written it: the container answers `exec` as
/// soon as it runs, before the entrypoint is through.
fn builder_nix_conf(env: &Env) -> String {
    for _ in 0..600 {
        let conf = env.docker(&["exec", &env.name, "cat", "/etc/nix/nix.conf"]);
        let text = String::from_utf8_lossy(&conf.stdout).into_owned();
        if text.contains("sandbox = ") {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the builder's entrypoint never wrote /etc/nix/nix.conf");
}

/// The machines line the previous release wrote: the key file in field 3.
fn previous_machines_line(env: &Env) -> String {
    let b64 =
        base64::engine::general_purpose::STANDARD.encode(format!("{}\n", env.host_key_line()));
    format!(
        "ssh-ng://{name} x86_64-linux {key} 4 1 benchmark,big-parallel - {b64}",
        name = env.name,
        key = env.path("home/.ssh/id_ed25519").display()
    )
}

#[test]
fn a_builder_of_the_previous_release_is_recreated_sandboxed_keeping_its_host_key() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    env.up();
    let st = env.status();
    let fingerprint = st["host_key_fingerprint"].as_str().unwrap().to_string();
    let image = st["container"]["image"].as_str().unwrap().to_string();
    env.ctl_ok(&["shutdown"]);
    env.docker(&["rm", "-f", &env.name]);

    // What the previous release left: its container (unsandboxed, its own spec label), its
    // machines line, and state.json saying up.
    let volume = env.path("state/volume");
    let o = env.docker(&[
        "run",
        "-d",
        "--name",
        &env.name,
        "--hostname",
        "nix-builder",
        "--label",
        &format!("io.builderd.instance={}", env.name),
        "--label",
        "io.builderd.spec=0123456789abcdef",
        "-e",
        "NIX_BUILDER_SANDBOX=false",
        "-e",
        "NIX_BUILDER_SUBSTITUTERS=",
        "-p",
        &format!("127.0.0.1:{}:22", env.port),
        "-v",
        &format!("{}:/var/lib/nix-builder", volume.display()),
        &image,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let old_id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(builder_nix_conf(&env).contains("sandbox = false"));
    let machines = env.path("etc/nix/machines");
    let text = std::fs::read_to_string(&machines).unwrap();
    let current = text
        .lines()
        .find(|l| l.starts_with("ssh-ng://"))
        .unwrap()
        .to_string();
    std::fs::write(
        &machines,
        text.replace(&current, &previous_machines_line(&env)),
    )
    .unwrap();
    let state = std::fs::read_to_string(env.path("state/state.json")).unwrap();
    assert!(state.contains("\"desired\": \"up\""), "{state}");

    // The daemon starts (as after a reboot, no client asking): it re-creates the builder.
    let daemon = Command::new(bin_dir().join("builderd"))
        .arg("--config")
        .arg(&env.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let st = env.wait_status(Duration::from_secs(120), "the builder re-created", |s| {
        s["state"] == "up"
            && s["healthy"] == true
            && s["container"]["id"]
                .as_str()
                .is_some_and(|id| !old_id.starts_with(id))
    });
    drop(daemon);
    assert_eq!(st["host_key_fingerprint"], fingerprint.as_str());
    assert!(st["host_key_changed"].is_null(), "{st}");
    let o = env.docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.Privileged}} {{json .HostConfig.CapAdd}}",
        &env.name,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        r#"false ["SYS_ADMIN"]"#
    );
    assert!(builder_nix_conf(&env).contains("sandbox = true\n"));
    // The machines line is the new form, still pinning the same key.
    let line = std::fs::read_to_string(&machines).unwrap();
    let line = line.lines().find(|l| l.starts_with("ssh-ng://")).unwrap();
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f[2], "-", "{line}");
    assert_eq!(
        f[7],
        previous_machines_line(&env).split(' ').nth(7).unwrap()
    );
    // known_hosts from before still verifies the re-created builder, and it builds sandboxed.
    let o = env.ssh_pinned(&env.path("home/.ssh/known_hosts"), "true");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    env.nix_build(&env.path("root/.ssh/config"), "upgraded");
}
