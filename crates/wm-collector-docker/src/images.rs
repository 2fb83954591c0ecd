//! The docker image collector: every image dockerd holds, as `container_image_metadata`
//! entities (source `runtime`, collector `docker_images`), listed at start and followed by
//! dockerd's image events.
//!
//! It runs beside the container collector, on the same driver: subscribe to image events since
//! the daemon's clock, list every image and inspect each (with its history), 8 at a time, then
//! read again the image each event names. `pull`, `tag`, `untag`, `import`, `load` and `delete`
//! all come down to one question, "what does dockerd hold under this name or id now?": an image
//! it still holds is set again (an `untag` leaves it with fewer tags), one it no longer holds is
//! unset. Only the events that name an image by id (`sha256:…`) can unset it; a name that no
//! longer resolves says nothing of which image it named.
//!
//! Layers are the image's `RootFS` diff ids, base first. Their history comes from
//! `/images/<id>/history` when its steps that made a layer (size above zero) pair one for one
//! with the layers; otherwise the layers go without history rather than with a wrong one.

use async_trait::async_trait;
use bollard::models::{EventMessage, EventMessageTypeEnum};
use futures::StreamExt;
use tracing::warn;
use wm_core::{
    Collector, CollectorError, ContainerImageMetadata, Entity, EntityId, ImageLayer, ImageRef, Kind, Source, Timestamp,
};
use wm_driver::{Driver, ListWatch, Listed, Refreshed, WatchStream, with_deadline};

use crate::engine::{Engine, EngineError, HistoryEntry, ImageInspect};
use crate::{Clients, DockerConfig, INSPECT_CONCURRENCY, subscribe};

/// The collector's name, as it appears in health, telemetry and dumps.
pub const NAME: &str = "docker_images";

/// The image actions that change what dockerd holds.
const IMAGE_ACTIONS: &[&str] = &["pull", "tag", "untag", "import", "load", "delete"];

/// Follows dockerd's images.
#[derive(Debug)]
pub struct DockerImageCollector {
    config: DockerConfig,
    clients: Option<Clients>,
}

impl DockerImageCollector {
    /// Creates a collector for the dockerd of `config`. It connects at its first run.
    pub fn new(config: DockerConfig) -> Self {
        Self { config, clients: None }
    }

    /// Wraps the collector in a [`Driver`], ready to hand to the store.
    pub fn into_collector(self) -> Collector {
        Collector::stream(NAME, Source::Runtime, Driver::new(self))
    }

    fn engine(&self) -> Result<&Engine, CollectorError> {
        self.clients.as_ref().map(|c| &c.engine).ok_or_else(|| CollectorError::Retriable {
            context: "docker images: not connected (list or refresh before watch)".into(),
            source: None,
        })
    }

    /// Inspects the image `reference` and reads its history; `None` when dockerd does not hold
    /// it.
    ///
    /// # Errors
    ///
    /// [`ReadError::Undecodable`] when an answer passes its cap or does not parse (asking again
    /// gives the same answer), [`ReadError::Failed`] when a call fails.
    async fn read(&self, engine: &Engine, reference: &str) -> Result<Option<ContainerImageMetadata>, ReadError> {
        let deadline = self.config.deadline();
        let what = || format!("docker images: inspecting {reference} (docker_query_timeout)");
        let failed = |e: EngineError| match e {
            EngineError::Undecodable(message) => ReadError::Undecodable(message),
            EngineError::Failed(_) => {
                ReadError::Failed(CollectorError::retriable(format!("docker images: inspecting {reference} failed"), e))
            }
        };
        let deadline_passed = ReadError::Failed;
        let inspect = async { Ok(engine.inspect_image(reference).await) };
        // Given an id, the history is asked for at the same time as the inspect: one round trip
        // per image instead of two, which is most of the list's time.
        let (inspect, history) = if reference.starts_with("sha256:") {
            let history = async { Ok(engine.image_history(reference).await) };
            let (inspect, history) =
                futures::future::join(with_deadline(deadline, what, inspect), with_deadline(deadline, what, history))
                    .await;
            (
                inspect.map_err(deadline_passed)?.map_err(failed)?,
                Some(history.map_err(deadline_passed)?.map_err(failed)?),
            )
        } else {
            (with_deadline(deadline, what, inspect).await.map_err(deadline_passed)?.map_err(failed)?, None)
        };
        let Some(inspect) = inspect else { return Ok(None) };
        let history = match history {
            Some(history) => history,
            None => with_deadline(deadline, what, async { Ok(engine.image_history(&inspect.id).await) })
                .await
                .map_err(deadline_passed)?
                .map_err(failed)?,
        }
        .unwrap_or_default();
        Ok(Some(image_from_inspect(inspect, &history)))
    }
}

/// Why an image could not be read.
#[derive(Debug)]
enum ReadError {
    /// dockerd's answer passed its cap or does not parse: the image is skipped with a warning,
    /// as the container collector skips such a container.
    Undecodable(String),
    /// A call failed: the store keeps what it had and the image is read again later.
    Failed(CollectorError),
}

/// Builds the entity of an image from its inspect and its history (newest step first, as
/// dockerd gives it).
fn image_from_inspect(inspect: ImageInspect, history: &[HistoryEntry]) -> ContainerImageMetadata {
    let repo_tags: Vec<String> =
        inspect.repo_tags.unwrap_or_default().into_iter().filter(|t| !t.contains("<none>")).collect();
    let name = repo_tags.first().map(|t| ImageRef::parse(t).name).unwrap_or_default();
    let digests = inspect.root_fs.layers.unwrap_or_default();
    // The steps that made a layer, oldest first; used only when they pair one for one.
    let steps: Vec<&HistoryEntry> = history.iter().rev().filter(|h| h.size > 0).collect();
    let paired = steps.len() == digests.len();
    let layers = digests
        .into_iter()
        .enumerate()
        .map(|(i, digest)| {
            let step = paired.then(|| steps[i]);
            ImageLayer {
                media_type: String::new(),
                digest,
                size_bytes: step.map_or(0, |s| s.size),
                urls: Vec::new(),
                created: step.filter(|s| s.created > 0).map(|s| Timestamp::from_unix(s.created, 0)),
                created_by: step.map(|s| s.created_by.clone()).unwrap_or_default(),
                comment: step.map(|s| s.comment.clone()).unwrap_or_default(),
            }
        })
        .collect();
    ContainerImageMetadata {
        id: inspect.id.as_str().into(),
        name,
        repo_tags,
        repo_digests: inspect.repo_digests.unwrap_or_default(),
        media_type: String::new(),
        size_bytes: inspect.size,
        os: inspect.os,
        os_version: inspect.os_version,
        architecture: inspect.architecture,
        variant: inspect.variant,
        layers,
    }
}

/// Returns the event's action, and whether it is an image event that changes what dockerd holds.
fn relevant(event: &EventMessage) -> bool {
    matches!(event.typ, Some(EventMessageTypeEnum::IMAGE))
        && event.action.as_deref().is_some_and(|a| IMAGE_ACTIONS.contains(&a))
}

#[async_trait]
impl ListWatch for DockerImageCollector {
    type Event = EventMessage;

    /// Subscribes to image events, as the container collector does to container events.
    async fn watch(&mut self) -> Result<WatchStream<EventMessage>, CollectorError> {
        self.clients = None;
        let (clients, stream) = subscribe(&self.config, "image", IMAGE_ACTIONS).await?;
        self.clients = Some(clients);
        Ok(stream)
    }

    /// Lists every image and reads each, 8 at a time; an image that
    /// cannot be read now is kept as the store had it and read again later.
    async fn list(&mut self) -> Result<Listed, CollectorError> {
        let this = &*self;
        let engine = this.engine()?;
        let ids =
            with_deadline(self.config.deadline(), || "docker images: listing (docker_query_timeout)".into(), async {
                engine.image_ids().await.map_err(|e| CollectorError::Retriable {
                    context: format!("docker images: listing failed: {e}"),
                    source: None,
                })
            })
            .await?;
        let read: Vec<(String, Result<Option<ContainerImageMetadata>, ReadError>)> = futures::stream::iter(ids)
            .map(|id| async move {
                let result = this.read(engine, &id).await;
                (id, result)
            })
            .buffered(INSPECT_CONCURRENCY)
            .collect()
            .await;
        let mut listed = Listed::default();
        for (id, result) in read {
            match result {
                Ok(image) => listed.entities.extend(image.map(Entity::from)),
                Err(ReadError::Undecodable(message)) => {
                    warn!(image_id = %id, %message, "docker images: skipping an image whose inspect does not parse");
                }
                Err(ReadError::Failed(_)) => {
                    listed.unreadable.push((id.clone(), EntityId::new(Kind::ContainerImageMetadata, id)));
                }
            }
        }
        Ok(listed)
    }

    fn key(&self, event: &EventMessage) -> Option<String> {
        if !relevant(event) {
            return None;
        }
        event.actor.as_ref().and_then(|a| a.id.clone()).filter(|id| !id.is_empty())
    }

    /// Reads the image the events name again: set when dockerd still holds it, unset when it
    /// does not and the events named it by id.
    async fn refresh(&self, reference: &str, _events: Vec<EventMessage>) -> Result<Refreshed, CollectorError> {
        let engine = self.engine()?;
        let read = match self.read(engine, reference).await {
            Ok(read) => read,
            Err(ReadError::Undecodable(message)) => {
                warn!(image = %reference, %message, "docker images: skipping an image whose inspect does not parse");
                return Ok(Refreshed::Skip);
            }
            Err(ReadError::Failed(error)) => return Err(error),
        };
        Ok(match read {
            Some(image) => Refreshed::Present(Entity::from(image)),
            None if reference.starts_with("sha256:") => {
                Refreshed::Gone { id: EntityId::new(Kind::ContainerImageMetadata, reference), said: None }
            }
            None => Refreshed::Skip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(size: i64, created_by: &str) -> HistoryEntry {
        HistoryEntry { created: 1_700_000_000, created_by: created_by.into(), size, comment: String::new() }
    }

    #[test]
    fn layers_get_their_history_only_when_it_pairs_with_them() {
        let inspect = || ImageInspect {
            id: format!("sha256:{}", "a".repeat(64)),
            repo_tags: Some(vec!["wm.local/busybox:1".into(), "<none>:<none>".into()]),
            root_fs: crate::engine::RootFs { layers: Some(vec!["sha256:l1".into(), "sha256:l2".into()]) },
            ..ImageInspect::default()
        };
        // Newest first, as dockerd gives it; the CMD step made no layer.
        let history = [step(0, "CMD [\"sh\"]"), step(20, "COPY app /"), step(4_000, "ADD rootfs.tar /")];
        let image = image_from_inspect(inspect(), &history);
        assert_eq!((image.name.as_str(), image.repo_tags.len()), ("wm.local/busybox", 1));
        let made: Vec<_> =
            image.layers.iter().map(|l| (l.digest.as_str(), l.size_bytes, l.created_by.as_str())).collect();
        assert_eq!(made, [("sha256:l1", 4_000, "ADD rootfs.tar /"), ("sha256:l2", 20, "COPY app /")]);
        let unpaired = image_from_inspect(inspect(), &history[..2]);
        assert!(unpaired.layers.iter().all(|l| l.created_by.is_empty() && l.size_bytes == 0));
    }
}
