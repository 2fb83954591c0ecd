//! `containerd.scale_10k` of BENCHMARKS.md: one real containerd (started by
//! `test_support::runtimes`) holding 10,000 containers (`--quick`: 2,000) with Kubernetes-sized
//! records: the CRI's labels and annotations and a 20 KB spec (200 env vars), made through
//! containerd's API, none running (a running one costs a shim, which this machine cannot give
//! 10,000 times).
//!
//! - `containerd.scale_10k.sync`: a store with the containerd collector, from its start to a
//!   subscriber holding every container, against listing them (`ListStream`) and getting each,
//!   8 in flight; best of 3. Target ≤ 1.5×.
//! - `containerd.scale_10k.rss`: the agent binary (the containerd collectors only) once it
//!   knows every container and sat idle 20 s: its resident memory, and the growth per container
//!   against the same agent before the containers were made. Target ≤ 60 MiB.
//! - `containerd.scale_10k.delete`: 100 container deletes among them, one at a time, from the
//!   call returning to the store subscriber's `Unset` (from its start beside). Target p99 ≤ 20 ms.
//! - containerd's own pace, printed for context: containers created per second by 16 clients.

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failure aborts the run

use std::time::{Duration, Instant};

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, DeleteContainerRequest, GetContainerRequest, ListContainersRequest,
};
use futures::StreamExt;
use test_support::bench::{percentile, start_until_sets};
use test_support::runtimes::{Install, Runtimes};
use tonic::transport::Channel;
use wm_collector_containerd::{ContainerdCollector, ContainerdConfig};
use wm_core::{EventType, Kind};
use wm_store::Store;

const NS: &str = "scale";

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("containerd-namespace", NS.parse().unwrap());
    request
}

/// Container `i`, as the CRI plugin records a pod's container.
fn record(i: usize) -> Container {
    let pod = format!("web-{:05}", i / 3);
    let uid = format!("{:08x}-0000-4000-8000-{:012x}", i / 3, i / 3);
    let name = ["app", "sidecar", "log-shipper"][i % 3];
    let env: Vec<String> = (0..200).map(|v| format!("VAR_{v:03}={}", "x".repeat(90))).collect();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": { "args": ["/bin/sleep", "3600"], "env": env, "cwd": "/" },
        "root": { "path": "rootfs" },
        "hostname": pod,
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": name,
            "io.kubernetes.cri.sandbox-id": format!("{:064x}", i / 3),
            "io.kubernetes.cri.sandbox-name": pod,
            "io.kubernetes.cri.sandbox-namespace": format!("team-{}", i % 40),
            "io.kubernetes.cri.sandbox-uid": uid,
            "io.kubernetes.cri.image-name": "docker.io/library/app:1.2.3",
        },
        "linux": { "cgroupsPath": format!("kubepods-burstable-pod{uid}.slice:cri-containerd:{i:064x}") },
    });
    let labels = [
        ("io.kubernetes.container.name", name.to_owned()),
        ("io.kubernetes.pod.name", pod.clone()),
        ("io.kubernetes.pod.namespace", format!("team-{}", i % 40)),
        ("io.kubernetes.pod.uid", uid),
        ("io.cri-containerd.kind", "container".to_owned()),
    ];
    Container {
        id: format!("{i:064x}"),
        labels: labels.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        image: "docker.io/library/app:1.2.3".into(),
        runtime: Some(containerd_client::services::v1::container::Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: serde_json::to_vec(&spec).unwrap(),
        }),
        ..Container::default()
    }
}

/// Runs `call` on each of `ids` with 16 calls at once.
async fn each(
    containers: &ContainersClient<Channel>,
    ids: impl Iterator<Item = usize>,
    call: impl AsyncFn(ContainersClient<Channel>, usize),
) {
    futures::stream::iter(ids).for_each_concurrent(16, |i| call(containers.clone(), i)).await;
}

async fn baseline_sync(containers: &ContainersClient<Channel>) -> usize {
    let mut stream =
        containers.clone().list_stream(request(ListContainersRequest::default())).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        ids.extend(message.container.map(|c| c.id));
    }
    let got: Vec<_> = futures::stream::iter(ids)
        .map(|id| {
            let mut containers = containers.clone();
            async move { containers.get(request(GetContainerRequest { id })).await.unwrap().into_inner() }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    got.len()
}

fn store(rt: &Runtimes) -> Store {
    let config = ContainerdConfig {
        cri_socket_path: Some(rt.containerd_socket()),
        containerd_namespaces: vec![NS.into()],
        ..ContainerdConfig::default()
    };
    Store::builder().collector(ContainerdCollector::new(config).into_collector()).build()
}

async fn ours_sync(rt: &Runtimes, expected: usize) {
    let store = store(rt);
    start_until_sets(&store, Kind::Container, expected).await;
    store.shutdown().await;
}

/// Deletes the containers `ids` one at a time; returns, sorted and in ms, each one's delay to
/// the store subscriber's `Unset` from the call returning and from its start.
async fn delete_latency(
    rt: &Runtimes,
    containers: &ContainersClient<Channel>,
    ids: &[String],
    total: usize,
) -> [Vec<f64>; 2] {
    let store = store(rt);
    let mut sub = start_until_sets(&store, Kind::Container, total).await;
    let [mut after, mut from_start] = [Vec::new(), Vec::new()];
    for id in ids {
        let asked = Instant::now();
        containers.clone().delete(request(DeleteContainerRequest { id: id.clone() })).await.unwrap();
        let returned = Instant::now();
        loop {
            let bundle = tokio::time::timeout(Duration::from_secs(10), sub.recv()).await.unwrap().unwrap().unwrap();
            if bundle.events.iter().any(|e| e.event_type == EventType::Unset && *e.entity.id().id == **id) {
                after.push(Instant::now().saturating_duration_since(returned).as_secs_f64() * 1e3);
                from_start.push(asked.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
    }
    store.shutdown().await;
    for list in [&mut after, &mut from_start] {
        list.sort_by(f64::total_cmp);
    }
    [after, from_start]
}

/// Runs the agent (the containerd collectors only, on the bench's namespace) until it counts
/// `containers`, lets it sit idle `idle`, and returns its resident bytes.
fn agent_rss(rt: &Runtimes, containers: usize, idle: Duration) -> u64 {
    let collectors = format!(
        "cri_socket_path: {}\ncontainerd_namespaces: [{NS}]\nautoconfig_exclude_features: [docker, podman, kubernetes, process, ecs]\n",
        rt.containerd_socket().display()
    );
    let dir = rt.dir().join(format!("agent-{containers}"));
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_agent"));
    tokio::task::block_in_place(|| test_support::bench::agent_rss(binary, &dir, &collectors, containers, idle))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let count = if quick { 2_000 } else { 10_000 };
    let rt = match Runtimes::start(Install::IfMissing) {
        Ok(rt) => rt,
        Err(why) => {
            for row in ["containerd.scale_10k.sync", "containerd.scale_10k.rss", "containerd.scale_10k.delete"] {
                println!("{row}  -  -  -  -  MISS (no containerd: {why})");
            }
            return;
        }
    };
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let idle = Duration::from_secs(if quick { 5 } else { 20 });
    tokio.block_on(async {
        let empty_rss = agent_rss(&rt, 0, idle);
        let channel = containerd_client::connect(rt.containerd_socket()).await.unwrap();
        let containers = ContainersClient::new(channel).max_decoding_message_size(64 << 20);
        let spec_bytes = record(0).spec.unwrap().value.len();
        let started = Instant::now();
        let done = std::sync::Mutex::new(Vec::with_capacity(count));
        each(&containers, 0..count, async |mut client, i| {
            client.create(request(CreateContainerRequest { container: Some(record(i)) })).await.unwrap();
            done.lock().unwrap().push(Instant::now());
        })
        .await;
        let rate = count as f64 / started.elapsed().as_secs_f64();
        let pace = test_support::bench::pace_by_chunk(started, done.into_inner().unwrap(), 2_000);
        println!("containerd: {count} containers ({spec_bytes} B specs) created at {rate:.0}/s by 16 clients ({pace})");

        let rounds = if quick { 1 } else { 3 };
        let (mut best_ours, mut best_base) = (Duration::MAX, Duration::MAX);
        for _ in 0..rounds {
            let t = Instant::now();
            assert_eq!(baseline_sync(&containers).await, count);
            best_base = best_base.min(t.elapsed());
            let t = Instant::now();
            ours_sync(&rt, count).await;
            best_ours = best_ours.min(t.elapsed());
        }
        // Where our time goes: the collector's list alone (connected, no store), best of rounds.
        let mut best_list = Duration::MAX;
        for _ in 0..rounds {
            use wm_driver::ListWatch as _;
            let config = ContainerdConfig {
                cri_socket_path: Some(rt.containerd_socket()),
                containerd_namespaces: vec![NS.into()],
                ..ContainerdConfig::default()
            };
            let mut collector = ContainerdCollector::new(config);
            let _stream = collector.watch().await.unwrap();
            let t = Instant::now();
            let listed = collector.list().await.unwrap();
            best_list = best_list.min(t.elapsed());
            assert_eq!(listed.entities.len(), count);
        }
        println!("  of which the collector's list alone: {:.0} ms", best_list.as_secs_f64() * 1e3);
        let ratio = best_ours.as_secs_f64() / best_base.as_secs_f64();
        println!(
            "containerd.scale_10k.sync  {:.0} ms  {:.0} ms  {ratio:.2}x  <=1.50x  {}  ({count} containers, best of {rounds})",
            best_ours.as_secs_f64() * 1e3,
            best_base.as_secs_f64() * 1e3,
            if ratio <= 1.5 { "ok" } else { "MISS" }
        );

        let full_rss = agent_rss(&rt, count, idle);
        let mib = full_rss as f64 / (1 << 20) as f64;
        println!(
            "containerd.scale_10k.rss  {mib:.1} MiB  -  -  <=60MiB  {}  ({count} containers, {:.1} MiB with none, {:.0} B per container, {}s idle)",
            if mib <= 60.0 { "ok" } else { "MISS" },
            empty_rss as f64 / (1 << 20) as f64,
            full_rss.saturating_sub(empty_rss) as f64 / count as f64,
            idle.as_secs()
        );

        let removed = if quick { 20 } else { 100 };
        let victims: Vec<String> = (0..count).step_by(count / removed).map(|i| format!("{i:064x}")).collect();
        let [after, from_start] = delete_latency(&rt, &containers, &victims, count).await;
        let p99 = percentile(&after, 99.0);
        println!(
            "containerd.scale_10k.delete  p99 {p99:.2} ms (p50 {:.2})  -  -  <=20ms  {}  ({} deletes among {count}, from the call returning; from its start p99 {:.2} ms)",
            percentile(&after, 50.0),
            if p99 <= 20.0 { "ok" } else { "MISS" },
            after.len(),
            percentile(&from_start, 99.0)
        );
        // Delete the rest here, 16 at a time: the runtimes' teardown deletes with one `ctr` each.
        let gone: std::collections::HashSet<String> = victims.into_iter().collect();
        let rest: Vec<usize> = (0..count).filter(|i| !gone.contains(&format!("{i:064x}"))).collect();
        each(&containers, rest.into_iter(), async |mut client, i| {
            let _ = client.delete(request(DeleteContainerRequest { id: format!("{i:064x}") })).await;
        })
        .await;
    });
    drop(tokio);
    drop(rt);
}
