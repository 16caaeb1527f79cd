//! The pool through a real server: pre-deployed instances, claims, refills
//! after deletions, resizing on update, recovery after a crash.

mod support;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::{Value, json};
use support::{
    env::{Env, RECORDER, RECORDER_V2},
    server::Server,
};

/// Polls `done` every 50 ms until it returns true, and fails with the
/// message of `failure` after `timeout`.
async fn wait_until<F: Future<Output = bool>>(
    timeout: Duration,
    failure: impl Fn() -> String,
    mut done: impl FnMut() -> F,
) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "{}", failure());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the challenge reports `expected` ready pooled instances.
async fn wait_pooled(env: &Env, challenge_id: &str, expected: usize) {
    let failure = || format!("the pool of {challenge_id} did not reach {expected}");
    wait_until(Duration::from_secs(30), failure, || async { pooled(env, challenge_id).await == expected }).await;
}

/// Waits until `expected` deployments are alive.
async fn wait_alive(env: &Env, expected: usize) {
    let failure = || format!("{} deployments alive, expected {expected}: {:?}", alive(env).len(), alive(env));
    wait_until(Duration::from_secs(10), failure, || async { alive(env).len() == expected }).await;
}

/// Waits until a line of the server's log contains `text`.
async fn wait_logged(env: &Env, text: &str, timeout: Duration) {
    let failure = || format!("no log line with {text:?}: {:?}", env.server.log());
    wait_until(timeout, failure, || async { env.server.log().iter().any(|line| line.contains(text)) }).await;
}

/// Creates a challenge `id` with `min = 1` from [`FLAKY`], whose pooled
/// deployments fail until the returned file is removed.
async fn failing_pool(env: &Env, id: &str) -> String {
    let fail = format!("{}.fail", env.log.path().display());
    std::fs::write(&fail, "").unwrap();
    let scenario = env.push("flaky", FLAKY).await;
    let body = json!({"id": id, "scenario": scenario, "min": 1});
    assert_eq!(env.post("/api/v1/challenge", body).await.0, 200);
    fail
}

/// Reads the pooled count from the RetrieveChallenge response header.
async fn pooled(env: &Env, challenge_id: &str) -> usize {
    let response = env.http.get(env.server.url(&format!("/api/v1/challenge/{challenge_id}"))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let header = response.headers().get("grpc-metadata-chall-manager-pooled").expect("a pooled count header");
    header.to_str().unwrap().parse().unwrap()
}

/// Identities deployed and not destroyed, from the scenario's log.
fn alive(env: &Env) -> BTreeSet<String> {
    let mut alive = BTreeSet::new();
    for line in env.log_lines("") {
        let mut words = line.split(' ');
        match (words.next(), words.next()) {
            (Some("up"), Some(identity)) => alive.insert(identity.to_owned()),
            (Some("down"), Some(identity)) => alive.remove(identity),
            _ => false,
        };
    }
    alive
}

/// Identities whose `up` ran, in order.
fn ups(env: &Env) -> Vec<String> {
    env.log_lines("up ").iter().map(|line| line.split(' ').nth(1).unwrap().to_owned()).collect()
}

async fn claim(env: &Env, challenge_id: &str, source_id: &str) -> Value {
    let (status, body) =
        env.post("/api/v1/instance", json!({"challengeId": challenge_id, "sourceId": source_id})).await;
    assert_eq!(status, 200, "claim for {source_id}: {body}");
    body
}

/// Returns the identity behind an instance, from the connection info that
/// the recorder scenario derives from it.
fn identity(instance: &Value) -> String {
    instance["connectionInfo"].as_str().unwrap().strip_prefix("conn-").unwrap().to_owned()
}

async fn create_pooled_challenge(env: &Env, id: &str, min: i64, max: i64) {
    let scenario = env.push("recorder", RECORDER).await;
    let body = json!({"id": id, "scenario": scenario, "timeout": "600s", "min": min, "max": max});
    let (status, created) = env.post("/api/v1/challenge", body).await;
    assert_eq!(status, 200, "{created}");
}

#[tokio::test]
async fn pool_refills_after_claims_and_deletions() {
    let env = Env::start().await;
    create_pooled_challenge(&env, "web", 1, 2).await;
    wait_pooled(&env, "web", 1).await;
    let first_pooled = ups(&env);
    assert_eq!(first_pooled.len(), 1, "one pooled deployment for min=1");

    // Source 1 gets the pooled instance; the pool refills (1 claimed + 1
    // pooled is within max=2).
    let one = claim(&env, "web", "1").await;
    assert_eq!(identity(&one), first_pooled[0], "source 1 was not served from the pool");
    wait_pooled(&env, "web", 1).await;
    let second_pooled = ups(&env)[1].clone();

    // Source 2 takes the refill; with 2 claimed, max=2 leaves no room for
    // a pool, so source 3 gets a deployment of its own.
    let two = claim(&env, "web", "2").await;
    assert_eq!(identity(&two), second_pooled);
    let three = claim(&env, "web", "3").await;
    assert_eq!(ups(&env).len(), 3, "source 3 was deployed on demand");
    assert_eq!(identity(&three), ups(&env)[2]);
    assert_eq!(pooled(&env, "web").await, 0);

    // Deleting 2 and 3 leaves 1 claimed: the pool is back to one, which
    // serves source 4.
    for source in ["2", "3"] {
        let (status, body) = env.delete(&format!("/api/v1/instance/web/{source}")).await;
        assert_eq!(status, 200, "{body}");
    }
    wait_pooled(&env, "web", 1).await;
    let refill = ups(&env).last().unwrap().clone();
    let four = claim(&env, "web", "4").await;
    assert_eq!(identity(&four), refill, "source 4 was not served from the pool");

    // Claimed instances start their life at the claim.
    let since = chrono::DateTime::parse_from_rfc3339(four["since"].as_str().unwrap()).unwrap();
    assert!(chrono::Utc::now().signed_duration_since(since) < chrono::Duration::seconds(10), "{four}");
    assert!(four["until"].is_string(), "a claimed instance gets the challenge's timeout: {four}");
}

#[tokio::test]
async fn pooled_hidden_from_listings_and_janitor() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;
    let body = json!({"id": "short", "scenario": scenario, "timeout": "1s", "min": 2});
    assert_eq!(env.post("/api/v1/challenge", body).await.0, 200);
    wait_pooled(&env, "short", 2).await;

    let (_, challenge) = env.get("/api/v1/challenge/short").await;
    assert_eq!(challenge["instances"], json!([]), "pooled instances were listed");
    let (_, lines) = env.stream("/api/v1/challenge").await;
    assert_eq!(lines[0]["result"]["instances"], json!([]));

    // Pooled instances have no end, so the janitor leaves them.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let janitor = std::process::Command::new(env!("CARGO_BIN_EXE_chall-manager"))
        .args(["janitor", "--url", &env.server.url("")])
        .output()
        .unwrap();
    assert!(janitor.status.success(), "{}", String::from_utf8_lossy(&janitor.stderr));
    assert!(env.log_lines("down").is_empty(), "the janitor destroyed a pooled instance");
    assert_eq!(pooled(&env, "short").await, 2);
}

#[tokio::test]
async fn parallel_claims_get_distinct_instances() {
    let env = Env::start().await;
    create_pooled_challenge(&env, "rush", 3, 0).await;
    wait_pooled(&env, "rush", 3).await;
    let pooled_before: BTreeSet<String> = ups(&env).into_iter().collect();

    let sources: Vec<String> = (0..16).map(|n| format!("team-{n}")).collect();
    let claims = sources.iter().map(|source| claim(&env, "rush", source));
    let instances = futures::future::join_all(claims).await;

    let identities: BTreeSet<String> = instances.iter().map(identity).collect();
    assert_eq!(identities.len(), sources.len(), "two sources got the same instance");
    assert!(
        pooled_before.iter().all(|pooled| identities.contains(pooled)),
        "the pooled instances were not all claimed"
    );

    // Once the pool is back to 3, every deployment is either listed by the
    // API or pooled: nothing was deployed twice or left behind.
    wait_pooled(&env, "rush", 3).await;
    let (_, challenge) = env.get("/api/v1/challenge/rush").await;
    let listed = challenge["instances"].as_array().unwrap().len();
    assert_eq!(listed, sources.len());
    wait_alive(&env, listed + 3).await;
}

#[tokio::test]
async fn updates_resize_the_pool_by_the_delta_rule() {
    let env = Env::start().await;
    create_pooled_challenge(&env, "size", 0, 0).await;
    let claimed = claim(&env, "size", "1").await;

    // (min, max) → pooled, with one claimed instance: min when max is 0,
    // else min(min, max - claimed).
    for (min, max, expected) in [(3, 0, 3), (3, 3, 2), (2, 2, 1), (1, 0, 1), (0, 0, 0)] {
        let body = json!({"updateMask": "min,max", "min": min, "max": max});
        let (status, updated) = env.request(Method::PATCH, "/api/v1/challenge/size", Some(body)).await;
        assert_eq!(status, 200, "{updated}");
        wait_pooled(&env, "size", expected).await;
        wait_alive(&env, 1 + expected).await;
    }

    // The claimed instance never moved.
    let (_, now) = env.get("/api/v1/instance/size/1").await;
    for field in ["since", "connectionInfo", "flags", "lastRenew"] {
        assert_eq!(now[field], claimed[field], "{field} changed");
    }
    assert!(alive(&env).contains(&identity(&claimed)));
}

#[tokio::test]
async fn bounds_beyond_the_stored_values_are_rejected() {
    let env = Env::start().await;
    create_pooled_challenge(&env, "bounds", 2, 4).await;

    // Only max is sent, below the stored min.
    let body = json!({"updateMask": "max", "max": 1});
    let (status, error) = env.request(Method::PATCH, "/api/v1/challenge/bounds", Some(body)).await;
    assert_eq!(status, 400, "{error}");
    let (_, challenge) = env.get("/api/v1/challenge/bounds").await;
    assert_eq!(challenge["max"], "4", "a rejected update changed the challenge");
}

#[tokio::test]
async fn claim_with_additional_updates_the_instance_first() {
    let env = Env::start().await;
    create_pooled_challenge(&env, "extra", 1, 0).await;
    wait_pooled(&env, "extra", 1).await;
    let pooled = ups(&env)[0].clone();

    let body = json!({"challengeId": "extra", "sourceId": "1", "additional": {"color": "blue"}});
    let (status, instance) = env.post("/api/v1/instance", body).await;
    assert_eq!(status, 200, "{instance}");
    assert_eq!(identity(&instance), pooled);
    assert_eq!(instance["additional"], json!({"color": "blue"}));
    let updated = env.log_lines(&format!("up {pooled} "));
    assert_eq!(updated.len(), 2, "the pooled instance did not run up again: {updated:?}");
    assert!(updated[1].contains(r#""color":"blue""#), "{updated:?}");
}

#[tokio::test]
async fn deleting_the_challenge_destroys_the_pool() {
    let env = Env::start().await;
    create_pooled_challenge(&env, "gone", 2, 0).await;
    wait_pooled(&env, "gone", 2).await;
    claim(&env, "gone", "1").await;
    wait_pooled(&env, "gone", 2).await;
    assert_eq!(alive(&env).len(), 3);

    let (status, body) = env.delete("/api/v1/challenge/gone").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(alive(&env), BTreeSet::new(), "deployments outlived their challenge");
}

#[tokio::test]
async fn restart_during_a_fill_ends_at_the_target() {
    let env = Env::start_with(&[("CM_TEST_SLEEP", "30")]).await;
    create_pooled_challenge(&env, "slow", 2, 0).await;

    // Both pooled deployments are in `up` when the server dies.
    let failure = || "the pool never started filling".to_owned();
    wait_until(Duration::from_secs(10), failure, || async { ups(&env).len() >= 2 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let interrupted = alive(&env);
    let Env { registry, server, http, log } = env;
    let data = server.crash();

    // The restarted server destroys the interrupted deployments and fills
    // the pool again.
    let server = Server::start_in(data, &[("CM_TEST_LOG", log.path().to_str().unwrap())]);
    let env = Env { registry, server, http, log };
    wait_pooled(&env, "slow", 2).await;
    let now = alive(&env);
    assert_eq!(now.len(), 2, "deployments after the restart: {now:?}");
    assert!(now.is_disjoint(&interrupted), "an interrupted deployment was kept: {now:?}");
}

#[tokio::test]
async fn challenge_get_shows_pool_counts() {
    let env = Env::start().await;
    create_pooled_challenge(&env, "shown", 2, 0).await;
    wait_pooled(&env, "shown", 2).await;
    claim(&env, "shown", "1").await;
    wait_pooled(&env, "shown", 2).await;

    let remote = std::process::Command::new(env!("CARGO_BIN_EXE_chall-manager"))
        .args(["challenge", "get", "shown", "--url", &env.server.url("")])
        .output()
        .unwrap();
    let local = std::process::Command::new(env!("CARGO_BIN_EXE_chall-manager"))
        .args(["challenge", "get", "shown", "--dir"])
        .arg(env.server.data_dir())
        .output()
        .unwrap();
    for output in [remote, local] {
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let field = |name: &str| {
            let line = text.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("no {name}: {text}"));
            line.split_whitespace().nth(1).unwrap().to_owned()
        };
        assert_eq!(field("claimed"), "1", "{text}");
        assert_eq!(field("pooled"), "2", "{text}");
    }
}

/// Variant of [`RECORDER`] whose `up` fails after 0.3 s while `$CM_TEST_LOG.fail`
/// exists, unless its additional values contain `ok`.
const FLAKY: &[(&str, &str)] = &[
    ("scenario.yaml", "runtime: exec\nup: sh up.sh\ndown: sh down.sh\n"),
    (
        "up.sh",
        r#"if [ -e "$CM_TEST_LOG.fail" ] && ! echo "$CM_ADDITIONAL" | grep -q ok; then
  sleep 0.3
  echo "the cluster is full" >&2
  exit 1
fi
echo "up $CM_IDENTITY $CM_ADDITIONAL" >> "$CM_TEST_LOG"
printf '{"connection_info":"conn-%s"}\n' "$CM_IDENTITY"
"#,
    ),
    ("down.sh", "echo \"down $CM_IDENTITY\" >> \"$CM_TEST_LOG\"\n"),
];

#[tokio::test]
async fn failed_fills_are_logged_and_retried() {
    let env = Env::start().await;
    let fail = failing_pool(&env, "flaky").await;

    wait_logged(&env, "failed to deploy a pooled instance", Duration::from_secs(10)).await;
    assert!(env.server.log().iter().any(|line| line.contains("the cluster is full")), "the error was not logged");

    // A failing pool does not hold on-demand deployments.
    let body = json!({"challengeId": "flaky", "sourceId": "1", "additional": {"ok": "1"}});
    let (status, instance) = env.post("/api/v1/instance", body).await;
    assert_eq!(status, 200, "{instance}");

    // Once the cause is gone, a retry fills the pool.
    std::fs::remove_file(&fail).unwrap();
    wait_pooled(&env, "flaky", 1).await;
}

#[tokio::test]
async fn pool_drains_when_the_challenge_ends() {
    let env = Env::start().await;
    let scenario = env.push("recorder", RECORDER).await;
    let until = chrono::Utc::now() + chrono::Duration::seconds(3);
    let until = until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = json!({"id": "ending", "scenario": scenario, "until": until, "min": 2});
    let (status, created) = env.post("/api/v1/challenge", body).await;
    assert_eq!(status, 200, "{created}");
    wait_pooled(&env, "ending", 2).await;

    // Well before the periodic round: the drain is scheduled at the end.
    wait_alive(&env, 0).await;
    assert_eq!(pooled(&env, "ending").await, 0);
}

#[tokio::test]
async fn on_demand_deployments_count_towards_max() {
    let env = Env::start_with(&[("CM_TEST_SLEEP", "1")]).await;
    create_pooled_challenge(&env, "capped", 2, 3).await;
    wait_pooled(&env, "capped", 2).await;

    // A and B empty the pool and start a refill; C comes before the refill
    // is ready, so it is deployed on demand, and 3 claimed reach max.
    claim(&env, "capped", "A").await;
    claim(&env, "capped", "B").await;
    claim(&env, "capped", "C").await;

    // The refill that was in flight is surplus: it goes well before the
    // periodic round, 15 s after the start.
    let failure = || format!("{} deployments for max=3", alive(&env).len());
    let settled = || async { alive(&env).len() == 3 && pooled(&env, "capped").await == 0 };
    wait_until(Duration::from_secs(6), failure, settled).await;
}

#[tokio::test]
async fn update_retries_a_failing_pool_at_once() {
    let env = Env::start().await;
    let fail = failing_pool(&env, "fixed").await;

    // Wait for the 4 s backoff, after the failures of the first rounds.
    wait_logged(&env, "retry_in_ms=4000", Duration::from_secs(15)).await;

    // The ChallMaker fixes the cause and saves the challenge.
    std::fs::remove_file(&fail).unwrap();
    let updated = Instant::now();
    let body = json!({"updateMask": "min", "min": 1});
    let (status, body) = env.request(Method::PATCH, "/api/v1/challenge/fixed", Some(body)).await;
    assert_eq!(status, 200, "{body}");
    wait_pooled(&env, "fixed", 1).await;
    assert!(updated.elapsed() < Duration::from_secs(2), "the pool waited {:?} for its backoff", updated.elapsed());
}

#[tokio::test]
async fn cli_update_resizes_the_pool() {
    let env = Env::start().await;
    create_pooled_challenge(&env, "grow", 1, 0).await;
    wait_pooled(&env, "grow", 1).await;

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chall-manager"))
        .args(["challenge", "update", "grow", "--min", "3", "--url", &env.server.url("")])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    wait_pooled(&env, "grow", 3).await;
    let (_, challenge) = env.get("/api/v1/challenge/grow").await;
    assert_eq!(challenge["min"], "3");
    assert_eq!(challenge["timeout"], "600s", "a field not given changed");
}

#[tokio::test]
async fn pooled_instances_follow_updates() {
    let env = Env::start().await;
    let v2 = env.push("recorder-v2", RECORDER_V2).await;
    for (id, strategy) in [("in-place", "update_in_place"), ("blue-green", "blue_green")] {
        create_pooled_challenge(&env, id, 2, 0).await;
        wait_pooled(&env, id, 2).await;
        let before = alive(&env);

        let body = json!({"updateMask": "scenario", "scenario": v2, "updateStrategy": strategy});
        let (status, updated) = env.request(Method::PATCH, &format!("/api/v1/challenge/{id}"), Some(body)).await;
        assert_eq!(status, 200, "{updated}");

        // The update returns with the pool on the new version.
        assert_eq!(pooled(&env, id).await, 2, "{strategy}");
        let claimed = claim(&env, id, "1").await;
        let connection = claimed["connectionInfo"].as_str().unwrap();
        assert!(connection.starts_with("v2-"), "{strategy}: a claim got the old version: {claimed}");
        let identity = connection.strip_prefix("v2-").unwrap();
        match strategy {
            "update_in_place" => assert!(before.contains(identity), "in place keeps the identity"),
            _ => assert!(!before.contains(identity), "blue-green deploys a new identity"),
        }
    }
    // Blue-green destroyed the old pooled deployments; in place kept them.
    let downs = env.log_lines("down").len();
    assert_eq!(downs, 2, "{:?}", env.log_lines("down"));
}

/// Variant of [`RECORDER`] whose `up` sleeps 3 s while `$CM_TEST_LOG.slow` exists and
/// fails when its additional values contain `bad`.
const MOODY: &[(&str, &str)] = &[
    ("scenario.yaml", "runtime: exec\nup: sh up.sh\ndown: sh down.sh\n"),
    (
        "up.sh",
        r#"if echo "$CM_ADDITIONAL" | grep -q bad; then echo "bad values" >&2; exit 1; fi
if [ -e "$CM_TEST_LOG.slow" ]; then sleep 3; fi
echo "up $CM_IDENTITY $CM_ADDITIONAL" >> "$CM_TEST_LOG"
printf '{"connection_info":"conn-%s"}\n' "$CM_IDENTITY"
"#,
    ),
    ("down.sh", "echo \"down $CM_IDENTITY\" >> \"$CM_TEST_LOG\"\n"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_update_does_not_hold_claims() {
    let env = Env::start().await;
    let scenario = env.push("moody", MOODY).await;
    let body = json!({"id": "busy", "scenario": scenario, "min": 1});
    assert_eq!(env.post("/api/v1/challenge", body).await.0, 200);
    wait_pooled(&env, "busy", 1).await;

    // A round starts two slow deployments, and an update waits for them.
    let slow = format!("{}.slow", env.log.path().display());
    std::fs::write(&slow, "").unwrap();
    let body = json!({"updateMask": "min", "min": 3});
    assert_eq!(env.request(Method::PATCH, "/api/v1/challenge/busy", Some(body)).await.0, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let update = tokio::spawn({
        let (http, url) = (env.http.clone(), env.server.url("/api/v1/challenge/busy"));
        async move { http.patch(url).json(&json!({"updateMask": "timeout", "timeout": "60s"})).send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Claims and reads of the challenge go on meanwhile.
    let started = Instant::now();
    claim(&env, "busy", "1").await;
    assert!(started.elapsed() < Duration::from_secs(1), "a claim waited {:?}", started.elapsed());
    let started = Instant::now();
    assert_eq!(env.get("/api/v1/challenge/busy").await.0, 200);
    assert!(started.elapsed() < Duration::from_secs(1), "a read waited {:?}", started.elapsed());

    let update = update.await.unwrap().unwrap();
    assert_eq!(update.status().as_u16(), 200);
    std::fs::remove_file(&slow).unwrap();
}

#[tokio::test]
async fn failed_claim_update_leaves_nothing() {
    let env = Env::start().await;
    let scenario = env.push("moody", MOODY).await;
    let body = json!({"id": "picky", "scenario": scenario, "min": 1});
    assert_eq!(env.post("/api/v1/challenge", body).await.0, 200);
    wait_pooled(&env, "picky", 1).await;
    let pooled_identity = ups(&env)[0].clone();

    let body = json!({"challengeId": "picky", "sourceId": "1", "additional": {"v": "bad"}});
    let (status, error) = env.post("/api/v1/instance", body).await;
    assert_ne!(status, 200, "{error}");

    // The taken instance is destroyed, and a new one refills the pool.
    assert!(!alive(&env).contains(&pooled_identity), "the claimed pooled instance was not destroyed");
    let failure = || "the pool was not refilled after the failed claim".to_owned();
    wait_until(Duration::from_secs(5), failure, || async { pooled(&env, "picky").await == 1 }).await;
    let (status, body) = env.delete("/api/v1/challenge/picky").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        env.log_lines(&format!("down {pooled_identity}")).len(),
        1,
        "the failed claim's instance was destroyed again"
    );
}

#[tokio::test]
async fn backoff_holds_under_claims() {
    let env = Env::start().await;
    failing_pool(&env, "storm").await;

    // On-demand claims keep triggering rounds for 3 s.
    let until = Instant::now() + Duration::from_secs(3);
    let mut source = 0;
    while Instant::now() < until {
        source += 1;
        let body = json!({"challengeId": "storm", "sourceId": source.to_string(), "additional": {"ok": "1"}});
        assert_eq!(env.post("/api/v1/instance", body).await.0, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Backoff of 1 s then 2 s: 3 rounds at most in 3 s, however many
    // claims triggered them.
    let failures = env.server.log().iter().filter(|line| line.contains("failed to deploy a pooled instance")).count();
    assert!(failures <= 4, "{failures} failed pooled deployments in 3 s under {source} claims");
}

#[tokio::test]
async fn new_tag_same_digest_keeps_pool() {
    let env = Env::start().await;
    let alias = env.push("recorder-alias", RECORDER).await;
    create_pooled_challenge(&env, "alias", 2, 0).await;
    wait_pooled(&env, "alias", 2).await;
    let before = alive(&env);

    let body = json!({"updateMask": "scenario", "scenario": alias});
    let (status, updated) = env.request(Method::PATCH, "/api/v1/challenge/alias", Some(body)).await;
    assert_eq!(status, 200, "{updated}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(alive(&env), before, "the pool was redeployed for the same content");
    assert!(env.log_lines("down").is_empty());
}
