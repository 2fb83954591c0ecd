//! Counts where the tag store's bytes go, for the memory benchmark (feature
//! `memory-accounting`; the agent itself is built without it).

use std::collections::HashMap;

use wm_core::Id;

use super::{EntityTags, Record, TagStore};

/// Bytes of a [`TagStore`]'s parts (see [`TagStore::footprint`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Footprint {
    /// Each entity's record: its sources and which tags the merge leaves out.
    pub records: usize,
    /// The maps' entries (a key and a pointer to the record).
    pub entries: usize,
    /// The tags themselves: every source's own, and each shared part once.
    pub tags: usize,
    /// The text of keys the workload store does not share.
    pub keys: usize,
}

impl TagStore {
    /// Counts the store's bytes from its structures: payloads and entry sizes. The maps' spare
    /// capacity and the allocator's rounding are left out.
    pub fn footprint(&self) -> Footprint {
        const ARC: usize = 2 * std::mem::size_of::<usize>();
        let _writer = self.writer();
        let mut f = Footprint::default();
        // A part shared by several entities is counted once.
        let mut shared: HashMap<*const u8, usize> = HashMap::new();
        for (_, map) in self.maps() {
            let map = map.pin();
            f.entries += map.len() * std::mem::size_of::<(Id, Record)>();
            for (uid, record) in &map {
                f.records += record.own_bytes();
                f.tags += record.id().map_or(0, EntityTags::heap_bytes);
                for entry in record.sources() {
                    f.tags += entry.tags.heap_bytes();
                    for part in [&entry.shared.broad, &entry.shared.narrow].into_iter().flatten() {
                        shared.insert(part.addr(), part.heap_bytes());
                    }
                }
                // A key's text shared with the workload store is counted there.
                f.keys += if uid.is_shared() { 0 } else { ARC + uid.len() };
            }
        }
        f.tags += shared.values().sum::<usize>();
        f
    }
}
