//! Whether a write names the rows it changes.
//!
//! A write that changes existing rows (UPDATE, DELETE, `INSERT ... ON CONFLICT DO UPDATE`,
//! the MATCHED actions of MERGE, also inside data-modifying CTEs) is *bounded* when its row
//! filter restricts the written table:
//!
//! - a *restriction* compares a column of a relation with a value given in the statement (a
//!   literal, a parameter, an expression of those, or a subquery that is itself bounded and
//!   whose column references all name its own relations): `=`, `<`, `<=`, `>`, `>=`, `IN
//!   (...)`, `= ANY(...)`, `BETWEEN`, `IS NULL`, `LIKE`/`ILIKE` with a pattern that is not only
//!   `%`, or a boolean column on its own. The column side may be a column, a cast of one, or a
//!   built-in function or arithmetic over one column's values (`lower(email) = $1`).
//! - a conjunct (an operand of the top-level AND) restricts a relation when it is a
//!   restriction of it, or an OR whose every branch restricts it;
//! - an equality between columns of two relations joins them, and a relation joined to a
//!   restricted one is restricted too (`UPDATE o ... FROM customers c WHERE o.customer_id =
//!   c.id AND c.email = $1`);
//! - the write is bounded when the written table is restricted. An upsert is bounded when its
//!   source is (VALUES, a query without FROM that calls no function, a query with LIMIT, or a
//!   query all of whose relations are restricted) or its DO UPDATE WHERE restricts the table;
//!   a MERGE when its source or its ON condition restricts the target, or every MATCHED
//!   UPDATE/DELETE action has a condition that does; `WHEN NOT MATCHED BY SOURCE` with UPDATE
//!   or DELETE is never bounded.
//!
//! Not restrictions, whatever the catalog says: constants (`now() IS NOT NULL`, `1 = 1`),
//! comparisons of a row's columns with each other (`id = id`), `IS NOT NULL`, `<>`, `NOT`,
//! `NOT IN`, `IS DISTINCT FROM` (they name the rows they keep, not the ones they change),
//! `EXISTS`, function calls returning a boolean, system columns (`tableoid`, `ctid`, `xmin`,
//! `xmax`, `cmin`, `cmax`), and columns whose relation cannot be told
//! (an unqualified column in a statement with USING or FROM). The rule errs towards
//! "unbounded" (fail closed). Ranges count as restrictions: whether `id > 0` covers every row
//! depends on the data, which the analysis does not read.

use std::collections::BTreeSet;

use sqlparser::ast::{
    BinaryOperator, Expr, FromTable, FunctionArg, FunctionArgExpr, FunctionArguments, Insert,
    JoinOperator, Merge, MergeAction, MergeClauseKind, ObjectName, OnConflictAction, OnInsert,
    Query, SetExpr, Statement, TableFactor, TableWithJoins, UpdateTableFromKind, Value,
};

use super::names;

/// A relation of the statement, by the name its columns are qualified with.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rel {
    /// The written table.
    Target,
    /// Another relation (alias or table name).
    Other(String),
}

/// The relations whose columns a row filter may reference.
struct Scope {
    /// Names that qualify the target's columns (its alias and its name).
    target: BTreeSet<String>,
    /// Names of the other relations, each with the names that qualify it.
    others: Vec<(String, BTreeSet<String>)>,
    /// Whether an unqualified column belongs to the target (no other relation).
    bare_is_target: bool,
}

impl Scope {
    fn of_column(&self, e: &Expr) -> Option<Rel> {
        match e {
            Expr::Identifier(_) if self.bare_is_target => Some(Rel::Target),
            Expr::Identifier(_) => None,
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let q = names::fold(&parts[parts.len() - 2]);
                if self.target.contains(&q) {
                    Some(Rel::Target)
                } else {
                    self.others
                        .iter()
                        .find(|(_, n)| n.contains(&q))
                        .map(|(k, _)| Rel::Other(k.clone()))
                }
            }
            _ => None,
        }
    }

    /// Whether a name qualifies a relation of this scope.
    fn qualifies(&self, q: &str) -> bool {
        self.target.contains(q) || self.others.iter().any(|(_, n)| n.contains(q))
    }
}

/// Whether a write statement (not the statements nested in it) changes existing rows without
/// a bound. `false` for statements that change no existing rows.
pub fn unbounded_write(s: &Statement) -> bool {
    match s {
        Statement::Update(u) => {
            let others: Vec<&TableWithJoins> = match &u.from {
                Some(UpdateTableFromKind::BeforeSet(t) | UpdateTableFromKind::AfterSet(t)) => {
                    t.iter().collect()
                }
                None => Vec::new(),
            };
            let joined = !u.table.joins.is_empty();
            let Some(scope) = scope(&u.table.relation, &others, joined) else {
                return true;
            };
            !target_restricted(&scope, u.selection.as_ref(), &others)
        }
        Statement::Delete(d) => {
            let tables = match &d.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            let [first, rest @ ..] = tables.as_slice() else {
                return true;
            };
            let mut others: Vec<&TableWithJoins> = rest.iter().collect();
            others.extend(d.using.iter().flatten());
            let Some(scope) = scope(&first.relation, &others, !first.joins.is_empty()) else {
                return true;
            };
            !target_restricted(&scope, d.selection.as_ref(), &others)
        }
        Statement::Insert(i) => unbounded_upsert(i),
        Statement::Merge(m) => unbounded_merge(m),
        _ => false,
    }
}

/// Whether a statement changes existing rows: UPDATE, DELETE, an upsert that updates, a
/// MERGE with UPDATE or DELETE actions.
pub fn updates_rows(s: &Statement) -> Option<portcullis_crds::gateway_policy::StatementKind> {
    use portcullis_crds::gateway_policy::StatementKind as K;
    match s {
        Statement::Insert(i) => match &i.on {
            Some(OnInsert::OnConflict(c)) if matches!(c.action, OnConflictAction::DoUpdate(_)) => {
                Some(K::Update)
            }
            Some(OnInsert::DuplicateKeyUpdate(_)) => Some(K::Update),
            _ => None,
        },
        _ => None,
    }
}

/// Kinds of the row changes a MERGE may make.
pub fn merge_kinds(m: &Merge) -> Vec<portcullis_crds::gateway_policy::StatementKind> {
    use portcullis_crds::gateway_policy::StatementKind as K;
    let mut kinds = Vec::new();
    for c in &m.clauses {
        match c.action {
            MergeAction::Update(_) => kinds.push(K::Update),
            MergeAction::Delete { .. } => kinds.push(K::Delete),
            MergeAction::Insert(_) => kinds.push(K::Insert),
            _ => {}
        }
    }
    kinds
}

fn unbounded_upsert(i: &Insert) -> bool {
    let selection = match &i.on {
        Some(OnInsert::OnConflict(c)) => match &c.action {
            OnConflictAction::DoUpdate(u) => u.selection.as_ref(),
            OnConflictAction::DoNothing => return false,
        },
        Some(OnInsert::DuplicateKeyUpdate(_)) => None,
        Some(_) => return true,
        None => return false,
    };
    if i.source.as_deref().is_some_and(bounded_query) {
        return false;
    }
    let table = match &i.table {
        sqlparser::ast::TableObject::TableName(n) => n,
        _ => return true,
    };
    let mut target = BTreeSet::new();
    target.extend(last_part(table));
    if let Some(a) = &i.table_alias {
        target.insert(names::fold(&a.alias));
    }
    let scope = Scope {
        target,
        others: vec![(
            "excluded".to_owned(),
            BTreeSet::from(["excluded".to_owned()]),
        )],
        bare_is_target: false,
    };
    !target_restricted(&scope, selection, &[])
}

fn unbounded_merge(m: &Merge) -> bool {
    let changes = m.clauses.iter().filter(|c| {
        matches!(
            c.action,
            MergeAction::Update(_) | MergeAction::Delete { .. }
        )
    });
    let changes: Vec<_> = changes.collect();
    if changes.is_empty() {
        return false;
    }
    if changes
        .iter()
        .any(|c| c.clause_kind == MergeClauseKind::NotMatchedBySource)
    {
        return true;
    }
    let Some(target) = factor_names(&m.table) else {
        return true;
    };
    let Some(source) = factor_names(&m.source) else {
        return true;
    };
    let scope = Scope {
        target,
        others: vec![("source".to_owned(), source)],
        bare_is_target: false,
    };
    let mut conjuncts = Vec::new();
    flatten_and(&m.on, &mut conjuncts);
    let mut restricted = restricted_by(&scope, &conjuncts);
    if source_bounded(&m.source) {
        restricted.insert(Rel::Other("source".to_owned()));
    }
    if closure(&scope, &conjuncts, restricted).contains(&Rel::Target) {
        return false;
    }
    // Every action that changes rows has a condition that restricts the target.
    !changes.iter().all(|c| {
        c.predicate
            .as_ref()
            .is_some_and(|p| target_restricted(&scope, Some(p), &[]))
    })
}

fn source_bounded(f: &TableFactor) -> bool {
    match f {
        TableFactor::Derived { subquery, .. } => bounded_query(subquery),
        _ => false,
    }
}

/// The names a table factor's columns are qualified with (its alias, else its name).
fn factor_names(f: &TableFactor) -> Option<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    match f {
        TableFactor::Table { name, alias, .. } => match alias {
            Some(a) => {
                out.insert(names::fold(&a.name));
            }
            None => out.extend(last_part(name)),
        },
        TableFactor::Derived { alias, .. } | TableFactor::Function { alias, .. } => {
            out.insert(names::fold(&alias.as_ref()?.name));
        }
        TableFactor::TableFunction { alias, .. } => {
            out.insert(names::fold(&alias.as_ref()?.name));
        }
        _ => return None,
    }
    Some(out)
}

fn last_part(name: &ObjectName) -> Option<String> {
    names::parts(name).pop()
}

/// The scope of a write's row filter; `None` when a relation's name cannot be told.
fn scope(target: &TableFactor, others: &[&TableWithJoins], joined: bool) -> Option<Scope> {
    let t = factor_names(target)?;
    let mut rels = Vec::new();
    for (i, o) in others.iter().enumerate() {
        rels.push((format!("{i}"), factor_names(&o.relation)?));
        for (j, join) in o.joins.iter().enumerate() {
            rels.push((format!("{i}.{j}"), factor_names(&join.relation)?));
        }
    }
    Some(Scope {
        target: t,
        bare_is_target: rels.is_empty() && !joined,
        others: rels,
    })
}

/// Whether a filter (with the ON conditions of inner joins among `others`) restricts the
/// target.
fn target_restricted(scope: &Scope, selection: Option<&Expr>, others: &[&TableWithJoins]) -> bool {
    let mut conjuncts = Vec::new();
    if let Some(e) = selection {
        flatten_and(e, &mut conjuncts);
    }
    for o in others {
        inner_join_conditions(o, &mut conjuncts);
    }
    let restricted = restricted_by(scope, &conjuncts);
    closure(scope, &conjuncts, restricted).contains(&Rel::Target)
}

fn inner_join_conditions<'a>(t: &'a TableWithJoins, out: &mut Vec<&'a Expr>) {
    for j in &t.joins {
        let constraint = match &j.join_operator {
            JoinOperator::Join(c) | JoinOperator::Inner(c) => c,
            _ => continue,
        };
        if let sqlparser::ast::JoinConstraint::On(e) = constraint {
            flatten_and(e, out);
        }
    }
}

fn flatten_and<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::Nested(inner) => flatten_and(inner, out),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            flatten_and(left, out);
            flatten_and(right, out);
        }
        other => out.push(other),
    }
}

/// The relations the conjuncts restrict directly.
fn restricted_by(scope: &Scope, conjuncts: &[&Expr]) -> BTreeSet<Rel> {
    conjuncts.iter().flat_map(|c| restricts(scope, c)).collect()
}

/// Add the relations joined by equality to a restricted one, until nothing changes.
fn closure(scope: &Scope, conjuncts: &[&Expr], mut restricted: BTreeSet<Rel>) -> BTreeSet<Rel> {
    let edges: Vec<(Rel, Rel)> = conjuncts
        .iter()
        .filter_map(|c| match c {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => match (column_side(scope, left), column_side(scope, right)) {
                (Some(a), Some(b)) if a != b => Some((a, b)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    loop {
        let before = restricted.len();
        for (a, b) in &edges {
            if restricted.contains(a) {
                restricted.insert(b.clone());
            }
            if restricted.contains(b) {
                restricted.insert(a.clone());
            }
        }
        if restricted.len() == before {
            return restricted;
        }
    }
}

/// The relations one expression restricts.
fn restricts(scope: &Scope, e: &Expr) -> BTreeSet<Rel> {
    let one = |rel: Option<Rel>| rel.into_iter().collect::<BTreeSet<Rel>>();
    match e {
        Expr::Nested(inner) => restricts(scope, inner),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            let mut l = restricts(scope, left);
            l.extend(restricts(scope, right));
            l
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Or,
            right,
        } => {
            let l = restricts(scope, left);
            let r = restricts(scope, right);
            l.intersection(&r).cloned().collect()
        }
        Expr::BinaryOp {
            left,
            op:
                BinaryOperator::Eq
                | BinaryOperator::Lt
                | BinaryOperator::LtEq
                | BinaryOperator::Gt
                | BinaryOperator::GtEq,
            right,
        } => {
            if independent(scope, right) {
                one(column_side(scope, left))
            } else if independent(scope, left) {
                one(column_side(scope, right))
            } else {
                BTreeSet::new()
            }
        }
        Expr::IsNull(inner) => one(column_side(scope, inner)),
        Expr::IsTrue(inner) => restricts(scope, inner),
        Expr::InList {
            expr,
            list,
            negated: false,
        } if list.iter().all(|v| independent(scope, v)) => one(column_side(scope, expr)),
        Expr::InSubquery {
            expr,
            subquery,
            negated: false,
        } if independent_query(scope, subquery) && bounded_query(subquery) => {
            one(column_side(scope, expr))
        }
        Expr::AnyOp {
            left,
            compare_op: BinaryOperator::Eq,
            right,
            ..
        } if independent(scope, right) => one(column_side(scope, left)),
        Expr::Between {
            expr,
            negated: false,
            low,
            high,
        } if independent(scope, low) && independent(scope, high) => one(column_side(scope, expr)),
        Expr::Like {
            negated: false,
            expr,
            pattern,
            ..
        }
        | Expr::ILike {
            negated: false,
            expr,
            pattern,
            ..
        } if independent(scope, pattern) && !matches_everything(pattern) => {
            one(column_side(scope, expr))
        }
        // A boolean column on its own.
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => one(column_side(scope, e)),
        _ => BTreeSet::new(),
    }
}

/// A LIKE pattern made only of `%`: every value that is not NULL matches.
fn matches_everything(pattern: &Expr) -> bool {
    match pattern {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                s.chars().all(|c| c == '%')
            }
            _ => false,
        },
        Expr::Nested(inner) | Expr::Cast { expr: inner, .. } => matches_everything(inner),
        _ => false,
    }
}

/// The relation whose one column an expression computes from: a column, a cast of one,
/// arithmetic or a built-in function over one column and values.
fn column_side(scope: &Scope, e: &Expr) -> Option<Rel> {
    match e {
        Expr::Identifier(i) if is_system_column(i) => None,
        Expr::CompoundIdentifier(parts) if parts.last().is_some_and(is_system_column) => None,
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => scope.of_column(e),
        Expr::Nested(inner) | Expr::Cast { expr: inner, .. } => column_side(scope, inner),
        Expr::UnaryOp { expr, .. } => column_side(scope, expr),
        Expr::Collate { expr, .. } => column_side(scope, expr),
        Expr::BinaryOp {
            left,
            op:
                BinaryOperator::Plus
                | BinaryOperator::Minus
                | BinaryOperator::Multiply
                | BinaryOperator::Divide
                | BinaryOperator::Modulo
                | BinaryOperator::StringConcat,
            right,
        } => match (column_side(scope, left), column_side(scope, right)) {
            (Some(r), None) if independent(scope, right) => Some(r),
            (None, Some(r)) if independent(scope, left) => Some(r),
            _ => None,
        },
        Expr::Function(f) => {
            let name = names::Qualified::of(&f.name)?;
            if !super::analyze::is_read_only_function(&name)
                || crate::masking::lineage::SET_RETURNING.contains(&name.name.as_str())
            {
                return None;
            }
            let FunctionArguments::List(list) = &f.args else {
                return None;
            };
            let mut rel = None;
            for arg in &list.args {
                let FunctionArg::Unnamed(FunctionArgExpr::Expr(a)) = arg else {
                    return None;
                };
                if independent(scope, a) {
                    continue;
                }
                match (column_side(scope, a), &rel) {
                    (Some(r), None) => rel = Some(r),
                    (Some(r), Some(prev)) if &r == prev => {}
                    _ => return None,
                }
            }
            rel
        }
        _ => None,
    }
}

/// The server's system columns, which a table's own columns may not be named after: none of
/// them tells rows apart by what they hold. `tableoid` is the same for every row of a table,
/// `xmin`/`xmax`/`cmin`/`cmax` are transaction and command numbers, and `ctid` is a physical
/// position that a range covers whatever the data (`ctid >= '(0,0)'`) and that changes when
/// a row is updated: a write that names its rows names them by a column of the table.
fn is_system_column(i: &sqlparser::ast::Ident) -> bool {
    matches!(
        names::fold(i).as_str(),
        "tableoid" | "xmin" | "xmax" | "cmin" | "cmax" | "ctid"
    )
}

/// An expression whose value does not depend on the row: it references no column, and its
/// subqueries reference only their own relations.
fn independent(scope: &Scope, e: &Expr) -> bool {
    let mut ok = true;
    let _ = sqlparser::ast::visit_expressions(e, |x| {
        match x {
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => ok = false,
            Expr::Subquery(q) if !independent_query(scope, q) => ok = false,
            Expr::Exists { .. } | Expr::InSubquery { .. } => ok = false,
            _ => {}
        }
        if ok {
            std::ops::ControlFlow::Continue(())
        } else {
            std::ops::ControlFlow::Break(())
        }
    });
    // visit_expressions descends into subqueries: their own column references were seen
    // above; a subquery is judged by `independent_query` instead.
    ok || subqueries_only(scope, e)
}

/// An expression whose only column references are inside subqueries that are independent.
fn subqueries_only(scope: &Scope, e: &Expr) -> bool {
    match e {
        Expr::Subquery(q) => independent_query(scope, q),
        Expr::Nested(inner) | Expr::Cast { expr: inner, .. } => subqueries_only(scope, inner),
        Expr::UnaryOp { expr, .. } => subqueries_only(scope, expr),
        Expr::BinaryOp { left, right, .. } => {
            (independent(scope, left) || subqueries_only(scope, left))
                && (independent(scope, right) || subqueries_only(scope, right))
        }
        _ => false,
    }
}

/// A subquery that cannot see the outer row: every column reference inside it is qualified
/// with a relation of its own FROM, and none with a relation of the outer scope.
fn independent_query(outer: &Scope, q: &Query) -> bool {
    if q.with.is_some() {
        return false;
    }
    let SetExpr::Select(select) = q.body.as_ref() else {
        return matches!(q.body.as_ref(), SetExpr::Values(_));
    };
    let mut own = BTreeSet::new();
    for t in &select.from {
        let Some(n) = factor_names(&t.relation) else {
            return false;
        };
        own.extend(n);
        for j in &t.joins {
            let Some(n) = factor_names(&j.relation) else {
                return false;
            };
            own.extend(n);
        }
    }
    let mut ok = true;
    let _ = sqlparser::ast::visit_expressions(q, |x| {
        match x {
            Expr::Identifier(_) => ok = false,
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let qn = names::fold(&parts[parts.len() - 2]);
                if !own.contains(&qn) || outer.qualifies(&qn) {
                    ok = false;
                }
            }
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => ok = false,
            _ => {}
        }
        if ok {
            std::ops::ControlFlow::Continue(())
        } else {
            std::ops::ControlFlow::Break(())
        }
    });
    ok
}

/// Whether a query returns rows picked by a bound: VALUES, a LIMIT, a SELECT without FROM
/// that calls no function, or a SELECT all of whose relations are restricted by its WHERE
/// and inner join conditions.
pub fn bounded_query(q: &Query) -> bool {
    if q.limit_clause.is_some() || q.fetch.is_some() {
        return true;
    }
    if q.with.is_some() {
        return false;
    }
    bounded_set(&q.body)
}

fn bounded_set(body: &SetExpr) -> bool {
    match body {
        SetExpr::Values(_) => true,
        SetExpr::Query(q) => bounded_query(q),
        SetExpr::SetOperation {
            op, left, right, ..
        } => match op {
            sqlparser::ast::SetOperator::Intersect => bounded_set(left) || bounded_set(right),
            sqlparser::ast::SetOperator::Except | sqlparser::ast::SetOperator::Minus => {
                bounded_set(left)
            }
            _ => bounded_set(left) && bounded_set(right),
        },
        SetExpr::Select(select) => {
            if select.from.is_empty() {
                let mut calls = false;
                let _ = sqlparser::ast::visit_expressions(&select.projection, |x| {
                    if matches!(x, Expr::Function(_) | Expr::Subquery(_)) {
                        calls = true;
                        return std::ops::ControlFlow::Break(());
                    }
                    std::ops::ControlFlow::Continue(())
                });
                return !calls;
            }
            let mut rels = Vec::new();
            for (i, t) in select.from.iter().enumerate() {
                let Some(n) = factor_names(&t.relation) else {
                    return false;
                };
                rels.push((format!("{i}"), n));
                for (j, join) in t.joins.iter().enumerate() {
                    let Some(n) = factor_names(&join.relation) else {
                        return false;
                    };
                    rels.push((format!("{i}.{j}"), n));
                }
            }
            // Every relation is an "other" of a scope with no target; with one relation,
            // unqualified columns are its own.
            let single = rels.len() == 1;
            let (first_key, first_names) = rels[0].clone();
            let scope = Scope {
                target: if single { first_names } else { BTreeSet::new() },
                others: if single { Vec::new() } else { rels.clone() },
                bare_is_target: single,
            };
            let mut conjuncts = Vec::new();
            if let Some(e) = &select.selection {
                flatten_and(e, &mut conjuncts);
            }
            for t in &select.from {
                inner_join_conditions(t, &mut conjuncts);
            }
            let restricted = closure(&scope, &conjuncts, restricted_by(&scope, &conjuncts));
            if single {
                let _ = first_key;
                restricted.contains(&Rel::Target)
            } else {
                rels.iter()
                    .all(|(k, _)| restricted.contains(&Rel::Other(k.clone())))
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn unbounded(sql: &str) -> bool {
        let s = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect(sql);
        let mut any = false;
        let _ = sqlparser::ast::visit_statements(&s, |st| {
            any |= unbounded_write(st);
            std::ops::ControlFlow::<()>::Continue(())
        });
        any
    }

    #[test]
    fn filters_that_no_row_fails() {
        for sql in [
            "DELETE FROM t",
            "DELETE FROM t WHERE true",
            "DELETE FROM t WHERE now() IS NOT NULL",
            "DELETE FROM t WHERE 1 = 1 OR id = 3",
            "DELETE FROM t WHERE id = id",
            "DELETE FROM t WHERE id IS NOT NULL",
            "DELETE FROM t WHERE NOT id = 3",
            "DELETE FROM t WHERE id <> 3",
            "DELETE FROM t WHERE (id IS NOT NULL) = true",
            "DELETE FROM t WHERE (id IS NOT NULL) IS TRUE AND true",
            "DELETE FROM t WHERE id + 0 = id",
            "DELETE FROM t WHERE coalesce(id, 0) = coalesce(id, 0)",
            "DELETE FROM t WHERE name LIKE '%'",
            "DELETE FROM t WHERE id IN (SELECT id FROM u)",
            "DELETE FROM t WHERE id = (SELECT id)",
            "DELETE FROM t WHERE EXISTS (SELECT 1)",
            "DELETE FROM t WHERE id NOT IN (1, 2)",
            "UPDATE t SET a = 1 WHERE a = a",
            "UPDATE t SET a = 1 WHERE 'x' = 'x'",
            "DELETE FROM t USING u WHERE t.id = u.id",
            "DELETE FROM t USING u WHERE id = 1",
            "UPDATE t SET a = u.a FROM u WHERE t.id = u.id",
            "WITH d AS (DELETE FROM t WHERE random() >= 0 RETURNING *) SELECT * FROM d",
            "INSERT INTO t SELECT * FROM u ON CONFLICT (id) DO UPDATE SET a = excluded.a",
            "INSERT INTO t SELECT g FROM generate_series(1, 1000) g ON CONFLICT (id) DO UPDATE SET a = 1",
            "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN UPDATE SET a = u.a",
            "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
            "MERGE INTO t USING (SELECT * FROM u) s ON t.id = s.id WHEN MATCHED THEN DELETE",
        ] {
            assert!(unbounded(sql), "{sql}");
        }
    }

    #[test]
    fn filters_that_name_rows() {
        for sql in [
            "DELETE FROM t WHERE id = 3",
            "DELETE FROM t WHERE id = $1",
            "DELETE FROM t WHERE t.id IN (1, 2, 3)",
            "DELETE FROM t WHERE id = ANY($1)",
            "DELETE FROM t WHERE lower(email) = 'a@b.example'",
            "DELETE FROM t WHERE id > 0",
            "DELETE FROM t WHERE expires_at < now()",
            "DELETE FROM t WHERE deleted_at IS NULL AND id BETWEEN 1 AND 3",
            "DELETE FROM t WHERE (id = 1 OR id = 2) AND true",
            "DELETE FROM t WHERE id IN (SELECT u.t_id FROM u WHERE u.k = 5)",
            "UPDATE t SET a = 1 WHERE a = 2 AND 1 = 1",
            "DELETE FROM t x USING u WHERE x.id = u.t_id AND u.email = 'a'",
            "UPDATE o SET a = 1 FROM c WHERE o.cid = c.id AND c.email = $1",
            "INSERT INTO t VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET a = excluded.a",
            "INSERT INTO t SELECT * FROM u WHERE u.id = 4 ON CONFLICT (id) DO UPDATE SET a = 1",
            "INSERT INTO t SELECT * FROM u ON CONFLICT (id) DO NOTHING",
            "INSERT INTO t SELECT * FROM u",
            "MERGE INTO t USING (VALUES (1, 'a')) s(id, a) ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a",
            "MERGE INTO t USING u ON t.id = u.id AND u.id = 3 WHEN MATCHED THEN DELETE",
            "MERGE INTO t USING u ON t.id = u.id WHEN NOT MATCHED THEN INSERT VALUES (u.id)",
            "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
        ] {
            assert!(!unbounded(sql), "{sql}");
        }
    }
}
