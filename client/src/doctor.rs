//! `builderctl doctor`: every check, each PASS, WARN or FAIL with the exact fix.
//!
//! Each check looks at the effect itself (the engine's container, a real build, root's own ssh),
//! never at what builderd believes it did.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use builderd::client;
use builderd::config::Config;
use builderd::docker::Endpoint;
use builderd::protocol::{Reply, Request, State, Status};
use builderd::registration::{Target, block, nix_conf, resolve_target};

use crate::exit;
use crate::output::{Out, human_bytes, paint};

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

/// The builder's container as the engine reports it.
struct Engine {
    state: String,
    running: bool,
    /// The host address and port that the engine publishes the container's port 22 on.
    published: Option<(String, u16)>,
}

/// Everything the checks look at, gathered once.
struct Ctx<'a> {
    cfg: &'a Config,
    status: Result<Status, String>,
    endpoint: Endpoint,
    engine: Result<(), String>,
    /// `None` when the engine has no such container (or cannot be asked).
    container: Option<Engine>,
    build_test: bool,
}

impl Ctx<'_> {
    fn status(&self) -> Option<&Status> {
        self.status.as_ref().ok()
    }

    /// The daemon says healthy and the engine says the container runs.
    fn up(&self) -> bool {
        self.status().is_some_and(|s| s.healthy)
            && self.container.as_ref().is_some_and(|c| c.running)
    }

    /// Down on purpose: `builderctl down`, or no daemon and no container.
    fn down(&self) -> bool {
        match self.status() {
            Some(s) => s.desired == "down",
            None => self.container.is_none(),
        }
    }

    /// builderd's own line in the machines file.
    fn machines_line(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.cfg.registration.machines_file).ok()?;
        block::body(&text, &self.cfg.container_name).and_then(|b| b.first().cloned())
    }
}

type CheckFn = fn(&Ctx) -> Vec<Check>;

/// Every check, in the order they are printed.
const CHECKS: &[CheckFn] = &[
    check_builder,
    check_docker,
    check_rosetta,
    check_desktop,
    check_x86_64,
    check_port,
    check_keys,
    check_nix_uri,
    check_substitute,
    check_builders,
    check_owners,
    check_root_ssh,
    check_sandbox,
    check_disk,
    check_caches,
    check_remotes,
    check_build,
];

async fn daemon_status(cfg: &Config) -> Result<Status, String> {
    match client::request(&cfg.socket, Request::Status, |_| {}).await {
        Ok(Reply::Status(s)) => Ok(*s),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Asks the engine about builderd's container: its state and the port it publishes.
async fn engine_view(cfg: &Config, endpoint: &Endpoint) -> (Result<(), String>, Option<Engine>) {
    let d = match builderd::docker::connect(endpoint).await {
        Ok(d) => d,
        Err(e) => return (Err(e.to_string()), None),
    };
    let Ok(Some(found)) = builderd::docker::find(
        &d,
        &cfg.container_name,
        &builderd::docker::owner_id(&cfg.state_dir),
    )
    .await
    else {
        return (Ok(()), None);
    };
    let published = builderd::docker::inspect(&d, &found.id)
        .await
        .ok()
        .and_then(|c| c.published);
    (
        Ok(()),
        Some(Engine {
            state: found.state,
            running: found.running,
            published,
        }),
    )
}

pub async fn run(cfg: &Config, build_test: bool, out: &Out) -> u8 {
    let status = daemon_status(cfg).await;
    let endpoint = builderd::docker::resolve_endpoint(cfg);
    let (engine, container) = engine_view(cfg, &endpoint).await;
    let ctx = Ctx {
        cfg,
        status,
        endpoint,
        engine,
        container,
        build_test,
    };
    let mut failed = false;
    for check in CHECKS {
        for c in check(&ctx) {
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
    }
    if failed { exit::DOCTOR } else { exit::OK }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// The daemon's view, checked against the engine's.
fn check_builder(ctx: &Ctx) -> Vec<Check> {
    let engine_says = ctx.container.as_ref().map_or_else(
        || "no container".to_string(),
        |c| format!("container {}", c.state),
    );
    let s = match &ctx.status {
        Ok(s) => s,
        Err(e) => {
            let mut v = vec![fail(
                "daemon",
                format!("not reachable: {e}"),
                "run `builderctl up` (or `sudo builderctl install` to keep it running)",
            )];
            if let Some(c) = &ctx.container
                && !c.running
            {
                v.push(fail(
                    "builder",
                    format!("container {} is {}", ctx.cfg.container_name, c.state),
                    "run `builderctl up`: it starts the container and keeps it running",
                ));
            }
            return v;
        }
    };
    let running = ctx.container.as_ref().is_some_and(|c| c.running);
    let reason = || first_line(s.reason.as_deref().unwrap_or("not healthy")).to_string();
    vec![if s.desired == "down" {
        fail("builder", "the builder is down", "run `builderctl up`")
    } else if s.state == State::Sleeping {
        pass(
            "builder",
            format!(
                "asleep on demand ({engine_says}); the next connection to 127.0.0.1:{} wakes it",
                s.port
            ),
        )
    } else if s.healthy && !running && ctx.engine.is_ok() {
        fail(
            "builder",
            format!("the daemon last saw it healthy, but the engine says: {engine_says}"),
            "see `builderctl logs --container`; `builderctl up` starts it again",
        )
    } else if s.healthy && s.state == State::Up {
        pass("builder", format!("up and healthy on 127.0.0.1:{}", s.port))
    } else if s.healthy {
        warn(
            "builder",
            format!(
                "healthy on 127.0.0.1:{}, but {}",
                s.port,
                first_line(s.reason.as_deref().unwrap_or("degraded"))
            ),
            "see the checks below",
        )
    } else {
        fail(
            "builder",
            format!("state {} ({engine_says}): {}", s.state.as_str(), reason()),
            "see `builderctl logs` and `builderctl logs --container`; `builderctl up` starts it again",
        )
    }]
}

fn check_docker(ctx: &Ctx) -> Vec<Check> {
    let ep = &ctx.endpoint;
    vec![match &ctx.engine {
        Ok(()) => pass(
            "docker",
            format!("reachable at {} (from {})", ep.host, ep.source),
        ),
        Err(e) => fail(
            "docker",
            format!("not reachable at {} (from {}): {e}", ep.host, ep.source),
            "start Docker Desktop (or Colima/OrbStack), or set `docker_host` in the config to the engine's socket",
        ),
    }]
}

/// Which engine a socket path belongs to, by where it really leads.
#[derive(Debug, PartialEq, Eq)]
enum EngineKind {
    DockerDesktop,
    Colima,
    OrbStack,
    Other,
}

fn engine_kind(host: &str) -> EngineKind {
    let Some(path) = host.strip_prefix("unix://") else {
        return EngineKind::Other;
    };
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
    let real = real.to_string_lossy();
    if real.contains("/.colima/") {
        EngineKind::Colima
    } else if real.contains("/.orbstack/") || real.contains("/OrbStack/") {
        EngineKind::OrbStack
    } else if real.contains("/.docker/run/")
        || real.contains("/Library/Containers/com.docker.docker/")
        || real.contains("/.docker/desktop/")
    {
        EngineKind::DockerDesktop
    } else {
        EngineKind::Other
    }
}

fn check_rosetta(ctx: &Ctx) -> Vec<Check> {
    if !cfg!(target_os = "macos") {
        return vec![pass(
            "rosetta",
            format!("not needed: the host is {}-linux", std::env::consts::ARCH),
        )];
    }
    if std::env::consts::ARCH != "aarch64" {
        return vec![pass("rosetta", "not needed on an Intel Mac")];
    }
    if !Path::new("/Library/Apple/usr/libexec/oah/libRosettaRuntime").exists() {
        return vec![fail(
            "rosetta",
            "Rosetta is not installed",
            "softwareupdate --install-rosetta --agree-to-license",
        )];
    }
    let kind = engine_kind(&ctx.endpoint.host);
    if kind != EngineKind::DockerDesktop {
        // Docker Desktop's settings say nothing about another engine; the x86_64 check runs a
        // real program instead.
        return vec![pass(
            "rosetta",
            format!(
                "installed; the engine is {} (see the x86_64 check for how it runs x86_64)",
                match kind {
                    EngineKind::Colima => "Colima",
                    EngineKind::OrbStack => "OrbStack",
                    _ => "not Docker Desktop",
                }
            ),
        )];
    }
    let dir = builderd::config::home_dir().join("Library/Group Containers/group.com.docker");
    let on = [dir.join("settings-store.json"), dir.join("settings.json")]
        .iter()
        .find_map(|p| {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
            v.get("UseVirtualizationFrameworkRosetta")
                .or_else(|| v.get("useVirtualizationFrameworkRosetta"))
                .and_then(|b| b.as_bool())
        });
    vec![match on {
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
    }]
}

/// macOS with Docker Desktop: the settings that matter to the builder (see
/// `builderd::docker::desktop`), each named, with what to change.
fn check_desktop(ctx: &Ctx) -> Vec<Check> {
    use builderd::docker::desktop::{DesktopSettings, settings_files};
    if !cfg!(target_os = "macos") || engine_kind(&ctx.endpoint.host) != EngineKind::DockerDesktop {
        return vec![];
    }
    let Some(s) = DesktopSettings::read(&settings_files(&builderd::config::home_dir())) else {
        return vec![warn(
            "desktop",
            "Docker Desktop's settings could not be read",
            "check Docker Desktop → Settings: Rosetta (General), CPUs, memory and disk image (Resources), \"Allow the default Docker socket\" (Advanced)",
        )];
    };
    let root = builderd::fsutil::current_euid() == 0;
    let advice = s.advice(std::env::consts::ARCH == "aarch64", root);
    vec![if advice.is_empty() {
        pass("desktop", s.summary())
    } else {
        warn("desktop", s.summary(), advice.join("; "))
    }]
}

/// Runs `command` on the builder through the pinned-key ssh command line: the host key is this
/// install's volume key, so an answer comes from this builder's container and no other.
fn on_builder(cfg: &Config, command: &str) -> Result<String, String> {
    let host_pub = cfg.host_key_file();
    let key = builderd::keys::read_public(&host_pub).map_err(|e| e.to_string())?;
    let kh = crate::service::pinned_known_hosts(cfg, &key).map_err(|e| e.to_string())?;
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

fn check_x86_64(ctx: &Ctx) -> Vec<Check> {
    if !ctx.up() {
        return vec![];
    }
    let cmd = format!(
        "echo {X86_64_PROBE} | base64 -d > /tmp/builderd-x86-probe && chmod +x /tmp/builderd-x86-probe; /tmp/builderd-x86-probe; echo \"exit=$?\"; rm -f /tmp/builderd-x86-probe"
    );
    vec![match on_builder(ctx.cfg, &cmd) {
        Ok(o) if o.contains("exit=42") => {
            let how = ctx
                .status()
                .and_then(|s| s.builder.as_ref())
                .map(|b| b.x86_64.clone())
                .unwrap_or_default();
            pass(
                "x86_64",
                format!("the builder runs x86_64 programs ({how})"),
            )
        }
        Ok(o) => fail(
            "x86_64",
            format!(
                "an x86_64 program did not run on the builder ({})",
                o.trim()
            ),
            "turn on \"Use Rosetta for x86_64/amd64 emulation on Apple Silicon\" in Docker Desktop's settings, then `builderctl down && builderctl up`",
        ),
        Err(e) => {
            let fix = if e.contains("Permission denied") {
                KEY_REFUSED
            } else {
                "see `builderctl status` and `builderctl logs`"
            };
            fail("x86_64", format!("could not run the probe: {e}"), fix)
        }
    }]
}

/// The port the engine really publishes, against the config's.
fn check_port(ctx: &Ctx) -> Vec<Check> {
    let cfg = ctx.cfg;
    let taken = |holder: String| {
        fail(
            "port",
            format!("127.0.0.1:{} is taken by {holder}", cfg.port),
            format!(
                "stop {holder}, or set `port` in {} to a free port",
                cfg.file.display()
            ),
        )
    };
    let holder = || builderd::port::holder(cfg.port).unwrap_or_else(|| "another process".into());
    if cfg.on_demand {
        return vec![on_demand_port(ctx, &holder)];
    }
    vec![match ctx.container.as_ref().filter(|c| c.running) {
        Some(c) => match &c.published {
            Some((ip, p)) if *p == cfg.port && ip == "127.0.0.1" => pass(
                "port",
                format!("127.0.0.1:{p} is the builder's (the engine publishes it)"),
            ),
            Some((ip, p)) if *p == cfg.port => fail(
                "port",
                format!("the engine publishes the builder on {ip}:{p}, not on 127.0.0.1 only"),
                "run `builderctl down && builderctl up`: it publishes the port on 127.0.0.1",
            ),
            Some((ip, p)) => {
                let now = if builderd::port::is_free(cfg.port) {
                    "free".to_string()
                } else {
                    format!("taken by {}", holder())
                };
                fail(
                    "port",
                    format!(
                        "the engine publishes the builder on {ip}:{p}, but {} says port {} ({now})",
                        cfg.file.display(),
                        cfg.port
                    ),
                    "run `builderctl up`: it re-creates the container on the config's port (choose a free one)",
                )
            }
            None => fail(
                "port",
                "the engine publishes no port for the builder",
                "run `builderctl down && builderctl up`",
            ),
        },
        None if builderd::port::is_free(cfg.port) => {
            pass("port", format!("127.0.0.1:{} is free", cfg.port))
        }
        None => taken(holder()),
    }]
}

/// On demand, builderd's relay holds the configured port and the engine publishes sshd on
/// another loopback port.
fn on_demand_port(ctx: &Ctx, holder: &dyn Fn() -> String) -> Check {
    let cfg = ctx.cfg;
    let daemon = ctx.status().map(|s| s.pid);
    if builderd::port::is_free(cfg.port) {
        return if ctx.down() {
            pass("port", format!("127.0.0.1:{} is free", cfg.port))
        } else {
            fail(
                "port",
                format!("127.0.0.1:{} is not held by builderd's relay", cfg.port),
                "run `builderctl up`",
            )
        };
    }
    let h = holder();
    let ours = daemon.is_some_and(|pid| h.starts_with(&format!("pid {pid} ")));
    if !ours {
        return fail(
            "port",
            format!("127.0.0.1:{} is taken by {h}", cfg.port),
            format!(
                "stop {h}, or set `port` in {} to a free port",
                cfg.file.display()
            ),
        );
    }
    match ctx
        .container
        .as_ref()
        .filter(|c| c.running)
        .and_then(|c| c.published.clone())
    {
        Some((ip, p)) if ip != "127.0.0.1" => fail(
            "port",
            format!("the engine publishes the builder's sshd on {ip}:{p}, not on 127.0.0.1 only"),
            "run `builderctl down && builderctl up`",
        ),
        Some((_, p)) => pass(
            "port",
            format!(
                "127.0.0.1:{} is builderd's relay, to sshd on 127.0.0.1:{p}",
                cfg.port
            ),
        ),
        None => pass(
            "port",
            format!(
                "127.0.0.1:{} is builderd's relay (the builder sleeps)",
                cfg.port
            ),
        ),
    }
}

fn check_keys(ctx: &Ctx) -> Vec<Check> {
    let cfg = ctx.cfg;
    vec![
        match builderd::keys::load_client_keys(&cfg.public_key, &cfg.private_key) {
            Ok(k) => pass(
                "keys",
                format!("{} ({})", cfg.public_key.display(), k.fingerprint),
            ),
            Err(e) => fail(
                "keys",
                e.to_string(),
                "fix the key files named above (`ssh-keygen -t ed25519` makes a new pair), then `builderctl up`",
            ),
        },
    ]
}

/// The host's Nix against the machines line's URI form, and field 8 against the volume's key.
fn check_nix_uri(ctx: &Ctx) -> Vec<Check> {
    let cfg = ctx.cfg;
    let Some(line) = ctx.machines_line() else {
        return vec![if ctx.down() {
            warn(
                "nix-uri",
                "no machines line (the builder is down)",
                "run `builderctl up`",
            )
        } else {
            fail(
                "nix-uri",
                format!(
                    "{} has no builderd line",
                    cfg.registration.machines_file.display()
                ),
                "run `builderctl up`; see `builderctl status` for why it could not be written",
            )
        }];
    };
    let fields: Vec<&str> = line.split_whitespace().collect();
    let uri = fields.first().copied().unwrap_or("");
    let Some(v) = builderd::hostnix::host_version() else {
        return vec![fail(
            "nix-uri",
            "no `nix` (or `nix-store`) on PATH: the host's Nix is unknown",
            "install Nix, or put its bin directory on PATH",
        )];
    };
    let vs = format!("{}.{}.{}", v.0, v.1, v.2);
    let host_port = builderd::hostnix::is_host_port_uri(uri);
    if host_port && !builderd::hostnix::parses_host_port(v) {
        return vec![fail(
            "nix-uri",
            format!("{uri} needs Nix 2.31 or newer; this host has {vs}"),
            "set `uri = \"alias\"` under [registration] (or remove `uri`), then `builderctl up`",
        )];
    }
    // Field 8 must be this volume's host key, or ssh refuses the builder (or, worse, accepts
    // another one).
    let host_pub = cfg.host_key_file();
    let want = std::fs::read_to_string(&host_pub)
        .ok()
        .map(|t| t.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
    let field8 = fields.get(7).copied().unwrap_or("-");
    let got = (field8 != "-").then(|| {
        base64::engine::general_purpose::STANDARD
            .decode(field8)
            .ok()
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    });
    vec![match (got, want) {
        (Some(got), Some(want)) if got != want => fail(
            "nix-uri",
            format!(
                "field 8 of the machines line is not the builder's host key ({})",
                host_pub.display()
            ),
            format!(
                "run `builderctl up` (it rewrites its line in {})",
                cfg.registration.machines_file.display()
            ),
        ),
        (Some(_), None) => warn(
            "nix-uri",
            format!(
                "{uri} suits the host's Nix {vs}; the builder's host key ({}) cannot be read to compare with field 8",
                host_pub.display()
            ),
            "run doctor as the user (or root) that runs builderd",
        ),
        (None, _) if !host_port => fail(
            "nix-uri",
            format!("{uri} has no host key in field 8"),
            "run `builderctl up` (it writes field 8)",
        ),
        (Some(_), Some(_)) => pass(
            "nix-uri",
            format!("{uri} suits the host's Nix {vs}; field 8 is the builder's host key"),
        ),
        (None, _) => pass(
            "nix-uri",
            format!("{uri} suits the host's Nix {vs} (its host key is in root's known_hosts)"),
        ),
    }]
}

/// `builders-use-substitutes` as the nix-daemon reads it: the system's nix.conf and its
/// includes, never the invoking user's own files.
fn check_substitute(ctx: &Ctx) -> Vec<Check> {
    let cfg = ctx.cfg;
    let shown = nix_shown(cfg);
    substitute_verdict(ctx, shown)
}

/// The settings as the nix-daemon reads them (`nix config show` with the system nix.conf and
/// its includes only, never the user's own files); `None` without a `nix` to ask.
fn nix_shown(cfg: &Config) -> Option<String> {
    let dir = cfg
        .registration
        .nix_conf
        .parent()
        .unwrap_or(Path::new("/etc/nix"))
        .to_path_buf();
    ["config show", "show-config"].iter().find_map(|sub| {
        let o = Command::new("nix")
            .args(sub.split(' '))
            .args(["--extra-experimental-features", "nix-command"])
            .env("NIX_CONF_DIR", &dir)
            // An empty list: no user file at all (the XDG ones included).
            .env("NIX_USER_CONF_FILES", "")
            .env_remove("NIX_CONFIG")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_CONFIG_DIRS")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    })
}

/// One setting's value in `nix config show` output.
fn shown_value(shown: &str, key: &str) -> Option<String> {
    shown.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// `builders` as the nix-daemon reads it must name builderd's machines file: nix-darwin writes
/// `builders =` (empty) unless `nix.distributedBuilds` is on, and then the machines file is
/// never read.
fn check_builders(ctx: &Ctx) -> Vec<Check> {
    let cfg = ctx.cfg;
    let Some(shown) = nix_shown(cfg) else {
        // No nix to ask: nix-uri says so.
        return vec![];
    };
    let machines = &cfg.registration.machines_file;
    let want = format!("@{}", machines.display());
    let value = shown_value(&shown, "builders").unwrap_or_default();
    if value.split([';', '\n']).any(|b| b.trim() == want) {
        return vec![pass(
            "builders",
            format!("Nix reads {} (builders = {value})", machines.display()),
        )];
    }
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let set_at = nix_conf::effective(&cfg.registration.nix_conf, "builders", &read)
        .map(|s| format!(" ({}:{} sets it)", s.file.display(), s.line))
        .unwrap_or_default();
    let nix_darwin = matches!(
        resolve_target(&cfg.registration.nix_conf),
        Target::NixDarwin
    );
    let what = if value.is_empty() {
        format!(
            "builders is empty{set_at}: Nix ignores {}",
            machines.display()
        )
    } else {
        format!(
            "builders = {value}{set_at} does not name {}: Nix ignores it",
            machines.display()
        )
    };
    vec![fail(
        "builders",
        what,
        builders_fix(nix_darwin, &want, &cfg.registration.nix_conf),
    )]
}

/// What to do when `builders` leaves the machines file out.
fn builders_fix(nix_darwin: bool, want: &str, nix_conf: &Path) -> String {
    if nix_darwin {
        "in your nix-darwin configuration set `nix.distributedBuilds = true;` (nix-darwin then writes `builders = @/etc/nix/machines`), run `darwin-rebuild switch`, then `builderctl up`".to_string()
    } else {
        format!(
            "in {} remove the `builders` line (its default reads the machines file) or set `builders = {want}`, then restart the nix-daemon",
            nix_conf.display()
        )
    }
}

fn substitute_verdict(ctx: &Ctx, shown: Option<String>) -> Vec<Check> {
    let cfg = ctx.cfg;
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let file_value = nix_conf::effective(
        &cfg.registration.nix_conf,
        "builders-use-substitutes",
        &read,
    );
    let value = shown
        .as_ref()
        .and_then(|text| shown_value(text, "builders-use-substitutes"));
    // What Nix shows; without a nix binary, what the files say (builderd's own block included).
    let effective = value.or_else(|| {
        let text = read(&cfg.registration.nix_conf).unwrap_or_default();
        block::body(&text, &cfg.container_name)
            .filter(|b| b.iter().any(|l| l == "builders-use-substitutes = true"))
            .map(|_| "true".to_string())
            .or(file_value.as_ref().map(|s| s.value.clone()))
    });
    let how = if shown.is_some() {
        "as the nix-daemon reads it"
    } else {
        "in the files"
    };
    vec![match effective.as_deref() {
        Some("true") => pass(
            "substitute",
            format!("builders-use-substitutes = true ({how})"),
        ),
        // Unset while down: `up` sets it, nothing is wrong.
        _ if ctx.down() && file_value.is_none() => warn(
            "substitute",
            "builders-use-substitutes is unset (the builder is down)",
            "`builderctl up` sets it",
        ),
        other => {
            let where_ = file_value
                .as_ref()
                .filter(|s| s.value != "true")
                .map(|s| format!(" ({}:{} sets it)", s.file.display(), s.line))
                .unwrap_or_default();
            fail(
                "substitute",
                format!(
                    "builders-use-substitutes is {}{where_} ({how})",
                    match (other, &file_value) {
                        (Some(v), Some(_)) => v,
                        _ => "false (unset)",
                    }
                ),
                format!(
                    "set `builders-use-substitutes = true` in {} (builderd leaves a value you wrote), then restart the nix-daemon",
                    cfg.registration.nix_conf.display()
                ),
            )
        }
    }]
}

fn check_owners(ctx: &Ctx) -> Vec<Check> {
    let reg = &ctx.cfg.registration;
    vec![
        owner_check(ctx, "nix.conf", &reg.nix_conf),
        owner_check(ctx, "machines", &reg.machines_file),
    ]
}

fn owner_check(ctx: &Ctx, name: &'static str, path: &Path) -> Check {
    // A link is judged by where it leads (nix-darwin's may dangle outside a Mac); anything
    // else must be a plain file that exists.
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return if ctx.down() {
                    warn(
                        name,
                        format!("{} does not exist (the builder is down)", path.display()),
                        "`builderctl up` creates it",
                    )
                } else {
                    fail(
                        name,
                        format!("{} does not exist", path.display()),
                        "run `builderctl up`; see `builderctl status` for why it could not be written",
                    )
                };
            }
            Err(e) => {
                return fail(
                    name,
                    format!("{} cannot be read: {e}", path.display()),
                    "run doctor as the user (or root) that runs builderd",
                );
            }
            Ok(m) if m.is_dir() => {
                return fail(
                    name,
                    format!("{} is a directory, not a file", path.display()),
                    format!(
                        "move {} aside, then `builderctl up` writes the file",
                        path.display()
                    ),
                );
            }
            Ok(m) if !m.is_file() => {
                return fail(
                    name,
                    format!("{} is not a plain file", path.display()),
                    format!(
                        "move {} aside, then `builderctl up` writes the file",
                        path.display()
                    ),
                );
            }
            Ok(_) => {}
        }
    }
    match resolve_target(path) {
        Target::NixDarwin => {
            let detail = ctx.status().and_then(|s| {
                s.registrations
                    .iter()
                    .find(|r| r.path == path.display().to_string())
                    .and_then(|r| r.detail.clone())
            });
            // Already said in the nix-darwin configuration? The generated file tells.
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let done = match name {
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
            if name == "nix.conf" && nix_conf::determinate_custom_conf(path, &text).is_some() {
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

/// root's home directory, from the password database.
fn root_home() -> PathBuf {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 7 && f[2] == "0").then(|| PathBuf::from(f[5]))
            })
        })
        .unwrap_or_else(|| {
            PathBuf::from(if cfg!(target_os = "macos") {
                "/var/root"
            } else {
                "/root"
            })
        })
}

/// The ssh_config that root's plain `ssh ALIAS` reads (besides the system-wide one).
fn root_ssh_config() -> PathBuf {
    root_home().join(".ssh/config")
}

/// Whether an ssh_config file has a `Host` line naming `alias`.
fn defines_alias(path: &Path, alias: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| {
        t.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next().is_some_and(|k| k.eq_ignore_ascii_case("host")) && w.any(|h| h == alias)
        })
    })
}

/// The nix-daemon connects as root with root's own ssh: run exactly that, with no shared
/// connection to lean on.
fn check_root_ssh(ctx: &Ctx) -> Vec<Check> {
    if !ctx.up() {
        return vec![];
    }
    let cfg = ctx.cfg;
    let alias = cfg.alias();
    let config = root_ssh_config();
    let as_root = builderd::fsutil::current_euid() == 0;
    let mut cmd = if as_root {
        Command::new("ssh")
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", "ssh"]);
        c
    };
    let o = cmd
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "ControlMaster=no",
            "-o",
            "ControlPath=none",
        ])
        .arg(alias)
        .arg("true")
        .stdin(Stdio::null())
        .output();
    let sudo_fix = "run `sudo builderctl doctor`: root's ssh can only be tried as root";
    let o = match o {
        Ok(o) => o,
        Err(e) if !as_root => {
            return vec![warn(
                "root-ssh",
                format!("not tried: this is not root, and sudo cannot run ({e})"),
                sudo_fix,
            )];
        }
        Err(e) => {
            return vec![fail(
                "root-ssh",
                format!("cannot run ssh: {e}"),
                "install OpenSSH's client",
            )];
        }
    };
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.trim().lines().last().unwrap_or("").to_string();
    if o.status.success() {
        return vec![pass(
            "root-ssh",
            format!(
                "root's own `ssh {alias}` reaches the builder ({})",
                config.display()
            ),
        )];
    }
    if !as_root && (err.contains("password is required") || err.starts_with("sudo:")) {
        return vec![warn(
            "root-ssh",
            format!("not tried: this is not root, and sudo asks for a password ({last})"),
            sudo_fix,
        )];
    }
    let keep = format!(
        "add {} to `ssh_config` (and root's known_hosts to `known_hosts`) under [registration] in {}, and run builderd as root (`sudo builderctl install`) so that it keeps them true",
        config.display(),
        cfg.file.display()
    );
    vec![if err.contains("Could not resolve hostname") {
        let why = if !config.exists() {
            format!("{} does not exist", config.display())
        } else if !defines_alias(&config, alias) {
            format!("{} has no `Host {alias}`", config.display())
        } else {
            last.clone()
        };
        fail(
            "root-ssh",
            format!("root's `ssh {alias}` cannot resolve the alias: {why}"),
            keep,
        )
    } else if err.contains("Host key verification failed")
        || err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
    {
        fail(
            "root-ssh",
            format!("root's `ssh {alias}` does not accept the builder's host key"),
            keep,
        )
    } else if err.contains("Permission denied") {
        fail("root-ssh", "the builder refused root's key", KEY_REFUSED)
    } else {
        fail(
            "root-ssh",
            format!("root's `ssh {alias}` cannot reach the builder: {last}"),
            keep,
        )
    }]
}

/// A real build through builderd's machines line alone.
struct Built {
    out: String,
    text: String,
    took: Duration,
}

/// Escapes `s` for a Nix double-quoted string.
fn nix_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                o.push('\\');
                o.push(c);
            }
            '$' => o.push_str("\\$"),
            _ => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Builds a derivation for `system` whose builder is `/bin/sh -c script`, through a machines
/// file holding only builderd's line, with no shared ssh connection; then reads the output back
/// from this builder's store (the pinned host key makes it this container and no other).
fn remote_build(ctx: &Ctx, system: &str, script: &str) -> Result<Built, String> {
    remote_build_with(ctx, system, script, None)
}

/// [`remote_build`] with a program of `system`'s architecture as an input, which the script
/// finds at `$probe` (copied to the builder's store, executable).
fn remote_build_with(
    ctx: &Ctx,
    system: &str,
    script: &str,
    probe: Option<&[u8]>,
) -> Result<Built, String> {
    let cfg = ctx.cfg;
    let line = ctx.machines_line().ok_or_else(|| {
        format!(
            "{} has no builderd line",
            cfg.registration.machines_file.display()
        )
    })?;
    let dir =
        std::env::temp_dir().join(format!("builderd-doctor-{}-{}", std::process::id(), system));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = remote_build_in(ctx, &dir, &line, system, script, probe);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn remote_build_in(
    ctx: &Ctx,
    dir: &Path,
    line: &str,
    system: &str,
    script: &str,
    probe: Option<&[u8]>,
) -> Result<Built, String> {
    let cfg = ctx.cfg;
    let machines = dir.join("machines");
    let probe_attr = match probe {
        Some(bytes) => {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.join("probe");
            std::fs::write(&p, bytes).map_err(|e| e.to_string())?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
            " probe = ./probe;"
        }
        None => "",
    };
    std::fs::write(&machines, format!("{line}\n")).map_err(|e| e.to_string())?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let drv = dir.join("probe.nix");
    std::fs::write(
        &drv,
        format!(
            "derivation {{ name = \"builderd-doctor\"; system = {}; builder = \"/bin/sh\"; nonce = \"{nonce}\";{probe_attr} args = [ \"-c\" {} ]; }}\n",
            nix_str(system),
            nix_str(script)
        ),
    )
    .map_err(|e| e.to_string())?;
    // The file that root's (the nix-daemon's) ssh reads; else one of builderd's that has the
    // alias, for a single-user Nix that runs ssh as this user.
    let alias = cfg.alias();
    let ssh_config = std::iter::once(root_ssh_config())
        .chain(cfg.registration.ssh_config.iter().cloned())
        .find(|p| defines_alias(p, alias));
    let mut sshopts = "-o ControlMaster=no -o ControlPath=none".to_string();
    if let Some(c) = &ssh_config {
        sshopts = format!("-F {} {sshopts}", c.display());
    }
    let mut cmd = Command::new("nix-build");
    cmd.arg(&drv)
        .args(["--no-out-link", "--max-jobs", "0"])
        .arg("--builders")
        .arg(format!("@{}", machines.display()))
        .args(["--option", "substituters", ""])
        .env("NIX_SSHOPTS", sshopts)
        .stdin(Stdio::null());
    // A single-user Nix without build users (no nix-daemon): build as this user.
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    if !groups.lines().any(|l| l.starts_with("nixbld:"))
        && !Path::new("/nix/var/nix/daemon-socket/socket").exists()
    {
        cmd.args(["--option", "build-users-group", ""]);
    }
    let start = Instant::now();
    let o = cmd
        .output()
        .map_err(|e| format!("cannot run nix-build: {e}"))?;
    let took = start.elapsed();
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        // Nix's own error, not the progress lines before it.
        let why = err
            .lines()
            .find(|l| l.trim_start().starts_with("error"))
            .or_else(|| err.trim().lines().last())
            .unwrap_or("")
            .trim()
            .to_string();
        return Err(format!("the build failed: {why}"));
    }
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    if !out.starts_with("/nix/store/") {
        return Err(format!("nix-build printed no store path: {out:?}"));
    }
    let text = on_builder(cfg, &format!("cat '{out}'"))
        .map_err(|e| format!("{out} is not in this builder's store: {e}"))?;
    Ok(Built { out, text, took })
}

fn sandbox_fix(cfg: &Config) -> String {
    if cfg.builder.sandbox {
        "the container lacks what Nix's sandbox needs: see `builderctl logs --container`, and the README's section on privileges".to_string()
    } else {
        format!(
            "set `sandbox = true` under [builder] in {}, then `builderctl up`",
            cfg.file.display()
        )
    }
}

/// Proves the sandbox with a build that looks at itself: pid 1 in its own namespace, no /usr,
/// building in /build. What it wrote decides, not what Nix printed.
fn check_sandbox(ctx: &Ctx) -> Vec<Check> {
    if !ctx.up() {
        return vec![];
    }
    let system = ctx
        .status()
        .and_then(|s| s.builder.as_ref())
        .and_then(|b| b.systems.first().cloned())
        .unwrap_or_else(|| "x86_64-linux".to_string());
    // Builds run with PATH unset: shell builtins only.
    let script = "if [ \"$$\" = 1 ]; then p=pid1; else p=notpid1; fi; \
                  if [ -e /usr ]; then u=usr-present; else u=usr-absent; fi; \
                  echo \"$p $u dir=$PWD\" > \"$out\"";
    vec![match remote_build(ctx, &system, script) {
        Ok(b) => {
            let seen = b.text.trim();
            if seen == "pid1 usr-absent dir=/build" {
                pass(
                    "sandbox",
                    "a build in the builder ran sandboxed (as process 1, without /usr, in /build)",
                )
            } else {
                fail(
                    "sandbox",
                    format!("a build in the builder ran without the sandbox (it saw: {seen})"),
                    sandbox_fix(ctx.cfg),
                )
            }
        }
        Err(e) if e.contains("sandbox") || e.contains("namespaces") => fail(
            "sandbox",
            format!("the sandbox probe did not build: {e}"),
            sandbox_fix(ctx.cfg),
        ),
        Err(e) => fail(
            "sandbox",
            format!("not proven: the probe could not build through builderd's line: {e}"),
            "see the checks above (keys, root-ssh, nix-uri); `builderctl doctor --build-test` shows the build alone",
        ),
    }]
}

fn check_disk(ctx: &Ctx) -> Vec<Check> {
    // Only a running builder's disk is a fact now.
    if !ctx.up() {
        return vec![];
    }
    let Some(free) = ctx
        .status()
        .and_then(|s| s.builder.as_ref())
        .and_then(|b| b.disk_free_bytes)
    else {
        return vec![];
    };
    let min = ctx.cfg.builder.min_free;
    vec![if free < min {
        fail(
            "disk",
            format!("only {} free for the builder's store", human_bytes(free)),
            "run `builderctl gc`, or free space on the Docker disk",
        )
    } else if free < 4 * min {
        warn(
            "disk",
            format!("{} free for the builder's store", human_bytes(free)),
            "run `builderctl gc` soon",
        )
    } else {
        pass("disk", format!("{} free", human_bytes(free)))
    }]
}

/// Substituters the builder cannot reach: it builds without them (rather than waiting on
/// them in every build), which is slower than it need be when they were meant to answer.
fn check_caches(ctx: &Ctx) -> Vec<Check> {
    let Some(b) = ctx.status().and_then(|s| s.builder.as_ref()) else {
        return vec![];
    };
    if !ctx.up() || b.unreachable_substituters.is_empty() {
        return vec![];
    }
    vec![warn(
        "caches",
        format!(
            "the builder cannot reach {}: it builds and copies without it until it answers",
            b.unreachable_substituters.join(", ")
        ),
        "check the network of the Docker engine's VM (a proxy, a VPN), or set `[builder] substituters` to caches it can reach (\"\" for none)",
    )]
}

/// Each remote builder: what the daemon last saw, and whether the machines file says the same.
fn check_remotes(ctx: &Ctx) -> Vec<Check> {
    let Some(st) = ctx.status() else {
        return Vec::new();
    };
    let machines = std::fs::read_to_string(&ctx.cfg.registration.machines_file).unwrap_or_default();
    st.remotes
        .iter()
        .map(|r| {
            let in_file = block::body(&machines, &r.name).is_some_and(|b| !b.is_empty());
            if r.listed != in_file && st.desired == "up" {
                return fail(
                    "remote",
                    format!(
                        "{} ({}:{}): the daemon says it is {}listed, but {} {} its line",
                        r.name,
                        r.address,
                        r.port,
                        if r.listed { "" } else { "not " },
                        ctx.cfg.registration.machines_file.display(),
                        if in_file { "has" } else { "lacks" }
                    ),
                    "run `builderctl check`; if it stays so, `builderctl logs` says why the file could not be written",
                );
            }
            remote_check(r)
        })
        .collect()
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

/// With `--build-test`: a tiny build for every system the builder reports.
fn check_build(ctx: &Ctx) -> Vec<Check> {
    if !ctx.build_test {
        return vec![];
    }
    let systems = ctx
        .status()
        .and_then(|s| s.builder.as_ref())
        .map(|b| b.systems.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| vec!["x86_64-linux".to_string()]);
    // How the builder said it runs each system: native, rosetta, qemu.
    let how = |system: &str| {
        ctx.status()
            .and_then(|s| s.builder.as_ref())
            .and_then(|b| b.platforms.iter().find(|p| p.system == system))
            .map(|p| p.how.clone())
    };
    let mut seen = HashMap::new();
    systems
        .iter()
        .filter(|s| seen.insert(s.to_string(), ()).is_none())
        .map(|system| {
            let token = format!("builderd-doctor-{system}");
            // A program of the system's own architecture runs inside the sandbox: for a foreign
            // system that is Rosetta or qemu at work where builds run, not only in the container.
            let arch = builderd::docker::probe::Arch::ALL
                .into_iter()
                .find(|a| a.nix_system() == *system);
            let probe = arch.map(builderd::docker::probe::program);
            let script = if probe.is_some() {
                format!("\"$probe\"; echo {token} $? > \"$out\"")
            } else {
                format!("echo {token} > \"$out\"")
            };
            let wanted = if probe.is_some() {
                format!("{token} {}", builderd::docker::probe::EXIT_CODE)
            } else {
                token.clone()
            };
            match remote_build_with(ctx, system, &script, probe.as_deref()) {
                Ok(b) if b.text.trim() != wanted && b.text.starts_with(&token) => fail(
                    "build",
                    format!(
                        "a {system} build ran, but a {system} program inside it did not (it wrote {:?}; 126 means the kernel would not run it)",
                        b.text.trim()
                    ),
                    match arch {
                        Some(builderd::docker::probe::Arch::X86_64) => "turn on \"Use Rosetta for x86_64/amd64 emulation on Apple Silicon\" in Docker Desktop's settings, then `builderctl down && builderctl up`",
                        _ => "register an emulator for it with the F (fix binary) flag (qemu-user-static), then `builderctl down && builderctl up`",
                    },
                ),
                Ok(b) if b.text.trim() == wanted => pass(
                    "build",
                    format!(
                        "a tiny {system} build{} ran in this builder in {:.2} s",
                        how(system).map(|h| format!(" ({h})")).unwrap_or_default(),
                        b.took.as_secs_f64()
                    ),
                ),
                Ok(b) => fail(
                    "build",
                    format!(
                        "{} in this builder's store holds {:?}, not what the build wrote",
                        b.out,
                        b.text.trim()
                    ),
                    "see `builderctl logs`",
                ),
                Err(e) => fail(
                    "build",
                    format!("{system}: {e}"),
                    "see the checks above; `builderctl logs` has the daemon's side",
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builders_fix_says_what_nix_darwin_needs() {
        let f = builders_fix(true, "@/etc/nix/machines", Path::new("/etc/nix/nix.conf"));
        assert!(f.contains("nix.distributedBuilds = true;"), "{f}");
        assert!(f.contains("darwin-rebuild switch"), "{f}");
        let f = builders_fix(false, "@/etc/nix/machines", Path::new("/etc/nix/nix.conf"));
        assert!(f.contains("builders = @/etc/nix/machines"), "{f}");
    }

    #[test]
    fn engine_kind_by_socket_path() {
        assert_eq!(
            engine_kind("unix:///Users/me/.colima/default/docker.sock"),
            EngineKind::Colima
        );
        assert_eq!(
            engine_kind("unix:///Users/me/.orbstack/run/docker.sock"),
            EngineKind::OrbStack
        );
        assert_eq!(
            engine_kind("unix:///Users/me/.docker/run/docker.sock"),
            EngineKind::DockerDesktop
        );
        assert_eq!(engine_kind("tcp://127.0.0.1:2375"), EngineKind::Other);
    }

    #[test]
    fn nix_strings_are_escaped() {
        assert_eq!(nix_str("a \"$b\" \\"), "\"a \\\"\\$b\\\" \\\\\"");
    }

    #[test]
    fn an_alias_is_found_on_a_host_line() {
        let d = std::env::temp_dir().join(format!("builderd-alias-{}", std::process::id()));
        std::fs::write(&d, "Host other nb\n  Port 1\nHost *\n").unwrap();
        assert!(defines_alias(&d, "nb"));
        assert!(!defines_alias(&d, "n"));
        let _ = std::fs::remove_file(&d);
    }
}
