//! Foreign systems, the Linux twin of a Mac's Rosetta: on Apple Silicon the builder is arm64 and
//! x86_64 programs run through Docker Desktop's Rosetta handler in the kernel's binfmt_misc; on
//! this x86_64 host, aarch64 programs run through qemu-user-static's handler, registered with the
//! same `F` flag (the interpreter is opened at registration, so it works inside containers and
//! Nix's sandbox). The builder must advertise a foreign system exactly when its programs run.
//!
//! binfmt_misc is the host kernel's, shared by every container: this suite is one test, in its
//! own test binary, and puts every handler back as it found it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use builderd_tests::{Env, skip_docker};

const BINFMT: &str = "/proc/sys/fs/binfmt_misc";
/// The handler this test registers. Named `qemu-…` as Debian's are, which is how the builder
/// tells qemu from Rosetta.
const HANDLER: &str = "qemu-aarch64-builderd-test";

/// The host's binfmt_misc while the test runs: other aarch64 handlers disabled, ours removed at
/// the end, theirs enabled again.
struct Binfmt {
    disabled: Vec<PathBuf>,
}

impl Binfmt {
    fn without_aarch64() -> Binfmt {
        if !Path::new(BINFMT).join("register").exists() {
            let st = std::process::Command::new("mount")
                .args(["-t", "binfmt_misc", "binfmt_misc", BINFMT])
                .status()
                .expect("mount runs");
            assert!(
                st.success(),
                "cannot mount binfmt_misc at {BINFMT} (the test runs as root)"
            );
        }
        let _ = std::fs::write(Path::new(BINFMT).join(HANDLER), "-1");
        let mut disabled = Vec::new();
        for e in std::fs::read_dir(BINFMT).unwrap().flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            // The aarch64 ELF magic: machine 0xb7.
            if text.starts_with("enabled")
                && text.contains("magic 7f454c460201010000000000000000000200b700")
            {
                std::fs::write(e.path(), "0").unwrap();
                disabled.push(e.path());
            }
        }
        Binfmt { disabled }
    }

    fn register_qemu(&self) {
        let qemu = "/usr/bin/qemu-aarch64-static";
        assert!(
            Path::new(qemu).exists(),
            "{qemu} is missing: tests/run installs qemu-user-static"
        );
        let line = format!(
            ":{HANDLER}:M::\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:{qemu}:F"
        );
        std::fs::write(Path::new(BINFMT).join("register"), line).unwrap();
        let state = std::fs::read_to_string(Path::new(BINFMT).join(HANDLER)).unwrap();
        assert!(
            state.starts_with("enabled") && state.contains("flags: F"),
            "{state}"
        );
    }
}

impl Drop for Binfmt {
    fn drop(&mut self) {
        let _ = std::fs::write(Path::new(BINFMT).join(HANDLER), "-1");
        for p in &self.disabled {
            let _ = std::fs::write(p, "1");
        }
    }
}

/// An aarch64 program Nix can use as a builder: Debian's arm64 `bash-static`, which tests/run
/// extracts. (busybox would not do: it picks its applet from argv[0], a store path.)
fn aarch64_bash() -> PathBuf {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-fixtures/bash-static-arm64");
    assert!(
        p.is_file(),
        "{} is missing: tests/run downloads Debian's arm64 bash-static there",
        p.display()
    );
    p.canonicalize().unwrap()
}

fn machines_systems(env: &Env) -> String {
    let m = std::fs::read_to_string(env.path("etc/nix/machines")).unwrap();
    let line = m
        .lines()
        .find(|l| l.starts_with("ssh-ng://"))
        .unwrap_or_else(|| panic!("no machines line: {m}"));
    line.split(' ').nth(1).unwrap().to_string()
}

#[test]
fn a_foreign_system_is_advertised_exactly_when_it_runs_and_builds_sandboxed() {
    if skip_docker() {
        return;
    }
    let bash = aarch64_bash();
    let binfmt = Binfmt::without_aarch64();
    let env = Env::new("");

    // No handler: aarch64 programs do not run, so aarch64-linux is not advertised anywhere.
    env.up();
    let st = env.status();
    assert_eq!(
        st["builder"]["systems"],
        serde_json::json!(["x86_64-linux"])
    );
    assert_eq!(
        st["builder"]["platforms"],
        serde_json::json!([{"system": "x86_64-linux", "how": "native"}])
    );
    assert_eq!(machines_systems(&env), "x86_64-linux");
    let conf = env.docker(&["exec", &env.name, "cat", "/etc/nix/nix.conf"]);
    assert!(!String::from_utf8_lossy(&conf.stdout).contains("extra-platforms"));

    // qemu's handler with the F flag: the builder finds aarch64 running at its next start.
    binfmt.register_qemu();
    env.ctl_ok(&["down"]);
    env.up();
    let st = env.wait_status(Duration::from_secs(30), "aarch64-linux advertised", |s| {
        s["builder"]["systems"] == serde_json::json!(["x86_64-linux", "aarch64-linux"])
    });
    assert_eq!(
        st["builder"]["platforms"],
        serde_json::json!([
            {"system": "x86_64-linux", "how": "native"},
            {"system": "aarch64-linux", "how": "qemu"}
        ])
    );
    assert_eq!(machines_systems(&env), "x86_64-linux,aarch64-linux");
    let conf = env.docker(&["exec", &env.name, "cat", "/etc/nix/nix.conf"]);
    assert!(
        String::from_utf8_lossy(&conf.stdout).contains("extra-platforms = aarch64-linux\n"),
        "{}",
        String::from_utf8_lossy(&conf.stdout)
    );
    let human = env.ctl_ok(&["status"]);
    assert!(
        human.contains("x86_64-linux (native), aarch64-linux (qemu)"),
        "{human}"
    );

    // A real aarch64 derivation through the machines file, sandboxed: its builder is an
    // aarch64 bash, so it ran as aarch64.
    let builder = bash.display().to_string();
    let text = env.nix_build_for(
        &env.path("root/.ssh/config"),
        "aarch64",
        "aarch64-linux",
        &builder,
    );
    assert!(text.contains("machtype=aarch64"), "{text}");
    // And x86_64 still builds.
    let text = env.nix_build(&env.path("root/.ssh/config"), "x86_64");
    assert!(text.contains("machtype=x86_64"), "{text}");

    // doctor --build-test runs an aarch64 program inside an aarch64 build, for real.
    let doctor = |env: &Env| {
        let o = env.ctl(&["doctor", "--build-test"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = doctor(&env);
    let line = |out: &str, system: &str| {
        out.lines()
            .find(|l| l.contains("build") && l.contains(system))
            .unwrap_or_else(|| panic!("no build line for {system}:\n{out}"))
            .to_string()
    };
    assert!(line(&out, "aarch64-linux").starts_with("PASS"), "{out}");
    assert!(line(&out, "aarch64-linux").contains("(qemu)"), "{out}");
    assert!(line(&out, "x86_64-linux").starts_with("PASS"), "{out}");
    // The handler gone while the builder still advertises aarch64: the build check sees that
    // no aarch64 program runs any more.
    let _ = std::fs::write(Path::new(BINFMT).join(HANDLER), "-1");
    let out = doctor(&env);
    let l = line(&out, "aarch64-linux");
    assert!(l.starts_with("FAIL"), "{out}");
}
