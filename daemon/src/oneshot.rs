//! What `builderctl` asks of the `builderd` binary when the work needs the engine and no daemon
//! has to run for it: the client links no engine library of its own.

use std::io::Write;

use futures_util::StreamExt;

use crate::config::Config;

/// `builderd doctor`: the daemon's doctor checks as one JSON [`builderd_core::doctor::Report`]
/// on stdout, for a client that found no daemon to ask.
pub async fn doctor(cfg: &Config) -> u8 {
    let report = crate::doctor::report(cfg, None).await;
    let mut out = std::io::stdout();
    match serde_json::to_writer(&mut out, &report) {
        Ok(()) => {
            let _ = writeln!(out);
            0
        }
        Err(e) => {
            eprintln!("builderd: cannot print the report: {e}");
            1
        }
    }
}

/// `builderd container-logs [--follow]`: the container's log, its last 200 lines first.
pub async fn container_logs(cfg: &Config, follow: bool) -> u8 {
    let ep = crate::docker::resolve_endpoint(cfg);
    let docker = match crate::docker::connect(&ep).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("builderctl: {e}");
            return 1;
        }
    };
    let mut s = crate::docker::logs_stream(&docker, &cfg.container_name, follow, 200);
    let mut out = std::io::stdout();
    while let Some(item) = s.next().await {
        match item {
            Ok(chunk) => {
                let _ = write!(out, "{chunk}");
                let _ = out.flush();
            }
            Err(e) => {
                eprintln!("builderctl: cannot read the container's log: {e} (is the builder up?)");
                return 1;
            }
        }
    }
    0
}

/// `builderd purge-image`: removes the image built for `cfg` (`builderctl uninstall --purge`).
pub async fn purge_image(cfg: &Config) -> u8 {
    match crate::docker::purge_image(cfg).await {
        Ok(Some(tag)) => {
            println!("removed the image {tag}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            eprintln!("could not remove the image: {e}");
            1
        }
    }
}
