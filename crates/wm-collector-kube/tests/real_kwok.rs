//! The API-server part on a cluster of many nodes: the real API server, etcd, scheduler-free
//! pods and the EndpointSlice controller, with kwok in place of 50 kubelets (500 pods, 50
//! services). A node agent's `kube_metadata` reports exactly its own node's pods, each with the
//! service that selects it and its namespace's labels, and follows a namespace label change. The
//! cluster agent's index, from its cluster-wide watches, holds every node's pods and services and
//! follows a namespace label change and a deleted service.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use test_support::kubernetes::{
    Kubernetes, Kwok, create_fake_nodes, fake_pod, object, wait_for_default_service_account,
};
use test_support::watch::eventually;
use wm_collector_kube::cluster::{ClusterIndex, follow};
use wm_collector_kube::metadata::{KubeMetadataCollector, KubeMetadataConfig};
use wm_core::sync::RwLockExt;
use wm_store::Store;

const NODES: usize = 50;
const PODS: usize = 500;
const NAMESPACES: usize = 5;
/// Apps, each selected by one service per namespace.
const APPS: usize = 10;
/// How long a condition of this test may take.
const DEADLINE: Duration = Duration::from_secs(120);

/// Pod `k`: its namespace, app and node. Each node holds 10 consecutive pods, so every node has
/// pods of several namespaces and apps.
fn placement(k: usize) -> (String, String, String) {
    (format!("team-{}", k % NAMESPACES), format!("app-{}", k % APPS), format!("kwok-{}", (k / 10) % NODES))
}

/// Waits until `count` objects that `ready` accepts are listed, printing how long it took.
async fn wait_for<K>(api: &Api<K>, what: &str, labels: &str, count: usize, ready: impl Fn(&K) -> bool)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let started = Instant::now();
    loop {
        let listed = api.list(&ListParams::default().labels(labels)).await.unwrap();
        let n = listed.items.iter().filter(|o| ready(o)).count();
        if n == count {
            println!("{count} {what} in {:.1?}", started.elapsed());
            return;
        }
        assert!(started.elapsed() < DEADLINE, "{n} of {count} {what} after {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn a_node_agent_sees_its_own_pods_services_and_namespaces_among_fifty_kwok_nodes() {
    let test = "a_node_agent_sees_its_own_pods_among_fifty_kwok_nodes";
    test_support::runtimes::with_service(test, Kubernetes::start, async |cluster: &mut Kubernetes| {
        let Some(kwok) = Kwok::start_or_skip(cluster, test) else { return };
        let client = cluster.client().await.unwrap();
        create_fake_nodes(&client, NODES).await;
        let nodes: Api<Node> = Api::all(client.clone());
        let ready = |n: &Node| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        };
        wait_for(&nodes, "fake nodes Ready", "type=kwok", NODES, ready).await;

        let namespaces: Api<Namespace> = Api::all(client.clone());
        for n in 0..NAMESPACES {
            let ns = object(json!({ "metadata": { "name": format!("team-{n}"), "labels": { "tier": "bronze" } } }));
            namespaces.create(&PostParams::default(), &ns.unwrap()).await.unwrap();
            let services: Api<Service> = Api::namespaced(client.clone(), &format!("team-{n}"));
            for a in 0..APPS {
                let svc = object(json!({
                    "metadata": { "name": format!("svc-app-{a}") },
                    "spec": { "selector": { "app": format!("app-{a}") }, "ports": [{ "port": 80 }] },
                }));
                services.create(&PostParams::default(), &svc.unwrap()).await.unwrap();
            }
        }
        for n in 0..NAMESPACES {
            wait_for_default_service_account(&client, &format!("team-{n}"), DEADLINE).await;
        }
        futures::stream::iter(0..PODS)
            .for_each_concurrent(16, |k| {
                let client = client.clone();
                async move {
                    let (ns, app, node) = placement(k);
                    let pods: Api<Pod> = Api::namespaced(client, &ns);
                    let pod = fake_pod(&format!("pod-{k}"), &node, &json!({ "app": app, "wm-kwok": "1" })).unwrap();
                    pods.create(&PostParams::default(), &pod).await.unwrap();
                }
            })
            .await;
        let all_pods: Api<Pod> = Api::all(client.clone());
        let running =
            |p: &Pod| p.status.as_ref().is_some_and(|s| s.phase.as_deref() == Some("Running") && s.pod_ip.is_some());
        wait_for(&all_pods, "pods Running with an IP", "wm-kwok=1", PODS, running).await;

        // The node agent of kwok-7.
        let node = "kwok-7";
        let config = KubeMetadataConfig {
            kubernetes_kubeconfig_path: Some(cluster.kubeconfig()),
            kubernetes_kubelet_nodename: Some(node.into()),
            ..KubeMetadataConfig::default()
        };
        let store = Store::builder().collector(KubeMetadataCollector::new(config).into_collector()).build();
        store.start();
        // What the node's pods should say: by pod name, (namespace, service).
        let want: BTreeMap<String, (String, String)> = (0..PODS)
            .filter(|&k| placement(k).2 == node)
            .map(|k| {
                let (ns, app, _) = placement(k);
                (format!("pod-{k}"), (ns, format!("svc-{app}")))
            })
            .collect();
        assert_eq!(want.len(), 10);
        let seen = |store: &Store, tier: &str| {
            let pods = store.list_kubernetes_pods();
            let got: BTreeMap<String, (String, String)> = pods
                .iter()
                .filter(|p| p.details.namespace_labels.get("tier") == Some(tier))
                .filter_map(|p| {
                    Some((p.name.to_string(), (p.namespace.to_string(), p.details.kube_services.first()?.clone())))
                })
                .collect();
            pods.len() == want.len() && got == want
        };
        eventually("the node's 10 pods, each with its service and namespace labels", DEADLINE, || {
            seen(&store, "bronze")
        })
        .await;

        // A namespace label changes: every pod of the node follows (here: two namespaces).
        let patch = json!({ "metadata": { "labels": { "tier": "gold" } } });
        for n in 0..NAMESPACES {
            namespaces.patch(&format!("team-{n}"), &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        }
        eventually("the new namespace label on every pod of the node", DEADLINE, || seen(&store, "gold")).await;
        store.shutdown().await;

        // The cluster agent's index: every node's pods and their services, from one set of
        // cluster-wide watches.
        let index = Arc::new(RwLock::new(ClusterIndex::default()));
        let following = tokio::spawn(follow(client.clone(), index.clone()));
        // What every node should hold: node -> namespace -> pod -> [service].
        let expected = |skip: Option<(&str, &str)>| {
            let mut want: BTreeMap<String, BTreeMap<String, BTreeMap<String, Vec<String>>>> = BTreeMap::new();
            for k in 0..PODS {
                let (ns, app, node) = placement(k);
                let service = format!("svc-{app}");
                if skip == Some((ns.as_str(), service.as_str())) {
                    continue;
                }
                want.entry(node).or_default().entry(ns).or_default().insert(format!("pod-{k}"), vec![service]);
            }
            want
        };
        let holds = |index: &ClusterIndex, want: &BTreeMap<String, BTreeMap<String, BTreeMap<String, Vec<String>>>>| {
            index.synced()
                && want.iter().all(|(node, namespaces)| {
                    let got: Option<BTreeMap<String, BTreeMap<String, Vec<String>>>> =
                        index.services_on(node).map(|n| {
                            n.iter()
                                .map(|(ns, pods)| {
                                    (
                                        ns.clone(),
                                        pods.iter().map(|(p, s)| (p.clone(), s.keys().cloned().collect())).collect(),
                                    )
                                })
                                .collect()
                        });
                    index.node(node).is_some() && got.as_ref() == Some(namespaces)
                })
        };
        eventually("every node's pods and services in the cluster index", DEADLINE, || {
            holds(&index.reading(), &expected(None))
        })
        .await;
        assert_eq!(
            index.reading().namespace("team-3").and_then(|m| m.labels.get("tier").cloned()).as_deref(),
            Some("gold")
        );
        namespaces
            .patch(
                "team-3",
                &PatchParams::default(),
                &Patch::Merge(&json!({ "metadata": { "labels": { "tier": "platinum" } } })),
            )
            .await
            .unwrap();
        let services: Api<Service> = Api::namespaced(client.clone(), "team-3");
        services.delete("svc-app-3", &Default::default()).await.unwrap();
        eventually("the deleted service gone from its pods, the new label in", DEADLINE, || {
            let index = index.reading();
            holds(&index, &expected(Some(("team-3", "svc-app-3"))))
                && index
                    .namespace("team-3")
                    .is_some_and(|m| m.labels.get("tier").map(String::as_str) == Some("platinum"))
        })
        .await;
        assert!(!following.is_finished(), "the cluster watches stopped: {:?}", following.await);
        following.abort();
        assert!(kwok.log_tail().lines().all(|l| !l.contains("panic")), "{}", kwok.log_tail());
    });
}
