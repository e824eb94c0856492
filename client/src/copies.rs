//! The system service's own copies of `builderd` and the config, in the directory only root
//! may change (`config::system_dir()`): what the root service runs and reads, so that nothing it
//! runs is a file the user could replace.
//!
//! The sources are the user's (the binary next to their `builderctl`, their config): each is
//! read with the identity of whoever controls its path (a link to a file only root may read
//! fails as it would for the user), through one descriptor opened without blocking (a FIFO
//! cannot hang the copy), a regular file only, up to a limit, and refused when it changed while
//! it was read. What lands in root's directory is those bytes, checked again there.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use builderd_core::asuser::{FsError, as_owner_of};
use builderd_core::config;
use builderd_core::ident::controller_of;

/// Larger than any builderd binary (a debug build is about 150 MiB).
const BINARY_LIMIT: u64 = 512 << 20;
/// Far larger than any config.
const CONFIG_LIMIT: u64 = 1 << 20;

/// `config::system_dir()`, or the same path below `prefix` (the copy step alone, in test
/// builds; see [`crate::service::install`]).
pub fn system_dir_under(prefix: Option<&Path>) -> PathBuf {
    let dir = config::system_dir();
    match prefix {
        Some(p) => p.join(dir.strip_prefix("/").unwrap_or(&dir)),
        None => dir,
    }
}

/// Copies `program` and the config at `config` (empty when it does not exist: the defaults)
/// into `dir`, as root's files that only root may change: the directory and the binary 0755,
/// the config 0644. Refuses a `dir` that someone else controls, a source that is not a
/// regular file, too large, or changing, and a config the service serving uid `served` would
/// refuse to start on; nothing is written then.
pub fn install_copies(
    dir: &Path,
    program: &Path,
    config: &Path,
    served: Option<u32>,
) -> Result<(), String> {
    let binary = read_source(program, BINARY_LIMIT)?
        .ok_or_else(|| format!("cannot read {}: it does not exist", program.display()))?;
    let text = read_source(config, CONFIG_LIMIT)?.unwrap_or_default();
    let utf8 = std::str::from_utf8(&text).map_err(|_| {
        format!(
            "{} is not UTF-8 text: it cannot be a config",
            config.display()
        )
    })?;
    if let Err(e) = config::Config::from_toml_serving(config, utf8, served) {
        return Err(format!(
            "{e}\nThe root service would refuse this config: nothing was installed. Fix it and run `sudo builderctl install` again"
        ));
    }
    let roots_alone = || match controller_of(&dir.join("logs")).0 {
        0 => Ok(()),
        owner => Err(format!(
            "{} is not root's alone (uid {owner} controls it): the service's binary and config must be files only root can change",
            dir.display()
        )),
    };
    roots_alone()?;
    std::fs::create_dir_all(dir.join("logs"))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    roots_alone()?;
    for d in [dir.to_path_buf(), dir.join("logs")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot set the mode of {}: {e}", d.display()))?;
    }
    let mut copy = format!(
        "# builderd's root service reads this copy of {}, made by `sudo builderctl install`.\n# Edit yours and run `sudo builderctl install` again.\n",
        config.display()
    )
    .into_bytes();
    copy.extend_from_slice(&text);
    for (name, bytes, mode) in [
        ("builderd", &binary, 0o755),
        (config::SYSTEM_CONFIG_NAME, &copy, 0o644),
    ] {
        let p = dir.join(name);
        crate::service::write_replacing(&p, bytes, mode)?;
        verify(&p, bytes, mode)?;
    }
    Ok(())
}

/// Removes what [`install_copies`] put in `dir`; with `purge` the logs too, and `dir` itself.
pub fn remove_copies(dir: &Path, purge: bool) {
    for name in ["builderd", config::SYSTEM_CONFIG_NAME] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    if purge {
        let _ = std::fs::remove_dir_all(dir.join("logs"));
        let _ = std::fs::remove_dir(dir);
    }
}

/// The bytes of `path` as they were at one moment, `None` when it does not exist.
fn read_source(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, String> {
    use rustix::fs::{Mode, OFlags};
    let fail = |what: String| format!("cannot copy {}: {what}", path.display());
    let read = || -> Result<Option<Vec<u8>>, FsError> {
        let io = |source: std::io::Error| FsError {
            action: "cannot read",
            path: path.to_path_buf(),
            source,
        };
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let f = match rustix::fs::open(path, flags, Mode::empty()) {
            Ok(fd) => std::fs::File::from(fd),
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(io(e.into())),
        };
        let before = f.metadata().map_err(io)?;
        if !before.is_file() {
            return Err(io(std::io::Error::other("it is not a regular file")));
        }
        if before.len() > limit {
            return Err(io(std::io::Error::other(format!(
                "it is larger than {limit} bytes"
            ))));
        }
        let mut bytes = Vec::with_capacity(before.len() as usize);
        (&f).take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
        let after = f.metadata().map_err(io)?;
        // The change time moves with every write and cannot be set back by its owner.
        let stamp = |m: &std::fs::Metadata| (m.len(), m.ctime(), m.ctime_nsec(), m.mtime_nsec());
        if stamp(&before) != stamp(&after) || bytes.len() as u64 != after.len() {
            return Err(io(std::io::Error::other(
                "it changed while it was read: run `sudo builderctl install` again",
            )));
        }
        Ok(Some(bytes))
    };
    as_owner_of(path, read).map_err(|e| fail(e.source.to_string()))
}

/// Checks that `p` is root's regular file with exactly `mode` and `bytes`.
fn verify(p: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use rustix::fs::{Mode, OFlags};
    let fail = |what: &str| format!("the copy {} {what}", p.display());
    let fd = rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(&format!("cannot be read back: {e}")))?;
    let mut f = std::fs::File::from(fd);
    let m = f.metadata().map_err(|e| fail(&e.to_string()))?;
    if !m.is_file() || m.uid() != 0 || m.mode() & 0o7777 != mode {
        return Err(fail(&format!(
            "is not root's file with mode {mode:o} (uid {}, mode {:o})",
            m.uid(),
            m.mode() & 0o7777
        )));
    }
    let mut back = Vec::with_capacity(bytes.len());
    f.read_to_end(&mut back)
        .map_err(|e| fail(&format!("cannot be read back: {e}")))?;
    if back != bytes {
        return Err(fail("does not hold what was read"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use builderd_core::config::Config;
    use builderd_core::ident::current_euid;

    #[test]
    fn install_copies_are_roots_and_refuse_a_directory_someone_else_controls() {
        assert_eq!(
            current_euid(),
            0,
            "this test makes files only root may change: run it as root (tests/run does)"
        );
        let d = tempfile::tempdir().unwrap();
        let program = d.path().join("builderd-src");
        std::fs::write(&program, b"\x7fELF builderd").unwrap();
        let config = d.path().join("config.toml");
        std::fs::write(&config, "port = 2300\n").unwrap();
        let dir = d.path().join("system");
        install_copies(&dir, &program, &config, None).unwrap();
        let bin = std::fs::metadata(dir.join("builderd")).unwrap();
        assert_eq!((bin.uid(), bin.mode() & 0o777), (0, 0o755));
        assert_eq!(
            std::fs::read(dir.join("builderd")).unwrap(),
            b"\x7fELF builderd"
        );
        let copy = dir.join("config.toml");
        let m = std::fs::metadata(&copy).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o644));
        let text = std::fs::read_to_string(&copy).unwrap();
        assert!(text.ends_with("port = 2300\n"), "{text}");
        assert_eq!(Config::load(&copy).unwrap().port, 2300);
        // No config yet: the copy holds the defaults.
        std::fs::remove_file(&config).unwrap();
        install_copies(&dir, &program, &config, None).unwrap();
        assert_eq!(Config::load(&copy).unwrap().port, 2222);
        // A directory another user controls is refused.
        let theirs = d.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = install_copies(&theirs.join("builderd"), &program, &config, None).unwrap_err();
        assert!(e.contains("uid 65534 controls it"), "{e}");
        assert!(!theirs.join("builderd").exists(), "nothing made there");
        // Uninstalling removes the copies, and with --purge the logs and the directory.
        remove_copies(&dir, false);
        assert!(!dir.join("builderd").exists() && !copy.exists());
        assert!(dir.join("logs").is_dir());
        remove_copies(&dir, true);
        assert!(!dir.exists());
    }

    #[test]
    fn a_source_that_is_not_a_regular_file_is_refused_without_waiting() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        for p in [fifo.as_path(), Path::new("/dev/zero"), d.path()] {
            let e = read_source(p, CONFIG_LIMIT).unwrap_err();
            assert!(e.contains("not a regular file"), "{}: {e}", p.display());
        }
        let big = d.path().join("big");
        std::fs::write(&big, vec![b'#'; 11]).unwrap();
        assert!(
            read_source(&big, 10)
                .unwrap_err()
                .contains("larger than 10")
        );
        assert_eq!(read_source(&d.path().join("none"), 10).unwrap(), None);
    }
}
