//! The tagger's entity ids: `<prefix>://<uid>` (`container_id://…`, `kubernetes_pod_uid://…`,
//! `ecs_task://…`, `internal://global-entity-id`), as the Datadog wire format splits them.

use std::fmt;

use wm_core::{Entity, EntityId, Kind};

/// The prefixes the tag store keys by uid alone, one map each: the kinds of the workload store,
/// and `Other` for every other id (kept whole, prefix and all, in a map of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum TagPrefix {
    /// `container_id://`
    Container,
    /// `kubernetes_pod_uid://`
    KubernetesPod,
    /// `ecs_task://`
    EcsTask,
    /// `kubernetes_metadata://`
    KubernetesMetadata,
    /// `process://` (upstream's prefix; no process has tags here yet)
    Process,
    /// `container_image_metadata://`
    ContainerImageMetadata,
    /// Any other id (`internal://global-entity-id`), kept whole.
    Other,
}

impl TagPrefix {
    /// Every prefix, in the order of [`TagPrefix::index`].
    pub(crate) const ALL: [TagPrefix; 7] = [
        TagPrefix::Container,
        TagPrefix::KubernetesPod,
        TagPrefix::EcsTask,
        TagPrefix::KubernetesMetadata,
        TagPrefix::Process,
        TagPrefix::ContainerImageMetadata,
        TagPrefix::Other,
    ];

    /// Returns the prefix as the wire writes it, before `://` (`Other`: empty).
    pub(crate) const fn name(self) -> &'static str {
        match self {
            TagPrefix::Container => "container_id",
            TagPrefix::KubernetesPod => "kubernetes_pod_uid",
            TagPrefix::EcsTask => "ecs_task",
            TagPrefix::KubernetesMetadata => "kubernetes_metadata",
            TagPrefix::Process => "process",
            TagPrefix::ContainerImageMetadata => "container_image_metadata",
            TagPrefix::Other => "",
        }
    }

    /// Returns the text an id of this prefix starts with (`container_id://`; `Other`: empty).
    pub(crate) const fn scheme(self) -> &'static str {
        match self {
            TagPrefix::Container => "container_id://",
            TagPrefix::KubernetesPod => "kubernetes_pod_uid://",
            TagPrefix::EcsTask => "ecs_task://",
            TagPrefix::KubernetesMetadata => "kubernetes_metadata://",
            TagPrefix::Process => "process://",
            TagPrefix::ContainerImageMetadata => "container_image_metadata://",
            TagPrefix::Other => "",
        }
    }

    /// Returns the prefix of a workload store entity's kind.
    pub(crate) const fn of_kind(kind: Kind) -> Self {
        match kind {
            Kind::Container => TagPrefix::Container,
            Kind::KubernetesPod => TagPrefix::KubernetesPod,
            Kind::EcsTask => TagPrefix::EcsTask,
            Kind::KubernetesMetadata => TagPrefix::KubernetesMetadata,
            Kind::Process => TagPrefix::Process,
            Kind::ContainerImageMetadata => TagPrefix::ContainerImageMetadata,
        }
    }

    /// Splits `entity` into its prefix and the rest; an id of no known prefix is `Other` and
    /// kept whole.
    pub(crate) fn split(entity: &str) -> (Self, &str) {
        // `Other` comes last and its empty scheme matches any id.
        TagPrefix::ALL
            .iter()
            .find_map(|prefix| entity.strip_prefix(prefix.scheme()).map(|uid| (*prefix, uid)))
            .unwrap_or((TagPrefix::Other, entity))
    }

    /// Returns its place among [`TagPrefix::ALL`], to index a per-prefix array.
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

/// A tagger entity id, typed: a prefix naming the kind and the uid within it. Its text form
/// (`Display`) is the key the tag store uses and the wire's `prefix` + `uid`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaggerEntityId {
    prefix: String,
    uid: String,
}

impl TaggerEntityId {
    /// The prefix of containers.
    pub const CONTAINER: &'static str = TagPrefix::Container.name();
    /// The prefix of Kubernetes pods.
    pub const KUBERNETES_POD: &'static str = TagPrefix::KubernetesPod.name();
    /// The prefix of Kubernetes object metadata (`kubernetes_metadata:///nodes//<node>`).
    pub const KUBERNETES_METADATA: &'static str = TagPrefix::KubernetesMetadata.name();
    /// The prefix of ECS tasks.
    pub const ECS_TASK: &'static str = TagPrefix::EcsTask.name();
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
        Self::new(TagPrefix::of_kind(id.kind).name(), &*id.id)
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

    #[test]
    fn each_prefix_splits_off_what_it_prints() {
        for (n, prefix) in TagPrefix::ALL.into_iter().enumerate() {
            assert_eq!(prefix.index(), n);
            if prefix != TagPrefix::Other {
                assert_eq!(prefix.scheme(), format!("{}://", prefix.name()));
                assert_eq!(TagPrefix::split(&format!("{}://u", prefix.name())), (prefix, "u"));
            }
        }
        assert_eq!(TagPrefix::split("internal://g"), (TagPrefix::Other, "internal://g"));
        assert_eq!(TagPrefix::split("container_id:/x"), (TagPrefix::Other, "container_id:/x"));
    }
}
