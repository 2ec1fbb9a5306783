//! Pod, pod-template and ephemeral-container writes in the sidecar's own namespace are checked
//! with the injection webhook's rules ([`portcullis_crds::pod_guard`]) before they are
//! forwarded: the agent cannot do through its sidecar what a namespace user cannot, it is told
//! the webhook's reason, and the refusal is an audit record.
//!
//! The webhook stays the authority: a patch is checked for what it adds (the API server then
//! runs the webhook on the patched object), and the sidecar container of a pod update is
//! compared with the stored one by the webhook only. Bodies are read as JSON or YAML; a body
//! that cannot be read as either, and JSON patches, are refused on these resources.

use http::Request;
use http_body_util::{BodyExt, Limited};
use k8s_openapi::api::core::v1::PodSpec;
use portcullis_crds::audit::Identity;
use portcullis_crds::pod_guard::{self, Protected, Violation, DEFAULT_SIDECAR_UID};
use portcullis_crds::SidecarConfig;
use serde_json::Value;

use super::request::RequestInfo;
use super::Body;

/// Largest request body read (the API server's own limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// What the checks protect in this sidecar's namespace.
#[derive(Clone, Debug)]
pub struct PodWriteGuard {
    namespace: String,
    protected: Protected,
}

/// Where an object of a resource keeps its pod template: the path of its pod metadata and
/// of its pod spec.
fn template_paths(
    info: &RequestInfo,
) -> Option<(&'static [&'static str], &'static [&'static str])> {
    const TEMPLATE: (&[&str], &[&str]) = (
        &["spec", "template", "metadata"],
        &["spec", "template", "spec"],
    );
    match (
        info.api_group.as_str(),
        info.resource.as_str(),
        info.subresource.as_str(),
    ) {
        ("", "pods", "" | "ephemeralcontainers") => Some((&["metadata"], &["spec"])),
        ("", "podtemplates", "") => Some((&["template", "metadata"], &["template", "spec"])),
        ("", "replicationcontrollers", "") => Some(TEMPLATE),
        ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets", "") => {
            Some(TEMPLATE)
        }
        ("batch", "jobs", "") => Some(TEMPLATE),
        ("batch", "cronjobs", "") => Some((
            &["spec", "jobTemplate", "spec", "template", "metadata"],
            &["spec", "jobTemplate", "spec", "template", "spec"],
        )),
        _ => None,
    }
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

impl PodWriteGuard {
    /// The guard of a sidecar serving `config`, running as `identity`.
    pub fn new(config: &SidecarConfig, identity: &Identity) -> Self {
        let mut protected = Protected::new(
            config.protected_secrets.iter().map(|s| {
                (
                    s.clone(),
                    "the credential of a ProtectedResource of this namespace".to_owned(),
                )
            }),
            DEFAULT_SIDECAR_UID,
        );
        if identity.kind == "ServiceAccount" {
            protected.service_accounts.insert(identity.name.clone());
        }
        Self {
            namespace: config.namespace.clone(),
            protected,
        }
    }

    /// Whether a request is a write this guard reads.
    pub fn applies(&self, info: &RequestInfo) -> bool {
        matches!(info.verb.as_str(), "create" | "update" | "patch")
            && info.namespace == self.namespace
            && template_paths(info).is_some()
    }

    /// Read the body of a write that [`applies`](Self::applies) and check it; the request is
    /// handed back with the same body for forwarding.
    pub async fn screen(
        &self,
        info: &RequestInfo,
        req: Request<Body>,
    ) -> (Request<Body>, Result<(), String>) {
        let (parts, body) = req.into_parts();
        let bytes = match Limited::new(body, MAX_BODY).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                return (
                    Request::from_parts(parts, super::empty()),
                    Err(format!("the request body cannot be read: {e}")),
                );
            }
        };
        let json_patch = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json-patch"));
        let verdict = if json_patch {
            Err(format!(
                "JSON patches of {} are not forwarded: the sidecar checks pod specs the way the injection webhook does and reads merge, strategic-merge and apply patches and whole objects only",
                info.full_resource()
            ))
        } else {
            self.check(info, &bytes)
        };
        (Request::from_parts(parts, super::full(bytes)), verdict)
    }

    /// Check a write's body (a whole object or a merge-style patch).
    pub fn check(&self, info: &RequestInfo, body: &[u8]) -> Result<(), String> {
        let Some((metadata_path, spec_path)) = template_paths(info) else {
            return Ok(());
        };
        let object: Value = serde_json::from_slice(body)
            .or_else(|_| serde_yaml::from_slice(body))
            .map_err(|e| {
                format!(
                    "the body of this {} write cannot be read as JSON or YAML: {e}",
                    info.full_resource()
                )
            })?;
        let opted_out = at(&object, metadata_path)
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get(pod_guard::INJECT_ANNOTATION))
            .and_then(Value::as_str)
            == Some(pod_guard::INJECT_DISABLED);
        if opted_out {
            return Err(Violation::OptOut {
                user: "the agent (through its Portcullis sidecar)".to_owned(),
                trusted: "the users the operator is configured to trust".to_owned(),
            }
            .to_string());
        }
        let Some(spec) = at(&object, spec_path) else {
            return Ok(());
        };
        let mut spec = spec.clone();
        if let Some(map) = spec.as_object_mut() {
            map.entry("containers")
                .or_insert_with(|| Value::Array(Vec::new()));
        }
        let mut spec: PodSpec = serde_json::from_value(spec).map_err(|e| {
            format!(
                "the pod spec of this {} write cannot be read: {e}",
                info.full_resource()
            )
        })?;
        if info.subresource == "ephemeralcontainers" {
            // Only the ephemeral containers are new; the rest of the pod was admitted.
            spec.containers.clear();
            spec.init_containers = None;
            spec.volumes = None;
        }
        let sidecar = if info.resource == "pods" {
            pod_guard::stored_sidecar(&spec).cloned()
        } else {
            None
        };
        if sidecar.is_some() {
            // The sidecar's own volumes are compared with the stored pod by the webhook.
            spec.volumes = None;
        }
        pod_guard::check(&spec, sidecar.as_ref(), &self.protected).map_err(|e| e.to_string())
    }
}

/// Prefix of the ConfigMaps and Secrets the operator manages in an agents' namespace: the
/// sidecar's configuration (`portcullis-sidecar-config`), its serving key
/// (`portcullis-sidecar-tls`) and the masking key (`portcullis-masking-key`).
pub const MANAGED_PREFIX: &str = "portcullis-";

/// Why a write to an operator-managed ConfigMap or Secret is refused, `None` for every other
/// request. Updates, patches (apply included) and deletes of a `portcullis-*` ConfigMap or
/// Secret are refused, and so are collection deletes of ConfigMaps and Secrets, which would
/// take them along. The sidecar's configuration decides where the credentials go, so the
/// agent may not rewrite it.
pub fn managed_object_write(info: &RequestInfo) -> Option<String> {
    if !info.api_group.is_empty()
        || !matches!(info.resource.as_str(), "configmaps" | "secrets")
        || !info.subresource.is_empty()
    {
        return None;
    }
    let kind = if info.resource == "secrets" {
        "Secret"
    } else {
        "ConfigMap"
    };
    match info.verb.as_str() {
        "update" | "patch" | "delete" if info.name.starts_with(MANAGED_PREFIX) => Some(format!(
            "{kind} {:?} is managed by the Portcullis operator (the sidecar's configuration or keys); the agent may not {} it",
            info.name, info.verb
        )),
        "deletecollection" => Some(format!(
            "deleting every {} of the namespace would delete the ones the Portcullis operator manages (the sidecar's configuration or keys); delete them one by one",
            info.resource
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn guard() -> PodWriteGuard {
        let config = SidecarConfig::from_yaml(
            "apiVersion: portcullis.dev/sidecar-config/v1alpha1\nnamespace: shop\nprotectedSecrets: [db-creds]\n",
        )
        .expect("config");
        PodWriteGuard::new(
            &config,
            &Identity {
                kind: "ServiceAccount".to_owned(),
                name: "agent".to_owned(),
                ..Identity::default()
            },
        )
    }

    fn info(method: Method, path: &str) -> RequestInfo {
        RequestInfo::resolve(&method, path, None)
    }

    #[test]
    fn templates_of_every_workload_kind_are_checked() {
        let g = guard();
        let host_path = r#"{"containers": [{"name": "a"}], "volumes": [{"name": "h", "hostPath": {"path": "/var/lib/kubelet"}}]}"#;
        let cases = [
            (
                "/api/v1/namespaces/shop/pods",
                format!(r#"{{"spec": {host_path}}}"#),
            ),
            (
                "/apis/apps/v1/namespaces/shop/deployments",
                format!(r#"{{"spec": {{"template": {{"spec": {host_path}}}}}}}"#),
            ),
            (
                "/apis/apps/v1/namespaces/shop/daemonsets",
                format!(r#"{{"spec": {{"template": {{"spec": {host_path}}}}}}}"#),
            ),
            (
                "/apis/batch/v1/namespaces/shop/cronjobs",
                format!(
                    r#"{{"spec": {{"jobTemplate": {{"spec": {{"template": {{"spec": {host_path}}}}}}}}}}}"#
                ),
            ),
            (
                "/api/v1/namespaces/shop/podtemplates",
                format!(r#"{{"template": {{"spec": {host_path}}}}}"#),
            ),
        ];
        for (path, body) in cases {
            let i = info(Method::POST, path);
            assert!(g.applies(&i), "{path}");
            let err = g.check(&i, body.as_bytes()).expect_err(path);
            assert!(err.contains("mounts host path"), "{path}: {err}");
        }
        let elsewhere = info(Method::POST, "/api/v1/namespaces/other/pods");
        assert!(!g.applies(&elsewhere));
        let read = info(Method::GET, "/api/v1/namespaces/shop/pods");
        assert!(!g.applies(&read));
    }

    #[test]
    fn opt_out_credentials_and_patches_are_refused_plain_pods_pass() {
        let g = guard();
        let pods = info(Method::POST, "/api/v1/namespaces/shop/pods");
        let out = r#"{"metadata": {"annotations": {"portcullis.dev/inject": "disabled"}}, "spec": {"containers": [{"name": "a"}]}}"#;
        assert!(g
            .check(&pods, out.as_bytes())
            .expect_err("opt-out")
            .contains("opts a pod out"));
        let cred =
            "spec:\n  containers:\n  - name: a\n    envFrom:\n    - secretRef: {name: db-creds}\n";
        assert!(g
            .check(&pods, cred.as_bytes())
            .expect_err("yaml body")
            .contains("reads Secret \"db-creds\""));
        let patch = info(Method::PATCH, "/api/v1/namespaces/shop/pods/p");
        let sidecar =
            r#"{"spec": {"initContainers": [{"name": "portcullis-sidecar", "image": "evil"}]}}"#;
        assert!(g.check(&patch, sidecar.as_bytes()).is_err());
        assert!(g.check(&pods, b"{not: [json").is_err());
        let plain =
            r#"{"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "a"}]}}"#;
        assert_eq!(g.check(&pods, plain.as_bytes()), Ok(()));
        let labels_only = r#"{"metadata": {"labels": {"x": "y"}}}"#;
        assert_eq!(g.check(&patch, labels_only.as_bytes()), Ok(()));
    }

    #[test]
    fn writes_to_operator_managed_objects_are_refused() {
        for (method, path) in [
            (
                Method::PATCH,
                "/api/v1/namespaces/shop/configmaps/portcullis-sidecar-config",
            ),
            (
                Method::PUT,
                "/api/v1/namespaces/shop/configmaps/portcullis-sidecar-config",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/shop/configmaps/portcullis-sidecar-config",
            ),
            (
                Method::PATCH,
                "/api/v1/namespaces/shop/secrets/portcullis-masking-key",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/shop/secrets/portcullis-sidecar-tls",
            ),
            (Method::DELETE, "/api/v1/namespaces/shop/configmaps"),
        ] {
            assert!(
                managed_object_write(&info(method.clone(), path)).is_some(),
                "{method} {path}"
            );
        }
        for (method, path) in [
            (
                Method::GET,
                "/api/v1/namespaces/shop/configmaps/portcullis-sidecar-config",
            ),
            (
                Method::PATCH,
                "/api/v1/namespaces/shop/configmaps/agent-settings",
            ),
            (Method::POST, "/api/v1/namespaces/shop/configmaps"),
            (Method::PATCH, "/api/v1/namespaces/shop/pods/portcullis-x"),
        ] {
            assert!(
                managed_object_write(&info(method.clone(), path)).is_none(),
                "{method} {path}"
            );
        }
    }
}
