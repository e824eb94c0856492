//! The builder image: the build context (embedded in the binary, or a directory with the same
//! volume contract), its tag, and the build.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use builderd_core::asuser::FsError;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use bollard::image::BuildImageOptions;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::engine::{DockerError, Engine, hex, is_connection_error};

/// The embedded build context.
pub const EMBEDDED_CONTEXT: &[(&str, &[u8], u32)] = &[
    ("Dockerfile", include_bytes!("../context/Dockerfile"), 0o644),
    (
        "entrypoint.sh",
        include_bytes!("../context/entrypoint.sh"),
        0o755,
    ),
    (
        "sshd_config",
        include_bytes!("../context/sshd_config"),
        0o644,
    ),
];

/// The most a build context directory may hold: bytes of its files, entries, levels. It is
/// read whole into memory and sent to the engine; the embedded one is a few hundred KiB.
pub const CONTEXT_LIMIT: u64 = 256 << 20;
pub const CONTEXT_ENTRIES: usize = 20_000;
pub const CONTEXT_DEPTH: usize = 64;

/// The build context: the embedded one, or a directory.
#[derive(Debug, Clone)]
pub struct Context {
    /// (relative path, bytes, mode), sorted by path.
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// (relative path, target) of a directory's symlinks, sorted by path: sent as links, as
    /// Docker's own client sends them (the engine resolves them inside the context), never
    /// followed by builderd.
    pub links: Vec<(String, String)>,
    pub embedded: bool,
}

impl Context {
    pub fn embedded() -> Context {
        let mut files: Vec<(String, Vec<u8>, u32)> = EMBEDDED_CONTEXT
            .iter()
            .map(|(p, b, m)| (p.to_string(), b.to_vec(), *m))
            .collect();
        for arch in crate::probe::Arch::ALL {
            files.push((
                format!("probe-{}", arch.name()),
                crate::probe::program(arch),
                0o755,
            ));
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Context {
            files,
            links: Vec::new(),
            embedded: true,
        }
    }

    /// Reads a context directory with the identity of whoever controls it, or, for a root
    /// builderd serving a user, as that user (whose config named it), each entry opened under its directory's
    /// descriptor and never through a link: regular files (at most [`CONTEXT_LIMIT`] bytes in
    /// all), directories, and symlinks kept as links. A FIFO, a device or a socket is refused,
    /// named.
    pub fn from_dir(dir: &Path) -> Result<Context, DockerError> {
        let mut walked = Walked::default();
        let served = builderd_core::config::served_user();
        builderd_core::asuser::as_reader_of(served, dir, || {
            let fd = rustix::fs::open(
                dir,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NONBLOCK,
                Mode::empty(),
            )
            .map_err(|e| FsError::new("cannot open", dir, e.into()))?;
            walk(&fd, dir, "", 0, &mut walked)
        })
        .map_err(|e| DockerError::Context {
            path: dir.to_path_buf(),
            reason: if e.path == dir {
                format!("{}: {}", e.action, e.source)
            } else {
                format!("{} {}: {}", e.action, e.path.display(), e.source)
            },
        })?;
        let Walked {
            mut files,
            mut links,
            ..
        } = walked;
        files.sort_by(|a, b| a.0.cmp(&b.0));
        links.sort();
        if !files.iter().any(|f| f.0 == "Dockerfile") {
            return Err(DockerError::Context {
                path: dir.to_path_buf(),
                reason: "it has no Dockerfile".into(),
            });
        }
        Ok(Context {
            files,
            links,
            embedded: false,
        })
    }

    /// A hash of the context and the build arguments: the image tag.
    pub fn hash(&self, args: &[(&str, &str)]) -> String {
        let mut h = Sha256::new();
        for (p, b, m) in &self.files {
            h.update(p.as_bytes());
            h.update([0]);
            h.update(m.to_le_bytes());
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        }
        for (p, target) in &self.links {
            h.update(b"link\0");
            h.update(p.as_bytes());
            h.update([0]);
            h.update(target.as_bytes());
            h.update([0]);
        }
        for (k, v) in args {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        hex(&h.finalize())[..16].to_string()
    }

    fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, bytes, mode) in &self.files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(*mode);
            header.set_mtime(0);
            header.set_cksum();
            b.append_data(&mut header, p, bytes.as_slice())
                .expect("writing to memory");
        }
        for (p, target) in &self.links {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            header.set_mode(0o777);
            header.set_mtime(0);
            b.append_link(&mut header, p, target)
                .expect("writing to memory");
        }
        b.into_inner().expect("writing to memory")
    }
}

/// What a context directory's walk gathered.
#[derive(Default)]
struct Walked {
    files: Vec<(String, Vec<u8>, u32)>,
    links: Vec<(String, String)>,
    bytes: u64,
    entries: usize,
}

/// Gathers the directory open at `fd` (`path`, `rel` within the context) into `into`.
fn walk(
    fd: &OwnedFd,
    path: &Path,
    rel: &str,
    depth: usize,
    into: &mut Walked,
) -> Result<(), FsError> {
    let refuse = |p: &Path, why: String| {
        FsError::new(
            "refusing",
            p,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
        )
    };
    if depth > CONTEXT_DEPTH {
        return Err(refuse(
            path,
            format!("the build context nests more than {CONTEXT_DEPTH} directories deep"),
        ));
    }
    let mut names = Vec::new();
    let mut dir =
        rustix::fs::Dir::read_from(fd).map_err(|e| FsError::new("cannot list", path, e.into()))?;
    while let Some(e) = dir.read() {
        let e = e.map_err(|e| FsError::new("cannot list", path, e.into()))?;
        let name = e.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(std::ffi::OsStr::from_bytes(name).to_os_string());
        }
    }
    names.sort();
    for name in names {
        let p = path.join(&name);
        let name_str = name.to_string_lossy();
        let rel_p = if rel.is_empty() {
            name_str.into_owned()
        } else {
            format!("{rel}/{name_str}")
        };
        into.entries += 1;
        if into.entries > CONTEXT_ENTRIES {
            return Err(refuse(
                &p,
                format!(
                    "the build context holds more than {CONTEXT_ENTRIES} entries: keep only what the image needs in it"
                ),
            ));
        }
        let st = rustix::fs::statat(fd, &name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| FsError::new("cannot inspect", &p, e.into()))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                let sub = rustix::fs::openat(
                    fd,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| FsError::new("cannot open", &p, e.into()))?;
                walk(&sub, &p, &rel_p, depth + 1, into)?;
            }
            FileType::RegularFile => {
                let f = rustix::fs::openat(
                    fd,
                    &name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| FsError::new("cannot read", &p, e.into()))?;
                let f = std::fs::File::from(f);
                let left = CONTEXT_LIMIT - into.bytes;
                let bytes = builderd_core::asuser::read_opened_limited(&f, left).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        refuse(
                            &p,
                            format!(
                                "the build context holds more than {} MiB: keep only what the image needs in it",
                                CONTEXT_LIMIT >> 20
                            ),
                        )
                    } else if e.kind() == std::io::ErrorKind::InvalidInput {
                        refuse(&p, format!("{e}: remove it from the build context"))
                    } else {
                        FsError::new("cannot read", &p, e)
                    }
                })?;
                let mode = f
                    .metadata()
                    .map_err(|e| FsError::new("cannot inspect", &p, e))?
                    .permissions()
                    .mode()
                    & 0o777;
                into.bytes += bytes.len() as u64;
                into.files.push((rel_p, bytes, mode));
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(fd, &name, Vec::new())
                    .map_err(|e| FsError::new("cannot read the link", &p, e.into()))?;
                into.links
                    .push((rel_p, target.to_string_lossy().into_owned()));
            }
            other => {
                let what = match other {
                    FileType::Fifo => "a FIFO",
                    FileType::Socket => "a socket",
                    FileType::CharacterDevice | FileType::BlockDevice => "a device",
                    _ => "not a file, a directory or a link",
                };
                return Err(refuse(
                    &p,
                    format!("it is not a regular file ({what}): remove it from the build context"),
                ));
            }
        }
    }
    Ok(())
}

/// What the builder image is made from.
#[derive(Debug, Clone, Copy)]
pub struct ImageSpec<'a> {
    /// A build context directory; the embedded one when `None`.
    pub context: Option<&'a Path>,
    /// The repository of the tag; the tag itself is a hash of everything below.
    pub repository: &'a str,
    /// The embedded context's `BASE_IMAGE`.
    pub base_image: &'a str,
    /// The platform to build for; empty for the engine's own.
    pub platform: &'a str,
}

/// The image tag for `spec`, and the context it is built from.
pub fn image_for(spec: &ImageSpec<'_>) -> Result<(String, Context), DockerError> {
    let ctx = match spec.context {
        Some(dir) => Context::from_dir(dir)?,
        None => Context::embedded(),
    };
    let tag = format!(
        "{}:{}",
        spec.repository,
        ctx.hash(&[("BASE_IMAGE", spec.base_image), ("platform", spec.platform)])
    );
    Ok((tag, ctx))
}

/// The platform an image is built for when none is configured: `linux/arm64` on Apple Silicon,
/// the engine's own (empty) elsewhere.
pub fn default_build_platform(host_arch: &str) -> String {
    if host_arch == "aarch64" {
        "linux/arm64".into()
    } else {
        String::new()
    }
}

/// Whether an image for `platform` runs emulated on a host of `host_arch` (Rust's
/// `std::env::consts::ARCH` names): then Nix itself runs under Rosetta or qemu.
pub fn image_is_emulated(platform: &str, host_arch: &str) -> bool {
    let image_arch = match platform.rsplit('/').next() {
        Some("arm64" | "aarch64") => "aarch64",
        Some("amd64" | "x86_64") => "x86_64",
        _ => return false,
    };
    image_arch != host_arch
}

/// The architecture of a local image as the engine names it (`amd64`, `arm64`), or `None` when
/// there is no such image.
pub async fn image_arch(docker: &Engine, tag: &str) -> Result<Option<String>, DockerError> {
    match docker.api.inspect_image(tag).await {
        Ok(i) => Ok(Some(i.architecture.unwrap_or_default())),
        Err(e) => match DockerError::api(format!("inspecting image {tag}"))(e) {
            DockerError::NotFound { .. } => Ok(None),
            e => Err(e),
        },
    }
}

pub async fn image_exists(docker: &Engine, tag: &str) -> Result<bool, DockerError> {
    Ok(image_arch(docker, tag).await?.is_some())
}

/// Builds `tag` from `ctx`, reporting each build step through `step`. `base` is the embedded
/// context's `BASE_IMAGE`: the configured base, or the local stand-in made when it could not be
/// pulled.
pub async fn build_image(
    docker: &Engine,
    tag: &str,
    ctx: &Context,
    base: Option<&str>,
    platform: &str,
    step: &(dyn Fn(String, Option<(u64, u64)>) + Send + Sync),
) -> Result<(), DockerError> {
    let mut buildargs = HashMap::new();
    if let Some(base) = base.filter(|_| ctx.embedded) {
        buildargs.insert("BASE_IMAGE".to_string(), base.to_string());
    }
    let opts = BuildImageOptions {
        dockerfile: "Dockerfile".to_string(),
        t: tag.to_string(),
        rm: true,
        forcerm: true,
        buildargs,
        platform: platform.to_string(),
        ..Default::default()
    };
    let mut stream = docker.api.build_image(opts, None, Some(ctx.tar().into()));
    let mut log = Vec::<String>::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(e) = info.error {
                    return Err(DockerError::Build {
                        message: e.trim().to_string(),
                        log: tail(&log, 15),
                    });
                }
                if let Some(s) = info.stream {
                    for line in s.lines().filter(|l| !l.trim().is_empty()) {
                        log.push(line.to_string());
                        let n = parse_step(line);
                        step(line.trim().to_string(), n);
                    }
                }
            }
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                return Err(DockerError::Build {
                    message: error,
                    log: tail(&log, 15),
                });
            }
            Err(e) => {
                return Err(if is_connection_error(&e) {
                    DockerError::api("building the image")(e)
                } else {
                    DockerError::Build {
                        message: e.to_string(),
                        log: tail(&log, 15),
                    }
                });
            }
        }
    }
    if !image_exists(docker, tag).await? {
        return Err(DockerError::Build {
            message: "the engine reported no error, but the image is not there".into(),
            log: tail(&log, 15),
        });
    }
    Ok(())
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `Step 3/9 : RUN …` → (3, 9).
fn parse_step(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("Step ")?;
    let (frac, _) = rest.split_once(' ')?;
    let (a, b) = frac.split_once('/')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_hash_changes_with_content_and_args() {
        let a = Context::embedded();
        let h1 = a.hash(&[("BASE_IMAGE", "x")]);
        assert_eq!(h1, a.hash(&[("BASE_IMAGE", "x")]));
        assert_ne!(h1, a.hash(&[("BASE_IMAGE", "y")]));
        let mut b = a.clone();
        b.files[0].1.push(b'\n');
        assert_ne!(h1, b.hash(&[("BASE_IMAGE", "x")]));
    }

    #[test]
    fn nix_runs_emulated_only_when_the_image_is_of_another_architecture() {
        assert!(!image_is_emulated("linux/arm64", "aarch64"));
        assert!(image_is_emulated("linux/amd64", "aarch64"));
        assert!(!image_is_emulated("linux/amd64", "x86_64"));
        assert!(image_is_emulated("linux/arm64", "x86_64"));
        assert!(!image_is_emulated("", "x86_64"));
    }

    #[test]
    fn build_steps_are_parsed() {
        assert_eq!(parse_step("Step 3/9 : RUN x"), Some((3, 9)));
        assert_eq!(parse_step(" ---> abc"), None);
    }
}
