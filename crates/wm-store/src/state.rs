//! The stored entities: each source's version and the merged view, and the changes an update makes.

use std::collections::HashMap;
use std::sync::Arc;

use wm_core::merge::{merge, overlay};
use wm_core::{Entity, EntityId, Event, EventType, Filter, Kind, Origin, Source};

/// One source's version of an entity, and which collector of that source said it.
#[derive(Debug)]
pub(crate) struct Version {
    pub(crate) source: Source,
    pub(crate) collector: Arc<str>,
    pub(crate) entity: Entity,
}

/// Everything known about one entity.
#[derive(Debug)]
pub(crate) struct Record {
    /// At most one per source, in source precedence order.
    pub(crate) versions: Vec<Version>,
    pub(crate) merged: Entity,
}

impl Record {
    pub(crate) fn version(&self, source: Source) -> Option<&Entity> {
        self.versions.iter().find(|v| v.source == source).map(|v| &v.entity)
    }

    fn remerge(&self) -> Option<Entity> {
        let versions: Vec<(Source, &Entity)> = self.versions.iter().map(|v| (v.source, &v.entity)).collect();
        merge(&versions)
    }
}

/// What one applied event changed, in both views a subscriber can have.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    /// The source that spoke.
    pub(crate) source: Source,
    /// What a subscriber filtered to that source hears.
    pub(crate) source_event: Event,
    /// What a merged-view subscriber hears; `None` when the merge did not change.
    pub(crate) merged_event: Option<Event>,
}

impl Change {
    /// The event a subscriber with `filter` hears, if any.
    pub(crate) fn view(&self, filter: &Filter) -> Option<&Event> {
        let event = match filter.source() {
            Some(source) if source == self.source => Some(&self.source_event),
            Some(_) => None,
            None => self.merged_event.as_ref(),
        }?;
        filter.matches(event.event_type, &event.entity).then_some(event)
    }
}

fn set(entity: Entity) -> Event {
    Event { event_type: EventType::Set, entity }
}

fn unset(entity: Entity) -> Event {
    Event { event_type: EventType::Unset, entity }
}

#[derive(Debug, Default)]
pub(crate) struct State {
    kinds: [HashMap<Arc<str>, Record>; 3],
}

fn slot(kind: Kind) -> usize {
    match kind {
        Kind::Container => 0,
        Kind::EcsTask => 1,
        Kind::KubernetesPod => 2,
    }
}

impl State {
    pub(crate) fn records(&self, kind: Kind) -> &HashMap<Arc<str>, Record> {
        &self.kinds[slot(kind)]
    }

    fn records_mut(&mut self, kind: Kind) -> &mut HashMap<Arc<str>, Record> {
        &mut self.kinds[slot(kind)]
    }

    pub(crate) fn get(&self, id: &EntityId) -> Option<&Record> {
        self.records(id.kind).get(&id.id)
    }

    pub(crate) fn len(&self) -> usize {
        self.kinds.iter().map(HashMap::len).sum()
    }

    /// Applies one event. `None` when it changes nothing a subscriber could hear.
    pub(crate) fn apply(&mut self, event_type: EventType, origin: &Origin, entity: Entity) -> Option<Change> {
        match event_type {
            EventType::Set => self.set(origin, entity),
            EventType::Unset => self.unset(origin.source, &entity),
        }
    }

    fn set(&mut self, origin: &Origin, entity: Entity) -> Option<Change> {
        let source = origin.source;
        let records = self.records_mut(entity.kind());
        let Some(record) = records.get_mut(entity.id_str()) else {
            let version = Version { source, collector: origin.collector.clone(), entity: entity.clone() };
            records.insert(entity.id_str().clone(), Record { versions: vec![version], merged: entity.clone() });
            return Some(Change { source, source_event: set(entity.clone()), merged_event: Some(set(entity)) });
        };
        match record.versions.binary_search_by_key(&source, |v| v.source) {
            Ok(i) => {
                let version = &mut record.versions[i];
                version.collector.clone_from(&origin.collector);
                if version.entity.ptr_eq(&entity) || version.entity == entity {
                    return None;
                }
                version.entity = entity.clone();
            }
            Err(i) => {
                record.versions.insert(i, Version { source, collector: origin.collector.clone(), entity: entity.clone() })
            }
        }
        let merged_event = record.remerge().filter(|m| *m != record.merged).map(|m| {
            record.merged = m.clone();
            set(m)
        });
        Some(Change { source, source_event: set(entity), merged_event })
    }

    fn unset(&mut self, source: Source, payload: &Entity) -> Option<Change> {
        let kind = payload.kind();
        let records = self.records_mut(kind);
        let record = records.get_mut(payload.id_str())?;
        let i = record.versions.binary_search_by_key(&source, |v| v.source).ok()?;
        let removed = record.versions.remove(i);
        let source_event = unset(overlay(payload, &removed.entity));
        let merged_event = if record.versions.is_empty() {
            let last = overlay(payload, &record.merged);
            records.remove(payload.id_str());
            Some(unset(last))
        } else {
            record.remerge().filter(|m| *m != record.merged).map(|m| {
                record.merged = m.clone();
                set(m)
            })
        };
        Some(Change { source, source_event, merged_event })
    }

    /// Replaces what `origin` said with `entities`: unsets what it said and the list lacks, sets
    /// the rest; changes come in (kind, id) order.
    pub(crate) fn reset(&mut self, origin: &Origin, entities: Vec<Entity>) -> Vec<Change> {
        let mut wanted: HashMap<EntityId, Entity> = HashMap::with_capacity(entities.len());
        for entity in entities {
            wanted.insert(entity.id(), entity);
        }
        let mut ops: Vec<(EntityId, Option<Entity>)> = Vec::new();
        for kind in Kind::ALL {
            for (id, record) in self.records(kind) {
                let said_by_origin =
                    record.versions.iter().any(|v| v.source == origin.source && v.collector == origin.collector);
                let entity_id = EntityId { kind, id: id.clone() };
                if said_by_origin && !wanted.contains_key(&entity_id) {
                    ops.push((entity_id, None));
                }
            }
        }
        ops.extend(wanted.into_iter().map(|(id, e)| (id, Some(e))));
        ops.sort_by(|a, b| a.0.cmp(&b.0));
        ops.into_iter()
            .filter_map(|(id, entity)| match entity {
                Some(entity) => self.set(origin, entity),
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
            let mut found: Vec<(&Arc<str>, &Entity)> = self
                .records(kind)
                .iter()
                .filter_map(|(id, r)| match filter.source() {
                    None => Some((id, &r.merged)),
                    Some(source) => r.version(source).map(|e| (id, e)),
                })
                .filter(|(_, e)| filter.matches_entity(e))
                .collect();
            found.sort_unstable_by(|a, b| a.0.cmp(b.0));
            events.extend(found.into_iter().map(|(_, e)| set(e.clone())));
        }
        events
    }
}
