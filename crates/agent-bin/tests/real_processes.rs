//! What Datadog's other agents ask for, from an agent on real daemons: Python's `grpcio` (stubs
//! from our `.proto` files) subscribes to `WorkloadmetaStreamEntities` with the exact filter of
//! Datadog's remote-workloadmeta clients (container, kubernetes_pod, ecs_task, process,
//! container_image_metadata) and receives a running container, its process (with the
//! container's id and the process's pid inside it) and the image it runs. The agent runs in
//! process with the docker, docker image and process collectors on a real dockerd
//! (`test_support::runtimes`) and the host's `/proc`.
//! Under `cargo xtask ci` it never skips.

#![cfg(all(feature = "docker", feature = "process"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use test_support::runtimes::{Runtimes, with_service};

/// Runs after `support::GRPC_PRELUDE`.
const SCRIPT: &str = r#"
# Datadog's remote-workloadmeta clients (process-agent, system-probe, security-agent) ask for
# exactly these five kinds.
kinds = [wm.CONTAINER, wm.KUBERNETES_POD, wm.ECS_TASK, wm.PROCESS, wm.CONTAINER_IMAGE_METADATA]
stream = stub.WorkloadmetaStreamEntities(
    wm.WorkloadmetaStreamRequest(filter=wm.WorkloadmetaFilter(kinds=kinds)), metadata=auth, timeout=30)
for response in stream:
    for e in response.events:
        if e.HasField("container"):
            print("CONTAINER", e.container.entityId.id)
        if e.HasField("containerImageMetadata"):
            i = e.containerImageMetadata
            print("IMAGE", wm.WorkloadmetaKind.Name(i.entityId.kind), i.entityId.id, " ".join(i.repoTags), i.os,
                  len(i.layers) > 0, i.HasField("sbom"))
        if e.HasField("process"):
            p = e.process
            print("PROCESS", wm.WorkloadmetaKind.Name(p.entityId.kind), p.entityId.id, p.pid, p.nspid, p.comm,
                  p.containerId or "-", p.language.name or "-", p.creationTime > 0)
    if response.initial_snapshot_complete:
        break
stream.cancel()

image = "{image}"
reply = stub.TaggerFetchEntity(model_pb2.FetchEntityRequest(
    id=model_pb2.EntityId(prefix="container_image_metadata", uid=image), cardinality=model_pb2.LOW),
    metadata=auth, timeout=10)
print("IMAGE_TAGS", " ".join(sorted(reply.tags)))
"#;

#[test]
fn grpcio_with_datadogs_five_kind_filter_gets_a_containers_process() {
    let python = match support::python_venv("grpc, grpc_tools", &["grpcio", "grpcio-tools"]) {
        Ok(p) => p,
        Err(why) if test_support::runtimes::ci() => panic!("grpcio is required under WM_CI=1: {why}"),
        Err(why) => {
            println!("SKIPPED: {why}");
            return;
        }
    };
    with_service("five-kind grpcio client", Runtimes::start, async |rt: &mut Runtimes| {
        let dir = rt.dir().join("five-kinds");
        std::fs::create_dir_all(&dir).unwrap();
        let stubs = dir.join("stubs");
        tokio::task::block_in_place(|| support::generate_stubs(&python, &stubs));
        let out = rt.docker(&["run", "-d", "--network", "none", Runtimes::IMAGE, "sleep", "300"]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let inspect = rt.docker(&["inspect", "--format", "{{.State.Pid}}", &id]).unwrap();
        let pid = String::from_utf8_lossy(&inspect.stdout).trim().to_owned();
        let image = rt.docker(&["image", "inspect", "--format", "{{.Id}}", Runtimes::IMAGE]).unwrap();
        let image = String::from_utf8_lossy(&image.stdout).trim().to_owned();

        let grpc = test_support::runtimes::free_port().unwrap();
        let http = test_support::runtimes::free_port().unwrap();
        let yaml = format!(
            "cmd_port: {grpc}\nhealth_port: {http}\ndocker_host: {}\n\
             autoconfig_exclude_features: [containerd, podman, kubernetes, ecs, cloudfoundry, remote]\n\
             process_config:\n  process_collection:\n    enabled: true\n  intervals:\n    process: 1\n\
             container_image:\n  enabled: true\n",
            rt.docker_host()
        );
        std::fs::write(dir.join("agent.yaml"), yaml).unwrap();
        let config = agent_bin::load_config(Some(&dir.join("agent.yaml")), Vec::new()).unwrap();
        let agent = agent_bin::run::start(&config).await.unwrap();
        let deadline = std::time::Duration::from_secs(20);
        test_support::watch::eventually("the container's process in the store", deadline, || {
            agent.store.list_processes().iter().any(|p| p.pid.to_string() == pid && !p.container_id.is_empty())
                && agent.store.get_container(&id).is_some()
                && wm_core::StoreReader::get(
                    &agent.store,
                    &wm_core::EntityId::new(wm_core::Kind::ContainerImageMetadata, image.as_str()),
                )
                .is_some()
        })
        .await;

        let script = SCRIPT.replace("{image}", &image);
        let output = support::run_grpc_script(&python, &script, &stubs, &config, grpc).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "the python client failed: {}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.lines().any(|l| l == format!("CONTAINER {id}")), "{stdout}");
        let expected = format!("PROCESS PROCESS {pid} {pid} 1 sleep {id} - True");
        assert!(stdout.lines().any(|l| l == expected), "no line {expected:?} in:\n{stdout}");
        let expected = format!("IMAGE CONTAINER_IMAGE_METADATA {image} {} linux True True", Runtimes::IMAGE);
        assert!(stdout.lines().any(|l| l == expected), "no line {expected:?} in:\n{stdout}");
        // The image's tags on the tagger's image entity, as the Datadog Agent names them.
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let expected = format!(
            "IMAGE_TAGS architecture:{arch} image_name:wm-test/busybox image_tag:1 os_name:linux short_image:busybox"
        );
        assert!(stdout.lines().any(|l| l == expected), "no line {expected:?} in:\n{stdout}");
        let processes = stdout.lines().filter(|l| l.starts_with("PROCESS ")).count();
        println!("the client received the container and {processes} processes");
        assert!(processes > 10, "the host's processes too: {processes}");
        agent.stop().await;
    });
}
