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

/// Every document of a manifest file (`---`-separated).
fn documents(name: &str) -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    text.split("\n---\n").map(|doc| serde_saphyr::from_str(doc).unwrap()).collect()
}

/// A ClusterRole's rules as (resource, verbs) pairs.
fn rules(role: &Value) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        let verbs: Vec<String> = rule["verbs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
        for resource in rule["resources"].as_array().unwrap() {
            out.push((resource.as_str().unwrap().to_owned(), verbs.clone()));
        }
    }
    out.sort();
    out
}

#[test]
fn the_cluster_agent_reads_only_what_its_index_needs_and_keeps_a_replica_up() {
    let role = &documents("cluster-agent/rbac.yaml")[0];
    let watch = vec!["list".to_owned(), "watch".to_owned()];
    assert_eq!(
        rules(role),
        [
            ("endpointslices".to_owned(), watch.clone()),
            ("namespaces".to_owned(), watch.clone()),
            ("nodes".to_owned(), watch)
        ],
        "no pods, no secrets, no writes"
    );
    let deployment = manifest("cluster-agent/deployment.yaml");
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let agent = &pod["containers"][0];
    assert_eq!(agent["args"][2], "cluster-agent");
    assert_eq!(agent["securityContext"]["runAsNonRoot"], true);
    assert_eq!(agent["securityContext"]["readOnlyRootFilesystem"], true);
    let token = &agent["env"].as_array().unwrap().iter().find(|e| e["name"] == "DD_CLUSTER_AGENT_AUTH_TOKEN").unwrap();
    assert_eq!(token["valueFrom"]["secretKeyRef"]["name"], "wm-cluster-agent-auth");
    // The Service and the budget select the Deployment's pods; the Service reaches its API port.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let service = manifest("cluster-agent/service.yaml");
    assert_eq!(&service["spec"]["selector"], labels);
    let api = agent["ports"].as_array().unwrap().iter().find(|p| p["name"] == "api").unwrap();
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "api");
    assert_eq!(api["containerPort"], 5005);
    let config = manifest("cluster-agent/configmap.yaml");
    let agent_yaml: Value = serde_saphyr::from_str(config["data"]["agent.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(agent_yaml["cluster_agent"]["cmd_port"], 5005);
    let pdb = manifest("cluster-agent/pdb.yaml");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
}

#[test]
fn node_agents_with_the_cluster_agent_watch_nothing_on_the_api_server() {
    let overlay = manifest("../with-cluster-agent/kustomization.yaml");
    let patch = |kind: &str| -> Value {
        let found = overlay["patches"].as_array().unwrap().iter().find(|p| p["target"]["kind"] == kind).unwrap();
        serde_saphyr::from_str(found["patch"].as_str().unwrap()).unwrap()
    };
    // The DaemonSet's agents are told to use the cluster agent, through its Service's name.
    let env: Vec<Value> = patch("DaemonSet").as_array().unwrap().iter().map(|op| op["value"].clone()).collect();
    let value = |name: &str| env.iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
    assert_eq!(value("DD_CLUSTER_AGENT_ENABLED"), Some(Value::from("true")));
    let service = manifest("cluster-agent/service.yaml");
    assert_eq!(value("DD_CLUSTER_AGENT_KUBERNETES_SERVICE_NAME").as_ref(), Some(&service["metadata"]["name"]));
    // Their ClusterRole keeps only the kubelet's /pods: no list or watch at all.
    let role = patch("ClusterRole");
    assert_eq!(role[0]["op"], "replace");
    let patched = serde_json::json!({ "rules": role[0]["value"] });
    assert_eq!(rules(&patched), [("nodes/pods".to_owned(), vec!["get".to_owned()])]);
}
