//! The store against a model, over generated sequences of sets, unsets and full lists from
//! several sources (DESIGN 3): after any sequence, the store holds exactly the entities some
//! source still says, each merged from what those sources say.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;

use proptest::prelude::*;
use wm_core::{CollectorEvent, Container, Entity, Kind, Source, StoreReader};
use wm_store::Store;

#[derive(Clone, Debug)]
enum Op {
    Set(Source, u8, String),
    Unset(Source, u8),
    Reset(Source, Vec<(u8, String)>),
}

fn source() -> impl Strategy<Value = Source> {
    prop::sample::select(vec![Source::Runtime, Source::NodeOrchestrator, Source::ClusterOrchestrator])
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (source(), 0u8..6, "[a-z]{0,3}").prop_map(|(s, id, name)| Op::Set(s, id, name)),
        2 => (source(), 0u8..6).prop_map(|(s, id)| Op::Unset(s, id)),
        1 => (source(), prop::collection::btree_map(0u8..6, "[a-z]{0,3}", 0..4))
            .prop_map(|(s, list)| Op::Reset(s, list.into_iter().collect())),
    ]
}

fn entity(id: u8, name: &str) -> Entity {
    Entity::from(Container { id: format!("c{id}").into(), name: name.into(), ..Container::default() })
}

/// What each source says now: source → id → name.
type Model = BTreeMap<Source, BTreeMap<u8, String>>;

fn apply(model: &mut Model, op: &Op) {
    match op {
        Op::Set(s, id, name) => {
            model.entry(*s).or_default().insert(*id, name.clone());
        }
        Op::Unset(s, id) => {
            model.entry(*s).or_default().remove(id);
        }
        Op::Reset(s, list) => {
            let said = model.entry(*s).or_default();
            said.clear();
            for (id, name) in list {
                said.insert(*id, name.clone());
            }
        }
    }
}

/// The model's merged view: id → the name of the highest source with a non-empty one.
fn expected(model: &Model) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for source in Source::ALL.iter().rev() {
        for (id, name) in model.get(source).into_iter().flatten() {
            let slot = out.entry(format!("c{id}")).or_default();
            if !name.is_empty() {
                *slot = name.clone();
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_leaves_the_store_equal_to_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let got = runtime.block_on(async {
            let store = Store::builder().build();
            store.start();
            for op in &ops {
                match op {
                    Op::Set(s, id, name) => store.notify(vec![CollectorEvent::set(*s, entity(*id, name))]).await,
                    Op::Unset(s, id) => store.notify(vec![CollectorEvent::unset(*s, entity(*id, ""))]).await,
                    Op::Reset(s, list) => store.reset(*s, list.iter().map(|(id, name)| entity(*id, name)).collect()).await,
                }
            }
            store.sync().await;
            let got: BTreeMap<String, String> = store
                .list(Kind::Container)
                .iter()
                .map(|e| (e.id_str().to_string(), e.as_container().unwrap().name.to_string()))
                .collect();
            store.shutdown().await;
            got
        });
        let mut model = Model::new();
        for op in &ops {
            apply(&mut model, op);
        }
        prop_assert_eq!(got, expected(&model), "ops: {:?}", ops);
    }
}
