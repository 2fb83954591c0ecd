//! The Podman collector: pulls Podman's libpod REST API on its unix socket and reports every
//! container as source `runtime`, collector `podman`.
//!
//! Podman is daemonless: its service answers requests but keeps no event stream worth
//! following across its own restarts, so this is a pull collector (every 5 s by default). Each
//! pull lists all containers and inspects only those whose list row changed since the last pull
//! (state, exit, start, pid, name, pod), plus running ones with a health check (their verdict
//! is only in the inspect), 8 at a time. Each inspect's result is kept as it comes, so a pull cut
//! by its timeout on a big node still makes progress, and the next one goes on from there. The
//! pull ends with a full list: what is absent from a successful list is unset; a container whose
//! inspect failed (or whose row does not parse) is skipped, logged once, counted, and kept as the
//! store had it; the next pull tries it again. A pull whose list fails changes nothing. Every
//! request has a deadline (10 s).
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
/// The libpod API version the collector speaks (Podman ≥ 4).
const API: &str = "http://podman/v4.0.0/libpod";
/// Inspects in flight at once.
const INSPECT_CONCURRENCY: usize = 8;
/// The deadline of every request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest inspect body read (one container: its config, env, labels and mounts).
pub const MAX_INSPECT_BODY: usize = 16 << 20;
/// The largest container list read (10,000 containers at about 2 KiB each, with room).
pub const MAX_LIST_BODY: usize = 64 << 20;
/// Ids remembered as logged at most (bounded memory).
const MAX_REPORTED: usize = 10_000;

/// Where Podman's service listens: the collector's part of the agent config, by its Datadog key
/// name.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PodmanConfig {
    /// `podman_socket_path`: its unix socket; unset: [`DEFAULT_SOCKET`].
    pub podman_socket_path: Option<PathBuf>,
}

/// What the last pull learned about one container.
#[derive(Debug)]
struct Known {
    fingerprint: String,
    container: Container,
    health_checked: bool,
}

/// The podman collector.
#[derive(Debug)]
pub struct PodmanCollector {
    config: PodmanConfig,
    /// The env vars containers keep: the store's filter, taken at each start.
    env: EnvFilter,
    client: Option<reqwest::Client>,
    known: HashMap<String, Known>,
    /// Containers whose odd data was already logged.
    reported: HashSet<String>,
    /// Containers whose inspect fails, logged when they start failing.
    failing: HashSet<String>,
}

#[derive(Debug)]
enum InspectError {
    Gone,
    Undecodable(String),
    Failed(reqwest::Error),
}

impl PodmanCollector {
    /// A collector for `config`.
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

    /// This collector, ready to hand to the store (pulled every 5 s).
    pub fn into_collector(self) -> Collector {
        Collector::pull(NAME, Source::Runtime, self)
    }

    fn socket(&self) -> PathBuf {
        self.config
            .podman_socket_path
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
    }

    fn client(&self) -> Result<&reqwest::Client, CollectorError> {
        self.client.as_ref().ok_or_else(|| CollectorError::Retriable {
            context: "podman: pulled before it started".into(),
            source: None,
        })
    }

    /// The list's rows, and the ids of rows that do not parse.
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

/// The podman collector's cache-miss fetch: one inspect of a container the agent was asked
/// about before a pull reported it (`tagger` fetch-on-miss); `None` when the service is absent
/// or does not know it. Its podman pod's name comes with the next pull.
///
/// Only a full id (64 lowercase hex digits) is fetched: the id goes into the request's path,
/// and URL parsing would resolve `..` in it or start a query at `?`. The client (and its
/// connection pool) is built once and kept.
#[derive(Debug)]
pub struct PodmanFetcher {
    socket: PathBuf,
    env: EnvFilter,
    client: std::sync::Mutex<Option<reqwest::Client>>,
}

impl PodmanFetcher {
    /// Creates a fetcher for `config` whose containers keep the env vars `env` keeps.
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

/// Inspects one container.
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
                CollectorError::waiting_for(format!("{} (podman_socket_path)", socket.display()))
            } else {
                CollectorError::absent(format!("no podman socket at {}", socket.display()))
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
        // Unchanged since the last pull (and no health verdict to refresh): nothing to inspect.
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
        // Each result is kept as it comes: a pull cut by its timeout keeps its progress.
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
                    // What the last pull knew stays, with its old fingerprint: inspected again.
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
        // Logged-once memory, bounded: a container that keeps sending odd data is logged again
        // only after many others did.
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
