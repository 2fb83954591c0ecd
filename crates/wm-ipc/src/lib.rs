//! The Datadog IPC wire format, and the client side of an agent's API.
//!
//! An agent serves its `AgentSecure` gRPC API (agent-bin does that); other processes follow it as
//! clients: the remote-workloadmeta collector, the remote tagger of the light agent
//! (`flavor-light`) and the Python `tagger` module. This crate holds the wire format that both
//! sides use, and the client side:
//!
//! - [`proto`]: the code generated from our own `.proto` files (`proto/`, written from the wire
//!   facts in `docs/wire/datadog-ipc.md`): `datadog.api.v1.AgentSecure`, `datadog.model.v1`
//!   (tagger) and `datadog.workloadmeta`;
//! - [`convert`]: converts the store's entities to workloadmeta wire messages and back;
//! - [`client`]: connects a client to an agent, given its address, auth token and IPC certificate;
//! - [`replica`]: [`replica::RemoteTagger`], a local copy of an agent's tags that its tagger stream
//!   keeps current;
//! - [`fetch`]: [`fetch::EntityFetcher`], which asks an agent for one entity that the replica does
//!   not have yet (a container started a moment ago).
//!
//! Words used in this crate's docs: the *upstream* is the agent a client follows; a *replica* is
//! a local copy of the upstream's tags.
//!
//! This crate serves nothing; the replica and the fetcher's table of fetches under way are the
//! only state it holds.

#![forbid(unsafe_code)]

pub mod client;
pub mod convert;
pub mod fetch;
pub mod proto;
pub mod replica;

pub use client::{AddToken, IpcCert, IpcError, RemoteAgent};

/// The largest gRPC message, in bytes, that our clients and our server send or accept: 4 MiB.
///
/// This is the default of Datadog's `cluster_agent.cluster_tagger.grpc_max_message_size`, the
/// limit the Datadog agent's server sets for what it sends and what it receives.
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
