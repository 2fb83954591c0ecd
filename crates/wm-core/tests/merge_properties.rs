//! Properties of the merge over generated entities (DESIGN 3): the order versions come in never
//! matters; each field comes from the highest-precedence source that has it, except a
//! container's state, pid and cgroup path, which the runtime's version gives first; labels are
//! the union, the higher source winning a shared key.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use proptest::prelude::*;
use wm_core::merge::merge;
use wm_core::{Container, ContainerDetails, ContainerState, ContainerStatus, Entity, Source, StrMap};

fn source() -> impl Strategy<Value = Source> {
    prop::sample::select(Source::ALL.to_vec())
}

fn container() -> impl Strategy<Value = Container> {
    let text = prop::option::of("[a-z]{1,6}");
    let labels = prop::collection::btree_map("[a-c]", "[x-z]{1,2}", 0..3);
    (text.clone(), text, labels, prop::option::of(1u32..5), any::<bool>()).prop_map(
        |(name, hostname, labels, pid, running)| Container {
            id: "c1".into(),
            name: name.unwrap_or_default().into(),
            labels: labels.into_iter().collect::<StrMap>(),
            state: if running {
                ContainerState {
                    running: true,
                    status: ContainerStatus::Running,
                    pid: pid.unwrap_or(0),
                    ..ContainerState::default()
                }
            } else {
                ContainerState { pid: pid.unwrap_or(0), ..ContainerState::default() }
            },
            details: ContainerDetails { hostname: hostname.unwrap_or_default(), ..ContainerDetails::default() }.into(),
            ..Container::default()
        },
    )
}

/// One version per source at most, in a generated order.
fn versions() -> impl Strategy<Value = Vec<(Source, Entity)>> {
    prop::collection::btree_map(source(), container(), 1..=4)
        .prop_map(|by_source| by_source.into_iter().map(|(s, c)| (s, Entity::from(c))).collect::<Vec<_>>())
        .prop_shuffle()
}

fn as_container(entity: &Entity) -> &Container {
    entity.as_container().expect("a container")
}

proptest! {
    #[test]
    fn the_order_of_the_versions_never_matters(versions in versions(), seed in any::<u64>()) {
        let refs: Vec<(Source, &Entity)> = versions.iter().map(|(s, e)| (*s, e)).collect();
        let mut reordered = refs.clone();
        let len = reordered.len();
        reordered.rotate_left((seed as usize) % len);
        reordered.reverse();
        prop_assert_eq!(merge(&refs), merge(&reordered));
    }

    #[test]
    fn each_field_comes_from_the_highest_source_that_has_it(versions in versions()) {
        let refs: Vec<(Source, &Entity)> = versions.iter().map(|(s, e)| (*s, e)).collect();
        let merged = merge(&refs).unwrap();
        let merged = as_container(&merged);
        let mut ranked = versions.clone();
        ranked.sort_by_key(|(s, _)| *s);
        let first = |field: fn(&Container) -> &str| {
            ranked.iter().map(|(_, e)| field(as_container(e))).find(|v| !v.is_empty()).unwrap_or_default().to_owned()
        };
        prop_assert_eq!(merged.name.as_str(), first(|c| &c.name));
        prop_assert_eq!(&merged.details.hostname, &first(|c| &c.details.hostname));
        // The runtime's pid first, then the others' in precedence order.
        let runtime_first = ranked.iter().filter(|(s, _)| *s == Source::Runtime).chain(ranked.iter().filter(|(s, _)| *s != Source::Runtime));
        let pid = runtime_first.map(|(_, e)| as_container(e).state.pid).find(|p| *p != 0).unwrap_or(0);
        prop_assert_eq!(merged.state.pid, pid);
        // Labels: the union; a shared key has the highest source's value.
        for (_, version) in &ranked {
            for (key, _) in as_container(version).labels.iter() {
                let want = ranked.iter().find_map(|(_, e)| as_container(e).labels.get(key)).unwrap();
                prop_assert_eq!(merged.labels.get(key), Some(want));
            }
        }
        let keys: usize = {
            let mut all: Vec<&str> = ranked.iter().flat_map(|(_, e)| as_container(e).labels.iter().map(|(k, _)| k)).collect();
            all.sort_unstable();
            all.dedup();
            all.len()
        };
        prop_assert_eq!(merged.labels.len(), keys);
    }
}
