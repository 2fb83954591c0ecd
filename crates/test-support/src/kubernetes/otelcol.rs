//! A minimal OpenTelemetry Collector with the `k8sattributes` processor, the peer the cluster
//! agent is measured beside (`cluster.memory`, `cluster.api_load`): built from the Go module
//! proxy (`otelcol/main.go`: the OTLP receiver, the processor, the nop exporter) and cached
//! beside Kubernetes, run against the project's real cluster with its admin kubeconfig.
//!
//! The processor's newest release, v1.4.1, needs a build of `go.opentelemetry.io/otel/sdk` that
//! the module proxy does not serve; v1.0.0 (with the collector's v0.161.0 modules) is the newest
//! that builds here.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use super::Kubernetes;
use super::build::{cache_root, ensure_built, go_command, run};
use crate::runtimes::{Daemon, Install, Unavailable};

/// The `k8sattributes` processor's release built.
pub const K8SATTRIBUTES_VERSION: &str = "v1.0.0";
/// The collector's modules it goes with.
const COLLECTOR_VERSION: &str = "v0.161.0";

/// The collector's `main.go`.
const MAIN: &str = include_str!("otelcol/main.go");

/// Where the collector binary is cached.
pub fn otelcol_binary() -> PathBuf {
    cache_root().join(format!("otelcol-k8sattributes-{K8SATTRIBUTES_VERSION}")).join("wm-otelcol")
}

/// Finds the collector, building it from the module proxy when missing and `install` allows
/// (about 100 s here with Kubernetes' build cache warm; printed).
pub fn ensure_otelcol(install: Install) -> Result<PathBuf, Unavailable> {
    let what = format!("otelcol (k8sattributes {K8SATTRIBUTES_VERSION})");
    ensure_built(&what, &otelcol_binary(), install, |go, work| {
        let write = |name: &str, text: &str| {
            fs::write(work.join(name), text).map_err(|e| Unavailable(format!("{}: {e}", work.join(name).display())))
        };
        write("go.mod", "module wm.local/otelcol\n\ngo 1.26\n")?;
        write("main.go", MAIN)?;
        let mut get = go_command(go, work);
        get.args([
            "get",
            &format!(
                "github.com/open-telemetry/opentelemetry-collector-contrib/processor/k8sattributesprocessor@{K8SATTRIBUTES_VERSION}"
            ),
            &format!("go.opentelemetry.io/collector/otelcol@{COLLECTOR_VERSION}"),
            &format!("go.opentelemetry.io/collector/receiver/otlpreceiver@{COLLECTOR_VERSION}"),
            &format!("go.opentelemetry.io/collector/exporter/nopexporter@{COLLECTOR_VERSION}"),
        ]);
        run("go get (the collector's modules)", get)?;
        let mut build = go_command(go, work);
        build.args(["build", "-trimpath", "-ldflags", "-s -w", "-o", "wm-otelcol", "."]);
        run("go build (the collector)", build).map(drop)
    })
}

/// Its config: OTLP in (on a free loopback port), `k8sattributes` out of the cluster's pods,
/// namespaces and ReplicaSets, as a gateway (every pod of the cluster), nothing exported.
fn config(grpc_port: u16) -> String {
    format!(
        r#"receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{grpc_port}
processors:
  k8s_attributes:
    auth_type: kubeConfig
    extract:
      metadata: [k8s.namespace.name, k8s.pod.name, k8s.pod.uid, k8s.node.name, k8s.deployment.name]
      labels:
        - tag_name: tier
          key: tier
          from: namespace
exporters:
  nop:
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      processors: [k8s_attributes]
      exporters: [nop]
"#
    )
}

/// A running collector; dropping it stops it.
#[derive(Debug)]
pub struct Otelcol {
    daemon: Daemon,
}

impl Otelcol {
    /// Starts the collector against `cluster` (its admin kubeconfig); builds it first when
    /// missing and `install` allows.
    pub fn start(cluster: &Kubernetes, install: Install) -> Result<Self, Unavailable> {
        let binary = ensure_otelcol(install)?;
        let dir = cluster.peer_dir("otelcol")?;
        let file = dir.join("config.yaml");
        let port = crate::runtimes::free_port().map_err(|e| Unavailable(format!("a free port: {e}")))?;
        fs::write(&file, config(port)).map_err(|e| Unavailable(format!("{}: {e}", file.display())))?;
        let args = [format!("--config={}", file.display())];
        let mut daemon =
            Daemon { name: "otelcol", program: binary, args: args.into(), log: dir.join("otelcol.log"), child: None };
        daemon.spawn_with_env(&[("KUBECONFIG", cluster.kubeconfig())])?;
        std::thread::sleep(Duration::from_millis(500));
        if let Some(status) = daemon.exited() {
            return Err(Unavailable(format!("the collector exited at once ({status}):\n{}", daemon.log_tail())));
        }
        Ok(Self { daemon })
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }
}

impl Drop for Otelcol {
    fn drop(&mut self) {
        self.daemon.stop(Duration::from_secs(5));
    }
}
