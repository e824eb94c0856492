//! What a root builderd serving one user (`BUILDERD_OWNER_UID`) takes in from places that user
//! controls, each attacked for real by a real unprivileged account (useradd): the directory the
//! base image is made in, a build context of theirs, the registration files root edits, and the
//! docker config that names the engine. Root must never write, read or hang through them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use builderd_tests::{Env, Images, TestUser, bin_dir, image_exists, skip_docker};

const SECRET: &str = "root-only-secret-2718";

/// A file only root may read, holding `text`.
fn root_only(env: &Env, name: &str, text: &str) -> std::path::PathBuf {
    let p = env.path(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Runs `cmd`, killing it after `limit`: `None` when it had to be killed.
fn output_within(mut cmd: Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(child.wait_with_output().unwrap())
}

/// builderctl as `user`, killed after `limit`.
fn ctl_within(env: &Env, user: &TestUser, args: &[&str], limit: Duration) -> Option<Output> {
    let mut c = user.command(bin_dir().join("builderctl"));
    c.arg("--config")
        .arg(&env.config)
        .args(args)
        .env("HOME", env.path("home"));
    output_within(c, limit)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Everything the root daemon logged.
fn root_log(env: &Env) -> String {
    format!(
        "{}{}",
        std::fs::read_to_string(env.path("root-daemon.log")).unwrap_or_default(),
        env.daemon_log()
    )
}

#[test]
fn links_in_the_state_dir_never_lead_roots_debootstrap_elsewhere() {
    if skip_docker() {
        return;
    }
    // bullseye's base is made by no other test: this one sees debootstrap run as root.
    let local = "builderd-base:bullseye";
    let _images = Images(vec![local.to_string()]);
    let _ = Command::new("docker")
        .args(["rmi", "-f", local])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let (env, user) = Env::root_served(&format!(
        "[image]\nbase_image = \"debian:bullseye-slim\"\nrepository = \"bdt-bullseye-{}\"\n",
        std::process::id()
    ));
    // Root's own file and directory; the user links the names a base was made at to them.
    let roots_file = root_only(&env, "roots-file", "root's own bytes\n");
    let roots_dir = env.path("roots-dir");
    std::fs::create_dir(&roots_dir).unwrap();
    std::fs::write(roots_dir.join("marker"), "root's marker\n").unwrap();
    let state = env.path("state");
    user.sh(&format!(
        "ln -s {} {}/base-rootfs && ln -s {} {}/base-rootfs.layer.tar",
        roots_dir.display(),
        state.display(),
        roots_file.display(),
        state.display()
    ));
    env.start_root_daemon(user.uid).unwrap();
    let progress = env.path("up.log");
    let out = std::fs::File::create(&progress).unwrap();
    let mut up = user.command(bin_dir().join("builderctl"));
    up.arg("--config")
        .arg(&env.config)
        .arg("up")
        .env("HOME", env.path("home"))
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let mut up = up.spawn().unwrap();
    // Until the base is made (the image build after it is not this test's business).
    let deadline = Instant::now() + Duration::from_secs(600);
    while !image_exists(local) && up.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "no base after 10 minutes: {}",
            root_log(&env)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = up.kill();
    let _ = up.wait();
    let _ = ctl_within(&env, &user, &["shutdown"], Duration::from_secs(30));
    // Root's debootstrap made a root filesystem, and builderd tarred it for the engine.
    let said = std::fs::read_to_string(&progress).unwrap_or_default();
    assert!(
        said.contains(&format!("importing {local}")),
        "no base was made: {said}\n{}",
        root_log(&env)
    );
    assert!(
        std::fs::read(&roots_file).unwrap() == b"root's own bytes\n",
        "root wrote through the user's link to {}",
        roots_file.display()
    );
    assert_eq!(
        std::fs::read_to_string(roots_dir.join("marker")).unwrap(),
        "root's marker\n"
    );
    assert_eq!(std::fs::read_dir(&roots_dir).unwrap().count(), 1);
    // The base was made where only root goes, and nothing was left there.
    let work = Path::new("/var/lib/builderd/work");
    let m = std::fs::symlink_metadata(work).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o700));
    let o = user
        .command("/bin/sh")
        .args(["-c", &format!("touch {}/x", work.display())])
        .output()
        .unwrap();
    assert!(!o.status.success(), "the user wrote in root's work dir");
    // The user's links are as they left them.
    for n in ["base-rootfs", "base-rootfs.layer.tar"] {
        assert!(
            std::fs::symlink_metadata(state.join(n))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}

#[test]
fn a_mirror_that_would_have_root_read_local_files_is_refused() {
    if skip_docker() {
        return;
    }
    // No other test makes buster's base, and nothing can be pulled here: builderd would make
    // it with debootstrap, from the mirror the config names.
    let (env, user) = Env::root_served(&format!(
        "[image]\nbase_image = \"debian:buster-slim\"\nrepository = \"bdt-buster-{}\"\ndebian_mirror = \"file:///root\"\n",
        std::process::id()
    ));
    env.start_root_daemon(user.uid).unwrap();
    let o = ctl_within(&env, &user, &["up"], Duration::from_secs(120)).expect("up answered");
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("debian_mirror"), "{out}");
    assert!(out.contains("http"), "{out}");
    assert!(!out.contains("debootstrap failed"), "{out}");
}

/// A root-served environment whose config builds from `home/ctx`.
fn with_users_context() -> (Env, TestUser) {
    let (mut env, user) = Env::root_served("");
    env.extra = format!(
        "[image]\ncontext = \"{}\"\n",
        env.path("home/ctx").display()
    );
    (env, user)
}

/// A Dockerfile in `ctx` that copies the whole context into a `FROM scratch` image of this run.
fn scratch_dockerfile(ctx: &Path) {
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY . /ctx/\nLABEL {}=\"{}\"\nCMD [\"/none\"]\n",
            builderd_tests::RUN_LABEL,
            builderd_tests::run_id()
        ),
    )
    .unwrap();
}

/// A build context in the user's home, `FROM scratch`: whatever the engine was sent is in the
/// image's files. Writes the config that names it.
fn users_context(env: &Env, user: &TestUser, plant: &str) -> std::path::PathBuf {
    let ctx = env.path("home/ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    scratch_dockerfile(&ctx);
    std::fs::write(ctx.join("plain"), "the user's own file\n").unwrap();
    user.give(&ctx);
    user.sh(&format!("cd {} && {plant}", ctx.display()));
    env.write_config();
    ctx
}

/// The files of `image`, as a tar's bytes.
fn image_files(image: &str) -> Vec<u8> {
    let c = Command::new("docker")
        .args(["create", image])
        .output()
        .unwrap();
    assert!(c.status.success(), "{c:?}");
    let id = String::from_utf8_lossy(&c.stdout).trim().to_string();
    let o = Command::new("docker")
        .args(["export", &id])
        .output()
        .unwrap();
    let _ = Command::new("docker").args(["rm", "-f", &id]).output();
    assert!(o.status.success(), "{o:?}");
    o.stdout
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn a_build_context_gives_the_image_nothing_of_roots() {
    if skip_docker() {
        return;
    }
    let (env, user) = with_users_context();
    let secret = root_only(&env, "secret", &format!("{SECRET}\n"));
    let secret_dir = env.path("secret-dir");
    std::fs::create_dir(&secret_dir).unwrap();
    std::fs::set_permissions(&secret_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(secret_dir.join("inside"), format!("{SECRET}\n")).unwrap();
    // A link to a file and one to a directory only root may read.
    let ctx = users_context(
        &env,
        &user,
        &format!(
            "ln -s {} secret-link && ln -s {} dir-link",
            secret.display(),
            secret_dir.display()
        ),
    );
    env.start_root_daemon_with(user.uid, &[("HOME", env.path("home").to_str().unwrap())])
        .unwrap();
    let o = ctl_within(&env, &user, &["up"], Duration::from_secs(300)).expect("up answered");
    let _ = ctx;
    let cfg = builderd::config::Config::load(&env.config).unwrap();
    let (tag, _) = builderd::docker::image_for(&cfg).unwrap();
    let _images = Images(vec![tag.clone()]);
    assert!(
        image_exists(&tag),
        "the image was not built: {}\n{}",
        text(&o),
        root_log(&env)
    );
    let files = image_files(&tag);
    assert!(!contains(&files, SECRET), "root's secret is in the image");
    assert!(contains(&files, "the user's own file"));
    // The links were sent as links, as Docker's own client sends them.
    assert!(contains(&files, &secret.display().to_string()));
    assert!(!text(&o).contains(SECRET));
    assert!(!root_log(&env).contains(SECRET));
}

#[test]
fn a_fifo_in_a_build_context_is_an_error_not_a_hang() {
    if skip_docker() {
        return;
    }
    let (env, user) = with_users_context();
    users_context(&env, &user, "mkfifo pipe");
    env.start_root_daemon_with(user.uid, &[("HOME", env.path("home").to_str().unwrap())])
        .unwrap();
    let o = ctl_within(&env, &user, &["up"], Duration::from_secs(60))
        .unwrap_or_else(|| panic!("up hung: {}", root_log(&env)));
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("pipe"), "{out}");
    assert!(out.contains("not a regular file"), "{out}");
    let st = ctl_within(&env, &user, &["status", "--json"], Duration::from_secs(20))
        .expect("status answers");
    assert!(st.status.success(), "{}", text(&st));
}

/// A context so large it is refused rather than held in memory.
#[test]
fn a_huge_build_context_is_refused_with_its_size() {
    if skip_docker() {
        return;
    }
    let (env, user) = with_users_context();
    users_context(&env, &user, "truncate -s 300M big");
    env.start_root_daemon_with(user.uid, &[("HOME", env.path("home").to_str().unwrap())])
        .unwrap();
    let o = ctl_within(&env, &user, &["up"], Duration::from_secs(120))
        .unwrap_or_else(|| panic!("up hung: {}", root_log(&env)));
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("build context"), "{out}");
    assert!(out.contains("MiB"), "{out}");
}

#[test]
fn a_registration_file_that_is_a_fifo_or_huge_is_reported_not_a_hang() {
    if skip_docker() {
        return;
    }
    let (env, user) = Env::root_served("");
    let ssh = env.path("home/.ssh");
    user.sh(&format!(
        "cd {} && mkfifo config && truncate -s 40M known_hosts",
        ssh.display()
    ));
    env.start_root_daemon(user.uid).unwrap();
    // `down` edits every registration file to take builderd's block out.
    let o = ctl_within(&env, &user, &["down"], Duration::from_secs(60))
        .unwrap_or_else(|| panic!("down hung on the FIFO: {}", root_log(&env)));
    let _ = o;
    let st = ctl_within(&env, &user, &["status", "--json"], Duration::from_secs(20))
        .expect("status answers");
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let regs = v["registrations"].as_array().unwrap();
    let of = |p: &Path| {
        regs.iter()
            .find(|r| r["path"] == p.display().to_string())
            .unwrap_or_else(|| panic!("{p:?} not in {v:#}"))
            .clone()
    };
    let fifo = of(&ssh.join("config"));
    assert_eq!(fifo["state"], "failed", "{fifo:#}");
    assert!(
        fifo["detail"]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{fifo:#}"
    );
    let huge = of(&ssh.join("known_hosts"));
    assert_eq!(huge["state"], "failed", "{huge:#}");
    assert!(
        huge["detail"].as_str().unwrap().contains("larger than"),
        "{huge:#}"
    );
    // Both stay what the user made them.
    let m = std::fs::symlink_metadata(ssh.join("known_hosts")).unwrap();
    assert_eq!(m.len(), 40 << 20);
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(ssh.join("config"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // The harness's clean-up reads the ssh config with ssh.
    std::fs::remove_file(ssh.join("config")).unwrap();
}

/// A docker context named `ctx` in `home`, whose `meta.json` is made by `plant` (run in its
/// directory as the user).
fn docker_context(env: &Env, user: &TestUser, config: &str, plant: &str) {
    use sha2::Digest;
    let docker = env.path("home/.docker");
    let meta = docker
        .join("contexts/meta")
        .join(builderd::docker::hex(&sha2::Sha256::digest(b"ctx")));
    std::fs::create_dir_all(&meta).unwrap();
    user.give(&docker);
    user.sh(&format!("cd {} && {config}", docker.display()));
    user.sh(&format!("cd {} && {plant}", meta.display()));
}

/// Starts a root daemon with the user's home as its HOME (as the service's definition carries
/// it) and no DOCKER_HOST, serving `owner`. Serving the user on Linux, it reads nothing of their
/// docker config (root's engine only); serving root (`owner` 0) it finds the engine through the
/// docker config in that home, read as the user who controls it: what a root service on macOS
/// does with its user's Docker Desktop config.
fn start_with_users_docker_config(env: &Env, owner: u32) {
    assert!(std::env::var_os("DOCKER_HOST").is_none());
    env.start_root_daemon_with(owner, &[("HOME", env.path("home").to_str().unwrap())])
        .unwrap();
}

/// Status as the user, within 20 seconds, as JSON.
fn status_within(env: &Env, user: &TestUser) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // As root, whom every root daemon answers, whichever user it serves.
        let _ = user;
        let o = Some(env.ctl(&["status", "--json"]));
        if let Some(o) = o
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout)
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "status did not answer: {}",
            root_log(env)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_docker_config_root_reads_is_the_users_bounded_regular_file() {
    for serving_the_user in [true, false] {
        let (env, user) = Env::root_served("");
        // A file only root may read, shaped as a context's meta.json.
        let secret = root_only(
            &env,
            "secret.json",
            &format!(r#"{{"Endpoints":{{"docker":{{"Host":"unix:///{SECRET}"}}}}}}"#),
        );
        docker_context(
            &env,
            &user,
            r#"printf '{"currentContext":"ctx"}' > config.json"#,
            &format!("ln -s {} meta.json", secret.display()),
        );
        start_with_users_docker_config(&env, if serving_the_user { user.uid } else { 0 });
        let v = status_within(&env, &user);
        let shown = v.to_string();
        assert!(!shown.contains(SECRET), "{shown}");
        if serving_the_user {
            // Linux: root's engine, whatever the user's docker config says.
            assert_eq!(
                v["docker_host"].as_str(),
                Some("unix:///var/run/docker.sock (root's engine)"),
                "{v:#}"
            );
        } else {
            // Read as the user: the link to root's file fails, and it is said, naming the file.
            let deadline = Instant::now() + Duration::from_secs(20);
            while !root_log(&env).contains("meta.json") {
                assert!(Instant::now() < deadline, "{}", root_log(&env));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        assert!(!root_log(&env).contains(SECRET), "{}", root_log(&env));
        let _ = ctl_within(&env, &user, &["shutdown"], Duration::from_secs(20));
    }
}

#[test]
fn a_docker_config_that_is_a_fifo_or_huge_does_not_hang_the_daemon() {
    for (name, config) in [
        ("fifo", "mkfifo config.json"),
        ("huge", "truncate -s 1G config.json"),
    ] {
        let (env, user) = Env::root_served("");
        docker_context(&env, &user, config, "true");
        start_with_users_docker_config(&env, 0);
        let v = status_within(&env, &user);
        assert!(v["docker_host"].is_string(), "{name}: {v:#}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !root_log(&env).contains("config.json") {
            assert!(Instant::now() < deadline, "{name}: {}", root_log(&env));
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = ctl_within(&env, &user, &["shutdown"], Duration::from_secs(20));
    }
}

/// Swaps, as the user, `data` with a link to the secret and `sub` with a link to the secret
/// directory, over and over, until `stop` appears in the context.
const SWAPPER: &str = r#"
import ctypes, os, sys
os.chdir(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
open("ready", "w").close()
while not os.path.exists("stop"):
    libc.renameat2(-100, b"data", -100, b"data-link", 2)
    libc.renameat2(-100, b"sub", -100, b"sub-link", 2)
"#;

#[test]
fn a_context_swapped_for_links_while_it_is_read_gives_nothing_of_roots() {
    let (env, user) = with_users_context();
    let secret = root_only(&env, "secret", &format!("{SECRET}\n"));
    let secret_dir = env.path("secret-dir");
    std::fs::create_dir(&secret_dir).unwrap();
    std::fs::set_permissions(&secret_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(secret_dir.join("inside"), format!("{SECRET}\n")).unwrap();
    let ctx = users_context(
        &env,
        &user,
        &format!(
            "echo mine > data && ln -s {} data-link && mkdir sub && echo mine > sub/inside && ln -s {} sub-link",
            secret.display(),
            secret_dir.display()
        ),
    );
    let cfg = builderd::config::Config::load(&env.config).unwrap();
    let mut swapper = user
        .command("/usr/bin/python3")
        .args(["-c", SWAPPER])
        .arg(&ctx)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    while !ctx.join("ready").exists() {
        assert!(swapper.try_wait().unwrap().is_none(), "the swapper ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    // What the root daemon does at each bring-up: read the context for its tag and the build.
    let mut leaked = 0;
    for _ in 0..400 {
        if let Ok((_, c)) = builderd::docker::image_for(&cfg) {
            for (name, bytes, _) in &c.files {
                if contains(bytes, SECRET) {
                    leaked += 1;
                    eprintln!("root read {name} through the user's link");
                }
            }
        }
    }
    std::fs::write(ctx.join("stop"), "").unwrap();
    let _ = swapper.wait();
    assert_eq!(leaked, 0, "root read the secret through a swapped link");
}

/// A context the config names that only root may read: root looks for it and reads it as the
/// user it serves, so it is as missing as to that user.
#[test]
fn a_context_only_root_may_read_is_not_read_for_the_user() {
    if skip_docker() {
        return;
    }
    let (mut env, user) = Env::root_served("");
    let ctx = env.path("roots-ctx");
    std::fs::create_dir(&ctx).unwrap();
    scratch_dockerfile(&ctx);
    std::fs::write(ctx.join("secret"), format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&ctx, std::fs::Permissions::from_mode(0o700)).unwrap();
    env.extra = format!("[image]\ncontext = \"{}\"\n", ctx.display());
    env.write_config();
    // The user's state says "up": the service brings the builder up as it starts (at boot),
    // with no `builderctl up` of the user's to check the config first.
    let state = env.path("state/state.json");
    std::fs::write(&state, "{\"desired\": \"up\"}\n").unwrap();
    user.give(&state);
    let cfg = builderd::config::Config::load(&env.config).unwrap();
    let (tag, _) = builderd::docker::image_for(&cfg).unwrap();
    let _images = Images(vec![tag.clone()]);
    match env.start_root_daemon_with(user.uid, &[("HOME", env.path("home").to_str().unwrap())]) {
        Err(e) => {
            assert!(e.contains("has no Dockerfile"), "{e}");
            assert!(!e.contains(SECRET), "{e}");
        }
        Ok(()) => {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !image_exists(&tag) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
            }
            let leaked = image_exists(&tag) && contains(&image_files(&tag), SECRET);
            panic!(
                "the root daemon took a context only root may read (root's secret in the user's image: {leaked}): {}",
                root_log(&env)
            );
        }
    }
}
