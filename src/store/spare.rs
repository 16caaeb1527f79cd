//! Spare record files and state directories, made ahead of time.
//!
//! Creating an inode is slow on small virtual disks: a new directory or a
//! new flushed file costs about as much as running a trivial scenario (0.2
//! to 0.6 ms measured on a 2-core ext4 VM), while renaming one costs about
//! 20 µs. New instances therefore rename a spare into place, and a
//! background task makes new spares.
//!
//! Spares live in `<data dir>/spare/`: `record-<random>` files of [`SLOT`]
//! spaces, flushed with their directory, and empty `state-<random>`
//! directories. A spare is claimed by renaming it, which only one process
//! can do, so processes sharing the data directory never take the same
//! one. A `record-*` file that holds more than spaces is an intent whose
//! rename was lost in a crash; recovery adopts it.

use std::{
    fs::OpenOptions,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use rand::Rng;
use tracing::warn;

use super::intent::SLOT;

/// Spares of each kind kept ready. A deployment takes two record files
/// and one directory; the pool is refilled when half empty, so one batch
/// serves about eight deployments.
const READY: usize = 32;

const RECORD_PREFIX: &str = "record-";
const STATE_PREFIX: &str = "state-";

#[derive(Debug)]
pub(super) struct Spares {
    dir: PathBuf,
    records: Mutex<Vec<PathBuf>>,
    states: Mutex<Vec<PathBuf>>,
    refilling: AtomicBool,
}

impl Spares {
    /// Opens the spare directory and lists the spares already there.
    pub(super) fn open(dir: PathBuf) -> io::Result<Arc<Self>> {
        std::fs::create_dir_all(&dir)?;
        let (mut records, mut states) = (Vec::new(), Vec::new());
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
            if name.starts_with(RECORD_PREFIX) && is_blank(&path) {
                records.push(path);
            } else if name.starts_with(STATE_PREFIX) {
                states.push(path);
            }
        }
        Ok(Arc::new(Self {
            dir,
            records: Mutex::new(records),
            states: Mutex::new(states),
            refilling: AtomicBool::new(false),
        }))
    }

    /// Renames a spare record file to `target`. Returns `false` when no
    /// spare was left, so the caller creates the file itself.
    pub(super) fn claim_record(self: &Arc<Self>, target: &Path) -> bool {
        self.claim(&self.records, target)
    }

    /// Renames a spare state directory to `target`, whose parent must
    /// exist. Returns `false` when no spare was left.
    pub(super) fn claim_state(self: &Arc<Self>, target: &Path) -> bool {
        self.claim(&self.states, target)
    }

    fn claim(self: &Arc<Self>, pool: &Mutex<Vec<PathBuf>>, target: &Path) -> bool {
        let claimed = loop {
            let Some(spare) = pool.lock().expect("spare pool poisoned").pop() else { break false };
            // Another process may have claimed this spare: try the next one.
            if std::fs::rename(&spare, target).is_ok() {
                break true;
            }
        };

        // Refilling in batches keeps the flushes of new spares away from
        // most deployments.
        if pool.lock().expect("spare pool poisoned").len() < READY / 2 {
            self.refill();
        }
        claimed
    }

    /// Tops both pools up in the background, unless that is already under
    /// way. Does nothing outside a tokio runtime.
    fn refill(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let spares = Arc::clone(self);
        runtime.spawn_blocking(move || {
            if let Err(err) = spares.make_missing() {
                warn!(path = %spares.dir.display(), error = %err, "failed to make spare files");
            }
            spares.refilling.store(false, Ordering::Release);
        });
    }

    pub(super) fn make_missing(&self) -> io::Result<()> {
        // One syncfs for the whole batch: every flush is a cache flush of
        // the disk, which the flushes of deployments would queue behind.
        let missing = READY.saturating_sub(self.records.lock().expect("spare pool poisoned").len());
        let mut made = Vec::with_capacity(missing);
        for _ in 0..missing {
            let path = self.new_name(RECORD_PREFIX);
            let mut file = OpenOptions::new().write(true).create_new(true).open(&path)?;
            file.write_all(&[b' '; SLOT])?;
            made.push(path);
        }
        if !made.is_empty() {
            rustix::fs::syncfs(std::fs::File::open(&self.dir)?)?;
        }
        self.records.lock().expect("spare pool poisoned").extend(made);

        while self.states.lock().expect("spare pool poisoned").len() < READY {
            let path = self.new_name(STATE_PREFIX);
            std::fs::create_dir(&path)?;
            self.states.lock().expect("spare pool poisoned").push(path);
        }
        Ok(())
    }

    fn new_name(&self, prefix: &str) -> PathBuf {
        let suffix: u64 = rand::rng().random();
        self.dir.join(format!("{prefix}{suffix:016x}"))
    }

    /// Lists the spare record files that hold more than spaces.
    pub(super) fn written_records(&self) -> io::Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
            if name.starts_with(RECORD_PREFIX) && !is_blank(&path) {
                written.push(path);
            }
        }
        Ok(written)
    }
}

fn is_blank(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| bytes.iter().all(|byte| *byte == b' '))
}
