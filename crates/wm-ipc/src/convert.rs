//! Converts the store's entities to Datadog workloadmeta wire messages, and back.
//!
//! The agent's gRPC server converts entities to messages for its `WorkloadmetaStreamEntities`
//! stream; the remote-workloadmeta collector converts the messages it receives back to entities.
//! Every kind but Kubernetes metadata travels ([`WIRE_KINDS`]). A few fields have no
//! place in the messages and are lost on the way; each conversion's doc names them. Times travel
//! as whole Unix seconds, with 0 for none.

use std::collections::HashMap;

use wm_core::{
    Container, ContainerDetails, ContainerHealth, ContainerImage, ContainerImageMetadata, ContainerPort,
    ContainerState, ContainerStatus, EcsTask, Entity, EntityId, IStr, ImageLayer, ImageRef, Kind, KubernetesPod,
    Language, LaunchType, OrchestratorContainer, PodDetails, PodOwner, Process, ResourceSpec, Runtime, StrMap,
    Timestamp,
};

use crate::proto::workloadmeta as pb;

/// Copies a store map into a wire map.
fn map(m: &StrMap) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// Copies a wire map into a store map.
fn strmap(m: &HashMap<String, String>) -> StrMap {
    m.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The store kinds the wire carries: every kind but Kubernetes metadata, for which Datadog's
/// `WorkloadmetaKind` has no value.
pub const WIRE_KINDS: [Kind; 5] =
    [Kind::Container, Kind::ContainerImageMetadata, Kind::KubernetesPod, Kind::EcsTask, Kind::Process];

/// Returns the wire kind of a store kind, or `None` for Kubernetes metadata, which the wire does
/// not carry.
pub fn kind(k: Kind) -> Option<pb::WorkloadmetaKind> {
    match k {
        Kind::Container => Some(pb::WorkloadmetaKind::Container),
        Kind::KubernetesPod => Some(pb::WorkloadmetaKind::KubernetesPod),
        Kind::EcsTask => Some(pb::WorkloadmetaKind::EcsTask),
        Kind::Process => Some(pb::WorkloadmetaKind::Process),
        Kind::ContainerImageMetadata => Some(pb::WorkloadmetaKind::ContainerImageMetadata),
        Kind::KubernetesMetadata => None,
    }
}

/// Returns the store kind of a wire kind, or `None` for a wire kind this agent does not store:
/// CRDs.
pub fn from_kind(k: pb::WorkloadmetaKind) -> Option<Kind> {
    match k {
        pb::WorkloadmetaKind::Container => Some(Kind::Container),
        pb::WorkloadmetaKind::KubernetesPod => Some(Kind::KubernetesPod),
        pb::WorkloadmetaKind::EcsTask => Some(Kind::EcsTask),
        pb::WorkloadmetaKind::Process => Some(Kind::Process),
        pb::WorkloadmetaKind::ContainerImageMetadata => Some(Kind::ContainerImageMetadata),
        _ => None,
    }
}

/// Converts an entity id to its wire form.
///
/// Meant for ids of wire kinds only: an id of any other kind is sent as a container's id, since
/// the wire has no value for its kind.
fn entity_id(id: &EntityId) -> pb::WorkloadmetaEntityId {
    let kind = kind(id.kind).unwrap_or(pb::WorkloadmetaKind::Container);
    pb::WorkloadmetaEntityId { kind: kind as i32, id: id.id.to_string() }
}

/// Converts a wire entity id back, or returns `None` for an empty id or a kind this agent does
/// not store.
fn from_entity_id(id: &pb::WorkloadmetaEntityId) -> Option<EntityId> {
    let kind = from_kind(pb::WorkloadmetaKind::try_from(id.kind).ok()?)?;
    (!id.id.is_empty()).then(|| EntityId::new(kind, id.id.as_str()))
}

/// Converts an image to its wire form; `repo_digest` is sent empty.
fn image(i: &ContainerImage) -> pb::ContainerImage {
    pb::ContainerImage {
        id: i.id.clone(),
        raw_name: i.raw_name.clone(),
        name: i.name.clone(),
        short_name: i.short_name.clone(),
        tag: i.tag.clone(),
        repo_digest: String::new(),
    }
}

/// Converts a wire image back: its name, short name, tag and id as sent, and the other fields
/// parsed from its raw name. A missing image gives the empty image.
fn from_image(i: Option<&pb::ContainerImage>) -> ContainerImage {
    let Some(i) = i else { return ContainerImage::default() };
    ContainerImage::from(ImageRef {
        name: i.name.clone(),
        short_name: i.short_name.clone(),
        tag: i.tag.clone(),
        id: i.id.clone(),
        ..ImageRef::parse(&i.raw_name)
    })
}

/// Returns a time as whole Unix seconds, or 0 for none.
fn secs(t: Option<Timestamp>) -> i64 {
    t.map(Timestamp::unix_seconds).unwrap_or(0)
}

/// The latest whole second a [`Timestamp`] holds (in 2262): its nanoseconds fill an `i64`.
const LATEST_SECS: i64 = i64::MAX / 1_000_000_000;

/// Returns the time of a number of Unix seconds, or `None` for 0 or less.
///
/// A time past [`LATEST_SECS`] reads as that second, not as the timestamp's last nanosecond,
/// so that it goes back on the wire as the same number of seconds it will read as again.
fn from_secs(s: i64) -> Option<Timestamp> {
    (s > 0).then(|| Timestamp::from_unix(s.min(LATEST_SECS), 0))
}

/// Converts the containers a pod or task lists to their wire form.
fn orchestrator_containers(list: &[OrchestratorContainer]) -> Vec<pb::OrchestratorContainer> {
    list.iter()
        .map(|c| pb::OrchestratorContainer {
            id: c.id.to_string(),
            name: c.name.to_string(),
            image: Some(image(&c.image)),
        })
        .collect()
}

/// Converts the wire containers a pod or task lists back.
fn from_orchestrator_containers(list: &[pb::OrchestratorContainer]) -> Vec<OrchestratorContainer> {
    list.iter()
        .map(|c| OrchestratorContainer {
            id: c.id.as_str().into(),
            name: (&c.name).into(),
            image: from_image(c.image.as_ref()),
        })
        .collect()
}

/// Converts a container to its wire message.
///
/// The message has no field for the restart count or a port's host port, so they are left out.
/// A pid over `i32::MAX` is sent as 0, the value for an unknown pid.
pub fn container(c: &Container) -> pb::Container {
    let status = match c.state.status {
        ContainerStatus::Unknown => pb::ContainerStatus::Unknown,
        ContainerStatus::Created => pb::ContainerStatus::Created,
        ContainerStatus::Running => pb::ContainerStatus::Running,
        ContainerStatus::Paused => pb::ContainerStatus::Paused,
        ContainerStatus::Restarting => pb::ContainerStatus::Restarting,
        ContainerStatus::Stopped => pb::ContainerStatus::Stopped,
    };
    let health = match c.state.health {
        ContainerHealth::Unknown => pb::ContainerHealth::Unknown,
        ContainerHealth::Healthy => pb::ContainerHealth::Healthy,
        ContainerHealth::Unhealthy => pb::ContainerHealth::Unhealthy,
    };
    let runtime = match c.runtime {
        Some(Runtime::Docker) => pb::Runtime::Docker,
        Some(Runtime::Containerd) => pb::Runtime::Containerd,
        Some(Runtime::Podman) => pb::Runtime::Podman,
        Some(Runtime::CriO) => pb::Runtime::Crio,
        Some(Runtime::Garden) => pb::Runtime::Garden,
        Some(Runtime::EcsFargate) => pb::Runtime::EcsFargate,
        None => pb::Runtime::Unknown,
    };
    pb::Container {
        entity_id: Some(entity_id(&EntityId::new(Kind::Container, c.id.clone()))),
        entity_meta: Some(pb::EntityMeta {
            name: c.name.to_string(),
            namespace: String::new(),
            annotations: HashMap::new(),
            labels: map(&c.labels),
        }),
        env_vars: map(&c.env),
        hostname: c.details.hostname.clone(),
        image: Some(image(&c.image)),
        network_ips: map(&c.details.network_ips),
        pid: i32::try_from(c.state.pid).unwrap_or(0),
        ports: c
            .details
            .ports
            .iter()
            .map(|p| pb::ContainerPort { name: p.name.clone(), port: i32::from(p.port), protocol: p.protocol.clone() })
            .collect(),
        runtime: runtime as i32,
        state: Some(pb::ContainerState {
            running: c.state.running,
            status: status as i32,
            health: health as i32,
            created_at: secs(c.state.created_at),
            started_at: secs(c.state.started_at),
            finished_at: secs(c.state.finished_at),
            exit_code: c.state.exit_code.map_or(0, wm_core::ExitCode::get),
        }),
        collector_tags: c.details.collector_tags.clone(),
        cgroup_path: c.details.cgroup_path.clone(),
        resolved_allocated_resources: c
            .details
            .allocated_resources
            .iter()
            .map(|r| pb::ContainerAllocatedResource { name: r.name.clone(), id: r.id.clone() })
            .collect(),
        resources: Some(pb::ContainerResources {
            cpu_request: c.resources.cpu_request,
            cpu_limit: c.resources.cpu_limit,
            memory_request: c.resources.memory_request,
            memory_limit: c.resources.memory_limit,
        }),
        owner: c.owner.as_ref().map(entity_id),
    }
}

/// Converts a container's wire message back, or returns `None` when the message has no id.
///
/// An unknown status, health or runtime number reads as unknown. The exit code is kept only for
/// a stopped container. A negative pid reads as 0 (unknown), and a port outside `0..=65535` is
/// dropped. The restart count, which the wire does not carry, is 0.
pub fn from_container(c: &pb::Container) -> Option<Container> {
    let id = c.entity_id.as_ref().map(|e| e.id.clone()).filter(|id| !id.is_empty())?;
    let meta = c.entity_meta.clone().unwrap_or_default();
    let state = c.state.unwrap_or_default();
    let status = match pb::ContainerStatus::try_from(state.status).unwrap_or(pb::ContainerStatus::Unknown) {
        pb::ContainerStatus::Unknown => ContainerStatus::Unknown,
        pb::ContainerStatus::Created => ContainerStatus::Created,
        pb::ContainerStatus::Running => ContainerStatus::Running,
        pb::ContainerStatus::Paused => ContainerStatus::Paused,
        pb::ContainerStatus::Restarting => ContainerStatus::Restarting,
        pb::ContainerStatus::Stopped => ContainerStatus::Stopped,
    };
    let health = match pb::ContainerHealth::try_from(state.health).unwrap_or(pb::ContainerHealth::Unknown) {
        pb::ContainerHealth::Healthy => ContainerHealth::Healthy,
        pb::ContainerHealth::Unhealthy => ContainerHealth::Unhealthy,
        pb::ContainerHealth::Unknown => ContainerHealth::Unknown,
    };
    let runtime = match pb::Runtime::try_from(c.runtime).unwrap_or(pb::Runtime::Unknown) {
        pb::Runtime::Docker => Some(Runtime::Docker),
        pb::Runtime::Containerd => Some(Runtime::Containerd),
        pb::Runtime::Podman => Some(Runtime::Podman),
        pb::Runtime::Crio => Some(Runtime::CriO),
        pb::Runtime::Garden => Some(Runtime::Garden),
        pb::Runtime::EcsFargate => Some(Runtime::EcsFargate),
        pb::Runtime::Unknown => None,
    };
    let resources = c.resources.unwrap_or_default();
    Some(Container {
        id: wm_core::Id::from(id.as_str()),
        name: meta.name.into(),
        labels: strmap(&meta.labels),
        env: strmap(&c.env_vars),
        image: from_image(c.image.as_ref()),
        runtime,
        state: ContainerState {
            running: state.running,
            status,
            health,
            created_at: from_secs(state.created_at),
            started_at: from_secs(state.started_at),
            finished_at: from_secs(state.finished_at),
            exit_code: if status == ContainerStatus::Stopped { wm_core::ExitCode::new(state.exit_code) } else { None },
            pid: u32::try_from(c.pid).unwrap_or(0),
        },
        owner: c.owner.as_ref().and_then(from_entity_id),
        restart_count: 0,
        resources: ResourceSpec {
            cpu_request: resources.cpu_request,
            cpu_limit: resources.cpu_limit,
            memory_request: resources.memory_request,
            memory_limit: resources.memory_limit,
        }
        .into(),
        details: ContainerDetails {
            hostname: c.hostname.clone(),
            network_ips: strmap(&c.network_ips),
            ports: c
                .ports
                .iter()
                .filter_map(|p| {
                    let port = u16::try_from(p.port).ok()?;
                    Some(ContainerPort { port, protocol: p.protocol.clone(), name: p.name.clone(), host_port: None })
                })
                .collect(),
            cgroup_path: c.cgroup_path.clone(),
            collector_tags: c.collector_tags.clone(),
            allocated_resources: c
                .resolved_allocated_resources
                .iter()
                .map(|r| wm_core::AllocatedResource { name: r.name.clone(), id: r.id.clone() })
                .collect(),
        }
        .into(),
    })
}

/// Converts a pod to its wire message.
///
/// The message has no field for the node name, the creation, start and finish times or the
/// namespace's annotations, so they are left out; owners are sent without an API group.
pub fn pod(p: &KubernetesPod) -> pb::KubernetesPod {
    pb::KubernetesPod {
        entity_id: Some(entity_id(&EntityId::new(Kind::KubernetesPod, p.id.clone()))),
        entity_meta: Some(pb::EntityMeta {
            name: p.name.to_string(),
            namespace: p.namespace.to_string(),
            annotations: map(&p.annotations),
            labels: map(&p.labels),
        }),
        owners: p
            .owners
            .iter()
            .map(|o| pb::KubernetesPodOwner {
                kind: o.kind.to_string(),
                name: o.name.to_string(),
                id: o.id.to_string(),
                group: String::new(),
            })
            .collect(),
        persistent_volume_claim_names: p.details.pvc_names.clone(),
        containers: orchestrator_containers(&p.containers),
        ready: p.ready,
        phase: p.phase.to_string(),
        ip: p.ip.clone(),
        priority_class: p.details.priority_class.clone(),
        qos_class: p.qos_class.to_string(),
        kube_services: p.details.kube_services.clone(),
        namespace_labels: map(&p.details.namespace_labels),
        init_containers: orchestrator_containers(&p.details.init_containers),
        runtime_class: p.details.runtime_class.clone(),
        ephemeral_containers: orchestrator_containers(&p.details.ephemeral_containers),
    }
}

/// Converts a pod's wire message back, or returns `None` when the message has no UID.
///
/// The fields the wire does not carry (see [`pod`]) are left empty.
pub fn from_pod(p: &pb::KubernetesPod) -> Option<KubernetesPod> {
    let id = p.entity_id.as_ref().map(|e| e.id.clone()).filter(|id| !id.is_empty())?;
    let meta = p.entity_meta.clone().unwrap_or_default();
    Some(KubernetesPod {
        id: wm_core::Id::from(id.as_str()),
        name: meta.name.into(),
        namespace: meta.namespace.into(),
        labels: strmap(&meta.labels),
        annotations: strmap(&meta.annotations),
        owners: p
            .owners
            .iter()
            .map(|o| PodOwner { kind: (&o.kind).into(), name: (&o.name).into(), id: (&o.id).into() })
            .collect(),
        phase: (&p.phase).into(),
        ready: p.ready,
        ip: p.ip.clone(),
        qos_class: (&p.qos_class).into(),
        containers: from_orchestrator_containers(&p.containers),
        details: PodDetails {
            priority_class: p.priority_class.clone(),
            runtime_class: p.runtime_class.clone(),
            init_containers: from_orchestrator_containers(&p.init_containers),
            ephemeral_containers: from_orchestrator_containers(&p.ephemeral_containers),
            pvc_names: p.persistent_volume_claim_names.clone(),
            kube_services: p.kube_services.clone(),
            namespace_labels: strmap(&p.namespace_labels),
            ..PodDetails::default()
        }
        .into(),
        ..KubernetesPod::default()
    })
}

/// Converts an ECS task to its wire message.
///
/// The message's entity name is the task's family. A task with no launch type is sent as EC2.
/// The message has no field for the service name or the desired and known statuses, so they are
/// left out.
pub fn task(t: &EcsTask) -> pb::EcsTask {
    pb::EcsTask {
        entity_id: Some(entity_id(&EntityId::new(Kind::EcsTask, t.id.clone()))),
        entity_meta: Some(pb::EntityMeta { name: t.family.clone(), ..pb::EntityMeta::default() }),
        tags: map(&t.tags),
        container_instance_tags: map(&t.container_instance_tags),
        cluster_name: t.cluster_name.clone(),
        region: t.region.clone(),
        availability_zone: t.availability_zone.clone(),
        family: t.family.clone(),
        version: t.version.clone(),
        launch_type: match t.launch_type {
            Some(LaunchType::Fargate) => pb::EcsLaunchType::Fargate,
            _ => pb::EcsLaunchType::Ec2,
        } as i32,
        containers: orchestrator_containers(&t.containers),
        aws_account_id: t.aws_account.clone(),
    }
}

/// Converts an ECS task's wire message back, or returns `None` when the message has no ARN.
///
/// The launch type is always set: an unknown number reads as EC2. The fields the wire does not
/// carry (see [`task`]) are left empty.
pub fn from_task(t: &pb::EcsTask) -> Option<EcsTask> {
    let id = t.entity_id.as_ref().map(|e| e.id.clone()).filter(|id| !id.is_empty())?;
    Some(EcsTask {
        id: wm_core::Id::from(id.as_str()),
        family: t.family.clone(),
        version: t.version.clone(),
        cluster_name: t.cluster_name.clone(),
        launch_type: Some(match pb::EcsLaunchType::try_from(t.launch_type).unwrap_or(pb::EcsLaunchType::Ec2) {
            pb::EcsLaunchType::Fargate => LaunchType::Fargate,
            pb::EcsLaunchType::Ec2 => LaunchType::Ec2,
        }),
        region: t.region.clone(),
        availability_zone: t.availability_zone.clone(),
        aws_account: t.aws_account_id.clone(),
        containers: from_orchestrator_containers(&t.containers),
        tags: strmap(&t.tags),
        container_instance_tags: strmap(&t.container_instance_tags),
        ..EcsTask::default()
    })
}

/// Converts a process to its wire form: its command name goes in both `name` and `comm`, and
/// its creation time in whole Unix seconds.
pub fn process(p: &Process) -> pb::Process {
    pb::Process {
        entity_id: Some(entity_id(&EntityId::new(Kind::Process, p.id.clone()))),
        pid: p.pid,
        nspid: p.ns_pid,
        ppid: p.ppid,
        name: p.name.to_string(),
        comm: p.name.to_string(),
        cmdline: p.cmdline.clone(),
        container_id: p.container_id.to_string(),
        creation_time: secs(p.creation_time),
        language: p.language.map(|l| pb::Language { name: l.as_str().to_owned(), version: String::new() }),
        ..pb::Process::default()
    }
}

/// Reads a process from its wire form; `None` when it has no id. The command name is `comm`,
/// else `name`; a language this agent does not know is dropped.
pub fn from_process(p: &pb::Process) -> Option<Process> {
    let id = from_entity_id(p.entity_id.as_ref()?)?;
    let name = if p.comm.is_empty() { &p.name } else { &p.comm };
    Some(Process {
        id: id.id,
        pid: p.pid,
        ns_pid: p.nspid,
        ppid: p.ppid,
        name: IStr::from(name.as_str()),
        creation_time: from_secs(p.creation_time),
        container_id: IStr::from(p.container_id.as_str()),
        language: p.language.as_ref().and_then(|l| Language::parse(&l.name)),
        cmdline: p.cmdline.clone(),
    })
}

/// Converts an image to its wire form: its name in `entityMeta`, an empty `sbom` (Go peers read
/// it unchecked); the layers' history is not sent, as upstream.
pub fn image_metadata(i: &ContainerImageMetadata) -> pb::ContainerImageMetadata {
    pb::ContainerImageMetadata {
        entity_id: Some(entity_id(&EntityId::new(Kind::ContainerImageMetadata, i.id.clone()))),
        entity_meta: Some(pb::EntityMeta { name: i.name.clone(), ..pb::EntityMeta::default() }),
        repo_tags: i.repo_tags.clone(),
        repo_digests: i.repo_digests.clone(),
        media_type: i.media_type.clone(),
        size_bytes: i.size_bytes,
        os: i.os.clone(),
        os_version: i.os_version.clone(),
        architecture: i.architecture.clone(),
        variant: i.variant.clone(),
        layers: i
            .layers
            .iter()
            .map(|l| pb::ContainerImageLayer {
                media_type: l.media_type.clone(),
                diff_id: l.digest.clone(),
                size_bytes: l.size_bytes,
                urls: l.urls.clone(),
            })
            .collect(),
        sbom: Some(pb::CompressedSbom::default()),
    }
}

/// Reads an image from its wire form; `None` when it has no id. The layers come without their
/// history, which the wire does not carry.
pub fn from_image_metadata(i: &pb::ContainerImageMetadata) -> Option<ContainerImageMetadata> {
    let id = from_entity_id(i.entity_id.as_ref()?)?;
    Some(ContainerImageMetadata {
        id: id.id,
        name: i.entity_meta.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
        repo_tags: i.repo_tags.clone(),
        repo_digests: i.repo_digests.clone(),
        media_type: i.media_type.clone(),
        size_bytes: i.size_bytes,
        os: i.os.clone(),
        os_version: i.os_version.clone(),
        architecture: i.architecture.clone(),
        variant: i.variant.clone(),
        layers: i
            .layers
            .iter()
            .map(|l| ImageLayer {
                media_type: l.media_type.clone(),
                digest: l.diff_id.clone(),
                size_bytes: l.size_bytes,
                urls: l.urls.clone(),
                ..ImageLayer::default()
            })
            .collect(),
    })
}

/// Builds the wire event that sets the entity (`set` is `true`) or unsets it.
///
/// An unset carries the whole entity too. Returns `None` for a kind the wire does not carry
/// (see [`WIRE_KINDS`]).
pub fn event(set: bool, entity: &Entity) -> Option<pb::WorkloadmetaEvent> {
    let kind = if set { pb::WorkloadmetaEventType::EventTypeSet } else { pb::WorkloadmetaEventType::EventTypeUnset };
    let mut event = pb::WorkloadmetaEvent { r#type: kind as i32, ..pb::WorkloadmetaEvent::default() };
    match entity {
        Entity::Container(c) => event.container = Some(container(c)),
        Entity::KubernetesPod(p) => event.kubernetes_pod = Some(pod(p)),
        Entity::EcsTask(t) => event.ecs_task = Some(task(t)),
        Entity::Process(p) => event.process = Some(process(p)),
        Entity::ContainerImageMetadata(i) => event.container_image_metadata = Some(image_metadata(i)),
        Entity::KubernetesMetadata(_) => return None,
    }
    Some(event)
}

/// Reads a wire event: returns whether it is a set (`true`) or an unset, and the entity it
/// carries.
///
/// An event carries one entity; should it carry several, the container is taken first, then the
/// pod, then the task. Returns `None` for an event of type `EVENT_TYPE_ALL` or of an unknown
/// type, for one that carries no entity, and for an entity without an id.
pub fn from_event(event: &pb::WorkloadmetaEvent) -> Option<(bool, Entity)> {
    let set = match pb::WorkloadmetaEventType::try_from(event.r#type).ok()? {
        pb::WorkloadmetaEventType::EventTypeSet => true,
        pb::WorkloadmetaEventType::EventTypeUnset => false,
        pb::WorkloadmetaEventType::EventTypeAll => return None,
    };
    let entity = if let Some(c) = &event.container {
        Entity::from(from_container(c)?)
    } else if let Some(p) = &event.kubernetes_pod {
        Entity::from(from_pod(p)?)
    } else if let Some(t) = &event.ecs_task {
        Entity::from(from_task(t)?)
    } else if let Some(p) = &event.process {
        Entity::from(from_process(p)?)
    } else if let Some(i) = &event.container_image_metadata {
        Entity::from(from_image_metadata(i)?)
    } else {
        return None;
    };
    Some((set, entity))
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_container_survives_the_wire_both_ways() {
        let c = Container {
            id: "abc".into(),
            name: "web".into(),
            labels: [("team", "a")].into_iter().collect(),
            env: [("DD_ENV", "prod")].into_iter().collect(),
            image: ImageRef { id: "sha256:1".into(), ..ImageRef::parse("docker.io/library/nginx:1.25") }.into(),
            runtime: Some(Runtime::Docker),
            state: ContainerState {
                running: false,
                status: ContainerStatus::Stopped,
                health: ContainerHealth::Healthy,
                created_at: Some(Timestamp::from_unix(100, 0)),
                started_at: Some(Timestamp::from_unix(200, 0)),
                finished_at: Some(Timestamp::from_unix(300, 0)),
                exit_code: wm_core::ExitCode::new(-1),
                pid: 0,
            },
            owner: Some(EntityId::new(Kind::KubernetesPod, "uid-1")),
            resources: ResourceSpec { cpu_limit: Some(0.5), memory_limit: Some(1 << 20), ..ResourceSpec::default() }
                .into(),
            details: ContainerDetails {
                hostname: "h".into(),
                ports: vec![ContainerPort { port: 80, protocol: "tcp".into(), name: "http".into(), host_port: None }],
                allocated_resources: vec![wm_core::AllocatedResource {
                    name: "nvidia.com/gpu".into(),
                    id: "GPU-1".into(),
                }],
                ..ContainerDetails::default()
            }
            .into(),
            ..Container::default()
        };
        let wire = event(true, &Entity::from(c.clone())).expect("containers are on the wire").encode_to_vec();
        let decoded = pb::WorkloadmetaEvent::decode(wire.as_slice()).unwrap();
        let (set, back) = from_event(&decoded).unwrap();
        assert!(set);
        assert_eq!(back.as_container().map(|b| (**b).clone()), Some(c));
    }

    #[test]
    fn a_time_past_2262_reads_as_its_last_whole_second_and_travels_as_it() {
        for created in [LATEST_SECS, LATEST_SECS + 1, i64::MAX] {
            let wire = pb::Container {
                entity_id: Some(entity_id(&EntityId::new(Kind::Container, "a"))),
                state: Some(pb::ContainerState { created_at: created, ..Default::default() }),
                ..Default::default()
            };
            let read = from_container(&wire).expect("has an id");
            assert_eq!(read.state.created_at.map(Timestamp::unix_seconds), Some(LATEST_SECS), "{created}");
            let sent = container(&read);
            assert_eq!(sent.state.map(|s| s.created_at), Some(LATEST_SECS));
            assert_eq!(from_container(&sent), Some(read));
        }
    }

    #[test]
    fn odd_wire_events_are_skipped() {
        assert!(from_event(&pb::WorkloadmetaEvent { r#type: 1, ..Default::default() }).is_none());
        assert!(from_event(&pb::WorkloadmetaEvent { r#type: 99, ..Default::default() }).is_none());
        let no_id =
            pb::WorkloadmetaEvent { r#type: 1, container: Some(pb::Container::default()), ..Default::default() };
        assert!(from_event(&no_id).is_none());
    }

    #[test]
    fn node_metadata_is_not_on_the_wire() {
        let node = Entity::from(wm_core::KubernetesMetadata { id: "/nodes//n1".into(), ..Default::default() });
        assert!(event(true, &node).is_none());
        for k in Kind::ALL {
            assert_eq!(kind(k).and_then(from_kind), WIRE_KINDS.contains(&k).then_some(k));
        }
        assert_eq!(from_kind(pb::WorkloadmetaKind::Crd), None);
    }

    #[test]
    fn an_image_survives_the_wire_both_ways_but_its_history() {
        let layer = ImageLayer {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: format!("sha256:{}", "b".repeat(64)),
            size_bytes: 4_000_000,
            created_by: "ADD rootfs.tar /".into(),
            ..ImageLayer::default()
        };
        let image = ContainerImageMetadata {
            id: format!("sha256:{}", "a".repeat(64)).as_str().into(),
            name: "wm.local/busybox".into(),
            repo_tags: vec!["wm.local/busybox:1".into()],
            size_bytes: 4_200_000,
            os: "linux".into(),
            architecture: "amd64".into(),
            layers: vec![layer.clone()],
            ..ContainerImageMetadata::default()
        };
        let wire = event(true, &Entity::from(image.clone())).expect("images are on the wire");
        assert!(wire.container_image_metadata.as_ref().is_some_and(|i| i.sbom.is_some()), "sbom always sent");
        let back = pb::WorkloadmetaEvent::decode(wire.encode_to_vec().as_slice()).expect("decodes");
        let without_history =
            ContainerImageMetadata { layers: vec![ImageLayer { created_by: String::new(), ..layer }], ..image };
        assert_eq!(from_event(&back), Some((true, Entity::from(without_history))));
    }

    #[test]
    fn a_process_survives_the_wire_both_ways() {
        let p = Process {
            id: "4242".into(),
            pid: 4242,
            ns_pid: 1,
            ppid: 4200,
            name: "python3".into(),
            creation_time: Some(Timestamp::from_unix(1_733_400_000, 0)),
            container_id: "ab".repeat(32).as_str().into(),
            language: Some(Language::Python),
            cmdline: vec!["python3".into(), "--password=********".into()],
        };
        let wire = event(true, &Entity::from(p.clone())).expect("processes are on the wire");
        let on_wire = wire.process.as_ref().expect("field 5");
        assert_eq!(
            (on_wire.name.as_str(), on_wire.comm.as_str(), on_wire.creation_time),
            ("python3", "python3", 1_733_400_000)
        );
        assert_eq!(on_wire.language.as_ref().map(|l| l.name.as_str()), Some("python"));
        let back = pb::WorkloadmetaEvent::decode(wire.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(from_event(&back), Some((true, Entity::from(p))));
        // A language this agent does not know (upstream also sends `cpp`) is dropped, not refused.
        let mut cpp = on_wire.clone();
        cpp.language = Some(pb::Language { name: "cpp".into(), version: String::new() });
        assert_eq!(from_process(&cpp).map(|p| p.language), Some(None));
    }
}
