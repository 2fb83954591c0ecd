//! Reads dockerd's list and inspect answers with a cap on each body.
//!
//! bollard reads a whole body into memory before decoding it, so a daemon (or whatever listens on
//! `DOCKER_HOST`) answering with a gigabyte would take a gigabyte. The calls whose bodies grow with
//! the node (the container list, each container's and image's inspect) go through this small client
//! instead, which stops reading at the endpoint's cap and returns an error. The event stream,
//! `/_ping` and `/info` stay on bollard.
//!
//! Paths carry no API version: dockerd answers an unversioned path in its own current version, and
//! the fields read here exist in every version since 1.24.

use std::path::Path;
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use reqwest::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use wm_core::{BodyTooLarge, CappedBody};

/// The most bytes read of `GET /containers/json`: a row is about 1 KiB, so room for some 60,000
/// containers. A larger body fails the list.
pub const MAX_LIST_BODY: usize = 64 << 20;
/// The most bytes read of one container's or image's inspect (a container with a huge env or
/// many labels is still far below it). A larger body counts as one that does not parse.
pub const MAX_INSPECT_BODY: usize = 16 << 20;

/// A client of dockerd's HTTP API for the calls whose bodies are capped.
#[derive(Clone, Debug)]
pub(crate) struct Engine {
    client: reqwest::Client,
    /// `http://docker` on a unix socket, `http://host:port` over TCP.
    base: String,
}

/// Why a capped call gave nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EngineError {
    /// The call failed, passed its deadline, or the daemon answered an error status.
    #[error("{0}")]
    Failed(String),
    /// The body passed its cap or does not parse: asking again gives the same answer.
    #[error("{0}")]
    Undecodable(String),
}

impl Engine {
    /// Creates a client for `host` (`unix:///path`, a bare path, `tcp://host:port` or
    /// `http://host:port`) whose every call, connecting included, ends within `deadline`.
    ///
    /// # Errors
    ///
    /// Returns a message when `host` has another scheme or the client cannot be built.
    pub(crate) fn new(host: &str, deadline: Duration) -> Result<Self, String> {
        let builder = reqwest::Client::builder().timeout(deadline).connect_timeout(deadline);
        let (builder, base) =
            if let Some(path) = host.strip_prefix("unix://").or_else(|| host.starts_with('/').then_some(host)) {
                (builder.unix_socket(Path::new(path)), "http://docker".to_owned())
            } else if let Some(address) = host.strip_prefix("tcp://").or_else(|| host.strip_prefix("http://")) {
                (builder, format!("http://{}", address.trim_end_matches('/')))
            } else {
                return Err(format!("{host:?} is neither unix:// nor tcp:// (docker_host, DOCKER_HOST)"));
            };
        let client = builder.build().map_err(|e| format!("cannot build a client for {host}: {e}"))?;
        Ok(Self { client, base })
    }

    /// Sends `GET path` and decodes the JSON body, reading at most `cap` bytes of it; returns
    /// `Ok(None)` when dockerd answers 404.
    ///
    /// # Errors
    ///
    /// [`EngineError::Failed`] when the call fails or gets another error status;
    /// [`EngineError::Undecodable`] when the body passes `cap` or does not parse.
    async fn get<T: DeserializeOwned>(&self, path: &str, cap: usize) -> Result<Option<T>, EngineError> {
        let failed = |e: reqwest::Error| EngineError::Failed(format!("GET {path}: {e}"));
        let mut response = self.client.get(format!("{}{path}", self.base)).send().await.map_err(failed)?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(EngineError::Failed(format!("GET {path}: status {}", response.status())));
        }
        let too_large = |e: BodyTooLarge| EngineError::Undecodable(format!("GET {path}: {e}"));
        let mut body = CappedBody::new(cap, response.content_length()).map_err(too_large)?;
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            body.push(&chunk).map_err(too_large)?;
        }
        serde_json::from_slice(&body.into_bytes())
            .map(Some)
            .map_err(|e| EngineError::Undecodable(format!("GET {path}: the body does not parse: {e}")))
    }

    /// Returns the ids of every container, running or not (empty if dockerd answers 404).
    pub(crate) async fn container_ids(&self) -> Result<Vec<String>, EngineError> {
        #[derive(Deserialize)]
        struct Row {
            #[serde(rename = "Id", default)]
            id: String,
        }
        let rows: Vec<Row> = self.get("/containers/json?all=1", MAX_LIST_BODY).await?.unwrap_or_default();
        Ok(rows.into_iter().map(|r| r.id).filter(|id| !id.is_empty()).collect())
    }

    /// Returns one container's inspect, or `None` when dockerd does not know it.
    ///
    /// `id` goes into the path as it is, so pass only an id that came from dockerd or was checked
    /// to be a full hex id.
    pub(crate) async fn inspect_container(&self, id: &str) -> Result<Option<ContainerInspectResponse>, EngineError> {
        self.get(&format!("/containers/{id}/json"), MAX_INSPECT_BODY).await
    }

    /// Returns the image's first repo tag that is not a `<none>` placeholder, or `None` when it
    /// has no such tag or dockerd does not know the image.
    pub(crate) async fn image_name(&self, image_id: &str) -> Result<Option<String>, EngineError> {
        #[derive(Deserialize)]
        struct Image {
            #[serde(rename = "RepoTags", default)]
            repo_tags: Option<Vec<String>>,
        }
        let image: Option<Image> = self.get(&format!("/images/{image_id}/json"), MAX_INSPECT_BODY).await?;
        Ok(image.and_then(|i| i.repo_tags).and_then(|tags| tags.into_iter().find(|t| !t.contains("<none>"))))
    }

    /// Returns the id of every image (`sha256:<hex>`).
    pub(crate) async fn image_ids(&self) -> Result<Vec<String>, EngineError> {
        #[derive(Deserialize)]
        struct Row {
            #[serde(rename = "Id", default)]
            id: String,
        }
        let rows: Vec<Row> = self.get("/images/json", MAX_LIST_BODY).await?.unwrap_or_default();
        Ok(rows.into_iter().map(|r| r.id).filter(|id| !id.is_empty()).collect())
    }

    /// Returns what dockerd says of the image `reference` (an id or a name), or `None` when it
    /// does not know it.
    pub(crate) async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInspect>, EngineError> {
        self.get(&format!("/images/{reference}/json"), MAX_INSPECT_BODY).await
    }

    /// Returns the image's history, newest step first, or `None` when dockerd does not know it.
    pub(crate) async fn image_history(&self, id: &str) -> Result<Option<Vec<HistoryEntry>>, EngineError> {
        self.get(&format!("/images/{id}/history"), MAX_INSPECT_BODY).await
    }
}

/// The part of dockerd's image inspect the image collector reads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ImageInspect {
    #[serde(rename = "Id")]
    pub(crate) id: String,
    #[serde(rename = "RepoTags")]
    pub(crate) repo_tags: Option<Vec<String>>,
    #[serde(rename = "RepoDigests")]
    pub(crate) repo_digests: Option<Vec<String>>,
    #[serde(rename = "Size")]
    pub(crate) size: i64,
    #[serde(rename = "Os")]
    pub(crate) os: String,
    #[serde(rename = "OsVersion")]
    pub(crate) os_version: String,
    #[serde(rename = "Architecture")]
    pub(crate) architecture: String,
    #[serde(rename = "Variant")]
    pub(crate) variant: String,
    #[serde(rename = "RootFS")]
    pub(crate) root_fs: RootFs,
}

/// The layers of an image, as their uncompressed digests (diff ids), base first.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RootFs {
    #[serde(rename = "Layers")]
    pub(crate) layers: Option<Vec<String>>,
}

/// One step of an image's history.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct HistoryEntry {
    #[serde(rename = "Created")]
    pub(crate) created: i64,
    #[serde(rename = "CreatedBy")]
    pub(crate) created_by: String,
    #[serde(rename = "Size")]
    pub(crate) size: i64,
    #[serde(rename = "Comment")]
    pub(crate) comment: String,
}
