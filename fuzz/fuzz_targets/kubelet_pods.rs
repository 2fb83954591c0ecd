//! The kubelet's `/pods`: any bytes; every entity converted re-serialises.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|bytes: &[u8]| {
    let env = wm_core::EnvFilter::new(["TEAM"]);
    if let Ok(converted) = wm_collector_kube::kubelet::convert_pod_list(bytes, &env, true) {
        converted.entities.iter().for_each(common::round_trips);
    }
});
