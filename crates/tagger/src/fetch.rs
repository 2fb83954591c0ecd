//! The cache-miss path: a lookup of a container the tagger does not know yet may ask the
//! runtime once (e.g. docker inspect), shared by every lookup of that id while it runs. An id
//! the runtime did not know is not asked about again for [`NEGATIVE_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use wm_core::Container;
pub use wm_core::ContainerFetcher;

/// How long an id the runtime did not know answers empty without a fetch.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// Unknown ids remembered at most (bounded memory whatever clients ask).
const MAX_NEGATIVE: usize = 10_000;

/// A fetch under way; it ends `true` when the id is known (tagged) afterwards.
type Flight = Arc<OnceCell<bool>>;

/// One fetch per id at a time, bounded by a timeout.
pub(crate) struct SingleFlight {
    fetcher: Arc<dyn ContainerFetcher>,
    timeout: Duration,
    in_flight: Mutex<HashMap<String, Flight>>,
    /// Ids the runtime did not know, and when.
    unknown: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for SingleFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFlight").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl SingleFlight {
    pub(crate) fn new(fetcher: Arc<dyn ContainerFetcher>, timeout: Duration) -> Self {
        Self { fetcher, timeout, in_flight: Mutex::new(HashMap::new()), unknown: Mutex::new(HashMap::new()) }
    }

    /// Fetches `id` and hands a container the runtime knows by that id to `store`, or joins the
    /// fetch of `id` already under way; `false` at once for an id found unknown less than
    /// [`NEGATIVE_TTL`] ago. `known` says whether the id is tagged already: a flight asks it
    /// before fetching, since the flight before it may have stored the id just before it ended.
    /// Returns whether the id is known now.
    pub(crate) async fn fetch(&self, id: &str, known: impl FnOnce() -> bool, store: impl FnOnce(&Container)) -> bool {
        if self.recently_unknown(id) {
            return false;
        }
        let flight: Flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        // Whatever a flight learns is stored before the flight is cleared, so a lookup that
        // starts the next flight finds it in `known` or in the negative cache.
        let found = *flight
            .get_or_init(|| async {
                if known() {
                    return true;
                }
                if self.recently_unknown(id) {
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
            .await;
        let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        if in_flight.get(id).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            in_flight.remove(id);
        }
        found
    }

    fn recently_unknown(&self, id: &str) -> bool {
        let unknown = self.unknown.lock().unwrap_or_else(PoisonError::into_inner);
        unknown.get(id).is_some_and(|at| at.elapsed() < NEGATIVE_TTL)
    }

    fn remember_unknown(&self, id: &str) {
        let mut unknown = self.unknown.lock().unwrap_or_else(PoisonError::into_inner);
        if unknown.len() >= MAX_NEGATIVE {
            unknown.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
            if unknown.len() >= MAX_NEGATIVE {
                unknown.clear();
            }
        }
        unknown.insert(id.to_owned(), Instant::now());
    }
}
