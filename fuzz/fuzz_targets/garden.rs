//! Garden's `bulk_info` answer: any bytes; every instance converted re-serialises, carries its
//! handle as id and as `app_instance_guid`, and is a Garden container.
#![no_main]
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use wm_collector_cf::convert::{AppMetadata, instance};
use wm_collector_cf::garden::{ContainerInfo, Entry};

#[path = "common.rs"]
mod common;

fuzz_target!(|bytes: &[u8]| {
    let Ok(entries) = serde_json::from_slice::<HashMap<String, Entry<ContainerInfo>>>(bytes) else { return };
    let now = wm_core::Timestamp::from_unix_nanos(1_700_000_000_000_000_000);
    let app = AppMetadata { name: "renamed".into(), tags: vec!["env:prod".into()], ..AppMetadata::default() };
    for (handle, entry) in &entries {
        let Some(found) = instance(handle, &entry.value, Some(5_000_000_000), now) else { continue };
        for metadata in [None, Some(&app)] {
            let container = found.entity(metadata);
            assert_eq!(&*container.id, handle.as_str());
            assert!(container.details.collector_tags.contains(&format!("app_instance_guid:{handle}")) || handle.is_empty());
            assert_eq!(container.runtime, Some(wm_core::Runtime::Garden));
            common::round_trips(&container.into());
        }
    }
});
