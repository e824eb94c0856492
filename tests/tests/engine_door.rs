//! The docker crate is the one door to the engine: what the daemon and doctor ask of it comes
//! back in its own types, and "not there" is a typed `NotFound`, not a status code to match.
//! Asked of the real engine.

use builderd::docker::{self, DockerError};
use builderd_tests::{Env, local_base, skip_docker};

fn engine(env: &Env) -> (tokio::runtime::Runtime, docker::Engine) {
    let cfg = builderd::config::Config::load(&env.config).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(docker::connect(&docker::resolve_endpoint(&cfg)))
        .unwrap();
    (rt, e)
}

#[test]
fn what_is_not_there_is_not_found_and_what_is_there_is_inspected() {
    if skip_docker() {
        return;
    }
    let env = Env::new("");
    let (rt, e) = engine(&env);
    // Nothing of this name yet: the name is free, and inspecting it is NotFound.
    match rt.block_on(docker::inspect(&e, &env.name)) {
        Err(DockerError::NotFound { .. }) => {}
        other => panic!("a missing container: {other:?}"),
    }
    assert!(
        !rt.block_on(docker::name_taken_by_other(&e, &env.name))
            .unwrap()
    );
    let missing = format!("bdt-missing-{}:none", std::process::id());
    assert!(!rt.block_on(docker::image_exists(&e, &missing)).unwrap());
    assert_eq!(rt.block_on(docker::image_arch(&e, &missing)).unwrap(), None);

    // Builderd's own container: running, its sshd on 127.0.0.1 at the configured port, and
    // the name is not someone else's.
    env.up();
    let c = rt.block_on(docker::inspect(&e, &env.name)).unwrap();
    assert!(c.running, "{c:?}");
    assert_eq!(c.state.as_deref(), Some("running"));
    assert_eq!(c.instance.as_deref(), Some(env.name.as_str()));
    assert_eq!(c.published, Some(("127.0.0.1".to_string(), env.port)));
    assert!(
        !rt.block_on(docker::name_taken_by_other(&e, &env.name))
            .unwrap()
    );
    env.ctl_ok(&["down"]);

    // A container of that name builderd did not make blocks it.
    let o = env.docker(&["create", "--name", &env.name, &local_base(), "true"]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        rt.block_on(docker::name_taken_by_other(&e, &env.name))
            .unwrap()
    );
    let c = rt.block_on(docker::inspect(&e, &env.name)).unwrap();
    assert!(!c.running && c.instance.is_none(), "{c:?}");
}
