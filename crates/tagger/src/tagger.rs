//! The tagger: follows the workload store at `tagger` priority and keeps the tag store up to
//! date.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wm_core::sync::MutexExt;
use wm_core::{Container, Entity, Event, EventType, Filter, LaunchType, SubscriberPriority};
use wm_store::Store;

use crate::config::TaggerConfig;
use crate::entity_id::TaggerEntityId;
use crate::fetch::{ContainerFetcher, FetchLimits, SingleFlight};
use crate::rules;
use crate::store::{Clock, SharedPart, SharedParts, SystemClock, TagKey, TagSource, TagStore, Tags};
use crate::tags::{TagCardinality, TagInfo};

/// The entity id that holds the node-wide tags: those from this node's labels and annotations
/// (`kubernetes_node_*_as_tags`), and an ECS Fargate task's tags.
pub const GLOBAL_ENTITY_ID: &str = "internal://global-entity-id";

/// Returns the tagger's entity id of a container, `container_id://<id>`, as lookups take it.
pub fn container_entity(id: &str) -> String {
    TaggerEntityId::container(id).to_string()
}

/// Returns the tagger's entity id of a workload store entity, as lookups take it.
pub fn entity_id(entity: &Entity) -> String {
    TaggerEntityId::of_entity(entity).to_string()
}

/// The entities each pod, ECS task or Kubernetes object gave tags to, by that parent's key; the
/// parent's kind tells which source the tags came from.
///
/// Every key is the one the tag store returned, so its id text is the tag store's allocation,
/// not a copy.
type Children = HashMap<TagKey, Box<[TagKey]>>;

/// An entity that a pod, task or object gives tags to: its key, the parts it shares with others
/// (its owner's tags; for a pod's container, the tags of its template's container too), and its
/// own extra tags.
type Child = (TagKey, SharedParts, TagInfo);

/// Takes a pod's `pod_name` tag (the first orchestrator tag [`rules::pod_tags`] adds) out of its
/// tags: the pod's name alone, and the rest.
fn split_pod_name(mut tags: TagInfo) -> (TagInfo, TagInfo) {
    let mut name = TagInfo::default();
    if tags.orchestrator.first().is_some_and(|t| t.starts_with("pod_name:")) {
        name.orchestrator.push(tags.orchestrator.remove(0));
    }
    (name, tags)
}

/// `first`'s tags then `then`'s, level by level, as two parts read one after the other would
/// give them (no tag dropped for being in both).
fn concatenated(first: &TagInfo, then: TagInfo) -> TagInfo {
    let mut all = first.clone();
    all.low.extend(then.low);
    all.orchestrator.extend(then.orchestrator);
    all.high.extend(then.high);
    all.standard.extend(then.standard);
    all
}

/// How often the tagger prunes deletions past their grace period.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Turns workload store events into tags, held in a [`TagStore`].
#[derive(Debug)]
pub struct Tagger {
    config: TaggerConfig,
    store: TagStore,
    /// The entities each parent gave tags to, so that their tags can be deleted when the parent
    /// stops listing them or goes.
    children: Mutex<Children>,
    /// Asks the runtime about a container that a lookup did not find; `None` without a fetcher.
    fetcher: Option<SingleFlight>,
}

impl Tagger {
    /// Creates a tagger whose deletions are timed on the system clock.
    pub fn new(config: TaggerConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemClock::default()))
    }

    /// Creates a tagger whose deletions are timed on `clock`.
    ///
    /// Tests pass a [`crate::ManualClock`] and move it past the grace period.
    pub fn with_clock(config: TaggerConfig, clock: Arc<dyn Clock>) -> Self {
        let grace = config.deletion_grace_period();
        Self { config, store: TagStore::new(clock, grace), children: Mutex::new(HashMap::new()), fetcher: None }
    }

    /// Adds a fetcher that [`Tagger::tag_or_fetch`] asks about a container it does not know.
    ///
    /// Each fetch is cut off after `timeout`, and fetches are bounded by the default
    /// [`FetchLimits`].
    pub fn with_fetcher(self, fetcher: Arc<dyn ContainerFetcher>, timeout: Duration) -> Self {
        self.with_fetcher_limits(fetcher, timeout, FetchLimits::default())
    }

    /// Adds a fetcher like [`Tagger::with_fetcher`], bounded by `limits` instead of the defaults.
    pub fn with_fetcher_limits(
        mut self,
        fetcher: Arc<dyn ContainerFetcher>,
        timeout: Duration,
        limits: FetchLimits,
    ) -> Self {
        self.fetcher = Some(SingleFlight::new(fetcher, timeout, limits));
        self
    }

    /// Returns the entity's tags like [`Tagger::tag`], but first fetches an unknown
    /// `container_id://<id>` from the runtime and tags it.
    ///
    /// Concurrent lookups of the same id share one fetch. The answer is empty when there is no
    /// fetcher, when the fetch is refused (see [`crate::Refused`]) or times out, and when the
    /// runtime does not know the id (it is then not asked again for a while). An entity the
    /// tagger knows is never fetched, even when it has no tags at `cardinality`.
    pub async fn tag_or_fetch(&self, entity: &str, cardinality: TagCardinality) -> Tags {
        let tags = self.store.tag(entity, cardinality);
        if !tags.is_empty() {
            return tags;
        }
        if self.store.contains(entity) {
            // Either it has no tags at this cardinality, or it was stored since the read above:
            // read again rather than fetch.
            return self.store.tag(entity, cardinality);
        }
        let parsed = TaggerEntityId::parse(entity);
        let (Some(fetcher), Some(id)) = (&self.fetcher, parsed.container_id()) else { return tags };
        let known = || self.store.contains(entity);
        let store = |container: &Container| self.set_container(TagKey::parse(entity), container);
        if fetcher.fetch(id, known, store).await { self.store.tag(entity, cardinality) } else { tags }
    }

    /// Returns how many cache-miss fetches were refused so far, by reason name (see
    /// [`crate::Refused`]); empty without a fetcher.
    pub fn fetches_refused(&self) -> Vec<(&'static str, u64)> {
        self.fetcher.as_ref().map_or_else(Vec::new, |f| f.refused().iter().map(|(r, n)| (r.as_str(), *n)).collect())
    }

    /// Counts the ids being fetched now (0 without a fetcher).
    pub fn fetches_in_flight(&self) -> usize {
        self.fetcher.as_ref().map_or(0, |f| f.in_flight())
    }

    /// Returns the bytes held by the cache-miss path's memory of ids the runtime did not know
    /// (0 without a fetcher).
    pub fn fetch_negative_bytes(&self) -> usize {
        self.fetcher.as_ref().map_or(0, |f| f.negative_bytes())
    }

    /// Returns the tag store, for lookups, dumps and subscriptions.
    pub fn store(&self) -> &TagStore {
        &self.store
    }

    /// Counts the bytes of the index of the entities each pod, task or object tagged, for the
    /// memory benchmark.
    #[cfg(feature = "memory-accounting")]
    pub fn children_bytes(&self) -> usize {
        let children = self.children.locked();
        // The keys' id text is shared with the tag store, which counts it.
        let entry = std::mem::size_of::<(TagKey, Box<[TagKey]>)>();
        children.values().map(|kids| entry + kids.len() * std::mem::size_of::<TagKey>()).sum()
    }

    /// Returns the entity's tags at `cardinality` and below; an unknown entity has none.
    ///
    /// Takes no lock and allocates nothing.
    pub fn tag(&self, entity: &str, cardinality: TagCardinality) -> Tags {
        self.store.tag(entity, cardinality)
    }

    /// Returns the entity's unified service tags (`env`, `service`, `version`).
    pub fn standard(&self, entity: &str) -> Tags {
        self.store.standard(entity)
    }

    /// Applies a bundle's events to the tag store, in order; subscribers of the tag store get
    /// the bundle's changes as one message.
    pub fn process(&self, events: &[Event]) {
        self.store.batched(|| {
            for event in events {
                self.process_one(event);
            }
        });
    }

    fn process_one(&self, event: &Event) {
        let id = TagKey::of(&event.entity.id());
        match (&event.entity, event.event_type) {
            (Entity::Container(c), EventType::Set) => self.set_container(id, c),
            (Entity::Container(_), EventType::Unset) => self.store.delete_key(&id, TagSource::Container),
            (Entity::KubernetesPod(p), EventType::Set) => {
                // The pod's name is the one tag no other pod has: a part of its own, so that the
                // rest is one part for all the pods of a template in a namespace, and each
                // container's narrow part (the rest, then its template's tags) one for all the
                // namesakes of those pods. Read level by level, the tags come in the same order
                // as from one part.
                let (name, rest) = split_pod_name(rules::pod_tags(p, &self.config));
                let name = SharedPart::new(&name);
                let children = p
                    .all_containers()
                    .filter(|c| !c.id.is_empty())
                    .map(|c| {
                        let (template, own) = rules::pod_container_tags(p, c);
                        let narrow = SharedPart::new(&concatenated(&rest, template));
                        (TagKey::container(c.id.clone()), SharedParts { broad: name.clone(), narrow }, own)
                    })
                    .collect();
                let parts = SharedParts { broad: name, narrow: SharedPart::new(&rest) };
                self.set_with_children(TagSource::KubernetesPod, id, parts, children);
            }
            (Entity::EcsTask(t), EventType::Set) => {
                let task = rules::task_tags(t, &self.config);
                let base = SharedParts { broad: SharedPart::new(&task), narrow: None };
                let mut children: Vec<Child> = t
                    .containers
                    .iter()
                    .filter(|c| !c.id.is_empty())
                    .map(|c| (TagKey::container(c.id.clone()), base.clone(), rules::task_container_tags(c)))
                    .collect();
                if t.launch_type == Some(LaunchType::Fargate) {
                    children.push((TagKey::parse(GLOBAL_ENTITY_ID), base.clone(), TagInfo::default()));
                }
                self.set_with_children(TagSource::EcsTask, id, base, children);
            }
            (Entity::KubernetesMetadata(m), EventType::Set) => {
                let base = SharedParts { broad: SharedPart::new(&rules::metadata_tags(m, &self.config)), narrow: None };
                let children = if m.is_node() {
                    vec![(TagKey::parse(GLOBAL_ENTITY_ID), base.clone(), TagInfo::default())]
                } else {
                    Vec::new()
                };
                self.set_with_children(TagSource::KubernetesMetadata, id, base, children);
            }
            (Entity::KubernetesPod(_), EventType::Unset) => self.delete_with_children(TagSource::KubernetesPod, id),
            (Entity::KubernetesMetadata(_), EventType::Unset) => {
                self.delete_with_children(TagSource::KubernetesMetadata, id);
            }
            (Entity::EcsTask(_), EventType::Unset) => self.delete_with_children(TagSource::EcsTask, id),
            (Entity::ContainerImageMetadata(i), EventType::Set) => {
                self.store.set_layered(
                    id,
                    TagSource::ContainerImage,
                    SharedParts::default(),
                    &rules::container_image_tags(i),
                );
            }
            (Entity::ContainerImageMetadata(_), EventType::Unset) => {
                self.store.delete_key(&id, TagSource::ContainerImage)
            }
            // Not subscribed to (see `spawn`): no tags.
            (Entity::Process(_), _) => {}
        }
    }

    /// Tags a container from its own source: its image's tags, then its name's, then its own.
    ///
    /// The image's and the name's tags are shared parts, one per image and one per name.
    fn set_container(&self, id: TagKey, c: &wm_core::Container) {
        let (image, name, own) = rules::container_tags_by_image(c, &self.config);
        let shared = SharedParts { broad: SharedPart::new(&image), narrow: SharedPart::new(&name) };
        self.store.set_layered(id, TagSource::Container, shared, &own);
    }

    /// Drops the deletions past their grace period.
    pub fn prune(&self) {
        self.store.prune();
    }

    /// Counts the shared parts interned now, across every tagger in the process: images',
    /// container names', pods' names, and what the pods of one template and their namesake
    /// containers share, each kept once for
    /// every entity given it.
    ///
    /// A part leaves when the last record holding it is freed. The tag store's lock-free map
    /// frees replaced records in batches as later writes go on, so a part may outlive its last
    /// entity for a while.
    pub fn shared_parts_interned() -> usize {
        SharedPart::interned()
    }

    /// Tags a pod, task or object with the shared `parts` alone, and each of its children with
    /// its own shared parts, then its extra tags.
    ///
    /// The children are recorded under the parent's key; a child the parent listed before but no
    /// longer lists loses what `source` said about it.
    fn set_with_children(&self, source: TagSource, id: TagKey, parts: SharedParts, children: Vec<Child>) {
        let none = TagInfo::default();
        let (id, _) = self.store.set_layered(id, source, parts, &none);
        let now: Box<[TagKey]> = children
            .into_iter()
            .map(|(child, parts, extra)| self.store.set_layered(child, source, parts, &extra).0)
            .collect();
        let mut index = self.children.locked();
        let before = if now.is_empty() { index.remove(&id) } else { index.insert(id, now.clone()) };
        drop(index);
        for gone in before.iter().flat_map(|b| b.iter()).filter(|c| !now.contains(c)) {
            self.store.delete_key(gone, source);
        }
    }

    /// Marks what `source` says about a parent, and about each child it last listed, as deleted.
    fn delete_with_children(&self, source: TagSource, id: TagKey) {
        self.store.delete_key(&id, source);
        let children = self.children.locked().remove(&id);
        for child in children.iter().flat_map(|c| c.iter()) {
            self.store.delete_key(child, source);
        }
    }

    /// Marks as deleted what each source says about the entities `snapshot` no longer backs.
    ///
    /// `snapshot` is the first bundle of a subscription (every entity in the workload store); the
    /// caller applies it first, so that the children recorded for each parent are current. What
    /// a source says about an entity stays if the snapshot holds that entity, or holds a parent
    /// of that source's kind that lists it as a child. Everything else is marked as deleted and
    /// dropped once the grace period has passed; the children recorded for a parent the
    /// snapshot no longer holds are forgotten.
    fn reconcile(&self, snapshot: &[Event]) {
        // The keys share their id text with the snapshot's entities and the tag store, so the
        // set costs little beside them.
        let mut live: HashSet<(TagSource, TagKey)> = HashSet::with_capacity(snapshot.len());
        let mut parents: HashSet<TagKey> = HashSet::new();
        let mut children = self.children.locked();
        for event in snapshot {
            let key = TagKey::of(&event.entity.id());
            let source = match event.entity {
                Entity::Container(_) => TagSource::Container,
                Entity::EcsTask(_) => TagSource::EcsTask,
                Entity::KubernetesMetadata(_) => TagSource::KubernetesMetadata,
                Entity::KubernetesPod(_) => TagSource::KubernetesPod,
                Entity::ContainerImageMetadata(_) => TagSource::ContainerImage,
                // Not subscribed to (see `spawn`): no tags.
                Entity::Process(_) => continue,
            };
            if source != TagSource::Container {
                for child in children.get(&key).into_iter().flat_map(|c| c.iter()) {
                    live.insert((source, child.clone()));
                }
                parents.insert(key.clone());
            }
            live.insert((source, key));
        }
        children.retain(|parent, _| parents.contains(parent));
        drop(children);
        for (key, source) in self.store.stale(|key, source| live.contains(&(source, key.clone()))) {
            self.store.delete_key(&key, source);
        }
    }

    /// Keeps the tag store in step with the workload store `store`, and spawns the task that
    /// prunes it.
    ///
    /// The tagger subscribes inline ([`Store::subscribe_inline`]) at `tagger` priority: the
    /// store's loop stores each bundle's tags itself, so they are stored before any
    /// lower-priority subscriber hears of the bundle, with no task hand-off on the way (storing
    /// tags never waits, and took about 16 µs a change in the containerd churn bench's profile).
    /// The first bundle is the snapshot: after storing it, the tagger deletes the tags of
    /// entities the snapshot no longer holds. An inline subscriber is never cut off, so it never
    /// subscribes again.
    ///
    /// The task calls [`Tagger::prune`] every minute, and ends when the store ends the
    /// subscription (at shutdown). The subscription is made before this returns, so every
    /// batch the store sends out afterwards reaches the tagger before any lower-priority
    /// subscriber.
    pub fn spawn(self: &Arc<Self>, store: &Store) -> tokio::task::JoinHandle<()> {
        // Processes have no tags of their own (upstream tags one only from its APM service
        // metadata, which we do not collect), and a node has thousands: the tagger does not
        // take them at all.
        let kinds = wm_core::Kind::ALL.into_iter().filter(|k| *k != wm_core::Kind::Process);
        let handler = self.clone();
        let mut first = true;
        let mut sub =
            store.subscribe_inline("tagger", SubscriberPriority::Tagger, Filter::only_kinds(kinds), move |events| {
                handler.process(events);
                if std::mem::take(&mut first) {
                    handler.reconcile(events);
                }
            });
        let tagger = self.clone();
        tokio::spawn(async move {
            let mut prune = tokio::time::interval(PRUNE_EVERY);
            prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    // An inline subscription receives no bundles; its stream only ends.
                    next = sub.recv() => if next.is_none() {
                        return;
                    },
                    _ = prune.tick() => tagger.prune(),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use wm_core::{Container, ContainerImage, Runtime};

    use super::*;
    use crate::store::ManualClock;

    fn event(event_type: EventType, id: &str, image: &str) -> Event {
        let image = ContainerImage::parse(image);
        let c =
            Container { id: id.into(), name: id.into(), image, runtime: Some(Runtime::Docker), ..Container::default() };
        Event { event_type, entity: Entity::from(c) }
    }

    #[test]
    fn image_and_name_tags_are_kept_once_each_and_go_with_the_last_container() {
        let clock = Arc::new(ManualClock::default());
        let tagger = Tagger::with_clock(TaggerConfig::default(), clock.clone());
        // Images and names no other test uses: the interner is process-wide.
        let sets = [("sa", "shared-test/nginx:1.25"), ("sb", "shared-test/nginx:1.25"), ("sc", "shared-test/redis:7")];
        tagger.process(&sets.map(|(id, image)| event(EventType::Set, id, image)));
        // Two images' tags, and three names' (each container here has a name of its own).
        let parts: Vec<TagInfo> = sets
            .iter()
            .flat_map(|(id, image)| {
                let (image, name, _) = rules::container_tags_by_image(&c(id, image), &tagger.config);
                [image, name]
            })
            .collect();
        let interned = || parts.iter().filter(|p| SharedPart::is_interned(p)).count();
        assert_eq!(interned(), 6, "every part is interned (the nginx image's twice over)");
        // Each container reads as if it had its own copy: its image's tags, its name's, then its
        // own.
        let b = tagger.tag(&container_entity("sb"), TagCardinality::High).to_vec();
        assert_eq!(
            b,
            [
                "image_name:shared-test/nginx",
                "short_image:nginx",
                "image_tag:1.25",
                "docker_image:shared-test/nginx:1.25",
                "container_name:sb",
                "container_id:sb"
            ]
        );
        let sb = c("sb", "shared-test/nginx:1.25");
        assert_eq!(tagger.store().tag_info(&container_entity("sb")), Some(rules::container_tags(&sb, &tagger.config)));

        // Every container goes: after the grace period, so do the images' tags.
        tagger.process(&sets.map(|(id, image)| event(EventType::Unset, id, image)));
        tagger.prune();
        assert_eq!(interned(), 6, "still served during the grace period");
        clock.advance(tagger.config.deletion_grace_period());
        tagger.prune();
        assert!(tagger.tag(&container_entity("sa"), TagCardinality::High).is_empty());
        // The records that pointed at them are freed by the lock-free map in batches, as later
        // writes go on: the parts leave the interner then.
        let mut churn = 0;
        while interned() > 0 && churn < 1_000 {
            tagger.process(&[event(EventType::Set, "churn", &format!("churn:{churn}"))]);
            tagger.process(&[event(EventType::Unset, "churn", &format!("churn:{churn}"))]);
            clock.advance(tagger.config.deletion_grace_period());
            tagger.prune();
            churn += 1;
        }
        assert_eq!(interned(), 0, "after {churn} rounds of churn");
    }

    #[test]
    fn a_fresh_snapshot_deletes_what_it_no_longer_holds_and_keeps_the_rest() {
        let clock = Arc::new(ManualClock::default());
        let tagger = Tagger::with_clock(TaggerConfig::default(), clock.clone());
        let (a, b) = (event(EventType::Set, "a", "nginx:1.25"), event(EventType::Set, "b", "redis:7"));
        let web = wm_core::OrchestratorContainer { id: "a".into(), name: "web".into(), ..Default::default() };
        let pod = wm_core::KubernetesPod {
            id: "p1".into(),
            name: "web-1".into(),
            containers: vec![web],
            ..Default::default()
        };
        let pod = Event { event_type: EventType::Set, entity: Entity::from(pod) };
        tagger.process(&[a.clone(), b.clone(), pod]);
        let high = |id: &str| tagger.tag(id, TagCardinality::High).to_vec();
        assert!(high(&container_entity("a")).contains(&"pod_name:web-1".to_owned()));
        assert!(
            tagger.children.locked().contains_key(&TagKey::parse("kubernetes_pod_uid://p1")),
            "the pod's child is recorded"
        );

        // The store was lost and comes back holding container `a` only (its pod is gone).
        tagger.reconcile(&[a]);
        assert!(tagger.children.locked().is_empty(), "the gone pod's children are forgotten");
        assert!(!high("kubernetes_pod_uid://p1").is_empty(), "served through the grace period");
        clock.advance(tagger.config.deletion_grace_period());
        tagger.prune();
        assert!(high(&container_entity("b")).is_empty());
        assert!(high("kubernetes_pod_uid://p1").is_empty());
        let kept = high(&container_entity("a"));
        assert!(kept.contains(&"container_id:a".to_owned()), "{kept:?}");
        assert!(!kept.iter().any(|t| t.starts_with("pod_name:")), "its pod's tags went with the pod: {kept:?}");

        // A snapshot holding everything deletes nothing.
        tagger.process(std::slice::from_ref(&b));
        tagger.reconcile(&[b]);
        clock.advance(tagger.config.deletion_grace_period());
        tagger.prune();
        assert!(!high(&container_entity("b")).is_empty());
    }

    #[test]
    fn a_bundle_of_ten_thousand_reaches_a_tag_subscriber_as_one_message() {
        let tagger = Tagger::with_clock(TaggerConfig::default(), Arc::new(ManualClock::default()));
        // Room for two messages: one per change would overflow it and drop the subscriber.
        let mut rx = tagger.store().subscribe("", TagCardinality::High, 2);
        assert!(rx.try_recv().unwrap().is_empty(), "an empty first snapshot");
        let events: Vec<Event> =
            (0..10_000).map(|i| event(EventType::Set, &format!("bulk-{i}"), "bundle-test/app:1")).collect();
        tagger.process(&events);
        let batch = rx.try_recv().unwrap();
        assert_eq!(batch.len(), 10_000);
        assert!(batch.iter().all(|e| e.kind == crate::TagEventKind::Added && !e.tags.is_empty()));
        assert_eq!(batch[9_999].entity, container_entity("bulk-9999"), "in the order they were made");
        assert!(rx.try_recv().is_err(), "one message for the bundle");
        // Outside a bundle, a change is a message of its own.
        tagger.process(&[event(EventType::Set, "bulk-0", "bundle-test/app:2")]);
        assert_eq!(rx.try_recv().unwrap().len(), 1);
    }

    #[test]
    fn the_pods_of_one_template_share_every_tag_but_their_names_and_read_as_before() {
        let tagger = Tagger::with_clock(TaggerConfig::default(), Arc::new(ManualClock::default()));
        // A namespace no other test uses: the interner is process-wide.
        let pod = |n: u32| {
            let web = wm_core::OrchestratorContainer {
                id: format!("tpl-c{n}").as_str().into(),
                name: "web".into(),
                ..Default::default()
            };
            wm_core::KubernetesPod {
                id: format!("tpl-p{n}").as_str().into(),
                name: format!("web-{n}").as_str().into(),
                namespace: "template-test".into(),
                phase: "Running".into(),
                containers: vec![web],
                ..Default::default()
            }
        };
        let pods = [pod(1), pod(2)];
        tagger.process(&pods.clone().map(|p| Event { event_type: EventType::Set, entity: Entity::from(p) }));
        for p in &pods {
            let whole = rules::pod_tags(p, &tagger.config);
            let (name, rest) = split_pod_name(whole.clone());
            assert_eq!(name.orchestrator, [format!("pod_name:{}", p.name)]);
            assert!(!rest.low.is_empty() && !rest.orchestrator.iter().any(|t| t.starts_with("pod_name:")));
            assert!(SharedPart::is_interned(&name) && SharedPart::is_interned(&rest));
            let c = &p.containers[0];
            let (template, own) = rules::pod_container_tags(p, c);
            assert!(SharedPart::is_interned(&concatenated(&rest, template.clone())));
            // Split or not, the pod and its container read what one part would give them: the
            // pod's tags, then the template's, then the container's own.
            assert_eq!(tagger.store().tag_info(&format!("kubernetes_pod_uid://{}", p.id)), Some(whole.clone()));
            let mut expected = concatenated(&concatenated(&whole, template), own);
            // The store holds the id tag once per entity, read after every part.
            expected.high.retain(|t| !t.starts_with("container_id:"));
            expected.high.push(format!("container_id:{}", c.id));
            assert_eq!(tagger.store().tag_info(&container_entity(&c.id)), Some(expected));
        }
        // One `rest` for both pods: the two pods' own parts differ in their names alone.
        let rests: Vec<TagInfo> = pods.iter().map(|p| split_pod_name(rules::pod_tags(p, &tagger.config)).1).collect();
        assert_eq!(rests[0], rests[1]);
    }

    fn c(id: &str, image: &str) -> Container {
        let Entity::Container(c) = event(EventType::Set, id, image).entity else { unreachable!() };
        (*c).clone()
    }
}
