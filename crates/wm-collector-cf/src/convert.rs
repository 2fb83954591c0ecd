//! Reads the properties Diego sets on a Garden container into an [`Instance`], and turns an
//! instance (with the Cloud Controller's data about its app, when known) into a container entity
//! whose collector tags are the Cloud Foundry tags of DESIGN 7.5.
//!
//! Diego's executor sets these properties on every app and task container (cloudfoundry/executor
//! `depot/containerstore/storenode.go`, cloudfoundry/cloud_controller_ng
//! `lib/cloud_controller/diego/protocol/container_network_info.rb`):
//! - `network.app_id`, `network.space_id`, `network.org_id`, `network.ports`,
//!   `network.container_workload` (`app`, `task` or `staging`);
//! - `log_config`: JSON `{"guid", "index", "source_name", "tags": {app_name, app_id, space_name,
//!   space_id, organization_name, organization_id, instance_id, process_type, …}}` (a task's has
//!   no index and no instance tags).
//!
//! Health-check containers (handle `check-…`, or property `executor-healthcheck`) and containers
//! with neither `log_config` nor `network.app_id` (a rootfs sizer, another owner's container) are
//! not workloads: they are skipped without a log line.

use std::collections::HashMap;

use serde::Deserialize;
use wm_core::{
    Container, ContainerDetails, ContainerPort, ContainerState, ContainerStatus, Runtime, StrMap, Timestamp,
};

use crate::garden::ContainerInfo;

/// What the Cloud Controller reports about an app: its current names, and extra tags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppMetadata {
    /// The app's current name (after any rename).
    pub name: String,
    /// The GUID of the app's space.
    pub space_id: String,
    /// The space's name.
    pub space_name: String,
    /// The GUID of the space's org.
    pub org_id: String,
    /// The org's name.
    pub org_name: String,
    /// Tags from the app's metadata (`tags.datadoghq.com/<k>` labels and annotations), its
    /// sidecars and its isolation segment, each as `key:value`.
    pub tags: Vec<String>,
}

/// What a Cloud Foundry container runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// An instance of an app's process (LRP).
    App,
    /// A one-off task.
    Task,
    /// A staging (build) container.
    Staging,
}

impl Workload {
    /// Reads `network.container_workload`; any value other than `task` and `staging`, a missing
    /// one included, means an app.
    fn parse(text: &str) -> Self {
        match text {
            "task" => Workload::Task,
            "staging" => Workload::Staging,
            _ => Workload::App,
        }
    }

    /// Returns the name Diego writes for this workload.
    fn as_str(self) -> &'static str {
        match self {
            Workload::App => "app",
            Workload::Task => "task",
            Workload::Staging => "staging",
        }
    }
}

/// One Cloud Foundry workload in a Garden container, from what Garden alone reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The Garden handle: the instance GUID (28 characters, not a UUID), or the task's GUID.
    pub handle: String,
    /// App, task or staging.
    pub workload: Workload,
    /// The app's GUID.
    pub app_id: String,
    /// The app's name when Diego wrote `log_config`; stale after a rename.
    pub app_name: String,
    /// The space's GUID.
    pub space_id: String,
    /// The space's name.
    pub space_name: String,
    /// The org's GUID.
    pub org_id: String,
    /// The org's name.
    pub org_name: String,
    /// The instance index (app instances only).
    pub index: Option<u32>,
    /// Whether Garden reports the container `active`.
    pub running: bool,
    /// The cell's IP address.
    pub external_ip: String,
    /// The container's IP address on the overlay network.
    pub container_ip: String,
    /// The published ports, as `(container port, host port)` pairs.
    pub ports: Vec<(u16, u16)>,
    /// When the container was created, computed from the age Garden reports; `None` when Garden
    /// reported no age.
    pub created_at: Option<Timestamp>,
}

/// The parts of the `log_config` property that the collector reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LogConfig {
    guid: String,
    index: Option<serde_json::Value>,
    tags: HashMap<String, serde_json::Value>,
}

/// Returns a JSON string or number as text; an empty string for anything else.
fn text(value: Option<&serde_json::Value>) -> String {
    match value {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// Reads an instance index written as a number or as a string of digits.
fn index_of(value: Option<&serde_json::Value>) -> Option<u32> {
    match value? {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Reads the info Garden gives about one container into an [`Instance`]; `None` when the
/// container is not a workload (a health check, or neither `log_config` nor `network.app_id`).
///
/// `age_nanos` is the container's age from `bulk_metrics`, if known, and `now` the time to count
/// it back from. A `log_config` that does not parse is read as empty: the instance then has only
/// what the `network.*` properties give. Call [`log_config_error`] to learn why it did not parse.
/// GUIDs come from the `network.*` properties, else from `log_config`; names come from
/// `log_config` only.
pub fn instance(handle: &str, info: &ContainerInfo, age_nanos: Option<i64>, now: Timestamp) -> Option<Instance> {
    let properties = &info.properties;
    if handle.starts_with("check-") || properties.contains_key("executor-healthcheck") {
        return None;
    }
    let log_config = properties.get("log_config");
    if log_config.is_none() && !properties.contains_key("network.app_id") {
        return None;
    }
    let log: LogConfig = log_config.and_then(|text| serde_json::from_str(text).ok()).unwrap_or_default();
    let tag = |key: &str| text(log.tags.get(key));
    let property = |key: &str| properties.get(key).cloned().unwrap_or_default();
    let or = |a: String, b: String| if a.is_empty() { b } else { a };
    let workload = Workload::parse(&property("network.container_workload"));
    let index = match workload {
        Workload::App => index_of(log.index.as_ref()).or_else(|| index_of(log.tags.get("instance_id"))),
        _ => None,
    };
    let ports = info
        .mapped_ports
        .iter()
        .filter_map(|p| Some((u16::try_from(p.container_port).ok()?, u16::try_from(p.host_port).ok()?)))
        .collect();
    let created_at =
        age_nanos.filter(|age| *age > 0).map(|age| Timestamp::from_unix_nanos(now.unix_nanos().saturating_sub(age)));
    Some(Instance {
        handle: handle.to_owned(),
        workload,
        app_id: or(or(property("network.app_id"), tag("app_id")), log.guid.clone()),
        app_name: tag("app_name"),
        space_id: or(property("network.space_id"), tag("space_id")),
        space_name: tag("space_name"),
        org_id: or(property("network.org_id"), tag("organization_id")),
        org_name: tag("organization_name"),
        index,
        running: info.state == "active",
        external_ip: info.external_ip.clone(),
        container_ip: info.container_ip.clone(),
        ports,
        created_at,
    })
}

/// Returns why the container's `log_config` property does not parse; `None` when it parses or
/// there is none.
pub fn log_config_error(info: &ContainerInfo) -> Option<String> {
    let text = info.properties.get("log_config")?;
    serde_json::from_str::<LogConfig>(text).err().map(|e| format!("its log_config does not parse: {e}"))
}

impl Instance {
    /// Builds the container entity, with the Cloud Controller's data about its app when `app` is
    /// given.
    ///
    /// The app, space and org names and the space and org GUIDs in `app` win over the instance's
    /// (its names come from `log_config`, which may be stale); an empty one in `app` leaves the
    /// instance's.
    ///
    /// The container is named `<app name>_<index>`, or `<app name>` without an index, or its
    /// handle when the app's name is unknown. Its collector tags come in the Datadog cluster
    /// agent's order: the instance's (`container_name`, `app_instance_index`,
    /// `app_instance_guid`), then the app's (`app_guid`, `app_name`), the org's (`org_id`,
    /// `org_name`) and the space's (`space_id`, `space_name`), then the tags of `app`. A tag whose
    /// value is empty is left out.
    pub fn entity(&self, app: Option<&AppMetadata>) -> Container {
        let pick = |now: Option<&str>, then: &str| now.filter(|v| !v.is_empty()).unwrap_or(then).to_owned();
        let app_name = pick(app.map(|a| a.name.as_str()), &self.app_name);
        let space_name = pick(app.map(|a| a.space_name.as_str()), &self.space_name);
        let space_id = pick(app.map(|a| a.space_id.as_str()), &self.space_id);
        let org_name = pick(app.map(|a| a.org_name.as_str()), &self.org_name);
        let org_id = pick(app.map(|a| a.org_id.as_str()), &self.org_id);
        let name = match (&self.index, app_name.is_empty()) {
            (_, true) => self.handle.clone(),
            (Some(index), false) => format!("{app_name}_{index}"),
            (None, false) => app_name.clone(),
        };
        let mut tags = Vec::with_capacity(10 + app.map_or(0, |a| a.tags.len()));
        let mut add = |key: &str, value: &str| {
            if !value.is_empty() {
                tags.push(format!("{key}:{value}"));
            }
        };
        add("container_name", &name);
        add("app_instance_index", &self.index.map(|i| i.to_string()).unwrap_or_default());
        add("app_instance_guid", &self.handle);
        add("app_guid", &self.app_id);
        add("app_name", &app_name);
        add("org_id", &org_id);
        add("org_name", &org_name);
        add("space_id", &space_id);
        add("space_name", &space_name);
        if let Some(app) = app {
            tags.extend(app.tags.iter().cloned());
        }
        let mut network_ips = StrMap::default();
        if !self.external_ip.is_empty() {
            network_ips.insert("external", self.external_ip.as_str());
        }
        if !self.container_ip.is_empty() {
            network_ips.insert("container", self.container_ip.as_str());
        }
        let mut labels = StrMap::default();
        labels.insert("network.container_workload", self.workload.as_str());
        if !self.app_id.is_empty() {
            labels.insert("network.app_id", self.app_id.as_str());
        }
        Container {
            id: wm_core::Id::from(self.handle.as_str()),
            name: name.into(),
            labels,
            runtime: Some(Runtime::Garden),
            state: ContainerState {
                running: self.running,
                status: if self.running { ContainerStatus::Running } else { ContainerStatus::Stopped },
                created_at: self.created_at,
                started_at: self.created_at,
                ..ContainerState::default()
            },
            details: ContainerDetails {
                network_ips,
                ports: self
                    .ports
                    .iter()
                    .map(|(port, host)| ContainerPort {
                        port: *port,
                        protocol: "tcp".into(),
                        name: String::new(),
                        host_port: Some(*host),
                    })
                    .collect(),
                collector_tags: tags,
                ..ContainerDetails::default()
            }
            .into(),
            ..Container::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(properties: &[(&str, &str)]) -> ContainerInfo {
        ContainerInfo {
            state: "active".into(),
            external_ip: "10.0.16.21".into(),
            container_ip: "10.255.93.167".into(),
            properties: properties.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            mapped_ports: vec![crate::garden::PortMapping { host_port: 61012, container_port: 8080 }],
        }
    }

    const LOG_CONFIG: &str = r#"{"guid":"app-1","index":2,"source_name":"CELL","tags":{"app_id":"app-1",
        "app_name":"web","instance_id":"2","organization_id":"org-1","organization_name":"acme",
        "process_id":"p1","process_instance_id":"h1","process_type":"web","source_id":"app-1",
        "space_id":"space-1","space_name":"dev"}}"#;

    #[test]
    fn an_app_instance_gets_the_cloud_foundry_tags() {
        let props = [("log_config", LOG_CONFIG), ("network.app_id", "app-1"), ("network.container_workload", "app")];
        let now = Timestamp::from_unix_nanos(10_000_000_000);
        let instance = instance("h1", &info(&props), Some(4_000_000_000), now).unwrap();
        assert_eq!(instance.index, Some(2));
        let c = instance.entity(None);
        assert_eq!(c.name, "web_2");
        assert_eq!(
            c.details.collector_tags,
            [
                "container_name:web_2",
                "app_instance_index:2",
                "app_instance_guid:h1",
                "app_guid:app-1",
                "app_name:web",
                "org_id:org-1",
                "org_name:acme",
                "space_id:space-1",
                "space_name:dev"
            ]
        );
        assert_eq!(c.state.started_at, Some(Timestamp::from_unix_nanos(6_000_000_000)));
        assert_eq!(c.details.ports[0].host_port, Some(61012));
        assert_eq!(c.details.network_ips.get("external"), Some("10.0.16.21"));
    }

    #[test]
    fn the_cloud_controller_gives_current_names_and_extra_tags() {
        let props = [("log_config", LOG_CONFIG)];
        let instance = instance("h1", &info(&props), None, Timestamp::from_unix_nanos(0)).unwrap();
        let app = AppMetadata {
            name: "shop".into(),
            space_name: "prod".into(),
            tags: vec!["env:prod".into(), "sidecar_present:false".into()],
            ..AppMetadata::default()
        };
        let c = instance.entity(Some(&app));
        assert_eq!(c.name, "shop_2");
        assert!(c.details.collector_tags.iter().any(|t| t == "app_name:shop"));
        assert!(c.details.collector_tags.iter().any(|t| t == "space_name:prod"));
        assert!(c.details.collector_tags.iter().any(|t| t == "org_name:acme"), "what the CC leaves empty stays");
        assert!(c.details.collector_tags.ends_with(&["env:prod".to_owned(), "sidecar_present:false".to_owned()]));
    }

    #[test]
    fn health_checks_and_foreign_containers_are_not_workloads() {
        let now = Timestamp::from_unix_nanos(0);
        assert!(instance("check-abc", &info(&[("executor:owner", "executor")]), None, now).is_none());
        assert!(instance("x", &info(&[("executor-healthcheck", "true")]), None, now).is_none());
        assert!(instance("rootfs-c-1", &info(&[("garden.state", "created")]), None, now).is_none());
    }

    #[test]
    fn a_task_has_no_index_and_is_named_by_its_app() {
        let log = r#"{"guid":"app-1","source_name":"CELL","tags":{"app_id":"app-1","app_name":"web",
            "organization_id":"o","organization_name":"acme","space_id":"s","space_name":"dev","source_id":"app-1"}}"#;
        let props = [("log_config", log), ("network.container_workload", "task")];
        let t = instance("task-guid", &info(&props), None, Timestamp::from_unix_nanos(0)).unwrap();
        assert_eq!((t.workload, t.index), (Workload::Task, None));
        let c = t.entity(None);
        assert_eq!(c.name, "web");
        assert!(!c.details.collector_tags.iter().any(|t| t.starts_with("app_instance_index:")));
        assert_eq!(c.labels.get("network.container_workload"), Some("task"));
    }

    #[test]
    fn a_broken_log_config_still_gives_the_network_properties() {
        let props = [("log_config", "{not json"), ("network.app_id", "app-1"), ("network.space_id", "s1")];
        let i = info(&props);
        let t = instance("h", &i, None, Timestamp::from_unix_nanos(0)).unwrap();
        assert_eq!((t.app_id.as_str(), t.space_id.as_str()), ("app-1", "s1"));
        assert_eq!(t.entity(None).name, "h", "no app name: named by its handle");
        assert!(log_config_error(&i).is_some());
    }
}
