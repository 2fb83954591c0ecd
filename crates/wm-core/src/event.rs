//! Events into and out of the store, subscriber filters and priorities.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::entity::{Entity, Kind, Source};

/// Whether an entity was set (created or changed) or unset (removed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// Created or changed.
    Set,
    /// Removed.
    Unset,
}

/// One set or unset of one entity, as a collector (or any caller of the store's `notify`)
/// reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct CollectorEvent {
    /// Set or unset.
    pub event_type: EventType,
    /// The source that reports it.
    pub source: Source,
    /// The entity; for an unset, at least its id, plus any fields to lay over the last version
    /// (a runtime's exit code and finish time).
    pub entity: Entity,
}

impl CollectorEvent {
    /// Creates a set of `entity`, reported by `source`.
    pub fn set(source: Source, entity: impl Into<Entity>) -> Self {
        Self { event_type: EventType::Set, source, entity: entity.into() }
    }

    /// Creates an unset of `entity`, reported by `source`.
    pub fn unset(source: Source, entity: impl Into<Entity>) -> Self {
        Self { event_type: EventType::Unset, source, entity: entity.into() }
    }
}

/// What a subscriber receives about one entity.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Set or unset.
    pub event_type: EventType,
    /// The subscriber's view of the entity: the merge of every source, or the one source its
    /// filter names. For an unset, the last known entity with the unset payload laid over it.
    pub entity: Entity,
}

/// The order in which the store serves subscribers.
///
/// For each batch, the subscribers of one priority are served together; those of the next
/// priority are served once they have acknowledged it or the acknowledgement timeout has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriberPriority {
    /// The tagger: tags must exist before anything schedules work on a new container.
    Tagger,
    /// Autodiscovery's config providers.
    ConfigProvider,
    /// Everything else.
    Normal,
}

impl SubscriberPriority {
    /// Returns the name used in config, telemetry and the conformance files.
    pub const fn as_str(self) -> &'static str {
        match self {
            SubscriberPriority::Tagger => "tagger",
            SubscriberPriority::ConfigProvider => "config_provider",
            SubscriberPriority::Normal => "normal",
        }
    }
}

/// Which event types a filter passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventTypeFilter {
    /// Sets and unsets.
    #[default]
    All,
    /// Only sets.
    Set,
    /// Only unsets (the snapshot is then empty).
    Unset,
}

impl EventTypeFilter {
    /// Tells whether `event_type` passes.
    pub fn passes(self, event_type: EventType) -> bool {
        match self {
            EventTypeFilter::All => true,
            EventTypeFilter::Set => event_type == EventType::Set,
            EventTypeFilter::Unset => event_type == EventType::Unset,
        }
    }
}

/// A predicate over a stored entity.
pub type Predicate = Arc<dyn Fn(&Entity) -> bool + Send + Sync>;

#[derive(Clone)]
struct KindFilter {
    kind: Kind,
    predicate: Option<Predicate>,
}

/// What a subscriber wants to receive: some kinds (each with an optional predicate), the merged
/// view or one source's own versions, and some event types. The default passes every event of
/// the merged view.
#[derive(Clone, Default)]
pub struct Filter {
    kinds: Option<Vec<KindFilter>>,
    source: Option<Source>,
    event_type: EventTypeFilter,
}

impl Filter {
    /// Creates a filter that passes every event of the merged view.
    pub fn all() -> Self {
        Self::default()
    }

    /// Creates a filter of the merged view that passes exactly `kinds`, without predicates; with
    /// no kind it passes nothing.
    pub fn only_kinds(kinds: impl IntoIterator<Item = Kind>) -> Self {
        let kinds = kinds.into_iter().map(|kind| KindFilter { kind, predicate: None }).collect();
        Self { kinds: Some(kinds), ..Self::default() }
    }

    /// Adds `kind`, without a predicate, to the kinds the filter passes.
    ///
    /// A filter with no kind listed (such as [`Filter::all`]) passes every kind, so the first
    /// kind added narrows it to that kind.
    pub fn with_kind(mut self, kind: Kind) -> Self {
        self.kinds.get_or_insert_with(Vec::new).push(KindFilter { kind, predicate: None });
        self
    }

    /// Adds `kind` to the kinds the filter passes, for the entities where `predicate` holds.
    ///
    /// The predicate sees the stored entity (for an unset, the last known one), so an id-only
    /// unset payload still matches. Like [`Filter::with_kind`], the first kind added narrows a
    /// filter that passed every kind.
    pub fn with_kind_where(mut self, kind: Kind, predicate: impl Fn(&Entity) -> bool + Send + Sync + 'static) -> Self {
        self.kinds.get_or_insert_with(Vec::new).push(KindFilter { kind, predicate: Some(Arc::new(predicate)) });
        self
    }

    /// Makes the filter receive one source's own versions instead of the merged view.
    pub fn with_source(mut self, source: Source) -> Self {
        self.source = Some(source);
        self
    }

    /// Makes the filter pass only the event types `event_type` allows.
    pub fn with_event_type(mut self, event_type: EventTypeFilter) -> Self {
        self.event_type = event_type;
        self
    }

    /// Tells whether every event of the filter's view passes: every kind (so no predicate) and
    /// every event type.
    pub fn passes_everything(&self) -> bool {
        self.kinds.is_none() && self.event_type == EventTypeFilter::All
    }

    /// Returns the source whose own versions this filter receives, or `None` for the merged view.
    pub fn source(&self) -> Option<Source> {
        self.source
    }

    /// Returns the event types this filter passes.
    pub fn event_type(&self) -> EventTypeFilter {
        self.event_type
    }

    /// Tells whether `entity` is of a kind the filter passes and satisfies that kind's predicate.
    pub fn matches_entity(&self, entity: &Entity) -> bool {
        match &self.kinds {
            None => true,
            Some(kinds) => {
                kinds.iter().any(|k| k.kind == entity.kind() && k.predicate.as_ref().is_none_or(|p| p(entity)))
            }
        }
    }

    /// Tells whether the filter passes `kind`, before any predicate.
    pub fn passes_kind(&self, kind: Kind) -> bool {
        self.kinds.as_ref().is_none_or(|kinds| kinds.iter().any(|k| k.kind == kind))
    }

    /// Tells whether an event of `event_type` about `entity` passes.
    pub fn matches(&self, event_type: EventType, entity: &Entity) -> bool {
        self.event_type.passes(event_type) && self.matches_entity(entity)
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds = self.kinds.as_ref().map(|ks| {
            ks.iter().map(|k| (k.kind, if k.predicate.is_some() { "where" } else { "" })).collect::<Vec<_>>()
        });
        f.debug_struct("Filter")
            .field("kinds", &kinds)
            .field("source", &self.source)
            .field("event_type", &self.event_type)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::{Container, Runtime};

    #[test]
    fn kind_predicates_apply_only_to_their_kind() {
        let docker = Entity::from(Container { id: "a".into(), runtime: Some(Runtime::Docker), ..Default::default() });
        let podman = Entity::from(Container { id: "b".into(), runtime: Some(Runtime::Podman), ..Default::default() });
        let pod = Entity::from(crate::KubernetesPod { id: "p".into(), ..Default::default() });
        let f = Filter::all()
            .with_kind_where(Kind::Container, |e| e.as_container().is_some_and(|c| c.runtime == Some(Runtime::Docker)))
            .with_kind(Kind::KubernetesPod);
        assert!(f.matches(EventType::Set, &docker));
        assert!(!f.matches(EventType::Set, &podman));
        assert!(f.matches(EventType::Unset, &pod));
        assert!(!Filter::all().with_kind(Kind::EcsTask).matches(EventType::Set, &pod));
        assert!(!Filter::only_kinds([]).matches(EventType::Set, &pod));
        assert!(Filter::only_kinds([Kind::KubernetesPod]).matches(EventType::Set, &pod));
    }

    #[test]
    fn event_type_filters_pass_only_their_type() {
        let e = Entity::from(Container { id: "a".into(), ..Default::default() });
        let unset_only = Filter::all().with_event_type(EventTypeFilter::Unset);
        assert!(!unset_only.matches(EventType::Set, &e));
        assert!(unset_only.matches(EventType::Unset, &e));
        assert!(Filter::all().matches(EventType::Set, &e));
    }

    #[test]
    fn priorities_order_tagger_first() {
        let mut p = [SubscriberPriority::Normal, SubscriberPriority::Tagger, SubscriberPriority::ConfigProvider];
        p.sort();
        assert_eq!(p, [SubscriberPriority::Tagger, SubscriberPriority::ConfigProvider, SubscriberPriority::Normal]);
    }
}
