//! A store subscriber for collector tests: keeps the containers its events describe and every
//! event it saw, and waits, with a deadline, until a condition on them holds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use wm_core::{Container, EntityArc, EventType, Filter, Kind, SubscriberPriority};
use wm_store::{Store, Subscription};

/// What a subscriber of the store's containers has seen.
#[derive(Debug)]
pub struct Watcher {
    subscription: Subscription,
    /// The containers as the events left them (set: replaced; unset: removed).
    pub containers: BTreeMap<String, EntityArc<Container>>,
    /// Every event, in order: its type and the container.
    pub log: Vec<(EventType, EntityArc<Container>)>,
}

/// Waits until `check` holds, polling every 50 ms; panics naming `what` after `deadline`.
pub async fn eventually(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + deadline;
    while !check() {
        assert!(tokio::time::Instant::now() < until, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the async `check` returns a value, polling every 50 ms, and returns it; panics
/// naming `what` after `deadline`.
///
/// For a check that must await, such as a request to the agent's API.
pub async fn eventually_some<T, F>(what: &str, deadline: Duration, mut check: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < until, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Returns the ids of the containers `store` holds, sorted.
pub fn container_ids(store: &Store) -> std::collections::BTreeSet<String> {
    store.list_containers().iter().map(|c| c.id.to_string()).collect()
}

/// The value of counter `name` in the store's telemetry (`workloadmeta.pull_errors` …), 0
/// before it was first counted.
pub fn counter(store: &Store, name: &str) -> u64 {
    store
        .telemetry()
        .into_iter()
        .filter(|m| m.name == name)
        .map(|m| match m.value {
            wm_store::MetricValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

impl Watcher {
    /// Subscribes to every container of `store`, at normal priority.
    pub fn containers(store: &Store) -> Self {
        let subscription =
            store.subscribe("test-watcher", SubscriberPriority::Normal, Filter::all().with_kind(Kind::Container));
        Self { subscription, containers: BTreeMap::new(), log: Vec::new() }
    }

    /// The container with this id, as the events left it.
    pub fn get(&self, id: &str) -> Option<&Container> {
        self.containers.get(id).map(|c| &**c)
    }

    /// Whether the log holds a `kind` event for `id`.
    pub fn saw(&self, kind: EventType, id: &str) -> bool {
        self.log.iter().any(|(k, c)| *k == kind && &*c.id == id)
    }

    /// The ids it holds, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.containers.keys().cloned().collect()
    }

    /// Receives events until `condition` holds (checked after each bundle, and every 100 ms);
    /// panics naming `what` (and what it holds) when it does not within `timeout`, or when the
    /// subscription ends.
    pub async fn until(&mut self, what: &str, timeout: Duration, condition: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !condition(self) {
            if tokio::time::Instant::now() >= deadline {
                panic!("{what}: not seen within {timeout:?}; the subscriber holds:\n{}", self.describe());
            }
            // Wake up now and then: a condition may also read something besides the events.
            self.receive(what, Duration::from_millis(100)).await;
        }
    }

    /// Receives every event that arrives during `period` (to show that nothing does).
    pub async fn drain_for(&mut self, period: Duration) {
        let deadline = tokio::time::Instant::now() + period;
        while tokio::time::Instant::now() < deadline {
            self.receive("events", deadline - tokio::time::Instant::now()).await;
        }
    }

    /// Applies the next bundle, if one arrives within `wait`.
    async fn receive(&mut self, what: &str, wait: Duration) {
        let bundle = match tokio::time::timeout(wait, self.subscription.recv()).await {
            Ok(Some(Ok(bundle))) => bundle,
            Ok(Some(Err(e))) => panic!("waiting for {what}: the subscription failed: {e}"),
            Ok(None) => panic!("waiting for {what}: the subscription ended"),
            Err(_) => return,
        };
        for event in bundle.events.iter() {
            let Some(container) = event.entity.as_container() else { continue };
            match event.event_type {
                EventType::Set => {
                    self.containers.insert(container.id.to_string(), container.clone());
                }
                EventType::Unset => {
                    self.containers.remove(&*container.id);
                }
            }
            self.log.push((event.event_type, container.clone()));
        }
    }

    /// One line per container: id, name, status, exit code.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for c in self.containers.values() {
            let _ = writeln!(
                out,
                "  {} name={} running={} status={:?} exit={:?}",
                c.id, c.name, c.state.running, c.state.status, c.state.exit_code
            );
        }
        out
    }
}

/// Waits until the store's containers equal, field for field, what `daemon` says (its own list,
/// converted as the collector converts it); panics after `within` naming the missing, the stale
/// and the differing containers. `what` names the daemon in that message.
pub async fn assert_store_equals<F, Fut>(store: &Store, what: &str, within: Duration, mut daemon: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BTreeMap<String, Container>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let theirs = daemon().await;
        let ours: BTreeMap<String, Container> =
            store.list_containers().into_iter().map(|c| (c.id.to_string(), (*c).clone())).collect();
        if theirs == ours {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let missing: Vec<_> = theirs.keys().filter(|id| !ours.contains_key(*id)).collect();
            let stale: Vec<_> = ours.keys().filter(|id| !theirs.contains_key(*id)).collect();
            let differ: Vec<_> = theirs
                .iter()
                .filter_map(|(id, c)| {
                    ours.get(id).filter(|o| *o != c).map(|o| format!("{id}:\n ours {o:?}\n    {what} {c:?}"))
                })
                .collect();
            panic!(
                "the store differs from {what} after {within:?}: missing {missing:?}, stale {stale:?}, differing {differ:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
