//! The host's Nix: its version, and the store URI form it understands.
//!
//! Nix before 2.31 reads `ssh-ng://root@localhost:2222` as the host name `localhost:2222`; those
//! get the ssh_config alias instead.

use crate::config::UriForm;

/// `(major, minor, patch)` from `nix --version` output such as `nix (Nix) 2.8.0`.
pub fn parse_version(out: &str) -> Option<(u32, u32, u32)> {
    let v = out.split_whitespace().last()?;
    let mut parts = v.split(['.', '-', '+', 'p']).map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// The host's Nix version, from `nix --version` (or `nix-store --version`).
pub fn host_version() -> Option<(u32, u32, u32)> {
    ["nix", "nix-store"].iter().find_map(|bin| {
        let out = std::process::Command::new(bin)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?;
        parse_version(&String::from_utf8_lossy(&out.stdout))
    })
}

/// Whether to write `ssh-ng://root@localhost:PORT` (true) or the alias (false).
pub fn use_host_port(form: UriForm, version: Option<(u32, u32, u32)>) -> bool {
    match form {
        UriForm::Alias => false,
        UriForm::HostPort => true,
        UriForm::Auto => version.is_some_and(|v| v >= (2, 31, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("nix (Nix) 2.8.0\n"), Some((2, 8, 0)));
        assert_eq!(
            parse_version("nix (Determinate Nix 3.6.2) 2.31.1"),
            Some((2, 31, 1))
        );
        assert_eq!(parse_version("nix-store (Nix) 2.26.3"), Some((2, 26, 3)));
        assert_eq!(parse_version("garbage"), None);
        assert!(!use_host_port(UriForm::Auto, Some((2, 26, 3))));
        assert!(use_host_port(UriForm::Auto, Some((2, 31, 0))));
        assert!(!use_host_port(UriForm::Auto, None));
        assert!(use_host_port(UriForm::HostPort, None));
    }
}
