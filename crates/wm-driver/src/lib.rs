//! The list/watch driver shared by the collectors that follow a daemon's change stream (docker
//! and containerd). The Kubernetes API-server collector (`kube_metadata`) does not use it: it runs
//! on kube-runtime's watcher, which lists and watches by itself.
//!
//! A collector implements [`ListWatch`]: how to subscribe ([`ListWatch::watch`]), optionally how
//! to prove the subscription live ([`ListWatch::probe`]), how to list ([`ListWatch::list`]),
//! which entity an event is about ([`ListWatch::key`]) and what that entity is now
//! ([`ListWatch::refresh`]). [`Driver`] turns it into a [`StreamCollector`] that does, once per
//! run:
//!
//! 1. subscribe, and from then on never stop reading the event stream: whenever the run awaits
//!    a call (probe, list, refresh, sending to the store) it polls the stream beside the call and
//!    queues what arrives, so that a stream that subscribes only when first polled, or whose
//!    subscribe call returns only with the first event, does not hold up the run, and a daemon
//!    never waits on the agent to take its events;
//! 2. if the collector probes (its `probe` returns `true`), repeat the probe every
//!    [`PROBE_INTERVAL`] (100 ms) until the stream yields [`Watched::Live`], for at most
//!    [`PROBE_DEADLINE`] (10 s), setting aside the events that arrive meanwhile;
//! 3. list, and send the result as one full list: the store sets what is new or changed and
//!    unsets what is no longer there;
//! 4. handle the events set aside while probing, then, each time events arrive, take all those
//!    pending (up to [`MAX_BATCH`], 512) as one batch: group them per entity in order of first
//!    appearance, refresh each entity once (up to [`REFRESH_CONCURRENCY`] at a time), and send
//!    the batch's sets and unsets together, in that order. An entity that is gone by the time it
//!    is refreshed is first set from the data its events carried, then unset, so that a
//!    container that lived a few milliseconds is still seen.
//!
//! One entity never holds up the others. An entity the list could not read, or whose refresh
//! failed (an inspect that errors or passes its deadline), is skipped: its error is counted in
//! the `workloadmeta.entity_errors` metric, a warning is logged when it starts failing (only
//! debug messages while it keeps failing), the store keeps what it had of it, and the driver
//! refreshes it again on its next event or at the next retry, every [`RETRY_FAILED_EVERY`],
//! whichever comes first. Only a permanent error from a refresh fails the run.
//!
//! A stream that yields an error fails the run with that error (collectors make it retriable),
//! and one that ends fails it with a retriable error. After a retriable error the store's runner
//! runs the collector again once its backoff has passed, and the new run's full list corrects
//! whatever changed in between. The run ends without an error when the store shuts down.
//!
//! This crate sits below the collectors (it depends on `wm-core` only) and talks to no daemon.

#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use wm_core::{CollectorContext, CollectorError, Entity, EntityId, EventType, SourceSink, StreamCollector};

/// The most events the driver takes into one batch; the rest wait for the next batch.
pub const MAX_BATCH: usize = 512;
/// The most refreshes (inspects) the driver runs at once.
pub const REFRESH_CONCURRENCY: usize = 8;
/// How often the driver refreshes again the entities whose refresh failed, when no event for
/// them comes first.
pub const RETRY_FAILED_EVERY: Duration = Duration::from_secs(10);
/// How many stream items the run queues at most while it is busy with a batch or the list.
///
/// The run never stops reading the stream to wait for room: dockerd drops the events of a
/// subscriber that does not read (after 100 ms with its own 1,024 buffered), silently, so a
/// stalled reader would lose events without knowing. When this many wait, the run fails with
/// a retriable error instead, and the store lists again: exact, at the cost of a re-list. The
/// queue is sized so that a list of 10,000 containers, during which the run takes no events,
/// does not fill it below thousands of events a second; its memory is taken only as it fills.
pub const PUMP_CAPACITY: usize = 16_384;
/// How long the driver waits for [`Watched::Live`] after each probe before it probes again.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How long a subscription may take to prove itself live: past it the run fails with a
/// retriable error.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(10);

/// An item of a watch stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Watched<E> {
    /// A change event.
    Event(E),
    /// The answer to a probe: from this item on, the stream carries every change.
    Live,
}

/// The stream [`ListWatch::watch`] returns.
///
/// An `Err` item ends the stream: the driver handles the events before it, then the run fails
/// with that error.
pub type WatchStream<E> = BoxStream<'static, Result<Watched<E>, CollectorError>>;

/// The result of refreshing one entity: what the driver sends for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Refreshed {
    /// The entity exists as given: the driver sets it.
    Present(Entity),
    /// The entity no longer exists: the driver sets `said` (if any), then unsets `id`.
    Gone {
        /// The entity's id.
        id: EntityId,
        /// The entity as its events of the batch describe it, set before the unset so that a
        /// short-lived entity is still seen; `None` when they describe nothing worth setting.
        said: Option<Entity>,
    },
    /// Nothing to send, as for a pod sandbox or a payload that does not parse (the collector
    /// logs why).
    Skip,
    /// Several entities changed, sent in this order: a containerd image name that moves from
    /// one image to another changes both.
    Several(Vec<Refreshed>),
}

impl Refreshed {
    /// Appends the sets and unsets this result sends to `out`, in order.
    fn send_into(self, out: &mut Vec<(EventType, Entity)>) {
        match self {
            Refreshed::Present(entity) => out.push((EventType::Set, entity)),
            Refreshed::Gone { id, said } => {
                if let Some(said) = said {
                    out.push((EventType::Set, said));
                }
                out.push((EventType::Unset, Entity::empty(&id)));
            }
            Refreshed::Skip => {}
            Refreshed::Several(all) => all.into_iter().for_each(|r| r.send_into(out)),
        }
    }
}

/// The result of [`ListWatch::list`]: the entities read, and those listed but not read.
///
/// An entity that was listed but could not be read (its inspect failed) goes in `unreadable`:
/// the driver asks the store to keep what it had of it instead of unsetting it, and refreshes it
/// later. One whose read will fail the same way every time (its inspect does not parse) goes in
/// `kept`: the store keeps what it had of it too, but it is not read again until an event
/// names it, since reading it again would only fail again.
#[derive(Debug, Default)]
pub struct Listed {
    /// Every entity read.
    pub entities: Vec<Entity>,
    /// The entities listed but not read this time, each as (the key to pass to
    /// [`ListWatch::refresh`], its entity id).
    pub unreadable: Vec<(String, EntityId)>,
    /// The entities listed that cannot be read as the daemon describes them now.
    pub kept: Vec<EntityId>,
}

impl From<Vec<Entity>> for Listed {
    fn from(entities: Vec<Entity>) -> Self {
        Self { entities, ..Self::default() }
    }
}

/// Runs `fut`, a call to a daemon, for at most `deadline`.
///
/// `call` names the call in the error message; it is only run when the deadline passes.
///
/// # Errors
///
/// Returns the error of `fut`, or, when `deadline` passes first, a retriable error that reads
/// "`<call>` timed out after `<deadline>`".
pub async fn with_deadline<T>(
    deadline: Duration,
    call: impl FnOnce() -> String,
    fut: impl Future<Output = Result<T, CollectorError>>,
) -> Result<T, CollectorError> {
    match tokio::time::timeout(deadline, fut).await {
        Ok(result) => result,
        Err(_) => {
            Err(CollectorError::Retriable { context: format!("{} timed out after {deadline:?}", call()), source: None })
        }
    }
}

/// Describes how a collector subscribes to its daemon's change stream, lists every entity, and
/// reads one entity; [`Driver`] runs it.
#[async_trait]
pub trait ListWatch: Send + Sync + 'static {
    /// A change event as the daemon sends it.
    type Event: Send + 'static;

    /// Copies what the collector needs from the store's context, at the start of each run and
    /// before [`watch`](Self::watch).
    ///
    /// A container collector takes the env filter (`ctx.env`) here. Does nothing by default.
    fn prepare(&mut self, ctx: &CollectorContext) {
        let _ = ctx;
    }

    /// Connects to the daemon and subscribes to its changes.
    ///
    /// The stream must carry every change made after it was first polled or, when
    /// [`probe`](Self::probe) returns `true`, every change made after it yielded
    /// [`Watched::Live`].
    ///
    /// # Errors
    ///
    /// Returns [`CollectorError::EnvironmentAbsent`] when the daemon is not on this node (no
    /// socket), and another error when connecting or subscribing fails; the variant tells the
    /// store when to run the collector again.
    async fn watch(&mut self) -> Result<WatchStream<Self::Event>, CollectorError>;

    /// Asks the daemon to prove the subscription live, and tells whether it asked.
    ///
    /// A probe makes the daemon publish a marker that the stream turns into [`Watched::Live`];
    /// once that item arrives, every later change is on the stream, so the driver can list
    /// without missing one. Returns `false` when there is nothing to prove, as for a
    /// subscription that replays from an instant before the list (docker's `since`); the
    /// default does so. The driver calls it every [`PROBE_INTERVAL`] until `Live` arrives, and
    /// stops at the first `false`.
    ///
    /// # Errors
    ///
    /// An error fails the run.
    async fn probe(&mut self) -> Result<bool, CollectorError> {
        Ok(false)
    }

    /// Lists every entity the daemon has now.
    ///
    /// An entity that is listed but cannot be read (its inspect fails) goes in
    /// [`Listed::unreadable`], or in [`Listed::kept`] when reading it again would fail the same
    /// way, instead of failing the list.
    ///
    /// # Errors
    ///
    /// An error fails the run.
    async fn list(&mut self) -> Result<Listed, CollectorError>;

    /// Returns the key of the entity an event is about, or `None` when the event changes
    /// nothing (the driver then drops it).
    fn key(&self, event: &Self::Event) -> Option<String>;

    /// Reads what the entity `key` is now.
    ///
    /// `events` are the entity's events of this batch, in order; they are empty when the driver
    /// retries an entity whose last read failed. Refreshes of different keys run concurrently
    /// (up to [`REFRESH_CONCURRENCY`] at a time).
    ///
    /// # Errors
    ///
    /// A permanent error fails the run. Any other error skips the entity: the store keeps what
    /// it had, and the driver refreshes it again on its next event or retry.
    async fn refresh(&self, key: &str, events: Vec<Self::Event>) -> Result<Refreshed, CollectorError>;
}

/// Runs a [`ListWatch`] as a [`StreamCollector`].
#[derive(Debug)]
pub struct Driver<L> {
    inner: L,
    /// Keys whose last refresh (or read during the list) failed. The driver refreshes them again
    /// on a timer, and logs a warning only when a key joins this set.
    failing: HashSet<String>,
    /// Keys reported gone since the list, so that a later event about one (dockerd's `destroy`
    /// after its `die`, each in its own batch) does not report it again: its `Set` from the
    /// event's attributes would bring back, for a moment, a container already unset.
    gone: RecentlyGone,
}

/// The keys reported gone in the last [`GONE_FOR`], at most [`MAX_GONE`] of them, oldest
/// forgotten first.
///
/// Only the gap between two events about one container needs covering; remembering every key
/// until the next list (which a daemon that never restarts never brings) grew the heap by one
/// key per deleted container for as long as the agent ran.
#[derive(Debug, Default)]
struct RecentlyGone {
    keys: HashSet<String>,
    /// The keys in the order they went, with when.
    order: std::collections::VecDeque<(tokio::time::Instant, String)>,
}

/// How long a gone key is remembered: far longer than a daemon takes between two events about
/// one container, even with its event stream behind by a burst.
const GONE_FOR: Duration = Duration::from_secs(300);

/// The most gone keys remembered at once, whatever their age: far more than a daemon deletes
/// between two events about one container.
const MAX_GONE: usize = 4096;

impl RecentlyGone {
    /// Records `key` as gone at `now`; `false` when it already was.
    fn insert(&mut self, key: &str, now: tokio::time::Instant) -> bool {
        self.forget_older_than(now);
        if self.keys.contains(key) {
            return false;
        }
        if self.order.len() >= MAX_GONE
            && let Some((_, oldest)) = self.order.pop_front()
        {
            self.keys.remove(&oldest);
        }
        self.keys.insert(key.to_owned());
        self.order.push_back((now, key.to_owned()));
        true
    }

    /// Forgets the keys that went more than [`GONE_FOR`] before `now`.
    fn forget_older_than(&mut self, now: tokio::time::Instant) {
        while let Some((at, _)) = self.order.front()
            && now.saturating_duration_since(*at) > GONE_FOR
        {
            if let Some((_, key)) = self.order.pop_front() {
                self.keys.remove(&key);
            }
        }
    }

    /// Forgets `key` (it exists again: containerd reuses names as ids).
    fn remove(&mut self, key: &str) {
        if self.keys.remove(key) {
            self.order.retain(|(_, k)| k != key);
        }
    }

    fn clear(&mut self) {
        self.keys.clear();
        self.order.clear();
    }
}

impl<L: ListWatch> Driver<L> {
    /// Creates a driver that runs `inner`.
    pub fn new(inner: L) -> Self {
        Self { inner, failing: HashSet::new(), gone: RecentlyGone::default() }
    }

    /// Refreshes each entity of a grouped batch once (up to [`REFRESH_CONCURRENCY`] at a time)
    /// and returns the sets and unsets to send, in the batch's order.
    ///
    /// An entity whose refresh fails with an error that is not permanent is recorded as failing
    /// and left out.
    ///
    /// # Errors
    ///
    /// Returns the first permanent error, in the batch's order.
    async fn handle(
        &mut self,
        sink: &SourceSink,
        batch: Vec<(String, Vec<L::Event>)>,
    ) -> Result<Vec<(EventType, Entity)>, CollectorError> {
        let inner = &self.inner;
        let refreshed: Vec<(String, Result<Refreshed, CollectorError>)> = futures::stream::iter(batch)
            .map(|(key, events)| async move {
                let result = inner.refresh(&key, events).await;
                (key, result)
            })
            .buffered(REFRESH_CONCURRENCY)
            .collect()
            .await;
        let mut out = Vec::with_capacity(refreshed.len());
        for (key, result) in refreshed {
            let refreshed = match result {
                Ok(refreshed) => {
                    if self.failing.remove(&key) {
                        tracing::info!(key, "read again after failing");
                    }
                    refreshed
                }
                Err(error @ CollectorError::Permanent { .. }) => return Err(error),
                Err(error) => {
                    self.entity_failed(sink, key, &error);
                    continue;
                }
            };
            match &refreshed {
                // Reported gone already: nothing more to say about it.
                Refreshed::Gone { .. } if !self.gone.insert(&key, tokio::time::Instant::now()) => continue,
                Refreshed::Present(_) => self.gone.remove(&key),
                _ => {}
            }
            refreshed.send_into(&mut out);
        }
        Ok(out)
    }

    /// Records an entity that could not be read: counts it as an entity error, logs a warning
    /// if it was not already failing (a debug message otherwise), and marks it for retry.
    fn entity_failed(&mut self, sink: &SourceSink, key: String, error: &CollectorError) {
        sink.entity_error();
        let error = error.with_causes();
        if self.failing.insert(key.clone()) {
            tracing::warn!(key, %error, "cannot read this entity; skipped (the rest lands), retried later");
        } else {
            tracing::debug!(key, %error, "still cannot read this entity");
        }
        // Bounded memory: this many failing entities means the daemon itself is in trouble, so
        // forget them all instead of growing. Each is then read again on its next event or by the
        // next run's list, no longer on the retry timer.
        if self.failing.len() > MAX_FAILING {
            self.failing.clear();
        }
    }

    /// Groups events per key, the keys in order of first appearance, and drops the events
    /// without a key.
    fn group(&self, events: Vec<L::Event>) -> Vec<(String, Vec<L::Event>)> {
        let mut order: Vec<(String, Vec<L::Event>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for event in events {
            let Some(key) = self.inner.key(&event) else { continue };
            match index.get(&key) {
                Some(&i) => order[i].1.push(event),
                None => {
                    index.insert(key.clone(), order.len());
                    order.push((key, vec![event]));
                }
            }
        }
        order
    }

    /// Appends to `batch`, with no events and in sorted order, the failing keys it does not
    /// already hold.
    fn with_retries(&self, mut batch: Vec<(String, Vec<L::Event>)>) -> Vec<(String, Vec<L::Event>)> {
        let present: HashSet<&String> = batch.iter().map(|(k, _)| k).collect();
        let mut retries: Vec<String> = self.failing.iter().filter(|k| !present.contains(k)).cloned().collect();
        retries.sort();
        batch.extend(retries.into_iter().map(|k| (k, Vec::new())));
        batch
    }
}

/// The most failing keys the driver remembers; past it, it forgets them all.
const MAX_FAILING: usize = 10_000;

/// Reads the watch stream for the run, into a queue of its own whenever the run awaits
/// something else.
///
/// The run never stops reading the stream while it is busy: every call it makes (probe, list,
/// refresh, sending to the store) runs through [`Reader::while_reading`], which polls the stream
/// beside the call and queues what arrives. When the run is idle it waits on the stream itself.
/// Reading in the run's own task, rather than in a task that forwards each item through a
/// channel, saves one task wake-up per event: at a daemon's full churn pace a `perf` profile of
/// the agent finds no hot spot, its cost spread over such hand-offs.
struct Reader<E> {
    stream: WatchStream<E>,
    /// Items read while the run was busy, oldest first.
    queue: VecDeque<Result<Watched<E>, CollectorError>>,
    /// Set once the stream yielded an error or ended (that error is queued), or once the queue
    /// reached [`PUMP_CAPACITY`]: nothing more is read.
    stopped: bool,
    /// Set when the queue reached [`PUMP_CAPACITY`].
    behind: bool,
}

impl<E> Reader<E> {
    fn new(stream: WatchStream<E>) -> Self {
        Self { stream, queue: VecDeque::new(), stopped: false, behind: false }
    }

    /// Runs `work` to completion, reading the stream into the queue meanwhile.
    async fn while_reading<F: Future>(&mut self, work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                biased;
                out = &mut work => return out,
                item = self.stream.next(), if !self.stopped => {
                    self.take(item);
                    // Take whatever else is ready now, before polling the work again.
                    while !self.stopped {
                        match self.stream.next().now_or_never() {
                            Some(item) => self.take(item),
                            None => break,
                        }
                    }
                }
            }
        }
    }

    /// Queues one item read from the stream (`None`: the stream ended).
    fn take(&mut self, item: Option<Result<Watched<E>, CollectorError>>) {
        if self.queue.len() >= PUMP_CAPACITY {
            // The daemon sends faster than the run handles: stop reading; the run fails and
            // the store lists again.
            self.behind = true;
            self.stopped = true;
            return;
        }
        match item {
            Some(item) => {
                self.stopped = item.is_err();
                self.queue.push_back(item);
            }
            None => {
                self.stopped = true;
                let ended = CollectorError::Retriable { context: "the event stream ended".into(), source: None };
                self.queue.push_back(Err(ended));
            }
        }
    }

    /// Returns the next item: the oldest queued, or else the next the stream yields. Waits for
    /// ever once the stream has stopped and the queue is empty (the run then ends by its
    /// cancellation, or has already failed on the queued error).
    async fn next(&mut self) -> Result<Watched<E>, CollectorError> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return item;
            }
            if self.stopped {
                return std::future::pending().await;
            }
            if self.queue.capacity() > SHRINK_ABOVE {
                // A burst grew the queue; give its memory back now that it is drained.
                self.queue.shrink_to(SHRINK_ABOVE);
            }
            let item = self.stream.next().await;
            self.take(item);
        }
    }

    /// Returns the next item if one is queued or ready now.
    fn try_next(&mut self) -> Option<Result<Watched<E>, CollectorError>> {
        if self.queue.is_empty() && !self.stopped {
            let item = self.stream.next().now_or_never()?;
            self.take(item);
        }
        self.queue.pop_front()
    }

    /// The error to fail the run with once the queue reached [`PUMP_CAPACITY`].
    fn fell_behind(&self) -> Option<CollectorError> {
        self.behind.then(|| CollectorError::Retriable {
            context: format!("the run fell {PUMP_CAPACITY} events behind the event stream; listing again"),
            source: None,
        })
    }
}

/// The queue capacity [`Reader`] keeps once drained; a burst's larger queue is given back.
const SHRINK_ABOVE: usize = 256;

/// Probes until the stream yields [`Watched::Live`], pushing the events that arrive meanwhile
/// onto `early`.
///
/// Returns at once when the collector does not probe (its `probe` returns `false`).
///
/// # Errors
///
/// Fails with the stream's error or the probe's, or with a retriable error when the stream
/// ended or the subscription is not live within [`PROBE_DEADLINE`].
async fn wait_until_live<L: ListWatch>(
    inner: &mut L,
    reader: &mut Reader<L::Event>,
    early: &mut Vec<L::Event>,
) -> Result<(), CollectorError> {
    let deadline = tokio::time::Instant::now() + PROBE_DEADLINE;
    while reader.while_reading(inner.probe()).await? {
        let round = tokio::time::Instant::now() + PROBE_INTERVAL;
        loop {
            match tokio::time::timeout_at(round, reader.next()).await {
                Ok(Ok(Watched::Live)) => return Ok(()),
                Ok(Ok(Watched::Event(event))) => early.push(event),
                Ok(Err(error)) => return Err(error),
                Err(_) => break,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CollectorError::Retriable {
                context: format!("the event subscription did not become live within {PROBE_DEADLINE:?}"),
                source: None,
            });
        }
    }
    Ok(())
}

#[async_trait]
impl<L: ListWatch> StreamCollector for Driver<L> {
    async fn run(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        self.inner.prepare(ctx);
        let mut reader = Reader::new(self.inner.watch().await?);
        let mut early = Vec::new();
        wait_until_live(&mut self.inner, &mut reader, &mut early).await?;

        let listed = reader.while_reading(self.inner.list()).await?;
        tracing::info!(
            entities = listed.entities.len(),
            unreadable = listed.unreadable.len(),
            kept = listed.kept.len(),
            "listed"
        );
        self.failing.clear();
        self.gone.clear();
        let mut keep = listed.kept;
        keep.reserve(listed.unreadable.len());
        for (key, id) in listed.unreadable {
            let error =
                CollectorError::Retriable { context: format!("reading {id} during the list failed"), source: None };
            self.entity_failed(&ctx.sink, key, &error);
            keep.push(id);
        }
        reader.while_reading(ctx.sink.full_list_keeping(listed.entities, keep)).await;
        if let Some(error) = reader.fell_behind() {
            return Err(error);
        }
        // The events that arrived while probing mostly repeat what the list sent; handling them
        // is harmless, and it keeps what only events carry (an exit code).
        if !early.is_empty() {
            let batch = self.group(early);
            let events = reader.while_reading(self.handle(&ctx.sink, batch)).await?;
            reader.while_reading(ctx.sink.events(events)).await;
        }

        let mut retry = tokio::time::interval(RETRY_FAILED_EVERY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        retry.reset();
        loop {
            let first = tokio::select! {
                biased;
                () = ctx.cancel.cancelled() => return Ok(()),
                first = reader.next() => first,
                _ = retry.tick(), if !self.failing.is_empty() => {
                    let batch = self.with_retries(Vec::new());
                    let events = reader.while_reading(self.handle(&ctx.sink, batch)).await?;
                    reader.while_reading(ctx.sink.events(events)).await;
                    continue;
                }
            };
            if let Some(error) = reader.fell_behind() {
                return Err(error);
            }
            let mut batch = Vec::new();
            let mut broken = None;
            for item in std::iter::once(first).chain(std::iter::from_fn(|| reader.try_next())).take(MAX_BATCH) {
                match item {
                    Ok(Watched::Event(event)) => batch.push(event),
                    Ok(Watched::Live) => {}
                    Err(error) => {
                        broken = Some(error);
                        break;
                    }
                }
            }
            let batch = self.group(batch);
            let events = reader.while_reading(self.handle(&ctx.sink, batch)).await?;
            reader.while_reading(ctx.sink.events(events)).await;
            if let Some(error) = broken {
                return Err(error);
            }
        }
    }
}

#[cfg(test)]
mod tests;
