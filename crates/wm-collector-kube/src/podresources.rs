//! Reads which devices the kubelet allocated to each container, from its pod-resources API: gRPC
//! `v1.PodResourcesLister/List` on a unix socket (`kubernetes_kubelet_podresources_socket`,
//! default [`DEFAULT_SOCKET`]).
//!
//! The kubelet pull asks once per pull, when the socket exists, and gives each container the
//! devices listed for its (pod namespace, pod name, container name): one entry per device id,
//! named after its resource (`nvidia.com/gpu`), as the Datadog Agent's
//! `ResolvedAllocatedResources`. A socket that does not exist means the node has no such API
//! (or the agent does not mount it): nothing is asked. A failed call is logged and the pull goes
//! on without devices; the connection is made again at the next pull.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use wm_core::AllocatedResource;

/// The generated client and messages (from `proto/podresources.proto`, our own).
#[allow(missing_docs, clippy::all, missing_debug_implementations, rust_2018_idioms)]
mod pb {
    tonic::include_proto!("v1");
}

/// Where the kubelet serves its pod-resources API when run with its default root directory.
pub const DEFAULT_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";
/// The largest answer read: 16 MiB, room for thousands of devices on a node of 110 pods.
const MAX_ANSWER: usize = 16 << 20;

/// The devices of each container, by (pod namespace, pod name, container name).
pub type Allocations = HashMap<(String, String, String), Vec<AllocatedResource>>;

/// Why the pod-resources API could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PodResourcesError {
    /// Connecting to the socket failed.
    #[error("connecting to {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What failed.
        source: tonic::transport::Error,
    },
    /// The call failed.
    #[error("List on {path}: {source}")]
    Call {
        /// The socket.
        path: PathBuf,
        /// What the kubelet answered.
        source: tonic::Status,
    },
    /// The call did not end within its deadline.
    #[error("List on {path} timed out after {deadline:?}")]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The deadline.
        deadline: Duration,
    },
}

/// A client of the kubelet's pod-resources API, connected at its first call and again after a
/// failed one.
#[derive(Debug)]
pub struct PodResources {
    path: PathBuf,
    deadline: Duration,
    channel: Option<Channel>,
}

impl PodResources {
    /// Creates a client for the socket at `path`, each call ending within `deadline`. Does no
    /// I/O.
    pub fn new(path: PathBuf, deadline: Duration) -> Self {
        Self { path, deadline, channel: None }
    }

    /// Returns the socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lists the devices of every container of the node's active pods.
    ///
    /// `Ok(None)` when the socket does not exist.
    ///
    /// # Errors
    ///
    /// Returns an error when connecting or the call fails; the next call connects again.
    pub async fn list(&mut self) -> Result<Option<Allocations>, PodResourcesError> {
        if !self.path.exists() {
            self.channel = None;
            return Ok(None);
        }
        let result = tokio::time::timeout(self.deadline, self.call()).await;
        let result = match result {
            Ok(result) => result,
            Err(_) => Err(PodResourcesError::Timeout { path: self.path.clone(), deadline: self.deadline }),
        };
        if result.is_err() {
            self.channel = None;
        }
        result.map(Some)
    }

    async fn call(&mut self) -> Result<Allocations, PodResourcesError> {
        let channel = match &self.channel {
            Some(channel) => channel.clone(),
            None => {
                let channel = connect(&self.path)
                    .await
                    .map_err(|source| PodResourcesError::Connect { path: self.path.clone(), source })?;
                self.channel = Some(channel.clone());
                channel
            }
        };
        let mut client = pb::pod_resources_lister_client::PodResourcesListerClient::new(channel)
            .max_decoding_message_size(MAX_ANSWER);
        let answer = client
            .list(pb::ListPodResourcesRequest {})
            .await
            .map_err(|source| PodResourcesError::Call { path: self.path.clone(), source })?
            .into_inner();
        Ok(allocations(answer))
    }
}

/// Opens a gRPC channel on the unix socket at `path`.
async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    // The URI is required by the API and never used: every connection goes to the socket.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}

/// Turns the kubelet's answer into each container's devices; containers without any are left
/// out.
fn allocations(answer: pb::ListPodResourcesResponse) -> Allocations {
    let mut out = Allocations::new();
    for pod in answer.pod_resources {
        for container in pod.containers {
            let devices: Vec<AllocatedResource> = container
                .devices
                .into_iter()
                .flat_map(|d| {
                    let name = d.resource_name;
                    d.device_ids.into_iter().map(move |id| AllocatedResource { name: name.clone(), id })
                })
                .collect();
            if !devices.is_empty() {
                out.insert((pod.namespace.clone(), pod.name.clone(), container.name), devices);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_device_id_becomes_one_entry_named_after_its_resource() {
        let answer = pb::ListPodResourcesResponse {
            pod_resources: vec![pb::PodResources {
                name: "train".into(),
                namespace: "ml".into(),
                containers: vec![
                    pb::ContainerResources {
                        name: "main".into(),
                        devices: vec![
                            pb::ContainerDevices {
                                resource_name: "nvidia.com/gpu".into(),
                                device_ids: vec!["GPU-0".into(), "GPU-1".into()],
                            },
                            pb::ContainerDevices {
                                resource_name: "example.com/nic".into(),
                                device_ids: vec!["nic-3".into()],
                            },
                        ],
                    },
                    pb::ContainerResources { name: "sidecar".into(), devices: Vec::new() },
                ],
            }],
        };
        let got = allocations(answer);
        let main = &got[&("ml".to_owned(), "train".to_owned(), "main".to_owned())];
        let pairs: Vec<(&str, &str)> = main.iter().map(|r| (r.name.as_str(), r.id.as_str())).collect();
        assert_eq!(pairs, [("nvidia.com/gpu", "GPU-0"), ("nvidia.com/gpu", "GPU-1"), ("example.com/nic", "nic-3")]);
        assert_eq!(got.len(), 1, "a container without devices is left out");
    }

    #[tokio::test]
    async fn a_missing_socket_asks_nothing_and_a_dead_one_is_an_error() {
        let dir = std::env::temp_dir().join(format!("wm-podresources-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut absent = PodResources::new(dir.join("absent.sock"), Duration::from_secs(1));
        assert!(absent.list().await.unwrap().is_none());
        // A socket file nobody listens on: connecting fails, cleanly.
        let dead = dir.join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
        let mut client = PodResources::new(dead, Duration::from_secs(1));
        assert!(client.list().await.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
