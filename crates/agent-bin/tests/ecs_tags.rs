//! DESIGN 7.4 on every ECS capture, through the collector's conversion, the store and the
//! tagger: each task gets `task_name`, `task_family`, `task_version`, `ecs_cluster_name`,
//! `region` (and `availability_zone`, `aws_account`, `ecs_service` when known) at low
//! cardinality and `task_arn` at orchestrator; each of its containers those plus
//! `ecs_container_name`; with `ecs_collect_resource_tags_ec2`, the task's AWS resource tags.

#![cfg(feature = "ecs")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;

use tagger::{TagCardinality, Tagger, TaggerConfig};
use test_support::testdata;
use wm_collector_ecs::convert::{task_metadata, v1_tasks};
use wm_core::{CollectorEvent, Source};
use wm_store::Store;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_capture_is_tagged_as_design_7_4_says() {
    for name in testdata::ECS_ENTITY_CAPTURES {
        let bytes = std::fs::read(testdata::path(&format!("fixtures/ecs/{name}"))).unwrap();
        let converted =
            if name.contains("tasks") { v1_tasks(&bytes, "ecs_cluster") } else { task_metadata(&bytes) }.unwrap();
        let store = Store::new();
        let config = TaggerConfig { ecs_collect_resource_tags_ec2: true, ..TaggerConfig::default() };
        let tagger = Arc::new(Tagger::new(config));
        let following = tagger.spawn(&store);
        let events =
            converted.entities.iter().cloned().map(|e| CollectorEvent::set(Source::NodeOrchestrator, e)).collect();
        store.notify(events).await;
        // The tagger follows the store on its own task: wait until it tagged every container.
        let containers: Vec<String> = converted
            .entities
            .iter()
            .filter_map(|e| e.as_ecs_task())
            .flat_map(|t| t.containers.iter().map(|c| format!("container_id://{}", c.id)))
            .collect();
        test_support::watch::eventually(name, std::time::Duration::from_secs(10), || {
            containers.iter().all(|c| !tagger.tag(c, TagCardinality::Low).is_empty())
        })
        .await;
        let mut checked = 0;
        for task in converted.entities.iter().filter_map(|e| e.as_ecs_task()) {
            let id = format!("ecs_task://{}", task.id);
            let low = tagger.tag(&id, TagCardinality::Low).to_vec();
            let mut expected = vec![
                format!("task_name:{}", task.family),
                format!("task_family:{}", task.family),
                format!("task_version:{}", task.version),
                format!("ecs_cluster_name:{}", task.cluster_name),
                format!("region:{}", task.region),
            ];
            for (key, value) in [
                ("availability_zone", &task.availability_zone),
                ("aws_account", &task.aws_account),
                ("ecs_service", &task.service_name),
            ] {
                if !value.is_empty() {
                    expected.push(format!("{key}:{value}"));
                }
            }
            expected.extend(task.tags.iter().map(|(k, v)| format!("{k}:{v}")));
            for tag in &expected {
                assert!(low.contains(tag), "{name}: {tag} not on {id}: {low:?}");
            }
            let orchestrator = tagger.tag(&id, TagCardinality::Orchestrator).to_vec();
            assert!(orchestrator.contains(&format!("task_arn:{}", task.id)), "{name}: {orchestrator:?}");
            assert!(!low.iter().any(|t| t.starts_with("task_arn:")), "{name}: task_arn is orchestrator");
            for container in &task.containers {
                let cid = format!("container_id://{}", container.id);
                let tags = tagger.tag(&cid, TagCardinality::Orchestrator).to_vec();
                assert!(tags.contains(&format!("ecs_container_name:{}", container.name)), "{name}: {cid}: {tags:?}");
                for tag in expected.iter().chain([&format!("task_arn:{}", task.id)]) {
                    assert!(tags.contains(tag), "{name}: {tag} not on {cid}: {tags:?}");
                }
                checked += 1;
            }
        }
        assert!(checked > 0, "{name}: no container checked");
        println!("{name}: {checked} containers tagged as DESIGN 7.4 says");
        store.shutdown().await;
        following.abort();
    }
}
