//! What the benchmarks share: waiting for a store's first complete snapshot, percentiles, a
//! daemon's pace as it fills, and the agent binary's resident memory.

use wm_core::{EventType, Filter, Kind, SubscriberPriority};
use wm_store::{Store, Subscription};

/// Subscribes to `store`'s entities of `kind`, starts the store, and returns once `count` `Set`
/// events have arrived: the complete snapshot the sync benchmarks time. The subscription is
/// returned still open, for a caller that goes on watching.
///
/// # Panics
///
/// Panics when the subscription ends or fails first.
pub async fn start_until_sets(store: &Store, kind: Kind, count: usize) -> Subscription {
    let mut sub = store.subscribe("bench", SubscriberPriority::Normal, Filter::all().with_kind(kind));
    store.start();
    let mut seen = 0;
    while seen < count {
        let bundle = match sub.recv().await {
            Some(Ok(bundle)) => bundle,
            other => panic!("the subscription ended after {seen} of {count} sets: {other:?}"),
        };
        seen += bundle.events.iter().filter(|e| e.event_type == EventType::Set).count();
    }
    sub
}

/// Tells how a daemon's pace changed as it filled: the rate of each successive `chunk` of
/// operations (creates, say), from the instants they completed after `started`, in order, as
/// `0-2000: 260/s, 2000-4000: 251/s, …`.
pub fn pace_by_chunk(started: std::time::Instant, mut done: Vec<std::time::Instant>, chunk: usize) -> String {
    done.sort();
    let mut from = started;
    let mut parts = Vec::new();
    for (i, part) in done.chunks(chunk.max(1)).enumerate() {
        let Some(&end) = part.last() else { continue };
        let secs = end.saturating_duration_since(from).as_secs_f64().max(1e-6);
        parts.push(format!("{}-{}: {:.0}/s", i * chunk, i * chunk + part.len(), part.len() as f64 / secs));
        from = end;
    }
    parts.join(", ")
}

/// Returns the `p`th percentile (nearest rank) of `sorted`, which must not be empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs the agent binary `binary` with a config written in `dir` (free ports, warnings-only
/// logs, then `collectors`: the YAML lines that point it at its daemons) until its `status` counts
/// exactly `containers` containers (with 0: until it answers and is ready), lets it sit idle for
/// `idle`, and returns its resident bytes; then stops it (SIGTERM).
///
/// # Panics
///
/// Panics when the config cannot be written, the agent cannot start, does not count them within
/// 300 s, or is gone when its memory is read.
pub fn agent_rss(
    binary: &std::path::Path,
    dir: &std::path::Path,
    collectors: &str,
    containers: usize,
    idle: std::time::Duration,
) -> u64 {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let port = || crate::runtimes::free_port().unwrap_or_else(|e| panic!("no free port: {e}"));
    let config = dir.join("agent.yaml");
    std::fs::create_dir_all(dir)
        .and_then(|()| {
            std::fs::write(
                &config,
                format!("cmd_port: {}\nhealth_port: {}\nlog_level: warn\n{collectors}", port(), port()),
            )
        })
        .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    let config = config.as_path();
    let child = Command::new(binary)
        .arg("--config")
        .arg(config)
        .arg("run")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(300);
    let wanted = format!("container: {containers}");
    loop {
        let out = Command::new(binary).arg("--config").arg(config).arg("status").output();
        if let Ok(out) = out
            && out.status.success()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            let counted = text.lines().any(|l| l.trim() == wanted);
            let ready = text.lines().any(|l| l.trim() == "Ready: true");
            if counted || (containers == 0 && ready) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the agent did not count {containers} containers within 300 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(idle);
    let Some(rss) = crate::procfs::rss_bytes(pid) else { panic!("the agent exited while idle") };
    crate::runtimes::terminate(child, Duration::from_secs(10));
    rss
}

/// The ids of the containers the agent binary `binary` with config file `config` stores, from
/// `agent workload-list --json`; `None` when the call fails or its answer does not parse.
pub fn stored_containers(
    binary: &std::path::Path,
    config: &std::path::Path,
) -> Option<std::collections::BTreeSet<String>> {
    let out = std::process::Command::new(binary)
        .arg("--config")
        .arg(config)
        .args(["workload-list", "--json"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let entities = value["entities"].as_object()?;
    Some(
        entities
            .values()
            .filter(|e| e["kind"] == "container")
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect(),
    )
}
