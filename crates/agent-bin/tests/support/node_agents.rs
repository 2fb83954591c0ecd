//! Simulated node agents for the cluster agent's test and benches: each one a store with the
//! `kube_metadata` collector (through the cluster agent, or watching the API server itself, as a
//! node agent would) and a tagger following it, in this process, with its node's pods set as the
//! kubelet's collector would report them. Only the kubelet is simulated: everything
//! `kube_metadata` does, its connection included, is the real code.

#![allow(dead_code)] // each user takes the part it needs

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tagger::{TagCardinality, Tagger, TaggerConfig};
use wm_collector_kube::metadata::{KubeMetadataCollector, KubeMetadataConfig};
use wm_core::{CollectorEvent, KubernetesPod, Secret, Source};
use wm_store::Store;

/// A pod as the node's kubelet reports it: uid, namespace, name.
pub type PodRef = (String, String, String);

/// How a node agent gets the cluster's metadata.
pub enum Mode {
    /// From the cluster agent on 127.0.0.1 at this port, with this token.
    ClusterAgent(u16, String),
    /// From its own API-server watches, with this kubeconfig.
    Direct(PathBuf),
}

/// One simulated node agent.
pub struct NodeAgent {
    /// Its node.
    pub node: String,
    /// Its store.
    pub store: Store,
    /// Its tagger (the `tier` namespace label as the tag `tier`).
    pub tagger: Arc<Tagger>,
    /// Its node's pods.
    pub pods: Vec<PodRef>,
}

/// Every pod of the cluster by node, from one list.
pub async fn pods_by_node(client: &kube::Client) -> BTreeMap<String, Vec<PodRef>> {
    let mut out: BTreeMap<String, Vec<PodRef>> = BTreeMap::new();
    for p in Api::<Pod>::all(client.clone()).list(&ListParams::default()).await.unwrap().items {
        let Some(node) = p.spec.and_then(|s| s.node_name) else { continue };
        let (Some(uid), Some(ns), Some(name)) = (p.metadata.uid, p.metadata.namespace, p.metadata.name) else {
            continue;
        };
        out.entry(node).or_default().push((uid, ns, name));
    }
    out
}

impl NodeAgent {
    /// Starts a node agent for `node` in `mode`, its kubelet reporting `pods`.
    pub async fn start(mode: &Mode, node: &str, pods: Vec<PodRef>) -> Self {
        let mut config =
            KubeMetadataConfig { kubernetes_kubelet_nodename: Some(node.into()), ..KubeMetadataConfig::default() };
        match mode {
            Mode::ClusterAgent(port, token) => {
                // No kubeconfig: this node agent cannot reach the API server at all.
                config.cluster_agent_enabled = true;
                config.cluster_agent_url = format!("127.0.0.1:{port}");
                config.cluster_agent_auth_token = Secret::new(token.clone());
            }
            Mode::Direct(kubeconfig) => config.kubernetes_kubeconfig_path = Some(kubeconfig.clone()),
        }
        let store = Store::builder().collector(KubeMetadataCollector::new(config).into_collector()).build();
        store.start();
        let tagger = Arc::new(Tagger::new(TaggerConfig {
            kubernetes_namespace_labels_as_tags: BTreeMap::from([("tier".to_owned(), "tier".to_owned())]),
            ..TaggerConfig::default()
        }));
        let _task = tagger.spawn(&store);
        let kubelet = pods.iter().map(|(uid, ns, name)| {
            let pod = KubernetesPod {
                id: uid.as_str().into(),
                name: name.as_str().into(),
                namespace: ns.as_str().into(),
                phase: "Running".into(),
                node_name: node.into(),
                ..KubernetesPod::default()
            };
            CollectorEvent::set(Source::NodeOrchestrator, pod)
        });
        store.notify(kubelet.collect()).await;
        Self { node: node.to_owned(), store, tagger, pods }
    }

    /// The tags of the pod `uid` at orchestrator cardinality.
    pub fn pod_tags(&self, uid: &str) -> Vec<String> {
        self.tagger.store().tag(&format!("kubernetes_pod_uid://{uid}"), TagCardinality::Orchestrator).to_vec()
    }

    /// Tells whether the pod `uid` has the tag `tag`.
    pub fn pod_has(&self, uid: &str, tag: &str) -> bool {
        self.pod_tags(uid).iter().any(|t| t == tag)
    }

    /// Stops it.
    pub async fn stop(self) {
        self.store.shutdown().await;
    }
}
