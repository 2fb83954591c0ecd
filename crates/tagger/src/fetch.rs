//! The cache-miss path: a lookup of a container the tagger does not know yet may ask the
//! runtime once (e.g. docker inspect), shared by every lookup of that id while it runs. An id
//! the runtime did not know is not asked about again for [`NEGATIVE_TTL`].
//!
//! The id comes from a client, so this path is bounded before any runtime sees it:
//! - an id no runtime's form accepts ([`ContainerFetcher::accepts`]: 64 hex digits for docker
//!   and podman, containerd's identifier rule) is refused without a request, so a client cannot
//!   steer the URL of a root-owned API (`x/../../system/df`, `<id>/json?size=true`);
//! - at most [`MAX_CONCURRENT_FETCHES`] fetches run at once, and new ones start at
//!   [`FETCHES_PER_SECOND`] a second at most (a burst of as many) unless [`FetchLimits`] says
//!   otherwise; past either a lookup answers what is known (nothing) at once, and the container
//!   is tagged when its collector reports it;
//! - the negative cache holds at most [`MAX_NEGATIVE_BYTES`] of ids.
//!
//! Each refusal is counted by reason ([`Refused`]); the agent serves the counts on `/metrics` as
//! `tagger_fetches_refused{reason}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OnceCell, Semaphore};
use wm_core::Container;
pub use wm_core::ContainerFetcher;
use wm_core::sync::MutexExt;

/// How long an id the runtime did not know answers empty without a fetch.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// The bytes the negative cache may hold: ids plus an entry's own size each.
pub const MAX_NEGATIVE_BYTES: usize = 1 << 20;
/// Fetches that may run at once, by default.
pub const MAX_CONCURRENT_FETCHES: usize = 8;
/// New fetches a second at most, and the burst allowed at once, by default.
pub const FETCHES_PER_SECOND: u32 = 100;

/// How many fetches may run at once and start each second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchLimits {
    /// Fetches running at once at most.
    pub concurrency: usize,
    /// New fetches a second at most (and the burst allowed at once).
    pub per_second: u32,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self { concurrency: MAX_CONCURRENT_FETCHES, per_second: FETCHES_PER_SECOND }
    }
}

/// What one negative-cache entry costs beside its id's bytes: the key's `String`, the
/// `Instant`, and the table's slot.
const NEGATIVE_ENTRY_BYTES: usize = std::mem::size_of::<(String, Instant)>() + 8;

/// A fetch under way; it ends `true` when the id is known (tagged) afterwards.
type Flight = Arc<OnceCell<bool>>;

/// Why a lookup's fetch was not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// No runtime accepts the id's form.
    InvalidId,
    /// As many fetches as [`FetchLimits::concurrency`] were running.
    Concurrency,
    /// Past [`FetchLimits::per_second`].
    Rate,
}

impl Refused {
    /// Every reason, in the order the counts are kept.
    pub const ALL: [Refused; 3] = [Refused::InvalidId, Refused::Concurrency, Refused::Rate];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::InvalidId => "invalid_id",
            Refused::Concurrency => "concurrency",
            Refused::Rate => "rate",
        }
    }
}

/// Ids the runtime did not know, with what they cost.
#[derive(Debug, Default)]
struct Unknown {
    at: HashMap<String, Instant>,
    bytes: usize,
}

/// A token bucket: `per_second` tokens a second, as many at most. On tokio's clock, so a
/// test with paused time can move it.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: tokio::time::Instant,
}

/// Takes a flight out of the in-flight map when the call that joined it ends, if it is still
/// that flight (a later call may have started the next one).
struct ClearFlight<'a> {
    in_flight: &'a Mutex<HashMap<String, Flight>>,
    id: &'a str,
    flight: &'a Flight,
}

impl Drop for ClearFlight<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.locked();
        if in_flight.get(self.id).is_some_and(|f| Arc::ptr_eq(f, self.flight)) {
            in_flight.remove(self.id);
        }
    }
}

/// One fetch per id at a time, bounded by a timeout and the limits of the module docs.
pub(crate) struct SingleFlight {
    fetcher: Arc<dyn ContainerFetcher>,
    timeout: Duration,
    in_flight: Mutex<HashMap<String, Flight>>,
    unknown: Mutex<Unknown>,
    running: Semaphore,
    per_second: f64,
    bucket: Mutex<Bucket>,
    refused: [AtomicU64; 3],
}

impl std::fmt::Debug for SingleFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFlight").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl SingleFlight {
    pub(crate) fn new(fetcher: Arc<dyn ContainerFetcher>, timeout: Duration, limits: FetchLimits) -> Self {
        let per_second = f64::from(limits.per_second.max(1));
        Self {
            fetcher,
            timeout,
            in_flight: Mutex::new(HashMap::new()),
            unknown: Mutex::new(Unknown::default()),
            running: Semaphore::new(limits.concurrency.max(1)),
            per_second,
            bucket: Mutex::new(Bucket { tokens: per_second, at: tokio::time::Instant::now() }),
            refused: Default::default(),
        }
    }

    /// Fetches `id` and hands a container the runtime knows by that id to `store`, or joins the
    /// fetch of `id` already under way.
    ///
    /// Answers `false` at once for an id found unknown less than [`NEGATIVE_TTL`] ago, and for
    /// a fetch refused by the limits of the module docs. `known` says whether the id is tagged
    /// already: a flight asks it before fetching, since the flight before it may have stored the
    /// id just before it ended. Returns whether the id is known now.
    pub(crate) async fn fetch(&self, id: &str, known: impl FnOnce() -> bool, store: impl FnOnce(&Container)) -> bool {
        if !self.fetcher.accepts(id) {
            self.refuse(Refused::InvalidId);
            return false;
        }
        if self.recently_unknown(id) {
            return false;
        }
        let flight: Flight =
            self.in_flight.locked().entry(id.to_owned()).or_insert_with(|| Arc::new(OnceCell::new())).clone();
        // Cleared however this call ends, a caller that gives up (a client's deadline drops the
        // request) included: an entry left behind would be kept for good.
        let _clear = ClearFlight { in_flight: &self.in_flight, id, flight: &flight };
        // Whatever a flight learns is stored before the flight is cleared, so a lookup that
        // starts the next flight finds it in `known` or in the negative cache.
        *flight
            .get_or_init(|| async {
                if known() {
                    return true;
                }
                if self.recently_unknown(id) {
                    return false;
                }
                let Ok(_permit) = self.running.try_acquire() else {
                    self.refuse(Refused::Concurrency);
                    return false;
                };
                if !self.take_token() {
                    self.refuse(Refused::Rate);
                    return false;
                }
                match tokio::time::timeout(self.timeout, self.fetcher.fetch(id)).await {
                    Ok(Some(container)) if *container.id == *id => {
                        store(&container);
                        true
                    }
                    fetched => {
                        if fetched.is_err() {
                            tracing::debug!(container_id = id, timeout = ?self.timeout, "container fetch on tag cache miss timed out");
                        }
                        self.remember_unknown(id);
                        false
                    }
                }
            })
            .await
    }

    /// Fetches refused so far, by reason, in the order of [`Refused::ALL`].
    pub(crate) fn refused(&self) -> [(Refused, u64); 3] {
        Refused::ALL.map(|r| (r, self.refused[r as usize].load(Ordering::Relaxed)))
    }

    /// Flights in the in-flight map now (for tests: none once every call has ended).
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.locked().len()
    }

    /// Bytes the negative cache holds now.
    pub(crate) fn negative_bytes(&self) -> usize {
        self.unknown.locked().bytes
    }

    fn refuse(&self, why: Refused) {
        if self.refused[why as usize].fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::info!(
                reason = why.as_str(),
                "a container fetch on a tag cache miss was refused (counted on /metrics)"
            );
        }
    }

    fn take_token(&self) -> bool {
        let mut bucket = self.bucket.locked();
        let now = tokio::time::Instant::now();
        let rate = self.per_second;
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(rate);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn recently_unknown(&self, id: &str) -> bool {
        let unknown = self.unknown.locked();
        unknown.at.get(id).is_some_and(|at| at.elapsed() < NEGATIVE_TTL)
    }

    fn remember_unknown(&self, id: &str) {
        let cost = id.len() + NEGATIVE_ENTRY_BYTES;
        let mut unknown = self.unknown.locked();
        if unknown.bytes + cost > MAX_NEGATIVE_BYTES {
            unknown.at.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
            if unknown.bytes + cost > MAX_NEGATIVE_BYTES {
                unknown.at.clear();
            }
            unknown.at.shrink_to_fit();
            unknown.bytes = unknown.at.keys().map(|k| k.len() + NEGATIVE_ENTRY_BYTES).sum();
        }
        if unknown.at.insert(id.to_owned(), Instant::now()).is_none() {
            unknown.bytes += cost;
        }
    }
}
