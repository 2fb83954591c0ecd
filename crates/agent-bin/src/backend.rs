//! The data behind the HTTP API: a full agent's own store and tagger ([`Local`]), or the light
//! agent's copy of its upstream's tags (`RemoteTagger`, see [`crate::remote`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use tagger::Tagger;
use wm_core::Kind;
use wm_store::{MetricValue, Store};

use crate::report::{HealthReport, SourceEntry, TaggerList, WorkloadEntry, WorkloadList};

/// What the HTTP API reads to answer its routes, `/agent/status` included.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// Returns whether the agent is live and ready, and the state of each collector.
    fn health(&self) -> HealthReport;
    /// Returns every stored entity, with each source's version when `verbose`; `None` when this
    /// agent stores no workload metadata (the light agent).
    fn workload_list(&self, verbose: bool) -> Option<WorkloadList>;
    /// Returns every entity's tags, grouped by source.
    fn tagger_list(&self) -> TaggerList;
    /// Returns the agent's metrics in the Prometheus text format.
    fn metrics(&self) -> String;
    /// Returns the number of stored entities of each kind.
    fn entity_counts(&self) -> BTreeMap<String, usize>;
    /// Returns the number of entities that have tags.
    fn tagged_entities(&self) -> usize;
}

/// A full agent's own store and tagger.
#[derive(Clone, Debug)]
pub struct Local {
    /// The workload-metadata store.
    pub store: Store,
    /// The tagger that turns the store's entities into tags.
    pub tagger: Arc<Tagger>,
}

impl Backend for Local {
    fn health(&self) -> HealthReport {
        let health = self.store.health();
        HealthReport {
            live: health.store_alive,
            ready: health.is_ready(),
            collectors: health.collectors.iter().filter_map(|c| serde_json::to_value(c).ok()).collect(),
        }
    }

    fn workload_list(&self, verbose: bool) -> Option<WorkloadList> {
        let entities = self
            .store
            .dump(verbose)
            .entities
            .into_iter()
            .map(|e| {
                let entry = WorkloadEntry {
                    kind: e.id.kind.as_str().to_owned(),
                    id: e.id.id.to_string(),
                    sources: e.sources.iter().map(|s| s.as_str().to_owned()).collect(),
                    merged: e.merged,
                    per_source: e.per_source.map(|versions| {
                        versions
                            .into_iter()
                            .map(|v| SourceEntry {
                                source: v.source.as_str().to_owned(),
                                collector: v.collector,
                                entity: v.entity,
                            })
                            .collect()
                    }),
                };
                (e.id.to_string(), entry)
            })
            .collect();
        Some(WorkloadList { entities })
    }

    /// Returns, for every entity, each source's tags of all cardinalities in one sorted list
    /// without duplicates.
    fn tagger_list(&self) -> TaggerList {
        let entities = self
            .tagger
            .store()
            .list()
            .into_iter()
            .map(|(entity, sources)| {
                let sources = sources
                    .into_iter()
                    .map(|(source, info)| {
                        let mut tags: Vec<String> =
                            info.low.into_iter().chain(info.orchestrator).chain(info.high).collect();
                        tags.sort();
                        tags.dedup();
                        (source.as_str().to_owned(), tags)
                    })
                    .collect();
                (entity, sources)
            })
            .collect();
        TaggerList { entities }
    }

    /// Returns the store's telemetry, with `.` and `-` in names replaced by `_` as Prometheus
    /// requires, then `tagger_entities`, the tagger's refused fetches by reason, and
    /// `agent_tokio_tasks`.
    fn metrics(&self) -> String {
        let mut out = String::new();
        let mut declared = std::collections::HashSet::new();
        for sample in self.store.telemetry() {
            let name = sample.name.replace(['.', '-'], "_");
            let labels = if sample.labels.is_empty() {
                String::new()
            } else {
                let inner: Vec<String> = sample
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                    .collect();
                format!("{{{}}}", inner.join(","))
            };
            let kind = match sample.value {
                MetricValue::Counter(_) => "counter",
                MetricValue::Gauge(_) => "gauge",
                MetricValue::Summary { .. } => "summary",
            };
            if declared.insert(name.clone()) {
                let _ = writeln!(out, "# TYPE {name} {kind}");
            }
            match sample.value {
                MetricValue::Counter(n) => {
                    let _ = writeln!(out, "{name}{labels} {n}");
                }
                MetricValue::Gauge(v) => {
                    let _ = writeln!(out, "{name}{labels} {v}");
                }
                MetricValue::Summary { count, sum } => {
                    let _ = writeln!(out, "{name}_count{labels} {count}");
                    let _ = writeln!(out, "{name}_sum{labels} {sum}");
                }
            }
        }
        let _ = writeln!(out, "# TYPE tagger_entities gauge\ntagger_entities {}", self.tagger.store().len());
        let refused = self.tagger.fetches_refused();
        if !refused.is_empty() {
            let _ = writeln!(out, "# TYPE tagger_fetches_refused counter");
            for (reason, n) in refused {
                let _ = writeln!(out, "tagger_fetches_refused{{reason=\"{reason}\"}} {n}");
            }
        }
        // The runtime's live tasks. A task leaked on every reconnect or by every client would
        // show here as a count that keeps growing.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let _ = writeln!(
                out,
                "# TYPE agent_tokio_tasks gauge\nagent_tokio_tasks {}",
                runtime.metrics().num_alive_tasks()
            );
        }
        if let Some(live) = crate::heap_live_bytes() {
            let _ = writeln!(out, "# TYPE agent_heap_live_bytes gauge\nagent_heap_live_bytes {live}");
        }
        out
    }

    /// Returns the number of stored entities of each kind, kinds with none included.
    fn entity_counts(&self) -> BTreeMap<String, usize> {
        Kind::ALL
            .iter()
            .map(|kind| (kind.as_str().to_owned(), wm_core::StoreReader::list(&self.store, *kind).len()))
            .collect()
    }

    fn tagged_entities(&self) -> usize {
        self.tagger.store().len()
    }
}
