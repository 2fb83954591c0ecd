//! Runs every conformance scenario of `testdata/conformance` and `$WM_EXTRA_CONFORMANCE`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use test_support::conformance::{TaggerRunner, directories, load_dir, run_file};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_conformance_scenario_passes() {
    let dirs = directories().unwrap_or_else(|e| panic!("{e}"));
    let mut failures = Vec::new();
    let mut files = 0;
    for dir in dirs {
        let loaded = load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        for file in loaded {
            files += 1;
            let outcome = run_file(&file, |scenario| async move { Some(TaggerRunner::run(&scenario).await) }).await;
            let name = file.file_name();
            println!("conformance: {name}: {} scenarios passed", outcome.passed);
            assert!(outcome.skipped.is_empty(), "{name}: scenarios skipped: {:?}", outcome.skipped);
            for (scenario, error) in outcome.failed {
                failures.push(format!("{}: {scenario:?}: {error}", file.path.display()));
            }
        }
    }
    assert!(files > 0, "no conformance file found");
    assert!(failures.is_empty(), "{} scenario(s) failed:\n{}", failures.len(), failures.join("\n"));
}
