//! builderd's benchmark. Every figure is measured next to a baseline in the same run (or as a
//! distribution), because the machines it runs on are shared and noisy. It prints a markdown
//! table and writes `target/bench-report.json`.
//!
//! Usage: `bench/run [--quick] [--only NAME]` (`--quick` takes fewer samples, for a smoke run;
//! `--only` runs the figures whose group is NAME: up, recovery, repair, status, builds, idle,
//! on-demand, client, copy, caches, sizing, cold).

mod cold;
mod copy;
mod sizing;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use builderd_tests::{Env, bin_dir};
use serde_json::{Value, json};

struct Figure {
    name: &'static str,
    unit: &'static str,
    runs: Vec<f64>,
    baseline_name: &'static str,
    baseline: Vec<f64>,
    /// How the figure is judged: the ratio p50(figure)/p50(baseline) (or the reverse), or p99.
    target: Target,
}

/// The daemon at rest, with the builder up or asleep: its memory and its CPU.
const IDLE_RSS: Target = Target::P99AtMost(20.0);
const IDLE_CPU: Target = Target::P50AtMost(0.5);

impl Figure {
    /// A figure judged on its own, without a baseline.
    fn absolute(name: &'static str, unit: &'static str, runs: Vec<f64>, target: Target) -> Self {
        Figure {
            name,
            unit,
            runs,
            baseline_name: "",
            baseline: vec![],
            target,
        }
    }
}

enum Target {
    /// p50(figure) / p50(baseline) at most this.
    RatioAtMost(f64),
    /// p50(baseline) / p50(figure) at least this (figure faster by this factor).
    SpeedupAtLeast(f64),
    /// p99(figure) at most this, in the figure's unit.
    P99AtMost(f64),
    /// p50 at most this.
    P50AtMost(f64),
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

impl Figure {
    fn ratio(&self) -> Option<f64> {
        if self.baseline.is_empty() {
            return None;
        }
        Some(match self.target {
            Target::SpeedupAtLeast(_) => pct(&self.baseline, 0.5) / pct(&self.runs, 0.5),
            _ => pct(&self.runs, 0.5) / pct(&self.baseline, 0.5),
        })
    }

    fn verdict(&self) -> (bool, String) {
        match self.target {
            Target::RatioAtMost(t) => {
                let r = self.ratio().unwrap();
                (r <= t, format!("ratio ≤ {t:.2}"))
            }
            Target::SpeedupAtLeast(t) => {
                let r = self.ratio().unwrap();
                (r >= t, format!("≥ {t:.0}× faster"))
            }
            Target::P99AtMost(t) => (
                pct(&self.runs, 0.99) <= t,
                format!("p99 ≤ {t} {}", self.unit),
            ),
            Target::P50AtMost(t) => (pct(&self.runs, 0.5) <= t, format!("≤ {t} {}", self.unit)),
        }
    }

    fn json(&self) -> Value {
        let (met, target) = self.verdict();
        json!({
            "name": self.name,
            "unit": self.unit,
            "runs": self.runs.len(),
            "p50": pct(&self.runs, 0.5),
            "p99": pct(&self.runs, 0.99),
            "baseline": self.baseline_name,
            "baseline_runs": self.baseline.len(),
            "baseline_p50": if self.baseline.is_empty() { Value::Null } else { json!(pct(&self.baseline, 0.5)) },
            "baseline_p99": if self.baseline.is_empty() { Value::Null } else { json!(pct(&self.baseline, 0.99)) },
            "ratio": self.ratio(),
            "target": target,
            "met": met,
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.stdin(Stdio::null()).output().expect("command runs")
}

fn ssh_ready(env: &Env, kh: &std::path::Path) -> bool {
    env.ssh_pinned(kh, "true").status.success()
}

fn status(env: &Env) -> Value {
    let o = env.ctl(&["status", "--json"]);
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

/// 1. `up` with the image cached, against `docker run` of the same image and flags plus polling
///    `ssh true`.
fn up_cached(env: &Env, n: usize) -> Figure {
    env.up();
    env.ctl_ok(&["down"]);
    let mut runs = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        env.ctl_ok(&["up"]);
        runs.push(ms(t.elapsed()));
        env.ctl_ok(&["down"]);
    }
    // The floor: the docker CLI with the flags builderd uses, then ssh until it answers.
    let image = status_image(env);
    let kh = env.path("bench_known_hosts");
    let mut baseline = Vec::new();
    let name = format!("{}-floor", env.name);
    for _ in 0..n {
        let _ = run(Command::new("docker").args(["rm", "-f", &name]));
        let t = Instant::now();
        let o = run(Command::new("docker").args([
            "run",
            "-d",
            "--name",
            &name,
            "-p",
            &format!("127.0.0.1:{}:22", env.port),
            "-v",
            &format!(
                "{}:/var/lib/nix-builder",
                env.path("state/volume").display()
            ),
            // The privileges Nix's sandbox needs, as builderd grants them.
            "--cap-add",
            "SYS_ADMIN",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "--security-opt",
            "systempaths=unconfined",
            "-e",
            "NIX_BUILDER_SANDBOX=true",
            "-e",
            "NIX_BUILDER_SUBSTITUTERS=",
            &image,
        ]));
        assert!(
            o.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        if !kh.exists() {
            std::fs::write(
                &kh,
                format!("[localhost]:{} {}\n", env.port, env.host_key_line()),
            )
            .unwrap();
        }
        while !ssh_ready(env, &kh) {
            std::thread::sleep(Duration::from_millis(10));
        }
        baseline.push(ms(t.elapsed()));
        let _ = run(Command::new("docker").args(["rm", "-f", &name]));
    }
    Figure {
        name: "up, image cached → healthy",
        unit: "ms",
        runs,
        baseline_name: "docker run (same flags) + polling ssh true",
        baseline,
        target: Target::RatioAtMost(1.10),
    }
}

fn status_image(env: &Env) -> String {
    let cfg = builderd::config::Config::load(&env.config).unwrap();
    builderd::docker::image_for(&cfg).unwrap().0
}

fn health_seq(s: &Value) -> u64 {
    s["last_health"]["seq"].as_u64().unwrap_or(0)
}

/// 2. Recovery after `docker kill`, against `docker start` of the same container plus ssh-ready.
fn recovery(env: &Env, n: usize) -> (Figure, Figure) {
    env.up();
    let kh = env.path("home/.ssh/known_hosts");
    let mut runs = Vec::new();
    let mut lags = Vec::new();
    for _ in 0..n {
        let before = status(env);
        let seq = health_seq(&before);
        let events = before["last_event"]["count"].as_u64().unwrap_or(0);
        let t = Instant::now();
        run(Command::new("docker").args(["kill", &env.name]));
        loop {
            let s = status(env);
            if s["healthy"] == true && health_seq(&s) > seq && s["state"] == "up" {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        runs.push(ms(t.elapsed()));
        // The lag of the "die" event (the last event may be the "start" that followed).
        let s = status(env);
        if s["last_event"]["count"].as_u64().unwrap_or(0) > events {
            lags.push(s["last_event"]["lag_ms"].as_f64().unwrap_or(f64::NAN));
        }
    }
    // The floor: the daemon stopped, so that only the CLI restarts the container.
    env.ctl_ok(&["shutdown"]);
    std::thread::sleep(Duration::from_millis(300));
    let mut baseline = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        run(Command::new("docker").args(["kill", &env.name]));
        run(Command::new("docker").args(["start", &env.name]));
        while !ssh_ready(env, &kh) {
            std::thread::sleep(Duration::from_millis(10));
        }
        baseline.push(ms(t.elapsed()));
    }
    env.up();
    (
        Figure {
            name: "recovery after docker kill → healthy",
            unit: "ms",
            runs,
            baseline_name: "docker kill + docker start + polling ssh true",
            baseline,
            target: Target::RatioAtMost(1.25),
        },
        Figure::absolute(
            "Docker event seen (engine timestamp → builderd)",
            "ms",
            lags,
            Target::P99AtMost(50.0),
        ),
    )
}

/// 3. An outside edit of the machines file until it is correct again.
fn repair(env: &Env, n: usize) -> Figure {
    env.up();
    let machines = env.path("etc/nix/machines");
    let mut runs = Vec::new();
    for i in 0..n {
        let user = format!("ssh-ng://user{i} aarch64-linux - 1 1\n");
        let t = Instant::now();
        std::fs::write(&machines, &user).unwrap();
        loop {
            let text = std::fs::read_to_string(&machines).unwrap_or_default();
            if text.contains("ssh-ng://bdt") && text.ends_with(&user) {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        runs.push(ms(t.elapsed()));
    }
    Figure::absolute(
        "registration repair (edit → correct again)",
        "ms",
        runs,
        Target::P99AtMost(100.0),
    )
}

/// 4. `builderctl status --json` against `docker inspect` of the same container.
fn status_round_trip(env: &Env, n: usize) -> Figure {
    env.up();
    let ctl = bin_dir().join("builderctl");
    let mut runs = Vec::new();
    let mut baseline = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let o = run(Command::new(&ctl)
            .arg("--config")
            .arg(&env.config)
            .args(["status", "--json"]));
        runs.push(ms(t.elapsed()));
        assert!(o.status.success());
        let t = Instant::now();
        let o = run(Command::new("docker").args(["inspect", &env.name]));
        baseline.push(ms(t.elapsed()));
        assert!(o.status.success());
    }
    Figure {
        name: "builderctl status --json round trip",
        unit: "ms",
        runs,
        baseline_name: "docker inspect (CLI) of the same container",
        baseline,
        target: Target::SpeedupAtLeast(20.0),
    }
}

/// 4b. The same question without process start-up on either side: the daemon's status over its
///     socket, against the engine's inspect over its API.
fn status_in_process(env: &Env, n: usize) -> Figure {
    let cfg = builderd::config::Config::load(&env.config).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let docker = builderd::docker::connect(&builderd::docker::resolve_endpoint(&cfg))
            .await
            .unwrap();
        let mut runs = Vec::new();
        let mut baseline = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            builderd::client::request(&cfg.socket, builderd::protocol::Request::Status, |_| {})
                .await
                .unwrap();
            runs.push(ms(t.elapsed()));
            let t = Instant::now();
            builderd::docker::inspect(&docker, &cfg.container_name)
                .await
                .unwrap();
            baseline.push(ms(t.elapsed()));
        }
        Figure {
            name: "status over the socket (library client)",
            unit: "ms",
            runs,
            baseline_name: "container inspect over the engine API (bollard)",
            baseline,
            target: Target::SpeedupAtLeast(20.0),
        }
    })
}

/// 4c. The client's own cost: `builderctl --version` (process start alone) against `/bin/true`,
///     and `builderctl status --json` (start, config, one round trip) against the same
///     `/bin/true`; and the client's size, a plain figure (it links builderd-core, not the
///     daemon's library, the engine client or an SSH client).
fn client_start(env: &Env, n: usize) -> Vec<Figure> {
    env.up();
    let ctl = bin_dir().join("builderctl");
    let time = |cmd: &mut Command| {
        let t = Instant::now();
        let o = run(cmd);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        ms(t.elapsed())
    };
    let (mut version, mut status, mut truth) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        truth.push(time(&mut Command::new("/bin/true")));
        version.push(time(Command::new(&ctl).arg("--version")));
        status.push(time(
            Command::new(&ctl)
                .arg("--config")
                .arg(&env.config)
                .args(["status", "--json"]),
        ));
    }
    let size = std::fs::metadata(&ctl).map_or(f64::NAN, |m| m.len() as f64 / (1 << 20) as f64);
    vec![
        Figure {
            name: "builderctl --version (process start)",
            unit: "ms",
            runs: version,
            baseline_name: "/bin/true",
            baseline: truth.clone(),
            target: Target::RatioAtMost(3.0),
        },
        Figure {
            name: "builderctl status --json (start + round trip)",
            unit: "ms",
            runs: status,
            baseline_name: "/bin/true",
            baseline: truth,
            target: Target::RatioAtMost(6.0),
        },
        Figure::absolute(
            "builderctl size (release, stripped)",
            "MiB",
            vec![size],
            Target::P50AtMost(4.0),
        ),
    ]
}

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Summed over every thread of `pid`: CPU time in nanoseconds (schedstat) and context switches.
fn threads(pid: u32) -> (u64, u64) {
    let mut cpu = 0;
    let mut switches = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let tid: u32 = t.file_name().to_string_lossy().parse().unwrap_or(0);
        cpu += std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        switches += proc_field(
            pid,
            &format!("task/{tid}/status"),
            "voluntary_ctxt_switches:",
        ) + proc_field(
            pid,
            &format!("task/{tid}/status"),
            "nonvoluntary_ctxt_switches:",
        );
    }
    (cpu, switches)
}

/// The CPU time `pid` has used, threads that have ended included (utime + stime of
/// /proc/PID/stat, in clock ticks of 10 ms).
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// 5. Idle footprint while up, over `secs` seconds.
fn idle(secs: u64) -> Vec<Figure> {
    // The default health interval (30 s): what a user runs.
    let env = Env::new("");
    let text = env
        .config_text()
        .replace("health_interval = 2", "health_interval = 30");
    std::fs::write(&env.config, text).unwrap();
    env.up();
    std::thread::sleep(Duration::from_secs(2));
    let pid: u32 = std::fs::read_to_string(env.path("state/builderd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (c0, s0) = threads(pid);
    let mut rss = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        rss.push(proc_field(pid, "status", "VmRSS:") as f64 / 1024.0);
        std::thread::sleep(Duration::from_secs(1));
    }
    let wall = start.elapsed().as_secs_f64();
    let (c1, s1) = threads(pid);
    let cpu = c1.saturating_sub(c0) as f64 / 1e9 / wall * 100.0;
    let switches = s1.saturating_sub(s0) as f64 / wall;
    vec![
        Figure::absolute("idle RSS", "MiB", rss, IDLE_RSS),
        Figure::absolute("idle CPU (% of one core)", "%", vec![cpu], IDLE_CPU),
        Figure::absolute(
            "idle wake-ups (context switches/s, all threads)",
            "/s",
            vec![switches],
            Target::P50AtMost(5.0),
        ),
    ]
}

/// 6. Tiny remote builds through the registered machines file (builderd's ssh_config, with
///    connection sharing), against the same builds through a bare alias without it.
fn nix_builds(env: &Env, n: usize) -> Figure {
    env.up();
    let bare = env.path("bare_ssh_config");
    std::fs::write(
        &bare,
        format!(
            "Host {name}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n  HostKeyAlias {name}\n  UserKnownHostsFile {kh}\n  StrictHostKeyChecking yes\n  BatchMode yes\n  ControlMaster no\n  ControlPath none\n",
            name = env.name,
            port = env.port,
            key = env.path("home/.ssh/id_ed25519").display(),
            kh = env.path("root/.ssh/known_hosts").display(),
        ),
    )
    .unwrap();
    let registered = env.path("root/.ssh/config");
    let mut runs = Vec::new();
    let mut baseline = Vec::new();
    // As Nix runs them: ssh reads the file and shares connections as it says.
    let as_nix = |cfg: &std::path::Path, label: String| {
        env.nix_build_with(
            &format!("-F {}", cfg.display()),
            &label,
            "x86_64-linux",
            "\"/bin/sh\"",
        )
    };
    for i in 0..n {
        let t = Instant::now();
        as_nix(&registered, format!("bench-reg-{i}"));
        runs.push(ms(t.elapsed()));
        let t = Instant::now();
        as_nix(&bare, format!("bench-bare-{i}"));
        baseline.push(ms(t.elapsed()));
    }
    Figure {
        name: "20 tiny remote builds via the machines file",
        unit: "ms",
        runs,
        baseline_name: "the same builds through a bare alias, no connection reuse",
        baseline,
        target: Target::RatioAtMost(0.6),
    }
}

/// Reads from 127.0.0.1:`port` until the SSH banner; false if the connection closes first.
fn banner(port: u16, deadline: Instant) -> bool {
    use std::io::Read;
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
            let mut buf = [0u8; 8];
            if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"SSH-") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn wait_state(env: &Env, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(env)["state"] != state {
        assert!(
            Instant::now() < deadline,
            "the builder did not become {state}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The port the container's sshd is published on (on demand, one the engine picked).
fn published_port(name: &str) -> u16 {
    let o = run(Command::new("docker").args(["port", name, "22/tcp"]));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next()?.trim().parse().ok())
        .expect("a published port")
}

/// 7. On demand: the first connection to a sleeping builder until its SSH banner, against
///    `docker start` of the same container until sshd's banner; a 200 MiB stream through the
///    relay against the same straight to the container; the daemon while the builder sleeps.
fn on_demand(n: usize, stream_runs: usize, idle_secs: u64, tiny_conns: usize) -> Vec<Figure> {
    let env = Env::new("on_demand = true\nidle_stop = 1\n");
    env.up();
    let mut wake = Vec::new();
    for _ in 0..n {
        wait_state(&env, "sleeping");
        let t = Instant::now();
        assert!(banner(env.port, t + Duration::from_secs(120)));
        wake.push(ms(t.elapsed()));
    }
    // 200 MiB through ssh, relayed and direct, while it is awake.
    let kh = env.path("home/.ssh/known_hosts");
    let key = env.path("home/.ssh/id_ed25519");
    let stream = |port: u16| {
        let t = Instant::now();
        let o = run(Command::new("sh").arg("-c").arg(format!(
            "head -c 209715200 /dev/zero | ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes \
             -o StrictHostKeyChecking=yes -o UserKnownHostsFile={kh} -o HostKeyAlias=[localhost]:{relay} \
             -i {key} -p {port} root@127.0.0.1 'cat > /dev/null'",
            kh = kh.display(),
            key = key.display(),
            relay = env.port,
        )));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        ms(t.elapsed())
    };
    // A connection held open through the relay keeps the builder awake while the direct
    // streams (which the relay does not see) run.
    let keep_awake = std::net::TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    wait_state(&env, "up");
    let mut relayed = Vec::new();
    let mut direct = Vec::new();
    for _ in 0..stream_runs {
        relayed.push(stream(env.port));
        let sshd = published_port(&env.name);
        direct.push(stream(sshd));
    }
    // 200 tiny sequential connections (`ssh true`, each with its own handshake), relayed and
    // direct, one run each.
    let tiny = |port: u16| {
        let t = Instant::now();
        for _ in 0..tiny_conns {
            let o = env.ssh_pinned_at(&kh, port, "true");
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        ms(t.elapsed())
    };
    let tiny_relayed = vec![tiny(env.port)];
    let tiny_direct = vec![tiny(published_port(&env.name))];
    drop(keep_awake);
    // The daemon's footprint while the builder sleeps.
    wait_state(&env, "sleeping");
    let pid: u32 = std::fs::read_to_string(env.path("state/builderd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let c0 = process_cpu(pid);
    let mut rss = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(idle_secs) {
        rss.push(proc_field(pid, "status", "VmRSS:") as f64 / 1024.0);
        std::thread::sleep(Duration::from_secs(1));
    }
    let cpu = (process_cpu(pid) - c0).as_secs_f64() / start.elapsed().as_secs_f64() * 100.0;
    // The floor: the same container started by the CLI, with the daemon gone.
    env.ctl_ok(&["shutdown"]);
    std::thread::sleep(Duration::from_millis(300));
    let mut floor = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        run(Command::new("docker").args(["start", &env.name]));
        let port = published_port(&env.name);
        assert!(banner(port, t + Duration::from_secs(120)));
        floor.push(ms(t.elapsed()));
        run(Command::new("docker").args(["stop", "-t", "5", &env.name]));
    }
    vec![
        Figure {
            name: "on demand: first connection to a sleeping builder → SSH banner",
            unit: "ms",
            runs: wake,
            baseline_name: "docker start + sshd's banner",
            baseline: floor,
            target: Target::RatioAtMost(1.2),
        },
        Figure {
            name: "on demand: 200 MiB through ssh, relayed",
            unit: "ms",
            runs: relayed,
            baseline_name: "the same straight to the container's port",
            baseline: direct,
            target: Target::RatioAtMost(1.03),
        },
        Figure {
            name: "on demand: 200 tiny sequential ssh connections, relayed",
            unit: "ms",
            runs: tiny_relayed,
            baseline_name: "the same straight to the container's port",
            baseline: tiny_direct,
            target: Target::RatioAtMost(1.1),
        },
        Figure::absolute(
            "on demand: daemon RSS while the builder sleeps",
            "MiB",
            rss,
            IDLE_RSS,
        ),
        Figure::absolute(
            "on demand: daemon CPU while the builder sleeps (% of one core)",
            "%",
            vec![cpu],
            IDLE_CPU,
        ),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only up` runs the figures whose name contains "up" (and their baselines).
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let want = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    let n = |full: usize| {
        if quick {
            full.div_ceil(10).max(3)
        } else {
            full
        }
    };
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut figures = Vec::new();
    {
        let env = Env::new("");
        if want("up") {
            eprintln!("bench: up with the image cached …");
            figures.push(up_cached(&env, n(10)));
        }
        if want("recovery") {
            eprintln!("bench: recovery after docker kill …");
            let (rec, lag) = recovery(&env, n(10));
            figures.push(rec);
            figures.push(lag);
        }
        if want("repair") {
            eprintln!("bench: registration repair …");
            figures.push(repair(&env, n(200)));
        }
        if want("status") {
            eprintln!("bench: status round trip …");
            figures.push(status_round_trip(&env, n(200)));
            figures.push(status_in_process(&env, n(200)));
        }
        if want("client") {
            eprintln!("bench: the client's start and size …");
            figures.extend(client_start(&env, n(200)));
        }
        if want("builds") {
            eprintln!("bench: remote builds …");
            figures.push(nix_builds(&env, n(20)));
        }
    }
    if want("copy") || want("caches") {
        eprintln!("bench: closure copies and the builder's caches …");
        let cache = copy::LocalCache::start();
        // The quick start's default cache, which nothing here can reach, and a local one.
        let offline = copy::Side::new("https://cache.nixos.org/");
        let online = copy::Side::new(&cache.url);
        if want("copy") {
            figures.extend(copy::rows(&offline, "its cache unreachable", n(5), true));
            figures.extend(copy::rows(&online, "its cache reachable", n(5), false));
            figures.push(copy::small_paths(&offline, n(5)));
        }
        if want("caches") {
            let none = copy::Side::new("");
            figures.push(copy::build_rows(
                &offline,
                &none,
                "the builder's cache unreachable",
                n(10),
            ));
            figures.push(copy::build_rows(
                &online,
                &none,
                "the builder's cache reachable",
                n(10),
            ));
        }
    }
    if want("sizing") {
        eprintln!("bench: builds sized to the engine …");
        figures.push(sizing::rows(n(3)));
    }
    if want("cold") {
        eprintln!("bench: the cold first run …");
        figures.push(cold::row(if quick { 1 } else { 3 }));
    }
    if want("idle") {
        eprintln!("bench: idle footprint …");
        figures.extend(idle(if quick { 10 } else { 60 }));
    }
    if want("on-demand") {
        eprintln!("bench: on demand …");
        figures.extend(on_demand(
            n(10),
            if quick { 2 } else { 5 },
            if quick { 10 } else { 30 },
            if quick { 20 } else { 200 },
        ));
    }

    let host = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("| figure | runs | p50 | p99 | baseline p50 | ratio | target | met |");
    println!("|---|---|---|---|---|---|---|---|");
    for f in &figures {
        let (met, target) = f.verdict();
        println!(
            "| {} | {} | {:.2} {u} | {:.2} {u} | {} | {} | {} | {} |",
            f.name,
            f.runs.len(),
            pct(&f.runs, 0.5),
            pct(&f.runs, 0.99),
            if f.baseline.is_empty() {
                "–".to_string()
            } else {
                format!(
                    "{:.2} {} ({})",
                    pct(&f.baseline, 0.5),
                    f.unit,
                    f.baseline_name
                )
            },
            f.ratio().map_or("–".to_string(), |r| format!("{r:.2}")),
            target,
            if met { "yes" } else { "**no**" },
            u = f.unit,
        );
    }
    println!(
        "\n{} cores, {host}; {}",
        cores,
        if quick { "quick run" } else { "full run" }
    );
    let report = json!({
        "started_unix": started,
        "machine": { "cores": cores, "cpu": host },
        "quick": quick,
        "figures": figures.iter().map(Figure::json).collect::<Vec<_>>(),
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-report.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    eprintln!("bench: wrote {}", path.display());
}
