//! The collectors this build can run: one line per collector crate, behind its cargo feature.
//!
//! Each entry reads its collector's config struct from the agent config and builds the
//! collector, or nothing when the config turns it off. Building does no I/O: the config check
//! runs every entry once, and the agent runs them again to start. Everything else that knows
//! which collectors exist — `agent status`, the flavor checks, the tests — reads this table.

use std::sync::Arc;

use async_trait::async_trait;
use wm_core::{Collector, Container, ContainerFetcher};

use crate::config::{AgentConfig, ConfigError};

/// Which agents run a collector, as the Datadog agent's catalogs say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Catalog {
    /// A node agent collecting from the node itself.
    Node,
    /// An agent following another agent (`process_config.remote_workloadmeta`).
    Remote,
}

/// One collector this build links.
#[derive(Debug)]
pub struct CollectorEntry {
    /// Its name (as in health and dumps).
    pub name: &'static str,
    /// The agents that run it.
    pub catalog: Catalog,
    /// The feature `autoconfig_exclude_features` names to turn it off.
    pub feature: &'static str,
    /// Builds it from the config; `None` when the config turns it off.
    pub build: fn(&AgentConfig) -> Result<Option<Collector>, ConfigError>,
    /// Builds its cache-miss fetcher (runtime collectors: the tagger asks the runtime about a
    /// container it was asked about before the collector reported it).
    pub fetcher: Option<FetcherBuilder>,
}

/// Builds a runtime's cache-miss fetcher from the config.
pub type FetcherBuilder = fn(&AgentConfig) -> Result<Arc<dyn ContainerFetcher>, ConfigError>;

/// Every collector compiled in.
pub const COLLECTORS: &[CollectorEntry] = &[
    #[cfg(feature = "docker")]
    CollectorEntry {
        name: wm_collector_docker::NAME,
        catalog: Catalog::Node,
        feature: "docker",
        build: docker,
        fetcher: Some(docker_fetcher),
    },
    #[cfg(feature = "containerd")]
    CollectorEntry {
        name: wm_collector_containerd::NAME,
        catalog: Catalog::Node,
        feature: "containerd",
        build: containerd,
        fetcher: Some(containerd_fetcher),
    },
    #[cfg(feature = "podman")]
    CollectorEntry {
        name: wm_collector_podman::NAME,
        catalog: Catalog::Node,
        feature: "podman",
        build: podman,
        fetcher: Some(podman_fetcher),
    },
    #[cfg(feature = "kube")]
    CollectorEntry {
        name: wm_collector_kube::NAME,
        catalog: Catalog::Node,
        feature: "kubernetes",
        build: kubelet,
        fetcher: None,
    },
    #[cfg(feature = "kube-metadata")]
    CollectorEntry {
        name: wm_collector_kube::metadata::NAME,
        catalog: Catalog::Node,
        feature: "kubernetes",
        build: kube_metadata,
        fetcher: None,
    },
    #[cfg(feature = "ecs")]
    CollectorEntry { name: wm_collector_ecs::NAME, catalog: Catalog::Node, feature: "ecs", build: ecs, fetcher: None },
    #[cfg(feature = "cf")]
    CollectorEntry {
        name: wm_collector_cf::NAME,
        catalog: Catalog::Node,
        feature: "cloudfoundry",
        build: cloudfoundry,
        fetcher: None,
    },
    #[cfg(feature = "remote")]
    CollectorEntry {
        name: wm_collector_remote::NAME,
        catalog: Catalog::Remote,
        feature: "remote",
        build: remote,
        fetcher: None,
    },
];

#[cfg(feature = "docker")]
fn docker(config: &AgentConfig) -> Result<Option<Collector>, ConfigError> {
    let docker: wm_collector_docker::DockerConfig = config.section()?;
    Ok(Some(wm_collector_docker::DockerCollector::new(docker).into_collector()))
}

#[cfg(feature = "docker")]
fn docker_fetcher(config: &AgentConfig) -> Result<Arc<dyn ContainerFetcher>, ConfigError> {
    let docker: wm_collector_docker::DockerConfig = config.section()?;
    Ok(Arc::new(wm_collector_docker::DockerFetcher::new(docker, config.env_filter())))
}

#[cfg(feature = "containerd")]
fn containerd_fetcher(config: &AgentConfig) -> Result<Arc<dyn ContainerFetcher>, ConfigError> {
    let containerd: wm_collector_containerd::ContainerdConfig = config.section()?;
    Ok(Arc::new(wm_collector_containerd::ContainerdFetcher::new(containerd, config.env_filter())))
}

#[cfg(feature = "podman")]
fn podman_fetcher(config: &AgentConfig) -> Result<Arc<dyn ContainerFetcher>, ConfigError> {
    let podman: wm_collector_podman::PodmanConfig = config.section()?;
    Ok(Arc::new(wm_collector_podman::PodmanFetcher::new(podman, config.env_filter())))
}

#[cfg(feature = "containerd")]
fn containerd(config: &AgentConfig) -> Result<Option<Collector>, ConfigError> {
    let containerd: wm_collector_containerd::ContainerdConfig = config.section()?;
    Ok(Some(wm_collector_containerd::ContainerdCollector::new(containerd).into_collector()))
}

#[cfg(feature = "podman")]
fn podman(config: &AgentConfig) -> Result<Option<Collector>, ConfigError> {
    let podman: wm_collector_podman::PodmanConfig = config.section()?;
    Ok(Some(wm_collector_podman::PodmanCollector::new(podman).into_collector()))
}

#[cfg(feature = "kube")]
fn kubelet(config: &AgentConfig) -> Result<Option<Collector>, ConfigError> {
    let kubelet: wm_collector_kube::KubeletConfig = config.section()?;
    Ok(Some(wm_collector_kube::KubeletCollector::new(kubelet).into_collector()))
}

#[cfg(feature = "kube-metadata")]
fn kube_metadata(config: &AgentConfig) -> Result<Option<Collector>, ConfigError> {
    let metadata: wm_collector_kube::metadata::KubeMetadataConfig = config.section()?;
    Ok(Some(wm_collector_kube::metadata::KubeMetadataCollector::new(metadata).into_collector()))
}

#[cfg(feature = "ecs")]
fn ecs(config: &AgentConfig) -> Result<Option<Collector>, ConfigError> {
    let ecs: wm_collector_ecs::EcsConfig = config.section()?;
    Ok(Some(wm_collector_ecs::EcsCollector::new(ecs).into_collector()))
}

#[cfg(feature = "cf")]
fn cloudfoundry(config: &AgentConfig) -> Result<Option<Collector>, ConfigError> {
    let garden: wm_collector_cf::CfConfig = config.section()?;
    garden.address().map_err(ConfigError::Invalid)?;
    let cc: wm_collector_cf::CcConfig = config.section()?;
    cc.validate().map_err(ConfigError::Invalid)?;
    Ok(Some(wm_collector_cf::CfCollector::new(garden, cc).into_collector()))
}

#[cfg(feature = "remote")]
fn remote(config: &AgentConfig) -> Result<Option<Collector>, ConfigError> {
    let remote: wm_collector_remote::RemoteConfig = config.section()?;
    Ok(remote.remote_workloadmeta.then(|| {
        let address = format!("{}:{}", config.ipc.cmd_host, config.ipc.cmd_port);
        wm_collector_remote::RemoteWorkloadmetaCollector::from_files(
            address,
            config.auth_token_path(),
            config.ipc_cert_path(),
        )
        .into_collector()
    }))
}

/// The catalog this config asks for: the remote one when it follows another agent.
pub fn catalog(config: &AgentConfig) -> Result<Catalog, ConfigError> {
    #[cfg(feature = "remote")]
    if config.section::<wm_collector_remote::RemoteConfig>()?.remote_workloadmeta {
        return Ok(Catalog::Remote);
    }
    let _ = config;
    Ok(Catalog::Node)
}

/// The collectors of this config's catalog that its config does not turn off (by their own
/// keys or `autoconfig_exclude_features`).
pub fn build_all(config: &AgentConfig) -> Result<Vec<Collector>, ConfigError> {
    let catalog = catalog(config)?;
    let mut collectors = Vec::new();
    for entry in COLLECTORS {
        // Every entry reads its part, so a wrong value is refused in any catalog.
        let built = (entry.build)(config)?;
        if entry.catalog == catalog && !config.collectors.excludes(entry.feature) {
            collectors.extend(built);
        }
    }
    Ok(collectors)
}

/// Asks every runtime whose id form fits at once; the first that knows the container answers.
#[derive(Clone)]
pub struct AnyRuntime(Vec<Arc<dyn ContainerFetcher>>);

impl std::fmt::Debug for AnyRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AnyRuntime").field(&self.0.len()).finish()
    }
}

#[async_trait]
impl ContainerFetcher for AnyRuntime {
    fn accepts(&self, container_id: &str) -> bool {
        self.0.iter().any(|f| f.accepts(container_id))
    }

    async fn fetch(&self, container_id: &str) -> Option<Container> {
        let asked = self.0.iter().filter(|f| f.accepts(container_id)).map(|f| f.fetch(container_id));
        futures::future::join_all(asked).await.into_iter().flatten().next()
    }
}

/// The cache-miss fetchers of the runtime collectors this config runs (none when it follows
/// another agent).
pub fn fetchers(config: &AgentConfig) -> Result<Option<AnyRuntime>, ConfigError> {
    if catalog(config)? != Catalog::Node {
        return Ok(None);
    }
    let mut fetchers = Vec::new();
    for entry in COLLECTORS.iter().filter(|e| !config.collectors.excludes(e.feature)) {
        if let Some(build) = entry.fetcher {
            fetchers.push(build(config)?);
        }
    }
    Ok((!fetchers.is_empty()).then_some(AnyRuntime(fetchers)))
}

/// The names of the collectors compiled in.
pub fn compiled() -> Vec<String> {
    COLLECTORS.iter().map(|e| e.name.to_owned()).collect()
}
