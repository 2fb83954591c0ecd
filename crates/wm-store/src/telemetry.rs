//! Counts the store's telemetry under the Datadog metric names, and reads it out as samples for
//! whatever exports them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use wm_core::sync::MutexExt;
use wm_core::{Kind, Source};

/// A metric's value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricValue {
    /// A count that only goes up.
    Counter(u64),
    /// A value that goes up and down.
    Gauge(f64),
    /// A distribution given as its number of observations and their sum (in seconds for
    /// durations).
    Summary {
        /// How many observations.
        count: u64,
        /// Their sum.
        sum: f64,
    },
}

/// One metric with its labels, e.g. `workloadmeta.stored_entities{kind="container",source="runtime"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricSample {
    /// The metric's name.
    pub name: &'static str,
    /// Label names and values.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: MetricValue,
}

/// Holds the store-wide counters, shared by the store handle and its loop.
#[derive(Debug, Default)]
pub(crate) struct Telemetry {
    /// Events received, by kind and then by source (the column `source_slot` gives).
    events_received: [[AtomicU64; 4]; Kind::COUNT],
    notifications_sent: Mutex<SentCounts>,
    /// How many subscribers the loop serves.
    pub(crate) subscribers: AtomicI64,
}

/// Returns the column of `source` in the per-source counter arrays.
fn source_slot(source: Source) -> usize {
    match source {
        Source::ClusterOrchestrator => 0,
        Source::NodeOrchestrator => 1,
        Source::Runtime => 2,
        Source::Remote => 3,
    }
}

/// The most distinct subscriber names `workloadmeta.notifications_sent` keeps a series for.
///
/// Names come from callers, and a caller may build them from something that changes on every
/// connection; past this many, a new name's counts go to [`OTHER_SUBSCRIBERS`], so neither memory
/// nor the `/metrics` page grows with reconnects.
pub(crate) const MAX_SUBSCRIBER_NAMES: usize = 256;

/// The `subscriber_name` that counts every subscriber past [`MAX_SUBSCRIBER_NAMES`].
pub(crate) const OTHER_SUBSCRIBERS: &str = "other";

// The outcomes counted by `workloadmeta.notifications_sent{status}`.
/// A bundle was queued, and acknowledged in time where the loop waited for it.
pub(crate) const SENT_SUCCESS: &str = "success";
/// A bundle was queued but not acknowledged within `ack_timeout`.
pub(crate) const SENT_ACK_TIMEOUT: &str = "ack_timeout";
/// The subscriber was cut off for not keeping up (see `SubscriptionError::Lagged`).
pub(crate) const SENT_LAGGED: &str = "lagged";

/// Counts the events of one batch locally, so that each shared atomic counter is updated once
/// per batch instead of once per event.
#[derive(Debug, Default)]
pub(crate) struct Received([[u64; 4]; Kind::COUNT]);

impl Received {
    /// Counts one event about an entity of `kind` from `source`.
    pub(crate) fn count(&mut self, kind: Kind, source: Source) {
        self.0[kind.index()][source_slot(source)] += 1;
    }

    /// Adds the counts to the store's counters.
    pub(crate) fn add_to(&self, telemetry: &Telemetry) {
        for (k, row) in self.0.iter().enumerate() {
            for (s, n) in row.iter().enumerate() {
                if *n > 0 {
                    telemetry.events_received[k][s].fetch_add(*n, Ordering::Relaxed);
                }
            }
        }
    }
}

/// `workloadmeta.notifications_sent` by subscriber name and status, for at most
/// [`MAX_SUBSCRIBER_NAMES`] names.
#[derive(Debug, Default)]
struct SentCounts {
    counts: BTreeMap<(Arc<str>, &'static str), u64>,
    /// The subscriber names that have series of their own.
    names: std::collections::BTreeSet<Arc<str>>,
}

impl Telemetry {
    /// Counts one notification outcome, `status`, for `subscriber`; under [`OTHER_SUBSCRIBERS`]
    /// when [`MAX_SUBSCRIBER_NAMES`] other names already have series.
    pub(crate) fn notification(&self, subscriber: &Arc<str>, status: &'static str) {
        let mut sent = self.notifications_sent.locked();
        let name = if sent.names.contains(subscriber) {
            subscriber.clone()
        } else if sent.names.len() < MAX_SUBSCRIBER_NAMES {
            sent.names.insert(subscriber.clone());
            subscriber.clone()
        } else {
            Arc::from(OTHER_SUBSCRIBERS)
        };
        *sent.counts.entry((name, status)).or_insert(0) += 1;
    }

    /// Appends the store-wide samples to `out`: events received (for each kind and source that
    /// has any), notifications sent, and the number of subscribers.
    pub(crate) fn samples(&self, out: &mut Vec<MetricSample>) {
        for kind in Kind::ALL {
            for source in Source::ALL {
                let n = self.events_received[kind.index()][source_slot(source)].load(Ordering::Relaxed);
                if n > 0 {
                    out.push(MetricSample {
                        name: "workloadmeta.events_received",
                        labels: vec![("kind", kind.as_str().to_owned()), ("source", source.as_str().to_owned())],
                        value: MetricValue::Counter(n),
                    });
                }
            }
        }
        let sent = self.notifications_sent.locked();
        for ((subscriber, status), n) in sent.counts.iter() {
            out.push(MetricSample {
                name: "workloadmeta.notifications_sent",
                labels: vec![("subscriber_name", subscriber.to_string()), ("status", (*status).to_owned())],
                value: MetricValue::Counter(*n),
            });
        }
        out.push(MetricSample {
            name: "workloadmeta.subscribers",
            labels: Vec::new(),
            value: MetricValue::Gauge(self.subscribers.load(Ordering::Relaxed) as f64),
        });
    }
}
