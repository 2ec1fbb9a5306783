//! Decisions on Kubernetes API requests: the built-in rules (secrets, port forwarding, token
//! requests, ephemeral containers), then for exec and attach the guardrails (denylist style)
//! and the exec allow-lists (allow-list style) of the applicable policies, on the commands
//! the shell analysis ([`crate::shell`]) proves.

use std::collections::BTreeMap;

use portcullis_crds::audit::{Decision, RuleRef};
use portcullis_crds::gateway_policy::{GuardrailAction, KubernetesAccess};
use portcullis_crds::sidecar_config::{GuardrailConfig, PolicyConfig};

use portcullis_crds::exec_policy::{ExecAllow, ExecDefault, ExecSettings};

use super::request::RequestInfo;
use crate::policy::guardrails::{Guardrails, Verdict};
use crate::shell::tables::SYSTEM_DIRS;
use crate::shell::{basename, Analysis, Command, Word};

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

/// A token of a glob pattern.
enum Tok {
    Lit(char),
    Any,
    Star,
    Class(Vec<(char, char)>, bool),
}

/// The tokens of a glob pattern; `None` for syntax this reading does not cover (`{a,b}`).
fn glob_tokens(pattern: &str) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => out.push(Tok::Star),
            '?' => out.push(Tok::Any),
            '\\' => out.push(Tok::Lit(chars.next()?)),
            '{' | '}' => return None,
            '[' => {
                let negated = matches!(chars.peek(), Some('!') | Some('^'));
                if negated {
                    chars.next();
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let c = chars.next()?;
                    if c == ']' && !first {
                        break;
                    }
                    first = false;
                    if chars.peek() == Some(&'-') {
                        chars.next();
                        match chars.peek() {
                            Some(&']') | None => {
                                ranges.push((c, c));
                                ranges.push(('-', '-'));
                            }
                            Some(&end) => {
                                chars.next();
                                ranges.push((c, end));
                            }
                        }
                    } else {
                        ranges.push((c, c));
                    }
                }
                out.push(Tok::Class(ranges, negated));
            }
            c => out.push(Tok::Lit(c)),
        }
    }
    Some(out)
}

fn tok_matches(t: &Tok, c: char) -> bool {
    match t {
        Tok::Lit(l) => *l == c,
        Tok::Any | Tok::Star => true,
        Tok::Class(ranges, negated) => ranges.iter().any(|(a, b)| *a <= c && c <= *b) != *negated,
    }
}

/// Whether a glob pattern could match a command line whose unknown words may be any text:
/// `line` holds `Some(c)` for known characters and `None` for an unknown word.
fn could_match(pattern: &str, line: &[Option<char>]) -> bool {
    let Some(p) = glob_tokens(pattern) else {
        return true;
    };
    let (pn, ln) = (p.len(), line.len());
    let mut seen = vec![false; (pn + 1) * (ln + 1)];
    let mut stack = vec![(0usize, 0usize)];
    while let Some((i, j)) = stack.pop() {
        let at = i * (ln + 1) + j;
        if seen[at] {
            continue;
        }
        seen[at] = true;
        if i == pn && j == ln {
            return true;
        }
        if i < pn && matches!(p[i], Tok::Star) {
            stack.push((i + 1, j));
            if j < ln {
                stack.push((i, j + 1));
            }
        }
        if j < ln && line[j].is_none() {
            // The unknown word produces nothing more, or a character the pattern wants.
            stack.push((i, j + 1));
            if i < pn && !matches!(p[i], Tok::Star) {
                stack.push((i + 1, j));
            }
        }
        if let (Some(t), Some(Some(c))) = (p.get(i), line.get(j)) {
            if !matches!(t, Tok::Star) && tok_matches(t, *c) {
                stack.push((i + 1, j + 1));
            }
        }
    }
    false
}

/// Whether a pattern could match a command with unknown words (with the program's
/// directory or without).
fn pattern_could_match(pattern: &str, cmd: &Command) -> bool {
    let render = |words: &[Word]| {
        let mut line: Vec<Option<char>> = Vec::new();
        for (n, w) in words.iter().enumerate() {
            if n > 0 {
                line.push(Some(' '));
            }
            match w {
                Word::Known(t) => line.extend(t.chars().map(Some)),
                Word::Unknown(_) => line.push(None),
            }
        }
        line
    };
    if could_match(pattern, &render(&cmd.argv)) {
        return true;
    }
    match cmd.argv.first() {
        Some(Word::Known(p)) if p.contains('/') => {
            let mut short = cmd.argv.clone();
            short[0] = Word::Known(basename(p).to_owned());
            could_match(pattern, &render(&short))
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

/// The policies in allow-list style (an `exec` section whose default is not `allow`).
fn allow_list_policies(
    guardrails: &Guardrails,
) -> impl Iterator<Item = (&PolicyConfig, &ExecSettings)> {
    guardrails.policies().iter().filter_map(|p| match &p.exec {
        Some(e) if e.default != ExecDefault::Allow => Some((p, e)),
        _ => None,
    })
}

/// Whether an argument matches an allow-list pattern: `*` does not cross `/`, and an argument
/// with a `..` path segment matches only a pattern that has one.
fn argument_matches(pattern: &str, arg: &str) -> bool {
    let dotdot = |s: &str| s.split('/').any(|seg| seg == "..");
    if dotdot(arg) && !dotdot(pattern) {
        return false;
    }
    match globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
    {
        Ok(g) => g.compile_matcher().is_match(arg),
        Err(e) => {
            tracing::warn!(%pattern, error = %e, "invalid exec allow pattern: matches nothing");
            false
        }
    }
}

/// Whether an allow-list entry covers a proven command on this target.
fn entry_allows(e: &ExecAllow, target: &ExecTarget, cmd: &Command) -> bool {
    if !e.namespaces.is_empty() && !e.namespaces.contains(&target.namespace) {
        return false;
    }
    if !e.containers.is_empty() && !e.containers.contains(&target.container) {
        return false;
    }
    if !e.pod_labels.is_empty() {
        match &target.labels {
            Some(labels) if e.pod_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) => {}
            _ => return false,
        }
    }
    let Some(program) = cmd.program().known() else {
        return false;
    };
    if !e.programs.iter().any(|p| p == program) {
        return false;
    }
    cmd.argv[1..cmd.own.min(cmd.argv.len())].iter().all(|a| {
        a.known()
            .is_some_and(|a| e.args.iter().any(|p| argument_matches(p, a)))
    })
}

/// Why an allow-list policy does not allow the exec, or `None` when it does.
fn allow_list_refusal(
    settings: &ExecSettings,
    target: &ExecTarget,
    analysis: &Analysis,
    attach: bool,
) -> Option<String> {
    if let Some(u) = analysis.unproven.first() {
        return Some(format!("is unproven at the word {:?}: {}", u.word, u.why));
    }
    if attach {
        return None;
    }
    for cmd in &analysis.commands {
        let line = cmd.line();
        if let Some(w) = cmd.first_unknown() {
            return Some(format!(
                "is unproven at the word {:?} of {line:?}: it is only known at run time",
                w.text()
            ));
        }
        if let Some(e) = cmd.env.first() {
            return Some(format!(
                "sets {:?} for {line:?}, and environment assignments are not on the allow-list",
                e.text()
            ));
        }
        if let Some(w) = cmd.writes.first() {
            return Some(format!("writes {:?} with {line:?}", w.text()));
        }
        if !settings.allow.iter().any(|e| entry_allows(e, target, cmd)) {
            let own: Vec<&str> = cmd.argv[..cmd.own.min(cmd.argv.len())]
                .iter()
                .map(Word::text)
                .collect();
            return Some(format!(
                "runs {:?}, which is not on the allow-list",
                own.join(" ")
            ));
        }
    }
    None
}

/// Decide an exec (or attach, which runs nothing new and is judged by whether it types into
/// the running process).
///
/// - Guardrails (denylist style): each proven command line is judged by the first matching
///   guardrail; a command with words only known at run time by the riskiest guardrail that
///   could match it. Unproven parts, output redirections into files, and programs named by
///   a path outside the system directories take the riskiest guardrail that could apply to
///   the target (or the unanalysable rule when no policy has an exec allow-list).
/// - Allow-list policies: every command must be proven and on the list; anything else takes
///   the policy's `exec.default`, with the word that was not proven.
///
/// The riskiest judgement wins.
pub fn decide_exec(
    guardrails: &Guardrails,
    target: &ExecTarget,
    analysis: &Analysis,
    attach: bool,
) -> Verdict {
    let mut verdict = Verdict::allow();
    let raise = |v: Verdict, verdict: &mut Verdict| {
        if risk(v.decision) > risk(verdict.decision) {
            *verdict = v;
        }
    };
    // Unproven parts first, so that their reason is the one given when they decide.
    let mut unproven: Vec<String> = analysis.unproven.iter().map(ToString::to_string).collect();
    for cmd in &analysis.commands {
        let line = cmd.line();
        for w in &cmd.writes {
            unproven.push(format!("{:?}: {line:?} writes this file", w.text()));
        }
        if let Some(program) = cmd.program().known() {
            let dir = program
                .rsplit_once('/')
                .map(|(d, _)| if d.is_empty() { "/" } else { d });
            if let Some(dir) = dir {
                if !SYSTEM_DIRS.contains(&dir) {
                    unproven.push(format!(
                        "{program:?}: a program outside the system directories cannot be judged by its name"
                    ));
                }
            }
        }
    }
    if !unproven.is_empty() {
        let why = unproven.join("; ");
        let riskiest =
            exec_guardrails(guardrails, target).max_by_key(|(_, g)| risk(decision_of(g.action)));
        match riskiest {
            Some((p, g)) => raise(
                exec_verdict(p, g, &format!("cannot be analysed ({why}) and is")),
                &mut verdict,
            ),
            None if allow_list_policies(guardrails).next().is_none() => {
                raise(guardrails.unanalyzable("exec", &why), &mut verdict)
            }
            None => {}
        }
    }
    for cmd in &analysis.commands {
        let line = cmd.line();
        if cmd.fully_known() {
            let first = exec_guardrails(guardrails, target)
                .find(|(_, g)| g.exec_commands.iter().any(|p| pattern_matches(p, &line)));
            if let Some((p, g)) = first {
                raise(
                    exec_verdict(p, g, &format!("command {line:?}")),
                    &mut verdict,
                );
            }
        } else {
            let riskiest = exec_guardrails(guardrails, target)
                .filter(|(_, g)| g.exec_commands.iter().any(|p| pattern_could_match(p, cmd)))
                .max_by_key(|(_, g)| risk(decision_of(g.action)));
            if let Some((p, g)) = riskiest {
                raise(
                    exec_verdict(
                        p,
                        g,
                        &format!("command {line:?} (with words only known at run time)"),
                    ),
                    &mut verdict,
                );
            }
        }
    }
    for (p, settings) in allow_list_policies(guardrails) {
        if let Some(why) = allow_list_refusal(settings, target, analysis, attach) {
            let decision = match settings.default {
                ExecDefault::RequireApproval => Decision::RequireApproval,
                _ => Decision::Deny,
            };
            let what = if decision == Decision::Deny {
                "refused by"
            } else {
                "requires approval under"
            };
            raise(
                Verdict {
                    decision,
                    rule: Some(RuleRef {
                        policy: p.name.clone(),
                        rule: ALLOW_LIST_RULE.into(),
                    }),
                    reason: Some(format!(
                        "exec {why}; {what} the exec allow-list of policy {} (rule {ALLOW_LIST_RULE})",
                        p.name
                    )),
                },
                &mut verdict,
            );
        }
    }
    verdict
}

/// The rule name of an allow-list refusal.
pub const ALLOW_LIST_RULE: &str = "exec-allow-list";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::analyse;
    use portcullis_crds::audit::Identity;
    use serde::Deserialize;

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
            false,
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
        assert_eq!(decide_exec(&gs, &t, &a, false).decision, Decision::Allow);
        t.namespace = "prod".into();
        t.labels = Some([("tier".to_owned(), "web".to_owned())].into());
        assert_eq!(decide_exec(&gs, &t, &a, false).decision, Decision::Allow);
        t.labels = None;
        assert_eq!(
            decide_exec(&gs, &t, &a, false).decision,
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

    /// The GatewayPolicies of examples/ci-exec, compiled as the operator compiles them, with
    /// their subjects cleared so they apply to the test identity.
    fn example_policy(file: &str) -> PolicyConfig {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/ci-exec")
            .join(file);
        let text = std::fs::read_to_string(&path).expect("example");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).expect("yaml");
            if value["kind"] == "GatewayPolicy" {
                let gp: portcullis_crds::GatewayPolicy =
                    serde_yaml::from_value(value).expect("GatewayPolicy");
                let name = gp.metadata.name.clone().unwrap_or_default();
                let mut p = PolicyConfig::compile(&name, 1, &gp.spec).expect("compiles");
                p.subjects.clear();
                return p;
            }
        }
        panic!("no GatewayPolicy in {file}");
    }

    /// The attack families of the exec guardrails, each refused under the denylist example
    /// and the allow-list example; ordinary read-only commands pass under both.
    #[test]
    fn example_policies_refuse_every_family_and_pass_ordinary_commands() {
        let deny = example_policy("kubernetes-api.yaml");
        let allow = example_policy("allowlist.yaml");
        let attacks: &[(&str, &[&str], bool)] = &[
            (
                "shell words: ANSI-C quoting",
                &["sh", "-c", "$'\\x72m' -rf /tmp/v"],
                false,
            ),
            (
                "shell words: brace expansion",
                &["bash", "-c", "{rm,-rf,/tmp/v}"],
                false,
            ),
            (
                "shell words: glob as program",
                &["sh", "-c", "/bin/r? -rf /tmp/v"],
                false,
            ),
            (
                "shell words: bracket glob",
                &["sh", "-c", "/bin/[r]m -rf /tmp/v"],
                false,
            ),
            (
                "shell words: alias",
                &[
                    "bash",
                    "-c",
                    "shopt -s expand_aliases\nalias x=rm\nx -rf /tmp/v",
                ],
                false,
            ),
            (
                "wrappers: xargs -P",
                &["xargs", "-P", "2", "rm", "-rf"],
                true,
            ),
            (
                "wrappers: nice --adjustment",
                &["nice", "--adjustment", "5", "rm", "-rf", "/tmp/v"],
                false,
            ),
            (
                "wrappers: taskset -c",
                &["taskset", "-c", "0", "rm", "-rf", "/tmp/v"],
                false,
            ),
            (
                "wrappers: chrt -o",
                &["chrt", "-o", "0", "rm", "-rf", "/tmp/v"],
                false,
            ),
            (
                "wrappers: exec -a",
                &["sh", "-c", "exec -a ls rm -rf /tmp/v"],
                false,
            ),
            (
                "wrappers: time -f",
                &["time", "-f", "%e", "rm", "-rf", "/tmp/v"],
                false,
            ),
            (
                "runners: find -exec",
                &["find", "/tmp/v", "-exec", "rm", "-rf", "{}", "+"],
                false,
            ),
            (
                "runners: sed e",
                &["sed", "-n", "1e rm -rf /tmp/v", "/etc/hostname"],
                false,
            ),
            (
                "runners: tar checkpoint",
                &[
                    "tar",
                    "-cf",
                    "/dev/null",
                    "--checkpoint=1",
                    "--checkpoint-action=exec=rm -rf /tmp/v",
                    "/etc/hostname",
                ],
                false,
            ),
            ("runners: rbash", &["rbash", "-c", "rm -rf /tmp/v"], false),
            (
                "runners: mawk",
                &["mawk", "BEGIN{system(\"rm -rf /tmp/v\")}"],
                false,
            ),
            (
                "runners: nawk",
                &["nawk", "BEGIN{system(\"rm -rf /tmp/v\")}"],
                false,
            ),
            (
                "runners: symlink under another name",
                &["sh", "-c", "ln -s /bin/rm /tmp/x; /tmp/x -rf /tmp/v"],
                false,
            ),
            (
                "interpreters: python3 -Ic",
                &["python3", "-Ic", "import shutil; shutil.rmtree('/tmp/v')"],
                false,
            ),
            (
                "interpreters: perl -le",
                &["perl", "-le", "system('rm -rf /tmp/v')"],
                false,
            ),
            (
                "interpreters: base64 --dec into sh",
                &["sh", "-c", "echo cm0gLXJmIC90bXAvdgo= | base64 --dec | sh"],
                false,
            ),
            ("interpreters: python3 -", &["python3", "-"], true),
            ("interpreters: perl from stdin", &["perl"], true),
            (
                "files: BASH_ENV",
                &["env", "BASH_ENV=/tmp/p", "bash", "-c", "true"],
                false,
            ),
            (
                "files: login profile",
                &["env", "HOME=/tmp/h", "bash", "-lc", "true"],
                false,
            ),
            (
                "files: written then run",
                &["sh", "-c", "echo 'rm -rf /tmp/v' > /tmp/p; sh /tmp/p"],
                false,
            ),
            (
                "files: redirect is a write",
                &["sh", "-c", "echo 'rm -rf /tmp/v' > /tmp/p"],
                false,
            ),
            ("request: shell with stdin", &["sh"], true),
        ];
        for (family, argv, stdin) in attacks {
            for p in [&deny, &allow] {
                let v = decide(p, argv, *stdin);
                assert!(
                    matches!(v.decision, Decision::Deny | Decision::RequireApproval),
                    "{family} under {}: {argv:?} was {:?} ({:?})",
                    p.name,
                    v.decision,
                    v.reason
                );
            }
        }
        let ordinary: &[&[&str]] = &[
            &["ls", "-l", "/"],
            &["cat", "/etc/os-release"],
            &["id"],
            &["date"],
            &["uname", "-a"],
            &["hostname"],
            &["df", "-h"],
            &["ps", "aux"],
            &["sh", "-c", "ls / && cat /etc/hostname"],
            &["echo", "hello"],
            &["whoami"],
            &["free", "-m"],
        ];
        for argv in ordinary {
            for p in [&deny, &allow] {
                let v = decide(p, argv, false);
                assert!(
                    matches!(v.decision, Decision::Allow | Decision::Audit),
                    "{argv:?} under {}: {:?} ({:?})",
                    p.name,
                    v.decision,
                    v.reason
                );
            }
        }
        // The refusal names the word that was not proven.
        let v = decide(&allow, &["sh", "-c", "ls $HOME"], false);
        assert!(v.reason.unwrap_or_default().contains("\"$HOME\""));
        let v = decide(&allow, &["rm", "-rf", "/tmp/v"], false);
        assert_eq!(v.rule.map(|r| r.rule), Some(ALLOW_LIST_RULE.to_owned()));
        // `*` does not cross `/`, and `..` needs a pattern with `..`.
        assert_eq!(
            decide(&allow, &["cat", "/var/log/app/x.log"], false).decision,
            Decision::Allow
        );
        assert_eq!(
            decide(&allow, &["cat", "/var/log/app/../../../etc/shadow"], false).decision,
            Decision::Deny
        );
    }

    #[test]
    fn unknown_words_take_the_riskiest_guardrail_that_could_match() {
        let p = policy(vec![
            guardrail("flush", &["redis-cli*FLUSH*"], GuardrailAction::Deny),
            guardrail("reads", &["redis-cli*"], GuardrailAction::Audit),
        ]);
        assert_eq!(
            decide(&p, &["redis-cli", "GET", "k"], false).decision,
            Decision::Audit
        );
        assert_eq!(
            decide(
                &p,
                &["sh", "-c", "redis-cli $(printf FL; printf USHALL)"],
                false
            )
            .decision,
            Decision::Deny
        );
        assert!(could_match(
            "rm *",
            &[Some('r'), Some('m'), Some(' '), None]
        ));
        assert!(!could_match(
            "ls *",
            &[Some('r'), Some('m'), Some(' '), None]
        ));
    }

    #[test]
    fn allow_list_default_and_attach() {
        let mut p = example_policy("allowlist.yaml");
        if let Some(e) = p.exec.as_mut() {
            e.default = ExecDefault::RequireApproval;
        }
        let v = decide(&p, &["rm", "-rf", "/tmp/v"], false);
        assert_eq!(v.decision, Decision::RequireApproval);
        assert!(v.reason.unwrap_or_default().contains("\"rm -rf /tmp/v\""));
        // Attach runs nothing new: reading output is allowed, typing into the process is not
        // proven.
        let gs = Guardrails::for_identity(vec![p], &Identity::default(), "ci");
        let target = ExecTarget::default();
        let attach = |stdin: bool| Analysis {
            commands: vec![Command {
                argv: vec![Word::Known("attach".into())],
                own: 1,
                ..Default::default()
            }],
            unproven: if stdin {
                vec![crate::shell::Unproven {
                    word: "stdin".into(),
                    why: "attach with standard input".into(),
                }]
            } else {
                vec![]
            },
        };
        assert_eq!(
            decide_exec(&gs, &target, &attach(false), true).decision,
            Decision::Allow
        );
        assert_eq!(
            decide_exec(&gs, &target, &attach(true), true).decision,
            Decision::RequireApproval
        );
    }
}
