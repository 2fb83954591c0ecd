//! The Podman collector: polls Podman's libpod REST API on its unix socket and reports every
//! container as source `runtime`, collector `podman`.
//!
//! Podman is daemonless: its service answers requests but keeps no event stream worth
//! following across its own restarts, so this is a pull collector (every 5 s by default). Each
//! pull lists all containers and inspects, 8 at a time, only the new ones, those whose list row
//! changed since they were last inspected (state, exit, start, pid, name, pod), and running ones
//! with a health check (their verdict is only in the inspect). The collector records each
//! inspect's result as soon as it arrives, so a pull cut short by its timeout on a big node still
//! makes progress, and the next one goes on from there.
//!
//! The pull ends with a full list: a container absent from a successful list is unset. A
//! container whose inspect does not parse is stored from its list row (logged once). A container
//! whose inspect fails (logged when it starts failing, and counted) or whose list row does not
//! parse (logged once) is left as the store had it, and the next pull tries it again. A pull
//! whose list fails changes nothing. Every request has a deadline (10 s).
//!
//! Podman pods are not entities: a pod's containers carry its name as the label
//! [`wm_core::PODMAN_POD_NAME_LABEL`], which the tagger turns into `pod_name`. Infra containers
//! are skipped.

#![forbid(unsafe_code)]

mod convert;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};
use wm_core::sync::MutexExt;
use wm_core::{
    Collector, CollectorContext, CollectorError, Container, Entity, EntityId, EnvFilter, Kind, PullCollector, Source,
};

pub use convert::{Inspect, ListEntry, container_from_inspect, container_from_list};

/// Podman's default root socket.
pub const DEFAULT_SOCKET: &str = "/run/podman/podman.sock";
/// The collector's name, as it appears in health, telemetry and dumps.
pub const NAME: &str = "podman";
/// The base URL of every request: the libpod API, version 4.0.0, which Podman 4 and later
/// serve. The host name is a placeholder: requests go to the unix socket.
const API: &str = "http://podman/v4.0.0/libpod";
/// Inspects in flight at once.
const INSPECT_CONCURRENCY: usize = 8;
/// The deadline of every request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes read of one container's inspect (its config, env, labels and mounts); a
/// larger body counts as one that does not parse.
pub const MAX_INSPECT_BODY: usize = 16 << 20;
/// The most bytes read of the container list (10,000 containers at about 2 KiB each, with room
/// to spare); a larger list fails the pull.
pub const MAX_LIST_BODY: usize = 64 << 20;
/// The most container ids remembered as already logged; past it they are all forgotten, which
/// bounds the memory.
const MAX_REPORTED: usize = 10_000;

/// Where Podman's service listens: the collector's part of the agent config, by its Datadog key
/// name.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PodmanConfig {
    /// `podman_socket_path`: the path of Podman's unix socket; unset or empty:
    /// [`DEFAULT_SOCKET`].
    pub podman_socket_path: Option<PathBuf>,
}

/// What the collector learned about one container when it last inspected it.
#[derive(Debug)]
struct Known {
    /// The fingerprint of the list row the container was inspected for.
    fingerprint: String,
    /// The container as stored.
    container: Container,
    /// Whether it has a health check, whose verdict only an inspect shows.
    health_checked: bool,
}

/// Polls Podman's service and reports its containers; hand it to the store with
/// [`into_collector`](Self::into_collector).
#[derive(Debug)]
pub struct PodmanCollector {
    config: PodmanConfig,
    /// Decides which env vars of a container are stored: the store's filter, copied at each
    /// start.
    env: EnvFilter,
    /// The client `start` built; `None` before it.
    client: Option<reqwest::Client>,
    /// The containers inspected (or stored from their row) and still in the last list, by id.
    known: HashMap<String, Known>,
    /// Ids of containers whose list row or inspect did not parse and was already logged, so
    /// that each is logged once.
    reported: HashSet<String>,
    /// Ids of containers whose last inspect failed; a warning is logged only when one joins.
    failing: HashSet<String>,
}

/// Why an inspect gave no container.
#[derive(Debug)]
enum InspectError {
    /// Podman does not know the container (404): it was removed since the list.
    Gone,
    /// The body passed its cap or does not parse.
    Undecodable(String),
    /// The request failed, passed its deadline or got an error status.
    Failed(reqwest::Error),
}

impl PodmanCollector {
    /// Creates a collector for `config`.
    pub fn new(config: PodmanConfig) -> Self {
        Self {
            config,
            env: EnvFilter::default(),
            client: None,
            known: HashMap::new(),
            reported: HashSet::new(),
            failing: HashSet::new(),
        }
    }

    /// Returns the collector ready to hand to the store, pulled every 5 s (the store's default
    /// interval).
    pub fn into_collector(self) -> Collector {
        Collector::pull(NAME, Source::Runtime, self)
    }

    /// Returns the socket path: `podman_socket_path`, or [`DEFAULT_SOCKET`] when it is unset or
    /// empty.
    fn socket(&self) -> PathBuf {
        self.config
            .podman_socket_path
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
    }

    /// Returns the client `start` built; a retriable error before that.
    fn client(&self) -> Result<&reqwest::Client, CollectorError> {
        self.client.as_ref().ok_or_else(|| CollectorError::Retriable {
            context: "podman: pulled before it started".into(),
            source: None,
        })
    }

    /// Lists every container, running or not: returns the rows that parse, and the ids of
    /// those that do not (each logged once; a row without an id is dropped).
    ///
    /// # Errors
    ///
    /// Fails with a retriable error when the request fails, or the body passes
    /// [`MAX_LIST_BODY`] or does not parse.
    async fn list(&mut self) -> Result<(Vec<ListEntry>, Vec<String>), CollectorError> {
        let socket = self.socket();
        let failed = |e: reqwest::Error| {
            CollectorError::retriable(format!("podman: listing containers at {} failed", socket.display()), e)
        };
        let mut response = self
            .client()?
            .clone()
            .get(format!("{API}/containers/json?all=true"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(failed)?;
        let too_large = |e: wm_core::BodyTooLarge| CollectorError::Retriable {
            context: format!("podman: listing containers at {}: {e}", socket.display()),
            source: None,
        };
        let mut body = wm_core::CappedBody::new(MAX_LIST_BODY, response.content_length()).map_err(too_large)?;
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            body.push(&chunk).map_err(too_large)?;
        }
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&body.into_bytes()).map_err(|e| {
            CollectorError::retriable(format!("podman: the container list at {} does not parse", socket.display()), e)
        })?;
        let mut entries = Vec::with_capacity(rows.len());
        let mut odd = Vec::new();
        for row in rows {
            match serde_json::from_value::<ListEntry>(row.clone()) {
                Ok(entry) => entries.push(entry),
                Err(e) => {
                    let id = row.get("Id").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
                    if self.reported.insert(id.clone()) {
                        warn!(container_id = %id, error = %e, "podman: skipping a list row that does not parse");
                    }
                    if !id.is_empty() {
                        odd.push(id);
                    }
                }
            }
        }
        Ok((entries, odd))
    }
}

/// Fetches one container from Podman when the tagger is asked about a container no pull has
/// reported yet (the tagger's fetch-on-miss).
///
/// `fetch` returns `None` when the socket is absent, or the service does not know the container
/// or fails. The container comes without its podman pod's name, which only the list gives; the
/// next pull adds it.
///
/// Only a full id (64 lowercase hex digits) is fetched: the id goes into the request's path,
/// and URL parsing would resolve `..` in it or start a query at `?`. The client (and its
/// connection pool) is built on first use and reused.
#[derive(Debug)]
pub struct PodmanFetcher {
    socket: PathBuf,
    env: EnvFilter,
    client: std::sync::Mutex<Option<reqwest::Client>>,
}

impl PodmanFetcher {
    /// Creates a fetcher for `config`; the containers it returns hold only the env vars that
    /// `env` keeps.
    pub fn new(config: PodmanConfig, env: EnvFilter) -> Self {
        let socket = PodmanCollector::new(config).socket();
        Self { socket, env, client: std::sync::Mutex::new(None) }
    }
}

#[async_trait]
impl wm_core::ContainerFetcher for PodmanFetcher {
    fn accepts(&self, container_id: &str) -> bool {
        wm_core::is_full_hex_id(container_id)
    }

    async fn fetch(&self, container_id: &str) -> Option<Container> {
        if !self.accepts(container_id) || !self.socket.exists() {
            return None;
        }
        let client = {
            let mut kept = self.client.locked();
            if kept.is_none() {
                *kept =
                    reqwest::Client::builder().unix_socket(self.socket.as_path()).timeout(REQUEST_TIMEOUT).build().ok();
            }
            kept.clone()?
        };
        match inspect(&client, container_id).await {
            Ok(found) => {
                let entry = ListEntry { id: found.id.clone(), is_infra: found.is_infra, ..ListEntry::default() };
                container_from_inspect(&found, &entry, &self.env)
            }
            Err(error) => {
                debug!(container_id, ?error, "podman: fetch on a tag cache miss failed");
                None
            }
        }
    }
}

/// Inspects one container; `id` goes into the request's path as it is.
///
/// # Errors
///
/// [`InspectError::Gone`] on a 404; [`InspectError::Undecodable`] when the body passes
/// [`MAX_INSPECT_BODY`] or does not parse; [`InspectError::Failed`] when the request fails,
/// passes its deadline or gets another error status.
async fn inspect(client: &reqwest::Client, id: &str) -> Result<convert::Inspect, InspectError> {
    {
        let response = client.get(format!("{API}/containers/{id}/json")).send().await;
        let response = response.map_err(InspectError::Failed)?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(InspectError::Gone);
        }
        let mut response = response.error_for_status().map_err(InspectError::Failed)?;
        let too_large = |e: wm_core::BodyTooLarge| InspectError::Undecodable(e.to_string());
        let mut body = wm_core::CappedBody::new(MAX_INSPECT_BODY, response.content_length()).map_err(too_large)?;
        while let Some(chunk) = response.chunk().await.map_err(InspectError::Failed)? {
            body.push(&chunk).map_err(too_large)?;
        }
        serde_json::from_slice(&body.into_bytes()).map_err(|e| InspectError::Undecodable(e.to_string()))
    }
}

#[async_trait]
impl PullCollector for PodmanCollector {
    async fn start(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        self.env = ctx.env.clone();
        let socket = self.socket();
        if !socket.exists() {
            return Err(if self.config.podman_socket_path.as_ref().is_some_and(|p| !p.as_os_str().is_empty()) {
                CollectorError::waiting_for_file(format!("{} (podman_socket_path)", socket.display()), &socket)
            } else {
                CollectorError::absent_at(format!("no podman socket at {}", socket.display()), &socket)
            });
        }
        let client = reqwest::Client::builder()
            .unix_socket(socket.as_path())
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| CollectorError::permanent("podman: cannot build an HTTP client", e))?;
        client.get(format!("{API}/_ping")).send().await.and_then(reqwest::Response::error_for_status).map_err(|e| {
            CollectorError::retriable(format!("podman: the service at {} does not answer", socket.display()), e)
        })?;
        self.client = Some(client);
        Ok(())
    }

    async fn pull(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        let client = self.client()?.clone();
        let (entries, odd) = self.list().await?;
        // Inspect a container that is new, whose row changed since its last inspect, or whose
        // health verdict (only in the inspect) may have changed; skip the rest.
        let todo: Vec<(usize, String)> = entries
            .iter()
            .enumerate()
            .map(|(i, entry)| (i, entry.fingerprint()))
            .filter(|(i, fingerprint)| {
                self.known
                    .get(&entries[*i].id)
                    .is_none_or(|k| k.fingerprint != *fingerprint || (k.health_checked && k.container.state.running))
            })
            .collect();
        let requests: Vec<(usize, String, String)> =
            todo.into_iter().map(|(i, fingerprint)| (i, fingerprint, entries[i].id.clone())).collect();
        let mut inspections = futures::stream::iter(requests)
            .map(|(i, fingerprint, id)| {
                let client = client.clone();
                async move { (i, fingerprint, inspect(&client, &id).await) }
            })
            .buffer_unordered(INSPECT_CONCURRENCY);
        let mut unreadable = Vec::new();
        // Each result is recorded as it arrives, so a pull cut short by its timeout keeps its
        // progress.
        while let Some((i, fingerprint, result)) = inspections.next().await {
            let entry = &entries[i];
            let (container, health_checked) = match result {
                Ok(inspect) => {
                    let checked = inspect.config.healthcheck.is_some();
                    (container_from_inspect(&inspect, entry, &self.env), checked)
                }
                // Removed between the list and the inspect: not there any more.
                Err(InspectError::Gone) => (None, false),
                Err(InspectError::Undecodable(e)) => {
                    if self.reported.insert(entry.id.clone()) {
                        warn!(container_id = %entry.id, error = %e, "podman: inspect does not parse; storing what the list says");
                    }
                    (container_from_list(entry), false)
                }
                Err(InspectError::Failed(e)) => {
                    ctx.sink.entity_error();
                    if self.failing.insert(entry.id.clone()) {
                        warn!(container_id = %entry.id, error = %e, "podman: inspect failed; skipped (the rest lands), tried again next pull");
                    }
                    // What the collector knew of it stays, with its old fingerprint, so the next
                    // pull inspects it again; the full list asks the store to keep it.
                    unreadable.push(entry.id.clone());
                    continue;
                }
            };
            if self.failing.remove(&entry.id) {
                debug!(container_id = %entry.id, "podman: inspect works again");
            }
            match container {
                Some(container) => {
                    self.known.insert(entry.id.clone(), Known { fingerprint, container, health_checked });
                }
                None => {
                    self.known.remove(&entry.id);
                }
            }
        }
        drop(inspections);
        let listed: HashSet<&str> =
            entries.iter().map(|e| e.id.as_str()).chain(odd.iter().map(String::as_str)).collect();
        self.known.retain(|id, _| listed.contains(id.as_str()));
        self.failing.retain(|id| listed.contains(id.as_str()));
        // Bound the memory of what was logged: a container whose data keeps failing to parse is
        // logged again only after many others were.
        if self.reported.len() > MAX_REPORTED {
            self.reported.clear();
        }
        let unreadable_set: HashSet<&str> = unreadable.iter().map(String::as_str).collect();
        let entities: Vec<Entity> = self
            .known
            .iter()
            .filter(|(id, _)| !unreadable_set.contains(id.as_str()))
            .map(|(_, k)| Entity::from(k.container.clone()))
            .collect();
        let keep: Vec<EntityId> =
            unreadable.iter().chain(&odd).map(|id| EntityId::new(Kind::Container, id.as_str())).collect();
        debug!(listed = entries.len(), stored = entities.len(), kept = keep.len(), "podman: pulled");
        ctx.sink.full_list_keeping(entities, keep).await;
        Ok(())
    }
}
