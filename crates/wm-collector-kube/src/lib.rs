//! The Kubernetes collector, kubelet part: pulls the kubelet's `/pods` (source
//! `node_orchestrator`, collector `kubelet`) and reports each pod and each of its containers
//! that has an id.
//!
//! Each pull: `GET /pods` over HTTPS (`kubernetes_kubelet_host`, `kubernetes_https_kubelet_port`)
//! with the service-account token and CA (`kubelet_auth_token_path`, `kubelet_client_ca`,
//! `kubelet_tls_verify`), or over HTTP when only `kubernetes_http_kubelet_port` is set. What the
//! list holds is set; what successful lists have lacked for `kubelet_expiry` is unset (a pod the
//! kubelet briefly stops listing is not flapped). A failed pull changes nothing.
//!
//! The token and the CA are files the kubelet rewrites: a projected service-account token is
//! replaced before it expires, and a bound one stops working once its pod or secret is gone. So
//! each pull first looks whether either file changed (device, inode, size, modification time:
//! the kubelet swaps a symlink, which changes the inode) and builds a new client from them when
//! one did; and a pull answered 401 reads both again and tries once more before it fails.
//! The `/pods` body is read up to [`MAX_PODS_BODY`]; a larger one fails the pull, saying so.
//!
//! The API-server part is [`metadata`]: namespace labels and annotations and the services of
//! each pod of this node, as partial pods from source `cluster_orchestrator`.

#![forbid(unsafe_code)]

pub mod kubelet;
pub mod metadata;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use wm_core::{
    Collector, CollectorContext, CollectorError, Entity, EntityId, EnvFilter, EventType, FileStamp, Port,
    PullCollector, Seconds, Source,
};

/// The collector's name, as it appears in health, telemetry and dumps.
pub const NAME: &str = "kubelet";
/// Where a pod's service-account token is mounted.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Where the cluster's CA is mounted beside it.
pub const DEFAULT_CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The largest `/pods` body read (a node at the kubelet's 110-pod default answers a few MiB;
/// this leaves room for ten times that with large annotations).
pub const MAX_PODS_BODY: usize = 128 << 20;

/// Annotations never stored: `kubectl apply` copies the whole object it applied into
/// `last-applied-configuration`, env literals included, past the env filter that keeps secrets
/// out of the store; and it is the largest annotation most objects carry.
pub const DROPPED_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

/// Whether an annotation is stored (not in [`DROPPED_ANNOTATIONS`]).
pub fn keeps_annotation(key: &str) -> bool {
    !DROPPED_ANNOTATIONS.contains(&key)
}

/// The kubelet part's config, by the Datadog key names.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeletConfig {
    /// `kubernetes_kubelet_host`: the kubelet's address; unset: `$DD_KUBERNETES_KUBELET_HOST`
    /// is read as this key, else the node's `HOST_IP` (downward API), else localhost.
    pub kubernetes_kubelet_host: Option<String>,
    /// `kubernetes_https_kubelet_port` (default 10250).
    pub kubernetes_https_kubelet_port: Port,
    /// `kubernetes_http_kubelet_port`: plain HTTP, only when set.
    pub kubernetes_http_kubelet_port: Option<Port>,
    /// `kubelet_auth_token_path` (default the pod's service-account token).
    pub kubelet_auth_token_path: Option<PathBuf>,
    /// `kubelet_client_ca` (default the pod's service-account CA).
    pub kubelet_client_ca: Option<PathBuf>,
    /// `kubelet_tls_verify` (default true).
    pub kubelet_tls_verify: bool,
    /// `kubelet_expiry`: seconds a pod or container may be missing from successful lists
    /// before it is unset (default 15).
    pub kubelet_expiry: Seconds,
    /// `kubelet_pull_interval`: seconds between two pulls (default 5).
    pub kubelet_pull_interval: Seconds,
    /// `include_ephemeral_containers` (default false).
    pub include_ephemeral_containers: bool,
}

impl Default for KubeletConfig {
    fn default() -> Self {
        Self {
            kubernetes_kubelet_host: None,
            kubernetes_https_kubelet_port: Port::of(10250),
            kubernetes_http_kubelet_port: None,
            kubelet_auth_token_path: None,
            kubelet_client_ca: None,
            kubelet_tls_verify: true,
            kubelet_expiry: Seconds(15),
            kubelet_pull_interval: Seconds(5),
            include_ephemeral_containers: false,
        }
    }
}

impl KubeletConfig {
    /// The kubelet's base URL.
    pub fn url(&self) -> String {
        let host = self
            .kubernetes_kubelet_host
            .clone()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOST_IP").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "localhost".to_owned());
        match self.kubernetes_http_kubelet_port {
            Some(port) => format!("http://{host}:{port}"),
            None => format!("https://{host}:{}", self.kubernetes_https_kubelet_port),
        }
    }

    fn token_path(&self) -> PathBuf {
        self.kubelet_auth_token_path.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_PATH))
    }

    fn ca_path(&self) -> PathBuf {
        self.kubelet_client_ca.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CA_PATH))
    }
}

/// Why a `GET /pods` failed.
#[derive(Debug, thiserror::Error)]
enum PodsError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("the body is larger than {} MiB, the cap (MAX_PODS_BODY)", MAX_PODS_BODY >> 20)]
    TooLarge,
}

/// The kubelet collector.
pub struct KubeletCollector {
    config: KubeletConfig,
    /// The env vars containers keep: the store's filter, taken at each start.
    env: EnvFilter,
    client: Option<kube::Client>,
    /// The token's and the CA's stamps when the client was built.
    stamps: [Option<FileStamp>; 2],
    /// When each entity was last in a successful list.
    seen: HashMap<EntityId, Instant>,
    /// The skipped items already logged (index and reason), so each says so once.
    logged: std::collections::HashSet<(usize, String)>,
}

impl std::fmt::Debug for KubeletCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletCollector").field("url", &self.config.url()).field("known", &self.seen.len()).finish()
    }
}

impl KubeletCollector {
    /// A collector for `config`.
    pub fn new(config: KubeletConfig) -> Self {
        Self {
            config,
            env: EnvFilter::default(),
            client: None,
            stamps: [None; 2],
            seen: HashMap::new(),
            logged: std::collections::HashSet::new(),
        }
    }

    /// This collector, ready to hand to the store.
    pub fn into_collector(self) -> Collector {
        let every = self.config.kubelet_pull_interval.duration().max(Duration::from_secs(1));
        Collector::pull(NAME, Source::NodeOrchestrator, self).with_pull_interval(every)
    }

    /// The token's and the CA's stamps now.
    fn stamps(&self) -> [Option<FileStamp>; 2] {
        let stamp = |path: PathBuf| std::fs::metadata(path).ok().map(|m| FileStamp::of(&m));
        [stamp(self.config.token_path()), stamp(self.config.ca_path())]
    }

    /// Builds a client from the token and CA files as they are now, and keeps their stamps.
    async fn reconnect(&mut self) -> Result<kube::Client, CollectorError> {
        let stamps = self.stamps();
        let client = self.connect().await?;
        self.client = Some(client.clone());
        self.stamps = stamps;
        Ok(client)
    }

    /// `GET /pods`, its body read up to [`MAX_PODS_BODY`].
    async fn get_pods(client: kube::Client) -> Result<Vec<u8>, PodsError> {
        use futures::AsyncReadExt;
        let request = http::Request::get("/pods").body(Vec::new()).map_err(kube::Error::HttpError)?;
        let stream = client.request_stream(request).await?;
        let mut body = Vec::new();
        let mut limited = stream.take(MAX_PODS_BODY as u64 + 1);
        limited.read_to_end(&mut body).await.map_err(kube::Error::ReadEvents)?;
        if body.len() > MAX_PODS_BODY {
            return Err(PodsError::TooLarge);
        }
        Ok(body)
    }

    /// A client of the kubelet: its CA (or no verification), its bearer token, both read now.
    async fn connect(&self) -> Result<kube::Client, CollectorError> {
        let url = self.config.url();
        let https = url.starts_with("https://");
        let mut yaml =
            format!("apiVersion: v1\nkind: Config\nclusters:\n- name: kubelet\n  cluster:\n    server: {url}\n");
        if https && !self.config.kubelet_tls_verify {
            yaml.push_str("    insecure-skip-tls-verify: true\n");
        } else if https {
            let ca = self.config.ca_path();
            if !ca.is_file() {
                return Err(CollectorError::absent(format!("no kubelet CA at {} (kubelet_client_ca)", ca.display())));
            }
            yaml.push_str(&format!("    certificate-authority: {}\n", ca.display()));
        }
        yaml.push_str("users:\n- name: agent\n  user:\n");
        let token_path = self.config.token_path();
        match std::fs::read_to_string(&token_path) {
            Ok(token) => yaml.push_str(&format!("    token: {}\n", token.trim())),
            Err(_) if !https => yaml.push_str("    {}\n"),
            Err(e) => {
                return Err(CollectorError::absent(format!(
                    "no kubelet token at {} (kubelet_auth_token_path): {e}",
                    token_path.display()
                )));
            }
        }
        yaml.push_str(
            "contexts:\n- name: kubelet\n  context:\n    cluster: kubelet\n    user: agent\ncurrent-context: kubelet\n",
        );
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml)
            .map_err(|e| CollectorError::permanent(format!("kubelet client for {url}"), e))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| CollectorError::permanent(format!("kubelet client for {url}"), e))?;
        kube::Client::try_from(config).map_err(|e| CollectorError::permanent(format!("kubelet client for {url}"), e))
    }
}

#[async_trait]
impl PullCollector for KubeletCollector {
    async fn start(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        self.env = ctx.env.clone();
        self.reconnect().await?;
        Ok(())
    }

    async fn pull(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        let client = match self.client.clone() {
            Some(client) if self.stamps() == self.stamps => client,
            Some(_) => {
                tracing::info!("kubelet: the token or CA file changed; reading them again");
                self.reconnect().await?
            }
            None => {
                return Err(CollectorError::Retriable { context: "kubelet: pulled before start".into(), source: None });
            }
        };
        let url = self.config.url();
        let body = match Self::get_pods(client).await {
            Err(PodsError::Kube(kube::Error::Api(status))) if status.code == 401 => {
                // The token may have been replaced in place (same size, same second) or revoked:
                // read the files again and try once more before failing.
                tracing::info!("kubelet: 401 Unauthorized; reading the token and CA files again");
                let client = self.reconnect().await?;
                Self::get_pods(client).await
            }
            other => other,
        }
        .map_err(|e| CollectorError::retriable(format!("kubelet: GET {url}/pods failed"), e))?;
        let converted = kubelet::convert_pod_list(&body, &self.env, self.config.include_ephemeral_containers)
            .map_err(|e| CollectorError::retriable(format!("kubelet: {url}/pods"), e))?;
        for (index, reason) in converted.skipped {
            if self.logged.len() < 1024 && self.logged.insert((index, reason.clone())) {
                tracing::warn!(index, %reason, url, "kubelet: skipping a pod list item that is not a pod");
            }
        }
        let now = Instant::now();
        let mut events: Vec<(EventType, Entity)> = Vec::with_capacity(converted.entities.len());
        for entity in converted.entities {
            self.seen.insert(entity.id(), now);
            events.push((EventType::Set, entity));
        }
        let expiry = self.config.kubelet_expiry.duration();
        let expired: Vec<EntityId> =
            self.seen.iter().filter(|(_, at)| now.duration_since(**at) > expiry).map(|(id, _)| id.clone()).collect();
        for id in expired {
            self.seen.remove(&id);
            events.push((EventType::Unset, Entity::empty(&id)));
        }
        ctx.sink.events(events).await;
        Ok(())
    }
}
