//! Listeners that hold up under load and under attack, shared by the HTTP and gRPC APIs.
//!
//! - Each listener caps its open connections (`ipc_max_connections`, lowered to fit the
//!   file-descriptor limit). Past the cap, a new connection is accepted and closed at once, so
//!   that the kernel's backlog never fills with connections nobody serves.
//! - One peer address (for IPv6, one /64 network) may have at most
//!   `ipc_max_connections_per_peer` connections open, and the last [`reserve`] slots of the cap
//!   go only to peers with fewer than [`LIGHT_PEER`] connections open. A flood from one address,
//!   or from a few, thus cannot take the slots that probes and clients from other addresses
//!   need. What this does not stop: every process on the node connects from 127.0.0.1 and so
//!   shares one peer's limit, and a local process could also bind other 127.x.y.z addresses.
//!   Local processes are trusted that far; the probes' port answers one request per connection,
//!   so no one keeps a connection open by asking again and again.
//! - When accepting fails, the loop waits before it tries again (5 ms, doubling up to 1 s)
//!   instead of spinning. Running out of descriptors, buffers or memory (`EMFILE`, `ENFILE`,
//!   `ENOBUFS`, `ENOMEM`) is logged as a warning once per burst; other errors at debug level.
//! - Every connection is wrapped in an [`IdleTimeout`]: once nothing has been read or written
//!   for its idle time, its pending read or write fails, which closes it. A TLS handshake must
//!   finish within `server_timeout`, and the HTTP servers give each request's headers that long
//!   too.
//! - At start the soft `RLIMIT_NOFILE` is raised to the hard limit ([`raise_fd_limit`]), as Go
//!   does for the Datadog Agent, so that the connection caps bound the agent rather than the
//!   usual default of 1,024 descriptors.

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

/// Descriptors set aside for everything but the API connections: sockets to daemons, files, and
/// the store's own.
const RESERVED_FDS: u64 = 256;

/// A peer with fewer connections open than this may take one of the reserved slots.
pub const LIGHT_PEER: usize = 4;

/// Returns how many slots of a cap of `max` connections are reserved for peers with few
/// connections open (see [`LIGHT_PEER`]): a sixty-fourth of the cap, at least 8, but never more
/// than half the cap.
pub fn reserve(max: usize) -> usize {
    (max / 64).max(8).min(max / 2)
}

/// How a listener bounds its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most connections open at once.
    pub max_connections: usize,
    /// The most connections one peer address (for IPv6, one /64 network) may have open at once.
    pub per_peer: usize,
    /// How long a TLS handshake may take, how long a client has to send a request's headers, and
    /// how long a connection that must authenticate may go without an authenticated request.
    pub timeout: Duration,
    /// How long a connection may go without a byte read or written before it is closed.
    pub idle: Duration,
}

/// The soft and hard `RLIMIT_NOFILE`, before and after [`raise_fd_limit`]; `u64::MAX` stands for
/// no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit found at start.
    pub soft_before: u64,
    /// The soft limit now: the hard limit, unless raising the soft one failed.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

impl FdLimit {
    /// Returns how many connections each of `listeners` listeners may hold: the soft limit, less
    /// the descriptors set aside for everything else, shared equally, and at most `configured`.
    ///
    /// The result is never below 16, even when `configured` or the limit is smaller.
    pub fn connections_per_listener(&self, listeners: u64, configured: usize) -> usize {
        let share = self.soft.saturating_sub(RESERVED_FDS) / listeners.max(1);
        usize::try_from(share).unwrap_or(usize::MAX).clamp(16, configured.max(16))
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, and returns the limits from before and
/// after.
///
/// A failure to raise it is logged, not returned: the agent then runs with the lower limit.
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

/// A connection that fails with `TimedOut` once nothing was read or written for its idle time.
///
/// It also holds the connection's slot in its listener's cap and its count in the per-peer
/// table, and gives both back when dropped.
#[derive(Debug)]
pub struct IdleTimeout<T> {
    inner: T,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    /// When the connection must authenticate: the flag that the API sets on its first
    /// authenticated request, and the deadline for it (see [`IdleTimeout::require_auth`]).
    auth: Option<(Arc<AtomicBool>, Instant)>,
    /// The connection's slot in the listener's cap and its count in the per-peer table.
    _slot: Slot,
}

/// An open connection's slot in its listener's cap and its count in the per-peer table;
/// dropping it gives both back.
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

/// The number of open connections of each peer address (for IPv6, of each /64 network).
///
/// An entry exists only while its peer has a connection open, so the table never has more
/// entries than the listener's cap.
#[derive(Clone, Debug, Default)]
struct Peers(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl Peers {
    /// Returns the address under which the connections of `peer` are counted: an IPv4 address
    /// as it is (an IPv4-mapped IPv6 address as its IPv4 one), an IPv6 address as its /64
    /// network, because a single host is often given a whole /64 and may use any address in it.
    fn key(peer: IpAddr) -> IpAddr {
        match peer.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
            v4 => v4,
        }
    }

    /// Returns how many connections `ip` has open.
    fn count(&self, ip: IpAddr) -> usize {
        self.0.locked().get(&ip).copied().unwrap_or(0)
    }

    /// Counts one more open connection of `ip`.
    fn take(&self, ip: IpAddr) {
        *self.0.locked().entry(ip).or_insert(0) += 1;
    }

    /// Counts one open connection of `ip` fewer, removing its entry at zero.
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
    /// Wraps `inner`, which then fails after `idle` without traffic, and holds `slot` while open.
    fn new(inner: T, idle: Duration, slot: Slot) -> Self {
        Self { inner, idle, deadline: Box::pin(tokio::time::sleep(idle)), auth: None, _slot: slot }
    }

    /// Requires an authenticated request within `within` from now: after that, the first read or
    /// write that completes while `authenticated` is still unset fails with `TimedOut`.
    ///
    /// The gRPC API's HTTP/2 pings count as traffic, so the idle timeout alone would keep a
    /// connection that never sends an authenticated request open for good; this bounds it.
    pub fn require_auth(&mut self, authenticated: Arc<AtomicBool>, within: Duration) {
        self.auth = Some((authenticated, Instant::now() + within));
    }

    /// Returns the flag that [`IdleTimeout::require_auth`] watches, if it was called.
    pub fn auth_flag(&self) -> Option<Arc<AtomicBool>> {
        self.auth.as_ref().map(|(flag, _)| flag.clone())
    }

    /// Tells whether the deadline to authenticate has passed with no authenticated request.
    fn unauthenticated_too_long(&self) -> bool {
        self.auth.as_ref().is_some_and(|(flag, until)| !flag.load(Ordering::Relaxed) && Instant::now() >= *until)
    }

    /// Returns the wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Restarts the idle timer after a read or write completed, or fails when the deadline to
    /// authenticate has passed without an authenticated request.
    fn touch(&mut self) -> io::Result<()> {
        if self.unauthenticated_too_long() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no authenticated request within server_timeout"));
        }
        self.deadline.as_mut().reset(Instant::now() + self.idle);
        Ok(())
    }

    /// Called while the inner read or write is pending: returns `TimedOut` once the idle time has
    /// passed, and otherwise arranges for the task to be woken when it does.
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
            // A client that stops reading stalls our writes; the idle timer closes such a
            // connection too.
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

/// What a gRPC request can learn about its connection: the TCP addresses, and the flag to set
/// once a request on it is authenticated (see [`IdleTimeout::require_auth`]).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The TCP connection's local and remote addresses.
    pub tcp: tonic::transport::server::TcpConnectInfo,
    /// The flag that the bearer-token check sets, when the connection must authenticate.
    pub authenticated: Option<Arc<AtomicBool>>,
}

impl tonic::transport::server::Connected for IdleTimeout<TcpStream> {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        PeerInfo { tcp: self.inner.connect_info(), authenticated: self.auth_flag() }
    }
}

/// Tells whether an accept error means that the process or the system ran out of something that
/// comes back with time: descriptors, buffers or memory.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
    )
}

/// Accepts connections on `listener` until `cancel` is cancelled, and hands each one, wrapped in
/// an [`IdleTimeout`], to `serve` with its peer's address.
///
/// A connection beyond the caps of `limits` is closed at once (see the module docs). `name`
/// identifies the listener in the logs.
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
                // A peer under its own limit takes a general slot; when none is left, a peer
                // with fewer than LIGHT_PEER connections open may take a reserved one.
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
                        // Close it at once: the peer learns now that it was refused, and the
                        // kernel's backlog stays free.
                        drop(tcp);
                        // Warn at the first refusal and then once every 1,000, so that a flood of
                        // connections does not flood the log too.
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
