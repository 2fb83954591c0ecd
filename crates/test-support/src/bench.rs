//! What the benchmarks share: waiting for a store's first complete snapshot, and percentiles.

use wm_core::{EventType, Filter, Kind, SubscriberPriority};
use wm_store::{Store, Subscription};

/// Subscribes to `store`'s entities of `kind`, starts the store, and returns once `count` `Set`
/// events have arrived: the complete snapshot the sync benchmarks time. The subscription is
/// returned still open, for a caller that goes on watching.
///
/// # Panics
///
/// Panics when the subscription ends or fails first.
pub async fn start_until_sets(store: &Store, kind: Kind, count: usize) -> Subscription {
    let mut sub = store.subscribe("bench", SubscriberPriority::Normal, Filter::all().with_kind(kind));
    store.start();
    let mut seen = 0;
    while seen < count {
        let bundle = match sub.recv().await {
            Some(Ok(bundle)) => bundle,
            other => panic!("the subscription ended after {seen} of {count} sets: {other:?}"),
        };
        seen += bundle.events.iter().filter(|e| e.event_type == EventType::Set).count();
    }
    sub
}

/// Returns the `p`th percentile (nearest rank) of `sorted`, which must not be empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
