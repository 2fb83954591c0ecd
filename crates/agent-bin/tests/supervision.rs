//! One supervision path, seen from the agent's API: a collector that panics is `failed` in
//! `/health` and `agent status` (not ready) until the store restarts it; stopping the agent ends
//! and awaits every task it started, open client streams included.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent_bin::cli;
use agent_bin::report::{HealthReport, StatusReport};
use async_trait::async_trait;
use support::{agent_config, container, eventually, free_port, remote, temp_dir};
use test_support::watch::eventually_some;
use wm_core::{Collector, CollectorContext, CollectorError, Source, StreamCollector};

/// Lists one container, then panics on its first run; later runs list and stay.
struct PanicsOnce {
    runs: Arc<AtomicUsize>,
}

#[async_trait]
impl StreamCollector for PanicsOnce {
    async fn run(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst);
        ctx.sink.full_list(vec![container("p1", "core")]).await;
        if run == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            panic!("unexpected reply from the daemon");
        }
        std::future::pending::<()>().await;
        Ok(())
    }
}

fn collector_state(health: &HealthReport) -> (String, String, bool) {
    let c = &health.collectors[0];
    let text = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    (text("state"), text("error"), c.get("restarting").and_then(serde_json::Value::as_bool).unwrap_or(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_panics_is_failed_in_health_and_status_then_restarted() {
    let dir = temp_dir("panics");
    let (grpc, http) = (free_port(), free_port());
    let config = agent_config(&dir, grpc, http);
    let runs = Arc::new(AtomicUsize::new(0));
    let panicky = Collector::stream("panicky", Source::Runtime, PanicsOnce { runs: runs.clone() });
    let agent = agent_bin::run::start_with(&config, vec![panicky]).await.unwrap();

    // Failed, with the panic's message, and not ready although it had listed.
    let failed = eventually_some("the collector shown as failed", Duration::from_secs(5), || async move {
        let health: HealthReport = cli::fetch(http, "/health").await.unwrap();
        (collector_state(&health).0 == "failed").then_some(health)
    })
    .await;
    let (_, error, restarting) = collector_state(&failed);
    assert!(error.contains("panicked: unexpected reply from the daemon"), "{error}");
    assert!(restarting);
    assert!(failed.live && !failed.ready, "{failed:?}");
    let status: StatusReport = cli::fetch(agent.api(), "/agent/status").await.unwrap();
    let text = cli::format_status(&status);
    // It may have been restarted between the two reads; if not, status says why it is failed.
    if collector_state(&status.health).0 == "failed" {
        assert!(text.contains("panicky [runtime]: failed, restarting"), "{text}");
        assert!(text.contains("(panicked: unexpected reply from the daemon)"), "{text}");
        assert!(text.contains("Ready: false"), "{text}");
    }
    let anonymous = cli::Api { token: None, ..agent.api() };
    let refused = cli::fetch_text(anonymous, "/metrics").await.unwrap_err().to_string();
    assert!(refused.contains("HTTP 401"), "/metrics needs the token: {refused}");
    let not_on_probes = cli::fetch_text(http, "/metrics").await.unwrap_err().to_string();
    assert!(not_on_probes.contains("HTTP 404"), "/metrics is not on the probes' port: {not_on_probes}");
    let metrics = cli::fetch_text(agent.api(), "/metrics").await.unwrap();
    assert!(metrics.contains("workloadmeta_collector_panics{collector_id=\"panicky\"} 1"), "{metrics}");

    // Restarted after its backoff (1 s): running, ready, its container stored.
    eventually("the restart", || runs.load(Ordering::SeqCst) == 2).await;
    let health = eventually_some("ready after the restart", Duration::from_secs(5), || async move {
        let health: HealthReport = cli::fetch(http, "/health").await.unwrap();
        health.ready.then_some(health)
    })
    .await;
    assert_eq!(collector_state(&health).0, "running");
    assert!(agent.store.get_container("p1").is_some());
    assert_eq!(agent.stop().await.tasks_left, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_agent_ends_and_awaits_every_task_within_5s_even_with_streams_open() {
    let dir = temp_dir("stop");
    let (grpc, http) = (free_port(), free_port());
    let config = agent_config(&dir, grpc, http);
    let agent = support::start(&config).await;
    support::set(&agent, vec![container("a", "core")]).await;
    eventually("the tags of a", || !agent.tagger.tag("container_id://a", tagger::TagCardinality::High).is_empty())
        .await;
    // Two clients hold streams open.
    let mut client = remote(&config, grpc, None).connect().await.unwrap();
    let mut tags = client
        .tagger_stream_entities(wm_ipc::proto::model::v1::StreamTagsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut wm = client
        .workloadmeta_stream_entities(wm_ipc::proto::workloadmeta::WorkloadmetaStreamRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tags.message().await.unwrap().unwrap().events.len(), 1);
    assert!(wm.message().await.unwrap().unwrap().initial_snapshot_complete);

    let started = Instant::now();
    let stopped = agent.stop().await;
    let took = started.elapsed();
    assert_eq!(stopped.tasks_left, 0, "every task ended and was awaited");
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    // Both streams were told why they ended.
    assert_eq!(tags.message().await.unwrap_err().code(), tonic::Code::Unavailable);
    assert_eq!(wm.message().await.unwrap_err().code(), tonic::Code::Unavailable);
    println!("the agent stopped in {took:?} with two streams open; tasks left: {}", stopped.tasks_left);
    let _ = std::fs::remove_dir_all(&dir);
}
