//! `cargo xtask demo`: real runtimes up, a few labelled containers, the agent against them,
//! what it sees printed (`agent workload-list`, `agent tagger-list`), one container removed and
//! shown gone, then everything torn down. Needs root; installs the Debian packages it misses.
//!
//! Usage: `cargo run -p agent-bin --example demo -- <path to the agent binary>` (what `cargo xtask
//! demo` runs, after building the agent).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::time::{Duration, Instant};

use test_support::runtimes::{self, Install, Runtimes, Unavailable};

fn free_port() -> Result<u16, String> {
    runtimes::free_port().map_err(|e| format!("no free port: {e}"))
}

struct Agent {
    binary: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl Agent {
    fn query(&self, args: &[&str]) -> Result<Output, String> {
        Command::new(&self.binary).arg("--config").arg(&self.config).args(args).output().map_err(|e| e.to_string())
    }

    fn text(&self, args: &[&str]) -> Result<String, String> {
        let out = self.query(args)?;
        if !out.status.success() {
            return Err(format!("agent {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn wait_for(&self, args: &[&str], what: &str, check: impl Fn(&str) -> bool) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = self.text(args)
                && check(&text)
            {
                return Ok(text);
            }
            if Instant::now() > deadline {
                return Err(format!("{what}: not seen within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            runtimes::terminate(child, Duration::from_secs(5));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn step(text: &str) {
    println!("\n##### {text}");
}

fn check(what: &str, out: Result<Output, Unavailable>) -> Result<String, String> {
    let out = out.map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn demo(binary: &Path) -> Result<(), String> {
    step("bringing up containerd and dockerd (private sockets, temporary directory)");
    let rt = Runtimes::start(Install::IfMissing).map_err(|e| e.to_string())?;
    println!("containerd: {}\ndockerd:    {}", rt.containerd_socket().display(), rt.docker_socket().display());

    step("starting labelled containers");
    let web = check(
        "docker run web",
        rt.docker(&[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "none",
            "--label",
            "team=frontend",
            "-e",
            "DD_SERVICE=web",
            "-e",
            "DD_ENV=demo",
            "-e",
            "DD_VERSION=1.4",
            Runtimes::IMAGE,
            "sleep",
            "3600",
        ]),
    )?;
    let db = check(
        "docker run db",
        rt.docker(&[
            "run",
            "-d",
            "--name",
            "db",
            "--network",
            "none",
            "--label",
            "team=storage",
            Runtimes::IMAGE,
            "sleep",
            "3600",
        ]),
    )?;
    check(
        "ctr run job",
        rt.ctr(
            Runtimes::CTR_NAMESPACE,
            &["run", "-d", "--label", "team=batch", Runtimes::CTR_IMAGE, "job", "/bin/sleep", "3600"],
        ),
    )?;
    println!("docker: web {}, db {}\ncontainerd (namespace {}): job", &web[..12], &db[..12], Runtimes::CTR_NAMESPACE);

    step("starting the agent");
    let dir = rt.dir().join("agent");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let config = dir.join("agent.yaml");
    let yaml = format!(
        "cmd_port: {}\nhealth_port: {}\ndocker_host: {}\ncri_socket_path: {}\npodman_socket_path: {}\n\
         log_level: warn\ncontainer_labels_as_tags:\n  team: team\n",
        free_port()?,
        free_port()?,
        rt.docker_host(),
        rt.containerd_socket().display(),
        dir.join("no-podman.sock").display()
    );
    std::fs::write(&config, &yaml).map_err(|e| e.to_string())?;
    print!("{yaml}");
    let child = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let mut agent = Agent { binary: binary.to_owned(), config, child: Some(child) };
    agent.wait_for(&["health"], "the agent ready", |out| out.contains("Agent health: PASS"))?;
    let list = agent.wait_for(&["workload-list"], "the three containers", |out| {
        out.contains(&format!("id: {web} ===")) && out.contains(&format!("id: {db} ===")) && out.contains("id: job ===")
    })?;

    step("agent workload-list");
    print!("{list}");
    step("agent tagger-list");
    let tags = agent
        .wait_for(&["tagger-list"], "their tags", |out| out.contains("team:batch") && out.contains("team:storage"))?;
    print!("{tags}");

    step("removing db (docker rm -f db)");
    check("docker rm", rt.docker(&["rm", "-f", "db"]))?;
    let after = agent.wait_for(&["workload-list"], "db gone", |out| !out.contains(&db))?;
    println!("containers the agent now knows:");
    let mut lines = after.lines();
    while let Some(line) = lines.next() {
        if line == "----------- Entity Meta -----------"
            && let Some(name) = lines.next().and_then(|l| l.strip_prefix("Name: "))
        {
            println!("  {name}");
        }
    }
    println!("db ({}) is gone: {}", &db[..12], !after.contains(&db));

    step("agent status");
    print!("{}", agent.text(&["status"])?);

    step("stopping the agent and tearing down the runtimes");
    agent.stop();
    drop(rt);
    println!("done: every process the demo started is stopped, its directory removed");
    Ok(())
}

fn main() -> ExitCode {
    let Some(binary) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: wm-demo <path to the agent binary>");
        return ExitCode::from(2);
    };
    match demo(&binary) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}
