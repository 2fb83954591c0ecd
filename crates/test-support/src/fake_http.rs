//! A plain HTTP server of ours on 127.0.0.1 serving what a test sets per path (status, body,
//! delay), for metadata endpoints no real peer can provide here (the ECS agent's introspection
//! API, task metadata) or cannot make misbehave on demand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use wm_core::sync::MutexExt;

use crate::runtimes::Unavailable;

#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: Body,
    delay: Duration,
}

/// What an answer's body is: bytes, or this many bytes of filler made as they are sent (a body
/// far larger than the memory a test may take).
#[derive(Debug, Clone)]
enum Body {
    Bytes(Vec<u8>),
    Filler(u64),
}

#[derive(Debug, Default)]
struct Server {
    routes: HashMap<String, Answer>,
    /// Every request's path, in order.
    requests: Vec<String>,
}

type Shared = Arc<Mutex<Server>>;

/// A running server. Dropping it stops serving.
#[derive(Debug)]
pub struct FakeHttp {
    address: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

/// `len` bytes of JSON-looking filler (`[` then spaces), in 64 KiB chunks made on demand.
fn filler(len: u64) -> axum::body::Body {
    const CHUNK: usize = 64 << 10;
    let stream = futures::stream::unfold(0u64, move |sent| async move {
        (sent < len).then(|| {
            let n = (len - sent).min(CHUNK as u64) as usize;
            let mut chunk = vec![b' '; n];
            if sent == 0 {
                chunk[0] = b'[';
            }
            (Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(chunk)), sent + n as u64)
        })
    });
    axum::body::Body::from_stream(stream)
}

async fn handle(State(shared): State<Shared>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let answer = {
        let mut server = shared.locked();
        server.requests.push(path.clone());
        server.routes.get(&path).cloned()
    };
    let Some(answer) = answer else { return (StatusCode::NOT_FOUND, "not found").into_response() };
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match answer.body {
        Body::Bytes(bytes) => axum::body::Body::from(bytes),
        Body::Filler(len) => filler(len),
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

impl FakeHttp {
    /// Starts serving on a free port. Needs a tokio runtime.
    pub async fn start() -> Result<Self, Unavailable> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Unavailable(format!("fake HTTP server: bind: {e}")))?;
        let address = listener.local_addr().map_err(|e| Unavailable(e.to_string()))?;
        let shared: Shared = Arc::default();
        let router = axum::Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self { address, shared, task })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Serves `body` with 200 at `path` from now on.
    pub fn set(&self, path: &str, body: impl Into<Vec<u8>>) {
        self.set_answer(path, 200, body, Duration::ZERO);
    }

    /// Serves `status` and `body` at `path`, after `delay`, from now on.
    pub fn set_answer(&self, path: &str, status: u16, body: impl Into<Vec<u8>>, delay: Duration) {
        self.put(path, Answer { status, body: Body::Bytes(body.into()), delay });
    }

    /// Serves `len` bytes of filler with 200 at `path` from now on, made as they are sent.
    pub fn set_huge(&self, path: &str, len: u64) {
        self.put(path, Answer { status: 200, body: Body::Filler(len), delay: Duration::ZERO });
    }

    fn put(&self, path: &str, answer: Answer) {
        self.shared.locked().routes.insert(path.to_owned(), answer);
    }

    /// The paths of every request received so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.shared.locked().requests.clone()
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}
