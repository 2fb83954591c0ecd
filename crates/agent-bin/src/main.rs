//! `agent`: run the workload-metadata agent, or query a running one.

use std::path::PathBuf;
use std::process::ExitCode;

use agent_bin::cli::{self, CliError};
use agent_bin::config::{AgentConfig, LogLevel, Setting};
use agent_bin::report::{HealthReport, StatusReport, TaggerList, WorkloadList};
use clap::{Parser, Subcommand};

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
    Run,
    /// Prints the entities the running agent stores.
    WorkloadList {
        /// Also each source's version, labels, annotations and env vars.
        #[arg(long, short)]
        verbose: bool,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prints every entity's tags, per source.
    TaggerList {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prints the running agent's status.
    Status {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prints the running agent's health; exits non-zero unless it is live and ready.
    Health {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prints the running agent's effective config, each key with its origin.
    Config {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

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
    // Colours only on a terminal: a log file or journald gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).with_ansi(ansi);
    if config.log.log_format_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("agent: cannot print JSON: {e}"),
    }
}

async fn query(config: &AgentConfig, command: Command) -> Result<ExitCode, CliError> {
    // The token and the certificate are read as the agent made them (unreadable or absent: the
    // probes still answer, on their own port).
    let token = std::fs::read_to_string(config.auth_token_path()).ok().map(|t| t.trim().to_owned());
    let cert = std::fs::read_to_string(config.ipc_cert_path()).unwrap_or_default();
    let port = cli::Api::tls(agent_bin::run::api_port(config), token, cert);
    let probes = cli::Api::from(config.ipc.health_port.get());
    match command {
        Command::Run => Ok(ExitCode::SUCCESS),
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
        Command::Run => {
            init_logging(&config);
            for warning in &config.warnings {
                tracing::warn!("{warning}");
            }
            // A `flavor-light` build runs the light agent: a replica of its upstream's tags.
            let run = async {
                if cfg!(feature = "flavor-light") {
                    agent_bin::light::run(&config).await
                } else {
                    agent_bin::run::run(&config).await
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
