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

impl Persisted {
    /// Reads the state; a missing or unreadable file is the default (down, nothing created).
    pub fn load(state_dir: &Path) -> Persisted {
        std::fs::read(path(state_dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
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
        assert_eq!(Persisted::load(d.path()), Persisted::default());
        let mut p = Persisted {
            desired: Desired::Up,
            ..Default::default()
        };
        p.created.insert("/etc/nix/machines".into());
        p.save(d.path()).unwrap();
        assert_eq!(Persisted::load(d.path()), p);
        std::fs::write(path(d.path()), "{garbage").unwrap();
        assert_eq!(Persisted::load(d.path()), Persisted::default());
    }
}
