//! The tag rules of DESIGN section 7: which tag comes from which field, at which cardinality.

use std::collections::BTreeMap;

use wm_core::{
    Container, ContainerImageMetadata, EcsTask, KubernetesMetadata, KubernetesPod, LaunchType, OrchestratorContainer,
    Runtime, StrMap,
};

use crate::config::TaggerConfig;
use crate::tags::{TagCardinality, TagInfo};

use TagCardinality::{High, Low, Orchestrator};

/// Adds `image_name`, `short_image` and `image_tag` (low) from an image reference; a reference
/// without a name adds nothing.
fn image_tags(tags: &mut TagInfo, image: &wm_core::ContainerImage) {
    if image.name.is_empty() {
        return;
    }
    tags.add(Low, "image_name", &image.name);
    tags.add(Low, "short_image", &image.short_name);
    tags.add(Low, "image_tag", &image.tag);
}

/// Returns an image entity's tags, as the Datadog Agent's tagger gives them (all low):
/// `image_name`, `short_image` and `image_tag` for each of its tags, then `os_name`, `os_version`
/// and `architecture`.
pub(crate) fn container_image_tags(image: &ContainerImageMetadata) -> TagInfo {
    let mut tags = TagInfo::default();
    for repo_tag in &image.repo_tags {
        image_tags(&mut tags, &wm_core::ContainerImage::parse(repo_tag));
    }
    for (name, value) in
        [("os_name", &image.os), ("os_version", &image.os_version), ("architecture", &image.architecture)]
    {
        if !value.is_empty() {
            tags.add(Low, name, value);
        }
    }
    tags
}

/// Adds the tags an `*_as_tags` map asks for from `values` (labels, annotations or env vars).
///
/// A key matches a name regardless of ASCII case, and the name's value is tagged with the tag
/// name it maps to. The key `*` matches every name; in its tag name, `%%label%%`, `%%env%%` and
/// `%%annotation%%` stand for the name. A tag name that starts with `+` is high cardinality
/// ([`TagInfo::add_auto`]).
fn mapped(tags: &mut TagInfo, values: &StrMap, config: &BTreeMap<String, String>) {
    if config.is_empty() {
        return;
    }
    for (name, value) in values {
        for (key, tag_name) in config {
            if key == "*" {
                let tag_name =
                    tag_name.replace("%%label%%", name).replace("%%env%%", name).replace("%%annotation%%", name);
                tags.add_auto(&tag_name, value);
            } else if key.eq_ignore_ascii_case(name) {
                tags.add_auto(tag_name, value);
            }
        }
    }
}

/// Adds, at `cardinality`, the tags a JSON annotation or label holds: a list of `key:value`
/// strings, or an object of keys to values.
///
/// An object's non-string value is tagged as its JSON text; a list item that is not a string is
/// skipped. Text that is neither a list nor an object is logged at debug level, naming `what`,
/// and skipped: a bad annotation never stops the other tags.
fn json_tags(tags: &mut TagInfo, cardinality: TagCardinality, json: &str, what: &str) {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Array(items)) => {
            for item in items {
                if let Some(tag) = item.as_str() {
                    tags.add_tag(cardinality, tag.to_owned());
                }
            }
        }
        Ok(serde_json::Value::Object(map)) => {
            for (k, v) in map {
                let value = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                tags.add(cardinality, &k, &value);
            }
        }
        _ => tracing::debug!(what, "tags value is neither a JSON list nor a JSON object; ignored"),
    }
}

/// Splits OpenTelemetry resource attributes (`service.name=a,deployment.environment=b`) into
/// trimmed (key, value) pairs; an item without `=` is skipped.
fn otel_attributes(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.trim(), v.trim()))
}

/// Adds a container's unified service tags, each from the first of: its `DD_*` env var, its
/// `com.datadoghq.tags.*` label, then OpenTelemetry's env vars (`OTEL_SERVICE_NAME` for the
/// service, then `OTEL_RESOURCE_ATTRIBUTES`).
fn unified_service(tags: &mut TagInfo, c: &Container) {
    let mut env = c.env.get("DD_ENV").or(c.labels.get("com.datadoghq.tags.env"));
    let mut service = c.env.get("DD_SERVICE").or(c.labels.get("com.datadoghq.tags.service"));
    let mut version = c.env.get("DD_VERSION").or(c.labels.get("com.datadoghq.tags.version"));
    service = service.or(c.env.get("OTEL_SERVICE_NAME"));
    if let Some(attributes) = c.env.get("OTEL_RESOURCE_ATTRIBUTES") {
        for (k, v) in otel_attributes(attributes) {
            match k {
                "service.name" => service = service.or(Some(v)),
                "service.version" => version = version.or(Some(v)),
                "deployment.environment" | "deployment.environment.name" => env = env.or(Some(v)),
                _ => {}
            }
        }
    }
    for (key, value) in [("env", env), ("service", service), ("version", version)] {
        if let Some(value) = value {
            tags.add_standard(key, value);
        }
    }
}

/// (label, tag, cardinality) for the orchestrators that describe a container in its labels.
const LABEL_TAGS: &[(&str, &str, TagCardinality)] = &[
    ("com.docker.swarm.service.name", "swarm_service", Low),
    ("com.docker.stack.namespace", "swarm_namespace", Low),
    ("io.rancher.stack.name", "rancher_stack", Low),
    ("io.rancher.stack_service.name", "rancher_service", Low),
    ("io.rancher.container.name", "rancher_container", High),
    (wm_core::PODMAN_POD_NAME_LABEL, "pod_name", Orchestrator),
];

/// (env var, tag, cardinality) for the orchestrators that describe a container in its env vars.
const ENV_TAGS: &[(&str, &str, TagCardinality)] = &[
    ("NOMAD_TASK_NAME", "nomad_task", Low),
    ("NOMAD_JOB_NAME", "nomad_job", Low),
    ("NOMAD_GROUP_NAME", "nomad_group", Low),
    ("NOMAD_NAMESPACE", "nomad_namespace", Low),
    ("NOMAD_DC", "nomad_datacenter", Low),
    ("MARATHON_APP_ID", "marathon_app", Low),
    ("CHRONOS_JOB_NAME", "chronos_job", Low),
    ("CHRONOS_JOB_OWNER", "chronos_job_owner", Low),
    ("MESOS_TASK_ID", "mesos_task", Orchestrator),
];

/// The Cloud Foundry tags that name one instance (high cardinality, DESIGN 7.5); the others name
/// its app, space, org or what the Cloud Controller says of the app (low).
const CF_INSTANCE_TAGS: &[&str] = &["container_name", "app_instance_guid", "app_instance_index"];

/// Returns the tags of a Garden (Cloud Foundry) container (DESIGN 7.5), made from the tags its
/// collector gave it.
///
/// `container_name` and `app_instance_guid` default to the container's name and id when the
/// collector gave none. The tags that name the instance are high and the others low, or all are
/// high with `cloud_foundry_datadog_cardinality`. Without that setting, `env`, `service` and
/// `version` (from the app's `tags.datadoghq.com/*` metadata) are unified service tags (and low).
fn garden_tags(c: &Container, config: &TaggerConfig) -> TagInfo {
    let mut tags = TagInfo::default();
    let has = |key: &str| c.details.collector_tags.iter().any(|t| t.split_once(':').is_some_and(|(k, _)| k == key));
    let fallback = [("container_name", &*c.name), ("app_instance_guid", &*c.id)];
    let fallback = fallback.iter().filter(|(key, _)| !has(key)).map(|(key, value)| format!("{key}:{value}"));
    for tag in c.details.collector_tags.iter().cloned().chain(fallback) {
        let Some((key, value)) = tag.split_once(':') else { continue };
        if config.cloud_foundry_datadog_cardinality || CF_INSTANCE_TAGS.contains(&key) {
            tags.add_tag(High, tag);
        } else if matches!(key, "env" | "service" | "version") {
            tags.add_standard(key, value);
        } else {
            tags.add_tag(Low, tag);
        }
    }
    tags
}

/// Returns the tags a container entity gives itself (DESIGN 7.1; 7.5 for Cloud Foundry's Garden
/// containers).
pub fn container_tags(c: &Container, config: &TaggerConfig) -> TagInfo {
    let (mut tags, name, own) = container_tags_by_image(c, config);
    tags.append(name);
    tags.append(own);
    tags
}

/// Returns a container's tags in three parts: its image's, its name's, then its own. Appended in
/// this order, they are [`container_tags`].
///
/// The image's tags are the same for every container of the image on the same runtime, and the
/// name's for every replica of a pod template's container, so the tag store holds each once for
/// all of them. A Garden container's tags are all in the third part.
pub fn container_tags_by_image(c: &Container, config: &TaggerConfig) -> (TagInfo, TagInfo, TagInfo) {
    let mut image = TagInfo::default();
    if c.runtime == Some(Runtime::Garden) {
        return (image, TagInfo::default(), garden_tags(c, config));
    }
    image_tags(&mut image, &c.image);
    image.add(Low, "image_id", &c.image.id);
    if c.runtime == Some(Runtime::Docker) && !c.image.name.is_empty() {
        image.add(Low, "docker_image", &format!("{}:{}", c.image.name, c.image.tag));
    }
    let mut name = TagInfo::default();
    name.add(High, "container_name", &c.name);
    let mut tags = TagInfo::default();
    tags.add(High, "container_id", &c.id);
    unified_service(&mut tags, c);
    let sha = c.env.get("DD_GIT_COMMIT_SHA").or(c.labels.get("org.opencontainers.image.revision"));
    let repo = c.env.get("DD_GIT_REPOSITORY_URL").or(c.labels.get("org.opencontainers.image.source"));
    tags.add(Low, "git.commit.sha", sha.unwrap_or_default());
    tags.add(Low, "git.repository_url", repo.unwrap_or_default());
    for (label, tag, cardinality) in LABEL_TAGS {
        tags.add(*cardinality, tag, c.labels.get(label).unwrap_or_default());
    }
    for (var, tag, cardinality) in ENV_TAGS {
        tags.add(*cardinality, tag, c.env.get(var).unwrap_or_default());
    }
    if let Some(json) = c.labels.get("com.datadoghq.ad.tags") {
        json_tags(&mut tags, High, json, "com.datadoghq.ad.tags");
    }
    mapped(&mut tags, &c.labels, &config.container_labels_as_tags);
    mapped(&mut tags, &c.labels, &config.docker_labels_as_tags);
    mapped(&mut tags, &c.env, &config.container_env_as_tags);
    mapped(&mut tags, &c.env, &config.docker_env_as_tags);
    (image, name, tags)
}

/// Characters of the hash Kubernetes appends to generated names (`rand.SafeEncodeString`),
/// plus every digit, as in the decimal hashes of older releases.
const GENERATED_NAME_CHARS: &str = "bcdfghjklmnpqrstvwxz0123456789";

/// Returns the name of the Deployment behind a ReplicaSet named `<deployment>-<hash>`.
///
/// The hash must be at least three characters, each one Kubernetes uses in generated names or a
/// digit; otherwise the name is not taken as a Deployment's ReplicaSet, and this returns `None`.
pub fn deployment_of_replica_set(name: &str) -> Option<&str> {
    let (deployment, hash) = name.rsplit_once('-')?;
    let generated = hash.len() >= 3 && hash.chars().all(|c| GENERATED_NAME_CHARS.contains(c));
    (generated && !deployment.is_empty()).then_some(deployment)
}

/// Returns the name of the CronJob behind a Job named `<cronjob>-<scheduled time in digits>`;
/// `None` when the name does not end in `-` and digits.
pub fn cronjob_of_job(name: &str) -> Option<&str> {
    let (cronjob, suffix) = name.rsplit_once('-')?;
    (!cronjob.is_empty() && !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit())).then_some(cronjob)
}

/// (label, tag) for Kubernetes' recommended `app.kubernetes.io/*` labels, tagged low on a pod.
const APP_LABELS: &[(&str, &str)] = &[
    ("app.kubernetes.io/name", "kube_app_name"),
    ("app.kubernetes.io/instance", "kube_app_instance"),
    ("app.kubernetes.io/version", "kube_app_version"),
    ("app.kubernetes.io/component", "kube_app_component"),
    ("app.kubernetes.io/part-of", "kube_app_part_of"),
    ("app.kubernetes.io/managed-by", "kube_app_managed_by"),
];

/// Returns the tags of a pod (DESIGN 7.2). Its containers get these too, followed by those of
/// [`pod_container_tags`].
pub fn pod_tags(p: &KubernetesPod, config: &TaggerConfig) -> TagInfo {
    let mut tags = TagInfo::default();
    tags.add(Orchestrator, "pod_name", &p.name);
    tags.add(Low, "kube_namespace", &p.namespace);
    tags.add(Low, "pod_phase", &p.phase.to_lowercase());
    tags.add(Low, "kube_priority_class", &p.details.priority_class);
    tags.add(Low, "kube_qos", &p.qos_class);
    tags.add(Low, "kube_runtime_class", &p.details.runtime_class);
    for (label, tag) in APP_LABELS {
        tags.add(Low, tag, p.labels.get(label).unwrap_or_default());
    }
    for key in ["env", "service", "version"] {
        if let Some(value) = p.labels.get(&format!("tags.datadoghq.com/{key}")) {
            tags.add_standard(key, value);
        }
    }
    let disabled = p.annotations.get("tags.datadoghq.com/disable").unwrap_or_default();
    if !disabled.split(',').any(|d| d.trim() == "kube_service") {
        for service in &p.details.kube_services {
            tags.add(Low, "kube_service", service);
        }
    }
    if let Some(json) = p.annotations.get("ad.datadoghq.com/tags") {
        json_tags(&mut tags, Low, json, "ad.datadoghq.com/tags");
    }
    for owner in &p.owners {
        tags.add(Low, "kube_ownerref_kind", &owner.kind.to_lowercase());
        tags.add(Orchestrator, "kube_ownerref_name", &owner.name);
        match owner.kind.as_str() {
            "Deployment" => tags.add(Low, "kube_deployment", &owner.name),
            "ReplicaSet" => {
                tags.add(Low, "kube_replica_set", &owner.name);
                if let Some(deployment) = deployment_of_replica_set(&owner.name) {
                    tags.add(Low, "kube_deployment", deployment);
                }
            }
            "DaemonSet" => tags.add(Low, "kube_daemon_set", &owner.name),
            "StatefulSet" => tags.add(Low, "kube_stateful_set", &owner.name),
            "ReplicationController" => tags.add(Low, "kube_replication_controller", &owner.name),
            "Job" => match cronjob_of_job(&owner.name) {
                Some(cronjob) => {
                    tags.add(Orchestrator, "kube_job", &owner.name);
                    tags.add(Low, "kube_cronjob", cronjob);
                }
                None => tags.add(Low, "kube_job", &owner.name),
            },
            "CronJob" => tags.add(Low, "kube_cronjob", &owner.name),
            _ => {}
        }
    }
    if config.kubernetes_persistent_volume_claims_as_tags {
        for pvc in &p.details.pvc_names {
            tags.add(Low, "persistentvolumeclaim", pvc);
        }
    }
    mapped(&mut tags, &p.labels, &config.kubernetes_pod_labels_as_tags);
    mapped(&mut tags, &p.annotations, &config.kubernetes_pod_annotations_as_tags);
    mapped(&mut tags, &p.details.namespace_labels, &config.kubernetes_namespace_labels_as_tags);
    mapped(&mut tags, &p.details.namespace_annotations, &config.kubernetes_namespace_annotations_as_tags);
    tags
}

/// Returns what a pod says about one of its containers beyond the pod's own tags (DESIGN 7.3),
/// in two parts.
///
/// The container gets the pod's tags ([`pod_tags`]) first, then these, at each level. The first
/// part is what every pod of the same template gives its container of this name: its name,
/// image, unified service tags and `ad.datadoghq.com/<container>.tags`. The second is the
/// container's own: its id and display name.
pub fn pod_container_tags(p: &KubernetesPod, c: &OrchestratorContainer) -> (TagInfo, TagInfo) {
    let mut template = TagInfo::default();
    template.add(Low, "kube_container_name", &c.name);
    image_tags(&mut template, &c.image);
    for key in ["env", "service", "version"] {
        if let Some(value) = p.labels.get(&format!("tags.datadoghq.com/{}.{key}", c.name)) {
            template.add_standard(key, value);
        }
    }
    if let Some(json) = p.annotations.get(&format!("ad.datadoghq.com/{}.tags", c.name)) {
        json_tags(&mut template, Low, json, "ad.datadoghq.com/<container>.tags");
    }
    let mut own = TagInfo::default();
    own.add(High, "container_id", &c.id);
    if !c.name.is_empty() && !p.name.is_empty() {
        own.add(High, "display_container_name", &format!("{}_{}", c.name, p.name));
    }
    (template, own)
}

/// Returns the tags of a Kubernetes object's metadata: for this node, those of
/// `kubernetes_node_labels_as_tags` and `kubernetes_node_annotations_as_tags`. Other objects
/// have none.
///
/// The Datadog Agent makes these host tags; here they go on the node's entity and on the global
/// entity.
pub fn metadata_tags(m: &KubernetesMetadata, config: &TaggerConfig) -> TagInfo {
    let mut tags = TagInfo::default();
    if m.is_node() {
        mapped(&mut tags, &m.labels, &config.kubernetes_node_labels_as_tags);
        mapped(&mut tags, &m.annotations, &config.kubernetes_node_annotations_as_tags);
    }
    tags
}

/// Returns the tags of an ECS task (DESIGN 7.4). Its containers get these plus
/// [`task_container_tags`].
///
/// The task's AWS resource tags and its container instance's tags are added on Fargate, and on
/// EC2 with `ecs_collect_resource_tags_ec2`.
pub fn task_tags(t: &EcsTask, config: &TaggerConfig) -> TagInfo {
    let mut tags = TagInfo::default();
    tags.add(Low, "task_name", &t.family);
    tags.add(Low, "task_family", &t.family);
    tags.add(Low, "task_version", &t.version);
    tags.add(Low, "ecs_cluster_name", &t.cluster_name);
    tags.add(Low, "cluster_name", &t.cluster_name);
    tags.add(Low, "region", &t.region);
    tags.add(Low, "availability_zone", &t.availability_zone);
    tags.add(Low, "aws_account", &t.aws_account);
    tags.add(Low, "ecs_service", &t.service_name);
    tags.add(Orchestrator, "task_arn", &t.id);
    if t.launch_type == Some(LaunchType::Fargate) || config.ecs_collect_resource_tags_ec2 {
        for (k, v) in t.tags.iter().chain(t.container_instance_tags.iter()) {
            tags.add(Low, k, v);
        }
    }
    tags
}

/// Returns what a task says about one of its containers beyond the task's own tags
/// ([`task_tags`]): its `ecs_container_name`.
pub fn task_container_tags(c: &OrchestratorContainer) -> TagInfo {
    let mut tags = TagInfo::default();
    tags.add(Low, "ecs_container_name", &c.name);
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_is_tagged_by_each_of_its_tags_and_its_platform() {
        let image = ContainerImageMetadata {
            id: "sha256:abc".into(),
            repo_tags: vec!["docker.io/library/nginx:1.25".into(), "registry.local:5000/web:2".into()],
            os: "linux".into(),
            architecture: "arm64".into(),
            ..ContainerImageMetadata::default()
        };
        let tags = container_image_tags(&image);
        assert!(tags.orchestrator.is_empty() && tags.high.is_empty());
        let mut low = tags.low;
        low.sort();
        assert_eq!(
            low,
            [
                "architecture:arm64",
                "image_name:docker.io/library/nginx",
                "image_name:registry.local:5000/web",
                "image_tag:1.25",
                "image_tag:2",
                "os_name:linux",
                "short_image:nginx",
                "short_image:web",
            ]
        );
    }

    #[test]
    fn replica_set_names_give_their_deployment_only_with_a_generated_hash() {
        assert_eq!(deployment_of_replica_set("web-5d8f7c9b4"), Some("web"));
        assert_eq!(deployment_of_replica_set("my-app-7b9c4d6f5"), Some("my-app"));
        assert_eq!(deployment_of_replica_set("web-aeiou"), None, "vowels never appear in generated names");
        assert_eq!(deployment_of_replica_set("web"), None);
        assert_eq!(deployment_of_replica_set("-bcd"), None);
    }

    #[test]
    fn cronjob_children_are_recognized_by_their_digit_suffix() {
        assert_eq!(cronjob_of_job("backup-28371420"), Some("backup"));
        assert_eq!(cronjob_of_job("migrate"), None);
        assert_eq!(cronjob_of_job("migrate-v2"), None);
    }

    #[test]
    fn wildcard_label_templates_tag_every_label() {
        let mut tags = TagInfo::default();
        let labels: StrMap = [("team", "a"), ("tier", "b")].into_iter().collect();
        let config: BTreeMap<String, String> = [("*".to_owned(), "lbl_%%label%%".to_owned())].into_iter().collect();
        mapped(&mut tags, &labels, &config);
        assert_eq!(tags.low, ["lbl_team:a", "lbl_tier:b"]);
    }

    #[test]
    fn a_podman_pods_container_is_tagged_with_its_pod_name() {
        let c = Container {
            id: "c1".into(),
            labels: [(wm_core::PODMAN_POD_NAME_LABEL, "web-pod")].into_iter().collect(),
            runtime: Some(Runtime::Podman),
            ..Container::default()
        };
        let tags = container_tags(&c, &TaggerConfig::default());
        assert_eq!(tags.orchestrator, ["pod_name:web-pod"]);
    }

    #[test]
    fn malformed_json_tags_are_skipped_not_fatal() {
        let mut tags = TagInfo::default();
        json_tags(&mut tags, High, "[not json", "x");
        json_tags(&mut tags, High, r#"{"a": 1, "b": "x"}"#, "x");
        assert_eq!(tags.high, ["a:1", "b:x"]);
    }

    #[test]
    fn every_env_var_the_rules_read_is_kept_by_collectors() {
        let read = ["DD_ENV", "DD_SERVICE", "DD_VERSION", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"]
            .into_iter()
            .chain(["DD_GIT_COMMIT_SHA", "DD_GIT_REPOSITORY_URL"])
            .chain(ENV_TAGS.iter().map(|(var, _, _)| *var));
        for var in read {
            assert!(wm_core::KEPT_ENV_VARS.contains(&var), "{var} is read by the rules but dropped by collectors");
        }
    }
}
