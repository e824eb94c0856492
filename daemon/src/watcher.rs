//! Watches the files builderd keeps true (registrations, the user's public key, the builder's
//! host key) and tells the supervisor when one of them changed.
//!
//! Directories are watched, not files, so that editors that replace a file by rename and files
//! that are deleted and made again are followed. Reads do not count, only changes. A file that is
//! being written in place is reported once its writer closed it (or, where the platform has no
//! close event, once it has been quiet for a moment), so that builderd never reads it half-written.

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

pub struct FileWatcher {
    watcher: RecommendedWatcher,
    /// Debounces raw events into changes; stopped with the watcher.
    settle: tokio::task::JoinHandle<()>,
    dirs: BTreeSet<PathBuf>,
    files: std::sync::Arc<std::sync::Mutex<BTreeSet<PathBuf>>>,
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.settle.abort();
    }
}

impl FileWatcher {
    /// Starts watching; changes of the files given to [`FileWatcher::set_files`] go to `out`.
    pub fn new(out: mpsc::Sender<Changed>) -> notify::Result<FileWatcher> {
        let files: std::sync::Arc<std::sync::Mutex<BTreeSet<PathBuf>>> = Default::default();
        let (raw_tx, raw_rx) = mpsc::unbounded_channel::<(PathBuf, Kind)>();
        let filter = files.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            let kind = match ev.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => Kind::Closed,
                EventKind::Modify(ModifyKind::Data(_)) | EventKind::Modify(ModifyKind::Any) => {
                    Kind::Written
                }
                EventKind::Create(_)
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Name(_)) => Kind::Replaced,
                EventKind::Modify(_) => Kind::Replaced,
                _ => return,
            };
            let files = filter.lock().expect("not poisoned");
            for p in ev.paths {
                if files.contains(&p) {
                    let _ = raw_tx.send((p, kind));
                }
            }
        })?;
        let settle = tokio::spawn(settle(raw_rx, out));
        Ok(FileWatcher {
            watcher,
            settle,
            dirs: BTreeSet::new(),
            files,
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
        for d in dirs.difference(&self.dirs.clone()) {
            if self.watcher.watch(d, RecursiveMode::NonRecursive).is_ok() {
                self.dirs.insert(d.clone());
            }
        }
        for d in self.dirs.clone().difference(&dirs) {
            let _ = self.watcher.unwatch(d);
            self.dirs.remove(d);
        }
        *self.files.lock().expect("not poisoned") = set;
    }

    pub fn watched_dirs(&self) -> &BTreeSet<PathBuf> {
        &self.dirs
    }
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
async fn settle(mut raw: mpsc::UnboundedReceiver<(PathBuf, Kind)>, out: mpsc::Sender<Changed>) {
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
