//! The test handle's API side, through kube-rs: a cluster-admin client, workloads, service-account
//! tokens from the TokenRequest API, and clients of the kubelet itself.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::Kubernetes;
use crate::runtimes::Unavailable;

fn failed(what: &str) -> impl Fn(kube::Error) -> Unavailable + '_ {
    move |e| Unavailable(format!("{what}: {e}"))
}

/// An object from its JSON (tests write manifests with `serde_json::json!`).
pub fn object<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, Unavailable> {
    serde_json::from_value(value).map_err(|e| Unavailable(format!("not a valid object: {e}")))
}

/// A container of the local image ([`Kubernetes::IMAGE`], never pulled) running `command`.
pub fn container(name: &str, command: &[&str]) -> serde_json::Value {
    json!({ "name": name, "image": Kubernetes::IMAGE, "imagePullPolicy": "Never", "command": command })
}

/// A one-replica Deployment `name` whose pods are labelled `app: <name>` and `labels`, run
/// `containers`, and stop within a second.
pub fn deployment(
    name: &str,
    labels: &[(&str, &str)],
    containers: Vec<serde_json::Value>,
) -> Result<k8s_openapi::api::apps::v1::Deployment, Unavailable> {
    let mut pod_labels = serde_json::Map::new();
    pod_labels.insert("app".into(), name.into());
    for (k, v) in labels {
        pod_labels.insert((*k).into(), (*v).into());
    }
    object(json!({
        "metadata": { "name": name, "labels": { "app": name } },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": pod_labels },
                "spec": { "terminationGracePeriodSeconds": 1, "containers": containers },
            },
        },
    }))
}

impl Kubernetes {
    /// A cluster-admin client of the API server.
    pub async fn client(&self) -> Result<kube::Client, Unavailable> {
        let kubeconfig =
            Kubeconfig::read_from(self.kubeconfig()).map_err(|e| Unavailable(format!("kubeconfig: {e}")))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| Unavailable(format!("kubeconfig: {e}")))?;
        kube::Client::try_from(config).map_err(failed("client"))
    }

    /// A client of the kubelet's HTTPS API (`/pods` …), trusting our CA, sending `token` as a
    /// bearer token when given (none: an anonymous request).
    pub async fn kubelet_client(&self, token: Option<&str>) -> Result<kube::Client, Unavailable> {
        let user = token.map(|t| format!("    token: {t}\n")).unwrap_or_else(|| "    {}\n".to_owned());
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kubelet\n  cluster:\n    server: {}\n    \
             certificate-authority: {}\nusers:\n- name: agent\n  user:\n{user}contexts:\n- name: kubelet\n  \
             context:\n    cluster: kubelet\n    user: agent\ncurrent-context: kubelet\n",
            self.kubelet_url(),
            self.ca_cert().display()
        );
        let kubeconfig = Kubeconfig::from_yaml(&yaml).map_err(|e| Unavailable(format!("kubelet kubeconfig: {e}")))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| Unavailable(format!("kubelet kubeconfig: {e}")))?;
        kube::Client::try_from(config).map_err(failed("kubelet client"))
    }

    /// Creates namespace `namespace` if needed.
    pub async fn create_namespace(&self, namespace: &str) -> Result<(), Unavailable> {
        let api: Api<Namespace> = Api::all(self.client().await?);
        let ns = object(json!({ "metadata": { "name": namespace } }))?;
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(failed("create namespace")(e)),
        }
    }

    /// A service-account token as an agent's DaemonSet has: service account `name` in
    /// `namespace`, bound to a cluster role that may read the kubelet's pods (`nodes/proxy`,
    /// `nodes/pods`) and list what a node agent lists; the token from the TokenRequest API.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> Result<String, Unavailable> {
        self.token_request(namespace, name, None).await
    }

    /// A token as [`Kubernetes::service_account_token`] gives, bound to a Secret `secret` in
    /// `namespace` (created here): the API server (and so the kubelet) rejects it once that
    /// Secret is deleted, as a projected token is rejected once its pod is gone.
    pub async fn bound_service_account_token(
        &self,
        namespace: &str,
        name: &str,
        secret: &str,
    ) -> Result<String, Unavailable> {
        self.create_namespace(namespace).await?;
        let secrets: Api<Secret> = Api::namespaced(self.client().await?, namespace);
        let object = object::<Secret>(json!({ "metadata": { "name": secret, "namespace": namespace } }))?;
        let created = match secrets.create(&PostParams::default(), &object).await {
            Ok(created) => created,
            Err(kube::Error::Api(e)) if e.code == 409 => secrets.get(secret).await.map_err(failed("get secret"))?,
            Err(e) => return Err(failed("create secret")(e)),
        };
        let uid = created.metadata.uid.ok_or_else(|| Unavailable(format!("secret {secret} has no uid")))?;
        let bound = json!({ "kind": "Secret", "apiVersion": "v1", "name": secret, "uid": uid });
        self.token_request(namespace, name, Some(bound)).await
    }

    async fn token_request(
        &self,
        namespace: &str,
        name: &str,
        bound: Option<serde_json::Value>,
    ) -> Result<String, Unavailable> {
        let client = self.client().await?;
        self.create_namespace(namespace).await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        let account = object(json!({ "metadata": { "name": name, "namespace": namespace } }))?;
        ignore_conflict(accounts.create(&PostParams::default(), &account).await)?;
        let role_name = format!("{namespace}-{name}");
        let role = object::<ClusterRole>(json!({
            "metadata": { "name": role_name },
            "rules": [
                { "apiGroups": [""], "resources": ["nodes/proxy", "nodes/pods", "nodes/stats", "nodes/spec"], "verbs": ["get"] },
                { "apiGroups": [""], "resources": ["nodes", "namespaces", "services", "pods"], "verbs": ["get", "list", "watch"] },
                { "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"] },
            ],
        }))?;
        ignore_conflict(Api::<ClusterRole>::all(client.clone()).create(&PostParams::default(), &role).await)?;
        let binding = object::<ClusterRoleBinding>(json!({
            "metadata": { "name": role_name },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name },
            "subjects": [{ "kind": "ServiceAccount", "name": name, "namespace": namespace }],
        }))?;
        ignore_conflict(Api::<ClusterRoleBinding>::all(client.clone()).create(&PostParams::default(), &binding).await)?;
        let mut request = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": { "expirationSeconds": 3600 },
        });
        if let Some(bound) = bound {
            request["spec"]["boundObjectRef"] = bound;
        }
        let response: serde_json::Value = accounts
            .create_subresource("token", name, &PostParams::default(), &request)
            .await
            .map_err(failed("token request"))?;
        response["status"]["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Unavailable(format!("the token request answered {response}")))
    }

    /// Waits until `count` pods matching `selector` in `namespace` run with every container ready.
    pub async fn wait_for_running_pods(
        &self,
        namespace: &str,
        selector: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Pod>, Unavailable> {
        let pods: Api<Pod> = Api::namespaced(self.client().await?, namespace);
        let deadline = Instant::now() + timeout;
        loop {
            let list = pods.list(&ListParams::default().labels(selector)).await.map_err(failed("list pods"))?;
            let running: Vec<Pod> = list.items.into_iter().filter(pod_runs).collect();
            if running.len() == count {
                return Ok(running);
            }
            if Instant::now() > deadline {
                return Err(Unavailable(format!(
                    "{count} pods {selector} in {namespace}: {} running after {timeout:?}",
                    running.len()
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Deletes namespace `namespace` (and so everything in it) without waiting.
    pub async fn delete_namespace(&self, namespace: &str) -> Result<(), Unavailable> {
        let api: Api<Namespace> = Api::all(self.client().await?);
        match api.delete(namespace, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(failed("delete namespace")(e)),
        }
    }
}

fn ignore_conflict<T>(result: Result<T, kube::Error>) -> Result<(), Unavailable> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(Unavailable(format!("create: {e}"))),
    }
}

/// Whether a pod runs with every container ready.
pub fn pod_runs(pod: &Pod) -> bool {
    let Some(status) = &pod.status else { return false };
    status.phase.as_deref() == Some("Running")
        && status.container_statuses.as_ref().is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.ready))
}
