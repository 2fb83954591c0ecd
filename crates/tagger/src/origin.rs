//! Origin detection: which container (or pod) a process, a metric or a trace comes from.
//!
//! The functions here read a `/proc/<pid>/cgroup` file or one cgroup path (docker, containerd,
//! CRI-O, podman, ECS, systemd slices, cgroup v1 and v2), a container's `/proc/self/mountinfo`,
//! and the origin fields DogStatsD and APM clients send (`ci-<id>`, `in-<inode>`, `cid-<id>`, and
//! the admission controller's external data `it-…,cn-…,pu-…`). None of them panics on odd input:
//! what cannot be read gives `None`.

use wm_core::sync::MutexExt;

pub use wm_core::cgroup::{container_id_from_cgroup_path, container_id_from_proc_cgroup};
use wm_core::cgroup::{is_fargate_id, is_hex};

/// What a container's `/proc/self/mountinfo` shows about where it runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountinfoOrigin {
    /// The container id, when a mount names it (docker's `/var/lib/docker/containers/<id>/…`).
    pub container_id: Option<String>,
    /// The pod UID, when a mount comes from the kubelet (`/var/lib/kubelet/pods/<uid>/…`).
    pub pod_uid: Option<String>,
}

/// Reads the container id and pod UID from a container's mountinfo, taking the first mount that
/// names each.
///
/// A containerd sandbox id (`…/sandboxes/<id>/…`) names the pod's pause container, not the
/// caller's, so it is not reported as the container id.
pub fn origin_from_mountinfo(content: &str) -> MountinfoOrigin {
    let mut origin = MountinfoOrigin::default();
    for line in content.lines() {
        // Field 4 is the root of the mount within its filesystem.
        let Some(root) = line.split(' ').nth(3) else { continue };
        let mut parts = root.split('/');
        while let Some(part) = parts.next() {
            match part {
                "containers" if origin.container_id.is_none() => {
                    if let Some(id) = parts.clone().next().filter(|id| is_hex(id, 64)) {
                        origin.container_id = Some(id.to_owned());
                    }
                }
                "pods" if origin.pod_uid.is_none() && root.contains("/kubelet/pods/") => {
                    if let Some(uid) = parts.clone().next().filter(|u| u.len() == 36 && u.matches('-').count() == 4) {
                        origin.pod_uid = Some(uid.to_owned());
                    }
                }
                _ => {}
            }
        }
    }
    origin
}

/// The local origin fields of a DogStatsD packet or a trace (`c:` / `Datadog-Container-ID`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalData {
    /// `ci-<id>` (or `cid-<id>`, or a bare id from older clients).
    pub container_id: Option<String>,
    /// `in-<inode>`: the cgroup's inode, when the client could not read its container id.
    pub cgroup_inode: Option<u64>,
}

/// Parses local origin data, `ci-<id>,in-<inode>`: the items may come in any order and either may
/// be missing.
///
/// A bare 64-hex or Fargate id, from older clients, is taken as the container id unless one came
/// before it. An unreadable inode or an unknown item is ignored.
pub fn parse_local_data(text: &str) -> LocalData {
    let mut data = LocalData::default();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if let Some(id) = item.strip_prefix("ci-").or_else(|| item.strip_prefix("cid-")) {
            data.container_id = Some(id.to_owned());
        } else if let Some(inode) = item.strip_prefix("in-") {
            data.cgroup_inode = inode.parse().ok();
        } else if data.container_id.is_none() && (is_hex(item, 64) || is_fargate_id(item)) {
            data.container_id = Some(item.to_owned());
        }
    }
    data
}

/// The external data the admission controller gives a container (in `DD_EXTERNAL_ENV`), which
/// its client sends on: which container of which pod sent the data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExternalData {
    /// `it-true`: an init container.
    pub init: bool,
    /// `cn-<name>`: the container's name in the pod spec.
    pub container_name: Option<String>,
    /// `pu-<uid>`: the pod UID.
    pub pod_uid: Option<String>,
}

/// Parses external data, `it-false,cn-app,pu-<uid>`: the items may come in any order. Unknown
/// items, and `cn-` or `pu-` with an empty value, are ignored.
pub fn parse_external_data(text: &str) -> ExternalData {
    let mut data = ExternalData::default();
    for item in text.split(',').map(str::trim) {
        if let Some(v) = item.strip_prefix("it-") {
            data.init = v.eq_ignore_ascii_case("true");
        } else if let Some(v) = item.strip_prefix("cn-").filter(|v| !v.is_empty()) {
            data.container_name = Some(v.to_owned());
        } else if let Some(v) = item.strip_prefix("pu-").filter(|v| !v.is_empty()) {
            data.pod_uid = Some(v.to_owned());
        }
    }
    data
}

/// Returns the id of the container that external data names, found by its name among the pod's
/// containers (or init containers) in the workload store.
///
/// `None` when the data lacks the pod UID or the container name, when the store does not have the
/// pod, or when the pod has no container of that name with an id yet.
pub fn container_id_from_external_data(reader: &dyn wm_core::StoreReader, data: &ExternalData) -> Option<String> {
    let pod = reader.get_kubernetes_pod(data.pod_uid.as_deref()?)?;
    let name = data.container_name.as_deref()?;
    let list = if data.init { &pod.details.init_containers } else { &pod.containers };
    list.iter().find(|c| c.name == name && !c.id.is_empty()).map(|c| c.id.to_string())
}

/// Finds container ids by the inode of their cgroup directory, in a cgroup v2 hierarchy.
///
/// This answers Datadog's `in-<inode>` origin: a client in a container that cannot read its own
/// id sends the inode of its cgroup instead. Lookups may walk the filesystem, so call them off
/// the async threads (e.g. in `spawn_blocking`).
#[derive(Debug)]
pub struct CgroupInodes {
    root: Option<std::path::PathBuf>,
    state: std::sync::Mutex<InodeState>,
}

#[derive(Debug, Default)]
struct InodeState {
    ids: std::collections::HashMap<u64, String>,
    scanned: Option<std::time::Instant>,
}

/// How many directory levels deep a cgroup tree is walked (kubepods/<qos>/pod<uid>/<id> is four).
const MAX_CGROUP_DEPTH: usize = 8;
/// How often, at most, a lookup of an unknown inode walks the tree again.
const RESCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl CgroupInodes {
    /// Creates a finder for the cgroup v2 hierarchy under `cgroup_root` (`container_cgroup_root`).
    ///
    /// That is the root itself when it is one (it has `cgroup.controllers`), else its `unified`
    /// mount (hybrid hosts). On a host without cgroup v2 there is none, and every lookup answers
    /// `None`. The tree is first walked at the first lookup.
    pub fn new(cgroup_root: &std::path::Path) -> Self {
        let root = [cgroup_root.to_path_buf(), cgroup_root.join("unified")]
            .into_iter()
            .find(|dir| dir.join("cgroup.controllers").exists());
        Self { root, state: std::sync::Mutex::new(InodeState::default()) }
    }

    /// Returns the cgroup v2 hierarchy it reads, if the host has one.
    pub fn root(&self) -> Option<&std::path::Path> {
        self.root.as_deref()
    }

    /// Returns the id of the container whose cgroup directory has `inode`.
    ///
    /// On a miss it walks the tree again, at most once a second, so that containers started
    /// since the last walk are found; other lookups wait during the walk.
    pub fn container_id(&self, inode: u64) -> Option<String> {
        let root = self.root.as_ref()?;
        let mut state = self.state.locked();
        if let Some(id) = state.ids.get(&inode) {
            return Some(id.clone());
        }
        if state.scanned.is_some_and(|at| at.elapsed() < RESCAN_EVERY) {
            return None;
        }
        let mut ids = std::collections::HashMap::new();
        scan(root, root, 0, &mut ids);
        state.ids = ids;
        state.scanned = Some(std::time::Instant::now());
        state.ids.get(&inode).cloned()
    }
}

/// Adds to `ids` the inode of every directory under `dir` whose path from `root` names a
/// container, down to [`MAX_CGROUP_DEPTH`]; directories it cannot read are skipped.
fn scan(root: &std::path::Path, dir: &std::path::Path, depth: usize, ids: &mut std::collections::HashMap<u64, String>) {
    use std::os::unix::fs::MetadataExt;
    if depth > MAX_CGROUP_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else { continue };
        if !kind.is_dir() {
            continue;
        }
        let path = entry.path();
        if let (Ok(meta), Ok(relative)) = (entry.metadata(), path.strip_prefix(root))
            && let Some(id) = container_id_from_cgroup_path(&format!("/{}", relative.display()), &[])
        {
            ids.insert(meta.ino(), id.to_owned());
        }
        scan(root, &path, depth + 1, ids);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_inode_names_the_container_whose_directory_it_is() {
        use std::os::unix::fs::MetadataExt;
        let root = std::env::temp_dir().join(format!("wm-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let id = "a".repeat(64);
        let dir = root.join(format!("kubepods/burstable/pod1234/{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory\n").unwrap();
        let late = root.join(format!("system.slice/docker-{}.scope", "b".repeat(64)));
        let inodes = CgroupInodes::new(&root);
        assert_eq!(inodes.root(), Some(root.as_path()));
        let inode = std::fs::metadata(&dir).unwrap().ino();
        assert_eq!(inodes.container_id(inode).as_deref(), Some(id.as_str()));
        let pod = std::fs::metadata(root.join("kubepods/burstable/pod1234")).unwrap().ino();
        assert_eq!(inodes.container_id(pod), None, "a pod's cgroup is no container");
        // A container that appears later is found by the rescan a miss triggers (once a second).
        std::fs::create_dir_all(&late).unwrap();
        std::thread::sleep(RESCAN_EVERY);
        let late_inode = std::fs::metadata(&late).unwrap().ino();
        assert_eq!(inodes.container_id(late_inode), Some("b".repeat(64)));
        assert_eq!(CgroupInodes::new(&root.join("missing")).container_id(inode), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn fixture(name: &str) -> String {
        test_support::testdata::read(&format!("fixtures/cgroup/{name}"))
    }

    #[test]
    fn real_proc_cgroup_captures_give_their_container_or_none() {
        let cases = [
            ("proc_cgroup_docker_v1", Some("dbb9da43ad7f7205825e4fc2b292d8a620e2ed2de95cd5745450eaf49582d0b9")),
            ("proc_cgroup_containerd_v1", Some("951d261fc2837e27b57b042e0f1c4affc9a6e23024e89b44b22cebc76bb7f842")),
            ("proc_cgroup_podman_v1", Some("2451765ba8a4913f71ff0958e90237fd1418912d6a7c03deeacdae357153e84e")),
            ("proc_cgroup_containerd_v1_named", Some("cg2")),
            ("proc_cgroup_host_v1", None),
        ];
        for (file, want) in cases {
            assert_eq!(container_id_from_proc_cgroup(&fixture(file), &["default"]), want, "{file}");
        }
        // Without the namespace list, a non-hex containerd name is not guessed.
        assert_eq!(container_id_from_proc_cgroup(&fixture("proc_cgroup_containerd_v1_named"), &[]), None);
    }

    #[test]
    fn real_mountinfo_captures_give_the_docker_container_or_the_pod() {
        let docker = origin_from_mountinfo(&fixture("mountinfo_docker"));
        assert_eq!(docker.pod_uid, None);
        let id = docker.container_id.expect("docker mountinfo names its container");
        assert!(id.starts_with("0cfa82bf3ab2") && id.len() == 64, "{id}");

        let k8s = origin_from_mountinfo(&fixture("mountinfo_k8s"));
        assert_eq!(k8s.container_id, None, "the sandbox id is the pause container's, not ours");
        let uid = k8s.pod_uid.expect("the kubelet's pod directory names the pod");
        assert_eq!(uid.len(), 36);
    }

    #[test]
    fn hand_written_paths_of_each_runtime() {
        let fargate = "34dc0b5e626f2c5c4c5170e34b10e765-1234567890";
        let paths = [
            (format!("/docker/{ID}"), Some(ID)),
            (format!("/system.slice/docker-{ID}.scope"), Some(ID)),
            (format!("/kubepods/burstable/pod0c1f6ef4-3b0e-4bb4-a9b9-6d4c1c2b8c57/{ID}"), Some(ID)),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0c1f.slice/cri-containerd-{ID}.scope"
                ),
                Some(ID),
            ),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice/crio-{ID}.scope"),
                Some(ID),
            ),
            (format!("/kubepods.slice/kubepods-podx.slice/crio-conmon-{ID}.scope"), None),
            (format!("/machine.slice/libpod-{ID}.scope/container"), Some(ID)),
            (format!("/libpod_parent/libpod-{ID}"), Some(ID)),
            (format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"), Some(ID)),
            (format!("/ecs/8474c1c2-b5a1-4c41-97ae-8b57a3e84e22/{ID}"), Some(ID)),
            (format!("/ecs/34dc0b5e626f2c5c4c5170e34b10e765/{fargate}"), Some(fargate)),
            ("/".to_owned(), None),
            ("/user.slice/user-1000.slice/session-3.scope".to_owned(), None),
            ("/process_api/84f713e2ca84301dd0f14a43c0861c2f".to_owned(), None),
            ("".to_owned(), None),
        ];
        for (path, want) in &paths {
            assert_eq!(container_id_from_cgroup_path(path, &[]), *want, "{path}");
        }
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_id_from_proc_cgroup(&v2, &[]), Some(ID));
        assert_eq!(container_id_from_proc_cgroup("garbage\n::\n1:cpu\n", &[]), None);
    }

    #[test]
    fn origin_fields_parse_in_any_order() {
        assert_eq!(
            parse_local_data(&format!("in-1234,ci-{ID}")),
            LocalData { container_id: Some(ID.into()), cgroup_inode: Some(1234) }
        );
        assert_eq!(parse_local_data("cid-abc").container_id.as_deref(), Some("abc"));
        assert_eq!(parse_local_data(ID).container_id.as_deref(), Some(ID));
        assert_eq!(parse_local_data("in-notanumber,zzz"), LocalData::default());
        assert_eq!(
            parse_external_data("it-false,cn-app,pu-0c1f6ef4-3b0e-4bb4-a9b9-6d4c1c2b8c57"),
            ExternalData {
                init: false,
                container_name: Some("app".into()),
                pod_uid: Some("0c1f6ef4-3b0e-4bb4-a9b9-6d4c1c2b8c57".into())
            }
        );
        assert!(parse_external_data("it-true").init);
        assert_eq!(parse_external_data(""), ExternalData::default());
    }
}
