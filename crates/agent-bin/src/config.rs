//! The agent's configuration: one YAML file plus `DD_*` environment overrides, with the Datadog
//! key names. Every key has a kind and a default; a value of the wrong kind refuses start-up
//! naming the key, the value, where it came from and what is expected; an unknown key is a
//! warning naming it. The effective value of every key keeps its origin (default, file, env),
//! which `agent config` prints.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The default config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/wm-agent/agent.yaml";

/// What a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Bool,
    Port,
    Seconds,
    Str,
    LogLevel,
    StrList,
    StrMap,
}

impl KeyKind {
    fn expected(self) -> &'static str {
        match self {
            KeyKind::Bool => "a boolean (true or false)",
            KeyKind::Port => "a port number (1-65535)",
            KeyKind::Seconds => "a whole number of seconds (0 or more)",
            KeyKind::Str => "a string",
            KeyKind::LogLevel => "one of trace, debug, info, warn, error, off",
            KeyKind::StrList => "a list of strings (in the environment: separated by spaces or commas)",
            KeyKind::StrMap => "a map of strings to strings (in the environment: a JSON object)",
        }
    }
}

/// (key, kind, default) of every key the agent reads.
const KEYS: &[(&str, KeyKind, &str)] = &[
    ("log_level", KeyKind::LogLevel, "info"),
    ("log_format_json", KeyKind::Bool, "false"),
    ("cmd_host", KeyKind::Str, "localhost"),
    ("cmd_port", KeyKind::Port, "5001"),
    ("health_port", KeyKind::Port, "5555"),
    ("auth_token_file_path", KeyKind::Str, ""),
    ("ipc_cert_file_path", KeyKind::Str, ""),
    ("cri_socket_path", KeyKind::Str, ""),
    ("containerd_namespaces", KeyKind::StrList, "[]"),
    ("containerd_exclude_namespaces", KeyKind::StrList, "[\"moby\"]"),
    ("docker_host", KeyKind::Str, ""),
    ("podman_socket_path", KeyKind::Str, ""),
    ("kubelet_tls_verify", KeyKind::Bool, "true"),
    ("kubernetes_kubelet_host", KeyKind::Str, ""),
    ("kubernetes_https_kubelet_port", KeyKind::Port, "10250"),
    ("ecs_agent_url", KeyKind::Str, ""),
    ("container_labels_as_tags", KeyKind::StrMap, "{}"),
    ("docker_labels_as_tags", KeyKind::StrMap, "{}"),
    ("container_env_as_tags", KeyKind::StrMap, "{}"),
    ("docker_env_as_tags", KeyKind::StrMap, "{}"),
    ("kubernetes_pod_labels_as_tags", KeyKind::StrMap, "{}"),
    ("kubernetes_pod_annotations_as_tags", KeyKind::StrMap, "{}"),
    ("kubernetes_namespace_labels_as_tags", KeyKind::StrMap, "{}"),
    ("kubernetes_namespace_annotations_as_tags", KeyKind::StrMap, "{}"),
    ("kubernetes_persistent_volume_claims_as_tags", KeyKind::Bool, "false"),
    ("ecs_collect_resource_tags_ec2", KeyKind::Bool, "false"),
    ("tagger_deletion_grace_period", KeyKind::Seconds, "300"),
];

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
        expected: &'static str,
    },
}

/// One key's effective value.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Setting {
    /// The value.
    pub value: Value,
    /// Where it came from.
    pub origin: Origin,
}

/// The effective configuration: every key with its value and origin, and the warnings.
#[derive(Clone, Debug)]
pub struct Config {
    settings: BTreeMap<&'static str, Setting>,
    /// The file read (it may not exist: then only defaults and env count).
    pub path: PathBuf,
    /// Warnings (unknown keys), to log once the logger is set up.
    pub warnings: Vec<String>,
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {s:?}"),
        Value::Null => "empty (null)".into(),
        other => format!("{} {other}", kind_name(other)),
    }
}

fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "the boolean",
        Value::Number(_) => "the number",
        Value::String(_) => "the string",
        Value::Array(_) => "the list",
        Value::Object(_) => "the map",
    }
}

/// Checks (and normalizes) a value from the file.
fn check_file_value(kind: KeyKind, value: Value) -> Result<Value, Value> {
    let ok = match (&kind, &value) {
        (KeyKind::Bool, Value::Bool(_)) => true,
        (KeyKind::Port, Value::Number(n)) => n.as_u64().is_some_and(|p| (1..=65535).contains(&p)),
        (KeyKind::Seconds, Value::Number(n)) => n.as_u64().is_some(),
        (KeyKind::Str, Value::String(_)) => true,
        (KeyKind::LogLevel, Value::String(s)) => LOG_LEVELS.contains(&s.to_ascii_lowercase().as_str()),
        (KeyKind::StrList, Value::Array(items)) => items.iter().all(Value::is_string),
        (KeyKind::StrMap, Value::Object(map)) => map.values().all(Value::is_string),
        _ => false,
    };
    if ok { Ok(value) } else { Err(value) }
}

const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// Parses an environment variable's text as `kind`.
fn parse_env_value(kind: KeyKind, text: &str) -> Option<Value> {
    let text = text.trim();
    match kind {
        KeyKind::Bool => match text.to_ascii_lowercase().as_str() {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        KeyKind::Port => text.parse::<u16>().ok().filter(|p| *p > 0).map(Value::from),
        KeyKind::Seconds => text.parse::<u64>().ok().map(Value::from),
        KeyKind::Str => Some(Value::String(text.to_owned())),
        KeyKind::LogLevel => {
            LOG_LEVELS.contains(&text.to_ascii_lowercase().as_str()).then(|| Value::String(text.to_ascii_lowercase()))
        }
        KeyKind::StrList => Some(Value::Array(
            text.split([' ', ',']).filter(|s| !s.is_empty()).map(|s| Value::String(s.to_owned())).collect(),
        )),
        KeyKind::StrMap => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) if map.values().all(Value::is_string) => Some(Value::Object(map)),
            _ => None,
        },
    }
}

impl Config {
    /// Loads `path` (a missing file is fine only when it is the default path) and the
    /// environment `env` (pairs of name and value; the process's in production).
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let explicit = path.is_some();
        let path = path.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        let mut settings = BTreeMap::new();
        for (key, kind, default) in KEYS {
            let value: Value = match kind {
                KeyKind::Bool | KeyKind::Port | KeyKind::Seconds | KeyKind::StrList | KeyKind::StrMap => {
                    serde_json::from_str(default).unwrap_or(Value::Null)
                }
                KeyKind::Str | KeyKind::LogLevel => Value::String((*default).to_owned()),
            };
            settings.insert(*key, Setting { value, origin: Origin::Default });
        }
        let mut warnings = Vec::new();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => None,
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        if let Some(text) = text {
            let options = serde_saphyr::options!(strict_booleans: true);
            let parsed: Option<BTreeMap<String, Value>> = if text.trim().is_empty() {
                None
            } else {
                serde_saphyr::from_str_with_options(&text, options)
                    .map_err(|e| ConfigError::Syntax { path: path.clone(), reason: e.to_string() })?
            };
            for (key, value) in parsed.unwrap_or_default() {
                let Some((name, kind, _)) = KEYS.iter().find(|(k, _, _)| *k == key) else {
                    warnings.push(format!("config: unknown key `{key}` in {} (ignored)", path.display()));
                    continue;
                };
                let origin = Origin::File(path.clone());
                let value = check_file_value(*kind, value).map_err(|bad| ConfigError::Value {
                    key: key.clone(),
                    origin: origin.clone(),
                    value: describe(&bad),
                    expected: kind.expected(),
                })?;
                settings.insert(*name, Setting { value, origin });
            }
        }
        for (var, text) in env {
            let Some(key) = var.strip_prefix("DD_").map(str::to_ascii_lowercase) else { continue };
            let Some((name, kind, _)) = KEYS.iter().find(|(k, _, _)| *k == key) else { continue };
            let origin = Origin::Env(var.clone());
            let value = parse_env_value(*kind, &text).ok_or_else(|| ConfigError::Value {
                key: key.clone(),
                origin: origin.clone(),
                value: format!("the text {text:?}"),
                expected: kind.expected(),
            })?;
            settings.insert(*name, Setting { value, origin });
        }
        Ok(Self { settings, path, warnings })
    }

    /// Every key's effective value and origin.
    pub fn settings(&self) -> &BTreeMap<&'static str, Setting> {
        &self.settings
    }

    fn value(&self, key: &str) -> &Value {
        static NULL: Value = Value::Null;
        self.settings.get(key).map(|s| &s.value).unwrap_or(&NULL)
    }

    /// A string key ("" when unset).
    pub fn str(&self, key: &str) -> &str {
        self.value(key).as_str().unwrap_or_default()
    }

    /// A boolean key.
    pub fn bool(&self, key: &str) -> bool {
        self.value(key).as_bool().unwrap_or(false)
    }

    /// A port key.
    pub fn port(&self, key: &str) -> u16 {
        self.value(key).as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0)
    }

    /// A list key.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.value(key).as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
    }

    /// The tagger's part, read through its own deserializer.
    pub fn tagger(&self) -> tagger::TaggerConfig {
        let object: serde_json::Map<String, Value> = tagger::TaggerConfig::KEYS
            .iter()
            .filter_map(|k| self.settings.get(k).map(|s| ((*k).to_owned(), s.value.clone())))
            .collect();
        serde_json::from_value(Value::Object(object)).unwrap_or_default()
    }

    /// The auth token file: `auth_token_file_path`, else `auth_token` beside the config file.
    pub fn auth_token_path(&self) -> PathBuf {
        match self.str("auth_token_file_path") {
            "" => self.path.parent().unwrap_or(Path::new(".")).join("auth_token"),
            set => PathBuf::from(set),
        }
    }

    /// The IPC certificate: `ipc_cert_file_path`, else `ipc_cert.pem` beside the token file.
    pub fn ipc_cert_path(&self) -> PathBuf {
        match self.str("ipc_cert_file_path") {
            "" => self.auth_token_path().parent().unwrap_or(Path::new(".")).join("ipc_cert.pem"),
            set => PathBuf::from(set),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir =
            std::env::temp_dir().join(format!("wm-config-test-{}-{}", std::process::id(), yaml.len() + env.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.yaml");
        std::fs::write(&path, yaml).unwrap();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::load(Some(&path), env)
    }

    #[test]
    fn defaults_file_and_env_each_say_where_they_came_from() {
        let c =
            load("cmd_port: 6001\ncontainer_labels_as_tags:\n  team: team\n", &[("DD_KUBELET_TLS_VERIFY", "false")])
                .unwrap();
        assert_eq!(c.port("cmd_port"), 6001);
        assert!(matches!(c.settings()["cmd_port"].origin, Origin::File(_)));
        assert!(!c.bool("kubelet_tls_verify"));
        assert_eq!(c.settings()["kubelet_tls_verify"].origin, Origin::Env("DD_KUBELET_TLS_VERIFY".into()));
        assert_eq!(c.port("health_port"), 5555);
        assert_eq!(c.settings()["health_port"].origin, Origin::Default);
        assert_eq!(c.list("containerd_exclude_namespaces"), ["moby"]);
        assert_eq!(c.tagger().container_labels_as_tags.get("team").map(String::as_str), Some("team"));
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn a_string_where_a_bool_goes_refuses_with_key_value_and_expectation() {
        let e = load("kubelet_tls_verify: \"yes\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("`kubelet_tls_verify`") && e.contains("\"yes\"") && e.contains("expected a boolean"), "{e}");
        // YAML 1.1 booleans are not booleans here.
        let e = load("kubelet_tls_verify: yes\n", &[]).unwrap_err().to_string();
        assert!(e.contains("expected a boolean"), "{e}");
        let e = load("", &[("DD_CMD_PORT", "70000")]).unwrap_err().to_string();
        assert!(e.contains("`cmd_port` (env DD_CMD_PORT)") && e.contains("70000") && e.contains("port number"), "{e}");
        let e = load("container_env_as_tags: [a]\n", &[]).unwrap_err().to_string();
        assert!(e.contains("expected a map"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_a_warning_naming_it() {
        let c = load("cmd_prot: 5001\n", &[]).unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("`cmd_prot`"));
        assert_eq!(c.port("cmd_port"), 5001);
    }

    #[test]
    fn env_lists_and_maps_parse_and_bad_yaml_is_a_clear_error() {
        let c = load(
            "",
            &[("DD_CONTAINERD_NAMESPACES", "k8s.io default"), ("DD_CONTAINER_ENV_AS_TAGS", r#"{"TEAM":"team"}"#)],
        )
        .unwrap();
        assert_eq!(c.list("containerd_namespaces"), ["k8s.io", "default"]);
        assert_eq!(c.tagger().container_env_as_tags.get("TEAM").map(String::as_str), Some("team"));
        let e = load("cmd_port: [\n", &[]).unwrap_err().to_string();
        assert!(e.contains("not a YAML mapping"), "{e}");
        let e = Config::load(Some(Path::new("/nonexistent/agent.yaml")), Vec::new()).unwrap_err().to_string();
        assert!(e.contains("cannot read /nonexistent/agent.yaml"), "{e}");
        // The default path may be missing.
        assert!(Config::load(None, Vec::new()).is_ok());
    }
}
