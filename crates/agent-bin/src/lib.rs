//! The workload-metadata agent as a library; the `agent` binary (`src/main.rs`) is a thin layer
//! over it.
//!
//! This crate puts the other crates together: it reads the config, builds the store, the
//! collectors compiled into this build (one cargo feature and one entry in
//! [`collectors::COLLECTORS`] each) and the tagger, and serves their data through the Datadog IPC
//! gRPC API and a localhost HTTP API. It also holds the CLI that queries a running agent through
//! that HTTP API. It does not collect or tag anything itself: the collector crates and the
//! `tagger` crate do.
//!
//! Words used in this crate's docs:
//! - a *flavor* is a build of the agent chosen by a `flavor-*` cargo feature: `flavor-node` (the
//!   default), `flavor-cf`, `flavor-cluster` or `flavor-light`.
//! - the *light agent* is what `agent run` starts in a `flavor-light` build: it runs no
//!   collector and keeps a copy of another agent's tags ([`light`]).
//! - a *follower* is a full agent whose config sets `process_config.remote_workloadmeta`: its
//!   only collector streams workload metadata from another agent, and it serves no gRPC API.
//! - the *upstream* of the light agent or of a follower is the agent it copies, which it reaches
//!   at `cmd_host:cmd_port` with that agent's token and certificate files.
//! - the *probes* are `/live`, `/ready` and `/health`, served over plain HTTP on `health_port`
//!   with no token, for the kubelet and other health checkers.

use std::path::Path;

pub mod agents;
pub mod backend;
pub mod cli;
#[cfg(feature = "cluster-agent")]
pub mod cluster;
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

/// Returns the heap bytes live in the process now: allocated less freed (a reallocation counts
/// its growth as allocated and its shrinking as freed); `None` unless built with the
/// `alloc-stats` feature, whose `agent` binary counts every allocation (its global allocator is
/// `stats_alloc::INSTRUMENTED_SYSTEM`, declared in `main.rs` so that a bench with an allocator
/// of its own can still link this library).
///
/// Beside the resident size it tells a leak (both grow) from the allocator's fragmentation
/// (only the resident size grows).
pub fn heap_live_bytes() -> Option<u64> {
    #[cfg(feature = "alloc-stats")]
    {
        let stats = stats_alloc::INSTRUMENTED_SYSTEM.stats();
        Some(stats.bytes_allocated.saturating_sub(stats.bytes_deallocated) as u64)
    }
    #[cfg(not(feature = "alloc-stats"))]
    None
}

/// Loads the agent's config from a YAML file and the `DD_*` environment variables.
///
/// `path` is the config file. `None` means [`config::DEFAULT_CONFIG_PATH`], which may be missing
/// (then only the defaults and the environment count); a path given explicitly must exist. `env`
/// is the environment as pairs of name and value: the process's own in production, a list of the
/// test's choosing in tests. Only names that start with `DD_` are read.
///
/// Every component reads its part here, the collectors compiled into this build included, so a
/// wrong value for any of them is refused before anything starts. A file key that no component
/// reads is not an error: it is recorded in [`config::AgentConfig::warnings`].
///
/// # Errors
///
/// Returns a [`config::ConfigError`] when the file cannot be read or is not a YAML mapping, when
/// a key has a value of the wrong kind, or when a component refuses its part as a whole. The
/// error for a wrong value names the key, the value (never a secret's), where the value came from
/// and what was expected.
pub fn load_config(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<config::AgentConfig, config::ConfigError> {
    let mut config = config::AgentConfig::read(path, env)?;
    // Building every collector makes each one read and check its part of the config. What they
    // build is dropped at once: building does no I/O, and `agent run` builds them again to start.
    collectors::build_all(&config)?;
    // The keys of the other agents' taggers are read here too, so that a wrong value is refused
    // before anything starts and `agent config` lists them.
    config.section::<agents::RemoteTaggerConfig>()?;
    // The cluster agent's keys, for the same reasons (and so that they are not warned about as
    // unknown).
    #[cfg(feature = "cluster-agent")]
    config.section::<cluster::ClusterAgentConfig>()?;
    config.note_unknown_keys();
    Ok(config)
}
