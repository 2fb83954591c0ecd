//! The tagger: turns workload metadata into tags at three cardinalities (low, orchestrator,
//! high) plus the unified service tags, keeps them per entity and per source, and answers
//! lookups without locks or allocation.
//!
//! It subscribes to the store at `tagger` priority and acknowledges each bundle only once its
//! tags are stored. It does not talk to runtimes (collectors do) nor serve gRPC (the agent does).

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
