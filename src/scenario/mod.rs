//! Scenarios: OCI artifacts holding the files that deploy an instance.
//!
//! A scenario is an OCI image manifest with `artifactType`
//! `application/vnd.ctfer-io.scenario`, the empty config, and one layer per
//! file whose `org.opencontainers.image.title` annotation is the file's path
//! relative to the scenario directory (see [`manifest`]). The upstream
//! chall-manager tooling produces this layout, and so does
//! `oras push --artifact-type application/vnd.ctfer-io.scenario` given files
//! of media type `application/vnd.ctfer-io.file`.
//!
//! References take two forms:
//!
//! - `<registry>/<repository>[:<tag>][@sha256:<hex>]`: a manifest in a
//!   registry. Without tag and digest the tag is `latest`; a digest wins
//!   over a tag.
//! - `local:sha256:<hex>`: a manifest that [`Scenarios::pack`] stored in the
//!   local content store of the data directory, for ChallMakers without a
//!   registry. It contains no `/`, so it never parses as a registry
//!   reference.
//!
//! [`Scenarios::resolve`] turns a reference into the digest to pin, and
//! [`Scenarios::fetch`] returns a directory holding the files of a pinned
//! digest, extracted once into the cache (see `cache.rs`) after every blob
//! is verified against its digest.

mod cache;
mod extract;
mod local;
pub mod manifest;
mod oci;
mod pack;
mod reference;

use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use oci_client::errors::OciDistributionError;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

use self::{
    cache::Cache,
    extract::Entry,
    local::LocalStore,
    manifest::Manifest,
    oci::Registry,
    reference::{Digest, LOCAL_PREFIX, RegistryRef, ScenarioRef},
};

/// Mode of every extracted file. Layers carry no mode, so no file is
/// executable; a runner that needs to execute one sets the bit itself.
const FILE_MODE: u32 = 0o644;

/// Registry access settings.
#[derive(Clone, Default)]
pub struct OciSettings {
    /// Talk plain HTTP to registries.
    pub insecure: bool,
    /// Basic-auth user name, used only when the password is set too.
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

/// Failure to resolve, fetch, pack or push a scenario.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid scenario reference {reference:?}: {reason}")]
    Malformed { reference: String, reason: String },

    #[error("cannot push to {reference:?}: {reason}")]
    PushTarget { reference: String, reason: &'static str },

    #[error("{}", registry_message(*.kind, .operation, .reference))]
    Registry {
        operation: &'static str,
        reference: String,
        kind: ErrorKind,
        // Boxed because the oci-client error is large and this enum travels
        // inside every operation's error.
        #[source]
        source: Box<OciDistributionError>,
    },

    #[error("scenario {digest} is not in the local content store: pack the directory again on this host")]
    LocalNotFound { digest: String },

    #[error("scenario {digest} is not a valid scenario: {reason}")]
    Invalid { digest: String, reason: String },

    #[error("{what} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { what: String, expected: String, actual: String },

    #[error("directory {path} contains no regular file to pack")]
    EmptyDirectory { path: PathBuf },

    #[error("path {path} is not valid UTF-8, so it cannot be a layer title")]
    NonUtf8Path { path: PathBuf },

    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("scenario task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Malformed { .. } | Self::PushTarget { .. } => ErrorKind::Malformed,
            Self::Registry { kind, .. } => *kind,
            Self::LocalNotFound { .. } => ErrorKind::NotFound,
            Self::Invalid { .. } | Self::EmptyDirectory { .. } | Self::NonUtf8Path { .. } => ErrorKind::Invalid,
            Self::DigestMismatch { .. } | Self::Io { .. } | Self::Task(_) => ErrorKind::Internal,
        }
    }

    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self::Io { action, path, source }
    }

    fn malformed(reference: &str) -> impl FnOnce(reference::ParseError) -> Self {
        let reference = reference.to_owned();
        move |reference::ParseError(reason)| Self::Malformed { reference, reason }
    }

    fn registry(operation: &'static str, reference: &str) -> impl FnOnce(OciDistributionError) -> Self {
        let reference = reference.to_owned();
        move |source| Self::Registry { operation, reference, kind: oci::classify(&source), source: Box::new(source) }
    }

    fn invalid(digest: &Digest) -> impl FnOnce(String) -> Self {
        let digest = digest.to_string();
        move |reason| Self::Invalid { digest, reason }
    }
}

/// Message of a registry error: what the user can check, by kind.
fn registry_message(kind: ErrorKind, operation: &str, reference: &str) -> String {
    match kind {
        ErrorKind::NotFound => format!("{reference} not found: the registry has no such repository, tag or digest"),
        ErrorKind::Unreachable => format!(
            "the registry of {reference} is unreachable: check its address and that it is running (a plain-HTTP registry needs --oci-insecure or OCI_INSECURE=true)"
        ),
        ErrorKind::Unauthorized => {
            format!("the registry denied access to {reference}: check the registry username and password")
        }
        _ => format!("failed to {operation} {reference}"),
    }
}

/// Origin of the manifest and blobs of a fetch.
enum Source {
    /// The repository of the reference, addressed by the pinned digest.
    Registry(oci_client::Reference),
    Local,
}

/// Fetches, caches and packs scenarios.
#[derive(Debug)]
pub struct Scenarios {
    cache: Cache,
    local: LocalStore,
    registry: Registry,
}

impl Scenarios {
    /// Builds the scenario service. Packed scenarios live under
    /// `<data_dir>/blobs`, extracted ones under `cache_dir`.
    pub fn new(data_dir: &Path, cache_dir: PathBuf, oci: OciSettings) -> Self {
        Self { cache: Cache::new(cache_dir), local: LocalStore::new(data_dir), registry: Registry::new(&oci) }
    }

    /// Resolves a reference to the digest of its manifest, `sha256:<hex>`.
    ///
    /// Fails with [`ErrorKind::Malformed`] when the reference cannot be
    /// parsed or names a digest other than sha256, [`ErrorKind::NotFound`]
    /// when the registry or local store lacks it, [`ErrorKind::Unreachable`]
    /// or [`ErrorKind::Unauthorized`] when the registry cannot be reached or
    /// denies access, and [`ErrorKind::Internal`] on any other failure.
    #[tracing::instrument(skip_all, fields(reference = %reference))]
    pub async fn resolve(&self, reference: &str) -> Result<String, Error> {
        let digest = match ScenarioRef::parse(reference).map_err(Error::malformed(reference))? {
            ScenarioRef::Local(digest) => self.resolve_local(digest).await?,
            ScenarioRef::Registry(parsed) => self.resolve_remote(reference, &parsed).await?,
        };
        debug!(digest = %digest, "resolved scenario reference");
        Ok(digest.to_string())
    }

    async fn resolve_local(&self, digest: Digest) -> Result<Digest, Error> {
        let path = self.local.path(&digest);
        match tokio::fs::metadata(&path).await {
            Ok(_) => Ok(digest),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                Err(Error::LocalNotFound { digest: digest.to_string() })
            }
            Err(err) => Err(Error::io("inspect", &path)(err)),
        }
    }

    async fn resolve_remote(&self, reference: &str, parsed: &RegistryRef) -> Result<Digest, Error> {
        let digest = self.registry.resolve(&parsed.to_oci()).await.map_err(Error::registry("resolve", reference))?;
        Digest::parse(&digest).map_err(|reference::ParseError(reason)| Error::Malformed {
            reference: reference.to_owned(),
            reason: format!("the registry returned manifest digest {digest:?}: {reason}"),
        })
    }

    /// Returns the directory holding the files of the manifest `digest`
    /// from the repository of `reference`, downloading and extracting them
    /// when the cache lacks them. The directory must not be modified.
    ///
    /// Fails with [`ErrorKind::Invalid`] when the artifact is not a
    /// scenario (unsafe or clashing titles, no file), with
    /// [`ErrorKind::Internal`] when content does not match its digest or the
    /// cache cannot be written, and as [`Scenarios::resolve`] does otherwise.
    #[tracing::instrument(skip_all, fields(reference = %reference, digest = %digest))]
    pub async fn fetch(&self, reference: &str, digest: &str) -> Result<PathBuf, Error> {
        let digest = Digest::parse(digest).map_err(Error::malformed(digest))?;
        let dir = self.cache.dir(&digest);
        // One stat, done inline: a trip to a blocking thread would cost more
        // than the call itself on every deployment.
        if std::fs::metadata(&dir).is_ok_and(|m| m.is_dir()) {
            debug!(path = %dir.display(), "scenario found in the cache");
            return Ok(dir);
        }

        let source = match ScenarioRef::parse(reference).map_err(Error::malformed(reference))? {
            ScenarioRef::Local(_) => Source::Local,
            ScenarioRef::Registry(parsed) => Source::Registry(parsed.pinned(&digest)),
        };
        let manifest_bytes = self.read_manifest(&source, reference, &digest).await?;
        let manifest = Manifest::parse(&manifest_bytes).map_err(Error::invalid(&digest))?;
        let entries = extract::plan(&manifest).map_err(Error::invalid(&digest))?;

        // Checks done: extract into a staging directory, then publish it.
        let staging = self.stage(&digest).await?;
        for entry in &entries {
            self.extract_file(&source, reference, &digest, staging.path(), entry).await?;
        }
        let target = dir.clone();
        tokio::task::spawn_blocking(move || staging.publish(&target).map_err(Error::io("publish", &target))).await??;

        info!(path = %dir.display(), files = entries.len(), "scenario fetched");
        Ok(dir)
    }

    /// Reads the manifest `digest` and checks its content against it.
    async fn read_manifest(&self, source: &Source, reference: &str, digest: &Digest) -> Result<bytes::Bytes, Error> {
        let bytes = match source {
            Source::Registry(pinned) => {
                self.registry.manifest(pinned).await.map_err(Error::registry("pull", reference))?
            }
            Source::Local => self.read_local(digest).await?.into(),
        };
        check_digest(&format!("manifest of {reference}"), digest, &bytes)?;
        Ok(bytes)
    }

    async fn read_local(&self, digest: &Digest) -> Result<Vec<u8>, Error> {
        match self.local.read(digest).await {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(Error::LocalNotFound { digest: digest.to_string() }),
            Err(err) => Err(Error::io("read", &self.local.path(digest))(err)),
        }
    }

    async fn stage(&self, digest: &Digest) -> Result<cache::Staging, Error> {
        let cache = self.cache.clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || {
            cache.stage(&digest).map_err(Error::io("create a staging directory in", cache.root()))
        })
        .await?
    }

    /// Writes the file of one layer under `root`, with mode [`FILE_MODE`].
    async fn extract_file(
        &self,
        source: &Source,
        reference: &str,
        digest: &Digest,
        root: &Path,
        entry: &Entry<'_>,
    ) -> Result<(), Error> {
        let layer_digest = Digest::parse(&entry.layer.digest).map_err(|reference::ParseError(reason)| {
            Error::invalid(digest)(format!("layer {:?} has {reason}", entry.title))
        })?;

        let path = root.join(&entry.path);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(Error::io("create", parent))?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)
            .await
            .map_err(Error::io("create", &path))?;

        match source {
            Source::Registry(pinned) => {
                self.registry
                    .blob(pinned, &entry.layer.digest, &mut file)
                    .await
                    .map_err(Error::registry("pull", reference))?;
            }
            Source::Local => {
                let bytes = self.read_local(&layer_digest).await?;
                check_digest(&format!("layer {:?}", entry.title), &layer_digest, &bytes)?;
                file.write_all(&bytes).await.map_err(Error::io("write", &path))?;
            }
        }
        file.flush().await.map_err(Error::io("write", &path))?;

        // The digest matched, so a size mismatch means the manifest lies.
        let metadata = file.metadata().await.map_err(Error::io("inspect", &path))?;
        if metadata.len() != entry.layer.size {
            return Err(Error::invalid(digest)(format!(
                "layer {:?} has size {} in the manifest, but its blob has {} bytes",
                entry.title,
                entry.layer.size,
                metadata.len()
            )));
        }
        // The creation mode went through the umask; set it exactly.
        tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(FILE_MODE))
            .await
            .map_err(Error::io("set the mode of", &path))
    }

    /// Packs a directory into the local content store and returns its
    /// `local:sha256:<hex>` reference. The manifest is the one
    /// [`Scenarios::push`] would upload, so both give the same digest.
    ///
    /// Fails with [`ErrorKind::Invalid`] when the directory contains no regular
    /// file or a path that is not UTF-8, and [`ErrorKind::Internal`] when it
    /// cannot be read or the store cannot be written.
    #[tracing::instrument(skip_all, fields(dir = %dir.display()))]
    pub async fn pack(&self, dir: &Path) -> Result<Pinned, Error> {
        let dir = dir.to_owned();
        let local = self.local.clone();
        let digest = tokio::task::spawn_blocking(move || {
            let artifact = pack::artifact(&dir)?;
            for (digest, data) in artifact.blobs.values() {
                local.put(digest, data).map_err(Error::io("write", &local.path(digest)))?;
            }
            local
                .put(&artifact.digest, &artifact.manifest)
                .map_err(Error::io("write", &local.path(&artifact.digest)))?;
            Ok::<_, Error>(artifact.digest)
        })
        .await??;

        let pinned = Pinned { reference: format!("{LOCAL_PREFIX}{digest}"), digest: digest.to_string() };
        info!(reference = %pinned.reference, digest = %pinned.digest, "scenario packed");
        Ok(pinned)
    }

    /// Pushes a directory to a registry as a scenario artifact, under the
    /// tag of `reference`, and returns the digest of its manifest.
    ///
    /// Fails with [`ErrorKind::Malformed`] when the reference is not a
    /// registry reference with a tag and without a digest, and as
    /// [`Scenarios::pack`] and [`Scenarios::resolve`] do otherwise.
    #[tracing::instrument(skip_all, fields(reference = %reference, dir = %dir.display()))]
    pub async fn push(&self, dir: &Path, reference: &str) -> Result<Pinned, Error> {
        let target = push_target(reference)?;
        let dir = dir.to_owned();
        let artifact = tokio::task::spawn_blocking(move || pack::artifact(&dir)).await??;

        self.registry.push(&target, &artifact).await.map_err(Error::registry("push", reference))?;

        let pinned = Pinned { reference: reference.to_owned(), digest: artifact.digest.to_string() };
        info!(digest = %pinned.digest, "scenario pushed");
        Ok(pinned)
    }
}

/// Parses the reference of a push: a registry reference with a tag.
fn push_target(reference: &str) -> Result<oci_client::Reference, Error> {
    let rejected = |reason| Error::PushTarget { reference: reference.to_owned(), reason };
    let parsed = match ScenarioRef::parse(reference).map_err(Error::malformed(reference))? {
        ScenarioRef::Local(_) => {
            return Err(rejected("a local reference names packed content; push to <registry>/<repository>:<tag>"));
        }
        ScenarioRef::Registry(parsed) => parsed,
    };
    if parsed.digest.is_some() {
        return Err(rejected("a pushed manifest gets its digest from its content; remove the @sha256:... part"));
    }
    let Some(tag) = &parsed.tag else {
        return Err(rejected("the reference has no tag; use <registry>/<repository>:<tag>"));
    };
    Ok(oci_client::Reference::with_tag(parsed.registry.clone(), parsed.repository.clone(), tag.clone()))
}

/// Checks that `bytes` has digest `expected`; `what` names the content in
/// the error.
fn check_digest(what: &str, expected: &Digest, bytes: &[u8]) -> Result<(), Error> {
    let actual = Digest::of(bytes);
    if &actual == expected {
        Ok(())
    } else {
        Err(Error::DigestMismatch { what: what.to_owned(), expected: expected.to_string(), actual: actual.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_needs_a_tag() {
        let err = push_target("registry.example.com/scenario").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Malformed);
        assert!(err.to_string().contains("no tag"), "{err}");
    }

    #[test]
    fn push_rejects_digest_and_local_references() {
        let hex = "0".repeat(64);
        for reference in [format!("registry.example.com/scenario:v1@sha256:{hex}"), format!("local:sha256:{hex}")] {
            let err = push_target(&reference).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Malformed, "{reference}");
        }
    }

    #[test]
    fn push_target_keeps_the_tag() {
        let target = push_target("127.0.0.1:5000/ctf/scenario:v2").unwrap();
        assert_eq!(target.registry(), "127.0.0.1:5000");
        assert_eq!(target.repository(), "ctf/scenario");
        assert_eq!(target.tag(), Some("v2"));
    }
}
