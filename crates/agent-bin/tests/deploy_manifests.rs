//! The Kubernetes manifests keep the node's surface small: the DaemonSet mounts the runtimes'
//! socket directories, not the host's whole `/run`; its probes go to the node's loopback, where
//! the health port listens, so no peer on the network can reach that port.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use serde_json::Value;

fn manifest(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

#[test]
fn the_daemonset_mounts_only_the_runtime_sockets_and_probes_loopback() {
    let daemonset = manifest("daemonset.yaml");
    let pod = &daemonset["spec"]["template"]["spec"];
    let host_paths: Vec<&str> =
        pod["volumes"].as_array().unwrap().iter().filter_map(|v| v["hostPath"]["path"].as_str()).collect();
    assert!(!host_paths.contains(&"/run") && !host_paths.contains(&"/var/run"), "{host_paths:?}");
    assert!(host_paths.contains(&"/run/containerd") && host_paths.contains(&"/run/podman"), "{host_paths:?}");
    let agent = &pod["containers"][0];
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(agent[probe]["httpGet"]["host"], "127.0.0.1", "{probe}");
    }
    for mount in agent["volumeMounts"].as_array().unwrap() {
        if mount["mountPath"].as_str().is_some_and(|p| p.starts_with("/run")) {
            assert_eq!(mount["readOnly"], true, "{mount}");
        }
    }

    let config = manifest("configmap.yaml");
    let agent_yaml: Value = serde_saphyr::from_str(config["data"]["agent.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(agent_yaml["health_host"], "127.0.0.1", "the probes' port stays on loopback");
}
