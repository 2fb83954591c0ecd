//! Converts the Docker Engine API's container inspects and event attributes into the store's
//! [`Container`]: pure functions, no I/O.

use std::collections::HashMap;

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum};
use wm_core::{
    ContainerHealth, ContainerImage, ContainerPort, ContainerState, ContainerStatus, EntityId, EnvFilter, ImageRef,
    Kind, ResourceSpec, Runtime, StrMap, Timestamp,
};

use wm_core::{Container, ContainerDetails, KUBE_NAMESPACE_LABEL, KUBE_POD_UID_LABEL};

/// The label dockershim puts on a pod's sandbox ("pause") container, with the value
/// `podsandbox`.
pub const KUBE_DOCKER_TYPE_LABEL: &str = "io.kubernetes.docker.type";

/// Tells whether a container is a Kubernetes pod's infrastructure ("pause") container, which
/// runs no workload and is never stored.
///
/// It is one when dockershim labelled it `podsandbox`, or when it has a pod namespace label and
/// its image's short name is `pause` (or `pause-amd64`, `pause-arm64`, `pause-win`). Outside
/// Kubernetes, an image called `pause` is a workload like any other.
pub fn is_pause_container(labels: &HashMap<String, String>, image: &str) -> bool {
    if labels.get(KUBE_DOCKER_TYPE_LABEL).is_some_and(|t| t == "podsandbox") {
        return true;
    }
    if !labels.contains_key(KUBE_NAMESPACE_LABEL) {
        return false;
    }
    let short = ImageRef::parse(image).short_name;
    matches!(short.as_str(), "pause" | "pause-amd64" | "pause-arm64" | "pause-win")
}

/// Parses an RFC 3339 time; `None` when absent, empty or unparsable.
fn timestamp(text: Option<&str>) -> Option<Timestamp> {
    // Docker writes 0001-01-01T00:00:00Z for "never"; it is outside Timestamp's range and so None.
    text.filter(|t| !t.is_empty()).and_then(|t| Timestamp::parse_rfc3339(t).ok())
}

/// Converts an inspect response into a container, keeping only the env vars that `env` keeps.
///
/// `image_name`, when given, is the image reference to show instead of the configured one: the
/// caller looks it up when the container was created from a bare image id. Health is left
/// unknown for a container Kubernetes manages, whose health the kubelet owns. Returns `None`
/// when the response has no id or is a pause container.
pub fn container_from_inspect(
    inspect: &ContainerInspectResponse,
    image_name: Option<&str>,
    env: &EnvFilter,
) -> Option<Container> {
    let id = inspect.id.as_deref().filter(|id| !id.is_empty())?;
    let config = inspect.config.as_ref();
    let empty = HashMap::new();
    let labels_map = config.and_then(|c| c.labels.as_ref()).unwrap_or(&empty);
    let configured_image = config.and_then(|c| c.image.as_deref()).unwrap_or_default();
    if is_pause_container(labels_map, configured_image) {
        return None;
    }
    let kube_managed = labels_map.contains_key(KUBE_NAMESPACE_LABEL);
    let image = ContainerImage::parse_with_id(
        image_name.unwrap_or(configured_image),
        inspect.image.as_deref().unwrap_or_default(),
    );
    let state = inspect.state.as_ref();
    let status = match state.and_then(|s| s.status) {
        Some(ContainerStateStatusEnum::CREATED) => ContainerStatus::Created,
        Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::STOPPING) => ContainerStatus::Running,
        Some(ContainerStateStatusEnum::PAUSED) => ContainerStatus::Paused,
        Some(ContainerStateStatusEnum::RESTARTING) => ContainerStatus::Restarting,
        Some(
            ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD | ContainerStateStatusEnum::REMOVING,
        ) => ContainerStatus::Stopped,
        Some(ContainerStateStatusEnum::EMPTY) | None => ContainerStatus::Unknown,
    };
    let health = match state.and_then(|s| s.health.as_ref()).and_then(|h| h.status) {
        // The kubelet owns the health of the containers it manages.
        _ if kube_managed => ContainerHealth::Unknown,
        Some(HealthStatusEnum::HEALTHY) => ContainerHealth::Healthy,
        Some(HealthStatusEnum::UNHEALTHY) => ContainerHealth::Unhealthy,
        _ => ContainerHealth::Unknown,
    };
    let running = state.and_then(|s| s.running).unwrap_or(false);
    let finished_at = if running { None } else { timestamp(state.and_then(|s| s.finished_at.as_deref())) };
    let exit_code = match status {
        ContainerStatus::Stopped => state.and_then(|s| s.exit_code).and_then(wm_core::ExitCode::new),
        _ => None,
    };
    let container_state = ContainerState {
        running,
        status,
        health,
        created_at: timestamp(inspect.created.as_deref()),
        started_at: timestamp(state.and_then(|s| s.started_at.as_deref())),
        finished_at,
        exit_code,
        pid: state.and_then(|s| s.pid).and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
    };
    let network_ips: StrMap = inspect
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|(name, endpoint)| {
            endpoint.ip_address.as_deref().filter(|ip| !ip.is_empty()).map(|ip| (name.clone(), ip.to_owned()))
        })
        .collect();
    let mut ports: Vec<ContainerPort> = inspect
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|(spec, bindings)| {
            let (port, protocol) = spec.split_once('/').unwrap_or((spec.as_str(), "tcp"));
            let port = port.parse().ok()?;
            let host_port = bindings.iter().flatten().find_map(|b| b.host_port.as_deref().and_then(|p| p.parse().ok()));
            Some(ContainerPort { port, protocol: protocol.to_owned(), name: String::new(), host_port })
        })
        .collect();
    ports.sort_by(|a, b| (a.port, &a.protocol).cmp(&(b.port, &b.protocol)));
    let host_config = inspect.host_config.as_ref();
    let cpu_limit = host_config.and_then(|h| match (h.nano_cpus, h.cpu_quota, h.cpu_period) {
        (Some(nano), _, _) if nano > 0 => Some(nano as f64 / 1e9),
        (_, Some(quota), Some(period)) if quota > 0 && period > 0 => Some(quota as f64 / period as f64),
        _ => None,
    });
    let resources = ResourceSpec {
        cpu_request: None,
        cpu_limit,
        memory_request: host_config.and_then(|h| h.memory_reservation).filter(|m| *m > 0).map(|m| m as u64),
        memory_limit: host_config.and_then(|h| h.memory).filter(|m| *m > 0).map(|m| m as u64),
    }
    .into();
    let owner = labels_map
        .get(KUBE_POD_UID_LABEL)
        .filter(|uid| !uid.is_empty())
        .map(|uid| EntityId::new(Kind::KubernetesPod, uid.as_str()));
    let labels: StrMap = labels_map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Some(Container {
        id: wm_core::Id::from(id),
        name: inspect.name.as_deref().unwrap_or_default().trim_start_matches('/').into(),
        labels,
        env: env.filter(config.and_then(|c| c.env.as_ref()).into_iter().flatten()),
        image,
        runtime: Some(Runtime::Docker),
        state: container_state,
        owner,
        restart_count: inspect.restart_count.and_then(|c| u32::try_from(c).ok()).unwrap_or(0),
        resources,
        details: ContainerDetails {
            hostname: config.and_then(|c| c.hostname.clone()).unwrap_or_default(),
            network_ips,
            ports,
            ..ContainerDetails::default()
        }
        .into(),
    })
}

/// The attributes dockerd adds to a container event besides the container's labels; every
/// other attribute is a label.
const EVENT_ATTRIBUTES: &[&str] = &["name", "image", "exitCode", "signal", "execID", "oldName", "container"];

/// Builds a container from one event: its attributes (name, image, labels, exit code), its
/// action and its time.
///
/// Used when the container is gone before it could be inspected, so that a short-lived
/// container is still seen. The action gives the status; `time` becomes the start time on
/// `start`, and the finish time on `die` or `destroy`. Returns `None` for a pause container.
pub fn container_from_event(
    id: &str,
    action: &str,
    attributes: &HashMap<String, String>,
    time: Option<Timestamp>,
) -> Option<Container> {
    let image_raw = attributes.get("image").map(String::as_str).unwrap_or_default();
    let label_map: HashMap<String, String> = attributes
        .iter()
        .filter(|(k, _)| !EVENT_ATTRIBUTES.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if is_pause_container(&label_map, image_raw) {
        return None;
    }
    let exit_code = attributes.get("exitCode").and_then(|c| c.parse().ok()).and_then(wm_core::ExitCode::new);
    let finished = matches!(action, "die" | "destroy");
    // dockerd's own inspect says `Running: true` of a paused container too: pausing freezes
    // its processes, it does not stop them.
    let running = matches!(action, "start" | "restart" | "unpause" | "pause");
    let state = ContainerState {
        running,
        status: match action {
            "create" => ContainerStatus::Created,
            "start" | "restart" | "unpause" => ContainerStatus::Running,
            "pause" => ContainerStatus::Paused,
            "die" | "destroy" => ContainerStatus::Stopped,
            _ => ContainerStatus::Unknown,
        },
        started_at: if action == "start" { time } else { None },
        finished_at: if finished { time } else { None },
        exit_code: if finished { exit_code } else { None },
        ..ContainerState::default()
    };
    Some(Container {
        id: wm_core::Id::from(id),
        name: attributes.get("name").map(String::as_str).unwrap_or_default().into(),
        image: ContainerImage::parse(image_raw),
        runtime: Some(Runtime::Docker),
        owner: label_map
            .get(KUBE_POD_UID_LABEL)
            .filter(|uid| !uid.is_empty())
            .map(|uid| EntityId::new(Kind::KubernetesPod, uid.as_str())),
        labels: label_map.into_iter().collect(),
        state,
        ..Container::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect(json: &str) -> ContainerInspectResponse {
        serde_json::from_str(json).unwrap()
    }

    const RUNNING: &str = r#"{
        "Id": "71179903f5ff7c582f43424156766633a63b7164ce07c6e611e0821a2b0a56b7",
        "Created": "2026-11-21T23:44:11.864466783Z",
        "State": {"Status": "running", "Running": true, "Paused": false, "Restarting": false,
                  "OOMKilled": false, "Dead": false, "Pid": 13548, "ExitCode": 0, "Error": "",
                  "StartedAt": "2026-11-21T23:44:12.139151567Z", "FinishedAt": "0001-01-01T00:00:00Z",
                  "Health": {"Status": "healthy", "FailingStreak": 0, "Log": []}},
        "Image": "sha256:042fbd4db46951a21f66a9bf6276ba182d7f86638b6310ccfbdb004cdfdf0416",
        "Name": "/web",
        "RestartCount": 2,
        "HostConfig": {"NanoCpus": 1500000000, "Memory": 268435456, "MemoryReservation": 0},
        "Config": {"Hostname": "71179903f5ff", "Image": "registry.example.com:5000/team/web:2.1",
                   "Env": ["PATH=/bin", "DD_ENV=prod", "API_KEY=secret", "MY_TEAM=core"],
                   "Labels": {"com.example.tier": "front"}},
        "NetworkSettings": {"Networks": {"none": {"IPAddress": ""}, "net1": {"IPAddress": "10.0.0.5"}},
                            "Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}], "53/udp": null}}
    }"#;

    #[test]
    fn a_running_container_has_every_field_it_needs() {
        let c = container_from_inspect(&inspect(RUNNING), None, &EnvFilter::new(["my_team"])).unwrap();
        assert_eq!(&*c.id, "71179903f5ff7c582f43424156766633a63b7164ce07c6e611e0821a2b0a56b7");
        assert_eq!(c.name, "web");
        assert_eq!(c.details.hostname, "71179903f5ff");
        assert_eq!(c.image.name, "registry.example.com:5000/team/web");
        assert_eq!(c.image.registry, "registry.example.com:5000");
        assert_eq!(c.image.short_name, "web");
        assert_eq!(c.image.tag, "2.1");
        assert_eq!(c.image.id, "sha256:042fbd4db46951a21f66a9bf6276ba182d7f86638b6310ccfbdb004cdfdf0416");
        // Secrets and PATH stay out; the rules' vars and the configured one are kept.
        assert_eq!(c.env.iter().collect::<Vec<_>>(), vec![("DD_ENV", "prod"), ("MY_TEAM", "core")]);
        assert_eq!(c.labels.get("com.example.tier"), Some("front"));
        assert!(c.state.running);
        assert_eq!(c.state.status, ContainerStatus::Running);
        assert_eq!(c.state.health, ContainerHealth::Healthy);
        assert_eq!(c.state.finished_at, None, "0001-01-01 means never");
        assert_eq!(c.state.exit_code, None);
        assert!(c.state.started_at.is_some() && c.state.created_at.is_some());
        assert_eq!(c.state.pid, 13548);
        assert_eq!(c.restart_count, 2);
        assert_eq!(c.runtime, Some(Runtime::Docker));
        assert_eq!(c.details.network_ips.iter().collect::<Vec<_>>(), vec![("net1", "10.0.0.5")]);
        assert_eq!(c.details.ports.len(), 2);
        assert_eq!(
            (c.details.ports[0].port, c.details.ports[0].protocol.as_str(), c.details.ports[0].host_port),
            (53, "udp", None)
        );
        assert_eq!(
            (c.details.ports[1].port, c.details.ports[1].protocol.as_str(), c.details.ports[1].host_port),
            (80, "tcp", Some(8080))
        );
        assert_eq!(c.resources.cpu_limit, Some(1.5));
        assert_eq!(c.resources.memory_limit, Some(268_435_456));
        assert_eq!(c.resources.memory_request, None);
        assert_eq!(c.owner, None);
    }

    #[test]
    fn an_exited_container_has_its_exit_code_and_finish_time() {
        let json = RUNNING
            .replace(r#""Status": "running", "Running": true"#, r#""Status": "exited", "Running": false"#)
            .replace(r#""ExitCode": 0"#, r#""ExitCode": 137"#)
            .replace("0001-01-01T00:00:00Z", "2026-11-21T23:45:00Z");
        let c = container_from_inspect(&inspect(&json), None, &EnvFilter::default()).unwrap();
        assert!(!c.state.running);
        assert_eq!(c.state.status, ContainerStatus::Stopped);
        assert_eq!(c.state.exit_code, wm_core::ExitCode::new(137));
        assert_eq!(c.state.finished_at, Some(Timestamp::parse_rfc3339("2026-11-21T23:45:00Z").unwrap()));
    }

    #[test]
    fn kubernetes_containers_leave_health_to_the_kubelet_and_name_their_pod() {
        let json = RUNNING.replace(
            r#""Labels": {"com.example.tier": "front"}"#,
            r#""Labels": {"io.kubernetes.pod.namespace": "default", "io.kubernetes.pod.uid": "0e5c7e4f-1b5b-4f87-9d4c-43f6b1a0c8a1"}"#,
        );
        let c = container_from_inspect(&inspect(&json), None, &EnvFilter::default()).unwrap();
        assert_eq!(c.state.health, ContainerHealth::Unknown);
        assert_eq!(c.owner, Some(EntityId::new(Kind::KubernetesPod, "0e5c7e4f-1b5b-4f87-9d4c-43f6b1a0c8a1")));
    }

    #[test]
    fn pause_containers_are_skipped() {
        let sandbox = RUNNING.replace(
            r#""Labels": {"com.example.tier": "front"}"#,
            r#""Labels": {"io.kubernetes.docker.type": "podsandbox"}"#,
        );
        assert!(container_from_inspect(&inspect(&sandbox), None, &EnvFilter::default()).is_none());
        let pause_image = RUNNING
            .replace(
                r#""Labels": {"com.example.tier": "front"}"#,
                r#""Labels": {"io.kubernetes.pod.namespace": "kube-system"}"#,
            )
            .replace("registry.example.com:5000/team/web:2.1", "registry.k8s.io/pause:3.9");
        assert!(container_from_inspect(&inspect(&pause_image), None, &EnvFilter::default()).is_none());
        // Outside Kubernetes an image called pause is a workload like any other.
        let plain = RUNNING.replace("registry.example.com:5000/team/web:2.1", "pause:1");
        assert!(container_from_inspect(&inspect(&plain), None, &EnvFilter::default()).is_some());
    }

    #[test]
    fn a_container_made_from_an_image_id_shows_the_resolved_name() {
        let json = RUNNING.replace(
            "registry.example.com:5000/team/web:2.1",
            "sha256:042fbd4db46951a21f66a9bf6276ba182d7f86638b6310ccfbdb004cdfdf0416",
        );
        let c = container_from_inspect(&inspect(&json), Some("team/web:3"), &EnvFilter::default()).unwrap();
        assert_eq!((c.image.name.as_str(), c.image.tag.as_str()), ("team/web", "3"));
        assert_eq!(c.image.id, "sha256:042fbd4db46951a21f66a9bf6276ba182d7f86638b6310ccfbdb004cdfdf0416");
    }

    #[test]
    fn an_odd_inspect_never_panics() {
        for json in [
            r#"{}"#,
            r#"{"Id": ""}"#,
            r#"{"Id": "x", "State": {"Pid": -4}, "RestartCount": -1, "Created": "yesterday"}"#,
        ] {
            let c = container_from_inspect(&inspect(json), None, &EnvFilter::default());
            if let Some(c) = c {
                assert_eq!((c.state.pid, c.restart_count, c.state.created_at), (0, 0, None));
            }
        }
    }

    #[test]
    fn an_event_alone_describes_a_container_gone_before_inspect() {
        let attributes: HashMap<String, String> =
            [("name", "short"), ("image", "wm-test/busybox:1"), ("exitCode", "3"), ("team", "core")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        let at = Timestamp::from_unix(1_800_000_000, 0);
        let c = container_from_event("abc", "die", &attributes, Some(at)).unwrap();
        assert_eq!(c.name, "short");
        assert_eq!(c.image.short_name, "busybox");
        assert_eq!(c.labels.iter().collect::<Vec<_>>(), vec![("team", "core")]);
        assert_eq!(
            (c.state.exit_code, c.state.finished_at, c.state.running),
            (wm_core::ExitCode::new(3), Some(at), false)
        );
        let started = container_from_event("abc", "start", &attributes, Some(at)).unwrap();
        assert!(started.state.running);
        assert_eq!(started.state.exit_code, None);
    }

    #[test]
    fn an_event_alone_reads_a_paused_or_restarted_container_as_running_as_inspect_does() {
        let attributes = HashMap::from([("name".to_owned(), "web".to_owned())]);
        let at = Timestamp::from_unix(1_800_000_000, 0);
        for (action, status, running) in [
            ("create", ContainerStatus::Created, false),
            ("start", ContainerStatus::Running, true),
            ("restart", ContainerStatus::Running, true),
            ("pause", ContainerStatus::Paused, true),
            ("unpause", ContainerStatus::Running, true),
            ("die", ContainerStatus::Stopped, false),
            ("destroy", ContainerStatus::Stopped, false),
        ] {
            let c = container_from_event("abc", action, &attributes, Some(at)).unwrap();
            assert_eq!((c.state.status, c.state.running), (status, running), "{action}");
        }
    }
}
