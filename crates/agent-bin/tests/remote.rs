//! The gRPC API end to end, in process: a live agent (TLS, bearer token) whose store is fed
//! directly, the remote-tagger client and the remote-workloadmeta collector following it, a
//! server restart in the middle, calls refused without the right token, a burst that a reading
//! client takes in full, a client that stops reading cut off, and an entity too large for a
//! response that breaks nobody's snapshot.

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
    // Still not reading past the lag grace: cut off. Reading now: what was queued, then the
    // end of the stream, with the reason.
    tokio::time::sleep(agent_bin::grpc::LAG_GRACE + std::time::Duration::from_secs(1)).await;
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

/// A light agent following the agent of `config` on `grpc` (its token and certificate), with
/// an HTTP port of its own; that port.
async fn start_light(
    dir: &std::path::Path,
    grpc: u16,
    config: &agent_bin::config::AgentConfig,
) -> (agent_bin::light::RunningLight, u16) {
    let (http, api) = (free_port(), free_port());
    let yaml = dir.join("light.yaml");
    std::fs::write(
        &yaml,
        format!(
            "cmd_port: {grpc}\nhealth_port: {http}\napi_port: {api}\nauth_token_file_path: {}\nipc_cert_file_path: {}\n",
            config.auth_token_path().display(),
            config.ipc_cert_path().display()
        ),
    )
    .unwrap();
    let light_config = agent_bin::load_config(Some(&yaml), Vec::new()).unwrap();
    (agent_bin::light::start(&light_config).await.unwrap(), http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_agent_serves_the_tags_of_its_upstream_through_its_own_http_api() {
    let dir = temp_dir("light");
    let (grpc, http) = (free_port(), free_port());
    let config = agent_config(&dir, grpc, http);
    let upstream = start(&config).await;
    set(&upstream, vec![container("a", "core")]).await;

    // The light agent: the upstream's port, token and certificate; its own HTTP port.
    let (light, light_http) = start_light(&dir, grpc, &config).await;
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

/// Reads a tagger stream until `done` holds for the entities seen Added (or Modified) so far.
async fn read_tags_until(
    stream: &mut tonic::Streaming<model::StreamTagsResponse>,
    seen: &mut std::collections::BTreeSet<String>,
    done: impl Fn(&std::collections::BTreeSet<String>) -> bool,
) {
    while !done(seen) {
        let response = tokio::time::timeout(std::time::Duration::from_secs(20), stream.message())
            .await
            .expect("the stream went quiet")
            .expect("the stream ended with an error")
            .expect("the stream ended");
        for event in response.events {
            let id = event.entity.and_then(|e| e.id).map(|id| id.uid).unwrap_or_default();
            if event.r#type != model::EventType::Deleted as i32 {
                seen.insert(id);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_client_takes_a_burst_of_a_thousand_containers_in_full_and_stays_connected() {
    let dir = temp_dir("burst");
    let (grpc, http) = (free_port(), free_port());
    let config = agent_config(&dir, grpc, http);
    let agent = start(&config).await;
    let mut client = remote(&config, grpc, None).connect().await.unwrap();
    let request = model::StreamTagsRequest { cardinality: model::TagCardinality::High as i32, ..Default::default() };
    let mut tags = client.tagger_stream_entities(request).await.unwrap().into_inner();
    let mut wm = client
        .workloadmeta_stream_entities(wm_ipc::proto::workloadmeta::WorkloadmetaStreamRequest::default())
        .await
        .unwrap()
        .into_inner();
    // 1,000 containers, each its own batch (as a rollout's creates come), all at once.
    for i in 0..1000 {
        set(&agent, vec![big_container(&format!("burst-{i:04}"))]).await;
    }
    let mut seen = std::collections::BTreeSet::new();
    read_tags_until(&mut tags, &mut seen, |s| s.len() >= 1000).await;
    assert_eq!(seen.len(), 1000);
    let mut stored = std::collections::BTreeSet::new();
    while stored.len() < 1000 {
        let response =
            tokio::time::timeout(std::time::Duration::from_secs(20), wm.message()).await.unwrap().unwrap().unwrap();
        for event in response.events {
            stored.extend(event.container.and_then(|c| c.entity_id).map(|id| id.id));
        }
    }
    // Both streams are still open: one more container arrives on each.
    set(&agent, vec![container("after", "core")]).await;
    read_tags_until(&mut tags, &mut seen, |s| s.contains("after")).await;
    loop {
        let response =
            tokio::time::timeout(std::time::Duration::from_secs(20), wm.message()).await.unwrap().unwrap().unwrap();
        if response
            .events
            .iter()
            .any(|e| e.container.as_ref().and_then(|c| c.entity_id.as_ref()).is_some_and(|id| id.id == "after"))
        {
            break;
        }
    }
    println!("a reading client took 1,000 containers made at once on both streams, and stayed connected");
    agent.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entity_too_large_for_a_response_breaks_no_snapshot() {
    let dir = temp_dir("oversized");
    let (grpc, http) = (free_port(), free_port());
    let config = agent_config(&dir, grpc, http);
    let agent = start(&config).await;
    // A label of 3 MiB: over half the 4 MiB message limit, and a tag of it (team is a tag).
    let huge = "x".repeat(3 << 20);
    set(&agent, vec![container("small", "core"), container("huge", &huge)]).await;
    eventually("tags", || !agent.tagger.tag("container_id://huge", TagCardinality::Low).is_empty()).await;
    for _ in 0..2 {
        let mut client = remote(&config, grpc, None).connect().await.unwrap();
        let mut wm = client
            .workloadmeta_stream_entities(wm_ipc::proto::workloadmeta::WorkloadmetaStreamRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut ids = Vec::new();
        loop {
            let response = wm.message().await.unwrap().unwrap();
            for event in &response.events {
                let c = event.container.as_ref().unwrap();
                if c.entity_id.as_ref().unwrap().id == "huge" {
                    assert!(c.entity_meta.as_ref().unwrap().labels.is_empty(), "sent trimmed");
                }
                ids.push(c.entity_id.as_ref().unwrap().id.clone());
            }
            if response.initial_snapshot_complete {
                break;
            }
        }
        ids.sort();
        assert_eq!(ids, ["huge", "small"]);
        let mut tags = client.tagger_stream_entities(model::StreamTagsRequest::default()).await.unwrap().into_inner();
        let snapshot = tags.message().await.unwrap().unwrap();
        let entities: Vec<_> = snapshot.events.iter().filter_map(|e| e.entity.as_ref()).collect();
        assert_eq!(entities.len(), 2, "both in the tagger snapshot");
        let huge_tags = entities.iter().find(|e| e.id.as_ref().unwrap().uid == "huge").unwrap();
        assert!(huge_tags.low_cardinality_tags.iter().all(|t| t.len() <= 4096), "the huge tag was dropped");
    }
    agent.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_by_pid_reads_container_proc_root_and_by_inode_the_cgroup_v2_tree() {
    use std::os::unix::fs::MetadataExt;
    let dir = temp_dir("origin");
    let (grpc, http) = (free_port(), free_port());
    // A host as the agent sees it from inside its own container: /host/proc, /host/sys/fs/cgroup.
    let (by_pid, by_inode) = ("1".repeat(64), "2".repeat(64));
    let proc_root = dir.join("host/proc");
    std::fs::create_dir_all(proc_root.join("4242")).unwrap();
    std::fs::write(proc_root.join("4242/cgroup"), format!("0::/system.slice/docker-{by_pid}.scope\n")).unwrap();
    let cgroup_root = dir.join("host/sys/fs/cgroup");
    let container_dir = cgroup_root.join(format!("kubepods/besteffort/pod-x/{by_inode}"));
    std::fs::create_dir_all(&container_dir).unwrap();
    std::fs::write(cgroup_root.join("cgroup.controllers"), "cpu\n").unwrap();
    let inode = std::fs::metadata(&container_dir).unwrap().ino();
    let yaml = format!(
        "cmd_port: {grpc}\nhealth_port: {http}\ncontainer_proc_root: {}\ncontainer_cgroup_root: {}\n",
        proc_root.display(),
        cgroup_root.display()
    );
    std::fs::write(dir.join("agent.yaml"), yaml).unwrap();
    let config = agent_bin::load_config(Some(&dir.join("agent.yaml")), Vec::new()).unwrap();
    let agent = start(&config).await;
    let mut client = remote(&config, grpc, None).connect().await.unwrap();
    let ask = |pid: Option<u32>, inode: Option<u64>| model::GenerateContainerIdFromOriginInfoRequest {
        local_data: Some(model::generate_container_id_from_origin_info_request::LocalData {
            process_id: pid,
            inode,
            ..Default::default()
        }),
        external_data: None,
    };
    let answer = |r: tonic::Response<model::GenerateContainerIdFromOriginInfoResponse>| r.into_inner().container_id;
    assert_eq!(
        answer(client.tagger_generate_container_id_from_origin_info(ask(Some(4242), None)).await.unwrap()),
        by_pid
    );
    assert_eq!(
        answer(client.tagger_generate_container_id_from_origin_info(ask(None, Some(inode))).await.unwrap()),
        by_inode
    );
    assert_eq!(
        answer(client.tagger_generate_container_id_from_origin_info(ask(Some(9999), Some(1))).await.unwrap()),
        ""
    );
    agent.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_agent_is_not_ready_while_its_upstream_is_gone_and_follows_a_new_token_and_certificate() {
    let dir = temp_dir("light-ready");
    let (grpc, http) = (free_port(), free_port());
    let config = agent_config(&dir, grpc, http);
    let upstream = start(&config).await;
    set(&upstream, vec![container("a", "core")]).await;
    let (light, light_http) = start_light(&dir, grpc, &config).await;
    let ready = || async {
        agent_bin::cli::fetch::<HealthReport>(light_http, "/ready").await.map(|h| h.ready).unwrap_or(false)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !ready().await {
        assert!(std::time::Instant::now() < deadline, "the light agent never became ready");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The upstream goes: not ready, saying why.
    upstream.stop().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while ready().await {
        assert!(std::time::Instant::now() < deadline, "still ready with its upstream gone");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let health: HealthReport = agent_bin::cli::fetch(light_http, "/health").await.unwrap();
    assert!(health.live && !health.ready);
    assert!(health.collectors[0].get("error").is_some(), "{health:?}");

    // It comes back with a new token and a new certificate (both files remade, as after a
    // reinstall): the light agent fails once, reads both files again, and is ready.
    std::fs::remove_file(config.auth_token_path()).unwrap();
    std::fs::remove_file(config.ipc_cert_path()).unwrap();
    let upstream = start(&config).await;
    set(&upstream, vec![container("b", "web")]).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while !(ready().await && light.replica.entities() == ids(&["b"])) {
        assert!(std::time::Instant::now() < deadline, "not following the upstream's new token");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Its own API takes the new token and serves the new certificate (the CLI reads the files
    // the upstream rewrote); a client that trusts only the old certificate is refused.
    let new_token = std::fs::read_to_string(config.auth_token_path()).unwrap().trim().to_owned();
    let new_cert = std::fs::read_to_string(config.ipc_cert_path()).unwrap();
    let api = agent_bin::cli::Api { token: Some(new_token.clone()), cert_pem: Some(new_cert), ..light.api() };
    let list: TaggerList = agent_bin::cli::fetch(api, "/agent/tagger-list").await.unwrap();
    assert!(list.entities.contains_key("container_id://b"));
    let old_cert = agent_bin::cli::Api { token: Some(new_token), ..light.api() };
    let refused = agent_bin::cli::fetch::<TaggerList>(old_cert, "/agent/tagger-list").await.unwrap_err();
    let refused = refused.to_string();
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");
    light.stop().await;
    upstream.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_gets_the_tagger_its_remote_tagger_key_asks_for() {
    use agent_bin::agents::{Agent, AgentTagger, tagger_for};
    let dir = temp_dir("agents");
    let (grpc, http) = (free_port(), free_port());
    let config = agent_config(&dir, grpc, http);
    let agent = start(&config).await;
    set(&agent, vec![container("a", "core")]).await;

    // Every key defaults to true: a remote tagger client of the agent at cmd_host:cmd_port.
    for who in Agent::ALL {
        let client = tagger_for(&config, who).await.unwrap();
        assert!(client.is_remote(), "{who}");
        eventually("the client's copy", || {
            client.tag("container_id://a", TagCardinality::Low).contains(&"team:core".to_owned())
        })
        .await;
        client.stop().await;
    }

    // False: a tagger of the agent's own, with a store of its own. No collector reaches a
    // daemon here (all excluded), so the test feeds that store; the core agent knows nothing of
    // what it holds.
    let own = dir.join("own");
    std::fs::create_dir_all(&own).unwrap();
    let yaml = format!(
        "cmd_port: {grpc}\nhealth_port: {http}\ncontainer_labels_as_tags:\n  team: team\napm_config:\n  remote_tagger: false\nautoconfig_exclude_features: [docker, containerd, podman, kubernetes, ecs, cloudfoundry, remote]\nauth_token_file_path: {}\n",
        config.auth_token_path().display()
    );
    std::fs::write(own.join("agent.yaml"), yaml).unwrap();
    let local_config = agent_bin::load_config(Some(&own.join("agent.yaml")), Vec::new()).unwrap();
    let apm = tagger_for(&local_config, Agent::Apm).await.unwrap();
    let AgentTagger::Local(local) = &apm else { panic!("apm_config.remote_tagger: false gave a remote tagger") };
    local.store.notify(vec![CollectorEvent::set(Source::Runtime, container("z", "own"))]).await;
    eventually("the local tagger", || {
        apm.tag("container_id://z", TagCardinality::Low).contains(&"team:own".to_owned())
    })
    .await;
    assert!(apm.tag("container_id://a", TagCardinality::Low).is_empty(), "a local tagger asks no other agent");
    assert!(agent.tagger.tag("container_id://z", TagCardinality::Low).is_empty());
    // The other agents of the same config stay remote.
    let process = tagger_for(&local_config, Agent::Process).await.unwrap();
    assert!(process.is_remote());
    process.stop().await;
    apm.stop().await;

    agent.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
