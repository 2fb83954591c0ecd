//! The layer rules of STYLE.md, checked against `cargo metadata`.
//!
//! ```text
//! wm-core          <- nothing internal; no I/O, no tokio runtime, no network client
//! wm-store         <- wm-core
//! wm-driver        <- wm-core (the list/watch driver the event-stream collectors share)
//! wm-ipc           <- wm-core (the Datadog IPC wire format and its client side)
//! wm-collector-*   <- wm-core, wm-driver, wm-ipc (+ its own client library); never another
//!                     collector, never wm-store (dev: wm-store, test-support)
//! tagger           <- wm-core, wm-store
//! tagger-python    <- wm-core, wm-ipc (dev: test-support)
//! agent-bin        <- everything
//! test-support     <- dev-dependency only
//! xtask            <- no workspace crate
//! ```

use serde_json::Value;

/// Crates that bring I/O, a runtime or a network client: never in `wm-core`.
const IO_CRATES: &[&str] =
    &["tokio", "reqwest", "hyper", "tonic", "bollard", "kube", "kube-client", "containerd-client", "axum", "mio"];

/// One dependency edge of a workspace member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// `normal`, `build` or `dev`.
    pub kind: String,
}

/// Reads the edges from `cargo metadata --no-deps --format-version 1`, with whether each target is a
/// workspace member.
pub fn edges(metadata: &Value) -> anyhow::Result<(Vec<String>, Vec<Edge>)> {
    let packages = metadata["packages"].as_array().ok_or_else(|| anyhow::anyhow!("cargo metadata has no packages"))?;
    let members: Vec<String> = packages.iter().filter_map(|p| p["name"].as_str().map(str::to_owned)).collect();
    let mut edges = Vec::new();
    for p in packages {
        let from = p["name"].as_str().unwrap_or_default().to_owned();
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let to = d["rename"].as_str().or(d["name"].as_str()).unwrap_or_default();
            let to = d["name"].as_str().unwrap_or(to).to_owned();
            let kind = d["kind"].as_str().unwrap_or("normal").to_owned();
            edges.push(Edge { from: from.clone(), to, kind });
        }
    }
    Ok((members, edges))
}

fn is_collector(name: &str) -> bool {
    name.starts_with("wm-collector-")
}

/// The rule an edge breaks, if any.
fn violation(edge: &Edge, members: &[String]) -> Option<String> {
    let Edge { from, to, kind } = edge;
    let internal = members.contains(to);
    let dev = kind == "dev";
    let says = |why: &str| Some(format!("{from} -> {to} ({kind}): {why}"));
    if from == "xtask" && internal {
        return says("xtask depends on no workspace crate (it must build before them)");
    }
    if to == "test-support" && !dev {
        return says("test-support is a dev-dependency only");
    }
    if to == "agent-bin" || to == "xtask" {
        return says("nothing depends on the agent binary or on xtask");
    }
    if !internal {
        if from == "wm-core" && !dev && IO_CRATES.contains(&to.as_str()) {
            return says("wm-core does no I/O: no runtime, no network client");
        }
        return None;
    }
    // Dev-dependencies may also reach the store and the test helpers (tests feed a real store),
    // but never sideways into another collector.
    let allowed: &[&str] = match from.as_str() {
        "wm-core" => &[],
        "wm-store" | "wm-driver" | "wm-ipc" => &["wm-core"],
        f if is_collector(f) => {
            if dev {
                &["wm-core", "wm-driver", "wm-ipc", "wm-store", "test-support"]
            } else {
                &["wm-core", "wm-driver", "wm-ipc"]
            }
        }
        "tagger" => &["wm-core", "wm-store"],
        // The Python module follows an agent: the wire and its client, nothing that collects.
        "tagger-python" => &["wm-core", "wm-ipc"],
        "agent-bin" => return None,
        "test-support" => return None,
        other => return says(&format!("{other} is not in the layer table of STYLE.md: add it to xtask/src/layers.rs")),
    };
    if allowed.contains(&to.as_str()) || (dev && to == "test-support") {
        return None;
    }
    if is_collector(from) && is_collector(to) {
        return says("a collector never depends on another collector");
    }
    says(&format!("{from} may depend only on {allowed:?}"))
}

/// Every broken rule, one line each.
pub fn check(members: &[String], edges: &[Edge]) -> Vec<String> {
    let mut problems: Vec<String> = members
        .iter()
        .filter(|m| {
            !matches!(
                m.as_str(),
                "wm-core"
                    | "wm-store"
                    | "wm-driver"
                    | "wm-ipc"
                    | "tagger"
                    | "tagger-python"
                    | "agent-bin"
                    | "test-support"
                    | "xtask"
            ) && !is_collector(m)
        })
        .map(|m| format!("{m}: not in the layer table of STYLE.md: add it to xtask/src/layers.rs"))
        .collect();
    problems.extend(edges.iter().filter_map(|e| violation(e, members)));
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> Vec<String> {
        [
            "wm-core",
            "wm-store",
            "wm-driver",
            "wm-ipc",
            "wm-collector-docker",
            "wm-collector-remote",
            "wm-collector-kube",
            "tagger",
            "agent-bin",
            "test-support",
            "xtask",
        ]
        .map(String::from)
        .to_vec()
    }

    fn edge(from: &str, to: &str, kind: &str) -> Edge {
        Edge { from: from.into(), to: to.into(), kind: kind.into() }
    }

    #[test]
    fn the_intended_graph_passes() {
        let edges = [
            edge("wm-store", "wm-core", "normal"),
            edge("wm-store", "tokio", "normal"),
            edge("wm-collector-docker", "wm-core", "normal"),
            edge("wm-collector-docker", "wm-driver", "normal"),
            edge("wm-driver", "wm-core", "normal"),
            edge("wm-ipc", "wm-core", "normal"),
            edge("wm-collector-remote", "wm-ipc", "normal"),
            edge("wm-collector-docker", "bollard", "normal"),
            edge("wm-collector-docker", "wm-store", "dev"),
            edge("wm-collector-docker", "test-support", "dev"),
            edge("tagger", "wm-store", "normal"),
            edge("agent-bin", "wm-collector-docker", "normal"),
            edge("test-support", "wm-store", "normal"),
            edge("wm-core", "serde", "normal"),
            edge("wm-core", "serde_json", "dev"),
            edge("xtask", "anyhow", "normal"),
        ];
        assert_eq!(check(&members(), &edges), Vec::<String>::new());
    }

    #[test]
    fn forbidden_edges_are_named() {
        let cases = [
            edge("wm-core", "wm-store", "normal"),
            edge("wm-core", "tokio", "normal"),
            edge("wm-store", "tagger", "normal"),
            edge("wm-collector-docker", "wm-store", "normal"),
            edge("wm-collector-docker", "wm-collector-kube", "dev"),
            edge("tagger", "wm-collector-docker", "normal"),
            edge("tagger", "test-support", "normal"),
            edge("xtask", "wm-core", "normal"),
            edge("wm-store", "agent-bin", "dev"),
            edge("wm-driver", "wm-store", "normal"),
            edge("wm-ipc", "wm-store", "normal"),
        ];
        for e in cases {
            let problems = check(&members(), std::slice::from_ref(&e));
            assert_eq!(problems.len(), 1, "{e:?} should break one rule: {problems:?}");
            assert!(problems[0].starts_with(&format!("{} -> {}", e.from, e.to)), "{problems:?}");
        }
    }

    #[test]
    fn an_unknown_crate_must_be_placed_in_the_table() {
        let mut m = members();
        m.push("helpers".into());
        let problems = check(&m, &[edge("helpers", "wm-core", "normal")]);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn metadata_is_read_into_edges() {
        let metadata: Value = serde_json::from_str(
            r#"{"packages":[{"name":"wm-store","dependencies":[{"name":"wm-core","kind":null,"rename":null},
                {"name":"tokio","kind":"dev","rename":null}]},{"name":"wm-core","dependencies":[]}]}"#,
        )
        .unwrap();
        let (members, edges) = edges(&metadata).unwrap();
        assert_eq!(members, ["wm-store", "wm-core"]);
        assert_eq!(edges, [edge("wm-store", "wm-core", "normal"), edge("wm-store", "tokio", "dev")]);
    }
}
