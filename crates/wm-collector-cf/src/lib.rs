//! The Cloud Foundry collector: the app instances and tasks of a Diego cell, as container
//! entities (runtime `garden`, source `cluster_orchestrator`) whose collector tags are the Cloud
//! Foundry tags of DESIGN 7.5.
//!
//! - Garden (required): on its unix socket (`cloud_foundry_garden.listen_network` /
//!   `.listen_address`, default unix `/var/vcap/data/garden/garden.sock`), every 5 s: list, then
//!   `bulk_info` and `bulk_metrics` for every handle. Containers are keyed by their Garden handle
//!   (the instance GUID); app, space, org and instance index come from the properties Diego sets
//!   ([`convert`]).
//! - Every pull is a full list: a container a successful list lacks is unset; an entry Garden
//!   answers with an error is logged once, counted, and kept as it was (never unset for it).
//! - The Cloud Controller (optional, `cloud_foundry_cc.*`): current names after a rename, the
//!   app's `tags.datadoghq.com/*` metadata, sidecar and isolation segment tags, fetched off the
//!   pull path ([`cc::Enricher`]): a slow or failing Cloud Controller never holds Garden's data.
//! - No Garden socket: not detected (looked for again by the store), or waited for when the
//!   config names it (`cloud_foundry_garden.listen_address`, or `cloud_foundry: true`).

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

/// The collector's name.
pub const NAME: &str = "cloudfoundry";
/// Garden's socket on a Diego cell.
pub const DEFAULT_GARDEN_SOCKET: &str = "/var/vcap/data/garden/garden.sock";
/// The deadline of each Garden request.
pub const GARDEN_TIMEOUT: Duration = Duration::from_secs(5);

/// The Garden part of the config, by the Datadog Agent's key names.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CfConfig {
    /// `cloud_foundry`: this is a Cloud Foundry cell (then Garden is waited for, not looked for).
    pub cloud_foundry: bool,
    /// `cloud_foundry_garden.listen_network`: `unix` (default) or `tcp`.
    #[serde(rename = "cloud_foundry_garden.listen_network")]
    pub listen_network: String,
    /// `cloud_foundry_garden.listen_address`: the socket path, or `host:port` with `tcp`.
    #[serde(rename = "cloud_foundry_garden.listen_address")]
    pub listen_address: Option<String>,
}

impl Default for CfConfig {
    fn default() -> Self {
        Self { cloud_foundry: false, listen_network: "unix".into(), listen_address: None }
    }
}

impl CfConfig {
    /// Where Garden listens, or why the config cannot say.
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

    /// Whether the config says this is a cell (so an absent Garden is waited for).
    fn expects_garden(&self) -> bool {
        self.cloud_foundry || self.listen_address.as_deref().is_some_and(|a| !a.is_empty())
    }
}

/// The Cloud Foundry collector.
#[derive(Debug)]
pub struct CfCollector {
    config: CfConfig,
    cc: CcConfig,
    garden: Option<Garden>,
    enricher: Option<cc::Enricher>,
    /// Problems already logged, by handle (those still failing are kept).
    reported: HashSet<String>,
}

impl CfCollector {
    /// A collector for `config`, enriched through the Cloud Controller when `cc` names one.
    pub fn new(config: CfConfig, cc: CcConfig) -> Self {
        Self { config, cc, garden: None, enricher: None, reported: HashSet::new() }
    }

    /// This collector, ready to hand to the store.
    pub fn into_collector(self) -> Collector {
        Collector::pull(NAME, Source::ClusterOrchestrator, self)
    }

    /// Logs a problem with one container once while it lasts.
    fn report(&mut self, handle: &str, why: &str, seen: &mut HashSet<String>) {
        let key = format!("{handle}\u{0}{why}");
        if !self.reported.contains(&key) {
            tracing::warn!(%handle, %why, "cloud foundry: skipping a container");
        }
        seen.insert(key);
    }
}

#[async_trait]
impl PullCollector for CfCollector {
    async fn start(&mut self, _ctx: &CollectorContext) -> Result<(), CollectorError> {
        let address = self.config.address().map_err(|why| CollectorError::permanent("cloud foundry", why))?;
        if let Address::Unix(path) = &address
            && !path.exists()
        {
            return Err(if self.config.expects_garden() {
                CollectorError::waiting_for(format!(
                    "Garden at {} (cloud_foundry_garden.listen_address)",
                    path.display()
                ))
            } else {
                CollectorError::absent(format!("no Garden socket at {}", path.display()))
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
                // Not answered about (gone between the two calls, or a handle we do not ask for).
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
