//! The localhost HTTP API: `/health`, `/metrics` (Prometheus text) and the JSON behind the CLI
//! (`/agent/workload-list`, `/agent/tagger-list`, `/agent/status`, `/agent/config`). It binds
//! 127.0.0.1 only. The report types are shared with the CLI, which reads them back.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tagger::Tagger;
use wm_core::Entity;
use wm_store::{MetricValue, Store};

use crate::config::Setting;
use crate::remote::RemoteTagger;

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
    /// Every started collector delivered its first full list.
    pub ready: bool,
    /// Each collector (name, source, state, synced).
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

/// Where the served metadata and tags come from.
#[derive(Clone, Debug)]
pub enum Backend {
    /// This agent's own store and tagger (every flavor with collectors).
    Local {
        /// The store.
        store: Store,
        /// The tagger.
        tagger: Arc<Tagger>,
    },
    /// A replica of another agent's tags (`flavor-light`): no workload metadata of its own.
    Remote(Arc<RemoteTagger>),
}

/// What the HTTP handlers read.
#[derive(Clone, Debug)]
pub struct HttpState {
    /// The metadata and tags.
    pub backend: Backend,
    /// The effective config.
    pub config: Arc<BTreeMap<String, Setting>>,
    /// When the agent started.
    pub started: Instant,
    /// The gRPC address.
    pub grpc_address: String,
    /// The collectors compiled in.
    pub compiled_collectors: Vec<String>,
}

/// The health report of `store`.
pub fn health(store: &Store) -> HealthReport {
    let health = store.health();
    HealthReport {
        live: health.store_alive,
        ready: health.is_ready(),
        collectors: health.collectors.iter().filter_map(|c| serde_json::to_value(c).ok()).collect(),
    }
}

/// The `workload-list` data.
pub fn workload_list(store: &Store, verbose: bool) -> WorkloadList {
    let entities = store
        .dump(verbose)
        .entities
        .into_iter()
        .map(|e| {
            let entry = WorkloadEntry {
                kind: e.id.kind.as_str().to_owned(),
                id: e.id.id.to_string(),
                sources: e.sources.iter().map(|s| s.as_str().to_owned()).collect(),
                merged: e.merged,
                per_source: e.per_source.map(|versions| {
                    versions
                        .into_iter()
                        .map(|v| SourceEntry {
                            source: v.source.as_str().to_owned(),
                            collector: v.collector,
                            entity: v.entity,
                        })
                        .collect()
                }),
            };
            (e.id.to_string(), entry)
        })
        .collect();
    WorkloadList { entities }
}

/// The `tagger-list` data.
pub fn tagger_list(tagger: &Tagger) -> TaggerList {
    let entities = tagger
        .store()
        .list()
        .into_iter()
        .map(|(entity, sources)| {
            let sources = sources
                .into_iter()
                .map(|(source, info)| {
                    let mut tags: Vec<String> =
                        info.low.into_iter().chain(info.orchestrator).chain(info.high).collect();
                    tags.sort();
                    tags.dedup();
                    (source.as_str().to_owned(), tags)
                })
                .collect();
            (entity, sources)
        })
        .collect();
    TaggerList { entities }
}

/// Prometheus text exposition of the store's and the tagger's telemetry.
pub fn metrics_text(store: &Store, tagger: &Tagger) -> String {
    let mut out = String::new();
    let mut declared = std::collections::HashSet::new();
    for sample in store.telemetry() {
        let name = sample.name.replace(['.', '-'], "_");
        let labels = if sample.labels.is_empty() {
            String::new()
        } else {
            let inner: Vec<String> = sample
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            format!("{{{}}}", inner.join(","))
        };
        let kind = match sample.value {
            MetricValue::Counter(_) => "counter",
            MetricValue::Gauge(_) => "gauge",
            MetricValue::Summary { .. } => "summary",
        };
        if declared.insert(name.clone()) {
            let _ = writeln!(out, "# TYPE {name} {kind}");
        }
        match sample.value {
            MetricValue::Counter(n) => {
                let _ = writeln!(out, "{name}{labels} {n}");
            }
            MetricValue::Gauge(v) => {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
            MetricValue::Summary { count, sum } => {
                let _ = writeln!(out, "{name}_count{labels} {count}");
                let _ = writeln!(out, "{name}_sum{labels} {sum}");
            }
        }
    }
    let _ = writeln!(out, "# TYPE tagger_entities gauge\ntagger_entities {}", tagger.store().len());
    out
}

#[derive(Deserialize)]
struct VerboseQuery {
    #[serde(default)]
    verbose: bool,
}

/// The health report of a replica: live, ready once it got a snapshot.
fn remote_health(replica: &RemoteTagger) -> HealthReport {
    let synced = replica.streams() > 0;
    let collector = serde_json::json!({
        "name": "remote-tagger",
        "source": "remote",
        "state": if synced { "running" } else { "retrying" },
        "synced": synced,
    });
    HealthReport { live: true, ready: synced, collectors: vec![collector] }
}

fn backend_health(backend: &Backend) -> HealthReport {
    match backend {
        Backend::Local { store, .. } => health(store),
        Backend::Remote(replica) => remote_health(replica),
    }
}

async fn health_handler(State(state): State<HttpState>) -> impl IntoResponse {
    let report = backend_health(&state.backend);
    let code = if report.live && report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(report))
}

async fn live_handler(State(state): State<HttpState>) -> impl IntoResponse {
    let report = backend_health(&state.backend);
    (if report.live { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(report))
}

async fn metrics_handler(State(state): State<HttpState>) -> impl IntoResponse {
    let text = match &state.backend {
        Backend::Local { store, tagger } => metrics_text(store, tagger),
        Backend::Remote(replica) => format!(
            "# TYPE tagger_entities gauge\ntagger_entities {}\n# TYPE remote_tagger_streams counter\nremote_tagger_streams {}\n",
            replica.entities().len(),
            replica.streams()
        ),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn workload_handler(State(state): State<HttpState>, Query(q): Query<VerboseQuery>) -> axum::response::Response {
    match &state.backend {
        Backend::Local { store, .. } => Json(workload_list(store, q.verbose)).into_response(),
        Backend::Remote(_) => {
            (StatusCode::NOT_FOUND, "this agent (flavor-light) keeps no workload metadata of its own").into_response()
        }
    }
}

async fn tagger_handler(State(state): State<HttpState>) -> Json<TaggerList> {
    Json(match &state.backend {
        Backend::Local { tagger, .. } => tagger_list(tagger),
        Backend::Remote(replica) => replica.list(),
    })
}

async fn config_handler(State(state): State<HttpState>) -> Json<BTreeMap<String, Setting>> {
    Json((*state.config).clone())
}

async fn status_handler(State(state): State<HttpState>) -> Json<StatusReport> {
    let mut entities = BTreeMap::new();
    let tagged_entities = match &state.backend {
        Backend::Local { store, tagger } => {
            entities.insert("container".to_owned(), store.list_containers().len());
            entities.insert("kubernetes_pod".to_owned(), store.list_kubernetes_pods().len());
            entities.insert("ecs_task".to_owned(), store.list_ecs_tasks().len());
            tagger.store().len()
        }
        Backend::Remote(replica) => replica.entities().len(),
    };
    Json(StatusReport {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        compiled_collectors: state.compiled_collectors.clone(),
        pid: std::process::id(),
        uptime_secs: state.started.elapsed().as_secs(),
        grpc_address: state.grpc_address.clone(),
        health: backend_health(&state.backend),
        entities,
        tagged_entities,
    })
}

/// The router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health_handler))
        .route("/health/live", get(live_handler))
        .route("/metrics", get(metrics_handler))
        .route("/agent/workload-list", get(workload_handler))
        .route("/agent/tagger-list", get(tagger_handler))
        .route("/agent/status", get(status_handler))
        .route("/agent/config", get(config_handler))
        .with_state(state)
}
