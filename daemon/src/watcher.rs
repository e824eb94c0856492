//! Watches the files builderd keeps true (registrations, the user's public key, the builder's
//! host key) and tells the supervisor when one of them changed.
//!
//! Directories are watched, not files, so that editors that replace a file by rename and files
//! that are deleted and made again are followed. Reads do not count, only changes. A file that is
//! being written in place is reported once its writer closed it (or, where the platform has no
//! close event, once it has been quiet for a moment), so that builderd never reads it half-written.
//!
//! On macOS notify's kqueue backend is used (it needs only libSystem, so builderd links without
//! Apple's SDK). kqueue watches vnodes, not names: a directory's event does not say which entry
//! changed (notify guesses one), and a write in place is seen only on a watched file. So on macOS
//! every event in a watched directory counts as a change of every followed file in it, the
//! followed files are watched themselves, and a file's watch is set again once it was replaced.
//! Whatever a watcher still misses, the periodic health tick repairs.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// How long a file must be quiet before it is reported.
const SETTLE: Duration = Duration::from_millis(5);
/// How long an in-place write may stay open before the file is reported anyway.
const OPEN_WRITE_LIMIT: Duration = Duration::from_millis(500);

/// A change to one watched file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed(pub PathBuf);

/// kqueue (macOS): events name vnodes, not the entries that changed.
const BY_VNODE: bool = cfg!(target_os = "macos");

type Shared<T> = std::sync::Arc<std::sync::Mutex<T>>;

pub struct FileWatcher {
    watcher: Shared<RecommendedWatcher>,
    /// Debounces raw events into changes; stopped with the watcher.
    settle: tokio::task::JoinHandle<()>,
    dirs: BTreeSet<PathBuf>,
    files: Shared<BTreeSet<PathBuf>>,
    /// Watched directories that were removed: their watch is gone with them.
    lost: Shared<BTreeSet<PathBuf>>,
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.settle.abort();
    }
}

impl FileWatcher {
    /// Starts watching; changes of the files given to [`FileWatcher::set_files`] go to `out`.
    pub fn new(out: mpsc::Sender<Changed>) -> notify::Result<FileWatcher> {
        let files: Shared<BTreeSet<PathBuf>> = Default::default();
        let lost: Shared<BTreeSet<PathBuf>> = Default::default();
        let (raw_tx, raw_rx) = mpsc::unbounded_channel::<(PathBuf, Kind)>();
        let (filter, gone) = (files.clone(), lost.clone());
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            let Some(kind) = kind_of(&ev.kind) else {
                return;
            };
            let files = filter.lock().expect("not poisoned");
            if matches!(ev.kind, EventKind::Remove(_)) {
                let mut gone = gone.lock().expect("not poisoned");
                gone.extend(ev.paths.iter().filter(|p| is_dir_of(p, &files)).cloned());
            }
            for p in affected(&ev.paths, &files, BY_VNODE) {
                let _ = raw_tx.send((p, kind));
            }
        })?;
        let watcher = std::sync::Arc::new(std::sync::Mutex::new(watcher));
        let rearm = watcher.clone();
        let settle = tokio::spawn(settle(raw_rx, out, move |p: &Path| {
            if BY_VNODE {
                watch_file(&mut rearm.lock().expect("not poisoned"), p);
            }
        }));
        Ok(FileWatcher {
            watcher,
            settle,
            dirs: BTreeSet::new(),
            files,
            lost,
        })
    }

    /// The files to follow. Their directories are watched as they come to exist.
    pub fn set_files(&mut self, files: impl IntoIterator<Item = PathBuf>) {
        let mut set = BTreeSet::new();
        for f in files {
            set.insert(f.clone());
            // A symlinked file changes at its target too.
            if let Ok(t) = std::fs::canonicalize(&f)
                && t != f
            {
                set.insert(t);
            }
        }
        let dirs: BTreeSet<PathBuf> = set
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .filter(|d| d.is_dir())
            .collect();
        let mut watcher = self.watcher.lock().expect("not poisoned");
        for d in std::mem::take(&mut *self.lost.lock().expect("not poisoned")) {
            self.dirs.remove(&d);
        }
        for d in dirs.difference(&self.dirs.clone()) {
            if watcher.watch(d, RecursiveMode::NonRecursive).is_ok() {
                self.dirs.insert(d.clone());
            }
        }
        for d in self.dirs.clone().difference(&dirs) {
            let _ = watcher.unwatch(d);
            self.dirs.remove(d);
        }
        if BY_VNODE {
            for f in &set {
                watch_file(&mut watcher, f);
            }
        }
        *self.files.lock().expect("not poisoned") = set;
    }

    pub fn watched_dirs(&self) -> &BTreeSet<PathBuf> {
        &self.dirs
    }
}

/// Watches one followed file itself (kqueue: the only way to see a write in place). A watch
/// already there is replaced: the name may lead to a new file now.
fn watch_file(w: &mut RecommendedWatcher, f: &Path) {
    if f.is_file() {
        let _ = w.unwatch(f);
        let _ = w.watch(f, RecursiveMode::NonRecursive);
    }
}

/// What an event means for a followed file; `None`: nothing (a read, say).
fn kind_of(kind: &EventKind) -> Option<Kind> {
    Some(match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Kind::Closed,
        EventKind::Modify(ModifyKind::Data(_)) | EventKind::Modify(ModifyKind::Any) => {
            Kind::Written
        }
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(_) => Kind::Replaced,
        _ => return None,
    })
}

fn is_dir_of(dir: &Path, files: &BTreeSet<PathBuf>) -> bool {
    files.iter().any(|f| f.parent() == Some(dir))
}

/// The followed files an event's paths stand for. A followed file stands for itself. Where
/// events name vnodes (`by_vnode`), an event on a watched directory, or on an entry of one that
/// is not followed (kqueue's guess at what changed), stands for every followed file in it.
fn affected(paths: &[PathBuf], files: &BTreeSet<PathBuf>, by_vnode: bool) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for p in paths {
        if files.contains(p) {
            out.insert(p.clone());
        } else if by_vnode {
            let dir = if is_dir_of(p, files) {
                Some(p.as_path())
            } else {
                p.parent()
            };
            out.extend(
                files
                    .iter()
                    .filter(|f| dir.is_some() && f.parent() == dir)
                    .cloned(),
            );
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Written in place; more may follow until it is closed.
    Written,
    /// Its writer closed it.
    Closed,
    /// Created, removed or renamed: whole.
    Replaced,
}

/// Turns raw events into one report per file once it has settled.
/// `rearm` is called for each file reported, before it is reported.
async fn settle(
    mut raw: mpsc::UnboundedReceiver<(PathBuf, Kind)>,
    out: mpsc::Sender<Changed>,
    rearm: impl Fn(&Path),
) {
    // Per file: when it was last touched, and whether an in-place write is still open.
    let mut pending: HashMap<PathBuf, (tokio::time::Instant, bool, tokio::time::Instant)> =
        HashMap::new();
    loop {
        let next = pending
            .values()
            .map(|(last, open, first)| {
                if *open {
                    (*first + OPEN_WRITE_LIMIT).min(*last + OPEN_WRITE_LIMIT)
                } else {
                    *last + SETTLE
                }
            })
            .min();
        tokio::select! {
            ev = raw.recv() => match ev {
                None => return,
                Some((p, kind)) => {
                    let now = tokio::time::Instant::now();
                    let e = pending.entry(p).or_insert((now, false, now));
                    e.0 = now;
                    e.1 = match kind {
                        Kind::Written => cfg!(target_os = "linux"),
                        Kind::Closed | Kind::Replaced => false,
                    };
                }
            },
            _ = sleep_until(next), if next.is_some() => {
                let now = tokio::time::Instant::now();
                let due: Vec<PathBuf> = pending
                    .iter()
                    .filter(|(_, (last, open, first))| {
                        if *open { now >= *first + OPEN_WRITE_LIMIT } else { now >= *last + SETTLE }
                    })
                    .map(|(p, _)| p.clone())
                    .collect();
                for p in due {
                    pending.remove(&p);
                    rearm(&p);
                    if out.send(Changed(p)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(rx: &mut mpsc::Receiver<Changed>) -> Option<PathBuf> {
        tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .ok()
            .flatten()
            .map(|c| c.0)
    }

    #[tokio::test]
    async fn edits_renames_and_recreation_are_followed_reads_are_not() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("machines");
        std::fs::write(&f, "a\n").unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let mut w = FileWatcher::new(tx).unwrap();
        w.set_files([f.clone()]);

        std::fs::write(&f, "b\n").unwrap();
        assert_eq!(next(&mut rx).await, Some(f.clone()));

        let tmp = d.path().join("machines.new");
        std::fs::write(&tmp, "c\n").unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        assert_eq!(next(&mut rx).await, Some(f.clone()));

        std::fs::remove_file(&f).unwrap();
        assert_eq!(next(&mut rx).await, Some(f.clone()));
        std::fs::write(&f, "d\n").unwrap();
        assert_eq!(next(&mut rx).await, Some(f.clone()));

        // Reading, and other files in the same directory, are not changes.
        let _ = std::fs::read(&f).unwrap();
        std::fs::write(d.path().join("other"), "x").unwrap();
        assert_eq!(
            tokio::time::timeout(Duration::from_millis(300), rx.recv())
                .await
                .ok()
                .flatten(),
            None
        );
    }
}

#[cfg(test)]
mod vnode_tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    /// The events notify's kqueue backend sends (macOS), mapped as the watcher maps them there.
    #[test]
    fn kqueue_events_stand_for_every_followed_file_in_their_directory() {
        let files = set(&["/etc/nix/machines", "/etc/nix/nix.conf", "/h/.ssh/config"]);
        let both = set(&["/etc/nix/machines", "/etc/nix/nix.conf"]);
        // A write to the directory (an entry made, removed or renamed): kqueue names the
        // directory, or guesses an entry that is not watched yet, say the editor's temp file.
        let dir = [PathBuf::from("/etc/nix")];
        assert_eq!(affected(&dir, &files, true), both);
        let guess = [PathBuf::from("/etc/nix/.machines.swp")];
        assert_eq!(affected(&guess, &files, true), both);
        // A write in place on a followed file's own watch.
        let own = [PathBuf::from("/h/.ssh/config")];
        assert_eq!(affected(&own, &files, true), set(&["/h/.ssh/config"]));
        // Elsewhere: nothing.
        assert!(affected(&[PathBuf::from("/tmp/x")], &files, true).is_empty());
        // Where events name entries (inotify), only the followed file itself counts.
        assert!(affected(&guess, &files, false).is_empty());
        assert!(affected(&dir, &files, false).is_empty());
        assert_eq!(affected(&own, &files, false), set(&["/h/.ssh/config"]));
    }

    #[test]
    fn what_each_event_kind_means() {
        use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind, RenameMode};
        let k = |e| kind_of(&e);
        assert_eq!(k(EventKind::Access(AccessKind::Read)), None);
        assert_eq!(
            k(EventKind::Access(AccessKind::Close(AccessMode::Read))),
            None
        );
        assert_eq!(
            k(EventKind::Access(AccessKind::Close(AccessMode::Write))),
            Some(Kind::Closed)
        );
        // kqueue's NOTE_WRITE and NOTE_EXTEND on a file.
        assert_eq!(
            k(EventKind::Modify(ModifyKind::Data(DataChange::Any))),
            Some(Kind::Written)
        );
        assert_eq!(
            k(EventKind::Modify(ModifyKind::Data(DataChange::Size))),
            Some(Kind::Written)
        );
        // kqueue's NOTE_LINK on a directory, NOTE_ATTRIB, NOTE_RENAME, NOTE_DELETE.
        assert_eq!(k(EventKind::Modify(ModifyKind::Any)), Some(Kind::Written));
        assert_eq!(
            k(EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any))),
            Some(Kind::Replaced)
        );
        assert_eq!(
            k(EventKind::Modify(ModifyKind::Name(RenameMode::Any))),
            Some(Kind::Replaced)
        );
        assert_eq!(k(EventKind::Remove(RemoveKind::Any)), Some(Kind::Replaced));
        assert_eq!(k(EventKind::Create(CreateKind::File)), Some(Kind::Replaced));
    }

    /// A watched directory that is deleted loses its watch; once it is made again, the next
    /// `set_files` watches it again and its files are followed as before.
    #[tokio::test]
    async fn a_deleted_and_remade_directory_is_watched_again() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("nix");
        let f = dir.join("machines");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(&f, "a\n").unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let mut w = FileWatcher::new(tx).unwrap();
        w.set_files([f.clone()]);
        std::fs::remove_dir_all(&dir).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
        assert_eq!(got.ok().flatten(), Some(Changed(f.clone())));
        // Let the directory's own removal event arrive before it is made again.
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::fs::create_dir(&dir).unwrap();
        w.set_files([f.clone()]);
        std::fs::write(&f, "b\n").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
        assert_eq!(got.ok().flatten(), Some(Changed(f.clone())));
    }
}
