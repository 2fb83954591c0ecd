//! The containerd collector: follows containerd's event stream and reports the containers of
//! every namespace it is told to watch as source `runtime`, collector `containerd`.
//!
//! One run: connect to the socket (`cri_socket_path`, or containerd's default), subscribe to
//! `/containers/*` and `/tasks/*` events, make sure the subscription is live, list every
//! watched namespace's containers and tasks and send them as one full list, then turn events
//! into sets and unsets until the stream breaks (then the store runs it again, and its full list
//! reconciles).
//!
//! containerd's subscription has no `since`, and its call only returns with the first event. So
//! the run publishes a marker event of its own (topic [`SYNC_TOPIC`], namespace
//! [`SYNC_NAMESPACE`]) until the marker comes back on its stream: from then on every change is
//! delivered, and only then does it list. Nothing between subscription and list is lost.
//!
//! Namespaces: every one but `containerd_exclude_namespaces` (default `moby`, docker's, which the
//! docker collector reports), or only `containerd_namespaces` when that is set. CRI sandbox
//! (pause) containers are skipped on every path: in lists, in refreshes, and in events about a
//! sandbox seen before or created from an image sandboxes use. A task's exit status and time
//! come from its `/tasks/exit` event and are remembered (until the container is deleted or a
//! relist no longer has it), since deleting the task forgets them.
//!
//! Every call has a deadline (`cri_query_timeout`, default 5 s; connecting:
//! `cri_connection_timeout`, default 1 s). Containers are listed with `ListStream`, one message
//! per container, so a node's list is never bound by the 4 MiB message limit (CRI specs are tens
//! of KB each); a container that cannot be read is skipped and read again later.

#![forbid(unsafe_code)]

mod convert;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_client::events::{
    ContainerCreate, ContainerDelete, ContainerUpdate, TaskCreate, TaskDelete, TaskExit, TaskOom, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    GetContainerRequest, GetImageRequest, GetRequest, ImageCreate, ImageDelete, ImageUpdate, ListContainersRequest,
    ListNamespacesRequest, ListTasksRequest, PublishRequest, SubscribeRequest,
};
use containerd_client::types::Envelope;
use containerd_client::types::v1::Process;
use futures::StreamExt;
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tracing::{debug, warn};
use wm_core::sync::MutexExt;
use wm_core::{
    Collector, CollectorContext, CollectorError, Container, Entity, EntityId, EnvFilter, Kind, Seconds, Source,
};
use wm_driver::{Driver, ListWatch, Listed, Refreshed, WatchStream, Watched, with_deadline};

pub use convert::{Exit, container_from_containerd, is_sandbox, timestamp};

/// containerd's default socket.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
/// The collector's name, as it appears in health, telemetry and dumps.
pub const NAME: &str = "containerd";
/// The topic of the marker event a run publishes to learn that its subscription is live.
pub const SYNC_TOPIC: &str = "/wm-agent/subscribed";
/// The namespace the marker is published in.
pub const SYNC_NAMESPACE: &str = "wm-agent";

/// Where containerd is and which namespaces to watch: the collector's part of the agent config,
/// by its Datadog key names.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerdConfig {
    /// `cri_socket_path`: the socket; unset: [`DEFAULT_SOCKET`].
    pub cri_socket_path: Option<PathBuf>,
    /// `containerd_namespaces`: watch only these namespaces; empty: every namespace but the
    /// excluded ones.
    pub containerd_namespaces: Vec<String>,
    /// `containerd_exclude_namespaces` (default `moby`, docker's, which the docker collector
    /// reports): namespaces never watched, unless `containerd_namespaces` is set.
    pub containerd_exclude_namespaces: Vec<String>,
    /// `cri_query_timeout` (Datadog's key, seconds, default 5): the deadline of every call.
    pub cri_query_timeout: Seconds,
    /// `cri_connection_timeout` (Datadog's key, seconds, default 1): the deadline of connecting.
    pub cri_connection_timeout: Seconds,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        Self {
            cri_socket_path: None,
            containerd_namespaces: Vec::new(),
            containerd_exclude_namespaces: vec!["moby".into()],
            cri_query_timeout: Seconds(5),
            cri_connection_timeout: Seconds(1),
        }
    }
}

/// Entries a cache (image digests, sandboxes, logged-once ids) holds at most before it starts
/// over: bounded memory whatever the node does.
const MAX_CACHED: usize = 16_384;
/// The largest message accepted from containerd (a task list of a dense node; the container
/// list is streamed).
const MAX_MESSAGE: usize = 64 << 20;

fn bounded_insert<T: std::hash::Hash + Eq>(set: &mut HashSet<T>, value: T) -> bool {
    if set.len() >= MAX_CACHED {
        set.clear();
    }
    set.insert(value)
}

impl ContainerdConfig {
    fn deadline(&self) -> Duration {
        self.cri_query_timeout.duration().max(Duration::from_secs(1))
    }

    /// Whether `namespace` is watched.
    pub fn watches(&self, namespace: &str) -> bool {
        if namespace == SYNC_NAMESPACE {
            return false;
        }
        if self.containerd_namespaces.is_empty() {
            !self.containerd_exclude_namespaces.iter().any(|n| n == namespace)
        } else {
            self.containerd_namespaces.iter().any(|n| n == namespace)
        }
    }
}

/// The containerd collector.
#[derive(Debug)]
pub struct ContainerdCollector {
    config: ContainerdConfig,
    /// The env vars containers keep: the store's filter, taken at the start of each run.
    env: EnvFilter,
    /// The last exit of each container's init process, by (namespace, id): dropped when the
    /// container is deleted or a list no longer has it.
    exits: Mutex<HashMap<(String, String), Exit>>,
    /// Image digests by (namespace, image name): a name's entry goes when an `/images/` event
    /// says it changed (re-tagged, deleted), all of them at each reconnect; bounded.
    digests: Arc<Mutex<Digests>>,
    /// CRI sandboxes seen, by (namespace, id), and the images they run: their events are not
    /// containers.
    sandboxes: Mutex<Sandboxes>,
    /// Containers whose record failed to parse, reported once (bounded).
    reported: Mutex<HashSet<String>>,
    /// The clients of the current run.
    clients: Option<Clients>,
}

/// Image digests by (namespace, image name).
type Digests = HashMap<(String, String), String>;

/// What the collector knows of CRI sandboxes.
#[derive(Debug, Default)]
struct Sandboxes {
    ids: HashSet<(String, String)>,
    images: HashSet<String>,
}

/// What containerd has of one container now.
enum Fetched {
    Container(Box<Container>),
    Sandbox,
    Gone,
}

/// The gRPC clients of one run.
#[derive(Clone, Debug)]
struct Clients {
    containers: ContainersClient<Channel>,
    tasks: TasksClient<Channel>,
    images: ImagesClient<Channel>,
    namespaces: NamespacesClient<Channel>,
    events: EventsClient<Channel>,
}

fn namespaced<T>(namespace: &str, message: T) -> Result<Request<T>, CollectorError> {
    let mut request = Request::new(message);
    let value = namespace.parse().map_err(|e| {
        CollectorError::permanent(format!("containerd: namespace {namespace:?} is not a valid header"), e)
    })?;
    request.metadata_mut().insert("containerd-namespace", value);
    Ok(request)
}

fn failed(what: impl Into<String>, status: Status) -> CollectorError {
    CollectorError::retriable(what, status)
}

impl ContainerdCollector {
    /// A collector for `config`.
    pub fn new(config: ContainerdConfig) -> Self {
        Self {
            config,
            env: EnvFilter::default(),
            exits: Mutex::new(HashMap::new()),
            digests: Arc::new(Mutex::new(HashMap::new())),
            sandboxes: Mutex::new(Sandboxes::default()),
            reported: Mutex::new(HashSet::new()),
            clients: None,
        }
    }

    /// This collector, ready to hand to the store.
    pub fn into_collector(self) -> Collector {
        Collector::stream(NAME, Source::Runtime, Driver::new(self))
    }

    fn clients(&self) -> Result<Clients, CollectorError> {
        self.clients.clone().ok_or_else(|| CollectorError::Retriable {
            context: "containerd: not connected (list or refresh before watch)".into(),
            source: None,
        })
    }

    async fn connect(&self) -> Result<Clients, CollectorError> {
        let socket = self
            .config
            .cri_socket_path
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        if !socket.exists() {
            return Err(if self.config.cri_socket_path.as_ref().is_some_and(|p| !p.as_os_str().is_empty()) {
                CollectorError::waiting_for(format!("{} (cri_socket_path)", socket.display()))
            } else {
                CollectorError::absent(format!("no containerd socket at {}", socket.display()))
            });
        }
        let connect_deadline = self.config.cri_connection_timeout.duration().max(Duration::from_millis(100));
        let channel = with_deadline(
            connect_deadline,
            || format!("containerd: connecting to {} (cri_connection_timeout)", socket.display()),
            async {
                containerd_client::connect(&socket).await.map_err(|e| {
                    CollectorError::retriable(format!("containerd: cannot connect to {}", socket.display()), e)
                })
            },
        )
        .await?;
        Ok(Clients {
            containers: ContainersClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE),
            tasks: TasksClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE),
            images: ImagesClient::new(channel.clone()),
            namespaces: NamespacesClient::new(channel.clone()),
            events: EventsClient::new(channel),
        })
    }

    /// Runs one call within `cri_query_timeout`.
    async fn call<T>(
        &self,
        what: impl FnOnce() -> String,
        fut: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, CallError> {
        match tokio::time::timeout(self.config.deadline(), fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(status)) if status.code() == Code::NotFound => Err(CallError::NotFound),
            Ok(Err(status)) => Err(CallError::Failed(failed(what(), status))),
            Err(_) => Err(CallError::Failed(CollectorError::Retriable {
                context: format!("{} timed out after {:?} (cri_query_timeout)", what(), self.config.deadline()),
                source: None,
            })),
        }
    }

    async fn watched_namespaces(&self, clients: &mut Clients) -> Result<Vec<String>, CollectorError> {
        let listed = self
            .call(|| "containerd: listing namespaces".into(), clients.namespaces.list(ListNamespacesRequest::default()))
            .await
            .map_err(CallError::into_error)?;
        Ok(listed.into_inner().namespaces.into_iter().map(|n| n.name).filter(|n| self.config.watches(n)).collect())
    }

    async fn image_digest(&self, clients: &mut Clients, namespace: &str, image: &str) -> Option<String> {
        if image.is_empty() {
            return None;
        }
        let key = (namespace.to_owned(), image.to_owned());
        if let Some(digest) = self.digests.locked().get(&key) {
            return Some(digest.clone());
        }
        let request = namespaced(namespace, GetImageRequest { name: image.to_owned() }).ok()?;
        match self.call(|| format!("containerd: getting image {image}"), clients.images.get(request)).await {
            Ok(response) => {
                let digest = response.into_inner().image.and_then(|i| i.target).map(|t| t.digest)?;
                let mut digests = self.digests.locked();
                if digests.len() >= MAX_CACHED {
                    digests.clear();
                }
                digests.insert(key, digest.clone());
                Some(digest)
            }
            Err(e) => {
                debug!(namespace, image, error = ?e, "containerd: no digest for the image");
                None
            }
        }
    }

    /// Remembers a sandbox, so its events are never taken for a container's.
    fn saw_sandbox(&self, namespace: &str, record: &containerd_client::services::v1::Container) {
        let mut sandboxes = self.sandboxes.locked();
        bounded_insert(&mut sandboxes.ids, (namespace.to_owned(), record.id.clone()));
        if !record.image.is_empty() {
            bounded_insert(&mut sandboxes.images, record.image.clone());
        }
    }

    fn build(
        &self,
        namespace: &str,
        record: &containerd_client::services::v1::Container,
        task: Option<&Process>,
        digest: Option<&str>,
    ) -> Option<Container> {
        let key = (namespace.to_owned(), record.id.clone());
        let last_exit = self.exits.locked().get(&key).copied();
        let (container, problem) = container_from_containerd(record, task, last_exit, digest, &self.env);
        if let Some(problem) = problem
            && bounded_insert(&mut self.reported.locked(), record.id.clone())
        {
            warn!(namespace, container_id = %record.id, "containerd: {problem}; stored without it");
        }
        container
    }

    /// Lists every watched namespace's containers (streamed) with their tasks.
    async fn list_all(&self, clients: &mut Clients) -> Result<Listed, CollectorError> {
        let mut listed = Listed::default();
        let mut listed_keys = HashSet::new();
        for namespace in self.watched_namespaces(clients).await? {
            let records = self.list_records(clients, &namespace).await?;
            let request = namespaced(&namespace, ListTasksRequest::default())?;
            let tasks: HashMap<String, Process> = self
                .call(|| format!("containerd: listing the tasks of {namespace}"), clients.tasks.list(request))
                .await
                .map_err(CallError::into_error)?
                .into_inner()
                .tasks
                .into_iter()
                // containerd 1.6 fills only `id` (the init process's id is the container's).
                .map(|t| (if t.container_id.is_empty() { t.id.clone() } else { t.container_id.clone() }, t))
                .collect();
            for record in &records {
                if is_sandbox(&record.labels) {
                    self.saw_sandbox(&namespace, record);
                    continue;
                }
                listed_keys.insert((namespace.clone(), record.id.clone()));
                let digest = self.image_digest(clients, &namespace, &record.image).await;
                listed
                    .entities
                    .extend(self.build(&namespace, record, tasks.get(&record.id), digest.as_deref()).map(Entity::from));
            }
        }
        // Exits of containers deleted while the collector was away are forgotten.
        self.exits.locked().retain(|key, _| listed_keys.contains(key));
        Ok(listed)
    }

    /// One namespace's container records, one stream message each.
    async fn list_records(
        &self,
        clients: &mut Clients,
        namespace: &str,
    ) -> Result<Vec<containerd_client::services::v1::Container>, CollectorError> {
        let what = || format!("containerd: listing the containers of {namespace}");
        let request = namespaced(namespace, ListContainersRequest::default())?;
        let deadline = self.config.deadline();
        let mut stream =
            self.call(what, clients.containers.list_stream(request)).await.map_err(CallError::into_error)?.into_inner();
        let mut records = Vec::new();
        loop {
            // Each message within the deadline: a dense node's list takes as long as it takes,
            // a stalled one does not.
            match tokio::time::timeout(deadline, stream.message()).await {
                Ok(Ok(Some(message))) => records.extend(message.container),
                Ok(Ok(None)) => return Ok(records),
                Ok(Err(status)) => return Err(failed(what(), status)),
                Err(_) => {
                    return Err(CollectorError::Retriable {
                        context: format!("{} stalled for {deadline:?} (cri_query_timeout)", what()),
                        source: None,
                    });
                }
            }
        }
    }

    /// The container as containerd has it now.
    async fn fetch(&self, clients: &mut Clients, namespace: &str, id: &str) -> Result<Fetched, CollectorError> {
        let request = namespaced(namespace, GetContainerRequest { id: id.to_owned() })?;
        let record = match self
            .call(|| format!("containerd: getting container {namespace}/{id}"), clients.containers.get(request))
            .await
        {
            Ok(response) => response.into_inner().container,
            Err(CallError::NotFound) => return Ok(Fetched::Gone),
            Err(CallError::Failed(error)) => return Err(error),
        };
        let Some(record) = record else { return Ok(Fetched::Gone) };
        if is_sandbox(&record.labels) {
            self.saw_sandbox(namespace, &record);
            return Ok(Fetched::Sandbox);
        }
        let request = namespaced(namespace, GetRequest { container_id: id.to_owned(), exec_id: String::new() })?;
        let task = match self
            .call(|| format!("containerd: getting the task of {namespace}/{id}"), clients.tasks.get(request))
            .await
        {
            Ok(response) => response.into_inner().process,
            Err(CallError::NotFound) => None,
            Err(CallError::Failed(error)) => return Err(error),
        };
        let digest = self.image_digest(clients, namespace, &record.image).await;
        Ok(match self.build(namespace, &record, task.as_ref(), digest.as_deref()) {
            Some(container) => Fetched::Container(Box::new(container)),
            None => Fetched::Gone,
        })
    }
}

/// The containerd collector's cache-miss fetch: the container the agent was asked about
/// before the collector reported it (`tagger` fetch-on-miss), looked for in every watched
/// namespace; `None` when containerd is absent, does not know it, or it is a sandbox. Connects
/// lazily and keeps the connection; every call within `cri_query_timeout`.
#[derive(Debug)]
pub struct ContainerdFetcher {
    collector: ContainerdCollector,
    clients: tokio::sync::Mutex<Option<Clients>>,
}

impl ContainerdFetcher {
    /// Creates a fetcher for `config` whose containers keep the env vars `env` keeps.
    pub fn new(config: ContainerdConfig, env: EnvFilter) -> Self {
        let collector = ContainerdCollector { env, ..ContainerdCollector::new(config) };
        Self { collector, clients: tokio::sync::Mutex::new(None) }
    }
}

/// Returns whether `id` follows containerd's identifier rule: at most 76 characters, runs of
/// letters and digits joined by single `.`, `_` or `-`.
pub fn is_containerd_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    !bytes.is_empty()
        && bytes.len() <= 76
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
        && !bytes.windows(2).any(|w| !alnum(&w[0]) && !alnum(&w[1]))
}

#[async_trait]
impl wm_core::ContainerFetcher for ContainerdFetcher {
    fn accepts(&self, container_id: &str) -> bool {
        is_containerd_id(container_id)
    }

    async fn fetch(&self, container_id: &str) -> Option<Container> {
        if !self.accepts(container_id) {
            return None;
        }
        let mut held = self.clients.lock().await;
        if held.is_none() {
            *held = self.collector.connect().await.ok();
        }
        let mut clients = held.clone()?;
        drop(held);
        let namespaces = match self.collector.watched_namespaces(&mut clients).await {
            Ok(namespaces) => namespaces,
            Err(error) => {
                debug!(container_id, %error, "containerd: fetch on a tag cache miss failed");
                *self.clients.lock().await = None;
                return None;
            }
        };
        for namespace in namespaces {
            match self.collector.fetch(&mut clients, &namespace, container_id).await {
                Ok(Fetched::Container(container)) => return Some(*container),
                Ok(Fetched::Sandbox) => return None,
                Ok(Fetched::Gone) => {}
                Err(error) => {
                    debug!(container_id, %error, "containerd: fetch on a tag cache miss failed");
                    return None;
                }
            }
        }
        None
    }
}

/// A failed call: not found, or anything else (retriable, with the call named).
#[derive(Debug)]
enum CallError {
    NotFound,
    Failed(CollectorError),
}

impl CallError {
    fn into_error(self) -> CollectorError {
        match self {
            CallError::NotFound => CollectorError::Retriable { context: "containerd: not found".into(), source: None },
            CallError::Failed(error) => error,
        }
    }
}

/// A container known only from its events.
fn gone_container(id: &str, image: Option<&str>, exit: Option<Exit>) -> Container {
    Container {
        id: wm_core::Id::from(id),
        name: id.into(),
        image: image.map(wm_core::ContainerImage::parse).unwrap_or_default(),
        runtime: Some(wm_core::Runtime::Containerd),
        state: wm_core::ContainerState {
            status: if exit.is_some() { wm_core::ContainerStatus::Stopped } else { wm_core::ContainerStatus::Unknown },
            exit_code: exit.and_then(|e| wm_core::ExitCode::new(i64::from(e.code))),
            finished_at: exit.and_then(|e| e.at),
            ..wm_core::ContainerState::default()
        },
        ..Container::default()
    }
}

/// What one event says about a container.
#[derive(Debug)]
pub struct Decoded {
    namespace: String,
    container_id: String,
    deleted: bool,
    image: Option<String>,
    exit: Option<Exit>,
}

/// Decodes an event; `None` for a topic that changes nothing (exec processes, the marker) or a
/// payload that does not decode.
fn decode(topic: &str, any: &prost_types::Any) -> Option<Decoded> {
    // containerd sends type URLs without the leading `/`, sometimes with a host part.
    let type_name = any.type_url.rsplit('/').next().unwrap_or(&any.type_url);
    let bytes = any.value.as_slice();
    let plain = |container_id: String| Decoded {
        namespace: String::new(),
        container_id,
        deleted: false,
        image: None,
        exit: None,
    };
    let decoded = match type_name {
        "containerd.events.ContainerCreate" => {
            let e = ContainerCreate::decode(bytes).ok()?;
            Decoded { image: Some(e.image), ..plain(e.id) }
        }
        "containerd.events.ContainerUpdate" => plain(ContainerUpdate::decode(bytes).ok()?.id),
        "containerd.events.ContainerDelete" => {
            Decoded { deleted: true, ..plain(ContainerDelete::decode(bytes).ok()?.id) }
        }
        "containerd.events.TaskCreate" => plain(TaskCreate::decode(bytes).ok()?.container_id),
        "containerd.events.TaskStart" => plain(TaskStart::decode(bytes).ok()?.container_id),
        "containerd.events.TaskPaused" => plain(TaskPaused::decode(bytes).ok()?.container_id),
        "containerd.events.TaskResumed" => plain(TaskResumed::decode(bytes).ok()?.container_id),
        "containerd.events.TaskOOM" => plain(TaskOom::decode(bytes).ok()?.container_id),
        "containerd.events.TaskExit" => {
            let e = TaskExit::decode(bytes).ok()?;
            // An exec'd process exiting says nothing about the container.
            if !e.id.is_empty() && e.id != e.container_id {
                return None;
            }
            let exit = Exit { code: e.exit_status, at: timestamp(e.exited_at.as_ref()) };
            Decoded { exit: Some(exit), ..plain(e.container_id) }
        }
        "containerd.events.TaskDelete" => {
            let e = TaskDelete::decode(bytes).ok()?;
            if !e.id.is_empty() && e.id != e.container_id {
                return None;
            }
            let exit = Exit { code: e.exit_status, at: timestamp(e.exited_at.as_ref()) };
            Decoded { exit: (e.pid != 0 || e.exit_status != 0).then_some(exit), ..plain(e.container_id) }
        }
        other => {
            debug!(topic, type_url = other, "containerd: ignoring an event");
            return None;
        }
    };
    (!decoded.container_id.is_empty()).then_some(decoded)
}

/// The filters of the subscription: container, task and image events, and the marker.
fn subscription_filters() -> Vec<String> {
    vec![
        r#"topic~="^/containers/""#.to_owned(),
        r#"topic~="^/tasks/""#.to_owned(),
        r#"topic~="^/images/""#.to_owned(),
        format!(r#"topic=="{SYNC_TOPIC}""#),
    ]
}

/// The image an `/images/create|update|delete` event names.
fn image_named(any: &prost_types::Any) -> Option<String> {
    let type_name = any.type_url.rsplit('/').next().unwrap_or(&any.type_url);
    let bytes = any.value.as_slice();
    let name = match type_name {
        "containerd.services.images.v1.ImageCreate" => ImageCreate::decode(bytes).ok()?.name,
        "containerd.services.images.v1.ImageUpdate" => ImageUpdate::decode(bytes).ok()?.name,
        "containerd.services.images.v1.ImageDelete" => ImageDelete::decode(bytes).ok()?.name,
        _ => return None,
    };
    (!name.is_empty()).then_some(name)
}

/// What an envelope says: the marker, a decoded event, or nothing. An image event drops the
/// digest cached for that name (it may now point at other content) and says nothing more.
fn watched(envelope: Envelope, digests: &Mutex<Digests>) -> Option<Watched<Decoded>> {
    if envelope.topic == SYNC_TOPIC {
        return Some(Watched::Live);
    }
    if envelope.topic.starts_with("/images/") {
        if let Some(name) = envelope.event.as_ref().and_then(image_named) {
            digests.locked().remove(&(envelope.namespace, name));
        }
        return None;
    }
    let any = envelope.event.as_ref()?;
    let mut decoded = decode(&envelope.topic, any)?;
    decoded.namespace = envelope.namespace;
    Some(Watched::Event(decoded))
}

#[async_trait]
impl ListWatch for ContainerdCollector {
    type Event = Decoded;

    fn prepare(&mut self, ctx: &CollectorContext) {
        self.env = ctx.env.clone();
    }

    /// Connects and subscribes. containerd's subscription has no `since` and its call returns
    /// only with the first event, so the driver drives it from its own task and probes.
    async fn watch(&mut self) -> Result<WatchStream<Decoded>, CollectorError> {
        self.clients = None;
        // A name may have been re-tagged while the collector was away.
        self.digests.locked().clear();
        let clients = self.connect().await?;
        let mut events = clients.events.clone();
        self.clients = Some(clients);
        let digests = self.digests.clone();
        let subscribe = async move {
            match events.subscribe(SubscribeRequest { filters: subscription_filters() }).await {
                Ok(response) => response
                    .into_inner()
                    .filter_map(move |item| {
                        let digests = digests.clone();
                        async move {
                            match item {
                                Ok(envelope) => watched(envelope, &digests).map(Ok),
                                Err(status) => Some(Err(failed("containerd: the event stream broke", status))),
                            }
                        }
                    })
                    .boxed(),
                Err(status) => {
                    futures::stream::once(async move { Err(failed("containerd: subscribing failed", status)) }).boxed()
                }
            }
        };
        Ok(futures::stream::once(subscribe).flatten().boxed())
    }

    /// Publishes the marker: once it comes back on the stream, every change is delivered.
    async fn probe(&mut self) -> Result<bool, CollectorError> {
        let mut clients = self.clients()?;
        let marker = prost_types::Any { type_url: "wm-agent.Subscribed".into(), value: Vec::new() };
        let publish = PublishRequest { topic: SYNC_TOPIC.into(), event: Some(marker) };
        let request = namespaced(SYNC_NAMESPACE, publish)?;
        self.call(|| "containerd: publishing the marker".into(), clients.events.publish(request))
            .await
            .map_err(CallError::into_error)?;
        Ok(true)
    }

    async fn list(&mut self) -> Result<Listed, CollectorError> {
        let mut clients = self.clients()?;
        self.list_all(&mut clients).await
    }

    fn key(&self, event: &Decoded) -> Option<String> {
        self.config.watches(&event.namespace).then(|| format!("{}/{}", event.namespace, event.container_id))
    }

    async fn refresh(&self, key: &str, events: Vec<Decoded>) -> Result<Refreshed, CollectorError> {
        let mut clients = self.clients()?;
        // The key is `namespace/id` (neither may hold a `/`); a retry comes without events.
        let Some((namespace, id)) = key.split_once('/') else { return Ok(Refreshed::Skip) };
        let key = (namespace.to_owned(), id.to_owned());
        let mut deleted = false;
        let mut image = None;
        for event in events {
            if let Some(exit) = event.exit {
                self.exits.locked().insert(key.clone(), exit);
            }
            deleted |= event.deleted;
            if event.image.is_some() {
                image = event.image;
            }
        }
        if self.sandboxes.locked().ids.contains(&key) {
            // A sandbox's events: never a container.
            self.exits.locked().remove(&key);
            if deleted {
                self.sandboxes.locked().ids.remove(&key);
            }
            return Ok(Refreshed::Skip);
        }
        let current = if deleted { Fetched::Gone } else { self.fetch(&mut clients, namespace, id).await? };
        Ok(match current {
            Fetched::Container(container) => Refreshed::Present(Entity::from(*container)),
            Fetched::Sandbox => {
                self.exits.locked().remove(&key);
                Refreshed::Skip
            }
            Fetched::Gone => {
                // Gone before it could be read: say what the events said, then unset, so a
                // short-lived container is still seen; unless its image is a sandbox's.
                let exit = self.exits.locked().remove(&key);
                let sandbox_image = image.as_ref().is_some_and(|i| self.sandboxes.locked().images.contains(i));
                let said = (!sandbox_image && (image.is_some() || exit.is_some()))
                    .then(|| Entity::from(gone_container(id, image.as_deref(), exit)));
                Refreshed::Gone { id: EntityId::new(Kind::Container, id), said }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_containerd_identifiers_are_fetched() {
        for id in ["fetched", "pause-1", "a.b_c-d", &"f".repeat(64), &"a".repeat(76), "K8s-Pod.1"] {
            assert!(is_containerd_id(id), "{id}");
        }
        for id in ["", "-a", "a-", "a--b", "a/../b", "a?b", "a b", "a%2e", &"a".repeat(77), "é"] {
            assert!(!is_containerd_id(id), "{id}");
        }
    }

    fn any<M: Message>(type_url: &str, m: &M) -> prost_types::Any {
        prost_types::Any { type_url: type_url.into(), value: m.encode_to_vec() }
    }

    #[test]
    fn an_image_event_drops_the_digest_cached_for_that_name_only() {
        let digests = Mutex::new(Digests::new());
        for name in ["docker.io/app:1", "docker.io/other:1"] {
            digests.locked().insert(("ns".into(), name.into()), "sha256:old".into());
        }
        let update = ImageUpdate { name: "docker.io/app:1".into(), ..ImageUpdate::default() };
        let envelope = Envelope {
            topic: "/images/update".into(),
            namespace: "ns".into(),
            event: Some(any("containerd.services.images.v1.ImageUpdate", &update)),
            ..Envelope::default()
        };
        assert!(watched(envelope, &digests).is_none(), "an image event is no container event");
        let left: Vec<String> = digests.locked().keys().map(|(_, name)| name.clone()).collect();
        assert_eq!(left, ["docker.io/other:1"]);
        let garbage =
            prost_types::Any { type_url: "containerd.services.images.v1.ImageDelete".into(), value: vec![0xff] };
        assert_eq!(image_named(&garbage), None);
    }

    #[test]
    fn namespaces_default_to_all_but_moby_or_only_the_listed_ones() {
        let default = ContainerdConfig::default();
        assert!(default.watches("default") && default.watches("k8s.io"));
        assert!(!default.watches("moby"));
        assert!(!default.watches(SYNC_NAMESPACE));
        let only = ContainerdConfig { containerd_namespaces: vec!["k8s.io".into()], ..ContainerdConfig::default() };
        assert!(only.watches("k8s.io") && !only.watches("default"));
    }

    #[test]
    fn events_decode_with_or_without_a_leading_slash_and_exec_exits_are_ignored() {
        let exit = TaskExit {
            container_id: "c1".into(),
            id: "c1".into(),
            pid: 7,
            exit_status: 3,
            exited_at: Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 0 }),
        };
        for url in [
            "containerd.events.TaskExit",
            "/containerd.events.TaskExit",
            "types.containerd.io/containerd.events.TaskExit",
        ] {
            let d = decode("/tasks/exit", &any(url, &exit)).unwrap();
            assert_eq!(d.container_id, "c1");
            assert_eq!(d.exit.map(|e| e.code), Some(3));
        }
        let exec_exit = TaskExit { id: "exec-1".into(), ..exit };
        assert!(decode("/tasks/exit", &any("containerd.events.TaskExit", &exec_exit)).is_none());
        let delete = ContainerDelete { id: "c1".into() };
        assert!(decode("/containers/delete", &any("containerd.events.ContainerDelete", &delete)).unwrap().deleted);
        let create = ContainerCreate { id: "c2".into(), image: "docker.io/x:1".into(), runtime: None };
        assert_eq!(
            decode("/containers/create", &any("containerd.events.ContainerCreate", &create)).unwrap().image.as_deref(),
            Some("docker.io/x:1")
        );
        // Garbage never panics.
        assert!(
            decode(
                "/tasks/exit",
                &prost_types::Any { type_url: "containerd.events.TaskExit".into(), value: vec![0xff, 0xff] }
            )
            .is_none()
        );
        assert!(decode("/x", &prost_types::Any { type_url: "unknown".into(), value: vec![] }).is_none());
    }
}
