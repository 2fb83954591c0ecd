//! The Python `tagger` module (crates/tagger-python) end to end: its wheel built with maturin and
//! installed in the tooling's virtualenv, then pytest (`crates/tagger-python/tests`) against
//! `agent run` on real dockerd and containerd with a container: `tag()` gives what
//! `agent tagger-list` prints, a container started a moment before is tagged at once (fetched on
//! the miss), `get_tags()` takes a bool or a cardinality, failures answer `[]`,
//! a stopped agent `[]`, a restarted one tags again without re-importing.
//!
//! The virtualenv is `~/.cache/wm-pyenv` (maturin and pytest installed there on first use).
//! Under `WM_CI=1` a failure to make it fails the test; elsewhere it prints `SKIPPED: <why>`.

#![cfg(all(feature = "docker", feature = "containerd"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use test_support::runtimes::{Runtimes, with_service};

/// The virtualenv's python, with maturin and pytest installed on first use.
fn python() -> Result<PathBuf, String> {
    support::python_venv("maturin, pytest", &["maturin>=1.5,<2", "pytest"])
}

/// Builds the module's wheel with maturin and installs it; the wheel's path.
fn install_wheel(python: &Path, out: &Path) -> PathBuf {
    let manifest = test_support::testdata::workspace_root().join("crates/tagger-python/Cargo.toml");
    let maturin = python.parent().unwrap().join("maturin");
    let built = Command::new(&maturin)
        .args(["build", "-q", "-m"])
        .arg(&manifest)
        .arg("-o")
        .arg(out)
        .arg("-i")
        .arg(python)
        .output()
        .unwrap();
    assert!(built.status.success(), "maturin build: {}", String::from_utf8_lossy(&built.stderr));
    let wheel = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("a wheel");
    let pip = python.parent().unwrap().join("pip");
    let installed =
        Command::new(pip).args(["install", "-q", "--force-reinstall", "--no-deps"]).arg(&wheel).output().unwrap();
    assert!(installed.status.success(), "pip install: {}", String::from_utf8_lossy(&installed.stderr));
    wheel
}

#[test]
fn pytest_of_the_tagger_module_against_the_agent_on_real_daemons() {
    let python = match python() {
        Ok(python) => python,
        Err(why) if test_support::runtimes::ci() => panic!("the Python tooling: {why}"),
        Err(why) => {
            println!("SKIPPED: the Python tooling: {why}");
            return;
        }
    };
    with_service("pytest_of_the_tagger_module", Runtimes::start, async |rt: &mut Runtimes| {
        let dir = rt.dir().join("python");
        std::fs::create_dir_all(&dir).unwrap();
        let wheel = tokio::task::block_in_place(|| install_wheel(&python, &dir.join("wheels")));
        let size = std::fs::metadata(&wheel).unwrap().len();
        println!("wheel {} ({size} bytes)", wheel.display());
        let out = rt
            .docker(&["run", "-d", "--network", "none", "--label", "team=py", Runtimes::IMAGE, "sleep", "300"])
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let port = || test_support::runtimes::free_port().unwrap();
        let config = dir.join("agent.yaml");
        std::fs::write(
            &config,
            format!(
                "cmd_port: {}\nhealth_port: {}\ndocker_host: {}\ncri_socket_path: {}\n\
                 autoconfig_exclude_features: [podman, kubernetes]\nlog_level: warn\n\
                 container_labels_as_tags:\n  team: team\n",
                port(),
                port(),
                rt.docker_host(),
                rt.containerd_socket().display()
            ),
        )
        .unwrap();
        let tests = test_support::testdata::workspace_root().join("crates/tagger-python/tests/test_tagger.py");
        let run = tokio::task::block_in_place(|| {
            Command::new(&python)
                .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
                .arg(&tests)
                .env("AGENT_BIN", env!("CARGO_BIN_EXE_agent"))
                .env("AGENT_CONFIG", &config)
                .env("CONTAINER_ID", &id)
                .env("DOCKER_HOST", rt.docker_host())
                .env("IMAGE", Runtimes::IMAGE)
                .output()
                .unwrap()
        });
        let report = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
        println!("{report}");
        assert!(run.status.success(), "pytest failed:\n{report}");
        assert!(report.contains("6 passed"), "{report}");
    });
}
