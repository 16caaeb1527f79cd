//! Scenario resolution, fetching, packing and pushing against a real
//! registry started by the test (see `support::registry`).

mod support;

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use chall_manager::scenario::{ErrorKind, OciSettings, Scenarios};
use support::registry::{Registry, sha256, unused_address};
use tempfile::TempDir;

/// A data directory and a cache directory side by side under `root`, so a
/// test can check that nothing lands next to them.
struct Dirs {
    tmp: TempDir,
}

impl Dirs {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("root")).unwrap();
        Self { tmp }
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    fn cache(&self) -> PathBuf {
        self.root().join("cache")
    }

    fn scenarios(&self) -> Scenarios {
        let settings = OciSettings { insecure: true, ..OciSettings::default() };
        Scenarios::new(&self.root().join("data"), self.cache(), settings)
    }
}

/// Writes a scenario directory with a nested file and a non-UTF-8 payload.
fn scenario_dir(marker: &str) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Pulumi.yaml"), format!("name: {marker}\nruntime: go\n")).unwrap();
    std::fs::write(dir.path().join("main"), [0x7f, b'E', b'L', b'F', 0, 0xff, 0xfe]).unwrap();
    std::fs::create_dir_all(dir.path().join("sub/nested")).unwrap();
    std::fs::write(dir.path().join("sub/nested/data.txt"), b"nested content\n").unwrap();
    dir
}

/// Maps each regular file under `dir` to its content, by relative path.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
                out.insert(relative, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = match std::fs::read_dir(dir) {
        Ok(read) => read.map(|e| e.unwrap().file_name().into_string().unwrap()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

#[tokio::test]
async fn push_then_fetch_round_trips() {
    let registry = Registry::start();
    let dirs = Dirs::new();
    let scenarios = dirs.scenarios();
    let source = scenario_dir("round-trip");
    let reference = registry.reference("ctf/web:v1");

    let pinned = scenarios.push(source.path(), &reference).await.unwrap();
    assert_eq!(pinned.reference, reference);
    assert_eq!(scenarios.resolve(&reference).await.unwrap(), pinned.digest);

    let dir = scenarios.fetch(&reference, &pinned.digest).await.unwrap();
    assert!(dir.starts_with(dirs.cache()), "{} is outside the cache", dir.display());
    assert_eq!(files(&dir), files(source.path()));
    for file in ["Pulumi.yaml", "main", "sub/nested/data.txt"] {
        let mode = std::fs::metadata(dir.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "mode of {file}");
    }
}

#[tokio::test]
async fn pushed_manifest_has_scenario_layout() {
    let registry = Registry::start();
    let dirs = Dirs::new();
    let source = scenario_dir("layout");
    dirs.scenarios().push(source.path(), &registry.reference("ctf/layout:v1")).await.unwrap();

    let manifest: serde_json::Value = serde_json::from_slice(&registry.get_manifest("ctf/layout", "v1").await).unwrap();
    assert_eq!(manifest["artifactType"], "application/vnd.ctfer-io.scenario");
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.empty.v1+json");
    assert_eq!(manifest["config"]["digest"], sha256(b"{}"));
    let layers = manifest["layers"].as_array().unwrap();
    let titles: Vec<_> =
        layers.iter().map(|l| l["annotations"]["org.opencontainers.image.title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["Pulumi.yaml", "main", "sub/nested/data.txt"]);
    assert!(layers.iter().all(|l| l["mediaType"] == "application/vnd.ctfer-io.file"));
}

#[tokio::test]
async fn reference_without_tag_resolves_latest() {
    let registry = Registry::start();
    let dirs = Dirs::new();
    let scenarios = dirs.scenarios();
    let latest = scenarios.push(scenario_dir("latest").path(), &registry.reference("ctf/app:latest")).await.unwrap();
    let other = scenarios.push(scenario_dir("other").path(), &registry.reference("ctf/app:v2")).await.unwrap();
    assert_ne!(latest.digest, other.digest);

    assert_eq!(scenarios.resolve(&registry.reference("ctf/app")).await.unwrap(), latest.digest);
}

#[tokio::test]
async fn digest_in_reference_wins_over_tag() {
    let registry = Registry::start();
    let dirs = Dirs::new();
    let scenarios = dirs.scenarios();
    let first = scenarios.push(scenario_dir("first").path(), &registry.reference("ctf/pin:v1")).await.unwrap();
    scenarios.push(scenario_dir("second").path(), &registry.reference("ctf/pin:v2")).await.unwrap();

    let reference = format!("{}@{}", registry.reference("ctf/pin:v2"), first.digest);
    assert_eq!(scenarios.resolve(&reference).await.unwrap(), first.digest);
}

#[tokio::test]
async fn unknown_tag_or_repository_is_not_found() {
    let registry = Registry::start();
    let dirs = Dirs::new();
    let scenarios = dirs.scenarios();
    scenarios.push(scenario_dir("known").path(), &registry.reference("ctf/known:v1")).await.unwrap();

    for name in ["ctf/known:missing", "ctf/unknown:v1"] {
        let err = scenarios.resolve(&registry.reference(name)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{name}: {err}");
    }
    let unknown_digest = sha256(b"no such manifest");
    let err = scenarios.fetch(&registry.reference("ctf/known:v1"), &unknown_digest).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn stopped_registry_is_unreachable() {
    let dirs = Dirs::new();
    let scenarios = dirs.scenarios();
    let reference = format!("{}/ctf/app:v1", unused_address());

    let err = scenarios.resolve(&reference).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    let err = scenarios.fetch(&reference, &sha256(b"anything")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
}

#[tokio::test]
async fn malformed_references_are_rejected() {
    let dirs = Dirs::new();
    let scenarios = dirs.scenarios();
    let hex = "0".repeat(64);
    for reference in ["no-registry:v1", "127.0.0.1:5000/Upper:v1", &format!("127.0.0.1:5000/app@sha512:{hex}{hex}")] {
        let err = scenarios.resolve(reference).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Malformed, "{reference}: {err}");
    }
    let err = scenarios.fetch("127.0.0.1:5000/app:v1", "md5:abc").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Malformed, "{err}");
}

#[tokio::test]
async fn fetch_again_after_cache_deleted() {
    let registry = Registry::start();
    let dirs = Dirs::new();
    let scenarios = dirs.scenarios();
    let source = scenario_dir("refetch");
    let reference = registry.reference("ctf/refetch:v1");
    let pinned = scenarios.push(source.path(), &reference).await.unwrap();

    let first = scenarios.fetch(&reference, &pinned.digest).await.unwrap();
    std::fs::remove_dir_all(dirs.cache()).unwrap();
    let second = scenarios.fetch(&reference, &pinned.digest).await.unwrap();

    assert_eq!(first, second);
    assert_eq!(files(&second), files(source.path()));
}

#[tokio::test]
async fn concurrent_fetches_share_one_directory() {
    let registry = Registry::start();
    let dirs = Dirs::new();
    let source = scenario_dir("concurrent");
    let reference = registry.reference("ctf/concurrent:v1");
    let pinned = dirs.scenarios().push(source.path(), &reference).await.unwrap();

    // Separate services over one cache stand for separate processes.
    let fetches = (0..6).map(|_| {
        let scenarios = dirs.scenarios();
        let (reference, digest) = (reference.clone(), pinned.digest.clone());
        tokio::spawn(async move { scenarios.fetch(&reference, &digest).await })
    });
    let results = futures::future::join_all(fetches).await;

    let dir = dirs.cache().join(format!("sha256-{}", pinned.digest.strip_prefix("sha256:").unwrap()));
    for result in results {
        assert_eq!(result.unwrap().unwrap(), dir);
    }
    assert_eq!(files(&dir), files(source.path()));
    assert_eq!(entries(&dirs.cache()).len(), 1, "leftover staging directories: {:?}", entries(&dirs.cache()));
}

#[tokio::test]
async fn unsafe_titles_are_rejected_without_writing() {
    let registry = Registry::start();
    let outside = tempfile::tempdir().unwrap();
    let absolute = outside.path().join("x");
    let cases = ["../x", "../../x", "sub/../../../x", absolute.to_str().unwrap(), "/etc/chall-manager-scenario-test"];

    for (index, title) in cases.into_iter().enumerate() {
        let dirs = Dirs::new();
        let scenarios = dirs.scenarios();
        let tag = format!("t{index}");
        let reference = registry.reference(&format!("ctf/evil:{tag}"));
        let files = [(Some("Pulumi.yaml"), b"name: evil\n".as_slice()), (Some(title), b"payload".as_slice())];
        let digest = registry.push_by_hand("ctf/evil", &tag, &files).await;

        let err = scenarios.fetch(&reference, &digest).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{title}: {err}");
        assert!(err.to_string().contains(&format!("{title:?}")), "{title}: message does not name it: {err}");

        assert_eq!(entries(&dirs.cache()), Vec::<String>::new(), "{title}: cache not empty");
        assert_eq!(entries(&dirs.root()), Vec::<String>::new(), "{title}: files beside the cache");
        assert_eq!(entries(dirs.tmp.path()), ["root"], "{title}: files above the cache");
    }
    assert_eq!(entries(outside.path()), Vec::<String>::new());
    assert!(!Path::new("/etc/chall-manager-scenario-test").exists());
}

#[tokio::test]
async fn clashing_titles_are_rejected() {
    let registry = Registry::start();
    let dirs = Dirs::new();
    let scenarios = dirs.scenarios();
    let files = [(Some("a/b"), b"one".as_slice()), (Some("a/b"), b"two".as_slice())];
    let digest = registry.push_by_hand("ctf/clash", "v1", &files).await;

    let err = scenarios.fetch(&registry.reference("ctf/clash:v1"), &digest).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("\"a/b\""), "{err}");
}

#[tokio::test]
async fn oras_go_shaped_manifest_is_accepted() {
    let registry = Registry::start();
    let dirs = Dirs::new();
    let scenarios = dirs.scenarios();
    let files_in = [
        (Some("Pulumi.yaml"), b"name: oras\nruntime: go\n".as_slice()),
        (Some("sub/dir/main.go"), b"package main\n".as_slice()),
        (None, b"untitled layer".as_slice()),
    ];
    let digest = registry.push_by_hand("ctf/oras", "v1", &files_in).await;
    let reference = registry.reference("ctf/oras:v1");

    assert_eq!(scenarios.resolve(&reference).await.unwrap(), digest);
    let dir = scenarios.fetch(&reference, &digest).await.unwrap();

    let expected = BTreeMap::from([
        ("Pulumi.yaml".to_owned(), b"name: oras\nruntime: go\n".to_vec()),
        ("sub/dir/main.go".to_owned(), b"package main\n".to_vec()),
    ]);
    assert_eq!(files(&dir), expected);
}

#[tokio::test]
async fn pack_and_push_give_same_digest() {
    let registry = Registry::start();
    let dirs = Dirs::new();
    let scenarios = dirs.scenarios();
    let source = scenario_dir("same");

    let packed = scenarios.pack(source.path()).await.unwrap();
    let packed_again = scenarios.pack(source.path()).await.unwrap();
    let pushed = scenarios.push(source.path(), &registry.reference("ctf/same:v1")).await.unwrap();

    assert_eq!(packed, packed_again);
    assert_eq!(packed.digest, pushed.digest);
    assert_eq!(packed.reference, format!("local:{}", packed.digest));
}

#[tokio::test]
async fn local_reference_fetches_without_registry() {
    let dirs = Dirs::new();
    let scenarios = dirs.scenarios();
    let source = scenario_dir("local");

    let pinned = scenarios.pack(source.path()).await.unwrap();
    assert_eq!(scenarios.resolve(&pinned.reference).await.unwrap(), pinned.digest);
    let dir = scenarios.fetch(&pinned.reference, &pinned.digest).await.unwrap();
    assert_eq!(files(&dir), files(source.path()));

    std::fs::remove_dir_all(dirs.cache()).unwrap();
    let dir = scenarios.fetch(&pinned.reference, &pinned.digest).await.unwrap();
    assert_eq!(files(&dir), files(source.path()));

    let unknown = format!("local:{}", sha256(b"never packed"));
    let err = scenarios.resolve(&unknown).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn damaged_local_blob_is_rejected() {
    let dirs = Dirs::new();
    let scenarios = dirs.scenarios();
    let source = scenario_dir("damaged");
    let pinned = scenarios.pack(source.path()).await.unwrap();

    let blob = dirs.root().join("data/blobs/sha256").join(&sha256(b"nested content\n")["sha256:".len()..]);
    std::fs::write(&blob, b"tampered").unwrap();

    let err = scenarios.fetch(&pinned.reference, &pinned.digest).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    assert!(err.to_string().contains("sub/nested/data.txt"), "{err}");
    assert_eq!(entries(&dirs.cache()), Vec::<String>::new(), "a partial extraction was left in the cache");
}

#[tokio::test]
async fn push_without_tag_is_malformed() {
    let registry = Registry::start();
    let dirs = Dirs::new();
    let err =
        dirs.scenarios().push(scenario_dir("untagged").path(), &registry.reference("ctf/untagged")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Malformed, "{err}");
}
