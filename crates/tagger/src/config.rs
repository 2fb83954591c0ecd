//! The tagger's configuration, with the Datadog Agent's key names.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Unexpected, Visitor};
use serde::{Deserialize, Serialize};
use wm_core::Seconds;

/// The longest key an `*_as_tags` map accepts, in characters.
///
/// It is Kubernetes' longest qualified name: a 253-character DNS prefix, `/`, and a 63-character
/// name. Docker labels and env var names are shorter in practice.
pub const MAX_SOURCE_KEY_CHARS: usize = 317;

/// The settings the tag rules and the tag store read from the agent config.
///
/// Each field is named after its Datadog Agent config key. The agent fills this struct from its
/// config file and `DD_*` env vars.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TaggerConfig {
    /// Container label → tag name (`+name`: high cardinality; `*` with `%%label%%` templates).
    #[serde(deserialize_with = "source_key_map")]
    pub container_labels_as_tags: BTreeMap<String, String>,
    /// Same as `container_labels_as_tags` (the older Datadog key).
    #[serde(deserialize_with = "source_key_map")]
    pub docker_labels_as_tags: BTreeMap<String, String>,
    /// Container env var → tag name.
    #[serde(deserialize_with = "source_key_map")]
    pub container_env_as_tags: BTreeMap<String, String>,
    /// Same as `container_env_as_tags` (the older Datadog key).
    #[serde(deserialize_with = "source_key_map")]
    pub docker_env_as_tags: BTreeMap<String, String>,
    /// Pod label → tag name.
    #[serde(deserialize_with = "source_key_map")]
    pub kubernetes_pod_labels_as_tags: BTreeMap<String, String>,
    /// Pod annotation → tag name.
    #[serde(deserialize_with = "source_key_map")]
    pub kubernetes_pod_annotations_as_tags: BTreeMap<String, String>,
    /// Namespace label → tag name.
    #[serde(deserialize_with = "source_key_map")]
    pub kubernetes_namespace_labels_as_tags: BTreeMap<String, String>,
    /// Namespace annotation → tag name.
    #[serde(deserialize_with = "source_key_map")]
    pub kubernetes_namespace_annotations_as_tags: BTreeMap<String, String>,
    /// Node label → tag name (this node's labels, on the global entity).
    #[serde(deserialize_with = "source_key_map")]
    pub kubernetes_node_labels_as_tags: BTreeMap<String, String>,
    /// Node annotation → tag name (this node's annotations, on the global entity).
    #[serde(deserialize_with = "source_key_map")]
    pub kubernetes_node_annotations_as_tags: BTreeMap<String, String>,
    /// Tag pods with `persistentvolumeclaim:<name>` (opt-in).
    pub kubernetes_persistent_volume_claims_as_tags: bool,
    /// Tag ECS tasks on EC2 with their AWS resource tags (always on Fargate).
    pub ecs_collect_resource_tags_ec2: bool,
    /// Puts every Cloud Foundry tag at high cardinality, as the Datadog Agent does. By default
    /// (false) only the tags naming the instance are high; its app's, space's and org's are low
    /// (DESIGN 7.5).
    pub cloud_foundry_datadog_cardinality: bool,
    /// How long a deleted entity's tags are still served, in seconds (default 300).
    pub tagger_deletion_grace_period: Seconds,
}

impl Default for TaggerConfig {
    fn default() -> Self {
        Self {
            container_labels_as_tags: BTreeMap::new(),
            docker_labels_as_tags: BTreeMap::new(),
            container_env_as_tags: BTreeMap::new(),
            docker_env_as_tags: BTreeMap::new(),
            kubernetes_pod_labels_as_tags: BTreeMap::new(),
            kubernetes_pod_annotations_as_tags: BTreeMap::new(),
            kubernetes_namespace_labels_as_tags: BTreeMap::new(),
            kubernetes_namespace_annotations_as_tags: BTreeMap::new(),
            kubernetes_node_labels_as_tags: BTreeMap::new(),
            kubernetes_node_annotations_as_tags: BTreeMap::new(),
            kubernetes_persistent_volume_claims_as_tags: false,
            ecs_collect_resource_tags_ec2: false,
            cloud_foundry_datadog_cardinality: false,
            tagger_deletion_grace_period: Seconds(300),
        }
    }
}

impl TaggerConfig {
    /// Returns `tagger_deletion_grace_period` as a `Duration`.
    pub fn deletion_grace_period(&self) -> Duration {
        self.tagger_deletion_grace_period.duration()
    }

    /// Returns the env var names that `container_env_as_tags` and `docker_env_as_tags` map.
    ///
    /// Collectors drop a container's env vars except those the tag rules read; they keep these
    /// too, so that the maps have values to read.
    pub fn env_as_tags_keys(&self) -> Vec<String> {
        self.container_env_as_tags.keys().chain(self.docker_env_as_tags.keys()).cloned().collect()
    }
}

/// Reads an `*_as_tags` map, refusing a key that no label, annotation or env var can have.
///
/// Such a key is empty, longer than [`MAX_SOURCE_KEY_CHARS`], or holds a control character. It
/// would never match, and it could not be written back as a YAML key (YAML caps implicit keys at
/// 1,024 characters).
fn source_key_map<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error> {
    deserializer.deserialize_map(SourceKeyMap)
}

struct SourceKeyMap;

impl<'de> Visitor<'de> for SourceKeyMap {
    type Value = BTreeMap<String, String>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a map of label, annotation or env var names (1 to {MAX_SOURCE_KEY_CHARS} characters, no control \
             characters) to tag names"
        )
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut keys = BTreeMap::new();
        while let Some((key, tag)) = map.next_entry::<String, String>()? {
            let chars = key.chars().count();
            if chars == 0 || chars > MAX_SOURCE_KEY_CHARS || key.chars().any(char::is_control) {
                return Err(de::Error::invalid_value(Unexpected::Str(&key), &self));
            }
            keys.insert(key, tag);
        }
        Ok(keys)
    }
}
