//! Benchmark of pooled claims.
//!
//! 1. Server side: the median time of `Manager::create_instance` when the
//!    pool has an instance ready. It is compared with the median time of
//!    one durable atomic write (write, fsync, rename, fsync of the
//!    directory) of a record-sized file into the same directory, measured
//!    alternately in the same run.
//! 2. End to end: 100 pooled claims over REST against a real `serve`,
//!    one after the other, with their median and 99th percentile.
//!
//! Run with `cargo bench --bench pool`. The method and results are
//! recorded in `docs/benchmarks.md`.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use chall_manager::{
    challenge::NewChallenge,
    manager::{Manager, Settings},
    scenario::OciSettings,
    store::write_atomic,
};
use serde_json::json;
use support::Server;

mod support;

const UP: &str = r#"printf '{"connection_info":"nc 127.0.0.1 4242"}\n'"#;
const CLAIMS: usize = 100;
/// Size of a stored instance record: the store pads records to 4 KiB.
const RECORD_BYTES: usize = 4096;

fn scenario(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("scenario.yaml"), format!("runtime: exec\nup: {UP:?}\ndown: \"true\"\n")).unwrap();
}

fn open_manager(data_dir: &Path) -> Manager {
    let settings =
        Settings { cache_dir: data_dir.join("cache"), data_dir: data_dir.to_owned(), oci: OciSettings::default() };
    Manager::open(settings).unwrap()
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Waits until `pooled` returns `count`.
async fn wait_for<F: Future<Output = usize>>(count: usize, mut pooled: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while pooled().await != count {
        assert!(Instant::now() < deadline, "the pool never reached {count}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Claims through the library, as the API handlers do, alternating with
/// durable writes into the directory of the instance records.
async fn server_side(work: &Path) {
    let data_dir = work.join("server-side");
    let manager = open_manager(&data_dir);
    scenario(&work.join("scenario"));
    let reference = manager.scenarios().pack(&work.join("scenario")).await.unwrap().reference;
    manager.start_pooler();
    let new = NewChallenge {
        id: "bench".into(),
        scenario: reference,
        min: CLAIMS as i64,
        max: CLAIMS as i64,
        ..NewChallenge::default()
    };
    manager.create_challenge(new).await.unwrap();
    wait_for(CLAIMS, || async { manager.pooled_count("bench").await.unwrap() }).await;

    let records = std::fs::read_dir(data_dir.join("challenges")).unwrap().next().unwrap().unwrap().path();
    let records = records.join("instances");
    let content = vec![b' '; RECORD_BYTES];
    let (mut claims, mut writes) = (Vec::new(), Vec::new());
    for n in 0..CLAIMS {
        let started = Instant::now();
        let instance = manager.create_instance("bench", &n.to_string(), BTreeMap::new()).await.unwrap();
        claims.push(started.elapsed());
        assert_eq!(instance.connection_info, "nc 127.0.0.1 4242");

        let started = Instant::now();
        write_atomic(&records.join(format!("baseline-{n}")), &content).unwrap();
        writes.push(started.elapsed());
    }
    assert_eq!(manager.pooled_count("bench").await.unwrap(), 0, "a claim deployed instead of taking from the pool");

    let (claim, write) = (median(&mut claims), median(&mut writes));
    println!("## server side ({CLAIMS} claims, alternating with {CLAIMS} durable writes)");
    println!("- claim (Manager::create_instance), median: {claim:.2?}");
    println!("- durable atomic write of {RECORD_BYTES} bytes, median: {write:.2?}");
    println!("- ratio: {:.2} (target: at most 1.5)", claim.as_secs_f64() / write.as_secs_f64());
}

/// Claims over REST from a real server, one after the other.
async fn end_to_end(work: &Path) {
    let data_dir = work.join("end-to-end");
    let manager = open_manager(&data_dir);
    let reference = manager.scenarios().pack(&work.join("scenario")).await.unwrap().reference;
    drop(manager);

    let server = Server::start(&data_dir);
    let http = reqwest::Client::new();
    let body = json!({"id": "bench", "scenario": reference, "timeout": "600s", "min": CLAIMS, "max": CLAIMS});
    let response = http.post(format!("{}/api/v1/challenge", server.base)).json(&body).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap());
    let pooled = || async {
        let response = http.get(format!("{}/api/v1/challenge/bench", server.base)).send().await.unwrap();
        let header = response.headers().get("grpc-metadata-chall-manager-pooled").unwrap();
        header.to_str().unwrap().parse::<usize>().unwrap()
    };
    wait_for(CLAIMS, pooled).await;

    let mut claims = Vec::new();
    for n in 0..CLAIMS {
        let body = json!({"challengeId": "bench", "sourceId": n.to_string()});
        let started = Instant::now();
        let response = http.post(format!("{}/api/v1/instance", server.base)).json(&body).send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        claims.push(started.elapsed());
        assert!(status.is_success(), "{status}: {text}");
    }
    assert_eq!(pooled().await, 0, "a claim deployed instead of taking from the pool");

    claims.sort();
    let p99 = claims[(claims.len() * 99).div_ceil(100) - 1];
    println!("## end to end over REST ({CLAIMS} claims, one at a time)");
    println!("- median: {:.2?}", claims[claims.len() / 2]);
    println!("- p99: {p99:.2?}");
    println!("- max: {:.2?}", claims[claims.len() - 1]);
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = tempfile::tempdir().unwrap();
    println!("# chall-manager pool benchmark");
    server_side(work.path()).await;
    end_to_end(work.path()).await;
}
