//! The client is small: `builderctl` links `builderd-core` and the launchd crate, never the
//! daemon's library, the engine's API client, an SSH library or a file watcher.

use std::process::Command;

#[test]
fn builderctl_links_no_daemon_engine_or_ssh_library() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "builderctl",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tree = String::from_utf8_lossy(&o.stdout);
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split(' ').next()).collect();
    assert!(crates.contains(&"builderd-core"), "{tree}");
    for heavy in [
        "builderd",
        "builderd-docker",
        "bollard",
        "russh",
        "notify",
        "hyper",
    ] {
        assert!(
            !crates.contains(&heavy),
            "builderctl links {heavy}; what needs it belongs to the daemon:\n{tree}"
        );
    }
}
