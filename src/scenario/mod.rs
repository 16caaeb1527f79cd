//! Scenarios: OCI artifacts holding the files that deploy an instance.
//!
//! PLACEHOLDER: the scenario helper replaces this file.

use std::path::{Path, PathBuf};

/// Registry access settings.
#[derive(Clone, Default)]
pub struct OciSettings {
    /// Talk plain HTTP to registries.
    pub insecure: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for OciSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciSettings")
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A reference together with the manifest digest it resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pinned {
    pub reference: String,
    pub digest: String,
}

/// Broad class of a scenario failure, which decides the status a client sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The reference cannot be parsed.
    Malformed,
    /// The registry has no such repository, tag or digest.
    NotFound,
    /// The registry cannot be reached.
    Unreachable,
    /// The registry requires credentials, or rejected them.
    Unauthorized,
    /// The artifact is not a valid scenario (bad layout, unsafe file names).
    Invalid,
    /// Anything else: local I/O, unexpected registry answers.
    Internal,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

/// Fetches, caches and packs scenarios.
#[derive(Debug)]
pub struct Scenarios {
    _cache: PathBuf,
}

impl Scenarios {
    pub fn new(_data_dir: &Path, cache_dir: PathBuf, _oci: OciSettings) -> Self {
        Self { _cache: cache_dir }
    }

    /// Resolves a reference to the digest of its manifest.
    pub async fn resolve(&self, _reference: &str) -> Result<String, Error> {
        Err(Error { kind: ErrorKind::Internal, message: "not implemented".into() })
    }

    /// Returns the directory holding the files of a pinned scenario, pulling
    /// them when the cache lacks them.
    pub async fn fetch(&self, _reference: &str, _digest: &str) -> Result<PathBuf, Error> {
        Err(Error { kind: ErrorKind::Internal, message: "not implemented".into() })
    }

    /// Packs a directory into the local content store.
    pub async fn pack(&self, _dir: &Path) -> Result<Pinned, Error> {
        Err(Error { kind: ErrorKind::Internal, message: "not implemented".into() })
    }

    /// Pushes a directory to a registry as a scenario artifact.
    pub async fn push(&self, _dir: &Path, _reference: &str) -> Result<Pinned, Error> {
        Err(Error { kind: ErrorKind::Internal, message: "not implemented".into() })
    }
}
