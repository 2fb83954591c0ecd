//! Asks an agent for the tags of one entity that its tag stream has not brought yet.
//!
//! A replica (see [`crate::replica`]) lags its upstream by the time an event takes to arrive: a
//! container started a millisecond ago is not in it yet. [`EntityFetcher`] closes that gap with
//! the upstream's `TaggerFetchEntity` call, which answers from the upstream's tagger or, for a
//! container the upstream does not know yet, by asking the container runtime. The upstream keeps
//! its own single flight per container and its own memory of ids the runtime did not know, so a
//! miss for an id that never existed costs one round trip here, not a runtime call there.
//!
//! On this side, lookups of the same entity at the same cardinality that arrive while a fetch is
//! under way share that fetch (a *flight*), and one connection serves every fetch.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wm_core::TagCardinality;
use wm_core::sync::MutexExt;

use crate::client::{Client, IpcError, RemoteAgent};
use crate::proto::model::v1 as model;

/// How long a fetch waits for the upstream's answer, connecting included: 3 s.
///
/// The upstream waits at most 2 s for the container runtime, so this leaves it time to answer
/// with what it found, or with nothing, before the client gives up.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// The most different fetches that may be under way at once: 256.
///
/// A fetch beyond it fails at once with [`IpcError::Busy`] rather than adding to an unbounded
/// table. Each waiting caller is a blocked thread, so a process rarely comes near it.
pub const MAX_IN_FLIGHT: usize = 256;

/// What one fetch gives every caller that shares it. Both sides are shared pointers, because
/// several callers may receive the same answer.
type Answer = Result<Arc<[String]>, Arc<IpcError>>;

/// Runs at most one computation per key at a time; callers that ask for a key while its
/// computation runs wait for it and share its result.
///
/// A flight leaves the table once its result is out, so the next call for that key computes
/// again: this shares work between concurrent callers, it is not a cache.
struct Flights<K, V> {
    table: Mutex<HashMap<K, Arc<tokio::sync::OnceCell<V>>>>,
    limit: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> Flights<K, V> {
    /// Creates an empty table that holds at most `limit` flights.
    fn new(limit: usize) -> Self {
        Self { table: Mutex::new(HashMap::new()), limit }
    }

    /// Returns the result of `compute` for `key`, or of the computation already running for it;
    /// `None` when `limit` flights are under way for other keys.
    async fn run<F: Future<Output = V>>(&self, key: K, compute: impl FnOnce() -> F) -> Option<V> {
        let flight = {
            let mut table = self.table.locked();
            // A flight that already holds a result was left by a caller that was dropped before
            // it could remove it: never join it, or its result would be served forever.
            match table.get(&key).filter(|f| !f.initialized()) {
                Some(flight) => flight.clone(),
                None => {
                    if table.len() >= self.limit {
                        table.retain(|_, f| !f.initialized());
                        if table.len() >= self.limit {
                            return None;
                        }
                    }
                    let flight = Arc::new(tokio::sync::OnceCell::new());
                    table.insert(key.clone(), flight.clone());
                    flight
                }
            }
        };
        // If the caller computing is dropped, the cell lets one of the waiting callers compute
        // instead.
        let value = flight.get_or_init(compute).await.clone();
        let mut table = self.table.locked();
        if table.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            table.remove(&key);
        }
        Some(value)
    }

    /// Counts the flights under way.
    fn len(&self) -> usize {
        self.table.locked().len()
    }
}

/// The connection to the upstream, made on the first fetch and made again after a failure.
struct Connection {
    agent: RemoteAgent,
    client: Option<Client>,
}

/// Fetches single entities' tags from an agent with `TaggerFetchEntity`.
///
/// Create it once per upstream and share it (it is `Sync`); each fetch is bounded by
/// [`FETCH_TIMEOUT`].
pub struct EntityFetcher {
    address: String,
    connection: tokio::sync::Mutex<Connection>,
    flights: Flights<(Box<str>, TagCardinality), Answer>,
    timeout: Duration,
}

// Prints only the address, as `RemoteAgent` does, so that no credential reaches a log.
impl std::fmt::Debug for EntityFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityFetcher").field("address", &self.address).finish_non_exhaustive()
    }
}

impl EntityFetcher {
    /// Creates a fetcher for `agent`. It connects on its first fetch.
    pub fn new(agent: RemoteAgent) -> Self {
        Self::with_timeout(agent, FETCH_TIMEOUT)
    }

    /// Creates a fetcher like [`EntityFetcher::new`], whose fetches give up after `timeout`.
    pub fn with_timeout(agent: RemoteAgent, timeout: Duration) -> Self {
        Self {
            address: agent.address.clone(),
            connection: tokio::sync::Mutex::new(Connection { agent, client: None }),
            flights: Flights::new(MAX_IN_FLIGHT),
            timeout,
        }
    }

    /// Returns the tags of `entity` (`prefix://uid`) at `cardinality` and the levels below it, as
    /// the upstream's tagger has them now.
    ///
    /// The list is empty when the upstream does not know the entity and cannot find it, and for
    /// `TagCardinality::None` (which asks nothing). A fetch of the same entity and cardinality
    /// that is already under way is joined rather than repeated.
    ///
    /// # Errors
    ///
    /// Returns [`IpcError::NotAnEntity`] for an id not of the `prefix://uid` form,
    /// [`IpcError::Busy`] when [`MAX_IN_FLIGHT`] other fetches are under way,
    /// [`IpcError::TimedOut`] when no answer came within the timeout, and the error of
    /// connecting ([`IpcError::Connect`]) or of the call ([`IpcError::Call`]). After an error the
    /// next fetch connects again, reading the token and certificate files again first.
    pub async fn fetch(&self, entity: &str, cardinality: TagCardinality) -> Result<Vec<String>, Arc<IpcError>> {
        let wire = match cardinality {
            TagCardinality::None => return Ok(Vec::new()),
            TagCardinality::Low => model::TagCardinality::Low,
            TagCardinality::Orchestrator => model::TagCardinality::Orchestrator,
            TagCardinality::High => model::TagCardinality::High,
        };
        let Some((prefix, uid)) = entity.split_once("://").filter(|(p, u)| !p.is_empty() && !u.is_empty()) else {
            return Err(Arc::new(IpcError::NotAnEntity(entity.into())));
        };
        let request = model::FetchEntityRequest {
            id: Some(model::EntityId { prefix: prefix.to_owned(), uid: uid.to_owned() }),
            cardinality: wire as i32,
        };
        let answer = self.flights.run((entity.into(), cardinality), || self.call(request)).await;
        match answer {
            Some(answer) => answer.map(|tags| tags.to_vec()),
            None => Err(Arc::new(IpcError::Busy { limit: MAX_IN_FLIGHT })),
        }
    }

    /// Counts the fetches under way now.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// Makes one `TaggerFetchEntity` call, connecting first if needed; drops the connection
    /// after a failure.
    async fn call(&self, request: model::FetchEntityRequest) -> Answer {
        let outcome = tokio::time::timeout(self.timeout, async {
            let mut client = self.client().await?;
            client
                .tagger_fetch_entity(request)
                .await
                .map_err(|source| IpcError::Call { address: self.address.clone(), source: Box::new(source) })
        })
        .await;
        let error = match outcome {
            Ok(Ok(response)) => return Ok(response.into_inner().tags.into()),
            Ok(Err(error)) => error,
            Err(_) => IpcError::TimedOut { address: self.address.clone(), after: self.timeout },
        };
        // The agent may have been restarted with a new token or certificate: connect again
        // next time, with the files read again.
        let mut connection = self.connection.lock().await;
        connection.client = None;
        if let Err(reload) = connection.agent.reload() {
            tracing::debug!(error = %reload, "entity fetch: cannot read the token or certificate again");
        }
        Err(Arc::new(error))
    }

    /// Returns the client, connecting first when there is none.
    async fn client(&self) -> Result<Client, IpcError> {
        let mut connection = self.connection.lock().await;
        if let Some(client) = &connection.client {
            return Ok(client.clone());
        }
        let client = connection.agent.connect().await?;
        connection.client = Some(client.clone());
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Runs `f` on a current-thread runtime with the timer enabled.
    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map(|rt| rt.block_on(f))
            .unwrap_or_else(|e| panic!("a runtime: {e}"))
    }

    #[test]
    fn concurrent_calls_for_one_key_share_one_computation() {
        let flights: Flights<&str, usize> = Flights::new(8);
        let computed = AtomicUsize::new(0);
        let compute = || async {
            let n = computed.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            n + 100
        };
        let answers = block_on(futures_join(&flights, "a", compute, 5));
        assert_eq!(computed.load(Ordering::SeqCst), 1, "one computation for five callers");
        assert_eq!(answers, vec![Some(100); 5]);
        assert_eq!(flights.len(), 0, "the flight leaves the table once its result is out");
        // The next call computes again: the table shares work, it caches nothing.
        assert_eq!(block_on(flights.run("a", compute)), Some(101));
    }

    #[test]
    fn a_full_table_refuses_new_keys_but_not_a_running_one() {
        let flights: Flights<u32, u32> = Flights::new(1);
        let answers = block_on(async {
            let slow = flights.run(1, || async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                1
            });
            let refused = async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                flights.run(2, || async { 2 }).await
            };
            let joined = async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                flights.run(1, || async { 99 }).await
            };
            tokio::join!(slow, refused, joined)
        });
        assert_eq!(answers, (Some(1), None, Some(1)));
        assert_eq!(block_on(flights.run(2, || async { 2 })), Some(2), "room again once the flight landed");
    }

    #[test]
    fn a_flight_left_with_a_result_is_never_joined() {
        let flights: Flights<u32, u32> = Flights::new(4);
        let stale = Arc::new(tokio::sync::OnceCell::new_with(Some(7)));
        flights.table.locked().insert(1, stale);
        assert_eq!(block_on(flights.run(1, || async { 8 })), Some(8));
    }

    #[test]
    fn a_fetch_refuses_what_is_not_an_entity_id_and_asks_nothing_for_none() {
        let agent = RemoteAgent {
            address: "127.0.0.1:1".into(),
            token: "t".into(),
            cert: crate::IpcCert { cert_pem: String::new(), key_pem: String::new() },
            token_file: None,
            cert_file: None,
        };
        let fetcher = EntityFetcher::with_timeout(agent, Duration::from_millis(200));
        let none = block_on(fetcher.fetch("container_id://abc", TagCardinality::None));
        assert_eq!(none.ok(), Some(Vec::new()));
        for bad in ["abc", "://abc", "container_id://"] {
            let error = block_on(fetcher.fetch(bad, TagCardinality::High)).err().map(|e| e.to_string());
            assert!(error.as_deref().is_some_and(|e| e.contains("not an entity id")), "{bad}: {error:?}");
        }
        let unreachable = block_on(fetcher.fetch("container_id://abc", TagCardinality::High));
        assert!(unreachable.is_err(), "nothing listens on port 1");
        assert_eq!(fetcher.in_flight(), 0);
    }

    /// Runs `n` callers of `flights.run(key, compute)` at once and returns their answers.
    async fn futures_join<F: Future<Output = usize>>(
        flights: &Flights<&'static str, usize>,
        key: &'static str,
        compute: impl Fn() -> F,
        n: usize,
    ) -> Vec<Option<usize>> {
        let mut answers = Vec::with_capacity(n);
        let calls: Vec<_> = (0..n).map(|_| flights.run(key, &compute)).collect();
        // Poll them together: each joins the first one's flight.
        let mut pinned: Vec<_> = calls.into_iter().map(Box::pin).collect();
        let mut done = vec![None; n];
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (i, call) in pinned.iter_mut().enumerate() {
                if done[i].is_none() {
                    match call.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => done[i] = Some(v),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
        })
        .await;
        answers.extend(done.into_iter().map(Option::flatten));
        answers
    }
}
