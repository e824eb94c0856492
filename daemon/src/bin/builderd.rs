//! builderd: keeps the Nix remote builder in Docker up and registered. Usually started by
//! `builderctl up` or by the launchd/systemd service that `builderctl install` writes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Keeps a Linux Nix remote builder running in Docker and registered with Nix and OpenSSH.
#[derive(Parser)]
#[command(
    version,
    after_help = "Example:\n  builderd --config ~/.config/builderd/config.toml"
)]
struct Args {
    /// The config file [default: $BUILDERD_CONFIG, else the platform config dir]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Do one thing for `builderctl` and exit, instead of serving
    #[command(subcommand)]
    once: Option<Once>,
}

#[derive(Subcommand)]
enum Once {
    /// Print doctor's daemon-side checks as JSON (`builderctl doctor` without a daemon)
    Doctor,
    /// Print the container's log (`builderctl logs --container`)
    ContainerLogs {
        #[arg(long)]
        follow: bool,
    },
    /// Remove the image built for the config (`builderctl uninstall --purge`)
    PurgeImage,
}

#[allow(unsafe_code)]
fn main() -> ExitCode {
    let args = Args::parse();
    if args.once.is_none() && rustix::process::geteuid().is_root() {
        // SAFETY: no other thread exists yet. A root daemon runs only tools from root's
        // directories. (A one-shot runs for `builderctl`, with the PATH of whoever ran it.)
        unsafe { std::env::set_var("PATH", builderd::config::ROOT_PATH) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BUILDERD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        // Each event is one line, whatever it quotes.
        .with_writer(|| builderd::logline::OneLine(std::io::stderr()))
        .init();
    if let Some(once) = args.once {
        return one_shot(once, args.config);
    }
    // A daemon started from a terminal (by `builderctl up`) leaves its session, so that closing
    // the terminal does not hang it up. Under launchd or systemd it already leads its own.
    let _ = rustix::process::setsid();
    let path = builderd::config::resolve_config_path(args.config.as_deref());
    let loaded = builderd::config::check_trusted(&path)
        .and_then(|()| builderd::config::Config::load_from(args.config.as_deref()));
    let cfg = match loaded {
        Ok(c) => c,
        Err(e) => {
            fail(format_args!("builderd: {e}"));
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            fail(format_args!("builderd: cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(builderd::server::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            fail(format_args!("builderd: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// The daemon's last words, one line of its log like every event before them: the error may
/// quote what its user wrote (a config's lines, a path), which must not forge lines of a root
/// daemon's log.
fn fail(message: std::fmt::Arguments) {
    use std::io::Write;
    // Written whole: the escaping keeps only a write's final newline.
    let line = format!("{message}\n");
    let _ = builderd::logline::OneLine(std::io::stderr()).write_all(line.as_bytes());
}

/// One thing for `builderctl`, on a runtime of its own.
fn one_shot(once: Once, config: Option<PathBuf>) -> ExitCode {
    let cfg = match builderd::config::Config::load_from(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("builderd: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime starts");
    ExitCode::from(rt.block_on(async {
        match once {
            Once::Doctor => builderd::oneshot::doctor(&cfg).await,
            Once::ContainerLogs { follow } => builderd::oneshot::container_logs(&cfg, follow).await,
            Once::PurgeImage => builderd::oneshot::purge_image(&cfg).await,
        }
    }))
}
