//! Intent files: how a new instance record becomes durable without an
//! extra flush after the deployment.
//!
//! Before `up` ends, an intent file `instances/<key(source id)>.<identity>.intent`
//! is written and flushed. It holds the instance record marked as
//! deploying, padded with spaces to [`SLOT`] bytes. When `up` succeeds, the
//! final record overwrites the same bytes (no size change, so `fdatasync`
//! flushes data only and needs no journal commit), then the file is renamed
//! to the record's name. The rename is not flushed: if a crash loses it,
//! recovery finds the completed intent and renames it again.
//!
//! After a crash, an intent that still says "deploying", or that cannot be
//! parsed because its last write was torn, belongs to a deployment whose
//! client never got an answer: recovery runs `down` for its identity and
//! removes it. The identity is in the file name so that even a torn file
//! names what to destroy.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use super::{Result, Store, atomic, blocking, io_error, key, remove_file_if_exists, write_json};
use crate::instance::Instance;

/// Size the intent is padded to. A record that does not fit is committed
/// with a regular atomic write instead.
pub const SLOT: usize = 4096;

const EXTENSION: &str = "intent";

/// Content of an intent file.
#[derive(Serialize, Deserialize)]
struct IntentRecord {
    /// Whether `up` is still running (or was, when the process stopped).
    #[serde(default)]
    deploying: bool,
    #[serde(flatten)]
    instance: Instance,
}

/// An intent on disk for a deployment in progress.
#[must_use = "commit or abandon the intent, or recovery will destroy the deployment"]
pub struct Intent {
    file: File,
    path: PathBuf,
    record: PathBuf,
    /// Whether the file is exactly [`SLOT`] bytes long.
    padded: bool,
}

/// An intent file found by recovery.
#[derive(Debug)]
pub struct FoundIntent {
    pub path: PathBuf,
    /// Directory of the records, where the final record goes.
    pub record: PathBuf,
    pub identity: String,
    /// The record it holds: `None` when the file cannot be parsed.
    pub instance: Option<Instance>,
    /// Whether the record is complete, i.e. `up` had succeeded.
    pub complete: bool,
}

impl Store {
    fn intent_path(&self, instance: &Instance) -> PathBuf {
        self.instances_dir(&instance.challenge_id).join(format!(
            "{}.{}.{EXTENSION}",
            key(&instance.source_id),
            instance.identity
        ))
    }

    /// Writes and flushes the intent of a new instance, marked as
    /// deploying.
    pub async fn begin_instance(&self, instance: &Instance) -> Result<Intent> {
        let path = self.intent_path(instance);
        let record = self.instance_file(&instance.challenge_id, &instance.source_id);
        let content = encode(&IntentRecord { deploying: true, instance: instance.clone() });
        let padded = content.len() == SLOT;
        let spares = Arc::clone(&self.spares);
        blocking(move || {
            // A spare file is already on disk with the right size, so
            // filling it needs no journal commit. The rename that claims it
            // is not flushed: recovery adopts a filled spare it left behind.
            if padded && spares.claim_record(&path) {
                let file = OpenOptions::new().read(true).write(true).open(&path).map_err(io_error("open", &path))?;
                file.write_all_at(&content, 0).and_then(|()| file.sync_data()).map_err(io_error("write", &path))?;
                return Ok(Intent { file, path, record, padded });
            }

            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(io_error("create", &path))?;
            file.write_all(&content).and_then(|()| file.sync_all()).map_err(io_error("write", &path))?;
            let dir = path.parent().expect("intent files live in a directory");
            atomic::sync_dir(dir).map_err(io_error("sync", dir))?;
            Ok(Intent { file, path, record, padded })
        })
        .await
    }

    /// Makes the final record of a deployed instance durable and visible.
    pub async fn commit_instance(&self, intent: Intent, instance: &Instance) -> Result<()> {
        let content = encode(&IntentRecord { deploying: false, instance: instance.clone() });
        let fallback = instance.clone();
        blocking(move || {
            let Intent { file, path, record, padded } = intent;
            if !padded || content.len() != SLOT {
                // A record larger than the slot: a regular atomic write,
                // after which the intent can go.
                write_json(&record, &fallback)?;
                return remove_file_if_exists(&path);
            }

            file.write_all_at(&content, 0).and_then(|()| file.sync_data()).map_err(io_error("write", &path))?;
            std::fs::rename(&path, &record).map_err(io_error("rename", &path))
        })
        .await
    }

    /// Removes the intent of a deployment that failed and was cleaned up.
    pub async fn abandon_instance(&self, intent: Intent) -> Result<()> {
        let path = intent.path.clone();
        drop(intent);
        blocking(move || remove_file_if_exists(&path)).await
    }

    /// Lists the intents left in a challenge by processes that stopped
    /// during a deployment. The caller must hold the challenge's lock in
    /// write mode, or it may list the intents of deployments in progress.
    pub async fn intents(&self, challenge_id: &str) -> Result<Vec<FoundIntent>> {
        let dir = self.instances_dir(challenge_id);
        blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(err) => return Err(io_error("list", &dir)(err)),
            };

            let mut found = Vec::new();
            for entry in entries {
                let path = entry.map_err(io_error("list", &dir))?.path();
                if let Some(intent) = read_intent(&path)? {
                    found.push(intent);
                }
            }
            Ok(found)
        })
        .await
    }

    /// Moves the intents left in spare files by a crash to their place, so
    /// that [`Store::intents`] finds them. A spare whose content cannot be
    /// parsed is removed.
    ///
    /// NOTE: such a torn spare names no identity, so whatever its `up`
    /// created in the moment before the crash is not destroyed.
    pub async fn adopt_spare_intents(&self) -> Result<usize> {
        let store = self.clone();
        blocking(move || {
            let dir = store.root.join("spare");
            let mut adopted = 0;
            for spare in store.spares.written_records().map_err(io_error("list", &dir))? {
                let parsed = std::fs::read(&spare)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<IntentRecord>(&bytes).ok());
                let target = parsed.map(|record| store.intent_path(&record.instance));
                match target.filter(|target| target.parent().is_some_and(Path::exists)) {
                    Some(target) => {
                        std::fs::rename(&spare, &target).map_err(io_error("rename", &spare))?;
                        adopted += 1;
                    }
                    None => {
                        tracing::warn!(path = %spare.display(), "removing a spare file that holds no usable intent");
                        remove_file_if_exists(&spare)?;
                    }
                }
            }
            Ok(adopted)
        })
        .await
    }

    /// Completes the commit of an intent whose rename was lost.
    pub async fn roll_forward(&self, intent: &FoundIntent) -> Result<()> {
        let (path, record) = (intent.path.clone(), intent.record.clone());
        blocking(move || {
            std::fs::rename(&path, &record).map_err(io_error("rename", &path))?;
            let dir = record.parent().expect("records live in a directory");
            atomic::sync_dir(dir).map_err(io_error("sync", dir))
        })
        .await
    }

    /// Removes an intent file found by recovery.
    pub async fn remove_intent(&self, intent: &FoundIntent) -> Result<()> {
        let path = intent.path.clone();
        blocking(move || remove_file_if_exists(&path)).await
    }
}

/// Serializes an intent, padded to [`SLOT`] bytes when it fits, with
/// spaces that JSON parsers skip.
fn encode(record: &IntentRecord) -> Vec<u8> {
    let mut content = serde_json::to_vec(record).expect("records always serialize");
    content.push(b'\n');
    if content.len() < SLOT {
        content.resize(SLOT, b' ');
    }
    content
}

fn read_intent(path: &Path) -> Result<Option<FoundIntent>> {
    let Some(name) = path.file_name().and_then(|name| name.to_str()) else { return Ok(None) };
    let Some(stem) = name.strip_suffix(&format!(".{EXTENSION}")) else { return Ok(None) };
    let Some((source_key, identity)) = stem.split_once('.') else { return Ok(None) };

    let bytes = std::fs::read(path).map_err(io_error("read", path))?;
    let parsed: Option<IntentRecord> = serde_json::from_slice(&bytes).ok();
    Ok(Some(FoundIntent {
        path: path.to_path_buf(),
        record: path.with_file_name(format!("{source_key}.json")),
        identity: identity.to_owned(),
        complete: parsed.as_ref().is_some_and(|record| !record.deploying),
        instance: parsed.map(|record| record.instance),
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;

    use super::*;
    use crate::challenge::Challenge;

    async fn store_with_challenge() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let challenge = Challenge {
            id: "c".into(),
            scenario: "registry/scenario:v1".into(),
            digest: "sha256:00".into(),
            timeout: None,
            until: None,
            additional: BTreeMap::new(),
            min: 0,
            max: 0,
        };
        assert!(store.create_challenge(&challenge).await.unwrap());
        (dir, store)
    }

    fn instance(connection_info: &str) -> Instance {
        Instance {
            challenge_id: "c".into(),
            source_id: "s".into(),
            identity: "0123456789abcdef".into(),
            since: Utc::now(),
            last_renew: Utc::now(),
            until: None,
            connection_info: connection_info.into(),
            flags: vec!["FLAG{x}".into()],
            additional: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn commit_makes_the_record_visible() {
        let (_dir, store) = store_with_challenge().await;
        let intent = store.begin_instance(&instance("")).await.unwrap();
        assert_eq!(store.load_instance("c", "s").await.unwrap(), None, "visible before commit");

        store.commit_instance(intent, &instance("nc host 1")).await.unwrap();
        let loaded = store.load_instance("c", "s").await.unwrap().expect("committed record");
        assert_eq!(loaded.connection_info, "nc host 1");
        assert!(store.intents("c").await.unwrap().is_empty(), "the intent is left after commit");
    }

    #[tokio::test]
    async fn uncommitted_intent_is_found_as_deploying() {
        let (_dir, store) = store_with_challenge().await;
        let intent = store.begin_instance(&instance("")).await.unwrap();
        drop(intent);

        let found = store.intents("c").await.unwrap();
        assert_eq!(found.len(), 1);
        assert!(!found[0].complete);
        assert_eq!(found[0].identity, "0123456789abcdef");
        assert_eq!(found[0].instance.as_ref().map(|i| i.source_id.as_str()), Some("s"));
    }

    #[tokio::test]
    async fn complete_intent_rolls_forward() {
        let (_dir, store) = store_with_challenge().await;
        let intent = store.begin_instance(&instance("")).await.unwrap();
        let intent_path = intent.path.clone();
        store.commit_instance(intent, &instance("nc host 1")).await.unwrap();

        // Undo the rename, as a crash before it reached the disk would.
        let record = store.instance_file("c", "s");
        std::fs::rename(&record, &intent_path).unwrap();

        let found = store.intents("c").await.unwrap();
        assert!(found[0].complete);
        store.roll_forward(&found[0]).await.unwrap();
        assert_eq!(store.load_instance("c", "s").await.unwrap().unwrap().connection_info, "nc host 1");
    }

    #[tokio::test]
    async fn torn_intent_names_its_identity() {
        let (_dir, store) = store_with_challenge().await;
        let intent = store.begin_instance(&instance("")).await.unwrap();
        std::fs::write(&intent.path, b"{\"deploying\":fal").unwrap();

        let found = store.intents("c").await.unwrap();
        assert!(!found[0].complete);
        assert!(found[0].instance.is_none());
        assert_eq!(found[0].identity, "0123456789abcdef");
    }

    #[tokio::test]
    async fn filled_spare_is_adopted_after_a_lost_rename() {
        let (dir, store) = store_with_challenge().await;
        store.spares.make_missing().unwrap();
        let intent = store.begin_instance(&instance("")).await.unwrap();

        // Undo the claiming rename, as a crash before it reached the disk
        // would.
        let lost = dir.path().join("spare/record-lost");
        std::fs::rename(&intent.path, &lost).unwrap();
        drop(intent);

        assert_eq!(store.adopt_spare_intents().await.unwrap(), 1);
        assert!(!lost.exists());
        let found = store.intents("c").await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].identity, "0123456789abcdef");
        assert!(!found[0].complete);
    }

    #[tokio::test]
    async fn record_larger_than_the_slot_is_committed() {
        let (_dir, store) = store_with_challenge().await;
        let intent = store.begin_instance(&instance("")).await.unwrap();
        let long = "x".repeat(SLOT * 2);

        store.commit_instance(intent, &instance(&long)).await.unwrap();
        assert_eq!(store.load_instance("c", "s").await.unwrap().unwrap().connection_info, long);
        assert!(store.intents("c").await.unwrap().is_empty());
    }
}
