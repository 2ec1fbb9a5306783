//! GatewayPolicy: who may do what to which protected resources, what is masked, and what
//! waits for a human.

// kube's `printcolumn(...)` attributes repeat the same keys by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which resources and subjects a policy governs, and the masking, guardrail and approval
/// rules that apply to them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "GatewayPolicy",
    namespaced,
    cel,
    derive = "PartialEq",
    status = "GatewayPolicyStatus",
    shortname = "gp",
    category = "portcullis",
    doc = "Masking, guardrail and approval rules for the protected resources and subjects it selects.",
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Resources",
        type_ = "integer",
        json_path = ".status.selectedResources"
    ),
    printcolumn(name = "Config", type_ = "string", json_path = ".status.configHash"),
    printcolumn(
        name = "Basis",
        type_ = "string",
        json_path = ".spec.lawfulBasis",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.guardrails) || !self.guardrails.exists(g, g.action == 'requireApproval') || has(self.approval)")
    .message("a guardrail with action requireApproval needs spec.approval: set approval.approverGroups (or approverUsers) and approval.timeout"))]
#[x_kube(validation = Rule::new("!has(self.exec) || !has(self.exec.default) || self.exec.default != 'requireApproval' || has(self.approval)")
    .message("exec.default requireApproval needs spec.approval: set approval.approverGroups (or approverUsers) and approval.timeout"))]
#[serde(rename_all = "camelCase")]
pub struct GatewayPolicySpec {
    /// Selects the ProtectedResources (in the policy's namespace) this policy governs, by
    /// label. Omitted or empty: every ProtectedResource of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_selector: Option<LabelSelector>,

    /// The identities this policy applies to. Omitted or empty: every subject in the
    /// namespace. A subject that no policy of a resource names gets all of the resource's
    /// policies (fail closed), never none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub subjects: Vec<Subject>,

    /// Masking rules applied to query results before they reach the agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub masking: Vec<MaskingRule>,

    /// Guardrails checked against every statement or exec command before it is forwarded.
    /// The first matching guardrail, in order, decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub guardrails: Vec<Guardrail>,

    /// Who approves operations that a guardrail holds with `requireApproval`, and for how
    /// long an approval holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalSettings>,

    /// GDPR Article 6 lawful basis of the processing this policy governs. Recorded with
    /// every audited operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lawful_basis: Option<LawfulBasis>,

    /// Purpose of the processing, in words an auditor understands (for example "customer
    /// support ticket triage"). Recorded with every audited operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub purpose: Option<String>,

    /// What to do with a statement the sidecar cannot analyse: `deny` (default) or `audit`
    /// (forward it and record it as unanalysed).
    #[serde(default)]
    pub on_unanalyzable: UnanalyzableAction,

    /// Kubernetes API requests that are refused unless the policy allows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesSettings>,

    /// The exec allow-list: the commands that may run, and what happens to every other
    /// command (allow-list style). Omitted: only the guardrails judge exec commands
    /// (denylist style).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<crate::exec_policy::ExecSettings>,

    /// What the sidecar does while the audit service is unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_audit_unavailable: Option<AuditUnavailable>,

    /// How callers prove who they are beyond the pod's service account: the OIDC issuers
    /// whose ID tokens (of a person, or of a CI pipeline run) the sidecar accepts as the
    /// PostgreSQL password, and whether a token is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentitySettings>,

    /// Which functions statements may call. Omitted: `mode: any`. Code inside functions
    /// runs on the server, where the sidecar cannot see it: `allowList` keeps statements to
    /// the built-in functions the sidecar knows and the functions named here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub functions: Option<FunctionSettings>,
}

/// Which functions a policy lets statements call.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSettings {
    /// `any` (default): every function may be called (guardrails with `functions` still
    /// apply). `allowList`: a statement may call only the built-in functions the sidecar
    /// knows (text, number, date, JSON, aggregate, window and catalog functions, sequences,
    /// `set_config`, advisory locks) and the functions listed in `allow`; any other function
    /// or procedure call and every DO block is refused.
    #[serde(default)]
    pub mode: FunctionMode,
    /// Functions that may be called in `allowList` mode: `name` (in any schema) or
    /// `schema.name`. A trailing `*` matches a prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 127)))]
    pub allow: Vec<String>,
}

/// How a policy treats function calls.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub enum FunctionMode {
    /// Any function may be called.
    #[default]
    Any,
    /// Only known built-ins and the listed functions may be called.
    AllowList,
}

/// OIDC identity settings of a policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new("!has(self.requireOidc) || !self.requireOidc || (has(self.issuers) && self.issuers.size() > 0)")
    .message("identity.requireOidc needs at least one entry in identity.issuers"))]
#[serde(rename_all = "camelCase")]
pub struct IdentitySettings {
    /// OIDC issuers whose ID tokens are accepted (Okta, Azure AD, Google, Keycloak, the
    /// GitHub Actions or GitLab CI token issuer). A client presents the token as the
    /// PostgreSQL password; the sidecar validates it against the issuer's published keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub issuers: Vec<OidcIssuer>,

    /// Refuse connections to the selected resources that do not present a valid ID token of
    /// one of this policy's `issuers` (tokens of issuers only other policies list do not
    /// count). When the policy names User, Group or Pipeline subjects, the token's identity
    /// must also match one of them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_oidc: bool,

    /// File (path inside the sidecar container) holding an ID token, for CI jobs that mount
    /// their pipeline token instead of sending it as the password. Read at every connection
    /// whose client sends no token (a password that is not a JWT, for example `-`): the
    /// client's own token always comes first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')")
        .message("identity.tokenFile must be an absolute path"))]
    pub token_file: Option<String>,
}

/// An OIDC issuer whose ID tokens are accepted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OidcIssuer {
    /// Issuer URL, exactly as in the tokens' `iss` claim (for example
    /// `https://token.actions.githubusercontent.com`). The sidecar reads
    /// `<url>/.well-known/openid-configuration` and the `jwks_uri` it names. `https://` is
    /// required except on loopback.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.matches('^http://(127[.]0[.]0[.]1|localhost|\\\\[::1\\\\])(:[0-9]+)?(/.*)?$')")
        .message("issuer url must start with https:// (http:// is allowed on loopback only)"))]
    pub url: String,

    /// Accepted audiences: the token's `aud` must contain one of them.
    #[schemars(length(max = 16), inner(length(max = 512)))]
    #[x_kube(validation = Rule::new("self.size() > 0")
        .message("an issuer needs at least one audience: the aud value its tokens carry for this database"))]
    pub audiences: Vec<String>,

    /// Whether tokens of this issuer name a `User` (a person or machine user, default) or a
    /// `Pipeline` run (GitHub Actions, GitLab CI).
    #[serde(default)]
    pub principal: PrincipalKind,

    /// How the user name and groups are read from a token, as in the Kubernetes API server's
    /// structured authentication configuration. Defaults: user name from `sub`, groups from
    /// `groups`, no prefixes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_mappings: Option<ClaimMappings>,

    /// Rules every token of this issuer must satisfy (a claim with a required value, or a CEL
    /// expression over `claims`), as in the Kubernetes API server's structured authentication
    /// configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub claim_validation_rules: Vec<ClaimValidationRule>,

    /// Signature algorithms accepted. Defaults to RS256 and ES256. Symmetric algorithms and
    /// `none` are never accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub algorithms: Vec<SigningAlgorithm>,

    /// The one leeway of this issuer's tokens: clock skew tolerated on `exp`, `nbf` and
    /// `iat`, and after `exp` before an open session ends, in seconds. Defaults to 30; at
    /// most 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 300").message("clockSkewSeconds must be between 0 and 300"))]
    pub clock_skew_seconds: Option<i64>,
}

/// How the user name and groups of a principal are read from its token.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClaimMappings {
    /// The user name matched by `User` subjects. Defaults to the `sub` claim without a
    /// prefix. The `email` claim counts only in tokens whose `email_verified` is `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<PrefixedClaim>,
    /// The groups matched by `Group` subjects. Defaults to the `groups` claim without a
    /// prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<PrefixedClaim>,
}

/// A claim, or a CEL expression over `claims`, with a prefix put before every value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new("has(self.claim) != has(self.expression)")
    .message("a claim mapping needs exactly one of claim and expression"))]
#[x_kube(validation = Rule::new("!has(self.prefix) || has(self.claim)")
    .message("prefix applies to claim only (an expression builds the whole value)"))]
#[serde(rename_all = "camelCase")]
pub struct PrefixedClaim {
    /// Name of the claim (a string; for groups, a string or a list of strings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub claim: Option<String>,
    /// Put before every value read from `claim` (for example `staff:`), so that names from
    /// different issuers cannot coincide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub prefix: Option<String>,
    /// CEL expression over `claims` giving the value (a string; for groups, a string or a
    /// list of strings), for example `claims.preferred_username + "@staff"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub expression: Option<String>,
}

/// A rule every token of an issuer must satisfy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("has(self.claim) != has(self.expression)")
    .message("a claim validation rule needs exactly one of claim (with requiredValue) and expression"))]
#[x_kube(validation = Rule::new("has(self.claim) == has(self.requiredValue)")
    .message("requiredValue goes with claim, and claim needs requiredValue"))]
#[x_kube(validation = Rule::new("!has(self.message) || has(self.expression)")
    .message("message goes with expression (a claim rule names the claim itself)"))]
#[serde(rename_all = "camelCase")]
pub struct ClaimValidationRule {
    /// A claim that must be present with `requiredValue` (a string, or a list that holds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub claim: Option<String>,
    /// The value `claim` must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub required_value: Option<String>,
    /// CEL expression over `claims` that must be `true`, for example
    /// `claims.hd == "example.com"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub expression: Option<String>,
    /// Shown in the refusal when `expression` is not `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub message: Option<String>,
}

/// What an issuer's tokens identify.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PrincipalKind {
    /// A person or machine user.
    #[default]
    User,
    /// A CI pipeline run.
    Pipeline,
}

/// Asymmetric JWS algorithms accepted for ID tokens.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl SigningAlgorithm {
    /// The name used in JWS headers.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::RS256 => "RS256",
            SigningAlgorithm::RS384 => "RS384",
            SigningAlgorithm::RS512 => "RS512",
            SigningAlgorithm::PS256 => "PS256",
            SigningAlgorithm::PS384 => "PS384",
            SigningAlgorithm::PS512 => "PS512",
            SigningAlgorithm::ES256 => "ES256",
            SigningAlgorithm::ES384 => "ES384",
            SigningAlgorithm::EdDSA => "EdDSA",
        }
    }
}

/// An identity a policy applies to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.kind == 'Pipeline' || has(self.name)")
    .message("a subject of kind ServiceAccount, User or Group needs a name"))]
#[x_kube(validation = Rule::new("self.kind != 'Pipeline' || (has(self.claims) && self.claims.size() > 0)")
    .message("a Pipeline subject needs claims to match, for example repository: org/repo and ref: refs/heads/main"))]
#[x_kube(validation = Rule::new("self.kind == 'ServiceAccount' || !has(self.namespace)")
    .message("subject namespace applies to kind ServiceAccount only"))]
#[x_kube(validation = Rule::new("self.kind != 'ServiceAccount' || !has(self.issuer)")
    .message("subject issuer applies to kinds User, Group and Pipeline (OIDC principals) only"))]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// `ServiceAccount` (the agent pod's workload identity), `User` (the user name an issuer's
    /// `claimMappings` give), `Group` (its groups), or `Pipeline` (CI token claims). User,
    /// Group and Pipeline subjects match tokens of this policy's own issuers only.
    pub kind: SubjectKind,
    /// Name of the service account, user or group. `*` matches any name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub name: Option<String>,
    /// Namespace of a ServiceAccount subject. Defaults to the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
    /// For User, Group and Pipeline subjects: the issuer (one of `identity.issuers[].url`)
    /// whose tokens name this user, group or pipeline. Omitted: any issuer of this policy.
    /// Tokens of issuers this policy does not list never match its subjects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub issuer: Option<String>,
    /// Claims a Pipeline token must carry, each matched exactly (for example
    /// `repository: acme/agents`, `ref: refs/heads/main`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
}

/// Kind of subject.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubjectKind {
    /// A Kubernetes service account (the pod's workload identity).
    ServiceAccount,
    /// A person or machine user identified by an OIDC token.
    User,
    /// A group from the OIDC token's group claim.
    Group,
    /// A CI pipeline run identified by its OIDC token's claims.
    Pipeline,
}

/// A masking rule: which data is personal, and how it is masked.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("(has(self.columns) && self.columns.size() > 0) || has(self.detector)")
    .message("a masking rule must name at least one column (schema.table.column or table.column) or a detector (email, paymentCard, iban, phone, regex)"))]
#[x_kube(validation = Rule::new("has(self.detector) && self.detector == 'regex' ? has(self.pattern) : !has(self.pattern)")
    .message("pattern is required with detector regex, and only allowed with it"))]
#[x_kube(validation = Rule::new("!has(self.predicates) || self.predicates == 'allow' || (has(self.columns) && self.columns.size() > 0)")
    .message("predicates applies to the columns of a rule: a rule with only a detector cannot restrict predicates"))]
#[serde(rename_all = "camelCase")]
pub struct MaskingRule {
    /// Name of the rule, unique in the policy; recorded in audit records of masked values.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("rule names must be lower-case letters, digits and '-', starting and ending with a letter or digit"))]
    #[schemars(length(max = 63))]
    pub name: String,

    /// Columns holding personal data, as `schema.table.column` or `table.column` (schema
    /// `public`). Every result column whose value may come from one of them is masked,
    /// whatever the query.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 190)))]
    #[x_kube(validation = Rule::new("self.all(c, c.matches('^([A-Za-z_][A-Za-z0-9_$]*[.]){1,2}[A-Za-z_][A-Za-z0-9_$]*$'))")
        .message("columns must be written table.column or schema.table.column, for example public.customers.email"))]
    pub columns: Vec<ColumnName>,

    /// A value detector: `email`, `paymentCard` (Luhn-checked), `iban` (checksum-verified),
    /// `phone`, or `regex` (with `pattern`). Without `columns` it masks what it finds in every
    /// text value of every result, as sent. With `columns` those columns are free text: a plain
    /// reference to one is returned with the detector applied, and any expression over it is
    /// redacted (a detector cannot see a value the query transformed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<Detector>,

    /// Regular expression for the `regex` detector (RE2-like syntax, no look-around).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub pattern: Option<String>,

    /// How a value is masked: `redact` (fixed text), `null`, `partial` (keep the domain of an
    /// email or the last four digits of a number), or `hash` (keyed HMAC-SHA-256, so masked
    /// values still join and group).
    #[serde(default)]
    pub strategy: MaskingStrategy,

    /// Subjects that see this data in clear (for example the `dpo` group).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub exempt: Vec<Subject>,

    /// Where statements may use the rule's columns outside the select list: `allow`
    /// (default: anywhere; each query can still answer a question about the masked values),
    /// `equality` (only `=` and `IN` against parameters or literals, `IS [NOT] NULL`, and
    /// join equality between column references; no function over the column, no ordering,
    /// grouping, window, range, pattern, `CASE` condition or `HAVING`), or `deny` (nowhere but
    /// the select list). A statement that uses a column otherwise is refused.
    #[serde(default, skip_serializing_if = "PredicateMode::is_allow")]
    pub predicates: PredicateMode,
}

/// Where a masking rule's columns may be used outside the select list.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub enum PredicateMode {
    /// Anywhere (filters, ordering, grouping, joins).
    #[default]
    Allow,
    /// Only in equality with a parameter or a literal, or in a join equality.
    Equality,
    /// Only in the select list.
    Deny,
}

impl PredicateMode {
    /// Whether this is the default mode.
    pub fn is_allow(&self) -> bool {
        *self == PredicateMode::Allow
    }

    /// The mode as written in a policy.
    pub fn as_str(&self) -> &'static str {
        match self {
            PredicateMode::Allow => "allow",
            PredicateMode::Equality => "equality",
            PredicateMode::Deny => "deny",
        }
    }
}

/// A column written `table.column` or `schema.table.column`.
pub type ColumnName = String;

/// Built-in value detectors.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum Detector {
    /// E-mail addresses.
    Email,
    /// Payment card numbers (13 to 19 digits passing the Luhn check).
    PaymentCard,
    /// International bank account numbers (ISO 13616 checksum verified).
    Iban,
    /// Telephone numbers in international or common national formats.
    Phone,
    /// A user-defined regular expression (`pattern`).
    Regex,
}

/// How a masked value is replaced.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub enum MaskingStrategy {
    /// Replace the value with a fixed marker of the column's type.
    #[default]
    Redact,
    /// Replace the value with NULL.
    Null,
    /// Keep a non-identifying part: the domain of an e-mail, the last four digits of a number.
    Partial,
    /// Keyed HMAC-SHA-256 of the value (key from a Secret), so equal values stay equal.
    Hash,
}

/// A guardrail: a match on the operation and the action taken when it matches.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Guardrail {
    /// Name of the guardrail, unique in the policy; named in denials, approval requests and
    /// audit records.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("guardrail names must be lower-case letters, digits and '-', starting and ending with a letter or digit"))]
    #[schemars(length(max = 63))]
    pub name: String,

    /// What the guardrail matches. All criteria given must hold.
    pub r#match: GuardrailMatch,

    /// `deny` (refuse with an error naming this guardrail), `requireApproval` (hold for a
    /// human decision, see `spec.approval`), or `audit` (allow and record prominently).
    pub action: GuardrailAction,

    /// Message shown to the client with a denial or approval request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub message: Option<String>,

    /// Subjects this guardrail does not apply to (for example the pipeline of the `main`
    /// branch, for a guardrail that refuses writes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub exempt: Vec<Subject>,

    /// What an approval under this guardrail covers: `values` (default: exactly the statement
    /// the approver saw, with its values) or `shape` (the statement with any values; the
    /// approver is shown placeholders and that the grant covers any values). Statements with
    /// code bodies (DO, CREATE FUNCTION, CALL) are always granted by value.
    #[serde(
        default,
        skip_serializing_if = "crate::access_request::GrantCovers::is_values"
    )]
    pub grant_covers: crate::access_request::GrantCovers,
}

/// Criteria of a guardrail. Every criterion given must hold for the guardrail to match.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new("(has(self.statementKinds) && self.statementKinds.size() > 0) || (has(self.tables) && self.tables.size() > 0) || (has(self.missingWhere) && self.missingWhere) || (has(self.functions) && self.functions.size() > 0) || (has(self.execCommands) && self.execCommands.size() > 0) || has(self.rowsOver)")
    .message("a guardrail match needs at least one criterion: statementKinds, tables, missingWhere, functions, execCommands or rowsOver"))]
#[x_kube(validation = Rule::new("(has(self.execCommands) && self.execCommands.size() > 0) || ((!has(self.execNamespaces) || self.execNamespaces.size() == 0) && (!has(self.execPodLabels) || self.execPodLabels.size() == 0) && (!has(self.execContainers) || self.execContainers.size() == 0))")
    .message("execNamespaces, execPodLabels and execContainers narrow execCommands: add execCommands (for example [\"*\"])"))]
#[serde(rename_all = "camelCase")]
pub struct GuardrailMatch {
    /// Statement kinds, for example `delete`, `update`, `ddl`, `copy`, `doBlock`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub statement_kinds: Vec<StatementKind>,

    /// Tables touched (read or written), as `table` or `schema.table`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 127)))]
    #[x_kube(validation = Rule::new("self.all(t, t.matches('^([A-Za-z_][A-Za-z0-9_$]*[.])?[A-Za-z_][A-Za-z0-9_$]*$'))")
        .message("tables must be written table or schema.table, for example public.customers"))]
    pub tables: Vec<String>,

    /// Matches writes that are not bounded: `UPDATE`, `DELETE`, upsert and `MERGE` (wherever
    /// they stand: CTEs, `PREPARE`, `EXPLAIN ANALYZE`) unless a top-level `AND` operand of the
    /// condition compares a user column of the written table with a value the statement gives;
    /// `TRUNCATE` and table rewrites (`ALTER COLUMN ... TYPE ... USING`) always. System columns
    /// (`tableoid`, `ctid`, `xmin`...) never bound a write.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub missing_where: bool,

    /// Functions called, by name in any schema (for example `pg_read_file`, `dblink*`) or as
    /// `schema.name` (also matching unqualified calls the session's search_path may resolve
    /// to that schema). A trailing `*` matches a prefix of the name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 127)))]
    pub functions: Vec<String>,

    /// Exec commands (Kubernetes resources), as glob patterns on the command line, for
    /// example `rm *` or `psql*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 1024)))]
    pub exec_commands: Vec<String>,

    /// With `execCommands`: namespaces of the target pod (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 63)))]
    pub exec_namespaces: Vec<String>,

    /// With `execCommands`: labels the target pod must carry (all of them).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(length(max = 16))]
    pub exec_pod_labels: std::collections::BTreeMap<String, String>,

    /// With `execCommands`: target container names (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 63)))]
    pub exec_containers: Vec<String>,

    /// Matches results of more than this many rows (bulk export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("rowsOver must be a positive number of rows"))]
    pub rows_over: Option<i64>,
}

/// Kinds of SQL statements a guardrail can match.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum StatementKind {
    /// `SELECT`, `VALUES`, `TABLE`, `SHOW`, `EXPLAIN` without ANALYZE.
    Select,
    /// `INSERT`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `MERGE`.
    Merge,
    /// `TRUNCATE`.
    Truncate,
    /// Schema changes: `CREATE`, `ALTER`, `DROP`, `COMMENT`.
    Ddl,
    /// Privileges: `GRANT`, `REVOKE`, role management.
    Dcl,
    /// `COPY` in either direction.
    Copy,
    /// Anonymous code blocks (`DO`).
    DoBlock,
    /// `SET ROLE` and `SET SESSION AUTHORIZATION`.
    SetRole,
    /// `CALL` of a procedure.
    Call,
    /// Anything else the parser recognises.
    Other,
}

/// Action of a guardrail.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum GuardrailAction {
    /// Refuse the operation; the client sees an error naming the guardrail.
    Deny,
    /// Hold the operation until an approver decides (see `spec.approval`).
    RequireApproval,
    /// Allow the operation and flag it in the audit log.
    Audit,
}

/// Approval settings of a policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.approverGroups) && self.approverGroups.size() > 0) || (has(self.approverUsers) && self.approverUsers.size() > 0)")
    .message("approval needs at least one approver: set approverGroups or approverUsers"))]
#[serde(rename_all = "camelCase")]
pub struct ApprovalSettings {
    /// Groups (Kubernetes user groups, as the API server authenticates them) whose members may
    /// approve or deny.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 253)))]
    pub approver_groups: Vec<String>,

    /// Individual users (Kubernetes user names) who may approve or deny.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 253)))]
    pub approver_users: Vec<String>,

    /// How long the operation waits for a decision before it fails with "timed out"
    /// (Go duration, for example `5m`). Defaults to `15m`; at most `24h`.
    #[serde(default = "default_approval_timeout")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$') && duration(self) >= duration('1s') && duration(self) <= duration('24h')")
        .message("approval.timeout must be a duration between 1s and 24h, for example 15m"))]
    pub timeout: Duration,

    /// How long an approval holds for later identical operations (Go duration). Defaults to
    /// `1h`; at most `168h`.
    #[serde(default = "default_grant_duration")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$') && duration(self) >= duration('0s') && duration(self) <= duration('168h')")
        .message("approval.grantDuration must be a duration between 0s and 168h, for example 1h"))]
    pub grant_duration: Duration,

    /// What an approval covers: `statement` (the same statement fingerprint) or `session`
    /// (everything the guardrail matches in the requesting session).
    #[serde(default)]
    pub grant_scope: GrantScope,

    /// At most this many undecided requests per requester (default 5; each session waits on
    /// one at a time); an operation that is already waiting reuses its request.
    #[serde(default = "default_max_pending")]
    #[schemars(range(min = 1, max = 100))]
    pub max_pending: u32,

    /// How many distinct approvers must approve an operation before it runs (default 1, at
    /// most 5). None of them may be the requester; a single denial denies. Each approver runs
    /// `kubectl portcullis approve`: admission records every approval in the request's
    /// `spec.approvals`, stamped with the authenticated user, and the last one is the
    /// decision, accepted only when the approvals before it come from other approvers.
    #[serde(
        default = "default_required_approvals",
        skip_serializing_if = "is_one_approval"
    )]
    #[schemars(range(min = 1, max = 5))]
    pub required_approvals: u32,

    /// Groups that own the workloads this policy governs (for example the team that runs an
    /// agent). Separation of duties: their members may not approve these workloads'
    /// requests, even when they are approvers too; they may still deny them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 253)))]
    pub owner_groups: Vec<String>,

    /// Optional URL that receives a Slack-compatible JSON message for each new request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')")
        .message("approval.notifyUrl must be an http:// or https:// URL"))]
    #[schemars(length(max = 2048))]
    pub notify_url: Option<String>,
}

fn default_approval_timeout() -> Duration {
    Duration::from(std::time::Duration::from_secs(15 * 60))
}

/// Distinct approvers an operation needs when a policy does not say.
pub const DEFAULT_REQUIRED_APPROVALS: u32 = 1;

fn default_required_approvals() -> u32 {
    DEFAULT_REQUIRED_APPROVALS
}

pub(crate) fn is_one_approval(n: &u32) -> bool {
    *n == DEFAULT_REQUIRED_APPROVALS
}

/// Undecided requests per requester when a policy does not say.
pub const DEFAULT_MAX_PENDING: u32 = 5;

fn default_max_pending() -> u32 {
    DEFAULT_MAX_PENDING
}

fn default_grant_duration() -> Duration {
    Duration::from(std::time::Duration::from_secs(60 * 60))
}

/// What an approval covers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub enum GrantScope {
    /// The operation shown (with its values, or its shape under `grantCovers: shape`).
    #[default]
    Statement,
    /// Every operation the named guardrail matches in the requesting session.
    Session,
}

/// GDPR Article 6(1) lawful bases.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum LawfulBasis {
    /// Art. 6(1)(a).
    Consent,
    /// Art. 6(1)(b).
    Contract,
    /// Art. 6(1)(c).
    LegalObligation,
    /// Art. 6(1)(d).
    VitalInterests,
    /// Art. 6(1)(e).
    PublicTask,
    /// Art. 6(1)(f).
    LegitimateInterests,
}

/// What to do with a statement that cannot be analysed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub enum UnanalyzableAction {
    /// Refuse it (fail closed).
    #[default]
    Deny,
    /// Forward it and record it as unanalysed.
    Audit,
}

/// Behaviour while the audit service is unreachable.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuditUnavailable {
    /// `deny` new operations once the local spool holds more than `spoolLimitBytes`
    /// (default), or `continue` and keep spooling until the disk is full.
    #[serde(default)]
    pub action: AuditUnavailableAction,
    /// Size of the local spool past which `deny` applies. Defaults to 64 MiB.
    #[serde(default = "default_spool_limit")]
    #[x_kube(validation = Rule::new("self >= 1048576").message("spoolLimitBytes must be at least 1048576 (1 MiB)"))]
    pub spool_limit_bytes: i64,
}

fn default_spool_limit() -> i64 {
    64 * 1024 * 1024
}

/// Action while the audit service is unreachable.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub enum AuditUnavailableAction {
    /// Deny new operations past the spool bound (fail closed).
    #[default]
    Deny,
    /// Keep serving and keep spooling.
    Continue,
}

/// Observed state of a GatewayPolicy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayPolicyStatus {
    /// `Accepted` and `Compiled`, with a readable reason on every rejection.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of ProtectedResources the policy selects.
    #[serde(default)]
    pub selected_resources: i32,
    /// Content hash of the compiled sidecar configuration that carries this policy; pods
    /// show the hash they run in an annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
}

/// How the sidecar's Kubernetes API proxy treats requests that reach past exec guardrails.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesSettings {
    /// Reads of `secrets` (get, list, watch): `deny` (default) or `audit`.
    #[serde(default)]
    pub secret_reads: KubernetesAccess,
    /// `pods/portforward` and the `proxy` subresources: `deny` (default) or `audit`.
    #[serde(default)]
    pub port_forward: KubernetesAccess,
    /// Apply the masking detectors to the live output of exec sessions too (the recording
    /// is always masked). Matches are replaced in place by `*` of the same length.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mask_live_output: bool,
    /// What happens when an exec session's recording reaches the audit service's size limit
    /// for one file (64 MiB): `rollOver` (default) records on in a next part, each part
    /// hashed, uploaded and linked from its own record; `endSession` ends the session with a
    /// message to the client and a marker in the recording.
    #[serde(default)]
    pub recording_limit: RecordingLimit,
}

/// What happens at the recording size limit.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum RecordingLimit {
    /// The recording goes on in a next part.
    #[default]
    RollOver,
    /// The session ends.
    EndSession,
}

/// Whether a kind of Kubernetes request is refused or allowed and recorded.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum KubernetesAccess {
    /// Refused with a 403 naming the built-in rule.
    #[default]
    Deny,
    /// Forwarded and recorded.
    Audit,
}
