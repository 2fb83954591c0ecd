//! The tag store: per entity, per source, merged into one immutable, shared record per entity.
//!
//! Each entity has one record in a lock-free map (papaya): every source's tags, as parts
//! (immutable, packed `EntityTags`, some shared by many entities: a pod's tags under each of
//! its containers', an image's), and which of their tags the merge leaves out, so no tag is
//! copied. Writers (the tagger task) take a mutex among themselves and publish a new record for
//! each change; there is no second, writer-side copy. Readers never take a lock and never
//! allocate: a lookup is a prefix split, a hash, a probe and an `Arc` clone.
//!
//! The maps are split by id prefix and keyed by the rest of the id ([`TagKey`]): a container's or
//! pod's key is the workload store's own id, shared by the map and by the tagger's index of a
//! pod's containers.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use wm_core::Id;

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
/// built, shared by cloning: one thin pointer to one allocation. Its text begins with four counts,
/// each one `char` (one byte below 128): how many tags the levels hold, counted through (low,
/// then with orchestrator, with high, with standard). Then come the tags, each after its length
/// written as one `char`; the low, orchestrator, high and standard levels are consecutive.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EntityTags(arcstr::ArcStr);

/// The longest tag a part keeps: its length must be one `char` below the surrogates.
const MAX_TAG_LEN: u32 = 0xD7FF;

/// A count as one `char`: the surrogates skipped.
fn count_char(n: u16) -> char {
    let n = u32::from(n);
    char::from_u32(if n < 0xD800 { n } else { n + 0x800 }).unwrap_or('\0')
}

/// The count a [`count_char`] wrote.
fn count_of(c: char) -> u32 {
    let n = u32::from(c);
    if n >= 0xE000 { n - 0x800 } else { n }
}

impl Default for EntityTags {
    /// No tag (allocates nothing).
    fn default() -> Self {
        Self(arcstr::literal!("\0\0\0\0"))
    }
}

impl EntityTags {
    /// Packs a source's tags. A tag longer than 55,295 bytes (what one length `char` can say),
    /// or past the 65,535th, is left out (and logged).
    pub fn build(info: &TagInfo) -> Self {
        Self::build_without(info, None).0
    }

    /// Like [`EntityTags::build`], leaving out the high tag `skip`; whether it was there.
    fn build_without(info: &TagInfo, skip: Option<&str>) -> (Self, bool) {
        let mut skipped = false;
        let levels = [&info.low, &info.orchestrator, &info.high, &info.standard];
        let mut tags = String::with_capacity(levels.iter().flat_map(|l| l.iter()).map(|t| t.len() + 1).sum());
        let mut ends = [0u16; 4];
        let mut count = 0u16;
        for (level, level_tags) in levels.into_iter().enumerate() {
            for tag in level_tags {
                if level == HIGH && !skipped && skip == Some(tag.as_str()) {
                    skipped = true;
                    continue;
                }
                let len = u32::try_from(tag.len()).ok().filter(|n| *n <= MAX_TAG_LEN).and_then(char::from_u32);
                match len {
                    Some(len) if count < u16::MAX => {
                        tags.push(len);
                        tags.push_str(tag);
                        count += 1;
                    }
                    _ => tracing::warn!(bytes = tag.len(), kept = count, "tag left out: too long, or too many tags"),
                }
            }
            ends[level] = count;
        }
        if count == 0 {
            return (Self::default(), skipped);
        }
        let mut text = String::with_capacity(tags.len() + 12);
        text.extend(ends.map(count_char));
        text.push_str(&tags);
        (Self(arcstr::ArcStr::from(text)), skipped)
    }

    /// The four counts, and where the first tag starts.
    fn header(&self) -> ([u32; 4], usize) {
        let mut ends = [0u32; 4];
        let mut at = 0;
        for (end, c) in ends.iter_mut().zip(self.0.chars()) {
            *end = count_of(c);
            at += c.len_utf8();
        }
        (ends, at)
    }

    /// The tag at byte `pos` (where a length starts), and where the next one starts.
    fn read(&self, pos: usize) -> (&str, usize) {
        let (start, end) = self.span(pos);
        (self.0.get(start..end).unwrap_or_default(), end)
    }

    /// Where the tag whose length starts at byte `pos` starts and ends.
    fn span(&self, pos: usize) -> (usize, usize) {
        match self.0.as_bytes().get(pos) {
            // A tag shorter than 128 bytes: its length is one byte (nearly every tag).
            Some(&len) if len < 0x80 => (pos + 1, pos + 1 + usize::from(len)),
            Some(_) => {
                let len = self.0.get(pos..).and_then(|rest| rest.chars().next()).unwrap_or('\0');
                let start = pos + len.len_utf8();
                (start, start + len as usize)
            }
            None => (self.0.len(), self.0.len()),
        }
    }

    /// The tags of one level (`LOW` … `STANDARD`) with their indices.
    fn level(&self, level: usize) -> impl Iterator<Item = (u32, &str)> + '_ {
        let (first, last, mut pos) = self.level_bounds(level);
        (first..last).map(move |i| {
            let (tag, next) = self.read(pos);
            pos = next;
            (i, tag)
        })
    }

    /// A level's tags as a range of indices, and where its first tag starts.
    fn level_bounds(&self, level: usize) -> (u32, u32, usize) {
        let (ends, start) = self.header();
        let bounds = [0, ends[0], ends[1], ends[2], ends[3]];
        let (first, last) = (bounds[level.min(STANDARD + 1)], bounds[(level + 1).min(STANDARD + 1)]);
        (first, last, (0..first).fold(start, |pos, _| self.span(pos).1))
    }

    /// How many tags, every level.
    fn count(&self) -> u32 {
        self.header().0[STANDARD]
    }

    /// Whether it holds no tag.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Whether both are the one allocation.
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        arcstr::ArcStr::ptr_eq(&a.0, &b.0)
    }

    /// How many hold it (0: the empty part, which is not counted).
    pub fn holders(&self) -> usize {
        arcstr::ArcStr::strong_count(&self.0).unwrap_or(0)
    }

    /// Bytes of its allocation (the count and length, the counts and the tags), for the memory
    /// benchmark; none for the empty part.
    pub fn heap_bytes(&self) -> usize {
        if self.holders() == 0 { 0 } else { 2 * std::mem::size_of::<usize>() + self.0.len() }
    }

    /// Where its allocation is (to count a shared part once).
    fn addr(&self) -> *const u8 {
        self.0.as_ptr()
    }
}

impl SourceEntry {
    /// Its parts in order: the shared ones it has, its own tags, then the entity's id tag if it
    /// gives it (`id`: the record's).
    fn parts<'a>(&'a self, id: Option<&'a EntityTags>) -> impl Iterator<Item = &'a EntityTags> + 'a {
        (0..SLOTS_PER_SOURCE).filter_map(move |slot| self.part(slot, id))
    }

    /// The part in slot `slot` (`0`, `1`: the shared ones, `2`: its own, `3`: the record's id
    /// tag `id`, if it gives it), if it has one.
    fn part<'a>(&'a self, slot: usize, id: Option<&'a EntityTags>) -> Option<&'a EntityTags> {
        match slot {
            0 | 1 => self.shared[slot].as_ref(),
            2 => Some(&self.tags),
            _ => id.filter(|_| self.id),
        }
    }

    /// The tags as one source's `TagInfo` (each tag once per level).
    fn to_info(&self, id: Option<&EntityTags>) -> TagInfo {
        info_of(&Record::build(vec![self.clone()], id.cloned()))
    }

    /// Whether its shared parts are `shared` (the same allocations, or equal tags).
    fn has_shared(&self, shared: &SharedParts) -> bool {
        self.shared.iter().zip(shared).all(|pair| match pair {
            (Some(a), Some(b)) => EntityTags::ptr_eq(a, b) || a == b,
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

/// One entity's tags as readers see them: every source's parts, highest priority first, and
/// which of their tags the merge leaves out. Read level by level, part by part, it gives what one
/// merged list would, with no tag copied. Immutable once published: the writer publishes a new
/// record for every change. One thin pointer to one allocation: its head, then its sources
/// (highest priority first; sources of equal priority in the order they came).
#[derive(Clone)]
struct Record(triomphe::ThinArc<Head, SourceEntry>);

/// What a [`Record`] holds before its sources.
#[derive(Clone)]
struct Head {
    /// The entity's id tag (`container_id:<id>`), kept once for every source that gives it.
    id: Option<EntityTags>,
    /// Bit `n` set: the `n`th tag, counting through the parts in order, is left out.
    hidden: Hidden,
    /// How many tags each level shows (low, orchestrator, high, standard); past 65,535 a
    /// level's tags are left out.
    shown: [u16; 4],
}

/// Part slots per source: its two shared parts, its own, then the entity's id tag.
const SLOTS_PER_SOURCE: usize = 4;

impl Record {
    /// The merge of `sources`: a tag whose key a source of higher priority gave is left out, and
    /// so is a tag the same level already shows. Sources of equal priority do not override each
    /// other.
    fn build(mut sources: Vec<SourceEntry>, id: Option<EntityTags>) -> Self {
        sources.sort_by_key(|e| std::cmp::Reverse(e.source.priority()));
        // Kept only while a source gives it.
        let id = id.filter(|_| sources.iter().any(|e| e.id));
        let (hidden, shown) = {
            let parts: Vec<(u8, &EntityTags)> =
                sources.iter().flat_map(|e| e.parts(id.as_ref()).map(move |p| (e.source.priority(), p))).collect();
            let total: u32 = parts.iter().map(|(_, p)| p.count()).sum();
            let mut hidden = vec![0u64; total.div_ceil(64) as usize];
            let mut shown = [0u16; 4];
            let mut taken: HashSet<&str> = HashSet::new();
            let mut seen: [HashSet<&str>; 4] = Default::default();
            let mut start = 0;
            while start < parts.len() {
                let group = parts[start].0;
                let end = parts[start..].iter().position(|(g, _)| *g != group).map_or(parts.len(), |n| start + n);
                let offset: u32 = parts[..start].iter().map(|(_, p)| p.count()).sum();
                let mut keys: Vec<&str> = Vec::new();
                for level in LOW..=STANDARD {
                    let mut at = offset;
                    for (_, part) in &parts[start..end] {
                        for (i, tag) in part.level(level) {
                            let n = (at + i) as usize;
                            if tag.is_empty()
                                || shown[level] == u16::MAX
                                || taken.contains(tag_key(tag))
                                || !seen[level].insert(tag)
                            {
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
            (Hidden::new(hidden), shown)
        };
        Self(triomphe::ThinArc::from_header_and_iter(Head { id, hidden, shown }, sources.into_iter()))
    }

    /// The same record with its sources changed where the tags are not (a deletion's time).
    fn with_sources(&self, change: impl FnOnce(&mut [SourceEntry])) -> Self {
        let mut sources = self.sources().to_vec();
        change(&mut sources);
        Self(triomphe::ThinArc::from_header_and_iter(self.head().clone(), sources.into_iter()))
    }

    fn head(&self) -> &Head {
        &self.0.header.header
    }

    /// Its sources, highest priority first.
    fn sources(&self) -> &[SourceEntry] {
        &self.0.slice
    }

    /// The entity's id tag, kept once.
    fn id(&self) -> Option<&EntityTags> {
        self.head().id.as_ref()
    }

    /// The part in slot `slot`, counting [`SLOTS_PER_SOURCE`] per source, if there is one.
    fn part(&self, slot: usize) -> Option<&EntityTags> {
        self.sources().get(slot / SLOTS_PER_SOURCE)?.part(slot % SLOTS_PER_SOURCE, self.id())
    }

    /// How many part slots.
    fn slots(&self) -> usize {
        self.sources().len() * SLOTS_PER_SOURCE
    }

    /// How many tags the levels `first..last` show.
    fn shown(&self, first: usize, last: usize) -> u32 {
        self.head().shown[first..last].iter().map(|n| u32::from(*n)).sum()
    }

    /// Bytes of its allocation (its count and length, its head and sources) and of its hidden
    /// bits, beside the parts it points at.
    fn own_bytes(&self) -> usize {
        2 * std::mem::size_of::<usize>()
            + std::mem::size_of::<Head>()
            + std::mem::size_of_val(self.sources())
            + self.head().hidden.heap_bytes()
    }
}

/// The tags of a record by level.
fn info_of(record: &Record) -> TagInfo {
    let read = |level: usize| Tags::of(record, level, level + 1).to_vec();
    TagInfo { low: read(LOW), orchestrator: read(LOW + 1), high: read(HIGH), standard: read(STANDARD) }
}

/// The bits of [`Record::hidden`]: inline for up to 64 tags, nearly every entity.
#[derive(Clone)]
enum Hidden {
    Inline(u64),
    Heap(Box<[u64]>),
}

impl Hidden {
    fn new(bits: Vec<u64>) -> Self {
        match bits[..] {
            [] => Hidden::Inline(0),
            [word] => Hidden::Inline(word),
            _ => Hidden::Heap(bits.into_boxed_slice()),
        }
    }

    /// Whether the `n`th tag is left out.
    fn get(&self, n: usize) -> bool {
        let word = match self {
            Hidden::Inline(word) => (n < 64).then_some(*word),
            Hidden::Heap(words) => words.get(n / 64).copied(),
        };
        word.is_some_and(|w| w & (1 << (n % 64)) != 0)
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Hidden::Inline(_) => 0,
            Hidden::Heap(words) => words.len() * std::mem::size_of::<u64>(),
        }
    }
}

/// The answer to a lookup: a shared handle on an entity's tags, read as a list of `&str`.
/// Building one allocates nothing.
#[derive(Clone, Default)]
pub struct Tags {
    value: Option<Record>,
    /// The levels read: `first..last`.
    first: u8,
    last: u8,
    len: u32,
}

impl Tags {
    fn of(value: &Record, first: usize, last: usize) -> Self {
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
        let record = self.value.as_ref();
        let level = usize::from(self.first);
        let (next, end, pos) = record.and_then(|r| r.part(0)).map_or((0, 0, 0), |p| p.level_bounds(level));
        TagsIter { record, level, last: usize::from(self.last), part: 0, offset: 0, next, end, pos, left: self.len }
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
#[derive(Clone)]
pub struct TagsIter<'a> {
    record: Option<&'a Record>,
    level: usize,
    last: usize,
    /// The current part's slot in the record.
    part: usize,
    /// The index, across the parts, of the current part's first tag.
    offset: u32,
    /// The next tag's index in the current part.
    next: u32,
    /// The index past the current part's last tag of this level.
    end: u32,
    /// Where the next tag starts in the part's text.
    pos: usize,
    left: u32,
}

impl fmt::Debug for TagsIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TagsIter").field("left", &self.left).finish_non_exhaustive()
    }
}

impl<'a> Iterator for TagsIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let record = self.record?;
        while self.left > 0 && self.level < self.last {
            if let Some(part) = record.part(self.part) {
                if self.next < self.end {
                    let n = (self.offset + self.next) as usize;
                    let (tag, after) = part.read(self.pos);
                    self.next += 1;
                    self.pos = after;
                    if record.head().hidden.get(n) {
                        continue;
                    }
                    self.left -= 1;
                    return Some(tag);
                }
                self.offset += part.count();
            }
            self.part += 1;
            if self.part >= record.slots() {
                self.part = 0;
                self.offset = 0;
                self.level += 1;
            }
            (self.next, self.end, self.pos) = record.part(self.part).map_or((0, 0, 0), |p| p.level_bounds(self.level));
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for TagsIter<'_> {}

/// The shared parts of a source's tags (see [`TagStore::set_layered`]).
pub type SharedParts = [Option<EntityTags>; 2];

#[derive(Debug, Clone)]
struct SourceEntry {
    source: TagSource,
    /// Tags this source gives many entities alike (a pod's, on each of its containers; an
    /// image's), shared by them all; they come before `tags` at each level.
    shared: SharedParts,
    /// Its own tags, packed: one buffer, no per-tag allocation.
    tags: EntityTags,
    /// When the source deleted it, in whole seconds of the store's clock rounded up (an entry
    /// stays 32 bytes); its tags are served until the grace period has passed.
    deleted_at: Option<NonZeroU32>,
    /// Whether it gives the entity's id tag (kept once, in the record, not in `tags`).
    id: bool,
}

/// The id tag of an entity that has one (a container's `container_id:<id>`), which each of its
/// sources gives: the record keeps it once.
fn id_tag(key: &TagKey) -> Option<String> {
    (key.slot() == CONTAINERS).then(|| format!("container_id:{}", key.uid))
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
/// The map of containers (`container_id://`).
const CONTAINERS: usize = 0;
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
    uid: Id,
}

impl TagKey {
    /// The key of an id in text (`container_id://…`).
    pub fn parse(entity: &str) -> Self {
        let (slot, uid) = split(entity);
        Self { slot: slot as u8, uid: Id::from(uid) }
    }

    /// The key of a workload store entity, sharing its id.
    pub fn of(id: &wm_core::EntityId) -> Self {
        let slot = match id.kind {
            wm_core::Kind::Container => CONTAINERS as u8,
            wm_core::Kind::KubernetesPod => 1,
            wm_core::Kind::EcsTask => 2,
            wm_core::Kind::KubernetesMetadata => 3,
        };
        Self { slot, uid: id.id.clone() }
    }

    /// The key of the container `id`, sharing it.
    pub fn container(id: Id) -> Self {
        Self { slot: CONTAINERS as u8, uid: id }
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

/// Tags per entity, merged across sources; reads are lock-free.
pub struct TagStore {
    /// Each entity's one record, per id prefix.
    published: [FastMap<Id, Record>; SLOTS],
    /// Held by writers: one change at a time, published and told in the order it was made.
    writer: Mutex<()>,
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
            writer: Mutex::new(()),
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
        let writer = self.writer();
        let mut initial: Vec<TagEvent> = Vec::new();
        for (slot, map) in self.published.iter().enumerate() {
            for (uid, record) in &map.pin() {
                let key = TagKey { slot: slot as u8, uid: uid.clone() };
                let entity = key.to_string();
                if entity.starts_with(prefix) {
                    let tags = Tags::of(record, LOW, levels_up_to(cardinality)).to_vec();
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
        drop(writer);
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

    fn writer(&self) -> MutexGuard<'_, ()> {
        // Each record is replaced whole; a panic half-way leaves nothing half-written.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
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
            Some(record) => Tags::of(record, LOW, levels_up_to(cardinality)),
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
            Some(record) => Tags::of(record, STANDARD, STANDARD + 1),
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
        let id_tag = id_tag(&key);
        let (tags, gives_id) = EntityTags::build_without(extra, id_tag.as_deref());
        let shared = shared.map(|part| part.filter(|p| !p.is_empty()));
        let slot = key.slot();
        let writer = self.writer();
        let map = self.published[slot].pin();
        let current = map.get_key_value(&*key.uid);
        let key = TagKey { slot: slot as u8, uid: current.map_or(key.uid, |(uid, _)| uid.clone()) };
        let mut entries = match current {
            Some((_, record)) => {
                let same = |e: &SourceEntry| {
                    e.has_shared(&shared) && e.tags == tags && e.id == gives_id && e.deleted_at.is_none()
                };
                if record.sources().iter().any(|e| e.source == source && same(e)) {
                    return (key, None);
                }
                record.sources().to_vec()
            }
            None => Vec::with_capacity(1),
        };
        let id = match (current.and_then(|(_, r)| r.id().cloned()), id_tag) {
            (Some(kept), _) => Some(kept),
            (None, Some(tag)) if gives_id => {
                Some(EntityTags::build(&TagInfo { high: vec![tag], ..TagInfo::default() }))
            }
            _ => None,
        };
        match entries.iter_mut().find(|e| e.source == source) {
            Some(e) => {
                // Equal shared parts are kept as they were: the entities that share them go on
                // sharing them.
                if !e.has_shared(&shared) {
                    e.shared = shared;
                }
                if e.tags != tags {
                    e.tags = tags;
                }
                e.id = gives_id;
                e.deleted_at = None;
            }
            None => entries.push(SourceEntry { source, shared, tags, deleted_at: None, id: gives_id }),
        }
        let change = self.publish(&key, entries, id);
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
        let _writer = self.writer();
        let map = self.published[slot].pin();
        let Some((uid, record)) = map.get_key_value(uid) else { return };
        if !record.sources().iter().any(|e| e.source == source && e.deleted_at.is_none()) {
            return;
        }
        // The same tags, served as they were until pruned.
        let marked = record.with_sources(|sources| {
            for entry in sources.iter_mut().filter(|e| e.source == source) {
                entry.deleted_at = Some(deletion_time(now));
            }
        });
        map.insert(uid.clone(), marked);
    }

    /// Drops what was deleted longer ago than the grace period.
    pub fn prune(&self) -> Vec<TagChange> {
        let now = self.clock.now();
        let expired = |e: &SourceEntry| e.deleted_at.is_some_and(|at| now.saturating_sub(deleted_at(at)) >= self.grace);
        let mut changes = Vec::new();
        let writer = self.writer();
        for (slot, map) in self.published.iter().enumerate() {
            let due: Vec<(TagKey, Vec<SourceEntry>, Option<EntityTags>)> = map
                .pin()
                .iter()
                .filter(|(_, record)| record.sources().iter().any(expired))
                .map(|(uid, record)| {
                    let key = TagKey { slot: slot as u8, uid: uid.clone() };
                    (key, record.sources().iter().filter(|e| !expired(e)).cloned().collect(), record.id().cloned())
                })
                .collect();
            for (key, entries, id) in due {
                changes.extend(self.publish(&key, entries, id));
            }
        }
        for change in &changes {
            self.notify(change);
        }
        drop(writer);
        changes
    }

    /// Publishes the merge of an entity's sources (none left: the entity goes).
    fn publish(&self, key: &TagKey, entries: Vec<SourceEntry>, id: Option<EntityTags>) -> Option<TagChange> {
        let map = self.published[key.slot()].pin();
        if entries.is_empty() {
            return map.remove(&*key.uid).map(|_| TagChange::Deleted(key.clone()));
        }
        let previous = map.insert(key.uid.clone(), Record::build(entries, id));
        Some(if previous.is_some() { TagChange::Modified(key.clone()) } else { TagChange::Added(key.clone()) })
    }

    /// The merged tags of `entity` by level (for dumps and tests).
    pub fn tag_info(&self, entity: &str) -> Option<TagInfo> {
        let _writer = self.writer();
        let (slot, uid) = split(entity);
        self.published[slot].pin().get(uid).map(info_of)
    }

    /// Every entity with each source's tags, sorted: what `tagger-list` prints.
    pub fn list(&self) -> Vec<(String, Vec<(TagSource, TagInfo)>)> {
        let _writer = self.writer();
        let mut out = Vec::new();
        for (slot, map) in self.published.iter().enumerate() {
            for (uid, record) in &map.pin() {
                let mut per_source: Vec<_> =
                    record.sources().iter().map(|e| (e.source, e.to_info(record.id()))).collect();
                per_source.sort_by_key(|(s, _)| *s);
                out.push((TagKey { slot: slot as u8, uid: uid.clone() }.to_string(), per_source));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Every entity and source `live` does not keep, not yet deleted: read under the writer's
    /// lock, without copying any tag.
    pub fn stale(&self, live: impl Fn(&TagKey, TagSource) -> bool) -> Vec<(TagKey, TagSource)> {
        let _writer = self.writer();
        let mut out = Vec::new();
        for (slot, map) in self.published.iter().enumerate() {
            for (uid, record) in &map.pin() {
                let key = TagKey { slot: slot as u8, uid: uid.clone() };
                for entry in record.sources().iter().filter(|e| e.deleted_at.is_none() && !live(&key, e.source)) {
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
        let _writer = self.writer();
        let mut f = Footprint::default();
        // A part shared by several entities is counted once.
        let mut shared: HashMap<*const u8, usize> = HashMap::new();
        for map in &self.published {
            let map = map.pin();
            f.entries += map.len() * std::mem::size_of::<(Id, Record)>();
            for (uid, record) in &map {
                f.records += record.own_bytes();
                f.tags += record.id().map_or(0, EntityTags::heap_bytes);
                for entry in record.sources() {
                    f.tags += entry.tags.heap_bytes();
                    for part in entry.shared.iter().flatten() {
                        shared.insert(part.addr(), part.heap_bytes());
                    }
                }
                // A key's text shared with the workload store is counted there.
                f.keys += if Id::strong_count(uid).is_some_and(|n| n > 1) { 0 } else { ARC + uid.len() };
            }
        }
        f.tags += shared.values().sum::<usize>();
        f
    }
}

/// Bytes of a [`TagStore`]'s parts (see [`TagStore::footprint`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Footprint {
    /// Each entity's record: its sources and which tags the merge leaves out.
    pub records: usize,
    /// The map's entries (a key and a pointer to the record).
    pub entries: usize,
    /// The tags themselves: every source's own, and each shared part once.
    pub tags: usize,
    /// The text of keys the workload store does not share.
    pub keys: usize,
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
        let base = Some(EntityTags::build(&pod));
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
        let pod_base = |record: &Record| record.sources()[0].shared[0].clone().expect("the pod's base");
        let published = pod_base(&published_of("pod://p").expect("the pod"));
        assert!(EntityTags::ptr_eq(&published, base.as_ref().unwrap()));
        for c in ["container_id://c1", "container_id://c2"] {
            let record = published_of(c).expect("the container");
            assert_eq!(record.sources()[0].source, TagSource::KubernetesPod, "{c}: the pod's tags come first");
            assert!(EntityTags::ptr_eq(&pod_base(&record), &published), "{c} points at the pod's tags");
        }
        // An equal base given again is not a change, and the old one stays shared.
        let again = Some(EntityTags::build(&pod));
        let (_, change) = store.set_layered(TagKey::parse("pod://p"), TagSource::KubernetesPod, [again, None], &none);
        assert_eq!(change, None);
        assert!(EntityTags::ptr_eq(&pod_base(&published_of("pod://p").expect("the pod")), &published));
    }

    /// The merge as one flattened `TagInfo` reads it (what a record once held as a copy):
    /// sources by priority, each source's parts in order; a tag whose key a higher priority
    /// gave is left out, and so is a tag its level already has.
    fn flattened(entries: &[SourceEntry], id: Option<&EntityTags>) -> TagInfo {
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
                    for part in entry.parts(id).filter(|p| !p.is_empty()) {
                        for tag in info(part, level).into_iter().filter(|t| !taken.contains(tag_key(t))) {
                            keys.push(tag_key(&tag).to_owned());
                            out.add_tag(cardinality, tag);
                        }
                    }
                }
                for part in entry.parts(id) {
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
        // The id tag a source may give, kept once by the record; its key is one another part
        // may give too.
        let id = EntityTags::build(&info(&[], &["k1:v0"]));
        for round in 0..2_000 {
            let count = 1 + rng.next_u64() % 3;
            let mut entries: Vec<SourceEntry> = (0..count as usize)
                .map(|n| {
                    let shared = [0, 1]
                        .map(|_| rng.next_u64().is_multiple_of(2).then(|| EntityTags::build(&random_info(&mut rng))));
                    let tags = EntityTags::build(&random_info(&mut rng));
                    let gives_id = rng.next_u64().is_multiple_of(2);
                    SourceEntry { source: sources[n], shared, tags, deleted_at: None, id: gives_id }
                })
                .collect();
            entries.sort_by_key(|e| std::cmp::Reverse(e.source.priority()));
            let merged = Record::build(entries.clone(), Some(id.clone()));
            assert_eq!(info_of(&merged), flattened(&entries, Some(&id)), "round {round}: {entries:?}");
            let all = Tags::of(&merged, LOW, HIGH + 1);
            assert_eq!(all.iter().len(), all.to_vec().len(), "the iterator's length is exact");
        }
    }

    #[test]
    fn a_containers_id_tag_is_kept_once_for_every_source_that_gives_it() {
        let clock = Arc::new(ManualClock::default());
        let store = TagStore::new(clock.clone(), Duration::from_secs(10));
        let c1 = "container_id://c1";
        store.set(c1, TagSource::Container, info(&["a:1"], &["container_name:x", "container_id:c1"]));
        store.set(c1, TagSource::KubernetesPod, info(&["b:1"], &["container_id:c1", "display_container_name:x_p"]));
        let record = || store.published[0].pin().get("c1").cloned().expect("the container");
        let id = record().id().cloned().expect("one id part");
        assert_eq!(id.level(HIGH).map(|(_, t)| t).collect::<Vec<_>>(), ["container_id:c1"]);
        assert!(record().sources().iter().all(|e| e.id && e.tags.level(HIGH).all(|(_, t)| t != "container_id:c1")));
        let high = store.tag(c1, TagCardinality::High).to_vec();
        assert_eq!(high.iter().filter(|t| *t == "container_id:c1").count(), 1, "{high:?}");
        assert_eq!(high.len(), 5, "{high:?}");
        for (_, info) in &store.list()[0].1 {
            assert!(info.high.contains(&"container_id:c1".to_owned()), "each source still gives it: {info:?}");
        }
        // Another container's id is its own tag, not an id part.
        store.set("container_id://c2", TagSource::Container, info(&[], &["container_id:c1"]));
        let other = store.published[0].pin().get("c2").cloned().expect("c2");
        assert!(other.id().is_none() && !other.sources()[0].id);
        // The pod's tags outlive the container's deletion, the id with them.
        store.delete(c1, TagSource::Container);
        clock.advance(Duration::from_secs(10));
        store.prune();
        assert!(store.tag(c1, TagCardinality::High).to_vec().contains(&"container_id:c1".to_owned()));
        assert!(EntityTags::ptr_eq(record().id().unwrap(), &id), "the same part, kept");
        // No source gives it any more: it goes.
        store.set(c1, TagSource::KubernetesPod, info(&["b:1"], &[]));
        assert!(record().id().is_none());
        assert_eq!(store.tag(c1, TagCardinality::High).to_vec(), ["b:1"]);
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
        assert!(Id::ptr_eq(&kept.uid, &id.id), "the store's id, not a copy");
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
