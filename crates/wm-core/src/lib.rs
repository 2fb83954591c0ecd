//! The vocabulary of the workload-metadata store: entities (containers, Kubernetes pods and
//! object metadata, ECS tasks), the sources that describe them and how their versions merge, the events into and out
//! of the store, subscriber filters and priorities, and the contract collectors implement.
//!
//! This crate does no I/O and starts no runtime; `wm-store` runs the store, the `wm-collector-*`
//! crates talk to runtimes and orchestrators.

#![forbid(unsafe_code)]

mod cancel;
mod cardinality;
pub mod cgroup;
mod collector;
pub mod config;
mod entity;
mod event;
mod file;
mod id;
mod image;
pub mod intern;
mod istr;
mod limit;
mod map;
pub mod merge;
mod shared;
pub mod sync;
mod time;

pub use cancel::{CancellationToken, Cancelled};
pub use cardinality::{TagCardinality, UnknownCardinality};
pub use collector::{
    BoxError, Collector, CollectorContext, CollectorError, CollectorKind, ContainerFetcher, EventSink, Origin,
    PullCollector, SinkMessage, SourceSink, StoreReader, StreamCollector, is_full_hex_id,
};
pub use config::{ImageCollectionConfig, Port, Seconds, Secret};
pub use entity::{
    AllocatedResource, Container, ContainerDetails, ContainerHealth, ContainerImageMetadata, ContainerPort,
    ContainerResources, ContainerRuntimeDetails, ContainerState, ContainerStatus, EcsTask, Entity, EntityArc, EntityId,
    EnvFilter, ExitCode, ImageLayer, KEPT_ENV_VARS, KUBE_CONTAINER_NAME_LABEL, KUBE_NAMESPACE_LABEL,
    KUBE_POD_UID_LABEL, Kind, KubernetesMetadata, KubernetesPod, Language, LaunchType, OrchestratorContainer,
    PODMAN_POD_NAME_LABEL, PodDetails, PodOwner, PodRuntimeDetails, Process, ResourceSpec, Runtime, Source,
};
pub use event::{CollectorEvent, Event, EventType, EventTypeFilter, Filter, Predicate, SubscriberPriority};
pub use file::FileStamp;
pub use id::Id;
pub use image::{ContainerImage, ImageRef};
pub use istr::IStr;
pub use limit::{BodyTooLarge, CappedBody};
pub use map::StrMap;
pub use shared::{Parts, Shared};
pub use time::{Timestamp, TimestampError};
