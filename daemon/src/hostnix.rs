//! The host's Nix: its version, and the store URI form it understands.
//!
//! Nix before 2.31 reads `ssh-ng://root@localhost:2222` as the host name `localhost:2222`, so
//! the machines line names the ssh_config alias unless `host:port` is asked for.

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

/// Whether to write `ssh-ng://root@localhost:PORT` (true) or the alias (false). The alias
/// works with every Nix (measured: 2.8, 2.26, 2.34) and keeps the alias's connection sharing;
/// `host:port` is written only when asked for, and only Nix 2.31 or newer parses it.
pub fn use_host_port(form: UriForm) -> bool {
    match form {
        UriForm::Alias | UriForm::Auto => false,
        UriForm::HostPort => true,
    }
}

/// Whether a store URI is the `ssh-ng://user@host:port` form (not the alias).
pub fn is_host_port_uri(uri: &str) -> bool {
    uri.contains('@')
        && uri
            .rsplit(':')
            .next()
            .is_some_and(|p| p.parse::<u16>().is_ok())
}

/// Whether a Nix of `version` parses `ssh-ng://user@host:port`.
pub fn parses_host_port(version: (u32, u32, u32)) -> bool {
    version >= (2, 31, 0)
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
        assert!(!use_host_port(UriForm::Auto));
        assert!(!use_host_port(UriForm::Alias));
        assert!(use_host_port(UriForm::HostPort));
        assert!(!parses_host_port((2, 26, 3)));
        assert!(parses_host_port((2, 31, 0)));
    }
}
