//! The process collector on this machine's real `/proc`, with a real dockerd (started by
//! `test_support::runtimes` in a private directory) and real interpreters: a container's process
//! appears with its container id and its pid inside the container; the host's Python, Java and
//! Node.js programs and the Go daemons get their languages; what exits is gone within two scans.
//! Under `cargo xtask ci` (`WM_CI=1`) it never skips; elsewhere, without root or the Debian
//! packages, it prints `SKIPPED: <why>`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use test_support::runtimes::{Runtimes, with_service};
use test_support::watch::eventually;
use wm_collector_process::{ProcessCollector, ProcessConfig};
use wm_core::{Language, Process, Seconds};
use wm_store::Store;

/// Two scans at the interval used here, and slack for a loaded machine.
const WAIT: Duration = Duration::from_secs(20);

fn find(store: &Store, pid: u32) -> Option<wm_core::EntityArc<Process>> {
    store.list_processes().into_iter().find(|p| p.pid == pid as i32)
}

/// Starts `program` with `args`, or `None` when this machine does not have it (outside CI).
fn spawn(program: &str, args: &[&str]) -> Option<Child> {
    let child = Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
    match child {
        Ok(child) => Some(child),
        Err(e) if test_support::runtimes::ci() => panic!("{program}: {e}"),
        Err(e) => {
            println!("SKIPPED the {program} case: {e}");
            None
        }
    }
}

#[test]
fn processes_of_containers_and_interpreters_on_real_proc() {
    with_service("process collector", Runtimes::start, async |rt: &mut Runtimes| {
        let config = ProcessConfig { process_collection: true, interval: Seconds(1), ..ProcessConfig::default() };
        let store = Store::builder().collector(ProcessCollector::new(config).into_collector()).build();
        store.start();

        // A container's process: the container id from its cgroup, pid 1 inside it.
        let out = rt.docker(&["run", "-d", "--network", "none", Runtimes::IMAGE, "sleep", "300"]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let inspect = rt.docker(&["inspect", "--format", "{{.State.Pid}}", &id]).unwrap();
        let pid: u32 = String::from_utf8_lossy(&inspect.stdout).trim().parse().unwrap();
        eventually("the container's process", WAIT, || find(&store, pid).is_some()).await;
        let sleeper = find(&store, pid).unwrap();
        assert_eq!(&*sleeper.container_id, id.as_str());
        assert_eq!((sleeper.ns_pid, &*sleeper.name), (1, "sleep"));
        assert!(sleeper.creation_time.is_some() && sleeper.cmdline.is_empty(), "{sleeper:?}");

        // Interpreters on the host, each known by its program's name.
        let dir = rt.dir().join("process");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("Sleep.java"),
            "class Sleep { public static void main(String[] a) throws Exception { Thread.sleep(300000); } }",
        )
        .unwrap();
        let java_source = dir.join("Sleep.java").display().to_string();
        let mut children = Vec::new();
        for (program, args, language) in [
            ("python3", vec!["-c", "import time; time.sleep(300)"], Language::Python),
            ("node", vec!["-e", "setTimeout(() => {}, 300000)"], Language::Node),
            ("java", vec![java_source.as_str()], Language::Java),
        ] {
            let Some(child) = spawn(program, &args) else { continue };
            let pid = child.id();
            children.push((program, child));
            // The language once the program runs: a launcher (pyenv's shim, java's) may exec
            // the real program a moment after the start.
            eventually(&format!("{program} as {}", language.as_str()), WAIT, || {
                find(&store, pid).is_some_and(|p| p.container_id.is_empty() && p.language == Some(language))
            })
            .await;
        }
        // dockerd is a Go program: no name rule, its ELF sections tell.
        let dockerd = store.list_processes().into_iter().find(|p| &*p.name == "dockerd").expect("dockerd");
        assert_eq!(dockerd.language, Some(Language::Go), "{dockerd:?}");
        let sleeper = find(&store, pid).unwrap();
        assert_eq!(sleeper.language, None, "busybox sleep is C");

        // Gone within two scans of their exit.
        let out = rt.docker(&["rm", "-f", &id]).unwrap();
        assert!(out.status.success());
        for (_, child) in &mut children {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        eventually("the container's process gone", WAIT, || find(&store, pid).is_none()).await;
        for (program, child) in &children {
            eventually(program, WAIT, || find(&store, child.id()).is_none()).await;
        }
        store.shutdown().await;
    });
}
