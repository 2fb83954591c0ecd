//! `store.memory` (BENCHMARKS.md): bytes per pod held by the store and the tagger, for 100k pods
//! of 3 containers shaped like the real kubelet fixtures (about 2 labels of 50 bytes, 3
//! annotations of 350 bytes with one long `created-by` JSON, one ReplicaSet owner), plus each
//! container as its runtime reports it. Measured as net heap bytes by a counting allocator, and
//! as resident-set growth. `--quick`: 10k pods.

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failed unwrap is a failed run

use std::alloc::System;
use std::sync::Arc;
use std::time::Duration;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tagger::{Tagger, TaggerConfig};
use wm_core::{
    CollectorEvent, Container, ContainerImage, ContainerState, ContainerStatus, EntityId, Kind, KubernetesPod,
    OrchestratorContainer, PodOwner, Runtime, Source, StrMap, Timestamp,
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

fn pod(i: usize) -> (KubernetesPod, Vec<Container>) {
    let deploy = format!("deploy-{}", i % 2000);
    let rs = format!("{deploy}-5d8f7c9b4");
    let name = format!("{rs}-{:05x}", i % 0xfffff);
    let uid = format!("{:08x}-1c2d-4e5f-8a9b-{:012x}", i, i);
    let namespace = format!("team-{}", i % 40);
    let labels: StrMap = [("app", deploy.as_str()), ("pod-template-hash", "5d8f7c9b4")].into_iter().collect();
    let created_by = format!(
        r#"{{"kind":"SerializedReference","apiVersion":"v1","reference":{{"kind":"ReplicaSet","namespace":"{namespace}","name":"{rs}","uid":"6f1c2d3e-4a5b-11e8-9c2d-42010a840{:03}","apiVersion":"extensions","resourceVersion":"{i}"}}}}"#,
        i % 1000
    );
    let annotations: StrMap = [
        ("kubernetes.io/created-by", created_by.as_str()),
        ("kubernetes.io/config.seen", "2026-11-01T10:00:00.000000000Z"),
        ("kubernetes.io/config.source", "api"),
    ]
    .into_iter()
    .collect();
    let image = ContainerImage::parse(&format!("registry.example.com/{deploy}:1.{}", i % 9));
    let ids: Vec<String> = (0..3).map(|c| format!("{:060x}{c:04x}", i)).collect();
    let names = ["app", "sidecar", "log-shipper"];
    let p = KubernetesPod {
        id: uid.as_str().into(),
        name: name.clone(),
        namespace: namespace.clone(),
        labels,
        annotations,
        owners: vec![PodOwner { kind: "ReplicaSet".into(), name: rs.clone(), id: format!("rs-{}", i % 2000) }],
        phase: "Running".into(),
        ready: true,
        ip: format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255),
        node_name: "node-1".into(),
        qos_class: "Burstable".into(),
        containers: ids
            .iter()
            .zip(names)
            .map(|(id, n)| OrchestratorContainer { id: id.clone(), name: n.into(), image: image.clone() })
            .collect(),
        ..KubernetesPod::default()
    };
    let containers = ids
        .iter()
        .zip(names)
        .map(|(id, n)| {
            let labels: StrMap = [
                ("io.kubernetes.container.name", n),
                ("io.kubernetes.pod.name", name.as_str()),
                ("io.kubernetes.pod.namespace", namespace.as_str()),
                ("io.kubernetes.pod.uid", uid.as_str()),
            ]
            .into_iter()
            .collect();
            Container {
                id: id.as_str().into(),
                name: format!("k8s_{n}_{name}_{namespace}_{uid}_0"),
                labels,
                image: image.clone(),
                runtime: Some(Runtime::Containerd),
                state: ContainerState {
                    running: true,
                    status: ContainerStatus::Running,
                    started_at: Some(Timestamp::from_unix(1_790_000_000, 0)),
                    ..ContainerState::default()
                },
                pid: 1000 + i as u32,
                owner: Some(EntityId::new(Kind::KubernetesPod, uid.as_str())),
                ..Container::default()
            }
        })
        .collect();
    (p, containers)
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
        for start in (0..pods).step_by(100) {
            let mut batch = Vec::with_capacity(400);
            for i in start..(start + 100).min(pods) {
                let (p, containers) = pod(i);
                batch.push(CollectorEvent::set(Source::NodeOrchestrator, p));
                batch.extend(containers.into_iter().map(|c| CollectorEvent::set(Source::Runtime, c)));
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
