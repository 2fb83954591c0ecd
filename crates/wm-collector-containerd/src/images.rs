//! The containerd image collector: every image of the watched namespaces, as
//! `container_image_metadata` entities (source `runtime`, collector `containerd_images`), listed
//! at start and followed by containerd's `/images/create`, `/images/update` and `/images/delete`
//! events.
//!
//! containerd keeps images as names, each pointing at a target: a manifest, or an index of
//! manifests for several platforms. One image, in the sense of the entity, is one image config
//! (its digest is the entity id, as docker's image id is), and every name that leads to it is
//! one of its repo tags or repo digests. So the collector remembers which config each name led
//! to when last read (`known`). An event names one name: the collector reads that name again,
//! sets the image it now leads to, and, when the name used to lead to another image, sets that
//! image again with one name fewer, or unsets it when no name of any watched namespace leads to
//! it any more (as the Datadog Agent does).
//!
//! Reading a target: the manifest (for an index, the manifest of this host's platform, else the
//! first one whose content is here), then its config. Both are small JSON blobs, read through the
//! content service and refused above [`MAX_BLOB`] bytes. The size is the config's plus the
//! layers' (compressed) sizes; the layers are the manifest's, each with the config's history
//! step that made it when those steps pair one for one with the layers.
//!
//! Refreshes run one at a time, in the order of their events, so that the names of an image are
//! always read after every earlier change to them. Image events are rare; the list at start reads
//! 8 targets at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use containerd_client::services::v1::{GetImageRequest, ListImagesRequest, ReadContentRequest};
use containerd_client::types::Descriptor;
use futures::StreamExt;
use serde::Deserialize;
use tracing::{debug, warn};
use wm_core::sync::MutexExt;
use wm_core::{
    Collector, CollectorError, ContainerImageMetadata, Entity, EntityId, ImageLayer, ImageRef, Kind, Source, Timestamp,
};
use wm_driver::{Driver, ListWatch, Listed, Refreshed, WatchStream};

use crate::{
    CallError, Clients, ContainerdConfig, bounded_insert, call, connect, image_named, namespaced, publish_marker,
    subscribe, watched_namespaces,
};

/// The collector's name, as it appears in health, telemetry and dumps.
pub const NAME: &str = "containerd_images";
/// The largest manifest, index or image config the collector reads: 4 MiB (they are a few KB;
/// an image with a long history has a config of some hundred KB).
pub const MAX_BLOB: usize = 4 << 20;
/// The most manifests of one index the collector tries to read.
const MAX_INDEX_ENTRIES: usize = 16;
/// How many image targets the list reads at a time.
const READ_CONCURRENCY: usize = 8;

/// The image a name led to when last read.
#[derive(Clone, Debug)]
struct Pointer {
    /// The image's config digest: the entity id.
    id: String,
    /// The name's target (a manifest or an index), from which the image can be read again.
    target: Descriptor,
}

/// Follows the images of containerd's watched namespaces.
#[derive(Debug)]
pub struct ContainerdImageCollector {
    config: ContainerdConfig,
    /// The gRPC clients of the current run; `None` until [`watch`](ListWatch::watch) connects.
    clients: Option<Clients>,
    /// The image each (namespace, name) led to when last read: the list fills it anew, each
    /// refresh updates its name.
    known: Mutex<HashMap<(String, String), Pointer>>,
    /// Makes refreshes run one at a time, in their events' order (tokio's lock is fair).
    serial: tokio::sync::Mutex<()>,
    /// Targets whose content did not parse and for which a warning was logged (bounded).
    reported: Mutex<HashSet<String>>,
}

/// One image event: a name of a namespace was created, moved to another target, or deleted.
#[derive(Debug)]
pub struct NameChanged {
    namespace: String,
    name: String,
}

impl ContainerdImageCollector {
    /// Creates a collector for the containerd of `config`, watching the namespaces it watches.
    /// It connects at its first run.
    pub fn new(config: ContainerdConfig) -> Self {
        Self {
            config,
            clients: None,
            known: Mutex::new(HashMap::new()),
            serial: tokio::sync::Mutex::new(()),
            reported: Mutex::new(HashSet::new()),
        }
    }

    /// Wraps the collector in a [`Driver`], ready to hand to the store.
    pub fn into_collector(self) -> Collector {
        Collector::stream(NAME, Source::Runtime, Driver::new(self))
    }

    fn clients(&self) -> Result<Clients, CollectorError> {
        self.clients.clone().ok_or_else(|| CollectorError::Retriable {
            context: "containerd images: not connected (list or refresh before watch)".into(),
            source: None,
        })
    }

    /// Reads one blob of `namespace`'s content store, at most [`MAX_BLOB`] bytes.
    ///
    /// `Ok(None)` when containerd does not hold it (a platform of an index that was not pulled)
    /// or when it is too big (logged).
    async fn blob(
        &self,
        clients: &mut Clients,
        namespace: &str,
        descriptor: &Descriptor,
    ) -> Result<Option<Vec<u8>>, CollectorError> {
        let too_big = |size: usize| {
            self.report(&descriptor.digest, &format!("a blob of {size} bytes, above the {MAX_BLOB}-byte limit"));
            Ok(None)
        };
        if let Ok(size) = usize::try_from(descriptor.size)
            && size > MAX_BLOB
        {
            return too_big(size);
        }
        let what = || format!("containerd images: reading {namespace}/{}", descriptor.digest);
        let deadline = self.config.deadline();
        let request =
            namespaced(namespace, ReadContentRequest { digest: descriptor.digest.clone(), offset: 0, size: 0 })?;
        let mut stream = match call(deadline, what, clients.content.read(request)).await {
            Ok(response) => response.into_inner(),
            Err(CallError::NotFound) => return Ok(None),
            Err(CallError::Failed(error)) => return Err(error),
        };
        let mut data = Vec::with_capacity(usize::try_from(descriptor.size).unwrap_or(0).min(MAX_BLOB));
        loop {
            match call(deadline, what, stream.message()).await {
                Ok(Some(chunk)) if data.len() + chunk.data.len() > MAX_BLOB => {
                    return too_big(data.len() + chunk.data.len());
                }
                Ok(Some(chunk)) => data.extend_from_slice(&chunk.data),
                Ok(None) => return Ok(Some(data)),
                Err(CallError::NotFound) => return Ok(None),
                Err(CallError::Failed(error)) => return Err(error),
            }
        }
    }

    /// Logs once per target (digest) why its image is not reported.
    fn report(&self, digest: &str, problem: &str) {
        if bounded_insert(&mut self.reported.locked(), digest.to_owned()) {
            warn!(digest, "containerd images: {problem}; the image is not reported");
        } else {
            debug!(digest, "containerd images: {problem}");
        }
    }

    /// Reads the image a target leads to, without its names.
    ///
    /// `Ok(None)` when its content is missing (a pull under way) or does not parse (logged once).
    async fn read(
        &self,
        clients: &mut Clients,
        namespace: &str,
        target: &Descriptor,
    ) -> Result<Option<ContainerImageMetadata>, CollectorError> {
        let Some(bytes) = self.blob(clients, namespace, target).await? else { return Ok(None) };
        let Some(top) = self.parse::<Manifest>(&target.digest, &bytes) else { return Ok(None) };
        let (manifest, descriptor, platform) = if top.manifests.is_empty() {
            (top, target.clone(), None)
        } else {
            let mut chosen = None;
            // A real index lists a few platforms and attestations; a hostile one could list
            // thousands, each a call to containerd.
            for entry in by_preference(&top.manifests).into_iter().take(MAX_INDEX_ENTRIES) {
                let descriptor = entry.descriptor();
                if let Some(bytes) = self.blob(clients, namespace, &descriptor).await? {
                    chosen = self
                        .parse::<Manifest>(&descriptor.digest, &bytes)
                        .map(|m| (m, descriptor, entry.platform.clone()));
                    break;
                }
            }
            let Some(chosen) = chosen else {
                debug!(namespace, digest = %target.digest, "containerd images: no manifest of the index is here");
                return Ok(None);
            };
            chosen
        };
        if manifest.config.digest.is_empty() {
            self.report(&descriptor.digest, "a manifest without a config");
            return Ok(None);
        }
        let config_descriptor = manifest.config.descriptor();
        let Some(bytes) = self.blob(clients, namespace, &config_descriptor).await? else { return Ok(None) };
        let Some(config) = self.parse::<ImageConfig>(&config_descriptor.digest, &bytes) else { return Ok(None) };
        Ok(Some(image_from_parts(&descriptor, manifest, config, platform.unwrap_or_default())))
    }

    fn parse<T: for<'de> Deserialize<'de>>(&self, digest: &str, bytes: &[u8]) -> Option<T> {
        match serde_json::from_slice(bytes) {
            Ok(value) => Some(value),
            Err(e) => {
                self.report(digest, &format!("content that does not parse ({e})"));
                None
            }
        }
    }

    /// Gives `image` every name `known` has for it, as repo tags and repo digests.
    fn name(&self, image: &mut ContainerImageMetadata) {
        let known = self.known.locked();
        let names: BTreeSet<&str> =
            known.iter().filter(|(_, p)| p.id == *image.id).map(|((_, name), _)| name.as_str()).collect();
        let (tags, digests) = classify(names);
        // The repository of its first tag, else of its first digest.
        image.name = tags.first().or(digests.first()).map(|r| ImageRef::parse(r).name).unwrap_or_default();
        image.repo_tags = tags;
        image.repo_digests = digests;
    }

    /// Reads again the image `id`, which a name just left: set with the names that still lead
    /// to it, or unset when none does.
    ///
    /// Each remaining name's target is tried in turn; when names remain but none can be read
    /// now, the store keeps what it has (`Skip`) rather than unset an image still named.
    async fn remains(&self, clients: &mut Clients, id: &str) -> Result<Refreshed, CollectorError> {
        let others: Vec<(String, Descriptor)> = self
            .known
            .locked()
            .iter()
            .filter(|(_, p)| p.id == id)
            .map(|((ns, _), p)| (ns.clone(), p.target.clone()))
            .collect();
        if others.is_empty() {
            return Ok(Refreshed::Gone { id: EntityId::new(Kind::ContainerImageMetadata, id), said: None });
        }
        for (namespace, target) in others {
            if let Some(mut image) = self.read(clients, &namespace, &target).await? {
                self.name(&mut image);
                return Ok(Refreshed::Present(Entity::from(image)));
            }
        }
        Ok(Refreshed::Skip)
    }
}

/// Splits an image's names into repo tags and repo digests, sorted; the names that are bare ids
/// (`sha256:…`, which the CRI adds) are neither.
fn classify<'a>(names: impl IntoIterator<Item = &'a str>) -> (Vec<String>, Vec<String>) {
    let (mut tags, mut digests) = (Vec::new(), Vec::new());
    for name in names {
        if name.starts_with("sha256:") {
            continue;
        }
        if name.contains("@sha256:") { &mut digests } else { &mut tags }.push(name.to_owned());
    }
    (tags, digests)
}

/// Returns an index's manifests, this host's platform first (Linux, the host's architecture),
/// the others in the index's order after.
fn by_preference(manifests: &[OciDescriptor]) -> Vec<&OciDescriptor> {
    let arch = host_architecture();
    let ours = |m: &&OciDescriptor| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch);
    manifests.iter().filter(ours).chain(manifests.iter().filter(|m| !ours(m))).collect()
}

/// Returns this host's architecture under its OCI name (`amd64`, `arm64`, …).
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Builds an image (without its names) from its manifest's descriptor, its manifest, its config
/// and the platform its index gave it (the config's own platform wins where it says).
fn image_from_parts(
    descriptor: &Descriptor,
    manifest: Manifest,
    config: ImageConfig,
    platform: Platform,
) -> ContainerImageMetadata {
    // The history steps that made a layer, oldest first; used only when they pair one for one.
    let steps: Vec<&History> = config.history.iter().filter(|h| !h.empty_layer).collect();
    let paired = steps.len() == manifest.layers.len();
    let size = manifest.config.size.saturating_add(manifest.layers.iter().map(|l| l.size).fold(0, i64::saturating_add));
    let layers = manifest
        .layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let step = paired.then(|| steps[i]);
            ImageLayer {
                media_type: layer.media_type.clone(),
                digest: layer.digest.clone(),
                size_bytes: layer.size,
                urls: layer.urls.clone(),
                created: step.and_then(|s| Timestamp::parse_rfc3339(&s.created).ok()),
                created_by: step.map(|s| s.created_by.clone()).unwrap_or_default(),
                comment: step.map(|s| s.comment.clone()).unwrap_or_default(),
            }
        })
        .collect();
    let or = |own: String, given: String| if own.is_empty() { given } else { own };
    ContainerImageMetadata {
        id: manifest.config.digest.as_str().into(),
        media_type: or(manifest.media_type, descriptor.media_type.clone()),
        size_bytes: size,
        os: or(config.os, platform.os),
        os_version: or(config.os_version, platform.os_version),
        architecture: or(config.architecture, platform.architecture),
        variant: or(config.variant, platform.variant),
        layers,
        ..ContainerImageMetadata::default()
    }
}

/// A content descriptor as OCI JSON writes it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
struct OciDescriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: i64,
    urls: Vec<String>,
    platform: Option<Platform>,
}

impl OciDescriptor {
    fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: HashMap::new(),
        }
    }
}

/// The platform of a manifest or a config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
struct Platform {
    architecture: String,
    os: String,
    #[serde(rename = "os.version")]
    os_version: String,
    variant: String,
}

/// A manifest, or an index (`manifests` set): the fields read of either.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Manifest {
    #[serde(rename = "mediaType")]
    media_type: String,
    config: OciDescriptor,
    layers: Vec<OciDescriptor>,
    manifests: Vec<OciDescriptor>,
}

/// An image config: the fields read.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ImageConfig {
    architecture: String,
    os: String,
    #[serde(rename = "os.version")]
    os_version: String,
    variant: String,
    history: Vec<History>,
}

/// One step of an image config's history.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct History {
    created: String,
    created_by: String,
    comment: String,
    empty_layer: bool,
}

#[async_trait]
impl ListWatch for ContainerdImageCollector {
    type Event = NameChanged;

    /// Connects and subscribes to `/images/*` events; the marker proves the subscription live.
    async fn watch(&mut self) -> Result<WatchStream<NameChanged>, CollectorError> {
        self.clients = None;
        let clients = connect(&self.config).await?;
        let stream = subscribe(&clients, vec![r#"topic~="^/images/""#.to_owned()], |envelope| {
            let name = envelope.event.as_ref().and_then(image_named)?;
            Some(NameChanged { namespace: envelope.namespace, name })
        });
        self.clients = Some(clients);
        Ok(stream)
    }

    async fn probe(&mut self) -> Result<bool, CollectorError> {
        let mut clients = self.clients()?;
        publish_marker(&self.config, &mut clients).await?;
        Ok(true)
    }

    /// Lists the images of every watched namespace and reads each target, 8 at a time.
    ///
    /// A target that cannot be read now (a failed call) keeps, for each of its names the
    /// collector knew, the image the store has, and is read again later.
    async fn list(&mut self) -> Result<Listed, CollectorError> {
        let _serial = self.serial.lock().await;
        let mut clients = self.clients()?;
        let deadline = self.config.deadline();
        // (namespace, target digest) → the target and its names.
        let mut targets: BTreeMap<(String, String), (Descriptor, Vec<String>)> = BTreeMap::new();
        for namespace in watched_namespaces(&self.config, &mut clients).await? {
            let request = namespaced(&namespace, ListImagesRequest { filters: Vec::new() })?;
            let what = || format!("containerd images: listing the images of {namespace}");
            let images = call(deadline, what, clients.images.list(request))
                .await
                .map_err(CallError::into_error)?
                .into_inner()
                .images;
            for image in images {
                let Some(target) = image.target.filter(|t| !t.digest.is_empty()) else { continue };
                let entry =
                    targets.entry((namespace.clone(), target.digest.clone())).or_insert_with(|| (target, Vec::new()));
                entry.1.push(image.name);
            }
        }
        let this = &*self;
        let read: Vec<_> = futures::stream::iter(targets)
            .map(|((namespace, _), (target, names))| {
                let mut clients = clients.clone();
                async move {
                    let result = this.read(&mut clients, &namespace, &target).await;
                    (namespace, target, names, result)
                }
            })
            .buffered(READ_CONCURRENCY)
            .collect()
            .await;
        let old = std::mem::take(&mut *self.known.locked());
        let mut known = HashMap::new();
        let mut images: BTreeMap<String, ContainerImageMetadata> = BTreeMap::new();
        let mut listed = Listed::default();
        for (namespace, target, names, result) in read {
            match result {
                Ok(Some(image)) => {
                    for name in names {
                        known.insert(
                            (namespace.clone(), name),
                            Pointer { id: image.id.to_string(), target: target.clone() },
                        );
                    }
                    images.entry(image.id.to_string()).or_insert(image);
                }
                Ok(None) => {}
                Err(error) => {
                    warn!(%error, namespace, digest = %target.digest, "containerd images: cannot read an image now; kept, read again later");
                    for name in names {
                        let key = (namespace.clone(), name);
                        // The store keeps the image the name led to; a name never read before has
                        // nothing to keep, and its target's digest stands in for the id so that the
                        // driver still reads the name again later.
                        let id = match old.get(&key) {
                            Some(pointer) => {
                                known.insert(key.clone(), pointer.clone());
                                pointer.id.clone()
                            }
                            None => target.digest.clone(),
                        };
                        listed
                            .unreadable
                            .push((format!("{}/{}", key.0, key.1), EntityId::new(Kind::ContainerImageMetadata, id)));
                    }
                }
            }
        }
        *self.known.locked() = known;
        for (_, mut image) in images {
            self.name(&mut image);
            listed.entities.push(Entity::from(image));
        }
        Ok(listed)
    }

    fn key(&self, event: &NameChanged) -> Option<String> {
        self.config.watches(&event.namespace).then(|| format!("{}/{}", event.namespace, event.name))
    }

    /// Reads again the name the events are about: sets the image it leads to now, and the image
    /// it led to before (set with its remaining names, or unset).
    async fn refresh(&self, key: &str, _events: Vec<NameChanged>) -> Result<Refreshed, CollectorError> {
        let _serial = self.serial.lock().await;
        let mut clients = self.clients()?;
        // The key is `namespace/name`, as `key` builds it; a namespace has no `/`.
        let Some((namespace, name)) = key.split_once('/') else { return Ok(Refreshed::Skip) };
        let at = (namespace.to_owned(), name.to_owned());
        let request = namespaced(namespace, GetImageRequest { name: name.to_owned() })?;
        let what = || format!("containerd images: getting {key}");
        let target = match call(self.config.deadline(), what, clients.images.get(request)).await {
            Ok(response) => response.into_inner().image.and_then(|i| i.target),
            Err(CallError::NotFound) => None,
            Err(CallError::Failed(error)) => return Err(error),
        };
        let now = match &target {
            Some(target) => self.read(&mut clients, namespace, target).await?,
            None => None,
        };
        let before = match (&now, target) {
            (Some(image), Some(target)) => {
                self.known.locked().insert(at.clone(), Pointer { id: image.id.to_string(), target })
            }
            _ => self.known.locked().remove(&at),
        };
        let mut out = Vec::new();
        let now_id = now.as_ref().map(|i| i.id.to_string());
        if let Some(mut image) = now {
            self.name(&mut image);
            out.push(Refreshed::Present(Entity::from(image)));
        }
        if let Some(before) = before.filter(|b| Some(&b.id) != now_id.as_ref()) {
            match self.remains(&mut clients, &before.id).await {
                Ok(remains) => out.push(remains),
                Err(error) => {
                    // Put the old pointer back, so that the driver's retry of this name finds
                    // again that it left the old image, and reads that image again.
                    self.known.locked().insert(at, before);
                    return Err(error);
                }
            }
        }
        Ok(match out.len() {
            0 => Refreshed::Skip,
            1 => out.remove(0),
            _ => Refreshed::Several(out),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(digest: &str, size: i64) -> OciDescriptor {
        OciDescriptor { media_type: "m".into(), digest: digest.into(), size, ..OciDescriptor::default() }
    }

    #[test]
    fn layers_get_their_history_only_when_it_pairs_with_them() {
        let manifest = || Manifest {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            config: descriptor("sha256:c", 100),
            layers: vec![descriptor("sha256:l1", 4_000), descriptor("sha256:l2", 20)],
            manifests: Vec::new(),
        };
        let step = |created_by: &str, empty_layer| History {
            created: "2024-01-02T03:04:05Z".into(),
            created_by: created_by.into(),
            comment: String::new(),
            empty_layer,
        };
        let config = |history| ImageConfig {
            os: "linux".into(),
            architecture: "amd64".into(),
            history,
            ..ImageConfig::default()
        };
        let history = vec![step("ADD rootfs.tar /", false), step("CMD [\"sh\"]", true), step("COPY app /", false)];
        let target = Descriptor { media_type: "index".into(), ..Descriptor::default() };
        let image = image_from_parts(&target, manifest(), config(history), Platform::default());
        assert_eq!((image.id.as_ref(), image.size_bytes), ("sha256:c", 4_120));
        assert_eq!(image.media_type, "application/vnd.oci.image.manifest.v1+json");
        let made: Vec<_> = image.layers.iter().map(|l| (l.digest.as_str(), l.created_by.as_str())).collect();
        assert_eq!(made, [("sha256:l1", "ADD rootfs.tar /"), ("sha256:l2", "COPY app /")]);
        assert!(image.layers[0].created.is_some());
        let unpaired = image_from_parts(&target, manifest(), config(vec![step("ADD", false)]), Platform::default());
        assert!(unpaired.layers.iter().all(|l| l.created_by.is_empty() && l.created.is_none()));
    }

    #[test]
    fn the_index_platform_fills_only_what_the_config_leaves_empty() {
        let platform =
            Platform { os: "linux".into(), architecture: "arm64".into(), variant: "v8".into(), ..Platform::default() };
        let config = ImageConfig { architecture: "amd64".into(), ..ImageConfig::default() };
        let image = image_from_parts(&Descriptor::default(), Manifest::default(), config, platform);
        assert_eq!((image.os.as_str(), image.architecture.as_str(), image.variant.as_str()), ("linux", "amd64", "v8"));
    }

    #[test]
    fn names_split_into_tags_and_digests_and_bare_ids_are_dropped() {
        let (tags, digests) =
            classify(["docker.io/library/a:1", "docker.io/library/a@sha256:abc", "sha256:abc", "localhost:5000/b:2"]);
        assert_eq!(tags, ["docker.io/library/a:1", "localhost:5000/b:2"]);
        assert_eq!(digests, ["docker.io/library/a@sha256:abc"]);
    }

    #[test]
    fn this_hosts_platform_comes_first_in_an_index() {
        let with = |arch: &str| OciDescriptor {
            platform: Some(Platform { os: "linux".into(), architecture: arch.into(), ..Platform::default() }),
            ..descriptor(arch, 1)
        };
        let ours = host_architecture();
        let other = if ours == "s390x" { "ppc64le" } else { "s390x" };
        let index = [with(other), descriptor("attestation", 1), with(ours)];
        let order: Vec<&str> = by_preference(&index).iter().map(|m| m.digest.as_str()).collect();
        assert_eq!(order, [ours, other, "attestation"]);
    }

    #[test]
    fn hostile_content_is_refused_not_fatal() {
        assert!(serde_json::from_slice::<Manifest>(b"{\"layers\": 7}").is_err());
        let m: Manifest = serde_json::from_slice(b"{\"schemaVersion\": 2, \"unknown\": [1]}").unwrap();
        assert!(m.config.digest.is_empty() && m.layers.is_empty());
    }
}
