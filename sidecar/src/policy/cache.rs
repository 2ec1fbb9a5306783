//! A bounded cache of analyses. Drivers send the same statement again and again, either as
//! the same text (prepared and extended-protocol statements) or with different literals
//! (simple-protocol clients that inline their parameters). Entries are keyed by the statement's
//! *shape*: its tokens with numeric and plain string literals replaced by `?`, which does not
//! change any fact the guardrails look at. Statements with bodies the analyser cannot see into
//! (DO blocks, function bodies), whose facts depend on the body's text, are never shared, and
//! neither are unanalysable texts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::analyze::{analyze, Analysis};

/// Texts longer than this are analysed every time and not kept.
const MAX_KEY_BYTES: usize = 8 * 1024;
/// Entries kept before the cache is emptied.
const MAX_ENTRIES: usize = 4096;

/// Shared analysis cache.
#[derive(Clone, Default)]
pub struct AnalysisCache {
    entries: Arc<Mutex<HashMap<String, Arc<Analysis>>>>,
}

/// The statement's tokens with numeric and plain string literals replaced by `?`.
fn shape(sql: &str) -> Option<String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let mut key = String::with_capacity(sql.len());
    for t in tokens {
        match t {
            Token::Number(..) => key.push_str("\u{0}n"),
            Token::SingleQuotedString(_) => key.push_str("\u{0}s"),
            other => key.push_str(&other.to_string()),
        }
    }
    Some(key)
}

fn shareable(analysis: &Analysis) -> bool {
    match analysis {
        Analysis::Statements(list) => list.iter().all(|f| !f.opaque_body),
        Analysis::Unanalyzable { .. } => false,
    }
}

impl AnalysisCache {
    /// The analysis of `sql`, from the cache or freshly made.
    pub fn analyze(&self, sql: &str) -> Arc<Analysis> {
        if sql.len() > MAX_KEY_BYTES {
            return Arc::new(analyze(sql));
        }
        let Some(key) = shape(sql) else {
            return Arc::new(analyze(sql));
        };
        if let Some(hit) = self.entries.lock().ok().and_then(|e| e.get(&key).cloned()) {
            return hit;
        }
        let analysis = Arc::new(analyze(sql));
        if shareable(&analysis) {
            if let Ok(mut entries) = self.entries.lock() {
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
                entries.insert(key, analysis.clone());
            }
        }
        analysis
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_differing_in_literals_share_an_entry() {
        let cache = AnalysisCache::default();
        let a = cache.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 17");
        let b = cache.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 4242");
        assert!(Arc::ptr_eq(&a, &b));
        let c = cache.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = $1");
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn bodies_are_never_shared() {
        let cache = AnalysisCache::default();
        let harmless = "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS 'BEGIN RETURN 1; END'";
        let evil = "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS 'BEGIN PERFORM pg_read_file(''/etc/passwd''); RETURN 1; END'";
        let _ = cache.analyze(harmless);
        match cache.analyze(evil).as_ref() {
            Analysis::Statements(s) => assert!(s[0].functions.contains("pg_read_file")),
            other => panic!("{other:?}"),
        }
        let _ = cache.analyze("DO $$ BEGIN NULL; END $$");
        match cache
            .analyze("DO $$ BEGIN PERFORM lo_import('/etc/passwd'); END $$")
            .as_ref()
        {
            Analysis::Statements(s) => assert!(s[0].functions.contains("lo_import")),
            other => panic!("{other:?}"),
        }
    }
}
