//! The remote tagger of `flavor-light`: [`RemoteTagger`] (in `wm-ipc`, shared with the Python
//! `tagger` module) served as the HTTP API's [`Backend`].

use std::collections::BTreeMap;

pub use wm_ipc::replica::RemoteTagger;

use crate::backend::Backend;
use crate::report::{HealthReport, TaggerList, WorkloadList};

impl Backend for RemoteTagger {
    /// Live; ready while a stream is up (its snapshot arrived and it has not ended).
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

    fn workload_list(&self, _verbose: bool) -> Option<WorkloadList> {
        None
    }

    fn tagger_list(&self) -> TaggerList {
        let entities = self
            .list()
            .into_iter()
            .map(|(entity, tags)| (entity, [("remote".to_owned(), tags)].into_iter().collect()))
            .collect();
        TaggerList { entities }
    }

    fn metrics(&self) -> String {
        format!(
            "# TYPE tagger_entities gauge\ntagger_entities {}\n# TYPE remote_tagger_streams counter\nremote_tagger_streams {}\n",
            self.entities().len(),
            self.streams()
        )
    }

    fn entity_counts(&self) -> BTreeMap<String, usize> {
        BTreeMap::new()
    }

    fn tagged_entities(&self) -> usize {
        self.entities().len()
    }
}
