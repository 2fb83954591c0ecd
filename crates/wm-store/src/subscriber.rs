//! Defines a subscriber's queue, its receiving end ([`Subscription`]), and the bundles it
//! receives, which acknowledge themselves when dropped.

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
    /// The subscriber did not keep up and was cut off: its queue stayed full for the lag timeout,
    /// or reached its hard bound.
    ///
    /// The bundles in its queue were discarded, and this error says so, so nothing is lost
    /// silently. Subscribe again for a fresh snapshot.
    #[error(
        "subscriber {subscriber} lagged: its queue held {pending_bundles} bundles for {full_for:?} and was cut off; subscribe again for a fresh snapshot"
    )]
    Lagged {
        /// The subscriber's name.
        subscriber: String,
        /// How many bundles were waiting in its queue when it was cut off.
        pending_bundles: usize,
        /// How long its queue had been full. Less than the lag timeout means the hard bound cut
        /// it off.
        full_for: Duration,
    },
}

/// How a queue was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Closed {
    /// Ended normally (unsubscribed, store stopped): the stream just ends.
    Ended,
    /// Cut off: the subscriber receives the error once, then the stream ends.
    Lagged(SubscriptionError),
}

/// What [`Shared::push`] did with a bundle.
pub(crate) enum Pushed {
    /// The bundle is in the queue.
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

/// The events of a bundle; read them as a slice (`&[Event]`).
///
/// Subscribers whose filter passes a whole batch share one allocation; the others get their own
/// filtered copy.
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

    /// Returns the events as a vector; when the allocation is shared, each event is cloned.
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
    /// When the queue became full; cleared once a receive leaves it below capacity.
    full_since: Option<Instant>,
}

/// Bounds on a subscriber's queue.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    /// How many bundles may wait in the queue before it counts as full.
    pub(crate) capacity: usize,
    /// How long a queue may stay full before its subscriber is cut off.
    pub(crate) lag_timeout: Duration,
    /// The most bundles the queue may hold, even before `lag_timeout` has passed: a push that
    /// finds this many cuts the subscriber off at once.
    pub(crate) hard_capacity: usize,
}

/// Holds what the store loop and a [`Subscription`] share: the queue, the acknowledgements, and
/// the wake-ups between them.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: u64,
    pub(crate) name: Arc<str>,
    pub(crate) priority: SubscriberPriority,
    limits: QueueLimits,
    state: Mutex<QueueState>,
    /// Wakes the subscriber waiting in `recv` when a bundle is queued or the queue closes.
    wake: Notify,
    /// The highest bundle sequence number acknowledged.
    acked: AtomicU64,
    /// Wakes the store loop when it waits for an acknowledgement. The loop is the only waiter,
    /// and `notify_one` stores a permit when nobody waits yet, so an acknowledgement that comes
    /// before the loop starts waiting still wakes it.
    ack_wake: Notify,
    /// Set when the `Subscription` is dropped.
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

    /// Locks the queue.
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // No change to the queue can be left half-done by a panic, so a poisoned lock is used as
        // it is.
        self.state.locked()
    }

    /// Queues a bundle, or cuts the subscriber off when its queue has stayed full for the lag
    /// timeout or has reached the hard bound.
    ///
    /// Never waits for the subscriber. A cut-off discards the queued bundles and this one, and
    /// leaves the error for the subscriber's next receive.
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

    /// Ends the stream, discarding the bundles the subscriber has not received.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.items.clear();
        if st.closed.is_none() {
            st.closed = Some(Closed::Ended);
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Ends the stream after the bundles already queued: the subscriber receives them, then the
    /// end.
    pub(crate) fn close_after_pending(&self) {
        let mut st = self.lock();
        if st.closed.is_none() {
            st.closed = Some(Closed::Ended);
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Tells whether the store should stop serving this subscriber: its `Subscription` was
    /// dropped or its queue is closed.
    pub(crate) fn is_finished(&self) -> bool {
        self.receiver_gone.load(Ordering::Relaxed) || self.lock().closed.is_some()
    }

    /// Returns the highest bundle sequence number acknowledged so far.
    pub(crate) fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Waits until bundle `seq`, or a later one, has been acknowledged.
    pub(crate) async fn acked_at_least(&self, seq: u64) {
        while self.acked() < seq {
            self.ack_wake.notified().await;
        }
    }

    /// Records that bundle `seq` was acknowledged, and wakes the store loop when that raises the
    /// highest acknowledged number.
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

/// The events of one batch that passed a subscriber's filter, in batch order; the first bundle of
/// a subscription holds the snapshot instead.
///
/// Dropping the bundle acknowledges it. The store serves subscribers of a lower priority once
/// every subscriber of this priority has acknowledged (or `ack_timeout` has passed), so keep
/// the bundle only while doing the work that must come before theirs (the tagger stores the
/// tags), or call [`EventBundle::acknowledge`].
pub struct EventBundle {
    /// The events, in batch order.
    pub events: Events,
    ack: Option<Acker>,
}

impl EventBundle {
    /// Acknowledges the bundle now and keeps its events, so lower priorities are served while
    /// you go on using them.
    pub fn acknowledge(&mut self) {
        self.ack = None;
    }

    /// Tells whether the bundle was acknowledged with [`EventBundle::acknowledge`].
    pub fn is_acknowledged(&self) -> bool {
        self.ack.is_none()
    }
}

impl fmt::Debug for EventBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBundle").field("events", &self.events).field("acknowledged", &self.ack.is_none()).finish()
    }
}

/// What [`Subscription::try_recv`] found.
#[derive(Debug)]
pub enum TryRecv {
    /// A bundle.
    Bundle(EventBundle),
    /// No bundle is waiting now.
    Empty,
    /// The subscriber was cut off: the stream ends here, and later calls return `Closed`.
    Failed(SubscriptionError),
    /// The stream has ended: unsubscribed, cut off earlier, or the store stopped.
    Closed,
}

/// Receives a subscriber's bundles; returned by [`Store::subscribe`](crate::Store::subscribe).
///
/// The first bundle is the snapshot. Dropping the subscription unsubscribes, and the store stops
/// waiting for its acknowledgements.
pub struct Subscription {
    shared: Arc<Shared>,
}

impl Subscription {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Returns the id to pass to [`Store::unsubscribe`](crate::Store::unsubscribe).
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// Returns the name given to [`Store::subscribe`](crate::Store::subscribe).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Returns the next bundle if one is waiting, or what ended the stream, without waiting.
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

    /// Waits for the next bundle.
    ///
    /// Returns `None` once the stream has ended: the subscription was ended with
    /// [`Store::unsubscribe`](crate::Store::unsubscribe), or the store stopped.
    ///
    /// # Errors
    ///
    /// Returns [`SubscriptionError::Lagged`] once, when the subscriber was cut off for not
    /// keeping up; every call after it returns `None`.
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

    /// Turns the subscription into a stream of bundles, which ends where [`Subscription::recv`]
    /// would return `None`.
    ///
    /// # Errors
    ///
    /// Yields [`SubscriptionError::Lagged`] as its last item when the subscriber was cut off.
    pub fn into_stream(self) -> impl Stream<Item = Result<EventBundle, SubscriptionError>> + Send {
        futures::stream::unfold(self, |mut sub| async move { sub.recv().await.map(|item| (item, sub)) })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Relaxed);
        self.shared.close();
        // `close` discarded the queued bundles, which will never be acknowledged: mark every
        // bundle acknowledged so that the store loop stops waiting on this subscriber.
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
