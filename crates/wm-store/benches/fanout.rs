//! `store.fanout` (BENCHMARKS.md): 1M set events in batches of 100 through the store to 4
//! subscribers acknowledging at once, against a plain tokio mpsc pipeline moving the same
//! `Arc`s to 4 receivers, in the same run. Prints one line:
//! `name  ours  baseline  ratio  target  ok|MISS` (events/s; `--quick`: 100k events).

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use wm_core::{CollectorEvent, Container, Entity, Filter, Source, SubscriberPriority};
use wm_store::Store;

const BATCH: usize = 100;
const IDS: usize = 10_000;
const SUBSCRIBERS: usize = 4;

/// Two versions of each of `IDS` containers: alternating them makes every set a real change.
fn entities() -> [Vec<Entity>; 2] {
    let version = |v: u32| {
        (0..IDS)
            .map(|i| {
                let mut c = Container {
                    id: format!("{i:064x}").into(),
                    name: format!("container-{i}"),
                    restart_count: v,
                    ..Container::default()
                };
                c.labels.insert("app", "bench");
                c.image = wm_core::ContainerImage::parse("nginx:1.25");
                Entity::from(c)
            })
            .collect::<Vec<_>>()
    };
    [version(0), version(1)]
}

async fn ours(versions: &[Vec<Entity>; 2], total: usize) -> Duration {
    let store = Store::new();
    let mut readers = Vec::new();
    for n in 0..SUBSCRIBERS {
        let mut sub = store.subscribe(&format!("bench-{n}"), SubscriberPriority::Normal, Filter::all());
        let _snapshot = sub.recv().await;
        readers.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < total {
                match sub.recv().await {
                    Some(Ok(bundle)) => seen += bundle.events.len(), // dropped: acknowledged
                    other => panic!("subscriber ended early: {other:?}"),
                }
            }
        }));
    }
    let start = Instant::now();
    for batch in 0..total / BATCH {
        let first = batch * BATCH;
        let events = (first..first + BATCH)
            .map(|n| CollectorEvent::set(Source::Runtime, versions[(n / IDS) % 2][n % IDS].clone()))
            .collect();
        store.notify(events).await;
    }
    for r in readers {
        r.await.expect("reader");
    }
    let took = start.elapsed();
    store.shutdown();
    took
}

async fn baseline(versions: &[Vec<Entity>; 2], total: usize) -> Duration {
    let (tx, mut rx) = mpsc::channel::<Vec<Entity>>(1024);
    let mut outs = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let (otx, mut orx) = mpsc::channel::<Vec<Entity>>(1024);
        outs.push(otx);
        readers.push(tokio::spawn(async move {
            let mut seen = 0;
            while seen < total {
                seen += orx.recv().await.expect("fan-out open").len();
            }
        }));
    }
    let fanout = tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            for out in &outs {
                out.send(batch.clone()).await.expect("reader open");
            }
        }
    });
    let start = Instant::now();
    for batch in 0..total / BATCH {
        let first = batch * BATCH;
        let events = (first..first + BATCH).map(|n| versions[(n / IDS) % 2][n % IDS].clone()).collect();
        tx.send(events).await.expect("fan-out open");
    }
    for r in readers {
        r.await.expect("reader");
    }
    let took = start.elapsed();
    drop(tx);
    fanout.await.expect("fan-out");
    took
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let total = if quick { 100_000 } else { 1_000_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let versions = entities();
    let rounds = if quick { 1 } else { 3 };
    // Best of a few rounds each, interleaved, so both see the same machine.
    let (mut best_ours, mut best_base) = (Duration::MAX, Duration::MAX);
    for _ in 0..rounds {
        best_base = best_base.min(runtime.block_on(baseline(&versions, total)));
        best_ours = best_ours.min(runtime.block_on(ours(&versions, total)));
    }
    let rate = |d: Duration| total as f64 / d.as_secs_f64();
    let (ours, base) = (rate(best_ours), rate(best_base));
    let ratio = ours / base;
    let verdict = if ratio >= 0.5 { "ok" } else { "MISS" };
    println!("store.fanout  {ours:.0} ev/s  {base:.0} ev/s  {ratio:.2}x  >=0.50x  {verdict}");
}
