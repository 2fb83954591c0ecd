//! The gRPC API end to end, in process: a live agent (TLS, bearer token) whose store is fed
//! directly, the remote-tagger client and the remote-workloadmeta collector following it, a
//! server restart in the middle, and calls refused without the right token.

#![cfg(feature = "remote")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use agent_bin::remote::RemoteTagger;
use agent_bin::report::{HealthReport, TaggerList, WorkloadList};
use support::{
    agent_config, big_container, container, eventually, free_port, ids, mirrored, remote, set, start, temp_dir,
};
use tagger::TagCardinality;
use wm_collector_remote::RemoteWorkloadmetaCollector;
use wm_core::CancellationToken;
use wm_core::{CollectorEvent, Entity, Source};
use wm_ipc::proto::model::v1 as model;
use wm_store::Store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_tagger_and_remote_workloadmeta_follow_a_live_agent_across_its_restart() {
    let dir = temp_dir("remote");
    let (grpc, http) = (free_port(), free_port());
    let config = agent_config(&dir, grpc, http);
    let agent = start(&config).await;
    set(&agent, vec![container("a", "core"), container("b", "web"), container("c", "web")]).await;

    let upstream = remote(&config, grpc, None);
    let replica = RemoteTagger::new();
    let stop_following = CancellationToken::new();
    let follower = tokio::spawn(replica.clone().follow_until(upstream.clone(), stop_following.clone()));
    let mirror =
        Store::builder().collector(RemoteWorkloadmetaCollector::new(upstream.clone()).into_collector()).build();
    mirror.start();

    eventually("the replica's first snapshot", || replica.entities() == ids(&["a", "b", "c"])).await;
    let mut local = agent.tagger.tag("container_id://a", TagCardinality::High).to_vec();
    let mut copied = replica.tag("container_id://a", TagCardinality::High);
    local.sort();
    copied.sort();
    assert_eq!(copied, local);
    assert!(copied.contains(&"team:core".to_owned()) && copied.contains(&"container_id:a".to_owned()));
    assert!(!replica.tag("container_id://a", TagCardinality::Low).contains(&"container_id:a".to_owned()));
    eventually("the mirror's snapshot", || mirrored(&mirror) == ["a", "b", "c"]).await;
    let a = mirror.get_container("a").unwrap();
    assert_eq!((a.name.as_str(), a.labels.get("team")), ("name-a", Some("core")));

    // Live changes flow through both.
    agent.store.notify(vec![CollectorEvent::unset(Source::Runtime, container("b", "web"))]).await;
    set(&agent, vec![container("d", "db")]).await;
    eventually("the mirror following changes", || mirrored(&mirror) == ["a", "c", "d"]).await;
    eventually("the replica following changes", || {
        replica.tag("container_id://d", TagCardinality::Low).contains(&"team:db".to_owned())
    })
    .await;

    // The server restarts with other entities: both converge, nothing stale is left.
    let streams = replica.streams();
    agent.stop().await;
    let agent = start(&config).await;
    set(&agent, vec![container("a", "core"), container("e", "edge")]).await;
    eventually("the replica after the restart", || {
        replica.streams() > streams && replica.entities() == ids(&["a", "e"])
    })
    .await;
    eventually("the mirror after the restart", || mirrored(&mirror) == ["a", "e"]).await;
    println!("after the server's restart: replica {:?}, mirror {:?}", replica.entities(), mirrored(&mirror));

    stop_following.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), follower).await.unwrap().unwrap();
    mirror.shutdown().await;
    agent.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_the_right_token_are_refused_and_fetch_and_origin_answer_with_it() {
    let dir = temp_dir("auth");
    let (grpc, http) = (free_port(), free_port());
    let config = agent_config(&dir, grpc, http);
    let agent = start(&config).await;
    set(&agent, vec![container("a", "core")]).await;
    eventually("tags", || !agent.tagger.tag("container_id://a", TagCardinality::Low).is_empty()).await;

    let request = || model::FetchEntityRequest {
        id: Some(model::EntityId { prefix: "container_id".into(), uid: "a".into() }),
        cardinality: model::TagCardinality::Low as i32,
    };
    let mut wrong = remote(&config, grpc, Some("not-the-token")).connect().await.unwrap();
    let refused = wrong.tagger_fetch_entity(request()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(refused.message(), "invalid auth token: invalid session token");

    let mut client = remote(&config, grpc, None).connect().await.unwrap();
    let answer = client.tagger_fetch_entity(request()).await.unwrap().into_inner();
    assert!(
        answer.tags.contains(&"team:core".to_owned()) && !answer.tags.iter().any(|t| t.starts_with("container_id:"))
    );
    let missing = client.tagger_fetch_entity(model::FetchEntityRequest::default()).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    let origin = model::GenerateContainerIdFromOriginInfoRequest {
        local_data: Some(model::generate_container_id_from_origin_info_request::LocalData {
            container_id: Some("a".into()),
            ..Default::default()
        }),
        external_data: None,
    };
    assert_eq!(
        client.tagger_generate_container_id_from_origin_info(origin).await.unwrap().into_inner().container_id,
        "a"
    );
    agent.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_client_that_does_not_read_is_cut_off_and_the_store_goes_on() {
    let dir = temp_dir("slow");
    let (grpc, http) = (free_port(), free_port());
    let config = agent_config(&dir, grpc, http);
    let agent = start(&config).await;
    let mut client = remote(&config, grpc, None).connect().await.unwrap();
    // Open a workloadmeta stream and never read it.
    let mut stream = client
        .workloadmeta_stream_entities(wm_ipc::proto::workloadmeta::WorkloadmetaStreamRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Hundreds of batches: the unread stream's queue fills; the store must not wait for it.
    let started = std::time::Instant::now();
    for round in 0..400 {
        // Big entities (4 KiB of labels each), so that the transport's own buffers fill too.
        let batch: Vec<Entity> = (0..25).map(|i| big_container(&format!("{round}-{i}"))).collect();
        set(&agent, batch).await;
    }
    agent.store.sync().await;
    assert_eq!(agent.store.list_containers().len(), 10_000);
    assert!(agent.store.health().store_alive);
    println!("10,000 sets in 400 batches with an unread stream open: {:?}", started.elapsed());
    // Now reading: what was queued, then the end of the stream, with the reason.
    let mut received = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(response)) => received += response.events.len(),
            Ok(None) => panic!("the stream ended without saying why, after {received} events"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(received < 10_000, "the slow client got everything ({received}): it was never cut off");
    println!("the unread stream was cut off after {received} events: {}", status.message());
    agent.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_agent_serves_the_tags_of_its_upstream_through_its_own_http_api() {
    let dir = temp_dir("light");
    let (grpc, http) = (free_port(), free_port());
    let config = agent_config(&dir, grpc, http);
    let upstream = start(&config).await;
    set(&upstream, vec![container("a", "core")]).await;

    // The light agent: the upstream's port, token and certificate; its own HTTP port.
    let light_http = free_port();
    let light_yaml = dir.join("light.yaml");
    std::fs::write(
        &light_yaml,
        format!(
            "cmd_port: {grpc}\nhealth_port: {light_http}\nauth_token_file_path: {}\nipc_cert_file_path: {}\n",
            config.auth_token_path().display(),
            config.ipc_cert_path().display()
        ),
    )
    .unwrap();
    let light_config = agent_bin::config::AgentConfig::load(Some(&light_yaml), Vec::new()).unwrap();
    let light = agent_bin::light::start(&light_config).await.unwrap();
    let replica = light.replica.clone();
    eventually("the light agent's replica", || {
        replica.tag("container_id://a", TagCardinality::Low).contains(&"team:core".to_owned())
    })
    .await;
    let list: TaggerList = agent_bin::cli::fetch(light.api(), "/agent/tagger-list").await.unwrap();
    assert!(list.entities["container_id://a"]["remote"].contains(&"team:core".to_owned()));
    let health: HealthReport = agent_bin::cli::fetch(light_http, "/health").await.unwrap();
    assert!(health.live && health.ready);
    let refused = agent_bin::cli::fetch::<WorkloadList>(light.api(), "/agent/workload-list").await.unwrap_err();
    assert!(refused.to_string().contains("flavor-light"), "{refused}");
    assert_eq!(light.stop().await.tasks_left, 0);
    assert_eq!(upstream.stop().await.tasks_left, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
