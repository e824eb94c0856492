//! What `builderctl doctor` prints, as data: each check's findings, and the order of the checks.
//!
//! The daemon runs the checks that need its knowledge (the engine, the port, the files it
//! keeps, the host's Nix) and answers the `doctor` request with a [`Report`]; the client runs
//! those that must run as the user (their ssh, root's ssh, a real build) and prints them all in
//! [`ORDER`].

use serde::{Deserialize, Serialize};

use crate::protocol::Status;

/// Every check, in the order they are printed. Each is run by the daemon or by the client.
pub const ORDER: &[&str] = &[
    "daemon",
    "builder",
    "docker",
    "rosetta",
    "desktop",
    "x86_64",
    "port",
    "keys",
    "scope",
    "nix-uri",
    "substitute",
    "builders",
    "owners",
    "root-ssh",
    "sandbox",
    "disk",
    "caches",
    "remotes",
    "build",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    Pass,
    Warn,
    Fail,
}

impl Level {
    /// The word doctor prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Pass => "PASS",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One line of doctor's output: a check's verdict on one thing, and its fix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The check in [`ORDER`] that found it.
    pub check: String,
    /// The name printed (a check may name several things, e.g. `nix.conf` and `machines`).
    pub name: String,
    pub level: Level,
    pub message: String,
    pub fix: Option<String>,
}

impl Finding {
    pub fn pass(name: &str, message: impl Into<String>) -> Finding {
        Finding::new(name, Level::Pass, message.into(), None)
    }

    pub fn warn(name: &str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding::new(name, Level::Warn, message.into(), Some(fix.into()))
    }

    pub fn fail(name: &str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding::new(name, Level::Fail, message.into(), Some(fix.into()))
    }

    /// `check` is set by the registry that ran it.
    fn new(name: &str, level: Level, message: String, fix: Option<String>) -> Finding {
        Finding {
            check: String::new(),
            name: name.to_string(),
            level,
            message,
            fix,
        }
    }
}

/// The daemon's answer to `doctor`: its findings, and the facts the client's own checks need.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// The daemon says healthy and the engine says the container runs.
    pub up: bool,
    /// Down on purpose: `builderctl down`, or no daemon and no container.
    pub down: bool,
    /// builderd's own line in the machines file.
    pub machines_line: Option<String>,
    /// The daemon's status, when a daemon answered.
    pub status: Option<Box<Status>>,
}

/// The fix when the builder's ssh refuses the key.
pub const KEY_REFUSED: &str = "the builder refused the key: ssh offers the .pub file beside the private key, so both must be one pair (see `keys`)";

/// Docker Desktop's setting that runs x86_64 programs with Rosetta on Apple Silicon.
pub const ROSETTA_SETTING: &str = "\"Use Rosetta for x86_64/amd64 emulation on Apple Silicon\"";

/// The fix when x86_64 programs do not run on an Apple Silicon Mac's builder.
pub fn rosetta_fix() -> String {
    format!(
        "turn on {ROSETTA_SETTING} in Docker Desktop's settings, then `builderctl down && builderctl up`"
    )
}
