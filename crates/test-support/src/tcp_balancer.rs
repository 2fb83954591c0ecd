//! A TCP balancer of ours that stands in for a Kubernetes Service's address where no kube-proxy
//! runs (the test cluster has none): each new connection goes to the next backend in turn, and
//! to the one after when a backend does not accept, as kube-proxy sends connections to a
//! Service's ready endpoints. Bytes are copied both ways untouched (TLS goes end to end).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};

use crate::runtimes::Unavailable;

/// A running balancer on 127.0.0.1. Dropping it stops accepting; open connections end with
/// their peers.
#[derive(Debug)]
pub struct TcpBalancer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl TcpBalancer {
    /// Listens on a free port of 127.0.0.1 and spreads connections over `backends` (ports of
    /// 127.0.0.1), starting with the first. Needs a tokio runtime.
    ///
    /// # Errors
    ///
    /// No port can be bound.
    pub async fn start(backends: Vec<u16>) -> Result<Self, Unavailable> {
        let listener =
            TcpListener::bind("127.0.0.1:0").await.map_err(|e| Unavailable(format!("balancer: bind: {e}")))?;
        let port = listener.local_addr().map_err(|e| Unavailable(format!("balancer: {e}")))?.port();
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (backends, next) = (backends.clone(), next.clone());
                tokio::spawn(async move {
                    let first = next.fetch_add(1, Ordering::Relaxed);
                    for i in 0..backends.len() {
                        let backend = backends[(first + i) % backends.len()];
                        if let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", backend)).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                            return;
                        }
                    }
                });
            }
        });
        Ok(Self { port, task })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TcpBalancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A backend that answers every connection with its name.
    async fn backend(name: &'static [u8]) -> (u16, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let _ = conn.write_all(name).await;
            }
        });
        (port, task)
    }

    async fn ask(port: u16) -> Vec<u8> {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut out = vec![0; 1];
        conn.read_exact(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn connections_take_turns_and_skip_a_backend_that_is_gone() {
        let (a, a_task) = backend(b"a").await;
        let (b, _b_task) = backend(b"b").await;
        let balancer = TcpBalancer::start(vec![a, b]).await.unwrap();
        assert_eq!([ask(balancer.port()).await, ask(balancer.port()).await], [b"a".to_vec(), b"b".to_vec()]);
        a_task.abort();
        let _ = a_task.await;
        for _ in 0..3 {
            assert_eq!(ask(balancer.port()).await, b"b");
        }
    }
}
