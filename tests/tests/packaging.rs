//! The Homebrew formula and the Nix flake, checked as far as a Linux machine without nixpkgs and
//! without Homebrew can: every .nix file parses; the nix-darwin module, evaluated for real with
//! a small stand-in for nixpkgs' `lib` (tests/nix/eval-darwin-module.nix), declares exactly the
//! config file's keys with its defaults, writes a config builderd accepts, and runs the daemon
//! as `builderctl install` does; the formula is valid Ruby and its service block, loaded with a
//! stand-in for Homebrew's DSL (tests/nix/formula-service.rb), runs what
//! `builderctl install --user --print` runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use builderd::config::{Config, ROOT_PATH, app_dirs_for, system_dir_for};
use builderd_tests::bin_dir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let name = e.file_name();
        if p.is_dir() && !matches!(name.to_str(), Some("target" | ".git" | "fuzz")) {
            nix_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "nix") {
            out.push(p);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    let mut files = Vec::new();
    nix_files(&repo(), &mut files);
    for want in [
        "flake.nix",
        "nix/package.nix",
        "nix/darwin-module.nix",
        "nix/options.nix",
    ] {
        assert!(files.contains(&repo().join(want)), "{want} is missing");
    }
    for f in files {
        run(Command::new("nix-instantiate").arg("--parse").arg(&f));
    }
}

fn module() -> serde_json::Value {
    let out = run(Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .arg(repo().join("tests/nix/eval-darwin-module.nix")));
    serde_json::from_str(&out).expect("JSON")
}

/// Keys whose default is the user's own (a path in their home): the module leaves them out.
const PER_USER: [&str; 6] = [
    "public_key",
    "private_key",
    "state_dir",
    "socket",
    "registration.known_hosts",
    "registration.ssh_config",
];

fn compare(rust: &serde_json::Value, nix: &serde_json::Value, at: &str, bad: &mut Vec<String>) {
    let (Some(r), Some(n)) = (rust.as_object(), nix.as_object()) else {
        let per_user = PER_USER.contains(&at) && nix.is_null();
        if rust != nix && !per_user {
            bad.push(format!("{at}: config.rs {rust}, the module {nix}"));
        }
        return;
    };
    let keys: std::collections::BTreeSet<&String> = r.keys().chain(n.keys()).collect();
    for k in keys {
        let key = if at.is_empty() {
            k.clone()
        } else {
            format!("{at}.{k}")
        };
        match (r.get(k), n.get(k)) {
            (Some(a), Some(b)) => compare(a, b, &key, bad),
            (Some(_), None) => bad.push(format!("{key}: a config key with no module option")),
            (None, _) => bad.push(format!("{key}: a module option that is no config key")),
        }
    }
}

#[test]
fn the_module_s_options_are_the_config_file_s_keys_and_defaults() {
    let m = module();
    let rust = serde_json::to_value(Config::default()).unwrap();
    let mut bad = Vec::new();
    compare(&rust, &m["settings"], "", &mut bad);
    assert!(
        bad.is_empty(),
        "the module and daemon/src/config.rs differ:\n{}",
        bad.join("\n")
    );
}

/// `builderctl install --print` (or `--user --print`) for a user whose home is `home`, on this
/// machine: the program, its arguments and its environment, from the unit's lines.
fn install_print(home: &Path, user: bool) -> (String, Vec<String>, Vec<(String, String)>) {
    let mut c = Command::new(bin_dir().join("builderctl"));
    c.env_clear()
        .env("HOME", home)
        .env("PATH", "/usr/bin:/bin")
        .env("SUDO_UID", "501")
        .args(["install", "--print"]);
    if user {
        c.arg("--user");
    }
    let out = run(&mut c);
    let exec = out
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut words = exec.split("\" ").map(|w| w.trim_matches('"').to_string());
    let mut argv: Vec<String> = Vec::new();
    for w in words.by_ref() {
        argv.extend(w.splitn(2, " \"").map(|s| s.trim_matches('"').to_string()));
    }
    let env = out
        .lines()
        .filter_map(|l| l.strip_prefix("Environment=\""))
        .filter_map(|l| l.trim_end_matches('"').split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (argv[0].clone(), argv[1..].to_vec(), env)
}

fn basename(p: &str) -> &str {
    Path::new(p).file_name().unwrap().to_str().unwrap()
}

#[test]
fn the_module_runs_the_daemon_as_install_does_and_writes_a_config_builderd_reads() {
    let m = module();
    let svc = &m["service"];
    let argv: Vec<&str> = svc["ProgramArguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let home = tempfile::tempdir().unwrap();
    let (program, args, env) = install_print(home.path(), false);
    // The same program with the same arguments: the package's builderd, --config FILE.
    assert_eq!(basename(argv[0]), basename(&program));
    assert_eq!(argv.len(), 1 + args.len());
    assert_eq!(argv[1], args[0]);
    // The same label, logs and environment (DOCKER_HOST only when set).
    assert_eq!(svc["Label"], builderd_launchd::LABEL);
    let logs = system_dir_for(true).join("logs");
    assert_eq!(
        svc["StandardOutPath"],
        logs.join("builderd.out.log").display().to_string()
    );
    assert_eq!(
        svc["StandardErrorPath"],
        logs.join("builderd.err.log").display().to_string()
    );
    let mut keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort();
    let mut module_keys: Vec<&str> = svc["EnvironmentVariables"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    module_keys.sort();
    assert_eq!(module_keys, keys);
    assert_eq!(svc["EnvironmentVariables"]["PATH"], ROOT_PATH);
    assert_eq!(svc["EnvironmentVariables"]["BUILDERD_OWNER_UID"], "501");
    for k in ["KeepAlive", "RunAtLoad"] {
        assert_eq!(svc[k], true, "{k}");
    }
    // The config file it writes (the stand-in `formats.toml` shows what it would hold): only
    // the keys set, and builderd reads it.
    let (_, written) = argv[2]
        .split_once('#')
        .expect("the stand-in's file#content");
    let text = toml::to_string(&serde_json::from_str::<toml::Value>(written).unwrap()).unwrap();
    assert!(!written.contains("null"), "{written}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, &text).unwrap();
    let cfg = Config::load_from(Some(&file)).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(cfg.port, 2300);
    // nix.conf is nix-darwin's: the module sets what builderd would have written there, and
    // turns on distributed builds, without which `builders =` is empty.
    assert_eq!(m["nix"]["distributedBuilds"], true);
    assert_eq!(m["nix"]["settings"]["builders-use-substitutes"], true);
    assert_eq!(m["nix"]["settings"]["build-poll-interval"], 1);
}

#[test]
fn the_formula_is_ruby_and_its_service_runs_what_install_user_runs() {
    let formula = repo().join("packaging/homebrew/builderd.rb");
    let ok = run(Command::new("ruby").arg("-c").arg(&formula));
    assert!(ok.contains("Syntax OK"), "{ok}");
    let home = tempfile::tempdir().unwrap();
    let out = run(Command::new("ruby")
        .env("HOME", home.path())
        .arg(repo().join("tests/nix/formula-service.rb"))
        .arg(&formula));
    let svc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let run_argv: Vec<&str> = svc["run"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let (program, args, env) = install_print(home.path(), true);
    // The same program with the same arguments; the config is the user's default on a Mac,
    // as builderd finds it there (this machine prints its own platform's).
    assert_eq!(run_argv[0], "/opt/homebrew/opt/builderd/bin/builderd");
    assert_eq!(basename(run_argv[0]), basename(&program));
    assert_eq!(run_argv.len(), 1 + args.len());
    assert_eq!(run_argv[1], args[0]);
    let (mac_config, mac_data) = app_dirs_for(home.path(), true);
    let (linux_config, linux_data) = app_dirs_for(home.path(), false);
    assert_eq!(
        run_argv[2],
        mac_config.join("config.toml").display().to_string()
    );
    assert_eq!(
        args[1],
        linux_config.join("config.toml").display().to_string()
    );
    // The same environment's names, HOME the user's.
    let mut keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort();
    let formula_env = svc["environment_variables"].as_object().unwrap();
    let mut formula_keys: Vec<&str> = formula_env.keys().map(String::as_str).collect();
    formula_keys.sort();
    assert_eq!(formula_keys, keys);
    assert_eq!(formula_env["HOME"], home.path().display().to_string());
    // Logs where `install --user` puts them: the state dir's logs/.
    assert_eq!(
        svc["log_path"],
        mac_data.join("logs/builderd.out.log").display().to_string()
    );
    assert!(linux_data.ends_with("builderd"));
    assert_eq!(svc["keep_alive"], true);
    assert_eq!(svc["run_at_load"], true);
}
