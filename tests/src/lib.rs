//! The end-to-end harness: a temp dir with its own config, key pair, registration files, free
//! port and container name; the real `builderctl` and `builderd` binaries; the real Docker
//! engine, `ssh` and `nix`. Dropping an [`Env`] stops its daemon and removes its container, even
//! when the test failed.
//!
//! Docker tests are skipped only when `BUILDERD_SKIP_DOCKER_TESTS` is set (CI never sets it).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// True when the Docker tests should be skipped (and says so).
pub fn skip_docker() -> bool {
    if std::env::var_os("BUILDERD_SKIP_DOCKER_TESTS").is_some() {
        eprintln!("BUILDERD_SKIP_DOCKER_TESTS is set: skipping a Docker test");
        return true;
    }
    false
}

/// The directory holding the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its path");
    let dir = exe.parent().expect("in target/<profile>/deps");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("target/<profile>")
    } else {
        dir
    };
    for b in ["builderctl", "builderd"] {
        assert!(
            dir.join(b).is_file(),
            "{} is missing: build the binaries first (`cargo build --workspace --bins`, as tests/run does)",
            dir.join(b).display()
        );
    }
    dir.to_path_buf()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("has an address").port()
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Generates an ed25519 key pair at `path` (and `path.pub`) with ssh-keygen.
pub fn keygen(path: &Path, kind: &str) {
    let mut args = vec!["-q", "-t", kind, "-N", "", "-C", "builderd-test", "-f"];
    if kind == "rsa" {
        args.splice(3..3, ["-b", "2048"]);
    }
    let st = Command::new("ssh-keygen")
        .args(&args)
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen runs");
    assert!(st.success(), "ssh-keygen -t {kind} failed");
}

/// A fresh ed25519 public key line (`ssh-ed25519 AAAA…`), for a host key nobody presents.
pub fn fresh_key_line() -> String {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("k");
    keygen(&p, "ed25519");
    let t = std::fs::read_to_string(p.with_extension("pub")).unwrap();
    t.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub name: String,
    pub config: PathBuf,
    pub extra: String,
}

impl Env {
    /// A fresh environment. `extra` is appended to the config (TOML).
    pub fn new(extra: &str) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("bd")
            .tempdir()
            .expect("temp dir");
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let name = format!("bdt-{}-{n}", std::process::id());
        let port = free_port();
        let env = Env {
            config: dir.path().join("builderd.toml"),
            dir,
            port,
            name,
            extra: extra.to_string(),
        };
        std::fs::create_dir_all(env.path("home/.ssh")).unwrap();
        std::fs::create_dir_all(env.path("root/.ssh")).unwrap();
        std::fs::create_dir_all(env.path("etc/nix")).unwrap();
        keygen(&env.path("home/.ssh/id_ed25519"), "ed25519");
        env.write_config();
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The config as the tests use it: the defaults (Nix's sandbox on, no `--privileged`) with
    /// an offline builder (no substituters: nothing outside this machine answers), unless
    /// `extra` has a `[builder]` table of its own.
    pub fn config_text(&self) -> String {
        let d = self.dir.path().display();
        let builder = if self.extra.contains("[builder]") {
            String::new()
        } else {
            "[builder]\nsubstituters = \"\"\n".to_string()
        };
        format!(
            "port = {port}\n\
             public_key = \"{d}/home/.ssh/id_ed25519.pub\"\n\
             private_key = \"{d}/home/.ssh/id_ed25519\"\n\
             state_dir = \"{d}/state\"\n\
             socket = \"{d}/state/builderd.sock\"\n\
             container_name = \"{name}\"\n\
             health_interval = 2\n\
             {extra}\n{builder}\
             [registration]\n\
             machines_file = \"{d}/etc/nix/machines\"\n\
             nix_conf = \"{d}/etc/nix/nix.conf\"\n\
             known_hosts = [\"{d}/home/.ssh/known_hosts\", \"{d}/root/.ssh/known_hosts\"]\n\
             ssh_config = [\"{d}/home/.ssh/config\", \"{d}/root/.ssh/config\"]\n",
            port = self.port,
            name = self.name,
            extra = self.extra,
        )
    }

    pub fn write_config(&self) {
        std::fs::write(&self.config, self.config_text()).unwrap();
    }

    /// Runs builderctl with this environment's config.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(bin_dir().join("builderctl"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("builderctl runs")
    }

    /// Runs builderctl with these environment variables set (or removed, for `None`).
    pub fn ctl_env(&self, args: &[&str], vars: &[(&str, Option<&str>)]) -> Output {
        let mut c = Command::new(bin_dir().join("builderctl"));
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        for (k, v) in vars {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.output().expect("builderctl runs")
    }

    /// `builderctl doctor ARGS` as root, with this environment's `root/` in place of root's
    /// home: a private mount namespace binds it over the real one, so root's plain `ssh` reads
    /// this environment's root ssh_config, and no other process sees the change.
    pub fn doctor(&self, args: &[&str]) -> Output {
        let root = self.path("root");
        let home = root_home();
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount --bind \"$0\" \"$1\" && shift && exec \"$@\"")
            .arg(&root)
            .arg(&home)
            .arg(bin_dir().join("builderctl"))
            .arg("--config")
            .arg(&self.config)
            .arg("doctor")
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .expect("unshare runs")
    }

    /// Runs builderctl and asserts it succeeded; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let o = self.ctl(args);
        if !o.status.success() {
            // Let a daemon that is going down finish writing its log.
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(
            o.status.success(),
            "builderctl {args:?} failed ({}):\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.daemon_log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.path("state/logs/builderd.log")).unwrap_or_default()
    }

    /// `builderctl up`, serialized across test processes while the shared image is being built,
    /// so that a fresh machine makes its base image once.
    pub fn up(&self) -> String {
        let _guard = ImageBuildLock::take_if_needed(&self.config);
        self.ctl_ok(&["up"])
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.ctl_ok(&["status", "--json"]);
        serde_json::from_str(&out).expect("status --json is JSON")
    }

    /// Waits until status satisfies `pred`, or panics with the last status after `timeout`.
    pub fn wait_status(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let o = self.ctl(&["status", "--json"]);
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) {
                if pred(&v) {
                    return v;
                }
                if Instant::now() > deadline {
                    panic!(
                        "timed out waiting for {what}; last status: {v:#}\nlog:\n{}",
                        self.daemon_log()
                    );
                }
            } else if Instant::now() > deadline {
                panic!("timed out waiting for {what}; status failed: {o:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server host key line from the volume (`ssh-ed25519 AAAA…`).
    pub fn host_key_line(&self) -> String {
        let t = std::fs::read_to_string(self.path("state/volume/id_ed25519.pub")).unwrap();
        t.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
    }

    /// The real OpenSSH client with the given options; returns the output.
    pub fn ssh(&self, opts: &[&str], command: &str) -> Output {
        Command::new("ssh")
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
            .args(opts)
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .expect("ssh runs")
    }

    /// ssh to the builder with this key, `-p PORT`, and `known_hosts` pinned strictly.
    pub fn ssh_pinned(&self, known_hosts: &Path, command: &str) -> Output {
        self.ssh_pinned_at(known_hosts, self.port, command)
    }

    /// [`Env::ssh_pinned`] to 127.0.0.1:`port` (the container's published port, say), the host
    /// key still looked up as the builder's port's.
    pub fn ssh_pinned_at(&self, known_hosts: &Path, port: u16, command: &str) -> Output {
        let key = self.path("home/.ssh/id_ed25519");
        let kh = format!("UserKnownHostsFile={}", known_hosts.display());
        let alias = format!("HostKeyAlias=[localhost]:{}", self.port);
        let port = port.to_string();
        self.ssh(
            &[
                "-o",
                &alias,
                "-F",
                "/dev/null",
                "-i",
                key.to_str().unwrap(),
                "-p",
                &port,
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                &kh,
                "root@localhost",
            ],
            command,
        )
    }

    /// Container state from `docker inspect`, or `None` when there is no such container.
    pub fn container_state(&self) -> Option<String> {
        let o = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Status}}", &self.name])
            .output()
            .expect("docker runs");
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// How many containers, running or not, carry this environment's instance label.
    pub fn containers_of_ours(&self) -> usize {
        let o = self.docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.builderd.instance={}", self.name),
        ]);
        String::from_utf8_lossy(&o.stdout).lines().count()
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .args(args)
            .output()
            .expect("docker runs")
    }

    /// A real remote build through the machines file with the real nix client. Returns the
    /// output's contents; asserts it was built in this environment's container, sandboxed.
    pub fn nix_build(&self, ssh_config: &Path, label: &str) -> String {
        self.nix_build_for(ssh_config, label, "x86_64-linux", "\"/bin/sh\"")
    }

    /// [`Env::nix_build`] of a derivation for `system` whose builder is `builder` (a Nix
    /// expression: a string, or a path that Nix copies to the builder). The build records how it
    /// was run: its pid (1 in the sandbox's pid namespace), whether the container's /usr is
    /// visible, and its directory (`/build` in the sandbox, `/tmp/nix-build-…` without).
    pub fn nix_build_for(
        &self,
        ssh_config: &Path,
        label: &str,
        system: &str,
        builder: &str,
    ) -> String {
        self.nix_build_with(&unshared_sshopts(ssh_config), label, system, builder)
    }

    /// [`Env::nix_build`] with `sshopts` as `NIX_SSHOPTS` as they are (`-F FILE` and whatever
    /// else): for a build that shares ssh connections the way the alias says, as Nix does.
    pub fn nix_build_with(
        &self,
        sshopts: &str,
        label: &str,
        system: &str,
        builder: &str,
    ) -> String {
        // A nonce never built before, so that Nix cannot answer from the local store.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let nonce = &format!("{label}-{}-{nanos}", self.name);
        let drv = self.path(&format!("probe-{label}.nix"));
        std::fs::write(
            &drv,
            format!(
                "{{ nonce }}:\nderivation {{\n  name = \"builderd-probe\"; system = \"{system}\"; builder = {builder}; inherit nonce;\n  args = [ \"-c\" \"read -r pid rest < /proc/self/stat; echo built-remotely > $out; echo $nonce >> $out; echo pid=$pid >> $out; if [ -e /usr ]; then echo usr=visible >> $out; else echo usr=absent >> $out; fi; echo dir=$PWD >> $out; echo machtype=$MACHTYPE >> $out\" ];\n}}\n"
            ),
        )
        .unwrap();
        let machines = format!("@{}", self.path("etc/nix/machines").display());
        let o = Command::new("nix-build")
            .arg(&drv)
            .args([
                "--argstr",
                "nonce",
                nonce,
                "--max-jobs",
                "0",
                "--no-out-link",
            ])
            .args(["--builders", &machines])
            .args(CLIENT_OPTIONS)
            .env("NIX_SSHOPTS", sshopts)
            .stdin(Stdio::null())
            .output()
            .expect("nix-build runs (tests/run installs nix-bin)");
        assert!(
            o.status.success(),
            "nix-build failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.daemon_log()
        );
        let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.contains(nonce), "{text}");
        // The container's /usr and a build dir under /tmp are what an unsandboxed build sees.
        for (want, why) in [
            (
                "pid=1\n",
                "the build was not pid 1 of its own pid namespace",
            ),
            ("usr=absent\n", "the build saw the container's /usr"),
            ("dir=/build\n", "the build did not run in /build"),
        ] {
            assert!(text.contains(want), "not sandboxed ({why}): {text}");
        }
        let inside = self.docker(&["exec", &self.name, "test", "-e", &out]);
        assert!(
            inside.status.success(),
            "{out} is not in this builder's store: built elsewhere"
        );
        text
    }

    /// A remote build through `machines` that must fail, with no shared connection; returns
    /// Nix's error output.
    pub fn nix_build_fails(&self, machines: &Path, ssh_config: &Path) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let expr = format!(
            "derivation {{ name = \"builderd-refused\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; nonce = \"{nanos}\"; args = [ \"-c\" \"echo > $out\" ]; }}"
        );
        let o = Command::new("nix-build")
            .args(["-E", &expr, "--max-jobs", "0", "--no-out-link"])
            .arg("--builders")
            .arg(format!("@{}", machines.display()))
            .args(["--option", "substituters", ""])
            .args(["--option", "build-users-group", ""])
            .env("NIX_SSHOPTS", unshared_sshopts(ssh_config))
            .stdin(Stdio::null())
            .output()
            .expect("nix-build runs");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "the build passed: {err}");
        err
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Collect what goes wrong instead of panicking halfway through the clean-up.
        let mut problems = Vec::new();
        let pidfile = self.path("state").join(builderd::config::PID_FILE);
        if let Ok(pid) = std::fs::read_to_string(&pidfile)
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let o = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
        if let Ok(o) = o
            && !o.status.success()
            && !String::from_utf8_lossy(&o.stderr).contains("No such container")
        {
            problems.push(String::from_utf8_lossy(&o.stderr).into_owned());
        }
        // The image of a test's own (its own context or repository): the engine of whoever
        // runs the tests would collect one per run. One still used by another container stays
        // for that container's test to remove.
        if let Ok(cfg) = builderd::config::Config::load(&self.config)
            && (cfg.image.context.is_some() || cfg.image.repository.starts_with("bdt-"))
            && let Ok((tag, _)) = builderd::docker::image_for(&cfg)
        {
            let _ = Command::new("docker")
                .args(["rmi", &tag])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // The volume a root daemon serving a user kept for this state dir.
        let _ = std::fs::remove_dir_all(builderd::config::root_volume_dir(&self.path("state")));
        // ssh connection masters started through the written configs
        for cfg in ["home/.ssh/config", "root/.ssh/config"] {
            let p = self.path(cfg);
            if p.exists() {
                let _ = Command::new("ssh")
                    .args(["-F", p.to_str().unwrap(), "-O", "exit", &self.name])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if !problems.is_empty() {
            eprintln!("clean-up of {}: {problems:?}", self.name);
        }
        if std::env::var_os("BUILDERD_TEST_KEEP").is_some() {
            let kept = self.dir.path().with_extension("kept");
            let _ = std::fs::rename(self.dir.path(), &kept);
            eprintln!("kept the test's files in {}", kept.display());
        }
    }
}

/// Standard base64, as in a machines line's field 8.
/// The host's Nix as the tests run it: root, single-user, with no cache of its own.
pub const CLIENT_OPTIONS: [&str; 6] = [
    "--option",
    "substituters",
    "",
    "--option",
    "build-users-group",
    "",
];

pub fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// root's home directory, from the user database, as builderd finds it.
pub fn root_home() -> PathBuf {
    builderd::config::root_home()
}

/// Serializes `up` across test processes while the image for a config is not built yet.
pub struct ImageBuildLock {
    _held: Option<File>,
}

impl ImageBuildLock {
    pub fn take_if_needed(config: &Path) -> ImageBuildLock {
        let cfg = builderd::config::Config::load(config).expect("test config loads");
        let Ok((tag, _)) = builderd::docker::image_for(&cfg) else {
            return ImageBuildLock { _held: None };
        };
        if image_exists(&tag) {
            return ImageBuildLock { _held: None };
        }
        let f = File::create(std::env::temp_dir().join("builderd-tests-image.lock")).unwrap();
        f.lock().unwrap();
        ImageBuildLock { _held: Some(f) }
    }
}

/// The bytes of each file (`None` when missing), to compare before and after.
pub fn snapshot(paths: &[PathBuf]) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    paths
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).ok()))
        .collect()
}

/// `ssh-keygen -lf` fingerprint of a public key file.
pub fn ssh_keygen_fingerprint(path: &Path) -> String {
    let o = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string()
}

impl Env {
    /// Starts `builderd` directly, as launchd or systemd would after a reboot (no client). A
    /// thread reaps it when it exits.
    pub fn start_daemon(&self) {
        std::fs::create_dir_all(self.path("state/logs")).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("state/logs/builderd.log"))
            .unwrap();
        let mut cmd = Command::new(bin_dir().join("builderd"));
        cmd.arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut child = cmd.spawn().expect("builderd starts");
        std::thread::spawn(move || child.wait());
    }

    /// SIGKILLs the daemon and waits until its socket no longer answers.
    pub fn kill_daemon(&self) {
        let pid =
            std::fs::read_to_string(self.path("state").join(builderd::config::PID_FILE)).unwrap();
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        let sock = self.path("state/builderd.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            assert!(Instant::now() < deadline, "the daemon did not die");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A Unix-socket proxy in front of the Docker engine that a test can cut and restore, to play
/// an engine that restarts or goes away.
pub struct DockerProxy {
    pub path: PathBuf,
    state: std::sync::Arc<(std::sync::Mutex<ProxyState>, std::sync::Condvar)>,
}

#[derive(Default)]
struct ProxyState {
    up: bool,
    /// Each restore starts a new generation; older accept loops end.
    generation: u64,
    stop: bool,
    /// Open connections, to shut down when cut.
    conns: Vec<std::os::unix::net::UnixStream>,
}

impl DockerProxy {
    pub fn new(path: PathBuf, up: bool) -> DockerProxy {
        let state = std::sync::Arc::new((
            std::sync::Mutex::new(ProxyState {
                up: false,
                ..Default::default()
            }),
            std::sync::Condvar::new(),
        ));
        let p = DockerProxy { path, state };
        if up {
            p.restore();
        }
        p
    }

    /// Starts accepting again (a new listener, like an engine that came back).
    pub fn restore(&self) {
        use std::os::unix::net::{UnixListener, UnixStream};
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).expect("bind the proxy socket");
        listener.set_nonblocking(true).unwrap();
        let generation = {
            let mut s = self.state.0.lock().unwrap();
            s.up = true;
            s.generation += 1;
            s.generation
        };
        let state = self.state.clone();
        std::thread::spawn(move || {
            loop {
                {
                    let s = state.0.lock().unwrap();
                    if !s.up || s.stop || s.generation != generation {
                        return;
                    }
                }
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(engine) = UnixStream::connect("/var/run/docker.sock") else {
                            continue;
                        };
                        {
                            // Decided under the lock that `cut` takes: a connection accepted
                            // as the proxy was cut is dropped, never left open.
                            let mut s = state.0.lock().unwrap();
                            if !s.up || s.stop || s.generation != generation {
                                return;
                            }
                            s.conns.push(client.try_clone().unwrap());
                            s.conns.push(engine.try_clone().unwrap());
                        }
                        for (mut from, mut to) in [
                            (client.try_clone().unwrap(), engine.try_clone().unwrap()),
                            (engine, client),
                        ] {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
    }

    /// Stops accepting, closes every open connection and removes the socket.
    pub fn cut(&self) {
        let mut s = self.state.0.lock().unwrap();
        s.up = false;
        for c in s.conns.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.cut();
        self.state.0.lock().unwrap().stop = true;
    }
}

/// The median of some durations.
pub fn p50(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Human output with what differs between runs replaced by stable names, for snapshots.
pub fn redact(env: &Env, text: &str) -> String {
    let mut t = text.replace(&env.dir.path().display().to_string(), "[DIR]");
    t = t.replace(&env.name, "[NAME]");
    t = t.replace(&format!(":{}", env.port), ":[PORT]");
    t = t.replace(&format!("port {}", env.port), "port [PORT]");
    t
}

/// `NIX_SSHOPTS` for a build through `ssh_config` with no shared connection: each build goes
/// through the host key and key checks itself.
pub fn unshared_sshopts(ssh_config: &Path) -> String {
    format!(
        "-F {} -o ControlMaster=no -o ControlPath=none",
        ssh_config.display()
    )
}

/// Whether the engine holds the image `tag`.
pub fn image_exists(tag: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The label on every image built from a test's own context ([`context_with`],
/// [`context_from_base`]); its value is the run's id ([`run_id`]), so that a run counts only
/// the images it made, whatever other runs on the same engine make meanwhile.
pub const RUN_LABEL: &str = "io.builderd.test-run";

/// This run's id: `BUILDERD_TEST_RUN` (tests/run sets one for the whole suite), else one of
/// this test process's own.
pub fn run_id() -> String {
    std::env::var("BUILDERD_TEST_RUN")
        .ok()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| format!("pid-{}", std::process::id()))
}

/// The images, intermediate ones included, that this run's test contexts made and that are
/// still there.
pub fn run_images() -> Vec<String> {
    let o = Command::new("docker")
        .args(["images", "--all", "--quiet", "--no-trunc", "--filter"])
        .arg(format!("label={RUN_LABEL}={}", run_id()))
        .output()
        .expect("docker runs");
    assert!(o.status.success(), "{o:?}");
    let mut ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// A build context of one Dockerfile: `FROM` [`local_base`], then `rest`.
pub fn context_from_base(rest: &str) -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {}\n{rest}\nLABEL {RUN_LABEL}=\"{}\"\n",
            local_base(),
            run_id()
        ),
    )
    .unwrap();
    ctx
}

/// The base the default config builds from on this machine, made by a default `up` first if
/// there is none yet: `debian:trixie-slim` where it can be pulled, else the local
/// `builderd-base:trixie`.
pub fn local_base() -> String {
    let exists = image_exists;
    let pulled = builderd::docker::base::DEFAULT_BASE;
    let local = builderd::docker::base::offline_tag("trixie");
    if !exists(pulled) && !exists(&local) {
        let env = Env::new("");
        env.up();
        env.ctl_ok(&["down"]);
    }
    if exists(pulled) {
        pulled.to_string()
    } else {
        local
    }
}

/// The embedded build context, written out as it is (each file with its mode).
pub fn embedded_context() -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    for (name, bytes, mode) in builderd::docker::Context::embedded().files {
        let p = ctx.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    ctx
}

/// A copy of the embedded build context whose Dockerfile ends with `extra` (a line that makes
/// the image this test's own), building from [`local_base`].
pub fn context_with(extra: &str) -> tempfile::TempDir {
    let base = local_base();
    let ctx = embedded_context();
    let p = ctx.path().join("Dockerfile");
    let mut df = std::fs::read_to_string(&p).unwrap().replace(
        &format!("ARG BASE_IMAGE={}", builderd::docker::base::DEFAULT_BASE),
        &format!("ARG BASE_IMAGE={base}"),
    );
    df.push_str(extra);
    df.push_str(&format!("\nLABEL {RUN_LABEL}=\"{}\"\n", run_id()));
    std::fs::write(p, df).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        ctx.path().join("entrypoint.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    ctx
}

/// A real unprivileged account made for one test (`useradd`), removed again on drop. Its home
/// is the given directory, which it is given.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    pub fn new(home: &Path) -> TestUser {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let name = format!("bdu{}x{n}", std::process::id());
        // useradd takes /etc/passwd's lock; another test's useradd may hold it for a moment.
        let mut tries = 0;
        loop {
            let o = Command::new("useradd")
                .args(["--no-create-home", "--user-group", "--shell", "/bin/sh"])
                .arg("--home-dir")
                .arg(home)
                .arg(&name)
                .output()
                .expect("useradd runs (passwd)");
            if o.status.success() {
                break;
            }
            tries += 1;
            assert!(
                tries < 50,
                "useradd {name} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let id = |flag: &str| -> u32 {
            let o = Command::new("id").arg(flag).arg(&name).output().unwrap();
            String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
        };
        TestUser {
            uid: id("-u"),
            gid: id("-g"),
            name,
        }
    }

    /// A command that runs as this user (real and effective ids, its groups only).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        c
    }

    /// Runs a shell command line as this user; asserts it succeeded.
    pub fn sh(&self, script: &str) {
        let o = self
            .command("/bin/sh")
            .args(["-c", script])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "as {}: {script}: {}",
            self.name,
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Gives `path` (and everything below it) to this user.
    pub fn give(&self, path: &Path) {
        let st = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.name])
            .status();
        for _ in 0..50 {
            let o = Command::new("userdel").arg(&self.name).output();
            if o.is_ok_and(|o| o.status.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove the test user {}", self.name);
    }
}

impl Env {
    /// An environment whose `home` and `state` belong to `user`, served by a root builderd
    /// (`BUILDERD_OWNER_UID`): the layout of `sudo builderctl install`. Root's files (the config,
    /// `etc`, `root`) stay root's; the environment's directory is opened for the user to pass.
    pub fn root_served(extra: &str) -> (Env, TestUser) {
        let env = Env::new(extra);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(env.path("state")).unwrap();
        let user = TestUser::new(&env.path("home"));
        user.give(&env.path("home"));
        user.give(&env.path("state"));
        (env, user)
    }

    /// Starts a root `builderd` serving `uid` and waits until its socket answers; `Err` holds
    /// its output when it exits instead. It runs as `sudo builderctl install
    /// --trust-user-with-root` installs it: on Linux the builder with Nix's sandbox is host
    /// root's, which the administrator has then accepted.
    pub fn start_root_daemon(&self, uid: u32) -> Result<(), String> {
        self.start_root_daemon_with(uid, &[])
    }

    /// [`Env::start_root_daemon`] as plain `sudo builderctl install` installs it: the served user
    /// is not trusted with root.
    pub fn start_root_daemon_untrusted(&self, uid: u32) -> Result<(), String> {
        self.start_root_daemon_with(uid, &[(builderd::served::TRUST_USER_WITH_ROOT, "")])
    }

    /// [`Env::start_root_daemon`] with more environment variables (what the user may have left
    /// in the environment `sudo` passes on).
    pub fn start_root_daemon_with(&self, uid: u32, vars: &[(&str, &str)]) -> Result<(), String> {
        let log = self.path("root-daemon.log");
        let f = File::create(&log).unwrap();
        let mut child = self
            .root_builderd(uid)
            .env(builderd::served::TRUST_USER_WITH_ROOT, "1")
            .envs(vars.iter().copied())
            .env("BUILDERD_OWNER_UID", uid.to_string())
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("builderd starts");
        let sock = self.path("state/builderd.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                std::thread::spawn(move || child.wait());
                return Ok(());
            }
            if let Ok(Some(st)) = child.try_wait() {
                let out = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("builderd exited ({st}): {out}"));
            }
            assert!(
                Instant::now() < deadline,
                "the root builderd did not answer: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A root `builderd --config CONFIG` serving `uid`, whose own fixed files (`/etc/nix/…`,
    /// root's `~/.ssh/…`) are this environment's `etc` and `root` (`BUILDERD_TEST_ROOT`, which
    /// only a debug build reads).
    pub fn root_builderd(&self, uid: u32) -> Command {
        let mut c = Command::new(bin_dir().join("builderd"));
        c.arg("--config")
            .arg(&self.config)
            .env("BUILDERD_TEST_ROOT", self.dir.path())
            .env("BUILDERD_OWNER_UID", uid.to_string());
        c
    }

    /// builderctl as `user`, with this environment's config.
    pub fn ctl_as(&self, user: &TestUser, args: &[&str]) -> Output {
        user.command(bin_dir().join("builderctl"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("HOME", self.path("home"))
            .output()
            .expect("builderctl runs")
    }
}

/// Removes images the test made, even when it failed.
pub struct Images(pub Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for t in &self.0 {
            let _ = Command::new("docker")
                .args(["rmi", "-f", t])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `docker ARGS`, which must succeed; its output, trimmed.
pub fn docker_ok(args: &[&str]) -> String {
    let o = Command::new("docker").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A real registry (Debian's `docker-registry`) on 127.0.0.1 only, standing in for Docker Hub;
/// its storage in a temp dir; stopped when dropped.
pub struct Registry {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let bin = "/usr/bin/docker-registry";
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: tests/run installs Debian's docker-registry"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the registry did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            port,
            _dir: dir,
        }
    }

    /// `local` (a plain Debian, as `debian:trixie-slim` is) flattened into one layer of its own
    /// and pushed as `debian:trixie-slim` here, so that a pull downloads every byte of it; the
    /// engine keeps no copy. Returns the name to pull.
    pub fn push_plain_base(&self, local: &str) -> String {
        let base = format!("127.0.0.1:{}/debian:trixie-slim", self.port);
        let c = docker_ok(&["create", local, "true"]);
        let copy = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker export {c} | docker import --change 'CMD [\"bash\"]' - {base}"
            ))
            .output()
            .unwrap();
        docker_ok(&["rm", &c]);
        assert!(copy.status.success(), "{copy:?}");
        docker_ok(&["push", &base]);
        docker_ok(&["rmi", &base]);
        base
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
