//! The `agent` binary on bad input: what it says and how it exits (no daemons needed).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wm-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn agent(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent")).arg("--config").arg(config).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn free_port() -> u16 {
    test_support::runtimes::free_port().unwrap()
}

#[test]
fn a_string_where_a_bool_goes_refuses_to_start_naming_key_value_and_expectation() {
    let d = dir("bool");
    let config = d.join("agent.yaml");
    std::fs::write(&config, "log_format_json: \"no\"\n").unwrap();
    let out = agent(&config, &["run"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "agent: config: key `log_format_json` (file {}) is the string \"no\"; expected a boolean (true or false)",
            config.display()
        )
    );
    std::fs::write(&config, "log_format_json: false\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("--config")
        .arg(&config)
        .arg("status")
        .env("DD_CMD_PORT", "http")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("`cmd_port` (env DD_CMD_PORT) is the text \"http\""), "{}", stderr(&out));
}

#[test]
fn a_missing_token_file_directory_refuses_to_start_naming_it_and_its_key() {
    let d = dir("token");
    let config = d.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "auth_token_file_path: {}/missing/auth_token\ncmd_port: {}\nhealth_port: {}\ndocker_host: unix:///nonexistent\n",
            d.display(),
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let out = agent(&config, &["run"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.contains(&format!(
            "auth token file {}/missing/auth_token: its directory {}/missing does not exist",
            d.display(),
            d.display()
        )) && text.contains("set auth_token_file_path"),
        "{text}"
    );
    assert!(!text.contains("panicked"));
}

#[test]
fn an_unknown_key_is_a_warning_and_the_agent_runs_and_stops_on_sigterm() {
    let d = dir("unknown");
    let config = d.join("agent.yaml");
    let http = free_port();
    std::fs::write(
        &config,
        format!(
            "cmd_prot: 5001\ncmd_port: {}\nhealth_port: {http}\nautoconfig_exclude_features: [docker, containerd, podman, kubernetes]\n",
            free_port()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !agent(&config, &["health"]).status.success() {
        assert!(Instant::now() < deadline, "the agent did not become healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    let query = agent(&config, &["status"]);
    assert!(stderr(&query).contains("warning: config: unknown key `cmd_prot`"));
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(asked.elapsed() < Duration::from_secs(5), "still running 5 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("unknown key `cmd_prot`"), "{log}");
    assert!(!log.contains("panicked"));
}

#[test]
fn queries_without_a_running_agent_say_so_and_fail() {
    let d = dir("none");
    let config = d.join("agent.yaml");
    let (port, api) = (free_port(), free_port());
    std::fs::write(&config, format!("health_port: {port}\ncmd_port: {api}\n")).unwrap();
    for command in ["workload-list", "tagger-list", "status", "health", "config"] {
        let out = agent(&config, &[command]);
        assert_eq!(out.status.code(), Some(1), "{command}");
        let text = stderr(&out);
        // The probes' plain port for health, the TLS API beside gRPC for the rest.
        let url =
            if command == "health" { format!("http://127.0.0.1:{port}/") } else { format!("https://127.0.0.1:{api}/") };
        assert!(text.starts_with(&format!("agent: no agent answers on {url}")), "{command}: {text}");
        assert!(text.contains("is `agent run` running"), "{text}");
    }
}

#[cfg(feature = "jemalloc")]
#[test]
fn the_binary_allocates_through_jemalloc_with_its_built_in_settings() {
    // jemalloc prints the settings it read when `confirm_conf` is set; glibc ignores the variable.
    let out = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("--version")
        .env("MALLOC_CONF", "confirm_conf:true")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = stderr(&out);
    assert!(text.contains("<jemalloc>") && text.contains("narenas:1") && text.contains("tcache_max:1024"), "{text}");
    assert!(text.contains("dirty_decay_ms:0") && text.contains("muzzy_decay_ms:0"), "{text}");
}
