//! The expansion of one shell word, as the shell performs it before a command runs: brace
//! expansion (bash), quote removal, ANSI-C `$'..'` decoding; parameter, arithmetic and
//! command substitution, `~` and pathname globs make the word unknown (command substitutions
//! are analysed as the scripts they are).

use brush_parser::word::{
    self, BraceExpressionMember, BraceExpressionOrText, WordPiece, WordPieceWithSource,
};
use brush_parser::ParserOptions;

use super::argv::Context;
use super::tables::Dialect;
use super::{script, Analysis, Word};

/// Most words one word may become by brace expansion.
const MAX_FIELDS: usize = 256;

/// Expand a word into the words it becomes.
pub(super) fn expand(
    raw: &str,
    dialect: Dialect,
    ctx: &mut Context,
    out: &mut Analysis,
) -> Vec<Word> {
    let options = ParserOptions::default();
    if dialect != Dialect::Bash && (raw.contains("$'") || raw.contains("$\"")) {
        out.unproven(
            raw,
            "$'..' and $\"..\" quoting is read differently by bash and POSIX shells",
        );
    }
    let braces = match word::parse_brace_expansions(raw, &options) {
        Ok(Some(pieces))
            if pieces
                .iter()
                .any(|p| matches!(p, BraceExpressionOrText::Expr(_))) =>
        {
            Some(pieces)
        }
        Ok(_) => None,
        Err(e) => {
            out.unproven(raw, format!("the word does not parse: {e}"));
            return vec![Word::Unknown(raw.to_owned())];
        }
    };
    let texts = match braces {
        Some(pieces) => {
            let expanded = brace_texts(&pieces);
            match dialect {
                Dialect::Bash => {}
                Dialect::Posix | Dialect::Busybox => {
                    // These shells keep braces as text.
                    return vec![one(raw, dialect, ctx, out)];
                }
                Dialect::Unknown | Dialect::Other => {
                    out.unproven(
                        raw,
                        "brace expansion happens in bash but not in POSIX shells",
                    );
                }
            }
            match expanded {
                Some(texts) => texts,
                None => {
                    out.unproven(raw, "brace expansion makes too many words");
                    return vec![Word::Unknown(raw.to_owned())];
                }
            }
        }
        None => vec![raw.to_owned()],
    };
    texts.iter().map(|t| one(t, dialect, ctx, out)).collect()
}

/// The texts of a brace-expanded word, or `None` past [`MAX_FIELDS`].
fn brace_texts(pieces: &[BraceExpressionOrText]) -> Option<Vec<String>> {
    let mut acc = vec![String::new()];
    for p in pieces {
        let alternatives = match p {
            BraceExpressionOrText::Text(t) => vec![t.clone()],
            BraceExpressionOrText::Expr(members) => {
                let mut all = Vec::new();
                for m in members {
                    all.extend(member_texts(m)?);
                }
                all
            }
        };
        let mut next = Vec::new();
        for a in &acc {
            for b in &alternatives {
                next.push(format!("{a}{b}"));
                if next.len() > MAX_FIELDS {
                    return None;
                }
            }
        }
        acc = next;
    }
    Some(acc)
}

fn member_texts(m: &BraceExpressionMember) -> Option<Vec<String>> {
    match m {
        BraceExpressionMember::Child(pieces) => brace_texts(pieces),
        BraceExpressionMember::NumberSequence {
            start,
            end,
            increment,
        } => {
            let step = increment.unsigned_abs().max(1);
            let count = start.abs_diff(*end) / step + 1;
            if count > MAX_FIELDS as u64 {
                return None;
            }
            let mut v = Vec::new();
            let mut n = *start;
            for _ in 0..count {
                v.push(n.to_string());
                n = if start <= end {
                    n.saturating_add(step as i64)
                } else {
                    n.saturating_sub(step as i64)
                };
            }
            Some(v)
        }
        BraceExpressionMember::CharSequence {
            start,
            end,
            increment,
        } => {
            let (a, b) = (*start as u32, *end as u32);
            let step = u32::try_from(increment.unsigned_abs().max(1)).unwrap_or(u32::MAX);
            let count = a.abs_diff(b) / step + 1;
            if count as usize > MAX_FIELDS {
                return None;
            }
            let mut v = Vec::new();
            let mut n = a;
            for _ in 0..count {
                v.push(char::from_u32(n).map(String::from).unwrap_or_default());
                n = if a <= b {
                    n.saturating_add(step)
                } else {
                    n.saturating_sub(step)
                };
            }
            Some(v)
        }
    }
}

/// Expand one word (after brace expansion).
fn one(raw: &str, dialect: Dialect, ctx: &mut Context, out: &mut Analysis) -> Word {
    if !ctx.spend(out) {
        return Word::Unknown(raw.to_owned());
    }
    let options = ParserOptions::default();
    let pieces = match word::parse(raw, &options) {
        Ok(p) => p,
        Err(e) => {
            out.unproven(raw, format!("the word does not parse: {e}"));
            return Word::Unknown(raw.to_owned());
        }
    };
    let mut value = String::new();
    let mut known = true;
    for p in &pieces {
        known &= piece(p, raw, false, dialect, &mut value, ctx, out);
    }
    if known {
        Word::Known(value)
    } else {
        Word::Unknown(raw.to_owned())
    }
}

/// Whether unquoted text would be a pathname pattern.
fn is_glob(text: &str) -> bool {
    text.contains('*')
        || text.contains('?')
        || text.find('[').is_some_and(|at| text[at..].contains(']'))
        || ["+(", "@(", "!("].iter().any(|p| text.contains(p))
}

/// Append a piece's value; returns whether it is known.
fn piece(
    p: &WordPieceWithSource,
    raw: &str,
    quoted: bool,
    dialect: Dialect,
    value: &mut String,
    ctx: &mut Context,
    out: &mut Analysis,
) -> bool {
    let source = raw.get(p.start_index..p.end_index).unwrap_or(raw);
    match &p.piece {
        WordPiece::Text(t) => {
            value.push_str(t);
            quoted || !is_glob(t)
        }
        WordPiece::SingleQuotedText(t) => {
            value.push_str(t);
            true
        }
        WordPiece::AnsiCQuotedText(t) => {
            value.push_str(&ansi_c(t));
            true
        }
        WordPiece::EscapeSequence(e) => {
            let c = e.strip_prefix('\\').unwrap_or(e);
            if quoted && !matches!(c, "$" | "`" | "\"" | "\\" | "\n") {
                value.push_str(e);
            } else if c != "\n" {
                value.push_str(c);
            }
            true
        }
        WordPiece::DoubleQuotedSequence(inner) => {
            let mut known = true;
            for q in inner {
                known &= piece(q, raw, true, dialect, value, ctx, out);
            }
            known
        }
        // `$"..."` is translated through the locale's message catalog when the command runs.
        WordPiece::GettextDoubleQuotedSequence(inner) => {
            for q in inner {
                piece(q, raw, true, dialect, value, ctx, out);
            }
            false
        }
        WordPiece::TildeExpansion(_) => {
            value.push_str(source);
            false
        }
        WordPiece::ParameterExpansion(_) => {
            if source.contains("$(")
                || source.contains('`')
                || source.contains("<(")
                || source.contains(">(")
            {
                out.unproven(source, "a parameter expansion runs a command substitution");
            }
            if source.contains('[') {
                out.unproven(
                    source,
                    "an array subscript is evaluated as arithmetic, which can run commands",
                );
            }
            value.push_str(source);
            false
        }
        WordPiece::ArithmeticExpression(e) => {
            arithmetic(&e.value, out);
            value.push_str(source);
            false
        }
        WordPiece::CommandSubstitution(code) => {
            script::script(code, dialect, ctx, out);
            value.push_str(source);
            false
        }
        WordPiece::BackquotedCommandSubstitution(code) => {
            script::script(&unescape_backquoted(code), dialect, ctx, out);
            value.push_str(source);
            false
        }
    }
}

/// Arithmetic evaluates variable names as expressions (and array subscripts in them as
/// commands): only plain numbers and operators are proven.
pub(super) fn arithmetic(expr: &str, out: &mut Analysis) {
    if !expr
        .chars()
        .all(|c| c.is_ascii_digit() || c.is_ascii_whitespace() || "+-*/%()<>=!&|^~?:,".contains(c))
    {
        out.unproven(
            expr,
            "arithmetic evaluates variable contents as expressions, which can run commands",
        );
    }
}

/// The text of a backquoted substitution as the shell reads it: `\$`, `` \` `` and `\\`
/// lose their backslash.
fn unescape_backquoted(code: &str) -> String {
    let mut out = String::new();
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(&n) = chars.peek() {
                if matches!(n, '$' | '`' | '\\') {
                    out.push(n);
                    chars.next();
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

/// Decode the text of an ANSI-C quoted string (`$'...'`) as bash does. A NUL ends it.
pub fn ansi_c(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    let take = |chars: &mut std::iter::Peekable<std::str::Chars>, max: usize, radix: u32| {
        let mut s = String::new();
        while s.len() < max {
            match chars.peek() {
                Some(c) if c.is_digit(radix) => {
                    s.push(*c);
                    chars.next();
                }
                _ => break,
            }
        }
        s
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(e) = chars.next() else {
            out.push('\\');
            break;
        };
        let decoded: Option<char> = match e {
            'a' => Some('\x07'),
            'b' => Some('\x08'),
            'e' | 'E' => Some('\x1b'),
            'f' => Some('\x0c'),
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            'v' => Some('\x0b'),
            '\\' => Some('\\'),
            '\'' => Some('\''),
            '"' => Some('"'),
            '?' => Some('?'),
            '0'..='7' => {
                let mut digits = e.to_string();
                digits.push_str(&take(&mut chars, 2, 8));
                u32::from_str_radix(&digits, 8)
                    .ok()
                    .map(|n| char::from_u32(n & 0xff).unwrap_or('\0'))
            }
            'x' => {
                let digits = take(&mut chars, 2, 16);
                if digits.is_empty() {
                    out.push_str("\\x");
                    continue;
                }
                u32::from_str_radix(&digits, 16)
                    .ok()
                    .and_then(char::from_u32)
            }
            'u' | 'U' => {
                let digits = take(&mut chars, if e == 'u' { 4 } else { 8 }, 16);
                if digits.is_empty() {
                    out.push('\\');
                    out.push(e);
                    continue;
                }
                u32::from_str_radix(&digits, 16)
                    .ok()
                    .and_then(char::from_u32)
            }
            'c' => chars
                .next()
                .map(|x| char::from_u32((x as u32) & 0x1f).unwrap_or('\0')),
            other => {
                out.push('\\');
                Some(other)
            }
        };
        match decoded {
            Some('\0') => break,
            Some(d) => out.push(d),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_c_escapes_are_decoded() {
        assert_eq!(ansi_c(r"\x72m"), "rm");
        assert_eq!(ansi_c(r"\162\155"), "rm");
        assert_eq!(ansi_c(r"\u0072m"), "rm");
        assert_eq!(ansi_c(r"r\x00m"), "r");
        assert_eq!(ansi_c(r"a\tb\q"), "a\tb\\q");
    }
}
