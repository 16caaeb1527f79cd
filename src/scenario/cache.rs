//! The cache of extracted scenarios.
//!
//! ```text
//! <cache>/sha256-<hex>/                 files of the manifest with that digest
//! <cache>/.sha256-<hex>.<random>.tmp/   extraction in progress
//! ```
//!
//! A scenario directory appears only by renaming a complete staging
//! directory, so a present directory is always complete. Several tasks or
//! processes may extract the same digest at once: each uses its own staging
//! directory, the first rename wins, and the others discard their copy.
//! The cache can be deleted at any time between fetches; it is filled again
//! on the next fetch.
//!
//! NOTE: a process killed during an extraction leaves its staging directory
//! behind. Nothing reads it, and deleting the cache removes it.

use std::{
    io,
    path::{Path, PathBuf},
};

use rand::Rng;

use super::reference::Digest;

#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

/// A staging directory, removed on drop unless published.
#[must_use = "dropping the staging directory removes it"]
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    published: bool,
}

impl Cache {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Returns the directory of a scenario, whether present or not.
    pub fn dir(&self, digest: &Digest) -> PathBuf {
        self.root.join(format!("sha256-{}", digest.hex()))
    }

    /// Creates an empty staging directory for `digest`, and the cache
    /// directory itself when it is missing.
    pub fn stage(&self, digest: &Digest) -> io::Result<Staging> {
        std::fs::create_dir_all(&self.root)?;
        let suffix: u64 = rand::rng().random();
        let path = self.root.join(format!(".sha256-{}.{suffix:016x}.tmp", digest.hex()));
        std::fs::create_dir(&path)?;
        Ok(Staging { path, published: false })
    }
}

impl Staging {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the staging directory to `target`. When another writer
    /// published `target` first, keeps theirs and discards this copy: both
    /// hold the files of the same verified digest.
    pub fn publish(mut self, target: &Path) -> io::Result<()> {
        match std::fs::rename(&self.path, target) {
            Ok(()) => {
                self.published = true;
                Ok(())
            }
            // rename(2) fails with ENOTEMPTY or EEXIST when the target is a
            // non-empty directory.
            Err(err)
                if target.is_dir()
                    && matches!(err.kind(), io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::AlreadyExists) =>
            {
                tracing::debug!(target = %target.display(), "scenario already extracted by another fetch, discarding this copy");
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        if let Err(err) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %err, "failed to remove a scenario staging directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest::of(b"scenario")
    }

    #[test]
    fn publish_moves_staging_into_place() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::new(root.path().join("cache"));
        let staging = cache.stage(&digest()).unwrap();
        std::fs::write(staging.path().join("file"), b"content").unwrap();

        let target = cache.dir(&digest());
        staging.publish(&target).unwrap();

        assert_eq!(std::fs::read(target.join("file")).unwrap(), b"content");
        let names: Vec<_> =
            std::fs::read_dir(root.path().join("cache")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(format!("sha256-{}", digest().hex()))]);
    }

    #[test]
    fn second_publish_keeps_first_copy() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::new(root.path().to_owned());
        let target = cache.dir(&digest());

        let first = cache.stage(&digest()).unwrap();
        let second = cache.stage(&digest()).unwrap();
        std::fs::write(first.path().join("file"), b"first").unwrap();
        std::fs::write(second.path().join("file"), b"second").unwrap();
        first.publish(&target).unwrap();
        second.publish(&target).unwrap();

        assert_eq!(std::fs::read(target.join("file")).unwrap(), b"first");
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1, "the second staging directory was not removed");
    }

    #[test]
    fn dropped_staging_is_removed() {
        let root = tempfile::tempdir().unwrap();
        let cache = Cache::new(root.path().to_owned());
        let staging = cache.stage(&digest()).unwrap();
        std::fs::write(staging.path().join("file"), b"partial").unwrap();
        drop(staging);
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }
}
