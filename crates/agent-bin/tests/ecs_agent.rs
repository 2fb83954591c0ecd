//! The agent binary on an ECS container instance of ours: the ECS agent's introspection API
//! served by a server of ours with the real captures at their real paths; `agent workload-list`
//! shows the tasks and `agent tagger-list` their tags and their containers' as DESIGN 7.4 says.

#![cfg(feature = "ecs")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_support::fake_http::FakeHttp;
use test_support::testdata;

fn capture(name: &str) -> Vec<u8> {
    std::fs::read(testdata::path(&format!("fixtures/ecs/{name}"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_tags_the_tasks_of_the_ecs_agent_and_their_containers() {
    let server = FakeHttp::start().await.unwrap();
    server.set("/", capture("commands.json"));
    server.set("/v1/metadata", capture("instance.json"));
    server.set("/v1/tasks", capture("collector_tasks_v1.json"));
    let dir = std::env::temp_dir().join(format!("wm-ecs-agent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = || test_support::runtimes::free_port().unwrap();
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "cmd_port: {}\nhealth_port: {}\necs_agent_url: {}\necs_deployment_mode: daemon\n\
             autoconfig_exclude_features: [docker, containerd, podman, kubernetes]\n",
            port(),
            port(),
            server.url()
        ),
    )
    .unwrap();
    let binary = env!("CARGO_BIN_EXE_agent");
    let mut child = Command::new(binary).arg("--config").arg(&config).arg("run").stderr(Stdio::null()).spawn().unwrap();
    let agent = |args: &[&str]| {
        let out = Command::new(binary).arg("--config").arg(&config).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let task = "ecs_task://arn:aws:ecs:us-east-1:123457279990:task/ecs-cluster/e39c666b3b134c2ca2241c4c3c64e6ac";
    let container = "container_id://2ad9e753a0dfbba1c91e0e7bebaaf3a0918d3ef304b7549b1ced5f573bc05645";
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut tags = String::new();
    while Instant::now() < deadline {
        tags = tokio::task::block_in_place(|| agent(&["tagger-list"]));
        if tags.contains(task) && tags.contains(container) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let block = |entity: &str| {
        let start =
            tags.find(&format!("=== Entity {entity} ===")).unwrap_or_else(|| panic!("{entity} not in:\n{tags}"));
        tags[start..].split("===\n").nth(1).unwrap_or_default().to_owned()
    };
    let task_tags = block(task);
    for tag in [
        "task_name:nginx",
        "task_family:nginx",
        "task_version:3",
        "ecs_cluster_name:ecs-cluster",
        "region:us-east-1",
        "aws_account:123457279990",
    ] {
        assert!(task_tags.contains(tag), "{tag} not on the task:\n{task_tags}");
    }
    let container_tags = block(container);
    for tag in ["ecs_container_name:my-nginx", "task_name:nginx", "task_arn:arn:aws:ecs"] {
        assert!(container_tags.contains(tag), "{tag} not on the container:\n{container_tags}");
    }
    println!("{task}:{task_tags}{container}:{container_tags}");
    let workloads = tokio::task::block_in_place(|| agent(&["workload-list"]));
    assert!(workloads.contains("=== Entity ecs_task sources(merged):[node_orchestrator]"), "{workloads}");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
