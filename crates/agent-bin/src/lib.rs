//! The workload-metadata agent: composes the store, the collectors compiled in (cargo features),
//! the tagger, the Datadog IPC gRPC API and a localhost HTTP API, and the CLI that queries them.

pub mod cli;
pub mod config;
pub mod convert;
pub mod grpc;
pub mod http;
pub mod proto;
pub mod remote;
pub mod run;
pub mod security;
