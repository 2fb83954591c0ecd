//! Converts the answers of the ECS agent and of the task metadata endpoint into the store's
//! entities: pure functions, no I/O.
//!
//! - [`v1_tasks`]: the introspection API's `/v1/tasks` (EC2). One task entity per item, except
//!   the tasks whose known or desired status is `STOPPED`, and one container entity per container
//!   that has a `DockerId`, owned by its task. Region and account come from the task ARN; the
//!   cluster comes from the ARN when it names one, else from the caller (`/v1/metadata`'s
//!   `Cluster`).
//! - [`task_metadata`]: a task metadata answer (v2 `/v2/metadata`, v4 `/task` or
//!   `/taskWithTags`): the task with its tags, and its containers with state, exit code, health,
//!   limits, labels and addresses. The ECS agent's own pause containers and containers without a
//!   `DockerId` are left out.
//!
//! An item that does not parse is skipped and listed in [`Converted::skipped`] for the caller to
//! log; the other items are converted.

use std::collections::HashMap;

use serde::Deserialize;
use wm_core::{
    Container, ContainerDetails, ContainerHealth, ContainerImage, ContainerState, ContainerStatus, EcsTask, Entity,
    EntityId, Kind, LaunchType, OrchestratorContainer, ResourceSpec, Runtime, StrMap, Timestamp,
};

/// What a conversion made, and the items it had to skip.
#[derive(Debug, Default)]
pub struct Converted {
    /// The tasks first, then the containers, each in the order of the answer.
    pub entities: Vec<Entity>,
    /// One line per skipped item, saying which item and why.
    pub skipped: Vec<String>,
}

/// The parts of an ECS ARN (`arn:aws:ecs:<region>:<account>:<resource>/...`) that the entities
/// use.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Arn {
    /// The AWS region.
    pub region: String,
    /// The account id; empty when the ARN holds something other than digits there, such as a
    /// placeholder.
    pub account: String,
    /// The cluster's name when the resource names one (`task/<cluster>/<id>`,
    /// `container/<cluster>/<id>`, `cluster/<name>`); else empty.
    pub cluster: String,
}

/// Parses an ECS ARN; returns `None` for anything that is not an ECS ARN.
pub fn parse_arn(arn: &str) -> Option<Arn> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(_partition), Some("ecs"), Some(region), Some(account), Some(resource)) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let account = if account.bytes().all(|b| b.is_ascii_digit()) { account.to_owned() } else { String::new() };
    let segments: Vec<&str> = resource.split('/').collect();
    let cluster = match segments.as_slice() {
        ["cluster", name] => (*name).to_owned(),
        ["task" | "container", cluster, _id, ..] => (*cluster).to_owned(),
        _ => String::new(),
    };
    Some(Arn { region: region.to_owned(), account, cluster })
}

/// Returns a cluster's name, given either its name or its ARN.
fn cluster_name(cluster: &str) -> String {
    parse_arn(cluster).map_or_else(|| cluster.to_owned(), |arn| arn.cluster)
}

/// Parses an RFC 3339 time; `None` when it does not parse or is not after 1970, so that Go's zero
/// time (`0001-01-01T00:00:00Z`), which Go programs such as the ECS agent write for a time not
/// set, reads as no time.
fn time(text: &str) -> Option<Timestamp> {
    Timestamp::parse_rfc3339(text).ok().filter(|t| t.unix_nanos() > 0)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct V1Tasks {
    tasks: Vec<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct V1Task {
    arn: String,
    desired_status: String,
    known_status: String,
    family: String,
    version: String,
    containers: Vec<V1Container>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct V1Container {
    docker_id: String,
    docker_name: String,
    name: String,
    image: String,
    #[serde(rename = "ImageID")]
    image_id: String,
    created_at: String,
    started_at: String,
}

/// Builds the reference to a container that a task entity lists.
fn orchestrator_container(id: &str, name: &str, image: &str, image_id: &str) -> OrchestratorContainer {
    OrchestratorContainer { id: id.into(), name: name.into(), image: ContainerImage::parse_with_id(image, image_id) }
}

/// Converts the introspection API's `/v1/tasks` answer (EC2, daemon mode) into task and container
/// entities.
///
/// `cluster` is the cluster of `/v1/metadata`, as a name or an ARN; it names the cluster of tasks
/// whose ARN, in the old format, does not. A task without an `Arn`, or that does not parse, is
/// skipped and listed in [`Converted::skipped`]; a stopped task is left out silently.
///
/// # Errors
///
/// Returns the JSON error when the body as a whole does not parse: not JSON, or not shaped as a
/// task list (its `Tasks` must be a list).
pub fn v1_tasks(bytes: &[u8], cluster: &str) -> Result<Converted, serde_json::Error> {
    let list: V1Tasks = serde_json::from_slice(bytes)?;
    let mut out = Converted::default();
    let mut containers = Vec::new();
    for (i, item) in list.tasks.into_iter().enumerate() {
        let task = match serde_json::from_value::<V1Task>(item) {
            Ok(task) if !task.arn.is_empty() => task,
            Ok(_) => {
                out.skipped.push(format!("task {i}: no Arn"));
                continue;
            }
            Err(e) => {
                out.skipped.push(format!("task {i}: {e}"));
                continue;
            }
        };
        if task.known_status == "STOPPED" || task.desired_status == "STOPPED" {
            continue;
        }
        let arn = parse_arn(&task.arn).unwrap_or_default();
        let owner = EntityId::new(Kind::EcsTask, task.arn.as_str());
        let mut entity = EcsTask {
            id: wm_core::Id::from(task.arn.as_str()),
            family: task.family,
            version: task.version,
            cluster_name: if arn.cluster.is_empty() { cluster_name(cluster) } else { arn.cluster },
            launch_type: Some(LaunchType::Ec2),
            region: arn.region,
            aws_account: arn.account,
            desired_status: task.desired_status,
            known_status: task.known_status,
            ..EcsTask::default()
        };
        for c in task.containers.into_iter().filter(|c| !c.docker_id.is_empty()) {
            entity.containers.push(orchestrator_container(&c.docker_id, &c.name, &c.image, &c.image_id));
            let image = ContainerImage::parse_with_id(&c.image, &c.image_id);
            containers.push(Entity::from(Container {
                id: wm_core::Id::from(c.docker_id.as_str()),
                name: if c.docker_name.is_empty() { c.name.into() } else { c.docker_name.into() },
                image,
                owner: Some(owner.clone()),
                state: ContainerState {
                    created_at: time(&c.created_at),
                    started_at: time(&c.started_at),
                    ..ContainerState::default()
                },
                ..Container::default()
            }));
        }
        out.entities.push(Entity::from(entity));
    }
    out.entities.extend(containers);
    Ok(out)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct TaskMetadata {
    #[serde(rename = "TaskARN")]
    task_arn: String,
    cluster: String,
    family: String,
    revision: String,
    desired_status: String,
    known_status: String,
    availability_zone: String,
    launch_type: String,
    service_name: String,
    task_tags: HashMap<String, String>,
    container_instance_tags: HashMap<String, String>,
    containers: Vec<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct MetaContainer {
    docker_id: String,
    name: String,
    docker_name: String,
    image: String,
    #[serde(rename = "ImageID")]
    image_id: String,
    known_status: String,
    labels: HashMap<String, String>,
    limits: Limits,
    created_at: String,
    started_at: String,
    finished_at: String,
    exit_code: Option<i64>,
    health: Health,
    #[serde(rename = "Type")]
    kind: String,
    networks: Vec<Network>,
}

/// A container's limits: CPU units (1,024 per vCPU) and memory in MiB.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct Limits {
    #[serde(rename = "CPU")]
    cpu: Option<f64>,
    memory: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Health {
    status: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Network {
    #[serde(rename = "NetworkMode")]
    network_mode: String,
    #[serde(rename = "IPv4Addresses")]
    ipv4_addresses: Vec<String>,
}

/// Converts a container's `KnownStatus` into the store's status.
fn status(known: &str) -> ContainerStatus {
    match known {
        "RUNNING" => ContainerStatus::Running,
        "STOPPED" => ContainerStatus::Stopped,
        "CREATED" | "PULLED" | "PENDING" | "NONE" => ContainerStatus::Created,
        _ => ContainerStatus::Unknown,
    }
}

/// Converts a container's health status (`HEALTHY`, `UNHEALTHY`) into the store's health.
fn health(status: &str) -> ContainerHealth {
    match status {
        "HEALTHY" => ContainerHealth::Healthy,
        "UNHEALTHY" => ContainerHealth::Unhealthy,
        _ => ContainerHealth::Unknown,
    }
}

/// Copies a string map into the store's map type.
fn str_map(map: &HashMap<String, String>) -> StrMap {
    map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Converts a task metadata answer (v2 `/v2/metadata[WithTags]`, v4 `/task[WithTags]`) into the
/// task entity and its containers' entities.
///
/// An answer without a `TaskARN` gives no entities and one skipped line. A container that does
/// not parse is skipped and listed in [`Converted::skipped`]; the ECS agent's pause container and
/// containers without a `DockerId` are left out silently. Containers get the runtime
/// `Runtime::EcsFargate` when the task's launch type is Fargate, and no runtime otherwise.
///
/// # Errors
///
/// Returns the JSON error when the body as a whole does not parse: not JSON, or not shaped as a
/// task.
pub fn task_metadata(bytes: &[u8]) -> Result<Converted, serde_json::Error> {
    let task: TaskMetadata = serde_json::from_slice(bytes)?;
    let mut out = Converted::default();
    if task.task_arn.is_empty() {
        out.skipped.push("the task has no TaskARN".into());
        return Ok(out);
    }
    let arn = parse_arn(&task.task_arn).unwrap_or_default();
    let launch_type = match task.launch_type.as_str() {
        "FARGATE" => Some(LaunchType::Fargate),
        "EC2" => Some(LaunchType::Ec2),
        // v2 answers have no LaunchType; a task with container instance tags runs on an EC2
        // container instance, so its launch type is EC2.
        _ if !task.container_instance_tags.is_empty() => Some(LaunchType::Ec2),
        _ => None,
    };
    let runtime = (launch_type == Some(LaunchType::Fargate)).then_some(Runtime::EcsFargate);
    let owner = EntityId::new(Kind::EcsTask, task.task_arn.as_str());
    let mut entity = EcsTask {
        id: wm_core::Id::from(task.task_arn.as_str()),
        family: task.family,
        version: task.revision,
        cluster_name: if arn.cluster.is_empty() { cluster_name(&task.cluster) } else { arn.cluster },
        launch_type,
        region: arn.region,
        availability_zone: task.availability_zone,
        aws_account: arn.account,
        service_name: task.service_name,
        desired_status: task.desired_status,
        known_status: task.known_status,
        tags: str_map(&task.task_tags),
        container_instance_tags: str_map(&task.container_instance_tags),
        ..EcsTask::default()
    };
    let mut containers = Vec::new();
    for (i, item) in task.containers.into_iter().enumerate() {
        let c: MetaContainer = match serde_json::from_value(item) {
            Ok(c) => c,
            Err(e) => {
                out.skipped.push(format!("container {i}: {e}"));
                continue;
            }
        };
        // The ECS agent adds its own pause container to an `awsvpc` task; it is not a workload.
        if c.kind == "CNI_PAUSE" || c.name.starts_with("~internal~ecs~") || c.docker_id.is_empty() {
            continue;
        }
        entity.containers.push(orchestrator_container(&c.docker_id, &c.name, &c.image, &c.image_id));
        let status = status(&c.known_status);
        let image = ContainerImage::parse_with_id(&c.image, &c.image_id);
        let network_ips: StrMap = c
            .networks
            .iter()
            .filter_map(|n| n.ipv4_addresses.first().map(|ip| (n.network_mode.as_str(), ip.as_str())))
            .collect();
        containers.push(Entity::from(Container {
            id: wm_core::Id::from(c.docker_id.as_str()),
            name: if c.docker_name.is_empty() { c.name.into() } else { c.docker_name.into() },
            labels: str_map(&c.labels),
            image,
            runtime,
            owner: Some(owner.clone()),
            state: ContainerState {
                running: status == ContainerStatus::Running,
                status,
                health: health(&c.health.status),
                created_at: time(&c.created_at),
                started_at: time(&c.started_at),
                finished_at: time(&c.finished_at),
                exit_code: if status == ContainerStatus::Stopped {
                    c.exit_code.and_then(wm_core::ExitCode::new)
                } else {
                    None
                },
                // The task metadata endpoints give no pid.
                ..ContainerState::default()
            },
            resources: ResourceSpec {
                // Container limits are in CPU units, 1,024 to a vCPU.
                cpu_limit: c.limits.cpu.filter(|units| *units > 0.0).map(|units| units / 1024.0),
                memory_limit: c.limits.memory.filter(|mib| *mib > 0).map(|mib| mib.saturating_mul(1 << 20)),
                ..ResourceSpec::default()
            }
            .into(),
            details: ContainerDetails { network_ips, ..ContainerDetails::default() }.into(),
            ..Container::default()
        }));
    }
    out.entities.push(Entity::from(entity));
    out.entities.extend(containers);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_of_both_formats_and_placeholders_are_read() {
        let new = parse_arn("arn:aws:ecs:us-east-1:123457279990:task/ecs-cluster/e39c666b3b134c2c").unwrap();
        assert_eq!(
            (new.region.as_str(), new.account.as_str(), new.cluster.as_str()),
            ("us-east-1", "123457279990", "ecs-cluster")
        );
        let old = parse_arn("arn:aws:ecs:us-west-2:<aws_account_id>:task/example5-58ff").unwrap();
        assert_eq!((old.region.as_str(), old.account.as_str(), old.cluster.as_str()), ("us-west-2", "", ""));
        assert_eq!(cluster_name("arn:aws:ecs:us-east-1:1:cluster/prod"), "prod");
        assert_eq!(cluster_name("default"), "default");
        assert_eq!(parse_arn("not an arn"), None);
        assert_eq!(parse_arn("arn:aws:s3:::bucket"), None);
    }

    #[test]
    fn odd_items_are_skipped_and_the_rest_lands() {
        let body = br#"{"Tasks": [null, {"Arn": 5}, {"Family": "x"},
            {"Arn": "arn:aws:ecs:eu-west-1:1:task/c/1", "KnownStatus": "RUNNING", "Containers": [{"DockerId": "d1", "Name": "app"}]},
            {"Arn": "arn:aws:ecs:eu-west-1:1:task/c/2", "KnownStatus": "STOPPED", "Containers": []}]}"#;
        let converted = v1_tasks(body, "").unwrap();
        assert_eq!(converted.skipped.len(), 3, "{:?}", converted.skipped);
        assert_eq!(converted.entities.len(), 2, "one task (the stopped one skipped) and its container");
        assert!(v1_tasks(b"[1, 2]", "").is_err());
        assert!(task_metadata(b"{}").unwrap().entities.is_empty());
    }
}
