//! The cluster agent's view of the cluster: an index of what node agents ask it for, kept
//! incrementally from three cluster-wide watches ([`follow`]).
//!
//! The index holds:
//! - for each node, the services each of its pods backs. EndpointSlices say it all: each
//!   endpoint names its pod (`targetRef`) and its node (`nodeName`), and the slice names its
//!   service (label `kubernetes.io/service-name`), so no pod is watched at all. Each slice's
//!   contribution is kept, so that a change or deletion of one slice touches only the pods it
//!   listed, whatever the size of the cluster;
//! - each namespace's and each node's labels and annotations (metadata-only watches).
//!
//! One cluster agent holds one set of watches for every node agent it serves, instead of every
//! node agent watching namespaces and EndpointSlices itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::{Deserialize, Serialize};
use wm_core::sync::RwLockExt;
use wm_core::{Collector, CollectorContext, CollectorError, Source, StreamCollector};

use crate::metadata::SERVICE_NAME_LABEL;

/// One endpoint of an EndpointSlice that is a pod: where it runs and which pod it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEndpoint {
    /// `nodeName`.
    pub node: String,
    /// The pod's name (`targetRef.name`).
    pub pod: String,
}

/// The uid, labels and annotations of a namespace or a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Meta {
    /// The object's uid.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The object's labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The object's annotations.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// One EndpointSlice's contribution to the index.
#[derive(Debug)]
struct Slice {
    namespace: String,
    service: String,
    endpoints: Vec<PodEndpoint>,
}

/// Services by pod, of one node's namespace: pod → service → how many slices say so (a
/// dual-stack service has a slice per address family, both listing the pod).
pub type PodServices = BTreeMap<String, BTreeMap<String, u32>>;

/// The cluster's metadata that node agents ask for; see the module's docs.
#[derive(Debug, Default)]
pub struct ClusterIndex {
    /// Each EndpointSlice's contribution, by (namespace, slice name).
    slices: HashMap<(String, String), Slice>,
    /// node → namespace → pods and their services.
    services: HashMap<String, BTreeMap<String, PodServices>>,
    /// The nodes, by name.
    nodes: HashMap<String, Meta>,
    /// The namespaces, by name; shared with every node stream's view, copied once per change.
    namespaces: Arc<BTreeMap<String, Meta>>,
    /// Whether every watch has listed once.
    synced: bool,
    /// Counts the changes made to the index, for the node streams that wait for one.
    changes: tokio::sync::watch::Sender<u64>,
}

impl ClusterIndex {
    /// Sets what the EndpointSlice `namespace`/`name` says: the pods of `service` it lists.
    ///
    /// A slice without a service (no `kubernetes.io/service-name` label) counts as none. Replaces
    /// what the slice said before; touches only the pods it lists now or listed then.
    pub fn set_slice(&mut self, namespace: &str, name: &str, service: Option<&str>, endpoints: Vec<PodEndpoint>) {
        let service = service.filter(|s| !s.is_empty());
        let key = (namespace.to_owned(), name.to_owned());
        let same = match (self.slices.get(&key), service) {
            (Some(old), Some(service)) => old.service == service && old.endpoints == endpoints,
            (None, None) => true,
            _ => false,
        };
        // A re-list or a status-only update of a slice changes nothing: no node stream wakes.
        if same {
            return;
        }
        self.remove_slice(namespace, name);
        self.changed();
        let Some(service) = service else { return };
        for endpoint in &endpoints {
            let pods = self.services.entry(endpoint.node.clone()).or_default().entry(namespace.to_owned()).or_default();
            *pods.entry(endpoint.pod.clone()).or_default().entry(service.to_owned()).or_default() += 1;
        }
        let slice = Slice { namespace: namespace.to_owned(), service: service.to_owned(), endpoints };
        self.slices.insert((namespace.to_owned(), name.to_owned()), slice);
    }

    /// Removes what the EndpointSlice `namespace`/`name` said, if anything.
    pub fn remove_slice(&mut self, namespace: &str, name: &str) {
        let Some(old) = self.slices.remove(&(namespace.to_owned(), name.to_owned())) else { return };
        self.changed();
        for endpoint in old.endpoints {
            let Some(by_namespace) = self.services.get_mut(&endpoint.node) else { continue };
            let Some(pods) = by_namespace.get_mut(&old.namespace) else { continue };
            let Some(services) = pods.get_mut(&endpoint.pod) else { continue };
            if let Some(count) = services.get_mut(&old.service) {
                *count -= 1;
                if *count == 0 {
                    services.remove(&old.service);
                }
            }
            // Empty levels go, so that the index holds only what is listed.
            if services.is_empty() {
                pods.remove(&endpoint.pod);
            }
            if pods.is_empty() {
                by_namespace.remove(&old.namespace);
            }
            if by_namespace.is_empty() {
                self.services.remove(&endpoint.node);
            }
        }
    }

    /// Sets a node's labels and annotations; a node is known from then on.
    pub fn set_node(&mut self, name: &str, meta: Meta) {
        if self.nodes.get(name) != Some(&meta) {
            self.nodes.insert(name.to_owned(), meta);
            self.changed();
        }
    }

    /// Forgets a node (its pods' services stay as long as slices list them).
    pub fn remove_node(&mut self, name: &str) {
        if self.nodes.remove(name).is_some() {
            self.changed();
        }
    }

    /// Sets a namespace's labels and annotations.
    pub fn set_namespace(&mut self, name: &str, meta: Meta) {
        if self.namespaces.get(name) != Some(&meta) {
            Arc::make_mut(&mut self.namespaces).insert(name.to_owned(), meta);
            self.changed();
        }
    }

    /// Forgets a namespace.
    pub fn remove_namespace(&mut self, name: &str) {
        if self.namespaces.contains_key(name) {
            Arc::make_mut(&mut self.namespaces).remove(name);
            self.changed();
        }
    }

    /// Keeps only the namespaces for which `keep` is true.
    fn retain_namespaces(&mut self, keep: impl Fn(&str) -> bool) {
        if self.namespaces.keys().any(|n| !keep(n)) {
            Arc::make_mut(&mut self.namespaces).retain(|n, _| keep(n));
            self.changed();
        }
    }

    /// Keeps only the nodes for which `keep` is true.
    fn retain_nodes(&mut self, keep: impl Fn(&str) -> bool) {
        if self.nodes.keys().any(|n| !keep(n)) {
            self.nodes.retain(|n, _| keep(n));
            self.changed();
        }
    }

    /// Records that every watch has listed once ([`follow`] does it; so may another feeder).
    pub fn mark_synced(&mut self) {
        if !self.synced {
            self.synced = true;
            self.changed();
        }
    }

    /// Returns the services each pod of `node` backs, by namespace; `None` when no slice lists
    /// a pod of that node.
    pub fn services_on(&self, node: &str) -> Option<&BTreeMap<String, PodServices>> {
        self.services.get(node)
    }

    /// Returns a node's labels and annotations; `None` for a node not (or no longer) known.
    pub fn node(&self, name: &str) -> Option<&Meta> {
        self.nodes.get(name)
    }

    /// Returns a namespace's labels and annotations; `None` for one not (or no longer) known.
    pub fn namespace(&self, name: &str) -> Option<&Meta> {
        self.namespaces.get(name)
    }

    /// Counts one change, waking the node streams.
    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Returns a receiver that wakes at each change to the index from now on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Returns what a node agent on `node` is told: the node's labels and annotations, every
    /// namespace's (shared, not copied), and the services each pod of the node backs.
    pub fn node_view(&self, node: &str) -> NodeView {
        NodeView {
            node: self.nodes.get(node).cloned().unwrap_or_default(),
            namespaces: self.namespaces.clone(),
            pods: self
                .services
                .get(node)
                .into_iter()
                .flatten()
                .map(|(namespace, pods)| {
                    let pods = pods.iter().map(|(pod, services)| (pod.clone(), services.keys().cloned().collect()));
                    (namespace.clone(), pods.collect())
                })
                .collect(),
        }
    }

    /// Tells whether every watch has listed once since [`follow`] started: before that, a node,
    /// namespace or service missing from the index may only not be listed yet.
    pub fn synced(&self) -> bool {
        self.synced
    }
}

/// The services each pod of one node backs: namespace → pod → services, sorted.
pub type NodePods = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// What the cluster agent tells the node agent of one node ([`ClusterIndex::node_view`]): what
/// the node agent's `kube_metadata` collector would otherwise watch the API server for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    /// The node's labels and annotations; empty while the node is not known.
    pub node: Meta,
    /// Every namespace's labels and annotations, by name (a node agent cannot know in advance
    /// which namespaces its pods will be in). One map shared by every view taken between two
    /// namespace changes.
    pub namespaces: Arc<BTreeMap<String, Meta>>,
    /// The services each pod of the node backs.
    pub pods: NodePods,
}

/// One line of a node stream (`GET /api/v1/stream/node/{node}`, `docs/wire/cluster-agent-api.md`):
/// the whole view (`snapshot`), or what changed since the line before. An empty update is the
/// heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeUpdate {
    /// The line carries the whole view: whatever the reader held is replaced.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
    /// The update goes on in the next line (a large one is split by namespaces): the reader
    /// applies it but acts only once a line without `more` has arrived.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    /// The node's metadata, when it changed (empty when the node is no longer known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<Meta>,
    /// The namespaces that changed: the new metadata, or `null` for one deleted.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, Option<Meta>>,
    /// The node's pods and their services, whole, when any changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods: Option<NodePods>,
}

impl NodeUpdate {
    /// The update that carries `view` whole.
    pub fn snapshot(view: &NodeView) -> Self {
        Self {
            snapshot: true,
            more: false,
            node: Some(view.node.clone()),
            namespaces: view.namespaces.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect(),
            pods: Some(view.pods.clone()),
        }
    }

    /// The update that turns `before` into `after`; `None` when they are equal.
    pub fn between(before: &NodeView, after: &NodeView) -> Option<Self> {
        let mut update = Self::default();
        if before.node != after.node {
            update.node = Some(after.node.clone());
        }
        // Views taken between two namespace changes share one map: nothing to compare.
        if !Arc::ptr_eq(&before.namespaces, &after.namespaces) {
            for (name, meta) in after.namespaces.iter() {
                if before.namespaces.get(name) != Some(meta) {
                    update.namespaces.insert(name.clone(), Some(meta.clone()));
                }
            }
            for name in before.namespaces.keys().filter(|n| !after.namespaces.contains_key(*n)) {
                update.namespaces.insert(name.clone(), None);
            }
        }
        if before.pods != after.pods {
            update.pods = Some(after.pods.clone());
        }
        (update != Self::default()).then_some(update)
    }

    /// Tells whether the update changes nothing (a heartbeat).
    pub fn is_heartbeat(&self) -> bool {
        *self == Self::default()
    }

    /// Writes the update as lines of JSON, each ending in a newline: one line, or, when it is
    /// longer than `max` bytes, its namespaces spread over several, every line but the last
    /// marked `more` (the first keeps `snapshot`, the node and the pods). A line is then at most
    /// `max` bytes plus one namespace's metadata, which Kubernetes bounds (an object is at most
    /// about 1.5 MiB).
    pub fn into_lines(self, max: usize) -> Vec<Vec<u8>> {
        let line = |update: &NodeUpdate| {
            let mut text = serde_json::to_vec(update).unwrap_or_else(|_| b"{}".to_vec());
            text.push(b'\n');
            text
        };
        let whole = line(&self);
        if whole.len() <= max || self.namespaces.len() < 2 {
            return vec![whole];
        }
        let Self { snapshot, node, namespaces, pods, .. } = self;
        let mut updates = vec![Self { snapshot, node, pods, ..Self::default() }];
        let mut size = 0;
        for (name, meta) in namespaces {
            let entry = name.len() + serde_json::to_vec(&meta).map_or(0, |m| m.len()) + 4;
            if size + entry > max && !updates.last().is_some_and(|u| u.namespaces.is_empty()) {
                updates.push(Self::default());
                size = 0;
            }
            size += entry;
            if let Some(last) = updates.last_mut() {
                last.namespaces.insert(name, meta);
            }
        }
        let n = updates.len();
        updates
            .into_iter()
            .enumerate()
            .map(|(i, mut u)| {
                u.more = i + 1 < n;
                line(&u)
            })
            .collect()
    }

    /// Applies the update to `view`.
    pub fn apply_to(self, view: &mut NodeView) {
        if self.snapshot {
            *view = NodeView::default();
        }
        if let Some(node) = self.node {
            view.node = node;
        }
        if !self.namespaces.is_empty() {
            let namespaces = Arc::make_mut(&mut view.namespaces);
            for (name, meta) in self.namespaces {
                match meta {
                    Some(meta) => namespaces.insert(name, meta),
                    None => namespaces.remove(&name),
                };
            }
        }
        if let Some(pods) = self.pods {
            view.pods = pods;
        }
    }
}

/// The keys a list in progress has returned so far, for one kind of object. When the list
/// completes, the index drops what it holds of that kind and the list did not return (deleted
/// while the watch was down); until then it keeps the old objects, so a re-list never shows a
/// gap. The index itself says what it holds, so a new run of [`follow`] drops what was deleted
/// between runs too.
#[derive(Debug, Default)]
struct Listing {
    keys: Option<HashSet<(String, String)>>,
}

/// What one watch event does to the index, for one kind.
enum Step<K> {
    /// Set or replace this object.
    Set(K),
    /// Remove the object with this key.
    Remove((String, String)),
    /// A list completed with these keys: drop every other object of the kind.
    Listed(HashSet<(String, String)>),
    /// Nothing (a list starting).
    Nothing,
}

impl Listing {
    /// Turns a watch event into what to do; `key` gives an object's (namespace, name).
    fn step<K>(&mut self, event: Event<K>, key: impl Fn(&K) -> (String, String)) -> Step<K> {
        match event {
            Event::Init => {
                self.keys = Some(HashSet::new());
                Step::Nothing
            }
            Event::InitApply(object) => {
                if let Some(keys) = self.keys.as_mut() {
                    keys.insert(key(&object));
                }
                Step::Set(object)
            }
            // A list's end without its start (kube-runtime never sends one) drops nothing.
            Event::InitDone => self.keys.take().map_or(Step::Nothing, Step::Listed),
            Event::Apply(object) => Step::Set(object),
            Event::Delete(object) => Step::Remove(key(&object)),
        }
    }
}

/// One item from any of the three watches.
enum Update {
    Slice(Event<EndpointSlice>),
    Namespace(Event<PartialObjectMeta<Namespace>>),
    Node(Event<PartialObjectMeta<Node>>),
}

/// An object's (namespace, name); empty parts when it has none.
fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

/// The uid, labels and annotations of a metadata-only object, without the annotations never
/// stored (`crate::keeps_annotation`: `kubectl`'s last applied configuration and the like).
fn meta_of<K>(object: &PartialObjectMeta<K>) -> Meta {
    let mut annotations = object.metadata.annotations.clone().unwrap_or_default();
    annotations.retain(|k, _| crate::keeps_annotation(k));
    Meta {
        uid: object.metadata.uid.clone().unwrap_or_default(),
        labels: object.metadata.labels.clone().unwrap_or_default(),
        annotations,
    }
}

/// Sets what an EndpointSlice says in `index`: the pods its endpoints point at (endpoints of
/// other kinds, or without a node, are not pods of a node) and its service.
fn set_slice(index: &mut ClusterIndex, slice: &EndpointSlice) {
    let (namespace, name) = key_of(&slice.metadata);
    let service = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
    let endpoints = slice
        .endpoints
        .iter()
        .flatten()
        .filter_map(|e| {
            let target = e.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod"))?;
            Some(PodEndpoint { node: e.node_name.clone()?, pod: target.name.clone()? })
        })
        .collect();
    index.set_slice(&namespace, &name, service.map(String::as_str), endpoints);
}

/// Follows the cluster into `index`: EndpointSlices (whole: their endpoints are what is
/// indexed), namespaces and nodes (metadata only), across the cluster, each list served from the
/// API server's watch cache. A failed watch retries on its own with backoff (logged).
///
/// # Errors
///
/// Returns a retriable error when the watches end, which they do not while the client lives.
pub async fn follow(client: kube::Client, index: Arc<RwLock<ClusterIndex>>) -> Result<(), CollectorError> {
    let cached = watcher::Config::default().any_semantic();
    // Each watch retries on its own with kube-runtime's backoff (and lists again after a `410
    // Gone`), so that one watch's failure does not re-list the other two: at 1,000 nodes the
    // lists are what costs.
    let slices = watcher::watcher(Api::<EndpointSlice>::all(client.clone()), cached.clone())
        .default_backoff()
        .map(|r| r.map(Update::Slice));
    let namespaces = watcher::watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), cached.clone())
        .default_backoff()
        .map(|r| r.map(Update::Namespace));
    let nodes = watcher::watcher(Api::<PartialObjectMeta<Node>>::all(client), cached)
        .default_backoff()
        .map(|r| r.map(Update::Node));
    let streams: Vec<BoxStream<'static, Result<Update, watcher::Error>>> =
        vec![slices.boxed(), namespaces.boxed(), nodes.boxed()];
    let mut updates = futures::stream::select_all(streams);
    let (mut slices, mut namespaces, mut nodes) = (Listing::default(), Listing::default(), Listing::default());
    let mut listed = [false; 3];
    while let Some(update) = updates.next().await {
        let update = match update {
            Ok(update) => update,
            Err(error) => {
                // The watch backs off and tries again; the index keeps answering meanwhile.
                tracing::warn!(%error, "cluster agent: a watch failed; it retries with backoff");
                continue;
            }
        };
        let mut index = index.writing();
        match update {
            Update::Slice(event) => match slices.step(event, |s| key_of(&s.metadata)) {
                Step::Set(slice) => set_slice(&mut index, &slice),
                Step::Remove((namespace, name)) => index.remove_slice(&namespace, &name),
                Step::Listed(keys) => {
                    let gone: Vec<_> = index.slices.keys().filter(|k| !keys.contains(*k)).cloned().collect();
                    gone.iter().for_each(|(namespace, name)| index.remove_slice(namespace, name));
                    listed[0] = true;
                }
                Step::Nothing => {}
            },
            Update::Namespace(event) => match namespaces.step(event, |n| key_of(&n.metadata)) {
                Step::Set(namespace) => index.set_namespace(&key_of(&namespace.metadata).1, meta_of(&namespace)),
                Step::Remove((_, name)) => index.remove_namespace(&name),
                Step::Listed(keys) => {
                    index.retain_namespaces(|name| keys.contains(&(String::new(), name.to_owned())));
                    listed[1] = true;
                }
                Step::Nothing => {}
            },
            Update::Node(event) => match nodes.step(event, |n| key_of(&n.metadata)) {
                Step::Set(node) => index.set_node(&key_of(&node.metadata).1, meta_of(&node)),
                Step::Remove((_, name)) => index.remove_node(&name),
                Step::Listed(keys) => {
                    index.retain_nodes(|name| keys.contains(&(String::new(), name.to_owned())));
                    listed[2] = true;
                }
                Step::Nothing => {}
            },
        }
        if listed.iter().all(|l| *l) {
            index.mark_synced();
        }
    }
    Err(CollectorError::Retriable { context: "cluster agent: the watches ended".into(), source: None })
}

/// The name of [`ClusterIndexCollector`] in health, telemetry and dumps.
pub const NAME: &str = "cluster_index";

/// Runs [`follow`] under the store's supervision: its health in the store's, ready once every
/// watch has listed. It stores no entity: what it keeps
/// is the index, which the cluster agent's API reads.
#[derive(Debug)]
pub struct ClusterIndexCollector {
    kubeconfig: Option<PathBuf>,
    index: Arc<RwLock<ClusterIndex>>,
}

impl ClusterIndexCollector {
    /// Creates the collector: the API server from the kubeconfig at `kubeconfig`, else the
    /// in-cluster config; the index it keeps, `index`. Does no I/O.
    pub fn new(kubeconfig: Option<PathBuf>, index: Arc<RwLock<ClusterIndex>>) -> Self {
        Self { kubeconfig, index }
    }

    /// Wraps the collector for the store, which runs it as a change stream.
    pub fn into_collector(self) -> Collector {
        Collector::stream(NAME, Source::ClusterOrchestrator, self)
    }
}

#[async_trait]
impl StreamCollector for ClusterIndexCollector {
    /// Follows the cluster into the index until the store shuts down; sends one empty list (the
    /// collector's readiness) once the index has been synced. No API server (no kubeconfig, not
    /// in a cluster) is a permanent failure.
    async fn run(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        // A cluster agent with no API server serves nothing: that is a failure, never an absent
        // environment (which health counts as ready).
        let client = match crate::metadata::api_client(self.kubeconfig.as_deref(), NAME).await {
            Err(CollectorError::EnvironmentAbsent { reason, .. }) => {
                let context = format!("{NAME}: no API server: {reason}");
                return Err(CollectorError::Permanent { context, source: None });
            }
            other => other?,
        };
        let following = follow(client, self.index.clone());
        tokio::pin!(following);
        let mut ready = false;
        loop {
            tokio::select! {
                biased;
                () = ctx.cancel.cancelled() => return Ok(()),
                result = &mut following => return result,
                () = tokio::time::sleep(Duration::from_millis(100)), if !ready => {
                    if self.index.reading().synced() {
                        ctx.sink.full_list(Vec::new()).await;
                        ready = true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(list: &[(&str, &str)]) -> Vec<PodEndpoint> {
        list.iter().map(|(node, pod)| PodEndpoint { node: (*node).into(), pod: (*pod).into() }).collect()
    }

    #[test]
    fn a_slice_change_touches_only_its_pods_and_dual_stack_slices_count_once_each() {
        let mut index = ClusterIndex::default();
        index.set_slice("shop", "web-v4", Some("web"), endpoints(&[("n1", "web-1"), ("n1", "web-2")]));
        index.set_slice("shop", "web-v6", Some("web"), endpoints(&[("n1", "web-1")]));
        index.set_slice("shop", "api-1", Some("api"), endpoints(&[("n1", "api-1")]));
        // web-2 leaves the IPv4 slice: it loses the service; web-1 keeps it through the IPv6 one.
        index.set_slice("shop", "web-v4", Some("web"), endpoints(&[("n1", "web-1")]));
        let pods = &index.services_on("n1").unwrap()["shop"];
        assert_eq!(pods.keys().collect::<Vec<_>>(), ["api-1", "web-1"]);
        index.remove_slice("shop", "web-v6");
        assert_eq!(index.services_on("n1").unwrap()["shop"]["web-1"]["web"], 1);
        index.remove_slice("shop", "web-v4");
        index.remove_slice("shop", "api-1");
        // Nothing left: no empty node, namespace or pod entry stays behind.
        assert!(index.services_on("n1").is_none());
        assert!(index.slices.is_empty() && index.services.is_empty());
        // Removing what was never set is no error.
        index.remove_slice("shop", "never");
    }

    #[test]
    fn a_node_view_holds_its_pods_and_every_namespace_and_updates_rebuild_it() {
        let mut index = ClusterIndex::default();
        let mut changes = index.subscribe();
        let meta =
            |k: &str, v: &str| Meta { uid: "u".into(), labels: [(k.into(), v.into())].into(), ..Meta::default() };
        index.set_node("n1", meta("zone", "a"));
        index.set_namespace("shop", meta("team", "a"));
        index.set_namespace("ops", meta("team", "b"));
        index.set_slice("shop", "web-1", Some("web"), endpoints(&[("n1", "web-1"), ("n2", "web-2")]));
        assert!(changes.has_changed().unwrap(), "a change wakes the streams");
        changes.mark_unchanged();
        let before = index.node_view("n1");
        assert_eq!(before.pods, NodePods::from([("shop".into(), [("web-1".into(), vec!["web".into()])].into())]));
        assert_eq!(before.namespaces.len(), 2);
        assert_eq!(before.node.labels["zone"], "a");
        // Nothing changed: no update. A snapshot rebuilds the view from nothing.
        assert_eq!(NodeUpdate::between(&before, &before), None);
        let mut copy = NodeView::default();
        NodeUpdate::snapshot(&before).apply_to(&mut copy);
        assert_eq!(copy, before);
        // A label change, a deleted namespace, a new service: one update carries all three.
        index.set_namespace("shop", meta("team", "c"));
        index.remove_namespace("ops");
        index.set_slice("shop", "api-1", Some("api"), endpoints(&[("n1", "web-1")]));
        let after = index.node_view("n1");
        let update = NodeUpdate::between(&before, &after).unwrap();
        assert_eq!(update.namespaces.get("ops"), Some(&None));
        assert!(update.node.is_none() && update.pods.is_some());
        // Sent as one line of JSON and read back.
        let line = serde_json::to_string(&update).unwrap();
        let read: NodeUpdate = serde_json::from_str(&line).unwrap();
        read.apply_to(&mut copy);
        assert_eq!(copy, after);
        // The heartbeat is the empty update; it changes nothing.
        let heartbeat: NodeUpdate = serde_json::from_str("{}").unwrap();
        assert!(heartbeat.is_heartbeat());
        heartbeat.apply_to(&mut copy);
        assert_eq!(copy, after);
        // What changes nothing wakes nothing: the same metadata, the same slice, an unknown name.
        changes.mark_unchanged();
        index.set_namespace("shop", meta("team", "c"));
        index.set_node("n1", meta("zone", "a"));
        index.set_slice("shop", "api-1", Some("api"), endpoints(&[("n1", "web-1")]));
        index.remove_slice("shop", "never");
        index.remove_namespace("never");
        assert!(!changes.has_changed().unwrap());
        // Views taken between two namespace changes share one map.
        assert!(Arc::ptr_eq(&index.node_view("n1").namespaces, &index.node_view("n2").namespaces));
        // Another node's view is untouched by n1's pods.
        assert_eq!(index.node_view("n2").pods["shop"]["web-2"], ["web"]);
        assert_eq!(index.node_view("n9").node, Meta::default());
    }

    #[test]
    fn a_large_update_is_split_by_namespaces_and_every_line_but_the_last_says_more() {
        let mut index = ClusterIndex::default();
        let big = "x".repeat(1000);
        for n in 0..50 {
            index.set_namespace(
                &format!("ns-{n:02}"),
                Meta { labels: [("k".into(), big.clone())].into(), ..Meta::default() },
            );
        }
        index.set_slice("ns-00", "s", Some("web"), endpoints(&[("n1", "p")]));
        let view = index.node_view("n1");
        let lines = NodeUpdate::snapshot(&view).into_lines(10_000);
        assert!(lines.len() >= 5, "{} lines", lines.len());
        let mut copy = NodeView::default();
        for (i, line) in lines.iter().enumerate() {
            assert!(line.len() <= 10_000 + 1_100 && line.ends_with(b"\n"));
            let update: NodeUpdate = serde_json::from_slice(line).unwrap();
            assert_eq!(update.more, i + 1 < lines.len());
            assert_eq!(update.snapshot, i == 0, "only the first line replaces the view");
            update.apply_to(&mut copy);
        }
        assert_eq!(copy, view);
        // A small update is one line.
        assert_eq!(NodeUpdate { pods: Some(NodePods::new()), ..NodeUpdate::default() }.into_lines(10_000).len(), 1);
    }

    #[test]
    fn a_list_says_which_keys_it_returned_and_events_set_or_remove() {
        let mut listing = Listing::default();
        let key = |k: &(String, String)| k.clone();
        let object = |name: &str| (String::new(), name.to_owned());
        assert!(matches!(listing.step(Event::Apply(object("a")), key), Step::Set(_)));
        assert!(matches!(listing.step(Event::Init, key), Step::Nothing));
        assert!(matches!(listing.step(Event::InitApply(object("b")), key), Step::Set(_)));
        assert!(matches!(listing.step(Event::InitApply(object("c")), key), Step::Set(_)));
        let Step::Listed(keys) = listing.step(Event::InitDone, key) else { panic!("a completed list") };
        assert_eq!(keys, HashSet::from([object("b"), object("c")]));
        let Step::Remove(removed) = listing.step(Event::Delete(object("c")), key) else { panic!("a delete") };
        assert_eq!(removed, object("c"));
        // A list's end without its start drops nothing.
        assert!(matches!(listing.step(Event::InitDone, key), Step::Nothing));
    }
}
