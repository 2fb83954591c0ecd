//! The project's own test data (`testdata/` at the workspace root): the conformance scenarios and
//! the real captures, copied from the product spec's shared folder with their source notes. Tests
//! read them from here, so a clone with nothing beside it passes.

use std::path::PathBuf;

/// Returns the workspace root. Read at run time when the test runner says (cargo and xtask's test
/// runner set `CARGO_MANIFEST_DIR`), so a test binary shared through a build cache reads the clone
/// it runs in.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    // Every member sits at `crates/<name>` (the layer check keeps it so); xtask at `xtask`.
    manifest_dir
        .ancestors()
        .find(|dir| dir.join("testdata").is_dir() && dir.join("Cargo.toml").is_file())
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// `testdata/<relative>` in this clone.
pub fn path(relative: &str) -> PathBuf {
    workspace_root().join("testdata").join(relative)
}

/// The text of `testdata/<relative>`.
///
/// # Panics
/// When the file cannot be read: a test without its data must fail, naming the file.
pub fn read(relative: &str) -> String {
    let path = path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("test data {}: {e}", path.display()))
}

/// Compares `got` with the expected output at `expected/<relative>` (the model's JSON form of
/// what a capture converts to, checked by hand when written); `WM_BLESS=1` writes a missing one.
/// Panics, naming the file, when they differ or it is missing.
pub fn assert_matches_expected(relative: &str, got: &str) {
    let expected_path = path(&format!("expected/{relative}"));
    match std::fs::read_to_string(&expected_path) {
        Ok(expected) => assert_eq!(got, expected, "{relative}: differs from {}", expected_path.display()),
        Err(_) if std::env::var_os("WM_BLESS").is_some_and(|v| v == "1") => {
            if let Some(dir) = expected_path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(e) = std::fs::write(&expected_path, got) {
                panic!("{relative}: cannot write {}: {e}", expected_path.display());
            }
        }
        Err(e) => panic!("{relative}: no expected output at {} ({e})", expected_path.display()),
    }
}

/// The ECS captures that convert to entities (the others, `commands.json` and `instance.json`,
/// are what the collector asks besides).
pub const ECS_ENTITY_CAPTURES: [&str; 7] = [
    "tasks.json",
    "collector_tasks_v1.json",
    "task.json",
    "v2_task_with_tags.json",
    "v3or4_task_with_tags.json",
    "nginx.json",
    "nginx-no-tags.json",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conformance_scenarios_and_fixtures_are_in_the_repository() {
        assert!(path("conformance/README.md").is_file(), "{}", path("conformance").display());
        assert!(read("fixtures/README.md").contains("DataDog/datadog-agent"));
    }
}
