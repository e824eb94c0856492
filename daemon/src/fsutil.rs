//! Writing files that other people own: atomic replace with mode and owner kept, a lock per
//! directory so that two builderd instances never interleave, and clean-up of temp files that a
//! killed writer left behind.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const TEMP_MARK: &str = ".builderd-tmp";

#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct FsError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FsError {
    fn new(action: &'static str, path: &Path, source: io::Error) -> FsError {
        FsError {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The disk or quota is full.
    pub fn is_disk_full(&self) -> bool {
        self.source.raw_os_error() == Some(libc::ENOSPC)
            || self.source.raw_os_error() == Some(libc::EDQUOT)
    }
}

/// What an edit found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Written,
    Created,
    Removed,
}

/// An exclusive lock on a directory, held while a file in it is edited.
pub struct DirLock(#[allow(dead_code)] File);

pub fn lock_dir(dir: &Path) -> Result<DirLock, FsError> {
    let f = File::open(dir).map_err(|e| FsError::new("cannot open directory", dir, e))?;
    f.lock()
        .map_err(|e| FsError::new("cannot lock directory", dir, e))?;
    Ok(DirLock(f))
}

/// Reads a file as text; a missing file is `None`.
pub fn read_optional(path: &Path) -> Result<Option<String>, FsError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(String::from_utf8(b).map_err(|_| {
            FsError::new(
                "refusing to edit",
                path,
                io::Error::new(io::ErrorKind::InvalidData, "the file is not UTF-8 text"),
            )
        })?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Err(FsError::new(
            "refusing to edit",
            path,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is a directory, not a file: remove it or point the config elsewhere",
            ),
        )),
        Err(e) => Err(FsError::new("cannot read", path, e)),
    }
}

/// Edits `path` under its directory's lock: `edit` maps the current text (`None` when missing)
/// to the wanted text (`None` to remove the file). The result lands by atomic rename, keeping
/// the file's mode and owner; a new file gets `new_mode` and its directory's owner. The rename
/// happens only while the file still holds what the edit was computed from; otherwise the edit
/// is computed again.
pub fn edit_file(
    path: &Path,
    new_mode: u32,
    mut edit: impl FnMut(Option<&str>) -> Option<String>,
) -> Result<Outcome, FsError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|e| FsError::new("cannot create directory", dir, e))?;
        if dir.file_name().is_some_and(|n| n == ".ssh") {
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
            if let Some(parent) = dir.parent()
                && let Ok(m) = fs::metadata(parent)
            {
                let _ = std::os::unix::fs::chown(dir, Some(m.uid()), Some(m.gid()));
            }
        }
    }
    let _lock = lock_dir(dir)?;
    clean_stale_temps_locked(dir);
    wait_quiet(path);
    for _ in 0..8 {
        let before = read_optional(path)?;
        let wanted = edit(before.as_deref());
        if wanted.as_deref() == before.as_deref() {
            return Ok(Outcome::Unchanged);
        }
        match wanted {
            None => {
                fs::remove_file(path).map_err(|e| FsError::new("cannot remove", path, e))?;
                return Ok(Outcome::Removed);
            }
            Some(text) => {
                let meta = fs::metadata(path).ok();
                let tmp = write_temp(path, dir, text.as_bytes(), meta.as_ref(), new_mode)?;
                if read_optional(path)?.as_deref() != before.as_deref() {
                    // Someone wrote the file while we computed: start again from what is there.
                    let _ = fs::remove_file(&tmp);
                    continue;
                }
                fs::rename(&tmp, path).map_err(|e| {
                    let _ = fs::remove_file(&tmp);
                    FsError::new("cannot replace", path, e)
                })?;
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
                return Ok(if before.is_some() {
                    Outcome::Written
                } else {
                    Outcome::Created
                });
            }
        }
    }
    Err(FsError::new(
        "gave up editing",
        path,
        io::Error::other("the file kept changing under the edit"),
    ))
}

/// How long a file must go unmodified before builderd replaces it.
const QUIET: std::time::Duration = std::time::Duration::from_millis(25);

/// Waits (at most half a second) until `path` has not been modified for [`QUIET`]. A writer that
/// truncates a file and then writes it (`echo > file`, most in-place editors) leaves a moment in
/// which the file looks empty; replacing it then would send the writer's bytes to the old,
/// unlinked file. Such writers finish within microseconds, so a file quiet for a moment is whole.
fn wait_quiet(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
    while std::time::Instant::now() < deadline {
        let Ok(modified) = fs::metadata(path).and_then(|m| m.modified()) else {
            return;
        };
        let age = std::time::SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default();
        if age >= QUIET {
            return;
        }
        std::thread::sleep(QUIET - age);
    }
}

fn write_temp(
    path: &Path,
    dir: &Path,
    bytes: &[u8],
    meta: Option<&fs::Metadata>,
    new_mode: u32,
) -> Result<PathBuf, FsError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}{TEMP_MARK}.{}", std::process::id()));
    let mode = meta.map(|m| m.mode() & 0o7777).unwrap_or(new_mode);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        let (uid, gid) = match meta {
            Some(m) => (m.uid(), m.gid()),
            None => {
                let d = fs::metadata(dir)?;
                (d.uid(), d.gid())
            }
        };
        if (uid, gid) != (current_euid(), current_egid()) {
            // Only root may give a file away; a user writing their own files keeps them.
            let _ = std::os::unix::fs::fchown(&f, Some(uid), Some(gid));
        }
        f.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(FsError::new("cannot write", path, e))
        }
    }
}

/// Removes temp files a killed writer left in `dir`. Call it holding the directory's lock: every
/// live writer holds that lock while its temp file exists, so what is found then is stale.
fn clean_stale_temps_locked(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(TEMP_MARK) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Cleans stale temp files next to `path`, taking the directory's lock.
pub fn clean_stale_temps(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(_lock) = lock_dir(dir)
    {
        clean_stale_temps_locked(dir);
    }
}

/// Writes a small file of builderd's own atomically.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(|e| FsError::new("cannot create directory", dir, e))?;
    let tmp = write_temp(path, dir, bytes, None, mode)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        FsError::new("cannot replace", path, e)
    })
}

pub fn current_euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn current_egid() -> u32 {
    rustix::process::getegid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_keeps_mode_and_replaces_atomically() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        fs::write(&p, "a\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        let ino = fs::metadata(&p).unwrap().ino();
        let out = edit_file(&p, 0o644, |t| Some(format!("{}b\n", t.unwrap()))).unwrap();
        assert_eq!(out, Outcome::Written);
        assert_eq!(fs::read_to_string(&p).unwrap(), "a\nb\n");
        let m = fs::metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o777, 0o640);
        assert_ne!(m.ino(), ino, "replaced by rename, not written in place");
        assert_eq!(
            edit_file(&p, 0o644, |t| Some(t.unwrap().to_string())).unwrap(),
            Outcome::Unchanged
        );
    }

    #[test]
    fn create_remove_and_stale_temps() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/new");
        assert_eq!(
            edit_file(&p, 0o600, |_| Some("x".into())).unwrap(),
            Outcome::Created
        );
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        let stale = d.path().join("sub/.new.builderd-tmp.999999");
        fs::write(&stale, "half").unwrap();
        assert_eq!(edit_file(&p, 0o600, |_| None).unwrap(), Outcome::Removed);
        assert!(!p.exists());
        assert!(!stale.exists());
    }

    #[test]
    fn directory_and_non_utf8_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = edit_file(d.path(), 0o644, |_| Some("x".into())).unwrap_err();
        assert!(e.to_string().contains("it is a directory"), "{e}");
        let p = d.path().join("bin");
        fs::write(&p, b"\xff\xfe").unwrap();
        let e = edit_file(&p, 0o644, |_| Some("x".into())).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
        assert_eq!(fs::read(&p).unwrap(), b"\xff\xfe");
    }
}
