//! `cargo xtask soak [--minutes N] [--containers N] [--warmup M]`: the release agent on real
//! daemons (containerd and dockerd of `test_support::runtimes`) under continuous churn for N
//! minutes (30): containers created and removed in both runtimes every couple of seconds,
//! dockerd restarted every 3 minutes, clients streaming over gRPC and reconnecting, and the CLI's
//! queries. `--containers N` keeps N containers alive (30): 15 running in each runtime, the rest
//! created but not started (a started container costs a shim), half in each runtime, and each
//! churn step replaces the oldest of them too, so the whole population turns over. Every 10 s it
//! samples the agent's RSS, its live heap bytes (`agent_heap_live_bytes` on `/metrics`, which
//! `cargo xtask soak` turns on by building the agent with `alloc-stats`: a leak grows both, the
//! allocator's fragmentation only RSS), open descriptors, threads, live tokio tasks
//! (`agent_tokio_tasks`) and stored containers; every minute it checks that the store equals the
//! daemons' own lists.
//!
//! It fails when a checkpoint does not hold within 20 s, or when a series grows after the
//! warm-up (M minutes, 10, or half the run if shorter) faster than its target: a least-squares
//! slope per minute, for RSS and the live heap at most 0.01 MiB/min (15 MiB a day). Its report: `<out>/soak.md` (a
//! table), `<out>/samples.csv` and `<out>/soak.png` (a plot, drawn with matplotlib in the
//! tooling's Python environment).
//!
//! Usage: `cargo run -p agent-bin --example soak -- <agent binary> <minutes> <out dir>
//! [<containers> [<warm-up minutes>]]`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use test_support::runtimes::{self, Install, Runtimes};

/// One sample.
#[derive(Clone, Copy, Debug)]
struct Sample {
    minute: f64,
    rss_mib: f64,
    /// The live heap (`agent_heap_live_bytes`; zero when the agent does not count it).
    heap_mib: f64,
    fds: f64,
    threads: f64,
    tasks: f64,
    containers: f64,
}

/// A column of the samples.
type Column = fn(&Sample) -> f64;

/// The fastest growth after the warm-up that still counts as flat: (what, column, slope per
/// minute). RSS: 0.01 MiB/min, 15 MiB a day. The counts: about one more every 50 minutes for
/// descriptors and threads, 20 for tasks (their samples move by one or two around a restart).
const TARGETS: &[(&str, Column, f64)] = &[
    ("rss_mib", |s| s.rss_mib, 0.01),
    ("heap_mib", |s| s.heap_mib, 0.01),
    ("fds", |s| s.fds, 0.02),
    ("tasks", |s| s.tasks, 0.05),
    ("threads", |s| s.threads, 0.02),
];

/// Running containers kept in each runtime; the rest of `--containers` is only created.
const RUNNING: usize = 15;

/// Creates `count` containers in both runtimes (half each, not started) with 8 threads; returns
/// docker's ids and containerd's names, oldest first.
fn populate(rt: &Runtimes, count: usize) -> (Vec<String>, Vec<String>) {
    let per_runtime = count / 2;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let made = std::sync::Mutex::new((Vec::new(), Vec::new()));
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= per_runtime {
                        break;
                    }
                    let (docker, ctr) =
                        (create_docker(rt, &format!("bulk-d{i}")), create_ctr(rt, &format!("bulk-c{i}")));
                    let mut made = made.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    made.0.extend(docker);
                    made.1.extend(ctr);
                }
            });
        }
    });
    made.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `docker create` (not started); its id.
fn create_docker(rt: &Runtimes, name: &str) -> Option<String> {
    lines(
        rt.docker(&[
            "create",
            "--network",
            "none",
            "--label",
            "soak=1",
            "--name",
            name,
            Runtimes::IMAGE,
            "sleep",
            "3600",
        ])
        .map_err(|e| std::io::Error::other(e.0)),
    )
    .pop()
}

/// `ctr containers create` (no task); its name.
fn create_ctr(rt: &Runtimes, name: &str) -> Option<String> {
    rt.ctr(Runtimes::CTR_NAMESPACE, &["containers", "create", "--label", "soak=1", Runtimes::CTR_IMAGE, name])
        .is_ok_and(|o| o.status.success())
        .then(|| name.to_owned())
}

fn proc_status(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn fds(pid: u32) -> f64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as f64).unwrap_or(0.0)
}

struct Agent {
    binary: PathBuf,
    config: PathBuf,
    http: u16,
    child: Option<Child>,
}

impl Agent {
    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new(&self.binary).arg("--config").arg(&self.config).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `GET /metrics` (public in the soak's config).
    fn metrics(&self) -> String {
        use std::io::{Read as _, Write as _};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.http)) else { return String::new() };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
    }

    fn metric(&self, name: &str) -> f64 {
        let metrics = self.metrics();
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The container ids the agent stores.
    fn stored(&self) -> Option<BTreeSet<String>> {
        test_support::bench::stored_containers(&self.binary, &self.config)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            runtimes::terminate(child, Duration::from_secs(5));
        }
    }
}

fn lines(out: std::io::Result<std::process::Output>) -> Vec<String> {
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout).lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
    })
    .unwrap_or_default()
}

/// The daemons' own lists: docker's containers, and containerd's in the test namespace.
fn daemons(rt: &Runtimes) -> BTreeSet<String> {
    let mut ids: BTreeSet<String> =
        lines(rt.docker(&["ps", "-aq", "--no-trunc"]).map_err(|e| std::io::Error::other(e.0))).into_iter().collect();
    ids.extend(lines(
        rt.ctr(Runtimes::CTR_NAMESPACE, &["containers", "ls", "-q"]).map_err(|e| std::io::Error::other(e.0)),
    ));
    ids
}

/// Least-squares slope of `y` over `x`.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let num: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    if den == 0.0 { 0.0 } else { num / den }
}

/// A gRPC client that streams tags for a few seconds, drops, and comes back, until told to stop.
fn spawn_stream_clients(
    config: &Path,
    grpc: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<std::thread::JoinHandle<usize>, String> {
    let config = agent_bin::load_config(Some(config), Vec::new()).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    Ok(std::thread::spawn(move || {
        runtime.block_on(async move {
            let mut streams = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let token = std::fs::read_to_string(config.auth_token_path()).unwrap_or_default();
                let Ok(cert) = agent_bin::security::load_or_create_cert(&config.ipc_cert_path()) else {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                let remote = wm_ipc::RemoteAgent {
                    address: format!("localhost:{grpc}"),
                    token: token.trim().to_owned(),
                    cert,
                    token_file: None,
                    cert_file: None,
                };
                if let Ok(mut client) = remote.connect().await {
                    let request = wm_ipc::proto::model::v1::StreamTagsRequest {
                        cardinality: wm_ipc::proto::model::v1::TagCardinality::High as i32,
                        ..Default::default()
                    };
                    if let Ok(response) = client.tagger_stream_entities(request).await {
                        let mut stream = response.into_inner();
                        let until = tokio::time::Instant::now() + Duration::from_secs(5);
                        while let Ok(Ok(Some(_))) = tokio::time::timeout_at(until, stream.message()).await {}
                        streams += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            streams
        })
    }))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(binary), Some(minutes), Some(out), Some(containers), Some(warmup)) = (
        args.first(),
        args.get(1).and_then(|m| m.parse::<f64>().ok()),
        args.get(2),
        args.get(3).map_or(Some(2 * RUNNING), |c| c.parse::<usize>().ok()),
        args.get(4).map_or(Some(10.0), |w| w.parse::<f64>().ok()),
    ) else {
        eprintln!("usage: soak <agent binary> <minutes> <out dir> [<containers> [<warm-up minutes>]]");
        return ExitCode::from(2);
    };
    let warmup = warmup.min(minutes / 2.0);
    match soak(Path::new(binary), minutes, Path::new(out), containers, warmup) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

fn soak(binary: &Path, minutes: f64, out: &Path, containers: usize, warmup: f64) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut rt = Runtimes::start(Install::IfMissing).map_err(|e| e.0)?;
    let populating = Instant::now();
    let (bulk_docker, bulk_ctr) = populate(&rt, containers.saturating_sub(2 * RUNNING));
    println!(
        "soak: {} docker and {} containerd containers created (not started) in {:.0} s",
        bulk_docker.len(),
        bulk_ctr.len(),
        populating.elapsed().as_secs_f64()
    );
    let (mut bulk_docker, mut bulk_ctr) =
        (std::collections::VecDeque::from(bulk_docker), std::collections::VecDeque::from(bulk_ctr));
    let dir = rt.dir().join("soak-agent");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let port = || runtimes::free_port().map_err(|e| e.to_string());
    let (grpc, http) = (port()?, port()?);
    let config = dir.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "cmd_port: {grpc}\nhealth_port: {http}\ndocker_host: {}\ncri_socket_path: {}\n\
             containerd_namespaces: [{}]\nautoconfig_exclude_features: [podman, kubernetes, ecs, cloudfoundry]\n\
             metrics_public: true\n",
            rt.docker_host(),
            rt.containerd_socket().display(),
            Runtimes::CTR_NAMESPACE,
        ),
    )
    .map_err(|e| e.to_string())?;
    let log = std::fs::File::create(out.join("agent.log")).map_err(|e| e.to_string())?;
    let child = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let pid = child.id();
    let agent = Agent { binary: binary.to_path_buf(), config: config.clone(), http, child: Some(child) };
    let ready = Instant::now() + Duration::from_secs(30);
    while agent.cli(&["health"]).is_none() {
        if Instant::now() > ready {
            return Err("the agent was not ready within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = spawn_stream_clients(&config, grpc, stop.clone())?;

    let started = Instant::now();
    let end = started + Duration::from_secs_f64(minutes * 60.0);
    let (mut next_sample, mut next_check, mut next_restart) =
        (started, started + Duration::from_secs(60), started + Duration::from_secs(180));
    let (mut docker_live, mut ctr_live) = (std::collections::VecDeque::new(), std::collections::VecDeque::new());
    let mut samples = Vec::new();
    let mut checkpoints = Vec::new();
    let mut restarts = 0;
    let mut created = 0usize;
    while Instant::now() < end {
        // Churn: one container more in each runtime, the oldest beyond 15 removed.
        created += 1;
        let name = format!("soak-{created}");
        if let Some(id) = lines(
            rt.docker(&[
                "run",
                "-d",
                "--network",
                "none",
                "--label",
                "soak=1",
                "--name",
                &name,
                Runtimes::IMAGE,
                "sleep",
                "3600",
            ])
            .map_err(|e| std::io::Error::other(e.0)),
        )
        .pop()
        {
            docker_live.push_back(id);
        }
        if rt
            .ctr(Runtimes::CTR_NAMESPACE, &["containers", "create", "--label", "soak=1", Runtimes::CTR_IMAGE, &name])
            .is_ok_and(|o| o.status.success())
        {
            ctr_live.push_back(name.clone());
        }
        // The bulk turns over too: one created, the oldest removed.
        if !bulk_docker.is_empty() {
            bulk_docker.extend(create_docker(&rt, &format!("bulk-{name}")));
            if let Some(id) = bulk_docker.pop_front() {
                let _ = rt.docker(&["rm", "-f", &id]);
            }
        }
        if !bulk_ctr.is_empty() {
            bulk_ctr.extend(create_ctr(&rt, &format!("bulk-{name}")));
            if let Some(id) = bulk_ctr.pop_front() {
                let _ = rt.ctr(Runtimes::CTR_NAMESPACE, &["containers", "rm", &id]);
            }
        }
        while docker_live.len() > RUNNING {
            let id = docker_live.pop_front().unwrap_or_default();
            let _ = rt.docker(&["rm", "-f", &id]);
        }
        while ctr_live.len() > RUNNING {
            let id = ctr_live.pop_front().unwrap_or_default();
            let _ = rt.ctr(Runtimes::CTR_NAMESPACE, &["containers", "rm", &id]);
        }
        let _ = agent.cli(&["tagger-list"]);
        let now = Instant::now();
        if now >= next_restart {
            rt.kill_dockerd();
            rt.start_dockerd().map_err(|e| format!("dockerd did not come back: {}", e.0))?;
            restarts += 1;
            next_restart = now + Duration::from_secs(180);
        }
        if now >= next_sample {
            let sample = Sample {
                minute: started.elapsed().as_secs_f64() / 60.0,
                rss_mib: proc_status(pid, "VmRSS:") / 1024.0,
                heap_mib: agent.metric("agent_heap_live_bytes") / f64::from(1u32 << 20),
                fds: fds(pid),
                threads: proc_status(pid, "Threads:"),
                tasks: agent.metric("agent_tokio_tasks"),
                containers: agent.metric("workloadmeta_stored_entities{kind=\"container\""),
            };
            println!(
                "soak: {:5.1} min  rss {:6.1} MiB  heap {:6.1} MiB  fds {:4}  threads {:3}  tasks {:4}  containers {:4}",
                sample.minute,
                sample.rss_mib,
                sample.heap_mib,
                sample.fds,
                sample.threads,
                sample.tasks,
                sample.containers
            );
            samples.push(sample);
            next_sample = now + Duration::from_secs(10);
        }
        if now >= next_check {
            // The store equals the daemons' lists (within 20 s: the agent follows events).
            let deadline = Instant::now() + Duration::from_secs(20);
            let (mut want, mut got);
            loop {
                want = daemons(&rt);
                got = agent.stored().unwrap_or_default();
                if want == got || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            let exact = want == got;
            println!(
                "soak: checkpoint at {:.1} min: {} containers, store exact: {exact}",
                started.elapsed().as_secs_f64() / 60.0,
                want.len()
            );
            checkpoints.push((started.elapsed().as_secs_f64() / 60.0, want.len(), exact));
            if !exact {
                let missing: Vec<_> = want.difference(&got).collect();
                let extra: Vec<_> = got.difference(&want).collect();
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(format!("the store differs from the daemons: missing {missing:?}, extra {extra:?}"));
            }
            next_check = Instant::now() + Duration::from_secs(60);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let streams = clients.join().unwrap_or(0);
    drop(agent);
    report(out, &samples, &checkpoints, Totals { created, restarts, streams, containers, warmup })
}

/// What the run did, for the report's first line.
struct Totals {
    created: usize,
    restarts: usize,
    streams: usize,
    containers: usize,
    warmup: f64,
}

fn report(out: &Path, samples: &[Sample], checkpoints: &[(f64, usize, bool)], totals: Totals) -> Result<(), String> {
    let Totals { created, restarts, streams, containers, warmup } = totals;
    let mut csv = String::from("minute,rss_mib,heap_mib,fds,threads,tasks,containers\n");
    for s in samples {
        let _ = writeln!(
            csv,
            "{:.2},{:.2},{:.3},{},{},{},{}",
            s.minute, s.rss_mib, s.heap_mib, s.fds, s.threads, s.tasks, s.containers
        );
    }
    std::fs::write(out.join("samples.csv"), &csv).map_err(|e| e.to_string())?;
    let after: Vec<&Sample> = samples.iter().filter(|s| s.minute >= warmup).collect();
    let span = after.last().map_or(0.0, |l| l.minute) - after.first().map_or(0.0, |f| f.minute);
    let mut table = format!(
        "# Soak\n\n{:.0} min, {containers} live containers, {created} created by churn in each runtime, dockerd restarted {restarts} times, {streams} gRPC streams opened and dropped, {} checkpoints (all exact: {}). Growth is judged over the {span:.0} minutes after a {warmup:.0}-minute warm-up.\n\n| series | first | last | min | max | slope after warm-up (per min) | growth across it | per day at that slope | target (per min) | verdict |\n|---|---|---|---|---|---|---|---|---|---|\n",
        samples.last().map_or(0.0, |s| s.minute),
        checkpoints.len(),
        checkpoints.iter().all(|c| c.2),
    );
    let mut failed = Vec::new();
    for (name, column, target) in TARGETS {
        let values: Vec<f64> = samples.iter().map(column).collect();
        let points: Vec<(f64, f64)> = after.iter().map(|s| (s.minute, column(s))).collect();
        let per_minute = slope(&points);
        let ok = per_minute <= *target;
        if !ok {
            failed.push(*name);
        }
        let _ = writeln!(
            table,
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {per_minute:.4} | {:.2} | {:.1} | {target} | {} |",
            values.first().copied().unwrap_or_default(),
            values.last().copied().unwrap_or_default(),
            values.iter().copied().fold(f64::INFINITY, f64::min),
            values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            per_minute * span,
            per_minute * 1440.0,
            if ok { "flat" } else { "GROWS" }
        );
    }
    std::fs::write(out.join("soak.md"), &table).map_err(|e| e.to_string())?;
    println!("{table}");
    plot(out);
    if !failed.is_empty() {
        return Err(format!("growth after the warm-up: {failed:?} (see {})", out.join("soak.md").display()));
    }
    Ok(())
}

/// Draws `soak.png` from `samples.csv` with matplotlib (installed into the tooling's Python
/// environment when missing); without it the table and the CSV stand alone.
fn plot(out: &Path) {
    let venv = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".cache/wm-pyenv");
    let python = venv.join("bin/python");
    let has = |python: &Path| {
        Command::new(python).args(["-c", "import matplotlib"]).output().is_ok_and(|o| o.status.success())
    };
    if !python.exists() {
        let _ = Command::new("python3").args(["-m", "venv"]).arg(&venv).status();
    }
    if !has(&python) {
        let _ = Command::new(venv.join("bin/pip")).args(["install", "--quiet", "matplotlib"]).status();
    }
    let script = r#"
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = list(csv.DictReader(open(sys.argv[1])))
x = [float(r["minute"]) for r in rows]
series = [("rss_mib", "RSS (MiB)"), ("heap_mib", "live heap (MiB)"), ("fds", "open descriptors"), ("tasks", "tokio tasks"), ("threads", "threads"), ("containers", "stored containers")]
fig, axes = plt.subplots(len(series), 1, figsize=(9, 13), sharex=True)
for ax, (key, label) in zip(axes, series):
    ax.plot(x, [float(r[key]) for r in rows], linewidth=1.2)
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
axes[-1].set_xlabel("minutes")
fig.suptitle("wm agent soak: containerd + dockerd churn, dockerd restarts, gRPC clients")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=90)
"#;
    let status =
        Command::new(&python).arg("-c").arg(script).arg(out.join("samples.csv")).arg(out.join("soak.png")).status();
    match status {
        Ok(s) if s.success() => println!("soak: plot in {}", out.join("soak.png").display()),
        _ => println!("soak: no plot (matplotlib unavailable); samples in {}", out.join("samples.csv").display()),
    }
}
