//! The collector runner on paused tokio time: detection, backoff, pull timing and timeouts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use wm_core::{Collector, CollectorContext, CollectorError, Container, Entity, PullCollector, Source, StreamCollector};
use wm_store::{CollectorState, MetricValue, Store};

fn container(id: &str) -> Entity {
    Entity::from(Container { id: id.into(), ..Container::default() })
}

/// Seconds since `t0` at which something happened.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u64>>>);

impl Log {
    fn record(&self, t0: Instant) {
        self.0.lock().unwrap().push(t0.elapsed().as_secs());
    }
    fn times(&self) -> Vec<u64> {
        self.0.lock().unwrap().clone()
    }
}

/// Fails retriably `failures` times, then lists and follows a stream that never ends.
struct Flaky {
    t0: Instant,
    runs: Log,
    failures: usize,
}

#[async_trait]
impl StreamCollector for Flaky {
    async fn run(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        self.runs.record(self.t0);
        if self.failures > 0 {
            self.failures -= 1;
            return Err(CollectorError::retriable("daemon not answering", "connection refused"));
        }
        ctx.sink.full_list(vec![container("c1")]).await;
        std::future::pending::<()>().await;
        Ok(())
    }
}

async fn settle(d: Duration) {
    tokio::time::sleep(d).await;
}

#[tokio::test(start_paused = true)]
async fn a_retriable_collector_is_retried_with_exponential_backoff_capped_at_30s() {
    let runs = Log::default();
    let t0 = Instant::now();
    let store = Store::builder()
        .collector(Collector::stream("flaky", Source::Runtime, Flaky { t0, runs: runs.clone(), failures: 8 }))
        .build();
    store.start();
    settle(Duration::from_secs(200)).await;
    // Tries at 0, then after 1, 2, 4, 8, 16, 30, 30, 30 s.
    assert_eq!(runs.times(), [0, 1, 3, 7, 15, 31, 61, 91, 121]);
    assert!(store.get_container("c1").is_some());
    let health = store.health();
    assert!(health.is_ready(), "{health:?}");
    assert_eq!(health.collectors[0].state, CollectorState::Running);
}

/// Lists, then loses its stream after `alive` seconds, forever.
struct Reconnecting {
    t0: Instant,
    runs: Log,
}

#[async_trait]
impl StreamCollector for Reconnecting {
    async fn run(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        self.runs.record(self.t0);
        ctx.sink.full_list(vec![container("c1")]).await;
        tokio::time::sleep(Duration::from_secs(100)).await;
        Err(CollectorError::retriable("event stream broke", "eof"))
    }
}

#[tokio::test(start_paused = true)]
async fn a_run_that_listed_resets_the_backoff() {
    let runs = Log::default();
    let t0 = Instant::now();
    let store = Store::builder()
        .collector(Collector::stream("reconnecting", Source::Runtime, Reconnecting { t0, runs: runs.clone() }))
        .build();
    store.start();
    settle(Duration::from_secs(350)).await;
    assert_eq!(runs.times(), [0, 101, 202, 303], "each reconnect waits the initial 1 s again");
}

/// Absent for its first `absent_runs` runs (no socket yet, `Waiting` when `configured`), then
/// lists one container.
struct Absent {
    runs: Arc<AtomicUsize>,
    absent_runs: usize,
    configured: bool,
}

#[async_trait]
impl StreamCollector for Absent {
    async fn run(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        if self.runs.fetch_add(1, Ordering::SeqCst) < self.absent_runs {
            return Err(if self.configured {
                CollectorError::waiting_for("/run/x.sock (x_socket_path)")
            } else {
                CollectorError::absent("no socket at /var/run/docker.sock")
            });
        }
        ctx.sink.full_list(vec![container("late")]).await;
        ctx.cancel.cancelled().await;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn an_undetected_environment_is_looked_for_again_and_does_not_hold_readiness() {
    let runs = Arc::new(AtomicUsize::new(0));
    let absent = Absent { runs: runs.clone(), absent_runs: 2, configured: false };
    let store = Store::builder().collector(Collector::stream("docker", Source::Runtime, absent)).build();
    let before = store.health();
    assert_eq!(before.collectors[0].state, CollectorState::Pending);
    assert!(!before.is_ready(), "a registered collector that has not listed holds readiness");
    store.start();
    settle(Duration::from_secs(45)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2, "looked for at start and after 30 s");
    let health = store.health();
    assert!(
        matches!(&health.collectors[0].state, CollectorState::NotDetected { reason } if reason.contains("docker.sock"))
    );
    assert!(health.is_ready());
    assert!(store.get_container("late").is_none());
    settle(Duration::from_secs(30)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3, "the socket was there at the third look, 60 s after start");
    assert!(store.get_container("late").is_some());
    assert_eq!(store.health().collectors[0].state, CollectorState::Running);
    store.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_configured_socket_not_there_yet_holds_readiness_until_it_comes() {
    let runs = Arc::new(AtomicUsize::new(0));
    let absent = Absent { runs: runs.clone(), absent_runs: 2, configured: true };
    let store = Store::builder().collector(Collector::stream("x", Source::Runtime, absent)).build();
    store.start();
    settle(Duration::from_secs(10)).await;
    let health = store.health();
    assert!(
        matches!(&health.collectors[0].state, CollectorState::Waiting { reason } if reason == "waiting for /run/x.sock (x_socket_path)"),
        "{health:?}"
    );
    assert!(!health.is_ready());
    settle(Duration::from_secs(30)).await;
    assert!(!store.health().is_ready(), "still waiting after the first re-detection");
    settle(Duration::from_secs(30)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert!(store.health().is_ready());
    assert!(store.get_container("late").is_some());
    store.shutdown().await;
}

/// Lists once, then its socket vanishes (the daemon restarts): absent, but it was there.
struct Vanishing {
    runs: Arc<AtomicUsize>,
}

#[async_trait]
impl StreamCollector for Vanishing {
    async fn run(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        if self.runs.fetch_add(1, Ordering::SeqCst) == 0 {
            ctx.sink.full_list(vec![container("c1")]).await;
            return Err(CollectorError::retriable("stream broke", "eof"));
        }
        Err(CollectorError::absent("no socket"))
    }
}

#[tokio::test(start_paused = true)]
async fn a_collector_that_listed_before_is_retried_when_its_socket_vanishes() {
    let runs = Arc::new(AtomicUsize::new(0));
    let store = Store::builder()
        .collector(Collector::stream("docker", Source::Runtime, Vanishing { runs: runs.clone() }))
        .build();
    store.start();
    settle(Duration::from_secs(10)).await;
    assert!(runs.load(Ordering::SeqCst) >= 3, "still retried: {}", runs.load(Ordering::SeqCst));
    assert!(matches!(store.health().collectors[0].state, CollectorState::Retrying { .. }));
}

/// Records pull start times and how many pulls overlap; pull `n` behaves as `plan(n)` says.
struct Puller {
    t0: Instant,
    pulls: Log,
    running: Arc<AtomicUsize>,
    max_running: Arc<AtomicUsize>,
    n: usize,
    plan: fn(usize) -> Plan,
}

#[derive(Clone, Copy)]
enum Plan {
    List(&'static [&'static str]),
    Fail,
    Take(Duration),
    Hang,
}

#[async_trait]
impl PullCollector for Puller {
    async fn start(&mut self, _: &CollectorContext) -> Result<(), CollectorError> {
        Ok(())
    }

    async fn pull(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        self.pulls.record(self.t0);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let plan = (self.plan)(self.n);
        self.n += 1;
        let result = match plan {
            Plan::List(ids) => {
                ctx.sink.full_list(ids.iter().map(|id| container(id)).collect()).await;
                Ok(())
            }
            Plan::Fail => Err(CollectorError::retriable("list failed", "connection refused")),
            Plan::Take(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Plan::Hang => {
                std::future::pending::<()>().await;
                Ok(())
            }
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

fn puller(plan: fn(usize) -> Plan) -> (Puller, Log, Arc<AtomicUsize>) {
    let pulls = Log::default();
    let max_running = Arc::new(AtomicUsize::new(0));
    let p = Puller {
        t0: Instant::now(),
        pulls: pulls.clone(),
        running: Arc::new(AtomicUsize::new(0)),
        max_running: max_running.clone(),
        n: 0,
        plan,
    };
    (p, pulls, max_running)
}

#[tokio::test(start_paused = true)]
async fn pulls_happen_at_once_then_every_5s_by_default_or_as_configured() {
    let (default, default_log, _) = puller(|_| Plan::List(&["a"]));
    let (custom, custom_log, _) = puller(|_| Plan::List(&["b"]));
    let store = Store::builder()
        .collector(Collector::pull("default", Source::Runtime, default))
        .collector(
            Collector::pull("custom", Source::NodeOrchestrator, custom).with_pull_interval(Duration::from_secs(2)),
        )
        .build();
    store.start();
    settle(Duration::from_millis(12_500)).await;
    assert_eq!(default_log.times(), [0, 5, 10]);
    assert_eq!(custom_log.times(), [0, 2, 4, 6, 8, 10, 12]);
    assert!(store.health().is_ready());
}

#[tokio::test(start_paused = true)]
async fn a_slow_pull_delays_the_next_one_and_two_never_overlap() {
    let (slow, log, max_running) =
        puller(|n| if n == 0 { Plan::Take(Duration::from_secs(12)) } else { Plan::List(&[]) });
    let store = Store::builder().collector(Collector::pull("slow", Source::Runtime, slow)).build();
    store.start();
    settle(Duration::from_secs(25)).await;
    assert_eq!(log.times(), [0, 12, 17, 22]);
    assert_eq!(max_running.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hung_pull_is_cut_by_the_timeout_and_counted_as_an_error() {
    let (hung, log, _) = puller(|n| if n == 0 { Plan::Hang } else { Plan::List(&["a"]) });
    let store = Store::builder()
        .collector(Collector::pull("hung", Source::Runtime, hung).with_pull_timeout(Duration::from_secs(3)))
        .build();
    store.start();
    settle(Duration::from_secs(6)).await;
    assert_eq!(log.times(), [0, 5]);
    assert!(store.get_container("a").is_some());
    let errors =
        store.telemetry().into_iter().find(|m| m.name == "workloadmeta.pull_errors").map(|m| (m.labels, m.value));
    assert_eq!(errors, Some((vec![("collector_id", "hung".to_owned())], MetricValue::Counter(1))));
}

#[tokio::test(start_paused = true)]
async fn a_failed_pull_changes_nothing_and_the_next_good_one_reconciles() {
    let (flaky, _, _) = puller(|n| match n {
        0 => Plan::List(&["a", "b"]),
        1 | 2 => Plan::Fail,
        _ => Plan::List(&["b", "c"]),
    });
    let store = Store::builder().collector(Collector::pull("podman", Source::Runtime, flaky)).build();
    store.start();
    settle(Duration::from_secs(11)).await;
    let ids = |s: &Store| s.list_containers().iter().map(|c| c.id.to_string()).collect::<Vec<_>>();
    assert_eq!(ids(&store), ["a", "b"], "after two failed pulls");
    settle(Duration::from_secs(5)).await;
    assert_eq!(ids(&store), ["b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn full_lists_of_two_collectors_of_one_source_do_not_unset_each_other() {
    let (docker, _, _) = puller(|_| Plan::List(&["d1"]));
    let (containerd, _, _) = puller(|n| if n == 0 { Plan::List(&["k1"]) } else { Plan::List(&[]) });
    let store = Store::builder()
        .collector(Collector::pull("docker", Source::Runtime, docker))
        .collector(Collector::pull("containerd", Source::Runtime, containerd))
        .build();
    store.start();
    settle(Duration::from_secs(1)).await;
    assert_eq!(store.list_containers().len(), 2);
    settle(Duration::from_secs(5)).await;
    let ids: Vec<_> = store.list_containers().iter().map(|c| c.id.to_string()).collect();
    assert_eq!(ids, ["d1"], "containerd's empty list unsets only what containerd said");
}

#[tokio::test(start_paused = true)]
async fn two_collectors_of_one_name_are_told_apart() {
    let (first, _, _) = puller(|_| Plan::List(&["a1"]));
    let (second, _, _) = puller(|_| Plan::List(&["b1"]));
    let store = Store::builder()
        .collector(Collector::pull("docker", Source::Runtime, first))
        .collector(Collector::pull("docker", Source::Runtime, second))
        .build();
    store.start();
    settle(Duration::from_secs(6)).await;
    let ids: Vec<_> = store.list_containers().iter().map(|c| c.id.to_string()).collect();
    assert_eq!(ids, ["a1", "b1"], "neither full list unsets the other's");
    let health = store.health();
    let names: Vec<_> = health.collectors.iter().map(|c| (c.name.as_str(), c.synced)).collect();
    assert_eq!(names, [("docker", true), ("docker-2", true)]);
    assert!(health.is_ready());
}

/// Lists, then panics on its first `panics` runs; afterwards follows a stream that never ends.
struct Panicky {
    t0: Instant,
    runs: Log,
    panics: usize,
}

#[async_trait]
impl StreamCollector for Panicky {
    async fn run(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        self.runs.record(self.t0);
        ctx.sink.full_list(vec![container("c1")]).await;
        if self.panics > 0 {
            self.panics -= 1;
            tokio::time::sleep(Duration::from_secs(10)).await;
            panic!("index out of bounds in the daemon's reply");
        }
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_collector_that_panics_is_failed_and_not_ready_until_restarted_with_backoff() {
    let runs = Log::default();
    let t0 = Instant::now();
    let collector = Panicky { t0, runs: runs.clone(), panics: 2 };
    let store = Store::builder().collector(Collector::stream("panicky", Source::Runtime, collector)).build();
    store.start();
    settle(Duration::from_millis(10_500)).await;
    let health = store.health();
    match &health.collectors[0].state {
        CollectorState::Failed { error, restarting } => {
            assert!(error.contains("panicked: index out of bounds"), "{error}");
            assert!(restarting);
        }
        other => panic!("expected failed, got {other:?}"),
    }
    assert!(!health.is_ready(), "a failed collector holds readiness back even though it listed");
    let panics = store.telemetry().into_iter().find(|s| s.name == "workloadmeta.collector_panics").unwrap();
    assert_eq!(panics.value, MetricValue::Counter(1));
    settle(Duration::from_secs(30)).await;
    // Runs at 0; panics at 10, restarted 1 s later (the backoff was reset: it listed); panics at
    // 21, restarted at 22 and stays.
    assert_eq!(runs.times(), [0, 11, 22]);
    let health = store.health();
    assert_eq!(health.collectors[0].state, CollectorState::Running);
    assert!(health.is_ready());
    assert!(store.get_container("c1").is_some());
}

/// Runs until cancelled, never looking at the token, holding a guard that counts its drop.
struct Deaf {
    dropped: Arc<AtomicUsize>,
}

struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl StreamCollector for Deaf {
    async fn run(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        let _guard = DropCount(self.dropped.clone());
        ctx.sink.full_list(vec![container("c1")]).await;
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[async_trait]
impl PullCollector for Deaf {
    async fn start(&mut self, _: &CollectorContext) -> Result<(), CollectorError> {
        Ok(())
    }

    async fn pull(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        ctx.sink.full_list(vec![container("p1")]).await;
        Ok(())
    }
}

#[tokio::test]
async fn shutdown_cancels_every_collector_and_returns_once_every_task_ended() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let store = Store::builder()
        .collector(Collector::stream("deaf", Source::Runtime, Deaf { dropped: dropped.clone() }))
        .collector(Collector::pull("puller", Source::NodeOrchestrator, Deaf { dropped: dropped.clone() }))
        .build();
    assert_eq!(store.running_tasks(), 0, "build spawns nothing");
    store.start();
    let mut sub = store.subscribe("s", wm_core::SubscriberPriority::Normal, wm_core::Filter::all());
    while store.get_container("c1").is_none() || store.get_container("p1").is_none() {
        tokio::task::yield_now().await;
    }
    assert_eq!(store.running_tasks(), 3, "the loop and two collectors");
    tokio::time::timeout(Duration::from_secs(5), store.shutdown()).await.expect("shutdown within 5 s");
    assert_eq!(store.running_tasks(), 0);
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the stream collector's run was dropped, not leaked");
    // The subscriber gets what was queued, then its stream ends.
    while let Some(item) = sub.recv().await {
        item.unwrap();
    }
}

/// The pods a test's kubelet lists: each one's uid and container ids.
type Pods = Arc<Mutex<Vec<(String, Vec<String>)>>>;

/// The kubelet of a test: each pull lists the pods in `pods`.
struct Kubelet {
    pulls: Arc<AtomicUsize>,
    pods: Pods,
}

#[async_trait]
impl PullCollector for Kubelet {
    async fn start(&mut self, _: &CollectorContext) -> Result<(), CollectorError> {
        Ok(())
    }

    async fn pull(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        self.pulls.fetch_add(1, Ordering::SeqCst);
        let pods = self.pods.lock().unwrap().clone();
        let pods = pods.iter().map(|(uid, containers)| {
            let containers = containers
                .iter()
                .map(|id| wm_core::OrchestratorContainer { id: id.as_str().into(), ..Default::default() })
                .collect();
            Entity::from(wm_core::KubernetesPod { id: uid.as_str().into(), containers, ..Default::default() })
        });
        ctx.sink.full_list(pods.collect()).await;
        Ok(())
    }
}

fn pod_container(id: &str, pod_uid: &str) -> wm_core::CollectorEvent {
    let mut c = Container { id: id.into(), ..Container::default() };
    c.labels.insert("io.kubernetes.pod.uid", pod_uid);
    wm_core::CollectorEvent::set(Source::Runtime, c)
}

#[tokio::test(start_paused = true)]
async fn a_runtime_container_its_pod_does_not_list_wakes_the_kubelet_pull_until_it_does() {
    let (pulls, pods): (_, Pods) = (Arc::new(AtomicUsize::new(0)), Arc::default());
    let kubelet = Kubelet { pulls: pulls.clone(), pods: pods.clone() };
    let store = Store::builder()
        .collector(
            Collector::pull("kubelet", Source::NodeOrchestrator, kubelet).with_pull_interval(Duration::from_secs(3600)),
        )
        .build();
    store.start();
    let t0 = Instant::now();
    while pulls.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The kubelet now has pod u1 with c1 and c2; the runtime reports c1 before the next pull.
    pods.lock().unwrap().push(("u1".into(), vec!["c1".into(), "c2".into()]));
    store.notify(vec![pod_container("c1", "u1")]).await;
    while store.get_kubernetes_pod("u1").is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pulls.load(Ordering::SeqCst), 2);
    let waited = t0.elapsed();
    assert!(waited <= Duration::from_millis(600), "the pod came {waited:?} after the first pull, not at once");
    // The stored pod lists c2, and a container without the label is no pod's: no more pulls.
    store
        .notify(vec![pod_container("c2", "u1"), wm_core::CollectorEvent::set(Source::Runtime, container("plain"))])
        .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(pulls.load(Ordering::SeqCst), 2, "nothing was missing");
    // c3 runs before the kubelet lists it in u1's status: pulls every half second until it does.
    store.notify(vec![pod_container("c3", "u1")]).await;
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let before_listed = pulls.load(Ordering::SeqCst);
    assert!((4..=6).contains(&before_listed), "{before_listed} pulls: one at once, then every 0.5 s");
    pods.lock().unwrap()[0].1.push("c3".into());
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(pulls.load(Ordering::SeqCst), before_listed + 1, "one more pull finds it; then none");
    // A burst of 50 pods the kubelet never lists: pulls at most every 0.5 s, for 5 s, then none.
    for i in 0..50 {
        store.notify(vec![pod_container(&format!("burst-{i}"), &format!("new-{i}"))]).await;
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let after_burst = pulls.load(Ordering::SeqCst) - before_listed - 1;
    assert!((2..=12).contains(&after_burst), "{after_burst} pulls for the burst");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(pulls.load(Ordering::SeqCst) - before_listed - 1, after_burst, "no pull once the wait is over");
    store.shutdown().await;
}
