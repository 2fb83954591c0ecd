//! Tag cardinalities: how much detail a caller of the tagger wants.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How much detail a caller wants. Cumulative: `High` includes `Orchestrator`, which includes `Low`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TagCardinality {
    /// No tags.
    None,
    /// Tags shared by many workloads (image, namespace, deployment).
    Low,
    /// Plus tags of one orchestrator object (pod name, task ARN).
    Orchestrator,
    /// Plus tags of one container (container id and name).
    High,
}

impl TagCardinality {
    /// The name used in config and on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            TagCardinality::None => "none",
            TagCardinality::Low => "low",
            TagCardinality::Orchestrator => "orchestrator",
            TagCardinality::High => "high",
        }
    }
}

/// A cardinality name that is not one of `none`, `low`, `orchestrator`, `high`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tag cardinality {0:?}: expected none, low, orchestrator or high")]
pub struct UnknownCardinality(pub String);

impl FromStr for TagCardinality {
    type Err = UnknownCardinality;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "low" => Ok(Self::Low),
            "orchestrator" | "orch" => Ok(Self::Orchestrator),
            "high" => Ok(Self::High),
            other => Err(UnknownCardinality(other.to_owned())),
        }
    }
}

impl fmt::Display for TagCardinality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cardinality_reads_back_what_it_prints_and_a_wrong_name_is_an_error() {
        for c in [TagCardinality::None, TagCardinality::Low, TagCardinality::Orchestrator, TagCardinality::High] {
            assert_eq!(c.as_str().parse::<TagCardinality>(), Ok(c));
        }
        assert_eq!("orch".parse::<TagCardinality>(), Ok(TagCardinality::Orchestrator));
        let err = "medium".parse::<TagCardinality>().unwrap_err();
        assert_eq!(err.to_string(), "unknown tag cardinality \"medium\": expected none, low, orchestrator or high");
    }
}
