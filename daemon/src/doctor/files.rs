//! doctor's file checks: nix.conf and the machines file are files builderd can keep true.

use std::path::Path;

use builderd_core::doctor::Finding;

use super::Ctx;
use crate::registration::{Target, nix_conf, resolve_target};

pub(super) fn check_owners(ctx: &Ctx) -> Vec<Finding> {
    let reg = &ctx.cfg.registration;
    vec![
        owner_check(ctx, "nix.conf", &reg.nix_conf),
        owner_check(ctx, "machines", &reg.machines_file),
    ]
}

fn owner_check(ctx: &Ctx, name: &'static str, path: &Path) -> Finding {
    // A link is judged by where it leads (nix-darwin's may dangle outside a Mac); anything
    // else must be a plain file that exists.
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return if ctx.down() {
                    Finding::warn(
                        name,
                        format!("{} does not exist (the builder is down)", path.display()),
                        "`builderctl up` creates it",
                    )
                } else {
                    Finding::fail(
                        name,
                        format!("{} does not exist", path.display()),
                        "run `builderctl up`; see `builderctl status` for why it could not be written",
                    )
                };
            }
            Err(e) => {
                return Finding::fail(
                    name,
                    format!("{} cannot be read: {e}", path.display()),
                    "run doctor as the user (or root) that runs builderd",
                );
            }
            Ok(m) if !m.is_file() => {
                let what = if m.is_dir() {
                    "is a directory, not a file"
                } else {
                    "is not a plain file"
                };
                return Finding::fail(
                    name,
                    format!("{} {what}", path.display()),
                    format!(
                        "move {} aside, then `builderctl up` writes the file",
                        path.display()
                    ),
                );
            }
            Ok(_) => {}
        }
    }
    match resolve_target(path) {
        Target::NixDarwin => {
            let detail = ctx.status.and_then(|s| {
                s.registrations
                    .iter()
                    .find(|r| r.path == path.display().to_string())
                    .and_then(|r| r.detail.clone())
            });
            // Already said in the nix-darwin configuration? The generated file tells.
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let done = match name {
                "nix.conf" => text
                    .lines()
                    .any(|l| l.replace(' ', "") == "builders-use-substitutes=true"),
                _ => detail.as_deref().is_some_and(|d| {
                    d.lines()
                        .find_map(|l| l.trim().strip_prefix("publicHostKey = \""))
                        .and_then(|k| k.strip_suffix("\";"))
                        .is_some_and(|k| text.contains(k))
                }),
            };
            if done {
                Finding::pass(
                    name,
                    format!(
                        "{} belongs to nix-darwin, and says what builderd needs",
                        path.display()
                    ),
                )
            } else {
                Finding::fail(
                    name,
                    format!(
                        "{} belongs to nix-darwin (a link into its store); builderd does not write it",
                        path.display()
                    ),
                    detail.unwrap_or_else(|| {
                        "see `builderctl status --json` for the nix-darwin lines".into()
                    }),
                )
            }
        }
        Target::Manual(why) => Finding::warn(
            name,
            why,
            "make it a plain file, or add builderd's lines by hand (see `builderctl status`)",
        ),
        Target::Write(real) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if name == "nix.conf" && nix_conf::determinate_custom_conf(path, &text).is_some() {
                Finding::pass(
                    name,
                    format!(
                        "{} is Determinate Nix's; builderd writes nix.custom.conf",
                        path.display()
                    ),
                )
            } else if real != path {
                Finding::pass(
                    name,
                    format!("{} (a link to {})", path.display(), real.display()),
                )
            } else {
                Finding::pass(name, format!("{} is a plain file", path.display()))
            }
        }
    }
}
