//! Built-in functions that run SQL given to them as text.
//!
//! `query_to_xml`, `query_to_xmlschema`, `query_to_xml_and_xmlschema`, `ts_stat` and the
//! two-argument `ts_rewrite` take a query as a text argument and run it on the server (the
//! functions of `pg_catalog` with a `query text` argument; the others taking one, such as
//! `pg_stat_get_activity`, only return text). The analysis reads such a call's query as the
//! statement it is, with the same guardrails, when it is a constant; a query text that is
//! computed (a parameter, a concatenation, a column) cannot be read, and the statement is
//! refused.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectName, Statement, TableFactor,
    Value, Visit, Visitor,
};

use super::names::Qualified;

/// The built-ins that run a query text: name, number of arguments (`None`: any) and the
/// position of the query among them.
const QUERY_TEXT_FUNCTIONS: &[(&str, Option<usize>, usize)] = &[
    ("query_to_xml", None, 0),
    ("query_to_xmlschema", None, 0),
    ("query_to_xml_and_xmlschema", None, 0),
    ("ts_stat", None, 0),
    // `ts_rewrite(query tsquery, select text)`; the three-argument form takes no SQL.
    ("ts_rewrite", Some(2), 1),
];

/// The query text of one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryText {
    /// A constant: the SQL the server will run.
    Constant(String),
    /// Computed, or not found among the arguments: the function's name.
    Unseen(String),
}

/// The query texts of the calls of [`QUERY_TEXT_FUNCTIONS`] in a statement, wherever they
/// stand (expressions and FROM).
pub fn query_texts(statement: &Statement) -> Vec<QueryText> {
    struct Finder(Vec<QueryText>);
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = e {
                if let FunctionArguments::List(list) = &f.args {
                    self.0.extend(of_call(&f.name, &list.args));
                } else {
                    self.0.extend(of_call(&f.name, &[]));
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            match factor {
                TableFactor::Function { name, args, .. } => self.0.extend(of_call(name, args)),
                TableFactor::Table {
                    name,
                    args: Some(args),
                    ..
                } => self.0.extend(of_call(name, &args.args)),
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let mut finder = Finder(Vec::new());
    let _ = statement.visit(&mut finder);
    finder.0
}

/// The query text a call passes, when it calls one of [`QUERY_TEXT_FUNCTIONS`].
fn of_call(name: &ObjectName, args: &[FunctionArg]) -> Option<QueryText> {
    let name = Qualified::of(name)?;
    let (_, _, position) = QUERY_TEXT_FUNCTIONS
        .iter()
        .find(|(f, count, _)| name.is_builtin(f) && count.is_none_or(|n| n == args.len()))?;
    // Named notation (`query => '...'`) or the argument at its position.
    let named = args.iter().find_map(|a| match a {
        FunctionArg::Named {
            name: n,
            arg: FunctionArgExpr::Expr(e),
            ..
        } if is_query_name(n) => Some(e),
        FunctionArg::ExprNamed {
            name: Expr::Identifier(n),
            arg: FunctionArgExpr::Expr(e),
            ..
        } if is_query_name(n) => Some(e),
        _ => None,
    });
    let positional = match args.get(*position) {
        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(e))) => Some(e),
        _ => None,
    };
    Some(match named.or(positional).and_then(constant_text) {
        Some(text) => QueryText::Constant(text),
        None => QueryText::Unseen(name.to_string()),
    })
}

/// The name of the query argument in named notation.
fn is_query_name(n: &sqlparser::ast::Ident) -> bool {
    matches!(super::names::fold(n).as_str(), "query" | "select")
}

/// The value of a string constant (possibly cast or parenthesised).
fn constant_text(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::UnicodeStringLiteral(s) => Some(s.clone()),
            Value::DollarQuotedString(d) => Some(d.value.clone()),
            _ => None,
        },
        Expr::Nested(inner) | Expr::Cast { expr: inner, .. } => constant_text(inner),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn texts(sql: &str) -> Vec<QueryText> {
        let s = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("parse");
        query_texts(&s[0])
    }

    #[test]
    fn constant_query_texts_are_read() {
        assert_eq!(
            texts("SELECT query_to_xml('SELECT crm.purge()', true, false, '')"),
            vec![QueryText::Constant("SELECT crm.purge()".into())]
        );
        assert_eq!(
            texts("SELECT * FROM ts_stat($$SELECT to_tsvector(x) FROM t$$)"),
            vec![QueryText::Constant("SELECT to_tsvector(x) FROM t".into())]
        );
        assert_eq!(
            texts("SELECT pg_catalog.ts_rewrite('a'::tsquery, 'SELECT 1'::text)"),
            vec![QueryText::Constant("SELECT 1".into())]
        );
        assert_eq!(
            texts("SELECT query_to_xmlschema(query => 'SELECT 2', nulls => true, tableforest => false, targetns => '')"),
            vec![QueryText::Constant("SELECT 2".into())]
        );
        // The three-argument ts_rewrite runs no SQL; a function of another schema is not
        // the built-in.
        assert!(texts("SELECT ts_rewrite('a'::tsquery, 'a', 'b')").is_empty());
        assert!(texts("SELECT app.query_to_xml('x')").is_empty());
    }

    #[test]
    fn computed_query_texts_are_unseen() {
        assert_eq!(
            texts("SELECT query_to_xml('SELECT ' || 'crm.purge()', true, false, '')"),
            vec![QueryText::Unseen("query_to_xml".into())]
        );
        assert_eq!(
            texts("SELECT * FROM ts_stat($1)"),
            vec![QueryText::Unseen("ts_stat".into())]
        );
    }
}
