//! The janitor: deletes the instances whose `until` has passed.
//!
//! A sweep lists every challenge with its claimed instances and deletes
//! each instance whose `until` is set and earlier than the time the sweep
//! started. Deletions start with the first challenge listed, so on a large
//! server most of the listing is read while instances are being deleted.
//! The rules:
//!
//! - An instance without `until` is never deleted, whatever the settings
//!   of its challenge, because it has no end. An instance whose `until` equals the current time
//!   is kept, because expiry is strict (`now > until`), as in the rest of
//!   the crate.
//! - At most [`Settings::parallel`] deletions run at a time.
//! - A deletion that fails with "not found" counts as done: the instance or
//!   its challenge was deleted by someone else since the listing.
//! - Every call (the listing and each deletion) goes through [`Backoff`]
//!   and one shared [`Breaker`]. Only failures that say the server is
//!   unreachable or overloaded ([`Failure::Transient`]) are retried and
//!   count towards opening the breaker. Any other error means that the
//!   server answered, so it is reported at once.
//! - While the breaker is open, calls fail fast: the deletions not tried
//!   are logged and counted as skipped, and the next sweep tries them again.
//!   No state of the breaker makes a sweep panic.
//!
//! The janitor talks to a [`Target`], so the command line can point it at a
//! server over gRPC or at a local data directory with the same code.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures::{StreamExt, stream, stream::BoxStream};
use tracing::{debug, info, warn};

use crate::{challenge::ChallengeInfo, instance::Instance};

/// Kind of failure of a call, which decides whether it is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The instance or challenge does not exist (any more).
    NotFound,
    /// The server could not be reached, or asked to try again later: worth
    /// a retry, and a sign of an unhealthy server for the breaker.
    Transient,
    /// The server returned an error that a retry would not change.
    Permanent,
}

/// The server or data directory that the janitor sweeps.
pub trait Target: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Streams every challenge with its claimed instances.
    fn list_challenges(
        &self,
    ) -> impl Future<Output = Result<BoxStream<'_, Result<ChallengeInfo, Self::Error>>, Self::Error>> + Send;

    /// Deletes the instance of `source_id` for `challenge_id`.
    fn delete_instance(
        &self,
        challenge_id: &str,
        source_id: &str,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Sorts an error into retried, final or "already gone".
    fn classify(error: &Self::Error) -> Failure;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Failure of a whole sweep.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to list challenges: {0}")]
    List(#[source] BoxError),

    #[error(
        "skipped the sweep because the circuit breaker is open after repeated failures to reach the server; \
         next try in {} ms",
        retry_in.as_millis()
    )]
    BreakerOpen { retry_in: Duration },

    #[error("sweep incomplete: {failed} deletion(s) failed and {skipped} skipped; first failure: {first}")]
    Incomplete { failed: usize, skipped: usize, first: String },

    #[error("sweep incomplete: the listing of challenges broke off, so some instances were not checked: {0}")]
    ListingCut(String),
}

/// Tunables of the janitor.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Maximum deletions in progress at a time; 0 is read as 1.
    pub parallel: usize,
    pub backoff: Backoff,
    /// Consecutive transient failures that open the breaker.
    pub breaker_threshold: u32,
    /// Time the breaker stays open before it lets one call through.
    pub breaker_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            parallel: 8,
            backoff: Backoff::default(),
            breaker_threshold: 5,
            breaker_timeout: Duration::from_secs(10),
        }
    }
}

/// Retries with exponential backoff: `tries` calls at most, waiting
/// `first_delay` after the first failure and twice as long after each next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub tries: u32,
    pub first_delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { tries: 3, first_delay: Duration::from_millis(100) }
    }
}

impl Backoff {
    /// Returns the wait after `failed` failed calls (1 for the first), or
    /// `None` when no call is left.
    pub fn delay_after(&self, failed: u32) -> Option<Duration> {
        if failed == 0 || failed >= self.tries {
            return None;
        }
        // Capping the exponent keeps the multiplication far from overflow.
        let factor = 1u32 << (failed - 1).min(20);
        Some(self.first_delay.saturating_mul(factor))
    }
}

/// A circuit breaker shared by every call of the janitor.
///
/// Closed, it lets every call through and counts consecutive failures.
/// After `threshold` of them it opens and rejects every call for
/// `open_for`. Then it lets one probe call through (half-open): success
/// closes it, failure opens it again. Results of calls that started before
/// the last change of state are ignored, so a slow call that was admitted
/// while closed cannot close a breaker that opened since.
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe call is in progress; every other call is rejected.
    HalfOpen,
}

/// A call rejected by an open breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Time until the breaker lets a probe through; zero while a probe is
    /// in progress.
    pub retry_in: Duration,
}

/// The right to make one call. Report its result with [`Permit::success`]
/// or [`Permit::failure`]; a permit dropped without either counts as a
/// failure, so an abandoned probe cannot leave the breaker half-open.
#[must_use = "report the call's result with success() or failure()"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    /// Whether this call is the probe of a half-open breaker.
    probe: bool,
    /// State when the call was admitted, to ignore stale results.
    admitted_in: BreakerState,
    reported: bool,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self { threshold: threshold.max(1), open_for, state: Mutex::new(BreakerState::Closed { failures: 0 }) }
    }

    /// Asks to make a call now.
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        self.try_acquire_at(Instant::now())
    }

    /// Asks to make a call at `now`.
    pub fn try_acquire_at(&self, now: Instant) -> Result<Permit<'_>, Rejected> {
        let mut state = self.lock();
        let probe = match *state {
            BreakerState::Closed { .. } => false,
            BreakerState::Open { until } if now < until => return Err(Rejected { retry_in: until - now }),
            BreakerState::Open { .. } => {
                *state = BreakerState::HalfOpen;
                debug!("circuit breaker half-open, letting one call through");
                true
            }
            BreakerState::HalfOpen => return Err(Rejected { retry_in: Duration::ZERO }),
        };
        Ok(Permit { breaker: self, probe, admitted_in: *state, reported: false })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        // The state is a plain value that every update leaves valid, so a
        // panic elsewhere while the lock was held cannot corrupt it.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record_success(&self, permit: &Permit<'_>) {
        let mut state = self.lock();
        match *state {
            BreakerState::Closed { .. } => *state = BreakerState::Closed { failures: 0 },
            BreakerState::HalfOpen if permit.probe => {
                *state = BreakerState::Closed { failures: 0 };
                info!("circuit breaker closed: the server responds again");
            }
            // A call admitted before the breaker opened: stale.
            BreakerState::HalfOpen | BreakerState::Open { .. } => {}
        }
    }

    fn record_failure(&self, permit: &Permit<'_>, now: Instant) {
        let mut state = self.lock();
        let failures = match (*state, permit.admitted_in) {
            (BreakerState::Closed { failures }, BreakerState::Closed { .. }) => failures + 1,
            (BreakerState::HalfOpen, _) if permit.probe => self.threshold,
            _ => return,
        };

        if failures < self.threshold {
            *state = BreakerState::Closed { failures };
            return;
        }
        *state = BreakerState::Open { until: now + self.open_for };
        warn!(
            failures,
            open_for_ms = self.open_for.as_millis() as u64,
            "circuit breaker opened: calls to the server fail fast until it lets a probe through"
        );
    }
}

impl Permit<'_> {
    pub fn success(mut self) {
        self.reported = true;
        self.breaker.record_success(&self);
    }

    pub fn failure(self) {
        self.failure_at(Instant::now());
    }

    pub fn failure_at(mut self, now: Instant) {
        self.reported = true;
        self.breaker.record_failure(&self, now);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.record_failure(self, Instant::now());
        }
    }
}

/// Why a call through [`Janitor::call`] failed.
enum CallError<E> {
    /// The breaker rejected the call; nothing was sent.
    Rejected(Rejected),
    /// The last try failed with `error`.
    Failed { error: E, failure: Failure },
}

/// Action of a sweep for one listed instance, or for a listing error.
enum Step<E> {
    Delete(Box<Instance>),
    Keep,
    ListingCut(E),
}

/// Outcome of one [`Step`].
enum Outcome {
    Deleted,
    AlreadyGone,
    Failed(String),
    Skipped,
    Kept,
    ListingCut(String),
}

/// Counts of one sweep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Expired instances deleted by this sweep.
    pub deleted: usize,
    /// Expired instances found already deleted (the delete returned "not found").
    pub already_gone: usize,
    /// Deletions that failed after their retries.
    pub failed: usize,
    /// Deletions not tried because the circuit breaker was open.
    pub skipped: usize,
    /// Instances left alone: no `until`, or `until` not passed yet.
    pub kept: usize,
    pub duration: Duration,
    /// Message of the first failed deletion, for a one-line report.
    pub first_failure: Option<String>,
    /// Reason the listing stopped before its end, if it did.
    pub listing_cut: Option<String>,
}

impl Report {
    /// Returns an error when some expired instance may still be there.
    pub fn check(&self) -> Result<(), Error> {
        if let Some(reason) = &self.listing_cut {
            return Err(Error::ListingCut(reason.clone()));
        }
        if self.failed == 0 && self.skipped == 0 {
            return Ok(());
        }
        let first = self
            .first_failure
            .clone()
            .unwrap_or_else(|| "the circuit breaker is open after repeated failures to reach the server".to_owned());
        Err(Error::Incomplete { failed: self.failed, skipped: self.skipped, first })
    }

    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Deleted => self.deleted += 1,
            Outcome::AlreadyGone => self.already_gone += 1,
            Outcome::Skipped => self.skipped += 1,
            Outcome::Kept => self.kept += 1,
            Outcome::Failed(message) => {
                self.failed += 1;
                self.first_failure.get_or_insert(message);
            }
            Outcome::ListingCut(reason) => {
                self.listing_cut.get_or_insert(reason);
            }
        }
    }
}

/// Decides, at `now`, what to do with each instance of one listed challenge.
fn steps<E>(listed: Result<ChallengeInfo, E>, now: DateTime<Utc>) -> Vec<Step<E>> {
    let info = match listed {
        Ok(info) => info,
        Err(error) => return vec![Step::ListingCut(error)],
    };
    let step = |instance: Instance| {
        if instance.is_expired(now) {
            return Step::Delete(Box::new(instance));
        }
        let reason = if instance.until.is_some() { "not expired yet" } else { "no until" };
        debug!(
            challenge_id = %instance.challenge_id,
            source_id = %instance.source_id,
            until = ?instance.until,
            reason,
            "keeping instance"
        );
        Step::Keep
    };
    info.instances.into_iter().map(step).collect()
}

/// Sweeps one [`Target`] with a breaker that lives as long as the janitor,
/// so that ticker mode remembers failures from one sweep to the next.
pub struct Janitor<T> {
    target: T,
    breaker: Breaker,
    backoff: Backoff,
    parallel: usize,
}

impl<T: Target> Janitor<T> {
    pub fn new(target: T, settings: Settings) -> Self {
        Self {
            target,
            breaker: Breaker::new(settings.breaker_threshold, settings.breaker_timeout),
            backoff: settings.backoff,
            parallel: settings.parallel.max(1),
        }
    }

    /// Lists the challenges and deletes the expired instances.
    ///
    /// Returns an error only when the listing failed; failed and skipped
    /// deletions are counted in the report, which [`Report::check`] turns
    /// into an error.
    pub async fn sweep(&self) -> Result<Report, Error> {
        let started = Instant::now();
        let now = Utc::now();
        let listing = match self.call("list challenges", || self.target.list_challenges()).await {
            Ok(listing) => listing,
            Err(CallError::Rejected(rejected)) => return Err(Error::BreakerOpen { retry_in: rejected.retry_in }),
            Err(CallError::Failed { error, .. }) => return Err(Error::List(Box::new(error))),
        };

        let mut outcomes = listing
            .flat_map(|listed| stream::iter(steps(listed, now)))
            .map(|step| self.run(step))
            .buffer_unordered(self.parallel);
        let mut report = Report::default();
        while let Some(outcome) = outcomes.next().await {
            report.add(outcome);
        }

        report.duration = started.elapsed();
        log_report(&report);
        Ok(report)
    }

    async fn run(&self, step: Step<T::Error>) -> Outcome {
        match step {
            Step::Delete(instance) => self.delete(&instance).await,
            Step::Keep => Outcome::Kept,
            Step::ListingCut(error) => {
                warn!(error = %error, "the listing of challenges broke off; the next sweep checks the rest");
                Outcome::ListingCut(error.to_string())
            }
        }
    }

    async fn delete(&self, instance: &Instance) -> Outcome {
        let (challenge_id, source_id) = (instance.challenge_id.as_str(), instance.source_id.as_str());
        let until = instance.until.map(|until| crate::time::format_timestamp(&until));
        let result = self.call("delete instance", || self.target.delete_instance(challenge_id, source_id)).await;

        match result {
            Ok(()) => {
                info!(challenge_id, source_id, until, "deleted expired instance");
                Outcome::Deleted
            }
            Err(CallError::Failed { failure: Failure::NotFound, .. }) => {
                info!(challenge_id, source_id, until, "expired instance was already deleted");
                Outcome::AlreadyGone
            }
            Err(CallError::Failed { error, .. }) => {
                let message = format!(
                    "failed to delete the instance of source {source_id:?} for challenge {challenge_id:?}: {error}"
                );
                warn!(challenge_id, source_id, until, error = %error, "failed to delete expired instance");
                Outcome::Failed(message)
            }
            Err(CallError::Rejected(rejected)) => {
                warn!(
                    challenge_id,
                    source_id,
                    until,
                    retry_in_ms = rejected.retry_in.as_millis() as u64,
                    "skipped deleting expired instance: circuit breaker open"
                );
                Outcome::Skipped
            }
        }
    }

    /// Makes one call through the breaker, retrying transient failures.
    async fn call<R, F, Fut>(&self, action: &'static str, mut call: F) -> Result<R, CallError<T::Error>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<R, T::Error>>,
    {
        let mut failed = 0;
        loop {
            let permit = self.breaker.try_acquire().map_err(CallError::Rejected)?;
            let error = match call().await {
                Ok(value) => {
                    permit.success();
                    return Ok(value);
                }
                Err(error) => error,
            };

            // Only a transient failure indicates an unhealthy server. Any
            // other response proves that it is up.
            let failure = T::classify(&error);
            if failure != Failure::Transient {
                permit.success();
                return Err(CallError::Failed { error, failure });
            }
            permit.failure();
            failed += 1;

            let Some(delay) = self.backoff.delay_after(failed) else {
                return Err(CallError::Failed { error, failure });
            };
            debug!(action, failed, delay_ms = delay.as_millis() as u64, error = %error, "call failed, retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

fn log_report(report: &Report) {
    let duration_ms = report.duration.as_millis() as u64;
    let Report { deleted, already_gone, failed, skipped, kept, .. } = *report;
    if failed == 0 && skipped == 0 {
        info!(deleted, already_gone, failed, skipped, kept, duration_ms, "sweep finished");
    } else {
        warn!(deleted, already_gone, failed, skipped, kept, duration_ms, "sweep incomplete");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::challenge::Challenge;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_doubles_then_stops() {
        let backoff = Backoff { tries: 4, first_delay: Duration::from_millis(100) };
        assert_eq!(backoff.delay_after(1), Some(Duration::from_millis(100)));
        assert_eq!(backoff.delay_after(2), Some(Duration::from_millis(200)));
        assert_eq!(backoff.delay_after(3), Some(Duration::from_millis(400)));
        assert_eq!(backoff.delay_after(4), None);
        assert_eq!(backoff.delay_after(0), None);
    }

    #[test]
    fn backoff_default_is_three_tries() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay_after(1), Some(Duration::from_millis(100)));
        assert_eq!(backoff.delay_after(2), Some(Duration::from_millis(200)));
        assert_eq!(backoff.delay_after(3), None);
    }

    #[test]
    fn backoff_saturates_instead_of_overflowing() {
        let backoff = Backoff { tries: u32::MAX, first_delay: Duration::MAX };
        assert_eq!(backoff.delay_after(40), Some(Duration::MAX));
    }

    #[test]
    fn breaker_opens_after_threshold_failures() {
        let breaker = Breaker::new(3, 10 * SECOND);
        let start = Instant::now();
        for _ in 0..2 {
            breaker.try_acquire_at(start).unwrap().failure_at(start);
        }
        let third = breaker.try_acquire_at(start).expect("two failures out of three keep it closed");

        third.failure_at(start);
        let rejected = breaker.try_acquire_at(start + SECOND).err().expect("open after three failures");
        assert_eq!(rejected.retry_in, 9 * SECOND);
    }

    #[test]
    fn breaker_success_resets_the_count() {
        let breaker = Breaker::new(2, 10 * SECOND);
        let now = Instant::now();
        breaker.try_acquire_at(now).unwrap().failure_at(now);
        breaker.try_acquire_at(now).unwrap().success();
        breaker.try_acquire_at(now).unwrap().failure_at(now);
        breaker.try_acquire_at(now).expect("failures were not consecutive").success();
    }

    #[test]
    fn breaker_half_open_lets_one_probe_through() {
        let breaker = Breaker::new(1, 10 * SECOND);
        let start = Instant::now();
        breaker.try_acquire_at(start).unwrap().failure_at(start);

        let later = start + 10 * SECOND;
        let probe = breaker.try_acquire_at(later).expect("a probe after the timeout");
        let second = breaker.try_acquire_at(later).err().expect("one probe at a time");
        assert_eq!(second.retry_in, Duration::ZERO);

        probe.success();
        let first = breaker.try_acquire_at(later).expect("closed after a successful probe");
        let second = breaker.try_acquire_at(later).expect("closed lets every call through");
        first.success();
        second.success();
    }

    #[test]
    fn breaker_failed_probe_reopens() {
        let breaker = Breaker::new(5, 10 * SECOND);
        let start = Instant::now();
        for _ in 0..5 {
            breaker.try_acquire_at(start).unwrap().failure_at(start);
        }

        let later = start + 10 * SECOND;
        breaker.try_acquire_at(later).unwrap().failure_at(later);
        let rejected = breaker.try_acquire_at(later).err().expect("open again after one failed probe");
        assert_eq!(rejected.retry_in, 10 * SECOND);
    }

    #[test]
    fn breaker_dropped_probe_counts_as_failure() {
        let breaker = Breaker::new(1, Duration::ZERO);
        let start = Instant::now();
        breaker.try_acquire_at(start).unwrap().failure_at(start);

        drop(breaker.try_acquire_at(start).unwrap());
        // The drop reopened it for zero time, so the next call is a new probe.
        let probe = breaker.try_acquire_at(Instant::now()).expect("a new probe");
        assert!(probe.probe);
        probe.success();
    }

    #[test]
    fn breaker_ignores_stale_results() {
        let breaker = Breaker::new(1, 10 * SECOND);
        let start = Instant::now();
        let slow = breaker.try_acquire_at(start).unwrap();
        breaker.try_acquire_at(start).unwrap().failure_at(start);

        slow.success();
        assert!(breaker.try_acquire_at(start + SECOND).is_err(), "a call admitted before opening cannot close it");
    }

    fn instance(challenge_id: &str, source_id: &str, until: Option<DateTime<Utc>>) -> Instance {
        let since = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        Instance {
            challenge_id: challenge_id.into(),
            source_id: source_id.into(),
            identity: String::new(),
            since,
            last_renew: since,
            until,
            connection_info: String::new(),
            flags: Vec::new(),
            additional: BTreeMap::new(),
            deployed: Default::default(),
        }
    }

    fn challenge(id: &str, instances: Vec<Instance>) -> ChallengeInfo {
        let challenge = Challenge {
            id: id.into(),
            scenario: String::new(),
            digest: String::new(),
            timeout: Some(SECOND),
            until: None,
            additional: BTreeMap::new(),
            min: 0,
            max: 0,
        };
        ChallengeInfo { challenge, instances, pooled: None }
    }

    #[test]
    fn expired_instances_need_a_past_until() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let past = now - chrono::Duration::seconds(1);
        let future = now + chrono::Duration::seconds(1);
        let challenges = [
            challenge("a", vec![instance("a", "past", Some(past)), instance("a", "none", None)]),
            challenge("b", vec![instance("b", "now", Some(now)), instance("b", "future", Some(future))]),
        ];

        let steps: Vec<_> = challenges.into_iter().flat_map(|info| steps::<()>(Ok(info), now)).collect();
        let expired: Vec<_> = steps
            .iter()
            .filter_map(|step| match step {
                Step::Delete(i) => Some((i.challenge_id.as_str(), i.source_id.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(expired, [("a", "past")]);
        assert_eq!(steps.iter().filter(|step| matches!(step, Step::Keep)).count(), 3);
    }

    #[test]
    fn report_with_failures_is_an_error() {
        assert!(Report::default().check().is_ok());

        let failed = Report { failed: 1, first_failure: Some("boom".into()), ..Report::default() };
        let message = failed.check().unwrap_err().to_string();
        assert!(message.contains("1 deletion(s) failed"), "{message}");
        assert!(message.contains("boom"), "{message}");

        let skipped = Report { skipped: 2, ..Report::default() };
        assert!(skipped.check().is_err());

        let cut = Report { listing_cut: Some("stream reset".into()), ..Report::default() };
        let message = cut.check().unwrap_err().to_string();
        assert!(message.contains("broke off"), "{message}");
        assert!(message.contains("stream reset"), "{message}");
    }
}
