//! `tagger.lookup`, `tagger.lookup_under_writes` and `tagger.lookup.10k_churn` (BENCHMARKS.md).
//!
//! 100k entities (50k containers with ~20 tags, 50k pods with ~12), looked up at random by id at
//! high cardinality. Baseline in the same run: a plain `HashMap<String, Arc<[String]>>` get and an
//! `Arc` clone. Under writes: the same lookups on 2 threads while a writer replaces 10k entities'
//! tags per second, against the idle figure. `--quick` does fewer lookups.
//!
//! At 10,000 live entities under churn: a node at its limits, where containers come and go
//! rather than change. `tagger.lookup.10k` is the idle lookup among 10,000 (same baseline as
//! above, over the same 10,000); `tagger.lookup.10k_churn` the same lookups of live entities on 2
//! threads while a writer adds 1,000 new containers a second and deletes the 1,000 oldest (the
//! live set slides; far beyond what a daemon creates, see `churn.max_rate`), against the idle
//! figure.

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failed unwrap is a failed run

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tagger::{ManualClock, TagCardinality, TagInfo, TagSource, TagStore};
use test_support::rng::XorShift as Rng;

const ENTITIES: usize = 100_000;

fn tags_of(i: usize, generation: u64) -> (String, TagInfo) {
    let mut t = TagInfo::default();
    if i.is_multiple_of(2) {
        let id = format!("{i:064x}");
        t.add(TagCardinality::Low, "image_name", &format!("registry.example.com/team/app-{}", i % 50));
        t.add(TagCardinality::Low, "short_image", &format!("app-{}", i % 50));
        t.add(TagCardinality::Low, "image_tag", &format!("1.{}", i % 7));
        t.add(TagCardinality::Low, "kube_namespace", &format!("ns-{}", i % 20));
        t.add(TagCardinality::Low, "kube_deployment", &format!("deploy-{}", i % 500));
        t.add(TagCardinality::Low, "kube_replica_set", &format!("deploy-{}-5d8f7c9b4", i % 500));
        t.add(TagCardinality::Low, "kube_ownerref_kind", "replicaset");
        t.add(TagCardinality::Low, "kube_container_name", "app");
        t.add(TagCardinality::Low, "kube_qos", "Burstable");
        t.add(TagCardinality::Low, "pod_phase", "running");
        t.add(TagCardinality::Low, "kube_app_name", &format!("app-{}", i % 50));
        t.add_standard("env", "prod");
        t.add_standard("service", &format!("svc-{}", i % 100));
        t.add_standard("version", &format!("{generation}"));
        t.add(TagCardinality::Orchestrator, "pod_name", &format!("deploy-{}-5d8f7c9b4-x{i}", i % 500));
        t.add(TagCardinality::Orchestrator, "kube_ownerref_name", &format!("deploy-{}-5d8f7c9b4", i % 500));
        t.add(TagCardinality::High, "container_id", &id);
        t.add(TagCardinality::High, "container_name", &format!("k8s_app_deploy-{i}"));
        t.add(TagCardinality::High, "display_container_name", &format!("app_deploy-{i}"));
        (format!("container_id://{id}"), t)
    } else {
        t.add(TagCardinality::Low, "kube_namespace", &format!("ns-{}", i % 20));
        t.add(TagCardinality::Low, "kube_deployment", &format!("deploy-{}", i % 500));
        t.add(TagCardinality::Low, "kube_replica_set", &format!("deploy-{}-5d8f7c9b4", i % 500));
        t.add(TagCardinality::Low, "kube_ownerref_kind", "replicaset");
        t.add(TagCardinality::Low, "kube_qos", "Burstable");
        t.add(TagCardinality::Low, "pod_phase", "running");
        t.add(TagCardinality::Low, "kube_service", &format!("svc-{}", i % 100));
        t.add_standard("env", "prod");
        t.add_standard("version", &format!("{generation}"));
        t.add(TagCardinality::Orchestrator, "pod_name", &format!("deploy-{}-5d8f7c9b4-x{i}", i % 500));
        t.add(TagCardinality::Orchestrator, "kube_ownerref_name", &format!("deploy-{}-5d8f7c9b4", i % 500));
        (format!("kubernetes_pod_uid://{:08x}-0000-4000-8000-{:012x}", i, i), t)
    }
}

/// Nanoseconds per lookup of `lookups` random known ids.
fn time_ours(store: &TagStore, ids: &[String], lookups: usize, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let mut sum = 0usize;
    for _ in 0..lookups {
        let id = &ids[(rng.next_u64() % ids.len() as u64) as usize];
        let tags = store.tag(id, TagCardinality::High);
        sum += tags.len();
        black_box(&tags);
    }
    black_box(sum);
    start.elapsed().as_nanos() as f64 / lookups as f64
}

fn time_baseline(map: &HashMap<String, Arc<[String]>>, ids: &[String], lookups: usize, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let mut sum = 0usize;
    for _ in 0..lookups {
        let id = &ids[(rng.next_u64() % ids.len() as u64) as usize];
        let tags = map.get(id.as_str()).cloned();
        sum += tags.as_ref().map_or(0, |t| t.len());
        black_box(&tags);
    }
    black_box(sum);
    start.elapsed().as_nanos() as f64 / lookups as f64
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let lookups = if quick { 500_000 } else { 5_000_000 };
    let store = Arc::new(TagStore::new(Arc::new(ManualClock::default()), Duration::from_secs(300)));
    let mut baseline: HashMap<String, Arc<[String]>> = HashMap::new();
    let mut ids = Vec::with_capacity(ENTITIES);
    for i in 0..ENTITIES {
        let (id, info) = tags_of(i, 0);
        baseline.insert(id.clone(), info.up_to(TagCardinality::High).into());
        store.set(&id, TagSource::Container, info);
        ids.push(id);
    }
    let ids = Arc::new(ids);

    // Best of 3, interleaved.
    let (mut ours, mut base) = (f64::MAX, f64::MAX);
    for round in 0..3 {
        base = base.min(time_baseline(&baseline, &ids, lookups, 7 + round));
        ours = ours.min(time_ours(&store, &ids, lookups, 7 + round));
    }
    let ratio = ours / base;
    let verdict = if ratio <= 1.5 { "ok" } else { "MISS" };
    println!("tagger.lookup  {ours:.1} ns  {base:.1} ns  {ratio:.2}x  <=1.50x  {verdict}");

    // Under writes: 2 reader threads, one writer replacing 10k entities' tags per second.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(99);
            let mut generation = 1;
            let mut written = 0u64;
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                // 10 updates per millisecond.
                for _ in 0..10 {
                    let i = (rng.next_u64() % ENTITIES as u64) as usize;
                    let (id, info) = tags_of(i, generation);
                    store.set(&id, TagSource::Container, info);
                    written += 1;
                }
                generation += 1;
                let due = started + Duration::from_micros(written * 100);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            written as f64 / started.elapsed().as_secs_f64()
        })
    };
    let readers: Vec<_> = (0..2u64)
        .map(|t| {
            let (store, ids) = (store.clone(), ids.clone());
            std::thread::spawn(move || time_ours(&store, &ids, lookups, 1000 + t))
        })
        .collect();
    let under: Vec<f64> = readers.into_iter().map(|r| r.join().expect("reader")).collect();
    stop.store(true, Ordering::Relaxed);
    let write_rate = writer.join().expect("writer");
    let worst = under.iter().copied().fold(0.0, f64::max);
    let ratio = worst / ours;
    let verdict = if ratio <= 2.0 { "ok" } else { "MISS" };
    println!(
        "tagger.lookup_under_writes  {worst:.1} ns  {ours:.1} ns  {ratio:.2}x  <=2.00x  {verdict}  (writes: {write_rate:.0}/s)"
    );
    churn(lookups);
}

/// Live entities in the churn lines.
const LIVE: usize = 10_000;

/// Nanoseconds per lookup of `lookups` random live ids: those of `ids` from `head` on (the
/// writer deletes below it), `LIVE` of them.
fn time_sliding(store: &TagStore, ids: &[String], head: &AtomicUsize, lookups: usize, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let mut sum = 0usize;
    for _ in 0..lookups {
        let first = head.load(Ordering::Relaxed);
        let id = &ids[first + (rng.next_u64() % LIVE as u64) as usize];
        let tags = store.tag(id, TagCardinality::High);
        sum += tags.len();
        black_box(&tags);
    }
    black_box(sum);
    start.elapsed().as_nanos() as f64 / lookups as f64
}

/// `tagger.lookup.10k` and `tagger.lookup.10k_churn`.
fn churn(lookups: usize) {
    // Containers only (even numbers of `tags_of`), enough for the writer's whole run: it adds
    // at most 1,000 a second, and the readers' lookups take a few seconds.
    let total = LIVE + 100_000;
    let all: Vec<(String, TagInfo)> = (0..total).map(|n| tags_of(2 * n, 0)).collect();
    let ids: Arc<Vec<String>> = Arc::new(all.iter().map(|(id, _)| id.clone()).collect());
    let infos: Arc<Vec<TagInfo>> = Arc::new(all.into_iter().map(|(_, info)| info).collect());
    // No grace period, and the writer prunes as it goes: the store holds the 10,000 live ones
    // (and at most 100 deleted), as a node's does once deleted containers' grace has passed.
    let store = Arc::new(TagStore::new(Arc::new(ManualClock::default()), Duration::ZERO));
    let mut baseline: HashMap<String, Arc<[String]>> = HashMap::new();
    for n in 0..LIVE {
        baseline.insert(ids[n].clone(), infos[n].up_to(TagCardinality::High).into());
        store.set(&ids[n], TagSource::Container, infos[n].clone());
    }
    let head = Arc::new(AtomicUsize::new(0));
    let live_ids = &ids[..LIVE];
    let (mut idle, mut base) = (f64::MAX, f64::MAX);
    for round in 0..3 {
        base = base.min(time_baseline(&baseline, live_ids, lookups, 17 + round));
        idle = idle.min(time_sliding(&store, &ids, &head, lookups, 17 + round));
    }
    let ratio = idle / base;
    println!(
        "tagger.lookup.10k  {idle:.1} ns  {base:.1} ns  {ratio:.2}x  <=1.50x  {}  ({LIVE} live containers)",
        if ratio <= 1.5 { "ok" } else { "MISS" }
    );

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, ids, infos, head, stop) = (store.clone(), ids.clone(), infos.clone(), head.clone(), stop.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut replaced = 0usize;
            while !stop.load(Ordering::Relaxed) && LIVE + replaced < ids.len() {
                // One new container and the oldest one gone, 1,000 of each a second.
                let next = LIVE + replaced;
                store.set(&ids[next], TagSource::Container, infos[next].clone());
                head.store(replaced + 1, Ordering::Relaxed);
                store.delete(&ids[replaced], TagSource::Container);
                replaced += 1;
                if replaced.is_multiple_of(100) {
                    store.prune();
                }
                let due = started + Duration::from_millis(replaced as u64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            replaced as f64 / started.elapsed().as_secs_f64()
        })
    };
    let readers: Vec<_> = (0..2u64)
        .map(|t| {
            let (store, ids, head) = (store.clone(), ids.clone(), head.clone());
            std::thread::spawn(move || time_sliding(&store, &ids, &head, lookups, 2000 + t))
        })
        .collect();
    let under: Vec<f64> = readers.into_iter().map(|r| r.join().expect("reader")).collect();
    stop.store(true, Ordering::Relaxed);
    let rate = writer.join().expect("writer");
    let worst = under.iter().copied().fold(0.0, f64::max);
    let ratio = worst / idle;
    println!(
        "tagger.lookup.10k_churn  {worst:.1} ns  {idle:.1} ns  {ratio:.2}x  <=2.00x  {}  ({rate:.0} containers added and as many deleted per second, {LIVE} live, {} held at the end)",
        if ratio <= 2.0 { "ok" } else { "MISS" },
        store.len()
    );
}
