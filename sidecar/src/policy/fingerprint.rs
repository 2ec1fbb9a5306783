//! Statement normalisation and fingerprints: literals become `?`, so audit records carry no
//! values and statements that differ only in literals share a fingerprint.

use std::ops::ControlFlow;

use sha2::{Digest, Sha256};
use sqlparser::ast::{visit_expressions_mut, Expr, Statement, Value};

/// Replace every literal of a parsed statement with `?` and render it.
pub fn normalize(statement: &mut Statement) -> String {
    let _ = visit_expressions_mut(statement, |e| {
        if let Expr::Value(v) = e {
            if !matches!(
                v.value,
                Value::Null | Value::Boolean(_) | Value::Placeholder(_)
            ) {
                v.value = Value::Placeholder("?".to_owned());
            }
        }
        if let Expr::TypedString(t) = e {
            t.value.value = Value::Placeholder("?".to_owned());
        }
        ControlFlow::<()>::Continue(())
    });
    statement.to_string()
}

/// Hex SHA-256 (first 16 characters) of a text.
pub fn of(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    hex::encode(&digest[..8])
}
