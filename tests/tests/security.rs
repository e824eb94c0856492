//! Security: only the owner and root drive the daemon, SSH is published on 127.0.0.1 only, the
//! builder's sshd takes root's authorized key and nothing else, and no key material is ever
//! printed.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use builderd_tests::{Env, bin_dir, skip_docker};

fn as_nobody(env: &Env, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin_dir().join("builderctl"))
        .arg("--config")
        .arg(&env.config)
        .args(args)
        .env("HOME", "/nonexistent")
        .output()
        .expect("setpriv runs (util-linux)")
}

#[test]
fn only_the_owner_and_root_drive_the_daemon() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    env.up();
    let sock = env.path("state/builderd.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Let another user reach the config and the socket's directory.
    for d in [env.dir.path().to_path_buf(), env.path("state")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // The socket's mode keeps them out …
    let o = as_nobody(&env, &["status"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "{o:?}"
    );
    // … and with the mode opened by mistake, the peer check still does.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    for cmd in ["status", "down"] {
        let o = as_nobody(&env, &[cmd]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_ne!(o.status.code(), Some(0), "{err}");
        assert!(
            err.contains("uid 65534 may not drive this builder"),
            "{err}"
        );
    }
    assert_eq!(
        env.status()["state"],
        "up",
        "the refused down changed nothing"
    );
    // root (this test) may.
    env.ctl_ok(&["status"]);
}

#[test]
fn ssh_is_published_on_loopback_only() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    env.up();
    let o = env.docker(&[
        "inspect",
        "-f",
        "{{json .HostConfig.PortBindings}}",
        &env.name,
    ]);
    let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(b["22/tcp"][0]["HostIp"], "127.0.0.1", "{b}");
    assert_eq!(b["22/tcp"][0]["HostPort"], env.port.to_string());
    // The kernel's own table: the port listens on 127.0.0.1 and on no other address.
    let hex_port = format!(":{:04X}", env.port);
    let mut listeners = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for l in std::fs::read_to_string(table).unwrap().lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f[1].ends_with(&hex_port) && f[3] == "0A" {
                listeners.push(f[1].to_string());
            }
        }
    }
    assert!(!listeners.is_empty());
    assert!(
        listeners
            .iter()
            .all(|a| a == &format!("0100007F{hex_port}")),
        "listening beyond 127.0.0.1: {listeners:?}"
    );
}

#[test]
fn sshd_takes_keys_only_and_only_roots_key() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    env.up();
    let kh = env.path("home/.ssh/known_hosts");
    let khopt = format!("UserKnownHostsFile={}", kh.display());
    let port = env.port.to_string();
    let base = [
        "-F",
        "/dev/null",
        "-p",
        &port,
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        &khopt,
        "-o",
        "NumberOfPasswordPrompts=0",
    ];
    // Password and keyboard-interactive are not even offered.
    let mut args = base.to_vec();
    args.extend([
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "PreferredAuthentications=password,keyboard-interactive",
        "root@localhost",
    ]);
    let o = env.ssh(&args, "true");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("Permission denied (publickey)"), "{err}");
    // Another key is refused.
    builderd_tests::keygen(&env.path("stranger"), "ed25519");
    let stranger = env.path("stranger");
    let mut args = base.to_vec();
    args.extend([
        "-i",
        stranger.to_str().unwrap(),
        "-o",
        "IdentitiesOnly=yes",
        "root@localhost",
    ]);
    let o = env.ssh(&args, "true");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Permission denied (publickey)"));
    // The right key for another user is refused.
    let key = env.path("home/.ssh/id_ed25519");
    let mut args = base.to_vec();
    args.extend([
        "-i",
        key.to_str().unwrap(),
        "-o",
        "IdentitiesOnly=yes",
        "nobody@localhost",
    ]);
    let o = env.ssh(&args, "true");
    assert!(!o.status.success());
    // Refused at login, not let in and then ended by nobody's shell.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    // And root's key gets in.
    let o = env.ssh_pinned(&kh, "echo in");
    assert!(o.status.success());
}

#[test]
fn no_key_material_in_logs_status_or_errors() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    env.up();
    let mut seen = String::new();
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["doctor", "--verbose"],
        vec!["check"],
        vec!["up"],
    ] {
        let o = env.ctl(&args);
        seen.push_str(&String::from_utf8_lossy(&o.stdout));
        seen.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    // A key pair that does not match, and a private key given as the public one: errors too.
    let public = std::fs::read_to_string(env.path("home/.ssh/id_ed25519.pub")).unwrap();
    std::fs::copy(
        env.path("home/.ssh/id_ed25519"),
        env.path("home/.ssh/id_ed25519.pub"),
    )
    .unwrap();
    let o = env.ctl(&["up"]);
    seen.push_str(&String::from_utf8_lossy(&o.stderr));
    // The daemon sees the changed file and says what is wrong with it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !env
        .daemon_log()
        .contains("the public key changed, but it cannot be used")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not react to the changed key:\n{}",
            env.daemon_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::write(env.path("home/.ssh/id_ed25519.pub"), &public).unwrap();
    env.ctl_ok(&["down"]);
    seen.push_str(&env.daemon_log());
    // Raw socket replies as well.
    let mut s = std::os::unix::net::UnixStream::connect(env.path("state/builderd.sock")).unwrap();
    s.write_all(b"{\"protocol\":1,\"request\":{\"type\":\"status\"}}\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    seen.push_str(&raw);

    let secrets = [
        (
            "client private key",
            std::fs::read_to_string(env.path("home/.ssh/id_ed25519")).unwrap(),
        ),
        ("client public key", public.clone()),
        (
            "host private key",
            std::fs::read_to_string(env.path("state/volume/id_ed25519")).unwrap(),
        ),
    ];
    for (what, text) in secrets {
        for chunk in text.lines().filter(|l| !l.starts_with("-----")) {
            // Each base64 body line, and the public key's blob.
            let piece = chunk
                .split_whitespace()
                .find(|w| w.len() >= 40)
                .unwrap_or(chunk);
            if piece.len() < 40 {
                continue;
            }
            assert!(
                !seen.contains(piece),
                "the {what} appears in output or logs"
            );
        }
    }
    assert!(seen.contains("SHA256:"), "fingerprints are shown instead");
}
