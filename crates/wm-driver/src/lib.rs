//! The list/watch driver shared by the collectors that follow a daemon's change stream (docker,
//! containerd, and the Kubernetes API-server watcher to come).
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
//!    order of first appearance, refresh each entity once, and send the batch's sets and unsets
//!    together. An entity gone before its refresh is reported from what its events said (a
//!    container that lived a few milliseconds is still seen), then unset.
//!
//! A broken stream fails the run retriably: the store's runner owns the backoff and runs it again,
//! and the next run's full list reconciles. The run ends quietly when the store shuts down.
//!
//! This crate sits below the collectors (it depends on `wm-core` only) and talks to no daemon.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use wm_core::{CollectorContext, CollectorError, Entity, EntityId, EventType, StreamCollector};

/// Events taken as one batch at most.
pub const MAX_BATCH: usize = 512;
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

/// A collector that subscribes to a change stream, lists, and refreshes one entity at a time.
#[async_trait]
pub trait ListWatch: Send + 'static {
    /// A change event as the daemon sends it.
    type Event: Send + 'static;

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

    /// Every entity now.
    async fn list(&mut self) -> Result<Vec<Entity>, CollectorError>;

    /// Which entity an event is about; `None`: the event changes nothing.
    fn key(&self, event: &Self::Event) -> Option<String>;

    /// What the entity `key` is now, given its events of this batch (in order). An error fails
    /// the run (retriable or not, as the error says).
    async fn refresh(&mut self, key: &str, events: Vec<Self::Event>) -> Result<Refreshed, CollectorError>;
}

/// Runs a [`ListWatch`] as a [`StreamCollector`].
#[derive(Debug)]
pub struct Driver<L> {
    inner: L,
}

impl<L: ListWatch> Driver<L> {
    /// The driver of `inner`.
    pub fn new(inner: L) -> Self {
        Self { inner }
    }

    /// Groups a batch per entity (in order of first appearance), refreshes each once, and gives
    /// the sets and unsets to send.
    async fn handle(&mut self, batch: Vec<L::Event>) -> Result<Vec<(EventType, Entity)>, CollectorError> {
        let mut order: Vec<String> = Vec::new();
        let mut per_key: HashMap<String, Vec<L::Event>> = HashMap::new();
        for event in batch {
            let Some(key) = self.inner.key(&event) else { continue };
            match per_key.get_mut(&key) {
                Some(events) => events.push(event),
                None => {
                    order.push(key.clone());
                    per_key.insert(key, vec![event]);
                }
            }
        }
        let mut out = Vec::with_capacity(order.len());
        for key in order {
            let events = per_key.remove(&key).unwrap_or_default();
            match self.inner.refresh(&key, events).await? {
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
}

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
        let stream = self.inner.watch().await?;
        let (tx, mut rx) = mpsc::channel(PUMP_CAPACITY);
        let _pump = AbortOnDrop(tokio::spawn(pump(stream, tx)));
        let mut early = Vec::new();
        wait_until_live(&mut self.inner, &mut rx, &mut early).await?;

        let entities = self.inner.list().await?;
        tracing::info!(entities = entities.len(), "listed");
        ctx.sink.full_list(entities).await;
        // Events from before the list mostly repeat it; handling them is harmless, and keeps
        // what only events say (an exit code).
        if !early.is_empty() {
            let events = self.handle(early).await?;
            ctx.sink.events(events).await;
        }

        loop {
            let first = tokio::select! {
                biased;
                () = ctx.cancel.cancelled() => return Ok(()),
                first = rx.recv() => first,
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
            let events = self.handle(batch).await?;
            ctx.sink.events(events).await;
            if let Some(error) = broken {
                return Err(error);
            }
        }
    }
}

#[cfg(test)]
mod tests;
