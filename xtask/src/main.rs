//! The project's tasks, run as `cargo xtask <task>`:
//!
//! - `ci`: everything CI checks: formatting, clippy with warnings denied, the layer check, commit
//!   subjects of at most 72 characters since `SUBJECTS_SINCE`, every
//!   test (the binaries three at a time, then doctests), and the docs with warnings denied. Installs what the workspace
//!   needs from Debian first when it is missing.
//! - `demo`: the main job: real runtimes up, a few labelled containers, the agent against them,
//!   `agent workload-list` and `agent tagger-list` printed, the cluster agent asked what a Datadog
//!   node agent asks, one container removed and shown gone, everything torn down (root; installs
//!   what it misses from Debian).
//! - `image`: builds the release agent and its container image, an OCI archive for `ctr images
//!   import` (also part of `ci`: the DaemonSet test runs it on the real cluster).
//! - `fuzz [--seconds N] [--parallel J]`: every fuzz target of `fuzz/` (cargo-fuzz, libFuzzer,
//!   nightly) for N seconds (60), J at a time (1), seeded with the test data; the crashes it
//!   finds are kept in `fuzz/regressions` and replayed by every run (a short pass of 10 s each,
//!   two at a time, is part of `ci`).
//! - `soak [--minutes M] [--containers N] [--warmup W]`: the release agent on real daemons under
//!   churn for M minutes (30) with N live containers (30; half in each runtime), sampled every
//!   10 s and checked every minute; growth is judged after W minutes of warm-up (10); report,
//!   CSV and plot in `<target dir>/soak` (root).
//! - `flavors`: builds agent-bin's flavors and each collector feature on its own, and checks that
//!   `flavor-light` pulls none of the collectors' client libraries (also part of `ci`).
//! - `layers`: the layer check of STYLE.md alone.
//! - `bench [--quick]`: the benchmarks of BENCHMARKS.md, one line each.
//!
//! xtask depends on no workspace crate, so it builds (and can install prerequisites) first.

#![forbid(unsafe_code)]

mod layers;
mod testrun;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, bail};

/// Tools the workspace's build or tests need, with the Debian package that brings each:
/// `protoc` for the build scripts of containerd-client and wm-ipc, and the real runtimes the
/// collector tests run against (`test_support::{runtimes, podman, kubernetes}` start them; keep
/// their lists and this one in step). The Kubernetes components are built with the machine's
/// own Go by the tooling, cached in `~/.cache/wm-k8s`.
const DEBIAN_TOOLS: &[(&str, &str)] = &[
    ("protoc", "protobuf-compiler"),
    ("containerd", "containerd"),
    ("runc", "runc"),
    ("dockerd", "docker.io"),
    ("busybox", "busybox-static"),
    ("podman", "podman"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("ip", "iproute2"),
    ("curl", "curl"),
    // The agent's image (strip) and the systemd unit's check.
    ("strip", "binutils"),
    ("systemd-analyze", "systemd"),
];

/// Benchmarks: (package, bench target, the features it needs beyond the defaults). Each prints
/// its own `name ours baseline ratio target verdict` line.
const BENCHES: &[(&str, &str, &str)] = &[
    ("wm-store", "fanout", ""),
    ("tagger", "lookup", ""),
    ("agent-bin", "memory", ""),
    ("wm-collector-docker", "docker", ""),
    ("wm-collector-podman", "podman", ""),
    ("wm-collector-process", "process", ""),
    ("wm-collector-kube", "pull", ""),
    ("agent-bin", "rss", ""),
    ("agent-bin", "conn_flood", ""),
    ("agent-bin", "python_tag", ""),
    ("agent-bin", "scale", ""),
    ("agent-bin", "churn", ""),
    ("agent-bin", "kube_tag_latency", ""),
    ("agent-bin", "containerd_scale", ""),
    ("agent-bin", "cluster", "cluster-agent"),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("demo") => demo(),
        Some("flavors") => flavors(),
        Some("image") => image().map(drop),
        Some("soak") => flag(&args, "--minutes", 30.0)
            .and_then(|m| soak(m, flag(&args, "--containers", 30)?, flag(&args, "--warmup", 10.0)?)),
        Some("fuzz") => flag(&args, "--seconds", 60).and_then(|s| fuzz(s, flag(&args, "--parallel", 1)?)),
        Some("layers") => layers(),
        Some("bench") => bench(args.iter().any(|a| a == "--quick")),
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | demo | image | fuzz [--seconds N] [--parallel J] | soak [--minutes M] [--containers N] [--warmup W] | flavors | layers | bench [--quick]>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The value after `name` in `args`, or `default` without it.
fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> anyhow::Result<T> {
    match args.iter().position(|a| a == name) {
        Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()).with_context(|| format!("{name} takes a number")),
        None => Ok(default),
    }
}

/// The workspace root. Read at run time: `cargo run` sets `CARGO_MANIFEST_DIR` for the process,
/// while the compile-time value may name another clone that shares the build cache.
fn root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn run(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    println!("==> {what}");
    let started = Instant::now();
    let status = cmd.status().with_context(|| format!("{what}: could not start {cmd:?}"))?;
    println!("<== {what}: {} in {:.0?}", if status.success() { "ok" } else { "FAILED" }, started.elapsed());
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn have(binary: &str) -> bool {
    if binary.starts_with('/') {
        return Path::new(binary).is_file();
    }
    Command::new("sh").arg("-c").arg(format!("command -v {binary}")).output().is_ok_and(|o| o.status.success())
}

/// Installs the Debian packages of missing tools (as root; `apt-get update` first).
fn ensure_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_TOOLS.iter().filter(|(bin, _)| !have(bin)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    run("apt-get update", Command::new("apt-get").args(["update", "-qq"]))?;
    run(
        &format!("apt-get install {}", missing.join(" ")),
        Command::new("apt-get").args(["install", "-y", "-qq", "--no-install-recommends"]).args(&missing),
    )
}

fn ci() -> anyhow::Result<()> {
    let started = Instant::now();
    ensure_tools()?;
    run("fmt", cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(
        "clippy",
        cargo()
            .args(["clippy", "--workspace", "--all-targets", "--quiet"])
            .args(TEST_FEATURES)
            .args(["--", "-D", "warnings"]),
    )?;
    layers()?;
    commit_subjects()?;
    flavors()?;
    // The DaemonSet test deploys this image (the release build) on the real cluster.
    let image = image()?;
    // WM_CI tells daemon-backed tests that skipping is not allowed here.
    let env = [("WM_CI", "1".into()), ("WM_AGENT_IMAGE", image.into_os_string())];
    testrun::run(&root(), &target_dir()?, TEST_FEATURES, &env, TEST_LANES)?;
    run("doctests", cargo().args(["test", "--workspace", "--doc", "--quiet"]).args(TEST_FEATURES))?;
    let mut docs = cargo();
    docs.args(["doc", "--workspace", "--no-deps", "--quiet"]).args(TEST_FEATURES).env("RUSTDOCFLAGS", "-D warnings");
    run("docs", &mut docs)?;
    // Two at a time: each target is one CPU-bound process, and the machine has two cores.
    fuzz(10, 2)?;
    println!("ci: every step passed in {:.0?}", started.elapsed());
    Ok(())
}

/// How many test binaries run at once: most wait on real daemons, not on the two cores.
const TEST_LANES: usize = 3;

/// Features the linted and tested build adds to the defaults: what no default flavor links
/// (Cloud Foundry's collector is in `flavor-cf` only, `agent cluster-agent` in `flavor-cluster`
/// only), so their code and their agent tests run too.
const TEST_FEATURES: &[&str] = &["--features", "agent-bin/cf,agent-bin/cluster-agent"];

/// Third-party client libraries of the collectors, which `flavor-light` must not pull in either.
const COLLECTOR_CLIENT_LIBRARIES: &[&str] =
    &["bollard", "bollard-stubs", "kube", "kube-client", "kube-core", "k8s-openapi", "containerd-client"];

/// `cargo metadata` of the workspace, dependencies resolved or not.
fn metadata(no_deps: bool) -> anyhow::Result<serde_json::Value> {
    let mut cmd = cargo();
    cmd.args(["metadata", "--format-version", "1"]);
    if no_deps {
        cmd.arg("--no-deps");
    }
    let output = cmd.output().context("could not run cargo metadata")?;
    if !output.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    serde_json::from_slice(&output.stdout).context("cargo metadata printed bad JSON")
}

/// agent-bin's features (each flavor and each collector, `default` aside) and the collector
/// crates its features can pull in, read from its manifest: adding a collector's feature is all
/// it takes for the flavor checks to build it alone and keep it out of `flavor-light`.
fn agent_features(metadata: &serde_json::Value) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let agent = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "agent-bin")
        .context("no agent-bin package in the workspace")?;
    let features = agent["features"].as_object().context("agent-bin has no features")?;
    let sets = features.keys().filter(|f| *f != "default").cloned().collect();
    let collectors: std::collections::BTreeSet<String> = features
        .values()
        .flat_map(|enables| enables.as_array().into_iter().flatten())
        .filter_map(|e| e.as_str()?.strip_prefix("dep:"))
        .filter(|dep| dep.starts_with("wm-collector-"))
        .map(str::to_owned)
        .collect();
    Ok((sets, collectors.into_iter().collect()))
}

fn flavors() -> anyhow::Result<()> {
    let (feature_sets, collector_crates) = agent_features(&metadata(true)?)?;
    for features in &feature_sets {
        run(
            &format!("agent-bin with only --features {features}"),
            cargo().args(["check", "--quiet", "-p", "agent-bin", "--no-default-features", "--features", features]),
        )?;
    }
    let output = cargo()
        .args(["tree", "-p", "agent-bin", "--no-default-features", "--features", "flavor-light"])
        .args(["-e", "normal,build", "--prefix", "none"])
        .output()
        .context("could not run cargo tree")?;
    if !output.status.success() {
        bail!("cargo tree failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let tree = String::from_utf8_lossy(&output.stdout);
    let crates: std::collections::BTreeSet<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    let forbidden: Vec<&str> =
        collector_crates.iter().map(String::as_str).chain(COLLECTOR_CLIENT_LIBRARIES.iter().copied()).collect();
    let found: Vec<&&str> = forbidden.iter().filter(|c| crates.contains(**c)).collect();
    if !found.is_empty() {
        bail!("flavor-light pulls in {found:?}; it must link no collector nor any collector's client library");
    }
    println!("<== flavor-light: {} crates in its tree, none of {}", crates.len(), forbidden.join(", "));
    Ok(())
}

/// The build's target directory, from cargo itself (it honours `CARGO_TARGET_DIR`).
fn target_dir() -> anyhow::Result<PathBuf> {
    metadata(true)?["target_directory"].as_str().map(PathBuf::from).context("cargo metadata has no target_directory")
}

/// The fuzz targets, each with the test data it starts from (files, or directories of files;
/// `fuzz/seeds/<target>` too).
const FUZZ_TARGETS: &[(&str, &[&str])] = &[
    ("image_ref", &[]),
    ("cgroup", &["testdata/fixtures/cgroup"]),
    ("kubelet_pods", &["testdata/fixtures/kubelet"]),
    ("ecs", &["testdata/fixtures/ecs"]),
    ("garden", &[]),
    ("cloud_controller", &[]),
    ("docker_inspect", &[]),
    ("libpod_inspect", &[]),
    ("containerd_record", &[]),
    ("config", &[]),
    ("wire_entities", &[]),
];

/// Installs cargo-fuzz when it is missing (from crates.io).
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let found = Command::new("rustup").args(["run", "nightly", "cargo", "fuzz", "--version"]).output();
    if found.is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    run("install cargo-fuzz", Command::new("cargo").args(["install", "--locked", "--quiet", "cargo-fuzz"]))
}

/// Seeds `corpus` with the target's test data (the files of the directories named, and
/// `fuzz/seeds/<target>`), and the image references the conformance scenarios name.
fn seed_corpus(target: &str, sources: &[&str], corpus: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(corpus)?;
    let root = root();
    let mut files = Vec::new();
    for source in sources.iter().map(|s| root.join(s)).chain([root.join("fuzz/seeds").join(target)]) {
        if source.is_dir() {
            files.extend(std::fs::read_dir(&source)?.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        } else if source.is_file() {
            files.push(source);
        }
    }
    for file in &files {
        let name = format!("seed-{}", file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        std::fs::copy(file, corpus.join(name))?;
    }
    let mut count = files.len();
    if target == "image_ref" {
        for entry in std::fs::read_dir(root.join("testdata/conformance"))?.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            for (i, image) in text.split("image: ").skip(1).enumerate() {
                let value: String =
                    image.trim_start_matches('"').chars().take_while(|c| !matches!(c, '"' | ',' | '}')).collect();
                std::fs::write(corpus.join(format!("seed-conformance-{i}")), value.trim())?;
                count += 1;
            }
        }
    }
    Ok(count)
}

/// Runs every fuzz target for `seconds`, `parallel` at a time, after replaying its kept
/// regressions; a crash is copied into `fuzz/regressions/<target>` (commit it with the fix) and
/// fails the run.
///
/// The targets are built without AddressSanitizer: every crate of the workspace forbids
/// `unsafe`, so it would only watch the dependencies. It cost 110 s of a 265 s rebuild after a
/// change to `wm-core`, and it made the runs six times fewer (wire_entities: 0.34 million runs
/// in 10 s with it, 2.1 million without). A panic, a stack overflow, a timeout and the RSS limit are
/// still caught.
fn fuzz(seconds: u64, parallel: usize) -> anyhow::Result<()> {
    ensure_cargo_fuzz()?;
    let target_dir = target_dir()?;
    run(
        "build the fuzz targets",
        Command::new("rustup")
            .current_dir(root())
            .args(["run", "nightly", "cargo", "fuzz", "build", "--sanitizer", "none", "--target-dir"])
            .arg(target_dir.join("fuzz")),
    )?;
    let mut failed = Vec::new();
    for batch in FUZZ_TARGETS.chunks(parallel.max(1)) {
        let mut running = Vec::new();
        for (target, sources) in batch {
            let corpus = target_dir.join("fuzz-corpus").join(target);
            let seeds = seed_corpus(target, sources, &corpus)?;
            let regressions = root().join("fuzz/regressions").join(target);
            std::fs::create_dir_all(&regressions)?;
            let artifacts = target_dir.join("fuzz-artifacts").join(target);
            let _ = std::fs::remove_dir_all(&artifacts);
            std::fs::create_dir_all(&artifacts)?;
            let log = target_dir.join("fuzz-artifacts").join(format!("{target}.log"));
            println!(
                "==> fuzz {target} ({seconds} s; {seeds} seeds, {} kept regressions; log {})",
                std::fs::read_dir(&regressions)?.count(),
                log.display()
            );
            let child = Command::new("rustup")
                .current_dir(root())
                .args(["run", "nightly", "cargo", "fuzz", "run", "--sanitizer", "none", "--target-dir"])
                .arg(target_dir.join("fuzz"))
                .arg(target)
                .arg(&corpus)
                .arg(&regressions)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg(format!("-artifact_prefix={}/", artifacts.display()))
                .args(["-print_final_stats=1", "-rss_limit_mb=4096", "-timeout=10"])
                .stdout(std::fs::File::create(&log)?)
                .stderr(std::fs::File::create(log.with_extension("err"))?)
                .spawn()
                .with_context(|| format!("fuzz {target}: could not start cargo fuzz"))?;
            running.push((*target, child, artifacts, regressions, log.with_extension("err")));
        }
        for (target, mut child, artifacts, regressions, err) in running {
            let status = child.wait()?;
            let said = std::fs::read_to_string(&err).unwrap_or_default();
            let stat =
                |name: &str| said.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("?").to_owned();
            let coverage =
                said.lines().rev().find_map(|l| l.split(" cov: ").nth(1)?.split_whitespace().next()).unwrap_or("?");
            println!(
                "<== fuzz {target}: {} — {} runs, coverage {coverage}, peak RSS {} MB",
                if status.success() { "ok" } else { "CRASHED" },
                stat("stat::number_of_executed_units:"),
                stat("stat::peak_rss_mb:"),
            );
            if !status.success() {
                for crash in std::fs::read_dir(&artifacts)?.flatten() {
                    let kept = regressions.join(crash.file_name());
                    std::fs::copy(crash.path(), &kept)?;
                    eprintln!("fuzz: {target}: crash kept as {} (its output: {})", kept.display(), err.display());
                }
                failed.push(target);
            }
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets crashed: {failed:?} (inputs kept in fuzz/regressions)");
    }
    Ok(())
}

/// Runs agent-bin's `soak` example against the release agent for `minutes`, with `containers`
/// live containers and its growth judged after `warmup` minutes.
///
/// The agent is built with `alloc-stats`, so that the soak samples its live heap bytes beside
/// its RSS.
fn soak(minutes: f64, containers: usize, warmup: f64) -> anyhow::Result<()> {
    ensure_tools()?;
    release_agent("build the release agent, counting its allocations", "alloc-stats")?;
    let target = target_dir()?;
    run(
        &format!("soak ({minutes} min, {containers} containers)"),
        cargo()
            .args(["run", "--release", "--quiet", "-p", "agent-bin", "--example", "soak", "--"])
            .arg(target.join("release/agent"))
            .arg(minutes.to_string())
            .arg(target.join("soak"))
            .arg(containers.to_string())
            .arg(warmup.to_string()),
    )
}

/// Builds the release agent and its container image (an OCI archive for `ctr images import`);
/// returns the archive's path. One image for the node agents and the cluster agent: the node
/// flavor and `agent cluster-agent`.
fn image() -> anyhow::Result<PathBuf> {
    release_agent("build the release agent", "cluster-agent")?;
    let target = target_dir()?;
    let out = target.join("wm-agent-image");
    run(
        "the agent's image",
        cargo()
            .args(["run", "--quiet", "-p", "agent-bin", "--example", "image", "--"])
            .arg(target.join("release/agent"))
            .arg(&out),
    )?;
    Ok(out.join("wm-agent-image.tar"))
}

fn demo() -> anyhow::Result<()> {
    ensure_tools()?;
    // With `agent cluster-agent` too (the demo runs both).
    run(
        "build the agent",
        cargo().args(["build", "--quiet", "-p", "agent-bin", "--bin", "agent", "--features", "cluster-agent"]),
    )?;
    let agent = target_dir()?.join("debug").join("agent");
    run("demo", cargo().args(["run", "--quiet", "-p", "agent-bin", "--example", "demo", "--"]).arg(agent))
}

/// The commit after which every subject keeps STYLE.md's rule (the ones before it did not).
const SUBJECTS_SINCE: &str = "c6f7b79";

/// The longest commit subject STYLE.md allows.
const MAX_SUBJECT: usize = 72;

/// Checks that every commit since [`SUBJECTS_SINCE`] has a subject of at most [`MAX_SUBJECT`]
/// characters (STYLE.md, Prose). A clone without that commit (shallow) skips, saying so.
fn commit_subjects() -> anyhow::Result<()> {
    println!("==> commit subjects");
    let range = format!("{SUBJECTS_SINCE}..HEAD");
    let output = Command::new("git").args(["log", "--format=%h %s", &range]).current_dir(root()).output();
    let output = match output {
        Ok(output) if output.status.success() => output,
        _ => {
            println!("<== commit subjects: skipped (no git history with {SUBJECTS_SINCE} here)");
            return Ok(());
        }
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let long: Vec<&str> =
        text.lines().filter(|l| l.split_once(' ').is_some_and(|(_, s)| s.chars().count() > MAX_SUBJECT)).collect();
    if !long.is_empty() {
        for line in &long {
            eprintln!("subject over {MAX_SUBJECT} characters: {line}");
        }
        bail!("{} commit subject(s) too long: keep the subject short, the why and figures in the body", long.len());
    }
    println!("<== commit subjects: ok ({} commits since {SUBJECTS_SINCE})", text.lines().count());
    Ok(())
}

fn layers() -> anyhow::Result<()> {
    println!("==> layers");
    let (members, edges) = layers::edges(&metadata(true)?)?;
    let problems = layers::check(&members, &edges);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("layer violation: {p}");
        }
        bail!("{} layer violation(s); the rules are in STYLE.md and xtask/src/layers.rs", problems.len());
    }
    println!("<== layers: ok ({} crates, {} dependency edges)", members.len(), edges.len());
    Ok(())
}

fn bench(quick: bool) -> anyhow::Result<()> {
    println!("name  ours  baseline  ratio  target  ok|MISS");
    for (package, target, features) in BENCHES {
        let mut cmd = cargo();
        cmd.args(["bench", "--quiet", "-p", package, "--bench", target]);
        if !features.is_empty() {
            cmd.args(["--features", features]);
        }
        cmd.arg("--");
        if quick {
            cmd.arg("--quick");
        }
        let status = cmd.status().with_context(|| format!("could not run bench {package}/{target}"))?;
        if !status.success() {
            bail!("bench {package}/{target} failed ({status})");
        }
    }
    Ok(())
}

/// Builds the release `agent` binary with the default features and `features`.
fn release_agent(what: &str, features: &str) -> anyhow::Result<()> {
    run(
        what,
        cargo().args(["build", "--release", "--quiet", "-p", "agent-bin", "--bin", "agent", "--features", features]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layer check as a plain test: `cargo test` enforces it too, not only `cargo xtask ci`.
    #[test]
    fn the_workspace_keeps_its_layers() {
        let (members, edges) = layers::edges(&metadata(true).unwrap()).unwrap();
        assert!(members.iter().any(|m| m == "wm-core") && edges.len() > 10, "{members:?}");
        assert_eq!(layers::check(&members, &edges), Vec::<String>::new());
    }

    #[test]
    fn the_style_guides_layer_table_names_every_crate() {
        let style = std::fs::read_to_string(root().join("docs/STYLE.md")).unwrap();
        let table = style.split("## Layers").nth(1).and_then(|t| t.split("```").nth(1)).expect("the layer table");
        let rows: Vec<&str> = table.lines().filter_map(|l| l.split_whitespace().next()).collect();
        let (members, _) = layers::edges(&metadata(true).unwrap()).unwrap();
        for member in &members {
            let named = rows.iter().any(|row| match row.strip_suffix('*') {
                Some(prefix) => member.starts_with(prefix),
                None => row == member,
            });
            assert!(named, "docs/STYLE.md's layer table does not name {member}: {rows:?}");
        }
    }

    #[test]
    fn the_flavor_checks_know_every_collector_feature_of_the_agent() {
        let (sets, collectors) = agent_features(&metadata(true).unwrap()).unwrap();
        for expected in [
            "flavor-node",
            "flavor-cluster",
            "flavor-light",
            "docker",
            "containerd",
            "podman",
            "process",
            "kube",
            "kube-metadata",
            "ecs",
            "cf",
            "remote",
            "flavor-cf",
        ] {
            assert!(sets.iter().any(|s| s == expected), "{expected} missing from {sets:?}");
        }
        assert!(!sets.iter().any(|s| s == "default"));
        for expected in [
            "wm-collector-docker",
            "wm-collector-containerd",
            "wm-collector-podman",
            "wm-collector-remote",
            "wm-collector-cf",
        ] {
            assert!(collectors.iter().any(|c| c == expected), "{expected} missing from {collectors:?}");
        }
    }
}
