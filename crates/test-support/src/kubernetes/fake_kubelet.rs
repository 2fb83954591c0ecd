//! A kubelet of ours, for what the real one cannot do on demand: it serves `GET /pods` over HTTPS
//! with a certificate from our CA, answers only a bearer token it was given (401 otherwise, as
//! the kubelet's webhook authentication does), and serves whatever bytes the test sets: the real
//! captures of `testdata/fixtures/kubelet`, a list that changes over time, odd JSON.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use wm_core::sync::MutexExt;

use crate::runtimes::Unavailable;

#[derive(Debug)]
struct Shared {
    token: Mutex<String>,
    body: Mutex<Vec<u8>>,
    served: AtomicUsize,
    refused: AtomicUsize,
}

/// A running fake kubelet. Dropping it stops serving.
#[derive(Debug)]
pub struct FakeKubelet {
    address: SocketAddr,
    ca: PathBuf,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

async fn pods(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> impl IntoResponse {
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let accepted = shared.token.locked().clone();
    if bearer != Some(accepted.as_str()) {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    shared.served.fetch_add(1, Ordering::Relaxed);
    let body = shared.body.locked().clone();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

impl FakeKubelet {
    /// Starts serving `body` on 127.0.0.1 (a free port) to bearer `token`, with a CA and a
    /// serving certificate written in `dir`. Needs a tokio runtime.
    pub async fn start(dir: &Path, token: &str, body: Vec<u8>) -> Result<Self, Unavailable> {
        let tls = crate::tls::server_tls(dir, "fake-kubelet")?;
        let listener =
            TcpListener::bind("127.0.0.1:0").await.map_err(|e| Unavailable(format!("fake kubelet: bind: {e}")))?;
        let address = listener.local_addr().map_err(|e| Unavailable(e.to_string()))?;
        let shared = Arc::new(Shared {
            token: Mutex::new(token.to_owned()),
            body: Mutex::new(body),
            served: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        });
        let router = axum::Router::new().route("/pods", get(pods)).with_state(shared.clone());
        let task = crate::tls::spawn_https(listener, tokio::sync::watch::channel(tls.acceptor).1, router);
        Ok(Self { address, ca: tls.ca, shared, task })
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// The CA its serving certificate chains to.
    pub fn ca_cert(&self) -> &Path {
        &self.ca
    }

    /// Serves `body` from now on.
    pub fn set_body(&self, body: Vec<u8>) {
        *self.shared.body.locked() = body;
    }

    /// Accepts only `token` from now on (a rotation: the old one is refused).
    pub fn set_token(&self, token: &str) {
        *self.shared.token.locked() = token.to_owned();
    }

    /// Requests answered with the pod list.
    pub fn served(&self) -> usize {
        self.shared.served.load(Ordering::Relaxed)
    }

    /// Requests refused (401).
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::Relaxed)
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}
