//! An entity's record: every source's parts, and which of their tags the merge leaves out.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::Serialize;

use super::packed::{EntityTags, Level, PerLevel};
use super::shared::SharedParts;
use crate::tags::{TagInfo, tag_key};

/// Names who gave a set of tags. On a tag key two sources both give, the higher priority wins.
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
    /// Tags from a container image entity (on the image).
    #[serde(rename = "workloadmeta-container_image_metadata")]
    ContainerImage,
}

impl TagSource {
    /// Returns the source's name, as `tagger-list` prints it.
    pub const fn as_str(self) -> &'static str {
        match self {
            TagSource::Container => "workloadmeta-container",
            TagSource::KubernetesPod => "workloadmeta-kubernetes_pod",
            TagSource::EcsTask => "workloadmeta-ecs_task",
            TagSource::KubernetesMetadata => "workloadmeta-kubernetes_metadata",
            TagSource::ContainerImage => "workloadmeta-container_image_metadata",
        }
    }

    /// Ranks the source: pod and task tags win over a container's own.
    pub(crate) const fn priority(self) -> u8 {
        match self {
            TagSource::Container | TagSource::ContainerImage => 0,
            TagSource::KubernetesPod | TagSource::EcsTask | TagSource::KubernetesMetadata => 1,
        }
    }
}

/// When a source deleted an entity, on the store's clock.
///
/// Whole seconds fit in 4 bytes, which keeps a [`SourceEntry`] at 32. The time is rounded up,
/// so a deletion is never pruned before its grace period is over. It is stored as seconds plus
/// one: zero stays free to mean `None` (so `Option<DeletedAt>` is 4 bytes too), and a deletion
/// at the clock's very start is still a non-zero value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeletedAt(NonZeroU32);

impl DeletedAt {
    /// Records a deletion made at `now`.
    pub(crate) fn at(now: Duration) -> Self {
        let secs = now.as_secs() + u64::from(now.subsec_nanos() > 0) + 1;
        Self(NonZeroU32::new(u32::try_from(secs).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MAX))
    }

    /// Returns the time of the deletion, rounded up to a second.
    pub(crate) fn time(self) -> Duration {
        Duration::from_secs(u64::from(self.0.get() - 1))
    }
}

/// What one source says about an entity.
#[derive(Debug, Clone)]
pub(crate) struct SourceEntry {
    pub(crate) source: TagSource,
    /// The tags this source gives other entities too, held once for all of them.
    pub(crate) shared: SharedParts,
    /// Its own tags.
    pub(crate) tags: EntityTags,
    /// When the source deleted the entity; its tags are served until the grace period is over.
    pub(crate) deleted_at: Option<DeletedAt>,
    /// Whether the source gives the entity's id tag (held by the record once, not in `tags`).
    pub(crate) id: bool,
}

/// Which part a [`SourceEntry`] holds in each of its slots, in the order they are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Broad,
    Narrow,
    Own,
    Id,
}

impl Slot {
    /// Every slot, in the order they are read.
    const ALL: [Slot; 4] = [Slot::Broad, Slot::Narrow, Slot::Own, Slot::Id];
}

impl SourceEntry {
    /// Iterates over its parts in order: the shared ones it has, its own tags, then the
    /// entity's id tag (`id`, the record's) if it gives it.
    pub(crate) fn parts<'a>(&'a self, id: Option<&'a EntityTags>) -> impl Iterator<Item = &'a EntityTags> + 'a {
        Slot::ALL.into_iter().filter_map(move |slot| self.part(slot, id))
    }

    /// Returns the part in `slot`, if it has one (`id`: the record's id tag).
    fn part<'a>(&'a self, slot: Slot, id: Option<&'a EntityTags>) -> Option<&'a EntityTags> {
        match slot {
            Slot::Broad => self.shared.broad.as_deref(),
            Slot::Narrow => self.shared.narrow.as_deref(),
            Slot::Own => Some(&self.tags),
            Slot::Id => id.filter(|_| self.id),
        }
    }

    /// Returns its tags as one source's `TagInfo` (each tag once per level).
    pub(crate) fn to_info(&self, id: Option<&EntityTags>) -> TagInfo {
        Record::build(vec![self.clone()], id.cloned()).to_info()
    }

    /// Tells whether the entry already has these shared parts, these own tags and this id flag,
    /// and is not deleted: setting them again would change nothing.
    pub(crate) fn says(&self, shared: &SharedParts, tags: &EntityTags, gives_id: bool) -> bool {
        self.shared.same_as(shared) && self.tags == *tags && self.id == gives_id && self.deleted_at.is_none()
    }

    /// Replaces what it says, keeping a shared part that is equal to the new one: the entities
    /// that share it go on sharing it.
    pub(crate) fn replace(&mut self, shared: SharedParts, tags: EntityTags, gives_id: bool) {
        if !self.shared.same_as(&shared) {
            self.shared = shared;
        }
        if self.tags != tags {
            self.tags = tags;
        }
        self.id = gives_id;
        self.deleted_at = None;
    }
}

/// One entity's tags as readers see them: every source's parts, highest priority first, and
/// which of their tags the merge leaves out.
///
/// Read level by level, part by part, skipping the left-out tags, it gives what one merged list
/// would, with no tag copied. Immutable: the store builds a new record for every change and
/// swaps it in. One thin pointer to one allocation holding its [`Head`], then its sources.
#[derive(Clone)]
pub(crate) struct Record(triomphe::ThinArc<Head, SourceEntry>);

/// What a [`Record`] holds before its sources.
#[derive(Clone)]
pub(crate) struct Head {
    /// The entity's id tag (`container_id:<id>`), held once for every source that gives it.
    id: Option<EntityTags>,
    /// Which tags the merge leaves out, counting through the parts in reading order.
    hidden: Hidden,
    /// How many tags each level shows; past 65,535 a level's tags are left out.
    shown: PerLevel<u16>,
}

impl Record {
    /// Merges `sources`: a tag whose key a source of higher priority gave is left out, and so is
    /// a tag its level already shows. Sources of equal priority do not override each other.
    pub(crate) fn build(mut sources: Vec<SourceEntry>, id: Option<EntityTags>) -> Self {
        sources.sort_by_key(|e| std::cmp::Reverse(e.source.priority()));
        // Held only while a source gives it.
        let id = id.filter(|_| sources.iter().any(|e| e.id));
        let (hidden, shown) = {
            let parts: Vec<(u8, &EntityTags)> =
                sources.iter().flat_map(|e| e.parts(id.as_ref()).map(move |p| (e.source.priority(), p))).collect();
            let total: u32 = parts.iter().map(|(_, p)| p.count()).sum();
            let mut hidden = vec![0u64; total.div_ceil(64) as usize];
            let mut shown = PerLevel([0u16; 4]);
            let mut taken: HashSet<&str> = HashSet::new();
            let mut seen: PerLevel<HashSet<&str>> = PerLevel::default();
            let mut start = 0;
            while start < parts.len() {
                let group = parts[start].0;
                let end = parts[start..].iter().position(|(g, _)| *g != group).map_or(parts.len(), |n| start + n);
                let offset: u32 = parts[..start].iter().map(|(_, p)| p.count()).sum();
                let mut keys: Vec<&str> = Vec::new();
                for level in Level::ALL {
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
                                // A unified service tag does not override a lower priority's
                                // tag of the same key: the levels are read apart.
                                if level != Level::Standard {
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

    /// Copies the record with `change` applied to its sources, keeping the head (the merge).
    /// Only for changes that leave every tag alone, such as a deletion time.
    pub(crate) fn with_sources(&self, change: impl FnOnce(&mut [SourceEntry])) -> Self {
        let mut sources = self.sources().to_vec();
        change(&mut sources);
        Self(triomphe::ThinArc::from_header_and_iter(self.head().clone(), sources.into_iter()))
    }

    fn head(&self) -> &Head {
        &self.0.header.header
    }

    /// Returns its sources, highest priority first.
    pub(crate) fn sources(&self) -> &[SourceEntry] {
        &self.0.slice
    }

    /// Returns the entity's id tag, held once.
    pub(crate) fn id(&self) -> Option<&EntityTags> {
        self.head().id.as_ref()
    }

    /// Returns the part at `slot`, counting four slots per source, if there is one.
    pub(crate) fn part(&self, slot: usize) -> Option<&EntityTags> {
        let source = self.sources().get(slot / Slot::ALL.len())?;
        source.part(Slot::ALL[slot % Slot::ALL.len()], self.id())
    }

    /// Counts its part slots (four per source, some empty).
    pub(crate) fn slots(&self) -> usize {
        self.sources().len() * Slot::ALL.len()
    }

    /// Counts the tags the levels `first..=last` show.
    pub(crate) fn shown(&self, first: Level, last: Level) -> u32 {
        self.head().shown.0[first.index()..=last.index()].iter().map(|n| u32::from(*n)).sum()
    }

    /// Tells whether the merge leaves out the `n`th tag, counting through the parts.
    pub(crate) fn is_hidden(&self, n: usize) -> bool {
        self.head().hidden.get(n)
    }

    /// Returns its tags by level (for dumps and tests).
    pub(crate) fn to_info(&self) -> TagInfo {
        let read = |level| super::Tags::of(self, level, level).to_vec();
        TagInfo {
            low: read(Level::Low),
            orchestrator: read(Level::Orchestrator),
            high: read(Level::High),
            standard: read(Level::Standard),
        }
    }

    /// Returns the bytes of its allocation (its count and length, its head and sources) and of
    /// its hidden bits, beside the parts it points at.
    #[cfg(feature = "memory-accounting")]
    pub(crate) fn own_bytes(&self) -> usize {
        2 * std::mem::size_of::<usize>()
            + std::mem::size_of::<Head>()
            + std::mem::size_of_val(self.sources())
            + self.head().hidden.heap_bytes()
    }
}

/// The bits of [`Head::hidden`]: inline for up to 64 tags, which is nearly every entity.
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

    /// Tells whether the `n`th tag is left out.
    fn get(&self, n: usize) -> bool {
        let word = match self {
            Hidden::Inline(word) => (n < 64).then_some(*word),
            Hidden::Heap(words) => words.get(n / 64).copied(),
        };
        word.is_some_and(|w| w & (1 << (n % 64)) != 0)
    }

    #[cfg(feature = "memory-accounting")]
    fn heap_bytes(&self) -> usize {
        match self {
            Hidden::Inline(_) => 0,
            Hidden::Heap(words) => words.len() * std::mem::size_of::<u64>(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Tags;
    use crate::store::shared::SharedPart;
    use crate::store::tests::info;
    use crate::tags::TagCardinality;

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
                let info = |part: &EntityTags, level: Level| {
                    part.level(level).map(|(_, tag)| tag.to_owned()).collect::<Vec<_>>()
                };
                for (level, cardinality) in [
                    (Level::Low, TagCardinality::Low),
                    (Level::Orchestrator, TagCardinality::Orchestrator),
                    (Level::High, TagCardinality::High),
                ] {
                    for part in entry.parts(id).filter(|p| !p.is_empty()) {
                        for tag in info(part, level).into_iter().filter(|t| !taken.contains(tag_key(t))) {
                            keys.push(tag_key(&tag).to_owned());
                            out.add_tag(cardinality, tag);
                        }
                    }
                }
                for part in entry.parts(id) {
                    for tag in info(part, Level::Standard) {
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
        // The id tag a source may give, held once by the record; its key is one another part
        // may give too.
        let id = EntityTags::build(&info(&[], &["k1:v0"]));
        let part = |rng: &mut test_support::rng::XorShift| {
            rng.next_u64().is_multiple_of(2).then(|| SharedPart::intern(EntityTags::build(&random_info(rng))))
        };
        for round in 0..2_000 {
            let count = 1 + rng.next_u64() % 3;
            let mut entries: Vec<SourceEntry> = (0..count as usize)
                .map(|n| {
                    let shared = SharedParts { broad: part(&mut rng), narrow: part(&mut rng) };
                    let tags = EntityTags::build(&random_info(&mut rng));
                    let gives_id = rng.next_u64().is_multiple_of(2);
                    SourceEntry { source: sources[n], shared, tags, deleted_at: None, id: gives_id }
                })
                .collect();
            entries.sort_by_key(|e| std::cmp::Reverse(e.source.priority()));
            let merged = Record::build(entries.clone(), Some(id.clone()));
            assert_eq!(merged.to_info(), flattened(&entries, Some(&id)), "round {round}: {entries:?}");
            let all = Tags::of(&merged, Level::Low, Level::High);
            assert_eq!(all.iter().len(), all.to_vec().len(), "the iterator's length is exact");
        }
    }

    #[test]
    fn a_deletion_time_is_rounded_up_and_one_at_the_start_is_a_deletion() {
        assert_eq!(DeletedAt::at(Duration::ZERO).time(), Duration::ZERO);
        assert_eq!(DeletedAt::at(Duration::from_millis(1_001)).time(), Duration::from_secs(2));
        assert_eq!(DeletedAt::at(Duration::from_secs(7)).time(), Duration::from_secs(7));
    }

    #[test]
    fn a_source_entry_stays_32_bytes() {
        assert_eq!(std::mem::size_of::<SourceEntry>(), 32);
        assert_eq!(std::mem::size_of::<Option<DeletedAt>>(), 4);
    }
}
