//! Runs the workspace's test binaries several at a time, and prints where the time went.
//!
//! `cargo test` runs one test binary after the other. Most of ours wait on real daemons and
//! real clusters, not on the CPU, so running a few side by side saves minutes even on two cores.
//! The binaries are built once (`cargo test --no-run`). The ones of [`FIRST`] run alone before
//! the others, under [`FIRST_DEADLINE`]; the rest run by `lanes` workers, longest first by the
//! times the last run recorded. Two groups run one binary at a time, each in a lane of its own
//! before that lane helps with the rest:
//! - the binaries that start the real Kubernetes cluster: clusters on one host share a bridge
//!   and a node name (`test_support::kubernetes` also takes a host-wide lock, so a binary
//!   missing from [`CLUSTER_TESTS`] still waits its turn, only holding a lane meanwhile);
//! - the other real-daemon binaries (`real_*`): one at a time, as `cargo test` ran them; they
//!   run beside the cluster lane, never beside each other.
//!
//! Each binary's output goes to `<target>/test-logs/<package>--<target>.log` and is printed when
//! it fails; a binary still running after [`BINARY_DEADLINE`] is killed and counts as failed.
//! At the end come the slowest binaries; every binary runs even after one failed.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Test binaries (`<package>::<target>`) that start the real Kubernetes cluster.
const CLUSTER_TESTS: &[&str] = &[
    "agent-bin::real_kubernetes_agent",
    "agent-bin::real_daemonset",
    "test-support::real_kubernetes",
    "wm-collector-kube::real_kube_metadata",
    "wm-collector-kube::real_kubelet",
];

/// Test binaries that run alone before every other: `test-support::go_peers` builds the Go
/// programs the cluster tests run (minutes on a fresh machine), which inside those tests counted
/// against each one's [`BINARY_DEADLINE`] and ran twice at once.
const FIRST: &[&str] = &["test-support::go_peers"];

/// How long a binary of [`FIRST`] may run. A fresh machine's build of Kubernetes, etcd,
/// kube-proxy and kwok took 486 s on two cores; a build five times as long means something is
/// wrong, and the run fails instead of waiting longer.
const FIRST_DEADLINE: Duration = Duration::from_secs(40 * 60);

/// How many slowest binaries the summary lists.
const SLOWEST_SHOWN: usize = 10;

/// How long one binary may run before it is killed and counted as failed: the slowest takes
/// about a minute and a half, so this only ever stops a binary that hangs.
const BINARY_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// One test binary cargo built.
#[derive(Debug, Clone)]
struct Binary {
    /// `<package>::<target>` (`::lib` for a library's unit tests).
    name: String,
    package: String,
    executable: PathBuf,
    /// The package's directory: cargo runs a test binary there and names it in
    /// `CARGO_MANIFEST_DIR`.
    package_dir: PathBuf,
}

/// How one binary ended.
#[derive(Debug)]
struct Outcome {
    name: String,
    passed: bool,
    took: Duration,
    log: PathBuf,
}

/// Builds every test binary of the workspace with `features`, then runs them `lanes` at a time
/// with `env` set.
pub fn run(
    root: &Path,
    target: &Path,
    features: &[&str],
    env: &[(&str, OsString)],
    lanes: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("==> tests: build");
    let binaries = build(root, features)?;
    println!("<== tests: build: {} binaries in {:.0?}", binaries.len(), started.elapsed());

    let times_file = target.join("test-times.tsv");
    let last = read_times(&times_file);
    let logs = target.join("test-logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;

    let (first, binaries): (Vec<Binary>, Vec<Binary>) =
        binaries.into_iter().partition(|b| FIRST.contains(&b.name.as_str()));
    let (cluster, others): (Vec<Binary>, Vec<Binary>) =
        binaries.into_iter().partition(|b| CLUSTER_TESTS.contains(&b.name.as_str()));
    let (daemons, mut others): (Vec<Binary>, Vec<Binary>) =
        others.into_iter().partition(|b| b.name.split("::").nth(1).is_some_and(|t| t.starts_with("real_")));
    // Longest first, so that no long binary starts last; an unknown one counts as long.
    let expected = |b: &Binary| last.get(&b.name).copied().unwrap_or(Duration::from_secs(60));
    others.sort_by_key(|b| std::cmp::Reverse(expected(b)));
    let total = |group: &[Binary]| group.iter().map(expected).sum::<Duration>();
    println!(
        "==> tests: run {} binaries, {lanes} lanes: {} cluster binaries ({:.0?} last time) in one, {} real-daemon \
         binaries ({:.0?}) in another",
        cluster.len() + daemons.len() + others.len(),
        cluster.len(),
        total(&cluster),
        daemons.len(),
        total(&daemons)
    );

    let run_started = Instant::now();
    let mut first_outcomes = Vec::new();
    for binary in first {
        let outcome = run_one(&binary, &logs, env, FIRST_DEADLINE);
        report(&outcome);
        first_outcomes.push(outcome);
    }
    let queue = Mutex::new(VecDeque::from(others));
    let outcomes = Mutex::new(first_outcomes);
    std::thread::scope(|scope| {
        let one = |binary: Binary| {
            let outcome = run_one(&binary, &logs, env, BINARY_DEADLINE);
            report(&outcome);
            outcomes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(outcome);
        };
        let queue = &queue;
        // Each group's lane: its binaries in turn, then whatever the queue still holds.
        for group in [cluster, daemons] {
            scope.spawn(move || {
                for binary in group {
                    one(binary);
                }
                drain(queue, one);
            });
        }
        for _ in 2..lanes {
            scope.spawn(move || drain(queue, one));
        }
    });
    let outcomes = outcomes.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);

    write_times(&times_file, &last, &outcomes);
    let mut slowest: Vec<&Outcome> = outcomes.iter().collect();
    slowest.sort_by_key(|o| std::cmp::Reverse(o.took));
    println!("tests: the slowest binaries");
    for o in slowest.iter().take(SLOWEST_SHOWN) {
        println!("  {:>6.1} s  {}", o.took.as_secs_f64(), o.name);
    }
    let serial: Duration = outcomes.iter().map(|o| o.took).sum();
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.passed).collect();
    println!(
        "<== tests: {} in {:.0?} ({} binaries, {:.0?} if run one after another)",
        if failed.is_empty() { "ok" } else { "FAILED" },
        run_started.elapsed(),
        outcomes.len(),
        serial
    );
    if !failed.is_empty() {
        for o in &failed {
            eprintln!("failed: {} (log: {})", o.name, o.log.display());
        }
        bail!("{} test binaries failed", failed.len());
    }
    Ok(())
}

/// Takes binaries off `queue` and runs each with `one` until the queue is empty.
fn drain(queue: &Mutex<VecDeque<Binary>>, one: impl Fn(Binary)) {
    loop {
        let next = queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop_front();
        match next {
            Some(binary) => one(binary),
            None => return,
        }
    }
}

/// Builds the test binaries and returns them, read from cargo's JSON messages.
fn build(root: &Path, features: &[&str]) -> anyhow::Result<Vec<Binary>> {
    let output = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(root)
        .args(["test", "--workspace", "--lib", "--bins", "--tests", "--no-run"])
        .args(["--message-format", "json-render-diagnostics"])
        .args(features)
        .stderr(Stdio::inherit())
        .output()
        .context("could not run cargo test --no-run")?;
    if !output.status.success() {
        bail!("building the tests failed ({})", output.status);
    }
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        let (Some(executable), Some(manifest)) = (message["executable"].as_str(), message["manifest_path"].as_str())
        else {
            continue;
        };
        let package_dir = Path::new(manifest).parent().map(Path::to_path_buf).unwrap_or_default();
        let package = package_name(message["package_id"].as_str().unwrap_or_default(), &package_dir);
        let kinds = message["target"]["kind"].as_array().cloned().unwrap_or_default();
        let target = if kinds.iter().any(|k| k == "lib" || k == "rlib" || k == "cdylib") {
            "lib".to_owned()
        } else {
            message["target"]["name"].as_str().unwrap_or("?").to_owned()
        };
        let name = format!("{package}::{target}");
        binaries.push(Binary { name, package, executable: executable.into(), package_dir });
    }
    if binaries.is_empty() {
        bail!("cargo built no test binary");
    }
    Ok(binaries)
}

/// Reads a package's name from cargo's package id (`path+file:///…/crates/tagger#0.0.0`, or
/// `…#name@0.0.0` when the folder is named otherwise); the folder's name if it says none.
fn package_name(package_id: &str, package_dir: &Path) -> String {
    match package_id.rsplit_once('#').and_then(|(_, tail)| tail.split_once('@')) {
        Some((name, _)) => name.to_owned(),
        None => package_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    }
}

/// Runs one binary as `cargo test` would (in its package's directory, with its package's
/// `CARGO_MANIFEST_DIR` and `CARGO_PKG_NAME`), its output to a log; kills it past `deadline`.
fn run_one(binary: &Binary, logs: &Path, env: &[(&str, OsString)], deadline: Duration) -> Outcome {
    let log = logs.join(format!("{}.log", binary.name.replace("::", "--")));
    let started = Instant::now();
    let passed = (|| -> anyhow::Result<bool> {
        let out = std::fs::File::create(&log)?;
        let mut child = Command::new(&binary.executable)
            .current_dir(&binary.package_dir)
            .env("CARGO_MANIFEST_DIR", &binary.package_dir)
            .env("CARGO_PKG_NAME", &binary.package)
            // `cargo xtask` set these for xtask itself: wrong for the binary, so not passed on.
            .env_remove("CARGO_MANIFEST_PATH")
            .env_remove("CARGO_CRATE_NAME")
            .env_remove("CARGO_PRIMARY_PACKAGE")
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            if started.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let mut log = std::fs::OpenOptions::new().append(true).open(&log)?;
                std::io::Write::write_all(&mut log, format!("killed after {deadline:?}\n").as_bytes())?;
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })()
    .unwrap_or_else(|e| {
        let _ = std::fs::write(&log, format!("could not run {}: {e:#}\n", binary.executable.display()));
        false
    });
    Outcome { name: binary.name.clone(), passed, took: started.elapsed(), log }
}

/// Prints one binary's end; a failure with its whole log.
fn report(outcome: &Outcome) {
    let verdict = if outcome.passed { "ok" } else { "FAILED" };
    let summary = std::fs::read_to_string(&outcome.log).unwrap_or_default();
    // libtest's own count: `test result: ok. 5 passed; 0 failed; 1 ignored; …`.
    let counts = summary
        .lines()
        .find_map(|l| l.strip_prefix("test result: "))
        .and_then(|r| r.split_once(". "))
        .map_or("no count", |(_, r)| r.split("; measured").next().unwrap_or(r));
    println!("<== {}: {verdict} in {:.1} s ({counts})", outcome.name, outcome.took.as_secs_f64());
    if !outcome.passed {
        println!("---- {} ----\n{summary}---- end of {} ----", outcome.name, outcome.name);
    }
}

/// Reads the times the last run recorded: `<seconds>\t<name>` per line.
fn read_times(file: &Path) -> BTreeMap<String, Duration> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (secs, name) = l.split_once('\t')?;
            Some((name.to_owned(), Duration::from_secs_f64(secs.parse().ok()?)))
        })
        .collect()
}

/// Records this run's times, keeping the last ones of binaries that did not run.
fn write_times(file: &Path, last: &BTreeMap<String, Duration>, outcomes: &[Outcome]) {
    let mut times = last.clone();
    for o in outcomes {
        times.insert(o.name.clone(), o.took);
    }
    let text: String = times.iter().map(|(name, took)| format!("{:.1}\t{name}\n", took.as_secs_f64())).collect();
    let _ = std::fs::write(file, text);
}
