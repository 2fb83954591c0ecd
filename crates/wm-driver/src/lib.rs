//! The list/watch driver shared by the collectors that follow a daemon's change stream (docker
//! and containerd). The Kubernetes API-server collector (`kube_metadata`) does not use it: it runs
//! on kube-runtime's watcher, which lists and watches by itself.
//!
//! A collector implements [`ListWatch`]: how to subscribe ([`ListWatch::watch`]), optionally how
//! to prove the subscription live ([`ListWatch::probe`]), how to list, which entity an event is
//! about ([`ListWatch::key`]) and what that entity is now ([`ListWatch::refresh`]). [`Driver`]
//! turns it into a [`StreamCollector`] that does, once per run:
//!
//! 1. subscribe, and drive the event stream from a task of its own (a lazy stream, or a subscribe
//!    call that only returns with the first event, is fine), aborted when the run ends;
//! 2. when the collector probes, repeat the probe every 100 ms until the stream says
//!    [`Watched::Live`] (at most 10 s), keeping the events that arrive meanwhile;
//! 3. list, and send it as one full list (the store reconciles: nothing stale, nothing missing);
//! 4. then take whatever events are pending (up to 512) as a batch, group them per entity in
//!    order of first appearance, refresh each entity once (up to [`REFRESH_CONCURRENCY`] at a
//!    time), and send the batch's sets and unsets together, in that order. An entity gone before
//!    its refresh is reported from what its events said (a container that lived a few
//!    milliseconds is still seen), then unset.
//!
//! One entity never stalls the others: an entity the list could not read, or whose refresh
//! failed (an inspect that errors or passes its deadline), is skipped (logged once while it
//! keeps failing, counted as `workloadmeta.entity_errors`), what the store had of it stays, and
//! it is refreshed again with its next event or every [`RETRY_FAILED_EVERY`], whichever comes
//! first. Only a permanent error fails the run.
//!
//! A broken stream fails the run retriably: the store's runner owns the backoff and runs it again,
//! and the next run's full list reconciles. The run ends quietly when the store shuts down.
//!
//! This crate sits below the collectors (it depends on `wm-core` only) and talks to no daemon.

#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use wm_core::{CollectorContext, CollectorError, Entity, EntityId, EventType, SourceSink, StreamCollector};

/// Events taken as one batch at most.
pub const MAX_BATCH: usize = 512;
/// Refreshes (inspects) in flight at once.
pub const REFRESH_CONCURRENCY: usize = 8;
/// How often entities whose refresh failed are refreshed again when no event comes for them.
pub const RETRY_FAILED_EVERY: Duration = Duration::from_secs(10);
/// Events the pump holds before it stops reading the daemon (a slow consumer slows the reading;
/// nothing is dropped).
const PUMP_CAPACITY: usize = 1024;
/// Time between two probes while the subscription is not yet proven live.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How long a subscription may take to prove itself live.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(10);

/// An item of a watch stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Watched<E> {
    /// A change event.
    Event(E),
    /// The answer to a probe: from here on the stream carries every change.
    Live,
}

/// What a watch stream yields. An `Err` ends the stream: the run fails with it.
pub type WatchStream<E> = BoxStream<'static, Result<Watched<E>, CollectorError>>;

/// What an entity is now, after its events in a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Refreshed {
    /// It exists: set it.
    Present(Entity),
    /// It is gone: set what its events said (if anything), then unset it.
    Gone {
        /// Its id.
        id: EntityId,
        /// What its events said about it, reported before the unset.
        said: Option<Entity>,
    },
    /// Nothing to report (a sandbox, a payload that does not parse: the collector logged it).
    Skip,
}

/// What a list read: the entities, and those it listed but could not read (an inspect failed),
/// by key and id: the store keeps what it had of them and the driver refreshes them later.
#[derive(Debug, Default)]
pub struct Listed {
    /// Every entity read.
    pub entities: Vec<Entity>,
    /// Listed but unreadable this time: (key for [`ListWatch::refresh`], entity id).
    pub unreadable: Vec<(String, EntityId)>,
}

impl From<Vec<Entity>> for Listed {
    fn from(entities: Vec<Entity>) -> Self {
        Self { entities, unreadable: Vec::new() }
    }
}

/// Bounds a daemon call with `deadline`: passing it is a retriable error naming `call`.
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

/// A collector that subscribes to a change stream, lists, and refreshes one entity at a time.
#[async_trait]
pub trait ListWatch: Send + Sync + 'static {
    /// A change event as the daemon sends it.
    type Event: Send + 'static;

    /// Takes what it needs from the store's context at the start of each run, before
    /// [`watch`](Self::watch): the env filter of the containers it reports. Does nothing by
    /// default.
    fn prepare(&mut self, ctx: &CollectorContext) {
        let _ = ctx;
    }

    /// Connects and subscribes. An absent environment (no socket) is
    /// [`CollectorError::EnvironmentAbsent`]. The stream must carry every change made after it
    /// was first polled, or after it answered a probe with [`Watched::Live`] when
    /// [`probe`](Self::probe) returns `true`.
    async fn watch(&mut self) -> Result<WatchStream<Self::Event>, CollectorError>;

    /// Asks the daemon to prove the subscription live (publish a marker the stream answers with
    /// [`Watched::Live`]). Returns `false` when there is nothing to prove: a subscription that
    /// replays from an instant before the list (docker's `since`). Called every
    /// [`PROBE_INTERVAL`] until the answer comes.
    async fn probe(&mut self) -> Result<bool, CollectorError> {
        Ok(false)
    }

    /// Every entity now (those listed but unreadable in [`Listed::unreadable`]).
    async fn list(&mut self) -> Result<Listed, CollectorError>;

    /// Which entity an event is about; `None`: the event changes nothing.
    fn key(&self, event: &Self::Event) -> Option<String>;

    /// What the entity `key` is now, given its events of this batch (in order; none when the
    /// driver retries an entity that failed). Refreshes of different keys run concurrently. A
    /// retriable error skips the entity until its next event or retry; a permanent one fails
    /// the run.
    async fn refresh(&self, key: &str, events: Vec<Self::Event>) -> Result<Refreshed, CollectorError>;
}

/// Runs a [`ListWatch`] as a [`StreamCollector`].
#[derive(Debug)]
pub struct Driver<L> {
    inner: L,
    /// Keys whose last refresh (or list read) failed: retried, and logged only when they start
    /// failing.
    failing: HashSet<String>,
}

impl<L: ListWatch> Driver<L> {
    /// The driver of `inner`.
    pub fn new(inner: L) -> Self {
        Self { inner, failing: HashSet::new() }
    }

    /// Groups a batch per entity (in order of first appearance), refreshes each once (a few at
    /// a time), and gives the sets and unsets to send, in that order.
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
            match refreshed {
                Refreshed::Present(entity) => out.push((EventType::Set, entity)),
                Refreshed::Gone { id, said } => {
                    if let Some(said) = said {
                        out.push((EventType::Set, said));
                    }
                    out.push((EventType::Unset, Entity::empty(&id)));
                }
                Refreshed::Skip => {}
            }
        }
        Ok(out)
    }

    /// Records an entity that could not be read: counted, logged when it starts failing.
    fn entity_failed(&mut self, sink: &SourceSink, key: String, error: &CollectorError) {
        sink.entity_error();
        let error = error.with_causes();
        if self.failing.insert(key.clone()) {
            tracing::warn!(key, %error, "cannot read this entity; skipped (the rest lands), retried later");
        } else {
            tracing::debug!(key, %error, "still cannot read this entity");
        }
        // Bounded: past this many failing entities the daemon itself is in trouble; the next
        // relist reads them all again.
        if self.failing.len() > MAX_FAILING {
            self.failing.clear();
        }
    }

    /// Groups events per key, in order of first appearance.
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

    /// Adds the failing keys the batch does not already refresh, with no events.
    fn with_retries(&self, mut batch: Vec<(String, Vec<L::Event>)>) -> Vec<(String, Vec<L::Event>)> {
        let present: HashSet<&String> = batch.iter().map(|(k, _)| k).collect();
        let mut retries: Vec<String> = self.failing.iter().filter(|k| !present.contains(k)).cloned().collect();
        retries.sort();
        batch.extend(retries.into_iter().map(|k| (k, Vec::new())));
        batch
    }
}

/// Failing entities remembered at most.
const MAX_FAILING: usize = 10_000;

/// Drives `stream` into `tx` until it ends, breaks, or the receiver is gone.
async fn pump<E: Send + 'static>(mut stream: WatchStream<E>, tx: mpsc::Sender<Result<Watched<E>, CollectorError>>) {
    while let Some(item) = stream.next().await {
        let broken = item.is_err();
        if tx.send(item).await.is_err() || broken {
            return;
        }
    }
    let ended = CollectorError::Retriable { context: "the event stream ended".into(), source: None };
    let _ = tx.send(Err(ended)).await;
}

/// Aborts the pump when the run ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Probes until the stream answers [`Watched::Live`], keeping real events in `early`.
async fn wait_until_live<L: ListWatch>(
    inner: &mut L,
    rx: &mut mpsc::Receiver<Result<Watched<L::Event>, CollectorError>>,
    early: &mut Vec<L::Event>,
) -> Result<(), CollectorError> {
    let deadline = tokio::time::Instant::now() + PROBE_DEADLINE;
    while inner.probe().await? {
        let round = tokio::time::Instant::now() + PROBE_INTERVAL;
        loop {
            match tokio::time::timeout_at(round, rx.recv()).await {
                Ok(Some(Ok(Watched::Live))) => return Ok(()),
                Ok(Some(Ok(Watched::Event(event)))) => early.push(event),
                Ok(Some(Err(error))) => return Err(error),
                Ok(None) => {
                    return Err(CollectorError::Retriable { context: "the event task ended".into(), source: None });
                }
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
        let stream = self.inner.watch().await?;
        let (tx, mut rx) = mpsc::channel(PUMP_CAPACITY);
        let _pump = AbortOnDrop(tokio::spawn(pump(stream, tx)));
        let mut early = Vec::new();
        wait_until_live(&mut self.inner, &mut rx, &mut early).await?;

        let listed = self.inner.list().await?;
        tracing::info!(entities = listed.entities.len(), unreadable = listed.unreadable.len(), "listed");
        self.failing.clear();
        let mut keep = Vec::with_capacity(listed.unreadable.len());
        for (key, id) in listed.unreadable {
            let error =
                CollectorError::Retriable { context: format!("reading {id} during the list failed"), source: None };
            self.entity_failed(&ctx.sink, key, &error);
            keep.push(id);
        }
        ctx.sink.full_list_keeping(listed.entities, keep).await;
        // Events from before the list mostly repeat it; handling them is harmless, and keeps
        // what only events say (an exit code).
        if !early.is_empty() {
            let batch = self.group(early);
            let events = self.handle(&ctx.sink, batch).await?;
            ctx.sink.events(events).await;
        }

        let mut retry = tokio::time::interval(RETRY_FAILED_EVERY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        retry.reset();
        loop {
            let first = tokio::select! {
                biased;
                () = ctx.cancel.cancelled() => return Ok(()),
                first = rx.recv() => first,
                _ = retry.tick(), if !self.failing.is_empty() => {
                    let batch = self.with_retries(Vec::new());
                    let events = self.handle(&ctx.sink, batch).await?;
                    ctx.sink.events(events).await;
                    continue;
                }
            };
            let Some(first) = first else {
                return Err(CollectorError::Retriable { context: "the event task ended".into(), source: None });
            };
            let mut batch = Vec::new();
            let mut broken = None;
            for item in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())).take(MAX_BATCH) {
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
            let events = self.handle(&ctx.sink, batch).await?;
            ctx.sink.events(events).await;
            if let Some(error) = broken {
                return Err(error);
            }
        }
    }
}

#[cfg(test)]
mod tests;
