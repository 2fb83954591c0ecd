//! The process collector: scans the host's `/proc` on a timer and reports every process as a
//! `process` entity (source `runtime`, collector `process`), with its pid in its own namespace,
//! its parent, command name, creation time, container and language.
//!
//! Processes come and go faster than any runtime event stream could tell, and Linux offers no
//! cheap stream of them to an unprivileged reader, so this is a pull collector: every
//! `process_config.intervals.process` (10 s) it scans `/proc` and sends what changed since the
//! scan before (see [`scan`]). A process that starts and exits between two scans is never
//! reported; one that exits is unset at the next scan.
//!
//! Command lines hold secrets (Datadog scrubs them before it sends them anywhere). They are not
//! stored unless `process_config.keep_cmdline` is set, and then only scrubbed (see [`scrub`]).
//!
//! It runs only when `process_config.process_collection.enabled` or `language_detection.enabled`
//! is set, as the Datadog Agent's process collector does.

#![forbid(unsafe_code)]

pub mod language;
pub mod scan;
pub mod scrub;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use wm_core::sync::MutexExt;
use wm_core::{Collector, CollectorContext, CollectorError, Entity, EventType, PullCollector, Seconds, Source};

use crate::scan::Scanner;
use crate::scrub::Scrubber;

/// The collector's name, as it appears in health, telemetry and dumps.
pub const NAME: &str = "process";

/// The collector's part of the agent config, by the Datadog Agent's key names.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessConfig {
    /// `process_config.process_collection.enabled` (Datadog's key, default false): run the
    /// process collector.
    #[serde(rename = "process_config.process_collection.enabled")]
    pub process_collection: bool,
    /// `language_detection.enabled` (Datadog's key, default false): run the process collector,
    /// whose entities carry each process's language.
    #[serde(rename = "language_detection.enabled")]
    pub language_detection: bool,
    /// `process_config.intervals.process` (Datadog's key, in seconds, default 10): the time
    /// between two scans.
    #[serde(rename = "process_config.intervals.process")]
    pub interval: Seconds,
    /// `process_config.keep_cmdline` (ours, default false): store each process's command line,
    /// scrubbed. Off, command lines are never read into the store.
    #[serde(rename = "process_config.keep_cmdline")]
    pub keep_cmdline: bool,
    /// `process_config.scrub_args` (Datadog's key, default true): hide the values of sensitive
    /// arguments in the command lines kept.
    #[serde(rename = "process_config.scrub_args")]
    pub scrub_args: bool,
    /// `process_config.custom_sensitive_words` (Datadog's key): words to scrub besides the
    /// defaults ([`scrub::DEFAULT_SENSITIVE_WORDS`]); `*` matches any run of characters.
    #[serde(rename = "process_config.custom_sensitive_words")]
    pub custom_sensitive_words: Vec<String>,
    /// `process_config.strip_proc_arguments` (Datadog's key, default false): keep only the
    /// program of each command line.
    #[serde(rename = "process_config.strip_proc_arguments")]
    pub strip_proc_arguments: bool,
    /// `container_proc_root` (Datadog's key, default `/proc`): the `/proc` to scan; the host's,
    /// mounted at `/host/proc` for instance, when the agent runs in a container.
    pub container_proc_root: PathBuf,
    /// `containerd_namespaces` (Datadog's key): the containerd namespaces whose container names
    /// are recognized in cgroup paths of containerd's cgroupfs layout (`/<namespace>/<name>`).
    pub containerd_namespaces: Vec<String>,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            process_collection: false,
            language_detection: false,
            interval: Seconds(10),
            keep_cmdline: false,
            scrub_args: true,
            custom_sensitive_words: Vec::new(),
            strip_proc_arguments: false,
            container_proc_root: PathBuf::from("/proc"),
            containerd_namespaces: Vec::new(),
        }
    }
}

impl ProcessConfig {
    /// Tells whether the config turns the collector on.
    pub fn enabled(&self) -> bool {
        self.process_collection || self.language_detection
    }
}

/// Scans `/proc` on each pull and sends what changed.
#[derive(Debug)]
pub struct ProcessCollector {
    config: ProcessConfig,
    /// Behind a mutex because each scan runs on a blocking thread.
    scanner: Arc<Mutex<Scanner>>,
    /// Whether the next pull sends everything as a full list: the first one, and any after a
    /// pull that was cut off before the store had its changes.
    resync: bool,
}

impl ProcessCollector {
    /// Creates the collector. It reads nothing before its first pull.
    pub fn new(config: ProcessConfig) -> Self {
        let scrubber = config
            .keep_cmdline
            .then(|| Scrubber::new(&config.custom_sensitive_words, config.scrub_args, config.strip_proc_arguments));
        let scanner = Scanner::new(&config.container_proc_root, config.containerd_namespaces.clone(), scrubber);
        Self { config, scanner: Arc::new(Mutex::new(scanner)), resync: true }
    }

    /// Wraps it for the store: a pull every `process_config.intervals.process`, at least 1 s.
    pub fn into_collector(self) -> Collector {
        let every = self.config.interval.duration().max(std::time::Duration::from_secs(1));
        Collector::pull(NAME, Source::Runtime, self).with_pull_interval(every)
    }
}

#[async_trait]
impl PullCollector for ProcessCollector {
    async fn start(&mut self, _ctx: &CollectorContext) -> Result<(), CollectorError> {
        let root = &self.config.container_proc_root;
        if !root.join("self").exists() {
            return Err(CollectorError::waiting_for(format!("{} (container_proc_root)", root.display())));
        }
        self.resync = true;
        Ok(())
    }

    async fn pull(&mut self, ctx: &CollectorContext) -> Result<(), CollectorError> {
        let scanner = self.scanner.clone();
        let resync = self.resync;
        let scanned = tokio::task::spawn_blocking(move || {
            let mut scanner = scanner.locked();
            if resync {
                scanner.forget();
            }
            let changes = scanner.scan()?;
            let all: Option<Vec<Entity>> =
                resync.then(|| scanner.processes().map(|p| Entity::Process(p.clone())).collect());
            Ok::<_, std::io::Error>((changes, all))
        })
        .await
        .map_err(|e| CollectorError::retriable("the /proc scan stopped", e))?;
        let (changes, all) = scanned.map_err(|e| {
            CollectorError::retriable(format!("cannot list {}", self.config.container_proc_root.display()), e)
        })?;
        // Until the store has this pull's changes, the scanner is ahead of it: if this future is
        // dropped (the pull's timeout, a shutdown), the next pull sends a full list instead.
        self.resync = true;
        match all {
            Some(all) => ctx.sink.full_list(all).await,
            None => {
                let unsets = changes.unset.iter().map(|id| (EventType::Unset, Entity::empty(id)));
                let sets = changes.set.into_iter().map(|p| (EventType::Set, Entity::Process(p)));
                ctx.sink.events(unsets.chain(sets).collect()).await;
            }
        }
        self.resync = false;
        Ok(())
    }
}
