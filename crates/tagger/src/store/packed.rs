//! The packed form of a set of tags: one string in one counted allocation.
//!
//! # Why packed
//!
//! At 100,000 pods the tagger holds millions of tags, and most of them are the same few texts
//! (a pod's labels under each of its containers, an image's tags under each container of the
//! image). A `Vec<String>` per level would cost an allocation per tag and 24 bytes per handle.
//! An [`EntityTags`] is instead one [`arcstr::ArcStr`]: a thin pointer (8 bytes) to one
//! allocation holding a reference count, a length and the text. Cloning it shares it, so a
//! part given to many entities is held once.
//!
//! # Layout
//!
//! ```text
//! [low][orchestrator][high][standard] ([len]tag)*
//! ```
//!
//! The text begins with four cumulative counts, one per [`Level`]: the first is how many low
//! tags there are, the second how many low and orchestrator tags, and so on, so the last is the
//! total. Then come the tags, level by level, each after its length.
//!
//! # Why numbers are `char`s
//!
//! An `ArcStr` must hold valid UTF-8, so the counts and lengths cannot be raw bytes. Each is
//! written as one `char` whose code point is the number: below 128 that is one byte, and
//! nearly every tag is shorter than 128 bytes, so a tag costs one byte beside its text. Code
//! points 0xD800 to 0xDFFF (the surrogates) are not `char`s:
//! - a tag's length must be at most 0xD7FF (55,295 bytes); a longer tag is left out, with a
//!   warning;
//! - a count skips the surrogates (it is written 0x800 higher from 0xD800 on), which lets it
//!   reach 65,535.
//!
//! # The 65,535 limit
//!
//! Counts are 16-bit numbers here and in the record that merges parts
//! (`Head::shown`), which keeps both small. A part keeps at most 65,535 tags; the ones past
//! that are left out, with a warning. No real workload comes near it.

use std::fmt;
use std::ops::{Index, IndexMut};

use crate::tags::{TagCardinality, TagInfo};

/// A group of tags within a part: the tags each cardinality adds, then the unified service
/// tags (`env`, `service`, `version`), which are read on their own.
///
/// A lookup at a cardinality reads every level from `Low` through the cardinality's own:
/// `High` reads low, orchestrator and high tags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    #[default]
    Low,
    Orchestrator,
    High,
    Standard,
}

impl Level {
    /// Every level, in the order a part stores them.
    pub(crate) const ALL: [Level; 4] = [Level::Low, Level::Orchestrator, Level::High, Level::Standard];

    /// Returns the last level a lookup at `cardinality` reads (`None`: no level at all).
    pub(crate) const fn highest_for(cardinality: TagCardinality) -> Option<Level> {
        match cardinality {
            TagCardinality::None => None,
            TagCardinality::Low => Some(Level::Low),
            TagCardinality::Orchestrator => Some(Level::Orchestrator),
            TagCardinality::High => Some(Level::High),
        }
    }

    /// Returns the level after this one.
    pub(crate) const fn next(self) -> Option<Level> {
        match self {
            Level::Low => Some(Level::Orchestrator),
            Level::Orchestrator => Some(Level::High),
            Level::High => Some(Level::Standard),
            Level::Standard => None,
        }
    }

    /// Returns its place among [`Level::ALL`].
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

/// One value per [`Level`], indexed by level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PerLevel<T>(pub(crate) [T; 4]);

impl<T> Index<Level> for PerLevel<T> {
    type Output = T;

    fn index(&self, level: Level) -> &T {
        &self.0[level.index()]
    }
}

impl<T> IndexMut<Level> for PerLevel<T> {
    fn index_mut(&mut self, level: Level) -> &mut T {
        &mut self.0[level.index()]
    }
}

/// One part of an entity's tags: a source's own, or a part many entities share.
///
/// Immutable once built and shared by cloning. See the [module docs](self) for its layout.
///
/// Hashed and compared as its packed text, which is also what finds it in the shared parts'
/// interner.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct EntityTags(arcstr::ArcStr);

impl std::hash::Hash for EntityTags {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for EntityTags {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The longest tag a part keeps: its length must be a `char` below the surrogates.
pub(crate) const MAX_TAG_LEN: u32 = 0xD7FF;

/// Writes a count as one `char`, skipping the surrogates.
fn count_char(n: u16) -> char {
    let n = u32::from(n);
    char::from_u32(if n < 0xD800 { n } else { n + 0x800 }).unwrap_or('\0')
}

/// Reads a count that [`count_char`] wrote.
fn count_of(c: char) -> u32 {
    let n = u32::from(c);
    if n >= 0xE000 { n - 0x800 } else { n }
}

impl Default for EntityTags {
    /// Returns the part with no tag, a static string: it allocates nothing.
    fn default() -> Self {
        Self(arcstr::literal!("\0\0\0\0"))
    }
}

impl EntityTags {
    /// Packs a source's tags.
    ///
    /// A tag longer than 55,295 bytes, or past the 65,535th, is left out, with a warning.
    pub(crate) fn build(info: &TagInfo) -> Self {
        Self::build_without(info, None).0
    }

    /// Packs a source's tags like [`EntityTags::build`], leaving out the high tag `skip` once.
    /// Also returns whether `skip` was found.
    pub(crate) fn build_without(info: &TagInfo, skip: Option<&str>) -> (Self, bool) {
        let mut skipped = false;
        let levels = [
            (Level::Low, &info.low),
            (Level::Orchestrator, &info.orchestrator),
            (Level::High, &info.high),
            (Level::Standard, &info.standard),
        ];
        let mut tags = String::with_capacity(levels.iter().flat_map(|(_, l)| l.iter()).map(|t| t.len() + 1).sum());
        let mut ends = PerLevel([0u16; 4]);
        let mut count = 0u16;
        for (level, level_tags) in levels {
            for tag in level_tags {
                if level == Level::High && !skipped && skip == Some(tag.as_str()) {
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
        text.extend(ends.0.map(count_char));
        text.push_str(&tags);
        (Self(arcstr::ArcStr::from(text)), skipped)
    }

    /// Reads the four counts, and where the first tag starts.
    fn header(&self) -> (PerLevel<u32>, usize) {
        let mut ends = PerLevel([0u32; 4]);
        let mut at = 0;
        for (end, c) in ends.0.iter_mut().zip(self.0.chars()) {
            *end = count_of(c);
            at += c.len_utf8();
        }
        (ends, at)
    }

    /// Reads the tag whose length starts at byte `pos`; also returns where the next one starts.
    pub(crate) fn read(&self, pos: usize) -> (&str, usize) {
        let (start, end) = self.span(pos);
        (self.0.get(start..end).unwrap_or_default(), end)
    }

    /// Finds where the tag whose length starts at byte `pos` starts and ends.
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

    /// Iterates over the tags of one level, each with its index in the part.
    pub(crate) fn level(&self, level: Level) -> impl Iterator<Item = (u32, &str)> + '_ {
        let (first, last, mut pos) = self.level_bounds(level);
        (first..last).map(move |i| {
            let (tag, next) = self.read(pos);
            pos = next;
            (i, tag)
        })
    }

    /// Returns a level's tags as a range of indices in the part, and the byte where its first
    /// tag starts.
    pub(crate) fn level_bounds(&self, level: Level) -> (u32, u32, usize) {
        let (ends, start) = self.header();
        let first = match level {
            Level::Low => 0,
            Level::Orchestrator => ends[Level::Low],
            Level::High => ends[Level::Orchestrator],
            Level::Standard => ends[Level::High],
        };
        (first, ends[level], (0..first).fold(start, |pos, _| self.span(pos).1))
    }

    /// Counts its tags, every level.
    pub(crate) fn count(&self) -> u32 {
        self.header().0[Level::Standard]
    }

    /// Tells whether it holds no tag.
    pub(crate) fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Tells whether both are the same allocation.
    pub(crate) fn ptr_eq(a: &Self, b: &Self) -> bool {
        arcstr::ArcStr::ptr_eq(&a.0, &b.0)
    }

    /// Counts the handles on its allocation (0 for the empty part, which is static).
    pub(crate) fn handles(&self) -> usize {
        arcstr::ArcStr::strong_count(&self.0).unwrap_or(0)
    }

    /// Returns the bytes of its allocation (the count and length, the counts and the tags);
    /// none for the empty part.
    #[cfg(feature = "memory-accounting")]
    pub(crate) fn heap_bytes(&self) -> usize {
        if self.handles() == 0 { 0 } else { 2 * std::mem::size_of::<usize>() + self.0.len() }
    }

    /// Returns where its allocation is, to count a shared part once.
    #[cfg(feature = "memory-accounting")]
    pub(crate) fn addr(&self) -> *const u8 {
        self.0.as_ptr()
    }
}

impl fmt::Debug for EntityTags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(Level::ALL.into_iter().flat_map(|l| self.level(l)).map(|(_, tag)| tag)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let level = |l: Level| part.level(l).map(|(_, t)| t.to_owned()).collect::<Vec<_>>();
        assert_eq!(level(Level::Low), ["a:1", short.as_str(), "nul:\0inside"]);
        assert_eq!(level(Level::Orchestrator), [wide.as_str()]);
        assert_eq!(level(Level::High), ["id:ü"], "a tag longer than a length char can say is left out");
        assert_eq!(level(Level::Standard), ["env:prod"]);
        assert_eq!(part.count(), 6);
        assert_eq!(part.level(Level::High).next().map(|(i, _)| i), Some(4), "indices count through the levels");
    }

    #[test]
    fn counts_past_the_surrogates_read_back() {
        for n in [0u16, 127, 128, 0xD7FF, 0xD800, 0xDFFF, 0xE000, u16::MAX] {
            assert_eq!(count_of(count_char(n)), u32::from(n), "{n:#x}");
        }
    }

    #[test]
    fn the_empty_part_is_static_and_a_skipped_tag_is_reported() {
        let empty = EntityTags::build(&TagInfo::default());
        assert!(empty.is_empty() && empty.handles() == 0);
        let info = TagInfo { high: vec!["container_id:c".into(), "x:1".into()], ..TagInfo::default() };
        let (part, skipped) = EntityTags::build_without(&info, Some("container_id:c"));
        assert!(skipped);
        assert_eq!(part.level(Level::High).map(|(_, t)| t).collect::<Vec<_>>(), ["x:1"]);
        assert!(!EntityTags::build_without(&info, Some("y:1")).1);
    }
}
