//! `podman.initial_sync` of BENCHMARKS.md, against a real podman service that
//! `test_support::podman` starts (as root; it installs the Debian packages when missing): with
//! 1,000 containers on the service, from a store's start to its subscriber holding all of them,
//! against listing them over libpod and inspecting each, 8 in flight. Target ≤ 1.5×.

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failure aborts the run

use std::time::{Duration, Instant};

use futures::StreamExt;
use test_support::bench::start_until_sets;
use test_support::podman::PodmanService;
use test_support::runtimes::Install;
use wm_collector_podman::{PodmanCollector, PodmanConfig};
use wm_core::Kind;
use wm_store::Store;

const API: &str = "http://podman/v4.0.0/libpod";

fn client(service: &PodmanService) -> reqwest::Client {
    reqwest::Client::builder().unix_socket(service.socket().as_path()).build().unwrap()
}

async fn create(client: &reqwest::Client, name: &str) {
    let body = serde_json::json!({
        "name": name, "image": PodmanService::IMAGE, "command": ["sleep", "300"],
        "labels": { "bench": "podman" }, "netns": { "nsmode": "none" },
    });
    let response = client.post(format!("{API}/containers/create")).json(&body).send().await.unwrap();
    assert!(response.status().is_success(), "create {name}: {}", response.text().await.unwrap_or_default());
}

async fn baseline_sync(client: &reqwest::Client) -> usize {
    let rows: Vec<serde_json::Value> =
        client.get(format!("{API}/containers/json?all=true")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<String> = rows.iter().filter_map(|r| r["Id"].as_str().map(str::to_owned)).collect();
    let inspected: Vec<serde_json::Value> = futures::stream::iter(ids)
        .map(|id| async move {
            client.get(format!("{API}/containers/{id}/json")).send().await.unwrap().json().await.unwrap()
        })
        .buffer_unordered(8)
        .collect()
        .await;
    inspected.len()
}

async fn ours_sync(service: &PodmanService, expected: usize) {
    let config = PodmanConfig { podman_socket_path: Some(service.socket()) };
    let store = Store::builder().collector(PodmanCollector::new(config).into_collector()).build();
    let synced = start_until_sets(&store, Kind::Container, expected);
    tokio::time::timeout(Duration::from_secs(120), synced).await.expect("a complete snapshot within 120 s");
    store.shutdown().await;
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (containers, rounds) = if quick { (200, 2) } else { (1000, 3) };
    let service = match PodmanService::start(Install::IfMissing) {
        Ok(service) => service,
        Err(why) => {
            println!("podman.initial_sync  -  -  -  <=1.50x  MISS (no podman: {why})");
            return;
        }
    };
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    tokio.block_on(async {
        let client = client(&service);
        let t = Instant::now();
        futures::stream::iter(0..containers)
            .for_each_concurrent(8, |i| {
                let client = &client;
                async move { create(client, &format!("sync-{i}")).await }
            })
            .await;
        eprintln!("created {containers} containers in {:?}", t.elapsed());
        let (mut best_ours, mut best_base) = (Duration::MAX, Duration::MAX);
        for _ in 0..rounds {
            let t = Instant::now();
            assert_eq!(baseline_sync(&client).await, containers);
            best_base = best_base.min(t.elapsed());
            let t = Instant::now();
            ours_sync(&service, containers).await;
            best_ours = best_ours.min(t.elapsed());
        }
        let ratio = best_ours.as_secs_f64() / best_base.as_secs_f64();
        let verdict = if ratio <= 1.5 { "ok" } else { "MISS" };
        println!(
            "podman.initial_sync  {:.1} ms  {:.1} ms  {ratio:.2}x  <=1.50x  {verdict}  ({containers} containers, best of {rounds})",
            best_ours.as_secs_f64() * 1e3,
            best_base.as_secs_f64() * 1e3
        );
    });
    drop(tokio);
    drop(service);
}
