//! A server with a registry and a log that the test scenarios write to,
//! plus the REST calls the end-to-end tests make.

use serde_json::{Value, json};

use super::{
    registry::Registry,
    server::{Server, scenario_dir},
};
use chall_manager::scenario::{OciSettings, Scenarios};

/// Scenario whose `up` records each run in `$CM_TEST_LOG` and returns
/// outputs derived from its identity.
pub const RECORDER: &[(&str, &str)] = &[
    ("scenario.yaml", "runtime: exec\nup: sh up.sh\ndown: sh down.sh\ntimeout: 30s\n"),
    (
        "up.sh",
        r#"echo "up $CM_IDENTITY $CM_ADDITIONAL" >> "$CM_TEST_LOG"
sleep "${CM_TEST_SLEEP:-0}"
printf '{"connection_info":"conn-%s","flags":["FLAG{%s}"]}\n' "$CM_IDENTITY" "$CM_IDENTITY"
"#,
    ),
    ("down.sh", "echo \"down $CM_IDENTITY\" >> \"$CM_TEST_LOG\"\n"),
];

/// Second version of [`RECORDER`]: its connection info is `v2-<identity>`
/// and its flag `FLAG{v2}`.
#[allow(dead_code, reason = "only some test files update scenarios")]
pub const RECORDER_V2: &[(&str, &str)] = &[
    ("scenario.yaml", "runtime: exec\nup: sh up.sh\ndown: sh down.sh\n"),
    (
        "up.sh",
        r#"echo "up $CM_IDENTITY $CM_ADDITIONAL" >> "$CM_TEST_LOG"
printf '{"connection_info":"v2-%s","flags":["FLAG{v2}"]}\n' "$CM_IDENTITY"
"#,
    ),
    ("down.sh", "echo \"down $CM_IDENTITY\" >> \"$CM_TEST_LOG\"\n"),
];

/// Scenario whose `up` starts a background process, then fails.
pub const FAILING: &[(&str, &str)] = &[
    ("scenario.yaml", "runtime: exec\nup: sh up.sh\ndown: sh down.sh\n"),
    (
        "up.sh",
        r#"sleep 300 > /dev/null 2>&1 &
echo $! > "$CM_STATE_DIR/pid"
echo "up $CM_IDENTITY pid $!" >> "$CM_TEST_LOG"
echo "cannot reach the cluster" >&2
exit 3
"#,
    ),
    (
        "down.sh",
        r#"echo "down $CM_IDENTITY" >> "$CM_TEST_LOG"
if [ -f "$CM_STATE_DIR/pid" ]; then kill "$(cat "$CM_STATE_DIR/pid")" 2>/dev/null; fi
exit 0
"#,
    ),
];

pub struct Env {
    pub registry: Registry,
    pub server: Server,
    pub http: reqwest::Client,
    pub log: tempfile::NamedTempFile,
}

impl Env {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts the environment with more variables for the server.
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let registry = Registry::start();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut server_env = vec![("CM_TEST_LOG", log.path().to_str().unwrap())];
        server_env.extend_from_slice(env);
        let server = Server::start(&server_env);
        Self { registry, server, http: reqwest::Client::new(), log }
    }

    /// Kills the server as a crash would, and starts a new one over the
    /// same data directory and log.
    #[allow(dead_code, reason = "only some test files crash the server")]
    pub fn crash_and_restart(self) -> Self {
        let Self { registry, server, http, log } = self;
        let data = server.crash();
        let server = Server::start_in(data, &[("CM_TEST_LOG", log.path().to_str().unwrap())]);
        Self { registry, server, http, log }
    }

    /// Pushes a scenario to the registry and returns its reference.
    pub async fn push(&self, name: &str, files: &[(&str, &str)]) -> String {
        let dir = scenario_dir(files);
        let work = tempfile::tempdir().unwrap();
        let scenarios = Scenarios::new(
            work.path(),
            work.path().join("cache"),
            OciSettings { insecure: true, ..Default::default() },
        );
        let reference = format!("{}/{name}:v1", self.registry.host());
        scenarios.push(dir.path(), &reference).await.expect("push the scenario");
        reference
    }

    pub fn log_lines(&self, prefix: &str) -> Vec<String> {
        std::fs::read_to_string(self.log.path())
            .unwrap()
            .lines()
            .filter(|line| line.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    pub async fn request(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, self.server.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("send the request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|err| panic!("non-JSON body {text:?}: {err}"));
        (status, body)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::DELETE, path, None).await
    }

    /// Reads a streamed listing: one `{"result": ...}` object per line.
    pub async fn stream(&self, path: &str) -> (u16, Vec<Value>) {
        let response = self.http.get(self.server.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let lines =
            text.lines().map(|line| serde_json::from_str(line).expect("each line is one JSON object")).collect();
        (status, lines)
    }

    pub async fn create_challenge(&self, id: &str, scenario: &str) {
        let (status, body) = self.post("/api/v1/challenge", json!({"id": id, "scenario": scenario})).await;
        assert_eq!(status, 200, "create challenge {id}: {body}");
    }
}
