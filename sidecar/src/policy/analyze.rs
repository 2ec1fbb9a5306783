//! Statement analysis with sqlparser (PostgreSQL dialect): split a query string into
//! statements and, for each, find its kinds, the tables it touches, the functions it calls,
//! whether an UPDATE/DELETE lacks an effective WHERE, and how COPY moves data.

use std::collections::{BTreeSet, HashSet};
use std::ops::ControlFlow;

use portcullis_crds::gateway_policy::StatementKind;
use sqlparser::ast::{
    visit_expressions, visit_relations, visit_statements, CopyTarget, Expr, FunctionArguments,
    ObjectName, Set, SetExpr, Statement, TableFactor, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::fingerprint;
use super::names::{self, PathChange, Qualified};

/// Nesting depth the parser accepts before giving up (deeper input is unanalysable).
const RECURSION_LIMIT: usize = 64;

/// What the analysis found in one statement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatementFacts {
    /// Kinds of the statement and of every statement nested in it (CTEs, EXPLAIN, PREPARE).
    pub kinds: HashSet<StatementKind>,
    /// Tables touched, as written (folded, escapes decoded); an unqualified name is
    /// resolved per session through its `search_path`.
    pub tables: BTreeSet<Qualified>,
    /// Functions called, including table functions, as written (folded, escapes decoded).
    pub functions: BTreeSet<Qualified>,
    /// How the statement changes the session's `search_path`, in order.
    pub path_changes: Vec<PathChange>,
    /// A write that changes existing rows without a bound (see [`super::bounded`]): UPDATE
    /// or DELETE whose WHERE does not restrict the table, an upsert fed from a whole table, a
    /// MERGE, also inside data-modifying CTEs; TRUNCATE; `ALTER COLUMN ... TYPE ... USING`,
    /// which rewrites every row.
    pub missing_where: bool,
    /// `COPY ... TO/FROM PROGRAM`.
    pub copy_program: bool,
    /// `COPY ... TO/FROM 'file'` (a server-side file).
    pub copy_file: bool,
    /// Settings changed with SET (lower-case names).
    pub settings: BTreeSet<String>,
    /// The statement carries code the parser cannot see into (DO blocks, function bodies).
    pub opaque_body: bool,
    /// It calls a built-in that runs SQL given as text ([`super::query_text`]); the facts of
    /// each constant query text are merged into these.
    pub runs_query_text: bool,
    /// A query text that cannot be read (computed, or not analysable): why.
    pub unseen_query: Option<String>,
    /// Why the statement runs, or installs to run on later statements, code the analysis
    /// cannot see into, beyond a DO block (a call of a function whose body it cannot read, a
    /// trigger, a cursor opened by server code, a rename that changes what names resolve
    /// to): such a statement is decided by a guardrail that matches it or else by the
    /// unanalysable-statement rule.
    pub unseen: Option<String>,
    /// Functions and views the statement defines (see [`super::code`]).
    pub defines: Vec<super::code::Definition>,
    /// What running the statement can change (for how long its audit record may wait for
    /// its fsync).
    pub effect: Effect,
    /// The statement, rendered with its literal values replaced, still holds a single-quoted
    /// text: a string the parser kept as a name (`FROM 'x'`) or as an option, so the facts
    /// may depend on the value of what a shape calls a literal.
    pub keeps_quoted_text: bool,
    /// The statement with literals replaced by `?`.
    pub normalized: String,
    /// Fingerprint of `normalized`.
    pub fingerprint: String,
    /// The parsed statement (for the masking lineage analysis); `None` for DO blocks.
    pub ast: Option<std::sync::Arc<Statement>>,
}

/// What a statement can change, from least to most.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Effect {
    /// Reads data or session state only: queries, SHOW, EXPLAIN, BEGIN, ROLLBACK, savepoints
    /// and session settings, calling no function outside the known read-only ones ([`is_read_only_function`]).
    #[default]
    Reads,
    /// Changes rows transactionally (INSERT, UPDATE, DELETE, MERGE, SELECT ... FOR UPDATE)
    /// and calls no function outside the known read-only ones: inside a transaction block
    /// nothing of it is permanent or visible to others before COMMIT.
    Writes,
    /// Commits the transaction block (COMMIT, END).
    Commits,
    /// Anything else: DDL, privileges, COPY, other functions, code the parser cannot see.
    Other,
}

/// The analysis of a whole query string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Analysis {
    /// Every statement was parsed.
    Statements(Vec<StatementFacts>),
    /// The text could not be analysed; the reason is the parser's message.
    Unanalyzable {
        /// The parser's complaint.
        reason: String,
        /// Fingerprint of the raw text (the text itself is never recorded).
        fingerprint: String,
    },
}

/// The camelCase name of a kind, as written in GatewayPolicy `statementKinds`.
pub fn kind_name(kind: StatementKind) -> &'static str {
    match kind {
        StatementKind::Select => "select",
        StatementKind::Insert => "insert",
        StatementKind::Update => "update",
        StatementKind::Delete => "delete",
        StatementKind::Merge => "merge",
        StatementKind::Truncate => "truncate",
        StatementKind::Ddl => "ddl",
        StatementKind::Dcl => "dcl",
        StatementKind::Copy => "copy",
        StatementKind::DoBlock => "doBlock",
        StatementKind::SetRole => "setRole",
        StatementKind::Call => "call",
        StatementKind::Other => "other",
    }
}

/// Analyse a query string (one or more statements).
pub fn analyze(raw: &str) -> Analysis {
    let dialect = PostgreSqlDialect {};
    if let Err(e) = super::limits::check(raw) {
        return Analysis::Unanalyzable {
            reason: e.to_string(),
            fingerprint: fingerprint::of(raw),
        };
    }
    // The parser reads `U&"..."` as `U & "..."`: decode such names first, so that every
    // name is the one the server will use.
    let decoded = match names::decode_unicode_identifiers(raw) {
        Ok(d) => d,
        Err(e) => {
            return Analysis::Unanalyzable {
                reason: e.to_string(),
                fingerprint: fingerprint::of(raw),
            }
        }
    };
    let sql: &str = &decoded;
    if let Some(facts) = do_block(sql) {
        return Analysis::Statements(vec![facts]);
    }
    if let Some(facts) = move_statement(sql) {
        return Analysis::Statements(vec![facts]);
    }
    let parsed = Parser::new(&dialect)
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements());
    match parsed {
        Ok(statements) if statements.is_empty() => Analysis::Statements(Vec::new()),
        Ok(statements) => {
            let mut out = Vec::with_capacity(statements.len());
            for statement in statements {
                out.push(facts_of(statement, sql));
            }
            Analysis::Statements(out)
        }
        Err(e) => {
            // Includes a DO block behind other statements: the whole string is unanalysable.
            Analysis::Unanalyzable {
                reason: e.to_string(),
                fingerprint: fingerprint::of(raw),
            }
        }
    }
}

/// `DO [LANGUAGE x] $$ ... $$ [LANGUAGE x]` is not understood by sqlparser. A statement that
/// starts with the keyword DO and is a single statement is reported as an opaque DO block.
fn do_block(sql: &str) -> Option<StatementFacts> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql).tokenize().ok()?;
    let mut significant = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::SemiColon | Token::EOF));
    match significant.next() {
        Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("do") => {}
        _ => return None,
    }
    // Only a lone DO statement is reported as such; "DO ...; other" is left to the parser,
    // which fails and makes the whole string unanalysable.
    let statements = tokens
        .iter()
        .filter(|t| matches!(t, Token::SemiColon))
        .count();
    let trailing_semicolon = tokens
        .iter()
        .rev()
        .find(|t| !matches!(t, Token::Whitespace(_) | Token::EOF))
        .is_some_and(|t| matches!(t, Token::SemiColon));
    if statements > usize::from(trailing_semicolon) {
        return None;
    }
    let mut facts = StatementFacts {
        opaque_body: true,
        // The body can do anything: its record is durable before it runs.
        effect: Effect::Other,
        normalized: "DO ?".to_owned(),
        fingerprint: fingerprint::of("DO ?"),
        ..StatementFacts::default()
    };
    facts.kinds.insert(StatementKind::DoBlock);
    facts.functions = dangerous_names_in(sql);
    Some(facts)
}

/// `MOVE` is not understood by sqlparser. It takes FETCH's arguments and returns no rows: a
/// query string that is one MOVE is analysed as the FETCH it mirrors (so the cursor it names
/// is known) and recorded as MOVE.
fn move_statement(sql: &str) -> Option<StatementFacts> {
    let trimmed = sql.trim_start();
    let rest = trimmed.get(4..)?;
    if !trimmed.get(..4)?.eq_ignore_ascii_case("move") || !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let fetch = format!("FETCH{rest}");
    let statements = Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(&fetch)
        .and_then(|mut p| p.parse_statements())
        .ok()?;
    let [statement] = <[Statement; 1]>::try_from(statements).ok()?;
    if !matches!(statement, Statement::Fetch { .. }) {
        return None;
    }
    let mut facts = facts_of(statement, &fetch);
    facts.normalized = facts.normalized.replacen("FETCH", "MOVE", 1);
    facts.fingerprint = fingerprint::of(&facts.normalized);
    Some(facts)
}

/// Function names of the built-in deny list that occur anywhere in a text (used for bodies
/// the parser cannot see into).
fn dangerous_names_in(sql: &str) -> BTreeSet<Qualified> {
    let lower = sql.to_ascii_lowercase();
    super::guardrails::BUILTIN_DENIED_FUNCTIONS
        .iter()
        .filter(|f| lower.contains(f.trim_end_matches('*')))
        .map(|f| Qualified::bare(f.trim_end_matches('*')))
        .collect()
}

fn name_parts(name: &ObjectName) -> Vec<String> {
    names::parts(name)
}

fn function_name(name: &ObjectName) -> Option<Qualified> {
    Qualified::of(name)
}

/// The string constant of a function argument, if it is one.
fn literal_arg(arg: Option<&sqlparser::ast::FunctionArg>) -> Option<&str> {
    use sqlparser::ast::{FunctionArg, FunctionArgExpr};
    match arg? {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))) => match &v.value {
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::UnicodeStringLiteral(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// How a `set_config(name, value, local)` call changes name resolution: `search_path`, or
/// the role `"$user"` stands for (`None`: it sets another setting).
fn set_config_change(f: &sqlparser::ast::Function) -> Option<PathChange> {
    let FunctionArguments::List(list) = &f.args else {
        return Some(PathChange::Unknown);
    };
    let name = match literal_arg(list.args.first()) {
        Some(name) => name.trim().to_ascii_lowercase(),
        None => return Some(PathChange::Unknown),
    };
    match name.as_str() {
        "search_path" => Some(match literal_arg(list.args.get(1)) {
            Some(value) => names::split_setting(value).map_or(PathChange::Unknown, PathChange::Set),
            None => PathChange::Unknown,
        }),
        "role" | "session_authorization" => Some(PathChange::Role(
            literal_arg(list.args.get(1)).map(|v| v.trim().to_owned()),
        )),
        _ => None,
    }
}

/// The role a `SET role = value` (or `session_authorization`) sets: `None` for a value the
/// analysis cannot read, no change for `DEFAULT` or `NONE`.
fn role_change(values: &[Expr]) -> Option<PathChange> {
    match values {
        [Expr::Identifier(i)]
            if i.quote_style.is_none()
                && (i.value.eq_ignore_ascii_case("default")
                    || i.value.eq_ignore_ascii_case("none")) =>
        {
            None
        }
        [Expr::Identifier(i)] => Some(PathChange::Role(Some(names::fold(i)))),
        [Expr::Value(v)] => match &v.value {
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::UnicodeStringLiteral(s) => Some(PathChange::Role(Some(s.clone()))),
            _ => Some(PathChange::Role(None)),
        },
        _ => Some(PathChange::Role(None)),
    }
}

/// Built-in functions that neither change data nor reach outside the database, besides the
/// ones the masking lineage knows compute their result from their arguments alone
/// ([`crate::masking::lineage::PURE_FUNCTIONS`]: text, number, date, JSON, aggregate and
/// window functions). A read-only statement calls no other function.
const MORE_READ_ONLY_FUNCTIONS: &[&str] = &[
    "current_setting",
    "percentile_cont",
    "percentile_disc",
    "statement_timestamp",
    "transaction_timestamp",
    "version",
];

/// Built-ins that change state but never `search_path` (besides the read-only ones).
const NO_PATH_CHANGE_FUNCTIONS: &[&str] = &[
    "nextval",
    "currval",
    "setval",
    "lastval",
    "now",
    "clock_timestamp",
    "random",
    "gen_random_uuid",
    "pg_sleep",
    "pg_backend_pid",
    "txid_current",
    "pg_current_xact_id",
    "pg_cancel_backend",
    "pg_terminate_backend",
    "pg_advisory_lock",
    "pg_advisory_unlock",
    "pg_try_advisory_lock",
    "pg_advisory_xact_lock",
    "pg_notify",
];

/// Whether a call runs one of the built-in functions the sidecar knows (read-only ones,
/// catalog functions, and those of [`NO_PATH_CHANGE_FUNCTIONS`] and `set_config`, whose
/// effects the analysis follows).
pub fn is_known_builtin(name: &Qualified) -> bool {
    is_read_only_function(name)
        || name.is_builtin("set_config")
        || NO_PATH_CHANGE_FUNCTIONS.iter().any(|f| name.is_builtin(f))
        || crate::masking::lineage::CATALOG_FUNCTIONS
            .iter()
            .any(|f| name.is_builtin(f))
}

/// Whether a function is a built-in known to change nothing.
pub fn is_read_only_function(name: &Qualified) -> bool {
    name.schema.as_deref().is_none_or(|s| s == "pg_catalog")
        && (crate::masking::lineage::PURE_FUNCTIONS.contains(&name.name.as_str())
            || MORE_READ_ONLY_FUNCTIONS.contains(&name.name.as_str()))
}

fn facts_of(mut statement: Statement, sql: &str) -> StatementFacts {
    let mut facts = StatementFacts::default();

    let _ = visit_statements(&statement, |s| {
        classify(s, &mut facts);
        ControlFlow::<()>::Continue(())
    });
    let _ = visit_relations(&statement, |name| {
        if let Some(table) = Qualified::of(name) {
            facts.tables.insert(table);
        }
        ControlFlow::<()>::Continue(())
    });
    let _ = visit_expressions(&statement, |e| {
        if let Expr::Function(f) = e {
            if let Some(name) = function_name(&f.name) {
                if name.is_builtin("set_config") {
                    if let Some(change) = set_config_change(f) {
                        facts.path_changes.push(change);
                    }
                }
                facts.functions.insert(name);
            }
        }
        ControlFlow::<()>::Continue(())
    });
    // Table functions in FROM (`SELECT * FROM pg_ls_dir('.')`).
    collect_table_functions(&statement, &mut facts);
    // SQL run from a text argument is analysed as the statements it is.
    for text in super::query_text::query_texts(&statement) {
        facts.runs_query_text = true;
        match text {
            super::query_text::QueryText::Constant(sql) => match analyze(&sql) {
                Analysis::Statements(list) => {
                    for inner in &list {
                        absorb(&mut facts, inner);
                    }
                }
                Analysis::Unanalyzable { reason, .. } => {
                    facts.unseen_query = Some(format!(
                        "the query text given to a function that runs SQL cannot be analysed ({reason})"
                    ));
                }
            },
            super::query_text::QueryText::Unseen(function) => {
                facts.unseen_query = Some(format!(
                    "{function} runs SQL given as text, and only a constant text can be analysed"
                ));
            }
        }
    }
    facts.functions.retain(|f| !f.name.is_empty());

    // set_config('role', ...) changes the role like SET ROLE does.
    if facts.functions.iter().any(|f| f.name == "set_config") {
        facts.kinds.insert(StatementKind::SetRole);
    }
    if facts.opaque_body {
        facts.functions.extend(dangerous_names_in(sql));
    }
    if facts.kinds.is_empty() {
        facts.kinds.insert(StatementKind::Other);
    }
    // Server code can change search_path for the rest of the session (a function that calls
    // set_config, a DO block): after it, every schema is possible.
    let path_safe = |f: &Qualified| {
        is_read_only_function(f)
            || f.is_builtin("set_config")
            || NO_PATH_CHANGE_FUNCTIONS
                .iter()
                .any(|name| f.is_builtin(name))
    };
    if facts.opaque_body
        || facts.kinds.contains(&StatementKind::Call)
        || !facts.functions.iter().all(path_safe)
    {
        facts.path_changes.push(PathChange::Unknown);
    }
    let known_functions = facts.functions.iter().all(is_read_only_function);
    if facts.opaque_body || !known_functions {
        facts.effect = Effect::Other;
    }
    facts.ast = Some(std::sync::Arc::new(statement.clone()));
    let rendered = fingerprint::render_without_literals(&mut statement);
    facts.keeps_quoted_text = rendered.contains('\'');
    facts.normalized = fingerprint::normalize_rendered(rendered);
    facts.fingerprint = fingerprint::of(&facts.normalized);
    facts
}

/// Merge the facts of a statement that `facts`' statement runs (a query text).
fn absorb(facts: &mut StatementFacts, inner: &StatementFacts) {
    facts.kinds.extend(inner.kinds.iter().copied());
    facts.tables.extend(inner.tables.iter().cloned());
    facts.functions.extend(inner.functions.iter().cloned());
    facts
        .path_changes
        .extend(inner.path_changes.iter().cloned());
    facts.settings.extend(inner.settings.iter().cloned());
    facts.missing_where |= inner.missing_where;
    facts.copy_program |= inner.copy_program;
    facts.copy_file |= inner.copy_file;
    facts.opaque_body |= inner.opaque_body;
    facts.runs_query_text |= inner.runs_query_text;
    if facts.unseen_query.is_none() {
        facts.unseen_query = inner.unseen_query.clone();
    }
    facts.effect = facts.effect.max(inner.effect);
}

fn collect_table_functions(statement: &Statement, facts: &mut StatementFacts) {
    // Calls in FROM are table factors, not expressions: walk the table factors.
    struct Finder<'a>(&'a mut StatementFacts);
    impl sqlparser::ast::Visitor for Finder<'_> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            match factor {
                TableFactor::Function { name, .. } => {
                    self.0.functions.extend(function_name(name));
                }
                TableFactor::TableFunction {
                    expr: Expr::Function(f),
                    ..
                } => {
                    self.0.functions.extend(function_name(&f.name));
                }
                TableFactor::Table {
                    name,
                    args: Some(_),
                    ..
                } => {
                    self.0.functions.extend(function_name(name));
                }
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let _ = sqlparser::ast::Visit::visit(statement, &mut Finder(facts));
}

/// What a statement can change, not counting the statements nested in it (which are
/// visited on their own).
fn effect_of(s: &Statement) -> Effect {
    match s {
        Statement::Query(q) if matches!(q.body.as_ref(), SetExpr::Select(select) if select.into.is_some()) => {
            Effect::Other
        }
        Statement::Query(q) if !q.locks.is_empty() => Effect::Writes,
        Statement::Query(_) => Effect::Reads,
        Statement::Set(Set::SetRole { .. } | Set::SetSessionAuthorization(_)) => Effect::Other,
        Statement::Set(_)
        | Statement::Explain { .. }
        | Statement::ExplainTable { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::StartTransaction { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => Effect::Reads,
        Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge { .. } => Effect::Writes,
        Statement::Commit { .. } => Effect::Commits,
        _ => Effect::Other,
    }
}

fn classify(s: &Statement, facts: &mut StatementFacts) {
    use StatementKind as K;
    facts.effect = facts.effect.max(effect_of(s));
    let kind = match s {
        // SELECT ... INTO creates a table.
        Statement::Query(q) if matches!(q.body.as_ref(), SetExpr::Select(select) if select.into.is_some()) => {
            K::Ddl
        }
        Statement::Query(_) => K::Select,
        Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge(_)
            if super::bounded::unbounded_write(s) =>
        {
            facts.missing_where = true;
            write_kind(s, facts)
        }
        Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge(_) => write_kind(s, facts),
        // Empties every row of its tables: a write without a bound. With CASCADE it also
        // empties every table whose foreign keys reference them, which it does not name.
        Statement::Truncate(t) => {
            facts.missing_where = true;
            if matches!(t.cascade, Some(sqlparser::ast::CascadeOption::Cascade)) {
                super::code::runs_unseen_code(
                    facts,
                    "TRUNCATE ... CASCADE also empties every table whose foreign keys reference the tables it names, which the statement does not name",
                );
            }
            K::Truncate
        }
        // An operator runs its function wherever it is used, and a later statement that uses
        // it (even `+` or `=`, when its schema comes before pg_catalog on the path) names no
        // function: what it runs cannot be analysed there.
        Statement::CreateOperator { .. }
        | Statement::CreateOperatorFamily { .. }
        | Statement::CreateOperatorClass { .. }
        | Statement::AlterOperator { .. }
        | Statement::AlterOperatorFamily { .. }
        | Statement::AlterOperatorClass { .. } => {
            super::code::runs_unseen_code(
                facts,
                "an operator runs its function wherever it is used, and the statements that use it do not name that function",
            );
            K::Ddl
        }
        // `ALTER COLUMN ... TYPE ... USING expr` rewrites the column of every row.
        Statement::AlterTable(at)
            if at.operations.iter().any(|op| {
                matches!(
                    op,
                    sqlparser::ast::AlterTableOperation::AlterColumn {
                        op: sqlparser::ast::AlterColumnOperation::SetDataType {
                            using: Some(_),
                            ..
                        },
                        ..
                    }
                )
            }) =>
        {
            facts.missing_where = true;
            K::Ddl
        }
        Statement::Copy {
            source, target, to, ..
        } => {
            if let sqlparser::ast::CopySource::Table { table_name, .. } = source {
                facts.tables.extend(Qualified::of(table_name));
            }
            // COPY ... TO reads like a query; COPY ... FROM inserts rows like INSERT.
            if *to {
                facts.kinds.insert(K::Select);
            } else {
                facts.kinds.insert(K::Insert);
                facts.effect = Effect::Writes;
            }
            match target {
                CopyTarget::Program { .. } => facts.copy_program = true,
                CopyTarget::File { .. } => facts.copy_file = true,
                CopyTarget::Stdin | CopyTarget::Stdout => {}
            }
            K::Copy
        }
        Statement::Call(f) => {
            facts.functions.extend(function_name(&f.name));
            K::Call
        }
        // A cursor runs its query: rows leave through FETCH.
        Statement::Declare { stmts } if stmts.iter().any(|d| d.for_query.is_some()) => K::Select,
        Statement::Set(set) => match set {
            // The new role is what `"$user"` in the path stands for.
            Set::SetRole { role_name, .. } => {
                if let Some(role) = role_name {
                    facts
                        .path_changes
                        .push(PathChange::Role(Some(names::fold(role))));
                }
                K::SetRole
            }
            Set::SetSessionAuthorization(param) => {
                if let sqlparser::ast::SetSessionAuthorizationParamKind::User(role) = &param.kind {
                    facts
                        .path_changes
                        .push(PathChange::Role(Some(names::fold(role))));
                }
                K::SetRole
            }
            Set::SingleAssignment {
                variable, values, ..
            } => {
                let name = name_parts(variable).join(".").to_ascii_lowercase();
                let kind = if name == "role" || name == "session_authorization" {
                    K::SetRole
                } else {
                    K::Other
                };
                // `SET SCHEMA 'x'` is `SET search_path TO 'x'`.
                if name == "search_path" || name == "schema" {
                    facts.path_changes.push(names::set_values(values));
                }
                if kind == K::SetRole {
                    facts.path_changes.extend(role_change(values));
                }
                facts.settings.insert(name);
                kind
            }
            Set::SetTimeZone { .. } | Set::SetNames { .. } | Set::SetNamesDefault {} => K::Other,
            // Other forms are not PostgreSQL's; whatever they set is not known.
            _ => {
                facts.path_changes.push(PathChange::Unknown);
                K::Other
            }
        },
        Statement::Reset(r) => {
            let all_or_path = match &r.reset {
                sqlparser::ast::Reset::ALL => true,
                sqlparser::ast::Reset::ConfigurationParameter(name) => {
                    let name = name_parts(name).join(".").to_ascii_lowercase();
                    name == "search_path"
                }
                sqlparser::ast::Reset::SessionAuthorization => false,
            };
            if all_or_path {
                facts.path_changes.push(PathChange::Default);
            }
            K::Other
        }
        Statement::Discard { .. } => {
            facts.path_changes.push(PathChange::Default);
            K::Other
        }
        Statement::Grant { .. }
        | Statement::Revoke { .. }
        | Statement::Deny { .. }
        | Statement::CreateRole { .. }
        | Statement::AlterRole { .. }
        | Statement::CreateUser { .. }
        | Statement::AlterUser { .. }
        | Statement::CreatePolicy { .. }
        | Statement::AlterPolicy { .. }
        | Statement::DropPolicy { .. } => K::Dcl,
        Statement::CreateFunction(f) => {
            // An SQL body is judged as if it ran; another is kept as code nothing can see
            // into, judged where it is called.
            let body = super::code::function_body(f);
            match &body {
                Some(b) => super::code::merge(facts, b),
                None => facts.opaque_body = true,
            }
            facts.defines.extend(Qualified::of(&f.name).map(|name| {
                super::code::Definition {
                    kind: super::code::ObjectKind::Function,
                    name,
                    signature: f
                        .args
                        .iter()
                        .flatten()
                        .filter(|a| !matches!(a.mode, Some(sqlparser::ast::ArgMode::Out)))
                        .map(|a| a.data_type.to_string().to_ascii_lowercase())
                        .collect::<Vec<_>>()
                        .join(","),
                    body: body.map(std::sync::Arc::new),
                    text: s.to_string(),
                }
            }));
            K::Ddl
        }
        Statement::CreateProcedure { .. } => {
            facts.opaque_body = true;
            K::Ddl
        }
        Statement::CreateTrigger(t) => {
            if let Some(body) = &t.exec_body {
                facts.functions.extend(function_name(&body.func_desc.name));
            }
            super::code::runs_unseen_code(
                facts,
                "a trigger runs its function, whose body cannot be analysed, on later statements",
            );
            K::Ddl
        }
        Statement::CreateView(v) => {
            let body = facts_of(Statement::Query(v.query.clone()), "");
            let name = Qualified::of(&v.name).map(|mut name| {
                if v.temporary && name.schema.is_none() {
                    name.schema = Some("pg_temp".to_owned());
                }
                name
            });
            facts
                .defines
                .extend(name.map(|name| super::code::Definition {
                    kind: super::code::ObjectKind::Relation,
                    name,
                    signature: String::new(),
                    body: Some(std::sync::Arc::new(StatementFacts { ast: None, ..body })),
                    text: s.to_string(),
                }));
            K::Ddl
        }
        // Renaming or moving a function, a table or a schema changes what the names of
        // later statements (and of kept definitions) resolve to.
        Statement::AlterFunction(a)
            if matches!(
                a.operation,
                sqlparser::ast::AlterFunctionOperation::RenameTo { .. }
                    | sqlparser::ast::AlterFunctionOperation::SetSchema { .. }
            ) =>
        {
            renames(facts);
            K::Ddl
        }
        Statement::AlterTable(a)
            if a.operations
                .iter()
                .any(|o| matches!(o, sqlparser::ast::AlterTableOperation::RenameTable { .. })) =>
        {
            renames(facts);
            K::Ddl
        }
        Statement::AlterSchema(a)
            if a.operations
                .iter()
                .any(|o| matches!(o, sqlparser::ast::AlterSchemaOperation::Rename { .. })) =>
        {
            renames(facts);
            K::Ddl
        }
        Statement::CreateTable { .. }
        | Statement::CreateVirtualTable { .. }
        | Statement::CreateIndex { .. }
        | Statement::CreateSecret { .. }
        | Statement::CreateServer { .. }
        | Statement::CreateConnector { .. }
        | Statement::AlterTable { .. }
        | Statement::AlterSchema { .. }
        | Statement::AlterIndex { .. }
        | Statement::AlterView { .. }
        | Statement::AlterFunction { .. }
        | Statement::AlterType { .. }
        | Statement::AlterCollation { .. }
        | Statement::Drop { .. }
        | Statement::DropFunction { .. }
        | Statement::DropDomain { .. }
        | Statement::DropProcedure { .. }
        | Statement::DropSecret { .. }
        | Statement::DropConnector { .. }
        | Statement::CreateExtension { .. }
        | Statement::DropExtension { .. }
        | Statement::DropOperator { .. }
        | Statement::DropOperatorFamily { .. }
        | Statement::DropOperatorClass { .. }
        | Statement::DropTrigger { .. }
        | Statement::Comment { .. }
        | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. }
        | Statement::CreateSequence { .. }
        | Statement::CreateDomain { .. }
        | Statement::CreateType { .. }
        | Statement::CreateCollation { .. }
        | Statement::CreateTextSearch { .. }
        | Statement::AlterTextSearch { .. }
        | Statement::RenameTable { .. } => K::Ddl,
        Statement::Explain { .. }
        | Statement::ExplainTable { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. } => K::Select,
        _ => K::Other,
    };
    facts.kinds.insert(kind);
    // Altering a table changes its rows (a column rewritten, a default or a constraint
    // added, a partition attached) or what later writes do to them (a foreign-key action
    // that deletes or updates its rows when another table changes, a trigger enabled): for
    // the guardrails it is every kind of write of that table as well as DDL.
    if let Statement::AlterTable(at) = s {
        // Renames change what later names resolve to (see `renames`), not the rows.
        if at.operations.iter().all(|o| {
            matches!(
                o,
                sqlparser::ast::AlterTableOperation::RenameTable { .. }
                    | sqlparser::ast::AlterTableOperation::RenameColumn { .. }
            )
        }) {
            return;
        }
        facts.kinds.extend([K::Insert, K::Update, K::Delete]);
        facts.effect = facts.effect.max(Effect::Writes);
        // A foreign key with a referential action lets a one-row write of another table
        // update or delete any number of this table's rows: no bound of a later statement
        // holds for them.
        if referential_action(&s.to_string()) {
            facts.missing_where = true;
        }
    }
}

/// Whether rendered DDL gives a foreign key an action that changes the referencing rows.
fn referential_action(sql: &str) -> bool {
    ["ON DELETE", "ON UPDATE"].iter().any(|on| {
        sql.match_indices(on).any(|(i, _)| {
            let rest = sql[i + on.len()..].trim_start();
            rest.starts_with("CASCADE")
                || rest.starts_with("SET NULL")
                || rest.starts_with("SET DEFAULT")
        })
    })
}

/// A rename or move of a function, table, view or schema: what later names resolve to
/// changes in a way the analysis does not follow.
fn renames(facts: &mut StatementFacts) {
    facts.opaque_body = true;
    if facts.unseen.is_none() {
        facts.unseen = Some(
            "renaming or moving a function, table, view or schema changes what later statements run"
                .to_owned(),
        );
    }
}

/// The kinds of a write statement: its own, and UPDATE/DELETE for the row changes of an
/// upsert or a MERGE (so that guardrails on updates and deletes see them).
fn write_kind(s: &Statement, facts: &mut StatementFacts) -> StatementKind {
    use StatementKind as K;
    match s {
        Statement::Insert(_) => {
            facts.kinds.extend(super::bounded::updates_rows(s));
            K::Insert
        }
        Statement::Update(_) => K::Update,
        Statement::Delete(_) => K::Delete,
        Statement::Merge(m) => {
            facts.kinds.extend(super::bounded::merge_kinds(m));
            K::Merge
        }
        _ => K::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(sql: &str) -> Vec<StatementFacts> {
        match analyze(sql) {
            Analysis::Statements(s) => s,
            Analysis::Unanalyzable { reason, .. } => panic!("{sql}: {reason}"),
        }
    }

    #[test]
    fn role_changes_are_path_changes() {
        let role = |sql: &str| {
            facts(sql)
                .into_iter()
                .flat_map(|f| f.path_changes)
                .filter(|c| matches!(c, PathChange::Role(_)))
                .collect::<Vec<_>>()
        };
        let crm = vec![PathChange::Role(Some("crm".into()))];
        for sql in [
            "SET ROLE crm",
            "SET LOCAL ROLE CRM",
            "SET SESSION AUTHORIZATION crm",
            "SET LOCAL session_authorization TO crm",
            "SELECT set_config('role', 'crm', false)",
            "SELECT 1 WHERE set_config('Role', 'crm', true) IS NOT NULL",
        ] {
            assert_eq!(role(sql), crm, "{sql}");
        }
        assert_eq!(
            role("SELECT set_config('role', 'c' || 'rm', false)"),
            vec![PathChange::Role(None)]
        );
        for sql in [
            "SET ROLE NONE",
            "RESET ROLE",
            "SET SESSION AUTHORIZATION DEFAULT",
        ] {
            assert!(role(sql).is_empty(), "{sql}");
        }
        // A computed setting name may set anything.
        assert!(facts("SELECT set_config(lower('ROLE'), 'crm', false)")[0]
            .path_changes
            .contains(&PathChange::Unknown));
    }

    #[test]
    fn query_texts_count_as_the_statement() {
        let f =
            &facts("SELECT query_to_xml('SELECT crm.purge() FROM crm.contacts', true, false, '')")
                [0];
        assert!(f.runs_query_text && f.unseen_query.is_none());
        assert!(f.functions.contains(&Qualified {
            schema: Some("crm".into()),
            name: "purge".into()
        }));
        assert!(f.tables.contains(&Qualified {
            schema: Some("crm".into()),
            name: "contacts".into()
        }));
        // What the inner query does to the path counts too.
        let f = &facts("SELECT * FROM ts_stat('SELECT to_tsvector(x) FROM t WHERE set_config(''search_path'', ''crm'', false) IS NOT NULL')")[0];
        assert!(f
            .path_changes
            .contains(&PathChange::Set(vec!["crm".into()])));
        for sql in [
            "SELECT query_to_xml($1, true, false, '')",
            "SELECT query_to_xml('SELECT (', true, false, '')",
        ] {
            assert!(facts(sql)[0].unseen_query.is_some(), "{sql}");
        }
    }

    #[test]
    fn writes_of_every_row() {
        for sql in [
            "TRUNCATE crm.contacts",
            "TRUNCATE TABLE ONLY a, b RESTART IDENTITY CASCADE",
            "ALTER TABLE crm.contacts ALTER COLUMN name TYPE text USING 'x'",
            "UPDATE crm.contacts SET name = 'x' WHERE tableoid = 'crm.contacts'::regclass",
            "DELETE FROM crm.contacts WHERE ctid >= '(0,0)'",
            "DELETE FROM crm.contacts c WHERE c.xmin::text::bigint > 0",
        ] {
            assert!(facts(sql)[0].missing_where, "{sql}");
        }
        assert!(
            !facts("ALTER TABLE crm.contacts ALTER COLUMN name TYPE varchar(200)")[0].missing_where
        );
    }

    #[test]
    fn read_only_statements() {
        let reads = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "SELECT count(*), lower(email) FROM customers GROUP BY 2",
            "WITH c AS (SELECT * FROM customers) SELECT * FROM c",
            "SELECT * FROM a UNION SELECT * FROM b",
            "SHOW search_path",
            "EXPLAIN SELECT 1",
            "BEGIN",
            "ROLLBACK",
            "SET application_name = 'x'",
            "SET portcullis.justification = 'ticket 42'",
        ];
        for sql in reads {
            assert!(
                facts(sql).iter().all(|f| f.effect == Effect::Reads),
                "{sql}"
            );
        }
        let writes = [
            "UPDATE t SET a = 1 WHERE id = 2",
            "INSERT INTO t VALUES (1)",
            "DELETE FROM t WHERE id = 1",
            "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
            "SELECT * FROM customers WHERE id = 1 FOR UPDATE",
            "EXPLAIN ANALYZE DELETE FROM t WHERE id = 1",
        ];
        for sql in writes {
            assert_eq!(facts(sql)[0].effect, Effect::Writes, "{sql}");
        }
        assert_eq!(facts("COMMIT")[0].effect, Effect::Commits);
        assert_eq!(facts("END")[0].effect, Effect::Commits);
        let others = [
            "UPDATE t SET a = nextval('s') WHERE id = 2",
            "SELECT nextval('s')",
            "SELECT my_function(1)",
            "SELECT pg_terminate_backend(42)",
            "SELECT * INTO copy_of_customers FROM customers",
            "SET ROLE admin",
            "COPY customers TO STDOUT",
            "CREATE TABLE t (a int)",
            "LOCK TABLE customers",
            "NOTIFY channel",
            "VACUUM customers",
        ];
        for sql in others {
            assert_eq!(facts(sql)[0].effect, Effect::Other, "{sql}");
        }
        // SELECT ... INTO is table creation for the guardrails too.
        assert!(facts("SELECT * INTO c2 FROM customers")[0]
            .kinds
            .contains(&StatementKind::Ddl));
    }

    #[test]
    fn kinds_tables_and_functions() {
        let f =
            &facts("SELECT lower(email) FROM public.Customers c JOIN \"Orders\" o ON o.id = c.id")
                [0];
        assert!(f.kinds.contains(&StatementKind::Select));
        assert_eq!(
            f.tables.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["Orders".to_owned(), "public.customers".to_owned()]
        );
        assert!(f.functions.contains(&Qualified::bare("lower")));
        let f = &facts("WITH d AS (DELETE FROM orders RETURNING id) SELECT * FROM d")[0];
        assert!(f.kinds.contains(&StatementKind::Delete) && f.missing_where);
        let f = &facts("COPY customers TO PROGRAM 'gzip > /tmp/x'")[0];
        assert!(f.copy_program && f.tables.contains(&Qualified::bare("customers")));
    }

    #[test]
    fn writes_the_statement_does_not_spell_as_writes() {
        // COPY FROM inserts; ALTER TABLE changes the rows or what later writes do to them.
        let f = &facts("COPY customers FROM STDIN")[0];
        assert!(f.kinds.contains(&StatementKind::Insert));
        assert!(f.tables.contains(&Qualified::bare("customers")));
        for sql in [
            "ALTER TABLE customers ADD FOREIGN KEY (id) REFERENCES mine (id) ON UPDATE CASCADE",
            "ALTER TABLE customers ALTER COLUMN city TYPE text USING 'x'",
            "ALTER TABLE customers ADD COLUMN c int DEFAULT 1",
            "ALTER TABLE customers ENABLE TRIGGER ALL",
        ] {
            let f = &facts(sql)[0];
            for k in [
                StatementKind::Insert,
                StatementKind::Update,
                StatementKind::Delete,
            ] {
                assert!(f.kinds.contains(&k), "{sql}");
            }
            assert!(f.tables.contains(&Qualified::bare("customers")), "{sql}");
        }
        // What runs without being named cannot be analysed.
        for sql in [
            "TRUNCATE mine CASCADE",
            "CREATE OPERATOR public.+ (LEFTARG = int, RIGHTARG = int, FUNCTION = f)",
            "CREATE OPERATOR ### (LEFTARG = int, RIGHTARG = int, FUNCTION = f)",
        ] {
            let f = &facts(sql)[0];
            assert!(
                f.unseen.is_some() && f.kinds.contains(&StatementKind::DoBlock),
                "{sql}"
            );
        }
        assert!(facts("TRUNCATE mine")[0].unseen.is_none());
        // A referential action deletes or updates rows no later statement bounds.
        for sql in [
            "ALTER TABLE c ADD FOREIGN KEY (k) REFERENCES p (k) ON DELETE CASCADE",
            "ALTER TABLE c ADD CONSTRAINT f FOREIGN KEY (k) REFERENCES p (k) ON UPDATE SET NULL",
            "ALTER TABLE c ADD COLUMN k int REFERENCES p (k) on delete set default",
        ] {
            assert!(facts(sql)[0].missing_where, "{sql}");
        }
        assert!(
            !facts("ALTER TABLE c ADD FOREIGN KEY (k) REFERENCES p (k) ON DELETE RESTRICT")[0]
                .missing_where
        );
    }

    #[test]
    fn where_clauses_that_hold_for_every_row() {
        for sql in [
            "DELETE FROM t",
            "DELETE FROM t WHERE true",
            "DELETE FROM t WHERE 1 = 1",
            "DELETE FROM t WHERE (1 = 1)",
            "DELETE FROM t WHERE id = 3 OR 'a' = 'a'",
            "UPDATE t SET a = 1 WHERE a = a",
            "UPDATE t SET a = 1 WHERE NOT false",
            "DELETE FROM t WHERE id IN (SELECT id FROM u)",
        ] {
            assert!(facts(sql)[0].missing_where, "{sql}");
        }
        for sql in [
            "DELETE FROM t WHERE id = 3",
            "DELETE FROM t WHERE id IN (SELECT u.id FROM u WHERE u.k = 1)",
            "UPDATE t SET a = 1 WHERE a = 2 AND 1 = 1",
        ] {
            assert!(!facts(sql)[0].missing_where, "{sql}");
        }
    }

    #[test]
    fn literals_become_placeholders() {
        let f =
            &facts("SELECT * FROM customers WHERE email = 'a@b.example' AND id > 42 LIMIT 5")[0];
        assert!(!f.normalized.contains("a@b.example"));
        assert!(!f.normalized.contains("42"));
        assert_eq!(
            f.fingerprint,
            facts("SELECT * FROM customers WHERE email = 'x@y.example' AND id > 7 LIMIT 9")[0]
                .fingerprint
        );
    }

    #[test]
    fn do_blocks_are_opaque_and_scanned() {
        let f = &facts("DO $$ BEGIN PERFORM pg_read_file('/etc/passwd'); END $$;")[0];
        assert!(f.kinds.contains(&StatementKind::DoBlock) && f.opaque_body);
        assert!(f.functions.contains(&Qualified::bare("pg_read_file")));
        assert!(matches!(
            analyze("SELECT 1; DO $$ BEGIN NULL; END $$"),
            Analysis::Unanalyzable { .. }
        ));
    }

    #[test]
    fn deep_nesting_is_unanalysable_not_a_crash() {
        let sql = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
        assert!(matches!(analyze(&sql), Analysis::Unanalyzable { .. }));
    }

    #[test]
    fn a_do_block_is_never_read_only() {
        for sql in [
            "DO $$ BEGIN DELETE FROM orders; END $$",
            "DO LANGUAGE plpgsql $$ BEGIN NULL; END $$",
        ] {
            let f = facts(sql);
            assert!(f[0].kinds.contains(&StatementKind::DoBlock), "{sql}");
            assert_eq!(f[0].effect, Effect::Other, "{sql}");
        }
    }
}
