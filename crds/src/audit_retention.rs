//! AuditRetention: how long audit records are kept, where, and the log's latest signed state.

// kube's `printcolumn(...)` attributes repeat the same keys by design.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::protected_resource::SecretKeyRef;

/// Retention and storage of the tamper-evident audit log.
///
/// The status publishes the latest signed tree head, so the cluster's own state witnesses
/// the log: a rewritten or truncated log no longer matches it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "AuditRetention",
    namespaced,
    cel,
    derive = "PartialEq",
    status = "AuditRetentionStatus",
    shortname = "ret",
    category = "portcullis",
    doc = "How long Portcullis audit records are kept and where, with the log's latest signed tree head.",
    printcolumn(name = "Retain", type_ = "string", json_path = ".spec.retainFor"),
    printcolumn(name = "Legal-Hold", type_ = "boolean", json_path = ".spec.legalHold"),
    printcolumn(name = "Records", type_ = "integer", json_path = ".status.recordCount"),
    printcolumn(
        name = "Verified",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Verified\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AuditRetentionSpec {
    /// How long records are kept, in days (`400d`) or hours (`72h`). Unless `legalHold` is
    /// set, older records are pruned by whole segments, and session recordings stored before
    /// the cut-off are deleted once no kept record names them.
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^[1-9][0-9]{0,5}(d|h)$')")
        .message("retainFor must be a whole number of days or hours, for example 400d or 72h"))]
    pub retain_for: String,

    /// Stops all pruning while set (litigation or investigation hold).
    #[serde(default)]
    pub legal_hold: bool,

    /// Where the log is stored. Omitted: the audit service's PersistentVolume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<AuditStorage>,

    /// How often the audit service walks the whole log and checks it against the signed tree
    /// head (Go duration). Defaults to `1h`.
    #[serde(default = "default_verify_every")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(s|m|h))+$') && duration(self) >= duration('1m')")
        .message("verifyEvery must be a duration of at least 1m, for example 1h"))]
    pub verify_every: Duration,
}

fn default_verify_every() -> Duration {
    Duration::from(std::time::Duration::from_secs(60 * 60))
}

/// Storage of the audit log: exactly one of `persistentVolume` or `s3`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.persistentVolume) != has(self.s3)")
    .message("storage needs exactly one of persistentVolume or s3"))]
#[x_kube(validation = Rule::new("!has(self.s3)")
    .message("storage.s3 is not implemented yet: the audit service writes to its persistentVolume only; use storage.persistentVolume"))]
#[serde(rename_all = "camelCase")]
pub struct AuditStorage {
    /// A PersistentVolumeClaim of the audit service (the embedded default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume: Option<PersistentVolumeStorage>,
    /// S3-compatible object storage with Object Lock (scale-out). Not implemented yet: refused
    /// at admission until the audit service can write to object storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
}

/// PersistentVolume storage of the audit service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeStorage {
    /// Name of an existing claim. Omitted: the claim the Helm chart creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub claim_name: Option<String>,
    /// Size of the claim to create, for example `20Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
}

/// S3-compatible object storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    /// Endpoint URL, for example `https://s3.eu-central-1.amazonaws.com`.
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')")
        .message("s3.endpoint must be an http:// or https:// URL"))]
    #[schemars(length(max = 2048))]
    pub endpoint: String,
    /// Bucket name. The bucket must have Object Lock enabled.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$')")
        .message("s3.bucket must be a valid bucket name: 3 to 63 lower-case letters, digits, '.' or '-'"))]
    #[schemars(length(max = 63))]
    pub bucket: String,
    /// Region of the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub region: Option<String>,
    /// Key prefix for segment objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub prefix: Option<String>,
    /// Secret key holding the access key id.
    pub access_key_id_secret_ref: SecretKeyRef,
    /// Secret key holding the secret access key.
    pub secret_access_key_secret_ref: SecretKeyRef,
    /// Object Lock retention mode applied to each segment: `governance` or `compliance`.
    #[serde(default)]
    pub object_lock_mode: ObjectLockMode,
}

/// S3 Object Lock retention mode.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub enum ObjectLockMode {
    /// Privileged users may shorten retention.
    Governance,
    /// Nobody, not even the account root, may shorten retention.
    #[default]
    Compliance,
}

/// A signed tree head of the audit log (RFC 9162 style).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SignedTreeHead {
    /// Number of records in the tree.
    pub tree_size: i64,
    /// Merkle tree root hash, lower-case hex of SHA-256.
    pub root_hash: String,
    /// When the head was signed, RFC 3339.
    pub timestamp: String,
    /// ed25519 signature over the head, base64.
    pub signature: String,
    /// Identifier of the signing key (hex SHA-256 of the public key, first 16 characters).
    pub key_id: String,
}

/// Observed state of an AuditRetention.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuditRetentionStatus {
    /// `Ready` and `Verified`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The latest signed tree head of the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_signed_tree_head: Option<SignedTreeHead>,
    /// Time of the oldest record still kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_record: Option<Time>,
    /// Number of records kept.
    #[serde(default)]
    pub record_count: i64,
    /// Bytes of log kept.
    #[serde(default)]
    pub bytes: i64,
    /// When the log was last verified end to end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verification: Option<Time>,
}
