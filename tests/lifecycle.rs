//! The instance lifecycle through a real server: expiry, renewal, updates
//! of a challenge and the hot-update strategies.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{Value, json};
use support::env::{Env, RECORDER, RECORDER_V2};

fn at(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap_or_else(|| panic!("not a timestamp: {value}"))).unwrap().into()
}

async fn challenge(env: &Env, body: Value) {
    let (status, created) = env.post("/api/v1/challenge", body).await;
    assert_eq!(status, 200, "{created}");
}

async fn instance(env: &Env, challenge_id: &str, source_id: &str) -> Value {
    let (status, created) =
        env.post("/api/v1/instance", json!({"challengeId": challenge_id, "sourceId": source_id})).await;
    assert_eq!(status, 200, "{created}");
    created
}

async fn renew(env: &Env, challenge_id: &str, source_id: &str) -> (u16, Value) {
    env.request(Method::PATCH, &format!("/api/v1/instance/{challenge_id}/{source_id}"), Some(json!({}))).await
}

async fn update(env: &Env, id: &str, body: Value) -> Value {
    let (status, updated) = env.request(Method::PATCH, &format!("/api/v1/challenge/{id}"), Some(body)).await;
    assert_eq!(status, 200, "{updated}");
    updated
}

#[tokio::test]
async fn renewal_follows_timeout_and_end() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;

    // An end only: the instance ends with the challenge, and cannot renew.
    challenge(&env, json!({"id": "until", "scenario": scenario, "until": "2099-01-01T00:00:00Z"})).await;
    let created = instance(&env, "until", "1").await;
    assert_eq!(created["until"], "2099-01-01T00:00:00Z");
    let (status, error) = renew(&env, "until", "1").await;
    assert_eq!((status, error["code"].clone()), (400, json!(9)), "{error}");

    // A timeout and a far end: the timeout rules, and renewing moves it.
    challenge(&env, json!({"id": "timeout", "scenario": scenario, "timeout": "90s", "until": "2099-01-01T00:00:00Z"}))
        .await;
    let created = instance(&env, "timeout", "1").await;
    let expected = Utc::now() + chrono::Duration::seconds(90);
    assert!((at(&created["until"]) - expected).num_seconds().abs() <= 5, "{created}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, renewed) = renew(&env, "timeout", "1").await;
    assert_eq!(status, 200, "{renewed}");
    assert!(at(&renewed["until"]) > at(&created["until"]), "{renewed}");
    assert!(at(&renewed["lastRenew"]) > at(&created["lastRenew"]), "{renewed}");

    // A huge timeout capped by a near end: exactly the end, before and after renewal.
    let end = (Utc::now() + chrono::Duration::minutes(30)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    challenge(&env, json!({"id": "capped", "scenario": scenario, "timeout": "100000000s", "until": end})).await;
    let created = instance(&env, "capped", "1").await;
    assert_eq!(created["until"], end.as_str());
    let (status, renewed) = renew(&env, "capped", "1").await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["until"], end.as_str());

    // Neither: no end, no renewal.
    challenge(&env, json!({"id": "forever", "scenario": scenario})).await;
    let created = instance(&env, "forever", "1").await;
    assert!(created.get("until").is_none(), "{created}");
    let (status, error) = renew(&env, "forever", "1").await;
    assert_eq!((status, error["code"].clone()), (400, json!(9)), "{error}");

    // An instance past its end cannot renew.
    challenge(&env, json!({"id": "short", "scenario": scenario, "timeout": "1s"})).await;
    instance(&env, "short", "1").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, error) = renew(&env, "short", "1").await;
    assert_eq!((status, error["code"].clone()), (400, json!(9)), "{error}");
}

#[tokio::test]
async fn resending_the_same_values_redeploys_nothing() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;
    challenge(&env, json!({"id": "1", "scenario": scenario, "timeout": "600s", "additional": {"a": "1"}})).await;
    let created = instance(&env, "1", "1").await;

    update(&env, "1", json!({"additional": {"a": "1"}, "updateMask": "additional"})).await;
    let body = json!({
        "scenario": scenario, "timeout": "600s", "until": null, "additional": {"a": "1"}, "min": 0, "max": 0,
        "updateMask": "timeout,until,additional,min,max,scenario", "updateStrategy": "update_in_place",
    });
    update(&env, "1", body).await;

    assert_eq!(env.log_lines("up").len(), 1, "an unchanged update ran up");
    let (_, current) = env.get("/api/v1/instance/1/1").await;
    assert_eq!(current["connectionInfo"], created["connectionInfo"]);
    assert_eq!(current["since"], created["since"]);
}

#[tokio::test]
async fn scenario_change_applies_only_when_masked() {
    let env = Env::start().await;
    let v1 = env.push("recorder", RECORDER).await;
    let v2 = env.push("recorder-v2", RECORDER_V2).await;
    challenge(&env, json!({"id": "1", "scenario": v1})).await;
    let created = instance(&env, "1", "1").await;
    let identity = created["connectionInfo"].as_str().unwrap().trim_start_matches("conn-").to_owned();

    let unmasked = update(&env, "1", json!({"scenario": v2, "updateMask": "timeout"})).await;
    assert_eq!(unmasked["scenario"], v1.as_str());
    assert_eq!(unmasked["instances"][0]["connectionInfo"], created["connectionInfo"]);

    let masked = update(&env, "1", json!({"scenario": v2, "updateMask": "scenario"})).await;
    assert_eq!(masked["scenario"], v2.as_str());
    assert_eq!(masked["instances"][0]["connectionInfo"], format!("v2-{identity}"), "updated in place, same identity");
    assert_eq!(masked["instances"][0]["flags"], json!(["FLAG{v2}"]));
    assert!(env.log_lines("down").is_empty(), "an update in place ran down");
}

#[tokio::test]
async fn blue_green_and_recreate_switch_versions() {
    let env = Env::start().await;
    let v1 = env.push("recorder", RECORDER).await;
    let v2 = env.push("recorder-v2", RECORDER_V2).await;

    for strategy in ["blue_green", "recreate"] {
        challenge(&env, json!({"id": strategy, "scenario": v1})).await;
        let mut old_identities = Vec::new();
        for source in ["1", "2"] {
            let created = instance(&env, strategy, source).await;
            old_identities.push(created["connectionInfo"].as_str().unwrap().trim_start_matches("conn-").to_owned());
        }

        let updated =
            update(&env, strategy, json!({"scenario": v2, "updateMask": "scenario", "updateStrategy": strategy})).await;
        let instances = updated["instances"].as_array().unwrap();
        assert_eq!(instances.len(), 2, "{updated}");
        for (source, old_identity) in ["1", "2"].iter().zip(&old_identities) {
            let (status, current) = env.get(&format!("/api/v1/instance/{strategy}/{source}")).await;
            assert_eq!(status, 200, "{current}");
            let connection = current["connectionInfo"].as_str().unwrap();
            assert!(connection.starts_with("v2-"), "{strategy}: {current}");
            let new_identity = connection.trim_start_matches("v2-");
            match strategy {
                "blue_green" => assert_ne!(new_identity, old_identity, "blue-green keeps the identity"),
                _ => assert_eq!(new_identity, old_identity, "recreate changes the identity"),
            }
            let downs = env.log_lines(&format!("down {old_identity}"));
            assert_eq!(downs.len(), 1, "{strategy}: the old deployment of source {source} was not destroyed once");
        }
    }
}

#[tokio::test]
async fn expiry_changes_keep_deployments() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;
    challenge(&env, json!({"id": "1", "scenario": scenario, "timeout": "600s"})).await;
    let created = instance(&env, "1", "1").await;
    let last_renew = at(&created["lastRenew"]);

    let updated = update(&env, "1", json!({"timeout": "120s", "updateMask": "timeout"})).await;
    let current = &updated["instances"][0];
    assert_eq!(
        at(&current["until"]),
        last_renew + chrono::Duration::seconds(120),
        "until = last renewal + new timeout"
    );

    let end = (Utc::now() + chrono::Duration::seconds(60)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let updated = update(&env, "1", json!({"until": end, "updateMask": "until"})).await;
    assert_eq!(updated["instances"][0]["until"], end.as_str(), "the new end caps the timeout");

    let updated = update(&env, "1", json!({"min": 1, "max": 3, "updateMask": "min,max"})).await;
    let current = &updated["instances"][0];
    for key in ["since", "connectionInfo", "flags", "until"] {
        let expected = if key == "until" { json!(end) } else { created[key].clone() };
        assert_eq!(current[key], expected, "{key} changed");
    }
    assert_eq!(env.log_lines("up").len(), 1, "an expiry change redeployed");
}

#[tokio::test]
async fn additional_values_are_merged_per_instance() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;
    challenge(&env, json!({"id": "a", "scenario": scenario, "additional": {"k": "a", "shared": "a"}})).await;
    challenge(&env, json!({"id": "b", "scenario": scenario, "additional": {"k": "b"}})).await;

    let (status, created) =
        env.post("/api/v1/instance", json!({"challengeId": "a", "sourceId": "1", "additional": {"k": "own"}})).await;
    assert_eq!(status, 200, "{created}");
    instance(&env, "b", "1").await;

    let ups = env.log_lines("up");
    assert!(ups[0].ends_with(r#"{"k":"own","shared":"a"}"#), "{}", ups[0]);
    assert!(ups[1].ends_with(r#"{"k":"b"}"#), "{}", ups[1]);
}

/// Scenario whose `up` works the first time only, and whose `down` fails
/// when `$CM_STATE_DIR/keep` exists.
const FRAGILE: &[(&str, &str)] = &[
    ("scenario.yaml", "runtime: exec\nup: sh up.sh\ndown: sh down.sh\n"),
    (
        "up.sh",
        r#"echo "up $CM_IDENTITY $CM_ADDITIONAL" >> "$CM_TEST_LOG"
case "$CM_ADDITIONAL" in *broken*) echo "the new version is broken" >&2; exit 1;; esac
printf '{"connection_info":"fragile-%s"}\n' "$CM_IDENTITY"
"#,
    ),
    (
        "down.sh",
        r#"echo "down $CM_IDENTITY" >> "$CM_TEST_LOG"
case "$CM_ADDITIONAL" in *stuck*) echo "cannot destroy" >&2; exit 1;; esac
"#,
    ),
];

#[tokio::test]
async fn expired_challenge_rejects_new_instances() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;
    challenge(&env, json!({"id": "1", "scenario": scenario, "until": "2001-01-01T00:00:00Z"})).await;

    let (status, error) = env.post("/api/v1/instance", json!({"challengeId": "1", "sourceId": "1"})).await;
    assert_eq!((status, error["code"].clone()), (400, json!(9)), "{error}");
    assert_eq!(error["details"][0]["reason"], "CHALLENGE_EXPIRED", "{error}");
    assert!(env.log_lines("up").is_empty());
}

#[tokio::test]
async fn failed_update_keeps_the_previous_version() {
    let env = Env::start().await;
    let scenario = env.push("fragile", FRAGILE).await;
    challenge(&env, json!({"id": "1", "scenario": scenario, "additional": {"v": "1"}})).await;
    let created = instance(&env, "1", "7").await;

    let (status, error) = env
        .request(
            Method::PATCH,
            "/api/v1/challenge/1",
            Some(json!({"additional": {"v": "broken"}, "updateMask": "additional"})),
        )
        .await;
    assert_eq!(status, 500, "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("sources 7"), "the error names the source: {message}");
    assert!(message.contains("the new version is broken"), "{message}");

    let (_, current) = env.get("/api/v1/instance/1/7").await;
    assert_eq!(current["connectionInfo"], created["connectionInfo"]);
    let last_up = env.log_lines("up").pop().unwrap();
    assert!(last_up.ends_with(r#"{"v":"1"}"#), "the previous version was not restored: {last_up}");
}

#[tokio::test]
async fn failed_destroy_keeps_the_challenge() {
    let env = Env::start().await;
    let scenario = env.push("fragile", FRAGILE).await;
    challenge(&env, json!({"id": "1", "scenario": scenario, "additional": {"mode": "stuck"}})).await;
    instance(&env, "1", "3").await;

    let (status, error) = env.delete("/api/v1/challenge/1").await;
    assert_eq!((status, error["code"].clone()), (500, json!(13)), "{error}");
    assert_eq!(error["details"][0]["reason"], "CHALLENGE_INSTANCES_LEFT", "{error}");
    assert!(error["message"].as_str().unwrap().contains("sources 3"), "{error}");
    let (status, kept) = env.get("/api/v1/challenge/1").await;
    assert_eq!(status, 200, "{kept}");
    assert_eq!(kept["instances"].as_array().unwrap().len(), 1, "the instance that is still deployed is listed");
}

/// First version of a scenario whose `down` fails while the file
/// `$CM_TEST_LOG.fail` exists.
const SWITCHABLE_V1: &[(&str, &str)] = &[
    ("scenario.yaml", "runtime: exec\nup: sh up.sh\ndown: sh down.sh\n"),
    (
        "up.sh",
        r#"echo "up $CM_IDENTITY" >> "$CM_TEST_LOG"
printf '{"connection_info":"conn-%s"}\n' "$CM_IDENTITY"
"#,
    ),
    ("down.sh", "echo \"down $CM_IDENTITY\" >> \"$CM_TEST_LOG\"\n[ ! -e \"$CM_TEST_LOG.fail\" ]\n"),
];

/// Second version, whose `up` waits while the file `$CM_TEST_LOG.hold`
/// exists.
const SWITCHABLE_V2: &[(&str, &str)] = &[
    ("scenario.yaml", "runtime: exec\nup: sh up.sh\ndown: sh down.sh\ntimeout: 60s\n"),
    (
        "up.sh",
        r#"echo "up $CM_IDENTITY" >> "$CM_TEST_LOG"
while [ -e "$CM_TEST_LOG.hold" ]; do sleep 0.05; done
printf '{"connection_info":"v2-%s"}\n' "$CM_IDENTITY"
"#,
    ),
    ("down.sh", "echo \"down $CM_IDENTITY\" >> \"$CM_TEST_LOG\"\n"),
];

/// Returns the path of a marker file next to the scenarios' log.
fn marker(env: &Env, suffix: &str) -> std::path::PathBuf {
    let mut path = env.log.path().as_os_str().to_owned();
    path.push(suffix);
    path.into()
}

/// Creates a challenge on [`SWITCHABLE_V1`] with one instance, and returns
/// the reference of [`SWITCHABLE_V2`] and the instance's identity.
async fn switchable_instance(env: &Env) -> (String, String) {
    let v1 = env.push("switchable", SWITCHABLE_V1).await;
    let v2 = env.push("switchable-v2", SWITCHABLE_V2).await;
    challenge(env, json!({"id": "bg", "scenario": v1})).await;
    let created = instance(env, "bg", "1").await;
    let identity = created["connectionInfo"].as_str().unwrap().trim_start_matches("conn-").to_owned();
    (v2, identity)
}

/// Lists the blue-green bookkeeping files left in the data directory.
fn replacement_files(env: &Env) -> Vec<String> {
    let mut found = Vec::new();
    for challenge in std::fs::read_dir(env.server.data_dir().join("challenges")).unwrap() {
        let Ok(files) = std::fs::read_dir(challenge.unwrap().path().join("instances")) else { continue };
        for file in files {
            let name = file.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".replace") || name.ends_with(".retire") {
                found.push(name);
            }
        }
    }
    found
}

#[tokio::test]
async fn blue_green_crash_keeps_old_version() {
    let env = Env::start().await;
    let (v2, old_identity) = switchable_instance(&env).await;

    // Update, and crash the server while the new version's `up` waits.
    let hold = marker(&env, ".hold");
    std::fs::write(&hold, "").unwrap();
    let update = tokio::spawn({
        let url = env.server.url("/api/v1/challenge/bg");
        let body = json!({"scenario": v2, "updateMask": "scenario", "updateStrategy": "blue_green"});
        async move { reqwest::Client::new().patch(url).json(&body).send().await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while env.log_lines("up").len() < 2 {
        assert!(std::time::Instant::now() < deadline, "the new version's up never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new_identity = env.log_lines("up")[1].split(' ').nth(1).unwrap().to_owned();
    let env = env.crash_and_restart();
    std::fs::remove_file(&hold).unwrap();
    assert!(update.await.unwrap().is_err(), "the client got an answer from a crashed server");

    // The restarted server destroyed the new deployment before serving.
    assert_eq!(env.log_lines("down"), vec![format!("down {new_identity}")]);
    let (status, current) = env.get("/api/v1/instance/bg/1").await;
    assert_eq!(status, 200, "{current}");
    assert_eq!(current["connectionInfo"], format!("conn-{old_identity}"), "the previous version no longer serves");
    assert!(replacement_files(&env).is_empty(), "{:?}", replacement_files(&env));
}

#[tokio::test]
async fn blue_green_old_down_retried_on_restart() {
    let env = Env::start().await;
    let (v2, old_identity) = switchable_instance(&env).await;

    let fail = marker(&env, ".fail");
    std::fs::write(&fail, "").unwrap();
    let updated =
        update(&env, "bg", json!({"scenario": v2, "updateMask": "scenario", "updateStrategy": "blue_green"})).await;
    let connection = updated["instances"][0]["connectionInfo"].as_str().unwrap().to_owned();
    assert!(connection.starts_with("v2-"), "the update did not switch versions: {updated}");
    assert_eq!(env.log_lines("down"), vec![format!("down {old_identity}")], "the old deployment's down did not run");

    // The old deployment is still named on disk, and destroyed on restart.
    std::fs::remove_file(&fail).unwrap();
    assert_eq!(replacement_files(&env).len(), 1, "nothing names the old deployment");
    let env = env.crash_and_restart();
    assert_eq!(env.log_lines("down"), vec![format!("down {old_identity}"); 2]);
    assert!(replacement_files(&env).is_empty(), "{:?}", replacement_files(&env));
    let (_, current) = env.get("/api/v1/instance/bg/1").await;
    assert_eq!(current["connectionInfo"], connection.as_str());
}
