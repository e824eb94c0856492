//! builderd's registrations: the machines line, `builders-use-substitutes` and
//! `build-poll-interval`, the known_hosts entries and the ssh_config alias, each kept as a marked
//! block in a file the user shares.
//!
//! Architecture invariant: builderd writes only inside its own block (and drops stale
//! known_hosts entries for its own host names); every other byte of a file stays as it was, and
//! a file is only ever replaced whole, by rename. A file builderd may not write (nix-darwin's
//! store links, a read-only file, a symlink to something that is not a plain file) is reported
//! with the exact lines to add by hand instead.

pub mod block;
pub mod known_hosts;
pub mod nix_conf;
#[cfg(test)]
mod proptests;
pub mod remote;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use base64::Engine;

use crate::config::Config;
use crate::fsutil::{self, Outcome};
use crate::protocol::RegistrationStatus;

/// What builderd registers: everything the files must say about the builder.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub instance: String,
    pub port: u16,
    pub alias: String,
    /// `ssh-ed25519 AAAA…`, no comment.
    pub host_key_line: String,
    pub identity: PathBuf,
    /// The store URI of the machines line.
    pub uri: String,
    pub systems: Vec<String>,
    pub max_jobs: u32,
    pub speed_factor: u32,
    pub features: Vec<String>,
    /// Whether the machines line is listed (false while the builder has been unhealthy too long).
    pub machines_listed: bool,
}

/// The fields of one machines line.
pub struct MachinesLine<'a> {
    pub uri: &'a str,
    pub systems: &'a [String],
    /// Field 3: the key file, or `-` when an ssh_config alias carries it.
    pub identity: &'a str,
    pub max_jobs: u32,
    pub speed_factor: u32,
    pub features: &'a [String],
    /// `TYPE AAAA…`, no comment: field 8 pins it.
    pub host_key_line: &'a str,
}

/// A machines line, all 8 fields (field 7, mandatory features, is `-`).
pub fn machines_line(l: MachinesLine<'_>) -> String {
    let features = if l.features.is_empty() {
        "-".to_string()
    } else {
        l.features.join(",")
    };
    format!(
        "{} {} {} {} {} {} - {}",
        l.uri,
        l.systems.join(","),
        l.identity,
        l.max_jobs,
        l.speed_factor,
        features,
        host_key_b64(l.host_key_line)
    )
}

/// Field 8 of a machines line: the base64 of the host key line and a newline.
pub fn host_key_b64(host_key_line: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{host_key_line}\n"))
}

impl Wanted {
    /// Field 8 of the machines line: the base64 of the host key line.
    pub fn host_key_b64(&self) -> String {
        host_key_b64(&self.host_key_line)
    }

    /// Whether the store URI is the `user@host:port` form rather than the alias.
    pub fn is_host_port(&self) -> bool {
        crate::hostnix::is_host_port_uri(&self.uri)
    }

    /// The machines line, all 8 fields. Field 8 pins the host key in both forms (Nix writes it
    /// under the alias, which is the `HostKeyAlias`; for `host:port` OpenSSH accepts the
    /// port-less entry Nix writes). In the alias form field 3 is `-`: the alias carries the
    /// key, so no path (one with spaces, say) can break the line.
    pub fn machines_line(&self) -> String {
        let identity = if self.is_host_port() {
            self.identity.display().to_string()
        } else {
            "-".to_string()
        };
        machines_line(MachinesLine {
            uri: &self.uri,
            systems: &self.systems,
            identity: &identity,
            max_jobs: self.max_jobs,
            speed_factor: self.speed_factor,
            features: &self.features,
            host_key_line: &self.host_key_line,
        })
    }

    /// The ssh_config `Host` block, closed by `Host *` so that the lines after it keep applying
    /// to every host.
    /// `control_dir` holds the connection-sharing sockets: the directory of the ssh_config file
    /// itself, which exists and belongs to the user whose file it is.
    pub fn ssh_config_lines(&self, known_hosts: Option<&Path>, control_dir: &Path) -> Vec<String> {
        alias_lines(
            &Alias {
                name: &self.alias,
                host_name: "127.0.0.1",
                port: self.port,
                user: "root",
                identity: &self.identity,
            },
            known_hosts,
            control_dir,
        )
    }

    /// What to put in a nix-darwin configuration instead of writing its files.
    pub fn nix_darwin_snippet(&self) -> String {
        let (host, user) = match self.uri.strip_prefix("ssh-ng://") {
            Some(rest) => match rest.split_once('@') {
                Some((u, h)) => (h.to_string(), Some(u.to_string())),
                None => (rest.to_string(), None),
            },
            None => (self.alias.clone(), None),
        };
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "nix.distributedBuilds = true;\n\
             nix.buildMachines = [{{\n  hostName = \"{host}\";\n  protocol = \"ssh-ng\";\n{}  systems = [ {} ];\n  sshKey = \"{}\";\n  maxJobs = {};\n  speedFactor = {};\n  supportedFeatures = [ {} ];\n  publicHostKey = \"{}\";\n}}];\n\
             nix.settings.builders-use-substitutes = true;\n\
             nix.settings.{POLL_KEY} = {POLL_SECS};",
            user.map(|u| format!("  sshUser = \"{u}\";\n"))
                .unwrap_or_default(),
            list(&self.systems),
            self.identity.display(),
            self.max_jobs,
            self.speed_factor,
            list(&self.features),
            self.host_key_b64(),
        )
    }
}

/// Whether `DIR/builderd-%C` fits a Unix socket path once expanded: `%C` is 40 hex digits, and
/// ssh binds the master first under a name 17 bytes longer (`.XXXXXXXXXXXXXXXX`).
fn control_path_fits(dir: &str) -> bool {
    let max = crate::config::socket_path_max(cfg!(target_os = "macos"));
    dir.len() + "/builderd-".len() + 40 + 17 <= max
}

/// A path as one ssh_config argument: `%` escaped (these keywords expand `%` tokens), quoted
/// when it holds a space. The config refuses quotes and control characters in paths.
/// An ssh_config alias for a builder: the local container or a remote host.
pub struct Alias<'a> {
    pub name: &'a str,
    pub host_name: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub identity: &'a Path,
}

/// The hardened `Host` block for `a`, closed by `Host *`: strict host key checking against the
/// alias's own entry, only the given key, and nothing a `Host *` elsewhere sets (proxies,
/// forwarding, agents, commands) reaching the builder.
pub fn alias_lines(a: &Alias<'_>, known_hosts: Option<&Path>, control_dir: &Path) -> Vec<String> {
    let mut v = vec![
        format!("Host {}", a.name),
        format!("  HostName {}", a.host_name),
        format!("  Port {}", a.port),
        format!("  User {}", a.user),
        format!("  IdentityFile {}", quote(a.identity)),
        "  IdentitiesOnly yes".to_string(),
        format!("  HostKeyAlias {}", a.name),
    ];
    if let Some(k) = known_hosts {
        v.push(format!("  UserKnownHostsFile {}", quote(k)));
    }
    v.extend(
        [
            "  StrictHostKeyChecking yes",
            // ssh keeps the first value it reads, and this block comes first: options a
            // `Host *` sets for every host cannot reach the builder.
            "  IgnoreUnknown KnownHostsCommand,SessionType,StdinNull,ForkAfterAuthentication",
            "  ProxyJump none",
            "  ProxyCommand none",
            "  PermitLocalCommand no",
            "  RemoteCommand none",
            "  RequestTTY auto",
            "  ForwardAgent no",
            "  ForwardX11 no",
            "  ClearAllForwardings yes",
            "  Tunnel no",
            "  GlobalKnownHostsFile /dev/null",
            "  KnownHostsCommand none",
            "  UpdateHostKeys no",
            "  VerifyHostKeyDNS no",
            "  CanonicalizeHostname no",
            "  PKCS11Provider none",
            "  IdentityAgent none",
            "  AddKeysToAgent no",
            "  SessionType default",
            "  StdinNull no",
            "  ForkAfterAuthentication no",
            "  BatchMode yes",
            "  ConnectTimeout 10",
            "  ServerAliveInterval 15",
        ]
        .map(String::from),
    );
    // Closure copies run at the cipher's speed: the fastest one for this CPU first, then the
    // others every OpenSSH since 6.5 knows, so that any server still agrees on one.
    v.push(format!("  Ciphers {}", ciphers(cpu_has_aes()).join(",")));
    if is_loopback(a.host_name) {
        // Nothing to save on loopback, and compressing costs CPU the copy needs.
        v.push("  Compression no".into());
    }
    let dir = control_dir.display().to_string();
    let dir = dir.trim_end_matches('/');
    if control_path_fits(dir) {
        v.push("  ControlMaster auto".into());
        v.push(format!(
            "  ControlPath {}",
            quote_escaped(&format!("{}/builderd-%C", dir.replace('%', "%%")))
        ));
        v.push("  ControlPersist 120".into());
    } else {
        // The master's socket would not fit a Unix socket path, and ssh would fail: no
        // connection sharing rather than no connection.
        v.push("  ControlMaster no".into());
        v.push("  ControlPath none".into());
    }
    v.push("Host *".into());
    v
}

/// The cipher list, preferred first: AES-GCM where the CPU has AES instructions (it then runs
/// several times faster than ChaCha20), ChaCha20-Poly1305 where it has not (AES in software is
/// slow and not constant-time).
pub fn ciphers(aes: bool) -> [&'static str; 6] {
    let (first, second) = if aes {
        ("aes128-gcm@openssh.com", "chacha20-poly1305@openssh.com")
    } else {
        ("chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com")
    };
    [
        first,
        second,
        "aes256-gcm@openssh.com",
        "aes128-ctr",
        "aes192-ctr",
        "aes256-ctr",
    ]
}

/// Whether the CPU this runs on (where ssh runs) has AES instructions.
pub fn cpu_has_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn quote(p: &Path) -> String {
    quote_escaped(&p.display().to_string().replace('%', "%%"))
}

fn quote_escaped(s: &str) -> String {
    if s.contains(char::is_whitespace) {
        format!("\"{s}\"")
    } else {
        s.to_string()
    }
}

/// Where builderd may write a registration file.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A plain file (or a missing one): write here. For a symlink, this is its target.
    Write(PathBuf),
    /// A symlink into nix-darwin's generated files: never written through.
    NixDarwin,
    /// A symlink whose target builderd may not replace.
    Manual(String),
}

/// Decides where to write `path`, following symlinks but never replacing one.
pub fn resolve_target(path: &Path) -> Target {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Target::Write(path.to_path_buf());
    };
    if !meta.file_type().is_symlink() {
        use std::os::unix::fs::PermissionsExt;
        // A file nobody may write was made so on purpose (root could write it anyway).
        if meta.is_file() && meta.permissions().mode() & 0o222 == 0 {
            return Target::Manual(format!("{} is read-only", path.display()));
        }
        return Target::Write(path.to_path_buf());
    }
    let mut chain = Vec::new();
    let mut cur = path.to_path_buf();
    for _ in 0..32 {
        match std::fs::read_link(&cur) {
            Ok(next) => {
                let next = if next.is_absolute() {
                    next
                } else {
                    cur.parent().unwrap_or(Path::new("/")).join(next)
                };
                chain.push(next.clone());
                cur = next;
            }
            Err(_) => break,
        }
    }
    if chain
        .iter()
        .any(|p| p.starts_with("/etc/static") || p.starts_with("/nix/store"))
    {
        return Target::NixDarwin;
    }
    match std::fs::metadata(&cur) {
        Ok(m)
            if m.is_file() && {
                use std::os::unix::fs::PermissionsExt;
                m.permissions().mode() & 0o222 != 0
            } =>
        {
            Target::Write(std::fs::canonicalize(&cur).unwrap_or(cur))
        }
        Ok(_) => Target::Manual(format!(
            "{} is a symlink to {}, which is not a plain writable file",
            path.display(),
            cur.display()
        )),
        Err(_) => Target::Manual(format!(
            "{} is a symlink to {}, which does not exist",
            path.display(),
            cur.display()
        )),
    }
}

/// Files builderd created, so that `down` removes a file it made once nothing else is in it.
pub type Created = BTreeSet<PathBuf>;

/// The result of one sync.
#[derive(Debug, Default)]
pub struct Synced {
    pub statuses: Vec<RegistrationStatus>,
    /// nix.conf (or the file builderd writes its settings to) changed.
    pub nix_conf_changed: bool,
    /// Some file was written.
    pub changed: bool,
    /// The files that were written (or removed).
    pub written: Vec<PathBuf>,
}

const KEY: &str = "builders-use-substitutes";

/// How often, in seconds, the nix-daemon looks again at a build it postponed because every
/// slot of every machine was busy. Nix's default is 5 s: with more builds ready than the builder
/// runs at once, each one waits up to that long after a slot frees. 1 is the shortest Nix
/// honours; a look costs the nix-daemon a few milliseconds per waiting build.
const POLL_KEY: &str = "build-poll-interval";
const POLL_SECS: u32 = 1;

fn status(kind: &str, path: &Path, state: &str, detail: Option<String>) -> RegistrationStatus {
    RegistrationStatus {
        kind: kind.into(),
        path: path.display().to_string(),
        state: state.into(),
        repairs: 0,
        detail,
    }
}

/// What resolving and editing one registration file came to.
enum Done {
    Edited(PathBuf, Result<Outcome, fsutil::FsError>),
    NixDarwin,
    Manual(String),
}

/// Applies (`Some`) or removes (`None`) builderd's block in one file.
fn sync_block(
    kind: &str,
    path: &Path,
    instance: &str,
    wanted: Option<&(dyn Fn(&str) -> String + Sync)>,
    manual_lines: &str,
    created: &mut Created,
    out: &mut Synced,
) -> Outcome {
    // Resolved and written with the identity of whoever controls the path, so that a link in
    // the user's files never leads root to a file the user could not write.
    let mode = if kind == "ssh_config" { 0o600 } else { 0o644 };
    let known: &Created = created;
    let done = fsutil::as_owner_of(path, || {
        Ok(match resolve_target(path) {
            Target::Write(target) => {
                let was_created = known.contains(&target);
                let r = fsutil::edit_file(&target, mode, |cur| match (wanted, cur) {
                    (Some(f), cur) => Some(f(cur.unwrap_or(""))),
                    // Nothing there and nothing of ours: a missing file stays missing.
                    (None, None) => None,
                    (None, Some(cur)) => {
                        let rest = block::remove(cur, instance);
                        if was_created && rest.trim().is_empty() {
                            None
                        } else {
                            Some(rest)
                        }
                    }
                });
                Done::Edited(target, r)
            }
            Target::NixDarwin => Done::NixDarwin,
            Target::Manual(why) => Done::Manual(why),
        })
    });
    let (target, result) = match done {
        Ok(Done::Edited(t, r)) => (t, r),
        Ok(Done::NixDarwin) => {
            out.statuses.push(status(
                kind,
                path,
                "owned-by-nix-darwin",
                Some(format!(
                    "{} belongs to nix-darwin; builderd does not write through it. Put this in your nix-darwin configuration:\n{manual_lines}",
                    path.display()
                )),
            ));
            return Outcome::Unchanged;
        }
        Ok(Done::Manual(why)) => {
            out.statuses.push(status(
                kind,
                path,
                "manual",
                Some(format!(
                    "{why}; add these lines there yourself:\n{manual_lines}"
                )),
            ));
            return Outcome::Unchanged;
        }
        Err(e) => (path.to_path_buf(), Err(e)),
    };
    match result {
        Ok(outcome) => {
            match (&outcome, wanted.is_some()) {
                (Outcome::Created, _) => {
                    created.insert(target.clone());
                }
                (Outcome::Removed, _) => {
                    created.remove(&target);
                }
                _ => {}
            }
            if outcome != Outcome::Unchanged {
                out.changed = true;
                out.written.push(path.to_path_buf());
            }
            out.statuses.push(status(
                kind,
                path,
                if wanted.is_some() { "ok" } else { "removed" },
                None,
            ));
            outcome
        }
        Err(e) => {
            let hint = if e.source.kind() == std::io::ErrorKind::PermissionDenied {
                "builderd may not write it (install the service with `sudo builderctl install` so that it runs as root, or"
            } else if e.is_disk_full() {
                "the disk is full (free some space, or"
            } else {
                "(fix that, or"
            };
            out.statuses.push(status(
                kind,
                path,
                "failed",
                Some(format!(
                    "{e}: {hint} add these lines yourself):\n{manual_lines}"
                )),
            ));
            Outcome::Unchanged
        }
    }
}

/// Brings every registration file to what `wanted` says (`None`: builderd's entries removed).
pub fn sync(cfg: &Config, wanted: Option<&Wanted>, created: &mut Created) -> Synced {
    let mut out = Synced::default();
    let instance = cfg.container_name.as_str();
    let reg = &cfg.registration;

    // machines
    let machines_body: Vec<String> = wanted
        .filter(|w| w.machines_listed)
        .map(|w| vec![w.machines_line()])
        .unwrap_or_default();
    let manual = wanted.map(|w| w.nix_darwin_snippet()).unwrap_or_default();
    let apply_machines = |t: &str| block::apply(t, instance, &machines_body);
    let machines_fn: Option<&(dyn Fn(&str) -> String + Sync)> =
        if wanted.is_some() && !machines_body.is_empty() {
            Some(&apply_machines)
        } else {
            None
        };
    let limited = |p: &Path| limited_to(cfg, p);
    let machines_limit = limited(&reg.machines_file);
    sync_block(
        "machines",
        &reg.machines_file,
        instance,
        machines_fn.filter(|_| machines_limit.is_none()),
        &manual,
        created,
        &mut out,
    );
    mark_limited(&mut out, machines_limit);

    // nix.conf
    let conf_limit = limited(&reg.nix_conf);
    sync_nix_conf(
        cfg,
        wanted.filter(|_| conf_limit.is_none()),
        created,
        &manual,
        &mut out,
    );
    mark_limited(&mut out, conf_limit);

    // known_hosts and ssh_config
    if let Some(w) = wanted {
        let names = known_hosts::names(w.port, &w.alias);
        let lines = known_hosts::lines(w.port, &w.alias, &w.host_key_line);
        let manual = lines.join("\n");
        let f = |t: &str| known_hosts::apply(t, instance, &names, &lines);
        for p in &reg.known_hosts {
            sync_block(
                "known_hosts",
                p,
                instance,
                Some(&f),
                &manual,
                created,
                &mut out,
            );
        }
        for (i, p) in reg.ssh_config.iter().enumerate() {
            let dir = p.parent().unwrap_or(Path::new("/"));
            let body = w.ssh_config_lines(reg.known_hosts.get(i).map(PathBuf::as_path), dir);
            let manual = body.join("\n");
            let f = |t: &str| block::apply_first(t, instance, &body);
            sync_block(
                "ssh_config",
                p,
                instance,
                Some(&f),
                &manual,
                created,
                &mut out,
            );
        }
    } else {
        for p in &reg.known_hosts {
            sync_block("known_hosts", p, instance, None, "", created, &mut out);
        }
        for p in &reg.ssh_config {
            sync_block("ssh_config", p, instance, None, "", created, &mut out);
        }
    }
    out
}

/// The state of a machines file or nix.conf that builderd leaves alone because every user's
/// builds read it and the builder is one user's ([`Config::registration_only_for`]).
pub const SERVED_USER_ONLY: &str = "served-user-only";

/// Why `path` may not carry the builder, when the registration is limited to one user and that
/// user does not control `path`.
fn limited_to(cfg: &Config, path: &Path) -> Option<String> {
    let uid = cfg.registration_only_for()?;
    if fsutil::controller_of(path).0 == uid {
        return None;
    }
    Some(format!(
        "{} is read by every user's builds, and the builder is uid {uid}'s (root in it, so it can hand back any output): builderd lists it there only when the service was installed with `sudo builderctl install --all-users`, if every user of this host trusts uid {uid}. For uid {uid}'s builds only, point `machines_file` into their home and build with `--builders @FILE` as a trusted user, or with `--store ssh-ng://{}` (see README, \"Who may build there\")",
        path.display(),
        cfg.alias()
    ))
}

/// Marks the last status as [`SERVED_USER_ONLY`] with `why`, when there is a why.
fn mark_limited(out: &mut Synced, why: Option<String>) {
    if let (Some(why), Some(st)) = (why, out.statuses.last_mut()) {
        st.state = SERVED_USER_ONLY.into();
        st.detail = Some(why);
    }
}

fn sync_nix_conf(
    cfg: &Config,
    wanted: Option<&Wanted>,
    created: &mut Created,
    manual: &str,
    out: &mut Synced,
) {
    let instance = cfg.container_name.as_str();
    let conf = &cfg.registration.nix_conf;
    let text = fsutil::read_text_as_owner(conf).unwrap_or_default();
    // Determinate Nix owns nix.conf; user settings go to nix.custom.conf.
    let target = nix_conf::determinate_custom_conf(conf, &text).unwrap_or_else(|| conf.clone());
    let read = |p: &Path| fsutil::read_text_as_owner(p);
    let user_setting = nix_conf::effective(conf, KEY, &read);
    // Each setting unless the user set it themselves: their value stays, and wins.
    let lines: Vec<String> = [
        user_setting.is_none().then(|| format!("{KEY} = true")),
        nix_conf::effective(conf, POLL_KEY, &read)
            .is_none()
            .then(|| format!("{POLL_KEY} = {POLL_SECS}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let apply = |t: &str| block::apply(t, instance, &lines);
    let needed = wanted.is_some() && !lines.is_empty();
    let f: Option<&(dyn Fn(&str) -> String + Sync)> = if needed { Some(&apply) } else { None };
    let before = out.statuses.len();
    let outcome = sync_block("nix.conf", &target, instance, f, manual, created, out);
    if outcome != Outcome::Unchanged {
        out.nix_conf_changed = true;
    }
    if let (Some(_), Some(s)) = (wanted, user_setting)
        && let Some(st) = out.statuses.get_mut(before)
        && (st.state == "ok" || st.state == "removed")
    {
        st.state = "ok".into();
        if s.value == "true" {
            st.detail = Some(format!(
                "{KEY} = true is already set at {}:{}",
                s.file.display(),
                s.line
            ));
        } else {
            st.state = "failed".into();
            st.detail = Some(format!(
                "{}:{} sets {KEY} = {}; builderd leaves your setting alone. Change it to `{KEY} = true` so that the builder fetches from caches itself",
                s.file.display(),
                s.line,
                s.value
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted() -> Wanted {
        Wanted {
            instance: "nb".into(),
            port: 2299,
            alias: "nb".into(),
            host_key_line:
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBrM3rMLJ0D3PBtnPqC0IVEVH2Q9DRN2Y4E8cRBPvOeR"
                    .into(),
            identity: "/home/u/.ssh/id_ed25519".into(),
            uri: "ssh-ng://nb".into(),
            systems: vec!["x86_64-linux".into()],
            max_jobs: 4,
            speed_factor: 1,
            features: vec!["big-parallel".into()],
            machines_listed: true,
        }
    }

    #[test]
    fn host_port_form_names_the_key_file_and_pins_the_host_key() {
        let w = Wanted {
            uri: "ssh-ng://root@localhost:2299".into(),
            ..wanted()
        };
        let l = w.machines_line();
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 8, "{l}");
        assert_eq!(f[2], "/home/u/.ssh/id_ed25519");
        assert_eq!(f[7], w.host_key_b64());
    }

    #[test]
    fn the_cipher_list_puts_the_cpus_fastest_first_and_keeps_fallbacks() {
        assert_eq!(ciphers(true)[0], "aes128-gcm@openssh.com");
        assert_eq!(ciphers(false)[0], "chacha20-poly1305@openssh.com");
        for aes in [true, false] {
            // Both AEADs and the CTR modes every server since OpenSSH 6.5 offers.
            for c in [
                "chacha20-poly1305@openssh.com",
                "aes128-gcm@openssh.com",
                "aes128-ctr",
            ] {
                assert!(ciphers(aes).contains(&c), "{c}");
            }
        }
        let a = Alias {
            name: "nb",
            host_name: "127.0.0.1",
            port: 2299,
            user: "root",
            identity: Path::new("/k"),
        };
        let lines = alias_lines(&a, None, Path::new("/tmp"));
        let want = format!("  Ciphers {}", ciphers(cpu_has_aes()).join(","));
        assert!(lines.contains(&want), "{lines:?}");
        assert!(lines.contains(&"  Compression no".to_string()));
        // A remote host over a real network keeps the user's compression choice.
        let lines = alias_lines(
            &Alias {
                host_name: "192.0.2.10",
                ..a
            },
            None,
            Path::new("/tmp"),
        );
        assert!(
            !lines.iter().any(|l| l.contains("Compression")),
            "{lines:?}"
        );
        assert!(is_loopback("::1") && is_loopback("localhost") && !is_loopback("example.org"));
    }

    #[test]
    fn machines_line_has_all_eight_fields() {
        let l = wanted().machines_line();
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 8, "{l}");
        assert_eq!(f[0], "ssh-ng://nb");
        // The alias carries the key file: no path can break the line.
        assert_eq!(f[2], "-");
        assert_eq!(f[6], "-");
        let key = base64::engine::general_purpose::STANDARD
            .decode(f[7])
            .unwrap();
        assert!(
            String::from_utf8(key)
                .unwrap()
                .starts_with("ssh-ed25519 AAAA")
        );
    }

    fn cfg_in(dir: &Path) -> Config {
        let text = format!(
            "state_dir = \"{d}/state\"\n[registration]\nmachines_file = \"{d}/machines\"\nnix_conf = \"{d}/nix.conf\"\nknown_hosts = [\"{d}/kh\"]\nssh_config = [\"{d}/cfg\"]\n",
            d = dir.display()
        );
        let mut c = Config::from_toml(Path::new("/t.toml"), &text).unwrap();
        c.container_name = "nb".into();
        c
    }

    #[test]
    fn sync_then_unsync_restores_every_file() {
        let d = tempfile::tempdir().unwrap();
        let cfg = cfg_in(d.path());
        std::fs::write(d.path().join("nix.conf"), "max-jobs = 2").unwrap();
        std::fs::write(d.path().join("kh"), "github.com ssh-ed25519 AAAA\r\n").unwrap();
        let mut created = Created::new();
        let s = sync(&cfg, Some(&wanted()), &mut created);
        assert!(s.statuses.iter().all(|s| s.state == "ok"), "{s:?}");
        assert!(s.nix_conf_changed);
        assert_eq!(created.len(), 2, "machines and ssh config are new");
        let again = sync(&cfg, Some(&wanted()), &mut created);
        assert!(!again.changed && !again.nix_conf_changed);
        sync(&cfg, None, &mut created);
        assert!(!d.path().join("machines").exists());
        assert!(!d.path().join("cfg").exists());
        assert_eq!(
            std::fs::read_to_string(d.path().join("nix.conf")).unwrap(),
            "max-jobs = 2"
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("kh")).unwrap(),
            "github.com ssh-ed25519 AAAA\r\n"
        );
        assert!(created.is_empty());
    }

    #[test]
    fn user_false_is_reported_not_overridden() {
        let d = tempfile::tempdir().unwrap();
        let cfg = cfg_in(d.path());
        std::fs::write(
            d.path().join("nix.conf"),
            "builders-use-substitutes = false\n",
        )
        .unwrap();
        let s = sync(&cfg, Some(&wanted()), &mut Created::new());
        let nc = s.statuses.iter().find(|s| s.kind == "nix.conf").unwrap();
        assert_eq!(nc.state, "failed");
        assert!(nc.detail.as_ref().unwrap().contains("nix.conf:1 sets"));
        // Their line stays as it was; builderd's block holds only what they did not set.
        let text = std::fs::read_to_string(d.path().join("nix.conf")).unwrap();
        assert_eq!(
            block::remove(&text, "nb"),
            "builders-use-substitutes = false\n"
        );
        assert_eq!(
            block::body(&text, "nb").unwrap(),
            ["build-poll-interval = 1"]
        );
    }

    #[test]
    fn the_poll_interval_is_registered_unless_the_user_set_one() {
        let d = tempfile::tempdir().unwrap();
        let cfg = cfg_in(d.path());
        let conf = d.path().join("nix.conf");
        sync(&cfg, Some(&wanted()), &mut Created::new());
        let text = std::fs::read_to_string(&conf).unwrap();
        assert_eq!(
            block::body(&text, "nb").unwrap(),
            ["builders-use-substitutes = true", "build-poll-interval = 1"]
        );

        // The user's own value stays, and builderd's block no longer says one.
        let mine = "build-poll-interval = 3\n";
        std::fs::write(&conf, mine).unwrap();
        let s = sync(&cfg, Some(&wanted()), &mut Created::new());
        let nc = s.statuses.iter().find(|s| s.kind == "nix.conf").unwrap();
        assert_eq!(nc.state, "ok", "{nc:?}");
        let text = std::fs::read_to_string(&conf).unwrap();
        assert_eq!(
            block::body(&text, "nb").unwrap(),
            ["builders-use-substitutes = true"]
        );
        assert_eq!(block::remove(&text, "nb"), mine);

        // Both set by the user: no block at all.
        let mine = "build-poll-interval = 3\nbuilders-use-substitutes = true\n";
        std::fs::write(&conf, mine).unwrap();
        sync(&cfg, Some(&wanted()), &mut Created::new());
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), mine);

        // And nix-darwin's users are told both.
        let snippet = wanted().nix_darwin_snippet();
        assert!(
            snippet.ends_with(
                "nix.settings.builders-use-substitutes = true;\nnix.settings.build-poll-interval = 1;"
            ),
            "{snippet}"
        );
    }

    #[test]
    fn determinate_gets_nix_custom_conf_and_includes_are_followed() {
        let d = tempfile::tempdir().unwrap();
        let cfg = cfg_in(d.path());
        let conf = "# Generated by Determinate Nix\n!include nix.custom.conf\n";
        std::fs::write(d.path().join("nix.conf"), conf).unwrap();
        let s = sync(&cfg, Some(&wanted()), &mut Created::new());
        assert!(s.nix_conf_changed);
        assert_eq!(
            std::fs::read_to_string(d.path().join("nix.conf")).unwrap(),
            conf
        );
        let custom = std::fs::read_to_string(d.path().join("nix.custom.conf")).unwrap();
        assert!(
            custom.contains("builders-use-substitutes = true"),
            "{custom}"
        );

        // Set right in an included file already: not added again (ours keeps the rest).
        std::fs::write(
            d.path().join("nix.custom.conf"),
            "builders-use-substitutes = true\n",
        )
        .unwrap();
        let s = sync(&cfg, Some(&wanted()), &mut Created::new());
        let nc = s.statuses.iter().find(|s| s.kind == "nix.conf").unwrap();
        assert_eq!(nc.state, "ok");
        assert!(
            nc.detail.as_ref().unwrap().contains("already set at"),
            "{nc:?}"
        );
        let custom = std::fs::read_to_string(d.path().join("nix.custom.conf")).unwrap();
        assert_eq!(
            block::remove(&custom, "nb"),
            "builders-use-substitutes = true\n"
        );
        assert_eq!(
            block::body(&custom, "nb").unwrap(),
            ["build-poll-interval = 1"]
        );
    }

    #[test]
    fn nix_darwin_links_are_never_written_through() {
        let d = tempfile::tempdir().unwrap();
        let cfg = cfg_in(d.path());
        std::os::unix::fs::symlink("/etc/static/nix/nix.conf", d.path().join("nix.conf")).unwrap();
        let s = sync(&cfg, Some(&wanted()), &mut Created::new());
        let nc = s.statuses.iter().find(|s| s.kind == "nix.conf").unwrap();
        assert_eq!(nc.state, "owned-by-nix-darwin");
        assert!(nc.detail.as_ref().unwrap().contains("nix.buildMachines"));
        assert!(
            std::fs::symlink_metadata(d.path().join("nix.conf"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn symlinked_dotfile_is_written_at_its_target() {
        let d = tempfile::tempdir().unwrap();
        let cfg = cfg_in(d.path());
        std::fs::write(d.path().join("real_kh"), "a b c\n").unwrap();
        std::os::unix::fs::symlink(d.path().join("real_kh"), d.path().join("kh")).unwrap();
        sync(&cfg, Some(&wanted()), &mut Created::new());
        assert!(
            std::fs::symlink_metadata(d.path().join("kh"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let t = std::fs::read_to_string(d.path().join("real_kh")).unwrap();
        assert!(t.contains("[localhost]:2299 ssh-ed25519") && t.ends_with("a b c\n"));
    }
}
