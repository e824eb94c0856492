//! What a damaged state file, a socket path too long for the OS and a daemon that dies mid-`up`
//! do: each is told as it is, and none of them costs the builder.

use std::time::Duration;

use builderd_tests::{Env, skip_docker};

#[test]
fn a_damaged_state_file_never_removes_the_builder() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    env.up();
    let id = env.status()["container"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    for bad in ["", "{\"desired\": \"u", "\u{0}garbage"] {
        env.kill_daemon();
        std::fs::write(env.path("state/state.json"), bad).unwrap();
        env.start_daemon();
        let st = env.wait_status(Duration::from_secs(60), "the builder back up", |s| {
            s["state"] == "up"
        });
        assert_eq!(st["container"]["id"], id.as_str(), "the same container");
        assert_eq!(st["desired"], "up");
        let problem = st["state_file_problem"].as_str().unwrap();
        assert!(
            problem.contains("state.json could not be read"),
            "{problem}"
        );
        assert!(problem.contains("kept as"), "{problem}");
        let kept: Vec<_> = std::fs::read_dir(env.path("state"))
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("state.json.corrupt-")
            })
            .collect();
        assert!(
            kept.iter()
                .any(|e| std::fs::read_to_string(e.path()).unwrap() == bad),
            "{bad:?} was not kept"
        );
        for k in kept {
            std::fs::remove_file(k.path()).unwrap();
        }
        assert!(env.daemon_log().contains("could not be read"));
        let human = env.ctl_ok(&["status"]);
        assert!(human.contains("state file"), "{human}");
        assert!(
            std::fs::read_to_string(env.path("etc/nix/machines"))
                .unwrap()
                .contains(&env.name)
        );
    }
    env.ctl_ok(&["down"]);
}
