//! The podman collector against a libpod API of ours (`test_support::fake_daemon`): one
//! container whose inspect answers 500 does not stop the others (stored, synced, the failing one
//! read at a later pull once it works); inspects that take 50 ms each over 400 containers, with
//! a pull timeout of 1 s: 8 in flight, and each pull cut by its timeout keeps its progress, so
//! they all land; a service that accepts and never answers is retried with the call named.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::time::Duration;

use test_support::fake_daemon::{FakeDaemon, scratch_dir};
use test_support::watch::{container_ids, eventually};
use wm_collector_podman::{PodmanCollector, PodmanConfig};
use wm_store::{CollectorState, MetricValue, Store};

fn store_on(socket: &std::path::Path, timeout: Duration) -> Store {
    let config = PodmanConfig { podman_socket_path: Some(socket.to_owned()) };
    let collector = PodmanCollector::new(config)
        .into_collector()
        .with_pull_interval(Duration::from_millis(500))
        .with_pull_timeout(timeout);
    let store = Store::builder().collector(collector).build();
    store.start();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_container_whose_inspect_fails_does_not_stop_the_others() {
    let dir = scratch_dir("libpod-one-bad");
    let daemon = FakeDaemon::libpod(&dir).unwrap();
    for i in 0..20 {
        daemon.create(&format!("p{i:02}"), &format!("app-{i}"));
    }
    daemon.fail_inspect("p03", true);
    let store = store_on(daemon.socket(), Duration::from_secs(30));
    eventually("the pull without the failing container", Duration::from_secs(10), || store.health().is_ready()).await;
    let expected: BTreeSet<String> = daemon.ids().into_iter().filter(|id| id != "p03").collect();
    eventually("every other container", Duration::from_secs(10), || container_ids(&store) == expected).await;
    daemon.fail_inspect("p03", false);
    eventually("the failing one, at a later pull", Duration::from_secs(10), || store.get_container("p03").is_some())
        .await;
    assert_eq!(container_ids(&store), daemon.ids().into_iter().collect());
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_inspects_run_eight_at_a_time_and_pulls_cut_by_their_timeout_keep_their_progress() {
    let dir = scratch_dir("libpod-slow");
    let daemon = FakeDaemon::libpod(&dir).unwrap();
    daemon.set_inspect_delay(Duration::from_millis(50));
    for i in 0..400 {
        daemon.create(&format!("s{i:03}"), &format!("s-{i}"));
    }
    // 400 inspects of 50 ms, 8 at a time, take about 2.5 s: more than one pull's 1 s timeout.
    let store = store_on(daemon.socket(), Duration::from_secs(1));
    let expected: BTreeSet<String> = daemon.ids().into_iter().collect();
    eventually("every container", Duration::from_secs(30), || container_ids(&store) == expected).await;
    let timeouts =
        store.telemetry().into_iter().find(|m| m.name == "workloadmeta.pull_errors").map(|m| m.value).unwrap();
    println!("{timeouts:?}, {} inspects, {} at most at once", daemon.inspects(), daemon.max_concurrent_inspects());
    assert!(matches!(timeouts, MetricValue::Counter(n) if n >= 1), "no pull was cut: {timeouts:?}");
    assert!(daemon.inspects() < 2 * 400, "progress kept: {} inspects", daemon.inspects());
    store.shutdown().await;

    // Without a cut (abandoned requests would count at the daemon): exactly 8 in flight.
    let dir = scratch_dir("libpod-eight");
    let daemon = FakeDaemon::libpod(&dir).unwrap();
    daemon.set_inspect_delay(Duration::from_millis(50));
    for i in 0..100 {
        daemon.create(&format!("e{i:03}"), &format!("e-{i}"));
    }
    let store = store_on(daemon.socket(), Duration::from_secs(30));
    let expected: BTreeSet<String> = daemon.ids().into_iter().collect();
    eventually("every container", Duration::from_secs(30), || container_ids(&store) == expected).await;
    assert_eq!(daemon.max_concurrent_inspects(), 8);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_never_answers_is_retried_with_the_call_named() {
    let dir = scratch_dir("libpod-hung");
    let daemon = FakeDaemon::hung(&dir).unwrap();
    let store = store_on(daemon.socket(), Duration::from_secs(30));
    let mut error = String::new();
    eventually("retrying", Duration::from_secs(20), || match &store.health().collectors[0].state {
        CollectorState::Retrying { error: e, .. } => {
            error = e.clone();
            true
        }
        _ => false,
    })
    .await;
    println!("{error}");
    assert!(error.contains("does not answer"), "{error}");
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fetcher_inspects_one_container_and_knows_nothing_of_others() {
    use wm_core::ContainerFetcher;
    let dir = scratch_dir("libpod-fetch");
    let daemon = FakeDaemon::libpod(&dir).unwrap();
    let (known, unknown) = ("f1".repeat(32), "0".repeat(64));
    daemon.create(&known, "fetched");
    let config = PodmanConfig { podman_socket_path: Some(daemon.socket().to_owned()) };
    let fetcher = wm_collector_podman::PodmanFetcher::new(config, wm_core::EnvFilter::default());
    let found = fetcher.fetch(&known).await.expect("the container");
    assert_eq!((&*found.id, found.name.as_str()), (known.as_str(), "fetched"));
    assert!(fetcher.fetch(&unknown).await.is_none());
    assert_eq!(daemon.inspects(), 2);
    // Ids not of podman's form are refused without a request.
    for hostile in ["x/../../info", &format!("{known}/json?size=true"), "f1", &known.to_uppercase()] {
        assert!(!fetcher.accepts(hostile), "{hostile}");
        assert!(fetcher.fetch(hostile).await.is_none(), "{hostile}");
    }
    assert_eq!(daemon.inspects(), 2);
    let absent = PodmanConfig { podman_socket_path: Some(dir.join("none.sock")) };
    assert!(
        wm_collector_podman::PodmanFetcher::new(absent, wm_core::EnvFilter::default()).fetch(&known).await.is_none()
    );
}
