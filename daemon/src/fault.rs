//! Faults injected on purpose, in debug builds only, so that tests can see how the daemon
//! fails for real: `BUILDERD_FAULT=supervisor` makes the supervisor panic as it starts. Release
//! builds compile this to nothing.

/// Panics when `BUILDERD_FAULT` names `what` (debug builds only).
pub fn maybe_panic(what: &str) {
    if cfg!(debug_assertions)
        && std::env::var("BUILDERD_FAULT").is_ok_and(|f| f.split(',').any(|f| f == what))
    {
        panic!("BUILDERD_FAULT={what}: failing on purpose");
    }
}
