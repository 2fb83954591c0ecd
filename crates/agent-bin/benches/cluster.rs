//! `cluster.memory` of BENCHMARKS.md: the cluster agent's resident bytes per pod, on the real
//! API server of `test_support::kubernetes` with kwok keeping 1,000 fake nodes Ready and their
//! 30,000 pods Running (`--quick`: 100 nodes, 3,000 pods), behind 3,000 services (10 pods each,
//! so the EndpointSlice controller makes real slices), in 50 namespaces. The services are
//! headless: the test cluster's service address range holds 254, and a service's address plays
//! no part in what the cluster agent indexes.
//!
//! `agent cluster-agent` (the binary) runs before any of it is made, and its RSS is read once it
//! answers; then again once every node's map is complete (each node's 30 pods listed with their
//! service) and it sat idle 10 s. Per pod: the growth over the pods. Target ≤ 2 KiB.
//! The API server's, etcd's and kwok's own resident sizes are printed for context.

#![cfg(feature = "cluster-agent")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failure aborts the run

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use test_support::kubernetes::{
    Kubernetes, Kwok, create_fake_nodes, fake_pod, object, wait_for_default_service_account,
};
use test_support::runtimes::{Install, free_port, terminate};

const NAMESPACES: usize = 50;
/// Services per namespace: 3,000 in all.
const APPS: usize = 60;
const PODS_PER_NODE: usize = 30;
const TOKEN: &str = "wm-cluster-agent-bench-token-0123456789";

/// Pod `k`: its namespace, app and node.
fn placement(k: usize, nodes: usize) -> (String, String, String) {
    (format!("team-{}", k % NAMESPACES), format!("app-{}", (k / NAMESPACES) % APPS), format!("kwok-{}", k % nodes))
}

/// GETs `path` from the cluster agent as a node agent does; the JSON of a 200.
fn get(port: u16, path: &str) -> Option<Value> {
    let out = Command::new("curl")
        .args(["-sk", "--http1.1", "--max-time", "10", "-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// How many of `node`'s pods the cluster agent lists with a service.
fn pods_with_a_service(port: u16, node: &str) -> usize {
    get(port, &format!("/api/v1/tags/pod/{node}"))
        .and_then(|v| {
            let namespaces = v["Nodes"][node]["services"].as_object()?.clone();
            Some(namespaces.values().filter_map(Value::as_object).map(|pods| pods.len()).sum())
        })
        .unwrap_or(0)
}

fn start_agent(cluster: &Kubernetes, port: u16) -> Child {
    let dir = cluster.dir().join("cluster-agent");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "cmd_port: {}\nhealth_port: {}\nlog_level: warn\nkubernetes_kubeconfig_path: {}\n\
             cluster_agent:\n  cmd_port: {port}\n  auth_token: {TOKEN}\n",
            free_port().unwrap(),
            free_port().unwrap(),
            cluster.kubeconfig().display()
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("--config")
        .arg(&config)
        .arg("cluster-agent")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .spawn()
        .unwrap()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let nodes = if quick { 100 } else { 1_000 };
    let pods = nodes * PODS_PER_NODE;
    let row = "cluster.memory";
    let cluster = match Kubernetes::start(Install::IfMissing) {
        Ok(cluster) => cluster,
        Err(why) => {
            println!("{row}  -  -  -  <=2048 B  MISS (no Kubernetes: {})", why.0);
            return;
        }
    };
    let kwok = match Kwok::start(&cluster, Install::IfMissing) {
        Ok(kwok) => kwok,
        Err(why) => {
            println!("{row}  -  -  -  <=2048 B  MISS (no kwok: {})", why.0);
            return;
        }
    };
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let port = free_port().unwrap();
    let agent = start_agent(&cluster, port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(port, "/version").is_none() {
        assert!(Instant::now() < deadline, "the cluster agent did not answer within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let empty = test_support::procfs::rss_bytes(agent.id()).unwrap();

    let made = Instant::now();
    tokio.block_on(async {
        let client = cluster.client().await.unwrap();
        create_fake_nodes(&client, nodes).await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for n in 0..NAMESPACES {
            let ns = format!("team-{n}");
            let body = object(json!({ "metadata": { "name": ns, "labels": { "tier": "bronze" } } })).unwrap();
            namespaces.create(&PostParams::default(), &body).await.unwrap();
            let services: Api<Service> = Api::namespaced(client.clone(), &ns);
            futures::stream::iter(0..APPS)
                .for_each_concurrent(16, |a| {
                    let services = services.clone();
                    async move {
                        let svc = object(json!({
                            "metadata": { "name": format!("svc-app-{a}") },
                            "spec": {
                                "clusterIP": "None",
                                "selector": { "app": format!("app-{a}") },
                                "ports": [{ "port": 80 }],
                            },
                        }))
                        .unwrap();
                        services.create(&PostParams::default(), &svc).await.unwrap();
                    }
                })
                .await;
        }
        for n in 0..NAMESPACES {
            wait_for_default_service_account(&client, &format!("team-{n}"), Duration::from_secs(60)).await;
        }
        futures::stream::iter(0..pods)
            .for_each_concurrent(32, |k| {
                let client = client.clone();
                async move {
                    let (ns, app, node) = placement(k, nodes);
                    let pod = fake_pod(&format!("pod-{k}"), &node, &json!({ "app": app })).unwrap();
                    Api::<Pod>::namespaced(client, &ns).create(&PostParams::default(), &pod).await.unwrap();
                }
            })
            .await;
        println!("cluster: {nodes} nodes, {pods} pods, {} services made in {:.0?}", NAMESPACES * APPS, made.elapsed());
        // Only the pods not Running yet are listed: a short list as kwok catches up.
        let all: Api<Pod> = Api::all(client.clone());
        loop {
            let pending = all.list(&ListParams::default().labels("app").fields("status.phase!=Running")).await.unwrap();
            if pending.items.is_empty() {
                break;
            }
            let left = pending.items.len();
            assert!(made.elapsed() < Duration::from_secs(1800), "{left} of {pods} pods not Running after 30 min");
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        println!("cluster: every pod Running {:.0?} after the first object", made.elapsed());
    });

    // Every node's every pod listed with its service: the index is complete.
    let deadline = Instant::now() + Duration::from_secs(600);
    for i in 0..nodes {
        let node = format!("kwok-{i}");
        while pods_with_a_service(port, &node) != PODS_PER_NODE {
            assert!(Instant::now() < deadline, "{node}'s map was not complete within 10 min");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    println!(
        "cluster: the cluster agent lists every pod with its service {:.0?} after the first object",
        made.elapsed()
    );
    std::thread::sleep(Duration::from_secs(10));
    let full = test_support::procfs::rss_bytes(agent.id()).unwrap();
    let per_pod = full.saturating_sub(empty) as f64 / pods as f64;
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    let others: Vec<String> =
        cluster.rss_kib().iter().map(|(name, kib)| format!("{name} {:.0} MiB", *kib as f64 / 1024.0)).collect();
    println!(
        "{row}  {per_pod:.0} B/pod  -  -  <=2048 B  {}  ({pods} pods on {nodes} kwok nodes, {} services; the cluster agent's RSS {:.1} MiB, {:.1} MiB before any; beside it: {})",
        if per_pod <= 2048.0 { "ok" } else { "MISS" },
        NAMESPACES * APPS,
        mib(full),
        mib(empty),
        others.join(", ")
    );
    terminate(agent, Duration::from_secs(5));
    drop(kwok);
    drop(tokio);
    drop(cluster);
}
