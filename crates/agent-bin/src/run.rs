//! `agent run`: the store with the collectors of this build and config, the tagger, the gRPC
//! API and the CLI's API (both TLS with a bearer token, on `cmd_port`) and the probes' plain
//! HTTP port, until SIGTERM or SIGINT. In a `flavor-light` build, `agent run` runs
//! [`crate::light`] instead.
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
pub use crate::signals::Stopped;

/// How long a lookup of an unknown container waits for the runtimes' answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// Where the probes listen (plain HTTP).
    pub http_address: SocketAddr,
    /// Where the CLI's TLS API listens: the gRPC address, or `api_port` for an agent that
    /// follows another one.
    pub api_address: SocketAddr,
    token: Arc<str>,
    cert_pem: Arc<str>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl RunningAgent {
    /// Its TLS API as the CLI reaches it: the port, the token and the certificate to trust.
    pub fn api(&self) -> crate::cli::Api {
        crate::cli::Api::tls(self.api_address.port(), Some(self.token.to_string()), self.cert_pem.to_string())
    }
}

/// The port the CLI asks for the API of the agent `config` describes: `cmd_port` where that
/// agent serves gRPC, `api_port` where it has no gRPC server of its own (a `flavor-light`
/// build, or an agent that follows another one).
pub fn api_port(config: &AgentConfig) -> u16 {
    let follows_another = collectors::catalog(config).is_ok_and(|c| c == Catalog::Remote);
    if cfg!(feature = "flavor-light") || follows_another {
        config.ipc.api_port.get()
    } else {
        config.ipc.cmd_port.get()
    }
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

/// The connection limits of the two API ports, from the config and the descriptor limit
/// (raised to the hard one first).
pub(crate) fn connection_limits(config: &AgentConfig) -> (Limits, Limits) {
    let fds = conn::raise_fd_limit();
    let max_connections = fds.connections_per_listener(2, config.ipc.ipc_max_connections);
    let timeout = config.ipc.server_timeout.duration().max(Duration::from_secs(1));
    let per_peer = config.ipc.ipc_max_connections_per_peer.max(1);
    let http = Limits { max_connections, per_peer, timeout, idle: timeout };
    // A gRPC stream may be quiet for minutes; HTTP/2 pings (every 30 s) are its traffic.
    let grpc = Limits { max_connections, per_peer, timeout, idle: timeout.max(GRPC_IDLE) };
    tracing::info!(max_connections, per_peer, ?timeout, "API connection limits (per port)");
    (http, grpc)
}

/// How long a gRPC connection may carry nothing at all (not even a ping) before it is closed.
const GRPC_IDLE: Duration = Duration::from_secs(120);

/// Says what becomes reachable when an API listens beyond loopback.
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

/// Starts the agent with `collectors` instead of the config's (tests run none, or their own).
pub async fn start_with(config: &AgentConfig, collectors: Vec<Collector>) -> anyhow::Result<RunningAgent> {
    let follows_another = collectors::catalog(config)? == Catalog::Remote;
    warn_if_exposed(config);
    let (http_limits, grpc_limits) = connection_limits(config);
    let token: Arc<str> = Arc::from(security::load_or_create_token(&config.auth_token_path())?);
    let http_listener =
        listen(&config.ipc.health_host, config.ipc.health_port.get(), "health_host/health_port").await?;
    let http_address = http_listener.local_addr()?;
    let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());

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
        // It ends when the store's stream does, at shutdown.
        let _ = tagger_task.await;
    });
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
    // An agent that follows another one (the remote catalog) serves no gRPC: its upstream does.
    let (grpc_address, api_address) = if follows_another {
        tracing::info!(
            upstream = %format!("{}:{}", config.ipc.cmd_host, config.ipc.cmd_port),
            "following another agent (process_config.remote_workloadmeta): no gRPC API of its own"
        );
        // On loopback, where the CLI asks: cmd_host names the upstream here.
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
    Ok(RunningAgent { store, tagger, grpc_address, http_address, api_address, token, cert_pem, cancel, tasks })
}

/// What the `cmd_port` server is made of.
struct Grpc<'a> {
    listener: TcpListener,
    cert: &'a security::IpcCert,
    token: &'a str,
    limits: Limits,
    /// The CLI's API, for connections that negotiate HTTP/1.1.
    api: axum::Router,
}

/// Serves `cmd_host:cmd_port`: our accept loop (connection caps, idle timeout), the TLS
/// handshake within `server_timeout`, then by ALPN either `AgentSecure` (`h2` or none: bearer auth, a
/// connection with no authenticated request within `server_timeout` closed, at most 100
/// streams per connection, HTTP/2 pings every 30 s) or the CLI's API (`http/1.1`).
fn serve_grpc(
    config: &AgentConfig,
    grpc: Grpc<'_>,
    store: &Store,
    tagger: &Arc<Tagger>,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<()> {
    let Grpc { listener, cert, token, limits, api } = grpc;
    // HTTP/1.1 first: a client offering both (curl) means the CLI's API; gRPC clients offer h2
    // alone.
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
        // An authenticated request within server_timeout, or the connection is closed: HTTP/2
        // pings alone do not keep it (conn.rs).
        io.require_auth(Arc::new(std::sync::atomic::AtomicBool::new(false)), limits.timeout);
        let (acceptor, handshaken, api) = (acceptor.clone(), handshaken.clone(), api.clone());
        let cancel = api_cancel.clone();
        api_connections.spawn(async move {
            let handshake = tokio::select! {
                handshake = tokio::time::timeout(limits.timeout, acceptor.accept(io)) => handshake,
                () = cancel.cancelled() => return,
            };
            match handshake {
                // A client that offers no ALPN is taken for gRPC, as before the CLI's API came
                // here; the CLI offers `http/1.1`.
                Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() != Some(b"http/1.1") => {
                    // The server stops taking connections at shutdown: do not wait for it then.
                    tokio::select! {
                        _ = handshaken.send(Ok(tls)) => {}
                        () = cancel.cancelled() => {}
                    }
                }
                // The CLI's API: the connection must still carry an authenticated request
                // within server_timeout, which its token check marks.
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

/// Streams one gRPC connection may carry at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// A gRPC connection after its TLS handshake.
type GrpcConnection = tokio_rustls::server::TlsStream<conn::IdleTimeout<tokio::net::TcpStream>>;

/// The TLS acceptor of the IPC certificate in `path` (read now as `cert`), offering `alpn` (in
/// order of preference). The file is read again when it changes: a light agent or a follower
/// serves the certificate its upstream owns, and the CLI trusts whatever the file holds now.
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
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}

/// How often a handshake may look at the certificate file (one `stat`).
const CERT_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The IPC certificate served from its file, read again when the file's stamp changes (looked
/// at, at most once a [`CERT_CHECK_EVERY`], by the next handshake). A new file that cannot be
/// used (half written, readable by others, not PEM) is logged and the one before is served.
#[derive(Debug)]
struct CertFile {
    path: std::path::PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: std::sync::Mutex<Served>,
}

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

    /// Reads the file again when it changed since the last look; returns what to serve.
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

/// The certificate chain and signing key of an IPC certificate.
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
