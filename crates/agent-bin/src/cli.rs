//! The CLI's query commands: they fetch JSON from a running agent's HTTP API and print it in the
//! Datadog Agent's text formats, or as JSON.
//!
//! The CLI connects to 127.0.0.1. It queries the TLS API with the agent's token, trusting only
//! the agent's IPC certificate, and the probes in plain HTTP. An answer is read up to
//! [`MAX_ANSWER`] bytes.

use std::fmt::Write as _;

use wm_core::{
    Container, ContainerImageMetadata, EcsTask, Entity, KubernetesMetadata, KubernetesPod, Process, StrMap, Timestamp,
};

use crate::report::{HealthReport, StatusReport, TaggerList, WorkloadEntry, WorkloadList};

/// Why a query of the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No agent answered: the connection, the TLS handshake or the HTTP exchange failed, or no
    /// answer came within 10 s.
    #[error("no agent answers on {url}: is `agent run` running, on port {port}? ({reason})")]
    NoAgent {
        /// The URL queried.
        url: String,
        /// The port tried.
        port: u16,
        /// Why the query failed.
        reason: String,
    },
    /// The answer could not be used (an error status, a body too large or not the JSON
    /// expected), or the query could not be made (a certificate to trust that does not parse).
    #[error("the agent on {url} answered {reason}")]
    BadAnswer {
        /// The URL queried.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

/// Returns the message of the innermost cause of `e`, such as "Connection refused (os error
/// 111)", which says more than the errors that wrap it.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// The largest answer the CLI reads, in bytes: 256 MiB, in which a verbose workload list of
/// 10,000 containers fits.
pub const MAX_ANSWER: usize = 256 << 20;

/// How long a query may take, from connecting to the end of the answer.
const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How the CLI reaches a running agent's API on 127.0.0.1.
///
/// For the TLS API: the port, the bearer token (which the CLI reads from the `auth_token` file,
/// as Datadog's CLI does) and the IPC certificate to trust. Without a certificate the CLI speaks
/// plain HTTP, as the probes' port does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Api {
    /// The port on 127.0.0.1.
    pub port: u16,
    /// The bearer token sent with each request, if any.
    pub token: Option<String>,
    /// The IPC certificate (PEM) that the server must present; `None` means plain HTTP.
    pub cert_pem: Option<String>,
}

impl Api {
    /// Returns a plain HTTP API on `port`, with `token` sent in each request if there is one
    /// (the probes need none).
    pub fn new(port: u16, token: Option<String>) -> Self {
        Self { port, token, cert_pem: None }
    }

    /// Returns a TLS API on `port`, with `token` sent in each request if there is one, whose
    /// server must present the certificate `cert_pem`: the CLI trusts no other.
    pub fn tls(port: u16, token: Option<String>, cert_pem: String) -> Self {
        Self { port, token, cert_pem: Some(cert_pem) }
    }
}

impl From<u16> for Api {
    /// Returns the probes on `port`: plain HTTP, no token.
    fn from(port: u16) -> Self {
        Self::new(port, None)
    }
}

/// Builds a TLS client that trusts only the certificates in `cert_pem` and offers `http/1.1` by
/// ALPN, which tells the agent's `cmd_port` to serve the CLI's API rather than gRPC.
fn tls_connector(cert_pem: &str) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(cert.map_err(|e| format!("the IPC certificate: {e}"))?).map_err(|e| e.to_string())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
}

/// Sends one `GET path` on a new connection, and returns the status and the body, read up to
/// [`MAX_ANSWER`].
///
/// An error carries a flag: `true` when no agent answered (the connection, the TLS handshake or
/// the HTTP exchange failed), `false` when the query could not be made or the body not read.
async fn get(api: &Api, path: &str) -> Result<(u16, Vec<u8>), (bool, String)> {
    use http_body_util::BodyExt;
    let not_there = |e: &dyn std::fmt::Display| (true, e.to_string());
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", api.port)).await.map_err(|e| not_there(&e))?;
    let mut request = hyper::Request::get(path).header(hyper::header::HOST, "localhost");
    if let Some(token) = &api.token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request =
        request.body(http_body_util::Empty::<hyper::body::Bytes>::new()).map_err(|e| (false, e.to_string()))?;
    let response = match &api.cert_pem {
        Some(pem) => {
            let connector = tls_connector(pem).map_err(|e| (false, e))?;
            let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| (false, e.to_string()))?;
            let tls = connector.connect(name, tcp).await.map_err(|e| not_there(&e))?;
            send(hyper_util::rt::TokioIo::new(tls), request).await?
        }
        None => send(hyper_util::rt::TokioIo::new(tcp), request).await?,
    };
    let status = response.status().as_u16();
    let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| (false, format!("reading the answer (at most {} MiB): {e}", MAX_ANSWER >> 20)))?
        .to_bytes();
    Ok((status, body.to_vec()))
}

/// Sends `request` over `io` with HTTP/1.1 and returns the response. An error is flagged `true`:
/// no agent answered.
async fn send<I>(
    io: I,
    request: hyper::Request<http_body_util::Empty<hyper::body::Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, (bool, String)>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| (true, e.to_string()))?;
    // hyper's connection does the reading and writing; it must be polled for the request to go
    // anywhere, so it runs as a task of its own.
    tokio::spawn(connection);
    sender.send_request(request).await.map_err(|e| (true, root_cause(&e)))
}

/// Fetches `path` from the agent's API and parses the body as JSON of type `T`.
///
/// A 503 is read like a success, because `/health` answers 503 with its report when the agent
/// is not ready.
///
/// # Errors
///
/// Returns the errors of [`fetch_text`], and [`CliError::BadAnswer`] when the body is not JSON of
/// type `T`.
pub async fn fetch<T: serde::de::DeserializeOwned>(api: impl Into<Api>, path: &str) -> Result<T, CliError> {
    let (url, status, bytes) = fetch_bytes(api.into(), path).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| CliError::BadAnswer { url, reason: format!("HTTP {status} with a body that does not parse: {e}") })
}

/// Fetches `path` from the agent's API as text, such as `/metrics`. Bytes that are not UTF-8 are
/// replaced with U+FFFD.
///
/// # Errors
///
/// Returns [`CliError::NoAgent`] when nothing accepts the connection, the TLS handshake fails
/// (for example because the server does not present the trusted certificate), the HTTP exchange
/// fails, or no answer comes within 10 s. Returns [`CliError::BadAnswer`] when the status is
/// neither a success nor 503, when the body is over [`MAX_ANSWER`], or when the certificate to
/// trust does not parse.
pub async fn fetch_text(api: impl Into<Api>, path: &str) -> Result<String, CliError> {
    let (_, _, bytes) = fetch_bytes(api.into(), path).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Runs [`get`] within [`QUERY_TIMEOUT`] and turns its errors into [`CliError`]s. Returns the URL
/// (for the caller's own errors), the status and the body.
async fn fetch_bytes(api: Api, path: &str) -> Result<(String, u16, Vec<u8>), CliError> {
    let port = api.port;
    let scheme = if api.cert_pem.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}{path}");
    let (status, bytes) = match tokio::time::timeout(QUERY_TIMEOUT, get(&api, path)).await {
        Err(_) => return Err(CliError::NoAgent { url, port, reason: format!("no answer within {QUERY_TIMEOUT:?}") }),
        Ok(Err((true, reason))) => return Err(CliError::NoAgent { url, port, reason }),
        Ok(Err((false, reason))) => return Err(CliError::BadAnswer { url, reason }),
        Ok(Ok(answer)) => answer,
    };
    // `/health` answers 503 with its report when not ready; anything else must be a success.
    if !(200..300).contains(&status) && status != 503 {
        return Err(CliError::BadAnswer {
            url,
            reason: format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes).trim()),
        });
    }
    Ok((url, status, bytes))
}

/// Formats a timestamp, or returns an empty string when there is none.
fn time(t: Option<Timestamp>) -> String {
    t.map(|t| t.to_string()).unwrap_or_default()
}

/// Returns `text`, which may come from a container or a daemon, made safe to print on a
/// terminal.
///
/// Control characters, such as an escape sequence in a label or a newline that would fake a line
/// of output, are written escaped (`\u{1b}`, `\n`). Text without any is returned as it is,
/// without a copy.
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

/// Writes a `key: value` line, the value made printable.
fn kv(out: &mut String, key: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{key}: {}", printable(&value.to_string()));
}

/// Writes a titled section of `key: value` lines, or nothing when `map` is empty.
fn map_section(out: &mut String, title: &str, map: &StrMap) {
    if map.is_empty() {
        return;
    }
    let _ = writeln!(out, "----------- {title} -----------");
    for (k, v) in map.iter() {
        let _ = writeln!(out, "{}: {}", printable(k), printable(v));
    }
}

/// Writes a container's fields; its labels and env vars only when `verbose`.
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
    kv(out, "PID", c.state.pid);
    kv(out, "Hostname", &c.details.hostname);
    kv(out, "Owner", c.owner.as_ref().map(ToString::to_string).unwrap_or_default());
    kv(out, "Cgroup Path", &c.details.cgroup_path);
    if !c.details.collector_tags.is_empty() {
        kv(out, "Collector Tags", c.details.collector_tags.join(", "));
    }
    if !c.details.allocated_resources.is_empty() {
        let devices: Vec<String> =
            c.details.allocated_resources.iter().map(|r| format!("{}={}", r.name, r.id)).collect();
        kv(out, "Allocated Resources", devices.join(", "));
    }
    if verbose {
        map_section(out, "Labels", &c.labels);
        map_section(out, "Env Variables", &c.env);
    }
}

/// Writes a pod's fields; its labels and annotations only when `verbose`.
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

/// Writes an ECS task's fields; its tags only when `verbose`.
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

/// Writes a Kubernetes object's metadata; its labels and annotations only when `verbose`.
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

/// Writes a process: its pids, command name, container and language; its command line (kept
/// only when `process_config.keep_cmdline` is set) only when `verbose`.
fn process_body(out: &mut String, p: &Process, verbose: bool) {
    let _ = writeln!(out, "----------- Entity ID -----------");
    kv(out, "Kind", format!("process ID: {}", p.id));
    let _ = writeln!(out, "----------- Process -----------");
    kv(out, "PID", p.pid.to_string());
    kv(out, "Namespace PID", p.ns_pid.to_string());
    kv(out, "Parent PID", p.ppid.to_string());
    kv(out, "Name", &p.name);
    kv(out, "Container ID", &p.container_id);
    kv(out, "Language", p.language.map_or("", |l| l.as_str()));
    kv(out, "Creation time", p.creation_time.map(|t| t.to_string()).unwrap_or_default());
    if verbose && !p.cmdline.is_empty() {
        kv(out, "Command line", p.cmdline.join(" "));
    }
}

/// Writes a container image: its tags, digests, platform and size; its layers only when
/// `verbose`.
fn image_body(out: &mut String, i: &ContainerImageMetadata, verbose: bool) {
    let _ = writeln!(out, "----------- Entity ID -----------");
    kv(out, "Kind", format!("container_image_metadata ID: {}", i.id));
    let _ = writeln!(out, "----------- Image -----------");
    kv(out, "Name", &i.name);
    kv(out, "Repo tags", i.repo_tags.join(" "));
    kv(out, "Repo digests", i.repo_digests.join(" "));
    kv(
        out,
        "Platform",
        format!(
            "{}/{}{}",
            i.os,
            i.architecture,
            if i.variant.is_empty() { String::new() } else { format!("/{}", i.variant) }
        ),
    );
    kv(out, "Size", format!("{} bytes", i.size_bytes));
    kv(out, "Layers", i.layers.len().to_string());
    if verbose {
        for layer in &i.layers {
            kv(out, "Layer", format!("{} {} bytes {}", layer.digest, layer.size_bytes, layer.created_by));
        }
    }
}

/// Writes an entity's fields, whatever its kind.
fn entity_body(out: &mut String, entity: &Entity, verbose: bool) {
    match entity {
        Entity::Container(c) => container_body(out, c, verbose),
        Entity::KubernetesPod(p) => pod_body(out, p, verbose),
        Entity::EcsTask(t) => task_body(out, t, verbose),
        Entity::KubernetesMetadata(m) => metadata_body(out, m, verbose),
        Entity::Process(p) => process_body(out, p, verbose),
        Entity::ContainerImageMetadata(i) => image_body(out, i, verbose),
    }
}

/// Writes one entity of the workload list: its merged view, then each source's version if the
/// list carries them.
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

/// Formats a workload list as `agent workload-list` prints it; `verbose` adds labels,
/// annotations, env vars and ECS tags.
pub fn format_workload_list(list: &WorkloadList, verbose: bool) -> String {
    let mut out = String::new();
    for entry in list.entities.values() {
        workload_entry(&mut out, entry, verbose);
    }
    out
}

/// Formats a tagger list as `agent tagger-list` prints it: a block per entity, a line of tags
/// per source.
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

/// Writes one line per collector: its name, source and state, whether it is restarting and
/// synced, and its reason or error.
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
        // A collector retrying after it synced still serves what it last sent: degraded.
        let (state, synced) = if state == "retrying" && synced { ("degraded", false) } else { (state, synced) };
        let _ = writeln!(
            out,
            "  {name} [{source}]: {state}{}{}{detail}",
            if restarting { ", restarting" } else { "" },
            if synced { ", synced" } else { "" }
        );
    }
}

/// Formats a health report as `agent health` prints it: `PASS` only when the agent is live and
/// ready.
pub fn format_health(health: &HealthReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Agent health: {}", if health.live && health.ready { "PASS" } else { "FAIL" });
    let _ = writeln!(out, "  live: {}  ready: {}", health.live, health.ready);
    let _ = writeln!(out, "Collectors:");
    collectors(&mut out, health);
    out
}

/// Formats a status report as `agent status` prints it.
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
    fn a_collector_retrying_after_it_synced_reads_degraded() {
        let collector = |state: &str, synced: bool| {
            serde_json::json!({ "name": "kube_metadata", "source": "cluster_orchestrator", "state": state,
                "synced": synced, "error": "cluster agent unreachable: connection refused" })
        };
        let health = HealthReport {
            live: true,
            ready: true,
            collectors: vec![collector("retrying", true), collector("retrying", false)],
        };
        let text = format_health(&health);
        assert!(
            text.contains(
                "kube_metadata [cluster_orchestrator]: degraded (cluster agent unreachable: connection refused)"
            ),
            "{text}"
        );
        assert!(text.contains("kube_metadata [cluster_orchestrator]: retrying (cluster agent"), "{text}");
    }

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
