//! The interners through a real store: containers of many sources share one copy of each image
//! and of each label's text, and the interners hold exactly what some entity still holds: once
//! every entity that used them is gone, they are empty again. The store keeps one copy of each
//! id. (Its own test binary: the interners are process-wide.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use wm_core::{
    CollectorEvent, Container, ContainerImage, EntityId, IStr, Id, Kind, KubernetesPod, OrchestratorContainer, Source,
    StrMap,
};
use wm_store::Store;

fn image(raw: &str) -> ContainerImage {
    ContainerImage::parse_with_id(raw, &format!("sha256:{:064x}", raw.len()))
}

fn container(id: &str, raw_image: &str) -> Container {
    let labels: StrMap = [("io.kubernetes.pod.uid", "pod-1"), ("app", raw_image)].into_iter().collect();
    Container { id: id.into(), image: image(raw_image), labels, ..Container::default() }
}

#[tokio::test]
async fn images_are_shared_while_used_and_the_interner_empties_when_their_entities_go() {
    assert_eq!(ContainerImage::interned_count(), 0);
    assert_eq!(IStr::interned_count(), 0);
    let store = Store::new();
    let ids: Vec<String> = (0..6).map(|i| format!("{i:064x}")).collect();
    let raw = |i: usize| if i.is_multiple_of(2) { "nginx:1.25" } else { "gcr.io/team/app:2.0" };
    let mut events = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        // Each container from two sources, each building its own image: one copy is kept.
        events.push(CollectorEvent::set(Source::Runtime, container(id, raw(i))));
        events.push(CollectorEvent::set(
            Source::NodeOrchestrator,
            Container { owner: Some(EntityId::new(Kind::KubernetesPod, "pod-1")), ..container(id, raw(i)) },
        ));
    }
    let pod = KubernetesPod {
        id: "pod-1".into(),
        containers: ids
            .iter()
            .enumerate()
            .map(|(i, id)| OrchestratorContainer {
                id: id.as_str().into(),
                name: format!("c{i}").into(),
                image: image(raw(i)),
            })
            .collect(),
        ..KubernetesPod::default()
    };
    events.push(CollectorEvent::set(Source::NodeOrchestrator, pod));
    store.notify(events).await;
    store.sync().await;
    assert_eq!(ContainerImage::interned_count(), 2, "two distinct images");
    // The labels' texts (two keys, "pod-1" and two images' names) and the pod's six container
    // names.
    assert_eq!(IStr::interned_count(), 5 + 6);
    let first = store.get_container(&ids[0]).unwrap();
    let third = store.get_container(&ids[2]).unwrap();
    assert!(first.image.ptr_eq(&third.image), "the merged containers share one image");
    assert_eq!(first.image.tag, "1.25");
    assert_eq!(first.labels.get("app"), Some("nginx:1.25"));
    // Both sources' versions of a container, and its merged view, hold the record's one copy
    // of its id.
    let dump = store.dump(true);
    let entry = dump.entities.iter().find(|e| *e.id.id == *ids[0]).unwrap();
    let versions = entry.per_source.as_ref().unwrap();
    assert_eq!(versions.len(), 2, "runtime and node orchestrator");
    for version in versions {
        assert!(Id::ptr_eq(version.entity.id_str(), &entry.id.id), "one copy of the id");
    }
    assert!(Id::ptr_eq(entry.merged.id_str(), &entry.id.id));
    drop((first, third, dump));

    // A container written to after interning keeps its own copy: the shared one is untouched.
    let mut own = store.get_container(&ids[1]).unwrap().image.clone();
    own.tag = "patched".into();
    assert_eq!(store.get_container(&ids[3]).unwrap().image.tag, "2.0");
    drop(own);

    // Every entity goes: so do the images.
    let mut unsets: Vec<CollectorEvent> = ids
        .iter()
        .flat_map(|id| {
            let gone = Container { id: id.as_str().into(), ..Container::default() };
            [
                CollectorEvent::unset(Source::Runtime, gone.clone()),
                CollectorEvent::unset(Source::NodeOrchestrator, gone),
            ]
        })
        .collect();
    unsets.push(CollectorEvent::unset(
        Source::NodeOrchestrator,
        KubernetesPod { id: "pod-1".into(), ..KubernetesPod::default() },
    ));
    store.notify(unsets).await;
    store.sync().await;
    assert_eq!(store.dump(false).entities.len(), 0);
    assert_eq!(ContainerImage::interned_count(), 0, "the interner is empty once no entity uses an image");
    assert_eq!(IStr::interned_count(), 0, "no text is kept once no entity holds it");

    // And it fills again, and empties with the store.
    store.notify(vec![CollectorEvent::set(Source::Runtime, container(&ids[0], raw(0)))]).await;
    store.sync().await;
    assert_eq!(ContainerImage::interned_count(), 1);
    assert_eq!(IStr::interned_count(), 4);
    store.shutdown().await;
    drop(store);
    assert_eq!(ContainerImage::interned_count(), 0);
    assert_eq!(IStr::interned_count(), 0);
}
