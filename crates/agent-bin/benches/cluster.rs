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
//! The API server's, etcd's and kwok's own resident sizes are printed for context, and the
//! peer's: the OpenTelemetry Collector's `k8sattributes` processor (`test_support::kubernetes::
//! Otelcol`), started with the cluster agent as a gateway over every pod, its resident bytes per
//! pod measured the same way, and later (alone) its watches and its watch bytes per change.
//!
//! Then, on the same cluster, 100 node agents simulated in this process (the nodes `kwok-0` to
//! `kwok-99`; each a store with `kube_metadata` and a tagger, its kubelet's pods set by the
//! bench: `tests/support/node_agents.rs`), and the same changes made in each phase (25
//! namespace label changes and 10 new services, one at a time, each awaited on every node agent
//! it concerns):
//! - `cluster.propagation`: with the cluster agent, from the change's API call to its tag
//!   (`tier:<value>`, `kube_service:<name>`) on each pod it concerns, per node agent; p50/p99.
//!   Target p99 ≤ 2 s.
//! - `cluster.api_load`: the API server's own metrics (`apiserver_longrunning_requests` for the
//!   watches open, `apiserver_watch_events_sizes_sum` for the bytes of watch events sent, by
//!   resource) in four phases: none of our agents; the cluster agent alone; the cluster agent
//!   with the 100 node agents following it; 100 node agents watching the API server themselves.
//!   Ours: the cluster agent's bytes per change on the namespaces and EndpointSlices (what the
//!   changes touch); baseline: one direct node agent's. Node and pod events come with time, not
//!   with the changes (kwok's node status updates), and swamp a 10-second phase either way: they
//!   are printed per second beside. Targets: the node agents that follow the cluster agent open
//!   no watch; ratio ≤ 1.

#![cfg(feature = "cluster-agent")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failure aborts the run

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use test_support::kubernetes::{K8SATTRIBUTES_VERSION, Otelcol};
use test_support::kubernetes::{
    Kubernetes, Kwok, create_fake_nodes, fake_pod, object, wait_for_default_service_account,
};
use test_support::runtimes::{Install, free_port, terminate};

#[path = "../tests/support/node_agents.rs"]
mod node_agents;
use node_agents::{Mode, NodeAgent, PodRef, Traffic, pods_by_node};

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
    start_agent_in(cluster, port, "cluster-agent")
}

/// Starts a cluster agent with its config, token and log in the cluster's directory `name`.
fn start_agent_in(cluster: &Kubernetes, port: u16, name: &str) -> Child {
    let dir = cluster.dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "cmd_port: {}\nhealth_port: {}\nlog_level: warn\nkubernetes_kubeconfig_path: {}\n\
             ipc_max_connections_per_peer: 2048\ncluster_agent:\n  cmd_port: {port}\n  auth_token: {TOKEN}\n",
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
    // The peer, started with it on the empty cluster.
    let peer = match Otelcol::start(&cluster, Install::IfMissing) {
        Ok(peer) => Some(peer),
        Err(why) => {
            println!("cluster: the peer (the OpenTelemetry Collector's k8sattributes) did not start: {}", why.0);
            None
        }
    };
    std::thread::sleep(Duration::from_secs(5));
    let empty = test_support::procfs::rss_bytes(agent.id()).unwrap();
    let peer_rss = || peer.as_ref().and_then(Otelcol::pid).and_then(test_support::procfs::rss_bytes);
    let peer_empty = peer_rss();

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
    if let (Some(before), Some(after)) = (peer_empty, peer_rss()) {
        println!(
            "cluster: the peer, the OpenTelemetry Collector's k8sattributes processor {K8SATTRIBUTES_VERSION} as a gateway (every pod's name, uid, namespace, node and deployment, and its namespace's label tier), on the same cluster at the same time: {:.0} B/pod resident (RSS {:.1} MiB, {:.1} MiB before any)",
            after.saturating_sub(before) as f64 / pods as f64,
            mib(after),
            mib(before)
        );
    }
    drop(peer);
    let agent = tokio.block_on(load_and_propagation(&cluster, agent, port, nodes));
    terminate(agent, Duration::from_secs(5));
    drop(kwok);
    drop(tokio);
    drop(cluster);
}

/// How many cluster agents run in the phase that measures one's traffic.
const COPIES: usize = 10;
/// How many node agents are simulated.
const NODE_AGENTS: usize = 100;
/// Namespace label changes per phase, and new services.
const LABEL_CHANGES: usize = 25;
const SERVICE_CHANGES: usize = 10;

/// One change and what shows it: per node agent, the pods and the tag each must get.
struct Change {
    shows: BTreeMap<usize, Vec<(String, String)>>,
}

/// Makes one phase's changes, one at a time, each awaited on the node agents it concerns (none
/// given: a fixed 300 ms apart); returns the delay of each (change, node agent).
async fn changes(client: &kube::Client, phase: &str, agents: &[NodeAgent], nodes: usize) -> Vec<Duration> {
    let mut delays = Vec::new();
    for c in 0..LABEL_CHANGES + SERVICE_CHANGES {
        let (change, make) = if c < LABEL_CHANGES {
            let ns = format!("team-{}", c % NAMESPACES);
            let value = format!("{phase}-{c}");
            let shows = concerned(agents, nodes, |pod_ns, _| pod_ns == ns, &format!("tier:{value}"));
            let patch = json!({ "metadata": { "labels": { "tier": value } } });
            let namespaces: Api<Namespace> = Api::all(client.clone());
            let make = async move {
                namespaces
                    .patch(&ns, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
                    .await
                    .unwrap();
            };
            (Change { shows }, futures::future::FutureExt::boxed(make))
        } else {
            // A new service in team-s selecting app-0: its pods are all on kwok-s.
            let s = c - LABEL_CHANGES;
            let (ns, name) = (format!("team-{s}"), format!("svc-{phase}-{s}"));
            let shows =
                concerned(agents, nodes, |pod_ns, app| pod_ns == ns && app == "app-0", &format!("kube_service:{name}"));
            let svc = object(json!({
                "metadata": { "name": name },
                "spec": { "clusterIP": "None", "selector": { "app": "app-0" }, "ports": [{ "port": 80 }] },
            }))
            .unwrap();
            let services: Api<Service> = Api::namespaced(client.clone(), &ns);
            let make = async move {
                services.create(&PostParams::default(), &svc).await.unwrap();
            };
            (Change { shows }, futures::future::FutureExt::boxed(make))
        };
        let made = Instant::now();
        make.await;
        if agents.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        let mut pending = change.shows;
        while !pending.is_empty() {
            pending.retain(|a, pods| {
                let agent = &agents[*a];
                let done = pods.iter().all(|(uid, tag)| agent.pod_has(uid, tag));
                if done {
                    delays.push(made.elapsed());
                }
                !done
            });
            assert!(made.elapsed() < Duration::from_secs(60), "change {c} of {phase} not on every node agent in 60 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    delays
}

/// What shows a change: for each node agent, its pods for which `concerns(namespace, app)`,
/// each to get `tag`.
fn concerned(
    agents: &[NodeAgent],
    nodes: usize,
    concerns: impl Fn(&str, &str) -> bool,
    tag: &str,
) -> BTreeMap<usize, Vec<(String, String)>> {
    let mut out: BTreeMap<usize, Vec<(String, String)>> = BTreeMap::new();
    for (a, agent) in agents.iter().enumerate() {
        for (uid, ns, name) in &agent.pods {
            let k: usize = name.trim_start_matches("pod-").parse().unwrap_or(usize::MAX);
            if k == usize::MAX {
                continue;
            }
            let (_, app, _) = placement(k, nodes);
            if concerns(ns, &app) {
                out.entry(a).or_default().push((uid.clone(), tag.to_owned()));
            }
        }
    }
    out
}

/// Starts the node agents of `kwok-0` to `kwok-99` in `mode` and waits until each has its pods'
/// `tier` tags.
async fn start_node_agents(mode: &Mode, pods: &BTreeMap<String, Vec<PodRef>>) -> Vec<NodeAgent> {
    let mut agents = Vec::new();
    for i in 0..NODE_AGENTS {
        let node = format!("kwok-{i}");
        agents.push(NodeAgent::start(mode, &node, pods.get(&node).cloned().unwrap_or_default()).await);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    for agent in &agents {
        while !agent.pods.iter().all(|(uid, _, _)| agent.pod_tags(uid).iter().any(|t| t.starts_with("tier:"))) {
            assert!(Instant::now() < deadline, "{}: its pods not tagged within 5 min", agent.node);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    agents
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// `cluster.api_load` and `cluster.propagation` (see the module docs); returns the cluster
/// agent, running.
async fn load_and_propagation(cluster: &Kubernetes, agent: Child, port: u16, nodes: usize) -> Child {
    let client = cluster.client().await.unwrap();
    let pods = pods_by_node(&client).await;
    let changes_made = (LABEL_CHANGES + SERVICE_CHANGES) as f64;
    // Phase 0: none of our agents.
    terminate(agent, Duration::from_secs(5));
    let before = Traffic::now(&client).await;
    changes(&client, "none", &[], nodes).await;
    let none = Traffic::now(&client).await.minus(&before);
    // The peer alone: its watches, and what the same changes send it.
    let started = Traffic::now(&client).await;
    if let Ok(peer) = Otelcol::start(cluster, Install::Never) {
        // Its first list of every pod, served from the watch cache.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let before = Traffic::now(&client).await;
        changes(&client, "peer", &[], nodes).await;
        let load = Traffic::now(&client).await.minus(&before);
        drop(peer);
        println!(
            "cluster: the peer opened {:.0} watches (on the resources node agents watch) and got {:.0} B of watch events per change on them ({}); node and pod events, which come with time, {:.0} B/s",
            before.watches - started.watches,
            (load.changed() - none.changed()) / changes_made,
            load.split(&none, changes_made),
            load.background_per_sec() - none.background_per_sec(),
        );
    }
    // Phase 1: the cluster agent alone, as COPIES identical processes (their watches listed
    // again first): what one receives is then measured over COPIES, which divides by COPIES the
    // other watchers' noise between two phases (the direct node agents' is divided by 100).
    let agent = start_agent(cluster, port);
    let copies: Vec<(u16, Child)> = (1..COPIES)
        .map(|i| {
            let p = free_port().unwrap();
            (p, start_agent_in(cluster, p, &format!("cluster-agent-{i}")))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(900);
    for p in std::iter::once(port).chain(copies.iter().map(|(p, _)| *p)) {
        for i in 0..NODE_AGENTS {
            while tokio::task::block_in_place(|| pods_with_a_service(p, &format!("kwok-{i}"))) != PODS_PER_NODE {
                assert!(Instant::now() < deadline, "the cluster agents did not list again within 15 min");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = Traffic::now(&client).await;
    changes(&client, "alone", &[], nodes).await;
    let alone = Traffic::now(&client).await.minus(&before);
    for (_, copy) in copies {
        terminate(copy, Duration::from_secs(5));
    }
    // The copies' watches close; the phases below compare with one cluster agent's traffic.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let one = COPIES as f64;
    // The traffic of the phases below, less one cluster agent's: none's, plus a COPIES-th of
    // what the copies added.
    let alone_one = alone.scaled_over(&none, one);
    // Phase 2: the node agents follow the cluster agent.
    let before_agents = Traffic::now(&client).await;
    let agents = start_node_agents(&Mode::ClusterAgent(port, TOKEN.to_owned()), &pods).await;
    let before = Traffic::now(&client).await;
    let opened_via = before.watches - before_agents.watches;
    let mut via = changes(&client, "via", &agents, nodes).await;
    let with_agents = Traffic::now(&client).await.minus(&before);
    for a in agents {
        a.stop().await;
    }
    // Phase 3: the node agents watch the API server themselves.
    let before_agents = Traffic::now(&client).await;
    let agents = start_node_agents(&Mode::Direct(cluster.kubeconfig()), &pods).await;
    let before = Traffic::now(&client).await;
    let opened_direct = before.watches - before_agents.watches;
    let mut direct = changes(&client, "direct", &agents, nodes).await;
    let direct_load = Traffic::now(&client).await.minus(&before);
    for a in agents {
        a.stop().await;
    }

    let n = NODE_AGENTS as f64;
    // What the changes cause: events on the namespaces and EndpointSlices changed. Node and pod
    // events come with time (node status updates), whatever the changes: counted per second.
    let ours = (alone.changed() - none.changed()) / one / changes_made;
    // The cluster agent runs beside the direct node agents too: its share is taken out.
    let per_direct_agent = (direct_load.changed() - alone_one.changed()) / n / changes_made;
    // On what the changes touch: the phase waits on 100 node agents for each change, so it
    // lasts longer than the others, and the node events other watchers get come with time.
    let via_agents = (with_agents.changed() - alone_one.changed()) / n / changes_made;
    let ratio = ours / per_direct_agent;
    let ok = opened_via <= 0.0 && ratio <= 1.0;
    let ours_bg = (alone.background_per_sec() - none.background_per_sec()) / one;
    let direct_bg = (direct_load.background_per_sec() - alone_one.background_per_sec()) / n;
    println!(
        "cluster: watch bytes per change by resource: the cluster agent: {}; one direct node agent: {}",
        alone.split(&none, one * changes_made),
        direct_load.split(&alone_one, n * changes_made)
    );
    println!(
        "cluster.api_load  {ours:.0} B/change  {per_direct_agent:.0} B/change  {ratio:.2}x  <=1x, no watch  {}  (watch-event bytes on the namespaces and EndpointSlices the changes touch: the cluster agent's against one node agent's own watches'; {NODE_AGENTS} node agents following the cluster agent opened {opened_via:.0} watches and added {via_agents:.0} B per agent per change on the namespaces and EndpointSlices (noise); watching themselves they opened {opened_direct:.0} ({:.1} each) and got {:.1} events per agent per change; node and pod events, which come with time: the cluster agent {ours_bg:.0} B/s, one direct node agent {direct_bg:.0} B/s; {changes_made:.0} changes per phase, the API server's metrics)",
        if ok { "ok" } else { "MISS" },
        opened_direct / n,
        (direct_load.events - alone_one.events) / n / changes_made,
    );
    via.sort();
    direct.sort();
    let (p50, p99) = (percentile(&via, 0.5), percentile(&via, 0.99));
    println!(
        "cluster.propagation  p50 {:.0} ms, p99 {:.0} ms  -  -  p99 <=2 s  {}  ({} samples: {LABEL_CHANGES} namespace label changes and {SERVICE_CHANGES} new services, each to the tags of every node agent it concerns, of {NODE_AGENTS}; the same node agents watching the API server themselves: p50 {:.0} ms, p99 {:.0} ms)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        if p99 <= Duration::from_secs(2) { "ok" } else { "MISS" },
        via.len(),
        percentile(&direct, 0.5).as_secs_f64() * 1e3,
        percentile(&direct, 0.99).as_secs_f64() * 1e3,
    );
    agent
}
