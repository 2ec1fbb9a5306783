//! Guardrail evaluation: the built-in rules, then each policy's guardrails in order (the first
//! match decides), then the unanalysable-statement rule.

use std::sync::Arc;

use portcullis_crds::audit::{Decision, Identity, RuleRef};
use portcullis_crds::gateway_policy::{
    FunctionMode, GuardrailAction, StatementKind, UnanalyzableAction,
};
use portcullis_crds::sidecar_config::{
    GuardrailConfig, MaskingRuleConfig, PolicyConfig, QualifiedTable,
};

use super::analyze::StatementFacts;
use super::names::{Qualified, SearchPath};
use super::row_folds;
use super::row_sources::RowSources;
use crate::identity;

/// Functions denied whatever the policy says: they read or write server files, spawn
/// programs, or open connections elsewhere. A trailing `*` matches a prefix.
pub const BUILTIN_DENIED_FUNCTIONS: &[&str] = &[
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_logdir_ls",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "lo_import",
    "lo_export",
    "dblink*",
];

/// Settings whose change would make the server read SQL text differently from the analyser,
/// or change the identity the session runs as.
const BUILTIN_DENIED_SETTINGS: &[&str] = &[
    "standard_conforming_strings",
    "backslash_quote",
    "session_authorization",
    "role",
];

/// Name under which built-in rules appear in audit records.
pub const BUILTIN_POLICY: &str = "builtin";

/// The decision on one statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// What to do.
    pub decision: Decision,
    /// The rule that decided.
    pub rule: Option<RuleRef>,
    /// Message for the client (refusals) and the audit record.
    pub reason: Option<String>,
}

impl Verdict {
    /// No rule matched.
    pub fn allow() -> Self {
        Verdict {
            decision: Decision::Allow,
            rule: None,
            reason: None,
        }
    }

    /// Forwarded and recorded, by a rule that needs no name of its own (a built-in rule a
    /// policy relaxed).
    pub fn audit() -> Self {
        Verdict {
            decision: Decision::Audit,
            rule: None,
            reason: None,
        }
    }

    /// Refused by the built-in rule `rule`.
    pub fn builtin(rule: &str, reason: String) -> Self {
        Verdict {
            decision: Decision::Deny,
            rule: Some(RuleRef {
                policy: BUILTIN_POLICY.to_owned(),
                rule: rule.to_owned(),
            }),
            reason: Some(reason),
        }
    }

    /// Whether the statement may be forwarded.
    pub fn forwards(&self) -> bool {
        matches!(self.decision, Decision::Allow | Decision::Audit)
    }
}

/// A result-size limit that applies to a forwarded statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowLimit {
    /// Rows allowed.
    pub limit: u64,
    /// The guardrail.
    pub rule: RuleRef,
    /// Deny (cut the result) or audit (flag it).
    pub action: GuardrailAction,
    /// Client message.
    pub message: String,
}

/// The guardrails that apply to one session identity on one resource.
#[derive(Clone, Debug, Default)]
pub struct Guardrails {
    policies: Vec<PolicyConfig>,
    identity: Identity,
    namespace: String,
    /// The `rowsOver` guardrails the identity is not exempt from, by (policy, guardrail)
    /// index, with the limit a matching statement carries (made once per session).
    row_limits: Vec<(usize, usize, Arc<RowLimit>)>,
    /// Lawful basis and purpose of the first policy, recorded when no rule decided.
    default_context: (Option<String>, Option<String>),
}

fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

impl Guardrails {
    /// The policies (in precedence order) whose subjects include `identity` (the session's
    /// workload and, when it presented a token, its person or pipeline run). A workload that
    /// no policy of the resource names gets every policy of the resource, the strictest
    /// default (fail closed), never none.
    pub fn for_identity(policies: Vec<PolicyConfig>, identity: &Identity, namespace: &str) -> Self {
        let named: Vec<PolicyConfig> = policies
            .iter()
            .filter(|p| identity::policy_applies(p, identity, namespace))
            .cloned()
            .collect();
        let policies = if named.is_empty() { policies } else { named };
        let mut guardrails = Guardrails {
            default_context: policies.first().map(context_of).unwrap_or_default(),
            policies,
            identity: identity.clone(),
            namespace: namespace.to_owned(),
            row_limits: Vec::new(),
        };
        let mut row_limits = Vec::new();
        for (pi, policy) in guardrails.policies.iter().enumerate() {
            for (gi, g) in policy.guardrails.iter().enumerate() {
                let Some(limit) = g.rows_over else { continue };
                if !g.exec_commands.is_empty() || guardrails.exempt(g) {
                    continue;
                }
                row_limits.push((pi, gi, Arc::new(row_limit(policy, g, limit))));
            }
        }
        guardrails.row_limits = row_limits;
        guardrails
    }

    /// The session identity these guardrails were selected for.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Whether the session is exempt from a guardrail (its `exempt` subjects).
    pub(crate) fn exempt(&self, g: &GuardrailConfig) -> bool {
        identity::matches_any(&g.exempt, &self.identity, &self.namespace)
    }

    /// Whether the session sees the data of a masking rule in clear.
    pub fn masking_exempt(&self, rule: &MaskingRuleConfig) -> bool {
        identity::exempt(&self.identity, rule, &self.namespace)
    }

    /// The policies that apply.
    pub fn policies(&self) -> &[PolicyConfig] {
        &self.policies
    }

    /// Decide on a parsed statement, its unqualified names resolved through `path`.
    pub fn decide(&self, facts: &StatementFacts, path: &SearchPath) -> Verdict {
        if let Some(v) = builtin(facts) {
            return v;
        }
        for policy in &self.policies {
            if let Some(v) = function_allow_list(policy, facts, path) {
                return v;
            }
        }
        // Of the guardrails the statement matches, the strictest decides (the first of
        // equals): a matching deny is never relaxed by an earlier approval or audit rule.
        let mut decided: Option<Verdict> = None;
        for (policy, g) in self.statement_matches(facts, path) {
            let v = verdict_of(policy, g);
            if decided
                .as_ref()
                .is_none_or(|d| strictness(v.decision) > strictness(d.decision))
            {
                decided = Some(v);
            }
        }
        if let Some(v) = decided {
            return v;
        }
        // The body of a DO block, and other code the statement runs or installs that the
        // analyser cannot see into: unless a guardrail decided above, it falls under the
        // unanalysable-statement rule (fail closed).
        if let Some(why) = &facts.unseen {
            return self.unanalyzable("statement", why);
        }
        if facts.opaque_body && facts.kinds.contains(&StatementKind::DoBlock) {
            return self.decide_unanalyzable("the body of a DO block cannot be analysed");
        }
        Verdict::allow()
    }

    /// The statement guardrails (not row limits, not exec rules, not exempt) `facts` matches,
    /// in policy order.
    fn statement_matches<'a>(
        &'a self,
        facts: &'a StatementFacts,
        path: &'a SearchPath,
    ) -> impl Iterator<Item = (&'a PolicyConfig, &'a GuardrailConfig)> + 'a {
        self.policies.iter().flat_map(move |policy| {
            policy
                .guardrails
                .iter()
                .filter(move |g| {
                    g.rows_over.is_none()
                        && g.exec_commands.is_empty()
                        && !self.exempt(g)
                        && matches_statement(g, facts, path)
                })
                .map(move |g| (policy, g))
        })
    }

    /// Every `requireApproval` guardrail `facts` matches, in policy order: a statement held
    /// for approval runs only under a grant of each of them (a grant covers its own rule).
    pub fn approval_rules(&self, facts: &StatementFacts, path: &SearchPath) -> Vec<RuleRef> {
        self.statement_matches(facts, path)
            .filter(|(_, g)| g.action == GuardrailAction::RequireApproval)
            .map(|(policy, g)| RuleRef {
                policy: policy.name.clone(),
                rule: g.name.clone(),
            })
            .collect()
    }

    /// Decide on text the parser could not analyse: denied unless every applicable policy
    /// chose `onUnanalyzable: audit`.
    /// The parser's message is recorded: it keeps no token of the text (what it found and
    /// anything after the first word that is not plain).
    pub fn decide_unanalyzable(&self, parser_error: &str) -> Verdict {
        let detail = match parser_error.find("found:") {
            Some(i) => &parser_error[..i],
            None => parser_error,
        };
        let detail = crate::policy::fingerprint::value_free(detail.trim_end_matches([' ', ',']));
        self.unanalyzable("statement", &detail)
    }

    /// The unanalysable-operation rule for `what` (`statement`, `exec`).
    pub fn unanalyzable(&self, what: &str, detail: &str) -> Verdict {
        let audit = !self.policies.is_empty()
            && self
                .policies
                .iter()
                .all(|p| p.on_unanalyzable == UnanalyzableAction::Audit);
        let (policy, decision) = if audit {
            (
                self.policies
                    .first()
                    .map(|p| p.name.clone())
                    .unwrap_or_default(),
                Decision::Audit,
            )
        } else {
            (BUILTIN_POLICY.to_owned(), Decision::Deny)
        };
        Verdict {
            decision,
            rule: Some(RuleRef {
                policy,
                rule: "unanalyzable".to_owned(),
            }),
            reason: Some(format!(
                "{what} cannot be analysed and is refused (rule unanalyzable): {detail}"
            )),
        }
    }

    /// GDPR lawful basis and purpose recorded with an operation: those of the policy whose
    /// rule decided it, else of the first applicable policy.
    pub fn policy_context(&self, rule: Option<&RuleRef>) -> (Option<String>, Option<String>) {
        let decided = rule.and_then(|r| self.policies.iter().find(|p| p.name == r.policy));
        match decided {
            Some(policy) => context_of(policy),
            None => self.default_context.clone(),
        }
    }

    /// Result-size limits of guardrails with `rowsOver` whose other criteria match. A
    /// `tables` criterion matches a statement that may return the table's rows by any way
    /// `sources` knows (views, children, functions, relations it does not know).
    pub fn row_limits(
        &self,
        facts: &StatementFacts,
        path: &SearchPath,
        sources: &RowSources,
    ) -> Vec<Arc<RowLimit>> {
        self.row_limits
            .iter()
            .filter(|(pi, gi, _)| {
                self.policies
                    .get(*pi)
                    .and_then(|p| p.guardrails.get(*gi))
                    .is_some_and(|g| {
                        matches_criteria(g, facts, path, &|t| {
                            touches(facts, t, path) || sources.may_read(facts, t, path)
                        })
                    })
            })
            .map(|(_, _, limit)| limit.clone())
            .collect()
    }

    /// A refusal for a statement that a denying `rowsOver` guardrail applies to (see
    /// [`Self::row_limits`]) and that lets rows leave other than one result row each: folded
    /// into fewer rows, read by a function from a name or a query string, or copied where
    /// the limit would not count them ([`row_folds`]). Limits with `action: audit` refuse
    /// nothing (their results are flagged).
    pub fn row_escape(
        &self,
        facts: &StatementFacts,
        path: &SearchPath,
        sources: &RowSources,
    ) -> Option<Verdict> {
        if self.row_limits.is_empty() {
            return None;
        }
        // The relations the statement writes into are not where its rows come from, unless
        // one is a limited table (which the statement may read as well).
        let mut targets = row_folds::write_targets(facts);
        targets.retain(|q| {
            !self.row_limits.iter().any(|(pi, gi, _)| {
                self.policies
                    .get(*pi)
                    .and_then(|p| p.guardrails.get(*gi))
                    .is_some_and(|g| g.tables.iter().any(|t| q.may_be(&t.schema, &t.table, path)))
            })
        });
        let sourced;
        let facts = if targets.iter().any(|t| facts.tables.contains(t)) {
            let mut f = facts.clone();
            f.tables.retain(|t| !targets.contains(t));
            sourced = f;
            &sourced
        } else {
            facts
        };
        for (pi, gi, limit) in &self.row_limits {
            if limit.action == GuardrailAction::Audit {
                continue;
            }
            let (Some(policy), Some(g)) = (
                self.policies.get(*pi),
                self.policies.get(*pi).and_then(|p| p.guardrails.get(*gi)),
            ) else {
                continue;
            };
            let reads =
                |t: &QualifiedTable| touches(facts, t, path) || sources.may_read(facts, t, path);
            if !matches_criteria(g, facts, path, &reads) {
                continue;
            }
            let names_limited = g.tables.is_empty()
                || g.tables
                    .iter()
                    .any(|t| touches(facts, t, path) || sources.names(facts, t, path));
            // Rows written into a limited table stay under the limit; a guardrail without
            // tables limits every relation.
            let limited_target = |name: &sqlparser::ast::ObjectName| {
                g.tables.is_empty()
                    || Qualified::of(name).is_some_and(|q| {
                        g.tables.iter().any(|t| q.may_be(&t.schema, &t.table, path))
                    })
            };
            if let Some(escape) = row_folds::escape(facts, names_limited, &limited_target) {
                let mut v = verdict_of(policy, g);
                v.decision = Decision::Deny;
                v.reason = Some(format!(
                    "statement refused by guardrail {} of policy {} (rowsOver {}): {escape}, so its rows would not be counted",
                    g.name, policy.name, limit.limit
                ));
                return Some(v);
            }
        }
        None
    }

    /// Every result-size limit of the session (for rows whose statement is not known: a
    /// cursor opened by server code).
    pub fn all_row_limits(&self) -> Vec<Arc<RowLimit>> {
        self.row_limits.iter().map(|(_, _, l)| l.clone()).collect()
    }

    /// Every table a statement guardrail of these policies names (not `rowsOver` ones).
    pub fn guarded_tables(policies: &[PolicyConfig]) -> Vec<QualifiedTable> {
        let mut out: Vec<QualifiedTable> = Vec::new();
        for g in policies.iter().flat_map(|p| &p.guardrails) {
            if g.rows_over.is_none() && g.exec_commands.is_empty() {
                for t in &g.tables {
                    if !out.contains(t) {
                        out.push(t.clone());
                    }
                }
            }
        }
        out
    }

    /// The tables `rowsOver` guardrails of these policies limit.
    pub fn limited_tables(policies: &[PolicyConfig]) -> Vec<QualifiedTable> {
        let mut out: Vec<QualifiedTable> = Vec::new();
        for g in policies.iter().flat_map(|p| &p.guardrails) {
            if g.rows_over.is_some() {
                for t in &g.tables {
                    if !out.contains(t) {
                        out.push(t.clone());
                    }
                }
            }
        }
        out
    }

    /// Smallest spool bound of the policies that deny when the audit log is unavailable.
    pub fn spool_limit(&self) -> Option<u64> {
        self.policies
            .iter()
            .filter(|p| {
                p.on_audit_unavailable
                    == portcullis_crds::gateway_policy::AuditUnavailableAction::Deny
            })
            .map(|p| p.spool_limit_bytes)
            .min()
    }
}

fn builtin(facts: &StatementFacts) -> Option<Verdict> {
    if facts.copy_program {
        return Some(Verdict::builtin(
            "copy-program",
            "COPY TO/FROM PROGRAM runs programs on the database server and is refused (rule builtin/copy-program)".to_owned(),
        ));
    }
    if facts.copy_file {
        return Some(Verdict::builtin(
            "copy-server-file",
            "COPY TO/FROM a server file is refused; use STDIN/STDOUT (rule builtin/copy-server-file)".to_owned(),
        ));
    }
    if let Some(why) = &facts.unseen_query {
        return Some(Verdict::builtin(
            "query-text",
            format!("{why}: the statement is refused (rule builtin/query-text)"),
        ));
    }
    // Matched on the function's own name whatever schema is written: a function of that
    // name in another schema is refused too.
    for f in &facts.functions {
        if BUILTIN_DENIED_FUNCTIONS
            .iter()
            .any(|p| glob_match(p, &f.name))
        {
            return Some(Verdict::builtin(
                "server-file-access",
                format!("function {f} reads or writes server files, runs programs or opens connections and is refused (rule builtin/server-file-access)"),
            ));
        }
    }
    for s in &facts.settings {
        if BUILTIN_DENIED_SETTINGS.contains(&s.as_str())
            && !facts.kinds.contains(&StatementKind::SetRole)
        {
            return Some(Verdict::builtin(
                "protected-setting",
                format!("changing setting {s} is refused (rule builtin/protected-setting)"),
            ));
        }
    }
    None
}

/// The refusal of a statement that calls a function a policy in `allowList` mode does not
/// allow, or runs code in a DO block.
fn function_allow_list(
    policy: &PolicyConfig,
    facts: &StatementFacts,
    path: &SearchPath,
) -> Option<Verdict> {
    if policy.functions.mode != FunctionMode::AllowList {
        return None;
    }
    let refuse = |what: String| {
        Verdict {
        decision: Decision::Deny,
        rule: Some(RuleRef {
            policy: policy.name.clone(),
            rule: "functions".to_owned(),
        }),
        reason: Some(format!(
            "{what} is not on the function allow list of policy {} and is refused (rule {}/functions)",
            policy.name, policy.name
        )),
    }
    };
    if facts.kinds.contains(&StatementKind::DoBlock) {
        return Some(refuse("a DO block".to_owned()));
    }
    for f in &facts.functions {
        // A built-in's name resolves elsewhere when the session put a schema first.
        let builtin = crate::policy::analyze::is_known_builtin(f)
            && (f.schema.is_some() || !path.catalog_not_first());
        // An entry with a schema allows only calls that name that schema: an unqualified
        // call could resolve elsewhere.
        let listed = policy
            .functions
            .allow
            .iter()
            .any(|p| match p.split_once('.') {
                None => glob_match(p, &f.name),
                Some((schema, name)) => {
                    f.schema.as_deref() == Some(schema) && glob_match(name, &f.name)
                }
            });
        if !builtin && !listed {
            return Some(refuse(format!("function {f}")));
        }
    }
    None
}

fn matches_statement(g: &GuardrailConfig, facts: &StatementFacts, path: &SearchPath) -> bool {
    matches_criteria(g, facts, path, &|t| touches(facts, t, path))
}

fn matches_criteria(
    g: &GuardrailConfig,
    facts: &StatementFacts,
    path: &SearchPath,
    table_matches: &dyn Fn(&QualifiedTable) -> bool,
) -> bool {
    let has_criteria = !g.statement_kinds.is_empty()
        || !g.tables.is_empty()
        || g.missing_where
        || !g.functions.is_empty();
    if !has_criteria && g.rows_over.is_none() {
        return false;
    }
    if !g.statement_kinds.is_empty() && !g.statement_kinds.iter().any(|k| facts.kinds.contains(k)) {
        return false;
    }
    if !g.tables.is_empty() && !g.tables.iter().any(table_matches) {
        return false;
    }
    if g.missing_where && !facts.missing_where {
        return false;
    }
    if !g.functions.is_empty()
        && !g
            .functions
            .iter()
            .any(|p| facts.functions.iter().any(|f| function_matches(p, f, path)))
    {
        return false;
    }
    true
}

/// GDPR lawful basis (as its CRD spelling) and purpose of a policy.
fn context_of(policy: &PolicyConfig) -> (Option<String>, Option<String>) {
    (
        policy
            .lawful_basis
            .and_then(|b| serde_json::to_value(b).ok())
            .and_then(|v| v.as_str().map(str::to_owned)),
        policy.purpose.clone(),
    )
}

/// The limit a `rowsOver` guardrail puts on the results of the statements it matches.
fn row_limit(policy: &PolicyConfig, g: &GuardrailConfig, limit: u64) -> RowLimit {
    RowLimit {
        limit,
        rule: RuleRef {
            policy: policy.name.clone(),
            rule: g.name.clone(),
        },
        action: g.action,
        message: format!(
            "result exceeds {limit} rows (guardrail {} of policy {}){}",
            g.name,
            policy.name,
            g.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
    }
}

/// Whether the statement may touch `table`: a name written with its schema names it, an
/// unqualified name when `path` may resolve it to the table's schema.
fn touches(facts: &StatementFacts, table: &QualifiedTable, path: &SearchPath) -> bool {
    facts
        .tables
        .iter()
        .any(|name| name.may_be(&table.schema, &table.table, path))
}

/// Whether a call may run a function a policy pattern names: `name` (any schema) or
/// `schema.name` (that schema, or an unqualified call `path` may resolve to it); a trailing
/// `*` matches a prefix of the name.
fn function_matches(pattern: &str, f: &Qualified, path: &SearchPath) -> bool {
    match pattern.split_once('.') {
        None => glob_match(pattern, &f.name),
        Some((schema, name)) => {
            glob_match(name, &f.name)
                && match &f.schema {
                    Some(s) => s == schema,
                    None => path.may_resolve_to(schema),
                }
        }
    }
}

/// How strict a decision is: allow, audit, require approval, deny.
fn strictness(d: Decision) -> u8 {
    match d {
        Decision::Allow => 0,
        Decision::Audit => 1,
        Decision::RequireApproval => 2,
        Decision::Deny => 3,
    }
}

pub(crate) fn verdict_of(policy: &PolicyConfig, g: &GuardrailConfig) -> Verdict {
    let rule = RuleRef {
        policy: policy.name.clone(),
        rule: g.name.clone(),
    };
    let suffix = g
        .message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    match g.action {
        GuardrailAction::Deny => Verdict {
            decision: Decision::Deny,
            reason: Some(format!(
                "statement refused by guardrail {} of policy {}{suffix}",
                g.name, policy.name
            )),
            rule: Some(rule),
        },
        GuardrailAction::RequireApproval => Verdict {
            decision: Decision::RequireApproval,
            reason: Some(format!(
                "statement requires approval (guardrail {} of policy {}){suffix}",
                g.name, policy.name
            )),
            rule: Some(rule),
        },
        GuardrailAction::Audit => Verdict {
            decision: Decision::Audit,
            reason: Some(format!(
                "flagged by guardrail {} of policy {}",
                g.name, policy.name
            )),
            rule: Some(rule),
        },
    }
}
