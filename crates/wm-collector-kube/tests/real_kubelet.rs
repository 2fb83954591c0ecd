//! The kubelet collector against the real single-node Kubernetes of test-support: it reads the
//! kubelet's `/pods` with a service-account token from the TokenRequest API (as an agent's
//! DaemonSet does), stores the pod and its two containers, and unsets them once the Deployment
//! is gone and they stayed missing for `kubelet_expiry`. The one container that asks for a device
//! of our test device plugin gets it from the kubelet's pod-resources API. A wrong token is a
//! retriable error naming the kubelet's URL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use test_support::kubernetes::{DevicePlugin, Kubernetes, container, deployment};
use test_support::watch::eventually;
use wm_collector_kube::{KubeletCollector, KubeletConfig};
use wm_core::{Port, Seconds};
use wm_store::Store;

/// How long a condition of this test may take.
const DEADLINE: Duration = Duration::from_secs(60);

fn pull_errors(store: &Store) -> u64 {
    test_support::watch::counter(store, "workloadmeta.pull_errors")
}

/// A sink that takes nothing: the failing pull must not send anything.
struct NoSink;

#[async_trait::async_trait]
impl wm_core::EventSink for NoSink {
    async fn send(&self, _origin: &wm_core::Origin, message: wm_core::SinkMessage) {
        panic!("a failed pull sent {message:?}");
    }
}

/// The resource of the test device plugin.
const DEVICE: &str = "wm.test/device";

/// Two containers with env: one var the tag rules read, one they do not; `api` asks for one
/// device of the test device plugin.
fn shop() -> Deployment {
    let env = json!([{ "name": "DD_ENV", "value": "test" }, { "name": "SECRET", "value": "hunter2" }]);
    let with_env = |name: &str| {
        let mut c = container(name, &["/bin/sleep", "3600"]);
        c["env"] = env.clone();
        c
    };
    let mut api = with_env("api");
    api["resources"] = json!({ "limits": { DEVICE: "1" } });
    deployment("shop", &[("team", "commerce")], vec![api, with_env("cache")]).unwrap()
}

fn config(cluster: &Kubernetes, token: &std::path::Path) -> KubeletConfig {
    KubeletConfig {
        kubernetes_kubelet_host: Some("127.0.0.1".into()),
        kubernetes_https_kubelet_port: Port::new(cluster.kubelet_port()).unwrap(),
        kubelet_auth_token_path: Some(token.to_path_buf()),
        kubelet_client_ca: Some(cluster.ca_cert()),
        kubelet_expiry: Seconds(2),
        kubelet_pull_interval: Seconds(1),
        kubernetes_kubelet_podresources_socket: Some(cluster.pod_resources_socket()),
        ..KubeletConfig::default()
    }
}

#[test]
fn the_kubelets_pods_are_collected_with_a_service_account_token_and_expire_when_gone() {
    let test = "the_kubelets_pods_are_collected";
    test_support::runtimes::with_service(test, Kubernetes::start, async |cluster: &mut Kubernetes| {
        // The scheduler places the pod once the kubelet counts the plugin's devices.
        let _plugin = DevicePlugin::start(DEVICE, &["dev-a", "dev-b"]).await.unwrap();
        cluster.create_namespace("shop").await.unwrap();
        let deployments: Api<Deployment> = Api::namespaced(cluster.client().await.unwrap(), "shop");
        deployments.create(&PostParams::default(), &shop()).await.unwrap();
        let pods = cluster.wait_for_running_pods("shop", "app=shop", 1, Duration::from_secs(120)).await.unwrap();
        let uid = pods[0].metadata.uid.clone().unwrap();

        // A token bound to a Secret, as a projected token is bound to its pod: rotated below.
        let token = cluster.dir().join("agent-token");
        let first = cluster.bound_service_account_token("wm-agent", "wm-agent", "token-1").await.unwrap();
        std::fs::write(&token, &first).unwrap();
        let store = Store::builder().collector(KubeletCollector::new(config(cluster, &token)).into_collector()).build();
        store.start();
        eventually("the pod and its two containers", DEADLINE, || {
            store
                .get_kubernetes_pod(&uid)
                .is_some_and(|p| p.containers.iter().filter(|c| !c.id.is_empty()).count() == 2)
        })
        .await;
        let pod = store.get_kubernetes_pod(&uid).unwrap();
        assert_eq!(
            (pod.name.as_str(), pod.namespace.as_str(), pod.phase.as_str()),
            (pods[0].metadata.name.as_deref().unwrap(), "shop", "Running")
        );
        assert_eq!(pod.labels.get("team"), Some("commerce"));
        assert!(pod.owners.iter().any(|o| o.kind == "ReplicaSet" && o.name.starts_with("shop-")), "{:?}", pod.owners);
        assert!(pod.ready);
        for c in &pod.containers {
            let container = store.get_container(&c.id).unwrap();
            assert_eq!(container.owner.as_ref().map(|o| o.id.to_string()), Some(uid.clone()));
            assert_eq!(container.runtime, Some(wm_core::Runtime::Containerd));
            assert!(container.state.running);
            assert_eq!(container.env.get("DD_ENV"), Some("test"));
            assert_eq!(container.env.get("SECRET"), None, "only the env vars the tag rules read enter the store");
        }
        let device = |name: &str| {
            let id = &pod.containers.iter().find(|c| c.name == name).unwrap().id;
            store.get_container(id).unwrap().details.allocated_resources.clone()
        };
        eventually("the api container's device", DEADLINE, || device("api").len() == 1).await;
        let api = device("api");
        assert_eq!(api[0].name, DEVICE);
        assert!(["dev-a", "dev-b"].contains(&api[0].id.as_str()), "{api:?}");
        assert!(device("cache").is_empty(), "a container that asked for no device has none");
        println!("the api container's device, from the pod-resources API: {api:?}");
        assert!(store.health().is_ready());

        // The token rotates as the kubelet rotates a projected one: a new file swapped in by a
        // rename, then the old token's bound object deleted, so the old token is rejected. The
        // pulls go on without a restart.
        let second = cluster.bound_service_account_token("wm-agent", "wm-agent", "token-2").await.unwrap();
        let swap = cluster.dir().join("agent-token.new");
        std::fs::write(&swap, &second).unwrap();
        std::fs::rename(&swap, &token).unwrap();
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(cluster.client().await.unwrap(), "wm-agent");
        secrets.delete("token-1", &DeleteParams::default()).await.unwrap();
        // The kubelet caches a token's review for 10 s: wait until it says no to the old one.
        let old = cluster.kubelet_client(Some(&first)).await.unwrap();
        let until = Instant::now() + DEADLINE;
        loop {
            let request = http::Request::get("/pods").body(Vec::new()).unwrap();
            if matches!(old.request_text(request).await, Err(kube::Error::Api(s)) if s.code == 401) {
                break;
            }
            assert!(Instant::now() < until, "the old token was not rejected within {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let errors_before = pull_errors(&store);
        let rotated_at = Instant::now();

        // A container that crash-loops: its restart count and its last exit code.
        let crash = deployment("crash", &[], vec![container("fails", &["/bin/sh", "-c", "exit 3"])]).unwrap();
        deployments.create(&PostParams::default(), &crash).await.unwrap();
        eventually("a restarted container with its exit code", DEADLINE, || {
            store.list_kubernetes_pods().iter().filter(|p| p.name.starts_with("crash-")).any(|p| {
                p.containers
                    .iter()
                    .filter_map(|c| store.get_container(&c.id))
                    .any(|c| c.restart_count >= 1 && c.state.exit_code == wm_core::ExitCode::new(3))
            })
        })
        .await;
        assert_eq!(pull_errors(&store), errors_before, "no pull failed after the token rotated");
        println!("pulls went on with the rotated token: a new pod seen {:.1?} after", rotated_at.elapsed());
        let crashing = store.list_kubernetes_pods().into_iter().find(|p| p.name.starts_with("crash-")).unwrap();
        let c = store.get_container(&crashing.containers[0].id).unwrap();
        println!(
            "crash-looping container: restarts {}, status {:?}, last exit {:?}",
            c.restart_count, c.state.status, c.state.exit_code
        );
        deployments.delete("crash", &DeleteParams::default()).await.unwrap();

        // Scaled to nothing: unset once missing for the expiry (2 s), not at once.
        deployments.delete("shop", &DeleteParams::default()).await.unwrap();
        let gone_from_kubelet = Instant::now();
        eventually("the pod unset", DEADLINE, || store.get_kubernetes_pod(&uid).is_none()).await;
        assert!(pod.containers.iter().all(|c| store.get_container(&c.id).is_none()));
        println!("the pod was unset {:.1?} after its deletion was asked", gone_from_kubelet.elapsed());
        store.shutdown().await;

        // A wrong token: the pull fails retriably, naming the kubelet's URL, and changes nothing.
        std::fs::write(&token, "not-a-token").unwrap();
        let store = Store::new();
        store
            .notify(vec![wm_core::CollectorEvent::set(
                wm_core::Source::Runtime,
                wm_core::Container { id: "c".into(), ..Default::default() },
            )])
            .await;
        let ctx = wm_core::CollectorContext {
            sink: wm_core::SourceSink::new(
                wm_core::Origin { source: wm_core::Source::NodeOrchestrator, collector: "kubelet".into() },
                std::sync::Arc::new(NoSink),
            ),
            reader: std::sync::Arc::new(store.clone()),
            cancel: wm_core::CancellationToken::new(),
            env: wm_core::EnvFilter::default(),
        };
        let mut collector = KubeletCollector::new(config(cluster, &token));
        use wm_core::PullCollector as _;
        collector.start(&ctx).await.unwrap();
        let error = collector.pull(&ctx).await.unwrap_err();
        assert!(error.is_retriable());
        let text = format!("{error}: {}", std::error::Error::source(&error).map(|s| s.to_string()).unwrap_or_default());
        assert!(text.contains(&format!("https://127.0.0.1:{}/pods", cluster.kubelet_port())), "{text}");
        assert!(text.contains("401") || text.contains("Unauthorized"), "{text}");
        println!("with a wrong token: {text}");
        store.shutdown().await;
    });
}
