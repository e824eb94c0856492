//! A host key given as one line, as a config pins it for a remote builder.

pub use ssh_key::PublicKey;

/// Parses a host key given as one line, `TYPE BASE64 [COMMENT]`, of any algorithm OpenSSH
/// offers: what a config pins for a remote builder.
pub fn parse_host_key_line(line: &str) -> Result<PublicKey, String> {
    let line = line.trim();
    if line.contains(['\n', '\r']) || line.is_empty() {
        return Err(
            "is not one key line: give `ssh-ed25519 AAAA…` as `ssh-keyscan` prints it".into(),
        );
    }
    PublicKey::from_openssh(line).map_err(|e| {
        format!("is not an SSH public key line ({e}): give `ssh-ed25519 AAAA…` as `ssh-keyscan` prints it")
    })
}

/// `ssh-ed25519 AAAA…`, without a comment.
pub fn key_line(key: &PublicKey) -> String {
    let mut k = key.clone();
    k.set_comment("");
    k.to_openssh()
        .expect("a parsed key encodes")
        .trim()
        .to_string()
}
