//! A plain HTTP server of ours on 127.0.0.1 serving what a test sets per path (status, body,
//! delay), for metadata endpoints no real peer can provide here (the ECS agent's introspection
//! API, task metadata) or cannot make misbehave on demand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::runtimes::Unavailable;

#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: Vec<u8>,
    delay: Duration,
}

type Routes = Arc<Mutex<HashMap<String, Answer>>>;

/// A running server. Dropping it stops serving.
#[derive(Debug)]
pub struct FakeHttp {
    address: SocketAddr,
    routes: Routes,
    task: tokio::task::JoinHandle<()>,
}

async fn handle(State(routes): State<Routes>, request: Request) -> Response {
    let answer = routes.lock().unwrap_or_else(PoisonError::into_inner).get(request.uri().path()).cloned();
    let Some(answer) = answer else { return (StatusCode::NOT_FOUND, "not found").into_response() };
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], answer.body).into_response()
}

impl FakeHttp {
    /// Starts serving on a free port. Needs a tokio runtime.
    pub async fn start() -> Result<Self, Unavailable> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Unavailable(format!("fake HTTP server: bind: {e}")))?;
        let address = listener.local_addr().map_err(|e| Unavailable(e.to_string()))?;
        let routes: Routes = Arc::new(Mutex::new(HashMap::new()));
        let router = axum::Router::new().fallback(handle).with_state(routes.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self { address, routes, task })
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
        let answer = Answer { status, body: body.into(), delay };
        self.routes.lock().unwrap_or_else(PoisonError::into_inner).insert(path.to_owned(), answer);
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}
