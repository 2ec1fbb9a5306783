//! Compile the GatewayPolicies and ProtectedResources of one namespace into the
//! [`SidecarConfig`] its sidecars run. Deterministic: the same objects give the same document
//! and so the same content hash.
//!
//! Beyond [`PolicyConfig::compile`] (names, approvals, ranges) this checks what only the
//! operator can: regular expressions compile (with the `regex` crate, the engine the sidecar
//! uses), rules do not contradict each other, and label selectors parse.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kube::core::{Selector, SelectorExt};
use kube::ResourceExt;
use portcullis_crds::{
    AuditConfig, CredentialFiles, Detector, GatewayPolicy, GatewayPolicySpec, MaskingConfig,
    PolicyConfig, ProtectedResource, ResourceConfig, ResourceType, ServerTlsFiles, SidecarConfig,
    TlsMode, UpstreamConfig, SIDECAR_CONFIG_API_VERSION,
};

use crate::inject::{
    AUDIT_TOKEN_PATH, CONFIG_DIR, CREDENTIALS_DIR, MASKING_KEY_DIR, MASKING_KEY_KEY,
    SERVICE_ACCOUNT_DIR, SIDECAR_TLS_DIR, UPSTREAM_CA_DIR,
};

/// Largest compiled size of a masking regex (bytes of the compiled program).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compile and check one policy. The error is the message users see in the policy's
/// `Accepted` condition and in the validating webhook's refusal.
pub fn check_policy(
    name: &str,
    generation: i64,
    spec: &GatewayPolicySpec,
) -> Result<PolicyConfig, String> {
    let compiled = PolicyConfig::compile(name, generation, spec).map_err(|e| e.to_string())?;
    let mut rule_names = BTreeMap::new();
    for rule in &spec.masking {
        if rule_names.insert(rule.name.as_str(), ()).is_some() {
            return Err(format!("masking rule name {} is used twice", rule.name));
        }
        match (rule.detector, &rule.pattern) {
            (Some(Detector::Regex), Some(pattern)) => {
                regex::RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| {
                        format!(
                            "masking rule {}: pattern {pattern:?} is not a valid regular expression: {}",
                            rule.name,
                            one_line(&e.to_string())
                        )
                    })?;
            }
            (Some(Detector::Regex), None) => {
                return Err(format!(
                    "masking rule {}: detector regex needs a pattern",
                    rule.name
                ))
            }
            (_, Some(_)) => {
                return Err(format!(
                    "masking rule {}: pattern is only allowed with detector regex",
                    rule.name
                ))
            }
            _ => {}
        }
    }
    // The same column masked two ways would make the result depend on rule order.
    let mut columns: BTreeMap<String, (&str, portcullis_crds::MaskingStrategy)> = BTreeMap::new();
    for rule in &compiled.masking {
        if !rule.exempt.is_empty() {
            continue;
        }
        for c in &rule.columns {
            let key = c.to_string();
            if let Some((other, strategy)) = columns.get(&key) {
                if *strategy != rule.strategy {
                    return Err(format!(
                        "conflicting masking rules: {other} and {} both mask {key}, with strategies {} and {}; keep one",
                        rule.name,
                        strategy_name(*strategy),
                        strategy_name(rule.strategy)
                    ));
                }
            } else {
                columns.insert(key, (rule.name.as_str(), rule.strategy));
            }
        }
    }
    let mut guardrail_names = BTreeMap::new();
    for g in &spec.guardrails {
        if guardrail_names.insert(g.name.as_str(), ()).is_some() {
            return Err(format!("guardrail name {} is used twice", g.name));
        }
        let m = &g.r#match;
        let sql = !m.statement_kinds.is_empty()
            || !m.tables.is_empty()
            || m.missing_where
            || !m.functions.is_empty()
            || m.rows_over.is_some();
        if sql && !m.exec_commands.is_empty() {
            return Err(format!(
                "conflicting criteria in guardrail {}: execCommands match Kubernetes exec sessions and the other criteria match SQL statements, so together they never match; split it into two guardrails",
                g.name
            ));
        }
    }
    if let Some(sel) = &spec.resource_selector {
        Selector::try_from(sel.clone())
            .map_err(|e| format!("spec.resourceSelector is not a valid label selector: {e}"))?;
    }
    Ok(compiled)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn strategy_name(s: portcullis_crds::MaskingStrategy) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// What compiling a namespace did with one policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyOutcome {
    /// `metadata.generation` of the policy.
    pub generation: i64,
    /// The compiler's refusal, if the current spec does not compile.
    pub error: Option<String>,
    /// Whether an earlier compiled version of the policy stays in force (after a refusal).
    pub kept_previous: bool,
    /// Number of resources the policy governs.
    pub selected: i32,
}

/// The compiled namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    /// The document for the sidecars.
    pub config: SidecarConfig,
    /// Per policy name.
    pub policies: BTreeMap<String, PolicyOutcome>,
    /// Resources left out, with the reason.
    pub skipped_resources: BTreeMap<String, String>,
}

fn upstream(r: &ProtectedResource) -> Option<UpstreamConfig> {
    let endpoint = r.spec.endpoint.as_ref()?;
    let name = r.name_any();
    let tls = r.spec.tls.as_ref();
    let default_mode = match r.spec.r#type {
        ResourceType::Kubernetes => TlsMode::VerifyFull,
        _ => TlsMode::Require,
    };
    Some(UpstreamConfig {
        host: endpoint.host.clone(),
        port: u16::try_from(endpoint.port).ok()?,
        database: r.spec.database.clone(),
        tls_mode: tls.map(|t| t.mode).unwrap_or(default_mode),
        ca_file: tls
            .and_then(|t| t.ca_secret_ref.as_ref())
            .map(|_| PathBuf::from(format!("{UPSTREAM_CA_DIR}/{name}/ca.crt"))),
        server_name: tls.and_then(|t| t.server_name.clone()),
    })
}

/// Key of the audit service's CA certificate in the sidecar ConfigMap (mounted at
/// [`CONFIG_DIR`] in the sidecar).
pub const AUDIT_CA_KEY: &str = "audit-ca.crt";

/// The audit service the sidecars ship their spool to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditTarget {
    /// Base URL (`https://NAME.NAMESPACE.svc:443`).
    pub url: String,
    /// PEM CA certificate that verifies it; the operator copies it into each namespace's
    /// sidecar ConfigMap.
    pub ca_pem: String,
}

/// Point a compiled configuration at the audit service: the URL, the CA from the sidecar
/// ConfigMap, and the projected `portcullis-audit` token the injector mounts into the sidecar.
pub fn ship_to(config: &mut SidecarConfig, target: &AuditTarget) {
    config.audit.service_url = Some(target.url.clone());
    config.audit.ca_file = Some(PathBuf::from(format!("{CONFIG_DIR}/{AUDIT_CA_KEY}")));
    config.audit.token_file = Some(PathBuf::from(format!(
        "{SERVICE_ACCOUNT_DIR}/{AUDIT_TOKEN_PATH}"
    )));
}

/// Compile a namespace. `previous` is the configuration in force; a policy that no longer
/// compiles keeps its version from there.
/// Why a resource of a type that no sidecar serves yet is left out of the configuration.
pub fn not_served(kind: ResourceType) -> String {
    format!(
        "type {} is not served by this version: no sidecar listens for it and agents get no address for it",
        kind.as_str()
    )
}

pub fn compile_namespace(
    namespace: &str,
    policies: &[&GatewayPolicy],
    resources: &[&ProtectedResource],
    previous: Option<&SidecarConfig>,
) -> Compiled {
    let mut policies: Vec<&GatewayPolicy> = policies
        .iter()
        .copied()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    policies.sort_by_key(|p| p.name_any());
    let mut resources: Vec<&ProtectedResource> = resources
        .iter()
        .copied()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .collect();
    resources.sort_by_key(|r| r.name_any());

    let mut outcomes = BTreeMap::new();
    let mut compiled: Vec<(PolicyConfig, Option<Selector>)> = Vec::new();
    for p in &policies {
        let name = p.name_any();
        let generation = p.metadata.generation.unwrap_or_default();
        let selector = p
            .spec
            .resource_selector
            .clone()
            .and_then(|s| Selector::try_from(s).ok());
        let mut outcome = PolicyOutcome {
            generation,
            error: None,
            kept_previous: false,
            selected: 0,
        };
        match check_policy(&name, generation, &p.spec) {
            Ok(pc) => compiled.push((pc, selector)),
            Err(e) => {
                outcome.error = Some(e);
                if let Some(prev) =
                    previous.and_then(|c| c.policies.iter().find(|q| q.name == name))
                {
                    outcome.kept_previous = true;
                    // The selector of the previous version is not in the document: keep the
                    // previous bindings of this policy instead.
                    compiled.push((prev.clone(), None));
                }
            }
        }
        outcomes.insert(name, outcome);
    }

    let mut skipped = BTreeMap::new();
    let mut ports: BTreeMap<i32, String> = BTreeMap::new();
    let mut out_resources = Vec::new();
    for r in &resources {
        let name = r.name_any();
        if let Some(other) = ports.get(&r.spec.listen_port) {
            skipped.insert(
                name.clone(),
                format!(
                    "listenPort {} is already used by ProtectedResource {other}",
                    r.spec.listen_port
                ),
            );
            continue;
        }
        let Ok(listen_port) = u16::try_from(r.spec.listen_port) else {
            skipped.insert(name.clone(), "listenPort is out of range".to_owned());
            continue;
        };
        if !r.spec.r#type.is_served() {
            skipped.insert(name.clone(), not_served(r.spec.r#type));
            continue;
        }
        let upstream = upstream(r);
        if r.spec.r#type != ResourceType::Kubernetes && upstream.is_none() {
            skipped.insert(
                name.clone(),
                "spec.endpoint is missing or invalid".to_owned(),
            );
            continue;
        }
        ports.insert(r.spec.listen_port, name.clone());
        let labels = r.labels();
        let mut bound = Vec::new();
        for (pc, selector) in &compiled {
            let outcome = outcomes.get(&pc.name);
            let matches = match (selector, outcome) {
                (_, Some(o)) if o.kept_previous => previous
                    .and_then(|c| c.resources.iter().find(|x| x.name == name))
                    .is_some_and(|x| x.policies.contains(&pc.name)),
                (Some(sel), _) => sel.matches(labels),
                (None, _) => true,
            };
            if matches {
                bound.push(pc.name.clone());
            }
        }
        for p in &bound {
            if let Some(o) = outcomes.get_mut(p) {
                o.selected += 1;
            }
        }
        out_resources.push(ResourceConfig {
            name: name.clone(),
            r#type: r.spec.r#type,
            listen_address: "127.0.0.1".to_owned(),
            listen_port,
            upstream,
            credentials: r
                .spec
                .credentials_secret_ref
                .as_ref()
                .map(|c| CredentialFiles {
                    username_file: PathBuf::from(format!(
                        "{CREDENTIALS_DIR}/{name}/{}",
                        c.username_key
                    )),
                    password_file: PathBuf::from(format!(
                        "{CREDENTIALS_DIR}/{name}/{}",
                        c.password_key
                    )),
                }),
            policies: bound,
            server_tls: (r.spec.r#type == ResourceType::Kubernetes).then(|| ServerTlsFiles {
                cert_file: PathBuf::from(format!("{SIDECAR_TLS_DIR}/tls.crt")),
                key_file: PathBuf::from(format!("{SIDECAR_TLS_DIR}/tls.key")),
            }),
            token_file: (r.spec.r#type == ResourceType::Kubernetes)
                .then(|| PathBuf::from(format!("{SERVICE_ACCOUNT_DIR}/token"))),
            allow_remote_clients: false,
        });
    }

    Compiled {
        config: SidecarConfig {
            api_version: SIDECAR_CONFIG_API_VERSION.to_owned(),
            namespace: namespace.to_owned(),
            resources: out_resources,
            policies: compiled.into_iter().map(|(pc, _)| pc).collect(),
            audit: AuditConfig::default(),
            masking: MaskingConfig {
                hash_key_file: Some(PathBuf::from(format!(
                    "{MASKING_KEY_DIR}/{MASKING_KEY_KEY}"
                ))),
                ..MaskingConfig::default()
            },
            admin_listen: format!("0.0.0.0:{}", crate::inject::ADMIN_PORT),
            protected_secrets: {
                let mut names: Vec<String> = resources
                    .iter()
                    .filter_map(|r| r.spec.credentials_secret_ref.as_ref())
                    .map(|c| c.name.clone())
                    .collect();
                names.sort();
                names.dedup();
                names
            },
        },
        policies: outcomes,
        skipped_resources: skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(name: &str, generation: i64, spec: serde_json::Value) -> GatewayPolicy {
        serde_json::from_value(json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "GatewayPolicy",
            "metadata": {"name": name, "namespace": "agents", "generation": generation},
            "spec": spec,
        }))
        .expect("policy")
    }

    fn resource(name: &str, port: i32, labels: serde_json::Value) -> ProtectedResource {
        serde_json::from_value(json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "ProtectedResource",
            "metadata": {"name": name, "namespace": "agents", "labels": labels},
            "spec": {"type": "postgres", "endpoint": {"host": "db", "port": 5432},
                     "credentialsSecretRef": {"name": format!("{name}-creds")}, "listenPort": port},
        }))
        .expect("resource")
    }

    #[test]
    fn regex_errors_and_conflicts_are_refused_with_a_readable_message() {
        let bad = policy(
            "p",
            1,
            json!({"masking": [{"name": "t", "detector": "regex", "pattern": "a(b"}]}),
        );
        let err = check_policy("p", 1, &bad.spec).expect_err("bad regex");
        assert!(
            err.starts_with("masking rule t: pattern \"a(b\" is not a valid regular expression"),
            "{err}"
        );
        let conflict = policy(
            "p",
            1,
            json!({"masking": [
            {"name": "a", "columns": ["customers.email"], "strategy": "hash"},
            {"name": "b", "columns": ["public.customers.email"], "strategy": "null"}]}),
        );
        let err = check_policy("p", 1, &conflict.spec).expect_err("conflict");
        assert_eq!(err, "conflicting masking rules: a and b both mask public.customers.email, with strategies hash and null; keep one");
        let mixed = policy(
            "p",
            1,
            json!({"guardrails": [
            {"name": "g", "match": {"statementKinds": ["delete"], "execCommands": ["rm *"]}, "action": "deny"}]}),
        );
        assert!(check_policy("p", 1, &mixed.spec)
            .expect_err("mixed")
            .starts_with("conflicting criteria in guardrail g"));
        let same = policy(
            "p",
            1,
            json!({"masking": [
            {"name": "a", "columns": ["customers.email"], "strategy": "hash"},
            {"name": "b", "columns": ["customers.email"], "strategy": "hash"}]}),
        );
        assert!(check_policy("p", 1, &same.spec).is_ok());
    }

    #[test]
    fn namespace_compiles_deterministically_with_selectors_and_port_conflicts() {
        let p1 = policy(
            "zeta",
            1,
            json!({"resourceSelector": {"matchLabels": {"tier": "data"}}}),
        );
        let p2 = policy("alpha", 1, json!({}));
        let a = resource("orders", 5433, json!({"tier": "data"}));
        let b = resource("audit", 5434, json!({}));
        let c = resource("copy", 5433, json!({}));
        let one = compile_namespace("agents", &[&p1, &p2], &[&a, &b, &c], None);
        let two = compile_namespace("agents", &[&p2, &p1], &[&c, &b, &a], None);
        assert_eq!(one, two);
        assert_eq!(one.config.content_hash(), two.config.content_hash());
        let names: Vec<(&str, Vec<String>)> = one
            .config
            .resources
            .iter()
            .map(|r| (r.name.as_str(), r.policies.clone()))
            .collect();
        // "copy" sorts before "orders" and keeps port 5433.
        assert_eq!(
            names,
            vec![
                ("audit", vec!["alpha".to_owned()]),
                ("copy", vec!["alpha".to_owned()])
            ]
        );
        assert_eq!(
            one.skipped_resources.get("orders").map(String::as_str),
            Some("listenPort 5433 is already used by ProtectedResource copy")
        );
        assert_eq!(one.policies["zeta"].selected, 0);
        assert_eq!(one.policies["alpha"].selected, 2);
        one.config.check().expect("consistent");
        let yaml = one.config.to_yaml().expect("yaml");
        assert_eq!(SidecarConfig::from_yaml(&yaml).expect("parse"), one.config);
    }

    #[test]
    fn a_policy_that_stops_compiling_keeps_its_last_good_version() {
        let good = policy(
            "gdpr",
            1,
            json!({"masking": [{"name": "e", "detector": "email"}]}),
        );
        let r = resource("db", 5432, json!({}));
        let first = compile_namespace("agents", &[&good], &[&r], None);
        let broken = policy(
            "gdpr",
            2,
            json!({"masking": [{"name": "e", "detector": "regex", "pattern": "("}]}),
        );
        let second = compile_namespace("agents", &[&broken], &[&r], Some(&first.config));
        assert_eq!(second.config, first.config);
        let outcome = &second.policies["gdpr"];
        assert!(outcome.kept_previous);
        assert_eq!(outcome.generation, 2);
        assert!(outcome
            .error
            .as_deref()
            .is_some_and(|e| e.contains("not a valid regular expression")));
        // Without an earlier version, the policy is left out.
        let fresh = compile_namespace("agents", &[&broken], &[&r], None);
        assert!(fresh.config.policies.is_empty());
        assert!(!fresh.policies["gdpr"].kept_previous);
    }
}

#[cfg(test)]
mod audit_tests {
    use super::*;

    #[test]
    fn shipping_points_at_the_mounted_ca_and_projected_token() {
        let mut compiled = compile_namespace("shop", &[], &[], None);
        assert_eq!(compiled.config.audit.service_url, None);
        ship_to(
            &mut compiled.config,
            &AuditTarget {
                url: "https://portcullis-audit.portcullis-system.svc:443".into(),
                ca_pem: String::new(),
            },
        );
        compiled.config.check().expect("a consistent document");
        let audit = &compiled.config.audit;
        assert_eq!(
            audit.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/portcullis/config/audit-ca.crt"))
        );
        assert_eq!(
            audit.token_file.as_deref(),
            Some(std::path::Path::new(
                "/var/run/secrets/kubernetes.io/serviceaccount/audit-token"
            ))
        );
    }
}
