//! Locks for one host: in-process reader-writer locks, backed by `flock(2)`
//! on files under `<data dir>/locks/` so that several processes on the host
//! (a `serve` and an operator command working on the same data directory)
//! exclude each other too.
//!
//! Inside the process, tokio's `RwLock` is fair: once a writer waits, new
//! readers queue behind it, so a stream of readers cannot starve a delete.
//! Across processes, `flock` gives no such guarantee.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    os::fd::AsFd,
    path::PathBuf,
    sync::{Arc, Mutex, Weak},
};

use async_trait::async_trait;
use rustix::fs::{FlockOperation, flock};
use tokio::sync::RwLock;

use super::{Error, Guard, LockBackend, LockKey, Mode};

type Slot = Arc<RwLock<()>>;

/// In-process locks, optionally shared with other processes of the host
/// through lock files.
pub struct LocalLocks {
    files: Option<PathBuf>,
    slots: Mutex<HashMap<LockKey, Weak<RwLock<()>>>>,
}

impl LocalLocks {
    /// Locks that only exclude tasks of this process.
    pub fn in_process() -> Self {
        Self { files: None, slots: Mutex::default() }
    }

    /// Locks that also exclude other processes using the same directory.
    pub fn with_files(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self { files: Some(dir), slots: Mutex::default() })
    }

    fn slot(&self, key: &LockKey) -> Slot {
        let mut slots = self.slots.lock().expect("lock table poisoned");
        if let Some(slot) = slots.get(key).and_then(Weak::upgrade) {
            return slot;
        }

        // Forget slots nobody holds any more, so the table stays as small
        // as the set of locks in use.
        if slots.len() >= 1024 {
            slots.retain(|_, slot| slot.strong_count() > 0);
        }
        let slot = Slot::default();
        slots.insert(key.clone(), Arc::downgrade(&slot));
        slot
    }

    async fn lock_file(&self, key: &LockKey, mode: Mode) -> Result<Option<File>, Error> {
        let Some(dir) = &self.files else { return Ok(None) };
        let name = key.name();
        let path = dir.join(&name);
        let io_error = |source| Error::Io { name: name.clone(), source };

        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_error)?;
        let (blocking, nonblocking) = match mode {
            Mode::Read => (FlockOperation::LockShared, FlockOperation::NonBlockingLockShared),
            Mode::Write => (FlockOperation::LockExclusive, FlockOperation::NonBlockingLockExclusive),
        };

        // Uncontended locks are taken without leaving the async task; only
        // a lock held by another process waits on a blocking thread.
        if flock(file.as_fd(), nonblocking).is_ok() {
            return Ok(Some(file));
        }
        let file = tokio::task::spawn_blocking(move || flock(file.as_fd(), blocking).map(|()| file))
            .await
            .map_err(|err| io_error(std::io::Error::other(err)))?
            .map_err(|err| io_error(err.into()))?;
        Ok(Some(file))
    }
}

/// A held local lock. The file lock is released first, then the in-process
/// lock, so that no other task of this process can take the in-process lock
/// while the file is still locked.
struct Held<G> {
    _file: Option<File>,
    _guard: G,
}

#[async_trait]
impl LockBackend for LocalLocks {
    async fn acquire(&self, key: &LockKey, mode: Mode) -> Result<Guard, Error> {
        let slot = self.slot(key);
        match mode {
            Mode::Read => {
                let guard = slot.read_owned().await;
                let file = self.lock_file(key, mode).await?;
                Ok(Guard::new(Held { _file: file, _guard: guard }))
            }
            Mode::Write => {
                let guard = slot.write_owned().await;
                let file = self.lock_file(key, mode).await?;
                Ok(Guard::new(Held { _file: file, _guard: guard }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn writer_excludes_readers_until_dropped() {
        let locks = LocalLocks::in_process();
        let key = LockKey::challenge("1");
        let writer = locks.acquire(&key, Mode::Write).await.unwrap();

        let blocked = tokio::time::timeout(Duration::from_millis(50), locks.acquire(&key, Mode::Read)).await;
        assert!(blocked.is_err(), "a reader got in while a writer held the lock");

        drop(writer);
        let reader = tokio::time::timeout(Duration::from_millis(500), locks.acquire(&key, Mode::Read)).await;
        assert!(reader.is_ok(), "the reader still waits after the writer dropped its guard");
    }

    #[tokio::test]
    async fn readers_share_the_lock() {
        let locks = LocalLocks::in_process();
        let key = LockKey::challenge("1");
        let _first = locks.acquire(&key, Mode::Read).await.unwrap();
        let second = tokio::time::timeout(Duration::from_millis(500), locks.acquire(&key, Mode::Read)).await;
        assert!(second.is_ok());
    }

    #[tokio::test]
    async fn file_locks_exclude_another_lock_table() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalLocks::with_files(dir.path()).unwrap();
        let second = LocalLocks::with_files(dir.path()).unwrap();
        let key = LockKey::challenge("1");

        let writer = first.acquire(&key, Mode::Write).await.unwrap();
        let blocked = tokio::time::timeout(Duration::from_millis(100), second.acquire(&key, Mode::Read)).await;
        assert!(blocked.is_err(), "the file lock did not exclude the second table");

        drop(writer);
        let reader = tokio::time::timeout(Duration::from_secs(2), second.acquire(&key, Mode::Read)).await;
        assert!(reader.is_ok());
    }

    #[tokio::test]
    async fn cancelled_wait_leaves_the_lock_free() {
        let locks = LocalLocks::in_process();
        let key = LockKey::challenge("1");
        let reader = locks.acquire(&key, Mode::Read).await.unwrap();
        let cancelled = tokio::time::timeout(Duration::from_millis(20), locks.acquire(&key, Mode::Write)).await;
        assert!(cancelled.is_err());
        drop(reader);

        let writer = tokio::time::timeout(Duration::from_millis(500), locks.acquire(&key, Mode::Write)).await;
        assert!(writer.is_ok(), "a cancelled writer left the lock held");
    }
}
