//! State directories of destroyed instances, removed in the background.
//!
//! Removing a directory on ext4 frees its blocks and its inode, which costs
//! about 100 µs of CPU even for an empty one, while renaming it costs about
//! 20 µs. A destroyed instance's state directory is therefore renamed into
//! `<data dir>/trash/`, and one thread of low priority (nice 19) removes
//! what lands there. On a busy machine the removals wait for idle CPU
//! instead of slowing deletions and the janitor's sweep.
//!
//! Nothing in the trash is ever read again, so a crash only delays its
//! removal: the next process that opens the data directory empties it.
//! Replicas sharing the directory may try to remove the same entries. The
//! second removal finds the entry gone and counts it as done.

use std::{
    io,
    path::{Path, PathBuf},
    sync::mpsc,
};

use rand::Rng;
use tracing::{debug, warn};

/// Niceness of the removal thread: the lowest priority.
const LOW_PRIORITY: i32 = 19;

#[derive(Debug)]
pub(super) struct Trash {
    dir: PathBuf,
    /// Sends entries to the removal thread; `None` when it could not start.
    remover: Option<mpsc::Sender<PathBuf>>,
}

impl Trash {
    /// Opens the trash directory and starts emptying it.
    pub(super) fn open(dir: PathBuf) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let (sender, receiver) = mpsc::channel();
        for entry in std::fs::read_dir(&dir)? {
            let _ = sender.send(entry?.path());
        }

        let spawned = std::thread::Builder::new().name("trash".to_owned()).spawn(move || remove_forever(receiver));
        let remover = match spawned {
            Ok(_) => Some(sender),
            Err(err) => {
                warn!(path = %dir.display(), error = %err, "failed to start the trash thread, removing inline");
                None
            }
        };
        Ok(Self { dir, remover })
    }

    /// Removes a directory, or moves it to the trash for later removal.
    /// A directory that is already gone counts as removed.
    pub(super) fn discard(&self, path: &Path) -> io::Result<()> {
        let Some(remover) = &self.remover else { return remove_dir_all_if_exists(path) };

        let suffix: u64 = rand::rng().random();
        let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        let target = self.dir.join(format!("{name}-{suffix:016x}"));
        match std::fs::rename(path, &target) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            // A rename can fail where a removal works (another file system
            // mounted inside the data directory, say).
            Err(_) => return remove_dir_all_if_exists(path),
        }
        if let Err(mpsc::SendError(target)) = remover.send(target) {
            return remove_dir_all_if_exists(&target);
        }
        Ok(())
    }
}

/// Removes every entry received, until the last sender is dropped.
fn remove_forever(entries: mpsc::Receiver<PathBuf>) {
    // On Linux, a PRIO_PROCESS priority set with pid 0 applies to the
    // calling thread only, not to the whole process.
    if let Err(err) = rustix::process::setpriority_process(None, LOW_PRIORITY) {
        debug!(error = %err, "failed to lower the priority of the trash thread");
    }
    for entry in entries {
        if let Err(err) = remove_dir_all_if_exists(&entry) {
            warn!(path = %entry.display(), error = %err, "failed to remove a discarded state directory");
        }
    }
}

fn remove_dir_all_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn wait_until_empty(dir: &Path) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::fs::read_dir(dir).unwrap().next().is_none() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn discard_moves_then_removes() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        std::fs::create_dir_all(state.join("nested")).unwrap();
        std::fs::write(state.join("nested/file"), b"x").unwrap();
        let trash = Trash::open(root.path().join("trash")).unwrap();

        trash.discard(&state).unwrap();

        assert!(!state.exists());
        assert!(wait_until_empty(&root.path().join("trash")), "the trash was not emptied");
    }

    #[test]
    fn open_removes_leftovers() {
        let root = tempfile::tempdir().unwrap();
        let leftover = root.path().join("trash/0123456789abcdef-00");
        std::fs::create_dir_all(&leftover).unwrap();

        let _trash = Trash::open(root.path().join("trash")).unwrap();

        assert!(wait_until_empty(&root.path().join("trash")), "the leftover stayed");
    }

    #[test]
    fn discard_missing_directory() {
        let root = tempfile::tempdir().unwrap();
        let trash = Trash::open(root.path().join("trash")).unwrap();
        trash.discard(&root.path().join("never-created")).unwrap();
    }
}
