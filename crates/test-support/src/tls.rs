//! HTTPS for servers of ours: a CA of our own, a serving certificate for 127.0.0.1 and
//! localhost, and an accept loop serving a router over TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

use crate::kubernetes::pki::Pki;
use crate::runtimes::Unavailable;

/// A TLS server's acceptor, with the CA its certificate chains to.
pub(crate) struct ServerTls {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    pub(crate) ca: PathBuf,
}

/// A new CA in `dir` and a serving certificate `name` for 127.0.0.1 and localhost.
pub(crate) fn server_tls(dir: &Path, name: &str) -> Result<ServerTls, Unavailable> {
    let pki = Pki::new(dir)?;
    let serving = pki.issue(name, name, &[], &["localhost", "127.0.0.1"], true, false)?;
    let read = |path: &Path| std::fs::read(path).map_err(|e| Unavailable(format!("{}: {e}", path.display())));
    let cert = CertificateDer::from_pem_slice(&read(&serving.cert)?)
        .map_err(|e| Unavailable(format!("{name} certificate: {e}")))?;
    let key =
        PrivateKeyDer::from_pem_slice(&read(&serving.key)?).map_err(|e| Unavailable(format!("{name} key: {e}")))?;
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(vec![cert], key))
        .map_err(|e| Unavailable(format!("{name} TLS: {e}")))?;
    Ok(ServerTls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)), ca: pki.ca.clone() })
}

/// Where a server of ours is handed a new acceptor (a rotated certificate).
pub(crate) struct Rotation(pub(crate) tokio::sync::watch::Sender<tokio_rustls::TlsAcceptor>);

impl std::fmt::Debug for Rotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rotation")
    }
}

/// Serves `router` over TLS on `listener` until the task is aborted. A new acceptor sent on
/// `acceptors` (a rotated certificate) serves the connections made after it, and every open
/// connection is closed, so a client has to verify the new certificate.
pub(crate) fn spawn_https(
    listener: TcpListener,
    acceptors: tokio::sync::watch::Receiver<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Connections end with the server.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let mut rotated = acceptors.clone();
            let (acceptor, router) = (rotated.borrow_and_update().clone(), router.clone());
            while connections.try_join_next().is_some() {}
            connections.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = TowerToHyperService::new(router);
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let serve = builder.serve_connection(TokioIo::new(tls), service);
                // A dropped sender (no rotation ever) disables the second branch.
                tokio::select! {
                    _ = serve => {}
                    Ok(()) = rotated.changed() => {}
                }
            });
        }
    })
}
