//! What the localhost HTTP API serves and the CLI reads back: one set of types for both.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use wm_core::Entity;

/// One entity of `workload-list`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkloadEntry {
    /// `container`, `kubernetes_pod`, `ecs_task`.
    pub kind: String,
    /// Its id.
    pub id: String,
    /// The sources that know it, in precedence order.
    pub sources: Vec<String>,
    /// The merged view.
    pub merged: Entity,
    /// Each source's own version (verbose only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_source: Option<Vec<SourceEntry>>,
}

/// One source's version of an entity.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SourceEntry {
    /// The source.
    pub source: String,
    /// The collector that said it.
    pub collector: String,
    /// What it said.
    pub entity: Entity,
}

/// `workload-list --json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkloadList {
    /// By `kind://id`.
    pub entities: BTreeMap<String, WorkloadEntry>,
}

/// `tagger-list --json`: entity → source → tags (sorted).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaggerList {
    /// By entity id (`container_id://…`).
    pub entities: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

/// `/health`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HealthReport {
    /// The store's loop runs.
    pub live: bool,
    /// No collector failed, and every started collector delivered its first full list.
    pub ready: bool,
    /// Each collector (name, source, state, synced, and the error of a failed one).
    pub collectors: Vec<serde_json::Value>,
}

/// `agent status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// The agent's version.
    pub version: String,
    /// The collectors compiled in.
    pub compiled_collectors: Vec<String>,
    /// Its process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// The gRPC address.
    pub grpc_address: String,
    /// Health.
    pub health: HealthReport,
    /// Stored entities by kind.
    pub entities: BTreeMap<String, usize>,
    /// Entities with tags.
    pub tagged_entities: usize,
}
