//! The service definitions builderd installs (a launchd plist on macOS, a systemd unit on Linux)
//! and the one narrow seam through which `launchctl` and `systemctl` are run.
//!
//! Every command goes through [`Runner`]: [`System`] runs it for real with stdin closed and
//! output captured, mapping a non-zero exit to [`RunError::Failed`]; tests use [`Recorder`] and
//! assert the exact command lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

pub const LABEL: &str = "org.builderd.builderd";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RunError {
    #[error("`{command}` could not be started: {reason}")]
    Spawn { command: String, reason: String },
    #[error("`{command}` failed with {code}: {stderr}")]
    Failed {
        command: String,
        code: String,
        stderr: String,
    },
}

/// Runs a command line.
pub trait Runner: Send + Sync {
    fn run(&self, argv: &[String]) -> Result<String, RunError>;
}

/// Runs commands for real.
pub struct System;

impl Runner for System {
    fn run(&self, argv: &[String]) -> Result<String, RunError> {
        let command = argv.join(" ");
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| RunError::Spawn {
                command: command.clone(),
                reason: e.to_string(),
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(RunError::Failed {
                command,
                code: out
                    .status
                    .code()
                    .map_or("a signal".into(), |c| format!("exit {c}")),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

/// Records command lines instead of running them; answers each with `Ok("")`.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<Vec<String>>>);

impl Runner for Recorder {
    fn run(&self, argv: &[String]) -> Result<String, RunError> {
        self.0.lock().expect("not poisoned").push(argv.to_vec());
        Ok(String::new())
    }
}

impl Recorder {
    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|a| a.join(" "))
            .collect()
    }
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// Which operating system's service manager to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    MacOs,
    Linux,
}

impl Os {
    pub fn current() -> Os {
        if cfg!(target_os = "macos") {
            Os::MacOs
        } else {
            Os::Linux
        }
    }
}

/// The nix-daemon's launchd labels: Determinate Nix's, then the upstream installer's.
pub const NIX_DAEMON_LABELS: [&str; 2] = ["systems.determinate.nix-daemon", "org.nixos.nix-daemon"];

/// The commands that restart the host's nix-daemon after nix.conf changed. On Linux only when
/// systemd knows a nix-daemon unit; `None` when there is nothing to restart.
pub fn nix_daemon_restart(os: Os, runner: &dyn Runner) -> Option<Vec<String>> {
    match os {
        // Determinate Nix runs its daemon under its own label; the upstream installer and
        // nix-darwin under org.nixos's. The one launchd knows is the one to restart.
        Os::MacOs => NIX_DAEMON_LABELS.iter().find_map(|label| {
            let target = format!("system/{label}");
            runner.run(&argv(&["launchctl", "print", &target])).ok()?;
            Some(argv(&["launchctl", "kickstart", "-k", &target]))
        }),
        Os::Linux => {
            if !Path::new("/run/systemd/system").exists() {
                return None;
            }
            let probe = argv(&["systemctl", "cat", "nix-daemon.service"]);
            runner.run(&probe).ok()?;
            Some(argv(&["systemctl", "restart", "nix-daemon.service"]))
        }
    }
}

/// What to install.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Absolute path of the builderd binary.
    pub program: PathBuf,
    /// Absolute path of the config.
    pub config: PathBuf,
    pub log_dir: PathBuf,
    /// Environment: PATH, HOME, DOCKER_HOST and the owner's uid as needed.
    pub env: BTreeMap<String, String>,
    /// Run as a system service (root) rather than the user's agent.
    pub system: bool,
    /// The user whose builder it is (for a system service: their uid).
    pub uid: u32,
}

impl Service {
    /// The launchd plist, made with the plist crate.
    pub fn plist(&self) -> Vec<u8> {
        use plist::{Dictionary, Value};
        let mut d = Dictionary::new();
        d.insert("Label".into(), LABEL.into());
        d.insert(
            "ProgramArguments".into(),
            Value::Array(vec![
                self.program.display().to_string().into(),
                "--config".into(),
                self.config.display().to_string().into(),
            ]),
        );
        d.insert("RunAtLoad".into(), true.into());
        d.insert("KeepAlive".into(), true.into());
        d.insert("ProcessType".into(), "Background".into());
        d.insert("ThrottleInterval".into(), Value::Integer(10.into()));
        d.insert(
            "StandardOutPath".into(),
            self.log_dir
                .join("builderd.out.log")
                .display()
                .to_string()
                .into(),
        );
        d.insert(
            "StandardErrorPath".into(),
            self.log_dir
                .join("builderd.err.log")
                .display()
                .to_string()
                .into(),
        );
        let env: Dictionary = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        d.insert("EnvironmentVariables".into(), Value::Dictionary(env));
        let mut out = Vec::new();
        Value::Dictionary(d)
            .to_writer_xml(&mut out)
            .expect("writing to memory");
        out
    }

    /// The systemd unit. Paths in `ExecStart=` are quoted as systemd reads them.
    pub fn unit(&self) -> String {
        let mut env = String::new();
        for (k, v) in &self.env {
            env.push_str(&format!("Environment=\"{k}={}\"\n", v.replace('"', "\\\"")));
        }
        format!(
            "[Unit]\nDescription=builderd: the Nix remote builder in Docker\nWants=docker.service\nAfter=docker.service network-online.target\n\n\
             [Service]\nType=simple\nExecStart={} --config {}\nRestart=always\nRestartSec=2\n{env}\n\
             [Install]\nWantedBy={}\n",
            systemd_quote(&self.program.display().to_string()),
            systemd_quote(&self.config.display().to_string()),
            if self.system {
                "multi-user.target"
            } else {
                "default.target"
            }
        )
    }

    /// Where the definition goes.
    pub fn path(&self, os: Os, home: &Path) -> PathBuf {
        match (os, self.system) {
            (Os::MacOs, true) => format!("/Library/LaunchDaemons/{LABEL}.plist").into(),
            (Os::MacOs, false) => home.join(format!("Library/LaunchAgents/{LABEL}.plist")),
            (Os::Linux, true) => "/etc/systemd/system/builderd.service".into(),
            (Os::Linux, false) => home.join(".config/systemd/user/builderd.service"),
        }
    }

    fn domain(&self) -> String {
        if self.system {
            "system".into()
        } else {
            format!("gui/{}", self.uid)
        }
    }

    /// The commands that load the service, after its file is written.
    pub fn install_commands(&self, os: Os, path: &Path) -> Vec<Vec<String>> {
        let p = path.display().to_string();
        match os {
            Os::MacOs => {
                let domain = self.domain();
                let target = format!("{domain}/{LABEL}");
                // A disabled label makes bootstrap fail (error 5), so enable comes first.
                vec![
                    argv(&["launchctl", "bootout", &target]),
                    argv(&["launchctl", "enable", &target]),
                    argv(&["launchctl", "bootstrap", &domain, &p]),
                    argv(&["launchctl", "kickstart", "-k", &target]),
                ]
            }
            Os::Linux => {
                let user: &[&str] = if self.system { &[] } else { &["--user"] };
                let cmd = |rest: &[&str]| {
                    let mut v = vec!["systemctl"];
                    v.extend_from_slice(user);
                    v.extend_from_slice(rest);
                    argv(&v)
                };
                vec![
                    cmd(&["daemon-reload"]),
                    cmd(&["enable", "--now", "builderd.service"]),
                ]
            }
        }
    }

    /// The commands that stop and unload the service, before its file is removed.
    pub fn uninstall_commands(&self, os: Os) -> Vec<Vec<String>> {
        match os {
            Os::MacOs => vec![argv(&[
                "launchctl",
                "bootout",
                &format!("{}/{LABEL}", self.domain()),
            ])],
            Os::Linux => {
                let mut v = vec!["systemctl"];
                if !self.system {
                    v.push("--user");
                }
                v.extend(["disable", "--now", "builderd.service"]);
                vec![argv(&v)]
            }
        }
    }

    /// Writes the definition through `write` (mode 0644; a system one in root's directory, so
    /// root's, as launchd requires) after making the log directory, then loads it. `bootout` of
    /// a job that is not loaded fails; that one failure is expected and ignored. `bootout`
    /// returns before the old job is gone, and a `bootstrap` meanwhile fails: it is tried again
    /// for a few seconds.
    pub fn install(
        &self,
        os: Os,
        home: &Path,
        runner: &dyn Runner,
        write: WriteFile<'_>,
    ) -> Result<PathBuf, InstallError> {
        let path = self.path(os, home);
        let bytes = match os {
            Os::MacOs => self.plist(),
            Os::Linux => self.unit().into_bytes(),
        };
        std::fs::create_dir_all(&self.log_dir)
            .map_err(|e| InstallError::Write(self.log_dir.clone(), e.to_string()))?;
        write(&path, &bytes, 0o644).map_err(|e| InstallError::Write(path.clone(), e))?;
        for (i, cmd) in self.install_commands(os, &path).iter().enumerate() {
            let retries = if os == Os::MacOs && cmd[1] == "bootstrap" {
                20
            } else {
                0
            };
            let mut attempt = 0;
            loop {
                match runner.run(cmd) {
                    Ok(_) => break,
                    Err(_) if os == Os::MacOs && i == 0 => break,
                    Err(_) if attempt < retries => {
                        attempt += 1;
                        std::thread::sleep(std::time::Duration::from_millis(250));
                    }
                    Err(e) => return Err(InstallError::Run(e)),
                }
            }
        }
        Ok(path)
    }

    pub fn uninstall(
        &self,
        os: Os,
        home: &Path,
        runner: &dyn Runner,
    ) -> Result<PathBuf, InstallError> {
        let path = self.path(os, home);
        for cmd in self.uninstall_commands(os) {
            // Not loaded is fine: the goal is that it is not running.
            let _ = runner.run(&cmd);
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(path),
            Err(e) => Err(InstallError::Write(path, e.to_string())),
        }
    }
}

/// Writes a file atomically with exactly the mode given, owned as its directory is: the
/// caller's atomic writer (builderd's `fsutil::write_atomic`), so that there is one.
pub type WriteFile<'a> = &'a (dyn Fn(&Path, &[u8], u32) -> Result<(), String> + Sync);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InstallError {
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, String),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// One `ExecStart=` argument, quoted: in double quotes, with `\\` and `"` escaped, and `%` and
/// `$` doubled so that systemd expands neither.
fn systemd_quote(arg: &str) -> String {
    let mut q = String::from("\"");
    for c in arg.chars() {
        match c {
            '\\' | '"' => {
                q.push('\\');
                q.push(c);
            }
            '%' => q.push_str("%%"),
            '$' => q.push_str("$$"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_start_arguments_are_quoted_as_systemd_reads_them() {
        assert_eq!(
            systemd_quote("/Users/me/Library/Application Support/builderd/config.toml"),
            "\"/Users/me/Library/Application Support/builderd/config.toml\""
        );
        assert_eq!(systemd_quote(r#"a"b\c%d$e"#), r#""a\"b\\c%%d$$e""#);
    }

    fn service(system: bool) -> Service {
        let mut env = BTreeMap::new();
        env.insert("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into());
        env.insert("HOME".into(), "/Users/me".into());
        Service {
            program: "/usr/local/bin/builderd".into(),
            config: "/Users/me/.config/builderd/config.toml".into(),
            log_dir: "/Users/me/Library/Logs/builderd".into(),
            env,
            system,
            uid: 501,
        }
    }

    #[test]
    fn plist_parses_back_with_every_key() {
        let bytes = service(false).plist();
        let v: plist::Value = plist::from_bytes(&bytes).unwrap();
        let d = v.as_dictionary().unwrap();
        assert_eq!(d["Label"].as_string(), Some(LABEL));
        let args: Vec<&str> = d["ProgramArguments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "/usr/local/bin/builderd",
                "--config",
                "/Users/me/.config/builderd/config.toml"
            ]
        );
        assert_eq!(d["RunAtLoad"].as_boolean(), Some(true));
        assert_eq!(d["KeepAlive"].as_boolean(), Some(true));
        assert_eq!(d["ProcessType"].as_string(), Some("Background"));
        assert_eq!(d["ThrottleInterval"].as_signed_integer(), Some(10));
        assert!(
            d["StandardErrorPath"]
                .as_string()
                .unwrap()
                .starts_with("/Users/me/Library/Logs/builderd/")
        );
        let env = d["EnvironmentVariables"].as_dictionary().unwrap();
        assert_eq!(env["HOME"].as_string(), Some("/Users/me"));
        assert!(env["PATH"].as_string().unwrap().contains("/usr/local/bin"));
    }

    #[test]
    fn plist_escapes_what_it_carries() {
        let mut s = service(false);
        s.config = "/Users/me/a <&> b/config.toml".into();
        let v: plist::Value = plist::from_bytes(&s.plist()).unwrap();
        assert_eq!(
            v.as_dictionary().unwrap()["ProgramArguments"]
                .as_array()
                .unwrap()[2]
                .as_string(),
            Some("/Users/me/a <&> b/config.toml")
        );
    }

    #[test]
    fn launchctl_command_lines() {
        let s = service(false);
        let path = s.path(Os::MacOs, Path::new("/Users/me"));
        assert_eq!(
            path,
            PathBuf::from("/Users/me/Library/LaunchAgents/org.builderd.builderd.plist")
        );
        let lines: Vec<String> = s
            .install_commands(Os::MacOs, &path)
            .iter()
            .map(|a| a.join(" "))
            .collect();
        assert_eq!(
            lines,
            [
                "launchctl bootout gui/501/org.builderd.builderd",
                "launchctl enable gui/501/org.builderd.builderd",
                "launchctl bootstrap gui/501 /Users/me/Library/LaunchAgents/org.builderd.builderd.plist",
                "launchctl kickstart -k gui/501/org.builderd.builderd",
            ]
        );
        let sys = service(true);
        assert_eq!(
            sys.uninstall_commands(Os::MacOs)[0].join(" "),
            "launchctl bootout system/org.builderd.builderd"
        );
        assert_eq!(
            sys.path(Os::MacOs, Path::new("/Users/me")),
            PathBuf::from("/Library/LaunchDaemons/org.builderd.builderd.plist")
        );
    }

    /// Writes as the caller's atomic writer would, and records the mode asked for.
    fn plain_write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(path.parent().unwrap()).map_err(|e| e.to_string())?;
        std::fs::write(path, bytes).map_err(|e| e.to_string())?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn systemctl_command_lines_and_install_through_the_seam() {
        let d = tempfile::tempdir().unwrap();
        let s = service(false);
        let rec = Recorder::default();
        let path = s.install(Os::Linux, d.path(), &rec, &plain_write).unwrap();
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("ExecStart=\"/usr/local/bin/builderd\" --config \"")
        );
        assert_eq!(
            rec.lines(),
            [
                "systemctl --user daemon-reload",
                "systemctl --user enable --now builderd.service"
            ]
        );
        s.uninstall(Os::Linux, d.path(), &rec).unwrap();
        assert!(!path.exists());
        assert_eq!(
            rec.lines()[2],
            "systemctl --user disable --now builderd.service"
        );
    }

    /// Answers like launchctl on a Mac that knows only `known` labels, and fails `bootstrap`
    /// `busy` times (a job still being booted out), recording every line.
    struct FakeLaunchctl {
        known: Vec<&'static str>,
        busy: Mutex<u32>,
        lines: Recorder,
    }

    impl Runner for FakeLaunchctl {
        fn run(&self, argv: &[String]) -> Result<String, RunError> {
            self.lines.run(argv)?;
            let fail = || {
                Err(RunError::Failed {
                    command: argv.join(" "),
                    code: "exit 5".into(),
                    stderr: "Bootstrap failed: 5: Input/output error".into(),
                })
            };
            match argv[1].as_str() {
                "print" if !self.known.iter().any(|l| argv[2].ends_with(l)) => fail(),
                "bootstrap" => {
                    let mut busy = self.busy.lock().unwrap();
                    if *busy > 0 {
                        *busy -= 1;
                        return fail();
                    }
                    Ok(String::new())
                }
                _ => Ok(String::new()),
            }
        }
    }

    #[test]
    fn determinate_and_upstream_nix_daemon_labels() {
        for (known, want) in [
            (
                vec!["systems.determinate.nix-daemon"],
                Some("launchctl kickstart -k system/systems.determinate.nix-daemon"),
            ),
            (
                vec!["org.nixos.nix-daemon"],
                Some("launchctl kickstart -k system/org.nixos.nix-daemon"),
            ),
            (vec![], None),
        ] {
            let fake = FakeLaunchctl {
                known,
                busy: Mutex::new(0),
                lines: Recorder::default(),
            };
            let got = nix_daemon_restart(Os::MacOs, &fake).map(|a| a.join(" "));
            assert_eq!(got.as_deref(), want);
        }
    }

    #[test]
    fn launchd_install_writes_0644_makes_the_log_dir_and_retries_bootstrap() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let mut s = service(false);
        s.log_dir = d.path().join("logs/builderd");
        let fake = FakeLaunchctl {
            known: vec![],
            busy: Mutex::new(3),
            lines: Recorder::default(),
        };
        let path = s.install(Os::MacOs, d.path(), &fake, &plain_write).unwrap();
        assert!(s.log_dir.is_dir());
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o644);
        let lines = fake.lines.lines();
        assert_eq!(
            lines.iter().filter(|l| l.contains(" bootstrap ")).count(),
            4
        );
        assert_eq!(lines[1], "launchctl enable gui/501/org.builderd.builderd");
        assert_eq!(
            lines.last().unwrap(),
            "launchctl kickstart -k gui/501/org.builderd.builderd"
        );
    }

    #[test]
    fn nix_daemon_restart_lines() {
        let rec = Recorder::default();
        assert_eq!(
            nix_daemon_restart(Os::MacOs, &rec).unwrap().join(" "),
            "launchctl kickstart -k system/systems.determinate.nix-daemon"
        );
        // On Linux only where systemd runs and knows the unit.
        let linux = nix_daemon_restart(Os::Linux, &rec);
        if Path::new("/run/systemd/system").exists() {
            assert_eq!(
                linux.unwrap().join(" "),
                "systemctl restart nix-daemon.service"
            );
        } else {
            assert_eq!(linux, None);
        }
    }
}
