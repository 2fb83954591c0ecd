//! containerd's container records and task processes (protobuf, with the OCI spec as JSON
//! inside): any bytes; a container converted keeps the record's id and re-serialises.
#![no_main]
use containerd_client::services::v1::Container as Record;
use containerd_client::types::v1::Process;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

#[path = "common.rs"]
mod common;

fuzz_target!(|bytes: &[u8]| {
    let Ok(record) = Record::decode(bytes) else { return };
    let task = Process::decode(bytes).ok();
    let env = wm_core::EnvFilter::new(["TEAM"]);
    let (container, _problem) =
        wm_collector_containerd::container_from_containerd(&record, task.as_ref(), None, Some("sha256:0"), &env);
    if let Some(container) = container {
        assert_eq!(&*container.id, record.id.as_str());
        common::round_trips(&container.into());
    }
});
