//! A subscriber's queue, its receiving end, and bundles that acknowledge themselves when dropped.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::Stream;
use tokio::sync::Notify;
use tokio::time::Instant;
use wm_core::sync::MutexExt;
use wm_core::{Event, SubscriberPriority};

/// Why a subscription's stream ended with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// The subscriber did not keep up: its queue stayed full too long and it was cut off.
    /// Nothing was dropped silently: subscribe again for a fresh snapshot.
    #[error(
        "subscriber {subscriber} lagged: its queue held {pending_bundles} bundles for {full_for:?} and was cut off; subscribe again for a fresh snapshot"
    )]
    Lagged {
        /// The subscriber's name.
        subscriber: String,
        /// Bundles it had not taken when it was cut off.
        pending_bundles: usize,
        /// How long its queue had been full.
        full_for: Duration,
    },
}

/// How a queue was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Closed {
    /// Ended normally (unsubscribed, store stopped): the stream just ends.
    Ended,
    /// Cut off; the error is handed out once, then the stream ends.
    Lagged(SubscriptionError),
}

pub(crate) enum Pushed {
    Queued,
    /// The subscriber was cut off by this push.
    CutOff,
    /// The queue was already closed.
    Closed,
}

#[derive(Debug)]
struct Pending {
    events: Events,
    seq: u64,
}

/// The events of a bundle. Subscribers whose filter passes a whole batch share one allocation;
/// the others get their own filtered copy. Reads as a slice.
#[derive(Clone)]
pub struct Events(EventsRepr);

#[derive(Clone)]
enum EventsRepr {
    Shared(Arc<[Event]>),
    Owned(Vec<Event>),
}

impl Events {
    pub(crate) fn shared(events: Arc<[Event]>) -> Self {
        Self(EventsRepr::Shared(events))
    }

    /// The events as an owned vector (copies them when they are shared).
    pub fn into_vec(self) -> Vec<Event> {
        match self.0 {
            EventsRepr::Shared(events) => events.to_vec(),
            EventsRepr::Owned(events) => events,
        }
    }
}

impl From<Vec<Event>> for Events {
    fn from(events: Vec<Event>) -> Self {
        Self(EventsRepr::Owned(events))
    }
}

impl std::ops::Deref for Events {
    type Target = [Event];

    fn deref(&self) -> &[Event] {
        match &self.0 {
            EventsRepr::Shared(events) => events,
            EventsRepr::Owned(events) => events,
        }
    }
}

impl<'a> IntoIterator for &'a Events {
    type Item = &'a Event;
    type IntoIter = std::slice::Iter<'a, Event>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Pending>,
    closed: Option<Closed>,
    full_since: Option<Instant>,
}

/// Bounds on a subscriber's queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    /// Bundles a subscriber may hold back before its queue counts as full.
    pub(crate) capacity: usize,
    /// How long a queue may stay full before its subscriber is cut off.
    pub(crate) lag_timeout: Duration,
    /// Hard bound on held-back bundles while within `lag_timeout`; past it, cut off at once.
    pub(crate) hard_capacity: usize,
}

/// What the store and the subscriber share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: u64,
    pub(crate) name: Arc<str>,
    pub(crate) priority: SubscriberPriority,
    limits: QueueLimits,
    state: Mutex<QueueState>,
    wake: Notify,
    /// The highest bundle sequence number acknowledged.
    acked: AtomicU64,
    /// Wakes the store loop when it waits for an ack (one waiter: `notify_one` keeps a permit).
    ack_wake: Notify,
    receiver_gone: AtomicBool,
}

impl Shared {
    pub(crate) fn new(id: u64, name: Arc<str>, priority: SubscriberPriority, limits: QueueLimits) -> Self {
        Self {
            id,
            name,
            priority,
            limits,
            state: Mutex::new(QueueState::default()),
            wake: Notify::new(),
            acked: AtomicU64::new(0),
            ack_wake: Notify::new(),
            receiver_gone: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // The queue holds no invariant a panicking holder could break half-way.
        self.state.locked()
    }

    /// Queues a bundle; cuts the subscriber off when its queue stayed full past the lag timeout
    /// or reached the hard bound. Never blocks.
    pub(crate) fn push(&self, events: Events, seq: u64) -> Pushed {
        let mut st = self.lock();
        if st.closed.is_some() {
            return Pushed::Closed;
        }
        if st.items.len() >= self.limits.capacity {
            let now = Instant::now();
            let since = *st.full_since.get_or_insert(now);
            let full_for = now.saturating_duration_since(since);
            if full_for >= self.limits.lag_timeout || st.items.len() >= self.limits.hard_capacity {
                let pending_bundles = st.items.len();
                st.items.clear();
                st.closed = Some(Closed::Lagged(SubscriptionError::Lagged {
                    subscriber: self.name.to_string(),
                    pending_bundles,
                    full_for,
                }));
                drop(st);
                self.wake.notify_one();
                return Pushed::CutOff;
            }
        }
        st.items.push_back(Pending { events, seq });
        drop(st);
        self.wake.notify_one();
        Pushed::Queued
    }

    /// Ends the stream; bundles not yet taken are discarded.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.items.clear();
        if st.closed.is_none() {
            st.closed = Some(Closed::Ended);
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Ends the stream once the bundles already queued were taken.
    pub(crate) fn close_after_pending(&self) {
        let mut st = self.lock();
        if st.closed.is_none() {
            st.closed = Some(Closed::Ended);
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Whether the store should stop serving this subscriber.
    pub(crate) fn is_finished(&self) -> bool {
        self.receiver_gone.load(Ordering::Relaxed) || self.lock().closed.is_some()
    }

    pub(crate) fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Returns once bundle `seq` (or a later one) was acknowledged.
    pub(crate) async fn acked_at_least(&self, seq: u64) {
        while self.acked() < seq {
            self.ack_wake.notified().await;
        }
    }

    fn ack(&self, seq: u64) {
        if self.acked.fetch_max(seq, Ordering::AcqRel) < seq {
            self.ack_wake.notify_one();
        }
    }
}

/// Acknowledges one bundle when dropped.
struct Acker {
    shared: Arc<Shared>,
    seq: u64,
}

impl Drop for Acker {
    fn drop(&mut self) {
        self.shared.ack(self.seq);
    }
}

/// The events of one batch that passed a subscriber's filter, in input order (or a snapshot).
///
/// Dropping the bundle acknowledges it; the store then serves the next-priority subscriber.
/// Hold it only as long as the work that must happen first (the tagger stores the tags).
pub struct EventBundle {
    /// The events, in batch order.
    pub events: Events,
    ack: Option<Acker>,
}

impl EventBundle {
    /// Acknowledges now, keeping the events.
    pub fn acknowledge(&mut self) {
        self.ack = None;
    }

    /// Whether this bundle was acknowledged.
    pub fn is_acknowledged(&self) -> bool {
        self.ack.is_none()
    }
}

impl fmt::Debug for EventBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBundle").field("events", &self.events).field("acknowledged", &self.ack.is_none()).finish()
    }
}

/// What `try_recv` found.
#[derive(Debug)]
pub enum TryRecv {
    /// A bundle.
    Bundle(EventBundle),
    /// Nothing waiting now.
    Empty,
    /// The stream ended with an error (once).
    Failed(SubscriptionError),
    /// The stream ended.
    Closed,
}

/// A subscriber's receiving end. The first bundle is the snapshot; dropping the subscription
/// unsubscribes.
pub struct Subscription {
    shared: Arc<Shared>,
}

impl Subscription {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The id to unsubscribe with.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The name given at subscribe time.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The next bundle, without waiting.
    pub fn try_recv(&mut self) -> TryRecv {
        let mut st = self.shared.lock();
        if let Some(Pending { events, seq }) = st.items.pop_front() {
            if st.items.len() < self.shared.limits.capacity {
                st.full_since = None;
            }
            return TryRecv::Bundle(EventBundle { events, ack: Some(Acker { shared: self.shared.clone(), seq }) });
        }
        match st.closed.take() {
            None => TryRecv::Empty,
            Some(Closed::Ended) => {
                st.closed = Some(Closed::Ended);
                TryRecv::Closed
            }
            Some(Closed::Lagged(error)) => {
                st.closed = Some(Closed::Ended);
                TryRecv::Failed(error)
            }
        }
    }

    /// The next bundle; `None` once the stream ended, an error once if it was cut off.
    pub async fn recv(&mut self) -> Option<Result<EventBundle, SubscriptionError>> {
        loop {
            match self.try_recv() {
                TryRecv::Bundle(bundle) => return Some(Ok(bundle)),
                TryRecv::Failed(error) => return Some(Err(error)),
                TryRecv::Closed => return None,
                TryRecv::Empty => self.shared.wake.notified().await,
            }
        }
    }

    /// The subscription as a stream of bundles.
    pub fn into_stream(self) -> impl Stream<Item = Result<EventBundle, SubscriptionError>> + Send {
        futures::stream::unfold(self, |mut sub| async move { sub.recv().await.map(|item| (item, sub)) })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Relaxed);
        self.shared.close();
        // Nobody will acknowledge what is still out: let the store stop waiting for it.
        self.shared.ack(u64::MAX);
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.shared.id)
            .field("name", &self.shared.name)
            .field("priority", &self.shared.priority)
            .finish()
    }
}
