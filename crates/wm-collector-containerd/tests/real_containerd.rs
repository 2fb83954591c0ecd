//! The containerd collector against a real containerd (with a real dockerd on it, whose `moby`
//! namespace must stay out), started by `test_support::runtimes` in a private directory.
//! Containers are made with containerd's own CLI, `ctr`. Under `cargo xtask ci` (`WM_CI=1`)
//! these never skip; elsewhere, without root or the Debian packages, they print `SKIPPED: <why>`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    CreateContainerRequest, GetImageRequest, ListContainersRequest, ListNamespacesRequest, ListTasksRequest,
};
use futures::StreamExt;
use test_support::runtimes::{Runtimes, with_service};
use test_support::watch::{Watcher, assert_store_equals, eventually};
use wm_collector_containerd::{ContainerdCollector, ContainerdConfig, container_from_containerd};
use wm_core::{Container, ContainerStatus, EnvFilter, EventType, Runtime};
use wm_store::Store;

const WAIT: Duration = Duration::from_secs(15);
const NS: &str = Runtimes::CTR_NAMESPACE;

fn with_daemons(test: &str, body: impl AsyncFnOnce(&mut Runtimes)) {
    with_service(test, Runtimes::start, body);
}

fn store_with_containerd(rt: &Runtimes) -> Store {
    let config = ContainerdConfig { cri_socket_path: Some(rt.containerd_socket()), ..ContainerdConfig::default() };
    let store = Store::builder().collector(ContainerdCollector::new(config).into_collector()).build();
    store.start();
    store
}

/// Runs `ctr` in `namespace`, off the async workers, and fails the test if it fails.
async fn ctr(rt: &Runtimes, namespace: &str, args: &[&str]) -> String {
    let out = tokio::task::block_in_place(|| rt.ctr(namespace, args)).unwrap();
    assert!(out.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn request<T>(namespace: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("containerd-namespace", namespace.parse().unwrap());
    request
}

/// containerd's own view: every container of every namespace but `moby`, with its task, as the
/// collector converts it (no remembered exits: tests using this keep their tasks).
async fn daemon_view(rt: &Runtimes) -> BTreeMap<String, Container> {
    let channel = containerd_client::connect(rt.containerd_socket()).await.unwrap();
    let mut containers = ContainersClient::new(channel.clone());
    let mut tasks = TasksClient::new(channel.clone());
    let mut images = ImagesClient::new(channel.clone());
    let namespaces = NamespacesClient::new(channel).list(ListNamespacesRequest::default()).await.unwrap().into_inner();
    let mut view = BTreeMap::new();
    let config = ContainerdConfig::default();
    for ns in namespaces.namespaces.into_iter().map(|n| n.name).filter(|n| config.watches(n)) {
        let records = containers.list(request(&ns, ListContainersRequest::default())).await.unwrap().into_inner();
        let listed = tasks.list(request(&ns, ListTasksRequest::default())).await.unwrap().into_inner().tasks;
        for record in records.containers {
            let task = listed.iter().find(|t| t.container_id == record.id || t.id == record.id);
            let digest = images
                .get(request(&ns, GetImageRequest { name: record.image.clone() }))
                .await
                .ok()
                .and_then(|r| r.into_inner().image)
                .and_then(|i| i.target)
                .map(|t| t.digest);
            if let (Some(c), _) =
                container_from_containerd(&record, task, None, digest.as_deref(), &EnvFilter::default())
            {
                view.insert(record.id.clone(), c);
            }
        }
    }
    view
}

async fn assert_store_equals_daemon(store: &Store, rt: &Runtimes, within: Duration) {
    assert_store_equals(store, "containerd", within, || daemon_view(rt)).await;
}

#[test]
fn containers_and_tasks_are_followed_in_every_namespace_but_moby() {
    with_daemons("containers_and_tasks_are_followed_in_every_namespace_but_moby", async |rt| {
        // Before the collector starts: a running container here, and one of docker's in `moby`.
        ctr(
            rt,
            NS,
            &[
                "run",
                "-d",
                "--label",
                "team=a",
                "--env",
                "DD_ENV=prod",
                Runtimes::CTR_IMAGE,
                "pre",
                "/bin/sleep",
                "300",
            ],
        )
        .await;
        let out = rt.docker(&["run", "-d", "--network", "none", Runtimes::IMAGE, "sleep", "300"]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let docker_id = String::from_utf8_lossy(&out.stdout).trim().to_owned();

        let store = store_with_containerd(rt);
        let mut w = Watcher::containers(&store);
        w.until("the pre-existing container", WAIT, |w| w.get("pre").is_some_and(|c| c.state.running)).await;
        let c = w.get("pre").unwrap();
        assert_eq!(c.labels.get("team"), Some("a"));
        assert_eq!(c.env.get("DD_ENV"), Some("prod"));
        assert_eq!(c.runtime, Some(Runtime::Containerd));
        assert_eq!((c.image.name.as_str(), c.image.tag.as_str()), ("docker.io/wm-test/busybox", "1"));
        assert!(c.image.id.starts_with("sha256:"), "image digest {:?}", c.image.id);
        assert!(c.state.pid > 0);
        assert!(!c.details.cgroup_path.is_empty());

        // create, then start its task: labels and env, filtered.
        ctr(
            rt,
            NS,
            &[
                "containers",
                "create",
                "--label",
                "team=b",
                "--env",
                "DD_SERVICE=web",
                "--env",
                "API_SECRET=x",
                Runtimes::CTR_IMAGE,
                "life",
                "/bin/sleep",
                "300",
            ],
        )
        .await;
        w.until("the created container", WAIT, |w| {
            w.get("life").is_some_and(|c| c.state.status == ContainerStatus::Created)
        })
        .await;
        let c = w.get("life").unwrap();
        assert_eq!(c.labels.get("team"), Some("b"));
        assert_eq!(c.env.iter().collect::<Vec<_>>(), vec![("DD_SERVICE", "web")]);
        ctr(rt, NS, &["tasks", "start", "--detach", "life"]).await;
        w.until("the started task", WAIT, |w| w.get("life").is_some_and(|c| c.state.running && c.state.pid > 0)).await;
        // A record change after task events (which reuse the container built last) is read
        // in full, and the task events after it keep it.
        ctr(rt, NS, &["containers", "label", "life", "team=c"]).await;
        w.until("the relabelled container", WAIT, |w| {
            w.get("life").is_some_and(|c| c.labels.get("team") == Some("c") && c.state.running)
        })
        .await;
        ctr(rt, NS, &["tasks", "pause", "life"]).await;
        w.until("the paused task", WAIT, |w| w.get("life").is_some_and(|c| c.state.status == ContainerStatus::Paused))
            .await;
        let c = w.get("life").unwrap();
        assert_eq!(c.labels.get("team"), Some("c"));
        assert_eq!(c.env.iter().collect::<Vec<_>>(), vec![("DD_SERVICE", "web")]);
        ctr(rt, NS, &["tasks", "resume", "life"]).await;
        w.until("the resumed task", WAIT, |w| {
            w.get("life").is_some_and(|c| c.state.status == ContainerStatus::Running)
        })
        .await;
        ctr(rt, NS, &["tasks", "kill", "--signal", "SIGKILL", "life"]).await;
        w.until("the killed task", WAIT, |w| {
            w.get("life").is_some_and(|c| c.state.exit_code == wm_core::ExitCode::new(137))
        })
        .await;
        let c = w.get("life").unwrap();
        assert!(!c.state.running && c.state.status == ContainerStatus::Stopped && c.state.finished_at.is_some());
        // Deleting the task forgets its exit status in containerd; the store keeps it.
        ctr(rt, NS, &["tasks", "delete", "life"]).await;
        store.sync().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        w.until("the exit code kept after the task's deletion", WAIT, |w| {
            w.get("life").is_some_and(|c| {
                c.state.exit_code == wm_core::ExitCode::new(137) && c.state.status == ContainerStatus::Stopped
            })
        })
        .await;
        ctr(rt, NS, &["containers", "delete", "life"]).await;
        w.until("the deleted container unset", WAIT, |w| w.get("life").is_none()).await;
        assert!(w.saw(EventType::Unset, "life"));

        // A process that exits by itself, in another namespace.
        ctr(
            rt,
            "second",
            &["run", "-d", "--rootfs", &rt.rootfs().display().to_string(), "exits", "/bin/sh", "-c", "exit 3"],
        )
        .await;
        w.until("exit code 3 in namespace second", WAIT, |w| {
            w.get("exits").is_some_and(|c| c.state.exit_code == wm_core::ExitCode::new(3))
        })
        .await;

        assert!(
            store.get_container(&docker_id).is_none(),
            "docker's container (namespace moby) was reported by containerd"
        );
        assert!(!w.saw(EventType::Set, &docker_id));
        assert_store_equals_daemon(&store, rt, WAIT).await;
        store.shutdown().await;
    });
}

#[test]
fn a_container_that_lives_less_than_a_second_is_seen_set_and_unset() {
    with_daemons("a_container_that_lives_less_than_a_second_is_seen_set_and_unset", async |rt| {
        let store = store_with_containerd(rt);
        let mut w = Watcher::containers(&store);
        w.until("the first list", WAIT, |_| store.health().is_ready()).await;
        for round in 0..3 {
            let id = format!("blink-{round}");
            let started = Instant::now();
            ctr(rt, NS, &["run", "--rm", Runtimes::CTR_IMAGE, &id, "/bin/true"]).await;
            w.until("the short-lived container's set and unset", WAIT, |w| {
                w.saw(EventType::Set, &id) && w.saw(EventType::Unset, &id)
            })
            .await;
            let set = w.log.iter().position(|(k, c)| *k == EventType::Set && *c.id == *id).unwrap();
            let unset = w.log.iter().rposition(|(k, c)| *k == EventType::Unset && *c.id == *id).unwrap();
            assert!(set < unset && w.get(&id).is_none());
            println!("{id}: seen set and unset, {:?} after ctr run", started.elapsed());
        }
        store.shutdown().await;
    });
}

#[test]
fn after_containerd_is_killed_and_restarted_the_store_equals_its_list_within_10s() {
    with_daemons("after_containerd_is_killed_and_restarted_the_store_equals_its_list_within_10s", async |rt| {
        for i in 0..5 {
            let name = format!("before-{i}");
            if i % 2 == 0 {
                ctr(rt, NS, &["run", "-d", Runtimes::CTR_IMAGE, &name, "/bin/sleep", "300"]).await;
            } else {
                ctr(rt, NS, &["containers", "create", Runtimes::CTR_IMAGE, &name, "/bin/sleep", "300"]).await;
            }
        }
        let store = store_with_containerd(rt);
        let mut w = Watcher::containers(&store);
        w.until("the first list", WAIT, |w| w.containers.len() == 5).await;
        assert_eq!(w.containers.values().filter(|c| c.state.running && c.state.pid > 0).count(), 3, "{}", w.describe());
        for cycle in 0..2 {
            tokio::task::block_in_place(|| rt.kill_containerd());
            tokio::time::sleep(Duration::from_millis(1500)).await;
            tokio::task::block_in_place(|| rt.start_containerd()).unwrap();
            let back = Instant::now();
            // Change things at once, while the collector is still reconnecting.
            ctr(rt, NS, &["containers", "delete", &format!("before-{}", 2 * cycle + 1)]).await;
            ctr(rt, NS, &["run", "-d", Runtimes::CTR_IMAGE, &format!("after-{cycle}"), "/bin/sleep", "300"]).await;
            assert_store_equals_daemon(&store, rt, Duration::from_secs(10).saturating_sub(back.elapsed())).await;
            println!("cycle {cycle}: the store equals containerd's list {:?} after its return", back.elapsed());
        }
        store.shutdown().await;
    });
}

#[test]
fn two_hundred_containers_created_and_removed_in_bursts_end_equal_to_containerds_list() {
    with_daemons("two_hundred_containers_created_and_removed_in_bursts_end_equal_to_containerds_list", async |rt| {
        let store = store_with_containerd(rt);
        let mut w = Watcher::containers(&store);
        w.until("the first list", WAIT, |_| store.health().is_ready()).await;
        let rt: &Runtimes = rt;
        let mut alive: Vec<String> = Vec::new();
        for burst in 0..4 {
            let names: Vec<String> = (0..50).map(|i| format!("burst-{burst}-{i}")).collect();
            let doomed: Vec<String> = alive.iter().step_by(2).cloned().collect();
            alive.retain(|id| !doomed.contains(id));
            // Create this burst and remove half of what exists, on 8 threads at once.
            let work: Vec<(bool, &String)> =
                names.iter().map(|n| (true, n)).chain(doomed.iter().map(|n| (false, n))).collect();
            tokio::task::block_in_place(|| {
                std::thread::scope(|s| {
                    for chunk in work.chunks(work.len().div_ceil(8)) {
                        s.spawn(move || {
                            for (create, name) in chunk {
                                let args: Vec<&str> = if *create {
                                    vec!["containers", "create", Runtimes::CTR_IMAGE, name, "/bin/sleep", "300"]
                                } else {
                                    vec!["containers", "delete", name]
                                };
                                let out = rt.ctr(NS, &args).unwrap();
                                assert!(out.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
                            }
                        });
                    }
                });
            });
            alive.extend(names);
        }
        assert_store_equals_daemon(&store, rt, WAIT).await;
        assert_eq!(store.list_containers().len(), alive.len());
        println!("{} containers after 200 creations in 4 bursts: the store equals containerd's list", alive.len());
        store.shutdown().await;
    });
}

/// A record as the CRI plugin would make one on a dense node: a spec of about 20 KB.
fn dense_record(id: &str) -> containerd_client::services::v1::Container {
    let env: Vec<String> = (0..200).map(|i| format!("VAR_{i:03}={}", "x".repeat(90))).collect();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": { "args": ["/bin/sleep", "300"], "env": env, "cwd": "/" },
        "root": { "path": "rootfs" },
        "annotations": { "io.kubernetes.cri.container-type": "container" },
    });
    containerd_client::services::v1::Container {
        id: id.to_owned(),
        labels: [("team".to_owned(), "dense".to_owned())].into(),
        runtime: Some(containerd_client::services::v1::container::Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: serde_json::to_vec(&spec).unwrap(),
        }),
        ..Default::default()
    }
}

#[test]
fn two_thousand_containers_with_20_kb_specs_are_all_stored() {
    with_daemons("two_thousand_containers_with_20_kb_specs_are_all_stored", async |rt| {
        // Made through containerd's API (2,000 `ctr` processes would take minutes): about 40 MB
        // of records, ten times the 4 MiB a single list message may carry.
        let channel = containerd_client::connect(rt.containerd_socket()).await.unwrap();
        let containers = ContainersClient::new(channel);
        let spec_bytes = dense_record("x").spec.unwrap().value.len();
        assert!(spec_bytes >= 20_000, "{spec_bytes}");
        let ids: Vec<String> = (0..2000).map(|i| format!("dense-{i:04}")).collect();
        futures::stream::iter(ids.clone())
            .for_each_concurrent(16, |id| {
                let mut containers = containers.clone();
                async move {
                    let create = CreateContainerRequest { container: Some(dense_record(&id)) };
                    containers.create(request("dense", create)).await.unwrap();
                }
            })
            .await;

        let store = store_with_containerd(rt);
        eventually("every dense container", Duration::from_secs(60), || store.list_containers().len() == 2000).await;
        let stored: Vec<String> = store.list_containers().iter().map(|c| c.id.to_string()).collect();
        assert_eq!(stored, ids);
        let one = store.get_container("dense-0042").unwrap();
        assert_eq!(one.labels.get("team"), Some("dense"));
        assert!(one.env.is_empty(), "no env var of the spec is one the rules read: {:?}", one.env);
        println!("2,000 containers of {spec_bytes} B specs ({} MB in all) stored", 2000 * spec_bytes / 1_000_000);
        store.shutdown().await;
    });
}

#[test]
fn a_cri_sandbox_never_reaches_a_subscriber() {
    with_daemons("a_cri_sandbox_never_reaches_a_subscriber", async |rt| {
        // Sandboxes run their own image, as the pause image is on a node.
        ctr(rt, NS, &["images", "tag", Runtimes::CTR_IMAGE, "docker.io/wm-test/pause:1"]).await;
        let store = store_with_containerd(rt);
        let mut w = Watcher::containers(&store);
        w.until("the first list", WAIT, |_| store.health().is_ready()).await;
        let sandbox = |id: &str| {
            vec![
                "run".to_owned(),
                "-d".into(),
                "--label".into(),
                "io.cri-containerd.kind=sandbox".into(),
                "--label".into(),
                format!("io.kubernetes.pod.uid=uid-{id}"),
                "--label".into(),
                "io.kubernetes.pod.namespace=default".into(),
                "--label".into(),
                format!("io.kubernetes.pod.name=pod-{id}"),
                "docker.io/wm-test/pause:1".into(),
                id.into(),
                "/bin/sleep".into(),
                "300".into(),
            ]
        };
        let args = sandbox("sandbox-1");
        ctr(rt, NS, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        ctr(rt, NS, &["run", "-d", Runtimes::CTR_IMAGE, "barrier-1", "/bin/sleep", "300"]).await;
        w.until("the container made after the sandbox", WAIT, |w| w.saw(EventType::Set, "barrier-1")).await;
        // The pod stops: its sandbox's task is killed and deleted, then the sandbox.
        ctr(rt, NS, &["task", "kill", "-s", "SIGKILL", "sandbox-1"]).await;
        for _ in 0..50 {
            if tokio::task::block_in_place(|| rt.ctr(NS, &["task", "delete", "sandbox-1"])).unwrap().status.success() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ctr(rt, NS, &["containers", "delete", "sandbox-1"]).await;
        // A sandbox that lives and dies before the collector can read it.
        let mut args = sandbox("sandbox-2");
        args[1] = "--rm".into();
        let last = args.len() - 2;
        args.truncate(last);
        args.push("/bin/true".into());
        ctr(rt, NS, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        ctr(rt, NS, &["run", "-d", Runtimes::CTR_IMAGE, "barrier-2", "/bin/sleep", "300"]).await;
        w.until("the container made after the sandboxes went", WAIT, |w| w.saw(EventType::Set, "barrier-2")).await;
        for id in ["sandbox-1", "sandbox-2"] {
            assert!(
                !w.saw(EventType::Set, id) && !w.saw(EventType::Unset, id),
                "{id} reached a subscriber: {}",
                w.describe()
            );
        }
        assert!(store.get_container("sandbox-1").is_none());
        store.shutdown().await;
    });
}

#[test]
fn the_fetcher_finds_a_container_in_any_watched_namespace_and_never_a_sandbox() {
    use wm_core::ContainerFetcher;
    with_daemons("the_fetcher_finds_a_container_in_any_watched_namespace_and_never_a_sandbox", async |rt| {
        ctr(rt, NS, &["run", "-d", "--label", "team=fetch", Runtimes::CTR_IMAGE, "fetched", "/bin/sleep", "300"]).await;
        let sandbox = [
            "run",
            "-d",
            "--label",
            "io.cri-containerd.kind=sandbox",
            Runtimes::CTR_IMAGE,
            "pause-1",
            "/bin/sleep",
            "300",
        ];
        ctr(rt, NS, &sandbox).await;
        let config = ContainerdConfig { cri_socket_path: Some(rt.containerd_socket()), ..ContainerdConfig::default() };
        let fetcher = wm_collector_containerd::ContainerdFetcher::new(config, wm_core::EnvFilter::default());
        let found = fetcher.fetch("fetched").await.expect("the running container");
        assert_eq!(found.labels.get("team"), Some("fetch"));
        assert!(found.state.running && found.state.pid > 0);
        assert!(fetcher.fetch("pause-1").await.is_none(), "a sandbox is no container");
        assert!(fetcher.fetch("nobody").await.is_none());
    });
}

/// Every image of the store's image collector, by id.
fn images(store: &Store) -> BTreeMap<String, wm_core::ContainerImageMetadata> {
    wm_core::StoreReader::list(store, wm_core::Kind::ContainerImageMetadata)
        .into_iter()
        .filter_map(|e| match e {
            wm_core::Entity::ContainerImageMetadata(i) => Some((i.id.to_string(), (*i).clone())),
            _ => None,
        })
        .collect()
}

fn docker_image_id(rt: &Runtimes, image: &str) -> String {
    let out = rt.docker(&["image", "inspect", "--format", "{{.Id}}", image]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The image collector on a real containerd: the image imported at start listed under its
/// config digest (docker's id of the same image) with its platform and layers; then `ctr images
/// tag`, `rm` of that tag, an image imported while it runs, a name moved from one image to the
/// other (`tag --force`), and the delete of the new image's last name followed.
#[test]
fn images_are_listed_then_followed_through_tag_move_import_and_delete() {
    with_daemons("containerd images", async |rt| {
        let base = docker_image_id(rt, Runtimes::IMAGE);
        let config = ContainerdConfig { cri_socket_path: Some(rt.containerd_socket()), ..ContainerdConfig::default() };
        let collector = wm_collector_containerd::images::ContainerdImageCollector::new(config);
        let store = Store::builder().collector(collector.into_collector()).build();
        store.start();
        let get = |store: &Store, id: &str| images(store).get(id).cloned();
        let has_tag =
            |store: &Store, id: &str, tag: &str| get(store, id).is_some_and(|i| i.repo_tags.iter().any(|t| t == tag));
        eventually("the base image listed", WAIT, || get(&store, &base).is_some()).await;
        let image = get(&store, &base).unwrap();
        assert_eq!(image.repo_tags, [Runtimes::CTR_IMAGE], "{image:?}");
        assert_eq!(image.name, "docker.io/wm-test/busybox");
        assert_eq!(image.os, "linux");
        assert!(!image.architecture.is_empty() && image.size_bytes > 0 && !image.media_type.is_empty(), "{image:?}");
        assert!(
            !image.layers.is_empty()
                && image.layers.iter().all(|l| l.digest.starts_with("sha256:") && l.size_bytes > 0),
            "{image:?}"
        );
        assert!(!images(&store).keys().any(|id| id != &base), "only the base image is in {NS}");

        const TAG: &str = "docker.io/wm-test/tagged:2";
        ctr(rt, NS, &["images", "tag", Runtimes::CTR_IMAGE, TAG]).await;
        eventually("the new tag", WAIT, || has_tag(&store, &base, TAG)).await;
        ctr(rt, NS, &["images", "rm", TAG]).await;
        eventually("the tag removed, the image kept", WAIT, || {
            get(&store, &base).is_some_and(|i| i.repo_tags == [Runtimes::CTR_IMAGE])
        })
        .await;

        // A second image, made by docker from a local tarball and imported while the collector runs.
        let dir = rt.dir().join("ctr-import");
        std::fs::create_dir_all(dir.join("root")).unwrap();
        std::fs::write(dir.join("root/hello"), "hello").unwrap();
        let tar = dir.join("root.tar");
        let status =
            std::process::Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(dir.join("root")).arg(".").status();
        assert!(status.unwrap().success());
        let made = rt.docker(&["import", &tar.display().to_string(), "wm.local/imported:1"]).unwrap();
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        let imported = docker_image_id(rt, "wm.local/imported:1");
        tokio::task::block_in_place(|| rt.copy_image_to_containerd("wm.local/imported:1", NS)).unwrap();
        eventually("the imported image", WAIT, || has_tag(&store, &imported, "wm.local/imported:1")).await;

        // A name that moves from the base image to the imported one changes both.
        ctr(rt, NS, &["images", "tag", Runtimes::CTR_IMAGE, TAG]).await;
        eventually("the tag on the base image", WAIT, || has_tag(&store, &base, TAG)).await;
        ctr(rt, NS, &["images", "tag", "--force", "wm.local/imported:1", TAG]).await;
        eventually("the tag moved", WAIT, || has_tag(&store, &imported, TAG) && !has_tag(&store, &base, TAG)).await;

        ctr(rt, NS, &["images", "rm", "wm.local/imported:1", TAG]).await;
        eventually("the imported image gone with its last name", WAIT, || get(&store, &imported).is_none()).await;
        assert_eq!(get(&store, &base).map(|i| i.repo_tags), Some(vec![Runtimes::CTR_IMAGE.to_owned()]));
        store.shutdown().await;
    });
}
