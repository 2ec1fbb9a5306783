//! Statement analysis with sqlparser (PostgreSQL dialect): split a query string into
//! statements and, for each, find its kinds, the tables it touches, the functions it calls,
//! whether an UPDATE/DELETE lacks an effective WHERE, and how COPY moves data.

use std::collections::{BTreeSet, HashSet};
use std::ops::ControlFlow;

use portcullis_crds::gateway_policy::StatementKind;
use portcullis_crds::DEFAULT_SCHEMA;
use sqlparser::ast::{
    visit_expressions, visit_relations, visit_statements, BinaryOperator, CopyTarget, Expr,
    FunctionArguments, ObjectName, ObjectNamePart, Set, SetExpr, Statement, TableFactor,
    UnaryOperator, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::fingerprint;

/// Nesting depth the parser accepts before giving up (deeper input is unanalysable).
const RECURSION_LIMIT: usize = 64;

/// What the analysis found in one statement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatementFacts {
    /// Kinds of the statement and of every statement nested in it (CTEs, EXPLAIN, PREPARE).
    pub kinds: HashSet<StatementKind>,
    /// Tables touched, as `schema.table` (lower-cased unless quoted).
    pub tables: BTreeSet<String>,
    /// Functions called (lower-case, without schema), including table functions.
    pub functions: BTreeSet<String>,
    /// An UPDATE or DELETE without WHERE, or with a WHERE that is always true.
    pub missing_where: bool,
    /// `COPY ... TO/FROM PROGRAM`.
    pub copy_program: bool,
    /// `COPY ... TO/FROM 'file'` (a server-side file).
    pub copy_file: bool,
    /// Settings changed with SET (lower-case names).
    pub settings: BTreeSet<String>,
    /// The statement carries code the parser cannot see into (DO blocks, function bodies).
    pub opaque_body: bool,
    /// What running the statement can change (for how long its audit record may wait for
    /// its fsync).
    pub effect: Effect,
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
pub fn analyze(sql: &str) -> Analysis {
    let dialect = PostgreSqlDialect {};
    if let Err(e) = super::limits::check(sql) {
        return Analysis::Unanalyzable {
            reason: e.to_string(),
            fingerprint: fingerprint::of(sql),
        };
    }
    if let Some(facts) = do_block(sql) {
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
                fingerprint: fingerprint::of(sql),
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
        normalized: "DO ?".to_owned(),
        fingerprint: fingerprint::of("DO ?"),
        ..StatementFacts::default()
    };
    facts.kinds.insert(StatementKind::DoBlock);
    facts.functions = dangerous_names_in(sql);
    Some(facts)
}

/// Function names of the built-in deny list that occur anywhere in a text (used for bodies
/// the parser cannot see into).
fn dangerous_names_in(sql: &str) -> BTreeSet<String> {
    let lower = sql.to_ascii_lowercase();
    super::guardrails::BUILTIN_DENIED_FUNCTIONS
        .iter()
        .filter(|f| lower.contains(f.trim_end_matches('*')))
        .map(|f| f.trim_end_matches('*').to_owned())
        .collect()
}

fn ident_name(ident: &sqlparser::ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

fn name_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => ident_name(i),
            ObjectNamePart::Function(f) => f.name.value.to_lowercase(),
        })
        .collect()
}

fn qualified_table(name: &ObjectName) -> String {
    let parts = name_parts(name);
    match parts.as_slice() {
        [table] => format!("{DEFAULT_SCHEMA}.{table}"),
        [.., schema, table] => format!("{schema}.{table}"),
        [] => String::new(),
    }
}

fn function_name(name: &ObjectName) -> String {
    name_parts(name)
        .last()
        .map(|s| s.to_lowercase())
        .unwrap_or_default()
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

/// Whether a function (lower-case, without schema) is known to change nothing.
pub fn is_read_only_function(name: &str) -> bool {
    crate::masking::lineage::PURE_FUNCTIONS.contains(&name)
        || MORE_READ_ONLY_FUNCTIONS.contains(&name)
}

fn facts_of(mut statement: Statement, sql: &str) -> StatementFacts {
    let mut facts = StatementFacts::default();

    let _ = visit_statements(&statement, |s| {
        classify(s, &mut facts);
        ControlFlow::<()>::Continue(())
    });
    let _ = visit_relations(&statement, |name| {
        let table = qualified_table(name);
        if !table.is_empty() {
            facts.tables.insert(table);
        }
        ControlFlow::<()>::Continue(())
    });
    let _ = visit_expressions(&statement, |e| {
        if let Expr::Function(f) = e {
            facts.functions.insert(function_name(&f.name));
        }
        ControlFlow::<()>::Continue(())
    });
    // Table functions in FROM (`SELECT * FROM pg_ls_dir('.')`).
    collect_table_functions(&statement, &mut facts);
    facts.functions.retain(|f| !f.is_empty());

    // set_config('role', ...) changes the role like SET ROLE does.
    if facts.functions.contains("set_config") {
        facts.kinds.insert(StatementKind::SetRole);
    }
    if facts.opaque_body {
        facts.functions.extend(dangerous_names_in(sql));
    }
    if facts.kinds.is_empty() {
        facts.kinds.insert(StatementKind::Other);
    }
    let known_functions = facts.functions.iter().all(|f| is_read_only_function(f));
    if facts.opaque_body || !known_functions {
        facts.effect = Effect::Other;
    }
    facts.ast = Some(std::sync::Arc::new(statement.clone()));
    facts.normalized = fingerprint::normalize(&mut statement);
    facts.fingerprint = fingerprint::of(&facts.normalized);
    facts
}

fn collect_table_functions(statement: &Statement, facts: &mut StatementFacts) {
    // Calls in FROM are table factors, not expressions: walk the table factors.
    struct Finder<'a>(&'a mut StatementFacts);
    impl sqlparser::ast::Visitor for Finder<'_> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            match factor {
                TableFactor::Function { name, .. } => {
                    self.0.functions.insert(function_name(name));
                }
                TableFactor::TableFunction {
                    expr: Expr::Function(f),
                    ..
                } => {
                    self.0.functions.insert(function_name(&f.name));
                }
                TableFactor::Table {
                    name,
                    args: Some(_),
                    ..
                } => {
                    self.0.functions.insert(function_name(name));
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
        Statement::Insert(_) => K::Insert,
        Statement::Update(u) => {
            if u.selection.as_ref().is_none_or(is_always_true) {
                facts.missing_where = true;
            }
            K::Update
        }
        Statement::Delete(d) => {
            if d.selection.as_ref().is_none_or(is_always_true) {
                facts.missing_where = true;
            }
            K::Delete
        }
        Statement::Merge { .. } => K::Merge,
        Statement::Truncate { .. } => K::Truncate,
        Statement::Copy { source, target, .. } => {
            if let sqlparser::ast::CopySource::Table { table_name, .. } = source {
                facts.tables.insert(qualified_table(table_name));
            }
            match target {
                CopyTarget::Program { .. } => facts.copy_program = true,
                CopyTarget::File { .. } => facts.copy_file = true,
                CopyTarget::Stdin | CopyTarget::Stdout => {}
            }
            K::Copy
        }
        Statement::Call(f) => {
            facts.functions.insert(function_name(&f.name));
            K::Call
        }
        Statement::Set(set) => match set {
            Set::SetRole { .. } | Set::SetSessionAuthorization(_) => K::SetRole,
            Set::SingleAssignment { variable, .. } => {
                let name = name_parts(variable).join(".").to_lowercase();
                let kind = if name == "role" || name == "session_authorization" {
                    K::SetRole
                } else {
                    K::Other
                };
                facts.settings.insert(name);
                kind
            }
            _ => K::Other,
        },
        Statement::Reset { .. } => K::Other,
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
        Statement::CreateFunction { .. } | Statement::CreateProcedure { .. } => {
            facts.opaque_body = true;
            K::Ddl
        }
        Statement::CreateTrigger { .. } => {
            facts.opaque_body = true;
            K::Ddl
        }
        Statement::CreateView { .. }
        | Statement::CreateTable { .. }
        | Statement::CreateVirtualTable { .. }
        | Statement::CreateIndex { .. }
        | Statement::CreateSecret { .. }
        | Statement::CreateServer { .. }
        | Statement::CreateConnector { .. }
        | Statement::CreateOperator { .. }
        | Statement::CreateOperatorFamily { .. }
        | Statement::CreateOperatorClass { .. }
        | Statement::AlterTable { .. }
        | Statement::AlterSchema { .. }
        | Statement::AlterIndex { .. }
        | Statement::AlterView { .. }
        | Statement::AlterFunction { .. }
        | Statement::AlterType { .. }
        | Statement::AlterCollation { .. }
        | Statement::AlterOperator { .. }
        | Statement::AlterOperatorFamily { .. }
        | Statement::AlterOperatorClass { .. }
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
}

/// Whether a WHERE expression holds for every row: a constant (no column reference), `x = x`,
/// or an OR with such a branch.
pub fn is_always_true(e: &Expr) -> bool {
    match e {
        Expr::Nested(inner) => is_always_true(inner),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Or,
            right,
        } => is_always_true(left) || is_always_true(right),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => is_always_true(left) && is_always_true(right),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq | BinaryOperator::GtEq | BinaryOperator::LtEq,
            right,
        } if left == right => true,
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => is_constant(expr),
        Expr::IsNotNull(inner) | Expr::IsNull(inner) => is_constant(inner),
        Expr::Value(v) => !matches!(v.value, Value::Boolean(false) | Value::Null),
        other => is_constant(other),
    }
}

/// An expression that references no column and runs no subquery.
fn is_constant(e: &Expr) -> bool {
    let found = visit_expressions(e, |x| match x {
        Expr::Identifier(_)
        | Expr::CompoundIdentifier(_)
        | Expr::Subquery(_)
        | Expr::Exists { .. }
        | Expr::InSubquery { .. } => ControlFlow::Break(()),
        Expr::Function(f) if !matches!(f.args, FunctionArguments::None) => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    found.is_continue()
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
            f.tables.iter().cloned().collect::<Vec<_>>(),
            vec!["public.Orders".to_owned(), "public.customers".to_owned()]
        );
        assert!(f.functions.contains("lower"));
        let f = &facts("WITH d AS (DELETE FROM orders RETURNING id) SELECT * FROM d")[0];
        assert!(f.kinds.contains(&StatementKind::Delete) && f.missing_where);
        let f = &facts("COPY customers TO PROGRAM 'gzip > /tmp/x'")[0];
        assert!(f.copy_program && f.tables.contains("public.customers"));
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
        ] {
            assert!(facts(sql)[0].missing_where, "{sql}");
        }
        for sql in [
            "DELETE FROM t WHERE id = 3",
            "DELETE FROM t WHERE id IN (SELECT id FROM u)",
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
        assert!(f.functions.contains("pg_read_file"));
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
}
