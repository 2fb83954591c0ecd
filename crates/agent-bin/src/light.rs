//! The light agent (`flavor-light`): no collector, no store of its own; a replica of the tags of
//! the agent at `cmd_host:cmd_port` (with that agent's token and certificate files), served on
//! its own TLS API on `api_port` (with the same certificate), its probes on `health_port`. It is what `agent run` runs in a `flavor-light` build; the type is
//! in every build so that tests can run it beside a full agent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::task::TaskTracker;
use wm_core::CancellationToken;
use wm_ipc::RemoteAgent;

use crate::config::AgentConfig;
use crate::http::HttpState;
use crate::remote::RemoteTagger;
use crate::run::listen;
use crate::signals::Stopped;

/// A running light agent.
#[derive(Debug)]
pub struct RunningLight {
    /// The replica of the upstream's tags.
    pub replica: Arc<RemoteTagger>,
    /// Where the probes listen (plain HTTP).
    pub http_address: SocketAddr,
    /// Where the TLS API listens (`api_port`).
    pub api_address: SocketAddr,
    token: Arc<str>,
    cert_pem: Arc<str>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// Starts the light agent; returns once its HTTP API listens.
pub async fn start(config: &AgentConfig) -> anyhow::Result<RunningLight> {
    let address = format!("{}:{}", config.ipc.cmd_host, config.ipc.cmd_port);
    let (token, cert) = (config.auth_token_path(), config.ipc_cert_path());
    let upstream = RemoteAgent::from_files(address, &token, &cert)
        .context("the upstream agent's token and certificate (auth_token_file_path, ipc_cert_file_path)")?;
    crate::run::warn_if_exposed(config);
    let (http_limits, api_limits) = crate::run::connection_limits(config);
    let token: Arc<str> = Arc::from(crate::security::load_or_create_token(&config.auth_token_path())?);
    let http_listener =
        listen(&config.ipc.health_host, config.ipc.health_port.get(), "health_host/health_port").await?;
    let http_address = http_listener.local_addr()?;
    let replica = RemoteTagger::new();
    let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
    tasks.spawn(replica.clone().follow_until(upstream.clone(), cancel.clone()));
    let state = HttpState {
        backend: replica.clone(),
        config: Arc::new(config.settings()),
        started: Instant::now(),
        grpc_address: format!("none (remote tagger client of {})", upstream.address),
        compiled_collectors: Vec::new(),
        guard: crate::http::Guard {
            token: token.clone(),
            // The upstream owns the token file: follow it when it makes a new one.
            token_file: Some(Arc::new(crate::http::TokenFile::new(config.auth_token_path(), token.clone()))),
        },
        metrics_public: config.ipc.metrics_public,
    };
    let cert = crate::security::load_or_create_cert(&config.ipc_cert_path())?;
    let acceptor =
        crate::run::tls_acceptor(&config.ipc_cert_path(), &cert, &[b"http/1.1"]).context("TLS setup of the API")?;
    // On loopback, where the CLI asks: cmd_host names the upstream here.
    let api_listener = listen("127.0.0.1", config.ipc.api_port.get(), "api_port").await?;
    let api_address = api_listener.local_addr()?;
    tasks.spawn(crate::http::serve_tls(api_listener, acceptor, state.clone(), api_limits, cancel.clone()));
    tasks.spawn(crate::http::serve(http_listener, state, http_limits, cancel.clone()));
    tracing::info!(upstream = upstream.address, api = %api_address, http = %http_address, "light agent started: remote tagger client");
    let cert_pem = Arc::from(cert.cert_pem.as_str());
    Ok(RunningLight { replica, http_address, api_address, token, cert_pem, cancel, tasks })
}

impl RunningLight {
    /// Its TLS API as the CLI reaches it: the port, the token and the certificate to trust.
    pub fn api(&self) -> crate::cli::Api {
        crate::cli::Api::tls(self.api_address.port(), Some(self.token.to_string()), self.cert_pem.to_string())
    }

    /// Stops the replica's stream and the HTTP API, and awaits both.
    pub async fn stop(self) -> Stopped {
        self.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(4), self.tasks.wait()).await;
        Stopped { tasks_left: self.tasks.len() }
    }
}

/// Runs the light agent until SIGTERM or SIGINT.
pub async fn run(config: &AgentConfig) -> anyhow::Result<()> {
    crate::signals::run_until_signal(start(config), RunningLight::stop).await
}
