//! The remote tagger: a local replica of another agent's tags, fed by its
//! `TaggerStreamEntities` stream. It reconnects with backoff (1 s doubling to 30 s, reset by a
//! stream that delivered), replaces its replica with each new stream's first response (so what
//! vanished while it was away is gone), applies the changes that follow, and answers
//! [`RemoteTagger::tag`] locally. `flavor-light` serves it on its HTTP API; the Python `tagger` module answers from it.
//!
//! It is ready only while a stream is up (its tags may be stale otherwise), and says why not.
//! Refused as `Unauthenticated`, it reads the token file again (the upstream made a new token)
//! and retries at once when the token changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use wm_core::intern::Interner;
use wm_core::sync::{MutexExt, RwLockExt};
use wm_core::{CancellationToken, IStr, TagCardinality};

use crate::RemoteAgent;
use crate::proto::model::v1 as model;

/// A stream is given up (and reconnected) after this long without a response; the server sends
/// keep-alives every 9 minutes.
const STREAM_RECV_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// One level's tags of an entity: interned texts in an interned list.
///
/// Many entities have the same list (a deployment's containers share their low tags, a pod's
/// containers their orchestrator tags), so each distinct list is kept once, in [`LISTS`], for
/// as long as some entity has it. An empty list allocates nothing.
#[derive(Debug, Default)]
struct TagList(Option<Arc<[IStr]>>);

/// The tag lists in use, across every replica in the process.
static LISTS: Interner<Arc<[IStr]>> = Interner::new();

impl TagList {
    /// Returns the interned list of `tags`.
    fn new(tags: &[String]) -> Self {
        if tags.is_empty() {
            return Self(None);
        }
        let list: Arc<[IStr]> = tags.iter().map(|t| IStr::new(t)).collect();
        Self(Some(LISTS.intern(list)))
    }

    /// Iterates over its tags.
    fn iter(&self) -> impl Iterator<Item = &IStr> {
        self.0.iter().flat_map(|list| list.iter())
    }
}

impl Clone for TagList {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl Drop for TagList {
    /// Gives the reference back to the interner, which removes the list when no entity has it
    /// any more.
    fn drop(&mut self) {
        if let Some(list) = self.0.take() {
            LISTS.release(list);
        }
    }
}

/// One entity's tags in the replica.
#[derive(Clone, Debug)]
struct ReplicaTags {
    low: TagList,
    orchestrator: TagList,
    high: TagList,
}

impl ReplicaTags {
    fn levels(&self) -> [&TagList; 3] {
        [&self.low, &self.orchestrator, &self.high]
    }
}

/// The replica: each entity's tags.
#[derive(Debug, Default)]
struct Replica {
    entities: HashMap<Box<str>, ReplicaTags>,
}

impl Replica {
    fn insert(&mut self, entity: &model::Entity) -> Option<()> {
        let id = entity.id.as_ref()?;
        let tags = ReplicaTags {
            low: TagList::new(&entity.low_cardinality_tags),
            orchestrator: TagList::new(&entity.orchestrator_cardinality_tags),
            high: TagList::new(&entity.high_cardinality_tags),
        };
        let key = format!("{}://{}", id.prefix, id.uid).into_boxed_str();
        self.entities.insert(key, tags);
        Some(())
    }

    fn remove(&mut self, entity: &model::Entity) -> Option<()> {
        let id = entity.id.as_ref()?;
        self.entities.remove(&*format!("{}://{}", id.prefix, id.uid))?;
        Some(())
    }

    fn clear(&mut self) {
        self.entities.clear();
    }
}

/// A replica of another agent's tags.
#[derive(Debug, Default)]
pub struct RemoteTagger {
    replica: RwLock<Replica>,
    /// Streams opened so far (each one replaced the replica).
    streams: std::sync::atomic::AtomicU64,
    /// Bumped by every change to the replica (a cache of its answers is good while it holds).
    generation: std::sync::atomic::AtomicU64,
    /// Whether a stream is up (it delivered its snapshot and has not ended).
    connected: std::sync::atomic::AtomicBool,
    /// Why the last stream ended or could not start.
    last_error: std::sync::Mutex<Option<String>>,
}

impl RemoteTagger {
    /// An empty replica; [`RemoteTagger::follow_until`] fills it.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The entity's tags at `cardinality` and below (empty when unknown).
    pub fn tag(&self, entity: &str, cardinality: TagCardinality) -> Vec<String> {
        let replica = self.replica.reading();
        let Some(tags) = replica.entities.get(entity) else { return Vec::new() };
        let levels = match cardinality {
            TagCardinality::None => 0,
            TagCardinality::Low => 1,
            TagCardinality::Orchestrator => 2,
            TagCardinality::High => 3,
        };
        tags.levels()[..levels].iter().flat_map(|l| l.iter()).map(IStr::to_string).collect()
    }

    /// The entities it holds, sorted.
    pub fn entities(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.replica.reading().entities.keys().map(|k| k.to_string()).collect();
        ids.sort();
        ids
    }

    /// Every entity with all its tags, sorted and deduplicated.
    pub fn list(&self) -> BTreeMap<String, Vec<String>> {
        let replica = self.replica.reading();
        replica
            .entities
            .iter()
            .map(|(entity, tags)| {
                let mut all: Vec<String> = tags.levels().iter().flat_map(|l| l.iter()).map(IStr::to_string).collect();
                all.sort();
                all.dedup();
                (entity.to_string(), all)
            })
            .collect()
    }

    /// Why the last stream ended or could not start, while none is up.
    pub fn last_error(&self) -> Option<String> {
        if self.is_connected() {
            return None;
        }
        self.last_error.locked().clone()
    }

    /// How many streams it opened (a reconnect opens one more).
    pub fn streams(&self) -> u64 {
        self.streams.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Changes so far: equal numbers, equal answers.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Applies one response of a stream: the first (`replace`) replaces the whole replica.
    /// Public for benchmarks and tests that fill a replica without a stream.
    #[doc(hidden)]
    pub fn apply(&self, response: &model::StreamTagsResponse, replace: bool) {
        let mut replica = self.replica.writing();
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if replace {
            replica.clear();
        }
        for event in &response.events {
            let Some(entity) = event.entity.as_ref() else { continue };
            match model::EventType::try_from(event.r#type) {
                Ok(model::EventType::Deleted) => {
                    replica.remove(entity);
                }
                Ok(_) => {
                    replica.insert(entity);
                }
                Err(_) => tracing::debug!(
                    entity = ?entity.id,
                    "remote tagger: skipping an event of unknown type"
                ),
            }
        }
    }

    /// Counts the distinct tag lists interned now, across every replica in the process (each
    /// list is kept once, for every entity that has it).
    pub fn lists_interned() -> usize {
        LISTS.len()
    }

    /// Whether a stream is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(std::sync::atomic::Ordering::Acquire)
    }

    fn disconnected(&self, why: String) {
        self.connected.store(false, std::sync::atomic::Ordering::Release);
        *self.last_error.locked() = Some(why);
    }

    /// Follows `agent`'s tags at high cardinality until `cancel` is cancelled.
    pub async fn follow_until(self: Arc<Self>, mut agent: RemoteAgent, cancel: CancellationToken) {
        let mut delay = Duration::from_secs(1);
        loop {
            let outcome = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                outcome = self.follow(&agent) => outcome,
            };
            match outcome {
                Ok(()) => {
                    self.disconnected("the upstream's stream ended".into());
                    delay = Duration::from_secs(1);
                }
                Err(e) => {
                    self.disconnected(e.to_string());
                    // Refused, or a TLS handshake that fails: the upstream may have made a new
                    // token or certificate (reinstalled, rotated). Read both files again.
                    match agent.reload() {
                        Ok(true) => {
                            tracing::info!(
                                address = agent.address,
                                "remote tagger: the stream failed and the token or certificate file changed; retrying with them"
                            );
                            continue;
                        }
                        Ok(false) => {}
                        Err(error) => {
                            tracing::warn!(%error, "remote tagger: cannot read the token or certificate file again")
                        }
                    }
                    tracing::warn!(address = agent.address, error = %e, retry_in = ?delay, "remote tagger: stream failed")
                }
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// One stream: `Ok` once it delivered something and then ended.
    async fn follow(&self, agent: &RemoteAgent) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut client = agent.connect().await?;
        let request = model::StreamTagsRequest {
            cardinality: model::TagCardinality::High as i32,
            streaming_id: format!("wm-{}-{}", std::process::id(), self.streams()),
            ..model::StreamTagsRequest::default()
        };
        let mut stream = client.tagger_stream_entities(request).await?.into_inner();
        self.streams.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut first = true;
        loop {
            let next = tokio::time::timeout(STREAM_RECV_TIMEOUT, stream.message()).await;
            match next {
                Ok(Ok(Some(response))) => {
                    // Keep-alives carry no events (and the snapshot of an empty agent is one
                    // empty response, which must still clear the replica).
                    if response.events.is_empty() && !first {
                        continue;
                    }
                    self.apply(&response, first);
                    if first {
                        self.connected.store(true, std::sync::atomic::Ordering::Release);
                    }
                    first = false;
                }
                Ok(Ok(None)) => return if first { Err("the stream ended before its snapshot".into()) } else { Ok(()) },
                Ok(Err(status)) => return if first { Err(status.into()) } else { Ok(()) },
                Err(_) => return Err("no response for 10 minutes".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: model::EventType, uid: &str, low: &[&str], high: &[&str]) -> model::StreamTagsEvent {
        let strings = |tags: &[&str]| tags.iter().map(|t| t.to_string()).collect();
        model::StreamTagsEvent {
            r#type: kind as i32,
            entity: Some(model::Entity {
                id: Some(model::EntityId { prefix: "container_id".into(), uid: uid.into() }),
                low_cardinality_tags: strings(low),
                high_cardinality_tags: strings(high),
                ..model::Entity::default()
            }),
        }
    }

    fn response(events: Vec<model::StreamTagsEvent>) -> model::StreamTagsResponse {
        model::StreamTagsResponse { events }
    }

    #[test]
    fn tag_lists_are_kept_once_and_go_with_the_last_entity_that_has_them() {
        use model::EventType::{Added, Deleted, Modified};
        // Tags no other test uses: the interner is process-wide.
        let replica = RemoteTagger::new();
        let interned = |tags: &[&str]| LISTS.contains(&*tags.iter().map(|t| IStr::new(t)).collect::<Vec<_>>());
        let low = ["kube_namespace:lists-test", "image_name:lists-test"];
        replica.apply(
            &response(vec![
                event(Added, "c1", &low, &["container_id:c1"]),
                event(Added, "c2", &low, &["container_id:c2"]),
            ]),
            true,
        );
        // One low list for both, a high list each; the empty orchestrator list is no list.
        assert!(interned(&low) && interned(&["container_id:c1"]) && interned(&["container_id:c2"]));
        let first = replica.replica.reading().entities.get("container_id://c1").map(|t| t.low.clone());
        let second = replica.replica.reading().entities.get("container_id://c2").map(|t| t.low.clone());
        assert!(
            first.zip(second).is_some_and(|(a, b)| a
                .0
                .as_ref()
                .zip(b.0.as_ref())
                .is_some_and(|(a, b)| Arc::ptr_eq(a, b)))
        );
        assert_eq!(
            replica.tag("container_id://c2", TagCardinality::High),
            ["kube_namespace:lists-test", "image_name:lists-test", "container_id:c2"]
        );
        assert_eq!(replica.tag("container_id://c2", TagCardinality::Low).len(), 2);
        // c1 changes its low tags: its old list stays for c2.
        let other = ["kube_namespace:lists-test-b"];
        replica.apply(&response(vec![event(Modified, "c1", &other, &["container_id:c1"])]), false);
        assert!(interned(&low) && interned(&other), "c1's old list stays for c2");
        replica.apply(&response(vec![event(Deleted, "c2", &[], &[])]), false);
        assert!(!interned(&low) && !interned(&["container_id:c2"]), "c2's low and high lists went with it");
        assert!(interned(&other) && interned(&["container_id:c1"]));
        replica.apply(&response(vec![event(Deleted, "c1", &[], &[])]), false);
        assert!(!interned(&other) && !interned(&["container_id:c1"]));
        assert!(replica.tag("container_id://c1", TagCardinality::High).is_empty());
    }
}
