//! Challenges: registering, reading, updating and deleting them.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use crate::{
    error::{Error, Result},
    instance::Instance,
    lock::Mode,
    manager::Manager,
    time::{serde_duration_opt, serde_timestamp_opt},
};

/// A registered challenge, as stored in `challenge.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub id: String,
    /// The reference as the client gave it.
    pub scenario: String,
    /// Manifest digest the reference resolved to when it was set: instances
    /// always deploy this exact content, even if the tag moves.
    pub digest: String,
    #[serde(default, with = "serde_duration_opt", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, with = "serde_timestamp_opt", skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    #[serde(default)]
    pub additional: BTreeMap<String, String>,
    #[serde(default)]
    pub min: i64,
    #[serde(default)]
    pub max: i64,
}

impl Challenge {
    /// Whether the challenge refuses new instances at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.until.is_some_and(|until| now > until)
    }

    /// Computes when an instance created or renewed at `now` expires: after
    /// the timeout, but never past the challenge's own end.
    pub fn instance_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let after_timeout = self
            .timeout
            .and_then(|timeout| chrono::Duration::from_std(timeout).ok())
            .and_then(|timeout| now.checked_add_signed(timeout));
        match (after_timeout, self.until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A challenge with its claimed instances, as the API returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChallengeInfo {
    pub challenge: Challenge,
    pub instances: Vec<Instance>,
    /// Ready pooled instances, when known. The API messages have no field
    /// for it, so the gRPC and REST responses of RetrieveChallenge carry it
    /// in a header ([`POOLED_HEADER`]).
    pub pooled: Option<usize>,
}

/// Response header with the number of ready pooled instances of a
/// challenge, in RetrieveChallenge responses.
pub const POOLED_HEADER: &str = "chall-manager-pooled";

/// Request to register a challenge.
#[derive(Clone, Debug, Default)]
pub struct NewChallenge {
    pub id: String,
    pub scenario: String,
    pub timeout: Option<Duration>,
    pub until: Option<DateTime<Utc>>,
    pub additional: BTreeMap<String, String>,
    pub min: i64,
    pub max: i64,
}

/// A field of a challenge that an update can change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Scenario,
    Timeout,
    Until,
    Additional,
    Min,
    Max,
}

impl Field {
    /// Every field, in the order of the API message.
    pub const ALL: [Self; 6] = [Self::Scenario, Self::Timeout, Self::Until, Self::Additional, Self::Min, Self::Max];

    /// Returns the update mask path of the field.
    pub fn path(self) -> &'static str {
        match self {
            Self::Scenario => "scenario",
            Self::Timeout => "timeout",
            Self::Until => "until",
            Self::Additional => "additional",
            Self::Min => "min",
            Self::Max => "max",
        }
    }

    /// Parses an update mask path, in snake_case or lowerCamelCase.
    pub fn parse(path: &str) -> Option<Self> {
        match path {
            "scenario" => Some(Self::Scenario),
            "timeout" => Some(Self::Timeout),
            "until" => Some(Self::Until),
            "additional" => Some(Self::Additional),
            "min" => Some(Self::Min),
            "max" => Some(Self::Max),
            _ => None,
        }
    }
}

/// Strategy by which running instances follow a scenario change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpdateStrategy {
    #[default]
    UpdateInPlace,
    BlueGreen,
    Recreate,
}

/// Request to change the masked fields of a challenge. A masked field left
/// unset is reset to its default.
#[derive(Clone, Debug, Default)]
pub struct ChallengeUpdate {
    pub id: String,
    pub mask: Vec<Field>,
    pub strategy: UpdateStrategy,
    pub scenario: Option<String>,
    pub timeout: Option<Duration>,
    pub until: Option<DateTime<Utc>>,
    pub additional: BTreeMap<String, String>,
    pub min: i64,
    pub max: i64,
}

fn check_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid("id", "must not be empty"));
    }
    Ok(())
}

/// A rule that pool bounds break, as the pool bounds check reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolViolation {
    MinNegative,
    MaxNegative,
    /// `min` exceeds a nonzero `max` (0 means no upper bound).
    MinAboveMax,
}

impl std::fmt::Display for PoolViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::MinNegative => "min must not be negative",
            Self::MaxNegative => "max must not be negative",
            Self::MinAboveMax => "min must not exceed max when max is set",
        })
    }
}

/// Checks the pool bounds that are given, as upstream does: a bound left
/// out (`None`, not in the update mask) is not checked, and the order of
/// the bounds is only checked when both are given. Every broken rule is
/// reported, not only the first.
fn check_pool_bounds(min: Option<i64>, max: Option<i64>) -> Result<()> {
    let mut violations = Vec::new();
    if min.is_some_and(|min| min < 0) {
        violations.push(PoolViolation::MinNegative);
    }
    if max.is_some_and(|max| max < 0) {
        violations.push(PoolViolation::MaxNegative);
    }
    if let (Some(min), Some(max)) = (min, max)
        && max > 0
        && min > max
    {
        violations.push(PoolViolation::MinAboveMax);
    }

    if violations.is_empty() {
        return Ok(());
    }
    Err(Error::PoolOutOfBounds { min, max, violations })
}

impl Manager {
    /// Registers a challenge after checking that its scenario can be
    /// fetched and is a scenario this server can run.
    #[tracing::instrument(skip_all, fields(challenge_id = %new.id, scenario = %new.scenario))]
    pub async fn create_challenge(&self, new: NewChallenge) -> Result<ChallengeInfo> {
        // Pool bounds first, as upstream checks them before anything else.
        check_pool_bounds(Some(new.min), Some(new.max))?;
        check_id(&new.id)?;
        if new.scenario.is_empty() {
            return Err(Error::invalid("scenario", "must not be empty"));
        }

        let _lock = self.locks.challenge(&new.id, Mode::Write).await?;
        if self.store.load_challenge(&new.id).await?.is_some() {
            return Err(Error::ChallengeExists { id: new.id });
        }
        let digest = self.check_scenario(&new.scenario).await?;

        // Checks done: store the challenge.
        let challenge = Challenge {
            id: new.id,
            scenario: new.scenario,
            digest,
            timeout: new.timeout,
            until: new.until,
            additional: new.additional,
            min: new.min,
            max: new.max,
        };
        if !self.store.create_challenge(&challenge).await? {
            return Err(Error::ChallengeExists { id: challenge.id });
        }
        info!(digest = %challenge.digest, "challenge created");
        self.refill_pool_now(&challenge.id);
        Ok(ChallengeInfo { challenge, instances: Vec::new(), pooled: None })
    }

    /// Resolves a scenario reference, fetches it and checks that a runner
    /// accepts it. Returns the digest to pin.
    async fn check_scenario(&self, reference: &str) -> Result<String> {
        let scenario_error = |source| Error::Scenario { reference: reference.to_owned(), source };
        let digest = self.scenarios.resolve(reference).await.map_err(scenario_error)?;
        let dir = self.scenarios.fetch(reference, &digest).await.map_err(scenario_error)?;
        let invalid = |source| Error::InvalidScenario { reference: reference.to_owned(), source };
        let runner = crate::runner::load(&dir).map_err(invalid)?;
        runner.check().await.map_err(invalid)?;
        Ok(digest)
    }

    /// Returns a challenge with its instances.
    #[tracing::instrument(skip_all, fields(challenge_id = %id))]
    pub async fn get_challenge(&self, id: &str) -> Result<ChallengeInfo> {
        let _lock = self.locks.challenge(id, Mode::Read).await?;
        self.load_challenge_info(id).await
    }

    async fn load_challenge_info(&self, id: &str) -> Result<ChallengeInfo> {
        let challenge = self.load_challenge(id).await?;
        let instances = self.store.list_instances(id).await?;
        let pooled = self.store.pooled(id)?.len();
        Ok(ChallengeInfo { challenge, instances, pooled: Some(pooled) })
    }

    pub(crate) async fn load_challenge(&self, id: &str) -> Result<Challenge> {
        self.store.load_challenge(id).await?.ok_or_else(|| Error::ChallengeNotFound { id: id.to_owned() })
    }

    /// Streams every challenge with its instances, one challenge at a time,
    /// so memory stays flat however many are stored.
    pub fn list_challenges(&self) -> ReceiverStream<Result<ChallengeInfo>> {
        let (sender, receiver) = mpsc::channel(8);
        let manager = self.clone();
        tokio::spawn(async move {
            let ids = match manager.challenge_ids().await {
                Ok(ids) => ids,
                Err(err) => {
                    let _ = sender.send(Err(err)).await;
                    return;
                }
            };
            for id in ids {
                let info = match manager.get_challenge(&id).await {
                    // Deleted since the listing started.
                    Err(Error::ChallengeNotFound { .. }) => continue,
                    other => other,
                };
                if sender.send(info).await.is_err() {
                    return; // The client went away.
                }
            }
        });
        ReceiverStream::new(receiver)
    }

    /// Lists the ids of every stored challenge.
    pub(crate) async fn challenge_ids(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for file in self.store.challenge_records().await? {
            if let Some(challenge) = self.store.load_challenge_at(file).await? {
                ids.push(challenge.id);
            }
        }
        // Listings come out in id order, whatever the hashed file names.
        ids.sort();
        Ok(ids)
    }

    /// Changes the masked fields of a challenge; a masked field left unset
    /// is reset. Running instances follow: a new scenario digest or new
    /// additional values redeploy them with the request's strategy, and a
    /// new timeout or end recomputes when they expire, from their last
    /// renewal. Nothing else touches a deployment.
    #[tracing::instrument(skip_all, fields(challenge_id = %update.id))]
    pub async fn update_challenge(&self, update: ChallengeUpdate) -> Result<ChallengeInfo> {
        check_id(&update.id)?;
        let masked = |field| update.mask.contains(&field);
        // The bounds of the request first, before the challenge is read, as
        // upstream does. The stored bounds are checked with them below.
        check_pool_bounds(masked(Field::Min).then_some(update.min), masked(Field::Max).then_some(update.max))?;
        if masked(Field::Scenario) && update.scenario.as_deref().unwrap_or_default().is_empty() {
            return Err(Error::invalid("scenario", "must not be empty"));
        }

        let _lock = self.locks.challenge_and_pool(&update.id).await?;
        let old = self.load_challenge(&update.id).await?;
        let mut challenge = old.clone();
        challenge.min = if masked(Field::Min) { update.min } else { old.min };
        challenge.max = if masked(Field::Max) { update.max } else { old.max };
        check_pool_bounds(Some(challenge.min), Some(challenge.max))?;
        if let Some(reference) = update.scenario.as_deref().filter(|_| masked(Field::Scenario))
            && reference != old.scenario
        {
            challenge.digest = self.check_scenario(reference).await?;
            challenge.scenario = reference.to_owned();
        }

        // Checks done: apply the masked fields, then let instances follow.
        if masked(Field::Timeout) {
            challenge.timeout = update.timeout;
        }
        if masked(Field::Until) {
            challenge.until = update.until;
        }
        if masked(Field::Additional) {
            challenge.additional = update.additional;
        }
        self.store.save_challenge(&challenge).await?;
        info!(fields = ?update.mask, digest = %challenge.digest, "challenge updated");
        // Also without any change: the round repairs the pool, at once even
        // if failed deployments made it wait. It starts once this update
        // releases the challenge's lock.
        self.refill_pool_now(&challenge.id);

        let expiry_changed = challenge.timeout != old.timeout || challenge.until != old.until;
        let instances = self.store.list_instances(&challenge.id).await?;
        let (claimed, ()) = futures::join!(
            self.follow_challenge(&challenge, instances, update.strategy, expiry_changed),
            self.follow_pool(&challenge, update.strategy),
        );
        Ok(ChallengeInfo { challenge, instances: claimed?, pooled: None })
    }

    /// Destroys every instance of a challenge in parallel, pooled ones
    /// included, then removes the challenge. When a destroy fails, the
    /// challenge and the instances that could not be destroyed are kept, so
    /// nothing is left running unseen.
    #[tracing::instrument(skip_all, fields(challenge_id = %id))]
    pub async fn delete_challenge(&self, id: &str) -> Result<()> {
        let _lock = self.locks.challenge_and_pool(id).await?;
        let challenge = self.load_challenge(id).await?;
        let instances = self.store.list_instances(id).await?;

        let destroys = instances.iter().map(|instance| self.destroy_instance(&challenge, instance));
        let (claimed, pooled) = futures::join!(join_all(destroys), self.destroy_pool(&challenge));
        let mut failures: Vec<(String, Error)> = claimed
            .into_iter()
            .zip(&instances)
            .filter_map(|(result, instance)| result.err().map(|err| (instance.source_id.clone(), err)))
            .collect();
        failures.extend(pooled?);
        if let Some((_, first)) = failures.first() {
            warn!(failed = failures.len(), "challenge kept: some instances could not be destroyed");
            return Err(Error::InstancesLeft {
                id: id.to_owned(),
                first: first.to_string(),
                sources: failures.iter().map(|(source, _)| source.clone()).collect(),
            });
        }

        self.store.delete_challenge(id).await?;
        info!(instances = instances.len(), "challenge deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        crate::time::parse_timestamp(text).unwrap()
    }

    fn challenge(timeout: Option<u64>, until: Option<&str>) -> Challenge {
        Challenge {
            id: "1".into(),
            scenario: "registry/scenario:v1".into(),
            digest: "sha256:00".into(),
            timeout: timeout.map(Duration::from_secs),
            until: until.map(at),
            additional: BTreeMap::new(),
            min: 0,
            max: 0,
        }
    }

    #[test]
    fn instance_until_follows_timeout_and_challenge_end() {
        let now = at("2026-01-01T00:00:00Z");
        assert_eq!(challenge(None, None).instance_until(now), None);
        assert_eq!(challenge(Some(60), None).instance_until(now), Some(at("2026-01-01T00:01:00Z")));
        assert_eq!(challenge(None, Some("2026-02-01T00:00:00Z")).instance_until(now), Some(at("2026-02-01T00:00:00Z")));
        assert_eq!(
            challenge(Some(60), Some("2026-01-01T00:00:30Z")).instance_until(now),
            Some(at("2026-01-01T00:00:30Z")),
            "the challenge end caps the timeout"
        );
    }

    #[test]
    fn expired_only_strictly_after_until() {
        let end = "2026-01-01T00:00:00Z";
        assert!(!challenge(None, Some(end)).is_expired(at(end)));
        assert!(challenge(None, Some(end)).is_expired(at("2026-01-01T00:00:01Z")));
        assert!(!challenge(None, None).is_expired(at(end)));
    }

    fn pool_violations(min: Option<i64>, max: Option<i64>) -> Vec<PoolViolation> {
        match check_pool_bounds(min, max) {
            Ok(()) => Vec::new(),
            Err(Error::PoolOutOfBounds { violations, .. }) => violations,
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn pool_bounds_are_checked() {
        use PoolViolation::*;
        assert_eq!(pool_violations(Some(0), Some(0)), []);
        assert_eq!(pool_violations(Some(2), Some(0)), [], "max 0 sets no upper bound");
        assert_eq!(pool_violations(Some(1), Some(2)), []);
        assert_eq!(pool_violations(Some(-1), Some(0)), [MinNegative]);
        assert_eq!(pool_violations(Some(0), Some(-1)), [MaxNegative]);
        assert_eq!(pool_violations(Some(3), Some(2)), [MinAboveMax]);
        assert_eq!(pool_violations(Some(-1), Some(-2)), [MinNegative, MaxNegative], "every rule is reported");
    }

    #[test]
    fn pool_bounds_left_out_are_not_checked() {
        use PoolViolation::*;
        assert_eq!(pool_violations(None, None), []);
        assert_eq!(pool_violations(Some(3), None), [], "the order needs both bounds");
        assert_eq!(pool_violations(None, Some(-1)), [MaxNegative]);
        assert_eq!(pool_violations(Some(-1), None), [MinNegative]);
    }
}
