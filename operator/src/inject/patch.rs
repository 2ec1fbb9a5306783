//! The pod mutation of the injection webhook: a pure function from the submitted pod and the
//! namespace's ProtectedResources to the pod that is admitted.
//!
//! The mutation converges: applying it to its own output changes nothing, so the webhook can
//! be reinvoked (`reinvocationPolicy: IfNeeded`) after other webhooks edited the pod. A
//! container or volume of the submitted pod that carries the sidecar's name is accepted only
//! when it equals what this mutation builds (its own earlier output, unchanged); anything else
//! is refused. The result passes [`pod_guard::check`] with the built sidecar as the only
//! container allowed to reach the credentials, the keys and the real token.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Volume, VolumeMount};
use portcullis_crds::pod_guard::{self, Protected, Violation};
use portcullis_crds::{ProtectedResource, ResourceType};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::*;

/// How the sidecar container is built.
#[derive(Clone, Debug)]
pub struct SidecarSettings {
    /// Sidecar image.
    pub image: String,
    /// `imagePullPolicy` of the sidecar.
    pub image_pull_policy: String,
    /// CPU request.
    pub cpu_request: String,
    /// Memory request.
    pub memory_request: String,
    /// Memory limit.
    pub memory_limit: String,
    /// CPU limit; `None` sets none (the sidecar is never throttled below its request).
    pub cpu_limit: Option<String>,
    /// User and group id the sidecar runs as.
    pub run_as_user: i64,
}

impl Default for SidecarSettings {
    fn default() -> Self {
        Self {
            image: format!(
                "ghcr.io/portcullis-dev/portcullis-sidecar:v{}",
                env!("CARGO_PKG_VERSION")
            ),
            image_pull_policy: "IfNotPresent".to_owned(),
            cpu_request: "50m".to_owned(),
            memory_request: "64Mi".to_owned(),
            memory_limit: "256Mi".to_owned(),
            cpu_limit: None,
            run_as_user: pod_guard::DEFAULT_SIDECAR_UID,
        }
    }
}

/// What the mutation needs besides the pod.
#[derive(Clone, Debug)]
pub struct InjectInput<'a> {
    /// The pod's namespace.
    pub namespace: &'a str,
    /// Every ProtectedResource of the namespace.
    pub resources: &'a [ProtectedResource],
    /// Content hash of the namespace's current sidecar configuration, when one exists.
    pub config_hash: Option<String>,
    /// The sidecar container settings.
    pub sidecar: &'a SidecarSettings,
    /// Secrets of type `kubernetes.io/service-account-token` the pod refers to.
    pub token_secrets: BTreeSet<String>,
}

/// Why a pod is refused admission.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InjectError {
    /// The pod names a resource that does not exist.
    #[error("pod annotation {RESOURCES_ANNOTATION} names ProtectedResource {0:?}, which does not exist in namespace {1}; create it or remove the name from the annotation")]
    UnknownResource(String, String),
    /// The pod names a resource of a type that no sidecar serves yet.
    #[error("pod annotation {RESOURCES_ANNOTATION} names ProtectedResource {0:?} of type {1}, which this version does not serve; remove the name from the annotation")]
    NotServed(String, &'static str),
    /// Two bound resources want the same local port.
    #[error("ProtectedResources {0} and {1} both use listenPort {2}; a pod can bind only resources with distinct listen ports (choose them with the {RESOURCES_ANNOTATION} annotation)")]
    PortConflict(String, String, i32),
    /// The pod would give a container other than the sidecar what only the sidecar may reach.
    #[error(transparent)]
    Refused(#[from] Violation),
    /// The pod brings a container or volume named like the sidecar's that differs from what
    /// the webhook injects.
    #[error("{0} is named like a part of the Portcullis sidecar but is not what the webhook injects; a pod may not bring its own (rename it)")]
    Impostor(String),
    /// The pod could not be represented (a bug, or an object the API server would refuse).
    #[error("cannot build the injected pod: {0}")]
    Internal(String),
}

/// Whether a pod gets the sidecar: in a labelled namespace unless opted out by annotation,
/// elsewhere only when opted in by annotation.
pub fn needs_injection(pod: &Pod, namespace_labelled: bool) -> bool {
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INJECT_ANNOTATION))
        .map(String::as_str);
    if namespace_labelled {
        annotation != Some(INJECT_DISABLED)
    } else {
        annotation == Some(INJECT_ENABLED)
    }
}

/// What the namespace protects, for [`pod_guard::check`]: the credential Secrets of
/// `resources`, the serving key and the masking key.
pub fn protected(resources: &[ProtectedResource], sidecar_uid: i64) -> Protected {
    let live: Vec<&ProtectedResource> = resources
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .collect();
    let mut p = Protected::new(
        resources.iter().filter_map(|r| {
            let c = r.spec.credentials_secret_ref.as_ref()?;
            let name = r.metadata.name.clone().unwrap_or_default();
            Some((
                c.name.clone(),
                format!("the credential of ProtectedResource {name:?}"),
            ))
        }),
        sidecar_uid,
    );
    p.hint = env_hint(&live);
    p
}

fn env_hint(resources: &[&ProtectedResource]) -> String {
    let mut names: Vec<String> = Vec::new();
    for r in resources {
        match r.spec.r#type {
            ResourceType::Postgres => {
                names.extend(["PGHOST", "PGPORT", "DATABASE_URL"].map(String::from))
            }
            ResourceType::Mysql => names.extend(["MYSQL_HOST", "MYSQL_TCP_PORT"].map(String::from)),
            ResourceType::Kubernetes => names.push("KUBERNETES_SERVICE_HOST".to_owned()),
        }
        names.push(format!("PORTCULLIS_{}_URL", env_name(r)));
    }
    names.dedup();
    if names.is_empty() {
        "PORTCULLIS_<RESOURCE>_URL".to_owned()
    } else {
        names.join(", ")
    }
}

/// The volume the ServiceAccount admission plugin adds (`kube-api-access-*`).
fn is_service_account_volume(v: &Volume) -> bool {
    v.name.starts_with("kube-api-access-")
        && v.projected.as_ref().is_some_and(|p| {
            p.sources
                .iter()
                .flatten()
                .any(|s| s.service_account_token.is_some())
        })
}

/// `PORTCULLIS_<NAME>` form of a resource name.
fn env_name(r: &ProtectedResource) -> String {
    r.metadata
        .name
        .as_deref()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A volume name (DNS label, at most 63 characters) for a resource.
fn volume_name(prefix: &str, resource: &str) -> String {
    let name = format!("{prefix}-{resource}");
    if name.len() <= 63 && !name.contains('.') {
        return name;
    }
    let digest = hex::encode(Sha256::digest(resource.as_bytes()));
    format!("{prefix}-{}", &digest[..16])
}

/// The resources a pod binds: those named in its annotation, or all of the namespace.
fn bound_resources<'a>(
    pod: &Pod,
    input: &InjectInput<'a>,
) -> Result<Vec<&'a ProtectedResource>, InjectError> {
    let live = |r: &&ProtectedResource| r.metadata.deletion_timestamp.is_none();
    let mut bound: Vec<&ProtectedResource> = match pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(RESOURCES_ANNOTATION))
    {
        Some(list) => {
            let mut out = Vec::new();
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let r = input
                    .resources
                    .iter()
                    .filter(live)
                    .find(|r| r.metadata.name.as_deref() == Some(name))
                    .ok_or_else(|| {
                        InjectError::UnknownResource(name.to_owned(), input.namespace.to_owned())
                    })?;
                if !r.spec.r#type.is_served() {
                    return Err(InjectError::NotServed(
                        name.to_owned(),
                        r.spec.r#type.as_str(),
                    ));
                }
                out.push(r);
            }
            out
        }
        // Resources of a type no sidecar serves are left out: nothing would listen for them.
        None => input
            .resources
            .iter()
            .filter(live)
            .filter(|r| r.spec.r#type.is_served())
            .collect(),
    };
    bound.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    bound.dedup_by(|a, b| a.metadata.name == b.metadata.name);
    let mut ports: BTreeMap<i32, &str> = BTreeMap::new();
    for r in &bound {
        let name = r.metadata.name.as_deref().unwrap_or_default();
        if let Some(other) = ports.insert(r.spec.listen_port, name) {
            return Err(InjectError::PortConflict(
                other.to_owned(),
                name.to_owned(),
                r.spec.listen_port,
            ));
        }
    }
    Ok(bound)
}

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, InjectError> {
    serde_json::from_value(value).map_err(|e| InjectError::Internal(e.to_string()))
}

fn sidecar_container(
    bound: &[&ProtectedResource],
    settings: &SidecarSettings,
) -> Result<Container, InjectError> {
    let names: Vec<&str> = bound
        .iter()
        .filter_map(|r| r.metadata.name.as_deref())
        .collect();
    let mut mounts = vec![
        json!({"name": "portcullis-config", "mountPath": CONFIG_DIR, "readOnly": true}),
        json!({"name": "portcullis-spool", "mountPath": SPOOL_DIR}),
        json!({"name": "portcullis-tls", "mountPath": SIDECAR_TLS_DIR, "readOnly": true}),
        json!({"name": "portcullis-masking-key", "mountPath": MASKING_KEY_DIR, "readOnly": true}),
        json!({"name": "portcullis-sidecar-token", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": true}),
    ];
    for r in bound {
        let name = r.metadata.name.as_deref().unwrap_or_default();
        if r.spec.credentials_secret_ref.is_some() {
            mounts.push(json!({
                "name": volume_name("portcullis-cred", name),
                "mountPath": format!("{CREDENTIALS_DIR}/{name}"),
                "readOnly": true,
            }));
        }
        if r.spec
            .tls
            .as_ref()
            .and_then(|t| t.ca_secret_ref.as_ref())
            .is_some()
        {
            mounts.push(json!({
                "name": volume_name("portcullis-ca", name),
                "mountPath": format!("{UPSTREAM_CA_DIR}/{name}"),
                "readOnly": true,
            }));
        }
    }
    from_json(json!({
        "name": SIDECAR_NAME,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "restartPolicy": "Always",
        "command": ["portcullis-sidecar"],
        "args": ["--config", format!("{CONFIG_DIR}/{CONFIG_KEY}")],
        "env": [
            {"name": "PORTCULLIS_RESOURCES", "value": names.join(",")},
            {"name": "PORTCULLIS_POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
            {"name": "PORTCULLIS_POD_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
            {"name": "PORTCULLIS_SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.serviceAccountName"}}},
            {"name": "PORTCULLIS_POD_UID", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.uid"}}},
        ],
        "ports": [{"name": "portcullis-adm", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        "startupProbe": {
            "httpGet": {"path": "/readyz", "port": ADMIN_PORT, "scheme": "HTTP"},
            "periodSeconds": 1,
            "failureThreshold": 120,
            "timeoutSeconds": 1,
            "successThreshold": 1,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": ADMIN_PORT, "scheme": "HTTP"},
            "periodSeconds": 5,
            "failureThreshold": 3,
            "timeoutSeconds": 1,
            "successThreshold": 1,
        },
        // A failed audit spool fails liveness: the restart reopens it (nothing unrecorded is
        // forwarded meanwhile).
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": ADMIN_PORT, "scheme": "HTTP"},
            "periodSeconds": 10,
            "failureThreshold": 3,
            "timeoutSeconds": 1,
            "successThreshold": 1,
        },
        "resources": {
            "requests": {"cpu": settings.cpu_request, "memory": settings.memory_request},
            "limits": match &settings.cpu_limit {
                Some(cpu) => json!({"cpu": cpu, "memory": settings.memory_limit}),
                None => json!({"memory": settings.memory_limit}),
            },
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "privileged": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }))
}

/// File mode of projected files (0644), written out so the admitted pod equals the
/// API server's defaulted form and a second pass changes nothing.
const DEFAULT_MODE: i32 = 0o644;

fn sidecar_volumes(bound: &[&ProtectedResource]) -> Result<Vec<Volume>, InjectError> {
    let mut volumes = vec![
        json!({"name": "portcullis-config", "configMap": {"name": CONFIG_MAP, "defaultMode": DEFAULT_MODE}}),
        json!({"name": "portcullis-spool", "emptyDir": {}}),
        json!({"name": "portcullis-tls", "secret": {"secretName": SIDECAR_TLS_SECRET, "defaultMode": DEFAULT_MODE}}),
        json!({"name": "portcullis-masking-key", "secret": {"secretName": MASKING_KEY_SECRET, "defaultMode": DEFAULT_MODE}}),
        json!({"name": "portcullis-sidecar-token", "projected": {"defaultMode": DEFAULT_MODE, "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
            {"serviceAccountToken": {"path": AUDIT_TOKEN_PATH, "audience": AUDIT_AUDIENCE, "expirationSeconds": 3600}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}}),
        json!({"name": AGENT_SA_VOLUME, "projected": {"defaultMode": DEFAULT_MODE, "sources": [
            {"configMap": {"name": CONFIG_MAP, "items": [
                {"key": CA_KEY, "path": "ca.crt"},
                {"key": TOKEN_KEY, "path": "token"},
            ]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}}),
    ];
    for r in bound {
        let name = r.metadata.name.as_deref().unwrap_or_default();
        if let Some(c) = &r.spec.credentials_secret_ref {
            volumes.push(json!({
                "name": volume_name("portcullis-cred", name),
                "secret": {"secretName": c.name, "defaultMode": DEFAULT_MODE},
            }));
        }
        if let Some(ca) = r.spec.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
            volumes.push(json!({
                "name": volume_name("portcullis-ca", name),
                "secret": {"secretName": ca.name, "defaultMode": DEFAULT_MODE, "items": [{"key": ca.key, "path": "ca.crt"}]},
            }));
        }
    }
    volumes.into_iter().map(from_json).collect()
}

/// Environment variables of agent containers, in a stable order.
fn agent_env(bound: &[&ProtectedResource]) -> Vec<EnvVar> {
    let mut env: Vec<(String, String)> = Vec::new();
    let loopback = "127.0.0.1";
    let url = |r: &ProtectedResource| {
        let port = r.spec.listen_port;
        let db = r.spec.database.as_deref().unwrap_or_default();
        match r.spec.r#type {
            ResourceType::Postgres => format!("postgresql://{loopback}:{port}/{db}"),
            ResourceType::Mysql => format!("mysql://{loopback}:{port}/{db}"),
            ResourceType::Kubernetes => format!("https://{loopback}:{port}"),
        }
    };
    let first = |t: ResourceType| bound.iter().find(|r| r.spec.r#type == t).copied();
    let pg = first(ResourceType::Postgres);
    let my = first(ResourceType::Mysql);
    if let Some(r) = pg {
        env.push(("PGHOST".into(), loopback.into()));
        env.push(("PGPORT".into(), r.spec.listen_port.to_string()));
    }
    if let Some(r) = my {
        env.push(("MYSQL_HOST".into(), loopback.into()));
        env.push(("MYSQL_TCP_PORT".into(), r.spec.listen_port.to_string()));
    }
    if let Some(r) = pg.or(my) {
        env.push(("DATABASE_URL".into(), url(r)));
    }
    let kport = first(ResourceType::Kubernetes)
        .map(|r| r.spec.listen_port)
        .unwrap_or(DEFAULT_KUBERNETES_PORT)
        .to_string();
    let ktcp = format!("tcp://{loopback}:{kport}");
    env.extend([
        ("KUBERNETES_SERVICE_HOST".into(), loopback.into()),
        ("KUBERNETES_SERVICE_PORT".into(), kport.clone()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), kport.clone()),
        ("KUBERNETES_PORT".into(), ktcp.clone()),
        ("KUBERNETES_PORT_443_TCP".into(), ktcp),
        ("KUBERNETES_PORT_443_TCP_ADDR".into(), loopback.into()),
        ("KUBERNETES_PORT_443_TCP_PORT".into(), kport),
        ("KUBERNETES_PORT_443_TCP_PROTO".into(), "tcp".into()),
    ]);
    for r in bound {
        let n = env_name(r);
        env.push((format!("PORTCULLIS_{n}_HOST"), loopback.into()));
        env.push((
            format!("PORTCULLIS_{n}_PORT"),
            r.spec.listen_port.to_string(),
        ));
        env.push((format!("PORTCULLIS_{n}_URL"), url(r)));
    }
    env.into_iter()
        .map(|(name, value)| EnvVar {
            name,
            value: Some(value),
            value_from: None,
        })
        .collect()
}

fn upsert_env(container: &mut Container, env: &[EnvVar]) {
    let list = container.env.get_or_insert_with(Vec::new);
    for e in env {
        match list.iter_mut().find(|x| x.name == e.name) {
            Some(existing) => *existing = e.clone(),
            None => list.push(e.clone()),
        }
    }
}

const AGENT_SA_VOLUME: &str = "portcullis-agent-serviceaccount";

fn rewrite_agent(container: &mut Container, env: &[EnvVar], removed_volumes: &BTreeSet<String>) {
    let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
    let ours = |m: &VolumeMount| m.name == AGENT_SA_VOLUME && m.mount_path == SERVICE_ACCOUNT_DIR;
    // Agents keep no mount of the token volume the API server added and no mount at the
    // service-account path but ours; a mount of a sidecar volume is refused by the check.
    mounts.retain(|m| {
        ours(m) || !(removed_volumes.contains(&m.name) || m.mount_path == SERVICE_ACCOUNT_DIR)
    });
    if !mounts.iter().any(ours) {
        mounts.push(VolumeMount {
            name: AGENT_SA_VOLUME.to_owned(),
            mount_path: SERVICE_ACCOUNT_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    upsert_env(container, env);
}

/// The pod with the sidecar injected and the agent containers rewired. Refuses pods that
/// bring their own sidecar-named container or volume (unless it is exactly the one injected
/// here, as on a reinvocation), and pods whose other containers would reach what only the
/// sidecar may ([`pod_guard::check`] on the result).
pub fn inject(pod: &Pod, input: &InjectInput<'_>) -> Result<Pod, InjectError> {
    let bound = bound_resources(pod, input)?;
    let sidecar = sidecar_container(&bound, input.sidecar)?;
    let ours = sidecar_volumes(&bound)?;
    let mut out = pod.clone();
    let spec = out
        .spec
        .as_mut()
        .ok_or_else(|| InjectError::Internal("pod has no spec".to_owned()))?;

    // A sidecar-named container or volume is accepted only as this webhook's own output.
    let brought = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == SIDECAR_NAME && **c != sidecar);
    if let Some(c) = brought {
        return Err(InjectError::Impostor(format!("container {:?}", c.name)));
    }
    if spec
        .ephemeral_containers
        .iter()
        .flatten()
        .any(|c| c.name == SIDECAR_NAME)
    {
        return Err(InjectError::Impostor(format!(
            "ephemeral container {SIDECAR_NAME:?}"
        )));
    }
    for v in spec.volumes.iter().flatten() {
        if v.name.starts_with(pod_guard::SIDECAR_VOLUME_PREFIX) && !ours.iter().any(|o| o == v) {
            return Err(InjectError::Impostor(format!("volume {:?}", v.name)));
        }
    }

    // Volumes: drop the plugin's token volume and our own (re-added below, so a second pass
    // converges), keep everything else in order.
    let mut removed: BTreeSet<String> = BTreeSet::new();
    let mut volumes = spec.volumes.take().unwrap_or_default();
    volumes.retain(|v| {
        let token = is_service_account_volume(v);
        if token {
            removed.insert(v.name.clone());
        }
        !(token || v.name.starts_with(pod_guard::SIDECAR_VOLUME_PREFIX))
    });
    volumes.extend(ours);
    spec.volumes = Some(volumes);

    let env = agent_env(&bound);
    let mut inits: Vec<Container> = spec.init_containers.take().unwrap_or_default();
    inits.retain(|c| c.name != SIDECAR_NAME);
    for c in inits.iter_mut().chain(spec.containers.iter_mut()) {
        rewrite_agent(c, &env, &removed);
    }
    inits.insert(0, sidecar.clone());
    spec.init_containers = Some(inits);

    let mut guard = protected(input.resources, input.sidecar.run_as_user);
    guard.token_secrets = input.token_secrets.clone();
    pod_guard::check(spec, Some(&sidecar), &guard)?;

    let names: Vec<&str> = bound
        .iter()
        .filter_map(|r| r.metadata.name.as_deref())
        .collect();
    let annotations = out.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(
        CONFIG_HASH_ANNOTATION.to_owned(),
        input
            .config_hash
            .clone()
            .unwrap_or_else(|| "pending".to_owned()),
    );
    annotations.insert(BOUND_ANNOTATION.to_owned(), names.join(","));
    out.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(INJECTED_LABEL.to_owned(), "true".to_owned());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("pod")
    }

    fn resource(name: &str, kind: &str, port: i32) -> ProtectedResource {
        serde_json::from_value(json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "ProtectedResource",
            "metadata": {"name": name, "namespace": "agents"},
            "spec": {"type": kind, "endpoint": {"host": "db", "port": port}, "database": "shop",
                     "credentialsSecretRef": {"name": "db-creds"}, "listenPort": port},
        }))
        .expect("resource")
    }

    fn resources() -> Vec<ProtectedResource> {
        vec![resource("db", "postgres", 5432)]
    }

    /// MySQL is not served yet: a MySQL resource is not bound by default (the agent gets no
    /// address nobody listens on), and a pod that names one is refused with a message.
    #[test]
    fn resources_of_unserved_types_are_not_bound() {
        let settings = SidecarSettings::default();
        let rs = vec![
            resource("db", "postgres", 5432),
            resource("my", "mysql", 3306),
        ];
        let input = InjectInput {
            namespace: "agents",
            resources: &rs,
            config_hash: None,
            sidecar: &settings,
            token_secrets: BTreeSet::new(),
        };
        let p = pod(json!({"metadata": {"name": "a"}, "spec": {
            "containers": [{"name": "agent", "image": "a"}],
        }}));
        let out = inject(&p, &input).expect("inject");
        let agent = &out.spec.as_ref().expect("spec").containers[0];
        let env: Vec<&str> = agent
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        assert!(env.contains(&"PGPORT"), "{env:?}");
        assert!(!env.iter().any(|k| k.starts_with("MYSQL")), "{env:?}");
        let named = pod(
            json!({"metadata": {"name": "a", "annotations": {RESOURCES_ANNOTATION: "my"}},
            "spec": {"containers": [{"name": "agent", "image": "a"}]}}),
        );
        let err = inject(&named, &input).expect_err("refused");
        assert!(
            err.to_string()
                .contains("which this version does not serve"),
            "{err}"
        );
    }

    #[test]
    fn injection_converges_and_refuses_smuggled_sidecar_parts() {
        let settings = SidecarSettings::default();
        let rs = resources();
        let input = InjectInput {
            namespace: "agents",
            resources: &rs,
            config_hash: Some("abc".into()),
            sidecar: &settings,
            token_secrets: BTreeSet::new(),
        };
        let p = pod(json!({"metadata": {"name": "a"}, "spec": {
            "volumes": [
                {"name": "kube-api-access-x1", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
            ],
            "containers": [{"name": "agent", "image": "a", "volumeMounts": [
                {"name": "kube-api-access-x1", "mountPath": SERVICE_ACCOUNT_DIR},
            ]}],
        }}));
        let once = inject(&p, &input).expect("inject");
        let twice = inject(&once, &input).expect("inject again");
        assert_eq!(once, twice);
        let spec = once.spec.as_ref().expect("spec");
        let agent = &spec.containers[0];
        let mounts: Vec<&str> = agent
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(mounts, vec!["portcullis-agent-serviceaccount"]);
        let env: Vec<(&str, &str)> = agent
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or_default()))
            .collect();
        assert!(env.contains(&("PGPORT", "5432")));
        assert!(env.contains(&("DATABASE_URL", "postgresql://127.0.0.1:5432/shop")));
        assert!(!spec
            .volumes
            .iter()
            .flatten()
            .any(|v| v.name.starts_with("kube-api-access-")));

        let smuggled = pod(json!({"metadata": {"name": "a"}, "spec": {
            "volumes": [{"name": "portcullis-cred-db", "emptyDir": {}}],
            "containers": [{"name": "agent", "image": "a"}],
        }}));
        assert!(matches!(
            inject(&smuggled, &input),
            Err(InjectError::Impostor(_))
        ));
        let mut fake = once.clone();
        if let Some(c) = fake
            .spec
            .as_mut()
            .and_then(|s| s.init_containers.as_mut())
            .and_then(|c| c.first_mut())
        {
            c.image = Some("evil".to_owned());
        }
        assert!(matches!(
            inject(&fake, &input),
            Err(InjectError::Impostor(_))
        ));
    }

    #[test]
    fn injection_is_decided_by_namespace_label_and_pod_annotation() {
        let plain = pod(json!({"metadata": {"name": "a"}, "spec": {"containers": []}}));
        let out = pod(
            json!({"metadata": {"name": "a", "annotations": {INJECT_ANNOTATION: INJECT_DISABLED}}, "spec": {"containers": []}}),
        );
        let opt_in = pod(
            json!({"metadata": {"name": "a", "annotations": {INJECT_ANNOTATION: INJECT_ENABLED}}, "spec": {"containers": []}}),
        );
        assert!(needs_injection(&plain, true));
        assert!(!needs_injection(&out, true));
        assert!(!needs_injection(&plain, false));
        assert!(needs_injection(&opt_in, false));
    }

    #[test]
    fn long_resource_names_give_valid_volume_names() {
        let long = "a".repeat(200);
        let name = volume_name("portcullis-cred", &long);
        assert!(name.len() <= 63, "{name}");
        assert_ne!(name, volume_name("portcullis-cred", &"b".repeat(200)));
        assert_eq!(volume_name("portcullis-cred", "db"), "portcullis-cred-db");
    }
}
