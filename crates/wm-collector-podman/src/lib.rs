//! The Podman collector: pulls Podman's libpod REST API on its unix socket and reports every
//! container as source `runtime`, collector `podman`.
//!
//! Podman is daemonless: its service answers requests but keeps no event stream worth
//! following across its own restarts, so this is a pull collector (every 5 s by default). Each
//! pull lists all containers and inspects only those whose list row changed since the last pull
//! (state, exit, start, pid, name, pod), plus running ones with a health check (their verdict
//! is only in the inspect). The pull ends with a full list: what is absent from a successful
//! list is unset. A pull that fails (service down, bad answer) changes nothing.
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
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};
use wm_core::{Collector, CollectorContext, CollectorError, Container, Entity, EnvFilter, PullCollector, Source};

pub use convert::{Inspect, ListEntry, container_from_inspect, container_from_list};

/// Podman's default root socket.
pub const DEFAULT_SOCKET: &str = "/run/podman/podman.sock";
/// The collector's name, as it appears in health, telemetry and dumps.
pub const NAME: &str = "podman";
/// The libpod API version the collector speaks (Podman ≥ 4).
const API: &str = "http://podman/v4.0.0/libpod";

/// Where Podman's service listens: the collector's part of the agent config, by its Datadog key
/// name.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PodmanConfig {
    /// `podman_socket_path`: its unix socket; unset: [`DEFAULT_SOCKET`].
    pub podman_socket_path: Option<PathBuf>,
    /// Env vars to keep beyond those the tag rules read (the agent passes the keys of
    /// `container_env_as_tags`); not a key of its own.
    #[serde(skip)]
    pub extra_env: Vec<String>,
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
    env: EnvFilter,
    client: Option<reqwest::Client>,
    known: HashMap<String, Known>,
    /// Containers whose odd data was already logged.
    reported: HashSet<String>,
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
        let env = EnvFilter::new(config.extra_env.iter().cloned());
        Self { config, env, client: None, known: HashMap::new(), reported: HashSet::new() }
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

    async fn list(&mut self) -> Result<Vec<ListEntry>, CollectorError> {
        let socket = self.socket();
        let failed = |e: reqwest::Error| {
            CollectorError::retriable(format!("podman: listing containers at {} failed", socket.display()), e)
        };
        let response = self
            .client()?
            .clone()
            .get(format!("{API}/containers/json?all=true"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(failed)?;
        let rows: Vec<serde_json::Value> = response.json().await.map_err(failed)?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            match serde_json::from_value::<ListEntry>(row.clone()) {
                Ok(entry) => entries.push(entry),
                Err(e) => {
                    let id = row.get("Id").and_then(|v| v.as_str()).unwrap_or("?").to_owned();
                    if !self.reported.insert(id.clone()) {
                        continue;
                    }
                    warn!(container_id = %id, error = %e, "podman: skipping a list row that does not parse");
                }
            }
        }
        Ok(entries)
    }

    async fn inspect(&self, id: &str) -> Result<convert::Inspect, InspectError> {
        let response =
            self.client().map_err(|_| InspectError::Gone)?.get(format!("{API}/containers/{id}/json")).send().await;
        let response = response.map_err(InspectError::Failed)?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(InspectError::Gone);
        }
        let response = response.error_for_status().map_err(InspectError::Failed)?;
        let bytes = response.bytes().await.map_err(InspectError::Failed)?;
        serde_json::from_slice(&bytes).map_err(|e| InspectError::Undecodable(e.to_string()))
    }
}

#[async_trait]
impl PullCollector for PodmanCollector {
    async fn start(&mut self, _ctx: &CollectorContext) -> Result<(), CollectorError> {
        let socket = self.socket();
        if !socket.exists() {
            return Err(CollectorError::absent(format!("no podman socket at {}", socket.display())));
        }
        let client = reqwest::Client::builder()
            .unix_socket(socket.as_path())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| CollectorError::permanent("podman: cannot build an HTTP client", e))?;
        client.get(format!("{API}/_ping")).send().await.and_then(reqwest::Response::error_for_status).map_err(|e| {
            CollectorError::retriable(format!("podman: the service at {} does not answer", socket.display()), e)
        })?;
        self.client = Some(client);
        Ok(())
    }

    async fn pull(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        let entries = self.list().await?;
        let mut known = HashMap::with_capacity(entries.len());
        for entry in &entries {
            let fingerprint = entry.fingerprint();
            // Unchanged since the last pull (and no health verdict to refresh): reuse it. A pull
            // that fails half-way leaves `self.known` as it was.
            let fresh = self
                .known
                .get(&entry.id)
                .filter(|k| k.fingerprint == fingerprint && !(k.health_checked && k.container.state.running));
            if let Some(k) = fresh {
                let reused = Known { fingerprint, container: k.container.clone(), health_checked: k.health_checked };
                known.insert(entry.id.clone(), reused);
                continue;
            }
            let (container, health_checked) = match self.inspect(&entry.id).await {
                Ok(inspect) => {
                    let checked = inspect.config.healthcheck.is_some();
                    (container_from_inspect(&inspect, entry, &self.env), checked)
                }
                // Removed between the list and the inspect: not there any more.
                Err(InspectError::Gone) => continue,
                Err(InspectError::Undecodable(e)) => {
                    if self.reported.insert(entry.id.clone()) {
                        warn!(container_id = %entry.id, error = %e, "podman: inspect does not parse; storing what the list says");
                    }
                    (container_from_list(entry), false)
                }
                Err(InspectError::Failed(e)) => {
                    return Err(CollectorError::retriable(format!("podman: inspecting {} failed", entry.id), e));
                }
            };
            if let Some(container) = container {
                known.insert(entry.id.clone(), Known { fingerprint, container, health_checked });
            }
        }
        // Logged-once memory, bounded: a container that keeps sending odd data is logged again
        // only after many others did.
        if self.reported.len() > 10_000 {
            self.reported.clear();
        }
        self.known = known;
        let entities: Vec<Entity> = self.known.values().map(|k| Entity::from(k.container.clone())).collect();
        debug!(listed = entries.len(), stored = entities.len(), "podman: pulled");
        ctx.sink.full_list(entities).await;
        Ok(())
    }
}
