//! The ECS collector against servers of ours serving the real captures at their real paths (no
//! ECS agent or task metadata endpoint can run here): daemon mode on the introspection API (a
//! task list that changes over time, a 500 that unsets nothing, a slow endpoint that blocks no
//! other collector, a server that is not an ECS agent), and sidecar mode on v4 task metadata.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use test_support::fake_http::FakeHttp;
use test_support::testdata;
use test_support::watch::eventually;
use wm_collector_ecs::{DeploymentMode, EcsCollector, EcsConfig};
use wm_core::{
    Collector, CollectorContext, CollectorError, Container, Entity, Kind, PullCollector, Source, StoreReader,
};
use wm_store::{CollectorState, Store};

fn capture(name: &str) -> Vec<u8> {
    std::fs::read(testdata::path(&format!("fixtures/ecs/{name}"))).unwrap()
}

async fn introspection() -> FakeHttp {
    let server = FakeHttp::start().await.unwrap();
    server.set("/", capture("commands.json"));
    server.set("/v1/metadata", capture("instance.json"));
    server.set("/v1/tasks", capture("collector_tasks_v1.json"));
    server
}

fn daemon(url: String) -> EcsConfig {
    EcsConfig {
        ecs_agent_url: Some(url),
        ecs_deployment_mode: DeploymentMode::Daemon,
        ecs_metadata_timeout: 300,
        ..EcsConfig::default()
    }
}

fn ids(store: &Store, kind: Kind) -> BTreeSet<String> {
    store.list(kind).iter().map(|e| e.id_str().to_string()).collect()
}

/// A collector that lists one container at every pull: proof that the store goes on.
struct Steady;

#[async_trait]
impl PullCollector for Steady {
    async fn start(&mut self, _: &CollectorContext) -> Result<(), CollectorError> {
        Ok(())
    }

    async fn pull(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        ctx.sink.full_list(vec![Entity::from(Container { id: "steady".into(), ..Container::default() })]).await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_mode_follows_the_task_list_and_a_failed_pull_unsets_nothing() {
    let server = introspection().await;
    let collector =
        EcsCollector::new(daemon(server.url())).into_collector().with_pull_interval(Duration::from_millis(200));
    let store = Store::builder().collector(collector).build();
    store.start();
    let first: BTreeSet<String> = [
        "arn:aws:ecs:us-east-1:123457279990:task/ecs-cluster/e39c666b3b134c2ca2241c4c3c64e6ac",
        "arn:aws:ecs:us-east-1:123457279990:task/ecs-cluster/7d2dae60ad844c608fb2d44215a46f6f",
    ]
    .map(String::from)
    .into();
    eventually("the first task list", Duration::from_secs(10), || ids(&store, Kind::EcsTask) == first).await;
    assert_eq!(ids(&store, Kind::Container).len(), 2);
    assert!(store.health().is_ready());
    let task = store.get_ecs_task(first.iter().next().unwrap()).unwrap();
    assert_eq!(task.cluster_name, "ecs-cluster");
    assert_eq!(store.health().collectors[0].source, Source::NodeOrchestrator);

    // A failing endpoint: nothing is unset.
    server.set_answer("/v1/tasks", 500, "boom", Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(ids(&store, Kind::EcsTask), first, "a failed pull unsets nothing");
    // The list changes: the store follows, what is gone is unset.
    server.set("/v1/tasks", capture("tasks.json"));
    let next: BTreeSet<String> =
        ["arn:aws:ecs:us-east-1:<aws_account_id>:task/example5-58ff-46c9-ae05-543f8example".to_owned()].into();
    eventually("the changed task list", Duration::from_secs(10), || ids(&store, Kind::EcsTask) == next).await;
    let containers = ids(&store, Kind::Container);
    assert_eq!(containers.len(), 2, "{containers:?}");
    assert!(containers.iter().all(|c| c.starts_with("9581a69a") || c.starts_with("bf25c5c5")), "{containers:?}");
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_blocks_no_other_collector() {
    let server = introspection().await;
    server.set_answer("/v1/tasks", 200, capture("collector_tasks_v1.json"), Duration::from_secs(5));
    let ecs = EcsCollector::new(daemon(server.url())).into_collector().with_pull_interval(Duration::from_millis(200));
    let steady = Collector::pull("steady", Source::Runtime, Steady).with_pull_interval(Duration::from_millis(100));
    let store = Store::builder().collector(ecs).collector(steady).build();
    store.start();
    eventually("the other collector's container", Duration::from_secs(5), || store.get_container("steady").is_some())
        .await;
    assert!(ids(&store, Kind::EcsTask).is_empty(), "the slow pull timed out (ecs_metadata_timeout 300 ms)");
    let pull_errors = store.telemetry().into_iter().any(|m| m.name == "workloadmeta.pull_errors");
    assert!(pull_errors);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_an_ecs_agent_is_waited_for_when_configured() {
    let server = FakeHttp::start().await.unwrap();
    server.set("/", "{\"hello\": \"world\"}");
    let store = Store::builder().collector(EcsCollector::new(daemon(server.url())).into_collector()).build();
    store.start();
    eventually("waiting", Duration::from_secs(5), || {
        matches!(&store.health().collectors[0].state, CollectorState::Waiting { reason } if reason.contains("ecs_agent_url"))
    })
    .await;
    assert!(!store.health().is_ready());
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_mode_reads_v4_task_metadata_with_tags() {
    let server = FakeHttp::start().await.unwrap();
    server.set("/v4/abc/taskWithTags", capture("v3or4_task_with_tags.json"));
    let config = EcsConfig {
        ecs_deployment_mode: DeploymentMode::Sidecar,
        metadata_uri_v4: Some(format!("{}/v4/abc", server.url())),
        ..EcsConfig::default()
    };
    let store = Store::builder().collector(EcsCollector::new(config).into_collector()).build();
    store.start();
    eventually("the task", Duration::from_secs(10), || ids(&store, Kind::EcsTask).len() == 1).await;
    assert_eq!(store.health().collectors[0].source, Source::Runtime);
    let task = store.list(Kind::EcsTask)[0].as_ecs_task().unwrap().clone();
    assert_eq!(task.tags.get("aws:ecs:launchtype"), Some("EC2"), "{:?}", task.tags);
    assert_eq!(ids(&store, Kind::Container).len(), 2);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_mode_enriches_a_task_through_its_containers_v4_endpoint() {
    let server = introspection().await;
    server.set("/v4/nginx/taskWithTags", capture("nginx.json"));
    server.set("/v4/nginx/task", capture("nginx-no-tags.json"));
    let config = EcsConfig { ecs_collect_resource_tags_ec2: true, ..daemon(server.url()) };
    let collector = EcsCollector::new(config).into_collector().with_pull_interval(Duration::from_millis(200));
    let store = Store::builder().collector(collector).build();
    // What the docker collector would have stored of the task's container: its env keeps the
    // task's metadata endpoint.
    let docker_id = "2ad9e753a0dfbba1c91e0e7bebaaf3a0918d3ef304b7549b1ced5f573bc05645";
    let env: wm_core::StrMap = [("ECS_CONTAINER_METADATA_URI_V4", format!("{}/v4/nginx", server.url()))]
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    let runtime = Container { id: docker_id.into(), env, ..Container::default() };
    store.notify(vec![wm_core::CollectorEvent::set(Source::Runtime, runtime)]).await;
    store.start();
    let arn = "arn:aws:ecs:us-east-1:123457279990:task/ecs-cluster/e39c666b3b134c2ca2241c4c3c64e6ac";
    eventually("the task enriched by v4", Duration::from_secs(10), || {
        store.get_ecs_task(arn).is_some_and(|t| t.service_name == "nginx-ec2" && t.availability_zone == "us-east-1a")
    })
    .await;
    let task = store.get_ecs_task(arn).unwrap();
    assert_eq!(task.tags.get("tag-test"), Some("task-test-value"), "resource tags (ecs_collect_resource_tags_ec2)");
    let container = store.get_container(docker_id).unwrap();
    assert_eq!(container.state.health, wm_core::ContainerHealth::Healthy);
    assert!(container.resources.memory_limit.is_some());
    // The other task has no container with an endpoint: as /v1/tasks says.
    let other = store
        .get_ecs_task("arn:aws:ecs:us-east-1:123457279990:task/ecs-cluster/7d2dae60ad844c608fb2d44215a46f6f")
        .unwrap();
    assert!(other.service_name.is_empty() && other.family == "datadog-agent");
    store.shutdown().await;
}

/// A store with the daemon-mode collector on `config`, and one runtime container whose env
/// names `metadata_uri` as its task's v4 endpoint.
async fn enriching_store(config: EcsConfig, metadata_uri: &str) -> Store {
    let collector = EcsCollector::new(config).into_collector().with_pull_interval(Duration::from_millis(200));
    let store = Store::builder().collector(collector).build();
    let docker_id = "2ad9e753a0dfbba1c91e0e7bebaaf3a0918d3ef304b7549b1ced5f573bc05645";
    let env: wm_core::StrMap = [(METADATA_ENV, metadata_uri)].into_iter().collect();
    let runtime = Container { id: docker_id.into(), env, ..Container::default() };
    store.notify(vec![wm_core::CollectorEvent::set(Source::Runtime, runtime)]).await;
    store.start();
    store
}

const METADATA_ENV: &str = "ECS_CONTAINER_METADATA_URI_V4";
const ENRICHED_ARN: &str = "arn:aws:ecs:us-east-1:123457279990:task/ecs-cluster/e39c666b3b134c2ca2241c4c3c64e6ac";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_env_naming_another_host_or_port_gets_no_request_there() {
    let server = introspection().await;
    // Another service on the node, as a workload would name it to make the agent ask it.
    let elsewhere = FakeHttp::start().await.unwrap();
    elsewhere.set("/v4/nginx/task", capture("nginx-no-tags.json"));
    let store = enriching_store(daemon(server.url()), &format!("{}/v4/nginx", elsewhere.url())).await;
    eventually("a few pulls", Duration::from_secs(10), || store.get_ecs_task(ENRICHED_ARN).is_some()).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(elsewhere.requests(), Vec::<String>::new(), "no request to a host the config does not allow");
    let task = store.get_ecs_task(ENRICHED_ARN).unwrap();
    assert!(task.service_name.is_empty(), "not enriched from a refused URL");
    // The refusal is kept: one look per TTL, not one per pull (the introspection API is asked
    // on every pull, the refused URL never).
    assert!(server.requests().iter().filter(|p| *p == "/v1/tasks").count() >= 3);
    store.shutdown().await;

    // Instance metadata and user info are refused by the check itself.
    let config = daemon(server.url());
    for url in [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://169.254.170.2:8080/v4/x",
        "https://169.254.170.2/v4/x",
        "http://user@169.254.170.2/v4/x",
        "file:///etc/shadow",
    ] {
        assert!(config.check_metadata_url(url).is_err(), "{url}");
    }
    assert!(config.check_metadata_url("http://169.254.170.2/v4/abc/task").is_ok());
    assert!(config.check_metadata_url(&format!("{}/v4/nginx/task", server.url())).is_ok());

    // Listed in ecs_metadata_allowed_hosts, the same host and port is asked.
    let host = elsewhere.url().trim_start_matches("http://").to_owned();
    let config = EcsConfig { ecs_metadata_allowed_hosts: vec![host], ..daemon(server.url()) };
    let store = enriching_store(config, &format!("{}/v4/nginx", elsewhere.url())).await;
    eventually("the task enriched from the allowed host", Duration::from_secs(10), || {
        store.get_ecs_task(ENRICHED_ARN).is_some_and(|t| t.service_name == "nginx-ec2")
    })
    .await;
    assert_eq!(elsewhere.requests(), ["/v4/nginx/task"], "asked once, then kept");
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_body_is_refused_at_the_cap() {
    let server = introspection().await;
    server.set_huge("/v1/tasks", 1 << 30);
    let collector =
        EcsCollector::new(daemon(server.url())).into_collector().with_pull_interval(Duration::from_millis(200));
    let store = Store::builder().collector(collector).build();
    store.start();
    eventually("the pull refused at the cap", Duration::from_secs(20), || {
        matches!(&store.health().collectors[0].state, CollectorState::Retrying { error, .. }
            if error.contains("larger than 32 MiB"))
    })
    .await;
    let rss = test_support::procfs::rss_bytes(std::process::id()).unwrap_or(0);
    assert!(rss < 512 << 20, "the body was not read whole: RSS {} MiB", rss >> 20);
    assert!(ids(&store, Kind::EcsTask).is_empty());
    store.shutdown().await;
}
