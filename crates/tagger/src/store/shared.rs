//! The parts of tags that many entities share, each kept once.
//!
//! An image's tags are the same on every container that runs it, the pods of one template share
//! all their tags but their names, and so do those pods' namesake containers. Each such
//! part is a [`SharedPart`]: the interner's copy of its packed tags, so that equal parts are one
//! allocation however many entities and sources hold them. The part leaves the interner when the
//! last record that holds it is freed (wm-core's `intern` module gives the rule).

use std::ops::Deref;

use wm_core::intern::{Interner, Kept};

use super::packed::EntityTags;
use crate::tags::TagInfo;

/// The shared parts in use, across every tagger in the process.
static PARTS: Interner<EntityTags> = Interner::new();

impl Kept for EntityTags {
    type Key = str;

    fn references(&self) -> usize {
        self.handles()
    }

    fn is(&self, other: &Self) -> bool {
        EntityTags::ptr_eq(self, other)
    }
}

/// A part of tags many entities share: the interner's copy, given back to it on drop.
#[derive(Clone, Debug)]
pub(crate) struct SharedPart(EntityTags);

impl SharedPart {
    /// Packs `tags` and returns the interner's copy; `None` for no tags.
    pub(crate) fn new(tags: &TagInfo) -> Option<Self> {
        Some(Self::intern(EntityTags::build(tags))).filter(|part| !part.is_empty())
    }

    /// Returns the interner's copy of `tags`, adding `tags` when it is new.
    pub(crate) fn intern(tags: EntityTags) -> Self {
        if tags.is_empty() {
            // The empty part is a static string: there is nothing to share.
            return Self(tags);
        }
        Self(PARTS.intern(tags))
    }

    /// Counts the distinct parts interned now, across every tagger in the process.
    pub(crate) fn interned() -> usize {
        PARTS.len()
    }

    /// Tells whether a part with exactly these tags is interned now (for tests).
    #[cfg(test)]
    pub(crate) fn is_interned(tags: &TagInfo) -> bool {
        let part = EntityTags::build(tags);
        PARTS.contains(std::borrow::Borrow::<str>::borrow(&part))
    }
}

impl Deref for SharedPart {
    type Target = EntityTags;

    fn deref(&self) -> &EntityTags {
        &self.0
    }
}

impl Drop for SharedPart {
    /// Gives the reference back to the interner, which removes the part when no record holds
    /// it any more.
    fn drop(&mut self) {
        let part = std::mem::take(&mut self.0);
        if !part.is_empty() {
            PARTS.release(part);
        }
    }
}

/// The parts of a source's tags that other entities share, read before the source's own tags.
///
/// What they hold depends on the source:
/// - a container's runtime tags: its image's tags (`broad`), then its name's (`narrow`);
/// - a pod's tags: its name (`broad`), then the rest (`narrow`), which the pods of one template
///   in one namespace share; on one of its containers, its name (`broad`), then the rest and the
///   tags the container shares with its namesakes in those pods (`narrow`);
/// - a task's or object's tags, on itself and on each of its containers: its own tags (`broad`).
#[derive(Clone, Debug, Default)]
pub(crate) struct SharedParts {
    /// Read first: the tags of a group of entities (an image, an owner).
    pub(crate) broad: Option<SharedPart>,
    /// Read second: the tags of a smaller group (a container name, a template's container).
    pub(crate) narrow: Option<SharedPart>,
}

impl SharedParts {
    /// Drops a part with no tag: it would be a slot to skip on every read.
    pub(crate) fn without_empty(self) -> Self {
        let keep = |part: Option<SharedPart>| part.filter(|p| !p.is_empty());
        Self { broad: keep(self.broad), narrow: keep(self.narrow) }
    }

    /// Tells whether both hold the same tags: the same allocations, or equal text.
    pub(crate) fn same_as(&self, other: &SharedParts) -> bool {
        let same = |a: &Option<SharedPart>, b: &Option<SharedPart>| match (a, b) {
            (Some(a), Some(b)) => EntityTags::ptr_eq(a, b) || **a == **b,
            (None, None) => true,
            _ => false,
        };
        same(&self.broad, &other.broad) && same(&self.narrow, &other.narrow)
    }
}
