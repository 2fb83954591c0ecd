//! The workload-metadata agent: composes the store, the collectors compiled in (cargo features,
//! one line each in [`collectors::COLLECTORS`]), the tagger, the Datadog IPC gRPC API and a
//! localhost HTTP API, and the CLI that queries them.

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
