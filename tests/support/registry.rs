//! A real OCI registry for tests: the Debian `docker-registry` binary
//! (CNCF distribution 2.8), listening on a free port of 127.0.0.1 with its
//! storage in a temporary directory. The process is killed on drop.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::json;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

pub const BINARY: &str = "/usr/bin/docker-registry";

/// Maximum wait for `GET /v2/` to return 200. Starts measured on a 2-core
/// Debian 12 machine took 14 to 27 ms, so this bound only ends a broken start.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Attempts at starting the registry, in case another process takes the
/// chosen port between choosing and binding it.
const START_ATTEMPTS: usize = 3;

/// How a test registry is configured.
#[derive(Clone, Copy, Debug)]
pub enum Setup {
    /// No authentication, storage in the temporary directory.
    Open,
    /// HTTP basic authentication with one htpasswd line (`user:bcrypt-hash`).
    Htpasswd(&'static str),
    /// The storage root is a regular file, so every read of a repository
    /// fails with 500 `UNKNOWN`, like a registry whose disk fails.
    BrokenStorage,
}

pub struct Registry {
    child: Child,
    address: SocketAddr,
    dir: TempDir,
    http: reqwest::Client,
}

impl Registry {
    /// Starts a registry and waits until it serves the API.
    ///
    /// Panics when the binary is missing (install the Debian package
    /// `docker-registry`) or the registry does not become ready.
    pub fn start() -> Self {
        Self::start_with(Setup::Open)
    }

    /// Starts a registry configured by `setup` and waits until it serves
    /// the API.
    pub fn start_with(setup: Setup) -> Self {
        assert!(Path::new(BINARY).exists(), "{BINARY} is missing: install the Debian package docker-registry");
        install_crypto_provider();

        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(setup) {
                Ok(registry) => return registry,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("docker-registry did not start:\n{}", failures.join("\n---\n"));
    }

    fn try_start(setup: Setup) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let address = unused_address();
        let config = dir.path().join("config.yml");
        let storage = dir.path().join("storage");
        let mut yaml = config_yaml(address, &storage);
        match setup {
            Setup::Open => {}
            Setup::Htpasswd(line) => {
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{line}\n")).expect("write the htpasswd file");
                yaml.push_str(&format!("auth:\n  htpasswd: {{realm: test, path: {}}}\n", htpasswd.display()));
            }
            Setup::BrokenStorage => std::fs::write(&storage, "not a directory").expect("write the storage file"),
        }
        std::fs::write(&config, yaml).expect("write the registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("create the registry log");

        let child = Command::new(BINARY)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .map_err(|err| format!("failed to run {BINARY}: {err}"))?;
        let http = reqwest::Client::new();
        let mut registry = Self { child, address, dir, http };

        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = registry.child.try_wait() {
                return Err(format!("docker-registry exited with {status}:\n{}", registry.log()));
            }
            if api_ready(address) {
                return Ok(registry);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("docker-registry not ready after {READY_TIMEOUT:?}:\n{}", registry.log()))
    }

    /// Returns `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        self.address.to_string()
    }

    /// Returns `<host>/<name>`, as in `reference("ctf/web:v1")`.
    pub fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.address)
    }

    /// Returns what the registry has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Uploads a blob to `repository` as a monolithic upload (a POST, then one
    /// PUT with the whole content) and returns its digest.
    pub async fn upload_blob(&self, repository: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let start =
            self.http.post(format!("http://{}/v2/{repository}/blobs/uploads/", self.address)).send().await.unwrap();
        assert_eq!(start.status(), 202, "starting an upload: {}", start.text().await.unwrap_or_default());

        let location = start.headers()["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with('/') { format!("http://{}{location}", self.address) } else { location };
        let separator = if location.contains('?') { '&' } else { '?' };
        let finish = self
            .http
            .put(format!("{location}{separator}digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(finish.status(), 201, "finishing an upload: {}", finish.text().await.unwrap_or_default());
        digest
    }

    /// Stores a manifest under `tag` exactly as given and returns its digest.
    pub async fn put_manifest(&self, repository: &str, tag: &str, body: &[u8]) -> String {
        let response = self
            .http
            .put(format!("http://{}/v2/{repository}/manifests/{tag}", self.address))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "putting a manifest: {}", response.text().await.unwrap_or_default());
        sha256(body)
    }

    /// Uploads the empty config and `files` as layers, then a manifest shaped
    /// like the output of oras-go `PackManifest` (top-level `mediaType`,
    /// `data` in the config descriptor, a creation annotation). A `None` title
    /// makes a layer without title. Returns the manifest digest.
    pub async fn push_by_hand(&self, repository: &str, tag: &str, files: &[(Option<&str>, &[u8])]) -> String {
        let config = self.upload_blob(repository, b"{}").await;
        let mut layers = Vec::new();
        for (title, data) in files {
            let digest = self.upload_blob(repository, data).await;
            layers.push(file_layer(&digest, data.len(), *title));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.ctfer-io.scenario",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2, "data": "e30="},
            "layers": layers,
            "annotations": {"org.opencontainers.image.created": "2025-06-01T12:00:00Z"},
        });
        self.put_manifest(repository, tag, &serde_json::to_vec(&manifest).unwrap()).await
    }

    /// Downloads the raw manifest `reference` (a tag or digest) names.
    pub async fn get_manifest(&self, repository: &str, reference: &str) -> Vec<u8> {
        let response = self
            .http
            .get(format!("http://{}/v2/{repository}/manifests/{reference}", self.address))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "getting a manifest");
        response.bytes().await.unwrap().to_vec()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn file_layer(digest: &str, size: usize, title: Option<&str>) -> serde_json::Value {
    let mut layer = json!({"mediaType": "application/vnd.ctfer-io.file", "digest": digest, "size": size});
    if let Some(title) = title {
        layer["annotations"] = json!({"org.opencontainers.image.title": title});
    }
    layer
}

/// Returns `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Returns a loopback address nothing listens on (at the time of the call).
pub fn unused_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap()
}

/// Installs the rustls crypto provider that reqwest needs, once per process.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn config_yaml(address: SocketAddr, storage: &Path) -> String {
    format!(
        "version: 0.1\n\
         log: {{level: warn}}\n\
         storage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\n\
         http:\n  addr: {address}\n",
        storage.display()
    )
}

/// Returns whether `GET /v2/` returns 200, or 401 when the registry requires
/// credentials, checked with a bare HTTP/1.0 request so readiness does not
/// depend on an async runtime.
fn api_ready(address: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    ["HTTP/1.1 200", "HTTP/1.0 200", "HTTP/1.1 401", "HTTP/1.0 401"].iter().any(|line| response.starts_with(line))
}
