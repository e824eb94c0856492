//! doctor's Nix checks: whose builds may use the builder, the machines line suits the host's
//! Nix, and the nix-daemon reads the machines file and `builders-use-substitutes` as builderd
//! needs.

use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine as _;
use builderd_core::doctor::Finding;

use super::Ctx;
use crate::config::Config;
use crate::registration::{Target, block, nix_conf, resolve_target};

/// Whose builds the builder is registered for: every user's (the system-wide machines file),
/// or, for a root service on Linux serving another user not installed with `--all-users`, that
/// user's only (the daemon says so in the machines file's registration).
pub(super) fn check_scope(ctx: &Ctx) -> Vec<Finding> {
    match ctx.limited() {
        Some(why) => vec![Finding::warn(
            "scope",
            format!("registered for the served user only: {why}"),
            "install the service with `sudo builderctl install --all-users` if every user of this host trusts the builder",
        )],
        None => vec![Finding::pass(
            "scope",
            format!(
                "every build that reads {} may use the builder",
                ctx.cfg.registration.machines_file.display()
            ),
        )],
    }
}

/// The host's Nix against the machines line's URI form, and field 8 against the volume's key.
pub(super) fn check_nix_uri(ctx: &Ctx) -> Vec<Finding> {
    if ctx.limited().is_some() {
        // Nothing in the machines file to check: `scope` says why.
        return vec![];
    }
    let cfg = ctx.cfg;
    let Some(line) = ctx.machines_line() else {
        return vec![if ctx.down() {
            Finding::warn(
                "nix-uri",
                "no machines line (the builder is down)",
                "run `builderctl up`",
            )
        } else {
            Finding::fail(
                "nix-uri",
                format!(
                    "{} has no builderd line",
                    cfg.registration.machines_file.display()
                ),
                "run `builderctl up`; see `builderctl status` for why it could not be written",
            )
        }];
    };
    let fields: Vec<&str> = line.split_whitespace().collect();
    let uri = fields.first().copied().unwrap_or("");
    let Some(v) = crate::hostnix::host_version() else {
        return vec![Finding::fail(
            "nix-uri",
            "no `nix` (or `nix-store`) on PATH: the host's Nix is unknown",
            "install Nix, or put its bin directory on PATH",
        )];
    };
    let vs = format!("{}.{}.{}", v.0, v.1, v.2);
    let host_port = crate::hostnix::is_host_port_uri(uri);
    if host_port && !crate::hostnix::parses_host_port(v) {
        return vec![Finding::fail(
            "nix-uri",
            format!("{uri} needs Nix 2.31 or newer; this host has {vs}"),
            "set `uri = \"alias\"` under [registration] (or remove `uri`), then `builderctl up`",
        )];
    }
    // Field 8 must be this volume's host key, or ssh refuses the builder (or, worse, accepts
    // another one).
    let host_pub = cfg.host_key_file();
    let want = std::fs::read_to_string(&host_pub)
        .ok()
        .map(|t| t.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
    let field8 = fields.get(7).copied().unwrap_or("-");
    let got = (field8 != "-").then(|| {
        base64::engine::general_purpose::STANDARD
            .decode(field8)
            .ok()
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    });
    vec![match (got, want) {
        (Some(got), Some(want)) if got != want => Finding::fail(
            "nix-uri",
            format!(
                "field 8 of the machines line is not the builder's host key ({})",
                host_pub.display()
            ),
            format!(
                "run `builderctl up` (it rewrites its line in {})",
                cfg.registration.machines_file.display()
            ),
        ),
        (Some(_), None) => Finding::warn(
            "nix-uri",
            format!(
                "{uri} suits the host's Nix {vs}; the builder's host key ({}) cannot be read to compare with field 8",
                host_pub.display()
            ),
            "run doctor as the user (or root) that runs builderd",
        ),
        (None, _) if !host_port => Finding::fail(
            "nix-uri",
            format!("{uri} has no host key in field 8"),
            "run `builderctl up` (it writes field 8)",
        ),
        (Some(_), Some(_)) => Finding::pass(
            "nix-uri",
            format!("{uri} suits the host's Nix {vs}; field 8 is the builder's host key"),
        ),
        (None, _) => Finding::pass(
            "nix-uri",
            format!("{uri} suits the host's Nix {vs} (its host key is in root's known_hosts)"),
        ),
    }]
}

/// `builders-use-substitutes` as the nix-daemon reads it: the system's nix.conf and its
/// includes, never the invoking user's own files.
pub(super) fn check_substitute(ctx: &Ctx) -> Vec<Finding> {
    if ctx.limited().is_some() {
        return vec![];
    }
    let cfg = ctx.cfg;
    let shown = nix_shown(cfg);
    substitute_verdict(ctx, shown)
}

/// The settings as the nix-daemon reads them (`nix config show` with the system nix.conf and
/// its includes only, never the user's own files); `None` without a `nix` to ask.
fn nix_shown(cfg: &Config) -> Option<String> {
    let dir = cfg
        .registration
        .nix_conf
        .parent()
        .unwrap_or(Path::new("/etc/nix"))
        .to_path_buf();
    ["config show", "show-config"].iter().find_map(|sub| {
        let o = Command::new("nix")
            .args(sub.split(' '))
            .args(["--extra-experimental-features", "nix-command"])
            .env("NIX_CONF_DIR", &dir)
            // An empty list: no user file at all (the XDG ones included).
            .env("NIX_USER_CONF_FILES", "")
            .env_remove("NIX_CONFIG")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_CONFIG_DIRS")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    })
}

/// One setting's value in `nix config show` output.
fn shown_value(shown: &str, key: &str) -> Option<String> {
    shown.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// `builders` as the nix-daemon reads it must name builderd's machines file: nix-darwin writes
/// `builders =` (empty) unless `nix.distributedBuilds` is on, and then the machines file is
/// never read.
pub(super) fn check_builders(ctx: &Ctx) -> Vec<Finding> {
    if ctx.limited().is_some() {
        return vec![];
    }
    let cfg = ctx.cfg;
    let Some(shown) = nix_shown(cfg) else {
        // No nix to ask: nix-uri says so.
        return vec![];
    };
    let machines = &cfg.registration.machines_file;
    let want = format!("@{}", machines.display());
    let value = shown_value(&shown, "builders").unwrap_or_default();
    if value.split([';', '\n']).any(|b| b.trim() == want) {
        return vec![Finding::pass(
            "builders",
            format!("Nix reads {} (builders = {value})", machines.display()),
        )];
    }
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let set_at = nix_conf::effective(&cfg.registration.nix_conf, "builders", &read)
        .map(|s| format!(" ({}:{} sets it)", s.file.display(), s.line))
        .unwrap_or_default();
    let nix_darwin = matches!(
        resolve_target(&cfg.registration.nix_conf),
        Target::NixDarwin
    );
    let what = if value.is_empty() {
        format!(
            "builders is empty{set_at}: Nix ignores {}",
            machines.display()
        )
    } else {
        format!(
            "builders = {value}{set_at} does not name {}: Nix ignores it",
            machines.display()
        )
    };
    vec![Finding::fail(
        "builders",
        what,
        builders_fix(nix_darwin, &want, &cfg.registration.nix_conf),
    )]
}

/// What to do when `builders` leaves the machines file out.
fn builders_fix(nix_darwin: bool, want: &str, nix_conf: &Path) -> String {
    if nix_darwin {
        "in your nix-darwin configuration set `nix.distributedBuilds = true;` (nix-darwin then writes `builders = @/etc/nix/machines`), run `darwin-rebuild switch`, then `builderctl up`".to_string()
    } else {
        format!(
            "in {} remove the `builders` line (its default reads the machines file) or set `builders = {want}`, then restart the nix-daemon",
            nix_conf.display()
        )
    }
}

fn substitute_verdict(ctx: &Ctx, shown: Option<String>) -> Vec<Finding> {
    let cfg = ctx.cfg;
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let file_value = nix_conf::effective(
        &cfg.registration.nix_conf,
        "builders-use-substitutes",
        &read,
    );
    let value = shown
        .as_ref()
        .and_then(|text| shown_value(text, "builders-use-substitutes"));
    // What Nix shows; without a nix binary, what the files say (builderd's own block included).
    let effective = value.or_else(|| {
        let text = read(&cfg.registration.nix_conf).unwrap_or_default();
        block::body(&text, &cfg.container_name)
            .filter(|b| b.iter().any(|l| l == "builders-use-substitutes = true"))
            .map(|_| "true".to_string())
            .or(file_value.as_ref().map(|s| s.value.clone()))
    });
    let how = if shown.is_some() {
        "as the nix-daemon reads it"
    } else {
        "in the files"
    };
    vec![match effective.as_deref() {
        Some("true") => Finding::pass(
            "substitute",
            format!("builders-use-substitutes = true ({how})"),
        ),
        // Unset while down: `up` sets it, nothing is wrong.
        _ if ctx.down() && file_value.is_none() => Finding::warn(
            "substitute",
            "builders-use-substitutes is unset (the builder is down)",
            "`builderctl up` sets it",
        ),
        other => {
            let where_ = file_value
                .as_ref()
                .filter(|s| s.value != "true")
                .map(|s| format!(" ({}:{} sets it)", s.file.display(), s.line))
                .unwrap_or_default();
            Finding::fail(
                "substitute",
                format!(
                    "builders-use-substitutes is {}{where_} ({how})",
                    match (other, &file_value) {
                        (Some(v), Some(_)) => v,
                        _ => "false (unset)",
                    }
                ),
                format!(
                    "set `builders-use-substitutes = true` in {} (builderd leaves a value you wrote), then restart the nix-daemon",
                    cfg.registration.nix_conf.display()
                ),
            )
        }
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builders_fix_says_what_nix_darwin_needs() {
        let f = builders_fix(true, "@/etc/nix/machines", Path::new("/etc/nix/nix.conf"));
        assert!(f.contains("nix.distributedBuilds = true;"), "{f}");
        assert!(f.contains("darwin-rebuild switch"), "{f}");
        let f = builders_fix(false, "@/etc/nix/machines", Path::new("/etc/nix/nix.conf"));
        assert!(f.contains("builders = @/etc/nix/machines"), "{f}");
    }
}
