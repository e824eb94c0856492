//! The base image of the embedded context. The default is the official, multi-arch
//! `debian:trixie-slim`, pulled for the builder's platform; the image build then installs Nix,
//! sshd and tini from Debian's mirror. Where no registry answers, on Linux only, builderd makes
//! the same suite locally with debootstrap (`builderd-base:SUITE`) and builds from that instead.
//! A Mac has no debootstrap: there the error says what a Docker Desktop user can do.

use std::path::{Path, PathBuf};

use std::io::Write;

use bollard::image::{CreateImageOptions, ImportImageOptions};
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::engine::{DockerError, Engine};

pub use builderd_core::config::DEFAULT_BASE;

/// The repository of the local stand-in for [`DEFAULT_BASE`], tagged by suite.
pub const OFFLINE_REPOSITORY: &str = "builderd-base";

/// What the local stand-in is made with: Debian's minimal variant, like the slim image. The
/// image build installs the rest, whichever base it starts from.
pub const PACKAGES: &str = "ca-certificates";

/// The operating systems whose base-image behaviour differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostOs {
    Linux,
    MacOs,
}

impl HostOs {
    pub fn current() -> HostOs {
        if cfg!(target_os = "macos") {
            HostOs::MacOs
        } else {
            HostOs::Linux
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("the base image {image} is missing and cannot be pulled ({pull}). {what_to_do}")]
    CannotPull {
        image: String,
        pull: String,
        what_to_do: String,
    },
    #[error(
        "the base image {image} is missing and cannot be pulled ({pull}); builderd can make a local one with debootstrap, but {why}. {what_to_do}"
    )]
    CannotMake {
        image: String,
        pull: String,
        why: String,
        what_to_do: String,
    },
    #[error(
        "the debian_mirror {mirror:?} under [image] {why}: give the http:// or https:// URL of a Debian mirror (the default is http://deb.debian.org/debian), then run `builderctl up` again"
    )]
    Mirror { mirror: String, why: String },
    #[error("debootstrap failed (exit {code}); its last lines:\n{log}")]
    Debootstrap { code: String, log: String },
    #[error("importing the base image failed: {0}")]
    Import(String),
    #[error(transparent)]
    Docker(#[from] DockerError),
}

/// The engine's name of a platform's architecture (`linux/arm64` → `arm64`).
fn docker_arch(platform: &str) -> &str {
    if platform.ends_with("arm64") || platform.ends_with("aarch64") {
        "arm64"
    } else {
        "amd64"
    }
}

/// The local stand-in's tag for `suite`.
pub fn offline_tag(suite: &str) -> String {
    format!("{OFFLINE_REPOSITORY}:{suite}")
}

/// The Debian suite of an official Debian image (`debian:SUITE` or `debian:SUITE-slim`): the
/// bases builderd can stand in for with debootstrap. Any other base is the user's to provide.
pub fn debian_suite_of(base: &str) -> Option<&str> {
    let tag = base
        .strip_prefix("debian:")
        .or_else(|| base.strip_prefix("docker.io/library/debian:"))
        .or_else(|| base.strip_prefix("library/debian:"))?;
    let suite = tag.strip_suffix("-slim").unwrap_or(tag);
    (!suite.is_empty()
        && suite
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
    .then_some(suite)
}

/// The suite builderd may make a local stand-in of when `base` cannot be pulled: on Linux, for
/// an official Debian image.
pub fn may_make_locally(os: HostOs, base: &str) -> Option<&str> {
    debian_suite_of(base).filter(|_| os == HostOs::Linux)
}

/// What to do when `base` cannot be pulled and no local stand-in may be made.
pub fn cannot_pull_advice(os: HostOs, base: &str) -> String {
    match os {
        HostOs::MacOs => format!(
            "Docker Desktop pulls it from Docker Hub: check that Docker Desktop is signed in or can reach the network (Settings → Resources → Proxies if you are behind a proxy), try `docker pull {base}`, or set `base_image` under [image] to a Debian image your registry mirror serves; then run `builderctl up` again"
        ),
        HostOs::Linux => format!(
            "Make it reachable (`docker pull {base}`, a registry mirror), or remove `base_image` from [image] to use the default, which builderd can make locally; then run `builderctl up` again"
        ),
    }
}

/// Where the embedded context's base comes from.
#[derive(Debug, Clone, Copy)]
pub struct BaseSpec<'a> {
    /// The configured base, e.g. `debian:trixie-slim`.
    pub image: &'a str,
    /// The builder's platform, e.g. `linux/arm64`.
    pub platform: &'a str,
    /// The Debian mirror for debootstrap.
    pub mirror: &'a str,
    /// A directory of root's, which only root may write in and reach from `/` (builderd makes
    /// it, 0700, when it is missing): each base is made in a fresh directory of its own in it,
    /// removed after. Never a directory a user controls: root's debootstrap writes, tars and
    /// removes by path there.
    pub work_root: &'a Path,
}

/// Makes the embedded context's base available and returns the image to build from: the
/// configured base when it is there or can be pulled, else (Linux, default base) the local
/// stand-in, made once with debootstrap.
pub async fn ensure(
    docker: &Engine,
    spec: &BaseSpec<'_>,
    os: HostOs,
    say: &(dyn Fn(String) + Send + Sync),
) -> Result<String, BaseError> {
    let image = spec.image;
    let platform = spec.platform;
    let want_arch = platform.rsplit('/').next().unwrap_or_default();
    // A local copy of another architecture (an amd64 image on Apple Silicon) is pulled again
    // for the builder's own.
    if let Some(arch) = crate::image::image_arch(docker, image).await? {
        if arch == want_arch {
            return Ok(image.to_string());
        }
        say(format!(
            "the local {image} is {arch}, the builder is {want_arch}: pulling {want_arch}"
        ));
    }
    say(format!("pulling the base image {image} ({platform})"));
    let started = std::time::Instant::now();
    let pull = match pull(docker, image, platform).await {
        Ok(()) => {
            tracing::info!(image, %platform, secs = started.elapsed().as_secs_f64(), "pulled the base image");
            return Ok(image.to_string());
        }
        Err(e) => e,
    };
    tracing::info!(image, reason = %pull, "the base image cannot be pulled");
    let Some(suite) = may_make_locally(os, image) else {
        return Err(BaseError::CannotPull {
            image: image.to_string(),
            pull,
            what_to_do: cannot_pull_advice(os, image),
        });
    };
    let local = offline_tag(suite);
    if crate::image::image_arch(docker, &local).await?.as_deref() == Some(want_arch) {
        say(format!(
            "{image} cannot be pulled ({pull}); building from the local {local}"
        ));
        return Ok(local);
    }
    let cannot = |why: String, what: &str| BaseError::CannotMake {
        image: image.to_string(),
        pull: pull.clone(),
        why,
        what_to_do: what.to_string(),
    };
    if let Some(why) = mirror_refusal(spec.mirror) {
        return Err(BaseError::Mirror {
            mirror: spec.mirror.to_string(),
            why,
        });
    }
    let Some(debootstrap) = which("debootstrap") else {
        return Err(cannot(
            "debootstrap is not installed".into(),
            "Install it (`sudo apt-get install debootstrap`) or make the image reachable, then run `builderctl up` again.",
        ));
    };
    if !rustix::process::geteuid().is_root() {
        return Err(cannot(
            "debootstrap needs root".into(),
            &format!(
                "Run `sudo builderctl up` once, or make it yourself: `sudo debootstrap --variant=minbase {suite} DIR && sudo tar -C DIR -c . | docker import - {local}`."
            ),
        ));
    }
    if !Path::new(KEYRING).is_file() {
        return Err(cannot(
            format!(
                "Debian's archive keyring ({KEYRING}) is missing, and builderd checks what the mirror sends with it"
            ),
            "Install it (`sudo apt-get install debian-archive-keyring`) or make the image reachable, then run `builderctl up` again.",
        ));
    }
    say(format!(
        "{image} cannot be pulled ({pull}); making {local} with debootstrap"
    ));
    let root = spec.work_root.to_path_buf();
    let work = tokio::task::spawn_blocking(move || private_work_dir(&root))
        .await
        .map_err(|e| BaseError::Import(e.to_string()))?
        .map_err(BaseError::Import)?;
    let (repo, tag) = local.rsplit_once(':').expect("offline_tag has a tag");
    let rootfs = work.join("rootfs");
    let result = async {
        debootstrap_into(&debootstrap, spec, suite, &rootfs, say).await?;
        say(format!("importing {local}"));
        import_rootfs(docker, repo, tag, &rootfs, docker_arch(spec.platform)).await
    }
    .await;
    let gone = work.clone();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&gone)).await;
    result?;
    tracing::info!(image = %local, secs = started.elapsed().as_secs_f64(), "made the base image with debootstrap");
    Ok(local)
}

/// Debian's archive keys, which every Release file debootstrap fetches must be signed with.
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Why root may not hand `mirror` to debootstrap, if it may not: only an http(s) URL of plain
/// characters. A `file:` or other URL would make root read local files the config's author
/// chose; the scheme's content is checked against Debian's keys in any case.
pub fn mirror_refusal(mirror: &str) -> Option<String> {
    let Some(rest) = mirror
        .strip_prefix("http://")
        .or_else(|| mirror.strip_prefix("https://"))
    else {
        return Some("is not an http:// or https:// URL".into());
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.starts_with('-') {
        return Some("names no host".into());
    }
    if let Some(c) = rest
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._~/:@%+[]".contains(*c)))
    {
        return Some(format!("holds {c:?}, which a mirror's URL does not need"));
    }
    None
}

/// Makes a fresh directory, only root's, under `root` for one base: every directory from `/`
/// down to `root` is opened without following a link and must be root's and writable by no one
/// else (builderd makes the missing ones, and keeps `root` itself 0700); the new one is made
/// exclusively, so a name that is already there, a link included, is never used.
fn private_work_dir(root: &Path) -> Result<PathBuf, String> {
    use rustix::fs::{Mode, OFlags};
    let fail = |what: &str, p: &Path, e: &dyn std::fmt::Display| {
        format!("cannot {what} {}: {e}", p.display())
    };
    let open_dir = |at: &rustix::fd::OwnedFd, name: &std::ffi::OsStr| {
        rustix::fs::openat(
            at,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
    };
    let mut fd = rustix::fs::open(
        "/",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail("open", Path::new("/"), &e))?;
    let mut at = PathBuf::from("/");
    for c in root.components().skip(1) {
        let name = c.as_os_str();
        at.push(name);
        match rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(fail("create", &at, &e)),
        }
        fd = open_dir(&fd, name).map_err(|e| fail("open (never through a link)", &at, &e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| fail("inspect", &at, &e))?;
        if st.st_uid != 0 || st.st_mode & 0o022 != 0 {
            return Err(format!(
                "refusing to make the base in {}: {} is not a directory only root may write in; remove it",
                root.display(),
                at.display()
            ));
        }
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700)).map_err(|e| fail("close", root, &e))?;
    sweep_stale_work_dirs(&fd, root);
    for _ in 0..16 {
        let name = format!(
            "base-{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        );
        match rustix::fs::mkdirat(&fd, name.as_str(), Mode::from_raw_mode(0o700)) {
            Ok(()) => return Ok(root.join(name)),
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(fail("create", &root.join(name), &e)),
        }
    }
    Err(format!(
        "cannot make a fresh directory in {}",
        root.display()
    ))
}

/// Removes the work dirs in `root` (opened as `dir`, root's alone) of builderds that are gone:
/// one killed while debootstrap ran leaves its rootfs, hundreds of MiB. A dir is named after
/// the process that made it (`base-PID-…`); one whose process still runs is kept.
fn sweep_stale_work_dirs(dir: &rustix::fd::OwnedFd, root: &Path) {
    let Ok(entries) = rustix::fs::Dir::read_from(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("base-")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = rustix::process::Pid::from_raw(pid).is_some_and(|p| {
            !matches!(
                rustix::process::test_kill_process(p),
                Err(rustix::io::Errno::SRCH)
            )
        });
        if !alive {
            let stale = root.join(&name);
            match std::fs::remove_dir_all(&stale) {
                Ok(()) => {
                    tracing::info!(dir = %stale.display(), "removed the work dir of a builderd that is gone")
                }
                Err(e) => {
                    tracing::warn!(dir = %stale.display(), error = %e, "cannot remove the work dir of a builderd that is gone")
                }
            }
        }
    }
}

async fn pull(docker: &Engine, image: &str, platform: &str) -> Result<(), String> {
    let mut s = docker.api.create_image(
        Some(CreateImageOptions {
            from_image: image,
            platform,
            ..Default::default()
        }),
        None,
        None,
    );
    while let Some(item) = s.next().await {
        if let Err(e) = item {
            return Err(e.to_string());
        }
    }
    Ok(())
}

fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

async fn debootstrap_into(
    bin: &Path,
    spec: &BaseSpec<'_>,
    suite: &str,
    dir: &Path,
    say: &(dyn Fn(String) + Send + Sync),
) -> Result<(), BaseError> {
    say(format!(
        "making the base with debootstrap ({suite} from {}); this takes about half a minute",
        spec.mirror
    ));
    let arch = format!(
        "--arch={}",
        if spec.platform.ends_with("arm64") {
            "arm64"
        } else {
            "amd64"
        }
    );
    let mut cmd = tokio::process::Command::new(bin);
    // Root runs it: an environment of its own (no variable of whoever started builderd
    // reaches debootstrap's scripts), and every Release file checked against Debian's keys,
    // so that the mirror, which the config names, can only send Debian's own packages.
    cmd.env_clear();
    for var in [
        "PATH",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
    ] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    let mut child = cmd
        .arg("--variant=minbase")
        .arg("--force-check-gpg")
        .arg(format!("--keyring={KEYRING}"))
        .arg(format!("--include={PACKAGES}"))
        .arg(arch)
        .arg(suite)
        .arg(dir)
        .arg(spec.mirror)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BaseError::Debootstrap {
            code: "none".into(),
            log: e.to_string(),
        })?;
    let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut err = BufReader::new(child.stderr.take().expect("piped")).lines();
    let mut log: Vec<String> = Vec::new();
    let (mut out_done, mut err_done) = (false, false);
    while !(out_done && err_done) {
        tokio::select! {
            l = out.next_line(), if !out_done => match l {
                Ok(Some(l)) => { if l.starts_with("I: ") { say(l.clone()); } log.push(l); }
                _ => out_done = true,
            },
            l = err.next_line(), if !err_done => match l {
                Ok(Some(l)) => log.push(l),
                _ => err_done = true,
            },
        }
    }
    let status = child.wait().await.map_err(|e| BaseError::Debootstrap {
        code: "none".into(),
        log: e.to_string(),
    })?;
    if !status.success() {
        return Err(BaseError::Debootstrap {
            code: status
                .code()
                .map_or("signal".to_string(), |c| c.to_string()),
            log: log[log.len().saturating_sub(20)..].join("\n"),
        });
    }
    // What an image does not need: package caches, docs, device nodes (the engine makes /dev).
    for sub in [
        "var/cache/apt/archives",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "dev",
    ] {
        let p = dir.join(sub);
        let _ = std::fs::remove_dir_all(&p);
        let _ = std::fs::create_dir_all(&p);
    }
    Ok(())
}

/// Writes the rootfs at `dir` as a tar to `to`; returns the tar's SHA-256 (the layer's diff
/// id).
fn tar_rootfs(dir: &Path, to: &Path) -> std::io::Result<String> {
    let mut out = HashingWriter {
        inner: std::io::BufWriter::new(std::fs::File::create(to)?),
        hash: Sha256::new(),
    };
    {
        let mut b = tar::Builder::new(&mut out);
        b.follow_symlinks(false);
        b.mode(tar::HeaderMode::Complete);
        b.append_dir_all(".", dir)?;
        b.finish()?;
    }
    out.inner.flush()?;
    Ok(crate::engine::hex(&out.hash.finalize()))
}

struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Sends what is written as chunks of a body stream (from a blocking thread).
struct ChunkWriter(tokio::sync::mpsc::Sender<Bytes>);

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Bytes::copy_from_slice(buf))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the engine stopped reading")
            })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The image archive `docker load` reads (`manifest.json`, the image config, one layer),
/// written to `out` with the layer read from `layer` as it goes.
fn write_image_archive(
    out: impl Write,
    layer: &Path,
    diff_id: &str,
    reference: &str,
    arch: &str,
) -> std::io::Result<()> {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Cmd": ["bash"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
    }))?;
    let config_name = format!("{}.json", crate::engine::hex(&Sha256::digest(&config)));
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [reference],
        "Layers": ["layer/layer.tar"],
    }]))?;
    let mut b = tar::Builder::new(std::io::BufWriter::with_capacity(256 * 1024, out));
    let mut add = |name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, bytes)
    };
    add(&config_name, &config)?;
    add("manifest.json", &manifest)?;
    let mut f = std::fs::File::open(layer)?;
    let mut h = tar::Header::new_gnu();
    h.set_size(f.metadata()?.len());
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "layer/layer.tar", &mut f)?;
    b.into_inner()?.flush()
}

/// Imports the rootfs at `dir` as `repo:tag`, streamed: the rootfs goes to a layer tar on disk
/// (hashed as it is written), and the engine reads an image archive built around it chunk by
/// chunk, so the rootfs is never held in memory. All file work runs off the async workers.
async fn import_rootfs(
    docker: &Engine,
    repo: &str,
    tag: &str,
    dir: &Path,
    arch: &str,
) -> Result<(), BaseError> {
    let failed = |e: &dyn std::fmt::Display| BaseError::Import(e.to_string());
    let layer = dir.with_extension("layer.tar");
    let result = async {
        let (rootfs, to) = (dir.to_path_buf(), layer.clone());
        let diff_id = tokio::task::spawn_blocking(move || tar_rootfs(&rootfs, &to))
            .await
            .map_err(|e| failed(&e))?
            .map_err(|e| failed(&e))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let (from, reference, arch) = (layer.clone(), format!("{repo}:{tag}"), arch.to_string());
        let writer = tokio::task::spawn_blocking(move || {
            write_image_archive(ChunkWriter(tx), &from, &diff_id, &reference, &arch)
        });
        let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut s = docker
            .api
            .import_image_stream(ImportImageOptions { quiet: true }, body, None);
        let mut engine_error = None;
        while let Some(item) = s.next().await {
            match item {
                Ok(info) => {
                    if let Some(e) = info.error {
                        engine_error = Some(e);
                    }
                }
                Err(e) => engine_error = Some(e.to_string()),
            }
        }
        let written = writer.await.map_err(|e| failed(&e))?;
        if let Some(e) = engine_error {
            return Err(BaseError::Import(e));
        }
        written.map_err(|e| failed(&e))
    }
    .await;
    let _ = std::fs::remove_file(&layer);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_linux_makes_an_official_debian_base_locally() {
        assert_eq!(
            may_make_locally(HostOs::Linux, DEFAULT_BASE),
            Some("trixie")
        );
        assert_eq!(
            may_make_locally(HostOs::Linux, "debian:bookworm"),
            Some("bookworm")
        );
        assert_eq!(may_make_locally(HostOs::MacOs, DEFAULT_BASE), None);
        assert_eq!(
            may_make_locally(HostOs::Linux, "registry.example/debian:trixie-slim"),
            None
        );
        assert_eq!(
            may_make_locally(HostOs::Linux, "debian:trixie; rm -rf /"),
            None
        );
        let mac = cannot_pull_advice(HostOs::MacOs, DEFAULT_BASE);
        assert!(mac.contains("Docker Desktop"), "{mac}");
        assert!(mac.contains("docker pull debian:trixie-slim"), "{mac}");
        assert!(!mac.contains("apt-get"), "a Mac has no apt: {mac}");
        assert!(
            !mac.contains("debootstrap"),
            "a Mac has no debootstrap: {mac}"
        );
        assert_eq!(offline_tag("trixie"), "builderd-base:trixie");
    }

    #[test]
    fn only_an_http_mirror_of_plain_characters_goes_to_roots_debootstrap() {
        assert_eq!(mirror_refusal("http://deb.debian.org/debian"), None);
        assert_eq!(mirror_refusal("https://[::1]:8080/debian/"), None);
        for bad in [
            "file:///root",
            "ftp://example.org/debian",
            "copy:///home/u/mirror",
            "http://",
            "http://-oops/",
            "http://example.org/debian$(id)",
            "http://example.org/a;b",
        ] {
            assert!(mirror_refusal(bad).is_some(), "{bad}");
        }
    }

    /// A directory of root's (0755) to make work dirs in: not under /tmp, which anyone may
    /// write in.
    fn roots_dir() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        assert!(
            rustix::process::geteuid().is_root(),
            "this test makes root's directories: run it as root (tests/run does)"
        );
        let d = tempfile::tempdir_in("/var/lib").unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn the_work_dir_is_roots_alone_and_never_a_link() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = roots_dir();
        let root = d.path().join("work");
        let a = private_work_dir(&root).unwrap();
        let b = private_work_dir(&root).unwrap();
        assert_ne!(a, b);
        for p in [&root, &a] {
            let m = std::fs::symlink_metadata(p).unwrap();
            assert!(m.is_dir());
            assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o700), "{}", p.display());
        }
        // A link where the work root should be, or a directory another may write in: refused.
        let elsewhere = d.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let linked = d.path().join("linked");
        std::os::unix::fs::symlink(&elsewhere, &linked).unwrap();
        assert!(private_work_dir(&linked).is_err());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        let open = d.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(private_work_dir(&open.join("work")).is_err());
        assert!(!open.join("work").exists());
    }

    #[test]
    fn the_work_dirs_of_builderds_that_are_gone_are_removed() {
        let d = roots_dir();
        let root = d.path().join("work");
        let first = private_work_dir(&root).unwrap();
        // A builderd killed during debootstrap: its process is gone (above the largest pid
        // Linux and macOS hand out), its rootfs is not.
        let killed = root.join("base-99999999-1");
        std::fs::create_dir_all(killed.join("rootfs/usr/bin")).unwrap();
        std::fs::write(killed.join("rootfs/usr/bin/sh"), "x").unwrap();
        // Not a work dir of builderd's: left alone.
        let other = root.join("notes");
        std::fs::create_dir(&other).unwrap();
        let second = private_work_dir(&root).unwrap();
        assert!(
            !killed.exists(),
            "the dead builderd's work dir is still there"
        );
        // This process runs: its work dirs stay, the one in use above included.
        assert!(first.exists() && second.exists());
        assert!(other.exists());
    }
}
