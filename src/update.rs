//! Hot updates: running instances follow a change of their challenge's
//! scenario or additional values.
//!
//! An instance needs an update when the scenario digest or the merged
//! additional values it was deployed with differ from the challenge's. The
//! strategy decides how:
//!
//! - update in place: `up` again with the same identity and state;
//! - blue-green: `up` under a new identity, then `down` of the old one;
//! - recreate: `down`, then `up` with the same identity on a fresh state
//!   directory.
//!
//! A failed update leaves the instance on its previous version: the new
//! deployment is destroyed (blue-green), or the previous scenario runs `up`
//! again (in place, recreate). The instance keeps its record, which still
//! names the previous version, so sending the update again retries it.
//!
//! A blue-green update names both deployments in a file until the one that
//! lost is destroyed (see `store::replacement`). So neither is orphaned when
//! the process stops half way or a `down` fails: the next start of `serve`
//! destroys what is left.

use futures::future::join_all;
use tracing::{info, warn};

use crate::{
    challenge::{Challenge, UpdateStrategy},
    error::{Error, Result},
    instance::{Deployed, Instance, merge_additional, new_identity},
    manager::Manager,
    runner::{Deployment, Outputs},
    store::Retirement,
};

impl Manager {
    /// Brings every instance of `challenge` to its scenario and values, in
    /// parallel, and recomputes their end when `expiry_changed`. Returns
    /// the instances as they now are; fails naming the sources whose
    /// update failed (their records are unchanged).
    pub(crate) async fn follow_challenge(
        &self,
        challenge: &Challenge,
        instances: Vec<Instance>,
        strategy: UpdateStrategy,
        expiry_changed: bool,
    ) -> Result<Vec<Instance>> {
        let updates =
            instances.into_iter().map(|instance| self.follow_one(challenge, instance, strategy, expiry_changed));
        let results = join_all(updates).await;

        let mut updated = Vec::with_capacity(results.len());
        let mut failures = Vec::new();
        for result in results {
            match result {
                Ok(instance) => updated.push(instance),
                Err((source_id, err)) => failures.push((source_id, err)),
            }
        }
        if let Some((_, first)) = failures.first() {
            return Err(Error::InstancesNotUpdated {
                id: challenge.id.clone(),
                first: first.to_string(),
                sources: failures.iter().map(|(source, _)| source.clone()).collect(),
            });
        }
        Ok(updated)
    }

    async fn follow_one(
        &self,
        challenge: &Challenge,
        mut instance: Instance,
        strategy: UpdateStrategy,
        expiry_changed: bool,
    ) -> Result<Instance, (String, Error)> {
        let target = Deployed {
            scenario: challenge.scenario.clone(),
            digest: challenge.digest.clone(),
            additional: merge_additional(&challenge.additional, &instance.additional),
        };
        let redeploy = instance.deployed.digest != target.digest || instance.deployed.additional != target.additional;
        if !redeploy && !expiry_changed {
            return Ok(instance);
        }

        let source_id = instance.source_id.clone();
        if redeploy {
            instance =
                self.redeploy(challenge, instance, target, strategy).await.map_err(|err| (source_id.clone(), err))?;
        }
        if expiry_changed {
            instance.until = challenge.instance_until(instance.last_renew);
        }
        self.store.save_instance(&instance).await.map_err(|err| (source_id, err.into()))?;
        Ok(instance)
    }

    #[tracing::instrument(skip_all, fields(challenge_id = %challenge.id, source_id = %instance.source_id, identity = %instance.identity, strategy = ?strategy))]
    pub(crate) async fn redeploy(
        &self,
        challenge: &Challenge,
        instance: Instance,
        target: Deployed,
        strategy: UpdateStrategy,
    ) -> Result<Instance> {
        let updated = match strategy {
            UpdateStrategy::UpdateInPlace => self.update_in_place(challenge, instance, target).await?,
            UpdateStrategy::BlueGreen => self.blue_green(challenge, instance, target).await?,
            UpdateStrategy::Recreate => self.recreate(challenge, instance, target).await?,
        };
        info!(identity = %updated.identity, digest = %updated.deployed.digest, "instance updated");
        Ok(updated)
    }

    async fn update_in_place(&self, challenge: &Challenge, instance: Instance, target: Deployed) -> Result<Instance> {
        match self.up(challenge, &instance, &instance.identity, &target).await {
            Ok(outputs) => Ok(with_outputs(instance, target, outputs, None)),
            Err(err) => {
                self.restore(challenge, &instance).await;
                Err(err)
            }
        }
    }

    async fn blue_green(&self, challenge: &Challenge, instance: Instance, target: Deployed) -> Result<Instance> {
        let draft = Instance { identity: new_identity(), deployed: target.clone(), ..instance.clone() };
        let (_state, replacement) = self.store.begin_replacement(&instance, &draft).await?;
        let outputs = match self.up(challenge, &instance, &draft.identity, &target).await {
            Ok(outputs) => outputs,
            Err(err) => {
                match self.down(challenge, &instance, &draft.identity, &target).await {
                    Ok(()) => self.store.abandon_replacement(replacement, &draft).await?,
                    Err(cleanup) => warn!(
                        new_identity = %draft.identity,
                        error = ?cleanup.to_string(),
                        "failed to destroy the new deployment of a failed update, the next start of serve tries again"
                    ),
                }
                return Err(err);
            }
        };

        // The new deployment serves from now on; the old one goes.
        let updated = with_outputs(instance.clone(), target, outputs, Some(draft.identity));
        let retirement = self.store.commit_replacement(replacement, &updated, &instance).await?;
        self.retire(challenge, &instance, retirement, &updated.identity).await;
        Ok(updated)
    }

    /// Destroys the deployment that a blue-green update replaced. The update
    /// itself succeeded and the instance serves the new version, so failures
    /// are logged, not returned: the file left names the old deployment for
    /// the next start of `serve`.
    async fn retire(&self, challenge: &Challenge, old: &Instance, retirement: Retirement, new_identity: &str) {
        if let Err(err) = self.down(challenge, old, &old.identity, &old.deployed).await {
            warn!(
                new_identity,
                error = ?err.to_string(),
                "failed to destroy the previous deployment of an updated instance; the next start of serve (or the next pool round, for a pooled instance) tries again"
            );
            return;
        }
        if let Err(err) = self.store.finish_retirement(retirement, old).await {
            warn!(error = %err, "failed to remove the files of a destroyed previous deployment");
        }
    }

    async fn recreate(&self, challenge: &Challenge, instance: Instance, target: Deployed) -> Result<Instance> {
        // NOTE: a crash between this `down` and the `up` below leaves a record
        // whose deployment is gone. Sending the update again runs `down`
        // (on nothing) and `up`, so the scenario's `down` must accept that.
        self.down(challenge, &instance, &instance.identity, &instance.deployed).await?;
        self.store.reset_state_dir(&challenge.id, &instance.identity).await?;
        match self.up(challenge, &instance, &instance.identity, &target).await {
            Ok(outputs) => Ok(with_outputs(instance, target, outputs, None)),
            Err(err) => {
                if let Err(cleanup) = self.down(challenge, &instance, &instance.identity, &target).await {
                    warn!(error = ?cleanup.to_string(), "failed to destroy the new deployment of a failed update");
                }
                self.restore(challenge, &instance).await;
                Err(err)
            }
        }
    }

    /// Runs the previous version's `up` again after a failed update, so the
    /// instance serves as before. A failure is logged: the caller reports
    /// the update's error.
    async fn restore(&self, challenge: &Challenge, instance: &Instance) {
        if let Err(err) = self.up(challenge, instance, &instance.identity, &instance.deployed).await {
            warn!(error = ?err.to_string(), "failed to restore the previous version after a failed update");
        }
    }

    async fn up(
        &self,
        challenge: &Challenge,
        instance: &Instance,
        identity: &str,
        version: &Deployed,
    ) -> Result<Outputs> {
        let (runner, scenario_dir) = self.load_runner_at(&version.scenario, &version.digest).await?;
        let state_dir = self.store.state_dir(&challenge.id, identity);
        let deployment = Deployment {
            scenario_dir: &scenario_dir,
            identity,
            additional: &version.additional,
            state_dir: &state_dir,
        };
        runner.up(&deployment).await.map_err(|source| Error::Deploy {
            action: "update",
            challenge_id: challenge.id.clone(),
            source_id: instance.source_id.clone(),
            source,
        })
    }

    async fn down(&self, challenge: &Challenge, instance: &Instance, identity: &str, version: &Deployed) -> Result<()> {
        self.run_down(&challenge.id, &instance.source_id, identity, version).await
    }
}

/// Builds the instance after a successful `up` of `target`, under a new identity
/// when one is given.
fn with_outputs(instance: Instance, target: Deployed, outputs: Outputs, identity: Option<String>) -> Instance {
    Instance {
        identity: identity.unwrap_or(instance.identity),
        connection_info: outputs.connection_info,
        flags: outputs.flags,
        deployed: target,
        ..instance
    }
}
