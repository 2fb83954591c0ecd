//! Every kubelet capture in `testdata/fixtures/kubelet` turned into entities and compared with the
//! expected output beside it (`testdata/expected/kubelet/<capture>`, the model's JSON form, read
//! and checked by hand when written: `WM_BLESS=1` writes a missing one), plus the cases the
//! collector must get right whatever the expected files say.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use test_support::testdata;
use wm_collector_kube::kubelet::{Converted, convert_pod_list};
use wm_core::{ContainerStatus, Entity, EnvFilter, Runtime};

fn convert(name: &str) -> Converted {
    let bytes = std::fs::read(testdata::path(&format!("fixtures/kubelet/{name}"))).unwrap();
    convert_pod_list(&bytes, &EnvFilter::new(["TEAM"]), false).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_capture_gives_its_expected_entities() {
    let dir = testdata::path("fixtures/kubelet");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert!(names.len() >= 9, "{names:?}");
    for name in &names {
        let got = serde_json::to_string_pretty(&convert(name).entities).unwrap() + "\n";
        testdata::assert_matches_expected(&format!("kubelet/{name}"), &got);
        // What was written round-trips through the model (a misspelt field would fail here).
        let back: Vec<Entity> = serde_json::from_str(&got).unwrap();
        assert_eq!(back.len(), convert(name).entities.len());
        println!("kubelet capture {name}: {} entities", back.len());
    }
}

#[test]
fn null_and_empty_items_are_skipped_and_the_real_pod_lands() {
    let converted = convert("podlist_null_pod.json");
    assert_eq!(converted.skipped.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 2]);
    let pods: Vec<_> = converted.entities.iter().filter_map(Entity::as_kubernetes_pod).collect();
    assert_eq!(pods.len(), 1);
    assert!(pods[0].name.starts_with("nginx"), "{}", pods[0].name);
}

#[test]
fn a_pod_whose_container_is_still_creating_gives_a_pod_and_no_container() {
    let converted = convert("podlist_container_creating.json");
    assert_eq!(converted.entities.len(), 1);
    let pod = converted.entities[0].as_kubernetes_pod().unwrap();
    assert_eq!(pod.phase, "Pending");
    assert_eq!(pod.containers.len(), 1);
    assert!(pod.containers[0].id.is_empty());
}

#[test]
fn terminated_init_containers_and_restarted_containers_keep_their_state() {
    let converted = convert("podlist_init_container_terminated.json");
    let containers: Vec<_> = converted.entities.iter().filter_map(Entity::as_container).collect();
    assert!(containers.iter().all(|c| c.runtime == Some(Runtime::Containerd)));
    let pods: Vec<_> = converted.entities.iter().filter_map(Entity::as_kubernetes_pod).collect();
    let with_init =
        pods.iter().find(|p| !p.details.init_containers.is_empty()).expect("myapp-pod has an init container");
    let init = &with_init.details.init_containers[0];
    let init_container = containers.iter().find(|c| *c.id == *init.id).unwrap();
    assert_eq!(init_container.state.status, ContainerStatus::Stopped);
    assert_eq!(init_container.state.exit_code, wm_core::ExitCode::new(0));
    assert!(init_container.state.finished_at.is_some());
    let scheduler = containers.iter().find(|c| c.name == "kube-scheduler").unwrap();
    assert_eq!(scheduler.restart_count, 5);
    assert!(scheduler.state.running);
    assert_eq!(scheduler.owner.as_ref().map(|o| o.id.to_string()), Some("2358fd3b-61e0-11e9-bc12-02f121c1eeb4".into()));
}

#[test]
fn docker_ids_and_pullable_images_are_read_as_the_runtime_said() {
    let converted = convert("podlist_1.8-2.json");
    let containers: Vec<_> = converted.entities.iter().filter_map(Entity::as_container).collect();
    assert!(!containers.is_empty());
    for c in &containers {
        assert_eq!(c.runtime, Some(Runtime::Docker), "{}", c.id);
        assert!(!c.image.id.starts_with("docker-pullable://"), "{}", c.image.id);
        assert_eq!(c.id.len(), 64, "{}", c.id);
    }
}
