#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::{Arc, Mutex};

use futures::stream;
use tokio::sync::mpsc;
use wm_core::{CancellationToken, Container, EventSink, Kind, Origin, SinkMessage, Source, SourceSink, StoreReader};

use super::*;

/// An event of the fake daemon: (container id, action).
type FakeEvent = (String, &'static str);

/// Each refresh: the key and its events' actions.
type Refreshes = Arc<Mutex<Vec<(String, Vec<&'static str>)>>>;

/// A daemon of ours: its stream is a channel the test feeds; its containers a shared list.
struct Fake {
    events: Option<mpsc::UnboundedReceiver<Result<Watched<FakeEvent>, CollectorError>>>,
    containers: Arc<Mutex<Vec<String>>>,
    /// Probes to answer before the stream says Live (`None`: no probing).
    probes_before_live: Option<usize>,
    probe_tx: mpsc::WeakUnboundedSender<Result<Watched<FakeEvent>, CollectorError>>,
    refreshes: Refreshes,
    /// Containers whose inspect fails.
    broken: Arc<Mutex<Vec<String>>>,
    /// When set, a list takes a second (a daemon holding thousands of containers).
    slow_list: Arc<std::sync::atomic::AtomicBool>,
    /// How many items the driver has read from the stream.
    reads: Arc<std::sync::atomic::AtomicUsize>,
}

fn container(id: &str) -> Entity {
    Entity::from(Container { id: id.into(), name: id.into(), ..Container::default() })
}

#[async_trait]
impl ListWatch for Fake {
    type Event = FakeEvent;

    async fn watch(&mut self) -> Result<WatchStream<FakeEvent>, CollectorError> {
        let rx = self.events.take().expect("one run per test");
        let reads = self.reads.clone();
        Ok(stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
            .inspect(move |_| {
                reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
            .boxed())
    }

    async fn probe(&mut self) -> Result<bool, CollectorError> {
        match &mut self.probes_before_live {
            None => Ok(false),
            Some(0) => {
                self.probe_tx.upgrade().unwrap().send(Ok(Watched::Live)).unwrap();
                self.probes_before_live = Some(usize::MAX);
                Ok(true)
            }
            Some(n) => {
                *n = n.saturating_sub(1);
                Ok(true)
            }
        }
    }

    async fn list(&mut self) -> Result<Listed, CollectorError> {
        if self.slow_list.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let broken = self.broken.lock().unwrap().clone();
        let mut listed = Listed::default();
        for id in self.containers.lock().unwrap().iter() {
            if broken.contains(id) {
                listed.unreadable.push((id.clone(), EntityId::new(Kind::Container, id.as_str())));
            } else {
                listed.entities.push(container(id));
            }
        }
        Ok(listed)
    }

    fn key(&self, event: &FakeEvent) -> Option<String> {
        (event.1 != "exec").then(|| event.0.clone())
    }

    async fn refresh(&self, key: &str, events: Vec<FakeEvent>) -> Result<Refreshed, CollectorError> {
        self.refreshes.lock().unwrap().push((key.to_owned(), events.iter().map(|e| e.1).collect()));
        // The "gate" container's inspect answers only once the driver has read three items
        // from the stream: a driver that stops reading while it refreshes never gets past it.
        while key == "gate" && self.reads.load(std::sync::atomic::Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if self.broken.lock().unwrap().iter().any(|c| c == key) {
            return Err(CollectorError::retriable(format!("daemon: inspecting {key} failed"), "500"));
        }
        if self.containers.lock().unwrap().iter().any(|c| c == key) {
            return Ok(Refreshed::Present(container(key)));
        }
        let said = events.iter().any(|e| e.1 == "start").then(|| container(key));
        Ok(Refreshed::Gone { id: EntityId::new(Kind::Container, key), said })
    }
}

/// Records what the driver sends.
#[derive(Default)]
struct Recorder(Mutex<Vec<SinkMessage>>, std::sync::atomic::AtomicUsize);

#[async_trait]
impl EventSink for Recorder {
    async fn send(&self, _origin: &Origin, message: SinkMessage) {
        self.0.lock().unwrap().push(message);
    }

    fn entity_error(&self, _origin: &Origin) {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

struct NoReader;

impl StoreReader for NoReader {
    fn get(&self, _id: &EntityId) -> Option<Entity> {
        None
    }

    fn list(&self, _kind: Kind) -> Vec<Entity> {
        Vec::new()
    }

    fn list_from(&self, _kind: Kind, _source: Source) -> Vec<Entity> {
        Vec::new()
    }
}

struct Harness {
    tx: mpsc::UnboundedSender<Result<Watched<FakeEvent>, CollectorError>>,
    containers: Arc<Mutex<Vec<String>>>,
    refreshes: Refreshes,
    broken: Arc<Mutex<Vec<String>>>,
    slow_list: Arc<std::sync::atomic::AtomicBool>,
    reads: Arc<std::sync::atomic::AtomicUsize>,
    recorder: Arc<Recorder>,
    ctx: CollectorContext,
}

fn harness(probes_before_live: Option<usize>) -> (Harness, Driver<Fake>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let containers = Arc::new(Mutex::new(vec!["a".to_owned()]));
    let refreshes = Arc::new(Mutex::new(Vec::new()));
    let broken = Arc::new(Mutex::new(Vec::new()));
    let slow_list = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let fake = Fake {
        reads: reads.clone(),
        broken: broken.clone(),
        slow_list: slow_list.clone(),
        events: Some(rx),
        containers: containers.clone(),
        probes_before_live,
        probe_tx: tx.downgrade(),
        refreshes: refreshes.clone(),
    };
    let recorder = Arc::new(Recorder::default());
    let origin = Origin { source: Source::Runtime, collector: "fake".into() };
    let ctx = CollectorContext {
        sink: SourceSink::new(origin, recorder.clone()),
        reader: Arc::new(NoReader),
        cancel: CancellationToken::new(),
        env: wm_core::EnvFilter::default(),
    };
    (Harness { tx, containers, refreshes, broken, slow_list, reads, recorder, ctx }, Driver::new(fake))
}

fn ids(message: &SinkMessage) -> Vec<String> {
    match message {
        SinkMessage::FullList { entities, keep } => entities
            .iter()
            .map(|e| e.id_str().to_string())
            .chain(keep.iter().map(|id| format!("keep:{}", id.id)))
            .collect(),
        SinkMessage::Events(events) => events
            .iter()
            .map(|(t, e)| format!("{}:{}", if *t == EventType::Set { "set" } else { "unset" }, e.id_str()))
            .collect(),
    }
}

async fn wait_for_messages(recorder: &Recorder, n: usize) {
    for _ in 0..1000 {
        if recorder.0.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("fewer than {n} messages: {:?}", recorder.0.lock().unwrap().iter().map(ids).collect::<Vec<_>>());
}

#[tokio::test]
async fn lists_then_groups_a_batch_per_entity_and_reports_the_short_lived_before_unsetting_them() {
    let (h, mut driver) = harness(None);
    // Queued before the run: one batch once the list is sent.
    h.tx.send(Ok(Watched::Event(("b".into(), "create")))).unwrap();
    h.tx.send(Ok(Watched::Event(("a".into(), "exec")))).unwrap();
    h.tx.send(Ok(Watched::Event(("b".into(), "start")))).unwrap();
    h.tx.send(Ok(Watched::Event(("a".into(), "die")))).unwrap();
    h.tx.send(Ok(Watched::Event(("b".into(), "destroy")))).unwrap();
    let ctx = h.ctx.clone();
    let run = tokio::spawn(async move { driver.run(&ctx).await });
    wait_for_messages(&h.recorder, 2).await;
    {
        let messages = h.recorder.0.lock().unwrap();
        assert_eq!(ids(&messages[0]), ["a"], "the full list comes first");
        assert_eq!(ids(&messages[1]), ["set:b", "unset:b", "set:a"], "in order of first appearance");
    }
    assert_eq!(
        *h.refreshes.lock().unwrap(),
        [("b".to_owned(), vec!["create", "start", "destroy"]), ("a".to_owned(), vec!["die"])],
        "one refresh per entity, with all its events; an event without a key is dropped"
    );
    // A broken stream fails the run retriably, after the events before it are sent.
    h.containers.lock().unwrap().push("c".into());
    h.tx.send(Ok(Watched::Event(("c".into(), "create")))).unwrap();
    h.tx.send(Err(CollectorError::retriable("daemon: the event stream broke", "eof"))).unwrap();
    let error = run.await.unwrap().unwrap_err();
    assert!(error.is_retriable());
    assert_eq!(error.to_string(), "daemon: the event stream broke");
    assert_eq!(ids(&h.recorder.0.lock().unwrap()[2]), ["set:c"]);
}

#[tokio::test]
async fn an_entity_reported_gone_is_not_reported_again_by_a_later_event_until_it_exists_again() {
    let (h, mut driver) = harness(None);
    let ctx = h.ctx.clone();
    let run = tokio::spawn(async move { driver.run(&ctx).await });
    wait_for_messages(&h.recorder, 1).await;
    // `x` started and was removed before its refresh: reported from its event, then unset.
    h.tx.send(Ok(Watched::Event(("x".into(), "start")))).unwrap();
    wait_for_messages(&h.recorder, 2).await;
    // A later event about it (dockerd's `destroy` after `die`, or another event naming it) must
    // not set it again: subscribers would see it come back after its unset.
    h.tx.send(Ok(Watched::Event(("x".into(), "start")))).unwrap();
    // Then a container that exists, so that there is a message to wait for.
    h.containers.lock().unwrap().push("y".into());
    h.tx.send(Ok(Watched::Event(("y".into(), "create")))).unwrap();
    wait_for_messages(&h.recorder, 3).await;
    // `x` is made again under the same id (containerd reuses names): reported, then gone again.
    h.containers.lock().unwrap().push("x".into());
    h.tx.send(Ok(Watched::Event(("x".into(), "create")))).unwrap();
    wait_for_messages(&h.recorder, 4).await;
    h.containers.lock().unwrap().retain(|c| c != "x");
    h.tx.send(Ok(Watched::Event(("x".into(), "delete")))).unwrap();
    wait_for_messages(&h.recorder, 5).await;
    let all: Vec<Vec<String>> = h.recorder.0.lock().unwrap().iter().map(ids).collect();
    assert_eq!(
        all[1..],
        [vec!["set:x", "unset:x"], vec!["set:y"], vec!["set:x"], vec!["unset:x"]],
        "x is not set again between its unset and its re-creation"
    );
    run.abort();
}

#[tokio::test]
async fn a_probing_collector_lists_only_once_its_stream_answered_and_keeps_what_came_before() {
    let (h, mut driver) = harness(Some(3));
    h.tx.send(Ok(Watched::Event(("z".into(), "start")))).unwrap();
    let ctx = h.ctx.clone();
    let run = tokio::spawn(async move { driver.run(&ctx).await });
    wait_for_messages(&h.recorder, 2).await;
    let messages: Vec<Vec<String>> = h.recorder.0.lock().unwrap().iter().map(ids).collect();
    assert_eq!(messages[0], ["a"]);
    assert_eq!(messages[1], ["set:z", "unset:z"], "the event that came while probing is handled");
    h.ctx.cancel.cancel();
    assert!(run.await.unwrap().is_ok(), "cancellation ends the run quietly");
}

#[tokio::test(start_paused = true)]
async fn a_subscription_that_never_answers_its_probe_fails_retriably_after_the_deadline() {
    let (h, mut driver) = harness(Some(usize::MAX - 1));
    let started = tokio::time::Instant::now();
    let error = driver.run(&h.ctx).await.unwrap_err();
    assert!(error.is_retriable());
    assert!(error.to_string().contains("did not become live"), "{error}");
    assert!(started.elapsed() >= PROBE_DEADLINE && started.elapsed() < PROBE_DEADLINE + PROBE_INTERVAL * 2);
    assert!(h.recorder.0.lock().unwrap().is_empty(), "nothing is listed before the stream is live");
}

#[tokio::test]
async fn a_stream_that_ends_fails_the_run_so_the_store_runs_it_again() {
    let (h, mut driver) = harness(None);
    drop(h.tx);
    let error = driver.run(&h.ctx).await.unwrap_err();
    assert!(error.is_retriable());
    assert_eq!(error.to_string(), "the event stream ended");
}

#[tokio::test(start_paused = true)]
async fn a_run_that_falls_a_whole_queue_behind_its_stream_fails_retriably_to_list_again() {
    let (h, mut driver) = harness(None);
    // The daemon sends more events than the queue holds while the run is busy listing: the
    // reader must not stop reading (dockerd would drop what it cannot send), so the run fails
    // and the store lists again.
    h.slow_list.store(true, std::sync::atomic::Ordering::SeqCst);
    for i in 0..=PUMP_CAPACITY {
        h.tx.send(Ok(Watched::Event((format!("c{i}"), "start")))).unwrap();
    }
    let error = tokio::time::timeout(Duration::from_secs(600), driver.run(&h.ctx)).await.unwrap().unwrap_err();
    assert!(error.is_retriable());
    assert!(error.to_string().contains("events behind the event stream"), "{error}");
    let refreshed = h.refreshes.lock().unwrap().len();
    assert!(refreshed < MAX_BATCH, "it failed at once, not after refreshing the queue ({refreshed} refreshes)");
}

#[tokio::test]
async fn the_stream_is_read_while_a_refresh_is_busy_and_what_arrived_is_the_next_batch() {
    let (h, mut driver) = harness(None);
    h.containers.lock().unwrap().push("gate".into());
    let cancel = h.ctx.cancel.clone();
    let run = tokio::spawn(async move {
        let result = driver.run(&h.ctx).await;
        (result, h.recorder, h.reads)
    });
    // The gate's refresh waits for the next two events to be read.
    h.tx.send(Ok(Watched::Event(("gate".into(), "start")))).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.tx.send(Ok(Watched::Event(("b".into(), "start")))).unwrap();
    h.tx.send(Ok(Watched::Event(("c".into(), "start")))).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    cancel.cancel();
    let (result, recorder, reads) = tokio::time::timeout(Duration::from_secs(5), run).await.unwrap().unwrap();
    result.unwrap();
    assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 3);
    let sent: Vec<Vec<String>> = recorder.0.lock().unwrap().iter().map(ids).collect();
    assert_eq!(
        sent,
        vec![
            vec!["a".to_owned(), "gate".to_owned()],
            vec!["set:gate".to_owned()],
            vec!["set:b".to_owned(), "unset:b".to_owned(), "set:c".to_owned(), "unset:c".to_owned()],
        ],
        "b and c, read while the gate was refreshed, are one batch"
    );
}

#[tokio::test(start_paused = true)]
async fn an_entity_that_cannot_be_read_is_skipped_kept_and_retried_while_the_rest_lands() {
    let (h, mut driver) = harness(None);
    h.containers.lock().unwrap().push("bad".into());
    h.broken.lock().unwrap().push("bad".into());
    let ctx = h.ctx.clone();
    let run = tokio::spawn(async move { driver.run(&ctx).await });
    wait_for_messages(&h.recorder, 1).await;
    assert_eq!(ids(&h.recorder.0.lock().unwrap()[0]), ["a", "keep:bad"], "what the store had of it stays");

    // An event batch with the broken one in the middle: the others land, in order.
    h.containers.lock().unwrap().extend(["c".to_owned(), "d".to_owned()]);
    for id in ["c", "bad", "d"] {
        h.tx.send(Ok(Watched::Event((id.into(), "start")))).unwrap();
    }
    wait_for_messages(&h.recorder, 2).await;
    assert_eq!(ids(&h.recorder.0.lock().unwrap()[1]), ["set:c", "set:d"]);
    assert_eq!(h.recorder.1.load(std::sync::atomic::Ordering::SeqCst), 2, "counted at the list and at the event");

    // It recovers: the retry (no event needed) reads it.
    h.broken.lock().unwrap().clear();
    tokio::time::sleep(RETRY_FAILED_EVERY + Duration::from_secs(1)).await;
    wait_for_messages(&h.recorder, 3).await;
    assert_eq!(ids(&h.recorder.0.lock().unwrap()[2]), ["set:bad"]);
    let retried: Vec<_> = h.refreshes.lock().unwrap().iter().filter(|(k, _)| k == "bad").cloned().collect();
    assert_eq!(retried.last().unwrap().1, Vec::<&str>::new(), "a retry comes without events");
    // Recovered: no more retries.
    let before = h.refreshes.lock().unwrap().len();
    tokio::time::sleep(RETRY_FAILED_EVERY * 3).await;
    assert_eq!(h.refreshes.lock().unwrap().len(), before);
    h.ctx.cancel.cancel();
    assert!(run.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_call_past_its_deadline_is_a_retriable_error_naming_the_call() {
    let slow = with_deadline(Duration::from_secs(5), || "daemon: inspecting x".into(), async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(())
    });
    let error = slow.await.unwrap_err();
    assert!(error.is_retriable());
    assert_eq!(error.to_string(), "daemon: inspecting x timed out after 5s");
}

#[test]
fn a_gone_key_is_remembered_for_a_while_not_for_ever() {
    let mut gone = RecentlyGone::default();
    let start = tokio::time::Instant::now();
    assert!(gone.insert("ns/a", start));
    assert!(!gone.insert("ns/a", start + Duration::from_secs(10)), "still remembered");
    // Past GONE_FOR, the key is forgotten at the next insert: the set holds only recent keys.
    let later = start + GONE_FOR + Duration::from_secs(1);
    assert!(gone.insert("ns/b", later));
    assert_eq!(gone.keys.len(), 1);
    assert_eq!(gone.order.len(), 1);
    assert!(gone.insert("ns/a", later), "forgotten, so new again");
    // The cap holds whatever the ages.
    for i in 0..MAX_GONE + 10 {
        gone.insert(&format!("ns/{i}"), later);
    }
    assert_eq!((gone.keys.len(), gone.order.len()), (MAX_GONE, MAX_GONE));
}
