//! This node's labels and annotations configured as tags (`kubernetes_node_labels_as_tags`,
//! `kubernetes_node_annotations_as_tags`) land on the node's entity and on the global entity;
//! a changed label replaces them, the node's removal deletes them after the grace period, and
//! other objects' metadata gives no tags.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tagger::{GLOBAL_ENTITY_ID, ManualClock, TagCardinality, Tagger, TaggerConfig};
use wm_core::{Entity, Event, EventType, KubernetesMetadata};

fn node(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Entity {
    Entity::from(KubernetesMetadata {
        id: KubernetesMetadata::node_id(name).into(),
        resource: KubernetesMetadata::NODES.into(),
        name: name.into(),
        labels: labels.iter().copied().collect(),
        annotations: annotations.iter().copied().collect(),
        ..KubernetesMetadata::default()
    })
}

fn tags(tagger: &Tagger, entity: &str, cardinality: TagCardinality) -> Vec<String> {
    let mut tags = tagger.tag(entity, cardinality).to_vec();
    tags.sort();
    tags
}

#[test]
fn node_labels_and_annotations_become_global_tags() {
    let config = TaggerConfig {
        kubernetes_node_labels_as_tags: BTreeMap::from([
            ("topology.kubernetes.io/zone".into(), "zone".into()),
            ("team".into(), "+owner".into()),
        ]),
        kubernetes_node_annotations_as_tags: BTreeMap::from([("wm/rack".into(), "rack".into())]),
        ..TaggerConfig::default()
    };
    let clock = Arc::new(ManualClock::default());
    let tagger = Tagger::with_clock(config.clone(), clock.clone());
    let labels = [("topology.kubernetes.io/zone", "eu-1a"), ("team", "infra"), ("unmapped", "x")];
    tagger.process(&[Event { event_type: EventType::Set, entity: node("n1", &labels, &[("wm/rack", "r7")]) }]);

    assert_eq!(tags(&tagger, GLOBAL_ENTITY_ID, TagCardinality::Low), ["rack:r7", "zone:eu-1a"]);
    assert_eq!(tags(&tagger, GLOBAL_ENTITY_ID, TagCardinality::High), ["owner:infra", "rack:r7", "zone:eu-1a"]);
    assert_eq!(tags(&tagger, "kubernetes_metadata:///nodes//n1", TagCardinality::Low), ["rack:r7", "zone:eu-1a"]);

    // A relabelled node replaces its tags wholesale.
    tagger.process(&[Event { event_type: EventType::Set, entity: node("n1", &[("team", "data")], &[]) }]);
    assert_eq!(tags(&tagger, GLOBAL_ENTITY_ID, TagCardinality::High), ["owner:data"]);

    // The node gone: its tags stay for the grace period, then are pruned.
    tagger.process(&[Event { event_type: EventType::Unset, entity: node("n1", &[], &[]) }]);
    assert_eq!(tags(&tagger, GLOBAL_ENTITY_ID, TagCardinality::High), ["owner:data"]);
    clock.advance(config.deletion_grace_period() + Duration::from_secs(1));
    tagger.store().prune();
    assert!(tagger.tag(GLOBAL_ENTITY_ID, TagCardinality::High).is_empty());

    // Another object's metadata (not a node) gives no tags.
    let other = Entity::from(KubernetesMetadata {
        id: KubernetesMetadata::id_of("", "namespaces", "", "shop").into(),
        resource: "namespaces".into(),
        labels: labels.iter().copied().collect(),
        ..KubernetesMetadata::default()
    });
    tagger.process(&[Event { event_type: EventType::Set, entity: other }]);
    assert!(tagger.tag(GLOBAL_ENTITY_ID, TagCardinality::High).is_empty());
}
