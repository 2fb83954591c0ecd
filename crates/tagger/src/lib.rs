//! The tagger: turns workload metadata into tags, keeps them per entity and per source, and
//! answers lookups without locks or allocation.
//!
//! Words used in this crate's docs:
//! - a *source* ([`TagSource`]) is the kind of workload store entity that gave an entity its
//!   tags: a container tags itself; a pod or an ECS task also tags its containers. An entity's
//!   tags are the merge of what its sources say.
//! - a *level* is one of the lists a source's tags are kept in: low, orchestrator and high
//!   cardinality, and the unified service tags (`env`, `service`, `version`), which are also
//!   low. A lookup at a cardinality returns that level and the ones below it.
//! - a *part* is a set of tags packed into one allocation. Many entities given the same tags
//!   (an image's, a pod's) hold the same part instead of a copy each.
//!
//! The tagger subscribes to the workload store at `tagger` priority, inline: the store's loop
//! stores each bundle's tags itself before it serves any lower-priority subscriber. It does not talk to runtimes itself (collectors do; on a cache
//! miss it asks the [`ContainerFetcher`] the agent gives it) and does not serve gRPC (the agent
//! does).

#![forbid(unsafe_code)]

mod config;
mod entity_id;
mod fetch;
pub mod origin;
pub mod rules;
mod store;
mod tagger;
mod tags;

pub use config::{MAX_SOURCE_KEY_CHARS, TaggerConfig};
pub use entity_id::TaggerEntityId;
pub use fetch::{
    ContainerFetcher, FETCHES_PER_SECOND, FetchLimits, MAX_CONCURRENT_FETCHES, MAX_NEGATIVE_BYTES, Refused,
};
#[cfg(feature = "memory-accounting")]
pub use store::Footprint;
pub use store::{
    Clock, ManualClock, SystemClock, TagChange, TagEvent, TagEventKind, TagKey, TagSource, TagStore, Tags, TagsIter,
};
pub use tagger::{GLOBAL_ENTITY_ID, Tagger, container_entity, entity_id};
pub use tags::{TagCardinality, TagInfo, UnknownCardinality, tag_key};
