//! The agent binary end to end against real daemons: `agent run` on a real dockerd and
//! containerd (started by `test_support::runtimes`), queried by the CLI (`workload-list`,
//! `tagger-list`, `health`, `status`, `config`), a container removed and seen gone, SIGTERM
//! stopping it within 5 s. Under `cargo xtask ci` it never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use test_support::runtimes::{Runtimes, start_or_skip};

fn free_port() -> u16 {
    test_support::runtimes::free_port().unwrap()
}

fn agent(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent")).arg("--config").arg(config).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `agent <args>` until its output satisfies `check`, for up to 20 s.
fn until(config: &Path, args: &[&str], what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = stdout(&agent(config, args));
        if check(&out) {
            return out;
        }
        assert!(Instant::now() < deadline, "{what}: not within 20 s; last output of agent {args:?}:\n{out}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn docker(rt: &Runtimes, args: &[&str]) -> String {
    let out = rt.docker(args).unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    stdout(&out).trim().to_owned()
}

#[test]
fn the_agent_binary_against_real_daemons_queried_by_its_cli() {
    let Some(rt) = start_or_skip("the_agent_binary_against_real_daemons_queried_by_its_cli") else { return };
    let dir = rt.dir().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent.yaml");
    let (grpc, http) = (free_port(), free_port());
    std::fs::write(
        &config,
        format!(
            "cmd_port: {grpc}\nhealth_port: {http}\ndocker_host: {}\ncri_socket_path: {}\n\
             autoconfig_exclude_features: [podman, kubernetes]\ncontainer_labels_as_tags:\n  team: team\n",
            rt.docker_host(),
            rt.containerd_socket().display()
        ),
    )
    .unwrap();
    let web = docker(
        &rt,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "none",
            "--label",
            "team=frontend",
            "-e",
            "DD_ENV=prod",
            Runtimes::IMAGE,
            "sleep",
            "300",
        ],
    );
    let child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("DD_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let ctr = rt
        .ctr(
            Runtimes::CTR_NAMESPACE,
            &["run", "-d", "--label", "team=batch", Runtimes::CTR_IMAGE, "job", "/bin/sleep", "300"],
        )
        .unwrap();
    assert!(ctr.status.success(), "{}", String::from_utf8_lossy(&ctr.stderr));
    let db = docker(
        &rt,
        &["run", "-d", "--name", "db", "--network", "none", "--label", "team=storage", Runtimes::IMAGE, "sleep", "300"],
    );

    let list = until(&config, &["workload-list"], "all three containers", |out| {
        out.contains(&format!("id: {web} ===")) && out.contains(&format!("id: {db} ===")) && out.contains("id: job ===")
    });
    assert!(list.contains(&format!("=== Entity container sources(merged):[runtime] id: {web} ===")));
    assert!(list.contains("----------- Container Info -----------\nRuntime: docker\nRunning: true\n"));
    assert!(list.contains("Runtime: containerd"));
    println!("agent workload-list:\n{list}");
    let verbose = stdout(&agent(&config, &["workload-list", "-v"]));
    assert!(verbose.contains("=== Entity container source:runtime id: ") && verbose.contains("DD_ENV: prod"));
    let tags = until(&config, &["tagger-list"], "tags of the three", |out| {
        out.contains("team:frontend") && out.contains("team:storage") && out.contains("team:batch")
    });
    assert!(
        tags.contains(&format!("=== Entity container_id://{web} ===\n== Source workloadmeta-container =\n=Tags: ["))
    );
    assert!(tags.contains("env:prod"));
    println!("agent tagger-list:\n{tags}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&agent(&config, &["tagger-list", "--json"]))).unwrap();
    assert!(json["entities"][format!("container_id://{web}")]["workloadmeta-container"].is_array());

    let health = agent(&config, &["health"]);
    assert!(health.status.success(), "{}", stdout(&health));
    assert!(stdout(&health).contains("docker [runtime]: running, synced"));
    let status = stdout(&agent(&config, &["status"]));
    assert!(status.contains("container: 3"), "{status}");
    let shown = stdout(&agent(&config, &["config"]));
    assert!(shown.contains(&format!("cmd_port: {grpc}  # file {}", config.display())));
    assert!(
        shown.contains("log_level: \"warn\"  # env DD_LOG_LEVEL") || shown.contains("log_level: \"info\"  # default")
    );

    // Removed: gone from both lists.
    docker(&rt, &["rm", "-f", &db]);
    until(&config, &["workload-list"], "the removed container gone", |out| !out.contains(&db) && out.contains(&web));
    // The tagger keeps a deleted entity's tags for the grace period; the store has it gone.

    // SIGTERM stops it within 5 s.
    let pid = running.0.id().to_string();
    let asked = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            break status;
        }
        assert!(asked.elapsed() < Duration::from_secs(5), "agent still running 5 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "agent exited with {status}");
    println!("agent stopped {:?} after SIGTERM", asked.elapsed());
    let after = agent(&config, &["status"]);
    assert!(!after.status.success());
    assert!(String::from_utf8_lossy(&after.stderr).contains("no agent answers on"));
}
