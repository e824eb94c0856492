//! doctor's keys check: the user's key pair is one pair builderd can use.

use builderd_core::doctor::Finding;

use super::Ctx;

pub(super) fn check_keys(ctx: &Ctx) -> Vec<Finding> {
    let cfg = ctx.cfg;
    vec![
        match crate::keys::load_client_keys(&cfg.public_key, &cfg.private_key) {
            Ok(k) => Finding::pass(
                "keys",
                format!("{} ({})", cfg.public_key.display(), k.fingerprint),
            ),
            Err(e) => Finding::fail(
                "keys",
                e.to_string(),
                "fix the key files named above (`ssh-keygen -t ed25519` makes a new pair), then `builderctl up`",
            ),
        },
    ]
}
