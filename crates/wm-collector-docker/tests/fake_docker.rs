//! The docker collector against a daemon of ours (`test_support::fake_daemon`), for what a real
//! dockerd cannot do on demand: one container whose inspect answers 500 (every other one is
//! stored and the collector synced, then it is read again once it works); inspects that take
//! 50 ms each under 2,000 create and destroy events (the store ends equal to the daemon's list);
//! a daemon that accepts and never answers (retrying, with the call named, within the deadline);
//! an inspect of a gigabyte (refused at the cap, by the collector and by the fetch on a miss);
//! a known container whose inspect stops parsing (kept through a re-list, unset on its removal).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use test_support::fake_daemon::{FakeDaemon, scratch_dir};
use test_support::watch::{container_ids, eventually};
use wm_collector_docker::{DockerCollector, DockerConfig};
use wm_core::Seconds;
use wm_store::{CollectorState, MetricValue, Store};

fn store_on(host: String, timeout: u64) -> Store {
    let config = DockerConfig { docker_host: Some(host), docker_query_timeout: Seconds(timeout) };
    let store = Store::builder().collector(DockerCollector::new(config).into_collector()).build();
    store.start();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_container_whose_inspect_fails_does_not_stop_the_others() {
    let dir = scratch_dir("docker-one-bad");
    let daemon = FakeDaemon::docker(&dir).unwrap();
    for i in 0..20 {
        daemon.create(&format!("c{i:02}"), &format!("web-{i}"));
    }
    daemon.fail_inspect("c07", true);
    let store = store_on(daemon.host(), 5);
    eventually("the list without the failing container", Duration::from_secs(10), || store.health().is_ready()).await;
    let expected: BTreeSet<String> = daemon.ids().into_iter().filter(|id| id != "c07").collect();
    assert_eq!(container_ids(&store), expected);

    // Events keep landing, the failing one among them.
    daemon.fail_inspect("c07b", true);
    daemon.create("c20", "late");
    daemon.create("c07b", "late-bad");
    let errors = || {
        store
            .telemetry()
            .into_iter()
            .find(|m| m.name == "workloadmeta.entity_errors" && m.labels == [("collector_id", "docker".to_owned())])
            .map(|m| m.value)
    };
    eventually("a later container, and the failing one counted", Duration::from_secs(10), || {
        store.get_container("c20").is_some() && matches!(errors(), Some(MetricValue::Counter(n)) if n >= 2)
    })
    .await;
    assert!(store.get_container("c07b").is_none());

    // Once it works, the retry reads it without any event.
    daemon.fail_inspect("c07", false);
    daemon.fail_inspect("c07b", false);
    eventually("the retried containers", Duration::from_secs(15), || {
        store.get_container("c07").is_some() && store.get_container("c07b").is_some()
    })
    .await;
    assert_eq!(container_ids(&store), daemon.ids().into_iter().collect());
    assert!(matches!(store.health().collectors[0].state, CollectorState::Running));
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_inspects_under_two_thousand_events_end_equal_to_the_daemons_list() {
    let dir = scratch_dir("docker-slow");
    let daemon = FakeDaemon::docker(&dir).unwrap();
    daemon.set_inspect_delay(Duration::from_millis(50));
    let store = store_on(daemon.host(), 5);
    eventually("the first list", Duration::from_secs(10), || store.health().is_ready()).await;
    // 1,200 creates and 800 destroys, interleaved: 2,000 events in bursts.
    let started = Instant::now();
    let mut alive = Vec::new();
    for i in 0..1200 {
        let id = format!("burst{i:04}");
        daemon.create(&id, &format!("b{i}"));
        alive.push(id);
        if i % 3 != 0 && alive.len() > 1 {
            let gone = alive.remove(alive.len() / 2);
            daemon.destroy(&gone);
        }
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let expected: BTreeSet<String> = daemon.ids().into_iter().collect();
    assert_eq!(expected.len(), 400);
    eventually("the store equal to the daemon's list", Duration::from_secs(90), || container_ids(&store) == expected)
        .await;
    let concurrent = daemon.max_concurrent_inspects();
    assert!((2..=8).contains(&concurrent), "inspects run concurrently, 8 at most: {concurrent} at once");
    println!(
        "{} containers left of 1,200 created, 800 destroyed; converged {:?} after the first event ({} inspects at 50 ms)",
        expected.len(),
        started.elapsed(),
        daemon.inspects()
    );
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_never_answers_is_retried_with_the_call_named_within_the_deadline() {
    let dir = scratch_dir("docker-hung");
    let daemon = FakeDaemon::hung(&dir).unwrap();
    let started = Instant::now();
    let store = store_on(daemon.host(), 1);
    let mut error = String::new();
    eventually("retrying", Duration::from_secs(5), || match &store.health().collectors[0].state {
        CollectorState::Retrying { error: e, .. } => {
            error = e.clone();
            true
        }
        _ => false,
    })
    .await;
    println!("retrying after {:?}: {error}", started.elapsed());
    assert!(error.contains("/_ping"), "{error}");
    assert!(!store.health().is_ready());
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_inspect_is_refused_at_its_cap_and_the_other_containers_are_stored() {
    use wm_core::ContainerFetcher;
    let dir = scratch_dir("docker-huge");
    let daemon = FakeDaemon::docker(&dir).unwrap();
    let huge = "ab".repeat(32);
    let fine = "cd".repeat(32);
    daemon.create(&huge, "huge");
    daemon.create(&fine, "fine");
    daemon.create("c01", "small");
    daemon.make_inspect_huge(&huge, 1 << 30);
    let store = store_on(daemon.host(), 30);
    eventually("the list without the huge one", Duration::from_secs(20), || store.health().is_ready()).await;
    assert_eq!(container_ids(&store), BTreeSet::from([fine.clone(), "c01".to_owned()]));

    // A fetch on a cache miss reads with the same cap.
    let config = DockerConfig { docker_host: Some(daemon.host()), docker_query_timeout: Seconds(30) };
    let fetcher = wm_collector_docker::DockerFetcher::new(config, wm_core::EnvFilter::default());
    assert!(fetcher.fetch(&huge).await.is_none());
    assert_eq!(fetcher.fetch(&fine).await.map(|c| c.id.to_string()), Some(fine.clone()));

    // Two reads of the huge body, each stopped at the 16 MiB cap (plus what the socket buffers).
    let sent = daemon.huge_bytes_sent();
    println!("huge inspect bodies: {} MiB sent for two reads of a 1,024 MiB body", sent >> 20);
    assert!(sent >= 2 * wm_collector_docker::MAX_INSPECT_BODY, "{sent}");
    assert!(sent < 2 * wm_collector_docker::MAX_INSPECT_BODY + (16 << 20), "{sent}");
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_container_whose_inspect_stops_parsing_is_kept_through_a_re_list() {
    let dir = scratch_dir("docker-kept");
    let daemon = FakeDaemon::docker(&dir).unwrap();
    let big = "ef".repeat(32);
    daemon.create(&big, "big");
    daemon.create("c01", "small");
    let store = store_on(daemon.host(), 30);
    eventually("the first list", Duration::from_secs(10), || store.health().is_ready()).await;
    assert_eq!(container_ids(&store), BTreeSet::from([big.clone(), "c01".to_owned()]));

    // Its inspect now passes the cap, and the daemon "restarts": the collector lists again.
    daemon.make_inspect_huge(&big, 1 << 30);
    daemon.end_event_streams();
    eventually("the re-list reading the huge inspect", Duration::from_secs(30), || {
        daemon.huge_bytes_sent() >= wm_collector_docker::MAX_INSPECT_BODY
    })
    .await;
    // A container made now is stored by that list or by the events after it: either way, once
    // it is there, the list has been applied.
    daemon.create("c02", "after");
    eventually("the container made after the re-list", Duration::from_secs(30), || {
        container_ids(&store).contains("c02")
    })
    .await;
    let kept = store.list_containers().into_iter().find(|c| c.id.as_str() == big);
    assert_eq!(kept.map(|c| c.name.to_string()), Some("big".to_owned()), "the re-list unset what it could not read");

    // Its removal needs no inspect, and still reaches the store.
    daemon.destroy(&big);
    eventually("the removal", Duration::from_secs(10), || !container_ids(&store).contains(&big)).await;
    store.shutdown().await;
}
