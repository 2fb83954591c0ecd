//! The agent's configuration: one YAML file plus `DD_*` environment variables, with the Datadog
//! Agent's key names, read once into one typed [`AgentConfig`].
//!
//! Each component owns its part of the config: a serde struct whose field names are its keys,
//! with their defaults and docs. Here those are [`LogConfig`], [`IpcConfig`] and
//! [`CollectorsConfig`]; elsewhere `tagger::TaggerConfig` and each collector crate's config, read
//! by the collector's entry in [`crate::collectors::COLLECTORS`]. The file and the environment
//! together form one *layer* of raw values, and [`AgentConfig::section`] reads a component's
//! struct from it, asking the layer only for that struct's own keys.
//!
//! A key's environment variable is `DD_` followed by the key in upper case, dots becoming
//! underscores (`DD_PROCESS_CONFIG_REMOTE_WORKLOADMETA`); it overrides the file. Its text is
//! parsed as the field's type asks: a bool as Go's `strconv.ParseBool` reads it, a number, a list
//! separated by spaces or commas, a map as JSON.
//!
//! A value of the wrong kind makes the agent refuse the whole config, with an error naming the
//! key, the value, where it came from and what is expected. A file key that no component reads
//! only gives a warning naming it. Every key a component reads is recorded with its effective
//! value and origin (default, file or env), which `agent config` prints. A key of type
//! [`wm_core::Secret`] is shown as `********` there and in `/agent/config` (an empty one as `""`),
//! and an error about it names the key and the expected type but never the value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::{self, DeserializeOwned, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use wm_core::sync::MutexExt;
use wm_core::{Port, Seconds};

/// The config file read when none is given. Unlike a file given explicitly, it may be missing.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/wm-agent/agent.yaml";

/// Where a key's effective value came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The component's built-in default.
    Default,
    /// The config file at this path.
    File(PathBuf),
    /// The environment variable of this name.
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Env(var) => write!(f, "env {var}"),
        }
    }
}

/// Why the agent refuses its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file cannot be read. A missing default file is not an error.
    #[error("config: cannot read {path}: {source}")]
    Read {
        /// The file's path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not YAML, or its top level is not a mapping of keys to values.
    #[error("config: {path} is not a YAML mapping of keys to values: {reason}")]
    Syntax {
        /// The file's path.
        path: PathBuf,
        /// The YAML parser's message.
        reason: String,
    },
    /// A key has a value of the wrong kind.
    #[error("config: key `{key}` ({origin}) is {value}; expected {expected}")]
    Value {
        /// The key.
        key: String,
        /// Where the value came from.
        origin: Origin,
        /// The value as given, described in words (`the string "x"`), or a placeholder when the
        /// key holds a secret.
        value: String,
        /// What the key expects.
        expected: String,
    },
    /// A component refused its part for a reason other than one key's kind (its own check of
    /// the values, for example); the text says why.
    #[error("config: {0}")]
    Invalid(String),
}

/// One key's effective value and where it came from, as `agent config` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Setting {
    /// The value, as JSON; a secret's is redacted.
    pub value: Value,
    /// Where the value came from.
    pub origin: Origin,
}

/// The log level, from `log_level`: the least severe kind of message that is logged.
///
/// It is read ignoring case, and `warning` is accepted for `warn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything, with the finest detail.
    Trace,
    /// Debugging detail and above.
    Debug,
    /// Informational messages and above; the default.
    #[default]
    Info,
    /// Warnings and errors.
    Warn,
    /// Errors only.
    Error,
    /// Nothing.
    Off,
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LevelVisitor;
        impl Visitor<'_> for LevelVisitor {
            type Value = LogLevel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("one of trace, debug, info, warn, error, off")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LogLevel, E> {
                Ok(match v.to_ascii_lowercase().as_str() {
                    "trace" => LogLevel::Trace,
                    "debug" => LogLevel::Debug,
                    "info" => LogLevel::Info,
                    "warn" | "warning" => LogLevel::Warn,
                    "error" => LogLevel::Error,
                    "off" => LogLevel::Off,
                    _ => return Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                })
            }
        }
        deserializer.deserialize_str(LevelVisitor)
    }
}

/// The logging part of the config (keys of the agent's own).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `log_level` (default `info`): how much to log.
    pub log_level: LogLevel,
    /// `log_format_json`: one JSON object per line instead of text (default false).
    pub log_format_json: bool,
}

/// The IPC part of the config: where the gRPC and HTTP APIs listen, how they bound their
/// connections, and the files that secure them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IpcConfig {
    /// `cmd_host` (default `localhost`): the host the gRPC API and the CLI's API listen on. For
    /// the light agent or a follower, the host of its upstream instead.
    pub cmd_host: String,
    /// `cmd_port` (default 5001): the port of the gRPC API and the CLI's API. For the light agent
    /// or a follower, the port of its upstream instead.
    pub cmd_port: Port,
    /// `health_port` (default 5555): the probes' plain HTTP port.
    pub health_port: Port,
    /// `api_port` (ours, default 5010): the port on 127.0.0.1 where an agent with no gRPC server
    /// of its own, the light agent or a follower, serves the CLI's TLS API. `cmd_host` cannot
    /// give that address, because for such an agent it names the upstream. A full agent serves
    /// the CLI's API on `cmd_port`.
    pub api_port: Port,
    /// `health_host` (default `127.0.0.1`): the host the probes (`/live`, `/ready`, `/health`)
    /// listen on, in plain HTTP with no token. Nothing else is served there unless
    /// `metrics_public` is set.
    pub health_host: String,
    /// `metrics_public` (default false): whether the probes' port also serves `/metrics`,
    /// without a token, to any peer that reaches it.
    pub metrics_public: bool,
    /// `server_timeout` (Datadog's key, in seconds, default 30; at least 1 s is used): how long
    /// a TLS handshake may take, how long a client has to send a request's headers, and how long
    /// a TLS connection may go without an authenticated request. The probes' port also closes a
    /// connection idle that long; the TLS ports allow at least 120 s idle, for quiet gRPC streams.
    pub server_timeout: Seconds,
    /// `ipc_max_connections` (default 4096): the most connections open at once on each API port,
    /// lowered to fit the file-descriptor limit, but never below 16.
    pub ipc_max_connections: usize,
    /// `ipc_max_connections_per_peer` (ours, default 128): the most connections one peer address
    /// may have open at once on each API port (an IPv6 peer counts by its /64 network; 0 counts
    /// as 1). Every local process connects from 127.0.0.1, so all of them share this limit.
    pub ipc_max_connections_per_peer: usize,
    /// `container_proc_root` (Datadog's key, default `/proc`): where origin detection reads a
    /// process's cgroup (`<root>/<pid>/cgroup`). When the agent runs in a container, set it to
    /// where the host's `/proc` is mounted, such as `/host/proc`.
    pub container_proc_root: PathBuf,
    /// `container_cgroup_root` (Datadog's key, default `/sys/fs/cgroup`): where origin detection
    /// finds the cgroup v2 hierarchy (there or in `unified/` below it), whose inode numbers
    /// identify containers.
    pub container_cgroup_root: PathBuf,
    /// `auth_token_file_path` (default `auth_token` beside the config file, also when empty): the
    /// bearer token file. A full agent creates it, mode 0600, when it is missing; the light agent
    /// needs its upstream's.
    pub auth_token_file_path: Option<PathBuf>,
    /// `ipc_cert_file_path` (default `ipc_cert.pem` beside the token file, also when empty): the
    /// TLS certificate and key. A full agent creates it, mode 0600, when it is missing; the light
    /// agent needs its upstream's.
    pub ipc_cert_file_path: Option<PathBuf>,
}

impl Default for IpcConfig {
    fn default() -> Self {
        Self {
            cmd_host: "localhost".to_owned(),
            cmd_port: Port::of(5001),
            health_port: Port::of(5555),
            api_port: Port::of(5010),
            health_host: "127.0.0.1".to_owned(),
            metrics_public: false,
            server_timeout: Seconds(30),
            ipc_max_connections: 4096,
            ipc_max_connections_per_peer: 128,
            container_proc_root: PathBuf::from("/proc"),
            container_cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            auth_token_file_path: None,
            ipc_cert_file_path: None,
        }
    }
}

/// The part of the config that says which collectors run, and how often a collector looks again
/// for what it did not find.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorsConfig {
    /// `autoconfig_exclude_features` (Datadog's key): the collectors not to run, by feature name
    /// (`docker`, `containerd`, `podman`, `process`, `kubernetes`, `ecs`, `cloudfoundry`,
    /// `remote`), ignoring case. An excluded collector is not started, so it does not hold readiness back, and the
    /// tagger does not ask its runtime about unknown containers.
    pub autoconfig_exclude_features: Vec<String>,
    /// `collector_redetect_interval` (ours, in seconds, default 30): how often a collector whose
    /// runtime was not found (no socket yet), or that waits for something its config names, looks
    /// again.
    pub collector_redetect_interval: Seconds,
}

impl Default for CollectorsConfig {
    fn default() -> Self {
        Self { autoconfig_exclude_features: Vec::new(), collector_redetect_interval: Seconds(30) }
    }
}

impl CollectorsConfig {
    /// Tells whether `autoconfig_exclude_features` lists `feature`, ignoring case and spaces
    /// around the names.
    pub fn excludes(&self, feature: &str) -> bool {
        self.autoconfig_exclude_features.iter().any(|f| f.trim().eq_ignore_ascii_case(feature))
    }
}

/// The raw values: the file's top-level keys and the `DD_*` variables, before any component has
/// read them.
struct Layer {
    /// The config file, named in origins and errors.
    path: PathBuf,
    /// The file's top-level keys and their YAML values.
    file: BTreeMap<String, Value>,
    /// The `DD_*` variables, by name.
    env: BTreeMap<String, String>,
}

/// Shows the keys and variables given, never their values: the raw layer holds secrets before
/// any component has wrapped them in [`wm_core::Secret`].
impl fmt::Debug for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layer")
            .field("path", &self.path)
            .field("file_keys", &self.file.keys().collect::<Vec<_>>())
            .field("env_vars", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A raw value: a YAML value from the file, or the text of an environment variable.
#[derive(Clone, Copy)]
enum Raw<'a> {
    File(&'a Value),
    Env(&'a str),
}

impl Layer {
    /// Returns the raw value of `key` and its origin, or `None` when neither the environment nor
    /// the file gives one.
    ///
    /// The environment variable wins over the file. In the file, a dotted key
    /// (`process_config.remote_workloadmeta`) is looked up as written first, then nested, as the
    /// Datadog Agent does.
    fn lookup<'a>(&'a self, key: &str) -> Option<(Raw<'a>, Origin)> {
        let var = format!("DD_{}", key.replace('.', "_").to_ascii_uppercase());
        if let Some(text) = self.env.get(&var) {
            return Some((Raw::Env(text), Origin::Env(var)));
        }
        let found = self.file.get(key).or_else(|| {
            let mut parts = key.split('.');
            let first = self.file.get(parts.next()?)?;
            parts.try_fold(first, |v, part| v.as_object()?.get(part))
        })?;
        // A key left empty in YAML (`docker_host:`) reads as null. Treat it as not given, so that
        // the default stands.
        (!found.is_null()).then(|| (Raw::File(found), Origin::File(self.path.clone())))
    }
}

/// The effective configuration: every component's typed part, and which value of each key came
/// from where.
#[derive(Debug)]
pub struct AgentConfig {
    /// The config file's path. The default file may not exist; then only the defaults and the
    /// environment count.
    pub path: PathBuf,
    /// The logging part.
    pub log: LogConfig,
    /// The IPC part: where the APIs listen, and the files that secure them.
    pub ipc: IpcConfig,
    /// The tagger's part.
    pub tagger: tagger::TaggerConfig,
    /// Which collectors run.
    pub collectors: CollectorsConfig,
    /// Warnings about file keys that no component reads, to log once logging is set up.
    pub warnings: Vec<String>,
    /// The raw values that [`AgentConfig::section`] reads from.
    layer: Layer,
    /// Every key read so far, with its effective value and origin. It is behind a mutex because
    /// `section` takes `&self`: components read their parts from a shared config.
    read: Mutex<BTreeMap<String, Setting>>,
}

impl AgentConfig {
    /// Reads the file at `path` and the `DD_*` variables of `env`, then the agent's own parts:
    /// logging, IPC, the tagger and which collectors run.
    ///
    /// `path` `None` means the default path, which may be missing. The collectors' own parts are
    /// read by [`crate::load_config`], which is what callers use: the collectors' table depends on
    /// this module, not the other way round.
    ///
    /// # Errors
    ///
    /// Returns an error when the file cannot be read or parsed, or when one of these parts is
    /// refused.
    pub(crate) fn read(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let explicit = path.is_some();
        let path = path.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => None,
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let mut file = BTreeMap::new();
        if let Some(text) = text.filter(|t| !t.trim().is_empty()) {
            let options = serde_saphyr::options!(strict_booleans: true);
            let parsed: Option<BTreeMap<String, Value>> = serde_saphyr::from_str_with_options(&text, options)
                .map_err(|e| ConfigError::Syntax { path: path.clone(), reason: e.to_string() })?;
            file = parsed.unwrap_or_default();
        }
        let env = env.into_iter().filter(|(var, _)| var.starts_with("DD_")).collect();
        let layer = Layer { path: path.clone(), file, env };
        let mut config = Self {
            path,
            log: LogConfig::default(),
            ipc: IpcConfig::default(),
            tagger: tagger::TaggerConfig::default(),
            collectors: CollectorsConfig::default(),
            warnings: Vec::new(),
            layer,
            read: Mutex::new(BTreeMap::new()),
        };
        config.log = config.section()?;
        config.ipc = config.section()?;
        config.tagger = config.section()?;
        config.collectors = config.section()?;
        Ok(config)
    }

    /// Replaces [`AgentConfig::warnings`] with one warning per file key that no component has
    /// read. Call it once every component has read its part, or keys read later are reported too.
    pub(crate) fn note_unknown_keys(&mut self) {
        self.warnings = self.unknown_keys();
    }

    /// Reads one component's part of the config into `T`, and records every key of `T` with its
    /// effective value and origin, for `agent config`.
    ///
    /// The field names of `T` are the keys asked for. A key that neither the environment nor the
    /// file gives keeps the default that `T` declares with `#[serde(default)]`.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError::Value`] when a key's value is of the wrong kind, and
    /// [`ConfigError::Invalid`] when `T` refuses its part for another reason or cannot be
    /// serialized back for the record.
    pub fn section<T: DeserializeOwned + Serialize>(&self) -> Result<T, ConfigError> {
        let mut origins = BTreeMap::new();
        let value =
            T::deserialize(SectionDe { layer: &self.layer, origins: &mut origins }).map_err(DeError::into_config)?;
        let effective = serde_json::to_value(&value).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut read = self.read.locked();
        for (key, value) in effective.as_object().into_iter().flatten() {
            let origin = origins.remove(key).unwrap_or(Origin::Default);
            read.insert(key.clone(), Setting { value: value.clone(), origin });
        }
        Ok(value)
    }

    /// Returns every key the components have read so far, with its effective value and origin.
    pub fn settings(&self) -> BTreeMap<String, Setting> {
        self.read.locked().clone()
    }

    /// Returns a warning for each top-level file key that no component has read. A key counts as
    /// read when a component read it, or read a dotted key below it.
    fn unknown_keys(&self) -> Vec<String> {
        let read = self.read.locked();
        self.layer
            .file
            .keys()
            .filter(|key| {
                let nested = format!("{key}.");
                !read.contains_key(*key) && !read.keys().any(|k| k.starts_with(&nested))
            })
            .map(|key| {
                format!(
                    "config: unknown key `{key}` in {} (ignored: this build reads no such key)",
                    self.path.display()
                )
            })
            .collect()
    }

    /// Returns the path of the auth token file: `auth_token_file_path` when it is set and not
    /// empty, else `auth_token` beside the config file.
    pub fn auth_token_path(&self) -> PathBuf {
        match &self.ipc.auth_token_file_path {
            Some(path) if !path.as_os_str().is_empty() => path.clone(),
            _ => self.path.parent().unwrap_or(Path::new(".")).join("auth_token"),
        }
    }

    /// Returns the path of the IPC certificate file: `ipc_cert_file_path` when it is set and not
    /// empty, else `ipc_cert.pem` beside the auth token file.
    pub fn ipc_cert_path(&self) -> PathBuf {
        match &self.ipc.ipc_cert_file_path {
            Some(path) if !path.as_os_str().is_empty() => path.clone(),
            _ => self.auth_token_path().parent().unwrap_or(Path::new(".")).join("ipc_cert.pem"),
        }
    }

    /// Returns the filter that decides which env vars of a container the collectors keep: the
    /// ones the tag rules read, and the names that `container_env_as_tags` and
    /// `docker_env_as_tags` map.
    pub fn env_filter(&self) -> wm_core::EnvFilter {
        wm_core::EnvFilter::new(self.tagger.env_as_tags_keys())
    }

    /// Formats `settings` as `agent config` prints them: one `key: value  # origin` line per
    /// key, in key order.
    pub fn render(settings: &BTreeMap<String, Setting>) -> String {
        let mut out = String::new();
        for (key, setting) in settings {
            out.push_str(&format!("{key}: {}  # {}\n", setting.value, setting.origin));
        }
        out
    }
}

// ---- Reading a component's struct from the layer: two serde deserializers over raw values ----

/// The error of reading a section: a key's value of the wrong kind, or any other message from
/// serde or the component. serde needs an error type of the deserializer's own; it becomes a
/// [`ConfigError`] once the section is read.
#[derive(Debug)]
enum DeError {
    Value { key: String, origin: Origin, value: String, expected: String },
    Custom(String),
}

impl DeError {
    /// Converts it into the public error type.
    fn into_config(self) -> ConfigError {
        match self {
            DeError::Value { key, origin, value, expected } => ConfigError::Value { key, origin, value, expected },
            DeError::Custom(message) => ConfigError::Invalid(message),
        }
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeError::Value { key, value, expected, .. } => write!(f, "`{key}` is {value}; expected {expected}"),
            DeError::Custom(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::Custom(msg.to_string())
    }
}

/// Reads a component's struct from the layer, by offering it as a map of those of its fields
/// that the layer has a value for. Each value's origin is noted in `origins`.
struct SectionDe<'a> {
    layer: &'a Layer,
    origins: &'a mut BTreeMap<String, Origin>,
}

impl<'de> Deserializer<'de> for SectionDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, DeError> {
        Err(DeError::Custom("a config section must be a struct with named fields".into()))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let present: Vec<(&'static str, Raw<'de>, Origin)> =
            fields.iter().filter_map(|key| self.layer.lookup(key).map(|(raw, origin)| (*key, raw, origin))).collect();
        for (key, _, origin) in &present {
            self.origins.insert((*key).to_owned(), origin.clone());
        }
        visitor.visit_map(SectionMap { present: present.into_iter(), pending: None })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// The map that `SectionDe` offers: the fields the layer has, each key followed by its value.
struct SectionMap<'de> {
    /// The entries not given yet.
    present: std::vec::IntoIter<(&'static str, Raw<'de>, Origin)>,
    /// The entry whose key was just given, waiting for its value to be asked for.
    pending: Option<(&'static str, Raw<'de>, Origin)>,
}

impl<'de> MapAccess<'de> for SectionMap<'de> {
    type Error = DeError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DeError> {
        let Some(next) = self.present.next() else { return Ok(None) };
        let key = next.0;
        self.pending = Some(next);
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (key, raw, origin) =
            self.pending.take().ok_or_else(|| DeError::Custom("a value without its key".into()))?;
        seed.deserialize(RawDe { key, raw, origin, secret: false })
    }
}

/// Reads one key's raw value as the field's type asks: a file value through `serde_json`, an
/// environment variable's text parsed by the kind of value wanted.
struct RawDe<'de> {
    key: &'static str,
    raw: Raw<'de>,
    origin: Origin,
    /// Whether the value is, or is inside, a [`wm_core::Secret`]: an error then names the key
    /// and what is expected, never the value.
    secret: bool,
}

/// Displays what a serde visitor expects, in the visitor's own words (its `expecting` method).
struct Expecting<'a, V>(&'a V);

impl<'de, V: Visitor<'de>> fmt::Display for Expecting<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }
}

/// Describes a YAML value for an error message: its kind, then the value.
fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {s:?}"),
        Value::Null => "empty (null)".into(),
        Value::Bool(_) => format!("the boolean {value}"),
        Value::Number(_) => format!("the number {value}"),
        Value::Array(_) => format!("the list {value}"),
        Value::Object(_) => format!("the map {value}"),
    }
}

/// Parses a boolean environment value as Go's `strconv.ParseBool` does, which is how the Datadog
/// Agent reads them.
fn env_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

impl<'de> RawDe<'de> {
    /// Builds the wrong-kind error for this key.
    ///
    /// `cause` is serde's message, if there is one; its `expected …` part, when it has one, is
    /// more precise than `expected`, the visitor's own words, which are used otherwise.
    fn mismatch(&self, cause: Option<&str>, expected: String) -> DeError {
        let expected = cause.and_then(|c| c.rsplit_once(", expected ").map(|(_, e)| e.to_owned())).unwrap_or(expected);
        // serde says only "a boolean"; also name the values to write.
        let expected = if expected == "a boolean" { "a boolean (true or false)".to_owned() } else { expected };
        let value = match self.raw {
            _ if self.secret => "a value not shown (the key holds a secret)".to_owned(),
            Raw::File(v) => describe(v),
            Raw::Env(text) => format!("the text {text:?}"),
        };
        DeError::Value { key: self.key.to_owned(), origin: self.origin.clone(), value, expected }
    }

    /// Reads a file value with `read`, turning a mismatch into the wrong-kind error for this key.
    fn file<V: Visitor<'de>>(
        &self,
        value: &'de Value,
        visitor: V,
        read: impl FnOnce(&'de Value, V) -> Result<V::Value, serde_json::Error>,
    ) -> Result<V::Value, DeError> {
        let expected = Expecting(&visitor).to_string();
        read(value, visitor).map_err(|e| self.mismatch(Some(&e.to_string()), expected))
    }

    /// Reads an environment value as JSON (a map is given that way), turning text that is not
    /// JSON, or a mismatch, into the wrong-kind error for this key.
    fn json<V: Visitor<'de>>(
        &self,
        text: &str,
        visitor: V,
        read: impl FnOnce(Value, V) -> Result<V::Value, serde_json::Error>,
    ) -> Result<V::Value, DeError> {
        let expected = Expecting(&visitor).to_string();
        let Ok(value) = serde_json::from_str::<Value>(text) else { return Err(self.mismatch(None, expected)) };
        read(value, visitor).map_err(|e| self.mismatch(Some(&e.to_string()), expected))
    }

    /// Reads an environment value as a number: as an unsigned integer, else a signed one, else a
    /// float, whichever parses first.
    fn env_number<V: Visitor<'de>>(&self, text: &str, visitor: V) -> Result<V::Value, DeError> {
        let expected = Expecting(&visitor).to_string();
        let text = text.trim();
        let result = if let Ok(n) = text.parse::<u64>() {
            visitor.visit_u64::<DeError>(n)
        } else if let Ok(n) = text.parse::<i64>() {
            visitor.visit_i64::<DeError>(n)
        } else if let Ok(n) = text.parse::<f64>() {
            visitor.visit_f64::<DeError>(n)
        } else {
            return Err(self.mismatch(None, expected));
        };
        result.map_err(|e| self.mismatch(Some(&e.to_string()), expected))
    }
}

// Writes the `deserialize_*` methods that differ only in how an environment value is read: as
// text, as a number, or as JSON. A file value is always read through `serde_json`.
macro_rules! by_kind {
    ($($method:ident => $env:ident;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
                match self.raw {
                    Raw::File(value) => self.file(value, visitor, |v, vis| v.$method(vis)),
                    Raw::Env(text) => by_kind!(@env $env, self, text, visitor, $method),
                }
            }
        )*
    };
    (@env number, $self:ident, $text:ident, $visitor:ident, $method:ident) => { $self.env_number($text, $visitor) };
    (@env text, $self:ident, $text:ident, $visitor:ident, $method:ident) => {{
        let expected = Expecting(&$visitor).to_string();
        $visitor.visit_str::<DeError>($text).map_err(|e| $self.mismatch(Some(&e.to_string()), expected))
    }};
    (@env json, $self:ident, $text:ident, $visitor:ident, $method:ident) => { $self.json($text, $visitor, |v, vis| v.$method(vis)) };
}

impl<'de> Deserializer<'de> for RawDe<'de> {
    type Error = DeError;

    by_kind! {
        deserialize_any => text;
        deserialize_str => text;
        deserialize_string => text;
        deserialize_identifier => text;
        deserialize_char => text;
        deserialize_i8 => number;
        deserialize_i16 => number;
        deserialize_i32 => number;
        deserialize_i64 => number;
        deserialize_u8 => number;
        deserialize_u16 => number;
        deserialize_u32 => number;
        deserialize_u64 => number;
        deserialize_f32 => number;
        deserialize_f64 => number;
        deserialize_map => json;
        deserialize_bytes => json;
        deserialize_byte_buf => json;
        deserialize_unit => json;
        deserialize_ignored_any => text;
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.raw {
            Raw::File(value) => self.file(value, visitor, |v, vis| v.deserialize_bool(vis)),
            Raw::Env(text) => {
                let expected = Expecting(&visitor).to_string();
                match env_bool(text.trim()) {
                    Some(b) => visitor.visit_bool(b),
                    None => Err(self.mismatch(None, expected)),
                }
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // An empty environment variable leaves an `Option` field without a value.
        match self.raw {
            Raw::Env("") => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, DeError> {
        // `Secret` deserializes as a newtype of this name: note it, so that an error about what is
        // inside never shows the value.
        let secret = self.secret || name == wm_core::config::SECRET_TYPE_NAME;
        visitor.visit_newtype_struct(RawDe { secret, ..self })
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.raw {
            Raw::File(value) => self.file(value, visitor, |v, vis| v.deserialize_seq(vis)),
            // A list in the environment: words separated by spaces or commas.
            Raw::Env(text) => {
                let (key, origin, secret) = (self.key, self.origin, self.secret);
                let items = text.split([' ', ',']).filter(|s| !s.is_empty()).map(move |item| RawDe {
                    key,
                    raw: Raw::Env(item),
                    origin: origin.clone(),
                    secret,
                });
                visitor.visit_seq(de::value::SeqDeserializer::new(items))
            }
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match self.raw {
            Raw::File(value) => self.file(value, visitor, |v, vis| v.deserialize_enum(name, variants, vis)),
            Raw::Env(text) => {
                let expected = Expecting(&visitor).to_string();
                visitor
                    .visit_enum(de::value::StrDeserializer::<DeError>::new(text))
                    .map_err(|e| self.mismatch(Some(&e.to_string()), expected))
            }
        }
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_u64(visitor)
    }
}

impl<'de> IntoDeserializer<'de, DeError> for RawDe<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

#[cfg(test)]
mod tests;
