//! The builder sized to its engine: 8 independent builds, each burning one core for a fixed
//! amount of work, through the machines file, against the same 8 built inside the container
//! with `nix-build -j N` (N: the jobs builderd derived from the engine). The client's Nix reads
//! the nix.conf and machines file builderd registered, as a user's nix-daemon would.

use std::process::Command;
use std::time::Instant;

use builderd_tests::Env;

use crate::{Figure, Target, ms, run};

/// Eight derivations; each counts to a fixed number in the sandbox's /bin/sh.
fn expr(nonce: &str) -> String {
    format!(
        "builtins.genList (i: derivation {{ name = \"burn-${{toString i}}\"; system = \"x86_64-linux\"; \
         builder = \"/bin/sh\"; nonce = \"{nonce}-${{toString i}}\"; \
         args = [ \"-c\" \"i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo $nonce > $out\" ]; }}) 8\n"
    )
}

pub fn rows(n: usize) -> Figure {
    let env = Env::new("");
    env.up();
    let jobs = env.status()["sizing"]["max_jobs"].as_u64().unwrap_or(1);
    let cfg = env.path("root/.ssh/config");
    let file = env.path("burn.nix");
    let mut runs = Vec::new();
    let mut baseline = Vec::new();
    for i in 0..n {
        std::fs::write(&file, expr(&format!("{}-via-{i}", env.name))).unwrap();
        let t = Instant::now();
        let o = run(Command::new("nix-build")
            .arg(&file)
            .args(["--max-jobs", "0", "--no-out-link", "--builders"])
            .arg(format!("@{}", env.path("etc/nix/machines").display()))
            .args(builderd_tests::CLIENT_OPTIONS)
            .env("NIX_CONF_DIR", env.path("etc/nix"))
            .env("NIX_SSHOPTS", format!("-F {}", cfg.display())));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        runs.push(ms(t.elapsed()));
        let inside = expr(&format!("{}-in-{i}", env.name));
        let t = Instant::now();
        let o = env.docker(&[
            "exec",
            &env.name,
            "sh",
            "-c",
            &format!(
                "printf '%s' '{inside}' > /tmp/burn.nix && nix-build /tmp/burn.nix -j {jobs} --no-out-link"
            ),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        baseline.push(ms(t.elapsed()));
    }
    Figure {
        name: "8 one-core builds via the machines file (jobs from the engine)",
        unit: "ms",
        runs,
        baseline_name: "the same 8 inside the container, nix-build -j N",
        baseline,
        target: Target::RatioAtMost(1.15),
    }
}
