//! The ECS collector: reports ECS tasks, as task entities with their containers. In daemon mode
//! (one agent per EC2 container instance) it reports the instance's tasks, read from the ECS
//! agent's introspection API, as source `node_orchestrator`. In sidecar mode (the agent runs in
//! each task, on Fargate) it reports the agent's own task, read from the task metadata endpoint,
//! as source `runtime`, because there is no container runtime socket to read there.
//!
//! - Mode (`ecs_deployment_mode`: `auto`, `daemon`, `sidecar`): `auto` means sidecar when
//!   `AWS_EXECUTION_ENV=AWS_ECS_FARGATE` or `ECS_FARGATE=true`, else daemon.
//! - Daemon: the introspection API at `ecs_agent_url` (default `http://localhost:51678`),
//!   accepted only when `GET /` lists `/v1/tasks` among its `AvailableCommands`; each pull reads
//!   `/v1/metadata` (for the cluster's name) and `/v1/tasks`. When nothing answers there, or the
//!   answer is not an ECS agent's, the environment is reported as not detected and the store
//!   looks again later; when `ecs_agent_url` is set, the collector waits for the agent instead.
//! - Sidecar: v4 `$ECS_CONTAINER_METADATA_URI_V4/taskWithTags`, then `/task` when that fails;
//!   without that env var, v2 `http://169.254.170.2/v2/metadata`.
//! - Every pull is a full list: what a successful pull lacks is unset, and a failed pull changes
//!   nothing. Every request has `ecs_metadata_timeout` as its deadline (milliseconds, default
//!   1,000, clamped to between 50 ms and 60 s).
//!
//! - Daemon mode enriches each task with its v4 task metadata (availability zone, service, health,
//!   limits, addresses; resource tags too with `ecs_collect_resource_tags_ec2`). The v4 URL is
//!   read from the `ECS_CONTAINER_METADATA_URI_V4` env var of one of the task's containers, as a
//!   runtime collector stored it in the store; the collector reads it through the store's read
//!   handle and never depends on a runtime collector's crate. Each pull requests the metadata of
//!   at most [`ENRICH_PER_PULL`] tasks. The answer for a task ARN, or its failure, is reused for
//!   [`ENRICH_TTL`], so that a bad URL is not requested on every pull; after a failure the task
//!   stays as `/v1/tasks` describes it.
//! - That env var is set by the workload, which may not be trusted, so the URL in it is checked
//!   before any request: it must be plain `http` to the task metadata endpoint's address
//!   (`169.254.170.2`, port 80), to the host and port of `ecs_agent_url`, or to a host listed in
//!   `ecs_metadata_allowed_hosts`. Anything else (instance metadata at `169.254.169.254`, an
//!   internal service, another port on the node) is refused without a request, with a warning
//!   logged once per URL.
//! - Every body is read up to a cap, and past it the request fails with an error naming the
//!   cap: [`MAX_INTROSPECTION_BODY`] for the introspection API, [`MAX_TASK_METADATA_BODY`] for
//!   task metadata.

#![forbid(unsafe_code)]

pub mod convert;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use wm_core::{Collector, CollectorContext, CollectorError, Entity, EntityId, Kind, PullCollector, Source};

/// The collector's name, as it appears in health, telemetry and dumps.
pub const NAME: &str = "ecs";
/// The ECS agent's introspection API when `ecs_agent_url` is not set.
pub const DEFAULT_AGENT_URL: &str = "http://localhost:51678";
/// The most tasks whose v4 metadata is requested in one pull; the others wait for the next pulls.
pub const ENRICH_PER_PULL: usize = 8;
/// How long a task's v4 metadata (or the failure to get it) is reused before it is asked again.
pub const ENRICH_TTL: Duration = Duration::from_secs(300);
/// The env var that tells a container the URL of its task's v4 metadata endpoint.
const METADATA_ENV: &str = "ECS_CONTAINER_METADATA_URI_V4";

/// The v2 task metadata endpoint (Fargate platform 1.3), used in sidecar mode when
/// `ECS_CONTAINER_METADATA_URI_V4` is not set.
pub const V2_METADATA_URL: &str = "http://169.254.170.2/v2/metadata";
/// The task metadata endpoint's address: by default, the only host (with port 80) a container's
/// metadata URL may name, besides that of `ecs_agent_url`.
pub const TASK_METADATA_HOST: &str = "169.254.170.2";
/// The largest body read from the ECS agent's introspection API; a larger one fails the request.
///
/// `/v1/tasks` of an instance with hundreds of tasks is a few MiB.
pub const MAX_INTROSPECTION_BODY: usize = 32 << 20;
/// The largest body read from a task metadata endpoint (one task, its containers and tags); a
/// larger one fails the request.
pub const MAX_TASK_METADATA_BODY: usize = 4 << 20;

/// The collector's part of the agent config, under Datadog's key names.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EcsConfig {
    /// `ecs_agent_url`: the ECS agent's introspection API, in daemon mode; unset or empty:
    /// [`DEFAULT_AGENT_URL`]. When set, the collector waits for the agent there instead of
    /// concluding that this is not ECS.
    pub ecs_agent_url: Option<String>,
    /// `ecs_deployment_mode` (default `auto`): `auto`, `daemon` or `sidecar`.
    pub ecs_deployment_mode: DeploymentMode,
    /// `ecs_metadata_timeout` (milliseconds, default 1,000): the deadline of each request,
    /// clamped to between 50 ms and 60 s.
    pub ecs_metadata_timeout: u64,
    /// `ecs_collect_resource_tags_ec2` (default false): in daemon mode, request each task's v4
    /// metadata with its resource tags (`/taskWithTags` instead of `/task`).
    pub ecs_collect_resource_tags_ec2: bool,
    /// `ecs_metadata_allowed_hosts` (ours, default none): further hosts that a container's
    /// `ECS_CONTAINER_METADATA_URI_V4` may name, besides `169.254.170.2` and the host of
    /// `ecs_agent_url`. An entry `host` allows any port of that host; `host:port` allows that
    /// port only.
    pub ecs_metadata_allowed_hosts: Vec<String>,
    /// The v4 task metadata endpoint used in sidecar mode; unset: the
    /// `ECS_CONTAINER_METADATA_URI_V4` env var. Not a config key: it is never read from the
    /// config file.
    #[serde(skip)]
    pub metadata_uri_v4: Option<String>,
}

impl Default for EcsConfig {
    fn default() -> Self {
        Self {
            ecs_agent_url: None,
            ecs_deployment_mode: DeploymentMode::Auto,
            ecs_metadata_timeout: 1000,
            ecs_collect_resource_tags_ec2: false,
            ecs_metadata_allowed_hosts: Vec::new(),
            metadata_uri_v4: None,
        }
    }
}

/// How the agent is deployed on ECS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentMode {
    /// Sidecar on Fargate, daemon elsewhere (see [`EcsConfig::mode`]).
    Auto,
    /// One agent per EC2 container instance, reading the ECS agent's introspection API.
    Daemon,
    /// One agent in each task, as on Fargate, reading the task metadata endpoint.
    Sidecar,
}

impl EcsConfig {
    /// Returns the deployment mode, with `auto` resolved from the environment.
    ///
    /// `auto` is sidecar when `AWS_EXECUTION_ENV` is `AWS_ECS_FARGATE` or `ECS_FARGATE` is `true`
    /// (in any case), and daemon otherwise.
    pub fn mode(&self) -> DeploymentMode {
        match self.ecs_deployment_mode {
            DeploymentMode::Auto => {
                let fargate = std::env::var("AWS_EXECUTION_ENV").is_ok_and(|v| v == "AWS_ECS_FARGATE")
                    || std::env::var("ECS_FARGATE").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
                if fargate { DeploymentMode::Sidecar } else { DeploymentMode::Daemon }
            }
            mode => mode,
        }
    }

    /// Returns the deadline of one request: `ecs_metadata_timeout`, clamped to between 50 ms
    /// and 60 s.
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.ecs_metadata_timeout.clamp(50, 60_000))
    }

    /// Checks a task metadata URL taken from a container's env, and returns it parsed when it may
    /// be requested.
    ///
    /// The env var is set by the workload, so the URL must not reach anything but a metadata
    /// endpoint: see the module docs.
    ///
    /// # Errors
    ///
    /// Returns a message saying why the URL is refused: it does not parse, it is not `http`, it
    /// carries a user name or password, or it names a host and port that is neither the task
    /// metadata endpoint ([`TASK_METADATA_HOST`], port 80), nor the host and port of
    /// `ecs_agent_url`, nor allowed by `ecs_metadata_allowed_hosts`.
    pub fn check_metadata_url(&self, url: &str) -> Result<reqwest::Url, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if parsed.scheme() != "http" || !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(format!("{url:?} is not a plain http URL"));
        }
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = parsed.port_or_known_default().unwrap_or(80);
        let agent = self.ecs_agent_url.as_deref().and_then(|u| reqwest::Url::parse(u).ok());
        let allowed = (host == TASK_METADATA_HOST && port == 80)
            || agent.is_some_and(|a| {
                a.host_str().is_some_and(|h| h.eq_ignore_ascii_case(&host)) && a.port_or_known_default() == Some(port)
            })
            || self.ecs_metadata_allowed_hosts.iter().any(|entry| {
                let entry = entry.trim().to_ascii_lowercase();
                entry == host || entry == format!("{host}:{port}")
            });
        if allowed {
            Ok(parsed)
        } else {
            Err(format!(
                "{url:?} names {host}:{port}, which is not the task metadata endpoint ({TASK_METADATA_HOST}), \
                 ecs_agent_url's host or in ecs_metadata_allowed_hosts"
            ))
        }
    }
}

/// Where a pull reads, as `start` decided from the mode.
#[derive(Debug, Clone)]
enum Endpoint {
    /// The introspection API's base URL.
    Introspection(String),
    /// Task metadata URLs, tried in order until one answers.
    TaskMetadata(Vec<String>),
}

/// Pulls ECS tasks and their containers; hand it to the store with
/// [`into_collector`](Self::into_collector).
#[derive(Debug)]
pub struct EcsCollector {
    config: EcsConfig,
    /// The HTTP client, built by `start`; `None` before.
    client: Option<reqwest::Client>,
    /// Where each pull reads, decided by `start`; `None` before.
    endpoint: Option<Endpoint>,
    /// The warnings already logged (skipped items, refused metadata URLs), so that each is logged
    /// once; emptied when it holds more than 1,000.
    reported: std::collections::HashSet<String>,
    /// The v4 metadata of EC2 tasks, by task ARN: when it was asked, and the entities it gave
    /// (none after a failure). An entry is dropped after [`ENRICH_TTL`] or when its task is gone.
    enriched: HashMap<String, (Instant, Vec<Entity>)>,
}

impl EcsCollector {
    /// Creates a collector for `config`. Does no I/O; `start` builds the client and finds the
    /// endpoint.
    pub fn new(config: EcsConfig) -> Self {
        Self {
            config,
            client: None,
            endpoint: None,
            reported: std::collections::HashSet::new(),
            enriched: HashMap::new(),
        }
    }

    /// Wraps the collector for the store, as source `runtime` in sidecar mode (no other collector
    /// reports those containers) and `node_orchestrator` in daemon mode.
    ///
    /// The mode is resolved here, from the config and the environment.
    pub fn into_collector(self) -> Collector {
        let source = match self.config.mode() {
            DeploymentMode::Sidecar => Source::Runtime,
            _ => Source::NodeOrchestrator,
        };
        Collector::pull(NAME, source, self)
    }

    /// Sends `GET url` and returns the body, read up to `cap` bytes.
    ///
    /// A failed request, an error status or a body over `cap` is a retriable error.
    async fn get(&self, url: &str, cap: usize) -> Result<Vec<u8>, CollectorError> {
        let client = self.client.as_ref().ok_or_else(|| CollectorError::Retriable {
            context: "ecs: pulled before it started".into(),
            source: None,
        })?;
        let mut response = client
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| CollectorError::retriable(format!("ecs: GET {url}"), e))?;
        let too_large = |e: wm_core::BodyTooLarge| CollectorError::Retriable {
            context: format!("ecs: GET {url}: {e}"),
            source: None,
        };
        let mut body = wm_core::CappedBody::new(cap, response.content_length()).map_err(too_large)?;
        while let Some(chunk) =
            response.chunk().await.map_err(|e| CollectorError::retriable(format!("ecs: GET {url}"), e))?
        {
            body.push(&chunk).map_err(too_large)?;
        }
        Ok(body.into_bytes())
    }

    /// Tells whether `base` is an ECS agent's introspection API: whether `GET /` answers JSON
    /// whose `AvailableCommands` lists `/v1/tasks`.
    ///
    /// A failed request is an error; an answer that is not JSON counts as "no".
    async fn is_ecs_agent(&self, base: &str) -> Result<bool, CollectorError> {
        let bytes = self.get(&format!("{base}/"), MAX_INTROSPECTION_BODY).await?;
        let root: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        Ok(root["AvailableCommands"].as_array().is_some_and(|c| c.iter().any(|c| c.as_str() == Some("/v1/tasks"))))
    }
}

impl EcsCollector {
    /// Merges each task's v4 metadata over what `/v1/tasks` gave for the task and its containers.
    ///
    /// The v4 URL comes from the env of one of the task's containers, as the store holds it. At
    /// most [`ENRICH_PER_PULL`] requests are made per pull, and each answer (or failure) is
    /// reused for [`ENRICH_TTL`]. Where both have a value, the v4 metadata wins; `/v1/tasks` fills
    /// the rest. Failures are logged at debug level and never fail the pull.
    async fn enrich(&mut self, ctx: &CollectorContext, entities: &mut [Entity]) {
        let tasks: Vec<(String, Vec<String>)> = entities
            .iter()
            .filter_map(|e| e.as_ecs_task())
            .map(|t| (t.id.to_string(), t.containers.iter().map(|c| c.id.to_string()).collect()))
            .collect();
        self.enriched.retain(|arn, (at, _)| at.elapsed() < ENRICH_TTL && tasks.iter().any(|(a, _)| a == arn));
        let suffix = if self.config.ecs_collect_resource_tags_ec2 { "taskWithTags" } else { "task" };
        let mut asked = 0;
        for (arn, containers) in &tasks {
            if asked >= ENRICH_PER_PULL || self.enriched.contains_key(arn) {
                continue;
            }
            let uri = containers
                .iter()
                .filter_map(|id| ctx.reader.get_container(id))
                .find_map(|c| c.env.get(METADATA_ENV).map(str::to_owned));
            let Some(uri) = uri else { continue };
            // Record an empty answer before asking, so that a refused URL or a failed request is
            // not asked again before the TTL passes; a successful answer replaces it below.
            self.enriched.insert(arn.clone(), (Instant::now(), Vec::new()));
            let url = format!("{}/{suffix}", uri.trim_end_matches('/'));
            if let Err(why) = self.config.check_metadata_url(&url) {
                if self.reported.insert(format!("refused {url}")) {
                    tracing::warn!(task = %arn, %why, "ecs: not asking a container's task metadata URL");
                }
                continue;
            }
            asked += 1;
            match self.get(&url, MAX_TASK_METADATA_BODY).await.map(|bytes| convert::task_metadata(&bytes)) {
                Ok(Ok(metadata)) => {
                    self.enriched.insert(arn.clone(), (Instant::now(), metadata.entities));
                }
                Ok(Err(error)) => tracing::debug!(%url, %error, "ecs: task metadata does not parse"),
                Err(error) => tracing::debug!(%url, %error, "ecs: task metadata unavailable"),
            }
        }
        for entity in entities.iter_mut() {
            let owner = match entity {
                Entity::EcsTask(t) => t.id.to_string(),
                Entity::Container(c) => match &c.owner {
                    Some(EntityId { kind: Kind::EcsTask, id }) => id.to_string(),
                    _ => continue,
                },
                _ => continue,
            };
            let Some((_, metadata)) = self.enriched.get(&owner) else { continue };
            if let Some(richer) = metadata.iter().find(|m| m.id() == entity.id()) {
                let mut merged = richer.clone();
                wm_core::merge::fill_from(&mut merged, entity);
                *entity = merged;
            }
        }
    }
}

#[async_trait]
impl PullCollector for EcsCollector {
    /// Builds the HTTP client and decides where pulls read.
    ///
    /// In sidecar mode that is the v4 task metadata URLs, else the v2 endpoint, without any
    /// request yet. In daemon mode it is the introspection API, once `GET /` shows it is an ECS
    /// agent's; otherwise the error says the environment is absent, or, when `ecs_agent_url` is
    /// set, that the collector is waiting for it.
    async fn start(&mut self, _ctx: &CollectorContext) -> Result<(), CollectorError> {
        let client = reqwest::Client::builder()
            .timeout(self.config.timeout())
            .no_proxy()
            .build()
            .map_err(|e| CollectorError::permanent("ecs: cannot build an HTTP client", e))?;
        self.client = Some(client);
        match self.config.mode() {
            DeploymentMode::Sidecar => {
                let v4 =
                    self.config.metadata_uri_v4.clone().or_else(|| std::env::var("ECS_CONTAINER_METADATA_URI_V4").ok());
                let urls = match v4.filter(|v4| !v4.is_empty()) {
                    Some(v4) => vec![format!("{v4}/taskWithTags"), format!("{v4}/task")],
                    None => vec![V2_METADATA_URL.to_owned()],
                };
                self.endpoint = Some(Endpoint::TaskMetadata(urls));
                Ok(())
            }
            _ => {
                let configured = self.config.ecs_agent_url.clone().filter(|u| !u.is_empty());
                let base = configured.clone().unwrap_or_else(|| DEFAULT_AGENT_URL.to_owned());
                let base = base.trim_end_matches('/').to_owned();
                match self.is_ecs_agent(&base).await {
                    Ok(true) => {
                        self.endpoint = Some(Endpoint::Introspection(base));
                        Ok(())
                    }
                    Ok(false) | Err(_) if configured.is_some() => {
                        Err(CollectorError::waiting_for(format!("the ECS agent at {base} (ecs_agent_url)")))
                    }
                    Ok(false) => Err(CollectorError::absent(format!("{base} is not an ECS agent's introspection API"))),
                    Err(_) => Err(CollectorError::absent(format!("no ECS agent at {base}"))),
                }
            }
        }
    }

    /// Reads the tasks once and sends them as a full list.
    ///
    /// In daemon mode it reads `/v1/metadata` and `/v1/tasks`, then enriches the tasks; in sidecar
    /// mode it reads the first task metadata URL that answers. A failed request, or a task list
    /// or task that does not parse, fails the pull and changes nothing (a `/v1/metadata` that does
    /// not parse only leaves the cluster's name empty); items that do not parse are skipped with a
    /// warning, logged once.
    async fn pull(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        let converted = match self.endpoint.clone() {
            Some(Endpoint::Introspection(base)) => {
                let metadata = self.get(&format!("{base}/v1/metadata"), MAX_INTROSPECTION_BODY).await?;
                let cluster = serde_json::from_slice::<serde_json::Value>(&metadata)
                    .ok()
                    .and_then(|m| m["Cluster"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                let tasks = self.get(&format!("{base}/v1/tasks"), MAX_INTROSPECTION_BODY).await?;
                let mut converted = convert::v1_tasks(&tasks, &cluster)
                    .map_err(|e| CollectorError::retriable(format!("ecs: {base}/v1/tasks does not parse"), e))?;
                self.enrich(ctx, &mut converted.entities).await;
                converted
            }
            Some(Endpoint::TaskMetadata(urls)) => {
                let mut last = None;
                let mut body = None;
                for url in &urls {
                    match self.get(url, MAX_TASK_METADATA_BODY).await {
                        Ok(bytes) => {
                            body = Some((url.clone(), bytes));
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let Some((url, bytes)) = body else {
                    return Err(last.unwrap_or_else(|| CollectorError::absent("no task metadata endpoint")));
                };
                convert::task_metadata(&bytes)
                    .map_err(|e| CollectorError::retriable(format!("ecs: {url} does not parse"), e))?
            }
            None => {
                return Err(CollectorError::Retriable {
                    context: "ecs: pulled before it started".into(),
                    source: None,
                });
            }
        };
        if self.reported.len() > 1000 {
            self.reported.clear();
        }
        for why in converted.skipped {
            if !self.reported.contains(&why) {
                tracing::warn!(%why, "ecs: skipping an item");
                self.reported.insert(why);
            }
        }
        ctx.sink.full_list(converted.entities).await;
        Ok(())
    }
}
