//! Attacks on a root builderd serving one user (`BUILDERD_OWNER_UID`), each performed for real
//! by a real unprivileged account (useradd) that owns the home and the state dir: through the
//! builder it is root in, through the pid file, through `fleet.json`, through the key files
//! and through its state dir. Each must gain the user nothing root has.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use builderd_tests::{Env, bin_dir, skip_docker};

/// A file only root may read, holding a line that must never reach the user.
fn root_secret(env: &Env) -> (std::path::PathBuf, &'static str) {
    const SECRET: &str = "root-only-secret-3141";
    let p = env.path("secret");
    std::fs::write(&p, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    (p, SECRET)
}

/// The device number's major and minor (Linux's encoding).
fn major_minor(dev: u64) -> (u64, u64) {
    (
        ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff),
        (dev & 0xff) | ((dev >> 12) & !0xff),
    )
}

#[test]
fn what_the_builders_root_plants_in_the_volume_is_out_of_the_users_reach() {
    if skip_docker() {
        return;
    }
    let (env, user) = Env::root_served("");
    // An older release left the volumes' directories open (0755): the service closes them.
    let volumes = Path::new(builderd::config::ROOT_VOLUMES);
    std::fs::create_dir_all(volumes).unwrap();
    for d in [volumes, volumes.parent().unwrap()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    env.start_root_daemon(user.uid).unwrap();
    let o = env.ctl_as(&user, &["up"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let vol = builderd::config::root_volume_dir(&env.path("state"));
    // The block device of the host's disk that holds the volume, as a node anyone may read.
    let (major, minor) = major_minor(std::fs::metadata(&vol).unwrap().dev());
    // As the user, into the builder with their own key: a set-user-ID root shell and the node.
    let plant = format!(
        "cp /usr/bin/bash-static /var/lib/nix-builder/sh && chmod 4755 /var/lib/nix-builder/sh \
         && mknod -m 666 /var/lib/nix-builder/disk b {major} {minor} && echo planted"
    );
    let o = user
        .command("ssh")
        .arg("-F")
        .arg(env.path("home/.ssh/config"))
        .arg(&env.name)
        .arg(&plant)
        .env("HOME", env.path("home"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("planted"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let m = std::fs::symlink_metadata(vol.join("sh")).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o4000), (0, 0o4000), "planted as root");
    // On the host, as the user: neither the shell nor the node can be reached.
    let run = |script: String| {
        user.command("/bin/sh")
            .args(["-c", &script])
            .output()
            .unwrap()
    };
    let o = run(format!("{}/sh -p -c 'id -u'", vol.display()));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !o.status.success() && out.trim() != "0",
        "the user ran a set-user-ID root shell from the volume: {out}"
    );
    let o = run(format!(
        "head -c 512 {} > /dev/null && echo read",
        vol.join("disk").display()
    ));
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("read"),
        "the user read the host's disk through a node in the volume"
    );
    let m = std::fs::metadata(volumes).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o700));
    // The user's own tools still reach the builder: root handed them its public host key.
    let o = env.ctl_as(&user, &["ssh", "--", "echo", "reached"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("reached"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let copy = builderd::config::host_key_copy(&env.path("state"));
    assert_eq!(std::fs::metadata(&copy).unwrap().uid(), user.uid);
    let _ = env.ctl_as(&user, &["down"]);
}

/// Swaps `builderd.pid` with a link to `secret` over and over, as the user, while holding a
/// lock on whichever plain file is at that name; stops when `stop` appears.
const SWAPPER: &str = r#"
import ctypes, fcntl, os, sys
os.chdir(sys.argv[1])
secret = sys.argv[2].encode()
libc = ctypes.CDLL(None, use_errno=True)
A, B = b"builderd.pid", b"swap"
held = []
def fresh():
    for n in (A, B):
        try:
            os.unlink(n)
        except FileNotFoundError:
            pass
    fd = os.open(b"held.tmp", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, b"4242\n")
    fcntl.flock(fd, fcntl.LOCK_EX)
    held.append(fd)
    if len(held) > 8:
        os.close(held.pop(0))
    os.rename(b"held.tmp", A)
    os.symlink(secret, B)
fresh()
open("ready", "w").close()
while not os.path.exists("stop"):
    if libc.renameat2(-100, A, -100, B, 2) != 0:
        fresh()
"#;

/// Stops the daemon of this pid when dropped, even when the test failed: its pid file may be
/// a link by then.
struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(&self.0).status();
    }
}

#[test]
fn a_busy_pid_file_never_shows_root_what_a_link_points_to() {
    let (env, user) = Env::root_served("");
    let (secret, text) = root_secret(&env);
    let state = env.path("state");
    // A daemon that answers on the socket, so that a start that wins the lock ends at once.
    env.start_root_daemon(user.uid).unwrap();
    let first = KillOnDrop(
        std::fs::read_to_string(state.join("builderd.pid"))
            .unwrap()
            .trim()
            .to_string(),
    );
    let mut swapper = user
        .command("/usr/bin/python3")
        .args(["-c", SWAPPER])
        .arg(&state)
        .arg(&secret)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    while !state.join("ready").exists() {
        assert!(swapper.try_wait().unwrap().is_none(), "the swapper ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    // launchd or systemd starting root's builderd again and again.
    let mut busy = 0;
    for _ in 0..300 {
        let o = env
            .root_builderd(user.uid)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !out.contains(text),
            "root showed a root-only file's contents: {out}"
        );
        if out.contains("another builderd") {
            busy += 1;
        }
    }
    std::fs::write(state.join("stop"), "").unwrap();
    let _ = swapper.wait();
    drop(first);
    assert!(busy > 0, "no start found the lock busy");
}

#[test]
fn fleet_json_cannot_make_root_remove_another_instances_blocks() {
    if skip_docker() {
        return;
    }
    let unreachable = builderd_tests::free_port();
    let key = builderd_tests::fresh_key_line();
    let (env, user) = Env::root_served(&format!(
        "[[remote]]\nname = \"far\"\naddress = \"127.0.0.1\"\nport = {unreachable}\nhost_key = \"{}\"\n",
        key
    ));
    // Another instance's blocks in root's files.
    let other = "# >>> builderd other-instance >>> (managed by builderd: edits inside are undone)\nssh-ng://other-instance x86_64-linux - 4 1 - - -\n# <<< builderd other-instance <<<\n";
    let root_files = [
        env.path("etc/nix/machines"),
        env.path("root/.ssh/known_hosts"),
    ];
    for f in &root_files {
        std::fs::write(f, other).unwrap();
    }
    // The user says that this instance wrote them.
    let fleet = env.path("state/fleet.json");
    user.sh(&format!(
        "printf '%s' '{{\"trusted\":{{}},\"registered\":[\"other-instance\",\"far\"]}}' > {}",
        fleet.display()
    ));
    env.start_root_daemon(user.uid).unwrap();
    let o = env.ctl_as(&user, &["up"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The fleet synced once its remote was checked: fleet.json says what it keeps.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&fleet)
        .unwrap_or_default()
        .contains("other-instance")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the fleet never synced: {}",
            env.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for f in &root_files {
        let t = std::fs::read_to_string(f).unwrap();
        assert!(
            t.contains(other),
            "another instance's block left {}:\n{t}",
            f.display()
        );
    }
    let o = env.ctl_as(&user, &["down"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in &root_files {
        assert_eq!(
            std::fs::read_to_string(f).unwrap(),
            other,
            "{}",
            f.display()
        );
    }
}

#[test]
fn key_files_root_reads_are_the_users_regular_files_of_a_bounded_size() {
    if skip_docker() {
        return;
    }
    let far = builderd_tests::free_port();
    let key = builderd_tests::fresh_key_line();
    let dir = tempfile::Builder::new().prefix("bdk").tempdir().unwrap();
    let ssh = dir.path().to_path_buf();
    let remotes: String = [
        ("by-link", "linked_key"),
        ("by-fifo", "fifo_key"),
        ("by-zero", "zero_key"),
    ]
    .iter()
    .map(|(name, file)| {
        format!(
            "[[remote]]\nname = \"{name}\"\naddress = \"127.0.0.1\"\nport = {far}\nidentity = \"{}/{file}\"\nhost_key = \"{}\"\n",
            ssh.display(),
            key
        )
    })
    .collect();
    let (env, user) = Env::root_served(&remotes);
    // A key only root may read (the host's own, say), a FIFO and /dev/zero.
    let roots = env.path("root/.ssh/id_ed25519");
    builderd_tests::keygen(&roots, "ed25519");
    user.give(&ssh);
    user.sh(&format!(
        "cd {} && ln -s {} linked_key && mkfifo fifo_key && ln -s /dev/zero zero_key",
        ssh.display(),
        roots.display()
    ));
    env.start_root_daemon(user.uid).unwrap();
    let o = env.ctl_as(&user, &["up"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = env.wait_status(Duration::from_secs(60), "each key refused", |s| {
        s["remotes"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["reason"].is_string()))
    });
    let reason = |name: &str| {
        st["remotes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let link = reason("by-link");
    assert!(
        link.contains(&format!(
            "cannot load private key {}: Permission denied",
            ssh.join("linked_key").display()
        )),
        "{link}"
    );
    for name in ["by-fifo", "by-zero"] {
        let r = reason(name);
        assert!(r.contains("it is not a regular file"), "{name}: {r}");
    }
    // And the daemon still serves.
    let o = env.ctl_as(&user, &["status", "--json"]);
    assert!(o.status.success());
    let _ = env.ctl_as(&user, &["down"]);
}

#[test]
fn shutdown_removes_nothing_through_a_swapped_state_dir() {
    let (env, user) = Env::root_served("");
    let d = env.dir.path().display().to_string();
    // The state dir one level below a directory the user owns, as it is below their home.
    let text = env
        .config_text()
        .replace(&format!("{d}/state\""), &format!("{d}/state/inner\""))
        .replace(
            &format!("{d}/state/builderd.sock"),
            &format!("{d}/state/inner/builderd.sock"),
        );
    std::fs::write(&env.config, text).unwrap();
    let inner = env.path("state/inner");
    user.sh(&format!("mkdir {}", inner.display()));
    let mut daemon = env
        .root_builderd(user.uid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(inner.join("builderd.sock")).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "builderd did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Root's directory with files of those names, and the state dir swapped for a link to it.
    let roots = env.path("roots-dir");
    std::fs::create_dir(&roots).unwrap();
    for n in ["builderd.pid", "builderd.sock"] {
        std::fs::write(roots.join(n), "root's\n").unwrap();
    }
    user.sh(&format!(
        "mv {i} {i}.old && ln -s {r} {i}",
        i = inner.display(),
        r = roots.display()
    ));
    let _ = Command::new("kill").arg(daemon.id().to_string()).status();
    assert!(daemon.wait().unwrap().success());
    for n in ["builderd.pid", "builderd.sock"] {
        assert!(roots.join(n).exists(), "root removed {n} through the link");
    }
    // What it did remove is its own, in the directory it started in.
    assert!(!env.path("state/inner.old/builderd.sock").exists());
}

#[test]
fn one_users_builder_takes_every_users_builds_only_when_root_says_so() {
    if skip_docker() {
        return;
    }
    let (env, user) = Env::root_served("");
    env.start_root_daemon(user.uid).unwrap();
    let o = env.ctl_as(&user, &["up"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let machines = env.path("etc/nix/machines");
    let nix_conf = env.path("etc/nix/nix.conf");
    let has_block = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .contains(&format!("# >>> builderd {} >>>", env.name))
    };
    // The files every user's builds read stay without the builder; status and doctor say why.
    let st = env.status();
    assert_eq!(st["state"], "up", "{st:#}");
    for (kind, p) in [("machines", &machines), ("nix.conf", &nix_conf)] {
        assert!(!has_block(p), "{kind} lists uid {}'s builder", user.uid);
        let r = st["registrations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == kind)
            .unwrap();
        assert_eq!(r["state"], "served-user-only", "{r}");
        assert!(
            r["detail"]
                .as_str()
                .unwrap()
                .contains("sudo builderctl install --all-users"),
            "{r}"
        );
    }
    // Root's ssh still knows the builder under its own names (for a trusted user's --builders).
    assert!(has_block(&env.path("root/.ssh/known_hosts")));
    let o = env.ctl_as(&user, &["status"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("not listed: the builder is for the served user only"),
        "{out}"
    );
    let o = env.ctl_as(&user, &["doctor"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("WARN  scope      registered for the served user only"),
        "{out}"
    );
    // The config (the user's choice, copied by install) cannot say it: the key is refused.
    let before = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{before}all_users = true\n")).unwrap();
    let o = env.ctl_as(&user, &["up"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--all-users"), "{err}");
    std::fs::write(&env.config, before).unwrap();
    assert!(!has_block(&machines) && !has_block(&nix_conf));
    // Root says every user trusts the builder (the service's environment, as
    // `sudo builderctl install --all-users` writes it): listed, and doctor says so.
    let o = env.ctl(&["shutdown"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    env.start_root_daemon_with(user.uid, &[(builderd::served::ALL_USERS, "1")])
        .unwrap();
    let o = env.ctl_as(&user, &["up"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(has_block(&machines) && has_block(&nix_conf));
    let o = env.ctl_as(&user, &["doctor"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("PASS  scope      every build that reads"),
        "{out}"
    );
    let _ = env.ctl_as(&user, &["down"]);
}

#[test]
fn state_files_that_are_a_fifo_or_dev_zero_are_damage_not_a_hang() {
    // Damage is taken as `up`: the daemon brings the builder up.
    if skip_docker() {
        return;
    }
    let (env, user) = Env::root_served("");
    let state = env.path("state");
    user.sh(&format!(
        "mkfifo {s}/state.json && ln -s /dev/zero {s}/fleet.json",
        s = state.display()
    ));
    env.start_root_daemon(user.uid).unwrap();
    // Asked with a bound of its own: a daemon stuck reading would never answer.
    let o = user
        .command("timeout")
        .arg("30")
        .arg(bin_dir().join("builderctl"))
        .arg("--config")
        .arg(&env.config)
        .args(["status", "--json"])
        .env("HOME", env.path("home"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "status: {o:?}\n{}",
        std::fs::read_to_string(env.path("root-daemon.log")).unwrap_or_default()
    );
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let problem = st["state_file_problem"].as_str().unwrap_or("");
    assert!(
        problem.contains("state.json could not be read (it is not a regular file"),
        "{st:#}"
    );
}
