//! Converts the kubelet's `/pods` answer (a PodList) into the store's entities: pure functions,
//! no I/O.
//!
//! The list is first split into its items without decoding them (each item stays a slice of the
//! body), then each item is decoded on its own, straight into the few fields the entities need;
//! no JSON tree of the whole list is ever built. An item that is `null`, malformed or has no uid
//! is skipped and returned with the reason, for the caller to log; the other items are converted.
//!
//! One pod gives a `kubernetes_pod` entity, and one `container` entity per container status that
//! has an id (init containers, regular ones, and ephemeral ones when asked for). A container's
//! runtime comes from its id's prefix (`docker://`, `containerd://`, `cri-o://`), its owner is
//! the pod, and its state and restart count come from its status. Its image comes from the status
//! (with the `docker-pullable://` or `docker://` prefix of old runtimes removed), or from the spec
//! when the status gives none or only a digest. Its ports and resources come from the spec, and
//! its env vars too: only literal values, and only of the names the env filter keeps.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use wm_core::{
    Container, ContainerDetails, ContainerHealth, ContainerImage, ContainerPort, ContainerResources, ContainerState,
    ContainerStatus, Entity, EntityId, EnvFilter, IStr, Kind, KubernetesPod, OrchestratorContainer, PodDetails,
    PodOwner, ResourceSpec, Runtime, StrMap, Timestamp,
};

/// The error returned when the pod list as a whole does not parse: not JSON, or not shaped as a
/// pod list.
#[derive(Debug, thiserror::Error)]
#[error("the kubelet's pod list does not parse: {0}")]
pub struct PodListError(#[from] serde_json::Error);

/// The pod list, its items kept as undecoded slices of the body.
#[derive(Deserialize)]
struct PodList<'a> {
    #[serde(borrow, default)]
    items: Option<Vec<&'a RawValue>>,
}

/// The fields of a pod that the entities use; every other field is skipped while decoding.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Pod {
    metadata: Metadata,
    spec: Spec,
    status: Status,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Metadata {
    name: String,
    namespace: IStr,
    uid: String,
    labels: HashMap<String, String>,
    annotations: HashMap<String, String>,
    owner_references: Vec<OwnerReference>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OwnerReference {
    kind: String,
    name: String,
    uid: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Spec {
    node_name: IStr,
    priority_class_name: String,
    runtime_class_name: String,
    containers: Vec<SpecContainer>,
    init_containers: Vec<SpecContainer>,
    ephemeral_containers: Vec<SpecContainer>,
    volumes: Vec<Volume>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct SpecContainer {
    name: String,
    image: String,
    ports: Vec<Port>,
    env: Vec<EnvVar>,
    resources: Resources,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Port {
    name: String,
    container_port: u16,
    host_port: Option<u16>,
    protocol: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct EnvVar {
    name: String,
    /// The literal value, if any. `valueFrom` (a reference to a secret, a config map or a field)
    /// is not read, so a secret never enters the store through it.
    value: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Resources {
    requests: HashMap<String, String>,
    limits: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Volume {
    persistent_volume_claim: Option<ClaimRef>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ClaimRef {
    claim_name: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Status {
    phase: IStr,
    #[serde(rename = "podIP")]
    pod_ip: String,
    qos_class: IStr,
    conditions: Vec<Condition>,
    container_statuses: Vec<ContainerStatusJson>,
    init_container_statuses: Vec<ContainerStatusJson>,
    ephemeral_container_statuses: Vec<ContainerStatusJson>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ContainerStatusJson {
    name: String,
    #[serde(rename = "containerID")]
    container_id: String,
    image: String,
    #[serde(rename = "imageID")]
    image_id: String,
    ready: bool,
    restart_count: u32,
    state: StateJson,
    last_state: StateJson,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct StateJson {
    running: Option<Running>,
    terminated: Option<Terminated>,
    waiting: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Running {
    started_at: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Terminated {
    exit_code: i64,
    started_at: Option<String>,
    finished_at: Option<String>,
}

/// What one pod list gave: the entities, and the items that were skipped with the reason.
#[derive(Debug, Default)]
pub struct Converted {
    /// The entities, in list order: each pod followed by its containers.
    pub entities: Vec<Entity>,
    /// `(index in the list, reason)` of each item that was skipped.
    pub skipped: Vec<(usize, String)>,
}

/// Converts a `/pods` answer into pod and container entities.
///
/// `env` decides which env vars of a container are stored; `include_ephemeral` adds the
/// ephemeral containers. An item that does not parse, or has no uid, is skipped and listed in
/// [`Converted::skipped`].
///
/// # Errors
///
/// Returns [`PodListError`] when the body as a whole does not parse: not JSON, or not shaped as a
/// pod list (its `items` must be a list or `null`).
pub fn convert_pod_list(bytes: &[u8], env: &EnvFilter, include_ephemeral: bool) -> Result<Converted, PodListError> {
    let list: PodList<'_> = serde_json::from_slice(bytes)?;
    let mut out = Converted::default();
    for (index, item) in list.items.unwrap_or_default().into_iter().enumerate() {
        let pod: Option<Pod> = match serde_json::from_str(item.get()) {
            Ok(pod) => pod,
            Err(e) => {
                out.skipped.push((index, e.to_string()));
                continue;
            }
        };
        match pod.filter(|p| !p.metadata.uid.is_empty()) {
            Some(pod) => convert_pod(pod, env, include_ephemeral, &mut out.entities),
            None => out.skipped.push((index, "a pod without a uid".to_owned())),
        }
    }
    Ok(out)
}

/// Parses an RFC 3339 time; `None` when there is none or it does not parse.
fn time(text: Option<&str>) -> Option<Timestamp> {
    text.and_then(|t| Timestamp::parse_rfc3339(t).ok())
}

/// Splits a container id as the kubelet writes it into its runtime and the bare id:
/// `docker://abc` gives (Docker, `abc`).
///
/// An unknown prefix gives no runtime and the text after `://`; an id without `://` gives no
/// runtime and the whole text.
fn split_container_id(id: &str) -> (Option<Runtime>, &str) {
    match id.split_once("://") {
        Some(("docker", rest)) => (Some(Runtime::Docker), rest),
        Some(("containerd", rest)) => (Some(Runtime::Containerd), rest),
        Some(("cri-o", rest)) => (Some(Runtime::CriO), rest),
        Some((_, rest)) => (None, rest),
        None => (None, id),
    }
}

/// Returns the image of a container status, with the `docker-pullable://` and `docker://`
/// prefixes of old runtimes removed.
///
/// When the status names no image, or only a digest (`sha256:…`), the spec's image is used if
/// there is a spec. The image id comes from the status's `imageID`.
fn status_image(status: &ContainerStatusJson, spec: Option<&SpecContainer>) -> ContainerImage {
    let raw = status.image.trim_start_matches("docker-pullable://").trim_start_matches("docker://");
    let raw = if raw.is_empty() || raw.starts_with("sha256:") { spec.map_or(raw, |s| s.image.as_str()) } else { raw };
    let id = status.image_id.trim_start_matches("docker-pullable://").trim_start_matches("docker://");
    ContainerImage::parse_with_id(raw, id)
}

/// Converts a Kubernetes quantity into a number: `100m` gives 0.1, `1.5` gives 1.5, `128Mi`
/// gives 134217728.
///
/// Returns `None` when the number does not parse or the suffix is not one of `m`, `k`, `M`, `G`,
/// `T`, `Ki`, `Mi`, `Gi` and `Ti` (the exponent form, such as `1e3`, is not read either).
pub fn quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0_f64.powi(4),
        _ => return None,
    };
    Some(number * factor)
}

/// Returns the CPU and memory requests and limits of a container's spec; nothing without a spec.
///
/// A value that does not parse is left out.
fn resources(spec: Option<&SpecContainer>) -> ContainerResources {
    let Some(spec) = spec else { return ContainerResources::default() };
    let get = |map: &HashMap<String, String>, key: &str| map.get(key).and_then(|q| quantity(q));
    // Memory is stored in whole bytes: a fractional quantity rounds down, and a negative one is
    // left out.
    let bytes = |v: Option<f64>| v.filter(|v| *v >= 0.0).map(|v| v as u64);
    ResourceSpec {
        cpu_request: get(&spec.resources.requests, "cpu"),
        cpu_limit: get(&spec.resources.limits, "cpu"),
        memory_request: bytes(get(&spec.resources.requests, "memory")),
        memory_limit: bytes(get(&spec.resources.limits, "memory")),
    }
    .into()
}

/// Returns a container's state from its status: running, stopped (with its exit), created, or
/// restarting (waiting after a run that ended); healthy when the container is ready, else
/// unhealthy.
fn state(status: &ContainerStatusJson) -> ContainerState {
    let mut state = ContainerState::default();
    if let Some(running) = &status.state.running {
        state.running = true;
        state.status = ContainerStatus::Running;
        state.started_at = time(running.started_at.as_deref());
    } else if let Some(terminated) = &status.state.terminated {
        state.status = ContainerStatus::Stopped;
        state.started_at = time(terminated.started_at.as_deref());
        state.finished_at = time(terminated.finished_at.as_deref());
        state.exit_code = wm_core::ExitCode::new(terminated.exit_code);
    } else if status.state.waiting.is_some() {
        state.status = ContainerStatus::Created;
        // Waiting after a run that ended, as in CrashLoopBackOff: the container is restarting,
        // and its last run's times and exit code are the ones to show.
        if let Some(last) = &status.last_state.terminated {
            state.status = ContainerStatus::Restarting;
            state.started_at = time(last.started_at.as_deref());
            state.finished_at = time(last.finished_at.as_deref());
            state.exit_code = wm_core::ExitCode::new(last.exit_code);
        }
    }
    state.health = if status.ready { ContainerHealth::Healthy } else { ContainerHealth::Unhealthy };
    state
}

/// Converts one pod, which has a uid, and appends its entity and then its containers' to `out`.
fn convert_pod(pod: Pod, env: &EnvFilter, include_ephemeral: bool, out: &mut Vec<Entity>) {
    let uid = wm_core::Id::from(pod.metadata.uid.as_str());
    let owner = EntityId::new(Kind::KubernetesPod, uid.clone());
    let spec_of = |list: &[SpecContainer], name: &str| list.iter().position(|c| c.name == name);
    let mut containers = Vec::new();
    let mut listed = |statuses: &[ContainerStatusJson], specs: &[SpecContainer]| -> Vec<OrchestratorContainer> {
        let mut refs = Vec::new();
        for status in statuses {
            let spec = spec_of(specs, &status.name).map(|i| &specs[i]);
            let image = status_image(status, spec);
            let (runtime, id) = split_container_id(&status.container_id);
            let id = wm_core::Id::from(id);
            let name = IStr::new(&status.name);
            refs.push(OrchestratorContainer { id: id.clone(), name: name.clone(), image: image.clone() });
            // A status without an id is a container still being created: the pod lists it, but
            // there is no container to report yet.
            if id.is_empty() {
                continue;
            }
            let env_vars: StrMap = spec
                .into_iter()
                .flat_map(|s| s.env.iter())
                .filter(|v| env.keeps(&v.name))
                .filter_map(|v| v.value.as_deref().map(|value| (v.name.as_str(), value)))
                .collect();
            let ports = spec
                .into_iter()
                .flat_map(|s| s.ports.iter())
                .map(|p| ContainerPort {
                    port: p.container_port,
                    protocol: if p.protocol.is_empty() { "tcp".to_owned() } else { p.protocol.to_ascii_lowercase() },
                    name: p.name.clone(),
                    host_port: p.host_port.filter(|h| *h != 0),
                })
                .collect();
            containers.push(Entity::from(Container {
                id,
                name,
                image,
                runtime,
                state: state(status),
                owner: Some(owner.clone()),
                restart_count: status.restart_count,
                env: env_vars,
                resources: resources(spec),
                details: ContainerDetails { ports, ..ContainerDetails::default() }.into(),
                ..Container::default()
            }));
        }
        // The list lives as long as the pod entity, so drop its spare capacity.
        refs.shrink_to_fit();
        refs
    };
    let init_containers = listed(&pod.status.init_container_statuses, &pod.spec.init_containers);
    let regular = listed(&pod.status.container_statuses, &pod.spec.containers);
    let ephemeral = if include_ephemeral {
        listed(&pod.status.ephemeral_container_statuses, &pod.spec.ephemeral_containers)
    } else {
        Vec::new()
    };
    let ready = pod.status.conditions.iter().any(|c| c.kind == "Ready" && c.status == "True");
    let entity = KubernetesPod {
        id: uid,
        name: pod.metadata.name.into(),
        namespace: pod.metadata.namespace,
        labels: pod.metadata.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        annotations: pod
            .metadata
            .annotations
            .iter()
            .filter(|(k, _)| crate::keeps_annotation(k))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        owners: pod
            .metadata
            .owner_references
            .into_iter()
            .map(|o| PodOwner { kind: o.kind.into(), name: o.name.into(), id: o.uid.into() })
            .collect::<Vec<_>>()
            // `collect` may reuse the owner references' buffer in place, which is larger than the
            // new list needs; going through a boxed slice frees the spare room.
            .into_boxed_slice()
            .into_vec(),
        phase: pod.status.phase,
        ready,
        ip: pod.status.pod_ip,
        node_name: pod.spec.node_name,
        qos_class: pod.status.qos_class,
        containers: regular,
        details: PodDetails {
            priority_class: pod.spec.priority_class_name,
            runtime_class: pod.spec.runtime_class_name,
            init_containers,
            ephemeral_containers: ephemeral,
            pvc_names: pod
                .spec
                .volumes
                .into_iter()
                .filter_map(|v| v.persistent_volume_claim.map(|c| c.claim_name))
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
                .into_boxed_slice()
                .into_vec(),
            ..PodDetails::default()
        }
        .into(),
        ..KubernetesPod::default()
    };
    out.push(Entity::from(entity));
    out.extend(containers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_as_kubernetes_writes_them() {
        assert_eq!(quantity("100m"), Some(0.1));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("1.5"), Some(1.5));
        assert_eq!(quantity("128Mi"), Some(134_217_728.0));
        assert_eq!(quantity("1G"), Some(1e9));
        assert_eq!(quantity("12Xi"), None);
        assert_eq!(quantity(""), None);
    }

    #[test]
    fn container_ids_say_their_runtime() {
        assert_eq!(split_container_id("docker://abc"), (Some(Runtime::Docker), "abc"));
        assert_eq!(split_container_id("containerd://abc"), (Some(Runtime::Containerd), "abc"));
        assert_eq!(split_container_id("cri-o://abc"), (Some(Runtime::CriO), "abc"));
        assert_eq!(split_container_id("rkt://abc"), (None, "abc"));
        assert_eq!(split_container_id(""), (None, ""));
    }

    #[test]
    fn a_container_waiting_to_restart_says_how_its_last_run_ended() {
        let list = br#"{"items":[{"metadata":{"uid":"u1","name":"p"},"status":{"containerStatuses":[{
            "name":"app","containerID":"containerd://c1","restartCount":4,"ready":false,
            "state":{"waiting":{"reason":"CrashLoopBackOff"}},
            "lastState":{"terminated":{"exitCode":3,"startedAt":"2026-01-01T00:00:00Z","finishedAt":"2026-01-01T00:00:01Z"}}}]}}]}"#;
        let converted = convert_pod_list(list, &EnvFilter::default(), false).unwrap();
        let c = converted.entities[1].as_container().unwrap();
        assert_eq!(
            (c.state.status, c.state.exit_code, c.restart_count),
            (ContainerStatus::Restarting, wm_core::ExitCode::new(3), 4)
        );
        assert!(!c.state.running && c.state.finished_at.is_some());
        assert_eq!(c.state.health, ContainerHealth::Unhealthy);
    }

    #[test]
    fn garbage_is_an_error_and_bad_items_are_skipped() {
        let env = EnvFilter::default();
        assert!(convert_pod_list(b"not json", &env, false).is_err());
        let list = br#"{"items":[null,{},{"metadata":{"uid":5}},{"metadata":{"uid":"u1","name":"p"}}]}"#;
        let converted = convert_pod_list(list, &env, false).unwrap();
        assert_eq!(converted.entities.len(), 1);
        assert_eq!(converted.skipped.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(convert_pod_list(br#"{"items":null}"#, &env, false).unwrap().entities.is_empty());
    }

    #[test]
    fn the_last_applied_configuration_annotation_is_not_stored() {
        let list = br#"{"items":[{"metadata":{"uid":"u1","name":"p","annotations":{
            "kubectl.kubernetes.io/last-applied-configuration":"{\"env\":[{\"name\":\"DB_PASSWORD\",\"value\":\"hunter2\"}]}",
            "team":"a"}}}]}"#;
        let converted = convert_pod_list(list, &EnvFilter::default(), false).unwrap();
        let pod = converted.entities[0].as_kubernetes_pod().unwrap();
        assert_eq!(pod.annotations.get("team"), Some("a"));
        assert_eq!(pod.annotations.get("kubectl.kubernetes.io/last-applied-configuration"), None);
        assert!(!format!("{pod:?}").contains("hunter2"));
    }
}
