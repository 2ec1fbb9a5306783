//! Who is behind a session: the workload (the pod's service account, from the downward API)
//! and, when an OIDC ID token is presented, the person or pipeline run that started it.
//! Policies select sessions by these identities (`subjects`), exempt them from guardrails
//! and masking rules (`exempt`), and may require a token (`requireOidc`).
//!
//! A principal is (issuer, subject): a User, Group or Pipeline subject of a policy matches
//! only principals of the issuers that policy lists (or of the one issuer the subject
//! names), never those of an issuer that another policy of the same resource trusts.
//! [`bind_policies`] resolves every such subject to its issuers when a resource is loaded.
//!
//! The token is taken, in this order, from the client (the PostgreSQL password, asked of
//! loopback clients; the Kubernetes bearer token), from the file a policy's `tokenFile`
//! names, or not at all (the workload alone); the choice is recorded with the session or
//! request ([`IdentitySource`]). A token that is presented and fails is refused, never
//! passed over. Clients that are not on loopback are refused unless the resource allows
//! them. A session's rights end when its token expires ([`Authenticator::deadline`]).

pub mod claims;
pub mod expiry;
pub mod http;
pub mod oidc;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_crds::audit::{Identity, IdentitySource};
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
    // A principal counts only for subjects bound to its own issuer (see `bind_policies`).
    let principal = identity
        .principal
        .as_ref()
        .filter(|p| subject.issuer.as_deref() == Some(p.issuer.as_str()));
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

/// Bind every User, Group and Pipeline subject of each policy (its `subjects` and the
/// `exempt` lists of its masking rules and guardrails) to the issuers that policy trusts:
/// a subject without `issuer` stands for one subject per issuer of the policy. A subject of
/// a policy that trusts no issuer stays unbound and matches no principal. A subject that
/// names an issuer its policy does not list is an error.
pub fn bind_policies(mut policies: Vec<PolicyConfig>) -> Result<Vec<PolicyConfig>, String> {
    for p in &mut policies {
        let trusted: Vec<String> = p
            .identity
            .iter()
            .flat_map(|i| i.issuers.iter().map(|i| i.url.clone()))
            .collect();
        let name = p.name.clone();
        let bind = |list: &mut Vec<Subject>| -> Result<(), String> {
            let mut bound = Vec::with_capacity(list.len());
            for s in list.drain(..) {
                if s.kind == SubjectKind::ServiceAccount {
                    bound.push(s);
                    continue;
                }
                match &s.issuer {
                    Some(issuer) if !trusted.contains(issuer) => {
                        return Err(format!(
                            "policy {name}: subject {} names issuer {issuer}, which is not among the policy's identity.issuers",
                            describe_subject(&s)
                        ));
                    }
                    Some(_) => bound.push(s),
                    None if trusted.is_empty() => {
                        tracing::warn!(policy = %name, subject = %describe_subject(&s), "a subject of a policy without identity.issuers matches no OIDC principal");
                        bound.push(s);
                    }
                    None => bound.extend(trusted.iter().map(|url| Subject {
                        issuer: Some(url.clone()),
                        ..s.clone()
                    })),
                }
            }
            *list = bound;
            Ok(())
        };
        bind(&mut p.subjects)?;
        for m in &mut p.masking {
            bind(&mut m.exempt)?;
        }
        for g in &mut p.guardrails {
            bind(&mut g.exempt)?;
        }
    }
    Ok(policies)
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
    /// The token is valid, but its issuer is not one a policy that requires OIDC trusts.
    #[error("OIDC identity {who} of issuer {issuer} is not trusted by policy {policy}, which requires a token of {trusted}")]
    UntrustedByPolicy {
        /// The principal.
        who: String,
        /// Its issuer.
        issuer: String,
        /// The policy.
        policy: String,
        /// The policy's issuers.
        trusted: String,
    },
    /// The client is not on loopback and the resource does not accept such clients.
    #[error("connections from {peer} are refused: this resource accepts clients on loopback only (allowRemoteClients is off)")]
    RemoteClient {
        /// The client's address.
        peer: String,
    },
    /// The client broke the password exchange.
    #[error("{0}")]
    Protocol(String),
}

/// A policy that requires a token: of one of its issuers, naming one of its subjects.
#[derive(Debug)]
struct Required {
    policy: String,
    issuers: Vec<String>,
    subjects: Vec<Subject>,
}

/// The OIDC settings of one resource, gathered from its policies.
pub struct Authenticator {
    verifiers: Vec<Arc<IssuerVerifier>>,
    required: Vec<Required>,
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
    /// The OIDC settings of a resource's policies (bound by [`bind_policies`]); `None` when no
    /// policy names an issuer. Two policies that list the same issuer URL must give it the
    /// same settings, so that a principal means one thing on the resource.
    pub fn for_policies(
        policies: &[PolicyConfig],
        namespace: &str,
        options: OidcOptions,
    ) -> Result<Option<Authenticator>, String> {
        let mut configs: Vec<(OidcIssuerConfig, String)> = Vec::new();
        let mut required = Vec::new();
        let mut token_files = Vec::new();
        for p in policies {
            let Some(id) = &p.identity else { continue };
            for issuer in &id.issuers {
                http::allowed_url(&issuer.url)
                    .map_err(|e| format!("policy {}: issuer {e}", p.name))?;
                match configs.iter().find(|(c, _)| c.url == issuer.url) {
                    Some((c, _)) if c == issuer => {}
                    Some((_, other)) => {
                        return Err(format!(
                            "policies {other} and {} list issuer {} with different settings; give it the same audiences, claim mappings, rules, algorithms and leeway in both",
                            p.name, issuer.url
                        ))
                    }
                    None => configs.push((issuer.clone(), p.name.clone())),
                }
            }
            if id.require_oidc {
                let people: Vec<Subject> = p
                    .subjects
                    .iter()
                    .filter(|s| s.kind != SubjectKind::ServiceAccount)
                    .cloned()
                    .collect();
                required.push(Required {
                    policy: p.name.clone(),
                    issuers: id.issuers.iter().map(|i| i.url.clone()).collect(),
                    subjects: people,
                });
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
        let verifiers = configs
            .into_iter()
            .map(|(c, _)| IssuerVerifier::new(c, http.clone(), options).map(Arc::new))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Some(Authenticator {
            verifiers,
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

    /// The identity of a session or request, by the one precedence: the client's token (a
    /// JWT it sent), else the token in a policy's `tokenFile`, else the workload alone. A
    /// token that is presented and fails validation is refused; where a token is required,
    /// the workload alone is refused.
    pub async fn resolve(
        &self,
        workload: &Identity,
        client: Option<&str>,
    ) -> Result<(Identity, IdentitySource), AuthError> {
        let client = client.map(str::trim).filter(|t| !t.is_empty());
        let mut not_a_token = false;
        if let Some(token) = client {
            if matches!(oidc::peek(token), Err(TokenError::NotAJwt)) {
                // A password that is not a token at all means "no token from the client".
                not_a_token = true;
            } else {
                let identity = self.authenticate(workload, token).await?;
                return Ok((identity, IdentitySource::ClientToken));
            }
        }
        if let Some(token) = self.token_from_file().await {
            let identity = self.authenticate(workload, &token).await?;
            return Ok((identity, IdentitySource::TokenFile));
        }
        if self.required() {
            return Err(if not_a_token {
                AuthError::Token {
                    source: TokenError::NotAJwt,
                    expected: self.expected(),
                }
            } else {
                AuthError::Required {
                    expected: self.expected(),
                }
            });
        }
        Ok((workload.clone(), IdentitySource::Workload))
    }

    /// When the rights of an identity end: the expiry of its principal's token plus the
    /// issuer's leeway. `None` for the workload alone.
    pub fn deadline(&self, identity: &Identity) -> Option<SystemTime> {
        let p = identity.principal.as_ref()?;
        let exp = p.expires?;
        let leeway = self
            .verifiers
            .iter()
            .find(|v| v.config().url == p.issuer)
            .map_or(0, |v| v.config().clock_skew_seconds);
        // Verified tokens carry no exp past the year 9999; should one, the rights end at
        // the latest time this platform holds rather than never.
        let secs = exp.saturating_add(leeway);
        Some(
            UNIX_EPOCH
                .checked_add(Duration::from_secs(secs))
                .or_else(|| oidc::date_time(oidc::MAX_NUMERIC_DATE))
                .unwrap_or(UNIX_EPOCH),
        )
    }

    /// The issuer's key that signed the principal's token, to watch for its withdrawal.
    /// `None` for the workload alone, or when the token named no key id.
    pub fn signing_key(&self, identity: &Identity) -> Option<expiry::SigningKey> {
        let p = identity.principal.as_ref()?;
        let kid = p.key_id.clone()?;
        let verifier = self
            .verifiers
            .iter()
            .find(|v| v.config().url == p.issuer)?
            .clone();
        Some(expiry::SigningKey { verifier, kid })
    }

    /// Validate a token and return the session identity: the workload with the token's
    /// principal. Checks the issuers and subjects of policies that require OIDC.
    pub async fn authenticate(
        &self,
        workload: &Identity,
        token: &str,
    ) -> Result<Identity, AuthError> {
        let token = token.trim();
        let peeked = oidc::peek(token).map_err(|source| AuthError::Token {
            source,
            expected: self.expected(),
        })?;
        let iss = peeked
            .claims
            .get("iss")
            .and_then(claim_string)
            .unwrap_or_default();
        let verified = match self.verifiers.iter().find(|v| v.config().url == iss) {
            Some(v) => v.verify(token, &peeked).await,
            None => Err(TokenError::UntrustedIssuer {
                found: iss,
                trusted: self
                    .verifiers
                    .iter()
                    .map(|v| v.config().url.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
        .map_err(|source| AuthError::Token {
            source,
            expected: self.expected(),
        })?;
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
        let who = if principal.groups.is_empty() {
            format!("{} {}", principal.kind, principal.name)
        } else {
            format!(
                "{} {} (groups {})",
                principal.kind,
                principal.name,
                principal.groups.join(", ")
            )
        };
        let issuer = principal.issuer.clone();
        let identity = Identity {
            principal: Some(principal),
            ..workload.clone()
        };
        for r in &self.required {
            if !r.issuers.contains(&issuer) {
                return Err(AuthError::UntrustedByPolicy {
                    who,
                    issuer,
                    policy: r.policy.clone(),
                    trusted: r.issuers.join(", "),
                });
            }
            if !r.subjects.is_empty() && !matches_any(&r.subjects, &identity, &self.namespace) {
                return Err(AuthError::NotASubject {
                    who,
                    policy: r.policy.clone(),
                    subjects: r
                        .subjects
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
            issuer: (kind != SubjectKind::ServiceAccount).then(|| "https://issuer".to_owned()),
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
                key_id: None,
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

    #[test]
    fn a_subject_matches_principals_of_its_own_issuer_only() {
        let alice = with_principal("User", "alice", &["dpo"], &[]);
        let mut dpo = subject(SubjectKind::Group, Some("dpo"), &[]);
        assert!(subject_matches(&dpo, &alice, "agents"));
        dpo.issuer = Some("https://partner".into());
        assert!(!subject_matches(&dpo, &alice, "agents"));
        dpo.issuer = None;
        assert!(!subject_matches(&dpo, &alice, "agents"), "unbound");
        let mut user = subject(SubjectKind::User, Some("alice"), &[]);
        user.issuer = Some("https://partner".into());
        assert!(!subject_matches(&user, &alice, "agents"));
    }

    #[test]
    fn binding_gives_each_policy_its_own_issuers() {
        let yaml = |issuers: &[&str], exempt_issuer: Option<&str>| -> PolicyConfig {
            let mut p: PolicyConfig = serde_yaml::from_str(&format!(
                "name: p\nsubjects:\n- kind: ServiceAccount\n  name: agent\nguardrails:\n- name: g\n  tables: [t]\n  action: deny\n  exempt:\n  - kind: Group\n    name: dpo\n{}",
                exempt_issuer.map(|i| format!("    issuer: {i}\n")).unwrap_or_default()
            ))
            .expect("policy");
            if !issuers.is_empty() {
                p.identity = Some(
                    serde_yaml::from_str(&format!(
                        "issuers:\n{}",
                        issuers
                            .iter()
                            .map(|u| format!("- url: {u}\n  audiences: [db]\n"))
                            .collect::<String>()
                    ))
                    .expect("identity"),
                );
            }
            p
        };
        let bound = bind_policies(vec![yaml(&["https://a", "https://b"], None)]).expect("binds");
        let issuers: Vec<_> = bound[0].guardrails[0]
            .exempt
            .iter()
            .map(|s| s.issuer.clone())
            .collect();
        assert_eq!(
            issuers,
            vec![Some("https://a".to_owned()), Some("https://b".to_owned())]
        );
        assert_eq!(bound[0].subjects[0].issuer, None, "service accounts stay");
        let bound = bind_policies(vec![yaml(&[], None)]).expect("binds");
        assert_eq!(bound[0].guardrails[0].exempt[0].issuer, None, "unbound");
        let err = bind_policies(vec![yaml(&["https://a"], Some("https://b"))])
            .expect_err("foreign issuer");
        assert!(err.contains("names issuer https://b"), "{err}");
    }

    #[tokio::test]
    async fn without_a_token_the_workload_stays_or_the_connection_is_refused() {
        let issuer: OidcIssuerConfig = serde_yaml::from_str(
            "url: https://issuer.example\naudiences: [db]\nalgorithms: [RS256]\n",
        )
        .expect("issuer");
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
            auth.resolve(&workload(), None).await.expect("optional"),
            (workload(), IdentitySource::Workload)
        );
        assert_eq!(
            auth.resolve(&workload(), Some("not-a-token"))
                .await
                .expect("optional"),
            (workload(), IdentitySource::Workload)
        );
        if let Some(id) = policy.identity.as_mut() {
            id.require_oidc = true;
        }
        let auth = Authenticator::for_policies(&[policy], "agents", OidcOptions::default())
            .expect("builds")
            .expect("enabled");
        let err = auth
            .resolve(&workload(), None)
            .await
            .expect_err("required")
            .to_string();
        assert!(
            err.contains("requires an OIDC ID token as the password (issuer https://issuer.example, audience db)"),
            "{err}"
        );
        let err = auth
            .resolve(&workload(), Some("not-a-token"))
            .await
            .expect_err("required")
            .to_string();
        assert!(err.contains("not an OIDC ID token"), "{err}");
    }
}
