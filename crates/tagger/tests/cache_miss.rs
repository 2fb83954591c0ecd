//! A lookup of an unknown container fetches it once, however many lookups race for it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tagger::{ContainerFetcher, FetchLimits, TagCardinality, Tagger, TaggerConfig};
use wm_core::{Container, ContainerImage, Runtime};

struct Slow {
    calls: AtomicUsize,
    delay: Duration,
}

#[async_trait]
impl ContainerFetcher for Slow {
    fn accepts(&self, id: &str) -> bool {
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    }

    async fn fetch(&self, id: &str) -> Option<Container> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        (!id.starts_with("gone")).then(|| Container {
            id: id.into(),
            name: "late".into(),
            runtime: Some(Runtime::Docker),
            image: ContainerImage::parse("nginx:1.25"),
            ..Container::default()
        })
    }
}

fn tagger(delay: Duration, timeout: Duration) -> (Arc<Tagger>, Arc<Slow>) {
    tagger_within(delay, timeout, FetchLimits::default())
}

fn tagger_within(delay: Duration, timeout: Duration, limits: FetchLimits) -> (Arc<Tagger>, Arc<Slow>) {
    let fetcher = Arc::new(Slow { calls: AtomicUsize::new(0), delay });
    let tagger = Tagger::new(TaggerConfig::default()).with_fetcher_limits(fetcher.clone(), timeout, limits);
    (Arc::new(tagger), fetcher)
}

fn refused(tagger: &Tagger, reason: &str) -> u64 {
    tagger.fetches_refused().iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n)
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
    // 300 fetches as fast as they go: no rate limit here, this is about the flights.
    let limits = FetchLimits { per_second: 1_000_000, ..FetchLimits::default() };
    let (tagger, fetcher) = tagger_within(Duration::ZERO, Duration::from_secs(5), limits);
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

#[tokio::test]
async fn ids_no_runtime_accepts_are_refused_without_a_fetch_and_counted() {
    let (tagger, fetcher) = tagger_fast();
    for hostile in ["x/../../system/df", "c1/json?size=true", "c1%2f..", "a b", "c1#frag"] {
        let entity = format!("container_id://{hostile}");
        assert!(tagger.tag_or_fetch(&entity, TagCardinality::High).await.is_empty(), "{hostile}");
    }
    assert_eq!(fetcher.calls.load(Ordering::SeqCst), 0, "no hostile id reached the runtime");
    assert_eq!(refused(&tagger, "invalid_id"), 5, "{:?}", tagger.fetches_refused());
    assert_eq!(tagger.fetch_negative_bytes(), 0, "refused ids take no room in the negative cache");
}

#[tokio::test(start_paused = true)]
async fn fetches_past_the_concurrency_and_the_rate_are_refused_and_counted() {
    let limits = FetchLimits { concurrency: 2, per_second: 3 };
    let (tagger, fetcher) = tagger_within(Duration::from_secs(1), Duration::from_secs(5), limits);
    // Five distinct ids at once: two run, three are refused for concurrency.
    let lookups: Vec<_> = (0..5)
        .map(|n| {
            let tagger = tagger.clone();
            tokio::spawn(
                async move { tagger.tag_or_fetch(&format!("container_id://c{n}"), TagCardinality::High).await },
            )
        })
        .collect();
    let mut tagged = 0;
    for lookup in lookups {
        tagged += usize::from(!lookup.await.unwrap().is_empty());
    }
    assert_eq!((tagged, fetcher.calls.load(Ordering::SeqCst)), (2, 2));
    assert_eq!(refused(&tagger, "concurrency"), 3);

    // Three a second: in one instant (fetches that take no time), the fourth is refused.
    let limits = FetchLimits { concurrency: 8, per_second: 3 };
    let (tagger, fetcher) = tagger_within(Duration::ZERO, Duration::from_secs(5), limits);
    for n in 0..4 {
        let tags = tagger.tag_or_fetch(&format!("container_id://r{n}"), TagCardinality::High).await;
        assert_eq!(tags.is_empty(), n == 3, "r{n}");
    }
    assert_eq!((fetcher.calls.load(Ordering::SeqCst), refused(&tagger, "rate")), (3, 1));
    // A refused id is not taken for unknown: a second later (the bucket refilled) it is fetched.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(!tagger.tag_or_fetch("container_id://r3", TagCardinality::High).await.is_empty());
}

#[tokio::test]
async fn twenty_thousand_distinct_unknown_ids_cost_bounded_memory() {
    let limits = FetchLimits { per_second: 1_000_000, ..FetchLimits::default() };
    let (tagger, fetcher) = tagger_within(Duration::ZERO, Duration::from_secs(1), limits);
    let mut most = 0;
    for n in 0..20_000 {
        // 64 characters, as long as a docker id; every one unknown to the runtime.
        let id = format!("gone{n:060}");
        assert!(tagger.tag_or_fetch(&format!("container_id://{id}"), TagCardinality::High).await.is_empty());
        most = most.max(tagger.fetch_negative_bytes());
    }
    assert_eq!(fetcher.calls.load(Ordering::SeqCst), 20_000, "each distinct id was asked once");
    assert!(most <= tagger::MAX_NEGATIVE_BYTES, "negative cache reached {most} bytes");
    assert!(most > tagger::MAX_NEGATIVE_BYTES / 2, "the cache filled before it was cut: {most}");
    println!("20,000 distinct unknown ids: the negative cache peaked at {most} bytes");
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_mid_fetch_leaves_no_flight_behind() {
    let (tagger, fetcher) = tagger(Duration::from_secs(60), Duration::from_secs(120));
    for n in 0..50 {
        let entity = format!("container_id://abandoned{n}");
        // A client's deadline: the lookup is dropped while its fetch runs.
        let asked = tokio::time::timeout(Duration::from_secs(1), tagger.tag_or_fetch(&entity, TagCardinality::High));
        assert!(asked.await.is_err());
    }
    assert_eq!(fetcher.calls.load(Ordering::SeqCst), 50, "each lookup started its fetch, then gave up");
    assert_eq!(tagger.fetches_in_flight(), 0, "no flight is left behind by the callers that gave up");
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_while_others_wait_starts_no_second_fetch() {
    let (tagger, fetcher) = tagger(Duration::from_secs(10), Duration::from_secs(60));
    let entity = "container_id://shared";
    // One lookup waits for the fetch to the end; a second joins it and gives up after 1 s.
    let patient = {
        let tagger = tagger.clone();
        tokio::spawn(async move { tagger.tag_or_fetch(entity, TagCardinality::High).await.to_vec() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = tokio::time::timeout(Duration::from_secs(1), tagger.tag_or_fetch(entity, TagCardinality::High));
    assert!(asked.await.is_err(), "the second lookup gave up");
    assert_eq!(tagger.fetches_in_flight(), 1, "the flight stays while the first lookup waits on it");
    // A third lookup, after the second gave up, joins the same fetch instead of starting one.
    let tags = tagger.tag_or_fetch(entity, TagCardinality::High).await.to_vec();
    assert!(tags.contains(&"container_name:late".to_owned()), "{tags:?}");
    assert!(patient.await.unwrap().contains(&"container_name:late".to_owned()));
    assert_eq!(fetcher.calls.load(Ordering::SeqCst), 1, "one fetch for the three lookups");
    assert_eq!(tagger.fetches_in_flight(), 0, "the last lookup to end removed the flight");
}
