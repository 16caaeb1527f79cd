//! Locks for one host: in-process reader-writer locks, backed by
//! byte-range locks in one lock file, so that several processes on the host
//! (a `serve` and an operator command working on the same data directory)
//! exclude each other too.
//!
//! Each lock key owns one byte of `<data dir>/lock`, at an offset derived
//! from a SHA-256 digest of its name, and is locked with Linux open file
//! description (OFD) locks (`F_OFD_SETLK`). Every acquisition opens the file
//! anew, so two tasks of one process are two lock owners, like two
//! processes, and closing the descriptor releases the lock. One file serves
//! every key: locking an id never creates a file, whatever ids clients send.
//!
//! Inside the process, tokio's `RwLock` is fair: once a writer waits, new
//! readers queue behind it, so a stream of readers cannot starve a delete.
//! Across processes, the kernel gives no such guarantee.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io,
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{Arc, Mutex, Weak},
};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;

use super::{Error, Guard, LockBackend, LockKey, Mode};

type Slot = Arc<RwLock<()>>;

/// In-process locks, optionally shared with other processes of the host
/// through a lock file.
pub struct LocalLocks {
    file: Option<PathBuf>,
    slots: Mutex<HashMap<LockKey, Weak<RwLock<()>>>>,
}

impl LocalLocks {
    /// Locks that only exclude tasks of this process.
    pub fn in_process() -> Self {
        Self { file: None, slots: Mutex::default() }
    }

    /// Locks that also exclude other processes using the same lock file.
    pub fn with_file(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        Ok(Self { file: Some(path), slots: Mutex::default() })
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

    async fn lock_range(&self, key: &LockKey, mode: Mode) -> Result<Option<File>, Error> {
        let Some(path) = &self.file else { return Ok(None) };
        let io_error = |source| Error::Io { name: key.name(), source };
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io_error)?;
        let offset = byte_offset(key);

        // Uncontended locks are taken without leaving the async task; only
        // a lock held by another process waits on a blocking thread.
        match lock_byte(&file, offset, mode, false) {
            Ok(()) => return Ok(Some(file)),
            Err(err) if is_contended(&err) => {}
            Err(err) => return Err(io_error(err)),
        }
        tokio::task::spawn_blocking(move || lock_byte(&file, offset, mode, true).map(|()| file))
            .await
            .map_err(|err| io_error(io::Error::other(err)))?
            .map(Some)
            .map_err(io_error)
    }
}

/// Offset of the byte that stands for a key: a 62-bit digest of its name,
/// plus one so that no key shares the world lock's byte 0.
fn byte_offset(key: &LockKey) -> i64 {
    if *key == LockKey::World {
        return 0;
    }
    let digest = Sha256::digest(key.name().as_bytes());
    let bits = u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 digest has 8 bytes"));
    i64::try_from(bits >> 2).expect("62 bits fit in an i64") + 1
}

fn is_contended(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EACCES))
}

/// Locks one byte of `file` with an OFD lock, waiting when `wait` is set.
fn lock_byte(file: &File, offset: i64, mode: Mode, wait: bool) -> io::Result<()> {
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are valid.
    let mut range: libc::flock = unsafe { std::mem::zeroed() };
    range.l_type = match mode {
        Mode::Read => libc::F_RDLCK,
        Mode::Write => libc::F_WRLCK,
    } as libc::c_short;
    range.l_whence = libc::SEEK_SET as libc::c_short;
    range.l_start = offset;
    range.l_len = 1;

    let command = if wait { libc::F_OFD_SETLKW } else { libc::F_OFD_SETLK };
    loop {
        // SAFETY: the descriptor is open for the duration of the call and
        // `range` is a valid `flock` that outlives it.
        let result = unsafe { libc::fcntl(file.as_raw_fd(), command, &mut range) };
        if result == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A held local lock. The file lock is released first, then the in-process
/// lock, so that no other task of this process can take the in-process lock
/// while the byte is still locked.
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
                let file = self.lock_range(key, mode).await?;
                Ok(Guard::new(Held { _file: file, _guard: guard }))
            }
            Mode::Write => {
                let guard = slot.write_owned().await;
                let file = self.lock_range(key, mode).await?;
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
        let first = LocalLocks::with_file(dir.path().join("lock")).unwrap();
        let second = LocalLocks::with_file(dir.path().join("lock")).unwrap();
        let key = LockKey::challenge("1");

        let writer = first.acquire(&key, Mode::Write).await.unwrap();
        let blocked = tokio::time::timeout(Duration::from_millis(100), second.acquire(&key, Mode::Read)).await;
        assert!(blocked.is_err(), "the file lock did not exclude the second table");

        drop(writer);
        let reader = tokio::time::timeout(Duration::from_secs(2), second.acquire(&key, Mode::Read)).await;
        assert!(reader.is_ok());
    }

    #[tokio::test]
    async fn different_keys_do_not_exclude_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalLocks::with_file(dir.path().join("lock")).unwrap();
        let second = LocalLocks::with_file(dir.path().join("lock")).unwrap();

        let _writer = first.acquire(&LockKey::challenge("1"), Mode::Write).await.unwrap();
        let other =
            tokio::time::timeout(Duration::from_millis(500), second.acquire(&LockKey::challenge("2"), Mode::Write))
                .await;
        assert!(other.is_ok(), "a lock on challenge 1 blocked challenge 2");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "locking created files");
    }

    #[test]
    fn offsets_differ_by_key() {
        let keys = [LockKey::World, LockKey::challenge("1"), LockKey::challenge("2"), LockKey::instance("1", "1")];
        let mut offsets: Vec<i64> = keys.iter().map(byte_offset).collect();
        assert_eq!(offsets[0], 0);
        assert!(offsets[1..].iter().all(|offset| *offset > 0));
        offsets.sort();
        offsets.dedup();
        assert_eq!(offsets.len(), keys.len());
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
