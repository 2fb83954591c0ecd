//! The tagger for Python checks: the extension module behind `import tagger`, with Datadog's
//! calls (`tag(entity_id, cardinality)`, `get_tags(entity_id, high_card)`, `LOW`,
//! `ORCHESTRATOR`, `HIGH`).
//!
//! The module keeps a local replica of an agent's tags ([`wm_ipc::replica::RemoteTagger`], fed by
//! `TaggerStreamEntities` on a background thread), so a call is a local lookup, never an RPC.
//! It follows the agent named by `connect()`, or on the first call the one of the agent's config
//! (`/etc/wm-agent/agent.yaml` or `$WM_AGENT_CONFIG`, with `DD_CMD_HOST`, `DD_CMD_PORT`,
//! `DD_AUTH_TOKEN_FILE_PATH`, `DD_IPC_CERT_FILE_PATH` over it). Every failure — no agent, a
//! malformed id, a bad cardinality — answers `[]` with one rate-limited log line through
//! Python's `logging` (logger `tagger`), never an exception into the check; while the agent is
//! gone the answer is `[]` too (its last tags may be stale). The replica reconnects by itself:
//! an agent restarted gives tags again without re-importing.

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
use wm_ipc::replica::RemoteTagger;

/// Datadog's cardinality constants, as its Python `tagger` module has them.
pub const LOW: i64 = 0;
/// Orchestrator cardinality.
pub const ORCHESTRATOR: i64 = 1;
/// High cardinality.
pub const HIGH: i64 = 2;

/// The config file read when `connect()` names none.
const DEFAULT_CONFIG: &str = "/etc/wm-agent/agent.yaml";
/// A failure of one kind is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Where the agent is: the keys of its config the module reads (Datadog's names).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AgentKeys {
    cmd_host: Option<String>,
    cmd_port: Option<u16>,
    auth_token_file_path: Option<PathBuf>,
    ipc_cert_file_path: Option<PathBuf>,
}

/// The agent to follow: address, token file, certificate file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` of its gRPC API.
    pub address: String,
    /// Its auth token file.
    pub token_file: PathBuf,
    /// Its IPC certificate.
    pub cert_file: PathBuf,
}

impl Target {
    /// The agent a config file (if readable) and `env` (`DD_*`) describe, with the agent's own
    /// defaults (`localhost:5001`, `auth_token` beside the config, `ipc_cert.pem` beside the token).
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

/// A replica following one agent, on a runtime of its own.
struct Follower {
    replica: Arc<RemoteTagger>,
    cancel: CancellationToken,
    _runtime: tokio::runtime::Runtime,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The module's state: the follower, and when each kind of failure was last logged.
#[derive(Default)]
struct State {
    follower: Option<Follower>,
    logged: HashMap<&'static str, Instant>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn with_state<T>(f: impl FnOnce(&mut State) -> T) -> T {
    let mut guard = STATE.locked();
    f(guard.get_or_insert_with(State::default))
}

/// Starts following `target`, replacing any earlier follower.
fn follow(target: &Target) -> Result<Arc<RemoteTagger>, String> {
    let agent = RemoteAgent::from_files(target.address.clone(), &target.token_file, &target.cert_file)
        .map_err(|e| format!("cannot reach the agent at {}: {e}", target.address))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tagger-replica")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the replica's thread: {e}"))?;
    let replica = RemoteTagger::new();
    let cancel = CancellationToken::new();
    runtime.spawn(replica.clone().follow_until(agent, cancel.clone()));
    with_state(|state| state.follower = Some(Follower { replica: replica.clone(), cancel, _runtime: runtime }));
    Ok(replica)
}

/// The replica, following the configured agent when nothing was connected yet.
fn replica() -> Result<Arc<RemoteTagger>, String> {
    if let Some(replica) = with_state(|state| state.follower.as_ref().map(|f| f.replica.clone())) {
        return Ok(replica);
    }
    let env: HashMap<String, String> = std::env::vars().collect();
    let path = env.get("WM_AGENT_CONFIG").map_or_else(|| PathBuf::from(DEFAULT_CONFIG), PathBuf::from);
    follow(&Target::from_config(&path, &env))
}

/// Logs `message` through Python's `logging` (logger `tagger`), at most once a minute per kind.
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

fn cardinality(value: i64) -> Option<TagCardinality> {
    match value {
        LOW => Some(TagCardinality::Low),
        ORCHESTRATOR => Some(TagCardinality::Orchestrator),
        HIGH => Some(TagCardinality::High),
        _ => None,
    }
}

/// Whether an entity id has the `prefix://uid` form the tagger keys by.
fn well_formed(entity: &str) -> bool {
    entity.split_once("://").is_some_and(|(prefix, uid)| !prefix.is_empty() && !uid.is_empty())
}

/// Answers already made into Python lists, by (entity, cardinality), for one generation of
/// the replica: a repeated lookup copies a list of existing strings instead of making them.
#[derive(Default)]
struct AnswerCache {
    generation: u64,
    lists: HashMap<(String, TagCardinality), Py<PyList>>,
}

/// Answers cached at most (bounded memory whatever the checks ask).
const MAX_CACHED: usize = 65_536;

static CACHE: Mutex<Option<AnswerCache>> = Mutex::new(None);

/// The tags of `entity` at `cardinality` as a new Python list (from the cache when the replica
/// has not changed since).
fn answer<'py>(
    py: Python<'py>,
    replica: &RemoteTagger,
    entity: &str,
    cardinality: TagCardinality,
) -> Bound<'py, PyList> {
    let generation = replica.generation();
    let mut guard = CACHE.locked();
    let cache = guard.get_or_insert_with(AnswerCache::default);
    if cache.generation != generation || cache.lists.len() >= MAX_CACHED {
        cache.lists.clear();
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
    // A copy: the caller may change its list without changing the next caller's.
    list.get_slice(0, list.len())
}

/// The tags of `entity` at `cardinality` (`LOW`, `ORCHESTRATOR`, `HIGH`); `[]` on any failure.
pub fn lookup(py: Python<'_>, entity: &str, cardinality_value: i64) -> Vec<String> {
    lookup_list(py, entity, cardinality_value).extract().unwrap_or_default()
}

/// [`lookup`] as a Python list.
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
                // Tags from an agent that is gone may be stale: none rather than wrong ones.
                let why = replica.last_error().unwrap_or_else(|| "not connected yet".to_owned());
                log_once(py, "agent", &format!("tag(): no agent to ask ({why})"));
                return empty();
            }
            answer(py, &replica, entity, cardinality)
        }
        Err(error) => {
            log_once(py, "agent", &format!("tag(): {error}"));
            empty()
        }
    }
}

/// `tag(entity_id, cardinality)`: the entity's tags; `[]` on any failure.
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

/// `get_tags(entity_id, high_card)`: Datadog's older call; `high_card` a bool (`True`: HIGH,
/// `False`: LOW) or a cardinality constant.
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

/// `connect(address=None, token_file=None, cert_file=None, config=None)`: follow this agent
/// (defaults from its config file and `DD_*` variables). Returns whether it could start.
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

/// The longest `wait_ready` waits, whatever the timeout asked.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Turns `wait_ready`'s timeout into a wait: negative is none, past an hour (infinity too) is an
/// hour.
///
/// # Errors
///
/// NaN is a `ValueError`: it has no order, so no clamp can give it a meaning (and
/// `Duration::from_secs_f64` panics on it).
fn wait_budget(timeout: f64) -> PyResult<Duration> {
    if timeout.is_nan() {
        return Err(pyo3::exceptions::PyValueError::new_err("wait_ready: timeout is NaN; give a number of seconds"));
    }
    Ok(Duration::from_secs_f64(timeout.clamp(0.0, MAX_WAIT.as_secs_f64())))
}

/// `wait_ready(timeout=5.0)`: waits (without the GIL) until the replica holds the agent's
/// snapshot; whether it does. A NaN timeout raises `ValueError`.
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

/// The extension module (`tagger._tagger`, re-exported by the `tagger` package).
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
    fn cardinalities_and_ids_are_checked() {
        assert_eq!(cardinality(HIGH), Some(TagCardinality::High));
        assert_eq!(cardinality(7), None);
        assert!(well_formed("container_id://abc"));
        assert!(!well_formed("abc") && !well_formed("container_id://") && !well_formed("://x"));
    }
}
