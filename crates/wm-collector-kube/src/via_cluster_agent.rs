//! `kube_metadata` through the cluster agent (`cluster_agent.enabled`): the node's view from the
//! cluster agent's node stream instead of the node agent's own API-server watches.
//!
//! The cluster agent sends the node's view once (every namespace's labels and annotations, the
//! node's, and the services each pod of the node backs) and then each change as it happens
//! ([`NodeUpdate`], one JSON object per line, `docs/wire/cluster-agent-api.md`). The pods
//! themselves come from the store: those the kubelet reported (source `node_orchestrator`),
//! read again every second. From both, the run builds the same entities as with its own
//! watches, and sends what changed.
//!
//! The cluster agent unreachable, or silent for three heartbeats, ends the run with a retriable
//! error `cluster agent unreachable: <why>`: the store keeps what the run sent, health shows the
//! collector degraded with that reason, and the store starts it again after its backoff (a
//! Service in front of the replicas sends the new connection to one that is up). It never falls
//! back to watching the API server itself: a thousand node agents doing that at once is the
//! load the cluster agent exists to take off the API server.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{AsyncBufReadExt, AsyncReadExt};
use wm_core::{CollectorContext, CollectorError, Entity, Kind, Source};

use crate::cluster::{NodeUpdate, NodeView};
use crate::metadata::{KubeMetadataConfig, Sent, node_entity, pod_entity};

/// The longest line read from the stream; a longer one ends the run (a view of 110 pods with
/// their services and a few hundred namespaces is far smaller).
const MAX_LINE: usize = 16 << 20;

/// How long the run waits for a line: three of the cluster agent's 15-second heartbeats.
const SILENCE: Duration = Duration::from_secs(45);

/// How often the pods the kubelet reported are read from the store.
const POD_CHECK: Duration = Duration::from_secs(1);

/// The cluster agent's URL: `cluster_agent.url` (`https://` added when it has no scheme), else
/// `https://` and the `<SERVICE>_SERVICE_HOST` and `<SERVICE>_SERVICE_PORT` variables that
/// Kubernetes sets for the Service `cluster_agent.kubernetes_service_name` (upper-cased, `-`
/// as `_`), as Datadog's node agent finds it. `env` reads an environment variable.
///
/// # Errors
///
/// A message naming what is missing when neither gives an address, and one for a URL whose
/// scheme is not `https` (the token would cross the network in clear; Datadog refuses it too).
pub fn endpoint(config: &KubeMetadataConfig, env: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let url = config.cluster_agent_url.trim();
    if !url.is_empty() {
        let url = match url.split_once("://") {
            None => format!("https://{url}"),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => format!("https://{rest}"),
            Some((scheme, _)) => {
                return Err(format!(
                    "cluster_agent.url `{url}`: the scheme must be https, not {scheme} (the token would travel in clear)"
                ));
            }
        };
        return Ok(url.trim_end_matches('/').to_owned());
    }
    let service = config.cluster_agent_kubernetes_service_name.trim();
    let prefix = service.to_uppercase().replace('-', "_");
    let (host, port) = (format!("{prefix}_SERVICE_HOST"), format!("{prefix}_SERVICE_PORT"));
    match (env(&host).filter(|h| !h.is_empty()), env(&port).filter(|p| !p.is_empty())) {
        (Some(h), Some(p)) if h.contains(':') => Ok(format!("https://[{h}]:{p}")),
        (Some(h), Some(p)) => Ok(format!("https://{h}:{p}")),
        _ => Err(format!(
            "cluster_agent.enabled, but no cluster_agent.url and no {host} and {port} (the Service \
             cluster_agent.kubernetes_service_name `{service}` in this pod's namespace)"
        )),
    }
}

/// Builds the client of the cluster agent at `url`: its certificate is not verified (the
/// cluster agent's is self-signed, as Datadog's node agents accept it); the token authenticates.
fn client(url: &str) -> Result<kube::Client, CollectorError> {
    let uri: http::Uri =
        url.parse().map_err(|e| CollectorError::permanent(format!("{}: cluster_agent.url `{url}`", super::NAME), e))?;
    let mut config = kube::Config::new(uri);
    config.accept_invalid_certs = true;
    // No roots: none are needed with `accept_invalid_certs`, and without this kube would load
    // the system's, failing in an image that has none.
    config.root_cert = Some(Vec::new());
    config.read_timeout = Some(SILENCE);
    kube::Client::try_from(config)
        .map_err(|e| CollectorError::permanent(format!("{}: the cluster agent client for {url}", super::NAME), e))
}

/// The error for a cluster agent that answered the stream request with an error `status`.
fn refused(url: &str, status: u16) -> CollectorError {
    let why = match status {
        401 | 403 => format!("{url} refused cluster_agent.auth_token ({status})"),
        404 => format!("{url} has no node stream (404: a Datadog cluster agent, or an older one of ours?)"),
        _ => return unreachable(format!("{url} answered {status}")),
    };
    CollectorError::Retriable { context: format!("cluster agent: {why}"), source: None }
}

/// The error that ends a run whose cluster agent cannot be reached or stopped answering.
fn unreachable(why: impl std::fmt::Display) -> CollectorError {
    CollectorError::Retriable { context: format!("cluster agent unreachable: {why}"), source: None }
}

/// Reads the rest of one line of at most [`MAX_LINE`] bytes into `line`, giving up at
/// `deadline`; `Ok(false)` at the end of the stream.
///
/// Cancel-safe: what a cancelled call read stays in `line`, and the next call goes on from
/// there; the caller clears `line` once it has used a whole line.
async fn read_line<R: futures::AsyncBufRead + Unpin>(
    stream: &mut R,
    line: &mut Vec<u8>,
    deadline: tokio::time::Instant,
) -> Result<bool, CollectorError> {
    let room = (MAX_LINE + 1).saturating_sub(line.len()) as u64;
    let mut limited = (&mut *stream).take(room);
    let n = match tokio::time::timeout_at(deadline, limited.read_until(b'\n', line)).await {
        Err(_) => return Err(unreachable(format!("no line, not even a heartbeat, in {} s", SILENCE.as_secs()))),
        Ok(Err(e)) => return Err(unreachable(e)),
        Ok(Ok(n)) => n,
    };
    if line.len() > MAX_LINE {
        return Err(unreachable(format!("a line of the node stream is longer than {MAX_LINE} bytes")));
    }
    Ok(n > 0 || !line.is_empty())
}

/// The pods the kubelet reported, as `uid → (name, namespace)`.
fn kubelet_pods(ctx: &CollectorContext) -> BTreeMap<String, (String, String)> {
    ctx.reader
        .list_from(Kind::KubernetesPod, Source::NodeOrchestrator)
        .iter()
        .filter_map(Entity::as_kubernetes_pod)
        .map(|p| (p.id.to_string(), (p.name.to_string(), p.namespace.to_string())))
        .collect()
}

/// Builds the entities from the view and the kubelet's pods: a partial pod per pod (its
/// namespace's labels and annotations, and the services it backs) and the node's metadata.
pub fn entities(node: &str, view: &NodeView, pods: &BTreeMap<String, (String, String)>) -> Vec<Entity> {
    let keep = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
        m.iter().filter(|(k, _)| crate::keeps_annotation(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let annotations: BTreeMap<&str, BTreeMap<String, String>> =
        view.namespaces.iter().map(|(name, m)| (name.as_str(), keep(&m.annotations))).collect();
    let empty = BTreeMap::new();
    let mut out: Vec<Entity> = pods
        .iter()
        .map(|(uid, (name, namespace))| {
            let labels = view.namespaces.get(namespace).map_or(&empty, |m| &m.labels);
            let annotations = annotations.get(namespace.as_str()).unwrap_or(&empty);
            let services = view.pods.get(namespace).and_then(|p| p.get(name)).into_iter().flatten().map(String::as_str);
            pod_entity(uid, name, namespace, labels, annotations, services)
        })
        .collect();
    out.push(node_entity(node, &view.node.labels, &keep(&view.node.annotations)));
    out
}

/// Runs `kube_metadata` from the cluster agent's node stream until the store shuts down or the
/// stream fails; see the module docs.
pub(crate) async fn run(config: &KubeMetadataConfig, node: &str, ctx: &CollectorContext) -> Result<(), CollectorError> {
    let url = endpoint(config, |name| std::env::var(name).ok())
        .map_err(|e| CollectorError::Permanent { context: format!("{}: {e}", super::NAME), source: None })?;
    let token = config.cluster_agent_auth_token.expose().trim();
    if token.chars().count() < 32 {
        return Err(CollectorError::Permanent {
            context: format!(
                "{}: cluster_agent.enabled needs cluster_agent.auth_token, the cluster agent's token (32 characters at \
                 least)",
                super::NAME
            ),
            source: None,
        });
    }
    let client = client(&url)?;
    let mut authorization = http::HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|e| CollectorError::permanent(format!("{}: cluster_agent.auth_token", super::NAME), e))?;
    authorization.set_sensitive(true);
    let request = http::Request::get(format!("/api/v1/stream/node/{node}"))
        .header(http::header::AUTHORIZATION, authorization)
        .body(Vec::new())
        .map_err(|e| CollectorError::permanent(format!("{}: the node stream request", super::NAME), e))?;
    let connect = tokio::time::timeout(SILENCE, client.request_stream(request));
    let stream = tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => return Ok(()),
        connected = connect => match connected {
            Err(_) => return Err(unreachable(format!("{url}: no answer in {} s", SILENCE.as_secs()))),
            Ok(Err(kube::Error::Api(status))) => return Err(refused(&url, status.code)),
            Ok(Err(e)) => return Err(unreachable(format!("{url}: {e}"))),
            Ok(Ok(stream)) => stream,
        },
    };
    let mut stream = std::pin::pin!(stream);
    tracing::info!(%url, node, "kube_metadata: following the cluster agent's node stream");
    let mut view = NodeView::default();
    // Whether a snapshot has arrived, and its last line (or the last update's).
    let (mut snapshot, mut complete) = (false, false);
    let mut pods = kubelet_pods(ctx);
    let mut sent = Sent::default();
    let mut line = Vec::new();
    let mut check = tokio::time::interval(POD_CHECK);
    let mut last_line = tokio::time::Instant::now();
    loop {
        let changed = tokio::select! {
            biased;
            () = ctx.cancel.cancelled() => return Ok(()),
            _ = check.tick() => {
                let now = kubelet_pods(ctx);
                let changed = now != pods;
                pods = now;
                changed
            }
            read = read_line(&mut stream, &mut line, last_line + SILENCE) => {
                if !read? || line.last() != Some(&b'\n') {
                    return Err(unreachable(format!("{url}: the node stream ended")));
                }
                last_line = tokio::time::Instant::now();
                let update: Result<NodeUpdate, _> = serde_json::from_slice(&line);
                line.clear();
                let update = update
                    .map_err(|e| unreachable(format!("{url}: a line of the node stream is not an update: {e}")))?;
                snapshot |= update.snapshot;
                complete = !update.more;
                let heartbeat = update.is_heartbeat();
                update.apply_to(&mut view);
                !heartbeat
            }
        };
        // Nothing is sent before the first snapshot has come whole: a run's first send is its
        // full list, and no send shows half of a split update.
        if changed && snapshot && complete {
            sent.send(ctx, entities(node, &view, &pods)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Meta;

    fn config(url: &str, service: &str) -> KubeMetadataConfig {
        KubeMetadataConfig {
            cluster_agent_url: url.into(),
            cluster_agent_kubernetes_service_name: service.into(),
            ..KubeMetadataConfig::default()
        }
    }

    #[test]
    fn the_url_comes_from_the_key_or_the_services_variables() {
        let none = |_: &str| None;
        assert_eq!(endpoint(&config("dca.example:5005/", ""), none).unwrap(), "https://dca.example:5005");
        assert_eq!(endpoint(&config("HTTPS://10.0.0.1:5005", ""), none).unwrap(), "https://10.0.0.1:5005");
        let clear = endpoint(&config("http://10.0.0.1:5005", ""), none).unwrap_err();
        assert!(clear.contains("must be https"), "{clear}");
        let env = |name: &str| match name {
            "DATADOG_CLUSTER_AGENT_SERVICE_HOST" => Some("10.96.0.7".to_owned()),
            "DATADOG_CLUSTER_AGENT_SERVICE_PORT" => Some("5005".to_owned()),
            "DCA_V6_SERVICE_HOST" => Some("fd00::7".to_owned()),
            "DCA_V6_SERVICE_PORT" => Some("5005".to_owned()),
            _ => None,
        };
        assert_eq!(endpoint(&config("", "datadog-cluster-agent"), env).unwrap(), "https://10.96.0.7:5005");
        assert_eq!(endpoint(&config("", "dca-v6"), env).unwrap(), "https://[fd00::7]:5005");
        let missing = endpoint(&config("", "other"), env).unwrap_err();
        assert!(missing.contains("OTHER_SERVICE_HOST"), "{missing}");
    }

    #[test]
    fn every_kubelet_pod_gets_its_namespace_and_services_and_the_node_its_metadata() {
        let labels = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        let mut view =
            NodeView { node: Meta { labels: labels("zone", "a"), ..Meta::default() }, ..NodeView::default() };
        std::sync::Arc::make_mut(&mut view.namespaces)
            .insert("shop".into(), Meta { labels: labels("team", "a"), ..Meta::default() });
        view.pods.insert("shop".into(), BTreeMap::from([("web-1".to_owned(), vec!["web".to_owned()])]));
        let pods = BTreeMap::from([
            ("u1".to_owned(), ("web-1".to_owned(), "shop".to_owned())),
            ("u2".to_owned(), ("batch-1".to_owned(), "shop".to_owned())),
            ("u3".to_owned(), ("x".to_owned(), "unknown-ns".to_owned())),
        ]);
        let out = entities("n1", &view, &pods);
        assert_eq!(out.len(), 4);
        let pod = |uid: &str| {
            out.iter().filter_map(Entity::as_kubernetes_pod).find(|p| &*p.id == uid).expect("the pod").clone()
        };
        assert_eq!(pod("u1").details.kube_services, ["web"]);
        assert_eq!(pod("u1").details.namespace_labels.get("team"), Some("a"));
        assert!(pod("u2").details.kube_services.is_empty());
        assert_eq!(pod("u2").details.namespace_labels.get("team"), Some("a"));
        assert!(pod("u3").details.namespace_labels.is_empty());
        let node = out.iter().find_map(|e| e.as_kubernetes_metadata()).expect("the node");
        assert_eq!((node.name.as_str(), node.labels.get("zone")), ("n1", Some("a")));
    }
}
