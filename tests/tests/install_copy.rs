//! `sudo builderctl install`'s copy step, for real: root copies the user's `builderd` (the one
//! next to their `builderctl`) and their config into the system directory, below a temporary
//! prefix (`--prefix`, honoured by test builds only) so that no service is installed on the
//! machine running the tests. The sources belong to a real unprivileged user, who could make
//! them links to root's files or FIFOs.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use builderd_tests::{TestUser, bin_dir};

struct Setup {
    dir: tempfile::TempDir,
    user: TestUser,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::Builder::new().prefix("bdi").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join("bin")).unwrap();
        // builderctl must be a file of its own there: it finds builderd next to its real path.
        std::fs::copy(bin_dir().join("builderctl"), home.join("bin/builderctl")).unwrap();
        let user = TestUser::new(&home);
        user.give(&home);
        let s = Setup { dir, user };
        s.user.sh(&format!(
            "printf '#!/bin/sh\\necho the user builderd\\n' > {0}/bin/builderd && chmod 755 {0}/bin/builderd && mkdir -p {0}/.config/builderd && printf 'port = 2345\\n' > {1}",
            home.display(),
            s.config().display()
        ));
        s
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn config(&self) -> PathBuf {
        self.home().join(".config/builderd/config.toml")
    }

    /// The system directory below the prefix.
    fn system(&self) -> PathBuf {
        self.dir.path().join("prefix/usr/local/lib/builderd")
    }

    /// `builderctl install --prefix` as root, with the user's builderctl and config.
    fn install(&self) -> Result<String, String> {
        self.install_with(&[])
    }

    /// The same as `sudo builderctl install` run by the user: for them.
    fn sudo_install(&self) -> Result<String, String> {
        let uid = self.user.uid.to_string();
        self.install_with(&[("SUDO_UID", &uid), ("SUDO_USER", &self.user.name)])
    }

    fn install_with(&self, env: &[(&str, &str)]) -> Result<String, String> {
        let o = Command::new(self.home().join("bin/builderctl"))
            .envs(env.iter().copied())
            .arg("--config")
            .arg(self.config())
            .args(["install", "--prefix"])
            .arg(self.dir.path().join("prefix"))
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        if o.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }
}

fn owner_mode(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.mode() & 0o7777)
}

#[test]
fn install_copies_the_users_binary_and_config_as_roots_files() {
    let s = Setup::new();
    let out = s.install().unwrap();
    assert!(out.contains("copied builderd and the config"), "{out}");
    let sys = s.system();
    assert_eq!(owner_mode(&sys), (0, 0o755));
    assert_eq!(owner_mode(&sys.join("logs")), (0, 0o755));
    assert_eq!(owner_mode(&sys.join("builderd")), (0, 0o755));
    assert_eq!(owner_mode(&sys.join("config.toml")), (0, 0o644));
    assert_eq!(
        std::fs::read(sys.join("builderd")).unwrap(),
        std::fs::read(s.home().join("bin/builderd")).unwrap()
    );
    let copy = std::fs::read_to_string(sys.join("config.toml")).unwrap();
    assert!(
        copy.starts_with("# builderd's root service reads this copy of")
            && copy.ends_with("\nport = 2345\n"),
        "{copy}"
    );
    assert_eq!(
        builderd::config::Config::load(&sys.join("config.toml"))
            .unwrap()
            .port,
        2345
    );
    // A link to a file the user may read (a config kept elsewhere, home-manager's) is copied.
    s.user.sh(&format!(
        "printf 'port = 2346\\n' > {0}/elsewhere.toml && ln -sf {0}/elsewhere.toml {1}",
        s.home().display(),
        s.config().display()
    ));
    s.install().unwrap();
    assert!(
        std::fs::read_to_string(sys.join("config.toml"))
            .unwrap()
            .ends_with("\nport = 2346\n")
    );
}

#[test]
fn a_source_the_user_swapped_for_a_link_to_roots_file_or_a_fifo_is_refused() {
    let s = Setup::new();
    s.install().unwrap();
    let sys = s.system();
    let before = (
        std::fs::read(sys.join("builderd")).unwrap(),
        std::fs::read(sys.join("config.toml")).unwrap(),
    );
    // A file only root may read (one a config could be: builderctl itself loads it first).
    let secret = s.dir.path().join("secret");
    std::fs::write(&secret, "# root's secret\nport = 2399\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cases = [
        (s.config(), format!("ln -sf {} {{}}", secret.display())),
        (
            s.home().join("bin/builderd"),
            format!("ln -sf {} {{}}", secret.display()),
        ),
        // (builderctl reads the config itself before the copy: the FIFO is the binary.)
        (s.home().join("bin/builderd"), "mkfifo {}".to_string()),
        (
            s.home().join("bin/builderd"),
            "ln -sf /dev/zero {}".to_string(),
        ),
    ];
    for (path, how) in cases {
        let keep = s.home().join("kept");
        s.user.sh(&format!(
            "cp -P {p} {k} && rm -f {p} && {}",
            how.replace("{}", &path.display().to_string()),
            p = path.display(),
            k = keep.display()
        ));
        let e = s.install().unwrap_err();
        assert!(
            e.contains(&format!("cannot copy {}", path.display()))
                && (e.contains("Permission denied") || e.contains("not a regular file")),
            "{how}: {e}"
        );
        for name in ["builderd", "config.toml"] {
            let now = std::fs::read(sys.join(name)).unwrap();
            assert!(
                !String::from_utf8_lossy(&now).contains("root's secret"),
                "{how}: root's file was copied into {name}"
            );
        }
        assert_eq!(
            (
                std::fs::read(sys.join("builderd")).unwrap(),
                std::fs::read(sys.join("config.toml")).unwrap(),
            ),
            before,
            "{how}: the copies changed"
        );
        s.user.sh(&format!(
            "rm -f {p} && mv {k} {p}",
            p = path.display(),
            k = keep.display()
        ));
    }
}

/// The copy is checked as the service serving the user will read it: a value it would refuse
/// (root's directories as the state dir, a system file as the machines file, another engine)
/// stops the install before anything is written, rather than leaving a service that restarts in
/// a loop.
#[test]
fn a_config_the_service_would_refuse_is_not_installed() {
    let s = Setup::new();
    let out = s.sudo_install().unwrap();
    assert!(out.contains("copied builderd and the config"), "{out}");
    let sys = s.system();
    let before = std::fs::read(sys.join("config.toml")).unwrap();
    let cases = [
        ("state_dir", "state_dir = \"/etc\""),
        (
            "machines_file",
            "[registration]\nmachines_file = \"/etc/passwd\"",
        ),
        ("docker_host", "docker_host = \"unix:///tmp/theirs.sock\""),
    ];
    for (key, line) in cases {
        s.user
            .sh(&format!("printf '{line}\\n' > {}", s.config().display()));
        let e = s.sudo_install().unwrap_err();
        assert!(
            e.contains(&format!("`{key}`")) && e.contains("nothing was installed"),
            "{line}: {e}"
        );
        assert_eq!(
            std::fs::read(sys.join("config.toml")).unwrap(),
            before,
            "{line}: the copy changed"
        );
    }
}
