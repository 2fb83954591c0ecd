//! The reports the HTTP API serves as JSON and the CLI reads back. The server and the CLI share
//! these types, so the two cannot disagree on the format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wm_core::Entity;

/// One entity in `agent workload-list`: the merged view, and in a verbose list each source's
/// version.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkloadEntry {
    /// The entity's kind: `container`, `kubernetes_pod`, `ecs_task`, `kubernetes_metadata` or
    /// `process`.
    pub kind: String,
    /// The entity's id within its kind.
    pub id: String,
    /// The sources that report the entity (`runtime`, `node_orchestrator`, ...), in order of
    /// precedence.
    pub sources: Vec<String>,
    /// The entity as the store serves it: the versions of all its sources merged into one.
    pub merged: Entity,
    /// Each source's own version of the entity; present only in a verbose list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_source: Option<Vec<SourceEntry>>,
}

/// One source's version of an entity.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SourceEntry {
    /// The source's name (`runtime`, `node_orchestrator`, `cluster_orchestrator`, `remote`).
    pub source: String,
    /// The name of the collector that last set this version.
    pub collector: String,
    /// The entity as this source reported it.
    pub entity: Entity,
}

/// The answer of `/agent/workload-list`, which `agent workload-list --json` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkloadList {
    /// Every stored entity, keyed by `kind://id`.
    pub entities: BTreeMap<String, WorkloadEntry>,
}

/// The answer of `/agent/tagger-list`, which `agent tagger-list --json` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaggerList {
    /// Each entity's tags, keyed by the tagger's entity id (`container_id://…`) and then by
    /// source; each list of tags is sorted.
    pub entities: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

/// The answer of the probes (`/health`, `/live`, `/ready`), which `agent health --json` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HealthReport {
    /// Whether the agent is live: the store's loop runs (the light agent is always live).
    pub live: bool,
    /// Whether the agent is ready. For a full agent: the store's loop runs, no collector has
    /// failed or waits for something its config names, and every collector whose environment was
    /// detected has synced (its first full list, or first successful pull, was applied). For the
    /// light agent: a stream to its upstream is up.
    pub ready: bool,
    /// One JSON object per collector: its `name`, `source`, `state` and `synced`, plus what its
    /// state carries: the `error` of a retrying or failed one (and, if failed, whether it is
    /// `restarting`), or the `reason` it is not detected or is waiting.
    pub collectors: Vec<serde_json::Value>,
}

/// The answer of `/agent/status`, which `agent status --json` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// The agent's version.
    pub version: String,
    /// The names of the collectors compiled into this build, whether or not they run.
    pub compiled_collectors: Vec<String>,
    /// The agent's process id.
    pub pid: u32,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// The address the gRPC API listens on, or text starting with `none` for an agent that
    /// serves no gRPC API.
    pub grpc_address: String,
    /// The same report as the probes give.
    pub health: HealthReport,
    /// The number of stored entities of each kind (empty for the light agent).
    pub entities: BTreeMap<String, usize>,
    /// The number of entities that have tags.
    pub tagged_entities: usize,
}
