//! The collector contract: what a collector implements and the narrow handles it is given.
//!
//! A collector never sees the store. It gets a [`SourceSink`] bound to its own source and name,
//! and, when it needs to look something up, a [`StoreReader`]. It never sleeps and never retries:
//! it returns an error that says whether trying again may help, and the store owns the backoff,
//! the pull timer and the pull timeout.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::cancel::CancellationToken;
use crate::entity::{Container, EcsTask, Entity, EntityArc, EntityId, EnvFilter, Kind, KubernetesPod, Source};
use crate::event::EventType;

/// The sender behind a sink: the source a collector reports for, and the collector's name.
///
/// A full list replaces only what was sent before under the same origin, so docker's full list
/// never unsets a container that containerd reported.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The source the collector reports for.
    pub source: Source,
    /// The collector's name (`docker`, `containerd` …).
    pub collector: Arc<str>,
}

/// A message a collector sends through its sink.
#[derive(Clone, Debug, PartialEq)]
pub enum SinkMessage {
    /// Sets and unsets, applied in order as one batch.
    Events(Vec<(EventType, Entity)>),
    /// Everything this origin knows now, applied in one step: entities that are new or changed
    /// are set, and entities this origin sent before but that are missing now are unset, except
    /// those named in `keep`.
    FullList {
        /// Every entity the collector read.
        entities: Vec<Entity>,
        /// Entities the collector could not read this time (an inspect failed): the store keeps
        /// what this origin sent about them before instead of unsetting them.
        keep: Vec<EntityId>,
    },
}

/// Receives what collectors send; the store implements it.
///
/// Collectors do not call it directly: each gets a [`SourceSink`], which adds the collector's
/// origin to every message.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Applies `message` as sent by `origin`.
    ///
    /// Returns once the store has updated its state with the message. While the store is
    /// saturated, it waits for room first.
    async fn send(&self, origin: &Origin, message: SinkMessage);

    /// Counts an entity the collector could not read and skipped, in the
    /// `workloadmeta.entity_errors` metric. Does nothing by default.
    fn entity_error(&self, _origin: &Origin) {}
}

/// Sends a collector's sets, unsets and full lists into the store, under the collector's own
/// origin.
#[derive(Clone)]
pub struct SourceSink {
    origin: Origin,
    inner: Arc<dyn EventSink>,
}

impl SourceSink {
    /// Creates a sink that sends into `inner` as `origin`.
    pub fn new(origin: Origin, inner: Arc<dyn EventSink>) -> Self {
        Self { origin, inner }
    }

    /// Returns the origin this sink sends as.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Sends a set of one entity: the entity is new or has changed.
    pub async fn set(&self, entity: impl Into<Entity>) {
        self.events(vec![(EventType::Set, entity.into())]).await;
    }

    /// Sends an unset of one entity: the entity is gone.
    ///
    /// The entity needs only its id. Any other field it carries is laid over the last known
    /// version in the unset event subscribers receive (a runtime's exit code and finish time).
    pub async fn unset(&self, entity: impl Into<Entity>) {
        self.events(vec![(EventType::Unset, entity.into())]).await;
    }

    /// Sends a batch of sets and unsets, which the store applies in order.
    ///
    /// Each subscriber receives the batch's changes as one bundle. An empty batch sends nothing.
    pub async fn events(&self, events: Vec<(EventType, Entity)>) {
        if !events.is_empty() {
            self.inner.send(&self.origin, SinkMessage::Events(events)).await;
        }
    }

    /// Replaces everything this origin sent before with `entities`.
    ///
    /// The store sets what is new or changed, and unsets what this origin sent before but
    /// `entities` lacks.
    pub async fn full_list(&self, entities: Vec<Entity>) {
        self.full_list_keeping(entities, Vec::new()).await;
    }

    /// Replaces everything this origin sent before with `entities`, except the entities named
    /// in `keep`.
    ///
    /// Put in `keep` the entities the collector could not read this time (an inspect failed):
    /// the store leaves what this origin sent about them before as it was, instead of unsetting
    /// them.
    pub async fn full_list_keeping(&self, entities: Vec<Entity>, keep: Vec<EntityId>) {
        self.inner.send(&self.origin, SinkMessage::FullList { entities, keep }).await;
    }

    /// Counts an entity the collector could not read and skipped.
    ///
    /// The collector logs the error itself; this only adds it to the store's count.
    pub fn entity_error(&self) {
        self.inner.entity_error(&self.origin);
    }
}

impl fmt::Debug for SourceSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceSink").field("origin", &self.origin).finish_non_exhaustive()
    }
}

/// A read handle on the store's merged view, for a collector that needs to look something up.
pub trait StoreReader: Send + Sync {
    /// Returns the merged entity with this id, or `None` if the store has none.
    fn get(&self, id: &EntityId) -> Option<Entity>;

    /// Returns every merged entity of `kind`, in id order.
    fn list(&self, kind: Kind) -> Vec<Entity>;

    /// Returns every entity of `kind` as `source` reported it (not merged), in id order: what
    /// that source knows, and nothing another source added (a collector that reads what another
    /// source reported must not read back what it added itself).
    fn list_from(&self, kind: Kind, source: Source) -> Vec<Entity>;

    /// Returns the merged container with this id, or `None` if the store has none.
    fn get_container(&self, id: &str) -> Option<EntityArc<Container>> {
        self.get(&EntityId::new(Kind::Container, id)).and_then(|e| e.as_container().cloned())
    }

    /// Returns the merged pod with this UID, or `None` if the store has none.
    fn get_kubernetes_pod(&self, uid: &str) -> Option<EntityArc<KubernetesPod>> {
        self.get(&EntityId::new(Kind::KubernetesPod, uid)).and_then(|e| e.as_kubernetes_pod().cloned())
    }

    /// Returns the merged ECS task with this ARN, or `None` if the store has none.
    fn get_ecs_task(&self, arn: &str) -> Option<EntityArc<EcsTask>> {
        self.get(&EntityId::new(Kind::EcsTask, arn)).and_then(|e| e.as_ecs_task().cloned())
    }
}

/// Fetches one container from its runtime on demand (a `docker inspect`): the tagger's
/// cache-miss path, for a container asked about before its collector reported it. Runtime
/// collectors implement it; the agent hands them to the tagger.
#[async_trait]
pub trait ContainerFetcher: Send + Sync {
    /// Tells whether `container_id` has the form of this runtime's ids.
    ///
    /// The id comes from a client; only an id this accepts is ever passed to [`fetch`], so a
    /// fetcher that builds a URL from it cannot be steered to another path of its API.
    ///
    /// [`fetch`]: ContainerFetcher::fetch
    fn accepts(&self, container_id: &str) -> bool;

    /// Asks the runtime for the container with this id.
    ///
    /// Returns `None` if the runtime does not know the id or the request fails.
    async fn fetch(&self, container_id: &str) -> Option<Container>;
}

/// Tells whether `id` is a full container id as docker and podman write it: 64 lowercase
/// hexadecimal digits.
pub fn is_full_hex_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Everything a collector is given when the store runs it.
#[derive(Clone)]
pub struct CollectorContext {
    /// The sink the collector sends through.
    pub sink: SourceSink,
    /// A read handle on the merged view.
    pub reader: Arc<dyn StoreReader>,
    /// Cancelled when the store shuts down. The store then also drops the future of any call it
    /// is awaiting on the collector; a collector that runs work of its own (a spawned task, a
    /// blocking thread) must watch this token and end that work when it is cancelled.
    pub cancel: CancellationToken,
    /// Decides which env vars of its containers the collector keeps: those the tag rules read
    /// and the ones the agent's config names (the keys of `container_env_as_tags` and
    /// `docker_env_as_tags`). Every collector of a store gets the same filter, so every runtime
    /// keeps the same env vars.
    pub env: EnvFilter,
}

impl fmt::Debug for CollectorContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectorContext").field("sink", &self.sink).finish_non_exhaustive()
    }
}

/// A boxed error, held as the cause of a [`CollectorError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a collector stopped; the variant decides what the store does next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectorError {
    /// The collector's runtime or orchestrator was not detected on this node (no socket at the
    /// default path, no env var).
    ///
    /// Before the collector's first full list, the store looks again every re-detection period,
    /// and the collector does not hold the agent's readiness back meanwhile. After that first
    /// list, the store retries with backoff, as for a retriable error.
    #[error("environment not detected: {reason}")]
    EnvironmentAbsent {
        /// What was looked for.
        reason: String,
        /// The file whose appearance would end the wait (a daemon's socket), when there is one:
        /// the store watches for it and looks again at once when it appears.
        watch: Option<std::path::PathBuf>,
    },
    /// Something the configuration names (a socket path set by a config key) is not there yet.
    ///
    /// Before the collector's first full list, the store looks again every re-detection period,
    /// and the agent is not ready until the thing appears and the collector has sent its first
    /// full list. After that first list, the store retries with backoff, as for a retriable
    /// error.
    #[error("waiting for {what}")]
    Waiting {
        /// What the collector waits for (`/run/containerd/containerd.sock (cri_socket_path)`).
        what: String,
        /// The file whose appearance would end the wait, when there is one (see
        /// `EnvironmentAbsent`).
        watch: Option<std::path::PathBuf>,
    },
    /// A failure that may go away (daemon down, connection reset): the store retries with
    /// backoff.
    #[error("{context}")]
    Retriable {
        /// What failed, naming what the user can change.
        context: String,
        /// The cause.
        #[source]
        source: Option<BoxError>,
    },
    /// A failure that waiting will not fix (bad configuration): returned from `run` or `start`,
    /// it stops the collector for good.
    #[error("{context}")]
    Permanent {
        /// What failed, naming what the user can change.
        context: String,
        /// The cause.
        #[source]
        source: Option<BoxError>,
    },
}

impl CollectorError {
    /// Creates an `EnvironmentAbsent` error; `reason` says what was looked for.
    pub fn absent(reason: impl Into<String>) -> Self {
        Self::EnvironmentAbsent { reason: reason.into(), watch: None }
    }

    /// Creates an `EnvironmentAbsent` error for a missing file at `path` (a daemon's socket):
    /// the store looks again as soon as the file appears, not only at the next re-detection.
    pub fn absent_at(reason: impl Into<String>, path: impl Into<std::path::PathBuf>) -> Self {
        Self::EnvironmentAbsent { reason: reason.into(), watch: Some(path.into()) }
    }

    /// Creates a `Waiting` error; `what` names what is missing and the config key that set it.
    pub fn waiting_for(what: impl Into<String>) -> Self {
        Self::Waiting { what: what.into(), watch: None }
    }

    /// Creates a `Waiting` error for a file at `path` that the config names and that is not
    /// there yet: the store looks again as soon as it appears.
    pub fn waiting_for_file(what: impl Into<String>, path: impl Into<std::path::PathBuf>) -> Self {
        Self::Waiting { what: what.into(), watch: Some(path.into()) }
    }

    /// Creates a `Retriable` error: `context` says what failed, `source` is the cause.
    pub fn retriable(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Retriable { context: context.into(), source: Some(source.into()) }
    }

    /// Creates a `Permanent` error: `context` says what failed, `source` is the cause.
    pub fn permanent(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Permanent { context: context.into(), source: Some(source.into()) }
    }

    /// Returns the error and its chain of causes on one line (`what failed: why: the root cause`).
    pub fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
    }

    /// Tells whether trying again may help: only a `Retriable` error says so.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Retriable { .. })
    }
}

/// A collector that follows its source's change stream.
///
/// `run` detects the environment, connects, subscribes to changes, sends a full list, then
/// forwards changes until the stream breaks. It returns `Err` when it must stop; the store runs
/// it again after a backoff when the error is retriable (or when `run` returns `Ok`: the
/// stream ended), and each new run starts with a fresh full list, so nothing stale survives a
/// daemon restart. Subscribe before listing, so no change between the two is lost.
#[async_trait]
pub trait StreamCollector: Send {
    /// Runs until the stream ends or fails.
    ///
    /// # Errors
    ///
    /// Returns an error when the collector must stop; the variant tells the store whether and
    /// when to run it again.
    async fn run(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError>;
}

/// A collector that the store pulls on a timer.
///
/// `start` detects the environment and connects (retried with backoff while it fails
/// retriably). `pull` reads the source once and usually ends with `sink.full_list(..)`; the
/// store calls it at once after `start`, then every interval, never two at once, each bounded by
/// a timeout. A failed pull changes nothing in the store.
#[async_trait]
pub trait PullCollector: Send {
    /// Detects the environment and connects.
    ///
    /// # Errors
    ///
    /// Returns an error when the environment is not there or the connection fails; the variant
    /// tells the store whether and when to call `start` again.
    async fn start(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError>;

    /// Reads the source once.
    ///
    /// # Errors
    ///
    /// Returns an error when this read fails. Whatever the variant, the store keeps what it had
    /// and pulls again at the next interval.
    async fn pull(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError>;
}

/// How the store drives a collector.
#[allow(missing_debug_implementations)] // boxed collectors are not Debug; `Collector` prints the kind
pub enum CollectorKind {
    /// Runs a change stream.
    Stream(Box<dyn StreamCollector>),
    /// Pulls on a timer.
    Pull {
        /// The collector.
        collector: Box<dyn PullCollector>,
        /// Time between the start of two pulls (default 5 s).
        interval: Duration,
        /// The longest one pull may take (default 30 s).
        timeout: Duration,
    },
}

/// A collector with its name and source, ready to hand to the store.
pub struct Collector {
    /// Its name (`docker`): used in logs, health and telemetry, and to scope full lists.
    pub name: Arc<str>,
    /// The source it speaks for.
    pub source: Source,
    /// How the store drives it.
    pub kind: CollectorKind,
}

impl Collector {
    /// Default time between two pulls.
    pub const DEFAULT_PULL_INTERVAL: Duration = Duration::from_secs(5);
    /// Default bound on one pull.
    pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(30);

    /// Creates a stream collector named `name` that reports for `source`.
    pub fn stream(name: impl Into<Arc<str>>, source: Source, collector: impl StreamCollector + 'static) -> Self {
        Self { name: name.into(), source, kind: CollectorKind::Stream(Box::new(collector)) }
    }

    /// Creates a pull collector named `name` that reports for `source`, with the default interval
    /// and timeout.
    pub fn pull(name: impl Into<Arc<str>>, source: Source, collector: impl PullCollector + 'static) -> Self {
        Self {
            name: name.into(),
            source,
            kind: CollectorKind::Pull {
                collector: Box::new(collector),
                interval: Self::DEFAULT_PULL_INTERVAL,
                timeout: Self::DEFAULT_PULL_TIMEOUT,
            },
        }
    }

    /// Sets a pull collector's interval (ignored for a stream collector).
    pub fn with_pull_interval(mut self, every: Duration) -> Self {
        if let CollectorKind::Pull { interval, .. } = &mut self.kind {
            *interval = every;
        }
        self
    }

    /// Sets a pull collector's timeout (ignored for a stream collector).
    pub fn with_pull_timeout(mut self, bound: Duration) -> Self {
        if let CollectorKind::Pull { timeout, .. } = &mut self.kind {
            *timeout = bound;
        }
        self
    }

    /// Returns the origin its sink sends as.
    pub fn origin(&self) -> Origin {
        Origin { source: self.source, collector: self.name.clone() }
    }
}

impl fmt::Debug for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            CollectorKind::Stream(_) => "stream",
            CollectorKind::Pull { .. } => "pull",
        };
        f.debug_struct("Collector")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("kind", &kind)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retriability_is_in_the_variant() {
        assert!(CollectorError::retriable("docker daemon at /run/docker.sock not answering", "eof").is_retriable());
        assert!(!CollectorError::absent("no socket").is_retriable());
        assert!(!CollectorError::permanent("bad cri_socket_path", "x").is_retriable());
        let e = CollectorError::retriable("list failed", "connection reset");
        assert_eq!(e.to_string(), "list failed");
        assert_eq!(std::error::Error::source(&e).map(|s| s.to_string()).as_deref(), Some("connection reset"));
    }
}
