//! A remote builder's registrations: its machines line, its known_hosts entry and its
//! ssh_config alias, each in a block of its own keyed by the remote's name, beside the local
//! builder's blocks in the same files.
//!
//! Every value here was validated with the config (names, address, user, features, paths) or
//! parsed (the host key, the systems), so none can break a line. The known_hosts entry is under
//! the alias only (the ssh_config block sets it as `HostKeyAlias`): the user's own entries for
//! the host's real name are never touched.

use std::path::{Path, PathBuf};

use super::{Alias, Created, Synced, alias_lines, block, sync_block};
use crate::config::Config;

/// What the files must say about one remote builder whose host key is pinned.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteWanted {
    /// The alias and the block key.
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub identity: PathBuf,
    /// `TYPE AAAA…`, no comment.
    pub host_key_line: String,
    pub systems: Vec<String>,
    pub max_jobs: u32,
    pub speed_factor: u32,
    pub features: Vec<String>,
    /// Whether the machines line is listed: only after a healthy check, and not while the
    /// host has been unhealthy for too long.
    pub listed: bool,
}

impl RemoteWanted {
    /// Field 8: the base64 of the host key line.
    pub fn host_key_b64(&self) -> String {
        super::host_key_b64(&self.host_key_line)
    }

    /// The machines line in the alias form: the alias carries the user, port and key file.
    pub fn machines_line(&self) -> String {
        super::machines_line(super::MachinesLine {
            uri: &format!("ssh-ng://{}", self.name),
            systems: &self.systems,
            identity: "-",
            max_jobs: self.max_jobs,
            speed_factor: self.speed_factor,
            features: &self.features,
            host_key_line: &self.host_key_line,
        })
    }

    /// The known_hosts line, under the alias.
    pub fn known_hosts_line(&self) -> String {
        format!("{} {}", self.name, self.host_key_line)
    }

    /// The ssh_config `Host` block, hardened as the local builder's is, closed by `Host *`.
    pub fn ssh_config_lines(&self, known_hosts: Option<&Path>, control_dir: &Path) -> Vec<String> {
        alias_lines(
            &Alias {
                name: &self.name,
                host_name: &self.address,
                port: self.port,
                user: &self.user,
                identity: &self.identity,
            },
            known_hosts,
            control_dir,
        )
    }
}

/// The key of a remote's blocks: this instance's container name and the remote's name. The
/// list of remotes with blocks lives in the state dir, which the user writes: keyed by this
/// instance, no name in it can make builderd remove a block another instance (or another
/// builder) wrote.
pub fn block_name(cfg: &Config, remote: &str) -> String {
    format!("{}/{remote}", cfg.container_name)
}

/// Brings every file to what `wanted` says for each remote, and removes the blocks of the
/// remotes named in `gone`. A block an older release wrote under a configured remote's bare
/// name (root's config names it) is taken over: removed, as the keyed one is written.
pub fn sync(
    cfg: &Config,
    wanted: &[RemoteWanted],
    gone: &[String],
    created: &mut Created,
) -> Synced {
    let mut out = Synced::default();
    let reg = &cfg.registration;
    for w in wanted {
        remove_one(cfg, &w.name, created, &mut Synced::default());
        let name = &block_name(cfg, &w.name);
        let line = [w.machines_line()];
        let apply = |t: &str| block::apply(t, name, &line);
        let f: Option<&(dyn Fn(&str) -> String + Sync)> =
            if w.listed { Some(&apply) } else { None };
        let manual = line.join("\n");
        sync_block(
            "machines",
            &reg.machines_file,
            name,
            f,
            &manual,
            created,
            &mut out,
        );
        let kh = [w.known_hosts_line()];
        let f = |t: &str| block::apply(t, name, &kh);
        for p in &reg.known_hosts {
            sync_block("known_hosts", p, name, Some(&f), &kh[0], created, &mut out);
        }
        for (i, p) in reg.ssh_config.iter().enumerate() {
            let dir = p.parent().unwrap_or(Path::new("/"));
            let body = w.ssh_config_lines(reg.known_hosts.get(i).map(PathBuf::as_path), dir);
            let manual = body.join("\n");
            let f = |t: &str| block::apply(t, name, &body);
            sync_block("ssh_config", p, name, Some(&f), &manual, created, &mut out);
        }
    }
    for name in gone {
        remove_one(cfg, &block_name(cfg, name), created, &mut out);
    }
    out
}

fn remove_one(cfg: &Config, name: &str, created: &mut Created, out: &mut Synced) {
    let reg = &cfg.registration;
    let files = std::iter::once(("machines", &reg.machines_file))
        .chain(reg.known_hosts.iter().map(|p| ("known_hosts", p)))
        .chain(reg.ssh_config.iter().map(|p| ("ssh_config", p)));
    for (kind, p) in files {
        sync_block(kind, p, name, None, "", created, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBrM3rMLJ0D3PBtnPqC0IVEVH2Q9DRN2Y4E8cRBPvOeR";

    fn wanted(name: &str) -> RemoteWanted {
        RemoteWanted {
            name: name.into(),
            address: "127.0.0.2".into(),
            port: 22,
            user: "root".into(),
            identity: "/home/u/.ssh/id ed25519".into(),
            host_key_line: KEY.into(),
            systems: vec!["x86_64-linux".into()],
            max_jobs: 4,
            speed_factor: 2,
            features: vec!["big-parallel".into()],
            listed: true,
        }
    }

    fn cfg_in(d: &Path) -> Config {
        let mut c = Config::default();
        c.registration.machines_file = d.join("machines");
        c.registration.nix_conf = d.join("nix.conf");
        c.registration.known_hosts = vec![d.join("kh")];
        c.registration.ssh_config = vec![d.join("cfg")];
        c
    }

    #[test]
    fn machines_line_is_the_alias_form_with_field_8() {
        let l = wanted("big-box").machines_line();
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f.len(), 8, "{l}");
        assert_eq!(f[0], "ssh-ng://big-box");
        assert_eq!(f[2], "-");
        assert_eq!(f[3..7], ["4", "2", "big-parallel", "-"]);
        let key = base64::engine::general_purpose::STANDARD
            .decode(f[7])
            .unwrap();
        assert_eq!(String::from_utf8(key).unwrap(), format!("{KEY}\n"));
    }

    #[test]
    fn several_remotes_share_files_and_leave_the_users_bytes() {
        let d = tempfile::tempdir().unwrap();
        let cfg = cfg_in(d.path());
        let user = "# mine\nbuilder.example x86_64-linux\n";
        std::fs::write(d.path().join("machines"), user).unwrap();
        std::fs::write(d.path().join("kh"), format!("127.0.0.2 {KEY}\n")).unwrap();
        let mut created = Created::new();
        let (a, b) = (wanted("a"), wanted("b"));
        sync(&cfg, &[a.clone(), b.clone()], &[], &mut created);
        let m = std::fs::read_to_string(d.path().join("machines")).unwrap();
        assert!(m.contains(&a.machines_line()) && m.contains(&b.machines_line()));
        assert!(m.ends_with(user), "{m}");
        let c = std::fs::read_to_string(d.path().join("cfg")).unwrap();
        assert!(
            c.contains("IdentityFile \"/home/u/.ssh/id ed25519\""),
            "{c}"
        );
        assert!(c.contains("  HostKeyAlias a\n") && c.contains("  HostName 127.0.0.2\n"));
        // The user's entry for the real host name stays as it was.
        let kh = std::fs::read_to_string(d.path().join("kh")).unwrap();
        assert!(kh.ends_with(&format!("127.0.0.2 {KEY}\n")), "{kh}");
        assert!(kh.contains(&format!("\na {KEY}\n")), "{kh}");

        // Unlisted: the machines block goes, the alias and key stay.
        let b_off = RemoteWanted {
            listed: false,
            ..b.clone()
        };
        sync(&cfg, &[a.clone(), b_off], &[], &mut created);
        let m = std::fs::read_to_string(d.path().join("machines")).unwrap();
        assert!(m.contains(&a.machines_line()) && !m.contains("ssh-ng://b "));
        assert!(
            std::fs::read_to_string(d.path().join("cfg"))
                .unwrap()
                .contains("Host b\n")
        );

        // Gone: every byte of the user's comes back, and the files builderd made go.
        sync(&cfg, &[], &["a".into(), "b".into()], &mut created);
        assert_eq!(
            std::fs::read_to_string(d.path().join("machines")).unwrap(),
            user
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("kh")).unwrap(),
            format!("127.0.0.2 {KEY}\n")
        );
        assert!(!d.path().join("cfg").exists());
    }

    #[test]
    fn only_this_instances_keyed_blocks_are_ever_removed() {
        let d = tempfile::tempdir().unwrap();
        let cfg = cfg_in(d.path());
        // Another instance's block, and one an older release wrote under the bare name "a".
        let other = format!(
            "{}\nssh-ng://other x86_64-linux - 4 1 - - -\n{}\n",
            block::begin("other"),
            block::end("other")
        );
        let legacy = format!(
            "{}\nssh-ng://a x86_64-linux - 4 1 - - -\n{}\n",
            block::begin("a"),
            block::end("a")
        );
        std::fs::write(d.path().join("machines"), format!("{legacy}{other}")).unwrap();
        let mut created = Created::new();
        let a = wanted("a");
        sync(&cfg, std::slice::from_ref(&a), &[], &mut created);
        let m = std::fs::read_to_string(d.path().join("machines")).unwrap();
        assert!(m.contains(&block::begin(&block_name(&cfg, "a"))), "{m}");
        assert!(
            !m.contains(&block::begin("a")),
            "the old block was taken over: {m}"
        );
        assert!(m.ends_with(&other), "{m}");
        // Names that are not this instance's remotes (another instance's, listed by whoever
        // wrote fleet.json) reach only keys of this instance, which do not exist.
        sync(&cfg, &[], &["other".into(), "a".into()], &mut created);
        assert_eq!(
            std::fs::read_to_string(d.path().join("machines")).unwrap(),
            other
        );
    }
}
