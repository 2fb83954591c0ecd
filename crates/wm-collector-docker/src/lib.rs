//! The Docker Engine collector: follows dockerd's event stream and reports every container as
//! source `runtime`, collector `docker`.
//!
//! One run: connect (`docker_host`, else `DOCKER_HOST`, else the default socket), read the
//! daemon's clock, subscribe to container events *since that instant*, list every container
//! (running or not) and inspect each (a few at a time), send them as one full list, then turn
//! events into sets and unsets until the stream breaks. Subscribing with `since` makes dockerd
//! replay whatever happened between the subscription and the list, so nothing is lost in between;
//! a replayed event only repeats what the list already reported, which the store ignores. When the
//! stream breaks the run fails retriably, and the store runs it again after a backoff: the new
//! run's full list corrects the store, so no stale container survives a daemon restart and none
//! is missing.
//!
//! The list and the inspects (of containers, and of images to name a container created from an
//! image id) go through a small HTTP client in this crate (`engine.rs`) that stops reading a body
//! at its cap ([`MAX_LIST_BODY`], [`MAX_INSPECT_BODY`]); bollard, which reads a whole body into
//! memory before decoding it, serves only the event stream, `/_ping` and `/info`.
//!
//! The run itself is `wm_driver`'s: events are handled in batches (whatever is pending), one
//! inspect per container per batch, 8 in flight. A container that is gone before it can be
//! inspected is still reported, from its events' attributes, then unset: a container that lives
//! for a few milliseconds is seen set and unset. A container whose inspect fails is skipped (the
//! store keeps what it had) and inspected again later; one whose inspect does not parse is
//! skipped the same way, and read again on its next event. Every call to dockerd has a deadline
//! (`docker_query_timeout`, default 5 s; the event stream's headers too).

#![forbid(unsafe_code)]

mod convert;
mod engine;
pub mod images;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::EventsOptionsBuilder;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};
use wm_core::sync::MutexExt;
use wm_core::{
    Collector, CollectorContext, CollectorError, Container, Entity, EntityId, EnvFilter, Kind, Seconds, Source,
    Timestamp,
};
use wm_driver::{Driver, ListWatch, Listed, Refreshed, WatchStream, Watched, with_deadline};

pub use convert::{container_from_event, container_from_inspect, is_pause_container};
use engine::{Engine, EngineError};
pub use engine::{MAX_INSPECT_BODY, MAX_LIST_BODY};

/// The socket used when `DOCKER_HOST` is not set.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// The docker socket's path under `/run`, which `/var/run` links to on most hosts: where a
/// container that mounts the host's `/run` (as the agent's DaemonSet does) finds it. Used when
/// [`DEFAULT_SOCKET`] does not exist.
pub const DEFAULT_SOCKET_UNDER_RUN: &str = "/run/docker.sock";

/// The collector's name, as it appears in health, telemetry and dumps.
pub const NAME: &str = "docker";

/// How many inspects are in flight at once during a list.
const INSPECT_CONCURRENCY: usize = 8;

/// The container actions that change what the store knows.
const RELEVANT_ACTIONS: &[&str] =
    &["create", "start", "restart", "die", "destroy", "rename", "pause", "unpause", "update", "health_status"];

/// Where and how to reach dockerd: the collector's part of the agent config, by its Datadog key
/// names.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// `docker_host`: the daemon address (`unix:///path`, `tcp://host:port`); unset: the
    /// `DOCKER_HOST` variable, else [`DEFAULT_SOCKET`] (or [`DEFAULT_SOCKET_UNDER_RUN`] when only
    /// that one exists).
    pub docker_host: Option<String>,
    /// `docker_query_timeout` (Datadog's key, seconds, default 5): the deadline of every call to
    /// dockerd; a value under one second counts as one second.
    pub docker_query_timeout: Seconds,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self { docker_host: None, docker_query_timeout: Seconds(5) }
    }
}

/// The most image names the collector caches (by image id) before it empties the cache; a node
/// has far fewer images.
const MAX_IMAGE_NAMES: usize = 4096;

impl DockerConfig {
    /// Returns the deadline of one call to dockerd: `docker_query_timeout`, at least one second.
    fn deadline(&self) -> Duration {
        self.docker_query_timeout.duration().max(Duration::from_secs(1))
    }

    /// Returns the name of the setting that gives the daemon's address: `"docker_host"` when that
    /// key is set, else `"DOCKER_HOST"` when that variable is set, else `None` (the default
    /// socket is used). An empty value counts as unset.
    ///
    /// Error messages use it to name what the user can change.
    pub fn configured_by(&self) -> Option<&'static str> {
        if self.docker_host.as_ref().is_some_and(|h| !h.is_empty()) {
            Some("docker_host")
        } else if std::env::var("DOCKER_HOST").is_ok_and(|h| !h.is_empty()) {
            Some("DOCKER_HOST")
        } else {
            None
        }
    }

    /// Returns the daemon address to connect to.
    ///
    /// It is `docker_host`, else `DOCKER_HOST`, else `unix://` followed by the first of
    /// [`DEFAULT_SOCKET`] and [`DEFAULT_SOCKET_UNDER_RUN`] that exists ([`DEFAULT_SOCKET`] when
    /// neither does). An empty value counts as unset.
    pub fn resolved_host(&self) -> String {
        self.docker_host
            .clone()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| {
                let found = [DEFAULT_SOCKET, DEFAULT_SOCKET_UNDER_RUN].into_iter().find(|p| Path::new(p).exists());
                format!("unix://{}", found.unwrap_or(DEFAULT_SOCKET))
            })
    }
}

/// Follows dockerd and reports its containers; hand it to the store with
/// [`into_collector`](Self::into_collector).
#[derive(Debug)]
pub struct DockerCollector {
    config: DockerConfig,
    /// Decides which env vars of a container are stored: the store's filter, copied at the start
    /// of each run.
    env: EnvFilter,
    /// Image id → the name to show, for containers created from a bare image id (`None`: the
    /// image has no tag). An image id is a hash of the image's content, so one id is always the
    /// same image. Emptied at the start of each run and when it holds [`MAX_IMAGE_NAMES`] names.
    image_names: Mutex<HashMap<String, Option<String>>>,
    /// The clients of the current run; `None` until [`watch`](ListWatch::watch) connects.
    docker: Option<Clients>,
}

/// The two clients of one connection: bollard for the event stream, `/_ping` and `/info`, and
/// this crate's `engine` for the list and the inspects, whose bodies it caps.
#[derive(Clone, Debug)]
struct Clients {
    bollard: Docker,
    engine: Engine,
}

impl DockerCollector {
    /// Creates a collector for `config`.
    pub fn new(config: DockerConfig) -> Self {
        Self { config, env: EnvFilter::default(), image_names: Mutex::new(HashMap::new()), docker: None }
    }

    /// Wraps the collector in a [`Driver`], ready to hand to the store.
    pub fn into_collector(self) -> Collector {
        Collector::stream(NAME, Source::Runtime, Driver::new(self))
    }

    /// Returns the clients of the current run; a retriable error before `watch` connected.
    fn client(&self) -> Result<Clients, CollectorError> {
        self.docker.clone().ok_or_else(|| CollectorError::Retriable {
            context: "docker: not connected (list or refresh before watch)".into(),
            source: None,
        })
    }

    /// Builds both clients for the configured address (see [`connect`]).
    fn connect(&self) -> Result<Clients, CollectorError> {
        connect(&self.config)
    }

    /// Inspects one container within the deadline and converts it, looking up its image's name
    /// when it was created from a bare image id.
    ///
    /// Returns `Ok(None)` when dockerd does not know the container (any more), or when it is a
    /// pause container or its inspect has no id.
    ///
    /// # Errors
    ///
    /// [`InspectError::Undecodable`] when the body passes its cap or does not parse;
    /// [`InspectError::Failed`] when the call fails, gets an error status or passes its deadline.
    async fn inspect(&self, engine: &Engine, id: &str) -> Result<Option<Container>, InspectError> {
        let inspect = match tokio::time::timeout(self.config.deadline(), engine.inspect_container(id)).await {
            Err(_) => return Err(InspectError::Failed(self.timed_out(&format!("inspecting {id}")))),
            Ok(Ok(Some(inspect))) => inspect,
            Ok(Ok(None)) => return Ok(None),
            Ok(Err(EngineError::Undecodable(message))) => return Err(InspectError::Undecodable(message)),
            Ok(Err(EngineError::Failed(message))) => {
                return Err(InspectError::Failed(CollectorError::Retriable {
                    context: format!("docker: inspecting {id} failed: {message}"),
                    source: None,
                }));
            }
        };
        let image_name = match inspect.config.as_ref().and_then(|c| c.image.as_deref()) {
            Some(image) if image.strip_prefix("sha256:").is_some_and(wm_core::is_full_hex_id) => {
                self.image_name(engine, image).await
            }
            _ => None,
        };
        Ok(container_from_inspect(&inspect, image_name.as_deref(), &self.env))
    }

    /// Returns the retriable error for a call (`what`) that passed its deadline, naming
    /// `docker_query_timeout`.
    fn timed_out(&self, what: &str) -> CollectorError {
        CollectorError::Retriable {
            context: format!("docker: {what} timed out after {:?} (docker_query_timeout)", self.config.deadline()),
            source: None,
        }
    }

    /// Returns the first repo tag of the image `image_id`, from the cache when it is there.
    ///
    /// A lookup that finds no tag caches `None`; one that fails or passes its deadline returns
    /// `None` without caching it, so the next inspect tries again.
    async fn image_name(&self, engine: &Engine, image_id: &str) -> Option<String> {
        if let Some(name) = self.image_names.locked().get(image_id) {
            return name.clone();
        }
        let name = match tokio::time::timeout(self.config.deadline(), engine.image_name(image_id)).await {
            Ok(Ok(name)) => name,
            Ok(Err(e)) => {
                debug!(image_id, error = %e, "cannot resolve the image's name");
                return None;
            }
            Err(_) => {
                debug!(image_id, "resolving the image's name timed out");
                return None;
            }
        };
        let mut names = self.image_names.locked();
        if names.len() >= MAX_IMAGE_NAMES {
            names.clear();
        }
        names.insert(image_id.to_owned(), name.clone());
        name
    }

    /// Lists every container and inspects each, [`INSPECT_CONCURRENCY`] at a time.
    ///
    /// A container whose inspect failed goes in [`Listed::unreadable`]. One whose inspect does
    /// not parse is logged and left out, as are pause containers and containers removed since
    /// the list.
    ///
    /// # Errors
    ///
    /// Fails with a retriable error when the list call fails or passes its deadline.
    async fn list_all(&self, engine: &Engine) -> Result<Listed, CollectorError> {
        let ids = with_deadline(
            self.config.deadline(),
            || "docker: listing containers (docker_query_timeout)".into(),
            async {
                engine.container_ids().await.map_err(|e| CollectorError::Retriable {
                    context: format!("docker: listing containers failed: {e}"),
                    source: None,
                })
            },
        )
        .await?;
        let inspected: Vec<(String, Result<Option<Container>, InspectError>)> = futures::stream::iter(ids)
            .map(|id| async move {
                let result = self.inspect(engine, &id).await;
                (id, result)
            })
            .buffered(INSPECT_CONCURRENCY)
            .collect()
            .await;
        let mut listed = Listed::default();
        for (id, result) in inspected {
            match result {
                Ok(container) => listed.entities.extend(container.map(Entity::from)),
                // As in `refresh`: the store keeps what it had of it (nothing, if it is new).
                Err(InspectError::Undecodable(message)) => {
                    warn!(container_id = %id, %message, "docker: skipping a container whose inspect does not parse");
                    listed.kept.push(EntityId::new(Kind::Container, id));
                }
                Err(InspectError::Failed(_)) => {
                    let key = id.clone();
                    listed.unreadable.push((key, EntityId::new(Kind::Container, id)));
                }
            }
        }
        Ok(listed)
    }
}

/// Builds both clients for the address of `config`, first checking that a unix socket exists.
///
/// A missing socket is a `Waiting` error when a setting names it, and `EnvironmentAbsent` when
/// it is the default one; either names the socket, so that the store looks again as soon as it
/// appears.
fn connect(config: &DockerConfig) -> Result<Clients, CollectorError> {
    let host = config.resolved_host();
    let bollard =
        if let Some(path) = host.strip_prefix("unix://").or_else(|| host.starts_with('/').then_some(host.as_str())) {
            if !Path::new(path).exists() {
                return Err(match config.configured_by() {
                    Some(key) => CollectorError::waiting_for_file(format!("{path} ({key})"), path),
                    None => CollectorError::absent_at(format!("no docker socket at {path}"), path),
                });
            }
            Docker::connect_with_socket(path, config.deadline().as_secs(), bollard::API_DEFAULT_VERSION)
        } else {
            Docker::connect_with_http(&host, config.deadline().as_secs(), bollard::API_DEFAULT_VERSION)
        }
        .map_err(|e| CollectorError::retriable(format!("cannot reach dockerd at {host} (DOCKER_HOST)"), e))?;
    let engine = Engine::new(&host, config.deadline())
        .map_err(|e| CollectorError::Retriable { context: format!("docker: {e}"), source: None })?;
    Ok(Clients { bollard, engine })
}

/// Connects to the dockerd of `config`, pings it, reads its clock and subscribes to its events
/// of type `kind` (`container`, `image`) since that instant.
///
/// dockerd replays the events since that instant, so nothing that happens between the
/// subscription and a list made after it is lost, and there is nothing to probe. An event that
/// does not parse is logged and dropped; any other stream error breaks the stream.
///
/// Only the `actions` of `kind` are asked for: dockerd drops events for a subscriber that falls
/// behind (its buffer holds 1,024), so events the collector would ignore anyway (a health
/// check's `exec_*`, say) must not take room in it nor in the driver's queue.
async fn subscribe(
    config: &DockerConfig,
    kind: &'static str,
    actions: &[&'static str],
) -> Result<(Clients, WatchStream<EventMessage>), CollectorError> {
    let clients = connect(config)?;
    let docker = &clients.bollard;
    let deadline = config.deadline();
    with_deadline(deadline, || "docker: /_ping (docker_query_timeout)".into(), async {
        docker.ping().await.map_err(|e| CollectorError::retriable("docker: the daemon does not answer /_ping", e))
    })
    .await?;
    let since = with_deadline(deadline, || "docker: /info (docker_query_timeout)".into(), daemon_now(docker)).await?;
    // dockerd matches `health_status` as a prefix ("health_status: healthy"), the rest exactly.
    let filters: HashMap<&str, Vec<&str>> = HashMap::from([("type", vec![kind]), ("event", actions.to_vec())]);
    let options = EventsOptionsBuilder::new().since(&since).filters(&filters).build();
    let stream = docker.events(Some(options)).filter_map(move |item| async move {
        match item {
            Ok(event) => Some(Ok(Watched::Event(event))),
            Err(DockerError::JsonDataError { message, .. }) => {
                warn!(%message, kind, "docker: skipping an event that does not parse");
                None
            }
            Err(e) => Some(Err(CollectorError::retriable(format!("docker: the {kind} event stream broke"), e))),
        }
    });
    Ok((clients, stream.boxed()))
}

/// Why an inspect gave no container.
#[derive(Debug)]
enum InspectError {
    /// Its body passed its cap or does not parse: logged and skipped.
    Undecodable(String),
    /// The call failed or passed its deadline: retried later.
    Failed(CollectorError),
}

/// Fetches one container from dockerd when the tagger is asked about a container the collector
/// has not reported yet (the tagger's fetch-on-miss).
///
/// It connects on first use and reuses its client until a call fails; every call has the
/// `docker_query_timeout` deadline. `fetch` returns `None` when dockerd is absent, does not know
/// the container, or fails.
///
/// Only a full id (64 lowercase hex digits) is fetched: the id goes into the request's path as
/// it is, so `x/../../system/df` or `<id>/json?size=true` would reach another endpoint.
#[derive(Debug)]
pub struct DockerFetcher {
    collector: DockerCollector,
    client: Mutex<Option<Engine>>,
}

impl DockerFetcher {
    /// Creates a fetcher for `config`; the containers it returns hold only the env vars that
    /// `env` keeps.
    pub fn new(config: DockerConfig, env: EnvFilter) -> Self {
        Self { collector: DockerCollector { env, ..DockerCollector::new(config) }, client: Mutex::new(None) }
    }
}

#[async_trait]
impl wm_core::ContainerFetcher for DockerFetcher {
    fn accepts(&self, container_id: &str) -> bool {
        wm_core::is_full_hex_id(container_id)
    }

    async fn fetch(&self, container_id: &str) -> Option<Container> {
        if !self.accepts(container_id) {
            return None;
        }
        let kept = self.client.locked().clone();
        let engine = match kept {
            Some(engine) => engine,
            None => {
                let engine = self.collector.connect().ok()?.engine;
                *self.client.locked() = Some(engine.clone());
                engine
            }
        };
        match self.collector.inspect(&engine, container_id).await {
            Ok(container) => container,
            Err(error) => {
                debug!(container_id, ?error, "docker: fetch on a tag cache miss failed");
                *self.client.locked() = None;
                None
            }
        }
    }
}

/// Returns the event's action without the detail some actions carry after a colon.
fn action(event: &EventMessage) -> &str {
    let action = event.action.as_deref().unwrap_or_default();
    // `health_status: healthy` gives `health_status`, `exec_start: sh` gives `exec_start`.
    action.split(':').next().unwrap_or(action).trim()
}

/// Returns the attributes of the event's actor, or an empty map (shared, so nothing is
/// allocated) when it has none.
fn attributes(event: &EventMessage) -> &HashMap<String, String> {
    static EMPTY: std::sync::OnceLock<HashMap<String, String>> = std::sync::OnceLock::new();
    event.actor.as_ref().and_then(|a| a.attributes.as_ref()).unwrap_or_else(|| EMPTY.get_or_init(HashMap::new))
}

/// Returns when the event happened: from `timeNano` when set, else from `time` (seconds);
/// `None` when neither is.
fn event_time(event: &EventMessage) -> Option<Timestamp> {
    match (event.time_nano, event.time) {
        (Some(nanos), _) if nanos > 0 => Some(Timestamp::from_unix_nanos(nanos)),
        (_, Some(secs)) if secs > 0 => Some(Timestamp::from_unix(secs, 0)),
        _ => None,
    }
}

/// Reads dockerd's clock from `/info`, written as the events API's `since` takes it
/// (`secs.nanos`).
///
/// It reads the daemon's clock rather than ours so that a skew between the two cannot make the
/// subscription start after the list.
///
/// # Errors
///
/// Fails with a retriable error when `/info` fails.
async fn daemon_now(docker: &Docker) -> Result<String, CollectorError> {
    let info = docker.info().await.map_err(|e| CollectorError::retriable("docker: /info failed", e))?;
    let now = info.system_time.as_deref().and_then(|t| Timestamp::parse_rfc3339(t).ok());
    let nanos = match now {
        Some(t) => t.unix_nanos(),
        None => {
            // No parsable clock: fall back to ours, a second early (a replayed event is harmless).
            let local = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            i64::try_from(local.as_nanos()).unwrap_or(i64::MAX) - 1_000_000_000
        }
    };
    Ok(format!("{}.{:09}", nanos.div_euclid(1_000_000_000), nanos.rem_euclid(1_000_000_000)))
}

/// Tells whether the event is about a container (or has no type) and has an action that changes
/// what the store holds ([`RELEVANT_ACTIONS`]).
fn relevant(event: &EventMessage) -> bool {
    matches!(event.typ, Some(EventMessageTypeEnum::CONTAINER) | None) && RELEVANT_ACTIONS.contains(&action(event))
}

#[async_trait]
impl ListWatch for DockerCollector {
    type Event = EventMessage;

    fn prepare(&mut self, ctx: &CollectorContext) {
        self.env = ctx.env.clone();
    }

    /// Subscribes to container events since the daemon's clock, which dockerd replays from
    /// there, so nothing is lost before the list. Empties the image-name cache.
    async fn watch(&mut self) -> Result<WatchStream<EventMessage>, CollectorError> {
        self.docker = None;
        self.image_names.locked().clear();
        let (clients, stream) = subscribe(&self.config, "container", RELEVANT_ACTIONS).await?;
        self.docker = Some(clients);
        Ok(stream)
    }

    async fn list(&mut self) -> Result<Listed, CollectorError> {
        let clients = self.client()?;
        self.list_all(&clients.engine).await
    }

    fn key(&self, event: &EventMessage) -> Option<String> {
        if !relevant(event) {
            return None;
        }
        event.actor.as_ref().and_then(|a| a.id.clone()).filter(|id| !id.is_empty())
    }

    /// Inspects the container, unless its last event of the batch is `destroy`; a container that
    /// is gone is reported from its events.
    async fn refresh(&self, id: &str, events: Vec<EventMessage>) -> Result<Refreshed, CollectorError> {
        let clients = self.client()?;
        let destroyed = events.last().is_some_and(|e| action(e) == "destroy");
        let current = if destroyed {
            None
        } else {
            match self.inspect(&clients.engine, id).await {
                Ok(found) => found,
                Err(InspectError::Undecodable(message)) => {
                    warn!(container_id = %id, %message, "docker: skipping a container whose inspect does not parse");
                    return Ok(Refreshed::Skip);
                }
                Err(InspectError::Failed(error)) => return Err(error),
            }
        };
        Ok(match current {
            Some(container) => Refreshed::Present(Entity::from(container)),
            // Gone: set it as its last event other than `destroy` describes it, so that a
            // short-lived container is still seen; the driver then unsets it.
            None => Refreshed::Gone {
                id: EntityId::new(Kind::Container, id),
                said: events
                    .iter()
                    .rev()
                    .find(|e| action(e) != "destroy")
                    .and_then(|e| container_from_event(id, action(e), attributes(e), event_time(e)))
                    .map(Entity::from),
            },
        })
    }
}
