//! The cold first run: nothing in the engine but a registry to pull the base from (a real one on
//! 127.0.0.1, standing in for Docker Hub), so `builderctl up` pulls the base, installs Nix and
//! sshd with apt from Debian's mirror, builds the image and starts the builder; against the
//! same pull and `docker build` of the same context done by hand.

use std::process::Command;
use std::time::Instant;

use builderd_tests::{Env, Images, Registry, docker_ok, image_exists};

use crate::{Figure, Target, ms, run};

/// The engine holds none of `images` (and so none of their build steps' layers).
fn forget(images: &[&str]) {
    for i in images {
        if image_exists(i) {
            docker_ok(&["rmi", "-f", i]);
        }
    }
}

pub fn row(n: usize) -> Figure {
    // The plain Debian the pushed base is made from (made here with debootstrap once).
    let local = builderd_tests::local_base();
    let registry = Registry::start();
    let base = registry.push_plain_base(&local);
    let repository = format!("bdb-cold-{}", std::process::id());
    let env = Env::new(&format!(
        "[image]\nbase_image = \"{base}\"\nrepository = \"{repository}\"\n"
    ));
    let cfg = builderd::config::Config::load(&env.config).unwrap();
    let (tag, _) = builderd::docker::image_for(&cfg).unwrap();
    let by_hand = format!("{repository}:by-hand");
    let _images = Images(vec![tag.clone(), by_hand.clone(), base.clone()]);
    // The same context, written out for `docker build`.
    let ctx = builderd_tests::embedded_context();
    let platform = cfg.platform();
    let mut runs = Vec::new();
    let mut baseline = Vec::new();
    for _ in 0..n {
        forget(&[&tag, &by_hand, &base]);
        let t = Instant::now();
        env.ctl_ok(&["up"]);
        runs.push(ms(t.elapsed()));
        env.ctl_ok(&["down"]);
        let _ = run(Command::new("docker").args(["rm", "-f", &env.name]));

        forget(&[&tag, &by_hand, &base]);
        let t = Instant::now();
        docker_ok(&["pull", "--platform", &platform, &base]);
        docker_ok(&[
            "build",
            "--quiet",
            "--platform",
            &platform,
            "--build-arg",
            &format!("BASE_IMAGE={base}"),
            "-t",
            &by_hand,
            &ctx.path().display().to_string(),
        ]);
        baseline.push(ms(t.elapsed()));
    }
    forget(&[&tag, &by_hand, &base]);
    Figure {
        name: "cold first run: up with nothing cached (pull, apt, image build) → healthy",
        unit: "ms",
        runs,
        baseline_name: "docker pull + docker build of the same context by hand",
        baseline,
        target: Target::RatioAtMost(1.2),
    }
}
