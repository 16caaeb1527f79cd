//! Turning layer titles into safe file paths.
//!
//! A title comes from the client that pushed the artifact, so it is
//! untrusted. Every
//! title is checked before any byte is downloaded: it must be a relative
//! path made of plain names, and no two titles may name the same file or a
//! file and a directory above another file. The files are then written into
//! a directory freshly created by [`super::cache`], which contains no symbolic
//! link, so joining the checked components cannot leave it.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use super::manifest::{Descriptor, Manifest, UNPACK_ANNOTATION};

/// One file to write: its checked relative path and the layer holding it.
#[derive(Debug)]
pub struct Entry<'a> {
    pub path: PathBuf,
    pub title: &'a str,
    pub layer: &'a Descriptor,
}

/// Lists the files of a manifest, checking every title. Layers without a
/// title are skipped, as ORAS does. Returns the reason of the first
/// rejected title.
pub fn plan(manifest: &Manifest) -> Result<Vec<Entry<'_>>, String> {
    let mut entries = Vec::new();
    for layer in &manifest.layers {
        let Some(title) = layer.title() else { continue };
        if layer.annotations.get(UNPACK_ANNOTATION).is_some_and(|value| value == "true") {
            return Err(format!(
                "layer {title:?} is a directory packed as an archive, which is not supported: push each file as its own layer"
            ));
        }
        let path = title_to_path(title).map_err(|reason| format!("layer title {title:?} {reason}"))?;
        entries.push(Entry { path, title, layer });
    }

    if entries.is_empty() {
        return Err("the artifact contains no file: no layer has an org.opencontainers.image.title annotation".into());
    }
    check_collisions(&entries)?;
    Ok(entries)
}

/// Converts a title to a relative path of plain names. `.` components and
/// repeated `/` are dropped, as a path cleaner would; anything that could
/// point elsewhere is rejected.
pub fn title_to_path(title: &str) -> Result<PathBuf, &'static str> {
    if title.is_empty() {
        return Err("is empty");
    }
    if title.starts_with('/') {
        return Err("is an absolute path");
    }
    if title.contains('\0') {
        return Err("contains a NUL byte");
    }

    let mut path = PathBuf::new();
    for component in title.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err("contains a '..' component"),
            name => path.push(name),
        }
    }

    // `path` is made only of the names pushed above, but check the result
    // rather than trust the loop.
    let only_names = path.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    if path.as_os_str().is_empty() {
        return Err("names no file");
    }
    if !only_names || path.is_absolute() {
        return Err("would land outside the scenario directory");
    }
    Ok(path)
}

/// Rejects two titles naming one file, and a title naming a directory that
/// another title's file lives in.
fn check_collisions(entries: &[Entry<'_>]) -> Result<(), String> {
    let mut files: BTreeSet<&Path> = BTreeSet::new();
    for entry in entries {
        if !files.insert(&entry.path) {
            return Err(format!("layer title {:?} names a file that another layer also names", entry.title));
        }
    }

    for entry in entries {
        for ancestor in entry.path.ancestors().skip(1) {
            if files.contains(ancestor) {
                return Err(format!(
                    "layer title {:?} needs {} to be a directory, but another layer names it as a file",
                    entry.title,
                    ancestor.display()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::scenario::manifest::{FILE_MEDIA_TYPE, TITLE_ANNOTATION};

    fn layer(title: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: FILE_MEDIA_TYPE.to_owned(),
            digest: "sha256:aa".to_owned(),
            size: 0,
            annotations: title
                .map(|t| BTreeMap::from([(TITLE_ANNOTATION.to_owned(), t.to_owned())]))
                .unwrap_or_default(),
        }
    }

    fn manifest(titles: &[Option<&str>]) -> Manifest {
        Manifest::scenario(titles.iter().map(|t| layer(*t)).collect())
    }

    #[test]
    fn accepts_plain_and_nested_titles() {
        assert_eq!(title_to_path("main").unwrap(), PathBuf::from("main"));
        assert_eq!(title_to_path("sub/dir/file.txt").unwrap(), PathBuf::from("sub/dir/file.txt"));
        assert_eq!(title_to_path("./sub//x").unwrap(), PathBuf::from("sub/x"));
        assert_eq!(title_to_path("..hidden").unwrap(), PathBuf::from("..hidden"));
    }

    #[test]
    fn rejects_unsafe_titles() {
        let cases = [
            ("", "is empty"),
            ("/etc/passwd", "absolute"),
            ("//etc/passwd", "absolute"),
            ("../x", "'..'"),
            ("a/../../x", "'..'"),
            ("a/..", "'..'"),
            (".", "names no file"),
            ("./", "names no file"),
            ("a\0b", "NUL"),
        ];
        for (title, expected) in cases {
            let reason = title_to_path(title).unwrap_err();
            assert!(reason.contains(expected), "{title:?}: {reason:?} does not contain {expected:?}");
        }
    }

    #[test]
    fn plan_skips_untitled_layers() {
        let manifest = manifest(&[None, Some("Pulumi.yaml"), Some("sub/main.go")]);
        let entries = plan(&manifest).unwrap();
        let titles: Vec<_> = entries.iter().map(|e| e.title).collect();
        assert_eq!(titles, ["Pulumi.yaml", "sub/main.go"]);
    }

    #[test]
    fn plan_names_the_offending_title() {
        let reason = plan(&manifest(&[Some("ok"), Some("../x")])).unwrap_err();
        assert!(reason.contains("\"../x\""), "{reason}");
    }

    #[test]
    fn plan_rejects_duplicates() {
        let reason = plan(&manifest(&[Some("a/b"), Some("./a//b")])).unwrap_err();
        assert!(reason.contains("another layer also names"), "{reason}");
    }

    #[test]
    fn plan_rejects_file_used_as_directory() {
        let reason = plan(&manifest(&[Some("a/b/c"), Some("a/b")])).unwrap_err();
        assert!(reason.contains("\"a/b/c\""), "{reason}");
    }

    #[test]
    fn plan_rejects_artifact_without_files() {
        let reason = plan(&manifest(&[None])).unwrap_err();
        assert!(reason.contains("contains no file"), "{reason}");
    }

    #[test]
    fn plan_rejects_archive_layers() {
        let mut archive = layer(Some("dir"));
        archive.annotations.insert(UNPACK_ANNOTATION.to_owned(), "true".to_owned());
        let reason = plan(&Manifest::scenario(vec![archive])).unwrap_err();
        assert!(reason.contains("archive"), "{reason}");
    }
}
