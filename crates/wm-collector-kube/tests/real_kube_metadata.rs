//! The API-server part against the real single-node Kubernetes: a pod of this node gets its
//! namespace's labels and annotations and the service that selects it, the node's labels and
//! annotations land as its `kubernetes_metadata` entity; the API server restarted during the
//! watch, then a namespace label and a node label changed: the store converges; and, from the API
//! server's own audit log, no request ever listed or watched pods or nodes cluster-wide.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use test_support::kubernetes::{Kubernetes, container, deployment, object};
use test_support::watch::eventually;
use wm_collector_kube::metadata::{KubeMetadataCollector, KubeMetadataConfig};
use wm_core::{EntityId, Kind, KubernetesMetadata, StoreReader};
use wm_store::Store;

/// How long a condition of this test may take.
const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn pods_of_this_node_get_namespace_metadata_and_services_across_an_api_server_restart() {
    let test = "pods_of_this_node_get_namespace_metadata";
    test_support::runtimes::with_service(test, Kubernetes::start, async |cluster: &mut Kubernetes| {
        let client = cluster.client().await.unwrap();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = object(
            json!({ "metadata": { "name": "shop", "labels": { "team": "commerce" }, "annotations": { "owner": "wm" } } }),
        );
        namespaces.create(&PostParams::default(), &ns.unwrap()).await.unwrap();
        let services: Api<Service> = Api::namespaced(client.clone(), "shop");
        let svc = object(
            json!({ "metadata": { "name": "shop-svc" }, "spec": { "selector": { "app": "shop" }, "ports": [{ "port": 80 }] } }),
        );
        services.create(&PostParams::default(), &svc.unwrap()).await.unwrap();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
        let shop = deployment("shop", &[], vec![container("api", &["/bin/sleep", "3600"])]).unwrap();
        deployments.create(&PostParams::default(), &shop).await.unwrap();
        let pods = cluster.wait_for_running_pods("shop", "app=shop", 1, Duration::from_secs(120)).await.unwrap();
        let uid = pods[0].metadata.uid.clone().unwrap();
        let nodes: Api<Node> = Api::all(client.clone());
        let node_patch =
            json!({ "metadata": { "labels": { "wm.test/rack": "r1" }, "annotations": { "wm.test/owner": "ops" } } });
        nodes.patch(Kubernetes::NODE, &PatchParams::default(), &Patch::Merge(&node_patch)).await.unwrap();
        let node_id = EntityId::new(Kind::KubernetesMetadata, KubernetesMetadata::node_id(Kubernetes::NODE));
        let node_label = |store: &Store, rack: &str| {
            store.get(&node_id).and_then(|e| e.as_kubernetes_metadata().cloned()).is_some_and(|n| {
                n.labels.get("wm.test/rack") == Some(rack)
                    && n.annotations.get("wm.test/owner") == Some("ops")
                    && n.name == Kubernetes::NODE
                    && n.is_node()
            })
        };

        let config = KubeMetadataConfig {
            kubernetes_kubeconfig_path: Some(cluster.kubeconfig()),
            kubernetes_kubelet_nodename: Some(Kubernetes::NODE.into()),
            ..KubeMetadataConfig::default()
        };
        let store = Store::builder().collector(KubeMetadataCollector::new(config).into_collector()).build();
        store.start();
        eventually("the pod's namespace metadata and service", DEADLINE, || {
            store.get_kubernetes_pod(&uid).is_some_and(|p| {
                p.details.namespace_labels.get("team") == Some("commerce")
                    && p.details.namespace_annotations.get("owner") == Some("wm")
                    && p.details.kube_services == ["shop-svc"]
            })
        })
        .await;
        eventually("the node's labels and annotations", DEADLINE, || node_label(&store, "r1")).await;
        assert!(store.health().is_ready());
        // Only this node's pods: nothing of kube-system's (there are none on a node without them).
        assert!(
            store.list_kubernetes_pods().iter().all(|p| p.namespace == "shop"),
            "{:?}",
            store.list_kubernetes_pods()
        );

        // The API server restarts under the watch; a label changes afterwards; the store follows.
        cluster.stop_apiserver();
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.start_apiserver().unwrap();
        let patch = json!({ "metadata": { "labels": { "team": "payments" } } });
        namespaces.patch("shop", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        let node_patch = json!({ "metadata": { "labels": { "wm.test/rack": "r2" } } });
        nodes.patch(Kubernetes::NODE, &PatchParams::default(), &Patch::Merge(&node_patch)).await.unwrap();
        eventually("the changed labels after the restart", DEADLINE, || {
            store.get_kubernetes_pod(&uid).is_some_and(|p| p.details.namespace_labels.get("team") == Some("payments"))
                && node_label(&store, "r2")
        })
        .await;
        let metadata: Vec<_> = store.list(Kind::KubernetesMetadata);
        assert_eq!(metadata.len(), 1, "only this node: {metadata:?}");
        services.delete("shop-svc", &Default::default()).await.unwrap();
        eventually("the service gone", DEADLINE, || {
            store.get_kubernetes_pod(&uid).is_some_and(|p| p.details.kube_services.is_empty())
        })
        .await;
        store.shutdown().await;

        // The API server's own word: every pod and node list and watch was scoped to this node.
        let audit = std::fs::read_to_string(cluster.audit_log()).unwrap();
        let mut pod_reads = 0;
        let mut node_reads = 0;
        for line in audit.lines() {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            let verb = event["verb"].as_str().unwrap_or_default();
            let resource = event["objectRef"]["resource"].as_str().unwrap_or_default();
            let user = event["user"]["username"].as_str().unwrap_or_default();
            if resource == "pods"
                && (verb == "list" || verb == "watch")
                && user == "wm-admin"
                && event["objectRef"]["namespace"].is_null()
            {
                let uri = event["requestURI"].as_str().unwrap_or_default();
                assert!(uri.contains("fieldSelector=spec.nodeName"), "a cluster-wide pod {verb}: {uri}");
                pod_reads += 1;
            }
            if resource == "nodes" && (verb == "list" || verb == "watch") && user == "wm-admin" {
                let uri = event["requestURI"].as_str().unwrap_or_default();
                assert!(uri.contains("fieldSelector=metadata.name"), "a node {verb} of every node: {uri}");
                node_reads += 1;
            }
        }
        assert!(pod_reads >= 2, "the collector's pod list and watch are in the audit log ({pod_reads})");
        assert!(node_reads >= 2, "the collector's node list and watch are in the audit log ({node_reads})");
        println!("audit log: {pod_reads} pod and {node_reads} node lists and watches, every one scoped to the node");
    });
}
