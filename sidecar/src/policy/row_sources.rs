//! Which relations may return the rows of a table that a `rowsOver` guardrail limits.
//!
//! Rows of a table leave through the table itself and through every relation that reads it:
//! views and materialized views over it (at any depth, from the server's dependency records
//! of their rewrite rules), its inheritance children and partitions, and the parents it is a
//! child of. A session reads this map from the server when it starts ([`query`]), for the
//! tables its policies limit. A statement then reads a limited table when it names one of
//! those relations, names a relation the map does not know (created after the session
//! started, or in a schema the map could not see), calls a function that is not a known
//! built-in (a set-returning function can return any table's rows), or carries code the
//! analysis cannot see into. A session whose map could not be read treats every relation as
//! a source of every limited table.

use std::collections::{BTreeSet, HashMap};
use std::ops::ControlFlow;

use portcullis_crds::sidecar_config::QualifiedTable;
use sqlparser::ast::{Query, Statement, Visit, Visitor};

use super::analyze::StatementFacts;
use super::names::{Qualified, SearchPath};

/// The relations of one database, with the limited tables whose rows each may return.
#[derive(Clone, Debug, Default)]
pub struct RowSources {
    /// Relation name to (schema, limited tables as `schema.table`) of every relation of that
    /// name.
    by_name: HashMap<String, Vec<(String, BTreeSet<String>)>>,
    /// The map was read; without it every relation may return every limited table's rows.
    known: bool,
}

/// The limited tables of `tables`, as the `schema.table` keys the map uses.
fn key(t: &QualifiedTable) -> String {
    format!("{}.{}", t.schema, t.table)
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The catalog query that lists every relation with the limited tables among `tables` whose
/// rows it may return, as rows of (schema, name, comma-separated `schema.table` list);
/// `None` when there is no limited table.
pub fn query(tables: &[QualifiedTable]) -> Option<String> {
    if tables.is_empty() {
        return None;
    }
    let values: Vec<String> = tables
        .iter()
        .map(|t| {
            format!(
                "({}, {}, {})",
                literal(&key(t)),
                literal(&t.schema),
                literal(&t.table)
            )
        })
        .collect();
    Some(format!(
        "WITH RECURSIVE limited(root, oid) AS (\
           SELECT v.root, c.oid FROM (VALUES {}) v(root, nsp, rel) \
           JOIN pg_catalog.pg_namespace n ON n.nspname = v.nsp \
           JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = v.rel), \
         edges(parent, child) AS (\
           SELECT d.refobjid, r.ev_class FROM pg_catalog.pg_rewrite r \
           JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
             AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
             AND d.refobjid <> r.ev_class \
           UNION ALL SELECT inhparent, inhrelid FROM pg_catalog.pg_inherits \
           UNION ALL SELECT inhrelid, inhparent FROM pg_catalog.pg_inherits), \
         carries(root, oid) AS (\
           SELECT root, oid FROM limited \
           UNION SELECT c.root, e.child FROM carries c JOIN edges e ON e.parent = c.oid) \
         SELECT n.nspname, c.relname, \
           coalesce(pg_catalog.string_agg(DISTINCT x.root, ','), '') \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN carries x ON x.oid = c.oid \
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND n.nspname NOT LIKE 'pg\\_toast%' \
         GROUP BY 1, 2",
        values.join(", ")
    ))
}

impl RowSources {
    /// A map that could not be read: every relation may return every limited table's rows.
    pub fn unknown() -> RowSources {
        RowSources::default()
    }

    /// The map from the rows of [`query`]; `None` when a row is not of its shape.
    pub fn from_rows(rows: &[Vec<Option<String>>]) -> Option<RowSources> {
        let mut by_name: HashMap<String, Vec<(String, BTreeSet<String>)>> = HashMap::new();
        for row in rows {
            let [Some(schema), Some(name), Some(roots)] = row.as_slice() else {
                return None;
            };
            let roots = roots
                .split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect();
            by_name
                .entry(name.clone())
                .or_default()
                .push((schema.clone(), roots));
        }
        Some(RowSources {
            by_name,
            known: true,
        })
    }

    /// Whether a statement may return rows of `table` through a relation other than the
    /// table written by its name.
    pub fn may_read(
        &self,
        facts: &StatementFacts,
        table: &QualifiedTable,
        path: &SearchPath,
    ) -> bool {
        if facts.opaque_body {
            return true;
        }
        if facts
            .functions
            .iter()
            .any(|f| !super::analyze::is_known_builtin(f))
        {
            return true;
        }
        self.names(facts, table, path)
    }

    /// Whether a statement names a relation that may return rows of `table` (the table, a
    /// view or child of it, or a relation the map does not know), calls apart.
    pub fn names(&self, facts: &StatementFacts, table: &QualifiedTable, path: &SearchPath) -> bool {
        let root = key(table);
        // Names of the statement's own CTEs are no relations (collected only when needed).
        let mut ctes: Option<BTreeSet<String>> = None;
        facts.tables.iter().any(|name| {
            // Calls in FROM are judged as functions above.
            if facts.functions.contains(name) || !self.carries(name, &root, path) {
                return false;
            }
            if name.schema.is_some() {
                return true;
            }
            let ctes =
                ctes.get_or_insert_with(|| facts.ast.as_deref().map(cte_names).unwrap_or_default());
            !ctes.contains(&name.name)
        })
    }

    /// The tables (as `schema.table`) whose rows the relation `name` may carry, of those the
    /// map was read for: views over them at any depth, their children and parents. A relation
    /// the map does not know carries none; a map that could not be read knows none.
    pub fn carried(&self, name: &Qualified, path: &SearchPath) -> Carried {
        if !self.known {
            return Carried::Unknown;
        }
        let mut roots = BTreeSet::new();
        for (schema, r) in self.by_name.get(&name.name).into_iter().flatten() {
            let here = match &name.schema {
                Some(s) => s == schema,
                None => path.may_resolve_to(schema),
            };
            if here {
                roots.extend(r.iter().cloned());
            }
        }
        Carried::Roots(roots)
    }

    fn carries(&self, name: &Qualified, root: &str, path: &SearchPath) -> bool {
        if !self.known {
            return true;
        }
        let candidates: Vec<&(String, BTreeSet<String>)> = self
            .by_name
            .get(&name.name)
            .map(|v| {
                v.iter()
                    .filter(|(schema, _)| match &name.schema {
                        Some(s) => s == schema,
                        None => path.may_resolve_to(schema),
                    })
                    .collect()
            })
            .unwrap_or_default();
        // A relation the map does not know may be a view over the table.
        candidates.is_empty() || candidates.iter().any(|(_, roots)| roots.contains(root))
    }
}

/// The tables a relation may carry rows of ([`RowSources::carried`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Carried {
    /// These tables, as `schema.table`.
    Roots(BTreeSet<String>),
    /// The map could not be read: any table.
    Unknown,
}

/// Names of the CTEs a statement defines.
fn cte_names(s: &Statement) -> BTreeSet<String> {
    struct Ctes(BTreeSet<String>);
    impl Visitor for Ctes {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if let Some(with) = &q.with {
                for cte in &with.cte_tables {
                    self.0.insert(super::names::fold(&cte.alias.name));
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = Ctes(BTreeSet::new());
    let _ = s.visit(&mut v);
    v.0
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

    fn row(schema: &str, name: &str, roots: &str) -> Vec<Option<String>> {
        vec![
            Some(schema.to_owned()),
            Some(name.to_owned()),
            Some(roots.to_owned()),
        ]
    }

    #[test]
    fn views_children_functions_and_unknown_relations_read_the_table() {
        let sources = RowSources::from_rows(&[
            row("public", "customers", "public.customers"),
            row("public", "customer_view", "public.customers"),
            row("public", "orders", ""),
            row("pg_catalog", "pg_class", ""),
        ])
        .expect("rows");
        let path = SearchPath::from_setting("\"$user\", public", "app", Some("public".into()));
        let customers = QualifiedTable {
            schema: "public".into(),
            table: "customers".into(),
        };
        for sql in [
            "SELECT * FROM customer_view",
            "SELECT * FROM public.customer_view v JOIN orders o ON o.id = v.id",
            "SELECT * FROM created_later",
            "SELECT * FROM my_rows()",
            "SELECT my_rows()",
            "COPY (SELECT * FROM customer_view) TO STDOUT",
        ] {
            assert!(sources.may_read(&facts(sql), &customers, &path), "{sql}");
        }
        for sql in [
            "SELECT * FROM orders",
            "SELECT * FROM generate_series(1, 500)",
            "SELECT relname FROM pg_class",
            "WITH c AS (SELECT * FROM orders) SELECT * FROM c",
            "SELECT * FROM other_schema.customer_view",
        ] {
            let f = facts(sql);
            let unknown_schema = sql.contains("other_schema");
            assert_eq!(
                sources.may_read(&f, &customers, &path),
                unknown_schema,
                "{sql}"
            );
        }
        assert!(RowSources::unknown().may_read(&facts("SELECT * FROM orders"), &customers, &path));
    }
}
