//! The tag store: per entity, per source, merged into one immutable, shared value per entity.
//!
//! Writers (the tagger task) keep every source's tags under a mutex, as parts: immutable, packed
//! `Arc<EntityTags>`, some shared by many entities (a pod's tags under each of its containers',
//! an image's). After each change they publish the entity's merged tags into a lock-free map
//! (papaya): its one part as it is, or a merge that points at its parts and marks the tags it
//! leaves out, so no tag is copied. Readers never take a lock and never allocate: a lookup is a
//! prefix split, a hash, a probe and an `Arc` clone.
//!
//! The maps are split by id prefix and keyed by the rest of the id ([`TagKey`]): a container's or
//! pod's key is the workload store's own id, shared by both maps and by the tagger's index of a
//! pod's containers.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::tags::{TagCardinality, TagInfo, tag_key};

/// Where the tagger's time comes from: real time, or a clock tests move.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Time since an arbitrary, fixed start.
    fn now(&self) -> Duration;
}

/// Monotonic real time.
#[derive(Debug)]
pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// Moves the clock on.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(u64::try_from(by.as_nanos()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// Who gave a set of tags. On a shared tag key, the higher priority wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum TagSource {
    /// Tags from a container entity.
    #[serde(rename = "workloadmeta-container")]
    Container,
    /// Tags from a Kubernetes pod (on the pod and on each of its containers).
    #[serde(rename = "workloadmeta-kubernetes_pod")]
    KubernetesPod,
    /// Tags from an ECS task (on the task and on each of its containers).
    #[serde(rename = "workloadmeta-ecs_task")]
    EcsTask,
    /// Tags from a Kubernetes object's metadata (this node's: on the node and the global entity).
    #[serde(rename = "workloadmeta-kubernetes_metadata")]
    KubernetesMetadata,
}

impl TagSource {
    /// The source's name, as `tagger-list` prints it.
    pub const fn as_str(self) -> &'static str {
        match self {
            TagSource::Container => "workloadmeta-container",
            TagSource::KubernetesPod => "workloadmeta-kubernetes_pod",
            TagSource::EcsTask => "workloadmeta-ecs_task",
            TagSource::KubernetesMetadata => "workloadmeta-kubernetes_metadata",
        }
    }

    /// Pod and task tags win over a container's own.
    const fn priority(self) -> u8 {
        match self {
            TagSource::Container => 0,
            TagSource::KubernetesPod | TagSource::EcsTask | TagSource::KubernetesMetadata => 1,
        }
    }
}

/// One part of an entity's tags (a source's own, or a part many entities share), immutable once
/// built. All tags sit in one string, each after its length written as one `char` (one byte for
/// a tag shorter than 128 bytes); the low, orchestrator, high and standard levels are
/// consecutive.
#[derive(PartialEq, Eq, Hash)]
pub struct EntityTags {
    text: Box<str>,
    /// How many tags the levels hold, counted through: low, then with orchestrator, with high,
    /// with standard.
    ends: [u16; 4],
}

/// The longest tag a part keeps: its length must be one `char` below the surrogates.
const MAX_TAG_LEN: u32 = 0xD7FF;

impl EntityTags {
    /// Packs a source's tags. A tag longer than 55,295 bytes (what one length `char` can say),
    /// or past the 65,535th, is left out (and logged).
    pub fn build(info: &TagInfo) -> Self {
        let levels = [&info.low, &info.orchestrator, &info.high, &info.standard];
        let mut text = String::with_capacity(levels.iter().flat_map(|l| l.iter()).map(|t| t.len() + 1).sum());
        let mut ends = [0u16; 4];
        let mut count = 0u16;
        for (level, tags) in levels.into_iter().enumerate() {
            for tag in tags {
                let len = u32::try_from(tag.len()).ok().filter(|n| *n <= MAX_TAG_LEN).and_then(char::from_u32);
                match len {
                    Some(len) if count < u16::MAX => {
                        text.push(len);
                        text.push_str(tag);
                        count += 1;
                    }
                    _ => tracing::warn!(bytes = tag.len(), kept = count, "tag left out: too long, or too many tags"),
                }
            }
            ends[level] = count;
        }
        Self { text: text.into_boxed_str(), ends }
    }

    /// The tag at byte `pos` (where a length starts), and where the next one starts.
    fn read(&self, pos: usize) -> (&str, usize) {
        let rest = self.text.get(pos..).unwrap_or_default();
        let Some(len) = rest.chars().next() else { return ("", self.text.len()) };
        let start = pos + len.len_utf8();
        let end = start + len as usize;
        (self.text.get(start..end).unwrap_or_default(), end)
    }

    /// Where the tag of index `i` starts.
    fn start_of(&self, i: u32) -> usize {
        (0..i).fold(0, |pos, _| self.read(pos).1)
    }

    /// The tags of one level (`LOW` … `STANDARD`) with their indices.
    fn level(&self, level: usize) -> impl Iterator<Item = (u32, &str)> + '_ {
        let (first, last) = self.range(level);
        let mut pos = self.start_of(first);
        (first..last).map(move |i| {
            let (tag, next) = self.read(pos);
            pos = next;
            (i, tag)
        })
    }

    /// The index of a level's first tag, and where it starts.
    fn level_start(&self, level: usize) -> (u32, usize) {
        let first = self.range(level).0;
        (first, self.start_of(first))
    }

    /// The tags of one level (`LOW` … `STANDARD`) as a range of indices.
    fn range(&self, level: usize) -> (u32, u32) {
        let bounds = [0, self.ends[0], self.ends[1], self.ends[2], self.ends[3]].map(u32::from);
        (bounds[level.min(STANDARD + 1)], bounds[(level + 1).min(STANDARD + 1)])
    }

    /// How many tags, every level.
    fn count(&self) -> u32 {
        u32::from(self.ends[STANDARD])
    }

    /// Whether it holds no tag.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Bytes held, for the memory benchmark.
    pub fn heap_bytes(&self) -> usize {
        self.text.len()
    }
}

impl SourceEntry {
    /// Its parts: the shared ones, then its own tags (an empty part left out).
    fn parts(&self) -> impl Iterator<Item = &Arc<EntityTags>> + '_ {
        self.shared.iter().flatten().chain(std::iter::once(&self.tags)).filter(|p| !p.is_empty())
    }

    /// The tags as one source's `TagInfo` (each tag once per level).
    fn to_info(&self) -> TagInfo {
        Published::Merged(Arc::new(Merged::build(std::slice::from_ref(self)))).to_info()
    }

    /// Whether its shared parts are `shared` (the same allocations, or equal tags).
    fn has_shared(&self, shared: &SharedParts) -> bool {
        self.shared.iter().zip(shared).all(|pair| match pair {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            (None, None) => true,
            _ => false,
        })
    }
}

impl fmt::Debug for EntityTags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries((LOW..=STANDARD).flat_map(|l| self.level(l)).map(|(_, tag)| tag)).finish()
    }
}

/// The levels of an [`EntityTags`], in order: each cardinality's own tags, then the unified
/// service tags.
const LOW: usize = 0;
const HIGH: usize = 2;
const STANDARD: usize = 3;

/// The last level a cardinality reads, plus one (`None`: no level).
const fn levels_up_to(cardinality: TagCardinality) -> usize {
    match cardinality {
        TagCardinality::None => LOW,
        TagCardinality::Low => LOW + 1,
        TagCardinality::Orchestrator => LOW + 2,
        TagCardinality::High => HIGH + 1,
    }
}

/// The merged tags of an entity whose tags are in several parts (several sources, or a source's
/// shared parts and its own): no copy of the tags, but the parts they are in, in merge order,
/// and which of their tags the merge leaves out. Read level by level, part by part, it gives
/// what one merged list would.
struct Merged {
    parts: Box<[Arc<EntityTags>]>,
    /// Bit `n` set: the `n`th tag, counting through the parts in order, is left out.
    hidden: Box<[u64]>,
    /// How many tags each level shows (low, orchestrator, high, standard).
    shown: [u32; 4],
}

impl Merged {
    /// The merge of `entries`, given highest priority first: a tag whose key a source of higher
    /// priority gave is left out, and so is a tag the same level already shows. Sources of
    /// equal priority do not override each other.
    fn build(entries: &[SourceEntry]) -> Self {
        let mut parts: Vec<Arc<EntityTags>> = Vec::new();
        let mut groups: Vec<u8> = Vec::new();
        for entry in entries {
            for part in entry.parts() {
                parts.push(part.clone());
                groups.push(entry.source.priority());
            }
        }
        let total: u32 = parts.iter().map(|p| p.count()).sum();
        let mut hidden = vec![0u64; total.div_ceil(64) as usize];
        let mut shown = [0u32; 4];
        let mut taken: HashSet<&str> = HashSet::new();
        let mut seen: [HashSet<&str>; 4] = Default::default();
        let mut start = 0;
        while start < parts.len() {
            let group = groups[start];
            let end = groups[start..].iter().position(|g| *g != group).map_or(parts.len(), |n| start + n);
            let offset: u32 = parts[..start].iter().map(|p| p.count()).sum();
            let mut keys: Vec<&str> = Vec::new();
            for level in LOW..=STANDARD {
                let mut at = offset;
                for part in &parts[start..end] {
                    for (i, tag) in part.level(level) {
                        let n = (at + i) as usize;
                        if tag.is_empty() || taken.contains(tag_key(tag)) || !seen[level].insert(tag) {
                            hidden[n / 64] |= 1 << (n % 64);
                        } else {
                            shown[level] += 1;
                            if level != STANDARD {
                                keys.push(tag_key(tag));
                            }
                        }
                    }
                    at += part.count();
                }
            }
            taken.extend(keys);
            start = end;
        }
        let hidden = if hidden.iter().all(|w| *w == 0) { Box::default() } else { hidden.into_boxed_slice() };
        Self { parts: parts.into_boxed_slice(), hidden, shown }
    }

    /// Bytes held beside the parts it points at.
    fn own_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.parts.len() * std::mem::size_of::<Arc<EntityTags>>()
            + self.hidden.len() * std::mem::size_of::<u64>()
    }
}

/// What readers see of an entity: its one part as it is (one source, no shared part: the common
/// case), or a merge pointing at its parts.
#[derive(Clone)]
enum Published {
    One(Arc<EntityTags>),
    Merged(Arc<Merged>),
}

impl Published {
    fn parts(&self) -> &[Arc<EntityTags>] {
        match self {
            Published::One(tags) => std::slice::from_ref(tags),
            Published::Merged(m) => &m.parts,
        }
    }

    /// The tags by level.
    fn to_info(&self) -> TagInfo {
        let read = |level: usize| Tags::of(self, level, level + 1).to_vec();
        TagInfo { low: read(LOW), orchestrator: read(LOW + 1), high: read(HIGH), standard: read(STANDARD) }
    }

    fn hidden(&self) -> &[u64] {
        match self {
            Published::One(_) => &[],
            Published::Merged(m) => &m.hidden,
        }
    }

    /// How many tags the levels `first..last` show.
    fn shown(&self, first: usize, last: usize) -> u32 {
        match self {
            Published::One(tags) => (first..last).map(|l| tags.range(l)).map(|(a, b)| b - a).sum(),
            Published::Merged(m) => m.shown[first..last].iter().sum(),
        }
    }
}

/// The answer to a lookup: a shared handle on an entity's tags, read as a list of `&str`.
/// Building one allocates nothing.
#[derive(Clone, Default)]
pub struct Tags {
    value: Option<Published>,
    /// The levels read: `first..last`.
    first: u8,
    last: u8,
    len: u32,
}

impl Tags {
    fn of(value: &Published, first: usize, last: usize) -> Self {
        let len = value.shown(first, last);
        Self { value: Some(value.clone()), first: first as u8, last: last as u8, len }
    }

    /// How many tags.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether there is none (unknown entity, or cardinality `none`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The tags.
    pub fn iter(&self) -> TagsIter<'_> {
        let (parts, hidden) = self.value.as_ref().map_or((&[][..], &[][..]), |v| (v.parts(), v.hidden()));
        let level = usize::from(self.first);
        let (next, pos) = parts.first().map_or((0, 0), |p| p.level_start(level));
        TagsIter { parts, hidden, level, last: usize::from(self.last), part: 0, offset: 0, next, pos, left: self.len }
    }

    /// The tags as owned strings.
    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }
}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The tags of a [`Tags`]: level by level, part by part, the hidden ones skipped.
#[derive(Debug, Clone)]
pub struct TagsIter<'a> {
    parts: &'a [Arc<EntityTags>],
    hidden: &'a [u64],
    level: usize,
    last: usize,
    part: usize,
    /// The index, across the parts, of the current part's first tag.
    offset: u32,
    /// The next tag's index in the current part.
    next: u32,
    /// Where it starts in the part's text.
    pos: usize,
    left: u32,
}

impl<'a> Iterator for TagsIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        while self.left > 0 && self.level < self.last {
            let part = self.parts.get(self.part)?;
            let (_, end) = part.range(self.level);
            if self.next < end {
                let n = (self.offset + self.next) as usize;
                let (tag, after) = part.read(self.pos);
                self.next += 1;
                self.pos = after;
                if self.hidden.get(n / 64).is_some_and(|w| w & (1 << (n % 64)) != 0) {
                    continue;
                }
                self.left -= 1;
                return Some(tag);
            }
            self.offset += part.count();
            self.part += 1;
            if self.part == self.parts.len() {
                self.part = 0;
                self.offset = 0;
                self.level += 1;
            }
            (self.next, self.pos) = self.parts.get(self.part).map_or((0, 0), |p| p.level_start(self.level));
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for TagsIter<'_> {}

/// The shared parts of a source's tags (see [`TagStore::set_layered`]).
pub type SharedParts = [Option<Arc<EntityTags>>; 2];

#[derive(Debug)]
struct SourceEntry {
    source: TagSource,
    /// Tags this source gives many entities alike (a pod's, on each of its containers; an
    /// image's), shared by them all; they come before `tags` at each level.
    shared: SharedParts,
    /// Packed like the published tags: one buffer, no per-tag allocation; shared with the
    /// published value when this is the entity's only part.
    tags: Arc<EntityTags>,
    /// When the source deleted it, in whole seconds of the store's clock rounded up (an entry
    /// stays 32 bytes); its tags are served until the grace period has passed.
    deleted_at: Option<NonZeroU32>,
}

/// `now` in whole seconds rounded up (a deletion is never pruned early), plus one: a deletion
/// at the clock's start is one too.
fn deletion_time(now: Duration) -> NonZeroU32 {
    let secs = now.as_secs() + u64::from(now.subsec_nanos() > 0) + 1;
    NonZeroU32::new(u32::try_from(secs).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MAX)
}

/// When a deletion was made, as [`deletion_time`] kept it.
fn deleted_at(kept: NonZeroU32) -> Duration {
    Duration::from_secs(u64::from(kept.get() - 1))
}

/// What happened to an entity's tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagEventKind {
    /// It got its first tags.
    Added,
    /// Its tags changed.
    Modified,
    /// It has no tags any more.
    Deleted,
}

/// One change seen by a tag subscriber: the entity's tags at the subscriber's cardinality.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagEvent {
    /// What happened.
    pub kind: TagEventKind,
    /// The entity (`container_id://…`).
    pub entity: String,
    /// Its tags now (empty when deleted).
    pub tags: Vec<String>,
}

struct TagSubscriber {
    prefix: String,
    cardinality: TagCardinality,
    tx: tokio::sync::mpsc::Sender<Vec<TagEvent>>,
}

/// A change to an entity's merged tags, for tag subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagChange {
    /// First tags for this entity.
    Added(TagKey),
    /// Its tags changed.
    Modified(TagKey),
    /// It has no tags any more.
    Deleted(TagKey),
}

type FastMap<K, V> = papaya::HashMap<K, V, foldhash::fast::RandomState>;

/// The prefixes whose entities the store keys by their uid alone, one map each; any other id is
/// kept whole, in one more map.
const PREFIXES: [&str; 4] = ["container_id://", "kubernetes_pod_uid://", "ecs_task://", "kubernetes_metadata://"];
/// How many maps: one per prefix, and one for the ids kept whole.
const SLOTS: usize = PREFIXES.len() + 1;

/// The map of `entity` and its key there.
fn split(entity: &str) -> (usize, &str) {
    PREFIXES
        .iter()
        .enumerate()
        .find_map(|(slot, prefix)| entity.strip_prefix(prefix).map(|uid| (slot, uid)))
        .unwrap_or((PREFIXES.len(), entity))
}

/// An entity id as the tag store keys it: its prefix's map and the rest of the id, whose text
/// can be shared with the workload store's id (a container's id is held once by both).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TagKey {
    slot: u8,
    uid: Arc<str>,
}

impl TagKey {
    /// The key of an id in text (`container_id://…`).
    pub fn parse(entity: &str) -> Self {
        let (slot, uid) = split(entity);
        Self { slot: slot as u8, uid: Arc::from(uid) }
    }

    /// The key of a workload store entity, sharing its id.
    pub fn of(id: &wm_core::EntityId) -> Self {
        let slot = match id.kind {
            wm_core::Kind::Container => 0,
            wm_core::Kind::KubernetesPod => 1,
            wm_core::Kind::EcsTask => 2,
            wm_core::Kind::KubernetesMetadata => 3,
        };
        Self { slot, uid: id.id.clone() }
    }

    /// The key of the container `id`, sharing it.
    pub fn container(id: Arc<str>) -> Self {
        Self { slot: 0, uid: id }
    }

    fn slot(&self) -> usize {
        usize::from(self.slot)
    }
}

impl fmt::Display for TagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIXES.get(self.slot()).copied().unwrap_or(""))?;
        f.write_str(&self.uid)
    }
}

/// The writer's side of one map: each entity's sources, keyed by the uid the published map
/// shares.
type Sources = HashMap<Arc<str>, Vec<SourceEntry>, foldhash::fast::RandomState>;

/// Tags per entity, merged across sources; reads are lock-free.
pub struct TagStore {
    published: [FastMap<Arc<str>, Published>; SLOTS],
    sources: Mutex<[Sources; SLOTS]>,
    clock: Arc<dyn Clock>,
    grace: Duration,
    subscribers: Mutex<Vec<TagSubscriber>>,
}

impl fmt::Debug for TagStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TagStore").field("entities", &self.len()).field("grace", &self.grace).finish()
    }
}

impl TagStore {
    /// A store whose deletions take effect `grace` after they were made.
    pub fn new(clock: Arc<dyn Clock>, grace: Duration) -> Self {
        Self {
            published: std::array::from_fn(|_| FastMap::with_hasher(foldhash::fast::RandomState::default())),
            sources: Mutex::new(Default::default()),
            clock,
            grace,
            subscribers: Mutex::new(Vec::new()),
        }
    }

    /// Follows tag changes of entities whose id starts with `prefix`, at `cardinality`. The first
    /// batch lists every such entity as added. A subscriber whose `capacity` batches are not
    /// taken is dropped (its channel closes) instead of holding the writers back.
    pub fn subscribe(
        &self,
        prefix: &str,
        cardinality: TagCardinality,
        capacity: usize,
    ) -> tokio::sync::mpsc::Receiver<Vec<TagEvent>> {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        // Under the writer lock: no change can fall between the first batch and the stream.
        let sources = self.writer();
        let mut initial: Vec<TagEvent> = Vec::new();
        for (slot, map) in sources.iter().enumerate() {
            for uid in map.keys() {
                let key = TagKey { slot: slot as u8, uid: uid.clone() };
                let entity = key.to_string();
                if entity.starts_with(prefix) {
                    let tags = self.tag_key(slot, uid, cardinality).to_vec();
                    initial.push(TagEvent { kind: TagEventKind::Added, entity, tags });
                }
            }
        }
        initial.sort_by(|a, b| a.entity.cmp(&b.entity));
        let _ = tx.try_send(initial);
        self.subscribers.lock().unwrap_or_else(PoisonError::into_inner).push(TagSubscriber {
            prefix: prefix.to_owned(),
            cardinality,
            tx,
        });
        drop(sources);
        rx
    }

    fn notify(&self, change: &TagChange) {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(PoisonError::into_inner);
        if subscribers.is_empty() {
            return;
        }
        let (kind, key) = match change {
            TagChange::Added(e) => (TagEventKind::Added, e),
            TagChange::Modified(e) => (TagEventKind::Modified, e),
            TagChange::Deleted(e) => (TagEventKind::Deleted, e),
        };
        let entity = key.to_string();
        subscribers.retain(|sub| {
            if !entity.starts_with(&sub.prefix) {
                return !sub.tx.is_closed();
            }
            let tags = if kind == TagEventKind::Deleted {
                Vec::new()
            } else {
                self.tag_key(key.slot(), &key.uid, sub.cardinality).to_vec()
            };
            match sub.tx.try_send(vec![TagEvent { kind, entity: entity.clone(), tags }]) {
                Ok(()) => true,
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(prefix = sub.prefix, "tag subscriber fell behind and was dropped");
                    false
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    fn writer(&self) -> MutexGuard<'_, [Sources; SLOTS]> {
        // Each entry is replaced whole; a panic half-way leaves nothing half-written.
        self.sources.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entity's tags at `cardinality` and below. Unknown entity: empty, not an error.
    /// Takes no lock and allocates nothing.
    pub fn tag(&self, entity: &str, cardinality: TagCardinality) -> Tags {
        let (slot, uid) = split(entity);
        self.tag_key(slot, uid, cardinality)
    }

    fn tag_key(&self, slot: usize, uid: &str, cardinality: TagCardinality) -> Tags {
        let guard = self.published[slot].pin();
        match guard.get(uid) {
            Some(value) => Tags::of(value, LOW, levels_up_to(cardinality)),
            None => Tags::default(),
        }
    }

    /// Whether the entity has tags from any source (lock-free).
    pub fn contains(&self, entity: &str) -> bool {
        let (slot, uid) = split(entity);
        self.published[slot].pin().contains_key(uid)
    }

    /// The entity's unified service tags (env, service, version).
    pub fn standard(&self, entity: &str) -> Tags {
        let (slot, uid) = split(entity);
        let guard = self.published[slot].pin();
        match guard.get(uid) {
            Some(value) => Tags::of(value, STANDARD, STANDARD + 1),
            None => Tags::default(),
        }
    }

    /// Replaces what `source` says about `entity` (a pending deletion of it is cancelled).
    pub fn set(&self, entity: &str, source: TagSource, info: TagInfo) -> Option<TagChange> {
        self.set_layered(TagKey::parse(entity), source, SharedParts::default(), &info).1
    }

    /// Like [`TagStore::set`], for tags that are `shared` parts (given many entities alike: a
    /// pod's tags on each of its containers, an image's) followed by `extra` at each level. The
    /// entity's tags are what one `TagInfo` of them all would give; each shared part is kept
    /// once. Returns the key the store keeps (the one given if the entity is new), for the
    /// caller to hold instead of its own.
    pub fn set_layered(
        &self,
        key: TagKey,
        source: TagSource,
        shared: SharedParts,
        extra: &TagInfo,
    ) -> (TagKey, Option<TagChange>) {
        let tags = EntityTags::build(extra);
        let shared = shared.map(|part| part.filter(|p| !p.is_empty()));
        let slot = key.slot();
        let mut writer = self.writer();
        let sources = &mut writer[slot];
        let uid = match sources.get_key_value(&*key.uid) {
            Some((uid, _)) => uid.clone(),
            None => {
                sources.insert(key.uid.clone(), Vec::new());
                key.uid
            }
        };
        let key = TagKey { slot: slot as u8, uid };
        let Some(entries) = sources.get_mut(&*key.uid) else { return (key, None) };
        match entries.iter_mut().find(|e| e.source == source) {
            Some(e) if e.has_shared(&shared) && *e.tags == tags && e.deleted_at.is_none() => return (key, None),
            Some(e) => {
                // Equal shared parts are kept as they were: the entities that share them go on
                // sharing them.
                if !e.has_shared(&shared) {
                    e.shared = shared;
                }
                if *e.tags != tags {
                    e.tags = Arc::new(tags);
                }
                e.deleted_at = None;
            }
            None => {
                // Most entities have one or two sources: no spare room.
                entries.reserve_exact(1);
                entries.push(SourceEntry { source, shared, tags: Arc::new(tags), deleted_at: None });
            }
        }
        let change = self.publish(&key, entries);
        // Still under the writer lock: subscribers hear changes in the order they were made.
        if let Some(change) = &change {
            self.notify(change);
        }
        drop(writer);
        (key, change)
    }

    /// Marks what `source` says about `entity` as deleted: still served for the grace period.
    pub fn delete(&self, entity: &str, source: TagSource) {
        let (slot, uid) = split(entity);
        self.delete_uid(slot, uid, source);
    }

    /// Like [`TagStore::delete`], by key.
    pub fn delete_key(&self, key: &TagKey, source: TagSource) {
        self.delete_uid(key.slot(), &key.uid, source);
    }

    fn delete_uid(&self, slot: usize, uid: &str, source: TagSource) {
        let now = self.clock.now();
        if let Some(entry) = self.writer()[slot].get_mut(uid).and_then(|es| es.iter_mut().find(|e| e.source == source))
            && entry.deleted_at.is_none()
        {
            entry.deleted_at = Some(deletion_time(now));
        }
    }

    /// Drops what was deleted longer ago than the grace period.
    pub fn prune(&self) -> Vec<TagChange> {
        let now = self.clock.now();
        let mut changes = Vec::new();
        let mut writer = self.writer();
        for (slot, sources) in writer.iter_mut().enumerate() {
            let mut emptied = Vec::new();
            for (uid, entries) in sources.iter_mut() {
                let before = entries.len();
                let expired = |at: NonZeroU32| now.saturating_sub(deleted_at(at)) >= self.grace;
                entries.retain(|e| !e.deleted_at.is_some_and(expired));
                if entries.len() != before {
                    let key = TagKey { slot: slot as u8, uid: uid.clone() };
                    if entries.is_empty() {
                        emptied.push(key);
                    } else {
                        changes.extend(self.publish(&key, entries));
                    }
                }
            }
            for key in emptied {
                sources.remove(&*key.uid);
                self.published[slot].pin().remove(&*key.uid);
                changes.push(TagChange::Deleted(key));
            }
        }
        for change in &changes {
            self.notify(change);
        }
        drop(writer);
        changes
    }

    /// Merges the sources of one entity (higher priority first, winning shared keys) and
    /// publishes the result; an only source is published as it is.
    fn publish(&self, key: &TagKey, entries: &mut [SourceEntry]) -> Option<TagChange> {
        entries.sort_by_key(|e| std::cmp::Reverse(e.source.priority()));
        let tags = match entries {
            [only] if only.parts().count() <= 1 => Published::One(only.parts().next().unwrap_or(&only.tags).clone()),
            _ => Published::Merged(Arc::new(Merged::build(entries))),
        };
        let guard = self.published[key.slot()].pin();
        let previous = guard.insert(key.uid.clone(), tags);
        Some(if previous.is_some() { TagChange::Modified(key.clone()) } else { TagChange::Added(key.clone()) })
    }

    /// The merged tags of `entity` by level (for dumps and tests).
    pub fn tag_info(&self, entity: &str) -> Option<TagInfo> {
        let _writer = self.writer();
        let (slot, uid) = split(entity);
        self.published[slot].pin().get(uid).map(Published::to_info)
    }

    /// Every entity with each source's tags, sorted: what `tagger-list` prints.
    pub fn list(&self) -> Vec<(String, Vec<(TagSource, TagInfo)>)> {
        let writer = self.writer();
        let mut out: Vec<_> = writer
            .iter()
            .enumerate()
            .flat_map(|(slot, sources)| {
                sources.iter().map(move |(uid, entries)| {
                    let mut per_source: Vec<_> = entries.iter().map(|e| (e.source, e.to_info())).collect();
                    per_source.sort_by_key(|(s, _)| *s);
                    (TagKey { slot: slot as u8, uid: uid.clone() }.to_string(), per_source)
                })
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Every entity and source `live` does not keep, not yet deleted: read under the writer's
    /// lock, without copying any tag.
    pub fn stale(&self, live: impl Fn(&TagKey, TagSource) -> bool) -> Vec<(TagKey, TagSource)> {
        let writer = self.writer();
        let mut out = Vec::new();
        for (slot, sources) in writer.iter().enumerate() {
            for (uid, entries) in sources {
                let key = TagKey { slot: slot as u8, uid: uid.clone() };
                for entry in entries.iter().filter(|e| e.deleted_at.is_none() && !live(&key, e.source)) {
                    out.push((key.clone(), entry.source));
                }
            }
        }
        out
    }

    /// How many entities have tags.
    pub fn len(&self) -> usize {
        self.published.iter().map(FastMap::len).sum()
    }

    /// Whether no entity has tags.
    pub fn is_empty(&self) -> bool {
        self.published.iter().all(FastMap::is_empty)
    }

    /// Where the store's bytes go, counted from its structures (payloads and entry sizes; the
    /// maps' spare capacity and the allocator's rounding are left out), for the memory benchmark.
    pub fn footprint(&self) -> Footprint {
        const ARC: usize = 2 * std::mem::size_of::<usize>();
        let writer = self.writer();
        let tags = |t: &EntityTags| ARC + std::mem::size_of::<EntityTags>() + t.heap_bytes();
        let entry = std::mem::size_of::<SourceEntry>();
        let mut f = Footprint::default();
        for published in &self.published {
            let published = published.pin();
            // A value that is its only part is that source's, counted there; a merge points at
            // its sources' parts.
            f.published_tags += published
                .iter()
                .map(|(_, v)| match v {
                    Published::One(_) => 0,
                    Published::Merged(m) => ARC + m.own_bytes(),
                })
                .sum::<usize>();
            // The keys' text is the writer's, shared.
            f.published_keys += published.len() * std::mem::size_of::<(Arc<str>, Published)>();
        }
        let entries = || writer.iter().flat_map(|s| s.values()).flatten();
        // A part shared by several entities is counted once.
        f.source_tags = entries().map(|e| entry + tags(&e.tags)).sum::<usize>()
            + entries()
                .flat_map(|e| e.shared.iter().flatten())
                .map(|b| (Arc::as_ptr(b), tags(b)))
                .collect::<HashMap<_, _>>()
                .values()
                .sum::<usize>();
        // A key's text shared with the workload store is counted there.
        f.source_keys = writer
            .iter()
            .flat_map(|s| s.iter())
            .map(|(k, v)| {
                let text = if Arc::strong_count(k) > 2 { 0 } else { ARC + k.len() };
                text + std::mem::size_of::<(Arc<str>, Vec<SourceEntry>)>() + (v.capacity() - v.len()) * entry
            })
            .sum();
        f
    }
}

/// Bytes of a [`TagStore`]'s parts (see [`TagStore::footprint`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Footprint {
    /// The published, merged tags of every entity.
    pub published_tags: usize,
    /// The published map's keys and entries.
    pub published_keys: usize,
    /// Every source's own tags (the writer's side).
    pub source_tags: usize,
    /// The writer's map: keys and entries.
    pub source_keys: usize,
}

impl fmt::Debug for TagSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TagSubscriber").field("prefix", &self.prefix).field("cardinality", &self.cardinality).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(low: &[&str], high: &[&str]) -> TagInfo {
        TagInfo {
            low: low.iter().map(|s| s.to_string()).collect(),
            high: high.iter().map(|s| s.to_string()).collect(),
            ..TagInfo::default()
        }
    }

    #[test]
    fn a_part_reads_back_tags_of_any_length_and_content_and_leaves_out_only_those_too_long() {
        let long = |n: usize| format!("k:{}", "é".repeat(n / 2));
        let (short, wide, huge) = (long(120), long(3_000), long(MAX_TAG_LEN as usize));
        let tags = TagInfo {
            low: vec!["a:1".into(), short.clone(), "nul:\0inside".into()],
            orchestrator: vec![wide.clone()],
            high: vec![huge, "id:ü".into()],
            standard: vec!["env:prod".into()],
        };
        let part = EntityTags::build(&tags);
        let level = |l: usize| part.level(l).map(|(_, t)| t.to_owned()).collect::<Vec<_>>();
        assert_eq!(level(LOW), ["a:1", short.as_str(), "nul:\0inside"]);
        assert_eq!(level(LOW + 1), [wide.as_str()]);
        assert_eq!(level(HIGH), ["id:ü"], "a tag longer than a length char can say is left out");
        assert_eq!(level(STANDARD), ["env:prod"]);
        let store = TagStore::new(Arc::new(ManualClock::default()), Duration::from_secs(300));
        store.set("container_id://c1", TagSource::Container, tags);
        let high = store.tag("container_id://c1", TagCardinality::High);
        assert_eq!(high.len(), 5, "low, orchestrator and high; the standard tags are read apart");
        assert_eq!(high.iter().nth(4), Some("id:ü"));
    }

    #[test]
    fn the_higher_priority_source_wins_a_shared_key() {
        let clock = Arc::new(ManualClock::default());
        let store = TagStore::new(clock, Duration::from_secs(300));
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
    fn a_base_is_kept_once_and_reads_as_if_each_entity_had_its_own_copy() {
        let store = TagStore::new(Arc::new(ManualClock::default()), Duration::from_secs(300));
        let pod = info(&["kube_namespace:a", "env:prod"], &["pod_uid:p"]);
        let base = Some(Arc::new(EntityTags::build(&pod)));
        let none = TagInfo::default();
        store.set_layered(TagKey::parse("pod://p"), TagSource::KubernetesPod, [base.clone(), None], &none);
        for c in ["c1", "c2"] {
            let extra = info(&["kube_container_name:x", "env:prod"], &[&format!("container_id:{c}")]);
            let id = TagKey::parse(&format!("container_id://{c}"));
            store.set_layered(id, TagSource::KubernetesPod, [base.clone(), None], &extra);
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
        // One copy of the base: the pod publishes it as it is, the containers point at it.
        let published_of = |entity: &str| {
            let (slot, uid) = split(entity);
            store.published[slot].pin().get(uid).cloned()
        };
        let Some(Published::One(published)) = published_of("pod://p") else {
            panic!("the pod's only part is published as it is")
        };
        assert!(Arc::ptr_eq(&published, base.as_ref().unwrap()));
        for c in ["container_id://c1", "container_id://c2"] {
            let Some(Published::Merged(merged)) = published_of(c) else { panic!("{c} is a merge of its parts") };
            assert!(Arc::ptr_eq(&merged.parts[0], &published), "{c} points at the pod's tags");
        }
        // An equal base given again is not a change, and the old one stays shared.
        let again = Some(Arc::new(EntityTags::build(&pod)));
        let (_, change) = store.set_layered(TagKey::parse("pod://p"), TagSource::KubernetesPod, [again, None], &none);
        assert_eq!(change, None);
        let Some(Published::One(still)) = published_of("pod://p") else { panic!("one part") };
        assert!(Arc::ptr_eq(&still, &published));
    }

    /// The merge as one flattened `TagInfo` reads it (what the published value used to copy):
    /// sources by priority, each source's parts in order; a tag whose key a higher priority
    /// gave is left out, and so is a tag its level already has.
    fn flattened(entries: &[SourceEntry]) -> TagInfo {
        let mut out = TagInfo::default();
        let mut taken: HashSet<String> = HashSet::new();
        let mut start = 0;
        while start < entries.len() {
            let priority = entries[start].source.priority();
            let end = entries[start..]
                .iter()
                .position(|e| e.source.priority() != priority)
                .map_or(entries.len(), |n| start + n);
            let mut keys = Vec::new();
            for entry in &entries[start..end] {
                let info = |part: &EntityTags, level: usize| {
                    part.level(level).map(|(_, tag)| tag.to_owned()).collect::<Vec<_>>()
                };
                for (level, cardinality) in
                    [(LOW, TagCardinality::Low), (LOW + 1, TagCardinality::Orchestrator), (HIGH, TagCardinality::High)]
                {
                    for part in entry.parts() {
                        for tag in info(part, level).into_iter().filter(|t| !taken.contains(tag_key(t))) {
                            keys.push(tag_key(&tag).to_owned());
                            out.add_tag(cardinality, tag);
                        }
                    }
                }
                for part in entry.parts() {
                    for tag in info(part, STANDARD) {
                        if !taken.contains(tag_key(&tag)) && !tag.is_empty() && !out.standard.contains(&tag) {
                            out.standard.push(tag);
                        }
                    }
                }
            }
            taken.extend(keys);
            start = end;
        }
        out
    }

    fn random_info(rng: &mut test_support::rng::XorShift) -> TagInfo {
        let mut t = TagInfo::default();
        for _ in 0..rng.next_u64() % 6 {
            let tag = format!("k{}:v{}", rng.next_u64() % 5, rng.next_u64() % 3);
            match rng.next_u64() % 4 {
                0 => t.low.push(tag),
                1 => t.orchestrator.push(tag),
                2 => t.high.push(tag),
                _ => t.standard.push(tag),
            }
        }
        t
    }

    #[test]
    fn a_merge_of_parts_reads_as_the_flattened_merge_would() {
        let mut rng = test_support::rng::XorShift::new(18);
        let sources = [TagSource::Container, TagSource::KubernetesPod, TagSource::EcsTask];
        for round in 0..2_000 {
            let count = 1 + rng.next_u64() % 3;
            let mut entries: Vec<SourceEntry> = (0..count as usize)
                .map(|n| {
                    let shared = [0, 1].map(|_| {
                        rng.next_u64().is_multiple_of(2).then(|| Arc::new(EntityTags::build(&random_info(&mut rng))))
                    });
                    let tags = Arc::new(EntityTags::build(&random_info(&mut rng)));
                    SourceEntry { source: sources[n], shared, tags, deleted_at: None }
                })
                .collect();
            entries.sort_by_key(|e| std::cmp::Reverse(e.source.priority()));
            let merged = Published::Merged(Arc::new(Merged::build(&entries)));
            assert_eq!(merged.to_info(), flattened(&entries), "round {round}: {entries:?}");
            let all = Tags::of(&merged, LOW, HIGH + 1);
            assert_eq!(all.iter().len(), all.to_vec().len(), "the iterator's length is exact");
        }
    }

    #[test]
    fn keys_split_known_prefixes_off_and_share_the_workload_stores_id() {
        for id in ["container_id://c1", "kubernetes_pod_uid://u", "ecs_task://arn", "internal://global-entity-id", "e"]
        {
            assert_eq!(TagKey::parse(id).to_string(), id);
        }
        assert_eq!(split("container_id://c1"), (0, "c1"));
        assert_eq!(split("internal://g"), (PREFIXES.len(), "internal://g"));
        let id = wm_core::EntityId::new(wm_core::Kind::Container, "c1");
        let store = TagStore::new(Arc::new(ManualClock::default()), Duration::from_secs(300));
        let (kept, _) =
            store.set_layered(TagKey::of(&id), TagSource::Container, SharedParts::default(), &info(&["a:1"], &[]));
        assert!(Arc::ptr_eq(&kept.uid, &id.id), "the store's id, not a copy");
        assert_eq!(store.tag("container_id://c1", TagCardinality::Low).to_vec(), ["a:1"]);
        assert!(store.tag("c1", TagCardinality::Low).is_empty(), "another entity");
        assert_eq!(store.list()[0].0, "container_id://c1");
    }

    #[test]
    fn tag_subscribers_hear_added_modified_and_deleted_for_their_prefix() {
        let clock = Arc::new(ManualClock::default());
        let store = TagStore::new(clock.clone(), Duration::from_secs(10));
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
        let store = TagStore::new(Arc::new(ManualClock::default()), Duration::from_secs(10));
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
        let clock = Arc::new(ManualClock::default());
        let store = TagStore::new(clock.clone(), Duration::from_secs(300));
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
