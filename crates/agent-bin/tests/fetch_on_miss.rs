//! Fetch-on-miss end to end: `TaggerFetchEntity` for a container the docker collector has not
//! reported (here there is no collector at all, only the runtime's fetcher, as when a lookup
//! races the container's start event) gets its tags from one inspect, however many lookups
//! race for it; an id the runtime does not know answers empty and is not asked again at once;
//! an id of no runtime's form is refused without a request and counted on `/metrics`.

#![cfg(feature = "docker")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use support::{free_port, remote, temp_dir};
use test_support::fake_daemon::FakeDaemon;
use wm_ipc::proto::model::v1 as model;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_lookups_of_an_unreported_container_cause_one_inspect_and_get_its_tags() {
    let dir = temp_dir("fetch");
    std::fs::create_dir_all(&dir).unwrap();
    let daemon = FakeDaemon::docker(&dir).unwrap();
    daemon.create(&"f".repeat(64), "late-web");
    let (grpc, http) = (free_port(), free_port());
    let yaml = format!(
        "cmd_port: {grpc}\nhealth_port: {http}\ndocker_host: {}\nautoconfig_exclude_features: [containerd, podman, kubernetes]\n",
        daemon.host()
    );
    std::fs::write(dir.join("agent.yaml"), yaml).unwrap();
    let config = agent_bin::load_config(Some(&dir.join("agent.yaml")), Vec::new()).unwrap();
    // No collector: the store never hears of the container; only the fetcher can.
    let agent = agent_bin::run::start_with(&config, Vec::new()).await.unwrap();
    let client = remote(&config, grpc, None).connect().await.unwrap();
    let request = |uid: &str| model::FetchEntityRequest {
        id: Some(model::EntityId { prefix: "container_id".into(), uid: uid.into() }),
        cardinality: model::TagCardinality::High as i32,
    };
    let id = "f".repeat(64);
    let lookups = (0..1000).map(|_| {
        let mut client = client.clone();
        let request = request(&id);
        async move { client.tagger_fetch_entity(request).await.unwrap().into_inner().tags }
    });
    let answers = futures::future::join_all(lookups).await;
    for tags in &answers {
        assert!(tags.contains(&"container_name:late-web".to_owned()), "{tags:?}");
        assert!(tags.contains(&"short_image:busybox".to_owned()), "{tags:?}");
    }
    assert_eq!(daemon.inspects(), 1, "a thousand lookups, one inspect");

    // Unknown to the runtime: empty, and the negative cache spares the daemon a second ask.
    let mut client = client.clone();
    for _ in 0..3 {
        assert!(client.tagger_fetch_entity(request(&"0".repeat(64))).await.unwrap().into_inner().tags.is_empty());
    }
    assert_eq!(daemon.inspects(), 2);

    // An id of no runtime's form never reaches the daemon, and /metrics counts it.
    for hostile in ["x/../../system/df", &format!("{id}/json?size=true")] {
        assert!(client.tagger_fetch_entity(request(hostile)).await.unwrap().into_inner().tags.is_empty());
    }
    assert_eq!(daemon.inspects(), 2);
    let metrics = agent_bin::cli::fetch_text(agent.api(), "/metrics").await.unwrap();
    assert!(metrics.contains("tagger_fetches_refused{reason=\"invalid_id\"} 2"), "{metrics}");
    agent.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
