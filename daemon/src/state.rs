//! What survives the daemon, in `state_dir/state.json`: the state the user asked for, the files
//! builderd created, and the host key it last registered.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, FsError};
use crate::registration::Created;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Desired {
    Up,
    #[default]
    Down,
}

impl Desired {
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Up => "up",
            Desired::Down => "down",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Persisted {
    pub desired: Desired,
    /// Registration files builderd created (removed again at `down` when nothing else is in them).
    pub created: Created,
    /// The fingerprint of the host key last registered.
    pub host_key_fingerprint: Option<String>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("state.json")
}

/// A state file that could not be read, and where it was kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Corrupt {
    pub error: String,
    /// Where the bad file now is (`None` when it could not be moved aside).
    pub kept_at: Option<PathBuf>,
}

/// The most `state.json` (or `fleet.json`) may hold: it lists a few files and keys.
pub const STATE_LIMIT: u64 = 1024 * 1024;

impl Persisted {
    /// Reads the state; a missing file is the default (down, nothing created). A file that is
    /// there but unreadable (empty, cut off, garbage) is moved aside and reported, and the state
    /// is taken as `up`: a builder is never removed because its state file was damaged.
    pub fn load(state_dir: &Path) -> (Persisted, Option<Corrupt>) {
        let p = path(state_dir);
        // As the state dir's controller, never through a link (builderd writes it by rename),
        // a regular file of at most 1 MiB: a FIFO or /dev/zero there is damage, not a hang.
        let bytes = match fsutil::read_limited_as_owner(&p, STATE_LIMIT, false) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return (Persisted::default(), None);
            }
            Err(e) => {
                let c = Corrupt {
                    error: e.to_string(),
                    kept_at: None,
                };
                return (Persisted::assumed_up(), Some(c));
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(p) => (p, None),
            Err(e) => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or_default();
                let aside = state_dir.join(format!("state.json.corrupt-{secs}"));
                let kept_at = fsutil::as_owner_of(&p, || {
                    std::fs::rename(&p, &aside).map_err(|e| FsError {
                        action: "cannot move aside",
                        path: p.clone(),
                        source: e,
                    })
                })
                .ok()
                .map(|()| aside);
                let error = if bytes.iter().all(u8::is_ascii_whitespace) {
                    "it is empty".to_string()
                } else {
                    e.to_string()
                };
                (Persisted::assumed_up(), Some(Corrupt { error, kept_at }))
            }
        }
    }

    fn assumed_up() -> Persisted {
        Persisted {
            desired: Desired::Up,
            ..Default::default()
        }
    }

    /// Writes the state atomically.
    pub fn save(&self, state_dir: &Path) -> Result<(), FsError> {
        let bytes = serde_json::to_vec_pretty(self).expect("state serializes");
        fsutil::write_atomic(&path(state_dir), &bytes, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_default() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Persisted::load(d.path()), (Persisted::default(), None));
        let mut p = Persisted {
            desired: Desired::Down,
            ..Default::default()
        };
        p.created.insert("/etc/nix/machines".into());
        p.save(d.path()).unwrap();
        assert_eq!(Persisted::load(d.path()), (p, None));
    }

    #[test]
    fn a_damaged_file_is_kept_aside_and_taken_as_up() {
        for bad in ["", "{\"desired\": \"do", "{garbage", "\u{0}\u{1}"] {
            let d = tempfile::tempdir().unwrap();
            std::fs::write(path(d.path()), bad).unwrap();
            let (p, corrupt) = Persisted::load(d.path());
            assert_eq!(p.desired, Desired::Up, "{bad:?}");
            let c = corrupt.unwrap();
            let kept = c.kept_at.unwrap();
            assert_eq!(std::fs::read_to_string(&kept).unwrap(), bad);
            assert!(!path(d.path()).exists());
            if bad.is_empty() {
                assert_eq!(c.error, "it is empty");
            }
        }
    }
}
