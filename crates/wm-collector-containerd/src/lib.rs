//! The containerd collector: follows containerd's event stream and reports the containers of the
//! namespaces it is configured to watch as source `runtime`, collector `containerd`.
//!
//! One run: connect to the socket (`cri_socket_path`, else [`DEFAULT_SOCKET`]), subscribe to the
//! `/containers/*` and `/images/*` events and the task events that change a container's state
//! (`TOPICS`), wait until the subscription is live, list the containers and tasks of every
//! watched namespace and send them as one full list, then turn events into sets and unsets until
//! the stream breaks. When it breaks the run fails with a retriable error; the store runs the
//! collector again after a backoff, and the new run's full list corrects whatever changed in
//! between.
//!
//! containerd cannot replay the events since a given instant (its subscription has no `since`),
//! and its subscribe call returns only when the first event arrives. So, to learn when the
//! subscription is live, the run publishes a marker event of its own (topic [`SYNC_TOPIC`],
//! namespace [`SYNC_NAMESPACE`]) every 100 ms until the marker comes back on its own stream (for
//! at most 10 s; past that the run fails with a retriable error). From then on every change is
//! delivered, and only then does the run list, so no change made between the subscription and the
//! list is lost. An `/images/*` event only drops the cached digest of the image it names.
//!
//! Namespaces: every namespace except those in `containerd_exclude_namespaces` (default `moby`,
//! docker's namespace, whose containers the docker collector reports); or, when
//! `containerd_namespaces` is set, only the namespaces it lists.
//!
//! CRI sandbox ("pause") containers are never reported: not from a list, not from a refresh, and
//! not from the events of a sandbox seen before or of a container created from an image that
//! sandboxes use. A task's exit status and time come from its `/tasks/exit` (or `/tasks/delete`)
//! event. containerd drops them when the task is deleted, so the collector stores them until the
//! container is deleted or a list no longer has it.
//!
//! Every call to containerd has a deadline: `cri_query_timeout` (default 5 s), and
//! `cri_connection_timeout` (default 1 s) for connecting. Containers are listed with `ListStream`,
//! one message per container, so a node's list never runs into gRPC's 4 MiB default message
//! limit (the spec of one CRI container is tens of KB). A container whose refresh fails is skipped
//! (the store keeps what it had) and refreshed again later. A container whose OCI spec does not
//! parse is still reported, without the fields the spec would give, and a warning is logged once.
//!
//! [`ContainerdFetcher`] reads a single container on demand, for the tagger's fetch on a cache
//! miss.

#![forbid(unsafe_code)]

mod convert;
pub mod images;

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
use containerd_client::services::v1::content_client::ContentClient;
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
    Collector, CollectorContext, CollectorError, Container, Entity, EntityArc, EntityId, EnvFilter, Kind, Seconds,
    Source,
};
use wm_driver::{Driver, ListWatch, Listed, Refreshed, WatchStream, Watched, with_deadline};

pub use convert::{
    Exit, TaskEvent, after_task_event, after_task_events, container_from_containerd, is_sandbox, timestamp,
};

/// containerd's default socket, used when `cri_socket_path` is not set.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
/// The collector's name, as it appears in health, telemetry and dumps.
pub const NAME: &str = "containerd";
/// The topic of the marker event a run publishes to learn that its subscription is live.
///
/// When the marker comes back on the run's event stream, every later change is on that stream too.
pub const SYNC_TOPIC: &str = "/wm-agent/subscribed";
/// The namespace the marker event is published in. The collector never watches it.
pub const SYNC_NAMESPACE: &str = "wm-agent";

/// Where containerd listens and which namespaces to watch: the collector's part of the agent
/// config, under Datadog's key names.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerdConfig {
    /// `cri_socket_path`: the path of containerd's socket; unset or empty: [`DEFAULT_SOCKET`].
    ///
    /// When this key names a socket that does not exist, the collector waits for it; when the
    /// default socket does not exist, containerd is taken to be absent from this node.
    pub cri_socket_path: Option<PathBuf>,
    /// `containerd_namespaces`: the only namespaces to watch; empty (the default): every
    /// namespace except the excluded ones.
    pub containerd_namespaces: Vec<String>,
    /// `containerd_exclude_namespaces` (default `moby`, docker's namespace, whose containers the
    /// docker collector reports): namespaces not watched. Ignored when `containerd_namespaces` is
    /// set.
    pub containerd_exclude_namespaces: Vec<String>,
    /// `cri_query_timeout` (Datadog's key, seconds, default 5): the deadline of every call to
    /// containerd; zero counts as one second.
    pub cri_query_timeout: Seconds,
    /// `cri_connection_timeout` (Datadog's key, seconds, default 1): the deadline of connecting
    /// to the socket; zero counts as 100 ms.
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

/// The most entries a cache (image digests, sandboxes, ids of containers already logged) holds.
///
/// A full cache is emptied and filled again from scratch, so its memory stays bounded whatever
/// happens on the node.
const MAX_CACHED: usize = 16_384;
/// The largest gRPC message the containers and tasks clients accept from containerd: 64 MiB,
/// where gRPC's default is 4 MiB.
///
/// The task list of a dense node comes in one message and needs the room; the container list is
/// streamed one container per message.
const MAX_MESSAGE: usize = 64 << 20;

/// Inserts `value` into `set` and tells whether it was new; a set that holds [`MAX_CACHED`]
/// entries is emptied first.
fn bounded_insert<T: std::hash::Hash + Eq>(set: &mut HashSet<T>, value: T) -> bool {
    if set.len() >= MAX_CACHED {
        set.clear();
    }
    set.insert(value)
}

impl ContainerdConfig {
    /// Returns the deadline of one call to containerd: `cri_query_timeout`, at least one second.
    fn deadline(&self) -> Duration {
        self.cri_query_timeout.duration().max(Duration::from_secs(1))
    }

    /// Tells whether the collector watches `namespace`.
    ///
    /// The marker's namespace ([`SYNC_NAMESPACE`]) is never watched. Otherwise, when
    /// `containerd_namespaces` is set, only the namespaces it lists are watched; when it is empty,
    /// every namespace not in `containerd_exclude_namespaces` is.
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

/// Follows containerd and reports its containers; hand it to the store with
/// [`into_collector`](Self::into_collector).
#[derive(Debug)]
pub struct ContainerdCollector {
    config: ContainerdConfig,
    /// Decides which env vars of a container are stored: the store's filter, copied at the start
    /// of each run.
    env: EnvFilter,
    /// The last exit of each container's init process, by (namespace, container id), taken from
    /// task events. containerd drops a task's exit status when the task is deleted, so it is
    /// stored here; an entry is removed when its container is deleted or a list no longer has it.
    exits: Mutex<HashMap<(String, String), Exit>>,
    /// Image digests by (namespace, image name), so that each image is asked for once; `None`
    /// for a name containerd has no image for (a container can outlive its image), so that its
    /// containers do not each ask again.
    ///
    /// An `/images/` event about a name (re-tagged, deleted) removes that name's entry, since the
    /// name may now point at other content; each run empties the whole cache when it connects.
    /// Holds at most `MAX_CACHED` entries. Shared with the event stream, which removes entries.
    digests: Arc<Mutex<Digests>>,
    /// The CRI sandboxes seen, and the images they were created from: events about them are not
    /// about containers, so they are skipped.
    sandboxes: Mutex<Sandboxes>,
    /// Ids of the containers whose OCI spec did not parse and for which a warning was logged, so
    /// that the warning is logged once per container (emptied when it holds `MAX_CACHED` ids).
    reported: Mutex<HashSet<String>>,
    /// The last container built for each (namespace, id) the collector reported, shared with the
    /// store: a task event (create, start, exit, delete, pause) changes only the state and says
    /// what it is, so its refresh applies it to this copy with no call, instead of reading the
    /// record (its OCI spec is tens of KB) and the task again. Removed with the container and
    /// before any other read of it; replaced at each list; emptied when it holds `MAX_BUILT`
    /// entries.
    built: Mutex<HashMap<(String, String), Built>>,
    /// The gRPC clients of the current run; `None` until [`watch`](ListWatch::watch) connects.
    clients: Option<Clients>,
    /// Whether image events reach `digests`: only then may it remember that a name has no
    /// image (the fetcher, which hears no event, would remember it for good).
    follows_images: bool,
}

/// The most containers [`ContainerdCollector`] keeps built (four times a 16,384-container node).
const MAX_BUILT: usize = 65_536;

/// A container as last built, and whether a list built it.
///
/// Events queued before a list are applied after it, so they may be older than what it read:
/// the first refresh of a listed container reads it again rather than applying such an event.
#[derive(Debug)]
struct Built {
    container: EntityArc<Container>,
    listed: bool,
}

/// Image digests by (namespace, image name), and how many image events have removed entries:
/// a digest asked for before an image event is not stored after it (it may be the old one).
#[derive(Debug, Default)]
struct Digests {
    names: HashMap<(String, String), Option<String>>,
    changes: u64,
}

/// The CRI sandboxes the collector has seen.
#[derive(Debug, Default)]
struct Sandboxes {
    /// The (namespace, container id) of each sandbox seen.
    ids: HashSet<(String, String)>,
    /// The images those sandboxes were created from (the pause image). A container deleted before
    /// it could be read is recognised as a sandbox by its image, from its create event.
    images: HashSet<String>,
}

/// Where a refresh takes a container's task from.
enum TaskFrom {
    /// From containerd: a call.
    Read,
    /// From the events: the container was created in the batch being refreshed, without a task,
    /// and these task events followed its creation, in order.
    SinceCreate(Vec<TaskEvent>),
}

/// What containerd has now under one container id.
enum Fetched {
    /// A container, ready to store.
    Container(Box<Container>),
    /// A CRI sandbox, which is never stored.
    Sandbox,
    /// Nothing to store: containerd does not know the id.
    Gone,
}

/// The gRPC clients of one run, all on one connection.
#[derive(Clone, Debug)]
struct Clients {
    containers: ContainersClient<Channel>,
    tasks: TasksClient<Channel>,
    images: ImagesClient<Channel>,
    content: ContentClient<Channel>,
    namespaces: NamespacesClient<Channel>,
    events: EventsClient<Channel>,
}

/// Wraps `message` in a request for `namespace`, which containerd reads from the
/// `containerd-namespace` header.
///
/// Fails with a permanent error when the namespace is not a valid header value.
fn namespaced<T>(namespace: &str, message: T) -> Result<Request<T>, CollectorError> {
    let mut request = Request::new(message);
    let value = namespace.parse().map_err(|e| {
        CollectorError::permanent(format!("containerd: namespace {namespace:?} is not a valid header"), e)
    })?;
    request.metadata_mut().insert("containerd-namespace", value);
    Ok(request)
}

/// Turns a failed gRPC call into a retriable error whose message names the call (`what`).
fn failed(what: impl Into<String>, status: Status) -> CollectorError {
    CollectorError::retriable(what, status)
}

/// Connects to containerd's socket and builds one client per service, all on that connection.
///
/// A missing socket is a `Waiting` error when `cri_socket_path` names it, and
/// `EnvironmentAbsent` when it is the default one. Connecting has `cri_connection_timeout` as
/// its deadline, at least 100 ms.
async fn connect(config: &ContainerdConfig) -> Result<Clients, CollectorError> {
    let named = config.cri_socket_path.clone().filter(|p| !p.as_os_str().is_empty());
    let socket = named.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    if !socket.exists() {
        return Err(if named.is_some() {
            CollectorError::waiting_for_file(format!("{} (cri_socket_path)", socket.display()), &socket)
        } else {
            CollectorError::absent_at(format!("no containerd socket at {}", socket.display()), &socket)
        });
    }
    let connect_deadline = config.cri_connection_timeout.duration().max(Duration::from_millis(100));
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
        images: ImagesClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE),
        content: ContentClient::new(channel.clone()),
        namespaces: NamespacesClient::new(channel.clone()),
        events: EventsClient::new(channel),
    })
}

/// Runs one call to containerd with `deadline` (`cri_query_timeout`).
///
/// A `NotFound` status comes back as [`CallError::NotFound`], so that callers can tell "no such
/// container" from a failure. `what` names the call in the error message; it is only run when
/// the call fails.
async fn call<T>(
    deadline: Duration,
    what: impl FnOnce() -> String,
    fut: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(deadline, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(status)) if status.code() == Code::NotFound => Err(CallError::NotFound),
        Ok(Err(status)) => Err(CallError::Failed(failed(what(), status))),
        Err(_) => Err(CallError::Failed(CollectorError::Retriable {
            context: format!("{} timed out after {deadline:?} (cri_query_timeout)", what()),
            source: None,
        })),
    }
}

/// Lists containerd's namespaces and returns those `config` watches.
async fn watched_namespaces(config: &ContainerdConfig, clients: &mut Clients) -> Result<Vec<String>, CollectorError> {
    let listed = call(
        config.deadline(),
        || "containerd: listing namespaces".into(),
        clients.namespaces.list(ListNamespacesRequest::default()),
    )
    .await
    .map_err(CallError::into_error)?;
    Ok(listed.into_inner().namespaces.into_iter().map(|n| n.name).filter(|n| config.watches(n)).collect())
}

/// Publishes the marker event ([`SYNC_TOPIC`]): once it comes back on a run's stream, every
/// later change is on that stream too.
async fn publish_marker(config: &ContainerdConfig, clients: &mut Clients) -> Result<(), CollectorError> {
    let marker = prost_types::Any { type_url: "wm-agent.Subscribed".into(), value: Vec::new() };
    let publish = PublishRequest { topic: SYNC_TOPIC.into(), event: Some(marker) };
    let request = namespaced(SYNC_NAMESPACE, publish)?;
    call(config.deadline(), || "containerd: publishing the marker".into(), clients.events.publish(request))
        .await
        .map_err(CallError::into_error)?;
    Ok(())
}

/// Returns the event stream of a subscription with `filters` (plus the marker's), each envelope
/// turned into an item by `map`; the marker comes out as [`Watched::Live`].
///
/// containerd's subscribe call returns only when the first event arrives, so the call is made
/// when the stream is first polled, not here.
fn subscribe<E: Send + 'static>(
    clients: &Clients,
    mut filters: Vec<String>,
    map: impl Fn(Envelope) -> Option<E> + Send + Sync + 'static,
) -> WatchStream<E> {
    filters.push(format!(r#"topic=="{SYNC_TOPIC}""#));
    let mut events = clients.events.clone();
    let map = Arc::new(map);
    let subscribe = async move {
        match events.subscribe(SubscribeRequest { filters }).await {
            Ok(response) => response
                .into_inner()
                .filter_map(move |item| {
                    let map = map.clone();
                    async move {
                        match item {
                            Ok(envelope) if envelope.topic == SYNC_TOPIC => Some(Ok(Watched::Live)),
                            Ok(envelope) => map(envelope).map(|e| Ok(Watched::Event(e))),
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
    futures::stream::once(subscribe).flatten().boxed()
}

impl ContainerdCollector {
    /// Creates a collector for `config`.
    pub fn new(config: ContainerdConfig) -> Self {
        Self {
            config,
            env: EnvFilter::default(),
            exits: Mutex::new(HashMap::new()),
            digests: Arc::new(Mutex::new(Digests::default())),
            sandboxes: Mutex::new(Sandboxes::default()),
            reported: Mutex::new(HashSet::new()),
            built: Mutex::new(HashMap::new()),
            clients: None,
            follows_images: true,
        }
    }

    /// Wraps the collector in a [`Driver`], ready to hand to the store.
    pub fn into_collector(self) -> Collector {
        Collector::stream(NAME, Source::Runtime, Driver::new(self))
    }

    /// Returns the clients of the current run; a retriable error before `watch` connected.
    fn clients(&self) -> Result<Clients, CollectorError> {
        self.clients.clone().ok_or_else(|| CollectorError::Retriable {
            context: "containerd: not connected (list or refresh before watch)".into(),
            source: None,
        })
    }

    async fn connect(&self) -> Result<Clients, CollectorError> {
        connect(&self.config).await
    }

    /// Runs one call to containerd with `cri_query_timeout` as its deadline; see [`call`].
    async fn call<T>(
        &self,
        what: impl FnOnce() -> String,
        fut: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, CallError> {
        call(self.config.deadline(), what, fut).await
    }

    /// Lists containerd's namespaces and returns those the collector watches.
    async fn watched_namespaces(&self, clients: &mut Clients) -> Result<Vec<String>, CollectorError> {
        watched_namespaces(&self.config, clients).await
    }

    /// Returns the digest of the image `image` names in `namespace`, from the cache or else from
    /// containerd.
    ///
    /// `None` when the name is empty, when containerd has no image by that name, or when it
    /// cannot say (the failure is logged at debug level): the container is then stored without
    /// its image digest.
    async fn image_digest(&self, clients: &mut Clients, namespace: &str, image: &str) -> Option<String> {
        if image.is_empty() {
            return None;
        }
        let key = (namespace.to_owned(), image.to_owned());
        let changes = {
            let digests = self.digests.locked();
            if let Some(digest) = digests.names.get(&key) {
                return digest.clone();
            }
            digests.changes
        };
        let request = namespaced(namespace, GetImageRequest { name: image.to_owned() }).ok()?;
        let digest = match self.call(|| format!("containerd: getting image {image}"), clients.images.get(request)).await
        {
            Ok(response) => response.into_inner().image.and_then(|i| i.target).map(|t| t.digest),
            Err(CallError::NotFound) => None,
            Err(e) => {
                // A failed call is not remembered: the next container asks again.
                debug!(namespace, image, error = ?e, "containerd: no digest for the image");
                return None;
            }
        };
        let mut digests = self.digests.locked();
        // An image event since the call may have changed what the name points at; and only the
        // collector, which hears image events, remembers that a name has no image.
        if digests.changes == changes && (digest.is_some() || self.follows_images) {
            if digests.names.len() >= MAX_CACHED {
                digests.names.clear();
            }
            digests.names.insert(key, digest.clone());
        }
        digest
    }

    /// Records a sandbox and its image, so that its events are never taken for a container's.
    fn saw_sandbox(&self, namespace: &str, record: &containerd_client::services::v1::Container) {
        let mut sandboxes = self.sandboxes.locked();
        bounded_insert(&mut sandboxes.ids, (namespace.to_owned(), record.id.clone()));
        if !record.image.is_empty() {
            bounded_insert(&mut sandboxes.images, record.image.clone());
        }
    }

    /// Builds the store's container from containerd's record, its task, and the exit and digest
    /// the collector knows.
    ///
    /// `None` for a sandbox or a record without an id. A spec that does not parse is logged once
    /// per container id, and the container is built without what the spec would add.
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

    /// Lists the containers of every watched namespace, with their tasks.
    ///
    /// Sandboxes are recorded and left out. Exits stored for containers the list no longer has
    /// are dropped. A failed call fails the whole list.
    async fn list_all(&self, clients: &mut Clients) -> Result<Listed, CollectorError> {
        let mut listed = Listed::default();
        let mut built = HashMap::new();
        let mut listed_keys = HashSet::new();
        let mut listed_sandboxes = HashSet::new();
        for namespace in self.watched_namespaces(clients).await? {
            // The tasks first, then each container record converted as it arrives: a list of
            // 10,000 holds one raw record (its OCI spec is tens of KB) at a time, not all of them
            // beside their conversions. A task that starts between the two lists comes as an
            // event, which the driver applies after the list.
            let request = namespaced(&namespace, ListTasksRequest::default())?;
            let tasks: HashMap<String, Process> = self
                .call(|| format!("containerd: listing the tasks of {namespace}"), clients.tasks.list(request))
                .await
                .map_err(CallError::into_error)?
                .into_inner()
                .tasks
                .into_iter()
                // containerd 1.6 leaves `container_id` empty and fills only `id`; for a task's
                // init process that id is the container's id, so either one keys the task.
                .map(|t| (if t.container_id.is_empty() { t.id.clone() } else { t.container_id.clone() }, t))
                .collect();
            let mut records = self.list_records(clients, &namespace).await?;
            while let Some(record) = records.next().await? {
                if is_sandbox(&record.labels) {
                    self.saw_sandbox(&namespace, &record);
                    listed_sandboxes.insert((namespace.clone(), record.id.clone()));
                    continue;
                }
                listed_keys.insert((namespace.clone(), record.id.clone()));
                let digest = self.image_digest(clients, &namespace, &record.image).await;
                if let Some(container) = self.build(&namespace, &record, tasks.get(&record.id), digest.as_deref()) {
                    let container = EntityArc::new(container);
                    if built.len() < MAX_BUILT {
                        let entry = Built { container: container.clone(), listed: true };
                        built.insert((namespace.clone(), record.id.clone()), entry);
                    }
                    listed.entities.push(Entity::Container(container));
                }
            }
        }
        // A container or sandbox deleted while the collector was not watching will never send a
        // delete event, so what is kept about it is dropped here. (The sandboxes' images stay:
        // they are a handful, and they recognise a sandbox deleted before it could be read.)
        self.exits.locked().retain(|key, _| listed_keys.contains(key));
        *self.built.locked() = built;
        self.sandboxes.locked().ids.retain(|key| listed_sandboxes.contains(key));
        let mut reported = self.reported.locked();
        if !reported.is_empty() {
            let listed_ids: HashSet<&str> = listed_keys.iter().map(|(_, id)| id.as_str()).collect();
            reported.retain(|id| listed_ids.contains(id.as_str()));
        }
        drop(reported);
        Ok(listed)
    }

    /// Opens the list of the container records of one namespace, which containerd streams one
    /// message per container.
    async fn list_records(&self, clients: &mut Clients, namespace: &str) -> Result<Records, CollectorError> {
        let what = format!("containerd: listing the containers of {namespace}");
        let request = namespaced(namespace, ListContainersRequest::default())?;
        let stream = self
            .call(|| what.clone(), clients.containers.list_stream(request))
            .await
            .map_err(CallError::into_error)?
            .into_inner();
        Ok(Records { stream, what, deadline: self.config.deadline() })
    }

    /// Reads what containerd has now under `namespace`/`id`: its record, its task and its image
    /// digest.
    ///
    /// A container or task that containerd does not know is not an error (`Gone`, or a container
    /// without a task); any other failed call is.
    async fn fetch(&self, clients: &mut Clients, namespace: &str, id: &str) -> Result<Fetched, CollectorError> {
        self.fetch_with(clients, namespace, id, TaskFrom::Read).await
    }

    /// Reads what containerd has now under `namespace`/`id`, taking its task from `task`; see
    /// [`fetch`](Self::fetch).
    async fn fetch_with(
        &self,
        clients: &mut Clients,
        namespace: &str,
        id: &str,
        task: TaskFrom,
    ) -> Result<Fetched, CollectorError> {
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
        let (read, events) = match task {
            TaskFrom::Read => (self.task(clients, namespace, id).await?, Vec::new()),
            TaskFrom::SinceCreate(events) => (None, events),
        };
        let digest = self.image_digest(clients, namespace, &record.image).await;
        let Some(container) = self.build(namespace, &record, read.as_ref(), digest.as_deref()) else {
            return Ok(Fetched::Gone);
        };
        if events.is_empty() {
            return Ok(Fetched::Container(Box::new(container)));
        }
        let last_exit = self.exits.locked().get(&(namespace.to_owned(), id.to_owned())).copied();
        Ok(Fetched::Container(Box::new(after_task_events(&container, &events, last_exit))))
    }
}

impl ContainerdCollector {
    /// Reads the task of `namespace`/`id`; `None` when it has none.
    async fn task(&self, clients: &mut Clients, namespace: &str, id: &str) -> Result<Option<Process>, CollectorError> {
        let request = namespaced(namespace, GetRequest { container_id: id.to_owned(), exec_id: String::new() })?;
        match self
            .call(|| format!("containerd: getting the task of {namespace}/{id}"), clients.tasks.get(request))
            .await
        {
            Ok(response) => Ok(response.into_inner().process),
            Err(CallError::NotFound) => Ok(None),
            Err(CallError::Failed(error)) => Err(error),
        }
    }

    /// Keeps the exit an event carries, and forgets one a new task or container makes stale.
    ///
    /// A process's first exit is its own: a later one for the same pid (containerd's shim
    /// cleanup reports 137 again) does not replace it. A task created or started with another
    /// pid, or a new container under the id, ends the old exit's relevance.
    fn note_exit(&self, key: &(String, String), event: &Decoded) {
        let mut exits = self.exits.locked();
        if event.created {
            exits.remove(key);
        }
        if let Some(TaskEvent::Created { pid } | TaskEvent::Started { pid }) = event.task
            && exits.get(key).is_some_and(|e| e.pid != pid)
        {
            exits.remove(key);
        }
        if let Some(exit) = event.exit {
            let same_process = exits.get(key).is_some_and(|e| e.pid != 0 && e.pid == exit.pid);
            if !same_process {
                exits.insert(key.clone(), exit);
            }
        }
    }

    /// Remembers `container` as the last one built for `key` by a refresh (see `built`).
    fn remember(&self, key: (String, String), container: &EntityArc<Container>) {
        let mut built = self.built.locked();
        if built.len() >= MAX_BUILT && !built.contains_key(&key) {
            built.clear();
        }
        built.insert(key, Built { container: container.clone(), listed: false });
    }
}

/// The container records of one namespace as containerd streams them.
struct Records {
    stream: tonic::Streaming<containerd_client::services::v1::ListContainerMessage>,
    /// The call, for errors.
    what: String,
    /// `cri_query_timeout`, for each message.
    deadline: Duration,
}

impl Records {
    /// Returns the next record; `None` at the end of the list.
    async fn next(&mut self) -> Result<Option<containerd_client::services::v1::Container>, CollectorError> {
        loop {
            // The deadline applies to each message, not to the whole list: a list of many
            // containers may take as long as it needs, while a stream that stops sending fails.
            match tokio::time::timeout(self.deadline, self.stream.message()).await {
                Ok(Ok(Some(message))) => match message.container {
                    Some(record) => return Ok(Some(record)),
                    None => continue,
                },
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(status)) => return Err(failed(self.what.clone(), status)),
                Err(_) => {
                    return Err(CollectorError::Retriable {
                        context: format!("{} stalled for {:?} (cri_query_timeout)", self.what, self.deadline),
                        source: None,
                    });
                }
            }
        }
    }
}

/// Reads one container from containerd on demand: the tagger's fetch on a cache miss, for a
/// container the agent is asked about before the collector has reported it.
///
/// The container is looked for in every watched namespace. The fetch returns `None` when
/// containerd is not reachable, when no watched namespace has the container, when it is a
/// sandbox, when the id does not follow containerd's identifier rule ([`is_containerd_id`]), or
/// when a call fails. The fetcher connects on its first fetch and reuses the connection; it drops
/// the connection when listing the namespaces fails, and connects again on the next fetch. Every
/// call has `cri_query_timeout` as its deadline.
#[derive(Debug)]
pub struct ContainerdFetcher {
    collector: ContainerdCollector,
    clients: tokio::sync::Mutex<Option<Clients>>,
}

impl ContainerdFetcher {
    /// Creates a fetcher for `config`; `env` decides which env vars of a fetched container are
    /// stored. Does no I/O.
    pub fn new(config: ContainerdConfig, env: EnvFilter) -> Self {
        let collector = ContainerdCollector { env, follows_images: false, ..ContainerdCollector::new(config) };
        Self { collector, clients: tokio::sync::Mutex::new(None) }
    }
}

/// Tells whether `id` follows containerd's identifier rule: at most 76 ASCII characters, runs of
/// letters and digits joined by single `.`, `_` or `-`.
///
/// Only such an id is sent to containerd, so an id that comes from a client cannot name
/// anything else.
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
        // The clients are cheap clones of one connection: release the lock so that concurrent
        // fetches do not wait for each other's calls.
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

/// A failed call to containerd.
#[derive(Debug)]
enum CallError {
    /// containerd answered `NotFound`.
    NotFound,
    /// Any other failure: a retriable error that names the call.
    Failed(CollectorError),
}

impl CallError {
    /// Turns the failure into a collector error, for a call where "not found" is a failure too.
    fn into_error(self) -> CollectorError {
        match self {
            CallError::NotFound => CollectorError::Retriable { context: "containerd: not found".into(), source: None },
            CallError::Failed(error) => error,
        }
    }
}

/// Builds a container from what its events carried, for a container deleted before it could
/// be read: its id (also used as its name), its image, and its exit when one was seen (then it is
/// stopped; else its status is unknown).
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

/// What one containerd event carries about a container: the driver's event type for this
/// collector.
///
/// Its fields are private; only the collector reads them.
#[derive(Debug)]
pub struct Decoded {
    namespace: String,
    container_id: String,
    deleted: bool,
    /// What a task event says; `None` for a container event, which changes the record.
    task: Option<TaskEvent>,
    /// A container's create event.
    created: bool,
    image: Option<String>,
    exit: Option<Exit>,
}

/// Decodes the payload of a container or task event.
///
/// Returns `None` for an event that changes nothing the store holds (an exec'd process exiting,
/// an event type the collector does not handle), a payload that does not decode, or one without a
/// container id. The namespace is left empty: the caller takes it from the envelope.
fn decode(topic: &str, any: &prost_types::Any) -> Option<Decoded> {
    // containerd writes type URLs without the leading `/`, and sometimes with a host part
    // (`types.containerd.io/...`): the type name is whatever follows the last `/`.
    let type_name = any.type_url.rsplit('/').next().unwrap_or(&any.type_url);
    let bytes = any.value.as_slice();
    let plain = |container_id: String| Decoded {
        namespace: String::new(),
        container_id,
        deleted: false,
        task: None,
        created: false,
        image: None,
        exit: None,
    };
    let task = |container_id: String, event: TaskEvent| Decoded { task: Some(event), ..plain(container_id) };
    let decoded = match type_name {
        "containerd.events.ContainerCreate" => {
            let e = ContainerCreate::decode(bytes).ok()?;
            Decoded { image: Some(e.image), created: true, ..plain(e.id) }
        }
        "containerd.events.ContainerUpdate" => plain(ContainerUpdate::decode(bytes).ok()?.id),
        "containerd.events.ContainerDelete" => {
            Decoded { deleted: true, ..plain(ContainerDelete::decode(bytes).ok()?.id) }
        }
        "containerd.events.TaskCreate" => {
            let e = TaskCreate::decode(bytes).ok()?;
            task(e.container_id, TaskEvent::Created { pid: e.pid })
        }
        "containerd.events.TaskStart" => {
            let e = TaskStart::decode(bytes).ok()?;
            task(e.container_id, TaskEvent::Started { pid: e.pid })
        }
        "containerd.events.TaskPaused" => task(TaskPaused::decode(bytes).ok()?.container_id, TaskEvent::Paused),
        "containerd.events.TaskResumed" => task(TaskResumed::decode(bytes).ok()?.container_id, TaskEvent::Resumed),
        "containerd.events.TaskOOM" => task(TaskOom::decode(bytes).ok()?.container_id, TaskEvent::Oom),
        "containerd.events.TaskExit" => {
            let e = TaskExit::decode(bytes).ok()?;
            // A process exec'd into the container has an id of its own; its exit does not change
            // the container.
            if !e.id.is_empty() && e.id != e.container_id {
                return None;
            }
            let exit = Exit { code: e.exit_status, at: timestamp(e.exited_at.as_ref()), pid: e.pid };
            Decoded { exit: Some(exit), ..task(e.container_id, TaskEvent::Exited) }
        }
        "containerd.events.TaskDelete" => {
            let e = TaskDelete::decode(bytes).ok()?;
            if !e.id.is_empty() && e.id != e.container_id {
                return None;
            }
            let exit = Exit { code: e.exit_status, at: timestamp(e.exited_at.as_ref()), pid: e.pid };
            // A delete whose pid and exit status are both zero carries no exit, so it leaves the
            // one stored from the task's exit event in place.
            Decoded {
                exit: (e.pid != 0 || e.exit_status != 0).then_some(exit),
                ..task(e.container_id, TaskEvent::Deleted)
            }
        }
        other => {
            debug!(topic, type_url = other, "containerd: ignoring an event");
            return None;
        }
    };
    (!decoded.container_id.is_empty()).then_some(decoded)
}

/// The topics the collector subscribes to: every container and image event, and the task events
/// that change what the store holds.
///
/// Not `/tasks/create`: a task that is created but not started leaves the container `created`
/// with no pid, as it was, so the event would be read, decoded and applied for nothing, once per
/// container (one in six of a container's events). Not `/tasks/exec-added` nor
/// `/tasks/exec-started`: a process exec'd into a container (a Kubernetes exec probe, every few
/// seconds in many pods) changes nothing the store holds. containerd ORs the filters.
const TOPICS: [&str; 12] = [
    "/containers/create",
    "/containers/update",
    "/containers/delete",
    "/tasks/start",
    "/tasks/exit",
    "/tasks/delete",
    "/tasks/paused",
    "/tasks/resumed",
    "/tasks/oom",
    "/images/create",
    "/images/update",
    "/images/delete",
];

/// Returns the filters of the subscription, one per topic in [`TOPICS`].
fn subscription_filters() -> Vec<String> {
    TOPICS.iter().map(|topic| format!(r#"topic=="{topic}""#)).collect()
}

/// Returns the image name an `/images/create`, `/images/update` or `/images/delete` event
/// carries; `None` for another payload, one that does not decode, or an empty name.
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

/// Turns an envelope from the event stream into a decoded container or task event, or `None`
/// for anything else.
///
/// An image event removes the digest cached for the image it names, since the name may now point
/// at other content, and yields `None`.
fn watched(envelope: Envelope, digests: &Mutex<Digests>) -> Option<Decoded> {
    if envelope.topic.starts_with("/images/") {
        if let Some(name) = envelope.event.as_ref().and_then(image_named) {
            let mut digests = digests.locked();
            digests.names.remove(&(envelope.namespace, name));
            digests.changes += 1;
        }
        return None;
    }
    let any = envelope.event.as_ref()?;
    let mut decoded = decode(&envelope.topic, any)?;
    decoded.namespace = envelope.namespace;
    Some(decoded)
}

#[async_trait]
impl ListWatch for ContainerdCollector {
    type Event = Decoded;

    fn prepare(&mut self, ctx: &CollectorContext) {
        self.env = ctx.env.clone();
    }

    /// Connects and returns the event stream; the subscribe call is made when the stream is
    /// first polled.
    ///
    /// containerd's subscribe call returns only when the first event arrives, so it cannot be
    /// awaited here; the driver polls the stream beside every call it awaits, and learns from
    /// [`probe`](ListWatch::probe) when the subscription is live.
    async fn watch(&mut self) -> Result<WatchStream<Decoded>, CollectorError> {
        self.clients = None;
        // While no run was watching, a name may have been re-tagged without the cache hearing of
        // it, so every cached digest is dropped.
        {
            let mut digests = self.digests.locked();
            digests.names.clear();
            digests.changes += 1;
        }
        let clients = self.connect().await?;
        let digests = self.digests.clone();
        let stream = subscribe(&clients, subscription_filters(), move |envelope| watched(envelope, &digests));
        self.clients = Some(clients);
        Ok(stream)
    }

    /// Publishes the marker event and returns `true`; once the marker comes back on the stream,
    /// every later change is on it too.
    async fn probe(&mut self) -> Result<bool, CollectorError> {
        let mut clients = self.clients()?;
        publish_marker(&self.config, &mut clients).await?;
        Ok(true)
    }

    /// Lists the containers of every watched namespace; see `list_all`.
    async fn list(&mut self) -> Result<Listed, CollectorError> {
        let mut clients = self.clients()?;
        self.list_all(&mut clients).await
    }

    /// Returns `namespace/id` for an event in a watched namespace, and `None` (the event is
    /// dropped) for one in any other namespace.
    fn key(&self, event: &Decoded) -> Option<String> {
        self.config.watches(&event.namespace).then(|| format!("{}/{}", event.namespace, event.container_id))
    }

    async fn refresh(&self, key: &str, events: Vec<Decoded>) -> Result<Refreshed, CollectorError> {
        let mut clients = self.clients()?;
        // The key is `namespace/id`, as `key` builds it; containerd allows no `/` in either, so
        // the first `/` splits them. When the driver retries a failed refresh, `events` is empty.
        let Some((namespace, id)) = key.split_once('/') else { return Ok(Refreshed::Skip) };
        let key = (namespace.to_owned(), id.to_owned());
        // An id may be re-used within a batch: what follows its last create is about the new
        // container, and a delete counts only after it.
        let last_create = events.iter().rposition(|e| e.created);
        let deleted = events.iter().rposition(|e| e.deleted) > last_create;
        let task_only = !events.is_empty() && events.iter().all(|e| e.task.is_some());
        let tasks: Vec<TaskEvent> = events[last_create.unwrap_or(0)..].iter().filter_map(|e| e.task).collect();
        let mut image = None;
        for event in events {
            self.note_exit(&key, &event);
            if event.image.is_some() {
                image = event.image;
            }
        }
        if self.sandboxes.locked().ids.contains(&key) {
            // The events of a known sandbox: nothing to store, and its exit is not needed.
            self.exits.locked().remove(&key);
            if deleted {
                self.sandboxes.locked().ids.remove(&key);
            }
            return Ok(Refreshed::Skip);
        }
        // Task events change only the state, and say what it is: apply them, in order, to the
        // container a refresh built last, with no call. A container created in the batch (and
        // never built) is read without its task: it has none but what the events after its
        // creation say. Anything else (a record event, a retry, a container only a list built)
        // reads record and task again, after forgetting the copy, so that a failed read leaves
        // no stale copy for the next task event.
        let cached = {
            let mut built = self.built.locked();
            let usable = task_only && !deleted && built.get(&key).is_some_and(|b| !b.listed);
            let new = last_create.is_some() && !built.contains_key(&key);
            let cached = usable.then(|| built.get(&key).map(|b| b.container.clone())).flatten();
            if cached.is_none() {
                built.remove(&key);
            }
            (cached, new)
        };
        let current = match cached {
            _ if deleted => Fetched::Gone,
            (Some(built), _) => {
                let last_exit = self.exits.locked().get(&key).copied();
                Fetched::Container(Box::new(after_task_events(&built, &tasks, last_exit)))
            }
            (None, true) => self.fetch_with(&mut clients, namespace, id, TaskFrom::SinceCreate(tasks)).await?,
            (None, false) => self.fetch(&mut clients, namespace, id).await?,
        };
        Ok(match current {
            Fetched::Container(container) => {
                let container = EntityArc::new(*container);
                self.remember(key, &container);
                Refreshed::Present(Entity::Container(container))
            }
            Fetched::Sandbox => {
                self.exits.locked().remove(&key);
                Refreshed::Skip
            }
            Fetched::Gone => {
                // The container was deleted before it could be read. Set it from what its events
                // carried and then unset it, so that a short-lived container is still seen; but
                // set nothing when its image is a sandbox's, or when the events carried nothing.
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
        let digests = Mutex::new(Digests::default());
        for name in ["docker.io/app:1", "docker.io/other:1"] {
            digests.locked().names.insert(("ns".into(), name.into()), Some("sha256:old".into()));
        }
        let update = ImageUpdate { name: "docker.io/app:1".into(), ..ImageUpdate::default() };
        let envelope = Envelope {
            topic: "/images/update".into(),
            namespace: "ns".into(),
            event: Some(any("containerd.services.images.v1.ImageUpdate", &update)),
            ..Envelope::default()
        };
        assert!(watched(envelope, &digests).is_none(), "an image event is no container event");
        let left: Vec<String> = digests.locked().names.keys().map(|(_, name)| name.clone()).collect();
        assert_eq!(digests.locked().changes, 1, "a digest asked for before the event is not stored after it");
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
    fn the_subscription_names_each_topic_it_acts_on_and_not_task_creates_or_execs() {
        let filters = subscription_filters();
        for topic in ["/containers/create", "/containers/delete", "/tasks/start", "/tasks/exit", "/images/delete"] {
            assert!(filters.contains(&format!(r#"topic=="{topic}""#)), "{topic} is not subscribed: {filters:?}");
        }
        for topic in ["/tasks/create", "/tasks/exec-added", "/tasks/exec-started", "/snapshot/prepare"] {
            assert!(!filters.iter().any(|f| f.contains(topic)), "{topic} is subscribed: {filters:?}");
        }
        // Exact topics only: a pattern would let the others back in.
        assert!(filters.iter().all(|f| f.starts_with("topic==\"/") && !f.contains('~')), "{filters:?}");
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
            assert_eq!(d.task, Some(TaskEvent::Exited), "a task event leaves the record as it was");
        }
        let start = TaskStart { container_id: "c1".into(), pid: 7 };
        assert_eq!(
            decode("/tasks/start", &any("containerd.events.TaskStart", &start)).unwrap().task,
            Some(TaskEvent::Started { pid: 7 })
        );
        let update = ContainerUpdate { id: "c1".into(), ..ContainerUpdate::default() };
        assert_eq!(
            decode("/containers/update", &any("containerd.events.ContainerUpdate", &update)).unwrap().task,
            None
        );
        let exec_exit = TaskExit { id: "exec-1".into(), ..exit };
        assert!(decode("/tasks/exit", &any("containerd.events.TaskExit", &exec_exit)).is_none());
        let delete = ContainerDelete { id: "c1".into() };
        assert!(decode("/containers/delete", &any("containerd.events.ContainerDelete", &delete)).unwrap().deleted);
        let create = ContainerCreate { id: "c2".into(), image: "docker.io/x:1".into(), runtime: None };
        let created = decode("/containers/create", &any("containerd.events.ContainerCreate", &create)).unwrap();
        assert_eq!(created.image.as_deref(), Some("docker.io/x:1"));
        assert_eq!(created.task, None);
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
