//! Tag subscribers: who follows which entities' tags, and how a change reaches them.

use std::fmt;
use std::sync::Mutex;

use tokio::sync::mpsc::{self, error::TrySendError};
use wm_core::sync::MutexExt;

use super::key::TagKey;
use super::view::Tags;
use crate::tags::TagCardinality;

/// Says what happened to an entity's tags.
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

/// Names an entity whose merged tags changed, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagChange {
    /// The entity got its first tags.
    Added(TagKey),
    /// Its tags changed.
    Modified(TagKey),
    /// It has no tags any more.
    Deleted(TagKey),
}

/// One subscriber: the ids it follows, at which cardinality, and its channel.
struct TagSubscriber {
    prefix: String,
    cardinality: TagCardinality,
    tx: mpsc::Sender<Vec<TagEvent>>,
}

impl fmt::Debug for TagSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TagSubscriber").field("prefix", &self.prefix).field("cardinality", &self.cardinality).finish()
    }
}

/// The tag store's subscribers.
#[derive(Debug, Default)]
pub(crate) struct Subscribers(Mutex<Vec<TagSubscriber>>);

impl Subscribers {
    /// Adds a subscriber to entities whose id starts with `prefix`, at `cardinality`, and
    /// forgets those whose receiver is gone (otherwise, while no tag changes, clients that come
    /// and go would pile up until the next change).
    pub(crate) fn add(&self, prefix: &str, cardinality: TagCardinality, tx: mpsc::Sender<Vec<TagEvent>>) {
        let mut subscribers = self.0.locked();
        subscribers.retain(|sub| !sub.tx.is_closed());
        subscribers.push(TagSubscriber { prefix: prefix.to_owned(), cardinality, tx });
    }

    /// Sends `changes` to every subscriber that follows some of their entities, as one message
    /// each, with the tags `tags` reads at the subscriber's cardinality.
    ///
    /// A subscriber whose channel is full is dropped (its channel closes) rather than holding
    /// the writers back; a closed one is forgotten.
    pub(crate) fn notify(&self, changes: &[TagChange], tags: impl Fn(&TagKey, TagCardinality) -> Tags) {
        let mut subscribers = self.0.locked();
        if subscribers.is_empty() || changes.is_empty() {
            return;
        }
        let changes: Vec<(TagEventKind, &TagKey, String)> = changes
            .iter()
            .map(|change| {
                let (kind, key) = match change {
                    TagChange::Added(e) => (TagEventKind::Added, e),
                    TagChange::Modified(e) => (TagEventKind::Modified, e),
                    TagChange::Deleted(e) => (TagEventKind::Deleted, e),
                };
                (kind, key, key.to_string())
            })
            .collect();
        subscribers.retain(|sub| {
            let events: Vec<TagEvent> = changes
                .iter()
                .filter(|(_, _, entity)| entity.starts_with(&sub.prefix))
                .map(|(kind, key, entity)| {
                    let tags =
                        if *kind == TagEventKind::Deleted { Vec::new() } else { tags(key, sub.cardinality).to_vec() };
                    TagEvent { kind: *kind, entity: entity.clone(), tags }
                })
                .collect();
            if events.is_empty() {
                return !sub.tx.is_closed();
            }
            match sub.tx.try_send(events) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(prefix = sub.prefix, "tag subscriber fell behind and was dropped");
                    false
                }
                Err(TrySendError::Closed(_)) => false,
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_a_subscriber_forgets_those_whose_receiver_is_gone() {
        let subscribers = Subscribers::default();
        for _ in 0..100 {
            let (tx, rx) = mpsc::channel(1);
            subscribers.add("container_id://", TagCardinality::Low, tx);
            drop(rx);
        }
        let (tx, _rx) = mpsc::channel(1);
        subscribers.add("", TagCardinality::High, tx);
        assert_eq!(subscribers.0.locked().len(), 1, "only the open subscriber is kept");
    }
}
