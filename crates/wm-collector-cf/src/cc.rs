//! A client of the Cloud Controller's v3 API, for what Garden cannot tell: an app's current name
//! (after a rename), its space's and org's names, its `tags.datadoghq.com/*` labels and
//! annotations, its sidecars and its isolation segment.
//!
//! - Authentication: UAA client credentials. The UAA is `cloud_foundry_cc.uaa_url` when set;
//!   otherwise its URL is read from the Cloud Controller's root (`GET /`, then `links.uaa.href`,
//!   else `links.login.href`). The token comes from `POST <uaa>/oauth/token` with HTTP Basic
//!   `client_id:client_secret` and `grant_type=client_credentials`. It is reused until shortly
//!   before its `expires_in` has passed (30 s before, or a tenth of its lifetime before when that
//!   is shorter; a lifetime over a day counts as a day). It is dropped as soon as a call answers
//!   `401`, and that call is sent once more with a new token.
//! - Where credentials are sent: the client secret only to the configured UAA URL, or to a
//!   discovered one that uses https (a Cloud Controller that names an `http://` UAA would have
//!   the secret sent in clear text); the bearer token only to the Cloud Controller's own origin
//!   (the scheme, host and port of `cloud_foundry_cc.url`). A `pagination.next.href` to another
//!   origin is an error, not a request, so that a compromised or misconfigured Cloud Controller
//!   cannot make the agent send its token to another server.
//! - Apps: `GET /v3/apps?guids=…&include=space.organization&per_page=…`, following
//!   `pagination.next.href`: one pass gives each app with its space and org.
//! - Sidecars (`sidecars_tags`): `GET /v3/apps/<guid>/sidecars?per_page=1`, whose
//!   `pagination.total_results` is the number of sidecars.
//! - Isolation segment (`isolation_segments_tags`): the space's
//!   (`/v3/spaces/<guid>/relationships/isolation_segment`), else the org's default
//!   (`/v3/organizations/<guid>/relationships/default_isolation_segment`), then its name
//!   (`/v3/isolation_segments/<guid>`). The Datadog cluster agent looks at the org's first; but
//!   an app runs in its space's segment when the space has one, so the space's comes first here.
//!
//! [`Enricher`] runs all this outside the pull: each pull tells it which apps are on the cell, a
//! task of its own fetches those not fetched yet or fetched longer than `poll_interval` ago, and
//! the pull uses whatever has been fetched. A slow or failing Cloud Controller delays the names
//! and tags it gives, never Garden's data.

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
/// The most app GUIDs in one `/v3/apps` request, to keep the URL short.
const GUIDS_PER_REQUEST: usize = 100;
/// How long before its expiry a token is renewed: this long, or a tenth of its lifetime when that
/// is shorter.
const TOKEN_MARGIN: Duration = Duration::from_secs(30);
/// The longest wait between two attempts while the Cloud Controller keeps failing; the wait starts
/// at one second and doubles after each failure.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The longest a UAA token is used, whatever its `expires_in` says. A huge value would make
/// `Instant + lifetime` overflow, which panics.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The Cloud Controller part of the config, under the Datadog Agent's key names
/// (`cloud_foundry_cc.*`). `ca_file`, `sidecars_tags` and `isolation_segments_tags` are keys of
/// ours; Datadog's cluster agent reads the last two under `cluster_agent.*`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CcConfig {
    /// `cloud_foundry_cc.url`: the Cloud Controller's API. When unset or empty, the Cloud
    /// Controller is not used.
    #[serde(rename = "cloud_foundry_cc.url")]
    pub url: Option<String>,
    /// `cloud_foundry_cc.client_id`: a UAA client with the `cloud_controller.admin_read_only` or
    /// `cloud_controller.global_auditor` scope. [`validate`](Self::validate) requires it when
    /// `cloud_foundry_cc.url` is set.
    #[serde(rename = "cloud_foundry_cc.client_id")]
    pub client_id: String,
    /// `cloud_foundry_cc.uaa_url` (ours): the UAA to ask for tokens. When unset, its URL is read
    /// from the Cloud Controller's root, and the secret is sent to it only if it uses https.
    #[serde(rename = "cloud_foundry_cc.uaa_url")]
    pub uaa_url: Option<String>,
    /// `cloud_foundry_cc.client_secret`: the UAA client's secret, never shown in logs or dumps
    /// (see [`Secret`]).
    #[serde(rename = "cloud_foundry_cc.client_secret")]
    pub client_secret: Secret,
    /// `cloud_foundry_cc.skip_ssl_validation` (default false): accept any certificate from the
    /// Cloud Controller and the UAA.
    #[serde(rename = "cloud_foundry_cc.skip_ssl_validation")]
    pub skip_ssl_validation: bool,
    /// `cloud_foundry_cc.ca_file`: a PEM file of CA certificates that the Cloud Controller's and
    /// the UAA's certificates may chain to, trusted besides the system's. When the file changes
    /// (a rotated CA), it is read again before the next fetch.
    #[serde(rename = "cloud_foundry_cc.ca_file")]
    pub ca_file: Option<PathBuf>,
    /// `cloud_foundry_cc.poll_interval` (seconds, default 60; zero counts as one): how long an
    /// app's metadata is used before it is fetched again.
    #[serde(rename = "cloud_foundry_cc.poll_interval")]
    pub poll_interval: u64,
    /// `cloud_foundry_cc.apps_batch_size` (default 5,000, the most the Cloud Controller allows):
    /// the `per_page` of `/v3/apps` requests, clamped to between 1 and 5,000.
    #[serde(rename = "cloud_foundry_cc.apps_batch_size")]
    pub apps_batch_size: u32,
    /// `cloud_foundry_cc.sidecars_tags` (default false): add the `sidecar_present` and
    /// `sidecar_count` tags, at the cost of one request per app.
    #[serde(rename = "cloud_foundry_cc.sidecars_tags")]
    pub sidecars_tags: bool,
    /// `cloud_foundry_cc.isolation_segments_tags` (default false): add the `segment_id` and
    /// `segment_name` tags, at the cost of one or two requests per app and one per segment.
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
    /// Returns `cloud_foundry_cc.url` without its trailing `/`, or `None` when it is unset or
    /// empty (the Cloud Controller is not used).
    pub fn enabled_url(&self) -> Option<&str> {
        self.url.as_deref().map(|u| u.trim_end_matches('/')).filter(|u| !u.is_empty())
    }

    /// Checks that the config can work. A config without `cloud_foundry_cc.url` always passes.
    ///
    /// # Errors
    ///
    /// Returns a message naming the key to fix when `cloud_foundry_cc.url` is set but
    /// `cloud_foundry_cc.client_id` is not, or when `cloud_foundry_cc.ca_file` is not a file.
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

    /// Returns the path of `ca_file`, or `None` when it is unset or empty.
    fn ca_path(&self) -> Option<&std::path::Path> {
        self.ca_file.as_deref().filter(|p| !p.as_os_str().is_empty())
    }

    /// Returns how long fetched metadata is used: `poll_interval`, at least one second.
    fn ttl(&self) -> Duration {
        Duration::from_secs(self.poll_interval.max(1))
    }
}

/// Returns the current stamp of the file at `path`, or `None` when its metadata cannot be read.
fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    std::fs::metadata(path).ok().map(|m| FileStamp::of(&m))
}

/// What went wrong with the Cloud Controller, the UAA or the client's config, as a message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CcError(String);

/// A Cloud Controller client, with the UAA token it currently uses.
#[derive(Debug)]
pub struct CloudController {
    config: CcConfig,
    /// `cloud_foundry_cc.url` without its trailing `/`.
    url: String,
    client: Https,
    /// `ca_file`'s stamp when `client` was built; when the file's stamp differs, the client is
    /// built again before the next fetch.
    ca_stamp: Option<FileStamp>,
    /// The UAA's token URL, once configured or discovered; `None` before the first token.
    token_url: Option<String>,
    /// The current token and the instant until which it is used.
    token: Option<(Secret, Instant)>,
    /// Isolation segment names by GUID, with when each was fetched. Segments are seldom renamed,
    /// so a name is reused for `poll_interval`, like an app's metadata.
    segments: HashMap<String, (Instant, String)>,
}

/// One page of a `/v3` list answer; a field the page lacks is empty.
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

/// A URL's scheme, host and port (the scheme's default port when none is written). Two URLs of
/// one origin reach the same server, so a token meant for one may go to the other.
#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// Returns the origin of an absolute `http` or `https` URL; `None` for anything else,
    /// including a URL with user info. The scheme and host are lower-cased, and a trailing `.` of
    /// the host is removed.
    fn of(url: &str) -> Option<Self> {
        let uri: http::Uri = url.parse().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return None,
        };
        let authority = uri.authority()?;
        // A URL with user info (`https://cc@evil/`) is refused: it can read like the Cloud
        // Controller's host to a person while it points at another server.
        if authority.as_str().contains('@') {
            return None;
        }
        let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
        Some(Self { scheme, host, port: authority.port_u16().unwrap_or(default_port) })
    }
}

/// Turns a credential or token into a header value; fails when it holds characters a header
/// cannot carry. The error does not repeat the value, which is a secret.
fn header_value(text: &str) -> Result<HeaderValue, CcError> {
    HeaderValue::from_str(text).map_err(|_| CcError("a credential or token is not a valid header value".into()))
}

/// Returns the string at `path` in a JSON value; an empty string when there is none.
fn str_at<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    path.iter().try_fold(value, |v, key| v.get(key)).and_then(Value::as_str).unwrap_or_default()
}

/// Appends to `into` a resource's `tags.datadoghq.com/<k>` labels and annotations, as
/// `<k>:<value>` tags sorted by key.
///
/// A label wins over an annotation of the same key. Entries with an empty key or value are left
/// out.
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
    /// Creates a client for `config`, which must name a Cloud Controller. Sends no request; unless
    /// `skip_ssl_validation` is set, it reads the system's root certificates and `ca_file`.
    ///
    /// # Errors
    ///
    /// Returns an error when `cloud_foundry_cc.url` is not set, when `ca_file` cannot be read or
    /// holds no valid PEM certificate, or when the TLS config cannot be built.
    pub fn new(config: CcConfig) -> Result<Self, CcError> {
        let url = config.enabled_url().ok_or_else(|| CcError("cloud_foundry_cc.url is not set".into()))?.to_owned();
        let ca_stamp = config.ca_path().and_then(stamp);
        let client = Self::https(&config)?;
        Ok(Self { config, url, client, ca_stamp, token_url: None, token: None, segments: HashMap::new() })
    }

    /// Builds the HTTPS client `config` describes.
    fn https(config: &CcConfig) -> Result<Https, CcError> {
        Https::new(config.ca_path(), config.skip_ssl_validation, REQUEST_TIMEOUT)
            .map_err(|e| CcError(format!("cloud_foundry_cc: {e}")))
    }

    /// Builds the client again when `ca_file` changed since it was read (a rotated CA).
    ///
    /// When the new file cannot be used (half written, say), the old client stays, a warning is
    /// logged, and the file is tried again before the next fetch.
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

    /// Returns the current UAA token, asking the UAA for a new one when there is none or it is
    /// about to expire.
    ///
    /// The first time, it also finds the UAA's token URL: `cloud_foundry_cc.uaa_url`, else the
    /// one the Cloud Controller's root names, which must use https since the client secret is sent
    /// there.
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

    /// Sends one request and decodes the JSON answer.
    ///
    /// An error status is an error whose message carries what the server said about it.
    async fn send(&self, method: Method, url: &str, headers: HeaderMap, body: Bytes) -> Result<Value, CcError> {
        let (status, body) = self.client.send(method, url, headers, body).await.map_err(CcError)?;
        if !status.is_success() {
            let said: Value = serde_json::from_slice(&body).unwrap_or_default();
            // The Cloud Controller describes an error as `errors: [{title, detail}]`; the UAA uses
            // OAuth's `error` and `error_description`.
            let words = |e: &Value, a: &str, b: &str| format!("{} {}", str_at(e, &[a]), str_at(e, &[b]));
            let said = said["errors"]
                .get(0)
                .map_or_else(|| words(&said, "error", "error_description"), |e| words(e, "title", "detail"));
            return Err(CcError(format!("{url}: status {status} {}", said.trim()).trim_end().to_owned()));
        }
        serde_json::from_slice(&body).map_err(|e| CcError(format!("{url}: does not parse: {e}")))
    }

    /// Sends `GET url` to the Cloud Controller with the token and decodes the JSON answer.
    ///
    /// When the answer is `401`, the token is dropped and the request is sent once more with a
    /// new one.
    async fn get(&mut self, url: &str) -> Result<Value, CcError> {
        for attempt in 0..2 {
            let token = self.token().await?;
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, header_value(&format!("bearer {token}"))?);
            headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
            match self.send(Method::GET, url, headers, Bytes::new()).await {
                // `send` writes the status into its message (`status 401 Unauthorized`), which is
                // how a refused token is recognised here.
                Err(e) if attempt == 0 && e.0.contains("status 401") => {
                    tracing::debug!(error = %e, "cloud foundry: token refused, asking the UAA for a new one");
                    self.token = None;
                }
                other => return other,
            }
        }
        Err(CcError(format!("{url}: refused twice")))
    }

    /// Fetches the metadata of the apps with these GUIDs, by GUID, with sidecar and isolation
    /// segment tags when those are configured.
    ///
    /// Apps the Cloud Controller does not know, and GUIDs that cannot go in a query as they are,
    /// are missing from the result. Each `/v3/apps` request carries up to 100 GUIDs. Before any
    /// request, the client is built again if `ca_file` changed.
    ///
    /// # Errors
    ///
    /// Returns an error when the UAA or the Cloud Controller cannot be reached, refuses the
    /// client, or answers something that does not parse; when a `pagination.next.href` points at
    /// another origin; or when one request's answer runs to more than 1,000 pages. One failure
    /// fails the whole call.
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

    /// Returns the sidecar and isolation segment tags of one app, as configured.
    ///
    /// A sidecar answer that does not parse counts as no sidecars. An app with no segment, or a
    /// segment GUID that cannot go in a URL as it is, gets no segment tags.
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
    /// `pagination.next.href`, when present and not empty. Its origin is not checked here: check
    /// it before sending the token there.
    pub next: Option<String>,
}

/// Reads one page of `GET /v3/apps?include=space.organization` from its JSON body.
///
/// An app without a GUID is left out; an app whose space or org is not in the page's `included`
/// gets empty names for them.
///
/// # Errors
///
/// Returns an error when the body is not JSON, or not shaped as a list page.
pub fn apps_page(body: &[u8]) -> Result<AppsPage, CcError> {
    apps_page_from(serde_json::from_slice(body).map_err(|e| CcError(format!("does not parse: {e}")))?)
}

/// Reads one page of `GET /v3/apps` from its decoded JSON.
fn apps_page_from(value: Value) -> Result<AppsPage, CcError> {
    let page: Page = serde_json::from_value(value).map_err(|e| CcError(format!("not a list page: {e}")))?;
    let mut apps = HashMap::new();
    read_apps(&page, &mut apps);
    Ok(AppsPage { apps, next: page.pagination.next.map(|l| l.href).filter(|h| !h.is_empty()) })
}

/// Reads the UAA's answer to a client-credentials grant: the access token and how long it may
/// be used (`expires_in`, at most a day; zero when it is missing).
///
/// # Errors
///
/// Returns an error when the body is not JSON, or has no `access_token` or an empty one.
pub fn uaa_token(body: &[u8]) -> Result<(String, Duration), CcError> {
    token_from(&serde_json::from_slice(body).map_err(|e| CcError(format!("UAA token: does not parse: {e}")))?)
}

/// Reads the access token and its lifetime from the UAA's decoded answer.
fn token_from(answer: &Value) -> Result<(String, Duration), CcError> {
    let token = answer["access_token"].as_str().filter(|t| !t.is_empty());
    let token = token.ok_or_else(|| CcError("UAA token: no access_token".into()))?.to_owned();
    let lifetime = Duration::from_secs(answer["expires_in"].as_u64().unwrap_or(0)).min(MAX_TOKEN_LIFETIME);
    Ok((token, lifetime))
}

/// Adds the apps of a page to `apps`, each with its space's and org's names taken from the page's
/// `included` section.
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

/// What the enricher's task has fetched, shared with the pull.
#[derive(Debug, Default)]
struct Known {
    /// By app GUID: when it was fetched, and the result (`None`: the Cloud Controller has no such
    /// app).
    apps: HashMap<String, (Instant, Option<AppMetadata>)>,
    /// The apps the last pull found on the cell: the ones the task fetches.
    wanted: BTreeSet<String>,
    /// The last error, while the Cloud Controller keeps failing; `None` once a fetch succeeds.
    failing: Option<String>,
}

/// Fetches app metadata from the Cloud Controller in a task of its own, so that a pull never
/// waits for it; see the module documentation.
///
/// The task fetches the apps that are due about once a second, and at once when the set of apps
/// on the cell changes. After a failure it waits one second, then twice as long after each
/// further failure, up to a minute; a change in the set of apps still wakes it early.
#[derive(Debug)]
pub struct Enricher {
    known: Arc<Mutex<Known>>,
    wake: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Enricher {
    /// Spawns the task that fetches app metadata through `cc`.
    ///
    /// Must be called within a tokio runtime: it calls `tokio::spawn`, which panics outside one.
    /// Dropping the enricher aborts the task.
    pub fn start(cc: CloudController) -> Self {
        let known = Arc::new(Mutex::new(Known::default()));
        let wake = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(run(cc, known.clone(), wake.clone()));
        Self { known, wake, task }
    }

    /// Records which apps are on the cell now, and returns the metadata fetched so far for each,
    /// by GUID.
    ///
    /// Apps not fetched yet, or unknown to the Cloud Controller, are missing from the result.
    /// Apps no longer on the cell are forgotten. When the set of apps changed, the task is woken
    /// so that new apps are fetched at once. Does no I/O.
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

    /// Returns the Cloud Controller's last error while it keeps failing; `None` once a fetch
    /// succeeds, or before any failed.
    pub fn failing(&self) -> Option<String> {
        self.known.locked().failing.clone()
    }
}

impl Drop for Enricher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The enricher's task: fetches the wanted apps that are due, records the result, then waits for
/// a second (longer after failures) or until `see` wakes it.
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
