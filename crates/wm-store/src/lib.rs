//! The workload-metadata store: keeps each source's version of every entity and their merged
//! view, streams changes to subscribers in priority order, and runs the collectors it was built
//! with (detection, retries with backoff, pull timers).
//!
//! It does not talk to any runtime or orchestrator (the `wm-collector-*` crates do) and does not
//! make tags (the `tagger` crate does).
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

mod runner;
mod state;
mod store;
mod subscriber;
mod telemetry;

pub use runner::{CollectorHealth, CollectorState};
pub use store::{DIRECT, Dump, DumpEntry, Health, SourceVersion, Store, StoreBuilder, StoreConfig};
pub use subscriber::{EventBundle, Events, Subscription, SubscriptionError, TryRecv};
pub use telemetry::{MetricSample, MetricValue};
