//! The workload-metadata store: it holds what each source reports about every entity, serves
//! the merged view of each entity, streams changes to subscribers in priority order, and runs the
//! collectors it was built with (detection, retries with backoff, pull timers).
//!
//! It does not talk to any runtime or orchestrator (the `wm-collector-*` crates do) and does not
//! make tags (the `tagger` crate does).
//!
//! Words these docs use in one sense only:
//! - A *source* ([`wm_core::Source`]) is the kind of system that reports an entity: the cluster
//!   orchestrator, the node orchestrator, the container runtime, or an upstream agent.
//! - A *version* is one source's copy of an entity. The store holds at most one per source.
//! - The *merged view* of an entity combines its versions field by field, in source precedence
//!   order ([`wm_core::merge`]). A subscriber follows either the merged view or the versions of
//!   one source.
//! - A *batch* is the events of one [`Store::notify`] call, one [`Store::reset`] call, or one
//!   message from a collector. Each subscriber receives a batch as at most one *bundle*
//!   ([`EventBundle`]).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use wm_core::{CollectorEvent, Container, Filter, Source, SubscriberPriority};
//! let store = wm_store::Store::new();
//! let mut sub = store.subscribe("example", SubscriberPriority::Normal, Filter::all());
//! let snapshot = sub.recv().await.unwrap().unwrap();
//! assert!(snapshot.events.is_empty());
//! store.notify(vec![CollectorEvent::set(Source::Runtime, Container { id: "c1".into(), ..Default::default() })]).await;
//! let bundle = sub.recv().await.unwrap().unwrap();
//! assert_eq!(bundle.events.len(), 1);
//! assert!(store.get_container("c1").is_some());
//! # }
//! ```

#![forbid(unsafe_code)]

mod appear;
mod runner;
mod state;
mod store;
mod subscriber;
mod telemetry;

pub use runner::{CollectorHealth, CollectorState};
pub use store::{DIRECT, Dump, DumpEntry, Health, SourceVersion, Store, StoreBuilder, StoreConfig};
pub use subscriber::{EventBundle, Events, Subscription, SubscriptionError, TryRecv};
pub use telemetry::{MetricSample, MetricValue};
