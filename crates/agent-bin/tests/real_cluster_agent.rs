//! `agent cluster-agent` on the real cluster with 20 kwok nodes and 100 pods, asked what a
//! Datadog node agent's kubemetadata collector asks (`docs/wire/cluster-agent-api.md`), over
//! TLS with curl as the Go client goes (HTTP/1.1, the certificate not verified, a bearer token):
//! the version, each node's pods and their services, a namespace's metadata, the cluster id;
//! no token is a 401 with `WWW-Authenticate`, a wrong one a 403; a gRPC call (the newest node
//! agents' first try) gets `UNIMPLEMENTED`, so they pull; a namespace label change and a
//! deleted service reach the answers; the agent is ready once its watches listed, and stops on
//! SIGTERM.
//!
//! Our node agents (in this process: `support/node_agents.rs`) follow it: their pods get their
//! tags, the API server holds no more watches than before them, and the changes reach them;
//! the cluster agent killed, they keep their tags and say they are degraded, and catch up once
//! it is back; two replicas behind a balancer of ours (no kube-proxy here), one killed in the
//! middle of a stream of changes: its node agents move to the other, no tag lost or doubled.

#![cfg(feature = "cluster-agent")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use test_support::kubernetes::{
    Kubernetes, Kwok, create_fake_nodes, fake_pod, object, wait_for_default_service_account,
};
use test_support::runtimes::{free_port, terminate};
use test_support::watch::{eventually, eventually_some};
use wm_store::CollectorState;

#[path = "support/node_agents.rs"]
mod node_agents;
use node_agents::{Mode, NodeAgent, Traffic, pods_by_node};

const NODES: usize = 20;
const PODS: usize = 100;
const TOKEN: &str = "wm-cluster-agent-test-token-0123456789";
const DEADLINE: Duration = Duration::from_secs(90);

/// Pod `k`: its namespace, app and node (5 consecutive pods per node).
fn placement(k: usize) -> (String, String, String) {
    (format!("team-{}", k % 2), format!("app-{}", k % 4), format!("kwok-{}", (k / 5) % NODES))
}

/// GETs `path` as a Datadog node agent does; returns the status, the headers and the body.
fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut curl = Command::new("curl");
    curl.args(["-sk", "--http1.1", "--max-time", "5", "-D", "-", "-o", "-"]);
    if let Some(token) = token {
        curl.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = curl.arg(format!("https://127.0.0.1:{port}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn json_of(port: u16, path: &str) -> Option<Value> {
    let (status, _, body) = get(port, path, Some(TOKEN));
    (status == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

/// What `/api/v1/tags/pod/<node>` should answer, with `skip` (namespace, service) gone.
fn expected(node: &str, skip: Option<(&str, &str)>) -> Value {
    let mut services = serde_json::Map::new();
    for k in 0..PODS {
        let (ns, app, on) = placement(k);
        let service = format!("svc-{app}");
        if on != node || skip == Some((ns.as_str(), service.as_str())) {
            continue;
        }
        let pods = services.entry(ns).or_insert_with(|| json!({}));
        pods[format!("pod-{k}")] = json!({ service: {} });
    }
    let bundle = if services.is_empty() { json!({}) } else { json!({ "services": services }) };
    json!({ "Nodes": { node: bundle } })
}

fn write_config(dir: &Path, cluster: &Kubernetes, port: u16) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("agent.yaml");
    let text = format!(
        "cmd_port: {}\nhealth_port: {}\nlog_level: info\nkubernetes_kubeconfig_path: {}\n\
         cluster_agent:\n  cmd_port: {port}\n  auth_token: {TOKEN}\n",
        free_port().unwrap(),
        free_port().unwrap(),
        cluster.kubeconfig().display()
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// Tells whether every pod of `agent` has its namespace's tag `tier:<tier of the namespace>`
/// and its service's `kube_service` tag, and no other `kube_service`, less `skip` (namespace,
/// service).
fn node_agent_has(agent: &NodeAgent, tier: impl Fn(&str) -> &'static str, skip: Option<(&str, &str)>) -> bool {
    agent.pods.iter().all(|(uid, ns, name)| {
        let k: usize = name.trim_start_matches("pod-").parse().unwrap();
        let service = format!("svc-{}", placement(k).1);
        let tags = agent.pod_tags(uid);
        let services: Vec<&String> = tags.iter().filter(|t| t.starts_with("kube_service:")).collect();
        let want: Vec<String> = if skip == Some((ns.as_str(), service.as_str())) {
            vec![]
        } else {
            vec![format!("kube_service:{service}")]
        };
        services == want.iter().collect::<Vec<_>>() && tags.contains(&format!("tier:{}", tier(ns)))
    })
}

/// Starts `agent cluster-agent` with `config`, its log appended to `dir/agent.log`.
fn start_cluster_agent(config: &Path, dir: &Path) -> std::process::Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("agent.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("--config")
        .arg(config)
        .arg("cluster-agent")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[test]
fn node_agents_get_datadogs_cluster_agent_answers_from_one_set_of_watches() {
    let test = "node_agents_get_datadogs_cluster_agent_answers";
    test_support::runtimes::with_service(test, Kubernetes::start, async |cluster: &mut Kubernetes| {
        let Some(_kwok) = Kwok::start_or_skip(cluster, test) else { return };
        let client = cluster.client().await.unwrap();
        create_fake_nodes(&client, NODES).await;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for n in 0..2 {
            let ns = format!("team-{n}");
            let body = object(
                json!({ "metadata": { "name": ns, "labels": { "tier": "bronze" }, "annotations": { "owner": "wm" } } }),
            );
            namespaces.create(&PostParams::default(), &body.unwrap()).await.unwrap();
            let services: Api<Service> = Api::namespaced(client.clone(), &ns);
            for a in 0..4 {
                let svc = object(json!({
                    "metadata": { "name": format!("svc-app-{a}") },
                    "spec": { "selector": { "app": format!("app-{a}") }, "ports": [{ "port": 80 }] },
                }));
                services.create(&PostParams::default(), &svc.unwrap()).await.unwrap();
            }
            wait_for_default_service_account(&client, &ns, DEADLINE).await;
        }
        futures::stream::iter(0..PODS)
            .for_each_concurrent(16, |k| {
                let client = client.clone();
                async move {
                    let (ns, app, node) = placement(k);
                    let pods: Api<Pod> = Api::namespaced(client, &ns);
                    pods.create(
                        &PostParams::default(),
                        &fake_pod(&format!("pod-{k}"), &node, &json!({ "app": app })).unwrap(),
                    )
                    .await
                    .unwrap();
                }
            })
            .await;

        let port = free_port().unwrap();
        let dir = cluster.dir().join("cluster-agent");
        let config = write_config(&dir, cluster, port);
        let mut child = start_cluster_agent(&config, &dir);
        let started = Instant::now();
        let version = eventually_some("the cluster agent's /version", DEADLINE, || async {
            tokio::task::block_in_place(|| json_of(port, "/version"))
        })
        .await;
        assert!(version["Major"] == 7 && version["Minor"].as_i64().is_some_and(|m| m >= 55), "{version}");

        // Every node's pods and services, as the per-node map a node agent pulls.
        for node in ["kwok-0", "kwok-7", "kwok-19"] {
            let want = expected(node, None);
            eventually_some(&format!("{node}'s pods and services"), DEADLINE, || async {
                tokio::task::block_in_place(|| json_of(port, &format!("/api/v1/tags/pod/{node}")))
                    .filter(|v| *v == want)
            })
            .await;
        }
        println!("the cluster agent answered every node's map {:.1?} after its start", started.elapsed());

        // Our node agents follow it: each node's pods get their services and namespace labels.
        let mut agents = Vec::new();
        let mut pods = pods_by_node(&client).await;
        let watching = Traffic::now(&client).await.watches;
        for node in ["kwok-0", "kwok-7", "kwok-19"] {
            let mode = Mode::ClusterAgent(port, TOKEN.to_owned());
            agents.push(NodeAgent::start(&mode, node, pods.remove(node).unwrap()).await);
        }
        for agent in &agents {
            eventually("a node agent's pods with their services and namespace labels", DEADLINE, || {
                node_agent_has(agent, |_| "bronze", None)
            })
            .await;
        }
        // They opened no watch on the API server (its own count of the watches it holds; another
        // component's watch being renewed may take one away for a moment, never add one).
        let now = Traffic::now(&client).await.watches;
        assert!(now <= watching, "{} more watches with the node agents: one watches the API server", now - watching);
        let (status, _, body) = get(port, "/api/v1/tags/pod/no-such-node", Some(TOKEN));
        assert!(status == 200 && body.contains("Warnings") && !body.contains("Nodes"), "{status} {body}");
        let meta = json_of(port, "/api/v1/metadata/namespace/team-1").unwrap();
        // Kubernetes labels every namespace with its name.
        let labels = json!({ "kubernetes.io/metadata.name": "team-1", "tier": "bronze" });
        assert_eq!(
            meta,
            json!({ "Name": "team-1", "Namespace": "", "Labels": labels, "Annotations": { "owner": "wm" } })
        );
        let uid = namespaces.get("kube-system").await.unwrap().metadata.uid.unwrap();
        assert_eq!(json_of(port, "/api/v1/cluster/id"), Some(json!(uid)));

        // The token, as Datadog's cluster agent checks it.
        let (status, head, body) = get(port, "/version", None);
        assert_eq!((status, body.as_str()), (401, "no session token provided\n"));
        assert!(head.contains("www-authenticate: bearer realm=\"datadog agent\""), "{head}");
        assert_eq!(get(port, "/version", Some("wm-cluster-agent-test-token-0123456780")).0, 403);
        assert_eq!(get(port, "/api/v1/nothing", None).0, 404);

        // The newest node agents ask for a gRPC stream first and pull only on UNIMPLEMENTED.
        let grpc = |token: &str| {
            let out = Command::new("curl")
                .args(["-sk", "--http2", "--max-time", "5", "-D", "-", "-o", "/dev/null", "-X", "POST"])
                .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
                .args(["-H", &format!("authorization: Bearer {token}")])
                .arg(format!("https://127.0.0.1:{port}/datadog.api.v1.AgentSecure/StreamKubeMetadata"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
        };
        let answer = grpc(TOKEN);
        assert!(answer.starts_with("http/2 200") && answer.contains("grpc-status: 12"), "{answer}");
        assert!(grpc("wrong").contains("grpc-status: 16"));

        // A namespace label changes and a service goes: the answers follow.
        let changed = Instant::now();
        let patch = json!({ "metadata": { "labels": { "tier": "gold" } } });
        namespaces.patch("team-1", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        Api::<Service>::namespaced(client.clone(), "team-1").delete("svc-app-3", &Default::default()).await.unwrap();
        eventually_some("the new label", DEADLINE, || async {
            tokio::task::block_in_place(|| json_of(port, "/api/v1/tags/namespace/team-1"))
                .filter(|v| *v == json!({ "kubernetes.io/metadata.name": "team-1", "tier": "gold" }))
        })
        .await;
        for node in ["kwok-0", "kwok-7", "kwok-19"] {
            let want = expected(node, Some(("team-1", "svc-app-3")));
            eventually_some(&format!("{node}'s map without the deleted service"), DEADLINE, || async {
                tokio::task::block_in_place(|| json_of(port, &format!("/api/v1/tags/pod/{node}")))
                    .filter(|v| *v == want)
            })
            .await;
        }
        // The node streams carry both changes at once, with no poll.
        for agent in &agents {
            eventually("the node agents' pods with the new label and without the service", DEADLINE, || {
                let tier = |ns: &str| if ns == "team-1" { "gold" } else { "bronze" };
                node_agent_has(agent, tier, Some(("team-1", "svc-app-3")))
            })
            .await;
        }
        println!("the node agents had both changes {:.1?} after they were made", changed.elapsed());

        // The cluster agent killed: the node agents keep what they have and say why they are
        // degraded; a change made meanwhile reaches them once it is back.
        child.kill().unwrap();
        child.wait().unwrap();
        for agent in &agents {
            eventually("a node agent degraded, the cluster agent unreachable", DEADLINE, || {
                agent.store.health().collectors.iter().any(|c| {
                    c.synced
                        && matches!(&c.state, CollectorState::Retrying { error, .. } if error.contains("cluster agent unreachable"))
                })
            })
            .await;
            assert!(agent.store.health().is_ready(), "the last metadata is still served");
            let tier = |ns: &str| if ns == "team-1" { "gold" } else { "bronze" };
            assert!(node_agent_has(agent, tier, Some(("team-1", "svc-app-3"))), "the last metadata is kept");
        }
        let patch = json!({ "metadata": { "labels": { "tier": "platinum" } } });
        namespaces.patch("team-0", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        let child = start_cluster_agent(&config, &dir);
        // Until every node agent has caught up, none may lose a tag on the way: the restarted
        // cluster agent sends nothing before its watches have listed.
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut caught_up = true;
            for agent in &agents {
                for (uid, ns, _) in &agent.pods {
                    let tags = agent.pod_tags(uid);
                    assert!(
                        tags.iter().any(|t| t.starts_with("tier:"))
                            && tags.iter().any(|t| t.starts_with("kube_service:"))
                            || ns == "team-1" && tags.iter().any(|t| t.starts_with("tier:")),
                        "{uid} lost a tag while its node agent reconnected: {tags:?}"
                    );
                    let tier = if ns == "team-0" { "platinum" } else { "gold" };
                    caught_up &= tags.contains(&format!("tier:{tier}"));
                }
                caught_up &= agent.store.health().collectors.iter().all(|c| c.state == CollectorState::Running);
            }
            if caught_up {
                break;
            }
            assert!(Instant::now() < deadline, "the node agents did not catch up with the restarted cluster agent");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for agent in agents {
            agent.stop().await;
        }

        // Two replicas behind one address (a balancer of ours in place of the Service: the test
        // cluster runs no kube-proxy), node agents spread over both; one replica is killed in
        // the middle of a stream of namespace label changes: its node agents move to the other,
        // no tag is lost or doubled on the way, and every node agent ends on the last change.
        let port2 = free_port().unwrap();
        let dir2 = cluster.dir().join("cluster-agent-2");
        let config2 = write_config(&dir2, cluster, port2);
        let mut replica = start_cluster_agent(&config2, &dir2);
        eventually_some("the second replica's /version", DEADLINE, || async {
            tokio::task::block_in_place(|| json_of(port2, "/version"))
        })
        .await;
        let service = test_support::tcp_balancer::TcpBalancer::start(vec![port2, port]).await.unwrap();
        let mut agents = Vec::new();
        let mut pods = pods_by_node(&client).await;
        for node in ["kwok-0", "kwok-7", "kwok-19", "kwok-3"] {
            let mode = Mode::ClusterAgent(service.port(), TOKEN.to_owned());
            agents.push(NodeAgent::start(&mode, node, pods.remove(node).unwrap()).await);
        }
        let tier_of = |ns: &str, team0: &str| if ns == "team-0" { team0.to_owned() } else { "gold".to_owned() };
        for agent in &agents {
            eventually("the node agents on both replicas", DEADLINE, || {
                agent.pods.iter().all(|(uid, ns, _)| agent.pod_has(uid, &format!("tier:{}", tier_of(ns, "platinum"))))
            })
            .await;
        }
        let changing = {
            let namespaces = namespaces.clone();
            tokio::spawn(async move {
                let mut last = String::new();
                for i in 0..25 {
                    last = format!("r{i}");
                    let patch = json!({ "metadata": { "labels": { "tier": last } } });
                    namespaces.patch("team-0", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                last
            })
        };
        // Every pod keeps exactly one `tier` tag and its services while the replica dies.
        let one_tier = |agents: &[NodeAgent]| {
            for agent in agents {
                for (uid, ns, _) in &agent.pods {
                    let tags = agent.pod_tags(uid);
                    let tiers = tags.iter().filter(|t| t.starts_with("tier:")).count();
                    let services = tags.iter().filter(|t| t.starts_with("kube_service:")).count();
                    assert!(tiers == 1 && (services == 1 || ns == "team-1" && services <= 1), "{uid}: {tags:?}");
                }
            }
        };
        let killed_at = Instant::now() + Duration::from_secs(2);
        // The node agents that lost their replica (seen retrying): at least one must have.
        let mut moved = vec![false; agents.len()];
        let mut killed = false;
        let retrying = |agent: &NodeAgent| {
            agent.store.health().collectors.iter().any(|c| matches!(c.state, CollectorState::Retrying { .. }))
        };
        while !changing.is_finished() {
            one_tier(&agents);
            for (m, agent) in moved.iter_mut().zip(&agents) {
                *m |= retrying(agent);
            }
            if !killed && Instant::now() >= killed_at {
                replica.kill().unwrap();
                killed = true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let last = changing.await.unwrap();
        assert!(killed, "the changes ended before the replica was killed");
        replica.wait().unwrap();
        assert!(moved.iter().any(|m| *m), "no node agent was on the killed replica");
        let deadline = Instant::now() + DEADLINE;
        while !agents.iter().all(|agent| {
            agent.pods.iter().all(|(uid, ns, _)| agent.pod_has(uid, &format!("tier:{}", tier_of(ns, &last))))
        }) {
            one_tier(&agents);
            assert!(Instant::now() < deadline, "the node agents did not end on the last change ({last})");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "every node agent ended on the last change after one of the two replicas was killed ({} of {} moved)",
            moved.iter().filter(|m| **m).count(),
            moved.len()
        );
        for agent in agents {
            agent.stop().await;
        }
        drop(service);

        // Ready (its watches listed), then stopped by SIGTERM.
        let health =
            Command::new(env!("CARGO_BIN_EXE_agent")).arg("--config").arg(&config).arg("health").output().unwrap();
        assert!(health.status.success(), "{}", String::from_utf8_lossy(&health.stdout));
        assert!(String::from_utf8_lossy(&health.stdout).contains("cluster_index"));
        terminate(child, Duration::from_secs(5));
        let log = std::fs::read_to_string(dir.join("agent.log")).unwrap();
        assert!(log.contains("cluster agent API listening"), "{log}");
        assert!(!log.contains("panicked"), "{log}");
    });
}

#[test]
fn a_cluster_agent_without_an_api_server_is_never_ready() {
    // No kubeconfig and no in-cluster service account: the index can never fill, so the agent
    // must not say it is ready (an absent environment would count as ready).
    let dir = std::env::temp_dir().join(format!("wm-cluster-agent-alone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.yaml");
    let (cmd, health, port) = (free_port().unwrap(), free_port().unwrap(), free_port().unwrap());
    std::fs::write(
        &config,
        format!("cmd_port: {cmd}\nhealth_port: {health}\ncluster_agent:\n  cmd_port: {port}\n  auth_token: {TOKEN}\n"),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .arg("--config")
        .arg(&config)
        .arg("cluster-agent")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let out =
            Command::new(env!("CARGO_BIN_EXE_agent")).arg("--config").arg(&config).arg("health").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("cluster_index") && text.contains("no API server") {
            assert!(!out.status.success(), "health says ready:\n{text}");
            break text;
        }
        assert!(Instant::now() < deadline, "no failed cluster_index in health within 30 s:\n{text}");
        std::thread::sleep(Duration::from_millis(300));
    };
    terminate(child, Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
    println!("{report}");
}
