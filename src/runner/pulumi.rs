//! Pulumi scenarios: recognized, not yet run.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{Deployment, Error, Outputs, Runner};

/// Project file names that make a directory a Pulumi scenario, in the order
/// they are looked up (the Pulumi CLI accepts both extensions).
pub const PULUMI_FILES: [&str; 2] = ["Pulumi.yaml", "Pulumi.yml"];

/// A scenario with a Pulumi project file.
///
/// # Limitations
///
/// Deploying is not implemented: [`Runner::check`], [`Runner::up`] and
/// [`Runner::down`] fail with [`Error::PulumiNotSupported`]. Loading
/// succeeds so that such a scenario is reported as unsupported, not as an
/// unrecognized directory.
#[derive(Debug)]
pub struct PulumiRunner {
    project_file: PathBuf,
}

impl PulumiRunner {
    pub fn new(project_file: PathBuf) -> Self {
        Self { project_file }
    }

    /// Path of `Pulumi.yaml` (or `Pulumi.yml`).
    pub fn project_file(&self) -> &std::path::Path {
        &self.project_file
    }
}

#[async_trait]
impl Runner for PulumiRunner {
    async fn check(&self) -> Result<(), Error> {
        Err(Error::PulumiNotSupported)
    }

    async fn up(&self, _deployment: &Deployment<'_>) -> Result<Outputs, Error> {
        Err(Error::PulumiNotSupported)
    }

    async fn down(&self, _deployment: &Deployment<'_>) -> Result<(), Error> {
        Err(Error::PulumiNotSupported)
    }
}
