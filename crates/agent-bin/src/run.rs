//! `agent run` for a full agent: starts the store with the collectors that this build and its
//! config enable, the tagger and the servers, and runs them until SIGTERM or SIGINT. In a
//! `flavor-light` build, `agent run` starts [`crate::light`] instead.
//!
//! The servers are the gRPC API and the CLI's TLS API, which share `cmd_port` and both require
//! the bearer token, and the probes in plain HTTP on `health_port`. A follower serves no gRPC API;
//! its CLI API listens on 127.0.0.1 at `api_port` instead.
//!
//! Shutdown takes one path. Every task the agent starts (the tagger's, the servers', the one
//! feeding each gRPC stream) is tracked by one [`TaskTracker`] and ends when one
//! [`CancellationToken`] is cancelled, while the store waits for its own tasks (its loop and the
//! collectors). [`RunningAgent::stop`] cancels the token, waits for all of them, and reports how
//! many are left.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tagger::Tagger;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use wm_core::sync::MutexExt;
use wm_core::{CancellationToken, Collector};
use wm_ipc::MAX_MESSAGE_SIZE;
use wm_ipc::proto::api::v1::agent_secure_server::AgentSecureServer;
use wm_store::Store;

use crate::backend::Local;
use crate::collectors::{self, Catalog};
use crate::config::AgentConfig;
use crate::conn::{self, Limits, accept_loop};
use crate::grpc::{AgentApi, BearerAuth, OriginReader};
use crate::http::{Guard, HttpState};
use crate::security;
use crate::signals::Controls;
pub use crate::signals::Stopped;

/// How long the tagger waits for the container runtimes when asked about a container that no
/// collector has reported yet.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// A full agent that has started: its store, its tagger and the addresses its servers listen
/// on.
///
/// [`RunningAgent::api`] returns what the CLI needs to reach it; [`RunningAgent::stop`] shuts it
/// down.
#[derive(Debug)]
pub struct RunningAgent {
    /// The workload-metadata store, which runs the collectors.
    pub store: Store,
    /// The tagger, which turns the store's entities into tags.
    pub tagger: Arc<Tagger>,
    /// The address of the gRPC API, or `None` for a follower, which serves no gRPC.
    pub grpc_address: Option<SocketAddr>,
    /// The address of the probes' plain HTTP listener (`health_host:health_port`).
    pub http_address: SocketAddr,
    /// The address of the CLI's TLS API: the gRPC address, whose listener serves both, or for a
    /// follower 127.0.0.1 at `api_port`.
    pub api_address: SocketAddr,
    /// The credentials `api` gives the CLI, and what `stop` cancels and waits for.
    controls: Controls,
}

impl RunningAgent {
    /// Returns what the CLI needs to query this agent's TLS API: the port of `api_address`, the
    /// bearer token, and the IPC certificate to trust.
    pub fn api(&self) -> crate::cli::Api {
        self.controls.api(self.api_address.port())
    }
}

/// Returns the port on which the agent that `config` describes serves the CLI's TLS API.
///
/// That is `cmd_port`, beside gRPC, for a full agent, and `api_port` for an agent with no gRPC
/// server of its own: the light agent (a `flavor-light` build) or a follower. A config whose
/// `process_config.remote_workloadmeta` cannot be read is taken for a full agent's.
pub fn api_port(config: &AgentConfig) -> u16 {
    let follows_another = collectors::catalog(config).is_ok_and(|c| c == Catalog::Remote);
    if cfg!(feature = "flavor-light") || follows_another {
        config.ipc.api_port.get()
    } else {
        config.ipc.cmd_port.get()
    }
}

/// Resolves `host` and listens on `port` at its first IPv4 address, or at its first address if it
/// has no IPv4 one.
///
/// IPv4 comes first because `localhost` clients, Datadog's among them, dial 127.0.0.1, and a
/// listener on `::1` would not get their connections. `key` names the config keys in errors.
///
/// # Errors
///
/// Returns an error when `host` does not resolve or the address cannot be bound.
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

/// Starts a full agent with the collectors that its config enables; returns once every server
/// listens.
///
/// The collectors start in the background, so the agent may not be ready yet when this returns.
///
/// # Errors
///
/// Returns an error when a collector's config is refused, and otherwise when [`start_with`]
/// does.
pub async fn start(config: &AgentConfig) -> anyhow::Result<RunningAgent> {
    let collectors = collectors::build_all(config)?;
    start_with(config, collectors).await
}

/// Returns the connection limits of the probes' port and of the TLS port, in that order.
///
/// It first raises the soft file-descriptor limit to the hard one, then shares what that allows
/// between the two ports (see [`conn::FdLimit::connections_per_listener`]). Both ports give TLS
/// handshakes and request headers `server_timeout`, at least 1 s. The probes' port closes a
/// connection idle that long; the TLS port allows at least [`GRPC_IDLE`].
pub(crate) fn connection_limits(config: &AgentConfig) -> (Limits, Limits) {
    let fds = conn::raise_fd_limit();
    let max_connections = fds.connections_per_listener(2, config.ipc.ipc_max_connections);
    let timeout = config.ipc.server_timeout.duration().max(Duration::from_secs(1));
    let per_peer = config.ipc.ipc_max_connections_per_peer.max(1);
    let http = Limits { max_connections, per_peer, timeout, idle: timeout };
    // A gRPC stream may carry no message for minutes; the HTTP/2 pings sent every 30 s are then
    // its only traffic, so its idle limit must be well above 30 s.
    let grpc = Limits { max_connections, per_peer, timeout, idle: timeout.max(GRPC_IDLE) };
    tracing::info!(max_connections, per_peer, ?timeout, "API connection limits (per port)");
    (http, grpc)
}

/// The shortest idle limit of the TLS port: a connection that carries nothing, not even an
/// HTTP/2 ping, for this long (or for `server_timeout`, if that is longer) is closed.
const GRPC_IDLE: Duration = Duration::from_secs(120);

/// Logs a warning for each API whose configured host is not a loopback name or address, saying
/// who can then reach what.
///
/// It checks `cmd_host` and `health_host` as written, without resolving them (see
/// [`crate::http::is_loopback_host`]). It checks `cmd_host` in a light agent or a follower too,
/// although there that key names the upstream, not an address of this agent.
pub(crate) fn warn_if_exposed(config: &AgentConfig) {
    let loopback = |host: &str| crate::http::is_loopback_host(host);
    if !loopback(&config.ipc.cmd_host) {
        tracing::warn!(
            cmd_host = %config.ipc.cmd_host,
            "the gRPC and CLI API listens beyond loopback: anyone who can reach it and holds the auth token reads every container's metadata and tags"
        );
    }
    if !loopback(&config.ipc.health_host) {
        tracing::warn!(
            health_host = %config.ipc.health_host,
            metrics_public = config.ipc.metrics_public,
            "the HTTP API listens beyond loopback: other machines get /live, /ready and /health (and /metrics when metrics_public is set), nothing else: the CLI's API is on the TLS port with the token"
        );
    }
}

/// Starts a full agent with `collectors` instead of those its config enables; returns once every
/// server listens.
///
/// Tests use it to run no collector, or collectors of their own. The config still decides
/// whether the agent is a follower.
///
/// # Errors
///
/// Returns an error when the config of `process_config.remote_workloadmeta` or of a runtime's
/// fetcher is refused, when the token or certificate file cannot be read, created or used (see
/// [`crate::security`]), when a listener cannot resolve its host or bind its port, or when the
/// TLS setup fails.
pub async fn start_with(config: &AgentConfig, collectors: Vec<Collector>) -> anyhow::Result<RunningAgent> {
    let follows_another = collectors::catalog(config)? == Catalog::Remote;
    warn_if_exposed(config);
    let (http_limits, grpc_limits) = connection_limits(config);
    let token: Arc<str> = Arc::from(security::load_or_create_token(&config.auth_token_path())?);
    let http_listener =
        listen(&config.ipc.health_host, config.ipc.health_port.get(), "health_host/health_port").await?;
    let http_address = http_listener.local_addr()?;
    let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());

    let (store, tagger) = local_core(config, collectors, &tasks)?;
    store.start();

    let cert = security::load_or_create_cert(&config.ipc_cert_path())?;
    let state = HttpState {
        backend: Arc::new(Local { store: store.clone(), tagger: tagger.clone() }),
        config: Arc::new(config.settings()),
        started: Instant::now(),
        grpc_address: String::new(),
        compiled_collectors: collectors::compiled(),
        guard: Guard { token: token.clone(), token_file: None },
        metrics_public: config.ipc.metrics_public,
    };
    // A follower serves no gRPC API of its own (its upstream does); it still serves the CLI's
    // TLS API.
    let (grpc_address, api_address) = if follows_another {
        tracing::info!(
            upstream = %format!("{}:{}", config.ipc.cmd_host, config.ipc.cmd_port),
            "following another agent (process_config.remote_workloadmeta): no gRPC API of its own"
        );
        // Listen on loopback, where the CLI connects. `cmd_host` cannot give the address: in a
        // follower it names the upstream.
        let listener = listen("127.0.0.1", config.ipc.api_port.get(), "api_port").await?;
        let api_address = listener.local_addr()?;
        let state = HttpState { grpc_address: "none".to_owned(), ..state.clone() };
        let acceptor = tls_acceptor(&config.ipc_cert_path(), &cert, &[b"http/1.1"]).context("TLS setup of the API")?;
        tasks.spawn(crate::http::serve_tls(listener, acceptor, state, grpc_limits, cancel.clone()));
        (None, api_address)
    } else {
        let listener = listen(&config.ipc.cmd_host, config.ipc.cmd_port.get(), "cmd_host/cmd_port").await?;
        let address = listener.local_addr()?;
        let api = crate::http::api_router(HttpState { grpc_address: address.to_string(), ..state.clone() });
        let grpc = Grpc { listener, cert: &cert, token: &token, limits: grpc_limits, api };
        serve_grpc(config, grpc, &store, &tagger, &cancel, &tasks)?;
        (Some(address), address)
    };

    let state = HttpState { grpc_address: grpc_address.map_or_else(|| "none".to_owned(), |a| a.to_string()), ..state };
    tasks.spawn(crate::http::serve(http_listener, state, http_limits, cancel.clone()));
    tracing::info!(
        grpc = ?grpc_address,
        api = %api_address,
        http = %http_address,
        collectors = ?store.health().collectors.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        "agent started"
    );
    let cert_pem = Arc::from(cert.cert_pem.as_str());
    let controls = Controls { token, cert_pem, cancel, tasks };
    Ok(RunningAgent { store, tagger, grpc_address, http_address, api_address, controls })
}

/// Builds the store with `collectors` and the tagger it feeds, as `config` sets them up, and
/// spawns the tagger's task into `tasks`. The store is not started: call `Store::start`.
///
/// # Errors
///
/// Returns an error when the config of a runtime's fetcher (for fetch on a miss) is refused.
pub(crate) fn local_core(
    config: &AgentConfig,
    collectors: Vec<Collector>,
    tasks: &TaskTracker,
) -> anyhow::Result<(Store, Arc<Tagger>)> {
    let mut store_config = wm_store::StoreConfig::default();
    store_config.redetect_interval = config.collectors.collector_redetect_interval.duration();
    store_config.env = config.env_filter();
    let mut builder = Store::builder().config(store_config);
    for collector in collectors {
        builder = builder.collector(collector);
    }
    let store = builder.build();
    let mut tagger = Tagger::new(config.tagger.clone());
    if let Some(fetchers) = collectors::fetchers(config)? {
        tagger = tagger.with_fetcher(Arc::new(fetchers), FETCH_TIMEOUT);
    }
    let tagger = Arc::new(tagger);
    let tagger_task = tagger.spawn(&store);
    tasks.spawn(async move {
        // The tagger's task ends when the store's event stream ends, at shutdown. Tracking it
        // lets a stop wait for it.
        let _ = tagger_task.await;
    });
    Ok((store, tagger))
}

/// What `serve_grpc` needs to serve `cmd_port`: the bound listener, the certificate, the token,
/// the connection limits and the CLI's API.
struct Grpc<'a> {
    listener: TcpListener,
    cert: &'a security::IpcCert,
    token: &'a str,
    limits: Limits,
    /// The CLI's API, served to connections that choose `http/1.1` by ALPN.
    api: axum::Router,
}

/// Spawns the server of `cmd_host:cmd_port` into `tasks`, and returns without waiting for it.
///
/// Each connection goes through our accept loop (connection caps, idle timeout), then a TLS
/// handshake that must finish within `server_timeout`. ALPN then decides what it gets:
/// - `h2`, or no ALPN at all: the `AgentSecure` gRPC API, with bearer-token auth, at most 100
///   streams per connection, and an HTTP/2 ping every 30 s;
/// - `http/1.1`: the CLI's API.
///
/// Either way, a connection that carries no authenticated request within `server_timeout` is
/// closed.
///
/// # Errors
///
/// Returns an error when the TLS setup fails.
fn serve_grpc(
    config: &AgentConfig,
    grpc: Grpc<'_>,
    store: &Store,
    tagger: &Arc<Tagger>,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<()> {
    let Grpc { listener, cert, token, limits, api } = grpc;
    // `http/1.1` comes first because the server's order of preference decides: a client that
    // offers both, such as curl, gets the CLI's API, while gRPC clients offer only `h2`.
    let acceptor =
        tls_acceptor(&config.ipc_cert_path(), cert, &[b"http/1.1", b"h2"]).context("TLS setup of the gRPC API")?;
    let origin = OriginReader::new(&config.ipc.container_proc_root, &config.ipc.container_cgroup_root);
    let service = AgentApi::new(store.clone(), tagger.clone(), cancel.clone(), tasks.clone()).with_origin(origin);
    let grpc_api = AgentSecureServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let grpc_api = tonic::service::interceptor::InterceptedService::new(grpc_api, BearerAuth::new(token));
    let mut server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    let (handshaken, incoming) = tokio::sync::mpsc::channel::<Result<GrpcConnection, std::io::Error>>(64);
    let until = cancel.clone();
    let api_connections = tasks.clone();
    let api_cancel = cancel.clone();
    tasks.spawn(accept_loop("grpc", listener, limits, cancel.clone(), move |mut io, peer| {
        // Close the connection unless it carries an authenticated request within
        // `server_timeout`. HTTP/2 pings count as traffic, so the idle timeout alone would keep
        // an unauthenticated connection open for good (see `IdleTimeout::require_auth`).
        io.require_auth(Arc::new(std::sync::atomic::AtomicBool::new(false)), limits.timeout);
        let (acceptor, handshaken, api) = (acceptor.clone(), handshaken.clone(), api.clone());
        let cancel = api_cancel.clone();
        api_connections.spawn(async move {
            let handshake = tokio::select! {
                handshake = tokio::time::timeout(limits.timeout, acceptor.accept(io)) => handshake,
                () = cancel.cancelled() => return,
            };
            match handshake {
                // A client that offers no ALPN gets gRPC, so that gRPC clients that do not use
                // ALPN still work; the CLI always offers `http/1.1`.
                Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() != Some(b"http/1.1") => {
                    // At shutdown the gRPC server stops taking connections from this channel,
                    // so the send could wait forever: give up when `cancel` fires.
                    tokio::select! {
                        _ = handshaken.send(Ok(tls)) => {}
                        () = cancel.cancelled() => {}
                    }
                }
                // The CLI's API. The connection must still carry an authenticated request
                // within `server_timeout`: give the API the connection's flag, which its token
                // check sets.
                Ok(Ok(tls)) => {
                    let api = match tls.get_ref().0.auth_flag() {
                        Some(flag) => api.layer(axum::Extension(crate::http::ConnectionAuth(flag))),
                        None => api,
                    };
                    let serving = crate::http::Serving { header_timeout: limits.timeout, keep_alive: true };
                    crate::http::serve_api_connection(tls, api, serving, cancel).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "a TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "a TLS handshake did not finish within server_timeout"),
            }
        });
    }));
    tasks.spawn(async move {
        let incoming = tokio_stream::wrappers::ReceiverStream::new(incoming);
        let shutdown = async move { until.cancelled().await };
        if let Err(e) = server.add_service(grpc_api).serve_with_incoming_shutdown(incoming, shutdown).await {
            tracing::error!(error = %e, "the gRPC API stopped");
        }
    });
    Ok(())
}

/// The most gRPC streams one connection may carry at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// A connection to `cmd_port` after its TLS handshake, as handed to the gRPC server.
type GrpcConnection = tokio_rustls::server::TlsStream<conn::IdleTimeout<tokio::net::TcpStream>>;

/// Builds a TLS acceptor that serves the IPC certificate file at `path` and offers the ALPN
/// protocols `alpn`, most preferred first.
///
/// `cert` is what the caller has just read from `path`. The acceptor reads the file again when
/// it changes, because a light agent or a follower serves the certificate that its upstream owns
/// and may replace, and the CLI trusts whatever the file holds when it runs.
///
/// # Errors
///
/// Returns an error when `cert` holds no usable certificate and key, or rustls refuses the
/// configuration.
pub(crate) fn tls_acceptor(
    path: &std::path::Path,
    cert: &security::IpcCert,
    alpn: &[&[u8]],
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = CertFile::new(path, cert, provider.clone())?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // No resumption: every CLI call is a new process and every client here opens a fresh
    // channel, so cached sessions and TLS 1.3 tickets would only be memory never used again.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}

/// How often, at most, a handshake checks whether the certificate file changed (one `stat`).
const CERT_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Gives each TLS handshake the IPC certificate from its file, reading the file again when it
/// changes.
///
/// A handshake compares the file's stamp with the last one at most once every
/// [`CERT_CHECK_EVERY`]. A changed file that cannot be used (half written, open to other users,
/// not PEM) is logged, the previous certificate is served, and the file is tried again at the
/// next check. While the file is missing, the previous certificate is served too.
#[derive(Debug)]
struct CertFile {
    path: std::path::PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: std::sync::Mutex<Served>,
}

/// The certificate being served, the stamp of the file it was read from, and when the file was
/// last checked.
#[derive(Debug)]
struct Served {
    stamp: Option<wm_core::FileStamp>,
    checked: Instant,
    key: Arc<rustls::sign::CertifiedKey>,
}

impl CertFile {
    fn new(
        path: &std::path::Path,
        cert: &security::IpcCert,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> anyhow::Result<Self> {
        let stamp = std::fs::metadata(path).ok().map(|m| wm_core::FileStamp::of(&m));
        let key = certified_key(cert, &provider)?;
        let current = std::sync::Mutex::new(Served { stamp, checked: Instant::now(), key });
        Ok(Self { path: path.to_owned(), provider, current })
    }

    /// Returns the certificate to serve, after reading the file again if a check is due and the
    /// file has changed.
    fn refreshed(&self) -> Arc<rustls::sign::CertifiedKey> {
        let mut served = self.current.locked();
        if served.checked.elapsed() < CERT_CHECK_EVERY {
            return served.key.clone();
        }
        served.checked = Instant::now();
        let stamp = std::fs::metadata(&self.path).ok().map(|m| wm_core::FileStamp::of(&m));
        if stamp.is_none() || stamp == served.stamp {
            return served.key.clone();
        }
        let read = security::load_cert(&self.path)
            .map_err(anyhow::Error::from)
            .and_then(|cert| certified_key(&cert, &self.provider));
        match read {
            Ok(key) => {
                tracing::info!(path = %self.path.display(), "the IPC certificate file changed: serving the new one");
                served.key = key;
                served.stamp = stamp;
            }
            Err(error) => tracing::warn!(
                path = %self.path.display(),
                error = %format!("{error:#}"),
                "the IPC certificate file changed and cannot be used: serving the one before"
            ),
        }
        served.key.clone()
    }
}

impl rustls::server::ResolvesServerCert for CertFile {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.refreshed())
    }
}

/// Turns an IPC certificate's PEM text into the certificate chain and signing key that rustls
/// serves.
fn certified_key(
    cert: &security::IpcCert,
    provider: &rustls::crypto::CryptoProvider,
) -> anyhow::Result<Arc<rustls::sign::CertifiedKey>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the IPC certificate")?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).context("the IPC certificate's key")?;
    let key = rustls::sign::CertifiedKey::from_der(chain, key, provider).context("the IPC certificate and its key")?;
    Ok(Arc::new(key))
}

impl RunningAgent {
    /// Spawns `task` among the agent's own, which `stop` cancels (through
    /// [`cancel_token`](Self::cancel_token)) and waits for.
    #[cfg(feature = "cluster-agent")]
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.controls.tasks.spawn(task);
    }

    /// Returns the token `stop` cancels: a server the agent runs ends when it is.
    #[cfg(feature = "cluster-agent")]
    pub(crate) fn cancel_token(&self) -> CancellationToken {
        self.controls.cancel.clone()
    }

    /// Stops the agent, and waits at most 4 s for everything to end.
    ///
    /// Every gRPC stream ends with `UNAVAILABLE`, the servers close, and the store stops its
    /// collectors and its loop, after which the tagger's task ends too. Returns how many tasks,
    /// the agent's and the store's, were still running when it stopped waiting.
    pub async fn stop(self) -> Stopped {
        self.controls.stop(self.store.shutdown(), || self.store.running_tasks()).await
    }
}

/// Runs a full agent until SIGTERM or SIGINT, then stops it, waiting at most 4 s for its tasks.
///
/// # Errors
///
/// Returns the error of [`start`], or of setting up the SIGTERM handler.
pub async fn run(config: &AgentConfig) -> anyhow::Result<()> {
    crate::signals::run_until_signal(start(config), RunningAgent::stop).await
}
