//! The agent deployed as users deploy it, on the real single-node Kubernetes: its image
//! (`cargo xtask image`, or built here from this build's binary) imported into the cluster's
//! containerd, then the README's "Deploy" commands run with `kubectl`: the namespace, the IPC
//! token Secret, and `kubectl apply -k` of an overlay on `deploy/kubernetes` that only says
//! where this test cluster differs from a production one (its containerd's socket in a
//! temporary directory, its API server reached on 127.0.0.1 from the host's network, its kubelet
//! on a free port).
//!
//! Then, from the host: the agent's pod is Ready; its API (with the token) lists the cluster's
//! pods and their containers with `kube_*` tags, its own pod too, and a pod created afterwards;
//! the node has no docker, and the agent's log says so once; its service account has exactly the
//! permissions of `deploy/kubernetes/rbac.yaml` (listed by `kubectl auth can-i --list`); and
//! without any one of its rules, a named check fails. Last, the node agents are moved onto the
//! cluster agent (`deploy/with-cluster-agent` as written, with kube-proxy now routing Services):
//! both cluster agent replicas get Ready on the pod network with their own ClusterRole, reaching
//! the API server through the `kubernetes` Service; the node agent's permissions shrink to the
//! kubelet's `nodes/pods`; a service made then reaches its tags through the cluster agent; and
//! with each replica SIGKILLed in turn under a stream of namespace label changes, the node agent
//! moves through the Service to the other, every pod keeping exactly one `tier` tag; the API
//! server's audit log shows no list or watch from the node agent once it follows the cluster
//! agent.

#![cfg(all(feature = "kube", feature = "kube-metadata", feature = "containerd"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use test_support::kubernetes::{Kubernetes, agent_image};

/// The ports `deploy/kubernetes/configmap.yaml` gives the agent (on the host: hostNetwork).
const CMD_PORT: u16 = 5001;
const HEALTH_PORT: u16 = 5555;
const NAMESPACE: &str = "wm-agent";
const LABEL: &str = "app.kubernetes.io/name=wm-agent";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap().to_path_buf()
}

fn kubectl(cluster: &Kubernetes, args: &[&str]) -> String {
    let out = cluster.kubectl(args).unwrap();
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A relative path from `from` to `to` (both absolute), as kustomize wants its bases.
fn relative(from: &Path, to: &Path) -> String {
    let depth = from.components().count() - 1;
    format!("{}{}", "../".repeat(depth), to.strip_prefix("/").unwrap().display())
}

/// The overlay: what this test cluster changes, nothing else.
fn write_overlay(cluster: &Kubernetes, dir: &Path, base: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let containerd_dir = cluster.containerd_socket().parent().unwrap().to_path_buf();
    let kustomization = format!(
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {base}
patches:
  - target: {{kind: DaemonSet, name: wm-agent}}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: DD_CRI_SOCKET_PATH, value: /host/test-containerd/{socket}}}
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: DD_KUBERNETES_HTTPS_KUBELET_PORT, value: "{kubelet}"}}
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: KUBERNETES_SERVICE_HOST, value: "127.0.0.1"}}
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {{name: KUBERNETES_SERVICE_PORT, value: "{apiserver}"}}
      - op: add
        path: /spec/template/spec/volumes/-
        value: {{name: test-containerd, hostPath: {{path: {containerd_dir}, type: Directory}}}}
      - op: add
        path: /spec/template/spec/containers/0/volumeMounts/-
        value: {{name: test-containerd, mountPath: /host/test-containerd, readOnly: true}}
  # The agent's state (its IPC certificate, made at first start) in a directory of the host,
  # so that the CLI on the host can trust the pod's TLS API.
  - target: {{kind: DaemonSet, name: wm-agent}}
    patch: |-
      apiVersion: apps/v1
      kind: DaemonSet
      metadata: {{name: wm-agent, namespace: wm-agent}}
      spec:
        template:
          spec:
            volumes:
              - name: state
                emptyDir: null
                hostPath: {{path: {state}, type: DirectoryOrCreate}}
"#,
        base = relative(dir, base),
        socket = cluster.containerd_socket().file_name().unwrap().to_string_lossy(),
        kubelet = cluster.kubelet_port(),
        apiserver = cluster.apiserver_port(),
        containerd_dir = containerd_dir.display(),
        state = state_dir(dir).display(),
    );
    std::fs::write(dir.join("kustomization.yaml"), kustomization).unwrap();
}

/// The overlay of `deploy/with-cluster-agent` for this cluster: the DaemonSet's differences as
/// in [`write_overlay`], and its namespace label `tier` as a tag (to follow namespace changes
/// through the cluster agent). The cluster agent runs as written: two replicas on the pod
/// network behind their Service, which kube-proxy routes; the node agents find it by the
/// Service's variables.
fn write_cluster_agent_overlay(cluster: &Kubernetes, dir: &Path, base: &Path) {
    write_overlay(cluster, dir, base);
    let mut kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    kustomization.push_str(
        r#"  - target: {kind: DaemonSet, name: wm-agent}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {name: DD_KUBERNETES_NAMESPACE_LABELS_AS_TAGS, value: '{"tier":"tier"}'}
"#,
    );
    std::fs::write(dir.join("kustomization.yaml"), kustomization).unwrap();
}

/// The cluster agent's pods: name, Ready, restart count, container id (without `containerd://`).
fn cluster_agent_pods(cluster: &Kubernetes) -> Vec<(String, bool, u64, String)> {
    let out = cluster
        .kubectl(&["-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/name=wm-cluster-agent", "-o", "json"])
        .unwrap();
    let pods: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let ready = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let status = &p["status"]["containerStatuses"][0];
            let id = status["containerID"].as_str().unwrap_or_default().trim_start_matches("containerd://");
            (
                p["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                ready,
                status["restartCount"].as_u64().unwrap_or(0),
                id.to_owned(),
            )
        })
        .collect()
}

const NODE_AGENT_USER: &str = "system:serviceaccount:wm-agent:wm-agent";
const CLUSTER_AGENT_USER: &str = "system:serviceaccount:wm-agent:wm-cluster-agent";

/// The API server's list and watch requests per user, from its audit log: those before byte
/// `from` of the log, then those after (from the first whole line).
fn list_and_watch_requests(cluster: &Kubernetes, from: u64) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let audit = std::fs::read_to_string(cluster.audit_log()).unwrap();
    let from = usize::try_from(from).unwrap().min(audit.len());
    let after_start = audit[from..].find('\n').map_or(audit.len(), |i| from + i + 1);
    let count = |text: &str| {
        let mut users = BTreeMap::new();
        for line in text.lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if event["stage"] == "RequestReceived" && (event["verb"] == "list" || event["verb"] == "watch") {
                let user = event["user"]["username"].as_str().unwrap_or_default().to_owned();
                *users.entry(user).or_insert(0) += 1;
            }
        }
        users
    };
    (count(&audit[..from]), count(&audit[after_start..]))
}

/// The `tier:` tags of every entity `agent tagger-list` shows in namespace `shop`, per entity.
fn shop_tiers(tagger_list: &str) -> Vec<(String, Vec<String>)> {
    tagger_list
        .split("=== Entity ")
        .skip(1)
        .filter(|block| block.contains("kube_namespace:shop"))
        .map(|block| {
            let entity = block.split_whitespace().next().unwrap_or_default().to_owned();
            let tiers = block
                .split(|c: char| c.is_whitespace() || c == '[' || c == ']')
                .filter(|t| t.starts_with("tier:"))
                .map(str::to_owned)
                .collect();
            (entity, tiers)
        })
        .collect()
}

/// Where the pod keeps its state on the host (the overlay's hostPath).
fn state_dir(overlay: &Path) -> PathBuf {
    overlay.with_file_name("agent-state")
}

/// The image to deploy: `$WM_AGENT_IMAGE` (what `cargo xtask ci` built with `cargo xtask image`),
/// else one built here from this build's agent binary.
fn image_archive(dir: &Path) -> PathBuf {
    match std::env::var_os("WM_AGENT_IMAGE").filter(|v| !v.is_empty()) {
        Some(archive) => PathBuf::from(archive),
        None => agent_image(Path::new(env!("CARGO_BIN_EXE_agent")), &dir.join("image")).unwrap().archive,
    }
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// A config for the agent CLI on the host: the pod's ports, the token the Secret holds, and the
/// pod's IPC certificate (`cert`, in the overlay's state directory) to trust.
fn host_cli_config(dir: &Path, token: &str, cert: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).unwrap();
    let token_path = dir.join("auth_token");
    std::fs::write(&token_path, token).unwrap();
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "cmd_port: {CMD_PORT}\nhealth_port: {HEALTH_PORT}\nauth_token_file_path: {}\nipc_cert_file_path: {}\n",
            token_path.display(),
            cert.display()
        ),
    )
    .unwrap();
    config
}

/// The agent CLI's output, or what it said on failure.
fn cli(config: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_agent")).arg("--config").arg(config).args(args).output().unwrap();
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        format!("agent {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr))
    }
}

/// `GET /health` on the pod's health port (open to anyone, like the probes).
fn health() -> Option<serde_json::Value> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", HEALTH_PORT)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    serde_json::from_str(response.split_once("\r\n\r\n")?.1).ok()
}

/// Polls `check` every 500 ms until it holds or `within` passes; the last value for the message.
fn wait_for<T: std::fmt::Debug>(what: &str, within: Duration, check: impl FnMut() -> (bool, T)) -> T {
    poll(within, check).unwrap_or_else(|last| panic!("{what}: not within {within:?}; last: {last:#?}"))
}

/// Polls `check` every 500 ms until it holds (`Ok`) or `within` passes (`Err`, the last value).
fn poll<T>(within: Duration, mut check: impl FnMut() -> (bool, T)) -> Result<T, T> {
    let deadline = Instant::now() + within;
    loop {
        let (done, last) = check();
        if done {
            return Ok(last);
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn agent_pods(cluster: &Kubernetes) -> serde_json::Value {
    serde_json::from_str(&kubectl(cluster, &["-n", NAMESPACE, "get", "pods", "-l", LABEL, "-o", "json"])).unwrap()
}

/// The name of the agent's one Ready pod, once there is one (and no other).
fn wait_ready_pod(cluster: &Kubernetes) -> String {
    wait_for("the agent's pod Ready", Duration::from_secs(120), || {
        let pods = agent_pods(cluster);
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        let ready = items.len() == 1
            && items[0]["metadata"]["deletionTimestamp"].is_null()
            && items[0]["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let name = items.first().and_then(|p| p["metadata"]["name"].as_str()).unwrap_or_default().to_owned();
        (ready, if ready { name } else { format!("{:#}", pods["items"]) })
    })
}

/// The agent's service account's permissions on resources, as `kubectl auth can-i --list`
/// prints them: `resource [verbs]` lines.
fn effective_permissions(cluster: &Kubernetes) -> BTreeSet<String> {
    let listing = kubectl(cluster, &["auth", "can-i", "--list", "--as=system:serviceaccount:wm-agent:wm-agent"]);
    listing
        .lines()
        .skip(1)
        .filter_map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            let resource = columns.first()?;
            let verbs = line.rsplit_once('[').map(|(_, v)| format!("[{v}"))?;
            // Non-resource URLs (`/api`, `/version` …, every authenticated user's) have an empty
            // resource column: their rows start with `[]`.
            (!resource.starts_with('[')).then(|| format!("{resource} {verbs}"))
        })
        .collect()
}

#[test]
fn the_daemonset_deploys_with_least_privilege_and_its_agent_serves_the_clusters_pods() {
    let test = "the_daemonset_deploys";
    test_support::runtimes::with_service(test, Kubernetes::start, async |cluster: &mut Kubernetes| {
        assert!(
            port_is_free(CMD_PORT) && port_is_free(HEALTH_PORT),
            "the agent's ports {CMD_PORT} and {HEALTH_PORT} are taken on this machine"
        );
        let dir = cluster.dir().join("deploy");
        std::fs::create_dir_all(&dir).unwrap();
        let repo = repo();

        // A workload before the agent: a pod in a labelled namespace, behind a Service.
        kubectl(cluster, &["create", "namespace", "shop"]);
        kubectl(cluster, &["label", "namespace", "shop", "team=commerce"]);
        wait_for("the namespace's default service account", Duration::from_secs(60), || {
            (cluster.kubectl(&["-n", "shop", "get", "serviceaccount", "default"]).unwrap().status.success(), ())
        });
        let busybox = Kubernetes::IMAGE;
        kubectl(
            cluster,
            &[
                "-n",
                "shop",
                "run",
                "web",
                "--image",
                busybox,
                "--image-pull-policy=Never",
                "--labels=app=web",
                "--command",
                "--",
                "/bin/sleep",
                "3600",
            ],
        );
        kubectl(cluster, &["-n", "shop", "create", "service", "clusterip", "web", "--tcp=80:80"]);

        // The README's "Deploy" commands.
        let archive = image_archive(&dir);
        let out = cluster.ctr(&["images", "import", &archive.display().to_string()]).unwrap();
        assert!(out.status.success(), "ctr images import: {}", String::from_utf8_lossy(&out.stderr));
        kubectl(cluster, &["apply", "-f", &repo.join("deploy/kubernetes/namespace.yaml").display().to_string()]);
        // The README's own line, through a shell, as an operator runs it; the token read back.
        let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
        let secret = readme.lines().find(|l| l.contains("create secret generic wm-agent-auth")).unwrap();
        let kubectl_dir = test_support::kubernetes::bin_dir();
        let path = format!("{}:{}", kubectl_dir.display(), std::env::var("PATH").unwrap_or_default());
        let out = Command::new("sh")
            .arg("-c")
            .arg(secret)
            .env("PATH", path)
            .env("KUBECONFIG", cluster.kubeconfig())
            .output()
            .unwrap();
        assert!(out.status.success(), "{secret}: {}", String::from_utf8_lossy(&out.stderr));
        let token = kubectl(
            cluster,
            &["-n", NAMESPACE, "get", "secret", "wm-agent-auth", "-o", "go-template={{.data.token | base64decode}}"],
        );
        assert_eq!(token.len(), 48, "the README's token: 24 random bytes in hex: {token:?}");
        // The base as it is is accepted by the API server ...
        kubectl(cluster, &["apply", "--dry-run=server", "-k", &repo.join("deploy/kubernetes").display().to_string()]);
        // ... and applied with this cluster's overlay.
        let overlay = dir.join("overlay");
        write_overlay(cluster, &overlay, &repo.join("deploy/kubernetes"));
        kubectl(cluster, &["apply", "-k", &overlay.display().to_string()]);
        let pod = wait_ready_pod(cluster);
        println!("deploy: the agent's pod {pod} is Ready");

        // From the host, with the token: the cluster's pods, their containers' kube_* tags, the
        // agent's own pod.
        let cert = state_dir(&overlay).join("ipc_cert.pem");
        assert!(cert.is_file(), "the pod made its IPC certificate in {}", cert.display());
        let cli_config = host_cli_config(&dir.join("cli"), &token, &cert);
        let wanted = [
            "pod_name:web".to_owned(),
            "kube_namespace:shop".into(),
            "kube_container_name:web".into(),
            "kube_service:web".into(),
            format!("pod_name:{pod}"),
            "kube_namespace:wm-agent".into(),
            "kube_daemon_set:wm-agent".into(),
            "kube_container_name:agent".into(),
            "image_name:wm.local/wm-agent".into(),
        ];
        let tags = wait_for("the pods' containers tagged, the agent's own too", Duration::from_secs(90), || {
            let tags = cli(&cli_config, &["tagger-list"]);
            let done = wanted.iter().all(|t| tags.contains(t.as_str()));
            if !done && tags.contains("failed (") {
                let logs = cluster.kubectl(&["-n", NAMESPACE, "logs", "--tail=20", &pod]).unwrap();
                return (false, format!("{tags}\nthe agent's log:\n{}", String::from_utf8_lossy(&logs.stdout)));
            }
            (done, tags)
        });
        println!("deploy: the agent's tagger-list from the host:\n{tags}");
        let workloads = cli(&cli_config, &["workload-list"]);
        assert!(workloads.contains("kubernetes_pod") && workloads.contains(&pod), "{workloads}");
        // A pod created afterwards appears.
        kubectl(
            cluster,
            &[
                "-n",
                "shop",
                "run",
                "late",
                "--image",
                busybox,
                "--image-pull-policy=Never",
                "--command",
                "--",
                "/bin/sleep",
                "3600",
            ],
        );
        wait_for("the late pod", Duration::from_secs(90), || {
            let tags = cli(&cli_config, &["tagger-list"]);
            (tags.contains("pod_name:late") && tags.contains("kube_container_name:late"), ())
        });
        // Without the token, nothing but the probes.
        let denied = Command::new(env!("CARGO_BIN_EXE_agent"))
            .arg("--config")
            .arg(host_cli_config(&dir.join("cli-wrong"), &"0".repeat(48), &cert))
            .arg("tagger-list")
            .output()
            .unwrap();
        assert!(!denied.status.success() && !String::from_utf8_lossy(&denied.stdout).contains("pod_name:"));

        // A node without docker: one line per docker collector (containers, images) says so, and
        // no warning or error names docker.
        let log = kubectl(cluster, &["-n", NAMESPACE, "logs", &pod]);
        let docker: Vec<&str> = log.lines().filter(|l| l.to_ascii_lowercase().contains("docker")).collect();
        println!("deploy: the agent's log says of docker: {docker:#?}");
        for collector in ["docker", "docker_images"] {
            let said = format!("collector=\"{collector}\" reason=");
            let not_present = docker.iter().filter(|l| l.contains("not detected") && l.contains(&said)).count();
            assert_eq!(not_present, 1, "one 'not detected' line for {collector}: {docker:#?}");
        }
        let alarms: Vec<&&str> = docker.iter().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
        assert!(alarms.is_empty(), "warnings or errors about docker: {alarms:#?}");
        let others: Vec<&&str> =
            docker.iter().filter(|l| !l.contains("not detected") && !l.contains("agent started")).collect();
        assert!(others.is_empty(), "docker named beyond the one line and the list of collectors: {others:#?}");

        // Exactly the rules of rbac.yaml, and each one needed.
        let granted = effective_permissions(cluster);
        let expected: BTreeSet<String> = [
            "nodes/pods [get]",
            "pods [list watch]",
            "namespaces [list watch]",
            "nodes [list watch]",
            "endpointslices.discovery.k8s.io [list watch]",
            // Every authenticated user's (system:basic-user), and every one's read of cluster trust
            // bundles (for projected volumes): the cluster's defaults, not ours.
            "clustertrustbundles.certificates.k8s.io [get list watch]",
            "selfsubjectreviews.authentication.k8s.io [create]",
            "selfsubjectaccessreviews.authorization.k8s.io [create]",
            "selfsubjectrulesreviews.authorization.k8s.io [create]",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        println!("deploy: the service account may: {granted:?}");
        assert_eq!(granted, expected, "the agent's effective permissions");
        let rules = [
            (0, "nodes/pods", "kubelet", "403"),
            (1, "pods", "kube_metadata", "resource \\\"pods\\\""),
            (2, "namespaces", "kube_metadata", "resource \\\"namespaces\\\""),
            (3, "nodes", "kube_metadata", "resource \\\"nodes\\\""),
            (4, "endpointslices", "kube_metadata", "resource \\\"endpointslices\\\""),
        ];
        for (index, resource, collector, says) in rules {
            let patch = format!(r#"[{{"op": "remove", "path": "/rules/{index}"}}]"#);
            kubectl(cluster, &["patch", "clusterrole", "wm-agent", "--type=json", "-p", &patch]);
            kubectl(cluster, &["-n", NAMESPACE, "delete", "pod", "-l", LABEL, "--wait=true"]);
            let state = wait_for(&format!("without {resource}: {collector} fails"), Duration::from_secs(90), || {
                let health = health();
                let named = health
                    .as_ref()
                    .and_then(|h| h["collectors"].as_array().cloned())
                    .into_iter()
                    .flatten()
                    .find(|c| c["name"] == collector);
                let text = named.as_ref().map(ToString::to_string).unwrap_or_default();
                (text.contains(says) && !text.contains("\"running\""), text)
            });
            let shown: String = state.chars().take(240).collect();
            println!("deploy: without {resource}: {collector} {shown}…");
            // The rule back (the whole overlay applied again), for the next one.
            kubectl(cluster, &["apply", "-k", &overlay.display().to_string()]);
        }
        assert_eq!(effective_permissions(cluster), expected);

        // The node agents moved onto the cluster agent (README, "Deploy"): its Secret by the
        // README's line, then deploy/with-cluster-agent as it is (a dry run, strict) and
        // through this cluster's overlay.
        let with = repo.join("deploy/with-cluster-agent");
        let secret = readme.lines().find(|l| l.contains("create secret generic wm-cluster-agent-auth")).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(secret)
            .env("PATH", format!("{}:{}", kubectl_dir.display(), std::env::var("PATH").unwrap_or_default()))
            .env("KUBECONFIG", cluster.kubeconfig())
            .output()
            .unwrap();
        assert!(out.status.success(), "{secret}: {}", String::from_utf8_lossy(&out.stderr));
        let accepted =
            kubectl(cluster, &["apply", "-k", &with.display().to_string(), "--dry-run=server", "--validate=strict"]);
        for object in [
            "deployment.apps/wm-cluster-agent",
            "service/wm-cluster-agent",
            "poddisruptionbudget.policy/wm-cluster-agent",
            "clusterrole.rbac.authorization.k8s.io/wm-cluster-agent",
            "daemonset.apps/wm-agent",
        ] {
            assert!(accepted.contains(object), "{object} not in: {accepted}");
        }
        // The cluster agent as written: two replicas on the pod network, which reach the API
        // server through the `kubernetes` Service and are reached through their own; kube-proxy
        // routes both.
        let Some(proxy) = test_support::kubernetes::KubeProxy::start_or_skip(cluster, test) else { return };
        kubectl(cluster, &["label", "namespace", "shop", "tier=t0"]);
        let with_overlay = dir.join("with-cluster-agent");
        write_cluster_agent_overlay(cluster, &with_overlay, &with);
        kubectl(cluster, &["apply", "-k", &with_overlay.display().to_string()]);
        let replicas = poll(Duration::from_secs(180), || {
            let pods = cluster_agent_pods(cluster);
            (pods.len() == 2 && pods.iter().all(|p| p.1), pods)
        });
        if let Err(pods) = replicas {
            let logs = pods.first().map_or_else(String::new, |p| {
                let said = |args: &[&str]| {
                    let out = cluster.kubectl(args).unwrap();
                    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
                };
                let events = said(&[
                    "-n",
                    NAMESPACE,
                    "get",
                    "events",
                    "--field-selector",
                    &format!("involvedObject.name={}", p.0),
                ]);
                format!("{}{events}", said(&["-n", NAMESPACE, "logs", &p.0, "--tail=30"]))
            });
            panic!(
                "both cluster agent replicas Ready (their watches listed with their own ClusterRole): not within \
                 180s; last: {pods:#?}\nthe first one said, and its events:\n{logs}\nkube-proxy said:\n{}",
                proxy.log_tail()
            );
        }
        let pod = wait_ready_pod(cluster);
        let audit_from = std::fs::metadata(cluster.audit_log()).unwrap().len();
        // The node agent may now do nothing on the API server but read the kubelet's /pods.
        let granted = effective_permissions(cluster);
        let kubelet_only: BTreeSet<String> = expected
            .iter()
            .filter(|p| !["pods [", "namespaces [", "nodes [", "endpointslices."].iter().any(|r| p.starts_with(r)))
            .cloned()
            .collect();
        assert_eq!(granted, kubelet_only, "the node agent's permissions with the cluster agent");
        // A service made now reaches the node agent through the cluster agent alone.
        kubectl(cluster, &["-n", "shop", "create", "service", "clusterip", "web-via-ca", "--tcp=81:80"]);
        kubectl(
            cluster,
            &["-n", "shop", "patch", "service", "web-via-ca", "-p", r#"{"spec":{"selector":{"app":"web"}}}"#],
        );
        let tags =
            wait_for("kube_service of a new service, through the cluster agent", Duration::from_secs(120), || {
                let tags = cli(&cli_config, &["tagger-list"]);
                (tags.contains("kube_service:web-via-ca") && tags.contains("kube_service:web"), tags)
            });
        let health = cli(&cli_config, &["health"]);
        assert!(health.contains("kube_metadata") && !health.contains("degraded"), "{health}");
        println!("deploy: the node agent {pod} on the cluster agent; its tags:\n{tags}");

        // One replica dies, then the other, under a steady stream of namespace label changes:
        // the node agent moves through the Service to the one alive; every pod of `shop` keeps
        // exactly one `tier` tag throughout and ends on the last change.
        wait_for("tier:t0 on every pod of shop", Duration::from_secs(60), || {
            let tiers = shop_tiers(&cli(&cli_config, &["tagger-list"]));
            (!tiers.is_empty() && tiers.iter().all(|(_, t)| t == &["tier:t0"]), tiers)
        });
        let stop = std::sync::atomic::AtomicBool::new(false);
        let kubeconfig = cluster.kubeconfig();
        let label = |value: &str| {
            let out = Command::new(test_support::kubernetes::bin_dir().join("kubectl"))
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["label", "namespace", "shop", &format!("tier={value}"), "--overwrite"])
                .output()
                .unwrap();
            assert!(out.status.success(), "kubectl label: {}", String::from_utf8_lossy(&out.stderr));
        };
        let (last, samples) = std::thread::scope(|scope| {
            let labeler = scope.spawn(|| {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    label(&format!("t{n}"));
                    std::thread::sleep(Duration::from_millis(300));
                }
                n
            });
            // Stops the labeler however this ends (a failed check panics; the scope then joins it).
            struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            let stop_guard = Stop(&stop);
            let mut samples = 0;
            let replicas = cluster_agent_pods(cluster);
            for (name, _, restarts, id) in &replicas {
                let out = cluster.ctr(&["tasks", "kill", "-s", "SIGKILL", id]).unwrap();
                assert!(out.status.success(), "ctr tasks kill {id}: {}", String::from_utf8_lossy(&out.stderr));
                wait_for(&format!("{name} restarted and Ready"), Duration::from_secs(120), || {
                    let tiers = shop_tiers(&cli(&cli_config, &["tagger-list"]));
                    samples += 1;
                    let one_each = !tiers.is_empty() && tiers.iter().all(|(_, t)| t.len() == 1);
                    assert!(one_each, "a pod of shop without exactly one tier tag while {name} was down: {tiers:?}");
                    let pods = cluster_agent_pods(cluster);
                    let back = pods.iter().any(|p| &p.0 == name && p.1 && p.2 > *restarts);
                    (back && pods.iter().all(|p| p.1), pods)
                });
            }
            // A few changes more with both replicas back.
            std::thread::sleep(Duration::from_secs(2));
            drop(stop_guard);
            (format!("tier:t{}", labeler.join().unwrap()), samples)
        });
        let tiers = wait_for(&format!("{last} on every pod of shop"), Duration::from_secs(60), || {
            let tiers = shop_tiers(&cli(&cli_config, &["tagger-list"]));
            (!tiers.is_empty() && tiers.iter().all(|(_, t)| t == &[last.as_str()]), tiers)
        });
        let health = cli(&cli_config, &["health"]);
        assert!(!health.contains("degraded"), "{health}");
        // The API server's own word: since it moved onto the cluster agent, the node agent listed
        // and watched nothing there, while the restarted replicas listed and watched again.
        let (before, after) = list_and_watch_requests(cluster, audit_from);
        assert!(before.get(NODE_AGENT_USER).is_some_and(|n| *n > 0), "the audit log names the node agent: {before:?}");
        assert_eq!(
            after.get(NODE_AGENT_USER),
            None,
            "the node agent on the cluster agent listed or watched: {after:?}"
        );
        assert!(after.get(CLUSTER_AGENT_USER).is_some_and(|n| *n > 0), "{after:?}");
        // The node agent's stream broke when its replica died, and it followed another one.
        let log = kubectl(cluster, &["-n", NAMESPACE, "logs", &pod]);
        let streams = log.matches("following the cluster agent's node stream").count();
        assert!(streams >= 2, "the node agent never moved to another replica:\n{log}");
        println!(
            "deploy: both cluster agent replicas killed in turn; {} entities of shop on {last} ({samples} samples, \
             one tier tag each; the node agent followed {streams} streams; lists and watches in the audit log \
             since it follows the cluster agent: {after:?})",
            tiers.len()
        );
        kubectl(cluster, &["delete", "-k", &with_overlay.display().to_string(), "--wait=false"]);
    });
}
