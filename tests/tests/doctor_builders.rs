//! doctor's `builders` check: a `builders =` that leaves builderd's machines file out (what
//! nix-darwin writes unless distributed builds are on) is found, with the line that sets it.

use builderd_tests::{Env, skip_docker};

fn builders_line(env: &Env) -> String {
    let o = env.ctl(&["doctor"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut lines = out.lines().skip_while(|l| !l.contains(" builders "));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("no builders check:\n{out}"));
    let fix = lines.next().unwrap_or_default();
    format!("{first}\n{fix}")
}

#[test]
fn an_empty_builders_setting_is_a_failure_that_names_its_line() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    env.up();
    let l = builders_line(&env);
    assert!(l.starts_with("PASS"), "{l}");
    let conf = env.path("etc/nix/nix.conf");
    let before = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, format!("{before}builders =\n")).unwrap();
    let l = builders_line(&env);
    assert!(l.starts_with("FAIL"), "{l}");
    assert!(l.contains("builders is empty"), "{l}");
    assert!(
        l.contains(&format!("{}:", conf.display())),
        "names the file and line: {l}"
    );
    assert!(l.contains("remove the `builders` line"), "{l}");
    // Another list without the machines file is no better.
    std::fs::write(
        &conf,
        format!("{before}builders = ssh-ng://elsewhere x86_64-linux\n"),
    )
    .unwrap();
    let l = builders_line(&env);
    assert!(l.starts_with("FAIL") && l.contains("does not name"), "{l}");
    std::fs::write(&conf, before).unwrap();
    assert!(builders_line(&env).starts_with("PASS"));
}
