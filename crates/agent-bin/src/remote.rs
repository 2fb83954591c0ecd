//! Serves the light agent's copy of its upstream's tags through the HTTP API.
//!
//! [`RemoteTagger`] lives in `wm-ipc`, because the Python `tagger` module uses it too. This module
//! re-exports it and implements [`Backend`] for it, so that the HTTP API and `agent status` read
//! the light agent the same way as a full agent's store and tagger.

use std::collections::BTreeMap;

pub use wm_ipc::replica::RemoteTagger;

use crate::backend::Backend;
use crate::report::{HealthReport, TaggerList, WorkloadList};

impl Backend for RemoteTagger {
    /// Reports the light agent as always live, and as ready while a stream to the upstream is up
    /// (its first response has arrived and it has not ended).
    ///
    /// The report lists one collector, `remote-tagger`: `running` while a stream is up, else
    /// `retrying` with the last error; `synced` once any stream has been opened.
    fn health(&self) -> HealthReport {
        let connected = self.is_connected();
        let mut collector = serde_json::json!({
            "name": "remote-tagger",
            "source": "remote",
            "state": if connected { "running" } else { "retrying" },
            "synced": self.streams() > 0,
        });
        if let Some(error) = self.last_error() {
            collector["error"] = serde_json::Value::String(error);
        }
        HealthReport { live: true, ready: connected, collectors: vec![collector] }
    }

    /// Returns `None`: the light agent stores no workload metadata.
    fn workload_list(&self, _verbose: bool) -> Option<WorkloadList> {
        None
    }

    /// Returns every entity's tags under one source, `remote`: the upstream's stream does not say
    /// which source gave which tag.
    fn tagger_list(&self) -> TaggerList {
        let entities = self
            .list()
            .into_iter()
            .map(|(entity, tags)| (entity, [("remote".to_owned(), tags)].into_iter().collect()))
            .collect();
        TaggerList { entities }
    }

    /// Returns two series: `tagger_entities`, the entities in the copy, and
    /// `remote_tagger_streams`, the streams opened so far (each reconnect opens one more).
    fn metrics(&self) -> String {
        format!(
            "# TYPE tagger_entities gauge\ntagger_entities {}\n# TYPE remote_tagger_streams counter\nremote_tagger_streams {}\n",
            self.entities().len(),
            self.streams()
        )
    }

    /// Returns an empty map: the light agent stores no workload entities.
    fn entity_counts(&self) -> BTreeMap<String, usize> {
        BTreeMap::new()
    }

    /// Returns the number of entities in the copy.
    fn tagged_entities(&self) -> usize {
        self.entities().len()
    }
}
