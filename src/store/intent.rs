//! How a new instance becomes durable with no flush on the request's path
//! after `up`, and how a crash during a deployment is recovered.
//!
//! A deployment writes two files, both renamed from spares (see
//! [`super::spare`]) whose blocks are already on disk, so that writing
//! them needs no journal commit:
//!
//! - before `up`, the *intent* `instances/<key(source)>.<identity>.intent`
//!   contains the instance record marked as deploying: everything but the
//!   outputs of `up`. It is flushed while `up` runs, and the response waits
//!   for that flush;
//! - after `up`, the final record goes to
//!   `instances/<key(source)>.<identity>.commit`, renamed at once to
//!   `instances/<key(source)>.json`. It is flushed in the background, and
//!   the intent is removed after that flush.
//!
//! So an intent on disk means "this deployment's record may not be", and
//! it holds what is needed to finish it: after a crash, [`Store::settle_files`]
//! returns the intents whose record is missing or torn, and the caller runs
//! `up` again (scenarios must accept that, as for an update in place) and
//! writes the record. Renames are never flushed: a spare or `.commit` file
//! that holds a record is moved to where its rename would have put it.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{Result, Store, atomic, blocking, blocking_in_place, io_error, key, read_json, remove_file_if_exists};
use crate::instance::Instance;

/// Size of spare files, which records are padded to with spaces that JSON
/// parsers skip. A record that does not fit is written the slow way.
pub const SLOT: usize = 4096;

const INTENT: &str = "intent";
const COMMIT: &str = "commit";

/// Content of an intent or commit file.
#[derive(Serialize, Deserialize)]
struct Record {
    /// Whether `up` was still running when this was written.
    #[serde(default)]
    deploying: bool,
    #[serde(flatten)]
    instance: Instance,
}

/// The intent of a deployment in progress.
#[must_use = "commit or abandon the intent, or recovery will run the deployment again"]
pub struct Intent {
    path: PathBuf,
    /// The background write and flush of the intent file.
    written: Option<tokio::task::JoinHandle<Result<()>>>,
}

#[cfg(test)]
impl Intent {
    /// Waits until the intent file is written and flushed.
    async fn wait_written(&mut self) {
        if let Some(written) = self.written.take() {
            written.await.unwrap().unwrap();
        }
    }
}

/// An intent left by a stopped process, whose deployment must be finished
/// (or destroyed, when the intent is torn).
#[derive(Debug)]
pub struct FoundIntent {
    pub path: PathBuf,
    pub identity: String,
    /// The record it holds: `None` when the file cannot be parsed.
    pub instance: Option<Instance>,
}

impl Store {
    fn deployment_file(&self, instance: &Instance, extension: &str) -> PathBuf {
        self.instances_dir(&instance.challenge_id).join(format!(
            "{}.{}.{extension}",
            key(&instance.source_id),
            instance.identity
        ))
    }

    /// Creates the state directory of a new instance, then writes and
    /// flushes its intent in the background: `up` may start before the
    /// intent is on disk.
    ///
    /// The renames and the page-cache write here take microseconds, so
    /// they run inline rather than on a blocking thread, whose trip costs
    /// more on every deployment.
    ///
    /// NOTE: a crash in the first moments of `up`, before the flush ends,
    /// leaves whatever `up` created without an intent to finish it.
    pub async fn begin_instance(&self, instance: &Instance) -> Result<(PathBuf, Intent)> {
        let state = self.state_dir(&instance.challenge_id, &instance.identity);
        let parent = state.parent().expect("state directories have a parent");
        std::fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        if !self.spares.claim_state(&state) {
            std::fs::create_dir(&state).map_err(io_error("create", &state))?;
        }

        let path = self.deployment_file(instance, INTENT);
        let content = encode(&Record { deploying: true, instance: instance.clone() });
        let spares = Arc::clone(&self.spares);
        let written_path = path.clone();
        let written = tokio::task::spawn_blocking(move || {
            let file = write_file(&spares, &written_path, &content)?;
            file.sync_data().map_err(io_error("write", &written_path))
        });
        Ok((state, Intent { path, written: Some(written) }))
    }

    /// Makes the final record of a deployed instance visible. On return
    /// the deployment is recoverable: its intent is on disk. The record is
    /// flushed in the background, and the intent removed after that.
    pub async fn commit_instance(&self, mut intent: Intent, instance: &Instance) -> Result<()> {
        if let Some(written) = intent.written.take() {
            written.await??;
        }

        let commit = self.deployment_file(instance, COMMIT);
        let record = self.instance_file(&instance.challenge_id, &instance.source_id);
        let content = encode(&Record { deploying: false, instance: instance.clone() });
        let file = write_file(&self.spares, &commit, &content)?;
        std::fs::rename(&commit, &record).map_err(io_error("rename", &commit))?;

        tokio::task::spawn_blocking(move || match file.sync_data() {
            Ok(()) => {
                if let Err(err) = remove_file_if_exists(&intent.path) {
                    warn!(error = %err, "failed to remove the intent of a committed instance");
                }
            }
            // The intent stays, so the next start finishes the deployment.
            Err(err) => warn!(path = %record.display(), error = %err, "failed to flush an instance record"),
        });
        Ok(())
    }

    /// Writes the final record of an instance and flushes it with its
    /// directory before returning. The file comes from a spare whose blocks
    /// are already on disk, so this costs one journal commit.
    pub(super) async fn write_record_durably(&self, instance: &Instance) -> Result<()> {
        let commit = self.deployment_file(instance, COMMIT);
        let record = self.instance_file(&instance.challenge_id, &instance.source_id);
        let content = encode(&Record { deploying: false, instance: instance.clone() });
        let spares = Arc::clone(&self.spares);
        blocking_in_place(move || {
            let file = write_file(&spares, &commit, &content)?;
            file.sync_data().map_err(io_error("write", &commit))?;
            std::fs::rename(&commit, &record).map_err(io_error("rename", &commit))?;
            let dir = record.parent().expect("records have a parent");
            atomic::sync_dir(dir).map_err(io_error("sync", dir))
        })
        .await
    }

    /// Removes the intent of a deployment that failed and was cleaned up.
    pub async fn abandon_instance(&self, mut intent: Intent) -> Result<()> {
        if let Some(written) = intent.written.take() {
            // Whatever the outcome of the write, the file goes.
            let _ = written.await;
        }
        remove_file_if_exists(&intent.path)
    }

    /// Finishes what a crash left in a challenge's files: adopts filled
    /// spares, puts complete records in place, drops intents whose record
    /// is in place. Returns the intents whose record is missing or torn.
    /// The caller holds the challenge's lock in write mode, so no
    /// deployment of this challenge is in progress.
    pub async fn settle_files(&self, challenge_id: &str) -> Result<Vec<FoundIntent>> {
        let store = self.clone();
        let dir = self.instances_dir(challenge_id);
        let challenge_key = crate::store::key(challenge_id);
        blocking(move || {
            store.adopt_spares(&challenge_key)?;
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries.collect::<Result<Vec<_>, _>>().map_err(io_error("list", &dir))?,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(err) => return Err(io_error("list", &dir)(err)),
            };
            let paths: Vec<PathBuf> = entries.iter().map(|entry| entry.path()).collect();

            for path in paths.iter().filter(|path| has_extension(path, COMMIT)) {
                match read_record(path).filter(|record| !record.deploying) {
                    Some(_) => {
                        let (source_key, _) = split_name(path).expect("filtered on the extension");
                        let record = dir.join(format!("{source_key}.json"));
                        std::fs::rename(path, &record).map_err(io_error("rename", path))?;
                    }
                    None => remove_file_if_exists(path)?,
                }
            }

            let mut left = Vec::new();
            for path in paths.iter().filter(|path| has_extension(path, INTENT)) {
                let (source_key, identity) = split_name(path).expect("filtered on the extension");
                // A torn record counts as missing: the deployment runs again
                // and rewrites it.
                let committed: Option<Instance> = read_json(&dir.join(format!("{source_key}.json"))).ok().flatten();
                if committed.is_some_and(|instance| instance.identity == identity) {
                    remove_file_if_exists(path)?;
                    continue;
                }
                let instance = read_record(path).map(|record| record.instance);
                left.push(FoundIntent { path: path.clone(), identity: identity.to_owned(), instance });
            }
            atomic::sync_dir(&dir).map_err(io_error("sync", &dir))?;
            Ok(left)
        })
        .await
    }

    /// Moves the spares of this challenge that hold a record (their
    /// claiming rename was lost) to the file they were claimed as.
    fn adopt_spares(&self, challenge_key: &str) -> Result<()> {
        let spare_dir = self.root.join("spare");
        for spare in self.spares.written_records().map_err(io_error("list", &spare_dir))? {
            let Some(record) = read_record(&spare) else {
                // NOTE: a torn spare names no identity, so whatever its `up`
                // created just before the crash is not destroyed.
                warn!(path = %spare.display(), "removing a spare file that contains no valid record");
                remove_file_if_exists(&spare)?;
                continue;
            };
            if key(&record.instance.challenge_id) != challenge_key {
                continue;
            }
            let extension = if record.deploying { INTENT } else { COMMIT };
            let target = self.deployment_file(&record.instance, extension);
            std::fs::rename(&spare, &target).map_err(io_error("rename", &spare))?;
        }
        Ok(())
    }

    /// Removes an intent whose deployment was finished or destroyed.
    pub async fn remove_intent(&self, intent: &FoundIntent) -> Result<()> {
        let path = intent.path.clone();
        blocking(move || remove_file_if_exists(&path)).await
    }
}

/// Writes `content` to a new file at `path`, into a claimed spare when the
/// content fits one, else into a freshly created file. Nothing is flushed.
fn write_file(spares: &Arc<super::spare::Spares>, path: &Path, content: &[u8]) -> Result<File> {
    if content.len() == SLOT && spares.claim_record(path) {
        let file = OpenOptions::new().write(true).open(path).map_err(io_error("open", path))?;
        file.write_all_at(content, 0).map_err(io_error("write", path))?;
        return Ok(file);
    }

    let mut file = OpenOptions::new().write(true).create_new(true).open(path).map_err(io_error("create", path))?;
    file.write_all(content).map_err(io_error("write", path))?;
    Ok(file)
}

/// Serializes a record, padded to [`SLOT`] bytes when it fits.
fn encode(record: &Record) -> Vec<u8> {
    let mut content = serde_json::to_vec(record).expect("records always serialize");
    content.push(b'\n');
    if content.len() < SLOT {
        content.resize(SLOT, b' ');
    }
    content
}

fn read_record(path: &Path) -> Option<Record> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn has_extension(path: &Path, extension: &str) -> bool {
    path.extension().is_some_and(|found| found == extension)
}

/// Splits `<source key>.<identity>.<extension>`.
fn split_name(path: &Path) -> Option<(&str, &str)> {
    path.file_stem()?.to_str()?.split_once('.')
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;

    use super::*;
    use crate::store::testing::store_with_challenge;

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
            deployed: Default::default(),
        }
    }

    /// Waits for the background flush of a commit to remove the intent.
    async fn wait_for_files(store: &Store, expected: &[String]) {
        for _ in 0..100 {
            if file_names(store) == expected {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(file_names(store), expected);
    }

    fn file_names(store: &Store) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(store.instances_dir("c"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn commit_makes_the_record_visible() {
        let (_dir, store) = store_with_challenge().await;
        let (state, intent) = store.begin_instance(&instance("")).await.unwrap();
        assert!(state.is_dir());
        assert_eq!(store.load_instance("c", "s").await.unwrap(), None, "visible before commit");

        store.commit_instance(intent, &instance("nc host 1")).await.unwrap();
        let loaded = store.load_instance("c", "s").await.unwrap().expect("committed record");
        assert_eq!(loaded.connection_info, "nc host 1");
        wait_for_files(&store, &[format!("{}.json", key("s"))]).await;
    }

    #[tokio::test]
    async fn uncommitted_intent_is_left_to_destroy() {
        let (_dir, store) = store_with_challenge().await;
        let (_state, mut intent) = store.begin_instance(&instance("")).await.unwrap();
        intent.wait_written().await;

        let left = store.settle_files("c").await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].identity, "0123456789abcdef");
        assert_eq!(left[0].instance.as_ref().map(|i| i.source_id.as_str()), Some("s"));
    }

    #[tokio::test]
    async fn complete_commit_file_rolls_forward() {
        let (_dir, store) = store_with_challenge().await;
        let (_state, mut intent) = store.begin_instance(&instance("")).await.unwrap();
        intent.wait_written().await;
        let intent_copy = std::fs::read(&intent.path).unwrap();
        let intent_path = intent.path.clone();
        store.commit_instance(intent, &instance("nc host 1")).await.unwrap();
        wait_for_files(&store, &[format!("{}.json", key("s"))]).await;

        // Undo the last rename and the intent's removal, as a crash before
        // they reached the disk would.
        let record = store.instance_file("c", "s");
        std::fs::rename(&record, store.deployment_file(&instance(""), COMMIT)).unwrap();
        std::fs::write(&intent_path, intent_copy).unwrap();

        assert!(store.settle_files("c").await.unwrap().is_empty(), "a committed deployment is left to finish");
        assert_eq!(store.load_instance("c", "s").await.unwrap().unwrap().connection_info, "nc host 1");
        assert_eq!(file_names(&store), vec![format!("{}.json", key("s"))]);
    }

    #[tokio::test]
    async fn intent_with_torn_record_is_left_to_finish() {
        let (_dir, store) = store_with_challenge().await;
        let (_state, mut intent) = store.begin_instance(&instance("")).await.unwrap();
        intent.wait_written().await;
        let intent_copy = std::fs::read(&intent.path).unwrap();
        let intent_path = intent.path.clone();
        store.commit_instance(intent, &instance("nc host 1")).await.unwrap();
        wait_for_files(&store, &[format!("{}.json", key("s"))]).await;

        // A crash before the record's flush: the intent is back, the record torn.
        std::fs::write(&intent_path, intent_copy).unwrap();
        std::fs::write(store.instance_file("c", "s"), b"{\"challenge_id\":\"c\",\"sou").unwrap();

        let left = store.settle_files("c").await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].instance.as_ref().map(|i| i.source_id.as_str()), Some("s"));
    }

    #[tokio::test]
    async fn torn_intent_names_its_identity() {
        let (_dir, store) = store_with_challenge().await;
        let (_state, mut intent) = store.begin_instance(&instance("")).await.unwrap();
        intent.wait_written().await;
        std::fs::write(&intent.path, b"{\"deploying\":tr").unwrap();

        let left = store.settle_files("c").await.unwrap();
        assert!(left[0].instance.is_none());
        assert_eq!(left[0].identity, "0123456789abcdef");
    }

    #[tokio::test]
    async fn filled_spare_is_adopted_after_a_lost_rename() {
        let (dir, store) = store_with_challenge().await;
        store.spares.make_missing().unwrap();
        let (_state, mut intent) = store.begin_instance(&instance("")).await.unwrap();
        intent.wait_written().await;

        // Undo the claiming rename, as a crash before it reached the disk
        // would.
        let lost = dir.path().join("spare/record-lost");
        std::fs::rename(&intent.path, &lost).unwrap();

        let left = store.settle_files("c").await.unwrap();
        assert!(!lost.exists());
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].identity, "0123456789abcdef");
    }

    #[tokio::test]
    async fn record_larger_than_the_slot_is_committed() {
        let (_dir, store) = store_with_challenge().await;
        let (_state, intent) = store.begin_instance(&instance("")).await.unwrap();
        let long = "x".repeat(SLOT * 2);

        store.commit_instance(intent, &instance(&long)).await.unwrap();
        assert_eq!(store.load_instance("c", "s").await.unwrap().unwrap().connection_info, long);
        assert!(store.settle_files("c").await.unwrap().is_empty());
    }
}
