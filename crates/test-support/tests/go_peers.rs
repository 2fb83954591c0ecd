//! The Go programs the real-cluster tests run (the Kubernetes components with etcd, kube-proxy
//! and kwok) are built from the module proxy, cached in `~/.cache/wm-k8s`, and each answers
//! with the version it was built at.
//!
//! `cargo xtask ci` runs this binary alone, before every other and with a deadline of its own:
//! on a fresh machine the builds take minutes, and when the cluster tests built them
//! themselves the build counted against each test's deadline, and two tests that started at once
//! both built (one now waits for the other: `kubernetes::build`'s lock).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::Command;

use test_support::kubernetes::{
    BINARIES, ETCD_VERSION, KUBERNETES_VERSION, KWOK_VERSION, bin_dir, ensure_binaries, ensure_kube_proxy, ensure_kwok,
};
use test_support::runtimes::{Install, Unavailable, start_or_skip_with};

/// Builds what is missing (when `install` allows) and returns each program with the words its
/// `--version` must print.
fn peers(install: Install) -> Result<Vec<(PathBuf, String)>, Unavailable> {
    if install == Install::Never && !BINARIES.iter().all(|b| bin_dir().join(b).is_file()) {
        return Err(Unavailable(format!("the Kubernetes components are not built in {}", bin_dir().display())));
    }
    let bin = ensure_binaries()?;
    let kubernetes = format!("Kubernetes {KUBERNETES_VERSION}");
    let mut peers: Vec<(PathBuf, String)> = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"]
        .into_iter()
        .map(|b| (bin.join(b), kubernetes.clone()))
        .collect();
    peers.push((bin.join("etcd"), format!("etcd Version: {}", ETCD_VERSION.trim_start_matches('v'))));
    peers.push((ensure_kube_proxy(install)?, kubernetes));
    peers.push((ensure_kwok(install)?, format!("kwok version {KWOK_VERSION}")));
    Ok(peers)
}

#[test]
fn the_go_peers_are_built_and_report_their_versions() {
    let Some(peers) = start_or_skip_with("the_go_peers_are_built", peers) else { return };
    for (binary, expected) in peers {
        let out = Command::new(&binary).arg("--version").output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && said.contains(&expected), "{} --version: {said}", binary.display());
    }
}
