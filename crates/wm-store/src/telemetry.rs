//! Store telemetry with the Datadog names, read as samples by whoever exports them.

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
    /// Only goes up.
    Counter(u64),
    /// Goes up and down.
    Gauge(f64),
    /// A distribution summed up: how many observations and their sum (seconds).
    Summary {
        /// Observations.
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

#[derive(Debug, Default)]
pub(crate) struct Telemetry {
    events_received: [[AtomicU64; 4]; Kind::COUNT],
    notifications_sent: Mutex<SentCounts>,
    pub(crate) subscribers: AtomicI64,
}

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

/// Outcomes counted by `workloadmeta.notifications_sent{status}`.
pub(crate) const SENT_SUCCESS: &str = "success";
pub(crate) const SENT_ACK_TIMEOUT: &str = "ack_timeout";
pub(crate) const SENT_LAGGED: &str = "lagged";

/// Events of one batch counted locally, then added to the shared counters once.
#[derive(Debug, Default)]
pub(crate) struct Received([[u64; 4]; Kind::COUNT]);

impl Received {
    pub(crate) fn count(&mut self, kind: Kind, source: Source) {
        self.0[kind.index()][source_slot(source)] += 1;
    }

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
    names: std::collections::BTreeSet<Arc<str>>,
}

impl Telemetry {
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
