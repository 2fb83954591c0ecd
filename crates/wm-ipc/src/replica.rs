//! The remote tagger: a local copy (the *replica*) of another agent's tags, which that agent's
//! `TaggerStreamEntities` stream keeps current.
//!
//! [`RemoteTagger::follow_until`] opens the stream and, when it fails or ends, opens a new one
//! after a delay that starts at 1 second and doubles up to 30 seconds; when a stream that
//! delivered its first response later ends, or breaks with an error status, the delay starts
//! again from 1 second. The first response of each stream clears the replica before it is
//! applied, so that entities removed while no stream was up do not linger; the responses that
//! follow add, change and delete entities. Lookups ([`RemoteTagger::tag`]) read the replica and
//! never call the upstream. The light agent (`flavor-light`) serves the replica on its HTTP API,
//! and the Python `tagger` module answers from it.
//!
//! While no stream is up, the replica keeps its last tags, which may be stale: callers check
//! [`RemoteTagger::is_connected`] and can show [`RemoteTagger::last_error`]. After a failed
//! stream, the tagger reads the upstream's token and certificate files again
//! ([`RemoteAgent::reload`]) and, when either changed (the upstream made new ones), reconnects
//! at once instead of waiting.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use wm_core::intern::Interner;
use wm_core::sync::{MutexExt, RwLockExt};
use wm_core::{CancellationToken, IStr, TagCardinality};

use crate::RemoteAgent;
use crate::proto::model::v1 as model;

/// How long a stream may stay silent before the tagger drops it and connects again.
///
/// The server sends an empty response as a keep-alive after 9 minutes without traffic, so a
/// healthy stream is never silent this long.
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

/// One entity's tags in the replica: one list per cardinality level.
#[derive(Clone, Debug)]
struct ReplicaTags {
    low: TagList,
    orchestrator: TagList,
    high: TagList,
}

impl ReplicaTags {
    /// Returns the three lists from the lowest cardinality to the highest, the order in which a
    /// lookup takes them.
    fn levels(&self) -> [&TagList; 3] {
        [&self.low, &self.orchestrator, &self.high]
    }
}

/// The replica: each entity's tags, by entity id in the `prefix://uid` form
/// (`container_id://abc`).
#[derive(Debug, Default)]
struct Replica {
    entities: HashMap<Box<str>, ReplicaTags>,
}

impl Replica {
    /// Stores the entity's tags, replacing any it had; `None` when the entity has no id.
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

    /// Removes the entity; `None` when it has no id or is not in the replica.
    fn remove(&mut self, entity: &model::Entity) -> Option<()> {
        let id = entity.id.as_ref()?;
        self.entities.remove(&*format!("{}://{}", id.prefix, id.uid))?;
        Some(())
    }

    /// Removes every entity.
    fn clear(&mut self) {
        self.entities.clear();
    }
}

/// A replica of another agent's tags, with the state of the stream that keeps it current.
///
/// Share it in an `Arc`: one task runs [`RemoteTagger::follow_until`] while others look up tags.
#[derive(Debug, Default)]
pub struct RemoteTagger {
    replica: RwLock<Replica>,
    /// How many streams the upstream accepted so far; see [`RemoteTagger::streams`].
    streams: std::sync::atomic::AtomicU64,
    /// Counts the responses applied to the replica; see [`RemoteTagger::generation`].
    generation: std::sync::atomic::AtomicU64,
    /// Whether a stream is up: it delivered its first response and has not ended.
    connected: std::sync::atomic::AtomicBool,
    /// Why the last stream ended or could not start; `None` until one has.
    last_error: std::sync::Mutex<Option<String>>,
}

impl RemoteTagger {
    /// Creates an empty replica; [`RemoteTagger::follow_until`] fills it.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Returns the tags of `entity` at `cardinality` and the levels below it.
    ///
    /// `entity` is an id in the `prefix://uid` form (`container_id://abc`). The tags come low
    /// first, then orchestrator, then high. Returns an empty list for an entity the replica does
    /// not have and for `TagCardinality::None`. Answers from the replica even while no stream is
    /// up; check [`RemoteTagger::is_connected`] first when stale tags are worse than none. Each
    /// call copies the tags into new strings.
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

    /// Tells whether the replica has `entity` (an id in the `prefix://uid` form), with or
    /// without tags.
    ///
    /// An empty answer from [`RemoteTagger::tag`] means either; a client that fetches on a miss
    /// asks this to fetch only the entities the upstream has not streamed yet.
    pub fn contains(&self, entity: &str) -> bool {
        self.replica.reading().entities.contains_key(entity)
    }

    /// Returns the ids of the entities in the replica, sorted.
    pub fn entities(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.replica.reading().entities.keys().map(|k| k.to_string()).collect();
        ids.sort();
        ids
    }

    /// Returns every entity of the replica with its tags of all levels, sorted and deduplicated.
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

    /// Returns why the last stream ended or could not start, or `None` while a stream is up (or
    /// before any stream has failed).
    pub fn last_error(&self) -> Option<String> {
        if self.is_connected() {
            return None;
        }
        self.last_error.locked().clone()
    }

    /// Returns how many streams the upstream has accepted so far.
    ///
    /// A stream counts once the upstream accepts the request, before its first response; each
    /// reconnection that gets that far adds one.
    pub fn streams(&self) -> u64 {
        self.streams.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Returns a number that goes up each time a response is applied to the replica.
    ///
    /// Tags looked up after reading the number include every change it counts, so a cache of
    /// answers, stored with the number read before making them, stays valid for as long as this
    /// returns the same number. It counts applied responses, not actual changes: a response that
    /// changed nothing still moves it.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Applies one response of a stream to the replica; with `replace`, first removes every
    /// entity, as for a stream's first response.
    ///
    /// A `DELETED` event removes its entity; an event of any other known type stores the
    /// entity's tags, replacing those it had. Events without an entity are skipped, and events of
    /// an unknown type are skipped with a debug log. Public only so that benchmarks and tests can
    /// fill a replica without a stream.
    #[doc(hidden)]
    pub fn apply(&self, response: &model::StreamTagsResponse, replace: bool) {
        let mut replica = self.replica.writing();
        // The number goes up under the write lock, before the change. A reader that sees the new
        // number and then looks up tags waits for this lock, so it gets the changed replica: an
        // answer cached under a number is never older than that number.
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
    /// list is stored once, however many entities have it).
    pub fn lists_interned() -> usize {
        LISTS.len()
    }

    /// Tells whether a stream is up: it delivered its first response and has not ended.
    ///
    /// While it is `false`, the replica's tags may be stale.
    pub fn is_connected(&self) -> bool {
        self.connected.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records that no stream is up, and why.
    fn disconnected(&self, why: String) {
        self.connected.store(false, std::sync::atomic::Ordering::Release);
        *self.last_error.locked() = Some(why);
    }

    /// Keeps the replica in step with `agent`'s tags until `cancel` is cancelled.
    ///
    /// Asks for the tags at high cardinality, so that every level is in the replica. Opens a new
    /// stream whenever one fails or ends, as the module docs describe, and logs why each one
    /// failed. Takes `agent` by value because it reads the agent's token and certificate files
    /// again after a failure. Returns only once `cancel` is cancelled.
    pub async fn follow_until(self: Arc<Self>, mut agent: RemoteAgent, cancel: CancellationToken) {
        let mut delay = Duration::from_secs(1);
        loop {
            // `biased` checks the cancellation first, so that a cancelled tagger returns even when
            // the stream has something ready.
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
                    // A refused call or a failed TLS handshake can mean that the upstream made a
                    // new token or certificate (it was reinstalled, or they were rotated). Any
                    // failure reads both files again: they are small, and a change is worth an
                    // immediate retry.
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

    /// Opens one stream and applies its responses until it ends.
    ///
    /// Returns `Ok` when the stream ends, or breaks with an error status, after its first
    /// response: the replica was current until then. Returns an error when connecting or the
    /// request fails, when the stream ends or breaks before its first response, and when no
    /// response comes for [`STREAM_RECV_TIMEOUT`].
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
                    // A keep-alive is an empty response: skip it. The first response is applied
                    // even when empty, because an agent with no entities sends an empty snapshot,
                    // and it must still clear what the previous stream left in the replica.
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
        // These tags appear in no other test: the interner is shared by the whole process, and
        // other tests run at the same time.
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
        // The two containers share one low list and have a high list each; their empty
        // orchestrator lists are not interned at all.
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
