//! A bounded cache of analyses. Drivers send the same statement again and again, either as
//! the same text (prepared and extended-protocol statements) or with different literals
//! (simple-protocol clients that inline their parameters). Entries are keyed by the statement's
//! *shape*: its tokens with numeric and plain string literals replaced by a marker, which does
//! not change any fact the guardrails look at. Statements with bodies the analyser cannot see into
//! (DO blocks, function bodies), whose facts depend on the body's text, are never shared, and
//! neither are unanalysable texts, nor analyses whose facts keep the value of a literal (COPY
//! options, the search path a statement sets, a string the parser took as a name, as in
//! `FROM 'x'`): a text of the same shape with other literals would get them.
//!
//! The cache is bounded by bytes: each entry is charged an estimate of the memory its analysis
//! holds (the parse tree dominates, and grows with the text: see [`cost`]), and the cache is
//! emptied when the next entry would take it past [`MAX_BYTES`] or [`MAX_ENTRIES`].

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use portcullis_crds::gateway_policy::StatementKind;

use super::analyze::{analyze, Analysis};

/// Texts longer than this are analysed every time and not kept.
const MAX_KEY_BYTES: usize = 8 * 1024;
/// Entries kept before the cache is emptied.
pub const MAX_ENTRIES: usize = 4096;
/// Estimated bytes of analyses kept before the cache is emptied.
pub const MAX_BYTES: usize = 32 << 20;
/// Heap bytes an analysis holds per byte of its text, at most, over the statement shapes that
/// build the largest parse trees for their length (lists of one-character literals or names,
/// operator chains, nested parentheses, calls); the memory test of the cache measures them.
const BYTES_PER_TEXT_BYTE: usize = 512;
/// Bytes charged to every entry besides its text (the map slot, the facts' sets).
const ENTRY_BYTES: usize = 8 * 1024;

/// What keeping the analysis of a text with shape `key` costs, as the cache counts it.
pub fn cost(key: &str) -> usize {
    ENTRY_BYTES + key.len() * (1 + BYTES_PER_TEXT_BYTE)
}

#[derive(Default)]
struct Entries {
    map: HashMap<String, Arc<Analysis>>,
    bytes: usize,
}

/// Shared analysis cache.
#[derive(Clone, Default)]
pub struct AnalysisCache {
    entries: Arc<Mutex<Entries>>,
}

/// The statement's shape: its text with numeric and plain string literals replaced. Most
/// statements are read by [`plain_shape`]; the rest by the SQL tokenizer.
fn shape(sql: &str) -> Option<String> {
    plain_shape(sql).or_else(|| token_shape(sql))
}

/// The statement's tokens with numeric and plain string literals replaced by a marker.
fn token_shape(sql: &str) -> Option<String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let mut key = String::with_capacity(sql.len() + 1);
    key.push('T');
    for t in tokens {
        match t {
            Token::Number(..) => key.push_str("\u{0}n"),
            Token::SingleQuotedString(_) => key.push_str("\u{0}s"),
            other => {
                let _ = write!(key, "{other}");
            }
        }
    }
    Some(key)
}

/// A single pass over statements made of ASCII words, operators, quoted identifiers,
/// positional parameters, plain `'...'` strings and decimal numbers: the text as it is, with
/// each string and number replaced by a marker. Anything else (comments, dollar quotes,
/// escape, bit, national or Unicode strings, backslashes, non-ASCII text, numbers glued to
/// words) is left to the tokenizer (`None`), so two texts share a shape only when they are the
/// same sequence of tokens but for the values of those literals.
fn plain_shape(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$';
    let mut key = String::with_capacity(sql.len() + 1);
    key.push('F');
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        let c = b[i];
        let prev = if i > 0 { b[i - 1] } else { b' ' };
        match c {
            0x80.. | b'\\' => return None,
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            // A quoted identifier, kept as it is.
            b'"' => i = quoted_end(b, i)?,
            b'\'' => {
                // Only a plain string: not glued to a word (E'', N'', X'', B'') or to
                // U&, another string or an identifier.
                if word(prev) || matches!(prev, b'&' | b'\'' | b'"') {
                    return None;
                }
                let end = quoted_end(b, i)?;
                key.push_str(&sql[copied..i]);
                key.push_str("\u{0}s");
                i = end;
                copied = i;
                if b.get(i)
                    .is_some_and(|n| word(*n) || matches!(n, b'\'' | b'"'))
                {
                    return None;
                }
            }
            b'$' if !word(prev) => {
                // A positional parameter ($1), kept; a dollar quote is not for this pass.
                let digits = b[i + 1..].iter().take_while(|d| d.is_ascii_digit()).count();
                if digits == 0 || b.get(i + 1 + digits).is_some_and(|n| word(*n)) {
                    return None;
                }
                i += 1 + digits;
            }
            b'0'..=b'9' if !word(prev) => {
                if prev == b'.' {
                    return None;
                }
                let digits =
                    |from: usize| b[from..].iter().take_while(|d| d.is_ascii_digit()).count();
                let mut j = i + digits(i);
                if b.get(j) == Some(&b'.') {
                    j += 1 + digits(j + 1);
                }
                if matches!(b.get(j), Some(b'e' | b'E')) {
                    let sign = usize::from(matches!(b.get(j + 1), Some(b'+' | b'-')));
                    let exp = digits(j + 1 + sign);
                    if exp == 0 {
                        return None;
                    }
                    j += 1 + sign + exp;
                }
                if b.get(j)
                    .is_some_and(|n| word(*n) || matches!(n, b'.' | b'\'' | b'"'))
                {
                    return None;
                }
                key.push_str(&sql[copied..i]);
                key.push_str("\u{0}n");
                i = j;
                copied = i;
            }
            _ => i += 1,
        }
    }
    key.push_str(&sql[copied..]);
    Some(key)
}

/// Where the quoted run starting at `b[start]` (its quote character, doubled inside) ends: the
/// index after its closing quote. `None` when it is not closed, or when a string holds a
/// backslash (an escape under `standard_conforming_strings = off`).
fn quoted_end(b: &[u8], start: usize) -> Option<usize> {
    let quote = b[start];
    let mut j = start + 1;
    loop {
        match *b.get(j)? {
            c if c == quote && b.get(j + 1) == Some(&quote) => j += 2,
            c if c == quote => return Some(j + 1),
            b'\\' if quote == b'\'' => return None,
            _ => j += 1,
        }
    }
}

/// Whether an analysis may serve every text of its shape: no statement has a body the
/// analyser cannot see into, or facts that keep a literal's value (COPY, whose options the
/// masking reads from the statement; a search path change, whose schemas are its literals;
/// a `set_config` call, whose first literal says whether it changes the search path; a
/// query text, which is analysed as SQL), and no statement keeps a single-quoted text the
/// parser did not read as a value (a string taken as a relation, column or alias name: its
/// value is part of the facts).
fn shareable(analysis: &Analysis) -> bool {
    match analysis {
        Analysis::Statements(list) => list.iter().all(|f| {
            !f.opaque_body
                && !f.runs_query_text
                && !f.keeps_quoted_text
                && f.path_changes.is_empty()
                && !f.functions.iter().any(|q| q.name == "set_config")
                && !f.kinds.contains(&StatementKind::Copy)
        }),
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
        if let Some(hit) = self
            .entries
            .lock()
            .ok()
            .and_then(|e| e.map.get(&key).cloned())
        {
            return hit;
        }
        let analysis = Arc::new(analyze(sql));
        if shareable(&analysis) {
            if let Ok(mut entries) = self.entries.lock() {
                let cost = cost(&key);
                if entries.map.len() >= MAX_ENTRIES || entries.bytes + cost > MAX_BYTES {
                    entries.map.clear();
                    entries.bytes = 0;
                }
                if entries.map.insert(key, analysis.clone()).is_none() {
                    entries.bytes += cost;
                }
            }
        }
        analysis
    }

    /// Entries kept and the bytes charged for them.
    pub fn usage(&self) -> (usize, usize) {
        self.entries
            .lock()
            .map(|e| (e.map.len(), e.bytes))
            .unwrap_or_default()
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
    fn the_plain_pass_replaces_only_literals() {
        assert_eq!(
            plain_shape("SELECT a1, \"x'9\" FROM t2 WHERE b = 'it''s' AND c > -4.5e-3 AND d = $12")
                .as_deref(),
            Some("FSELECT a1, \"x'9\" FROM t2 WHERE b = \u{0}s AND c > -\u{0}n AND d = $12")
        );
        for declined in [
            "SELECT 1 -- comment",
            "SELECT /* c */ 1",
            "SELECT $$text$$",
            "SELECT $tag$text$tag$",
            "SELECT E'a\\nb'",
            "SELECT e'x'",
            "SELECT N'x'",
            "SELECT X'1f'",
            "SELECT B'101'",
            "SELECT U&'d\\0061t'",
            "SELECT 'a\\'",
            "SELECT 'unterminated",
            "SELECT \"unterminated",
            "SELECT 0x1F",
            "SELECT 1_000",
            "SELECT 1e",
            "SELECT 1.x",
            "SELECT t.5",
            "SELECT é1",
            "SELECT $1abc",
        ] {
            assert_eq!(plain_shape(declined), None, "{declined}");
            assert!(
                shape(declined).is_none_or(|k| k.starts_with('T')),
                "{declined}"
            );
        }
    }

    #[test]
    fn texts_share_a_plain_shape_only_when_their_tokens_do() {
        let texts = [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 17",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4242",
            "SELECT abalance FROM pgbench_accounts WHERE aid = '17'",
            "SELECT abalance FROM pgbench_accounts1 WHERE aid = 17",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1.5",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 2e10",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $2",
            "SELECT * FROM \"t 1\" WHERE x = 'a'",
            "SELECT * FROM \"t 2\" WHERE x = 'a'",
            "SELECT * FROM \"t 1\" WHERE x = 'b'",
            "UPDATE t SET v = 'x' WHERE id = 3",
            "UPDATE t SET v = 'y''z' WHERE id = 4",
            "UPDATE t SET v = 'x' WHERE id = 3 OR 1 = 1",
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT pg_read_file('/tmp/x')",
            "SELECT 1",
            "SELECT 2",
            "SELECT -1",
        ];
        for a in texts {
            for b in texts {
                let (Some(pa), Some(pb)) = (plain_shape(a), plain_shape(b)) else {
                    panic!("{a} / {b} take the plain pass");
                };
                let (ta, tb) = (token_shape(a), token_shape(b));
                assert_eq!(pa == pb, ta == tb, "{a} / {b}");
            }
        }
    }

    #[test]
    fn bodies_are_never_shared() {
        let cache = AnalysisCache::default();
        let harmless = "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS 'BEGIN RETURN 1; END'";
        let evil = "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS 'BEGIN PERFORM pg_read_file(''/etc/passwd''); RETURN 1; END'";
        let _ = cache.analyze(harmless);
        match cache.analyze(evil).as_ref() {
            Analysis::Statements(s) => {
                assert!(s[0].functions.iter().any(|f| f.name == "pg_read_file"))
            }
            other => panic!("{other:?}"),
        }
        let _ = cache.analyze("DO $$ BEGIN NULL; END $$");
        match cache
            .analyze("DO $$ BEGIN PERFORM lo_import('/etc/passwd'); END $$")
            .as_ref()
        {
            Analysis::Statements(s) => {
                assert!(s[0].functions.iter().any(|f| f.name == "lo_import"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn literal_values_that_facts_keep_are_never_shared() {
        use super::super::names::PathChange;
        let cache = AnalysisCache::default();
        // COPY options are read from the statement: a cached ',' must not stand for '|'.
        let _ = cache.analyze("COPY customers TO STDOUT (DELIMITER ',')");
        match cache
            .analyze("COPY customers TO STDOUT (DELIMITER '|')")
            .as_ref()
        {
            Analysis::Statements(s) => {
                let ast = s[0].ast.as_deref().map(ToString::to_string);
                assert!(ast.is_some_and(|a| a.contains("'|'")), "{s:?}");
            }
            other => panic!("{other:?}"),
        }
        // The search path a statement sets is its literal.
        for (first, then, wanted) in [
            (
                "SET search_path = 'public'",
                "SET search_path = 'evil'",
                "evil",
            ),
            (
                "SELECT set_config('search_path', 'public', false)",
                "SELECT set_config('search_path', 'evil', false)",
                "evil",
            ),
            // Another setting first: the same shape, no path change.
            (
                "SELECT set_config('application_name', 'public', false)",
                "SELECT set_config('search_path', 'evil', false)",
                "evil",
            ),
        ] {
            let _ = cache.analyze(first);
            match cache.analyze(then).as_ref() {
                Analysis::Statements(s) => assert_eq!(
                    s[0].path_changes,
                    vec![PathChange::Set(vec![wanted.to_owned()])],
                    "{then}"
                ),
                other => panic!("{other:?}"),
            }
        }
    }
    #[test]
    fn strings_the_parser_takes_as_names_are_never_shared() {
        // sqlparser reads a single-quoted string as a name in places PostgreSQL refuses it:
        // the name is then a fact, and a text of the same shape names another relation.
        for (first, then, wanted) in [
            (
                "SELECT (SELECT max(email) FROM custome, '|zzz|z')",
                "SELECT (SELECT max(email) FROM custome, '/tmp/x')",
                "/tmp/x",
            ),
            (
                "SELECT * FROM 'orders'",
                "SELECT * FROM 'customers'",
                "customers",
            ),
            (
                "SELECT * FROM 'public'.orders",
                "SELECT * FROM 'secret'.orders",
                "secret",
            ),
            (
                "DELETE FROM 'orders' WHERE id = 1",
                "DELETE FROM 'customers' WHERE id = 1",
                "customers",
            ),
        ] {
            let cache = AnalysisCache::default();
            let _ = cache.analyze(first);
            let cached = cache.analyze(then);
            assert_eq!(*cached, analyze(then), "{then} after {first}");
            match cached.as_ref() {
                Analysis::Statements(s) => assert!(
                    s[0].tables
                        .iter()
                        .any(|t| t.name == wanted || t.schema.as_deref() == Some(wanted)),
                    "{then}: {:?}",
                    s[0].tables
                ),
                other => panic!("{other:?}"),
            }
        }
        // An alias given as a string is kept out of the cache too.
        for text in [
            "SELECT email 'e' FROM customers",
            "SELECT email AS 'e' FROM customers",
        ] {
            match analyze(text) {
                Analysis::Statements(s) => assert!(s[0].keeps_quoted_text, "{text}"),
                other => panic!("{other:?}"),
            }
        }
        // Plain literals still share.
        match analyze("SELECT * FROM customers WHERE email = 'a@b.example'") {
            Analysis::Statements(s) => assert!(!s[0].keeps_quoted_text),
            other => panic!("{other:?}"),
        }
    }
}
