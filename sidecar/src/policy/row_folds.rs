//! Ways rows of a table leave other than one result row each.
//!
//! A `rowsOver` guardrail counts the rows a statement returns, which holds only while each
//! row of the limited table leaves as (at most) one result row. This module finds, anywhere
//! in a statement (CTEs, subqueries, `PREPARE`, `EXPLAIN`, `DECLARE ... CURSOR`), what breaks
//! that:
//!
//! - **folds**: aggregates that put the values of many rows into one (`string_agg`,
//!   `array_agg`, `json[b]_agg`, `json[b]_object_agg`, `xmlagg`, `range_agg`, the percentile
//!   aggregates, which take arrays of fractions), `ARRAY(subquery)`, window functions that put
//!   other rows' values on a row (`lag`, `lead`, `first_value`, `last_value`, `nth_value`, and
//!   `min`/`max`/`mode` over a window frame), recursive CTEs (a row of one iteration can carry
//!   the rows of every earlier one), and, when the statement names a relation that carries the
//!   limited table, any function not known to be a built-in (it may be a user-defined
//!   aggregate);
//! - **readers by name or text**: built-ins that read a whole table, schema, database, cursor
//!   or query given as a name or a string and return it as one value (`table_to_xml`,
//!   `query_to_xml`, `cursor_to_xml`, `schema_to_xml`, `database_to_xml` and their
//!   `xmlschema` forms, `ts_stat`, `ts_rewrite`); the list is the server's `pg_proc` entries
//!   that take a query, a cursor or a relation by name and read its rows;
//! - **copies**: rows written into a relation the limit does not cover or into a file
//!   (`CREATE TABLE AS`, `SELECT INTO`, `CREATE MATERIALIZED VIEW`, `INSERT ... SELECT`,
//!   `UPDATE ... FROM`, `MERGE`, `COPY ... TO` a file or program), from where they would be
//!   read back without the limit.
//!
//! Aggregates that summarise rows into a number or a truth value (`count`, `sum`, `avg`,
//! `bool_and`, `bit_or`, the statistics and ranking aggregates) and those that return one
//! row's value (`min`, `max`, `mode`) stay allowed: each returns one value per group.

use std::fmt;
use std::ops::ControlFlow;

use sqlparser::ast::{
    CopyTarget, Expr, FunctionArguments, ObjectName, Query, SetExpr, Statement, TableFactor,
    TableObject, Visit, Visitor,
};

use super::analyze::StatementFacts;
use super::names::Qualified;

/// Aggregates that return the values of many rows as one value.
const FOLDING_AGGREGATES: &[&str] = &[
    "array_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "json_arrayagg",
    "json_objectagg",
    "json_agg_strict",
    "jsonb_agg_strict",
    "json_object_agg_strict",
    "jsonb_object_agg_strict",
    "json_object_agg_unique",
    "jsonb_object_agg_unique",
    "json_object_agg_unique_strict",
    "jsonb_object_agg_unique_strict",
    "string_agg",
    "xmlagg",
    "range_agg",
    "range_intersect_agg",
    "percentile_disc",
    "percentile_cont",
];

/// Window functions that return the value of another row of the window.
const OTHER_ROW_WINDOWS: &[&str] = &["lag", "lead", "first_value", "last_value", "nth_value"];

/// Aggregates that return one row's value: over a window frame they return other rows'.
const VALUE_AGGREGATES: &[&str] = &["min", "max", "mode", "any_value"];

/// Built-in aggregates that summarise rows into a number, a truth value or one row's value,
/// beyond those the analysis already knows.
const SUMMARY_AGGREGATES: &[&str] = &[
    "mode",
    "any_value",
    "bit_and",
    "bit_or",
    "bit_xor",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "stddev_pop",
    "stddev_samp",
    "var_pop",
    "var_samp",
];

/// Built-ins that read a table, schema, database, cursor or query named by an argument.
const READERS_BY_NAME: &[&str] = &[
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
];

/// How rows of a limited table could leave other than one result row each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowEscape {
    /// Many rows folded into one value (the construct, as written).
    Fold(String),
    /// A function that reads rows named by an argument, which the statement does not show.
    ReadsByName(String),
    /// Rows copied into another relation or a file.
    Copy(&'static str),
}

impl fmt::Display for RowEscape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowEscape::Fold(what) => write!(f, "{what} folds many rows into one"),
            RowEscape::ReadsByName(what) => write!(
                f,
                "{what} reads rows of a table or query named by its argument and returns them as one value"
            ),
            RowEscape::Copy(what) => {
                write!(f, "{what} copies rows where they would be read without the limit")
            }
        }
    }
}

/// What of a statement lets rows of a limited table leave other than one result row each.
/// `names_limited`: the statement names a relation that carries the limited table (then a
/// function that is not a known built-in may be an aggregate over it). `limited_target`:
/// whether a relation written by name is covered by the limit itself.
pub fn escape(
    facts: &StatementFacts,
    names_limited: bool,
    limited_target: &dyn Fn(&ObjectName) -> bool,
) -> Option<RowEscape> {
    for f in &facts.functions {
        if READERS_BY_NAME.contains(&f.name.as_str()) {
            return Some(RowEscape::ReadsByName(f.to_string()));
        }
        if FOLDING_AGGREGATES.contains(&f.name.as_str())
            || OTHER_ROW_WINDOWS.contains(&f.name.as_str())
        {
            return Some(RowEscape::Fold(f.to_string()));
        }
    }
    if names_limited {
        let aggregate_like = |f: &&Qualified| {
            !super::analyze::is_known_builtin(f)
                && !SUMMARY_AGGREGATES.iter().any(|a| f.is_builtin(a))
                && f.name != "array"
        };
        if let Some(f) = facts.functions.iter().find(aggregate_like) {
            return Some(RowEscape::Fold(format!(
                "{f} (a function the sidecar does not know, which may be an aggregate)"
            )));
        }
    }
    let ast = facts.ast.as_deref()?;
    let mut finder = Finder {
        limited_target,
        found: None,
    };
    let _ = ast.visit(&mut finder);
    finder.found
}

/// The relations a statement writes rows into or creates (INSERT, UPDATE and MERGE targets,
/// CREATE TABLE, VIEW and MATERIALIZED VIEW, SELECT INTO), wherever they stand. They are
/// destinations, not sources, of the rows the statement reads.
pub fn write_targets(facts: &StatementFacts) -> Vec<Qualified> {
    struct Targets(Vec<Qualified>);
    impl Targets {
        fn add(&mut self, name: &ObjectName) {
            self.0.extend(Qualified::of(name));
        }
    }
    impl Visitor for Targets {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if let SetExpr::Select(s) = q.body.as_ref() {
                for target in s.into.iter().flat_map(|i| &i.targets) {
                    match target {
                        Expr::Identifier(id) => self.add(&ObjectName::from(vec![id.clone()])),
                        Expr::CompoundIdentifier(ids) => self.add(&ObjectName::from(ids.clone())),
                        _ => {}
                    }
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
            match s {
                Statement::CreateTable(t) => self.add(&t.name),
                Statement::CreateView(v) => self.add(&v.name),
                Statement::Insert(i) => {
                    if let TableObject::TableName(name) = &i.table {
                        self.add(name);
                    }
                }
                Statement::Update(u) => {
                    if let TableFactor::Table { name, .. } = &u.table.relation {
                        self.add(name);
                    }
                }
                Statement::Merge(m) => {
                    if let TableFactor::Table { name, .. } = &m.table {
                        self.add(name);
                    }
                }
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let mut t = Targets(Vec::new());
    if let Some(ast) = facts.ast.as_deref() {
        let _ = ast.visit(&mut t);
    }
    t.0
}

struct Finder<'a> {
    limited_target: &'a dyn Fn(&ObjectName) -> bool,
    found: Option<RowEscape>,
}

impl Finder<'_> {
    fn found(&mut self, e: RowEscape) -> ControlFlow<()> {
        self.found = Some(e);
        ControlFlow::Break(())
    }

    fn target_factor(&self, t: &TableFactor) -> bool {
        match t {
            TableFactor::Table { name, .. } => (self.limited_target)(name),
            _ => false,
        }
    }
}

impl Visitor for Finder<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if q.with.as_ref().is_some_and(|w| w.recursive) {
            return self.found(RowEscape::Fold("a recursive CTE".to_owned()));
        }
        if let SetExpr::Select(s) = q.body.as_ref() {
            if s.into.is_some() {
                return self.found(RowEscape::Copy("SELECT INTO"));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            let name = Qualified::of(&f.name).map(|q| q.name).unwrap_or_default();
            if name == "array" && matches!(f.args, FunctionArguments::Subquery(_)) {
                return self.found(RowEscape::Fold("ARRAY(subquery)".to_owned()));
            }
            if f.over.is_some() && VALUE_AGGREGATES.contains(&name.as_str()) {
                return self.found(RowEscape::Fold(format!("{name} over a window")));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        match s {
            Statement::CreateTable(t) if t.query.is_some() && !(self.limited_target)(&t.name) => {
                self.found(RowEscape::Copy("CREATE TABLE AS"))
            }
            Statement::CreateView(v) if v.materialized && !(self.limited_target)(&v.name) => {
                self.found(RowEscape::Copy("CREATE MATERIALIZED VIEW"))
            }
            Statement::Copy {
                to: true,
                target: CopyTarget::File { .. } | CopyTarget::Program { .. },
                ..
            } => self.found(RowEscape::Copy("COPY TO a file or program")),
            Statement::Insert(i) => {
                let limited = match &i.table {
                    TableObject::TableName(name) => (self.limited_target)(name),
                    _ => false,
                };
                if limited {
                    ControlFlow::Continue(())
                } else {
                    self.found(RowEscape::Copy("INSERT"))
                }
            }
            Statement::Update(u) if !self.target_factor(&u.table.relation) => {
                self.found(RowEscape::Copy("UPDATE"))
            }
            Statement::Merge(m) if !self.target_factor(&m.table) => {
                self.found(RowEscape::Copy("MERGE"))
            }
            _ => ControlFlow::Continue(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::analyze::{analyze, Analysis};

    fn facts(sql: &str) -> StatementFacts {
        match analyze(sql) {
            Analysis::Statements(mut s) => s.remove(0),
            Analysis::Unanalyzable { reason, .. } => panic!("{sql}: {reason}"),
        }
    }

    fn leads(name: &ObjectName) -> bool {
        Qualified::of(name).is_some_and(|q| q.name == "leads")
    }

    #[test]
    fn folds_readers_and_copies_are_found_wherever_they_stand() {
        for sql in [
            "SELECT string_agg(email, ',') FROM crm.leads",
            "SELECT pg_catalog.json_agg(l) FROM crm.leads l",
            "WITH x AS (SELECT jsonb_object_agg(id, email) FROM crm.leads) SELECT * FROM x",
            "SELECT (SELECT xmlagg(email::xml) FROM crm.leads)",
            "SELECT ARRAY(SELECT email FROM crm.leads)",
            "SELECT email, lead(email, 1) OVER (ORDER BY id) FROM crm.leads",
            "SELECT max(email) OVER (ROWS BETWEEN 1 FOLLOWING AND 1 FOLLOWING) FROM crm.leads",
            "SELECT percentile_disc(ARRAY[0, 0.5, 1]) WITHIN GROUP (ORDER BY email) FROM crm.leads",
            "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 3) SELECT * FROM r, crm.leads",
            "SELECT table_to_xml('crm.leads', true, false, '')",
            "SELECT * FROM query_to_xml('SELECT 1', true, false, '')",
            "SELECT cursor_to_xml('c', 100, true, false, '')",
            "PREPARE p AS SELECT string_agg(email, ',') FROM crm.leads",
            "EXPLAIN ANALYZE SELECT array_agg(email) FROM crm.leads",
            "DECLARE c CURSOR FOR SELECT string_agg(email, ',') FROM crm.leads",
            "CREATE TEMP TABLE t AS SELECT * FROM crm.leads",
            "EXPLAIN ANALYZE CREATE TABLE t AS SELECT * FROM crm.leads",
            "SELECT * INTO TEMP t FROM crm.leads",
            "CREATE MATERIALIZED VIEW m AS SELECT * FROM crm.leads",
            "INSERT INTO other SELECT * FROM crm.leads",
            "WITH c AS (INSERT INTO other SELECT * FROM crm.leads RETURNING 1) SELECT 1",
            "UPDATE other SET email = l.email FROM crm.leads l WHERE l.id = other.id",
            "MERGE INTO other o USING crm.leads l ON o.id = l.id WHEN NOT MATCHED THEN INSERT VALUES (l.id)",
            "COPY (SELECT * FROM crm.leads) TO '/tmp/leads'",
            "COPY crm.leads TO PROGRAM 'cat'",
        ] {
            assert!(escape(&facts(sql), true, &leads).is_some(), "{sql}");
        }
        let into = facts("SELECT * INTO TEMP t FROM crm.leads");
        assert_eq!(write_targets(&into), vec![Qualified::bare("t")]);
        // An unknown function is a fold only where the statement names the table.
        let f = facts("SELECT my_agg(email) FROM crm.leads");
        assert!(escape(&f, true, &leads).is_some());
        assert!(escape(&f, false, &leads).is_none());
        for sql in [
            "SELECT * FROM crm.leads WHERE id < 10",
            "SELECT count(*), max(email), min(id), avg(id), sum(id) FROM crm.leads",
            "SELECT id, row_number() OVER (ORDER BY id), count(*) OVER () FROM crm.leads",
            "SELECT email FROM crm.leads UNION ALL SELECT email FROM crm.leads",
            "UPDATE crm.leads SET email = lower(email) WHERE id = 1",
            "INSERT INTO crm.leads SELECT * FROM crm.leads WHERE id = 1",
            "DELETE FROM crm.leads WHERE id = 1 RETURNING *",
            "COPY crm.leads TO STDOUT",
            "CREATE TEMP VIEW v AS SELECT * FROM crm.leads",
            "SELECT ARRAY[id, id] FROM crm.leads",
        ] {
            assert_eq!(escape(&facts(sql), true, &leads), None, "{sql}");
        }
    }
}
