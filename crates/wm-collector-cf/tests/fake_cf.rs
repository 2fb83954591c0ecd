//! The Cloud Foundry collector against servers of ours (no Cloud Foundry runs here): Garden on a
//! unix socket and the Cloud Controller with its UAA over HTTPS (`test_support::cloudfoundry`),
//! driven over time: instances added, removed and renamed between polls, a socket that appears
//! later, a per-entry error, an expired token, a slow or failing Cloud Controller, a rotated CA.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use test_support::cloudfoundry::{CcApp, CfApp, FakeCloudController, FakeGarden, GardenContainer};
use test_support::fake_daemon::scratch_dir;
use test_support::watch::eventually;
use wm_collector_cf::{CcConfig, CfCollector, CfConfig};
use wm_core::{Kind, Runtime, Source, StoreReader};
use wm_store::{CollectorState, MetricValue, Store, StoreConfig};

const WEB: &str = "e49f448e-54d2-4c33-61a3-5335";
const WEB_1: &str = "7a3c91d0-0b6e-4f1e-52aa-81c0";
const TASK: &str = "4b0f2d6e-1c8f-4a51-9c23-7d2b8e0f11aa";

fn garden_config(socket: &Path) -> CfConfig {
    CfConfig { listen_address: Some(socket.display().to_string()), ..CfConfig::default() }
}

fn store_with(collector: CfCollector) -> Store {
    let mut config = StoreConfig::default();
    config.redetect_interval = Duration::from_millis(300);
    config.retry_initial = Duration::from_millis(100);
    config.retry_max = Duration::from_millis(500);
    let collector = collector.into_collector().with_pull_interval(Duration::from_millis(200));
    let store = Store::builder().config(config).collector(collector).build();
    store.start();
    store
}

fn handles(store: &Store) -> BTreeSet<String> {
    store.list(Kind::Container).iter().map(|e| e.id_str().to_string()).collect()
}

fn tags(store: &Store, handle: &str) -> Vec<String> {
    store.get_container(handle).map(|c| c.details.collector_tags.clone()).unwrap_or_default()
}

fn has_tags(store: &Store, handle: &str, want: &[&str]) -> bool {
    let have = tags(store, handle);
    want.iter().all(|w| have.iter().any(|h| h == w))
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_added_removed_and_renamed_between_polls_are_followed() {
    let dir = scratch_dir("cf-follow");
    let garden = FakeGarden::start(&dir.join("garden.sock")).unwrap();
    let app = CfApp::example();
    garden.put(WEB, GardenContainer::app_instance(&app, WEB, 0));
    garden.put(WEB_1, GardenContainer::app_instance(&app, WEB_1, 1));
    garden.put(TASK, GardenContainer::task(&app));
    garden.put("check-5d1f2e3a-8b7c-4d6e-9f01-a2b3c4d5e6f7", GardenContainer::health_check());
    let mut stopped = GardenContainer::app_instance(&app, "stopped-1", 2);
    stopped.state = "stopped".into();
    garden.put("stopped-1", stopped);
    let store = store_with(CfCollector::new(garden_config(garden.socket()), CcConfig::default()));

    eventually("the app instances and the task", Duration::from_secs(10), || {
        handles(&store) == set(&[WEB, WEB_1, TASK, "stopped-1"])
    })
    .await;
    let web = store.get_container(WEB).unwrap();
    assert_eq!(web.name, "web_0");
    assert_eq!(web.runtime, Some(Runtime::Garden));
    assert!(web.state.running && web.state.started_at.is_some());
    assert_eq!(web.details.ports[0].port, 8080);
    assert_eq!(web.details.ports[0].host_port, Some(61012));
    assert_eq!(
        web.details.collector_tags,
        [
            "container_name:web_0".to_owned(),
            "app_instance_index:0".into(),
            format!("app_instance_guid:{WEB}"),
            format!("app_guid:{}", app.guid),
            "app_name:web".into(),
            format!("org_id:{}", app.org_guid),
            "org_name:acme".into(),
            format!("space_id:{}", app.space_guid),
            "space_name:dev".into(),
        ]
    );
    let task = store.get_container(TASK).unwrap();
    assert_eq!(task.name, "web");
    assert_eq!(task.labels.get("network.container_workload"), Some("task"));
    assert!(!task.details.collector_tags.iter().any(|t| t.starts_with("app_instance_index:")));
    assert!(!store.get_container("stopped-1").unwrap().state.running);
    let health = store.health();
    assert_eq!(health.collectors[0].source, Source::ClusterOrchestrator);
    assert!(health.is_ready());

    // Between two polls: one instance goes, another comes, an app is renamed.
    garden.remove(WEB_1);
    garden.put("9c8b7a6d-5e4f-4a3b-2c1d-0e9f", GardenContainer::app_instance(&app, "9c8b7a6d-5e4f-4a3b-2c1d-0e9f", 3));
    garden.rename_app(WEB, "web-v2");
    eventually("the list after the changes", Duration::from_secs(10), || {
        handles(&store) == set(&[WEB, "9c8b7a6d-5e4f-4a3b-2c1d-0e9f", TASK, "stopped-1"])
            && has_tags(&store, WEB, &["container_name:web-v2_0", "app_name:web-v2"])
    })
    .await;
    assert_eq!(store.get_container(WEB).unwrap().name, "web-v2_0");
    assert_eq!(garden.bulk_without_handles(), 0, "every bulk call carries handles=");

    // Everything gone: a successful empty list unsets everything.
    for handle in [WEB, "9c8b7a6d-5e4f-4a3b-2c1d-0e9f", TASK, "stopped-1"] {
        garden.remove(handle);
    }
    eventually("an empty cell", Duration::from_secs(10), || handles(&store).is_empty()).await;
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_entry_error_is_skipped_counted_and_unsets_nothing() {
    let dir = scratch_dir("cf-entry-error");
    let garden = FakeGarden::start(&dir.join("garden.sock")).unwrap();
    let app = CfApp::example();
    garden.put(WEB, GardenContainer::app_instance(&app, WEB, 0));
    garden.put(WEB_1, GardenContainer::app_instance(&app, WEB_1, 1));
    let store = store_with(CfCollector::new(garden_config(garden.socket()), CcConfig::default()));
    eventually("both instances", Duration::from_secs(10), || handles(&store) == set(&[WEB, WEB_1])).await;

    // A known instance whose entry fails stays as it was; a new one whose entry fails is not
    // invented; the rest of the list still lands.
    garden.fail_entry(WEB_1, true);
    garden.fail_entry(TASK, true);
    garden.put(TASK, GardenContainer::task(&app));
    garden.put("late-1", GardenContainer::app_instance(&app, "late-1", 4));
    let errors = || {
        store
            .telemetry()
            .into_iter()
            .find(|m| {
                m.name == "workloadmeta.entity_errors" && m.labels == [("collector_id", "cloudfoundry".to_owned())]
            })
            .map(|m| m.value)
    };
    eventually("the healthy newcomer, and the errors counted", Duration::from_secs(10), || {
        handles(&store).contains("late-1") && matches!(errors(), Some(MetricValue::Counter(n)) if n >= 4)
    })
    .await;
    assert_eq!(handles(&store), set(&[WEB, WEB_1, "late-1"]));
    assert_eq!(store.get_container(WEB_1).unwrap().name, "web_1", "kept as it was");
    assert!(store.health().is_ready(), "one bad entry fails no pull");

    // Once the entries read again, the task lands.
    garden.fail_entry(WEB_1, false);
    garden.fail_entry(TASK, false);
    eventually("the task, once readable", Duration::from_secs(10), || handles(&store).contains(TASK)).await;

    // A failed entry for a container that is gone is unset with the next list that lacks it.
    garden.fail_entry(WEB_1, true);
    garden.remove(WEB_1);
    eventually("the gone instance unset", Duration::from_secs(10), || !handles(&store).contains(WEB_1)).await;
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garden_socket_that_appears_later_is_waited_for_then_collected() {
    let dir = scratch_dir("cf-late");
    let socket = dir.join("garden.sock");
    let store = store_with(CfCollector::new(garden_config(&socket), CcConfig::default()));
    eventually("waiting for the configured socket", Duration::from_secs(10), || {
        matches!(&store.health().collectors[0].state, CollectorState::Waiting { reason } if reason.contains("garden.sock"))
    })
    .await;
    assert!(!store.health().is_ready(), "a configured Garden holds readiness until it is there");
    tokio::time::sleep(Duration::from_millis(700)).await; // a few re-detections find nothing
    assert!(!store.health().is_ready());

    let garden = FakeGarden::start(&socket).unwrap();
    garden.put(WEB, GardenContainer::app_instance(&CfApp::example(), WEB, 0));
    eventually("the instance, once Garden is there", Duration::from_secs(10), || {
        handles(&store) == set(&[WEB]) && store.health().is_ready()
    })
    .await;

    // Garden restarts: the pulls fail meanwhile, and nothing is unset.
    drop(garden);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(handles(&store), set(&[WEB]), "a failed pull unsets nothing");
    let garden = FakeGarden::start(&socket).unwrap();
    garden.put(WEB_1, GardenContainer::app_instance(&CfApp::example(), WEB_1, 1));
    eventually("the list after the restart", Duration::from_secs(10), || handles(&store) == set(&[WEB_1])).await;
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_garden_socket_at_the_default_path_the_collector_is_not_detected() {
    let dir = scratch_dir("cf-absent");
    // Not configured: the default path is looked at (absent here), and readiness is not held.
    let config = CfConfig::default();
    assert!(!Path::new(wm_collector_cf::DEFAULT_GARDEN_SOCKET).exists());
    let store = store_with(CfCollector::new(config, CcConfig::default()));
    eventually("not detected", Duration::from_secs(10), || {
        matches!(&store.health().collectors[0].state, CollectorState::NotDetected { .. })
    })
    .await;
    assert!(store.health().is_ready());
    // A wrong network is said, not guessed at.
    let wrong = CfConfig {
        listen_network: "udp".into(),
        listen_address: Some(dir.display().to_string()),
        ..CfConfig::default()
    };
    let error = wrong.address().unwrap_err();
    assert!(error.contains("listen_network") && error.contains("udp"), "{error}");
    store.shutdown().await;
}

async fn cloud_controller(dir: &Path, app: &CfApp, token_lifetime: Duration) -> FakeCloudController {
    let cc = FakeCloudController::start(dir, "wm-agent", "s3cret", token_lifetime).await.unwrap();
    let labels = [("tags.datadoghq.com/env".to_owned(), "prod".to_owned()), ("team".into(), "a".into())];
    let annotations = [("tags.datadoghq.com/service".to_owned(), "shop".to_owned())];
    cc.put_app(
        &app.guid,
        CcApp {
            name: "shop".into(),
            space_guid: app.space_guid.clone(),
            labels: labels.into_iter().collect(),
            annotations: annotations.into_iter().collect(),
            sidecars: 2,
        },
    );
    cc.put_space(&app.space_guid, "production", &app.org_guid, Some("seg-1"));
    cc.put_org(&app.org_guid, "acme-corp", Some("seg-default"));
    cc.put_segment("seg-1", "dmz");
    cc.put_segment("seg-default", "shared");
    cc
}

fn cc_config(cc: &FakeCloudController) -> CcConfig {
    CcConfig {
        url: Some(cc.url()),
        client_id: "wm-agent".into(),
        client_secret: "s3cret".into(),
        ca_file: Some(cc.ca_cert().to_path_buf()),
        poll_interval: 1,
        sidecars_tags: true,
        isolation_segments_tags: true,
        ..CcConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_controller_names_apps_follows_renames_and_renews_its_token() {
    let dir = scratch_dir("cf-cc");
    let garden = FakeGarden::start(&dir.join("garden.sock")).unwrap();
    let app = CfApp::example();
    garden.put(WEB, GardenContainer::app_instance(&app, WEB, 0));
    let cc = cloud_controller(&dir.join("cc"), &app, Duration::from_secs(3)).await;
    // A second app, and one app per page: the apps come in a walk of two pages.
    let other =
        CfApp { guid: "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9".into(), name: "worker".into(), ..CfApp::example() };
    garden.put(WEB_1, GardenContainer::app_instance(&other, WEB_1, 0));
    cc.put_app(&other.guid, CcApp { name: "jobs".into(), space_guid: other.space_guid.clone(), ..CcApp::default() });
    let config = CcConfig { apps_batch_size: 1, ..cc_config(&cc) };
    let store = store_with(CfCollector::new(garden_config(garden.socket()), config));

    let enriched = [
        "container_name:shop_0",
        "app_name:shop",
        "space_name:production",
        "org_name:acme-corp",
        "env:prod",
        "service:shop",
        "sidecar_present:true",
        "sidecar_count:2",
        "segment_id:seg-1",
        "segment_name:dmz",
    ];
    eventually("the Cloud Controller's names and tags", Duration::from_secs(15), || has_tags(&store, WEB, &enriched))
        .await;
    assert!(!tags(&store, WEB).iter().any(|t| t == "team:a"), "only tags.datadoghq.com/* metadata is a tag");
    eventually("the app of the second page", Duration::from_secs(15), || {
        has_tags(&store, WEB_1, &["container_name:jobs_0", "app_name:jobs", "sidecar_present:false"])
    })
    .await;
    assert!(cc.later_pages() >= 1, "the second page was asked for through pagination.next");
    assert_eq!(store.get_container(WEB).unwrap().name, "shop_0");

    // Renamed in the Cloud Controller: the names follow within the cache's lifetime.
    cc.rename_app(&app.guid, "shop-v2");
    eventually("the rename", Duration::from_secs(15), || has_tags(&store, WEB, &["container_name:shop-v2_0"])).await;

    // Tokens expire (3 s): new ones are asked for and the names keep following.
    eventually("a renewed token", Duration::from_secs(15), || cc.tokens_issued() >= 3).await;
    // A token revoked before its time: refused once (401), asked again, and it goes on.
    cc.revoke_tokens();
    cc.rename_app(&app.guid, "shop-v3");
    eventually("a rename after the revocation", Duration::from_secs(15), || {
        has_tags(&store, WEB, &["container_name:shop-v3_0"])
    })
    .await;
    assert!(cc.refused() >= 1, "the revoked token was refused");
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_failing_cloud_controller_never_holds_gardens_data() {
    let dir = scratch_dir("cf-cc-slow");
    let garden = FakeGarden::start(&dir.join("garden.sock")).unwrap();
    let app = CfApp::example();
    garden.put(WEB, GardenContainer::app_instance(&app, WEB, 0));
    let cc = cloud_controller(&dir.join("cc"), &app, Duration::from_secs(600)).await;
    cc.set_delay(Duration::from_secs(3));
    let store = store_with(CfCollector::new(garden_config(garden.socket()), cc_config(&cc)));

    // Garden's names land at once; the Cloud Controller's fill in once it answers.
    eventually("Garden's data first", Duration::from_secs(2), || has_tags(&store, WEB, &["app_name:web"])).await;
    eventually("the names filled in later", Duration::from_secs(20), || has_tags(&store, WEB, &["app_name:shop"]))
        .await;

    // The Cloud Controller fails: Garden's changes still land, with what is known.
    cc.set_delay(Duration::ZERO);
    cc.set_failing(Some(503));
    let other =
        CfApp { guid: "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9".into(), name: "worker".into(), ..CfApp::example() };
    garden.put(WEB_1, GardenContainer::app_instance(&other, WEB_1, 0));
    eventually("a new instance while the Cloud Controller fails", Duration::from_secs(5), || {
        has_tags(&store, WEB_1, &["container_name:worker_0", "app_name:worker", "space_name:dev"])
    })
    .await;
    assert!(store.health().is_ready(), "the Cloud Controller does not hold readiness");

    // Back: the new app is named by it.
    cc.put_app(&other.guid, CcApp { name: "jobs".into(), space_guid: other.space_guid.clone(), ..CcApp::default() });
    cc.set_failing(None);
    eventually("the new app named once it answers", Duration::from_secs(20), || {
        has_tags(&store, WEB_1, &["container_name:jobs_0", "app_name:jobs", "space_name:production"])
    })
    .await;
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_an_error_in_the_uaas_own_words() {
    let dir = scratch_dir("cf-cc-refused");
    let app = CfApp::example();
    let cc = cloud_controller(&dir.join("cc"), &app, Duration::from_secs(600)).await;
    let config = CcConfig { client_secret: "not-the-secret".into(), ..cc_config(&cc) };
    let mut client = wm_collector_cf::cc::CloudController::new(config).unwrap();
    let error = client.apps(std::slice::from_ref(&app.guid)).await.unwrap_err().to_string();
    assert!(error.contains("UAA token"), "{error}");
    assert!(error.contains("status 401") && error.contains("unauthorized Bad credentials"), "{error}");
}

/// A TCP port that counts the connections made to it and answers none: where a credential
/// must never be sent.
struct Trap {
    port: u16,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Trap {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(socket);
            }
        });
        Self { port, connections, task }
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_page_on_another_origin_is_an_error_and_gets_no_request() {
    let dir = scratch_dir("cf-cc-foreign-next");
    let app = CfApp::example();
    let cc = cloud_controller(&dir.join("cc"), &app, Duration::from_secs(600)).await;
    let other = "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9";
    cc.put_app(other, CcApp { name: "jobs".into(), space_guid: app.space_guid.clone(), ..CcApp::default() });
    let trap = Trap::start().await;
    // The same host on another port, and another host: neither is the Cloud Controller.
    for foreign in [format!("https://127.0.0.1:{}/v3/apps?page=2", trap.port), "https://evil.example/v3/apps".into()] {
        cc.set_next_href(Some(&foreign));
        let config = CcConfig { apps_batch_size: 1, ..cc_config(&cc) };
        let mut client = wm_collector_cf::cc::CloudController::new(config).unwrap();
        let error = client.apps(&[app.guid.clone(), other.to_owned()]).await.unwrap_err().to_string();
        assert!(error.contains("not on the Cloud Controller's origin"), "{error}");
        assert!(error.contains(&foreign), "the error names the refused link: {error}");
    }
    assert_eq!(trap.connections(), 0, "the token was never sent to the foreign next page");
    assert_eq!(cc.later_pages(), 0);
    // On its own origin, the walk goes on as before.
    cc.set_next_href(None);
    let config = CcConfig { apps_batch_size: 1, ..cc_config(&cc) };
    let mut client = wm_collector_cf::cc::CloudController::new(config).unwrap();
    let apps = client.apps(&[app.guid.clone(), other.to_owned()]).await.unwrap();
    assert_eq!(apps.len(), 2);
    assert_eq!(cc.later_pages(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_go_to_an_http_uaa_only_when_the_config_names_it() {
    let dir = scratch_dir("cf-cc-http-uaa");
    let app = CfApp::example();
    let cc = cloud_controller(&dir.join("cc"), &app, Duration::from_secs(600)).await;
    let trap = Trap::start().await;
    let plain = format!("http://127.0.0.1:{}", trap.port);
    cc.set_uaa_href(Some(&plain));
    let mut client = wm_collector_cf::cc::CloudController::new(cc_config(&cc)).unwrap();
    let error = client.apps(std::slice::from_ref(&app.guid)).await.unwrap_err().to_string();
    assert!(error.contains("not https") && error.contains("cloud_foundry_cc.uaa_url"), "{error}");
    assert!(!error.contains("s3cret"), "{error}");
    assert_eq!(trap.connections(), 0, "the client secret was never sent in clear text");
    assert_eq!(cc.tokens_issued(), 0);

    // Named in the config, the UAA is used as named (here the fake's own, over https), and the
    // root's link is not asked for.
    let config = CcConfig { uaa_url: Some(cc.url()), ..cc_config(&cc) };
    let mut client = wm_collector_cf::cc::CloudController::new(config).unwrap();
    let apps = client.apps(std::slice::from_ref(&app.guid)).await.unwrap();
    assert_eq!(apps[&app.guid].name, "shop");
    assert_eq!(trap.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_claims_to_last_two_to_the_63_seconds_is_used_without_overflow() {
    let dir = scratch_dir("cf-cc-expires");
    let app = CfApp::example();
    let cc = cloud_controller(&dir.join("cc"), &app, Duration::from_secs(600)).await;
    cc.set_expires_in(Some(1 << 63));
    let mut client = wm_collector_cf::cc::CloudController::new(cc_config(&cc)).unwrap();
    for _ in 0..2 {
        let apps = client.apps(std::slice::from_ref(&app.guid)).await.unwrap();
        assert_eq!(apps[&app.guid].name, "shop");
    }
    assert_eq!(cc.tokens_issued(), 1, "the token is kept (its lifetime clamped to a day), not asked again");
}

#[test]
fn the_client_secret_is_never_shown_by_the_config_or_the_client() {
    let config = CcConfig {
        url: Some("https://cc.example".into()),
        client_id: "wm-agent".into(),
        client_secret: "hunter2-cc-secret".into(),
        ..CcConfig::default()
    };
    let client = wm_collector_cf::cc::CloudController::new(config.clone()).unwrap();
    for shown in [format!("{config:?}"), format!("{client:?}"), serde_json::to_string(&config).unwrap()] {
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_ca_file_is_read_again_without_a_restart() {
    let dir = scratch_dir("cf-cc-rotate");
    let garden = FakeGarden::start(&dir.join("garden.sock")).unwrap();
    let app = CfApp::example();
    garden.put(WEB, GardenContainer::app_instance(&app, WEB, 0));
    let cc = cloud_controller(&dir.join("cc"), &app, Duration::from_secs(600)).await;
    let ca_file = dir.join("ca.pem");
    std::fs::copy(cc.ca_cert(), &ca_file).unwrap();
    let config = CcConfig { ca_file: Some(ca_file.clone()), ..cc_config(&cc) };
    let store = store_with(CfCollector::new(garden_config(garden.socket()), config));
    eventually("the first names", Duration::from_secs(15), || has_tags(&store, WEB, &["app_name:shop"])).await;

    // The Cloud Controller moves to a certificate from a new CA: the old CA cannot verify it, so
    // the names stay as they were.
    let new_ca = cc.rotate_ca().unwrap();
    cc.rename_app(&app.guid, "shop-v2");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(has_tags(&store, WEB, &["app_name:shop"]), "{:?}", tags(&store, WEB));

    // The operator's tooling swaps the new CA in (a rename, as a Secret volume does).
    std::fs::copy(&new_ca, dir.join("ca.pem.new")).unwrap();
    std::fs::rename(dir.join("ca.pem.new"), &ca_file).unwrap();
    eventually("the rename, read with the new CA", Duration::from_secs(15), || {
        has_tags(&store, WEB, &["app_name:shop-v2"])
    })
    .await;
    store.shutdown().await;
}
