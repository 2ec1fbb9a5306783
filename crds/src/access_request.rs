//! AccessRequest: a risky operation waiting for, or carrying, a named human's decision.

// kube's `printcolumn(...)` attributes repeat the same keys by design.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A request to run one operation that a guardrail holds for approval.
///
/// The sidecar creates it; an approver decides with
/// `kubectl portcullis approve|deny NAME --reason ...`, which sets `spec.decision`. The
/// decider is stamped by admission from the authenticated API-server user, never taken from
/// what the client wrote, and a decision once made cannot change.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "AccessRequest",
    namespaced,
    cel,
    derive = "PartialEq",
    status = "AccessRequestStatus",
    shortname = "ar",
    category = "portcullis",
    doc = "A risky operation held for a named human's decision, and that decision as evidence.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Requester",
        type_ = "string",
        json_path = ".spec.requester.name"
    ),
    printcolumn(name = "Resource", type_ = "string", json_path = ".spec.resource"),
    printcolumn(
        name = "Rule",
        type_ = "string",
        json_path = ".spec.rule",
        priority = "1"
    ),
    printcolumn(
        name = "Decided-By",
        type_ = "string",
        json_path = ".spec.decision.decidedBy"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(oldSelf.decision) || (has(self.decision) && self.decision == oldSelf.decision)")
    .message("a decision cannot be changed or withdrawn once made: create a new AccessRequest instead"))]
#[x_kube(validation = Rule::new("self.requester == oldSelf.requester && self.resource == oldSelf.resource && self.policy == oldSelf.policy && self.rule == oldSelf.rule && self.operation == oldSelf.operation")
    .message("only spec.decision may change after an AccessRequest is created: requester, resource, policy, rule and operation are fixed"))]
#[serde(rename_all = "camelCase")]
pub struct AccessRequestSpec {
    /// Who asks: the workload and, when present, the person or pipeline behind it.
    pub requester: Requester,

    /// Name of the ProtectedResource the operation targets.
    #[schemars(length(min = 1, max = 253))]
    pub resource: String,

    /// Name of the GatewayPolicy whose guardrail holds the operation.
    #[schemars(length(min = 1, max = 253))]
    pub policy: String,

    /// Name of the guardrail that requires approval.
    #[schemars(length(min = 1, max = 63))]
    pub rule: String,

    /// The operation waiting for a decision.
    pub operation: Operation,

    /// Why the requester needs this, as stated by the client (for example the ticket it works
    /// on). Shown to the approver and kept as evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub justification: Option<String>,

    /// How long the requester asks the approval to hold. The policy's `grantDuration` caps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_duration: Option<Duration>,

    /// The approver's decision. Set with `kubectl portcullis approve|deny`; cannot change once
    /// set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

/// The identity behind a request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Requester {
    /// Display name: the person or pipeline when known, otherwise the service account.
    #[schemars(length(min = 1, max = 512))]
    pub name: String,
    /// Kubernetes user name of the workload, `system:serviceaccount:NAMESPACE:NAME`.
    #[x_kube(validation = Rule::new("self.startsWith('system:serviceaccount:')")
        .message("requester.serviceAccount must be a service-account user name, system:serviceaccount:NAMESPACE:NAME"))]
    #[schemars(length(max = 512))]
    pub service_account: String,
    /// Pod the request came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub pod: Option<String>,
    /// OIDC subject (person or machine user), when the client presented a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub user: Option<String>,
    /// OIDC groups of the user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub groups: Vec<String>,
    /// CI pipeline run (for example `acme/agents@refs/heads/main run 1234`), when the client
    /// presented a pipeline token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub pipeline: Option<String>,
}

/// The operation held for approval.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.kind == 'sql' ? has(self.statement) : (has(self.command) && self.command.size() > 0)")
    .message("a sql operation needs operation.statement, an exec operation needs operation.command"))]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// `sql` (a database statement) or `exec` (a command in a pod).
    pub kind: OperationKind,
    /// The statement with every literal replaced by a placeholder (no personal data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub statement: Option<String>,
    /// Stable fingerprint of the statement or command; an approval covers this fingerprint.
    #[schemars(length(min = 1, max = 128))]
    pub fingerprint: String,
    /// Command vector of an exec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub command: Vec<String>,
    /// Target of an exec, as `NAMESPACE/POD[/CONTAINER]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub target: Option<String>,
}

/// Kind of held operation.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum OperationKind {
    /// A database statement.
    Sql,
    /// A command run in a pod (`pods/exec` or `pods/attach`).
    Exec,
}

/// An approver's decision.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// `Approved` or `Denied`.
    pub verdict: Verdict,
    /// Why, in the approver's words. Required.
    #[x_kube(validation = Rule::new("self.trim().size() > 0").message("a decision needs a reason: pass --reason \"...\""))]
    #[schemars(length(max = 1024))]
    pub reason: String,
    /// Kubernetes user who decided. Stamped by the admission webhook from the authenticated
    /// user; any value a client writes is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub decided_by: Option<String>,
    /// When the decision was made. Stamped by the admission webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Time>,
}

/// The verdict of a decision.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The operation may run.
    Approved,
    /// The operation is refused.
    Denied,
}

/// Lifecycle phase of an AccessRequest.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum AccessRequestPhase {
    /// Waiting for a decision.
    #[default]
    Pending,
    /// Approved; the grant holds until `status.expiresAt`.
    Approved,
    /// Denied by an approver.
    Denied,
    /// No decision before the timeout, or the grant ran out.
    Expired,
}

/// Observed state of an AccessRequest.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AccessRequestStatus {
    /// `Pending`, `Approved`, `Denied` or `Expired`.
    #[serde(default)]
    pub phase: AccessRequestPhase,
    /// Conditions of the request.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When a Pending request times out, or an Approved grant runs out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// How many operations ran under this grant.
    #[serde(default)]
    pub uses: i64,
}
