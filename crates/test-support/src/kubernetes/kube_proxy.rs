//! kube-proxy, built from the same Kubernetes module as the other components and cached beside
//! them, run on the project's real cluster so that a Service's address routes to its pods, as on
//! a production node: a node agent reaching the cluster agent's replicas through their Service,
//! a pod reaching the API server through the `kubernetes` Service.
//!
//! It runs in iptables mode (Debian's `iptables`; no `nft` here), as the node's own identity
//! `system:kube-proxy` (the `system:node-proxier` role binds it), and touches nothing of the host
//! but its own `KUBE-*` chains:
//! - `--masquerade-all`: a connection through a Service leaves with the node's address, so the
//!   answer of a pod on the same bridge comes back through the host's connection tracking
//!   instead of straight across the bridge to a client that never spoke to it;
//! - conntrack limits and timeouts 0 (the host's sysctls left as they are), NodePorts only on
//!   the node's address (none on localhost: that sets `route_localnet`; the tests make no
//!   NodePort Service anyway), its health and metrics ports on free loopback ports;
//! - its OOM score left alone (this machine lets no process lower its own).
//!
//! Stopping it runs `kube-proxy --cleanup`, which deletes every chain and rule it made.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::Kubernetes;
use super::build::ensure_kube_proxy;
use crate::runtimes::{Daemon, Install, Unavailable};

/// A running kube-proxy; dropping it stops it and deletes its rules.
#[derive(Debug)]
pub struct KubeProxy {
    daemon: Daemon,
    binary: PathBuf,
}

impl KubeProxy {
    /// Starts kube-proxy on `cluster` and waits until its rules route the `kubernetes`
    /// Service; builds it first when missing and `install` allows.
    pub fn start(cluster: &Kubernetes, install: Install) -> Result<Self, Unavailable> {
        let binary = ensure_kube_proxy(install)?;
        let dir = cluster.peer_dir("kube-proxy")?;
        let port = || crate::runtimes::free_port().map_err(|e| Unavailable(format!("a free port: {e}")));
        let (healthz, metrics) = (port()?, port()?);
        let args = [
            format!("--kubeconfig={}", cluster.dir().join("kube-proxy.kubeconfig").display()),
            format!("--hostname-override={}", Kubernetes::NODE),
            "--proxy-mode=iptables".into(),
            "--masquerade-all".into(),
            format!("--cluster-cidr={}", Kubernetes::POD_SUBNET),
            format!("--healthz-bind-address=127.0.0.1:{healthz}"),
            format!("--metrics-bind-address=127.0.0.1:{metrics}"),
            "--conntrack-max-per-core=0".into(),
            "--conntrack-tcp-timeout-established=0s".into(),
            "--conntrack-tcp-timeout-close-wait=0s".into(),
            "--iptables-localhost-nodeports=false".into(),
            format!("--nodeport-addresses={}/32", cluster.node_ip()),
            "--oom-score-adj=0".into(),
            "--v=1".into(),
        ];
        let mut daemon = Daemon {
            name: "kube-proxy",
            program: binary.clone(),
            args: args.into(),
            log: dir.join("kube-proxy.log"),
            child: None,
        };
        daemon.spawn()?;
        let mut proxy = Self { daemon, binary };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if routes_the_kubernetes_service() {
                return Ok(proxy);
            }
            if let Some(status) = proxy.daemon.exited() {
                return Err(Unavailable(format!("kube-proxy exited ({status}):\n{}", proxy.daemon.log_tail())));
            }
            if Instant::now() > deadline {
                return Err(Unavailable(format!(
                    "kube-proxy wrote no rule for the kubernetes Service within 60 s:\n{}",
                    proxy.daemon.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts kube-proxy for `test` as [`crate::runtimes::start_or_skip_with`] starts a service:
    /// built when missing under `WM_CI=1`, where failing to start fails the test; elsewhere a
    /// failure skips it (printed), and `None` comes back.
    pub fn start_or_skip(cluster: &Kubernetes, test: &str) -> Option<Self> {
        crate::runtimes::start_or_skip_with(test, |install| Self::start(cluster, install))
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }
}

/// Whether the nat table sends the `kubernetes` Service's address somewhere (kube-proxy names
/// each Service's rule after it in a comment).
fn routes_the_kubernetes_service() -> bool {
    Command::new("iptables").args(["-w", "5", "-t", "nat", "-S", "KUBE-SERVICES"]).output().is_ok_and(|out| {
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("default/kubernetes:https")
    })
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        self.daemon.stop(Duration::from_secs(5));
        let _ = Command::new(&self.binary).arg("--cleanup").output();
    }
}
