//! Benchmarks of the walking skeleton, run against a real `serve` process
//! on 127.0.0.1 with a local (packed) exec scenario:
//!
//! 1. CreateInstance over REST against running the scenario's `up` directly;
//! 2. RetrieveInstance over REST with 1,000 challenges × 10 instances stored,
//!    against `GET /healthcheck` on the same server;
//! 3. idle RSS of `serve`, and its peak RSS while streaming QueryChallenge
//!    over those 10,000 instances.
//!
//! Run with `cargo bench --bench skeleton`. Pairs of measurements are
//! interleaved so that noise on the machine hits both sides alike; the
//! report gives medians and their ratio. Method and results are recorded in
//! `docs/benchmarks.md`.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chall_manager::scenario::{OciSettings, Scenarios};
use serde_json::{Value, json};
use support::Server;

mod support;

/// The `up` of the measured scenario: it only prints its outputs.
const UP: &str = r#"printf '{"connection_info":"nc 127.0.0.1 4242","flags":["FLAG{bench}"]}\n'"#;

const CREATE_SAMPLES: usize = 300;
const CHALLENGES: usize = 1_000;
const INSTANCES_PER_CHALLENGE: usize = 10;
const RETRIEVE_SAMPLES: usize = 2_000;

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn percentile(samples: &mut [Duration], fraction: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 * fraction) as usize).min(samples.len() - 1)]
}

/// Runs `up` the way a ChallMaker would by hand: `/bin/sh -c` in the
/// scenario directory, with the same environment variables.
fn run_up_directly(scenario: &Path, state: &Path) -> Duration {
    let started = Instant::now();
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(UP)
        .current_dir(scenario)
        .env("CM_IDENTITY", "0123456789abcdef")
        .env("CM_ADDITIONAL", "{}")
        .env("CM_STATE_DIR", state)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut output = String::new();
    child.stdout.take().unwrap().read_to_string(&mut output).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(output.contains("connection_info"));
    started.elapsed()
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> Duration {
    let started = Instant::now();
    let response = http.post(url).json(&body).send().await.unwrap();
    let status = response.status();
    let text = response.bytes().await.unwrap();
    let elapsed = started.elapsed();
    assert!(status.is_success(), "{status}: {}", String::from_utf8_lossy(&text));
    elapsed
}

async fn get(http: &reqwest::Client, url: String) -> Duration {
    let started = Instant::now();
    let response = http.get(url).send().await.unwrap();
    let status = response.status();
    response.bytes().await.unwrap();
    let elapsed = started.elapsed();
    assert!(status.is_success(), "{status}");
    elapsed
}

fn write_scenario(dir: &Path) {
    std::fs::write(dir.join("scenario.yaml"), format!("runtime: exec\nup: {UP:?}\ndown: \"true\"\n")).unwrap();
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("data");
    let scenario_dir = work.path().join("scenario");
    let state_dir = work.path().join("state");
    for dir in [&data_dir, &scenario_dir, &state_dir] {
        std::fs::create_dir_all(dir).unwrap();
    }
    write_scenario(&scenario_dir);

    let scenarios = Scenarios::new(&data_dir, data_dir.join("cache"), OciSettings::default());
    let reference = scenarios.pack(&scenario_dir).await.unwrap().reference;

    let server = Server::start(&data_dir);
    let http = reqwest::Client::new();
    post(&http, format!("{}/api/v1/challenge", server.base), json!({"id": "bench", "scenario": reference})).await;

    println!("# chall-manager skeleton benchmark");
    println!("machine: {} cores; samples interleaved", std::thread::available_parallelism().unwrap());
    println!();
    bench_create(&server, &http, &scenario_dir, &state_dir).await;
    // `cargo bench --bench skeleton -- create` stops here.
    if std::env::args().any(|arg| arg == "create") {
        return;
    }
    let data_dir = populate(&server, &http, &reference, &data_dir).await;
    bench_retrieve(&server, &http).await;
    drop(server);
    bench_memory(&data_dir).await;
}

async fn bench_create(server: &Server, http: &reqwest::Client, scenario_dir: &Path, state_dir: &Path) {
    let url = format!("{}/api/v1/instance", server.base);
    for source in 0..20 {
        post(http, url.clone(), json!({"challengeId": "bench", "sourceId": format!("warmup-{source}")})).await;
        run_up_directly(scenario_dir, state_dir);
    }

    let mut creates = Vec::with_capacity(CREATE_SAMPLES);
    let mut direct = Vec::with_capacity(CREATE_SAMPLES);
    for source in 0..CREATE_SAMPLES {
        creates.push(post(http, url.clone(), json!({"challengeId": "bench", "sourceId": source.to_string()})).await);
        direct.push(run_up_directly(scenario_dir, state_dir));
    }

    let (create, up) = (median(&mut creates), median(&mut direct));
    println!("## CreateInstance over REST ({CREATE_SAMPLES} samples)");
    println!("- up run directly: median {up:?}");
    println!("- CreateInstance:  median {create:?}, p90 {:?}", percentile(&mut creates, 0.9));
    println!("- ratio: {:.2} (target: at most 1.5)", create.as_secs_f64() / up.as_secs_f64());
    println!();
}

/// Stores 1,000 challenges with 10 instances each through the API.
async fn populate(server: &Server, http: &reqwest::Client, reference: &str, data_dir: &Path) -> PathBuf {
    let started = Instant::now();
    for challenge in 0..CHALLENGES {
        let id = format!("c{challenge}");
        post(http, format!("{}/api/v1/challenge", server.base), json!({"id": id, "scenario": reference})).await;
        for source in 0..INSTANCES_PER_CHALLENGE {
            let body = json!({"challengeId": id, "sourceId": source.to_string()});
            post(http, format!("{}/api/v1/instance", server.base), body).await;
        }
    }
    println!("(stored {CHALLENGES} challenges × {INSTANCES_PER_CHALLENGE} instances in {:.1?})", started.elapsed());
    println!();
    data_dir.to_path_buf()
}

async fn bench_retrieve(server: &Server, http: &reqwest::Client) {
    let mut retrieves = Vec::with_capacity(RETRIEVE_SAMPLES);
    let mut health = Vec::with_capacity(RETRIEVE_SAMPLES);
    for sample in 0..RETRIEVE_SAMPLES {
        // A spread of challenges and sources, so no single record stays hot.
        let challenge = (sample * 7919) % CHALLENGES;
        let source = sample % INSTANCES_PER_CHALLENGE;
        retrieves.push(get(http, format!("{}/api/v1/instance/c{challenge}/{source}", server.base)).await);
        health.push(get(http, format!("{}/healthcheck", server.base)).await);
    }

    let (retrieve, healthcheck) = (median(&mut retrieves), median(&mut health));
    println!(
        "## RetrieveInstance over REST, {} instances stored ({RETRIEVE_SAMPLES} samples)",
        CHALLENGES * INSTANCES_PER_CHALLENGE
    );
    println!("- GET /healthcheck:  median {healthcheck:?}");
    println!("- RetrieveInstance:  median {retrieve:?}, p90 {:?}", percentile(&mut retrieves, 0.9));
    println!("- ratio: {:.2} (target: at most 3)", retrieve.as_secs_f64() / healthcheck.as_secs_f64());
    println!();
}

/// Restarts the server on the populated directory, so its peak RSS is not
/// the one reached while populating.
async fn bench_memory(data_dir: &Path) {
    let server = Server::start(data_dir);
    let http = reqwest::Client::new();
    get(&http, format!("{}/healthcheck", server.base)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = server.rss_kib("VmRSS:");

    let started = Instant::now();
    let body = http.get(format!("{}/api/v1/challenge", server.base)).send().await.unwrap().text().await.unwrap();
    let elapsed = started.elapsed();
    let instances: usize = body
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["result"]["instances"].as_array().unwrap().len())
        .sum();
    let peak = server.rss_kib("VmHWM:");

    println!("## Memory of serve");
    println!("- idle RSS: {:.1} MiB (target: at most 15 MB)", idle as f64 / 1024.0);
    println!(
        "- peak RSS while streaming QueryChallenge over {instances} instances: {:.1} MiB, idle + {:.1} MiB (target: idle + 20 MB); stream took {elapsed:.1?}",
        peak as f64 / 1024.0,
        (peak - idle) as f64 / 1024.0
    );
}
