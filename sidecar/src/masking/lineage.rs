//! Column lineage: for every column a statement returns, which masked sources it may carry.
//!
//! The analysis walks the statement's syntax tree (sqlparser, PostgreSQL dialect) from each
//! output column down to the base-table columns it is computed from, through expressions,
//! function calls, whole-row references, subqueries, CTEs, set operations, joins and LATERAL.
//! It fails closed: whatever it cannot follow (a relation the catalog does not know, a function
//! not known to compute its result from its arguments alone, an identifier it cannot resolve)
//! makes the column *unproven*, and an unproven column is masked like a masked one.
//!
//! Predicates are not outputs: the analysis records every use of masked data outside the
//! result's values ([`PredicateUse`]: `WHERE`, `JOIN ... ON`/`USING`, `HAVING`, `GROUP BY`,
//! `DISTINCT ON`, `SELECT DISTINCT` and set operations other than `UNION ALL` (they compare
//! whole rows), `ORDER BY`, window partitions and orderings, `FILTER (WHERE ...)`, `CASE`
//! conditions in any clause, `LIMIT`/`OFFSET`/`FETCH`, the `WHERE` of `UPDATE` and `DELETE`),
//! in subqueries, CTEs, derived tables and `LATERAL` alike, telling equality of a column with a
//! parameter, a literal or another column apart from every other use. The rules' `predicates`
//! setting decides which uses a statement may make.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, visit_expressions_mut, Expr, FunctionArg, FunctionArgExpr,
    FunctionArguments, Ident, ObjectName, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement, TableFactor, TableWithJoins,
};

/// A column of a catalog relation and the masking rules that cover it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogColumn {
    /// Column name as stored (PostgreSQL folds unquoted names to lower case).
    pub name: String,
    /// Masking rules that name this column.
    pub rules: BTreeSet<String>,
    /// Why the column's content is not proven free of masked sources (a view column whose
    /// definition could not be followed, a catalog refresh pending after DDL).
    pub unproven: BTreeSet<String>,
    /// Rules whose columns reach this one only through a computation (a view column such as
    /// `lower(email)`).
    pub computed: BTreeSet<String>,
}

/// What the analysis knows about relations. Implemented by the sidecar's catalog cache.
pub trait Catalog {
    /// Columns of the relation `name` (one to three parts: `[schema.]relation`, already folded
    /// as PostgreSQL folds identifiers), in order; `None` when the relation is unknown.
    fn relation(&self, name: &[String]) -> Option<Vec<CatalogColumn>>;
}

/// What a result column may carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Taint {
    /// Masking rules of the sources the column may be computed from.
    pub rules: BTreeSet<String>,
    /// Why the column's lineage could not be proven free of masked sources.
    pub unproven: BTreeSet<String>,
    /// Rules of `rules` whose columns reach this value through a computation (a function,
    /// an operator, a cast, a whole row), not as the column's own value.
    pub computed: BTreeSet<String>,
}

impl Taint {
    /// Whether the column must be masked.
    pub fn must_mask(&self) -> bool {
        !self.rules.is_empty() || !self.unproven.is_empty()
    }

    /// A taint that only says why the column is unproven.
    pub fn unproven(reason: impl Into<String>) -> Self {
        let mut t = Taint::default();
        t.unproven.insert(reason.into());
        t
    }

    /// Add what `other` may carry.
    pub fn absorb(&mut self, other: &Taint) {
        self.rules.extend(other.rules.iter().cloned());
        self.unproven.extend(other.unproven.iter().cloned());
        self.computed.extend(other.computed.iter().cloned());
    }

    /// The same taint, with every rule reached through a computation.
    pub fn as_computed(mut self) -> Self {
        self.computed = self.rules.clone();
        self
    }
}

/// A use of masked data outside the values of the result.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PredicateUse {
    /// The column as the statement names it (`c.ssn`), or what carries the value.
    pub column: String,
    /// Masking rules of the value used.
    pub rules: BTreeSet<String>,
    /// The value is compared as is, with `=` or `IN`, against parameters or literals, tested
    /// with `IS [NOT] NULL`, or joined by equality with another column.
    pub equality: bool,
    /// Where the value is used (`WHERE`, `ORDER BY`, ...).
    pub place: String,
}

/// What a predicate-position expression inside a value is: a condition (equality allowed)
/// or any other use.
enum Side {
    Condition(&'static str),
    Used(&'static str),
}

/// One output column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputColumn {
    /// Output name (alias or the column's own name), folded.
    pub name: String,
    /// What it may carry.
    pub taint: Taint,
}

/// The output of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shape {
    /// The columns are known, in order.
    Columns(Vec<OutputColumn>),
    /// The number or names of columns are not known (a `*` over a relation the catalog does
    /// not know); every column may carry this taint.
    Opaque(Taint),
}

impl Shape {
    /// Union of the taints of every column.
    pub fn total(&self) -> Taint {
        match self {
            Shape::Columns(cols) => {
                let mut t = Taint::default();
                for c in cols {
                    t.absorb(&c.taint);
                }
                t
            }
            Shape::Opaque(t) => t.clone(),
        }
    }

    /// The taint of output column `index` (0-based); an opaque shape answers for every column.
    pub fn column(&self, index: usize) -> Taint {
        match self {
            Shape::Columns(cols) => cols
                .get(index)
                .map(|c| c.taint.clone())
                .unwrap_or_else(|| Taint::unproven("result has more columns than the query shows")),
            Shape::Opaque(t) => t.clone(),
        }
    }

    fn union(self, other: Shape) -> Shape {
        match (self, other) {
            (Shape::Columns(mut a), Shape::Columns(b)) if a.len() == b.len() => {
                for (x, y) in a.iter_mut().zip(b.iter()) {
                    x.taint.absorb(&y.taint);
                }
                Shape::Columns(a)
            }
            (a, b) => {
                let mut t = a.total();
                t.absorb(&b.total());
                Shape::Opaque(t)
            }
        }
    }
}

/// What a statement does with data that may be masked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatementLineage {
    /// Rows returned to the client (SELECT, VALUES, RETURNING, COPY ... TO STDOUT).
    pub output: Option<Shape>,
    /// Columns the statement writes values into, with what those values may carry
    /// (`CREATE TABLE AS`, `SELECT INTO`, `INSERT ... SELECT`, `UPDATE ... SET`).
    pub writes: Vec<Write>,
}

/// Values a statement writes into one column of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The table as written in the statement.
    pub table: String,
    /// The column (folded); `None` when which column receives the values is not known, so
    /// that every column of the table may.
    pub column: Option<String>,
    /// What the values may carry.
    pub taint: Taint,
}

/// The writes of a query's output into `table`: output column `i` goes to `targets[i]`
/// (`None`: not known, every column may receive it).
fn writes_into(table: &str, targets: &[Option<String>], shape: Shape) -> Vec<Write> {
    match shape {
        Shape::Columns(cols) => cols
            .into_iter()
            .enumerate()
            .map(|(i, c)| Write {
                table: table.to_owned(),
                column: targets.get(i).cloned().flatten(),
                taint: c.taint,
            })
            .collect(),
        Shape::Opaque(taint) => vec![Write {
            table: table.to_owned(),
            column: None,
            taint,
        }],
    }
}

/// Output column names as the server names the columns of a table created from them; a
/// name the server may choose differently (`?column?`) is not known.
fn created_names(shape: &Shape) -> Vec<Option<String>> {
    match shape {
        Shape::Columns(cols) => cols
            .iter()
            .map(|c| (c.name != "?column?").then(|| c.name.clone()))
            .collect(),
        Shape::Opaque(_) => Vec::new(),
    }
}

/// Functions that compute their result from their arguments (and the session) alone: their
/// output carries exactly the taint of their arguments. Any other function makes its result
/// unproven, because it may read tables itself.
pub(crate) const PURE_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_length",
    "array_position",
    "array_to_string",
    "avg",
    "bit_length",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "cume_dist",
    "current_date",
    "current_time",
    "current_timestamp",
    "current_user",
    "current_schema",
    "current_database",
    "date_part",
    "date_trunc",
    "dense_rank",
    "every",
    "exp",
    "extract",
    "first_value",
    "floor",
    "format",
    "generate_series",
    "greatest",
    "initcap",
    "jsonb_agg",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_object_agg",
    "json_agg",
    "json_build_array",
    "json_build_object",
    "json_object_agg",
    "lag",
    "last_value",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "localtime",
    "localtimestamp",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nth_value",
    "ntile",
    "nullif",
    "octet_length",
    "overlay",
    "percent_rank",
    "position",
    "power",
    "random",
    "rank",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "session_user",
    "sign",
    "split_part",
    "sqrt",
    "string_agg",
    "string_to_array",
    "strpos",
    "substr",
    "substring",
    "sum",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "translate",
    "trim",
    "trunc",
    "unnest",
    "upper",
    "user",
    "array",
    "row",
    "jsonb_array_elements",
    "json_array_elements",
    "jsonb_each",
    "json_each",
    "jsonb_each_text",
    "json_each_text",
    "jsonb_object_keys",
    "json_object_keys",
    "stddev",
    "variance",
    "encode",
    "convert",
    "convert_from",
    "convert_to",
    "decode",
    "sha256",
    "sha512",
    "digest",
];

/// Functions that describe the schema or the session (what psql's `\d` and drivers ask), not
/// the rows of tables: like pure functions, their result carries only their arguments' taint.
pub(crate) const CATALOG_FUNCTIONS: &[&str] = &[
    "col_description",
    "format_type",
    "has_column_privilege",
    "has_database_privilege",
    "has_schema_privilege",
    "has_table_privilege",
    "obj_description",
    "pg_backend_pid",
    "pg_encoding_to_char",
    "pg_get_constraintdef",
    "pg_get_expr",
    "pg_get_function_arguments",
    "pg_get_function_identity_arguments",
    "pg_get_function_result",
    "pg_get_indexdef",
    "pg_get_partkeydef",
    "pg_get_serial_sequence",
    "pg_get_triggerdef",
    "pg_get_userbyid",
    "pg_has_role",
    "pg_indexes_size",
    "pg_relation_size",
    "pg_size_pretty",
    "pg_table_is_visible",
    "pg_table_size",
    "pg_total_relation_size",
    "pg_typeof",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "shobj_description",
    "version",
];

/// Aggregates whose result reveals nothing of the values themselves.
const VALUE_FREE_AGGREGATES: &[&str] = &["count"];

const PLACEHOLDER: &str = "\u{0}portcullis-subquery-";

/// Built-in set-returning functions: the number of rows they return is derived from their
/// arguments.
pub(crate) const SET_RETURNING: &[&str] = &[
    "generate_series",
    "generate_subscripts",
    "unnest",
    "regexp_matches",
    "regexp_split_to_table",
    "string_to_table",
    "json_array_elements",
    "jsonb_array_elements",
    "json_array_elements_text",
    "jsonb_array_elements_text",
    "json_each",
    "jsonb_each",
    "json_each_text",
    "jsonb_each_text",
    "json_object_keys",
    "jsonb_object_keys",
    "jsonb_path_query",
    "json_to_recordset",
    "jsonb_to_recordset",
    "json_populate_recordset",
    "jsonb_populate_recordset",
];

/// The lineage analysis over one catalog.
pub struct Analyzer<'c> {
    catalog: &'c dyn Catalog,
    // The session's search_path may put another schema before pg_catalog: an unqualified
    // call of a built-in's name may run another function.
    shadowed_builtins: bool,
    // Calls whose number of rows or side effects depend on masked data (see
    // [`Analyzer::carriers`]).
    carriers: RefCell<Vec<(String, Taint)>>,
    // Subqueries lifted out of expressions, addressed by placeholder identifiers.
    lifted: RefCell<Vec<Query>>,
    // Uses of masked data outside result values (see [`Analyzer::predicate_uses`]).
    uses: RefCell<Vec<PredicateUse>>,
}

#[derive(Clone, Debug)]
struct Relation {
    alias: String,
    // `None`: columns unknown; any reference may resolve here and carries `opaque`.
    columns: Option<Vec<OutputColumn>>,
    opaque: Taint,
}

impl Relation {
    /// A whole row as one value (a record, its JSON): computed from every column.
    fn whole_row(&self) -> Taint {
        let mut t = match &self.columns {
            Some(cols) => Shape::Columns(cols.clone()).total(),
            None => self.opaque.clone(),
        };
        t.computed = t.rules.clone();
        t
    }
}

#[derive(Clone, Debug, Default)]
struct Scope<'p> {
    relations: Vec<Relation>,
    parent: Option<&'p Scope<'p>>,
}

type Ctes = BTreeMap<String, Shape>;

/// Fold an identifier the way PostgreSQL does (see [`crate::policy::names::fold`]).
pub fn fold(ident: &Ident) -> String {
    crate::policy::names::fold(ident)
}

fn object_name(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| match p.as_ident() {
            Some(i) => fold(i),
            None => p.to_string(),
        })
        .collect()
}

impl<'c> Analyzer<'c> {
    /// An analysis over `catalog`.
    pub fn new(catalog: &'c dyn Catalog) -> Self {
        Self {
            catalog,
            shadowed_builtins: false,
            carriers: RefCell::new(Vec::new()),
            lifted: RefCell::new(Vec::new()),
            uses: RefCell::new(Vec::new()),
        }
    }

    /// Treat unqualified calls of built-in names as unknown functions (the session's
    /// search_path may resolve them elsewhere).
    pub fn with_shadowed_builtins(mut self, shadowed: bool) -> Self {
        self.shadowed_builtins = shadowed;
        self
    }

    /// Calls seen so far that carry masked data out of the result columns: a set-returning
    /// function whose arguments carry masked data (its number of rows is derived from them),
    /// or a function not known to be pure called with masked data (its side effects may store
    /// the value where a catalog view returns it).
    pub fn carriers(&self) -> Vec<(String, Taint)> {
        self.carriers.borrow().clone()
    }

    /// Uses of masked data outside result values seen so far, each once.
    pub fn predicate_uses(&self) -> Vec<PredicateUse> {
        let set: BTreeSet<PredicateUse> = self.uses.borrow().iter().cloned().collect();
        set.into_iter().collect()
    }

    fn record_use(&self, column: String, rules: BTreeSet<String>, equality: bool, place: &str) {
        if rules.is_empty() {
            return;
        }
        self.uses.borrow_mut().push(PredicateUse {
            column,
            rules,
            equality,
            place: place.to_owned(),
        });
    }

    /// An equality use of a column reference: rules that reach it through a computation are
    /// not compared as is.
    fn equality_use(&self, column: String, taint: &Taint, place: &str) {
        let direct: BTreeSet<String> = taint.rules.difference(&taint.computed).cloned().collect();
        let computed: BTreeSet<String> =
            taint.rules.intersection(&taint.computed).cloned().collect();
        self.record_use(column.clone(), direct, true, place);
        self.record_use(
            column,
            computed,
            false,
            &format!("{place} (over a value computed from the column)"),
        );
    }

    /// Equality between two column references (a join): an equality use when both carry
    /// masked data as is; a masked column compared with a clear one could be matched against
    /// every value a generator produces, so that is not an equality use.
    fn join_equality(&self, a: (String, &Taint), b: (String, &Taint), place: &str) {
        let masked_as_is = |t: &Taint| t.rules.difference(&t.computed).next().is_some();
        if masked_as_is(a.1) && masked_as_is(b.1) {
            self.equality_use(a.0, a.1, place);
            self.equality_use(b.0, b.1, place);
        } else {
            let place = format!("{place} (= with a column that is not masked)");
            for (name, t) in [a, b] {
                self.record_use(name, t.rules.clone(), false, &place);
            }
        }
    }

    /// Any use of an expression's masked data at `place` (not an equality).
    fn used(&self, e: &Expr, scope: &Scope<'_>, ctes: &Ctes, place: &str) {
        let t = self.expr(e, scope, ctes);
        if !t.rules.is_empty() {
            let name = self.masked_name(e, scope);
            self.record_use(name, t.rules, false, place);
        }
    }

    /// The first column reference of `e` that carries masked data, as written.
    fn masked_name(&self, e: &Expr, scope: &Scope<'_>) -> String {
        let mut found = None;
        let _ = visit_expressions(e, |node| {
            let t = match node {
                Expr::Identifier(id) if !id.value.starts_with(PLACEHOLDER) => {
                    scope.resolve_column(&fold(id))
                }
                Expr::CompoundIdentifier(parts) => Some(self.compound(parts, scope)),
                _ => None,
            };
            if t.is_some_and(|t| !t.rules.is_empty()) {
                found = Some(node.to_string());
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        found.unwrap_or_else(|| "a value computed from masked data".to_owned())
    }

    /// A column reference (`ssn`, `c.ssn`), with what it carries.
    fn column_ref(&self, e: &Expr, scope: &Scope<'_>, ctes: &Ctes) -> Option<Taint> {
        match e {
            Expr::Nested(inner) => self.column_ref(inner, scope, ctes),
            Expr::Identifier(id) if !id.value.starts_with(PLACEHOLDER) => {
                Some(self.expr(e, scope, ctes))
            }
            Expr::CompoundIdentifier(_) => Some(self.expr(e, scope, ctes)),
            _ => None,
        }
    }

    /// Record the uses of masked data in a condition (`WHERE`, `JOIN ... ON`, `FILTER`):
    /// equality of a column with parameters, literals or another column, and `IS [NOT]
    /// NULL`, are told apart from every other use.
    fn condition(&self, e: &Expr, scope: &Scope<'_>, ctes: &Ctes, place: &str) {
        use sqlparser::ast::{BinaryOperator, UnaryOperator};
        match e {
            Expr::Nested(inner) => self.condition(inner, scope, ctes, place),
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => self.condition(expr, scope, ctes, place),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And | BinaryOperator::Or,
                right,
            } => {
                self.condition(left, scope, ctes, place);
                self.condition(right, scope, ctes, place);
            }
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => {
                let l = self.column_ref(left, scope, ctes);
                let r = self.column_ref(right, scope, ctes);
                match (l, r) {
                    (Some(l), Some(r)) => {
                        self.join_equality((left.to_string(), &l), (right.to_string(), &r), place)
                    }
                    (Some(l), None) if is_constant(right) => {
                        self.equality_use(left.to_string(), &l, place)
                    }
                    (None, Some(r)) if is_constant(left) => {
                        self.equality_use(right.to_string(), &r, place)
                    }
                    _ => self.used(e, scope, ctes, place),
                }
            }
            Expr::InList { expr, list, .. } if list.iter().all(is_constant) => {
                match self.column_ref(expr, scope, ctes) {
                    Some(t) => self.equality_use(expr.to_string(), &t, place),
                    None => self.used(e, scope, ctes, place),
                }
            }
            Expr::IsNull(x) | Expr::IsNotNull(x) => match self.column_ref(x, scope, ctes) {
                Some(t) => self.equality_use(x.to_string(), &t, place),
                None => self.used(e, scope, ctes, place),
            },
            Expr::InSubquery { expr, subquery, .. } => {
                let out = self.query(subquery, ctes, scope).total();
                match self.column_ref(expr, scope, ctes) {
                    Some(t) => self.join_equality(
                        (expr.to_string(), &t),
                        ("the result of a subquery".to_owned(), &out),
                        place,
                    ),
                    None => {
                        self.used(e, scope, ctes, place);
                        self.record_use(
                            "the result of a subquery".to_owned(),
                            out.rules,
                            false,
                            place,
                        );
                    }
                }
            }
            _ => self.used(e, scope, ctes, place),
        }
    }

    /// An ordering or grouping key: an ordinal or an output name stands for that output
    /// column.
    fn sort_key(&self, e: &Expr, shape: &Shape, scope: &Scope<'_>, ctes: &Ctes, place: &str) {
        let ordinal = match e {
            Expr::Value(v) => match &v.value {
                sqlparser::ast::Value::Number(n, _) => n.parse::<usize>().ok(),
                _ => None,
            },
            _ => None,
        };
        let mut t = match ordinal {
            Some(i) => shape.column(i.saturating_sub(1)),
            None => self.expr(e, scope, ctes),
        };
        let mut name = None;
        if let Expr::Identifier(id) = e {
            let wanted = fold(id);
            match shape {
                Shape::Columns(cols) => {
                    for c in cols.iter().filter(|c| c.name == wanted) {
                        t.absorb(&c.taint);
                        name = Some(c.name.clone());
                    }
                }
                Shape::Opaque(o) => t.absorb(o),
            }
        }
        if !t.rules.is_empty() {
            let name = name.unwrap_or_else(|| match (ordinal, shape) {
                (Some(i), Shape::Columns(cols)) => cols
                    .get(i.saturating_sub(1))
                    .map(|c| c.name.clone())
                    .unwrap_or_else(|| format!("output column {i}")),
                (Some(i), _) => format!("output column {i}"),
                (None, _) => self.masked_name(e, scope),
            });
            self.record_use(name, t.rules, false, place);
        }
    }

    /// Whole rows the server compares with each other (set operations other than `UNION
    /// ALL`, `SELECT DISTINCT`): every masked value of them is used in a comparison with
    /// values the statement may generate, which is no equality with a given value.
    fn compared_rows(&self, shape: &Shape, place: &str) {
        match shape {
            Shape::Columns(cols) => {
                for c in cols {
                    self.record_use(c.name.clone(), c.taint.rules.clone(), false, place);
                }
            }
            Shape::Opaque(t) => self.record_use(
                "a row of the result".to_owned(),
                t.rules.clone(),
                false,
                place,
            ),
        }
    }

    /// A row count bound (`LIMIT`, `OFFSET`, `FETCH`): masked data there is a carrier.
    fn row_bound(&self, e: &Expr, scope: &Scope<'_>, ctes: &Ctes, place: &str) {
        let t = self.expr(e, scope, ctes);
        if !t.rules.is_empty() {
            self.record_use(self.masked_name(e, scope), t.rules.clone(), false, place);
            self.carriers.borrow_mut().push((
                format!("row count ({place}) is computed from masked data"),
                t,
            ));
        }
    }

    /// `ORDER BY`, `LIMIT`, `OFFSET` and `FETCH` of a query.
    fn tail(&self, q: &Query, shape: &Shape, scope: &Scope<'_>, ctes: &Ctes) {
        if let Some(ob) = &q.order_by {
            if let sqlparser::ast::OrderByKind::Expressions(items) = &ob.kind {
                for o in items {
                    self.sort_key(&o.expr, shape, scope, ctes, "ORDER BY");
                }
            }
        }
        match &q.limit_clause {
            Some(sqlparser::ast::LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            }) => {
                if let Some(l) = limit {
                    self.row_bound(l, scope, ctes, "LIMIT");
                }
                if let Some(o) = offset {
                    self.row_bound(&o.value, scope, ctes, "OFFSET");
                }
                for e in limit_by {
                    self.row_bound(e, scope, ctes, "LIMIT BY");
                }
            }
            Some(sqlparser::ast::LimitClause::OffsetCommaLimit { offset, limit }) => {
                self.row_bound(offset, scope, ctes, "OFFSET");
                self.row_bound(limit, scope, ctes, "LIMIT");
            }
            None => {}
        }
        if let Some(q) = q.fetch.as_ref().and_then(|f| f.quantity.as_ref()) {
            self.row_bound(q, scope, ctes, "FETCH");
        }
    }

    fn window(&self, spec: &sqlparser::ast::WindowSpec, scope: &Scope<'_>, ctes: &Ctes) {
        for p in &spec.partition_by {
            self.used(p, scope, ctes, "window PARTITION BY");
        }
        for o in &spec.order_by {
            self.used(&o.expr, scope, ctes, "window ORDER BY");
        }
    }

    /// A column name joined by equality across the relations of a scope (`USING`,
    /// `NATURAL`): an equality use when every relation's column carries masked data as is.
    fn shared_column(&self, col: &str, scope: &Scope<'_>, place: &str) {
        let taints: Vec<&Taint> = scope
            .relations
            .iter()
            .flat_map(|r| r.columns.iter().flatten())
            .filter(|c| c.name == col)
            .map(|c| &c.taint)
            .collect();
        let mut all = Taint::default();
        for t in &taints {
            all.absorb(t);
        }
        if taints
            .iter()
            .all(|t| t.rules.difference(&t.computed).next().is_some())
        {
            self.equality_use(col.to_owned(), &all, place);
        } else {
            self.record_use(
                col.to_owned(),
                all.rules,
                false,
                &format!("{place} (= with a column that is not masked)"),
            );
        }
    }

    /// Join conditions of a FROM list (nested joins included).
    fn join_conditions(&self, from: &[TableWithJoins], scope: &Scope<'_>, ctes: &Ctes) {
        use sqlparser::ast::{JoinConstraint, JoinOperator as J};
        for twj in from {
            let mut factors = vec![&twj.relation];
            for join in &twj.joins {
                factors.push(&join.relation);
                let constraint = match &join.join_operator {
                    J::Join(c)
                    | J::Inner(c)
                    | J::Left(c)
                    | J::LeftOuter(c)
                    | J::Right(c)
                    | J::RightOuter(c)
                    | J::FullOuter(c)
                    | J::CrossJoin(c)
                    | J::Semi(c)
                    | J::LeftSemi(c)
                    | J::RightSemi(c)
                    | J::Anti(c)
                    | J::LeftAnti(c)
                    | J::RightAnti(c) => Some(c),
                    J::AsOf {
                        match_condition,
                        constraint,
                    } => {
                        self.used(match_condition, scope, ctes, "JOIN MATCH_CONDITION");
                        Some(constraint)
                    }
                    _ => None,
                };
                match constraint {
                    Some(JoinConstraint::On(e)) => self.condition(e, scope, ctes, "JOIN ON"),
                    Some(JoinConstraint::Using(names)) => {
                        for n in names {
                            let col = object_name(n).last().cloned().unwrap_or_default();
                            self.shared_column(&col, scope, "JOIN USING");
                        }
                    }
                    Some(JoinConstraint::Natural) => {
                        // Every column name the relations share is compared.
                        let mut seen = BTreeSet::new();
                        for rel in &scope.relations {
                            for c in rel.columns.iter().flatten() {
                                if !seen.insert(c.name.clone()) {
                                    self.shared_column(&c.name, scope, "NATURAL JOIN");
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            for f in factors {
                if let TableFactor::NestedJoin {
                    table_with_joins, ..
                } = f
                {
                    self.join_conditions(std::slice::from_ref(table_with_joins), scope, ctes);
                }
            }
        }
    }

    fn note_call(&self, name: &[String], args_taint: &Taint) {
        if args_taint.rules.is_empty() {
            return;
        }
        let fname = name.last().map(String::as_str).unwrap_or("");
        let what = if SET_RETURNING.contains(&fname) && self.impure(name).is_none() {
            "set-returning function"
        } else if self.impure(name).is_some() {
            "function not known to be pure"
        } else {
            return;
        };
        self.carriers.borrow_mut().push((
            format!("{what} {} is called with masked data", name.join(".")),
            args_taint.clone(),
        ));
    }

    /// Why a function's result is not proven to derive from its arguments alone, if it is not.
    fn impure(&self, name: &[String]) -> Option<String> {
        if self.shadowed_builtins && name.len() == 1 {
            return Some(format!(
                "function {} may resolve to another schema's function through search_path",
                name.join(".")
            ));
        }
        impure(name)
    }

    /// Lineage of a statement.
    pub fn statement(&self, statement: &Statement) -> StatementLineage {
        let ctes = Ctes::new();
        let root = Scope::default();
        match statement {
            Statement::Query(q) => {
                let mut lineage = StatementLineage {
                    output: Some(self.query(q, &ctes, &root)),
                    writes: Vec::new(),
                };
                if let SetExpr::Select(select) = q.body.as_ref() {
                    if let Some(into) = &select.into {
                        let shape = lineage
                            .output
                            .take()
                            .unwrap_or(Shape::Opaque(Taint::default()));
                        let target = into
                            .targets
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ");
                        let names = created_names(&shape);
                        lineage.writes = writes_into(&target, &names, shape);
                    }
                }
                lineage
            }
            Statement::CreateTable(ct) => {
                let writes = ct
                    .query
                    .as_ref()
                    .map(|q| {
                        let shape = self.query(q, &ctes, &root);
                        let names = if ct.columns.is_empty() {
                            created_names(&shape)
                        } else {
                            ct.columns.iter().map(|c| Some(fold(&c.name))).collect()
                        };
                        writes_into(&object_name(&ct.name).join("."), &names, shape)
                    })
                    .unwrap_or_default();
                StatementLineage {
                    output: None,
                    writes,
                }
            }
            Statement::CreateView(cv) => StatementLineage {
                output: None,
                writes: vec![Write {
                    table: object_name(&cv.name).join("."),
                    column: None,
                    taint: self.query(&cv.query, &ctes, &root).total(),
                }],
            },
            Statement::Insert(insert) => {
                let target = insert.table.to_string();
                let parts = target_name(&target);
                // Values go to the listed columns, or to the table's columns in order.
                let targets: Vec<Option<String>> = if insert.columns.is_empty() {
                    self.catalog
                        .relation(&parts)
                        .map(|cols| cols.into_iter().map(|c| Some(c.name)).collect())
                        .unwrap_or_default()
                } else {
                    insert
                        .columns
                        .iter()
                        .map(|c| object_name(c).last().cloned())
                        .collect()
                };
                let writes = insert
                    .source
                    .as_ref()
                    .map(|q| writes_into(&target, &targets, self.query(q, &ctes, &root)))
                    .unwrap_or_default();
                let scope = self.table_scope(&parts, &root);
                StatementLineage {
                    output: insert
                        .returning
                        .as_ref()
                        .map(|items| self.projection(items, &scope, &ctes)),
                    writes,
                }
            }
            Statement::Update(update) => {
                let mut from = vec![update.table.clone()];
                if let Some(
                    sqlparser::ast::UpdateTableFromKind::BeforeSet(f)
                    | sqlparser::ast::UpdateTableFromKind::AfterSet(f),
                ) = &update.from
                {
                    from.extend(f.iter().cloned());
                }
                let scope = self.scope_of_from(&from, &ctes, &root);
                self.join_conditions(&from, &scope, &ctes);
                if let Some(w) = &update.selection {
                    self.condition(w, &scope, &ctes, "WHERE");
                }
                let table = update.table.relation.to_string();
                let mut writes = Vec::new();
                for a in &update.assignments {
                    let taint = self.expr(&a.value, &scope, &ctes);
                    let columns: Vec<&ObjectName> = match &a.target {
                        sqlparser::ast::AssignmentTarget::ColumnName(c) => vec![c],
                        sqlparser::ast::AssignmentTarget::Tuple(cs) => cs.iter().collect(),
                    };
                    for c in columns {
                        writes.push(Write {
                            table: table.clone(),
                            column: object_name(c).last().cloned(),
                            taint: taint.clone(),
                        });
                    }
                }
                StatementLineage {
                    output: update
                        .returning
                        .as_ref()
                        .map(|items| self.projection(items, &scope, &ctes)),
                    writes,
                }
            }
            Statement::Delete(delete) => {
                let tables = match &delete.from {
                    sqlparser::ast::FromTable::WithFromKeyword(t)
                    | sqlparser::ast::FromTable::WithoutKeyword(t) => t.clone(),
                };
                let mut tables = tables;
                tables.extend(delete.using.iter().flatten().cloned());
                let scope = self.scope_of_from(&tables, &ctes, &root);
                self.join_conditions(&tables, &scope, &ctes);
                if let Some(w) = &delete.selection {
                    self.condition(w, &scope, &ctes, "WHERE");
                }
                StatementLineage {
                    output: delete
                        .returning
                        .as_ref()
                        .map(|items| self.projection(items, &scope, &ctes)),
                    writes: Vec::new(),
                }
            }
            Statement::Copy { source, to, .. } => {
                let shape = match source {
                    sqlparser::ast::CopySource::Query(q) => self.query(q, &ctes, &root),
                    sqlparser::ast::CopySource::Table {
                        table_name,
                        columns,
                    } => {
                        let rel = self.base_relation(&object_name(table_name), "");
                        match (&rel.columns, columns.is_empty()) {
                            (Some(cols), false) => Shape::Columns(
                                columns
                                    .iter()
                                    .map(|c| {
                                        let name = fold(c);
                                        let taint = cols
                                            .iter()
                                            .find(|x| x.name == name)
                                            .map(|x| x.taint.clone())
                                            .unwrap_or_else(|| {
                                                Taint::unproven(format!("unknown column {name}"))
                                            });
                                        OutputColumn { name, taint }
                                    })
                                    .collect(),
                            ),
                            (Some(cols), true) => Shape::Columns(cols.clone()),
                            (None, _) => Shape::Opaque(rel.opaque.clone()),
                        }
                    }
                };
                if *to {
                    StatementLineage {
                        output: Some(shape),
                        writes: Vec::new(),
                    }
                } else {
                    StatementLineage::default()
                }
            }
            _ => StatementLineage::default(),
        }
    }

    /// Lineage of a query's output columns.
    pub fn query_shape(&self, query: &Query) -> Shape {
        self.query(query, &Ctes::new(), &Scope::default())
    }

    fn query(&self, q: &Query, ctes: &Ctes, outer: &Scope<'_>) -> Shape {
        let mut ctes = ctes.clone();
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                let name = fold(&cte.alias.name);
                let shape = if with.recursive {
                    self.recursive_cte(&name, &cte.alias.columns, &cte.query, &ctes, outer)
                } else {
                    rename_columns(self.query(&cte.query, &ctes, outer), &cte.alias.columns)
                };
                ctes.insert(name, shape);
            }
        }
        match q.body.as_ref() {
            SetExpr::Select(select) => self.select(select, &ctes, outer, Some(q)),
            body => {
                let shape = self.set_expr(body, &ctes, outer);
                let scope = Scope {
                    relations: Vec::new(),
                    parent: Some(outer),
                };
                self.tail(q, &shape, &scope, &ctes);
                shape
            }
        }
    }

    fn recursive_cte(
        &self,
        name: &str,
        columns: &[sqlparser::ast::TableAliasColumnDef],
        q: &Query,
        ctes: &Ctes,
        outer: &Scope<'_>,
    ) -> Shape {
        // Iterate to a fixed point: start from the non-recursive branch, feed each result back
        // in; taints only grow, so this ends quickly.
        let anchor = match q.body.as_ref() {
            SetExpr::SetOperation { left, .. } => self.set_expr(left, ctes, outer),
            _ => Shape::Opaque(Taint::unproven(format!(
                "recursive CTE {name} has no non-recursive branch"
            ))),
        };
        let mut current = rename_columns(anchor, columns);
        for _ in 0..8 {
            let mut env = ctes.clone();
            env.insert(name.to_owned(), current.clone());
            let next = rename_columns(self.query(q, &env, outer), columns).union(current.clone());
            if next == current {
                return next;
            }
            current = next;
        }
        Shape::Opaque(Taint::unproven(format!(
            "recursive CTE {name} did not reach a fixed point"
        )))
    }

    fn set_expr(&self, body: &SetExpr, ctes: &Ctes, outer: &Scope<'_>) -> Shape {
        match body {
            SetExpr::Select(select) => self.select(select, ctes, outer, None),
            SetExpr::Query(q) => self.query(q, ctes, outer),
            SetExpr::SetOperation {
                left,
                right,
                op,
                set_quantifier,
            } => {
                let l = self.set_expr(left, ctes, outer);
                let r = self.set_expr(right, ctes, outer);
                // UNION ALL only appends; every other set operation compares whole rows of
                // both sides (to remove duplicates, to match or to subtract them).
                let appends = matches!(op, sqlparser::ast::SetOperator::Union)
                    && matches!(
                        set_quantifier,
                        sqlparser::ast::SetQuantifier::All
                            | sqlparser::ast::SetQuantifier::AllByName
                    );
                if !appends {
                    let place = format!("{op} {set_quantifier}");
                    let place = place.trim_end();
                    self.compared_rows(&l, place);
                    self.compared_rows(&r, place);
                }
                l.union(r)
            }
            SetExpr::Values(values) => {
                let scope = Scope {
                    relations: Vec::new(),
                    parent: Some(outer),
                };
                let mut shape: Option<Shape> = None;
                for row in &values.rows {
                    let cols = row
                        .iter()
                        .enumerate()
                        .map(|(i, e)| OutputColumn {
                            name: format!("column{}", i + 1),
                            taint: self.expr(e, &scope, ctes),
                        })
                        .collect();
                    let row_shape = Shape::Columns(cols);
                    shape = Some(match shape {
                        Some(s) => s.union(row_shape),
                        None => row_shape,
                    });
                }
                shape.unwrap_or(Shape::Columns(Vec::new()))
            }
            SetExpr::Table(t) => {
                let mut name = Vec::new();
                if let Some(schema) = &t.schema_name {
                    name.push(schema.to_ascii_lowercase());
                }
                if let Some(table) = &t.table_name {
                    name.push(table.to_ascii_lowercase());
                }
                let rel = self.named_relation(&name, ctes, "");
                match rel.columns {
                    Some(cols) => Shape::Columns(cols),
                    None => Shape::Opaque(rel.opaque),
                }
            }
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
                self.statement(s)
                    .output
                    .unwrap_or(Shape::Columns(Vec::new()))
            }
        }
    }

    fn select(
        &self,
        select: &Select,
        ctes: &Ctes,
        outer: &Scope<'_>,
        tail: Option<&Query>,
    ) -> Shape {
        let scope = self.scope_of_from(&select.from, ctes, outer);
        self.join_conditions(&select.from, &scope, ctes);
        if let Some(w) = &select.selection {
            self.condition(w, &scope, ctes, "WHERE");
        }
        let shape = self.projection(&select.projection, &scope, ctes);
        if let sqlparser::ast::GroupByExpr::Expressions(exprs, _) = &select.group_by {
            for e in exprs {
                self.sort_key(e, &shape, &scope, ctes, "GROUP BY");
            }
        }
        match &select.distinct {
            Some(sqlparser::ast::Distinct::On(exprs)) => {
                for e in exprs {
                    self.sort_key(e, &shape, &scope, ctes, "DISTINCT ON");
                }
            }
            // Duplicates are found by comparing every output column.
            Some(sqlparser::ast::Distinct::Distinct) => self.compared_rows(&shape, "DISTINCT"),
            _ => {}
        }
        if let Some(h) = &select.having {
            self.used(h, &scope, ctes, "HAVING");
        }
        if let Some(q) = &select.qualify {
            self.used(q, &scope, ctes, "QUALIFY");
        }
        for sqlparser::ast::NamedWindowDefinition(_, w) in &select.named_window {
            if let sqlparser::ast::NamedWindowExpr::WindowSpec(spec) = w {
                self.window(spec, &scope, ctes);
            }
        }
        if let Some(q) = tail {
            self.tail(q, &shape, &scope, ctes);
        }
        shape
    }

    fn projection(&self, items: &[SelectItem], scope: &Scope<'_>, ctes: &Ctes) -> Shape {
        let mut cols = Vec::new();
        for item in items {
            match item {
                SelectItem::UnnamedExpr(e) => cols.push(OutputColumn {
                    name: expr_name(e),
                    taint: self.expr(e, scope, ctes),
                }),
                SelectItem::ExprWithAlias { expr, alias } => cols.push(OutputColumn {
                    name: fold(alias),
                    taint: self.expr(expr, scope, ctes),
                }),
                SelectItem::ExprWithAliases { expr, aliases } => {
                    let taint = self.expr(expr, scope, ctes);
                    cols.extend(aliases.iter().map(|a| OutputColumn {
                        name: fold(a),
                        taint: taint.clone(),
                    }));
                }
                SelectItem::Wildcard(_) => {
                    for rel in &scope.relations {
                        match &rel.columns {
                            Some(c) => cols.extend(c.iter().cloned()),
                            None => return opaque_with(cols, &rel.opaque, scope),
                        }
                    }
                }
                SelectItem::QualifiedWildcard(kind, _) => {
                    let rel = match kind {
                        SelectItemQualifiedWildcardKind::ObjectName(name) => {
                            let parts = object_name(name);
                            parts.last().and_then(|alias| scope.find_relation(alias))
                        }
                        SelectItemQualifiedWildcardKind::Expr(_) => None,
                    };
                    match rel {
                        Some(rel) => match &rel.columns {
                            Some(c) => cols.extend(c.iter().cloned()),
                            None => return opaque_with(cols, &rel.opaque, scope),
                        },
                        None => {
                            return opaque_with(
                                cols,
                                &Taint::unproven(format!("cannot resolve {kind}.*")),
                                scope,
                            )
                        }
                    }
                }
            }
        }
        Shape::Columns(cols)
    }

    fn scope_of_from<'p>(
        &self,
        from: &[TableWithJoins],
        ctes: &Ctes,
        outer: &'p Scope<'p>,
    ) -> Scope<'p> {
        let mut scope = Scope {
            relations: Vec::new(),
            parent: Some(outer),
        };
        for twj in from {
            self.add_factor(&twj.relation, ctes, &mut scope);
            for join in &twj.joins {
                self.add_factor(&join.relation, ctes, &mut scope);
            }
        }
        scope
    }

    fn add_factor(&self, factor: &TableFactor, ctes: &Ctes, scope: &mut Scope<'_>) {
        let rel = match factor {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                let parts = object_name(name);
                let default_alias = parts.last().cloned().unwrap_or_default();
                let alias_name = alias
                    .as_ref()
                    .map(|a| fold(&a.name))
                    .unwrap_or(default_alias);
                let rel = match args {
                    // A set-returning function in FROM: `generate_series(1, 3)`.
                    Some(a) => {
                        let taint = self.function_taint(&parts, &a.args, scope, ctes);
                        Relation {
                            alias: alias_name.clone(),
                            columns: None,
                            opaque: taint,
                        }
                    }
                    None => self.named_relation(&parts, ctes, &alias_name),
                };
                with_alias(rel, alias.as_ref().map(|a| &a.columns[..]).unwrap_or(&[]))
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                // LATERAL or not, a derived table may see the relations before it: analysing
                // it with them in scope can only add taint.
                let shape = self.query(subquery, ctes, scope);
                let alias_name = alias.as_ref().map(|a| fold(&a.name)).unwrap_or_default();
                let shape =
                    rename_columns(shape, alias.as_ref().map(|a| &a.columns[..]).unwrap_or(&[]));
                match shape {
                    Shape::Columns(cols) => Relation {
                        alias: alias_name,
                        columns: Some(cols),
                        opaque: Taint::default(),
                    },
                    Shape::Opaque(t) => Relation {
                        alias: alias_name,
                        columns: None,
                        opaque: t,
                    },
                }
            }
            TableFactor::Function {
                name, args, alias, ..
            } => {
                let parts = object_name(name);
                let taint = self.function_taint(&parts, args, scope, ctes);
                Relation {
                    alias: alias
                        .as_ref()
                        .map(|a| fold(&a.name))
                        .or_else(|| parts.last().cloned())
                        .unwrap_or_default(),
                    columns: None,
                    opaque: taint,
                }
            }
            TableFactor::UNNEST {
                alias, array_exprs, ..
            } => {
                let mut taint = Taint::default();
                for e in array_exprs {
                    taint.absorb(&self.expr(e, scope, ctes));
                }
                Relation {
                    alias: alias
                        .as_ref()
                        .map(|a| fold(&a.name))
                        .unwrap_or_else(|| "unnest".to_owned()),
                    columns: None,
                    opaque: taint,
                }
            }
            TableFactor::TableFunction { expr, alias } => Relation {
                alias: alias.as_ref().map(|a| fold(&a.name)).unwrap_or_default(),
                columns: None,
                opaque: self.expr(expr, scope, ctes),
            },
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let mut inner = Scope {
                    relations: Vec::new(),
                    parent: scope.parent,
                };
                self.add_factor(&table_with_joins.relation, ctes, &mut inner);
                for j in &table_with_joins.joins {
                    self.add_factor(&j.relation, ctes, &mut inner);
                }
                match alias {
                    // `(a JOIN b) AS x`: one relation with the joined columns.
                    Some(a) => {
                        let columns: Option<Vec<OutputColumn>> = inner
                            .relations
                            .iter()
                            .map(|r| r.columns.clone())
                            .collect::<Option<Vec<_>>>()
                            .map(|v| v.into_iter().flatten().collect());
                        let mut opaque = Taint::default();
                        for r in &inner.relations {
                            opaque.absorb(&r.whole_row());
                        }
                        scope.relations.push(Relation {
                            alias: fold(&a.name),
                            columns,
                            opaque,
                        });
                    }
                    None => scope.relations.extend(inner.relations),
                }
                return;
            }
            other => Relation {
                alias: String::new(),
                columns: None,
                opaque: Taint::unproven(format!("unsupported FROM item {other}")),
            },
        };
        scope.relations.push(rel);
    }

    fn table_scope<'p>(&self, name: &[String], outer: &'p Scope<'p>) -> Scope<'p> {
        let alias = name.last().cloned().unwrap_or_default();
        Scope {
            relations: vec![self.base_relation(name, &alias)],
            parent: Some(outer),
        }
    }

    fn named_relation(&self, parts: &[String], ctes: &Ctes, alias: &str) -> Relation {
        let alias = if alias.is_empty() {
            parts.last().cloned().unwrap_or_default()
        } else {
            alias.to_owned()
        };
        if parts.len() == 1 {
            if let Some(shape) = ctes.get(&parts[0]) {
                return match shape {
                    Shape::Columns(cols) => Relation {
                        alias,
                        columns: Some(cols.clone()),
                        opaque: Taint::default(),
                    },
                    Shape::Opaque(t) => Relation {
                        alias,
                        columns: None,
                        opaque: t.clone(),
                    },
                };
            }
        }
        self.base_relation(parts, &alias)
    }

    fn base_relation(&self, parts: &[String], alias: &str) -> Relation {
        let alias = if alias.is_empty() {
            parts.last().cloned().unwrap_or_default()
        } else {
            alias.to_owned()
        };
        match self.catalog.relation(parts) {
            Some(cols) => Relation {
                alias,
                columns: Some(
                    cols.into_iter()
                        .map(|c| OutputColumn {
                            name: c.name,
                            taint: Taint {
                                rules: c.rules,
                                unproven: c.unproven,
                                computed: c.computed,
                            },
                        })
                        .collect(),
                ),
                opaque: Taint::default(),
            },
            None => Relation {
                alias,
                columns: None,
                opaque: Taint::unproven(format!(
                    "relation {} is not in the catalog",
                    parts.join(".")
                )),
            },
        }
    }

    fn function_taint(
        &self,
        name: &[String],
        args: &[FunctionArg],
        scope: &Scope<'_>,
        ctes: &Ctes,
    ) -> Taint {
        let mut taint = Taint::default();
        if let Some(reason) = self.impure(name) {
            taint.unproven.insert(reason);
        }
        for arg in args {
            if let FunctionArg::Named {
                arg: FunctionArgExpr::Expr(e),
                ..
            }
            | FunctionArg::ExprNamed {
                arg: FunctionArgExpr::Expr(e),
                ..
            }
            | FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) = arg
            {
                taint.absorb(&self.expr(e, scope, ctes));
            }
        }
        let fname = name.last().map(String::as_str).unwrap_or("");
        taint.absorb(&self.wildcard_args(fname, args, scope));
        self.note_call(name, &taint);
        // A function's rows are computed from its arguments.
        taint.as_computed()
    }

    /// What `f(rel.*)` or `f(*)` arguments carry.
    fn wildcard_args(&self, fname: &str, args: &[FunctionArg], scope: &Scope<'_>) -> Taint {
        let mut taint = Taint::default();
        for arg in args {
            let e = match arg {
                FunctionArg::Named { arg, .. }
                | FunctionArg::ExprNamed { arg, .. }
                | FunctionArg::Unnamed(arg) => arg,
            };
            match e {
                FunctionArgExpr::Expr(_) => {}
                FunctionArgExpr::QualifiedWildcard(obj) => {
                    let parts = object_name(obj);
                    match parts.last().and_then(|a| scope.find_relation(a)) {
                        Some(rel) => taint.absorb(&rel.whole_row()),
                        None => taint.absorb(&Taint::unproven(format!("cannot resolve {obj}.*"))),
                    }
                }
                FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => {
                    // count(*) reveals no value.
                    if !VALUE_FREE_AGGREGATES.contains(&fname) {
                        for rel in scope.all_relations() {
                            taint.absorb(&rel.whole_row());
                        }
                    }
                }
            }
        }
        taint
    }

    /// Taint of one expression in a scope.
    fn expr(&self, e: &Expr, scope: &Scope<'_>, ctes: &Ctes) -> Taint {
        let plain = is_column_reference(e);
        let mut e = e.clone();
        // Conditions, orderings and partitions inside the expression: uses of masked data
        // outside values, recorded once the subqueries in them are lifted.
        let mut side: Vec<(Expr, Side)> = Vec::new();
        // Lift subqueries out (innermost first) so identifiers inside them are resolved in
        // their own scope, not in this one.
        let _ = visit_expressions_mut(&mut e, |node| {
            let lifted = match node {
                Expr::Subquery(q) => Some((**q).clone()),
                Expr::Exists { subquery, .. } => Some((**subquery).clone()),
                Expr::InSubquery { subquery, expr, .. } => {
                    // `x IN (subquery)` is a boolean about x; keep x, lift the subquery.
                    let id = self.lift((**subquery).clone());
                    *node = Expr::Tuple(vec![(**expr).clone(), placeholder(id)]);
                    None
                }
                Expr::Function(f) => {
                    // OVER (PARTITION BY / ORDER BY) and FILTER (WHERE) choose rows and their
                    // order; like WHERE they are predicates, not values.
                    if let Some(filter) = f.filter.take() {
                        side.push((*filter, Side::Condition("FILTER (WHERE ...)")));
                    }
                    if let Some(sqlparser::ast::WindowType::WindowSpec(spec)) = f.over.take() {
                        for p in spec.partition_by {
                            side.push((p, Side::Used("window PARTITION BY")));
                        }
                        for o in spec.order_by {
                            side.push((o.expr, Side::Used("window ORDER BY")));
                        }
                    }
                    if let FunctionArguments::List(list) = &f.args {
                        for c in &list.clauses {
                            if let sqlparser::ast::FunctionArgumentClause::OrderBy(items) = c {
                                for o in items {
                                    side.push((
                                        o.expr.clone(),
                                        Side::Used("ORDER BY inside an aggregate"),
                                    ));
                                }
                            }
                        }
                    }
                    match &f.args {
                        FunctionArguments::Subquery(q) => Some((**q).clone()),
                        _ => None,
                    }
                }
                Expr::Case {
                    operand,
                    conditions,
                    ..
                } => {
                    // A CASE condition chooses the value: a predicate even in the select list.
                    if let Some(o) = operand {
                        side.push(((**o).clone(), Side::Used("CASE operand")));
                    }
                    for c in conditions.iter() {
                        side.push((c.condition.clone(), Side::Used("CASE condition")));
                    }
                    None
                }
                _ => None,
            };
            if let Some(q) = lifted {
                let id = self.lift(q);
                *node = placeholder(id);
            }
            ControlFlow::<()>::Continue(())
        });
        for (x, kind) in side {
            match kind {
                Side::Condition(place) => self.condition(&x, scope, ctes, place),
                Side::Used(place) => self.used(&x, scope, ctes, place),
            }
        }

        let mut taint = Taint::default();
        let _ = visit_expressions(&e, |node| {
            match node {
                Expr::Identifier(id) => taint.absorb(&self.identifier(id, scope, ctes)),
                Expr::CompoundIdentifier(parts) => taint.absorb(&self.compound(parts, scope)),
                Expr::Function(f) => {
                    // Arguments are expressions the walk visits on its own; add the function's
                    // own verdict and what its wildcard arguments carry.
                    let name = object_name(&f.name);
                    let impure = self.impure(&name);
                    let fname = name.last().map(String::as_str).unwrap_or("");
                    if let FunctionArguments::List(list) = &f.args {
                        taint.absorb(&self.wildcard_args(fname, &list.args, scope));
                        if impure.is_some() || SET_RETURNING.contains(&fname) {
                            // What the arguments carry decides whether the call carries
                            // masked data outside its value.
                            let _ = self.function_taint(&name, &list.args, scope, ctes);
                        }
                    }
                    if let Some(reason) = impure {
                        taint.unproven.insert(reason);
                    }
                }
                Expr::Wildcard(_) => {
                    for rel in scope.all_relations() {
                        taint.absorb(&rel.whole_row());
                    }
                }
                Expr::QualifiedWildcard(obj, _) => {
                    let parts = object_name(obj);
                    match parts.last().and_then(|a| scope.find_relation(a)) {
                        Some(rel) => taint.absorb(&rel.whole_row()),
                        None => taint.absorb(&Taint::unproven(format!("cannot resolve {obj}.*"))),
                    }
                }
                _ => {}
            }
            ControlFlow::<()>::Continue(())
        });
        if is_value_free_aggregate(&e) {
            taint.rules.clear();
            taint.computed.clear();
        }
        if plain {
            taint
        } else {
            taint.as_computed()
        }
    }

    fn lift(&self, q: Query) -> usize {
        let mut lifted = self.lifted.borrow_mut();
        lifted.push(q);
        lifted.len() - 1
    }

    fn identifier(&self, id: &Ident, scope: &Scope<'_>, ctes: &Ctes) -> Taint {
        if let Some(n) = id.value.strip_prefix(PLACEHOLDER) {
            let q = n
                .parse::<usize>()
                .ok()
                .and_then(|i| self.lifted.borrow().get(i).cloned());
            return match q {
                Some(q) => self.query(&q, ctes, scope).total(),
                None => Taint::unproven("lost subquery"),
            };
        }
        let name = fold(id);
        if let Some(t) = scope.resolve_column(&name) {
            return t;
        }
        // A relation name used as a value is the whole row: `SELECT u FROM users u`.
        if let Some(rel) = scope.find_relation(&name) {
            return rel.whole_row().as_computed();
        }
        Taint::unproven(format!("cannot resolve column {name}"))
    }

    fn compound(&self, parts: &[Ident], scope: &Scope<'_>) -> Taint {
        let parts: Vec<String> = parts.iter().map(fold).collect();
        // rel.col, schema.rel.col, or rel.col.field (composite access): try the longest
        // relation qualifier that resolves.
        for split in (1..parts.len()).rev() {
            let rel_name = &parts[split - 1];
            if let Some(rel) = scope.find_relation(rel_name) {
                let col = &parts[split];
                return match &rel.columns {
                    Some(cols) => cols
                        .iter()
                        .find(|c| &c.name == col)
                        .map(|c| c.taint.clone())
                        .unwrap_or_else(|| {
                            Taint::unproven(format!("cannot resolve column {rel_name}.{col}"))
                        }),
                    None => rel.opaque.clone(),
                };
            }
        }
        // `col.field` of a composite column.
        if let Some(t) = scope.resolve_column(&parts[0]) {
            return t;
        }
        Taint::unproven(format!("cannot resolve {}", parts.join(".")))
    }
}

/// Why a function's result is not proven to derive from its arguments alone, if it is not.
fn impure(name: &[String]) -> Option<String> {
    let fname = name.last().map(String::as_str).unwrap_or("");
    let schema_ok = name.len() == 1 || name[0] == "pg_catalog";
    if schema_ok && (PURE_FUNCTIONS.contains(&fname) || CATALOG_FUNCTIONS.contains(&fname)) {
        None
    } else {
        Some(format!(
            "function {} is not known to compute its result from its arguments alone",
            name.join(".")
        ))
    }
}

/// A parameter or a literal, possibly cast or negated.
fn is_constant(e: &Expr) -> bool {
    match e {
        Expr::Value(_) | Expr::TypedString(_) => true,
        Expr::Nested(inner) => is_constant(inner),
        Expr::Cast { expr, .. } => is_constant(expr),
        Expr::UnaryOp { expr, .. } => is_constant(expr),
        _ => false,
    }
}

/// A column reference as written (`ssn`, `c.ssn`), in parentheses or not.
fn is_column_reference(e: &Expr) -> bool {
    match e {
        Expr::Nested(inner) => is_column_reference(inner),
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => true,
        _ => false,
    }
}

fn placeholder(id: usize) -> Expr {
    Expr::Identifier(Ident::new(format!("{PLACEHOLDER}{id}")))
}

/// A column reference as written (`notes`, `c.notes`), or a scalar subquery, whose value is
/// its source's unchanged (the subquery's own lineage says whether it computes it).
fn is_value_free_aggregate(e: &Expr) -> bool {
    match e {
        Expr::Function(f) => {
            let name = object_name(&f.name);
            let plain = name.len() == 1 || name[0] == "pg_catalog";
            plain
                && name
                    .last()
                    .is_some_and(|n| VALUE_FREE_AGGREGATES.contains(&n.as_str()))
                && f.over.is_none()
        }
        Expr::Nested(inner) => is_value_free_aggregate(inner),
        _ => false,
    }
}

impl Scope<'_> {
    fn find_relation(&self, alias: &str) -> Option<&Relation> {
        self.relations
            .iter()
            .rev()
            .find(|r| r.alias == alias)
            .or_else(|| self.parent.and_then(|p| p.find_relation(alias)))
    }

    fn all_relations(&self) -> impl Iterator<Item = &Relation> {
        self.relations.iter()
    }

    /// The taint of an unqualified column: every relation of the innermost scope that has
    /// (or may have) such a column contributes; outer scopes are searched when none does.
    fn resolve_column(&self, name: &str) -> Option<Taint> {
        let mut found = false;
        let mut taint = Taint::default();
        for rel in &self.relations {
            match &rel.columns {
                Some(cols) => {
                    for c in cols.iter().filter(|c| c.name == name) {
                        found = true;
                        taint.absorb(&c.taint);
                    }
                }
                None => {
                    found = true;
                    taint.absorb(&rel.opaque);
                }
            }
        }
        if found {
            Some(taint)
        } else {
            self.parent.and_then(|p| p.resolve_column(name))
        }
    }
}

fn opaque_with(cols: Vec<OutputColumn>, extra: &Taint, scope: &Scope<'_>) -> Shape {
    let mut t = Shape::Columns(cols).total();
    t.absorb(extra);
    for rel in &scope.relations {
        t.absorb(&rel.whole_row());
    }
    Shape::Opaque(t)
}

fn with_alias(mut rel: Relation, columns: &[sqlparser::ast::TableAliasColumnDef]) -> Relation {
    if let Some(cols) = rel.columns.as_mut() {
        for (c, a) in cols.iter_mut().zip(columns) {
            c.name = fold(&a.name);
        }
    }
    rel
}

fn rename_columns(shape: Shape, columns: &[sqlparser::ast::TableAliasColumnDef]) -> Shape {
    match shape {
        Shape::Columns(mut cols) => {
            for (c, a) in cols.iter_mut().zip(columns) {
                c.name = fold(&a.name);
            }
            Shape::Columns(cols)
        }
        other => other,
    }
}

fn target_name(name: &str) -> Vec<String> {
    name.split('.')
        .map(|p| {
            if p.starts_with('"') {
                p.trim_matches('"').to_owned()
            } else {
                p.to_ascii_lowercase()
            }
        })
        .collect()
}

fn expr_name(e: &Expr) -> String {
    match e {
        Expr::Identifier(i) => fold(i),
        Expr::CompoundIdentifier(parts) => parts.last().map(fold).unwrap_or_default(),
        Expr::Function(f) => object_name(&f.name).last().cloned().unwrap_or_default(),
        _ => "?column?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    struct Cat(BTreeMap<String, Vec<CatalogColumn>>);

    impl Catalog for Cat {
        fn relation(&self, name: &[String]) -> Option<Vec<CatalogColumn>> {
            let key = match name {
                [t] => format!("public.{t}"),
                [s, t] => format!("{s}.{t}"),
                _ => return None,
            };
            self.0.get(&key).cloned()
        }
    }

    fn cat() -> Cat {
        let col = |n: &str, rule: Option<&str>| CatalogColumn {
            name: n.into(),
            rules: rule.into_iter().map(String::from).collect::<BTreeSet<_>>(),
            unproven: BTreeSet::new(),
            computed: BTreeSet::new(),
        };
        let mut m = BTreeMap::new();
        m.insert(
            "public.customers".into(),
            vec![
                col("id", None),
                col("full_name", None),
                col("email", Some("contact")),
                col("ssn", Some("national-id")),
                col("city", None),
            ],
        );
        m.insert(
            "public.orders".into(),
            vec![
                col("id", None),
                col("customer_id", None),
                col("amount", None),
            ],
        );
        m.insert(
            "public.Users".into(),
            vec![col("id", None), col("email", Some("contact"))],
        );
        Cat(m)
    }

    /// Which output columns must be masked, as a string of 'M' (mask) and '.' (clear).
    fn verdict(sql: &str) -> String {
        let c = cat();
        let a = Analyzer::new(&c);
        let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("parse");
        let l = a.statement(&stmts[0]);
        let shape = l.output.expect("output");
        match shape {
            Shape::Columns(cols) => cols
                .iter()
                .map(|c| if c.taint.must_mask() { 'M' } else { '.' })
                .collect(),
            Shape::Opaque(t) => {
                if t.must_mask() {
                    "*M".into()
                } else {
                    "*.".into()
                }
            }
        }
    }

    #[test]
    fn table() {
        let cases = [
            ("SELECT id, email FROM customers", ".M"),
            ("SELECT * FROM customers", "..MM."),
            ("SELECT c.* FROM customers c", "..MM."),
            ("SELECT EMAIL FROM CUSTOMERS", "M"),
            ("SELECT email AS e, lower(email), email || 'x', upper(full_name) FROM customers", "MMM."),
            ("SELECT CASE WHEN id > 1 THEN email ELSE 'x' END FROM customers", "M"),
            ("SELECT string_agg(email, ','), count(email), count(*), max(id) FROM customers", "M..."),
            ("SELECT c FROM customers c", "M"),
            ("SELECT row_to_json(c) FROM customers c", "M"),
            ("SELECT to_jsonb(c.*) FROM customers c", "M"),
            ("SELECT x FROM (SELECT email AS x FROM customers) s", "M"),
            ("SELECT s.id FROM (SELECT id, email FROM customers) s", "."),
            ("WITH t AS (SELECT email FROM customers) SELECT * FROM t", "M"),
            ("WITH t(a) AS (SELECT email FROM customers) SELECT a FROM t", "M"),
            ("SELECT id FROM customers UNION SELECT id FROM orders", "."),
            ("SELECT full_name FROM customers UNION ALL SELECT email FROM customers", "M"),
            ("SELECT (SELECT email FROM customers LIMIT 1)", "M"),
            ("SELECT o.id, (SELECT c.email FROM customers c WHERE c.id = o.customer_id) FROM orders o", ".M"),
            ("SELECT o.amount FROM orders o JOIN customers c ON c.id = o.customer_id", "."),
            ("SELECT o.amount, email FROM orders o JOIN customers c ON c.id = o.customer_id", ".M"),
            ("SELECT l.e FROM orders o, LATERAL (SELECT email AS e FROM customers c WHERE c.id = o.customer_id) l", "M"),
            ("SELECT row_number() OVER (ORDER BY email), first_value(email) OVER () FROM customers", ".M"),
            ("SELECT id FROM customers WHERE email LIKE 'a%'", "."),
            ("SELECT ARRAY(SELECT email FROM customers)", "M"),
            ("SELECT my_function(id) FROM customers", "M"),
            ("SELECT * FROM unknown_table", "*M"),
            ("SELECT email FROM \"Users\"", "M"),
            ("SELECT email FROM users", "M"),
            ("SELECT 1, 'a', now()", "..."),
            ("SELECT version(), quote_ident(email), pg_typeof(ssn) FROM customers", ".MM"),
            ("SELECT id::text, email::varchar FROM customers", ".M"),
            ("SELECT substring(ssn from 1 for 3) FROM customers", "M"),
            ("SELECT EXISTS (SELECT 1 FROM customers WHERE email = 'x')", "."),
            ("SELECT id FROM customers WHERE id IN (SELECT customer_id FROM orders)", "."),
            ("WITH RECURSIVE r(n, e) AS (SELECT 1, email FROM customers UNION ALL SELECT n + 1, e FROM r WHERE n < 3) SELECT n, e FROM r", ".M"),
            ("SELECT coalesce(NULL, email) FROM customers", "M"),
            ("SELECT t.* FROM (customers c JOIN orders o ON o.customer_id = c.id) AS t", "..MM...."),
            ("VALUES (1, 'x')", ".."),
            ("SELECT public.customers.email FROM public.customers", "M"),
            ("SELECT x.a, x.c FROM customers AS x(a, b, c)", ".M"),
            ("SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY email) FROM customers", "M"),
            ("SELECT mode() WITHIN GROUP (ORDER BY ssn) FROM customers", "M"),
            ("SELECT count(*) FILTER (WHERE email LIKE '%x') FROM customers", "."),
        ];
        let mut failures = Vec::new();
        for (sql, want) in cases {
            let got = verdict(sql);
            if got != want {
                failures.push(format!("{sql}\n   want {want} got {got}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// How a statement uses masked data outside its values: `-` no use, `=` equality uses
    /// only, `!` some other use (with the place of the first).
    fn uses(sql: &str) -> String {
        let c = cat();
        let a = Analyzer::new(&c);
        let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("parse");
        let _ = a.statement(&stmts[0]);
        let uses = a.predicate_uses();
        match uses.iter().find(|u| !u.equality) {
            Some(u) => format!("! {}", u.place),
            None if uses.is_empty() => "-".into(),
            None => "=".into(),
        }
    }

    #[test]
    fn predicate_uses_are_found_wherever_they_hide() {
        let cases = [
            ("SELECT id FROM customers WHERE email = $1", "="),
            ("SELECT id FROM customers WHERE email = 'a@b.example' AND id > 3", "="),
            ("SELECT id FROM customers WHERE (email) IN ('a', 'b') OR ssn IS NULL", "="),
            ("SELECT id FROM customers WHERE email = $1::text", "="),
            ("SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id", "-"),
            ("SELECT a.id FROM customers a JOIN customers b ON a.email = b.email", "="),
            ("SELECT a.id FROM customers a JOIN customers b USING (email)", "="),
            ("SELECT id FROM customers WHERE id = 1 ORDER BY id", "-"),
            ("SELECT email, ssn FROM customers", "-"),
            ("SELECT id FROM customers WHERE ssn LIKE '3%'", "! WHERE"),
            ("SELECT id FROM customers WHERE ssn > '3'", "! WHERE"),
            ("SELECT id FROM customers WHERE md5(ssn) = 'x'", "! WHERE"),
            ("SELECT id FROM customers WHERE lower(email) = 'x'", "! WHERE"),
            ("SELECT id FROM customers WHERE email::varchar(1) = 'x'", "! WHERE"),
            ("SELECT id FROM customers ORDER BY ssn", "! ORDER BY"),
            ("SELECT ssn FROM customers ORDER BY 1", "! ORDER BY"),
            ("SELECT ssn AS s FROM customers ORDER BY s", "! ORDER BY"),
            ("SELECT count(*) FROM customers GROUP BY ssn", "! GROUP BY"),
            ("SELECT DISTINCT ON (ssn) id FROM customers", "! DISTINCT ON"),
            ("SELECT DISTINCT ssn FROM customers", "! DISTINCT"),
            ("SELECT DISTINCT id FROM customers", "-"),
            ("SELECT ssn FROM customers UNION SELECT 'x'", "! UNION"),
            ("SELECT ssn FROM customers UNION ALL SELECT 'x'", "-"),
            ("SELECT ssn FROM customers INTERSECT ALL SELECT 'x'", "! INTERSECT ALL"),
            ("SELECT count(*) FROM (SELECT email FROM customers EXCEPT SELECT 'x') s", "! EXCEPT"),
            ("SELECT id FROM customers GROUP BY id HAVING max(ssn) > '5'", "! HAVING"),
            ("SELECT row_number() OVER (ORDER BY ssn) FROM customers", "! window ORDER BY"),
            ("SELECT rank() OVER w FROM customers WINDOW w AS (PARTITION BY ssn)", "! window PARTITION BY"),
            ("SELECT count(*) FILTER (WHERE ssn LIKE '3%') FROM customers", "! FILTER (WHERE ...)"),
            ("SELECT count(*) FILTER (WHERE email = $1) FROM customers", "="),
            ("SELECT CASE WHEN ssn LIKE '3%' THEN 1 END FROM customers", "! CASE condition"),
            ("SELECT CASE WHEN ssn = '3' THEN 1 END FROM customers", "! CASE condition"),
            ("SELECT id FROM customers WHERE id IN (SELECT id FROM customers WHERE ssn < '5')", "! WHERE"),
            ("SELECT id FROM customers c WHERE EXISTS (SELECT 1 FROM customers d WHERE d.ssn LIKE c.city)", "! WHERE"),
            ("WITH t AS (SELECT id FROM customers WHERE ssn ~ '^3') SELECT * FROM t", "! WHERE"),
            ("SELECT x FROM (SELECT ssn AS x FROM customers) s WHERE x LIKE '3%'", "! WHERE"),
            ("SELECT x FROM (SELECT ssn AS x FROM customers) s WHERE x = $1", "="),
            ("SELECT x FROM (SELECT left(ssn, 1) AS x FROM customers) s WHERE x = '3'", "! WHERE (over a value computed from the column)"),
            ("SELECT l.n FROM orders o, LATERAL (SELECT 1 AS n FROM customers c WHERE c.ssn SIMILAR TO '3%') l", "! WHERE"),
            ("SELECT id FROM customers WHERE (SELECT ssn FROM customers LIMIT 1) = '1'", "! WHERE"),
            ("SELECT id FROM orders LIMIT (SELECT length(ssn) FROM customers LIMIT 1)", "! LIMIT"),
            ("SELECT id FROM orders OFFSET (SELECT length(ssn) FROM customers LIMIT 1)", "! OFFSET"),
            ("UPDATE orders SET amount = 1 WHERE id < (SELECT length(ssn) FROM customers LIMIT 1)", "! WHERE"),
            ("DELETE FROM customers WHERE ssn ILIKE '3%'", "! WHERE"),
            ("DELETE FROM customers WHERE email = $1", "="),
            ("UPDATE customers SET city = 'x' WHERE email = $1", "="),
            ("SELECT string_agg(id::text, ',' ORDER BY ssn) FROM customers", "! ORDER BY inside an aggregate"),
            ("SELECT id FROM customers WHERE ssn = city", "! WHERE (= with a column that is not masked)"),
            ("SELECT id FROM customers WHERE ssn IN (SELECT city FROM customers)", "! WHERE (= with a column that is not masked)"),
            ("SELECT id FROM customers WHERE ssn IN (SELECT ssn FROM customers WHERE email = $1)", "="),
            ("SELECT id FROM customers c WHERE c = c", "! WHERE (= with a column that is not masked)"),
            ("SELECT id FROM customers WHERE NOT (email = $1)", "="),
            ("CREATE VIEW v AS SELECT id FROM customers WHERE ssn LIKE '3%'", "! WHERE"),
        ];
        let mut failures = Vec::new();
        for (sql, want) in cases {
            let got = uses(sql);
            if got != want {
                failures.push(format!("{sql}\n   want {want} got {got}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn data_moving_statements_report_their_writes() {
        let c = cat();
        let a = Analyzer::new(&c);
        for sql in [
            "CREATE TEMP TABLE x AS SELECT * FROM customers",
            "SELECT email INTO TEMP x FROM customers",
            "INSERT INTO orders (id) SELECT email FROM customers",
            "CREATE VIEW v AS SELECT email FROM customers",
            "UPDATE orders SET amount = (SELECT length(email) FROM customers LIMIT 1)",
        ] {
            let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("parse");
            let l = a.statement(&stmts[0]);
            assert!(l.writes.iter().any(|w| w.taint.must_mask()), "{sql}: {l:?}");
        }
        let stmts = Parser::parse_sql(
            &PostgreSqlDialect {},
            "UPDATE customers SET city = 'x' WHERE id = 1 RETURNING id, email",
        )
        .expect("parse");
        let l = a.statement(&stmts[0]);
        let out = l.output.expect("returning");
        assert!(!out.column(0).must_mask());
        assert!(out.column(1).must_mask());
        let stmts = Parser::parse_sql(&PostgreSqlDialect {}, "COPY customers (id, ssn) TO STDOUT")
            .expect("parse");
        let out = a.statement(&stmts[0]).output.expect("copy out");
        assert!(!out.column(0).must_mask());
        assert!(out.column(1).must_mask());
    }

    #[test]
    fn writes_name_the_columns_they_fill() {
        let c = cat();
        let a = Analyzer::new(&c);
        let masked = |sql: &str| -> Vec<Option<String>> {
            let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("parse");
            a.statement(&stmts[0])
                .writes
                .into_iter()
                .filter(|w| w.taint.must_mask())
                .map(|w| w.column)
                .collect()
        };
        assert_eq!(
            masked("INSERT INTO orders (amount, id) SELECT ssn, id FROM customers"),
            vec![Some("amount".to_owned())]
        );
        // Without a column list, the table's columns in order.
        assert_eq!(
            masked("INSERT INTO orders SELECT id, id, ssn FROM customers"),
            vec![Some("amount".to_owned())]
        );
        assert_eq!(
            masked("UPDATE orders SET amount = (SELECT ssn FROM customers LIMIT 1), id = 2"),
            vec![Some("amount".to_owned())]
        );
        assert_eq!(
            masked("CREATE TABLE x AS SELECT id, ssn AS s FROM customers"),
            vec![Some("s".to_owned())]
        );
        // A name the server may choose otherwise: any column.
        assert_eq!(
            masked("CREATE TABLE x AS SELECT id, ssn || '' FROM customers"),
            vec![None]
        );
    }

    #[test]
    fn only_plain_references_are_not_computed() {
        let c = cat();
        let a = Analyzer::new(&c);
        let computed = |sql: &str| -> Vec<bool> {
            let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("parse");
            match a.statement(&stmts[0]).output.expect("output") {
                Shape::Columns(cols) => cols.iter().map(|c| !c.taint.computed.is_empty()).collect(),
                Shape::Opaque(t) => vec![!t.computed.is_empty()],
            }
        };
        assert_eq!(
            computed("SELECT email, c.email, (email) FROM customers c"),
            vec![false, false, false]
        );
        assert_eq!(
            computed("SELECT e FROM (SELECT email AS e FROM customers) s"),
            vec![false]
        );
        for sql in [
            "SELECT replace(email, '@', ' at ') FROM customers",
            "SELECT reverse(email) FROM customers",
            "SELECT email || '' FROM customers",
            "SELECT email::bytea FROM customers",
            "SELECT c FROM customers c",
            "SELECT row_to_json(c) FROM customers c",
            "SELECT r FROM (SELECT upper(email) AS r FROM customers) s",
            "SELECT string_agg(email, ',') FROM customers",
        ] {
            assert_eq!(computed(sql), vec![true], "{sql}");
        }
    }
}
