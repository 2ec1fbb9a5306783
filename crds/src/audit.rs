//! The audit record: what the sidecar writes, durably and before forwarding, for every operation
//! it governs, and what the audit service later appends to its log.
//!
//! Records are serialized as one JSON object per line (JSON Lines). A statement produces two
//! records: a [`AuditEvent::Statement`] record written *before* the statement is forwarded (the
//! write-ahead record, carrying the decision and the rule that made it) and a
//! [`AuditEvent::Completion`] record after the result (rows, bytes, duration, error). Both carry
//! the same `statementId`, so an auditor can pair them; a statement record without a completion
//! means the sidecar stopped before the result arrived.
//!
//! Records never hold literal values from SQL text: statements are recorded with every literal
//! replaced by a placeholder (`?`), so personal data in `WHERE email = '...'` does not reach the
//! log.

use serde::{Deserialize, Serialize};

/// Format identifier carried by every record.
pub const AUDIT_RECORD_VERSION: &str = "portcullis.dev/audit/v1alpha1";

/// One audit record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// Always [`AUDIT_RECORD_VERSION`].
    pub version: String,
    /// Sequence number of the record in the writing sidecar's spool, strictly increasing.
    pub seq: u64,
    /// Time the record was made, RFC 3339 in UTC with microseconds.
    pub time: String,
    /// Session (client connection) the record belongs to, unique per sidecar process.
    pub session_id: String,
    /// Who acted: the identity the sidecar established for the caller.
    pub identity: Identity,
    /// The protected resource the operation was addressed to (ProtectedResource name).
    pub resource: String,
    /// What happened.
    pub event: AuditEvent,
}

/// The identity of a caller: the workload (the pod's service account, from the downward API)
/// and, when the client presented a valid OIDC ID token, the person or pipeline run behind it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// `ServiceAccount` for the workload (`User` in hand-written standalone configurations).
    pub kind: String,
    /// Name of the service account or user.
    pub name: String,
    /// Namespace of a service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod the caller runs in, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// UID of that pod, when known (pod names are reused; UIDs are not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The person or pipeline run, from a validated OIDC ID token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<Principal>,
}

/// A person or pipeline run established from a validated OIDC ID token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    /// `User` or `Pipeline` (the GatewayPolicy subject kinds).
    pub kind: String,
    /// Issuer of the token (`iss`).
    pub issuer: String,
    /// Subject of the token (`sub`).
    pub subject: String,
    /// User name (the issuer's configured user-name claim; `sub` by default).
    pub name: String,
    /// Groups from the issuer's configured group claim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Pipeline claims (repository, ref, workflow, project_path, ...) and every claim a
    /// policy subject matches on, as strings.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub claims: std::collections::BTreeMap<String, String>,
    /// Expiry of the token (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// Id (`kid`) of the issuer's key that signed the token, when the token names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// The event an audit record describes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum AuditEvent {
    /// A client session was opened (after the upstream accepted it).
    SessionStart(SessionStart),
    /// A statement was decided; written before it is forwarded.
    Statement(StatementRecord),
    /// A forwarded statement finished.
    Completion(CompletionRecord),
    /// A client session ended.
    SessionEnd(SessionEnd),
    /// A connection was refused at authentication (missing or invalid OIDC token), before
    /// any session with the server was opened.
    AuthenticationRefused(AuthenticationRefused),
    /// A step of a just-in-time approval (requested, decided, used, timed out, expired),
    /// linked to the others by the AccessRequest name.
    Approval(ApprovalRecord),
    /// A Kubernetes API request through the sidecar and the decision on it; written before
    /// it is forwarded.
    KubeRequest(KubeRequestRecord),
    /// The API server's answer to a forwarded Kubernetes API request.
    KubeResponse(KubeResponseRecord),
    /// A recorded exec or attach session (asciicast v2), stored through the audit service;
    /// the record carries the recording's SHA-256, so the log vouches for its content.
    Recording(RecordingRecord),
    /// Stands in for a record larger than [`MAX_RECORD_BYTES`], which the audit service does
    /// not take: it names the original's kind, SHA-256 and size, so the loss is visible.
    Oversize(OversizeRecord),
    /// An exec or attach session's recording began; written when the stream opens, before
    /// any of it is relayed, so a recording that never finishes is still known.
    RecordingStarted(RecordingStart),
    /// A recording a `recording` record names cannot be served by the audit service, and why.
    RecordingUnavailable(RecordingUnavailable),
}

/// Largest audit record (its JSON line) the audit service takes; the sidecar ships a
/// [`OversizeRecord`] stand-in for a larger one.
pub const MAX_RECORD_BYTES: usize = 768 << 10;

/// A stand-in for a record too large to ship.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OversizeRecord {
    /// Event type of the original record.
    pub original_type: String,
    /// Hex SHA-256 of the original record's JSON line.
    pub sha256: String,
    /// Size of the original record's JSON line in bytes.
    pub bytes: u64,
}

impl AuditRecord {
    /// The stand-in for this record when its JSON line `line` is larger than
    /// [`MAX_RECORD_BYTES`]: the same sequence number, session, time, identity and resource,
    /// with an [`AuditEvent::Oversize`] event naming the original's hash and size.
    pub fn stand_in(&self, line: &[u8]) -> AuditRecord {
        use sha2::Digest;
        let original_type = serde_json::to_value(&self.event)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_owned))
            .unwrap_or_default();
        AuditRecord {
            event: AuditEvent::Oversize(OversizeRecord {
                original_type,
                sha256: hex::encode(sha2::Sha256::digest(line)),
                bytes: line.len() as u64,
            }),
            ..self.clone()
        }
    }
}

/// A Kubernetes API request and the decision on it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KubeRequestRecord {
    /// Identifier of the request in its session (pairs it with its response and recording).
    pub request_id: u64,
    /// HTTP method.
    pub method: String,
    /// Kubernetes verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, ...).
    pub verb: String,
    /// API group (empty for the core group).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    /// Resource (`pods`, `deployments`), empty for non-resource URLs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// Subresource (`exec`, `log`, `status`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    /// Namespace of the object.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Name of the object.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Path of a non-resource URL (`/version`, `/healthz`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// The command of an exec or the target of an attach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecDetails>,
    /// The decision.
    pub decision: Decision,
    /// The rule that made the decision; `None` when no rule matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
    /// Why, in words (the message the client saw for a refusal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// GDPR lawful basis of the governing policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lawful_basis: Option<String>,
    /// Purpose of the governing policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The AccessRequest whose approval let the request run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_request: Option<String>,
    /// Where the request's identity came from, when the resource accepts OIDC ID tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_source: Option<IdentitySource>,
}

/// What an exec or attach asked for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExecDetails {
    /// Container (empty: the pod's default container).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
    /// Command vector (empty for attach), with detected personal data masked.
    #[serde(default)]
    pub command: Vec<String>,
    /// The commands the guardrails judged: the command itself, or each command of a
    /// `sh -c` script.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysed: Vec<String>,
    /// Why the command could not be analysed (it was judged as the riskiest match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unanalysable: Option<String>,
    /// Standard input attached.
    #[serde(default)]
    pub stdin: bool,
    /// Terminal requested.
    #[serde(default)]
    pub tty: bool,
}

/// The answer to a forwarded Kubernetes API request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KubeResponseRecord {
    /// The request this answers.
    pub request_id: u64,
    /// HTTP status code (101 for an upgraded stream).
    pub code: u16,
    /// Time from forwarding to the response headers, in microseconds.
    pub duration_micros: u64,
}

/// A recorded exec or attach session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RecordingRecord {
    /// The request that opened the session.
    pub request_id: u64,
    /// Hex SHA-256 of the recording file (asciicast v2).
    pub sha256: String,
    /// Size of the recording in bytes.
    pub bytes: u64,
    /// Events recorded (output, input and resize).
    pub events: u64,
    /// Length of the session in milliseconds.
    pub duration_millis: u64,
    /// Stream protocol (`v5.channel.k8s.io`, `SPDY/3.1+v4.channel.k8s.io`, ...).
    pub protocol: String,
    /// `NAMESPACE/POD/CONTAINER`.
    pub target: String,
    /// Exit code reported by the server, when it reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Personal data masked in the recording, per detector. Never holds a value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<MaskedOutput>,
    /// Name the recording was started under (see [`RecordingStart::name`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Part number (from 1) of a session recorded in several parts; 0 for a single part.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub part: u32,
    /// Another part follows this one (the session went on past the size limit).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continued: bool,
    /// Why the recording ends before the session did (the sidecar stopped, writing failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_short: Option<String>,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// The start of a session recording.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RecordingStart {
    /// The request that opened the session.
    pub request_id: u64,
    /// Name of the recording until it is finished and named by its hash
    /// (`<session>-<request>`); the `recording` records of its parts carry it.
    pub name: String,
    /// Stream protocol.
    pub protocol: String,
    /// `NAMESPACE/POD/CONTAINER`.
    pub target: String,
}

/// A recording the audit service cannot serve.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RecordingUnavailable {
    /// Hex SHA-256 of the recording.
    pub sha256: String,
    /// Why the service does not have it.
    pub reason: String,
}

/// Values one detector masked in a recording.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MaskedOutput {
    /// The rule that masked them (a policy's detector rule, or `builtin/<detector>`).
    pub rule: RuleRef,
    /// Values masked.
    pub values: u64,
}

/// One step of an approval.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRecord {
    /// What happened.
    pub step: ApprovalStep,
    /// Name of the AccessRequest (the link between the steps).
    pub request: String,
    /// Namespace of the AccessRequest.
    pub namespace: String,
    /// The statement this step concerns, when it is one of the session's statements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_id: Option<u64>,
    /// Fingerprint of the held operation.
    pub fingerprint: String,
    /// The guardrail that required approval.
    pub rule: RuleRef,
    /// Kubernetes user who decided (approved and denied steps), as stamped by admission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// The decider's reason, or why the step happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The justification the client gave (requested step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    /// When the grant runs out (approved and used steps), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// A step of an approval.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ApprovalStep {
    /// The sidecar created the AccessRequest and holds the operation.
    Requested,
    /// An approver approved; the held operation runs.
    Approved,
    /// An approver denied; the held operation is refused.
    Denied,
    /// An operation ran under an existing grant.
    Used,
    /// No decision within the policy's timeout; the held operation is refused.
    TimedOut,
    /// A grant ran out before an operation prepared under it was executed.
    Expired,
    /// The request could not be made or followed (API server unreachable, no permission);
    /// the held operation is refused.
    Failed,
}

/// A connection refused at authentication.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationRefused {
    /// Address of the client (loopback in a pod).
    pub client_address: String,
    /// The refusal the client saw (never the token itself).
    pub reason: String,
}

/// A session was opened.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionStart {
    /// Database the session is connected to.
    pub database: String,
    /// `application_name` the client announced, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
    /// Address of the client (loopback in a pod).
    pub client_address: String,
    /// Where the session's identity came from (`clientToken`, `tokenFile`, `workload`), when
    /// the resource accepts OIDC ID tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_source: Option<IdentitySource>,
}

/// Where the identity of a session or request came from, in the order the sidecar tries them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum IdentitySource {
    /// An ID token the client sent (the PostgreSQL password, the Kubernetes bearer token).
    ClientToken,
    /// The token in the file a policy's `identity.tokenFile` names (the client sent none).
    TokenFile,
    /// No token: the workload (the pod's service account) alone.
    Workload,
}

/// A session ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SessionEnd {
    /// Statements decided during the session.
    pub statements: u64,
    /// Why the session ended (`terminate`, `client closed`, an error message).
    pub reason: String,
}

/// How a statement reached the sidecar.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Protocol {
    /// A simple Query message (possibly one of several statements in it).
    Simple,
    /// A Parse message of the extended query protocol.
    Parse,
    /// An Execute of a previously parsed statement (extended query protocol).
    Execute,
    /// A fast-path FunctionCall message.
    FunctionCall,
}

/// The decision taken for an operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Decision {
    /// Forwarded; no guardrail matched.
    Allow,
    /// Forwarded and flagged by an `audit` guardrail (or an unanalysable statement under
    /// `onUnanalyzable: audit`).
    Audit,
    /// Refused by a guardrail, by the unanalysable-statement rule, or because the audit
    /// spool could not record it.
    Deny,
    /// Held for approval: the record's `accessRequest` names the request, and its `reason`
    /// says how it was decided (a refused statement carries the refusal).
    RequireApproval,
}

/// The rule that made a decision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RuleRef {
    /// Policy (GatewayPolicy name), or `builtin` for the sidecar's own rules.
    pub policy: String,
    /// Guardrail name, or the built-in rule name (for example `unanalyzable`).
    pub rule: String,
}

/// A statement and the decision on it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatementRecord {
    /// Identifier of the statement in its session (pairs it with its completion).
    pub statement_id: u64,
    /// How the statement arrived.
    pub protocol: Protocol,
    /// The statement with literals replaced by `?`; `None` when it could not be parsed (the
    /// raw text is never recorded, it may hold personal data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    /// Hex SHA-256 (first 16 characters) of the normalised statement: equal for statements
    /// that differ only in literals.
    pub fingerprint: String,
    /// Statement kinds found (in camelCase, as in GatewayPolicy `statementKinds`).
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Tables touched, as `schema.table`.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Functions called, lower-case.
    #[serde(default)]
    pub functions: Vec<String>,
    /// The decision.
    pub decision: Decision,
    /// The rule that made the decision; `None` when no rule matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
    /// Why, in words (the message the client saw for a refusal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// GDPR lawful basis of the governing policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lawful_basis: Option<String>,
    /// Purpose of the governing policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The AccessRequest whose approval let the statement run (decision `requireApproval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_request: Option<String>,
}

/// The outcome of a forwarded statement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CompletionRecord {
    /// The statement this completes.
    pub statement_id: u64,
    /// Rows returned or affected (from the command tag, or the DataRows counted).
    pub rows: u64,
    /// Bytes of result messages sent to the client.
    pub bytes: u64,
    /// Time from forwarding to completion, in microseconds.
    pub duration_micros: u64,
    /// The command tag (`SELECT 3`, `UPDATE 1`), when the statement succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_tag: Option<String>,
    /// The error the statement ended with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StatementError>,
    /// Result columns the sidecar masked: which rule, why, and how many values. Never holds a
    /// value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<MaskedColumn>,
}

/// One result column masked by one rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MaskedColumn {
    /// Position of the column in the result (0-based).
    pub column: u32,
    /// Name of the column as the result names it.
    pub name: String,
    /// The rule that masked it: a masking rule of a policy, or `builtin/unproven-lineage`
    /// when the column's lineage could not be proven free of masked sources.
    pub rule: RuleRef,
    /// Why: the masked sources the column is computed from, the detector that matched, or
    /// what the lineage analysis could not follow.
    pub reason: String,
    /// Strategy applied (`redact`, `null`, `partial`, `hash`).
    pub strategy: String,
    /// Values masked.
    pub values: u64,
    /// Values sent as NULL because the column's type has no valid masked form (or the type
    /// is unknown), although the strategy asked for a value.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nulled_for_type: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// An error a statement ended with.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StatementError {
    /// SQLSTATE code.
    pub sqlstate: String,
    /// Primary message.
    pub message: String,
}
