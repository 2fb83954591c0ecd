//! The kubelet collector against a kubelet of ours (HTTPS, our CA, bearer token) serving the real
//! captures: malformed items skipped and the rest stored; what the list stops holding unset only
//! after `kubelet_expiry`; a body that is not a pod list, or a wrong token, fails the pull and
//! changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use test_support::kubernetes::FakeKubelet;
use test_support::testdata;
use test_support::watch::eventually;
use wm_collector_kube::{KubeletCollector, KubeletConfig};
use wm_core::{Port, Seconds};
use wm_store::Store;

/// How long a condition of this test may take.
const DEADLINE: Duration = Duration::from_secs(20);

fn capture(name: &str) -> Vec<u8> {
    std::fs::read(testdata::path(&format!("fixtures/kubelet/{name}"))).unwrap()
}

fn pull_errors(store: &Store) -> u64 {
    test_support::watch::counter(store, "workloadmeta.pull_errors")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_from_a_kubelet_of_ours_are_stored_expired_and_bad_answers_change_nothing() {
    let dir = std::env::temp_dir().join(format!("wm-fake-kubelet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let kubelet = FakeKubelet::start(&dir, "s3cret", capture("podlist_null_pod.json")).await.unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let config = KubeletConfig {
        kubernetes_kubelet_host: Some("127.0.0.1".into()),
        kubernetes_https_kubelet_port: Port::new(kubelet.port()).unwrap(),
        kubelet_auth_token_path: Some(token.clone()),
        kubelet_client_ca: Some(kubelet.ca_cert().to_path_buf()),
        kubelet_expiry: Seconds(3),
        kubelet_pull_interval: Seconds(1),
        ..KubeletConfig::default()
    };
    let store = Store::builder().collector(KubeletCollector::new(config.clone()).into_collector()).build();
    store.start();

    // [null, a pod, {}]: the pod and its container land.
    eventually("the pod of the null-pod capture", DEADLINE, || store.list_kubernetes_pods().len() == 1).await;
    let pod = store.list_kubernetes_pods().remove(0);
    assert_eq!(store.list_containers().len(), 1);
    assert!(store.health().is_ready());

    // Not a pod list: the pull fails, nothing changes.
    let errors = pull_errors(&store);
    kubelet.set_body(b"<html>proxy error</html>".to_vec());
    eventually("a failed pull", DEADLINE, || pull_errors(&store) > errors).await;
    assert!(store.get_kubernetes_pod(&pod.id).is_some());

    // An empty list: the pod is kept until it has been missing for the expiry, then unset.
    kubelet.set_body(capture("podlist_empty.json"));
    let served = kubelet.served();
    eventually("a pull of the empty list", DEADLINE, || kubelet.served() > served + 1).await;
    let emptied = Instant::now();
    assert!(store.get_kubernetes_pod(&pod.id).is_some(), "unset before the expiry");
    eventually("the pod unset after the expiry", DEADLINE, || store.get_kubernetes_pod(&pod.id).is_none()).await;
    assert!(store.list_containers().is_empty());
    println!("unset {:.1?} after the first empty list (expiry 3 s, pulls every 1 s)", emptied.elapsed());

    // Another capture: its pods arrive.
    kubelet.set_body(capture("podlist_1.8-2.json"));
    eventually("the 1.8-2 pods", DEADLINE, || store.list_kubernetes_pods().len() == 7).await;

    // A wrong token: refused (401), nothing changes.
    std::fs::write(&token, "wrong").unwrap();
    let store2 = Store::builder().collector(KubeletCollector::new(config).into_collector()).build();
    store2.start();
    eventually("a refused pull", DEADLINE, || kubelet.refused() > 0 && pull_errors(&store2) > 0).await;
    assert!(store2.list_kubernetes_pods().is_empty());
    assert!(!store2.health().is_ready());
    store2.shutdown().await;
    store.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_capture_served_by_a_kubelet_of_ours_lands_in_the_store_as_converted() {
    let dir = std::env::temp_dir().join(format!("wm-fake-kubelet-all-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(testdata::path("fixtures/kubelet"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    let kubelet = FakeKubelet::start(&dir, "s3cret", Vec::new()).await.unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "s3cret").unwrap();
    for name in &names {
        kubelet.set_body(capture(name));
        // A fresh collector and store per capture: the store must hold exactly what it converts to.
        let config = KubeletConfig {
            kubernetes_kubelet_host: Some("127.0.0.1".into()),
            kubernetes_https_kubelet_port: Port::new(kubelet.port()).unwrap(),
            kubelet_auth_token_path: Some(token.clone()),
            kubelet_client_ca: Some(kubelet.ca_cert().to_path_buf()),
            ..KubeletConfig::default()
        };
        let store = Store::builder().collector(KubeletCollector::new(config).into_collector()).build();
        store.start();
        eventually(&format!("{name}: the first pull"), DEADLINE, || store.health().is_ready()).await;
        let expected =
            wm_collector_kube::kubelet::convert_pod_list(&capture(name), &wm_core::EnvFilter::default(), false)
                .unwrap()
                .entities;
        let mut want: Vec<String> = expected.iter().map(|e| e.id().to_string()).collect();
        let mut got: Vec<String> = store
            .list_kubernetes_pods()
            .iter()
            .map(|p| format!("kubernetes_pod://{}", p.id))
            .chain(store.list_containers().iter().map(|c| format!("container://{}", c.id)))
            .collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{name}");
        for entity in &expected {
            let stored = wm_core::StoreReader::get(&store, &entity.id());
            assert_eq!(stored.as_ref(), Some(entity), "{name}: {}", entity.id());
        }
        println!("served {name}: {} entities stored", want.len());
        store.shutdown().await;
    }
    assert!(kubelet.served() >= names.len());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rewritten_in_place_is_read_again_on_a_401_and_the_pull_succeeds() {
    let dir = std::env::temp_dir().join(format!("wm-fake-kubelet-rotate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let kubelet = FakeKubelet::start(&dir, "token-aaaa", capture("podlist_1.8-2.json")).await.unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "token-aaaa").unwrap();
    let config = KubeletConfig {
        kubernetes_kubelet_host: Some("127.0.0.1".into()),
        kubernetes_https_kubelet_port: Port::new(kubelet.port()).unwrap(),
        kubelet_auth_token_path: Some(token.clone()),
        kubelet_client_ca: Some(kubelet.ca_cert().to_path_buf()),
        kubelet_pull_interval: Seconds(1),
        ..KubeletConfig::default()
    };
    let store = Store::builder().collector(KubeletCollector::new(config).into_collector()).build();
    store.start();
    eventually("the first pulls", DEADLINE, || kubelet.served() >= 2).await;

    // The token is rewritten in place with one of the same length, and its modification time
    // put back: nothing the collector looks at before a pull changed. The kubelet now refuses
    // the old token; the 401 makes the collector read the file again and retry at once.
    let modified = std::fs::metadata(&token).unwrap().modified().unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&token).unwrap();
    std::io::Write::write_all(&mut &file, b"token-bbbb").unwrap();
    file.set_modified(modified).unwrap();
    drop(file);
    kubelet.set_token("token-bbbb");
    let (errors, served) = (pull_errors(&store), kubelet.served());
    eventually("a pull with the new token", DEADLINE, || kubelet.served() > served + 1).await;
    assert!(kubelet.refused() >= 1, "the old token was refused first");
    assert_eq!(pull_errors(&store), errors, "the 401 was retried with the file read again, not failed");
    store.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
