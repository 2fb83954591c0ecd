//! The Cloud Controller v3, for what Garden cannot say: an app's current name (after a rename),
//! its space's and org's names, its `tags.datadoghq.com/*` labels and annotations, its sidecars
//! and its isolation segment.
//!
//! - Auth: UAA client credentials. The UAA is `cloud_foundry_cc.uaa_url` when set, else found
//!   through the Cloud Controller's root (`GET /` → `links.uaa.href`, else `links.login.href`);
//!   `POST <uaa>/oauth/token` with HTTP Basic `client_id:client_secret` and
//!   `grant_type=client_credentials`. The token is used until shortly before `expires_in` (30 s,
//!   or a tenth of its lifetime; a lifetime past a day counts as a day), and dropped at once when
//!   a call answers 401.
//! - Where credentials go: the client secret only to the configured UAA URL or to a discovered
//!   one over https (a Cloud Controller that names an `http://` UAA would have the secret sent
//!   in clear text); the bearer token only to the Cloud Controller's own origin (scheme, host
//!   and port of `cloud_foundry_cc.url`). A `pagination.next.href` elsewhere is an error, not a
//!   request: a compromised or misconfigured Cloud Controller cannot make the agent hand its
//!   token to another server.
//! - Apps: `GET /v3/apps?guids=…&include=space.organization&per_page=…`, following
//!   `pagination.next.href`: one walk gives each app with its space and org.
//! - Sidecars (`sidecars_tags`): `GET /v3/apps/<guid>/sidecars?per_page=1`, its
//!   `pagination.total_results`.
//! - Isolation segment (`isolation_segments_tags`): the space's
//!   (`/v3/spaces/<guid>/relationships/isolation_segment`), else the org's default
//!   (`/v3/organizations/<guid>/relationships/default_isolation_segment`), then its name
//!   (`/v3/isolation_segments/<guid>`). The Datadog cluster agent takes the org's first; an app
//!   runs in its space's segment when the space has one, so the space's comes first here.
//!
//! [`Enricher`] runs this off the pull path: the collector says which apps it sees, a task of
//! its own fetches those missing or older than `poll_interval`, and the pull reads what is there.
//! A slow or failing Cloud Controller delays names, never Garden's data.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use wm_core::sync::MutexExt;
use wm_core::{FileStamp, Secret};

use crate::convert::AppMetadata;
use crate::garden::is_query_safe;
use crate::https::{Https, basic_auth};

/// The deadline of each Cloud Controller and UAA request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// App GUIDs per `/v3/apps` request (keeps the URL short).
const GUIDS_PER_REQUEST: usize = 100;
/// A token is renewed this long before it expires at most (a tenth of its lifetime when shorter).
const TOKEN_MARGIN: Duration = Duration::from_secs(30);
/// The longest wait between two attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The longest a UAA token is used, whatever its `expires_in` says (a huge value would overflow
/// the deadline's arithmetic).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The Cloud Controller part of the config, by the Datadog Agent's key names
/// (`cloud_foundry_cc.*`); `ca_file`, `sidecars_tags` and `isolation_segments_tags` are ours
/// (Datadog's cluster agent reads the last two as `cluster_agent.*`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CcConfig {
    /// `cloud_foundry_cc.url`: the Cloud Controller's API; enrichment is off when unset.
    #[serde(rename = "cloud_foundry_cc.url")]
    pub url: Option<String>,
    /// `cloud_foundry_cc.client_id`: a UAA client with `cloud_controller.admin_read_only` or
    /// `cloud_controller.global_auditor`.
    #[serde(rename = "cloud_foundry_cc.client_id")]
    pub client_id: String,
    /// `cloud_foundry_cc.uaa_url` (ours): the UAA to ask for tokens. Unset, it is found through
    /// the Cloud Controller's root and must be https.
    #[serde(rename = "cloud_foundry_cc.uaa_url")]
    pub uaa_url: Option<String>,
    /// `cloud_foundry_cc.client_secret`: never shown (see [`Secret`]).
    #[serde(rename = "cloud_foundry_cc.client_secret")]
    pub client_secret: Secret,
    /// `cloud_foundry_cc.skip_ssl_validation`.
    #[serde(rename = "cloud_foundry_cc.skip_ssl_validation")]
    pub skip_ssl_validation: bool,
    /// `cloud_foundry_cc.ca_file`: a PEM CA the Cloud Controller's and UAA's certificates chain
    /// to, beside the system's; read again before a poll when the file changed (a rotated CA).
    #[serde(rename = "cloud_foundry_cc.ca_file")]
    pub ca_file: Option<PathBuf>,
    /// `cloud_foundry_cc.poll_interval` (seconds, default 60): how long an app's metadata is kept
    /// before it is asked again.
    #[serde(rename = "cloud_foundry_cc.poll_interval")]
    pub poll_interval: u64,
    /// `cloud_foundry_cc.apps_batch_size` (default 5,000, the Cloud Controller's most): `per_page`.
    #[serde(rename = "cloud_foundry_cc.apps_batch_size")]
    pub apps_batch_size: u32,
    /// `cloud_foundry_cc.sidecars_tags`: `sidecar_present` and `sidecar_count` tags.
    #[serde(rename = "cloud_foundry_cc.sidecars_tags")]
    pub sidecars_tags: bool,
    /// `cloud_foundry_cc.isolation_segments_tags`: `segment_id` and `segment_name` tags.
    #[serde(rename = "cloud_foundry_cc.isolation_segments_tags")]
    pub isolation_segments_tags: bool,
}

impl Default for CcConfig {
    fn default() -> Self {
        Self {
            url: None,
            uaa_url: None,
            client_id: String::new(),
            client_secret: Secret::default(),
            skip_ssl_validation: false,
            ca_file: None,
            poll_interval: 60,
            apps_batch_size: 5000,
            sidecars_tags: false,
            isolation_segments_tags: false,
        }
    }
}

impl CcConfig {
    /// The API's URL when enrichment is on.
    pub fn enabled_url(&self) -> Option<&str> {
        self.url.as_deref().map(|u| u.trim_end_matches('/')).filter(|u| !u.is_empty())
    }

    /// Why the config cannot work, if it cannot: enrichment on without a client, a CA file that
    /// is not there.
    pub fn validate(&self) -> Result<(), String> {
        if self.enabled_url().is_none() {
            return Ok(());
        }
        if self.client_id.is_empty() {
            return Err(
                "cloud_foundry_cc.url is set but cloud_foundry_cc.client_id is not (a UAA client is needed)".into()
            );
        }
        if let Some(ca) = self.ca_path()
            && !ca.is_file()
        {
            return Err(format!("cloud_foundry_cc.ca_file {} is not a file", ca.display()));
        }
        Ok(())
    }

    /// `ca_file`, when one is named.
    fn ca_path(&self) -> Option<&std::path::Path> {
        self.ca_file.as_deref().filter(|p| !p.as_os_str().is_empty())
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.poll_interval.max(1))
    }
}

/// The stamp of the file at `path` now, `None` when it cannot be read.
fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    std::fs::metadata(path).ok().map(|m| FileStamp::of(&m))
}

/// What went wrong with the Cloud Controller or the UAA.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CcError(String);

/// A Cloud Controller client with its UAA token.
#[derive(Debug)]
pub struct CloudController {
    config: CcConfig,
    url: String,
    client: Https,
    /// `ca_file`'s stamp when `client` was built: a rotated CA is read again before the next poll.
    ca_stamp: Option<FileStamp>,
    token_url: Option<String>,
    token: Option<(Secret, Instant)>,
    /// Isolation segment names by GUID (they do not change names often; kept with the apps' TTL).
    segments: HashMap<String, (Instant, String)>,
}

/// A `/v3` list page.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Page {
    pagination: Pagination,
    resources: Vec<Value>,
    included: Included,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Pagination {
    total_results: u64,
    next: Option<Link>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Link {
    href: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Included {
    spaces: Vec<Value>,
    organizations: Vec<Value>,
}

/// A URL's scheme, host and port (the default port of the scheme when none is written): two
/// URLs of one origin reach the same server.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of an absolute `http` or `https` URL; `None` for anything else.
    fn of(url: &str) -> Option<Self> {
        let uri: http::Uri = url.parse().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return None,
        };
        let authority = uri.authority()?;
        // A user-info part (`https://cc@evil/`) is no part of an origin we trust.
        if authority.as_str().contains('@') {
            return None;
        }
        let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
        Some(Self { scheme, host, port: authority.port_u16().unwrap_or(default_port) })
    }
}

fn header_value(text: &str) -> Result<HeaderValue, CcError> {
    HeaderValue::from_str(text).map_err(|_| CcError("a credential or token is not a valid header value".into()))
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    path.iter().try_fold(value, |v, key| v.get(key)).and_then(Value::as_str).unwrap_or_default()
}

/// `tags.datadoghq.com/<k>` labels and annotations of a resource, as `<k>:<value>` (annotations
/// first, a label of the same key wins).
fn datadog_tags(resource: &Value, into: &mut Vec<String>) {
    let mut found: Vec<(String, String)> = Vec::new();
    for section in ["annotations", "labels"] {
        let Some(map) = resource.get("metadata").and_then(|m| m.get(section)).and_then(Value::as_object) else {
            continue;
        };
        for (key, value) in map {
            let (Some(key), Some(value)) = (key.strip_prefix("tags.datadoghq.com/"), value.as_str()) else { continue };
            if key.is_empty() || value.is_empty() {
                continue;
            }
            found.retain(|(k, _)| k != key);
            found.push((key.to_owned(), value.to_owned()));
        }
    }
    found.sort();
    into.extend(found.into_iter().map(|(k, v)| format!("{k}:{v}")));
}

impl CloudController {
    /// A client for `config` (enrichment on). No I/O but reading `ca_file`.
    ///
    /// # Errors
    ///
    /// `cloud_foundry_cc.url` is not set, or `ca_file` holds no readable PEM certificate.
    pub fn new(config: CcConfig) -> Result<Self, CcError> {
        let url = config.enabled_url().ok_or_else(|| CcError("cloud_foundry_cc.url is not set".into()))?.to_owned();
        let ca_stamp = config.ca_path().and_then(stamp);
        let client = Self::https(&config)?;
        Ok(Self { config, url, client, ca_stamp, token_url: None, token: None, segments: HashMap::new() })
    }

    fn https(config: &CcConfig) -> Result<Https, CcError> {
        Https::new(config.ca_path(), config.skip_ssl_validation, REQUEST_TIMEOUT)
            .map_err(|e| CcError(format!("cloud_foundry_cc: {e}")))
    }

    /// Builds the client again when `ca_file` changed since it was read (a rotated CA). A file
    /// that cannot be read now (half written, say) keeps the old client and is tried at the next
    /// poll.
    fn reload_ca(&mut self) {
        let Some(path) = self.config.ca_path() else { return };
        let now = stamp(path);
        if now == self.ca_stamp {
            return;
        }
        match Self::https(&self.config) {
            Ok(client) => {
                tracing::info!(ca_file = %path.display(), "cloud foundry: the CA file changed, read again");
                self.client = client;
                self.ca_stamp = now;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cloud foundry: the CA file changed and cannot be read; kept the old one")
            }
        }
    }

    async fn token(&mut self) -> Result<String, CcError> {
        if let Some((token, until)) = &self.token
            && Instant::now() < *until
        {
            return Ok(token.expose().to_owned());
        }
        let token_url = match (&self.token_url, self.config.uaa_url.as_deref().filter(|u| !u.is_empty())) {
            (Some(url), _) => url.clone(),
            (None, Some(configured)) => {
                let url = format!("{}/oauth/token", configured.trim_end_matches('/'));
                self.token_url = Some(url.clone());
                url
            }
            (None, None) => {
                let root = self.send(Method::GET, &format!("{}/", self.url), HeaderMap::new(), Bytes::new()).await?;
                let uaa = [str_at(&root, &["links", "uaa", "href"]), str_at(&root, &["links", "login", "href"])]
                    .into_iter()
                    .find(|u| !u.is_empty())
                    .ok_or_else(|| CcError(format!("{}/ names no UAA (links.uaa.href)", self.url)))?;
                if Origin::of(uaa).is_none_or(|o| o.scheme != "https") {
                    return Err(CcError(format!(
                        "{}/ names the UAA {uaa:?}, which is not https: the client secret is not sent there \
                         (set cloud_foundry_cc.uaa_url to use it anyway)",
                        self.url
                    )));
                }
                let url = format!("{}/oauth/token", uaa.trim_end_matches('/'));
                self.token_url = Some(url.clone());
                url
            }
        };
        let mut headers = HeaderMap::new();
        let auth = basic_auth(&self.config.client_id, self.config.client_secret.expose());
        headers.insert(header::AUTHORIZATION, header_value(&auth)?);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let form = Bytes::from_static(b"grant_type=client_credentials");
        let answer =
            self.send(Method::POST, &token_url, headers, form).await.map_err(|e| CcError(format!("UAA token: {e}")))?;
        let (token, lifetime) = token_from(&answer).map_err(|e| CcError(format!("{e} from {token_url}")))?;
        let margin = TOKEN_MARGIN.min(lifetime / 10);
        self.token = Some((Secret::new(token.clone()), Instant::now() + lifetime.saturating_sub(margin)));
        Ok(token)
    }

    async fn send(&self, method: Method, url: &str, headers: HeaderMap, body: Bytes) -> Result<Value, CcError> {
        let (status, body) = self.client.send(method, url, headers, body).await.map_err(CcError)?;
        if !status.is_success() {
            let said: Value = serde_json::from_slice(&body).unwrap_or_default();
            // The Cloud Controller says `errors: [{title, detail}]`; the UAA, OAuth's `error` and
            // `error_description`.
            let words = |e: &Value, a: &str, b: &str| format!("{} {}", str_at(e, &[a]), str_at(e, &[b]));
            let said = said["errors"]
                .get(0)
                .map_or_else(|| words(&said, "error", "error_description"), |e| words(e, "title", "detail"));
            return Err(CcError(format!("{url}: status {status} {}", said.trim()).trim_end().to_owned()));
        }
        serde_json::from_slice(&body).map_err(|e| CcError(format!("{url}: does not parse: {e}")))
    }

    /// `GET` a Cloud Controller URL with the token; a 401 drops the token and tries once more.
    async fn get(&mut self, url: &str) -> Result<Value, CcError> {
        for attempt in 0..2 {
            let token = self.token().await?;
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, header_value(&format!("bearer {token}"))?);
            headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
            match self.send(Method::GET, url, headers, Bytes::new()).await {
                Err(e) if attempt == 0 && e.0.contains("status 401") => {
                    tracing::debug!(error = %e, "cloud foundry: token refused, asking the UAA for a new one");
                    self.token = None;
                }
                other => return other,
            }
        }
        Err(CcError(format!("{url}: refused twice")))
    }

    /// The metadata of these apps (those the Cloud Controller does not know are absent).
    ///
    /// # Errors
    ///
    /// The UAA or the Cloud Controller failed, refused the client, or answered what does not parse.
    pub async fn apps(&mut self, guids: &[String]) -> Result<HashMap<String, AppMetadata>, CcError> {
        self.reload_ca();
        let guids: Vec<&String> = guids.iter().filter(|g| is_query_safe(g)).collect();
        let mut apps = HashMap::new();
        let per_page = self.config.apps_batch_size.clamp(1, 5000);
        for chunk in guids.chunks(GUIDS_PER_REQUEST) {
            let joined = chunk.iter().map(|g| g.as_str()).collect::<Vec<_>>().join(",");
            let mut next =
                Some(format!("{}/v3/apps?guids={joined}&include=space.organization&per_page={per_page}", self.url));
            let mut pages = 0;
            while let Some(url) = next.take() {
                pages += 1;
                if pages > 1000 {
                    return Err(CcError(format!("{url}: more than 1,000 pages")));
                }
                let page = apps_page_from(self.get(&url).await?).map_err(|e| CcError(format!("{url}: {e}")))?;
                apps.extend(page.apps);
                next = page.next;
                if let Some(href) = &next
                    && Origin::of(href).is_none_or(|o| Some(o) != Origin::of(&self.url))
                {
                    return Err(CcError(format!(
                        "{url}: pagination.next.href {href:?} is not on the Cloud Controller's origin; \
                         not following it (the token goes only to {})",
                        self.url
                    )));
                }
            }
        }
        if self.config.sidecars_tags || self.config.isolation_segments_tags {
            let guids: Vec<String> = apps.keys().cloned().collect();
            for guid in guids {
                let extra = self.extras(&guid, apps.get(&guid).cloned().unwrap_or_default()).await?;
                if let Some(app) = apps.get_mut(&guid) {
                    app.tags.extend(extra);
                }
            }
        }
        Ok(apps)
    }

    /// Sidecar and isolation segment tags of one app.
    async fn extras(&mut self, guid: &str, app: AppMetadata) -> Result<Vec<String>, CcError> {
        let mut tags = Vec::new();
        if self.config.sidecars_tags {
            let url = format!("{}/v3/apps/{guid}/sidecars?per_page=1", self.url);
            let page: Page = serde_json::from_value(self.get(&url).await?).unwrap_or_default();
            let count = page.pagination.total_results.max(page.resources.len() as u64);
            tags.push(format!("sidecar_present:{}", count > 0));
            if count > 0 {
                tags.push(format!("sidecar_count:{count}"));
            }
        }
        if self.config.isolation_segments_tags {
            let mut segment = String::new();
            if is_query_safe(&app.space_id) {
                let url = format!("{}/v3/spaces/{}/relationships/isolation_segment", self.url, app.space_id);
                segment = str_at(&self.get(&url).await?, &["data", "guid"]).to_owned();
            }
            if segment.is_empty() && is_query_safe(&app.org_id) {
                let url =
                    format!("{}/v3/organizations/{}/relationships/default_isolation_segment", self.url, app.org_id);
                segment = str_at(&self.get(&url).await?, &["data", "guid"]).to_owned();
            }
            if is_query_safe(&segment) {
                let ttl = self.config.ttl();
                let name = match self.segments.get(&segment).filter(|(at, _)| at.elapsed() < ttl) {
                    Some((_, name)) => name.clone(),
                    None => {
                        let url = format!("{}/v3/isolation_segments/{segment}", self.url);
                        let name = str_at(&self.get(&url).await?, &["name"]).to_owned();
                        self.segments.insert(segment.clone(), (Instant::now(), name.clone()));
                        name
                    }
                };
                tags.push(format!("segment_id:{segment}"));
                if !name.is_empty() {
                    tags.push(format!("segment_name:{name}"));
                }
            }
        }
        Ok(tags)
    }
}

/// One page of `GET /v3/apps`: its apps by GUID, and the next page's URL if there is one.
#[derive(Debug, Default)]
pub struct AppsPage {
    /// The apps of the page, with their space's and org's names.
    pub apps: HashMap<String, AppMetadata>,
    /// `pagination.next.href`, when present and not empty (not yet checked for its origin).
    pub next: Option<String>,
}

/// Reads one page of `GET /v3/apps?include=space.organization` from its JSON body.
///
/// # Errors
///
/// A body that is not JSON, or not shaped as a list page.
pub fn apps_page(body: &[u8]) -> Result<AppsPage, CcError> {
    apps_page_from(serde_json::from_slice(body).map_err(|e| CcError(format!("does not parse: {e}")))?)
}

fn apps_page_from(value: Value) -> Result<AppsPage, CcError> {
    let page: Page = serde_json::from_value(value).map_err(|e| CcError(format!("not a list page: {e}")))?;
    let mut apps = HashMap::new();
    read_apps(&page, &mut apps);
    Ok(AppsPage { apps, next: page.pagination.next.map(|l| l.href).filter(|h| !h.is_empty()) })
}

/// Reads the UAA's answer to a client-credentials grant: the access token and how long it may
/// be used (`expires_in`, at most a day).
///
/// # Errors
///
/// A body that is not JSON, or has no `access_token`.
pub fn uaa_token(body: &[u8]) -> Result<(String, Duration), CcError> {
    token_from(&serde_json::from_slice(body).map_err(|e| CcError(format!("UAA token: does not parse: {e}")))?)
}

fn token_from(answer: &Value) -> Result<(String, Duration), CcError> {
    let token = answer["access_token"].as_str().filter(|t| !t.is_empty());
    let token = token.ok_or_else(|| CcError("UAA token: no access_token".into()))?.to_owned();
    let lifetime = Duration::from_secs(answer["expires_in"].as_u64().unwrap_or(0)).min(MAX_TOKEN_LIFETIME);
    Ok((token, lifetime))
}

fn read_apps(page: &Page, apps: &mut HashMap<String, AppMetadata>) {
    let spaces: HashMap<&str, &Value> =
        page.included.spaces.iter().map(|s| (str_at(s, &["guid"]), s)).filter(|(g, _)| !g.is_empty()).collect();
    let orgs: HashMap<&str, &Value> =
        page.included.organizations.iter().map(|o| (str_at(o, &["guid"]), o)).filter(|(g, _)| !g.is_empty()).collect();
    for app in &page.resources {
        let guid = str_at(app, &["guid"]);
        if guid.is_empty() {
            continue;
        }
        let space_id = str_at(app, &["relationships", "space", "data", "guid"]);
        let space = spaces.get(space_id);
        let org_id = space.map(|s| str_at(s, &["relationships", "organization", "data", "guid"])).unwrap_or_default();
        let org = orgs.get(org_id);
        let mut tags = Vec::new();
        datadog_tags(app, &mut tags);
        apps.insert(
            guid.to_owned(),
            AppMetadata {
                name: str_at(app, &["name"]).to_owned(),
                space_id: space_id.to_owned(),
                space_name: space.map(|s| str_at(s, &["name"])).unwrap_or_default().to_owned(),
                org_id: org_id.to_owned(),
                org_name: org.map(|o| str_at(o, &["name"])).unwrap_or_default().to_owned(),
                tags,
            },
        );
    }
}

/// What the enricher knows, shared with the pull.
#[derive(Debug, Default)]
struct Known {
    /// By app GUID: when asked, and what came (`None`: the Cloud Controller has no such app).
    apps: HashMap<String, (Instant, Option<AppMetadata>)>,
    /// The apps the last pull saw.
    wanted: BTreeSet<String>,
    /// The last failure, while the Cloud Controller fails.
    failing: Option<String>,
}

/// Fetches app metadata in a task of its own; see the module documentation.
#[derive(Debug)]
pub struct Enricher {
    known: Arc<Mutex<Known>>,
    wake: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Enricher {
    /// Starts the task (needs a tokio runtime). It ends when the enricher is dropped.
    pub fn start(cc: CloudController) -> Self {
        let known = Arc::new(Mutex::new(Known::default()));
        let wake = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(run(cc, known.clone(), wake.clone()));
        Self { known, wake, task }
    }

    /// Says which apps are on the cell now; returns what is known of each (apps not asked yet,
    /// or unknown to the Cloud Controller, are absent). Apps no longer seen are forgotten.
    pub fn see(&self, guids: impl IntoIterator<Item = String>) -> HashMap<String, AppMetadata> {
        let mut known = self.known.locked();
        let wanted: BTreeSet<String> = guids.into_iter().filter(|g| !g.is_empty()).collect();
        let changed = wanted != known.wanted;
        known.wanted = wanted;
        let Known { apps, wanted, .. } = &mut *known;
        apps.retain(|guid, _| wanted.contains(guid));
        let found = wanted.iter().filter_map(|g| Some((g.clone(), apps.get(g)?.1.clone()?))).collect();
        drop(known);
        if changed {
            self.wake.notify_one();
        }
        found
    }

    /// The Cloud Controller's last failure, while it fails.
    pub fn failing(&self) -> Option<String> {
        self.known.locked().failing.clone()
    }
}

impl Drop for Enricher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(mut cc: CloudController, known: Arc<Mutex<Known>>, wake: Arc<tokio::sync::Notify>) {
    let ttl = cc.config.ttl();
    let mut backoff = Duration::from_secs(1);
    loop {
        let due: Vec<String> = {
            let known = known.locked();
            known
                .wanted
                .iter()
                .filter(|g| known.apps.get(*g).is_none_or(|(at, _)| at.elapsed() >= ttl))
                .cloned()
                .collect()
        };
        let mut wait = Duration::from_secs(1).min(ttl);
        if !due.is_empty() {
            match cc.apps(&due).await {
                Ok(found) => {
                    let mut known = known.locked();
                    let now = Instant::now();
                    for guid in due {
                        let app = found.get(&guid).cloned();
                        known.apps.insert(guid, (now, app));
                    }
                    if known.failing.take().is_some() {
                        tracing::info!("cloud foundry: the Cloud Controller answers again");
                    }
                    backoff = Duration::from_secs(1);
                }
                Err(error) => {
                    let error = error.to_string();
                    let mut known = known.locked();
                    if known.failing.as_deref() != Some(error.as_str()) {
                        tracing::warn!(%error, "cloud foundry: the Cloud Controller fails; Garden's names stand until it answers");
                    }
                    known.failing = Some(error);
                    wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let _ = tokio::time::timeout(wait, wake.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port_with_default_ports() {
        let of = |u: &str| Origin::of(u);
        assert_eq!(of("https://cc.example/v3/apps?page=2"), of("https://CC.example:443"));
        assert_ne!(of("https://cc.example/v3"), of("http://cc.example/v3"));
        assert_ne!(of("https://cc.example/v3"), of("https://cc.example:8443/v3"));
        assert_ne!(of("https://cc.example/v3"), of("https://evil.example/v3"));
        assert_eq!(of("https://cc.example@evil.example/v3"), None);
        assert_eq!(of("/v3/apps?page=2"), None);
        assert_eq!(of("ftp://cc.example/"), None);
    }

    #[test]
    fn datadog_metadata_becomes_tags_and_labels_win() {
        let app = serde_json::json!({"metadata": {
            "labels": {"tags.datadoghq.com/env": "prod", "team": "a"},
            "annotations": {"tags.datadoghq.com/env": "staging", "tags.datadoghq.com/service": "shop",
                            "tags.datadoghq.com/": "x", "tags.datadoghq.com/version": ""}}});
        let mut tags = Vec::new();
        datadog_tags(&app, &mut tags);
        assert_eq!(tags, ["env:prod", "service:shop"]);
    }

    #[test]
    fn an_apps_page_with_included_spaces_and_orgs_gives_each_apps_names() {
        let page: Page = serde_json::from_value(serde_json::json!({
            "pagination": {"total_results": 2, "next": null},
            "resources": [
                {"guid": "a1", "name": "web", "relationships": {"space": {"data": {"guid": "s1"}}}},
                {"guid": "a2", "name": "orphan", "relationships": {"space": {"data": {"guid": "gone"}}}},
                {"name": "no guid"}
            ],
            "included": {
                "spaces": [{"guid": "s1", "name": "dev", "relationships": {"organization": {"data": {"guid": "o1"}}}}],
                "organizations": [{"guid": "o1", "name": "acme"}]
            }
        }))
        .unwrap();
        let mut apps = HashMap::new();
        read_apps(&page, &mut apps);
        assert_eq!(apps.len(), 2);
        assert_eq!((apps["a1"].space_name.as_str(), apps["a1"].org_name.as_str()), ("dev", "acme"));
        assert_eq!((apps["a2"].name.as_str(), apps["a2"].space_name.as_str()), ("orphan", ""));
    }
}
