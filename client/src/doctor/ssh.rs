//! doctor's checks over ssh: an x86_64 program runs on the builder (through the pinned host
//! key, as this user), and root's own plain `ssh ALIAS` reaches it, as the nix-daemon's does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use builderd_core::config::Config;
use builderd_core::doctor::{Finding, KEY_REFUSED, rosetta_fix};
use builderd_core::probe::{self, Arch};

use super::Ctx;

/// Runs `command` on the builder through the pinned-key ssh command line: the host key is this
/// install's volume key, so an answer comes from this builder's container and no other.
pub(super) fn on_builder(cfg: &Config, command: &str) -> Result<String, String> {
    let host_pub = cfg.host_key_file();
    let kh = crate::service::pinned_known_hosts(cfg, &host_pub)?;
    let mut argv = crate::service::ssh_argv(cfg, &kh, &[command.to_string()]);
    argv.splice(
        1..1,
        ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"].map(String::from),
    );
    let o = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ssh: {e}"))?;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    if o.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{}{}",
            out.trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

pub(super) fn check_x86_64(ctx: &Ctx) -> Vec<Finding> {
    if !ctx.up() {
        return vec![];
    }
    let program = base64::engine::general_purpose::STANDARD.encode(probe::program(Arch::X86_64));
    let cmd = format!(
        "echo {program} | base64 -d > /tmp/builderd-x86-probe && chmod +x /tmp/builderd-x86-probe; /tmp/builderd-x86-probe; echo \"exit=$?\"; rm -f /tmp/builderd-x86-probe"
    );
    vec![match on_builder(ctx.cfg, &cmd) {
        Ok(o) if o.contains(&format!("exit={}", probe::EXIT_CODE)) => {
            let how = ctx
                .status()
                .and_then(|s| s.builder.as_ref())
                .map(|b| b.x86_64.clone())
                .unwrap_or_default();
            Finding::pass(
                "x86_64",
                format!("the builder runs x86_64 programs ({how})"),
            )
        }
        Ok(o) => Finding::fail(
            "x86_64",
            format!(
                "an x86_64 program did not run on the builder ({})",
                o.trim()
            ),
            rosetta_fix(),
        ),
        Err(e) => {
            let fix = if e.contains("Permission denied") {
                KEY_REFUSED
            } else {
                "see `builderctl status` and `builderctl logs`"
            };
            Finding::fail("x86_64", format!("could not run the probe: {e}"), fix)
        }
    }]
}

/// The ssh_config that root's plain `ssh ALIAS` reads (besides the system-wide one).
pub(super) fn root_ssh_config() -> PathBuf {
    builderd_core::config::root_home().join(".ssh/config")
}

/// Whether an ssh_config file has a `Host` line naming `alias`.
pub(super) fn defines_alias(path: &Path, alias: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| {
        t.lines().any(|l| {
            let mut w = l.split_whitespace();
            w.next().is_some_and(|k| k.eq_ignore_ascii_case("host")) && w.any(|h| h == alias)
        })
    })
}

/// The nix-daemon connects as root with root's own ssh: run exactly that, with no shared
/// connection to lean on.
pub(super) fn check_root_ssh(ctx: &Ctx) -> Vec<Finding> {
    if !ctx.up() {
        return vec![];
    }
    let cfg = ctx.cfg;
    let alias = cfg.alias();
    let config = root_ssh_config();
    let as_root = builderd_core::ident::current_euid() == 0;
    let mut cmd = if as_root {
        Command::new("ssh")
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", "ssh"]);
        c
    };
    let o = cmd
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "ControlMaster=no",
            "-o",
            "ControlPath=none",
        ])
        .arg(alias)
        .arg("true")
        .stdin(Stdio::null())
        .output();
    let sudo_fix = "run `sudo builderctl doctor`: root's ssh can only be tried as root";
    let o = match o {
        Ok(o) => o,
        Err(e) if !as_root => {
            return vec![Finding::warn(
                "root-ssh",
                format!("not tried: this is not root, and sudo cannot run ({e})"),
                sudo_fix,
            )];
        }
        Err(e) => {
            return vec![Finding::fail(
                "root-ssh",
                format!("cannot run ssh: {e}"),
                "install OpenSSH's client",
            )];
        }
    };
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.trim().lines().last().unwrap_or("").to_string();
    if o.status.success() {
        return vec![Finding::pass(
            "root-ssh",
            format!(
                "root's own `ssh {alias}` reaches the builder ({})",
                config.display()
            ),
        )];
    }
    if !as_root && (err.contains("password is required") || err.starts_with("sudo:")) {
        return vec![Finding::warn(
            "root-ssh",
            format!("not tried: this is not root, and sudo asks for a password ({last})"),
            sudo_fix,
        )];
    }
    let keep = format!(
        "add {} to `ssh_config` (and root's known_hosts to `known_hosts`) under [registration] in {}, and run builderd as root (`sudo builderctl install`) so that it keeps them true",
        config.display(),
        cfg.file.display()
    );
    vec![if err.contains("Could not resolve hostname") {
        let why = if !config.exists() {
            format!("{} does not exist", config.display())
        } else if !defines_alias(&config, alias) {
            format!("{} has no `Host {alias}`", config.display())
        } else {
            last.clone()
        };
        Finding::fail(
            "root-ssh",
            format!("root's `ssh {alias}` cannot resolve the alias: {why}"),
            keep,
        )
    } else if err.contains("Host key verification failed")
        || err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
    {
        Finding::fail(
            "root-ssh",
            format!("root's `ssh {alias}` does not accept the builder's host key"),
            keep,
        )
    } else if err.contains("Permission denied") {
        Finding::fail("root-ssh", "the builder refused root's key", KEY_REFUSED)
    } else {
        Finding::fail(
            "root-ssh",
            format!("root's `ssh {alias}` cannot reach the builder: {last}"),
            keep,
        )
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alias_is_found_on_a_host_line() {
        let d = std::env::temp_dir().join(format!("builderd-alias-{}", std::process::id()));
        std::fs::write(&d, "Host other nb\n  Port 1\nHost *\n").unwrap();
        assert!(defines_alias(&d, "nb"));
        assert!(!defines_alias(&d, "n"));
        let _ = std::fs::remove_file(&d);
    }
}
