//! Working on a path with the identity of whoever controls it: root never opens, through a
//! user's links, what that user could not open themselves.

use std::io;
use std::path::{Path, PathBuf};

use crate::ident::{controller_of, current_euid};

#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct FsError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FsError {
    pub fn new(action: &'static str, path: &Path, source: io::Error) -> FsError {
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

/// Runs `f` with the identity of whoever controls `path` ([`controller_of`]) when this process
/// is root and that is another user: on a thread of its own that has become that user for good,
/// so that every path `f` opens is checked by the kernel as that user's, links included. Not
/// root, or a path root controls: `f` runs here.
pub fn as_owner_of<T: Send>(
    path: &Path,
    f: impl FnOnce() -> Result<T, FsError> + Send,
) -> Result<T, FsError> {
    if current_euid() != 0 {
        return f();
    }
    let (uid, gid) = controller_of(path);
    as_user(uid, gid, path, f)
}

/// Runs `f` as the user a root builderd serves (`served`), whose config named `path`: root reads
/// through it only what that user may read, whoever controls it (a world-readable `/nix/store`
/// path, yes; a directory only root may enter, no). Serving no one: as [`as_owner_of`].
pub fn as_reader_of<T: Send>(
    served: Option<u32>,
    path: &Path,
    f: impl FnOnce() -> Result<T, FsError> + Send,
) -> Result<T, FsError> {
    match served {
        Some(uid) => {
            let gid = crate::served::account(uid).map_or(uid, |u| u.gid.as_raw());
            as_user(uid, gid, path, f)
        }
        None => as_owner_of(path, f),
    }
}

/// Runs `f` as the user `uid` (group `gid`) on a thread of its own when this process is root
/// and `uid` is not; else here. `path` names what `f` works on, for the error.
pub fn as_user<T: Send>(
    uid: u32,
    gid: u32,
    path: &Path,
    f: impl FnOnce() -> Result<T, FsError> + Send,
) -> Result<T, FsError> {
    if uid == 0 || current_euid() != 0 {
        return f();
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            become_user(uid, gid).map_err(|e| {
                FsError::new(
                    "cannot take the identity of the owner of",
                    path,
                    io::Error::other(format!("uid {uid}: {e}")),
                )
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Makes the calling thread (only it) the user `uid` with group `gid`, for good.
#[cfg(target_os = "linux")]
fn become_user(uid: u32, gid: u32) -> io::Result<()> {
    use rustix::process::{Gid, Uid};
    use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
    set_thread_groups(&[g])?;
    set_thread_res_gid(g, g, g)?;
    set_thread_res_uid(u, u, u)?;
    Ok(())
}

/// Makes the calling thread (only it) the user `uid` with group `gid`: macOS's per-thread
/// credentials, which end with the thread.
#[cfg(target_os = "macos")]
#[allow(unsafe_code)]
fn become_user(uid: u32, gid: u32) -> io::Result<()> {
    unsafe extern "C" {
        fn pthread_setugid_np(uid: libc::uid_t, gid: libc::gid_t) -> libc::c_int;
    }
    // SAFETY: a plain system call on the calling thread's own credentials.
    if unsafe { pthread_setugid_np(uid, gid) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads a small file builderd takes in whole (a key, the volume's host key, a docker config):
/// opened with `O_NONBLOCK` (a FIFO never hangs the open) and, with `follow` false,
/// `O_NOFOLLOW`; only a regular file is read, and at most `limit` bytes of it (a link to
/// `/dev/zero` or a huge file is an error, not an allocation).
pub fn read_limited(path: &Path, limit: u64, follow: bool) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)?;
    read_opened_limited(&f, limit)
}

/// The rule of [`read_limited`] for a file already opened (without blocking, never through a
/// link): a regular file only, at most `limit` bytes.
pub fn read_opened_limited(f: &std::fs::File, limit: u64) -> io::Result<Vec<u8>> {
    let meta = f.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is not a regular file (a device, a FIFO or a socket)",
        ));
    }
    if meta.len() > limit {
        return Err(too_large(limit));
    }
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(f, limit + 1), &mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(limit));
    }
    Ok(bytes)
}

fn too_large(limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("it is larger than {limit} bytes"),
    )
}

/// [`read_limited`] with the identity of whoever controls `path` ([`as_owner_of`]).
pub fn read_limited_as_owner(path: &Path, limit: u64, follow: bool) -> io::Result<Vec<u8>> {
    as_owner_of(path, || {
        read_limited(path, limit, follow).map_err(|e| FsError::new("cannot read", path, e))
    })
    .map_err(|e| e.source)
}
