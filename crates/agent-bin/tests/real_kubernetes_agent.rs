//! The agent on the real single-node Kubernetes, with the collectors of its config: the pod of a
//! Deployment (labels, two containers, a Service) is stored merged from the kubelet, the API
//! server and containerd, and its containers' tags carry `kube_deployment`, `kube_service`,
//! `kube_namespace`, `pod_name`, `kube_container_name` and the configured label tag; the node's
//! label configured as a tag is on the global entity.

#![cfg(all(feature = "kube", feature = "kube-metadata", feature = "containerd"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tagger::TagCardinality;
use test_support::kubernetes::{Kubernetes, container, deployment, object};
use test_support::watch::eventually;
use wm_core::Source;

/// How long a condition of this test may take.
const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn the_agent_merges_a_pod_from_the_kubelet_the_api_server_and_containerd_and_tags_its_containers() {
    let test = "the_agent_merges_a_pod";
    test_support::runtimes::with_service(test, Kubernetes::start, async |cluster: &mut Kubernetes| {
        let client = cluster.client().await.unwrap();
        let ns =
            object::<Namespace>(json!({ "metadata": { "name": "shop", "labels": { "env": "staging" } } })).unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
        let svc = object::<Service>(json!({ "metadata": { "name": "shop-svc" },
            "spec": { "selector": { "app": "shop" }, "ports": [{ "port": 80 }] } }))
        .unwrap();
        Api::<Service>::namespaced(client.clone(), "shop").create(&PostParams::default(), &svc).await.unwrap();
        let sleep = ["/bin/sleep", "3600"];
        let shop =
            deployment("shop", &[("team", "commerce")], vec![container("api", &sleep), container("cache", &sleep)])
                .unwrap();
        Api::<Deployment>::namespaced(client.clone(), "shop").create(&PostParams::default(), &shop).await.unwrap();
        let zone = json!({ "metadata": { "labels": { "wm.test/zone": "z1" } } });
        Api::<Node>::all(client).patch(Kubernetes::NODE, &PatchParams::default(), &Patch::Merge(&zone)).await.unwrap();
        let pods = cluster.wait_for_running_pods("shop", "app=shop", 1, Duration::from_secs(120)).await.unwrap();
        let (uid, pod_name) = (pods[0].metadata.uid.clone().unwrap(), pods[0].metadata.name.clone().unwrap());

        let dir = cluster.dir().join("agent");
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, cluster.service_account_token("wm-agent", "wm-agent").await.unwrap()).unwrap();
        let port = || test_support::runtimes::free_port().unwrap();
        let yaml = format!(
            "cmd_port: {}\nhealth_port: {}\nautoconfig_exclude_features: [docker, podman]\ncri_socket_path: {}\n\
             kubernetes_kubelet_host: 127.0.0.1\nkubernetes_https_kubelet_port: {}\nkubelet_auth_token_path: {}\n\
             kubelet_client_ca: {}\nkubernetes_kubeconfig_path: {}\nkubernetes_kubelet_nodename: {}\n\
             kubernetes_pod_labels_as_tags:\n  team: team\nkubernetes_node_labels_as_tags:\n  wm.test/zone: node_zone\n",
            port(),
            port(),
            cluster.containerd_socket().display(),
            cluster.kubelet_port(),
            token.display(),
            cluster.ca_cert().display(),
            cluster.kubeconfig().display(),
            Kubernetes::NODE,
        );
        std::fs::write(dir.join("agent.yaml"), yaml).unwrap();
        let config = agent_bin::load_config(Some(&dir.join("agent.yaml")), Vec::new()).unwrap();
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        let agent = agent_bin::run::start(&config).await.unwrap();

        let ids: Vec<String> = pods[0]
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .map(|c| c.container_id.clone().unwrap().trim_start_matches("containerd://").to_owned())
            .collect();
        assert_eq!(ids.len(), 2);
        eventually(
            "the pod from the kubelet and the API server, its containers from the kubelet and containerd",
            DEADLINE,
            || {
                let dump = agent.store.dump(false);
                let sources = |id: &str| dump.entities.iter().find(|e| &*e.id.id == id).map(|e| e.sources.clone());
                sources(&uid) == Some(vec![Source::ClusterOrchestrator, Source::NodeOrchestrator])
                    && ids.iter().all(|id| sources(id) == Some(vec![Source::NodeOrchestrator, Source::Runtime]))
            },
        )
        .await;
        let pod = agent.store.get_kubernetes_pod(&uid).unwrap();
        assert_eq!(pod.details.kube_services, ["shop-svc"]);
        assert_eq!(pod.details.namespace_labels.get("env"), Some("staging"));

        let api = agent.store.get_container(&ids[0]).unwrap();
        let expected = [
            "kube_deployment:shop".to_owned(),
            "kube_service:shop-svc".to_owned(),
            "kube_namespace:shop".to_owned(),
            format!("pod_name:{pod_name}"),
            format!("kube_container_name:{}", api.name),
            "team:commerce".to_owned(),
        ];
        let entity = format!("container_id://{}", ids[0]);
        eventually("the container's pod tags", DEADLINE, || {
            let tags = agent.tagger.tag(&entity, TagCardinality::High).to_vec();
            expected.iter().all(|t| tags.contains(t))
        })
        .await;
        println!("{entity}: {:?}", agent.tagger.tag(&entity, TagCardinality::High).to_vec());
        eventually("the node's label on the global entity", DEADLINE, || {
            agent.tagger.tag(tagger::GLOBAL_ENTITY_ID, TagCardinality::Low).iter().any(|t| t == "node_zone:z1")
        })
        .await;

        // What `agent workload-list` and `agent tagger-list` print, from the same HTTP API.
        let list: agent_bin::report::WorkloadList =
            agent_bin::cli::fetch(agent.api(), "/agent/workload-list").await.unwrap();
        let text = agent_bin::cli::format_workload_list(&list, false);
        for id in &ids {
            assert!(text.contains(&format!("sources(merged):[node_orchestrator runtime] id: {id} ===")), "{text}");
        }
        assert!(
            text.contains(&format!(
                "=== Entity kubernetes_pod sources(merged):[cluster_orchestrator node_orchestrator] id: {uid} ==="
            )),
            "{text}"
        );
        let node = format!(
            "=== Entity kubernetes_metadata sources(merged):[cluster_orchestrator] id: /nodes//{} ===",
            Kubernetes::NODE
        );
        assert!(text.contains(&node), "{text}");
        let tags: agent_bin::report::TaggerList =
            agent_bin::cli::fetch(agent.api(), "/agent/tagger-list").await.unwrap();
        let text = agent_bin::cli::format_tagger_list(&tags);
        assert!(text.contains(&format!("=== Entity {entity} ===")), "{text}");
        for tag in &expected {
            assert!(text.contains(tag.as_str()), "{tag} not in tagger-list:\n{text}");
        }
        let global = "=== Entity internal://global-entity-id ===\n== Source workloadmeta-kubernetes_metadata =\n=Tags: [node_zone:z1]";
        assert!(text.contains(global), "{text}");
        assert_eq!(agent.stop().await.tasks_left, 0);
    });
}
