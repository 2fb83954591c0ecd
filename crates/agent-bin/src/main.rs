//! The `agent` command: runs the workload-metadata agent, or asks a running one for its data and
//! prints the answer.
//!
//! The `///` comments on `Args` and `Command` are the command's `--help` text.

use std::path::PathBuf;
use std::process::ExitCode;

use agent_bin::cli::{self, CliError};
use agent_bin::config::{AgentConfig, LogLevel, Setting};
use agent_bin::report::{HealthReport, StatusReport, TaggerList, WorkloadList};
use clap::{Parser, Subcommand};

// jemalloc is the process's malloc: linking it in replaces glibc's `malloc` and `free`, which
// Rust's `System` allocator calls. glibc keeps the pages a re-list frees in its per-thread
// arenas for good (the soak's resident size grew in a step at each daemon restart while the
// live heap stayed flat); jemalloc, built with one arena, thread caches for allocations of up
// to 1 KiB and freed pages returned at once (`.cargo/config.toml`), gives them back and rounds
// small allocations to finer size classes (DESIGN.md, section 6). `MALLOC_CONF` changes those
// settings at run time. Referring to jemalloc's `malloc` from a `#[used]` static keeps it in the
// link whatever the order of the archives (`tests/cli.rs` checks that jemalloc runs, with its
// settings).
#[cfg(feature = "jemalloc")]
#[used]
static KEEP_JEMALLOC: unsafe extern "C" fn(usize) -> *mut std::ffi::c_void = tikv_jemalloc_sys::malloc;

/// With the `alloc-stats` feature, every heap allocation is counted, for
/// `agent_bin::heap_live_bytes` (`agent_heap_live_bytes` on `/metrics`).
#[cfg(feature = "alloc-stats")]
#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

#[derive(Parser)]
#[command(name = "agent", version, about = "Workload-metadata agent: containers, pods and tasks, and their tags")]
struct Args {
    /// The config file (default /etc/wm-agent/agent.yaml; `DD_*` env vars override its keys).
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the agent until SIGTERM or SIGINT.
    Run {
        /// Runs as the tag source of one of Datadog's other agents (apm, logs, process, security,
        /// runtime-security): the light agent when that agent's `<section>.remote_tagger` is true
        /// (the default), the full agent when it is false.
        #[arg(long = "for", value_name = "AGENT")]
        for_agent: Option<agent_bin::agents::Agent>,
    },
    /// Runs the cluster agent until SIGTERM or SIGINT: one set of cluster-wide watches, and the
    /// Datadog Cluster Agent's API for node agents on `cluster_agent.cmd_port`.
    #[cfg(feature = "cluster-agent")]
    ClusterAgent,
    /// Prints the entities the running agent stores.
    WorkloadList {
        /// Also prints each source's version of an entity, and labels, annotations and env vars.
        #[arg(long, short)]
        verbose: bool,
        /// Prints JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prints every entity's tags, per source.
    TaggerList {
        /// Prints JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prints the running agent's status.
    Status {
        /// Prints JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prints the running agent's health; exits non-zero unless it is live and ready.
    Health {
        /// Prints JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prints the running agent's effective config, each key with its origin.
    Config {
        /// Prints JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Sets up logging to stderr at `log_level`, as one JSON object per line when `log_format_json`
/// is set.
fn init_logging(config: &AgentConfig) {
    use tracing_subscriber::filter::LevelFilter;
    let level = match config.log.log_level {
        LogLevel::Trace => LevelFilter::TRACE,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Off => LevelFilter::OFF,
    };
    // Colour codes only when stderr is a terminal, so that a log file or journald gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).with_ansi(ansi);
    if config.log.log_format_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Prints `value` on stdout as indented JSON, or an error on stderr if it cannot be serialized.
fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("agent: cannot print JSON: {e}"),
    }
}

/// Runs one query command against the running agent that `config` describes and prints the
/// answer.
///
/// Every command but `health` asks the TLS API; `health` asks the probes, so that it works even
/// where the token or certificate file cannot be read.
async fn query(config: &AgentConfig, command: Command) -> Result<ExitCode, CliError> {
    // The token and certificate files are the ones the agent created. If one cannot be read, the
    // query goes on without it: queries of the TLS API then fail, while `agent health` still
    // works because the probes need neither file.
    let token = std::fs::read_to_string(config.auth_token_path()).ok().map(|t| t.trim().to_owned());
    let cert = std::fs::read_to_string(config.ipc_cert_path()).unwrap_or_default();
    let port = cli::Api::tls(agent_bin::run::api_port(config), token, cert);
    let probes = cli::Api::from(config.ipc.health_port.get());
    match command {
        // `main` runs the agent itself and never sends `run` here.
        Command::Run { .. } => Ok(ExitCode::SUCCESS),
        #[cfg(feature = "cluster-agent")]
        Command::ClusterAgent => Ok(ExitCode::SUCCESS),
        Command::WorkloadList { verbose, json } => {
            let list: WorkloadList =
                cli::fetch(port.clone(), &format!("/agent/workload-list?verbose={verbose}")).await?;
            if json {
                print_json(&list);
            } else {
                print!("{}", cli::format_workload_list(&list, verbose));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::TaggerList { json } => {
            let list: TaggerList = cli::fetch(port.clone(), "/agent/tagger-list").await?;
            if json {
                print_json(&list);
            } else {
                print!("{}", cli::format_tagger_list(&list));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let status: StatusReport = cli::fetch(port.clone(), "/agent/status").await?;
            if json {
                print_json(&status);
            } else {
                print!("{}", cli::format_status(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { json } => {
            let health: HealthReport = cli::fetch(probes, "/health").await?;
            if json {
                print_json(&health);
            } else {
                print!("{}", cli::format_health(&health));
            }
            Ok(if health.live && health.ready { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Config { json } => {
            let settings: std::collections::BTreeMap<String, Setting> =
                cli::fetch(port.clone(), "/agent/config").await?;
            if json {
                print_json(&settings);
            } else {
                print!("{}", AgentConfig::render(&settings));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Parses the command line and the config, then runs the agent or one query.
///
/// Exits with 2 when the config is refused, and with 1 when the async runtime cannot start, the
/// agent fails, a query fails, or `agent health` finds the agent not live or not ready.
fn main() -> ExitCode {
    let args = Args::parse();
    let config = match agent_bin::load_config(args.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("agent: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.command {
        Command::Run { for_agent } => {
            init_logging(&config);
            for warning in &config.warnings {
                tracing::warn!("{warning}");
            }
            // The light agent keeps a copy of its upstream's tags instead of running collectors of
            // its own: a `flavor-light` build runs it, and so does `--for` an agent whose tagger
            // is remote.
            use agent_bin::agents::{Plan, plan};
            let plan = match plan(&config, for_agent, cfg!(feature = "flavor-light")) {
                Ok(plan) => plan,
                Err(e) => {
                    // A config the agent cannot run with: exit 2, as for any refused config.
                    eprintln!("agent: {e}");
                    return ExitCode::from(2);
                }
            };
            let run = async {
                match plan {
                    Plan::Light => agent_bin::light::run(&config).await,
                    Plan::Full => agent_bin::run::run(&config).await,
                }
            };
            match runtime.block_on(run) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        #[cfg(feature = "cluster-agent")]
        Command::ClusterAgent => {
            init_logging(&config);
            for warning in &config.warnings {
                tracing::warn!("{warning}");
            }
            match runtime.block_on(agent_bin::cluster::run(&config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("agent: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        command => {
            for warning in &config.warnings {
                eprintln!("agent: warning: {warning}");
            }
            match runtime.block_on(query(&config, command)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("agent: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
