//! The Datadog IPC wire format, shared by the agent that serves it and the clients that follow
//! it (the remote-workloadmeta collector, the remote tagger):
//!
//! - [`proto`]: code generated from our own `.proto` files (`proto/`, written from the wire facts
//!   in `docs/wire/datadog-ipc.md`): `datadog.api.v1.AgentSecure`, `datadog.model.v1` (tagger) and
//!   `datadog.workloadmeta`;
//! - [`convert`]: the store's entities to and from workloadmeta messages;
//! - [`client`]: how a client reaches an agent: its address, auth token and IPC certificate;
//! - [`replica`]: [`replica::RemoteTagger`], a local replica of an agent's tags fed by its stream.
//!
//! It serves nothing; the replica is the only state it keeps.

#![forbid(unsafe_code)]

pub mod client;
pub mod convert;
pub mod proto;
pub mod replica;

pub use client::{AddToken, IpcCert, IpcError, RemoteAgent};

/// The message-size limit both ways (Datadog's default, 4 MiB).
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
