//! Tags, and what one source says about one entity. The cardinalities are wm-core's,
//! re-exported here.

use serde::Serialize;
pub use wm_core::{TagCardinality, UnknownCardinality};

/// Returns the key of a tag: what comes before the first `:` (the whole tag when there is none).
pub fn tag_key(tag: &str) -> &str {
    tag.split_once(':').map_or(tag, |(k, _)| k)
}

/// Holds the tags one source gives one entity, one list per level.
///
/// The `add*` methods add a tag once per level, however often they are called with it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TagInfo {
    /// Low cardinality.
    pub low: Vec<String>,
    /// Orchestrator cardinality.
    pub orchestrator: Vec<String>,
    /// High cardinality.
    pub high: Vec<String>,
    /// The unified service tags (`env`, `service`, `version`), which are also in `low`.
    pub standard: Vec<String>,
}

impl TagInfo {
    /// Adds the tag `key:value` at `cardinality`, unless that level has it already.
    ///
    /// An empty key or value adds nothing, and so does `TagCardinality::None`.
    pub fn add(&mut self, cardinality: TagCardinality, key: &str, value: &str) {
        if key.is_empty() || value.is_empty() {
            return;
        }
        self.add_tag(cardinality, format!("{key}:{value}"));
    }

    /// Adds a whole tag at `cardinality`, unless it is empty or that level has it already.
    ///
    /// `TagCardinality::None` adds nothing.
    pub fn add_tag(&mut self, cardinality: TagCardinality, tag: String) {
        let level = match cardinality {
            TagCardinality::None => return,
            TagCardinality::Low => &mut self.low,
            TagCardinality::Orchestrator => &mut self.orchestrator,
            TagCardinality::High => &mut self.high,
        };
        if !tag.is_empty() && !level.contains(&tag) {
            level.push(tag);
        }
    }

    /// Adds a unified service tag (`env`, `service` or `version`) to both `standard` and `low`.
    ///
    /// An empty value adds nothing.
    pub fn add_standard(&mut self, key: &str, value: &str) {
        if value.is_empty() {
            return;
        }
        let tag = format!("{key}:{value}");
        if !self.standard.contains(&tag) {
            self.standard.push(tag.clone());
        }
        self.add_tag(TagCardinality::Low, tag);
    }

    /// Adds a tag whose name comes from an `*_as_tags` map: low cardinality, or high when the
    /// name starts with `+` (the `+` is not part of the tag).
    pub fn add_auto(&mut self, name: &str, value: &str) {
        match name.strip_prefix('+') {
            Some(name) => self.add(TagCardinality::High, name, value),
            None => self.add(TagCardinality::Low, name, value),
        }
    }

    /// Adds every tag of `other` after this one's, level by level, skipping tags already there.
    pub fn append(&mut self, other: TagInfo) {
        for (level, tags) in [
            (TagCardinality::Low, other.low),
            (TagCardinality::Orchestrator, other.orchestrator),
            (TagCardinality::High, other.high),
        ] {
            for tag in tags {
                self.add_tag(level, tag);
            }
        }
        for tag in other.standard {
            if !self.standard.contains(&tag) {
                self.standard.push(tag);
            }
        }
    }

    /// Tells whether it holds no tag.
    pub fn is_empty(&self) -> bool {
        self.low.is_empty() && self.orchestrator.is_empty() && self.high.is_empty() && self.standard.is_empty()
    }

    /// Returns a copy of every tag at `cardinality` and below, lowest level first.
    pub fn up_to(&self, cardinality: TagCardinality) -> Vec<String> {
        let mut out = Vec::new();
        if cardinality >= TagCardinality::Low {
            out.extend(self.low.iter().cloned());
        }
        if cardinality >= TagCardinality::Orchestrator {
            out.extend(self.orchestrator.iter().cloned());
        }
        if cardinality >= TagCardinality::High {
            out.extend(self.high.iter().cloned());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_prefixed_names_are_high_and_duplicates_are_added_once() {
        let mut t = TagInfo::default();
        t.add_auto("team", "a");
        t.add_auto("+tier", "b");
        t.add_auto("team", "a");
        t.add_auto("empty", "");
        t.add_standard("env", "prod");
        assert_eq!(t.low, ["team:a", "env:prod"]);
        assert_eq!(t.high, ["tier:b"]);
        assert_eq!(t.standard, ["env:prod"]);
    }

    #[test]
    fn cardinalities_parse_and_order() {
        assert_eq!("orchestrator".parse::<TagCardinality>(), Ok(TagCardinality::Orchestrator));
        assert!("medium".parse::<TagCardinality>().is_err());
        assert!(TagCardinality::High > TagCardinality::Orchestrator && TagCardinality::Low > TagCardinality::None);
        assert_eq!(tag_key("image_name:nginx:1"), "image_name");
        assert_eq!(tag_key("bare"), "bare");
    }
}
