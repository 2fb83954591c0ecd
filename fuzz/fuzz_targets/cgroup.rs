//! `/proc/<pid>/cgroup`, cgroup paths, mountinfo and the DogStatsD/APM origin fields: any text;
//! a container id found is 64 hex digits or Fargate's `<32 hex>-<digits>` (or, under a named
//! containerd namespace, a plain path component), and is part of the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn runtime_form(id: &str) -> bool {
    is_hex(id, 64)
        || id
            .split_once('-')
            .is_some_and(|(h, n)| is_hex(h, 32) && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fuzz_target!(|text: &str| {
    if let Some(id) = tagger::origin::container_id_from_proc_cgroup(text, &[]) {
        assert!(runtime_form(id) && text.contains(id), "{id:?} from {text:?}");
    }
    if let Some(id) = tagger::origin::container_id_from_cgroup_path(text, &["k8s.io"]) {
        assert!(!id.is_empty() && !id.contains('/') && text.contains(id), "{id:?} from {text:?}");
    }
    let origin = tagger::origin::origin_from_mountinfo(text);
    if let Some(id) = &origin.container_id {
        assert!(runtime_form(id) && text.contains(id.as_str()), "{id:?} from {text:?}");
    }
    let _ = tagger::origin::parse_local_data(text);
    let _ = tagger::origin::parse_external_data(text);
});
