//! Cloud Foundry servers of ours (no Cloud Foundry runs here), speaking the wire of
//! `docs/cloudfoundry.md`, driven by tests over time:
//!
//! - [`FakeGarden`]: Garden's API on a unix socket (HTTP/1.1, Go field names, `null` for empty
//!   slices, a trailing newline): `/ping`, `/containers` with property filters and Guardian's
//!   implicit `garden.state=created`, `/containers/bulk_info` and `/containers/bulk_metrics`
//!   (per-entry `Err`), `/containers/:handle/info` (404 `ContainerNotFoundError`). Its containers
//!   carry the properties Diego's executor writes (`log_config`, `network.*`, `executor:owner`).
//! - [`FakeCloudController`]: one HTTPS server (a CA of ours) playing the Cloud Controller's root
//!   (`links.uaa`, `links.login`), the UAA's `POST /oauth/token` (HTTP Basic client credentials,
//!   tokens that expire after a set time) and the `/v3` routes the collector reads, with real
//!   pagination, `include=space.organization`, `CF-InvalidAuthToken` 401s, a delay and a failure
//!   switch.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::net::{TcpListener, UnixListener};
use wm_core::sync::MutexExt;

use crate::runtimes::Unavailable;

/// Go's `json.Encoder` output: the value and a newline.
fn go_json(status: StatusCode, value: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], format!("{value}\n")).into_response()
}

/// One Garden container.
#[derive(Clone, Debug, Default)]
pub struct GardenContainer {
    /// `active` or `stopped`.
    pub state: String,
    /// Its properties.
    pub properties: BTreeMap<String, String>,
    /// `(host port, container port)`.
    pub mapped_ports: Vec<(u32, u32)>,
    /// Its age, in seconds.
    pub age_secs: u64,
}

/// An app, space and org as Diego names them in a container's `log_config`.
#[derive(Clone, Debug)]
pub struct CfApp {
    /// App GUID.
    pub guid: String,
    /// App name.
    pub name: String,
    /// Space GUID.
    pub space_guid: String,
    /// Space name.
    pub space_name: String,
    /// Org GUID.
    pub org_guid: String,
    /// Org name.
    pub org_name: String,
}

impl CfApp {
    /// An app `web` in space `dev` of org `acme`, with GUIDs of the real form.
    pub fn example() -> Self {
        Self {
            guid: "6b1c2a4e-0f57-4a8d-9a43-2d8f4c1e9b70".into(),
            name: "web".into(),
            space_guid: "0a7f1c3e-5b2d-4e69-8f10-3c6d9e2b4a51".into(),
            space_name: "dev".into(),
            org_guid: "9e3d5b1a-7c4f-4d28-b6e0-1a2c3d4e5f60".into(),
            org_name: "acme".into(),
        }
    }
}

impl GardenContainer {
    fn diego(app: &CfApp, workload: &str, log_config: Value) -> Self {
        let properties = [
            ("garden.state", "created"),
            ("garden.network.container-ip", "10.255.93.167"),
            ("garden.network.external-ip", "10.0.16.21"),
            ("executor:owner", "executor"),
            ("network.app_id", app.guid.as_str()),
            ("network.policy_group_id", app.guid.as_str()),
            ("network.space_id", app.space_guid.as_str()),
            ("network.org_id", app.org_guid.as_str()),
            ("network.ports", "8080"),
            ("network.container_workload", workload),
        ];
        let mut properties: BTreeMap<String, String> =
            properties.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        properties.insert("log_config".into(), log_config.to_string());
        Self { state: "active".into(), properties, mapped_ports: vec![(61012, 8080)], age_secs: 60 }
    }

    /// Instance `index` of `app`'s web process, as Diego's executor sets it up.
    pub fn app_instance(app: &CfApp, handle: &str, index: u32) -> Self {
        let log_config = json!({
            "guid": app.guid, "index": index, "source_name": "CELL",
            "tags": {
                "app_id": app.guid, "app_name": app.name, "instance_id": index.to_string(),
                "organization_id": app.org_guid, "organization_name": app.org_name,
                "process_id": app.guid, "process_instance_id": handle, "process_type": "web",
                "source_id": app.guid, "space_id": app.space_guid, "space_name": app.space_name,
            },
        });
        Self::diego(app, "app", log_config)
    }

    /// A task of `app` (no index, no instance tags).
    pub fn task(app: &CfApp) -> Self {
        let log_config = json!({
            "guid": app.guid, "source_name": "CELL",
            "tags": {
                "app_id": app.guid, "app_name": app.name, "organization_id": app.org_guid,
                "organization_name": app.org_name, "source_id": app.guid, "space_id": app.space_guid,
                "space_name": app.space_name,
            },
        });
        Self::diego(app, "task", log_config)
    }

    /// An executor health-check container.
    pub fn health_check() -> Self {
        let properties =
            [("garden.state", "created"), ("executor:owner", "executor"), ("executor-healthcheck", "true")];
        let properties = properties.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Self { state: "active".into(), properties, mapped_ports: Vec::new(), age_secs: 1 }
    }

    fn info(&self) -> Value {
        let property = |k: &str| self.properties.get(k).cloned().unwrap_or_default();
        let ports: Vec<Value> =
            self.mapped_ports.iter().map(|(h, c)| json!({"HostPort": h, "ContainerPort": c})).collect();
        json!({
            "State": self.state, "Events": null, "HostIP": "10.255.93.166",
            "ContainerIP": property("garden.network.container-ip"), "ContainerIPv6": "",
            "ExternalIP": property("garden.network.external-ip"),
            "ContainerPath": "/var/vcap/data/garden/depot/x", "ProcessIDs": null,
            "Properties": self.properties,
            "MappedPorts": if ports.is_empty() { Value::Null } else { Value::Array(ports) },
        })
    }
}

#[derive(Debug, Default)]
struct GardenState {
    containers: BTreeMap<String, GardenContainer>,
    failing: std::collections::HashSet<String>,
    delay: Duration,
}

#[derive(Debug, Default)]
struct GardenShared {
    state: Mutex<GardenState>,
    requests: AtomicUsize,
    /// Bulk requests without `handles=` (the real server drops the connection on them).
    bulk_without_handles: AtomicUsize,
}

/// Garden on a unix socket. Dropping it stops serving and removes the socket.
#[derive(Debug)]
pub struct FakeGarden {
    socket: PathBuf,
    shared: Arc<GardenShared>,
    task: tokio::task::JoinHandle<()>,
}

fn not_found(handle: &str) -> Value {
    json!({"Type": "ContainerNotFoundError", "Message": format!("unknown handle: {handle}"),
           "Handle": handle, "ProcessID": "", "Binary": ""})
}

/// A request's query as `(key, value)` pairs, as given (no percent-decoding: the clients send
/// GUIDs and commas as they are).
fn query_pairs(request: &Request) -> Vec<(String, String)> {
    let query = request.uri().query().unwrap_or_default();
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn garden(State(shared): State<Arc<GardenShared>>, request: Request) -> Response {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let delay = shared.state.locked().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let path = request.uri().path().to_owned();
    let query = query_pairs(&request);
    let state = shared.state.locked();
    match path.as_str() {
        "/ping" => go_json(StatusCode::OK, &json!({})),
        "/containers" => {
            let mut filters: HashMap<&str, &str> = query.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            filters.entry("garden.state").or_insert("created");
            if filters.get("garden.state") == Some(&"all") {
                filters.remove("garden.state");
            }
            let handles: Vec<&String> = state
                .containers
                .iter()
                .filter(|(_, c)| filters.iter().all(|(k, v)| c.properties.get(*k).map(String::as_str) == Some(*v)))
                .map(|(h, _)| h)
                .collect();
            go_json(StatusCode::OK, &json!({ "Handles": handles }))
        }
        "/containers/bulk_info" | "/containers/bulk_metrics" => {
            let Some((_, handles)) = query.iter().find(|(k, _)| k == "handles") else {
                shared.bulk_without_handles.fetch_add(1, Ordering::Relaxed);
                return go_json(StatusCode::INTERNAL_SERVER_ERROR, &json!({"Type": "", "Message": "no handles"}));
            };
            let mut out = serde_json::Map::new();
            for handle in handles.split(',').filter(|h| !h.is_empty()) {
                let found = state.containers.get(handle).filter(|_| !state.failing.contains(handle));
                let entry = match (found, path.as_str()) {
                    (Some(c), "/containers/bulk_info") => json!({"Info": c.info(), "Err": null}),
                    (Some(c), _) => json!({"Metrics": {"CPUStat": {"Usage": 1, "User": 1, "System": 0},
                        "NetworkStat": null, "Age": c.age_secs * 1_000_000_000, "CPUEntitlement": 0}, "Err": null}),
                    (None, _) if state.failing.contains(handle) => json!({"Info": {"State": "", "Properties": null},
                        "Err": {"Type": "", "Message": format!("runc state: container {handle} is in a bad way")}}),
                    (None, _) => json!({"Info": {"State": "", "Properties": null},
                        "Err": {"Type": "", "Message": format!("unknown handle: {handle}")}}),
                };
                out.insert(handle.to_owned(), entry);
            }
            go_json(StatusCode::OK, &Value::Object(out))
        }
        other => {
            let handle = other.strip_prefix("/containers/").and_then(|r| r.strip_suffix("/info"));
            match handle.map(|h| (h, state.containers.get(h))) {
                Some((_, Some(c))) => go_json(StatusCode::OK, &c.info()),
                Some((h, None)) => go_json(StatusCode::NOT_FOUND, &not_found(h)),
                None => go_json(StatusCode::NOT_FOUND, &json!({"Type": "", "Message": "not found"})),
            }
        }
    }
}

impl FakeGarden {
    /// Serves on `socket` (an old file there is removed). Needs a tokio runtime.
    pub fn start(socket: &Path) -> Result<Self, Unavailable> {
        let _ = std::fs::remove_file(socket);
        let listener =
            UnixListener::bind(socket).map_err(|e| Unavailable(format!("fake Garden: {}: {e}", socket.display())))?;
        let shared = Arc::new(GardenShared::default());
        let router = axum::Router::new().fallback(garden).with_state(shared.clone());
        let task = tokio::spawn(async move {
            // Connections end with the server (as when a real Garden stops).
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let router = router.clone();
                while connections.try_join_next().is_some() {}
                connections.spawn(async move {
                    let service = TowerToHyperService::new(router);
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .http1_only()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { socket: socket.to_path_buf(), shared, task })
    }

    /// Its socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Adds or replaces a container.
    pub fn put(&self, handle: &str, container: GardenContainer) {
        self.shared.state.locked().containers.insert(handle.to_owned(), container);
    }

    /// Removes a container.
    pub fn remove(&self, handle: &str) {
        self.shared.state.locked().containers.remove(handle);
    }

    /// Rewrites a container's `log_config` app name, as Diego's executor does after a rename.
    pub fn rename_app(&self, handle: &str, name: &str) {
        let mut state = self.shared.state.locked();
        let Some(c) = state.containers.get_mut(handle) else { return };
        let Some(text) = c.properties.get("log_config") else { return };
        let mut log: Value = serde_json::from_str(text).unwrap_or_default();
        log["tags"]["app_name"] = json!(name);
        c.properties.insert("log_config".into(), log.to_string());
    }

    /// Makes the bulk entries of `handle` carry an error (or work again).
    pub fn fail_entry(&self, handle: &str, fail: bool) {
        let mut state = self.shared.state.locked();
        if fail {
            state.failing.insert(handle.to_owned());
        } else {
            state.failing.remove(handle);
        }
    }

    /// Makes every answer take `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.state.locked().delay = delay;
    }

    /// Requests served so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Bulk requests that came without `handles=`.
    pub fn bulk_without_handles(&self) -> usize {
        self.shared.bulk_without_handles.load(Ordering::Relaxed)
    }
}

impl Drop for FakeGarden {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// An app as the Cloud Controller knows it.
#[derive(Clone, Debug, Default)]
pub struct CcApp {
    /// Its name.
    pub name: String,
    /// Its space's GUID.
    pub space_guid: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// How many sidecars it has.
    pub sidecars: u32,
}

/// A space: its name, its org, its isolation segment.
#[derive(Debug, Default)]
struct Space {
    name: String,
    org: String,
    segment: Option<String>,
}

#[derive(Debug, Default)]
struct CcState {
    apps: BTreeMap<String, CcApp>,
    spaces: BTreeMap<String, Space>,
    /// GUID → (name, default isolation segment GUID).
    orgs: BTreeMap<String, (String, Option<String>)>,
    /// GUID → name.
    segments: BTreeMap<String, String>,
    /// Token → when it expires.
    tokens: HashMap<String, Instant>,
    token_lifetime: Duration,
    /// Every `/v3` answer: after this delay, and with this status when set.
    delay: Duration,
    failing: Option<u16>,
    /// Misbehaviour on demand: the root's `links.uaa.href`, every `pagination.next.href` that
    /// is present, and the UAA's `expires_in`, in place of the true ones.
    uaa_href: Option<String>,
    next_href: Option<String>,
    expires_in: Option<u64>,
}

#[derive(Debug)]
struct CcShared {
    base: String,
    client_id: String,
    client_secret: String,
    state: Mutex<CcState>,
    tokens_issued: AtomicUsize,
    refused: AtomicUsize,
    apps_requests: AtomicUsize,
    later_pages: AtomicUsize,
}

/// The Cloud Controller and its UAA over HTTPS. Dropping it stops serving.
#[derive(Debug)]
pub struct FakeCloudController {
    address: SocketAddr,
    dir: PathBuf,
    ca: PathBuf,
    acceptors: crate::tls::Rotation,
    rotations: AtomicUsize,
    shared: Arc<CcShared>,
    task: tokio::task::JoinHandle<()>,
}

fn cc_error(status: StatusCode, code: u32, title: &str, detail: &str) -> Response {
    go_json(status, &json!({"errors": [{"code": code, "title": title, "detail": detail}]}))
}

fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64_decode(encoded.trim())?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut bits, mut count) = (0u32, 0);
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = u32::try_from(ALPHABET.iter().position(|a| *a == byte)?).ok()?;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push(u8::try_from((bits >> count) & 0xff).ok()?);
        }
    }
    Some(out)
}

fn page(base: &str, path: &str, query: &str, items: Vec<Value>, page: usize, per_page: usize) -> Value {
    let total = items.len();
    let pages = total.div_ceil(per_page).max(1);
    let href = |p: usize| json!({"href": format!("{base}{path}?{query}page={p}&per_page={per_page}")});
    let resources: Vec<Value> = items.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    json!({
        "pagination": {
            "total_results": total, "total_pages": pages, "first": href(1), "last": href(pages),
            "next": if page < pages { href(page + 1) } else { Value::Null },
            "previous": if page > 1 { href(page - 1) } else { Value::Null },
        },
        "resources": resources,
    })
}

fn relationship(guid: Option<&String>) -> Value {
    json!({"data": guid.map(|g| json!({"guid": g}))})
}

async fn cloud_controller(State(shared): State<Arc<CcShared>>, request: Request) -> Response {
    let query: HashMap<String, String> = query_pairs(&request).into_iter().collect();
    let path = request.uri().path().to_owned();
    let headers = request.headers().clone();
    let base = &shared.base;
    if path == "/" {
        let uaa = shared.state.locked().uaa_href.clone().unwrap_or_else(|| base.clone());
        return go_json(
            StatusCode::OK,
            &json!({"links": {
                "self": {"href": base}, "cloud_controller_v3": {"href": format!("{base}/v3")},
                "uaa": {"href": uaa}, "login": {"href": uaa},
            }}),
        );
    }
    if path == "/oauth/token" {
        let body = axum::body::to_bytes(request.into_body(), 64 * 1024).await.unwrap_or_default();
        let form = String::from_utf8_lossy(&body);
        let credentials = basic(&headers);
        if credentials != Some((shared.client_id.clone(), shared.client_secret.clone())) {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            let error = json!({"error": "unauthorized", "error_description": "Bad credentials"});
            return go_json(StatusCode::UNAUTHORIZED, &error);
        }
        if !form.split('&').any(|kv| kv == "grant_type=client_credentials") {
            return go_json(StatusCode::BAD_REQUEST, &json!({"error": "unsupported_grant_type"}));
        }
        let n = shared.tokens_issued.fetch_add(1, Ordering::Relaxed) + 1;
        let token = format!("token-{n}-{}", std::process::id());
        let mut state = shared.state.locked();
        let lifetime = state.token_lifetime;
        state.tokens.insert(token.clone(), Instant::now() + lifetime);
        let expires_in = state.expires_in.unwrap_or(lifetime.as_secs());
        return go_json(
            StatusCode::OK,
            &json!({"access_token": token, "token_type": "bearer", "expires_in": expires_in,
                    "scope": "cloud_controller.admin_read_only", "jti": format!("jti-{n}")}),
        );
    }
    let (delay, failing) = {
        let state = shared.state.locked();
        (state.delay, state.failing)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bearer ").or_else(|| v.strip_prefix("Bearer ")))
        .map(str::to_owned);
    let state = shared.state.locked();
    let valid = bearer.as_ref().and_then(|t| state.tokens.get(t)).is_some_and(|until| Instant::now() < *until);
    if !valid {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        return cc_error(StatusCode::UNAUTHORIZED, 1000, "CF-InvalidAuthToken", "Invalid Auth Token");
    }
    if let Some(status) = failing {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return cc_error(status, 10001, "CF-ServiceUnavailable", "The Cloud Controller is unwell");
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let not_found = || cc_error(StatusCode::NOT_FOUND, 10010, "CF-ResourceNotFound", "Resource not found");
    let app_json = |guid: &str, app: &CcApp| {
        json!({"guid": guid, "name": app.name, "state": "STARTED",
               "relationships": {"space": {"data": {"guid": app.space_guid}}},
               "metadata": {"labels": app.labels, "annotations": app.annotations},
               "links": {"self": {"href": format!("{base}/v3/apps/{guid}")}}})
    };
    match parts.as_slice() {
        ["v3", "apps"] => {
            shared.apps_requests.fetch_add(1, Ordering::Relaxed);
            let per_page: usize = query.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(50);
            if !(1..=5000).contains(&per_page) {
                return cc_error(StatusCode::BAD_REQUEST, 10005, "CF-BadQueryParameter", "per_page out of range");
            }
            let page_no: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
            if page_no > 1 {
                shared.later_pages.fetch_add(1, Ordering::Relaxed);
            }
            let guids: Option<Vec<&str>> = query.get("guids").map(|g| g.split(',').collect());
            let apps: Vec<(&String, &CcApp)> = state
                .apps
                .iter()
                .filter(|(g, _)| guids.as_ref().is_none_or(|want| want.contains(&g.as_str())))
                .collect();
            let carried = ["guids", "include"]
                .iter()
                .filter_map(|k| query.get(*k).map(|v| format!("{k}={v}&")))
                .collect::<String>();
            let mut body =
                page(base, "/v3/apps", &carried, apps.iter().map(|(g, a)| app_json(g, a)).collect(), page_no, per_page);
            if query.get("include").is_some_and(|i| i.split(',').any(|i| i == "space.organization")) {
                let shown: Vec<String> = body["resources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a["relationships"]["space"]["data"]["guid"].as_str().map(str::to_owned))
                    .collect();
                let spaces: Vec<(&String, &Space)> = state.spaces.iter().filter(|(g, _)| shown.contains(g)).collect();
                let orgs: Vec<Value> = state
                    .orgs
                    .iter()
                    .filter(|(g, _)| spaces.iter().any(|(_, s)| &s.org == *g))
                    .map(|(g, (name, _))| json!({"guid": g, "name": name}))
                    .collect();
                let spaces: Vec<Value> = spaces
                    .iter()
                    .map(|(g, s)| {
                        json!({"guid": g, "name": s.name, "relationships": {"organization": {"data": {"guid": s.org}}}})
                    })
                    .collect();
                body["included"] = json!({"spaces": spaces, "organizations": orgs});
            }
            if let Some(next) = &state.next_href
                && !body["pagination"]["next"].is_null()
            {
                body["pagination"]["next"] = json!({"href": next});
            }
            go_json(StatusCode::OK, &body)
        }
        ["v3", "apps", guid] => match state.apps.get(*guid) {
            Some(app) => go_json(StatusCode::OK, &app_json(guid, app)),
            None => not_found(),
        },
        ["v3", "apps", guid, "sidecars"] => match state.apps.get(*guid) {
            Some(app) => {
                let per_page: usize = query.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(50).max(1);
                let sidecars = (0..app.sidecars)
                    .map(|i| {
                        json!({"guid": format!("{guid}-sidecar-{i}"), "name": format!("sidecar-{i}"),
                                    "process_types": ["web"], "origin": "user"})
                    })
                    .collect();
                go_json(StatusCode::OK, &page(base, &path, "", sidecars, 1, per_page))
            }
            None => not_found(),
        },
        ["v3", "spaces", guid, "relationships", "isolation_segment"] => match state.spaces.get(*guid) {
            Some(space) => go_json(StatusCode::OK, &relationship(space.segment.as_ref())),
            None => not_found(),
        },
        ["v3", "organizations", guid, "relationships", "default_isolation_segment"] => match state.orgs.get(*guid) {
            Some((_, segment)) => go_json(StatusCode::OK, &relationship(segment.as_ref())),
            None => not_found(),
        },
        ["v3", "isolation_segments", guid] => match state.segments.get(*guid) {
            Some(name) => go_json(StatusCode::OK, &json!({"guid": guid, "name": name})),
            None => not_found(),
        },
        _ => not_found(),
    }
}

impl FakeCloudController {
    /// Serves on 127.0.0.1 (a free port) with a CA written in `dir`, to the UAA client
    /// `client_id`/`client_secret`, with tokens that last `token_lifetime`. Needs a tokio runtime.
    pub async fn start(
        dir: &Path,
        client_id: &str,
        client_secret: &str,
        token_lifetime: Duration,
    ) -> Result<Self, Unavailable> {
        let tls = crate::tls::server_tls(dir, "fake-cloud-controller")?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Unavailable(format!("fake Cloud Controller: bind: {e}")))?;
        let address = listener.local_addr().map_err(|e| Unavailable(e.to_string()))?;
        let shared = Arc::new(CcShared {
            base: format!("https://127.0.0.1:{}", address.port()),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            state: Mutex::new(CcState { token_lifetime, ..CcState::default() }),
            tokens_issued: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            apps_requests: AtomicUsize::new(0),
            later_pages: AtomicUsize::new(0),
        });
        let router = axum::Router::new().fallback(cloud_controller).with_state(shared.clone());
        let (acceptors, acceptor) = tokio::sync::watch::channel(tls.acceptor);
        let task = crate::tls::spawn_https(listener, acceptor, router);
        Ok(Self {
            address,
            dir: dir.to_owned(),
            ca: tls.ca,
            acceptors: crate::tls::Rotation(acceptors),
            rotations: AtomicUsize::new(0),
            shared,
            task,
        })
    }

    /// Serves from now on a certificate from a new CA, closing every open connection, and
    /// returns the new CA's path ([`Self::ca_cert`] stays the first one).
    ///
    /// # Errors
    ///
    /// The new CA or certificate cannot be made.
    pub fn rotate_ca(&self) -> Result<PathBuf, Unavailable> {
        let n = self.rotations.fetch_add(1, Ordering::Relaxed) + 1;
        let tls = crate::tls::server_tls(&self.dir.join(format!("rotated-{n}")), "fake-cloud-controller")?;
        self.acceptors.0.send_replace(tls.acceptor);
        Ok(tls.ca)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// The CA its certificate chains to.
    pub fn ca_cert(&self) -> &Path {
        &self.ca
    }

    /// Adds or replaces an app.
    pub fn put_app(&self, guid: &str, app: CcApp) {
        self.shared.state.locked().apps.insert(guid.to_owned(), app);
    }

    /// Renames an app.
    pub fn rename_app(&self, guid: &str, name: &str) {
        if let Some(app) = self.shared.state.locked().apps.get_mut(guid) {
            app.name = name.to_owned();
        }
    }

    /// Adds or replaces a space (with its isolation segment).
    pub fn put_space(&self, guid: &str, name: &str, org_guid: &str, segment: Option<&str>) {
        let space = Space { name: name.to_owned(), org: org_guid.to_owned(), segment: segment.map(str::to_owned) };
        self.shared.state.locked().spaces.insert(guid.to_owned(), space);
    }

    /// Adds or replaces an org (with its default isolation segment).
    pub fn put_org(&self, guid: &str, name: &str, default_segment: Option<&str>) {
        self.shared.state.locked().orgs.insert(guid.to_owned(), (name.to_owned(), default_segment.map(str::to_owned)));
    }

    /// Adds an isolation segment.
    pub fn put_segment(&self, guid: &str, name: &str) {
        self.shared.state.locked().segments.insert(guid.to_owned(), name.to_owned());
    }

    /// Makes every `/v3` answer wait `delay` first.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.state.locked().delay = delay;
    }

    /// Makes every `/v3` answer fail with `status` (or work again with `None`).
    pub fn set_failing(&self, status: Option<u16>) {
        self.shared.state.locked().failing = status;
    }

    /// Makes the root name `href` as its UAA (`links.uaa.href` and `links.login.href`).
    pub fn set_uaa_href(&self, href: Option<&str>) {
        self.shared.state.locked().uaa_href = href.map(str::to_owned);
    }

    /// Makes every `/v3/apps` page that has a next page point at `href` instead.
    pub fn set_next_href(&self, href: Option<&str>) {
        self.shared.state.locked().next_href = href.map(str::to_owned);
    }

    /// Makes the UAA answer `expires_in: seconds` (the token still lasts the real lifetime).
    pub fn set_expires_in(&self, seconds: Option<u64>) {
        self.shared.state.locked().expires_in = seconds;
    }

    /// Revokes every token issued so far (their next use answers 401 `CF-InvalidAuthToken`).
    pub fn revoke_tokens(&self) {
        self.shared.state.locked().tokens.clear();
    }

    /// Tokens the UAA issued.
    pub fn tokens_issued(&self) -> usize {
        self.shared.tokens_issued.load(Ordering::Relaxed)
    }

    /// Requests refused for their credentials or token.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// `GET /v3/apps` requests for a page past the first (a client following `pagination.next`).
    pub fn later_pages(&self) -> usize {
        self.shared.later_pages.load(Ordering::Relaxed)
    }

    /// `GET /v3/apps` requests answered.
    pub fn apps_requests(&self) -> usize {
        self.shared.apps_requests.load(Ordering::Relaxed)
    }
}

impl Drop for FakeCloudController {
    fn drop(&mut self) {
        self.task.abort();
    }
}
