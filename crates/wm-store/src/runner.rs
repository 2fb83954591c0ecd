//! Runs collectors: detection, retries with backoff, the pull timer and its timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::time::{Instant, MissedTickBehavior};
use wm_core::{CollectorContext, CollectorError, CollectorKind, PullCollector, Source, StreamCollector};

use crate::telemetry::{MetricSample, MetricValue};

/// Exponential backoff: `initial`, doubling, capped at `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, next: initial }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Where a collector is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum CollectorState {
    /// Registered; the store has not started it.
    Pending,
    /// Detecting, connecting or running.
    Running,
    /// Failed; waiting before the next try.
    Retrying {
        /// Tries that failed in a row.
        attempt: u32,
        /// The last error.
        error: String,
    },
    /// Its environment is absent: dropped.
    Dropped {
        /// What was missing.
        reason: String,
    },
    /// Failed for good.
    Failed {
        /// Why.
        error: String,
    },
}

/// A collector's health as the store sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectorHealth {
    /// Its name.
    pub name: String,
    /// Its source.
    pub source: Source,
    /// Where it is.
    #[serde(flatten)]
    pub state: CollectorState,
    /// Whether its first full list (or first successful pull) landed.
    pub synced: bool,
}

/// What the store records about one collector.
#[derive(Debug)]
pub(crate) struct CollectorStatus {
    pub(crate) name: Arc<str>,
    pub(crate) source: Source,
    state: Mutex<CollectorState>,
    synced: AtomicBool,
    /// Set by each full list, cleared by the runner: a run that listed resets the backoff.
    listed_since_check: AtomicBool,
    pull_errors: AtomicU64,
    pulls: AtomicU64,
    pull_nanos: AtomicU64,
}

impl CollectorStatus {
    pub(crate) fn new(name: Arc<str>, source: Source) -> Self {
        Self {
            name,
            source,
            state: Mutex::new(CollectorState::Pending),
            synced: AtomicBool::new(false),
            listed_since_check: AtomicBool::new(false),
            pull_errors: AtomicU64::new(0),
            pulls: AtomicU64::new(0),
            pull_nanos: AtomicU64::new(0),
        }
    }

    fn set_state(&self, state: CollectorState) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }

    pub(crate) fn full_list_landed(&self) {
        self.synced.store(true, Ordering::Release);
        self.listed_since_check.store(true, Ordering::Release);
    }

    fn take_listed(&self) -> bool {
        self.listed_since_check.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn health(&self) -> CollectorHealth {
        CollectorHealth {
            name: self.name.to_string(),
            source: self.source,
            state: self.state.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            synced: self.synced.load(Ordering::Acquire),
        }
    }

    pub(crate) fn samples(&self, out: &mut Vec<MetricSample>) {
        let pulls = self.pulls.load(Ordering::Relaxed);
        if pulls == 0 && self.pull_errors.load(Ordering::Relaxed) == 0 {
            return;
        }
        let labels = vec![("collector_id", self.name.to_string())];
        out.push(MetricSample {
            name: "workloadmeta.pull_errors",
            labels: labels.clone(),
            value: MetricValue::Counter(self.pull_errors.load(Ordering::Relaxed)),
        });
        out.push(MetricSample {
            name: "workloadmeta.pull_duration",
            labels,
            value: MetricValue::Summary { count: pulls, sum: self.pull_nanos.load(Ordering::Relaxed) as f64 / 1e9 },
        });
    }
}

/// Timing of retries, shared by every collector of a store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
}

fn describe(error: &CollectorError) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// What to do after a collector returned.
enum Next {
    Retry(String),
    Stop,
}

/// Decides what a returned error means. An absent environment drops the collector only before
/// it ever listed: a daemon that removed its socket while restarting is retried, not dropped.
fn judge(status: &CollectorStatus, error: CollectorError) -> Next {
    let name = &*status.name;
    match error {
        CollectorError::EnvironmentAbsent { reason } if !status.synced.load(Ordering::Acquire) => {
            tracing::info!(collector = name, %reason, "environment not detected, collector dropped");
            status.set_state(CollectorState::Dropped { reason });
            Next::Stop
        }
        error @ CollectorError::Permanent { .. } => {
            let error = describe(&error);
            tracing::error!(collector = name, %error, "collector failed and will not be retried");
            status.set_state(CollectorState::Failed { error });
            Next::Stop
        }
        error => Next::Retry(describe(&error)),
    }
}

pub(crate) async fn run_stream(
    mut collector: Box<dyn StreamCollector>,
    ctx: CollectorContext,
    status: Arc<CollectorStatus>,
    policy: RetryPolicy,
) {
    let mut backoff = Backoff::new(policy.initial, policy.max);
    let mut attempt = 0u32;
    loop {
        status.set_state(CollectorState::Running);
        let result = collector.run(&ctx).await;
        if status.take_listed() {
            backoff.reset();
            attempt = 0;
        }
        let error = match result {
            Ok(()) => "the change stream ended".to_owned(),
            Err(error) => match judge(&status, error) {
                Next::Stop => return,
                Next::Retry(error) => error,
            },
        };
        attempt += 1;
        let delay = backoff.next_delay();
        tracing::warn!(collector = &*status.name, %error, attempt, retry_in = ?delay, "collector stopped, retrying");
        status.set_state(CollectorState::Retrying { attempt, error });
        tokio::time::sleep(delay).await;
    }
}

pub(crate) async fn run_pull(
    mut collector: Box<dyn PullCollector>,
    interval: Duration,
    timeout: Duration,
    ctx: CollectorContext,
    status: Arc<CollectorStatus>,
    policy: RetryPolicy,
) {
    let name = status.name.clone();
    let mut backoff = Backoff::new(policy.initial, policy.max);
    let mut attempt = 0u32;
    loop {
        status.set_state(CollectorState::Running);
        let error = match collector.start(&ctx).await {
            Ok(()) => break,
            Err(error) => match judge(&status, error) {
                Next::Stop => return,
                Next::Retry(error) => error,
            },
        };
        attempt += 1;
        let delay = backoff.next_delay();
        tracing::warn!(collector = &*name, %error, attempt, retry_in = ?delay, "collector failed to start, retrying");
        status.set_state(CollectorState::Retrying { attempt, error });
        tokio::time::sleep(delay).await;
    }
    status.set_state(CollectorState::Running);
    // The first tick is immediate: the first pull happens at once. A pull that overruns the
    // interval delays the next one instead of starting two at once.
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let outcome = tokio::time::timeout(timeout, collector.pull(&ctx)).await;
        let took = started.elapsed();
        status.pulls.fetch_add(1, Ordering::Relaxed);
        status.pull_nanos.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        let error = match outcome {
            Ok(Ok(())) => {
                if failing {
                    tracing::info!(collector = &*name, "pulls succeed again");
                    failing = false;
                }
                status.synced.store(true, Ordering::Release);
                status.set_state(CollectorState::Running);
                continue;
            }
            Ok(Err(error)) => describe(&error),
            Err(_) => format!("pull timed out after {timeout:?}"),
        };
        status.pull_errors.fetch_add(1, Ordering::Relaxed);
        // Say it once when pulls start failing, not every interval.
        if failing {
            tracing::debug!(collector = &*name, %error, "pull failed again");
        } else {
            tracing::warn!(collector = &*name, %error, "pull failed; the store keeps what it had");
            failing = true;
        }
    }
}

pub(crate) fn spawn_kind(
    kind: CollectorKind,
    ctx: CollectorContext,
    status: Arc<CollectorStatus>,
    policy: RetryPolicy,
) -> tokio::task::JoinHandle<()> {
    match kind {
        CollectorKind::Stream(collector) => tokio::spawn(run_stream(collector, ctx, status, policy)),
        CollectorKind::Pull { collector, interval, timeout } => {
            tokio::spawn(run_pull(collector, interval, timeout, ctx, status, policy))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let delays: Vec<u64> = (0..7).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }
}
