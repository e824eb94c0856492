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
