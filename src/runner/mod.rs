//! Runners: what turns a scenario directory into a deployed instance.
//!
//! PLACEHOLDER: the runner helper replaces this file.

use std::{collections::BTreeMap, path::Path};

use async_trait::async_trait;

/// One instance to deploy or destroy.
#[derive(Clone, Copy, Debug)]
pub struct Deployment<'a> {
    /// Extracted scenario files.
    pub scenario_dir: &'a Path,
    /// The instance identity, 16 lowercase hex digits.
    pub identity: &'a str,
    /// Challenge values overlaid with the instance's.
    pub additional: &'a BTreeMap<String, String>,
    /// Directory private to this instance, kept until it is deleted.
    pub state_dir: &'a Path,
}

/// What a successful deployment returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outputs {
    pub connection_info: String,
    pub flags: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory holds neither `scenario.yaml` nor `Pulumi.yaml`.
    #[error("the scenario has neither scenario.yaml nor Pulumi.yaml")]
    Unrecognized,
    #[error("not implemented")]
    Unsupported,
}

impl Error {
    /// Whether the scenario itself is wrong (as opposed to a failed run).
    pub fn is_invalid_scenario(&self) -> bool {
        matches!(self, Self::Unrecognized)
    }
}

#[async_trait]
pub trait Runner: Send + Sync {
    /// Creates or updates the instance.
    async fn up(&self, deployment: &Deployment<'_>) -> Result<Outputs, Error>;
    /// Destroys the instance.
    async fn down(&self, deployment: &Deployment<'_>) -> Result<(), Error>;
}

/// Picks the runner a scenario directory asks for.
pub fn load(_scenario_dir: &Path) -> Result<Box<dyn Runner>, Error> {
    Err(Error::Unsupported)
}
