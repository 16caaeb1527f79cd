//! The state shared by every operation: storage, locks and scenarios.
//!
//! `serve` builds one [`Manager`] and hands it to the API; the operator
//! commands build one over the same data directory when they run without a
//! server, so both run the same code under the same locks.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use crate::{
    lock::{Locks, local::LocalLocks},
    pool::Pooler,
    runner::Runner,
    scenario::{OciSettings, Scenarios},
    store::{self, Store},
};

/// Locations of the manager's data, and its registry settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Data directory: challenges, instances, packed scenarios, the lock file.
    pub data_dir: PathBuf,
    /// Extracted scenarios, keyed by digest; safe to delete at any time.
    pub cache_dir: PathBuf,
    pub oci: OciSettings,
}

/// Failure to open the data directory.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] store::Error),

    #[error("failed to create the lock file {path}")]
    Locks {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct Manager {
    pub(crate) store: Store,
    pub(crate) locks: Locks,
    pub(crate) scenarios: Arc<Scenarios>,
    /// Runners by scenario directory. Directories are named after the
    /// digest of their content, so an entry never goes stale.
    pub(crate) runners: Arc<Mutex<HashMap<PathBuf, Arc<dyn Runner>>>>,
    pub(crate) pooler: Arc<Pooler>,
}

impl Manager {
    /// Opens the data directory, creating it when missing.
    pub fn open(settings: Settings) -> Result<Self, OpenError> {
        let store = Store::open(&settings.data_dir)?;
        let lock_file = settings.data_dir.join("lock");
        let locks = LocalLocks::with_file(&lock_file).map_err(|source| OpenError::Locks { path: lock_file, source })?;
        let scenarios = Scenarios::new(&settings.data_dir, settings.cache_dir, settings.oci);
        Ok(Self {
            store,
            locks: Locks::new(Arc::new(locks)),
            scenarios: Arc::new(scenarios),
            runners: Arc::default(),
            pooler: Arc::default(),
        })
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.store.root()
    }

    pub fn scenarios(&self) -> &Scenarios {
        &self.scenarios
    }
}
