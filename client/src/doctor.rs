//! `builderctl doctor`: every check, each PASS, WARN or FAIL with the exact fix.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use builderd::client;
use builderd::config::Config;
use builderd::protocol::{Reply, Request, State, Status};
use builderd::registration::{Target, block, nix_conf, resolve_target};

use crate::exit;
use crate::output::{Out, human_bytes};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub message: String,
    pub fix: Option<String>,
}

fn pass(name: &'static str, message: impl Into<String>) -> Check {
    Check {
        name,
        verdict: Verdict::Pass,
        message: message.into(),
        fix: None,
    }
}

fn warn(name: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        verdict: Verdict::Warn,
        message: message.into(),
        fix: Some(fix.into()),
    }
}

fn fail(name: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        verdict: Verdict::Fail,
        message: message.into(),
        fix: Some(fix.into()),
    }
}

const KEY_REFUSED: &str = "the builder refused the key: ssh offers the .pub file beside the private key, so both must be one pair (see `keys`)";

/// A 132-byte static x86_64 Linux program that exits with status 42.
const X86_64_PROBE: &str = "f0VMRgIBAQAAAAAAAAAAAAIAPgABAAAAeABAAAAAAABAAAAAAAAAAAAAAAAAAAAAAAAAAEAAOAABAAAAAAAAAAEAAAAFAAAAAAAAAAAAAAAAAEAAAAAAAAAAQAAAAAAAhAAAAAAAAACEAAAAAAAAAAAQAAAAAAAAvyoAAAC4PAAAAA8F";

/// root's ssh_config among the configured ones: the one under root's home, else the last.
fn root_ssh_config(cfg: &Config) -> Option<PathBuf> {
    let list = &cfg.registration.ssh_config;
    list.iter()
        .find(|p| p.starts_with("/var/root") || p.starts_with("/root"))
        .or(list.last())
        .cloned()
}

/// Runs `command` on the builder through the pinned-key ssh command line.
fn on_builder(cfg: &Config, command: &str) -> Result<String, String> {
    let host_pub = cfg.volume_dir().join("id_ed25519.pub");
    let key = builderd::keys::read_public(&host_pub).map_err(|e| e.to_string())?;
    let kh = cfg.state_dir.join("ssh_known_hosts");
    let line = format!("{} {}\n", cfg.alias(), builderd::keys::key_line(&key));
    builderd::fsutil::write_atomic(&kh, line.as_bytes(), 0o600).map_err(|e| e.to_string())?;
    let mut argv = crate::service::ssh_argv(cfg, &kh, &[command.to_string()]);
    argv.splice(
        1..1,
        ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"].map(String::from),
    );
    let o = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ssh: {e}"))?;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if o.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{}{}",
            out.trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

async fn daemon_status(cfg: &Config) -> Result<Status, String> {
    match client::request(&cfg.socket, Request::Status, |_| {}).await {
        Ok(Reply::Status(s)) => Ok(*s),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

pub async fn run(cfg: &Config, build_test: bool, out: &Out) -> u8 {
    let mut checks = Vec::new();
    let status = daemon_status(cfg).await;
    let up = status.as_ref().is_ok_and(|s| s.healthy);

    // The daemon and the builder.
    match &status {
        Ok(s) if s.healthy && s.state == State::Up => checks.push(pass(
            "builder",
            format!("up and healthy on 127.0.0.1:{}", s.port),
        )),
        Ok(s) if s.healthy => checks.push(warn(
            "builder",
            format!(
                "healthy on 127.0.0.1:{}, but {}",
                s.port,
                s.reason
                    .as_deref()
                    .unwrap_or("degraded")
                    .lines()
                    .next()
                    .unwrap_or("")
            ),
            "see the checks below",
        )),
        Ok(s) if s.desired == "down" => checks.push(fail(
            "builder",
            "the builder is down",
            "run `builderctl up`",
        )),
        Ok(s) => {
            let container = s
                .container
                .as_ref()
                .map(|c| format!("container {}", c.state))
                .unwrap_or_else(|| "no container".into());
            checks.push(fail(
                "builder",
                format!(
                    "state {} ({container}): {}",
                    s.state.as_str(),
                    s.reason.as_deref().unwrap_or("not healthy").lines().next().unwrap_or("")
                ),
                "see `builderctl logs` and `builderctl logs --container`; `builderctl up` starts it again",
            ))
        }
        Err(e) => {
            checks.push(fail(
                "daemon",
                format!("not reachable: {e}"),
                "run `builderctl up` (or `sudo builderctl install` to keep it running)",
            ));
            // Without the daemon, ask the engine about the container directly.
            let ep = builderd::docker::resolve_endpoint(cfg);
            if let Ok(d) = builderd::docker::connect(&ep).await
                && let Ok(Some(c)) = builderd::docker::find(
                    &d,
                    &cfg.container_name,
                    &builderd::docker::owner_id(&cfg.state_dir),
                )
                .await
                && !c.running
            {
                checks.push(fail(
                    "builder",
                    format!("container {} is {}", cfg.container_name, c.state),
                    "run `builderctl up`: it starts the container and keeps it running",
                ));
            }
        }
    }

    // The engine.
    let ep = builderd::docker::resolve_endpoint(cfg);
    match builderd::docker::connect(&ep).await {
        Ok(_) => checks.push(pass(
            "docker",
            format!("reachable at {} (from {})", ep.host, ep.source),
        )),
        Err(e) => checks.push(fail(
            "docker",
            format!("not reachable at {} (from {}): {e}", ep.host, ep.source),
            "start Docker Desktop (or Colima/OrbStack), or set `docker_host` in the config to the engine's socket",
        )),
    }

    // Rosetta and x86_64.
    checks.push(rosetta_check());
    if up {
        let cmd = format!(
            "echo {X86_64_PROBE} | base64 -d > /tmp/builderd-x86-probe && chmod +x /tmp/builderd-x86-probe; /tmp/builderd-x86-probe; echo \"exit=$?\"; rm -f /tmp/builderd-x86-probe"
        );
        match on_builder(cfg, &cmd) {
            Ok(o) if o.contains("exit=42") => {
                let how = status
                    .as_ref()
                    .ok()
                    .and_then(|s| s.builder.as_ref())
                    .map(|b| b.x86_64.clone())
                    .unwrap_or_default();
                checks.push(pass("x86_64", format!("the builder runs x86_64 programs ({how})")))
            }
            Ok(o) => checks.push(fail(
                "x86_64",
                format!("an x86_64 program did not run on the builder ({})", o.trim()),
                "turn on \"Use Rosetta for x86_64/amd64 emulation on Apple Silicon\" in Docker Desktop's settings, then `builderctl down && builderctl up`",
            )),
            Err(e) => {
                let fix = if e.contains("Permission denied") {
                    KEY_REFUSED
                } else {
                    "see `builderctl status` and `builderctl logs`"
                };
                checks.push(fail("x86_64", format!("could not run the probe: {e}"), fix))
            }
        }
    }

    // The port.
    let ours = status
        .as_ref()
        .is_ok_and(|s| s.container.as_ref().is_some_and(|c| c.state == "running"));
    if builderd::port::is_free(cfg.port) {
        checks.push(pass("port", format!("127.0.0.1:{} is free", cfg.port)));
    } else if ours {
        checks.push(pass(
            "port",
            format!("127.0.0.1:{} is the builder's", cfg.port),
        ));
    } else {
        let holder = builderd::port::holder(cfg.port).unwrap_or_else(|| "another process".into());
        checks.push(fail(
            "port",
            format!("127.0.0.1:{} is taken by {holder}", cfg.port),
            format!(
                "stop {holder}, or set `port` in {} to a free port",
                cfg.file.display()
            ),
        ));
    }

    // The key files.
    match builderd::keys::load_client_keys(&cfg.public_key, &cfg.private_key) {
        Ok(k) => checks.push(pass(
            "keys",
            format!("{} ({})", cfg.public_key.display(), k.fingerprint),
        )),
        Err(e) => checks.push(fail(
            "keys",
            e.to_string(),
            "fix the key files named above (`ssh-keygen -t ed25519` makes a new pair), then `builderctl up`",
        )),
    }

    // The host's Nix against the machines line's URI form.
    let version = builderd::hostnix::host_version();
    let machines = std::fs::read_to_string(&cfg.registration.machines_file).unwrap_or_default();
    let uri = block::body(&machines, &cfg.container_name)
        .and_then(|b| b.first().cloned())
        .and_then(|l| l.split_whitespace().next().map(str::to_string));
    match (&uri, version) {
        (None, _) => checks.push(if up {
            fail(
                "nix-uri",
                format!(
                    "{} has no builderd line",
                    cfg.registration.machines_file.display()
                ),
                "run `builderctl up`; see `builderctl status` for why it could not be written",
            )
        } else {
            warn(
                "nix-uri",
                "no machines line (the builder is not up)",
                "run `builderctl up`",
            )
        }),
        (Some(u), v) => {
            let host_port = u.contains('@')
                && u.rsplit(':')
                    .next()
                    .is_some_and(|p| p.parse::<u16>().is_ok());
            let vs = v.map_or("unknown".to_string(), |(a, b, c)| format!("{a}.{b}.{c}"));
            if host_port && v.is_some_and(|v| v < (2, 31, 0)) {
                checks.push(fail(
                    "nix-uri",
                    format!("{u} needs Nix 2.31 or newer; this host has {vs}"),
                    "set `uri = \"alias\"` under [registration] (or remove `uri`), then `builderctl up`",
                ));
            } else {
                checks.push(pass("nix-uri", format!("{u} suits the host's Nix {vs}")));
            }
        }
    }

    // builders-use-substitutes as Nix reads it.
    checks.push(substitutes_check(cfg));

    // Who owns nix.conf and machines.
    for (what, path) in [
        ("nix.conf", &cfg.registration.nix_conf),
        ("machines", &cfg.registration.machines_file),
    ] {
        checks.push(owner_check(what, path, status.as_ref().ok()));
    }

    // root reaches the builder with its own known_hosts and config.
    if up {
        checks.push(root_check(cfg));
        checks.push(sandbox_check(cfg));
    }

    // Disk.
    if let Some(b) = status.as_ref().ok().and_then(|s| s.builder.as_ref())
        && let Some(free) = b.disk_free_bytes
    {
        if free < cfg.builder.min_free {
            checks.push(fail(
                "disk",
                format!("only {} free for the builder's store", human_bytes(free)),
                "run `builderctl gc`, or free space on the Docker disk",
            ));
        } else if free < 4 * cfg.builder.min_free {
            checks.push(warn(
                "disk",
                format!("{} free for the builder's store", human_bytes(free)),
                "run `builderctl gc` soon",
            ));
        } else {
            checks.push(pass("disk", format!("{} free", human_bytes(free))));
        }
    }

    // Each remote builder.
    if let Ok(s) = &status {
        checks.extend(s.remotes.iter().map(remote_check));
    }

    if build_test {
        checks.push(build_check(cfg));
    }

    let mut failed = false;
    for c in &checks {
        let tag = match c.verdict {
            Verdict::Pass => paint("PASS", "32", out.color()),
            Verdict::Warn => paint("WARN", "33", out.color()),
            Verdict::Fail => {
                failed = true;
                paint("FAIL", "31", out.color())
            }
        };
        println!("{tag}  {:<10} {}", c.name, c.message);
        if let Some(f) = &c.fix {
            for (i, l) in f.lines().enumerate() {
                println!(
                    "      {:<10} {}{l}",
                    "",
                    if i == 0 { "fix: " } else { "     " }
                );
            }
        }
    }
    if failed { exit::DOCTOR } else { exit::OK }
}

fn paint(s: &str, code: &str, color: bool) -> String {
    if color {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

fn rosetta_check() -> Check {
    if !cfg!(target_os = "macos") {
        return pass(
            "rosetta",
            format!("not needed: the host is {}-linux", std::env::consts::ARCH),
        );
    }
    if std::env::consts::ARCH != "aarch64" {
        return pass("rosetta", "not needed on an Intel Mac");
    }
    if !Path::new("/Library/Apple/usr/libexec/oah/libRosettaRuntime").exists() {
        return fail(
            "rosetta",
            "Rosetta is not installed",
            "softwareupdate --install-rosetta --agree-to-license",
        );
    }
    let settings = builderd::config::home_dir()
        .join("Library/Group Containers/group.com.docker/settings-store.json");
    let legacy = builderd::config::home_dir()
        .join("Library/Group Containers/group.com.docker/settings.json");
    let on = [settings, legacy].iter().find_map(|p| {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
        v.get("UseVirtualizationFrameworkRosetta")
            .or_else(|| v.get("useVirtualizationFrameworkRosetta"))
            .and_then(|b| b.as_bool())
    });
    match on {
        Some(true) => pass("rosetta", "installed, and Docker Desktop uses it"),
        Some(false) => fail(
            "rosetta",
            "Docker Desktop's Rosetta setting is off",
            "Docker Desktop → Settings → General: turn on \"Use Rosetta for x86_64/amd64 emulation on Apple Silicon\"",
        ),
        None => warn(
            "rosetta",
            "installed; Docker Desktop's setting could not be read",
            "check Docker Desktop → Settings → General → \"Use Rosetta for x86_64/amd64 emulation\"",
        ),
    }
}

fn substitutes_check(cfg: &Config) -> Check {
    let dir = cfg
        .registration
        .nix_conf
        .parent()
        .unwrap_or(Path::new("/etc/nix"))
        .to_path_buf();
    let shown = ["config show", "show-config"].iter().find_map(|sub| {
        let o = Command::new("nix")
            .args(sub.split(' '))
            .args(["--extra-experimental-features", "nix-command"])
            .env("NIX_CONF_DIR", &dir)
            .env_remove("NIX_CONFIG")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    });
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let file_value = nix_conf::effective(
        &cfg.registration.nix_conf,
        "builders-use-substitutes",
        &read,
    );
    let value = match &shown {
        Some(text) => text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "builders-use-substitutes").then(|| v.trim().to_string())
        }),
        None => None,
    };
    // What Nix shows; without a nix binary, what the files say (builderd's own block included).
    let effective = value.or_else(|| {
        let text = read(&cfg.registration.nix_conf).unwrap_or_default();
        block::body(&text, &cfg.container_name)
            .filter(|b| b.iter().any(|l| l == "builders-use-substitutes = true"))
            .map(|_| "true".to_string())
            .or(file_value.as_ref().map(|s| s.value.clone()))
    });
    match effective.as_deref() {
        Some("true") => pass(
            "substitute",
            format!(
                "builders-use-substitutes = true ({})",
                if shown.is_some() {
                    "as Nix reads it"
                } else {
                    "in the files"
                }
            ),
        ),
        other => {
            let where_ = file_value
                .filter(|s| s.value != "true")
                .map(|s| format!(" ({}:{} sets it)", s.file.display(), s.line))
                .unwrap_or_default();
            fail(
                "substitute",
                format!(
                    "builders-use-substitutes is {}{where_}",
                    other.unwrap_or("false (unset)")
                ),
                format!(
                    "set `builders-use-substitutes = true` in {} (builderd leaves a value you wrote), then restart the nix-daemon",
                    cfg.registration.nix_conf.display()
                ),
            )
        }
    }
}

fn owner_check(what: &'static str, path: &Path, status: Option<&Status>) -> Check {
    let name = if what == "nix.conf" {
        "nix.conf"
    } else {
        "machines"
    };
    match resolve_target(path) {
        Target::NixDarwin => {
            let detail = status.and_then(|s| {
                s.registrations
                    .iter()
                    .find(|r| r.path == path.display().to_string())
                    .and_then(|r| r.detail.clone())
            });
            // Already said in the nix-darwin configuration? The generated file tells.
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let done = match what {
                "nix.conf" => text
                    .lines()
                    .any(|l| l.replace(' ', "") == "builders-use-substitutes=true"),
                _ => detail.as_deref().is_some_and(|d| {
                    d.lines()
                        .find_map(|l| l.trim().strip_prefix("publicHostKey = \""))
                        .and_then(|k| k.strip_suffix("\";"))
                        .is_some_and(|k| text.contains(k))
                }),
            };
            if done {
                pass(
                    name,
                    format!(
                        "{} belongs to nix-darwin, and says what builderd needs",
                        path.display()
                    ),
                )
            } else {
                fail(
                    name,
                    format!(
                        "{} belongs to nix-darwin (a link into its store); builderd does not write it",
                        path.display()
                    ),
                    detail.unwrap_or_else(|| {
                        "see `builderctl status --json` for the nix-darwin lines".into()
                    }),
                )
            }
        }
        Target::Manual(why) => warn(
            name,
            why,
            "make it a plain file, or add builderd's lines by hand (see `builderctl status`)",
        ),
        Target::Write(real) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if what == "nix.conf" && nix_conf::determinate_custom_conf(path, &text).is_some() {
                pass(
                    name,
                    format!(
                        "{} is Determinate Nix's; builderd writes nix.custom.conf",
                        path.display()
                    ),
                )
            } else if real != path {
                pass(
                    name,
                    format!("{} (a link to {})", path.display(), real.display()),
                )
            } else {
                pass(name, format!("{} is a plain file", path.display()))
            }
        }
    }
}

fn root_check(cfg: &Config) -> Check {
    let Some(config) = root_ssh_config(cfg) else {
        return warn(
            "root-ssh",
            "no ssh_config is configured for root",
            "add root's ~/.ssh/config to `ssh_config`",
        );
    };
    let mut cmd = Command::new("ssh");
    if builderd::fsutil::current_euid() != 0 {
        cmd = Command::new("sudo");
        cmd.args(["-n", "ssh"]);
    }
    let o = cmd
        .arg("-F")
        .arg(&config)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ControlMaster=no",
            "-o",
            "ControlPath=none",
        ])
        .arg(cfg.alias())
        .arg("true")
        .stdin(Stdio::null())
        .output();
    match o {
        Ok(o) if o.status.success() => pass(
            "root-ssh",
            format!("root reaches `{}` with {}", cfg.alias(), config.display()),
        ),
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("Permission denied") => {
            fail("root-ssh", "the builder refused root's key", KEY_REFUSED)
        }
        Ok(o) => fail(
            "root-ssh",
            format!(
                "root cannot reach the builder: {}",
                String::from_utf8_lossy(&o.stderr)
                    .trim()
                    .lines()
                    .last()
                    .unwrap_or("")
            ),
            format!(
                "the nix-daemon connects as root: run builderd as root (`sudo builderctl install`) so that it keeps {} and root's known_hosts true",
                config.display()
            ),
        ),
        Err(e) => fail(
            "root-ssh",
            format!("cannot run ssh: {e}"),
            "install OpenSSH's client",
        ),
    }
}

fn sandbox_check(cfg: &Config) -> Check {
    if !cfg.builder.sandbox {
        return warn(
            "sandbox",
            "Nix's build sandbox is off in the builder (`sandbox = false`)",
            "on an engine that allows privileged containers, set `privileged = true` and `sandbox = true` under [builder]",
        );
    }
    let cmd = "nix-build --no-out-link --option sandbox true --option sandbox-fallback false -E 'derivation { name = \"builderd-sandbox-probe\"; system = builtins.currentSystem; builder = \"/bin/sh\"; args = [ \"-c\" \"echo $RANDOM > $out\" ]; nonce = builtins.currentTime; }' 2>&1 | tail -n 2";
    match on_builder(cfg, cmd) {
        Ok(o) if o.contains("/nix/store/") => {
            pass("sandbox", "a sandboxed build works in the builder")
        }
        Ok(o) | Err(o) => fail(
            "sandbox",
            format!(
                "a sandboxed build fails: {}",
                o.trim().lines().last().unwrap_or("")
            ),
            "the sandbox needs a privileged container: set `privileged = true` under [builder] (or `sandbox = false` to build without it)",
        ),
    }
}

/// One remote builder, as the daemon last saw it.
fn remote_check(r: &builderd::protocol::RemoteStatus) -> Check {
    let at = format!("{} ({}:{})", r.name, r.address, r.port);
    let why = r
        .reason
        .as_deref()
        .and_then(|r| r.lines().next())
        .unwrap_or("");
    match r.state.as_str() {
        "up" if r.listed => pass(
            "remote",
            format!(
                "{at} healthy and listed, host key {}",
                r.host_key_fingerprint.as_deref().unwrap_or("?")
            ),
        ),
        "pending-trust" => warn(
            "remote",
            format!(
                "{at} presented host key {}, which nobody confirmed: it is not listed",
                r.pending_host_key.as_deref().unwrap_or("?")
            ),
            format!(
                "compare it with the host's own (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` there), then `builderctl trust {} {}`",
                r.name,
                r.pending_host_key.as_deref().unwrap_or("")
            ),
        ),
        "checking" | "down" => warn(
            "remote",
            format!("{at} not checked yet ({})", r.state),
            "run `builderctl up`, then `builderctl check`",
        ),
        "host-key-mismatch" => fail(
            "remote",
            format!("{at}: {why}"),
            "find out why the host's key changed; if it is the host's new key, give it as `host_key` in the config",
        ),
        _ => fail(
            "remote",
            format!(
                "{at} is {}{}: {why}",
                r.state,
                if r.listed {
                    " (still listed)"
                } else {
                    ", not listed"
                }
            ),
            format!(
                "check that {}:{} answers SSH for its `user` with its `identity`; it is listed again at the first healthy check",
                r.address, r.port
            ),
        ),
    }
}

fn build_check(cfg: &Config) -> Check {
    let dir = match tempfile_dir() {
        Ok(d) => d,
        Err(e) => return fail("build", e, "check the temp dir"),
    };
    let drv = dir.join("probe.nix");
    let nonce = format!("{:?}", std::time::SystemTime::now());
    let text = format!(
        "derivation {{ name = \"builderd-doctor\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; nonce = \"{nonce}\"; args = [ \"-c\" \"/bin/uname -n > $out\" ]; }}\n"
    );
    if let Err(e) = std::fs::write(&drv, text) {
        return fail("build", e.to_string(), "check the temp dir");
    }
    let mut cmd = Command::new("nix-build");
    cmd.arg(&drv)
        .args(["--no-out-link", "--max-jobs", "0"])
        .arg("--builders")
        .arg(format!("@{}", cfg.registration.machines_file.display()))
        .stdin(Stdio::null());
    // A single-user Nix without build users (no nix-daemon): build as this user.
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    if !groups.lines().any(|l| l.starts_with("nixbld:"))
        && !Path::new("/nix/var/nix/daemon-socket/socket").exists()
    {
        cmd.args(["--option", "build-users-group", ""]);
    }
    if let Some(c) = root_ssh_config(cfg) {
        cmd.env("NIX_SSHOPTS", format!("-F {}", c.display()));
    }
    let start = Instant::now();
    let o = cmd.output();
    let took = start.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    match o {
        Ok(o) if o.status.success() => pass(
            "build",
            format!(
                "a tiny x86_64-linux build ran on the builder in {:.2} s",
                took.as_secs_f64()
            ),
        ),
        Ok(o) => fail(
            "build",
            format!(
                "the remote build failed: {}",
                String::from_utf8_lossy(&o.stderr)
                    .trim()
                    .lines()
                    .last()
                    .unwrap_or("")
            ),
            "see the checks above; `builderctl logs` has the daemon's side",
        ),
        Err(e) => fail(
            "build",
            format!("cannot run nix-build: {e}"),
            "install Nix on this machine",
        ),
    }
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let d = std::env::temp_dir().join(format!("builderd-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
    Ok(d)
}
