//! Defines the store handle, the loop that delivers changes to subscribers, and the sink that
//! collectors send their events through.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use tracing::Instrument as _;
use wm_core::sync::{MutexExt, RwLockExt};
use wm_core::{
    CancellationToken, Collector, CollectorContext, CollectorEvent, Container, EcsTask, Entity, EntityArc, EntityId,
    EnvFilter, Event, EventSink, EventType, Filter, Id, Kind, KubernetesPod, Origin, Process, SinkMessage, Source,
    SourceSink, StoreReader, SubscriberPriority,
};

use crate::runner::{CollectorHealth, CollectorStatus, RetryPolicy, run_collector};
use crate::state::{Change, Record, State};
use crate::subscriber::{Events, Pushed, QueueLimits, Shared, Subscription};
use crate::telemetry::{MetricSample, MetricValue, Received, SENT_ACK_TIMEOUT, SENT_LAGGED, SENT_SUCCESS, Telemetry};

/// A store's limits and timings.
///
/// The defaults are what the agent uses.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreConfig {
    /// How long the store waits for a subscriber to acknowledge a bundle before it serves the
    /// subscribers of the next lower priority (default 1 s).
    pub ack_timeout: Duration,
    /// How many bundles may wait in a subscriber's queue before the queue counts as full
    /// (default 1000; 0 counts as 1).
    pub subscriber_queue_capacity: usize,
    /// How long a subscriber's queue may stay full before the subscriber is cut off: its stream
    /// ends with [`SubscriptionError::Lagged`](crate::SubscriptionError::Lagged). Checked when a
    /// new bundle arrives (default 5 s).
    pub lag_timeout: Duration,
    /// The most bundles a subscriber's queue may hold, however short a time it has been full: a
    /// new bundle that finds this many cuts the subscriber off at once. This bounds the store's
    /// memory (default 10,000; a value below `subscriber_queue_capacity` counts as that).
    pub subscriber_queue_hard_capacity: usize,
    /// How many applied batches may wait for delivery to subscribers; past it, [`Store::notify`],
    /// [`Store::reset`] and collectors' sends wait (default 1024; 0 counts as 1).
    pub max_batches_in_flight: usize,
    /// The delay before a failed collector's first retry; it doubles with each further failure
    /// in a row (default 1 s).
    pub retry_initial: Duration,
    /// The longest delay between two retries (default 30 s).
    pub retry_max: Duration,
    /// How long the store waits before it starts again, to look again, a collector whose
    /// environment was not detected or that waits for something its config names (default 30 s).
    pub redetect_interval: Duration,
    /// Which environment variables collectors keep on the containers they report (default:
    /// those the tag rules read); handed to each collector in its context.
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

/// The collector name recorded for events given to [`Store::notify`] and lists given to
/// [`Store::reset`], which come from no collector.
///
/// A verbose dump shows it as the empty `collector` of a [`SourceVersion`].
pub const DIRECT: &str = "";

/// A request to the store loop, which handles them one at a time, in the order they were sent.
enum Command {
    Deliver { changes: Vec<Change>, _permit: OwnedSemaphorePermit },
    Subscribe { shared: Arc<Shared>, filter: Filter, inline: Option<(InlineHandler, Vec<Event>)> },
    Unsubscribe { id: u64 },
    Sync { done: oneshot::Sender<()> },
    Shutdown,
}

struct Inner {
    state: RwLock<State>,
    commands: mpsc::UnboundedSender<Command>,
    /// Bounds the batches awaiting delivery (`max_batches_in_flight`): each `Deliver` command
    /// holds a permit until the loop has delivered it.
    intake: Arc<Semaphore>,
    config: StoreConfig,
    telemetry: Arc<Telemetry>,
    /// The collector name of events notified directly ([`DIRECT`]), allocated once.
    direct: Arc<str>,
    next_subscriber: AtomicU64,
    /// Cleared when the store loop ends (see `AliveGuard`).
    loop_alive: Arc<AtomicBool>,
    /// The loop and the collectors, until `start` takes them to spawn them.
    unstarted: Mutex<Option<(StoreLoop, Vec<Collector>)>>,
    /// Each collector's status, in the order the collectors were added.
    statuses: Mutex<Vec<Arc<CollectorStatus>>>,
    /// Cancelled by `shutdown` and on drop. Each collector's token is a child of it, so
    /// cancelling it stops every collector task.
    cancel: CancellationToken,
    /// Every task the store spawned: the loop first, then one per collector.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Wakes the node orchestrator's pull collectors (the kubelet's) when a runtime reports a
    /// container of a pod the store does not hold yet (see [`Inner::wake_for_missing_pods`]).
    pod_gap: Arc<tokio::sync::Notify>,
    /// The runtime's containers waited for in their pod's listing: their pod's uid and since when.
    pod_waits: Mutex<HashMap<Id, (Id, Instant)>>,
}

/// The label a runtime's container of a Kubernetes pod carries: its pod's uid.
const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";

/// How long a runtime's container is waited for in its pod's listing before the store stops
/// asking the kubelet for early pulls about it: the default pull interval.
const POD_WAIT: Duration = Duration::from_secs(5);

/// The most containers waited for at once; past it, new ones wait for the regular pulls.
const MAX_POD_WAITS: usize = 1024;

/// Whether the pod `uid` is stored and lists the container `container`.
fn pod_lists(state: &State, uid: &str, container: &Id) -> bool {
    state
        .get(&EntityId::new(Kind::KubernetesPod, uid))
        .map(Record::merged)
        .is_some_and(|pod| pod.as_kubernetes_pod().is_some_and(|p| p.all_containers().any(|c| c.id == *container)))
}

impl Inner {
    /// Asks the kubelet's collector for a pull now when one of `entities`, just set by a
    /// runtime, is a container whose pod the store lacks or does not list it yet: otherwise its
    /// `kube_*` tags would wait for the next pull, up to the pull interval. Such a container is
    /// remembered for [`POD_WAIT`], and each kubelet update that still does not list it asks for
    /// another pull (the kubelet reports a container in its pod's status a moment after the
    /// runtime starts it). Wakes are coalesced (one pending at most), and the pull collector spaces
    /// pulls woken this way (see `runner::run_pull`).
    fn wake_for_missing_pods<'a>(&self, state: &State, entities: impl IntoIterator<Item = &'a Entity>) {
        let mut waits = self.pod_waits.locked();
        for c in entities.into_iter().filter_map(Entity::as_container) {
            let Some(uid) = c.labels.get(POD_UID_LABEL).filter(|uid| !uid.is_empty()) else { continue };
            if !pod_lists(state, uid, &c.id) && waits.len() < MAX_POD_WAITS {
                waits.entry(c.id.clone()).or_insert_with(|| (Id::from(uid), Instant::now()));
            }
        }
        if !waits.is_empty() {
            self.pod_gap.notify_one();
        }
    }

    /// After a kubelet update: forgets the waiting containers their pod now lists (or that
    /// waited [`POD_WAIT`]), and asks for another pull while some still wait.
    fn recheck_pod_waits(&self, state: &State) {
        let mut waits = self.pod_waits.locked();
        if waits.is_empty() {
            return;
        }
        waits.retain(|container, (uid, since)| since.elapsed() < POD_WAIT && !pod_lists(state, uid, container));
        if !waits.is_empty() {
            self.pod_gap.notify_one();
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // Updates are applied whole under the write lock before it is released, and nothing in
        // them panics on data: a poisoned lock still guards a consistent state.
        self.state.reading()
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.writing()
    }

    /// Applies one message from `origin` under the write lock, and queues its changes for
    /// delivery before releasing the lock.
    ///
    /// Queuing under the lock makes deliveries and subscriptions reach the loop in the order
    /// they touched the state, so a new subscriber's snapshot and the bundles after it neither
    /// overlap nor leave a gap. Waits first while `max_batches_in_flight` batches await delivery.
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
                if origin.source == Source::Runtime {
                    let sets = changes.iter().filter(|c| c.source_event.event_type == EventType::Set);
                    self.wake_for_missing_pods(&state, sets.map(|c| &c.source_event.entity));
                }
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
        if origin.source == Source::NodeOrchestrator {
            self.recheck_pod_waits(&state);
        }
        if !changes.is_empty() {
            // Fails only once the loop has ended (store shut down), when no subscriber is left
            // to deliver to.
            let _ = self.commands.send(Command::Deliver { changes, _permit: permit });
        }
    }

    /// Applies events notified directly, like `apply`; each event names its own source.
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
        let runtime_sets =
            changes.iter().filter(|c| c.source == Source::Runtime && c.source_event.event_type == EventType::Set);
        self.wake_for_missing_pods(&state, runtime_sets.map(|c| &c.source_event.entity));
        if !changes.is_empty() {
            let _ = self.commands.send(Command::Deliver { changes, _permit: permit });
        }
    }

    /// Returns the merged view of the entity with this id, if it is stored.
    fn get(&self, id: &EntityId) -> Option<Entity> {
        self.read().get(id).map(Record::merged)
    }

    /// Returns the merged view of every stored entity of `kind`, in id order.
    fn list(&self, kind: Kind) -> Vec<Entity> {
        let state = self.read();
        let mut found: Vec<(&Id, &Record)> = state.records(kind).iter().collect();
        found.sort_unstable_by(|a, b| a.0.cmp(b.0));
        found.into_iter().map(|(_, r)| r.merged()).collect()
    }

    fn list_from(&self, kind: Kind, source: Source) -> Vec<Entity> {
        let state = self.read();
        let mut found: Vec<(&Id, &Entity)> =
            state.records(kind).iter().filter_map(|(id, r)| Some((id, r.version(source)?))).collect();
        found.sort_unstable_by(|a, b| a.0.cmp(b.0));
        found.into_iter().map(|(_, e)| e.clone()).collect()
    }
}

impl Drop for Inner {
    /// Stops the store without waiting: the last handle was dropped, perhaps without
    /// `shutdown().await`, and a drop cannot await its tasks.
    fn drop(&mut self) {
        self.cancel.cancel();
        let _ = self.commands.send(Command::Shutdown);
        // The loop, the first task, is sent `Shutdown` rather than aborted, so that it ends every
        // subscriber's stream; the collector tasks are aborted.
        for task in self.tasks.get_mut().unwrap_or_else(PoisonError::into_inner).iter().skip(1) {
            task.abort();
        }
    }
}

/// Holds workload metadata, runs the collectors that report it, and delivers its changes to
/// subscribers.
///
/// Cloning is cheap: clones share one store, which stops its collectors and its loop when
/// [`Store::shutdown`] is called or the last clone is dropped.
///
/// `notify`, `reset` and the getters read or change the stored entities before they return.
/// Subscribers receive the changes later, each through a bounded queue of its own, which one
/// loop fills in [`SubscriberPriority`] order.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("entities", &self.inner.read().len()).finish_non_exhaustive()
    }
}

/// Builds a store with its collectors and config; get one from [`Store::builder`].
#[derive(Debug, Default)]
pub struct StoreBuilder {
    config: StoreConfig,
    collectors: Vec<Collector>,
}

impl StoreBuilder {
    /// Sets the store's limits and timings; without this call the defaults apply.
    pub fn config(mut self, config: StoreConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds a collector, which [`Store::start`] spawns in a task of its own.
    ///
    /// A collector's name scopes its full lists and names its health record, so two collectors
    /// must not share one: a collector whose name is taken is renamed `<name>-2` (or `-3` …),
    /// with a warning, rather than have the two unset each other's entities.
    pub fn collector(mut self, mut collector: Collector) -> Self {
        let taken = |name: &str| self.collectors.iter().any(|c| &*c.name == name);
        if taken(&collector.name) {
            let renamed = (2..).map(|n| format!("{}-{n}", collector.name)).find(|n| !taken(n)).unwrap_or_default();
            tracing::warn!(collector = &*collector.name, renamed, "two collectors of one name: the second is renamed");
            collector.name = renamed.into();
        }
        self.collectors.push(collector);
        self
    }

    /// Builds the store without starting it.
    ///
    /// Nothing is spawned until [`Store::start`], so this needs no tokio runtime. Events notified
    /// before then are applied at once (getters see them) and delivered to subscribers once the
    /// store starts; past `max_batches_in_flight` such batches, `notify` waits for the start.
    pub fn build(self) -> Store {
        let (commands, rx) = mpsc::unbounded_channel();
        let telemetry = Arc::new(Telemetry::default());
        // False until `start` spawns the loop: a built store applies events but runs no loop.
        let loop_alive = Arc::new(AtomicBool::new(false));
        let statuses =
            self.collectors.iter().map(|c| Arc::new(CollectorStatus::new(c.name.clone(), c.source))).collect();
        let store_loop = StoreLoop {
            rx,
            subscribers: Vec::new(),
            ack_timeout: self.config.ack_timeout,
            ack_timer: None,
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
            pod_gap: Arc::new(tokio::sync::Notify::new()),
            pod_waits: Mutex::new(HashMap::new()),
        };
        Store { inner: Arc::new(inner) }
    }
}

/// The store's health: whether its loop runs, and each collector's state.
///
/// Returned by [`Store::health`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// Whether the store loop runs.
    pub store_alive: bool,
    /// Each collector's health, in the order the collectors were added.
    pub collectors: Vec<CollectorHealth>,
}

impl Health {
    /// Tells whether the agent is ready: the loop runs, no collector has failed or is waiting for
    /// something its config names, and every other collector has synced (its first full list, or
    /// first successful pull, was applied).
    ///
    /// A collector whose environment was not detected (nothing at the default socket) does not
    /// hold readiness back; one that was running and is retrying before its first list does.
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
    /// The collector that last set it; empty ([`DIRECT`]) when it came through
    /// [`Store::notify`] or [`Store::reset`].
    pub collector: String,
    /// The version itself.
    pub entity: Entity,
}

/// One entity in a dump.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DumpEntry {
    /// The entity's id.
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
    /// Returns a builder, to make a store with collectors or with a config of its own.
    pub fn builder() -> StoreBuilder {
        StoreBuilder::default()
    }

    /// Creates and starts a store with the default config and no collector.
    ///
    /// # Panics
    /// Panics when called outside a tokio runtime.
    pub fn new() -> Self {
        let store = Self::builder().build();
        store.start();
        store
    }

    /// Starts the loop and every collector the store was built with, each collector in a task
    /// of its own with a `collector` tracing span. Calling it again does nothing.
    ///
    /// # Panics
    /// Panics when called outside a tokio runtime.
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
        // The loop does not watch the cancellation token: `shutdown` sends it a `Shutdown`
        // command instead, so that it handles the commands queued before, then ends every stream.
        // Set before the spawn: the loop's guard clears it when the loop ends, never before this.
        self.inner.loop_alive.store(true, Ordering::Release);
        tasks.push(tokio::spawn(store_loop.run()));
        // The statuses were made from the collectors, in the same order.
        for (collector, status) in collectors.into_iter().zip(statuses) {
            let sink = Arc::new(CollectorSink { store: weak.clone(), status: status.clone() });
            let ctx = CollectorContext {
                sink: SourceSink::new(collector.origin(), sink),
                reader: Arc::new(WeakReader(weak.clone())),
                cancel: self.inner.cancel.child(),
                env: self.inner.config.env.clone(),
            };
            let span = tracing::info_span!("collector", name = &*collector.name, source = %collector.source);
            tracing::debug!(parent: &span, "starting collector");
            let wake = (collector.source == Source::NodeOrchestrator).then(|| self.inner.pod_gap.clone());
            tasks.push(tokio::spawn(run_collector(collector.kind, ctx, status, policy, wake).instrument(span)));
        }
    }

    /// Stops the store and waits until all its tasks have ended.
    ///
    /// Cancels every collector. The loop first delivers the batches applied before the call,
    /// then ends every subscription's stream; bundles a subscriber has not received by then are
    /// discarded.
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        // The loop ends after handling the commands queued before this one. Sending fails when
        // it has already ended, which is fine.
        let _ = self.inner.commands.send(Command::Shutdown);
        // A store that never started still holds its loop: dropping it ends the subscriptions
        // taken so far, after their snapshots.
        drop(self.inner.unstarted.locked().take());
        let tasks = std::mem::take(&mut *self.inner.tasks.locked());
        for task in tasks {
            // A task that panicked has ended too; the runner already turned collector panics
            // into a state, so nothing is left to report here.
            let _ = task.await;
        }
    }

    /// Returns how many of the store's tasks (its loop and its collectors) are still running;
    /// 0 before [`Store::start`] and after [`Store::shutdown`].
    pub fn running_tasks(&self) -> usize {
        self.inner.tasks.locked().iter().filter(|t| !t.is_finished()).count()
    }

    /// Subscribes `name` to the changes that pass `filter`, served at `priority`.
    ///
    /// The first bundle is the snapshot: one `Set` per stored entity that passes the filter, in
    /// (kind, id) order, sent even when empty. Then comes one bundle per applied batch that has
    /// events for this subscriber; no change is lost or repeated between the snapshot and them.
    /// After [`Store::shutdown`] has returned, the snapshot is the only bundle.
    ///
    /// `name` labels the subscriber in logs, in telemetry and in a
    /// [`SubscriptionError`](crate::SubscriptionError).
    pub fn subscribe(&self, name: &str, priority: SubscriberPriority, filter: Filter) -> Subscription {
        let config = &self.inner.config;
        let limits = QueueLimits {
            capacity: config.subscriber_queue_capacity.max(1),
            lag_timeout: config.lag_timeout,
            hard_capacity: config.subscriber_queue_hard_capacity.max(config.subscriber_queue_capacity.max(1)),
        };
        self.register(name, priority, filter, limits, None)
    }

    /// Subscribes `handler`, which the store's loop calls itself, in its own task, with the
    /// snapshot and then with each bundle, in the same priority order as the other subscribers.
    ///
    /// For a consumer whose handling is quick and never waits, as the tagger's: it saves the two
    /// task wake-ups a queued subscriber costs per bundle (the loop waking the subscriber's task,
    /// and its acknowledgement waking the loop), and it cannot lag, so it is never cut off. The
    /// loop waits for nothing else while `handler` runs, so a slow handler holds up every
    /// subscriber and, once `max_batches_in_flight` batches wait, the collectors.
    ///
    /// The returned subscription receives no bundles: its stream only ends, when the store's
    /// loop ends (at shutdown) or on [`Store::unsubscribe`], and from then on `handler` is not
    /// called again. Dropping it unsubscribes.
    pub fn subscribe_inline(
        &self,
        name: &str,
        priority: SubscriberPriority,
        filter: Filter,
        handler: impl FnMut(&[Event]) + Send + 'static,
    ) -> Subscription {
        // The queue never holds a bundle: its limits are never reached.
        let limits = QueueLimits { capacity: 1, lag_timeout: self.inner.config.lag_timeout, hard_capacity: 1 };
        self.register(name, priority, filter, limits, Some(Box::new(handler)))
    }

    /// Registers a subscriber with the loop: its snapshot goes into its queue, or to `inline`.
    fn register(
        &self,
        name: &str,
        priority: SubscriberPriority,
        filter: Filter,
        limits: QueueLimits,
        inline: Option<InlineHandler>,
    ) -> Subscription {
        let id = self.inner.next_subscriber.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(Shared::new(id, Arc::from(name), priority, limits));
        // Under the read lock no batch can be applied, so the snapshot and the registration
        // reach the loop at the same point of the stream.
        let state = self.inner.read();
        let snapshot = state.snapshot(&filter);
        let inline = match inline {
            Some(handler) => Some((handler, snapshot)),
            None => {
                shared.push(snapshot.into(), 0);
                None
            }
        };
        if self.inner.commands.send(Command::Subscribe { shared: shared.clone(), filter, inline }).is_err() {
            // The loop has ended (store shut down): a queued subscriber receives its snapshot
            // and nothing more; an inline one, nothing.
            shared.close_after_pending();
        }
        drop(state);
        Subscription::new(shared)
    }

    /// Ends the stream of the subscription with this id; an unknown id does nothing.
    ///
    /// Takes effect when the loop reaches the request, after the batches applied before the
    /// call; bundles still in the queue then are discarded. Dropping the [`Subscription`] ends it
    /// at once.
    pub fn unsubscribe(&self, id: u64) {
        let _ = self.inner.commands.send(Command::Unsubscribe { id });
    }

    /// Applies a batch of events, in order, recording [`DIRECT`] as their collector.
    ///
    /// The stored entities change before this returns. Each subscriber then receives, as one
    /// bundle, the batch's events that change its view and pass its filter. Waits while
    /// `max_batches_in_flight` batches await delivery. An empty batch does nothing.
    pub async fn notify(&self, events: Vec<CollectorEvent>) {
        if !events.is_empty() {
            self.inner.notify(events).await;
        }
    }

    /// Replaces what was notified directly for `source` with `entities`, a full list.
    ///
    /// Sets what is new or changed and unsets what the list lacks, all in one batch, whose
    /// changes come in (kind, id) order. Only versions last set through [`Store::notify`] or
    /// `reset` are unset, never a collector's.
    pub async fn reset(&self, source: Source, entities: Vec<Entity>) {
        let origin = Origin { source, collector: self.inner.direct.clone() };
        self.inner.apply(&origin, SinkMessage::FullList { entities, keep: Vec::new() }).await;
    }

    /// Waits until every batch applied before the call has been put in its subscribers' queues.
    ///
    /// That includes the waits for the acknowledgements of higher-priority subscribers. Before
    /// [`Store::start`] it waits for the start; once the loop has ended (after
    /// [`Store::shutdown`]) it returns at once.
    pub async fn sync(&self) {
        let (done, wait) = oneshot::channel();
        if self.inner.commands.send(Command::Sync { done }).is_ok() {
            let _ = wait.await;
        }
    }

    /// Returns the merged view of the container with this id, if it is stored.
    pub fn get_container(&self, id: &str) -> Option<EntityArc<Container>> {
        StoreReader::get_container(self, id)
    }

    /// Returns the merged view of every container, in id order.
    pub fn list_containers(&self) -> Vec<EntityArc<Container>> {
        self.inner.list(Kind::Container).iter().filter_map(|e| e.as_container().cloned()).collect()
    }

    /// Returns the merged view of the pod with this UID, if it is stored.
    pub fn get_kubernetes_pod(&self, uid: &str) -> Option<EntityArc<KubernetesPod>> {
        StoreReader::get_kubernetes_pod(self, uid)
    }

    /// Returns the merged view of every pod, in UID order.
    pub fn list_kubernetes_pods(&self) -> Vec<EntityArc<KubernetesPod>> {
        self.inner.list(Kind::KubernetesPod).iter().filter_map(|e| e.as_kubernetes_pod().cloned()).collect()
    }

    /// Returns the pod a container belongs to.
    ///
    /// When the container names a pod as its owner, returns that pod, or `None` if the pod is not
    /// stored. Otherwise looks through every stored pod for one whose containers include this id,
    /// which computes up to one merged view per pod.
    pub fn get_kubernetes_pod_for_container(&self, container_id: &str) -> Option<EntityArc<KubernetesPod>> {
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

    /// Returns the merged view of the ECS task with this ARN, if it is stored.
    pub fn get_ecs_task(&self, arn: &str) -> Option<EntityArc<EcsTask>> {
        StoreReader::get_ecs_task(self, arn)
    }

    /// Returns the merged view of every ECS task, in ARN order.
    pub fn list_ecs_tasks(&self) -> Vec<EntityArc<EcsTask>> {
        self.inner.list(Kind::EcsTask).iter().filter_map(|e| e.as_ecs_task().cloned()).collect()
    }

    /// Returns the merged view of every process, in the text order of their pids.
    pub fn list_processes(&self) -> Vec<EntityArc<Process>> {
        self.inner.list(Kind::Process).iter().filter_map(|e| e.as_process().cloned()).collect()
    }

    /// Returns every stored entity, in (kind, id) order, for `agent workload-list`.
    ///
    /// With `verbose`, each entry also carries each source's own version and the collector that
    /// last set it.
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

    /// Returns whether the loop runs and each collector's state; [`Health::is_ready`] reads
    /// readiness from it.
    pub fn health(&self) -> Health {
        Health {
            store_alive: self.inner.loop_alive.load(Ordering::Acquire),
            collectors: self.inner.statuses.locked().iter().map(|s| s.health()).collect(),
        }
    }

    /// Returns the store's metrics as samples, under their Datadog names (`workloadmeta.*`).
    ///
    /// The stored-entity gauges are counted at each call, by walking every record under the read
    /// lock.
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

    fn list_from(&self, kind: Kind, source: Source) -> Vec<Entity> {
        self.inner.list_from(kind, source)
    }
}

/// Reads the store for collectors without keeping it alive: once the store is dropped, reads
/// find nothing.
struct WeakReader(Weak<Inner>);

impl StoreReader for WeakReader {
    fn get(&self, id: &EntityId) -> Option<Entity> {
        self.0.upgrade()?.get(id)
    }

    fn list(&self, kind: Kind) -> Vec<Entity> {
        self.0.upgrade().map(|inner| inner.list(kind)).unwrap_or_default()
    }

    fn list_from(&self, kind: Kind, source: Source) -> Vec<Entity> {
        self.0.upgrade().map(|inner| inner.list_from(kind, source)).unwrap_or_default()
    }
}

/// Applies one collector's messages to the store, without keeping the store alive, and marks the
/// collector synced once a full list from it has been applied.
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

/// Clears the store's liveness flag when dropped, so that [`Store::health`] reports the loop
/// stopped however it ended: returned, panicked or aborted.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// What an inline subscriber ([`Store::subscribe_inline`]) runs for each bundle.
type InlineHandler = Box<dyn FnMut(&[Event]) + Send>;

struct LoopSubscriber {
    shared: Arc<Shared>,
    filter: Filter,
    /// Set for an inline subscriber: the loop calls it instead of queuing bundles.
    inline: Option<InlineHandler>,
    next_seq: u64,
    /// The sequence number of the bundle whose acknowledgement timed out. Until the subscriber
    /// acknowledges it, the loop does not wait on this subscriber again, so a stuck subscriber
    /// costs one timeout in all, not one per batch.
    timed_out_at: Option<u64>,
}

/// Delivers applied batches to the subscribers, one command at a time; `start` spawns it as the
/// store's first task.
struct StoreLoop {
    rx: mpsc::UnboundedReceiver<Command>,
    /// In priority order, then subscription order.
    subscribers: Vec<LoopSubscriber>,
    ack_timeout: Duration,
    /// The timer of the acknowledgement waits, made at the first wait (making one needs the
    /// runtime, which `Store::new` does not) and re-armed only when it fires before the wait's
    /// deadline; see [`StoreLoop::acked_before`].
    ack_timer: Option<Pin<Box<Sleep>>>,
    telemetry: Arc<Telemetry>,
    _alive: AliveGuard,
}

impl Drop for StoreLoop {
    /// Ends every subscriber's stream, discarding the bundles it has not received, however the
    /// loop ends: returned, aborted or panicked.
    ///
    /// A subscription whose registration is still queued (taken while the store shut down, or
    /// before it ever started) ends after its snapshot: nothing else will reach it, and without
    /// this its `recv` would wait for ever.
    fn drop(&mut self) {
        for sub in &self.subscribers {
            sub.shared.close();
        }
        self.rx.close();
        while let Ok(command) = self.rx.try_recv() {
            if let Command::Subscribe { shared, .. } = command {
                shared.close_after_pending();
            }
        }
        self.telemetry.subscribers.store(0, Ordering::Relaxed);
    }
}

impl StoreLoop {
    async fn run(mut self) {
        while let Some(command) = self.rx.recv().await {
            match command {
                Command::Deliver { changes, _permit } => self.deliver(changes).await,
                Command::Subscribe { shared, filter, inline } => {
                    let at = self.subscribers.partition_point(|s| s.shared.priority <= shared.priority);
                    tracing::debug!(subscriber = &*shared.name, priority = shared.priority.as_str(), "subscribed");
                    let inline = inline.map(|(mut handler, snapshot)| {
                        handler(&snapshot);
                        handler
                    });
                    self.subscribers
                        .insert(at, LoopSubscriber { shared, filter, inline, next_seq: 0, timed_out_at: None });
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

    /// Delivers one batch's changes to every subscriber, one priority at a time, waiting up to
    /// `ack_timeout` for a priority's acknowledgements before serving the next.
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
            // Acknowledgements are waited for only when a lower priority is still to be served:
            // the wait exists to hold those subscribers back.
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
                if let Some(handler) = &mut sub.inline {
                    if !sub.shared.is_finished() {
                        handler(&events);
                        self.telemetry.notification(&sub.shared.name, SENT_SUCCESS);
                    }
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
                let acked = self.acked_before(i, seq, deadline).await;
                let sub = &mut self.subscribers[i];
                if acked {
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

    /// Waits until subscriber `i` has acknowledged bundle `seq` or `deadline` passes, and tells
    /// whether it acknowledged.
    ///
    /// Every wait shares one timer. A timer per wait (`tokio::time::timeout_at`) registers with
    /// the timer driver under its lock and deregisters when dropped, twice per change and
    /// subscriber at a daemon's full churn pace. The shared timer is re-armed only when it fires
    /// before the current deadline: deadlines only grow (each is the delivery's start plus
    /// `ack_timeout`), so one that fires early is simply set to the current one, about once per
    /// `ack_timeout` while changes flow.
    async fn acked_before(&mut self, i: usize, seq: u64, deadline: Instant) -> bool {
        let shared = &self.subscribers[i].shared;
        if shared.acked() >= seq {
            return true;
        }
        let timer = self.ack_timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        let acked = shared.acked_at_least(seq);
        let mut acked = std::pin::pin!(acked);
        loop {
            tokio::select! {
                biased;
                () = &mut acked => return true,
                () = timer.as_mut() => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    timer.as_mut().reset(deadline);
                }
            }
        }
    }
}
