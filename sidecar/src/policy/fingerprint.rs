//! Statement normalisation and fingerprints: literals become `?`, so audit records carry no
//! values and statements that differ only in literals share a fingerprint; texts that cannot
//! be normalised (server messages, unanalysable statements, client-chosen names) are kept
//! only as their leading words, a length and a fingerprint ([`value_free`]).

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

/// Words kept at the start of a text by [`value_free`] at most.
const MAX_KEPT_WORDS: usize = 12;

/// A text reduced to what carries no value: its leading words made of letters (and `-`,
/// `_`, `:`, `,`, parentheses) up to the first word that is anything else, then its length
/// and fingerprint. A text that is only such words is kept whole.
pub fn value_free(text: &str) -> String {
    let plain = |w: &str| {
        w.len() <= 32
            && w.chars()
                .all(|c| c.is_ascii_alphabetic() || matches!(c, '-' | '_' | ':' | ',' | '(' | ')'))
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let kept: Vec<&str> = words
        .iter()
        .take(MAX_KEPT_WORDS)
        .take_while(|w| plain(w))
        .copied()
        .collect();
    if kept.len() == words.len() {
        return kept.join(" ");
    }
    let mut out = kept.join(" ");
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(&format!(
        "... ({} characters, fingerprint {})",
        text.chars().count(),
        of(text)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::value_free;

    #[test]
    fn value_free_texts_keep_leading_words_only() {
        assert_eq!(value_free("psql"), "psql");
        let s =
            value_free("cross-database references are not implemented: alice@example.com.public.t");
        assert!(
            s.starts_with("cross-database references are not implemented: ..."),
            "{s}"
        );
        assert!(!s.contains("alice"));
        let s = value_free("relation \"secret\" does not exist");
        assert!(
            s.starts_with("relation ...") && !s.contains("secret"),
            "{s}"
        );
        assert!(!value_free("duplicate key 4111111111111111").contains("4111"));
    }
}
