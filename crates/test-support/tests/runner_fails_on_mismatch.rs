//! The conformance runner must fail on a wrong expectation, naming the scenario and the step.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;

use test_support::conformance::{load_file, run_file};

fn write_temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wm-conformance-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn a_wrong_expectation_fails_with_scenario_and_step() {
    let path = write_temp(
        "wrong",
        r#"
- name: the name is wrong on purpose
  steps:
    - notify:
        - {type: set, source: runtime, entity: {kind: container, id: c1, name: foo}}
    - get: {kind: container, id: c1}
      expect_entity: {kind: container, id: c1, name: bar}
- name: a missing bundle is reported, not waited for forever
  steps:
    - subscribe: {name: s1, priority: normal}
    - expect: {subscriber: s1, bundle: [{type: set, entity: {kind: container, id: c1}}]}
"#,
    );
    let file = load_file(&path).unwrap();
    let outcome = run_file(&file, |_| async { None }).await;
    assert_eq!(outcome.passed, 0);
    assert_eq!(outcome.failed.len(), 2, "{:?}", outcome.failed);
    let (scenario, error) = &outcome.failed[0];
    assert_eq!(scenario, "the name is wrong on purpose");
    assert!(error.starts_with("step 2 (get)"), "{error}");
    assert!(error.contains(r#"name: expected "bar", got "foo""#), "{error}");
    assert!(outcome.failed[1].1.contains("expected 1 events, got 0"), "{}", outcome.failed[1].1);
}

#[tokio::test]
async fn a_misspelt_field_or_step_fails_instead_of_passing() {
    let path = write_temp(
        "typo",
        r#"
- name: a misspelt entity field
  steps:
    - notify:
        - {type: set, source: runtime, entity: {kind: container, id: c1, nmae: foo}}
- name: an unknown step
  steps:
    - expect_everything: s1
"#,
    );
    let file = load_file(&path).unwrap();
    let outcome = run_file(&file, |_| async { None }).await;
    assert_eq!(outcome.failed.len(), 2, "{:?}", outcome.failed);
    assert!(outcome.failed[0].1.contains("nmae"), "{}", outcome.failed[0].1);
    assert!(outcome.failed[1].1.contains("unknown step"), "{}", outcome.failed[1].1);
}

#[test]
fn a_file_that_does_not_parse_is_an_error() {
    let path = write_temp("broken", "- name: x\n  steps: [\n");
    assert!(load_file(&path).is_err());
    let not_a_list = write_temp("map", "name: x\n");
    assert!(load_file(&not_a_list).unwrap_err().contains("list of scenarios"));
}
