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
use crate::entity::{Container, EcsTask, Entity, EntityId, EnvFilter, Kind, KubernetesPod, Source};
use crate::event::EventType;

/// Who speaks through a sink: a source and the collector's name. A full list replaces what this
/// origin said before, and nothing else (docker's list never unsets containerd's containers).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The source the collector speaks for.
    pub source: Source,
    /// The collector's name (`docker`, `containerd` …).
    pub collector: Arc<str>,
}

/// What a collector sends.
#[derive(Clone, Debug, PartialEq)]
pub enum SinkMessage {
    /// Sets and unsets, applied in order as one batch.
    Events(Vec<(EventType, Entity)>),
    /// Everything this origin knows now: what is new or changed is set, what is missing is unset,
    /// atomically; except `keep`, entities the collector could not read this time (an inspect
    /// failed): what it said about them before stays.
    FullList {
        /// Every entity it read.
        entities: Vec<Entity>,
        /// Entities it could not read: not unset.
        keep: Vec<EntityId>,
    },
}

/// The store side of a sink. Implemented by the store; collectors use [`SourceSink`].
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Applies `message` as said by `origin`. Returns once the store has taken it (its state
    /// updated); waits while the store is saturated.
    async fn send(&self, origin: &Origin, message: SinkMessage);

    /// Counts an entity the collector could not read and skipped (`workloadmeta.entity_errors`).
    fn entity_error(&self, _origin: &Origin) {}
}

/// A collector's way into the store, bound to its own origin.
#[derive(Clone)]
pub struct SourceSink {
    origin: Origin,
    inner: Arc<dyn EventSink>,
}

impl SourceSink {
    /// A sink that speaks as `origin` into `inner`.
    pub fn new(origin: Origin, inner: Arc<dyn EventSink>) -> Self {
        Self { origin, inner }
    }

    /// Who this sink speaks as.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Sets one entity.
    pub async fn set(&self, entity: impl Into<Entity>) {
        self.events(vec![(EventType::Set, entity.into())]).await;
    }

    /// Unsets one entity; the fields it carries beyond the id are laid over the last version.
    pub async fn unset(&self, entity: impl Into<Entity>) {
        self.events(vec![(EventType::Unset, entity.into())]).await;
    }

    /// Sends a batch of sets and unsets (one bundle per subscriber). An empty batch is skipped.
    pub async fn events(&self, events: Vec<(EventType, Entity)>) {
        if !events.is_empty() {
            self.inner.send(&self.origin, SinkMessage::Events(events)).await;
        }
    }

    /// Replaces everything this origin said with `entities`.
    pub async fn full_list(&self, entities: Vec<Entity>) {
        self.full_list_keeping(entities, Vec::new()).await;
    }

    /// Replaces everything this origin said with `entities`, except what it said about `keep`
    /// (entities listed but unreadable this time: left as they were, not unset).
    pub async fn full_list_keeping(&self, entities: Vec<Entity>, keep: Vec<EntityId>) {
        self.inner.send(&self.origin, SinkMessage::FullList { entities, keep }).await;
    }

    /// Counts an entity that could not be read and was skipped (the collector logs it).
    pub fn entity_error(&self) {
        self.inner.entity_error(&self.origin);
    }
}

impl fmt::Debug for SourceSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceSink").field("origin", &self.origin).finish_non_exhaustive()
    }
}

/// A read handle on the store's merged view.
pub trait StoreReader: Send + Sync {
    /// The merged entity with this id.
    fn get(&self, id: &EntityId) -> Option<Entity>;

    /// Every merged entity of `kind`, in id order.
    fn list(&self, kind: Kind) -> Vec<Entity>;

    /// The merged container with this id.
    fn get_container(&self, id: &str) -> Option<Arc<Container>> {
        self.get(&EntityId::new(Kind::Container, id)).and_then(|e| e.as_container().cloned())
    }

    /// The merged pod with this UID.
    fn get_kubernetes_pod(&self, uid: &str) -> Option<Arc<KubernetesPod>> {
        self.get(&EntityId::new(Kind::KubernetesPod, uid)).and_then(|e| e.as_kubernetes_pod().cloned())
    }

    /// The merged task with this ARN.
    fn get_ecs_task(&self, arn: &str) -> Option<Arc<EcsTask>> {
        self.get(&EntityId::new(Kind::EcsTask, arn)).and_then(|e| e.as_ecs_task().cloned())
    }
}

/// Fetches one container from its runtime on demand (a `docker inspect`): the tagger's
/// cache-miss path, for a container asked about before its collector reported it. Runtime
/// collectors implement it; the agent hands them to the tagger.
#[async_trait]
pub trait ContainerFetcher: Send + Sync {
    /// Returns whether `container_id` has the form of this runtime's ids.
    ///
    /// The id comes from a client; only an id this accepts is ever passed to [`fetch`], so a
    /// fetcher that builds a URL from it cannot be steered to another path of its API.
    ///
    /// [`fetch`]: ContainerFetcher::fetch
    fn accepts(&self, container_id: &str) -> bool;

    /// The container with this id, or `None` if the runtime does not know it (or failed).
    async fn fetch(&self, container_id: &str) -> Option<Container>;
}

/// Returns whether `id` is a full container id as docker and podman write it: 64 lowercase
/// hexadecimal digits.
pub fn is_full_hex_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What a collector is handed when it runs.
#[derive(Clone)]
pub struct CollectorContext {
    /// Its way into the store.
    pub sink: SourceSink,
    /// A read handle on the merged view.
    pub reader: Arc<dyn StoreReader>,
    /// Cancelled when the store shuts down. The store also stops waiting on a collector's call
    /// then (dropping its future); a collector that runs work of its own (a spawned task, a
    /// blocking thread) ends it on this.
    pub cancel: CancellationToken,
    /// Which env vars the containers it reports keep: those the tag rules read and the ones the
    /// agent's config names (the keys of `container_env_as_tags`). One filter for the whole
    /// store, so every runtime keeps the same ones.
    pub env: EnvFilter,
}

impl fmt::Debug for CollectorContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CollectorContext").field("sink", &self.sink).finish_non_exhaustive()
    }
}

/// A boxed error kept as a cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a collector stopped. The variant says what the store does next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectorError {
    /// Its runtime or orchestrator was not detected on this node (no socket at the default
    /// path, no env var): the store looks again every re-detection period; meanwhile it does
    /// not hold the agent's readiness back.
    #[error("environment not detected: {reason}")]
    EnvironmentAbsent {
        /// What was looked for.
        reason: String,
    },
    /// What the configuration names (a socket path set by a config key) is not there yet: the
    /// store looks again every re-detection period, and the agent is not ready until it came
    /// and listed.
    #[error("waiting for {what}")]
    Waiting {
        /// What it waits for (`/run/containerd/containerd.sock (cri_socket_path)`).
        what: String,
    },
    /// Something that may pass (daemon down, connection reset): retried with backoff.
    #[error("{context}")]
    Retriable {
        /// What failed, naming what the user can change.
        context: String,
        /// The cause.
        #[source]
        source: Option<BoxError>,
    },
    /// Something that will not pass by waiting (bad configuration): the collector stops.
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
    /// An absent environment.
    pub fn absent(reason: impl Into<String>) -> Self {
        Self::EnvironmentAbsent { reason: reason.into() }
    }

    /// A configured environment not there yet.
    pub fn waiting_for(what: impl Into<String>) -> Self {
        Self::Waiting { what: what.into() }
    }

    /// A retriable failure with its cause.
    pub fn retriable(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Retriable { context: context.into(), source: Some(source.into()) }
    }

    /// A permanent failure with its cause.
    pub fn permanent(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Permanent { context: context.into(), source: Some(source.into()) }
    }

    /// The error and its causes on one line (`what failed: why: the root cause`).
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

    /// Whether trying again may help.
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
    async fn start(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError>;

    /// Reads the source once.
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

    /// A stream collector.
    pub fn stream(name: impl Into<Arc<str>>, source: Source, collector: impl StreamCollector + 'static) -> Self {
        Self { name: name.into(), source, kind: CollectorKind::Stream(Box::new(collector)) }
    }

    /// A pull collector with the default interval and timeout.
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

    /// The origin its sink speaks as.
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
