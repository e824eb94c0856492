//! doctor's port check: the port the engine really publishes, against the config's.

use builderd_core::doctor::Finding;

use super::Ctx;

/// The port the engine really publishes, against the config's.
pub(super) fn check_port(ctx: &Ctx) -> Vec<Finding> {
    let cfg = ctx.cfg;
    let taken = |holder: String| {
        Finding::fail(
            "port",
            format!("127.0.0.1:{} is taken by {holder}", cfg.port),
            format!(
                "stop {holder}, or set `port` in {} to a free port",
                cfg.file.display()
            ),
        )
    };
    let holder = || crate::port::holder(cfg.port).unwrap_or_else(|| "another process".into());
    if cfg.on_demand {
        return vec![on_demand_port(ctx, &holder)];
    }
    vec![match ctx.container.as_ref().filter(|c| c.running) {
        Some(c) => match &c.published {
            Some((ip, p)) if *p == cfg.port && ip == "127.0.0.1" => Finding::pass(
                "port",
                format!("127.0.0.1:{p} is the builder's (the engine publishes it)"),
            ),
            Some((ip, p)) if *p == cfg.port => Finding::fail(
                "port",
                format!("the engine publishes the builder on {ip}:{p}, not on 127.0.0.1 only"),
                "run `builderctl down && builderctl up`: it publishes the port on 127.0.0.1",
            ),
            Some((ip, p)) => {
                let now = if crate::port::is_free(cfg.port) {
                    "free".to_string()
                } else {
                    format!("taken by {}", holder())
                };
                Finding::fail(
                    "port",
                    format!(
                        "the engine publishes the builder on {ip}:{p}, but {} says port {} ({now})",
                        cfg.file.display(),
                        cfg.port
                    ),
                    "run `builderctl up`: it re-creates the container on the config's port (choose a free one)",
                )
            }
            None => Finding::fail(
                "port",
                "the engine publishes no port for the builder",
                "run `builderctl down && builderctl up`",
            ),
        },
        None if crate::port::is_free(cfg.port) => {
            Finding::pass("port", format!("127.0.0.1:{} is free", cfg.port))
        }
        None => taken(holder()),
    }]
}

/// On demand, builderd's relay holds the configured port and the engine publishes sshd on
/// another loopback port.
fn on_demand_port(ctx: &Ctx, holder: &dyn Fn() -> String) -> Finding {
    let cfg = ctx.cfg;
    let daemon = ctx.status.map(|s| s.pid);
    if crate::port::is_free(cfg.port) {
        return if ctx.down() {
            Finding::pass("port", format!("127.0.0.1:{} is free", cfg.port))
        } else {
            Finding::fail(
                "port",
                format!("127.0.0.1:{} is not held by builderd's relay", cfg.port),
                "run `builderctl up`",
            )
        };
    }
    let h = holder();
    let ours = daemon.is_some_and(|pid| h.starts_with(&format!("pid {pid} ")));
    if !ours {
        return Finding::fail(
            "port",
            format!("127.0.0.1:{} is taken by {h}", cfg.port),
            format!(
                "stop {h}, or set `port` in {} to a free port",
                cfg.file.display()
            ),
        );
    }
    match ctx
        .container
        .as_ref()
        .filter(|c| c.running)
        .and_then(|c| c.published.clone())
    {
        Some((ip, p)) if ip != "127.0.0.1" => Finding::fail(
            "port",
            format!("the engine publishes the builder's sshd on {ip}:{p}, not on 127.0.0.1 only"),
            "run `builderctl down && builderctl up`",
        ),
        Some((_, p)) => Finding::pass(
            "port",
            format!(
                "127.0.0.1:{} is builderd's relay, to sshd on 127.0.0.1:{p}",
                cfg.port
            ),
        ),
        None => Finding::pass(
            "port",
            format!(
                "127.0.0.1:{} is builderd's relay (the builder sleeps)",
                cfg.port
            ),
        ),
    }
}
