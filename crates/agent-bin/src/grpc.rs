//! `datadog.api.v1.AgentSecure`: the tagger and workloadmeta rpcs, with bearer-token auth.
//!
//! Streams: the initial snapshot is split into responses of at most half the message-size
//! limit; an empty response is a keep-alive after 9 minutes without traffic. Each stream feeds a
//! bounded queue to its client; a client that does not keep up has its stream ended with
//! `RESOURCE_EXHAUSTED` (it reconnects and gets a fresh snapshot): the store and the tagger never
//! wait for it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use prost::Message;
use tagger::{TagCardinality, TagEventKind, Tagger, TaggerEntityId};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};
use wm_core::{CancellationToken, EventType, EventTypeFilter, Filter, Source, SubscriberPriority};
use wm_ipc::MAX_MESSAGE_SIZE;
use wm_ipc::convert;
use wm_ipc::proto::api::v1::agent_secure_server::AgentSecure;
use wm_ipc::proto::model::v1 as model;
use wm_ipc::proto::workloadmeta as wmpb;
use wm_store::Store;
/// Quiet time after which a stream sends an empty keep-alive response.
pub const KEEPALIVE: Duration = Duration::from_secs(9 * 60);
/// Responses queued per client before it counts as not keeping up.
const CLIENT_QUEUE: usize = 64;

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Checks `authorization: Bearer <token>` on every call.
#[derive(Clone)]
pub struct BearerAuth {
    token: Arc<str>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerAuth")
    }
}

impl BearerAuth {
    /// Accepts exactly `token`.
    pub fn new(token: &str) -> Self {
        Self { token: Arc::from(token) }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(value) = request.metadata().get("authorization").and_then(|v| v.to_str().ok()) else {
            return Err(Status::unauthenticated("Request unauthenticated with Bearer"));
        };
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Status::unauthenticated("Request unauthenticated with Bearer"));
        }
        if !constant_time_eq(token.trim().as_bytes(), self.token.as_bytes()) {
            return Err(Status::unauthenticated("invalid auth token: invalid session token"));
        }
        Ok(request)
    }
}

/// The service.
#[derive(Clone, Debug)]
pub struct AgentApi {
    store: Store,
    tagger: Arc<Tagger>,
    keepalive: Duration,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl AgentApi {
    /// Serves `store` and `tagger`. Each stream is fed by a task in `tasks`; every stream ends
    /// (`UNAVAILABLE`) once `cancel` is cancelled, so a shutdown never leaves a client on a
    /// stream that no longer changes, and the agent can await them all.
    pub fn new(store: Store, tagger: Arc<Tagger>, cancel: CancellationToken, tasks: TaskTracker) -> Self {
        Self { store, tagger, keepalive: KEEPALIVE, cancel, tasks }
    }

    /// Sets the keep-alive period (tests).
    pub fn with_keepalive(mut self, every: Duration) -> Self {
        self.keepalive = every;
        self
    }
}

fn cardinality(value: i32) -> TagCardinality {
    match model::TagCardinality::try_from(value).unwrap_or(model::TagCardinality::High) {
        model::TagCardinality::Low => TagCardinality::Low,
        model::TagCardinality::Orchestrator => TagCardinality::Orchestrator,
        model::TagCardinality::High => TagCardinality::High,
    }
}

/// The wire id of a tag store key (`prefix://uid`).
fn wire_id(entity: &str) -> model::EntityId {
    let id = TaggerEntityId::parse(entity);
    model::EntityId { prefix: id.prefix().to_owned(), uid: id.uid().to_owned() }
}

/// The wire entity: its tags split by cardinality, up to `cardinality`.
fn wire_entity(tagger: &Tagger, entity: &str, cardinality: TagCardinality, deleted: bool) -> model::Entity {
    let mut out = model::Entity { id: Some(wire_id(entity)), is_complete: true, ..model::Entity::default() };
    if deleted {
        return out;
    }
    if let Some(info) = tagger.store().tag_info(entity) {
        out.low_cardinality_tags = info.low;
        out.standard_tags = info.standard;
        if cardinality >= TagCardinality::Orchestrator {
            out.orchestrator_cardinality_tags = info.orchestrator;
        }
        if cardinality >= TagCardinality::High {
            out.high_cardinality_tags = info.high;
        }
    }
    out
}

/// Packs items into responses of at most `limit` encoded bytes each (one item per response at
/// least, whatever its size).
fn chunk<T: Message>(items: Vec<T>, limit: usize) -> Vec<Vec<T>> {
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for item in items {
        let len = item.encoded_len() + 4;
        if !current.is_empty() && size + len > limit {
            chunks.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(item);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

fn matches_prefix(entity: &str, prefixes: &[String]) -> bool {
    TaggerEntityId::parse(entity).has_prefix_in(prefixes)
}

/// The sending side of one client's stream: a bounded queue, and the reason the stream ended
/// early, delivered after what was queued.
struct Outbox<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    ended: Option<tokio::sync::oneshot::Sender<Status>>,
}

impl<T: Send + 'static> Outbox<T> {
    fn new() -> (Self, ResponseStream<T>) {
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let (ended, reason) = tokio::sync::oneshot::channel::<Status>();
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
            .chain(futures::stream::once(reason).filter_map(|r| futures::future::ready(r.ok().map(Err))));
        (Self { tx, ended: Some(ended) }, Box::pin(stream))
    }

    /// Queues a response; `false` when the client is gone or does not keep up (its stream then
    /// ends with `RESOURCE_EXHAUSTED` after what was queued).
    fn offer(&mut self, item: T) -> bool {
        match self.tx.try_send(Ok(item)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("a stream client did not keep up; its stream is ended");
                self.end(Status::resource_exhausted("the client does not keep up; reconnect"));
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Ends the stream with `status`, after what was queued.
    fn end(&mut self, status: Status) {
        if let Some(ended) = self.ended.take() {
            let _ = ended.send(status);
        }
    }

    async fn closed(&self) {
        self.tx.closed().await;
    }
}

#[tonic::async_trait]
impl AgentSecure for AgentApi {
    type TaggerStreamEntitiesStream = ResponseStream<model::StreamTagsResponse>;
    type WorkloadmetaStreamEntitiesStream = ResponseStream<wmpb::WorkloadmetaStreamResponse>;

    async fn tagger_stream_entities(
        &self,
        request: Request<model::StreamTagsRequest>,
    ) -> Result<Response<Self::TaggerStreamEntitiesStream>, Status> {
        let request = request.into_inner();
        let cardinality = cardinality(request.cardinality);
        let prefixes = request.prefixes;
        let tagger = self.tagger.clone();
        let changes = tagger.store().subscribe("", cardinality, 4096);
        // The tag store drops a subscription that falls behind: the stream says so and ends.
        let source = futures::stream::unfold(Some(changes), |changes| async move {
            let mut changes = changes?;
            match changes.recv().await {
                Some(batch) => Some((Ok(batch), Some(changes))),
                None => Some((Err(Status::resource_exhausted("the stream fell behind; reconnect")), None)),
            }
        });
        let mut first = true;
        let respond = move |batch: Vec<tagger::TagEvent>| {
            let events: Vec<model::StreamTagsEvent> = batch
                .into_iter()
                .filter(|e| matches_prefix(&e.entity, &prefixes))
                .map(|e| {
                    let kind = match e.kind {
                        TagEventKind::Added => model::EventType::Added,
                        TagEventKind::Modified => model::EventType::Modified,
                        TagEventKind::Deleted => model::EventType::Deleted,
                    };
                    let deleted = e.kind == TagEventKind::Deleted;
                    model::StreamTagsEvent {
                        r#type: kind as i32,
                        entity: Some(wire_entity(&tagger, &e.entity, cardinality, deleted)),
                    }
                })
                .collect();
            // The first response is the snapshot, sent even when empty.
            if events.is_empty() && !std::mem::take(&mut first) {
                return Vec::new();
            }
            first = false;
            chunk(events, MAX_MESSAGE_SIZE / 2).into_iter().map(|events| model::StreamTagsResponse { events }).collect()
        };
        Ok(Response::new(self.stream(source, respond)))
    }

    async fn tagger_generate_container_id_from_origin_info(
        &self,
        request: Request<model::GenerateContainerIdFromOriginInfoRequest>,
    ) -> Result<Response<model::GenerateContainerIdFromOriginInfoResponse>, Status> {
        let request = request.into_inner();
        let local = request.local_data.unwrap_or_default();
        let external = request.external_data.unwrap_or_default();
        let mut id = local.container_id.clone().filter(|id| !id.is_empty());
        if id.is_none()
            && let (Some(pod_uid), Some(name)) =
                (external.pod_uid.clone().or(local.pod_uid.clone()), external.container_name.clone())
        {
            let data = tagger::origin::ExternalData {
                init: external.init.unwrap_or(false),
                container_name: Some(name),
                pod_uid: Some(pod_uid),
            };
            id = tagger::origin::container_id_from_external_data(&self.store, &data);
        }
        if id.is_none()
            && let Some(pid) = local.process_id.filter(|p| *p > 0)
            && let Ok(cgroup) = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        {
            id = tagger::origin::container_id_from_proc_cgroup(&cgroup, &[]).map(str::to_owned);
        }
        Ok(Response::new(model::GenerateContainerIdFromOriginInfoResponse { container_id: id.unwrap_or_default() }))
    }

    async fn tagger_fetch_entity(
        &self,
        request: Request<model::FetchEntityRequest>,
    ) -> Result<Response<model::FetchEntityResponse>, Status> {
        let request = request.into_inner();
        let Some(id) = request.id.filter(|id| !id.uid.is_empty()) else {
            return Err(Status::invalid_argument("missing entity id"));
        };
        let entity = TaggerEntityId::new(id.prefix.clone(), id.uid.clone()).to_string();
        let tags = self.tagger.tag_or_fetch(&entity, cardinality(request.cardinality)).await.to_vec();
        Ok(Response::new(model::FetchEntityResponse { id: Some(id), cardinality: request.cardinality, tags }))
    }

    async fn workloadmeta_stream_entities(
        &self,
        request: Request<wmpb::WorkloadmetaStreamRequest>,
    ) -> Result<Response<Self::WorkloadmetaStreamEntitiesStream>, Status> {
        let filter = workloadmeta_filter(request.into_inner().filter.unwrap_or_default())?;
        let subscription = self.store.subscribe("remote-workloadmeta", SubscriberPriority::Normal, filter);
        // A subscriber cut off for lagging gets the reason; the store's end is the agent's.
        let source = futures::stream::unfold(Some(subscription), |subscription| async move {
            let mut subscription = subscription?;
            match subscription.recv().await? {
                Ok(bundle) => Some((Ok(bundle), Some(subscription))),
                Err(e) => Some((Err(Status::resource_exhausted(format!("{e}; reconnect"))), None)),
            }
        });
        let mut first = true;
        let respond = move |bundle: wm_store::EventBundle| {
            let events: Vec<wmpb::WorkloadmetaEvent> = bundle
                .events
                .iter()
                .filter_map(|e| convert::event(e.event_type == EventType::Set, &e.entity))
                .collect();
            // Acknowledged once converted: a slow client never holds the store's loop.
            drop(bundle);
            let mut chunks = chunk(events, MAX_MESSAGE_SIZE / 2);
            // The snapshot is marked complete on its last response, sent even when empty.
            let snapshot = std::mem::take(&mut first);
            if snapshot && chunks.is_empty() {
                chunks.push(Vec::new());
            }
            let last = chunks.len().saturating_sub(1);
            chunks
                .into_iter()
                .enumerate()
                .map(|(i, events)| wmpb::WorkloadmetaStreamResponse {
                    events,
                    initial_snapshot_complete: snapshot && i == last,
                })
                .collect()
        };
        Ok(Response::new(self.stream(source, respond)))
    }
}

impl AgentApi {
    /// One client's stream: a task of the agent's feeds it the responses `respond` makes of each
    /// item of `source` (an `Err` item ends the stream with that status, after what was queued),
    /// an empty keep-alive response when quiet, and `UNAVAILABLE` when the source ends or the
    /// agent shuts down. The task ends when the client goes or does not keep up.
    fn stream<I, T>(
        &self,
        source: impl Stream<Item = Result<I, Status>> + Send + 'static,
        mut respond: impl FnMut(I) -> Vec<T> + Send + 'static,
    ) -> ResponseStream<T>
    where
        I: Send + 'static,
        T: Default + Send + 'static,
    {
        let (mut out, stream) = Outbox::new();
        let (keepalive, cancel) = (self.keepalive, self.cancel.clone());
        self.tasks.spawn(async move {
            let mut source = std::pin::pin!(source);
            loop {
                let item = tokio::select! {
                    item = source.next() => item,
                    () = out.closed() => return,
                    () = cancel.cancelled() => None,
                    () = tokio::time::sleep(keepalive) => {
                        if out.offer(T::default()) { continue } else { return }
                    }
                };
                match item {
                    Some(Ok(item)) => {
                        for response in respond(item) {
                            if !out.offer(response) {
                                return;
                            }
                        }
                    }
                    Some(Err(status)) => return out.end(status),
                    None => return out.end(Status::unavailable("the agent is shutting down")),
                }
            }
        });
        stream
    }
}

/// The store filter a wire filter asks for.
fn workloadmeta_filter(wire: wmpb::WorkloadmetaFilter) -> Result<Filter, Status> {
    // No kind asked: every kind the wire carries. Kinds this agent does not store (processes,
    // image metadata, CRDs) match nothing: asking only for them gets nothing, not everything.
    let mut kinds = Vec::new();
    for kind in &wire.kinds {
        match wmpb::WorkloadmetaKind::try_from(*kind) {
            Ok(kind) => kinds.extend(convert::from_kind(kind)),
            Err(_) => return Err(Status::invalid_argument(format!("unknown workloadmeta kind {kind}"))),
        }
    }
    if wire.kinds.is_empty() {
        kinds.extend(convert::WIRE_KINDS);
    }
    let mut filter = Filter::only_kinds(kinds);
    match wmpb::WorkloadmetaSource::try_from(wire.source) {
        Ok(wmpb::WorkloadmetaSource::All) => {}
        Ok(wmpb::WorkloadmetaSource::Runtime) => filter = filter.with_source(Source::Runtime),
        Ok(wmpb::WorkloadmetaSource::NodeOrchestrator) => filter = filter.with_source(Source::NodeOrchestrator),
        Ok(wmpb::WorkloadmetaSource::ClusterOrchestrator) => filter = filter.with_source(Source::ClusterOrchestrator),
        Err(_) => return Err(Status::invalid_argument(format!("unknown workloadmeta source {}", wire.source))),
    }
    match wmpb::WorkloadmetaEventType::try_from(wire.event_type) {
        Ok(wmpb::WorkloadmetaEventType::EventTypeAll) => {}
        Ok(wmpb::WorkloadmetaEventType::EventTypeSet) => filter = filter.with_event_type(EventTypeFilter::Set),
        Ok(wmpb::WorkloadmetaEventType::EventTypeUnset) => filter = filter.with_event_type(EventTypeFilter::Unset),
        Err(_) => return Err(Status::invalid_argument(format!("unknown workloadmeta event type {}", wire.event_type))),
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor;
    use wm_core::Kind;

    use super::*;

    fn with_auth(value: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(v) = value {
            request.metadata_mut().insert("authorization", v.parse().unwrap());
        }
        request
    }

    #[tokio::test]
    async fn quiet_streams_get_empty_keepalives_and_end_on_shutdown() {
        let store = Store::new();
        let tagger = Arc::new(Tagger::new(tagger::TaggerConfig::default()));
        let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
        let api = AgentApi::new(store.clone(), tagger, cancel.clone(), tasks.clone())
            .with_keepalive(Duration::from_millis(50));
        let mut tags =
            api.tagger_stream_entities(Request::new(model::StreamTagsRequest::default())).await.unwrap().into_inner();
        let request = Request::new(wmpb::WorkloadmetaStreamRequest::default());
        let mut wm = api.workloadmeta_stream_entities(request).await.unwrap().into_inner();
        // The (empty) snapshots first; the workloadmeta one says it is complete.
        assert_eq!(tags.next().await.unwrap().unwrap().events.len(), 0);
        let snapshot = wm.next().await.unwrap().unwrap();
        assert!(snapshot.events.is_empty() && snapshot.initial_snapshot_complete);
        // Then nothing happens: keep-alives, empty and not marked.
        for _ in 0..2 {
            assert_eq!(tags.next().await.unwrap().unwrap(), model::StreamTagsResponse::default());
            assert_eq!(wm.next().await.unwrap().unwrap(), wmpb::WorkloadmetaStreamResponse::default());
        }
        assert_eq!(tasks.len(), 2, "one task per stream");
        cancel.cancel();
        let ended = loop {
            match tags.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => break status,
                None => panic!("the stream ended without a reason"),
            }
        };
        assert_eq!(ended.code(), tonic::Code::Unavailable);
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await.expect("every stream task ended");
        store.shutdown().await;
    }

    #[test]
    fn bearer_auth_accepts_only_the_token() {
        let mut auth = BearerAuth::new("s3cret");
        assert!(auth.call(with_auth(Some("Bearer s3cret"))).is_ok());
        assert!(auth.call(with_auth(Some("bearer s3cret"))).is_ok(), "the scheme is case-insensitive");
        let missing = auth.call(with_auth(None)).unwrap_err();
        assert_eq!(
            (missing.code(), missing.message()),
            (tonic::Code::Unauthenticated, "Request unauthenticated with Bearer")
        );
        let wrong = auth.call(with_auth(Some("Bearer nope"))).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert_eq!(wrong.message(), "invalid auth token: invalid session token");
        assert!(auth.call(with_auth(Some("Basic s3cret"))).is_err());
    }

    #[test]
    fn snapshots_are_chunked_under_the_limit() {
        let events: Vec<model::StreamTagsEvent> = (0..1000)
            .map(|i| model::StreamTagsEvent {
                r#type: 0,
                entity: Some(model::Entity {
                    id: Some(wire_id(&format!("container_id://{i:064}"))),
                    low_cardinality_tags: vec!["x".repeat(100)],
                    ..model::Entity::default()
                }),
            })
            .collect();
        let chunks = chunk(events, 20_000);
        assert!(chunks.len() > 5);
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 1000);
        for c in &chunks {
            assert!(model::StreamTagsResponse { events: c.clone() }.encoded_len() <= 20_000);
        }
    }

    #[test]
    fn prefixes_match_whole_entity_kinds() {
        let p = vec!["container_id".to_owned()];
        assert!(matches_prefix("container_id://abc", &p));
        assert!(!matches_prefix("container_idx://abc", &p));
        assert!(!matches_prefix("kubernetes_pod_uid://u", &p));
        assert!(matches_prefix("kubernetes_pod_uid://u", &[]));
    }

    #[test]
    fn wire_filters_become_store_filters_and_bad_ones_are_refused() {
        let f = workloadmeta_filter(wmpb::WorkloadmetaFilter { kinds: vec![0], source: 1, event_type: 0 }).unwrap();
        assert!(f.passes_kind(Kind::Container) && !f.passes_kind(Kind::KubernetesPod));
        assert_eq!(f.source(), Some(Source::Runtime));
        assert!(workloadmeta_filter(wmpb::WorkloadmetaFilter { kinds: vec![42], ..Default::default() }).is_err());
        let process_only = workloadmeta_filter(wmpb::WorkloadmetaFilter { kinds: vec![3], ..Default::default() });
        assert!(Kind::ALL.iter().all(|k| !process_only.as_ref().unwrap().passes_kind(*k)));
        let everything = workloadmeta_filter(wmpb::WorkloadmetaFilter::default()).unwrap();
        assert!(everything.passes_kind(Kind::EcsTask) && !everything.passes_kind(Kind::KubernetesMetadata));
        assert!(workloadmeta_filter(wmpb::WorkloadmetaFilter { source: 9, ..Default::default() }).is_err());
    }
}
