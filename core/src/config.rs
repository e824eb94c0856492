//! The TOML config: one file, every path with a platform default, every error naming the file, the
//! line and the key.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the config file is looked for when neither `--config` nor `BUILDERD_CONFIG` names one.
pub fn default_config_path() -> PathBuf {
    app_dirs().0.join("config.toml")
}

/// builderd's config and data directories: the platform's, for the user whose home
/// [`home_dir`] names (under `sudo`, the invoking user's, not root's).
fn app_dirs() -> (PathBuf, PathBuf) {
    if sudo_user().is_some() {
        return app_dirs_in(&home_dir());
    }
    match directories::ProjectDirs::from("", "", "builderd") {
        Some(d) => (
            d.config_dir().to_path_buf(),
            d.data_local_dir().to_path_buf(),
        ),
        None => app_dirs_in(&home_dir()),
    }
}

/// The platform's config and data directories of builderd under `home`.
fn app_dirs_in(home: &Path) -> (PathBuf, PathBuf) {
    app_dirs_for(home, cfg!(target_os = "macos"))
}

/// builderd's config and data directories under `home`, on macOS or on Linux: also what the
/// Homebrew formula and the nix-darwin module must name.
pub fn app_dirs_for(home: &Path, macos: bool) -> (PathBuf, PathBuf) {
    if macos {
        let d = home.join("Library/Application Support/builderd");
        (d.clone(), d)
    } else {
        (
            home.join(".config/builderd"),
            home.join(".local/share/builderd"),
        )
    }
}

/// The user who ran `sudo`, when this runs as root under it.
fn sudo_user() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    std::env::var("SUDO_USER")
        .ok()
        .filter(|u| !u.is_empty() && u != "root")
}

/// The config file to use: the flag, then `BUILDERD_CONFIG`, then the platform default.
pub fn resolve_config_path(flag: Option<&Path>) -> PathBuf {
    config_source(flag).0
}

/// The config file to use and what named it (`None`: the default, which may be missing).
pub fn config_source(flag: Option<&Path>) -> (PathBuf, Option<&'static str>) {
    if let Some(p) = flag {
        return (p.to_path_buf(), Some("--config"));
    }
    match std::env::var_os("BUILDERD_CONFIG") {
        Some(p) if !p.is_empty() => (PathBuf::from(p), Some("BUILDERD_CONFIG")),
        _ => (default_config_path(), None),
    }
}

/// Where `sudo builderctl install` puts the root service's own copy of the config, binary and
/// logs: a directory only root can change.
pub fn system_dir() -> PathBuf {
    system_dir_for(cfg!(target_os = "macos"))
}

/// [`system_dir`] on macOS or on Linux.
pub fn system_dir_for(macos: bool) -> PathBuf {
    if macos {
        PathBuf::from("/Library/Application Support/org.builderd")
    } else {
        PathBuf::from("/usr/local/lib/builderd")
    }
}

/// The only PATH a root builderd uses to find the tools it runs (`nix`, `launchctl`,
/// `systemctl`, `lsof`, `debootstrap`): directories only root can change, never the PATH of
/// whoever started it.
pub const ROOT_PATH: &str = "/usr/bin:/bin:/usr/sbin:/sbin:/nix/var/nix/profiles/default/bin";

/// The base the embedded context builds from unless configured otherwise: pinned by suite.
pub const DEFAULT_BASE: &str = "debian:trixie-slim";

/// The daemon's pid file in the state dir, which it holds locked for its lifetime: one daemon
/// per state dir.
pub const PID_FILE: &str = "builderd.pid";

/// Where a root builderd serving another user keeps builder volumes on Linux.
pub const ROOT_VOLUMES: &str = "/var/lib/builderd/volumes";

/// Where root makes a base image with debootstrap (Linux): a directory only root may reach,
/// never one in a user's state dir.
pub const ROOT_WORK: &str = "/var/lib/builderd/work";

/// The volume a root builderd serving another user keeps for the state dir `state_dir`.
pub fn root_volume_dir(state_dir: &Path) -> PathBuf {
    Path::new(ROOT_VOLUMES).join(crate::ident::owner_id(state_dir))
}

/// The copy of the builder's public host key a root service keeps in the state dir for the
/// user's own tools, when the volume is out of the user's reach ([`ROOT_VOLUMES`]).
pub fn host_key_copy(state_dir: &Path) -> PathBuf {
    state_dir.join("builder_host_key.pub")
}

/// Root's own files for each registration role: the only files outside the served user's
/// reach that a root builderd serving another user edits.
#[derive(Debug, Clone, PartialEq)]
pub struct RootFiles {
    pub machines_file: PathBuf,
    pub nix_conf: PathBuf,
    pub known_hosts: PathBuf,
    pub ssh_config: PathBuf,
}

/// [`RootFiles`]: `/etc/nix/machines`, `/etc/nix/nix.conf` and root's `~/.ssh/known_hosts` and
/// `~/.ssh/config`. A debug build (the tests) reads them under `BUILDERD_TEST_ROOT` instead
/// (`etc/nix/…`, `root/.ssh/…`); a release build never does.
pub fn root_files() -> RootFiles {
    #[cfg(debug_assertions)]
    if let Some(r) = std::env::var_os("BUILDERD_TEST_ROOT").filter(|r| !r.is_empty()) {
        let r = PathBuf::from(r);
        return RootFiles {
            machines_file: r.join("etc/nix/machines"),
            nix_conf: r.join("etc/nix/nix.conf"),
            known_hosts: r.join("root/.ssh/known_hosts"),
            ssh_config: r.join("root/.ssh/config"),
        };
    }
    let home = root_home();
    RootFiles {
        machines_file: "/etc/nix/machines".into(),
        nix_conf: "/etc/nix/nix.conf".into(),
        known_hosts: home.join(".ssh/known_hosts"),
        ssh_config: home.join(".ssh/config"),
    }
}

/// The root service's copy of the config.
pub fn system_config_path() -> PathBuf {
    system_dir().join(SYSTEM_CONFIG_NAME)
}

/// The name of root's copy of the config in [`system_dir`].
pub const SYSTEM_CONFIG_NAME: &str = "config.toml";

/// The user a root builderd serves (`BUILDERD_OWNER_UID`, set by `sudo builderctl install`), when
/// this process is root and that user is not.
pub fn served_user() -> Option<u32> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    std::env::var("BUILDERD_OWNER_UID")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&u| u != 0)
}

/// A root builderd serving another user reads only a config that only root can change: the
/// config chooses which files root edits and what it writes there. `sudo builderctl install`
/// copies the user's config to such a place.
pub fn check_trusted(path: &Path) -> Result<(), ConfigError> {
    let Some(uid) = served_user() else {
        return Ok(());
    };
    let untrusted = |why: String| ConfigError::Untrusted {
        path: path.to_path_buf(),
        uid,
        why,
    };
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(path).map_err(|e| untrusted(format!("it cannot be read ({e})")))?;
    // The path as given and where its links lead: both must be root's alone.
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let owner = [path, real.as_path()]
        .into_iter()
        .map(|p| crate::ident::controller_of(p).0)
        .find(|&o| o != 0)
        .unwrap_or(0);
    if owner != 0 {
        return Err(untrusted(format!(
            "uid {owner} owns it or a directory above it"
        )));
    }
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(untrusted(format!(
            "it is writable by others than root (owner uid {}, mode {:o})",
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "config {path}: a root builderd serving uid {uid} reads only a config that only root can change, and {why}. Run `sudo builderctl install`, which copies your config to {}",
        system_config_path().display()
    )]
    Untrusted {
        path: PathBuf,
        uid: u32,
        why: String,
    },
    #[error(
        "config {path} does not exist (named by {by}): check the path; only the default config may be missing"
    )]
    Missing { path: PathBuf, by: &'static str },
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}{line}: `{key}` {problem}", line = line_suffix(*.line))]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        key: String,
        problem: String,
    },
}

fn line_suffix(line: Option<usize>) -> String {
    match line {
        Some(l) => format!(", line {l}"),
        None => " (default value)".to_string(),
    }
}

/// How the machines file names the builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UriForm {
    /// The alias: it works with every Nix and keeps connection sharing.
    #[default]
    Auto,
    /// `ssh-ng://ALIAS`, resolved by the ssh_config block builderd writes.
    Alias,
    /// `ssh-ng://root@localhost:PORT` (Nix 2.31 or newer only).
    HostPort,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// A build context directory with the same volume contract; the embedded one when unset.
    pub context: Option<PathBuf>,
    /// Repository name of the built image; the tag is a hash of the context.
    pub repository: String,
    /// The `BASE_IMAGE` build argument of the embedded context.
    pub base_image: String,
    /// `linux/arm64` or `linux/amd64`; the host's own architecture when unset.
    pub platform: Option<String>,
    /// The Debian mirror debootstrap uses for a local base, when an official Debian base
    /// (`debian:SUITE[-slim]`) cannot be pulled (Linux only).
    pub debian_mirror: String,
    /// Kept so that older configs still load; the suite now comes from `base_image`.
    pub debian_suite: String,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            context: None,
            repository: "nix-builder".into(),
            base_image: DEFAULT_BASE.into(),
            platform: None,
            debian_mirror: "http://deb.debian.org/debian".into(),
            debian_suite: "trixie".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuilderConfig {
    /// `--privileged`, for an engine where the narrow privileges Nix's sandbox needs are not
    /// enough. Off by default: the container gets CAP_SYS_ADMIN with seccomp and AppArmor
    /// unconfined instead, which is what the sandbox needs.
    pub privileged: bool,
    /// Nix's build sandbox in the builder (with `sandbox-fallback = false`: a sandbox that
    /// cannot start fails the build). Without it Linux builds may give other bytes.
    pub sandbox: bool,
    /// The builder's `substituters`; empty for an offline builder.
    pub substituters: String,
    pub trusted_public_keys: Option<String>,
    /// Garbage collection thresholds of the builder's store, in bytes.
    pub min_free: u64,
    pub max_free: u64,
    /// Builds at once (the machines line's max-jobs and the builder's `max-jobs`); unset, one
    /// per CPU the engine gives the builder (at most one per GiB of its memory).
    pub max_jobs: Option<u32>,
    /// The builder's `cores` (each build's parallelism); unset, the engine's CPUs.
    pub cores: Option<u32>,
    pub speed_factor: u32,
    pub supported_features: Vec<String>,
    /// Systems to register; derived from the builder's architecture when unset.
    pub systems: Option<Vec<String>>,
}

impl Default for BuilderConfig {
    fn default() -> Self {
        Self {
            privileged: false,
            sandbox: true,
            substituters: "https://cache.nixos.org/".into(),
            trusted_public_keys: None,
            min_free: 1 << 30,
            max_free: 4 << 30,
            max_jobs: None,
            cores: None,
            speed_factor: 1,
            supported_features: vec!["benchmark".into(), "big-parallel".into()],
            systems: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    pub machines_file: PathBuf,
    pub nix_conf: PathBuf,
    /// known_hosts files, the user's and root's.
    pub known_hosts: Vec<PathBuf>,
    /// ssh_config files, the user's and root's; the n-th is paired with the n-th known_hosts file.
    pub ssh_config: Vec<PathBuf>,
    /// The ssh_config `Host` alias; the container name when unset.
    pub alias: Option<String>,
    pub uri: UriForm,
    /// Restart the nix-daemon after nix.conf changed.
    pub restart_nix_daemon: bool,
    /// Take the machines line out while the builder has been unhealthy for
    /// `unlist_unhealthy_after` seconds, so that Nix fails fast instead of hanging on SSH.
    pub unlist_unhealthy: bool,
    pub unlist_unhealthy_after: u64,
    /// No longer read: whether every user's builds may go to a served user's builder is the
    /// administrator's choice (`sudo builderctl install --all-users`, [`crate::served::ALL_USERS`]),
    /// never the config's, whose values are the user's. Kept only to name the fix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all_users: Option<bool>,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        let home = home_dir();
        let root_home = root_home();
        let mut known_hosts = vec![home.join(".ssh/known_hosts")];
        let mut ssh_config = vec![home.join(".ssh/config")];
        if home != root_home {
            known_hosts.push(root_home.join(".ssh/known_hosts"));
            ssh_config.push(root_home.join(".ssh/config"));
        }
        Self {
            machines_file: "/etc/nix/machines".into(),
            nix_conf: "/etc/nix/nix.conf".into(),
            known_hosts,
            ssh_config,
            alias: None,
            uri: UriForm::Auto,
            restart_nix_daemon: true,
            unlist_unhealthy: true,
            unlist_unhealthy_after: 120,
            all_users: None,
        }
    }
}

/// A remote builder: a Linux host with Nix reached over SSH.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteConfig {
    /// Names its ssh_config alias and its blocks in the shared files.
    pub name: String,
    /// Host name or IP address.
    pub address: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    #[serde(default = "default_remote_user")]
    pub user: String,
    /// The private key to log in with; `private_key` when unset.
    #[serde(default)]
    pub identity: Option<PathBuf>,
    /// `ssh-ed25519 AAAA…`, pinned as given. When unset, the first key seen is shown in
    /// status and pinned only once `builderctl trust NAME` confirms it.
    #[serde(default)]
    pub host_key: Option<String>,
    /// Systems to register; those the host reports running when unset.
    #[serde(default)]
    pub systems: Option<Vec<String>>,
    #[serde(default = "default_max_jobs")]
    pub max_jobs: u32,
    #[serde(default = "default_speed_factor")]
    pub speed_factor: u32,
    #[serde(default)]
    pub supported_features: Vec<String>,
    /// Seconds of failed checks after which its machines line is taken out (with
    /// `unlist_unhealthy` on), so that Nix stops picking a host that is gone.
    #[serde(default = "default_remote_unlist_after")]
    pub unlist_after: u64,
}

/// A remote that stopped answering is taken out sooner than the local builder: Nix hands it
/// builds until then, and each one waits for the connection to fail.
fn default_remote_unlist_after() -> u64 {
    60
}

/// The longest `unlist_after` builderd takes: a day.
const MAX_UNLIST_AFTER: u64 = 86_400;

fn default_ssh_port() -> u16 {
    22
}

fn default_remote_user() -> String {
    "root".into()
}

fn default_max_jobs() -> u32 {
    4
}

fn default_speed_factor() -> u32 {
    1
}

/// A name builderd may use for a container, a remote, an alias and a block.
fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
}

/// Why `s` may not be an alias (the builder's or a remote's), whose ssh_config `Host` block and
/// known_hosts line would otherwise stand for a real host in root's files: `None` when it may.
fn not_a_builder_name(s: &str) -> Option<&'static str> {
    if s.contains(':') {
        Some("which is an IPv6 address")
    } else if s.contains('.') {
        Some("which has a dot, as host names and IP addresses do")
    } else if s.eq_ignore_ascii_case("localhost") || s.eq_ignore_ascii_case("localhost6") {
        Some("which is the host itself")
    } else if s.chars().all(|c| c.is_ascii_digit())
        || (s.len() > 2
            && s[..2].eq_ignore_ascii_case("0x")
            && s[2..].chars().all(|c| c.is_ascii_hexdigit()))
    {
        Some("which is a number, an IP address to ssh")
    } else {
        None
    }
}

/// A host name, an IPv4 or an IPv6 address: nothing that could break an ssh_config line.
fn is_address(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric() || c == ':')
}

/// A path that lands in an ssh_config line (quoted when it has spaces).
fn is_line_safe_path(p: &Path) -> bool {
    let s = p.to_string_lossy();
    !s.contains(|c: char| c.is_control() || c == '"' || c == '\\')
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Host port on 127.0.0.1 that the container's port 22 is published on.
    pub port: u16,
    pub public_key: PathBuf,
    pub private_key: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Container name; also names builderd's entries in shared files.
    pub container_name: String,
    /// The engine to use; DOCKER_HOST, the docker context, Docker Desktop's socket when unset.
    pub docker_host: Option<String>,
    /// Seconds between health checks while up.
    pub health_interval: u64,
    /// Consecutive failed health checks that restart the container.
    pub health_failures_before_restart: u32,
    /// builderd itself listens on `port` and relays to the container, which it stops after
    /// `idle_stop` seconds without a connection and starts again at the next one.
    pub on_demand: bool,
    /// Seconds without an open connection before an on-demand builder is stopped.
    pub idle_stop: u64,
    pub image: ImageConfig,
    pub builder: BuilderConfig,
    pub registration: RegistrationConfig,
    /// Remote builders besides the local container (`[[remote]]` tables).
    pub remote: Vec<RemoteConfig>,
    /// The file this was read from, and its text, for error messages.
    #[serde(skip)]
    pub file: PathBuf,
    #[serde(skip)]
    text: String,
}

impl Default for Config {
    fn default() -> Self {
        let home = home_dir();
        let state_dir = app_dirs().1;
        Self {
            port: 2222,
            public_key: home.join(".ssh/id_ed25519.pub"),
            private_key: home.join(".ssh/id_ed25519"),
            socket: state_dir.join("builderd.sock"),
            state_dir,
            container_name: "nix-builder".into(),
            docker_host: None,
            health_interval: 30,
            health_failures_before_restart: 3,
            on_demand: false,
            idle_stop: 600,
            image: ImageConfig::default(),
            builder: BuilderConfig::default(),
            registration: RegistrationConfig::default(),
            remote: Vec::new(),
            file: PathBuf::new(),
            text: String::new(),
        }
    }
}

/// The user's home. Under `sudo` (which may set HOME to root's) it is the invoking user's, so
/// that `sudo builderctl install` serves the user's keys, files and Docker.
pub fn home_dir() -> PathBuf {
    if let Some(user) = sudo_user() {
        // The user database (Directory Services on macOS), not a parse of /etc/passwd.
        let home = nix::unistd::User::from_name(&user)
            .ok()
            .flatten()
            .map(|u| u.dir)
            .filter(|d| !d.as_os_str().is_empty());
        return home.unwrap_or_else(|| {
            if cfg!(target_os = "macos") {
                PathBuf::from("/Users").join(&user)
            } else {
                PathBuf::from("/home").join(&user)
            }
        });
    }
    directories::BaseDirs::new()
        .map(|b| b.home_dir().to_path_buf())
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The longest Unix socket path, in bytes: sockaddr_un's path is 104 bytes on macOS and 108 on
/// Linux, the final NUL included.
pub fn socket_path_max(macos: bool) -> usize {
    if macos { 103 } else { 107 }
}

/// Root's home, from the user database (Directory Services on macOS), like [`home_dir`].
pub fn root_home() -> PathBuf {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(0))
        .ok()
        .flatten()
        .map(|u| u.dir)
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| {
            PathBuf::from(if cfg!(target_os = "macos") {
                "/var/root"
            } else {
                "/root"
            })
        })
}

impl Config {
    /// Reads and validates the config that `flag`, `BUILDERD_CONFIG` or the default names. Only
    /// the default may be missing (it means the defaults); a named file that does not exist is
    /// an error, so that a typo never drives the default instance.
    pub fn load_from(flag: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, by) = config_source(flag);
        if let Some(by) = by
            && std::fs::symlink_metadata(&path)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        {
            return Err(ConfigError::Missing { path, by });
        }
        Self::load(&path)
    }

    /// Reads and validates the config at `path`. A missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::from_toml(path, &text)
    }

    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Self::from_toml_serving(path, text, served_user())
    }

    /// Parses and validates `text` as a root builderd serving uid `served` reads it (with the
    /// served user's checks when `served` is a user's uid), wherever this runs: `sudo builderctl
    /// install` checks the copy it makes before the service ever starts on it.
    pub fn from_toml_serving(
        path: &Path,
        text: &str,
        served: Option<u32>,
    ) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        cfg.expand_tildes();
        cfg.validate(path, text, served.filter(|&u| u != 0))?;
        cfg.file = path.to_path_buf();
        cfg.text = text.to_string();
        Ok(cfg)
    }

    fn expand_tildes(&mut self) {
        let home = home_dir();
        let ex = |p: &mut PathBuf| {
            if let Ok(rest) = p.strip_prefix("~") {
                *p = home.join(rest);
            }
        };
        ex(&mut self.public_key);
        ex(&mut self.private_key);
        ex(&mut self.state_dir);
        ex(&mut self.socket);
        if let Some(c) = &mut self.image.context {
            ex(c);
        }
        ex(&mut self.registration.machines_file);
        ex(&mut self.registration.nix_conf);
        self.registration.known_hosts.iter_mut().for_each(ex);
        self.registration.ssh_config.iter_mut().for_each(ex);
        for r in &mut self.remote {
            if let Some(i) = &mut r.identity {
                ex(i);
            }
        }
    }

    fn validate(&self, path: &Path, text: &str, served: Option<u32>) -> Result<(), ConfigError> {
        let bad = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: line_of(text, key),
            key: key.to_string(),
            problem,
        };
        if self.port == 0 {
            return Err(bad("port", "is 0: choose a free port such as 2222".into()));
        }
        if self.port == 22 {
            return Err(bad(
                "port",
                "is 22, the host's own SSH port: choose a free port such as 2222".into(),
            ));
        }
        if self.port < 1024 {
            return Err(bad(
                "port",
                format!(
                    "is {}, below 1024: ports under 1024 are the system's services, which the builder must not stand in for; choose a free port from 1024 up, such as 2222",
                    self.port
                ),
            ));
        }
        if !is_plain_name(&self.container_name) {
            return Err(bad(
                "container_name",
                format!(
                    "is {:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit",
                    self.container_name
                ),
            ));
        }
        // The alias names ssh_config and known_hosts blocks, root's too: it may name no host
        // that exists.
        let alias_key = if self.registration.alias.is_some() {
            "alias"
        } else {
            "container_name"
        };
        if let Some(why) = not_a_builder_name(self.alias()) {
            return Err(bad(
                alias_key,
                format!(
                    "is {:?}, {why}: the alias names the builder in ssh_config and known_hosts (root's too), so it has no dot, is not `localhost` and not an IP address. Choose a name such as \"nix-builder\"{}",
                    self.alias(),
                    if alias_key == "container_name" {
                        ", or set `alias` in [registration]"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if let Some(a) = &self.registration.alias
            && !is_word(a)
        {
            return Err(bad(
                "alias",
                format!("is {a:?}: use a plain host name (letters, digits, '-', '_')"),
            ));
        }
        if self.registration.all_users.is_some() {
            return Err(bad(
                "all_users",
                "is no longer read from the config: whether every user's builds may go to a served user's builder is the administrator's choice. Remove the key; on a Linux root service, install with `sudo builderctl install --all-users` instead".into(),
            ));
        }
        if self.idle_stop == 0 {
            return Err(bad(
                "idle_stop",
                "must be at least 1 (seconds without a connection before the builder sleeps)"
                    .into(),
            ));
        }
        self.validate_values(&bad)?;
        if self.health_interval == 0 {
            return Err(bad(
                "health_interval",
                "must be at least 1 (seconds)".into(),
            ));
        }
        let mut paths: Vec<(&str, &Path)> = vec![
            ("public_key", &self.public_key),
            ("private_key", &self.private_key),
            ("state_dir", &self.state_dir),
            ("socket", &self.socket),
            ("machines_file", &self.registration.machines_file),
            ("nix_conf", &self.registration.nix_conf),
        ];
        if let Some(c) = &self.image.context {
            paths.push(("context", c));
        }
        for p in &self.registration.known_hosts {
            paths.push(("known_hosts", p));
        }
        for p in &self.registration.ssh_config {
            paths.push(("ssh_config", p));
        }
        for (key, p) in paths {
            let text = p.display().to_string();
            if let Some(c) = text.chars().find(|c| c.is_control() || *c == '"') {
                return Err(bad(
                    key,
                    format!(
                        "is {text:?}, which holds {c:?}: a path written into ssh_config and the machines file may hold no quote or control character"
                    ),
                ));
            }
            if !p.is_absolute() {
                return Err(bad(
                    key,
                    format!(
                        "is the relative path {}: give an absolute path (or one starting with ~/)",
                        p.display()
                    ),
                ));
            }
        }
        if let Some(uid) = served {
            self.validate_served_paths(uid, &bad)?;
        }
        self.validate_remotes(path, text)?;
        let max = socket_path_max(cfg!(target_os = "macos"));
        let len = self.socket.as_os_str().len();
        if len > max {
            return Err(bad(
                "socket",
                format!(
                    "is {} bytes long ({}), more than the {max} a Unix socket path may have here: set `socket` to a shorter path",
                    len,
                    self.socket.display()
                ),
            ));
        }
        // Looked for as the build reads the context: as the served user, for a root builderd.
        if let Some(c) = &self.image.context
            && !crate::asuser::as_reader_of(served, c, || Ok(c.join("Dockerfile").is_file()))
                .unwrap_or(false)
        {
            return Err(bad(
                "context",
                format!(
                    "{} has no Dockerfile: point it at a build context directory, or remove the key to use the built-in one",
                    c.display()
                ),
            ));
        }
        Ok(())
    }

    fn validate_remotes(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let mut names = vec![self.container_name.as_str(), self.alias()];
        for (n, r) in self.remote.iter().enumerate() {
            // An error names the line in this remote's own table.
            let bad = |key: &str, problem: String| ConfigError::Invalid {
                path: path.to_path_buf(),
                line: remote_line(text, n, key),
                key: key.to_string(),
                problem,
            };
            let who = format!("(remote {:?})", r.name);
            if !is_plain_name(&r.name) {
                return Err(bad(
                    "name",
                    format!(
                        "is {:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit",
                        r.name
                    ),
                ));
            }
            if names.contains(&r.name.as_str()) {
                return Err(bad(
                    "name",
                    format!(
                        "{:?} is used twice (by another remote, the container or its alias): give each builder its own name",
                        r.name
                    ),
                ));
            }
            if let Some(why) = not_a_builder_name(&r.name) {
                return Err(bad(
                    "name",
                    format!(
                        "is {:?}, {why}: a remote's name is its ssh_config alias (root's too), so it has no dot, is not `localhost` and not an IP address; put the host in `address` and choose a name such as \"big-box\"",
                        r.name
                    ),
                ));
            }
            names.push(&r.name);
            if !is_address(&r.address) {
                return Err(bad(
                    "address",
                    format!(
                        "{who} is {:?}: give a host name or an IP address",
                        r.address
                    ),
                ));
            }
            if r.port == 0 {
                return Err(bad("port", format!("{who} is 0: give the host's SSH port")));
            }
            if !(1..=MAX_UNLIST_AFTER).contains(&r.unlist_after) {
                return Err(bad(
                    "unlist_after",
                    format!(
                        "{who} is {}: give seconds from 1 to {MAX_UNLIST_AFTER} (`unlist_unhealthy = false` keeps every builder listed)",
                        r.unlist_after
                    ),
                ));
            }
            if !is_plain_name(&r.user) {
                return Err(bad(
                    "user",
                    format!("{who} is {:?}: give a plain user name", r.user),
                ));
            }
            if let Some(i) = &r.identity
                && (!i.is_absolute() || !is_line_safe_path(i))
            {
                return Err(bad(
                    "identity",
                    format!(
                        "{who} is {}: give an absolute path (or one starting with ~/) without quotes or control characters",
                        i.display()
                    ),
                ));
            }
            if let Some(k) = &r.host_key
                && let Err(e) = crate::hostkey::parse_host_key_line(k)
            {
                return Err(bad("host_key", format!("{who} {e}")));
            }
            if let Some(s) = &r.systems
                && (s.is_empty() || s.iter().any(|s| !is_system(s)))
            {
                return Err(bad(
                    "systems",
                    format!(
                        "{who} is {s:?}: name Nix systems such as \"x86_64-linux\", or remove the key"
                    ),
                ));
            }
            if r.max_jobs == 0 || r.speed_factor == 0 {
                return Err(bad(
                    if r.max_jobs == 0 {
                        "max_jobs"
                    } else {
                        "speed_factor"
                    },
                    format!("{who} must be at least 1"),
                ));
            }
            if let Some(f) = r.supported_features.iter().find(|f| !is_word(f)) {
                return Err(bad(
                    "supported_features",
                    format!("{who} has {f:?}: use letters, digits, '_', '.', '+' and '-'"),
                ));
            }
        }
        if !is_line_safe_path(&self.private_key) && !self.remote.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: line_of(text, "private_key"),
                key: "private_key".into(),
                problem:
                    "has quotes or control characters, which cannot go into an ssh_config line"
                        .into(),
            });
        }
        Ok(())
    }

    /// A root builderd serving `uid` edits, creates and removes files where the config says,
    /// and the config's values are the user's: each such path is root's own fixed file for its
    /// role ([`root_files`]) or one the user controls (then edited as the user,
    /// [`crate::asuser::as_owner_of`]). The state dir and the socket's directory are the user's.
    fn validate_served_paths(
        &self,
        uid: u32,
        bad: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if cfg!(target_os = "linux")
            && let Some(h) = &self.docker_host
        {
            return Err(bad(
                "docker_host",
                format!(
                    "is {h:?}: a root builderd on Linux serving uid {uid} uses root's own engine (/var/run/docker.sock, or the DOCKER_HOST of its service), never one the config names. Remove the key"
                ),
            ));
        }
        let fixed = root_files();
        let reg = &self.registration;
        let mut files: Vec<(&str, &Path, &Path)> = vec![
            ("machines_file", &reg.machines_file, &fixed.machines_file),
            ("nix_conf", &reg.nix_conf, &fixed.nix_conf),
        ];
        files.extend(
            reg.known_hosts
                .iter()
                .map(|p| ("known_hosts", p.as_path(), fixed.known_hosts.as_path())),
        );
        files.extend(
            reg.ssh_config
                .iter()
                .map(|p| ("ssh_config", p.as_path(), fixed.ssh_config.as_path())),
        );
        for (key, p, own) in files {
            let by = crate::ident::controller_of(p).0;
            if p == own || by == uid {
                continue;
            }
            return Err(bad(
                key,
                format!(
                    "is {}, which uid {by} controls: a root builderd serving uid {uid} edits only root's own {} or a file uid {uid} controls (in their home). Set `{key}` to one of those, or remove the key for the default",
                    p.display(),
                    own.display()
                ),
            ));
        }
        let dirs: [(&str, &Path, &Path); 2] = [
            ("state_dir", &self.state_dir, &self.state_dir),
            (
                "socket",
                &self.socket,
                self.socket.parent().unwrap_or(Path::new("/")),
            ),
        ];
        for (key, p, dir) in dirs {
            let by = crate::ident::controller_of(dir).0;
            if by != uid {
                return Err(bad(
                    key,
                    format!(
                        "is {}, in {} which uid {by} controls: a root builderd serving uid {uid} keeps its state and socket only where uid {uid} controls (in their home). Set `{key}` there, or remove the key for the default",
                        p.display(),
                        dir.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every value that lands in a line of a file (the machines line, ssh_config, the builder's
    /// nix.conf, a build argument): nothing that could end the line, split a field or open a
    /// quote.
    fn validate_values(
        &self,
        bad: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let lists: [(&str, &[String]); 2] = [
            ("supported_features", &self.builder.supported_features),
            ("systems", self.builder.systems.as_deref().unwrap_or(&[])),
        ];
        for (key, list) in lists {
            if let Some(v) = list.iter().find(|v| !is_word(v)) {
                return Err(bad(
                    key,
                    format!(
                        "holds {v:?}: each entry is one word of letters, digits, '-', '_', '.' or '+'"
                    ),
                ));
            }
        }
        for (key, v) in [
            ("max_jobs", self.builder.max_jobs),
            ("cores", self.builder.cores),
        ] {
            if v == Some(0) {
                return Err(bad(
                    key,
                    "is 0: set at least 1, or remove the key to follow the engine's CPUs".into(),
                ));
            }
        }
        if self.builder.systems.as_ref().is_some_and(|s| s.is_empty()) {
            return Err(bad(
                "systems",
                "is empty: name at least one system, or remove the key".into(),
            ));
        }
        // The machines line splits on whitespace and has no quoting. The alias form leaves the
        // key to the ssh_config block (quoted there); only host:port puts it in the line.
        if self.registration.uri == UriForm::HostPort
            && self
                .private_key
                .display()
                .to_string()
                .contains(char::is_whitespace)
        {
            return Err(bad(
                "private_key",
                format!(
                    "is {:?}: with `uri = \"host-port\"` the machines file holds the key's path, which cannot have a space; use a key path without one, or the alias form",
                    self.private_key.display()
                ),
            ));
        }
        let one_line: Vec<(&str, Option<&str>)> = vec![
            ("substituters", Some(&self.builder.substituters)),
            (
                "trusted_public_keys",
                self.builder.trusted_public_keys.as_deref(),
            ),
        ];
        for (key, v) in one_line {
            if let Some(v) = v
                && v.chars().any(|c| c.is_control() || "\"'\\".contains(c))
            {
                return Err(bad(
                    key,
                    format!("is {v:?}: it may hold no quote, backslash or control character"),
                ));
            }
        }
        let words: Vec<(&str, Option<&str>)> = vec![
            ("docker_host", self.docker_host.as_deref()),
            ("repository", Some(&self.image.repository)),
            ("base_image", Some(&self.image.base_image)),
            ("platform", self.image.platform.as_deref()),
            ("debian_mirror", Some(&self.image.debian_mirror)),
            ("debian_suite", Some(&self.image.debian_suite)),
        ];
        for (key, v) in words {
            if let Some(v) = v
                && (v.is_empty()
                    || v.chars()
                        .any(|c| c.is_control() || c.is_whitespace() || "\"'\\".contains(c)))
            {
                return Err(bad(
                    key,
                    format!(
                        "is {v:?}: give one word, without spaces, quotes or control characters"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The key a remote logs in with.
    pub fn remote_identity<'a>(&'a self, r: &'a RemoteConfig) -> &'a Path {
        r.identity.as_deref().unwrap_or(&self.private_key)
    }

    /// The config file again, when its text changed since this was read (`Ok(None)`: unchanged,
    /// or read from no file).
    pub fn reloaded(&self) -> Result<Option<Config>, ConfigError> {
        if self.file.as_os_str().is_empty() {
            return Ok(None);
        }
        check_trusted(&self.file)?;
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        if text == self.text {
            return Ok(None);
        }
        Config::from_toml(&self.file, &text).map(Some)
    }

    /// An error about `key`, naming this config's file and the key's line.
    pub fn key_error(&self, key: &str, problem: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.file.clone(),
            line: line_of(&self.text, key),
            key: key.to_string(),
            problem,
        }
    }

    /// The user the builder's registration is limited to, when it is: a root builderd on Linux
    /// serving another user (who is root in the builder) unless its service was installed with
    /// `--all-users` (the unit's environment, which only root writes). Its
    /// machines line and nix.conf setting then go only into files that user controls, never
    /// into files every user's builds read. (On a Mac the served user is the machine's admin,
    /// and a root service serving root serves the one who may change `/nix/store` anyway.)
    pub fn registration_only_for(&self) -> Option<u32> {
        if cfg!(target_os = "linux") && !crate::served::flag(crate::served::ALL_USERS) {
            served_user()
        } else {
            None
        }
    }

    /// The ssh_config alias for the builder.
    pub fn alias(&self) -> &str {
        self.registration
            .alias
            .as_deref()
            .unwrap_or(&self.container_name)
    }

    /// The bind-mounted volume directory: in the state dir, except for a root builderd serving
    /// another user on Linux, which keeps it in a directory only root controls
    /// ([`ROOT_VOLUMES`]). A root dockerd resolves a bind mount's source anew at every start, so
    /// a volume in the user's state dir could be swapped for a link to any host path and
    /// mounted into a container the user is root in. (Docker Desktop resolves bind sources as
    /// the user, and cannot share /var/lib: on macOS the volume stays in the state dir.)
    pub fn volume_dir(&self) -> PathBuf {
        if cfg!(target_os = "linux") && served_user().is_some() {
            return root_volume_dir(&self.state_dir);
        }
        self.state_dir.join("volume")
    }

    /// The builder's public host key file, as a client sees it: the volume's, or, when this
    /// process keeps no volume of its own there, the one a root service keeps for this state
    /// dir in [`ROOT_VOLUMES`] (root can reach it), or else the copy that service hands to the
    /// user ([`host_key_copy`]).
    pub fn host_key_file(&self) -> PathBuf {
        let own = self.volume_dir().join("id_ed25519.pub");
        if cfg!(target_os = "linux") && !own.exists() {
            let root = root_volume_dir(&self.state_dir).join("id_ed25519.pub");
            if root.exists() {
                return root;
            }
            let copy = host_key_copy(&self.state_dir);
            if copy.exists() {
                return copy;
            }
        }
        own
    }

    pub fn log_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }

    pub fn daemon_log(&self) -> PathBuf {
        self.log_dir().join("builderd.log")
    }

    /// The platform the image is built for.
    pub fn platform(&self) -> String {
        self.image
            .platform
            .clone()
            .unwrap_or_else(|| match std::env::consts::ARCH {
                "aarch64" => "linux/arm64".into(),
                _ => "linux/amd64".into(),
            })
    }
}

/// A Nix system name such as `x86_64-linux`: what may go into the machines line.
pub fn is_system(s: &str) -> bool {
    let mut parts = s.splitn(2, '-');
    let (Some(arch), Some(os)) = (parts.next(), parts.next()) else {
        return false;
    };
    !arch.is_empty()
        && !os.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// One word of a machines line or an ssh_config host name: letters, digits, `-`, `_`, `.`, `+`,
/// not starting with `-`.
fn is_word(v: &str) -> bool {
    !v.is_empty()
        && !v.starts_with('-')
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
}

/// The 1-based line on which `key` is set, for error messages: found with toml's spans, at
/// the top level or in one of the config's tables (not in an array of tables such as
/// `[[remote]]`, whose keys are named by their own errors), never in a comment or a string.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    fn find(table: &toml::de::DeTable<'_>, key: &str) -> Option<usize> {
        if let Some((k, _)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == key) {
            return Some(k.span().start);
        }
        table.iter().find_map(|(_, v)| match v.get_ref() {
            toml::de::DeValue::Table(t) => find(t, key),
            _ => None,
        })
    }
    let doc = toml::de::DeTable::parse(text).ok()?;
    let at = find(doc.get_ref(), key)?;
    Some(text[..at].matches('\n').count() + 1)
}

/// The 1-based line on which `key` is set in the `n`-th `[[remote]]` table.
fn remote_line(text: &str, n: usize, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim() == "[[remote]]")
        .nth(n)?
        .0;
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .map_or(lines.len(), |i| start + 1 + i);
    line_of(&lines[start + 1..end].join("\n"), key)
        .map(|l| start + 1 + l)
        .or(Some(start + 1))
}

impl fmt::Display for UriForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UriForm::Auto => "auto",
            UriForm::Alias => "alias",
            UriForm::HostPort => "host-port",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(Path::new("/cfg/builderd.toml"), text)
    }

    #[test]
    fn all_users_is_the_administrators_not_the_configs() {
        for v in ["true", "false"] {
            let e = load(&format!("[registration]\nall_users = {v}\n")).unwrap_err();
            let m = e.to_string();
            assert!(m.contains("line 2: `all_users`"), "{m}");
            assert!(m.contains("sudo builderctl install --all-users"), "{m}");
        }
    }

    #[test]
    fn defaults_are_valid_and_absolute() {
        let c = load("").unwrap();
        assert_eq!(c.port, 2222);
        assert!(c.public_key.is_absolute());
        assert_eq!(c.alias(), "nix-builder");
        assert_eq!(
            c.registration.machines_file,
            PathBuf::from("/etc/nix/machines")
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = load("port = 2300\nprot = 1\n").unwrap_err().to_string();
        assert!(e.contains("/cfg/builderd.toml"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("unknown field `prot`"), "{e}");
    }

    #[test]
    fn wrong_type_names_line_and_key() {
        let e = load("\n[builder]\nprivileged = \"yes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("privileged") || e.contains("boolean"), "{e}");
    }

    #[test]
    fn port_zero_and_22_are_refused() {
        let e = load("port = 0\n").unwrap_err().to_string();
        assert!(e.contains("line 1: `port` is 0"), "{e}");
        let e = load("\nport = 22\n").unwrap_err().to_string();
        assert!(e.contains("line 2: `port` is 22"), "{e}");
    }

    #[test]
    fn relative_path_is_refused() {
        let e = load("state_dir = \"state\"\n").unwrap_err().to_string();
        assert!(e.contains("`state_dir` is the relative path state"), "{e}");
    }

    #[test]
    fn socket_paths_fit_sockaddr_un() {
        assert_eq!(socket_path_max(true), 104 - 1);
        assert_eq!(socket_path_max(false), 108 - 1);
    }

    #[test]
    fn app_dirs_under_a_home() {
        let home = Path::new("/home/me");
        let mac = PathBuf::from("/home/me/Library/Application Support/builderd");
        assert_eq!(app_dirs_for(home, true), (mac.clone(), mac));
        assert_eq!(
            app_dirs_for(home, false),
            (
                PathBuf::from("/home/me/.config/builderd"),
                PathBuf::from("/home/me/.local/share/builderd")
            )
        );
        assert_eq!(
            app_dirs_in(home),
            app_dirs_for(home, cfg!(target_os = "macos"))
        );
        assert_eq!(
            system_dir_for(true),
            PathBuf::from("/Library/Application Support/org.builderd")
        );
        assert_eq!(
            system_dir_for(false),
            PathBuf::from("/usr/local/lib/builderd")
        );
        assert_eq!(system_dir(), system_dir_for(cfg!(target_os = "macos")));
    }

    #[test]
    fn homes_come_from_the_user_database() {
        let root = nix::unistd::User::from_name("root").unwrap().unwrap();
        assert!(root.dir.is_absolute());
        assert_eq!(
            nix::unistd::User::from_name("no-such-user-here").unwrap(),
            None
        );
    }

    #[test]
    fn tilde_is_expanded() {
        let c = load("public_key = \"~/k.pub\"\n").unwrap();
        assert_eq!(c.public_key, home_dir().join("k.pub"));
    }

    #[test]
    fn context_without_dockerfile_is_refused() {
        let e = load("[image]\ncontext = \"/nonexistent/ctx\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2: `context`"), "{e}");
        assert!(e.contains("has no Dockerfile"), "{e}");
    }

    #[test]
    fn remotes_are_read_with_their_defaults() {
        let c = load(
            "[[remote]]\nname = \"big-box\"\naddress = \"127.0.0.2\"\nidentity = \"~/.ssh/other\"\n\n[[remote]]\nname = \"b2\"\naddress = \"b2.example\"\nport = 2200\nuser = \"nix\"\nsystems = [\"aarch64-linux\"]\n",
        )
        .unwrap();
        assert_eq!(c.remote.len(), 2);
        let (a, b) = (&c.remote[0], &c.remote[1]);
        assert_eq!(
            (a.port, a.user.as_str(), a.max_jobs, a.speed_factor),
            (22, "root", 4, 1)
        );
        // A remote's own unlisting time, apart from the local builder's.
        assert_eq!(
            (a.unlist_after, c.registration.unlist_unhealthy_after),
            (60, 120)
        );
        assert_eq!(c.remote_identity(a), home_dir().join(".ssh/other"));
        assert_eq!(c.remote_identity(b), c.private_key);
        assert_eq!(
            b.systems.as_deref(),
            Some(&["aarch64-linux".to_string()][..])
        );
    }

    #[test]
    fn remote_values_that_would_break_a_line_are_refused() {
        let base = "[[remote]]\nname = \"r\"\naddress = \"127.0.0.2\"\n";
        for (extra, key) in [
            ("", ""),
            ("user = \"ro ot\"\n", "`user`"),
            ("supported_features = [\"a,b\"]\n", "`supported_features`"),
            ("systems = [\"x86_64 linux\"]\n", "`systems`"),
            ("host_key = \"ssh-ed25519 not-base64\"\n", "`host_key`"),
            ("identity = \"/k\\\"x\"\n", "`identity`"),
            ("max_jobs = 0\n", "`max_jobs`"),
            ("unlist_after = 0\n", "line 4: `unlist_after`"),
            ("unlist_after = 86401\n", "`unlist_after`"),
            ("unlist_after = 5\n", ""),
        ] {
            let r = load(&format!("{base}{extra}"));
            if key.is_empty() {
                r.unwrap();
            } else {
                let e = r.unwrap_err().to_string();
                assert!(e.contains(key), "{extra}: {e}");
            }
        }
        for (text, key) in [
            ("[[remote]]\nname = \"a b\"\naddress = \"h\"\n", "`name`"),
            (
                "[[remote]]\nname = \"nix-builder\"\naddress = \"h\"\n",
                "used twice",
            ),
            (
                "[[remote]]\nname = \"r\"\naddress = \"h\\nProxyCommand x\"\n",
                "`address`",
            ),
            (
                "[[remote]]\nname = \"r\"\naddress = \"h #x\"\n",
                "`address`",
            ),
            (
                "[[remote]]\nname = \"a\"\naddress = \"h\"\n\n[[remote]]\nname = \"b\"\naddress = \"h h\"\n",
                "line 7: `address`",
            ),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn values_that_would_break_a_line_are_refused() {
        for (text, key, line) in [
            (
                "\n[builder]\nsupported_features = [\"kvm\\nssh-ng://evil x86_64-linux\"]\n",
                "supported_features",
                3,
            ),
            (
                "[builder]\nsystems = [\"x86_64-linux kvm\"]\n",
                "systems",
                2,
            ),
            ("[builder]\nsystems = []\n", "systems", 2),
            (
                "[registration]\nalias = \"a\\nProxyCommand x\"\n",
                "alias",
                2,
            ),
            ("[registration]\nalias = \"-oProxyCommand=x\"\n", "alias", 2),
            (
                "[registration]\nknown_hosts = [\"/k\\n  ProxyCommand sh\"]\n",
                "known_hosts",
                2,
            ),
            (
                "private_key = \"/a b/id\"\n[registration]\nuri = \"host-port\"\n",
                "private_key",
                1,
            ),
            ("private_key = \"/a\\\"b/id\"\n", "private_key", 1),
            (
                "[builder]\nsubstituters = \"x\\ny = 1\"\n",
                "substituters",
                2,
            ),
            ("docker_host = \"unix:///a b\"\n", "docker_host", 1),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(
                e.contains(&format!("line {line}: `{key}`")),
                "{text:?}: {e}"
            );
        }
        // In the alias form the key's path goes to the ssh_config block, quoted: a space is fine.
        assert!(load("private_key = \"/a b/id\"\n").is_ok());
        let ok = load(
            "[builder]\nsupported_features = [\"kvm\", \"gccarch-armv8-a\"]\nsystems = [\"x86_64-linux\"]\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn a_socket_path_too_long_for_the_os_is_refused() {
        let long = format!("/tmp/{}/s.sock", "d".repeat(120));
        let e = load(&format!("\nsocket = \"{long}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2: `socket` is 132 bytes long"), "{e}");
        assert!(e.contains("set `socket` to a shorter path"), "{e}");
        let fits = if cfg!(target_os = "macos") { 98 } else { 102 };
        load(&format!("socket = \"/tmp/{}\"\n", "d".repeat(fits))).unwrap();
    }

    #[test]
    fn bad_container_name_is_refused() {
        let e = load("container_name = \"a b\"\n").unwrap_err().to_string();
        assert!(e.contains("`container_name`"), "{e}");
    }
}
