//! `store.memory` (BENCHMARKS.md): bytes per pod held by the store and the tagger, for 100k pods
//! of 3 containers built from the real kubelet fixtures and converted by the kubelet collector:
//! the Deployment-owned pod of `podlist_1.8-2.json` (its labels, its `created-by` annotation, its
//! ReplicaSet owner) made unique per pod (uid, name, container ids) with three containers, each
//! PodList of 100 such pods turned into entities by `wm_collector_kube::kubelet`, plus each
//! container as its runtime reports it. Measured as net heap bytes by a counting allocator, and
//! as resident-set growth. `--quick`: 10k pods. (It lives in agent-bin, the one crate that may
//! link a collector, the store and the tagger together.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failed unwrap is a failed run

use std::alloc::System;
use std::sync::Arc;
use std::time::Duration;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tagger::{Tagger, TaggerConfig};
use wm_collector_kube::kubelet::convert_pod_list;
use wm_core::{
    CollectorEvent, Container, ContainerState, ContainerStatus, EntityId, EnvFilter, Kind, KubernetesPod, Runtime,
    Source, StrMap, Timestamp,
};
use wm_store::Store;

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
                id: c.id.as_str().into(),
                name: format!("k8s_{}_{}_{}_{}_0", c.name, pod.name, pod.namespace, pod.id),
                labels,
                image: c.image.clone(),
                runtime: Some(Runtime::Docker),
                state: ContainerState {
                    running: true,
                    status: ContainerStatus::Running,
                    started_at: Some(Timestamp::from_unix(1_790_000_000, 0)),
                    ..ContainerState::default()
                },
                pid: 1000 + i as u32,
                owner: Some(EntityId::new(Kind::KubernetesPod, &*pod.id)),
                ..Container::default()
            }
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
    let (store, tagger) = runtime.block_on(async {
        let store = Store::new();
        let tagger = Arc::new(Tagger::new(TaggerConfig::default()));
        let _task = (!store_only).then(|| tagger.spawn(&store));
        let template = template();
        let env = EnvFilter::default();
        for start in (0..pods).step_by(100) {
            // One kubelet answer of 100 pods, converted as the collector converts it.
            let items: Vec<serde_json::Value> =
                (start..(start + 100).min(pods)).map(|i| pod_json(&template, i)).collect();
            let list = serde_json::to_vec(&serde_json::json!({ "kind": "PodList", "items": items })).unwrap();
            let converted = convert_pod_list(&list, &env, false).unwrap();
            let mut batch = Vec::with_capacity(700);
            for (offset, entity) in converted.entities.into_iter().enumerate() {
                if let Some(p) = entity.as_kubernetes_pod() {
                    batch.extend(
                        runtime_containers(p, start + offset)
                            .into_iter()
                            .map(|c| CollectorEvent::set(Source::Runtime, c)),
                    );
                }
                batch.push(CollectorEvent::set(Source::NodeOrchestrator, entity));
            }
            store.notify(batch).await;
        }
        // Wait until the tagger has tagged every pod and container.
        while !store_only && tagger.store().len() < pods * 4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store.sync().await;
        (store, tagger)
    });
    let stats = region.change();
    let rss_after = rss_bytes();
    let net =
        (stats.bytes_allocated as isize - stats.bytes_deallocated as isize + stats.bytes_reallocated).max(0) as usize;
    let per_pod = net / pods;
    let rss_per_pod = rss_after.saturating_sub(rss_before) / pods;
    let verdict = if per_pod <= 4096 { "ok" } else { "MISS" };
    let name = if store_only { "store.memory.store_only" } else { "store.memory" };
    println!(
        "{name}  {per_pod} B/pod  -  -  <=4096 B  {verdict}  (resident growth {rss_per_pod} B/pod; published tags {} B/pod; {} entities, {} tagged)",
        tagger.store().published_bytes() / pods,
        store.dump(false).entities.len(),
        tagger.store().len()
    );
    drop((store, tagger));
}
