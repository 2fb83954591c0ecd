//! `store.memory` (BENCHMARKS.md): bytes per pod held by the store and the tagger, for 100k pods
//! of 3 containers built from the real kubelet fixtures and converted by the kubelet collector:
//! the Deployment-owned pod of `podlist_1.8-2.json` (its labels, its `created-by` annotation, its
//! ReplicaSet owner) made unique per pod (uid, name, container ids) with three containers, each
//! PodList of 100 such pods turned into entities by `wm_collector_kube::kubelet`, plus each
//! container as its runtime reports it. Measured as net heap bytes by a counting allocator, and
//! as resident-set growth, and broken down: each part's growth as it is built or fed (entities,
//! the store's records, the tagger), and the tagger's split counted from its
//! structures. `--quick`: 10k pods. (It lives in agent-bin, the one crate that may
//! link a collector, the store and the tagger together.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failed unwrap is a failed run

use std::alloc::System;
use std::sync::Arc;
use std::time::Duration;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tagger::{Tagger, TaggerConfig};
use wm_collector_kube::kubelet::convert_pod_list;
use wm_core::{
    CollectorEvent, Container, ContainerState, ContainerStatus, Entity, EntityId, EnvFilter, Kind, KubernetesPod,
    Runtime, Source, StrMap, Timestamp,
};
use wm_store::Store;

// The agent's malloc (jemalloc, as `main.rs` links it): `System` below is jemalloc, so the
// resident figure is what the agent binary pays.
use tikv_jemalloc_sys as _;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// The template: the first pod of the capture owned by a ReplicaSet, with its containers.
fn template() -> serde_json::Value {
    let bytes = std::fs::read(test_support::testdata::path("fixtures/kubelet/podlist_1.8-2.json")).unwrap();
    let list: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet" && p["status"]["containerStatuses"].is_array()
        })
        .cloned()
        .expect("a ReplicaSet-owned pod with container statuses")
}

/// Pod `i` of the template, unique, with three containers.
fn pod_json(template: &serde_json::Value, i: usize) -> serde_json::Value {
    let mut pod = template.clone();
    let name = format!("{}-{i:05x}", pod["metadata"]["generateName"].as_str().unwrap_or("pod-").trim_end_matches('-'));
    pod["metadata"]["uid"] = format!("{i:08x}-1c2d-4e5f-8a9b-{i:012x}").into();
    pod["metadata"]["name"] = name.into();
    pod["metadata"]["namespace"] = format!("team-{}", i % 40).into();
    pod["status"]["podIP"] = format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255).into();
    let spec = pod["spec"]["containers"][0].clone();
    let status = pod["status"]["containerStatuses"][0].clone();
    let names = ["app", "sidecar", "log-shipper"];
    pod["spec"]["containers"] = names
        .iter()
        .map(|n| {
            let mut c = spec.clone();
            c["name"] = (*n).into();
            c
        })
        .collect();
    pod["status"]["containerStatuses"] = names
        .iter()
        .enumerate()
        .map(|(k, n)| {
            let mut c = status.clone();
            c["name"] = (*n).into();
            c["containerID"] = format!("docker://{i:060x}{k:04x}").into();
            c
        })
        .collect();
    pod
}

/// The runtime's version of a pod's containers (what containerd or docker reports).
fn runtime_containers(pod: &KubernetesPod, i: usize) -> Vec<Container> {
    pod.containers
        .iter()
        .map(|c| {
            let labels: StrMap = [
                ("io.kubernetes.container.name", c.name.as_str()),
                ("io.kubernetes.pod.name", pod.name.as_str()),
                ("io.kubernetes.pod.namespace", pod.namespace.as_str()),
                ("io.kubernetes.pod.uid", &*pod.id),
            ]
            .into_iter()
            .collect();
            Container {
                id: wm_core::Id::from(&*c.id),
                name: format!("k8s_{}_{}_{}_{}_0", c.name, pod.name, pod.namespace, pod.id).into(),
                labels,
                image: c.image.clone(),
                runtime: Some(Runtime::Docker),
                state: ContainerState {
                    running: true,
                    status: ContainerStatus::Running,
                    started_at: Some(Timestamp::from_unix(1_790_000_000, 0)),
                    pid: 1000 + i as u32,
                    ..ContainerState::default()
                },
                owner: Some(EntityId::new(Kind::KubernetesPod, &*pod.id)),
                ..Container::default()
            }
        })
        .collect()
}

/// Net heap bytes allocated since `region` began. stats_alloc already counts a realloc's growth
/// in `bytes_allocated` (and its shrinking in `bytes_deallocated`); `bytes_reallocated` is the
/// same change again, not to be added.
fn net(region: &Region<'_, System>) -> usize {
    let stats = region.change();
    stats.bytes_allocated.saturating_sub(stats.bytes_deallocated)
}

/// The kubelet's answers, one per 100 pods, converted as the collector converts them: the pods,
/// and their containers (which share their ids with the pods' lists, as the collector's do).
fn converted(pods: usize) -> (Vec<Vec<CollectorEvent>>, Vec<Vec<CollectorEvent>>) {
    let template = template();
    let env = EnvFilter::default();
    (0..pods)
        .step_by(100)
        .map(|start| {
            let items: Vec<serde_json::Value> =
                (start..(start + 100).min(pods)).map(|i| pod_json(&template, i)).collect();
            let list = serde_json::to_vec(&serde_json::json!({ "kind": "PodList", "items": items })).unwrap();
            let converted = convert_pod_list(&list, &env, false).unwrap();
            let (pods, containers): (Vec<Entity>, Vec<Entity>) =
                converted.entities.into_iter().partition(|e| e.kind() == Kind::KubernetesPod);
            let events = |entities: Vec<Entity>| {
                entities.into_iter().map(|e| CollectorEvent::set(Source::NodeOrchestrator, e)).collect()
            };
            (events(pods), events(containers))
        })
        .unzip()
}

/// The runtime's version of every pod's containers.
fn runtime_events(pod_batches: &[Vec<CollectorEvent>]) -> Vec<Vec<CollectorEvent>> {
    let mut i = 0;
    pod_batches
        .iter()
        .map(|batch| {
            let mut events = Vec::new();
            for pod in batch.iter().filter_map(|e| e.entity.as_kubernetes_pod()) {
                events.extend(runtime_containers(pod, i).into_iter().map(|c| CollectorEvent::set(Source::Runtime, c)));
                i += 1;
            }
            events
        })
        .collect()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // `--store-only`: the store's share, without the tagger.
    let store_only = std::env::args().any(|a| a == "--store-only");
    let pods = if quick { 10_000 } else { 100_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let rss_before = rss_bytes();
    let region = Region::new(GLOBAL);
    // The entities first, as the collectors build them: the pods, the kubelet's containers, and
    // the runtime's version of each container. Then the store is fed part by part (the runtime's
    // part makes each container known by two sources, merged), each part's growth measured; then
    // the tagger follows it and tags everything.
    // A part's growth may be negative: the store lets go of the copies of ids it already holds.
    // Each part's growth in bytes and in live allocations.
    let live = || {
        let stats = region.change();
        stats.allocations as i64 - stats.deallocations as i64
    };
    let growth = |before: (usize, i64)| (net(&region) as i64 - before.0 as i64, live() - before.1);
    let mut parts: Vec<(&str, (i64, i64))> = Vec::new();
    let before = (net(&region), live());
    let (pod_events, kubelet_events) = converted(pods);
    parts.push(("entities: pods and containers (kubelet)", growth(before)));
    let before = (net(&region), live());
    let runtime_events = runtime_events(&pod_events);
    parts.push(("entities: containers (runtime)", growth(before)));
    let columns = [pod_events, kubelet_events, runtime_events];
    let (store, tagger) = runtime.block_on(async {
        let store = Store::new();
        let names = ["store: pods", "store: containers (kubelet)", "store: containers (runtime, ids shared)"];
        for (name, column) in names.into_iter().zip(columns) {
            let before = (net(&region), live());
            for batch in column {
                store.notify(batch).await;
            }
            store.sync().await;
            parts.push((name, growth(before)));
        }
        let tagger = Arc::new(Tagger::new(TaggerConfig::default()));
        if !store_only {
            let before = (net(&region), live());
            let _task = tagger.spawn(&store);
            // Wait until the tagger is done with its first bundle, every pod and container,
            // and with the reconciling that follows it (whose scratch would be counted
            // otherwise): a container notified after it is tagged after both.
            let marker = "f".repeat(64);
            let container = Container { id: wm_core::Id::from(marker.as_str()), ..Container::default() };
            store.notify(vec![CollectorEvent::set(Source::Runtime, container)]).await;
            while !tagger.store().contains(&format!("container_id://{marker}")) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            store.sync().await;
            parts.push(("tagger", growth(before)));
        }
        (store, tagger)
    });
    let total = net(&region);
    let live_allocations = {
        let stats = region.change();
        stats.allocations.saturating_sub(stats.deallocations)
    };
    let rss_after = rss_bytes();
    let per_pod = total / pods;
    let rss_per_pod = rss_after.saturating_sub(rss_before) / pods;
    // The target is on resident memory: what the node pays, the allocator's overhead and
    // fragmentation included.
    let verdict = if rss_per_pod <= 4096 { "ok" } else { "MISS" };
    let name = if store_only { "store.memory.store_only" } else { "store.memory" };
    println!(
        "{name}  {rss_per_pod} B/pod resident  -  -  <=4096 B  {verdict}  ({per_pod} B/pod counted in {} live allocations per pod; {} entities, {} tagged)",
        live_allocations / pods,
        store.dump(false).entities.len(),
        tagger.store().len()
    );
    // Where the bytes go: measured per part, and the tagger's split counted from its structures.
    for (part, (bytes, allocations)) in parts {
        println!("  {part:<40} {:>6} B/pod in {:>3} allocations", bytes / pods as i64, allocations / pods as i64);
    }
    if !store_only {
        let f = tagger.store().footprint();
        for (part, bytes) in [
            ("tagger: tags (each shared part once)", f.tags),
            ("tagger: records (sources, merge bits)", f.records),
            ("tagger: map entries", f.entries),
            ("tagger: key text not shared", f.keys),
            ("tagger: pod -> containers index", tagger.children_bytes()),
        ] {
            println!("    {part:<38} {:>6} B/pod (counted)", bytes / pods);
        }
    }
    if !store_only {
        replica(&tagger, pods);
    }
    drop((store, tagger));
}

/// `store.memory.replica`: what a remote-tagger replica of the same tags holds (`flavor-light`,
/// the Python module), fed the snapshot a tag stream sends, in responses of 1,000 entities:
/// only the replica's work on each response is measured (the response is built before and
/// dropped after). The target: every container of these pods has about 280 bytes of tags no
/// other entity shares (its id, name and display name) and an 80-byte id to be found by, which
/// the wire gives whole, entity by entity; 2 KiB per pod keeps all of that and one copy of
/// everything shared.
fn replica(tagger: &Tagger, pods: usize) {
    use agent_bin::grpc::wire_entity;
    use wm_ipc::proto::model::v1 as model;
    let ids: Vec<String> = tagger.store().list().into_iter().map(|(id, _)| id).collect();
    let replica = wm_ipc::replica::RemoteTagger::new();
    let mut held = 0;
    for (n, chunk) in ids.chunks(1_000).enumerate() {
        let events = chunk
            .iter()
            .map(|id| model::StreamTagsEvent {
                r#type: model::EventType::Added as i32,
                entity: Some(wire_entity(tagger, id, tagger::TagCardinality::High, false)),
            })
            .collect();
        let response = model::StreamTagsResponse { events };
        let region = Region::new(GLOBAL);
        replica.apply(&response, n == 0);
        held += net(&region);
    }
    let per_pod = held / pods;
    let verdict = if per_pod <= 2048 { "ok" } else { "MISS" };
    println!(
        "store.memory.replica  {per_pod} B/pod  -  -  <=2048 B  {verdict}  ({} entities, {} distinct tag lists)",
        replica.entities().len(),
        wm_ipc::replica::RemoteTagger::lists_interned()
    );
}
