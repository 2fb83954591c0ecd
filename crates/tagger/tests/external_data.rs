//! External data (`pu-<uid>,cn-<name>,it-…`) resolves to a container id through the pod's spec.

use tagger::origin::{container_id_from_external_data, parse_external_data};
use wm_core::{CollectorEvent, KubernetesPod, OrchestratorContainer, PodDetails, Source};
use wm_store::Store;

#[tokio::test]
async fn external_data_names_a_container_of_a_stored_pod() {
    let store = Store::new();
    let container =
        |id: &str, name: &str| OrchestratorContainer { id: id.into(), name: name.into(), ..Default::default() };
    let pod = KubernetesPod {
        id: "p1".into(),
        containers: vec![container("c-app", "app"), container("", "not-started")],
        details: PodDetails { init_containers: vec![container("c-init", "app")], ..PodDetails::default() }.into(),
        ..Default::default()
    };
    store.notify(vec![CollectorEvent::set(Source::NodeOrchestrator, pod)]).await;

    let resolve = |text: &str| container_id_from_external_data(&store, &parse_external_data(text));
    assert_eq!(resolve("it-false,cn-app,pu-p1").as_deref(), Some("c-app"));
    assert_eq!(resolve("it-true,cn-app,pu-p1").as_deref(), Some("c-init"));
    assert_eq!(resolve("it-false,cn-not-started,pu-p1"), None, "a container without an id yet");
    assert_eq!(resolve("it-false,cn-app,pu-other"), None, "an unknown pod");
    assert_eq!(resolve("it-false,pu-p1"), None, "no container name");
    store.shutdown().await;
}
