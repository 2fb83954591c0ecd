//! Listeners that hold up under load and under attack, shared by the HTTP and gRPC APIs.
//!
//! - Each listener has a cap on open connections (`ipc_max_connections`, lowered to fit the
//!   file-descriptor limit): past it, a new connection is accepted and closed at once, so the
//!   kernel's backlog never fills with connections nobody serves.
//! - One peer address (an IPv6 peer: its /64) holds at most `ipc_max_connections_per_peer`
//!   of them, and the last [`reserve`] slots of the cap go only to peers holding fewer than
//!   [`LIGHT_PEER`] connections: a flood from one network address, or from a few, cannot take
//!   the slots that probes and clients from other addresses need. What this does not stop: every
//!   process on the node connects from 127.0.0.1 and so shares one peer's share, and a local
//!   process could also bind other 127.x.y.z addresses; local processes are trusted that far
//!   (the probes' port answers one request per connection, so none is held by asking).
//! - An accept error (out of descriptors: `EMFILE`, `ENFILE`) is backed off (5 ms doubling to
//!   1 s) and logged once per burst, never spun on.
//! - Every connection is wrapped in [`IdleTimeout`]: no byte read or written for its idle time
//!   and it fails, which closes it. The TLS handshake of the gRPC API has `server_timeout` to
//!   finish; the HTTP API bounds each request's headers with it too.
//! - At start the soft `RLIMIT_NOFILE` is raised to the hard one ([`raise_fd_limit`]), as Go
//!   does for the Datadog Agent, so the caps are what bounds the agent, not the default 1,024.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use wm_core::CancellationToken;
use wm_core::sync::MutexExt;

/// Descriptors kept for everything but the two listeners' connections (sockets to daemons,
/// files, the store's own).
const RESERVED_FDS: u64 = 256;

/// A peer holding fewer connections than this may take the reserved slots.
pub const LIGHT_PEER: usize = 4;

/// The slots of a cap of `max` kept for light peers: a sixty-fourth, at least 8 (never more
/// than half the cap).
pub fn reserve(max: usize) -> usize {
    (max / 64).max(8).min(max / 2)
}

/// How a listener bounds its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Open connections of one peer address at most.
    pub per_peer: usize,
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
    /// Until the connection carries an authenticated request: the flag the API sets, and how
    /// long traffic may go on without one (see [`IdleTimeout::require_auth`]).
    auth: Option<(Arc<AtomicBool>, Instant)>,
    _slot: Slot,
}

/// What an open connection holds: its permit of the listener's cap, and its count in the
/// peer table.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    peer: Option<(Peers, IpAddr)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((peers, ip)) = self.peer.take() {
            peers.release(ip);
        }
    }
}

/// Open connections by peer address (IPv6: by /64). An entry exists only while its peer has
/// a connection open, so the table is bounded by the listener's cap.
#[derive(Clone, Debug, Default)]
struct Peers(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl Peers {
    /// The address connections of `peer` count under.
    fn key(peer: IpAddr) -> IpAddr {
        match peer.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
            v4 => v4,
        }
    }

    fn count(&self, ip: IpAddr) -> usize {
        self.0.locked().get(&ip).copied().unwrap_or(0)
    }

    fn take(&self, ip: IpAddr) {
        *self.0.locked().entry(ip).or_insert(0) += 1;
    }

    fn release(&self, ip: IpAddr) {
        let mut peers = self.0.locked();
        if let Some(n) = peers.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&ip);
            }
        }
    }
}

impl<T> IdleTimeout<T> {
    fn new(inner: T, idle: Duration, slot: Slot) -> Self {
        Self { inner, idle, deadline: Box::pin(tokio::time::sleep(idle)), auth: None, _slot: slot }
    }

    /// Fails the connection on its first read or write past `within` from now unless
    /// `authenticated` was set by then.
    ///
    /// The gRPC API's HTTP/2 pings are traffic, so the idle time alone would keep a connection
    /// that never sends an authenticated request open for good; this bounds it.
    pub fn require_auth(&mut self, authenticated: Arc<AtomicBool>, within: Duration) {
        self.auth = Some((authenticated, Instant::now() + within));
    }

    /// The flag [`IdleTimeout::require_auth`] watches, if any.
    pub fn auth_flag(&self) -> Option<Arc<AtomicBool>> {
        self.auth.as_ref().map(|(flag, _)| flag.clone())
    }

    /// Whether the connection is past its time to authenticate.
    fn unauthenticated_too_long(&self) -> bool {
        self.auth.as_ref().is_some_and(|(flag, until)| !flag.load(Ordering::Relaxed) && Instant::now() >= *until)
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn touch(&mut self) -> io::Result<()> {
        if self.unauthenticated_too_long() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no authenticated request within server_timeout"));
        }
        self.deadline.as_mut().reset(Instant::now() + self.idle);
        Ok(())
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
            Poll::Ready(result) => Poll::Ready(this.touch().and(result)),
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(result) => Poll::Ready(this.touch().and(result)),
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
            Poll::Ready(result) => Poll::Ready(this.touch().and(result)),
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What a gRPC request knows of its connection: the TCP peer, and the flag to set once a
/// request on it is authenticated (see [`IdleTimeout::require_auth`]).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The TCP connection's addresses.
    pub tcp: tonic::transport::server::TcpConnectInfo,
    /// Set by the bearer-token check.
    pub authenticated: Option<Arc<AtomicBool>>,
}

impl tonic::transport::server::Connected for IdleTimeout<TcpStream> {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        PeerInfo { tcp: self.inner.connect_info(), authenticated: self.auth_flag() }
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
    let reserved = reserve(limits.max_connections);
    let general = Arc::new(Semaphore::new(limits.max_connections - reserved));
    let light = Arc::new(Semaphore::new(reserved));
    let peers = Peers::default();
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
                let ip = Peers::key(peer.ip());
                let held = peers.count(ip);
                let permit = if held >= limits.per_peer.max(1) {
                    None
                } else {
                    general
                        .clone()
                        .try_acquire_owned()
                        .ok()
                        .or_else(|| (held < LIGHT_PEER).then(|| light.clone().try_acquire_owned().ok()).flatten())
                };
                match permit {
                    Some(permit) => {
                        let _ = tcp.set_nodelay(true);
                        peers.take(ip);
                        let slot = Slot { _permit: permit, peer: Some((peers.clone(), ip)) };
                        serve(IdleTimeout::new(tcp, limits.idle, slot), peer);
                    }
                    None => {
                        // Closed at once: the peer learns now, and the backlog stays free.
                        drop(tcp);
                        if refused_since_log == 0 {
                            tracing::warn!(
                                listener = name,
                                max = limits.max_connections,
                                per_peer = limits.per_peer,
                                %ip,
                                held,
                                "connection cap reached (for all, or for this peer); closing new connections until some end"
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
        let mut server = IdleTimeout::new(server, Duration::from_secs(10), Slot { _permit: permit, peer: None });
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

    #[tokio::test(start_paused = true)]
    async fn traffic_does_not_keep_a_connection_that_never_authenticates() {
        let (mut client, server) = tokio::io::duplex(64);
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let mut server = IdleTimeout::new(server, Duration::from_secs(10), Slot { _permit: permit, peer: None });
        let flag = Arc::new(AtomicBool::new(false));
        server.require_auth(flag.clone(), Duration::from_secs(3));
        let mut buf = [0u8; 4];
        // Pings within the idle time, but no authenticated request: closed once 3 s passed.
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            client.write_all(b"ping").await.unwrap();
            server.read_exact(&mut buf).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        client.write_all(b"ping").await.unwrap();
        assert_eq!(server.read_exact(&mut buf).await.unwrap_err().kind(), io::ErrorKind::TimedOut);

        // Authenticated in time: traffic keeps it open past the deadline.
        let (mut client, server) = tokio::io::duplex(64);
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let mut server = IdleTimeout::new(server, Duration::from_secs(10), Slot { _permit: permit, peer: None });
        let flag = Arc::new(AtomicBool::new(false));
        server.require_auth(flag.clone(), Duration::from_secs(3));
        flag.store(true, Ordering::Relaxed);
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            client.write_all(b"ping").await.unwrap();
            server.read_exact(&mut buf).await.unwrap();
        }
    }

    #[tokio::test]
    async fn one_peer_holds_at_most_its_share_and_light_peers_keep_the_reserve() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cancel = CancellationToken::new();
        // A cap of 24: 16 general slots and 8 reserved; 12 per peer.
        let limits = Limits {
            max_connections: 24,
            per_peer: 12,
            timeout: Duration::from_secs(5),
            idle: Duration::from_secs(60),
        };
        assert_eq!(reserve(24), 8);
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = held.clone();
        let task = tokio::spawn(accept_loop("test", listener, limits, cancel.clone(), move |io, _| {
            keep.lock().unwrap().push(io);
        }));
        let from = |source: [u8; 4]| async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::from((source, 0))).unwrap();
            socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap()
        };
        let open = |held: &Arc<std::sync::Mutex<Vec<IdleTimeout<TcpStream>>>>| held.lock().unwrap().len();
        let settle = || tokio::time::sleep(Duration::from_millis(100));
        // One peer: 12 kept, the rest closed at once.
        let mut flood = Vec::new();
        for _ in 0..20 {
            flood.push(from([127, 0, 0, 2]).await);
        }
        settle().await;
        assert_eq!(open(&held), 12);
        // A second heavy peer takes the 4 general slots left, and not the reserve.
        for _ in 0..12 {
            flood.push(from([127, 0, 0, 3]).await);
        }
        settle().await;
        assert_eq!(open(&held), 16);
        // A probe from a light peer still gets in, through the reserve.
        let _probe = from([127, 0, 0, 1]).await;
        settle().await;
        assert_eq!(open(&held), 17);
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn past_the_cap_a_connection_is_closed_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let limits =
            Limits { max_connections: 2, per_peer: 16, timeout: Duration::from_secs(5), idle: Duration::from_secs(60) };
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
        let two_held = || held.lock().unwrap().len() == 2;
        test_support::watch::eventually("the new connection held", Duration::from_secs(1), two_held).await;
        cancel.cancel();
        task.await.unwrap();
    }
}
