//! The podman collector against a real `podman system service`, started by
//! `test_support::podman` in a private directory. Containers are made with the podman CLI (as a
//! client of that service, or directly on its storage while the service is down). Under
//! `cargo xtask ci` (`WM_CI=1`) these never skip; elsewhere, without root or the Debian
//! packages, they print `SKIPPED: <why>`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use test_support::podman::PodmanService;
use test_support::runtimes::with_service;
use test_support::watch::{Watcher, assert_store_equals};
use wm_collector_podman::{Inspect, ListEntry, PodmanCollector, PodmanConfig, container_from_inspect};
use wm_core::{Container, ContainerStatus, EnvFilter, EventType, PODMAN_POD_NAME_LABEL, Runtime};
use wm_store::Store;

const WAIT: Duration = Duration::from_secs(15);
const EVERY: Duration = Duration::from_millis(500);

fn with_podman(test: &str, body: impl AsyncFnOnce(&mut PodmanService)) {
    with_service(test, PodmanService::start, body);
}

fn store_with_podman(podman: &PodmanService) -> Store {
    let config = PodmanConfig { podman_socket_path: Some(podman.socket()) };
    let collector = PodmanCollector::new(config).into_collector().with_pull_interval(EVERY);
    let store = Store::builder().collector(collector).build();
    store.start();
    store
}

/// Runs the podman CLI (client of the service), off the async workers; fails the test if it fails.
async fn podman(p: &PodmanService, args: &[&str]) -> String {
    let out = tokio::task::block_in_place(|| p.podman(args)).unwrap();
    assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The same, straight on the storage: works while the service is down.
async fn podman_local(p: &PodmanService, args: &[&str]) -> String {
    let out = tokio::task::block_in_place(|| p.podman_local(args)).unwrap();
    assert!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The service's own view: its list, each container inspected, converted as the collector does.
async fn service_view(p: &PodmanService) -> BTreeMap<String, Container> {
    let client = reqwest::Client::builder().unix_socket(p.socket().as_path()).build().unwrap();
    let base = format!("http://podman{}", PodmanService::API);
    let entries: Vec<ListEntry> =
        client.get(format!("{base}/containers/json?all=true")).send().await.unwrap().json().await.unwrap();
    let mut view = BTreeMap::new();
    for entry in entries {
        let response = client.get(format!("{base}/containers/{}/json", entry.id)).send().await.unwrap();
        if !response.status().is_success() {
            continue;
        }
        let inspect: Inspect = response.json().await.unwrap();
        if let Some(c) = container_from_inspect(&inspect, &entry, &EnvFilter::default()) {
            view.insert(entry.id.clone(), c);
        }
    }
    view
}

fn pull_errors(store: &Store) -> u64 {
    test_support::watch::counter(store, "workloadmeta.pull_errors")
}

async fn assert_store_equals_service(store: &Store, p: &PodmanService, within: Duration) {
    assert_store_equals(store, "podman", within, || service_view(p)).await;
}

#[test]
fn containers_and_pods_are_followed_through_create_start_stop_and_rm() {
    with_podman("containers_and_pods_are_followed_through_create_start_stop_and_rm", async |p| {
        let pre =
            podman(p, &["run", "-d", "--name", "pre", "--label", "team=a", PodmanService::IMAGE, "sleep", "300"]).await;
        let store = store_with_podman(p);
        let mut w = Watcher::containers(&store);
        w.until("the pre-existing container", WAIT, |w| w.get(&pre).is_some_and(|c| c.state.running)).await;
        let c = w.get(&pre).unwrap();
        assert_eq!((c.name.as_str(), c.labels.get("team")), ("pre", Some("a")));
        assert_eq!(c.runtime, Some(Runtime::Podman));
        assert_eq!((c.image.short_name.as_str(), c.image.tag.as_str()), ("busybox", "1"));
        assert!(c.image.id.starts_with("sha256:") && c.state.pid > 0);

        // A container of a podman pod carries the pod's name.
        podman(p, &["pod", "create", "--name", "web-pod", "--infra=false"]).await;
        let id = podman(
            p,
            &[
                "create",
                "--name",
                "life",
                "--pod",
                "web-pod",
                "--label",
                "team=b",
                "--env",
                "DD_SERVICE=web",
                "--env",
                "API_SECRET=x",
                PodmanService::IMAGE,
                "sleep",
                "300",
            ],
        )
        .await;
        w.until("the created container", WAIT, |w| {
            w.get(&id).is_some_and(|c| c.state.status == ContainerStatus::Created)
        })
        .await;
        let c = w.get(&id).unwrap();
        assert_eq!(c.labels.get(PODMAN_POD_NAME_LABEL), Some("web-pod"));
        assert_eq!(c.labels.get("team"), Some("b"));
        assert_eq!(c.env.iter().collect::<Vec<_>>(), vec![("DD_SERVICE", "web")], "secrets stay out of the store");

        podman(p, &["start", &id]).await;
        w.until("the started container", WAIT, |w| w.get(&id).is_some_and(|c| c.state.running && c.state.pid > 0))
            .await;
        podman(p, &["stop", "--time", "0", &id]).await;
        w.until("the stopped container", WAIT, |w| {
            w.get(&id).is_some_and(|c| c.state.status == ContainerStatus::Stopped)
        })
        .await;
        let c = w.get(&id).unwrap();
        assert!(
            !c.state.running && c.state.exit_code == wm_core::ExitCode::new(137) && c.state.finished_at.is_some(),
            "{c:?}"
        );

        let exits = podman(p, &["run", "-d", "--name", "exits", PodmanService::IMAGE, "sh", "-c", "exit 3"]).await;
        w.until("exit code 3", WAIT, |w| w.get(&exits).is_some_and(|c| c.state.exit_code == wm_core::ExitCode::new(3)))
            .await;

        // Removed between two pulls: unset at the next one.
        podman(p, &["rm", "--force", &id]).await;
        w.until("the removed container unset", WAIT, |w| w.get(&id).is_none()).await;
        assert!(w.saw(EventType::Unset, &id));
        assert_store_equals_service(&store, p, WAIT).await;
        store.shutdown().await;
    });
}

#[test]
fn a_failed_list_unsets_nothing_and_after_the_service_returns_the_store_equals_its_list() {
    with_podman("a_failed_list_unsets_nothing_and_after_the_service_returns_the_store_equals_its_list", async |p| {
        let mut ids = Vec::new();
        for i in 0..4 {
            ids.push(podman(p, &["run", "-d", "--name", &format!("c{i}"), PodmanService::IMAGE, "sleep", "300"]).await);
        }
        let store = store_with_podman(p);
        let mut w = Watcher::containers(&store);
        w.until("the first pull", WAIT, |w| ids.iter().all(|id| w.get(id).is_some())).await;
        let before = w.log.len();
        let errors_before = pull_errors(&store);

        tokio::task::block_in_place(|| p.stop_service());
        // Several pulls fail while it is down: nothing is unset.
        let down = Instant::now();
        while pull_errors(&store) < errors_before + 4 {
            assert!(down.elapsed() < WAIT, "pulls did not fail while the service was down");
            tokio::time::sleep(EVERY / 2).await;
        }
        // Whatever the failed pulls caused would be delivered by now; take it all in.
        w.drain_for(Duration::from_millis(300)).await;
        assert_eq!(w.log.len(), before, "events while the service was down: {:?}", &w.log[before..]);
        assert_eq!(store.list_containers().len(), 4, "a failed list unset something");
        println!(
            "{} failed pulls while the service was down; the store kept its 4 containers",
            pull_errors(&store) - errors_before
        );

        // Change things while it is down, straight on the storage.
        podman_local(p, &["rm", "--force", "--time", "0", &ids[0]]).await;
        let fresh = podman_local(p, &["create", "--name", "fresh", PodmanService::IMAGE, "sleep", "300"]).await;
        tokio::task::block_in_place(|| p.start_service()).unwrap();
        let back = Instant::now();
        assert_store_equals_service(&store, p, WAIT).await;
        assert!(store.get_container(&ids[0]).is_none() && store.get_container(&fresh).is_some());
        println!("the store equals podman's list {:?} after the service returned", back.elapsed());
        store.shutdown().await;
    });
}

#[test]
fn fetch_on_miss_makes_no_request_but_inspects_of_well_formed_ids() {
    with_podman("fetch_on_miss_makes_no_request_but_inspects_of_well_formed_ids", async |p: &mut PodmanService| {
        use wm_core::ContainerFetcher;
        let real = podman(p, &["create", "--name", "fetched", PodmanService::IMAGE, "sleep", "300"]).await;
        let socket = p.socket().with_file_name("recorded.sock");
        let proxy = test_support::recording_proxy::RecordingProxy::start(&socket, &p.socket()).unwrap();
        let config = PodmanConfig { podman_socket_path: Some(proxy.socket().to_path_buf()) };
        let fetcher = wm_collector_podman::PodmanFetcher::new(config, wm_core::EnvFilter::default());
        let hostile = [
            "x/../../info".to_owned(),
            "../../system/df".to_owned(),
            format!("{real}/json?size=true"),
            format!("{real}/../../../images/json"),
            "%2e%2e%2finfo".to_owned(),
            real[..12].to_owned(),
            real.to_uppercase(),
            "fetched".to_owned(),
        ];
        for id in &hostile {
            assert!(!fetcher.accepts(id), "{id}");
            assert!(fetcher.fetch(id).await.is_none(), "{id}");
        }
        let unknown = "0".repeat(64);
        assert!(fetcher.fetch(&unknown).await.is_none());
        let found = fetcher.fetch(&real).await.expect("the real container");
        assert_eq!(&*found.id, real.as_str());
        let requests = proxy.requests();
        println!("requests that reached podman: {requests:?}");
        assert_eq!(
            requests,
            [
                format!("GET /v4.0.0/libpod/containers/{unknown}/json"),
                format!("GET /v4.0.0/libpod/containers/{real}/json")
            ]
        );
        podman(p, &["rm", "-f", &real]).await;
    });
}
