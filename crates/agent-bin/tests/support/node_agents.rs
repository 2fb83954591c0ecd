//! Simulated node agents for the cluster agent's test and benches, and the API server's watch
//! traffic ([`Traffic`]) that tells what they cost it. Each node agent is a store with the
//! `kube_metadata` collector (through the cluster agent, or watching the API server itself, as a
//! node agent would) and a tagger following it, in this process, with its node's pods set as the
//! kubelet's collector would report them. Only the kubelet is simulated: everything
//! `kube_metadata` does, its connection included, is the real code.

#![allow(dead_code)] // each user takes the part it needs

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

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

/// The API server's watch traffic on what node agents watch: the watches open now, and the
/// watch events and their bytes sent so far.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    /// The watches open.
    pub watches: f64,
    /// The watch events sent.
    pub events: f64,
    /// Their bytes.
    pub bytes: f64,
    /// The bytes by resource.
    pub by: BTreeMap<&'static str, f64>,
    /// For a difference: the seconds between its two readings.
    pub secs: f64,
    /// When it was read.
    pub at: Option<Instant>,
}

impl Traffic {
    /// Reads the API server's `/metrics` now (namespaces, EndpointSlices, pods and nodes).
    pub async fn now(client: &kube::Client) -> Self {
        let request = axum::http::Request::get("/metrics").body(Vec::new()).unwrap();
        let text = client.request_text(request).await.unwrap();
        let mut t = Self { at: Some(Instant::now()), ..Self::default() };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let watched = ["namespaces", "endpointslices", "pods", "nodes"]
                .into_iter()
                .find(|r| line.contains(&format!("resource=\"{r}\"")));
            let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let Some(resource) = watched else { continue };
            if line.starts_with("apiserver_longrunning_requests{") && line.contains("verb=\"WATCH\"") {
                t.watches += value;
            } else if line.starts_with("apiserver_watch_events_sizes_sum{") {
                t.bytes += value;
                *t.by.entry(resource).or_default() += value;
            } else if line.starts_with("apiserver_watch_events_total{") {
                t.events += value;
            }
        }
        t
    }

    /// What happened between `before` and `self`.
    pub fn minus(&self, before: &Self) -> Self {
        let by = self.by.iter().map(|(r, b)| (*r, b - before.by.get(r).copied().unwrap_or(0.0))).collect();
        Self {
            watches: self.watches - before.watches,
            events: self.events - before.events,
            bytes: self.bytes - before.bytes,
            by,
            secs: match (self.at, before.at) {
                (Some(now), Some(then)) => now.duration_since(then).as_secs_f64(),
                _ => 0.0,
            },
            at: None,
        }
    }

    /// `base` plus `1/n` of what `self` has beyond it: the traffic of one of `n` identical
    /// watchers measured together.
    pub fn scaled_over(&self, base: &Self, n: f64) -> Self {
        let part = |mine: f64, theirs: f64| theirs + (mine - theirs) / n;
        let by = self.by.iter().map(|(r, b)| (*r, part(*b, base.by.get(r).copied().unwrap_or(0.0)))).collect();
        Self {
            watches: part(self.watches, base.watches),
            events: part(self.events, base.events),
            bytes: part(self.bytes, base.bytes),
            by,
            secs: self.secs,
            at: None,
        }
    }

    /// The bytes on the namespaces and EndpointSlices (what the bench's changes touch).
    pub fn changed(&self) -> f64 {
        ["namespaces", "endpointslices"].iter().filter_map(|r| self.by.get(r)).sum()
    }

    /// The bytes on nodes and pods per second (what comes with time).
    pub fn background_per_sec(&self) -> f64 {
        let bytes: f64 = ["nodes", "pods"].iter().filter_map(|r| self.by.get(r)).sum();
        if self.secs > 0.0 { bytes / self.secs } else { 0.0 }
    }

    /// The bytes by resource, less `base`'s, divided by `n`, as `resource N B`.
    pub fn split(&self, base: &Self, n: f64) -> String {
        let parts: Vec<String> = self
            .by
            .iter()
            .map(|(r, b)| format!("{r} {:.0} B", (b - base.by.get(r).copied().unwrap_or(0.0)) / n))
            .collect();
        parts.join(", ")
    }
}
