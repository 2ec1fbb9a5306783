//! Column lineage: for every column a statement returns, which masked sources it may carry.
//!
//! The analysis walks the statement's syntax tree (sqlparser, PostgreSQL dialect) from each
//! output column down to the base-table columns it is computed from, through expressions,
//! function calls, whole-row references, subqueries, CTEs, set operations, joins and LATERAL.
//! It fails closed: whatever it cannot follow (a relation the catalog does not know, a function
//! not known to compute its result from its arguments alone, an identifier it cannot resolve)
//! makes the column *unproven*, and an unproven column is masked like a masked one.
//!
//! Known limitation, by design: predicates (`WHERE`, `HAVING`, `JOIN ... ON`) are not outputs,
//! so a query can still learn *about* masked values by filtering on them; guardrails, not
//! masking, govern that.

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
    /// The column holds values computed from its sources, not copies of them (a view column
    /// defined by an expression, a table column written from one).
    pub computed: bool,
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
    /// The value may be computed from its sources rather than be one of them unchanged: any
    /// expression other than a plain column reference (a function, an operator, a cast, a
    /// whole row) transforms what it reads, and a value detector cannot be trusted to find
    /// personal data in the result.
    pub computed: bool,
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
        self.computed |= other.computed;
    }
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
        t.computed = true;
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
                let scope = self.scope_of_from(std::slice::from_ref(&update.table), &ctes, &root);
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
                let scope = self.scope_of_from(&tables, &ctes, &root);
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
        self.set_expr(&q.body, &ctes, outer)
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
            SetExpr::Select(select) => self.select(select, ctes, outer),
            SetExpr::Query(q) => self.query(q, ctes, outer),
            SetExpr::SetOperation { left, right, .. } => self
                .set_expr(left, ctes, outer)
                .union(self.set_expr(right, ctes, outer)),
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

    fn select(&self, select: &Select, ctes: &Ctes, outer: &Scope<'_>) -> Shape {
        let scope = self.scope_of_from(&select.from, ctes, outer);
        self.projection(&select.projection, &scope, ctes)
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
        taint.computed = true;
        taint
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
        let mut e = e.clone();
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
                    f.over = None;
                    f.filter = None;
                    match &f.args {
                        FunctionArguments::Subquery(q) => Some((**q).clone()),
                        _ => None,
                    }
                }
                _ => None,
            };
            if let Some(q) = lifted {
                let id = self.lift(q);
                *node = placeholder(id);
            }
            ControlFlow::<()>::Continue(())
        });

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
        }
        // Anything but a plain column reference transforms its sources.
        if !is_plain_reference(&e) {
            taint.computed = true;
        }
        taint
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
            return rel.whole_row();
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

fn placeholder(id: usize) -> Expr {
    Expr::Identifier(Ident::new(format!("{PLACEHOLDER}{id}")))
}

/// A column reference as written (`notes`, `c.notes`), or a scalar subquery, whose value is
/// its source's unchanged (the subquery's own lineage says whether it computes it).
fn is_plain_reference(e: &Expr) -> bool {
    match e {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => true,
        Expr::Nested(inner) => is_plain_reference(inner),
        _ => false,
    }
}

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
            computed: false,
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
                Shape::Columns(cols) => cols.iter().map(|c| c.taint.computed).collect(),
                Shape::Opaque(t) => vec![t.computed],
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
