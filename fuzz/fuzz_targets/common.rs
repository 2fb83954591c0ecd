// Shared by the targets (included with `#[path]`): what every converted entity must satisfy.

/// An entity re-serialises: its JSON form reads back into an equal entity.
pub fn round_trips(entity: &wm_core::Entity) {
    let json = serde_json::to_value(entity).expect("an entity serialises");
    let back: wm_core::Entity =
        serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{json} does not read back: {e}"));
    assert!(back == *entity, "{json} reads back different: {back:?}");
}
