//! The CLI's query commands: fetch the JSON of a running agent's localhost HTTP API and print
//! it in the Datadog Agent's text formats (or as JSON).

use std::fmt::Write as _;

use wm_core::{Container, EcsTask, Entity, KubernetesMetadata, KubernetesPod, StrMap, Timestamp};

use crate::report::{HealthReport, StatusReport, TaggerList, WorkloadEntry, WorkloadList};

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Nothing answers.
    #[error("no agent answers on {url}: is `agent run` running, with health_port {port}? ({reason})")]
    NoAgent {
        /// What was asked.
        url: String,
        /// The port tried.
        port: u16,
        /// Why it failed.
        reason: String,
    },
    /// It answered something unexpected.
    #[error("the agent on {url} answered {reason}")]
    BadAnswer {
        /// What was asked.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

/// The innermost cause of an error ("Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// A running agent's HTTP API: its port on 127.0.0.1 and the token (the CLI reads the
/// `auth_token` file, as Datadog's does; the probes need none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Api {
    /// `health_port`.
    pub port: u16,
    /// The bearer token.
    pub token: Option<String>,
}

impl Api {
    /// The API on `port`, with `token`.
    pub fn new(port: u16, token: Option<String>) -> Self {
        Self { port, token }
    }
}

impl From<u16> for Api {
    /// The probes of the API on `port` (no token).
    fn from(port: u16) -> Self {
        Self { port, token: None }
    }
}

/// Fetches `path` from the agent's HTTP API as JSON. A 503 still carries a report (health), so
/// any status with a JSON body is read.
pub async fn fetch<T: serde::de::DeserializeOwned>(api: impl Into<Api>, path: &str) -> Result<T, CliError> {
    let api = api.into();
    let port = api.port;
    let url = format!("http://127.0.0.1:{port}{path}");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .no_proxy()
        .build()
        .map_err(|e| CliError::NoAgent { url: url.clone(), port, reason: e.to_string() })?;
    let mut request = client.get(&url);
    if let Some(token) = &api.token {
        request = request.bearer_auth(token);
    }
    let response =
        request.send().await.map_err(|e| CliError::NoAgent { url: url.clone(), port, reason: root_cause(&e) })?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| CliError::BadAnswer { url: url.clone(), reason: e.to_string() })?;
    // `/health` answers 503 with its report when not ready; anything else must be a success.
    if !status.is_success() && status != reqwest::StatusCode::SERVICE_UNAVAILABLE {
        return Err(CliError::BadAnswer {
            url,
            reason: format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes).trim()),
        });
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| CliError::BadAnswer { url, reason: format!("HTTP {status} with a body that does not parse: {e}") })
}

fn time(t: Option<Timestamp>) -> String {
    t.map(|t| t.to_string()).unwrap_or_default()
}

/// Text from a container or a daemon, safe to print on a terminal: control characters (an
/// escape sequence in a label, a newline that would fake a line of output) are shown escaped.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn kv(out: &mut String, key: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{key}: {}", printable(&value.to_string()));
}

fn map_section(out: &mut String, title: &str, map: &StrMap) {
    if map.is_empty() {
        return;
    }
    let _ = writeln!(out, "----------- {title} -----------");
    for (k, v) in map.iter() {
        let _ = writeln!(out, "{}: {}", printable(k), printable(v));
    }
}

fn container_body(out: &mut String, c: &Container, verbose: bool) {
    let _ = writeln!(out, "----------- Entity ID -----------");
    kv(out, "Kind", format!("container ID: {}", c.id));
    let _ = writeln!(out, "----------- Entity Meta -----------");
    kv(out, "Name", &c.name);
    let _ = writeln!(out, "----------- Image -----------");
    kv(out, "Name", &c.image.name);
    kv(out, "Tag", &c.image.tag);
    kv(out, "ID", &c.image.id);
    kv(out, "Raw Name", &c.image.raw_name);
    kv(out, "Short Name", &c.image.short_name);
    let _ = writeln!(out, "----------- Container Info -----------");
    kv(out, "Runtime", c.runtime.map(|r| r.as_str()).unwrap_or_default());
    kv(out, "Running", c.state.running);
    kv(out, "Status", format!("{:?}", c.state.status).to_lowercase());
    kv(out, "Health", format!("{:?}", c.state.health).to_lowercase());
    kv(out, "Created At", time(c.state.created_at));
    kv(out, "Started At", time(c.state.started_at));
    kv(out, "Finished At", time(c.state.finished_at));
    kv(out, "Exit Code", c.state.exit_code.map(|c| c.to_string()).unwrap_or_default());
    kv(out, "PID", c.pid);
    kv(out, "Hostname", &c.details.hostname);
    kv(out, "Owner", c.owner.as_ref().map(ToString::to_string).unwrap_or_default());
    kv(out, "Cgroup Path", &c.details.cgroup_path);
    if !c.details.collector_tags.is_empty() {
        kv(out, "Collector Tags", c.details.collector_tags.join(", "));
    }
    if verbose {
        map_section(out, "Labels", &c.labels);
        map_section(out, "Env Variables", &c.env);
    }
}

fn pod_body(out: &mut String, p: &KubernetesPod, verbose: bool) {
    let _ = writeln!(out, "----------- Entity ID -----------");
    kv(out, "Kind", format!("kubernetes_pod ID: {}", p.id));
    let _ = writeln!(out, "----------- Entity Meta -----------");
    kv(out, "Name", &p.name);
    kv(out, "Namespace", &p.namespace);
    let _ = writeln!(out, "----------- Pod Info -----------");
    kv(out, "Phase", &p.phase);
    kv(out, "Ready", p.ready);
    kv(out, "IP", &p.ip);
    kv(out, "QOS Class", &p.qos_class);
    let owners: Vec<String> = p.owners.iter().map(|o| format!("{}/{}", o.kind, o.name)).collect();
    kv(out, "Owners", owners.join(" "));
    let containers: Vec<String> = p.containers.iter().map(|c| format!("{} ({})", c.name, c.id)).collect();
    kv(out, "Containers", containers.join(" "));
    if verbose {
        map_section(out, "Labels", &p.labels);
        map_section(out, "Annotations", &p.annotations);
    }
}

fn task_body(out: &mut String, t: &EcsTask, verbose: bool) {
    let _ = writeln!(out, "----------- Entity ID -----------");
    kv(out, "Kind", format!("ecs_task ID: {}", t.id));
    let _ = writeln!(out, "----------- Entity Meta -----------");
    kv(out, "Name", &t.family);
    let _ = writeln!(out, "----------- Task Info -----------");
    kv(out, "Family", &t.family);
    kv(out, "Version", &t.version);
    kv(out, "Cluster Name", &t.cluster_name);
    kv(out, "Launch Type", t.launch_type.map(|l| format!("{l:?}").to_lowercase()).unwrap_or_default());
    kv(out, "Region", &t.region);
    let containers: Vec<String> = t.containers.iter().map(|c| format!("{} ({})", c.name, c.id)).collect();
    kv(out, "Containers", containers.join(" "));
    if verbose {
        map_section(out, "Tags", &t.tags);
    }
}

fn metadata_body(out: &mut String, m: &KubernetesMetadata, verbose: bool) {
    let _ = writeln!(out, "----------- Entity ID -----------");
    kv(out, "Kind", format!("kubernetes_metadata ID: {}", m.id));
    let _ = writeln!(out, "----------- Entity Meta -----------");
    kv(out, "Name", &m.name);
    kv(out, "Namespace", &m.namespace);
    kv(out, "Resource", &m.resource);
    if verbose {
        map_section(out, "Labels", &m.labels);
        map_section(out, "Annotations", &m.annotations);
    }
}

fn entity_body(out: &mut String, entity: &Entity, verbose: bool) {
    match entity {
        Entity::Container(c) => container_body(out, c, verbose),
        Entity::KubernetesPod(p) => pod_body(out, p, verbose),
        Entity::EcsTask(t) => task_body(out, t, verbose),
        Entity::KubernetesMetadata(m) => metadata_body(out, m, verbose),
    }
}

fn workload_entry(out: &mut String, e: &WorkloadEntry, verbose: bool) {
    let _ =
        writeln!(out, "=== Entity {} sources(merged):[{}] id: {} ===", e.kind, e.sources.join(" "), printable(&e.id));
    entity_body(out, &e.merged, verbose);
    let _ = writeln!(out, "===");
    for version in e.per_source.iter().flatten() {
        let _ = writeln!(out, "=== Entity {} source:{} id: {} ===", e.kind, version.source, printable(&e.id));
        kv(out, "Collector", &version.collector);
        entity_body(out, &version.entity, verbose);
        let _ = writeln!(out, "===");
    }
    out.push('\n');
}

/// `workload-list` as text.
pub fn format_workload_list(list: &WorkloadList, verbose: bool) -> String {
    let mut out = String::new();
    for entry in list.entities.values() {
        workload_entry(&mut out, entry, verbose);
    }
    out
}

/// `tagger-list` as text.
pub fn format_tagger_list(list: &TaggerList) -> String {
    let mut out = String::new();
    for (entity, sources) in &list.entities {
        let _ = writeln!(out, "=== Entity {} ===", printable(entity));
        for (source, tags) in sources {
            let _ = writeln!(out, "== Source {source} =");
            let tags: Vec<_> = tags.iter().map(|t| printable(t)).collect();
            let _ = writeln!(out, "=Tags: [{}]", tags.join(" "));
        }
        let _ = writeln!(out, "===\n");
    }
    out
}

fn collectors(out: &mut String, health: &HealthReport) {
    for c in &health.collectors {
        let name = c.get("name").and_then(|v| v.as_str()).unwrap_or("?");
        let source = c.get("source").and_then(|v| v.as_str()).unwrap_or("?");
        let state = c.get("state").and_then(|v| v.as_str()).unwrap_or("?");
        let synced = c.get("synced").and_then(serde_json::Value::as_bool).unwrap_or(false);
        let detail = c
            .get("reason")
            .or_else(|| c.get("error"))
            .and_then(|v| v.as_str())
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        let restarting = c.get("restarting").and_then(serde_json::Value::as_bool) == Some(true);
        let _ = writeln!(
            out,
            "  {name} [{source}]: {state}{}{}{detail}",
            if restarting { ", restarting" } else { "" },
            if synced { ", synced" } else { "" }
        );
    }
}

/// `health` as text.
pub fn format_health(health: &HealthReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Agent health: {}", if health.live && health.ready { "PASS" } else { "FAIL" });
    let _ = writeln!(out, "  live: {}  ready: {}", health.live, health.ready);
    let _ = writeln!(out, "Collectors:");
    collectors(&mut out, health);
    out
}

/// `status` as text.
pub fn format_status(status: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "==============\nAgent (v{})\n==============", status.version);
    let _ = writeln!(out, "  PID: {}", status.pid);
    let _ = writeln!(out, "  Uptime: {} s", status.uptime_secs);
    let _ = writeln!(out, "  gRPC API: {}", status.grpc_address);
    let _ = writeln!(out, "  Collectors compiled in: {}", status.compiled_collectors.join(", "));
    let _ = writeln!(out, "  Ready: {}", status.health.ready);
    let _ = writeln!(out, "\nCollectors\n==========");
    collectors(&mut out, &status.health);
    let _ = writeln!(out, "\nWorkloadmeta\n============");
    for (kind, n) in &status.entities {
        let _ = writeln!(out, "  {kind}: {n}");
    }
    let _ = writeln!(out, "\nTagger\n======\n  entities with tags: {}", status.tagged_entities);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn control_characters_from_containers_are_printed_escaped() {
        assert_eq!(printable("plain ü text"), "plain ü text");
        assert_eq!(printable("evil\u{1b}[2J\nfake: line\r"), "evil\\u{1b}[2J\\nfake: line\\r");
        let mut sources = BTreeMap::new();
        sources.insert("workloadmeta-container".to_owned(), vec!["team:a\nb".to_owned()]);
        let mut entities = BTreeMap::new();
        entities.insert("container_id://x".to_owned(), sources);
        let text = format_tagger_list(&TaggerList { entities });
        assert!(text.contains("=Tags: [team:a\\nb]"), "{text}");
        assert!(!text.contains("a\nb"));
    }

    #[test]
    fn tagger_list_follows_the_datadog_layout() {
        let mut sources = BTreeMap::new();
        sources.insert("workloadmeta-container".to_owned(), vec!["a:1".to_owned(), "b:2".to_owned()]);
        let mut entities = BTreeMap::new();
        entities.insert("container_id://abc".to_owned(), sources);
        let text = format_tagger_list(&TaggerList { entities });
        assert_eq!(
            text,
            "=== Entity container_id://abc ===\n== Source workloadmeta-container =\n=Tags: [a:1 b:2]\n===\n\n"
        );
    }

    #[test]
    fn workload_list_blocks_name_kind_sources_and_id() {
        let c = Container { id: "abc".into(), name: "web".into(), ..Container::default() };
        let entry = WorkloadEntry {
            kind: "container".into(),
            id: "abc".into(),
            sources: vec!["runtime".into()],
            merged: Entity::from(c.clone()),
            per_source: Some(vec![crate::report::SourceEntry {
                source: "runtime".into(),
                collector: "docker".into(),
                entity: Entity::from(c),
            }]),
        };
        let mut entities = BTreeMap::new();
        entities.insert("container://abc".into(), entry);
        let text = format_workload_list(&WorkloadList { entities }, true);
        assert!(text.starts_with(
            "=== Entity container sources(merged):[runtime] id: abc ===\n----------- Entity ID -----------\n"
        ));
        assert!(text.contains("Name: web\n"));
        assert!(text.contains("=== Entity container source:runtime id: abc ===\nCollector: docker\n"));
    }
}
