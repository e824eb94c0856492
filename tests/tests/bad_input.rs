//! Every bad input gets its own clear error, and nothing the user had changes: no file, no
//! container, no volume.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use builderd_tests::{Env, keygen, skip_docker, snapshot};

/// Everything a failed `up` must leave as it was: the registration files, the key files, the
/// volume, and the absence of a container.
struct Unchanged {
    files: Vec<(PathBuf, Option<Vec<u8>>)>,
    volume: bool,
}

fn watched(env: &Env) -> Vec<PathBuf> {
    [
        "etc/nix/machines",
        "etc/nix/nix.conf",
        "home/.ssh/known_hosts",
        "home/.ssh/config",
        "root/.ssh/known_hosts",
        "root/.ssh/config",
        "home/.ssh/id_ed25519",
        "home/.ssh/id_ed25519.pub",
        "builderd.toml",
    ]
    .iter()
    .map(|p| env.path(p))
    .collect()
}

impl Unchanged {
    fn take(env: &Env) -> Unchanged {
        Unchanged {
            files: snapshot(&watched(env)),
            volume: env.path("state/volume").exists(),
        }
    }

    fn check(&self, env: &Env) {
        for ((p, a), (_, b)) in self.files.iter().zip(snapshot(&watched(env))) {
            assert_eq!(*a, b, "{} changed", p.display());
        }
        assert_eq!(
            env.path("state/volume").exists(),
            self.volume,
            "the volume changed"
        );
        assert_eq!(env.container_state(), None, "a container was made");
    }
}

/// `builderctl up` that must fail with `class` (exit code) and a message containing `needle`.
fn up_fails(env: &Env, code: i32, needle: &str) -> String {
    let before = Unchanged::take(env);
    let o = env.ctl(&["up"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    before.check(env);
    err
}

fn user_files(env: &Env) {
    std::fs::write(env.path("etc/nix/nix.conf"), "max-jobs = 2\n").unwrap();
    std::fs::write(
        env.path("home/.ssh/known_hosts"),
        "github.com ssh-ed25519 AAAA\n",
    )
    .unwrap();
}

// ---- key files -------------------------------------------------------------------------

#[test]
fn key_private_given_as_public() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    user_files(&env);
    std::fs::copy(
        env.path("home/.ssh/id_ed25519"),
        env.path("home/.ssh/id_ed25519.pub"),
    )
    .unwrap();
    let err = up_fails(
        &env,
        1,
        "holds a PRIVATE key: give the public half (the .pub file)",
    );
    assert!(!err.contains("BEGIN OPENSSH"), "no key material in errors");
}

#[test]
fn key_rsa() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    keygen(&env.path("rsa"), "rsa");
    std::fs::copy(env.path("rsa.pub"), env.path("home/.ssh/id_ed25519.pub")).unwrap();
    up_fails(
        &env,
        1,
        "is an ssh-rsa key; the builder needs an ssh-ed25519 key",
    );
}

#[test]
fn key_ecdsa() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    keygen(&env.path("ec"), "ecdsa");
    std::fs::copy(env.path("ec.pub"), env.path("home/.ssh/id_ed25519.pub")).unwrap();
    up_fails(
        &env,
        1,
        "is an ecdsa-sha2-nistp256 key; the builder needs an ssh-ed25519 key",
    );
}

#[test]
fn key_empty() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    std::fs::write(env.path("home/.ssh/id_ed25519.pub"), "").unwrap();
    up_fails(
        &env,
        1,
        "is empty: it should hold one line starting with `ssh-ed25519`",
    );
}

#[test]
fn key_binary() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    std::fs::write(
        env.path("home/.ssh/id_ed25519.pub"),
        [0u8, 159, 146, 150, 255, 1, 2],
    )
    .unwrap();
    up_fails(&env, 1, "is not an OpenSSH public key (binary or garbled)");
}

#[test]
fn key_missing() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    std::fs::remove_file(env.path("home/.ssh/id_ed25519.pub")).unwrap();
    up_fails(
        &env,
        1,
        "does not exist: create a key pair with `ssh-keygen -t ed25519`",
    );
}

#[test]
fn key_is_a_directory() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    std::fs::remove_file(env.path("home/.ssh/id_ed25519.pub")).unwrap();
    std::fs::create_dir(env.path("home/.ssh/id_ed25519.pub")).unwrap();
    up_fails(&env, 1, "is a directory, not a key file");
}

#[test]
fn key_unreadable_by_the_daemon() {
    if skip_docker() {
        return;
    }
    // The daemon runs as nobody here: root reads every file, whatever its mode.
    let env = Env::new("");
    let p = env.path("home/.ssh/id_ed25519.pub");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(env.path("state")).unwrap();
    Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(env.path("state"))
        .status()
        .unwrap();
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(builderd_tests::bin_dir().join("builderctl"))
        .arg("--config")
        .arg(&env.config)
        .arg("up")
        .env("HOME", env.path("home"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot read public key") && err.contains("Permission denied"),
        "{err}"
    );
    assert_eq!(env.container_state(), None);
    let _ = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(builderd_tests::bin_dir().join("builderctl"))
        .args(["--config"])
        .arg(&env.config)
        .arg("shutdown")
        .output();
}

// ---- config ----------------------------------------------------------------------------

/// This environment's config with one piece of text replaced.
fn config_with(env: &Env, from: &str, to: &str) -> String {
    env.config_text().replace(from, to)
}

fn config_fails(env: &Env, extra_text: &str, needle: &str) {
    std::fs::write(&env.config, extra_text).unwrap();
    let before = Unchanged::take(env);
    let o = env.ctl(&["up"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    assert!(
        err.contains(&env.config.display().to_string()),
        "the file is named: {err}"
    );
    before.check(env);
    assert!(!env.path("state").exists(), "no daemon was started");
}

#[test]
fn config_unknown_key() {
    let env = Env::new("");
    let text = config_with(&env, "health_interval = 2", "health_intervall = 2");
    config_fails(&env, &text, "unknown field `health_intervall`");
}

#[test]
fn config_wrong_type() {
    let env = Env::new("");
    let text = config_with(&env, &format!("port = {}", env.port), "port = \"2222\"");
    config_fails(&env, &text, "line 1");
}

#[test]
fn config_port_zero() {
    let env = Env::new("");
    let text = config_with(&env, &format!("port = {}", env.port), "port = 0");
    config_fails(&env, &text, "line 1: `port` is 0: choose a free port");
}

#[test]
fn config_port_22() {
    let env = Env::new("");
    let text = config_with(&env, &format!("port = {}", env.port), "port = 22");
    config_fails(&env, &text, "`port` is 22, the host's own SSH port");
}

#[test]
fn config_relative_path() {
    let env = Env::new("");
    let text = config_with(
        &env,
        &format!("state_dir = \"{}/state\"", env.dir.path().display()),
        "state_dir = \"state\"",
    );
    config_fails(&env, &text, "`state_dir` is the relative path state");
}

#[test]
fn config_context_missing() {
    let env = Env::new("");
    let text = format!(
        "{}\n[image]\ncontext = \"/nonexistent/context\"\n",
        env.config_text()
    );
    config_fails(
        &env,
        &text,
        "`context` /nonexistent/context has no Dockerfile",
    );
}

#[test]
fn config_dockerfile_fails_to_build() {
    if skip_docker() {
        return;
    }
    let ctx = builderd_tests::context_from_base("RUN echo 'this step fails on purpose' && exit 7");
    let env = Env::new(&format!("[image]\ncontext = \"{}\"", ctx.path().display()));
    let err = up_fails(&env, 1, "the image build failed");
    assert!(err.contains("returned a non-zero code: 7"), "{err}");
    assert!(
        err.contains("this step fails on purpose"),
        "the build's log is quoted: {err}"
    );
}

#[test]
fn config_port_taken_by_another_process() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    let thief = std::net::TcpListener::bind(("127.0.0.1", env.port)).unwrap();
    let err = up_fails(
        &env,
        1,
        &format!(
            "port {} on 127.0.0.1 is taken by pid {}",
            env.port,
            std::process::id()
        ),
    );
    assert!(err.contains("set `port` in the config"), "{err}");
    // The daemon keeps running and says why in status.
    let st = env.status();
    assert_eq!(st["state"], "down");
    drop(thief);
    env.up();
}

#[test]
fn port_stolen_while_down() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    env.up();
    env.ctl_ok(&["down"]);
    let thief = std::net::TcpListener::bind(("127.0.0.1", env.port)).unwrap();
    up_fails(&env, 1, &format!("is taken by pid {}", std::process::id()));
    let st = env.status();
    assert!(st["pid"].as_u64().is_some(), "the daemon keeps running");
    drop(thief);
    env.up();
}

// ---- socket ----------------------------------------------------------------------------

fn running(env: &Env) -> PathBuf {
    env.up();
    env.path("state/builderd.sock")
}

fn exchange(sock: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn reply_kind(out: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(out.lines().next().unwrap_or("{}")).unwrap_or_default();
    v
}

fn still_serving(env: &Env) {
    assert_eq!(env.status()["state"], "up", "the daemon keeps serving");
}

#[test]
fn socket_garbage_bytes() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    let sock = running(&env);
    let r = reply_kind(&exchange(&sock, b"\x00\x01\xffhello there\n"));
    assert_eq!(r["type"], "error");
    assert_eq!(r["kind"], "bad-request");
    assert!(r["message"].as_str().unwrap().contains("not valid JSON"));
    still_serving(&env);
}

#[test]
fn socket_ten_mib_frame() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    let sock = running(&env);
    let big = vec![b'a'; 10 * 1024 * 1024];
    let r = reply_kind(&exchange(&sock, &big));
    assert_eq!(r["kind"], "bad-request");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("larger than the 64 KiB limit")
    );
    still_serving(&env);
}

#[test]
fn socket_truncated_frame() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    let sock = running(&env);
    let r = reply_kind(&exchange(&sock, br#"{"protocol":1,"request":{"ty"#));
    assert_eq!(r["kind"], "bad-request");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("cut off before its end of line")
    );
    still_serving(&env);
}

#[test]
fn socket_unknown_request() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    let sock = running(&env);
    let r = reply_kind(&exchange(
        &sock,
        b"{\"protocol\":1,\"request\":{\"type\":\"format-disk\"}}\n",
    ));
    assert_eq!(r["kind"], "bad-request");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("unknown variant `format-disk`")
    );
    still_serving(&env);
}

#[test]
fn socket_wrong_protocol_version() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    let sock = running(&env);
    let r = reply_kind(&exchange(
        &sock,
        b"{\"protocol\":99,\"request\":{\"type\":\"status\"}}\n",
    ));
    assert_eq!(r["kind"], "protocol-mismatch");
    assert_eq!(r["daemon_protocol"], 1);
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("run `builderctl shutdown`, then retry")
    );
    still_serving(&env);
    // Any version may still stop it.
    let r = reply_kind(&exchange(
        &sock,
        b"{\"protocol\":99,\"request\":{\"type\":\"shutdown\"}}\n",
    ));
    assert_eq!(r["type"], "done");
}

#[test]
fn socket_a_hundred_concurrent_clients() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    let sock = running(&env);
    let handles: Vec<_> = (0..100)
        .map(|i| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let req = if i % 10 == 0 { "up" } else { "status" };
                exchange(
                    &sock,
                    format!("{{\"protocol\":1,\"request\":{{\"type\":\"{req}\"}}}}\n").as_bytes(),
                )
            })
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert!(last["type"] == "status" || last["type"] == "done", "{out}");
    }
    still_serving(&env);
    assert_eq!(
        env.containers_of_ours(),
        1,
        "concurrent ups made one container"
    );
}

// ---- registration files ------------------------------------------------------------------

fn up_then_down_restores(env: &Env, files: &[&str]) -> Vec<String> {
    let paths: Vec<PathBuf> = files.iter().map(|f| env.path(f)).collect();
    let before = snapshot(&paths);
    env.up();
    let during: Vec<String> = paths
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    env.ctl_ok(&["down"]);
    assert_eq!(snapshot(&paths), before);
    during
}

#[test]
fn registration_crlf_file() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    std::fs::write(
        env.path("etc/nix/nix.conf"),
        "max-jobs = 2\r\nkeep-outputs = true\r\n",
    )
    .unwrap();
    let during = up_then_down_restores(&env, &["etc/nix/nix.conf"]);
    assert!(
        during[0].contains("builders-use-substitutes = true\r\n"),
        "CRLF kept: {:?}",
        during[0]
    );
    assert!(during[0].ends_with("max-jobs = 2\r\nkeep-outputs = true\r\n"));
}

#[test]
fn registration_no_trailing_newline() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    std::fs::write(
        env.path("home/.ssh/known_hosts"),
        "github.com ssh-ed25519 AAAA",
    )
    .unwrap();
    let during = up_then_down_restores(&env, &["home/.ssh/known_hosts"]);
    assert!(during[0].ends_with("\ngithub.com ssh-ed25519 AAAA"));
}

#[test]
fn registration_file_is_a_directory() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    std::fs::create_dir(env.path("home/.ssh/known_hosts")).unwrap();
    std::fs::write(env.path("home/.ssh/known_hosts/keep"), "mine").unwrap();
    env.up();
    let st = env.status();
    assert_eq!(st["state"], "degraded");
    let r = st["registrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "known_hosts")
        .unwrap()
        .clone();
    assert_eq!(r["state"], "failed");
    assert!(
        r["detail"]
            .as_str()
            .unwrap()
            .contains("it is a directory, not a file"),
        "{r}"
    );
    assert!(
        r["detail"].as_str().unwrap().contains("[localhost]:"),
        "the lines to add are given"
    );
    assert_eq!(
        std::fs::read_to_string(env.path("home/.ssh/known_hosts/keep")).unwrap(),
        "mine"
    );
}

#[test]
fn registration_read_only_file() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    let p = env.path("root/.ssh/known_hosts");
    std::fs::write(&p, "mine ssh-ed25519 AAAA\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
    env.up();
    let st = env.status();
    let r = st["registrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == p.display().to_string())
        .unwrap()
        .clone();
    assert_eq!(r["state"], "manual", "{r}");
    assert!(r["detail"].as_str().unwrap().contains("is read-only"));
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        "mine ssh-ed25519 AAAA\n"
    );
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o444
    );
}

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs needs root");
        Tmpfs(at)
    }

    fn fill(&self) {
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=4k"])
            .arg(format!("of={}/filler", self.0.display()))
            .output();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn registration_disk_full() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    let fs = Tmpfs::mount(env.path("etc/nix"), "64k");
    std::fs::write(env.path("etc/nix/nix.conf"), "max-jobs = 2\n").unwrap();
    fs.fill();
    env.up();
    let st = env.status();
    let r = st["registrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "machines")
        .unwrap()
        .clone();
    assert_eq!(r["state"], "failed", "{r}");
    assert!(
        r["detail"].as_str().unwrap().contains("the disk is full"),
        "{r}"
    );
    assert_eq!(
        std::fs::read_to_string(env.path("etc/nix/nix.conf")).unwrap(),
        "max-jobs = 2\n"
    );
    // A retry may be writing at any moment; what matters is that no temp file stays.
    let temps = || {
        std::fs::read_dir(env.path("etc/nix"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("builderd-tmp"))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while temps() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a half-written temp file stays"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    env.ctl_ok(&["down"]);
    drop(fs);
}

#[test]
fn state_dir_disk_full() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    let fs = Tmpfs::mount(env.path("state"), "512k");
    env.up();
    env.ctl_ok(&["down"]);
    let state = std::fs::read(env.path("state/state.json")).unwrap();
    fs.fill();
    let o = env.ctl(&["up"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the disk holding the state dir is full"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(env.path("state/state.json")).unwrap(),
        state,
        "the old state is intact"
    );
    assert_eq!(env.container_state(), None);
    let _ = std::fs::remove_file(env.path("state/filler"));
    env.ctl_ok(&["shutdown"]);
    std::thread::sleep(Duration::from_millis(300));
    drop(fs);
}
