//! `docker.event_latency` and `docker.initial_sync` of BENCHMARKS.md, against a real dockerd that
//! `test_support::runtimes` starts (as root; it installs the Debian packages when missing).
//!
//! - event_latency: for each container start, the delay from the event's own daemon timestamp to
//!   (a) a raw bollard event stream on the same daemon (the baseline) and (b) our store
//!   subscriber's `Set` showing it running. Overhead = (b) − (a), per start; target p99 ≤ 5 ms.
//! - initial_sync: with 500 containers on the daemon, from a store's start to its subscriber
//!   holding all 500, against bollard listing them and inspecting each, 8 in flight. Target ≤ 1.5×.
//! - image.initial_sync: with 200 images on the daemon (each `docker import` of a tarball of its
//!   own), from a store's start (the image collector alone) to its subscriber holding all of
//!   them, against bollard listing the images and inspecting each, 8 in flight. Target ≤ 1.5×.

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failure aborts the run

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures::StreamExt;
use test_support::bench::{percentile, start_until_sets};
use test_support::runtimes::{Install, Runtimes};
use wm_collector_docker::images::DockerImageCollector;
use wm_collector_docker::{DockerCollector, DockerConfig};
use wm_core::{EventType, Filter, Kind, SubscriberPriority};
use wm_store::Store;

fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
}

fn store(rt: &Runtimes) -> Store {
    let config = DockerConfig { docker_host: Some(rt.docker_host()), ..DockerConfig::default() };
    Store::builder().collector(DockerCollector::new(config).into_collector()).build()
}

async fn create(docker: &Docker, name: &str) -> String {
    let body = ContainerCreateBody {
        image: Some(Runtimes::IMAGE.into()),
        cmd: Some(vec!["sleep".into(), "300".into()]),
        labels: Some(HashMap::from([("bench".to_owned(), "docker".to_owned())])),
        stop_signal: Some("SIGKILL".into()),
        host_config: Some(HostConfig { network_mode: Some("none".into()), ..HostConfig::default() }),
        ..ContainerCreateBody::default()
    };
    docker.create_container(Some(CreateContainerOptionsBuilder::new().name(name).build()), body).await.unwrap().id
}

async fn event_latency(rt: &Runtimes, docker: &Docker, starts: usize) {
    let store = store(rt);
    let mut sub = store.subscribe("bench", SubscriberPriority::Normal, Filter::all().with_kind(Kind::Container));
    store.start();
    // The raw stream: (id → (event time, arrival time)), both in unix nanos.
    let (raw_tx, mut raw_rx) = tokio::sync::mpsc::unbounded_channel::<(String, i64, i64)>();
    let raw_docker = docker.clone();
    let raw = tokio::spawn(async move {
        let filters = HashMap::from([("type", vec!["container"]), ("event", vec!["start"])]);
        let mut stream = raw_docker.events(Some(EventsOptionsBuilder::new().filters(&filters).build()));
        while let Some(Ok(event)) = stream.next().await {
            let arrived = now_nanos();
            let id = event.actor.and_then(|a| a.id).unwrap_or_default();
            let _ = raw_tx.send((id, event.time_nano.unwrap_or(0), arrived));
        }
    });
    // Let both subscriptions settle (the store's first list, the raw stream's request).
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(200), sub.recv()).await {}

    let mut overheads = Vec::with_capacity(starts);
    let (mut ours_all, mut base_all) = (Vec::new(), Vec::new());
    for i in 0..starts {
        let id = create(docker, &format!("latency-{i}")).await;
        // Drain the create's bundle so the next Set we see is the start.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(50), sub.recv()).await {}
        docker.start_container(&id, None).await.unwrap();
        let ours_at = loop {
            let bundle = tokio::time::timeout(Duration::from_secs(10), sub.recv()).await.unwrap().unwrap().unwrap();
            let arrived = now_nanos();
            let seen = bundle.events.iter().any(|e| {
                e.event_type == EventType::Set
                    && e.entity.as_container().is_some_and(|c| *c.id == *id && c.state.running)
            });
            if seen {
                break arrived;
            }
        };
        let (event_time, base_at) = loop {
            let (raw_id, t, at) = tokio::time::timeout(Duration::from_secs(10), raw_rx.recv()).await.unwrap().unwrap();
            if raw_id == id {
                break (t, at);
            }
        };
        let ours = (ours_at - event_time) as f64 / 1e6;
        let base = (base_at - event_time) as f64 / 1e6;
        ours_all.push(ours);
        base_all.push(base);
        overheads.push(ours - base);
        docker.remove_container(&id, Some(RemoveContainerOptionsBuilder::new().force(true).build())).await.unwrap();
    }
    raw.abort();
    store.shutdown().await;
    for v in [&mut overheads, &mut ours_all, &mut base_all] {
        v.sort_by(f64::total_cmp);
    }
    let p99 = percentile(&overheads, 99.0);
    let (ours50, base50) = (percentile(&ours_all, 50.0), percentile(&base_all, 50.0));
    let verdict = if p99 <= 5.0 { "ok" } else { "MISS" };
    println!(
        "docker.event_latency  p99 {:.2} ms (p50 {ours50:.2})  raw bollard p99 {:.2} ms (p50 {base50:.2})  overhead p99 {p99:.2} ms, p50 {:.2} ms ({} starts)  <=5ms  {verdict}",
        percentile(&ours_all, 99.0),
        percentile(&base_all, 99.0),
        percentile(&overheads, 50.0),
        overheads.len()
    );
}

async fn baseline_sync(rt: &Runtimes) -> usize {
    let docker =
        Docker::connect_with_socket(&rt.docker_socket().display().to_string(), 120, bollard::API_DEFAULT_VERSION)
            .unwrap();
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

async fn initial_sync(rt: &Runtimes, docker: &Docker, containers: usize, rounds: usize) {
    futures::stream::iter(0..containers)
        .map(|i| {
            let docker = docker.clone();
            async move { create(&docker, &format!("sync-{i}")).await }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let (mut best_ours, mut best_base) = (Duration::MAX, Duration::MAX);
    for _ in 0..rounds {
        let t = Instant::now();
        assert_eq!(baseline_sync(rt).await, containers);
        best_base = best_base.min(t.elapsed());
        let t = Instant::now();
        ours_sync(rt, containers).await;
        best_ours = best_ours.min(t.elapsed());
    }
    let ratio = best_ours.as_secs_f64() / best_base.as_secs_f64();
    let verdict = if ratio <= 1.5 { "ok" } else { "MISS" };
    println!(
        "docker.initial_sync  {:.1} ms  {:.1} ms  {ratio:.2}x  <=1.50x  {verdict}  ({containers} containers, best of {rounds})",
        best_ours.as_secs_f64() * 1e3,
        best_base.as_secs_f64() * 1e3
    );
}

/// Makes `count` images, each imported from a tarball holding one file of its own, 8 at a time.
fn make_images(rt: &Runtimes, count: usize) {
    let dir = rt.dir().join("bench-images");
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let root = dir.join(format!("root-{i}"));
                    std::fs::create_dir_all(&root).unwrap();
                    std::fs::write(root.join("n"), i.to_string()).unwrap();
                    let tar = dir.join(format!("image-{i}.tar"));
                    let made =
                        std::process::Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&root).arg(".").status();
                    assert!(made.unwrap().success());
                    let out =
                        rt.docker(&["import", &tar.display().to_string(), &format!("wm.bench/image-{i}:1")]).unwrap();
                    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                }
            });
        }
    });
}

async fn image_baseline_sync(docker: &Docker) -> usize {
    let listed = docker.list_images(None::<bollard::query_parameters::ListImagesOptions>).await.unwrap();
    let inspected: Vec<_> = futures::stream::iter(listed.into_iter().map(|s| s.id))
        .map(|id| {
            let docker = docker.clone();
            async move { docker.inspect_image(&id).await.unwrap() }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    inspected.len()
}

async fn image_ours_sync(rt: &Runtimes, expected: usize) {
    let config = DockerConfig { docker_host: Some(rt.docker_host()), ..DockerConfig::default() };
    let store = Store::builder().collector(DockerImageCollector::new(config).into_collector()).build();
    start_until_sets(&store, Kind::ContainerImageMetadata, expected).await;
    store.shutdown().await;
}

async fn image_initial_sync(rt: &Runtimes, docker: &Docker, images: usize, rounds: usize) {
    tokio::task::block_in_place(|| make_images(rt, images));
    let total = image_baseline_sync(docker).await;
    assert!(total > images, "{total} images listed, {images} made");
    let (mut best_ours, mut best_base) = (Duration::MAX, Duration::MAX);
    for _ in 0..rounds {
        let t = Instant::now();
        assert_eq!(image_baseline_sync(docker).await, total);
        best_base = best_base.min(t.elapsed());
        let t = Instant::now();
        image_ours_sync(rt, total).await;
        best_ours = best_ours.min(t.elapsed());
    }
    let ratio = best_ours.as_secs_f64() / best_base.as_secs_f64();
    let verdict = if ratio <= 1.5 { "ok" } else { "MISS" };
    println!(
        "image.initial_sync  {:.1} ms  {:.1} ms  {ratio:.2}x  <=1.50x  {verdict}  ({total} images: inspect and history vs inspect, best of {rounds})",
        best_ours.as_secs_f64() * 1e3,
        best_base.as_secs_f64() * 1e3
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = match Runtimes::start(Install::IfMissing) {
        Ok(rt) => rt,
        Err(why) => {
            println!("docker.event_latency  -  -  -  <=5ms  MISS (no dockerd: {why})");
            println!("docker.initial_sync  -  -  -  <=1.50x  MISS (no dockerd: {why})");
            println!("image.initial_sync  -  -  -  <=1.50x  MISS (no dockerd: {why})");
            return;
        }
    };
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    tokio.block_on(async {
        let docker =
            Docker::connect_with_socket(&rt.docker_socket().display().to_string(), 120, bollard::API_DEFAULT_VERSION)
                .unwrap();
        event_latency(&rt, &docker, if quick { 20 } else { 200 }).await;
        initial_sync(&rt, &docker, if quick { 100 } else { 500 }, if quick { 2 } else { 5 }).await;
        image_initial_sync(&rt, &docker, if quick { 50 } else { 200 }, if quick { 2 } else { 5 }).await;
    });
    drop(tokio);
    drop(rt);
}
