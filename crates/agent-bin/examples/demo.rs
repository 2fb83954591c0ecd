//! `cargo xtask demo`: real runtimes up (dockerd, and a single-node Kubernetes whose kubelet
//! runs on its own containerd), labelled containers and a labelled two-container pod, the agent
//! against them, what it sees printed (`agent workload-list`, `agent tagger-list`), a container's
//! processes and a host Python program with their languages (the process collector), the
//! container's image and its tags, the cluster agent answering what a Datadog node agent asks
//! (the node's pods with their services, a namespace's labels; 401 without its token), one
//! container removed and shown gone, then everything torn down. Needs root; installs the Debian packages it
//! misses and builds the Kubernetes components the first time (cached in `~/.cache/wm-k8s`).
//!
//! The pod is read by the kubelet collector (the kubelet's `/pods`, with a service-account token
//! from the TokenRequest API, as an agent's DaemonSet reads it) and its containers also by the
//! containerd collector from the cluster's containerd (namespace `k8s.io`, the sandbox skipped):
//! the store merges both sources.
//!
//! Usage: `cargo run -p agent-bin --example demo -- <path to the agent binary>` (what `cargo xtask
//! demo` runs, after building the agent).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use test_support::kubernetes::{Kubernetes, container, deployment};
use test_support::runtimes::{self, Install, Runtimes, Unavailable};

fn free_port() -> Result<u16, String> {
    runtimes::free_port().map_err(|e| format!("no free port: {e}"))
}

struct Agent {
    binary: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// Writes `yaml` to `config`, prints it, and starts `binary --config <config> <command>`.
    fn start(binary: &Path, config: PathBuf, yaml: &str, command: &str) -> Result<Self, String> {
        std::fs::write(&config, yaml).map_err(|e| e.to_string())?;
        print!("{yaml}");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .arg(command)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {} {command}: {e}", binary.display()))?;
        Ok(Agent { binary: binary.to_owned(), config, child: Some(child) })
    }

    fn query(&self, args: &[&str]) -> Result<Output, String> {
        Command::new(&self.binary).arg("--config").arg(&self.config).args(args).output().map_err(|e| e.to_string())
    }

    fn text(&self, args: &[&str]) -> Result<String, String> {
        let out = self.query(args)?;
        if !out.status.success() {
            return Err(format!("agent {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn wait_for(&self, args: &[&str], what: &str, check: impl Fn(&str) -> bool) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = self.text(args)
                && check(&text)
            {
                return Ok(text);
            }
            if Instant::now() > deadline {
                return Err(format!("{what}: not seen within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            runtimes::terminate(child, Duration::from_secs(5));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn step(text: &str) {
    println!("\n##### {text}");
}

fn check(what: &str, out: Result<Output, Unavailable>) -> Result<String, String> {
    let out = out.map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn demo(binary: &Path) -> Result<(), String> {
    step("bringing up containerd and dockerd (private sockets, temporary directory)");
    let rt = Runtimes::start(Install::IfMissing).map_err(|e| e.to_string())?;
    println!("containerd: {}\ndockerd:    {}", rt.containerd_socket().display(), rt.docker_socket().display());

    step("bringing up a single-node Kubernetes (etcd, API server, controllers, scheduler, kubelet on containerd)");
    let cluster = Kubernetes::start(Install::IfMissing).map_err(|e| e.to_string())?;
    for (phase, took) in &cluster.timings {
        println!("{phase}: {took:.1?}");
    }
    println!(
        "API server: {}
kubelet:    {}
containerd: {}",
        cluster.api_server_url(),
        cluster.kubelet_url(),
        cluster.containerd_socket().display()
    );

    step("creating a labelled two-container pod (a Deployment in namespace demo)");
    let (pod_containers, token) = run_pod(&cluster)?;
    println!("pod containers (containerd://): {}", pod_containers.join(", "));

    step("starting labelled containers");
    let web = check(
        "docker run web",
        rt.docker(&[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "none",
            "--label",
            "team=frontend",
            "-e",
            "DD_SERVICE=web",
            "-e",
            "DD_ENV=demo",
            "-e",
            "DD_VERSION=1.4",
            Runtimes::IMAGE,
            "sleep",
            "3600",
        ]),
    )?;
    let db = check(
        "docker run db",
        rt.docker(&[
            "run",
            "-d",
            "--name",
            "db",
            "--network",
            "none",
            "--label",
            "team=storage",
            Runtimes::IMAGE,
            "sleep",
            "3600",
        ]),
    )?;
    println!("docker: web {}, db {}", &web[..12], &db[..12]);

    step("starting the agent");
    let dir = rt.dir().join("agent");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let config = dir.join("agent.yaml");
    let token_file = dir.join("kubelet-token");
    std::fs::write(&token_file, token).map_err(|e| e.to_string())?;
    let yaml = format!(
        "cmd_port: {}\nhealth_port: {}\ndocker_host: {}\ncri_socket_path: {}\nautoconfig_exclude_features: [podman]\n\
         kubernetes_kubelet_host: 127.0.0.1\nkubernetes_https_kubelet_port: {}\nkubelet_auth_token_path: {}\n\
         kubelet_client_ca: {}\nlog_level: warn\ncontainer_labels_as_tags:\n  team: team\n\
         kubernetes_pod_labels_as_tags:\n  team: team\n\
         process_config:\n  process_collection:\n    enabled: true\n  intervals:\n    process: 2\n\
         container_image:\n  enabled: true\n",
        free_port()?,
        free_port()?,
        rt.docker_host(),
        cluster.containerd_socket().display(),
        cluster.kubelet_port(),
        token_file.display(),
        cluster.ca_cert().display(),
    );
    let mut agent = Agent::start(binary, config, &yaml, "run")?;
    agent.wait_for(&["health"], "the agent ready", |out| out.contains("Agent health: PASS"))?;
    let list = agent.wait_for(&["workload-list"], "the four containers and the pod", |out| {
        out.contains(&format!("id: {web} ==="))
            && out.contains(&format!("id: {db} ==="))
            && out.contains("=== Entity kubernetes_pod")
            && pod_containers
                .iter()
                .all(|id| out.contains(&format!("sources(merged):[node_orchestrator runtime] id: {id} ===")))
    })?;

    step("agent workload-list (containers, pods, node; the host's processes below)");
    let (shown, processes) = without_processes(&list);
    print!("{shown}");
    println!("(and {processes} processes of the host, not shown)");

    step("the web container's processes, a Python program and dockerd on the host (the process collector)");
    let mut python = Command::new("python3")
        .args(["-c", "import time; time.sleep(3600)"])
        .spawn()
        .map_err(|e| format!("cannot start python3: {e}"))?;
    let python_pid = python.id().to_string();
    let json = agent.wait_for(&["workload-list", "--json"], "web's process and the Python program", |out| {
        processes_of(out, &web).is_some_and(|p| !p.is_empty())
            && processes_of(out, "")
                .is_some_and(|p| p.iter().any(|l| l.starts_with(&python_pid) && l.contains("python")))
    })?;
    println!("in web ({}):", &web[..12]);
    for line in processes_of(&json, &web).unwrap_or_default() {
        println!("  {line}");
    }
    println!("on the host:");
    // The Python program (its name tells), and dockerd (a Go binary: its ELF sections tell).
    let host = processes_of(&json, "").unwrap_or_default();
    for line in host.iter().filter(|l| l.starts_with(&python_pid) || l.contains(" dockerd language")) {
        println!("  {line}");
    }
    let _ = python.kill();
    let _ = python.wait();

    step("web's image (container_image_metadata) and its tags");
    let image_id =
        check("docker image inspect", rt.docker(&["image", "inspect", "--format", "{{.Id}}", Runtimes::IMAGE]))?;
    let entry = format!("id: {image_id} ===");
    let list = agent.wait_for(&["workload-list", "-v"], "web's image", |out| out.contains(&entry))?;
    let block = list.split_inclusive("\n\n").find(|e| e.contains(&entry)).unwrap_or_default();
    // The merged view only (the source's own version repeats it).
    for line in block.lines().skip(1).take_while(|l| *l != "===") {
        println!("  {line}");
    }
    let tags = agent.wait_for(&["tagger-list"], "the image's tags", |out| {
        out.contains(&format!("container_image_metadata://{image_id}"))
    })?;
    let block = tags
        .split_inclusive("\n\n")
        .find(|e| e.contains(&format!("container_image_metadata://{image_id}")))
        .unwrap_or_default();
    print!("{block}");
    step("agent tagger-list");
    let tags = agent.wait_for(&["tagger-list"], "their tags", |out| {
        out.contains("team:storage") && out.contains("team:frontend")
    })?;
    print!("{tags}");

    cluster_agent(binary, &cluster, &rt.dir().join("cluster-agent"))?;

    step("removing db (docker rm -f db)");
    check("docker rm", rt.docker(&["rm", "-f", "db"]))?;
    let after = agent.wait_for(&["workload-list"], "db gone", |out| !out.contains(&db))?;
    println!("containers the agent now knows:");
    let mut lines = after.lines();
    while let Some(line) = lines.next() {
        if line == "----------- Entity Meta -----------"
            && let Some(name) = lines.next().and_then(|l| l.strip_prefix("Name: "))
        {
            println!("  {name}");
        }
    }
    println!("db ({}) is gone: {}", &db[..12], !after.contains(&db));

    step("agent status");
    print!("{}", agent.text(&["status"])?);

    step("stopping the agent and tearing down the runtimes and the cluster");
    agent.stop();
    drop(rt);
    drop(cluster);
    println!("done: every process the demo started is stopped, its directory removed");
    Ok(())
}

/// Returns a workload list's text without its process entries, and how many there were.
fn without_processes(list: &str) -> (String, usize) {
    let mut shown = String::new();
    let mut processes = 0;
    for entry in list.split_inclusive("\n\n") {
        if entry.starts_with("=== Entity process ") {
            processes += 1;
        } else {
            shown.push_str(entry);
        }
    }
    (shown, processes)
}

/// Returns one line per process of `container` (empty: the host) in the JSON of
/// `agent workload-list --json`: pid, pid in its namespace, name and language; `None` when the
/// text is not that JSON.
fn processes_of(json: &str, container: &str) -> Option<Vec<String>> {
    let list: serde_json::Value = serde_json::from_str(json).ok()?;
    let mut lines = Vec::new();
    for entry in list.get("entities")?.as_object()?.values() {
        let p = entry.get("merged")?;
        if p.get("kind").and_then(|k| k.as_str()) != Some("process")
            || p.get("container_id").and_then(|c| c.as_str()).unwrap_or("") != container
        {
            continue;
        }
        let field = |name: &str| p.get(name).map(|v| v.to_string().trim_matches('"').to_owned()).unwrap_or_default();
        lines.push(format!(
            "{} (pid {} in its namespace) {} language: {}",
            field("pid"),
            field("ns_pid"),
            field("name"),
            p.get("language").and_then(|l| l.as_str()).unwrap_or("none detected")
        ));
    }
    lines.sort();
    Some(lines)
}

/// The token node agents present to the demo's cluster agent (32 characters at least, as Datadog
/// requires of `cluster_agent.auth_token`).
const CLUSTER_AGENT_TOKEN: &str = "wm-demo-cluster-agent-token-0123456789";

/// `GET path` on the cluster agent at `port` as a Datadog node agent asks it (TLS, the
/// certificate not verified, a bearer token): the status and the body.
fn ask_cluster_agent(port: u16, path: &str, token: Option<&str>) -> Result<(u16, String), String> {
    let mut curl = Command::new("curl");
    curl.args(["-sk", "--max-time", "5", "-w", "\n%{http_code}"]);
    if let Some(token) = token {
        curl.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = curl.arg(format!("https://127.0.0.1:{port}{path}")).output().map_err(|e| format!("curl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((status.trim().parse().unwrap_or(0), body.to_owned()))
}

/// Puts a Service in front of the demo's pod and a label on its namespace, runs `agent
/// cluster-agent` on the cluster (its watches through the admin kubeconfig) and asks it what a
/// Datadog node agent asks: the node's pods and their services, the namespace's labels.
fn cluster_agent(binary: &Path, cluster: &Kubernetes, dir: &Path) -> Result<(), String> {
    step("the cluster agent: the cluster watched once, served to node agents (Datadog's API)");
    check("kubectl expose", cluster.kubectl(&["-n", "demo", "expose", "deployment", "shop", "--port=80"]))?;
    check("kubectl label", cluster.kubectl(&["label", "namespace", "demo", "tier=gold"]))?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let port = free_port()?;
    let yaml = format!(
        "cmd_port: {}\nhealth_port: {}\nlog_level: warn\nkubernetes_kubeconfig_path: {}\n\
         cluster_agent:\n  cmd_port: {port}\n  auth_token: {CLUSTER_AGENT_TOKEN}\n",
        free_port()?,
        free_port()?,
        cluster.kubeconfig().display(),
    );
    let mut ca = Agent::start(binary, dir.join("agent.yaml"), &yaml, "cluster-agent")?;
    let node = format!("/api/v1/tags/pod/{}", Kubernetes::NODE);
    let deadline = Instant::now() + Duration::from_secs(60);
    let pods = loop {
        if let Ok((200, body)) = ask_cluster_agent(port, &node, Some(CLUSTER_AGENT_TOKEN))
            && body.contains("\"shop\"")
        {
            break body;
        }
        if Instant::now() > deadline {
            ca.stop();
            return Err("the cluster agent did not list the shop service within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let pretty = |body: &str| {
        serde_json::from_str::<serde_json::Value>(body)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| body.to_owned())
    };
    println!("GET {node} (this node's pods and the services they back):\n{}", pretty(&pods));
    let namespace = "/api/v1/metadata/namespace/demo";
    let (_, meta) = ask_cluster_agent(port, namespace, Some(CLUSTER_AGENT_TOKEN))?;
    println!("GET {namespace} (its labels become tags on every node):\n{}", pretty(&meta));
    let (status, _) = ask_cluster_agent(port, &node, None)?;
    println!("GET {node} without the token: {status}");
    ca.stop();
    Ok(())
}

/// Creates the demo's Deployment; returns its pod's container ids once it runs, and a
/// service-account token that may read the kubelet's pods.
fn run_pod(cluster: &Kubernetes) -> Result<(Vec<String>, String), String> {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::{Api, PostParams};
    let sleep = ["/bin/sleep", "3600"];
    let deployment =
        deployment("shop", &[("team", "commerce")], vec![container("api", &sleep), container("cache", &sleep)])
            .map_err(|e| e.to_string())?;
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    tokio.block_on(async {
        cluster.create_namespace("demo").await.map_err(|e| e.to_string())?;
        let api: Api<Deployment> = Api::namespaced(cluster.client().await.map_err(|e| e.to_string())?, "demo");
        api.create(&PostParams::default(), &deployment).await.map_err(|e| e.to_string())?;
        let pods = cluster
            .wait_for_running_pods("demo", "app=shop", 1, Duration::from_secs(120))
            .await
            .map_err(|e| e.to_string())?;
        let ids = pods[0]
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .filter_map(|c| c.container_id.as_deref()?.strip_prefix("containerd://").map(str::to_owned))
            .collect();
        let token = cluster.service_account_token("wm-agent", "wm-agent").await.map_err(|e| e.to_string())?;
        Ok((ids, token))
    })
}

fn main() -> ExitCode {
    let Some(binary) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: cargo run -p agent-bin --example demo -- <path to the agent binary>");
        return ExitCode::from(2);
    };
    match demo(&binary) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}
