//! The Kubernetes collectors. The crate root is the kubelet part: it pulls the kubelet's `/pods`
//! (source `node_orchestrator`, collector `kubelet`) and reports each pod, and each of its
//! containers that has an id.
//!
//! Each pull is `GET /pods` over HTTPS (`kubernetes_kubelet_host`,
//! `kubernetes_https_kubelet_port`) with the service-account token and CA
//! (`kubelet_auth_token_path`, `kubelet_client_ca`, `kubelet_tls_verify`), or over plain HTTP
//! when `kubernetes_http_kubelet_port` is set. Every pod and container in the answer is set. An
//! entity is unset only once the successful pulls have lacked it for `kubelet_expiry`, so that a
//! pod the kubelet leaves out of one answer is not unset and set again. A failed pull changes
//! nothing.
//!
//! The token and the CA are files the kubelet rewrites: a projected service-account token is
//! replaced before it expires, and a bound one stops working once its pod or secret is gone. So
//! each pull first checks whether either file changed (device, inode, size, modification time;
//! the kubelet swaps a symlink, which changes the inode) and, when one did, builds a new client
//! from the files. A pull answered `401 Unauthorized` also reads both files again and tries once
//! more before it fails. The `/pods` body is read up to [`MAX_PODS_BODY`]; a larger one fails the
//! pull with an error that names the cap.
//!
//! The API-server part is [`metadata`]: for each pod of this node, its namespace's labels and
//! annotations and the services that select it, as partial pods from source
//! `cluster_orchestrator`; with `cluster_agent.enabled` it takes them from the cluster agent's
//! node stream instead ([`via_cluster_agent`]).
//!
//! The cluster agent's part is [`cluster`]: an index of every node's pods and the services they
//! back, and every namespace's and node's metadata, kept from three cluster-wide watches.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod kubelet;
pub mod metadata;
pub mod podresources;
pub mod via_cluster_agent;

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
/// Where Kubernetes mounts a pod's service-account token: the default of
/// `kubelet_auth_token_path`.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Where Kubernetes mounts the cluster's CA, beside the token: the default of
/// `kubelet_client_ca`.
pub const DEFAULT_CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The largest `/pods` body the collector reads; a larger one fails the pull.
///
/// A node at the kubelet's default of 110 pods answers a few MiB; this leaves room for ten times
/// that with large annotations.
pub const MAX_PODS_BODY: usize = 128 << 20;

/// The annotations that are never stored.
///
/// `kubectl apply` copies the whole object it applied into `last-applied-configuration`, env
/// var values included; storing it would bypass the env filter that keeps secrets out of the
/// store. It is also the largest annotation most objects carry.
pub const DROPPED_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

/// Tells whether an annotation with this key is stored, that is, whether the key is not in
/// [`DROPPED_ANNOTATIONS`].
pub fn keeps_annotation(key: &str) -> bool {
    !DROPPED_ANNOTATIONS.contains(&key)
}

/// The kubelet part's config, under Datadog's key names.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeletConfig {
    /// `kubernetes_kubelet_host`: the kubelet's host name or address. Like every key it can be
    /// set with `DD_KUBERNETES_KUBELET_HOST`. Unset or empty: the `HOST_IP` env var (set from the
    /// node's address with the downward API), else `localhost`.
    pub kubernetes_kubelet_host: Option<String>,
    /// `kubernetes_https_kubelet_port` (default 10250): the kubelet's HTTPS port, used unless
    /// `kubernetes_http_kubelet_port` is set.
    pub kubernetes_https_kubelet_port: Port,
    /// `kubernetes_http_kubelet_port`: when set, the collector talks plain HTTP to this port
    /// instead of HTTPS.
    pub kubernetes_http_kubelet_port: Option<Port>,
    /// `kubelet_auth_token_path` (default [`DEFAULT_TOKEN_PATH`]): the bearer token file. Over
    /// HTTPS a missing file means the kubelet is taken to be absent; over HTTP the requests are
    /// sent without a token.
    pub kubelet_auth_token_path: Option<PathBuf>,
    /// `kubelet_client_ca` (default [`DEFAULT_CA_PATH`]): the CA that the kubelet's certificate
    /// must chain to. Not read when `kubelet_tls_verify` is false or over HTTP.
    pub kubelet_client_ca: Option<PathBuf>,
    /// `kubelet_tls_verify` (default true): whether to verify the kubelet's certificate.
    pub kubelet_tls_verify: bool,
    /// `kubelet_expiry` (seconds, default 15): how long a pod or container may be missing from
    /// the successful pulls before it is unset.
    pub kubelet_expiry: Seconds,
    /// `kubelet_pull_interval` (seconds, default 5): the time between two pulls; zero counts as
    /// one second.
    pub kubelet_pull_interval: Seconds,
    /// `include_ephemeral_containers` (default false): whether to report ephemeral (debug)
    /// containers too.
    pub include_ephemeral_containers: bool,
    /// `kubernetes_kubelet_podresources_socket` (Datadog's key, default
    /// [`podresources::DEFAULT_SOCKET`]): the kubelet's pod-resources socket, read at each pull
    /// for the devices allocated to each container when it exists; empty: never read.
    pub kubernetes_kubelet_podresources_socket: Option<PathBuf>,
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
            kubernetes_kubelet_podresources_socket: None,
        }
    }
}

impl KubeletConfig {
    /// Returns the kubelet's base URL: `http://<host>:<kubernetes_http_kubelet_port>` when that
    /// port is set, else `https://<host>:<kubernetes_https_kubelet_port>`.
    ///
    /// The host is `kubernetes_kubelet_host`, else the `HOST_IP` env var, else `localhost`; an
    /// empty value counts as unset.
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

    /// Returns the path of the token file: `kubelet_auth_token_path`, else [`DEFAULT_TOKEN_PATH`].
    fn token_path(&self) -> PathBuf {
        self.kubelet_auth_token_path.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_PATH))
    }

    /// Returns the pod-resources socket: `kubernetes_kubelet_podresources_socket`, else
    /// [`podresources::DEFAULT_SOCKET`]; `None` when the key is set empty.
    fn pod_resources_socket(&self) -> Option<PathBuf> {
        match &self.kubernetes_kubelet_podresources_socket {
            Some(path) if path.as_os_str().is_empty() => None,
            Some(path) => Some(path.clone()),
            None => Some(PathBuf::from(podresources::DEFAULT_SOCKET)),
        }
    }

    /// Returns the path of the CA file: `kubelet_client_ca`, else [`DEFAULT_CA_PATH`].
    fn ca_path(&self) -> PathBuf {
        self.kubelet_client_ca.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CA_PATH))
    }
}

/// Why a `GET /pods` failed.
#[derive(Debug, thiserror::Error)]
enum PodsError {
    /// The request failed, or the kubelet answered with an error status.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The body is larger than [`MAX_PODS_BODY`].
    #[error("the body is larger than {} MiB, the cap (MAX_PODS_BODY)", MAX_PODS_BODY >> 20)]
    TooLarge,
}

/// The deadline of one call to the pod-resources API.
const POD_RESOURCES_DEADLINE: Duration = Duration::from_secs(5);

/// Pulls the kubelet's pod list and reports its pods and containers; hand it to the store with
/// [`into_collector`](Self::into_collector).
pub struct KubeletCollector {
    config: KubeletConfig,
    /// Decides which env vars of a container are stored: the store's filter, copied at each
    /// start.
    env: EnvFilter,
    /// The client built from the token and CA files; `None` until `start` builds it.
    client: Option<kube::Client>,
    /// The stamps of the token file and the CA file, in that order, when the client was built;
    /// `None` for a file that could not be read.
    stamps: [Option<FileStamp>; 2],
    /// When each entity was last in a successful pull; an entity missing for longer than
    /// `kubelet_expiry` is unset.
    seen: HashMap<EntityId, Instant>,
    /// The skipped pod list items already logged, as (index in the list, reason), so that each
    /// warning is logged once. Past 1,024 entries no new warning is logged.
    logged: std::collections::HashSet<(usize, String)>,
    /// The kubelet's pod-resources API, asked at each pull for the containers' devices; `None`
    /// when `kubernetes_kubelet_podresources_socket` is set empty.
    pod_resources: Option<podresources::PodResources>,
    /// Whether the last call to the pod-resources API failed, so that a failure is logged as a
    /// warning once, not at every pull.
    pod_resources_failing: bool,
}

impl std::fmt::Debug for KubeletCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletCollector").field("url", &self.config.url()).field("known", &self.seen.len()).finish()
    }
}

impl KubeletCollector {
    /// Creates a collector for `config`. Does no I/O; the client is built by `start`.
    pub fn new(config: KubeletConfig) -> Self {
        let pod_resources =
            config.pod_resources_socket().map(|path| podresources::PodResources::new(path, POD_RESOURCES_DEADLINE));
        Self {
            config,
            env: EnvFilter::default(),
            client: None,
            stamps: [None; 2],
            seen: HashMap::new(),
            logged: std::collections::HashSet::new(),
            pod_resources,
            pod_resources_failing: false,
        }
    }

    /// Asks the pod-resources API (when its socket exists) and gives each container of
    /// `entities` the devices the kubelet allocated to it. A failure is logged and leaves the
    /// containers without devices.
    async fn attach_devices(&mut self, entities: &mut [Entity]) {
        let Some(client) = self.pod_resources.as_mut() else { return };
        let allocations = match client.list().await {
            Ok(Some(allocations)) => {
                if std::mem::take(&mut self.pod_resources_failing) {
                    tracing::info!(socket = %client.path().display(), "kubelet: pod-resources API read again");
                }
                allocations
            }
            Ok(None) => return,
            Err(error) => {
                if !std::mem::replace(&mut self.pod_resources_failing, true) {
                    tracing::warn!(%error, "kubelet: cannot read the pod-resources API; containers go without their devices");
                }
                return;
            }
        };
        if allocations.is_empty() {
            return;
        }
        let pods: HashMap<EntityId, (String, String)> = entities
            .iter()
            .filter_map(|e| match e {
                Entity::KubernetesPod(p) => Some((e.id(), (p.namespace.to_string(), p.name.to_string()))),
                _ => None,
            })
            .collect();
        for entity in entities {
            let Entity::Container(container) = entity else { continue };
            let Some((namespace, pod)) = container.owner.as_ref().and_then(|o| pods.get(o)) else { continue };
            let key = (namespace.clone(), pod.clone(), container.name.to_string());
            if let Some(devices) = allocations.get(&key) {
                wm_core::EntityArc::make_mut(container).details.allocated_resources = devices.clone();
            }
        }
    }

    /// Wraps the collector for the store, which pulls every `kubelet_pull_interval` (at least
    /// one second).
    pub fn into_collector(self) -> Collector {
        let every = self.config.kubelet_pull_interval.duration().max(Duration::from_secs(1));
        Collector::pull(NAME, Source::NodeOrchestrator, self).with_pull_interval(every)
    }

    /// Returns the current stamps of the token file and the CA file, in that order; `None` for a
    /// file that cannot be read.
    fn stamps(&self) -> [Option<FileStamp>; 2] {
        let stamp = |path: PathBuf| std::fs::metadata(path).ok().map(|m| FileStamp::of(&m));
        [stamp(self.config.token_path()), stamp(self.config.ca_path())]
    }

    /// Builds a client from the token and CA files as they are now, and stores it with the
    /// files' stamps.
    ///
    /// The stamps are taken before the files are read, so that a file replaced in between
    /// differs from its stamp and is read again at the next pull.
    async fn reconnect(&mut self) -> Result<kube::Client, CollectorError> {
        let stamps = self.stamps();
        let client = self.connect().await?;
        self.client = Some(client.clone());
        self.stamps = stamps;
        Ok(client)
    }

    /// Sends `GET /pods` and returns the body, read up to [`MAX_PODS_BODY`].
    async fn get_pods(client: kube::Client) -> Result<Vec<u8>, PodsError> {
        use futures::AsyncReadExt;
        let request = http::Request::get("/pods").body(Vec::new()).map_err(kube::Error::HttpError)?;
        let stream = client.request_stream(request).await?;
        let mut body = Vec::new();
        // Reading at most one byte more than the cap tells a body over the cap from one exactly
        // at it, without reading the rest.
        let mut limited = stream.take(MAX_PODS_BODY as u64 + 1);
        limited.read_to_end(&mut body).await.map_err(kube::Error::ReadEvents)?;
        if body.len() > MAX_PODS_BODY {
            return Err(PodsError::TooLarge);
        }
        Ok(body)
    }

    /// Builds a client of the kubelet from a kubeconfig written here: the kubelet's URL, its CA
    /// (or no verification), and the bearer token, both files read now.
    ///
    /// A missing CA file, or a missing token file over HTTPS, is an `EnvironmentAbsent` error;
    /// failing to build the client from the kubeconfig is a permanent one.
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
    /// Copies the store's env filter and builds the kubelet client from the token and CA files.
    async fn start(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        self.env = ctx.env.clone();
        self.reconnect().await?;
        Ok(())
    }

    /// Reads `/pods` once, sets every pod and container in it, and unsets those missing for
    /// longer than `kubelet_expiry`.
    ///
    /// The client is built again first when the token or CA file changed, and once more after a
    /// `401` answer. A failed request or a body that does not parse fails the pull, retriably,
    /// and changes nothing; items that do not parse are skipped with a warning.
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
                // The token may have been rewritten in place without changing its stamp (same
                // size, and a modification time too close to the old one), or it may have been
                // revoked: read the files again and try once more before failing.
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
        let mut entities = converted.entities;
        self.attach_devices(&mut entities).await;
        let now = Instant::now();
        let mut events: Vec<(EventType, Entity)> = Vec::with_capacity(entities.len());
        for entity in entities {
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
