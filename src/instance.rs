//! Instances: one deployed copy of a challenge per source.
//!
//! A source (a user or a team) has at most one instance per challenge. The
//! scenario never sees the source id: it gets a random identity, so nothing
//! it deploys can leak which team an instance belongs to.

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use crate::{
    challenge::Challenge,
    error::{Error, Result},
    lock::Mode,
    manager::Manager,
    runner::{self, Deployment, Runner},
    store::Intent,
    time::{serde_timestamp, serde_timestamp_opt},
};

/// A deployed instance, as stored in its record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub challenge_id: String,
    pub source_id: String,
    /// Random id given to the scenario instead of the source id.
    pub identity: String,
    #[serde(with = "serde_timestamp")]
    pub since: DateTime<Utc>,
    #[serde(with = "serde_timestamp")]
    pub last_renew: DateTime<Utc>,
    #[serde(default, with = "serde_timestamp_opt", skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    pub connection_info: String,
    #[serde(default)]
    pub flags: Vec<String>,
    /// Values given for this instance only, overriding the challenge's.
    #[serde(default)]
    pub additional: BTreeMap<String, String>,
    /// Scenario version and values of the last successful `up`.
    #[serde(default)]
    pub deployed: Deployed,
}

/// The scenario and values an instance was last deployed with: what its
/// `down` needs, and what an update compares to decide whether to run `up`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    pub scenario: String,
    pub digest: String,
    /// The challenge's additional values overlaid with the instance's.
    pub additional: BTreeMap<String, String>,
}

impl Deployed {
    /// Returns whether both run the same scenario content with the same
    /// values. The reference may differ: a new tag can name the same digest.
    pub fn same_version(&self, other: &Self) -> bool {
        self.digest == other.digest && self.additional == other.additional
    }
}

impl Instance {
    /// Returns whether the instance waits in its challenge's pool: deployed,
    /// but given to no source yet.
    pub fn is_pooled(&self) -> bool {
        self.source_id.is_empty()
    }

    /// Whether the instance is past its end at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.until.is_some_and(|until| now > until)
    }
}

/// Generates a new identity: 16 lowercase hex digits from 64 random bits.
pub fn new_identity() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Overlays the instance's additional values on the challenge's: the
/// instance wins per key.
pub fn merge_additional(
    challenge: &BTreeMap<String, String>,
    instance: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut merged = challenge.clone();
    merged.extend(instance.iter().map(|(key, value)| (key.clone(), value.clone())));
    merged
}

fn check_ids(challenge_id: &str, source_id: &str) -> Result<()> {
    if challenge_id.is_empty() {
        return Err(Error::invalid("challenge_id", "must not be empty"));
    }
    if source_id.is_empty() {
        return Err(Error::invalid("source_id", "must not be empty"));
    }
    Ok(())
}

impl Manager {
    /// Deploys an instance of a challenge for a source.
    ///
    /// The work runs in its own task: a client that disconnects half way
    /// does not interrupt a deployment, which would leave resources that no
    /// record points to.
    pub async fn create_instance(
        &self,
        challenge_id: &str,
        source_id: &str,
        additional: BTreeMap<String, String>,
    ) -> Result<Instance> {
        check_ids(challenge_id, source_id)?;
        let manager = self.clone();
        let (challenge_id, source_id) = (challenge_id.to_owned(), source_id.to_owned());
        tokio::spawn(async move { manager.deploy_new_instance(challenge_id, source_id, additional).await }).await?
    }

    #[tracing::instrument(skip_all, fields(challenge_id = %challenge_id, source_id = %source_id, identity))]
    async fn deploy_new_instance(
        &self,
        challenge_id: String,
        source_id: String,
        additional: BTreeMap<String, String>,
    ) -> Result<Instance> {
        let _lock = self.locks.instance(&challenge_id, &source_id, Mode::Write).await?;
        let challenge = self.load_challenge(&challenge_id).await?;
        let now = Utc::now();
        if challenge.is_expired(now) {
            return Err(Error::ChallengeExpired { id: challenge_id });
        }
        if self.store.load_instance(&challenge_id, &source_id).await?.is_some() {
            return Err(Error::InstanceExists { challenge_id, source_id });
        }
        if let Some(claimed) = self.claim_pooled(&challenge, &source_id, &additional, now).await? {
            return Ok(claimed);
        }
        let (runner, scenario_dir) = self.load_runner(&challenge).await?;

        // Checks done: deploy, then record the instance.
        let identity = new_identity();
        tracing::Span::current().record("identity", identity.as_str());
        let merged = merge_additional(&challenge.additional, &additional);
        let mut instance = Instance {
            challenge_id: challenge_id.clone(),
            source_id: source_id.clone(),
            identity: identity.clone(),
            since: now,
            last_renew: now,
            until: challenge.instance_until(now),
            connection_info: String::new(),
            flags: Vec::new(),
            additional,
            deployed: Deployed {
                scenario: challenge.scenario.clone(),
                digest: challenge.digest.clone(),
                additional: merged.clone(),
            },
        };
        // The intent lets a restarted server finish this deployment (run
        // `up` again and write the record) if the process stops first.
        let (state_dir, intent) = self.store.begin_instance(&instance).await?;
        let deployment =
            Deployment { scenario_dir: &scenario_dir, identity: &identity, additional: &merged, state_dir: &state_dir };
        let outputs = match runner.up(&deployment).await {
            Ok(outputs) => outputs,
            Err(source) => {
                self.clean_failed_deployment(runner.as_ref(), &deployment, &challenge_id, intent).await;
                return Err(Error::Deploy { action: "deployment", challenge_id, source_id, source });
            }
        };

        instance.connection_info = outputs.connection_info;
        instance.flags = outputs.flags;
        // On failure the intent stays on disk and the deployment keeps
        // running: the next start of `serve` finishes it.
        self.store.commit_instance(intent, &instance).await?;
        info!("instance created");
        self.pool_follows_instances(&challenge);
        Ok(instance)
    }

    /// Runs `down` after a failed `up`, then removes the state directory
    /// and the intent, so that a failed create leaves nothing behind.
    /// Failures here are logged: the caller reports the original error.
    async fn clean_failed_deployment(
        &self,
        runner: &dyn Runner,
        deployment: &Deployment<'_>,
        challenge_id: &str,
        intent: Intent,
    ) {
        if let Err(err) = runner.down(deployment).await {
            warn!(error = ?err.to_string(), "cleanup after a failed deployment failed");
            // The intent stays: the next start of `serve` runs `up` again,
            // so the instance ends up recorded (a retry of the source then
            // finds it) or destroyed, rather than half deployed and unseen.
            return;
        }
        if let Err(err) = self.store.delete_state_dir(challenge_id, deployment.identity).await {
            warn!(error = %err, "failed to remove the state directory of a failed deployment");
        }
        if let Err(err) = self.store.abandon_instance(intent).await {
            warn!(error = %err, "failed to remove the intent of a failed deployment");
        }
    }

    /// Settles the deployments that a stopped process left half done.
    /// A deployment whose record is missing runs `up` again (its client may
    /// already have received a response) and gets its record; one whose intent is
    /// torn, so that its source is unknown, is destroyed. Returns how many
    /// deployments were settled; failures are logged and retried on the
    /// next call.
    pub async fn recover_interrupted(&self) -> Result<usize> {
        let mut settled = 0;
        for id in self.challenge_ids().await? {
            // The write lock waits for every deployment in progress in this
            // challenge, so the files left are those of stopped processes.
            let _lock = self.locks.challenge_and_pool(&id).await?;
            let challenge = self.load_challenge(&id).await?;
            for intent in self.store.settle_files(&id).await? {
                match self.finish_interrupted(&challenge, &intent).await {
                    Ok(()) => settled += 1,
                    Err(err) => warn!(
                        challenge_id = %id,
                        identity = %intent.identity,
                        error = ?err.to_string(),
                        "failed to settle an interrupted deployment"
                    ),
                }
            }
            // After the records are settled: they tell which side of an
            // interrupted replacement won, and a claim whose record was still
            // under a temporary name must count as done, not be destroyed.
            settled += self.destroy_obsolete_deployments(&challenge).await?;
            match self.recover_pool(&challenge).await {
                Ok(count) => settled += count,
                Err(err) => warn!(challenge_id = %id, error = %err, "failed to settle an interrupted pool"),
            }
        }
        Ok(settled)
    }

    async fn finish_interrupted(&self, challenge: &Challenge, intent: &crate::store::FoundIntent) -> Result<()> {
        let (runner, scenario_dir) = self.load_runner(challenge).await?;
        let state_dir = self.store.state_dir(&challenge.id, &intent.identity);
        let instance_additional =
            intent.instance.as_ref().map(|instance| instance.additional.clone()).unwrap_or_default();
        let merged = merge_additional(&challenge.additional, &instance_additional);
        let deployment = Deployment {
            scenario_dir: &scenario_dir,
            identity: &intent.identity,
            additional: &merged,
            state_dir: &state_dir,
        };

        // A torn intent names no source, so no record can be written.
        let Some(recorded) = &intent.instance else {
            return self.destroy_interrupted(runner.as_ref(), &deployment, challenge, intent).await;
        };
        std::fs::create_dir_all(&state_dir).map_err(|source| crate::store::Error::Io {
            action: "create",
            path: state_dir.clone(),
            source,
        })?;
        let outputs = match runner.up(&deployment).await {
            Ok(outputs) => outputs,
            Err(err) => {
                warn!(challenge_id = %challenge.id, identity = %intent.identity, error = ?err.to_string(), "an interrupted deployment failed again");
                return self.destroy_interrupted(runner.as_ref(), &deployment, challenge, intent).await;
            }
        };

        let instance = Instance { connection_info: outputs.connection_info, flags: outputs.flags, ..recorded.clone() };
        self.store.save_instance(&instance).await?;
        self.store.remove_intent(intent).await?;
        info!(challenge_id = %challenge.id, source_id = %instance.source_id, identity = %intent.identity, "finished an interrupted deployment");
        Ok(())
    }

    async fn destroy_interrupted(
        &self,
        runner: &dyn Runner,
        deployment: &Deployment<'_>,
        challenge: &Challenge,
        intent: &crate::store::FoundIntent,
    ) -> Result<()> {
        runner.down(deployment).await.map_err(|source| Error::Deploy {
            action: "destruction",
            challenge_id: challenge.id.clone(),
            source_id: intent.instance.as_ref().map(|instance| instance.source_id.clone()).unwrap_or_default(),
            source,
        })?;
        self.store.delete_state_dir(&challenge.id, &intent.identity).await?;
        self.store.remove_intent(intent).await?;
        info!(challenge_id = %challenge.id, identity = %intent.identity, "destroyed an interrupted deployment");
        Ok(())
    }

    /// Destroys the deployments that interrupted blue-green updates left
    /// behind. Returns how many were destroyed. Failures are logged and
    /// retried on the next call.
    async fn destroy_obsolete_deployments(&self, challenge: &Challenge) -> Result<usize> {
        let mut destroyed = 0;
        for obsolete in self.store.obsolete_deployments(&challenge.id).await? {
            match self.destroy_obsolete(challenge, &obsolete).await {
                Ok(()) => destroyed += 1,
                Err(err) => warn!(
                    challenge_id = %challenge.id,
                    source_id = %obsolete.source_id,
                    identity = %obsolete.identity,
                    error = ?err.to_string(),
                    "failed to destroy a deployment left by an interrupted update"
                ),
            }
        }
        Ok(destroyed)
    }

    async fn destroy_obsolete(&self, challenge: &Challenge, obsolete: &crate::store::Obsolete) -> Result<()> {
        self.run_down(&challenge.id, &obsolete.source_id, &obsolete.identity, &obsolete.deployed).await?;
        self.store.forget_obsolete(&challenge.id, obsolete).await?;
        info!(challenge_id = %challenge.id, source_id = %obsolete.source_id, identity = %obsolete.identity, "destroyed a deployment left by an interrupted update");
        Ok(())
    }

    /// Runs `down` for one deployment, with the scenario version and values
    /// it was deployed with.
    pub(crate) async fn run_down(
        &self,
        challenge_id: &str,
        source_id: &str,
        identity: &str,
        version: &Deployed,
    ) -> Result<()> {
        let (runner, scenario_dir) = self.load_runner_at(&version.scenario, &version.digest).await?;
        let state_dir = self.store.state_dir(challenge_id, identity);
        let deployment = Deployment {
            scenario_dir: &scenario_dir,
            identity,
            additional: &version.additional,
            state_dir: &state_dir,
        };
        runner.down(&deployment).await.map_err(|source| Error::Deploy {
            action: "destruction",
            challenge_id: challenge_id.to_owned(),
            source_id: source_id.to_owned(),
            source,
        })
    }

    /// Fetches the pinned scenario of a challenge and picks its runner.
    async fn load_runner(&self, challenge: &Challenge) -> Result<(Arc<dyn Runner>, std::path::PathBuf)> {
        self.load_runner_at(&challenge.scenario, &challenge.digest).await
    }

    /// Fetches a pinned scenario and picks its runner.
    pub(crate) async fn load_runner_at(
        &self,
        reference: &str,
        digest: &str,
    ) -> Result<(Arc<dyn Runner>, std::path::PathBuf)> {
        let reference = &reference.to_owned();
        let dir = self
            .scenarios
            .fetch(reference, digest)
            .await
            .map_err(|source| Error::Scenario { reference: reference.clone(), source })?;

        if let Some(runner) = self.runners.lock().expect("runner cache poisoned").get(&dir) {
            return Ok((Arc::clone(runner), dir));
        }
        let runner: Arc<dyn Runner> = runner::load(&dir)
            .map_err(|source| Error::InvalidScenario { reference: reference.clone(), source })?
            .into();
        self.runners.lock().expect("runner cache poisoned").insert(dir.clone(), Arc::clone(&runner));
        Ok((runner, dir))
    }

    /// Returns the instance of a source.
    #[tracing::instrument(skip_all, fields(challenge_id = %challenge_id, source_id = %source_id))]
    pub async fn get_instance(&self, challenge_id: &str, source_id: &str) -> Result<Instance> {
        let _lock = self.locks.instance(challenge_id, source_id, Mode::Read).await?;
        self.load_instance(challenge_id, source_id).await
    }

    async fn load_instance(&self, challenge_id: &str, source_id: &str) -> Result<Instance> {
        self.store.load_instance(challenge_id, source_id).await?.ok_or_else(|| Error::InstanceNotFound {
            challenge_id: challenge_id.to_owned(),
            source_id: source_id.to_owned(),
        })
    }

    /// Streams the instances of a source, at most one per challenge.
    pub fn list_instances(&self, source_id: &str) -> ReceiverStream<Result<Instance>> {
        let (sender, receiver) = mpsc::channel(8);
        let manager = self.clone();
        let source_id = source_id.to_owned();
        tokio::spawn(async move {
            let ids = match manager.challenge_ids().await {
                Ok(ids) => ids,
                Err(err) => {
                    let _ = sender.send(Err(err)).await;
                    return;
                }
            };
            for challenge_id in ids {
                let instance = match manager.get_instance(&challenge_id, &source_id).await {
                    Err(Error::InstanceNotFound { .. }) => continue,
                    other => other,
                };
                if sender.send(instance).await.is_err() {
                    return;
                }
            }
        });
        ReceiverStream::new(receiver)
    }

    /// Extends an instance's lifetime: it now ends one challenge timeout
    /// from now, capped by the challenge's end.
    #[tracing::instrument(skip_all, fields(challenge_id = %challenge_id, source_id = %source_id))]
    pub async fn renew_instance(&self, challenge_id: &str, source_id: &str) -> Result<Instance> {
        check_ids(challenge_id, source_id)?;
        let _lock = self.locks.instance(challenge_id, source_id, Mode::Write).await?;
        let challenge = self.load_challenge(challenge_id).await?;
        let mut instance = self.load_instance(challenge_id, source_id).await?;
        let now = Utc::now();
        if challenge.timeout.is_none() {
            return Err(Error::NoRenewal { id: challenge.id });
        }
        if instance.is_expired(now) {
            return Err(Error::InstanceExpired { challenge_id: challenge.id, source_id: instance.source_id });
        }

        instance.last_renew = now;
        instance.until = challenge.instance_until(now);
        self.store.save_instance(&instance).await?;
        info!(until = ?instance.until, "instance renewed");
        Ok(instance)
    }

    /// Destroys the instance of a source and removes its record.
    pub async fn delete_instance(&self, challenge_id: &str, source_id: &str) -> Result<()> {
        check_ids(challenge_id, source_id)?;
        let manager = self.clone();
        let (challenge_id, source_id) = (challenge_id.to_owned(), source_id.to_owned());
        // Like a deployment, a destroy is not interrupted by the client.
        tokio::spawn(async move { manager.delete_instance_now(&challenge_id, &source_id).await }).await?
    }

    #[tracing::instrument(skip_all, fields(challenge_id = %challenge_id, source_id = %source_id))]
    async fn delete_instance_now(&self, challenge_id: &str, source_id: &str) -> Result<()> {
        let _lock = self.locks.instance(challenge_id, source_id, Mode::Write).await?;
        let challenge = self.load_challenge(challenge_id).await?;
        let instance = self.load_instance(challenge_id, source_id).await?;
        self.destroy_instance(&challenge, &instance).await?;
        info!(identity = %instance.identity, "instance deleted");
        self.pool_follows_instances(&challenge);
        Ok(())
    }

    /// Runs `down` for an instance, then removes its record and state. The
    /// caller holds a lock that covers the instance.
    pub(crate) async fn destroy_instance(&self, challenge: &Challenge, instance: &Instance) -> Result<()> {
        // `down` runs the scenario version the instance was deployed with.
        self.run_down(&challenge.id, &instance.source_id, &instance.identity, &instance.deployed).await?;
        self.store.delete_instance(instance).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_sixteen_lowercase_hex_digits() {
        let identity = new_identity();
        assert_eq!(identity.len(), 16);
        assert!(identity.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(identity, new_identity());
    }

    #[test]
    fn instance_additional_wins_per_key() {
        let challenge = BTreeMap::from([("a".to_owned(), "1".to_owned()), ("b".to_owned(), "2".to_owned())]);
        let instance = BTreeMap::from([("b".to_owned(), "3".to_owned())]);
        let merged = merge_additional(&challenge, &instance);
        assert_eq!(merged.get("a").map(String::as_str), Some("1"));
        assert_eq!(merged.get("b").map(String::as_str), Some("3"));
    }
}
