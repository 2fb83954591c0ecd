//! Helpers shared by the agent's integration tests: an in-process agent on free ports, with
//! its store fed directly.

#![allow(dead_code)] // each test file uses some of them

use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_bin::config::AgentConfig;
use agent_bin::run::RunningAgent;
use agent_bin::security;
use wm_core::{CollectorEvent, Container, ContainerImage, Entity, Source, StrMap};
use wm_ipc::RemoteAgent;
use wm_store::Store;

pub fn free_port() -> u16 {
    test_support::runtimes::free_port().unwrap()
}

/// An agent config in `dir`: its own ports, token and certificate.
pub fn agent_config(dir: &Path, grpc: u16, http: u16) -> AgentConfig {
    std::fs::create_dir_all(dir).unwrap();
    let yaml = format!("cmd_port: {grpc}\nhealth_port: {http}\ncontainer_labels_as_tags:\n  team: team\n");
    let path = dir.join("agent.yaml");
    std::fs::write(&path, yaml).unwrap();
    agent_bin::load_config(Some(&path), Vec::new()).unwrap()
}

/// An in-process agent with no collector at all (whatever this build compiles in): its store is
/// fed by the test, and no host daemon is ever reached.
pub async fn start(config: &AgentConfig) -> RunningAgent {
    agent_bin::run::start_with(config, Vec::new()).await.unwrap()
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wm-agent-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub fn container(id: &str, team: &str) -> Entity {
    let labels: StrMap = [("team", team)].into_iter().collect();
    Entity::from(Container {
        id: id.into(),
        name: format!("name-{id}").into(),
        labels,
        image: ContainerImage::parse("docker.io/library/nginx:1.25"),
        ..Container::default()
    })
}

pub fn big_container(id: &str) -> Entity {
    let labels: StrMap = (0..32).map(|i| (format!("label-{i}"), "x".repeat(128))).collect();
    Entity::from(Container { id: id.into(), name: format!("name-{id}").into(), labels, ..Container::default() })
}

pub async fn set(agent: &RunningAgent, entities: Vec<Entity>) {
    agent.store.notify(entities.into_iter().map(|e| CollectorEvent::set(Source::Runtime, e)).collect()).await;
}

pub fn remote(config: &AgentConfig, grpc: u16, token: Option<&str>) -> RemoteAgent {
    let real = std::fs::read_to_string(config.auth_token_path()).unwrap();
    RemoteAgent {
        address: format!("localhost:{grpc}"),
        token: token.unwrap_or(real.trim()).to_owned(),
        cert: security::load_or_create_cert(&config.ipc_cert_path()).unwrap(),
        token_file: None,
        cert_file: None,
    }
}

pub async fn eventually(what: &str, check: impl FnMut() -> bool) {
    test_support::watch::eventually(what, Duration::from_secs(15), check).await;
}

pub fn ids(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|i| format!("container_id://{i}")).collect()
}

pub fn mirrored(store: &Store) -> Vec<String> {
    let mut ids: Vec<String> = store.list_containers().iter().map(|c| c.id.to_string()).collect();
    ids.sort();
    ids
}

/// The tooling's virtualenv (`~/.cache/wm-pyenv`) with `packages` installed, made on first use;
/// ready when `python -c "import <modules>"` works. Its python.
pub fn python_venv(modules: &str, packages: &[&str]) -> Result<PathBuf, String> {
    use std::process::Command;
    let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
    let venv = Path::new(&home).join(".cache/wm-pyenv");
    let python = venv.join("bin/python");
    let import = format!("import {modules}");
    let ready = |p: &Path| Command::new(p).args(["-c", &import]).output().is_ok_and(|o| o.status.success());
    if ready(&python) {
        return Ok(python);
    }
    // Test binaries run at once: without this lock, one finds the `python` link of a venv that
    // another is still creating, and no `pip` beside it yet.
    std::fs::create_dir_all(Path::new(&home).join(".cache")).map_err(|e| format!("~/.cache: {e}"))?;
    let lock_path = Path::new(&home).join(".cache/wm-pyenv.lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock().map_err(|e| format!("{}: {e}", lock_path.display()))?;
    if ready(&python) {
        return Ok(python);
    }
    if !venv.join("bin/pip").exists() {
        let out =
            Command::new("python3").arg("-m").arg("venv").arg(&venv).output().map_err(|e| format!("python3: {e}"))?;
        if !out.status.success() {
            return Err(format!("python3 -m venv failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    let out = Command::new(venv.join("bin/pip"))
        .args(["install", "-q"])
        .args(packages)
        .output()
        .map_err(|e| format!("pip: {e}"))?;
    if !out.status.success() || !ready(&python) {
        return Err(format!("pip install {} failed: {}", packages.join(" "), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(python)
}

/// Generates Python gRPC stubs from our `.proto` files into `out`, with the virtualenv's
/// `grpc_tools`.
pub fn generate_stubs(python: &Path, out: &Path) {
    std::fs::create_dir_all(out).unwrap();
    // Our .proto files live with the wire format, in wm-ipc.
    let proto = test_support::testdata::workspace_root().join("crates/wm-ipc/proto");
    let status = std::process::Command::new(python)
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", proto.display()))
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args(["datadog/api/v1/api.proto", "datadog/model/v1/model.proto", "datadog/workloadmeta/workloadmeta.proto"])
        .current_dir(&proto)
        .status()
        .unwrap();
    assert!(status.success(), "grpc_tools.protoc failed on our .proto files");
}

/// The start of every Python gRPC client script of the tests: the stubs of our `.proto` files
/// imported (`api_pb2_grpc`, `model_pb2`, `wm` for workloadmeta), a TLS channel that trusts the
/// agent's IPC certificate (and presents it, as Datadog's clients do), `stub`, and `auth`, the
/// bearer token's metadata. [`run_grpc_script`] gives it what it reads from the environment.
pub const GRPC_PRELUDE: &str = r#"
import os, sys, grpc
sys.path.insert(0, os.environ["STUBS"])
from datadog.api.v1 import api_pb2_grpc
from datadog.model.v1 import model_pb2
from datadog.workloadmeta import workloadmeta_pb2 as wm

pem = open(os.environ["CERT"], "rb").read()
end = pem.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----\n")
cert, key = pem[:end], pem[end:]
creds = grpc.ssl_channel_credentials(root_certificates=cert, private_key=key, certificate_chain=cert)
stub = api_pb2_grpc.AgentSecureStub(grpc.secure_channel("localhost:" + os.environ["PORT"], creds))
auth = [("authorization", "Bearer " + os.environ["TOKEN"])]
"#;

/// Runs [`GRPC_PRELUDE`] then `body` with `python`, against the agent of `config` on its gRPC
/// `port`, with the stubs in `stubs`; its output.
pub async fn run_grpc_script(
    python: &Path,
    body: &str,
    stubs: &Path,
    config: &AgentConfig,
    port: u16,
) -> std::process::Output {
    let token = std::fs::read_to_string(config.auth_token_path()).unwrap();
    tokio::process::Command::new(python)
        .arg("-c")
        .arg(format!("{GRPC_PRELUDE}{body}"))
        .env("STUBS", stubs)
        .env("CERT", config.ipc_cert_path())
        .env("PORT", port.to_string())
        .env("TOKEN", token.trim())
        .output()
        .await
        .unwrap()
}
