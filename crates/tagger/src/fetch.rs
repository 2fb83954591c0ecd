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

type Flight = Arc<OnceCell<Option<Container>>>;

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

    /// Fetches `id`, or joins the fetch of `id` already under way; `None` at once for an id
    /// found unknown less than [`NEGATIVE_TTL`] ago.
    pub(crate) async fn fetch(&self, id: &str) -> Option<Container> {
        if self
            .unknown
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .is_some_and(|at| at.elapsed() < NEGATIVE_TTL)
        {
            return None;
        }
        let flight: Flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.to_owned())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let result = flight
            .get_or_init(|| async {
                let fetched = tokio::time::timeout(self.timeout, self.fetcher.fetch(id)).await;
                if fetched.is_err() {
                    tracing::debug!(container_id = id, timeout = ?self.timeout, "container fetch on tag cache miss timed out");
                }
                fetched.ok().flatten()
            })
            .await
            .clone();
        // The first caller to finish clears the flight; later lookups find the tags stored.
        let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        if in_flight.get(id).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            in_flight.remove(id);
            if result.is_none() {
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
        result
    }
}
