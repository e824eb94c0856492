//! The one builder a root service on Linux refuses unless the administrator said so.
//!
//! The served user logs into the builder as root. With Nix's sandbox privileges
//! (`CAP_SYS_ADMIN`, seccomp and AppArmor unconfined, an unmasked /proc) or `--privileged`, on
//! the host's own engine and without a user namespace, that root is the host's root: it can
//! write `/proc/sys/kernel/core_pattern`, remount /sys, reach cgroup release agents. None of it
//! can be narrowed away (Nix's sandbox mounts a fresh /proc, which the masks forbid), so such a
//! builder is run only when `sudo builderctl install --trust-user-with-root` recorded the
//! administrator's consent in the service's environment. On macOS the engine is Docker
//! Desktop's VM, whose root is not the Mac's, and the served user is the Mac's admin.

use builderd_docker::base::HostOs;

use crate::docker::Privileges;

/// Why the builder may not run, or `None` when it may. `served` is the user a root service
/// serves; `trusted` whether the administrator gave the flag at install.
pub fn refusal(
    os: HostOs,
    served: Option<u32>,
    privileges: &Privileges,
    trusted: bool,
) -> Option<String> {
    let uid = served?;
    if os != HostOs::Linux || trusted || *privileges == Privileges::Default {
        return None;
    }
    let user = crate::served::user_name(uid);
    let what = match privileges {
        Privileges::Privileged => "`privileged = true`",
        _ => "Nix's sandbox (CAP_SYS_ADMIN, seccomp and AppArmor unconfined, /proc unmasked)",
    };
    Some(format!(
        "refusing to run the builder: {user} logs into it as root, and with {what} on this host's Docker engine that is root on this host; serving {user} this way makes them root-equivalent here, as membership of the docker group does. Either run builderd as {user} (`sudo builderctl uninstall`, then `builderctl install --user` as {user}, which registers the builder in {user}'s own files), or confirm that {user} may be root here with `sudo builderctl install --trust-user-with-root`"
    ))
}

/// [`refusal`] for this host and process.
pub fn refusal_here(privileges: &Privileges) -> Option<String> {
    refusal(
        HostOs::current(),
        crate::config::served_user(),
        privileges,
        crate::served::flag(crate::served::TRUST_USER_WITH_ROOT),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_refuses_the_sandbox_and_privileged_for_a_served_user_without_the_flag() {
        for p in [Privileges::Sandbox, Privileges::Privileged] {
            let why = refusal(HostOs::Linux, Some(4242), &p, false).unwrap();
            assert!(why.contains("root-equivalent"), "{why}");
            assert!(why.contains("--trust-user-with-root"), "{why}");
            assert!(why.contains("builderctl install --user"), "{why}");
            assert_eq!(refusal(HostOs::Linux, Some(4242), &p, true), None);
        }
        // Docker's defaults give the user nothing of the host's.
        assert_eq!(
            refusal(HostOs::Linux, Some(4242), &Privileges::Default, false),
            None
        );
        // Root serving root, or a user's own daemon: nobody gains anything.
        assert_eq!(
            refusal(HostOs::Linux, None, &Privileges::Sandbox, false),
            None
        );
    }

    #[test]
    fn macos_runs_the_sandbox_for_a_served_user() {
        for p in [Privileges::Sandbox, Privileges::Privileged] {
            assert_eq!(refusal(HostOs::MacOs, Some(501), &p, false), None);
        }
    }
}
