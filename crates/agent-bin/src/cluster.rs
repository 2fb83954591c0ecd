//! The cluster agent's REST API: the Datadog Cluster Agent's endpoints that a node agent's
//! kubemetadata collector calls (`docs/wire/cluster-agent-api.md`), answered from the cluster
//! index that [`wm_collector_kube::cluster::follow`] keeps.
//!
//! [`handle`] answers one request: the route first (an unknown one is a 404), then the node
//! agent's token, then the same statuses and JSON as Datadog's cluster agent, so that a Datadog
//! node agent can use ours. [`run`] is `agent cluster-agent`: the index collector in a store of
//! its own (supervised, with health), the agent's usual ports, and this API over TLS on
//! `cluster_agent.cmd_port` through the same accept loop (connection caps, idle and header
//! timeouts) as the agent's other ports.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use wm_collector_kube::cluster::{ClusterIndex, ClusterIndexCollector, NodeUpdate};
use wm_core::config::Port;
use wm_core::sync::RwLockExt;
use wm_core::{CancellationToken, Secret};

use crate::config::AgentConfig;
use crate::conn::{Limits, accept_loop};
use crate::http::{Serving, serve_api_connection};
use crate::security::{BearerRefused, check_bearer};

/// The cluster agent's keys, under Datadog's names.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterAgentConfig {
    /// `cluster_agent.cmd_port` (Datadog's key, default 5005): the port of the API node agents
    /// call, on every address (node agents reach it through a Service).
    #[serde(rename = "cluster_agent.cmd_port")]
    pub cmd_port: Port,
    /// `cluster_agent.auth_token` (Datadog's key): the token node agents send, 32 characters at
    /// least. Empty (the default): the file `cluster_agent.auth_token` beside the config file,
    /// created with a random token when missing, as Datadog's cluster agent does.
    #[serde(rename = "cluster_agent.auth_token")]
    pub auth_token: Secret,
}

impl Default for ClusterAgentConfig {
    fn default() -> Self {
        Self { cmd_port: Port::of(5005), auth_token: Secret::default() }
    }
}

impl ClusterAgentConfig {
    /// Returns the token node agents must send: `cluster_agent.auth_token`, else the file's.
    ///
    /// # Errors
    ///
    /// Fails when the key's token is shorter than 32 characters, or when the file cannot be
    /// read, created or used (see [`crate::security::load_or_create_token`]).
    pub fn token(&self, config: &AgentConfig) -> anyhow::Result<String> {
        if self.auth_token.is_empty() {
            return Ok(crate::security::load_or_create_token(&self.token_path(config))?);
        }
        let token = self.auth_token.expose().trim();
        anyhow::ensure!(
            token.chars().count() >= 32,
            "cluster_agent.auth_token: a token of {} characters; node agents need 32 at least (Datadog's rule)",
            token.chars().count()
        );
        Ok(token.to_owned())
    }

    /// The token file used when `cluster_agent.auth_token` is empty: beside the config file.
    pub fn token_path(&self, config: &AgentConfig) -> PathBuf {
        config.path.parent().unwrap_or(std::path::Path::new(".")).join("cluster_agent.auth_token")
    }
}

/// The version the API reports: Datadog node agents use the per-node map from 1.3 on and the
/// namespace-metadata endpoint only for `Major >= 7 && Minor >= 55`, literally.
pub const REPORTED_VERSION: (i64, i64, i64) = (7, 60, 0);

/// One answer: status, content type (`None`: no header, as Datadog's tag endpoints send), and
/// body; `authenticate` asks for a `WWW-Authenticate: Bearer realm="Datadog Agent"` header.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<&'static str>,
    /// Whether to send `WWW-Authenticate: Bearer realm="Datadog Agent"` (a 401).
    pub authenticate: bool,
    /// The body.
    pub body: Vec<u8>,
    /// For `GET /api/v1/stream/node/{node}`: the node whose stream to serve after the headers
    /// (the body is then the stream, not `body`).
    pub stream: Option<String>,
}

impl Answer {
    fn json(value: &Value, content_type: Option<&'static str>) -> Self {
        Self { status: 200, content_type, authenticate: false, body: value.to_string().into_bytes(), stream: None }
    }

    /// A plain-text error, as Go's `http.Error` writes it: the message and a newline.
    fn text(status: u16, message: &str) -> Self {
        Self {
            status,
            content_type: Some("text/plain; charset=utf-8"),
            authenticate: status == 401,
            body: format!("{message}\n").into_bytes(),
            stream: None,
        }
    }
}

/// The route a path names.
enum Route<'a> {
    Version,
    PodsOfNode(&'a str),
    ServicesOfPod(&'a str, &'a str, &'a str),
    NamespaceMetadata(&'a str),
    NamespaceLabels(&'a str),
    NodeLabels(&'a str),
    NodeAnnotations(&'a str),
    ClusterId,
    StreamNode(&'a str),
}

fn route(path: &str) -> Option<Route<'_>> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    Some(match parts.as_slice() {
        ["version"] => Route::Version,
        ["api", "v1", "tags", "pod", node] => Route::PodsOfNode(node),
        ["api", "v1", "tags", "pod", node, namespace, pod] => Route::ServicesOfPod(node, namespace, pod),
        ["api", "v1", "metadata", "namespace", namespace] => Route::NamespaceMetadata(namespace),
        ["api", "v1", "tags", "namespace", namespace] => Route::NamespaceLabels(namespace),
        ["api", "v1", "tags", "node", node] => Route::NodeLabels(node),
        ["api", "v1", "annotations", "node", node] => Route::NodeAnnotations(node),
        ["api", "v1", "cluster", "id"] => Route::ClusterId,
        ["api", "v1", "stream", "node", node] => Route::StreamNode(node),
        _ => return None,
    })
}

/// Answers one request to the cluster agent's REST API from `index`.
///
/// `authorization` is the request's header; `token` is `cluster_agent.auth_token`. The cluster
/// id is the `kube-system` namespace's uid (the same for every replica). An unknown path or a
/// method other than
/// GET gets Go's `404 page not found`, before any token check, as Datadog's router does. A
/// missing token or another scheme gets 401, a wrong token 403.
pub fn handle(index: &ClusterIndex, token: &str, method: &str, path: &str, authorization: Option<&str>) -> Answer {
    let Some(route) = route(path).filter(|_| method == "GET") else {
        return Answer::text(404, "404 page not found");
    };
    match check_bearer(authorization, token) {
        Ok(()) => {}
        Err(BearerRefused::NotBearer) if authorization.is_none() => {
            return Answer::text(401, "no session token provided");
        }
        Err(BearerRefused::NotBearer) => return Answer::text(401, "unsupported authorization scheme"),
        Err(BearerRefused::WrongToken) => return Answer::text(403, "invalid session token"),
    }
    let set = |m: &BTreeMap<String, String>| json!(m);
    match route {
        Route::Version => {
            let (major, minor, patch) = REPORTED_VERSION;
            let commit = env!("CARGO_PKG_VERSION");
            let version =
                json!({ "Major": major, "Minor": minor, "Patch": patch, "Pre": "", "Meta": "", "Commit": commit });
            Answer::json(&version, Some("application/json"))
        }
        Route::PodsOfNode(node) => {
            if index.node(node).is_none() && index.services_on(node).is_none() {
                let warning = format!("node {node} not found in the cluster agent's index");
                return Answer::json(&json!({ "Warnings": [warning] }), None);
            }
            let services: serde_json::Map<String, Value> = index
                .services_on(node)
                .into_iter()
                .flatten()
                .map(|(namespace, pods)| {
                    let pods: serde_json::Map<String, Value> = pods
                        .iter()
                        .map(|(pod, services)| {
                            let set: serde_json::Map<String, Value> =
                                services.keys().map(|s| (s.clone(), json!({}))).collect();
                            (pod.clone(), Value::Object(set))
                        })
                        .collect();
                    (namespace.clone(), Value::Object(pods))
                })
                .collect();
            let bundle = if services.is_empty() { json!({}) } else { json!({ "services": services }) };
            Answer::json(&json!({ "Nodes": { node: bundle } }), None)
        }
        Route::ServicesOfPod(node, namespace, pod) => {
            let services: Vec<String> = index
                .services_on(node)
                .and_then(|n| n.get(namespace))
                .and_then(|pods| pods.get(pod))
                .map(|s| s.keys().map(|s| format!("kube_service:{s}")).collect())
                .unwrap_or_default();
            Answer::json(&json!(services), None)
        }
        Route::NamespaceMetadata(namespace) => match index.namespace(namespace) {
            Some(meta) => {
                let body = json!({
                    "Name": namespace,
                    "Namespace": "",
                    "Annotations": set(&meta.annotations),
                    "Labels": set(&meta.labels),
                });
                Answer::json(&body, None)
            }
            None => Answer::text(500, &format!("could not find namespace {namespace} in the cluster agent's index")),
        },
        Route::NamespaceLabels(namespace) => match index.namespace(namespace) {
            Some(meta) => Answer::json(&set(&meta.labels), None),
            None => Answer::text(500, &format!("could not find namespace {namespace} in the cluster agent's index")),
        },
        Route::NodeLabels(node) => match index.node(node) {
            Some(meta) => Answer::json(&set(&meta.labels), None),
            None => Answer::text(500, &format!("could not find node {node} in the cluster agent's index")),
        },
        Route::NodeAnnotations(node) => match index.node(node) {
            Some(meta) => Answer::json(&set(&meta.annotations), None),
            None => Answer::text(500, &format!("could not find node {node} in the cluster agent's index")),
        },
        Route::ClusterId => match index.namespace("kube-system").map(|m| m.uid.as_str()).filter(|u| !u.is_empty()) {
            Some(uid) => Answer::json(&json!(uid), Some("application/json")),
            None => Answer::text(500, "the cluster id (the kube-system namespace's uid) is not known yet"),
        },
        // Ours, for our node agents: the node's view, then each change as it happens.
        Route::StreamNode(node) => Answer {
            status: 200,
            content_type: Some(STREAM_CONTENT_TYPE),
            authenticate: false,
            body: Vec::new(),
            stream: Some(node.to_owned()),
        },
    }
}

/// The content type of a node stream: one JSON object per line.
pub const STREAM_CONTENT_TYPE: &str = "application/x-ndjson";

/// How often a node stream sends a heartbeat (an empty line of JSON, `{}`) when nothing changed,
/// so that a node agent can tell a silent cluster agent from a dead connection.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(15);

/// How long a node stream waits after a change before it reads the index, so that a burst of
/// changes (a re-list, a rollout) goes out as one line.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// The longest line a node stream writes before it splits an update by namespaces (a line is
/// then at most this plus one namespace's metadata; node agents read lines of up to 16 MiB).
const LINE: usize = 1 << 20;

/// The most node streams served at once, and per node name: a node agent needs one (two for a
/// moment while it reconnects), and a token holder must not make the cluster agent keep
/// thousands.
pub const MAX_STREAMS: usize = 8192;
/// See [`MAX_STREAMS`].
pub const MAX_STREAMS_PER_NODE: usize = 4;

/// The node streams open now, in all and per node name.
#[derive(Debug, Default)]
pub struct Streams(std::sync::Mutex<(usize, std::collections::HashMap<String, usize>)>);

impl Streams {
    /// Takes a place for one more stream of `node`; `None` when [`MAX_STREAMS`] or
    /// [`MAX_STREAMS_PER_NODE`] are reached. The place is given back when the slot drops.
    pub fn open(self: &Arc<Self>, node: &str) -> Option<StreamSlot> {
        use wm_core::sync::MutexExt;
        let mut open = self.0.locked();
        let per_node = open.1.get(node).copied().unwrap_or(0);
        if open.0 >= MAX_STREAMS || per_node >= MAX_STREAMS_PER_NODE {
            return None;
        }
        open.0 += 1;
        open.1.insert(node.to_owned(), per_node + 1);
        Some(StreamSlot { streams: self.clone(), node: node.to_owned() })
    }
}

/// One node stream's place in [`Streams`].
#[derive(Debug)]
pub struct StreamSlot {
    streams: Arc<Streams>,
    node: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        use wm_core::sync::MutexExt;
        let mut open = self.streams.0.locked();
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.node) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.node);
            }
        }
    }
}

/// What a node stream keeps between two lines.
struct Following {
    index: Arc<RwLock<ClusterIndex>>,
    node: String,
    cancel: CancellationToken,
    changes: tokio::sync::watch::Receiver<u64>,
    /// What the node agent has been sent; `None` until the snapshot (sent once the index has
    /// listed everything: a half-listed index would take metadata away from the node agent).
    view: Option<wm_collector_kube::cluster::NodeView>,
    heartbeat: tokio::time::Interval,
    /// Lines of an update split in several, not written yet.
    pending: std::collections::VecDeque<axum::body::Bytes>,
    _slot: Option<StreamSlot>,
}

/// The body of `GET /api/v1/stream/node/{node}`: once the index has listed everything, the
/// node's whole view; then what changed, each change settled for `SETTLE` (50 ms); a heartbeat every
/// [`HEARTBEAT`] without a line. It ends when `cancel` is cancelled (the node agent then
/// connects again, to another replica if this one stops). `slot` is held until it ends.
pub fn node_stream(
    index: Arc<RwLock<ClusterIndex>>,
    node: String,
    cancel: CancellationToken,
    slot: Option<StreamSlot>,
) -> impl futures::Stream<Item = Result<axum::body::Bytes, std::convert::Infallible>> + Send + 'static {
    let changes = index.reading().subscribe();
    let heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let following = Following {
        index,
        node,
        cancel,
        changes,
        view: None,
        heartbeat,
        pending: std::collections::VecDeque::new(),
        _slot: slot,
    };
    futures::stream::unfold(following, |mut f| async move {
        loop {
            if let Some(line) = f.pending.pop_front() {
                return Some((Ok(line), f));
            }
            if f.view.is_none() {
                // Marked before the look, so that a change made after it wakes the wait below.
                f.changes.mark_unchanged();
                let view = {
                    let index = f.index.reading();
                    index.synced().then(|| index.node_view(&f.node))
                };
                if let Some(view) = view {
                    f.pending.extend(lines(NodeUpdate::snapshot(&view)));
                    f.view = Some(view);
                    f.heartbeat.reset();
                    continue;
                }
            }
            tokio::select! {
                () = f.cancel.cancelled() => return None,
                changed = f.changes.changed() => {
                    // The index's sender lives as long as the index, which this stream holds:
                    // this does not fail; ending is the safe answer if it ever does.
                    changed.ok()?;
                    let Some(before) = &f.view else { continue };
                    tokio::time::sleep(SETTLE).await;
                    f.changes.mark_unchanged();
                    let after = f.index.reading().node_view(&f.node);
                    if let Some(update) = NodeUpdate::between(before, &after) {
                        f.pending.extend(lines(update));
                        f.heartbeat.reset();
                    }
                    f.view = Some(after);
                }
                _ = f.heartbeat.tick() => return Some((Ok(axum::body::Bytes::from_static(b"{}\n")), f)),
            }
        }
    })
}

/// The lines of one update (split when it is longer than [`LINE`]).
fn lines(update: NodeUpdate) -> impl Iterator<Item = axum::body::Bytes> {
    update.into_lines(LINE).into_iter().map(axum::body::Bytes::from)
}

/// Serves [`handle`] over TLS (HTTP/1.1) on `listener` until `cancel` is cancelled, within
/// `limits`; returns once every connection has ended.
pub async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    index: Arc<RwLock<ClusterIndex>>,
    token: Arc<str>,
    limits: Limits,
    cancel: CancellationToken,
) {
    let streams_end = cancel.clone();
    let open_streams = Arc::new(Streams::default());
    let answer = move |method: axum::http::Method, uri: axum::http::Uri, headers: axum::http::HeaderMap| {
        let (index, token, cancel, streams) = (index.clone(), token.clone(), streams_end.clone(), open_streams.clone());
        async move {
            let authorization = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            let grpc = headers
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("application/grpc"));
            if grpc {
                return grpc_refusal(check_bearer(authorization, &token).is_ok());
            }
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let mut answer = handle(&index.reading(), &token, method.as_str(), path, authorization);
            let slot = answer.stream.as_deref().map(|node| streams.open(node));
            if let Some(None) = slot {
                answer = Answer::text(429, "too many node streams open (for this node or in all)");
            }
            let body = match (answer.stream.take(), slot.flatten()) {
                (Some(node), Some(slot)) if answer.status == 200 => {
                    axum::body::Body::from_stream(node_stream(index, node, cancel, Some(slot)))
                }
                _ => axum::body::Body::from(answer.body),
            };
            let mut response = axum::response::Response::new(body);
            *response.status_mut() = axum::http::StatusCode::from_u16(answer.status)
                .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
            if let Some(content_type) = answer.content_type {
                response.headers_mut().insert(
                    axum::http::header::CONTENT_TYPE,
                    content_type.parse().unwrap_or(axum::http::HeaderValue::from_static("text/plain")),
                );
            }
            if answer.authenticate {
                response.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer realm=\"Datadog Agent\""),
                );
            }
            response
        }
    };
    let router = axum::Router::new().fallback(answer);
    let connections = TaskTracker::new();
    let until = cancel.clone();
    let serving = Serving { header_timeout: limits.timeout, keep_alive: true };
    accept_loop("cluster_agent", listener, limits, cancel.clone(), |io, peer| {
        let (acceptor, cancel, router) = (acceptor.clone(), until.clone(), router.clone());
        connections.spawn(async move {
            let handshake = tokio::select! {
                handshake = tokio::time::timeout(limits.timeout, acceptor.accept(io)) => handshake,
                () = cancel.cancelled() => return,
            };
            match handshake {
                Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                    serve_h2_connection(tls, router, cancel).await;
                }
                Ok(Ok(tls)) => serve_api_connection(tls, router, serving, cancel).await,
                Ok(Err(error)) => tracing::debug!(%peer, %error, "a TLS handshake failed (cluster agent API)"),
                Err(_) => {
                    tracing::debug!(%peer, "a TLS handshake did not finish within server_timeout (cluster agent API)")
                }
            }
        });
    })
    .await;
    connections.close();
    connections.wait().await;
}

/// Answers a gRPC call: no method is served here yet, so `UNIMPLEMENTED` (12), or
/// `UNAUTHENTICATED` (16) without the token, as a trailers-only response.
///
/// The newest Datadog node agents call `StreamKubeMetadata` first and fall back to the REST
/// pull only on `UNIMPLEMENTED`; any other failure (no HTTP/2, a TLS error) leaves them waiting
/// with the pull off, and their pods without `kube_service` tags.
fn grpc_refusal(authenticated: bool) -> axum::response::Response {
    let (status, message) = if authenticated {
        ("12", "the cluster agent serves no gRPC method yet: use its REST API")
    } else {
        ("16", "invalid session token")
    };
    let mut response = axum::response::Response::new(axum::body::Body::empty());
    let headers = response.headers_mut();
    headers.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", axum::http::HeaderValue::from_static(status));
    headers.insert("grpc-message", axum::http::HeaderValue::from_static(message));
    response
}

/// Serves a connection that chose HTTP/2 by ALPN (a gRPC client) until it ends or `cancel` is
/// cancelled: at most 16 streams at once, pinged every 30 s.
async fn serve_h2_connection<I>(io: I, router: axum::Router, cancel: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let service = hyper_util::service::TowerToHyperService::new(router);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http2_only();
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(16)
        .keep_alive_interval(std::time::Duration::from_secs(30));
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::select! {
        result = connection => {
            if let Err(error) = result {
                tracing::debug!(%error, "an HTTP/2 connection to the cluster agent's port ended");
            }
        }
        () = cancel.cancelled() => {}
    }
}

/// Runs the cluster agent (`agent cluster-agent`) until SIGTERM or SIGINT: the cluster index
/// collector in a store of its own, the agent's usual ports (probes, gRPC and CLI), and the
/// cluster agent's API on `cluster_agent.cmd_port`.
///
/// # Errors
///
/// Returns an error when a key is refused (a short `cluster_agent.auth_token`), when the token
/// or certificate file cannot be used, or when a port cannot be bound.
pub async fn run(config: &AgentConfig) -> anyhow::Result<()> {
    let cluster: ClusterAgentConfig = config.section()?;
    let token: Arc<str> = Arc::from(cluster.token(config)?);
    let kube: wm_collector_kube::metadata::KubeMetadataConfig = config.section()?;
    let index = Arc::new(RwLock::new(ClusterIndex::default()));
    let collector = ClusterIndexCollector::new(kube.kubernetes_kubeconfig_path.clone(), index.clone());
    let start = async {
        let agent = crate::run::start_with(config, vec![collector.into_collector()]).await?;
        let listener = crate::run::listen("0.0.0.0", cluster.cmd_port.get(), "cluster_agent.cmd_port").await?;
        let address = listener.local_addr()?;
        let cert = crate::security::load_or_create_cert(&config.ipc_cert_path())?;
        // `h2` for gRPC clients (answered `UNIMPLEMENTED`: see `grpc_refusal`), `http/1.1` for
        // the REST API.
        let acceptor = crate::run::tls_acceptor(&config.ipc_cert_path(), &cert, &[b"h2", b"http/1.1"])
            .context("TLS setup of the cluster agent's API")?;
        let (_, limits) = crate::run::connection_limits(config);
        agent.spawn(serve(listener, acceptor, index, token, limits, agent.cancel_token()));
        tracing::info!(%address, "cluster agent API listening (cluster_agent.cmd_port)");
        Ok(agent)
    };
    crate::signals::run_until_signal(start, crate::run::RunningAgent::stop).await
}

#[cfg(test)]
mod tests {
    use wm_collector_kube::cluster::{Meta, PodEndpoint};

    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn get(index: &ClusterIndex, path: &str) -> (u16, Value) {
        let answer = handle(index, TOKEN, "GET", path, Some(&format!("Bearer {TOKEN}")));
        let body = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        (answer.status, body)
    }

    fn endpoints(list: &[(&str, &str)]) -> Vec<PodEndpoint> {
        list.iter().map(|(node, pod)| PodEndpoint { node: (*node).into(), pod: (*pod).into() }).collect()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn a_node_gets_its_pods_services_as_datadogs_per_node_map() {
        let mut index = ClusterIndex::default();
        index.set_node("n1", Meta::default());
        index.set_node("n2", Meta::default());
        index.set_slice("shop", "web-abc", Some("web"), endpoints(&[("n1", "web-1"), ("n2", "web-2")]));
        index.set_slice("shop", "web-hl-x", Some("web-hl"), endpoints(&[("n1", "web-1")]));
        index.set_slice("kube-system", "dns-1", Some("kube-dns"), endpoints(&[("n1", "coredns-1")]));
        index.set_slice("shop", "orphan", None, endpoints(&[("n1", "lonely")]));
        let (status, body) = get(&index, "/api/v1/tags/pod/n1");
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({ "Nodes": { "n1": { "services": {
                "shop": { "web-1": { "web": {}, "web-hl": {} } },
                "kube-system": { "coredns-1": { "kube-dns": {} } },
            } } } })
        );
        // The pre-1.3 per-pod path.
        assert_eq!(get(&index, "/api/v1/tags/pod/n1/shop/web-1").1, json!(["kube_service:web", "kube_service:web-hl"]));
        assert_eq!(get(&index, "/api/v1/tags/pod/n1/shop/nobody").1, json!([]));
        // A known node without service-backed pods: an empty bundle. An unknown one: a warning.
        index.set_node("n3", Meta::default());
        assert_eq!(get(&index, "/api/v1/tags/pod/n3").1, json!({ "Nodes": { "n3": {} } }));
        let (status, body) = get(&index, "/api/v1/tags/pod/ghost");
        assert_eq!(status, 200);
        assert!(body.get("Nodes").is_none() && body["Warnings"][0].as_str().is_some_and(|w| w.contains("ghost")));
    }

    #[test]
    fn namespaces_and_nodes_answer_their_metadata_or_500() {
        let mut index = ClusterIndex::default();
        let meta =
            Meta { labels: labels(&[("env", "prod")]), annotations: labels(&[("owner", "team-a")]), ..Meta::default() };
        index.set_namespace("default", meta.clone());
        index.set_node("n1", meta);
        assert_eq!(
            get(&index, "/api/v1/metadata/namespace/default"),
            (
                200,
                json!({ "Name": "default", "Namespace": "", "Annotations": { "owner": "team-a" }, "Labels": { "env": "prod" } })
            )
        );
        assert_eq!(get(&index, "/api/v1/tags/namespace/default"), (200, json!({ "env": "prod" })));
        assert_eq!(get(&index, "/api/v1/tags/node/n1"), (200, json!({ "env": "prod" })));
        assert_eq!(get(&index, "/api/v1/annotations/node/n1"), (200, json!({ "owner": "team-a" })));
        assert_eq!(get(&index, "/api/v1/metadata/namespace/nope").0, 500);
        assert_eq!(get(&index, "/api/v1/tags/node/nope").0, 500);
        index.remove_namespace("default");
        index.remove_node("n1");
        assert_eq!(get(&index, "/api/v1/tags/namespace/default").0, 500);
        assert_eq!(get(&index, "/api/v1/annotations/node/n1").0, 500);
        let (status, version) = get(&index, "/version");
        assert_eq!(status, 200);
        // What a Datadog node agent gates on: at least 7.55 for the namespace-metadata endpoint.
        assert!(version["Major"] == 7 && version["Minor"].as_i64().is_some_and(|m| m >= 55), "{version}");
        assert_eq!(get(&index, "/api/v1/cluster/id").0, 500, "no kube-system namespace yet");
        index.set_namespace("kube-system", Meta { uid: "c-1".into(), ..Meta::default() });
        assert_eq!(get(&index, "/api/v1/cluster/id"), (200, json!("c-1")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_stream_sends_the_view_once_listed_then_each_change_then_heartbeats() {
        use futures::StreamExt as _;
        let index = Arc::new(RwLock::new(ClusterIndex::default()));
        index.writing().set_namespace("shop", Meta { labels: labels(&[("team", "a")]), ..Meta::default() });
        let answer = handle(&index.reading(), TOKEN, "GET", "/api/v1/stream/node/n1", Some(&format!("Bearer {TOKEN}")));
        assert_eq!((answer.status, answer.stream.as_deref()), (200, Some("n1")));
        assert_eq!(handle(&index.reading(), TOKEN, "GET", "/api/v1/stream/node/n1", None).status, 401);
        let cancel = CancellationToken::new();
        let mut stream = Box::pin(node_stream(index.clone(), "n1".into(), cancel.clone(), None));
        let mut next = async || -> NodeUpdate {
            let line = stream.next().await.expect("a line").expect("infallible");
            assert_eq!(line.last(), Some(&b'\n'), "one object per line");
            serde_json::from_slice(&line).expect("JSON")
        };
        // Not listed yet: heartbeats only, no snapshot that would take metadata away.
        let started = tokio::time::Instant::now();
        assert!(next().await.is_heartbeat());
        assert!(started.elapsed() >= HEARTBEAT);
        index.writing().mark_synced();
        let mut view = wm_collector_kube::cluster::NodeView::default();
        let first = next().await;
        assert!(first.snapshot && !first.more);
        first.apply_to(&mut view);
        assert_eq!(view.namespaces["shop"].labels["team"], "a");
        // A burst of changes: one line, once the burst has settled.
        {
            let mut index = index.writing();
            index.set_slice("shop", "web-1", Some("web"), endpoints(&[("n1", "web-1")]));
            index.set_namespace("shop", Meta { labels: labels(&[("team", "b")]), ..Meta::default() });
            index.set_slice("shop", "other", Some("db"), endpoints(&[("n2", "db-1")]));
        }
        let update = next().await;
        assert!(!update.snapshot && update.node.is_none());
        update.apply_to(&mut view);
        assert_eq!(view, index.reading().node_view("n1"));
        // Another node's change sends nothing; 15 s after the last line, a heartbeat.
        let sent = tokio::time::Instant::now();
        index.writing().set_slice("shop", "other", Some("db"), endpoints(&[("n2", "db-2")]));
        assert!(next().await.is_heartbeat());
        assert!(sent.elapsed() >= HEARTBEAT, "the heartbeat counts from the last line");
        // The server stopping ends the stream.
        cancel.cancel();
        assert!(stream.next().await.is_none());
    }

    #[test]
    fn node_streams_are_capped_per_node_and_in_all() {
        let streams = Arc::new(Streams::default());
        let n1: Vec<StreamSlot> = (0..MAX_STREAMS_PER_NODE).map(|_| streams.open("n1").unwrap()).collect();
        assert!(streams.open("n1").is_none(), "a fifth stream for one node");
        let n2 = streams.open("n2").unwrap();
        drop(n1);
        assert!(streams.open("n1").is_some(), "closed streams give their places back");
        drop(n2);
        let all: Vec<StreamSlot> = (0..MAX_STREAMS).map(|i| streams.open(&format!("n{i}")).unwrap()).collect();
        assert!(streams.open("another").is_none());
        drop(all);
        assert_eq!(streams.0.lock().unwrap().0, 0);
        assert!(streams.0.lock().unwrap().1.is_empty());
    }

    #[test]
    fn the_token_is_checked_after_the_route_with_datadogs_statuses() {
        let index = ClusterIndex::default();
        let ask = |path: &str, auth: Option<&str>| handle(&index, TOKEN, "GET", path, auth);
        let missing = ask("/version", None);
        assert_eq!((missing.status, missing.authenticate), (401, true));
        assert_eq!(missing.body, b"no session token provided\n");
        assert_eq!(ask("/version", Some(&format!("Basic {TOKEN}"))).status, 401);
        let wrong = ask("/version", Some("Bearer 0123456789abcdef0123456789abcdeX"));
        assert_eq!(
            (wrong.status, wrong.authenticate, wrong.body.as_slice()),
            (403, false, &b"invalid session token\n"[..])
        );
        assert_eq!(ask("/version", Some(&format!("Bearer {TOKEN} extra"))).status, 403);
        // Unknown paths and methods: 404 before any token check.
        for path in ["/", "/api/v1/tags/pod", "/api/v1/tags/pod/", "/api/v2/version", "/api/v1/tags/pod/n1/a"] {
            assert_eq!(ask(path, None).status, 404, "{path}");
        }
        let post = handle(&index, TOKEN, "POST", "/version", Some(&format!("Bearer {TOKEN}")));
        assert_eq!((post.status, post.body.as_slice()), (404, &b"404 page not found\n"[..]));
        // A query string does not change the route.
        assert_eq!(ask("/version?x=1", Some(&format!("Bearer {TOKEN}"))).status, 200);
    }
}
