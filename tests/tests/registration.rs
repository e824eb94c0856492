//! Registration that stays true, on the real daemon with a real builder: edits repaired, the
//! client key rotated, the host key regenerated, and files intact when the daemon is killed
//! mid-write.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use builderd_tests::{Env, keygen, skip_docker};

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
    start.elapsed()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[test]
fn edits_are_repaired_and_the_users_lines_kept() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    env.up();
    let machines = env.path("etc/nix/machines");
    let ours = read(&machines);
    assert!(ours.contains("ssh-ng://"));

    // 1. The user deletes builderd's line, and adds one of their own below: put back, theirs kept.
    let mut times = Vec::new();
    for i in 0..100 {
        let user = format!("ssh-ng://other{i} aarch64-linux - 1 1\n");
        std::fs::write(&machines, &user).unwrap();
        let t = wait_until(
            "the machines line to come back",
            Duration::from_secs(10),
            || {
                let t = read(&machines);
                t.contains("ssh-ng://bdt") && t.ends_with(&user)
            },
        );
        times.push(t);
    }
    let (p50, p99) = (percentile(&mut times, 0.5), percentile(&mut times, 0.99));
    eprintln!("edit -> repaired over 100 edits: p50 {p50:?}, p99 {p99:?}");

    // 2. An editor replaces the file by rename.
    let tmp = env.path("etc/nix/.machines.swp");
    std::fs::write(&tmp, "# mine\n").unwrap();
    std::fs::rename(&tmp, &machines).unwrap();
    wait_until(
        "the renamed file to be repaired",
        Duration::from_secs(10),
        || {
            let t = read(&machines);
            t.contains("ssh-ng://bdt") && t.ends_with("# mine\n")
        },
    );

    // 3. Deleted and created again; and known_hosts rewritten by a dotfile manager.
    std::fs::remove_file(&machines).unwrap();
    wait_until(
        "the deleted file to come back",
        Duration::from_secs(10),
        || read(&machines).contains("ssh-ng://bdt"),
    );
    let kh = env.path("home/.ssh/known_hosts");
    std::fs::write(&kh, "example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n").unwrap();
    wait_until(
        "known_hosts to be repaired",
        Duration::from_secs(10),
        || read(&kh).contains(&format!("[localhost]:{} ssh-ed25519", env.port)),
    );
    assert!(read(&kh).ends_with("example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"));

    // Repairs are counted in status, and the real clients still work.
    let st = env.wait_status(Duration::from_secs(5), "repairs counted", |s| {
        s["registrations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "machines" && r["repairs"].as_u64().unwrap_or(0) >= 100)
    });
    assert_eq!(st["state"], "up");
    let o = env.ssh_pinned(&kh, "echo 123");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    env.nix_build(&env.path("root/.ssh/config"), "after-repairs");
}

#[test]
fn client_key_rotation_and_host_key_change() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    env.up();
    let old_fp = env.status()["host_key_fingerprint"]
        .as_str()
        .unwrap()
        .to_string();

    // Rotate the client key: both halves replaced, as `ssh-keygen -f` over the old ones does.
    let new = env.path("newkey");
    keygen(&new, "ed25519");
    std::fs::copy(&new, env.path("home/.ssh/id_ed25519")).unwrap();
    std::fs::copy(env.path("newkey.pub"), env.path("home/.ssh/id_ed25519.pub")).unwrap();
    let new_pub = read(&env.path("newkey.pub"));
    let new_line: String = new_pub
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    wait_until(
        "authorized_keys to hold the new key",
        Duration::from_secs(20),
        || {
            let o = env.docker(&["exec", &env.name, "cat", "/root/.ssh/authorized_keys"]);
            String::from_utf8_lossy(&o.stdout).contains(&new_line)
        },
    );
    let o = env.ssh_pinned(&env.path("home/.ssh/known_hosts"), "echo rotated");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    env.wait_status(Duration::from_secs(10), "healthy with the new key", |s| {
        s["state"] == "up" && s["healthy"] == true
    });
    env.ctl_ok(&["check"]);

    // A public key that does not match the private key is refused; the working state stays.
    let other = env.path("other");
    keygen(&other, "ed25519");
    std::fs::copy(env.path("other.pub"), env.path("home/.ssh/id_ed25519.pub")).unwrap();
    let st = env.wait_status(Duration::from_secs(10), "the mismatch reported", |s| {
        s["reason"]
            .as_str()
            .unwrap_or("")
            .contains("does not belong to private key")
    });
    assert_eq!(st["healthy"], true);
    let o = env.docker(&["exec", &env.name, "cat", "/root/.ssh/authorized_keys"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&new_line),
        "the old key is kept"
    );
    std::fs::copy(env.path("newkey.pub"), env.path("home/.ssh/id_ed25519.pub")).unwrap();

    // Wipe the host key and remove the container: a new host key everywhere, nothing stale.
    std::fs::remove_file(env.path("state/volume/id_ed25519")).unwrap();
    std::fs::remove_file(env.path("state/volume/id_ed25519.pub")).unwrap();
    assert!(env.docker(&["rm", "-f", &env.name]).status.success());
    let st = env.wait_status(Duration::from_secs(60), "a new host key", |s| {
        s["state"] == "up"
            && s["host_key_fingerprint"]
                .as_str()
                .is_some_and(|f| f != old_fp)
    });
    assert_eq!(st["host_key_changed"]["from"], old_fp.as_str());
    assert_eq!(st["host_key_changed"]["to"], st["host_key_fingerprint"]);
    let key = env.host_key_line();
    for f in ["home/.ssh/known_hosts", "root/.ssh/known_hosts"] {
        let t = read(&env.path(f));
        assert_eq!(t.matches("ssh-ed25519").count(), 3, "{f}: {t}");
        assert_eq!(t.matches(&key).count(), 3, "{f}: {t}");
        let o = env.ssh_pinned(&env.path(f), "echo 123");
        assert!(
            o.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for f in ["home/.ssh/config", "root/.ssh/config"] {
        let p = env.path(f);
        let _ = Command::new("ssh")
            .args(["-F", p.to_str().unwrap(), "-O", "exit", &env.name])
            .output();
        let o = env.ssh(&["-F", p.to_str().unwrap(), &env.name], "echo 123");
        assert!(
            o.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    env.nix_build(&env.path("root/.ssh/config"), "new-host-key");
}

#[test]
fn sigkill_during_syncs_never_leaves_a_broken_file() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    // User content in every file, to be kept byte for byte.
    let user_kh = "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n";
    std::fs::write(env.path("home/.ssh/known_hosts"), user_kh).unwrap();
    std::fs::write(env.path("etc/nix/nix.conf"), "max-jobs = 3\n").unwrap();
    env.up();
    let machines = env.path("etc/nix/machines");
    let files = [
        machines.clone(),
        env.path("etc/nix/nix.conf"),
        env.path("home/.ssh/known_hosts"),
        env.path("root/.ssh/known_hosts"),
        env.path("home/.ssh/config"),
        env.path("root/.ssh/config"),
    ];
    let rounds = 100;
    for round in 0..rounds {
        // Edits that make the daemon rewrite files, then a SIGKILL at a varying moment.
        let user_line = format!("ssh-ng://mine{round} aarch64-linux - 1 1\n");
        std::fs::write(&machines, &user_line).unwrap();
        std::fs::write(env.path("home/.ssh/known_hosts"), user_kh).unwrap();
        std::thread::sleep(Duration::from_micros((round as u64 * 997) % 8000));
        let pid: i32 = read(&env.path("state/builderd.pid"))
            .trim()
            .parse()
            .unwrap();
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        // Dead means its socket no longer answers: a killed leader thread can show as a
        // zombie while the process's other threads (and its open socket) are still going.
        let sock = env.path("state/builderd.sock");
        wait_until("the daemon to die", Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&sock).is_err()
        });
        for f in &files {
            let t = read(f);
            // Every file is wholly old or wholly new: at most one complete block of ours, and
            // the user's bytes intact at its end. A file the test did not touch had the block
            // before and after any rewrite, so it still has it; none is ever empty.
            let begins = t.matches("# >>> builderd ").count();
            let ends = t.matches("# <<< builderd ").count();
            let touched = *f == machines || *f == env.path("home/.ssh/known_hosts");
            assert!(
                !t.is_empty() && begins == ends && (begins == 1 || touched && begins == 0),
                "round {round}: {}:\n{t}",
                f.display()
            );
        }
        let m = read(&machines);
        assert!(m.ends_with(&user_line), "round {round}: {m:?}");
        assert!(
            read(&env.path("home/.ssh/known_hosts")).ends_with(user_kh),
            "round {round}"
        );
        assert!(read(&env.path("etc/nix/nix.conf")).ends_with("max-jobs = 3\n"));
        // The next daemon (the desired state is up) puts everything back and removes temp files.
        env.up();
        let t = read(&machines);
        assert_eq!(t.matches("ssh-ng://bdt").count(), 1, "round {round}: {t}");
    }
    for dir in ["etc/nix", "home/.ssh", "root/.ssh"] {
        let temps: Vec<_> = std::fs::read_dir(env.path(dir))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("builderd-tmp"))
            .collect();
        assert!(temps.is_empty(), "temp files left in {dir}: {temps:?}");
    }
    env.nix_build(&env.path("root/.ssh/config"), "after-kills");
}

#[test]
fn two_instances_share_files_and_keep_their_own_entries() {
    if skip_docker() {
        return;
    }
    let a = Env::new("");
    let b = Env::new("");
    // b uses a's registration files.
    let shared = a.config_text();
    let b_cfg = b.config_text();
    let reg_a = &shared[shared.find("[registration]").unwrap()..];
    let b_text = format!(
        "{}{}",
        &b_cfg[..b_cfg.find("[registration]").unwrap()],
        reg_a
    );
    std::fs::write(&b.config, b_text).unwrap();
    a.up();
    b.up();
    let m = read(&a.path("etc/nix/machines"));
    assert!(
        m.contains(&format!("ssh-ng://{} ", a.name))
            && m.contains(&format!("ssh-ng://{} ", b.name)),
        "{m}"
    );
    b.ctl_ok(&["down"]);
    let m = read(&a.path("etc/nix/machines"));
    assert!(
        m.contains(&format!("ssh-ng://{} ", a.name)) && !m.contains(&b.name),
        "{m}"
    );
    let kh = read(&a.path("home/.ssh/known_hosts"));
    assert!(
        kh.contains(&format!("[localhost]:{} ", a.port))
            && !kh.contains(&format!("[localhost]:{} ", b.port))
    );
    let o = a.ssh_pinned(&a.path("home/.ssh/known_hosts"), "echo 123");
    assert!(o.status.success());
}

#[test]
fn two_configs_naming_one_container_never_take_each_others() {
    if skip_docker() {
        return;
    }
    let a = Env::new("");
    let mut b = Env::new("");
    // b names a's container (its own state dir, port and files).
    b.name = a.name.clone();
    b.write_config();
    a.up();
    let id = a.status()["container"]["id"].as_str().unwrap().to_string();
    let o = b.ctl(&["up"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("belongs to another builderd"), "{err}");
    assert!(
        err.contains(&a.path("state").display().to_string()),
        "names the other state dir: {err}"
    );
    // b's daemon keeps wanting its builder up, and keeps refusing to touch a's container.
    b.wait_status(Duration::from_secs(20), "b's daemon retried", |s| {
        s["reason"]
            .as_str()
            .is_some_and(|r| r.contains("belongs to another builderd"))
    });
    let o = b.ctl(&["down"]);
    assert!(!o.status.success(), "down reports what it could not remove");
    let st = a.status();
    assert_eq!(st["state"], "up", "{st}");
    assert_eq!(
        st["container"]["id"],
        id.as_str(),
        "a's container was not re-made"
    );
    assert_eq!(a.containers_of_ours(), 1);
}
