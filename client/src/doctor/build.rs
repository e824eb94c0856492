//! doctor's build checks: a real build through builderd's machines line alone, as this user's
//! Nix runs it: the sandbox proven from inside, and with `--build-test` one tiny build per
//! system the builder reports.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use builderd_core::config::Config;
use builderd_core::doctor::{Finding, rosetta_fix};
use builderd_core::probe::{self, Arch};

use super::Ctx;
use super::ssh::{defines_alias, on_builder, root_ssh_config};

/// A real build through builderd's machines line alone.
struct Built {
    out: String,
    text: String,
    took: Duration,
}

/// Escapes `s` for a Nix double-quoted string.
fn nix_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                o.push('\\');
                o.push(c);
            }
            '$' => o.push_str("\\$"),
            _ => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Builds a derivation for `system` whose builder is `/bin/sh -c script`, through a machines
/// file holding only builderd's line, with no shared ssh connection; then reads the output back
/// from this builder's store (the pinned host key makes it this container and no other).
fn remote_build(ctx: &Ctx, system: &str, script: &str) -> Result<Built, String> {
    remote_build_with(ctx, system, script, None)
}

/// [`remote_build`] with a program of `system`'s architecture as an input, which the script
/// finds at `$probe` (copied to the builder's store, executable).
fn remote_build_with(
    ctx: &Ctx,
    system: &str,
    script: &str,
    probe: Option<&[u8]>,
) -> Result<Built, String> {
    let cfg = ctx.cfg;
    let line = ctx.machines_line().ok_or_else(|| {
        format!(
            "{} has no builderd line",
            cfg.registration.machines_file.display()
        )
    })?;
    let dir =
        std::env::temp_dir().join(format!("builderd-doctor-{}-{}", std::process::id(), system));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = remote_build_in(ctx, &dir, &line, system, script, probe);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn remote_build_in(
    ctx: &Ctx,
    dir: &Path,
    line: &str,
    system: &str,
    script: &str,
    probe: Option<&[u8]>,
) -> Result<Built, String> {
    let cfg = ctx.cfg;
    let machines = dir.join("machines");
    let probe_attr = match probe {
        Some(bytes) => {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.join("probe");
            std::fs::write(&p, bytes).map_err(|e| e.to_string())?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
            " probe = ./probe;"
        }
        None => "",
    };
    std::fs::write(&machines, format!("{line}\n")).map_err(|e| e.to_string())?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let drv = dir.join("probe.nix");
    std::fs::write(
        &drv,
        format!(
            "derivation {{ name = \"builderd-doctor\"; system = {}; builder = \"/bin/sh\"; nonce = \"{nonce}\";{probe_attr} args = [ \"-c\" {} ]; }}\n",
            nix_str(system),
            nix_str(script)
        ),
    )
    .map_err(|e| e.to_string())?;
    // The file that root's (the nix-daemon's) ssh reads; else one of builderd's that has the
    // alias, for a single-user Nix that runs ssh as this user.
    let alias = cfg.alias();
    let ssh_config = std::iter::once(root_ssh_config())
        .chain(cfg.registration.ssh_config.iter().cloned())
        .find(|p| defines_alias(p, alias));
    let mut sshopts = "-o ControlMaster=no -o ControlPath=none".to_string();
    if let Some(c) = &ssh_config {
        sshopts = format!("-F {} {sshopts}", c.display());
    }
    let mut cmd = Command::new("nix-build");
    cmd.arg(&drv)
        .args(["--no-out-link", "--max-jobs", "0"])
        .arg("--builders")
        .arg(format!("@{}", machines.display()))
        .args(["--option", "substituters", ""])
        .env("NIX_SSHOPTS", sshopts)
        .stdin(Stdio::null());
    // A single-user Nix without build users (no nix-daemon): build as this user.
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    if !groups.lines().any(|l| l.starts_with("nixbld:"))
        && !Path::new("/nix/var/nix/daemon-socket/socket").exists()
    {
        cmd.args(["--option", "build-users-group", ""]);
    }
    let start = Instant::now();
    let o = cmd
        .output()
        .map_err(|e| format!("cannot run nix-build: {e}"))?;
    let took = start.elapsed();
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        // Nix's own error, not the progress lines before it.
        let why = err
            .lines()
            .find(|l| l.trim_start().starts_with("error"))
            .or_else(|| err.trim().lines().last())
            .unwrap_or("")
            .trim()
            .to_string();
        return Err(format!("the build failed: {why}"));
    }
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    if !out.starts_with("/nix/store/") {
        return Err(format!("nix-build printed no store path: {out:?}"));
    }
    let text = on_builder(cfg, &format!("cat '{out}'"))
        .map_err(|e| format!("{out} is not in this builder's store: {e}"))?;
    Ok(Built { out, text, took })
}

fn sandbox_fix(cfg: &Config) -> String {
    if cfg.builder.sandbox {
        "the container lacks what Nix's sandbox needs: see `builderctl logs --container`, and the README's section on privileges".to_string()
    } else {
        format!(
            "set `sandbox = true` under [builder] in {}, then `builderctl up`",
            cfg.file.display()
        )
    }
}

/// Proves the sandbox with a build that looks at itself: pid 1 in its own namespace, no /usr,
/// building in /build. What it wrote decides, not what Nix printed.
pub(super) fn check_sandbox(ctx: &Ctx) -> Vec<Finding> {
    if !ctx.up() {
        return vec![];
    }
    let system = ctx
        .status()
        .and_then(|s| s.builder.as_ref())
        .and_then(|b| b.systems.first().cloned())
        .unwrap_or_else(|| "x86_64-linux".to_string());
    // Builds run with PATH unset: shell builtins only.
    let script = "if [ \"$$\" = 1 ]; then p=pid1; else p=notpid1; fi; \
                  if [ -e /usr ]; then u=usr-present; else u=usr-absent; fi; \
                  echo \"$p $u dir=$PWD\" > \"$out\"";
    vec![match remote_build(ctx, &system, script) {
        Ok(b) => {
            let seen = b.text.trim();
            if seen == "pid1 usr-absent dir=/build" {
                Finding::pass(
                    "sandbox",
                    "a build in the builder ran sandboxed (as process 1, without /usr, in /build)",
                )
            } else {
                Finding::fail(
                    "sandbox",
                    format!("a build in the builder ran without the sandbox (it saw: {seen})"),
                    sandbox_fix(ctx.cfg),
                )
            }
        }
        Err(e) if e.contains("sandbox") || e.contains("namespaces") => Finding::fail(
            "sandbox",
            format!("the sandbox probe did not build: {e}"),
            sandbox_fix(ctx.cfg),
        ),
        Err(e) => Finding::fail(
            "sandbox",
            format!("not proven: the probe could not build through builderd's line: {e}"),
            "see the checks above (keys, root-ssh, nix-uri); `builderctl doctor --build-test` shows the build alone",
        ),
    }]
}

/// With `--build-test`: a tiny build for every system the builder reports.
pub(super) fn check_build(ctx: &Ctx) -> Vec<Finding> {
    if !ctx.build_test {
        return vec![];
    }
    let systems = ctx
        .status()
        .and_then(|s| s.builder.as_ref())
        .map(|b| b.systems.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| vec!["x86_64-linux".to_string()]);
    // How the builder said it runs each system: native, rosetta, qemu.
    let how = |system: &str| {
        ctx.status()
            .and_then(|s| s.builder.as_ref())
            .and_then(|b| b.platforms.iter().find(|p| p.system == system))
            .map(|p| p.how.clone())
    };
    let mut seen = HashMap::new();
    systems
        .iter()
        .filter(|s| seen.insert(s.to_string(), ()).is_none())
        .map(|system| {
            let token = format!("builderd-doctor-{system}");
            // A program of the system's own architecture runs inside the sandbox: for a foreign
            // system that is Rosetta or qemu at work where builds run, not only in the container.
            let arch = Arch::ALL
                .into_iter()
                .find(|a| a.nix_system() == *system);
            let probe = arch.map(probe::program);
            let script = if probe.is_some() {
                format!("\"$probe\"; echo {token} $? > \"$out\"")
            } else {
                format!("echo {token} > \"$out\"")
            };
            let wanted = if probe.is_some() {
                format!("{token} {}", probe::EXIT_CODE)
            } else {
                token.clone()
            };
            match remote_build_with(ctx, system, &script, probe.as_deref()) {
                Ok(b) if b.text.trim() != wanted && b.text.starts_with(&token) => Finding::fail(
                    "build",
                    format!(
                        "a {system} build ran, but a {system} program inside it did not (it wrote {:?}; 126 means the kernel would not run it)",
                        b.text.trim()
                    ),
                    match arch {
                        Some(Arch::X86_64) => rosetta_fix(),
                        _ => "register an emulator for it with the F (fix binary) flag (qemu-user-static), then `builderctl down && builderctl up`".to_string(),
                    },
                ),
                Ok(b) if b.text.trim() == wanted => Finding::pass(
                    "build",
                    format!(
                        "a tiny {system} build{} ran in this builder in {:.2} s",
                        how(system).map(|h| format!(" ({h})")).unwrap_or_default(),
                        b.took.as_secs_f64()
                    ),
                ),
                Ok(b) => Finding::fail(
                    "build",
                    format!(
                        "{} in this builder's store holds {:?}, not what the build wrote",
                        b.out,
                        b.text.trim()
                    ),
                    "see `builderctl logs`",
                ),
                Err(e) => Finding::fail(
                    "build",
                    format!("{system}: {e}"),
                    "see the checks above; `builderctl logs` has the daemon's side",
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_strings_are_escaped() {
        assert_eq!(nix_str("a \"$b\" \\"), "\"a \\\"\\$b\\\" \\\\\"");
    }
}
