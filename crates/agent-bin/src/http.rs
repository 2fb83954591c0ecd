//! The agent's two HTTP faces, both served from a [`Backend`]:
//!
//! - The probes, in plain HTTP on `health_host:health_port` (127.0.0.1 by default): `/live`,
//!   `/ready` (Datadog's names) and `/health` (both; `/health/live` too), to anyone, and
//!   `/metrics` (Prometheus text) only when `metrics_public` is set. Nothing else is there: the
//!   kubelet's probes need no token, and a port that may be opened to the network for them
//!   carries no secret and no metadata. [`serve`].
//! - The API behind the CLI, over TLS with the IPC certificate: the same routes and the JSON of
//!   `/agent/workload-list`, `/agent/tagger-list`, `/agent/status`, `/agent/config`, and
//!   `/metrics`, each (but the probes) with `authorization: Bearer <token>` (else 401), the token
//!   of the gRPC API. A node agent serves it on `cmd_port` beside gRPC, told apart by ALPN
//!   (`h2` is gRPC, `http/1.1` this API), as the Datadog Agent serves its CLI; an agent with no
//!   gRPC server of its own (the light agent, a follower) serves it on `api_port`.
//!   [`serve_api_connection`], [`serve_tls`].
//!
//! Both speak HTTP/1.1 only, with a small read buffer and a deadline for each request's headers.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use wm_core::CancellationToken;
use wm_core::sync::MutexExt;

use crate::backend::Backend;
use crate::config::Setting;
use crate::conn::{Limits, accept_loop};
use crate::report::{StatusReport, TaggerList};

/// Who may ask for what beyond the probes, on the TLS API.
#[derive(Clone)]
pub struct Guard {
    /// The bearer token every non-probe route asks for.
    pub token: Arc<str>,
    /// A token file owned by another agent (the light agent follows its upstream's): on a
    /// mismatch it is read again, at most once a second, so a new upstream token is accepted.
    pub token_file: Option<Arc<TokenFile>>,
}

/// A token file read again when a request's token does not match.
#[derive(Debug)]
pub struct TokenFile {
    path: std::path::PathBuf,
    current: std::sync::Mutex<(Arc<str>, Option<Instant>)>,
}

impl TokenFile {
    /// `path`, whose token is `token` now.
    pub fn new(path: std::path::PathBuf, token: Arc<str>) -> Self {
        Self { path, current: std::sync::Mutex::new((token, None)) }
    }

    /// Whether `headers` carry the file's token, reading the file again (at most once a second)
    /// when they do not carry the one read last.
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut current = self.current.locked();
        if bearer_matches(headers, &current.0) {
            return true;
        }
        if current.1.is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(1)) {
            return false;
        }
        current.1 = Some(Instant::now());
        match crate::security::load_or_create_token(&self.path) {
            Ok(token) if *token != *current.0 => {
                current.0 = Arc::from(token);
                bearer_matches(headers, &current.0)
            }
            _ => false,
        }
    }
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("follows_token_file", &self.token_file.is_some()).finish_non_exhaustive()
    }
}

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
    /// Who may ask for what on the TLS API.
    pub guard: Guard,
    /// `metrics_public`: `/metrics` on the probes' port too, without the token.
    pub metrics_public: bool,
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

async fn ready_handler(State(state): State<HttpState>) -> impl IntoResponse {
    let report = state.backend.health();
    (if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(report))
}

/// Whether a `Host` header names this machine's loopback: `localhost` (or a `*.localhost`
/// name, which resolves there), `127.x.y.z` or `[::1]`, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(inside, _)| inside)
    } else {
        host.rsplit_once(':')
            .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host })
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    crate::security::check_bearer(value, token).is_ok()
}

fn refuse(code: StatusCode, why: &'static str) -> Response {
    let mut response = (code, why).into_response();
    if code == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    response
}

/// The token check of the TLS API, before any handler runs: the probes pass, everything else
/// needs the bearer token.
pub async fn guard(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if matches!(path, "/live" | "/ready" | "/health" | "/health/live") {
        return next.run(request).await;
    }
    let allowed = match &guard.token_file {
        Some(file) => file.matches(request.headers()),
        None => bearer_matches(request.headers(), &guard.token),
    };
    if !allowed {
        return refuse(StatusCode::UNAUTHORIZED, "authorization: Bearer <token> required (the auth_token file)\n");
    }
    // The connection has carried an authenticated request: it may stay open (conn.rs).
    if let Some(ConnectionAuth(flag)) = request.extensions().get::<ConnectionAuth>() {
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    next.run(request).await
}

/// The flag of a TLS API connection that its first authenticated request sets
/// (`IdleTimeout::require_auth`): a connection that only ever asks the probes, or nothing, is
/// closed after `server_timeout` like an unauthenticated gRPC one.
#[derive(Clone, Debug)]
pub struct ConnectionAuth(pub Arc<std::sync::atomic::AtomicBool>);

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

/// The probes (and `/metrics` when `metrics_public`), for the plain HTTP port.
pub fn probes_router(state: HttpState) -> Router {
    let mut router = Router::new()
        .route("/live", get(live_handler))
        .route("/ready", get(ready_handler))
        .route("/health", get(health_handler))
        .route("/health/live", get(live_handler));
    if state.metrics_public {
        router = router.route("/metrics", get(metrics_handler));
    }
    router.with_state(state)
}

/// Every route, guarded by the token, for the TLS API.
pub fn api_router(state: HttpState) -> Router {
    let guard = state.guard.clone();
    Router::new()
        .route("/live", get(live_handler))
        .route("/ready", get(ready_handler))
        .route("/health", get(health_handler))
        .route("/health/live", get(live_handler))
        .route("/metrics", get(metrics_handler))
        .route("/agent/workload-list", get(workload_handler))
        .route("/agent/tagger-list", get(tagger_handler))
        .route("/agent/status", get(status_handler))
        .route("/agent/config", get(config_handler))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(guard, self::guard))
}

/// The read buffer of one HTTP connection, which bounds its request head: hyper's smallest
/// (8 KiB) and twice that. Its default (about 400 KiB) times the connection cap would be over a
/// gigabyte; this is 64 MiB at a cap of 4,096.
const READ_BUFFER: usize = 16 << 10;

/// Headers one request may carry (the CLI sends five).
const MAX_HEADERS: usize = 32;

/// How a connection is served: its header deadline, and whether it may carry more than one
/// request.
#[derive(Clone, Copy, Debug)]
pub struct Serving {
    /// Each request's headers must come within it.
    pub header_timeout: std::time::Duration,
    /// Keep-alive: the TLS API keeps a connection for the CLI's next request; the probes' port
    /// answers one request per connection, so none can be held by a client that asks `/live`
    /// over and over.
    pub keep_alive: bool,
}

/// Serves HTTP/1.1 requests of `router` on one connection until it ends or `cancel` is
/// cancelled: each request's headers within the deadline, a small read buffer.
pub async fn serve_api_connection<I>(io: I, router: Router, serving: Serving, cancel: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    // HTTP/1.1 only: the CLI and the probes speak it, and an `auto` builder would first wait,
    // with no deadline, for the bytes that tell HTTP/2 from HTTP/1.
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(serving.header_timeout)
        .keep_alive(serving.keep_alive)
        .max_buf_size(READ_BUFFER)
        .max_headers(MAX_HEADERS);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::select! {
        result = connection => {
            if let Err(error) = result {
                tracing::debug!(%error, "an HTTP connection ended");
            }
        }
        () = cancel.cancelled() => {}
    }
}

/// Serves the probes on `listener` until `cancel` is cancelled, within `limits`, and returns
/// once every connection ended.
pub async fn serve(listener: TcpListener, state: HttpState, limits: Limits, cancel: CancellationToken) {
    let router = probes_router(state);
    let connections = TaskTracker::new();
    let until = cancel.clone();
    let serving = Serving { header_timeout: limits.timeout, keep_alive: false };
    accept_loop("http", listener, limits, cancel.clone(), |io, _peer| {
        connections.spawn(serve_api_connection(io, router.clone(), serving, until.clone()));
    })
    .await;
    connections.close();
    connections.wait().await;
}

/// Serves the TLS API on `listener` (an agent with no gRPC server): each connection's TLS
/// handshake within the timeout, then [`serve_api_connection`].
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: HttpState,
    limits: Limits,
    cancel: CancellationToken,
) {
    let router = api_router(state);
    let connections = TaskTracker::new();
    let until = cancel.clone();
    let serving = Serving { header_timeout: limits.timeout, keep_alive: true };
    accept_loop("api", listener, limits, cancel.clone(), |mut io, peer| {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        io.require_auth(flag.clone(), limits.timeout);
        let router = router.clone().layer(axum::Extension(ConnectionAuth(flag)));
        let (acceptor, cancel) = (acceptor.clone(), until.clone());
        connections.spawn(async move {
            let handshake = tokio::select! {
                handshake = tokio::time::timeout(limits.timeout, acceptor.accept(io)) => handshake,
                () = cancel.cancelled() => return,
            };
            match handshake {
                Ok(Ok(tls)) => serve_api_connection(tls, router, serving, cancel).await,
                Ok(Err(error)) => tracing::debug!(%peer, %error, "a TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "a TLS handshake did not finish within server_timeout"),
            }
        });
    })
    .await;
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_told_from_foreign_ones() {
        for host in [
            "localhost",
            "localhost:5555",
            "LOCALHOST.",
            "agent.localhost:1",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:5555",
            "::1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:5555",
            "10.0.0.1",
            "[fe80::1]:5555",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn the_bearer_token_must_match_exactly() {
        let mut headers = HeaderMap::new();
        assert!(!bearer_matches(&headers, "secret-token"));
        headers.insert(header::AUTHORIZATION, "Bearer secret-token".parse().unwrap());
        assert!(bearer_matches(&headers, "secret-token"));
        headers.insert(header::AUTHORIZATION, "bearer secret-tokeN".parse().unwrap());
        assert!(!bearer_matches(&headers, "secret-token"));
        headers.insert(header::AUTHORIZATION, "Basic secret-token".parse().unwrap());
        assert!(!bearer_matches(&headers, "secret-token"));
    }
}
