//! A lookup of an unknown container fetches it once, however many lookups race for it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tagger::{ContainerFetcher, TagCardinality, Tagger, TaggerConfig};
use wm_core::{Container, ContainerImage, Runtime};

struct Slow {
    calls: AtomicUsize,
    delay: Duration,
}

#[async_trait]
impl ContainerFetcher for Slow {
    async fn fetch(&self, id: &str) -> Option<Container> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        (id != "gone").then(|| Container {
            id: id.into(),
            name: "late".into(),
            runtime: Some(Runtime::Docker),
            image: ContainerImage::parse("nginx:1.25"),
            ..Container::default()
        })
    }
}

fn tagger(delay: Duration, timeout: Duration) -> (Arc<Tagger>, Arc<Slow>) {
    let fetcher = Arc::new(Slow { calls: AtomicUsize::new(0), delay });
    let tagger = Tagger::new(TaggerConfig::default()).with_fetcher(fetcher.clone(), timeout);
    (Arc::new(tagger), fetcher)
}

#[tokio::test(start_paused = true)]
async fn a_thousand_lookups_of_one_unknown_container_cause_one_fetch() {
    let (tagger, fetcher) = tagger(Duration::from_millis(200), Duration::from_secs(2));
    let lookups: Vec<_> = (0..1000)
        .map(|_| {
            let tagger = tagger.clone();
            tokio::spawn(async move { tagger.tag_or_fetch("container_id://c1", TagCardinality::High).await.to_vec() })
        })
        .collect();
    for lookup in lookups {
        let tags = lookup.await.unwrap();
        assert!(tags.contains(&"container_name:late".to_owned()), "{tags:?}");
        assert!(tags.contains(&"image_name:nginx".to_owned()), "{tags:?}");
    }
    assert_eq!(fetcher.calls.load(Ordering::SeqCst), 1);
    // Known now: no further fetch.
    assert!(!tagger.tag_or_fetch("container_id://c1", TagCardinality::Low).await.is_empty());
    assert_eq!(fetcher.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fetch_past_its_timeout_answers_empty_and_unknown_ids_stay_unknown() {
    let (tagger, fetcher) = tagger(Duration::from_secs(60), Duration::from_secs(1));
    let started = tokio::time::Instant::now();
    assert!(tagger.tag_or_fetch("container_id://slow", TagCardinality::High).await.is_empty());
    assert_eq!(started.elapsed(), Duration::from_secs(1));

    let (tagger, _) = tagger_fast();
    assert!(tagger.tag_or_fetch("container_id://gone", TagCardinality::High).await.is_empty());
    assert!(tagger.tag_or_fetch("kubernetes_pod_uid://p1", TagCardinality::High).await.is_empty());
    assert_eq!(fetcher.calls.load(Ordering::SeqCst), 1);
}

fn tagger_fast() -> (Arc<Tagger>, Arc<Slow>) {
    tagger(Duration::ZERO, Duration::from_secs(1))
}

#[tokio::test]
async fn an_id_the_runtime_did_not_know_is_not_fetched_again_at_once() {
    let (tagger, fetcher) = tagger_fast();
    for _ in 0..3 {
        assert!(tagger.tag_or_fetch("container_id://gone", TagCardinality::High).await.is_empty());
    }
    assert_eq!(fetcher.calls.load(Ordering::SeqCst), 1, "one fetch, then the negative cache answers");
    // Another id is fetched.
    assert!(!tagger.tag_or_fetch("container_id://c1", TagCardinality::High).await.is_empty());
    assert_eq!(fetcher.calls.load(Ordering::SeqCst), 2);
}

/// Lookups that arrive while the fetch finishes (not all at once, as over gRPC) neither start a
/// second fetch nor answer empty: the tags are stored before the flight is cleared, and a new
/// flight first looks whether the one before it stored them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_arriving_as_a_fetch_finishes_cause_no_second_fetch() {
    let (tagger, fetcher) = tagger(Duration::ZERO, Duration::from_secs(5));
    let ids = 300;
    for n in 0..ids {
        let entity = format!("container_id://c{n}");
        let lookups: Vec<_> = (0..16)
            .map(|i| {
                let (tagger, entity) = (tagger.clone(), entity.clone());
                tokio::spawn(async move {
                    for _ in 0..i % 4 {
                        tokio::task::yield_now().await;
                    }
                    tagger.tag_or_fetch(&entity, TagCardinality::High).await.to_vec()
                })
            })
            .collect();
        for lookup in lookups {
            let tags = lookup.await.unwrap();
            assert!(tags.contains(&"container_name:late".to_owned()), "{entity}: {tags:?}");
        }
    }
    assert_eq!(fetcher.calls.load(Ordering::SeqCst), ids, "one fetch per id");
}
