//! The Datadog IPC gRPC service `datadog.api.v1.AgentSecure`: the tagger's and workloadmeta's
//! rpcs, behind bearer-token auth.
//!
//! Each stream rpc is fed by a task of its own. The task reads its source (the tag store's
//! changes, or a store subscription) as fast as changes come, so that neither the store nor the
//! tagger ever waits for a client. It keeps what the client is still owed as a backlog with one
//! entry per entity, in which the latest change wins: a burst of changes to one container becomes
//! one event. It sends that backlog as batched responses, each at most half the message-size
//! limit, whenever the client's connection takes them (a few responses can wait there). A client
//! that reads at a normal pace is thus never cut off by a burst: the backlog grows with the
//! number of entities, not of changes.
//!
//! A client that takes no response for 5 s while it is owed some (the same grace the store gives
//! its own subscribers) is cut off with `RESOURCE_EXHAUSTED`, and is expected to reconnect for a
//! fresh snapshot. An entity too large for a response is logged once and sent trimmed, or
//! skipped if still too large, so that it never fails anyone's snapshot: a workloadmeta entity
//! loses its labels, annotations, env vars and ECS tags, a tagger entity each tag over 4 KiB.
//!
//! The first responses of a stream are its snapshot; the workloadmeta stream marks the last of
//! them as complete. An empty response is a keep-alive, sent after 9 minutes without a response.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use tagger::{TagCardinality, TagEventKind, Tagger, TaggerEntityId};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use wm_core::{CancellationToken, Entity, EventType, EventTypeFilter, Filter, Source, SubscriberPriority};
use wm_ipc::MAX_MESSAGE_SIZE;
use wm_ipc::convert;
use wm_ipc::proto::api::v1::agent_secure_server::AgentSecure;
use wm_ipc::proto::model::v1 as model;
use wm_ipc::proto::workloadmeta as wmpb;
use wm_store::Store;

use crate::security::{BearerRefused, check_bearer};

/// How long a stream may go without sending a response before it sends an empty one as a
/// keep-alive.
pub const KEEPALIVE: Duration = Duration::from_secs(9 * 60);
/// How many responses may wait for the client's connection to take them, each up to half the
/// message-size limit.
const CLIENT_QUEUE: usize = 4;
/// How long a client that is owed responses may take none before its stream is ended.
pub const LAG_GRACE: Duration = Duration::from_secs(5);
/// How many backlog entries are turned into responses at a time.
const FLUSH_BATCH: usize = 1024;
/// A tag longer than this, in bytes, is dropped from an entity too large for a response.
const MAX_TAG_LEN: usize = 4096;
/// How many entities are remembered as already logged for being too large. Past that, all are
/// forgotten, and an entity may be logged again.
const MAX_REPORTED: usize = 1024;

/// The stream of responses that a stream rpc hands to tonic.
type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The gRPC interceptor that checks `authorization: Bearer <token>` on every call, and marks the
/// connection as authenticated when the check passes.
#[derive(Clone)]
pub struct BearerAuth {
    token: Arc<str>,
}

/// Shows the type's name only, never the token.
impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerAuth")
    }
}

impl BearerAuth {
    /// Returns an interceptor that accepts exactly `token`.
    pub fn new(token: &str) -> Self {
        Self { token: Arc::from(token) }
    }
}

/// Returns what the accept loop recorded about a request's connection, or `None` when the
/// request did not come through it (as in tests that serve the API on a transport of their own).
fn peer_info(extensions: &tonic::Extensions) -> Option<&crate::conn::PeerInfo> {
    extensions
        .get::<tonic::transport::server::TlsConnectInfo<crate::conn::PeerInfo>>()
        .map(tonic::transport::server::TlsConnectInfo::get_ref)
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let value = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        // The Datadog Agent's messages, which its clients match on.
        match check_bearer(value, &self.token) {
            Ok(()) => {}
            Err(BearerRefused::NotBearer) => {
                return Err(Status::unauthenticated("Request unauthenticated with Bearer"));
            }
            Err(BearerRefused::WrongToken) => {
                return Err(Status::unauthenticated("invalid auth token: invalid session token"));
            }
        }
        // Mark the connection as authenticated, so that its `IdleTimeout` keeps it open past
        // `server_timeout`.
        if let Some(flag) = peer_info(request.extensions()).and_then(|p| p.authenticated.as_ref()) {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(request)
    }
}

/// Reads the host files that origin detection needs: each process's cgroup, and the inode
/// numbers of the cgroup v2 hierarchy.
#[derive(Debug)]
pub struct OriginReader {
    proc_root: std::path::PathBuf,
    inodes: tagger::origin::CgroupInodes,
}

impl OriginReader {
    /// Returns a reader of `<proc_root>/<pid>/cgroup` and of the cgroup v2 hierarchy under
    /// `cgroup_root` (or its `unified/` directory). It only looks for the hierarchy now; the files
    /// are read at each lookup.
    pub fn new(proc_root: &std::path::Path, cgroup_root: &std::path::Path) -> Self {
        Self { proc_root: proc_root.to_owned(), inodes: tagger::origin::CgroupInodes::new(cgroup_root) }
    }

    /// Returns the id of the container that process `pid` runs in, read from its cgroup file, or
    /// `None`. It blocks on file reads: call it off the async threads.
    fn by_pid(&self, pid: u32) -> Option<String> {
        let cgroup = std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("cgroup")).ok()?;
        tagger::origin::container_id_from_proc_cgroup(&cgroup, &[]).map(str::to_owned)
    }
}

/// The `AgentSecure` gRPC service: the tagger's and workloadmeta's rpcs over this agent's store
/// and tagger.
#[derive(Clone, Debug)]
pub struct AgentApi {
    store: Store,
    tagger: Arc<Tagger>,
    keepalive: Duration,
    cancel: CancellationToken,
    tasks: TaskTracker,
    origin: Arc<OriginReader>,
}

impl AgentApi {
    /// Returns the service of `store` and `tagger`, with origin detection reading processes under
    /// `/proc` and cgroups under `/sys/fs/cgroup` (see [`AgentApi::with_origin`]).
    ///
    /// Each stream is fed by a task spawned in `tasks`. Every stream ends with `UNAVAILABLE` once
    /// `cancel` is cancelled, so that a shutdown never leaves a client on a stream that no longer
    /// changes, and the agent can wait for all the tasks.
    pub fn new(store: Store, tagger: Arc<Tagger>, cancel: CancellationToken, tasks: TaskTracker) -> Self {
        let origin = Arc::new(OriginReader::new(std::path::Path::new("/proc"), std::path::Path::new("/sys/fs/cgroup")));
        Self { store, tagger, keepalive: KEEPALIVE, cancel, tasks, origin }
    }

    /// Returns the service with origin detection reading processes and cgroups through
    /// `origin`, which the agent builds from `container_proc_root` and `container_cgroup_root`.
    pub fn with_origin(mut self, origin: OriginReader) -> Self {
        self.origin = Arc::new(origin);
        self
    }

    /// Returns the service with keep-alives sent after `every` without a response, instead of
    /// [`KEEPALIVE`]; tests use it to see keep-alives quickly.
    pub fn with_keepalive(mut self, every: Duration) -> Self {
        self.keepalive = every;
        self
    }
}

/// Reads a wire cardinality; an unknown value counts as high.
fn cardinality(value: i32) -> TagCardinality {
    match model::TagCardinality::try_from(value).unwrap_or(model::TagCardinality::High) {
        model::TagCardinality::Low => TagCardinality::Low,
        model::TagCardinality::Orchestrator => TagCardinality::Orchestrator,
        model::TagCardinality::High => TagCardinality::High,
    }
}

/// Returns the wire id of a tag store key (`prefix://uid`).
fn wire_id(entity: &str) -> model::EntityId {
    let id = TaggerEntityId::parse(entity);
    model::EntityId { prefix: id.prefix().to_owned(), uid: id.uid().to_owned() }
}

/// Returns the tagger entity `entity` as a stream sends it, its tags split by cardinality: the
/// low-cardinality and standard tags always, the orchestrator ones from `Orchestrator` up, the
/// high ones at `High`. A `deleted` entity, or one the tag store does not know, has no tags.
///
/// Public for the memory benchmark of the light agent's copy of tags.
pub fn wire_entity(tagger: &Tagger, entity: &str, cardinality: TagCardinality, deleted: bool) -> model::Entity {
    let mut out = model::Entity { id: Some(wire_id(entity)), is_complete: true, ..model::Entity::default() };
    if deleted {
        return out;
    }
    if let Some(info) = tagger.store().tag_info(entity) {
        out.low_cardinality_tags = info.low;
        out.standard_tags = info.standard;
        if cardinality >= TagCardinality::Orchestrator {
            out.orchestrator_cardinality_tags = info.orchestrator;
        }
        if cardinality >= TagCardinality::High {
            out.high_cardinality_tags = info.high;
        }
    }
    out
}

/// Splits `items`, in order, into groups of at most `limit` encoded bytes, one group per
/// response. Each item counts as its encoded size plus 4 bytes, room for its field tag and
/// length prefix. An item larger than `limit` gets a group of its own.
fn chunk<T: Message>(items: Vec<T>, limit: usize) -> Vec<Vec<T>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for item in items {
        let len = item.encoded_len() + 4;
        if !current.is_empty() && size + len > limit {
            chunks.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(item);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Tells whether the tagger entity id `entity` has one of `prefixes`; an empty list matches
/// every entity.
fn matches_prefix(entity: &str, prefixes: &[String]) -> bool {
    TaggerEntityId::parse(entity).has_prefix_in(prefixes)
}

/// What a stream still owes its client: the latest change of each entity, in the order the
/// entities first arrived.
struct Backlog<K, V> {
    order: VecDeque<K>,
    latest: HashMap<K, V>,
}

impl<K: Hash + Eq + Clone, V> Backlog<K, V> {
    fn new() -> Self {
        Self { order: VecDeque::new(), latest: HashMap::new() }
    }

    /// Adds a change; an entity already owed keeps its place and gets `merge(old, new)`.
    fn push(&mut self, key: K, value: V, merge: fn(V, V) -> V) {
        match self.latest.remove(&key) {
            Some(old) => {
                self.latest.insert(key, merge(old, value));
            }
            None => {
                self.order.push_back(key.clone());
                self.latest.insert(key, value);
            }
        }
    }

    /// Removes and returns the first `n` entries owed, or all of them if there are fewer.
    fn take(&mut self, n: usize) -> Vec<V> {
        let mut out = Vec::with_capacity(n.min(self.order.len()));
        while out.len() < n {
            let Some(key) = self.order.pop_front() else { break };
            out.extend(self.latest.remove(&key));
        }
        out
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn len(&self) -> usize {
        self.order.len()
    }
}

/// Logs, once per entity, that an entity was too large for a response. It remembers up to
/// [`MAX_REPORTED`] entities, then forgets them all and starts over.
#[derive(Default)]
struct Oversized(HashSet<String>);

impl Oversized {
    /// Logs that `entity`, of `size` bytes, is sent trimmed to `trimmed_to` bytes, or skipped when
    /// that is `None`, unless it was logged already.
    fn report(&mut self, entity: &str, size: usize, trimmed_to: Option<usize>) {
        if self.0.len() >= MAX_REPORTED {
            self.0.clear();
        }
        if self.0.insert(entity.to_owned()) {
            match trimmed_to {
                Some(trimmed) => {
                    tracing::warn!(entity, size, trimmed, "an entity too large for a stream response is sent trimmed")
                }
                None => tracing::warn!(entity, size, "an entity too large for a stream response is skipped"),
            }
        }
    }
}

/// Returns a copy of `entity` without what can make it huge: labels, annotations and env vars,
/// a pod's namespace labels and annotations, an ECS task's tags and container instance tags, and
/// a process's command line.
fn trimmed(entity: &Entity) -> Entity {
    match entity {
        Entity::Container(c) => {
            let mut c = (**c).clone();
            c.labels = Default::default();
            c.env = Default::default();
            Entity::from(c)
        }
        Entity::KubernetesPod(p) => {
            let mut p = (**p).clone();
            p.labels = Default::default();
            p.annotations = Default::default();
            p.details.namespace_labels = Default::default();
            p.details.namespace_annotations = Default::default();
            Entity::from(p)
        }
        Entity::EcsTask(t) => {
            let mut t = (**t).clone();
            t.tags = Default::default();
            t.container_instance_tags = Default::default();
            Entity::from(t)
        }
        Entity::KubernetesMetadata(m) => {
            let mut m = (**m).clone();
            m.labels = Default::default();
            m.annotations = Default::default();
            Entity::from(m)
        }
        Entity::Process(p) => {
            let mut p = (**p).clone();
            p.cmdline = Default::default();
            Entity::from(p)
        }
        Entity::ContainerImageMetadata(i) => {
            let mut i = (**i).clone();
            i.layers = Default::default();
            Entity::from(i)
        }
    }
}

/// Returns the wire event of a workloadmeta change (`set`, or unset), trimmed when it is over
/// `limit` bytes. Returns `None` when even the trimmed event is over `limit`, or when the wire
/// does not carry the entity's kind.
fn fitting_event(
    set: bool,
    entity: &Entity,
    limit: usize,
    oversized: &mut Oversized,
) -> Option<wmpb::WorkloadmetaEvent> {
    let event = convert::event(set, entity)?;
    let size = event.encoded_len();
    if size <= limit {
        return Some(event);
    }
    let small = convert::event(set, &trimmed(entity))?;
    let fits = small.encoded_len() <= limit;
    oversized.report(&entity.id().to_string(), size, fits.then(|| small.encoded_len()));
    fits.then_some(small)
}

/// Returns a tagger wire entity as it is when it fits in `limit` bytes, else without its tags
/// over [`MAX_TAG_LEN`] bytes, or `None` when it is still too large.
fn fitting_entity(entity: model::Entity, limit: usize, oversized: &mut Oversized) -> Option<model::Entity> {
    let size = entity.encoded_len();
    if size <= limit {
        return Some(entity);
    }
    let name = entity.id.as_ref().map(|id| format!("{}://{}", id.prefix, id.uid)).unwrap_or_default();
    let mut small = entity;
    for tags in [
        &mut small.low_cardinality_tags,
        &mut small.orchestrator_cardinality_tags,
        &mut small.high_cardinality_tags,
        &mut small.standard_tags,
    ] {
        tags.retain(|t| t.len() <= MAX_TAG_LEN);
    }
    let fits = small.encoded_len() <= limit;
    oversized.report(&name, size, fits.then(|| small.encoded_len()));
    fits.then_some(small)
}

#[tonic::async_trait]
impl AgentSecure for AgentApi {
    type TaggerStreamEntitiesStream = ResponseStream<model::StreamTagsResponse>;
    type WorkloadmetaStreamEntitiesStream = ResponseStream<wmpb::WorkloadmetaStreamResponse>;

    /// Streams the tags of the entities with a prefix the request names (every entity when it
    /// names none), at the request's cardinality: first every entity as added, then each change.
    async fn tagger_stream_entities(
        &self,
        request: Request<model::StreamTagsRequest>,
    ) -> Result<Response<Self::TaggerStreamEntitiesStream>, Status> {
        let request = request.into_inner();
        let cardinality = cardinality(request.cardinality);
        let prefixes = request.prefixes;
        let tagger = self.tagger.clone();
        let changes = tagger.store().subscribe("", cardinality, 4096);
        // The tag store drops a subscription that leaves 4,096 batches unread. The stream then
        // ends with `RESOURCE_EXHAUSTED`, telling the client to reconnect.
        let source = futures::stream::unfold(Some(changes), |changes| async move {
            let mut changes = changes?;
            match changes.recv().await {
                Some(batch) => Some((Ok(batch), Some(changes))),
                None => Some((Err(Status::resource_exhausted("the stream fell behind; reconnect")), None)),
            }
        });
        let key = move |e: tagger::TagEvent| {
            matches_prefix(&e.entity, &prefixes).then(|| (e.entity.clone(), (e.entity, e.kind)))
        };
        // An entity added and then modified before the client heard of it must still reach the
        // client as added.
        let merge = |old: (String, TagEventKind), new: (String, TagEventKind)| match (old.1, new.1) {
            (TagEventKind::Added, TagEventKind::Modified) => old,
            _ => new,
        };
        let mut oversized = Oversized::default();
        let respond = move |owed: Vec<(String, TagEventKind)>, snapshot_done: bool| {
            let events: Vec<model::StreamTagsEvent> = owed
                .into_iter()
                .filter_map(|(entity, kind)| {
                    let deleted = kind == TagEventKind::Deleted;
                    let wire = wire_entity(&tagger, &entity, cardinality, deleted);
                    let wire = fitting_entity(wire, MAX_MESSAGE_SIZE / 2, &mut oversized)?;
                    let kind = match kind {
                        TagEventKind::Added => model::EventType::Added,
                        TagEventKind::Modified => model::EventType::Modified,
                        TagEventKind::Deleted => model::EventType::Deleted,
                    };
                    Some(model::StreamTagsEvent { r#type: kind as i32, entity: Some(wire) })
                })
                .collect();
            let mut responses: Vec<model::StreamTagsResponse> = chunk(events, MAX_MESSAGE_SIZE / 2)
                .into_iter()
                .map(|events| model::StreamTagsResponse { events })
                .collect();
            // Send the snapshot even when it is empty: a client's first response is its snapshot.
            if snapshot_done && responses.is_empty() {
                responses.push(model::StreamTagsResponse::default());
            }
            responses
        };
        Ok(Response::new(self.stream(source, key, merge, respond)))
    }

    /// Returns the id of a client's container, found from what the client says of itself: the
    /// container id it gives, else its pod uid and container name, else its process id's
    /// cgroup, else its cgroup inode. The id is empty when none of them leads to a container.
    async fn tagger_generate_container_id_from_origin_info(
        &self,
        request: Request<model::GenerateContainerIdFromOriginInfoRequest>,
    ) -> Result<Response<model::GenerateContainerIdFromOriginInfoResponse>, Status> {
        let request = request.into_inner();
        let local = request.local_data.unwrap_or_default();
        let external = request.external_data.unwrap_or_default();
        let mut id = local.container_id.clone().filter(|id| !id.is_empty());
        if id.is_none()
            && let (Some(pod_uid), Some(name)) =
                (external.pod_uid.clone().or(local.pod_uid.clone()), external.container_name.clone())
        {
            let data = tagger::origin::ExternalData {
                init: external.init.unwrap_or(false),
                container_name: Some(name),
                pod_uid: Some(pod_uid),
            };
            id = tagger::origin::container_id_from_external_data(&self.store, &data);
        }
        // The lookups by process id and by inode read files: run them on the blocking threads.
        if id.is_none()
            && let Some(pid) = local.process_id.filter(|p| *p > 0)
        {
            let origin = self.origin.clone();
            id = tokio::task::spawn_blocking(move || origin.by_pid(pid)).await.ok().flatten();
        }
        if id.is_none()
            && let Some(inode) = local.inode.filter(|i| *i > 0)
        {
            let origin = self.origin.clone();
            id = tokio::task::spawn_blocking(move || origin.inodes.container_id(inode)).await.ok().flatten();
        }
        Ok(Response::new(model::GenerateContainerIdFromOriginInfoResponse { container_id: id.unwrap_or_default() }))
    }

    /// Returns the tags of one entity at the requested cardinality. For a container it does not
    /// know yet, the tagger may first ask the runtimes (`Tagger::tag_or_fetch`).
    async fn tagger_fetch_entity(
        &self,
        request: Request<model::FetchEntityRequest>,
    ) -> Result<Response<model::FetchEntityResponse>, Status> {
        let request = request.into_inner();
        let Some(id) = request.id.filter(|id| !id.uid.is_empty()) else {
            return Err(Status::invalid_argument("missing entity id"));
        };
        let entity = TaggerEntityId::new(id.prefix.clone(), id.uid.clone()).to_string();
        let tags = self.tagger.tag_or_fetch(&entity, cardinality(request.cardinality)).await.to_vec();
        Ok(Response::new(model::FetchEntityResponse { id: Some(id), cardinality: request.cardinality, tags }))
    }

    /// Streams the store's entities that the request's filter passes: first a snapshot, its last
    /// response marked complete, then each change.
    async fn workloadmeta_stream_entities(
        &self,
        request: Request<wmpb::WorkloadmetaStreamRequest>,
    ) -> Result<Response<Self::WorkloadmetaStreamEntitiesStream>, Status> {
        let peer = peer_info(request.extensions())
            .and_then(|p| p.tcp.remote_addr())
            .map_or_else(|| "unknown peer".to_owned(), |a| a.to_string());
        let filter = workloadmeta_filter(request.into_inner().filter.unwrap_or_default())?;
        // One name for every stream client: the subscriber name labels a metric series, and a
        // name built from the peer's ephemeral port would add a series on every reconnect.
        tracing::debug!(%peer, "a remote-workloadmeta stream starts");
        let subscription = self.store.subscribe("remote-workloadmeta", SubscriberPriority::Normal, filter);
        // A subscription that the store cut off for lagging ends the stream with the store's
        // reason; the end of the subscription itself means the agent is shutting down. Each
        // bundle is copied into changes at once and acknowledged as soon as it is read, so that a
        // slow client never holds up the store's loop.
        let source = futures::stream::unfold(Some(subscription), |subscription| async move {
            let mut subscription = subscription?;
            match subscription.recv().await? {
                Ok(bundle) => {
                    let changes: Vec<(bool, Entity)> =
                        bundle.events.iter().map(|e| (e.event_type == EventType::Set, e.entity.clone())).collect();
                    Some((Ok(changes), Some(subscription)))
                }
                Err(e) => Some((Err(Status::resource_exhausted(format!("{e}; reconnect"))), None)),
            }
        });
        let key = |(set, entity): (bool, Entity)| Some((entity.id(), (set, entity)));
        let merge = |_old: (bool, Entity), new: (bool, Entity)| new;
        let mut oversized = Oversized::default();
        let respond = move |owed: Vec<(bool, Entity)>, snapshot_done: bool| {
            let events: Vec<wmpb::WorkloadmetaEvent> = owed
                .iter()
                .filter_map(|(set, entity)| fitting_event(*set, entity, MAX_MESSAGE_SIZE / 2, &mut oversized))
                .collect();
            let mut chunks = chunk(events, MAX_MESSAGE_SIZE / 2);
            // Mark the snapshot complete on its last response, and send that response even when
            // the snapshot is empty.
            if snapshot_done && chunks.is_empty() {
                chunks.push(Vec::new());
            }
            let last = chunks.len().saturating_sub(1);
            chunks
                .into_iter()
                .enumerate()
                .map(|(i, events)| wmpb::WorkloadmetaStreamResponse {
                    events,
                    initial_snapshot_complete: snapshot_done && i == last,
                })
                .collect()
        };
        Ok(Response::new(self.stream(source, key, merge, respond)))
    }
}

impl AgentApi {
    /// Returns one client's stream, fed by a task spawned in the agent's tracker (see the module
    /// docs).
    ///
    /// Each item of `source` is a batch of changes; the first item's changes are the snapshot.
    /// `key` gives each change its entity's key and the value to owe, or drops the change;
    /// `merge` folds two owed values of one entity into one; `respond` turns owed values into
    /// responses, with `snapshot_done` set when they end the snapshot.
    ///
    /// An `Err` item ends the stream with its status once everything owed is sent, and the end
    /// of `source` likewise with `UNAVAILABLE`. The agent's shutdown ends the stream at once with
    /// `UNAVAILABLE`, without sending what is owed. A client that takes nothing for
    /// [`LAG_GRACE`] while owed something is cut off with `RESOURCE_EXHAUSTED`. The task also ends
    /// when the client goes away.
    fn stream<I, K, V, T>(
        &self,
        source: impl Stream<Item = Result<Vec<I>, Status>> + Send + 'static,
        key: impl Fn(I) -> Option<(K, V)> + Send + 'static,
        merge: fn(V, V) -> V,
        mut respond: impl FnMut(Vec<V>, bool) -> Vec<T> + Send + 'static,
    ) -> ResponseStream<T>
    where
        I: Send + 'static,
        K: Hash + Eq + Clone + Send + 'static,
        V: Send + 'static,
        T: Default + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Result<T, Status>>(CLIENT_QUEUE);
        let (ended, reason) = tokio::sync::oneshot::channel::<Status>();
        // The client gets the responses, then the status the task ends with, if any. The status
        // goes through a oneshot chained after the channel, so it comes after every response
        // queued before it.
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .chain(futures::stream::once(reason).filter_map(|r| futures::future::ready(r.ok().map(Err))));
        let (keepalive, cancel) = (self.keepalive, self.cancel.clone());
        self.tasks.spawn(async move {
            let end = |status: Status| {
                let _ = ended.send(status);
            };
            let mut source = std::pin::pin!(source);
            let mut backlog: Backlog<K, V> = Backlog::new();
            let mut ready: VecDeque<T> = VecDeque::new();
            // The snapshot is the first item's entries; `snapshot_left` counts down those still
            // to send. Later changes to them merge in place and new entities queue after them,
            // so the snapshot is done when the count reaches 0 or the backlog is empty.
            let mut snapshot_left: Option<usize> = None;
            let mut snapshot_sent = false;
            let mut ending: Option<Status> = None;
            let mut progress = tokio::time::Instant::now();
            let mut last_sent = progress;
            // Both timers are re-armed lazily, when they fire early, rather than on every
            // response: re-arming a tokio timer takes its driver's lock, which a busy stream
            // would otherwise do once per response.
            let quiet = tokio::time::sleep(keepalive);
            tokio::pin!(quiet);
            let lag = tokio::time::sleep(LAG_GRACE);
            tokio::pin!(lag);
            loop {
                if ready.is_empty() && snapshot_left.is_some() && (!backlog.is_empty() || !snapshot_sent) {
                    let (owed, snapshot_done) = match &mut snapshot_left {
                        Some(left) if !snapshot_sent => {
                            let owed = backlog.take(FLUSH_BATCH.min(*left));
                            *left -= owed.len().min(*left);
                            (owed, *left == 0 || backlog.is_empty())
                        }
                        _ => (backlog.take(FLUSH_BATCH), false),
                    };
                    ready.extend(respond(owed, snapshot_done));
                    snapshot_sent |= snapshot_done;
                }
                let owing = !ready.is_empty();
                // Nothing is owed: end here if the stream is ending, and restart the lag clock,
                // since a client can only be late while it is owed something.
                if !owing {
                    if let Some(status) = ending.take() {
                        return end(status);
                    }
                    progress = tokio::time::Instant::now();
                }
                tokio::select! {
                    // Polled in this order: shutdown and a client gone first, then sending what is
                    // owed before reading more changes.
                    biased;
                    () = cancel.cancelled() => return end(Status::unavailable("the agent is shutting down")),
                    () = tx.closed() => return,
                    permit = tx.reserve(), if owing => match permit {
                        Ok(permit) => {
                            if let Some(response) = ready.pop_front() {
                                permit.send(Ok(response));
                            }
                            progress = tokio::time::Instant::now();
                            last_sent = progress;
                        }
                        Err(_) => return,
                    },
                    item = source.next(), if ending.is_none() => match item {
                        Some(Ok(changes)) => {
                            for change in changes {
                                if let Some((k, v)) = key(change) {
                                    backlog.push(k, v, merge);
                                }
                            }
                            snapshot_left.get_or_insert(backlog.len());
                        }
                        Some(Err(status)) => ending = Some(status),
                        None => ending = Some(Status::unavailable("the agent is shutting down")),
                    },
                    () = &mut lag, if owing => {
                        if tokio::time::Instant::now() < progress + LAG_GRACE {
                            lag.as_mut().reset(progress + LAG_GRACE);
                            continue;
                        }
                        tracing::warn!("a stream client took nothing for {LAG_GRACE:?} while owed changes; its stream is ended");
                        return end(Status::resource_exhausted("the client does not keep up; reconnect"));
                    }
                    () = &mut quiet, if !owing => {
                        let now = tokio::time::Instant::now();
                        if now < last_sent + keepalive {
                            quiet.as_mut().reset(last_sent + keepalive);
                            continue;
                        }
                        ready.push_back(T::default());
                        last_sent = now;
                        quiet.as_mut().reset(now + keepalive);
                    }
                }
            }
        });
        Box::pin(stream)
    }
}

/// Returns the store filter that a wire filter asks for, or `INVALID_ARGUMENT` for a kind, a
/// source or an event type that the wire format does not define.
fn workloadmeta_filter(wire: wmpb::WorkloadmetaFilter) -> Result<Filter, Status> {
    // No kind asked means every kind the wire carries. Kinds this agent does not store
    // (processes, image metadata, CRDs) match nothing, so asking only for them gets nothing, not
    // everything.
    let mut kinds = Vec::new();
    for kind in &wire.kinds {
        match wmpb::WorkloadmetaKind::try_from(*kind) {
            Ok(kind) => kinds.extend(convert::from_kind(kind)),
            Err(_) => return Err(Status::invalid_argument(format!("unknown workloadmeta kind {kind}"))),
        }
    }
    if wire.kinds.is_empty() {
        kinds.extend(convert::WIRE_KINDS);
    }
    let mut filter = Filter::only_kinds(kinds);
    match wmpb::WorkloadmetaSource::try_from(wire.source) {
        Ok(wmpb::WorkloadmetaSource::All) => {}
        Ok(wmpb::WorkloadmetaSource::Runtime) => filter = filter.with_source(Source::Runtime),
        Ok(wmpb::WorkloadmetaSource::NodeOrchestrator) => filter = filter.with_source(Source::NodeOrchestrator),
        Ok(wmpb::WorkloadmetaSource::ClusterOrchestrator) => filter = filter.with_source(Source::ClusterOrchestrator),
        Err(_) => return Err(Status::invalid_argument(format!("unknown workloadmeta source {}", wire.source))),
    }
    match wmpb::WorkloadmetaEventType::try_from(wire.event_type) {
        Ok(wmpb::WorkloadmetaEventType::EventTypeAll) => {}
        Ok(wmpb::WorkloadmetaEventType::EventTypeSet) => filter = filter.with_event_type(EventTypeFilter::Set),
        Ok(wmpb::WorkloadmetaEventType::EventTypeUnset) => filter = filter.with_event_type(EventTypeFilter::Unset),
        Err(_) => return Err(Status::invalid_argument(format!("unknown workloadmeta event type {}", wire.event_type))),
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor;
    use wm_core::Kind;

    use super::*;

    fn with_auth(value: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(v) = value {
            request.metadata_mut().insert("authorization", v.parse().unwrap());
        }
        request
    }

    #[tokio::test]
    async fn quiet_streams_get_empty_keepalives_and_end_on_shutdown() {
        let store = Store::new();
        let tagger = Arc::new(Tagger::new(tagger::TaggerConfig::default()));
        let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
        let api = AgentApi::new(store.clone(), tagger, cancel.clone(), tasks.clone())
            .with_keepalive(Duration::from_millis(50));
        let mut tags =
            api.tagger_stream_entities(Request::new(model::StreamTagsRequest::default())).await.unwrap().into_inner();
        let request = Request::new(wmpb::WorkloadmetaStreamRequest::default());
        let mut wm = api.workloadmeta_stream_entities(request).await.unwrap().into_inner();
        // The (empty) snapshots first; the workloadmeta one says it is complete.
        assert_eq!(tags.next().await.unwrap().unwrap().events.len(), 0);
        let snapshot = wm.next().await.unwrap().unwrap();
        assert!(snapshot.events.is_empty() && snapshot.initial_snapshot_complete);
        // Then nothing happens: keep-alives, empty and not marked.
        for _ in 0..2 {
            assert_eq!(tags.next().await.unwrap().unwrap(), model::StreamTagsResponse::default());
            assert_eq!(wm.next().await.unwrap().unwrap(), wmpb::WorkloadmetaStreamResponse::default());
        }
        assert_eq!(tasks.len(), 2, "one task per stream");
        cancel.cancel();
        let ended = loop {
            match tags.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => break status,
                None => panic!("the stream ended without a reason"),
            }
        };
        assert_eq!(ended.code(), tonic::Code::Unavailable);
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await.expect("every stream task ended");
        store.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_sends_changes_gets_no_keepalive_until_it_goes_quiet() {
        let store = Store::new();
        let tagger = Arc::new(Tagger::new(tagger::TaggerConfig::default()));
        let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
        let keepalive = Duration::from_millis(50);
        let api = AgentApi::new(store.clone(), tagger, cancel.clone(), tasks.clone()).with_keepalive(keepalive);
        let request = Request::new(wmpb::WorkloadmetaStreamRequest::default());
        let mut wm = api.workloadmeta_stream_entities(request).await.unwrap().into_inner();
        assert!(wm.next().await.unwrap().unwrap().initial_snapshot_complete);
        // A change every 30 ms for 300 ms: each response carries one, none is a keep-alive,
        // though the keep-alive timer was armed before the first and fires in between.
        for i in 0..10 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let container = wm_core::Container { id: format!("c{i}").into(), ..wm_core::Container::default() };
            store.notify(vec![wm_core::CollectorEvent::set(wm_core::Source::Runtime, container)]).await;
            let response = wm.next().await.unwrap().unwrap();
            assert_eq!(response.events.len(), 1, "change {i}: {response:?}");
        }
        // Then quiet: a keep-alive comes a whole period after the last change, not before.
        let quiet_from = tokio::time::Instant::now();
        assert_eq!(wm.next().await.unwrap().unwrap(), wmpb::WorkloadmetaStreamResponse::default());
        assert!(quiet_from.elapsed() >= keepalive - Duration::from_millis(1), "{:?}", quiet_from.elapsed());
        cancel.cancel();
        tasks.close();
        tasks.wait().await;
        store.shutdown().await;
    }

    #[test]
    fn bearer_auth_accepts_only_the_token() {
        let mut auth = BearerAuth::new("s3cret");
        assert!(auth.call(with_auth(Some("Bearer s3cret"))).is_ok());
        assert!(auth.call(with_auth(Some("bearer s3cret"))).is_ok(), "the scheme is case-insensitive");
        let missing = auth.call(with_auth(None)).unwrap_err();
        assert_eq!(
            (missing.code(), missing.message()),
            (tonic::Code::Unauthenticated, "Request unauthenticated with Bearer")
        );
        let wrong = auth.call(with_auth(Some("Bearer nope"))).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert_eq!(wrong.message(), "invalid auth token: invalid session token");
        assert!(auth.call(with_auth(Some("Basic s3cret"))).is_err());
    }

    #[test]
    fn snapshots_are_chunked_under_the_limit() {
        let events: Vec<model::StreamTagsEvent> = (0..1000)
            .map(|i| model::StreamTagsEvent {
                r#type: 0,
                entity: Some(model::Entity {
                    id: Some(wire_id(&format!("container_id://{i:064}"))),
                    low_cardinality_tags: vec!["x".repeat(100)],
                    ..model::Entity::default()
                }),
            })
            .collect();
        let chunks = chunk(events, 20_000);
        assert!(chunks.len() > 5);
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 1000);
        for c in &chunks {
            assert!(model::StreamTagsResponse { events: c.clone() }.encoded_len() <= 20_000);
        }
    }

    #[test]
    fn prefixes_match_whole_entity_kinds() {
        let p = vec!["container_id".to_owned()];
        assert!(matches_prefix("container_id://abc", &p));
        assert!(!matches_prefix("container_idx://abc", &p));
        assert!(!matches_prefix("kubernetes_pod_uid://u", &p));
        assert!(matches_prefix("kubernetes_pod_uid://u", &[]));
    }

    #[test]
    fn wire_filters_become_store_filters_and_bad_ones_are_refused() {
        let f = workloadmeta_filter(wmpb::WorkloadmetaFilter { kinds: vec![0], source: 1, event_type: 0 }).unwrap();
        assert!(f.passes_kind(Kind::Container) && !f.passes_kind(Kind::KubernetesPod));
        assert_eq!(f.source(), Some(Source::Runtime));
        assert!(workloadmeta_filter(wmpb::WorkloadmetaFilter { kinds: vec![42], ..Default::default() }).is_err());
        let process_only = workloadmeta_filter(wmpb::WorkloadmetaFilter { kinds: vec![3], ..Default::default() });
        assert!(Kind::ALL.iter().all(|k| process_only.as_ref().unwrap().passes_kind(*k) == (*k == Kind::Process)));
        // Datadog's other agents ask for exactly these five kinds; images (5) are not stored yet.
        let datadogs =
            workloadmeta_filter(wmpb::WorkloadmetaFilter { kinds: vec![0, 1, 2, 3, 5], ..Default::default() });
        let datadogs = datadogs.unwrap();
        for k in [Kind::Container, Kind::KubernetesPod, Kind::EcsTask, Kind::Process] {
            assert!(datadogs.passes_kind(k), "{k}");
        }
        let everything = workloadmeta_filter(wmpb::WorkloadmetaFilter::default()).unwrap();
        assert!(everything.passes_kind(Kind::EcsTask) && !everything.passes_kind(Kind::KubernetesMetadata));
        assert!(workloadmeta_filter(wmpb::WorkloadmetaFilter { source: 9, ..Default::default() }).is_err());
    }
}
