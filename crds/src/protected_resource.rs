//! ProtectedResource: one target (a database or a Kubernetes API) that agents reach only
//! through the sidecar.

// kube's `printcolumn(...)` attributes repeat the same keys by design.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A database or Kubernetes API that agent pods may reach only through the Portcullis sidecar.
///
/// The credential lives in the Secret named by `credentialsSecretRef`, which is mounted into the
/// sidecar alone; agent containers get an address on 127.0.0.1 and never see the credential.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "ProtectedResource",
    namespaced,
    cel,
    derive = "PartialEq",
    status = "ProtectedResourceStatus",
    shortname = "pr",
    category = "portcullis",
    doc = "A database or Kubernetes API that agent pods reach only through the Portcullis sidecar.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".spec.endpoint.host"),
    printcolumn(name = "Port", type_ = "integer", json_path = ".spec.listenPort"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Pods", type_ = "integer", json_path = ".status.boundPods"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.type == 'kubernetes' || has(self.endpoint)")
    .message("spec.endpoint is required for postgres and mysql resources: set endpoint.host and endpoint.port of the database server"))]
#[x_kube(validation = Rule::new("self.type == 'kubernetes' || has(self.credentialsSecretRef)")
    .message("spec.credentialsSecretRef is required for postgres and mysql resources: name the Secret that holds the database username and password"))]
#[x_kube(validation = Rule::new("self.type != 'kubernetes' || !has(self.database)")
    .message("spec.database applies to postgres and mysql resources only: remove it from a kubernetes resource"))]
#[x_kube(validation = Rule::new("!has(self.tls) || self.tls.mode != 'verify-full' || has(self.tls.caSecretRef)")
    .message("spec.tls.mode verify-full needs spec.tls.caSecretRef: name the Secret key holding the CA that signed the server certificate"))]
#[serde(rename_all = "camelCase")]
pub struct ProtectedResourceSpec {
    /// Kind of target: `postgres`, `mysql`, or `kubernetes` (the cluster's own API server,
    /// for exec and attach).
    pub r#type: ResourceType,

    /// Network address of the upstream server. Required for `postgres` and `mysql`; for
    /// `kubernetes` it defaults to the in-cluster API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,

    /// Database name to connect to upstream (`postgres` and `mysql`). Defaults to the
    /// database the client asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() > 0 && self.size() <= 63").message("spec.database must be 1 to 63 characters long"))]
    pub database: Option<String>,

    /// TLS towards the upstream server. Defaults to `verify-full` with the system roots
    /// when omitted for `kubernetes`, and to `require` for databases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,

    /// Secret (in the same namespace) that holds the upstream credential. Mounted into the
    /// sidecar container only, never into agent containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsSecretRef>,

    /// Port the sidecar listens on at 127.0.0.1 inside the agent pod. Agents connect here
    /// instead of to the upstream server. Must be unique among the resources bound to a pod.
    #[x_kube(validation = Rule::new("self >= 1024 && self <= 65535")
        .message("spec.listenPort must be between 1024 and 65535: the sidecar runs as non-root and cannot bind privileged ports"))]
    pub listen_port: i32,
}

/// Kind of protected target.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ResourceType {
    /// A PostgreSQL server (wire protocol 3.0).
    Postgres,
    /// A MySQL or MariaDB server. Not served yet: accepted, reported `Ready=False` with reason
    /// `NotServed`, and left out of the sidecar's configuration and the agent's environment.
    Mysql,
    /// The Kubernetes API server, for `pods/exec`, `pods/attach` and everything else an
    /// agent does with the cluster.
    Kubernetes,
}

impl ResourceType {
    /// The lower-case name used in YAML and in environment variable hints.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceType::Postgres => "postgres",
            ResourceType::Mysql => "mysql",
            ResourceType::Kubernetes => "kubernetes",
        }
    }

    /// Whether a sidecar of this version serves resources of this type.
    pub fn is_served(self) -> bool {
        !matches!(self, ResourceType::Mysql)
    }
}

/// Network address of an upstream server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// DNS name or IP address of the server, for example
    /// `customers-db.data.svc.cluster.local`.
    #[x_kube(validation = Rule::new("self.size() > 0 && self.size() <= 253 && !self.contains(' ') && !self.contains('/')")
        .message("spec.endpoint.host must be a DNS name or IP address (no scheme, path or spaces), at most 253 characters"))]
    pub host: String,

    /// TCP port of the server, for example 5432 for PostgreSQL or 3306 for MySQL.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535")
        .message("spec.endpoint.port must be between 1 and 65535"))]
    pub port: i32,
}

/// TLS settings towards the upstream server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTls {
    /// `disable` (plain TCP; only for servers on a trusted network), `require` (encrypted,
    /// certificate not checked), or `verify-full` (encrypted, certificate chain and host name
    /// checked against `caSecretRef`).
    pub mode: TlsMode,

    /// Secret key holding the PEM CA bundle used to verify the server (required for
    /// `verify-full`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,

    /// Name to verify in the server certificate, when it differs from `endpoint.host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// TLS mode towards the upstream server (the names follow libpq's `sslmode`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS without certificate verification.
    Require,
    /// TLS with the certificate chain and host name verified.
    VerifyFull,
}

/// A key in a Secret of the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[x_kube(validation = Rule::new("self.size() > 0 && self.size() <= 253").message("a Secret name must be 1 to 253 characters long"))]
    pub name: String,
    /// Key inside the Secret's data.
    #[x_kube(validation = Rule::new("self.size() > 0").message("a Secret key must not be empty"))]
    pub key: String,
}

/// The Secret holding the upstream credential.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret, in the resource's namespace.
    #[x_kube(validation = Rule::new("self.size() > 0 && self.size() <= 253").message("spec.credentialsSecretRef.name must be 1 to 253 characters long"))]
    pub name: String,
    /// Key of the user name in the Secret. Defaults to `username`.
    #[serde(default = "default_username_key")]
    pub username_key: String,
    /// Key of the password in the Secret. Defaults to `password`.
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".to_owned()
}

fn default_password_key() -> String {
    "password".to_owned()
}

/// Observed state of a ProtectedResource.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProtectedResourceStatus {
    /// `Ready` and `CredentialsResolved`, with reasons such as `SecretNotFound` or `KeyMissing`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of running pods whose sidecar serves this resource.
    #[serde(default)]
    pub bound_pods: i32,
}
