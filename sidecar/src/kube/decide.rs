//! Decisions on Kubernetes API requests: the built-in rules (secrets, port forwarding, token
//! requests, ephemeral containers), then the exec guardrails of the applicable policies.

use std::collections::BTreeMap;

use portcullis_crds::audit::{Decision, RuleRef};
use portcullis_crds::gateway_policy::{GuardrailAction, KubernetesAccess};
use portcullis_crds::sidecar_config::{GuardrailConfig, PolicyConfig};

use super::command::Analysis;
use super::request::RequestInfo;
use crate::policy::guardrails::{Guardrails, Verdict};

/// The pod an exec or attach targets.
#[derive(Clone, Debug, Default)]
pub struct ExecTarget {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Container (empty: the default container).
    pub container: String,
    /// The pod's labels; `None` when they could not be read (guardrails that select on labels
    /// then match, fail closed).
    pub labels: Option<BTreeMap<String, String>>,
}

/// Whether every applicable policy allows a kind of request (none applicable: no).
fn all_allow(
    policies: &[PolicyConfig],
    setting: impl Fn(&PolicyConfig) -> KubernetesAccess,
) -> bool {
    !policies.is_empty()
        && policies
            .iter()
            .all(|p| setting(p) == KubernetesAccess::Audit)
}

/// The built-in rules on requests other than exec and attach; `None` when none applies.
pub fn decide_builtin(guardrails: &Guardrails, info: &RequestInfo) -> Option<Verdict> {
    let policies = guardrails.policies();
    let resource = info.full_resource();
    let core = info.api_group.is_empty();
    if core
        && info.resource == "secrets"
        && info.subresource.is_empty()
        && matches!(info.verb.as_str(), "get" | "list" | "watch")
    {
        return Some(if all_allow(policies, |p| p.kubernetes.secret_reads) {
            Verdict::audit()
        } else {
            Verdict::builtin(
                "secret-reads",
                format!(
                    "reading secrets is refused (rule builtin/secret-reads){}",
                    if info.name.is_empty() {
                        String::new()
                    } else {
                        format!(": {}/{}", info.namespace, info.name)
                    }
                ),
            )
        });
    }
    if core && (resource == "pods/portforward" || info.subresource == "proxy") {
        return Some(if all_allow(policies, |p| p.kubernetes.port_forward) {
            Verdict::audit()
        } else {
            Verdict::builtin(
                "port-forward",
                format!("{resource} opens a tunnel past the exec guardrails and is refused (rule builtin/port-forward)"),
            )
        });
    }
    if core && resource == "serviceaccounts/token" {
        return Some(Verdict::builtin(
            "token-request",
            "requesting service-account tokens through the sidecar is refused: a token would reach the API server without the sidecar (rule builtin/token-request)".into(),
        ));
    }
    if core && resource == "pods/ephemeralcontainers" && info.verb != "get" {
        return Some(Verdict::builtin(
            "ephemeral-containers",
            "adding ephemeral (debug) containers is refused: they run commands past the exec guardrails (rule builtin/ephemeral-containers)".into(),
        ));
    }
    None
}

fn risk(d: Decision) -> u8 {
    match d {
        Decision::Allow => 0,
        Decision::Audit => 1,
        Decision::RequireApproval => 2,
        Decision::Deny => 3,
    }
}

fn decision_of(action: GuardrailAction) -> Decision {
    match action {
        GuardrailAction::Deny => Decision::Deny,
        GuardrailAction::RequireApproval => Decision::RequireApproval,
        GuardrailAction::Audit => Decision::Audit,
    }
}

fn exec_verdict(policy: &PolicyConfig, g: &GuardrailConfig, why: &str) -> Verdict {
    let suffix = g
        .message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let decision = decision_of(g.action);
    let what = match decision {
        Decision::Deny => "refused by",
        Decision::RequireApproval => "requires approval under",
        _ => "recorded by",
    };
    Verdict {
        decision,
        rule: Some(RuleRef {
            policy: policy.name.clone(),
            rule: g.name.clone(),
        }),
        reason: Some(format!(
            "exec {why} {what} guardrail {} of policy {}{suffix}",
            g.name, policy.name
        )),
    }
}

/// Whether a glob pattern matches a command line (or the line with the program's directory
/// removed). An invalid pattern matches everything (fail closed).
fn pattern_matches(pattern: &str, line: &str) -> bool {
    let matcher = match globset::GlobBuilder::new(pattern)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
    {
        Ok(g) => g.compile_matcher(),
        Err(e) => {
            tracing::warn!(%pattern, error = %e, "invalid execCommands pattern: treated as matching every command");
            return true;
        }
    };
    if matcher.is_match(line) {
        return true;
    }
    let (program, args) = line.split_once(' ').unwrap_or((line, ""));
    match program.rsplit_once('/') {
        Some((_, base)) if !base.is_empty() => {
            let short = if args.is_empty() {
                base.to_owned()
            } else {
                format!("{base} {args}")
            };
            matcher.is_match(&short)
        }
        _ => false,
    }
}

/// Whether a guardrail's target criteria (namespace, labels, container) hold.
fn targets(g: &GuardrailConfig, target: &ExecTarget) -> bool {
    if !g.exec_namespaces.is_empty() && !g.exec_namespaces.contains(&target.namespace) {
        return false;
    }
    // An exec without a container goes to the pod's default one: it may be any of them.
    if !(g.exec_containers.is_empty()
        || target.container.is_empty()
        || g.exec_containers.contains(&target.container))
    {
        return false;
    }
    if !g.exec_pod_labels.is_empty() {
        if let Some(labels) = &target.labels {
            return g
                .exec_pod_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v));
        }
    }
    true
}

/// The exec guardrails of the applicable policies that could apply to this target, in order.
fn exec_guardrails<'a>(
    guardrails: &'a Guardrails,
    target: &'a ExecTarget,
) -> impl Iterator<Item = (&'a PolicyConfig, &'a GuardrailConfig)> + 'a {
    guardrails.policies().iter().flat_map(move |p| {
        p.guardrails
            .iter()
            .filter(move |g| {
                !g.exec_commands.is_empty() && !guardrails.exempt(g) && targets(g, target)
            })
            .map(move |g| (p, g))
    })
}

/// Decide an exec: each command line it runs is judged by the first matching guardrail; the
/// riskiest judgement wins. A command that cannot be analysed takes the riskiest guardrail that
/// could apply to the target, or the unanalysable rule when none could.
pub fn decide_exec(guardrails: &Guardrails, target: &ExecTarget, analysis: &Analysis) -> Verdict {
    let mut verdict = Verdict::allow();
    for line in &analysis.commands {
        let first = exec_guardrails(guardrails, target)
            .find(|(_, g)| g.exec_commands.iter().any(|p| pattern_matches(p, line)));
        if let Some((p, g)) = first {
            let v = exec_verdict(p, g, &format!("command {line:?}"));
            if risk(v.decision) > risk(verdict.decision) {
                verdict = v;
            }
        }
    }
    if let Some(why) = &analysis.unanalysable {
        let riskiest =
            exec_guardrails(guardrails, target).max_by_key(|(_, g)| risk(decision_of(g.action)));
        let v = match riskiest {
            Some((p, g)) => exec_verdict(p, g, &format!("cannot be analysed ({why}) and is")),
            None => guardrails.unanalyzable("exec", why),
        };
        if risk(v.decision) > risk(verdict.decision) {
            verdict = v;
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::command::analyse;
    use portcullis_crds::audit::Identity;

    fn guardrail(name: &str, patterns: &[&str], action: GuardrailAction) -> GuardrailConfig {
        GuardrailConfig {
            name: name.into(),
            statement_kinds: vec![],
            tables: vec![],
            missing_where: false,
            functions: vec![],
            exec_commands: patterns.iter().map(|p| (*p).to_owned()).collect(),
            exec_namespaces: vec![],
            exec_pod_labels: BTreeMap::new(),
            exec_containers: vec![],
            rows_over: None,
            action,
            message: None,
            exempt: vec![],
            grant_covers: Default::default(),
        }
    }

    fn policy(guardrails: Vec<GuardrailConfig>) -> PolicyConfig {
        let yaml = "name: ci-exec\nguardrails: []\n";
        let mut p: PolicyConfig = serde_yaml::from_str(yaml).expect("policy");
        p.guardrails = guardrails;
        p
    }

    fn decide(p: &PolicyConfig, argv: &[&str], stdin: bool) -> Verdict {
        let g = Guardrails::for_identity(vec![p.clone()], &Identity::default(), "ci");
        let argv: Vec<String> = argv.iter().map(|w| (*w).to_owned()).collect();
        decide_exec(
            &g,
            &ExecTarget {
                namespace: "shop".into(),
                pod: "web-0".into(),
                ..Default::default()
            },
            &analyse(&argv, stdin),
        )
    }

    fn example() -> PolicyConfig {
        policy(vec![
            guardrail("shells", &["sh", "bash", "apt*"], GuardrailAction::Deny),
            guardrail(
                "destructive",
                &["rm *", "psql*"],
                GuardrailAction::RequireApproval,
            ),
            guardrail(
                "diagnostics",
                &["ls *", "cat /etc/*release*", "env"],
                GuardrailAction::Audit,
            ),
        ])
    }

    #[test]
    fn first_match_per_command_and_the_riskiest_command_wins() {
        let p = example();
        assert_eq!(decide(&p, &["ls", "-l"], false).decision, Decision::Audit);
        assert_eq!(
            decide(&p, &["/bin/rm", "-rf", "/data"], false).decision,
            Decision::RequireApproval
        );
        assert_eq!(
            decide(&p, &["sh", "-c", "ls /; rm -rf /data"], false).decision,
            Decision::RequireApproval
        );
        assert_eq!(
            decide(&p, &["sh", "-c", "ls / && apt-get install nmap"], false).decision,
            Decision::Deny
        );
        assert_eq!(decide(&p, &["date"], false).decision, Decision::Allow);
        let v = decide(&p, &["env", "rm", "x"], false);
        assert_eq!(v.rule.map(|r| r.rule), Some("destructive".into()));
    }

    #[test]
    fn unanalysable_commands_take_the_riskiest_guardrail() {
        let p = example();
        let v = decide(&p, &["sh", "-c", "$(curl -s x)"], false);
        assert_eq!(v.decision, Decision::Deny);
        assert!(v.reason.unwrap_or_default().contains("cannot be analysed"));
        // No exec guardrail at all: the unanalysable rule refuses.
        let none = policy(vec![]);
        let v = decide(&none, &["python3", "-c", "print(1)"], false);
        assert_eq!(v.rule.map(|r| r.rule), Some("unanalyzable".into()));
        assert_eq!(v.decision, Decision::Deny);
    }

    #[test]
    fn target_criteria_narrow_guardrails() {
        let mut g = guardrail("prod-only", &["*"], GuardrailAction::Deny);
        g.exec_namespaces = vec!["prod".into()];
        g.exec_pod_labels = [("tier".to_owned(), "db".to_owned())].into();
        let p = policy(vec![g]);
        let gs = Guardrails::for_identity(vec![p], &Identity::default(), "ci");
        let a = analyse(&["ls".to_owned()], false);
        let mut t = ExecTarget {
            namespace: "shop".into(),
            pod: "x".into(),
            ..Default::default()
        };
        assert_eq!(decide_exec(&gs, &t, &a).decision, Decision::Allow);
        t.namespace = "prod".into();
        t.labels = Some([("tier".to_owned(), "web".to_owned())].into());
        assert_eq!(decide_exec(&gs, &t, &a).decision, Decision::Allow);
        t.labels = None;
        assert_eq!(
            decide_exec(&gs, &t, &a).decision,
            Decision::Deny,
            "unknown labels match (fail closed)"
        );
    }

    #[test]
    fn builtin_rules() {
        let gs = Guardrails::for_identity(vec![policy(vec![])], &Identity::default(), "ci");
        let get = |m: http::Method, path: &str| {
            decide_builtin(&gs, &RequestInfo::resolve(&m, path, None))
        };
        assert_eq!(
            get(http::Method::GET, "/api/v1/namespaces/a/secrets").map(|v| v.decision),
            Some(Decision::Deny)
        );
        assert_eq!(
            get(http::Method::GET, "/api/v1/namespaces/a/pods/p/portforward").map(|v| v.decision),
            Some(Decision::Deny)
        );
        assert_eq!(
            get(
                http::Method::POST,
                "/api/v1/namespaces/a/serviceaccounts/x/token"
            )
            .map(|v| v.decision),
            Some(Decision::Deny)
        );
        assert_eq!(
            get(
                http::Method::PATCH,
                "/api/v1/namespaces/a/pods/p/ephemeralcontainers"
            )
            .map(|v| v.decision),
            Some(Decision::Deny)
        );
        assert_eq!(get(http::Method::GET, "/api/v1/namespaces/a/pods"), None);
        let mut open = policy(vec![]);
        open.kubernetes.secret_reads = KubernetesAccess::Audit;
        let gs = Guardrails::for_identity(vec![open], &Identity::default(), "ci");
        let v = decide_builtin(
            &gs,
            &RequestInfo::resolve(&http::Method::GET, "/api/v1/namespaces/a/secrets/s", None),
        );
        assert_eq!(v.map(|v| v.decision), Some(Decision::Audit));
    }
}
