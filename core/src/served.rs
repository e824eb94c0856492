//! What a root builderd serving another user (`BUILDERD_OWNER_UID`) takes from whom.
//!
//! The config of such a service is root's copy of the user's own, so its values are the
//! user's choice. What only the administrator may decide is therefore never read from it: it
//! comes from the service's environment, which `sudo builderctl install` writes into the
//! systemd unit or the launchd plist, files only root can change.

/// Set to `1` by `sudo builderctl install --trust-user-with-root`: the administrator accepts
/// that, on Linux, the served user's root login into a builder with Nix's sandbox privileges
/// makes them root on this host.
pub const TRUST_USER_WITH_ROOT: &str = "BUILDERD_TRUST_USER_WITH_ROOT";

/// Set to `1` by `sudo builderctl install --all-users`: every user's builds may go to the
/// served user's builder (the system-wide machines file and nix.conf list it).
pub const ALL_USERS: &str = "BUILDERD_ALL_USERS";

/// Whether the service's environment carries the administrator's flag `var`.
pub fn flag(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// The user database's entry for `uid`, when it has one.
pub fn account(uid: u32) -> Option<nix::unistd::User> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
}

/// The served user's login name, for messages (their uid when the user database has none).
pub fn user_name(uid: u32) -> String {
    account(uid)
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid {uid}"))
}
