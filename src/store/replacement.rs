//! Blue-green replacements on disk: an update that deploys a new identity
//! before destroying the old one leaves, at every step, a file naming each
//! deployment that may exist, so a crash orphans neither.
//!
//! ```text
//! instances/<key(source)>.<new identity>.replace   flushed before the new `up` starts
//! instances/<key(source)>.<old identity>.retire    the same file, renamed once the
//!                                                  record names the new identity
//! ```
//!
//! Both hold the identity and version of the old and the new deployment.
//! After a crash, [`Store::obsolete_deployments`] turns each file into the
//! one deployment to destroy:
//!
//! - a `.replace` file whose source's record does not name the new
//!   identity: the update did not finish, so the new deployment goes and
//!   the instance stays on its previous version;
//! - a `.replace` file whose record names the new identity, and any
//!   `.retire` file: the update finished, so the old deployment goes.
//!
//! A `.retire` file also outlives a failed `down` of the old deployment, so
//! the next start tries again. Pooled instances need neither file: the
//! pool's intent covers the new deployment (see [`super::pool`]), and the
//! old one keeps its ready record until it is destroyed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{Result, Store, atomic, blocking, io_error, key, read_json, remove_file_if_exists, write_atomic};
use crate::instance::{Deployed, Instance};

const REPLACE: &str = "replace";
const RETIRE: &str = "retire";

/// Content of a `.replace` or `.retire` file.
#[derive(Serialize, Deserialize)]
struct Plan {
    source_id: String,
    old: Version,
    new: Version,
}

#[derive(Serialize, Deserialize)]
struct Version {
    identity: String,
    deployed: Deployed,
}

impl Version {
    fn of(instance: &Instance) -> Self {
        Self { identity: instance.identity.clone(), deployed: instance.deployed.clone() }
    }
}

/// A replacement whose new deployment may exist but is not recorded yet.
#[must_use = "commit or abandon the replacement, or the next start destroys the new deployment"]
pub struct Replacement {
    /// The `.replace` file, or `None` for a pooled instance.
    file: Option<PathBuf>,
}

/// A finished replacement whose old deployment may still exist.
#[must_use = "finish the retirement once the old deployment is destroyed"]
pub struct Retirement {
    /// The `.retire` file, or `None` for a pooled instance.
    file: Option<PathBuf>,
}

/// A deployment left behind by a replacement that a stopped process
/// interrupted. Destroy it, then call [`Store::forget_obsolete`].
#[derive(Debug)]
pub struct Obsolete {
    file: PathBuf,
    pub source_id: String,
    pub identity: String,
    pub deployed: Deployed,
}

impl Store {
    fn plan_file(&self, instance: &Instance, identity: &str, extension: &str) -> PathBuf {
        self.instances_dir(&instance.challenge_id).join(format!("{}.{identity}.{extension}", key(&instance.source_id)))
    }

    /// Creates the state directory of `new`, which is to replace `old`, and
    /// records the replacement durably. Returns the state directory.
    pub async fn begin_replacement(&self, old: &Instance, new: &Instance) -> Result<(PathBuf, Replacement)> {
        if old.is_pooled() {
            let state = self.begin_pooled(new).await?;
            return Ok((state, Replacement { file: None }));
        }

        let state = self.reset_state_dir(&new.challenge_id, &new.identity).await?;
        let file = self.plan_file(new, &new.identity, REPLACE);
        let plan = Plan { source_id: new.source_id.clone(), old: Version::of(old), new: Version::of(new) };
        let bytes = serde_json::to_vec(&plan).expect("plans always serialize");
        let path = file.clone();
        blocking(move || write_atomic(&path, &bytes).map_err(io_error("write", &path))).await?;
        Ok((state, Replacement { file: Some(file) }))
    }

    /// Forgets a replacement whose new deployment was destroyed (or never
    /// started), with its state directory.
    pub async fn abandon_replacement(&self, replacement: Replacement, new: &Instance) -> Result<()> {
        match replacement.file {
            None => self.remove_pooled(&new.challenge_id, &new.identity).await,
            Some(file) => {
                self.delete_state_dir(&new.challenge_id, &new.identity).await?;
                blocking(move || remove_durably(&file)).await
            }
        }
    }

    /// Records `updated`, under its new identity, as the instance that
    /// replaced `old`. From then on, the old deployment is what may be left.
    pub async fn commit_replacement(
        &self,
        replacement: Replacement,
        updated: &Instance,
        old: &Instance,
    ) -> Result<Retirement> {
        let Some(file) = replacement.file else {
            self.commit_pooled(updated).await?;
            return Ok(Retirement { file: None });
        };

        self.save_instance(updated).await?;
        // Not flushed: until the rename is on disk, the `.replace` file
        // with a record naming the new identity means the same.
        let retire = self.plan_file(old, &old.identity, RETIRE);
        std::fs::rename(&file, &retire).map_err(io_error("rename", &file))?;
        Ok(Retirement { file: Some(retire) })
    }

    /// Forgets the old deployment of a replacement once it is destroyed,
    /// with its state directory.
    pub async fn finish_retirement(&self, retirement: Retirement, old: &Instance) -> Result<()> {
        match retirement.file {
            None => self.remove_pooled(&old.challenge_id, &old.identity).await,
            Some(file) => {
                self.delete_state_dir(&old.challenge_id, &old.identity).await?;
                blocking(move || remove_durably(&file)).await
            }
        }
    }

    /// Lists the deployments that replacements interrupted by a stopped
    /// process left behind. Call it after [`Store::settle_files`], which
    /// puts the records in place. The caller holds the challenge's lock in
    /// write mode.
    pub async fn obsolete_deployments(&self, challenge_id: &str) -> Result<Vec<Obsolete>> {
        let store = self.clone();
        let dir = self.instances_dir(challenge_id);
        let challenge_id = challenge_id.to_owned();
        blocking(move || {
            let mut obsolete = Vec::new();
            for file in files_with_extension(&dir, &[REPLACE, RETIRE])? {
                // Plans are written atomically, so an unreadable one means a
                // damaged disk. It stays in place for an operator to inspect.
                let plan = match read_plan(&file) {
                    Ok(plan) => plan,
                    Err(error) => {
                        warn!(challenge_id, path = %file.display(), error, "failed to read a replacement file, skipping it");
                        continue;
                    }
                };

                let finished = file.extension().is_some_and(|ext| ext == RETIRE)
                    || store.record_names(&challenge_id, &plan.source_id, &plan.new.identity);
                let left = if finished { plan.old } else { plan.new };
                obsolete.push(Obsolete {
                    file,
                    source_id: plan.source_id,
                    identity: left.identity,
                    deployed: left.deployed,
                });
            }
            Ok(obsolete)
        })
        .await
    }

    /// Removes the state directory and the file of an obsolete deployment
    /// once it is destroyed.
    pub async fn forget_obsolete(&self, challenge_id: &str, obsolete: &Obsolete) -> Result<()> {
        self.delete_state_dir(challenge_id, &obsolete.identity).await?;
        let file = obsolete.file.clone();
        blocking(move || remove_durably(&file)).await
    }

    fn record_names(&self, challenge_id: &str, source_id: &str, identity: &str) -> bool {
        let record: Option<Instance> = read_json(&self.instance_file(challenge_id, source_id)).ok().flatten();
        record.is_some_and(|record| record.identity == identity)
    }
}

fn read_plan(file: &Path) -> Result<Plan, String> {
    let bytes = std::fs::read(file).map_err(|err| err.to_string())?;
    serde_json::from_slice(&bytes).map_err(|err| err.to_string())
}

/// Removes a file and flushes its directory, so that a crash cannot bring
/// back a plan whose deployment is gone.
fn remove_durably(file: &Path) -> Result<()> {
    remove_file_if_exists(file)?;
    let dir = file.parent().expect("plan files have a parent");
    atomic::sync_dir(dir).map_err(io_error("sync", dir))
}

fn files_with_extension(dir: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(io_error("list", dir)(err)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_error("list", dir))?.path();
        if path.extension().is_some_and(|ext| extensions.iter().any(|wanted| ext == *wanted)) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::store::testing::store_with_challenge;

    fn instance(identity: &str, digest: &str) -> Instance {
        Instance {
            challenge_id: "c".into(),
            source_id: "s".into(),
            identity: identity.into(),
            since: Utc::now(),
            last_renew: Utc::now(),
            until: None,
            connection_info: format!("nc {identity}"),
            flags: Vec::new(),
            additional: Default::default(),
            deployed: Deployed {
                scenario: "registry/scenario".into(),
                digest: digest.into(),
                additional: Default::default(),
            },
        }
    }

    /// Returns the (identity, digest) of each deployment that recovery would
    /// destroy.
    async fn obsolete(store: &Store) -> Vec<(String, String)> {
        let found = store.obsolete_deployments("c").await.unwrap();
        found.into_iter().map(|obsolete| (obsolete.identity, obsolete.deployed.digest)).collect()
    }

    fn left(identity: &str, digest: &str) -> Vec<(String, String)> {
        vec![(identity.to_owned(), digest.to_owned())]
    }

    /// Opens a store whose source `s` is recorded as `old` (identity
    /// `aaaa`), with `new` (identity `bbbb`) ready to replace it.
    async fn store_with_instance() -> (tempfile::TempDir, Store, Instance, Instance) {
        let (dir, store) = store_with_challenge().await;
        let (old, new) = (instance("aaaa", "sha256:01"), instance("bbbb", "sha256:02"));
        store.save_instance(&old).await.unwrap();
        (dir, store, old, new)
    }

    #[tokio::test]
    async fn unrecorded_replacement_destroys_new() {
        let (_dir, store, old, new) = store_with_instance().await;

        let (state, _replacement) = store.begin_replacement(&old, &new).await.unwrap();
        assert!(state.is_dir());
        assert_eq!(obsolete(&store).await, left("bbbb", "sha256:02"));
    }

    #[tokio::test]
    async fn recorded_replacement_destroys_old() {
        let (_dir, store, old, new) = store_with_instance().await;
        let (_state, replacement) = store.begin_replacement(&old, &new).await.unwrap();

        let _retirement = store.commit_replacement(replacement, &new, &old).await.unwrap();
        assert_eq!(obsolete(&store).await, left("aaaa", "sha256:01"));

        // The rename to `.retire` is not flushed, so a crash may undo it.
        let retire = store.plan_file(&old, "aaaa", RETIRE);
        std::fs::rename(&retire, store.plan_file(&new, "bbbb", REPLACE)).unwrap();
        assert_eq!(obsolete(&store).await, left("aaaa", "sha256:01"));
    }

    #[tokio::test]
    async fn ended_replacements_leave_nothing() {
        let (_dir, store, old, new) = store_with_instance().await;
        store.reset_state_dir("c", "aaaa").await.unwrap();

        let (new_state, replacement) = store.begin_replacement(&old, &new).await.unwrap();
        store.abandon_replacement(replacement, &new).await.unwrap();
        assert!(!new_state.exists());
        assert!(obsolete(&store).await.is_empty());

        let (_state, replacement) = store.begin_replacement(&old, &new).await.unwrap();
        let retirement = store.commit_replacement(replacement, &new, &old).await.unwrap();
        store.finish_retirement(retirement, &old).await.unwrap();
        assert!(obsolete(&store).await.is_empty());
        assert!(!store.state_dir("c", "aaaa").exists());
        assert_eq!(store.load_instance("c", "s").await.unwrap().unwrap().identity, "bbbb");
        let names: Vec<_> =
            std::fs::read_dir(store.instances_dir("c")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(format!("{}.json", key("s")))]);
    }

    #[tokio::test]
    async fn obsolete_forgotten_once_destroyed() {
        let (_dir, store, old, new) = store_with_instance().await;
        let (_state, _replacement) = store.begin_replacement(&old, &new).await.unwrap();

        for obsolete in store.obsolete_deployments("c").await.unwrap() {
            store.forget_obsolete("c", &obsolete).await.unwrap();
        }
        assert!(obsolete(&store).await.is_empty());
        assert!(!store.state_dir("c", "bbbb").exists());
    }

    #[tokio::test]
    async fn damaged_plan_is_skipped_and_kept() {
        let (_dir, store, old, new) = store_with_instance().await;
        let (_state, _replacement) = store.begin_replacement(&old, &new).await.unwrap();
        let file = store.plan_file(&new, "bbbb", REPLACE);
        std::fs::write(&file, br#"{"source_id":"s","old":"#).unwrap();

        assert!(obsolete(&store).await.is_empty());
        assert!(file.exists(), "the damaged file was removed");
    }
}
