//! Podman's libpod JSON (the container list and inspect) and its mapping to the store's
//! [`Container`]: pure functions, no I/O.
//!
//! Every field is optional: a missing one takes its default. A value of the wrong type still
//! fails the whole row or inspect; the collector then stores the container from its list row
//! (a bad inspect) or leaves it as the store had it (a bad row).

use std::collections::HashMap;

use serde::Deserialize;
use wm_core::{
    Container, ContainerDetails, ContainerHealth, ContainerImage, ContainerState, ContainerStatus, EnvFilter,
    PODMAN_POD_NAME_LABEL, ResourceSpec, Runtime, StrMap, Timestamp,
};

/// One row of `GET /libpod/containers/json?all=true`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ListEntry {
    /// The container id.
    pub id: String,
    /// Its names (one, in practice).
    pub names: Vec<String>,
    /// The image reference it was created from.
    pub image: String,
    /// The image id (hex, without `sha256:`).
    #[serde(rename = "ImageID")]
    pub image_id: String,
    /// Its labels.
    pub labels: Option<HashMap<String, String>>,
    /// `created`, `running`, `paused`, `exited`, `stopped` …
    pub state: String,
    /// Exit code of its last run.
    pub exit_code: i64,
    /// Unix seconds of its last exit (negative: never).
    pub exited_at: i64,
    /// Unix seconds of its last start (negative or 0: never).
    pub started_at: i64,
    /// Its main process id (0 when not running).
    pub pid: i64,
    /// The name of its podman pod, if any.
    pub pod_name: String,
    /// Whether it is its pod's infra (pause) container.
    pub is_infra: bool,
}

impl ListEntry {
    /// Returns the row's fingerprint: its state, exit code, exit and start times, pid, names and
    /// pod name, joined in one string.
    ///
    /// When it differs from the fingerprint of the row the container was last inspected for,
    /// the collector inspects the container again.
    pub fn fingerprint(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}|{}",
            self.state,
            self.exit_code,
            self.exited_at,
            self.started_at,
            self.pid,
            self.names.join(","),
            self.pod_name
        )
    }
}

/// The parts of `GET /libpod/containers/{id}/json` the collector reads.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct Inspect {
    /// The container id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// When it was created (RFC 3339).
    pub created: String,
    /// The image id (hex).
    pub image: String,
    /// The image reference.
    pub image_name: String,
    /// How many times it was restarted.
    pub restart_count: i64,
    /// Whether it is a pod's infra container.
    pub is_infra: bool,
    /// Its state.
    pub state: InspectState,
    /// Its config.
    pub config: InspectConfig,
    /// Its resource limits.
    pub host_config: InspectHostConfig,
    /// Its networks.
    pub network_settings: InspectNetworkSettings,
}

/// `State` of an inspect.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct InspectState {
    /// `created`, `running`, `paused`, `exited` …
    pub status: String,
    /// Whether it runs.
    pub running: bool,
    /// Its main process id.
    pub pid: i64,
    /// Exit code of its last run.
    pub exit_code: i64,
    /// When it last started (RFC 3339; `0001-01-01…`: never).
    pub started_at: String,
    /// When it last finished.
    pub finished_at: String,
    /// The health check's verdict.
    pub health: Option<InspectHealth>,
    /// Its cgroup.
    pub cgroup_path: String,
}

/// `State.Health` of an inspect.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct InspectHealth {
    /// `healthy`, `unhealthy`, `starting` or empty.
    pub status: String,
}

/// `Config` of an inspect.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct InspectConfig {
    /// Its hostname.
    pub hostname: String,
    /// `NAME=value` pairs.
    pub env: Option<Vec<String>>,
    /// Its labels.
    pub labels: Option<HashMap<String, String>>,
    /// Its health check, when it has one (whose verdict only an inspect shows).
    pub healthcheck: Option<serde_json::Value>,
}

/// `HostConfig` of an inspect.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct InspectHostConfig {
    /// Memory limit in bytes (0: none).
    pub memory: i64,
    /// Memory reservation in bytes.
    pub memory_reservation: i64,
    /// CPU limit in billionths of a core.
    pub nano_cpus: i64,
    /// CFS quota.
    pub cpu_quota: i64,
    /// CFS period.
    pub cpu_period: i64,
}

/// `NetworkSettings` of an inspect.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct InspectNetworkSettings {
    /// Per network, its endpoint.
    pub networks: Option<HashMap<String, InspectEndpoint>>,
}

/// One network endpoint.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct InspectEndpoint {
    /// The container's address on it.
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
}

/// Maps Podman's state name to the store's status; an unknown name gives `Unknown`.
fn status(state: &str) -> ContainerStatus {
    match state {
        "created" | "configured" | "initialized" => ContainerStatus::Created,
        "running" | "stopping" => ContainerStatus::Running,
        "paused" => ContainerStatus::Paused,
        "restarting" => ContainerStatus::Restarting,
        "exited" | "stopped" | "dead" | "removing" => ContainerStatus::Stopped,
        _ => ContainerStatus::Unknown,
    }
}

fn rfc3339(text: &str) -> Option<Timestamp> {
    // Podman writes 0001-01-01T00:00:00Z for "never"; outside Timestamp's range, so None.
    Timestamp::parse_rfc3339(text).ok()
}

/// Converts Unix seconds to a time; 0 or negative (Podman's "never") gives `None`.
fn unix(secs: i64) -> Option<Timestamp> {
    (secs > 0).then(|| Timestamp::from_unix(secs, 0))
}

/// Parses the image reference and sets its id when there is one, adding the `sha256:` prefix
/// when Podman leaves it out.
fn image(reference: &str, image_id: &str) -> ContainerImage {
    if image_id.is_empty() || image_id.starts_with("sha256:") {
        ContainerImage::parse_with_id(reference, image_id)
    } else {
        ContainerImage::parse_with_id(reference, &format!("sha256:{image_id}"))
    }
}

/// Returns the container's labels, plus [`PODMAN_POD_NAME_LABEL`] when it is in a podman pod.
fn labels(map: Option<&HashMap<String, String>>, pod_name: &str) -> StrMap {
    let mut labels: StrMap = map.into_iter().flatten().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if !pod_name.is_empty() {
        labels.insert(PODMAN_POD_NAME_LABEL, pod_name);
    }
    labels
}

/// Converts an inspect into a container, taking the podman pod's name from its list row and
/// keeping only the env vars that `env` keeps.
///
/// The exit code and finish time are kept only for a stopped container, the pid only for a
/// running one. Returns `None` for an infra container (by its inspect or its row) or one without
/// an id.
pub fn container_from_inspect(inspect: &Inspect, entry: &ListEntry, env: &EnvFilter) -> Option<Container> {
    if inspect.id.is_empty() || inspect.is_infra || entry.is_infra {
        return None;
    }
    let s = &inspect.state;
    let status = status(&s.status);
    let stopped = status == ContainerStatus::Stopped;
    let health = match s.health.as_ref().map(|h| h.status.as_str()) {
        Some("healthy") => ContainerHealth::Healthy,
        Some("unhealthy") => ContainerHealth::Unhealthy,
        _ => ContainerHealth::Unknown,
    };
    let h = &inspect.host_config;
    let cpu_limit = if h.nano_cpus > 0 {
        Some(h.nano_cpus as f64 / 1e9)
    } else if h.cpu_quota > 0 && h.cpu_period > 0 {
        Some(h.cpu_quota as f64 / h.cpu_period as f64)
    } else {
        None
    };
    Some(Container {
        id: wm_core::Id::from(inspect.id.as_str()),
        name: (&inspect.name).into(),
        labels: labels(inspect.config.labels.as_ref(), &entry.pod_name),
        env: env.filter(inspect.config.env.iter().flatten()),
        image: image(&inspect.image_name, &inspect.image),
        runtime: Some(Runtime::Podman),
        state: ContainerState {
            running: s.running,
            status,
            health,
            created_at: rfc3339(&inspect.created),
            started_at: rfc3339(&s.started_at),
            finished_at: if stopped { rfc3339(&s.finished_at) } else { None },
            exit_code: stopped.then(|| wm_core::ExitCode::new(s.exit_code)).flatten(),
            pid: if s.running { u32::try_from(s.pid).unwrap_or(0) } else { 0 },
        },
        restart_count: u32::try_from(inspect.restart_count).unwrap_or(0),
        resources: ResourceSpec {
            cpu_limit,
            memory_limit: (h.memory > 0).then_some(h.memory as u64),
            memory_request: (h.memory_reservation > 0).then_some(h.memory_reservation as u64),
            ..ResourceSpec::default()
        }
        .into(),
        details: ContainerDetails {
            hostname: inspect.config.hostname.clone(),
            network_ips: inspect
                .network_settings
                .networks
                .iter()
                .flatten()
                .filter(|(_, e)| !e.ip_address.is_empty())
                .map(|(n, e)| (n.as_str(), e.ip_address.as_str()))
                .collect(),
            cgroup_path: s.cgroup_path.clone(),
            ..ContainerDetails::default()
        }
        .into(),
        ..Container::default()
    })
}

/// Builds a container from its list row alone: what the collector stores when the container's
/// inspect does not parse, so that one odd container does not drop out of the full list.
///
/// The result has no env, health, creation time, restart count, resources or details
/// (hostname, networks, cgroup): only an inspect has them. Returns `None` for an infra
/// container or one without an id.
pub fn container_from_list(entry: &ListEntry) -> Option<Container> {
    if entry.id.is_empty() || entry.is_infra {
        return None;
    }
    let status = status(&entry.state);
    let stopped = status == ContainerStatus::Stopped;
    Some(Container {
        id: wm_core::Id::from(entry.id.as_str()),
        name: entry.names.first().map(String::as_str).unwrap_or_default().into(),
        labels: labels(entry.labels.as_ref(), &entry.pod_name),
        image: image(&entry.image, &entry.image_id),
        runtime: Some(Runtime::Podman),
        state: ContainerState {
            running: status == ContainerStatus::Running,
            status,
            started_at: unix(entry.started_at),
            finished_at: if stopped { unix(entry.exited_at) } else { None },
            exit_code: stopped.then(|| wm_core::ExitCode::new(entry.exit_code)).flatten(),
            pid: if status == ContainerStatus::Running { u32::try_from(entry.pid).unwrap_or(0) } else { 0 },
            ..ContainerState::default()
        },
        ..Container::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"[{"AutoRemove": false, "Command": ["sleep", "100"], "Created": "2026-11-22T00:04:11.635953833Z",
        "Exited": false, "ExitedAt": -62135596800, "ExitCode": 0,
        "Id": "0a4b893572604f6a4f81ec6a0f357ecf022643fac1c1479dafef4ef1fe110270",
        "Image": "localhost/wm-test/busybox:1", "ImageID": "2922ea645a54cb1a9c72158faf619292eca775f31ab0ce75d5d384e7819ae5e7",
        "IsInfra": false, "Labels": {"team": "x"}, "Mounts": [], "Names": ["c1"], "Namespaces": {}, "Networks": [],
        "Pid": 8285, "Pod": "0b2bca51", "PodName": "pod1", "Ports": null, "Size": null, "StartedAt": 1795305851,
        "State": "running", "Status": ""}]"#;

    const INSPECT: &str = r#"{"Id": "0a4b893572604f6a4f81ec6a0f357ecf022643fac1c1479dafef4ef1fe110270",
        "Created": "2026-11-22T00:04:11.635953833Z", "Path": "sleep", "Args": ["100"],
        "State": {"OciVersion": "1.0.2-dev", "Status": "running", "Running": true, "Paused": false, "Pid": 8285,
                  "ConmonPid": 8275, "ExitCode": 0, "Error": "", "StartedAt": "2026-11-22T00:04:11.766037723Z",
                  "FinishedAt": "0001-01-01T00:00:00Z", "Health": {"Status": "", "FailingStreak": 0, "Log": null},
                  "CgroupPath": "/libpod_parent/libpod-0a4b8935"},
        "Image": "2922ea645a54cb1a9c72158faf619292eca775f31ab0ce75d5d384e7819ae5e7",
        "ImageName": "localhost/wm-test/busybox:1", "Name": "c1", "RestartCount": 0, "IsInfra": false,
        "Config": {"Hostname": "0a4b89357260", "Env": ["DD_ENV=prod", "PATH=/bin", "container=podman"],
                   "Labels": {"team": "x"}},
        "HostConfig": {"Memory": 0, "NanoCpus": 0, "CpuQuota": 50000, "CpuPeriod": 100000},
        "NetworkSettings": {"Networks": null}}"#;

    #[test]
    fn a_podman_pods_running_container_has_its_fields_and_pod_name() {
        let entries: Vec<ListEntry> = serde_json::from_str(LIST).unwrap();
        let inspect: Inspect = serde_json::from_str(INSPECT).unwrap();
        let c = container_from_inspect(&inspect, &entries[0], &EnvFilter::default()).unwrap();
        assert_eq!(c.name, "c1");
        assert_eq!(c.labels.get("team"), Some("x"));
        assert_eq!(c.labels.get(PODMAN_POD_NAME_LABEL), Some("pod1"));
        assert_eq!(c.env.iter().collect::<Vec<_>>(), vec![("DD_ENV", "prod")]);
        assert_eq!(
            (c.image.registry.as_str(), c.image.short_name.as_str(), c.image.tag.as_str()),
            ("localhost", "busybox", "1")
        );
        assert_eq!(c.image.id, "sha256:2922ea645a54cb1a9c72158faf619292eca775f31ab0ce75d5d384e7819ae5e7");
        assert!(c.state.running);
        assert_eq!(
            (c.state.status, c.state.pid, c.state.exit_code, c.state.finished_at),
            (ContainerStatus::Running, 8285, None, None)
        );
        assert_eq!(c.details.cgroup_path, "/libpod_parent/libpod-0a4b8935");
        assert_eq!(c.resources.cpu_limit, Some(0.5));
        assert_eq!(c.runtime, Some(Runtime::Podman));
    }

    #[test]
    fn the_list_row_alone_still_gives_the_container() {
        let mut entries: Vec<ListEntry> = serde_json::from_str(LIST).unwrap();
        entries[0].state = "exited".into();
        entries[0].exit_code = 2;
        entries[0].exited_at = 1_795_305_900;
        let c = container_from_list(&entries[0]).unwrap();
        assert_eq!(
            (c.name.as_str(), c.state.status, c.state.exit_code),
            ("c1", ContainerStatus::Stopped, wm_core::ExitCode::new(2))
        );
        assert_eq!(c.state.finished_at, Some(Timestamp::from_unix(1_795_305_900, 0)));
        assert_eq!(c.labels.get(PODMAN_POD_NAME_LABEL), Some("pod1"));
        assert!(c.env.is_empty());
    }

    #[test]
    fn infra_containers_are_skipped_and_odd_json_is_lenient() {
        let mut entries: Vec<ListEntry> = serde_json::from_str(LIST).unwrap();
        entries[0].is_infra = true;
        assert!(container_from_list(&entries[0]).is_none());
        // Wrong types in fields the store does not need still fail the row (serde), so the
        // collector falls back to the list; missing fields are fine.
        let sparse: Inspect = serde_json::from_str(r#"{"Id": "x", "State": {"Pid": -1, "Status": "weird"}}"#).unwrap();
        let c = container_from_inspect(&sparse, &ListEntry::default(), &EnvFilter::default()).unwrap();
        assert_eq!((c.state.pid, c.state.status), (0, ContainerStatus::Unknown));
    }

    #[test]
    fn the_fingerprint_changes_with_state_and_name() {
        let entries: Vec<ListEntry> = serde_json::from_str(LIST).unwrap();
        let mut renamed = entries[0].clone();
        renamed.names = vec!["c2".into()];
        let mut stopped = entries[0].clone();
        stopped.state = "exited".into();
        assert_ne!(entries[0].fingerprint(), renamed.fingerprint());
        assert_ne!(entries[0].fingerprint(), stopped.fingerprint());
        assert_eq!(entries[0].fingerprint(), entries[0].clone().fingerprint());
    }
}
