//! The Cloud Foundry collector: reports the app instances and tasks of a Diego cell as container
//! entities (runtime `garden`, source `cluster_orchestrator`) whose collector tags are the Cloud
//! Foundry tags of DESIGN 7.5.
//!
//! - Garden, the cell's container API, is required. The collector talks to it on
//!   `cloud_foundry_garden.listen_network` and `cloud_foundry_garden.listen_address` (default: the
//!   unix socket `/var/vcap/data/garden/garden.sock`). Every pull (every 5 s) lists the
//!   containers, then asks `bulk_info` and `bulk_metrics` about all of them. Containers are keyed
//!   by their Garden handle (the instance GUID); their app, space, org and instance index come
//!   from the properties Diego sets on them ([`convert`]).
//! - Every pull is a full list: a container that a successful pull lacks is unset. A container
//!   Garden answers about with an error is counted as an entity error, logged once while the
//!   error lasts, and kept in the store as it was (never unset because of the error). A failed
//!   pull changes nothing.
//! - The Cloud Controller is optional (`cloud_foundry_cc.*`). It gives the current names after a
//!   rename, the app's `tags.datadoghq.com/*` metadata, and sidecar and isolation segment tags.
//!   They are fetched by a task of their own, not during the pull ([`cc::Enricher`]), so a slow
//!   or failing Cloud Controller never delays Garden's data.
//! - When Garden's unix socket does not exist, the environment is reported as not detected and
//!   the store looks again later; when the config says this is a cell
//!   (`cloud_foundry_garden.listen_address`, or `cloud_foundry: true`), the collector waits for
//!   the socket instead.

#![forbid(unsafe_code)]

pub mod cc;
pub mod convert;
pub mod garden;
mod https;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use wm_core::{Collector, CollectorContext, CollectorError, EntityId, Kind, PullCollector, Source, Timestamp};

pub use cc::CcConfig;
use garden::{Address, Garden};

/// The collector's name, as it appears in health, telemetry and dumps.
pub const NAME: &str = "cloudfoundry";
/// Garden's socket on a Diego cell: the default of `cloud_foundry_garden.listen_address`.
pub const DEFAULT_GARDEN_SOCKET: &str = "/var/vcap/data/garden/garden.sock";
/// The deadline of each Garden request.
pub const GARDEN_TIMEOUT: Duration = Duration::from_secs(5);

/// The Garden part of the config, under the Datadog Agent's key names.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CfConfig {
    /// `cloud_foundry` (default false): says that this node is a Cloud Foundry cell, so a missing
    /// Garden socket is waited for instead of meaning "not a cell".
    pub cloud_foundry: bool,
    /// `cloud_foundry_garden.listen_network`: `unix` (the default; empty counts as `unix`) or
    /// `tcp`.
    #[serde(rename = "cloud_foundry_garden.listen_network")]
    pub listen_network: String,
    /// `cloud_foundry_garden.listen_address`: the socket path with `unix` (default
    /// [`DEFAULT_GARDEN_SOCKET`]), or `host:port` with `tcp` (required then).
    #[serde(rename = "cloud_foundry_garden.listen_address")]
    pub listen_address: Option<String>,
}

impl Default for CfConfig {
    fn default() -> Self {
        Self { cloud_foundry: false, listen_network: "unix".into(), listen_address: None }
    }
}

impl CfConfig {
    /// Returns where Garden listens, from `cloud_foundry_garden.listen_network` and
    /// `cloud_foundry_garden.listen_address`.
    ///
    /// # Errors
    ///
    /// Returns a message naming the key to fix when `listen_network` is neither `unix` nor `tcp`,
    /// or when it is `tcp` and `listen_address` is not set.
    pub fn address(&self) -> Result<Address, String> {
        let address = self.listen_address.as_deref().filter(|a| !a.is_empty());
        match self.listen_network.as_str() {
            "" | "unix" => Ok(Address::Unix(PathBuf::from(address.unwrap_or(DEFAULT_GARDEN_SOCKET)))),
            "tcp" => address
                .map(|a| Address::Tcp(a.to_owned()))
                .ok_or_else(|| "cloud_foundry_garden.listen_address must be host:port with listen_network tcp".into()),
            other => Err(format!("cloud_foundry_garden.listen_network is {other:?}: it must be unix or tcp")),
        }
    }

    /// Tells whether the config says this is a cell (`cloud_foundry`, or a `listen_address`),
    /// so that a missing Garden socket is waited for.
    fn expects_garden(&self) -> bool {
        self.cloud_foundry || self.listen_address.as_deref().is_some_and(|a| !a.is_empty())
    }
}

/// Pulls Garden's containers and reports the Cloud Foundry workloads among them; hand it to the
/// store with [`into_collector`](Self::into_collector).
#[derive(Debug)]
pub struct CfCollector {
    config: CfConfig,
    cc: CcConfig,
    /// The Garden client, built by `start`; `None` before.
    garden: Option<Garden>,
    /// The Cloud Controller enricher, started by the first `start` that reaches Garden when
    /// `cloud_foundry_cc.url` is set.
    enricher: Option<cc::Enricher>,
    /// The container problems the last pull found, as handle and reason. A problem is logged only
    /// when the previous pull did not find it.
    reported: HashSet<String>,
}

impl CfCollector {
    /// Creates a collector for `config`; when `cc` names a Cloud Controller, its data is added to
    /// the containers. Does no I/O.
    pub fn new(config: CfConfig, cc: CcConfig) -> Self {
        Self { config, cc, garden: None, enricher: None, reported: HashSet::new() }
    }

    /// Wraps the collector for the store, which pulls it at its default interval.
    pub fn into_collector(self) -> Collector {
        Collector::pull(NAME, Source::ClusterOrchestrator, self)
    }

    /// Logs a problem with one container, unless the previous pull found the same one, and
    /// records it in `seen`, which becomes `reported` at the end of the pull.
    fn report(&mut self, handle: &str, why: &str, seen: &mut HashSet<String>) {
        // A NUL joins the two parts: neither a handle nor a reason is expected to contain one.
        let key = format!("{handle}\u{0}{why}");
        if !self.reported.contains(&key) {
            tracing::warn!(%handle, %why, "cloud foundry: skipping a container");
        }
        seen.insert(key);
    }
}

#[async_trait]
impl PullCollector for CfCollector {
    /// Checks Garden's address and that Garden answers `/ping`, and starts the Cloud Controller
    /// enricher when `cloud_foundry_cc.url` is set and it is not running yet.
    ///
    /// A bad `cloud_foundry_garden.*` config, or a Cloud Controller client that cannot be built,
    /// stops the collector for good; a missing unix socket is waited for or reported as absent
    /// (see the module docs); a Garden that does not answer is a retriable error.
    async fn start(&mut self, _ctx: &CollectorContext) -> Result<(), CollectorError> {
        let address = self.config.address().map_err(|why| CollectorError::permanent("cloud foundry", why))?;
        if let Address::Unix(path) = &address
            && !path.exists()
        {
            return Err(if self.config.expects_garden() {
                CollectorError::waiting_for_file(
                    format!("Garden at {} (cloud_foundry_garden.listen_address)", path.display()),
                    path,
                )
            } else {
                CollectorError::absent_at(format!("no Garden socket at {}", path.display()), path)
            });
        }
        let garden = Garden::new(address.clone(), GARDEN_TIMEOUT)
            .map_err(|e| CollectorError::permanent("cloud foundry: cannot build a Garden client", e))?;
        garden.ping().await.map_err(|e| {
            CollectorError::retriable(format!("cloud foundry: Garden at {address} does not answer /ping"), e)
        })?;
        if self.cc.enabled_url().is_some() && self.enricher.is_none() {
            let cc = cc::CloudController::new(self.cc.clone())
                .map_err(|e| CollectorError::permanent("cloud foundry: the Cloud Controller client", e))?;
            self.enricher = Some(cc::Enricher::start(cc));
        }
        self.garden = Some(garden);
        Ok(())
    }

    /// Lists Garden's containers, reads their info and metrics, and sends the Cloud Foundry
    /// workloads among them as a full list, keeping in the store the containers Garden could not
    /// read this time.
    ///
    /// A failed `list` or `bulk_info` fails the pull and changes nothing; a failed `bulk_metrics`
    /// only leaves the start times unknown.
    async fn pull(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        let Some(garden) = self.garden.clone() else {
            return Err(CollectorError::Retriable {
                context: "cloud foundry: pulled before it started".into(),
                source: None,
            });
        };
        let failed = |call: &str| {
            let context = format!("cloud foundry: Garden at {} ({call})", garden.address());
            move |e| CollectorError::retriable(context, e)
        };
        let handles = garden.list().await.map_err(failed("list"))?;
        let infos = garden.bulk_info(&handles).await.map_err(failed("bulk_info"))?;
        let ages = match garden.bulk_metrics(&handles).await {
            Ok(metrics) => metrics,
            Err(error) => {
                tracing::debug!(%error, "cloud foundry: no container metrics this pull (start times unknown)");
                Default::default()
            }
        };
        let now = Timestamp::now();
        let mut instances = Vec::with_capacity(handles.len());
        let mut keep = Vec::new();
        let mut seen = HashSet::new();
        for handle in &handles {
            let Some(entry) = infos.get(handle) else {
                // Garden's answer does not mention the handle. Either the container was destroyed
                // between `list` and `bulk_info` (the next pull's list will lack it, and it is
                // unset then), so keep what the store has of it for now; or the handle could not
                // go in a query and was never asked about, so it is not reported at all.
                if garden::is_query_safe(handle) {
                    keep.push(EntityId::new(Kind::Container, handle.as_str()));
                }
                continue;
            };
            if let Some(error) = &entry.error {
                let why = format!("Garden: {} {}", error.kind, error.message);
                self.report(handle, why.trim(), &mut seen);
                ctx.sink.entity_error();
                keep.push(EntityId::new(Kind::Container, handle.as_str()));
                continue;
            }
            let age = ages.get(handle).filter(|m| m.error.is_none()).map(|m| m.value.age);
            let Some(instance) = convert::instance(handle, &entry.value, age, now) else { continue };
            if let Some(why) = convert::log_config_error(&entry.value) {
                self.report(handle, &why, &mut seen);
            }
            instances.push(instance);
        }
        self.reported = seen;
        let apps = match &self.enricher {
            Some(enricher) => enricher.see(instances.iter().map(|i| i.app_id.clone())),
            None => Default::default(),
        };
        let entities = instances.iter().map(|i| i.entity(apps.get(&i.app_id)).into()).collect();
        ctx.sink.full_list_keeping(entities, keep).await;
        Ok(())
    }
}
