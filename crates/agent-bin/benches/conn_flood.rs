//! `agent.conn_flood` of BENCHMARKS.md: the agent binary started under a 1,024 soft descriptor
//! limit (`prlimit --nofile=1024:16384`), `/ready` latency on fresh connections (as kubelet
//! probes come) with 3,000 idle connections held (1,500 on each API port) against the same with
//! none, and the agent's CPU while they are held. Targets: ≤ 10× and under 1 s; CPU ≤ 5% of a core.

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failure aborts the run

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    test_support::runtimes::free_port().unwrap()
}

/// One `/ready` on a fresh connection: its latency, and whether it answered 200.
fn ready(to: SocketAddr) -> (Duration, bool) {
    let started = Instant::now();
    let Ok(mut tcp) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) else {
        return (started.elapsed(), false);
    };
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let ok = tcp.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_ok() && {
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200")
    };
    (started.elapsed(), ok)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn probe(to: SocketAddr, n: usize) -> (Vec<Duration>, usize) {
    let mut latencies = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        let (latency, ok) = ready(to);
        failed += usize::from(!ok);
        latencies.push(latency);
        std::thread::sleep(Duration::from_millis(5));
    }
    latencies.sort();
    (latencies, failed)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let probes = if quick { 50 } else { 300 };
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        setrlimit(Resource::Nofile, rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum })
            .unwrap();
    }
    let dir = std::env::temp_dir().join(format!("wm-bench-flood-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (http, grpc) = (free_port(), free_port());
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            // 3,000 connections from one address: the per-peer cap is raised to let them in, so
            // the figure still measures the probes beside that many open connections.
            "cmd_port: {grpc}\nhealth_port: {http}\nlog_level: warn\nipc_max_connections_per_peer: 4096\nautoconfig_exclude_features: [docker, containerd, podman, kubernetes]\n"
        ),
    )
    .unwrap();
    let mut child = Command::new("prlimit")
        .args(["--nofile=1024:16384", "--"])
        .arg(env!("CARGO_BIN_EXE_agent"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let to = SocketAddr::from(([127, 0, 0, 1], http));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready(to).1 {
        assert!(Instant::now() < deadline, "the agent did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = child.id();

    let (calm, calm_failed) = probe(to, probes);
    let mut held = Vec::with_capacity(3000);
    for i in 0..3000 {
        let port = if i % 2 == 0 { http } else { grpc };
        held.push(
            TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(5)).unwrap(),
        );
    }
    let (ticks0, t0) = (test_support::procfs::cpu_ticks(pid), Instant::now());
    let (flooded, flooded_failed) = probe(to, probes);
    std::thread::sleep(Duration::from_secs(if quick { 2 } else { 10 }).saturating_sub(t0.elapsed()));
    let (ticks1, elapsed) = (test_support::procfs::cpu_ticks(pid), t0.elapsed());
    let cpu_percent = test_support::procfs::cpu_percent(ticks0, ticks1, elapsed);
    drop(held);
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let (ours, base) = (percentile(&flooded, 50.0), percentile(&calm, 50.0));
    let ours99 = percentile(&flooded, 99.0);
    let ratio = ours.as_secs_f64() / base.as_secs_f64();
    let ok = ratio <= 10.0
        && ours99 < Duration::from_secs(1)
        && cpu_percent <= 5.0
        && flooded_failed == 0
        && calm_failed == 0;
    println!(
        "agent.conn_flood  {:.2} ms (p99 {:.2} ms)  {:.2} ms  {ratio:.2}x  <=10x, <1s, CPU <=5%  {}  (CPU {cpu_percent:.2}% of a core with 3,000 idle connections; {flooded_failed} of {probes} probes failed flooded, {calm_failed} calm)",
        ours.as_secs_f64() * 1e3,
        ours99.as_secs_f64() * 1e3,
        base.as_secs_f64() * 1e3,
        if ok { "ok" } else { "MISS" }
    );
}
