//! Where the builder's base comes from. On a Mac, Docker Desktop pulls `debian:trixie-slim` from
//! Docker Hub; here a real registry on 127.0.0.1 (Debian's `docker-registry`) stands in for Docker
//! Hub. Where nothing can be pulled, on Linux, builderd makes the base with debootstrap.

use std::process::{Command, Stdio};

use builderd_tests::{Env, Images, Registry, docker_ok, free_port, image_exists, skip_docker};

/// `builderctl up`, which must succeed; returns what it printed (progress goes to stderr).
fn up_printing(env: &Env) -> String {
    let o = env.ctl(&["up"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        o.status.success(),
        "up failed: {text}\n{}",
        env.daemon_log()
    );
    text
}

#[test]
fn the_base_is_pulled_from_a_registry_and_the_image_built_with_apt() {
    if skip_docker() {
        return;
    }
    // A plain Debian image, as debian:trixie-slim is: no Nix, no sshd. The local base that the
    // default config makes here is one; the image pushed is a copy flattened into a layer of its
    // own, so that the pull below downloads every byte of it.
    let seed = Env::new("");
    seed.up();
    seed.ctl_ok(&["down"]);
    assert!(image_exists("builderd-base:trixie"));
    let plain = docker_ok(&[
        "run",
        "--rm",
        "builderd-base:trixie",
        "sh",
        "-c",
        "command -v nix-store sshd tini || echo plain",
    ]);
    assert_eq!(plain, "plain", "the local base is a plain Debian");

    let registry = Registry::start();
    let base = registry.push_plain_base("builderd-base:trixie");
    let repository = format!("bdt-registry-{}", std::process::id());
    let _images = Images(vec![base.clone()]);
    assert!(!image_exists(&base), "the engine holds no copy of the base");

    let env = Env::new(&format!(
        "[image]\nbase_image = \"{base}\"\nrepository = \"{repository}\"\n"
    ));
    let (tag, _) =
        builderd::docker::image_for(&builderd::config::Config::load(&env.config).unwrap()).unwrap();
    let _built = Images(vec![tag.clone()]);
    assert!(!image_exists(&tag), "the engine holds no builder image");
    let out = up_printing(&env);
    assert!(
        out.contains(&format!("pulling the base image {base}")),
        "{out}"
    );
    assert!(image_exists(&base), "the base was pulled");
    assert!(!out.contains("debootstrap"), "{out}");
    // The base had no Nix: the image build installed it from Debian's mirror.
    let history = docker_ok(&["history", "--no-trunc", "--format", "{{.CreatedBy}}", &tag]);
    assert!(history.contains("apt-get install"), "{history}");
    let st = env.status();
    assert_eq!(st["state"], "up");
    assert_eq!(st["container"]["image"], tag);
    env.nix_build(&env.path("root/.ssh/config"), "pulled");
}

#[test]
fn without_a_registry_linux_makes_the_base_with_debootstrap() {
    if skip_docker() {
        return;
    }
    // bookworm's base is made by no other test, so this one sees the whole offline path:
    // the pull of debian:bookworm-slim fails (no registry answers here), debootstrap makes
    // builderd-base:bookworm, and the image installs bookworm's Nix with apt.
    let local = "builderd-base:bookworm";
    let _images = Images(vec![local.to_string()]);
    let _ = Command::new("docker")
        .args(["rmi", "-f", local])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let env = Env::new(&format!(
        "[image]\nbase_image = \"debian:bookworm-slim\"\nrepository = \"bdt-offline-{}\"\n",
        std::process::id()
    ));
    let (tag, _) =
        builderd::docker::image_for(&builderd::config::Config::load(&env.config).unwrap()).unwrap();
    let _built = Images(vec![tag.clone()]);
    let out = up_printing(&env);
    assert!(
        out.contains("debian:bookworm-slim cannot be pulled"),
        "{out}"
    );
    assert!(
        out.contains("making builderd-base:bookworm with debootstrap"),
        "{out}"
    );
    assert!(image_exists(local));
    let st = env.status();
    assert_eq!(st["state"], "up");
    assert!(
        st["builder"]["nix_version"]
            .as_str()
            .is_some_and(|v| v.contains("2.8")),
        "bookworm's Nix: {st}"
    );
    env.nix_build(&env.path("root/.ssh/config"), "offline");
}

#[test]
fn a_base_of_the_users_own_that_cannot_be_pulled_is_an_error_that_says_what_to_do() {
    if skip_docker() {
        return;
    }
    // Nothing listens on this port: the pull fails, and builderd does not stand in for an
    // image the user chose.
    let base = format!("127.0.0.1:{}/mine/debian:trixie-slim", free_port());
    let env = Env::new(&format!(
        "[image]\nbase_image = \"{base}\"\nrepository = \"bdt-missing-{}\"\n",
        std::process::id()
    ));
    let o = env.ctl(&["up"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "the base image {base} is missing and cannot be pulled"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("docker pull {base}")), "{err}");
    assert!(!err.contains("debootstrap"), "{err}");
    assert_eq!(env.container_state(), None);
}
