//! The agent's two HTTP servers, both answering from a [`Backend`]:
//!
//! - The probes' port, in plain HTTP on `health_host:health_port` (127.0.0.1 by default), open
//!   to anyone: `/live` and `/ready` (Datadog's names), `/health` (both at once), `/health/live`
//!   (the same as `/live`), and `/metrics` (Prometheus text) only when `metrics_public` is set.
//!   Nothing else is served there. The kubelet's probes send no token, so this port may have to
//!   be opened to the network for them; it therefore serves no secret and no metadata. See
//!   [`serve`].
//! - The CLI's API, over TLS with the IPC certificate: the probes' routes, `/metrics`, and the
//!   JSON of `/agent/workload-list`, `/agent/tagger-list`, `/agent/status` and `/agent/config`.
//!   Every route but the probes' needs `authorization: Bearer <token>`, with the gRPC API's
//!   token, and answers 401 without it. A full agent serves this API on `cmd_port`, beside gRPC,
//!   and tells the two apart by ALPN (`h2` is gRPC, `http/1.1` this API), as the Datadog Agent
//!   serves its CLI; an agent with no gRPC server of its own (the light agent, a follower)
//!   serves it on `api_port`. See [`serve_api_connection`] and [`serve_tls`].
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

/// The token check of the TLS API: what a request to any route but the probes' must carry.
#[derive(Clone)]
pub struct Guard {
    /// The bearer token that every route but the probes' requires.
    pub token: Arc<str>,
    /// For the light agent, whose token file belongs to its upstream: that file, checked instead
    /// of `token`. It is read again when a request's token does not match (at most once a
    /// second), so that a new token made by the upstream is accepted.
    pub token_file: Option<Arc<TokenFile>>,
}

/// A token file that another agent owns and may replace, read again when a request's token does
/// not match the one read last.
#[derive(Debug)]
pub struct TokenFile {
    path: std::path::PathBuf,
    current: std::sync::Mutex<(Arc<str>, Option<Instant>)>,
}

impl TokenFile {
    /// Returns a `TokenFile` for `path`, starting from `token`, the token the file holds now.
    pub fn new(path: std::path::PathBuf, token: Arc<str>) -> Self {
        Self { path, current: std::sync::Mutex::new((token, None)) }
    }

    /// Tells whether `headers` carry the file's token.
    ///
    /// When they do not carry the token read last, the file is read again and the headers are
    /// checked against the token it now holds. The file is read at most once a second, so that
    /// requests with a wrong token cannot make the agent read it on every request. The file is
    /// read with `load_or_create_token`, so a missing file is created with a new token.
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

/// Shows whether a token file is followed, never the token.
impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").field("follows_token_file", &self.token_file.is_some()).finish_non_exhaustive()
    }
}

/// What the HTTP handlers read: the agent's data, and what `/agent/status` and `/agent/config`
/// report.
#[derive(Clone, Debug)]
pub struct HttpState {
    /// The agent's data: its store and tagger, or the light agent's copy of tags.
    pub backend: Arc<dyn Backend>,
    /// The effective config, each key with its value and origin, for `/agent/config`.
    pub config: Arc<BTreeMap<String, Setting>>,
    /// When the agent started, for the uptime in `/agent/status`.
    pub started: Instant,
    /// The gRPC API's address for `/agent/status`, or text starting with `none` when the agent
    /// serves no gRPC API.
    pub grpc_address: String,
    /// The names of the collectors compiled into this build, for `/agent/status`.
    pub compiled_collectors: Vec<String>,
    /// The token check of the TLS API.
    pub guard: Guard,
    /// `metrics_public`: whether the probes' port also serves `/metrics`, without a token.
    pub metrics_public: bool,
}

/// The query string of `/agent/workload-list`: `?verbose=true` adds each source's version.
#[derive(Deserialize)]
struct VerboseQuery {
    #[serde(default)]
    verbose: bool,
}

/// Answers `/health` with the health report: 200 when the agent is live and ready, else 503.
async fn health_handler(State(state): State<HttpState>) -> impl IntoResponse {
    let report = state.backend.health();
    let code = if report.live && report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(report))
}

/// Answers `/live` and `/health/live` with the health report: 200 when the agent is live, else
/// 503.
async fn live_handler(State(state): State<HttpState>) -> impl IntoResponse {
    let report = state.backend.health();
    (if report.live { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(report))
}

/// Answers `/ready` with the health report: 200 when the agent is ready, else 503.
async fn ready_handler(State(state): State<HttpState>) -> impl IntoResponse {
    let report = state.backend.health();
    (if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(report))
}

/// Tells whether `host` names this machine's loopback.
///
/// `host` is a name or an address, with or without a port, as in a config key or a `Host`
/// header. Loopback means `localhost` or a name under `.localhost` (which resolves there), an
/// address in 127.0.0.0/8, or `::1`, bare or in brackets. Case and a trailing dot are ignored;
/// nothing is resolved.
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

/// Tells whether `headers` carry `authorization: Bearer <token>` with this `token`.
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    crate::security::check_bearer(value, token).is_ok()
}

/// Answers `code` with the text `why`; a 401 also says, in `WWW-Authenticate`, that a bearer
/// token is expected.
fn refuse(code: StatusCode, why: &'static str) -> Response {
    let mut response = (code, why).into_response();
    if code == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    response
}

/// Checks the bearer token of a request to the TLS API, before any handler runs.
///
/// The probes' routes pass without a token; every other route answers 401 without the right
/// one. An authenticated request also marks its connection (see [`ConnectionAuth`]), so that the
/// connection may stay open.
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
    // Mark the connection as authenticated, so that its `IdleTimeout` keeps it open past
    // `server_timeout`.
    if let Some(ConnectionAuth(flag)) = request.extensions().get::<ConnectionAuth>() {
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    next.run(request).await
}

/// The flag of one TLS API connection, set by its first authenticated request.
///
/// The connection's [`IdleTimeout`](crate::conn::IdleTimeout) watches it (see
/// [`require_auth`](crate::conn::IdleTimeout::require_auth)): a connection that only ever asks
/// the probes, or asks nothing, is closed once `server_timeout` has passed, like a gRPC
/// connection that never authenticates.
#[derive(Clone, Debug)]
pub struct ConnectionAuth(pub Arc<std::sync::atomic::AtomicBool>);

/// Answers `/metrics` in the Prometheus text format (version 0.0.4).
async fn metrics_handler(State(state): State<HttpState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.backend.metrics())
}

/// Answers `/agent/workload-list`, or 404 from the light agent, which stores no workload metadata.
async fn workload_handler(State(state): State<HttpState>, Query(q): Query<VerboseQuery>) -> axum::response::Response {
    match state.backend.workload_list(q.verbose) {
        Some(list) => Json(list).into_response(),
        None => {
            (StatusCode::NOT_FOUND, "this agent (flavor-light) keeps no workload metadata of its own").into_response()
        }
    }
}

/// Answers `/agent/tagger-list`.
async fn tagger_handler(State(state): State<HttpState>) -> Json<TaggerList> {
    Json(state.backend.tagger_list())
}

/// Answers `/agent/config` with the effective config.
async fn config_handler(State(state): State<HttpState>) -> Json<BTreeMap<String, Setting>> {
    Json((*state.config).clone())
}

/// Answers `/agent/status`.
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

/// Returns the routes of the probes' port: the probes, and `/metrics` when `metrics_public` is
/// set.
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

/// Returns the routes of the TLS API: every route, behind the token check (`guard`).
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

/// The read buffer of one HTTP connection, which also bounds the size of a request's head:
/// 16 KiB, twice hyper's minimum of 8 KiB. hyper's default, about 400 KiB, times the connection
/// cap would be over a gigabyte; 16 KiB makes 64 MiB at a cap of 4,096.
const READ_BUFFER: usize = 16 << 10;

/// The most headers one request may carry; the CLI sends five.
const MAX_HEADERS: usize = 32;

/// How a connection is served: its header deadline, and whether it may carry more than one
/// request.
#[derive(Clone, Copy, Debug)]
pub struct Serving {
    /// How long the client has to send each request's headers.
    pub header_timeout: std::time::Duration,
    /// Whether a connection may carry more than one request. The TLS API keeps a connection open
    /// for the CLI's next request; the probes' port answers one request per connection, so that
    /// a client that asks `/live` over and over cannot hold a connection.
    pub keep_alive: bool,
}

/// Serves `router` over HTTP/1.1 on one connection until the connection ends or `cancel` is
/// cancelled, with the limits of `serving`, a read buffer of 16 KiB and at most 32 headers per
/// request.
pub async fn serve_api_connection<I>(io: I, router: Router, serving: Serving, cancel: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    // HTTP/1.1 only, which the CLI and probe clients speak: an `auto` builder would first wait,
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

/// Serves the probes' port on `listener`, within `limits`, until `cancel` is cancelled; returns
/// once every connection has ended.
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

/// Serves the TLS API on a port of its own, for an agent with no gRPC server (the light agent, a
/// follower), until `cancel` is cancelled; returns once every connection has ended.
///
/// Each connection has `limits.timeout` to finish its TLS handshake and to carry an
/// authenticated request; it is served by [`serve_api_connection`].
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
