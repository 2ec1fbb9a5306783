//! SQL text through the shared analysis cache, differentially: the cache keys a statement by
//! its shape (its literals replaced), so a text must get from the cache exactly the facts its
//! own analysis gives, even when a text of the same shape with other literals was analysed
//! first.
//!
//! Property: for every fact the guardrails, the search path and the masking read (kinds,
//! tables, functions, search path changes, missing WHERE, COPY targets and options, settings,
//! effect), a cached analysis equals a fresh one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis_sidecar::policy::analyze::{analyze, Analysis, StatementFacts};
use portcullis_sidecar::policy::cache::AnalysisCache;
use sqlparser::ast::Statement;

/// The same text with every digit and every character of a plain string literal changed.
fn other_literals(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut in_string = false;
    for c in sql.chars() {
        out.push(match c {
            '\'' => {
                in_string = !in_string;
                c
            }
            '0'..='8' if !in_string => char::from(c as u8 + 1),
            '9' if !in_string => '0',
            c if in_string && c.is_ascii_alphanumeric() => {
                if c == 'z' {
                    'y'
                } else {
                    'z'
                }
            }
            c if in_string && c.is_ascii_punctuation() => {
                if c == '|' {
                    ';'
                } else {
                    '|'
                }
            }
            c => c,
        });
    }
    out
}

/// What a session reads from a statement's facts, literal values of COPY options included.
fn decided_on(f: &StatementFacts) -> String {
    let mut kinds: Vec<String> = f.kinds.iter().map(|k| format!("{k:?}")).collect();
    kinds.sort();
    let copy = match f.ast.as_deref() {
        Some(Statement::Copy {
            options,
            legacy_options,
            ..
        }) => format!("{options:?} {legacy_options:?}"),
        _ => String::new(),
    };
    format!(
        "{kinds:?} {:?} {:?} {:?} {} {} {} {:?} {} {:?} {copy}",
        f.tables,
        f.functions,
        f.path_changes,
        f.missing_where,
        f.copy_program,
        f.copy_file,
        f.settings,
        f.opaque_body,
        f.effect
    )
}

fn facts(a: &Analysis) -> Option<Vec<String>> {
    match a {
        Analysis::Statements(list) => Some(list.iter().map(decided_on).collect()),
        Analysis::Unanalyzable { .. } => None,
    }
}

fuzz_target!(|sql: &str| {
    let sql = sql.to_owned();
    portcullis_fuzz::on_session_stack(move || {
        let twin = other_literals(&sql);
        let cache = AnalysisCache::default();
        let _ = cache.analyze(&twin);
        let cached = cache.analyze(&sql);
        let fresh = analyze(&sql);
        assert_eq!(
            facts(&cached),
            facts(&fresh),
            "{sql:?} gets the analysis of {twin:?} from the cache"
        );
    });
});
