//! Tags and what one source says about one entity; the cardinalities are wm-core's, re-exported.

use serde::Serialize;
pub use wm_core::{TagCardinality, UnknownCardinality};

/// The key of a tag: what comes before the first `:` (the whole tag when there is none).
pub fn tag_key(tag: &str) -> &str {
    tag.split_once(':').map_or(tag, |(k, _)| k)
}

/// The tags one source gives one entity, by the level at which each was added.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TagInfo {
    /// Low cardinality.
    pub low: Vec<String>,
    /// Orchestrator cardinality.
    pub orchestrator: Vec<String>,
    /// High cardinality.
    pub high: Vec<String>,
    /// The unified service tags (env, service, version): also in `low`.
    pub standard: Vec<String>,
}

impl TagInfo {
    /// Adds `key:value` at `cardinality`, once; an empty key or value adds nothing.
    pub fn add(&mut self, cardinality: TagCardinality, key: &str, value: &str) {
        if key.is_empty() || value.is_empty() {
            return;
        }
        self.add_tag(cardinality, format!("{key}:{value}"));
    }

    /// Adds a whole tag at `cardinality`, once.
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

    /// Adds a unified service tag (`env`, `service`, `version`): low and standard.
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

    /// Adds a tag named as in `*_as_tags` config: a leading `+` means high cardinality.
    pub fn add_auto(&mut self, name: &str, value: &str) {
        match name.strip_prefix('+') {
            Some(name) => self.add(TagCardinality::High, name, value),
            None => self.add(TagCardinality::Low, name, value),
        }
    }

    /// Adds every tag of `other` after its own, level by level, each once.
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

    /// Whether it holds no tag.
    pub fn is_empty(&self) -> bool {
        self.low.is_empty() && self.orchestrator.is_empty() && self.high.is_empty() && self.standard.is_empty()
    }

    /// Every tag at `cardinality` and below.
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
