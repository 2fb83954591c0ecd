//! Under concurrent notifies from several tasks while subscribers join and leave, every
//! subscriber's view (snapshot, then events) equals the store's final state, with nothing lost
//! and nothing repeated. Randomized with fixed seeds; the seed is printed on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;

use test_support::rng::XorShift as Rng;
use wm_core::{CollectorEvent, Container, Entity, EventType, Filter, Kind, Source, StoreReader, SubscriberPriority};
use wm_store::{Store, StoreConfig, Subscription, TryRecv};

const SOURCES: [Source; 3] = [Source::Runtime, Source::NodeOrchestrator, Source::ClusterOrchestrator];

fn random_batch(rng: &mut Rng) -> Vec<CollectorEvent> {
    (0..1 + rng.below(5))
        .map(|_| {
            let id = format!("c{}", rng.below(12));
            let source = SOURCES[rng.below(3) as usize];
            if rng.below(3) == 0 {
                CollectorEvent::unset(source, Container { id: id.into(), ..Container::default() })
            } else {
                let mut c = Container { id: id.into(), ..Container::default() };
                // Each source fills some fields, so merges really differ from single versions.
                match rng.below(3) {
                    0 => c.name = format!("n{}", rng.below(3)).into(),
                    1 => c.details.hostname = format!("h{}", rng.below(3)),
                    _ => {
                        c.labels.insert(format!("k{}", rng.below(2)), format!("v{}", rng.below(2)));
                    }
                }
                CollectorEvent::set(source, c)
            }
        })
        .collect()
}

/// A subscriber's view, built only from what it received.
struct View {
    sub: Subscription,
    source: Option<Source>,
    entities: BTreeMap<String, Entity>,
    got_snapshot: bool,
}

impl View {
    fn drain(&mut self) -> Result<(), String> {
        loop {
            let bundle = match self.sub.try_recv() {
                TryRecv::Bundle(b) => b,
                TryRecv::Empty => return Ok(()),
                other => return Err(format!("{}: unexpected {other:?}", self.sub.name())),
            };
            if !self.got_snapshot {
                self.got_snapshot = true;
                for e in &bundle.events {
                    self.entities.insert(e.entity.id_str().to_string(), e.entity.clone());
                }
                continue;
            }
            for e in &bundle.events {
                let id = e.entity.id_str().to_string();
                match e.event_type {
                    EventType::Set => {
                        if self.source.is_none() && self.entities.get(&id) == Some(&e.entity) {
                            return Err(format!("{}: set of {id} repeats what it already had", self.sub.name()));
                        }
                        self.entities.insert(id, e.entity.clone());
                    }
                    EventType::Unset => {
                        if self.entities.remove(&id).is_none() {
                            return Err(format!("{}: unset of {id}, which it never had", self.sub.name()));
                        }
                    }
                }
            }
        }
    }
}

fn expected(store: &Store, source: Option<Source>) -> BTreeMap<String, Entity> {
    match source {
        None => StoreReader::list(store, Kind::Container).into_iter().map(|e| (e.id_str().to_string(), e)).collect(),
        Some(s) => {
            let dumped: BTreeMap<String, Entity> = store
                .dump(true)
                .entities
                .into_iter()
                .filter_map(|d| {
                    let v = d.per_source?.into_iter().find(|v| v.source == s)?;
                    Some((d.id.id.to_string(), v.entity))
                })
                .collect();
            // What a collector reads of one source's versions is what the dump holds.
            let listed = StoreReader::list_from(store, Kind::Container, s).into_iter();
            assert_eq!(listed.map(|e| (e.id_str().to_string(), e)).collect::<BTreeMap<_, _>>(), dumped);
            dumped
        }
    }
}

async fn run(seed: u64) -> Result<(), String> {
    // Undrained tagger-priority views cost an ack timeout each: keep it short, the ordering
    // is what this test is about, not the timeout.
    let mut config = StoreConfig::default();
    config.ack_timeout = std::time::Duration::from_millis(10);
    let store = Store::builder().config(config).build();
    store.start();
    let mut rng = Rng::new(seed);
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let store = store.clone();
        let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(w + 1));
        writers.push(tokio::spawn(async move {
            for _ in 0..150 {
                store.notify(random_batch(&mut rng)).await;
                if rng.below(4) == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    let mut views: Vec<View> = Vec::new();
    let mut joined = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        // Join, leave and read at random points while the writers run.
        match rng.below(4) {
            0 if views.len() < 6 => {
                let source = if rng.below(2) == 0 { None } else { Some(SOURCES[rng.below(3) as usize]) };
                let filter = source.map_or_else(Filter::all, |s| Filter::all().with_source(s));
                let priority = [SubscriberPriority::Tagger, SubscriberPriority::Normal][rng.below(2) as usize];
                joined += 1;
                let sub = store.subscribe(&format!("s{joined}"), priority, filter);
                views.push(View { sub, source, entities: BTreeMap::new(), got_snapshot: false });
            }
            1 if !views.is_empty() => {
                let i = rng.below(views.len() as u64) as usize;
                views.swap_remove(i);
            }
            _ => {
                for v in &mut views {
                    v.drain()?;
                }
            }
        }
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.map_err(|e| e.to_string())?;
    }
    store.sync().await;
    if views.is_empty() {
        let sub = store.subscribe("late", SubscriberPriority::Normal, Filter::all());
        views.push(View { sub, source: None, entities: BTreeMap::new(), got_snapshot: false });
    }
    for v in &mut views {
        v.drain()?;
        let want = expected(&store, v.source);
        if v.entities != want {
            return Err(format!(
                "{} ({:?}) diverged:\n view:  {:?}\n store: {:?}",
                v.sub.name(),
                v.source,
                v.entities.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>()
            ));
        }
    }
    store.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_view_converges_to_the_store_under_concurrent_notifies() {
    let seeds: Vec<u64> = (1..=20).map(|i| 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i)).collect();
    for seed in seeds {
        if let Err(e) = run(seed).await {
            panic!("seed {seed:#x}: {e}");
        }
    }
}
