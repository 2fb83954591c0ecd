//! The agent binary on a Diego cell of ours: Garden on a unix socket and the Cloud Controller
//! with its UAA over HTTPS (`test_support::cloudfoundry`; no Cloud Foundry runs here).
//! `agent tagger-list` shows the DESIGN 7.5 tags of each app instance, named by the Cloud
//! Controller; over gRPC, the instance's tags come only at high cardinality and the app's at
//! low, or every one at high with `cloud_foundry_datadog_cardinality: true`.

#![cfg(feature = "cf")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, remote, temp_dir};
use test_support::cloudfoundry::{CcApp, CfApp, FakeCloudController, FakeGarden, GardenContainer};
use wm_ipc::proto::model::v1 as model;

const HANDLE: &str = "e49f448e-54d2-4c33-61a3-5335";

/// Kills the agent however the test ends.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(config: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_agent")).arg("--config").arg(config).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the agent with `extra` config lines until `tagger-list` shows the instance's enriched
/// tags; returns the agent, its config and the instance's tagger-list block.
async fn run_agent(dir: &Path, garden: &FakeGarden, cc: &FakeCloudController, extra: &str) -> (Agent, AgentAt, String) {
    std::fs::create_dir_all(dir).unwrap();
    let (grpc, http) = (free_port(), free_port());
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "cmd_port: {grpc}\nhealth_port: {http}\n\
             cloud_foundry: true\n\
             cloud_foundry_garden:\n  listen_address: {}\n\
             cloud_foundry_cc:\n  url: {}\n  client_id: wm-agent\n  client_secret: s3cret\n  ca_file: {}\n  sidecars_tags: true\n\
             autoconfig_exclude_features: [docker, containerd, podman, kubernetes, ecs]\n{extra}",
            garden.socket().display(),
            cc.url(),
            cc.ca_cert().display(),
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agent = Agent(child);
    let entity = format!("=== Entity container_id://{HANDLE} ===");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tags = String::new();
    while Instant::now() < deadline {
        tags = tokio::task::block_in_place(|| cli(&config, &["tagger-list"]));
        if tags.contains(&entity) && tags.contains("app_name:shop") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let start = tags.find(&entity).unwrap_or_else(|| panic!("{entity} not in:\n{tags}"));
    let block = tags[start..].split("===\n").nth(1).unwrap_or_default().to_owned();
    (agent, AgentAt { config, grpc }, block)
}

/// Where an agent's config is, and its gRPC port.
struct AgentAt {
    config: std::path::PathBuf,
    grpc: u16,
}

async fn fetch(at: &AgentAt, cardinality: model::TagCardinality) -> Vec<String> {
    let config = agent_bin::load_config(Some(&at.config), Vec::new()).unwrap();
    let mut client = remote(&config, at.grpc, None).connect().await.unwrap();
    let request = model::FetchEntityRequest {
        id: Some(model::EntityId { prefix: "container_id".into(), uid: HANDLE.into() }),
        cardinality: cardinality as i32,
    };
    let mut tags = client.tagger_fetch_entity(request).await.unwrap().into_inner().tags;
    tags.sort();
    tags
}

fn sorted(tags: &[&str]) -> Vec<String> {
    let mut tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
    tags.sort();
    tags
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_tags_a_cells_app_instances_as_design_7_5_says_in_both_modes() {
    let dir = temp_dir("cf");
    std::fs::create_dir_all(&dir).unwrap();
    let garden = FakeGarden::start(&dir.join("garden.sock")).unwrap();
    let app = CfApp::example();
    garden.put(HANDLE, GardenContainer::app_instance(&app, HANDLE, 0));
    garden.put("check-1", GardenContainer::health_check());
    let cc = FakeCloudController::start(&dir.join("cc"), "wm-agent", "s3cret", Duration::from_secs(600)).await.unwrap();
    let labels = [("tags.datadoghq.com/env".to_owned(), "prod".to_owned())].into_iter().collect();
    cc.put_app(
        &app.guid,
        CcApp { name: "shop".into(), space_guid: app.space_guid.clone(), labels, ..CcApp::default() },
    );
    cc.put_space(&app.space_guid, "production", &app.org_guid, None);
    cc.put_org(&app.org_guid, "acme-corp", None);

    let instance =
        ["container_name:shop_0".to_owned(), "app_instance_index:0".into(), format!("app_instance_guid:{HANDLE}")];
    let app_tags = [
        format!("app_guid:{}", app.guid),
        "app_name:shop".into(),
        format!("org_id:{}", app.org_guid),
        "org_name:acme-corp".into(),
        format!("space_id:{}", app.space_guid),
        "space_name:production".into(),
        "env:prod".into(),
        "sidecar_present:false".into(),
    ];
    let everything: Vec<&str> = instance.iter().chain(&app_tags).map(String::as_str).collect();

    // The default split: the instance's tags high, the app's low.
    let (agent, at, block) = run_agent(&dir.join("split"), &garden, &cc, "").await;
    println!("container_id://{HANDLE}:\n{block}");
    // The client secret is used (the names came from the Cloud Controller) and shown nowhere:
    // not by `agent config`, not in `/agent/config`'s JSON.
    for args in [&["config"][..], &["config", "--json"]] {
        let shown = tokio::task::block_in_place(|| cli(&at.config, args));
        assert!(shown.contains("cloud_foundry_cc.client_secret"), "agent {args:?}:\n{shown}");
        assert!(shown.contains("********") && !shown.contains("s3cret"), "agent {args:?}:\n{shown}");
    }
    assert!(block.contains("== Source workloadmeta-container ="), "{block}");
    for tag in &everything {
        assert!(block.contains(tag), "{tag} not in tagger-list:\n{block}");
    }
    assert!(!block.contains("container_id:"), "a Garden container has no container_id tag:\n{block}");
    let low = fetch(&at, model::TagCardinality::Low).await;
    assert_eq!(low, sorted(&app_tags.iter().map(String::as_str).collect::<Vec<_>>()));
    assert_eq!(fetch(&at, model::TagCardinality::High).await, sorted(&everything));
    let workloads = tokio::task::block_in_place(|| cli(&at.config, &["workload-list"]));
    assert!(workloads.contains("sources(merged):[cluster_orchestrator]"), "{workloads}");
    assert!(workloads.contains("Runtime: garden") && !workloads.contains("check-1"), "{workloads}");
    drop(agent);

    // The Datadog-compatible mode: nothing at low, everything at high.
    let (agent, at, block) =
        run_agent(&dir.join("datadog"), &garden, &cc, "cloud_foundry_datadog_cardinality: true\n").await;
    for tag in &everything {
        assert!(block.contains(tag), "{tag} not in tagger-list:\n{block}");
    }
    assert_eq!(fetch(&at, model::TagCardinality::Low).await, Vec::<String>::new());
    assert_eq!(fetch(&at, model::TagCardinality::High).await, sorted(&everything));
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
