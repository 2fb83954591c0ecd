//! `docker.scale_10k` of BENCHMARKS.md: one real dockerd (started by `test_support::runtimes`)
//! holding 10,000 containers (`--quick`: 2,000), all created and 100 of them running (each
//! running container costs a shim process and some 10 MiB, which this machine cannot give
//! 10,000 times).
//!
//! - `docker.scale_10k.sync`: a store with the docker collector, from its start to a subscriber
//!   holding every container, against bollard listing them and inspecting each, 8 in flight;
//!   best of 3. Target ≤ 1.5×.
//! - `docker.scale_10k.rss`: the agent binary (the docker collectors only) once it knows every
//!   container and sat idle 20 s: its resident memory, and the growth per container against the
//!   same agent on the empty daemon. Target ≤ 60 MiB.
//! - `docker.scale_10k.rm`: 100 `docker rm`s among them, one at a time, each from the API call
//!   returning (what a user sees: `docker rm` done) to the store subscriber's `Unset`. Target p99
//!   ≤ 20 ms. dockerd sends the event before it answers, so this is mostly zero; the delay from
//!   the call's start, dockerd's own work included, and the call's duration are printed beside.
//! - `docker.scale_10k.restart`: dockerd SIGKILLed under a store holding every container, then
//!   started again: the time from dockerd answering again to the store's subscriber holding
//!   exactly dockerd's list, and that the subscriber was not cut off (the re-list of 10,000 must
//!   not stall it). Target: exact, not cut off; the time is printed.
//! - The daemon's own pace, printed for context: containers created per second by 16 clients.

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failure aborts the run

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures::StreamExt;
use test_support::bench::{percentile, start_until_sets};
use test_support::runtimes::{Install, Runtimes};
use wm_collector_docker::{DockerCollector, DockerConfig};
use wm_core::{EventType, Kind};
use wm_store::Store;

/// How many containers run (the rest are only created).
const RUNNING: usize = 100;

fn store(rt: &Runtimes) -> Store {
    let config = DockerConfig { docker_host: Some(rt.docker_host()), ..DockerConfig::default() };
    Store::builder().collector(DockerCollector::new(config).into_collector()).build()
}

/// Creates `count` containers with 16 clients at once and returns their ids, the creates per
/// second, and the pace of each 2,000 (does dockerd slow as it fills?).
async fn create(docker: &Docker, count: usize) -> (Vec<String>, f64, String) {
    let started = Instant::now();
    let made: Vec<(String, Instant)> = futures::stream::iter(0..count)
        .map(|i| {
            let docker = docker.clone();
            async move {
                let body = ContainerCreateBody {
                    image: Some(Runtimes::IMAGE.into()),
                    cmd: Some(vec!["sleep".into(), "3600".into()]),
                    labels: Some(HashMap::from([
                        ("team".to_owned(), format!("team-{}", i % 40)),
                        ("com.datadoghq.tags.service".to_owned(), format!("svc-{}", i % 200)),
                    ])),
                    env: Some(vec![format!("DD_ENV=bench"), format!("DD_VERSION=1.{}", i % 7)]),
                    stop_signal: Some("SIGKILL".into()),
                    host_config: Some(HostConfig { network_mode: Some("none".into()), ..HostConfig::default() }),
                    ..ContainerCreateBody::default()
                };
                let options = CreateContainerOptionsBuilder::new().name(&format!("scale-{i}")).build();
                (docker.create_container(Some(options), body).await.unwrap().id, Instant::now())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let (ids, done): (Vec<String>, Vec<Instant>) = made.into_iter().unzip();
    (ids, rate, test_support::bench::pace_by_chunk(started, done, 2_000))
}

async fn baseline_sync(docker: &Docker) -> usize {
    let listed = docker.list_containers(Some(ListContainersOptionsBuilder::new().all(true).build())).await.unwrap();
    let inspected: Vec<_> = futures::stream::iter(listed.into_iter().filter_map(|s| s.id))
        .map(|id| {
            let docker = docker.clone();
            async move { docker.inspect_container(&id, None).await.unwrap() }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    inspected.len()
}

async fn ours_sync(rt: &Runtimes, expected: usize) {
    let store = store(rt);
    start_until_sets(&store, Kind::Container, expected).await;
    store.shutdown().await;
}

/// Runs the agent (the docker collectors only) until it counts `containers`, lets it sit idle
/// `idle`, and returns its resident bytes.
fn agent_rss(rt: &Runtimes, containers: usize, idle: Duration) -> u64 {
    let collectors = format!(
        "docker_host: {}\nautoconfig_exclude_features: [containerd, podman, kubernetes, process, ecs]\n",
        rt.docker_host()
    );
    let dir = rt.dir().join(format!("agent-{containers}"));
    test_support::bench::agent_rss(Path::new(env!("CARGO_BIN_EXE_agent")), &dir, &collectors, containers, idle)
}

/// Removes the containers `ids` one at a time and returns, sorted and in ms, each one's delay to
/// the store subscriber's `Unset` from the API call returning, from its start, and the calls'
/// own durations.
async fn rm_latency(rt: &Runtimes, docker: &Docker, ids: &[String], total: usize) -> [Vec<f64>; 3] {
    let store = store(rt);
    let mut sub = start_until_sets(&store, Kind::Container, total).await;
    let [mut after, mut delays, mut calls] = [Vec::new(), Vec::new(), Vec::new()];
    for id in ids {
        let asked = Instant::now();
        docker.remove_container(id, Some(RemoveContainerOptionsBuilder::new().force(true).build())).await.unwrap();
        let returned = Instant::now();
        calls.push(asked.elapsed().as_secs_f64() * 1e3);
        loop {
            let bundle = tokio::time::timeout(Duration::from_secs(10), sub.recv()).await.unwrap().unwrap().unwrap();
            let gone = bundle.events.iter().any(|e| e.event_type == EventType::Unset && *e.entity.id().id == **id);
            if gone {
                // The Unset may have come before the call returned: then it took no time after.
                after.push(Instant::now().saturating_duration_since(returned).as_secs_f64() * 1e3);
                delays.push(asked.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
    }
    store.shutdown().await;
    for list in [&mut after, &mut delays, &mut calls] {
        list.sort_by(f64::total_cmp);
    }
    [after, delays, calls]
}

/// Containers the store has received from collectors so far (`workloadmeta.events_received`):
/// a re-list of `n` containers adds `n`.
fn containers_received(store: &Store) -> u64 {
    store
        .telemetry()
        .iter()
        .filter(|m| {
            m.name == "workloadmeta.events_received" && m.labels.iter().any(|(k, v)| *k == "kind" && v == "container")
        })
        .map(|m| match m.value {
            wm_store::MetricValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

/// SIGKILLs dockerd under a store that holds all `total` containers, starts it again, and
/// returns how long after dockerd answered the collector's re-list had landed and the
/// subscriber's view equalled dockerd's list; `Err` says what went wrong (the subscriber cut
/// off, or no match within 120 s).
///
/// dockerd comes back with the same ids, so the view is compared only once the re-list has
/// landed (the store has received `total` more containers), and the subscriber keeps reading
/// throughout, so a subscriber cut off by the re-list is seen.
async fn restart(rt: &mut Runtimes, docker: &Docker, total: usize) -> Result<Duration, String> {
    let store = store(rt);
    let mut sub = start_until_sets(&store, Kind::Container, total).await;
    let mut view: HashSet<String> = store.list_containers().iter().map(|c| c.id.to_string()).collect();
    let received_before = containers_received(&store);
    tokio::task::block_in_place(|| {
        rt.kill_dockerd();
        rt.start_dockerd()
    })
    .map_err(|e| format!("dockerd did not come back: {}", e.0))?;
    let back = Instant::now();
    let deadline = back + Duration::from_secs(120);
    let mut want = HashSet::new();
    let mut listed_at = Instant::now() - Duration::from_secs(10);
    let result = loop {
        let relisted = containers_received(&store) >= received_before + total as u64;
        if relisted && listed_at.elapsed() >= Duration::from_millis(500) {
            let options = ListContainersOptionsBuilder::new().all(true).build();
            want = docker
                .list_containers(Some(options))
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter_map(|s| s.id)
                .collect();
            listed_at = Instant::now();
        }
        if relisted && view == want {
            break Ok(back.elapsed());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(format!(
                "after 120 s: re-listed {relisted}, {} held by the subscriber, {} listed by dockerd",
                view.len(),
                want.len()
            ));
        }
        match tokio::time::timeout(left.min(Duration::from_millis(200)), sub.recv()).await {
            Err(_) => {}
            Ok(Some(Ok(bundle))) => {
                for event in &bundle.events {
                    let id = event.entity.id().id.to_string();
                    if event.event_type == EventType::Set {
                        view.insert(id);
                    } else {
                        view.remove(&id);
                    }
                }
            }
            Ok(other) => break Err(format!("the subscriber was cut off: {other:?}")),
        }
    };
    store.shutdown().await;
    result
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let count = if quick { 2_000 } else { 10_000 };
    let mut rt = match Runtimes::start(Install::IfMissing) {
        Ok(rt) => rt,
        Err(why) => {
            for row in
                ["docker.scale_10k.sync", "docker.scale_10k.rss", "docker.scale_10k.rm", "docker.scale_10k.restart"]
            {
                println!("{row}  -  -  -  -  MISS (no dockerd: {why})");
            }
            return;
        }
    };
    let idle = Duration::from_secs(if quick { 5 } else { 20 });
    let empty_rss = agent_rss(&rt, 0, idle);
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let docker =
        Docker::connect_with_socket(&rt.docker_socket().display().to_string(), 300, bollard::API_DEFAULT_VERSION)
            .unwrap();
    let (ids, rate, pace) = tokio.block_on(create(&docker, count));
    tokio.block_on(async {
        for id in ids.iter().take(RUNNING) {
            docker.start_container(id, None).await.unwrap();
        }
    });
    println!("dockerd: {count} containers created at {rate:.0}/s by 16 clients ({pace}); {RUNNING} started");

    let rounds = if quick { 1 } else { 3 };
    let (mut best_ours, mut best_base) = (Duration::MAX, Duration::MAX);
    tokio.block_on(async {
        for _ in 0..rounds {
            let t = Instant::now();
            assert_eq!(baseline_sync(&docker).await, count);
            best_base = best_base.min(t.elapsed());
            let t = Instant::now();
            ours_sync(&rt, count).await;
            best_ours = best_ours.min(t.elapsed());
        }
    });
    let ratio = best_ours.as_secs_f64() / best_base.as_secs_f64();
    println!(
        "docker.scale_10k.sync  {:.0} ms  {:.0} ms  {ratio:.2}x  <=1.50x  {}  ({count} containers, best of {rounds})",
        best_ours.as_secs_f64() * 1e3,
        best_base.as_secs_f64() * 1e3,
        if ratio <= 1.5 { "ok" } else { "MISS" }
    );

    let full_rss = agent_rss(&rt, count, idle);
    let mib = full_rss as f64 / (1 << 20) as f64;
    let per_container = full_rss.saturating_sub(empty_rss) as f64 / count as f64;
    println!(
        "docker.scale_10k.rss  {mib:.1} MiB  -  -  <=60MiB  {}  ({count} containers, {:.1} MiB with none, {per_container:.0} B per container, {}s idle)",
        if mib <= 60.0 { "ok" } else { "MISS" },
        empty_rss as f64 / (1 << 20) as f64,
        idle.as_secs()
    );

    let removed = if quick { 20 } else { 100 };
    // Created, not running ones: a running container's rm also waits for its shim.
    let step = ((count - RUNNING) / removed).max(1);
    let victims: Vec<String> = ids.iter().skip(RUNNING).step_by(step).take(removed).cloned().collect();
    let [after, delays, calls] = tokio.block_on(rm_latency(&rt, &docker, &victims, count));
    let p99 = percentile(&after, 99.0);
    println!(
        "docker.scale_10k.rm  p99 {p99:.2} ms (p50 {:.2})  -  -  <=20ms  {}  ({} removals among {count}, from the call returning; from its start p99 {:.2} ms, the call itself p99 {:.2} ms)",
        percentile(&after, 50.0),
        if p99 <= 20.0 { "ok" } else { "MISS" },
        after.len(),
        percentile(&delays, 99.0),
        percentile(&calls, 99.0)
    );
    let total = count - after.len();
    match tokio.block_on(restart(&mut rt, &docker, total)) {
        Ok(took) => println!(
            "docker.scale_10k.restart  {:.0} ms  -  -  exact, not cut off  ok  (dockerd SIGKILLed and started with {total} containers; from dockerd answering to the subscriber's view equal to its list)",
            took.as_secs_f64() * 1e3
        ),
        Err(why) => println!("docker.scale_10k.restart  -  -  -  exact, not cut off  MISS  ({why})"),
    }
    drop(tokio);
    drop(rt);
}
