//! Docker's container inspect, as bollard reads it: any JSON; the container converted
//! re-serialises and keeps the id it was given.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|bytes: &[u8]| {
    let Ok(inspect) = serde_json::from_slice::<bollard::models::ContainerInspectResponse>(bytes) else { return };
    let env = wm_core::EnvFilter::new(["TEAM"]);
    if let Some(container) = wm_collector_docker::container_from_inspect(&inspect, Some("busybox:1"), &env) {
        assert_eq!(Some(&*container.id), inspect.id.as_deref());
        common::round_trips(&container.into());
    }
});
