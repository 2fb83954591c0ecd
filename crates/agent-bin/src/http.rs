//! The localhost HTTP API: `/health` (and `/health/live`), `/metrics` (Prometheus text) and the
//! JSON behind the CLI (`/agent/workload-list`, `/agent/tagger-list`, `/agent/status`,
//! `/agent/config`), served from a [`Backend`]. It binds 127.0.0.1 only. Every agent flavor
//! serves it through [`serve`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;
use wm_core::CancellationToken;

use crate::backend::Backend;
use crate::config::Setting;
use crate::report::{StatusReport, TaggerList};

/// What the HTTP handlers read.
#[derive(Clone, Debug)]
pub struct HttpState {
    /// The metadata and tags.
    pub backend: Arc<dyn Backend>,
    /// The effective config.
    pub config: Arc<BTreeMap<String, Setting>>,
    /// When the agent started.
    pub started: Instant,
    /// The gRPC address (or what stands in for it).
    pub grpc_address: String,
    /// The collectors compiled in.
    pub compiled_collectors: Vec<String>,
}

#[derive(Deserialize)]
struct VerboseQuery {
    #[serde(default)]
    verbose: bool,
}

async fn health_handler(State(state): State<HttpState>) -> impl IntoResponse {
    let report = state.backend.health();
    let code = if report.live && report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(report))
}

async fn live_handler(State(state): State<HttpState>) -> impl IntoResponse {
    let report = state.backend.health();
    (if report.live { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(report))
}

async fn metrics_handler(State(state): State<HttpState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.backend.metrics())
}

async fn workload_handler(State(state): State<HttpState>, Query(q): Query<VerboseQuery>) -> axum::response::Response {
    match state.backend.workload_list(q.verbose) {
        Some(list) => Json(list).into_response(),
        None => {
            (StatusCode::NOT_FOUND, "this agent (flavor-light) keeps no workload metadata of its own").into_response()
        }
    }
}

async fn tagger_handler(State(state): State<HttpState>) -> Json<TaggerList> {
    Json(state.backend.tagger_list())
}

async fn config_handler(State(state): State<HttpState>) -> Json<BTreeMap<String, Setting>> {
    Json((*state.config).clone())
}

async fn status_handler(State(state): State<HttpState>) -> Json<StatusReport> {
    Json(StatusReport {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        compiled_collectors: state.compiled_collectors.clone(),
        pid: std::process::id(),
        uptime_secs: state.started.elapsed().as_secs(),
        grpc_address: state.grpc_address.clone(),
        health: state.backend.health(),
        entities: state.backend.entity_counts(),
        tagged_entities: state.backend.tagged_entities(),
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

/// Serves the API on `listener` until `cancel` is cancelled.
pub async fn serve(listener: TcpListener, state: HttpState, cancel: CancellationToken) {
    let shutdown = async move { cancel.cancelled().await };
    if let Err(e) = axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "the HTTP API stopped");
    }
}
