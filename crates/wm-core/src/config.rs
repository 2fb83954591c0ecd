//! Value types shared by the components' config structs (each crate owns its own struct, with
//! the Datadog key names): a port that is never 0, and a duration given in whole seconds. Their
//! `expecting` texts are what the agent prints when a value is of the wrong kind.

use std::fmt;
use std::num::NonZeroU16;
use std::time::Duration;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A TCP port, 1 to 65535: a config never falls back to 0 (an ephemeral port) by mistake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(NonZeroU16);

impl Port {
    /// `port`, or `None` for 0.
    pub const fn new(port: u16) -> Option<Self> {
        match NonZeroU16::new(port) {
            Some(p) => Some(Self(p)),
            None => None,
        }
    }

    /// `port` as a constant (a default): 0 fails the build of that constant, never a run.
    pub const fn of(port: u16) -> Self {
        match Self::new(port) {
            Some(p) => p,
            None => panic!("a port constant is not 0"),
        }
    }

    /// The port number.
    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.get())
    }
}

struct PortVisitor;

impl Visitor<'_> for PortVisitor {
    type Value = Port;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port number (1-65535)")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
        u16::try_from(v).ok().and_then(Port::new).ok_or_else(|| E::invalid_value(Unexpected::Unsigned(v), &self))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
        u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self)).and_then(|v| self.visit_u64(v))
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_u64(PortVisitor)
    }
}

/// A duration given in whole seconds (`tagger_deletion_grace_period: 300`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Seconds(pub u64);

impl Seconds {
    /// As a duration.
    pub const fn duration(self) -> Duration {
        Duration::from_secs(self.0)
    }
}

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

struct SecondsVisitor;

impl Visitor<'_> for SecondsVisitor {
    type Value = Seconds;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number of seconds (0 or more)")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
        Ok(Seconds(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
        u64::try_from(v).map(Seconds).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_u64(SecondsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_never_zero_and_says_what_it_expects() {
        assert_eq!(serde_json::from_str::<Port>("5001").ok().map(Port::get), Some(5001));
        for bad in ["0", "70000", "-1", "\"5001\""] {
            let e = serde_json::from_str::<Port>(bad).unwrap_err().to_string();
            assert!(e.contains("expected a port number (1-65535)"), "{bad}: {e}");
        }
        assert_eq!(serde_json::to_string(&Port::new(80)).ok().as_deref(), Some("80"));
        assert!(Port::new(0).is_none());
    }

    #[test]
    fn seconds_are_whole_and_not_negative() {
        assert_eq!(serde_json::from_str::<Seconds>("300").ok().map(Seconds::duration), Some(Duration::from_secs(300)));
        let e = serde_json::from_str::<Seconds>("-5").unwrap_err().to_string();
        assert!(e.contains("expected a whole number of seconds"), "{e}");
    }
}
