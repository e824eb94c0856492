//! A substituter the builder cannot reach: builds go on without it instead of waiting on it in
//! every nix-daemon session, and status and doctor say so.

use std::process::{Command, Stdio};
use std::time::Duration;

use builderd_tests::{Env, skip_docker, unshared_sshopts};

/// A name that never resolves (RFC 2606).
const GONE: &str = "http://cache.builderd.invalid/";

#[test]
fn an_unreachable_cache_is_left_out_and_reported() {
    if skip_docker() {
        return;
    }
    // Beside it, a `file://` cache that is there.
    let env = Env::new(&format!(
        "[builder]\nsubstituters = \"{GONE} file:///tmp\"\n"
    ));
    env.up();
    let st = env.wait_status(
        Duration::from_secs(60),
        "the unreachable cache in status",
        |s| s["builder"]["unreachable_substituters"] == serde_json::json!([GONE]),
    );
    assert_eq!(st["healthy"], true, "{st:#}");

    // The builder's Nix uses the cache that answers, and only that one.
    let o = env.docker(&["exec", &env.name, "nix", "config", "show", "substituters"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "file:///tmp",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // A build through the machines file, with builders-use-substitutes as builderd registers
    // it: the builder does not try the unreachable cache (Nix would warn of each retry).
    let drv = env.path("caches.nix");
    std::fs::write(
        &drv,
        "{ nonce }: derivation { name = \"caches\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; inherit nonce; args = [ \"-c\" \"echo $nonce > $out\" ]; }\n",
    )
    .unwrap();
    let o = Command::new("nix-build")
        .arg(&drv)
        .args([
            "--argstr",
            "nonce",
            &env.name,
            "--max-jobs",
            "0",
            "--no-out-link",
        ])
        .arg("--builders")
        .arg(format!("@{}", env.path("etc/nix/machines").display()))
        .args(builderd_tests::CLIENT_OPTIONS)
        .args(["--option", "builders-use-substitutes", "true", "-v"])
        .env(
            "NIX_SSHOPTS",
            unshared_sshopts(&env.path("root/.ssh/config")),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        !err.contains("cache.builderd.invalid"),
        "the builder tried the unreachable cache: {err}"
    );

    // status and doctor name it.
    let text = env.ctl_ok(&["status"]);
    assert!(text.contains(&format!("unreachable: {GONE}")), "{text}");
    let doc = String::from_utf8_lossy(&env.doctor(&[]).stdout).into_owned();
    let line = doc
        .lines()
        .find(|l| l.contains("caches"))
        .unwrap_or_else(|| panic!("no caches check: {doc}"));
    assert!(line.contains("WARN") && line.contains(GONE), "{doc}");
}
