//! Statement normalisation and fingerprints: literals become `?`, so audit records carry no
//! values and statements that differ only in literals share a fingerprint; texts that cannot
//! be normalised (server messages, unanalysable statements, client-chosen names) are kept
//! only as their leading words, a length and a fingerprint ([`value_free`]).

use std::ops::ControlFlow;

use sha2::{Digest, Sha256};
use sqlparser::ast::{visit_expressions_mut, Expr, Statement, Value};

/// Replace every literal of a parsed statement with `?` and render it. A statement whose
/// identifiers look like values (an alias or a quoted name holding an e-mail address, a card
/// number, an IBAN, a phone number or a run of six digits or more) is reduced to
/// [`value_free`]: its leading keywords, length and fingerprint.
pub fn normalize(statement: &mut Statement) -> String {
    normalize_rendered(render_without_literals(statement))
}

/// [`normalize`] of a statement already rendered by [`render_without_literals`].
pub fn normalize_rendered(rendered: String) -> String {
    if identifiers_look_like_values(&rendered) {
        value_free(&rendered)
    } else {
        rendered
    }
}

/// Built-in detector patterns, compiled once.
static PATTERNS: std::sync::LazyLock<Option<crate::masking::detectors::Patterns>> =
    std::sync::LazyLock::new(|| crate::masking::detectors::Patterns::new().ok());

/// Whether a word of `text` (an identifier, quoted or not) is what a built-in detector would
/// catch, or holds a run of six digits or more. Fails closed when the patterns are missing.
fn identifiers_look_like_values(text: &str) -> bool {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let Ok(tokens) = Tokenizer::new(&sqlparser::dialect::PostgreSqlDialect {}, text).tokenize()
    else {
        return true;
    };
    let Some(patterns) = PATTERNS.as_ref() else {
        return true;
    };
    tokens.iter().any(|t| match t {
        Token::Word(w) => looks_like_value_with(patterns, &w.value),
        _ => false,
    })
}

/// Whether a name (an identifier, a column name) is what a built-in detector would catch, or
/// holds a run of six digits or more. Fails closed when the patterns are missing.
pub fn looks_like_value(name: &str) -> bool {
    match PATTERNS.as_ref() {
        Some(p) => looks_like_value_with(p, name),
        None => true,
    }
}

/// A table or function name as the audit record keeps it: `?` when it looks like a value.
pub fn name_for_record(name: String) -> String {
    if looks_like_value(&name) {
        "?".to_owned()
    } else {
        name
    }
}

fn looks_like_value_with(patterns: &crate::masking::detectors::Patterns, name: &str) -> bool {
    use crate::masking::detectors::DetectorKind;
    name.split(|c: char| !c.is_ascii_digit())
        .any(|run| run.len() >= 6)
        || [
            DetectorKind::Email,
            DetectorKind::PaymentCard,
            DetectorKind::Iban,
            DetectorKind::Phone,
        ]
        .iter()
        .any(|k| !patterns.find(k, name).is_empty())
}

/// The statement rendered with every literal value replaced by `?` (NULL, booleans and
/// parameters kept). A quoted text left in it is one the parser did not keep as a value: a
/// single-quoted string it took as a name (sqlparser accepts `FROM 'x'`, `AS 'x'`, `'x'.col`,
/// which PostgreSQL refuses) or an option kept as text.
pub fn render_without_literals(statement: &mut Statement) -> String {
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

    #[test]
    fn identifiers_that_look_like_values_are_not_kept() {
        use sqlparser::dialect::PostgreSqlDialect;
        use sqlparser::parser::Parser;
        let norm = |sql: &str| {
            let mut s = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("parse");
            super::normalize(&mut s[0])
        };
        for sql in [
            r#"SELECT 1 AS "alice@example.com""#,
            r#"SELECT id AS "4111 1111 1111 1111" FROM customers"#,
            r#"SELECT * FROM "DE89370400440532013000""#,
            r#"SELECT 1 AS "+44 20 7946 0958""#,
            r#"SELECT 1 AS "123-45-678901""#,
        ] {
            let n = norm(sql);
            assert!(n.starts_with("SELECT"), "{n}");
            assert!(n.contains("fingerprint"), "{n}");
            for secret in ["alice", "4111", "DE89", "7946", "678901"] {
                assert!(!n.contains(secret), "{sql}: {n}");
            }
        }
        assert_eq!(
            norm("SELECT id AS client_id FROM customers WHERE email = 'a@b.example'"),
            "SELECT id AS client_id FROM customers WHERE email = ?"
        );
    }
}
