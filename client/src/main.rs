//! builderctl: the command line for builderd.

mod copies;
mod doctor;
mod output;
mod service;
mod up;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use builderd_core::client::{self, ClientError};
use builderd_core::config::Config;
use builderd_core::protocol::{ErrorKind, Reply, Request};
use clap::{CommandFactory, Parser, Subcommand};

/// Exit codes, as documented in the README.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
    pub const DOCTOR: u8 = 4;
}

/// Drive builderd: a Linux Nix remote builder in Docker that stays registered and healthy.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// The config file [default: $BUILDERD_CONFIG, else the platform config dir]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print only errors
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Print every step
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the daemon if needed, bring the builder up and register it; wait until healthy
    #[command(
        after_help = "Example:\n  builderctl up\n  builderctl up --wait    # Docker Desktop is still starting\n  builderctl --config ./builderd.toml up"
    )]
    Up {
        /// Wait for the Docker engine if it is not running yet, instead of failing
        #[arg(long)]
        wait: bool,
    },
    /// Remove the container and builderd's registrations (the volume and host key stay)
    #[command(after_help = "Example:\n  builderctl down")]
    Down,
    /// Show the builder's state
    #[command(
        after_help = "Example:\n  builderctl status\n  builderctl status --json | jq .state\n  builderctl status --watch"
    )]
    Status {
        /// Print the status as one JSON object (see the README for its schema)
        #[arg(long)]
        json: bool,
        /// Refresh in place every second
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
    /// Run a health check now and show the status after it
    #[command(after_help = "Example:\n  builderctl check")]
    Check,
    /// Collect garbage in the builder's Nix store
    #[command(after_help = "Example:\n  builderctl gc")]
    Gc,
    /// Pin the host key a remote builder presented, after you checked its fingerprint
    #[command(
        after_help = "Example:\n  builderctl status            # shows the key big-box presented\n  builderctl trust big-box SHA256:…\n  builderctl trust big-box --forget"
    )]
    Trust {
        /// The remote's `name` in the config
        name: String,
        /// The fingerprint you expect (`ssh-keygen -lf` on the host's key); refused if it differs
        #[arg(conflicts_with = "forget")]
        fingerprint: Option<String>,
        /// Forget the confirmed key, with the alias, known_hosts entries and machines line
        #[arg(long)]
        forget: bool,
    },
    /// Stop the daemon; the builder is left as it is
    #[command(after_help = "Example:\n  builderctl shutdown")]
    Shutdown,
    /// Run every check, each PASS, WARN or FAIL with its fix; exit 4 on any FAIL
    #[command(after_help = "Example:\n  builderctl doctor\n  builderctl doctor --build-test")]
    Doctor {
        /// Also run a real tiny remote build through the machines file, timed
        #[arg(long)]
        build_test: bool,
    },
    /// Open a shell on the builder, or run a command there
    #[command(after_help = "Example:\n  builderctl ssh\n  builderctl ssh -- nix-store --version")]
    Ssh {
        /// The command to run
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Show the daemon's log, or the container's
    #[command(after_help = "Example:\n  builderctl logs -f\n  builderctl logs --container")]
    Logs {
        /// Keep following the log
        #[arg(long, short)]
        follow: bool,
        /// The container's log instead of the daemon's
        #[arg(long)]
        container: bool,
    },
    /// Install builderd as a launchd (macOS) or systemd (Linux) service
    #[command(
        after_help = "Example:\n  sudo builderctl install\n  builderctl install --user --print"
    )]
    Install {
        /// Show the service definition and the commands, and do nothing
        #[arg(long)]
        print: bool,
        /// Install a per-user agent rather than a system service run as root
        #[arg(long)]
        user: bool,
        /// Linux system service: run the builder with Nix's sandbox (or `privileged`) although
        /// that makes the served user root on this host, as the docker group does
        #[arg(long, conflicts_with = "user")]
        trust_user_with_root: bool,
        /// Linux system service: list the served user's builder in the system-wide machines
        /// file and nix.conf, so that every user's builds (root's too) may go to it
        #[arg(long, conflicts_with = "user")]
        all_users: bool,
        /// Test builds: only copy builderd and the config into the system directory below
        /// this prefix
        #[arg(long, hide = true)]
        prefix: Option<PathBuf>,
        /// With --print: the system service as `sudo builderctl install` writes it on macOS
        /// (the launchd daemon), for the release's service definitions
        #[arg(long, hide = true, requires = "print", conflicts_with = "user")]
        for_macos: bool,
    },
    /// Stop and remove the service
    #[command(
        after_help = "Example:\n  sudo builderctl uninstall\n  sudo builderctl uninstall --purge"
    )]
    Uninstall {
        /// Also take the builder down (container and registrations) and remove the state dir
        #[arg(long)]
        purge: bool,
        #[arg(long)]
        user: bool,
    },
    /// Print shell completions
    #[command(after_help = "Example:\n  builderctl completions zsh > ~/.zfunc/_builderctl")]
    Completions { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    if let Cmd::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "builderctl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let config_path = builderd_core::config::resolve_config_path(cli.config.as_deref());
    let cfg = match Config::load_from(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("builderctl: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime starts");
    let out = output::Out::new(cli.quiet, cli.verbose);
    let code = rt.block_on(run(cli.command, &cfg, &config_path, &out));
    ExitCode::from(code)
}

/// The `builderd` next to this `builderctl`, when there is one.
fn daemon_next_to_us() -> Option<PathBuf> {
    daemon_path_next_to_us().filter(|p| p.is_file())
}

/// Where builderd would be next to this `builderctl`, whatever is there (the install's copy
/// says what is wrong with it).
fn daemon_path_next_to_us() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("builderd")))
}

/// The daemon binary to start: the one next to this `builderctl`, else `builderd` on PATH.
pub(crate) fn daemon_binary() -> PathBuf {
    daemon_next_to_us().unwrap_or_else(|| PathBuf::from("builderd"))
}

pub(crate) fn report(err: &ClientError, out: &output::Out) -> u8 {
    out.error(&err.to_string());
    match err {
        ClientError::Unreachable { .. } => exit::UNREACHABLE,
        ClientError::Daemon {
            kind: ErrorKind::ProtocolMismatch,
            ..
        } => exit::UNREACHABLE,
        ClientError::Daemon {
            kind: ErrorKind::UnknownName,
            ..
        } => exit::USAGE,
        _ => exit::FAILURE,
    }
}

/// The exit code of a request whose answer is `done`.
pub(crate) fn done(r: Result<Reply, ClientError>, out: &output::Out) -> u8 {
    match r {
        Ok(Reply::Done { message }) => {
            out.info(&message);
            exit::OK
        }
        Ok(other) => {
            out.error(&format!("unexpected reply: {other:?}"));
            exit::FAILURE
        }
        Err(e) => report(&e, out),
    }
}

async fn run(cmd: Cmd, cfg: &Config, config_path: &Path, out: &output::Out) -> u8 {
    match cmd {
        Cmd::Up { wait } => up::run(cfg, config_path, wait, out).await,
        Cmd::Down | Cmd::Shutdown | Cmd::Gc => {
            let req = match cmd {
                Cmd::Down => Request::Down,
                Cmd::Gc => Request::Gc,
                _ => Request::Shutdown,
            };
            done(client::request(&cfg.socket, req, |_| {}).await, out)
        }
        Cmd::Trust {
            name,
            fingerprint,
            forget,
        } => done(
            client::request(
                &cfg.socket,
                Request::Trust {
                    name,
                    fingerprint,
                    forget,
                },
                |_| {},
            )
            .await,
            out,
        ),
        Cmd::Status { json, watch } => output::status(cfg, json, watch, out).await,
        Cmd::Check => match client::request(&cfg.socket, Request::Check, |_| {}).await {
            Ok(Reply::Status(st)) => {
                out.print(&output::render_status(&st, out.color()));
                if st.healthy { exit::OK } else { exit::FAILURE }
            }
            Ok(other) => {
                out.error(&format!("unexpected reply: {other:?}"));
                exit::FAILURE
            }
            Err(e) => report(&e, out),
        },
        Cmd::Doctor { build_test } => doctor::run(cfg, config_path, build_test, out).await,
        Cmd::Ssh { command } => service::ssh(cfg, &command),
        Cmd::Logs { follow, container } => {
            service::logs(cfg, config_path, follow, container, out).await
        }
        Cmd::Install {
            print,
            user,
            trust_user_with_root,
            all_users,
            prefix,
            for_macos,
        } => {
            let grants = service::Grants {
                trust_user_with_root,
                all_users,
            };
            let os = if for_macos {
                builderd_launchd::Os::MacOs
            } else {
                builderd_launchd::Os::current()
            };
            service::install(
                cfg,
                config_path,
                service::Install {
                    print,
                    user,
                    grants,
                    os,
                },
                prefix.as_deref(),
                out,
            )
            .await
        }
        Cmd::Uninstall { purge, user } => {
            service::uninstall(cfg, config_path, purge, user, out).await
        }
        Cmd::Completions { .. } => unreachable!("handled before the config is read"),
    }
}
