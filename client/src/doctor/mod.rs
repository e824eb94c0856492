//! `builderctl doctor`: every check, each PASS, WARN or FAIL with the exact fix.
//!
//! The daemon runs the checks that need its knowledge (`doctor` on the socket; `builderd
//! doctor` when no daemon answers) and hands back their findings as data. This side runs the
//! checks that must run as the user (their ssh, root's ssh, a real build through their Nix)
//! and prints them all in [`ORDER`].

mod build;
mod ssh;

use std::path::Path;
use std::process::{Command, Stdio};

use builderd_core::client::{self, ClientError};
use builderd_core::config::Config;
use builderd_core::doctor::{Finding, Level, ORDER, Report};
use builderd_core::protocol::{ErrorKind, Reply, Request, Status};

use crate::exit;
use crate::output::{Out, paint};

/// What the client's checks look at: the daemon's report and the config.
struct Ctx<'a> {
    cfg: &'a Config,
    report: &'a Report,
    /// What is wrong with the daemon, when it did not answer `doctor`.
    daemon: Option<Finding>,
    build_test: bool,
}

impl Ctx<'_> {
    fn status(&self) -> Option<&Status> {
        self.report.status.as_deref()
    }

    /// The daemon says healthy and the engine says the container runs.
    fn up(&self) -> bool {
        self.report.up
    }

    /// builderd's own line in the machines file.
    fn machines_line(&self) -> Option<String> {
        self.report.machines_line.clone()
    }
}

type CheckFn = fn(&Ctx) -> Vec<Finding>;

/// The client's checks, by their name in [`ORDER`]; the daemon runs the others.
const CHECKS: &[(&str, CheckFn)] = &[
    ("daemon", check_daemon),
    ("x86_64", ssh::check_x86_64),
    ("root-ssh", ssh::check_root_ssh),
    ("sandbox", build::check_sandbox),
    ("build", build::check_build),
];

fn check_daemon(ctx: &Ctx) -> Vec<Finding> {
    ctx.daemon.iter().cloned().collect()
}

/// The daemon's findings: from the running daemon, else from `builderd doctor`.
async fn daemon_report(cfg: &Config, config_path: &Path) -> (Option<Finding>, Report) {
    let older = |e: String| {
        Finding::fail(
            "daemon",
            format!("answers, but not to doctor: {e}"),
            "run `builderctl shutdown`, then `builderctl up`, so that a daemon of this version runs",
        )
    };
    let daemon = match client::request(&cfg.socket, Request::Doctor, |_| {}).await {
        Ok(Reply::Doctor(r)) => return (None, *r),
        Ok(other) => older(format!("unexpected reply {other:?}")),
        // A daemon older than the `doctor` request.
        Err(
            e @ ClientError::Daemon {
                kind: ErrorKind::BadRequest,
                ..
            },
        ) => older(e.to_string()),
        Err(e) => Finding::fail(
            "daemon",
            format!("not reachable: {e}"),
            "run `builderctl up` (or `sudo builderctl install` to keep it running)",
        ),
    };
    let report = one_shot(config_path).unwrap_or_else(|e| Report {
        findings: vec![Finding::fail(
            "doctor",
            format!("the daemon's checks could not run: {e}"),
            "install builderd next to builderctl (or on PATH)",
        )],
        up: false,
        down: false,
        machines_line: None,
        status: None,
    });
    (Some(daemon), report)
}

/// `builderd doctor`: the daemon's checks without a daemon.
fn one_shot(config_path: &Path) -> Result<Report, String> {
    let mut cmd = Command::new(crate::daemon_binary());
    cmd.arg("doctor").stdin(Stdio::null());
    // The default config may be missing (it means the defaults); a named one was read already.
    if config_path.exists() {
        cmd.arg("--config").arg(config_path);
    }
    let o = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", crate::daemon_binary().display()))?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).trim().to_string());
    }
    serde_json::from_slice(&o.stdout).map_err(|e| format!("builderd doctor printed no report: {e}"))
}

pub async fn run(cfg: &Config, config_path: &Path, build_test: bool, out: &Out) -> u8 {
    let (daemon, report) = daemon_report(cfg, config_path).await;
    let ctx = Ctx {
        cfg,
        report: &report,
        daemon,
        build_test,
    };
    let mut failed = false;
    for name in ORDER {
        let found = match CHECKS.iter().find(|(n, _)| n == name) {
            Some((_, check)) => check(&ctx),
            None => report
                .findings
                .iter()
                .filter(|f| f.check == *name)
                .cloned()
                .collect(),
        };
        for f in found {
            failed |= f.level == Level::Fail;
            print(&f, out.color());
        }
    }
    // Findings of no known check (an error running them, a newer daemon's): last.
    for f in report
        .findings
        .iter()
        .filter(|f| !ORDER.contains(&f.check.as_str()))
    {
        failed |= f.level == Level::Fail;
        print(f, out.color());
    }
    if failed { exit::DOCTOR } else { exit::OK }
}

fn print(f: &Finding, color: bool) {
    let code = match f.level {
        Level::Pass => "32",
        Level::Warn => "33",
        Level::Fail => "31",
    };
    println!(
        "{}  {:<10} {}",
        paint(f.level.as_str(), code, color),
        f.name,
        f.message
    );
    if let Some(fix) = &f.fix {
        for (i, l) in fix.lines().enumerate() {
            println!(
                "      {:<10} {}{l}",
                "",
                if i == 0 { "fix: " } else { "     " }
            );
        }
    }
}
