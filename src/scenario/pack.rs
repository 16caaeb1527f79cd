//! Building a scenario artifact from a directory.
//!
//! The same [`Artifact`] is stored by `pack` and uploaded by `push`, so both
//! give the same manifest digest for the same files. Files are read into
//! memory once, so the uploaded bytes are the hashed bytes even if the
//! directory changes meanwhile.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use bytes::Bytes;

use super::{
    Error,
    manifest::{Descriptor, EMPTY_CONFIG, FILE_MEDIA_TYPE, Manifest, TITLE_ANNOTATION},
    reference::Digest,
};

/// A scenario ready to store or upload.
#[derive(Debug)]
pub struct Artifact {
    pub manifest: Bytes,
    pub digest: Digest,
    /// Config and layer blobs, each once, keyed by digest.
    pub blobs: BTreeMap<String, (Digest, Bytes)>,
}

/// Reads every regular file under `dir` into an artifact. Layers are
/// sorted by title and the manifest has no creation time, so the digest
/// depends only on the file names and contents.
///
/// Fails when `dir` cannot be read, contains no regular file, or has a path
/// that is not UTF-8 (titles are JSON strings).
pub fn artifact(dir: &Path) -> Result<Artifact, Error> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    if files.is_empty() {
        return Err(Error::EmptyDirectory { path: dir.to_owned() });
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));

    let mut blobs = BTreeMap::new();
    let config = Digest::of(EMPTY_CONFIG);
    blobs.insert(config.to_string(), (config, Bytes::from_static(EMPTY_CONFIG)));

    let mut layers = Vec::with_capacity(files.len());
    for (title, path) in files {
        let data = Bytes::from(std::fs::read(&path).map_err(Error::io("read", &path))?);
        let digest = Digest::of(&data);
        layers.push(Descriptor {
            media_type: FILE_MEDIA_TYPE.to_owned(),
            digest: digest.to_string(),
            size: data.len() as u64,
            annotations: BTreeMap::from([(TITLE_ANNOTATION.to_owned(), title)]),
        });
        blobs.insert(digest.to_string(), (digest, data));
    }

    let manifest = Bytes::from(Manifest::scenario(layers).to_bytes());
    let digest = Digest::of(&manifest);
    Ok(Artifact { manifest, digest, blobs })
}

/// Collects `(title, path)` for every regular file under `dir`. Symbolic
/// links and other special files are skipped with a warning, because a
/// layer carries only file content.
fn walk(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) -> Result<(), Error> {
    let entries = std::fs::read_dir(dir).map_err(Error::io("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(Error::io("list", dir))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(Error::io("inspect", &path))?;

        if file_type.is_dir() {
            walk(root, &path, files)?;
        } else if file_type.is_file() {
            files.push((title(root, &path)?, path));
        } else {
            tracing::warn!(path = %path.display(), "skipping a file that is neither a regular file nor a directory");
        }
    }
    Ok(())
}

/// Returns the path of `path` relative to `root`, with `/` separators.
fn title(root: &Path, path: &Path) -> Result<String, Error> {
    let relative = path.strip_prefix(root).expect("walk only visits paths under the root");
    let components: Option<Vec<&str>> = relative.components().map(|c| c.as_os_str().to_str()).collect();
    match components {
        Some(components) => Ok(components.join("/")),
        None => Err(Error::NonUtf8Path { path: path.to_owned() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_sorted_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub/deeper")).unwrap();
        std::fs::write(dir.path().join("sub/deeper/c"), b"c").unwrap();
        std::fs::write(dir.path().join("b"), b"b").unwrap();
        std::fs::write(dir.path().join("a"), b"a").unwrap();

        let artifact = artifact(dir.path()).unwrap();
        let manifest = Manifest::parse(&artifact.manifest).unwrap();
        let titles: Vec<_> = manifest.layers.iter().map(|l| l.title().unwrap()).collect();
        assert_eq!(titles, ["a", "b", "sub/deeper/c"]);
        assert_eq!(artifact.digest, Digest::of(&artifact.manifest));
    }

    #[test]
    fn identical_files_share_one_blob() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"same").unwrap();
        std::fs::write(dir.path().join("b"), b"same").unwrap();

        let artifact = artifact(dir.path()).unwrap();
        // The config blob and one file blob.
        assert_eq!(artifact.blobs.len(), 2);
    }

    #[test]
    fn empty_directory_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        let err = artifact(dir.path()).unwrap_err();
        assert!(matches!(err, Error::EmptyDirectory { .. }), "{err}");
    }
}
