//! Who is behind a session: the workload (the pod's service account, from the downward API)
//! and, when the client presents a valid OIDC ID token, the person or pipeline run that
//! started it. Policies select sessions by these identities (`subjects`), exempt them from
//! guardrails and masking rules (`exempt`), and may require a token (`requireOidc`).
//!
//! A token arrives as the PostgreSQL password: when a resource's policies name OIDC issuers,
//! the sidecar asks a loopback client for a cleartext password (the token never leaves the
//! pod) and validates it against the issuer's published keys. A CI job may instead mount its
//! token in a file named by the policy.

pub mod http;
pub mod oidc;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use portcullis_crds::audit::Identity;
use portcullis_crds::gateway_policy::{Subject, SubjectKind};
use portcullis_crds::sidecar_config::{MaskingRuleConfig, OidcIssuerConfig, PolicyConfig};
use thiserror::Error;

use self::http::HttpClient;
use self::oidc::{claim_string, IssuerVerifier, OidcOptions, TokenError};

/// SQLSTATE of authentication refusals (invalid_authorization_specification).
pub const SQLSTATE_AUTH: &str = "28000";

/// Claims of CI tokens recorded with a pipeline principal (GitHub Actions, GitLab CI).
pub const PIPELINE_CLAIMS: &[&str] = &[
    // GitHub Actions
    "repository",
    "repository_owner",
    "ref",
    "ref_type",
    "sha",
    "workflow",
    "workflow_ref",
    "job_workflow_ref",
    "run_id",
    "run_attempt",
    "event_name",
    "actor",
    "environment",
    // GitLab CI
    "project_path",
    "namespace_path",
    "ref_protected",
    "pipeline_id",
    "pipeline_source",
    "job_id",
    "user_login",
];

/// Whether a policy subject names this identity. `default_ns` is the namespace assumed for
/// ServiceAccount subjects without one (the policy's).
pub fn subject_matches(subject: &Subject, identity: &Identity, default_ns: &str) -> bool {
    let name_is = |candidate: &str| match &subject.name {
        Some(n) => n == "*" || n == candidate,
        None => false,
    };
    let principal = identity.principal.as_ref();
    match subject.kind {
        SubjectKind::ServiceAccount => {
            identity.kind == "ServiceAccount"
                && name_is(&identity.name)
                && subject.namespace.as_deref().unwrap_or(default_ns)
                    == identity.namespace.as_deref().unwrap_or(default_ns)
        }
        SubjectKind::User => {
            (identity.kind == "User" && name_is(&identity.name))
                || principal.is_some_and(|p| p.kind == "User" && name_is(&p.name))
        }
        SubjectKind::Group => principal.is_some_and(|p| {
            p.groups.iter().any(|g| name_is(g)) || (subject.name.as_deref() == Some("*"))
        }),
        SubjectKind::Pipeline => principal.is_some_and(|p| {
            p.kind == "Pipeline"
                && subject.name.as_deref().is_none_or(|_| name_is(&p.name))
                && !subject.claims.is_empty()
                && subject
                    .claims
                    .iter()
                    .all(|(k, v)| p.claims.get(k) == Some(v))
        }),
    }
}

/// Whether any of `subjects` names this identity.
pub fn matches_any(subjects: &[Subject], identity: &Identity, default_ns: &str) -> bool {
    subjects
        .iter()
        .any(|s| subject_matches(s, identity, default_ns))
}

/// Whether a session's identity sees the data of a masking rule in clear (the rule's
/// `exempt` subjects).
pub fn exempt(identity: &Identity, rule: &MaskingRuleConfig, default_ns: &str) -> bool {
    matches_any(&rule.exempt, identity, default_ns)
}

/// Whether a policy applies to a session: it names no subjects, or one of them.
pub fn policy_applies(policy: &PolicyConfig, identity: &Identity, default_ns: &str) -> bool {
    policy.subjects.is_empty() || matches_any(&policy.subjects, identity, default_ns)
}

/// Why a connection is refused at start-up. The messages are shown to the client.
#[derive(Debug, Error)]
pub enum AuthError {
    /// No token, but one is required.
    #[error("this resource requires an OIDC ID token as the password ({expected}); connect with the token as the password, for example PGPASSWORD=\"$(cat token)\"")]
    Required {
        /// Issuers and audiences accepted.
        expected: String,
    },
    /// A token is required but the client is not on loopback, where passwords are asked for.
    #[error("this resource requires an OIDC ID token, which the sidecar accepts from loopback clients only ({expected})")]
    NotLoopback {
        /// Issuers and audiences accepted.
        expected: String,
    },
    /// The token was presented and is not valid.
    #[error("OIDC ID token refused: {source} ({expected})")]
    Token {
        /// What is wrong.
        source: TokenError,
        /// Issuers and audiences accepted.
        expected: String,
    },
    /// The token is valid but names nobody a policy that requires OIDC admits.
    #[error("OIDC identity {who} is not among the subjects of policy {policy} ({subjects})")]
    NotASubject {
        /// The principal.
        who: String,
        /// The policy.
        policy: String,
        /// Its subjects.
        subjects: String,
    },
    /// The client broke the password exchange.
    #[error("{0}")]
    Protocol(String),
}

/// The OIDC settings of one resource, gathered from its policies.
pub struct Authenticator {
    verifiers: Vec<Arc<IssuerVerifier>>,
    required: Vec<(String, Vec<Subject>)>,
    token_files: Vec<PathBuf>,
    recorded_claims: BTreeSet<String>,
    namespace: String,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("verifiers", &self.verifiers)
            .field("required", &self.required)
            .finish()
    }
}

fn describe_subject(s: &Subject) -> String {
    let kind = match s.kind {
        SubjectKind::ServiceAccount => "ServiceAccount",
        SubjectKind::User => "User",
        SubjectKind::Group => "Group",
        SubjectKind::Pipeline => "Pipeline",
    };
    let mut out = format!("{kind} {}", s.name.as_deref().unwrap_or(""));
    if !s.claims.is_empty() {
        let claims: Vec<String> = s.claims.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&claims.join(","));
    }
    out.trim().to_owned()
}

fn subjects_of(policy: &PolicyConfig) -> impl Iterator<Item = &Subject> {
    policy
        .subjects
        .iter()
        .chain(policy.masking.iter().flat_map(|m| m.exempt.iter()))
        .chain(policy.guardrails.iter().flat_map(|g| g.exempt.iter()))
}

impl Authenticator {
    /// The OIDC settings of a resource's policies; `None` when no policy names an issuer.
    pub fn for_policies(
        policies: &[PolicyConfig],
        namespace: &str,
        options: OidcOptions,
    ) -> Result<Option<Authenticator>, String> {
        let mut configs: Vec<OidcIssuerConfig> = Vec::new();
        let mut required = Vec::new();
        let mut token_files = Vec::new();
        for p in policies {
            let Some(id) = &p.identity else { continue };
            for issuer in &id.issuers {
                http::allowed_url(&issuer.url)
                    .map_err(|e| format!("policy {}: issuer {e}", p.name))?;
                if !configs.contains(issuer) {
                    configs.push(issuer.clone());
                }
            }
            if id.require_oidc {
                let people: Vec<Subject> = p
                    .subjects
                    .iter()
                    .filter(|s| s.kind != SubjectKind::ServiceAccount)
                    .cloned()
                    .collect();
                required.push((p.name.clone(), people));
            }
            if let Some(f) = &id.token_file {
                token_files.push(f.clone());
            }
        }
        if configs.is_empty() {
            if !required.is_empty() {
                return Err("a policy requires OIDC but names no issuer".into());
            }
            return Ok(None);
        }
        let http = HttpClient::new(options.http_timeout)?;
        let mut recorded_claims: BTreeSet<String> = BTreeSet::new();
        for p in policies {
            for s in subjects_of(p) {
                recorded_claims.extend(s.claims.keys().cloned());
            }
        }
        Ok(Some(Authenticator {
            verifiers: configs
                .into_iter()
                .map(|c| Arc::new(IssuerVerifier::new(c, http.clone(), options)))
                .collect(),
            required,
            token_files,
            recorded_claims,
            namespace: namespace.to_owned(),
        }))
    }

    /// Whether a connection without a valid token is refused.
    pub fn required(&self) -> bool {
        !self.required.is_empty()
    }

    /// The accepted issuers and audiences, for messages.
    pub fn expected(&self) -> String {
        let list: Vec<String> = self
            .verifiers
            .iter()
            .map(|v| {
                format!(
                    "issuer {}, audience {}",
                    v.config().url,
                    v.config().audiences.join(" or ")
                )
            })
            .collect();
        list.join("; ")
    }

    /// A token from the files CI jobs mount, if one is there.
    pub async fn token_from_file(&self) -> Option<String> {
        for f in &self.token_files {
            let Ok(text) = tokio::fs::read_to_string(f).await else {
                continue;
            };
            let token = text.trim();
            if !token.is_empty() {
                return Some(token.to_owned());
            }
        }
        None
    }

    /// Validate a token and return the session identity: the workload with the token's
    /// principal. Checks `requireOidc` subjects.
    pub async fn authenticate(
        &self,
        workload: &Identity,
        token: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        let Some(token) = token else {
            return if self.required() {
                Err(AuthError::Required {
                    expected: self.expected(),
                })
            } else {
                Ok(workload.clone())
            };
        };
        let peeked = match oidc::peek(token) {
            Ok(p) => p,
            // Where a token is optional, a password that is not a token at all means "none".
            Err(TokenError::NotAJwt) if !self.required() => return Ok(workload.clone()),
            Err(source) => {
                return Err(AuthError::Token {
                    source,
                    expected: self.expected(),
                })
            }
        };
        let iss = peeked
            .claims
            .get("iss")
            .and_then(claim_string)
            .unwrap_or_default();
        let mut first_error = None;
        let mut verified = None;
        for v in self.verifiers.iter().filter(|v| v.config().url == iss) {
            match v.verify(token, &peeked).await {
                Ok(ok) => {
                    verified = Some(ok);
                    break;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let Some(verified) = verified else {
            let source = first_error.unwrap_or_else(|| TokenError::UntrustedIssuer {
                found: iss,
                trusted: self
                    .verifiers
                    .iter()
                    .map(|v| v.config().url.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
            return Err(AuthError::Token {
                source,
                expected: self.expected(),
            });
        };
        let mut principal = verified.principal;
        for (k, v) in &verified.claims {
            let recorded = self.recorded_claims.contains(k)
                || (principal.kind == "Pipeline" && PIPELINE_CLAIMS.contains(&k.as_str()));
            if recorded {
                if let Some(s) = claim_string(v) {
                    principal.claims.insert(k.clone(), s);
                }
            }
        }
        let identity = Identity {
            principal: Some(principal),
            ..workload.clone()
        };
        for (policy, subjects) in &self.required {
            if !subjects.is_empty() && !matches_any(subjects, &identity, &self.namespace) {
                let who = identity
                    .principal
                    .as_ref()
                    .map(|p| {
                        if p.groups.is_empty() {
                            format!("{} {}", p.kind, p.name)
                        } else {
                            format!("{} {} (groups {})", p.kind, p.name, p.groups.join(", "))
                        }
                    })
                    .unwrap_or_default();
                return Err(AuthError::NotASubject {
                    who,
                    policy: policy.clone(),
                    subjects: subjects
                        .iter()
                        .map(describe_subject)
                        .collect::<Vec<_>>()
                        .join("; "),
                });
            }
        }
        Ok(identity)
    }
}

/// Whether a peer address is loopback (where the sidecar asks for a password).
pub fn is_loopback(peer: &SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_crds::audit::Principal;

    fn subject(kind: SubjectKind, name: Option<&str>, claims: &[(&str, &str)]) -> Subject {
        Subject {
            kind,
            name: name.map(str::to_owned),
            namespace: None,
            claims: claims
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    fn workload() -> Identity {
        Identity {
            kind: "ServiceAccount".into(),
            name: "agent".into(),
            namespace: Some("agents".into()),
            ..Default::default()
        }
    }

    fn with_principal(
        kind: &str,
        name: &str,
        groups: &[&str],
        claims: &[(&str, &str)],
    ) -> Identity {
        Identity {
            principal: Some(Principal {
                kind: kind.into(),
                issuer: "https://issuer".into(),
                subject: name.into(),
                name: name.into(),
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                claims: claims
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                expires: None,
            }),
            ..workload()
        }
    }

    #[test]
    fn subjects_match_workload_person_group_and_pipeline() {
        let sa = subject(SubjectKind::ServiceAccount, Some("agent"), &[]);
        assert!(subject_matches(&sa, &workload(), "agents"));
        assert!(!subject_matches(&sa, &workload(), "other"));
        let alice = with_principal("User", "alice", &["dpo"], &[]);
        assert!(subject_matches(
            &subject(SubjectKind::User, Some("alice"), &[]),
            &alice,
            "agents"
        ));
        assert!(!subject_matches(
            &subject(SubjectKind::User, Some("bob"), &[]),
            &alice,
            "agents"
        ));
        assert!(subject_matches(
            &subject(SubjectKind::Group, Some("dpo"), &[]),
            &alice,
            "agents"
        ));
        assert!(!subject_matches(
            &subject(SubjectKind::Group, Some("dpo"), &[]),
            &workload(),
            "agents"
        ));
        let main = with_principal(
            "Pipeline",
            "repo:acme/agents:ref:refs/heads/main",
            &[],
            &[("repository", "acme/agents"), ("ref", "refs/heads/main")],
        );
        let rule = subject(
            SubjectKind::Pipeline,
            None,
            &[("repository", "acme/agents"), ("ref", "refs/heads/main")],
        );
        assert!(subject_matches(&rule, &main, "agents"));
        let feature = with_principal(
            "Pipeline",
            "x",
            &[],
            &[("repository", "acme/agents"), ("ref", "refs/heads/feature")],
        );
        assert!(!subject_matches(&rule, &feature, "agents"));
        // A person's token with the same claims is not a pipeline.
        let person = with_principal("User", "x", &[], &[("ref", "refs/heads/main")]);
        assert!(!subject_matches(
            &subject(SubjectKind::Pipeline, None, &[("ref", "refs/heads/main")]),
            &person,
            "agents"
        ));
    }

    #[tokio::test]
    async fn without_a_token_the_workload_stays_or_the_connection_is_refused() {
        let issuer = OidcIssuerConfig {
            url: "https://issuer.example".into(),
            audiences: vec!["db".into()],
            principal: Default::default(),
            username_claim: "sub".into(),
            groups_claim: "groups".into(),
            algorithms: vec![portcullis_crds::gateway_policy::SigningAlgorithm::RS256],
            clock_skew_seconds: 30,
        };
        let mut policy: PolicyConfig = serde_yaml::from_str("name: p\n").expect("policy");
        policy.identity = Some(portcullis_crds::sidecar_config::IdentityConfig {
            issuers: vec![issuer],
            require_oidc: false,
            token_file: None,
        });
        let auth = Authenticator::for_policies(&[policy.clone()], "agents", OidcOptions::default())
            .expect("builds")
            .expect("enabled");
        assert_eq!(
            auth.authenticate(&workload(), None)
                .await
                .expect("optional"),
            workload()
        );
        assert_eq!(
            auth.authenticate(&workload(), Some("not-a-token"))
                .await
                .expect("optional"),
            workload()
        );
        if let Some(id) = policy.identity.as_mut() {
            id.require_oidc = true;
        }
        let auth = Authenticator::for_policies(&[policy], "agents", OidcOptions::default())
            .expect("builds")
            .expect("enabled");
        let err = auth
            .authenticate(&workload(), None)
            .await
            .expect_err("required")
            .to_string();
        assert!(
            err.contains("requires an OIDC ID token as the password (issuer https://issuer.example, audience db)"),
            "{err}"
        );
        let err = auth
            .authenticate(&workload(), Some("not-a-token"))
            .await
            .expect_err("required")
            .to_string();
        assert!(err.contains("not an OIDC ID token"), "{err}");
    }
}
