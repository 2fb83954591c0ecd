//! The agent binary's API as a hostile local user, a browser on the node and a connection flood
//! meet it: every route but the probes refuses a request without the token (401), with a
//! foreign `Host` (421) or from another machine when the port is opened for kubelet probes
//! (403); the CLI still works (it reads the token file); a token file others may read stops the
//! agent with the fix; 3,000 idle connections against an agent started under a 1,024 soft
//! descriptor limit leave `/ready` answering, and the timeouts close them all.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wm_core::sync::MutexExt;

fn free_port() -> u16 {
    test_support::runtimes::free_port().unwrap()
}

/// Held by each test for its whole run: the flood tests open thousands of client sockets,
/// whose ephemeral ports could take a port another test's agent was about to listen on.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.locked()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wm-api-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Agent {
    child: Child,
    config: PathBuf,
    http: u16,
    grpc: u16,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, extra: &str) -> (PathBuf, u16, u16) {
    let (http, grpc) = (free_port(), free_port());
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "cmd_port: {grpc}\nhealth_port: {http}\nautoconfig_exclude_features: [docker, containerd, podman, kubernetes]\n{extra}"
        ),
    )
    .unwrap();
    (config, http, grpc)
}

/// `agent run` under `prefix` (e.g. `prlimit …`), waited for until `/ready` answers 200.
fn start(dir: &Path, extra: &str, prefix: &[&str]) -> Agent {
    let (config, http, grpc) = write_config(dir, extra);
    let binary = env!("CARGO_BIN_EXE_agent");
    let mut command = match prefix.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    let child = command
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("agent.log")).unwrap()))
        .spawn()
        .unwrap();
    let agent = Agent { child, config, http, grpc };
    let deadline = Instant::now() + Duration::from_secs(20);
    while request(SocketAddr::from(([127, 0, 0, 1], http)), "/ready", "127.0.0.1", None).0 != 200 {
        assert!(Instant::now() < deadline, "not ready: {}", std::fs::read_to_string(dir.join("agent.log")).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    agent
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
fn request(to: SocketAddr, path: &str, host: &str, token: Option<&str>) -> (u16, String) {
    let Ok(mut tcp) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) else { return (0, String::new()) };
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n");
    if tcp.write_all(head.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn node_address() -> Option<IpAddr> {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?
        .split('/')
        .next()?
        .parse()
        .ok()
}

const GUARDED: [&str; 5] = ["/agent/workload-list", "/agent/tagger-list", "/agent/status", "/agent/config", "/metrics"];
const PROBES: [&str; 4] = ["/live", "/ready", "/health", "/health/live"];

/// `GET path` on the agent's TLS API (the gRPC port) with `token`: the status, 0 when the
/// query failed otherwise.
fn tls_status(runtime: &tokio::runtime::Runtime, agent: &Agent, dir: &Path, path: &str, token: Option<&str>) -> u16 {
    let cert = std::fs::read_to_string(dir.join("ipc_cert.pem")).unwrap();
    let api = agent_bin::cli::Api::tls(agent.grpc, token.map(str::to_owned), cert);
    match runtime.block_on(agent_bin::cli::fetch_text(api, path)) {
        Ok(_) => 200,
        Err(e) => {
            let text = e.to_string();
            text.split("HTTP ").nth(1).and_then(|s| s.get(..3)?.parse().ok()).unwrap_or(0)
        }
    }
}

#[test]
fn the_probes_port_serves_only_probes_and_the_api_wants_tls_and_the_token() {
    let _serial = one_at_a_time();
    let dir = temp_dir("guard");
    let agent = start(&dir, "health_host: 0.0.0.0\n", &[]);
    let token = std::fs::read_to_string(dir.join("auth_token")).unwrap();
    let local = SocketAddr::from(([127, 0, 0, 1], agent.http));
    // The plain port: the probes to anyone, whatever the Host; nothing else, token or not.
    for path in PROBES {
        assert_eq!(request(local, path, "evil.example", None).0, 200, "{path} is open");
    }
    for path in GUARDED {
        assert_eq!(request(local, path, "localhost", Some(&token)).0, 404, "{path} is not on the probes' port");
    }
    // Opened to the network for kubelet probes: another machine (the node's own address, not
    // loopback) gets the probes and nothing else.
    match node_address() {
        Some(ip) => {
            let remote = SocketAddr::new(ip, agent.http);
            for path in PROBES {
                assert_eq!(request(remote, path, &remote.to_string(), None).0, 200, "{path} from {ip}");
            }
            for path in GUARDED {
                assert_eq!(request(remote, path, "127.0.0.1", Some(&token)).0, 404, "{path} from {ip}");
            }
        }
        None => println!("no non-loopback address on this machine: the remote-peer checks did not run"),
    }
    // The TLS API beside gRPC: the token or 401.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for path in GUARDED {
        assert_eq!(tls_status(&runtime, &agent, &dir, path, None), 401, "{path} without a token");
        assert_eq!(tls_status(&runtime, &agent, &dir, path, Some("wrong-token-wrong-token-wrong-token")), 401);
        assert_eq!(tls_status(&runtime, &agent, &dir, path, Some(&token)), 200, "{path} as the CLI asks");
    }
    // Plain HTTP on the TLS port gets no answer (the handshake fails, the connection closes).
    assert_eq!(
        request(SocketAddr::from(([127, 0, 0, 1], agent.grpc)), "/agent/status", "localhost", Some(&token)).0,
        0
    );
    // A client that trusts another certificate does not get through: the CLI talks only to the
    // agent whose certificate it holds.
    let stranger = agent_bin::cli::Api::tls(agent.grpc, Some(token.clone()), other_certificate());
    let refused = runtime.block_on(agent_bin::cli::fetch_text(stranger, "/agent/status")).unwrap_err().to_string();
    assert!(refused.contains("no agent answers"), "{refused}");
    // The CLI reads the token and certificate files and gets through.
    let status =
        Command::new(env!("CARGO_BIN_EXE_agent")).arg("--config").arg(&agent.config).arg("status").output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(String::from_utf8_lossy(&status.stdout).contains("Ready: true"));
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap();
    assert!(log.contains("the HTTP API listens beyond loopback"), "{log}");
}

/// A certificate for localhost that the agent does not hold.
fn other_certificate() -> String {
    let dir = temp_dir("other-cert");
    let path = dir.join("ipc_cert.pem");
    agent_bin::security::load_or_create_cert(&path).unwrap().cert_pem
}

#[test]
fn a_token_file_others_may_read_stops_the_agent_with_the_fix() {
    let _serial = one_at_a_time();
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("perms");
    let token = dir.join("auth_token");
    std::fs::write(&token, "a".repeat(64)).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (config, _, _) = write_config(&dir, "");
    let out = Command::new(env!("CARGO_BIN_EXE_agent")).arg("--config").arg(&config).arg("run").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("chmod 600 {}", token.display())), "{stderr}");
    assert!(stderr.contains("mode 644"), "{stderr}");
}

/// Our own soft descriptor limit, raised to hold thousands of client sockets.
fn raise_own_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum }).unwrap();
}

fn soft_fd_limit(pid: u32) -> String {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_owned()
}

#[test]
fn three_thousand_idle_connections_under_a_1024_soft_limit_leave_ready_answering_and_are_closed() {
    let _serial = one_at_a_time();
    raise_own_fd_limit();
    let dir = temp_dir("flood");
    // All from 127.0.0.1: the per-peer cap is raised so that they all get in.
    let agent = start(
        &dir,
        "server_timeout: 3\nipc_max_connections_per_peer: 4096\n",
        &["prlimit", "--nofile=1024:16384", "--"],
    );
    let limits = soft_fd_limit(agent.child.id());
    assert!(limits.split_whitespace().filter(|w| *w == "16384").count() == 2, "soft raised to hard: {limits}");
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap();
    assert!(log.contains("soft_before=1024"), "{log}");

    let ports = [agent.http, agent.grpc];
    let mut idle: Vec<TcpStream> = Vec::with_capacity(3000);
    for i in 0..3000 {
        let to = SocketAddr::from(([127, 0, 0, 1], ports[i % 2]));
        idle.push(TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap());
    }
    let opened = Instant::now();
    // Held open, none sending a byte: the probes still answer.
    let local = SocketAddr::from(([127, 0, 0, 1], agent.http));
    for _ in 0..5 {
        assert_eq!(request(local, "/ready", "localhost", None).0, 200);
    }
    println!("/ready answered with 3,000 idle connections held, {:?} after they opened", opened.elapsed());

    // server_timeout (3 s) passes: the agent closes every one (EOF or reset on our side).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut open = idle.len();
    while open > 0 && Instant::now() < deadline {
        open = 0;
        for tcp in &mut idle {
            tcp.set_nonblocking(true).unwrap();
            let mut byte = [0u8; 1];
            match tcp.read(&mut byte) {
                Ok(0) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(open, 0, "connections still open {:?} after they opened", opened.elapsed());
    println!("every idle connection closed by the agent within {:?}", opened.elapsed());
    assert_eq!(request(local, "/ready", "localhost", None).0, 200);
}

#[test]
fn a_server_timeout_near_u64_max_is_clamped_and_the_agent_serves_on() {
    let _serial = one_at_a_time();
    let dir = temp_dir("huge-timeout");
    let mut agent = start(&dir, &format!("server_timeout: {}\n", u64::MAX - 1), &[]);
    let local = SocketAddr::from(([127, 0, 0, 1], agent.http));
    // A connection whose headers never end starts the header timer (now + server_timeout).
    let mut partial = TcpStream::connect_timeout(&local, Duration::from_secs(5)).unwrap();
    partial.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\n").unwrap();
    let grpc = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], agent.grpc)), Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let token = std::fs::read_to_string(dir.join("auth_token")).unwrap();
    assert_eq!(request(local, "/ready", "localhost", None).0, 200);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert_eq!(tls_status(&runtime, &agent, &dir, "/agent/status", Some(&token)), 200);
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent is still running");
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
    drop((partial, grpc));
}

/// The agent's resident memory, in MiB.
fn rss_mib(pid: u32) -> u64 {
    test_support::procfs::rss_bytes(pid).unwrap_or(0) >> 20
}

/// Connects from `source` (another loopback address standing for another host).
fn connect_from(runtime: &tokio::runtime::Runtime, source: [u8; 4], port: u16) -> Option<TcpStream> {
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind(SocketAddr::from((source, 0))).ok()?;
        let tcp = socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await.ok()?;
        tcp.into_std().ok()
    })
}

/// The DaemonSet's memory limit (deploy/kubernetes/daemonset.yaml), in MiB.
const POD_MEMORY_LIMIT_MIB: u64 = 256;

#[test]
fn five_thousand_slow_header_connections_from_another_host_leave_the_probes_answering() {
    let _serial = one_at_a_time();
    raise_own_fd_limit();
    let dir = temp_dir("slow-headers");
    // The DaemonSet's config: probes open to the network, 30 s for a request's headers.
    let agent = start(&dir, "health_host: 0.0.0.0\n", &[]);
    let pid = agent.child.id();
    let local = SocketAddr::from(([127, 0, 0, 1], agent.http));
    let rss_before = rss_mib(pid);
    // "Another host" (127.0.0.2) opens 5,000 connections to each port, then trickles header
    // lines on those still open (the header deadline, 30 s, closes them in the end).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
    let mut flood: Vec<TcpStream> = Vec::new();
    for port in [agent.http, agent.grpc] {
        for _ in 0..5000 {
            if let Some(tcp) = connect_from(&runtime, [127, 0, 0, 2], port) {
                flood.push(tcp);
            }
        }
    }
    assert!(flood.len() >= 9000, "only {} connections opened", flood.len());
    // The agent keeps at most its per-peer share of each port's: the rest are closed at once.
    std::thread::sleep(Duration::from_secs(1));
    let mut held = 0;
    for tcp in &mut flood {
        tcp.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        held += usize::from(matches!(tcp.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
    }
    assert!(held <= 2 * 128, "{held} flood connections held by the agent");
    let started = Instant::now();
    let (mut worst, mut probes, mut most_rss) = (Duration::ZERO, 0, 0);
    let mut next_trickle = Instant::now();
    let mut line = 0;
    while started.elapsed() < Duration::from_secs(45) {
        if Instant::now() >= next_trickle {
            for tcp in &mut flood {
                tcp.set_nonblocking(true).unwrap();
                let bytes: &[u8] = if line == 0 { b"GET /live HTTP/1.1\r\n" } else { b"X-Slow: header\r\n" };
                let _ = tcp.write(bytes);
            }
            line += 1;
            next_trickle += Duration::from_secs(20);
        }
        for path in ["/live", "/ready"] {
            let asked = Instant::now();
            let (status, _) = request(local, path, "127.0.0.1", None);
            let took = asked.elapsed();
            assert_eq!(status, 200, "{path} after {:?} of the flood", started.elapsed());
            assert!(took < Duration::from_secs(1), "{path} took {took:?} after {:?}", started.elapsed());
            worst = worst.max(took);
            probes += 1;
        }
        most_rss = most_rss.max(rss_mib(pid));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(most_rss < POD_MEMORY_LIMIT_MIB, "RSS reached {most_rss} MiB (limit {POD_MEMORY_LIMIT_MIB})");
    println!(
        "10,000 slow-header connections from 127.0.0.2: {held} held by the agent after 1 s; {probes} probes from \
         127.0.0.1 answered, the slowest in {worst:?}; RSS {rss_before} -> at most {most_rss} MiB"
    );
}

/// An HTTP/2 frame: length, type, flags, stream 0, payload.
fn h2_frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    frame
}

#[test]
fn pings_do_not_keep_a_grpc_connection_that_never_authenticates() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _serial = one_at_a_time();
    let dir = temp_dir("unauthenticated");
    let agent = start(&dir, "server_timeout: 3\n", &[]);
    let cert = std::fs::read_to_string(dir.join("ipc_cert.pem")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let lasted = runtime.block_on(async {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", agent.grpc)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap();
        let (mut read, mut write) = tokio::io::split(tls);
        // A valid HTTP/2 client that never sends a request: the preface, its settings, then a
        // ping every half second (each answered by the server: traffic both ways).
        write.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        write.write_all(&h2_frame(0x4, 0, &[])).await.unwrap();
        let opened = Instant::now();
        let pinger = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if write.write_all(&h2_frame(0x6, 0, &[7; 8])).await.is_err() {
                    return;
                }
            }
        });
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(30), read.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) => panic!("the connection was still open after 30 s of pings"),
            }
        }
        pinger.abort();
        opened.elapsed()
    });
    assert!(lasted >= Duration::from_secs(3), "closed before server_timeout: {lasted:?}");
    assert!(lasted < Duration::from_secs(10), "closed {lasted:?} after it opened");
    println!("an unauthenticated gRPC connection sending pings was closed after {lasted:?} (server_timeout 3 s)");
    // An authenticated client on the same agent is served, and its quiet stream outlives
    // server_timeout: the deadline is for connections that never authenticate.
    let token = std::fs::read_to_string(dir.join("auth_token")).unwrap();
    assert_eq!(tls_status(&runtime, &agent, &dir, "/agent/status", Some(&token)), 200);
    runtime.block_on(async {
        let address = format!("localhost:{}", agent.grpc);
        let upstream =
            wm_ipc::RemoteAgent::from_files(address, &dir.join("auth_token"), &dir.join("ipc_cert.pem")).unwrap();
        let mut client = upstream.connect().await.unwrap();
        let request = wm_ipc::proto::model::v1::StreamTagsRequest::default();
        let mut stream = client.tagger_stream_entities(request).await.unwrap().into_inner();
        stream.message().await.unwrap().expect("the snapshot");
        tokio::time::sleep(Duration::from_secs(5)).await;
        let next = tokio::time::timeout(Duration::from_millis(200), stream.message()).await;
        assert!(next.is_err(), "the authenticated stream ended after server_timeout: {next:?}");
    });
}
