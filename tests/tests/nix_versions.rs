//! The machines line against a Nix that parses `ssh-ng://user@host:port` (2.31 and newer): a
//! root nix-daemon of Debian sid's Nix, in a chroot of its own, builds through the files builderd
//! keeps there (machines, nix.conf, root's known_hosts and ssh_config), in both URI forms. The
//! host's own Nix (2.8) covers the older clients in every other suite.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use builderd_tests::{Env, skip_docker};

/// Debian sid's rootfs with nix-bin and openssh-client, made once by tests/run.
fn sid_rootfs() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-fixtures/sid-rootfs");
    assert!(
        p.join("usr/bin/nix-daemon").exists(),
        "{} is missing: tests/run makes it with debootstrap",
        p.display()
    );
    p.canonicalize().unwrap()
}

/// A throwaway root over the cached rootfs (overlayfs), with /proc and /dev, and a nix-daemon
/// running in it as root. Everything is stopped and unmounted when dropped.
struct Chroot {
    dir: tempfile::TempDir,
    daemon: Option<Child>,
    mounts: Vec<PathBuf>,
}

impl Chroot {
    fn new(lower: &Path) -> Chroot {
        let dir = tempfile::Builder::new().prefix("bdsid").tempdir().unwrap();
        for d in ["upper", "work", "root"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let mut c = Chroot {
            daemon: None,
            mounts: Vec::new(),
            dir,
        };
        let root = c.root();
        c.mount(
            &[
                "-t",
                "overlay",
                "overlay",
                "-o",
                &format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lower.display(),
                    c.dir.path().join("upper").display(),
                    c.dir.path().join("work").display()
                ),
            ],
            &root,
        );
        c.mount(&["-t", "proc", "proc"], &root.join("proc"));
        c.mount(&["--rbind", "/dev"], &root.join("dev"));
        c
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn mount(&mut self, args: &[&str], at: &Path) {
        let st = Command::new("mount").args(args).arg(at).status().unwrap();
        assert!(st.success(), "mount {args:?} {}", at.display());
        self.mounts.push(at.to_path_buf());
    }

    /// `path` inside the root.
    fn at(&self, path: &Path) -> PathBuf {
        self.root().join(path.strip_prefix("/").unwrap())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("chroot");
        c.arg(self.root())
            .args([
                "env",
                "-i",
                "HOME=/root",
                "PATH=/usr/bin:/bin:/usr/sbin:/sbin",
            ])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn start_daemon(&mut self) {
        let child = self
            .command(&["nix-daemon"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let socket = self.at(Path::new("/nix/var/nix/daemon-socket/socket"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "the nix-daemon did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg("-R").arg(m).status();
        }
    }
}

/// The chroot's Nix version as `nix --version` says it.
fn nix_version(c: &Chroot) -> String {
    let o = c.command(&["nix", "--version"]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A sandboxed remote build, asked of the chroot's nix-daemon by a client in the chroot.
fn build_through_daemon(c: &Chroot, env: &Env, label: &str) -> Output {
    let drv = format!(
        "derivation {{ name = \"builderd-sid\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; nonce = \"{label}-{}-{:?}\"; args = [ \"-c\" \"read -r pid rest < /proc/self/stat; echo pid=$pid > $out; echo dir=$PWD >> $out\" ]; }}",
        env.name,
        Instant::now()
    );
    std::fs::write(c.at(Path::new("/probe.nix")), drv).unwrap();
    c.command(&[
        "nix-build",
        "/probe.nix",
        "--no-out-link",
        "--max-jobs",
        "0",
    ])
    .env("NIX_REMOTE", "daemon")
    .output()
    .unwrap()
}

#[test]
fn a_nix_that_parses_host_port_builds_through_its_daemon_in_both_forms() {
    if skip_docker() {
        return;
    }
    let mut c = Chroot::new(&sid_rootfs());
    let version = nix_version(&c);
    let v = builderd::hostnix::parse_version(&version).expect("a version");
    assert!(
        builderd::hostnix::parses_host_port(v),
        "sid's Nix is {version}: this test needs 2.31 or newer"
    );
    // The daemon's settings before builderd's block: no build users in this chroot, offline.
    std::fs::create_dir_all(c.at(Path::new("/etc/nix"))).unwrap();
    std::fs::write(
        c.at(Path::new("/etc/nix/nix.conf")),
        "build-users-group =\nsubstituters =\nbuilders = @/etc/nix/machines\n",
    )
    .unwrap();
    std::fs::create_dir_all(c.at(Path::new("/root/.ssh"))).unwrap();
    // A minimal rootfs has no /etc/hosts; a Mac has, with localhost in it.
    std::fs::write(c.at(Path::new("/etc/hosts")), "127.0.0.1 localhost\n").unwrap();

    // builderd keeps the chroot's files as it would a Mac's /etc/nix and /var/root.
    let root = c.root();
    let env = Env::new("");
    let text = env.config_text();
    let reg = text.find("[registration]").unwrap();
    let d = env.dir.path().display();
    let registration = |uri: &str| {
        format!(
            "{}[registration]\nuri = \"{uri}\"\nrestart_nix_daemon = false\nmachines_file = \"{r}/etc/nix/machines\"\nnix_conf = \"{r}/etc/nix/nix.conf\"\nknown_hosts = [\"{d}/home/.ssh/known_hosts\", \"{r}/root/.ssh/known_hosts\"]\nssh_config = [\"{d}/home/.ssh/config\", \"{r}/root/.ssh/config\"]\n",
            &text[..reg],
            r = root.display()
        )
    };
    std::fs::write(&env.config, registration("alias")).unwrap();
    // builderd writes paths as it sees them (ControlPath beside root's ssh_config): inside the
    // chroot the root's outside path leads to the chroot's own /.
    let mirror = c.at(&root);
    std::fs::create_dir_all(mirror.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/", &mirror).unwrap();
    // The key file at the same path inside the chroot, as root's ssh there names it.
    let key = env.path("home/.ssh/id_ed25519");
    std::fs::create_dir_all(c.at(key.parent().unwrap())).unwrap();
    std::fs::copy(&key, c.at(&key)).unwrap();
    env.up();
    c.start_daemon();

    for form in ["alias", "host-port"] {
        std::fs::write(&env.config, registration(form)).unwrap();
        env.up();
        let machines = std::fs::read_to_string(c.at(Path::new("/etc/nix/machines"))).unwrap();
        let line = machines
            .lines()
            .find(|l| l.starts_with("ssh-ng://"))
            .unwrap();
        let f: Vec<&str> = line.split(' ').collect();
        match form {
            "alias" => assert_eq!(f[0], format!("ssh-ng://{}", env.name)),
            _ => assert_eq!(f[0], format!("ssh-ng://root@localhost:{}", env.port)),
        }
        assert_ne!(f[7], "-", "field 8 pins the host key in both forms: {line}");
        let o = build_through_daemon(&c, &env, form);
        assert!(
            o.status.success(),
            "{form}: nix-build through sid's daemon failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let built = std::fs::read_to_string(c.at(Path::new(&out))).unwrap();
        assert!(
            built.contains("pid=1\n") && built.contains("dir=/build\n"),
            "{form}: not built sandboxed: {built}"
        );
        let inside = env.docker(&["exec", &env.name, "test", "-e", &out]);
        assert!(
            inside.status.success(),
            "{form}: {out} is not in this builder's store"
        );
    }

    // A wrong field 8 is refused by that Nix too: the pin is real.
    let machines = c.at(Path::new("/etc/nix/machines"));
    let text = std::fs::read_to_string(&machines).unwrap();
    let line = text.lines().find(|l| l.starts_with("ssh-ng://")).unwrap();
    let other = {
        let k = env.path("other");
        builderd_tests::keygen(&k, "ed25519");
        let pubkey = std::fs::read_to_string(k.with_extension("pub")).unwrap();
        let line = pubkey
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{line}\n"),
        )
    };
    let mut f: Vec<&str> = line.split(' ').collect();
    f[7] = &other;
    // Root's known_hosts would still vouch for the right key: take builderd's entries out of it
    // for this one build, so that field 8 alone decides.
    let kh = c.at(Path::new("/root/.ssh/known_hosts"));
    let kh_text = std::fs::read_to_string(&kh).unwrap();
    env.ctl_ok(&["shutdown"]);
    std::fs::write(&machines, text.replace(line, &f.join(" "))).unwrap();
    std::fs::write(&kh, "").unwrap();
    let o = build_through_daemon(&c, &env, "wrong-key");
    assert!(!o.status.success(), "a wrong field 8 must be refused");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Host key verification failed") || err.contains("REMOTE HOST IDENTIFICATION"),
        "{err}"
    );
    std::fs::write(&kh, kh_text).unwrap();
}
