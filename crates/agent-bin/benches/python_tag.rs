//! `python.tag` of BENCHMARKS.md: `tagger.tag(id, HIGH)` calls per second from Python (the
//! module of crates/tagger-python, built with maturin in release mode into the tooling's
//! virtualenv) against an in-process agent holding 1,000 tagged containers, versus a Python
//! dict lookup of the same tags in the same interpreter. Target ≥ 0.3× of the dict.

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failure aborts the run

use std::path::Path;
use std::process::Command;

use wm_core::{CollectorEvent, Container, ContainerImage, Entity, Source, StrMap};

const SCRIPT: &str = r#"
import os, time, tagger
assert tagger.connect(config=os.environ["AGENT_CONFIG"])
assert tagger.wait_ready(30.0)
ids = ["container_id://bench-%04d" % i for i in range(1000)]
deadline = time.time() + 30
while not all(tagger.tag(i, tagger.HIGH) for i in ids[-10:]) and time.time() < deadline:
    time.sleep(0.05)
data = {i: tagger.tag(i, tagger.HIGH) for i in ids}
assert all(data.values())
n = int(os.environ["CALLS"])
tag, HIGH = tagger.tag, tagger.HIGH
def ours():
    for k in range(n):
        tag(ids[k % 1000], HIGH)
def dict_lookup():
    for k in range(n):
        list(data[ids[k % 1000]])
best = {}
for name, f in [("ours", ours), ("dict", dict_lookup)] * 3:
    t = time.perf_counter(); f(); took = time.perf_counter() - t
    best[name] = min(best.get(name, took), took)
print(n / best["ours"], n / best["dict"])
"#;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let home = std::env::var_os("HOME").unwrap();
    let python = Path::new(&home).join(".cache/wm-pyenv/bin/python");
    let maturin = python.parent().unwrap().join("maturin");
    if !maturin.exists() {
        let _ = Command::new(python.parent().unwrap().join("pip")).args(["install", "-q", "maturin>=1.5,<2"]).status();
    }
    let dir = std::env::temp_dir().join(format!("wm-bench-py-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = test_support::testdata::workspace_root().join("crates/tagger-python/Cargo.toml");
    let built = Command::new(&maturin)
        .args(["build", "-q", "--release", "-m"])
        .arg(&manifest)
        .arg("-o")
        .arg(dir.join("wheels"))
        .arg("-i")
        .arg(&python)
        .output();
    let Some(wheel) = built.ok().filter(|o| o.status.success()).and_then(|_| {
        std::fs::read_dir(dir.join("wheels"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "whl"))
    }) else {
        println!("python.tag  -  -  -  >=0.3x  MISS (the module could not be built with maturin)");
        return;
    };
    let pip = python.parent().unwrap().join("pip");
    assert!(
        Command::new(pip)
            .args(["install", "-q", "--force-reinstall", "--no-deps"])
            .arg(&wheel)
            .status()
            .unwrap()
            .success()
    );

    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    tokio.block_on(async {
        let port = || test_support::runtimes::free_port().unwrap();
        let config = dir.join("agent.yaml");
        std::fs::write(
            &config,
            format!(
                "cmd_port: {}\nhealth_port: {}\nautoconfig_exclude_features: [docker, containerd, podman, kubernetes]\nlog_level: warn\ncontainer_labels_as_tags:\n  team: team\n",
                port(),
                port()
            ),
        )
        .unwrap();
        let agent_config = agent_bin::load_config(Some(&config), Vec::new()).unwrap();
        let agent = agent_bin::run::start_with(&agent_config, Vec::new()).await.unwrap();
        let events: Vec<CollectorEvent> = (0..1000)
            .map(|i| {
                let labels: StrMap = [("team", "bench")].into_iter().collect();
                let c = Container {
                    id: format!("bench-{i:04}").into(),
                    name: format!("bench-{i}").into(),
                    labels,
                    image: ContainerImage::parse("docker.io/library/nginx:1.25"),
                    ..Container::default()
                };
                CollectorEvent::set(Source::Runtime, Entity::from(c))
            })
            .collect();
        agent.store.notify(events).await;
        let calls = if quick { "100000" } else { "1000000" };
        let run = tokio::task::spawn_blocking({
            let (python, config) = (python.clone(), config.clone());
            move || Command::new(python).args(["-c", SCRIPT]).env("AGENT_CONFIG", config).env("CALLS", calls).output().unwrap()
        })
        .await
        .unwrap();
        agent.stop().await;
        let text = String::from_utf8_lossy(&run.stdout);
        let rates: Vec<f64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        match rates.as_slice() {
            [ours, dict] => {
                let ratio = ours / dict;
                let verdict = if ratio >= 0.3 { "ok" } else { "MISS" };
                println!(
                    "python.tag  {:.0} calls/s  {:.0} calls/s  {ratio:.2}x  >=0.3x  {verdict}  (1,000 containers, {calls} calls, best of 3)",
                    ours, dict
                );
            }
            _ => println!("python.tag  -  -  -  >=0.3x  MISS ({}{})", text, String::from_utf8_lossy(&run.stderr)),
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}
