//! The agent's YAML config: any text as the config file; one that loads prints back (each key
//! read, with its value) as a config that loads to the same values.
#![no_main]
use std::io::Write as _;

use libfuzzer_sys::fuzz_target;

fn load(text: &str) -> Option<std::collections::BTreeMap<String, serde_json::Value>> {
    let mut file = tempfile_in_tmp();
    file.1.write_all(text.as_bytes()).ok()?;
    let config = agent_bin::load_config(Some(&file.0), Vec::new()).ok();
    let _ = std::fs::remove_file(&file.0);
    Some(config?.settings().into_iter().map(|(key, setting)| (key, setting.value)).collect())
}

fn tempfile_in_tmp() -> (std::path::PathBuf, std::fs::File) {
    let path = std::env::temp_dir().join(format!("wm-fuzz-config-{}.yaml", std::process::id()));
    let file = std::fs::File::create(&path).expect("a temporary file");
    (path, file)
}

fuzz_target!(|text: &str| {
    let Some(values) = load(text) else { return };
    // Printed back: every key with its effective value, nested as the dotted keys say.
    let mut printed = serde_json::Map::new();
    for (key, value) in &values {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap_or_default();
        let mut node = &mut printed;
        for part in parts {
            node = node.entry(part).or_insert_with(|| serde_json::json!({})).as_object_mut().expect("a section");
        }
        node.insert(last.to_owned(), value.clone());
    }
    let yaml = serde_json::to_string(&printed).expect("JSON is YAML");
    let again = load(&yaml).unwrap_or_else(|| panic!("the printed config does not load: {yaml}"));
    assert_eq!(again, values, "printed back as {yaml}");
});
