//! The tagger's entity ids: `<prefix>://<uid>` (`container_id://…`, `kubernetes_pod_uid://…`,
//! `ecs_task://…`, `internal://global-entity-id`), as the Datadog wire format splits them.

use std::fmt;

use wm_core::{Entity, EntityId, Kind};

/// A tagger entity id, typed: a prefix naming the kind and the uid within it. Its text form
/// (`Display`) is the key the tag store uses and the wire's `prefix` + `uid`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaggerEntityId {
    prefix: String,
    uid: String,
}

impl TaggerEntityId {
    /// The prefix of containers.
    pub const CONTAINER: &'static str = "container_id";
    /// The prefix of Kubernetes pods.
    pub const KUBERNETES_POD: &'static str = "kubernetes_pod_uid";
    /// The prefix of Kubernetes object metadata (`kubernetes_metadata:///nodes//<node>`).
    pub const KUBERNETES_METADATA: &'static str = "kubernetes_metadata";
    /// The prefix of ECS tasks.
    pub const ECS_TASK: &'static str = "ecs_task";
    /// The prefix of the agent's own entities.
    pub const INTERNAL: &'static str = "internal";

    /// `prefix://uid`.
    pub fn new(prefix: impl Into<String>, uid: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), uid: uid.into() }
    }

    /// A container's id.
    pub fn container(id: &str) -> Self {
        Self::new(Self::CONTAINER, id)
    }

    /// The node-wide entity (ECS Fargate task tags go there too).
    pub fn global() -> Self {
        Self::new(Self::INTERNAL, "global-entity-id")
    }

    /// The id of a store entity.
    pub fn of(id: &EntityId) -> Self {
        let prefix = match id.kind {
            Kind::Container => Self::CONTAINER,
            Kind::KubernetesPod => Self::KUBERNETES_POD,
            Kind::EcsTask => Self::ECS_TASK,
            Kind::KubernetesMetadata => Self::KUBERNETES_METADATA,
        };
        Self::new(prefix, &*id.id)
    }

    /// The id of a store entity.
    pub fn of_entity(entity: &Entity) -> Self {
        Self::of(&entity.id())
    }

    /// Reads `prefix://uid`; text without `://` is a uid with an empty prefix.
    pub fn parse(text: &str) -> Self {
        match text.split_once("://") {
            Some((prefix, uid)) => Self::new(prefix, uid),
            None => Self::new("", text),
        }
    }

    /// The prefix (`container_id`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The uid within the prefix.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The container id, when this is a container.
    pub fn container_id(&self) -> Option<&str> {
        (self.prefix == Self::CONTAINER).then_some(self.uid.as_str())
    }

    /// Whether it is of one of `prefixes` (all when empty), as the wire's prefix filters ask.
    pub fn has_prefix_in(&self, prefixes: &[String]) -> bool {
        prefixes.is_empty() || prefixes.contains(&self.prefix)
    }
}

impl fmt::Display for TaggerEntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() { f.write_str(&self.uid) } else { write!(f, "{}://{}", self.prefix, self.uid) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse_as_prefix_and_uid() {
        let id = TaggerEntityId::container("abc");
        assert_eq!(id.to_string(), "container_id://abc");
        assert_eq!(TaggerEntityId::parse("container_id://abc"), id);
        assert_eq!(id.container_id(), Some("abc"));
        assert_eq!(TaggerEntityId::global().to_string(), "internal://global-entity-id");
        let pod = TaggerEntityId::of(&EntityId::new(Kind::KubernetesPod, "u-1"));
        assert_eq!((pod.prefix(), pod.uid()), ("kubernetes_pod_uid", "u-1"));
        assert_eq!(pod.container_id(), None);
        assert_eq!(TaggerEntityId::parse("bare").to_string(), "bare");
        let prefixes = vec!["container_id".to_owned()];
        assert!(id.has_prefix_in(&prefixes) && !pod.has_prefix_in(&prefixes) && pod.has_prefix_in(&[]));
    }
}
