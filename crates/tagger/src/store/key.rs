//! How the tag store keys an entity: its prefix's map, and the rest of its id.

use std::fmt;

use wm_core::Id;

use crate::entity_id::TagPrefix;

/// Keys an entity in the tag store: the map of its prefix, and the rest of its id.
///
/// The rest of a container's or pod's id is the workload store's own [`Id`], so the two stores
/// hold one copy of its text between them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TagKey {
    pub(crate) prefix: TagPrefix,
    pub(crate) uid: Id,
}

impl TagKey {
    /// Returns the key of an id written as text (`container_id://…`).
    pub fn parse(entity: &str) -> Self {
        let (prefix, uid) = TagPrefix::split(entity);
        Self { prefix, uid: Id::from(uid) }
    }

    /// Returns the key of a workload store entity, sharing its id.
    pub fn of(id: &wm_core::EntityId) -> Self {
        Self { prefix: TagPrefix::of_kind(id.kind), uid: id.id.clone() }
    }

    /// Returns the key of the container `id`, sharing it.
    pub fn container(id: Id) -> Self {
        Self { prefix: TagPrefix::Container, uid: id }
    }

    /// Returns the entity's id tag, if its kind has one: a container's `container_id:<id>`,
    /// which each of its sources gives and its record holds once.
    pub(crate) fn id_tag(&self) -> Option<String> {
        (self.prefix == TagPrefix::Container).then(|| format!("container_id:{}", self.uid))
    }
}

impl fmt::Display for TagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix.scheme())?;
        f.write_str(&self.uid)
    }
}
