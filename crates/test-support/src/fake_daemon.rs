//! Daemons of ours, for what a real one cannot do on demand: a Docker Engine API and a libpod
//! API on a unix socket, whose containers the test sets, whose inspects can fail (500) for
//! chosen containers or take a set time each, and a daemon that accepts connections and never
//! answers. They speak the small part of each API the collectors use, with the real paths (with
//! or without the `/v1.xx` prefix, as bollard sends both), bodies and event format.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tokio::sync::broadcast;
use wm_core::Timestamp;
use wm_core::sync::MutexExt;

use crate::runtimes::Unavailable;

/// Which API a fake speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Docker,
    Libpod,
}

#[derive(Debug)]
struct Shared {
    api: Api,
    containers: Mutex<BTreeMap<String, String>>,
    /// Every event so far (for `since`), as `(time in ns, JSON)`.
    events: Mutex<Vec<(i64, Value)>>,
    live: broadcast::Sender<Value>,
    inspect_delay: Mutex<Duration>,
    failing: Mutex<HashSet<String>>,
    /// Containers whose inspect streams a body of this many bytes (a JSON string never closed).
    huge: Mutex<BTreeMap<String, usize>>,
    /// Bytes of huge bodies handed to the connection so far.
    huge_bytes_sent: Arc<AtomicUsize>,
    inspects: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

fn now() -> Timestamp {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp::from_unix_nanos(i64::try_from(since_epoch.as_nanos()).unwrap_or(i64::MAX))
}

/// A fake daemon on a unix socket. Dropping it stops serving.
#[derive(Debug)]
pub struct FakeDaemon {
    socket: PathBuf,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// A fresh, empty directory for a test's fake daemon (`wm-fake-<pid>-<name>` in the temp dir).
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wm-fake-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

impl FakeDaemon {
    /// A Docker Engine API on `dir/docker.sock`. Needs a tokio runtime.
    pub fn docker(dir: &Path) -> Result<Self, Unavailable> {
        Self::serve(dir.join("docker.sock"), Api::Docker, false)
    }

    /// A libpod API (`/v4.0.0/libpod/…`) on `dir/podman.sock`. Needs a tokio runtime.
    pub fn libpod(dir: &Path) -> Result<Self, Unavailable> {
        Self::serve(dir.join("podman.sock"), Api::Libpod, false)
    }

    /// A daemon on `dir/hung.sock` that accepts every connection and never answers.
    pub fn hung(dir: &Path) -> Result<Self, Unavailable> {
        Self::serve(dir.join("hung.sock"), Api::Docker, true)
    }

    fn serve(socket: PathBuf, api: Api, hang: bool) -> Result<Self, Unavailable> {
        let _ = std::fs::remove_file(&socket);
        let listener =
            UnixListener::bind(&socket).map_err(|e| Unavailable(format!("fake daemon: {}: {e}", socket.display())))?;
        let shared = Arc::new(Shared {
            api,
            containers: Mutex::new(BTreeMap::new()),
            events: Mutex::new(Vec::new()),
            live: broadcast::channel(65_536).0,
            inspect_delay: Mutex::new(Duration::ZERO),
            failing: Mutex::new(HashSet::new()),
            huge: Mutex::new(BTreeMap::new()),
            huge_bytes_sent: Arc::new(AtomicUsize::new(0)),
            inspects: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let router = axum::Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                if hang {
                    held.push(stream); // accepted, never read, never answered
                    continue;
                }
                let router = router.clone();
                tokio::spawn(async move {
                    let service = TowerToHyperService::new(router);
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { socket, shared, task })
    }

    /// Its socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its address as `DOCKER_HOST` takes it.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Creates and starts a container (events `create`, `start`).
    pub fn create(&self, id: &str, name: &str) {
        self.shared.containers.locked().insert(id.to_owned(), name.to_owned());
        self.event(id, name, "create");
        self.event(id, name, "start");
    }

    /// Removes a container (event `destroy`).
    pub fn destroy(&self, id: &str) {
        let name = self.shared.containers.locked().remove(id).unwrap_or_default();
        self.event(id, &name, "destroy");
    }

    fn event(&self, id: &str, name: &str, action: &str) {
        let at = now();
        let event = json!({
            "Type": "container", "Action": action, "status": action, "id": id,
            "Actor": { "ID": id, "Attributes": { "name": name, "image": "busybox:1" } },
            "time": at.unix_seconds(), "timeNano": at.unix_nanos(),
        });
        self.shared.events.locked().push((at.unix_nanos(), event.clone()));
        let _ = self.shared.live.send(event);
    }

    /// Ends every event stream open now, as a daemon's restart does; the next `/events` call
    /// gets a stream again.
    pub fn end_event_streams(&self) {
        let _ = self.shared.live.send(Value::Null);
    }

    /// Makes the inspect of `id` answer 500 (or work again).
    pub fn fail_inspect(&self, id: &str, fail: bool) {
        let mut failing = self.shared.failing.locked();
        if fail {
            failing.insert(id.to_owned());
        } else {
            failing.remove(id);
        }
    }

    /// Makes the inspect of `id` stream a body of `bytes` bytes, produced as it is read (so a
    /// gigabyte costs the test nothing until a client reads it).
    pub fn make_inspect_huge(&self, id: &str, bytes: usize) {
        self.shared.huge.locked().insert(id.to_owned(), bytes);
    }

    /// Bytes of huge inspect bodies handed to connections so far: what a client read, plus what
    /// the socket's buffers hold.
    pub fn huge_bytes_sent(&self) -> usize {
        self.shared.huge_bytes_sent.load(Ordering::Relaxed)
    }

    /// Makes every inspect take `delay`.
    pub fn set_inspect_delay(&self, delay: Duration) {
        *self.shared.inspect_delay.locked() = delay;
    }

    /// The containers it has now.
    pub fn ids(&self) -> Vec<String> {
        self.shared.containers.locked().keys().cloned().collect()
    }

    /// Inspects answered so far.
    pub fn inspects(&self) -> usize {
        self.shared.inspects.load(Ordering::Relaxed)
    }

    /// The most inspects it has served at once.
    pub fn max_concurrent_inspects(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::Relaxed)
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn json_response(value: &Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, json_response(&json!({ "message": format!("No such {what}") }))).into_response()
}

/// The path without the API version (`/v1.47/…`, `/v4.0.0/libpod/…`).
fn route(path: &str, api: Api) -> Option<&str> {
    let rest = match path.strip_prefix("/v") {
        Some(versioned) if versioned.starts_with(|c: char| c.is_ascii_digit()) => {
            &versioned[versioned.find('/').unwrap_or(versioned.len())..]
        }
        _ => path,
    };
    match api {
        Api::Docker => Some(rest),
        Api::Libpod => rest.strip_prefix("/libpod"),
    }
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let Some(route) = route(&path, shared.api) else { return not_found("route") };
    let segments: Vec<&str> = route.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["_ping"] => "OK".into_response(),
        ["info"] => json_response(&json!({ "SystemTime": now().to_string() })),
        ["events"] => events(&shared, &query),
        ["containers", "json"] => list(&shared),
        ["containers", id, "json"] => inspect(&shared, id).await,
        ["images", _, "json"] => not_found("image"),
        _ => not_found("route"),
    }
}

fn list(shared: &Shared) -> Response {
    let containers = shared.containers.locked();
    let rows: Vec<Value> = containers
        .iter()
        .map(|(id, name)| match shared.api {
            Api::Docker => json!({ "Id": id, "Names": [format!("/{name}")], "Image": "busybox:1", "State": "running" }),
            Api::Libpod => json!({
                "Id": id, "Names": [name], "Image": "localhost/busybox:1", "ImageID": "sha256:1", "State": "running",
                "Pid": 1, "ExitCode": 0, "Exited": false, "StartedAt": 1_800_000_000, "Created": 1_800_000_000,
                "Labels": {}, "IsInfra": false,
            }),
        })
        .collect();
    json_response(&Value::Array(rows))
}

async fn inspect(shared: &Shared, id: &str) -> Response {
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let delay = *shared.inspect_delay.locked();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    shared.inspects.fetch_add(1, Ordering::Relaxed);
    if shared.failing.locked().contains(id) {
        let body = json_response(&json!({ "message": "fake daemon: inspect failed on purpose" }));
        return (StatusCode::INTERNAL_SERVER_ERROR, body).into_response();
    }
    if let Some(&bytes) = shared.huge.locked().get(id) {
        return huge_body(bytes, shared.huge_bytes_sent.clone());
    }
    let Some(name) = shared.containers.locked().get(id).cloned() else { return not_found("container") };
    let started = "2027-01-15T08:00:00Z";
    let body = match shared.api {
        Api::Docker => json!({
            "Id": id, "Name": format!("/{name}"), "Created": started, "Image": "sha256:1",
            "State": { "Status": "running", "Running": true, "Pid": 4242, "ExitCode": 0,
                       "StartedAt": started, "FinishedAt": "0001-01-01T00:00:00Z" },
            "Config": { "Image": "busybox:1", "Labels": {}, "Env": [] },
        }),
        Api::Libpod => json!({
            "Id": id, "Name": name, "Created": started, "Image": "sha256:1", "ImageName": "localhost/busybox:1",
            "State": { "Status": "running", "Running": true, "Pid": 4242, "ExitCode": 0,
                       "StartedAt": started, "FinishedAt": "0001-01-01T00:00:00Z" },
            "Config": { "Image": "localhost/busybox:1", "Labels": {}, "Env": [] },
            "IsInfra": false,
        }),
    };
    json_response(&body)
}

/// A 200 whose body is `{"Id":"` and then `x`s up to `bytes`, made 64 KiB at a time as the
/// connection takes it, with no `Content-Length`.
fn huge_body(bytes: usize, sent: Arc<AtomicUsize>) -> Response {
    const CHUNK: usize = 64 << 10;
    let chunks = futures::stream::unfold(0usize, move |at| {
        let sent = sent.clone();
        async move {
            if at >= bytes {
                return None;
            }
            let len = CHUNK.min(bytes - at);
            let mut chunk = vec![b'x'; len];
            if at == 0 {
                chunk[..7.min(len)].copy_from_slice(&b"{\"Id\":\""[..7.min(len)]);
            }
            sent.fetch_add(len, Ordering::Relaxed);
            Some((Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(chunk)), at + len))
        }
    });
    ([(header::CONTENT_TYPE, "application/json")], Body::from_stream(chunks)).into_response()
}

/// `GET /events?since=…`: what happened since then, then every new event, one JSON per line.
fn events(shared: &Shared, query: &str) -> Response {
    let since = query_param(query, "since")
        .and_then(|s| {
            let (secs, nanos) = s.split_once('.').unwrap_or((s, "0"));
            Some(secs.parse::<i64>().ok()? * 1_000_000_000 + format!("{nanos:0<9}")[..9].parse::<i64>().ok()?)
        })
        .unwrap_or(i64::MAX);
    // Subscribed before the replay: an event in between comes twice, which a collector shrugs off.
    let live = shared.live.subscribe();
    let replay: Vec<Value> =
        shared.events.locked().iter().filter(|(at, _)| *at >= since).map(|(_, e)| e.clone()).collect();
    let replayed = futures::stream::iter(replay);
    let following = futures::stream::unfold(live, |mut live| async move {
        match live.recv().await {
            // `end_event_streams`' mark: never a real event, never replayed.
            Ok(Value::Null) => None,
            Ok(event) => Some((event, live)),
            // A reader that fell this far behind is cut off, as dockerd does.
            Err(_) => None,
        }
    });
    let lines = replayed.chain(following).map(|event| Ok::<_, std::convert::Infallible>(format!("{event}\n")));
    ([(header::CONTENT_TYPE, "application/json")], Body::from_stream(lines)).into_response()
}
