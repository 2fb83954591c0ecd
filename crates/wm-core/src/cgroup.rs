//! Finds the container a process runs in from its cgroup: the id a runtime writes into the
//! cgroup path (docker, containerd, CRI-O, podman, ECS, systemd slices, cgroup v1 and v2).
//!
//! The tagger's origin detection and the process collector both read it. Nothing here panics
//! on odd input: a path that names no container gives `None`.

/// Prefixes runtimes put before a container id in a cgroup path component.
const ID_PREFIXES: &[&str] = &["docker-", "cri-containerd-", "crio-", "libpod-", "containerd-"];

/// Prefixes of cgroup path components that carry an id but are not the workload's container:
/// they are conmon, the monitor process CRI-O and podman run beside each container.
const NOT_CONTAINERS: &[&str] = &["crio-conmon-", "libpod-conmon-"];

/// Tells whether `s` is exactly `len` hex digits.
pub fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Tells whether `s` has the form of an ECS Fargate container id: `<32 hex>-<digits>`.
pub fn is_fargate_id(s: &str) -> bool {
    s.split_once('-').is_some_and(|(hex, n)| is_hex(hex, 32) && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Returns the container id one cgroup path component names, if any: 64 hex digits or a
/// Fargate id, after a runtime's prefix and before `.scope` when there are any.
fn id_in_component(component: &str) -> Option<&str> {
    if NOT_CONTAINERS.iter().any(|p| component.starts_with(p)) {
        return None;
    }
    let mut id = component.strip_suffix(".scope").unwrap_or(component);
    if let Some(rest) = ID_PREFIXES.iter().find_map(|p| id.strip_prefix(p)) {
        id = rest;
    }
    (is_hex(id, 64) || is_fargate_id(id)).then_some(id)
}

/// Returns the container id in a cgroup path (`/kubepods/burstable/pod…/<id>`,
/// `/system.slice/docker-<id>.scope`, `/ecs/<task>/<id>` …): the innermost component that is one.
///
/// containerd allows any container name as an id, so a name that is not hex is only recognized
/// in containerd's cgroupfs layout, `/<namespace>/<id>`, when `<namespace>` is one of
/// `containerd_namespaces`.
pub fn container_id_from_cgroup_path<'a>(path: &'a str, containerd_namespaces: &[&str]) -> Option<&'a str> {
    if let Some(id) = path.split('/').rev().find_map(id_in_component) {
        return Some(id);
    }
    let mut parts = path.trim_matches('/').split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(ns), Some(id), None) if containerd_namespaces.contains(&ns) && !id.is_empty() => Some(id),
        _ => None,
    }
}

/// Returns the container id of a process from its `/proc/<pid>/cgroup`
/// (`hierarchy:controllers:path` lines, v1 and the v2 `0::` line): the first line whose path
/// names one. A host process gives `None`.
pub fn container_id_from_proc_cgroup<'a>(content: &'a str, containerd_namespaces: &[&str]) -> Option<&'a str> {
    content
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .find_map(|path| container_id_from_cgroup_path(path, containerd_namespaces))
}
