//! Errors of the operations on challenges and instances.
//!
//! Each variant is one outcome a client can act on. The API layer maps them
//! to gRPC statuses and REST bodies in one place (`api::status`); the
//! variants only carry the facts (ids, fields, causes).

use crate::{challenge::PoolViolation, lock, runner, scenario, store};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },

    /// Pool bounds that break one or more rules. A bound is `None` when
    /// the request left it out, so it was not checked.
    #[error("invalid pool bounds (min {}, max {}): {}", format_bound(*.min), format_bound(*.max), join_violations(.violations))]
    PoolOutOfBounds { min: Option<i64>, max: Option<i64>, violations: Vec<PoolViolation> },

    /// An update mask path that names no field of the update request.
    #[error(
        "invalid update mask: unknown path {path:?} (expected some of scenario, timeout, until, additional, min, max)"
    )]
    InvalidUpdateMask { paths: Vec<String>, path: String },

    #[error("challenge {id:?} already exists")]
    ChallengeExists { id: String },

    #[error("challenge {id:?} not found")]
    ChallengeNotFound { id: String },

    #[error("challenge {id:?} has expired")]
    ChallengeExpired { id: String },

    #[error("challenge {id:?} has no timeout, so its instances cannot be renewed")]
    NoRenewal { id: String },

    #[error("instance of source {source_id:?} for challenge {challenge_id:?} already exists")]
    InstanceExists { challenge_id: String, source_id: String },

    #[error("instance of source {source_id:?} for challenge {challenge_id:?} not found")]
    InstanceNotFound { challenge_id: String, source_id: String },

    #[error("instance of source {source_id:?} for challenge {challenge_id:?} has expired")]
    InstanceExpired { challenge_id: String, source_id: String },

    /// The scenario cannot be fetched, or is not a valid scenario.
    #[error("scenario {reference:?}: {source}")]
    Scenario {
        reference: String,
        #[source]
        source: scenario::Error,
    },

    /// The scenario is fetched but its runner rejects it (unknown layout,
    /// unsupported runtime, malformed `scenario.yaml`).
    #[error("scenario {reference:?} is not usable: {source}")]
    InvalidScenario {
        reference: String,
        #[source]
        source: runner::Error,
    },

    /// Running the scenario failed; the message carries the command's last
    /// stderr lines for the ChallMaker.
    #[error("{action} of instance of source {source_id:?} for challenge {challenge_id:?} failed: {source}")]
    Deploy {
        action: &'static str,
        challenge_id: String,
        source_id: String,
        #[source]
        source: runner::Error,
    },

    /// Running the scenario for a pooled instance failed. Only logged: no
    /// request waits for a pool.
    #[error("pooled deployment for challenge {challenge_id:?} failed: {source}")]
    PoolDeploy {
        challenge_id: String,
        #[source]
        source: runner::Error,
    },

    /// Destroying some instances failed while deleting a challenge.
    #[error("challenge {id:?} kept because {} instance(s) could not be destroyed (sources {}): {first}", sources.len(), sources.join(", "))]
    InstancesLeft { id: String, sources: Vec<String>, first: String },

    /// Some instances could not follow an update of their challenge; they
    /// still run their previous version.
    #[error("challenge {id:?} updated, but {} instance(s) still run the previous version (sources {}): {first}", sources.len(), sources.join(", "))]
    InstancesNotUpdated { id: String, sources: Vec<String>, first: String },

    #[error(transparent)]
    Store(#[from] store::Error),

    #[error(transparent)]
    Lock(#[from] lock::Error),

    #[error("background task failed")]
    Task(#[from] tokio::task::JoinError),
}

fn format_bound(value: Option<i64>) -> String {
    value.map_or_else(|| "unchanged".to_owned(), |value| value.to_string())
}

fn join_violations(violations: &[PoolViolation]) -> String {
    violations.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field, reason: reason.into() }
    }

    /// Whether the failure is the server's own (storage, locks), so the
    /// client gets a fixed message and the details are only logged.
    pub fn is_internal(&self) -> bool {
        match self {
            Self::Store(_) | Self::Lock(_) | Self::Task(_) => true,
            Self::Scenario { source, .. } => source.kind() == scenario::ErrorKind::Internal,
            _ => false,
        }
    }
}
