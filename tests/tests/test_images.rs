//! The suites clean up after themselves on the engine: an image built from a test's own context
//! is removed with the test's environment, so that a developer's engine does not collect one
//! per run. Images are counted by the run's label (`RUN_LABEL`), never by name or number alone:
//! other runs on the same engine make and remove theirs meanwhile.

use builderd_tests::{Env, RUN_LABEL, image_exists, run_id, run_images, skip_docker};

#[test]
fn an_image_built_from_a_tests_own_context_is_removed_with_its_environment() {
    if skip_docker() {
        return;
    }
    // This suite's process makes no other image: what carries its label before is what an
    // earlier test of this run left.
    let before = run_images();
    let nonce = format!("{:?}", std::time::SystemTime::now());
    let ctx = builderd_tests::context_with(&format!("LABEL builderd-test-images=\"{nonce}\""));
    let env = Env::new(&format!("[image]\ncontext = \"{}\"", ctx.path().display()));
    env.up();
    let cfg = builderd::config::Config::load(&env.config).unwrap();
    let (tag, _) = builderd::docker::image_for(&cfg).unwrap();
    assert!(image_exists(&tag), "{tag} was built");
    let made = run_images();
    assert!(
        made.len() > before.len(),
        "the image built from the test's context carries {RUN_LABEL}={}: {made:?}",
        run_id()
    );
    drop(env);
    assert!(!image_exists(&tag), "{tag} is still there");
    assert_eq!(
        run_images(),
        before,
        "images labelled {RUN_LABEL}={} remain",
        run_id()
    );
}
