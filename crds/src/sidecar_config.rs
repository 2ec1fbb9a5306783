//! The compiled sidecar configuration: everything a sidecar needs to enforce the policies of
//! its namespace without talking to the API server.
//!
//! The operator compiles the GatewayPolicies and ProtectedResources of a namespace into one
//! [`SidecarConfig`], stores it in a ConfigMap that the sidecar mounts and hot-reloads, and
//! stamps its content hash on the pods that run it. In standalone mode the same document is
//! written by hand (`portcullis-sidecar --config FILE`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::gateway_policy::{
    AuditUnavailableAction, ClaimValidationRule, Detector, FunctionSettings, GatewayPolicySpec,
    GrantScope, GuardrailAction, IdentitySettings, KubernetesSettings, LawfulBasis,
    MaskingStrategy, PredicateMode, PrincipalKind, SigningAlgorithm, StatementKind, Subject,
    SubjectKind, UnanalyzableAction,
};
use crate::protected_resource::{ResourceType, TlsMode};

/// Format identifier of the document, checked by the sidecar on load.
pub const SIDECAR_CONFIG_API_VERSION: &str = "portcullis.dev/sidecar-config/v1alpha1";

/// The whole configuration of one sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarConfig {
    /// Always [`SIDECAR_CONFIG_API_VERSION`].
    pub api_version: String,
    /// Namespace whose policies this document carries.
    pub namespace: String,
    /// Resources the sidecar fronts, each on its own local port.
    #[serde(default)]
    pub resources: Vec<ResourceConfig>,
    /// Compiled policies, referenced by name from the resources.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// Audit spool and shipping.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Masking settings shared by every policy (hash key, catalog refresh).
    #[serde(default)]
    pub masking: MaskingConfig,
    /// Address of the sidecar's own `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// Secrets only the sidecar may read (the resources' credentials; the serving key and the
    /// masking key are always included): the Kubernetes API proxy refuses pod, pod-template
    /// and ephemeral-container writes that refer to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protected_secrets: Vec<String>,
}

fn default_admin_listen() -> String {
    "127.0.0.1:15090".to_owned()
}

/// One protected resource as the sidecar serves it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceConfig {
    /// Name of the ProtectedResource.
    pub name: String,
    /// Kind of target.
    pub r#type: ResourceType,
    /// Local address the sidecar listens on (host part; `127.0.0.1` in pods).
    #[serde(default = "default_listen_address")]
    pub listen_address: String,
    /// Local port the sidecar listens on.
    pub listen_port: u16,
    /// The upstream server. For `kubernetes`, `None` means the in-cluster API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamConfig>,
    /// Files holding the upstream credential (the Secret mount, readable by the sidecar only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialFiles>,
    /// Names of the policies that govern this resource, in order of precedence.
    #[serde(default)]
    pub policies: Vec<String>,
    /// `kubernetes` only: the local serving certificate of the API proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_tls: Option<ServerTlsFiles>,
    /// `kubernetes` only: the pod's service-account token the proxy forwards with (read
    /// afresh for every request because the kubelet rotates it). Default: the in-cluster
    /// token path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Accept clients from addresses other than loopback (a standalone sidecar listening on
    /// a network address). Off by default: such clients are refused, since they would act
    /// with the workload's identity.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_remote_clients: bool,
}

/// PEM files of a local TLS server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsFiles {
    /// Certificate chain.
    pub cert_file: PathBuf,
    /// Private key.
    pub key_file: PathBuf,
}

fn default_listen_address() -> String {
    "127.0.0.1".to_owned()
}

/// Upstream server of a resource.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database to connect to; `None` keeps the one the client asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// TLS mode.
    pub tls_mode: TlsMode,
    /// PEM CA bundle for `verify-full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Name to verify in the server certificate, when it differs from `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// Files holding a credential.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialFiles {
    /// File with the user name.
    pub username_file: PathBuf,
    /// File with the password.
    pub password_file: PathBuf,
}

/// Audit spool and shipping settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditConfig {
    /// Directory of the durable local spool.
    pub spool_dir: PathBuf,
    /// Base URL of the audit service (`https://host:port`); the shipper posts to
    /// `/v1/records` below it. `None` keeps records in the spool only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_url: Option<String>,
    /// PEM CA bundle that verifies the audit service's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The pod's projected service-account token for the audience `portcullis-audit`; read
    /// afresh for every batch because the kubelet rotates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            spool_dir: PathBuf::from("/var/run/portcullis/spool"),
            service_url: None,
            ca_file: None,
            token_file: None,
        }
    }
}

/// Settings of result masking that do not belong to one policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaskingConfig {
    /// File holding the key of the `hash` strategy (a Secret mount readable by the sidecar
    /// only). Without a key, `hash` rules mask like `redact`: an unkeyed hash of a low-entropy
    /// value (a phone number, an SSN) could be reversed by trying every value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key_file: Option<PathBuf>,
    /// Seconds between re-reads of the upstream catalog (masked columns to table OIDs and
    /// attribute numbers, view definitions). The catalog is also re-read after DDL.
    #[serde(default = "default_catalog_refresh")]
    pub catalog_refresh_seconds: u64,
}

fn default_catalog_refresh() -> u64 {
    60
}

impl Default for MaskingConfig {
    fn default() -> Self {
        Self {
            hash_key_file: None,
            catalog_refresh_seconds: default_catalog_refresh(),
        }
    }
}

/// A GatewayPolicy compiled for the sidecar.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyConfig {
    /// Name of the GatewayPolicy.
    pub name: String,
    /// `metadata.generation` compiled.
    #[serde(default)]
    pub generation: i64,
    /// Subjects the policy applies to; empty means everyone.
    #[serde(default)]
    pub subjects: Vec<Subject>,
    /// Masking rules.
    #[serde(default)]
    pub masking: Vec<MaskingRuleConfig>,
    /// Guardrails, in order.
    #[serde(default)]
    pub guardrails: Vec<GuardrailConfig>,
    /// Approval settings, when a guardrail requires approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalConfig>,
    /// GDPR lawful basis recorded with each operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lawful_basis: Option<LawfulBasis>,
    /// Purpose recorded with each operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// What to do with statements that cannot be analysed.
    #[serde(default)]
    pub on_unanalyzable: UnanalyzableAction,
    /// What to do while the audit service is unreachable.
    #[serde(default)]
    pub on_audit_unavailable: AuditUnavailableAction,
    /// Spool size past which `onAuditUnavailable: deny` applies.
    #[serde(default = "default_spool_limit")]
    pub spool_limit_bytes: u64,
    /// OIDC identity settings, when the policy accepts or requires ID tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityConfig>,
    /// Kubernetes API requests beyond exec guardrails (secrets reads, port forwarding, live
    /// output masking).
    #[serde(default, skip_serializing_if = "is_default")]
    pub kubernetes: KubernetesSettings,
    /// The exec allow-list (allow-list style), when the policy has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<crate::exec_policy::ExecSettings>,
    /// Which functions statements may call (allow-list entries lower-cased).
    #[serde(default, skip_serializing_if = "is_default")]
    pub functions: FunctionSettings,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// OIDC identity settings with their defaults resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityConfig {
    /// Issuers whose ID tokens are accepted.
    #[serde(default)]
    pub issuers: Vec<OidcIssuerConfig>,
    /// Refuse connections without a valid ID token.
    #[serde(default)]
    pub require_oidc: bool,
    /// File holding an ID token (CI jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// An accepted OIDC issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// Issuer URL (the `iss` claim).
    pub url: String,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// What the tokens identify.
    #[serde(default)]
    pub principal: PrincipalKind,
    /// Claim with the user name (unless `usernameExpression` is set).
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// Put before the user name read from `usernameClaim`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username_prefix: String,
    /// CEL expression over `claims` giving the user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_expression: Option<String>,
    /// Claim with the groups (unless `groupsExpression` is set).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Put before every group read from `groupsClaim`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub groups_prefix: String,
    /// CEL expression over `claims` giving the groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_expression: Option<String>,
    /// Rules every token must satisfy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claim_validation_rules: Vec<ClaimValidationRule>,
    /// Accepted signature algorithms.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<SigningAlgorithm>,
    /// Tolerated clock skew in seconds.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
}

fn default_username_claim() -> String {
    "sub".to_owned()
}

fn default_groups_claim() -> String {
    "groups".to_owned()
}

fn default_algorithms() -> Vec<SigningAlgorithm> {
    vec![SigningAlgorithm::RS256, SigningAlgorithm::ES256]
}

fn default_clock_skew() -> u64 {
    30
}

impl IdentityConfig {
    /// Resolve the defaults of a policy's identity settings.
    pub fn compile(settings: &IdentitySettings) -> Result<Self, CompileError> {
        let issuers = settings
            .issuers
            .iter()
            .map(|i| {
                if i.audiences.is_empty() {
                    return Err(CompileError::Range(format!(
                        "identity issuer {}: audiences must name at least one audience",
                        i.url
                    )));
                }
                let skew = match i.clock_skew_seconds {
                    None => default_clock_skew(),
                    Some(s) if (0..=300).contains(&s) => s.unsigned_abs(),
                    Some(_) => {
                        return Err(CompileError::Range(format!(
                            "identity issuer {}: clockSkewSeconds must be between 0 and 300",
                            i.url
                        )))
                    }
                };
                let mappings = i.claim_mappings.clone().unwrap_or_default();
                let username = mappings.username.unwrap_or_default();
                let groups = mappings.groups.unwrap_or_default();
                let expressions = [
                    ("claimMappings.username.expression", &username.expression),
                    ("claimMappings.groups.expression", &groups.expression),
                ]
                .into_iter()
                .chain(
                    i.claim_validation_rules
                        .iter()
                        .map(|r| ("claimValidationRules[].expression", &r.expression)),
                );
                for (field, expression) in expressions {
                    if let Some(source) = expression {
                        cel::Program::compile(source).map_err(|e| {
                            CompileError::Range(format!(
                                "identity issuer {}: {field} {source:?} is not valid CEL: {e}",
                                i.url
                            ))
                        })?;
                    }
                }
                Ok(OidcIssuerConfig {
                    url: i.url.clone(),
                    audiences: i.audiences.clone(),
                    principal: i.principal,
                    username_claim: username.claim.unwrap_or_else(default_username_claim),
                    username_prefix: username.prefix.unwrap_or_default(),
                    username_expression: username.expression,
                    groups_claim: groups.claim.unwrap_or_else(default_groups_claim),
                    groups_prefix: groups.prefix.unwrap_or_default(),
                    groups_expression: groups.expression,
                    claim_validation_rules: i.claim_validation_rules.clone(),
                    algorithms: if i.algorithms.is_empty() {
                        default_algorithms()
                    } else {
                        i.algorithms.clone()
                    },
                    clock_skew_seconds: skew,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if settings.require_oidc && issuers.is_empty() {
            return Err(CompileError::Range(
                "identity.requireOidc needs at least one entry in identity.issuers".into(),
            ));
        }
        Ok(IdentityConfig {
            issuers,
            require_oidc: settings.require_oidc,
            token_file: settings.token_file.as_ref().map(PathBuf::from),
        })
    }
}

fn default_spool_limit() -> u64 {
    64 * 1024 * 1024
}

/// A masking rule with its columns resolved to qualified names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaskingRuleConfig {
    /// Rule name.
    pub name: String,
    /// Columns whose values are masked.
    #[serde(default)]
    pub columns: Vec<QualifiedColumn>,
    /// Value detector, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<Detector>,
    /// Pattern of the `regex` detector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Masking strategy.
    pub strategy: MaskingStrategy,
    /// Subjects that see the data in clear.
    #[serde(default)]
    pub exempt: Vec<Subject>,
    /// Where the columns may be used outside the select list.
    #[serde(default, skip_serializing_if = "PredicateMode::is_allow")]
    pub predicates: PredicateMode,
}

/// A guardrail with its tables resolved to qualified names.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuardrailConfig {
    /// Guardrail name.
    pub name: String,
    /// Statement kinds matched (empty: any).
    #[serde(default)]
    pub statement_kinds: Vec<StatementKind>,
    /// Tables matched (empty: any).
    #[serde(default)]
    pub tables: Vec<QualifiedTable>,
    /// Matches UPDATE/DELETE without an effective WHERE.
    #[serde(default)]
    pub missing_where: bool,
    /// Function names matched; a trailing `*` matches a prefix. Lower-case.
    #[serde(default)]
    pub functions: Vec<String>,
    /// Exec command glob patterns.
    #[serde(default)]
    pub exec_commands: Vec<String>,
    /// Target namespaces of an exec (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec_namespaces: Vec<String>,
    /// Labels the target pod of an exec must carry.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub exec_pod_labels: std::collections::BTreeMap<String, String>,
    /// Target containers of an exec (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec_containers: Vec<String>,
    /// Matches results of more than this many rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_over: Option<u64>,
    /// Action when matched.
    pub action: GuardrailAction,
    /// Message shown to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Subjects the guardrail does not apply to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exempt: Vec<Subject>,
    /// What an approval under the guardrail covers.
    #[serde(
        default,
        skip_serializing_if = "crate::access_request::GrantCovers::is_values"
    )]
    pub grant_covers: crate::access_request::GrantCovers,
}

/// Approval settings in seconds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalConfig {
    /// Groups whose members may decide.
    #[serde(default)]
    pub approver_groups: Vec<String>,
    /// Users who may decide.
    #[serde(default)]
    pub approver_users: Vec<String>,
    /// Seconds an operation waits for a decision.
    pub timeout_seconds: u64,
    /// Seconds an approval holds.
    pub grant_seconds: u64,
    /// What an approval covers.
    pub grant_scope: GrantScope,
    /// Undecided requests allowed per requester.
    #[serde(default = "default_max_pending")]
    pub max_pending: u32,
    /// Distinct approvers an operation needs (none of them the requester).
    #[serde(
        default = "default_required_approvals",
        skip_serializing_if = "crate::gateway_policy::is_one_approval"
    )]
    pub required_approvals: u32,
    /// Notification webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_url: Option<String>,
}

/// A column as `schema.table.column`, lower-cased as PostgreSQL folds unquoted identifiers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedColumn {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Column name.
    pub column: String,
}

/// A table as `schema.table`, lower-cased.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedTable {
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub table: String,
}

/// Schema assumed when a name omits it.
pub const DEFAULT_SCHEMA: &str = "public";

/// A column or table name that is not of the form the API accepts.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{what} {input:?} must be written {form}")]
pub struct NameError {
    what: &'static str,
    input: String,
    form: &'static str,
}

fn split_identifiers(input: &str) -> Option<Vec<String>> {
    let parts: Vec<String> = input.split('.').map(|p| p.to_ascii_lowercase()).collect();
    let valid = |p: &String| {
        let mut chars = p.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    parts.iter().all(valid).then_some(parts)
}

impl FromStr for QualifiedColumn {
    type Err = NameError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || NameError {
            what: "column",
            input: input.to_owned(),
            form: "table.column or schema.table.column",
        };
        let parts = split_identifiers(input).ok_or_else(err)?;
        match parts.as_slice() {
            [table, column] => Ok(Self {
                schema: DEFAULT_SCHEMA.to_owned(),
                table: table.clone(),
                column: column.clone(),
            }),
            [schema, table, column] => Ok(Self {
                schema: schema.clone(),
                table: table.clone(),
                column: column.clone(),
            }),
            _ => Err(err()),
        }
    }
}

impl FromStr for QualifiedTable {
    type Err = NameError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || NameError {
            what: "table",
            input: input.to_owned(),
            form: "table or schema.table",
        };
        let parts = split_identifiers(input).ok_or_else(err)?;
        match parts.as_slice() {
            [table] => Ok(Self {
                schema: DEFAULT_SCHEMA.to_owned(),
                table: table.clone(),
            }),
            [schema, table] => Ok(Self {
                schema: schema.clone(),
                table: table.clone(),
            }),
            _ => Err(err()),
        }
    }
}

impl fmt::Display for QualifiedColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.schema, self.table, self.column)
    }
}

impl fmt::Display for QualifiedTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

macro_rules! string_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
string_serde!(QualifiedColumn);
string_serde!(QualifiedTable);

/// Why a GatewayPolicy could not be compiled.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CompileError {
    /// A column or table name is malformed.
    #[error("{rule}: {source}")]
    Name {
        /// The masking rule or guardrail.
        rule: String,
        /// What is wrong with the name.
        source: NameError,
    },
    /// A guardrail requires approval but the policy names no approvers.
    #[error("guardrail {0} requires approval but spec.approval is not set")]
    MissingApproval(String),
    /// A numeric limit is out of range.
    #[error("{0}")]
    Range(String),
}

/// Every subject that names an issuer names one the policy trusts (`identity.issuers`).
fn check_subject_issuers(spec: &GatewayPolicySpec) -> Result<(), CompileError> {
    let trusted: Vec<&str> = spec
        .identity
        .iter()
        .flat_map(|i| i.issuers.iter().map(|i| i.url.as_str()))
        .collect();
    let subjects = spec
        .subjects
        .iter()
        .chain(spec.masking.iter().flat_map(|m| m.exempt.iter()))
        .chain(spec.guardrails.iter().flat_map(|g| g.exempt.iter()));
    for s in subjects {
        match (&s.issuer, s.kind) {
            (Some(_), SubjectKind::ServiceAccount) => {
                return Err(CompileError::Range(
                    "subject issuer applies to kinds User, Group and Pipeline only".into(),
                ))
            }
            (Some(issuer), _) if !trusted.contains(&issuer.as_str()) => {
                return Err(CompileError::Range(format!(
                    "a subject names issuer {issuer}, which is not among this policy's identity.issuers"
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

impl PolicyConfig {
    /// Compile a GatewayPolicy spec into the form the sidecar applies.
    pub fn compile(
        name: &str,
        generation: i64,
        spec: &GatewayPolicySpec,
    ) -> Result<Self, CompileError> {
        check_subject_issuers(spec)?;
        let masking = spec
            .masking
            .iter()
            .map(|rule| {
                let columns = rule
                    .columns
                    .iter()
                    .map(|c| c.parse())
                    .collect::<Result<Vec<QualifiedColumn>, _>>()
                    .map_err(|source| CompileError::Name {
                        rule: format!("masking rule {}", rule.name),
                        source,
                    })?;
                Ok(MaskingRuleConfig {
                    name: rule.name.clone(),
                    columns,
                    detector: rule.detector,
                    pattern: rule.pattern.clone(),
                    strategy: rule.strategy,
                    exempt: rule.exempt.clone(),
                    predicates: rule.predicates,
                })
            })
            .collect::<Result<Vec<_>, CompileError>>()?;

        let guardrails = spec
            .guardrails
            .iter()
            .map(|g| {
                if g.action == GuardrailAction::RequireApproval && spec.approval.is_none() {
                    return Err(CompileError::MissingApproval(g.name.clone()));
                }
                let tables = g
                    .r#match
                    .tables
                    .iter()
                    .map(|t| t.parse())
                    .collect::<Result<Vec<QualifiedTable>, _>>()
                    .map_err(|source| CompileError::Name {
                        rule: format!("guardrail {}", g.name),
                        source,
                    })?;
                let rows_over = g
                    .r#match
                    .rows_over
                    .map(|n| {
                        u64::try_from(n).map_err(|_| {
                            CompileError::Range(format!(
                                "guardrail {}: rowsOver must be positive",
                                g.name
                            ))
                        })
                    })
                    .transpose()?;
                Ok(GuardrailConfig {
                    name: g.name.clone(),
                    statement_kinds: g.r#match.statement_kinds.clone(),
                    tables,
                    missing_where: g.r#match.missing_where,
                    functions: g
                        .r#match
                        .functions
                        .iter()
                        .map(|f| f.to_ascii_lowercase())
                        .collect(),
                    exec_commands: g.r#match.exec_commands.clone(),
                    exec_namespaces: g.r#match.exec_namespaces.clone(),
                    exec_pod_labels: g.r#match.exec_pod_labels.clone(),
                    exec_containers: g.r#match.exec_containers.clone(),
                    rows_over,
                    action: g.action,
                    message: g.message.clone(),
                    exempt: g.exempt.clone(),
                    grant_covers: g.grant_covers,
                })
            })
            .collect::<Result<Vec<_>, CompileError>>()?;

        let approval = spec.approval.as_ref().map(|a| ApprovalConfig {
            approver_groups: a.approver_groups.clone(),
            approver_users: a.approver_users.clone(),
            timeout_seconds: std::time::Duration::from(a.timeout).as_secs(),
            grant_seconds: std::time::Duration::from(a.grant_duration).as_secs(),
            grant_scope: a.grant_scope,
            max_pending: a.max_pending,
            required_approvals: a.required_approvals,
            notify_url: a.notify_url.clone(),
        });
        let (on_audit_unavailable, spool_limit_bytes) = match &spec.on_audit_unavailable {
            Some(a) => (
                a.action,
                u64::try_from(a.spool_limit_bytes).map_err(|_| {
                    CompileError::Range(
                        "onAuditUnavailable.spoolLimitBytes must be positive".into(),
                    )
                })?,
            ),
            None => (AuditUnavailableAction::default(), default_spool_limit()),
        };

        Ok(Self {
            name: name.to_owned(),
            generation,
            subjects: spec.subjects.clone(),
            masking,
            guardrails,
            approval,
            lawful_basis: spec.lawful_basis,
            purpose: spec.purpose.clone(),
            on_unanalyzable: spec.on_unanalyzable,
            on_audit_unavailable,
            spool_limit_bytes,
            identity: spec
                .identity
                .as_ref()
                .map(IdentityConfig::compile)
                .transpose()?,
            kubernetes: spec.kubernetes.clone().unwrap_or_default(),
            exec: match &spec.exec {
                Some(e)
                    if e.default == crate::exec_policy::ExecDefault::RequireApproval
                        && spec.approval.is_none() =>
                {
                    return Err(CompileError::Range(
                        "exec.default requireApproval needs spec.approval (approvers and timeout)"
                            .into(),
                    ))
                }
                other => other.clone(),
            },
            functions: spec
                .functions
                .as_ref()
                .map(|f| FunctionSettings {
                    mode: f.mode,
                    allow: f.allow.iter().map(|a| a.to_ascii_lowercase()).collect(),
                })
                .unwrap_or_default(),
        })
    }
}

/// Why a sidecar configuration document was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// Not YAML of the right shape.
    #[error("sidecar configuration is not valid: {0}")]
    Parse(String),
    /// A different format version.
    #[error(
        "sidecar configuration has apiVersion {found:?}, expected {SIDECAR_CONFIG_API_VERSION:?}"
    )]
    Version {
        /// The version found.
        found: String,
    },
    /// Internally inconsistent (unknown policy name, duplicate port).
    #[error("sidecar configuration is inconsistent: {0}")]
    Inconsistent(String),
}

impl SidecarConfig {
    /// Parse and check a configuration document (YAML or JSON).
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let config: SidecarConfig = serde_path_to_error::deserialize(de)
            .map_err(|e| ConfigError::Parse(format!("{}: {}", e.path(), e.inner())))?;
        config.check()?;
        Ok(config)
    }

    /// Serialize to YAML.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_yaml::to_string(self).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Check the references inside the document.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.api_version != SIDECAR_CONFIG_API_VERSION {
            return Err(ConfigError::Version {
                found: self.api_version.clone(),
            });
        }
        let mut ports = std::collections::BTreeMap::new();
        for r in &self.resources {
            if let Some(other) = ports.insert(r.listen_port, &r.name) {
                return Err(ConfigError::Inconsistent(format!(
                    "resources {other} and {} both listen on port {}",
                    r.name, r.listen_port
                )));
            }
            for p in &r.policies {
                if !self.policies.iter().any(|q| &q.name == p) {
                    return Err(ConfigError::Inconsistent(format!(
                        "resource {} names policy {p}, which is not in the document",
                        r.name
                    )));
                }
            }
            if r.r#type != ResourceType::Kubernetes && r.upstream.is_none() {
                return Err(ConfigError::Inconsistent(format!(
                    "resource {} of type {} has no upstream",
                    r.name,
                    r.r#type.as_str()
                )));
            }
        }
        if let Some(url) = &self.audit.service_url {
            if !url.starts_with("https://") {
                return Err(ConfigError::Inconsistent(format!(
                    "audit.serviceUrl {url:?} must be an https:// URL"
                )));
            }
            if self.audit.ca_file.is_none() || self.audit.token_file.is_none() {
                return Err(ConfigError::Inconsistent(
                    "audit.serviceUrl needs audit.caFile and audit.tokenFile".into(),
                ));
            }
        }
        Ok(())
    }

    /// Content hash of the document (hex SHA-256 of its canonical JSON, first 16 characters);
    /// pods carry it in an annotation to show which configuration they run.
    pub fn content_hash(&self) -> String {
        // Serializing plain data to JSON cannot fail; fall back to the debug form regardless.
        let bytes = serde_json::to_vec(self).unwrap_or_else(|_| format!("{self:?}").into_bytes());
        let digest = Sha256::digest(bytes);
        hex::encode(digest)[..16].to_owned()
    }

    /// The policies that govern a resource, in order.
    pub fn policies_for<'a>(
        &'a self,
        resource: &'a ResourceConfig,
    ) -> impl Iterator<Item = &'a PolicyConfig> + 'a {
        resource
            .policies
            .iter()
            .filter_map(|name| self.policies.iter().find(|p| &p.name == name))
    }
}

fn default_required_approvals() -> u32 {
    crate::gateway_policy::DEFAULT_REQUIRED_APPROVALS
}

fn default_max_pending() -> u32 {
    crate::gateway_policy::DEFAULT_MAX_PENDING
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway_policy::{
        ApprovalSettings, Guardrail, GuardrailMatch, MaskingRule, SubjectKind,
    };

    fn policy_spec() -> GatewayPolicySpec {
        GatewayPolicySpec {
            subjects: vec![Subject {
                kind: SubjectKind::ServiceAccount,
                name: Some("support-agent".into()),
                namespace: None,
                issuer: None,
                claims: Default::default(),
            }],
            masking: vec![MaskingRule {
                name: "contact".into(),
                columns: vec!["Customers.Email".into(), "crm.leads.phone".into()],
                detector: None,
                pattern: None,
                strategy: MaskingStrategy::Partial,
                exempt: vec![],
                predicates: Default::default(),
            }],
            guardrails: vec![
                Guardrail {
                    name: "no-unbounded-delete".into(),
                    r#match: GuardrailMatch {
                        statement_kinds: vec![StatementKind::Delete],
                        missing_where: true,
                        ..Default::default()
                    },
                    action: GuardrailAction::Deny,
                    message: None,
                    exempt: vec![],
                    grant_covers: Default::default(),
                },
                Guardrail {
                    name: "writes".into(),
                    r#match: GuardrailMatch {
                        tables: vec!["customers".into()],
                        functions: vec!["DBLINK*".into()],
                        rows_over: Some(1000),
                        ..Default::default()
                    },
                    action: GuardrailAction::RequireApproval,
                    message: Some("ask first".into()),
                    exempt: vec![Subject {
                        kind: SubjectKind::Pipeline,
                        name: None,
                        namespace: None,
                        issuer: None,
                        claims: [("ref".to_owned(), "refs/heads/main".to_owned())].into(),
                    }],
                    grant_covers: Default::default(),
                },
            ],
            approval: Some(ApprovalSettings {
                approver_groups: vec!["dba".into()],
                approver_users: vec![],
                timeout: "5m".parse().expect("duration"),
                grant_duration: "2h".parse().expect("duration"),
                grant_scope: GrantScope::Session,
                max_pending: 5,
                required_approvals: 1,
                owner_groups: vec![],
                notify_url: None,
            }),
            identity: Some(IdentitySettings {
                issuers: vec![crate::gateway_policy::OidcIssuer {
                    url: "https://token.actions.githubusercontent.com".into(),
                    audiences: vec!["portcullis".into()],
                    principal: PrincipalKind::Pipeline,
                    claim_mappings: Some(crate::gateway_policy::ClaimMappings {
                        username: None,
                        groups: Some(crate::gateway_policy::PrefixedClaim {
                            claim: Some("roles".into()),
                            prefix: Some("gh:".into()),
                            expression: None,
                        }),
                    }),
                    claim_validation_rules: vec![],
                    algorithms: vec![],
                    clock_skew_seconds: None,
                }],
                require_oidc: true,
                token_file: None,
            }),
            ..Default::default()
        }
    }

    fn config() -> SidecarConfig {
        SidecarConfig {
            api_version: SIDECAR_CONFIG_API_VERSION.into(),
            namespace: "agents".into(),
            resources: vec![ResourceConfig {
                name: "customers-db".into(),
                r#type: ResourceType::Postgres,
                listen_address: "127.0.0.1".into(),
                listen_port: 5432,
                upstream: Some(UpstreamConfig {
                    host: "db.data.svc".into(),
                    port: 5432,
                    database: Some("shop".into()),
                    tls_mode: TlsMode::VerifyFull,
                    ca_file: Some("/var/run/portcullis/ca/ca.crt".into()),
                    server_name: None,
                }),
                credentials: Some(CredentialFiles {
                    username_file: "/var/run/portcullis/credentials/customers-db/username".into(),
                    password_file: "/var/run/portcullis/credentials/customers-db/password".into(),
                }),
                policies: vec!["gdpr".into()],
                server_tls: None,
                token_file: None,
                allow_remote_clients: false,
            }],
            policies: vec![PolicyConfig::compile("gdpr", 3, &policy_spec()).expect("compiles")],
            audit: AuditConfig::default(),
            masking: MaskingConfig::default(),
            admin_listen: "127.0.0.1:15090".into(),
            protected_secrets: Vec::new(),
        }
    }

    #[test]
    fn compile_resolves_names_and_durations() {
        let p = PolicyConfig::compile("gdpr", 3, &policy_spec()).expect("compiles");
        assert_eq!(p.generation, 3);
        assert_eq!(
            p.masking[0].columns,
            vec![
                QualifiedColumn {
                    schema: "public".into(),
                    table: "customers".into(),
                    column: "email".into()
                },
                QualifiedColumn {
                    schema: "crm".into(),
                    table: "leads".into(),
                    column: "phone".into()
                },
            ]
        );
        assert_eq!(p.guardrails[1].tables[0].to_string(), "public.customers");
        assert_eq!(p.guardrails[1].functions, vec!["dblink*"]);
        assert_eq!(p.guardrails[1].rows_over, Some(1000));
        let a = p.approval.expect("approval");
        assert_eq!((a.timeout_seconds, a.grant_seconds), (300, 7200));
        assert_eq!(a.grant_scope, GrantScope::Session);
        assert_eq!(p.on_unanalyzable, UnanalyzableAction::Deny);
        assert_eq!(p.on_audit_unavailable, AuditUnavailableAction::Deny);
        assert_eq!(p.spool_limit_bytes, 64 * 1024 * 1024);
        assert_eq!(p.guardrails[1].exempt[0].kind, SubjectKind::Pipeline);
        let id = p.identity.expect("identity");
        assert!(id.require_oidc);
        let issuer = &id.issuers[0];
        assert_eq!(issuer.username_claim, "sub");
        assert_eq!(issuer.groups_claim, "roles");
        assert_eq!(issuer.groups_prefix, "gh:");
        let mut spec = policy_spec();
        if let Some(id) = spec.identity.as_mut() {
            id.issuers[0].claim_validation_rules = vec![ClaimValidationRule {
                claim: None,
                required_value: None,
                expression: Some("claims.(".into()),
                message: None,
            }];
        }
        let err = PolicyConfig::compile("p", 1, &spec).expect_err("bad CEL");
        assert!(err.to_string().contains("is not valid CEL"), "{err}");
        let mut spec = policy_spec();
        spec.subjects[0].issuer = Some("https://elsewhere.example".into());
        spec.subjects[0].kind = SubjectKind::Group;
        let err = PolicyConfig::compile("p", 1, &spec).expect_err("foreign issuer");
        assert!(
            err.to_string()
                .contains("not among this policy's identity.issuers"),
            "{err}"
        );
        assert_eq!(
            issuer.algorithms,
            vec![SigningAlgorithm::RS256, SigningAlgorithm::ES256]
        );
        assert_eq!(issuer.clock_skew_seconds, 30);
    }

    #[test]
    fn identity_settings_are_checked() {
        let mut spec = policy_spec();
        if let Some(id) = spec.identity.as_mut() {
            id.issuers.clear();
        }
        let err = PolicyConfig::compile("p", 1, &spec).expect_err("require without issuers");
        assert!(err.to_string().contains("requireOidc"), "{err}");
        let mut spec = policy_spec();
        if let Some(id) = spec.identity.as_mut() {
            id.issuers[0].clock_skew_seconds = Some(3600);
        }
        let err = PolicyConfig::compile("p", 1, &spec).expect_err("skew");
        assert!(err.to_string().contains("clockSkewSeconds"), "{err}");
    }

    #[test]
    fn compile_refuses_what_cel_cannot_see() {
        let mut spec = policy_spec();
        spec.approval = None;
        assert_eq!(
            PolicyConfig::compile("p", 1, &spec),
            Err(CompileError::MissingApproval("writes".into()))
        );
        let mut spec = policy_spec();
        spec.masking[0].columns = vec!["a.b.c.d".into()];
        let err = PolicyConfig::compile("p", 1, &spec).expect_err("four-part name");
        assert_eq!(
            err.to_string(),
            "masking rule contact: column \"a.b.c.d\" must be written table.column or schema.table.column"
        );
    }

    #[test]
    fn yaml_round_trip_is_lossless() {
        let c = config();
        let yaml = c.to_yaml().expect("serializes");
        let back = SidecarConfig::from_yaml(&yaml).expect("parses");
        assert_eq!(back, c);
        assert_eq!(back.content_hash(), c.content_hash());
        assert_eq!(back.to_yaml().expect("serializes"), yaml);
        // JSON is YAML too.
        let json = serde_json::to_string(&c).expect("json");
        assert_eq!(SidecarConfig::from_yaml(&json).expect("parses json"), c);
        assert!(yaml.contains("listenPort: 5432"), "{yaml}");
        assert!(yaml.contains("- public.customers.email"), "{yaml}");
    }

    #[test]
    fn content_hash_changes_with_content() {
        let a = config();
        let mut b = config();
        b.policies[0].guardrails[0].action = GuardrailAction::Audit;
        assert_ne!(a.content_hash(), b.content_hash());
        assert_eq!(a.content_hash().len(), 16);
    }

    #[test]
    fn inconsistent_documents_are_refused_with_the_reason() {
        let mut c = config();
        c.resources[0].policies = vec!["missing".into()];
        let err =
            SidecarConfig::from_yaml(&c.to_yaml().expect("yaml")).expect_err("unknown policy");
        assert_eq!(
            err.to_string(),
            "sidecar configuration is inconsistent: resource customers-db names policy missing, which is not in the document"
        );
        let mut c = config();
        let mut second = c.resources[0].clone();
        second.name = "other".into();
        c.resources.push(second);
        let err = c.check().expect_err("duplicate port");
        assert!(
            err.to_string().contains("both listen on port 5432"),
            "{err}"
        );
        let mut c = config();
        c.api_version = "v0".into();
        assert!(matches!(c.check(), Err(ConfigError::Version { .. })));
        let err = SidecarConfig::from_yaml("apiVersion: portcullis.dev/sidecar-config/v1alpha1\nnamespace: a\nresources:\n- name: x\n  type: oracle\n  listenPort: 1\n")
            .expect_err("unknown type");
        assert!(
            err.to_string()
                .contains("resources[0].type: unknown variant `oracle`"),
            "{err}"
        );
        let err = SidecarConfig::from_yaml(
            "apiVersion: portcullis.dev/sidecar-config/v1alpha1\nnamespace: a\nlistenPort: 1\n",
        )
        .expect_err("unknown field");
        assert!(
            err.to_string().contains("unknown field `listenPort`"),
            "{err}"
        );
    }

    #[test]
    fn qualified_names_parse_and_print() {
        let c: QualifiedColumn = "Sales.Orders.Total".parse().expect("column");
        assert_eq!(c.to_string(), "sales.orders.total");
        assert!("orders".parse::<QualifiedColumn>().is_err());
        assert!("1orders.total".parse::<QualifiedColumn>().is_err());
        let t: QualifiedTable = "orders".parse().expect("table");
        assert_eq!(t.to_string(), "public.orders");
        assert!("a.b.c".parse::<QualifiedTable>().is_err());
    }

    #[test]
    fn shipping_needs_https_a_ca_and_a_token() {
        let base = "apiVersion: portcullis.dev/sidecar-config/v1alpha1\nnamespace: shop\naudit:\n  spoolDir: /spool\n";
        let ok = format!(
            "{base}  serviceUrl: https://audit.portcullis-system.svc:443\n  caFile: /ca.crt\n  tokenFile: /token\n"
        );
        let config = SidecarConfig::from_yaml(&ok).expect("parses");
        config.check().expect("consistent");
        assert_eq!(config.audit.token_file, Some(PathBuf::from("/token")));
        let plain = format!(
            "{base}  serviceUrl: http://audit:80\n  caFile: /ca.crt\n  tokenFile: /token\n"
        );
        let err = SidecarConfig::from_yaml(&plain).expect_err("refused");
        assert!(err.to_string().contains("https://"), "{err}");
        let no_token = format!("{base}  serviceUrl: https://audit\n  caFile: /ca.crt\n");
        let err = SidecarConfig::from_yaml(&no_token).expect_err("refused");
        assert!(err.to_string().contains("audit.tokenFile"), "{err}");
    }
}
