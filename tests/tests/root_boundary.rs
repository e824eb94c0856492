//! The root boundary: a root builderd serving one user (`BUILDERD_OWNER_UID`), attacked by a
//! real unprivileged account that owns the home and the state dir, as `sudo builderctl install`
//! lays them out. Whatever that user plants, root writes, reads, gives away and runs only what
//! the user could have themselves.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use builderd_tests::{Env, skip_docker};

/// A root-owned file the user may not write: what an attacker wants root to overwrite.
fn victim(env: &Env, name: &str) -> std::path::PathBuf {
    let p = env.path(name);
    std::fs::write(&p, format!("{name}: root's own bytes\n")).unwrap();
    p
}

fn assert_untouched(p: &Path) {
    let m = std::fs::symlink_metadata(p).unwrap();
    let name = p.file_name().unwrap().to_string_lossy();
    assert_eq!(m.uid(), 0, "{} was given away", p.display());
    assert_eq!(
        std::fs::read_to_string(p).unwrap(),
        format!("{name}: root's own bytes\n"),
        "root wrote through a link into {}",
        p.display()
    );
}

#[test]
fn planted_links_never_redirect_root() {
    if skip_docker() {
        return;
    }
    let (env, user) = Env::root_served("");
    let by_pidfile = victim(&env, "victim-pidfile");
    let by_temp = victim(&env, "victim-temp");
    let by_known_hosts = victim(&env, "victim-known-hosts");
    let state = env.path("state");
    // The pid file, before root starts.
    user.sh(&format!(
        "ln -s {} {}/builderd.pid",
        by_pidfile.display(),
        state.display()
    ));
    env.start_root_daemon(user.uid).unwrap();
    assert_untouched(&by_pidfile);
    let pid = std::fs::read_to_string(state.join("builderd.pid")).unwrap();
    let pid = pid.trim();
    assert!(
        !std::fs::symlink_metadata(state.join("builderd.pid"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // The socket is the user's, mode 0600.
    let sock = std::fs::metadata(state.join("builderd.sock")).unwrap();
    assert_eq!((sock.uid(), sock.mode() & 0o777), (user.uid, 0o600));

    // Temp files under the names a writer of state.json, host.pub and known_hosts would use,
    // and the user's known_hosts as a link to a root file.
    std::fs::create_dir_all(state.join("volume")).unwrap();
    user.give(&state.join("volume"));
    let planted = [
        format!("{}/.state.json.builderd-tmp.{pid}", state.display()),
        format!("{}/volume/.host.pub.builderd-tmp.{pid}", state.display()),
        format!(
            "{}/.known_hosts.builderd-tmp.{pid}",
            env.path("home/.ssh").display()
        ),
    ];
    for p in &planted {
        user.sh(&format!("ln -s {} {p}", by_temp.display()));
    }
    user.sh(&format!(
        "ln -s {} {}",
        by_known_hosts.display(),
        env.path("home/.ssh/known_hosts").display()
    ));

    let o = env.ctl_as(&user, &["up"]);
    assert!(
        o.status.success(),
        "up as the user: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        env.daemon_log()
    );
    assert_untouched(&by_pidfile);
    assert_untouched(&by_temp);
    assert_untouched(&by_known_hosts);

    // What the user could write is written, as theirs; what they could not is reported.
    let st = env.status();
    let regs = st["registrations"].as_array().unwrap();
    let kh = regs
        .iter()
        .find(|r| r["path"] == env.path("home/.ssh/known_hosts").display().to_string())
        .unwrap();
    assert_eq!(kh["state"], "failed", "{kh}");
    let root_kh = env.path("root/.ssh/known_hosts");
    assert!(
        std::fs::read_to_string(&root_kh)
            .unwrap()
            .contains("[localhost]")
    );
    assert_eq!(std::fs::metadata(&root_kh).unwrap().uid(), 0);
    let cfg = std::fs::metadata(env.path("home/.ssh/config")).unwrap();
    assert_eq!(cfg.uid(), user.uid, "the user's ssh config is the user's");
    for f in ["state.json", "volume/host.pub"] {
        let m = std::fs::symlink_metadata(state.join(f)).unwrap();
        assert!(m.is_file(), "{f}");
        assert_eq!(m.uid(), user.uid, "{f} is written as the user");
    }
    let o = env.ctl_as(&user, &["down"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_untouched(&by_temp);
    assert_untouched(&by_known_hosts);
}
