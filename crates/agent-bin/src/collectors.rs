//! The collectors this build can run: one entry in [`COLLECTORS`] per collector, each behind its
//! cargo feature.
//!
//! An entry reads its collector's config struct from the agent config and builds the collector;
//! the remote collector's entry builds nothing unless `process_config.remote_workloadmeta` is
//! set. Building does no I/O, so every entry is built twice: once when the config is loaded, to
//! check each collector's part ([`crate::load_config`]), and again when the agent starts. The
//! rest of the agent learns from this table which collectors exist: which ones to start, which
//! runtimes the tagger may ask about an unknown container, and what `agent status` lists as
//! compiled in.

use std::sync::Arc;

use async_trait::async_trait;
use wm_core::{Collector, Container, ContainerFetcher};

use crate::config::{AgentConfig, ConfigError};

/// The kind of agent that runs a collector, named after the Datadog Agent's collector catalogs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Catalog {
    /// A node agent, which collects from the node itself.
    Node,
    /// A follower (`process_config.remote_workloadmeta`), which streams workload metadata from
    /// its upstream.
    Remote,
}

/// One collector compiled into this build: its name, which agents run it, and how to build it
/// or turn it off.
#[derive(Debug)]
pub struct CollectorEntry {
    /// The collector's name, as shown in health reports and in a verbose workload list.
    pub name: &'static str,
    /// The kind of agent that runs it.
    pub catalog: Catalog,
    /// The name that turns it off when listed in `autoconfig_exclude_features`; both Kubernetes
    /// collectors answer to `kubernetes`.
    pub feature: &'static str,
    /// Builds the collector from the config: `None` when the config turns it off, an error when
    /// the config's part for it is refused.
    pub build: fn(&AgentConfig) -> Result<Option<Collector>, ConfigError>,
    /// Builds its cache-miss fetcher, for a runtime collector: when the tagger is asked about a
    /// container that the collector has not reported yet, the fetcher asks the runtime directly.
    /// `None` for the other collectors.
    pub fetcher: Option<FetcherBuilder>,
}

/// A function that builds a runtime's cache-miss fetcher (see [`CollectorEntry::fetcher`]) from
/// the config.
pub type FetcherBuilder = fn(&AgentConfig) -> Result<Arc<dyn ContainerFetcher>, ConfigError>;

/// Every collector compiled into this build: one entry for each collector feature enabled.
pub const COLLECTORS: &[CollectorEntry] = &[
    #[cfg(feature = "docker")]
    CollectorEntry {
        name: wm_collector_docker::NAME,
        catalog: Catalog::Node,
        feature: "docker",
        build: docker,
        fetcher: Some(docker_fetcher),
    },
    #[cfg(feature = "docker")]
    CollectorEntry {
        name: wm_collector_docker::images::NAME,
        catalog: Catalog::Node,
        feature: "docker",
        build: docker_images,
        fetcher: None,
    },
    #[cfg(feature = "containerd")]
    CollectorEntry {
        name: wm_collector_containerd::NAME,
        catalog: Catalog::Node,
        feature: "containerd",
        build: containerd,
        fetcher: Some(containerd_fetcher),
    },
    #[cfg(feature = "containerd")]
    CollectorEntry {
        name: wm_collector_containerd::images::NAME,
        catalog: Catalog::Node,
        feature: "containerd",
        build: containerd_images,
        fetcher: None,
    },
    #[cfg(feature = "podman")]
    CollectorEntry {
        name: wm_collector_podman::NAME,
        catalog: Catalog::Node,
        feature: "podman",
        build: podman,
        fetcher: Some(podman_fetcher),
    },
    #[cfg(feature = "process")]
    CollectorEntry {
        name: wm_collector_process::NAME,
        catalog: Catalog::Node,
        feature: "process",
        build: process,
        fetcher: None,
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

/// Builds the docker image collector unless `container_image.enabled` is false.
#[cfg(feature = "docker")]
fn docker_images(config: &AgentConfig) -> Result<Option<Collector>, ConfigError> {
    let images: wm_core::ImageCollectionConfig = config.section()?;
    let docker: wm_collector_docker::DockerConfig = config.section()?;
    Ok(images.collects().then(|| wm_collector_docker::images::DockerImageCollector::new(docker).into_collector()))
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

/// Builds the containerd image collector unless `container_image.enabled` is false.
#[cfg(feature = "containerd")]
fn containerd_images(config: &AgentConfig) -> Result<Option<Collector>, ConfigError> {
    let images: wm_core::ImageCollectionConfig = config.section()?;
    let containerd: wm_collector_containerd::ContainerdConfig = config.section()?;
    Ok(images
        .collects()
        .then(|| wm_collector_containerd::images::ContainerdImageCollector::new(containerd).into_collector()))
}

#[cfg(feature = "podman")]
fn podman(config: &AgentConfig) -> Result<Option<Collector>, ConfigError> {
    let podman: wm_collector_podman::PodmanConfig = config.section()?;
    Ok(Some(wm_collector_podman::PodmanCollector::new(podman).into_collector()))
}

/// Builds the process collector when `process_config.process_collection.enabled` or
/// `language_detection.enabled` is set.
#[cfg(feature = "process")]
fn process(config: &AgentConfig) -> Result<Option<Collector>, ConfigError> {
    let process: wm_collector_process::ProcessConfig = config.section()?;
    Ok(process.enabled().then(|| wm_collector_process::ProcessCollector::new(process).into_collector()))
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

/// Builds the Cloud Foundry collector. Garden's address and the Cloud Controller settings are
/// checked here, so that a wrong value is refused with the rest of the config.
#[cfg(feature = "cf")]
fn cloudfoundry(config: &AgentConfig) -> Result<Option<Collector>, ConfigError> {
    let garden: wm_collector_cf::CfConfig = config.section()?;
    garden.address().map_err(ConfigError::Invalid)?;
    let cc: wm_collector_cf::CcConfig = config.section()?;
    cc.validate().map_err(ConfigError::Invalid)?;
    Ok(Some(wm_collector_cf::CfCollector::new(garden, cc).into_collector()))
}

/// Builds the remote collector when `process_config.remote_workloadmeta` is set: it follows the
/// agent at `cmd_host:cmd_port`, with the token and certificate files of the config.
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

/// Returns the catalog that `config` asks for: [`Catalog::Remote`] when
/// `process_config.remote_workloadmeta` is set (in a build with the `remote` feature), else
/// [`Catalog::Node`].
///
/// # Errors
///
/// Returns an error when the remote collector's part of the config is refused.
pub fn catalog(config: &AgentConfig) -> Result<Catalog, ConfigError> {
    #[cfg(feature = "remote")]
    if config.section::<wm_collector_remote::RemoteConfig>()?.remote_workloadmeta {
        return Ok(Catalog::Remote);
    }
    // Without the `remote` feature nothing above reads `config`; this line marks it as used, so
    // that the build has no unused-variable warning.
    let _ = config;
    Ok(Catalog::Node)
}

/// Builds the collectors of the config's catalog that the config does not turn off, by their own
/// keys or by `autoconfig_exclude_features`.
///
/// # Errors
///
/// Returns the first error of a collector's part of the config. Every collector's part is read,
/// even that of a collector this agent will not run.
pub fn build_all(config: &AgentConfig) -> Result<Vec<Collector>, ConfigError> {
    let catalog = catalog(config)?;
    let mut collectors = Vec::new();
    for entry in COLLECTORS {
        // Build every entry, even one this agent will not run, so that a wrong value in any
        // collector's part is refused whichever catalog the config asks for.
        let built = (entry.build)(config)?;
        if entry.catalog == catalog && !config.collectors.excludes(entry.feature) {
            collectors.extend(built);
        }
    }
    Ok(collectors)
}

/// The cache-miss fetchers of several runtimes, asked together.
///
/// A lookup asks every runtime whose fetcher accepts the container id's form, all at the same
/// time, and waits for all of their answers. If more than one knows the container, the answer of
/// the first in the order of [`COLLECTORS`] wins.
#[derive(Clone)]
pub struct AnyRuntime(Vec<Arc<dyn ContainerFetcher>>);

impl std::fmt::Debug for AnyRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AnyRuntime").field(&self.0.len()).finish()
    }
}

#[async_trait]
impl ContainerFetcher for AnyRuntime {
    /// Tells whether any runtime's fetcher accepts the form of `container_id`.
    fn accepts(&self, container_id: &str) -> bool {
        self.0.iter().any(|f| f.accepts(container_id))
    }

    async fn fetch(&self, container_id: &str) -> Option<Container> {
        let asked = self.0.iter().filter(|f| f.accepts(container_id)).map(|f| f.fetch(container_id));
        futures::future::join_all(asked).await.into_iter().flatten().next()
    }
}

/// Returns the cache-miss fetchers of the runtime collectors that `config` does not exclude, or
/// `None` when there is none or the config is a follower's.
///
/// # Errors
///
/// Returns an error when the remote collector's part of the config, or a runtime's, is refused.
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

/// Returns the names of the collectors compiled into this build, in the order of
/// [`COLLECTORS`].
pub fn compiled() -> Vec<String> {
    COLLECTORS.iter().map(|e| e.name.to_owned()).collect()
}

#[cfg(all(test, feature = "docker", feature = "containerd"))]
#[allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
mod tests {
    use super::*;

    /// Builds the entries named `names` from a config of `yaml` and tells which built a collector.
    fn built(yaml: &str, names: &[&str]) -> Vec<bool> {
        let dir = std::env::temp_dir().join(format!("wm-collectors-{}-{}", std::process::id(), yaml.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.yaml");
        std::fs::write(&path, yaml).unwrap();
        let config = AgentConfig::read(Some(&path), std::iter::empty()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        names
            .iter()
            .map(|name| {
                let entry = COLLECTORS.iter().find(|e| e.name == *name).unwrap();
                (entry.build)(&config).unwrap().is_some()
            })
            .collect()
    }

    #[test]
    fn both_image_collectors_follow_the_same_switch() {
        let images = [wm_collector_docker::images::NAME, wm_collector_containerd::images::NAME];
        assert_eq!(built("log_level: warn\n", &images), [true, true], "on by default, as in the Datadog Agent");
        assert_eq!(built("container_image:\n  enabled: false\n", &images), [false, false]);
        let older = "container_image:\n  enabled: false\ncontainer_image_collection:\n  metadata:\n    enabled: true\n";
        assert_eq!(built(older, &images), [true, true], "the older key decides when set");
    }
}
