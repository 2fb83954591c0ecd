//! The tagger for Python checks: the extension module behind `import tagger`, with the calls of
//! Datadog's Python `tagger` module (`tag(entity_id, cardinality)`, `get_tags(entity_id,
//! high_card)`, `LOW`, `ORCHESTRATOR`, `HIGH`), plus `connect()` and `wait_ready()`.
//!
//! The module keeps a local copy of an agent's tags, a [`wm_ipc::replica::RemoteTagger`] that the
//! agent's `TaggerStreamEntities` stream keeps current from a background thread, so a call for an
//! entity the copy has is a local lookup. A call for an entity the copy lacks (a container started
//! a moment ago, whose event is still on its way) asks the agent once with `TaggerFetchEntity`,
//! waiting at most 3 s; calls for the same entity that arrive meanwhile share that one request.
//!
//! The module follows the agent that `connect()` names or, when a check calls another function
//! first, the agent of the config file (`$WM_AGENT_CONFIG`, else
//! `/etc/wm-agent/agent.yaml`), where the variables `DD_CMD_HOST`, `DD_CMD_PORT`,
//! `DD_AUTH_TOKEN_FILE_PATH` and `DD_IPC_CERT_FILE_PATH` override the file.
//!
//! `tag()` and `get_tags()` never raise into the check. On a failure (no agent, a malformed id,
//! an unknown cardinality) they return `[]` and log a warning through Python's `logging`
//! (logger `tagger`), at most one a minute for each kind of failure. While no stream from the
//! agent is up they return `[]` too, because the tags the module still has may be stale. The
//! module reconnects by itself: once a restarted agent is back, tags come again without
//! importing the module again.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};
use serde::Deserialize;
use wm_core::sync::MutexExt;
use wm_core::{CancellationToken, TagCardinality};
use wm_ipc::RemoteAgent;
use wm_ipc::fetch::EntityFetcher;
use wm_ipc::replica::RemoteTagger;

/// The Python constant for low cardinality, with the value Datadog's Python `tagger` module
/// gives it.
pub const LOW: i64 = 0;
/// The Python constant for orchestrator cardinality, with the value Datadog's module gives it.
pub const ORCHESTRATOR: i64 = 1;
/// The Python constant for high cardinality, with the value Datadog's module gives it.
pub const HIGH: i64 = 2;

/// The agent config file read when neither `connect()`'s `config` argument nor
/// `$WM_AGENT_CONFIG` names one.
const DEFAULT_CONFIG: &str = "/etc/wm-agent/agent.yaml";
/// How often, at most, a failure of one kind is logged.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The keys of the agent's config file that say where the agent is, by Datadog's key names.
///
/// Other keys of the file are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AgentKeys {
    cmd_host: Option<String>,
    cmd_port: Option<u16>,
    auth_token_file_path: Option<PathBuf>,
    ipc_cert_file_path: Option<PathBuf>,
}

/// The agent to follow: its address, and the files holding its auth token and IPC certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The `host:port` of its gRPC API.
    pub address: String,
    /// The file holding its auth token.
    pub token_file: PathBuf,
    /// The file holding its IPC certificate and key (PEM).
    pub cert_file: PathBuf,
}

impl Target {
    /// Returns the agent that the config file at `path` and the variables in `env` describe.
    ///
    /// Each value comes from the `DD_*` variable (`DD_CMD_HOST`, `DD_CMD_PORT`,
    /// `DD_AUTH_TOKEN_FILE_PATH`, `DD_IPC_CERT_FILE_PATH`) when it is set, else from the file's key
    /// (`cmd_host`, `cmd_port`, `auth_token_file_path`, `ipc_cert_file_path`), else from the
    /// agent's own default: `localhost`, port 5001, `auth_token` in the config file's directory,
    /// and `ipc_cert.pem` in the token file's directory. A file that is missing or does not parse
    /// is treated as empty, and a `DD_CMD_PORT` that is not a port number is ignored.
    pub fn from_config(path: &Path, env: &HashMap<String, String>) -> Self {
        let keys: AgentKeys =
            std::fs::read_to_string(path).ok().and_then(|text| serde_saphyr::from_str(&text).ok()).unwrap_or_default();
        let host = env.get("DD_CMD_HOST").cloned().or(keys.cmd_host).unwrap_or_else(|| "localhost".to_owned());
        let port = env.get("DD_CMD_PORT").and_then(|p| p.parse().ok()).or(keys.cmd_port).unwrap_or(5001);
        let token_file = env
            .get("DD_AUTH_TOKEN_FILE_PATH")
            .map(PathBuf::from)
            .or(keys.auth_token_file_path)
            .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).join("auth_token"));
        let cert_file = env
            .get("DD_IPC_CERT_FILE_PATH")
            .map(PathBuf::from)
            .or(keys.ipc_cert_file_path)
            .unwrap_or_else(|| token_file.parent().unwrap_or(Path::new(".")).join("ipc_cert.pem"));
        Self { address: format!("{host}:{port}"), token_file, cert_file }
    }
}

/// A replica that follows one agent, the fetcher that asks the same agent about what the replica
/// lacks, and the tokio runtime whose single worker thread runs the follow task and drives the
/// fetches' connections.
struct Follower {
    replica: Arc<RemoteTagger>,
    fetcher: Arc<EntityFetcher>,
    cancel: CancellationToken,
    /// Shared with each fetch under way, so that a follower replaced during a fetch keeps its
    /// runtime until the fetch ends: a fetch on a runtime that shut down would fail, and its
    /// timer would panic.
    runtime: Arc<tokio::runtime::Runtime>,
}

impl Drop for Follower {
    /// Cancels the follow task. The runtime is dropped with the other fields right after, which
    /// stops its thread, or, when a fetch is under way, once that fetch ends.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The module's state: the follower, if one has started, and when each kind of failure was last
/// logged.
#[derive(Default)]
struct State {
    follower: Option<Follower>,
    logged: HashMap<&'static str, Instant>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Runs `f` on the module's state, under its lock, creating the state on first use.
fn with_state<T>(f: impl FnOnce(&mut State) -> T) -> T {
    let mut guard = STATE.locked();
    f(guard.get_or_insert_with(State::default))
}

/// Starts following `target`, and returns its replica.
///
/// On success the new follower replaces any earlier one, which stops. On failure the earlier
/// follower, if any, stays. Fails with a message when the token or certificate file cannot be
/// read or the certificate file lacks a block, or when the runtime cannot start; it does not
/// wait for the agent to answer.
fn follow(target: &Target) -> Result<Arc<RemoteTagger>, String> {
    let agent = RemoteAgent::from_files(target.address.clone(), &target.token_file, &target.cert_file)
        .map_err(|e| format!("cannot reach the agent at {}: {e}", target.address))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tagger-replica")
        .enable_all()
        .build()
        .map(Arc::new)
        .map_err(|e| format!("cannot start the replica's thread: {e}"))?;
    let replica = RemoteTagger::new();
    let fetcher = Arc::new(EntityFetcher::new(agent.clone()));
    let cancel = CancellationToken::new();
    runtime.spawn(replica.clone().follow_until(agent, cancel.clone()));
    with_state(|state| state.follower = Some(Follower { replica: replica.clone(), fetcher, cancel, runtime }));
    Ok(replica)
}

/// Returns the replica being followed, first starting to follow the agent of the config file
/// when none is.
///
/// Fails as [`follow`] does; the next call then tries again.
fn replica() -> Result<Arc<RemoteTagger>, String> {
    if let Some(replica) = with_state(|state| state.follower.as_ref().map(|f| f.replica.clone())) {
        return Ok(replica);
    }
    let env: HashMap<String, String> = std::env::vars().collect();
    let path = env.get("WM_AGENT_CONFIG").map_or_else(|| PathBuf::from(DEFAULT_CONFIG), PathBuf::from);
    follow(&Target::from_config(&path, &env))
}

/// Logs `message` as a warning through Python's `logging` (logger `tagger`), unless a message of
/// the same `kind` was logged less than a minute ago.
///
/// When Python's `logging` cannot be called, the message goes to standard error instead.
fn log_once(py: Python<'_>, kind: &'static str, message: &str) {
    let due = with_state(|state| {
        let due = state.logged.get(kind).is_none_or(|at| at.elapsed() >= LOG_EVERY);
        if due {
            state.logged.insert(kind, Instant::now());
        }
        due
    });
    if !due {
        return;
    }
    let logged = py
        .import("logging")
        .and_then(|logging| logging.call_method1("getLogger", ("tagger",)))
        .and_then(|logger| logger.call_method1("warning", (message,)));
    if logged.is_err() {
        eprintln!("tagger: {message}");
    }
}

/// Returns the cardinality that a Python constant stands for, or `None` for any other number.
fn cardinality(value: i64) -> Option<TagCardinality> {
    match value {
        LOW => Some(TagCardinality::Low),
        ORCHESTRATOR => Some(TagCardinality::Orchestrator),
        HIGH => Some(TagCardinality::High),
        _ => None,
    }
}

/// Tells whether an entity id has the `prefix://uid` form that the tagger stores entities by,
/// with neither part empty.
fn well_formed(entity: &str) -> bool {
    entity.split_once("://").is_some_and(|(prefix, uid)| !prefix.is_empty() && !uid.is_empty())
}

/// The Python lists already made for lookups, by (entity, cardinality), all from one generation
/// of the replica.
///
/// A repeated lookup copies a cached list, whose strings already exist, instead of making a new
/// Python string for each tag. The cache is emptied when the replica's generation moves (see
/// `RemoteTagger::generation`).
#[derive(Default)]
struct AnswerCache {
    /// The replica the answers came from. `connect()` makes a new replica whose generation
    /// counts from 0 again, so the generation alone could match an old replica's answers. A
    /// `Weak` keeps the old allocation, so its address cannot be reused by the new one.
    replica: std::sync::Weak<RemoteTagger>,
    generation: u64,
    lists: HashMap<(String, TagCardinality), Py<PyList>>,
}

/// The most answers the cache holds. When it is full it is emptied, so that its memory stays
/// bounded whatever entities the checks ask about.
const MAX_CACHED: usize = 65_536;

/// The answer cache of the process; created on first use.
static CACHE: Mutex<Option<AnswerCache>> = Mutex::new(None);

/// Returns the tags of `entity` at `cardinality` as a new Python list.
///
/// The list is a copy of the cached one when the replica's generation has not moved since that
/// was made; otherwise it is made from the replica and cached.
fn answer<'py>(
    py: Python<'py>,
    replica: &Arc<RemoteTagger>,
    entity: &str,
    cardinality: TagCardinality,
) -> Bound<'py, PyList> {
    let generation = replica.generation();
    let mut guard = CACHE.locked();
    let cache = guard.get_or_insert_with(AnswerCache::default);
    let same_replica = std::ptr::eq(cache.replica.as_ptr(), Arc::as_ptr(replica));
    if !same_replica || cache.generation != generation || cache.lists.len() >= MAX_CACHED {
        cache.lists.clear();
        cache.replica = Arc::downgrade(replica);
        cache.generation = generation;
    }
    let key = (entity.to_owned(), cardinality);
    let list = match cache.lists.get(&key) {
        Some(list) => list.bind(py).clone(),
        None => {
            let made = PyList::new(py, replica.tag(entity, cardinality)).unwrap_or_else(|_| PyList::empty(py));
            cache.lists.insert(key, made.clone().unbind());
            made
        }
    };
    // Return a copy: Python lists can be changed, and a check that changes the list it got must
    // not change what the next caller gets.
    list.get_slice(0, list.len())
}

/// Asks the followed agent for the tags of `entity`, which the replica lacks, and returns them as
/// a new Python list; an empty one, logged, when the fetch fails.
///
/// The wait happens with the GIL released, so other Python threads run meanwhile. The answer is
/// not cached: the stream brings the entity into the replica soon after, and from then on
/// lookups are local.
fn fetched<'py>(py: Python<'py>, entity: &str, cardinality: TagCardinality) -> Bound<'py, PyList> {
    let Some((fetcher, runtime)) =
        with_state(|state| state.follower.as_ref().map(|f| (f.fetcher.clone(), f.runtime.clone())))
    else {
        return PyList::empty(py);
    };
    match py.detach(|| runtime.block_on(fetcher.fetch(entity, cardinality))) {
        Ok(tags) => PyList::new(py, tags).unwrap_or_else(|_| PyList::empty(py)),
        Err(error) => {
            log_once(py, "fetch", &format!("tag(): cannot fetch {entity} from the agent: {error}"));
            PyList::empty(py)
        }
    }
}

/// Returns the tags of `entity` at `cardinality_value` (`LOW`, `ORCHESTRATOR` or `HIGH`), or an
/// empty list on any failure.
///
/// Behaves as Python's `tag()` does, failures and their log lines included, but returns Rust
/// strings.
pub fn lookup(py: Python<'_>, entity: &str, cardinality_value: i64) -> Vec<String> {
    lookup_list(py, entity, cardinality_value).extract().unwrap_or_default()
}

/// Returns the tags of `entity` at `cardinality_value` as a Python list: the body of `tag()` and
/// `get_tags()`, and of [`lookup`].
///
/// Fetches from the agent an entity the replica lacks (see [`fetched`]). Returns an empty list,
/// and logs why, for an unknown cardinality, an id not of the `prefix://uid` form, an agent that
/// cannot be followed, a failed fetch, and while no stream from the agent is up.
fn lookup_list<'py>(py: Python<'py>, entity: &str, cardinality_value: i64) -> Bound<'py, PyList> {
    let empty = || PyList::empty(py);
    let Some(cardinality) = cardinality(cardinality_value) else {
        log_once(
            py,
            "cardinality",
            &format!("tag(): unknown cardinality {cardinality_value}; use LOW, ORCHESTRATOR or HIGH"),
        );
        return empty();
    };
    if !well_formed(entity) {
        log_once(py, "entity", &format!("tag(): {entity:?} is not an entity id (prefix://uid)"));
        return empty();
    }
    match replica() {
        Ok(replica) => {
            if !replica.is_connected() {
                // While no stream is up, the tags the replica still has may be stale, and an
                // empty answer is better than a wrong one.
                let why = replica.last_error().unwrap_or_else(|| "not connected yet".to_owned());
                log_once(py, "agent", &format!("tag(): no agent to ask ({why})"));
                return empty();
            }
            if !replica.contains(entity) {
                return fetched(py, entity, cardinality);
            }
            answer(py, &replica, entity, cardinality)
        }
        Err(error) => {
            log_once(py, "agent", &format!("tag(): {error}"));
            empty()
        }
    }
}

/// Returns the tags of `entity_id` at `cardinality` (`LOW`, `ORCHESTRATOR` or `HIGH`), or `[]`
/// on any failure.
///
/// Python calls it as `tag(entity_id, cardinality)`. `entity_id` is a string of the form
/// `prefix://uid`, such as `container_id://<id>`. A failure is logged on the `tagger` logger,
/// never raised; only a string that cannot be encoded as UTF-8 gives `[]` without a log line.
#[pyfunction]
#[pyo3(name = "tag")]
fn py_tag<'py>(py: Python<'py>, entity_id: &Bound<'py, PyAny>, cardinality: &Bound<'py, PyAny>) -> Bound<'py, PyList> {
    let Ok(entity) = entity_id.cast::<PyString>() else {
        log_once(py, "entity", "tag(): the entity id must be a string");
        return PyList::empty(py);
    };
    let Ok(value) = cardinality.extract::<i64>() else {
        log_once(py, "cardinality", "tag(): the cardinality must be LOW, ORCHESTRATOR or HIGH");
        return PyList::empty(py);
    };
    match entity.to_str() {
        Ok(entity) => lookup_list(py, entity, value),
        Err(_) => PyList::empty(py),
    }
}

/// Returns the tags of `entity_id`, or `[]` on any failure: Datadog's older call, kept for the
/// checks that still use it.
///
/// Python calls it as `get_tags(entity_id, high_card)`. `high_card` is a bool (`True` for
/// `HIGH`, `False` for `LOW`) or one of the cardinality constants. A failure is logged on the
/// `tagger` logger, never raised.
#[pyfunction]
#[pyo3(name = "get_tags")]
fn py_get_tags<'py>(
    py: Python<'py>,
    entity_id: &Bound<'py, PyAny>,
    high_card: &Bound<'py, PyAny>,
) -> Bound<'py, PyList> {
    let Ok(entity) = entity_id.extract::<String>() else {
        log_once(py, "entity", "get_tags(): the entity id must be a string");
        return PyList::empty(py);
    };
    let value = match high_card.extract::<bool>() {
        Ok(true) => HIGH,
        Ok(false) => LOW,
        Err(_) => match high_card.extract::<i64>() {
            Ok(value) => value,
            Err(_) => {
                log_once(py, "cardinality", "get_tags(): high_card must be a bool or a cardinality");
                return PyList::empty(py);
            }
        },
    };
    lookup_list(py, &entity, value)
}

/// Starts following the agent the arguments name, instead of the one followed so far, and
/// returns whether it could start.
///
/// Python calls it as `connect(address=None, token_file=None, cert_file=None, config=None)`.
/// An argument left as `None` takes its value from the config file (`config`, else
/// `$WM_AGENT_CONFIG`, else `/etc/wm-agent/agent.yaml`) and the `DD_*` variables, as when a
/// check calls `tag()` first. Returns `False`, and logs why, when the token or certificate file
/// cannot be read or lacks its content, or the background thread cannot start; the agent
/// followed so far is then kept. `True` does not mean that the agent answered: call
/// `wait_ready()` for that.
#[pyfunction]
#[pyo3(name = "connect", signature = (address=None, token_file=None, cert_file=None, config=None))]
fn py_connect(
    py: Python<'_>,
    address: Option<String>,
    token_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    config: Option<PathBuf>,
) -> bool {
    let env: HashMap<String, String> = std::env::vars().collect();
    let path = config
        .or_else(|| env.get("WM_AGENT_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let mut target = Target::from_config(&path, &env);
    if let Some(address) = address {
        target.address = address;
    }
    if let Some(token_file) = token_file {
        target.token_file = token_file;
    }
    if let Some(cert_file) = cert_file {
        target.cert_file = cert_file;
    }
    match follow(&target) {
        Ok(_) => true,
        Err(error) => {
            log_once(py, "agent", &format!("connect(): {error}"));
            false
        }
    }
}

/// The longest time `wait_ready()` waits, whatever timeout it is given.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Returns how long `wait_ready()` waits for a timeout in seconds: a negative timeout waits not
/// at all, and one over an hour, infinity included, waits an hour.
///
/// # Errors
///
/// Returns a `ValueError` for NaN: it is neither more nor less than any number, so clamping
/// cannot give it a meaning (and `Duration::from_secs_f64` panics on it).
fn wait_budget(timeout: f64) -> PyResult<Duration> {
    if timeout.is_nan() {
        return Err(pyo3::exceptions::PyValueError::new_err("wait_ready: timeout is NaN; give a number of seconds"));
    }
    Ok(Duration::from_secs_f64(timeout.clamp(0.0, MAX_WAIT.as_secs_f64())))
}

/// Waits up to `timeout` seconds for a stream from the agent to be up, and returns whether one
/// is.
///
/// Python calls it as `wait_ready(timeout=5.0)`. A stream is up once the agent's first response,
/// the start of its tags, is in the replica. Releases the GIL while it waits, and checks every
/// 20 ms. Starts following the agent of the config file when nothing is followed yet, and
/// returns `False` at once when that fails.
///
/// # Errors
///
/// Raises `ValueError` when `timeout` is NaN.
#[pyfunction]
#[pyo3(name = "wait_ready", signature = (timeout=5.0))]
fn py_wait_ready(py: Python<'_>, timeout: f64) -> PyResult<bool> {
    let budget = wait_budget(timeout)?;
    let Ok(replica) = replica() else { return Ok(false) };
    let until = Instant::now() + budget;
    Ok(py.detach(|| {
        while !replica.is_connected() {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }))
}

/// Fills the extension module `tagger._tagger` with the three constants and four functions; the
/// `tagger` Python package re-exports them.
#[pymodule]
#[pyo3(name = "_tagger")]
fn tagger_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("LOW", LOW)?;
    m.add("ORCHESTRATOR", ORCHESTRATOR)?;
    m.add("HIGH", HIGH)?;
    m.add_function(wrap_pyfunction!(py_tag, m)?)?;
    m.add_function(wrap_pyfunction!(py_get_tags, m)?)?;
    m.add_function(wrap_pyfunction!(py_connect, m)?)?;
    m.add_function(wrap_pyfunction!(py_wait_ready, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_comes_from_the_config_then_the_env() {
        let dir = std::env::temp_dir().join(format!("wm-pytagger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.yaml");
        std::fs::write(&path, "cmd_port: 6001\nauth_token_file_path: /run/wm/token\n").unwrap();
        let target = Target::from_config(&path, &HashMap::new());
        assert_eq!(target.address, "localhost:6001");
        assert_eq!(target.token_file, PathBuf::from("/run/wm/token"));
        assert_eq!(target.cert_file, PathBuf::from("/run/wm/ipc_cert.pem"));
        let env = HashMap::from([("DD_CMD_PORT".to_owned(), "7001".to_owned())]);
        assert_eq!(Target::from_config(&path, &env).address, "localhost:7001");
        let missing = Target::from_config(&dir.join("none.yaml"), &HashMap::new());
        assert_eq!(missing.address, "localhost:5001");
        assert_eq!(missing.token_file, dir.join("auth_token"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_nan_timeout_is_an_error_and_others_are_clamped() {
        assert!(wait_budget(f64::NAN).is_err());
        assert_eq!(wait_budget(f64::INFINITY).unwrap(), MAX_WAIT);
        assert_eq!(wait_budget(f64::NEG_INFINITY).unwrap(), Duration::ZERO);
        assert_eq!(wait_budget(-3.0).unwrap(), Duration::ZERO);
        assert_eq!(wait_budget(2.5).unwrap(), Duration::from_millis(2500));
    }

    #[test]
    fn a_new_replica_never_serves_the_answers_cached_from_the_old_one() {
        use wm_ipc::proto::model::v1 as model;
        let snapshot = |tag: &str| model::StreamTagsResponse {
            events: vec![model::StreamTagsEvent {
                r#type: model::EventType::Added as i32,
                entity: Some(model::Entity {
                    id: Some(model::EntityId { prefix: "container_id".into(), uid: "cache-test".into() }),
                    high_cardinality_tags: vec![tag.to_owned()],
                    ..model::Entity::default()
                }),
            }],
        };
        Python::initialize();
        Python::attach(|py| {
            let tags = |replica: &Arc<RemoteTagger>| -> Vec<String> {
                answer(py, replica, "container_id://cache-test", TagCardinality::High).extract().unwrap_or_default()
            };
            // Two replicas, as `connect()` makes: both at generation 1 after their snapshot.
            let old = RemoteTagger::new();
            old.apply(&snapshot("agent:old"), true);
            assert_eq!(tags(&old), ["agent:old"]);
            let new = RemoteTagger::new();
            new.apply(&snapshot("agent:new"), true);
            assert_eq!(old.generation(), new.generation());
            assert_eq!(tags(&new), ["agent:new"], "the new replica's own tags, not the cached ones");
        });
    }

    #[test]
    fn cardinalities_and_ids_are_checked() {
        assert_eq!(cardinality(HIGH), Some(TagCardinality::High));
        assert_eq!(cardinality(7), None);
        assert!(well_formed("container_id://abc"));
        assert!(!well_formed("abc") && !well_formed("container_id://") && !well_formed("://x"));
    }
}
