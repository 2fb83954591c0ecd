//! The stored entities: each source's version and the merged view, and the changes an update makes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use wm_core::merge::{merge, overlay};
use wm_core::{Entity, EntityId, Event, EventType, Filter, Id, Kind, Origin, Source};

/// A collector's name, interned by the state: versions carry 2 bytes, not an `Arc`.
pub(crate) type CollectorIndex = u16;

/// One source's version of an entity, and which collector of that source said it.
#[derive(Debug)]
pub(crate) struct Version {
    pub(crate) source: Source,
    pub(crate) collector: CollectorIndex,
    pub(crate) entity: Entity,
}

/// At most one version per source, in source precedence order. Nearly every entity is known
/// by one source: that version sits inline in the record, with no allocation to reach.
#[derive(Debug)]
pub(crate) enum Versions {
    One(Version),
    Many(Vec<Version>),
}

impl Versions {
    pub(crate) fn as_slice(&self) -> &[Version] {
        match self {
            Versions::One(v) => std::slice::from_ref(v),
            Versions::Many(vs) => vs,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Version] {
        match self {
            Versions::One(v) => std::slice::from_mut(v),
            Versions::Many(vs) => vs,
        }
    }

    fn position(&self, source: Source) -> Result<usize, usize> {
        self.as_slice().binary_search_by_key(&source, |v| v.source)
    }

    fn insert(&mut self, at: usize, version: Version) {
        let mut all = match std::mem::replace(self, Versions::Many(Vec::new())) {
            Versions::One(v) => vec![v],
            Versions::Many(vs) => vs,
        };
        // Exactly the room needed: a container known by two sources holds two versions, not
        // the four a doubling growth would leave.
        all.reserve_exact(1);
        all.insert(at, version);
        *self = Versions::Many(all);
    }

    /// Removes the version at `at`; `None` when it was the last one (the record goes).
    fn remove(&mut self, at: usize) -> Option<Version> {
        let Versions::Many(vs) = self else { return None };
        let removed = vs.remove(at);
        if vs.len() == 1
            && let Some(last) = vs.pop()
        {
            *self = Versions::One(last);
        }
        Some(removed)
    }
}

/// Everything known about one entity: each source's version. The merged view is not kept: it
/// is made when read, and when a change is told (a record known by one source, nearly all of
/// them, is its own merged view, with nothing made), so a container known by two sources holds
/// two versions and no third copy.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) versions: Versions,
}

impl Record {
    pub(crate) fn version(&self, source: Source) -> Option<&Entity> {
        self.versions.as_slice().iter().find(|v| v.source == source).map(|v| &v.entity)
    }

    /// The merged view of the current versions; the single version itself when only one
    /// source knows the entity (the common case: no allocation, no copy).
    pub(crate) fn merged(&self) -> Entity {
        let versions = self.versions.as_slice();
        if let [only] = versions {
            return only.entity.clone();
        }
        let ranked: Vec<(Source, &Entity)> = versions.iter().map(|v| (v.source, &v.entity)).collect();
        // A record holds at least one version, all of one kind and id: the merge has one.
        merge(&ranked).unwrap_or_else(|| versions[0].entity.clone())
    }

    /// Whether more than one source knows it (its merged view is made, not one of its versions).
    fn is_merged(&self) -> bool {
        matches!(self.versions, Versions::Many(_))
    }
}

/// What a merged-view subscriber hears when a record known by several sources changed: its new
/// merge, when that differs from the one before.
fn remerged(before: &Entity, record: &Record) -> MergedChange {
    let after = record.merged();
    if *before == after { MergedChange::Unchanged } else { MergedChange::Changed(set(after)) }
}

/// What a merged-view subscriber hears of a change.
#[derive(Debug, Clone)]
pub(crate) enum MergedChange {
    /// The same as the source's event: one source knows the entity (the common case, carried
    /// without a second reference).
    SameAsSource,
    /// The merge changed to this.
    Changed(Event),
    /// The merge did not change: nothing.
    Unchanged,
}

/// What one applied event changed, in both views a subscriber can have.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    /// The source that spoke.
    pub(crate) source: Source,
    /// What a subscriber filtered to that source hears.
    pub(crate) source_event: Event,
    /// What a merged-view subscriber hears.
    pub(crate) merged: MergedChange,
}

impl Change {
    /// Like [`Change::in_view`], taking the event out.
    pub(crate) fn into_view(self, view: Option<Source>) -> Option<Event> {
        match view {
            Some(source) if source == self.source => Some(self.source_event),
            Some(_) => None,
            None => match self.merged {
                MergedChange::SameAsSource => Some(self.source_event),
                MergedChange::Changed(event) => Some(event),
                MergedChange::Unchanged => None,
            },
        }
    }

    /// The event a subscriber of this view (the merge, or one source) hears, before its filter.
    pub(crate) fn in_view(&self, view: Option<Source>) -> Option<&Event> {
        match view {
            Some(source) if source == self.source => Some(&self.source_event),
            Some(_) => None,
            None => match &self.merged {
                MergedChange::SameAsSource => Some(&self.source_event),
                MergedChange::Changed(event) => Some(event),
                MergedChange::Unchanged => None,
            },
        }
    }
}

fn set(entity: Entity) -> Event {
    Event { event_type: EventType::Set, entity }
}

fn unset(entity: Entity) -> Event {
    Event { event_type: EventType::Unset, entity }
}

/// Ids come from local daemons and are hashed on every event: a fast hasher, not SipHash.
pub(crate) type IdMap<V> = HashMap<Id, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
pub(crate) struct State {
    kinds: [IdMap<Record>; Kind::COUNT],
    collectors: Vec<Arc<str>>,
}

impl State {
    pub(crate) fn records(&self, kind: Kind) -> &IdMap<Record> {
        &self.kinds[kind.index()]
    }

    fn records_mut(&mut self, kind: Kind) -> &mut IdMap<Record> {
        &mut self.kinds[kind.index()]
    }

    pub(crate) fn get(&self, id: &EntityId) -> Option<&Record> {
        self.records(id.kind).get(&id.id)
    }

    /// The index of a collector's name, interned on first use.
    pub(crate) fn collector_index(&mut self, name: &Arc<str>) -> CollectorIndex {
        let at = match self.collectors.iter().position(|c| c == name) {
            Some(at) => at,
            None => {
                self.collectors.push(name.clone());
                self.collectors.len() - 1
            }
        };
        CollectorIndex::try_from(at).unwrap_or(CollectorIndex::MAX)
    }

    pub(crate) fn collector_name(&self, index: CollectorIndex) -> &str {
        self.collectors.get(usize::from(index)).map_or("", |c| c)
    }

    pub(crate) fn len(&self) -> usize {
        self.kinds.iter().map(|k| k.len()).sum()
    }

    /// Applies one event said by `source` through collector `collector`. `None` when it changes
    /// nothing a subscriber could hear.
    pub(crate) fn apply(
        &mut self,
        event_type: EventType,
        source: Source,
        collector: CollectorIndex,
        entity: Entity,
    ) -> Option<Change> {
        match event_type {
            EventType::Set => self.set(source, collector, entity),
            EventType::Unset => self.unset(source, &entity),
        }
    }

    fn set(&mut self, source: Source, collector: CollectorIndex, mut entity: Entity) -> Option<Change> {
        // One copy of each id, however many sources and containers name it: the owner's record's
        // key, and this record's.
        if let Some(owner) = entity.owner()
            && let Some((key, _)) = self.records(owner.kind).get_key_value(&owner.id)
        {
            let key = key.clone();
            entity.share_ids(None, Some(&key));
        }
        let records = self.records_mut(entity.kind());
        let Some(key) = records.get_key_value(entity.id_str()).map(|(key, _)| key.clone()) else {
            let version = Version { source, collector, entity: entity.clone() };
            records.insert(entity.id_str().clone(), Record { versions: Versions::One(version) });
            return Some(Change { source, source_event: set(entity), merged: MergedChange::SameAsSource });
        };
        entity.share_ids(Some(&key), None);
        let record = records.get_mut(&key)?;
        let position = record.versions.position(source);
        if let Ok(i) = position {
            let version = &mut record.versions.as_mut_slice()[i];
            version.collector = collector;
            if version.entity.ptr_eq(&entity) || version.entity == entity {
                return None;
            }
        }
        // The merge before the change, to tell whether it changed (a sole version is its own
        // merge: nothing is made).
        let before = record.merged();
        match position {
            Ok(i) => record.versions.as_mut_slice()[i].entity = entity.clone(),
            Err(i) => record.versions.insert(i, Version { source, collector, entity: entity.clone() }),
        }
        let merged = if record.is_merged() {
            remerged(&before, record)
        } else {
            // The sole version was replaced by a different one: it is the new merge.
            MergedChange::SameAsSource
        };
        Some(Change { source, source_event: set(entity), merged })
    }

    fn unset(&mut self, source: Source, payload: &Entity) -> Option<Change> {
        let kind = payload.kind();
        let records = self.records_mut(kind);
        let record = records.get_mut(payload.id_str())?;
        let i = record.versions.position(source).ok()?;
        let before = record.merged();
        let (source_event, merged) = match record.versions.remove(i) {
            Some(removed) => (unset(overlay(payload, &removed.entity)), remerged(&before, record)),
            None => {
                let record = records.remove(payload.id_str())?;
                // `remove` gives `None` only for a sole version, which was its own merge.
                let Versions::One(last) = record.versions else { return None };
                (unset(overlay(payload, &last.entity)), MergedChange::SameAsSource)
            }
        };
        Some(Change { source, source_event, merged })
    }

    /// Replaces what `origin` said with `entities`: unsets what it said and the list lacks (but
    /// not the `keep` ids, listed yet unreadable this time), sets the rest; changes come in
    /// (kind, id) order.
    pub(crate) fn reset(&mut self, origin: &Origin, entities: Vec<Entity>, keep: &[EntityId]) -> Vec<Change> {
        let collector = self.collector_index(&origin.collector);
        let keep: HashSet<&EntityId> = keep.iter().collect();
        let mut wanted: HashMap<EntityId, Entity> = HashMap::with_capacity(entities.len());
        for entity in entities {
            wanted.insert(entity.id(), entity);
        }
        let mut ops: Vec<(EntityId, Option<Entity>)> = Vec::new();
        for kind in Kind::ALL {
            for (id, record) in self.records(kind) {
                let said_by_origin =
                    record.versions.as_slice().iter().any(|v| v.source == origin.source && v.collector == collector);
                let entity_id = EntityId { kind, id: id.clone() };
                if said_by_origin && !wanted.contains_key(&entity_id) && !keep.contains(&entity_id) {
                    ops.push((entity_id, None));
                }
            }
        }
        ops.extend(wanted.into_iter().map(|(id, e)| (id, Some(e))));
        ops.sort_by(|a, b| a.0.cmp(&b.0));
        ops.into_iter()
            .filter_map(|(id, entity)| match entity {
                Some(entity) => self.set(origin.source, collector, entity),
                None => self.unset(origin.source, &Entity::empty(&id)),
            })
            .collect()
    }

    /// One `Set` per stored entity that passes `filter`, in (kind, id) order.
    pub(crate) fn snapshot(&self, filter: &Filter) -> Vec<Event> {
        if !filter.event_type().passes(EventType::Set) {
            return Vec::new();
        }
        let mut events = Vec::new();
        for kind in Kind::ALL.into_iter().filter(|k| filter.passes_kind(*k)) {
            let mut found: Vec<(&Id, Entity)> = self
                .records(kind)
                .iter()
                .filter_map(|(id, r)| match filter.source() {
                    None => Some((id, r.merged())),
                    Some(source) => r.version(source).map(|e| (id, e.clone())),
                })
                .filter(|(_, e)| filter.matches_entity(e))
                .collect();
            found.sort_unstable_by(|a, b| a.0.cmp(b.0));
            events.extend(found.into_iter().map(|(_, e)| set(e)));
        }
        events
    }
}
