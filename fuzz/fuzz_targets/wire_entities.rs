//! Entities and requests on the Datadog IPC wire (what a remote agent or a client sends): any
//! bytes decoded as a container, a pod or an ECS task; what converts back to the wire converts
//! again to the same entity.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use wm_ipc::convert;
use wm_ipc::proto::model::v1 as model;
use wm_ipc::proto::workloadmeta as pb;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(wire) = pb::Container::decode(bytes) {
        if let Some(container) = convert::from_container(&wire) {
            let again = convert::from_container(&convert::container(&container));
            assert!(again.as_ref() == Some(&container), "{container:?} came back as {again:?}");
        }
    }
    if let Ok(wire) = pb::KubernetesPod::decode(bytes) {
        if let Some(pod) = convert::from_pod(&wire) {
            let again = convert::from_pod(&convert::pod(&pod));
            assert!(again.as_ref() == Some(&pod), "{pod:?} came back as {again:?}");
        }
    }
    let _ = model::FetchEntityRequest::decode(bytes);
    let _ = model::StreamTagsRequest::decode(bytes);
    let _ = model::GenerateContainerIdFromOriginInfoRequest::decode(bytes);
    let _ = pb::WorkloadmetaStreamRequest::decode(bytes);
});
