//! The docker collector against a real dockerd (on a real containerd), started by
//! `test_support::runtimes` in a private directory. Under `cargo xtask ci` (`WM_CI=1`) these
//! never skip; elsewhere, without root or the Debian packages, they print `SKIPPED: <why>`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HealthConfig, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt;
use test_support::runtimes::{Runtimes, with_service};
use test_support::watch::{Watcher, assert_store_equals};
use wm_collector_docker::images::DockerImageCollector;
use wm_collector_docker::{DockerCollector, DockerConfig, container_from_inspect};
use wm_core::{Container, ContainerHealth, ContainerStatus, EntityId, EnvFilter, EventType, Kind, Runtime};
use wm_store::{Store, StoreConfig};

const WAIT: Duration = Duration::from_secs(15);

fn with_daemons(test: &str, body: impl AsyncFnOnce(&mut Runtimes)) {
    with_service(test, Runtimes::start, body);
}

fn client(rt: &Runtimes) -> Docker {
    Docker::connect_with_socket(&rt.docker_socket().display().to_string(), 120, bollard::API_DEFAULT_VERSION).unwrap()
}

fn store_with_docker(rt: &Runtimes) -> Store {
    let config = DockerConfig { docker_host: Some(rt.docker_host()), ..DockerConfig::default() };
    let mut store_config = StoreConfig::default();
    store_config.env = EnvFilter::new(["TEAM_ENV"]);
    let store = Store::builder().config(store_config).collector(DockerCollector::new(config).into_collector()).build();
    store.start();
    store
}

#[derive(Default)]
struct Spec<'a> {
    labels: &'a [(&'a str, &'a str)],
    env: &'a [&'a str],
    cmd: Option<&'a [&'a str]>,
    health: bool,
    auto_remove: bool,
}

async fn create(docker: &Docker, name: &str, spec: Spec<'_>) -> String {
    let body = ContainerCreateBody {
        image: Some(Runtimes::IMAGE.into()),
        cmd: Some(spec.cmd.unwrap_or(&["sleep", "300"]).iter().map(|s| s.to_string()).collect()),
        labels: Some(spec.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        env: Some(spec.env.iter().map(|s| s.to_string()).collect()),
        healthcheck: spec.health.then(|| HealthConfig {
            test: Some(vec!["CMD".into(), "true".into()]),
            interval: Some(200_000_000),
            ..HealthConfig::default()
        }),
        stop_signal: Some("SIGKILL".into()),
        host_config: Some(HostConfig {
            network_mode: Some("none".into()),
            auto_remove: Some(spec.auto_remove),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    };
    let options = CreateContainerOptionsBuilder::new().name(name).build();
    docker.create_container(Some(options), body).await.unwrap().id
}

async fn start(docker: &Docker, id: &str) {
    docker.start_container(id, None).await.unwrap();
}

async fn remove(docker: &Docker, id: &str) {
    docker.remove_container(id, Some(RemoveContainerOptionsBuilder::new().force(true).build())).await.unwrap();
}

/// The daemon's own view: every container it lists, inspected and converted as the collector does.
async fn daemon_view(docker: &Docker) -> BTreeMap<String, Container> {
    let listed = docker.list_containers(Some(ListContainersOptionsBuilder::new().all(true).build())).await.unwrap();
    let mut view = BTreeMap::new();
    for summary in listed {
        let id = summary.id.unwrap();
        // Removed between list and inspect: not there.
        let Ok(inspect) = docker.inspect_container(&id, None).await else { continue };
        if let Some(c) = container_from_inspect(&inspect, None, &EnvFilter::new(["TEAM_ENV"])) {
            view.insert(id, c);
        }
    }
    view
}

async fn assert_store_equals_daemon(store: &Store, docker: &Docker, within: Duration) {
    assert_store_equals(store, "dockerd", within, || daemon_view(docker)).await;
}

#[test]
fn containers_are_followed_through_create_start_pause_rename_kill_stop_and_rm() {
    with_daemons("containers_are_followed_through_create_start_pause_rename_kill_stop_and_rm", async |rt| {
        let docker = client(rt);
        // A container that exists before the collector starts comes with its first list.
        let pre =
            create(&docker, "pre", Spec { labels: &[("team", "a")], env: &["DD_ENV=prod"], ..Spec::default() }).await;
        start(&docker, &pre).await;
        let store = store_with_docker(rt);
        let mut w = Watcher::containers(&store);
        w.until("the pre-existing container", WAIT, |w| w.get(&pre).is_some_and(|c| c.state.running)).await;
        let c = w.get(&pre).unwrap();
        assert_eq!(c.name, "pre");
        assert_eq!(c.labels.get("team"), Some("a"));
        assert_eq!(c.env.get("DD_ENV"), Some("prod"));
        assert_eq!(c.runtime, Some(Runtime::Docker));
        assert_eq!(
            (c.image.name.as_str(), c.image.short_name.as_str(), c.image.tag.as_str()),
            ("wm-test/busybox", "busybox", "1")
        );
        assert!(c.image.id.starts_with("sha256:"), "image id {:?}", c.image.id);
        assert!(c.state.pid > 0 && c.state.started_at.is_some() && c.state.created_at.is_some());

        // create: labels and env, filtered.
        let id = create(
            &docker,
            "life",
            Spec {
                labels: &[("team", "b"), ("com.example.tier", "back")],
                env: &["DD_SERVICE=web", "API_SECRET=hunter2", "TEAM_ENV=core", "PATH=/bin"],
                ..Spec::default()
            },
        )
        .await;
        w.until("the created container", WAIT, |w| {
            w.get(&id).is_some_and(|c| c.state.status == ContainerStatus::Created)
        })
        .await;
        let c = w.get(&id).unwrap();
        assert_eq!(c.name, "life");
        assert!(!c.state.running);
        assert_eq!(c.labels.get("com.example.tier"), Some("back"));
        assert_eq!(
            c.env.iter().collect::<Vec<_>>(),
            vec![("DD_SERVICE", "web"), ("TEAM_ENV", "core")],
            "only the env vars the tag rules read, plus the configured one"
        );

        start(&docker, &id).await;
        w.until("the started container", WAIT, |w| w.get(&id).is_some_and(|c| c.state.running && c.state.pid > 0))
            .await;
        assert_eq!(w.get(&id).unwrap().state.status, ContainerStatus::Running);

        docker.pause_container(&id).await.unwrap();
        w.until("the paused container", WAIT, |w| {
            w.get(&id).is_some_and(|c| c.state.status == ContainerStatus::Paused)
        })
        .await;
        docker.unpause_container(&id).await.unwrap();
        w.until("the unpaused container", WAIT, |w| {
            w.get(&id).is_some_and(|c| c.state.status == ContainerStatus::Running)
        })
        .await;

        docker.rename_container(&id, RenameContainerOptionsBuilder::new().name("life-renamed").build()).await.unwrap();
        w.until("the renamed container", WAIT, |w| w.get(&id).is_some_and(|c| c.name == "life-renamed")).await;

        docker.kill_container(&id, Some(KillContainerOptionsBuilder::new().signal("SIGKILL").build())).await.unwrap();
        w.until("the killed container", WAIT, |w| {
            w.get(&id).is_some_and(|c| c.state.status == ContainerStatus::Stopped)
        })
        .await;
        let c = w.get(&id).unwrap();
        assert!(!c.state.running);
        assert_eq!(c.state.exit_code, wm_core::ExitCode::new(137));
        assert!(c.state.finished_at.is_some());

        // A process that exits by itself: its own exit code.
        let exits = create(&docker, "exits", Spec { cmd: Some(&["sh", "-c", "exit 3"]), ..Spec::default() }).await;
        start(&docker, &exits).await;
        w.until("the exit code 3", WAIT, |w| {
            w.get(&exits).is_some_and(|c| c.state.exit_code == wm_core::ExitCode::new(3))
        })
        .await;

        docker.stop_container(&pre, Some(StopContainerOptionsBuilder::new().t(0).build())).await.unwrap();
        w.until("the stopped container", WAIT, |w| {
            w.get(&pre).is_some_and(|c| !c.state.running && c.state.exit_code.is_some())
        })
        .await;

        remove(&docker, &id).await;
        w.until("the removed container unset", WAIT, |w| w.get(&id).is_none()).await;
        assert!(w.saw(EventType::Unset, &id));
        assert_store_equals_daemon(&store, &docker, WAIT).await;
        store.shutdown().await;
    });
}

#[test]
fn health_is_followed_except_for_kubernetes_containers_and_pause_containers_are_skipped() {
    with_daemons("health_is_followed_except_for_kubernetes_containers_and_pause_containers_are_skipped", async |rt| {
        let docker = client(rt);
        let store = store_with_docker(rt);
        let mut w = Watcher::containers(&store);
        let uid = "0e5c7e4f-1b5b-4f87-9d4c-43f6b1a0c8a1";
        let sandbox = create(
            &docker,
            "k8s_POD_web",
            Spec {
                labels: &[("io.kubernetes.docker.type", "podsandbox"), ("io.kubernetes.pod.uid", uid)],
                ..Spec::default()
            },
        )
        .await;
        start(&docker, &sandbox).await;
        let kube = create(
            &docker,
            "k8s_app_web",
            Spec {
                labels: &[("io.kubernetes.pod.namespace", "default"), ("io.kubernetes.pod.uid", uid)],
                health: true,
                ..Spec::default()
            },
        )
        .await;
        start(&docker, &kube).await;
        let checked = create(&docker, "checked", Spec { health: true, ..Spec::default() }).await;
        start(&docker, &checked).await;
        w.until("the healthy verdict", WAIT, |w| {
            w.get(&checked).is_some_and(|c| c.state.health == ContainerHealth::Healthy)
        })
        .await;
        // The kube container had its checks run as long as the other one: its health stays the kubelet's.
        w.until("the kube container running", WAIT, |w| w.get(&kube).is_some_and(|c| c.state.running)).await;
        let c = w.get(&kube).unwrap();
        assert_eq!(c.state.health, ContainerHealth::Unknown);
        assert_eq!(c.owner, Some(EntityId::new(Kind::KubernetesPod, uid)));
        let inspect = docker.inspect_container(&kube, None).await.unwrap();
        assert!(
            inspect.state.unwrap().health.unwrap().status.is_some(),
            "docker does run the kube container's check; only the store leaves it out"
        );
        assert!(w.get(&sandbox).is_none() && !w.saw(EventType::Set, &sandbox), "the pause container was stored");
        assert!(store.get_container(&sandbox).is_none());
        store.shutdown().await;
    });
}

#[test]
fn a_container_that_lives_less_than_a_second_is_seen_set_and_unset() {
    with_daemons("a_container_that_lives_less_than_a_second_is_seen_set_and_unset", async |rt| {
        let docker = client(rt);
        let store = store_with_docker(rt);
        let mut w = Watcher::containers(&store);
        w.until("the first list", WAIT, |_| store.health().is_ready()).await;
        for round in 0..5 {
            let started = Instant::now();
            let id = create(
                &docker,
                &format!("blink-{round}"),
                Spec { cmd: Some(&["true"]), auto_remove: true, ..Spec::default() },
            )
            .await;
            start(&docker, &id).await;
            w.until("the short-lived container's set and unset", WAIT, |w| {
                w.saw(EventType::Set, &id) && w.saw(EventType::Unset, &id)
            })
            .await;
            assert!(w.get(&id).is_none());
            let set = w.log.iter().position(|(k, c)| *k == EventType::Set && &*c.id == id.as_str()).unwrap();
            let unset = w.log.iter().rposition(|(k, c)| *k == EventType::Unset && &*c.id == id.as_str()).unwrap();
            assert!(set < unset, "set after unset");
            assert_eq!(w.log[set].1.name, format!("blink-{round}"));
            println!("blink-{round}: seen set and unset, {:?} after create", started.elapsed());
        }
        store.shutdown().await;
    });
}

#[test]
fn after_dockerd_is_killed_and_restarted_the_store_equals_the_daemons_list_within_10s() {
    with_daemons("after_dockerd_is_killed_and_restarted_the_store_equals_the_daemons_list_within_10s", async |rt| {
        let docker = client(rt);
        let mut ids = Vec::new();
        for i in 0..6 {
            let id =
                create(&docker, &format!("before-{i}"), Spec { labels: &[("round", "before")], ..Spec::default() })
                    .await;
            if i % 2 == 0 {
                start(&docker, &id).await;
            }
            ids.push(id);
        }
        let store = store_with_docker(rt);
        let mut w = Watcher::containers(&store);
        w.until("the first list", WAIT, |w| ids.iter().all(|id| w.get(id).is_some())).await;

        for cycle in 0..2 {
            rt.kill_dockerd();
            // While it is down the collector's stream breaks and its reconnects fail.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let restarting = Instant::now();
            tokio::task::block_in_place(|| rt.start_dockerd()).unwrap();
            let back = Instant::now();
            println!("cycle {cycle}: dockerd answers again after {:?}", back - restarting);
            // Change things at once, while the collector is still backing off.
            let docker = client(rt);
            let gone = ids.remove(0);
            remove(&docker, &gone).await;
            let fresh =
                create(&docker, &format!("after-{cycle}"), Spec { labels: &[("round", "after")], ..Spec::default() })
                    .await;
            start(&docker, &fresh).await;
            ids.push(fresh);
            assert_store_equals_daemon(&store, &docker, Duration::from_secs(10).saturating_sub(back.elapsed())).await;
            println!("cycle {cycle}: the store equals dockerd's list {:?} after its return", back.elapsed());
        }
        store.shutdown().await;
    });
}

#[test]
fn two_hundred_containers_created_and_removed_in_bursts_end_equal_to_docker_ps() {
    with_daemons("two_hundred_containers_created_and_removed_in_bursts_end_equal_to_docker_ps", async |rt| {
        let docker = client(rt);
        let store = store_with_docker(rt);
        let mut w = Watcher::containers(&store);
        w.until("the first list", WAIT, |_| store.health().is_ready()).await;
        let mut alive: Vec<String> = Vec::new();
        for burst in 0..4 {
            let created: Vec<String> = futures::stream::iter(0..50)
                .map(|i| {
                    let docker = docker.clone();
                    async move {
                        let id = create(&docker, &format!("burst-{burst}-{i}"), Spec::default()).await;
                        if i % 4 == 0 {
                            start(&docker, &id).await;
                        }
                        id
                    }
                })
                .buffer_unordered(8)
                .collect()
                .await;
            // Remove half of what exists, concurrently with the next burst's creation.
            let doomed: Vec<String> = alive.iter().step_by(2).cloned().collect();
            alive.retain(|id| !doomed.contains(id));
            futures::stream::iter(doomed)
                .map(|id| {
                    let docker = docker.clone();
                    async move { remove(&docker, &id).await }
                })
                .buffer_unordered(8)
                .collect::<Vec<()>>()
                .await;
            alive.extend(created);
        }
        assert_store_equals_daemon(&store, &docker, WAIT).await;
        assert_eq!(store.list_containers().len(), alive.len());
        println!("{} containers after 200 creations in 4 bursts: store equals docker ps -a", alive.len());
        futures::stream::iter(alive)
            .map(|id| {
                let docker = docker.clone();
                async move { remove(&docker, &id).await }
            })
            .buffer_unordered(8)
            .collect::<Vec<()>>()
            .await;
        assert_store_equals_daemon(&store, &docker, WAIT).await;
        assert!(store.list_containers().is_empty());
        store.shutdown().await;
    });
}

/// Ids a client could send to steer the fetch-on-miss path elsewhere on dockerd's API.
fn hostile_ids(real: &str) -> Vec<String> {
    vec![
        "x/../../system/df".into(),
        "../../info".into(),
        format!("{real}/json?size=true"),
        format!("{real}/../../../images/json"),
        "%2e%2e%2f%2e%2e%2finfo".into(),
        real[..12].to_owned(),
        real.to_uppercase(),
        format!("{real}#"),
        "web".into(),
    ]
}

#[test]
fn fetch_on_miss_makes_no_request_but_inspects_of_well_formed_ids() {
    with_daemons("fetch_on_miss_makes_no_request_but_inspects_of_well_formed_ids", async |rt: &mut Runtimes| {
        use wm_core::ContainerFetcher;
        let docker = client(rt);
        let real = create(&docker, "fetched", Spec::default()).await;
        let proxy =
            test_support::recording_proxy::RecordingProxy::start(&rt.dir().join("recorded.sock"), &rt.docker_socket())
                .unwrap();
        let config = DockerConfig {
            docker_host: Some(format!("unix://{}", proxy.socket().display())),
            ..DockerConfig::default()
        };
        let fetcher = wm_collector_docker::DockerFetcher::new(config, wm_core::EnvFilter::default());
        for id in hostile_ids(&real) {
            assert!(!fetcher.accepts(&id), "{id}");
            assert!(fetcher.fetch(&id).await.is_none(), "{id}");
        }
        let unknown = "0".repeat(64);
        assert!(fetcher.fetch(&unknown).await.is_none());
        let found = fetcher.fetch(&real).await.expect("the real container");
        assert_eq!(&*found.id, real.as_str());
        let requests = proxy.requests();
        println!("requests that reached dockerd: {requests:?}");
        let inspect = |id: &str| {
            requests.iter().filter(|r| r.starts_with("GET /") && r.ends_with(&format!("/containers/{id}/json"))).count()
        };
        assert_eq!((inspect(&unknown), inspect(&real)), (1, 1), "{requests:?}");
        // An image given by id is looked up once for its name; nothing else reaches the daemon.
        let others: Vec<&String> = requests
            .iter()
            .filter(|r| !r.ends_with(&format!("/containers/{unknown}/json")))
            .filter(|r| !r.ends_with(&format!("/containers/{real}/json")))
            .filter(|r| !(r.starts_with("GET /") && r.contains("/images/sha256:") && r.ends_with("/json")))
            .collect();
        assert!(others.is_empty(), "requests other than inspects of well-formed ids: {others:?}");
        remove(&docker, &real).await;
    });
}

/// Every image of the store's image collector, by id.
fn images(store: &Store) -> BTreeMap<String, wm_core::ContainerImageMetadata> {
    wm_core::StoreReader::list(store, Kind::ContainerImageMetadata)
        .into_iter()
        .filter_map(|e| match e {
            wm_core::Entity::ContainerImageMetadata(i) => Some((i.id.to_string(), (*i).clone())),
            _ => None,
        })
        .collect()
}

fn run_docker(rt: &Runtimes, args: &[&str]) -> String {
    let out = rt.docker(args).unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The image collector on a real dockerd: the images listed at start with their platform and
/// layers, then `docker tag`, `docker rmi` of a tag (untag), `docker import` of a local tarball
/// (a new image, as a pull would bring) and `docker rmi` of it (delete) followed.
#[test]
fn images_are_listed_then_followed_through_tag_untag_import_and_delete() {
    with_daemons("docker images", async |rt| {
        let base = run_docker(rt, &["image", "inspect", "--format", "{{.Id}}", Runtimes::IMAGE]);
        let config = DockerConfig { docker_host: Some(rt.docker_host()), ..DockerConfig::default() };
        let store = Store::builder().collector(DockerImageCollector::new(config).into_collector()).build();
        store.start();
        let listed = |store: &Store| images(store).get(&base).cloned();
        test_support::watch::eventually("the base image listed", WAIT, || listed(&store).is_some()).await;
        let image = listed(&store).unwrap();
        assert!(image.repo_tags.iter().any(|t| t == Runtimes::IMAGE), "{image:?}");
        assert_eq!(image.os, "linux");
        assert!(!image.architecture.is_empty() && image.size_bytes > 0 && !image.layers.is_empty(), "{image:?}");
        assert!(image.layers.iter().all(|l| l.digest.starts_with("sha256:")), "{image:?}");

        run_docker(rt, &["tag", Runtimes::IMAGE, "wm.local/tagged:2"]);
        let tagged =
            |store: &Store| listed(store).is_some_and(|i| i.repo_tags.iter().any(|t| t == "wm.local/tagged:2"));
        test_support::watch::eventually("the new tag", WAIT, || tagged(&store)).await;
        run_docker(rt, &["rmi", "wm.local/tagged:2"]);
        test_support::watch::eventually("the tag removed, the image kept", WAIT, || {
            listed(&store).is_some() && !tagged(&store)
        })
        .await;

        let dir = rt.dir().join("import");
        std::fs::create_dir_all(dir.join("root")).unwrap();
        std::fs::write(dir.join("root/hello"), "hello").unwrap();
        let tar = dir.join("root.tar");
        let status =
            std::process::Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(dir.join("root")).arg(".").status();
        assert!(status.unwrap().success());
        let imported = run_docker(rt, &["import", &tar.display().to_string(), "wm.local/imported:1"]);
        test_support::watch::eventually("the imported image", WAIT, || {
            images(&store).get(&imported).is_some_and(|i| i.repo_tags == ["wm.local/imported:1"])
        })
        .await;
        run_docker(rt, &["rmi", "wm.local/imported:1"]);
        test_support::watch::eventually("the deleted image gone", WAIT, || !images(&store).contains_key(&imported))
            .await;
        assert!(listed(&store).is_some(), "the base image stays");
        store.shutdown().await;
    });
}
