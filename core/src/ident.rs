//! Who is who: which builderd owns a state dir, who controls a path, and this process's user.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The owner label's value for the builderd whose state dir is `state_dir`: a hash of the
/// state dir, so that two configs naming the same container never take each other's.
pub fn owner_id(state_dir: &Path) -> String {
    let dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    hex(&Sha256::digest(dir.as_os_str().as_encoded_bytes()))[..16].to_string()
}

/// Who controls `path`: the owner of the first component, from `/` down and never following a
/// link, that root does not own (that user may rename or replace everything below it), or root
/// when root owns every existing component. Returns `(uid, gid)` of that component.
pub fn controller_of(path: &Path) -> (u32, u32) {
    let mut cur = PathBuf::from("/");
    for c in path.components().skip(1) {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.uid() != 0 => return (m.uid(), m.gid()),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    (0, 0)
}

/// This process's effective user id.
pub fn current_euid() -> u32 {
    rustix::process::geteuid().as_raw()
}
