//! doctor's builder, disk and caches checks: the daemon's view, checked against the engine's.

use builderd_core::doctor::Finding;
use builderd_core::human::human_bytes;
use builderd_core::protocol::State;

use super::{Ctx, first_line};

/// The daemon's view, checked against the engine's.
pub(super) fn check_builder(ctx: &Ctx) -> Vec<Finding> {
    let engine_says = ctx.container.as_ref().map_or_else(
        || "no container".to_string(),
        |c| format!("container {}", c.state),
    );
    let Some(s) = ctx.status else {
        // No daemon answered (the client says so): only the engine's word.
        return match &ctx.container {
            Some(c) if !c.running => vec![Finding::fail(
                "builder",
                format!("container {} is {}", ctx.cfg.container_name, c.state),
                "run `builderctl up`: it starts the container and keeps it running",
            )],
            _ => vec![],
        };
    };
    let running = ctx.container.as_ref().is_some_and(|c| c.running);
    let reason = || first_line(s.reason.as_deref().unwrap_or("not healthy")).to_string();
    vec![if s.desired == "down" {
        Finding::fail("builder", "the builder is down", "run `builderctl up`")
    } else if s.state == State::Sleeping {
        Finding::pass(
            "builder",
            format!(
                "asleep on demand ({engine_says}); the next connection to 127.0.0.1:{} wakes it",
                s.port
            ),
        )
    } else if s.healthy && !running && ctx.engine.is_ok() {
        Finding::fail(
            "builder",
            format!("the daemon last saw it healthy, but the engine says: {engine_says}"),
            "see `builderctl logs --container`; `builderctl up` starts it again",
        )
    } else if s.healthy && s.state == State::Up {
        Finding::pass("builder", format!("up and healthy on 127.0.0.1:{}", s.port))
    } else if s.healthy {
        Finding::warn(
            "builder",
            format!(
                "healthy on 127.0.0.1:{}, but {}",
                s.port,
                first_line(s.reason.as_deref().unwrap_or("degraded"))
            ),
            "see the checks below",
        )
    } else {
        Finding::fail(
            "builder",
            format!("state {} ({engine_says}): {}", s.state.as_str(), reason()),
            "see `builderctl logs` and `builderctl logs --container`; `builderctl up` starts it again",
        )
    }]
}

pub(super) fn check_disk(ctx: &Ctx) -> Vec<Finding> {
    // Only a running builder's disk is a fact now.
    if !ctx.up() {
        return vec![];
    }
    let Some(free) = ctx
        .status
        .and_then(|s| s.builder.as_ref())
        .and_then(|b| b.disk_free_bytes)
    else {
        return vec![];
    };
    let min = ctx.cfg.builder.min_free;
    vec![if free < min {
        Finding::fail(
            "disk",
            format!("only {} free for the builder's store", human_bytes(free)),
            "run `builderctl gc`, or free space on the Docker disk",
        )
    } else if free < 4 * min {
        Finding::warn(
            "disk",
            format!("{} free for the builder's store", human_bytes(free)),
            "run `builderctl gc` soon",
        )
    } else {
        Finding::pass("disk", format!("{} free", human_bytes(free)))
    }]
}

/// Substituters the builder cannot reach: it builds without them (rather than waiting on
/// them in every build), which is slower than it need be when they were meant to answer.
pub(super) fn check_caches(ctx: &Ctx) -> Vec<Finding> {
    let Some(b) = ctx.status.and_then(|s| s.builder.as_ref()) else {
        return vec![];
    };
    if !ctx.up() || b.unreachable_substituters.is_empty() {
        return vec![];
    }
    vec![Finding::warn(
        "caches",
        format!(
            "the builder cannot reach {}: it builds and copies without it until it answers",
            b.unreachable_substituters.join(", ")
        ),
        "check the network of the Docker engine's VM (a proxy, a VPN), or set `[builder] substituters` to caches it can reach (\"\" for none)",
    )]
}
