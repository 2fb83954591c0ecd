//! kwok (`sigs.k8s.io/kwok`), built from the Go module proxy and cached beside Kubernetes, run
//! against the project's real cluster: it keeps fake nodes Ready (their heartbeat Lease renewed)
//! and moves the pods bound to them to Running with an IP, so that the API server, etcd and the
//! EndpointSlice controller do the real work of a cluster of many nodes without a kubelet each.
//!
//! kwok has no behaviour of its own: what it does to an object is said by *stages* (a selector
//! and a status patch each), given in its config file. Ours, written for these tests:
//! - a fake node that is not Ready gets Ready conditions, an address and capacity;
//! - a pod bound to a fake node, pending and not deleted, gets Ready conditions, running
//!   container statuses, its node's IP and a pod IP from `--cidr`, and phase Running;
//! - a deleted pod is removed at once.
//!
//! kwok renews each fake node's Lease itself (`--node-lease-duration-seconds`), so the node
//! controller never marks them NotReady.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use super::build::{cache_root, ensure_built, go_command, run};
use super::{Kubernetes, object};
use crate::runtimes::{Daemon, Install, Unavailable};

/// The kwok release built.
pub const KWOK_VERSION: &str = "v0.8.0";
/// The annotation (and its value) that marks a node as kwok's to manage.
pub const FAKE_NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");
/// The taint key on fake nodes, which pods bound to them tolerate.
pub const FAKE_NODE_TAINT: &str = "kwok.x-k8s.io/node";
/// The pod network kwok gives pod IPs from: a /16, room for 65,000 pods.
pub const FAKE_POD_CIDR: &str = "10.250.0.0/16";
/// The address every fake node reports.
pub const FAKE_NODE_IP: &str = "10.249.0.1";

/// Where the kwok binary is cached.
pub fn kwok_binary() -> PathBuf {
    cache_root().join(format!("kwok-{KWOK_VERSION}")).join("kwok")
}

/// Finds the kwok binary, building it from the module proxy when missing and `install` allows
/// (about 90 s here; printed).
pub fn ensure_kwok(install: Install) -> Result<PathBuf, Unavailable> {
    ensure_built(&format!("kwok {KWOK_VERSION}"), &kwok_binary(), install, |go, work| {
        let mut install_cmd = go_command(go, work);
        // `go install module@version` builds outside any module of ours: no -mod flag applies.
        install_cmd.env("GOFLAGS", "").env("GOBIN", work).args([
            "install",
            "-trimpath",
            "-ldflags",
            "-s -w",
            &format!("sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"),
        ]);
        run(&format!("go install sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"), install_cmd).map(drop)
    })
}

/// The stages kwok plays (see the module's docs), as its config file.
///
/// A stage matches again on every event of its object, so each one's patch makes its own
/// selector false: a Ready node, a Running pod.
const STAGES: &str = r#"apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: wm-node-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values: ['True']
  next:
    statusTemplate: |
      conditions:
      {{- range $type, $status := dict "Ready" "True" "MemoryPressure" "False" "DiskPressure" "False" "PIDPressure" "False" "NetworkUnavailable" "False" }}
      - type: {{ $type }}
        status: {{ $status | Quote }}
        reason: WmFake
        message: kept by kwok for the workload-metadata tests
        lastHeartbeatTime: {{ Now | Quote }}
        lastTransitionTime: {{ Now | Quote }}
      {{- end }}
      addresses:
      - type: InternalIP
        address: {{ NodeIP | Quote }}
      - type: Hostname
        address: {{ NodeName | Quote }}
      capacity: {cpu: "32", memory: 256Gi, pods: "110"}
      allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
      nodeInfo:
        architecture: amd64
        operatingSystem: linux
        kubeletVersion: fake
        kubeProxyVersion: fake
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: wm-pod-running
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Pending']
  next:
    statusTemplate: |
      {{- $now := Now }}
      conditions:
      {{- range $type := list "Initialized" "PodScheduled" "ContainersReady" "Ready" }}
      - type: {{ $type }}
        status: "True"
        lastTransitionTime: {{ $now | Quote }}
      {{- end }}
      containerStatuses:
      {{- range .spec.containers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        imageID: ""
        ready: true
        started: true
        restartCount: 0
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{- end }}
      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
      podIP: {{ PodIPWith .spec.nodeName false ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) | Quote }}
      phase: Running
      startTime: {{ $now | Quote }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: wm-pod-gone
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'
  next:
    finalizers:
      empty: true
    delete: true
"#;

/// A kwok process managing the fake nodes of one cluster; stopped (SIGTERM) when dropped.
#[derive(Debug)]
pub struct Kwok {
    daemon: Daemon,
}

impl Kwok {
    /// Starts kwok against `cluster` with the admin kubeconfig, managing the nodes annotated
    /// [`FAKE_NODE_ANNOTATION`]; builds kwok first when missing and `install` allows.
    pub fn start(cluster: &Kubernetes, install: Install) -> Result<Self, Unavailable> {
        let binary = ensure_kwok(install)?;
        let dir = cluster.peer_dir("kwok")?;
        let config = dir.join("stages.yaml");
        fs::write(&config, STAGES).map_err(|e| Unavailable(format!("{}: {e}", config.display())))?;
        let (key, value) = FAKE_NODE_ANNOTATION;
        let args = [
            format!("--kubeconfig={}", cluster.kubeconfig().display()),
            "--manage-all-nodes=false".into(),
            format!("--manage-nodes-with-annotation-selector={key}={value}"),
            format!("--cidr={FAKE_POD_CIDR}"),
            format!("--node-ip={FAKE_NODE_IP}"),
            "--node-lease-duration-seconds=40".into(),
            format!("--config={}", config.display()),
            "-v=WARN".into(),
        ];
        let mut daemon =
            Daemon { name: "kwok", program: binary, args: args.into(), log: dir.join("kwok.log"), child: None };
        // kwok reads `$KWOK_WORKDIR/kwok.yaml` first when it exists: a private, empty one.
        daemon.spawn_with_env(&[("KWOK_WORKDIR", dir.clone())])?;
        std::thread::sleep(Duration::from_millis(500));
        if let Some(status) = daemon.exited() {
            return Err(Unavailable(format!("kwok exited at once ({status}):\n{}", daemon.log_tail())));
        }
        Ok(Self { daemon })
    }

    /// Starts kwok for `test` as [`crate::runtimes::start_or_skip_with`] starts a service: built
    /// when missing under `WM_CI=1`, where failing to start fails the test; elsewhere a failure
    /// skips it (printed), and `None` comes back.
    pub fn start_or_skip(cluster: &Kubernetes, test: &str) -> Option<Self> {
        crate::runtimes::start_or_skip_with(test, |install| Self::start(cluster, install))
    }

    /// The last lines of kwok's log.
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }
}

impl Drop for Kwok {
    fn drop(&mut self) {
        self.daemon.stop(Duration::from_secs(5));
    }
}

/// A fake node named `name` for kwok to manage: its annotation, a `type: kwok` label, and a
/// taint that keeps real pods off it.
pub fn fake_node(name: &str) -> Result<k8s_openapi::api::core::v1::Node, Unavailable> {
    let (key, value) = FAKE_NODE_ANNOTATION;
    object(json!({
        "metadata": {
            "name": name,
            "annotations": { key: value, "node.alpha.kubernetes.io/ttl": "0" },
            "labels": { "type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux" },
        },
        "spec": { "taints": [{ "key": FAKE_NODE_TAINT, "value": value, "effect": "NoSchedule" }] },
    }))
}

/// A pod bound to the fake node `node` (no scheduler involved), tolerating its taint, with
/// `labels` and one container (its image is never pulled).
pub fn fake_pod(
    name: &str,
    node: &str,
    labels: &serde_json::Value,
) -> Result<k8s_openapi::api::core::v1::Pod, Unavailable> {
    object(json!({
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "nodeName": node,
            "tolerations": [{ "key": FAKE_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule" }],
            "containers": [{ "name": "app", "image": "wm.local/fake:1" }],
        },
    }))
}

/// Creates the fake nodes `kwok-0` … `kwok-<count - 1>` through `client`, 16 at a time.
///
/// # Panics
///
/// Panics when the API server refuses one.
pub async fn create_fake_nodes(client: &kube::Client, count: usize) {
    use futures::StreamExt as _;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    futures::stream::iter(0..count)
        .for_each_concurrent(16, |i| {
            let nodes = nodes.clone();
            async move {
                let node = match fake_node(&format!("kwok-{i}")) {
                    Ok(node) => node,
                    Err(why) => panic!("fake node kwok-{i}: {}", why.0),
                };
                if let Err(error) = nodes.create(&kube::api::PostParams::default(), &node).await {
                    panic!("creating fake node kwok-{i}: {error}");
                }
            }
        })
        .await;
}

/// Waits until `namespace` has its `default` service account, which a controller makes after
/// the namespace and which a pod needs before it can be created.
///
/// # Panics
///
/// Panics after `deadline`.
pub async fn wait_for_default_service_account(client: &kube::Client, namespace: &str, deadline: Duration) {
    let accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(client.clone(), namespace);
    let until = Instant::now() + deadline;
    while !matches!(accounts.get_opt("default").await, Ok(Some(_))) {
        assert!(Instant::now() < until, "{namespace} has no default service account after {deadline:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
