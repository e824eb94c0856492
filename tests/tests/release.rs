//! `scripts/release` run for real (as CI runs it, once): the universal macOS tarball, the Linux
//! ones, their SHA-256 files, the service definitions (the systemd units and the macOS
//! LaunchDaemon's plist, parsed back) and the filled-in Homebrew formula. The
//! Mach-O headers of the macOS programs are read back: one fat file per program with an arm64
//! and an x86_64 slice, each linked against libSystem alone (no framework: notify's kqueue
//! backend, not FSEvents) and importing the macOS calls builderd makes.
//!
//! The first run builds three release targets (several minutes); `tests/run` has built them by
//! then through `scripts/macos-check`'s tools and the same target dir.

use std::path::{Path, PathBuf};
use std::process::Command;

use object::Object;
use object::read::macho::{FatArch, MachOFatFile32};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

const VERSION: &str = "0.0.0-test";

/// The release, made once per test process into a temp dir.
fn release() -> &'static Path {
    static OUT: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    OUT.get_or_init(|| {
        let out = tempfile::tempdir().unwrap();
        let o = Command::new(repo().join("scripts/release"))
            .arg(VERSION)
            .arg("--out")
            .arg(out.path())
            .arg("--url-base")
            .arg("https://example.invalid/dl")
            // The tree under test may hold uncommitted work; CI's is clean.
            .arg("--allow-dirty")
            .output()
            .expect("scripts/release runs");
        assert!(
            o.status.success(),
            "scripts/release failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        out
    })
    .path()
}

/// The files of a tarball: name -> bytes.
fn unpack(tarball: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(tarball)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e
                    .path()
                    .strip_prefix(dir.path())
                    .unwrap()
                    .display()
                    .to_string();
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

const TRIPLES: [&str; 3] = [
    "universal-apple-darwin",
    "x86_64-unknown-linux-gnu",
    "aarch64-unknown-linux-gnu",
];

#[test]
fn each_tarball_holds_both_programs_completions_and_readme_with_its_sha256() {
    let out = release();
    for t in TRIPLES {
        let name = format!("builderd-{VERSION}-{t}");
        let tarball = out.join(format!("{name}.tar.gz"));
        let sum = std::fs::read_to_string(out.join(format!("{name}.tar.gz.sha256"))).unwrap();
        let o = Command::new("sha256sum")
            .arg("--check")
            .current_dir(out)
            .arg(format!("{name}.tar.gz.sha256"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{sum}: {o:?}");
        let files = unpack(&tarball);
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        for f in [
            "bin/builderd",
            "bin/builderctl",
            "completions/builderctl.bash",
            "completions/_builderctl",
            "completions/builderctl.fish",
            "README.md",
        ] {
            assert!(
                names.contains(&format!("{name}/{f}").as_str()),
                "{f} not in {names:?}"
            );
        }
    }
}

/// Mach-O CPU types (mach/machine.h).
const CPU_ARM64: u32 = 0x0100_000c;
const CPU_X86_64: u32 = 0x0100_0007;

#[test]
fn the_macos_programs_are_universal_and_import_what_builderd_calls() {
    let files =
        unpack(&release().join(format!("builderd-{VERSION}-universal-apple-darwin.tar.gz")));
    let bin = |p: &str| &files[&format!("builderd-{VERSION}-universal-apple-darwin/bin/{p}")];
    for (program, wanted) in [
        // pthread_setugid_np: the root daemon acting as its user; getpeereid: the socket's
        // peer; kqueue/kevent: the file watcher.
        (
            "builderd",
            &["_pthread_setugid_np", "_getpeereid", "_kqueue", "_kevent"][..],
        ),
        ("builderctl", &["_getpeereid"][..]),
    ] {
        let data = bin(program).as_slice();
        let fat = MachOFatFile32::parse(data).unwrap_or_else(|e| panic!("{program}: {e}"));
        let mut cpus: Vec<u32> = fat.arches().iter().map(|a| a.cputype()).collect();
        cpus.sort();
        assert_eq!(cpus, [CPU_X86_64, CPU_ARM64], "{program}'s slices");
        for arch in fat.arches() {
            let slice = object::File::parse(arch.data(data).unwrap()).unwrap();
            let what = format!("{program} ({:?})", slice.architecture());
            let libs: std::collections::BTreeSet<String> = slice
                .imports()
                .unwrap()
                .iter()
                .map(|i| String::from_utf8_lossy(i.library()).into_owned())
                .filter(|l| !l.is_empty())
                .collect();
            // libSystem (and libiconv, which Rust's std links on Apple targets): no framework.
            assert!(
                libs.contains("/usr/lib/libSystem.B.dylib"),
                "{what}: {libs:?}"
            );
            for l in &libs {
                assert!(
                    l.starts_with("/usr/lib/") && !l.contains(".framework"),
                    "{what} links {l}"
                );
            }
            let imports: std::collections::BTreeSet<String> = slice
                .imports()
                .unwrap()
                .iter()
                .map(|i| String::from_utf8_lossy(i.name()).into_owned())
                .collect();
            for w in wanted {
                assert!(imports.contains(*w), "{what} does not import {w}");
            }
            assert!(
                !imports.iter().any(|i| i.starts_with("_FSEvent")),
                "{what} imports FSEvents"
            );
        }
    }
}

#[test]
fn the_linux_programs_are_for_their_architectures() {
    for (t, arch) in [
        ("x86_64-unknown-linux-gnu", object::Architecture::X86_64),
        ("aarch64-unknown-linux-gnu", object::Architecture::Aarch64),
    ] {
        let files = unpack(&release().join(format!("builderd-{VERSION}-{t}.tar.gz")));
        for p in ["builderd", "builderctl"] {
            let data = &files[&format!("builderd-{VERSION}-{t}/bin/{p}")];
            let f = object::File::parse(data.as_slice()).unwrap();
            assert_eq!(f.format(), object::BinaryFormat::Elf, "{t} {p}");
            assert_eq!(f.architecture(), arch, "{t} {p}");
        }
    }
}

#[test]
fn the_formula_is_filled_in_and_the_services_are_install_s() {
    let out = release();
    let formula = std::fs::read_to_string(out.join("homebrew/builderd.rb")).unwrap();
    let sum = std::fs::read_to_string(out.join(format!(
        "builderd-{VERSION}-universal-apple-darwin.tar.gz.sha256"
    )))
    .unwrap();
    let sha = sum.split_whitespace().next().unwrap();
    assert!(!formula.contains('@'), "placeholders left:\n{formula}");
    assert!(formula.contains(&format!("sha256 \"{sha}\"")), "{formula}");
    assert!(formula.contains(&format!(
        "url \"https://example.invalid/dl/v{VERSION}/builderd-{VERSION}-universal-apple-darwin.tar.gz\""
    )));
    assert!(formula.contains(&format!("version \"{VERSION}\"")));
    let o = Command::new("ruby")
        .arg("-c")
        .arg(out.join("homebrew/builderd.rb"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let system = std::fs::read_to_string(out.join("service/builderd-system.service.txt")).unwrap();
    let user = std::fs::read_to_string(out.join("service/builderd-user.service.txt")).unwrap();
    assert!(
        system.starts_with("# /etc/systemd/system/builderd.service\n"),
        "{system}"
    );
    assert!(
        system.contains("ExecStart=\"/usr/local/lib/builderd/builderd\" --config"),
        "{system}"
    );
    assert!(
        user.starts_with("# /home/USER/.config/systemd/user/builderd.service\n"),
        "{user}"
    );
    assert!(
        user.contains("ExecStart=\"/usr/local/bin/builderd\" --config \"/home/USER/.config/builderd/config.toml\""),
        "{user}"
    );
}

#[test]
fn the_launchd_plist_is_the_root_service_sudo_builderctl_install_writes_on_a_mac() {
    let path = release().join("service/org.builderd.builderd.plist");
    let v = plist::Value::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let d = v.as_dictionary().expect("a dictionary");
    let s = |k: &str| {
        d.get(k)
            .and_then(plist::Value::as_string)
            .map(str::to_owned)
    };
    assert_eq!(s("Label").as_deref(), Some("org.builderd.builderd"));
    let dir = "/Library/Application Support/org.builderd";
    let args: Vec<&str> = d["ProgramArguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_string().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            format!("{dir}/builderd").as_str(),
            "--config",
            &format!("{dir}/config.toml")
        ]
    );
    for k in ["RunAtLoad", "KeepAlive"] {
        assert_eq!(d[k].as_boolean(), Some(true), "{k}");
    }
    assert_eq!(
        s("StandardErrorPath").as_deref(),
        Some(format!("{dir}/logs/builderd.err.log").as_str())
    );
    let env = d["EnvironmentVariables"].as_dictionary().unwrap();
    let e = |k: &str| env.get(k).and_then(plist::Value::as_string);
    assert_eq!(e("HOME"), Some("/Users/USER"));
    assert_eq!(e("BUILDERD_OWNER_UID"), Some("501"));
    // Root's own directories, never the PATH of whoever ran the release.
    assert_eq!(e("PATH"), Some(builderd::config::ROOT_PATH));
    // Nothing of this Linux machine's own service leaked into it.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("/usr/local/lib/builderd") && !text.contains("/tmp/"),
        "{text}"
    );
}
