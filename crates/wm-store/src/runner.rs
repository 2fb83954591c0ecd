//! Runs collectors: detection, retries with backoff, the pull timer and its timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use wm_core::sync::MutexExt;
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

    /// Returns the delay before the next try, and doubles the one after it, up to `max`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Makes the next delay `initial` again.
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
    /// Failed; waiting before the next try. For a pull collector whose pull failed, the next
    /// try is the next interval, and what it reported before stays stored.
    Retrying {
        /// Tries that failed in a row.
        attempt: u32,
        /// The last error.
        error: String,
    },
    /// Its environment was not detected (nothing at the default socket). The store looks again
    /// every re-detection period; this state does not hold readiness back.
    NotDetected {
        /// What was missing.
        reason: String,
    },
    /// Something its config names is not there yet. The store looks again every re-detection
    /// period, and the agent is not ready until it is there.
    Waiting {
        /// The message `waiting for <what>`.
        reason: String,
    },
    /// Failed. After a permanent error it stays stopped (`restarting: false`); after a panic the
    /// store restarts it once its backoff delay has passed (`restarting: true`). Either way the
    /// agent is not ready.
    Failed {
        /// The error, or the panic's message.
        error: String,
        /// Whether the store restarts it.
        restarting: bool,
    },
}

/// A collector's health as the store sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectorHealth {
    /// Its name.
    pub name: String,
    /// Its source.
    pub source: Source,
    /// Its state.
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
    /// Set by each full list and cleared by the stream runner after each run: a run that
    /// delivered a full list worked, so the retry backoff starts over.
    listed_since_check: AtomicBool,
    pull_errors: AtomicU64,
    pulls: AtomicU64,
    /// Time spent in pulls, in nanoseconds.
    pull_nanos: AtomicU64,
    panics: AtomicU64,
    entity_errors: AtomicU64,
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
            panics: AtomicU64::new(0),
            entity_errors: AtomicU64::new(0),
        }
    }

    /// Counts an entity the collector could not read.
    pub(crate) fn entity_error(&self) {
        self.entity_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Tells whether the collector is `NotDetected` or `Waiting`: between two looks for what it
    /// needs.
    ///
    /// The runners keep that state through each new look instead of setting `Running`, so health
    /// does not flicker to `running` every re-detection period.
    fn is_redetecting(&self) -> bool {
        matches!(*self.state.locked(), CollectorState::NotDetected { .. } | CollectorState::Waiting { .. })
    }

    fn set_state(&self, state: CollectorState) {
        *self.state.locked() = state;
    }

    /// Records that a full list from the collector was applied: the collector is synced, and
    /// one that was looking for its environment is now `Running`.
    pub(crate) fn full_list_landed(&self) {
        if self.is_redetecting() {
            self.set_state(CollectorState::Running);
        }
        self.synced.store(true, Ordering::Release);
        self.listed_since_check.store(true, Ordering::Release);
    }

    /// Returns whether a full list was applied since the last call, and clears the flag.
    fn take_listed(&self) -> bool {
        self.listed_since_check.swap(false, Ordering::AcqRel)
    }

    /// Returns the collector's health as [`Store::health`](crate::Store::health) reports it.
    pub(crate) fn health(&self) -> CollectorHealth {
        CollectorHealth {
            name: self.name.to_string(),
            source: self.source,
            state: self.state.locked().clone(),
            synced: self.synced.load(Ordering::Acquire),
        }
    }

    /// Appends the collector's samples to `out`: panics and entity errors when there were any,
    /// and pull errors and durations for a collector that has pulled.
    pub(crate) fn samples(&self, out: &mut Vec<MetricSample>) {
        let panics = self.panics.load(Ordering::Relaxed);
        if panics > 0 {
            out.push(MetricSample {
                name: "workloadmeta.collector_panics",
                labels: vec![("collector_id", self.name.to_string())],
                value: MetricValue::Counter(panics),
            });
        }
        let entity_errors = self.entity_errors.load(Ordering::Relaxed);
        if entity_errors > 0 {
            out.push(MetricSample {
                name: "workloadmeta.entity_errors",
                labels: vec![("collector_id", self.name.to_string())],
                value: MetricValue::Counter(entity_errors),
            });
        }
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
    /// How often an absent environment is looked for again.
    pub(crate) redetect: Duration,
}

/// What to do after a collector returned.
enum Next {
    /// Retry after a backoff delay; the error message.
    Retry(String),
    /// Look for the environment again after the re-detection period, or as soon as this file
    /// appears.
    Redetect(Option<std::path::PathBuf>),
    /// Stop for good.
    Stop,
}

/// Decides what the runner does after a collector returned `error`, and sets the collector's
/// state when it is to look again or stop.
///
/// Before the collector's first full list, an absent environment, or something its config names
/// that is not there yet, is looked for again every re-detection period, and logged only when
/// the reason changes. After the first list the same errors are retried with backoff like any
/// other failure: an absent socket then means a daemon that is restarting. A permanent error
/// stops the collector.
fn judge(status: &CollectorStatus, error: CollectorError) -> Next {
    let name = &*status.name;
    let before_first_list = !status.synced.load(Ordering::Acquire);
    let previous = status.health().state;
    match error {
        CollectorError::EnvironmentAbsent { reason, watch } if before_first_list => {
            if !matches!(&previous, CollectorState::NotDetected { reason: r } if *r == reason) {
                tracing::info!(collector = name, %reason, "environment not detected; looking again periodically");
            }
            status.set_state(CollectorState::NotDetected { reason });
            Next::Redetect(watch)
        }
        CollectorError::Waiting { what, watch } if before_first_list => {
            let reason = format!("waiting for {what}");
            if !matches!(&previous, CollectorState::Waiting { reason: r } if *r == reason) {
                tracing::warn!(collector = name, %reason, "not there yet; the agent is not ready until it is");
            }
            status.set_state(CollectorState::Waiting { reason });
            Next::Redetect(watch)
        }
        error @ CollectorError::Permanent { .. } => {
            let error = error.with_causes();
            tracing::error!(collector = name, %error, "collector failed and will not be retried");
            status.set_state(CollectorState::Failed { error, restarting: false });
            Next::Stop
        }
        error => Next::Retry(error.with_causes()),
    }
}

/// How one call into a collector ended.
enum Outcome<T> {
    Returned(T),
    Panicked(String),
    Cancelled,
}

/// Awaits one call into a collector, catching a panic, and drops the call when the store shuts
/// down.
async fn call<T>(ctx: &CollectorContext, fut: impl std::future::Future<Output = T>) -> Outcome<T> {
    tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => Outcome::Cancelled,
        // `AssertUnwindSafe` is justified: a collector is plain data between calls, and each
        // `run` or `start` opens a fresh connection, so the store can call a collector again
        // after it panicked without reusing anything the panic left half-done.
        result = std::panic::AssertUnwindSafe(fut).catch_unwind() => match result {
            Ok(value) => Outcome::Returned(value),
            Err(panic) => Outcome::Panicked(panic_message(panic.as_ref())),
        },
    }
}

/// Returns the message a panic carried, or a placeholder when it carried no string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

impl CollectorStatus {
    /// Records a panic: counts and logs it, and sets the state to `Failed` with
    /// `restarting: true` until the restart. Returns the error message.
    fn panicked(&self, message: &str) -> String {
        self.panics.fetch_add(1, Ordering::Relaxed);
        let error = format!("panicked: {message}");
        tracing::error!(collector = &*self.name, %error, "collector panicked; restarting it after a backoff");
        self.set_state(CollectorState::Failed { error: error.clone(), restarting: true });
        error
    }
}

/// Sleeps for `delay` before the next try; returns `false` if the store shut down first.
async fn back_off(ctx: &CollectorContext, delay: Duration) -> bool {
    tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// Resets the backoff and the attempt count, then waits for the re-detection period, or until
/// `watch` appears when the collector named a file, before the next look for what it needs.
///
/// The reset means that once the environment is there, its first failures are retried after the
/// short initial delay. Returns `false` if the store shut down first.
async fn redetect_later(
    ctx: &CollectorContext,
    policy: RetryPolicy,
    watch: Option<&std::path::Path>,
    backoff: &mut Backoff,
    attempt: &mut u32,
) -> bool {
    backoff.reset();
    *attempt = 0;
    let Some(path) = watch else { return back_off(ctx, policy.redetect).await };
    tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => false,
        () = tokio::time::sleep(policy.redetect) => true,
        () = crate::appear::appears(path) => true,
    }
}

/// Runs a stream collector until the store shuts down or the collector stops for good.
///
/// Whenever `run` returns, fails or panics, the runner waits and calls it again. The wait doubles
/// with each run in a row that applied no full list.
async fn run_stream(
    mut collector: Box<dyn StreamCollector>,
    ctx: CollectorContext,
    status: Arc<CollectorStatus>,
    policy: RetryPolicy,
) {
    let mut backoff = Backoff::new(policy.initial, policy.max);
    let mut attempt = 0u32;
    loop {
        if !status.is_redetecting() {
            status.set_state(CollectorState::Running);
        }
        let outcome = call(&ctx, collector.run(&ctx)).await;
        if status.take_listed() {
            backoff.reset();
            attempt = 0;
        }
        attempt += 1;
        let delay = backoff.next_delay();
        match outcome {
            Outcome::Cancelled => return,
            Outcome::Panicked(message) => {
                status.panicked(&message);
            }
            Outcome::Returned(result) => {
                let error = match result {
                    Ok(()) => "the change stream ended".to_owned(),
                    Err(error) => match judge(&status, error) {
                        Next::Stop => return,
                        Next::Redetect(watch) => {
                            if !redetect_later(&ctx, policy, watch.as_deref(), &mut backoff, &mut attempt).await {
                                return;
                            }
                            continue;
                        }
                        Next::Retry(error) => error,
                    },
                };
                tracing::warn!(collector = &*status.name, %error, attempt, retry_in = ?delay, "collector stopped, retrying");
                status.set_state(CollectorState::Retrying { attempt, error });
            }
        }
        if !back_off(&ctx, delay).await {
            return;
        }
    }
}

/// Runs a pull collector until the store shuts down or the collector stops for good.
///
/// Calls `start` (retried with backoff), then `pull` every `interval`, each pull cut short after
/// `timeout`, and also when woken (no sooner than [`WOKEN_PULL_GAP`] after the last pull began;
/// the next regular pull is then an interval later). A failed pull is tried again at the next
/// interval; a panic restarts from `start` after a backoff delay.
async fn run_pull(
    mut collector: Box<dyn PullCollector>,
    pacing: Pacing,
    ctx: CollectorContext,
    status: Arc<CollectorStatus>,
    policy: RetryPolicy,
) {
    let Pacing { interval, timeout, wake } = pacing;
    let mut last_pull: Option<Instant> = None;
    let name = status.name.clone();
    let mut backoff = Backoff::new(policy.initial, policy.max);
    let mut attempt = 0u32;
    'start: loop {
        // Start (detect and connect), retried with backoff.
        loop {
            if !status.is_redetecting() {
                status.set_state(CollectorState::Running);
            }
            attempt += 1;
            let delay = backoff.next_delay();
            match call(&ctx, collector.start(&ctx)).await {
                Outcome::Cancelled => return,
                Outcome::Returned(Ok(())) => break,
                Outcome::Panicked(message) => {
                    status.panicked(&message);
                }
                Outcome::Returned(Err(error)) => match judge(&status, error) {
                    Next::Stop => return,
                    Next::Redetect(watch) => {
                        if !redetect_later(&ctx, policy, watch.as_deref(), &mut backoff, &mut attempt).await {
                            return;
                        }
                        continue;
                    }
                    Next::Retry(error) => {
                        tracing::warn!(collector = &*name, %error, attempt, retry_in = ?delay, "collector failed to start, retrying");
                        status.set_state(CollectorState::Retrying { attempt, error });
                    }
                },
            }
            if !back_off(&ctx, delay).await {
                return;
            }
        }
        backoff.reset();
        attempt = 0;
        status.set_state(CollectorState::Running);
        // The first tick is immediate: the first pull happens at once. A pull that overruns the
        // interval delays the next one instead of starting two at once.
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failing = false;
        let mut failures = 0u32;
        loop {
            tokio::select! {
                biased;
                () = ctx.cancel.cancelled() => return,
                _ = ticker.tick() => {}
                () = woken(wake.as_deref()) => {
                    if let Some(last) = last_pull {
                        tokio::select! {
                            biased;
                            () = ctx.cancel.cancelled() => return,
                            () = tokio::time::sleep_until(last + WOKEN_PULL_GAP) => {}
                        }
                    }
                    ticker.reset();
                }
            }
            let started = Instant::now();
            last_pull = Some(started);
            let outcome = call(&ctx, tokio::time::timeout(timeout, collector.pull(&ctx))).await;
            let took = started.elapsed();
            status.pulls.fetch_add(1, Ordering::Relaxed);
            status.pull_nanos.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
            let error = match outcome {
                Outcome::Cancelled => return,
                Outcome::Panicked(message) => {
                    // Restarted from `start`, after a backoff, like a stream collector's run.
                    status.pull_errors.fetch_add(1, Ordering::Relaxed);
                    status.panicked(&message);
                    if !back_off(&ctx, backoff.next_delay()).await {
                        return;
                    }
                    continue 'start;
                }
                Outcome::Returned(Ok(Ok(()))) => {
                    if failing {
                        tracing::info!(collector = &*name, "pulls succeed again");
                        failing = false;
                    }
                    failures = 0;
                    status.synced.store(true, Ordering::Release);
                    status.set_state(CollectorState::Running);
                    continue;
                }
                Outcome::Returned(Ok(Err(error))) => error.with_causes(),
                Outcome::Returned(Err(_)) => format!("pull timed out after {timeout:?}"),
            };
            status.pull_errors.fetch_add(1, Ordering::Relaxed);
            // Show the failure in health. The pull is tried again at the next interval; what the
            // collector set before stays stored, and so does readiness once it has synced.
            failures = failures.saturating_add(1);
            status.set_state(CollectorState::Retrying { attempt: failures, error: error.clone() });
            // Warn once when pulls start failing, not at every interval.
            if failing {
                tracing::debug!(collector = &*name, %error, "pull failed again");
            } else {
                tracing::warn!(collector = &*name, %error, "pull failed; the store keeps what it had");
                failing = true;
            }
        }
    }
}

/// Runs one collector until the store shuts down or is dropped (both cancel its token), or until
/// the collector stops for good.
///
/// `wake`, for a pull collector, asks for a pull before the interval is up.
pub(crate) async fn run_collector(
    kind: CollectorKind,
    ctx: CollectorContext,
    status: Arc<CollectorStatus>,
    policy: RetryPolicy,
    wake: Option<Arc<Notify>>,
) {
    match kind {
        CollectorKind::Stream(collector) => run_stream(collector, ctx, status, policy).await,
        CollectorKind::Pull { collector, interval, timeout } => {
            run_pull(collector, Pacing { interval, timeout, wake }, ctx, status, policy).await;
        }
    }
}

/// When a pull collector pulls.
struct Pacing {
    /// Between two pulls.
    interval: Duration,
    /// The longest a pull may take.
    timeout: Duration,
    /// Asks for a pull now; such pulls are at least [`WOKEN_PULL_GAP`] after the last one.
    wake: Option<Arc<Notify>>,
}

/// The least time between the start of a pull and a pull asked for through `wake`: a burst of
/// new containers costs two pulls a second at most, however many there are, and a container's
/// `kube_*` tags wait at most this long plus one pull.
pub(crate) const WOKEN_PULL_GAP: Duration = Duration::from_millis(500);

/// Waits for a wake, forever without one.
async fn woken(wake: Option<&Notify>) {
    match wake {
        Some(wake) => wake.notified().await,
        None => std::future::pending().await,
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
