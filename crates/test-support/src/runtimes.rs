//! Real container runtimes for tests, benchmarks and the demo: `containerd` and `dockerd` (on
//! that containerd), started as root in a private temporary directory, on private sockets.
//!
//! What it does, and why:
//! - Installs what is missing from Debian (`containerd`, `runc`, `docker.io`, `busybox-static`)
//!   only when told to ([`Install::IfMissing`]); tests outside CI skip instead.
//! - Starts `containerd` with its own root, state and socket (the CRI plugin disabled: nothing
//!   here is Kubernetes), then `dockerd --iptables=false --bridge=none` on that containerd with its
//!   own data root, exec root, pid file and socket. Nothing on the machine's default sockets is
//!   touched, and the host's firewall and bridges are left alone.
//! - Waits until both answer (`/_ping`, `ctr version`).
//! - Builds a local image from a rootfs holding Debian's static busybox (no registry is
//!   reachable): imported into docker with `docker import`, and into containerd's
//!   [`Runtimes::CTR_NAMESPACE`] with `docker save | ctr images import`.
//! - Stops exactly what it started, by pid, when dropped (also when a test panics): removes the
//!   containers it finds through both daemons, stops the daemons (SIGTERM, then SIGKILL after
//!   10 s), kills any shim left behind that names its private socket, unmounts what is still
//!   mounted under its directory and deletes it. A process killed outright (SIGKILL of the test
//!   binary) cannot run this; its directory name says which pid made it.
//!
//! Containers run with `--network none`: dockerd has no bridge here.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The Debian packages the runtimes need, with a binary each brings.
pub const DEBIAN_PACKAGES: &[(&str, &str)] =
    &[("containerd", "containerd"), ("runc", "runc"), ("dockerd", "docker.io"), ("busybox", "busybox-static")];

/// Whether missing packages may be installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// Install with `apt-get` what is missing (CI, the demo).
    IfMissing,
    /// Report what is missing instead.
    Never,
}

/// Why the runtimes could not be started.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

/// Whether this run must not skip daemon-backed tests (`WM_CI=1`, set by `cargo xtask ci`).
pub fn ci() -> bool {
    std::env::var_os("WM_CI").is_some_and(|v| v == "1")
}

/// Starts the runtimes for a test, or says why not. Under `WM_CI=1` it installs what is missing
/// and a failure panics (CI never skips); otherwise it prints `SKIPPED: <why>` and returns `None`,
/// and the test returns early and passes.
pub fn start_or_skip(test: &str) -> Option<Runtimes> {
    start_or_skip_with(test, Runtimes::start)
}

/// [`start_or_skip`] for any real service `start` brings up.
pub fn start_or_skip_with<T>(test: &str, start: impl FnOnce(Install) -> Result<T, Unavailable>) -> Option<T> {
    if !ci() && std::env::var_os("WM_SKIP_REAL_DAEMONS").is_some_and(|v| v == "1") {
        println!("SKIPPED: {test}: WM_SKIP_REAL_DAEMONS=1");
        return None;
    }
    let install = if ci() { Install::IfMissing } else { Install::Never };
    match start(install) {
        Ok(service) => Some(service),
        Err(why) if ci() => panic!("{test}: real daemons are required under WM_CI=1: {why}"),
        Err(why) => {
            println!("SKIPPED: {test}: {why}");
            None
        }
    }
}

/// Starts a real service with `start` (or skips, as [`start_or_skip`]), runs `body` on a fresh
/// tokio runtime, then drops the runtime before the service: no collector outlives its daemon,
/// and a panicking test tears down the same way.
pub fn with_service<T>(
    test: &str,
    start: impl FnOnce(Install) -> Result<T, Unavailable>,
    body: impl AsyncFnOnce(&mut T),
) {
    let Some(mut service) = start_or_skip_with(test, start) else { return };
    let tokio = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(tokio) => tokio,
        Err(e) => panic!("{test}: cannot start a tokio runtime: {e}"),
    };
    tokio.block_on(body(&mut service));
    drop(tokio);
    drop(service);
}

/// Installs the missing `packages`, given as (binary, Debian package) (`apt-get update` first).
pub fn ensure_installed(install: Install, packages: &[(&str, &str)]) -> Result<(), Unavailable> {
    let missing: Vec<&str> = packages.iter().filter(|(bin, _)| !on_path(bin)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if install == Install::Never {
        return Err(Unavailable(format!("not installed: {} (cargo xtask ci installs them)", missing.join(", "))));
    }
    if !is_root() {
        return Err(Unavailable(format!("installing {} needs root", missing.join(", "))));
    }
    let update = Command::new("apt-get").args(["update", "-qq"]).status();
    if !update.is_ok_and(|s| s.success()) {
        return Err(Unavailable("apt-get update failed".into()));
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        other => Err(Unavailable(format!("apt-get install {} failed: {other:?}", missing.join(" ")))),
    }
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(binary).is_file()))
}

pub(crate) fn is_root() -> bool {
    // The effective uid is the third field of `Uid:` in /proc/self/status.
    fs::read_to_string("/proc/self/status").ok().is_some_and(|status| {
        status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1)) == Some("0")
    })
}

/// A started daemon: its child process and how to start it again.
#[derive(Debug)]
pub(crate) struct Daemon {
    pub(crate) name: &'static str,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) log: PathBuf,
    pub(crate) child: Option<Child>,
}

impl Daemon {
    pub(crate) fn spawn(&mut self) -> Result<(), Unavailable> {
        self.spawn_with_env(&[])
    }

    pub(crate) fn spawn_with_env(&mut self, env: &[(&str, PathBuf)]) -> Result<(), Unavailable> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| Unavailable(format!("{}: cannot open its log: {e}", self.name)))?;
        let err = log.try_clone().map_err(|e| Unavailable(format!("{}: {e}", self.name)))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| Unavailable(format!("cannot start {}: {e}", self.program.display())))?;
        self.child = Some(child);
        Ok(())
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and reap it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM; SIGKILL after `grace`.
    pub(crate) fn stop(&mut self, grace: Duration) {
        if let Some(child) = self.child.take() {
            terminate(child, grace);
        }
    }

    pub(crate) fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// containerd and dockerd, running in a private directory. Dropping it tears everything down.
#[derive(Debug)]
pub struct Runtimes {
    dir: PathBuf,
    containerd: Daemon,
    dockerd: Daemon,
}

impl Runtimes {
    /// The local image, in docker and in containerd's [`Runtimes::CTR_NAMESPACE`].
    pub const IMAGE: &'static str = "wm-test/busybox:1";
    /// The same image as containerd names it.
    pub const CTR_IMAGE: &'static str = "docker.io/wm-test/busybox:1";
    /// The containerd namespace the tooling imports the image into.
    pub const CTR_NAMESPACE: &'static str = "wmtest";

    /// Installs (if allowed) and starts both daemons, builds the image; tears down on failure.
    pub fn start(install: Install) -> Result<Self, Unavailable> {
        if !is_root() {
            return Err(Unavailable("the runtimes need root".into()));
        }
        ensure_installed(install, DEBIAN_PACKAGES)?;
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wm-rt-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        let d = |p: &str| dir.join(p).display().to_string();
        let containerd_config = dir.join("containerd.toml");
        // The debug socket serves Go's profiler (`/debug/pprof/`): the Debian binary has no
        // symbols, so it is how a bench sees where containerd's time goes (docs/BENCHMARKS.md).
        let config = format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}\"\n[debug]\n  address = \"{}\"\n\
             [metrics]\n  address = \"\"\n",
            d("containerd/root"),
            d("containerd/state"),
            d("containerd.sock"),
            d("containerd.sock.ttrpc"),
            d("containerd-debug.sock"),
        );
        fs::write(&containerd_config, config).map_err(|e| Unavailable(format!("containerd config: {e}")))?;
        fs::write(dir.join("daemon.json"), "{}\n").map_err(|e| Unavailable(format!("dockerd config: {e}")))?;
        let containerd = Daemon {
            name: "containerd",
            program: "containerd".into(),
            args: vec!["--config".into(), containerd_config.display().to_string()],
            log: dir.join("containerd.log"),
            child: None,
        };
        let dockerd = Daemon {
            name: "dockerd",
            program: "dockerd".into(),
            args: [
                "--containerd",
                &d("containerd.sock"),
                "--data-root",
                &d("docker"),
                "--exec-root",
                &d("de"),
                "--pidfile",
                &d("docker.pid"),
                "--host",
                &format!("unix://{}", d("docker.sock")),
                "--config-file",
                &d("daemon.json"),
                "--iptables=false",
                "--ip-masq=false",
                "--bridge=none",
                "--userland-proxy=false",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            log: dir.join("dockerd.log"),
            child: None,
        };
        let mut runtimes = Self { dir, containerd, dockerd };
        runtimes.start_containerd()?;
        runtimes.start_dockerd()?;
        runtimes.build_image()?;
        Ok(runtimes)
    }

    /// The private directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// dockerd's socket.
    pub fn docker_socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// `unix://` + dockerd's socket, as `DOCKER_HOST` takes it.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.docker_socket().display())
    }

    /// The busybox rootfs the image was built from (for `ctr run --rootfs`).
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// dockerd's pid, while it runs.
    pub fn dockerd_pid(&self) -> Option<u32> {
        self.dockerd.pid()
    }

    /// containerd's pid, while it runs.
    pub fn containerd_pid(&self) -> Option<u32> {
        self.containerd.pid()
    }

    /// Starts containerd (again) and waits until it answers.
    pub fn start_containerd(&mut self) -> Result<(), Unavailable> {
        self.containerd.spawn()?;
        self.wait_until("containerd", |rt| rt.ctr_raw(&["version"]).is_ok_and(|o| o.status.success()))
    }

    /// Starts dockerd (again) and waits until it answers `/_ping`.
    pub fn start_dockerd(&mut self) -> Result<(), Unavailable> {
        self.dockerd.spawn()?;
        let socket = self.docker_socket();
        self.wait_until("dockerd", |_| ping(&socket))
    }

    /// Kills dockerd with SIGKILL (its containers live on under containerd).
    pub fn kill_dockerd(&mut self) {
        self.dockerd.kill();
    }

    /// Kills containerd with SIGKILL (the shims and their containers live on).
    pub fn kill_containerd(&mut self) {
        self.containerd.kill();
    }

    fn wait_until(&mut self, what: &str, ready: impl Fn(&Self) -> bool) -> Result<(), Unavailable> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if ready(self) {
                return Ok(());
            }
            let daemon = if what == "dockerd" { &mut self.dockerd } else { &mut self.containerd };
            if let Some(status) = daemon.exited() {
                return Err(Unavailable(format!("{what} exited ({status}):\n{}", daemon.log_tail())));
            }
            if Instant::now() > deadline {
                return Err(Unavailable(format!("{what} did not answer within 30 s:\n{}", daemon.log_tail())));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn build_image(&self) -> Result<(), Unavailable> {
        let tar = build_rootfs_tar(&self.dir)?;
        let tar_path = tar.display().to_string();
        check("docker import", &self.docker(&["import", &tar_path, Self::IMAGE])?)?;
        self.copy_image_to_containerd(Self::IMAGE, Self::CTR_NAMESPACE)
    }

    /// Copies a docker image into containerd's `namespace`: `docker save | ctr images import -`.
    /// containerd names it as docker's reference normalised (`wm-test/busybox:1` becomes
    /// `docker.io/wm-test/busybox:1`).
    pub fn copy_image_to_containerd(&self, image: &str, namespace: &str) -> Result<(), Unavailable> {
        let save = Command::new("docker")
            .arg("--host")
            .arg(self.docker_host())
            .args(["save", image])
            .output()
            .map_err(|e| Unavailable(format!("docker save: {e}")))?;
        check("docker save", &save)?;
        let mut import = Command::new("ctr")
            .arg("--address")
            .arg(self.containerd_socket())
            .args(["--namespace", namespace, "images", "import", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Unavailable(format!("ctr images import: {e}")))?;
        if let Some(mut stdin) = import.stdin.take() {
            stdin.write_all(&save.stdout).map_err(|e| Unavailable(format!("ctr images import: {e}")))?;
        }
        let out = import.wait_with_output().map_err(|e| Unavailable(format!("ctr images import: {e}")))?;
        check("ctr images import", &out)
    }

    /// Runs the docker CLI against this dockerd.
    pub fn docker(&self, args: &[&str]) -> Result<Output, Unavailable> {
        Command::new("docker")
            .arg("--host")
            .arg(self.docker_host())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Unavailable(format!("docker {args:?}: {e}")))
    }

    /// Runs `ctr` against this containerd in `namespace`.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Result<Output, Unavailable> {
        let mut all = vec!["--namespace", namespace];
        all.extend_from_slice(args);
        self.ctr_raw(&all)
    }

    fn ctr_raw(&self, args: &[&str]) -> Result<Output, Unavailable> {
        Command::new("ctr")
            .arg("--address")
            .arg(self.containerd_socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Unavailable(format!("ctr {args:?}: {e}")))
    }

    /// Lines of a successful command's stdout.
    pub fn lines(output: &Output) -> Vec<String> {
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    fn teardown(&mut self) {
        if self.dockerd.pid().is_some()
            && ping(&self.docker_socket())
            && let Ok(out) = self.docker(&["ps", "-aq"])
        {
            let ids = Self::lines(&out);
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                let _ = self.docker(&args);
            }
        }
        self.dockerd.stop(Duration::from_secs(10));
        if self.containerd.pid().is_some() {
            let namespaces =
                self.ctr_raw(&["namespaces", "list", "--quiet"]).map(|o| Self::lines(&o)).unwrap_or_default();
            for ns in &namespaces {
                let tasks = self.ctr(ns, &["tasks", "list", "--quiet"]).map(|o| Self::lines(&o)).unwrap_or_default();
                for task in &tasks {
                    let _ = self.ctr(ns, &["tasks", "delete", "--force", task]);
                }
                let containers =
                    self.ctr(ns, &["containers", "list", "--quiet"]).map(|o| Self::lines(&o)).unwrap_or_default();
                for container in &containers {
                    let _ = self.ctr(ns, &["containers", "delete", container]);
                }
            }
        }
        self.containerd.stop(Duration::from_secs(10));
        kill_processes_naming(&self.dir);
        unmount_under(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Runtimes {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Builds `dir/rootfs` (Debian's static busybox and a few applet links) and its tarball
/// `dir/rootfs.tar`, which `docker import` / `podman import` turn into an image.
pub(crate) fn build_rootfs_tar(dir: &Path) -> Result<PathBuf, Unavailable> {
    let rootfs = dir.join("rootfs");
    let bin = rootfs.join("bin");
    fs::create_dir_all(&bin).map_err(|e| Unavailable(format!("rootfs: {e}")))?;
    for dir in ["etc", "tmp", "proc", "sys", "dev"] {
        fs::create_dir_all(rootfs.join(dir)).map_err(|e| Unavailable(format!("rootfs: {e}")))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .ok_or_else(|| Unavailable("busybox-static is not installed".into()))?;
    fs::copy(busybox, bin.join("busybox")).map_err(|e| Unavailable(format!("copying busybox: {e}")))?;
    for applet in ["sh", "sleep", "true", "false", "echo", "cat", "ls", "hostname", "env", "kill"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .map_err(|e| Unavailable(format!("rootfs symlink {applet}: {e}")))?;
    }
    let tar = dir.join("rootfs.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .map_err(|e| Unavailable(format!("tar: {e}")))?;
    check("tar", &out)?;
    Ok(tar)
}

pub(crate) fn check(what: &str, out: &Output) -> Result<(), Unavailable> {
    if out.status.success() {
        Ok(())
    } else {
        Err(Unavailable(format!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Stops `child`: SIGTERM, then SIGKILL if it still runs after `grace`; reaps it either way.
pub fn terminate(mut child: Child, grace: Duration) {
    // It may have exited already: nothing to say then.
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).stderr(Stdio::null()).status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Returns a TCP port that was free on every IPv4 address a moment ago, for a server a test
/// starts.
///
/// It is picked below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), where no
/// outgoing connection is ever given a port. A port the kernel hands out for `:0` comes from
/// that range, so another test process's connection could take it between this check and the
/// server's bind: CI runs test binaries side by side, and a kubelet once failed to start on
/// "address already in use" that way. Each process starts at a random point of the range and
/// moves on, so concurrent processes rarely try the same port; a taken port is skipped.
pub fn free_port() -> std::io::Result<u16> {
    use std::hash::BuildHasher;
    const FIRST: u32 = 10_000;
    static NEXT: std::sync::OnceLock<AtomicU32> = std::sync::OnceLock::new();
    let below = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = below.saturating_sub(FIRST).max(1);
    let next = NEXT.get_or_init(|| {
        let seed = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        AtomicU32::new((seed % u64::from(span)) as u32)
    });
    for _ in 0..span.min(4_096) {
        let port = FIRST + next.fetch_add(1, Ordering::Relaxed) % span;
        let Ok(port) = u16::try_from(port) else { continue };
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return Ok(port);
        }
    }
    // Nothing free below the ephemeral range: let the kernel pick.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether dockerd answers `GET /_ping` on `socket`.
pub fn ping(socket: &Path) -> bool {
    http_ok(socket, "/_ping")
}

/// Whether an HTTP server on the unix socket answers `GET path` with 200.
pub fn http_ok(socket: &Path, path: &str) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: d\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}

/// SIGKILLs the processes whose command line names `dir` (the shims our containerd started,
/// which outlive it by design).
pub(crate) fn kill_processes_naming(dir: &Path) {
    let needle = dir.display().to_string();
    let Ok(entries) = fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        if pid == std::process::id().to_string() {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
}

/// Unmounts, deepest first, whatever is still mounted under `dir`.
pub(crate) fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else { return };
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> =
        mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&prefix)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = Command::new("umount").args(["-l", point]).status();
    }
}
