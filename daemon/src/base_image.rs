//! The base image of the embedded context: a Debian rootfs with `nix-bin`, `openssh-server` and
//! `tini`. Where it can be pulled, it is; where no registry answers, builderd makes it locally
//! with debootstrap from Debian's mirror and imports it.

use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::image::CreateImageOptions;
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::config::Config;
use crate::docker::{DockerError, image_exists};

/// The base builderd makes itself when it is missing.
pub const DEFAULT_BASE: &str = "builderd-base:trixie";

/// Packages the base carries. `libdbi-perl` must be named: debootstrap does not resolve the
/// virtual package `perl-dbdabi-94` that nix-bin's dependencies need.
pub const PACKAGES: &str = "nix-bin,libdbi-perl,openssh-server,tini,ca-certificates";

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error(
        "the base image {image} is missing and cannot be pulled ({pull}); builderd can make it with debootstrap, but {why}. {what_to_do}"
    )]
    CannotMake {
        image: String,
        pull: String,
        why: String,
        what_to_do: String,
    },
    #[error("debootstrap failed (exit {code}); its last lines:\n{log}")]
    Debootstrap { code: String, log: String },
    #[error("importing the base image failed: {0}")]
    Import(String),
    #[error(transparent)]
    Docker(#[from] DockerError),
}

/// Makes sure the base image of the embedded context exists.
pub async fn ensure(
    docker: &Docker,
    cfg: &Config,
    say: &(dyn Fn(String) + Send + Sync),
) -> Result<(), BaseError> {
    let image = cfg.image.base_image.as_str();
    if cfg.image.context.is_some() || image_exists(docker, image).await? {
        return Ok(());
    }
    say(format!("base image {image} is missing; trying to pull it"));
    let pull = match pull(docker, image).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let cannot = |why: String, what: &str| BaseError::CannotMake {
        image: image.to_string(),
        pull: pull.clone(),
        why,
        what_to_do: what.to_string(),
    };
    let Some((repo, tag)) = image.rsplit_once(':') else {
        return Err(cannot(
            "the image name has no tag".into(),
            "Name it REPO:TAG.",
        ));
    };
    let Some(debootstrap) = which("debootstrap") else {
        return Err(cannot(
            "debootstrap is not installed".into(),
            "Install it (`sudo apt-get install debootstrap`) or make the image reachable, then run `builderctl up` again.",
        ));
    };
    if rustix::process::geteuid().as_raw() != 0 {
        return Err(cannot(
            "debootstrap needs root".into(),
            "Run `sudo builderctl up` once, or make the base yourself: `sudo debootstrap --variant=minbase --include=nix-bin,libdbi-perl,openssh-server,tini,ca-certificates trixie DIR && sudo tar -C DIR -c . | docker import - builderd-base:trixie`.",
        ));
    }
    let work = cfg.state_dir.join("base-rootfs");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&cfg.state_dir).map_err(|e| BaseError::Import(e.to_string()))?;
    let result = async {
        debootstrap_into(&debootstrap, cfg, &work, say).await?;
        say("importing the base image".into());
        let rootfs = work.clone();
        let bytes = tokio::task::spawn_blocking(move || tar_rootfs(&rootfs))
            .await
            .map_err(|e| BaseError::Import(e.to_string()))?
            .map_err(|e| BaseError::Import(e.to_string()))?;
        import(docker, repo, tag, bytes).await
    }
    .await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn pull(docker: &Docker, image: &str) -> Result<(), String> {
    let mut s = docker.create_image(
        Some(CreateImageOptions {
            from_image: image,
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
    cfg: &Config,
    dir: &Path,
    say: &(dyn Fn(String) + Send + Sync),
) -> Result<(), BaseError> {
    say(format!(
        "making the base with debootstrap ({} from {}); this takes about a minute",
        cfg.image.debian_suite, cfg.image.debian_mirror
    ));
    let mut arch = Vec::new();
    if let Some(p) = cfg.image.platform.as_deref() {
        arch.push(format!(
            "--arch={}",
            if p.ends_with("arm64") {
                "arm64"
            } else {
                "amd64"
            }
        ));
    }
    let mut child = tokio::process::Command::new(bin)
        .arg("--variant=minbase")
        .arg(format!("--include={PACKAGES}"))
        .args(arch)
        .arg(&cfg.image.debian_suite)
        .arg(dir)
        .arg(&cfg.image.debian_mirror)
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

fn tar_rootfs(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    b.append_dir_all(".", dir)?;
    b.into_inner()
}

async fn import(docker: &Docker, repo: &str, tag: &str, bytes: Vec<u8>) -> Result<(), BaseError> {
    let mut s = docker.create_image(
        Some(CreateImageOptions {
            from_src: "-",
            repo,
            tag,
            ..Default::default()
        }),
        Some(bytes.into()),
        None,
    );
    while let Some(item) = s.next().await {
        match item {
            Ok(info) => {
                if let Some(e) = info.error {
                    return Err(BaseError::Import(e));
                }
            }
            Err(e) => return Err(BaseError::Import(e.to_string())),
        }
    }
    Ok(())
}
