//! The entity model: containers, Kubernetes pods and object metadata, ECS tasks, and the sources
//! that report them.

use std::fmt;
use triomphe::Arc;

use serde::{Deserialize, Serialize};

use crate::id::Id;
use crate::image::ContainerImage;
use crate::istr::IStr;
use crate::map::StrMap;
use crate::shared::{Parts, Shared};
use crate::time::Timestamp;

/// What sort of workload an entity is. Ordered by name: snapshots sort by (kind, id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A container of any runtime.
    Container,
    /// A container image on the node.
    ContainerImageMetadata,
    /// An ECS task.
    EcsTask,
    /// A Kubernetes object's metadata (this node's `Node`): labels and annotations.
    KubernetesMetadata,
    /// A Kubernetes pod.
    KubernetesPod,
    /// A process of the host.
    Process,
}

impl Kind {
    /// Every kind, in order.
    pub const ALL: [Kind; 6] = [
        Kind::Container,
        Kind::ContainerImageMetadata,
        Kind::EcsTask,
        Kind::KubernetesMetadata,
        Kind::KubernetesPod,
        Kind::Process,
    ];

    /// How many kinds there are.
    pub const COUNT: usize = Self::ALL.len();

    /// Returns its position in [`Kind::ALL`], to index per-kind arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Returns the name used in filters, dumps and the wire (`kubernetes_pod`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Container => "container",
            Kind::ContainerImageMetadata => "container_image_metadata",
            Kind::EcsTask => "ecs_task",
            Kind::KubernetesMetadata => "kubernetes_metadata",
            Kind::KubernetesPod => "kubernetes_pod",
            Kind::Process => "process",
        }
    }

    /// Returns the kind whose [`Kind::as_str`] name is `name`, or `None` for an unknown name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies an entity: container id, pod UID or task ARN, with its kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntityId {
    /// The kind.
    pub kind: Kind,
    /// The id within the kind.
    pub id: Id,
}

impl EntityId {
    /// Creates the id of an entity of `kind`; `id` is its container id, pod UID or task ARN.
    pub fn new(kind: Kind, id: impl Into<Id>) -> Self {
        Self { kind, id: id.into() }
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.kind, self.id)
    }
}

/// Where a version of an entity comes from.
///
/// Declared in merge precedence order: for most fields the first non-empty value wins, so a
/// cluster orchestrator's value beats a node orchestrator's, and so on (the `merge` module has
/// the exceptions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The Kubernetes API server (or cluster agent), Cloud Foundry.
    ClusterOrchestrator,
    /// The kubelet, the ECS agent on EC2.
    NodeOrchestrator,
    /// docker, containerd, podman, ECS Fargate task metadata.
    Runtime,
    /// An upstream agent over gRPC.
    Remote,
}

impl Source {
    /// Every source, in merge precedence order.
    pub const ALL: [Source; 4] =
        [Source::ClusterOrchestrator, Source::NodeOrchestrator, Source::Runtime, Source::Remote];

    /// Returns the name used in filters, dumps and the wire (`node_orchestrator`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::ClusterOrchestrator => "cluster_orchestrator",
            Source::NodeOrchestrator => "node_orchestrator",
            Source::Runtime => "runtime",
            Source::Remote => "remote",
        }
    }

    /// Returns the source whose [`Source::as_str`] name is `name`, or `None` for an unknown name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The runtime that runs a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// Docker Engine.
    Docker,
    /// containerd (directly or under the kubelet).
    Containerd,
    /// Podman.
    Podman,
    /// CRI-O.
    CriO,
    /// Cloud Foundry's Garden.
    Garden,
    /// AWS Fargate for ECS.
    EcsFargate,
}

impl Runtime {
    /// Returns the name used in tags and dumps (`cri_o`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::Podman => "podman",
            Runtime::CriO => "cri_o",
            Runtime::Garden => "garden",
            Runtime::EcsFargate => "ecs_fargate",
        }
    }
}

/// A container's life-cycle status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStatus {
    /// Not known (the default).
    #[default]
    Unknown,
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Restarting.
    Restarting,
    /// Exited or stopped.
    Stopped,
}

/// A container's health-check verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerHealth {
    /// No health check, or no verdict yet (the default).
    #[default]
    Unknown,
    /// The check passes.
    Healthy,
    /// The check fails.
    Unhealthy,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Whether a container runs, and how it ended. Merged as one unit (but for the pid): a runtime's
/// `running: false` must not be completed by an orchestrator's stale `running: true`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerState {
    /// Whether it runs now.
    #[serde(skip_serializing_if = "is_default")]
    pub running: bool,
    /// The life-cycle status.
    #[serde(skip_serializing_if = "is_default")]
    pub status: ContainerStatus,
    /// The health-check verdict.
    #[serde(skip_serializing_if = "is_default")]
    pub health: ContainerHealth,
    /// Its main process id on the host (0: unknown), where Docker keeps it too. It sits in the
    /// bytes the flags above leave free, which keeps a [`Container`] at 120 bytes. Written at the
    /// container's top level (`pid`), not here; the merge fills it on its own when the state
    /// that wins has none.
    #[serde(skip)]
    pub pid: u32,
    /// When it was created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    /// When it last started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it last finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Its exit code, once it finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<ExitCode>,
}

/// A container's exit code as its runtime or orchestrator reports it: any 64-bit value but
/// `i64::MIN`, which none reports (Linux's are 8 bits, Kubernetes' 32, Windows' 32 unsigned).
///
/// It is stored with its sign bit flipped (`code ^ i64::MIN`) in a `NonZeroI64`, so `i64::MIN`
/// is the one code it cannot hold, and an `Option<ExitCode>` uses that zero for `None` and
/// stays 8 bytes. Written and read as a number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct ExitCode(std::num::NonZeroI64);

impl ExitCode {
    /// Returns `code` as an exit code, or `None` for `i64::MIN`, the one code it cannot hold.
    pub const fn new(code: i64) -> Option<Self> {
        match std::num::NonZeroI64::new(code ^ i64::MIN) {
            Some(kept) => Some(Self(kept)),
            None => None,
        }
    }

    /// Returns the code.
    pub const fn get(self) -> i64 {
        self.0.get() ^ i64::MIN
    }
}

impl TryFrom<i64> for ExitCode {
    type Error = String;

    fn try_from(code: i64) -> Result<Self, String> {
        Self::new(code).ok_or_else(|| format!("{code} is not an exit code"))
    }
}

impl From<ExitCode> for i64 {
    fn from(code: ExitCode) -> i64 {
        code.get()
    }
}

impl fmt::Debug for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.get(), f)
    }
}

impl fmt::Display for ExitCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.get(), f)
    }
}

/// An exposed port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerPort {
    /// The port number.
    pub port: u16,
    /// `tcp`, `udp` or `sctp`.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub protocol: String,
    /// The port's name (from a pod spec).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: String,
    /// The host port it is published on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
}

/// CPU and memory requests and limits: a [`ResourceSpec`] behind one copy-on-write pointer
/// ([`Shared`]); most containers have none, and those that do share them with their merged copy.
pub type ContainerResources = Shared<ResourceSpec>;

/// CPU and memory requests and limits (see [`ContainerResources`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceSpec {
    /// Requested CPU, in cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_request: Option<f64>,
    /// CPU limit, in cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<f64>,
    /// Requested memory, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_request: Option<u64>,
    /// Memory limit, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<u64>,
}

static NO_RESOURCES: ResourceSpec =
    ResourceSpec { cpu_request: None, cpu_limit: None, memory_request: None, memory_limit: None };

impl Parts for ResourceSpec {
    fn none() -> &'static Self {
        &NO_RESOURCES
    }
}

impl<'de> Deserialize<'de> for Shared<ResourceSpec> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ResourceSpec::deserialize(d).map(Self::from)
    }
}

/// What a runtime reports about a container beyond its identity, image and state: a
/// [`ContainerDetails`] behind one copy-on-write pointer ([`Shared`]). An orchestrator's version
/// of a container has none, and the merged view shares the runtime's.
pub type ContainerRuntimeDetails = Shared<ContainerDetails>;

/// A container's host name, addresses, ports, cgroup, collector tags and allocated devices (see
/// [`ContainerRuntimeDetails`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ContainerDetails {
    /// Its hostname.
    pub hostname: String,
    /// IP address per network name.
    pub network_ips: StrMap,
    /// Exposed ports.
    pub ports: Vec<ContainerPort>,
    /// Its cgroup path.
    pub cgroup_path: String,
    /// Tags the collector reports ready-made (`key:value`), for runtimes whose metadata comes
    /// as tags rather than labels: Cloud Foundry's Garden containers (the Datadog Agent's
    /// `CollectorTags`).
    pub collector_tags: Vec<String>,
    /// The devices the kubelet allocated to it (GPUs and other device-plugin resources), one
    /// entry per device, from the kubelet's pod-resources API (the Datadog Agent's
    /// `ResolvedAllocatedResources`).
    pub allocated_resources: Vec<AllocatedResource>,
}

/// One device allocated to a container: the resource it is an instance of and its id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AllocatedResource {
    /// The resource's name (`nvidia.com/gpu`).
    pub name: String,
    /// The device's id, as its device plugin names it.
    pub id: String,
}

static NO_DETAILS: ContainerDetails = ContainerDetails {
    hostname: String::new(),
    network_ips: StrMap::new(),
    ports: Vec::new(),
    cgroup_path: String::new(),
    collector_tags: Vec::new(),
    allocated_resources: Vec::new(),
};

impl Parts for ContainerDetails {
    fn none() -> &'static Self {
        &NO_DETAILS
    }
}

/// A container of any runtime.
///
/// Serialized with every field at the top level (`hostname`, not `details.hostname`): the form
/// dumps and conformance scenarios use.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(from = "ContainerFields", into = "ContainerFields")]
pub struct Container {
    /// The container id (64 hex for docker, containerd and podman; the instance GUID on Cloud Foundry).
    pub id: Id,
    /// The container's name.
    pub name: IStr,
    /// Its labels.
    pub labels: StrMap,
    /// The env vars that pass the store's [`EnvFilter`]; never all of them (secrets stay out of
    /// the store).
    pub env: StrMap,
    /// Its image.
    pub image: ContainerImage,
    /// The runtime that runs it.
    pub runtime: Option<Runtime>,
    /// Whether it runs, and how it ended.
    pub state: ContainerState,
    /// How many times it was restarted.
    pub restart_count: u32,
    /// The pod or task it belongs to.
    pub owner: Option<EntityId>,
    /// Requests and limits.
    pub resources: ContainerResources,
    /// Hostname, addresses, ports, cgroup path, collector tags and allocated devices.
    pub details: ContainerRuntimeDetails,
}

/// A [`Container`] as it is written and read (dumps, conformance scenarios): every field at the
/// top level.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ContainerFields {
    id: Id,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: IStr,
    #[serde(skip_serializing_if = "str::is_empty")]
    hostname: String,
    #[serde(skip_serializing_if = "StrMap::is_empty")]
    labels: StrMap,
    #[serde(skip_serializing_if = "StrMap::is_empty")]
    env: StrMap,
    #[serde(skip_serializing_if = "ContainerImage::is_empty")]
    image: ContainerImage,
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime: Option<Runtime>,
    #[serde(skip_serializing_if = "is_default")]
    state: ContainerState,
    #[serde(skip_serializing_if = "is_default")]
    pid: u32,
    #[serde(skip_serializing_if = "StrMap::is_empty")]
    network_ips: StrMap,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<ContainerPort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<EntityId>,
    #[serde(skip_serializing_if = "str::is_empty")]
    cgroup_path: String,
    #[serde(skip_serializing_if = "is_default")]
    restart_count: u32,
    #[serde(skip_serializing_if = "is_default")]
    resources: ContainerResources,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    collector_tags: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allocated_resources: Vec<AllocatedResource>,
}

impl From<ContainerFields> for Container {
    fn from(f: ContainerFields) -> Self {
        let details = ContainerDetails {
            hostname: f.hostname,
            network_ips: f.network_ips,
            ports: f.ports,
            cgroup_path: f.cgroup_path,
            collector_tags: f.collector_tags,
            allocated_resources: f.allocated_resources,
        };
        Container {
            id: f.id,
            name: f.name,
            labels: f.labels,
            env: f.env,
            image: f.image,
            runtime: f.runtime,
            state: ContainerState { pid: f.pid, ..f.state },
            restart_count: f.restart_count,
            owner: f.owner,
            resources: f.resources,
            details: details.into(),
        }
    }
}

impl From<Container> for ContainerFields {
    fn from(c: Container) -> Self {
        let d = &*c.details;
        ContainerFields {
            hostname: d.hostname.clone(),
            network_ips: d.network_ips.clone(),
            ports: d.ports.clone(),
            cgroup_path: d.cgroup_path.clone(),
            collector_tags: d.collector_tags.clone(),
            allocated_resources: d.allocated_resources.clone(),
            id: c.id,
            name: c.name,
            labels: c.labels,
            env: c.env,
            image: c.image,
            runtime: c.runtime,
            pid: c.state.pid,
            state: c.state,
            owner: c.owner,
            restart_count: c.restart_count,
            resources: c.resources,
        }
    }
}

impl PartialEq for Container {
    /// Compares field by field, the inline fields that change most (state, pid, restarts) first.
    ///
    /// The store compares every set with the version it had, and most updates differ in those
    /// fields, so most comparisons end before touching a string on the heap. The fields are
    /// destructured so that a new field cannot be left out of the comparison.
    fn eq(&self, other: &Self) -> bool {
        let Container { id, name, labels, env, image, runtime, state, restart_count, owner, resources, details } = self;
        *restart_count == other.restart_count
            && *runtime == other.runtime
            && *state == other.state
            && *resources == other.resources
            && *owner == other.owner
            && *name == other.name
            && *image == other.image
            && *labels == other.labels
            && *env == other.env
            && *details == other.details
            && *id == other.id
    }
}

/// An owner reference of a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PodOwner {
    /// `ReplicaSet`, `Job`, `DaemonSet` …
    pub kind: IStr,
    /// The owner's name.
    pub name: IStr,
    /// The owner's UID.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub id: IStr,
}

/// A container as an orchestrator lists it in a pod or task.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrchestratorContainer {
    /// The container id, once the runtime created it (shared with the container's entity).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub id: Id,
    /// The container's name in the spec.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: IStr,
    /// Its image.
    #[serde(skip_serializing_if = "ContainerImage::is_empty")]
    pub image: ContainerImage,
}

/// A Kubernetes pod.
///
/// Serialized with every field at the top level (`priority_class`, not
/// `details.priority_class`): the form dumps and conformance scenarios use.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "KubernetesPodFields", into = "KubernetesPodFields")]
pub struct KubernetesPod {
    /// The pod UID.
    pub id: Id,
    /// The pod's name.
    pub name: IStr,
    /// Its namespace.
    pub namespace: IStr,
    /// Its labels.
    pub labels: StrMap,
    /// Its annotations.
    pub annotations: StrMap,
    /// Its owner references.
    pub owners: Vec<PodOwner>,
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    pub phase: IStr,
    /// Whether the pod is ready.
    pub ready: bool,
    /// The pod IP.
    pub ip: String,
    /// The node it runs on.
    pub node_name: IStr,
    /// Its QoS class.
    pub qos_class: IStr,
    /// Its containers.
    pub containers: Vec<OrchestratorContainer>,
    /// When it was created.
    pub created_at: Option<Timestamp>,
    /// When it started.
    pub started_at: Option<Timestamp>,
    /// Its priority and runtime classes, init and ephemeral containers, volume claims, services,
    /// namespace labels and annotations, and when it finished.
    pub details: PodRuntimeDetails,
}

/// A pod's less common fields: a [`PodDetails`] behind one copy-on-write pointer ([`Shared`]),
/// so a pod that has none of them carries one empty pointer.
pub type PodRuntimeDetails = Shared<PodDetails>;

/// A pod's less common fields (see [`PodRuntimeDetails`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PodDetails {
    /// Its priority class.
    pub priority_class: String,
    /// Its runtime class.
    pub runtime_class: String,
    /// Its init containers.
    pub init_containers: Vec<OrchestratorContainer>,
    /// Its ephemeral containers.
    pub ephemeral_containers: Vec<OrchestratorContainer>,
    /// Names of the persistent volume claims it mounts.
    pub pvc_names: Vec<String>,
    /// Names of the services that select it.
    pub kube_services: Vec<String>,
    /// Its namespace's labels.
    pub namespace_labels: StrMap,
    /// Its namespace's annotations.
    pub namespace_annotations: StrMap,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
}

static NO_POD_DETAILS: PodDetails = PodDetails {
    priority_class: String::new(),
    runtime_class: String::new(),
    init_containers: Vec::new(),
    ephemeral_containers: Vec::new(),
    pvc_names: Vec::new(),
    kube_services: Vec::new(),
    namespace_labels: StrMap::new(),
    namespace_annotations: StrMap::new(),
    finished_at: None,
};

impl Parts for PodDetails {
    fn none() -> &'static Self {
        &NO_POD_DETAILS
    }
}

/// A [`KubernetesPod`] as it is written and read (dumps, conformance scenarios): every field at
/// the top level.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct KubernetesPodFields {
    id: Id,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: IStr,
    #[serde(skip_serializing_if = "str::is_empty")]
    namespace: IStr,
    #[serde(skip_serializing_if = "StrMap::is_empty")]
    labels: StrMap,
    #[serde(skip_serializing_if = "StrMap::is_empty")]
    annotations: StrMap,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    owners: Vec<PodOwner>,
    #[serde(skip_serializing_if = "str::is_empty")]
    phase: IStr,
    #[serde(skip_serializing_if = "is_default")]
    ready: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    ip: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    node_name: IStr,
    #[serde(skip_serializing_if = "str::is_empty")]
    priority_class: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    qos_class: IStr,
    #[serde(skip_serializing_if = "str::is_empty")]
    runtime_class: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    containers: Vec<OrchestratorContainer>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    init_containers: Vec<OrchestratorContainer>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ephemeral_containers: Vec<OrchestratorContainer>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pvc_names: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    kube_services: Vec<String>,
    #[serde(skip_serializing_if = "StrMap::is_empty")]
    namespace_labels: StrMap,
    #[serde(skip_serializing_if = "StrMap::is_empty")]
    namespace_annotations: StrMap,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<Timestamp>,
}

impl From<KubernetesPodFields> for KubernetesPod {
    fn from(f: KubernetesPodFields) -> Self {
        let details = PodDetails {
            priority_class: f.priority_class,
            runtime_class: f.runtime_class,
            init_containers: f.init_containers,
            ephemeral_containers: f.ephemeral_containers,
            pvc_names: f.pvc_names,
            kube_services: f.kube_services,
            namespace_labels: f.namespace_labels,
            namespace_annotations: f.namespace_annotations,
            finished_at: f.finished_at,
        };
        KubernetesPod {
            id: f.id,
            name: f.name,
            namespace: f.namespace,
            labels: f.labels,
            annotations: f.annotations,
            owners: f.owners,
            phase: f.phase,
            ready: f.ready,
            ip: f.ip,
            node_name: f.node_name,
            qos_class: f.qos_class,
            containers: f.containers,
            created_at: f.created_at,
            started_at: f.started_at,
            details: details.into(),
        }
    }
}

impl From<KubernetesPod> for KubernetesPodFields {
    fn from(p: KubernetesPod) -> Self {
        let d = &*p.details;
        KubernetesPodFields {
            priority_class: d.priority_class.clone(),
            runtime_class: d.runtime_class.clone(),
            init_containers: d.init_containers.clone(),
            ephemeral_containers: d.ephemeral_containers.clone(),
            pvc_names: d.pvc_names.clone(),
            kube_services: d.kube_services.clone(),
            namespace_labels: d.namespace_labels.clone(),
            namespace_annotations: d.namespace_annotations.clone(),
            finished_at: d.finished_at,
            id: p.id,
            name: p.name,
            namespace: p.namespace,
            labels: p.labels,
            annotations: p.annotations,
            owners: p.owners,
            phase: p.phase,
            ready: p.ready,
            ip: p.ip,
            node_name: p.node_name,
            qos_class: p.qos_class,
            containers: p.containers,
            created_at: p.created_at,
            started_at: p.started_at,
        }
    }
}

impl KubernetesPod {
    /// Returns every container the pod lists: its containers, then its init containers, then its
    /// ephemeral containers.
    pub fn all_containers(&self) -> impl Iterator<Item = &OrchestratorContainer> + '_ {
        self.containers.iter().chain(&self.details.init_containers).chain(&self.details.ephemeral_containers)
    }
}

/// A Kubernetes object's metadata, as Datadog's `KubernetesMetadata` entity: today the node the
/// agent runs on (its labels and annotations become node tags). Its id is
/// `<group>/<resource>/<namespace>/<name>` ([`KubernetesMetadata::id_of`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesMetadata {
    /// `<group>/<resource>/<namespace>/<name>`, e.g. `/nodes//node-1`.
    pub id: Id,
    /// The API resource, plural (`nodes`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub resource: String,
    /// The object's name.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: String,
    /// The object's namespace (empty for cluster-scoped objects such as nodes).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub namespace: String,
    /// Its labels.
    #[serde(skip_serializing_if = "StrMap::is_empty")]
    pub labels: StrMap,
    /// Its annotations.
    #[serde(skip_serializing_if = "StrMap::is_empty")]
    pub annotations: StrMap,
}

impl KubernetesMetadata {
    /// The resource name of nodes.
    pub const NODES: &'static str = "nodes";

    /// Returns the entity id of an object: `<group>/<resource>/<namespace>/<name>` (Datadog's
    /// form; the core group is empty).
    pub fn id_of(group: &str, resource: &str, namespace: &str, name: &str) -> String {
        format!("{group}/{resource}/{namespace}/{name}")
    }

    /// Returns the entity id of the node `name` (`/nodes//<name>`).
    pub fn node_id(name: &str) -> String {
        Self::id_of("", Self::NODES, "", name)
    }

    /// Tells whether it describes a node.
    pub fn is_node(&self) -> bool {
        self.resource == Self::NODES
    }
}

/// How an ECS task was launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaunchType {
    /// On EC2 container instances.
    Ec2,
    /// On Fargate.
    Fargate,
}

/// An ECS task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EcsTask {
    /// The task ARN.
    pub id: Id,
    /// The task definition family.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub family: String,
    /// The task definition revision.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub version: String,
    /// The cluster's name.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub cluster_name: String,
    /// EC2 or Fargate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_type: Option<LaunchType>,
    /// The AWS region.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub region: String,
    /// The availability zone.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub availability_zone: String,
    /// The AWS account id.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub aws_account: String,
    /// The ECS service that runs it.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub service_name: String,
    /// The status ECS wants.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub desired_status: String,
    /// The status ECS last saw.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub known_status: String,
    /// Its containers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<OrchestratorContainer>,
    /// The task's AWS resource tags.
    #[serde(skip_serializing_if = "StrMap::is_empty")]
    pub tags: StrMap,
    /// The container instance's AWS resource tags.
    #[serde(skip_serializing_if = "StrMap::is_empty")]
    pub container_instance_tags: StrMap,
}

/// A container image on the node, as Datadog's `ContainerImageMetadata` entity: what the runtime
/// says of the image and its layers.
///
/// Its id is the image's config digest (`sha256:<hex>`), which every runtime uses as the image id.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerImageMetadata {
    /// `sha256:<hex>`: the digest of the image's config.
    pub id: Id,
    /// The repository of its first tag (`docker.io/library/nginx`); empty for an untagged image.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: String,
    /// Its tags (`nginx:1.25`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repo_tags: Vec<String>,
    /// Its digests in registries (`nginx@sha256:…`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repo_digests: Vec<String>,
    /// The media type of its manifest, when the runtime says.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub media_type: String,
    /// Its size in bytes.
    #[serde(skip_serializing_if = "is_default")]
    pub size_bytes: i64,
    /// The operating system it is built for (`linux`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub os: String,
    /// The operating system's version, when the image says (Windows images do).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub os_version: String,
    /// The CPU architecture (`amd64`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub architecture: String,
    /// The architecture's variant (`v8`), when there is one.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub variant: String,
    /// Its layers, base first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<ImageLayer>,
}

/// One layer of a [`ContainerImageMetadata`], with the history entry that made it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageLayer {
    /// The layer's media type, when the runtime says.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub media_type: String,
    /// Its digest (the uncompressed content's, for docker).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub digest: String,
    /// Its size in bytes.
    #[serde(skip_serializing_if = "is_default")]
    pub size_bytes: i64,
    /// Where it may be fetched from, for a foreign layer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// When it was created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<Timestamp>,
    /// The build step that created it (`/bin/sh -c #(nop) CMD ["sh"]`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub created_by: String,
    /// Its history entry's comment.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub comment: String,
}

/// The language a process runs, as the Datadog Agent's language detection names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    /// Java (a `java` executable).
    Java,
    /// Python (`python`, `python3`, `python3.12` …).
    Python,
    /// Node.js (`node`, `nodejs`).
    Node,
    /// Ruby (`ruby`, `rails`).
    Ruby,
    /// .NET (`dotnet`, or a program that loads the .NET runtime).
    Dotnet,
    /// Go (a binary that carries Go's build information).
    Go,
    /// PHP (`php`, `php-fpm` …).
    Php,
}

impl Language {
    /// Every language, in order.
    pub const ALL: [Language; 7] = [
        Language::Java,
        Language::Python,
        Language::Node,
        Language::Ruby,
        Language::Dotnet,
        Language::Go,
        Language::Php,
    ];

    /// Returns the name Datadog uses on the wire and in tags (`python`, `dotnet` …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Language::Java => "java",
            Language::Python => "python",
            Language::Node => "node",
            Language::Ruby => "ruby",
            Language::Dotnet => "dotnet",
            Language::Go => "go",
            Language::Php => "php",
        }
    }

    /// Returns the language whose [`Language::as_str`] name is `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == name)
    }
}

/// A process of the host, as the process collector reads it from `/proc`.
///
/// Its id is its pid as decimal text. A pid is reused once a process exits, so the collector
/// tells two processes of one pid apart by their creation time, and sends the new one as a
/// new version of the entity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Process {
    /// Its pid as decimal text, in the pid namespace the agent reads (the host's, when the agent
    /// runs with the host's `/proc`).
    pub id: Id,
    /// Its pid, as a number.
    #[serde(skip_serializing_if = "is_default")]
    pub pid: i32,
    /// Its pid in its own, innermost pid namespace (its pid inside a container); equal to `pid`
    /// for a process of the host's namespace.
    #[serde(skip_serializing_if = "is_default")]
    pub ns_pid: i32,
    /// Its parent's pid.
    #[serde(skip_serializing_if = "is_default")]
    pub ppid: i32,
    /// Its command name (`comm`, at most 15 bytes).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub name: IStr,
    /// When it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Timestamp>,
    /// The id of the container it runs in; empty for a process of the host.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub container_id: IStr,
    /// The language it runs, when one was detected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<Language>,
    /// Its command line, with secrets scrubbed; empty unless the collector is configured to
    /// keep command lines.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cmdline: Vec<String>,
}

/// The shared pointer every entity sits behind: triomphe's `Arc`, a reference count and no weak
/// count (8 bytes before the value, not std's 16), so that a [`Container`] (120 bytes) and its
/// count take 128 bytes, one allocator size class, rather than 144 rounded up to 160. A node
/// holds two of them per container (the runtime's and the orchestrator's).
pub type EntityArc<T> = Arc<T>;

/// Any entity, behind an [`EntityArc`] so that events, snapshots and getters share one copy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entity {
    /// A container.
    Container(Arc<Container>),
    /// A container image.
    ContainerImageMetadata(Arc<ContainerImageMetadata>),
    /// An ECS task.
    EcsTask(Arc<EcsTask>),
    /// A Kubernetes object's metadata.
    KubernetesMetadata(Arc<KubernetesMetadata>),
    /// A Kubernetes pod.
    KubernetesPod(Arc<KubernetesPod>),
    /// A process of the host.
    Process(Arc<Process>),
}

impl Entity {
    /// Returns its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Entity::Container(_) => Kind::Container,
            Entity::ContainerImageMetadata(_) => Kind::ContainerImageMetadata,
            Entity::EcsTask(_) => Kind::EcsTask,
            Entity::KubernetesMetadata(_) => Kind::KubernetesMetadata,
            Entity::KubernetesPod(_) => Kind::KubernetesPod,
            Entity::Process(_) => Kind::Process,
        }
    }

    /// Returns its id within its kind.
    pub fn id_str(&self) -> &Id {
        match self {
            Entity::Container(c) => &c.id,
            Entity::ContainerImageMetadata(i) => &i.id,
            Entity::EcsTask(t) => &t.id,
            Entity::KubernetesMetadata(m) => &m.id,
            Entity::KubernetesPod(p) => &p.id,
            Entity::Process(p) => &p.id,
        }
    }

    /// Returns its full id: kind and id (the id's text is shared, not copied).
    pub fn id(&self) -> EntityId {
        EntityId { kind: self.kind(), id: self.id_str().clone() }
    }

    /// Creates an entity of `id`'s kind that carries only its id (what an unset usually sends).
    pub fn empty(id: &EntityId) -> Self {
        let key = id.id.clone();
        match id.kind {
            Kind::Container => Entity::Container(Arc::new(Container { id: key, ..Container::default() })),
            Kind::EcsTask => Entity::EcsTask(Arc::new(EcsTask { id: key, ..EcsTask::default() })),
            Kind::KubernetesMetadata => {
                Entity::KubernetesMetadata(Arc::new(KubernetesMetadata { id: key, ..KubernetesMetadata::default() }))
            }
            Kind::KubernetesPod => {
                Entity::KubernetesPod(Arc::new(KubernetesPod { id: key, ..KubernetesPod::default() }))
            }
            Kind::Process => Entity::Process(Arc::new(Process { id: key, ..Process::default() })),
            Kind::ContainerImageMetadata => Entity::ContainerImageMetadata(Arc::new(ContainerImageMetadata {
                id: key,
                ..ContainerImageMetadata::default()
            })),
        }
    }

    /// Tells whether it carries nothing but its id.
    pub fn is_id_only(&self) -> bool {
        *self == Self::empty(&self.id())
    }

    /// Returns the container, if it is one.
    pub fn as_container(&self) -> Option<&EntityArc<Container>> {
        match self {
            Entity::Container(c) => Some(c),
            _ => None,
        }
    }

    /// Returns the pod, if it is one.
    pub fn as_kubernetes_pod(&self) -> Option<&EntityArc<KubernetesPod>> {
        match self {
            Entity::KubernetesPod(p) => Some(p),
            _ => None,
        }
    }

    /// Returns the Kubernetes object metadata, if it is one.
    pub fn as_kubernetes_metadata(&self) -> Option<&EntityArc<KubernetesMetadata>> {
        match self {
            Entity::KubernetesMetadata(m) => Some(m),
            _ => None,
        }
    }

    /// Returns the process, if it is one.
    pub fn as_process(&self) -> Option<&EntityArc<Process>> {
        match self {
            Entity::Process(p) => Some(p),
            _ => None,
        }
    }

    /// Returns the ECS task, if it is one.
    pub fn as_ecs_task(&self) -> Option<&EntityArc<EcsTask>> {
        match self {
            Entity::EcsTask(t) => Some(t),
            _ => None,
        }
    }

    /// Replaces the entity's id with `id`, and a container's owner id with `owner`, where they
    /// are equal, so that the entity shares those allocations instead of holding copies.
    ///
    /// The store passes the ids it keys its records by, so each id is held once however many
    /// sources and containers name it. A container's pod UID label that names its owner is made
    /// to share the owner id's allocation too. Nothing changes while another reference to the
    /// entity's `Arc` exists, nor where a given id differs from the entity's.
    pub fn share_ids(&mut self, id: Option<&Id>, owner: Option<&Id>) {
        fn adopt(mine: &mut Id, shared: Option<&Id>) {
            if let Some(shared) = shared
                && !Id::ptr_eq(mine, shared)
                && **mine == **shared
            {
                *mine = shared.clone();
            }
        }
        match self {
            Entity::Container(c) => {
                if let Some(c) = Arc::get_mut(c) {
                    adopt(&mut c.id, id);
                    if let Some(o) = &mut c.owner {
                        adopt(&mut o.id, owner);
                        c.labels.share_value(KUBE_POD_UID_LABEL, &o.id);
                    }
                }
            }
            Entity::EcsTask(t) => {
                if let Some(t) = Arc::get_mut(t) {
                    adopt(&mut t.id, id);
                }
            }
            Entity::KubernetesMetadata(m) => {
                if let Some(m) = Arc::get_mut(m) {
                    adopt(&mut m.id, id);
                }
            }
            Entity::KubernetesPod(p) => {
                if let Some(p) = Arc::get_mut(p) {
                    adopt(&mut p.id, id);
                }
            }
            Entity::Process(p) => {
                if let Some(p) = Arc::get_mut(p) {
                    adopt(&mut p.id, id);
                }
            }
            Entity::ContainerImageMetadata(i) => {
                if let Some(i) = Arc::get_mut(i) {
                    adopt(&mut i.id, id);
                }
            }
        }
    }

    /// Returns the id of the entity that owns it (a container's pod or task); `None` for the
    /// other kinds.
    pub fn owner(&self) -> Option<&EntityId> {
        self.as_container().and_then(|c| c.owner.as_ref())
    }

    /// Tells whether both point at the same allocation (a cheap check before a deep comparison).
    pub fn ptr_eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Entity::Container(a), Entity::Container(b)) => Arc::ptr_eq(a, b),
            (Entity::EcsTask(a), Entity::EcsTask(b)) => Arc::ptr_eq(a, b),
            (Entity::KubernetesMetadata(a), Entity::KubernetesMetadata(b)) => Arc::ptr_eq(a, b),
            (Entity::KubernetesPod(a), Entity::KubernetesPod(b)) => Arc::ptr_eq(a, b),
            (Entity::Process(a), Entity::Process(b)) => Arc::ptr_eq(a, b),
            (Entity::ContainerImageMetadata(a), Entity::ContainerImageMetadata(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl From<Container> for Entity {
    fn from(c: Container) -> Self {
        Entity::Container(Arc::new(c))
    }
}

impl From<KubernetesPod> for Entity {
    fn from(p: KubernetesPod) -> Self {
        Entity::KubernetesPod(Arc::new(p))
    }
}

impl From<KubernetesMetadata> for Entity {
    fn from(m: KubernetesMetadata) -> Self {
        Entity::KubernetesMetadata(Arc::new(m))
    }
}

impl From<EcsTask> for Entity {
    fn from(t: EcsTask) -> Self {
        Entity::EcsTask(Arc::new(t))
    }
}

impl From<ContainerImageMetadata> for Entity {
    fn from(i: ContainerImageMetadata) -> Self {
        Entity::ContainerImageMetadata(Arc::new(i))
    }
}

impl From<Process> for Entity {
    fn from(p: Process) -> Self {
        Entity::Process(Arc::new(p))
    }
}

/// The label the kubelet puts on every container it runs: its pod's UID (docker, containerd).
pub const KUBE_POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
/// The label the kubelet puts on every container it runs: its pod's namespace.
pub const KUBE_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// The label the kubelet puts on every container it runs: the container's name in the pod spec.
pub const KUBE_CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";

/// The label the podman collector puts on a podman pod's containers: the pod's name (the tagger
/// makes it `pod_name`). Podman pods are not entities of their own.
pub const PODMAN_POD_NAME_LABEL: &str = "io.podman.pod.name";

/// The env vars the store always keeps for a container: those the tag rules read (DESIGN 7),
/// plus the ECS metadata endpoints the ECS collector follows. Collectors drop every other env
/// var except those the config names (see [`EnvFilter`]), so secrets stay out of the store.
pub const KEPT_ENV_VARS: &[&str] = &[
    "DD_ENV",
    "DD_SERVICE",
    "DD_VERSION",
    "DD_GIT_COMMIT_SHA",
    "DD_GIT_REPOSITORY_URL",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "NOMAD_TASK_NAME",
    "NOMAD_JOB_NAME",
    "NOMAD_GROUP_NAME",
    "NOMAD_NAMESPACE",
    "NOMAD_DC",
    "MARATHON_APP_ID",
    "CHRONOS_JOB_NAME",
    "CHRONOS_JOB_OWNER",
    "MESOS_TASK_ID",
    "ECS_CONTAINER_METADATA_URI",
    "ECS_CONTAINER_METADATA_URI_V4",
];

/// Decides which env vars enter the store: [`KEPT_ENV_VARS`], plus the names the config gives.
///
/// A name from [`KEPT_ENV_VARS`] must match exactly; a configured name matches in any case. A
/// configured `*` keeps every variable: the tagger maps every name under that key (its tag name
/// templated with `%%env%%`), so it needs them all.
#[derive(Clone, Debug, Default)]
pub struct EnvFilter {
    extra: Vec<String>,
    all: bool,
}

impl EnvFilter {
    /// Creates a filter that keeps [`KEPT_ENV_VARS`] and the names in `extra` (the keys of
    /// `container_env_as_tags`, for example).
    pub fn new(extra: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let extra: Vec<String> = extra.into_iter().map(Into::into).collect();
        let all = extra.iter().any(|e| e == "*");
        Self { extra, all }
    }

    /// Tells whether the env var `name` is kept.
    pub fn keeps(&self, name: &str) -> bool {
        self.all || KEPT_ENV_VARS.contains(&name) || self.extra.iter().any(|e| e.eq_ignore_ascii_case(name))
    }

    /// Returns the kept variables of `env`, given as `NAME=value` strings, as a map from name to
    /// value. An entry without `=` is dropped.
    pub fn filter<S: AsRef<str>>(&self, env: impl IntoIterator<Item = S>) -> StrMap {
        let mut kept = StrMap::new();
        for pair in env {
            if let Some((name, value)) = pair.as_ref().split_once('=')
                && self.keeps(name)
            {
                kept.insert(name, value);
            }
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_env_filter_keeps_its_names_in_any_case_and_everything_under_a_star() {
        let env = ["DD_ENV=prod", "team=core", "SECRET=x", "no-equals-sign"];
        let named = EnvFilter::new(["TEAM"]).filter(env);
        assert_eq!(named.iter().collect::<Vec<_>>(), vec![("DD_ENV", "prod"), ("team", "core")]);
        let all = EnvFilter::new(["*"]).filter(env);
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(all.get("SECRET"), Some("x"));
        assert!(!EnvFilter::default().keeps("team"));
    }

    #[test]
    fn entities_read_the_flat_tagged_form() {
        let e: Entity = serde_json::from_str(
            r#"{"kind":"container","id":"c1","name":"web","image":"nginx:1.25","runtime":"docker",
                "state":{"running":true,"status":"running","exit_code":0,"finished_at":"2026-01-01T00:05:00Z"},
                "owner":{"kind":"kubernetes_pod","id":"p1"},"ports":[{"port":80,"protocol":"tcp"}]}"#,
        )
        .unwrap();
        let c = e.as_container().unwrap();
        assert_eq!(e.id(), EntityId::new(Kind::Container, "c1"));
        assert_eq!(c.image.tag, "1.25");
        assert_eq!(c.state.exit_code, ExitCode::new(0));
        assert_eq!(c.owner, Some(EntityId::new(Kind::KubernetesPod, "p1")));
    }

    #[test]
    fn unknown_fields_are_rejected_not_ignored() {
        let err = serde_json::from_str::<Entity>(r#"{"kind":"container","id":"c1","nmae":"typo"}"#).unwrap_err();
        assert!(err.to_string().contains("nmae"), "{err}");
    }

    #[test]
    fn serialization_leaves_out_empty_fields() {
        let e = Entity::from(Container { id: "c1".into(), name: "web".into(), ..Container::default() });
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"kind":"container","id":"c1","name":"web"}"#);
        assert!(!e.is_id_only());
        assert!(Entity::empty(&e.id()).is_id_only());
    }

    #[test]
    fn a_stored_container_holds_its_owners_id_and_its_pod_uid_label_holds_it_too() {
        let uid = "share-ids-7f3a-uid";
        let key = Id::from(uid);
        let labels: StrMap = [(KUBE_POD_UID_LABEL, uid), ("app", "web")].into_iter().collect();
        let owner = Some(EntityId::new(Kind::KubernetesPod, uid));
        let mut entity = Entity::from(Container { id: "c1".into(), labels, owner, ..Container::default() });
        entity.share_ids(None, Some(&key));
        let c = entity.as_container().unwrap();
        assert!(Id::ptr_eq(&c.owner.as_ref().unwrap().id, &key), "the owner is the store's id");
        assert_eq!(c.labels.get(KUBE_POD_UID_LABEL), Some(uid));
        assert_eq!(c.labels.get(KUBE_POD_UID_LABEL).unwrap().as_ptr(), key.as_ptr(), "the label holds it too");
        assert_eq!(c.labels.get("app"), Some("web"));
        // A label that names another pod keeps its text.
        let labels: StrMap = [(KUBE_POD_UID_LABEL, "another-uid-7f3a")].into_iter().collect();
        let owner = Some(EntityId::new(Kind::KubernetesPod, uid));
        let mut other = Entity::from(Container { id: "c2".into(), labels, owner, ..Container::default() });
        other.share_ids(None, Some(&key));
        assert_eq!(other.as_container().unwrap().labels.get(KUBE_POD_UID_LABEL), Some("another-uid-7f3a"));
    }

    #[test]
    fn an_exit_code_keeps_every_code_a_runtime_reports_in_8_bytes() {
        assert_eq!(std::mem::size_of::<Option<ExitCode>>(), 8);
        // With triomphe's 8-byte count, one 128-byte allocation (std's `Arc` would make it 144,
        // rounded to 160).
        assert_eq!(std::mem::size_of::<Container>(), 120, "a container's fields, packed");
        for code in [0, 1, 137, 255, -1, i64::from(i32::MIN), i64::from(u32::MAX), 3_221_225_477, i64::MAX] {
            let kept = ExitCode::new(code).unwrap();
            assert_eq!(kept.get(), code);
            assert_eq!(serde_json::to_string(&kept).unwrap(), code.to_string());
            assert_eq!(serde_json::from_str::<ExitCode>(&code.to_string()).unwrap(), kept);
        }
        assert_eq!(ExitCode::new(i64::MIN), None, "the one value none reports");
        let err = serde_json::from_str::<ExitCode>(&i64::MIN.to_string()).unwrap_err();
        assert!(err.to_string().contains("is not an exit code"), "{err}");
    }

    #[test]
    fn kinds_and_sources_have_stable_names_and_order() {
        assert!(Kind::Container < Kind::EcsTask && Kind::EcsTask < Kind::KubernetesMetadata);
        assert!(Kind::KubernetesMetadata < Kind::KubernetesPod);
        assert_eq!(KubernetesMetadata::node_id("n1"), "/nodes//n1");
        for (i, k) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(k.index(), i);
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        for s in Source::ALL {
            assert_eq!(Source::parse(s.as_str()), Some(s));
        }
        assert_eq!(Source::ALL.iter().copied().max(), Some(Source::Remote));
    }
}
