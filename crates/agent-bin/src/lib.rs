//! The workload-metadata agent: composes the store, the collectors compiled in (cargo features,
//! one entry each in [`collectors::COLLECTORS`]), the tagger, the Datadog IPC gRPC API and a
//! localhost HTTP API, and the CLI that queries them.

use std::path::Path;

pub mod backend;
pub mod cli;
pub mod collectors;
pub mod config;
pub mod conn;
pub mod grpc;
pub mod http;
pub mod light;
pub mod remote;
pub mod report;
pub mod run;
pub mod security;
mod signals;

/// Loads the agent's config: the file at `path` (a missing file is fine only when it is the
/// default path) and the `DD_*` variables of `env` (pairs of name and value; the process's in
/// production), read into every component's part, the collectors compiled in included.
///
/// # Errors
///
/// A file that cannot be read or parsed, or a value of the wrong kind for any key, refuses the
/// whole config: the error names the key, the value (never a secret's), where it came from and
/// what is expected.
pub fn load_config(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<config::AgentConfig, config::ConfigError> {
    let mut config = config::AgentConfig::read(path, env)?;
    // Each collector reads its own part; what it builds is dropped (building does no I/O).
    collectors::build_all(&config)?;
    config.note_unknown_keys();
    Ok(config)
}
