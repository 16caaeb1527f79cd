//! Pooled instances on disk: deployed ahead of demand, not yet given to a
//! source.
//!
//! ```text
//! <challenge dir>/pool/<identity>.json     a ready pooled instance
//! <challenge dir>/pool/<identity>.intent   a pooled deployment in progress
//! <challenge dir>/pool/<identity>.taken    taken by a claim or for destruction
//! ```
//!
//! A pooled record is an [`Instance`] with an empty source id, which no
//! client can send. Taking a pooled instance renames its `.json` file to
//! `.taken`: of several renames of one file, only the first succeeds, so no
//! two claims get the same instance, in one process or in several sharing
//! the directory. A claim then writes the source's record durably and
//! removes the `.taken` file without a flush. Recovery treats a `.taken` or
//! `.json` file whose identity also appears in a source's record as claimed.

use std::{
    collections::HashSet,
    io,
    path::{Path, PathBuf},
};

use super::{Result, Store, blocking, io_error, read_json, remove_file_if_exists, write_json};
use crate::instance::Instance;

const READY: &str = "json";
const INTENT: &str = "intent";
const TAKEN: &str = "taken";

/// Pool files left by a stopped process, for recovery to settle.
#[derive(Debug, Default)]
pub struct PoolLeftovers {
    /// Pooled deployments that may have started but were never recorded.
    pub unfinished: Vec<Instance>,
    /// Instances taken by a claim or a shrink that did not finish.
    pub taken: Vec<Instance>,
}

impl Store {
    fn pool_dir(&self, challenge_id: &str) -> PathBuf {
        self.challenge_dir(challenge_id).join("pool")
    }

    fn pool_file(&self, challenge_id: &str, identity: &str, extension: &str) -> PathBuf {
        debug_assert!(identity.bytes().all(|b| b.is_ascii_hexdigit()));
        self.pool_dir(challenge_id).join(format!("{identity}.{extension}"))
    }

    /// Path of the record of a ready pooled instance.
    pub(super) fn pooled_file(&self, challenge_id: &str, identity: &str) -> PathBuf {
        self.pool_file(challenge_id, identity, READY)
    }

    /// Lists the identities of the ready pooled instances, sorted. Runs
    /// inline, like [`Store::take_pooled`], because a claim waits for it.
    pub fn pooled(&self, challenge_id: &str) -> Result<Vec<String>> {
        names_with_extension(&self.pool_dir(challenge_id), READY)
    }

    /// Loads a ready pooled instance, or `None` when it was taken.
    pub fn load_pooled(&self, challenge_id: &str, identity: &str) -> Result<Option<Instance>> {
        read_json(&self.pool_file(challenge_id, identity, READY))
    }

    /// Counts the claimed instances of a challenge without reading them.
    pub async fn count_instances(&self, challenge_id: &str) -> Result<usize> {
        let dir = self.instances_dir(challenge_id);
        blocking(move || Ok(names_with_extension(&dir, "json")?.len())).await
    }

    /// Creates the state directory of a pooled deployment and records its
    /// intent durably, so that recovery can destroy it if the process
    /// stops before [`Store::commit_pooled`].
    pub async fn begin_pooled(&self, instance: &Instance) -> Result<PathBuf> {
        let state = self.reset_state_dir(&instance.challenge_id, &instance.identity).await?;
        let dir = self.pool_dir(&instance.challenge_id);
        let intent = self.pool_file(&instance.challenge_id, &instance.identity, INTENT);
        let record = instance.clone();
        blocking(move || {
            std::fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
            write_json(&intent, &record)
        })
        .await?;
        Ok(state)
    }

    /// Makes a deployed pooled instance ready to claim.
    pub async fn commit_pooled(&self, instance: &Instance) -> Result<()> {
        let ready = self.pool_file(&instance.challenge_id, &instance.identity, READY);
        let intent = self.pool_file(&instance.challenge_id, &instance.identity, INTENT);
        let record = instance.clone();
        blocking(move || {
            write_json(&ready, &record)?;
            remove_file_if_exists(&intent)
        })
        .await
    }

    /// Removes every trace of a pooled instance that was destroyed or
    /// never deployed: its intent, its taken file and its state directory.
    pub async fn remove_pooled(&self, challenge_id: &str, identity: &str) -> Result<()> {
        let files = [INTENT, TAKEN, READY].map(|extension| self.pool_file(challenge_id, identity, extension));
        blocking(move || files.iter().try_for_each(|file| remove_file_if_exists(file))).await?;
        self.delete_state_dir(challenge_id, identity).await
    }

    /// Takes a ready pooled instance for a claim or for destruction.
    /// Returns `None` when someone else took it first. Runs inline: a
    /// rename and a read of a small file are quicker than a trip to a
    /// blocking thread, and a claim waits for them.
    pub fn take_pooled(&self, challenge_id: &str, identity: &str) -> Result<Option<Instance>> {
        let ready = self.pool_file(challenge_id, identity, READY);
        let taken = self.pool_file(challenge_id, identity, TAKEN);
        match std::fs::rename(&ready, &taken) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io_error("rename", &ready)(err)),
        }
        read_json(&taken)
    }

    /// Records a claimed pooled instance under its source, durably, then
    /// drops its pool entry.
    pub async fn commit_claim(&self, instance: &Instance) -> Result<()> {
        self.write_record_durably(instance).await?;
        let taken = self.pool_file(&instance.challenge_id, &instance.identity, TAKEN);
        // Not flushed: recovery drops a pool entry whose identity is claimed.
        remove_file_if_exists(&taken)
    }

    /// Lists what a stopped process left in a challenge's pool, and drops
    /// the pool entries of instances that a claim already recorded. The
    /// caller holds the challenge's lock in write mode.
    pub async fn pool_leftovers(&self, challenge_id: &str) -> Result<PoolLeftovers> {
        let pool = self.pool_dir(challenge_id);
        let records = self.instances_dir(challenge_id);
        blocking(move || {
            let claimed = claimed_identities(&records)?;
            let mut leftovers = PoolLeftovers::default();
            for extension in [READY, INTENT, TAKEN] {
                for identity in names_with_extension(&pool, extension)? {
                    let file = pool.join(format!("{identity}.{extension}"));
                    if claimed.contains(&identity) {
                        remove_file_if_exists(&file)?;
                        continue;
                    }
                    if extension == READY {
                        continue;
                    }
                    // Pooled records are written atomically, so a record
                    // that cannot be read is a bug or a damaged disk.
                    let Some(instance) = read_json::<Instance>(&file)? else { continue };
                    match extension {
                        INTENT => leftovers.unfinished.push(instance),
                        _ => leftovers.taken.push(instance),
                    }
                }
            }
            Ok(leftovers)
        })
        .await
    }
}

/// Reads the identities of the claimed instances recorded in `dir`. A
/// record that cannot be parsed is skipped with a warning: recovery of the
/// pool must not stop at one torn record.
fn claimed_identities(dir: &Path) -> Result<HashSet<String>> {
    let mut identities = HashSet::new();
    for name in names_with_extension(dir, "json")? {
        let path = dir.join(format!("{name}.json"));
        match read_json::<Instance>(&path) {
            Ok(Some(instance)) => {
                identities.insert(instance.identity);
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(path = %path.display(), error = %err, "skipping an unreadable instance record"),
        }
    }
    Ok(identities)
}

/// Lists the stems of the files of `dir` with `extension`, sorted. A
/// missing directory has none.
fn names_with_extension(dir: &Path, extension: &str) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io_error("list", dir)(err)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_error("list", dir))?.path();
        if path.extension().is_some_and(|found| found == extension)
            && let Some(stem) = path.file_stem().and_then(|stem| stem.to_str())
        {
            names.push(stem.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;

    use super::*;
    use crate::store::testing::store_with_challenge;

    fn pooled(identity: &str) -> Instance {
        let now = Utc::now();
        Instance {
            challenge_id: "c".into(),
            source_id: String::new(),
            identity: identity.into(),
            since: now,
            last_renew: now,
            until: None,
            connection_info: format!("conn-{identity}"),
            flags: Vec::new(),
            additional: BTreeMap::new(),
            deployed: Default::default(),
        }
    }

    async fn ready(store: &Store, identity: &str) {
        store.begin_pooled(&pooled(identity)).await.unwrap();
        store.commit_pooled(&pooled(identity)).await.unwrap();
    }

    #[tokio::test]
    async fn take_gives_each_instance_once() {
        let (_dir, store) = store_with_challenge().await;
        ready(&store, "00000000000000aa").await;

        let taken = store.take_pooled("c", "00000000000000aa").unwrap().expect("a ready instance");
        assert_eq!(taken.connection_info, "conn-00000000000000aa");
        assert!(store.take_pooled("c", "00000000000000aa").unwrap().is_none());
        assert!(store.pooled("c").unwrap().is_empty());
    }

    #[tokio::test]
    async fn leftovers_sorted_by_outcome() {
        let (_dir, store) = store_with_challenge().await;
        // Deployed, then claimed up to the record, whose pool entry came
        // back: the record wins.
        ready(&store, "00000000000000aa").await;
        let claimed = Instance { source_id: "team".into(), ..pooled("00000000000000aa") };
        store.save_instance(&claimed).await.unwrap();
        // Taken by a claim that never wrote its record.
        ready(&store, "00000000000000bb").await;
        store.take_pooled("c", "00000000000000bb").unwrap().unwrap();
        // A deployment that never finished.
        store.begin_pooled(&pooled("00000000000000cc")).await.unwrap();
        // A ready one, which stays.
        ready(&store, "00000000000000dd").await;

        let leftovers = store.pool_leftovers("c").await.unwrap();

        let identities = |list: &[Instance]| list.iter().map(|i| i.identity.clone()).collect::<Vec<_>>();
        assert_eq!(identities(&leftovers.taken), ["00000000000000bb"]);
        assert_eq!(identities(&leftovers.unfinished), ["00000000000000cc"]);
        assert_eq!(store.pooled("c").unwrap(), ["00000000000000dd"], "the claimed entry stayed in the pool");
    }

    #[tokio::test]
    async fn claim_moves_the_record_to_its_source() {
        let (_dir, store) = store_with_challenge().await;
        ready(&store, "00000000000000aa").await;
        let taken = store.take_pooled("c", "00000000000000aa").unwrap().unwrap();

        store.commit_claim(&Instance { source_id: "team".into(), ..taken }).await.unwrap();

        let record = store.load_instance("c", "team").await.unwrap().expect("a record for the source");
        assert_eq!(record.identity, "00000000000000aa");
        assert!(store.pool_leftovers("c").await.unwrap().taken.is_empty());
        assert_eq!(store.count_instances("c").await.unwrap(), 1);
    }
}
