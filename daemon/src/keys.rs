//! The user's key pair and the builder's host key: parsing, checking, fingerprints.
//!
//! Errors name the file and say what to do; they never quote key material.

use std::path::{Path, PathBuf};

pub use builderd_core::hostkey::{key_line, parse_host_key_line};
pub use russh::keys::ssh_key::PublicKey;
use russh::keys::ssh_key::{self, HashAlg};
use russh::keys::{Algorithm, PrivateKey};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KeyError {
    #[error(
        "public key {0} does not exist: create a key pair with `ssh-keygen -t ed25519`, or set `public_key` in the config"
    )]
    Missing(PathBuf),
    #[error("public key {0} is a directory, not a key file: set `public_key` to the .pub file")]
    IsDirectory(PathBuf),
    #[error("cannot read public key {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("public key {0} is empty: it should hold one line starting with `ssh-ed25519`")]
    Empty(PathBuf),
    #[error(
        "{0} holds a PRIVATE key: give the public half (the .pub file) as `public_key`, and keep this file private"
    )]
    PrivateKey(PathBuf),
    #[error(
        "public key {path} is an {algorithm} key; the builder needs an ssh-ed25519 key: create one with `ssh-keygen -t ed25519`"
    )]
    WrongType { path: PathBuf, algorithm: String },
    #[error(
        "public key {0} is not an OpenSSH public key (binary or garbled): it should hold one line starting with `ssh-ed25519`"
    )]
    Garbled(PathBuf),
    #[error("public key {0} holds {1} keys: it should hold exactly one ssh-ed25519 key")]
    Several(PathBuf, usize),
    #[error(
        "private key {0} does not exist: set `private_key` to the private half of `public_key`"
    )]
    PrivateMissing(PathBuf),
    #[error("cannot load private key {path}: {reason}")]
    PrivateUnreadable { path: PathBuf, reason: String },
    #[error(
        "private key {0} is protected by a passphrase; the nix-daemon cannot type one: use a key without a passphrase for the builder"
    )]
    Encrypted(PathBuf),
    #[error(
        "public key {public} ({public_fp}) does not belong to private key {private} ({private_fp}): point both at the same key pair"
    )]
    Mismatch {
        public: PathBuf,
        public_fp: String,
        private: PathBuf,
        private_fp: String,
    },
}

impl KeyError {
    /// The config key that names the file this error is about.
    pub fn config_key(&self) -> &'static str {
        match self {
            KeyError::PrivateMissing(_)
            | KeyError::PrivateUnreadable { .. }
            | KeyError::Encrypted(_) => "private_key",
            _ => "public_key",
        }
    }
}

/// A checked client key pair.
#[derive(Clone)]
pub struct ClientKeys {
    pub public: PublicKey,
    /// The public key line as written to `host.pub` (type and base64, no comment).
    pub public_line: String,
    pub private: std::sync::Arc<PrivateKey>,
    pub fingerprint: String,
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKeys")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// `SHA256:…`, as `ssh-keygen -lf` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Parses the contents of a public key file: exactly one ssh-ed25519 key.
pub fn parse_public(path: &Path, bytes: &[u8]) -> Result<PublicKey, KeyError> {
    let p = || path.to_path_buf();
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(KeyError::Garbled(p()));
    };
    if text.contains("PRIVATE KEY-----") {
        return Err(KeyError::PrivateKey(p()));
    }
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    match lines.len() {
        0 if text.trim().is_empty() => return Err(KeyError::Empty(p())),
        0 => return Err(KeyError::Garbled(p())),
        1 => {}
        n => return Err(KeyError::Several(p(), n)),
    }
    let key = PublicKey::from_openssh(lines[0]).map_err(|_| {
        let first = lines[0].split_whitespace().next().unwrap_or("");
        if first.starts_with("ssh-") || first.starts_with("ecdsa-") || first.starts_with("sk-") {
            // A known algorithm name that ssh-key could not parse fully still tells the type.
            if first != "ssh-ed25519" {
                return KeyError::WrongType {
                    path: p(),
                    algorithm: first.to_string(),
                };
            }
        }
        KeyError::Garbled(p())
    })?;
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(KeyError::WrongType {
            path: p(),
            algorithm: key.algorithm().as_str().to_string(),
        });
    }
    Ok(key)
}

/// The most a key file may hold: an ed25519 key is well under 1 KiB.
const KEY_FILE_LIMIT: u64 = 64 * 1024;

/// Reads a key file with the identity of whoever controls its path (see
/// [`crate::fsutil::as_owner_of`]): a root builderd reads only the key files its user could
/// read, wherever their links lead (so a link is followed, as the user), only a regular file,
/// and at most [`KEY_FILE_LIMIT`] bytes. Blocking: callers on the async workers use
/// `spawn_blocking`.
fn read_as_owner(path: &Path) -> std::io::Result<Vec<u8>> {
    crate::fsutil::read_limited_as_owner(path, KEY_FILE_LIMIT, true)
}

/// Reads and checks the public key file.
pub fn read_public(path: &Path) -> Result<PublicKey, KeyError> {
    let bytes = match read_as_owner(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeyError::Missing(path.to_path_buf()));
        }
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
            return Err(KeyError::IsDirectory(path.to_path_buf()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(KeyError::Garbled(path.to_path_buf()));
        }
        Err(e) => {
            return Err(KeyError::Unreadable {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    parse_public(path, &bytes)
}

/// Reads the private key file `path` as [`read_as_owner`] does.
fn read_private(path: &Path) -> Result<Vec<u8>, KeyError> {
    read_as_owner(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => KeyError::PrivateMissing(path.to_path_buf()),
        _ if e.raw_os_error() == Some(libc::EISDIR) => KeyError::PrivateUnreadable {
            path: path.to_path_buf(),
            reason: "it is a directory".into(),
        },
        _ => KeyError::PrivateUnreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })
}

/// Reads an unencrypted OpenSSH private key, such as a remote builder's `identity`.
pub fn load_private(path: &Path) -> Result<std::sync::Arc<PrivateKey>, KeyError> {
    let bytes = read_private(path)?;
    let key = PrivateKey::from_openssh(&bytes).map_err(|e| KeyError::PrivateUnreadable {
        path: path.to_path_buf(),
        reason: format!("not an OpenSSH private key ({e})"),
    })?;
    if key.is_encrypted() {
        return Err(KeyError::Encrypted(path.to_path_buf()));
    }
    Ok(std::sync::Arc::new(key))
}

/// Reads and checks both halves of the client key pair.
pub fn load_client_keys(public: &Path, private: &Path) -> Result<ClientKeys, KeyError> {
    let pubkey = read_public(public)?;
    let bytes = read_private(private)?;
    let privkey =
        ssh_key::PrivateKey::from_openssh(&bytes).map_err(|e| KeyError::PrivateUnreadable {
            path: private.to_path_buf(),
            reason: format!("not an OpenSSH private key ({e})"),
        })?;
    if privkey.is_encrypted() {
        return Err(KeyError::Encrypted(private.to_path_buf()));
    }
    if privkey.public_key().key_data() != pubkey.key_data() {
        return Err(KeyError::Mismatch {
            public: public.to_path_buf(),
            public_fp: fingerprint(&pubkey),
            private: private.to_path_buf(),
            private_fp: fingerprint(privkey.public_key()),
        });
    }
    Ok(ClientKeys {
        public_line: key_line(&pubkey),
        fingerprint: fingerprint(&pubkey),
        public: pubkey,
        private: std::sync::Arc::new(privkey),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBrM3rMLJ0D3PBtnPqC0IVEVH2Q9DRN2Y4E8cRBPvOeR me@host\n";

    fn p() -> &'static Path {
        Path::new("/k.pub")
    }

    #[test]
    fn ed25519_is_accepted_and_fingerprinted() {
        let k = parse_public(p(), ED.as_bytes()).unwrap();
        assert!(fingerprint(&k).starts_with("SHA256:"));
        assert_eq!(
            key_line(&k),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBrM3rMLJ0D3PBtnPqC0IVEVH2Q9DRN2Y4E8cRBPvOeR"
        );
    }

    #[test]
    fn each_bad_public_key_has_its_error() {
        assert_eq!(parse_public(p(), b""), Err(KeyError::Empty(p().into())));
        assert_eq!(
            parse_public(p(), b"\n \n"),
            Err(KeyError::Empty(p().into()))
        );
        assert_eq!(
            parse_public(p(), b"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n"),
            Err(KeyError::PrivateKey(p().into()))
        );
        assert_eq!(
            parse_public(p(), b"\x00\x01\xff\xfe"),
            Err(KeyError::Garbled(p().into()))
        );
        assert_eq!(
            parse_public(p(), b"hello world"),
            Err(KeyError::Garbled(p().into()))
        );
        assert!(matches!(
            parse_public(p(), b"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 x\n"),
            Err(KeyError::WrongType { algorithm, .. }) if algorithm == "ssh-rsa"
        ));
        let two = format!("{ED}{ED}");
        assert_eq!(
            parse_public(p(), two.as_bytes()),
            Err(KeyError::Several(p().into(), 2))
        );
    }
}
