//! How the versions several sources hold of one entity become one merged view.
//!
//! The rule (DESIGN 3.1): for each field, the first non-empty value in source precedence order
//! wins (cluster orchestrator, node orchestrator, runtime, remote); a container's state, pid and
//! cgroup path come from the runtime first. Maps are unions, the higher source winning a shared
//! key. Lists of records are unions keyed by identity, a record present in several sources being
//! completed field by field, never duplicated.

use triomphe::Arc;

use crate::entity::{
    Container, ContainerPort, ContainerResources, ContainerRuntimeDetails, EcsTask, Entity, KubernetesMetadata,
    KubernetesPod, OrchestratorContainer, PodOwner, PodRuntimeDetails, Process, Source,
};

fn fill<T: Default + PartialEq + Clone>(high: &mut T, low: &T) {
    if *high == T::default() {
        high.clone_from(low);
    }
}

/// Adds to `high` the records of `low` it lacks, after its own, and completes with `complete`
/// each record both lists hold (`same` tells when two records are one).
fn union_by<T: Clone>(high: &mut Vec<T>, low: &[T], same: impl Fn(&T, &T) -> bool, complete: impl Fn(&mut T, &T)) {
    for item in low {
        match high.iter_mut().find(|h| same(h, item)) {
            Some(existing) => complete(existing, item),
            None => high.push(item.clone()),
        }
    }
}

fn union_strings(high: &mut Vec<String>, low: &[String]) {
    union_by(high, low, |a, b| a == b, |_, _| {});
}

fn fill_port(high: &mut ContainerPort, low: &ContainerPort) {
    fill(&mut high.name, &low.name);
    fill(&mut high.host_port, &low.host_port);
}

fn fill_resources(high: &mut ContainerResources, low: &ContainerResources) {
    // With none of its own, `high` shares `low`'s allocation. Otherwise it is copied (a write
    // through `Shared`) only when `low` fills a gap, so an unchanged merge copies nothing.
    if high.is_none() {
        high.clone_from(low);
        return;
    }
    let gap = |h: bool, l: bool| h && !l;
    let (h, l) = (&**high, &**low);
    if gap(h.cpu_request.is_none(), l.cpu_request.is_none())
        || gap(h.cpu_limit.is_none(), l.cpu_limit.is_none())
        || gap(h.memory_request.is_none(), l.memory_request.is_none())
        || gap(h.memory_limit.is_none(), l.memory_limit.is_none())
    {
        let h = &mut **high;
        fill(&mut h.cpu_request, &low.cpu_request);
        fill(&mut h.cpu_limit, &low.cpu_limit);
        fill(&mut h.memory_request, &low.memory_request);
        fill(&mut h.memory_limit, &low.memory_limit);
    }
}

fn same_port(a: &ContainerPort, b: &ContainerPort) -> bool {
    a.port == b.port && a.protocol == b.protocol
}

fn fill_details(high: &mut ContainerRuntimeDetails, low: &ContainerRuntimeDetails) {
    // With none of its own (an orchestrator's version, filled from the runtime's), `high`
    // shares `low`'s allocation. Otherwise it is copied (a write through `Shared`) only when `low`
    // fills a gap, so an unchanged merge copies nothing.
    if high.is_none() {
        high.clone_from(low);
        return;
    }
    let (h, l) = (&**high, &**low);
    let gap = |h: bool, l: bool| h && !l;
    let completes = |h: &ContainerPort, l: &ContainerPort| {
        gap(h.name.is_empty(), l.name.is_empty()) || gap(h.host_port.is_none(), l.host_port.is_none())
    };
    if gap(h.hostname.is_empty(), l.hostname.is_empty())
        || l.network_ips.iter().any(|(k, _)| !h.network_ips.contains_key(k))
        || l.ports.iter().any(|lp| h.ports.iter().find(|hp| same_port(hp, lp)).is_none_or(|hp| completes(hp, lp)))
        || gap(h.cgroup_path.is_empty(), l.cgroup_path.is_empty())
        || gap(h.collector_tags.is_empty(), l.collector_tags.is_empty())
        || gap(h.allocated_resources.is_empty(), l.allocated_resources.is_empty())
    {
        let h = &mut **high;
        fill(&mut h.hostname, &l.hostname);
        h.network_ips.union_from(&l.network_ips);
        union_by(&mut h.ports, &l.ports, same_port, fill_port);
        fill(&mut h.cgroup_path, &l.cgroup_path);
        fill(&mut h.collector_tags, &l.collector_tags);
        fill(&mut h.allocated_resources, &l.allocated_resources);
    }
}

fn fill_orchestrator_container(high: &mut OrchestratorContainer, low: &OrchestratorContainer) {
    fill(&mut high.id, &low.id);
    fill(&mut high.name, &low.name);
    high.image.fill_from(&low.image);
}

fn same_orchestrator_container(a: &OrchestratorContainer, b: &OrchestratorContainer) -> bool {
    if !a.id.is_empty() && !b.id.is_empty() { a.id == b.id } else { !a.name.is_empty() && a.name == b.name }
}

fn union_orchestrator_containers(high: &mut Vec<OrchestratorContainer>, low: &[OrchestratorContainer]) {
    union_by(high, low, same_orchestrator_container, fill_orchestrator_container);
}

fn fill_container(high: &mut Container, low: &Container) {
    fill(&mut high.name, &low.name);
    high.labels.union_from(&low.labels);
    high.env.union_from(&low.env);
    high.image.fill_from(&low.image);
    fill(&mut high.runtime, &low.runtime);
    fill(&mut high.state, &low.state);
    fill(&mut high.state.pid, &low.state.pid);
    fill(&mut high.owner, &low.owner);
    fill(&mut high.restart_count, &low.restart_count);
    fill_resources(&mut high.resources, &low.resources);
    fill_details(&mut high.details, &low.details);
}

fn fill_pod(high: &mut KubernetesPod, low: &KubernetesPod) {
    fill(&mut high.name, &low.name);
    fill(&mut high.namespace, &low.namespace);
    high.labels.union_from(&low.labels);
    high.annotations.union_from(&low.annotations);
    union_by(
        &mut high.owners,
        &low.owners,
        |a: &PodOwner, b| a.kind == b.kind && a.name == b.name,
        |h, l| fill(&mut h.id, &l.id),
    );
    fill(&mut high.phase, &low.phase);
    fill(&mut high.ready, &low.ready);
    fill(&mut high.ip, &low.ip);
    fill(&mut high.node_name, &low.node_name);
    fill(&mut high.qos_class, &low.qos_class);
    union_orchestrator_containers(&mut high.containers, &low.containers);
    fill(&mut high.created_at, &low.created_at);
    fill(&mut high.started_at, &low.started_at);
    fill_pod_details(&mut high.details, &low.details);
}

fn fill_pod_details(high: &mut PodRuntimeDetails, low: &PodRuntimeDetails) {
    // With none of its own, `high` shares `low`'s allocation. Otherwise it is copied (a write
    // through `Shared`) only when `low` has some details at all.
    if high.is_none() {
        high.clone_from(low);
        return;
    }
    if low.is_none() {
        return;
    }
    let (h, l) = (&mut **high, &**low);
    fill(&mut h.priority_class, &l.priority_class);
    fill(&mut h.runtime_class, &l.runtime_class);
    union_orchestrator_containers(&mut h.init_containers, &l.init_containers);
    union_orchestrator_containers(&mut h.ephemeral_containers, &l.ephemeral_containers);
    union_strings(&mut h.pvc_names, &l.pvc_names);
    union_strings(&mut h.kube_services, &l.kube_services);
    h.namespace_labels.union_from(&l.namespace_labels);
    h.namespace_annotations.union_from(&l.namespace_annotations);
    fill(&mut h.finished_at, &l.finished_at);
}

fn fill_task(high: &mut EcsTask, low: &EcsTask) {
    fill(&mut high.family, &low.family);
    fill(&mut high.version, &low.version);
    fill(&mut high.cluster_name, &low.cluster_name);
    fill(&mut high.launch_type, &low.launch_type);
    fill(&mut high.region, &low.region);
    fill(&mut high.availability_zone, &low.availability_zone);
    fill(&mut high.aws_account, &low.aws_account);
    fill(&mut high.service_name, &low.service_name);
    fill(&mut high.desired_status, &low.desired_status);
    fill(&mut high.known_status, &low.known_status);
    union_orchestrator_containers(&mut high.containers, &low.containers);
    high.tags.union_from(&low.tags);
    high.container_instance_tags.union_from(&low.container_instance_tags);
}

fn fill_metadata(high: &mut KubernetesMetadata, low: &KubernetesMetadata) {
    fill(&mut high.resource, &low.resource);
    fill(&mut high.name, &low.name);
    fill(&mut high.namespace, &low.namespace);
    high.labels.union_from(&low.labels);
    high.annotations.union_from(&low.annotations);
}

fn fill_process(high: &mut Process, low: &Process) {
    fill(&mut high.pid, &low.pid);
    fill(&mut high.ns_pid, &low.ns_pid);
    fill(&mut high.ppid, &low.ppid);
    fill(&mut high.name, &low.name);
    fill(&mut high.creation_time, &low.creation_time);
    fill(&mut high.container_id, &low.container_id);
    fill(&mut high.language, &low.language);
    fill(&mut high.cmdline, &low.cmdline);
}

/// Fills each empty field of `high` with `low`'s value, and adds to its maps and lists what only
/// `low` has.
///
/// `high` is copied first if its `Arc` is shared. Entities of different kinds are left alone.
pub fn fill_from(high: &mut Entity, low: &Entity) {
    match (high, low) {
        (Entity::Container(h), Entity::Container(l)) => fill_container(Arc::make_mut(h), l),
        (Entity::KubernetesPod(h), Entity::KubernetesPod(l)) => fill_pod(Arc::make_mut(h), l),
        (Entity::EcsTask(h), Entity::EcsTask(l)) => fill_task(Arc::make_mut(h), l),
        (Entity::KubernetesMetadata(h), Entity::KubernetesMetadata(l)) => fill_metadata(Arc::make_mut(h), l),
        (Entity::Process(h), Entity::Process(l)) => fill_process(Arc::make_mut(h), l),
        // One runtime reports an image; a second one's version fills only what is missing.
        (Entity::ContainerImageMetadata(h), Entity::ContainerImageMetadata(l)) => {
            let (h, l) = (Arc::make_mut(h), &**l);
            fill(&mut h.name, &l.name);
            union_strings(&mut h.repo_tags, &l.repo_tags);
            union_strings(&mut h.repo_digests, &l.repo_digests);
            fill(&mut h.media_type, &l.media_type);
            fill(&mut h.size_bytes, &l.size_bytes);
            fill(&mut h.os, &l.os);
            fill(&mut h.os_version, &l.os_version);
            fill(&mut h.architecture, &l.architecture);
            fill(&mut h.variant, &l.variant);
            fill(&mut h.layers, &l.layers);
        }
        _ => {}
    }
}

/// Merges the per-source versions of one entity into one view; returns `None` when `versions`
/// is empty.
///
/// `versions` may come in any order; they are ranked by [`Source`] precedence. With a single
/// version the result shares its allocation. A container's state, pid and cgroup path come from
/// the runtime's version first.
pub fn merge(versions: &[(Source, &Entity)]) -> Option<Entity> {
    let mut ranked: Vec<&(Source, &Entity)> = versions.iter().collect();
    ranked.sort_by_key(|(source, _)| *source);
    let (first, rest) = ranked.split_first()?;
    let mut merged = first.1.clone();
    if rest.is_empty() {
        return Some(merged);
    }
    for (_, low) in rest {
        fill_from(&mut merged, low);
    }
    // The runtime knows best whether a container runs: its state, pid and cgroup path come first.
    if let Entity::Container(c) = &mut merged {
        let runtime_first = ranked
            .iter()
            .filter(|(s, _)| *s == Source::Runtime)
            .chain(ranked.iter().filter(|(s, _)| *s != Source::Runtime));
        let mut state = None;
        let mut pid = None;
        let mut cgroup_path = None;
        for (_, version) in runtime_first {
            let Entity::Container(v) = version else { continue };
            if state.is_none() && v.state != Default::default() {
                state = Some(&v.state);
            }
            if pid.is_none() && v.state.pid != 0 {
                pid = Some(v.state.pid);
            }
            if cgroup_path.is_none() && !v.details.cgroup_path.is_empty() {
                cgroup_path = Some(&v.details.cgroup_path);
            }
        }
        let c = Arc::make_mut(c);
        if let Some(state) = state {
            c.state.clone_from(state);
        }
        if let Some(pid) = pid {
            c.state.pid = pid;
        }
        if let Some(path) = cgroup_path
            && c.details.cgroup_path != *path
        {
            c.details.cgroup_path.clone_from(path);
        }
    }
    Some(merged)
}

/// Returns what an unset delivers: the last known entity with the fields the unset payload
/// carries laid over it (a runtime's exit code and finish time).
///
/// An id-only payload, or `last` itself, gives `last`, sharing its allocation. The payload is
/// taken by value so that, when the caller holds its only handle, it is completed in place
/// rather than copied first.
pub fn overlay(payload: Entity, last: &Entity) -> Entity {
    if payload.is_id_only() || payload.ptr_eq(last) {
        return last.clone();
    }
    let mut out = payload;
    fill_from(&mut out, last);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::{ContainerDetails, ContainerState, ContainerStatus, ExitCode, PodDetails};

    fn container(f: impl FnOnce(&mut Container)) -> Entity {
        let mut c = Container { id: "c1".into(), ..Container::default() };
        f(&mut c);
        Entity::from(c)
    }

    #[test]
    fn the_merged_view_shares_the_runtimes_details_and_completes_them_on_a_copy() {
        let runtime = container(|c| {
            c.details =
                ContainerDetails { hostname: "h".into(), cgroup_path: "/x".into(), ..Default::default() }.into();
        });
        let kubelet = container(|c| c.name = "app".into());
        let merged = merge(&[(Source::Runtime, &runtime), (Source::NodeOrchestrator, &kubelet)]).unwrap();
        let (Entity::Container(m), Entity::Container(r)) = (&merged, &runtime) else { unreachable!() };
        assert!(m.details.ptr_eq(&r.details), "taken whole, not copied");
        assert_eq!((m.name.as_str(), m.details.hostname.as_str()), ("app", "h"));
        // An orchestrator that gives a field the runtime lacks: a copy, completed.
        let kubelet = container(|c| {
            c.details =
                ContainerDetails { network_ips: [("pod", "10.0.0.1")].into_iter().collect(), ..Default::default() }
                    .into();
        });
        let merged = merge(&[(Source::Runtime, &runtime), (Source::NodeOrchestrator, &kubelet)]).unwrap();
        let Entity::Container(m) = &merged else { unreachable!() };
        assert!(!m.details.ptr_eq(&r.details));
        assert_eq!((m.details.hostname.as_str(), m.details.cgroup_path.as_str()), ("h", "/x"));
        assert_eq!(m.details.network_ips.get("pod"), Some("10.0.0.1"));
        assert_eq!(r.details.network_ips.len(), 0, "the runtime's own version is untouched");
        // A container serializes with every field at the top level, and reads back the same.
        let json = serde_json::to_value(&**m).unwrap();
        assert_eq!(json["hostname"], "h");
        assert_eq!(json["network_ips"]["pod"], "10.0.0.1");
        assert!(json.get("details").is_none());
        assert_eq!(serde_json::from_value::<Container>(json).unwrap(), **m);
    }

    #[test]
    fn a_single_version_is_shared_not_copied() {
        let e = container(|c| c.name = "a".into());
        let merged = merge(&[(Source::Runtime, &e)]).unwrap();
        assert!(merged.ptr_eq(&e));
    }

    #[test]
    fn precedence_is_by_source_not_by_argument_order() {
        let runtime = container(|c| {
            c.name = "rt".into();
            c.details.hostname = "h".into();
        });
        let cluster = container(|c| c.name = "cluster".into());
        let merged = merge(&[(Source::Runtime, &runtime), (Source::ClusterOrchestrator, &cluster)]).unwrap();
        let c = merged.as_container().unwrap();
        assert_eq!((c.name.as_str(), c.details.hostname.as_str()), ("cluster", "h"));
    }

    #[test]
    fn state_pid_and_cgroup_come_from_the_runtime_first_as_a_unit() {
        let kubelet = container(|c| {
            c.state = ContainerState { running: true, status: ContainerStatus::Running, ..Default::default() };
            c.state.pid = 7;
            c.details.cgroup_path = "/kubepods/x".into();
        });
        let runtime = container(|c| {
            c.state =
                ContainerState { status: ContainerStatus::Stopped, exit_code: ExitCode::new(1), ..Default::default() };
        });
        let merged = merge(&[(Source::NodeOrchestrator, &kubelet), (Source::Runtime, &runtime)]).unwrap();
        let c = merged.as_container().unwrap();
        assert!(!c.state.running);
        assert_eq!(c.state.exit_code, ExitCode::new(1));
        assert_eq!((c.state.pid, c.details.cgroup_path.as_str()), (7, "/kubepods/x"));
    }

    #[test]
    fn pod_containers_merge_by_id_or_name_without_duplicates() {
        let oc = |id: &str, name: &str, image: &str| OrchestratorContainer {
            id: id.into(),
            name: name.into(),
            image: crate::ContainerImage::parse(image),
        };
        let node = Entity::from(KubernetesPod {
            id: "p1".into(),
            containers: vec![oc("", "app", "nginx:1"), oc("c2", "side", "")],
            details: PodDetails { kube_services: vec!["a".into()], ..PodDetails::default() }.into(),
            ..Default::default()
        });
        let cluster = Entity::from(KubernetesPod {
            id: "p1".into(),
            containers: vec![oc("c1", "app", ""), oc("c2", "", "envoy:2")],
            details: PodDetails { kube_services: vec!["b".into(), "a".into()], ..PodDetails::default() }.into(),
            ..Default::default()
        });
        let merged = merge(&[(Source::NodeOrchestrator, &node), (Source::ClusterOrchestrator, &cluster)]).unwrap();
        let pod = merged.as_kubernetes_pod().unwrap();
        assert_eq!(
            pod.containers,
            vec![
                oc("c1", "app", "nginx:1"),
                OrchestratorContainer {
                    id: "c2".into(),
                    name: "side".into(),
                    image: crate::ContainerImage::parse("envoy:2")
                }
            ]
        );
        assert_eq!(pod.details.kube_services, ["b", "a"]);
    }

    #[test]
    fn overlay_lays_the_payload_over_the_last_entity() {
        let last = container(|c| {
            c.name = "web".into();
            c.state = ContainerState { running: true, status: ContainerStatus::Running, ..Default::default() };
        });
        let payload = container(|c| c.state = ContainerState { exit_code: ExitCode::new(137), ..Default::default() });
        let out = overlay(payload, &last);
        let c = out.as_container().unwrap();
        assert_eq!(c.name, "web");
        assert_eq!(c.state, ContainerState { exit_code: ExitCode::new(137), ..Default::default() });
        let id_only = Entity::empty(&last.id());
        assert!(overlay(id_only, &last).ptr_eq(&last));
        assert!(overlay(last.clone(), &last).ptr_eq(&last), "the stored entity itself is not copied");
    }
}
