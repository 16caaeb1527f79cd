//! End to end: a real `serve`, a real registry, exec scenarios, REST and
//! gRPC clients.

mod support;

use std::{collections::HashMap, time::Duration};

use chall_manager::proto::{challenge as pc, instance as pi};
use serde_json::{Value, json};
use support::{
    env::{Env, FAILING, RECORDER},
    registry::Registry,
    server::{Server, process_alive},
};

fn parse_utc(text: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(text).is_ok()
}

#[tokio::test]
async fn instance_lifecycle_over_rest() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;

    let (status, challenge) = env
        .post(
            "/api/v1/challenge",
            json!({"id": "1", "scenario": scenario, "timeout": "600s", "until": "2099-01-01T00:00:00.000Z", "additional": {"level": "easy"}}),
        )
        .await;
    assert_eq!(status, 200, "{challenge}");
    assert_eq!(challenge["timeout"], "600s");
    assert_eq!(challenge["until"], "2099-01-01T00:00:00Z", "a zero fraction is not printed");
    assert_eq!(challenge["min"], "0", "int64 is a JSON string");
    assert_eq!(challenge["instances"], json!([]));

    // snake_case input is accepted like lowerCamelCase.
    let (status, instance) = env.post("/api/v1/instance", json!({"challenge_id": "1", "source_id": "0"})).await;
    assert_eq!(status, 200, "{instance}");
    assert_eq!(instance["challengeId"], "1");
    assert_eq!(instance["sourceId"], "0", "source 0 is an ordinary source");
    let connection = instance["connectionInfo"].as_str().unwrap();
    assert!(connection.starts_with("conn-"), "{instance}");
    let identity = connection.trim_start_matches("conn-");
    assert_eq!(identity.len(), 16);
    assert_eq!(instance["flags"], json!([format!("FLAG{{{identity}}}")]));
    assert_eq!(instance["flag"], instance["flags"][0], "the legacy flag is set when there is one flag");
    for key in ["since", "lastRenew", "until"] {
        let text = instance[key].as_str().unwrap_or_else(|| panic!("{key} missing: {instance}"));
        assert!(text.ends_with('Z'), "{key} = {text}");
        assert!(parse_utc(text), "{key} = {text} is not RFC 3339");
    }
    assert!(
        env.log_lines("up").iter().any(|line| line.contains(r#""level":"easy""#)),
        "the scenario got the challenge additional"
    );

    let (status, fetched) = env.get("/api/v1/instance/1/0").await;
    assert_eq!(status, 200);
    assert_eq!(fetched["connectionInfo"], instance["connectionInfo"]);

    // Ids from the path win over the body.
    let (status, renewed) = env
        .request(reqwest::Method::PATCH, "/api/v1/instance/1/0", Some(json!({"challengeId": "other", "sourceId": "9"})))
        .await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["sourceId"], "0");

    let (status, lines) = env.stream("/api/v1/instance?sourceId=0").await;
    assert_eq!(status, 200);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["result"]["challengeId"], "1");

    let (status, body) = env.delete("/api/v1/instance/1/0").await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(env.log_lines("down").len(), 1);
    let (status, _) = env.get("/api/v1/instance/1/0").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn rest_json_mapping_details() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;

    // Explicit nulls and fields the message lacks are accepted.
    let (status, challenge) = env
        .post(
            "/api/v1/challenge",
            json!({"id": "7", "scenario": scenario, "timeout": null, "until": null, "additional": null, "updateStrategy": "blue_green", "min": 0, "max": "0"}),
        )
        .await;
    assert_eq!(status, 200, "{challenge}");
    assert_eq!(challenge["timeout"], Value::Null, "unset timeout is null");
    assert_eq!(challenge["until"], Value::Null, "unset until is null");

    let (status, instance) =
        env.post("/api/v1/instance", json!({"challengeId": "7", "sourceId": "3", "unknown": 1})).await;
    assert_eq!(status, 200, "{instance}");
    assert!(instance.get("until").is_none(), "unset instance until is omitted: {instance}");
    assert!(instance["since"].as_str().unwrap().ends_with('Z'));

    // Streams: one compact object per line.
    let response = env.http.get(env.server.url("/api/v1/challenge")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.unwrap();
    assert!(text.ends_with('\n'));
    for line in text.lines() {
        assert!(line.starts_with(r#"{"result":{"#), "{line}");
        assert!(!line.contains(": "), "lines are compact: {line}");
    }

    // An unknown enum value is rejected before anything runs.
    let (status, error) = env
        .request(
            reqwest::Method::PATCH,
            "/api/v1/challenge/7",
            Some(json!({"updateStrategy": "sideways", "updateMask": "timeout", "timeout": "60s"})),
        )
        .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["code"], 3);
    let (_, unchanged) = env.get("/api/v1/challenge/7").await;
    assert_eq!(unchanged["timeout"], Value::Null, "a rejected update changed the challenge");

    // An update mask in lowerCamelCase applies only the named fields.
    let (status, updated) = env
        .request(
            reqwest::Method::PATCH,
            "/api/v1/challenge/7",
            Some(json!({"updateMask": "timeout", "timeout": "90s", "until": "2099-01-01T00:00:00Z", "updateStrategy": "recreate"})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["timeout"], "90s");
    assert_eq!(updated["until"], Value::Null, "until was not in the mask");

    // Errors: code, message and details, with the HTTP status of the code.
    let (status, error) = env.get("/api/v1/challenge/missing").await;
    assert_eq!(status, 404);
    assert_eq!(error["code"], 5);
    assert!(error["message"].is_string());
    assert!(error["details"].is_array());

    let (status, health) = env.get("/healthcheck").await;
    assert_eq!(status, 200, "{health}");
}

#[tokio::test]
async fn stream_reports_a_failure_as_an_error_line() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;
    env.create_challenge("1", &scenario).await;

    // Corrupt the only challenge record: the listing fails before any item.
    let challenges = env.server.data_dir().join("challenges");
    let dir = std::fs::read_dir(&challenges).unwrap().next().unwrap().unwrap().path();
    std::fs::write(dir.join("challenge.json"), "{not json").unwrap();

    let response = env.http.get(env.server.url("/api/v1/challenge")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 500);
    let text = response.text().await.unwrap();
    let line: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(line["error"]["code"], 13, "{text}");
}

#[tokio::test]
async fn parallel_creates_deploy_once() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;
    env.create_challenge("1", &scenario).await;

    let creates = (0..20).map(|_| env.post("/api/v1/instance", json!({"challengeId": "1", "sourceId": "42"})));
    let results = futures::future::join_all(creates).await;

    let ok = results.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!(ok, 1, "{results:?}");
    for (status, body) in results.iter().filter(|(status, _)| *status != 200) {
        assert_eq!(*status, 409, "{body}");
        assert!(body["message"].as_str().unwrap().contains("already exist"), "{body}");
    }
    assert_eq!(env.log_lines("up").len(), 1, "one deployment exists");
}

#[tokio::test]
async fn failing_up_leaves_nothing_behind() {
    let env = Env::start().await;
    let scenario = env.push("failing", FAILING).await;
    env.create_challenge("1", &scenario).await;

    let (status, error) = env.post("/api/v1/instance", json!({"challengeId": "1", "sourceId": "1"})).await;
    assert_eq!(status, 500, "{error}");
    assert_eq!(error["code"], 2);
    assert!(
        error["message"].as_str().unwrap().contains("cannot reach the cluster"),
        "the stderr tail is reported: {error}"
    );

    let (status, _) = env.get("/api/v1/instance/1/1").await;
    assert_eq!(status, 404);
    let (status, lines) = env.stream("/api/v1/instance?sourceId=1").await;
    assert_eq!((status, lines.len()), (200, 0));
    let (_, challenge) = env.get("/api/v1/challenge/1").await;
    assert_eq!(challenge["instances"], json!([]));

    let up = env.log_lines("up");
    let pid: u32 = up[0].rsplit(' ').next().unwrap().parse().unwrap();
    assert!(!process_alive(pid), "the background process of the failed up is still running");
    assert_eq!(env.log_lines("down").len(), 1, "down ran once to clean up");
    let states = std::fs::read_dir(env.server.data_dir().join("challenges"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("state");
    let left = std::fs::read_dir(&states).map(|entries| entries.count()).unwrap_or(0);
    assert_eq!(left, 0, "a state directory was left behind");

    let (status, _) = env.post("/api/v1/instance", json!({"challengeId": "1", "sourceId": "1"})).await;
    assert_eq!(status, 500);
    assert_eq!(env.log_lines("up").len(), 2, "a retry runs up again");
}

#[tokio::test]
async fn deleting_a_challenge_stops_its_instances() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;
    env.create_challenge("1", &scenario).await;
    env.create_challenge("2", &scenario).await;
    for (challenge, source) in [("1", "1"), ("1", "2"), ("2", "1")] {
        let (status, body) = env.post("/api/v1/instance", json!({"challengeId": challenge, "sourceId": source})).await;
        assert_eq!(status, 200, "{body}");
    }

    let (status, body) = env.delete("/api/v1/challenge/1").await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(env.log_lines("down").len(), 2, "both instances of challenge 1 were destroyed");

    let (_, lines) = env.stream("/api/v1/instance?sourceId=1").await;
    let challenges: Vec<_> = lines.iter().map(|line| line["result"]["challengeId"].clone()).collect();
    assert_eq!(challenges, vec![json!("2")]);
    let (status, _) = env.get("/api/v1/instance/1/1").await;
    assert_eq!(status, 404);
    let (status, error) = env.post("/api/v1/instance", json!({"challengeId": "1", "sourceId": "3"})).await;
    assert_eq!(status, 404, "{error}");
}

#[tokio::test]
async fn creating_a_challenge_twice_conflicts_until_deleted() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;
    env.create_challenge("1", &scenario).await;

    let (status, error) = env.post("/api/v1/challenge", json!({"id": "1", "scenario": scenario})).await;
    assert_eq!(status, 409, "{error}");
    assert!(error["message"].as_str().unwrap().contains("already exist"));

    let (status, _) = env.delete("/api/v1/challenge/1").await;
    assert_eq!(status, 200);
    let (status, body) = env.post("/api/v1/challenge", json!({"id": "1", "scenario": scenario})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn missing_instance_reads_release_their_locks() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;
    env.create_challenge("1", &scenario).await;

    let paths: Vec<String> = (0..200).map(|source| format!("/api/v1/instance/1/{source}")).collect();
    let reads = paths.iter().map(|path| env.get(path));
    for (status, body) in futures::future::join_all(reads).await {
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["code"], 5);
    }

    let started = std::time::Instant::now();
    let (status, _) = env.delete("/api/v1/challenge/1").await;
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(1), "delete waited {:?}: a lock was left held", started.elapsed());
}

#[tokio::test]
async fn escaping_scenario_is_rejected_at_creation() {
    let env = Env::start().await;
    let files = [
        (Some("scenario.yaml"), b"runtime: exec\nup: echo\ndown: echo\n".as_slice()),
        (Some("../x"), b"payload".as_slice()),
        (Some("/etc/chall-manager-e2e-x"), b"payload".as_slice()),
    ];
    env.registry.push_by_hand("escape", "v1", &files).await;
    let reference = env.registry.reference("escape:v1");

    let (status, error) = env.post("/api/v1/challenge", json!({"id": "1", "scenario": reference})).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["code"], 3);
    let (status, _) = env.get("/api/v1/challenge/1").await;
    assert_eq!(status, 404, "a rejected challenge was stored");
    assert!(!env.server.data_dir().parent().unwrap().join("x").exists());
    assert!(!std::path::Path::new("/etc/chall-manager-e2e-x").exists());
}

#[tokio::test]
async fn scenario_without_known_layout_is_rejected() {
    let env = Env::start().await;
    let scenario = env.push("empty", &[("README.md", "nothing to run\n")]).await;

    let (status, error) = env.post("/api/v1/challenge", json!({"id": "1", "scenario": scenario})).await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["code"], 3);
    assert_eq!(
        error["details"][0]["metadata"]["reference"],
        scenario.as_str(),
        "the error names the scenario: {error}"
    );
}

#[tokio::test]
async fn pulumi_scenario_is_rejected_at_creation() {
    let env = Env::start().await;
    let scenario =
        env.push("pulumi", &[("Pulumi.yaml", "name: web\nruntime: go\n"), ("main.go", "package main\n")]).await;

    let (status, error) = env.post("/api/v1/challenge", json!({"id": "1", "scenario": scenario})).await;
    assert_eq!(status, 400, "{error}");
    let violation = &error["details"][3]["fieldViolations"][0];
    assert_eq!(violation["reason"], "VALIDATION", "{error}");
    assert!(violation["description"].as_str().unwrap().contains("not supported yet"), "{error}");
    let (status, _) = env.get("/api/v1/challenge/1").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_lifecycle_over_grpc() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;
    let endpoint = format!("http://{}", env.server.addr);
    let mut challenges = pc::challenge_store_client::ChallengeStoreClient::connect(endpoint.clone()).await.unwrap();
    let mut instances = pi::instance_manager_client::InstanceManagerClient::connect(endpoint).await.unwrap();

    let created = challenges
        .create_challenge(pc::CreateChallengeRequest {
            id: "g".into(),
            scenario: scenario.clone(),
            timeout: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.scenario, scenario);

    let additional = HashMap::from([("color".to_owned(), "blue".to_owned())]);
    let instance = instances
        .create_instance(pi::CreateInstanceRequest { challenge_id: "g".into(), source_id: "5".into(), additional })
        .await
        .unwrap()
        .into_inner();
    assert!(instance.connection_info.starts_with("conn-"));
    assert!(instance.until.is_some());
    assert!(env.log_lines("up").iter().any(|line| line.contains(r#""color":"blue""#)));

    let again = instances
        .create_instance(pi::CreateInstanceRequest {
            challenge_id: "g".into(),
            source_id: "5".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists);

    let mut stream =
        instances.query_instance(pi::QueryInstanceRequest { source_id: "5".into() }).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().expect("one instance");
    assert_eq!(first.challenge_id, "g");
    assert!(stream.message().await.unwrap().is_none());

    let mut listing = challenges.query_challenge(()).await.unwrap().into_inner();
    let listed = listing.message().await.unwrap().expect("one challenge");
    assert_eq!(listed.instances.len(), 1);

    instances
        .delete_instance(pi::DeleteInstanceRequest { challenge_id: "g".into(), source_id: "5".into() })
        .await
        .unwrap();
    let missing = instances
        .retrieve_instance(pi::RetrieveInstanceRequest { challenge_id: "g".into(), source_id: "5".into() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    challenges.delete_challenge(pc::DeleteChallengeRequest { id: "g".into() }).await.unwrap();
}

/// Runs the CLI binary and returns its stdout, failing on a non-zero exit.
fn cli(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chall-manager"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run chall-manager");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "chall-manager {args:?} failed: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

/// Connects to an instance of the example, answers its addition and
/// returns what it sends back.
fn play_example(connection_info: &str) -> String {
    use std::io::{BufRead, BufReader, Write};

    let port = connection_info.strip_prefix("nc 127.0.0.1 ").expect("connection info is `nc 127.0.0.1 PORT`");
    let stream = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).expect("connect to the instance");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut question = String::new();
    reader.read_line(&mut question).unwrap();

    // "What is A + B?"
    let numbers: Vec<u64> = question
        .trim()
        .trim_start_matches("What is ")
        .trim_end_matches('?')
        .split(" + ")
        .map(|n| n.parse().unwrap())
        .collect();
    writeln!(&stream, "{}", numbers[0] + numbers[1]).unwrap();
    let mut answer = String::new();
    reader.read_line(&mut answer).unwrap();
    answer.trim().to_owned()
}

fn instance_up_json(args: &[&str]) -> Value {
    serde_json::from_str(&cli(args)).expect("instance up --output json prints JSON")
}

#[tokio::test]
async fn quickstart_with_the_example() {
    let env = Env::start().await;
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/exec-tcp-addition");
    let reference = format!("{}/examples/exec-tcp-addition:v1", env.registry.host());
    let url = env.server.url("");

    let pinned = cli(&["challenge", "push", example, &reference, "--oci-insecure"]);
    assert!(pinned.trim().starts_with(&format!("{reference}@sha256:")), "{pinned}");
    cli(&["challenge", "create", "addition", "--scenario", &reference, "--timeout", "1h", "--url", &url]);

    let first = instance_up_json(&["instance", "up", "addition", "1", "--url", &url, "--output", "json"]);
    let second = instance_up_json(&["instance", "up", "addition", "2", "--url", &url, "--output", "json"]);
    let connection = first["connectionInfo"].as_str().unwrap();
    assert_eq!(
        play_example(connection),
        first["flags"][0].as_str().unwrap(),
        "the service hands out the instance's flag"
    );
    assert_ne!(first["flags"][0], second["flags"][0], "two teams get different flags");

    // The flag is a variant of the example's base flag, from `flag variate`.
    let flag = first["flags"][0].as_str().unwrap();
    let inner = flag.strip_prefix("CTF{").and_then(|rest| rest.strip_suffix('}')).expect("CTF{...}");
    let unleet: String = inner
        .to_lowercase()
        .chars()
        .map(|c| match c {
            '4' => 'a',
            '8' => 'b',
            '3' => 'e',
            '1' => 'i',
            '0' => 'o',
            '5' => 's',
            '7' => 't',
            other => other,
        })
        .collect();
    assert_eq!(unleet, "sums_are_easy_to_brute_force", "{flag}");

    // Errors from the server name the ids they are about.
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_chall-manager"))
        .args(["instance", "get", "addition", "9", "--url", &url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Instance not found."), "{stderr}");
    assert!(stderr.contains(r#"source_id "9""#), "{stderr}");

    cli(&["instance", "down", "addition", "1", "--url", &url]);
    cli(&["instance", "down", "addition", "2", "--url", &url]);
    let port = connection.rsplit(' ').next().unwrap();
    assert!(std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_err(), "the service still listens after down");
}

#[tokio::test]
async fn local_directory_scenario_without_registry() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/exec-tcp-addition");
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();

    cli(&["challenge", "create", "addition", "--scenario", example, "--dir", dir]);
    let instance = instance_up_json(&["instance", "up", "addition", "1", "--dir", dir, "--output", "json"]);
    assert_eq!(play_example(instance["connectionInfo"].as_str().unwrap()), instance["flags"][0].as_str().unwrap());

    // A server over the same data directory serves the packed challenge.
    let server = Server::start_in(data, &[]);
    let listed = reqwest::get(server.url("/api/v1/instance?sourceId=1")).await.unwrap().text().await.unwrap();
    assert!(listed.contains(r#""challengeId":"addition""#), "{listed}");
    let response = reqwest::Client::new().delete(server.url("/api/v1/instance/addition/1")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn crash_during_up_is_finished_on_restart() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = Registry::start();
    let log = tempfile::NamedTempFile::new().unwrap();
    let log_path = log.path().to_str().unwrap();
    let server = Server::start(&[("CM_TEST_LOG", log_path), ("CM_TEST_SLEEP", "30")]);
    let env = Env { registry, server, http: reqwest::Client::new(), log };
    let scenario = env.push("recorder", RECORDER).await;
    env.create_challenge("1", &scenario).await;

    // Start a deployment, and crash the server while `up` sleeps.
    let create = tokio::spawn({
        let url = env.server.url("/api/v1/instance");
        async move { reqwest::Client::new().post(url).json(&json!({"challengeId": "1", "sourceId": "1"})).send().await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while env.log_lines("up").is_empty() {
        assert!(std::time::Instant::now() < deadline, "up never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let identity = env.log_lines("up")[0].split(' ').nth(1).unwrap().to_owned();
    // A crash in the middle of `up`, not in the first moments: the intent
    // is flushed while `up` starts (see docs/storage.md).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let env = env.crash_and_restart();
    assert!(create.await.unwrap().is_err(), "the client got an answer from a crashed server");

    // The restarted server ran `up` again for the same identity and recorded
    // the instance before serving: the client may retry and find it.
    let ups: Vec<String> = env.log_lines("up").iter().map(|line| line.split(' ').nth(1).unwrap().to_owned()).collect();
    assert_eq!(ups, vec![identity.clone(), identity.clone()], "up ran again for the interrupted identity");
    assert!(env.log_lines("down").is_empty(), "the interrupted deployment was destroyed");
    let (status, instance) = env.get("/api/v1/instance/1/1").await;
    assert_eq!(status, 200, "{instance}");
    assert_eq!(instance["connectionInfo"], format!("conn-{identity}"));
    let (status, _) = env.post("/api/v1/instance", json!({"challengeId": "1", "sourceId": "1"})).await;
    assert_eq!(status, 409);
}
