//! The light agent, which `agent run` starts in a `flavor-light` build, and in any build with
//! `--for <agent>` when that agent's tagger is remote (see [`crate::agents::plan`]).
//!
//! It runs no collector and has no store of its own. It keeps a copy of the tags of its
//! upstream, the agent at `cmd_host:cmd_port`, which it reaches with that agent's token and
//! certificate files (`auth_token_file_path`, `ipc_cert_file_path`). It serves the CLI's TLS API
//! on 127.0.0.1 at `api_port`, with the upstream's certificate and token, and the probes on
//! `health_host:health_port`.
//!
//! This module is compiled into every build, not only `flavor-light` ones, so that tests can run
//! a light agent beside a full one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio_util::task::TaskTracker;
use wm_core::CancellationToken;
use wm_ipc::RemoteAgent;

use crate::config::AgentConfig;
use crate::http::HttpState;
use crate::remote::RemoteTagger;
use crate::run::listen;
use crate::signals::{Controls, Stopped};

/// A light agent that has started.
///
/// Its public fields mirror those of [`crate::run::RunningAgent`], with the copy of the
/// upstream's tags in place of the store and the tagger, and no gRPC address. Call
/// [`RunningLight::stop`] to shut it down.
#[derive(Debug)]
pub struct RunningLight {
    /// The copy of the upstream's tags, which a background task keeps up to date.
    pub replica: Arc<RemoteTagger>,
    /// Where the probes listen.
    pub http_address: SocketAddr,
    /// Where the TLS API listens: always 127.0.0.1, at `api_port`.
    pub api_address: SocketAddr,
    /// The credentials `api` gives the CLI, and what `stop` cancels and waits for.
    controls: Controls,
}

/// Starts the light agent; returns once both its servers listen.
///
/// It does not wait for the upstream: the stream starts in the background, and the agent is
/// ready once it is up. A stream that fails is retried.
///
/// # Errors
///
/// Returns an error when the upstream's token or certificate file cannot be read or used (not
/// private to this user, a token too short, no certificate and key: see [`crate::security`]),
/// when a listener cannot resolve its host or bind its port, or when the TLS setup fails.
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
            // The token file belongs to the upstream, which may replace it (when reinstalled, for
            // example): read it again when a request's token does not match, so that the CLI,
            // which reads the new file, is still let in.
            token_file: Some(Arc::new(crate::http::TokenFile::new(config.auth_token_path(), token.clone()))),
        },
        metrics_public: config.ipc.metrics_public,
    };
    let cert = crate::security::load_or_create_cert(&config.ipc_cert_path())?;
    let acceptor =
        crate::run::tls_acceptor(&config.ipc_cert_path(), &cert, &[b"http/1.1"]).context("TLS setup of the API")?;
    // Listen on loopback, where the CLI connects. `cmd_host` cannot give the address: in a light
    // agent it names the upstream.
    let api_listener = listen("127.0.0.1", config.ipc.api_port.get(), "api_port").await?;
    let api_address = api_listener.local_addr()?;
    tasks.spawn(crate::http::serve_tls(api_listener, acceptor, state.clone(), api_limits, cancel.clone()));
    tasks.spawn(crate::http::serve(http_listener, state, http_limits, cancel.clone()));
    tracing::info!(upstream = upstream.address, api = %api_address, http = %http_address, "light agent started: remote tagger client");
    let cert_pem = Arc::from(cert.cert_pem.as_str());
    let controls = Controls { token, cert_pem, cancel, tasks };
    Ok(RunningLight { replica, http_address, api_address, controls })
}

impl RunningLight {
    /// Returns what the CLI needs to query this light agent's TLS API: the port, and the token
    /// and certificate as they were when the agent started.
    pub fn api(&self) -> crate::cli::Api {
        self.controls.api(self.api_address.port())
    }

    /// Stops the light agent: cancels the stream from the upstream and both servers, then waits
    /// up to 4 s for their tasks to end.
    ///
    /// Returns how many tasks were still running when it stopped waiting.
    pub async fn stop(self) -> Stopped {
        self.controls.stop(std::future::ready(()), || 0).await
    }
}

/// Runs the light agent until SIGTERM or SIGINT, then stops it.
///
/// # Errors
///
/// Returns the error of [`start`], or of setting up the SIGTERM handler.
pub async fn run(config: &AgentConfig) -> anyhow::Result<()> {
    crate::signals::run_until_signal(start(config), RunningLight::stop).await
}
