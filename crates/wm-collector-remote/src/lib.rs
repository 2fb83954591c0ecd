//! The remote-workloadmeta collector: copies another agent's workload store into this one, as
//! source `remote`, through that agent's `WorkloadmetaStreamEntities` stream. The Datadog agent's
//! remote workloadmeta does the same for its process and security agents.
//!
//! One run of the collector:
//!
//! 1. connects to the other agent (TLS with the agent's IPC certificate, and its auth token as a
//!    bearer token) and asks for every entity;
//! 2. buffers the first responses, the agent's snapshot, until the one marked
//!    `initial_snapshot_complete`, then sends the snapshot to the store as one full list, so that
//!    entities removed while the collector was disconnected are unset;
//! 3. then passes on each response's sets and unsets as they come.
//!
//! With an agent that never marks its snapshot complete (versions older than that field),
//! nothing reaches the store: the collector keeps buffering. A failed connection, or a stream that
//! ends, breaks or stays silent for 10 minutes, fails the run with a retriable error, and the
//! store's runner starts a new run after its backoff. A collector built with
//! [`RemoteWorkloadmetaCollector::from_files`] reads the token and certificate files again at
//! each run, so it picks up a new token; one built with [`RemoteWorkloadmetaCollector::new`]
//! keeps the ones it was given.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use wm_core::{Collector, CollectorContext, CollectorError, Entity, EventType, Source, StreamCollector};
use wm_ipc::RemoteAgent;
use wm_ipc::proto::workloadmeta as wmpb;

/// The collector's name, as health, telemetry and dumps show it.
pub const NAME: &str = "remote-workloadmeta";

/// How long a stream may stay silent before the run fails and the store starts a new one.
///
/// The server sends an empty response as a keep-alive after 9 minutes without traffic, so a
/// healthy stream is never silent this long.
const STREAM_RECV_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The collector's part of the agent config, by the Datadog key name.
///
/// The agent it follows is the one at `cmd_host:cmd_port`, with the token and certificate files
/// of the agent's IPC keys (`auth_token_file_path`, `ipc_cert_file_path`); the agent's config
/// resolves those, not this section.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteConfig {
    /// `process_config.remote_workloadmeta`: whether to follow the agent at `cmd_host:cmd_port`
    /// instead of running the node's own collectors (default `false`).
    #[serde(rename = "process_config.remote_workloadmeta")]
    pub remote_workloadmeta: bool,
}

/// The agent the collector follows, and where its token and certificate come from.
#[derive(Clone, Debug)]
enum Upstream {
    /// A token and certificate already read, used as they are at every run.
    Loaded(RemoteAgent),
    /// The agent's address and the files its token and certificate are read from at every run.
    Files { address: String, token: PathBuf, cert: PathBuf },
}

/// The collector that copies another agent's workload store into this one, as source `remote`.
///
/// It receives every kind the Datadog wire format carries: containers, Kubernetes pods and ECS
/// tasks. Build it with [`RemoteWorkloadmetaCollector::from_files`] or
/// [`RemoteWorkloadmetaCollector::new`], then hand it to the store with
/// [`RemoteWorkloadmetaCollector::into_collector`].
#[derive(Debug)]
pub struct RemoteWorkloadmetaCollector {
    upstream: Upstream,
}

impl RemoteWorkloadmetaCollector {
    /// Creates a collector that follows `agent` with the token and certificate it holds now.
    ///
    /// It never reads their files again, so a token the other agent replaces is not picked up.
    pub fn new(agent: RemoteAgent) -> Self {
        Self { upstream: Upstream::Loaded(agent) }
    }

    /// Creates a collector that follows the agent at `address` (`host:port`), reading its token
    /// and certificate files at the start of each run.
    ///
    /// The files need not exist yet: a run that cannot read them fails with a retriable error, and
    /// the store tries again later.
    pub fn from_files(address: String, token: PathBuf, cert: PathBuf) -> Self {
        Self { upstream: Upstream::Files { address, token, cert } }
    }

    /// Wraps the collector for the store: a stream collector named [`NAME`] that reports for
    /// source `remote`.
    pub fn into_collector(self) -> Collector {
        Collector::stream(NAME, Source::Remote, self)
    }

    /// Returns the agent to connect to for this run, reading its files again when it was built
    /// from them; fails with a retriable error when they cannot be read.
    fn agent(&self) -> Result<RemoteAgent, CollectorError> {
        match &self.upstream {
            Upstream::Loaded(agent) => Ok(agent.clone()),
            // The other agent may not have written its files yet, so failing to read them is a
            // retriable error: the store runs the collector again later.
            Upstream::Files { address, token, cert } => RemoteAgent::from_files(address.clone(), token, cert)
                .map_err(|e| CollectorError::retriable(format!("remote workloadmeta: upstream {address}"), e)),
        }
    }
}

/// Returns the sets and unsets of a response, skipping the events that
/// `wm_ipc::convert::from_event` cannot read (an unknown type, no entity, an entity without id).
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

/// Returns the retriable error of a stream that ended or fell silent, which has no cause to
/// attach.
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
        // The default request has no filter: every kind, from every source, sets and unsets.
        let request = wmpb::WorkloadmetaStreamRequest::default();
        let mut stream =
            client.workloadmeta_stream_entities(request).await.map_err(|e| unreachable(e.into()))?.into_inner();
        // `Some` while the snapshot is being buffered, `None` once it was sent as a full list.
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
                    // The snapshot is made of sets only (see `docs/wire/datadog-ipc.md`), so only
                    // sets are kept. A keep-alive adds nothing.
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
