//! The pool: instances deployed ahead of demand, so that a request for an
//! instance takes one in about a millisecond instead of waiting for `up`.
//!
//! A challenge's `min` is the number of pooled (unclaimed) instances to
//! keep ready. Its `max` is the total of claimed and pooled instances above
//! which no pooled instance is deployed, and 0 means no limit. `max > 0`
//! with `min = 0` keeps no pool. An empty pool only makes a create slower:
//! it deploys on demand, as without a pool.
//!
//! Pools are filled and shrunk by *rounds*, in the background, never on a
//! request's path. A round counts the claimed and pooled instances, applies
//! [`delta`], deploys or destroys the difference, and replaces pooled
//! instances that still run an older scenario or older values (an update
//! moves them first, see [`Manager::follow_pool`]). Rounds start after
//! a challenge is created or updated, after each claim, on-demand
//! deployment and instance deletion, when `serve` starts, just after a challenge's `until` (to drain
//! its pool), and every [`TICK`]. At most one round per challenge runs at a
//! time in a process. A trigger that arrives during a round makes it run
//! again, so racing triggers never overshoot.
//!
//! A round holds the pool's lock (see [`crate::lock`]) in read mode while it
//! deploys. An update or a deletion of the challenge takes it in write mode,
//! so it waits for the deployments in flight and then finds every pooled
//! instance on disk. Claims and reads of the challenge go on meanwhile.
//!
//! NOTE: several `serve` processes sharing one data directory each run
//! their own rounds, and may together deploy more than `min`.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use futures::{StreamExt, future::join_all, stream};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::{
    challenge::{Challenge, UpdateStrategy},
    error::{Error, Result},
    instance::{Deployed, Instance, merge_additional, new_identity},
    lock::Mode,
    manager::Manager,
    runner::Deployment,
};

/// Interval of the periodic rounds, which run for every challenge even
/// when nothing triggered one.
const TICK: Duration = Duration::from_secs(15);

/// Maximum pooled deployments in progress at a time in one round, so that
/// a large `min` does not start hundreds of scenarios at once.
const FILL_PARALLEL: usize = 4;

/// Maximum wait before a round that follows failed deployments.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Pooled instances to deploy and to destroy to reach a pool's target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delta {
    pub create: usize,
    pub destroy: usize,
}

/// Computes how a pool of `pooled` instances must change when `claimed`
/// instances are claimed: the target is `min`, lowered so that the total
/// stays within `max` when `max` is set.
pub fn delta(min: i64, max: i64, claimed: usize, pooled: usize) -> Delta {
    let min = usize::try_from(min).unwrap_or(0);
    let target = match usize::try_from(max) {
        Ok(0) | Err(_) => min,
        Ok(max) => min.min(max.saturating_sub(claimed)),
    };
    Delta { create: target.saturating_sub(pooled), destroy: pooled.saturating_sub(target) }
}

/// The rounds of this process.
#[derive(Debug, Default)]
pub(crate) struct Pooler {
    /// Only `serve` fills pools. Operator commands that run without a
    /// server still claim pooled instances, and leave refills to it.
    enabled: AtomicBool,
    rounds: Mutex<HashMap<String, Round>>,
}

#[derive(Debug, Default)]
struct Round {
    running: bool,
    /// A trigger arrived while the round ran: run another one.
    again: bool,
    /// Consecutive rounds with failed deployments.
    failures: u32,
    /// The version every pooled instance was found to run at the end of
    /// the last round. While the challenge keeps it, the next round only
    /// counts the pooled records instead of reading each one: rounds are
    /// the only writers of pooled records, and they deploy this version.
    verified: Option<Deployed>,
    /// The challenge end at which a round is scheduled to drain the pool.
    drain_at: Option<DateTime<Utc>>,
    /// Cuts short the wait after failed deployments.
    wake: Arc<Notify>,
}

impl Pooler {
    fn rounds(&self) -> std::sync::MutexGuard<'_, HashMap<String, Round>> {
        // Every update leaves the map valid, so a panic elsewhere while it
        // was locked cannot corrupt it.
        self.rounds.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Counts of one round.
#[derive(Debug, Default)]
struct RoundReport {
    created: usize,
    destroyed: usize,
    failed: usize,
    /// The challenge no longer exists.
    challenge_deleted: bool,
}

impl RoundReport {
    /// Counts the outcomes of a round's destructions (`false`: a claim took
    /// the instance first) and deployments, and logs each failure.
    fn tally(challenge_id: &str, destroyed: Vec<Result<bool>>, created: Vec<Result<()>>) -> Self {
        let mut report = Self::default();
        for result in destroyed {
            match result {
                Ok(true) => report.destroyed += 1,
                Ok(false) => {}
                Err(err) => {
                    report.failed += 1;
                    warn!(challenge_id = %challenge_id, error = %err, "failed to destroy a pooled instance");
                }
            }
        }
        for result in created {
            match result {
                Ok(()) => report.created += 1,
                Err(err) => {
                    report.failed += 1;
                    warn!(challenge_id = %challenge_id, error = %err, "failed to deploy a pooled instance");
                }
            }
        }
        report
    }
}

impl Manager {
    /// Starts filling pools in this process: a round for every challenge
    /// now, then every [`TICK`]. Call it after [`Manager::recover_interrupted`],
    /// which settles what a stopped process left in the pools.
    pub fn start_pooler(&self) {
        self.pooler.enabled.store(true, Ordering::Release);
        let manager = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(TICK);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match manager.challenge_ids().await {
                    Ok(ids) => ids.iter().for_each(|id| manager.refill_pool(id)),
                    Err(err) => warn!(error = %err, "failed to list challenges for the pool rounds"),
                }
            }
        });
    }

    /// Starts a round for a challenge's pool, or marks the running one to
    /// run again. Does nothing where the pooler is not started. After
    /// failed deployments, the next round waits for its backoff.
    pub(crate) fn refill_pool(&self, challenge_id: &str) {
        self.trigger_round(challenge_id, false);
    }

    /// Starts a round after an instance of this challenge was deployed on
    /// demand or deleted, which changes the count that `max` caps. Without
    /// `min` the delta rule never deploys, and the round that followed the
    /// update to `min = 0` drained the pool, so there is nothing to do: the
    /// janitor deletes thousands of such instances in one sweep.
    pub(crate) fn pool_follows_instances(&self, challenge: &Challenge) {
        if challenge.min > 0 {
            self.refill_pool(&challenge.id);
        }
    }

    /// Starts a round like [`Manager::refill_pool`], but without waiting for
    /// a backoff, because a new or changed challenge may fix what failed.
    pub(crate) fn refill_pool_now(&self, challenge_id: &str) {
        self.trigger_round(challenge_id, true);
    }

    fn trigger_round(&self, challenge_id: &str, now: bool) {
        if !self.pooler.enabled.load(Ordering::Acquire) {
            return;
        }
        {
            let mut rounds = self.pooler.rounds();
            let round = rounds.entry(challenge_id.to_owned()).or_default();
            if now {
                round.failures = 0;
                round.wake.notify_waiters();
            }
            if round.running {
                round.again = true;
                return;
            }
            round.running = true;
        }
        let (manager, id) = (self.clone(), challenge_id.to_owned());
        tokio::spawn(async move { manager.run_rounds(id).await });
    }

    async fn run_rounds(&self, challenge_id: String) {
        loop {
            // This round covers every trigger so far: only those that come
            // while it runs call for another.
            let wake = {
                let mut rounds = self.pooler.rounds();
                let round = rounds.entry(challenge_id.clone()).or_default();
                round.again = false;
                Arc::clone(&round.wake)
            };
            let report = match self.pool_round(&challenge_id).await {
                Ok(report) => report,
                Err(err) => {
                    warn!(challenge_id = %challenge_id, error = %err, "pool round failed");
                    RoundReport { failed: 1, ..RoundReport::default() }
                }
            };

            let delay = {
                let mut rounds = self.pooler.rounds();
                let round = rounds.entry(challenge_id.clone()).or_default();
                round.failures = if report.failed > 0 { round.failures + 1 } else { 0 };
                if report.challenge_deleted {
                    rounds.remove(&challenge_id);
                    return;
                }
                // After failures, triggers that came during the round wait
                // for the backoff too, or a storm of claims would retry at once.
                if round.failures == 0 {
                    if round.again {
                        continue;
                    }
                    round.running = false;
                    return;
                }
                retry_delay(round.failures)
            };
            warn!(challenge_id = %challenge_id, retry_in_ms = delay.as_millis() as u64, "pool deployments failed, retrying");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = wake.notified() => {}
            }
        }
    }

    /// Brings one challenge's pool to its target.
    async fn pool_round(&self, challenge_id: &str) -> Result<RoundReport> {
        let _lock = self.locks.pool(challenge_id, Mode::Read).await?;
        let Some(challenge) = self.store.load_challenge(challenge_id).await? else {
            return Ok(RoundReport { challenge_deleted: true, ..RoundReport::default() });
        };

        let version = pooled_version(&challenge);
        let verified = self.pooler.rounds().get(challenge_id).and_then(|round| round.verified.clone());
        let (current, stale) = if verified.is_some_and(|verified| verified.same_version(&version)) {
            (self.store.pooled(challenge_id)?, Vec::new())
        } else {
            self.pooled_by_version(&challenge).await?
        };
        // Counting claimed instances reads a directory that may hold
        // thousands of entries, and only a pool capped by `max` needs it.
        let claimed =
            if challenge.min > 0 && challenge.max > 0 { self.store.count_instances(challenge_id).await? } else { 0 };
        let now = Utc::now();
        if let Some(until) = challenge.until.filter(|until| *until > now && challenge.min > 0) {
            self.schedule_drain(challenge_id, until);
        }
        let change = if challenge.is_expired(now) {
            Delta { create: 0, destroy: current.len() }
        } else {
            delta(challenge.min, challenge.max, claimed, current.len())
        };

        // Claims take pooled instances in name order, so the surplus is
        // taken from the other end.
        let surplus = current.iter().rev().take(change.destroy);
        let doomed: Vec<&String> = stale.iter().chain(surplus).collect();
        let destroyed = join_all(doomed.iter().map(|identity| self.destroy_pooled(&challenge, identity))).await;
        let created: Vec<Result<()>> = stream::iter(0..change.create)
            .map(|_| self.fill_one(&challenge))
            .buffer_unordered(FILL_PARALLEL)
            .collect()
            .await;

        let report = RoundReport::tally(challenge_id, destroyed, created);
        log_round(&challenge, self.store.pooled(challenge_id)?.len(), &report);
        if report.failed == 0 {
            self.pooler.rounds().entry(challenge_id.to_owned()).or_default().verified = Some(version);
        }
        Ok(report)
    }

    /// Runs a round just after the challenge's end, which destroys its
    /// pool, unless one is already scheduled for that time.
    fn schedule_drain(&self, challenge_id: &str, until: DateTime<Utc>) {
        {
            let mut rounds = self.pooler.rounds();
            let round = rounds.entry(challenge_id.to_owned()).or_default();
            if round.drain_at == Some(until) {
                return;
            }
            round.drain_at = Some(until);
        }
        // Expiry is strict (`now > until`), so the round runs just after.
        let wait = (until - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(10);
        let (manager, id) = (self.clone(), challenge_id.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            manager.refill_pool(&id);
        });
    }

    /// Moves the ready pooled instances to the challenge's new scenario or
    /// values with the update's strategy, as claimed instances move. Those
    /// whose update fails stay on their previous version, and the next
    /// round replaces them. The caller holds the challenge's lock in write
    /// mode, so no claim or round runs meanwhile.
    pub(crate) async fn follow_pool(&self, challenge: &Challenge, strategy: UpdateStrategy) {
        // A pool that is going away is destroyed by the next round as is.
        if challenge.min == 0 || challenge.is_expired(Utc::now()) {
            return;
        }
        let pooled = match self.pooled_records(challenge) {
            Ok(pooled) => pooled,
            Err(err) => {
                warn!(challenge_id = %challenge.id, error = %err, "failed to read the pool to update it");
                return;
            }
        };
        if let Err(err) = self.follow_challenge(challenge, pooled, strategy, false).await {
            warn!(challenge_id = %challenge.id, error = %err, "some pooled instances still run the previous version; the next round replaces them");
        }
    }

    fn pooled_records(&self, challenge: &Challenge) -> Result<Vec<Instance>> {
        let mut records = Vec::new();
        for identity in self.store.pooled(&challenge.id)? {
            records.extend(self.store.load_pooled(&challenge.id, &identity)?);
        }
        Ok(records)
    }

    /// Lists the identities of the ready pooled instances of a challenge,
    /// split into those that run its current version and the stale ones.
    async fn pooled_by_version(&self, challenge: &Challenge) -> Result<(Vec<String>, Vec<String>)> {
        let target = pooled_version(challenge);
        let mut current = Vec::new();
        let mut stale = Vec::new();
        for identity in self.store.pooled(&challenge.id)? {
            let Some(instance) = self.store.load_pooled(&challenge.id, &identity)? else { continue };
            if instance.deployed.same_version(&target) {
                current.push(identity);
            } else {
                stale.push(identity);
            }
        }
        Ok((current, stale))
    }

    /// Deploys one pooled instance with the challenge's own values.
    async fn fill_one(&self, challenge: &Challenge) -> Result<()> {
        let (runner, scenario_dir) = self.load_runner_at(&challenge.scenario, &challenge.digest).await?;
        let now = Utc::now();
        let mut instance = Instance {
            challenge_id: challenge.id.clone(),
            source_id: String::new(),
            identity: new_identity(),
            since: now,
            last_renew: now,
            until: None,
            connection_info: String::new(),
            flags: Vec::new(),
            additional: BTreeMap::new(),
            deployed: pooled_version(challenge),
        };
        let state_dir = self.store.begin_pooled(&instance).await?;
        let deployment = Deployment {
            scenario_dir: &scenario_dir,
            identity: &instance.identity,
            additional: &instance.deployed.additional,
            state_dir: &state_dir,
        };
        let pool_error = |source| Error::PoolDeploy { challenge_id: challenge.id.clone(), source };

        let outputs = match runner.up(&deployment).await {
            Ok(outputs) => outputs,
            Err(source) => {
                // When `down` fails too, the intent stays and the next start
                // of `serve` destroys the deployment.
                if let Err(cleanup) = runner.down(&deployment).await {
                    warn!(challenge_id = %challenge.id, identity = %instance.identity, error = %source, "pooled deployment failed");
                    return Err(pool_error(cleanup));
                }
                self.store.remove_pooled(&challenge.id, &instance.identity).await?;
                return Err(pool_error(source));
            }
        };
        instance.connection_info = outputs.connection_info;
        instance.flags = outputs.flags;
        self.store.commit_pooled(&instance).await?;
        Ok(())
    }

    /// Takes a ready pooled instance and destroys it. Returns `false` when
    /// a claim took it first.
    async fn destroy_pooled(&self, challenge: &Challenge, identity: &str) -> Result<bool> {
        let Some(taken) = self.store.take_pooled(&challenge.id, identity)? else { return Ok(false) };
        self.destroy_instance(challenge, &taken).await?;
        Ok(true)
    }

    /// Gives a pooled instance to a source, if the pool has one. Its
    /// lifetime starts now, and it is updated in place first when it does
    /// not run the version and values the source would get from a new
    /// deployment. The caller holds the source's instance lock.
    pub(crate) async fn claim_pooled(
        &self,
        challenge: &Challenge,
        source_id: &str,
        additional: &BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Result<Option<Instance>> {
        for identity in self.store.pooled(&challenge.id)? {
            let Some(pooled) = self.store.take_pooled(&challenge.id, &identity)? else { continue };
            let taken = pooled.clone();
            let claimed = Instance {
                source_id: source_id.to_owned(),
                since: now,
                last_renew: now,
                until: challenge.instance_until(now),
                additional: additional.clone(),
                ..pooled
            };
            let claimed = match self.bring_up_to_date(challenge, claimed).await {
                Ok(claimed) => claimed,
                Err(err) => {
                    // Destroyed as the pooled instance it still is, so that
                    // its pool files go too.
                    if let Err(cleanup) = self.destroy_instance(challenge, &taken).await {
                        warn!(identity = %taken.identity, error = %cleanup, "failed to destroy a pooled instance whose update failed");
                    }
                    self.refill_pool(&challenge.id);
                    return Err(err);
                }
            };
            self.store.commit_claim(&claimed).await?;
            info!(identity = %claimed.identity, "claimed a pooled instance");
            self.refill_pool(&challenge.id);
            return Ok(Some(claimed));
        }
        Ok(None)
    }

    /// Updates a just-claimed instance in place when its deployment differs
    /// from what the source asked for. On failure the caller destroys it,
    /// so that a failed create leaves nothing behind, like a failed `up`.
    async fn bring_up_to_date(&self, challenge: &Challenge, claimed: Instance) -> Result<Instance> {
        let target = Deployed {
            scenario: challenge.scenario.clone(),
            digest: challenge.digest.clone(),
            additional: merge_additional(&challenge.additional, &claimed.additional),
        };
        if claimed.deployed.same_version(&target) {
            return Ok(claimed);
        }
        self.redeploy(challenge, claimed, target, UpdateStrategy::UpdateInPlace).await
    }

    /// Destroys every pooled instance of a challenge, including those a
    /// stopped process left half deployed or half claimed. The caller holds
    /// the challenge's lock in write mode. Returns the failures, named by
    /// identity.
    pub(crate) async fn destroy_pool(&self, challenge: &Challenge) -> Result<Vec<(String, Error)>> {
        let leftovers = self.store.pool_leftovers(&challenge.id).await?;
        let mut all = Vec::new();
        for identity in self.store.pooled(&challenge.id)? {
            all.extend(self.store.take_pooled(&challenge.id, &identity)?);
        }
        all.extend(leftovers.unfinished);
        all.extend(leftovers.taken);

        let results = join_all(all.iter().map(|instance| self.destroy_instance(challenge, instance))).await;
        Ok(results
            .into_iter()
            .zip(&all)
            .filter_map(|(result, instance)| result.err().map(|err| (format!("pooled {}", instance.identity), err)))
            .collect())
    }

    /// Settles what a stopped process left in a challenge's pool: half
    /// deployed and half claimed instances are destroyed; the next round
    /// deploys their replacements. The caller holds the challenge's lock in
    /// write mode.
    pub(crate) async fn recover_pool(&self, challenge: &Challenge) -> Result<usize> {
        let leftovers = self.store.pool_leftovers(&challenge.id).await?;
        let mut settled = 0;
        for instance in leftovers.unfinished.iter().chain(&leftovers.taken) {
            match self.destroy_instance(challenge, instance).await {
                Ok(()) => {
                    settled += 1;
                    info!(challenge_id = %challenge.id, identity = %instance.identity, "destroyed an interrupted pooled instance");
                }
                Err(err) => warn!(
                    challenge_id = %challenge.id,
                    identity = %instance.identity,
                    error = %err,
                    "failed to destroy an interrupted pooled instance"
                ),
            }
        }
        Ok(settled)
    }

    /// Counts the ready pooled instances of a challenge.
    pub async fn pooled_count(&self, challenge_id: &str) -> Result<usize> {
        Ok(self.store.pooled(challenge_id)?.len())
    }
}

/// The version a pooled instance of `challenge` runs: its scenario, with
/// the challenge's values only.
fn pooled_version(challenge: &Challenge) -> Deployed {
    Deployed {
        scenario: challenge.scenario.clone(),
        digest: challenge.digest.clone(),
        additional: challenge.additional.clone(),
    }
}

/// Returns the wait before the round after `failures` consecutive failed
/// rounds: one second, doubling up to [`MAX_RETRY_DELAY`].
fn retry_delay(failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(6);
    (Duration::from_secs(1) * factor).min(MAX_RETRY_DELAY)
}

fn log_round(challenge: &Challenge, pooled: usize, report: &RoundReport) {
    let RoundReport { created, destroyed, failed, .. } = *report;
    if created == 0 && destroyed == 0 && failed == 0 {
        return;
    }
    let (min, max) = (challenge.min, challenge.max);
    let message = match (created, destroyed, failed) {
        (_, 0, 0) => "pool filled",
        (0, _, 0) => "pool shrunk",
        (_, _, 0) => "pool changed",
        _ => {
            warn!(challenge_id = %challenge.id, pooled, created, destroyed, failed, min, max, "pool round failed in part");
            return;
        }
    };
    info!(challenge_id = %challenge.id, pooled, created, destroyed, failed, min, max, "{message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_matches_the_go_table() {
        // (min, max, claimed, pooled) -> (create, destroy), from the unit
        // test of the Go chall-manager's pool package.
        let cases = [
            ((1, 0, 0, 3), (0, 2)),
            ((3, 0, 0, 1), (2, 0)),
            ((2, 6, 1, 2), (0, 0)),
            ((2, 6, 2, 1), (1, 0)),
            ((2, 2, 1, 2), (0, 1)),
            ((2, 4, 1, 2), (0, 0)),
            ((2, 4, 0, 0), (2, 0)),
        ];
        for ((min, max, claimed, pooled), (create, destroy)) in cases {
            assert_eq!(
                delta(min, max, claimed, pooled),
                Delta { create, destroy },
                "min {min}, max {max}, claimed {claimed}, pooled {pooled}"
            );
        }
    }

    #[test]
    fn delta_keeps_no_pool_without_min() {
        assert_eq!(delta(0, 5, 0, 0), Delta { create: 0, destroy: 0 });
        assert_eq!(delta(0, 5, 1, 2), Delta { create: 0, destroy: 2 });
    }

    #[test]
    fn delta_stops_at_max() {
        assert_eq!(delta(1, 2, 2, 0), Delta { create: 0, destroy: 0 });
        assert_eq!(delta(1, 2, 3, 1), Delta { create: 0, destroy: 1 });
    }

    #[test]
    fn retry_delay_doubles_to_a_minute() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(7), Duration::from_secs(60));
        assert_eq!(retry_delay(40), Duration::from_secs(60));
    }
}
