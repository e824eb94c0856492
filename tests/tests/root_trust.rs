//! What only the administrator decides for a root builderd serving another user: whether that
//! user may be root on this host (a builder with Nix's sandbox on the host's engine makes them
//! so on Linux) and whether every user's builds may go to their builder. Both come from the
//! service's environment, written by `sudo builderctl install`, never from the user's config.

use builderd_tests::{Env, skip_docker};

#[test]
fn a_served_user_gets_no_sandboxed_builder_without_the_administrators_flag() {
    if skip_docker() {
        return;
    }
    let (env, user) = Env::root_served("");
    env.start_root_daemon_untrusted(user.uid).unwrap();
    let o = env.ctl_as(&user, &["up"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "up succeeded: {err}");
    for said in [
        "root-equivalent",
        "--trust-user-with-root",
        "builderctl install --user",
    ] {
        assert!(err.contains(said), "{said} missing from: {err}");
    }
    let st = env.status();
    assert_eq!(st["state"], "error", "{st:#}");
    assert!(
        st["reason"]
            .as_str()
            .is_some_and(|r| r.contains("root-equivalent")),
        "{st:#}"
    );
    // Nothing was made with the privileges: no container of this instance at all.
    assert_eq!(env.containers_of_ours(), 0, "{}", env.daemon_log());
}

#[test]
fn install_records_the_grants_in_the_service_and_says_them() {
    let (env, user) = Env::root_served("");
    let uid = user.uid.to_string();
    let unit = |flags: &[&str]| {
        let mut args = vec!["install", "--print"];
        args.extend_from_slice(flags);
        let o = env.ctl_env(&args, &[("SUDO_UID", Some(&uid))]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let plain = unit(&[]);
    assert!(!plain.contains("BUILDERD_TRUST_USER_WITH_ROOT"), "{plain}");
    assert!(!plain.contains("BUILDERD_ALL_USERS"), "{plain}");
    assert!(plain.contains("is not trusted with root"), "{plain}");
    let granted = unit(&["--trust-user-with-root", "--all-users"]);
    assert!(
        granted.contains("Environment=\"BUILDERD_TRUST_USER_WITH_ROOT=1\""),
        "{granted}"
    );
    assert!(
        granted.contains("Environment=\"BUILDERD_ALL_USERS=1\""),
        "{granted}"
    );
    assert!(granted.contains("is trusted with root"), "{granted}");
    // A user's own service grants nothing: it runs as them.
    let o = env.ctl(&["install", "--print", "--user", "--trust-user-with-root"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}
