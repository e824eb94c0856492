//! doctor's remote checks: each remote builder as the daemon last saw it, against the machines
//! file.

use builderd_core::doctor::Finding;
use builderd_core::protocol::RemoteStatus;

use super::Ctx;
use crate::registration::block;

/// Each remote builder: what the daemon last saw, and whether the machines file says the same.
pub(super) fn check_remotes(ctx: &Ctx) -> Vec<Finding> {
    let Some(st) = ctx.status else {
        return Vec::new();
    };
    let machines = std::fs::read_to_string(&ctx.cfg.registration.machines_file).unwrap_or_default();
    st.remotes
        .iter()
        .map(|r| {
            let in_file = block::body(&machines, &crate::registration::remote::block_name(ctx.cfg, &r.name)).is_some_and(|b| !b.is_empty());
            if r.listed != in_file && st.desired == "up" {
                return Finding::fail(
                    "remote",
                    format!(
                        "{} ({}:{}): the daemon says it is {}listed, but {} {} its line",
                        r.name,
                        r.address,
                        r.port,
                        if r.listed { "" } else { "not " },
                        ctx.cfg.registration.machines_file.display(),
                        if in_file { "has" } else { "lacks" }
                    ),
                    "run `builderctl check`; if it stays so, `builderctl logs` says why the file could not be written",
                );
            }
            remote_check(r)
        })
        .collect()
}

/// One remote builder, as the daemon last saw it.
fn remote_check(r: &RemoteStatus) -> Finding {
    let at = format!("{} ({}:{})", r.name, r.address, r.port);
    let why = r
        .reason
        .as_deref()
        .and_then(|r| r.lines().next())
        .unwrap_or("");
    match r.state.as_str() {
        "up" if r.listed => Finding::pass(
            "remote",
            format!(
                "{at} healthy and listed, host key {}",
                r.host_key_fingerprint.as_deref().unwrap_or("?")
            ),
        ),
        "pending-trust" => Finding::warn(
            "remote",
            format!(
                "{at} presented host key {}, which nobody confirmed: it is not listed",
                r.pending_host_key.as_deref().unwrap_or("?")
            ),
            format!(
                "compare it with the host's own (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` there), then `builderctl trust {} {}`",
                r.name,
                r.pending_host_key.as_deref().unwrap_or("")
            ),
        ),
        "checking" | "down" => Finding::warn(
            "remote",
            format!("{at} not checked yet ({})", r.state),
            "run `builderctl up`, then `builderctl check`",
        ),
        "host-key-mismatch" => Finding::fail(
            "remote",
            format!("{at}: {why}"),
            "find out why the host's key changed; if it is the host's new key, give it as `host_key` in the config",
        ),
        _ => Finding::fail(
            "remote",
            format!(
                "{at} is {}{}: {why}",
                r.state,
                if r.listed {
                    " (still listed)"
                } else {
                    ", not listed"
                }
            ),
            format!(
                "check that {}:{} answers SSH for its `user` with its `identity`; it is listed again at the first healthy check",
                r.address, r.port
            ),
        ),
    }
}
