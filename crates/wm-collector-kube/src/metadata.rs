//! The Kubernetes API-server collector (`kube_metadata`, source `cluster_orchestrator`): for each
//! pod of this node, its namespace's labels and annotations and the services that select it, as
//! partial pod entities that the store merges with the kubelet's; and this node's labels and
//! annotations, as a `kubernetes_metadata` entity (`/nodes//<node>`).
//!
//! It keeps its load on the API server small. Pods are watched metadata-only with a
//! `spec.nodeName` field selector, so there is never a cluster-wide pod list or watch; this node
//! is watched metadata-only with a `metadata.name` field selector; namespaces are watched
//! metadata-only. EndpointSlices are watched whole, across the cluster, to find the services
//! whose endpoints are pods of this node. Every list is served from the API server's watch cache
//! (`resourceVersion=0`), and every watch asks for bookmarks.
//!
//! Nothing is sent until all four watches have listed once; then the run sends one full list,
//! and after that, on each change, the sets and unsets that differ from what it sent before. Any
//! watch error, `410 Gone` included, fails the run with a retriable error (kube-runtime's
//! watcher would list again after a `410`, but the run ends first). The store runs the collector
//! again after a backoff, and the new run's full list corrects whatever changed in between.

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

/// The collector's name, as it appears in health, telemetry and dumps.
pub const NAME: &str = "kube_metadata";
/// The label whose value is the name of the service an EndpointSlice belongs to.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The API-server collector's config, under Datadog's key names.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeMetadataConfig {
    /// `kubernetes_collect_metadata_tags` (default true): when false, the collector does not run
    /// (it reports its environment as absent).
    pub kubernetes_collect_metadata_tags: bool,
    /// `kubernetes_kubeconfig_path`: the kubeconfig to reach the API server with; unset: the
    /// in-cluster config (the pod's service account). A kubeconfig that cannot be read stops the
    /// collector for good.
    pub kubernetes_kubeconfig_path: Option<PathBuf>,
    /// `kubernetes_kubelet_nodename`: this node's name; unset: the `NODE_NAME` env var (set with
    /// the downward API). Without a node name the collector does not run.
    pub kubernetes_kubelet_nodename: Option<String>,
    /// `cluster_agent.enabled` (Datadog's key, default false): take this node's view from the
    /// cluster agent's node stream instead of watching the API server
    /// ([`via_cluster_agent`](crate::via_cluster_agent)).
    #[serde(rename = "cluster_agent.enabled")]
    pub cluster_agent_enabled: bool,
    /// `cluster_agent.url` (Datadog's key): the cluster agent's address (`https://` is added
    /// when it has no scheme); empty: found through `cluster_agent.kubernetes_service_name`.
    #[serde(rename = "cluster_agent.url")]
    pub cluster_agent_url: String,
    /// `cluster_agent.kubernetes_service_name` (Datadog's key, default
    /// `datadog-cluster-agent`): the Service whose `<NAME>_SERVICE_HOST` and
    /// `<NAME>_SERVICE_PORT` variables give the cluster agent's address.
    #[serde(rename = "cluster_agent.kubernetes_service_name")]
    pub cluster_agent_kubernetes_service_name: String,
    /// `cluster_agent.auth_token` (Datadog's key): the cluster agent's token, 32 characters at
    /// least; with `cluster_agent.enabled` it must be set (in a DaemonSet, from the Secret the
    /// cluster agent reads too).
    #[serde(rename = "cluster_agent.auth_token")]
    pub cluster_agent_auth_token: wm_core::Secret,
}

impl Default for KubeMetadataConfig {
    fn default() -> Self {
        Self {
            kubernetes_collect_metadata_tags: true,
            kubernetes_kubeconfig_path: None,
            kubernetes_kubelet_nodename: None,
            cluster_agent_enabled: false,
            cluster_agent_url: String::new(),
            cluster_agent_kubernetes_service_name: "datadog-cluster-agent".to_owned(),
            cluster_agent_auth_token: wm_core::Secret::default(),
        }
    }
}

impl KubeMetadataConfig {
    /// Returns this node's name: `kubernetes_kubelet_nodename`, else `NODE_NAME`; `None` when the
    /// value found is empty.
    fn node_name(&self) -> Option<String> {
        self.kubernetes_kubelet_nodename.clone().or_else(|| std::env::var("NODE_NAME").ok()).filter(|n| !n.is_empty())
    }
}

/// Watches the API server for the metadata of this node's pods and of the node itself; hand it to
/// the store with [`into_collector`](Self::into_collector).
#[derive(Debug)]
pub struct KubeMetadataCollector {
    config: KubeMetadataConfig,
}

impl KubeMetadataCollector {
    /// Creates a collector for `config`. Does no I/O.
    pub fn new(config: KubeMetadataConfig) -> Self {
        Self { config }
    }

    /// Wraps the collector for the store, which runs it as a change stream.
    pub fn into_collector(self) -> Collector {
        Collector::stream(NAME, Source::ClusterOrchestrator, self)
    }

    /// Builds an API-server client from `kubernetes_kubeconfig_path`, else from the in-cluster
    /// config; see [`api_client`].
    async fn client(&self) -> Result<kube::Client, CollectorError> {
        api_client(self.config.kubernetes_kubeconfig_path.as_deref(), NAME).await
    }
}

/// Builds an API-server client from the kubeconfig at `kubeconfig`, else from the in-cluster
/// config (the pod's service account); `who` names the caller in errors.
///
/// A kubeconfig that cannot be read or used is a permanent error; no kubeconfig outside a
/// cluster is an `EnvironmentAbsent` error.
pub(crate) async fn api_client(
    kubeconfig: Option<&std::path::Path>,
    who: &str,
) -> Result<kube::Client, CollectorError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                CollectorError::permanent(
                    format!("{who}: kubeconfig {} (kubernetes_kubeconfig_path)", path.display()),
                    e,
                )
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| CollectorError::permanent(format!("{who}: kubeconfig {}", path.display()), e))?
        }
        None => kube::Config::incluster()
            .map_err(|e| CollectorError::absent(format!("not in a cluster and no kubernetes_kubeconfig_path ({e})")))?,
    };
    kube::Client::try_from(config).map_err(|e| CollectorError::permanent(format!("{who}: API server client"), e))
}

/// The objects of one watch, by key, and those an ongoing list has gathered so far.
#[derive(Debug)]
struct Watched<V> {
    /// The objects as of the last complete list and the events since.
    items: HashMap<String, V>,
    /// The objects a list in progress has returned so far; they replace `items` when it
    /// completes, so that a list in progress never shows half its objects.
    listing: Option<HashMap<String, V>>,
    /// Whether a list has completed at least once.
    synced: bool,
}

impl<V> Default for Watched<V> {
    fn default() -> Self {
        Self { items: HashMap::new(), listing: None, synced: false }
    }
}

impl<V> Watched<V> {
    /// Applies a watcher event to the objects.
    ///
    /// `f` gives the key and value to store for an object, or `None` when the object is not to be
    /// stored (an object that no longer qualifies is then removed); `key` gives the key of an
    /// object to remove. Returns whether `items` may have changed: `false` while a list is in
    /// progress and for a deletion of an unknown key, `true` otherwise, even when an update
    /// stored the same value again.
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

/// What the four watches have returned.
#[derive(Debug, Default)]
struct State {
    /// By pod uid: the pod's name and namespace.
    pods: Watched<(String, String)>,
    /// By namespace name: its labels and annotations.
    namespaces: Watched<LabelsAndAnnotations>,
    /// By `namespace/slice name`: the service's name, and the uids of the pods its endpoints
    /// point at.
    slices: Watched<(String, Vec<String>)>,
    /// By node name (only this node is watched): its labels and annotations.
    nodes: Watched<LabelsAndAnnotations>,
}

impl State {
    /// Tells whether every watch has completed its first list.
    fn synced(&self) -> bool {
        self.pods.synced && self.namespaces.synced && self.slices.synced && self.nodes.synced
    }

    /// Builds the entities to send, by id: a partial pod per pod of this node, and this node's
    /// metadata entity.
    ///
    /// A pod's namespace labels and annotations are empty while its namespace is unknown.
    fn entities(&self) -> Vec<Entity> {
        let mut services: HashMap<&str, BTreeSet<&str>> = HashMap::new();
        for (service, pods) in self.slices.items.values() {
            for uid in pods {
                services.entry(uid.as_str()).or_default().insert(service.as_str());
            }
        }
        let none = LabelsAndAnnotations::default();
        self.pods
            .items
            .iter()
            .map(|(uid, (name, namespace))| {
                let (labels, annotations) = self.namespaces.items.get(namespace).unwrap_or(&none);
                let services = services.get(uid.as_str()).into_iter().flatten().copied();
                pod_entity(uid, name, namespace, labels, annotations, services)
            })
            .chain(self.nodes.items.iter().map(|(name, (labels, annotations))| node_entity(name, labels, annotations)))
            .collect()
    }
}

/// The partial pod `kube_metadata` sends for a pod: its namespace's labels and annotations and
/// the services it backs, which the store merges with the kubelet's pod.
pub(crate) fn pod_entity<'a>(
    uid: &str,
    name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    services: impl Iterator<Item = &'a str>,
) -> Entity {
    Entity::from(KubernetesPod {
        id: wm_core::Id::from(uid),
        name: name.into(),
        namespace: namespace.into(),
        details: PodDetails {
            namespace_labels: labels.iter().collect(),
            namespace_annotations: annotations.iter().collect(),
            kube_services: services.map(str::to_owned).collect(),
            ..PodDetails::default()
        }
        .into(),
        ..KubernetesPod::default()
    })
}

/// The `kubernetes_metadata` entity of a node (`/nodes//<node>`).
pub(crate) fn node_entity(
    name: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Entity {
    Entity::from(KubernetesMetadata {
        id: KubernetesMetadata::node_id(name).into(),
        resource: KubernetesMetadata::NODES.to_owned(),
        name: name.to_owned(),
        namespace: String::new(),
        labels: labels.iter().collect(),
        annotations: annotations.iter().collect(),
    })
}

/// What a run has sent, to send only what changes: the first send of a run is a full list,
/// each one after it the sets and unsets that differ.
#[derive(Debug, Default)]
pub(crate) struct Sent(Option<BTreeMap<EntityId, Entity>>);

impl Sent {
    /// Sends `entities`: whole the first time, else what differs from the last send.
    pub(crate) async fn send(&mut self, ctx: &CollectorContext, entities: Vec<Entity>) {
        let now: BTreeMap<EntityId, Entity> = entities.into_iter().map(|e| (e.id(), e)).collect();
        match &self.0 {
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
                if !events.is_empty() {
                    ctx.sink.events(events).await;
                }
            }
        }
        self.0 = Some(now);
    }
}

/// One item from any of the four watches.
enum Update {
    Pod(Event<PartialObjectMeta<Pod>>),
    Namespace(Event<PartialObjectMeta<Namespace>>),
    Slice(Event<EndpointSlice>),
    Node(Event<PartialObjectMeta<Node>>),
}

/// Returns a copy of an optional string map; an empty map when there is none.
fn map_string(map: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    map.cloned().unwrap_or_default()
}

#[async_trait]
impl StreamCollector for KubeMetadataCollector {
    /// Starts the four watches and sends the entities until the store shuts down or a watch
    /// fails; see the module docs.
    ///
    /// Returns `EnvironmentAbsent` when `kubernetes_collect_metadata_tags` is false or this node's
    /// name is unknown, the error of `client` when no client can be built, and a retriable error
    /// when a watch fails or all of them end.
    async fn run(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        if !self.config.kubernetes_collect_metadata_tags {
            return Err(CollectorError::absent("kubernetes_collect_metadata_tags is false"));
        }
        let Some(node) = self.config.node_name() else {
            return Err(CollectorError::absent("this node's name is unknown (kubernetes_kubelet_nodename, NODE_NAME)"));
        };
        if self.config.cluster_agent_enabled {
            return crate::via_cluster_agent::run(&self.config, &node, ctx).await;
        }
        let client = self.client().await?;
        let cached = watcher::Config::default().any_semantic();
        // Pods, namespaces and the node are watched metadata-only: names, uids, labels and
        // annotations are all the collector needs, and the API server sends far less.
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
        let mut sent = Sent::default();
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
            sent.send(ctx, state.entities()).await;
        }
    }
}

/// An object's labels and annotations, in that order.
type LabelsAndAnnotations = (BTreeMap<String, String>, BTreeMap<String, String>);

/// Returns the name of a metadata-only object and its labels and annotations, without the
/// annotations that are never stored; `None` for an object without a name.
fn labels_and_annotations<K>(o: &PartialObjectMeta<K>) -> Option<(String, LabelsAndAnnotations)> {
    let name = o.metadata.name.clone()?;
    let mut annotations = map_string(o.metadata.annotations.as_ref());
    annotations.retain(|k, _| crate::keeps_annotation(k));
    Some((name, (map_string(o.metadata.labels.as_ref()), annotations)))
}

/// Returns the key of an EndpointSlice: `namespace/name`.
fn slice_key(s: &EndpointSlice) -> String {
    format!(
        "{}/{}",
        s.metadata.namespace.as_deref().unwrap_or_default(),
        s.metadata.name.as_deref().unwrap_or_default()
    )
}
