//! A device plugin of our own, for tests that need the kubelet to allocate devices: it offers a
//! few fake devices of one resource (`wm.test/device`, say), registers with the kubelet, and
//! answers its allocations with nothing to mount. The kubelet then counts the devices in the
//! node's allocatable resources, gives them to the pods that ask, and reports which container
//! holds which device in its pod-resources API, exactly as it does for GPUs.
//!
//! The kubelet takes registrations on a socket whose path it hard-codes,
//! [`KUBELET_SOCKET`], whatever its `--root-dir`; a plugin's own socket must be in the same
//! directory. So this is the one place the test cluster uses a machine-wide path; the cluster's
//! host-wide lock keeps two kubelets (and two plugins) from meeting there.

use std::path::PathBuf;
use std::pin::Pin;

use futures::Stream;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tonic::transport::{Endpoint, Server, Uri};
use tonic::{Request, Response, Status};

use crate::runtimes::Unavailable;

#[allow(missing_docs, clippy::all, missing_debug_implementations, rust_2018_idioms)]
mod pb {
    tonic::include_proto!("v1beta1");
}

/// Where the kubelet takes device plugins' registrations.
pub const KUBELET_SOCKET: &str = "/var/lib/kubelet/device-plugins/kubelet.sock";
/// The device-plugin API version the kubelet speaks.
const VERSION: &str = "v1beta1";

/// A running device plugin; dropping it stops serving and removes its socket (the kubelet then
/// marks its devices unhealthy).
#[derive(Debug)]
pub struct DevicePlugin {
    socket: PathBuf,
    server: JoinHandle<()>,
}

/// Serves the devices.
#[derive(Debug, Clone)]
struct Plugin {
    devices: Vec<String>,
}

#[tonic::async_trait]
impl pb::device_plugin_server::DevicePlugin for Plugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::DevicePluginOptions>, Status> {
        Ok(Response::new(pb::DevicePluginOptions::default()))
    }

    type ListAndWatchStream = Pin<Box<dyn Stream<Item = Result<pb::ListAndWatchResponse, Status>> + Send>>;

    /// Sends the device list once, then keeps the stream open (the kubelet takes a closed stream
    /// for a plugin that stopped).
    async fn list_and_watch(&self, _: Request<pb::Empty>) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let devices =
            self.devices.iter().map(|id| pb::Device { id: id.clone(), health: "Healthy".into() }).collect::<Vec<_>>();
        let first = futures::stream::once(async move { Ok(pb::ListAndWatchResponse { devices }) });
        Ok(Response::new(Box::pin(futures::StreamExt::chain(first, futures::stream::pending()))))
    }

    async fn allocate(&self, request: Request<pb::AllocateRequest>) -> Result<Response<pb::AllocateResponse>, Status> {
        let container_responses =
            request.into_inner().container_requests.iter().map(|_| pb::ContainerAllocateResponse::default()).collect();
        Ok(Response::new(pb::AllocateResponse { container_responses }))
    }
}

impl DevicePlugin {
    /// Serves `devices` of `resource` (`vendor.example/name`) and registers them with the
    /// kubelet listening on [`KUBELET_SOCKET`].
    ///
    /// # Errors
    ///
    /// Fails when the kubelet's socket is missing, or serving or registering fails.
    pub async fn start(resource: &str, devices: &[&str]) -> Result<Self, Unavailable> {
        let kubelet = PathBuf::from(KUBELET_SOCKET);
        let Some(dir) = kubelet.parent().filter(|_| kubelet.exists()) else {
            return Err(Unavailable(format!("no kubelet device-plugin socket at {KUBELET_SOCKET}")));
        };
        let name = format!("wm-test-{}.sock", std::process::id());
        let socket = dir.join(&name);
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).map_err(|e| Unavailable(format!("{}: {e}", socket.display())))?;
        let incoming = futures::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        });
        let plugin = Plugin { devices: devices.iter().map(|d| (*d).to_owned()).collect() };
        let server = tokio::spawn(async move {
            let service = pb::device_plugin_server::DevicePluginServer::new(plugin);
            if let Err(e) = Server::builder().add_service(service).serve_with_incoming(incoming).await {
                eprintln!("the test device plugin stopped: {e}");
            }
        });
        let plugin = Self { socket, server };
        // The kubelet connects back to the plugin inside the Register call, so the plugin serves
        // first.
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let kubelet = kubelet.clone();
                async move { UnixStream::connect(kubelet).await.map(hyper_util::rt::TokioIo::new) }
            }))
            .await
            .map_err(|e| Unavailable(format!("connecting to {KUBELET_SOCKET}: {e}")))?;
        let mut registration = pb::registration_client::RegistrationClient::new(channel);
        let request = pb::RegisterRequest {
            version: VERSION.into(),
            endpoint: name,
            resource_name: resource.into(),
            options: Some(pb::DevicePluginOptions::default()),
        };
        registration.register(request).await.map_err(|e| Unavailable(format!("registering {resource}: {e}")))?;
        Ok(plugin)
    }
}

impl Drop for DevicePlugin {
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}
