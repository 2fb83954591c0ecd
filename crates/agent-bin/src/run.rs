//! `agent run`: the store with the collectors of this build and config, the tagger, the gRPC
//! API (TLS, bearer token) and the localhost HTTP API, until SIGTERM or SIGINT. In a
//! `flavor-light` build, `agent run` runs [`crate::light`] instead.
//!
//! One shutdown path: every task the agent starts is in one [`TaskTracker`] (the tagger, the
//! servers, each gRPC stream's feeder), every one ends on one [`CancellationToken`], and the
//! store awaits its own (loop and collectors). [`RunningAgent::stop`] cancels, then awaits them
//! all and says how many are left.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tagger::Tagger;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use wm_core::{CancellationToken, Collector};
use wm_ipc::MAX_MESSAGE_SIZE;
use wm_ipc::proto::api::v1::agent_secure_server::AgentSecureServer;
use wm_store::Store;

use crate::backend::Local;
use crate::collectors::{self, Catalog};
use crate::config::AgentConfig;
use crate::grpc::{AgentApi, BearerAuth};
use crate::http::HttpState;
use crate::security;

/// How long `stop` waits for the agent's tasks after cancelling them.
const STOP_WAIT: Duration = Duration::from_secs(4);

/// A running agent.
#[derive(Debug)]
pub struct RunningAgent {
    /// The store.
    pub store: Store,
    /// The tagger.
    pub tagger: Arc<Tagger>,
    /// Where the gRPC API listens (`None` when this agent follows another one,
    /// `process_config.remote_workloadmeta`, and serves none).
    pub grpc_address: Option<SocketAddr>,
    /// Where the HTTP API listens.
    pub http_address: SocketAddr,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// What was left after a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Tasks still running when `stop` gave up waiting (0 when everything ended).
    pub tasks_left: usize,
}

/// Binds `host:port`, preferring IPv4: `localhost` clients (Datadog's among them) dial 127.0.0.1.
pub(crate) async fn listen(host: &str, port: u16, key: &str) -> anyhow::Result<TcpListener> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve {host} ({key})"))?
        .collect();
    let address = addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(addresses.first())
        .copied()
        .with_context(|| format!("{host} resolves to no address ({key})"))?;
    TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address} ({key})"))
}

/// Starts the agent with the collectors of its config; returns once the servers listen.
pub async fn start(config: &AgentConfig) -> anyhow::Result<RunningAgent> {
    let collectors = collectors::build_all(config)?;
    start_with(config, collectors).await
}

/// Starts the agent with `collectors` instead of the config's (tests run none, or their own).
pub async fn start_with(config: &AgentConfig, collectors: Vec<Collector>) -> anyhow::Result<RunningAgent> {
    let follows_another = collectors::catalog(config)? == Catalog::Remote;
    let http_listener = listen("127.0.0.1", config.ipc.health_port.get(), "health_port").await?;
    let http_address = http_listener.local_addr()?;
    let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());

    let mut store_config = wm_store::StoreConfig::default();
    store_config.redetect_interval = config.collectors.collector_redetect_interval.duration();
    let mut builder = Store::builder().config(store_config);
    for collector in collectors {
        builder = builder.collector(collector);
    }
    let store = builder.build();
    let tagger = Arc::new(Tagger::new(config.tagger.clone()));
    let tagger_task = tagger.spawn(&store);
    tasks.spawn(async move {
        // It ends when the store's stream does, at shutdown.
        let _ = tagger_task.await;
    });
    store.start();

    // An agent that follows another one (the remote catalog) serves no gRPC: its upstream does.
    let grpc_address = if follows_another {
        tracing::info!(
            upstream = %format!("{}:{}", config.ipc.cmd_host, config.ipc.cmd_port),
            "following another agent (process_config.remote_workloadmeta): no gRPC API of its own"
        );
        None
    } else {
        Some(serve_grpc(config, &store, &tagger, &cancel, &tasks).await?)
    };

    let state = HttpState {
        backend: Arc::new(Local { store: store.clone(), tagger: tagger.clone() }),
        config: Arc::new(config.settings()),
        started: Instant::now(),
        grpc_address: grpc_address.map_or_else(|| "none".to_owned(), |a| a.to_string()),
        compiled_collectors: collectors::compiled(),
    };
    tasks.spawn(crate::http::serve(http_listener, state, cancel.clone()));
    tracing::info!(
        grpc = ?grpc_address,
        http = %http_address,
        collectors = ?store.health().collectors.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        "agent started"
    );
    Ok(RunningAgent { store, tagger, grpc_address, http_address, cancel, tasks })
}

/// Starts `AgentSecure` on `cmd_host:cmd_port`, TLS with the IPC certificate, bearer auth.
async fn serve_grpc(
    config: &AgentConfig,
    store: &Store,
    tagger: &Arc<Tagger>,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<SocketAddr> {
    let token = security::load_or_create_token(&config.auth_token_path())?;
    let cert = security::load_or_create_cert(&config.ipc_cert_path())?;
    let listener = listen(&config.ipc.cmd_host, config.ipc.cmd_port.get(), "cmd_host/cmd_port").await?;
    let address = listener.local_addr()?;
    let api = AgentSecureServer::new(AgentApi::new(store.clone(), tagger.clone(), cancel.clone(), tasks.clone()))
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let api = tonic::service::interceptor::InterceptedService::new(api, BearerAuth::new(&token));
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(&cert.cert_pem, &cert.key_pem));
    let mut server = tonic::transport::Server::builder().tls_config(tls).context("TLS setup of the gRPC API")?;
    let until = cancel.clone();
    tasks.spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let shutdown = async move { until.cancelled().await };
        if let Err(e) = server.add_service(api).serve_with_incoming_shutdown(incoming, shutdown).await {
            tracing::error!(error = %e, "the gRPC API stopped");
        }
    });
    Ok(address)
}

impl RunningAgent {
    /// Stops everything: streams end (`UNAVAILABLE`), the servers close, the store stops its
    /// collectors and loop (the tagger follows), and every task is awaited, at most 4 s.
    pub async fn stop(self) -> Stopped {
        self.cancel.cancel();
        self.tasks.close();
        let waited = tokio::time::timeout(STOP_WAIT, async {
            self.store.shutdown().await;
            self.tasks.wait().await;
        })
        .await;
        let tasks_left = self.tasks.len() + self.store.running_tasks();
        if waited.is_err() {
            tracing::warn!(tasks_left, "some tasks did not end within {STOP_WAIT:?}");
        }
        Stopped { tasks_left }
    }
}

/// Runs the agent until SIGTERM or SIGINT, then stops within 5 s.
pub async fn run(config: &AgentConfig) -> anyhow::Result<()> {
    crate::signals::run_until_signal(start(config), RunningAgent::stop).await
}
