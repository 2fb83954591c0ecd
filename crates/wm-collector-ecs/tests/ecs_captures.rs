//! Every ECS capture in `testdata/fixtures/ecs` turned into entities and compared with the
//! expected output beside it (`testdata/expected/ecs/<capture>`, the model's JSON form, checked
//! by hand when written: `WM_BLESS=1` writes a missing one).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use test_support::testdata;
use wm_collector_ecs::convert::{Converted, task_metadata, v1_tasks};
use wm_core::Entity;

fn read(name: &str) -> Vec<u8> {
    std::fs::read(testdata::path(&format!("fixtures/ecs/{name}"))).unwrap()
}

/// The cluster `/v1/metadata` names (the capture beside the task lists).
fn instance_cluster() -> String {
    let instance: serde_json::Value = serde_json::from_slice(&read("instance.json")).unwrap();
    instance["Cluster"].as_str().unwrap().to_owned()
}

fn convert(name: &str) -> Converted {
    let bytes = read(name);
    let converted = if name == "tasks.json" || name == "collector_tasks_v1.json" {
        v1_tasks(&bytes, &instance_cluster())
    } else {
        task_metadata(&bytes)
    };
    converted.unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_capture_gives_the_expected_entities() {
    let all: Vec<String> = std::fs::read_dir(testdata::path("fixtures/ecs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for name in &all {
        assert!(
            testdata::ECS_ENTITY_CAPTURES.contains(&name.as_str())
                || ["commands.json", "instance.json"].contains(&name.as_str()),
            "a capture this test does not cover: {name}"
        );
    }
    for name in testdata::ECS_ENTITY_CAPTURES {
        let converted = convert(name);
        assert!(converted.skipped.is_empty(), "{name}: {:?}", converted.skipped);
        let got = serde_json::to_string_pretty(&converted.entities).unwrap() + "\n";
        testdata::assert_matches_expected(&format!("ecs/{name}"), &got);
        let back: Vec<Entity> = serde_json::from_str(&got).unwrap();
        assert_eq!(back.len(), converted.entities.len());
        println!("ecs capture {name}: {} entities", back.len());
    }
    // The introspection root lists the commands the collector uses to validate an agent.
    let commands: serde_json::Value = serde_json::from_slice(&read("commands.json")).unwrap();
    let available: Vec<&str> =
        commands["AvailableCommands"].as_array().unwrap().iter().filter_map(|c| c.as_str()).collect();
    assert!(available.contains(&"/v1/tasks") && available.contains(&"/v1/metadata"), "{available:?}");
}
