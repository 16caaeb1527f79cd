//! Runners: what turns a scenario directory into a deployed instance.
//!
//! [`load`] looks at the top level of an extracted scenario and picks the
//! runner its files name:
//!
//! - `scenario.yaml` with `runtime: exec`: [`ExecRunner`] runs the `up` and
//!   `down` shell commands it names (contract in `docs/scenarios.md`);
//! - `Pulumi.yaml` or `Pulumi.yml`: [`PulumiRunner`], which is recognized
//!   but cannot deploy yet.
//!
//! A runner only runs commands. Fetching the scenario, creating and removing
//! the state directory, and running `down` after a failed `up` are the
//! caller's job (see [`crate::instance`]).

mod exec;
mod process;
mod pulumi;

use std::{collections::BTreeMap, io, path::Path, path::PathBuf, process::ExitStatus, time::Duration};

use async_trait::async_trait;

pub use exec::{ExecRunner, SCENARIO_FILE};
pub use process::StderrTail;
pub use pulumi::{PULUMI_FILES, PulumiRunner};

/// One instance to deploy or destroy.
#[derive(Clone, Copy, Debug)]
pub struct Deployment<'a> {
    /// Extracted scenario files.
    pub scenario_dir: &'a Path,
    /// The instance identity, 16 lowercase hex digits.
    pub identity: &'a str,
    /// Challenge values overlaid with the instance's. Values may be secrets:
    /// runners log only the keys.
    pub additional: &'a BTreeMap<String, String>,
    /// Directory private to this instance, kept until it is deleted.
    pub state_dir: &'a Path,
}

/// Result of a successful `up`: how players reach the instance, and its
/// flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outputs {
    pub connection_info: String,
    pub flags: Vec<String>,
}

/// The scenario command being run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Up,
    Down,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Up => "up",
            Self::Down => "down",
        })
    }
}

/// Failure to load a scenario or to run one of its commands.
///
/// Each message is complete on its own (it includes the underlying error and
/// the stderr tail) because callers show it to the ChallMaker as is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory contains neither `scenario.yaml` nor `Pulumi.yaml`.
    #[error("the scenario has neither scenario.yaml nor Pulumi.yaml at its top level")]
    Unrecognized,

    #[error("the scenario has both {SCENARIO_FILE} and {pulumi}; keep only the file of the runtime it uses")]
    Ambiguous { pulumi: &'static str },

    #[error("failed to read {}: {error}", path.display())]
    ReadFile { path: PathBuf, error: io::Error },

    /// The file is not YAML, or a field is missing, unknown, of the wrong
    /// type or has an invalid value. The reason names the field.
    #[error("invalid {}: {reason}", path.display())]
    InvalidFile { path: PathBuf, reason: String },

    #[error("unsupported runtime {runtime:?} in {} (supported: exec)", path.display())]
    UnsupportedRuntime { path: PathBuf, runtime: String },

    #[error(
        "Pulumi scenarios are not supported yet; package the scenario as an exec scenario \
         (scenario.yaml with `runtime: exec`, see docs/scenarios.md)"
    )]
    PulumiNotSupported,

    /// Starting the command, waiting for it or reading its output failed.
    #[error("failed to {action} the `{step}` command: {error}")]
    Io { step: Step, action: &'static str, error: io::Error },

    #[error("`{step}` command failed with {status}\n{stderr}")]
    Exited { step: Step, status: ExitStatus, stderr: StderrTail },

    #[error(
        "`{step}` command timed out after {}s and its process group was killed \
         (raise `timeout` in scenario.yaml if it needs longer)\n{stderr}",
        timeout.as_secs()
    )]
    TimedOut { step: Step, timeout: Duration, stderr: StderrTail },

    /// The command succeeded but its last stdout line is not valid output.
    #[error("`{step}` command ended with {status} but its output is invalid: {reason}\n{stderr}")]
    InvalidOutput { step: Step, status: ExitStatus, reason: String, stderr: StderrTail },
}

impl Error {
    /// Returns whether the scenario itself is wrong (unknown layout, unsupported
    /// runtime, malformed `scenario.yaml`), as opposed to a failed run.
    /// [`Error::PulumiNotSupported`] is not: the scenario may be fine, this
    /// server cannot run it yet.
    pub fn is_invalid_scenario(&self) -> bool {
        matches!(
            self,
            Self::Unrecognized
                | Self::Ambiguous { .. }
                | Self::ReadFile { .. }
                | Self::InvalidFile { .. }
                | Self::UnsupportedRuntime { .. }
        )
    }
}

#[async_trait]
pub trait Runner: Send + Sync {
    /// Checks, when a challenge is created or its scenario changes, that
    /// this server can run the scenario.
    async fn check(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Creates or updates the instance.
    ///
    /// A failed `up` may leave resources behind: the caller runs
    /// [`Runner::down`] after it, and `down` must cope with a half-done `up`.
    async fn up(&self, deployment: &Deployment<'_>) -> Result<Outputs, Error>;

    /// Destroys the instance.
    async fn down(&self, deployment: &Deployment<'_>) -> Result<(), Error>;
}

/// Picks the runner named by the files of a scenario directory.
///
/// # Errors
///
/// Fails with an error for which [`Error::is_invalid_scenario`] is true if
/// the directory contains neither `scenario.yaml` nor a Pulumi project file,
/// contains both, or if `scenario.yaml` cannot be read or is invalid.
pub fn load(scenario_dir: &Path) -> Result<Box<dyn Runner>, Error> {
    let exec_file = scenario_dir.join(SCENARIO_FILE);
    let pulumi_file = PULUMI_FILES.iter().find(|name| scenario_dir.join(name).is_file());

    match (exec_file.is_file(), pulumi_file) {
        (true, Some(pulumi)) => Err(Error::Ambiguous { pulumi }),
        (true, None) => Ok(Box::new(ExecRunner::load(&exec_file)?)),
        (false, Some(pulumi)) => Ok(Box::new(PulumiRunner::new(scenario_dir.join(pulumi)))),
        (false, None) => Err(Error::Unrecognized),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The service error embeds this one next to 64 bytes of ids, and clippy
    /// flags results whose error is 128 bytes or more.
    #[test]
    fn error_stays_small() {
        assert!(std::mem::size_of::<Error>() <= 56, "{} bytes", std::mem::size_of::<Error>());
    }
}
