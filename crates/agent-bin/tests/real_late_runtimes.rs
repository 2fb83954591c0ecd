//! The agent started before its runtimes: dockerd, containerd and the podman service are down
//! (their sockets gone) when it starts, with each socket named by its config key. Health says
//! "waiting for <socket>" for each and the agent is not ready; once the daemons start, each
//! collector finds its socket as soon as it appears (the store watches the socket's directory),
//! well before the re-detection period (`collector_redetect_interval`, left at its 30 s), lists,
//! and the containers made afterwards are collected and tagged. Under `cargo xtask ci` it never
//! skips.

#![cfg(all(feature = "docker", feature = "containerd", feature = "podman"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use agent_bin::report::HealthReport;
use test_support::podman::PodmanService;
use test_support::runtimes::{Runtimes, with_service};
use test_support::watch::{eventually, eventually_some};

/// The re-detection period: the default. The runtimes must be found long before it ends.
const REDETECT: Duration = Duration::from_secs(30);

/// How long after a socket appears its collector may take to list: far less than [`REDETECT`].
const FOUND_WITHIN: Duration = Duration::from_secs(10);

fn state(health: &HealthReport, name: &str) -> (String, String) {
    let c = health.collectors.iter().find(|c| c.get("name").and_then(|v| v.as_str()) == Some(name)).unwrap();
    let text = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    (text("state"), text("reason"))
}

fn check(what: &str, out: &std::process::Output) -> String {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn runtimes_that_start_after_the_agent_are_collected_as_soon_as_their_sockets_appear() {
    let test = "runtimes_that_start_after_the_agent_are_collected";
    let start = |install| Ok((Runtimes::start(install)?, PodmanService::start(install)?));
    with_service(test, start, async |(rt, pm): &mut (Runtimes, PodmanService)| {
        // Every runtime down, its socket gone: as on a node where the agent starts first.
        rt.kill_dockerd();
        rt.kill_containerd();
        pm.stop_service();
        for socket in [rt.docker_socket(), rt.containerd_socket(), pm.socket()] {
            let _ = std::fs::remove_file(socket);
        }

        let dir = rt.dir().join("agent");
        std::fs::create_dir_all(&dir).unwrap();
        let port = || test_support::runtimes::free_port().unwrap();
        let http = port();
        let yaml = format!(
            "cmd_port: {}\nhealth_port: {http}\ndocker_host: {}\ncri_socket_path: {}\npodman_socket_path: {}\n\
             collector_redetect_interval: {}\nautoconfig_exclude_features: [kubernetes]\n",
            port(),
            rt.docker_host(),
            rt.containerd_socket().display(),
            pm.socket().display(),
            REDETECT.as_secs(),
        );
        std::fs::write(dir.join("agent.yaml"), yaml).unwrap();
        let config = agent_bin::load_config(Some(&dir.join("agent.yaml")), Vec::new()).unwrap();
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        let agent = agent_bin::run::start(&config).await.unwrap();

        // Waiting, each for its own socket, and not ready; still so after a re-detection.
        let sockets = [
            ("docker", format!("{} (docker_host)", rt.docker_socket().display())),
            ("containerd", format!("{} (cri_socket_path)", rt.containerd_socket().display())),
            ("podman", format!("{} (podman_socket_path)", pm.socket().display())),
        ];
        let waiting = |health: &HealthReport| {
            sockets
                .iter()
                .all(|(name, socket)| state(health, name) == ("waiting".into(), format!("waiting for {socket}")))
        };
        let waiting = &waiting;
        let health = eventually_some("each collector waiting for its socket", Duration::from_secs(10), || async move {
            let health: HealthReport = agent_bin::cli::fetch(http, "/health").await.unwrap();
            waiting(&health).then_some(health)
        })
        .await;
        assert!(health.live && !health.ready, "{health:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let health: HealthReport = agent_bin::cli::fetch(http, "/health").await.unwrap();
        assert!(waiting(&health) && !health.ready, "{health:?}");
        let text = agent_bin::cli::format_health(&health);
        assert!(text.contains(&format!("docker [runtime]: waiting (waiting for {})", sockets[0].1)), "{text}");

        // The runtimes come; each collector finds its socket as it appears, and lists.
        tokio::task::block_in_place(|| {
            rt.start_containerd().unwrap();
            rt.start_dockerd().unwrap();
            pm.start_service().unwrap();
        });
        let up = Instant::now();
        eventually_some("ready after the runtimes came, before the re-detection period", FOUND_WITHIN, || async move {
            let health: HealthReport = agent_bin::cli::fetch(http, "/health").await.unwrap();
            health.ready.then_some(())
        })
        .await;
        let took = up.elapsed();
        println!("ready {took:?} after the runtimes came (re-detection every {REDETECT:?})");

        let docker = tokio::task::block_in_place(|| {
            check(
                "docker run",
                &rt.docker(&[
                    "run",
                    "-d",
                    "--network",
                    "none",
                    "--label",
                    "team=late",
                    Runtimes::IMAGE,
                    "sleep",
                    "300",
                ])
                .unwrap(),
            )
        });
        let ran = Instant::now();
        let entity = format!("container_id://{docker}");
        eventually("the docker container's tags", FOUND_WITHIN, || {
            !agent.tagger.tag(&entity, tagger::TagCardinality::Low).is_empty()
        })
        .await;
        println!("the first docker container tagged {:?} after `docker run` returned", ran.elapsed());
        let ctr_args = ["run", "-d", Runtimes::CTR_IMAGE, "late-ctr", "/bin/sleep", "300"];
        tokio::task::block_in_place(|| check("ctr run", &rt.ctr(Runtimes::CTR_NAMESPACE, &ctr_args).unwrap()));
        let podman = tokio::task::block_in_place(|| {
            check("podman run", &pm.podman(&["run", "-d", PodmanService::IMAGE, "sleep", "300"]).unwrap())
        });
        eventually("every container made after the runtimes came", Duration::from_secs(30), || {
            [docker.as_str(), "late-ctr", podman.as_str()].iter().all(|id| agent.store.get_container(id).is_some())
        })
        .await;
        assert_eq!(agent.stop().await.tasks_left, 0);
    });
}
