//! `chall-manager janitor` as cron or a service would run it: against a
//! real `serve` and registry, against nothing at all, and on a local data
//! directory.

mod support;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chall_manager::scenario::{OciSettings, Scenarios};
use serde_json::{Value, json};
use support::{
    registry::{Registry, unused_address},
    server::{Server, scenario_dir},
};

const BINARY: &str = env!("CARGO_BIN_EXE_chall-manager");

/// Variables the binary reads, removed so that the caller's shell cannot
/// change a test's outcome.
const ENVIRONMENT: [&str; 10] =
    ["URL", "CHALL_MANAGER_URL", "TICKER", "DIR", "CACHE", "OCI_INSECURE", "LOG_LEVEL", "RUST_LOG", "NO_COLOR", "PORT"];

/// Scenario whose `up` and `down` append a line to `$CM_TEST_LOG`.
const RECORDER: &[(&str, &str)] = &[
    ("scenario.yaml", "runtime: exec\nup: sh up.sh\ndown: sh down.sh\ntimeout: 30s\n"),
    (
        "up.sh",
        r#"echo "up $CM_IDENTITY" >> "$CM_TEST_LOG"
printf '{"connection_info":"conn-%s","flags":["FLAG{%s}"]}\n' "$CM_IDENTITY" "$CM_IDENTITY"
"#,
    ),
    ("down.sh", "echo \"down $CM_IDENTITY\" >> \"$CM_TEST_LOG\"\n"),
];

/// Scenario whose `down` always fails, so its instances cannot be deleted.
const STUCK: &[(&str, &str)] = &[
    ("scenario.yaml", "runtime: exec\nup: sh up.sh\ndown: sh down.sh\ntimeout: 30s\n"),
    ("up.sh", "printf '{\"connection_info\":\"stuck\"}\\n'\n"),
    ("down.sh", "echo 'cluster unreachable' >&2\nexit 3\n"),
];

/// Time after which an instance of a challenge with `timeout: 1s` has
/// expired: expiry is strict, so 1 s plus a margin.
const EXPIRY_WAIT: Duration = Duration::from_millis(1500);

fn janitor(args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command.arg("janitor").args(args).stdin(Stdio::null());
    for name in ENVIRONMENT {
        command.env_remove(name);
    }
    command
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr).lines().map(str::to_owned).collect()
}

/// Runs the CLI on the data directory `dir` and fails unless it succeeds.
fn cli_local(dir: &Path, log: &Path, args: &[&str]) -> Output {
    let output = Command::new(BINARY)
        .args(args)
        .arg("--dir")
        .arg(dir)
        .env("CM_TEST_LOG", log)
        .env_remove("CHALL_MANAGER_URL")
        .stdin(Stdio::null())
        .output()
        .expect("run chall-manager");
    assert!(output.status.success(), "chall-manager {args:?} failed: {:?}", stderr_lines(&output));
    output
}

fn read_lines(path: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().filter(|line| line.starts_with(prefix)).map(str::to_owned).collect()
}

/// Pushes a scenario to the registry and returns its reference.
async fn push(registry: &Registry, name: &str, files: &[(&str, &str)]) -> String {
    let dir = scenario_dir(files);
    let work = tempfile::tempdir().unwrap();
    let scenarios =
        Scenarios::new(work.path(), work.path().join("cache"), OciSettings { insecure: true, ..Default::default() });
    let reference = format!("{}/{name}:v1", registry.host());
    scenarios.push(dir.path(), &reference).await.expect("push the scenario");
    reference
}

async fn post(server: &Server, path: &str, body: Value) -> Value {
    let response = reqwest::Client::new().post(server.url(path)).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "POST {path}: {body}");
    body
}

async fn instance_status(server: &Server, challenge_id: &str, source_id: &str) -> u16 {
    let path = format!("/api/v1/instance/{challenge_id}/{source_id}");
    reqwest::get(server.url(&path)).await.unwrap().status().as_u16()
}

async fn create_instance(server: &Server, challenge_id: &str, source_id: &str) {
    post(server, "/api/v1/instance", json!({"challengeId": challenge_id, "sourceId": source_id})).await;
}

#[tokio::test]
async fn one_shot_deletes_only_expired_instances() {
    let registry = Registry::start();
    let scenario = push(&registry, "recorder", RECORDER).await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let server = Server::start(&[("CM_TEST_LOG", log.path().to_str().unwrap())]);

    post(&server, "/api/v1/challenge", json!({"id": "short", "scenario": scenario, "timeout": "1s"})).await;
    post(&server, "/api/v1/challenge", json!({"id": "forever", "scenario": scenario})).await;
    post(&server, "/api/v1/challenge", json!({"id": "long", "scenario": scenario, "timeout": "3600s"})).await;
    for (challenge_id, source_id) in [("short", "1"), ("short", "2"), ("forever", "1"), ("long", "1")] {
        create_instance(&server, challenge_id, source_id).await;
    }
    tokio::time::sleep(EXPIRY_WAIT).await;

    let output = janitor(&["--url", &server.url("")]).output().unwrap();
    let stderr = stderr_lines(&output);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr:#?}");

    assert_eq!(instance_status(&server, "short", "1").await, 404, "expired instance still there");
    assert_eq!(instance_status(&server, "short", "2").await, 404, "expired instance still there");
    assert_eq!(instance_status(&server, "forever", "1").await, 200, "an instance without until was deleted");
    assert_eq!(instance_status(&server, "long", "1").await, 200, "an instance not expired yet was deleted");
    assert_eq!(read_lines(log.path(), "down").len(), 2, "down ran for the two expired instances only");

    let deleted = stderr.iter().filter(|line| line.contains("deleted expired instance")).count();
    assert_eq!(deleted, 2, "one log line per deletion: {stderr:#?}");
    let summary = stderr.iter().find(|line| line.contains("sweep finished")).expect("a summary line");
    assert!(summary.contains("deleted=2"), "{summary}");
    assert!(summary.contains("kept=2"), "{summary}");
}

#[tokio::test]
async fn one_shot_without_server_fails_fast() {
    let port = unused_address().port();
    let url = format!("http://127.0.0.1:{port}");

    let started = Instant::now();
    let output = janitor(&["--url", &url]).output().unwrap();
    let elapsed = started.elapsed();

    let stderr = stderr_lines(&output);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr:#?}");
    assert_eq!(stderr.len(), 1, "stderr: {stderr:#?}");
    assert!(stderr[0].starts_with("chall-manager: failed to list challenges: failed to connect to"), "{stderr:?}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

#[tokio::test]
async fn url_falls_back_to_chall_manager_url() {
    let port = unused_address().port();
    let url = format!("http://127.0.0.1:{port}");

    let output = janitor(&[]).env("CHALL_MANAGER_URL", &url).output().unwrap();
    let stderr = stderr_lines(&output);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr:#?}");
    assert!(stderr[0].contains(&url), "the janitor did not call CHALL_MANAGER_URL: {stderr:?}");
}

/// A janitor process whose stderr is collected in the background.
struct Running {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn spawn(mut command: Command) -> Self {
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start the janitor");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Self { child, log }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn logged(&self, text: &str) -> bool {
        self.log().iter().any(|line| line.contains(text))
    }

    /// Sends SIGTERM and returns the exit code, failing after 10 s.
    fn terminate(&mut self) -> Option<i32> {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("send SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "janitor still running 10 s after SIGTERM: {:#?}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn ticker_survives_a_late_server() {
    let registry = Registry::start();
    let scenario = push(&registry, "recorder", RECORDER).await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let port = unused_address().port();
    let url = format!("http://127.0.0.1:{port}");

    let mut janitor = Running::spawn(janitor(&["--url", &url, "--ticker", "1s", "--breaker-timeout", "2s"]));
    // Two failed sweeps of three tries each open the breaker (five failures).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !janitor.logged("circuit breaker opened") {
        assert!(Instant::now() < deadline, "breaker never opened: {:#?}", janitor.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(janitor.logged("sweep failed"), "{:#?}", janitor.log());

    let data = tempfile::tempdir().unwrap();
    let server = Server::start_on_port(port, data, &[("CM_TEST_LOG", log.path().to_str().unwrap())]);
    post(&server, "/api/v1/challenge", json!({"id": "short", "scenario": scenario, "timeout": "1s"})).await;
    post(&server, "/api/v1/challenge", json!({"id": "forever", "scenario": scenario})).await;
    create_instance(&server, "short", "1").await;
    create_instance(&server, "forever", "1").await;

    let deadline = Instant::now() + Duration::from_secs(20);
    while instance_status(&server, "short", "1").await != 404 {
        assert!(Instant::now() < deadline, "expired instance not deleted after 20 s: {:#?}", janitor.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(instance_status(&server, "forever", "1").await, 200, "an instance without until was deleted");
    assert!(janitor.logged("circuit breaker closed"), "{:#?}", janitor.log());

    assert_eq!(janitor.terminate(), Some(0), "{:#?}", janitor.log());
    assert!(janitor.logged("janitor stopped"), "{:#?}", janitor.log());
}

#[tokio::test]
async fn local_one_shot_deletes_expired_instance() {
    let data = tempfile::tempdir().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let scenario = scenario_dir(RECORDER);
    let scenario = scenario.path().to_str().unwrap();

    cli_local(data.path(), log.path(), &["challenge", "create", "short", "--scenario", scenario, "--timeout", "1s"]);
    cli_local(data.path(), log.path(), &["challenge", "create", "forever", "--scenario", scenario]);
    cli_local(data.path(), log.path(), &["instance", "up", "short", "1"]);
    cli_local(data.path(), log.path(), &["instance", "up", "forever", "1"]);
    std::thread::sleep(EXPIRY_WAIT);

    let output = janitor(&["--dir", data.path().to_str().unwrap()]).env("CM_TEST_LOG", log.path()).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "stderr: {:#?}", stderr_lines(&output));

    let listed = cli_local(data.path(), log.path(), &["instance", "list", "1", "--output", "json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let challenges: Vec<&str> = listed.as_array().unwrap().iter().map(|i| i["challengeId"].as_str().unwrap()).collect();
    assert_eq!(challenges, ["forever"], "only the instance without until is left");
    assert_eq!(read_lines(log.path(), "down").len(), 1, "down ran once, for the expired instance");
}

#[tokio::test]
async fn one_shot_with_a_failed_deletion_exits_1() {
    let data = tempfile::tempdir().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let recorder = scenario_dir(RECORDER);
    let stuck = scenario_dir(STUCK);

    let create = |id: &str, dir: &Path| {
        let scenario = dir.to_str().unwrap();
        cli_local(data.path(), log.path(), &["challenge", "create", id, "--scenario", scenario, "--timeout", "1s"]);
        cli_local(data.path(), log.path(), &["instance", "up", id, "1"]);
    };
    create("stuck", stuck.path());
    create("short", recorder.path());
    std::thread::sleep(EXPIRY_WAIT);

    let output = janitor(&["--dir", data.path().to_str().unwrap(), "--log-level", "off"])
        .env("CM_TEST_LOG", log.path())
        .output()
        .unwrap();
    let stderr = stderr_lines(&output);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr:#?}");
    assert_eq!(stderr.len(), 1, "one error line: {stderr:#?}");
    assert!(stderr[0].starts_with("chall-manager: sweep incomplete: 1 deletion(s) failed"), "{stderr:?}");
    assert!(stderr[0].contains(r#"challenge "stuck""#), "{stderr:?}");

    let listed = cli_local(data.path(), log.path(), &["instance", "list", "1", "--output", "json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let challenges: Vec<&str> = listed.as_array().unwrap().iter().map(|i| i["challengeId"].as_str().unwrap()).collect();
    assert_eq!(challenges, ["stuck"], "the failure did not stop the other deletion");
}
