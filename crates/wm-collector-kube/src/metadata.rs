//! The API-server part (`kube_metadata`, source `cluster_orchestrator`): for each pod of this
//! node, its namespace's labels and annotations and the services that select it, as partial pod
//! entities the store merges with the kubelet's; and this node's labels and annotations, as a
//! `kubernetes_metadata` entity (`/nodes//<node>`).
//!
//! Node-scoped and cheap on the API server: pods are watched metadata-only with a `spec.nodeName`
//! field selector (never a cluster-wide pod list or watch), this node metadata-only with a
//! `metadata.name` field selector, namespaces metadata-only, EndpointSlices
//! to find the services whose endpoints are this node's pods; every list is served from the watch
//! cache (`resourceVersion=0`) and watches ask for bookmarks. kube-runtime's watcher re-lists on
//! `410 Gone`; a watch error fails the run retriably and the store's runner starts it again,
//! whose first full list reconciles.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::watcher::{self, Event};
use serde::{Deserialize, Serialize};
use wm_core::{
    Collector, CollectorContext, CollectorError, Entity, EntityId, EventType, KubernetesMetadata, KubernetesPod,
    PodDetails, Source, StreamCollector,
};

/// The collector's name.
pub const NAME: &str = "kube_metadata";
/// The label an EndpointSlice names its service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The API-server part's config, by the Datadog key names.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeMetadataConfig {
    /// `kubernetes_collect_metadata_tags` (default true).
    pub kubernetes_collect_metadata_tags: bool,
    /// `kubernetes_kubeconfig_path`: a kubeconfig; unset: the in-cluster config (the pod's
    /// service account).
    pub kubernetes_kubeconfig_path: Option<PathBuf>,
    /// `kubernetes_kubelet_nodename`: this node's name; unset: `$NODE_NAME` (downward API).
    pub kubernetes_kubelet_nodename: Option<String>,
}

impl Default for KubeMetadataConfig {
    fn default() -> Self {
        Self {
            kubernetes_collect_metadata_tags: true,
            kubernetes_kubeconfig_path: None,
            kubernetes_kubelet_nodename: None,
        }
    }
}

impl KubeMetadataConfig {
    fn node_name(&self) -> Option<String> {
        self.kubernetes_kubelet_nodename.clone().or_else(|| std::env::var("NODE_NAME").ok()).filter(|n| !n.is_empty())
    }
}

/// The API-server metadata collector.
#[derive(Debug)]
pub struct KubeMetadataCollector {
    config: KubeMetadataConfig,
}

impl KubeMetadataCollector {
    /// A collector for `config`.
    pub fn new(config: KubeMetadataConfig) -> Self {
        Self { config }
    }

    /// This collector, ready to hand to the store.
    pub fn into_collector(self) -> Collector {
        Collector::stream(NAME, Source::ClusterOrchestrator, self)
    }

    async fn client(&self) -> Result<kube::Client, CollectorError> {
        let config = match &self.config.kubernetes_kubeconfig_path {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    CollectorError::permanent(
                        format!("kube_metadata: kubeconfig {} (kubernetes_kubeconfig_path)", path.display()),
                        e,
                    )
                })?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(|e| {
                        CollectorError::permanent(format!("kube_metadata: kubeconfig {}", path.display()), e)
                    })?
            }
            None => kube::Config::incluster().map_err(|e| {
                CollectorError::absent(format!("not in a cluster and no kubernetes_kubeconfig_path ({e})"))
            })?,
        };
        kube::Client::try_from(config).map_err(|e| CollectorError::permanent("kube_metadata: API server client", e))
    }
}

/// One watch's objects, with what an ongoing (re-)list has gathered.
#[derive(Debug)]
struct Watched<V> {
    items: HashMap<String, V>,
    listing: Option<HashMap<String, V>>,
    synced: bool,
}

impl<V> Default for Watched<V> {
    fn default() -> Self {
        Self { items: HashMap::new(), listing: None, synced: false }
    }
}

impl<V> Watched<V> {
    /// Applies a watcher event, keyed and valued by `f` (`None`: not kept). Returns whether the
    /// visible set changed.
    fn apply<K>(&mut self, event: Event<K>, f: impl Fn(&K) -> Option<(String, V)>, key: impl Fn(&K) -> String) -> bool {
        match event {
            Event::Init => {
                self.listing = Some(HashMap::new());
                false
            }
            Event::InitApply(object) => {
                if let (Some(listing), Some((k, v))) = (self.listing.as_mut(), f(&object)) {
                    listing.insert(k, v);
                }
                false
            }
            Event::InitDone => {
                self.items = self.listing.take().unwrap_or_default();
                self.synced = true;
                true
            }
            Event::Apply(object) => {
                match f(&object) {
                    Some((k, v)) => {
                        self.items.insert(k, v);
                    }
                    None => {
                        self.items.remove(&key(&object));
                    }
                }
                true
            }
            Event::Delete(object) => self.items.remove(&key(&object)).is_some(),
        }
    }
}

/// What the watches know.
#[derive(Debug, Default)]
struct State {
    /// Pod uid → (name, namespace).
    pods: Watched<(String, String)>,
    /// Namespace → (labels, annotations).
    namespaces: Watched<LabelsAndAnnotations>,
    /// `namespace/slice` → (service, pod uids it points at).
    slices: Watched<(String, Vec<String>)>,
    /// This node (the only one watched) → (labels, annotations).
    nodes: Watched<LabelsAndAnnotations>,
}

impl State {
    fn synced(&self) -> bool {
        self.pods.synced && self.namespaces.synced && self.slices.synced && self.nodes.synced
    }

    /// The partial pod entities and this node's metadata entity.
    fn entities(&self) -> BTreeMap<EntityId, Entity> {
        let mut services: HashMap<&str, BTreeSet<&str>> = HashMap::new();
        for (service, pods) in self.slices.items.values() {
            for uid in pods {
                services.entry(uid.as_str()).or_default().insert(service.as_str());
            }
        }
        self.pods
            .items
            .iter()
            .map(|(uid, (name, namespace))| {
                let (labels, annotations) = self.namespaces.items.get(namespace).cloned().unwrap_or_default();
                let pod = KubernetesPod {
                    id: wm_core::Id::from(uid.as_str()),
                    name: name.into(),
                    namespace: namespace.into(),
                    details: PodDetails {
                        namespace_labels: labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
                        namespace_annotations: annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
                        kube_services: services
                            .get(uid.as_str())
                            .into_iter()
                            .flatten()
                            .map(|s| (*s).to_owned())
                            .collect(),
                        ..PodDetails::default()
                    }
                    .into(),
                    ..KubernetesPod::default()
                };
                Entity::from(pod)
            })
            .chain(self.nodes.items.iter().map(|(name, (labels, annotations))| {
                Entity::from(KubernetesMetadata {
                    id: KubernetesMetadata::node_id(name).into(),
                    resource: KubernetesMetadata::NODES.to_owned(),
                    name: name.clone(),
                    namespace: String::new(),
                    labels: labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
                    annotations: annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
                })
            }))
            .map(|entity| (entity.id(), entity))
            .collect()
    }
}

enum Update {
    Pod(Event<PartialObjectMeta<Pod>>),
    Namespace(Event<PartialObjectMeta<Namespace>>),
    Slice(Event<EndpointSlice>),
    Node(Event<PartialObjectMeta<Node>>),
}

fn map_string(map: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    map.cloned().unwrap_or_default()
}

#[async_trait]
impl StreamCollector for KubeMetadataCollector {
    async fn run(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        if !self.config.kubernetes_collect_metadata_tags {
            return Err(CollectorError::absent("kubernetes_collect_metadata_tags is false"));
        }
        let Some(node) = self.config.node_name() else {
            return Err(CollectorError::absent("this node's name is unknown (kubernetes_kubelet_nodename, NODE_NAME)"));
        };
        let client = self.client().await?;
        let cached = watcher::Config::default().any_semantic();
        // Pods and namespaces metadata-only: names, uids and labels are all it needs.
        let pods = watcher::watcher(
            Api::<PartialObjectMeta<Pod>>::all(client.clone()),
            cached.clone().fields(&format!("spec.nodeName={node}")),
        )
        .map(|r| r.map(Update::Pod));
        let namespaces = watcher::watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), cached.clone())
            .map(|r| r.map(Update::Namespace));
        let nodes = watcher::watcher(
            Api::<PartialObjectMeta<Node>>::all(client.clone()),
            cached.clone().fields(&format!("metadata.name={node}")),
        )
        .map(|r| r.map(Update::Node));
        let slices = watcher::watcher(Api::<EndpointSlice>::all(client), cached).map(|r| r.map(Update::Slice));
        let streams: Vec<BoxStream<'static, Result<Update, watcher::Error>>> =
            vec![pods.boxed(), namespaces.boxed(), slices.boxed(), nodes.boxed()];
        let mut updates = futures::stream::select_all(streams);

        let mut state = State::default();
        let mut sent: Option<BTreeMap<EntityId, Entity>> = None;
        loop {
            let update = tokio::select! {
                biased;
                () = ctx.cancel.cancelled() => return Ok(()),
                update = updates.next() => update,
            };
            let update = match update {
                Some(Ok(update)) => update,
                Some(Err(e)) => return Err(CollectorError::retriable("kube_metadata: a watch failed", e)),
                None => {
                    return Err(CollectorError::Retriable {
                        context: "kube_metadata: the watches ended".into(),
                        source: None,
                    });
                }
            };
            let changed = match update {
                Update::Pod(event) => state.pods.apply(
                    event,
                    |p: &PartialObjectMeta<Pod>| {
                        let uid = p.metadata.uid.clone()?;
                        Some((
                            uid,
                            (
                                p.metadata.name.clone().unwrap_or_default(),
                                p.metadata.namespace.clone().unwrap_or_default(),
                            ),
                        ))
                    },
                    |p: &PartialObjectMeta<Pod>| p.metadata.uid.clone().unwrap_or_default(),
                ),
                Update::Namespace(event) => state
                    .namespaces
                    .apply(event, labels_and_annotations, |n| n.metadata.name.clone().unwrap_or_default()),
                Update::Node(event) => {
                    state.nodes.apply(event, labels_and_annotations, |n| n.metadata.name.clone().unwrap_or_default())
                }
                Update::Slice(event) => state.slices.apply(
                    event,
                    |s: &EndpointSlice| {
                        let service = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
                        let pods = s
                            .endpoints
                            .iter()
                            .flatten()
                            .filter_map(|e| e.target_ref.as_ref())
                            .filter(|r| r.kind.as_deref() == Some("Pod"))
                            .filter_map(|r| r.uid.clone())
                            .collect();
                        Some((slice_key(s), (service, pods)))
                    },
                    slice_key,
                ),
            };
            if !changed || !state.synced() {
                continue;
            }
            let now = state.entities();
            match &sent {
                None => ctx.sink.full_list(now.values().cloned().collect()).await,
                Some(before) => {
                    let mut events = Vec::new();
                    for (id, entity) in &now {
                        if before.get(id) != Some(entity) {
                            events.push((EventType::Set, entity.clone()));
                        }
                    }
                    for id in before.keys().filter(|id| !now.contains_key(*id)) {
                        events.push((EventType::Unset, Entity::empty(id)));
                    }
                    ctx.sink.events(events).await;
                }
            }
            sent = Some(now);
        }
    }
}

/// A metadata-only object's name → its (labels, annotations).
type LabelsAndAnnotations = (BTreeMap<String, String>, BTreeMap<String, String>);

fn labels_and_annotations<K>(o: &PartialObjectMeta<K>) -> Option<(String, LabelsAndAnnotations)> {
    let name = o.metadata.name.clone()?;
    let mut annotations = map_string(o.metadata.annotations.as_ref());
    annotations.retain(|k, _| crate::keeps_annotation(k));
    Some((name, (map_string(o.metadata.labels.as_ref()), annotations)))
}

fn slice_key(s: &EndpointSlice) -> String {
    format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or_default(),
        s.metadata.name.as_deref().unwrap_or_default()
    )
}
