#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use super::*;

fn load(yaml: &str, env: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("wm-config-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.yaml");
    std::fs::write(&path, yaml).unwrap();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    crate::load_config(Some(&path), env)
}

fn refused(yaml: &str, env: &[(&str, &str)]) -> String {
    load(yaml, env).map(|_| ()).unwrap_err().to_string()
}

#[test]
fn defaults_file_and_env_each_say_where_they_came_from() {
    let c =
        load("cmd_port: 6001\ncontainer_labels_as_tags:\n  team: team\n", &[("DD_LOG_FORMAT_JSON", "true")]).unwrap();
    assert_eq!(c.ipc.cmd_port.get(), 6001);
    let settings = c.settings();
    assert!(matches!(settings["cmd_port"].origin, Origin::File(_)));
    assert!(c.log.log_format_json);
    assert_eq!(settings["log_format_json"].origin, Origin::Env("DD_LOG_FORMAT_JSON".into()));
    assert_eq!(c.ipc.health_port.get(), 5555);
    assert_eq!(settings["health_port"].origin, Origin::Default);
    assert_eq!(c.tagger.container_labels_as_tags.get("team").map(String::as_str), Some("team"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn every_key_of_every_component_compiled_in_is_shown_with_its_origin() {
    let c = load("", &[]).unwrap();
    let settings = c.settings();
    for key in ["log_level", "cmd_host", "health_port", "tagger_deletion_grace_period", "container_env_as_tags"] {
        assert_eq!(settings[key].origin, Origin::Default, "{key}");
    }
    #[cfg(feature = "docker")]
    assert!(settings.contains_key("docker_host"));
    #[cfg(feature = "containerd")]
    assert_eq!(settings["containerd_exclude_namespaces"].value, serde_json::json!(["moby"]));
    #[cfg(feature = "podman")]
    assert!(settings.contains_key("podman_socket_path"));
    #[cfg(feature = "remote")]
    assert_eq!(settings["process_config.remote_workloadmeta"].value, serde_json::json!(false));
    let text = AgentConfig::render(&settings);
    assert!(text.contains("cmd_port: 5001  # default\n"), "{text}");
}

#[test]
fn a_value_of_the_wrong_kind_is_refused_with_key_value_origin_and_expectation_in_every_component() {
    // The agent's own parts.
    let e = refused("log_format_json: \"yes\"\n", &[]);
    assert!(
        e.contains("key `log_format_json` (file") && e.contains("is the string \"yes\"; expected a boolean"),
        "{e}"
    );
    // YAML 1.1 booleans are not booleans here.
    assert!(refused("log_format_json: yes\n", &[]).contains("expected a boolean"));
    let e = refused("log_level: loud\n", &[]);
    assert!(e.contains("expected one of trace, debug, info, warn, error, off"), "{e}");
    let e = refused("", &[("DD_CMD_PORT", "70000")]);
    assert!(e.contains("`cmd_port` (env DD_CMD_PORT) is the text \"70000\"; expected a port number (1-65535)"), "{e}");
    let e = refused("health_port: 0\n", &[]);
    assert!(e.contains("`health_port`") && e.contains("expected a port number (1-65535)"), "{e}");
    // The tagger's.
    let e = refused("container_env_as_tags: [a]\n", &[]);
    assert!(e.contains("`container_env_as_tags`") && e.contains("expected a map"), "{e}");
    let e = refused("tagger_deletion_grace_period: -1\n", &[]);
    assert!(e.contains("expected a whole number of seconds (0 or more)"), "{e}");
    // Each collector's, read through its line in the factory table.
    #[cfg(feature = "docker")]
    {
        let e = refused("docker_host: 5\n", &[]);
        assert!(e.contains("key `docker_host` (file") && e.contains("is the number 5; expected a string"), "{e}");
    }
    #[cfg(feature = "containerd")]
    {
        let e = refused("containerd_namespaces: {a: b}\n", &[]);
        assert!(e.contains("`containerd_namespaces`") && e.contains("expected a sequence"), "{e}");
    }
    #[cfg(feature = "podman")]
    {
        let e = refused("podman_socket_path: [a]\n", &[]);
        assert!(e.contains("`podman_socket_path`") && e.contains("expected path string"), "{e}");
    }
    #[cfg(feature = "kube")]
    {
        let e = refused("kubelet_tls_verify: \"yes\"\n", &[]);
        assert!(
            e.contains("key `kubelet_tls_verify` (file") && e.contains("expected a boolean (true or false)"),
            "{e}"
        );
        let e = refused("", &[("DD_KUBERNETES_HTTPS_KUBELET_PORT", "0")]);
        assert!(e.contains("(env DD_KUBERNETES_HTTPS_KUBELET_PORT) is the text \"0\"; expected a port number"), "{e}");
    }
    #[cfg(feature = "kube-metadata")]
    {
        let e = refused("kubernetes_collect_metadata_tags: 1\n", &[]);
        assert!(e.contains("`kubernetes_collect_metadata_tags`") && e.contains("expected a boolean"), "{e}");
    }
    #[cfg(feature = "remote")]
    {
        let e = refused("process_config:\n  remote_workloadmeta: \"on\"\n", &[]);
        assert!(e.contains("`process_config.remote_workloadmeta`") && e.contains("expected a boolean"), "{e}");
        let e = refused("", &[("DD_PROCESS_CONFIG_REMOTE_WORKLOADMETA", "maybe")]);
        assert!(e.contains("(env DD_PROCESS_CONFIG_REMOTE_WORKLOADMETA) is the text \"maybe\""), "{e}");
    }
}

#[test]
fn an_unknown_key_is_a_warning_naming_it() {
    let c = load("cmd_prot: 5001\nprocess_config:\n  unknown_thing: 1\n", &[]).unwrap();
    assert_eq!(c.warnings.len(), usize::from(!cfg!(feature = "remote")) + 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("`cmd_prot`"));
    assert_eq!(c.ipc.cmd_port.get(), 5001);
}

#[test]
fn env_lists_maps_and_nested_keys_parse_and_bad_yaml_is_a_clear_error() {
    let c = load("", &[("DD_CONTAINER_ENV_AS_TAGS", r#"{"TEAM":"team"}"#), ("DD_LOG_LEVEL", "DEBUG")]).unwrap();
    assert_eq!(c.tagger.container_env_as_tags.get("TEAM").map(String::as_str), Some("team"));
    assert!(c.env_filter().keeps("TEAM") && c.env_filter().keeps("DD_SERVICE") && !c.env_filter().keeps("OTHER"));
    assert_eq!(c.log.log_level, LogLevel::Debug);
    #[cfg(feature = "containerd")]
    {
        let c = load("", &[("DD_CONTAINERD_NAMESPACES", "k8s.io default,other")]).unwrap();
        let ns: wm_collector_containerd::ContainerdConfig = c.section().unwrap();
        assert_eq!(ns.containerd_namespaces, ["k8s.io", "default", "other"]);
    }
    #[cfg(feature = "remote")]
    {
        let c = load("process_config:\n  remote_workloadmeta: true\n", &[]).unwrap();
        let remote: wm_collector_remote::RemoteConfig = c.section().unwrap();
        assert!(remote.remote_workloadmeta);
        assert!(matches!(c.settings()["process_config.remote_workloadmeta"].origin, Origin::File(_)));
    }
    let e = refused("cmd_port: [\n", &[]);
    assert!(e.contains("not a YAML mapping"), "{e}");
    let e =
        crate::load_config(Some(Path::new("/nonexistent/agent.yaml")), Vec::new()).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("cannot read /nonexistent/agent.yaml"), "{e}");
    // The default path may be missing.
    assert!(crate::load_config(None, Vec::new()).is_ok());
}

#[test]
fn token_and_certificate_paths_default_beside_the_config_file() {
    let c = load("", &[]).unwrap();
    let dir = c.path.parent().unwrap().to_path_buf();
    assert_eq!(c.auth_token_path(), dir.join("auth_token"));
    assert_eq!(c.ipc_cert_path(), dir.join("ipc_cert.pem"));
    let c = load("auth_token_file_path: /x/token\n", &[]).unwrap();
    assert_eq!(c.ipc_cert_path(), Path::new("/x/ipc_cert.pem"));
}

#[test]
fn an_as_tags_key_no_label_can_have_is_refused_naming_the_key_and_the_limits() {
    let long = "a".repeat(tagger::MAX_SOURCE_KEY_CHARS + 1);
    for (yaml, env) in [
        (format!("kubernetes_pod_labels_as_tags:\n  {long}: team\n"), vec![]),
        ("container_labels_as_tags:\n  \"te\\tam\": team\n".to_owned(), vec![]),
        ("docker_env_as_tags:\n  \"\": team\n".to_owned(), vec![]),
        (String::new(), vec![("DD_KUBERNETES_NODE_LABELS_AS_TAGS", r#"{"zone\u0001": "zone"}"#)]),
    ] {
        let message = refused(&yaml, &env);
        assert!(message.contains("_as_tags`"), "{message}");
        assert!(message.contains("1 to 317 characters, no control characters"), "{message}");
    }
    // The longest a Kubernetes label key can be still loads, as does a key with `/` and dots.
    let longest = format!("{}/{}", "d".repeat(253), "n".repeat(63));
    let c = load(&format!("kubernetes_pod_labels_as_tags:\n  {longest}: owner\n  app.kubernetes.io/name: app\n"), &[])
        .unwrap();
    assert_eq!(c.tagger.kubernetes_pod_labels_as_tags.len(), 2);
}

#[cfg(feature = "cf")]
#[test]
fn a_secret_is_shown_nowhere_not_even_in_errors() {
    const SECRET: &str = "hunter2-cc-secret";
    let yaml =
        format!("cloud_foundry_cc:\n  url: https://cc.example\n  client_id: wm-agent\n  client_secret: {SECRET}\n");
    let c = load(&yaml, &[]).unwrap();
    let settings = c.settings();
    let rendered = AgentConfig::render(&settings);
    let served = serde_json::to_string(&settings).unwrap();
    for (what, text) in [("agent config", &rendered), ("/agent/config", &served), ("Debug", &format!("{c:?}"))] {
        assert!(!text.contains(SECRET), "{what} shows the secret:\n{text}");
    }
    assert!(rendered.contains("cloud_foundry_cc.client_secret: \"********\"  # file"), "{rendered}");

    // From the environment too.
    let c = load("", &[("DD_CLOUD_FOUNDRY_CC_CLIENT_SECRET", SECRET)]).unwrap();
    let rendered = AgentConfig::render(&c.settings());
    assert!(!rendered.contains(SECRET) && !format!("{c:?}").contains(SECRET), "{rendered}");

    // A value of the wrong kind: the error names the key and the type, not the value.
    let e = refused(&format!("cloud_foundry_cc:\n  client_secret: [{SECRET}]\n"), &[]);
    assert!(e.contains("key `cloud_foundry_cc.client_secret`") && e.contains("expected a secret"), "{e}");
    assert!(!e.contains(SECRET), "{e}");
    let e = refused(&format!("cloud_foundry_cc:\n  client_secret: {{nested: {SECRET}}}\n"), &[]);
    assert!(e.contains("key `cloud_foundry_cc.client_secret`") && !e.contains(SECRET), "{e}");
}
