//! The local content store: manifests and blobs of packed scenarios, for
//! ChallMakers without a registry.
//!
//! ```text
//! <data>/blobs/sha256/<hex>   manifest or blob whose SHA-256 is <hex>
//! ```
//!
//! The layout is the `blobs` directory of an OCI image layout. Content is
//! immutable: a blob is written once, atomically, and never replaced.

use std::{io, path::PathBuf};

use super::reference::Digest;
use crate::store::write_atomic;

#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(data_dir: &std::path::Path) -> Self {
        Self { root: data_dir.join("blobs").join("sha256") }
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join(digest.hex())
    }

    /// Stores `bytes` under their digest unless already present.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(digest);
        if path.is_file() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.root)?;
        write_atomic(&path, bytes)
    }

    /// Reads a blob, or returns `None` when the store lacks it. The caller
    /// verifies the digest: a blob on disk may have been damaged.
    pub async fn read(&self, digest: &Digest) -> io::Result<Option<Vec<u8>>> {
        match tokio::fs::read(self.path(digest)).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }
}
