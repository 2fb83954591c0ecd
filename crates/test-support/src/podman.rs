//! A real Podman service for tests: `podman system service --time=0` as root, on a private
//! socket, with its own storage root, run root, temp dir and events log in a private temporary
//! directory.
//!
//! What it configures, and why:
//! - `CONTAINERS_CONF` points at its own `containers.conf`:
//!   - `default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]`: on these machines runc fails
//!     to start a container on the default rlimits ("error setting rlimit type 7"); explicit
//!     limits make containers run, not only be created.
//!   - `cgroup_manager = "cgroupfs"` and `events_logger = "file"`: there is no systemd or journald.
//!   - `netns = "none"`: no CNI bridge is set up, and none is needed.
//! - `--root`, `--runroot` and `--storage-driver overlay` on every podman command, so the
//!   machine's own `/var/lib/containers` and `/run/containers` are never touched.
//! - A local image, [`PodmanService::IMAGE`], imported from a busybox rootfs (no registry).
//!
//! Dropping it removes every container and pod it finds, stops the service (SIGTERM, then
//! SIGKILL), kills any `conmon` left that names its directory, unmounts and deletes the directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::runtimes::{
    Daemon, Install, Unavailable, build_rootfs_tar, check, ensure_installed, http_ok, is_root, kill_processes_naming,
    unmount_under,
};

/// The Debian packages the service needs, with a binary each brings.
pub const PODMAN_PACKAGES: &[(&str, &str)] = &[("podman", "podman"), ("busybox", "busybox-static")];

/// A running Podman service. Dropping it tears everything down.
#[derive(Debug)]
pub struct PodmanService {
    dir: PathBuf,
    service: Daemon,
}

impl PodmanService {
    /// The local image.
    pub const IMAGE: &'static str = "localhost/wm-test/busybox:1";
    /// The libpod API path prefix the tooling and the collector speak.
    pub const API: &'static str = "/v4.0.0/libpod";

    /// Installs (if allowed), starts the service, imports the image; tears down on failure.
    pub fn start(install: Install) -> Result<Self, Unavailable> {
        if !is_root() {
            return Err(Unavailable("the podman service needs root".into()));
        }
        ensure_installed(install, PODMAN_PACKAGES)?;
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wm-pm-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("tmp"))
            .map_err(|e| Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        let conf = format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\nnetns = \"none\"\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{}\"\n\
             tmp_dir = \"{}\"\nvolume_path = \"{}\"\n",
            dir.join("events.log").display(),
            dir.join("tmp").display(),
            dir.join("volumes").display(),
        );
        fs::write(dir.join("containers.conf"), conf).map_err(|e| Unavailable(format!("containers.conf: {e}")))?;
        let mut args = Self::storage_args(&dir);
        args.extend(["system", "service", "--time=0"].map(String::from));
        args.push(format!("unix://{}", dir.join("podman.sock").display()));
        let service =
            Daemon { name: "podman", program: "podman".into(), args, log: dir.join("podman.log"), child: None };
        let mut podman = Self { dir, service };
        podman.start_service()?;
        let tar = build_rootfs_tar(&podman.dir)?;
        check("podman import", &podman.podman(&["import", &tar.display().to_string(), Self::IMAGE])?)?;
        Ok(podman)
    }

    fn storage_args(dir: &Path) -> Vec<String> {
        vec![
            "--root".into(),
            dir.join("storage").display().to_string(),
            "--runroot".into(),
            dir.join("run").display().to_string(),
            "--storage-driver".into(),
            "overlay".into(),
        ]
    }

    /// The service's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("podman.sock")
    }

    /// Whether the service runs.
    pub fn is_running(&self) -> bool {
        self.service.pid().is_some()
    }

    /// Starts the service (again) and waits until it answers `_ping`.
    pub fn start_service(&mut self) -> Result<(), Unavailable> {
        self.service.spawn_with_env(&[("CONTAINERS_CONF", self.dir.join("containers.conf"))])?;
        let socket = self.socket();
        let ping = format!("{}/_ping", Self::API);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http_ok(&socket, &ping) {
            if let Some(status) = self.service.exited() {
                return Err(Unavailable(format!("podman exited ({status}):\n{}", self.service.log_tail())));
            }
            if Instant::now() > deadline {
                return Err(Unavailable(format!("podman did not answer within 30 s:\n{}", self.service.log_tail())));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the service (SIGTERM); its containers run on under conmon, podman being daemonless.
    pub fn stop_service(&mut self) {
        self.service.stop(Duration::from_secs(10));
    }

    /// Runs the podman CLI as a client of the service.
    pub fn podman(&self, args: &[&str]) -> Result<Output, Unavailable> {
        Command::new("podman")
            .arg("--url")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Unavailable(format!("podman {args:?}: {e}")))
    }

    /// Runs the podman CLI directly on the storage, without the service (which may be down).
    pub fn podman_local(&self, args: &[&str]) -> Result<Output, Unavailable> {
        Command::new("podman")
            .args(Self::storage_args(&self.dir))
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Unavailable(format!("podman {args:?}: {e}")))
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        let _ = self.podman_local(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.podman_local(&["pod", "rm", "--all", "--force"]);
        self.service.stop(Duration::from_secs(10));
        kill_processes_naming(&self.dir);
        unmount_under(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
