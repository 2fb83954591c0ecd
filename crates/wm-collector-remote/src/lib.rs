//! The remote-workloadmeta collector: mirrors another agent's store as source `remote`, through
//! its `WorkloadmetaStreamEntities` stream (as the Datadog agent's remote workloadmeta does for
//! the process and security agents).
//!
//! One run: connect (TLS with the agent's IPC certificate, its bearer token), buffer the initial
//! snapshot until `initial_snapshot_complete` and send it as one full list (what vanished while
//! disconnected is unset), then forward sets and unsets. A broken or silent stream fails the run
//! retriably; the store's runner reconnects with backoff. The token and certificate files are
//! read again at each run, so a rotated token is picked up.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use wm_core::{Collector, CollectorContext, CollectorError, Entity, EventType, Source, StreamCollector};
use wm_ipc::RemoteAgent;
use wm_ipc::proto::workloadmeta as wmpb;

/// The collector's name, as it appears in health, telemetry and dumps.
pub const NAME: &str = "remote-workloadmeta";

/// A stream is given up (and reconnected) after this long without a response; the server sends
/// keep-alives every 9 minutes.
const STREAM_RECV_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The collector's part of the agent config, by the Datadog key name. The upstream is the agent
/// at `cmd_host:cmd_port`, with its token and certificate files (the IPC keys the agent resolves).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteConfig {
    /// `process_config.remote_workloadmeta`: follow the agent at `cmd_host:cmd_port` instead of
    /// collecting from the node's runtimes (default false).
    #[serde(rename = "process_config.remote_workloadmeta")]
    pub remote_workloadmeta: bool,
}

/// How the collector reaches its upstream.
#[derive(Clone, Debug)]
enum Upstream {
    /// Token and certificate given.
    Loaded(RemoteAgent),
    /// Read from these files at each run.
    Files { address: String, token: PathBuf, cert: PathBuf },
}

/// Mirrors another agent's store as source `remote`.
#[derive(Debug)]
pub struct RemoteWorkloadmetaCollector {
    upstream: Upstream,
}

impl RemoteWorkloadmetaCollector {
    /// Follows every kind `agent` stores.
    pub fn new(agent: RemoteAgent) -> Self {
        Self { upstream: Upstream::Loaded(agent) }
    }

    /// Follows the agent at `address` (`host:port`), reading its token and certificate files at
    /// each connection.
    pub fn from_files(address: String, token: PathBuf, cert: PathBuf) -> Self {
        Self { upstream: Upstream::Files { address, token, cert } }
    }

    /// This collector, ready to hand to the store.
    pub fn into_collector(self) -> Collector {
        Collector::stream(NAME, Source::Remote, self)
    }

    fn agent(&self) -> Result<RemoteAgent, CollectorError> {
        match &self.upstream {
            Upstream::Loaded(agent) => Ok(agent.clone()),
            // The upstream may not have written them yet: try again later.
            Upstream::Files { address, token, cert } => RemoteAgent::from_files(address.clone(), token, cert)
                .map_err(|e| CollectorError::retriable(format!("remote workloadmeta: upstream {address}"), e)),
        }
    }
}

fn events_of(response: &wmpb::WorkloadmetaStreamResponse) -> Vec<(EventType, Entity)> {
    response
        .events
        .iter()
        .filter_map(|e| {
            let (set, entity) = wm_ipc::convert::from_event(e)?;
            Some((if set { EventType::Set } else { EventType::Unset }, entity))
        })
        .collect()
}

fn ended(context: &str) -> CollectorError {
    CollectorError::Retriable { context: format!("remote workloadmeta: {context}"), source: None }
}

#[async_trait]
impl StreamCollector for RemoteWorkloadmetaCollector {
    async fn run(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        let agent = self.agent()?;
        let unreachable = |e: Box<dyn std::error::Error + Send + Sync>| CollectorError::Retriable {
            context: format!("remote workloadmeta: {} unreachable", agent.address),
            source: Some(e),
        };
        let mut client = agent.connect().await.map_err(|e| unreachable(e.into()))?;
        // No filter: every kind, every source, sets and unsets.
        let request = wmpb::WorkloadmetaStreamRequest::default();
        let mut stream =
            client.workloadmeta_stream_entities(request).await.map_err(|e| unreachable(e.into()))?.into_inner();
        let mut snapshot: Option<Vec<Entity>> = Some(Vec::new());
        loop {
            let response = match tokio::time::timeout(STREAM_RECV_TIMEOUT, stream.message()).await {
                Ok(Ok(Some(response))) => response,
                Ok(Ok(None)) => return Err(ended("the stream ended")),
                Ok(Err(status)) => {
                    return Err(CollectorError::retriable("remote workloadmeta: the stream broke", status));
                }
                Err(_) => return Err(ended("no response for 10 minutes")),
            };
            let events = events_of(&response);
            match snapshot.as_mut() {
                Some(buffer) => {
                    buffer.extend(events.into_iter().filter(|(t, _)| *t == EventType::Set).map(|(_, e)| e));
                    if response.initial_snapshot_complete {
                        let entities = snapshot.take().unwrap_or_default();
                        tracing::info!(entities = entities.len(), address = agent.address, "snapshot");
                        ctx.sink.full_list(entities).await;
                    }
                }
                None => ctx.sink.events(events).await,
            }
        }
    }
}
