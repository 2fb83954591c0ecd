//! The agent's configuration: one YAML file plus `DD_*` environment overrides, with the Datadog
//! key names, read once into one typed [`AgentConfig`].
//!
//! Each component owns its part as a serde struct whose field names are its keys, with their
//! defaults and docs: [`LogConfig`] and [`IpcConfig`] here, `tagger::TaggerConfig`, and each
//! collector crate's config (read by its line in the collectors' table). The file and
//! the environment form one layer; [`AgentConfig::section`] reads a component's struct from it,
//! asking the layer only for that struct's own keys. An environment value is parsed as the
//! field's type asks (a bool, a port, a list separated by spaces or commas, a map as JSON). A
//! value of the wrong kind refuses start-up naming the key, the value, where it came from and
//! what is expected; a file key no component reads is a warning naming it. Every key a component
//! read keeps its effective value and origin (default, file, env), which `agent config` prints.
//! A key of type [`wm_core::Secret`] is shown as `********` there and in `/agent/config`, and an
//! error about it names the key and the expected type but never the value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::{self, DeserializeOwned, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use wm_core::sync::MutexExt;
use wm_core::{Port, Seconds};

/// The default config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/wm-agent/agent.yaml";

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The built-in default.
    Default,
    /// The config file.
    File(PathBuf),
    /// An environment variable.
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

/// A configuration the agent refuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("config: cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not YAML, or not a mapping.
    #[error("config: {path} is not a YAML mapping of keys to values: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A value of the wrong kind.
    #[error("config: key `{key}` ({origin}) is {value}; expected {expected}")]
    Value {
        /// The key.
        key: String,
        /// Where the value came from.
        origin: Origin,
        /// The value as given.
        value: String,
        /// What is expected.
        expected: String,
    },
    /// A component refused its part as a whole.
    #[error("config: {0}")]
    Invalid(String),
}

/// One key's effective value.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Setting {
    /// The value.
    pub value: Value,
    /// Where it came from.
    pub origin: Origin,
}

/// The log level (`log_level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Debugging detail.
    Debug,
    /// The default.
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

/// Logging (the agent's own keys).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `log_level` (default info).
    pub log_level: LogLevel,
    /// `log_format_json`: one JSON object per line instead of text (default false).
    pub log_format_json: bool,
}

/// The IPC server's part: where the gRPC and HTTP APIs listen and the files that secure them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IpcConfig {
    /// `cmd_host`: the gRPC API's address (default localhost).
    pub cmd_host: String,
    /// `cmd_port`: the gRPC API's port (default 5001).
    pub cmd_port: Port,
    /// `health_port`: the probes' plain HTTP port (default 5555).
    pub health_port: Port,
    /// `api_port` (ours, default 5010): where an agent with no gRPC server of its own (the
    /// light agent, or one that follows another with `process_config.remote_workloadmeta`)
    /// serves the CLI's TLS API, on 127.0.0.1 (its `cmd_host` names the upstream). An agent
    /// that serves gRPC serves that API on `cmd_port`.
    pub api_port: Port,
    /// `health_host` (default 127.0.0.1): where the probes listen (`/live`, `/ready`,
    /// `/health`): plain HTTP with no token, nothing else served there.
    pub health_host: String,
    /// `metrics_public` (default false): serve `/metrics` on the probes' port too, without the
    /// token, to any peer that reaches it.
    pub metrics_public: bool,
    /// `server_timeout` (Datadog's key, seconds, default 30): the TLS handshake and request
    /// headers must come within it, and an HTTP connection idle that long is closed.
    pub server_timeout: Seconds,
    /// `ipc_max_connections` (default 4096): open connections per API port at most (lowered to
    /// fit the file-descriptor limit).
    pub ipc_max_connections: usize,
    /// `ipc_max_connections_per_peer` (ours, default 128): open connections of one peer address
    /// per API port at most (an IPv6 peer counts by its /64). Every local process connects from
    /// 127.0.0.1, so this is also what all of them share.
    pub ipc_max_connections_per_peer: usize,
    /// `container_proc_root` (Datadog's key, default `/proc`; `/host/proc` when the agent runs
    /// in a container): where origin detection reads a process's cgroup.
    pub container_proc_root: PathBuf,
    /// `container_cgroup_root` (Datadog's key, default `/sys/fs/cgroup`): where origin detection
    /// finds the cgroup v2 hierarchy whose inodes identify containers.
    pub container_cgroup_root: PathBuf,
    /// `auth_token_file_path`: the bearer token file (default `auth_token` beside the config
    /// file); created 0600 at first start.
    pub auth_token_file_path: Option<PathBuf>,
    /// `ipc_cert_file_path`: the TLS certificate and key (default `ipc_cert.pem` beside the
    /// token); created 0600 at first start.
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

/// Which collectors run and how an absent runtime is looked for again.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorsConfig {
    /// `autoconfig_exclude_features` (Datadog's key): features never collected, by name
    /// (`docker`, `containerd`, `podman`, `kubernetes`; case-insensitive). An excluded
    /// collector is not started and does not hold readiness back.
    pub autoconfig_exclude_features: Vec<String>,
    /// `collector_redetect_interval` (ours, default 30 s): how often a collector whose runtime
    /// is absent (no socket yet) looks again.
    pub collector_redetect_interval: Seconds,
}

impl Default for CollectorsConfig {
    fn default() -> Self {
        Self { autoconfig_exclude_features: Vec::new(), collector_redetect_interval: Seconds(30) }
    }
}

impl CollectorsConfig {
    /// Whether `feature` is excluded.
    pub fn excludes(&self, feature: &str) -> bool {
        self.autoconfig_exclude_features.iter().any(|f| f.trim().eq_ignore_ascii_case(feature))
    }
}

/// The file's values and the `DD_*` variables, before any component read them.
struct Layer {
    path: PathBuf,
    file: BTreeMap<String, Value>,
    /// By variable name.
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

/// A value as given, with where it came from.
#[derive(Clone, Copy)]
enum Raw<'a> {
    File(&'a Value),
    Env(&'a str),
}

impl Layer {
    /// The value of `key`: the environment wins over the file. A dotted key
    /// (`process_config.remote_workloadmeta`) is looked up nested, as the Datadog agent does.
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
        // An empty key in YAML (`docker_host:`) is no value: the default stands.
        (!found.is_null()).then(|| (Raw::File(found), Origin::File(self.path.clone())))
    }
}

/// The effective configuration: every component's typed part, and what was read from where.
#[derive(Debug)]
pub struct AgentConfig {
    /// The file read (it may not exist: then only defaults and env count).
    pub path: PathBuf,
    /// Logging.
    pub log: LogConfig,
    /// The IPC server.
    pub ipc: IpcConfig,
    /// The tagger.
    pub tagger: tagger::TaggerConfig,
    /// Which collectors run.
    pub collectors: CollectorsConfig,
    /// Warnings (unknown keys), to log once the logger is set up.
    pub warnings: Vec<String>,
    layer: Layer,
    read: Mutex<BTreeMap<String, Setting>>,
}

impl AgentConfig {
    /// Reads `path` (a missing file is fine only when it is the default path) and the
    /// environment `env` (pairs of name and value; the process's in production), then the
    /// agent's own parts: logging, IPC, the tagger and which collectors run.
    ///
    /// The collectors' own parts are read by [`crate::load_config`], which is what callers use:
    /// the collectors depend on this module, not the other way round.
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

    /// Records every file key no component read as a warning. Call it once every component
    /// has read its part.
    pub(crate) fn note_unknown_keys(&mut self) {
        self.warnings = self.unknown_keys();
    }

    /// Reads one component's part: its fields are the keys it asks the layer for; keys left out
    /// keep the struct's defaults. Every key it has is recorded with its value and origin.
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

    /// Every key the components read, with its effective value and origin.
    pub fn settings(&self) -> BTreeMap<String, Setting> {
        self.read.locked().clone()
    }

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

    /// The auth token file: `auth_token_file_path`, else `auth_token` beside the config file.
    pub fn auth_token_path(&self) -> PathBuf {
        match &self.ipc.auth_token_file_path {
            Some(path) if !path.as_os_str().is_empty() => path.clone(),
            _ => self.path.parent().unwrap_or(Path::new(".")).join("auth_token"),
        }
    }

    /// The IPC certificate: `ipc_cert_file_path`, else `ipc_cert.pem` beside the token file.
    pub fn ipc_cert_path(&self) -> PathBuf {
        match &self.ipc.ipc_cert_file_path {
            Some(path) if !path.as_os_str().is_empty() => path.clone(),
            _ => self.auth_token_path().parent().unwrap_or(Path::new(".")).join("ipc_cert.pem"),
        }
    }

    /// Returns the env vars collectors keep: the tag rules' own, and the keys of
    /// `*_env_as_tags`.
    pub fn env_filter(&self) -> wm_core::EnvFilter {
        wm_core::EnvFilter::new(self.tagger.env_as_tags_keys())
    }

    /// `agent config`'s text: one `key: value  # origin` line per key.
    pub fn render(settings: &BTreeMap<String, Setting>) -> String {
        let mut out = String::new();
        for (key, setting) in settings {
            out.push_str(&format!("{key}: {}  # {}\n", setting.value, setting.origin));
        }
        out
    }
}

// ---- reading a component's struct from the layer -------------------------------------------

/// The error while reading a section: a key's value of the wrong kind, or anything else.
#[derive(Debug)]
enum DeError {
    Value { key: String, origin: Origin, value: String, expected: String },
    Custom(String),
}

impl DeError {
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

/// Deserializes a component's struct: a map of its own fields that the layer has.
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

struct SectionMap<'de> {
    present: std::vec::IntoIter<(&'static str, Raw<'de>, Origin)>,
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

/// One key's value, read as the field's type asks.
struct RawDe<'de> {
    key: &'static str,
    raw: Raw<'de>,
    origin: Origin,
    /// The field is a [`wm_core::Secret`]: an error names the key and what is expected, never
    /// the value.
    secret: bool,
}

/// What a visitor expects, as its own words say.
struct Expecting<'a, V>(&'a V);

impl<'de, V: Visitor<'de>> fmt::Display for Expecting<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }
}

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

/// Go's `strconv.ParseBool`, as Datadog reads boolean variables.
fn env_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

impl<'de> RawDe<'de> {
    /// The error for this key: `cause` is serde's message, whose `expected …` part (if any) is
    /// the most precise; else the visitor's own words.
    fn mismatch(&self, cause: Option<&str>, expected: String) -> DeError {
        let expected = cause.and_then(|c| c.rsplit_once(", expected ").map(|(_, e)| e.to_owned())).unwrap_or(expected);
        // serde's words, with what a YAML or env value may be.
        let expected = if expected == "a boolean" { "a boolean (true or false)".to_owned() } else { expected };
        let value = match self.raw {
            _ if self.secret => "a value not shown (the key holds a secret)".to_owned(),
            Raw::File(v) => describe(v),
            Raw::Env(text) => format!("the text {text:?}"),
        };
        DeError::Value { key: self.key.to_owned(), origin: self.origin.clone(), value, expected }
    }

    fn file<V: Visitor<'de>>(
        &self,
        value: &'de Value,
        visitor: V,
        read: impl FnOnce(&'de Value, V) -> Result<V::Value, serde_json::Error>,
    ) -> Result<V::Value, DeError> {
        let expected = Expecting(&visitor).to_string();
        read(value, visitor).map_err(|e| self.mismatch(Some(&e.to_string()), expected))
    }

    /// An env value that is JSON (a map).
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
        match self.raw {
            Raw::Env("") => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, DeError> {
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
