//! Limits on the shape of a query string, checked on its tokens before it is parsed.
//!
//! sqlparser bounds how deeply nested input may be (parentheses, sub-queries, function calls),
//! but a chain of binary operators or set operations (`a OR b OR c ...`, `x || y || z ...`,
//! `SELECT 1 UNION SELECT 2 UNION ...`, `v::a::b::c ...`) is parsed in a loop and becomes a
//! left-deep tree as deep as the chain is long. Every later walk of that tree (the analysis,
//! the masking lineage, cloning and dropping it) recurses once per link, so an unbounded chain
//! can exhaust a thread's stack. A query string is therefore refused before parsing when one of
//! its statements links more than [`MAX_CHAIN`] operands, or when it holds more than
//! [`MAX_STATEMENTS`] statements (each keeps its own parse tree while the string is analysed).
//!
//! The count is an upper bound of the depth: every binary operator and every set operation of a
//! statement is counted, wherever it stands, so two short chains count as one long one. Signs
//! (`-1` after a comma or a parenthesis) are not binary and are not counted.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer};

/// Most binary operators and set operations one statement may hold. Session threads have
/// stacks sized so that a tree of this depth is walked with room to spare (see
/// `crate::workers::SESSION_STACK_BYTES`).
pub const MAX_CHAIN: usize = 10_000;

/// Most statements one query string may hold.
pub const MAX_STATEMENTS: usize = 10_000;

/// Why a query string is refused before parsing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// A statement chains more operators than [`MAX_CHAIN`]. The messages are plain words
    /// only, so that they survive whole the scrubbing of unanalysable statements' reasons.
    #[error("expression-depth: a statement chains more operators than the limit allows")]
    ChainTooLong {
        /// 1-based position of the statement in the query string.
        statement: usize,
        /// The limit.
        limit: usize,
    },
    /// The query string holds more statements than [`MAX_STATEMENTS`].
    #[error("statement-count: the query holds more statements than the limit allows")]
    TooManyStatements {
        /// The limit.
        limit: usize,
    },
}

/// Check a query string against [`MAX_CHAIN`] and [`MAX_STATEMENTS`]. Text the tokenizer
/// cannot read passes: the parser refuses it with its own message.
pub fn check(sql: &str) -> Result<(), ShapeError> {
    check_with(sql, MAX_CHAIN, MAX_STATEMENTS)
}

fn check_with(sql: &str, max_chain: usize, max_statements: usize) -> Result<(), ShapeError> {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return Ok(());
    };
    let mut statements = 0usize;
    let mut chain = 0usize;
    let mut open = false;
    let mut after_operand = false;
    for token in &tokens {
        match token {
            Token::Whitespace(_) | Token::EOF => continue,
            Token::SemiColon => {
                open = false;
                chain = 0;
                after_operand = false;
                continue;
            }
            _ => {}
        }
        if !open {
            open = true;
            statements += 1;
            if statements > max_statements {
                return Err(ShapeError::TooManyStatements {
                    limit: max_statements,
                });
            }
        }
        if links(token, after_operand) {
            chain += 1;
            if chain > max_chain {
                return Err(ShapeError::ChainTooLong {
                    statement: statements,
                    limit: max_chain,
                });
            }
        }
        after_operand = ends_operand(token);
    }
    Ok(())
}

/// Whether a token joins two operands into one tree node. Operator symbols count only after
/// an operand (so a sign does not); operator keywords always count.
fn links(token: &Token, after_operand: bool) -> bool {
    match token {
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::XOR
                | Keyword::UNION
                | Keyword::INTERSECT
                | Keyword::EXCEPT
                | Keyword::MINUS
                | Keyword::IS
                | Keyword::NOT
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::BETWEEN
                | Keyword::IN
                | Keyword::COLLATE
                | Keyword::AT
                | Keyword::OVERLAPS
                | Keyword::ANY
                | Keyword::ALL
                | Keyword::SOME
        ),
        Token::Comma
        | Token::LParen
        | Token::RParen
        | Token::Period
        | Token::SemiColon
        | Token::Whitespace(_)
        | Token::EOF
        | Token::Placeholder(_)
        | Token::Number(..)
        | Token::Char(_)
        | Token::LBrace
        | Token::RBrace => false,
        t if is_literal(t) => false,
        // `x[1][2]` and `x::a::b` chain like binary operators.
        Token::LBracket | Token::DoubleColon => after_operand,
        _ => after_operand,
    }
}

/// Whether a token can end an operand, so that an operator symbol after it is binary.
fn ends_operand(token: &Token) -> bool {
    match token {
        Token::Word(w) => !matches!(
            w.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::NOT
                | Keyword::SELECT
                | Keyword::WHERE
                | Keyword::ON
                | Keyword::WHEN
                | Keyword::THEN
                | Keyword::ELSE
                | Keyword::VALUES
                | Keyword::RETURN
                | Keyword::HAVING
                | Keyword::SET
                | Keyword::BY
        ),
        Token::Number(..) | Token::RParen | Token::RBracket | Token::Placeholder(_) => true,
        t => is_literal(t),
    }
}

fn is_literal(token: &Token) -> bool {
    matches!(
        token,
        Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(op: &str, n: usize) -> String {
        let mut s = String::from("SELECT 1 WHERE a = 1");
        for i in 0..n {
            s.push_str(&format!(" {op} a = {i}"));
        }
        s
    }

    #[test]
    fn chains_are_counted_per_statement() {
        // `a = 1` and three times `OR a = i`: 7 links.
        assert!(check_with(&chain("OR", 3), 8, 10).is_ok());
        assert_eq!(
            check_with(&chain("OR", 4), 8, 10),
            Err(ShapeError::ChainTooLong {
                statement: 1,
                limit: 8
            })
        );
        let two = format!("{}; {}", chain("OR", 3), chain("AND", 3));
        assert!(check_with(&two, 8, 10).is_ok());
        assert_eq!(
            check_with(&format!("SELECT 1; {}", chain("OR", 9)), 8, 10),
            Err(ShapeError::ChainTooLong {
                statement: 2,
                limit: 8
            })
        );
    }

    #[test]
    fn set_operations_concatenation_casts_and_subscripts_count() {
        let unions = ["SELECT 1"; 10].join(" UNION ");
        assert!(check_with(&unions, 8, 10).is_err());
        let concat = format!("SELECT {}", ["'a'"; 10].join(" || "));
        assert!(check_with(&concat, 8, 10).is_err());
        let casts = format!("SELECT x{}", "::text".repeat(10));
        assert!(check_with(&casts, 8, 10).is_err());
        let subscripts = format!("SELECT x{}", "[1]".repeat(10));
        assert!(check_with(&subscripts, 8, 10).is_err());
    }

    #[test]
    fn signs_and_long_flat_lists_do_not_count() {
        let values: Vec<String> = (0..50).map(|i| format!("(-{i}, -1.5, 'x')")).collect();
        let insert = format!("INSERT INTO t VALUES {}", values.join(", "));
        assert!(check_with(&insert, 8, 10).is_ok());
        let in_list: Vec<String> = (0..50).map(|i| format!("-{i}")).collect();
        let select = format!("SELECT * FROM t WHERE id IN ({})", in_list.join(", "));
        assert!(check_with(&select, 8, 10).is_ok());
    }

    #[test]
    fn statements_are_counted() {
        assert!(check_with(&"SELECT 1;".repeat(10), 8, 10).is_ok());
        assert_eq!(
            check_with(&"SELECT 1;".repeat(11), 8, 10),
            Err(ShapeError::TooManyStatements { limit: 10 })
        );
        // Empty statements are not statements.
        assert!(check_with(";;;;;;;;;;;;;SELECT 1;;;;", 8, 1).is_ok());
    }

    /// The deepest statements the limit lets through are analysed, cloned and dropped on a
    /// session worker's stack; one link more is refused before parsing.
    #[test]
    fn the_deepest_admitted_statements_are_analysed_on_a_session_stack() {
        use crate::policy::analyze::{analyze, Analysis};
        let at_limit = [
            // `a = 0` then `OR a = i`: 1 + 2 per OR.
            chain("OR", (MAX_CHAIN - 1) / 2),
            format!("SELECT {}", vec!["'a'"; MAX_CHAIN + 1].join(" || ")),
            vec!["SELECT 1"; MAX_CHAIN / 2 + 1].join(" UNION ALL "),
            format!("SELECT x{}", "::text".repeat(MAX_CHAIN)),
        ];
        let handle = std::thread::Builder::new()
            .stack_size(crate::workers::SESSION_STACK_BYTES)
            .spawn(move || {
                for sql in &at_limit {
                    let analysis = analyze(sql);
                    assert!(
                        matches!(&analysis, Analysis::Statements(s) if s.len() == 1),
                        "{}: {analysis:?}",
                        &sql[..40]
                    );
                    let copy = analysis.clone();
                    drop(analysis);
                    drop(copy);
                    let over = format!("{sql} OR true OR true");
                    assert!(
                        matches!(analyze(&over), Analysis::Unanalyzable { reason, .. } if reason.contains("expression-depth:")),
                        "{}",
                        &sql[..40]
                    );
                }
            })
            .expect("thread");
        handle.join().expect("analysis on a session stack");
    }

    #[test]
    fn too_many_statements_are_refused_before_parsing() {
        use crate::policy::analyze::{analyze, Analysis};
        let many = "SELECT 1;".repeat(MAX_STATEMENTS + 1);
        assert!(
            matches!(analyze(&many), Analysis::Unanalyzable { reason, .. } if reason.contains("statement-count:"))
        );
    }
}
