//! What builderctl prints: messages, progress (indicatif on a terminal, plain lines otherwise),
//! and the status table.

use std::io::IsTerminal;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use builderd_core::client;
use builderd_core::config::Config;
use builderd_core::protocol::{Progress, Reply, Request, State, Status};
use indicatif::{ProgressBar, ProgressStyle};

use crate::exit;

pub struct Out {
    quiet: bool,
    verbose: bool,
    tty: bool,
    color: bool,
}

impl Out {
    pub fn new(quiet: bool, verbose: bool) -> Out {
        let tty = std::io::stderr().is_terminal();
        let color = std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Out {
            quiet,
            verbose,
            tty,
            color,
        }
    }

    pub fn color(&self) -> bool {
        self.color
    }

    pub fn info(&self, msg: &str) {
        if !self.quiet {
            println!("{msg}");
        }
    }

    pub fn print(&self, msg: &str) {
        print!("{msg}");
    }

    pub fn error(&self, msg: &str) {
        eprintln!("builderctl: {msg}");
    }

    pub fn progress(&self) -> Steps {
        let bar = (self.tty && !self.quiet).then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix:>10} {wide_msg} {elapsed}")
                    .expect("a valid template"),
            );
            b.enable_steady_tick(Duration::from_millis(100));
            b
        });
        Steps {
            bar,
            quiet: self.quiet,
            verbose: self.verbose,
            last_stage: std::cell::RefCell::new(String::new()),
            last_step: std::cell::RefCell::new(None),
        }
    }
}

/// Progress of one long request.
pub struct Steps {
    bar: Option<ProgressBar>,
    quiet: bool,
    verbose: bool,
    last_stage: std::cell::RefCell<String>,
    last_step: std::cell::RefCell<Option<(u64, u64)>>,
}

impl Steps {
    pub fn step(&self, p: &Progress) {
        if let Some(b) = &self.bar {
            b.set_prefix(p.stage.clone());
            // Build output between two steps keeps the last step's count on screen.
            let mut last = self.last_step.borrow_mut();
            if p.stage != "image" {
                *last = None;
            } else if let (Some(c), Some(t)) = (p.current, p.total) {
                *last = Some((c, t));
            }
            let n = match *last {
                Some((c, t)) => format!("[{c}/{t}] "),
                None => String::new(),
            };
            b.set_message(format!("{n}{}", p.message));
            if self.verbose {
                b.println(format!("{:>10} {}", p.stage, p.message));
            }
            return;
        }
        if self.quiet {
            return;
        }
        // Plain output: one line per stage, and every line with --verbose.
        let new_stage = *self.last_stage.borrow() != p.stage;
        if new_stage || self.verbose || p.stage != "image" {
            eprintln!("{:>10}  {}", p.stage, p.message);
        }
        *self.last_stage.borrow_mut() = p.stage.clone();
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `3m 12s`, `2h 5m`, `4d 1h`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

pub use builderd_core::human::human_bytes;

/// `s` in the terminal colour `code`, when colour is on.
pub fn paint(s: &str, code: &str, color: bool) -> String {
    if color {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

/// The human status table.
pub fn render_status(st: &Status, color: bool) -> String {
    let state_color = match st.state {
        State::Up => "32",
        State::Starting | State::WaitingForDocker => "33",
        State::Down | State::Sleeping => "2",
        State::Degraded | State::Error => "31",
    };
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut state = paint(st.state.as_str(), state_color, color);
    if let Some(since) = st.up_since.filter(|_| st.state == State::Up) {
        state.push_str(&format!(
            " for {}",
            human_duration(now().saturating_sub(since))
        ));
    }
    if st.desired != "up" && st.state != State::Down {
        state.push_str(&format!(" (wanted {})", st.desired));
    }
    rows.push(("state".into(), state));
    if let Some(r) = &st.reason {
        let first = r.lines().next().unwrap_or("");
        rows.push(("reason".into(), first.to_string()));
        for l in r.lines().skip(1).take(6) {
            rows.push((String::new(), format!("  {l}")));
        }
    }
    rows.push((
        "builder".into(),
        match &st.container {
            Some(c) => format!(
                "{} ({}, {}) on 127.0.0.1:{}",
                c.name, c.id, c.state, st.port
            ),
            None => format!("no container; port {}", st.port),
        },
    ));
    if let Some(h) = &st.last_health {
        let ago = human_duration(now().saturating_sub(h.at));
        rows.push((
            "health".into(),
            if h.ok {
                paint(
                    &format!("ok, {:.0} ms, {ago} ago", h.latency_ms),
                    "32",
                    color,
                )
            } else {
                paint(
                    &format!(
                        "failed at {} {ago} ago ({}×): {}",
                        h.failed_stage.as_deref().unwrap_or("?"),
                        h.consecutive_failures,
                        h.error.as_deref().unwrap_or("")
                    ),
                    "31",
                    color,
                )
            },
        ));
    }
    if let Some(fp) = &st.host_key_fingerprint {
        rows.push(("host key".into(), fp.clone()));
    }
    if let Some(p) = &st.state_file_problem {
        rows.push(("state file".into(), paint(p, "33", color)));
    }
    if let Some(c) = &st.host_key_changed {
        rows.push((
            String::new(),
            paint(&format!("changed from {} to {}", c.from, c.to), "33", color),
        ));
    }
    if let Some(z) = &st.sizing {
        let mut j = format!("{} at once, {} cores each", z.max_jobs, z.cores);
        if let (Some(c), Some(m)) = (z.engine_cpus, z.engine_memory_bytes) {
            j.push_str(&format!(" (engine: {c} CPUs, {})", human_bytes(m)));
        }
        rows.push(("jobs".into(), j));
    }
    if let Some(b) = &st.builder {
        let how = |sys: &str| {
            b.platforms
                .iter()
                .find(|p| p.system == sys)
                .map_or("not reported", |p| p.how.as_str())
                .to_string()
        };
        rows.push((
            "systems".into(),
            b.systems
                .iter()
                .map(|s| format!("{s} ({})", how(s)))
                .collect::<Vec<_>>()
                .join(", "),
        ));
        rows.push(("nix".into(), b.nix_version.clone()));
        if let (Some(free), Some(total)) = (b.disk_free_bytes, b.disk_total_bytes) {
            let mut d = format!("{} free of {}", human_bytes(free), human_bytes(total));
            if let Some(s) = b.store_bytes {
                d.push_str(&format!(", store {}", human_bytes(s)));
            }
            rows.push(("disk".into(), d));
        }
        if !b.unreachable_substituters.is_empty() {
            rows.push((
                "caches".into(),
                paint(
                    &format!(
                        "unreachable: {} (builds go on without it)",
                        b.unreachable_substituters.join(", ")
                    ),
                    "33",
                    color,
                ),
            ));
        }
    }
    for r in &st.registrations {
        let state = match r.state.as_str() {
            "ok" if r.repairs > 0 => paint(&format!("repaired {}×", r.repairs), "33", color),
            "ok" => paint("ok", "32", color),
            "owned-by-nix-darwin" => paint("owned by nix-darwin (see doctor)", "33", color),
            "served-user-only" => paint(
                "not listed: the builder is for the served user only (see doctor)",
                "33",
                color,
            ),
            "removed" => "removed".to_string(),
            other => paint(
                &format!(
                    "{other}: {}",
                    r.detail
                        .as_deref()
                        .and_then(|d| d.lines().next())
                        .unwrap_or("")
                ),
                "31",
                color,
            ),
        };
        rows.push((r.kind.clone(), format!("{}  {state}", r.path)));
    }
    for r in &st.remotes {
        let color_of = match r.state.as_str() {
            "up" => "32",
            "checking" | "down" => "2",
            "pending-trust" | "unhealthy" => "33",
            _ => "31",
        };
        let mut line = format!(
            "{} {}:{}  {}",
            r.name,
            r.address,
            r.port,
            paint(&r.state, color_of, color)
        );
        line.push_str(if r.listed { ", listed" } else { ", not listed" });
        if let Some(h) = &r.last_health
            && h.ok
        {
            line.push_str(&format!(", {:.0} ms", h.latency_ms));
        }
        if !r.systems.is_empty() {
            line.push_str(&format!(", {}", r.systems.join(",")));
        }
        rows.push(("remote".into(), line));
        if let Some(fp) = &r.host_key_fingerprint {
            rows.push((
                String::new(),
                format!(
                    "  host key {fp} ({})",
                    r.host_key_source.as_deref().unwrap_or("pinned")
                ),
            ));
        }
        if let Some(fp) = &r.pending_host_key {
            rows.push((
                String::new(),
                paint(
                    &format!(
                        "  presented {fp}, not pinned: `builderctl trust {} {fp}`",
                        r.name
                    ),
                    "33",
                    color,
                ),
            ));
        }
        if let Some(reason) = r.reason.as_deref().filter(|_| r.pending_host_key.is_none()) {
            rows.push((
                String::new(),
                format!("  {}", reason.lines().next().unwrap_or("")),
            ));
        }
    }
    rows.push((
        "daemon".into(),
        format!(
            "builderd {} (protocol {}), pid {}, docker {}",
            st.version, st.protocol, st.pid, st.docker_host
        ),
    ));
    let mut s = String::new();
    for (k, v) in rows {
        s.push_str(&format!("{k:>11}  {v}\n"));
    }
    s
}

/// `builderctl status [--json] [--watch]`.
pub async fn status(cfg: &Config, json: bool, watch: bool, out: &Out) -> u8 {
    loop {
        let st = match client::request(&cfg.socket, Request::Status, |_| {}).await {
            Ok(Reply::Status(st)) => st,
            Ok(other) => {
                out.error(&format!("unexpected reply: {other:?}"));
                return exit::FAILURE;
            }
            Err(e) if e.is_unreachable() && !watch => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"state": "not-running", "healthy": false, "error": e.to_string()})
                    );
                } else {
                    out.error(&e.to_string());
                }
                return exit::UNREACHABLE;
            }
            Err(e) => {
                out.error(&e.to_string());
                return exit::UNREACHABLE;
            }
        };
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&st).expect("status serializes")
            );
            return exit::OK;
        }
        let table = render_status(&st, out.color());
        if !watch {
            out.print(&table);
            return exit::OK;
        }
        // Clear the screen and redraw in place.
        print!("\x1b[H\x1b[2J{table}\n(refreshing every second; Ctrl-C to stop)\n");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
