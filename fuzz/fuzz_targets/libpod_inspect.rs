//! Podman's libpod inspect and list rows: any JSON; the container converted re-serialises.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wm_collector_podman::{Inspect, ListEntry, container_from_inspect, container_from_list};

#[path = "common.rs"]
mod common;

fuzz_target!(|bytes: &[u8]| {
    let env = wm_core::EnvFilter::new(["TEAM"]);
    if let Ok(entry) = serde_json::from_slice::<ListEntry>(bytes) {
        if let Some(container) = container_from_list(&entry) {
            common::round_trips(&container.into());
        }
    }
    if let Ok(inspect) = serde_json::from_slice::<Inspect>(bytes) {
        if let Some(container) = container_from_inspect(&inspect, &ListEntry::default(), &env) {
            common::round_trips(&container.into());
        }
    }
});
