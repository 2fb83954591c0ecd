//! A tag lookup (the hot path) allocates nothing: counted by an instrumented global allocator.
//! Alone in its test binary, so no other test allocates while it counts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::alloc::System;
use std::sync::Arc;
use std::time::Duration;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tagger::{ManualClock, TagCardinality, TagInfo, TagSource, TagStore};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn lookups_of_known_and_unknown_entities_allocate_nothing() {
    let store = TagStore::new(Arc::new(ManualClock::default()), Duration::from_secs(300));
    let mut info = TagInfo::default();
    info.add(TagCardinality::Low, "image_name", "nginx");
    info.add(TagCardinality::Orchestrator, "pod_name", "web-0");
    info.add(TagCardinality::High, "container_id", "c1");
    info.add_standard("env", "prod");
    for i in 0..1000 {
        store.set(&format!("container_id://c{i}"), TagSource::Container, info.clone());
    }
    let ids: Vec<String> = (0..1000).map(|i| format!("container_id://c{i}")).collect();
    // Warm up: the first pin on a thread may register it with the map's collector.
    let _ = store.tag(&ids[0], TagCardinality::High);

    let region = Region::new(GLOBAL);
    let mut seen = 0;
    for id in &ids {
        for cardinality in [TagCardinality::Low, TagCardinality::Orchestrator, TagCardinality::High] {
            let tags = store.tag(id, cardinality);
            seen += tags.iter().map(str::len).sum::<usize>();
        }
        seen += store.standard(id).len();
    }
    seen += store.tag("container_id://unknown", TagCardinality::High).len();
    let stats = region.change();
    assert!(seen > 0);
    assert_eq!(stats.allocations, 0, "lookups allocated: {stats:?}");
    assert_eq!(stats.reallocations, 0, "lookups reallocated: {stats:?}");
}
