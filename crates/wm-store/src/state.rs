//! Holds the stored entities, each as its sources' versions, and works out what each update
//! changes, both in the merged view and in the view of the source that sent it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use wm_core::merge::{merge, overlay};
use wm_core::{Entity, EntityId, Event, EventType, Filter, Id, Kind, Origin, Source};

/// The index of a collector's name in the state's list of names.
///
/// Every version records the collector that last set it. An index takes 2 bytes in each
/// version, where an `Arc<str>` would take 16.
pub(crate) type CollectorIndex = u16;

/// One source's version of an entity, and which collector of that source last set it.
#[derive(Debug)]
pub(crate) struct Version {
    pub(crate) source: Source,
    pub(crate) collector: CollectorIndex,
    pub(crate) entity: Entity,
}

/// The versions of one entity: at most one per source, sorted in source precedence order.
///
/// Nearly every entity is known by one source only, so that case (`One`) stores its version
/// inline in the record instead of in a `Vec`, which would cost a heap allocation per entity.
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

    /// Returns the index of `source`'s version, or as `Err` the index where it would go.
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

    /// Removes and returns the version at `at`, going back to `One` when a single version is left.
    ///
    /// Returns `None`, and removes nothing, when the entity has a single version: a record never
    /// holds zero versions, so the caller removes the whole record instead.
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

/// Holds everything known about one entity: each source's version.
///
/// The merged view is not stored. It is computed when the entity is read, and when an update is
/// applied (to tell whether the merged view changed). A record with a single version, which is
/// nearly all of them, is its own merged view, so nothing is computed; and a container known by
/// two sources holds its two versions and no third, merged copy.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) versions: Versions,
}

impl Record {
    /// Returns `source`'s version of the entity, if that source knows it.
    pub(crate) fn version(&self, source: Source) -> Option<&Entity> {
        self.versions.as_slice().iter().find(|v| v.source == source).map(|v| &v.entity)
    }

    /// Returns the merged view of the current versions.
    ///
    /// When only one source knows the entity (the common case) this is that version itself:
    /// cloning an `Entity` clones an `Arc`, so nothing is allocated or merged.
    pub(crate) fn merged(&self) -> Entity {
        let versions = self.versions.as_slice();
        if let [only] = versions {
            return only.entity.clone();
        }
        let ranked: Vec<(Source, &Entity)> = versions.iter().map(|v| (v.source, &v.entity)).collect();
        // A record holds at least one version, all of one kind and id, so `merge` always
        // returns `Some`; the fallback only avoids a panic.
        merge(&ranked).unwrap_or_else(|| versions[0].entity.clone())
    }

    /// Tells whether more than one source knows the entity, so that its merged view must be
    /// computed instead of taken from its only version.
    fn is_merged(&self) -> bool {
        matches!(self.versions, Versions::Many(_))
    }
}

/// Works out what a subscriber of the merged view receives after a change to a record that
/// several sources knew.
///
/// Returns a `Set` of the new merged view when it differs from `before`, the merged view before
/// the change; otherwise [`MergedChange::Unchanged`].
fn remerged(before: &Entity, record: &Record) -> MergedChange {
    let after = record.merged();
    if *before == after { MergedChange::Unchanged } else { MergedChange::Changed(set(after)) }
}

/// What a subscriber of the merged view receives for one change.
#[derive(Debug, Clone)]
pub(crate) enum MergedChange {
    /// The source's own event: the entity has (or had) a single version, which is its own merged
    /// view. This is the common case, and it stores no second copy of the event.
    SameAsSource,
    /// The merged view changed; this event carries the new one.
    Changed(Event),
    /// The merged view did not change: a subscriber of it receives nothing.
    Unchanged,
}

/// What one applied event changed, as seen in each view a subscriber can follow: the merged view,
/// or the versions of one source.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    /// The source whose event was applied.
    pub(crate) source: Source,
    /// The event a subscriber of that source's versions receives.
    pub(crate) source_event: Event,
    /// What a subscriber of the merged view receives.
    pub(crate) merged: MergedChange,
}

impl Change {
    /// Returns the event a subscriber of `view` receives, like [`Change::in_view`], but moves it
    /// out instead of borrowing it.
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

    /// Returns the event a subscriber of `view` receives, before its own filter is applied.
    ///
    /// `view` is `None` for the merged view, or the one source whose versions the subscriber
    /// follows. Returns `None` when the change does not show in that view.
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

/// Maps ids to values with a fast hasher instead of the standard library's SipHash.
///
/// Ids are hashed on every event. SipHash guards against keys crafted to collide, but ids come
/// from local daemons, so the faster hash is worth it.
pub(crate) type IdMap<V> = HashMap<Id, V, foldhash::fast::RandomState>;

/// Holds every record, by kind and then by id, and the names of the collectors that set them.
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

    /// Returns the record of the entity with this id, if it is stored.
    pub(crate) fn get(&self, id: &EntityId) -> Option<&Record> {
        self.records(id.kind).get(&id.id)
    }

    /// Returns the index of a collector's name, adding the name to the list on first use.
    ///
    /// The search is linear: a store has one name per collector, plus the empty name of direct
    /// calls. From the 65,536th name on, every name gets the index `u16::MAX`.
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

    /// Returns the collector name at `index`, or an empty name for an unknown index.
    pub(crate) fn collector_name(&self, index: CollectorIndex) -> &str {
        self.collectors.get(usize::from(index)).map_or("", |c| c)
    }

    /// Returns how many entities are stored.
    pub(crate) fn len(&self) -> usize {
        self.kinds.iter().map(|k| k.len()).sum()
    }

    /// Applies one event from `source`, sent by the collector at index `collector`.
    ///
    /// Returns `None` when the event changes nothing a subscriber could receive: a `Set` equal to
    /// the stored version (which still records `collector` as its setter), or an `Unset` of a
    /// version that is not stored.
    pub(crate) fn apply(
        &mut self,
        event_type: EventType,
        source: Source,
        collector: CollectorIndex,
        entity: Entity,
    ) -> Option<Change> {
        match event_type {
            EventType::Set => self.set(source, collector, entity),
            EventType::Unset => self.unset(source, entity),
        }
    }

    fn set(&mut self, source: Source, collector: CollectorIndex, mut entity: Entity) -> Option<Change> {
        // Keep one copy of each id string, however many sources and containers name it: the
        // entity takes its owner's record key as its owner id here, and its own record's key as
        // its id below.
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
        // The merged view before the change, to compare with the one after. With a single
        // version this clones that version and merges nothing.
        let before = record.merged();
        match position {
            Ok(i) => record.versions.as_mut_slice()[i].entity = entity.clone(),
            Err(i) => record.versions.insert(i, Version { source, collector, entity: entity.clone() }),
        }
        let merged = if record.is_merged() {
            remerged(&before, record)
        } else {
            // The single version was replaced by a different one, which is also the new merged
            // view.
            MergedChange::SameAsSource
        };
        Some(Change { source, source_event: set(entity), merged })
    }

    fn unset(&mut self, source: Source, payload: Entity) -> Option<Change> {
        let kind = payload.kind();
        let records = self.records_mut(kind);
        let record = records.get_mut(payload.id_str())?;
        let i = record.versions.position(source).ok()?;
        let before = record.merged();
        let (source_event, merged) = match record.versions.remove(i) {
            Some(removed) => (unset(overlay(payload, &removed.entity)), remerged(&before, record)),
            None => {
                let record = records.remove(payload.id_str())?;
                // `remove` returns `None` only for a single version, which was its own merged
                // view: the source's unset is also the merged view's.
                let Versions::One(last) = record.versions else { return None };
                (unset(overlay(payload, &last.entity)), MergedChange::SameAsSource)
            }
        };
        Some(Change { source, source_event, merged })
    }

    /// Replaces everything `origin` has set with `entities`, a full list, and returns the changes
    /// in (kind, id) order.
    ///
    /// Unsets every `origin.source` version last set by `origin.collector` whose entity is in
    /// neither `entities` nor `keep`. `keep` names entities the collector saw but could not read
    /// this time: their versions stay as they were. Sets every entity of `entities`.
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
                None => self.unset(origin.source, Entity::empty(&id)),
            })
            .collect()
    }

    /// Returns one `Set` per stored entity that passes `filter`, in (kind, id) order.
    ///
    /// Each event carries the merged view, or, when the filter names a source, that source's
    /// version (entities the source does not know are left out). Returns an empty list when the
    /// filter does not pass `Set` events.
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
