//! Writing files that other people own: atomic replace with mode and owner kept, a lock per
//! directory so that two builderd instances never interleave, and clean-up of temp files that a
//! killed writer left behind.
//!
//! A root builderd touches files in directories its user controls (their home, the state dir).
//! There it acts with the user's identity ([`as_owner_of`]), so that the kernel lets it do exactly
//! what the user could do and a planted link cannot make root write, read or give away a file.
//! Temp files get random names and are created exclusively (`O_EXCL`, `O_NOFOLLOW`) under a
//! directory descriptor, and renamed in the same directory: no path builderd writes through is
//! ever followed to a place the user chose.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub use builderd_core::asuser::{
    FsError, as_owner_of, as_user, read_limited, read_limited_as_owner, read_opened_limited,
};
pub use builderd_core::ident::{controller_of, current_euid};

const TEMP_MARK: &str = ".builderd-tmp";

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

/// Reads the file at `path` itself, never through a link (a link there is refused): opened
/// without blocking, a regular file only, at most [`TEXT_LIMIT`] bytes. A FIFO, a device or a
/// huge file where a registration file should be is damage to report, never a hang or an
/// allocation.
fn read_no_follow(path: &Path) -> Result<Option<String>, FsError> {
    let bytes = read_limited(path, TEXT_LIMIT, false);
    let refuse = |why: String| {
        Err(FsError::new(
            "refusing to edit",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, why),
        ))
    };
    match &bytes {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return refuse("it became a symlink while builderd edited it".into());
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            return refuse(format!(
                "{e}: remove it (builderd writes a new one), or point the config elsewhere"
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return refuse(format!(
                "{e}, more than a registration file holds: make it smaller, or point the config elsewhere"
            ));
        }
        _ => {}
    }
    read_text(path, bytes)
}

fn read_text(path: &Path, bytes: io::Result<Vec<u8>>) -> Result<Option<String>, FsError> {
    match bytes {
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
    let dir_fd = open_dir(dir)?;
    clean_stale_temps_locked(&dir_fd);
    wait_settled(path);
    for _ in 0..8 {
        let before = read_no_follow(path)?;
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
                let meta = fs::symlink_metadata(path).ok().filter(|m| m.is_file());
                let tmp = write_temp(path, &dir_fd, text.as_bytes(), meta.as_ref(), new_mode)?;
                // Someone wrote the file while we computed, or has just begun to (a truncate
                // makes it look empty and fresh, its bytes still to come): start again, from
                // what is there once it is quiet. What is left open is the few microseconds
                // between this look and the rename.
                if read_no_follow(path)?.as_deref() != before.as_deref()
                    || !is_quiet(path)
                    || open_for_writing(path)
                {
                    let _ =
                        rustix::fs::unlinkat(&dir_fd, tmp.as_str(), rustix::fs::AtFlags::empty());
                    wait_settled(path);
                    continue;
                }
                rename_into(&dir_fd, &tmp, path)?;
                let _ = dir_fd.sync_all();
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
        match unmodified_for(path) {
            Some(age) if age < QUIET => std::thread::sleep(QUIET - age),
            _ => return,
        }
    }
}

/// Waits (at most half a second each) until no process has `path` open for writing, where that
/// can be told, and until it is quiet.
fn wait_settled(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
    while open_for_writing(path) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    wait_quiet(path);
}

/// Whether some process has `path` open for writing: a writer that truncated it and has not
/// written yet, however long it was held up. On Linux a read lease tells (the kernel refuses
/// one, with EAGAIN, while the file is open for writing anywhere); it is released at once.
/// Elsewhere, or when the lease cannot be asked for (not the file's owner, no CAP_LEASE), this
/// says no and the quiet rule alone applies.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn open_for_writing(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return false;
    };
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a file descriptor this function owns, with integer arguments.
    let r = unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) };
    if r == 0 {
        // SAFETY: as above; gives the lease back before anyone can wait on it for long.
        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
        return false;
    }
    io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
}

#[cfg(not(target_os = "linux"))]
fn open_for_writing(_path: &Path) -> bool {
    false
}

/// Whether `path` (if it exists) has gone unmodified for [`QUIET`].
fn is_quiet(path: &Path) -> bool {
    unmodified_for(path).is_none_or(|age| age >= QUIET)
}

/// How long ago `path` was last modified; `None` when it does not exist.
fn unmodified_for(path: &Path) -> Option<std::time::Duration> {
    let modified = fs::symlink_metadata(path).and_then(|m| m.modified()).ok()?;
    Some(
        std::time::SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default(),
    )
}

/// Creates a temp file next to `path` under a random name (exclusively, never through a link),
/// writes `bytes`, and gives it `path`'s mode and owner (a new file: `new_mode`, the directory's
/// owner). Returns the temp file's name in `dir_fd`.
fn write_temp(
    path: &Path,
    dir_fd: &File,
    bytes: &[u8],
    meta: Option<&fs::Metadata>,
    new_mode: u32,
) -> Result<String, FsError> {
    use rustix::fs::{Mode, OFlags};
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mode = meta.map(|m| m.mode() & 0o7777).unwrap_or(new_mode);
    let mut attempt = 0;
    let (tmp, fd) = loop {
        let tmp = format!(".{name}{TEMP_MARK}.{}", random_suffix());
        match rustix::fs::openat(
            dir_fd,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => break (tmp, fd),
            Err(rustix::io::Errno::EXIST) if attempt < 16 => attempt += 1,
            Err(e) => return Err(FsError::new("cannot write", path, e.into())),
        }
    };
    let mut f = File::from(fd);
    let result = (|| {
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        let (uid, gid) = match meta {
            Some(m) => (m.uid(), m.gid()),
            None => {
                let d = dir_fd.metadata()?;
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
            let _ = rustix::fs::unlinkat(dir_fd, tmp.as_str(), rustix::fs::AtFlags::empty());
            Err(FsError::new("cannot write", path, e))
        }
    }
}

/// 64 unpredictable bits for a temp file's name (the process's random hash keys, a counter and
/// the time; exclusivity comes from `O_EXCL`, unpredictability only spares a retry).
pub(crate) fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:016x}", h.finish())
}

/// Renames `tmp` (a name in `dir_fd`) over `path`'s name in the same directory.
fn rename_into(dir_fd: &File, tmp: &str, path: &Path) -> Result<(), FsError> {
    let name = path.file_name().unwrap_or_default();
    rustix::fs::renameat(dir_fd, tmp, dir_fd, name).map_err(|e| {
        let _ = rustix::fs::unlinkat(dir_fd, tmp, rustix::fs::AtFlags::empty());
        FsError::new("cannot replace", path, e.into())
    })
}

/// Opens a directory for `*at` calls, so that the temp file and the rename land in one directory
/// even if its path is changed meanwhile.
fn open_dir(dir: &Path) -> Result<File, FsError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map_err(|e| FsError::new("cannot open directory", dir, e))
}

/// Removes temp files a killed writer left in the directory. Call it holding the directory's
/// lock: every live writer holds that lock while its temp file exists, so what is found then is
/// stale. Names are unlinked in the directory itself (a link is removed, never followed).
fn clean_stale_temps_locked(dir_fd: &File) {
    let Ok(dup) = dir_fd.try_clone() else {
        return;
    };
    let Ok(mut entries) = rustix::fs::Dir::read_from(&dup) else {
        return;
    };
    let mut stale = Vec::new();
    while let Some(Ok(e)) = entries.read() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(TEMP_MARK) {
            stale.push(name);
        }
    }
    for name in stale {
        let _ = rustix::fs::unlinkat(dir_fd, name.as_str(), rustix::fs::AtFlags::empty());
    }
}

/// Cleans stale temp files next to `path`, taking the directory's lock.
pub fn clean_stale_temps(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(_lock) = lock_dir(dir)
        && let Ok(fd) = open_dir(dir)
    {
        clean_stale_temps_locked(&fd);
    }
}

/// The most a text file builderd reads for a comparison (a registration file) may hold.
pub const TEXT_LIMIT: u64 = 16 * 1024 * 1024;

/// A registration file's text as whoever controls it may read it, at most [`TEXT_LIMIT`]
/// bytes; `None` when it cannot be read (missing, not text, not a regular file).
pub fn read_text_as_owner(path: &Path) -> Option<String> {
    String::from_utf8(read_limited_as_owner(path, TEXT_LIMIT, true).ok()?).ok()
}

/// Writes a small file of builderd's own atomically (with the identity of whoever controls its
/// directory, see [`as_owner_of`]).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
    as_owner_of(path, || {
        let dir = path.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(dir).map_err(|e| FsError::new("cannot create directory", dir, e))?;
        let dir_fd = open_dir(dir)?;
        let tmp = write_temp(path, &dir_fd, bytes, None, mode)?;
        rename_into(&dir_fd, &tmp, path)
    })
}

fn current_egid() -> u32 {
    rustix::process::getegid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_writer_that_truncated_and_is_held_up_is_waited_for_not_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("machines");
        std::fs::write(&p, "old line\n").unwrap();
        assert!(!open_for_writing(&p));
        // A writer truncates, then is held up for longer than the quiet time before it writes.
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        assert!(
            open_for_writing(&p),
            "a file open for writing is seen as such"
        );
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(150));
            io::Write::write_all(&mut w, b"the user's line\n").unwrap();
        });
        std::thread::sleep(std::time::Duration::from_millis(60));
        // The file is empty and has been quiet for longer than QUIET: only the open writer
        // says it is not whole.
        edit_file(&p, 0o644, |cur| {
            Some(format!("ours\n{}", cur.unwrap_or("")))
        })
        .unwrap();
        writer.join().unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "ours\nthe user's line\n"
        );
    }

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

    #[test]
    fn a_fifo_or_a_huge_file_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let mkfifo = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(mkfifo.unwrap().success(), "mkfifo {}", fifo.display());
        let e = edit_file(&fifo, 0o644, |_| Some("x".into())).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let huge = d.path().join("huge");
        File::create(&huge)
            .unwrap()
            .set_len(TEXT_LIMIT + 1)
            .unwrap();
        let e = edit_file(&huge, 0o644, |_| Some("x".into())).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        assert_eq!(fs::metadata(&huge).unwrap().len(), TEXT_LIMIT + 1);
    }

    #[test]
    fn a_directory_a_user_controls_is_written_as_that_user() {
        assert_eq!(
            current_euid(),
            0,
            "this test switches to another user: run it as root (tests/run does)"
        );
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(controller_of(&d.path().join("x/y")).0, 0);
        let theirs = d.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        assert_eq!(controller_of(&theirs.join("a/b")), (65534, 65534));
        // A file of theirs: written as them.
        write_atomic(&theirs.join("f"), b"x", 0o644).unwrap();
        assert_eq!(fs::metadata(theirs.join("f")).unwrap().uid(), 65534);
        // Their link to a file only root may write: the edit fails as it would for them.
        let roots = d.path().join("roots");
        fs::write(&roots, "root's\n").unwrap();
        std::os::unix::fs::symlink(&roots, theirs.join("link")).unwrap();
        let link = theirs.join("link");
        let e = as_owner_of(&link, || {
            let crate::registration::Target::Write(target) =
                crate::registration::resolve_target(&link)
            else {
                panic!("a link to a plain file is followed");
            };
            edit_file(&target, 0o644, |_| Some("evil\n".into()))
        })
        .unwrap_err();
        assert!(e.source.kind() == io::ErrorKind::PermissionDenied, "{e}");
        assert_eq!(fs::read_to_string(&roots).unwrap(), "root's\n");
        // This thread stayed root.
        assert_eq!(current_euid(), 0);
    }
}
