//! Reader-writer locks over the chain world → challenge → instance.
//!
//! Every operation takes the world lock first, then the lock of its
//! challenge, then (for instance operations) the lock of the instance, and
//! releases the world lock as soon as the challenge lock is held. Taking
//! locks in this one order rules out deadlocks. Deleting a challenge holds
//! its lock in write mode, so it waits for every instance operation of that
//! challenge, which hold it in read mode.
//!
//! A challenge's pool has a lock of its own, taken between the world and the
//! challenge locks. Pool rounds hold it in read mode while they deploy,
//! which can take minutes, and do not take the challenge lock. Updates and
//! deletions of the challenge take it in write mode before the challenge
//! lock. So a pending update waits for the deployments in flight without
//! queueing ahead of the claims and reads of the challenge, which only take
//! the challenge lock.
//!
//! The guards returned here release their lock when dropped: on success, on
//! every error path and when the request future is cancelled. The backend is
//! a trait so that replicas sharing a data directory can use a distributed
//! lock service instead of [`local::LocalLocks`].

pub mod local;

use std::sync::Arc;

use async_trait::async_trait;

use crate::store;

/// Failure to take a lock.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to lock {name}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Whether a lock is shared with other readers or exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Read,
    Write,
}

/// Resource a lock protects. Ids are reduced to [`store::key`] digests, so key
/// names are safe as file names and etcd keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LockKey {
    World,
    Challenge { challenge: String },
    Pool { challenge: String },
    Instance { challenge: String, source: String },
}

impl LockKey {
    pub fn challenge(challenge_id: &str) -> Self {
        Self::Challenge { challenge: store::key(challenge_id) }
    }

    pub fn pool(challenge_id: &str) -> Self {
        Self::Pool { challenge: store::key(challenge_id) }
    }

    pub fn instance(challenge_id: &str, source_id: &str) -> Self {
        Self::Instance { challenge: store::key(challenge_id), source: store::key(source_id) }
    }

    /// Stable name of the lock, usable as a file name.
    pub fn name(&self) -> String {
        match self {
            Self::World => "world".to_owned(),
            Self::Challenge { challenge } => format!("challenge-{challenge}"),
            Self::Pool { challenge } => format!("pool-{challenge}"),
            Self::Instance { challenge, source } => format!("instance-{challenge}-{source}"),
        }
    }
}

/// A held lock, released when dropped.
pub struct Guard {
    _held: Box<dyn Send + Sync>,
}

impl Guard {
    pub fn new(held: impl Send + Sync + 'static) -> Self {
        Self { _held: Box::new(held) }
    }
}

/// A lock service.
#[async_trait]
pub trait LockBackend: Send + Sync + 'static {
    /// Waits until the lock is held in `mode`. Dropping the future before it
    /// completes leaves the lock untouched.
    async fn acquire(&self, key: &LockKey, mode: Mode) -> Result<Guard, Error>;
}

/// Proof that a challenge lock is held, and its pool lock for a writer.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ChallengeGuard {
    // Fields drop in declaration order: the challenge before its pool.
    _challenge: Guard,
    _pool: Option<Guard>,
}

/// Proof that a pool lock is held.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct PoolGuard {
    _pool: Guard,
}

/// Proof that an instance lock is held, together with a read lock on its
/// challenge.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct InstanceGuard {
    // Fields drop in declaration order: the instance before its challenge.
    _instance: Guard,
    _challenge: Guard,
}

/// Entry point that takes locks in the chain order.
#[derive(Clone)]
pub struct Locks {
    backend: Arc<dyn LockBackend>,
}

impl Locks {
    pub fn new(backend: Arc<dyn LockBackend>) -> Self {
        Self { backend }
    }

    /// Locks a challenge in `mode`.
    pub async fn challenge(&self, challenge_id: &str, mode: Mode) -> Result<ChallengeGuard, Error> {
        let world = self.backend.acquire(&LockKey::World, Mode::Read).await?;
        let challenge = self.backend.acquire(&LockKey::challenge(challenge_id), mode).await?;
        drop(world);
        Ok(ChallengeGuard { _challenge: challenge, _pool: None })
    }

    /// Locks a challenge and its pool in write mode, for an operation that
    /// changes or removes pooled instances.
    pub async fn challenge_and_pool(&self, challenge_id: &str) -> Result<ChallengeGuard, Error> {
        let world = self.backend.acquire(&LockKey::World, Mode::Read).await?;
        let pool = self.backend.acquire(&LockKey::pool(challenge_id), Mode::Write).await?;
        let challenge = self.backend.acquire(&LockKey::challenge(challenge_id), Mode::Write).await?;
        drop(world);
        Ok(ChallengeGuard { _challenge: challenge, _pool: Some(pool) })
    }

    /// Locks a challenge's pool in `mode`, without the challenge.
    pub async fn pool(&self, challenge_id: &str, mode: Mode) -> Result<PoolGuard, Error> {
        let world = self.backend.acquire(&LockKey::World, Mode::Read).await?;
        let pool = self.backend.acquire(&LockKey::pool(challenge_id), mode).await?;
        drop(world);
        Ok(PoolGuard { _pool: pool })
    }

    /// Locks the instance of a source in `mode`, holding its challenge in
    /// read mode.
    pub async fn instance(&self, challenge_id: &str, source_id: &str, mode: Mode) -> Result<InstanceGuard, Error> {
        let world = self.backend.acquire(&LockKey::World, Mode::Read).await?;
        let challenge = self.backend.acquire(&LockKey::challenge(challenge_id), Mode::Read).await?;
        drop(world);
        let instance = self.backend.acquire(&LockKey::instance(challenge_id, source_id), mode).await?;
        Ok(InstanceGuard { _instance: instance, _challenge: challenge })
    }
}
