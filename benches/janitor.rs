//! Benchmark of a janitor sweep: 10,000 stored instances of which 1,000 are
//! expired, with a `down` that does nothing, against running those 1,000
//! `down` commands outside chall-manager with the same parallelism.
//!
//! Run with `cargo bench --bench janitor`. The method and results are
//! recorded in `docs/benchmarks.md`.

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, atomic::AtomicUsize, atomic::Ordering},
    time::{Duration, Instant},
};

use chall_manager::scenario::{OciSettings, Scenarios};
use serde_json::json;
use support::Server;

mod support;

const UP: &str = r#"printf '{"connection_info":"nc 127.0.0.1 4242"}\n'"#;
const DOWN: &str = "true";
const KEPT_CHALLENGES: usize = 9;
const INSTANCES_PER_CHALLENGE: usize = 1_000;
const PARALLEL: usize = 8;
/// Sweeps per janitor mode, an odd number so that the median is one of them.
const ROUNDS: usize = 3;

async fn post(http: &reqwest::Client, url: String, body: serde_json::Value) {
    let response = http.post(url).json(&body).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
}

/// Runs `down` `count` times on `PARALLEL` threads, as a script would
/// without chall-manager, and returns the wall time.
fn run_downs_directly(scenario: &Path, state: &Path, count: usize) -> Duration {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..PARALLEL)
        .map(|_| {
            let (next, scenario, state) = (Arc::clone(&next), scenario.to_owned(), state.to_owned());
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let status = Command::new("/bin/sh")
                        .arg("-c")
                        .arg(DOWN)
                        .current_dir(&scenario)
                        .env("CM_IDENTITY", "0123456789abcdef")
                        .env("CM_ADDITIONAL", "{}")
                        .env("CM_STATE_DIR", &state)
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .output()
                        .unwrap()
                        .status;
                    assert!(status.success());
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    started.elapsed()
}

/// Creates `INSTANCES_PER_CHALLENGE` instances of a challenge over REST.
async fn create_instances(http: &reqwest::Client, server: &Server, challenge_id: &str) {
    for source in 0..INSTANCES_PER_CHALLENGE {
        let body = json!({"challengeId": challenge_id, "sourceId": source.to_string()});
        post(http, format!("{}/api/v1/instance", server.base), body).await;
    }
}

/// Runs one janitor sweep, with `target` naming the server or the data
/// directory, and returns its wall time from process start to exit.
fn sweep(target: &[&str]) -> Duration {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_chall-manager"))
        .args(["janitor", "--log-level", "warn", "--parallel", &PARALLEL.to_string()])
        .args(target)
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(output.status.success(), "janitor failed: {}", String::from_utf8_lossy(&output.stderr));
    elapsed
}

async fn assert_expired_gone(http: &reqwest::Client, server: &Server) {
    let listed =
        http.get(format!("{}/api/v1/challenge/expiring", server.base)).send().await.unwrap().text().await.unwrap();
    assert!(listed.contains(r#""instances":[]"#), "expired instances remain");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = tempfile::tempdir().unwrap();
    let (data_dir, scenario_dir, state_dir) =
        (work.path().join("data"), work.path().join("scenario"), work.path().join("state"));
    for dir in [&data_dir, &scenario_dir, &state_dir] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(scenario_dir.join("scenario.yaml"), format!("runtime: exec\nup: {UP:?}\ndown: {DOWN:?}\n")).unwrap();
    let scenarios = Scenarios::new(&data_dir, data_dir.join("cache"), OciSettings::default());
    let reference = scenarios.pack(&scenario_dir).await.unwrap().reference;

    let server = Server::start(&data_dir);
    let http = reqwest::Client::new();
    let started = Instant::now();
    // Every instance has an end, so the janitor must check each one. Only
    // those of `expiring`, listed first in id order, are past it.
    let mut challenges: Vec<(String, &str)> = vec![("expiring".to_owned(), "1s")];
    challenges.extend((0..KEPT_CHALLENGES).map(|n| (format!("kept-{n}"), "3600s")));
    for (id, timeout) in &challenges {
        let body = json!({"id": id, "scenario": reference, "timeout": timeout});
        post(&http, format!("{}/api/v1/challenge", server.base), body).await;
        create_instances(&http, &server, id).await;
    }
    let stored = challenges.len() * INSTANCES_PER_CHALLENGE;
    println!("# chall-manager janitor benchmark");
    println!("(stored {stored} instances, {INSTANCES_PER_CHALLENGE} expiring, in {:.1?})", started.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The listing alone, as the janitor's first step makes it.
    let listing_started = Instant::now();
    let listing = Command::new(env!("CARGO_BIN_EXE_chall-manager"))
        .args(["challenge", "list", "--output", "json", "--url", &server.base])
        .output()
        .unwrap();
    let listing_time = listing_started.elapsed();
    assert!(listing.status.success());

    // Rounds alternate a janitor talking to the server and one opening the
    // data directory itself while the idle server keeps it (they share the
    // lock file). Each sweep is compared with the direct `down`s run right
    // after it, so that a slow minute of the machine weighs on both. The
    // expired instances are then created again for the next round.
    let data = data_dir.to_str().unwrap();
    let modes: [(&str, [&str; 2]); 2] = [("--url", ["--url", &server.base]), ("--dir", ["--dir", data])];
    let mut runs: [Vec<(Duration, Duration)>; 2] = Default::default();
    for round in 0..ROUNDS {
        for (mode, (_, target)) in modes.iter().enumerate() {
            if round > 0 || mode > 0 {
                create_instances(&http, &server, "expiring").await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let sweep = sweep(target);
            assert_expired_gone(&http, &server).await;
            let direct = run_downs_directly(&scenario_dir, &state_dir, INSTANCES_PER_CHALLENGE);
            runs[mode].push((sweep, direct));
        }
    }

    println!("- listing {stored} instances with `challenge list --url`: {listing_time:.1?}");
    for ((name, _), runs) in modes.iter().zip(&runs) {
        println!(
            "- janitor {name}, --parallel {PARALLEL}, then {INSTANCES_PER_CHALLENGE} downs directly, {PARALLEL} at a time:"
        );
        for (sweep, direct) in runs {
            println!("  - sweep {sweep:.1?}, direct {direct:.1?}, ratio {:.2}", ratio(*sweep, *direct));
        }
        let mut ratios: Vec<f64> = runs.iter().map(|(sweep, direct)| ratio(*sweep, *direct)).collect();
        ratios.sort_by(f64::total_cmp);
        println!("  - median ratio {:.2} (target: at most 1.5)", ratios[ratios.len() / 2]);
    }
}

fn ratio(sweep: Duration, direct: Duration) -> f64 {
    sweep.as_secs_f64() / direct.as_secs_f64()
}
