//! Listeners that hold up under load and under attack, shared by the HTTP and gRPC APIs.
//!
//! - Each listener has a cap on open connections (`ipc_max_connections`, lowered to fit the
//!   file-descriptor limit): past it, a new connection is accepted and closed at once, so the
//!   kernel's backlog never fills with connections nobody serves.
//! - An accept error (out of descriptors: `EMFILE`, `ENFILE`) is backed off (5 ms doubling to
//!   1 s) and logged once per burst, never spun on.
//! - Every connection is wrapped in [`IdleTimeout`]: no byte read or written for its idle time
//!   and it fails, which closes it. The TLS handshake of the gRPC API has `server_timeout` to
//!   finish; the HTTP API bounds each request's headers with it too.
//! - At start the soft `RLIMIT_NOFILE` is raised to the hard one ([`raise_fd_limit`]), as Go
//!   does for the Datadog Agent, so the caps are what bounds the agent, not the default 1,024.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use wm_core::CancellationToken;

/// Descriptors kept for everything but the two listeners' connections (sockets to daemons,
/// files, the store's own).
const RESERVED_FDS: u64 = 256;

/// How a listener bounds its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// TLS handshake and request-header time, and idle time of an HTTP connection.
    pub timeout: Duration,
    /// Idle time (no byte either way) after which a connection is closed.
    pub idle: Duration,
}

/// The soft and hard `RLIMIT_NOFILE` before and after [`raise_fd_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit found at start.
    pub soft_before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

impl FdLimit {
    /// The connections one of `listeners` listeners may hold: what the soft limit leaves after
    /// the reserve, shared, at most `configured`.
    pub fn connections_per_listener(&self, listeners: u64, configured: usize) -> usize {
        let share = self.soft.saturating_sub(RESERVED_FDS) / listeners.max(1);
        usize::try_from(share).unwrap_or(usize::MAX).clamp(16, configured.max(16))
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and says what it was and is.
pub fn raise_fd_limit() -> FdLimit {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (limit.current.unwrap_or(u64::MAX), limit.maximum.unwrap_or(u64::MAX));
    let mut result = FdLimit { soft_before: soft, soft, hard };
    if soft < hard {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => result.soft = hard,
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the file-descriptor limit"),
        }
    }
    tracing::info!(soft_before = result.soft_before, soft = result.soft, hard = result.hard, "file-descriptor limit");
    result
}

/// A connection that fails with `TimedOut` once nothing was read or written for its idle time,
/// and that holds its listener's connection permit while open.
#[derive(Debug)]
pub struct IdleTimeout<T> {
    inner: T,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl<T> IdleTimeout<T> {
    fn new(inner: T, idle: Duration, permit: OwnedSemaphorePermit) -> Self {
        Self { inner, idle, deadline: Box::pin(tokio::time::sleep(idle)), _permit: permit }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn touch(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// When the inner call is pending: `TimedOut` once the idle time has passed.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        ready!(self.deadline.as_mut().poll(cx));
        Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "the connection was idle too long"))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.touch();
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(result) => {
                this.touch();
                Poll::Ready(result)
            }
            // A client that stops reading stalls our writes: closed after the idle time too.
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                this.touch();
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for IdleTimeout<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Whether an accept error means the process (or the system) ran out of something that comes
/// back: descriptors, buffers, memory.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}

/// Accepts connections on `listener` until `cancel`, handing each (wrapped, with its peer) to
/// `serve`, within `limits`. `name` says which listener in the logs.
pub async fn accept_loop(
    name: &'static str,
    listener: TcpListener,
    limits: Limits,
    cancel: CancellationToken,
    mut serve: impl FnMut(IdleTimeout<TcpStream>, SocketAddr),
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = Duration::from_millis(5);
    let mut exhausted = false;
    let mut refused_since_log = 0u64;
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff = Duration::from_millis(5);
                if exhausted {
                    tracing::info!(listener = name, "accepting connections again");
                    exhausted = false;
                }
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let _ = tcp.set_nodelay(true);
                        serve(IdleTimeout::new(tcp, limits.idle, permit), peer);
                    }
                    Err(_) => {
                        // Closed at once: the peer learns now, and the backlog stays free.
                        drop(tcp);
                        if refused_since_log == 0 {
                            tracing::warn!(
                                listener = name,
                                max = limits.max_connections,
                                "connection cap reached; closing new connections until some end"
                            );
                        }
                        refused_since_log = (refused_since_log + 1) % 1000;
                    }
                }
            }
            Err(e) => {
                if is_resource_exhaustion(&e) {
                    if !exhausted {
                        tracing::warn!(listener = name, error = %e, "cannot accept: out of resources; backing off");
                        exhausted = true;
                    }
                } else {
                    tracing::debug!(listener = name, error = %e, "accept failed");
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn the_cap_fits_the_descriptor_limit() {
        let limit = FdLimit { soft_before: 1024, soft: 1024, hard: 1024 };
        assert_eq!(limit.connections_per_listener(2, 4096), 384);
        let raised = FdLimit { soft_before: 1024, soft: 1 << 20, hard: 1 << 20 };
        assert_eq!(raised.connections_per_listener(2, 4096), 4096);
        let tiny = FdLimit { soft_before: 64, soft: 64, hard: 64 };
        assert_eq!(tiny.connections_per_listener(2, 4096), 16);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_fails_after_its_idle_time_and_traffic_keeps_it_open() {
        let (client, server) = tokio::io::duplex(64);
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let mut server = IdleTimeout::new(server, Duration::from_secs(10), permit);
        let mut client = client;
        let mut buf = [0u8; 4];
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(8)).await;
            client.write_all(b"ping").await.unwrap();
            server.read_exact(&mut buf).await.unwrap();
        }
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn past_the_cap_a_connection_is_closed_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let limits = Limits { max_connections: 2, timeout: Duration::from_secs(5), idle: Duration::from_secs(60) };
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = held.clone();
        let task = tokio::spawn(accept_loop("test", listener, limits, cancel.clone(), move |io, _| {
            keep.lock().unwrap().push(io);
        }));
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(address).await.unwrap());
        }
        let mut buf = [0u8; 1];
        // The third was closed at once: it reads end-of-file.
        let n = tokio::time::timeout(Duration::from_secs(5), clients[2].read(&mut buf)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(held.lock().unwrap().len(), 2);
        // One closes: room for a new one.
        held.lock().unwrap().remove(0);
        let _fourth = TcpStream::connect(address).await.unwrap();
        for _ in 0..100 {
            if held.lock().unwrap().len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(held.lock().unwrap().len(), 2);
        cancel.cancel();
        task.await.unwrap();
    }
}
