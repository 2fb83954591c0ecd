//! Priority order, acknowledgements and slow subscribers, on paused tokio time (no wall clock).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use tokio::time::Instant;
use wm_core::{CollectorEvent, Container, Filter, Source, SubscriberPriority};
use wm_store::{EventBundle, Store, StoreConfig, Subscription, SubscriptionError, TryRecv};

fn container(id: &str) -> Container {
    Container { id: id.into(), name: format!("name-{id}").into(), ..Container::default() }
}

async fn set(store: &Store, id: &str) {
    store.notify(vec![CollectorEvent::set(Source::Runtime, container(id))]).await;
}

async fn next(sub: &mut Subscription) -> EventBundle {
    match sub.recv().await {
        Some(Ok(bundle)) => bundle,
        other => panic!("{}: expected a bundle, got {other:?}", sub.name()),
    }
}

fn assert_empty(sub: &mut Subscription) {
    match sub.try_recv() {
        TryRecv::Empty => {}
        other => panic!("{}: expected nothing waiting, got {other:?}", sub.name()),
    }
}

fn subscribe(store: &Store, name: &str, priority: SubscriberPriority) -> Subscription {
    store.subscribe(name, priority, Filter::all())
}

#[tokio::test(start_paused = true)]
async fn subscribers_are_served_tagger_then_config_provider_then_normal_each_after_the_previous_acked() {
    let store = Store::new();
    // Subscribe out of order: the store orders by priority, not by arrival.
    let mut normal = subscribe(&store, "normal", SubscriberPriority::Normal);
    let mut config = subscribe(&store, "config", SubscriberPriority::ConfigProvider);
    let mut tagger = subscribe(&store, "tagger", SubscriberPriority::Tagger);
    for sub in [&mut normal, &mut config, &mut tagger] {
        assert!(next(sub).await.events.is_empty(), "snapshot of an empty store");
    }

    let t0 = Instant::now();
    set(&store, "c1").await;
    let tagger_bundle = next(&mut tagger).await;
    assert_eq!(tagger_bundle.events.len(), 1);
    // While the tagger holds its bundle, nobody else hears of c1.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_empty(&mut config);
    assert_empty(&mut normal);

    drop(tagger_bundle); // acknowledges
    let config_bundle = next(&mut config).await;
    assert_eq!(t0.elapsed(), Duration::from_millis(300), "served right after the ack, not after the timeout");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_empty(&mut normal);

    let mut config_bundle = config_bundle;
    config_bundle.acknowledge();
    let normal_bundle = next(&mut normal).await;
    assert_eq!(t0.elapsed(), Duration::from_millis(500));
    assert_eq!(normal_bundle.events[0].entity.id_str().as_str(), "c1");
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_never_acks_delays_the_next_one_by_the_ack_timeout_only() {
    let store = Store::new();
    let mut tagger = subscribe(&store, "stuck-tagger", SubscriberPriority::Tagger);
    let mut normal = subscribe(&store, "normal", SubscriberPriority::Normal);
    let _ = next(&mut tagger).await;
    let _ = next(&mut normal).await;

    let t0 = Instant::now();
    set(&store, "c1").await;
    let held_1 = next(&mut tagger).await; // held, never acknowledged in time
    let _ = next(&mut normal).await;
    assert_eq!(t0.elapsed(), Duration::from_secs(1), "the default ack timeout");

    // The stuck subscriber already cost one timeout: the next batches are not delayed again.
    let t1 = Instant::now();
    set(&store, "c2").await;
    set(&store, "c3").await;
    let _ = next(&mut normal).await;
    let _ = next(&mut normal).await;
    assert_eq!(t1.elapsed(), Duration::ZERO);

    // Once it caught up and acknowledged, it is waited for again.
    drop(held_1);
    drop(next(&mut tagger).await);
    drop(next(&mut tagger).await);
    let t2 = Instant::now();
    set(&store, "c4").await;
    let held_4 = next(&mut tagger).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_empty(&mut normal);
    drop(held_4);
    let _ = next(&mut normal).await;
    assert_eq!(t2.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn each_wait_gets_its_whole_ack_timeout_though_the_waits_share_a_timer() {
    let store = Store::new();
    let mut tagger = subscribe(&store, "tagger", SubscriberPriority::Tagger);
    let mut normal = subscribe(&store, "normal", SubscriberPriority::Normal);
    let _ = next(&mut tagger).await;
    let _ = next(&mut normal).await;

    // Acknowledged at once: the shared timer was armed for t0 + 1 s and is left so.
    let t0 = Instant::now();
    set(&store, "c1").await;
    drop(next(&mut tagger).await);
    let _ = next(&mut normal).await;
    assert_eq!(t0.elapsed(), Duration::ZERO);

    // Held from t0 + 900 ms: the timer fires at t0 + 1 s, early for this wait, which must
    // still last its whole second.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let t1 = Instant::now();
    set(&store, "c2").await;
    let held = next(&mut tagger).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_empty(&mut normal);
    let _ = next(&mut normal).await;
    assert_eq!(t1.elapsed(), Duration::from_secs(1), "the whole ack timeout, not what was left of the last one");
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn an_inline_subscriber_runs_in_the_loop_before_lower_priorities_and_stops_when_dropped() {
    use std::sync::{Arc, Mutex};
    let store = Store::new();
    set(&store, "c0").await;
    let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let record = seen.clone();
    let inline = store.subscribe_inline("inline", SubscriberPriority::Tagger, Filter::all(), move |events| {
        record.lock().unwrap().push(events.iter().map(|e| e.entity.id_str().to_string()).collect());
    });
    let mut normal = subscribe(&store, "normal", SubscriberPriority::Normal);
    let _ = next(&mut normal).await;
    store.sync().await;
    assert_eq!(*seen.lock().unwrap(), vec![vec!["c0".to_owned()]], "the snapshot first");

    // The handler has run by the time the lower priority gets the bundle, with no ack wait.
    let t0 = Instant::now();
    set(&store, "c1").await;
    let bundle = next(&mut normal).await;
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(bundle.events[0].entity.id_str().as_str(), "c1");
    assert_eq!(seen.lock().unwrap().last().unwrap(), &vec!["c1".to_owned()]);

    // Dropped: not called again.
    drop(inline);
    set(&store, "c2").await;
    let _ = next(&mut normal).await;
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_inline_subscription_ends_when_the_store_shuts_down() {
    let store = Store::new();
    store.start();
    let mut inline = store.subscribe_inline("inline", SubscriberPriority::Tagger, Filter::all(), |_| {});
    store.shutdown().await;
    assert!(next_or_end(&mut inline).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_stops_reading_is_cut_off_and_the_others_keep_going() {
    let mut config = StoreConfig::default();
    config.subscriber_queue_capacity = 4;
    config.lag_timeout = Duration::from_secs(2);
    config.subscriber_queue_hard_capacity = 100;
    let store = Store::builder().config(config).build();
    store.start();
    let mut slow = subscribe(&store, "slow", SubscriberPriority::Normal);
    let mut fast = subscribe(&store, "fast", SubscriberPriority::Normal);
    let _ = next(&mut fast).await;

    // The slow one holds its snapshot plus three bundles: its queue is full.
    for i in 0..3 {
        set(&store, &format!("a{i}")).await;
    }
    // Full, but not yet for long: still queued.
    set(&store, "b0").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Still full after the lag timeout: this push cuts it off.
    set(&store, "b1").await;
    store.sync().await;

    for i in 0..3 {
        assert_eq!(next(&mut fast).await.events[0].entity.id_str().as_str(), format!("a{i}"));
    }
    assert_eq!(next(&mut fast).await.events[0].entity.id_str().as_str(), "b0");
    assert_eq!(next(&mut fast).await.events[0].entity.id_str().as_str(), "b1");

    match slow.recv().await {
        Some(Err(SubscriptionError::Lagged { subscriber, pending_bundles, full_for })) => {
            assert_eq!(subscriber, "slow");
            assert_eq!(pending_bundles, 5);
            assert!(full_for >= Duration::from_secs(2), "{full_for:?}");
        }
        other => panic!("expected a lag error, got {other:?}"),
    }
    assert!(slow.recv().await.is_none(), "the stream ends after the lag error");

    // The store keeps going, and a new subscription starts from a fresh snapshot.
    set(&store, "c0").await;
    assert_eq!(next(&mut fast).await.events.len(), 1);
    let mut again = subscribe(&store, "slow", SubscriberPriority::Normal);
    let snapshot = next(&mut again).await;
    let ids: Vec<_> = snapshot.events.iter().map(|e| e.entity.id_str().to_string()).collect();
    assert_eq!(ids, ["a0", "a1", "a2", "b0", "b1", "c0"]);
    let lagged = store
        .telemetry()
        .into_iter()
        .find(|m| {
            m.name == "workloadmeta.notifications_sent"
                && m.labels.contains(&("subscriber_name", "slow".into()))
                && m.labels.contains(&("status", "lagged".into()))
        })
        .map(|m| m.value);
    assert_eq!(lagged, Some(wm_store::MetricValue::Counter(1)));
}

#[tokio::test(start_paused = true)]
async fn a_queue_past_its_hard_bound_is_cut_off_at_once() {
    let mut config = StoreConfig::default();
    config.subscriber_queue_capacity = 2;
    config.subscriber_queue_hard_capacity = 4;
    config.lag_timeout = Duration::from_secs(3600);
    let store = Store::builder().config(config).build();
    store.start();
    let mut slow = subscribe(&store, "slow", SubscriberPriority::Normal);
    for i in 0..10 {
        set(&store, &format!("c{i}")).await;
    }
    store.sync().await;
    let mut bundles = 0;
    loop {
        match slow.recv().await {
            Some(Ok(_)) => bundles += 1,
            Some(Err(SubscriptionError::Lagged { .. })) => break,
            other => panic!("expected bundles then a lag error, got {other:?}"),
        }
    }
    assert_eq!(bundles, 0, "a cut-off subscriber's pending bundles are discarded, not half-delivered");
}

#[tokio::test(start_paused = true)]
async fn dropping_a_subscription_unsubscribes_and_nobody_waits_for_its_acks() {
    let store = Store::new();
    let tagger = subscribe(&store, "gone", SubscriberPriority::Tagger);
    let mut normal = subscribe(&store, "normal", SubscriberPriority::Normal);
    let _ = next(&mut normal).await;
    drop(tagger);
    let t0 = Instant::now();
    set(&store, "c1").await;
    let _ = next(&mut normal).await;
    assert_eq!(t0.elapsed(), Duration::ZERO);
    store.sync().await;
    let subscribers = store.telemetry().into_iter().find(|m| m.name == "workloadmeta.subscribers").map(|m| m.value);
    assert_eq!(subscribers, Some(wm_store::MetricValue::Gauge(1.0)));
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_every_stream_and_health_says_the_loop_stopped() {
    let built = Store::builder().build();
    assert!(!built.health().store_alive, "a store not yet started runs no loop");
    built.start();
    assert!(built.health().store_alive);
    let store = Store::new();
    let mut sub = subscribe(&store, "s", SubscriberPriority::Normal);
    let _ = next(&mut sub).await;
    assert!(store.health().store_alive);
    store.shutdown().await;
    assert!(sub.recv().await.is_none());
    tokio::task::yield_now().await;
    assert!(!store.health().store_alive);
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_subscribers_with_fresh_names_leave_a_bounded_set_of_series() {
    let store = Store::new();
    store.start();
    for i in 0..10_000 {
        // As a client reconnecting in a loop names itself: a new ephemeral port each time.
        let mut sub = subscribe(&store, &format!("remote 127.0.0.1:{}", 20_000 + i), SubscriberPriority::Normal);
        next(&mut sub).await; // the snapshot
        // One change each time: the container comes and goes.
        let change = if i % 2 == 0 { CollectorEvent::set } else { CollectorEvent::unset };
        store.notify(vec![change(Source::Runtime, container("c0"))]).await;
        next(&mut sub).await;
        drop(sub);
    }
    let series: Vec<_> =
        store.telemetry().into_iter().filter(|m| m.name == "workloadmeta.notifications_sent").collect();
    assert!(series.len() <= 257, "{} series after 10,000 reconnects", series.len());
    let other = series
        .iter()
        .find(|m| m.labels.contains(&("subscriber_name", "other".into())))
        .map(|m| m.value)
        .expect("the names past the bound are counted together");
    let total: u64 = series
        .iter()
        .map(|m| match m.value {
            wm_store::MetricValue::Counter(n) => n,
            _ => 0,
        })
        .sum();
    assert!(total >= 10_000, "every notification is still counted: {total}");
    assert!(matches!(other, wm_store::MetricValue::Counter(n) if n >= 10_000 - 256), "{other:?}");
}

/// Waits at most 5 s for the subscription's next bundle or its end.
async fn next_or_end(sub: &mut Subscription) -> Option<Result<EventBundle, SubscriptionError>> {
    tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("the stream neither sent nor ended within 5 s")
}

#[tokio::test]
async fn a_subscription_taken_as_the_store_shuts_down_ends_after_its_snapshot() {
    let store = Store::new();
    set(&store, "c1").await;
    let shutdown = store.shutdown();
    tokio::pin!(shutdown);
    // Its first poll sends the loop `Shutdown`; on this one-thread runtime the loop cannot run
    // before the subscription below is queued behind it.
    std::future::poll_fn(|cx| {
        assert!(shutdown.as_mut().poll(cx).is_pending(), "the loop has not run yet");
        std::task::Poll::Ready(())
    })
    .await;
    let mut late = subscribe(&store, "late", SubscriberPriority::Normal);
    shutdown.await;
    let snapshot = next_or_end(&mut late).await.expect("the snapshot").unwrap();
    assert_eq!(snapshot.events.len(), 1, "c1");
    drop(snapshot);
    assert!(next_or_end(&mut late).await.is_none(), "then the end, not a wait for ever");
}

#[tokio::test]
async fn a_store_shut_down_without_starting_ends_its_subscriptions() {
    let store = Store::builder().build();
    store.notify(vec![CollectorEvent::set(Source::Runtime, container("c1"))]).await;
    let mut early = subscribe(&store, "early", SubscriberPriority::Normal);
    store.shutdown().await;
    assert_eq!(next_or_end(&mut early).await.expect("the snapshot").unwrap().events.len(), 1);
    assert!(next_or_end(&mut early).await.is_none());
    store.start();
    assert_eq!(store.running_tasks(), 0, "a store shut down does not start");
}
