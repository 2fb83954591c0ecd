//! The real single-node Kubernetes, brought up by the tooling: a Deployment of a two-container
//! pod created through the API server runs on the kubelet (its containers in containerd's
//! `k8s.io` namespace); the kubelet's `/pods` answers a service-account token from the
//! TokenRequest API and refuses an anonymous request (401); everything the tooling started is
//! gone after the teardown.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use test_support::kubernetes::{Kubernetes, container, deployment};
use test_support::runtimes::{Runtimes, start_or_skip_with};

#[test]
fn a_deployment_runs_on_the_kubelet_whose_pods_answer_a_service_account_token_and_refuse_anonymous() {
    let test = "a_deployment_runs_on_the_kubelet";
    let netns = || std::fs::read_dir("/var/run/netns").map(|d| d.flatten().count()).unwrap_or(0);
    let netns_before = netns();
    let Some(cluster) = start_or_skip_with(test, Kubernetes::start) else { return };
    for (phase, took) in &cluster.timings {
        println!("kubernetes: {phase}: {took:.1?}");
    }
    let dir = cluster.dir().to_path_buf();
    let pids: Vec<u32> = cluster.pids().into_iter().map(|(_, pid)| pid).collect();
    assert_eq!(pids.len(), 6, "etcd, apiserver, controller-manager, scheduler, containerd, kubelet");

    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    tokio.block_on(async {
        cluster.create_namespace("smoke").await.unwrap();
        let deployments: Api<Deployment> = Api::namespaced(cluster.client().await.unwrap(), "smoke");
        let started = Instant::now();
        let sleep = ["/bin/sleep", "3600"];
        let web = deployment("web", &[("team", "core")], vec![container("app", &sleep), container("sidecar", &sleep)])
            .unwrap();
        deployments.create(&PostParams::default(), &web).await.unwrap();
        let pods = cluster.wait_for_running_pods("smoke", "app=web", 1, Duration::from_secs(120)).await.unwrap();
        println!("kubernetes: the deployment's pod runs {:.1?} after its creation", started.elapsed());
        let pod = &pods[0];
        let pod_name = pod.metadata.name.clone().unwrap();
        assert!(pod_name.starts_with("web-"), "{pod_name}");
        let status = pod.status.as_ref().unwrap();
        assert!(status.pod_ip.as_deref().is_some_and(|ip| ip.starts_with("10.244.0.")), "{status:?}");
        let ids: Vec<String> = status
            .container_statuses
            .iter()
            .flatten()
            .map(|c| c.container_id.clone().unwrap().strip_prefix("containerd://").unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(netns(), netns_before + 1, "the pod's network namespace");

        // Its containers are containerd's, in namespace k8s.io.
        let listed = Runtimes::lines(&cluster.ctr(&["containers", "list", "--quiet"]).unwrap());
        for id in &ids {
            assert!(listed.contains(id), "{id} not in containerd's k8s.io namespace: {listed:?}");
        }

        // The kubelet's /pods, as an agent's DaemonSet reads it.
        let token = cluster.service_account_token("wm-agent", "wm-agent").await.unwrap();
        let kubelet = cluster.kubelet_client(Some(&token)).await.unwrap();
        let request = http::Request::get("/pods").body(Vec::new()).unwrap();
        let body = kubelet.request_text(request).await.unwrap();
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        let names: Vec<&str> =
            list["items"].as_array().unwrap().iter().filter_map(|p| p["metadata"]["name"].as_str()).collect();
        assert!(names.contains(&pod_name.as_str()), "{names:?}");
        let anonymous = cluster.kubelet_client(None).await.unwrap();
        let refused = anonymous.request_text(http::Request::get("/pods").body(Vec::new()).unwrap()).await.unwrap_err();
        match &refused {
            kube::Error::Api(e) => assert_eq!(e.code, 401, "{refused}"),
            other => panic!("expected 401 Unauthorized, got {other}"),
        }
        let wrong = cluster.kubelet_client(Some("not-a-token")).await.unwrap();
        let refused = wrong.request_text(http::Request::get("/pods").body(Vec::new()).unwrap()).await.unwrap_err();
        assert!(matches!(&refused, kube::Error::Api(e) if e.code == 401), "{refused}");
    });
    drop(tokio);

    let rss = cluster.rss_kib();
    let total: u64 = rss.iter().map(|(_, kib)| kib).sum();
    println!("kubernetes: resident memory {} MiB: {rss:?}", total / 1024);
    drop(cluster);
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} outlived the teardown");
    }
    assert!(!dir.exists(), "{} outlived the teardown", dir.display());
    assert!(
        !Path::new(&format!("/sys/class/net/{}", Kubernetes::BRIDGE)).exists(),
        "the CNI bridge outlived the teardown"
    );
}
