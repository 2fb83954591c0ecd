//! Converts containerd's records (container, task, OCI spec) into the store's [`Container`]:
//! pure functions, no I/O.

use std::borrow::Cow;
use std::collections::HashMap;

use containerd_client::services::v1::Container as CtrContainer;
use containerd_client::types::v1::{Process, Status};
use serde::Deserialize;
use wm_core::{
    Container, ContainerDetails, ContainerImage, ContainerState, ContainerStatus, EntityId, EnvFilter, IStr,
    KUBE_CONTAINER_NAME_LABEL, KUBE_POD_UID_LABEL, Kind, ResourceSpec, Runtime, StrMap, Timestamp,
};

/// The label the CRI plugin puts on every container it creates; its value is `sandbox` for a
/// pod's pause container.
pub const CRI_KIND_LABEL: &str = "io.cri-containerd.kind";
/// The label in which nerdctl stores the name the user gave the container.
pub const NERDCTL_NAME_LABEL: &str = "nerdctl/name";

/// How a container's init process ended, as its task's exit or delete event reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// The process's exit status.
    pub code: u32,
    /// When the process exited; `None` when containerd gave no time.
    pub at: Option<Timestamp>,
    /// The process's pid; zero when unknown (a task read after it exited).
    pub pid: u32,
}

/// Tells whether the labels mark a pod's sandbox ("pause") container, which is never stored.
pub fn is_sandbox(labels: &HashMap<String, String>) -> bool {
    labels.get(CRI_KIND_LABEL).is_some_and(|k| k == "sandbox")
}

/// Converts a protobuf timestamp; returns `None` when there is none, and for the zero time,
/// which containerd writes to mean "never".
pub fn timestamp(t: Option<&prost_types::Timestamp>) -> Option<Timestamp> {
    let t = t?;
    if t.seconds <= 0 && t.nanos <= 0 {
        return None;
    }
    Some(Timestamp::from_unix(t.seconds, t.nanos))
}

/// The parts of an OCI runtime spec the store uses; every other field is ignored.
///
/// The env vars are borrowed from the record's bytes: a CRI container's spec carries hundreds,
/// of which the env filter keeps a few, and copying each into a string of its own was most of
/// a 10,000-container list's time.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Spec<'a> {
    hostname: String,
    #[serde(borrow)]
    process: Option<SpecProcess<'a>>,
    linux: Option<SpecLinux>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SpecProcess<'a> {
    #[serde(borrow)]
    env: Vec<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct SpecLinux {
    cgroups_path: String,
    resources: Option<SpecResources>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SpecResources {
    memory: Option<SpecMemory>,
    cpu: Option<SpecCpu>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SpecMemory {
    limit: Option<i64>,
    reservation: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SpecCpu {
    quota: Option<i64>,
    period: Option<u64>,
}

/// Builds the store's container from containerd's record, its task (if it has one), the last exit
/// seen for it and its image's digest.
///
/// `last_exit` matters because containerd drops a task's exit status when the task is deleted:
/// it gives the status of a stopped container that has no task any more. `env` decides which env
/// vars of the spec are stored.
///
/// Returns the container, or `None` for a sandbox or a record without an id, together with a
/// description of what did not parse, if anything: a spec that does not parse still gives a
/// container, without the fields the spec would add (env, hostname, cgroup path, limits).
pub fn container_from_containerd(
    record: &CtrContainer,
    task: Option<&Process>,
    last_exit: Option<Exit>,
    image_digest: Option<&str>,
    env: &EnvFilter,
) -> (Option<Container>, Option<String>) {
    if record.id.is_empty() || is_sandbox(&record.labels) {
        return (None, None);
    }
    let mut problem = None;
    let spec: Spec<'_> = match record.spec.as_ref().map(|any| serde_json::from_slice::<Spec<'_>>(&any.value)) {
        Some(Ok(spec)) => spec,
        Some(Err(e)) => {
            problem = Some(format!("its OCI spec does not parse: {e}"));
            Spec::default()
        }
        None => Spec::default(),
    };
    let image = ContainerImage::parse_with_id(&record.image, image_digest.unwrap_or_default());
    let state = run_state(task, last_exit, timestamp(record.created_at.as_ref()));
    let linux = spec.linux.unwrap_or_default();
    let resources = linux.resources.unwrap_or_default();
    let memory = resources.memory.unwrap_or_default();
    let cpu_limit = resources.cpu.and_then(|c| match (c.quota, c.period) {
        (Some(quota), Some(period)) if quota > 0 && period > 0 => Some(quota as f64 / period as f64),
        _ => None,
    });
    let name = [KUBE_CONTAINER_NAME_LABEL, NERDCTL_NAME_LABEL]
        .iter()
        .find_map(|l| record.labels.get(*l).filter(|n| !n.is_empty()))
        .map_or_else(|| IStr::new(&record.id), |n| IStr::new(n));
    let labels: StrMap = record.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let container = Container {
        id: wm_core::Id::from(record.id.as_str()),
        name,
        labels,
        env: env.filter(spec.process.map(|p| p.env).unwrap_or_default()),
        image,
        runtime: Some(Runtime::Containerd),
        state,
        owner: record
            .labels
            .get(KUBE_POD_UID_LABEL)
            .filter(|uid| !uid.is_empty())
            .map(|uid| EntityId::new(Kind::KubernetesPod, uid.as_str())),
        resources: ResourceSpec {
            cpu_limit,
            memory_limit: memory.limit.filter(|m| *m > 0).map(|m| m as u64),
            memory_request: memory.reservation.filter(|m| *m > 0).map(|m| m as u64),
            ..ResourceSpec::default()
        }
        .into(),
        details: ContainerDetails {
            hostname: spec.hostname,
            cgroup_path: linux.cgroups_path,
            ..ContainerDetails::default()
        }
        .into(),
        ..Container::default()
    };
    (Some(container), problem)
}

/// What a task event says about a container's init process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskEvent {
    /// The task was created (not started) with this pid.
    Created {
        /// The init process's pid.
        pid: u32,
    },
    /// The task started with this pid.
    Started {
        /// The init process's pid.
        pid: u32,
    },
    /// The init process exited; the exit itself travels beside (see [`Exit`]).
    Exited,
    /// The task was deleted: the container has no task any more.
    Deleted,
    /// The task was paused.
    Paused,
    /// The task was resumed.
    Resumed,
    /// The kernel's OOM killer fired in the container: no change of state by itself (an exit
    /// follows if the init process died).
    Oom,
}

/// Returns `container` as it is after `event`, given the last exit seen for it: the state and
/// pid that reading its task would give, without reading it.
///
/// A create or start of the process that already exited (`last_exit` has its pid) is stale:
/// older shims publish a quick process's exit before its start, and the container stays
/// stopped.
pub fn after_task_event(container: &Container, event: TaskEvent, last_exit: Option<Exit>) -> Container {
    let task = |status: Status, pid: u32| Process { status: status as i32, pid, ..Process::default() };
    let exited = |pid: u32| pid != 0 && last_exit.is_some_and(|e| e.pid == pid);
    let task = match event {
        TaskEvent::Created { pid } | TaskEvent::Started { pid } if exited(pid) => None,
        TaskEvent::Created { pid } => Some(task(Status::Created, pid)),
        TaskEvent::Started { pid } => Some(task(Status::Running, pid)),
        TaskEvent::Paused => Some(task(Status::Paused, container.state.pid)),
        TaskEvent::Resumed => Some(task(Status::Running, container.state.pid)),
        // Stopped, with the exit remembered from the event; the same as reading a stopped task.
        TaskEvent::Exited | TaskEvent::Deleted => None,
        TaskEvent::Oom => return container.clone(),
    };
    with_task(container, task.as_ref(), last_exit)
}

/// Returns `container` after `events`, applied in order (a pause takes the pid a start in the
/// same batch gave); see [`after_task_event`]. containerd sends one container's events in order.
pub fn after_task_events(container: &Container, events: &[TaskEvent], last_exit: Option<Exit>) -> Container {
    let mut after = container.clone();
    for event in events {
        after = after_task_event(&after, *event, last_exit);
    }
    after
}

/// Returns a copy of `container` whose state and pid are those its task (if it has one) and the
/// last exit seen for it give now; everything the record and spec gave is kept.
///
/// A task event changes only these: the collector applies it to the container it built last.
pub fn with_task(container: &Container, task: Option<&Process>, last_exit: Option<Exit>) -> Container {
    Container { state: run_state(task, last_exit, container.state.created_at), ..container.clone() }
}

/// Returns a container's state, with its init process's pid (zero unless it runs or is paused),
/// from its task, the last exit seen for it and its creation time.
fn run_state(task: Option<&Process>, last_exit: Option<Exit>, created_at: Option<Timestamp>) -> ContainerState {
    let (status, running, pid, exit) = match task {
        Some(task) => {
            let status = match Status::try_from(task.status).unwrap_or(Status::Unknown) {
                Status::Created => ContainerStatus::Created,
                Status::Running => ContainerStatus::Running,
                Status::Paused | Status::Pausing => ContainerStatus::Paused,
                Status::Stopped => ContainerStatus::Stopped,
                Status::Unknown => ContainerStatus::Unknown,
            };
            let exit = (status == ContainerStatus::Stopped)
                .then(|| Exit { code: task.exit_status, at: timestamp(task.exited_at.as_ref()), pid: task.pid })
                .or(last_exit);
            (status, status == ContainerStatus::Running, task.pid, exit)
        }
        // No task: the container never started, or its task was deleted after it exited (then
        // the stored exit says how it ended).
        None => match last_exit {
            Some(exit) => (ContainerStatus::Stopped, false, 0, Some(exit)),
            None => (ContainerStatus::Created, false, 0, None),
        },
    };
    let stopped = status == ContainerStatus::Stopped;
    ContainerState {
        running,
        status,
        created_at,
        finished_at: if stopped { exit.and_then(|e| e.at) } else { None },
        exit_code: if stopped { exit.and_then(|e| wm_core::ExitCode::new(i64::from(e.code))) } else { None },
        pid: if running || status == ContainerStatus::Paused { pid } else { 0 },
        ..ContainerState::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(spec_json: &str) -> CtrContainer {
        CtrContainer {
            id: "c1".into(),
            labels: [("team", "x"), (NERDCTL_NAME_LABEL, "web")]
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            image: "docker.io/wm-test/busybox:1".into(),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: spec_json.as_bytes().to_vec(),
            }),
            created_at: Some(prost_types::Timestamp { seconds: 1_800_000_000, nanos: 5 }),
            ..CtrContainer::default()
        }
    }

    const SPEC: &str = r#"{"ociVersion": "1.0.2-dev", "hostname": "web-1",
        "process": {"args": ["/bin/sleep", "100"], "env": ["PATH=/bin", "DD_SERVICE=svc", "TOKEN=x"]},
        "linux": {"cgroupsPath": "/wmtest/c1", "resources": {"memory": {"limit": 134217728}, "cpu": {"quota": 50000, "period": 100000}}}}"#;

    fn task(status: Status, exit_status: u32) -> Process {
        Process {
            container_id: "c1".into(),
            pid: 4242,
            status: status as i32,
            exit_status,
            exited_at: Some(prost_types::Timestamp { seconds: 1_800_000_100, nanos: 0 }),
            ..Process::default()
        }
    }

    #[test]
    fn a_running_task_gives_a_running_container_with_its_spec_fields() {
        let (c, problem) = container_from_containerd(
            &record(SPEC),
            Some(&task(Status::Running, 0)),
            None,
            Some("sha256:abc"),
            &EnvFilter::default(),
        );
        let c = c.unwrap();
        assert_eq!(problem, None);
        assert_eq!((&*c.id, c.name.as_str(), c.details.hostname.as_str()), ("c1", "web", "web-1"));
        assert_eq!(c.env.iter().collect::<Vec<_>>(), vec![("DD_SERVICE", "svc")]);
        assert_eq!(
            (c.image.name.as_str(), c.image.tag.as_str(), c.image.id.as_str()),
            ("docker.io/wm-test/busybox", "1", "sha256:abc")
        );
        assert!(c.state.running);
        assert_eq!((c.state.status, c.state.pid, c.state.exit_code), (ContainerStatus::Running, 4242, None));
        assert_eq!(c.details.cgroup_path, "/wmtest/c1");
        assert_eq!(c.resources.memory_limit, Some(134_217_728));
        assert_eq!(c.resources.cpu_limit, Some(0.5));
        assert_eq!(c.runtime, Some(Runtime::Containerd));
        assert_eq!(c.state.created_at, Some(Timestamp::from_unix(1_800_000_000, 5)));
    }

    #[test]
    fn exit_codes_come_from_the_stopped_task_or_the_remembered_exit() {
        let (c, _) = container_from_containerd(
            &record(SPEC),
            Some(&task(Status::Stopped, 3)),
            None,
            None,
            &EnvFilter::default(),
        );
        let c = c.unwrap();
        assert_eq!(
            (c.state.status, c.state.exit_code, c.state.pid),
            (ContainerStatus::Stopped, wm_core::ExitCode::new(3), 0)
        );
        assert_eq!(c.state.finished_at, Some(Timestamp::from_unix(1_800_000_100, 0)));
        let exit = Exit { code: 137, at: Some(Timestamp::from_unix(1_800_000_200, 0)), pid: 0 };
        let (c, _) = container_from_containerd(&record(SPEC), None, Some(exit), None, &EnvFilter::default());
        let c = c.unwrap();
        assert_eq!(
            (c.state.status, c.state.exit_code, c.state.finished_at),
            (ContainerStatus::Stopped, wm_core::ExitCode::new(137), exit.at)
        );
        let (c, _) = container_from_containerd(&record(SPEC), None, None, None, &EnvFilter::default());
        assert_eq!(c.unwrap().state.status, ContainerStatus::Created);
    }

    #[test]
    fn each_task_event_gives_what_reading_the_task_after_it_gives() {
        let env = EnvFilter::default();
        let (created, _) = container_from_containerd(&record(SPEC), None, None, None, &env);
        let created = created.unwrap();
        let full = |task: Option<Process>, exit: Option<Exit>| {
            container_from_containerd(&record(SPEC), task.as_ref(), exit, None, &env).0.unwrap()
        };
        let (made, running, paused) = (task(Status::Created, 0), task(Status::Running, 0), task(Status::Paused, 0));
        let exit = Exit { code: 3, at: Some(Timestamp::from_unix(1_800_000_100, 0)), pid: 4242 };
        let c = after_task_event(&created, TaskEvent::Created { pid: 4242 }, None);
        assert_eq!(c, full(Some(made), None));
        let c = after_task_event(&c, TaskEvent::Started { pid: 4242 }, None);
        assert_eq!(c, full(Some(running.clone()), None));
        assert_eq!(after_task_event(&c, TaskEvent::Oom, None), c);
        let c = after_task_event(&c, TaskEvent::Paused, None);
        assert_eq!(c, full(Some(paused), None));
        let c = after_task_event(&c, TaskEvent::Resumed, None);
        assert_eq!(c, full(Some(running), None));
        let stopped = after_task_event(&c, TaskEvent::Exited, Some(exit));
        assert_eq!(stopped, full(Some(task(Status::Stopped, 3)), None));
        assert_eq!(after_task_event(&stopped, TaskEvent::Deleted, Some(exit)), full(None, Some(exit)));
        // A task deleted before it ran, with no exit: the container is created again.
        assert_eq!(after_task_event(&c, TaskEvent::Deleted, None), full(None, None));
    }

    #[test]
    fn a_batch_applies_its_events_in_order_and_a_stale_start_stays_stopped() {
        let env = EnvFilter::default();
        let (created, _) = container_from_containerd(&record(SPEC), None, None, None, &env);
        let created = created.unwrap();
        let full = |task: Option<Process>, exit: Option<Exit>| {
            container_from_containerd(&record(SPEC), task.as_ref(), exit, None, &env).0.unwrap()
        };
        // A start and a pause in one batch: paused with the started pid, not pid 0.
        let batch = [TaskEvent::Created { pid: 4242 }, TaskEvent::Started { pid: 4242 }, TaskEvent::Paused];
        assert_eq!(after_task_events(&created, &batch, None), full(Some(task(Status::Paused, 0)), None));
        // An older shim's order: the exit, then the start of the same process.
        let exit = Exit { code: 0, at: Some(Timestamp::from_unix(1_800_000_100, 0)), pid: 4242 };
        let batch = [TaskEvent::Created { pid: 4242 }, TaskEvent::Exited, TaskEvent::Started { pid: 4242 }];
        let after = after_task_events(&created, &batch, Some(exit));
        assert_eq!((after.state.status, after.state.pid), (ContainerStatus::Stopped, 0));
        assert_eq!(after.state.exit_code, wm_core::ExitCode::new(0));
    }

    #[test]
    fn a_task_applied_to_a_built_container_gives_what_a_full_build_gives() {
        let env = EnvFilter::default();
        let (created, _) = container_from_containerd(&record(SPEC), None, None, Some("sha256:abc"), &env);
        let created = created.unwrap();
        let exit = Exit { code: 137, at: Some(Timestamp::from_unix(1_800_000_200, 0)), pid: 0 };
        let cases = [
            (Some(task(Status::Running, 0)), None),
            (Some(task(Status::Paused, 0)), None),
            (Some(task(Status::Stopped, 3)), None),
            (None, Some(exit)),
            (None, None),
        ];
        for (task, last_exit) in cases {
            let (full, _) =
                container_from_containerd(&record(SPEC), task.as_ref(), last_exit, Some("sha256:abc"), &env);
            assert_eq!(
                with_task(&created, task.as_ref(), last_exit),
                full.unwrap(),
                "task {task:?}, exit {last_exit:?}"
            );
        }
    }

    #[test]
    fn sandboxes_are_skipped_and_a_bad_spec_is_reported_not_fatal() {
        let mut sandbox = record(SPEC);
        sandbox.labels.insert(CRI_KIND_LABEL.into(), "sandbox".into());
        assert!(container_from_containerd(&sandbox, None, None, None, &EnvFilter::default()).0.is_none());
        let (c, problem) = container_from_containerd(&record("{not json"), None, None, None, &EnvFilter::default());
        assert!(c.is_some_and(|c| c.env.is_empty() && c.labels.get("team") == Some("x")));
        assert!(problem.is_some_and(|p| p.contains("OCI spec")));
        // Odd values never panic.
        let odd = r#"{"linux": {"resources": {"memory": {"limit": -1}, "cpu": {"quota": -1, "period": 0}}}}"#;
        let (c, problem) = container_from_containerd(&record(odd), None, None, None, &EnvFilter::default());
        assert_eq!(problem, None);
        assert!(c.unwrap().resources.is_none());
    }

    #[test]
    fn kubernetes_containers_are_named_by_their_label_and_owned_by_their_pod() {
        let mut r = record(SPEC);
        r.labels.insert(KUBE_CONTAINER_NAME_LABEL.into(), "app".into());
        r.labels.insert(KUBE_POD_UID_LABEL.into(), "uid-1".into());
        let c = container_from_containerd(&r, None, None, None, &EnvFilter::default()).0.unwrap();
        assert_eq!(c.name, "app");
        assert_eq!(c.owner, Some(EntityId::new(Kind::KubernetesPod, "uid-1")));
    }
}
