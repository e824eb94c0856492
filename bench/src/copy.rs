//! Closure copies and builds through the registration (the alias in root's ssh_config, as the
//! nix-daemon uses it), against raw ssh on the same alias, with the builder's binary cache
//! reachable (a local HTTP cache) and unreachable (the default cache.nixos.org, with no way out).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use builderd_tests::Env;

use crate::{Figure, Target, ms, run};

const MIB_200: u64 = 200 * 1024 * 1024;
/// ≥ 0.85× the raw rate is a time ≤ 1/0.85 of raw.
const RATE: f64 = 1.0 / 0.85;

fn sh(script: &str) -> std::process::Output {
    let o = run(Command::new("sh").arg("-c").arg(script));
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn timed(script: &str) -> f64 {
    let t = Instant::now();
    sh(script);
    ms(t.elapsed())
}

/// The host's nix as root, single-user, with no cache of its own (the client's cache is not
/// what is measured).
const NIX: &str = "nix --extra-experimental-features nix-command --option build-users-group '' \
--option substituters ''";

/// A local HTTP binary cache the container reaches on its bridge's gateway: it holds nothing,
/// so every question gets a quick 404, as from a cache that answers.
pub struct LocalCache {
    child: std::process::Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl LocalCache {
    pub fn start() -> LocalCache {
        let o = run(Command::new("docker").args([
            "network",
            "inspect",
            "bridge",
            "-f",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        ]));
        let gw = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let gw = if gw.is_empty() {
            "172.17.0.1".to_string()
        } else {
            gw
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("nix-cache-info"),
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n",
        )
        .unwrap();
        let port = builderd_tests::free_port();
        let child = Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", &gw])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs");
        let url = format!("http://{gw}:{port}/");
        // Until it answers.
        for _ in 0..100 {
            if std::net::TcpStream::connect((gw.as_str(), port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        LocalCache {
            child,
            url,
            _dir: dir,
        }
    }
}

impl Drop for LocalCache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A builder whose nix.conf names `substituters`, up, with the alias as the nix-daemon uses it.
pub struct Side {
    pub env: Env,
    cfg: PathBuf,
}

impl Side {
    pub fn new(substituters: &str) -> Side {
        let env = Env::new(&format!("[builder]\nsubstituters = \"{substituters}\"\n"));
        env.up();
        let cfg = env.path("root/.ssh/config");
        Side { env, cfg }
    }

    fn sshopts(&self) -> String {
        format!("NIX_SSHOPTS='-F {}'", self.cfg.display())
    }

    fn ssh(&self, command: &str) -> String {
        format!(
            "ssh -F {} {} '{command}'",
            self.cfg.display(),
            self.env.name
        )
    }

    fn exec(&self, script: &str) -> std::process::Output {
        let o = self
            .env
            .docker(&["exec", &self.env.name, "sh", "-c", script]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o
    }

    /// `nix copy` of the paths listed in `list` to the builder, into a store without them.
    fn copy_to(&self, list: &Path) -> f64 {
        sh(&format!(
            "docker exec -i {} sh -c 'xargs nix-store --delete >/dev/null 2>&1 || true' < {}",
            self.env.name,
            list.display()
        ));
        timed(&format!(
            "{} {NIX} copy --to ssh-ng://{} $(cat {})",
            self.sshopts(),
            self.env.name,
            list.display()
        ))
    }
}

/// Incompressible data of `bytes` added to the host's store as one path.
fn big_path(dir: &Path, bytes: u64) -> String {
    let f = dir.join("bench-200mib");
    sh(&format!(
        "head -c {bytes} /dev/urandom > {f}",
        f = f.display()
    ));
    let o = sh(&format!("nix-store --add {}", f.display()));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// 200 MiB to the builder and back, and a tiny build, with the builder's cache `label`.
pub fn rows(side: &Side, label: &'static str, n: usize, with_from: bool) -> Vec<Figure> {
    let data = side.env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    let path = big_path(&data, MIB_200);
    let raw_to = side.ssh("cat > /dev/null");
    let raw_to = format!("head -c {MIB_200} /dev/zero | {raw_to}");
    // Warm the connection master, as a nix-daemon finds it after its first build.
    sh(&side.ssh("true"));
    // The same NAR written into the builder's store's filesystem by `nix-store --restore`, with
    // no Nix protocol, daemon or hashing: what storing the bytes costs there.
    let floor_to = format!(
        "nix-store --dump {path} | {}",
        side.ssh("nix-store --restore /nix/bench-restore && rm -rf /nix/bench-restore")
    );
    let mut copy = Vec::new();
    let mut raw = Vec::new();
    let mut floor = Vec::new();
    let list = side.env.path("big.list");
    std::fs::write(&list, &path).unwrap();
    for _ in 0..n {
        copy.push(side.copy_to(&list));
        raw.push(timed(&raw_to));
        floor.push(timed(&floor_to));
    }
    let mut figures = vec![
        Figure {
            name: leak(format!("200 MiB nix copy to the builder ({label})")),
            unit: "ms",
            runs: copy.clone(),
            baseline_name: "raw ssh on the same alias (head -c | ssh cat > /dev/null)",
            baseline: raw,
            target: Target::RatioAtMost(RATE),
        },
        Figure {
            name: leak(format!(
                "200 MiB nix copy to the builder ({label}), against storing the NAR"
            )),
            unit: "ms",
            runs: copy,
            baseline_name: "nix-store --dump | ssh on the same alias nix-store --restore",
            baseline: floor,
            target: Target::RatioAtMost(RATE),
        },
    ];
    if with_from {
        // The other way: a path made on the builder, copied into the host's store.
        let o = side.exec(&format!(
            "head -c {MIB_200} /dev/urandom > /tmp/bench-from && nix-store --add /tmp/bench-from"
        ));
        let theirs = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let raw_from = format!("{} > /dev/null", side.ssh("cat /tmp/bench-from"));
        let floor_from = format!(
            "{} | nix-store --restore /nix/bench-restore && rm -rf /nix/bench-restore",
            side.ssh(&format!("nix-store --dump {theirs}"))
        );
        let mut copy = Vec::new();
        let mut raw = Vec::new();
        let mut floor = Vec::new();
        for _ in 0..n {
            let _ = run(Command::new("nix-store").args(["--delete", &theirs]));
            copy.push(timed(&format!(
                "{} {NIX} copy --from ssh-ng://{} {theirs}",
                side.sshopts(),
                side.env.name
            )));
            raw.push(timed(&raw_from));
            floor.push(timed(&floor_from));
        }
        let _ = run(Command::new("nix-store").args(["--delete", &theirs]));
        figures.push(Figure {
            name: "200 MiB nix copy from the builder",
            unit: "ms",
            runs: copy.clone(),
            baseline_name: "raw ssh on the same alias (ssh cat FILE > /dev/null)",
            baseline: raw,
            target: Target::RatioAtMost(RATE),
        });
        figures.push(Figure {
            name: "200 MiB nix copy from the builder, against storing the NAR",
            unit: "ms",
            runs: copy,
            baseline_name: "ssh on the same alias nix-store --dump | nix-store --restore",
            baseline: floor,
            target: Target::RatioAtMost(RATE),
        });
    }
    let _ = run(Command::new("nix-store").args(["--delete", &path]));
    figures
}

/// A tiny build through the machines file, as the nix-daemon runs it (builders-use-substitutes
/// on, so the builder asks its own cache), against the same on a builder with no cache at all.
pub fn build_rows(with: &Side, without: &Side, label: &'static str, n: usize) -> Figure {
    static ROWS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let row = ROWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let build = |side: &Side, i: usize| {
        let drv = side.env.path("tiny.nix");
        std::fs::write(
            &drv,
            "{ nonce }: derivation { name = \"tiny\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; inherit nonce; args = [ \"-c\" \"echo $nonce > $out\" ]; }\n",
        )
        .unwrap();
        // Unique to this call too: the same side is the baseline of more than one row, and an
        // output the client already holds is not built again.
        let nonce = format!("{}-{row}-{i}-{}", side.env.name, std::process::id());
        timed(&format!(
            "{} nix-build {} --argstr nonce {nonce} --max-jobs 0 --no-out-link --builders @{} \
             --option substituters '' --option build-users-group '' \
             --option builders-use-substitutes true >/dev/null 2>&1",
            side.sshopts(),
            drv.display(),
            side.env.path("etc/nix/machines").display()
        ))
    };
    let mut runs = Vec::new();
    let mut baseline = Vec::new();
    for i in 0..n {
        runs.push(build(with, i));
        baseline.push(build(without, i));
    }
    Figure {
        name: leak(format!("tiny remote build ({label})")),
        unit: "ms",
        runs,
        baseline_name: "the same on a builder with no substituters",
        baseline,
        target: Target::RatioAtMost(1.25),
    }
}

/// 2,000 paths of 4 KiB to the builder in one `nix copy`, against the same files as one tar
/// stream over the same alias.
pub fn small_paths(side: &Side, n: usize) -> Figure {
    let dir = side.env.path("small");
    std::fs::create_dir_all(&dir).unwrap();
    sh(&format!(
        "cd {d} && for i in $(seq 1 2000); do head -c 4096 /dev/urandom > f$i; done",
        d = dir.display()
    ));
    let o = sh(&format!("cd {} && nix-store --add f*", dir.display()));
    let paths = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let list = side.env.path("small.list");
    std::fs::write(&list, &paths).unwrap();
    let mut runs = Vec::new();
    let mut baseline = Vec::new();
    let tar = format!(
        "tar -C {} -cf - . | {}",
        dir.display(),
        side.ssh("rm -rf /tmp/small && mkdir /tmp/small && tar -C /tmp/small -xf -")
    );
    for _ in 0..n {
        runs.push(side.copy_to(&list));
        baseline.push(timed(&tar));
    }
    let _ = run(Command::new("sh")
        .arg("-c")
        .arg(format!("nix-store --delete $(cat {})", list.display())));
    Figure {
        name: "2,000 paths of 4 KiB, nix copy to the builder",
        unit: "ms",
        runs,
        baseline_name: "the same files as one tar stream over the same alias",
        baseline,
        target: Target::RatioAtMost(3.0),
    }
}

/// Figure names are `&'static str`; a bench run makes a handful.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}
