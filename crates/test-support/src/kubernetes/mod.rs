//! A real single-node Kubernetes for tests and the demo, built from the published Kubernetes Go
//! modules ([`ensure_binaries`]), started as root in a private temporary directory on private ports.
//!
//! What it runs, and why:
//! - **etcd** on 127.0.0.1, its data in the directory.
//! - **kube-apiserver** on every address (TLS, our CA; clients on the host use 127.0.0.1, pods
//!   the node's address), with a service-account issuer and signing
//!   key, `Node,RBAC` authorization and the `NodeRestriction` admission plugin, as a production
//!   cluster has; an audit log of every request at `Metadata` level ([`Kubernetes::audit_log`]),
//!   so tests can check which calls a client made.
//! - **kube-controller-manager** (service-account tokens and root CA publishing, endpoints and
//!   endpoint slices, Deployments and ReplicaSets, namespace lifecycle: its default
//!   controllers) and **kube-scheduler**, each with a client certificate of its own; no leader
//!   election (one of each).
//! - **containerd** (Debian's 1.6) with its CRI plugin on, its own root, state and socket, and
//!   `restrict_oom_score_adj` (no process here, root included, may lower its OOM score: the
//!   kubelet's -998 for sandboxes would make runc fail); CNI
//!   from Debian's `containernetworking-plugins` (a `bridge` of its own, `host-local` addresses,
//!   `loopback`), so pods get IPs; a local sandbox image ([`Kubernetes::SANDBOX_IMAGE`], its
//!   process only sleeps) and a workload image ([`Kubernetes::IMAGE`]) imported into `k8s.io`.
//! - **kubelet** registered as [`Kubernetes::NODE`], on that containerd's CRI, listening on
//!   every address (a DaemonSet reaches it at `status.hostIP`, as in production) with a
//!   certificate from our CA for the node's name, address and 127.0.0.1. It authenticates with webhook token review and
//!   authorizes with SubjectAccessReview, as a production kubelet does, so a service-account
//!   token from the TokenRequest API reads `/pods` exactly as an agent's DaemonSet would, and an
//!   anonymous request gets 401. This machine needs: `failSwapOn: false` (swap may be on),
//!   `failCgroupV1: false` (a cgroup v1 host), `cgroupDriver: cgroupfs` (no systemd), no
//!   eviction thresholds worth the name and no image garbage collection (the images cannot be
//!   pulled again), and pod logs, plugins and state under the directory.
//!
//! For Services that route, [`KubeProxy`] runs kube-proxy on it (iptables mode), started only by
//! the tests that need one: it writes rules in the host's nat table.
//!
//! For a cluster of many nodes, [`Kwok`] runs kwok against it: fake nodes kept Ready, the pods
//! bound to them Running with an IP, no kubelet each.
//!
//! Nothing on the machine's default paths or ports is used: every socket, port, data and log is
//! the cluster's own, except the device-plugin directory whose path the kubelet hard-codes
//! (`/var/lib/kubelet/device-plugins`; see [`DevicePlugin`]). Dropping the handle deletes every pod it can, stops exactly the processes
//! it started (SIGTERM, then SIGKILL), kills the shims left that name its directory, deletes the
//! network namespaces and the bridge its pods made, unmounts every volume under the directory
//! and removes it, also when a test panics.

mod build;
mod device_plugin;
mod fake_kubelet;
mod image;
mod kube_proxy;
mod kwok;
mod otelcol;
pub(crate) mod pki;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use build::{
    BINARIES, ETCD_VERSION, KUBERNETES_VERSION, bin_dir, cache_root, ensure_binaries, ensure_kube_proxy,
    kube_proxy_binary,
};
pub use client::{container, deployment, object, pod_runs};
pub use device_plugin::{DevicePlugin, KUBELET_SOCKET};
pub use fake_kubelet::FakeKubelet;
pub use image::{AGENT_IMAGE, AGENT_IMAGE_USER, AgentImage, agent_image};
pub use kube_proxy::KubeProxy;
pub use kwok::{
    FAKE_NODE_ANNOTATION, FAKE_NODE_IP, FAKE_NODE_TAINT, FAKE_POD_CIDR, KWOK_VERSION, Kwok, create_fake_nodes,
    ensure_kwok, fake_node, fake_pod, kwok_binary, wait_for_default_service_account,
};
pub use otelcol::{K8SATTRIBUTES_VERSION, Otelcol, ensure_otelcol, otelcol_binary};
pub use pki::CertFiles;

use crate::runtimes::{
    Daemon, Install, Unavailable, check, ensure_installed, free_port, is_root, kill_processes_naming, unmount_under,
};

/// The Debian packages the cluster needs, with a binary each brings.
pub const KUBERNETES_PACKAGES: &[(&str, &str)] = &[
    ("containerd", "containerd"),
    ("runc", "runc"),
    ("busybox", "busybox-static"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("ip", "iproute2"),
    ("curl", "curl"),
    // kube-proxy's rules (KubeProxy).
    ("iptables", "iptables"),
];

/// A running single-node cluster. Dropping it tears everything down.
#[derive(Debug)]
pub struct Kubernetes {
    dir: PathBuf,
    node_ip: String,
    apiserver_port: u16,
    kubelet_port: u16,
    etcd: Daemon,
    apiserver: Daemon,
    controller_manager: Daemon,
    scheduler: Daemon,
    containerd: Daemon,
    kubelet: Daemon,
    /// Network namespaces that existed before: the ones to delete are the others.
    netns_before: BTreeSet<String>,
    /// Seconds each phase of the start took, for the record.
    pub timings: Vec<(&'static str, Duration)>,
    /// The host-wide lock that keeps two clusters from running at once (they would share the
    /// bridge and the node name); released after the teardown.
    _one_at_a_time: fs::File,
}

/// Takes the host-wide cluster lock, waiting while another test process holds it.
fn one_cluster_at_a_time() -> Result<fs::File, Unavailable> {
    let path = std::env::temp_dir().join("wm-k8s.lock");
    let file = fs::File::create(&path).map_err(|e| Unavailable(format!("{}: {e}", path.display())))?;
    if file.try_lock().is_err() {
        eprintln!("kubernetes: another test process runs a cluster; waiting for it to end");
        file.lock().map_err(|e| Unavailable(format!("{}: {e}", path.display())))?;
    }
    Ok(file)
}

/// The node's address: its first global IPv4 address (the kubelet refuses a loopback node IP).
fn node_ip() -> Result<String, Unavailable> {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]).output();
    let out = out.map_err(|e| Unavailable(format!("ip addr: {e}")))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1)?.split('/').next().map(str::to_owned))
        .ok_or_else(|| Unavailable("the node has no global IPv4 address for the kubelet".into()))
}

fn netns() -> BTreeSet<String> {
    fs::read_dir("/var/run/netns")
        .map(|entries| entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn write(path: &Path, text: &str) -> Result<(), Unavailable> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| Unavailable(format!("{}: {e}", parent.display())))?;
    }
    fs::write(path, text).map_err(|e| Unavailable(format!("{}: {e}", path.display())))
}

/// A kubeconfig for `user`'s client certificate against the API server.
fn kubeconfig(server: &str, ca: &Path, user: &str, files: &CertFiles) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: wm\n  cluster:\n    server: {server}\n    \
         certificate-authority: {}\nusers:\n- name: {user}\n  user:\n    client-certificate: {}\n    \
         client-key: {}\ncontexts:\n- name: wm\n  context:\n    cluster: wm\n    user: {user}\n\
         current-context: wm\n",
        ca.display(),
        files.cert.display(),
        files.key.display()
    )
}

impl Kubernetes {
    /// The node's name.
    pub const NODE: &'static str = "wm-node";
    /// The image the test workloads run (busybox; give it a command).
    pub const IMAGE: &'static str = "wm.local/busybox:1";
    /// The pod sandbox image.
    pub const SANDBOX_IMAGE: &'static str = "wm.local/pause:1";
    /// The CNI bridge the pods are attached to.
    pub const BRIDGE: &'static str = "wm-cni0";
    /// The pod network (host-local addresses on the bridge).
    pub const POD_SUBNET: &'static str = "10.244.0.0/24";
    /// containerd's namespace for Kubernetes.
    pub const CTR_NAMESPACE: &'static str = "k8s.io";

    /// Builds (or finds cached) the binaries, installs what is missing (if allowed), starts the
    /// cluster and waits until the node is ready; tears down on failure.
    pub fn start(install: Install) -> Result<Self, Unavailable> {
        if !is_root() {
            return Err(Unavailable("the cluster needs root".into()));
        }
        let started = Instant::now();
        ensure_installed(install, KUBERNETES_PACKAGES)?;
        let bin = if install == Install::Never && !BINARIES.iter().all(|b| bin_dir().join(b).is_file()) {
            return Err(Unavailable(format!(
                "the Kubernetes binaries are not built in {} (cargo xtask ci builds them)",
                bin_dir().display()
            )));
        } else {
            ensure_binaries()?
        };
        let built = started.elapsed();
        let one_at_a_time = one_cluster_at_a_time()?;

        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wm-k8s-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        let node_ip = node_ip()?;
        let port = || free_port().map_err(|e| Unavailable(format!("no free port: {e}")));
        let (etcd_port, etcd_peer, apiserver_port, kubelet_port) = (port()?, port()?, port()?, port()?);
        let daemon = |name: &'static str, program: PathBuf, args: Vec<String>| Daemon {
            name,
            program,
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        let placeholder = |name: &'static str| daemon(name, bin.join(name), Vec::new());
        let mut k8s = Self {
            netns_before: netns(),
            dir: dir.clone(),
            node_ip,
            apiserver_port,
            kubelet_port,
            etcd: placeholder("etcd"),
            apiserver: placeholder("kube-apiserver"),
            controller_manager: placeholder("kube-controller-manager"),
            scheduler: placeholder("kube-scheduler"),
            containerd: daemon("containerd", "containerd".into(), Vec::new()),
            kubelet: placeholder("kubelet"),
            timings: vec![("binaries", built)],
            _one_at_a_time: one_at_a_time,
        };
        k8s.configure(&bin, etcd_port, etcd_peer)?;
        k8s.start_all()?;
        k8s.timings.push(("cluster start", started.elapsed().saturating_sub(built)));
        Ok(k8s)
    }

    fn d(&self, path: &str) -> String {
        self.dir.join(path).display().to_string()
    }

    /// Writes certificates, kubeconfigs and config files, and sets every daemon's arguments.
    fn configure(&mut self, bin: &Path, etcd_port: u16, etcd_peer: u16) -> Result<(), Unavailable> {
        let pki = pki::Pki::new(&self.dir.join("pki"))?;
        let ip = self.node_ip.clone();
        let server = format!("https://127.0.0.1:{}", self.apiserver_port);
        let apiserver_names = [
            "localhost",
            "127.0.0.1",
            "10.0.0.1",
            ip.as_str(),
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ];
        let apiserver = pki.issue("apiserver", "kube-apiserver", &[], &apiserver_names, true, false)?;
        let kubelet_client = pki.issue(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            &["system:masters"],
            &[],
            false,
            true,
        )?;
        let admin = pki.issue("admin", "wm-admin", &["system:masters"], &[], false, true)?;
        let cm = pki.issue("controller-manager", "system:kube-controller-manager", &[], &[], false, true)?;
        let scheduler = pki.issue("scheduler", "system:kube-scheduler", &[], &[], false, true)?;
        let node_user = format!("system:node:{}", Self::NODE);
        let node = pki.issue("node", &node_user, &["system:nodes"], &[], false, true)?;
        let kubelet_serving =
            pki.issue("kubelet", Self::NODE, &[], &["localhost", "127.0.0.1", Self::NODE, &ip], true, false)?;
        let sa = pki.key_pair("service-account")?;
        let ca = pki.ca.clone();
        let path = |p: &Path| p.display().to_string();

        write(&self.dir.join("admin.kubeconfig"), &kubeconfig(&server, &ca, "wm-admin", &admin))?;
        write(&self.dir.join("controller-manager.kubeconfig"), &kubeconfig(&server, &ca, "controller-manager", &cm))?;
        write(&self.dir.join("scheduler.kubeconfig"), &kubeconfig(&server, &ca, "scheduler", &scheduler))?;
        write(&self.dir.join("kubelet.kubeconfig"), &kubeconfig(&server, &ca, &node_user, &node))?;
        // kube-proxy's identity, which the bootstrap role `system:node-proxier` is bound to.
        let proxy = pki.issue("kube-proxy", "system:kube-proxy", &[], &[], false, true)?;
        write(&self.dir.join("kube-proxy.kubeconfig"), &kubeconfig(&server, &ca, "system:kube-proxy", &proxy))?;
        write(
            &self.dir.join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n",
        )?;

        self.etcd.args = [
            "--name=wm",
            &format!("--data-dir={}", self.d("etcd")),
            &format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            &format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            &format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
            &format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
            &format!("--initial-cluster=wm=http://127.0.0.1:{etcd_peer}"),
            "--listen-metrics-urls=",
            "--log-level=warn",
        ]
        .map(String::from)
        .to_vec();
        self.apiserver.args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            // Every address, as a production API server: a pod reaches it at the node's address
            // (through the `kubernetes` Service when kube-proxy runs). TLS and RBAC as ever.
            "--bind-address=0.0.0.0".into(),
            format!("--secure-port={}", self.apiserver_port),
            format!("--advertise-address={ip}"),
            format!("--cert-dir={}", self.d("apiserver")),
            format!("--tls-cert-file={}", path(&apiserver.cert)),
            format!("--tls-private-key-file={}", path(&apiserver.key)),
            format!("--client-ca-file={}", path(&ca)),
            format!("--kubelet-client-certificate={}", path(&kubelet_client.cert)),
            format!("--kubelet-client-key={}", path(&kubelet_client.key)),
            format!("--kubelet-certificate-authority={}", path(&ca)),
            // The node's name does not resolve here; its address does (logs, exec).
            "--kubelet-preferred-address-types=InternalIP".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", path(&sa.cert)),
            format!("--service-account-signing-key-file={}", path(&sa.key)),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--allow-privileged=true".into(),
            format!("--audit-log-path={}", self.d("audit.log")),
            format!("--audit-policy-file={}", self.d("audit-policy.yaml")),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        self.apiserver.program = bin.join("kube-apiserver");
        self.controller_manager.args = vec![
            format!("--kubeconfig={}", self.d("controller-manager.kubeconfig")),
            format!("--authentication-kubeconfig={}", self.d("controller-manager.kubeconfig")),
            format!("--authorization-kubeconfig={}", self.d("controller-manager.kubeconfig")),
            format!("--service-account-private-key-file={}", path(&sa.key)),
            format!("--root-ca-file={}", path(&ca)),
            "--use-service-account-credentials=true".into(),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=0".into(),
            "--v=1".into(),
        ];
        self.scheduler.args = vec![
            format!("--kubeconfig={}", self.d("scheduler.kubeconfig")),
            format!("--authentication-kubeconfig={}", self.d("scheduler.kubeconfig")),
            format!("--authorization-kubeconfig={}", self.d("scheduler.kubeconfig")),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=0".into(),
            "--v=1".into(),
        ];

        // containerd with its CRI plugin: CNI from Debian, the sandbox image of ours. Pods get a
        // default route through the bridge, so that a Service address (outside the pod subnet)
        // reaches the host, where kube-proxy's rules send it on.
        let cni = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "wm",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": Self::BRIDGE,
                    "isGateway": true,
                    "isDefaultGateway": true,
                    "ipMasq": false,
                    "ipam": { "type": "host-local", "ranges": [[{ "subnet": Self::POD_SUBNET }]],
                              "dataDir": self.d("cni/ipam") },
                },
                { "type": "loopback" },
            ],
        });
        write(&self.dir.join("cni/net.d/10-wm.conflist"), &cni.to_string())?;
        let mut config = String::new();
        let _ = write!(
            config,
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\n[grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}\"\n\
             [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{}\"\n  \
             stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n  enable_selinux = false\n  \
             restrict_oom_score_adj = true\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\"\n  \
             default_runtime_name = \"runc\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  SystemdCgroup = false\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{}\"\n",
            self.d("containerd/root"),
            self.d("containerd/state"),
            self.d("containerd.sock"),
            self.d("containerd.sock.ttrpc"),
            Self::SANDBOX_IMAGE,
            self.d("cni/net.d"),
        );
        write(&self.dir.join("containerd.toml"), &config)?;
        self.containerd.args = vec!["--config".into(), self.d("containerd.toml")];

        // The kubelet: webhook authentication and authorization, as in production.
        write(&self.dir.join("resolv.conf"), "nameserver 127.0.0.1\n")?;
        let kubelet_config = format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\naddress: 0.0.0.0\nport: {}\n\
             readOnlyPort: 0\nhealthzPort: 0\nauthentication:\n  anonymous:\n    enabled: false\n  webhook:\n    \
             enabled: true\n    cacheTTL: 10s\n  x509:\n    clientCAFile: {}\nauthorization:\n  mode: Webhook\n  \
             webhook:\n    cacheAuthorizedTTL: 10s\n    cacheUnauthorizedTTL: 5s\ntlsCertFile: {}\ntlsPrivateKeyFile: {}\n\
             cgroupDriver: cgroupfs\ncontainerRuntimeEndpoint: unix://{}\nfailSwapOn: false\nfailCgroupV1: false\n\
             enforceNodeAllocatable: []\nsyncFrequency: 5s\nnodeStatusUpdateFrequency: 5s\n\
             evictionHard:\n  memory.available: \"1Mi\"\n  nodefs.available: \"1%\"\n  imagefs.available: \"1%\"\n  \
             nodefs.inodesFree: \"1%\"\nimageGCHighThresholdPercent: 100\nimageGCLowThresholdPercent: 99\n\
             resolvConf: {}\nclusterDomain: cluster.local\nvolumePluginDir: {}\npodLogsDir: {}\nserializeImagePulls: false\n\
             registerNode: true\n",
            self.kubelet_port,
            path(&ca),
            path(&kubelet_serving.cert),
            path(&kubelet_serving.key),
            self.d("containerd.sock"),
            self.d("resolv.conf"),
            self.d("kubelet-plugins"),
            self.d("pod-logs"),
        );
        write(&self.dir.join("kubelet.yaml"), &kubelet_config)?;
        self.kubelet.args = vec![
            format!("--config={}", self.d("kubelet.yaml")),
            format!("--kubeconfig={}", self.d("kubelet.kubeconfig")),
            format!("--root-dir={}", self.d("kubelet")),
            format!("--cert-dir={}", self.d("kubelet-pki")),
            format!("--hostname-override={}", Self::NODE),
            format!("--node-ip={ip}"),
            "--v=1".into(),
        ];
        Ok(())
    }

    fn start_all(&mut self) -> Result<(), Unavailable> {
        let step = Instant::now();
        self.etcd.spawn()?;
        let etcd_url = self.etcd.args.iter().find_map(|a| a.strip_prefix("--listen-client-urls=")).unwrap_or_default();
        let health = format!("{etcd_url}/health");
        self.wait("etcd", Duration::from_secs(30), |k| k.curl_ok(&health, None))?;
        self.timings.push(("etcd", step.elapsed()));

        let step = Instant::now();
        self.apiserver.spawn()?;
        self.wait("kube-apiserver", Duration::from_secs(90), |k| k.api_get("/readyz").is_ok())?;
        self.timings.push(("kube-apiserver", step.elapsed()));

        let step = Instant::now();
        self.controller_manager.spawn()?;
        self.scheduler.spawn()?;
        self.containerd.spawn()?;
        self.wait("containerd", Duration::from_secs(30), |k| k.ctr(&["version"]).is_ok_and(|o| o.status.success()))?;
        let archive = image::build_archive(
            &self.dir.join("image"),
            &[
                image::ImageSpec { name: Self::SANDBOX_IMAGE, entrypoint: &["/bin/sleep", "2147483647"] },
                image::ImageSpec { name: Self::IMAGE, entrypoint: &["/bin/sh"] },
            ],
        )?;
        check("ctr images import", &self.ctr(&["images", "import", &archive.display().to_string()])?)?;
        self.kubelet.spawn()?;
        self.wait("the node", Duration::from_secs(90), Self::node_ready)?;
        self.timings.push(("controllers, containerd, images, kubelet (node ready)", step.elapsed()));
        Ok(())
    }

    /// Waits until `ready`; a daemon that exits meanwhile fails at once, with its log.
    fn wait(&mut self, what: &str, timeout: Duration, ready: impl Fn(&Self) -> bool) -> Result<(), Unavailable> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(self) {
                return Ok(());
            }
            for daemon in self.daemons_mut() {
                if let Some(status) = daemon.exited() {
                    return Err(Unavailable(format!(
                        "{} exited ({status}) while waiting for {what}:\n{}",
                        daemon.name,
                        daemon.log_tail()
                    )));
                }
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .daemons_mut()
                    .into_iter()
                    .filter(|d| d.pid().is_some())
                    .map(|d| format!("--- {}:\n{}", d.name, d.log_tail()))
                    .collect();
                return Err(Unavailable(format!("{what}: not ready within {timeout:?}\n{}", logs.join("\n"))));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn daemons_mut(&mut self) -> Vec<&mut Daemon> {
        vec![
            &mut self.etcd,
            &mut self.apiserver,
            &mut self.controller_manager,
            &mut self.scheduler,
            &mut self.containerd,
            &mut self.kubelet,
        ]
    }

    /// Whether `url` answers 200 (plain HTTP, or HTTPS with our CA and a bearer `token`).
    fn curl_ok(&self, url: &str, token: Option<&str>) -> bool {
        let mut cmd = Command::new("curl");
        cmd.args(["-sf", "-o", "/dev/null", "--max-time", "2", "--cacert"]).arg(self.ca_cert());
        if let Some(token) = token {
            cmd.arg("-H").arg(format!("Authorization: Bearer {token}"));
        }
        cmd.arg(url).stdin(Stdio::null()).status().is_ok_and(|s| s.success())
    }

    /// The private directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes and returns `name`'s directory in the private one, for a peer process started
    /// beside the cluster (kwok, kube-proxy, a collector): its config and logs go there.
    pub fn peer_dir(&self, name: &str) -> Result<PathBuf, Unavailable> {
        let dir = self.dir.join(name);
        fs::create_dir_all(&dir).map_err(|e| Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        Ok(dir)
    }

    /// The API server's URL.
    pub fn api_server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// A cluster-admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// The CA every component's certificate chains to (the kubelet's serving one too).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("pki/ca.crt")
    }

    /// The API server's port on 127.0.0.1.
    pub fn apiserver_port(&self) -> u16 {
        self.apiserver_port
    }

    /// The kubelet's HTTPS address (`https://127.0.0.1:<port>`).
    pub fn kubelet_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.kubelet_port)
    }

    /// The kubelet's port.
    pub fn kubelet_port(&self) -> u16 {
        self.kubelet_port
    }

    /// The node's IP address.
    pub fn node_ip(&self) -> &str {
        &self.node_ip
    }

    /// containerd's socket (the kubelet's CRI runtime).
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The kubelet's pod-resources socket (under its `--root-dir`).
    pub fn pod_resources_socket(&self) -> PathBuf {
        PathBuf::from(self.d("kubelet")).join("pod-resources/kubelet.sock")
    }

    /// The API server's audit log (one JSON event per line, `Metadata` level).
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// The pids of the cluster's processes, by name.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        [&self.etcd, &self.apiserver, &self.controller_manager, &self.scheduler, &self.containerd, &self.kubelet]
            .into_iter()
            .filter_map(|d| d.pid().map(|p| (d.name, p)))
            .collect()
    }

    /// Resident memory of each process, in KiB (from `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> Vec<(&'static str, u64)> {
        self.pids()
            .into_iter()
            .filter_map(|(name, pid)| {
                let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let kib =
                    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
                Some((name, kib))
            })
            .collect()
    }

    /// Stops the API server (SIGTERM); the rest runs on.
    pub fn stop_apiserver(&mut self) {
        // A stopped daemon keeps its arguments; `start_apiserver` runs it again.
        self.apiserver.stop(Duration::from_secs(10));
    }

    /// Starts the API server again and waits until it is ready.
    pub fn start_apiserver(&mut self) -> Result<(), Unavailable> {
        self.apiserver.spawn()?;
        self.wait("kube-apiserver", Duration::from_secs(90), |k| k.api_get("/readyz").is_ok())
    }

    /// Runs `kubectl` as cluster admin (the README's deploy commands, as an operator types them).
    pub fn kubectl(&self, args: &[&str]) -> Result<Output, Unavailable> {
        Command::new(bin_dir().join("kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Unavailable(format!("kubectl {args:?}: {e}")))
    }

    /// Runs `ctr` against the cluster's containerd, in namespace `k8s.io`.
    pub fn ctr(&self, args: &[&str]) -> Result<Output, Unavailable> {
        Command::new("ctr")
            .arg("--address")
            .arg(self.containerd_socket())
            .args(["--namespace", Self::CTR_NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Unavailable(format!("ctr {args:?}: {e}")))
    }

    /// A GET on the API server as cluster admin, through `curl`: the tooling's own way in, with
    /// no async runtime (tests use [`Kubernetes::client`]).
    fn api_get(&self, path: &str) -> Result<String, Unavailable> {
        let pki = self.dir.join("pki");
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", "--cacert"])
            .arg(pki.join("ca.crt"))
            .arg("--cert")
            .arg(pki.join("admin.crt"))
            .arg("--key")
            .arg(pki.join("admin.key"))
            .arg(format!("{}{path}", self.api_server_url()))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Unavailable(format!("curl: {e}")))?;
        check("curl", &out)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether the node reports `Ready`.
    fn node_ready(&self) -> bool {
        let Ok(body) = self.api_get(&format!("/api/v1/nodes/{}", Self::NODE)) else { return false };
        let Ok(node) = serde_json::from_str::<serde_json::Value>(&body) else { return false };
        node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    }

    fn teardown(&mut self) {
        // The kubelet first (it would restart what follows), then every container's process.
        self.kubelet.stop(Duration::from_secs(10));
        if self.containerd.pid().is_some() {
            let tasks = self.ctr(&["tasks", "list", "--quiet"]).map(|o| lines(&o)).unwrap_or_default();
            for task in &tasks {
                let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", task]);
                let _ = self.ctr(&["tasks", "delete", "--force", task]);
            }
        }
        self.scheduler.stop(Duration::from_secs(5));
        self.controller_manager.stop(Duration::from_secs(5));
        self.apiserver.stop(Duration::from_secs(10));
        self.etcd.stop(Duration::from_secs(10));
        self.containerd.stop(Duration::from_secs(10));
        kill_processes_naming(&self.dir);
        // Only the CNI plugin's (`cni-…`): another test's runtime may have made the others.
        for ns in netns().difference(&self.netns_before).filter(|ns| ns.starts_with("cni-")) {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
        let _ = Command::new("ip").args(["link", "delete", Self::BRIDGE]).stderr(Stdio::null()).status();
        unmount_under(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout).lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

impl Drop for Kubernetes {
    fn drop(&mut self) {
        self.teardown();
    }
}

mod client;
