//! Where the served metadata and tags come from: this agent's own store and tagger
//! ([`Local`]), or a replica of another agent's tags (`RemoteTagger`, in `flavor-light`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use tagger::Tagger;
use wm_core::Kind;
use wm_store::{MetricValue, Store};

use crate::report::{HealthReport, SourceEntry, TaggerList, WorkloadEntry, WorkloadList};

/// What the HTTP API (and `agent status`) reads.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// Liveness, readiness and each collector.
    fn health(&self) -> HealthReport;
    /// The stored entities; `None` when this agent keeps no workload metadata of its own.
    fn workload_list(&self, verbose: bool) -> Option<WorkloadList>;
    /// Every entity's tags, per source.
    fn tagger_list(&self) -> TaggerList;
    /// Prometheus text exposition.
    fn metrics(&self) -> String;
    /// Stored entities by kind.
    fn entity_counts(&self) -> BTreeMap<String, usize>;
    /// Entities with tags.
    fn tagged_entities(&self) -> usize;
}

/// This agent's own store and tagger.
#[derive(Clone, Debug)]
pub struct Local {
    /// The store.
    pub store: Store,
    /// The tagger.
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
        // The runtime's live tasks: a task leaked per reconnect or per client shows here.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let _ = writeln!(
                out,
                "# TYPE agent_tokio_tasks gauge\nagent_tokio_tasks {}",
                runtime.metrics().num_alive_tasks()
            );
        }
        out
    }

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
