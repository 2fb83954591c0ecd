//! Gives each of the Datadog Agent's other agents the tagger its config asks for: its own, or a
//! remote client of the core agent.
//!
//! Besides the core agent, a Datadog node runs the trace agent (APM), the logs agent, the
//! process agent, the security agent and the runtime security agent. Each needs tags, and each
//! has a key that says where they come from: `<section>.remote_tagger` true means "copy the core
//! agent's tags over gRPC" (a remote tagger client of `cmd_host:cmd_port`, authenticated with the
//! core agent's token and certificate files), false means "run a tagger of your own", with its
//! own store and collectors. A program built on our crates that plays one of those agents asks
//! [`choose`] or [`tagger_for`] with its [`Agent`], and the light agent does the same when
//! `agent run --for <agent>` names one.
//!
//! The keys and their defaults are in [`RemoteTaggerConfig`]. Upstream, the Datadog Agent has
//! since retired these keys: its other agents always use the remote tagger. Every key here
//! therefore defaults to true, and false is for a node with no core agent to ask.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tagger::{TagCardinality, Tagger};
use tokio_util::task::TaskTracker;
use wm_core::CancellationToken;
use wm_ipc::RemoteAgent;
use wm_store::Store;

use crate::config::{AgentConfig, ConfigError};
use crate::remote::RemoteTagger;

/// One of the agents that ask the core agent for tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Agent {
    /// The trace agent; key `apm_config.remote_tagger`.
    Apm,
    /// The logs agent; key `logs_config.remote_tagger`.
    Logs,
    /// The process agent; key `process_config.remote_tagger`.
    Process,
    /// The security agent (compliance); key `security_agent.remote_tagger`.
    Security,
    /// The runtime security agent; key `runtime_security_agent.remote_tagger`, or Datadog's
    /// `runtime_security_config.remote_tagger`.
    RuntimeSecurity,
}

impl Agent {
    /// Every agent, in the order of the config's sections.
    pub const ALL: [Agent; 5] = [Agent::Apm, Agent::Logs, Agent::Process, Agent::Security, Agent::RuntimeSecurity];

    /// Returns the name `agent run --for` takes: `apm`, `logs`, `process`, `security` or
    /// `runtime-security`.
    pub fn name(self) -> &'static str {
        match self {
            Agent::Apm => "apm",
            Agent::Logs => "logs",
            Agent::Process => "process",
            Agent::Security => "security",
            Agent::RuntimeSecurity => "runtime-security",
        }
    }

    /// Returns the key that chooses this agent's tagger.
    pub fn key(self) -> &'static str {
        match self {
            Agent::Apm => "apm_config.remote_tagger",
            Agent::Logs => "logs_config.remote_tagger",
            Agent::Process => "process_config.remote_tagger",
            Agent::Security => "security_agent.remote_tagger",
            Agent::RuntimeSecurity => "runtime_security_agent.remote_tagger",
        }
    }
}

impl fmt::Display for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of parsing a name that is no [`Agent`]'s.
#[derive(Debug, thiserror::Error)]
#[error("unknown agent {0:?}: expected one of apm, logs, process, security, runtime-security")]
pub struct UnknownAgent(String);

impl FromStr for Agent {
    type Err = UnknownAgent;

    /// Reads a name as [`Agent::name`] gives it, ignoring case; `trace` is taken for `apm` and
    /// `runtime_security` for `runtime-security`.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.to_ascii_lowercase().as_str() {
            "apm" | "trace" => Ok(Agent::Apm),
            "logs" => Ok(Agent::Logs),
            "process" => Ok(Agent::Process),
            "security" => Ok(Agent::Security),
            "runtime-security" | "runtime_security" => Ok(Agent::RuntimeSecurity),
            _ => Err(UnknownAgent(name.to_owned())),
        }
    }
}

/// The keys that choose each agent's tagger: true (the default) for a remote tagger client of the
/// core agent, false for a tagger of the agent's own.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteTaggerConfig {
    /// `apm_config.remote_tagger` (Datadog's key, default true): the trace agent's choice.
    #[serde(rename = "apm_config.remote_tagger")]
    pub apm: bool,
    /// `logs_config.remote_tagger` (Datadog's key, default true): the logs agent's choice.
    #[serde(rename = "logs_config.remote_tagger")]
    pub logs: bool,
    /// `process_config.remote_tagger` (Datadog's key, default true): the process agent's choice.
    #[serde(rename = "process_config.remote_tagger")]
    pub process: bool,
    /// `security_agent.remote_tagger` (Datadog's key, default true): the security agent's choice.
    #[serde(rename = "security_agent.remote_tagger")]
    pub security: bool,
    /// `runtime_security_agent.remote_tagger` (ours, no default of its own): the runtime security
    /// agent's choice. When unset, Datadog's `runtime_security_config.remote_tagger` decides.
    #[serde(rename = "runtime_security_agent.remote_tagger")]
    pub runtime_security: Option<bool>,
    /// `runtime_security_config.remote_tagger` (Datadog's key, default true): the runtime
    /// security agent's choice when `runtime_security_agent.remote_tagger` is unset.
    #[serde(rename = "runtime_security_config.remote_tagger")]
    pub runtime_security_config: bool,
}

impl Default for RemoteTaggerConfig {
    fn default() -> Self {
        Self {
            apm: true,
            logs: true,
            process: true,
            security: true,
            runtime_security: None,
            runtime_security_config: true,
        }
    }
}

impl RemoteTaggerConfig {
    /// Tells whether `agent` uses a remote tagger client.
    pub fn is_remote(&self, agent: Agent) -> bool {
        match agent {
            Agent::Apm => self.apm,
            Agent::Logs => self.logs,
            Agent::Process => self.process,
            Agent::Security => self.security,
            Agent::RuntimeSecurity => self.runtime_security.unwrap_or(self.runtime_security_config),
        }
    }
}

/// Where an agent's tags come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaggerChoice {
    /// A tagger of the agent's own, fed by its own store and collectors.
    Local,
    /// A remote tagger client of the core agent at `address` (`cmd_host:cmd_port`).
    Remote {
        /// The core agent's gRPC address, `host:port`.
        address: String,
    },
}

/// Returns where `agent`'s tags come from under `config`.
///
/// # Errors
///
/// Returns [`ConfigError::Value`] when one of the keys holds something other than a bool.
pub fn choose(config: &AgentConfig, agent: Agent) -> Result<TaggerChoice, ConfigError> {
    let keys: RemoteTaggerConfig = config.section()?;
    Ok(if keys.is_remote(agent) {
        TaggerChoice::Remote { address: format!("{}:{}", config.ipc.cmd_host, config.ipc.cmd_port) }
    } else {
        TaggerChoice::Local
    })
}

/// What `agent run` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The full agent, with the collectors of this build.
    Full,
    /// The light agent: a copy of the upstream's tags, no collectors.
    Light,
}

/// Decides what `agent run` starts: the light agent when `for_agent` names an agent whose tagger
/// is remote, or when no agent is named and this is a `flavor-light` build (`light_build`);
/// otherwise the full agent.
///
/// # Errors
///
/// Returns [`ConfigError::Invalid`] when `for_agent`'s key asks for a tagger of its own in a
/// `flavor-light` build, which has no collectors to feed one, and [`ConfigError::Value`] when
/// the key is not a bool.
pub fn plan(config: &AgentConfig, for_agent: Option<Agent>, light_build: bool) -> Result<Plan, ConfigError> {
    let Some(agent) = for_agent else {
        return Ok(if light_build { Plan::Light } else { Plan::Full });
    };
    match choose(config, agent)? {
        TaggerChoice::Remote { .. } => Ok(Plan::Light),
        TaggerChoice::Local if light_build => Err(ConfigError::Invalid(format!(
            "`{}` is false, so the {agent} agent needs a tagger of its own, but this build (flavor-light) has no collectors to feed one: set it to true, or run a build with collectors",
            agent.key()
        ))),
        TaggerChoice::Local => Ok(Plan::Full),
    }
}

/// A tagger in this process, with the store and collectors that feed it.
#[derive(Debug)]
pub struct LocalTagger {
    /// The store, which runs the collectors of the config.
    pub store: Store,
    /// The tagger that the store feeds.
    pub tagger: Arc<Tagger>,
    /// The task that feeds the tagger from the store.
    tasks: TaskTracker,
}

/// A copy of the core agent's tags, kept current by a background task.
#[derive(Debug)]
pub struct RemoteClient {
    /// The copy.
    pub replica: Arc<RemoteTagger>,
    /// Stops the background task.
    cancel: CancellationToken,
    /// The background task.
    tasks: TaskTracker,
}

/// The tagger one agent asked for with [`tagger_for`].
#[derive(Debug)]
pub enum AgentTagger {
    /// A tagger of its own.
    Local(LocalTagger),
    /// A remote tagger client of the core agent.
    Remote(RemoteClient),
}

impl AgentTagger {
    /// Returns the tags of `entity` (`prefix://uid`) at `cardinality` and the levels below it, in
    /// no particular order; an empty list for an entity the tagger does not have.
    pub fn tag(&self, entity: &str, cardinality: TagCardinality) -> Vec<String> {
        match self {
            AgentTagger::Local(local) => local.tagger.tag(entity, cardinality).to_vec(),
            AgentTagger::Remote(remote) => remote.replica.tag(entity, cardinality),
        }
    }

    /// Tells whether the tags come from the core agent.
    pub fn is_remote(&self) -> bool {
        matches!(self, AgentTagger::Remote(_))
    }

    /// Stops the collectors and the tagger's task, or the stream from the core agent, and waits
    /// for them.
    pub async fn stop(self) {
        match self {
            AgentTagger::Local(local) => {
                local.store.shutdown().await;
                local.tasks.close();
                local.tasks.wait().await;
            }
            AgentTagger::Remote(remote) => {
                remote.cancel.cancel();
                remote.tasks.close();
                remote.tasks.wait().await;
            }
        }
    }
}

/// Starts the tagger that `agent` asks for under `config`, on the current tokio runtime.
///
/// A remote tagger client starts following the core agent in the background; it has tags once
/// its first snapshot arrives, and reconnects by itself. A local tagger starts the collectors
/// this build has and `config` enables; it has tags once they have listed their workloads.
///
/// # Errors
///
/// Returns an error when a key is not a bool, when a collector's config is refused (local), or
/// when the core agent's token or certificate file cannot be read (remote).
pub async fn tagger_for(config: &AgentConfig, agent: Agent) -> anyhow::Result<AgentTagger> {
    match choose(config, agent)? {
        TaggerChoice::Remote { address } => {
            let upstream = RemoteAgent::from_files(address, &config.auth_token_path(), &config.ipc_cert_path())
                .with_context(|| {
                    format!("the core agent's token and certificate, for the {agent} agent's remote tagger")
                })?;
            let replica = RemoteTagger::new();
            let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
            tasks.spawn(replica.clone().follow_until(upstream, cancel.clone()));
            Ok(AgentTagger::Remote(RemoteClient { replica, cancel, tasks }))
        }
        TaggerChoice::Local => {
            let collectors = crate::collectors::build_all(config)?;
            let tasks = TaskTracker::new();
            let (store, tagger) = crate::run::local_core(config, collectors, &tasks)?;
            store.start();
            Ok(AgentTagger::Local(LocalTagger { store, tagger, tasks }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a config from `yaml` and the `DD_*` pairs of `env`.
    fn config(yaml: &str, env: &[(&str, &str)]) -> AgentConfig {
        let dir = std::env::temp_dir().join(format!("wm-agents-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("agent.yaml");
        std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("{e}"));
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        let config = AgentConfig::read(Some(&path), env).unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_dir_all(&dir);
        config
    }

    /// Returns a number no other call in this process returns.
    fn rand_suffix() -> usize {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    #[test]
    fn every_agent_is_remote_by_default_at_cmd_host_and_cmd_port() {
        let config = config("cmd_host: core.local\ncmd_port: 6001\n", &[]);
        for agent in Agent::ALL {
            let choice = choose(&config, agent).unwrap_or_else(|e| panic!("{agent}: {e}"));
            assert_eq!(choice, TaggerChoice::Remote { address: "core.local:6001".into() }, "{agent}");
        }
    }

    #[test]
    fn each_key_turns_its_own_agent_local_and_no_other() {
        for agent in Agent::ALL {
            let (section, key) = agent.key().split_once('.').unwrap_or_else(|| panic!("{agent}"));
            for yaml in [format!("{}: false\n", agent.key()), format!("{section}:\n  {key}: false\n")] {
                let config = config(&yaml, &[]);
                for other in Agent::ALL {
                    let local = choose(&config, other).unwrap_or_else(|e| panic!("{e}")) == TaggerChoice::Local;
                    assert_eq!(local, other == agent, "{yaml:?}: {other}");
                }
            }
            // The environment variable of the key, and the key's own record for `agent config`.
            let var = format!("DD_{}", agent.key().replace('.', "_").to_ascii_uppercase());
            let config = config("", &[(&var, "false")]);
            assert_eq!(choose(&config, agent).unwrap_or_else(|e| panic!("{e}")), TaggerChoice::Local, "{var}");
            let settings = config.settings();
            let setting = settings.get(agent.key()).unwrap_or_else(|| panic!("{} recorded", agent.key()));
            assert_eq!(
                (&setting.value, &setting.origin),
                (&serde_json::json!(false), &crate::config::Origin::Env(var))
            );
        }
    }

    #[test]
    fn the_runtime_security_agent_reads_datadogs_key_when_its_own_is_unset() {
        let datadog = config("runtime_security_config:\n  remote_tagger: false\n", &[]);
        assert_eq!(choose(&datadog, Agent::RuntimeSecurity).ok(), Some(TaggerChoice::Local));
        let both = config(
            "runtime_security_config:\n  remote_tagger: false\nruntime_security_agent:\n  remote_tagger: true\n",
            &[],
        );
        assert!(matches!(choose(&both, Agent::RuntimeSecurity), Ok(TaggerChoice::Remote { .. })));
    }

    #[test]
    fn a_key_that_is_not_a_bool_is_refused_naming_it() {
        let config = config("apm_config:\n  remote_tagger: sometimes\n", &[]);
        let error = choose(&config, Agent::Apm).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("apm_config.remote_tagger") && error.contains("bool"), "{error}");
    }

    #[test]
    fn the_plan_follows_the_named_agents_key_and_the_build() {
        let config = config("process_config:\n  remote_tagger: false\n", &[]);
        assert_eq!(plan(&config, None, true).ok(), Some(Plan::Light));
        assert_eq!(plan(&config, None, false).ok(), Some(Plan::Full));
        assert_eq!(plan(&config, Some(Agent::Apm), false).ok(), Some(Plan::Light));
        assert_eq!(plan(&config, Some(Agent::Apm), true).ok(), Some(Plan::Light));
        assert_eq!(plan(&config, Some(Agent::Process), false).ok(), Some(Plan::Full));
        let refused = plan(&config, Some(Agent::Process), true).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("process_config.remote_tagger") && refused.contains("flavor-light"), "{refused}");
    }

    #[test]
    fn agent_names_parse_back_and_unknown_ones_are_refused() {
        for agent in Agent::ALL {
            assert_eq!(agent.name().parse::<Agent>().ok(), Some(agent));
            assert_eq!(agent.name().to_uppercase().parse::<Agent>().ok(), Some(agent));
        }
        assert_eq!("trace".parse::<Agent>().ok(), Some(Agent::Apm));
        let error = "system-probe".parse::<Agent>().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("system-probe") && error.contains("runtime-security"), "{error}");
    }
}
