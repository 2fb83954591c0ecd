//! `agent run`: the store with the collectors compiled in, the tagger, the gRPC API (TLS,
//! bearer token) and the localhost HTTP API, until SIGTERM or SIGINT.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tagger::Tagger;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wm_store::Store;

use crate::config::Config;
use crate::grpc::{AgentApi, BearerAuth, MAX_MESSAGE_SIZE};
use crate::http::{Backend, HttpState, router};
use crate::proto::api::v1::agent_secure_server::AgentSecureServer;
use crate::remote::{RemoteAgent, RemoteTagger};
use crate::security;

/// The collectors this build links (cargo features).
pub fn compiled_collectors() -> Vec<String> {
    let mut names = Vec::new();
    if cfg!(feature = "docker") {
        names.push("docker".to_owned());
    }
    if cfg!(feature = "containerd") {
        names.push("containerd".to_owned());
    }
    if cfg!(feature = "podman") {
        names.push("podman".to_owned());
    }
    names
}

/// The env vars collectors keep beyond the rules' own: the keys of `*_env_as_tags`.
#[cfg(any(feature = "docker", feature = "containerd", feature = "podman"))]
fn extra_env(config: &Config) -> Vec<String> {
    let tagger = config.tagger();
    tagger.container_env_as_tags.keys().chain(tagger.docker_env_as_tags.keys()).cloned().collect()
}

#[allow(unused_mut, unused_variables)] // a flavor without collectors adds none
fn store_with_collectors(config: &Config) -> Store {
    let mut builder = Store::builder();
    #[cfg(feature = "docker")]
    {
        let host = Some(config.str("docker_host").to_owned()).filter(|h| !h.is_empty());
        let docker = wm_collector_docker::DockerConfig { host, extra_env: extra_env(config) };
        builder = builder.collector(wm_collector_docker::DockerCollector::new(docker).into_collector());
    }
    #[cfg(feature = "containerd")]
    {
        let socket = Some(config.str("cri_socket_path")).filter(|s| !s.is_empty()).map(std::path::PathBuf::from);
        let containerd = wm_collector_containerd::ContainerdConfig {
            socket,
            namespaces: config.list("containerd_namespaces"),
            exclude_namespaces: config.list("containerd_exclude_namespaces"),
            extra_env: extra_env(config),
        };
        builder = builder.collector(wm_collector_containerd::ContainerdCollector::new(containerd).into_collector());
    }
    #[cfg(feature = "podman")]
    {
        let socket = Some(config.str("podman_socket_path")).filter(|s| !s.is_empty()).map(std::path::PathBuf::from);
        let podman = wm_collector_podman::PodmanConfig { socket, extra_env: extra_env(config) };
        builder = builder.collector(wm_collector_podman::PodmanCollector::new(podman).into_collector());
    }
    builder.build()
}

/// A running agent.
#[derive(Debug)]
pub struct RunningAgent {
    /// The store.
    pub store: Store,
    /// The tagger.
    pub tagger: Arc<Tagger>,
    /// Where the gRPC API listens (`None` in `flavor-light`, which serves none).
    pub grpc_address: Option<SocketAddr>,
    /// The replica of the upstream agent's tags (`flavor-light` only).
    pub replica: Option<Arc<RemoteTagger>>,
    /// Where the HTTP API listens.
    pub http_address: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

async fn listen(host: &str, port: u16, key: &str) -> anyhow::Result<TcpListener> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve {host} ({key})"))?
        .collect();
    // Prefer IPv4: `localhost` clients (Datadog's among them) dial 127.0.0.1.
    let address = addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(addresses.first())
        .copied()
        .with_context(|| format!("{host} resolves to no address ({key})"))?;
    TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address} ({key})"))
}

/// Starts everything; returns once the servers listen. A build without collectors
/// (`flavor-light`) runs the remote tagger client instead of collectors and a gRPC server.
pub async fn start(config: &Config) -> anyhow::Result<RunningAgent> {
    if compiled_collectors().is_empty() {
        return start_light(config).await;
    }
    let token = security::load_or_create_token(&config.auth_token_path())?;
    let cert = security::load_or_create_cert(&config.ipc_cert_path())?;
    let grpc_listener = listen(config.str("cmd_host"), config.port("cmd_port"), "cmd_host/cmd_port").await?;
    let http_listener = listen("127.0.0.1", config.port("health_port"), "health_port").await?;
    let grpc_address = grpc_listener.local_addr()?;
    let http_address = http_listener.local_addr()?;

    let store = store_with_collectors(config);
    let tagger = Arc::new(Tagger::new(config.tagger()));
    let tagger_task = tagger.spawn(&store);
    store.start();

    let (stop, stopped) = watch::channel(false);
    let api = AgentSecureServer::new(AgentApi::new(store.clone(), tagger.clone(), stopped.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let api = tonic::service::interceptor::InterceptedService::new(api, BearerAuth::new(&token));
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(&cert.cert_pem, &cert.key_pem));
    let mut grpc = tonic::transport::Server::builder().tls_config(tls).context("TLS setup of the gRPC API")?;
    let mut until = stopped.clone();
    let grpc_task = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener);
        let shutdown = async move {
            let _ = until.wait_for(|s| *s).await;
        };
        if let Err(e) = grpc.add_service(api).serve_with_incoming_shutdown(incoming, shutdown).await {
            tracing::error!(error = %e, "the gRPC API stopped");
        }
    });

    let settings = settings_of(config);
    let state = HttpState {
        backend: Backend::Local { store: store.clone(), tagger: tagger.clone() },
        config: Arc::new(settings),
        started: Instant::now(),
        grpc_address: grpc_address.to_string(),
        compiled_collectors: compiled_collectors(),
    };
    let mut until = stopped;
    let http_task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = until.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(http_listener, router(state)).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "the HTTP API stopped");
        }
    });
    tracing::info!(
        grpc = %grpc_address,
        http = %http_address,
        collectors = ?compiled_collectors(),
        "agent started"
    );
    Ok(RunningAgent {
        store,
        tagger,
        grpc_address: Some(grpc_address),
        replica: None,
        http_address,
        stop,
        tasks: vec![tagger_task, grpc_task, http_task],
    })
}

fn settings_of(config: &Config) -> BTreeMap<String, crate::config::Setting> {
    config.settings().iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

/// `flavor-light`: a replica of the tags of the agent at `cmd_host:cmd_port` (with its token and
/// certificate files), served on the HTTP API. What `start` runs in a build without collectors;
/// public so that any build can test it.
pub async fn start_light(config: &Config) -> anyhow::Result<RunningAgent> {
    let token_path = config.auth_token_path();
    let token = std::fs::read_to_string(&token_path)
        .with_context(|| format!("the upstream agent's auth token {} (auth_token_file_path)", token_path.display()))?;
    let cert_path = config.ipc_cert_path();
    anyhow::ensure!(
        cert_path.exists(),
        "the upstream agent's IPC certificate {} does not exist (ipc_cert_file_path)",
        cert_path.display()
    );
    let cert = security::load_or_create_cert(&cert_path)?;
    let upstream = RemoteAgent {
        address: format!("{}:{}", config.str("cmd_host"), config.port("cmd_port")),
        token: token.trim().to_owned(),
        cert,
    };
    let http_listener = listen("127.0.0.1", config.port("health_port"), "health_port").await?;
    let http_address = http_listener.local_addr()?;
    let replica = RemoteTagger::new();
    let follower = replica.spawn(upstream.clone());
    let (stop, mut until) = watch::channel(false);
    let state = HttpState {
        backend: Backend::Remote(replica.clone()),
        config: Arc::new(settings_of(config)),
        started: Instant::now(),
        grpc_address: format!("none (remote tagger client of {})", upstream.address),
        compiled_collectors: Vec::new(),
    };
    let http_task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = until.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(http_listener, router(state)).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "the HTTP API stopped");
        }
    });
    tracing::info!(upstream = upstream.address, http = %http_address, "light agent started: remote tagger client");
    let store = Store::builder().build();
    let tagger = Arc::new(Tagger::new(config.tagger()));
    Ok(RunningAgent {
        store,
        tagger,
        grpc_address: None,
        replica: Some(replica),
        http_address,
        stop,
        tasks: vec![follower, http_task],
    })
}

impl RunningAgent {
    /// Stops the servers (streams get 2 s to close, then are cut), the collectors and the store.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        self.store.shutdown().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        for task in self.tasks.drain(..) {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// Runs until SIGTERM or SIGINT, then stops within 5 s.
pub async fn run(config: &Config) -> anyhow::Result<()> {
    let agent = start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    if tokio::time::timeout(Duration::from_secs(4), agent.stop()).await.is_err() {
        tracing::warn!("shutdown took over 4 s; exiting anyway");
    }
    Ok(())
}
