//! Clients of another agent's `AgentSecure` API:
//!
//! - [`RemoteTagger`]: a local replica of the tags, fed by `TaggerStreamEntities`. It
//!   reconnects with backoff (1 s doubling to 30 s, reset by a stream that delivered), replaces
//!   its replica with each new stream's first response (so what vanished while it was away is
//!   gone), applies the changes that follow, and answers [`RemoteTagger::tag`] locally.
//! - [`RemoteWorkloadmetaCollector`]: a stream collector (source `remote`) mirroring another
//!   agent's store through `WorkloadmetaStreamEntities`: it buffers the initial snapshot until
//!   `initial_snapshot_complete` and sends it as one full list (unsetting what vanished while
//!   it was disconnected), then forwards sets and unsets; a broken stream fails the run
//!   retriably and the store's runner reconnects.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tagger::TagCardinality;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};
use wm_core::{Collector, CollectorContext, CollectorError, Entity, EventType, Source, StreamCollector};

use crate::convert;
use crate::grpc::MAX_MESSAGE_SIZE;
use crate::proto::api::v1::agent_secure_client::AgentSecureClient;
use crate::proto::model::v1 as model;
use crate::proto::workloadmeta as wmpb;
use crate::security::IpcCert;

/// A stream is given up (and reconnected) after this long without a response; the server sends
/// keep-alives every 9 minutes.
const STREAM_RECV_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Where another agent's API is and how to prove who we are.
#[derive(Clone)]
pub struct RemoteAgent {
    /// `host:port` of its gRPC API (`localhost:5001`).
    pub address: String,
    /// Its auth token.
    pub token: String,
    /// Its IPC certificate (trusted as the server's, and presented as ours).
    pub cert: IpcCert,
}

impl std::fmt::Debug for RemoteAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteAgent").field("address", &self.address).finish_non_exhaustive()
    }
}

impl RemoteAgent {
    /// A connected client whose every call carries the bearer token.
    pub async fn connect(
        &self,
    ) -> Result<
        AgentSecureClient<tonic::service::interceptor::InterceptedService<Channel, AddToken>>,
        tonic::transport::Error,
    > {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.cert.cert_pem))
            .identity(Identity::from_pem(&self.cert.cert_pem, &self.cert.key_pem))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(format!("https://{}", self.address))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok(AgentSecureClient::with_interceptor(channel, AddToken(format!("Bearer {}", self.token)))
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE))
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct AddToken(String);

impl std::fmt::Debug for AddToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AddToken")
    }
}

impl tonic::service::Interceptor for AddToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let value = self.0.parse().map_err(|_| Status::invalid_argument("the auth token is not a valid header"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// One entity's tags in the replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ReplicaTags {
    low: Vec<String>,
    orchestrator: Vec<String>,
    high: Vec<String>,
}

fn replica_entry(entity: &model::Entity) -> Option<(String, ReplicaTags)> {
    let id = entity.id.as_ref()?;
    let key = if id.prefix.is_empty() { id.uid.clone() } else { format!("{}://{}", id.prefix, id.uid) };
    let tags = ReplicaTags {
        low: entity.low_cardinality_tags.clone(),
        orchestrator: entity.orchestrator_cardinality_tags.clone(),
        high: entity.high_cardinality_tags.clone(),
    };
    Some((key, tags))
}

/// A replica of another agent's tags.
#[derive(Debug, Default)]
pub struct RemoteTagger {
    replica: RwLock<HashMap<String, Arc<ReplicaTags>>>,
    /// Streams opened so far (each one replaced the replica).
    streams: std::sync::atomic::AtomicU64,
}

impl RemoteTagger {
    /// An empty replica; [`RemoteTagger::spawn`] fills it.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The entity's tags at `cardinality` and below (empty when unknown).
    pub fn tag(&self, entity: &str, cardinality: TagCardinality) -> Vec<String> {
        let replica = self.replica.read().unwrap_or_else(PoisonError::into_inner);
        let Some(tags) = replica.get(entity) else { return Vec::new() };
        let mut out = tags.low.clone();
        if cardinality >= TagCardinality::Orchestrator {
            out.extend(tags.orchestrator.iter().cloned());
        }
        if cardinality >= TagCardinality::High {
            out.extend(tags.high.iter().cloned());
        }
        out
    }

    /// The entities it holds, sorted.
    pub fn entities(&self) -> Vec<String> {
        let mut ids: Vec<String> =
            self.replica.read().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect();
        ids.sort();
        ids
    }

    /// `tagger-list`'s data: every entity's tags, under source `remote`.
    pub fn list(&self) -> crate::http::TaggerList {
        let replica = self.replica.read().unwrap_or_else(PoisonError::into_inner);
        let entities = replica
            .iter()
            .map(|(entity, tags)| {
                let mut all: Vec<String> =
                    tags.low.iter().chain(&tags.orchestrator).chain(&tags.high).cloned().collect();
                all.sort();
                all.dedup();
                (entity.clone(), [("remote".to_owned(), all)].into_iter().collect())
            })
            .collect();
        crate::http::TaggerList { entities }
    }

    /// How many streams it opened (a reconnect opens one more).
    pub fn streams(&self) -> u64 {
        self.streams.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn apply(&self, response: model::StreamTagsResponse, replace: bool) {
        let mut replica = self.replica.write().unwrap_or_else(PoisonError::into_inner);
        if replace {
            replica.clear();
        }
        for event in response.events {
            let Some((key, tags)) = event.entity.as_ref().and_then(replica_entry) else { continue };
            match model::EventType::try_from(event.r#type) {
                Ok(model::EventType::Deleted) => {
                    replica.remove(&key);
                }
                Ok(_) => {
                    replica.insert(key, Arc::new(tags));
                }
                Err(_) => tracing::debug!(entity = key, "remote tagger: skipping an event of unknown type"),
            }
        }
    }

    /// Follows `agent`'s tags at high cardinality until the task is aborted.
    pub fn spawn(self: &Arc<Self>, agent: RemoteAgent) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_secs(1);
            loop {
                match me.follow(&agent).await {
                    Ok(()) => delay = Duration::from_secs(1),
                    Err(e) => {
                        tracing::warn!(address = agent.address, error = %e, retry_in = ?delay, "remote tagger: stream failed")
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        })
    }

    /// One stream: `Ok` once it delivered something and then ended.
    async fn follow(&self, agent: &RemoteAgent) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut client = agent.connect().await?;
        let request = model::StreamTagsRequest {
            cardinality: model::TagCardinality::High as i32,
            streaming_id: format!("wm-{}-{}", std::process::id(), self.streams()),
            ..model::StreamTagsRequest::default()
        };
        let mut stream = client.tagger_stream_entities(request).await?.into_inner();
        self.streams.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut first = true;
        loop {
            let next = tokio::time::timeout(STREAM_RECV_TIMEOUT, stream.message()).await;
            match next {
                Ok(Ok(Some(response))) => {
                    // Keep-alives carry no events (and the snapshot of an empty agent is one
                    // empty response, which must still clear the replica).
                    if response.events.is_empty() && !first {
                        continue;
                    }
                    self.apply(response, first);
                    first = false;
                }
                Ok(Ok(None)) => return if first { Err("the stream ended before its snapshot".into()) } else { Ok(()) },
                Ok(Err(status)) => return if first { Err(status.into()) } else { Ok(()) },
                Err(_) => return Err("no response for 10 minutes".into()),
            }
        }
    }
}

/// The collector name of [`RemoteWorkloadmetaCollector`].
pub const REMOTE_WORKLOADMETA: &str = "remote-workloadmeta";

/// Mirrors another agent's store as source `remote`.
#[derive(Debug)]
pub struct RemoteWorkloadmetaCollector {
    agent: RemoteAgent,
}

impl RemoteWorkloadmetaCollector {
    /// Follows every kind `agent` stores.
    pub fn new(agent: RemoteAgent) -> Self {
        Self { agent }
    }

    /// This collector, ready to hand to the store.
    pub fn into_collector(self) -> Collector {
        Collector::stream(REMOTE_WORKLOADMETA, Source::Remote, self)
    }
}

fn entities_of(response: &wmpb::WorkloadmetaStreamResponse) -> Vec<(EventType, Entity)> {
    response
        .events
        .iter()
        .filter_map(|e| {
            let (set, entity) = convert::from_event(e)?;
            Some((if set { EventType::Set } else { EventType::Unset }, entity))
        })
        .collect()
}

#[async_trait]
impl StreamCollector for RemoteWorkloadmetaCollector {
    async fn run(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        let address = self.agent.address.clone();
        let unreachable = |e: Box<dyn std::error::Error + Send + Sync>| CollectorError::Retriable {
            context: format!("remote workloadmeta: {address} unreachable"),
            source: Some(e),
        };
        let mut client = self.agent.connect().await.map_err(|e| unreachable(e.into()))?;
        // No filter: every kind, every source, sets and unsets.
        let request = wmpb::WorkloadmetaStreamRequest::default();
        let mut stream =
            client.workloadmeta_stream_entities(request).await.map_err(|e| unreachable(e.into()))?.into_inner();
        let mut snapshot: Option<Vec<Entity>> = Some(Vec::new());
        loop {
            let response = match tokio::time::timeout(STREAM_RECV_TIMEOUT, stream.message()).await {
                Ok(Ok(Some(response))) => response,
                Ok(Ok(None)) => {
                    return Err(CollectorError::Retriable {
                        context: "remote workloadmeta: the stream ended".into(),
                        source: None,
                    });
                }
                Ok(Err(status)) => {
                    return Err(CollectorError::retriable("remote workloadmeta: the stream broke", status));
                }
                Err(_) => {
                    return Err(CollectorError::Retriable {
                        context: "remote workloadmeta: no response for 10 minutes".into(),
                        source: None,
                    });
                }
            };
            let events = entities_of(&response);
            match snapshot.as_mut() {
                Some(buffer) => {
                    buffer.extend(events.into_iter().filter(|(t, _)| *t == EventType::Set).map(|(_, e)| e));
                    if response.initial_snapshot_complete {
                        let entities = snapshot.take().unwrap_or_default();
                        tracing::info!(
                            entities = entities.len(),
                            address = self.agent.address,
                            "remote workloadmeta: snapshot"
                        );
                        ctx.sink.full_list(entities).await;
                    }
                }
                None => ctx.sink.events(events).await,
            }
        }
    }
}
