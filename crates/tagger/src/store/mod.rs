//! The tag store: every source's tags per entity, merged into one immutable record per entity.
//!
//! Each entity has one [`record::Record`] in a lock-free map (papaya): every source's tags as
//! packed parts ([`packed::EntityTags`]), some shared by many entities (a pod's tags under each
//! of its containers', an image's), and which of their tags the merge leaves out, so no tag is
//! copied. Writers (the tagger task) take a mutex among themselves and swap in a new record for
//! each change. Readers take no lock and allocate nothing: a lookup is a prefix split, a hash, a
//! probe and a reference count increment.
//!
//! Where to look:
//! - `packed.rs`: how one part stores its tags, and the limits that come with it;
//! - `record.rs`: the sources of an entity and their merge;
//! - `shared.rs`: the parts many entities share, each interned once;
//! - `view.rs`: [`Tags`], what a lookup returns, and how it reads a record;
//! - `key.rs`: [`TagKey`], how an id is split into a map and a key;
//! - `subscribe.rs`: tag subscribers;
//! - `clock.rs`: the clock that deletions are timed on;
//! - `footprint.rs`: the byte counts the memory benchmark prints (feature `memory-accounting`).

mod clock;
#[cfg(feature = "memory-accounting")]
mod footprint;
mod key;
mod packed;
mod record;
mod shared;
mod subscribe;
mod view;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use wm_core::Id;
use wm_core::sync::MutexExt;

pub use clock::{Clock, ManualClock, SystemClock};
#[cfg(feature = "memory-accounting")]
pub use footprint::Footprint;
pub use key::TagKey;
pub(crate) use packed::EntityTags;
use packed::Level;
pub use record::TagSource;
use record::{DeletedAt, Record, SourceEntry};
pub(crate) use shared::{SharedPart, SharedParts};
use subscribe::Subscribers;
pub use subscribe::{TagChange, TagEvent, TagEventKind};
pub use view::{Tags, TagsIter};

use crate::entity_id::TagPrefix;
use crate::tags::{TagCardinality, TagInfo};

type FastMap<K, V> = papaya::HashMap<K, V, foldhash::fast::RandomState>;

/// The changes of a batch not yet sent to subscribers; `None` outside a batch.
type Pending = Option<Vec<TagChange>>;

/// Tags per entity, merged across sources; reads are lock-free.
pub struct TagStore {
    /// Each entity's one record, in the map of its prefix (indexed by [`TagPrefix::index`]).
    records: [FastMap<Id, Record>; TagPrefix::ALL.len()],
    /// Held by writers: one change at a time, swapped in and sent to subscribers in the order
    /// it was made. Inside [`TagStore::batched`] it holds the changes made so far, sent to
    /// subscribers together at its end.
    writer: Mutex<Pending>,
    clock: Arc<dyn Clock>,
    grace: Duration,
    subscribers: Subscribers,
}

impl std::fmt::Debug for TagStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TagStore").field("entities", &self.len()).field("grace", &self.grace).finish()
    }
}

impl TagStore {
    /// Creates an empty store whose deletions take effect `grace` after they were made.
    pub fn new(clock: Arc<dyn Clock>, grace: Duration) -> Self {
        Self {
            records: std::array::from_fn(|_| FastMap::with_hasher(foldhash::fast::RandomState::default())),
            writer: Mutex::new(None),
            clock,
            grace,
            subscribers: Subscribers::default(),
        }
    }

    /// Returns the map of `prefix`.
    fn map(&self, prefix: TagPrefix) -> &FastMap<Id, Record> {
        &self.records[prefix.index()]
    }

    /// Iterates over the maps, each with its prefix.
    fn maps(&self) -> impl Iterator<Item = (TagPrefix, &FastMap<Id, Record>)> {
        TagPrefix::ALL.into_iter().zip(&self.records)
    }

    /// Follows the tags of entities whose id starts with `prefix`, at `cardinality`.
    ///
    /// The first batch lists every such entity as added. A subscriber that leaves `capacity`
    /// batches unread is dropped (its channel closes) instead of holding the writers back.
    pub fn subscribe(
        &self,
        prefix: &str,
        cardinality: TagCardinality,
        capacity: usize,
    ) -> tokio::sync::mpsc::Receiver<Vec<TagEvent>> {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        // Under the writer lock: no change can fall between the first batch and the stream.
        // The changes a batch has made so far go out first, so that the new subscriber hears
        // of none of them twice.
        let mut writer = self.writer();
        if let Some(pending) = writer.as_mut() {
            self.send(&std::mem::take(pending));
        }
        let mut initial: Vec<TagEvent> = Vec::new();
        for (tag_prefix, map) in self.maps() {
            for (uid, record) in &map.pin() {
                let entity = TagKey { prefix: tag_prefix, uid: uid.clone() }.to_string();
                if entity.starts_with(prefix) {
                    let tags = Self::read(Some(record), cardinality).to_vec();
                    initial.push(TagEvent { kind: TagEventKind::Added, entity, tags });
                }
            }
        }
        initial.sort_by(|a, b| a.entity.cmp(&b.entity));
        let _ = tx.try_send(initial);
        self.subscribers.add(prefix, cardinality, tx);
        drop(writer);
        rx
    }

    /// Runs `f`, whose changes reach subscribers together when it returns (one message each
    /// instead of one per change), in the order they were made; changes other threads make
    /// meanwhile join them.
    ///
    /// A bundle of 10,000 events (a re-list) is one message per subscriber instead of 10,000,
    /// which a subscriber's bounded queue would not hold. Tags are read when the batch is sent:
    /// an entity changed twice in it is sent twice with its final tags. A batch begun on another
    /// thread while one runs joins it; what it changes after the first one ends is sent at once.
    pub fn batched<R>(&self, f: impl FnOnce() -> R) -> R {
        /// Sends the batch's changes when dropped, even if `f` panics, so that notifications
        /// never stop.
        struct Flush<'a>(&'a TagStore);
        impl Drop for Flush<'_> {
            fn drop(&mut self) {
                let mut writer = self.0.writer();
                if let Some(changes) = writer.take() {
                    self.0.send(&changes);
                }
            }
        }
        let outer = {
            let mut writer = self.writer();
            writer.is_none().then(|| *writer = Some(Vec::new())).is_some()
        };
        let _flush = outer.then(|| Flush(self));
        f()
    }

    fn writer(&self) -> MutexGuard<'_, Pending> {
        // Each record is replaced whole: a panic half-way leaves nothing half-written.
        self.writer.locked()
    }

    /// Reads a record at `cardinality` (no record: no tag).
    fn read(record: Option<&Record>, cardinality: TagCardinality) -> Tags {
        match (record, Level::highest_for(cardinality)) {
            (Some(record), Some(last)) => Tags::of(record, Level::Low, last),
            _ => Tags::default(),
        }
    }

    /// Returns the entity's tags at `cardinality` and below; an unknown entity has none.
    ///
    /// Takes no lock and allocates nothing.
    pub fn tag(&self, entity: &str, cardinality: TagCardinality) -> Tags {
        let (prefix, uid) = TagPrefix::split(entity);
        self.tag_key(prefix, uid, cardinality)
    }

    fn tag_key(&self, prefix: TagPrefix, uid: &str, cardinality: TagCardinality) -> Tags {
        Self::read(self.map(prefix).pin().get(uid), cardinality)
    }

    /// Tells whether the entity has tags from any source (lock-free).
    pub fn contains(&self, entity: &str) -> bool {
        let (prefix, uid) = TagPrefix::split(entity);
        self.map(prefix).pin().contains_key(uid)
    }

    /// Returns the entity's unified service tags (`env`, `service`, `version`).
    pub fn standard(&self, entity: &str) -> Tags {
        let (prefix, uid) = TagPrefix::split(entity);
        match self.map(prefix).pin().get(uid) {
            Some(record) => Tags::of(record, Level::Standard, Level::Standard),
            None => Tags::default(),
        }
    }

    /// Replaces what `source` says about `entity`, cancelling a pending deletion of it.
    ///
    /// Returns the change made, if the entity's tags changed: sent to subscribers now, or with
    /// the rest of its batch inside [`TagStore::batched`].
    pub fn set(&self, entity: &str, source: TagSource, info: TagInfo) -> Option<TagChange> {
        self.set_layered(TagKey::parse(entity), source, SharedParts::default(), &info).1
    }

    /// Replaces what `source` says about `key` like [`TagStore::set`], with tags made of
    /// `shared` parts (given many entities alike) followed by `extra`, at each level.
    ///
    /// The entity's tags read as one `TagInfo` of them all would; each shared part is held once
    /// for every entity given it. Returns the key as the store holds it, with the change: a
    /// caller that keeps keys keeps that one, whose id text is shared with the store's.
    pub(crate) fn set_layered(
        &self,
        key: TagKey,
        source: TagSource,
        shared: SharedParts,
        extra: &TagInfo,
    ) -> (TagKey, Option<TagChange>) {
        let id_tag = key.id_tag();
        let (tags, gives_id) = EntityTags::build_without(extra, id_tag.as_deref());
        let shared = shared.without_empty();
        let mut writer = self.writer();
        let map = self.map(key.prefix).pin();
        let current = map.get_key_value(&*key.uid);
        let key = TagKey { prefix: key.prefix, uid: current.map_or(key.uid, |(uid, _)| uid.clone()) };
        let mut entries = match current {
            Some((_, record)) => {
                if record.sources().iter().any(|e| e.source == source && e.says(&shared, &tags, gives_id)) {
                    return (key, None);
                }
                record.sources().to_vec()
            }
            None => Vec::with_capacity(1),
        };
        let id = match (current.and_then(|(_, r)| r.id().cloned()), id_tag) {
            (Some(held), _) => Some(held),
            (None, Some(tag)) if gives_id => {
                Some(EntityTags::build(&TagInfo { high: vec![tag], ..TagInfo::default() }))
            }
            _ => None,
        };
        match entries.iter_mut().find(|e| e.source == source) {
            Some(e) => e.replace(shared, tags, gives_id),
            None => entries.push(SourceEntry { source, shared, tags, deleted_at: None, id: gives_id }),
        }
        let change = self.publish(&key, entries, id);
        // Still under the writer lock: subscribers see changes in the order they were made.
        if let Some(change) = &change {
            match writer.as_mut() {
                Some(pending) => pending.push(change.clone()),
                None => self.send(std::slice::from_ref(change)),
            }
        }
        drop(writer);
        (key, change)
    }

    /// Sends `changes` to subscribers, one message each; called under the writer lock.
    fn send(&self, changes: &[TagChange]) {
        self.subscribers.notify(changes, |key, cardinality| self.tag_key(key.prefix, &key.uid, cardinality));
    }

    /// Marks what `source` says about `entity` as deleted: it is still served for the grace
    /// period.
    pub fn delete(&self, entity: &str, source: TagSource) {
        let (prefix, uid) = TagPrefix::split(entity);
        self.delete_uid(prefix, uid, source);
    }

    /// Marks what `source` says about `key` as deleted, like [`TagStore::delete`].
    pub fn delete_key(&self, key: &TagKey, source: TagSource) {
        self.delete_uid(key.prefix, &key.uid, source);
    }

    fn delete_uid(&self, prefix: TagPrefix, uid: &str, source: TagSource) {
        let now = self.clock.now();
        let _writer = self.writer();
        let map = self.map(prefix).pin();
        let Some((uid, record)) = map.get_key_value(uid) else { return };
        if !record.sources().iter().any(|e| e.source == source && e.deleted_at.is_none()) {
            return;
        }
        // The same tags, served as they were until pruned.
        let marked = record.with_sources(|sources| {
            for entry in sources.iter_mut().filter(|e| e.source == source) {
                entry.deleted_at = Some(DeletedAt::at(now));
            }
        });
        map.insert(uid.clone(), marked);
    }

    /// Drops what was deleted longer ago than the grace period; returns the changes made.
    pub fn prune(&self) -> Vec<TagChange> {
        let now = self.clock.now();
        let expired = |e: &SourceEntry| e.deleted_at.is_some_and(|at| now.saturating_sub(at.time()) >= self.grace);
        let mut changes = Vec::new();
        let mut writer = self.writer();
        for (prefix, map) in self.maps() {
            let due: Vec<(TagKey, Vec<SourceEntry>, Option<EntityTags>)> = map
                .pin()
                .iter()
                .filter(|(_, record)| record.sources().iter().any(expired))
                .map(|(uid, record)| {
                    let key = TagKey { prefix, uid: uid.clone() };
                    (key, record.sources().iter().filter(|e| !expired(e)).cloned().collect(), record.id().cloned())
                })
                .collect();
            for (key, entries, id) in due {
                changes.extend(self.publish(&key, entries, id));
            }
        }
        match writer.as_mut() {
            Some(pending) => pending.extend(changes.iter().cloned()),
            None => self.send(&changes),
        }
        drop(writer);
        changes
    }

    /// Swaps in the merge of an entity's sources; with none left, the entity goes.
    fn publish(&self, key: &TagKey, entries: Vec<SourceEntry>, id: Option<EntityTags>) -> Option<TagChange> {
        let map = self.map(key.prefix).pin();
        if entries.is_empty() {
            return map.remove(&*key.uid).map(|_| TagChange::Deleted(key.clone()));
        }
        let previous = map.insert(key.uid.clone(), Record::build(entries, id));
        Some(if previous.is_some() { TagChange::Modified(key.clone()) } else { TagChange::Added(key.clone()) })
    }

    /// Returns the merged tags of `entity` by level (for dumps and tests).
    pub fn tag_info(&self, entity: &str) -> Option<TagInfo> {
        let _writer = self.writer();
        let (prefix, uid) = TagPrefix::split(entity);
        self.map(prefix).pin().get(uid).map(Record::to_info)
    }

    /// Lists every entity with each source's tags, sorted: what `tagger-list` prints.
    pub fn list(&self) -> Vec<(String, Vec<(TagSource, TagInfo)>)> {
        let _writer = self.writer();
        let mut out = Vec::new();
        for (prefix, map) in self.maps() {
            for (uid, record) in &map.pin() {
                let mut per_source: Vec<_> =
                    record.sources().iter().map(|e| (e.source, e.to_info(record.id()))).collect();
                per_source.sort_by_key(|(s, _)| *s);
                out.push((TagKey { prefix, uid: uid.clone() }.to_string(), per_source));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Lists every entity and source, not yet deleted, that `live` does not keep: read under
    /// the writer's lock, without copying any tag.
    pub fn stale(&self, live: impl Fn(&TagKey, TagSource) -> bool) -> Vec<(TagKey, TagSource)> {
        let _writer = self.writer();
        let mut out = Vec::new();
        for (prefix, map) in self.maps() {
            for (uid, record) in &map.pin() {
                let key = TagKey { prefix, uid: uid.clone() };
                for entry in record.sources().iter().filter(|e| e.deleted_at.is_none() && !live(&key, e.source)) {
                    out.push((key.clone(), entry.source));
                }
            }
        }
        out
    }

    /// Counts the entities that have tags.
    pub fn len(&self) -> usize {
        self.records.iter().map(FastMap::len).sum()
    }

    /// Tells whether no entity has tags.
    pub fn is_empty(&self) -> bool {
        self.records.iter().all(FastMap::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One source's tags: `low` and `high` ones.
    pub(super) fn info(low: &[&str], high: &[&str]) -> TagInfo {
        TagInfo {
            low: low.iter().map(|s| s.to_string()).collect(),
            high: high.iter().map(|s| s.to_string()).collect(),
            ..TagInfo::default()
        }
    }

    fn store(grace: u64) -> (Arc<ManualClock>, TagStore) {
        let clock = Arc::new(ManualClock::default());
        (clock.clone(), TagStore::new(clock, Duration::from_secs(grace)))
    }

    /// The record of `entity`, as the store holds it.
    fn record(store: &TagStore, entity: &str) -> Option<Record> {
        let (prefix, uid) = TagPrefix::split(entity);
        store.map(prefix).pin().get(uid).cloned()
    }

    #[test]
    fn a_lookup_reads_low_orchestrator_and_high_tags_and_the_standard_ones_apart() {
        let (_, store) = store(300);
        let tags = TagInfo {
            low: vec!["a:1".into()],
            orchestrator: vec!["o:1".into()],
            high: vec!["id:ü".into()],
            standard: vec!["env:prod".into()],
        };
        store.set("container_id://c1", TagSource::Container, tags);
        let at = |c| store.tag("container_id://c1", c).to_vec();
        assert_eq!(at(TagCardinality::High), ["a:1", "o:1", "id:ü"]);
        assert_eq!(at(TagCardinality::Orchestrator), ["a:1", "o:1"]);
        assert_eq!(at(TagCardinality::Low), ["a:1"]);
        assert!(at(TagCardinality::None).is_empty());
        assert_eq!(store.standard("container_id://c1").to_vec(), ["env:prod"]);
    }

    #[test]
    fn the_higher_priority_source_wins_a_shared_key() {
        let (_, store) = store(300);
        store.set(
            "container_id://c1",
            TagSource::Container,
            info(&["env:dev", "image_name:nginx"], &["container_id:c1"]),
        );
        store.set("container_id://c1", TagSource::KubernetesPod, info(&["env:prod", "kube_namespace:a"], &[]));
        let tags = store.tag("container_id://c1", TagCardinality::High).to_vec();
        assert_eq!(tags, ["env:prod", "kube_namespace:a", "image_name:nginx", "container_id:c1"]);
        assert_eq!(store.tag("container_id://c1", TagCardinality::Low).len(), 3);
        assert!(store.tag("container_id://c1", TagCardinality::None).is_empty());
    }

    #[test]
    fn a_shared_part_is_held_once_and_reads_as_if_each_entity_had_its_own_copy() {
        let (_, store) = store(300);
        let pod = info(&["kube_namespace:a", "env:prod"], &["pod_uid:p"]);
        let base = SharedPart::new(&pod);
        let owner = |broad: &Option<SharedPart>| SharedParts { broad: broad.clone(), narrow: None };
        let none = TagInfo::default();
        store.set_layered(TagKey::parse("pod://p"), TagSource::KubernetesPod, owner(&base), &none);
        for c in ["c1", "c2"] {
            let extra = info(&["kube_container_name:x", "env:prod"], &[&format!("container_id:{c}")]);
            let id = TagKey::parse(&format!("container_id://{c}"));
            store.set_layered(id, TagSource::KubernetesPod, owner(&base), &extra);
        }
        store.set("container_id://c1", TagSource::Container, info(&["env:dev", "image_name:nginx"], &[]));
        // As one TagInfo of base then extra would read, each tag once, the pod winning `env`.
        assert_eq!(
            store.tag("container_id://c1", TagCardinality::High).to_vec(),
            [
                "kube_namespace:a",
                "env:prod",
                "kube_container_name:x",
                "image_name:nginx",
                "pod_uid:p",
                "container_id:c1"
            ]
        );
        assert_eq!(store.tag("container_id://c2", TagCardinality::Low).len(), 3);
        let listed = store.list();
        let c2 = &listed.iter().find(|(e, _)| e == "container_id://c2").unwrap().1[0].1;
        assert_eq!(c2.low, ["kube_namespace:a", "env:prod", "kube_container_name:x"]);
        // One copy of the base: the pod holds it as given, the containers point at it.
        let pod_base = |record: &Record| record.sources()[0].shared.broad.clone().expect("the pod's base");
        let held = pod_base(&record(&store, "pod://p").expect("the pod"));
        assert!(EntityTags::ptr_eq(&held, base.as_ref().unwrap()));
        for c in ["container_id://c1", "container_id://c2"] {
            let record = record(&store, c).expect("the container");
            assert_eq!(record.sources()[0].source, TagSource::KubernetesPod, "{c}: the pod's tags come first");
            assert!(EntityTags::ptr_eq(&pod_base(&record), &held), "{c} points at the pod's tags");
        }
        // An equal base given again is the interner's copy: no change.
        let again = SharedPart::new(&pod);
        let (_, change) = store.set_layered(TagKey::parse("pod://p"), TagSource::KubernetesPod, owner(&again), &none);
        assert_eq!(change, None);
        assert!(EntityTags::ptr_eq(&pod_base(&record(&store, "pod://p").expect("the pod")), &held));
    }

    #[test]
    fn a_containers_id_tag_is_held_once_for_every_source_that_gives_it() {
        let (clock, store) = store(10);
        let c1 = "container_id://c1";
        store.set(c1, TagSource::Container, info(&["a:1"], &["container_name:x", "container_id:c1"]));
        store.set(c1, TagSource::KubernetesPod, info(&["b:1"], &["container_id:c1", "display_container_name:x_p"]));
        let held = || record(&store, c1).expect("the container");
        let id = held().id().cloned().expect("one id part");
        assert_eq!(id.level(Level::High).map(|(_, t)| t).collect::<Vec<_>>(), ["container_id:c1"]);
        assert!(
            held().sources().iter().all(|e| e.id && e.tags.level(Level::High).all(|(_, t)| t != "container_id:c1"))
        );
        let high = store.tag(c1, TagCardinality::High).to_vec();
        assert_eq!(high.iter().filter(|t| *t == "container_id:c1").count(), 1, "{high:?}");
        assert_eq!(high.len(), 5, "{high:?}");
        for (_, info) in &store.list()[0].1 {
            assert!(info.high.contains(&"container_id:c1".to_owned()), "each source still gives it: {info:?}");
        }
        // Another container's id is its own tag, not an id part.
        store.set("container_id://c2", TagSource::Container, info(&[], &["container_id:c1"]));
        let other = record(&store, "container_id://c2").expect("c2");
        assert!(other.id().is_none() && !other.sources()[0].id);
        // The pod's tags outlive the container's deletion, the id with them.
        store.delete(c1, TagSource::Container);
        clock.advance(Duration::from_secs(10));
        store.prune();
        assert!(store.tag(c1, TagCardinality::High).to_vec().contains(&"container_id:c1".to_owned()));
        assert!(EntityTags::ptr_eq(held().id().unwrap(), &id), "the same part, still held");
        // No source gives it any more: it goes.
        store.set(c1, TagSource::KubernetesPod, info(&["b:1"], &[]));
        assert!(held().id().is_none());
        assert_eq!(store.tag(c1, TagCardinality::High).to_vec(), ["b:1"]);
    }

    #[test]
    fn keys_split_known_prefixes_off_and_share_the_workload_stores_id() {
        for id in ["container_id://c1", "kubernetes_pod_uid://u", "ecs_task://arn", "internal://global-entity-id", "e"]
        {
            assert_eq!(TagKey::parse(id).to_string(), id);
        }
        let id = wm_core::EntityId::new(wm_core::Kind::Container, "c1");
        let (_, store) = store(300);
        let (held, _) =
            store.set_layered(TagKey::of(&id), TagSource::Container, SharedParts::default(), &info(&["a:1"], &[]));
        assert!(Id::ptr_eq(&held.uid, &id.id), "the store's id, not a copy");
        assert_eq!(store.tag("container_id://c1", TagCardinality::Low).to_vec(), ["a:1"]);
        assert!(store.tag("c1", TagCardinality::Low).is_empty(), "another entity");
        assert_eq!(store.list()[0].0, "container_id://c1");
    }

    #[test]
    fn tag_subscribers_see_added_modified_and_deleted_for_their_prefix() {
        let (clock, store) = store(10);
        store.set("container_id://a", TagSource::Container, info(&["x:1"], &["container_id:a"]));
        let mut rx = store.subscribe("container_id://", TagCardinality::Low, 16);
        let first = rx.try_recv().unwrap();
        assert_eq!(
            first,
            [TagEvent { kind: TagEventKind::Added, entity: "container_id://a".into(), tags: vec!["x:1".into()] }]
        );
        store.set("kubernetes_pod_uid://p", TagSource::KubernetesPod, info(&["y:1"], &[]));
        store.set("container_id://a", TagSource::Container, info(&["x:2"], &["container_id:a"]));
        store.set("container_id://a", TagSource::Container, info(&["x:2"], &["container_id:a"]));
        let modified = rx.try_recv().unwrap();
        assert_eq!(modified[0].kind, TagEventKind::Modified);
        assert_eq!(modified[0].tags, ["x:2"]);
        store.delete("container_id://a", TagSource::Container);
        clock.advance(Duration::from_secs(10));
        store.prune();
        assert_eq!(rx.try_recv().unwrap()[0].kind, TagEventKind::Deleted);
        assert!(rx.try_recv().is_err(), "no event for the other prefix nor for an unchanged set");
    }

    #[test]
    fn a_tag_subscriber_that_does_not_read_is_dropped() {
        let (_, store) = store(10);
        let mut rx = store.subscribe("", TagCardinality::High, 2);
        for i in 0..5 {
            store.set(&format!("e{i}"), TagSource::Container, info(&["a:1"], &[]));
        }
        let mut batches = 0;
        while rx.try_recv().is_ok() {
            batches += 1;
        }
        assert_eq!(batches, 2);
        assert!(rx.is_closed());
    }

    #[test]
    fn deletion_waits_for_the_grace_period_and_a_new_set_cancels_it() {
        let (clock, store) = store(300);
        store.set("e", TagSource::Container, info(&["a:1"], &[]));
        store.delete("e", TagSource::Container);
        clock.advance(Duration::from_secs(299));
        assert!(store.prune().is_empty());
        assert_eq!(store.tag("e", TagCardinality::Low).len(), 1);
        clock.advance(Duration::from_secs(1));
        assert_eq!(store.prune(), [TagChange::Deleted(TagKey::parse("e"))]);
        assert!(store.tag("e", TagCardinality::High).is_empty());

        store.set("f", TagSource::Container, info(&["a:1"], &[]));
        store.delete("f", TagSource::Container);
        clock.advance(Duration::from_secs(60));
        store.set("f", TagSource::Container, info(&["a:1"], &[]));
        clock.advance(Duration::from_secs(600));
        store.prune();
        assert_eq!(store.tag("f", TagCardinality::Low).len(), 1);
    }
}
