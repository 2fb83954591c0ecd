//! The store handle, its loop, and the sink collectors speak through.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument as _;
use wm_core::sync::{MutexExt, RwLockExt};
use wm_core::{
    CancellationToken, Collector, CollectorContext, CollectorEvent, Container, EcsTask, Entity, EntityId, EnvFilter,
    Event, EventSink, Filter, Id, Kind, KubernetesPod, Origin, SinkMessage, Source, SourceSink, StoreReader,
    SubscriberPriority,
};

use crate::runner::{CollectorHealth, CollectorStatus, RetryPolicy, run_collector};
use crate::state::{Change, Record, State};
use crate::subscriber::{Events, Pushed, QueueLimits, Shared, Subscription};
use crate::telemetry::{MetricSample, MetricValue, Received, SENT_ACK_TIMEOUT, SENT_LAGGED, SENT_SUCCESS, Telemetry};

/// Tunables of a store. The defaults are what the agent uses.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreConfig {
    /// How long the store waits for a subscriber to acknowledge a bundle before serving the
    /// next priority (default 1 s).
    pub ack_timeout: Duration,
    /// Bundles a subscriber may hold back before its queue counts as full (default 1000).
    pub subscriber_queue_capacity: usize,
    /// How long a subscriber's queue may stay full before it is cut off (default 5 s).
    pub lag_timeout: Duration,
    /// Bundles a subscriber may hold back at most, full or not: past it, it is cut off at once
    /// (default 10 × the capacity). Bounds the store's memory.
    pub subscriber_queue_hard_capacity: usize,
    /// Batches taken by `notify` but not yet delivered; `notify` waits past it (default 1024).
    pub max_batches_in_flight: usize,
    /// First delay before a failed collector is retried (default 1 s).
    pub retry_initial: Duration,
    /// Longest delay between two tries (default 30 s).
    pub retry_max: Duration,
    /// How often a collector whose environment was not detected, or is not there yet, looks
    /// again (default 30 s).
    pub redetect_interval: Duration,
    /// Which env vars the collectors keep on the containers they report (default: those the
    /// tag rules read); handed to each collector in its context.
    pub env: EnvFilter,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            ack_timeout: Duration::from_secs(1),
            subscriber_queue_capacity: 1000,
            lag_timeout: Duration::from_secs(5),
            subscriber_queue_hard_capacity: 10_000,
            max_batches_in_flight: 1024,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            redetect_interval: Duration::from_secs(30),
            env: EnvFilter::default(),
        }
    }
}

/// The origin of events given to [`Store::notify`] and lists given to [`Store::reset`] directly,
/// outside any collector.
pub const DIRECT: &str = "";

enum Command {
    Deliver { changes: Vec<Change>, _permit: OwnedSemaphorePermit },
    Subscribe { shared: Arc<Shared>, filter: Filter },
    Unsubscribe { id: u64 },
    Sync { done: oneshot::Sender<()> },
    Shutdown,
}

struct Inner {
    state: RwLock<State>,
    commands: mpsc::UnboundedSender<Command>,
    intake: Arc<Semaphore>,
    config: StoreConfig,
    telemetry: Arc<Telemetry>,
    /// The origin name of events notified directly.
    direct: Arc<str>,
    next_subscriber: AtomicU64,
    loop_alive: Arc<AtomicBool>,
    /// What `start` spawns: the loop, then the collectors.
    unstarted: Mutex<Option<(StoreLoop, Vec<Collector>)>>,
    statuses: Mutex<Vec<Arc<CollectorStatus>>>,
    /// Cancelled by `shutdown`: every collector task ends on it.
    cancel: CancellationToken,
    /// Every task the store spawned: the loop first, then one per collector.
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        // Updates are applied whole under the write lock before it is released, and nothing in
        // them panics on data: a poisoned lock still guards a consistent state.
        self.state.reading()
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.writing()
    }

    /// Applies a batch under the write lock and queues its delivery before releasing the lock,
    /// so deliveries and subscriptions reach the loop in the order they touched the state.
    async fn apply(&self, origin: &Origin, message: SinkMessage) {
        let Ok(permit) = self.intake.clone().acquire_owned().await else { return };
        let mut state = self.write();
        let changes = match message {
            SinkMessage::Events(events) => {
                let collector = state.collector_index(&origin.collector);
                let mut received = Received::default();
                let mut changes = Vec::with_capacity(events.len());
                for (event_type, entity) in events {
                    received.count(entity.kind(), origin.source);
                    changes.extend(state.apply(event_type, origin.source, collector, entity));
                }
                received.add_to(&self.telemetry);
                changes
            }
            SinkMessage::FullList { entities, keep } => {
                let mut received = Received::default();
                for e in &entities {
                    received.count(e.kind(), origin.source);
                }
                received.add_to(&self.telemetry);
                state.reset(origin, entities, &keep)
            }
        };
        if !changes.is_empty() {
            // Fails only once the loop is gone (store shut down): nobody is left to tell.
            let _ = self.commands.send(Command::Deliver { changes, _permit: permit });
        }
    }

    async fn notify(&self, events: Vec<CollectorEvent>) {
        let Ok(permit) = self.intake.clone().acquire_owned().await else { return };
        let mut state = self.write();
        let direct = state.collector_index(&self.direct);
        let mut received = Received::default();
        let mut changes = Vec::with_capacity(events.len());
        for e in events {
            received.count(e.entity.kind(), e.source);
            changes.extend(state.apply(e.event_type, e.source, direct, e.entity));
        }
        received.add_to(&self.telemetry);
        if !changes.is_empty() {
            let _ = self.commands.send(Command::Deliver { changes, _permit: permit });
        }
    }

    fn get(&self, id: &EntityId) -> Option<Entity> {
        self.read().get(id).map(Record::merged)
    }

    fn list(&self, kind: Kind) -> Vec<Entity> {
        let state = self.read();
        let mut found: Vec<(&Id, &Record)> = state.records(kind).iter().collect();
        found.sort_unstable_by(|a, b| a.0.cmp(b.0));
        found.into_iter().map(|(_, r)| r.merged()).collect()
    }
}

impl Drop for Inner {
    /// The last handle went without `shutdown().await`: nothing is left to wait, so stop at once.
    fn drop(&mut self) {
        self.cancel.cancel();
        let _ = self.commands.send(Command::Shutdown);
        // The loop (first) is told to stop, so that it ends every stream; the collectors are aborted.
        for task in self.tasks.get_mut().unwrap_or_else(PoisonError::into_inner).iter().skip(1) {
            task.abort();
        }
    }
}

/// The workload-metadata store. Cheap to clone: clones share one store, which stops (its
/// collectors and loop) when the last clone is dropped or [`Store::shutdown`] is called.
///
/// `notify`, `reset` and the getters act on the state at once; subscribers hear about changes
/// through their own bounded queues, served by one loop in priority order.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("entities", &self.inner.read().len()).finish_non_exhaustive()
    }
}

/// Builds a store with its collectors.
#[derive(Debug, Default)]
pub struct StoreBuilder {
    config: StoreConfig,
    collectors: Vec<Collector>,
}

impl StoreBuilder {
    /// Uses `config`.
    pub fn config(mut self, config: StoreConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds a collector, started by [`Store::start`].
    pub fn collector(mut self, collector: Collector) -> Self {
        self.collectors.push(collector);
        self
    }

    /// Builds the store. It spawns nothing: [`Store::start`] starts its loop and collectors.
    /// Events notified before then are applied (getters see them) and delivered once it starts.
    pub fn build(self) -> Store {
        let (commands, rx) = mpsc::unbounded_channel();
        let telemetry = Arc::new(Telemetry::default());
        let loop_alive = Arc::new(AtomicBool::new(true));
        let statuses =
            self.collectors.iter().map(|c| Arc::new(CollectorStatus::new(c.name.clone(), c.source))).collect();
        let store_loop = StoreLoop {
            rx,
            subscribers: Vec::new(),
            ack_timeout: self.config.ack_timeout,
            telemetry: telemetry.clone(),
            _alive: AliveGuard(loop_alive.clone()),
        };
        let inner = Inner {
            state: RwLock::new(State::default()),
            commands,
            intake: Arc::new(Semaphore::new(self.config.max_batches_in_flight.max(1))),
            config: self.config,
            telemetry,
            direct: Arc::from(DIRECT),
            next_subscriber: AtomicU64::new(1),
            loop_alive,
            unstarted: Mutex::new(Some((store_loop, self.collectors))),
            statuses: Mutex::new(statuses),
            cancel: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        };
        Store { inner: Arc::new(inner) }
    }
}

/// The store's health: whether its loop runs, and each collector's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// Whether the store loop runs.
    pub store_alive: bool,
    /// Each collector.
    pub collectors: Vec<CollectorHealth>,
}

impl Health {
    /// Live, no collector failed, and every collector that will run delivered its first full
    /// list. A collector whose environment was not detected (nothing at the default socket) does
    /// not hold readiness back; one waiting for what its config names does, and so does one
    /// that was running and is retrying before its first list.
    pub fn is_ready(&self) -> bool {
        use crate::runner::CollectorState;
        self.store_alive
            && self.collectors.iter().all(|c| match c.state {
                CollectorState::Failed { .. } | CollectorState::Waiting { .. } => false,
                CollectorState::NotDetected { .. } => true,
                _ => c.synced,
            })
    }
}

/// One source's own version of an entity, in a verbose dump.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceVersion {
    /// The source.
    pub source: Source,
    /// The collector that said it (empty: notified directly).
    pub collector: String,
    /// What it said.
    pub entity: Entity,
}

/// One entity in a dump.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DumpEntry {
    /// Its id.
    pub id: EntityId,
    /// The sources that know it, in precedence order.
    pub sources: Vec<Source>,
    /// The merged view.
    pub merged: Entity,
    /// Each source's own version (verbose dumps only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_source: Option<Vec<SourceVersion>>,
}

/// Everything stored, in (kind, id) order: what `agent workload-list` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dump {
    /// The entities.
    pub entities: Vec<DumpEntry>,
}

impl Store {
    /// A builder.
    pub fn builder() -> StoreBuilder {
        StoreBuilder::default()
    }

    /// A started store with the default config and no collector.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new() -> Self {
        let store = Self::builder().build();
        store.start();
        store
    }

    /// Starts the loop and every collector the store was built with, each collector in a task
    /// of its own with a `collector` tracing span. Calling it again does nothing.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(&self) {
        let Some((store_loop, collectors)) = self.inner.unstarted.locked().take() else {
            return;
        };
        let statuses = self.inner.statuses.locked().clone();
        let config = &self.inner.config;
        let policy =
            RetryPolicy { initial: config.retry_initial, max: config.retry_max, redetect: config.redetect_interval };
        let weak = Arc::downgrade(&self.inner);
        let mut tasks = self.inner.tasks.locked();
        // Not cancelled on shutdown: it is told to stop, so that it ends every stream first.
        tasks.push(tokio::spawn(store_loop.run()));
        for collector in collectors {
            let Some(status) = statuses.iter().find(|s| s.name == collector.name).cloned() else { continue };
            let sink = Arc::new(CollectorSink { store: weak.clone(), status: status.clone() });
            let ctx = CollectorContext {
                sink: SourceSink::new(collector.origin(), sink),
                reader: Arc::new(WeakReader(weak.clone())),
                cancel: self.inner.cancel.child(),
                env: self.inner.config.env.clone(),
            };
            let span = tracing::info_span!("collector", name = &*collector.name, source = %collector.source);
            tracing::debug!(parent: &span, "starting collector");
            tasks.push(tokio::spawn(run_collector(collector.kind, ctx, status, policy).instrument(span)));
        }
    }

    /// Stops the store: cancels every collector, ends every subscription's stream once what was
    /// queued before is delivered, and returns when all its tasks have ended.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        // The loop ends after what is queued before this command; it may already be gone.
        let _ = self.inner.commands.send(Command::Shutdown);
        let tasks = std::mem::take(&mut *self.inner.tasks.locked());
        for task in tasks {
            // A task that panicked has ended too; the runner already turned collector panics
            // into a state, so nothing is left to report here.
            let _ = task.await;
        }
    }

    /// How many tasks the store runs now (its loop and its collectors); 0 once shut down.
    pub fn running_tasks(&self) -> usize {
        self.inner.tasks.locked().iter().filter(|t| !t.is_finished()).count()
    }

    /// Subscribes. The first bundle is the snapshot: one `Set` per stored entity that passes the
    /// filter, in (kind, id) order, sent even when empty. Then one bundle per notified batch
    /// that has events for this subscriber; nothing between the two is lost or repeated.
    pub fn subscribe(&self, name: &str, priority: SubscriberPriority, filter: Filter) -> Subscription {
        let id = self.inner.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let config = &self.inner.config;
        let limits = QueueLimits {
            capacity: config.subscriber_queue_capacity.max(1),
            lag_timeout: config.lag_timeout,
            hard_capacity: config.subscriber_queue_hard_capacity.max(config.subscriber_queue_capacity.max(1)),
        };
        let shared = Arc::new(Shared::new(id, Arc::from(name), priority, limits));
        // Under the read lock no batch can be applied, so the snapshot and the registration
        // reach the loop at the same point of the stream.
        let state = self.inner.read();
        let snapshot = state.snapshot(&filter);
        shared.push(snapshot.into(), 0);
        if self.inner.commands.send(Command::Subscribe { shared: shared.clone(), filter }).is_err() {
            // The store was shut down: the snapshot is all this subscriber will hear.
            shared.close_after_pending();
        }
        drop(state);
        Subscription::new(shared)
    }

    /// Ends a subscription's stream; it hears nothing more. Dropping the subscription does the same.
    pub fn unsubscribe(&self, id: u64) {
        let _ = self.inner.commands.send(Command::Unsubscribe { id });
    }

    /// Applies a batch of events. It becomes at most one bundle per subscriber.
    pub async fn notify(&self, events: Vec<CollectorEvent>) {
        if !events.is_empty() {
            self.inner.notify(events).await;
        }
    }

    /// Replaces what was notified directly for `source` with `entities` (a full list): sets
    /// what is new or changed, unsets what the list lacks, atomically, in one bundle.
    pub async fn reset(&self, source: Source, entities: Vec<Entity>) {
        let origin = Origin { source, collector: self.inner.direct.clone() };
        self.inner.apply(&origin, SinkMessage::FullList { entities, keep: Vec::new() }).await;
    }

    /// Returns once every batch notified before the call was handed to its subscribers' queues.
    pub async fn sync(&self) {
        let (done, wait) = oneshot::channel();
        if self.inner.commands.send(Command::Sync { done }).is_ok() {
            let _ = wait.await;
        }
    }

    /// The merged container with this id.
    pub fn get_container(&self, id: &str) -> Option<Arc<Container>> {
        StoreReader::get_container(self, id)
    }

    /// Every merged container, in id order.
    pub fn list_containers(&self) -> Vec<Arc<Container>> {
        self.inner.list(Kind::Container).iter().filter_map(|e| e.as_container().cloned()).collect()
    }

    /// The merged pod with this UID.
    pub fn get_kubernetes_pod(&self, uid: &str) -> Option<Arc<KubernetesPod>> {
        StoreReader::get_kubernetes_pod(self, uid)
    }

    /// Every merged pod, in UID order.
    pub fn list_kubernetes_pods(&self) -> Vec<Arc<KubernetesPod>> {
        self.inner.list(Kind::KubernetesPod).iter().filter_map(|e| e.as_kubernetes_pod().cloned()).collect()
    }

    /// The pod a container belongs to: its owner, or else the pod that lists it.
    pub fn get_kubernetes_pod_for_container(&self, container_id: &str) -> Option<Arc<KubernetesPod>> {
        let state = self.inner.read();
        let container = EntityId::new(Kind::Container, container_id);
        if let Some(owner) = state
            .get(&container)
            .and_then(|r| r.merged().as_container().and_then(|c| c.owner.clone()))
            .filter(|o| o.kind == Kind::KubernetesPod)
        {
            return state.get(&owner).and_then(|r| r.merged().as_kubernetes_pod().cloned());
        }
        state
            .records(Kind::KubernetesPod)
            .values()
            .map(Record::merged)
            .find(|p| p.as_kubernetes_pod().is_some_and(|p| p.all_containers().any(|c| *c.id == *container_id)))
            .and_then(|p| p.as_kubernetes_pod().cloned())
    }

    /// The merged task with this ARN.
    pub fn get_ecs_task(&self, arn: &str) -> Option<Arc<EcsTask>> {
        StoreReader::get_ecs_task(self, arn)
    }

    /// Every merged task, in ARN order.
    pub fn list_ecs_tasks(&self) -> Vec<Arc<EcsTask>> {
        self.inner.list(Kind::EcsTask).iter().filter_map(|e| e.as_ecs_task().cloned()).collect()
    }

    /// Everything stored; with `verbose`, each source's own version too.
    pub fn dump(&self, verbose: bool) -> Dump {
        let state = self.inner.read();
        let mut entities = Vec::with_capacity(state.len());
        for kind in Kind::ALL {
            let mut records: Vec<_> = state.records(kind).iter().collect();
            records.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (id, record) in records {
                entities.push(DumpEntry {
                    id: EntityId { kind, id: id.clone() },
                    sources: record.versions.as_slice().iter().map(|v| v.source).collect(),
                    merged: record.merged(),
                    per_source: verbose.then(|| {
                        record
                            .versions
                            .as_slice()
                            .iter()
                            .map(|v| SourceVersion {
                                source: v.source,
                                collector: state.collector_name(v.collector).to_owned(),
                                entity: v.entity.clone(),
                            })
                            .collect()
                    }),
                });
            }
        }
        Dump { entities }
    }

    /// Whether the loop runs, and each collector's state.
    pub fn health(&self) -> Health {
        Health {
            store_alive: self.inner.loop_alive.load(Ordering::Acquire),
            collectors: self.inner.statuses.locked().iter().map(|s| s.health()).collect(),
        }
    }

    /// The store's telemetry with the Datadog names.
    pub fn telemetry(&self) -> Vec<MetricSample> {
        let mut out = Vec::new();
        {
            let state = self.inner.read();
            let mut stored: HashMap<(Kind, Source), u64> = HashMap::new();
            for kind in Kind::ALL {
                for record in state.records(kind).values() {
                    for v in record.versions.as_slice() {
                        *stored.entry((kind, v.source)).or_default() += 1;
                    }
                }
            }
            let mut stored: Vec<_> = stored.into_iter().collect();
            stored.sort_unstable_by_key(|(k, _)| *k);
            for ((kind, source), n) in stored {
                out.push(MetricSample {
                    name: "workloadmeta.stored_entities",
                    labels: vec![("kind", kind.as_str().to_owned()), ("source", source.as_str().to_owned())],
                    value: MetricValue::Gauge(n as f64),
                });
            }
        }
        self.inner.telemetry.samples(&mut out);
        for status in self.inner.statuses.locked().iter() {
            status.samples(&mut out);
        }
        out
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl StoreReader for Store {
    fn get(&self, id: &EntityId) -> Option<Entity> {
        self.inner.get(id)
    }

    fn list(&self, kind: Kind) -> Vec<Entity> {
        self.inner.list(kind)
    }
}

/// The read handle collectors get: it does not keep the store alive.
struct WeakReader(Weak<Inner>);

impl StoreReader for WeakReader {
    fn get(&self, id: &EntityId) -> Option<Entity> {
        self.0.upgrade()?.get(id)
    }

    fn list(&self, kind: Kind) -> Vec<Entity> {
        self.0.upgrade().map(|inner| inner.list(kind)).unwrap_or_default()
    }
}

/// The sink one collector speaks through.
struct CollectorSink {
    store: Weak<Inner>,
    status: Arc<CollectorStatus>,
}

#[async_trait]
impl EventSink for CollectorSink {
    async fn send(&self, origin: &Origin, message: SinkMessage) {
        let Some(inner) = self.store.upgrade() else { return };
        let full_list = matches!(message, SinkMessage::FullList { .. });
        inner.apply(origin, message).await;
        if full_list {
            self.status.full_list_landed();
        }
    }

    fn entity_error(&self, _origin: &Origin) {
        self.status.entity_error();
    }
}

/// Clears the liveness flag however the loop ends.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

struct LoopSubscriber {
    shared: Arc<Shared>,
    filter: Filter,
    next_seq: u64,
    /// The bundle whose ack wait timed out; no more waiting on this subscriber until it
    /// acknowledged that one, so a stuck subscriber costs one timeout, not one per batch.
    timed_out_at: Option<u64>,
}

struct StoreLoop {
    rx: mpsc::UnboundedReceiver<Command>,
    /// In priority order, then subscription order.
    subscribers: Vec<LoopSubscriber>,
    ack_timeout: Duration,
    telemetry: Arc<Telemetry>,
    _alive: AliveGuard,
}

impl Drop for StoreLoop {
    /// Ends every subscriber's stream, also when the loop task is aborted or panics.
    fn drop(&mut self) {
        for sub in &self.subscribers {
            sub.shared.close();
        }
        self.telemetry.subscribers.store(0, Ordering::Relaxed);
    }
}

impl StoreLoop {
    async fn run(mut self) {
        while let Some(command) = self.rx.recv().await {
            match command {
                Command::Deliver { changes, _permit } => self.deliver(changes).await,
                Command::Subscribe { shared, filter } => {
                    let at = self.subscribers.partition_point(|s| s.shared.priority <= shared.priority);
                    tracing::debug!(subscriber = &*shared.name, priority = shared.priority.as_str(), "subscribed");
                    self.subscribers.insert(at, LoopSubscriber { shared, filter, next_seq: 0, timed_out_at: None });
                }
                Command::Unsubscribe { id } => {
                    if let Some(sub) = self.subscribers.iter().find(|s| s.shared.id == id) {
                        sub.shared.close();
                    }
                }
                Command::Sync { done } => {
                    let _ = done.send(());
                }
                Command::Shutdown => break,
            }
            self.subscribers.retain(|s| !s.shared.is_finished());
            self.telemetry.subscribers.store(self.subscribers.len() as i64, Ordering::Relaxed);
        }
        // Dropping the loop closes every queue (see `Drop`), however it ends.
    }

    async fn deliver(&mut self, changes: Vec<Change>) {
        // Each view's events (the merge, or one source's) are gathered once per batch and shared
        // by every subscriber whose filter passes them all; only the others get a filtered copy.
        // With a single view among the subscribers (the usual case) the events are moved, not copied.
        let mut wanted: Vec<Option<Source>> = Vec::new();
        for sub in &self.subscribers {
            if !wanted.contains(&sub.filter.source()) {
                wanted.push(sub.filter.source());
            }
        }
        let views: Vec<(Option<Source>, Arc<[Event]>)> = match wanted.as_slice() {
            [only] => vec![(*only, changes.into_iter().filter_map(|c| c.into_view(*only)).collect())],
            _ => wanted
                .iter()
                .map(|view| (*view, changes.iter().filter_map(|c| c.in_view(*view)).cloned().collect()))
                .collect(),
        };
        let mut start = 0;
        while start < self.subscribers.len() {
            let priority = self.subscribers[start].shared.priority;
            let end = start + self.subscribers[start..].partition_point(|s| s.shared.priority == priority);
            // Acks are waited for only where a lower priority is still to be served.
            let wait_for_acks = end < self.subscribers.len();
            let deadline = Instant::now() + self.ack_timeout;
            let mut waits: Vec<(usize, u64)> = Vec::new();
            for (i, sub) in self.subscribers[start..end].iter_mut().enumerate() {
                let view = sub.filter.source();
                let Some(all) = views.iter().find(|(v, _)| *v == view).map(|(_, all)| all.clone()) else { continue };
                let events = if sub.filter.passes_everything()
                    || all.iter().all(|e| sub.filter.matches(e.event_type, &e.entity))
                {
                    Events::shared(all)
                } else {
                    Events::from(
                        all.iter().filter(|e| sub.filter.matches(e.event_type, &e.entity)).cloned().collect::<Vec<_>>(),
                    )
                };
                if events.is_empty() {
                    continue;
                }
                sub.next_seq += 1;
                let seq = sub.next_seq;
                match sub.shared.push(events, seq) {
                    Pushed::Queued => {}
                    Pushed::Closed => continue,
                    Pushed::CutOff => {
                        tracing::warn!(subscriber = &*sub.shared.name, "subscriber cut off: its queue stayed full");
                        self.telemetry.notification(&sub.shared.name, SENT_LAGGED);
                        continue;
                    }
                }
                if let Some(t) = sub.timed_out_at
                    && sub.shared.acked() >= t
                {
                    sub.timed_out_at = None;
                }
                if wait_for_acks && sub.timed_out_at.is_none() {
                    waits.push((start + i, seq));
                } else {
                    self.telemetry.notification(&sub.shared.name, SENT_SUCCESS);
                }
            }
            for (i, seq) in waits {
                let sub = &mut self.subscribers[i];
                let outcome = tokio::time::timeout_at(deadline, sub.shared.acked_at_least(seq)).await;
                if outcome.is_ok() {
                    self.telemetry.notification(&sub.shared.name, SENT_SUCCESS);
                } else {
                    tracing::debug!(subscriber = &*sub.shared.name, "bundle not acknowledged in time");
                    sub.timed_out_at = Some(seq);
                    self.telemetry.notification(&sub.shared.name, SENT_ACK_TIMEOUT);
                }
            }
            start = end;
        }
    }
}
