//! ECS metadata (the agent's `/v1/tasks`, task metadata v2/v3/v4): any bytes; every entity
//! converted re-serialises.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(converted) = wm_collector_ecs::convert::v1_tasks(bytes, "cluster") {
        converted.entities.iter().for_each(common::round_trips);
    }
    if let Ok(converted) = wm_collector_ecs::convert::task_metadata(bytes) {
        converted.entities.iter().for_each(common::round_trips);
    }
});
