//! The cache-miss path: a lookup of a container the tagger does not know yet may ask the
//! runtime about it (e.g. docker inspect). Lookups of the same id made while that fetch runs wait
//! for it instead of starting their own. An id the runtime did not know is not asked about again
//! for [`NEGATIVE_TTL`]; this memory of unknown ids is the *negative cache*.
//!
//! The id comes from a client, so this path is bounded before any runtime sees it:
//! - an id no runtime's form accepts ([`ContainerFetcher::accepts`]: 64 hex digits for docker
//!   and podman, containerd's identifier rule) is refused without a request, so a client cannot
//!   steer the URL of a root-owned API (`x/../../system/df`, `<id>/json?size=true`);
//! - at most [`MAX_CONCURRENT_FETCHES`] fetches run at once, and new ones start at
//!   [`FETCHES_PER_SECOND`] a second at most (with a burst of as many) unless [`FetchLimits`]
//!   says otherwise; past either limit a lookup answers at once with what is known (nothing), and
//!   the container is tagged when its collector reports it;
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

/// How long a lookup of an id the runtime did not know answers empty without asking again.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// The most bytes the negative cache may hold, counting each id's text and its entry's size.
pub const MAX_NEGATIVE_BYTES: usize = 1 << 20;
/// How many fetches may run at once, by default.
pub const MAX_CONCURRENT_FETCHES: usize = 8;
/// How many fetches may start per second, and in one burst, by default.
pub const FETCHES_PER_SECOND: u32 = 100;

/// Limits how many cache-miss fetches may run at once and start each second.
///
/// A limit of 0 is taken as 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchLimits {
    /// The most fetches running at once.
    pub concurrency: usize,
    /// The most fetches started per second, and in one burst.
    pub per_second: u32,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self { concurrency: MAX_CONCURRENT_FETCHES, per_second: FETCHES_PER_SECOND }
    }
}

/// The bytes one negative-cache entry costs besides its id's text: the key's `String`, the
/// `Instant`, and an estimated 8 for the hash table's slot.
const NEGATIVE_ENTRY_BYTES: usize = std::mem::size_of::<(String, Instant)>() + 8;

/// A fetch under way, shared by every lookup of its id; its value is `true` when the id is
/// tagged once it ends.
type Flight = Arc<OnceCell<bool>>;

/// Why a lookup's fetch was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// No runtime accepts the id's form.
    InvalidId,
    /// [`FetchLimits::concurrency`] fetches were already running.
    Concurrency,
    /// Fetches were starting faster than [`FetchLimits::per_second`] allows.
    Rate,
}

impl Refused {
    /// Every reason, in the order the tagger counts and reports them.
    pub const ALL: [Refused; 3] = [Refused::InvalidId, Refused::Concurrency, Refused::Rate];

    /// Returns the reason's name, as the `reason` label of `tagger_fetches_refused` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::InvalidId => "invalid_id",
            Refused::Concurrency => "concurrency",
            Refused::Rate => "rate",
        }
    }
}

/// The negative cache: each id the runtime did not know, with when it was found unknown, and
/// the bytes they all take.
#[derive(Debug, Default)]
struct Unknown {
    at: HashMap<String, Instant>,
    bytes: usize,
}

/// A token bucket: it refills at `per_second` tokens a second, up to `per_second`, and each
/// fetch takes one token.
///
/// It reads tokio's clock, so that a test with paused time can move it.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: tokio::time::Instant,
}

/// Removes a flight from the in-flight map when the last call that started or joined it ends.
///
/// A call that ends while others still wait on the flight (a client that gave up) leaves it in
/// the map: removing it would let the next lookup of the id start a second fetch beside the one
/// under way. Every call holds one reference to the flight and the map holds one; references are
/// only taken from the map under its lock, so a count of two seen under the lock means this call
/// is the last. The entry is removed only if it is still that flight: a later call may have
/// started a new flight for the same id.
struct ClearFlight<'a> {
    in_flight: &'a Mutex<HashMap<String, Flight>>,
    id: &'a str,
    flight: &'a Flight,
}

impl Drop for ClearFlight<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.locked();
        if Arc::strong_count(self.flight) == 2 && in_flight.get(self.id).is_some_and(|f| Arc::ptr_eq(f, self.flight)) {
            in_flight.remove(self.id);
        }
    }
}

/// Runs cache-miss fetches: one at a time per id, each cut off after a timeout, within the
/// limits of the module docs.
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

    /// Asks the runtime about container `id` and passes the container it returns to `store`, or
    /// waits for the fetch of `id` already under way. Returns whether the id is tagged now.
    ///
    /// Returns `false` at once for an id found unknown less than [`NEGATIVE_TTL`] ago, and
    /// `false` for a fetch refused by the limits of the module docs. `known` tells whether the
    /// id is tagged already; a new flight calls it before fetching, because the previous flight
    /// for the id may have stored it just before ending.
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
        // The guard removes the flight however this call ends, including when the caller gives
        // up (a client's deadline drops the request): otherwise the entry would stay for good.
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

    /// Returns how many fetches were refused so far, by reason, in the order of [`Refused::ALL`].
    pub(crate) fn refused(&self) -> [(Refused, u64); 3] {
        Refused::ALL.map(|r| (r, self.refused[r as usize].load(Ordering::Relaxed)))
    }

    /// Counts the flights in the in-flight map now; tests check it is 0 once every call ended.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.locked().len()
    }

    /// Returns the bytes the negative cache holds now.
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
