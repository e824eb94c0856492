//! A fleet: builder containers on their own loopback addresses stand in for remote hosts,
//! registered as `[[remote]]`s beside the local builder. The host's real `nix-build` spreads a
//! batch across them through builderd's files; a host killed mid-batch is unlisted and listed
//! again when it is back.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use builderd_tests::{Env, skip_docker, snapshot};

/// A builder container standing in for a remote host, on 127.0.0.`n`.
struct Host {
    container: String,
    address: String,
    port: u16,
    volume: PathBuf,
    ssh_configs: Vec<PathBuf>,
}

impl Host {
    fn start(env: &Env, n: u8) -> Host {
        let cfg = builderd::config::Config::load(&env.config).unwrap();
        let (image, _) = builderd::docker::image_for(&cfg).unwrap();
        let container = format!("{}-r{n}", env.name);
        let address = format!("127.0.0.{n}");
        let volume = env.path(&format!("remote{n}"));
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::copy(
            env.path("home/.ssh/id_ed25519.pub"),
            volume.join("host.pub"),
        )
        .unwrap();
        // Port 22 when it is free on that address, else any free one there.
        let mut ports = vec![22];
        let free = std::net::TcpListener::bind((address.as_str(), 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        ports.push(free);
        for port in ports {
            let o = Command::new("docker")
                .args(["run", "-d", "--name", &container])
                .args(["--cap-add", "SYS_ADMIN"])
                .args(["--security-opt", "seccomp=unconfined"])
                .args(["--security-opt", "apparmor=unconfined"])
                .args(["--security-opt", "systempaths=unconfined"])
                .args(["-e", "NIX_BUILDER_SUBSTITUTERS="])
                .arg("-p")
                .arg(format!("{address}:{port}:22"))
                .arg("-v")
                .arg(format!("{}:/var/lib/nix-builder", volume.display()))
                .arg(&image)
                .output()
                .unwrap();
            if o.status.success() {
                return Host {
                    container,
                    address,
                    port,
                    volume,
                    ssh_configs: vec![env.path("home/.ssh/config"), env.path("root/.ssh/config")],
                };
            }
            let _ = Command::new("docker")
                .args(["rm", "-f", &container])
                .output();
            eprintln!(
                "{address}:{port} could not be published: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        panic!("no port could be published on {address}");
    }

    /// The host key the entrypoint made (it makes it once, in the volume).
    fn host_key_line(&self) -> String {
        let p = self.volume.join("id_ed25519.pub");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(t) = std::fs::read_to_string(&p)
                && t.ends_with('\n')
            {
                return t.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            }
            assert!(
                Instant::now() < deadline,
                "{} made no host key",
                self.container
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its `[[remote]]` table; `host_key` is pinned when given.
    fn toml(&self, host_key: Option<&str>) -> String {
        let mut t = format!(
            "[[remote]]\nname = \"{}\"\naddress = \"{}\"\nport = {}\nsystems = [\"x86_64-linux\"]\nmax_jobs = 2\nspeed_factor = 2\nsupported_features = [\"big-parallel\"]\n",
            self.container, self.address, self.port
        );
        if let Some(k) = host_key {
            t.push_str(&format!("host_key = \"{k}\"\n"));
        }
        t
    }

    /// How many of the batch's outputs with `nonce` are in its store.
    fn built(&self, nonce: &str) -> usize {
        let o = Command::new("docker")
            .args(["exec", &self.container, "sh", "-c"])
            .arg(format!(
                "grep -l -- '{nonce}' /nix/store/*-fleet-* 2>/dev/null | wc -l"
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    fn docker(&self, verb: &str) {
        let o = Command::new("docker")
            .args([verb, &self.container])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "docker {verb}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for cfg in &self.ssh_configs {
            if cfg.exists() {
                let _ = Command::new("ssh")
                    .arg("-F")
                    .arg(cfg)
                    .args(["-O", "exit", &self.container])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.container])
            .output();
    }
}

/// Writes the config with `remotes`, each with the given unlisting time of its own. The local
/// builder's (`unlist_unhealthy_after`) is left at a day: a remote is unlisted by its own.
fn configure(env: &mut Env, remotes: &str, unlist_after: u64) {
    env.extra = remotes.replace(
        "[[remote]]\n",
        &format!("[[remote]]\nunlist_after = {unlist_after}\n"),
    );
    let text = env.config_text().replace(
        "[registration]\n",
        "[registration]\nunlist_unhealthy_after = 86400\n",
    );
    std::fs::write(&env.config, text).unwrap();
}

fn remote<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["remotes"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

fn machines(env: &Env) -> String {
    std::fs::read_to_string(env.path("etc/nix/machines")).unwrap_or_default()
}

/// A batch of `n` derivations that each wait `secs` seconds (bash builtins only: `read -t`
/// on a pipe that never gets data) and write `$out`.
fn batch_file(env: &Env, n: u32, secs: u32) -> PathBuf {
    let p = env.path("batch.nix");
    std::fs::write(
        &p,
        format!(
            "{{ nonce }}:\nbuiltins.genList (i: derivation {{\n  name = \"fleet-${{toString i}}\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; inherit nonce;\n  args = [ \"-c\" \"exec 3<> <(:); read -t {secs} -u 3; echo $nonce > $out\" ];\n}}) {n}\n"
        ),
    )
    .unwrap();
    p
}

/// Runs `nix-build` on the batch through builderd's files, with `--keep-going`, for at most
/// `limit`; calls `during` while it runs. Returns (success, the built paths, stderr).
fn build_batch(
    env: &Env,
    file: &Path,
    nonce: &str,
    limit: Duration,
    mut during: impl FnMut() -> bool,
) -> (bool, Vec<String>, String) {
    let machines = format!("@{}", env.path("etc/nix/machines").display());
    let out = env.path("nix-build.out");
    let err = env.path("nix-build.err");
    let mut child = Command::new("nix-build")
        .arg(file)
        .args(["--argstr", "nonce", nonce])
        .args(["--max-jobs", "0", "--no-out-link", "--keep-going"])
        .args(["--builders", &machines])
        .args(["--option", "substituters", ""])
        .args(["--option", "build-users-group", ""])
        .env(
            "NIX_SSHOPTS",
            format!("-F {}", env.path("root/.ssh/config").display()),
        )
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("nix-build runs (tests/run installs nix-bin)");
    let deadline = Instant::now() + limit;
    let mut watching = true;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "nix-build did not finish within {limit:?}:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        if watching {
            watching = during();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let paths = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    (
        status.success(),
        paths,
        std::fs::read_to_string(&err).unwrap(),
    )
}

#[test]
fn a_batch_spreads_across_the_fleet_and_a_dead_host_is_unlisted_and_relisted() {
    if skip_docker() {
        return;
    }
    let mut env = Env::new("");
    env.up();
    let hosts: Vec<Host> = (2..=4).map(|n| Host::start(&env, n)).collect();
    let tables: String = hosts
        .iter()
        .map(|h| h.toml(Some(&h.host_key_line())))
        .collect();
    configure(&mut env, &tables, 3);
    env.up();
    let st = env.wait_status(Duration::from_secs(60), "every remote listed", |s| {
        hosts
            .iter()
            .all(|h| remote(s, &h.container)["listed"] == true)
    });
    for h in &hosts {
        let r = remote(&st, &h.container);
        assert_eq!(r["state"], "up", "{r}");
        assert_eq!(r["host_key_source"], "config", "{r}");
        assert!(
            machines(&env).contains(&format!(
                "ssh-ng://{} x86_64-linux - 2 2 big-parallel - ",
                h.container
            )),
            "{}",
            machines(&env)
        );
    }

    // A batch across the local builder and the three hosts; one host dies while it builds.
    let file = batch_file(&env, 12, 3);
    let nonce = format!("fleet-{}", env.name);
    let victim = &hosts[0];
    let mut killed = false;
    let (ok, _, stderr) = build_batch(&env, &file, &nonce, Duration::from_secs(600), || {
        let o = Command::new("docker")
            .args([
                "exec",
                &victim.container,
                "sh",
                "-c",
                "ls -d /tmp/nix-build-fleet-* 2>/dev/null",
            ])
            .output()
            .unwrap();
        if o.status.success() && !o.stdout.is_empty() {
            victim.docker("kill");
            killed = true;
            return false;
        }
        true
    });
    assert!(
        killed,
        "no build ran on {}; stderr:\n{stderr}",
        victim.container
    );
    // What Nix does (measured, printed for the README): the build that was running on the
    // killed host fails ("unexpected end-of-file") and is not tried elsewhere; every later pick
    // of that host is declined ("cannot build on") and goes to another machine.
    let failed = stderr.matches("failed with exit code").count();
    let declined = stderr.matches("cannot build on").count();
    eprintln!(
        "first run: success={ok}, {failed} failed, {declined} picks of the dead host declined"
    );
    // Builds landed on both hosts that stayed up.
    let on: Vec<usize> = hosts[1..].iter().map(|h| h.built(&nonce)).collect();
    assert!(on.iter().all(|&n| n > 0), "{on:?}");

    // The dead host is taken out of the machines file; the others stay.
    let st = env.wait_status(Duration::from_secs(60), "the dead host unlisted", |s| {
        remote(s, &victim.container)["listed"] == false
    });
    assert_eq!(remote(&st, &victim.container)["state"], "unlisted", "{st}");
    assert!(!machines(&env).contains(&format!("ssh-ng://{} ", victim.container)));
    for h in &hosts[1..] {
        assert!(machines(&env).contains(&format!("ssh-ng://{} ", h.container)));
    }

    // What failed is built again, now on the others; every output exists.
    let (ok, all, stderr) = build_batch(&env, &file, &nonce, Duration::from_secs(600), || false);
    assert!(ok, "the re-run failed:\n{stderr}");
    assert_eq!(all.len(), 12, "{all:?}");
    for p in &all {
        assert!(std::fs::read_to_string(p).unwrap().contains(&nonce));
    }

    // Back: listed again at its first healthy check.
    victim.docker("start");
    env.wait_status(Duration::from_secs(60), "the host listed again", |s| {
        remote(s, &victim.container)["listed"] == true
            && remote(s, &victim.container)["state"] == "up"
    });
    assert!(machines(&env).contains(&format!("ssh-ng://{} ", victim.container)));

    env.ctl_ok(&["down"]);
    let m = machines(&env);
    for h in &hosts {
        assert!(!m.contains(&h.container), "{m}");
    }
}

#[test]
fn an_unconfirmed_host_key_is_listed_only_after_trust_and_down_removes_every_entry() {
    if skip_docker() {
        return;
    }
    let mut env = Env::new("");
    // The user's own bytes in every file builderd shares.
    let files = [
        env.path("etc/nix/machines"),
        env.path("home/.ssh/known_hosts"),
        env.path("root/.ssh/known_hosts"),
        env.path("home/.ssh/config"),
        env.path("root/.ssh/config"),
    ];
    for (i, f) in files.iter().enumerate() {
        let mine = match i {
            0 => "# the user's builders\n",
            1 | 2 => {
                "# the user's hosts\nkeep.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBrM3rMLJ0D3PBtnPqC0IVEVH2Q9DRN2Y4E8cRBPvOeR\n"
            }
            _ => "# the user's hosts\nHost keep.example\n  Port 2022\n",
        };
        std::fs::write(f, mine).unwrap();
    }
    let before = snapshot(&files);
    env.up();
    let host = Host::start(&env, 5);
    let key = host.host_key_line();
    configure(&mut env, &host.toml(None), 120);
    env.up();
    let fp = {
        let tmp = env.path("remote5.pub");
        std::fs::write(&tmp, format!("{key}\n")).unwrap();
        builderd_tests::ssh_keygen_fingerprint(&tmp)
    };
    let st = env.wait_status(Duration::from_secs(60), "a pending host key", |s| {
        remote(s, &host.container)["state"] == "pending-trust"
    });
    let r = remote(&st, &host.container);
    assert_eq!(r["pending_host_key"], fp.as_str(), "{r}");
    assert_eq!(r["listed"], false, "{r}");
    assert!(r["host_key_fingerprint"].is_null(), "{r}");
    // Nothing of it is in any file while the key waits, however many checks run.
    let seq = |s: &serde_json::Value| s["last_health"]["seq"].as_u64().unwrap_or(0);
    let now = seq(&st);
    env.wait_status(Duration::from_secs(30), "more local checks", |s| {
        seq(s) >= now + 2
    });
    for f in &files {
        let t = std::fs::read_to_string(f).unwrap();
        assert!(!t.contains(&host.container), "{}: {t}", f.display());
    }
    let human = env.ctl_ok(&["status"]);
    assert!(
        human.contains(&format!("builderctl trust {} {fp}", host.container)),
        "{human}"
    );

    let doc = String::from_utf8_lossy(&env.ctl(&["doctor"]).stdout).into_owned();
    assert!(
        doc.contains("WARN  remote")
            && doc.contains(&format!("`builderctl trust {} {fp}`", host.container)),
        "{doc}"
    );
    // A fingerprint that is not the presented key pins nothing.
    let o = env.ctl(&["trust", &host.container, "SHA256:notthekey"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing was pinned"));
    env.ctl_ok(&["trust", &host.container, &fp]);
    let st = env.wait_status(Duration::from_secs(60), "listed after trust", |s| {
        remote(s, &host.container)["listed"] == true
    });
    let r = remote(&st, &host.container);
    assert_eq!(r["host_key_fingerprint"], fp.as_str(), "{r}");
    assert_eq!(r["host_key_source"], "trusted", "{r}");
    let doc = String::from_utf8_lossy(&env.ctl(&["doctor"]).stdout).into_owned();
    assert!(
        doc.contains(&format!("PASS  remote     {} (", host.container)),
        "{doc}"
    );
    // The real OpenSSH client reaches it through the alias builderd wrote, strictly pinned.
    let o = env.ssh(
        &[
            "-F",
            env.path("root/.ssh/config").to_str().unwrap(),
            &host.container,
        ],
        "echo through-the-alias",
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("through-the-alias"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The confirmed key survives the daemon: a new one keeps the line and checks it again.
    let listed = machines(&env);
    env.kill_daemon();
    env.start_daemon();
    let st = env.wait_status(Duration::from_secs(60), "checked after a restart", |s| {
        remote(s, &host.container)["last_health"]["ok"] == true
    });
    let r = remote(&st, &host.container);
    assert_eq!(r["host_key_source"], "trusted", "{r}");
    assert_eq!(r["listed"], true, "{r}");
    assert_eq!(machines(&env), listed);

    // An edit inside its block is repaired.
    let m = machines(&env);
    std::fs::write(
        env.path("etc/nix/machines"),
        m.replace(" 2 2 big-parallel ", " 9 9 big-parallel "),
    )
    .unwrap();
    let st = env.wait_status(Duration::from_secs(30), "the block repaired", |s| {
        remote(s, &host.container)["repairs"].as_u64() >= Some(1)
    });
    assert!(machines(&env).contains(" 2 2 big-parallel "), "{st}");

    // Forgetting the key takes its alias, known_hosts entries and machines line away, and
    // the host waits for `trust` again; a name that is no remote is a usage error.
    let o = env.ctl(&["trust", "no-such-remote", "--forget"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("no remote is named \"no-such-remote\": nothing to forget"),
        "{o:?}"
    );
    let o = env.ctl(&["trust", &host.container, "--forget"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{said}");
    assert!(
        said.contains(&format!("forgot {}'s host key {fp}", host.container)),
        "{said}"
    );
    for f in &files {
        let t = std::fs::read_to_string(f).unwrap();
        assert!(!t.contains(&host.container), "{}: {t}", f.display());
    }
    let st = env.wait_status(Duration::from_secs(60), "pending trust again", |s| {
        remote(s, &host.container)["state"] == "pending-trust"
    });
    let r = remote(&st, &host.container);
    assert!(r["host_key_fingerprint"].is_null(), "{r}");
    assert_eq!(r["pending_host_key"], fp.as_str(), "{r}");
    let saved = std::fs::read_to_string(env.path("state/fleet.json")).unwrap();
    assert!(!saved.contains(&host.container), "{saved}");

    // down: every entry goes, and every other byte is as it was.
    env.ctl_ok(&["down"]);
    assert_eq!(snapshot(&files), before);
}

#[test]
fn a_given_host_key_that_is_not_the_hosts_is_refused() {
    if skip_docker() {
        return;
    }
    let mut env = Env::new("");
    env.up();
    let host = Host::start(&env, 6);
    let _ = host.host_key_line();
    // Another key: the local builder's.
    let wrong = env.host_key_line();
    configure(&mut env, &host.toml(Some(&wrong)), 120);
    env.up();
    let st = env.wait_status(Duration::from_secs(60), "the mismatch seen", |s| {
        remote(s, &host.container)["state"] == "host-key-mismatch"
    });
    let r = remote(&st, &host.container);
    assert_eq!(r["listed"], false, "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or("")
            .contains("not the pinned"),
        "{r}"
    );
    assert!(
        !machines(&env).contains(&host.container),
        "{}",
        machines(&env)
    );
    let human = env.ctl_ok(&["status"]);
    assert!(human.contains("host-key-mismatch"), "{human}");
    let o = env.ctl(&["doctor"]);
    let doc = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(4), "{doc}");
    assert!(
        doc.contains(&format!("FAIL  remote     {} (", host.container)),
        "{doc}"
    );

    // Taken out of the config: its alias and key go at the next `up`.
    let kh = env.path("home/.ssh/known_hosts");
    assert!(
        std::fs::read_to_string(&kh)
            .unwrap()
            .contains(&host.container)
    );
    configure(&mut env, "", 120);
    env.up();
    for f in [kh, env.path("root/.ssh/config")] {
        let t = std::fs::read_to_string(&f).unwrap();
        assert!(!t.contains(&host.container), "{}: {t}", f.display());
    }
}
