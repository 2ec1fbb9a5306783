//! AccessRequest: a risky operation waiting for, or carrying, a named human's decision.

// kube's `printcolumn(...)` attributes repeat the same keys by design.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::gateway_policy::GrantScope;

/// A request to run one operation that a guardrail holds for approval.
///
/// The sidecar creates it (admission checks that `spec.requester.serviceAccount` is the
/// creating user and that the fingerprint is that of the shown operation; the sidecar seals
/// the spec and honours only requests it sealed itself); an approver decides with
/// `kubectl portcullis approve|deny NAME --reason ...`, which sets `spec.decision`. The
/// decider is stamped by admission from the authenticated API-server user, never taken from
/// what the client wrote. Before the decision only the decision may be added; after it the
/// whole spec is fixed. Inspect a request with `kubectl portcullis show NAME`, which escapes
/// control characters, escape sequences, bidi overrides and zero-width characters.
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
        name = "Covers",
        type_ = "string",
        json_path = ".spec.operation.covers"
    ),
    printcolumn(
        name = "Rule",
        type_ = "string",
        json_path = ".spec.rule",
        priority = "1"
    ),
    printcolumn(
        name = "Approvers",
        type_ = "integer",
        json_path = ".spec.requiredApprovals"
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
#[x_kube(validation = Rule::new("self.requester == oldSelf.requester && self.resource == oldSelf.resource && self.policy == oldSelf.policy && self.rule == oldSelf.rule && self.operation == oldSelf.operation && has(self.justification) == has(oldSelf.justification) && (!has(self.justification) || self.justification == oldSelf.justification) && has(self.requestedDuration) == has(oldSelf.requestedDuration) && (!has(self.requestedDuration) || self.requestedDuration == oldSelf.requestedDuration) && has(self.session) == has(oldSelf.session) && (!has(self.session) || self.session == oldSelf.session) && has(self.scope) == has(oldSelf.scope) && (!has(self.scope) || self.scope == oldSelf.scope) && has(self.seal) == has(oldSelf.seal) && (!has(self.seal) || self.seal == oldSelf.seal)")
    .message("only spec.decision may change after an AccessRequest is created, and only by being added: requester, resource, policy, rule, operation, justification, requestedDuration, session, scope and seal are fixed"))]
#[x_kube(validation = Rule::new("has(self.requiredApprovals) == has(oldSelf.requiredApprovals) && (!has(self.requiredApprovals) || self.requiredApprovals == oldSelf.requiredApprovals)")
    .message("spec.requiredApprovals is fixed when the AccessRequest is created"))]
#[x_kube(validation = Rule::new("!has(oldSelf.approvals) || (has(self.approvals) && self.approvals.size() >= oldSelf.approvals.size())")
    .message("an approval cannot be withdrawn: deny the request instead"))]
#[x_kube(validation = Rule::new("!has(oldSelf.decision) || self == oldSelf")
    .message("a decided AccessRequest cannot change: its whole spec is the evidence of what was approved"))]
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

    /// The sidecar session that asked. A `session`-scoped grant covers only this session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub session: Option<String>,

    /// What an approval covers: `statement` (this operation) or `session` (the operations the
    /// guardrail `rule` matches in `session`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<GrantScope>,

    /// The requesting sidecar's seal over this spec (HMAC-SHA256 with a key only that sidecar
    /// process holds). A sidecar honours only requests that carry its own seal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub seal: Option<String>,

    /// How many distinct approvers must approve (the policy's `approval.requiredApprovals`
    /// when the request was made). Sealed with the spec.
    #[serde(default = "one_approval")]
    #[schemars(range(min = 1, max = 5))]
    pub required_approvals: u32,

    /// The approvals given before the decision when more than one approver is required,
    /// oldest first: `kubectl portcullis approve` adds one while approvals are missing, and
    /// sets `decision` with the last. Admission stamps each with the authenticated user and
    /// refuses a second approval by the same user, one by the requester, by a member of the
    /// policy's `ownerGroups` or by anyone who is not an approver; an approval cannot change
    /// or be withdrawn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub approvals: Vec<Approval>,

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
    /// The statement as it will run (`covers: values`), or with every literal replaced by a
    /// placeholder (`covers: shape`). Code bodies (DO blocks, function bodies) are always
    /// shown in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub statement: Option<String>,
    /// What an approval of this request covers: `values` (exactly the statement shown, the
    /// default) or `shape` (the statement shown with any values in place of its placeholders,
    /// when the guardrail opts in with `grantCovers: shape`).
    #[serde(default)]
    pub covers: GrantCovers,
    /// Fingerprint of the shown operation ([`Operation::grant_fingerprint`]); an approval
    /// covers this fingerprint. Admission refuses a fingerprint that is not the one of the
    /// shown statement or command.
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
    /// What the statement runs beyond its own text, as the sidecar read it: the prepared
    /// definitions a use of a prepared statement (`EXECUTE name`) runs, and the definitions of
    /// the functions and views made through the sidecar that it calls or names. Written by the
    /// sidecar, apart from the client's `statement`, shown apart from it (text in the
    /// statement cannot pass for it), and part of what a grant is bound to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub runs: Vec<String>,
    /// The values a Bind binds to the statement's parameters, one an entry (`$1 = 'Ghent'`),
    /// written by the sidecar apart from the statement and shown escaped, one a line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 65535))]
    pub bound_values: Vec<String>,
}

/// What an approval covers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub enum GrantCovers {
    /// Exactly the operation shown, with its values.
    #[default]
    Values,
    /// The statement shown with any values in its placeholders.
    Shape,
}

impl GrantCovers {
    /// Whether this is the default, [`GrantCovers::Values`].
    pub fn is_values(&self) -> bool {
        *self == GrantCovers::Values
    }

    /// The camelCase name, as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantCovers::Values => "values",
            GrantCovers::Shape => "shape",
        }
    }
}

impl Operation {
    /// The fingerprint an approval of this operation covers: SHA-256 over its kind, what it
    /// covers, the shown statement, the command vector and the target, then (when there are
    /// any) the definitions it runs and the bound values, each length-prefixed (hex, 32
    /// characters). Admission and the sidecar compute it with this one function.
    pub fn grant_fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut part = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        part(b"portcullis.dev/grant/v1");
        part(match self.kind {
            OperationKind::Sql => b"sql",
            OperationKind::Exec => b"exec",
        });
        part(self.covers.as_str().as_bytes());
        part(self.statement.as_deref().unwrap_or("").as_bytes());
        part(&(self.command.len() as u64).to_be_bytes());
        for word in &self.command {
            part(word.as_bytes());
        }
        part(self.target.as_deref().unwrap_or("").as_bytes());
        if !self.runs.is_empty() || !self.bound_values.is_empty() {
            part(b"uses");
            for list in [&self.runs, &self.bound_values] {
                part(&(list.len() as u64).to_be_bytes());
                for item in list {
                    part(item.as_bytes());
                }
            }
        }
        hex::encode(&h.finalize()[..16])
    }
}

impl AccessRequestSpec {
    /// The bytes a seal covers: the spec without its approvals, decision and seal, as JSON.
    pub fn sealed_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut spec = self.clone();
        spec.approvals = Vec::new();
        spec.decision = None;
        spec.seal = None;
        serde_json::to_vec(&spec)
    }

    /// The distinct users whose stamped approval counts for this request: the approvers of
    /// `approvals` and the decider of an Approved decision, none of them the requester (its
    /// service account or its user). Unstamped entries do not count.
    pub fn approvers(&self) -> Vec<&str> {
        let requester = &self.requester;
        let mut out: Vec<&str> = Vec::new();
        let decided = self
            .decision
            .as_ref()
            .filter(|d| d.verdict == Verdict::Approved && d.decided_at.is_some())
            .and_then(|d| d.decided_by.as_deref());
        let given = self
            .approvals
            .iter()
            .filter(|a| a.approved_at.is_some())
            .filter_map(|a| a.approved_by.as_deref());
        for user in given.chain(decided) {
            let own = user == requester.service_account || requester.user.as_deref() == Some(user);
            if !user.is_empty() && !own && !out.contains(&user) {
                out.push(user);
            }
        }
        out
    }
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

fn one_approval() -> u32 {
    1
}

/// One approver's approval, before the decision.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    /// Why, in the approver's words. Required.
    #[x_kube(validation = Rule::new("self.trim().size() > 0").message("an approval needs a reason: pass --reason \"...\""))]
    #[schemars(length(max = 1024))]
    pub reason: String,
    /// Kubernetes user who approved. Stamped by the admission webhook from the authenticated
    /// user; any value a client writes is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub approved_by: Option<String>,
    /// When. Stamped by the admission webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<Time>,
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
    /// When a Pending request times out, or an Approved grant runs out. Shown for people;
    /// the sidecar computes a grant's end from the stamped decision time and the durations in
    /// the spec, never from status. Each use of a grant is an audit record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}
