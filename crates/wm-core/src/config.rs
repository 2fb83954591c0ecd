//! Value types shared by the components' config structs (each crate owns its own struct, with
//! the Datadog key names): a port that is never 0, a duration given in whole seconds, and a
//! secret that is never shown; and the one switch every runtime's image collector reads. Their `expecting` texts are what the agent prints when a value is
//! of the wrong kind.

use std::fmt;
use std::num::NonZeroU16;
use std::time::Duration;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A TCP port, 1 to 65535: a config never falls back to 0 (an ephemeral port) by mistake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(NonZeroU16);

impl Port {
    /// Returns `port` as a `Port`, or `None` for 0.
    pub const fn new(port: u16) -> Option<Self> {
        match NonZeroU16::new(port) {
            Some(p) => Some(Self(p)),
            None => None,
        }
    }

    /// Returns `port` as a `Port`, for a literal such as a default.
    ///
    /// # Panics
    ///
    /// Panics when `port` is 0. Evaluated in a `const` item, that panic is a compile error
    /// instead, so a bad constant never reaches a running agent.
    pub const fn of(port: u16) -> Self {
        match Self::new(port) {
            Some(p) => p,
            None => panic!("a port constant is not 0"),
        }
    }

    /// Returns the port number.
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
    /// The longest duration a config value stands for: ten years.
    ///
    /// A larger value (`server_timeout: 18446744073709551615`) means "never" to whoever wrote
    /// it; clamping it here keeps `Instant::now() + duration` from overflowing, which panics.
    pub const MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

    /// Returns the value as a duration, at most [`Seconds::MAX`].
    pub const fn duration(self) -> Duration {
        if self.0 > Self::MAX.as_secs() { Self::MAX } else { Duration::from_secs(self.0) }
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

/// What a secret looks like wherever it is shown.
pub const REDACTED: &str = "********";

/// The name under which [`Secret`] deserializes, as a newtype struct.
///
/// A config reader that sees this name knows the value is a secret, and leaves it out of its
/// error messages (the agent's config loader does).
pub const SECRET_TYPE_NAME: &str = "wm_core::Secret";

/// A secret config value: a password, a client secret, a token.
///
/// `Debug`, `Display` and `Serialize` show it as [`REDACTED`] (an empty secret as `""`, which
/// hides nothing), so `agent config`, `/agent/config` and logs never carry it. Only
/// [`Secret::expose`] gives the text, to the code that sends it where it was configured to go.
/// Reading one accepts a string only: YAML reads an unquoted `client_secret: 0123` as the
/// number 123, and a secret silently changed would only show as a refusal from its server, which
/// the redaction would then hide. Quote it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Creates a secret holding `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// Returns the secret's text, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Tells whether the secret is empty (not configured).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn shown(&self) -> &'static str {
        if self.0.is_empty() { "" } else { REDACTED }
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.shown())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.shown())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.shown())
    }
}

struct SecretVisitor;

impl<'de> Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a secret (a string: quote a value YAML would read as a number or a boolean)")
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<Secret, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret::new(v))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret(v))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_newtype_struct(SECRET_TYPE_NAME, SecretVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_collected_by_default_and_the_older_key_decides_when_set() {
        let read = |json: &str| serde_json::from_str::<ImageCollectionConfig>(json).unwrap().collects();
        assert!(read("{}"));
        assert!(!read(r#"{"container_image.enabled": false}"#));
        assert!(read(r#"{"container_image.enabled": false, "container_image_collection.metadata.enabled": true}"#));
        assert!(!read(r#"{"container_image_collection.metadata.enabled": false}"#));
    }

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

    #[test]
    fn seconds_past_ten_years_are_clamped_so_adding_them_to_now_cannot_overflow() {
        let huge = Seconds(u64::MAX).duration();
        assert_eq!(huge, Seconds::MAX);
        assert!(std::time::Instant::now().checked_add(huge).is_some());
        assert_eq!(Seconds(30).duration(), Duration::from_secs(30));
    }

    #[test]
    fn a_secret_is_never_shown_and_reads_only_from_a_string() {
        let secret: Secret = serde_json::from_str("\"hunter2-very-secret\"").unwrap();
        assert_eq!(secret.expose(), "hunter2-very-secret");
        for shown in [format!("{secret:?}"), secret.to_string(), serde_json::to_string(&secret).unwrap()] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
        assert_eq!(serde_json::to_string(&Secret::default()).unwrap(), "\"\"");
        for not_text in ["1234", "true", "[1]"] {
            let e = serde_json::from_str::<Secret>(not_text).unwrap_err().to_string();
            assert!(e.contains("expected a secret (a string: quote"), "{not_text}: {e}");
        }
    }
}

/// Whether to collect images: the part of the agent config every runtime's image collector
/// (docker's, containerd's) reads.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageCollectionConfig {
    /// `container_image.enabled` (Datadog's key, default true, as in the Datadog Agent): list
    /// and follow the runtimes' images.
    #[serde(rename = "container_image.enabled")]
    pub enabled: bool,
    /// `container_image_collection.metadata.enabled`: the Datadog Agent's older key for the
    /// same switch; when set, it decides instead of `container_image.enabled`.
    #[serde(rename = "container_image_collection.metadata.enabled", skip_serializing_if = "Option::is_none")]
    pub metadata_enabled: Option<bool>,
}

impl Default for ImageCollectionConfig {
    fn default() -> Self {
        Self { enabled: true, metadata_enabled: None }
    }
}

impl ImageCollectionConfig {
    /// Tells whether the image collectors run: the older key when it is set, else
    /// `container_image.enabled`.
    pub fn collects(&self) -> bool {
        self.metadata_enabled.unwrap_or(self.enabled)
    }
}
