//! `agent.rss_idle` of BENCHMARKS.md: the agent binary (release) against a real dockerd and
//! containerd holding 500 containers; once it knows all 500, it is left idle for 60 s (10 s with
//! `--quick`), then its resident memory (`VmRSS`) and the CPU it used while idle are read from
//! `/proc`. Targets: ≤ 20 MiB, ≤ 1% of a core.

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failure aborts the run

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_support::runtimes::{Install, Runtimes};

fn free_port() -> u16 {
    test_support::runtimes::free_port().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = match Runtimes::start(Install::IfMissing) {
        Ok(rt) => rt,
        Err(why) => {
            println!("agent.rss_idle  -  -  -  <=20MiB  MISS (no runtimes: {why})");
            return;
        }
    };
    let containers = 500;
    let ids: Vec<String> = std::thread::scope(|s| {
        let rt = &rt;
        let handles: Vec<_> = (0..8)
            .map(|t| {
                s.spawn(move || {
                    (t..containers)
                        .step_by(8)
                        .map(|i| {
                            let out = rt
                                .docker(&[
                                    "create",
                                    "--name",
                                    &format!("idle-{i}"),
                                    "--network",
                                    "none",
                                    "--label",
                                    "team=bench",
                                    Runtimes::IMAGE,
                                    "sleep",
                                    "3600",
                                ])
                                .unwrap();
                            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                            String::from_utf8_lossy(&out.stdout).trim().to_owned()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(ids.len(), containers);

    let dir = rt.dir().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.yaml");
    let http = free_port();
    std::fs::write(
        &config,
        format!(
            "cmd_port: {}\nhealth_port: {http}\ndocker_host: {}\ncri_socket_path: {}\nautoconfig_exclude_features: [podman, kubernetes]\nlog_level: warn\n",
            free_port(),
            rt.docker_host(),
            rt.containerd_socket().display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Until it knows all 500.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out =
            Command::new(env!("CARGO_BIN_EXE_agent")).arg("--config").arg(&config).arg("status").output().unwrap();
        if String::from_utf8_lossy(&out.stdout).contains(&format!("container: {containers}")) {
            break;
        }
        assert!(Instant::now() < deadline, "the agent did not list {containers} containers within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let idle = Duration::from_secs(if quick { 10 } else { 60 });
    let (ticks0, t0) = (test_support::procfs::cpu_ticks(pid), Instant::now());
    std::thread::sleep(idle);
    let (ticks1, elapsed) = (test_support::procfs::cpu_ticks(pid), t0.elapsed());
    let rss = rss_kib(pid);
    let cpu_percent = test_support::procfs::cpu_percent(ticks0, ticks1, elapsed);
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = child.wait();
    let mib = rss as f64 / 1024.0;
    let verdict = if mib <= 20.0 && cpu_percent <= 1.0 { "ok" } else { "MISS" };
    println!(
        "agent.rss_idle  {mib:.1} MiB, CPU {cpu_percent:.2}% of a core  -  -  <=20MiB, <=1%  {verdict}  ({containers} containers, {}s idle)",
        idle.as_secs()
    );
    drop(rt);
}
