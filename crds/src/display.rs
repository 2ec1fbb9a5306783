//! Safe display of text that others wrote (statements, commands, justifications, reasons):
//! control characters, terminal escape sequences, bidi overrides and invisible characters are
//! written as visible escapes, so what a terminal or chat shows is what the text holds.

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Combining marks shown on one base character; further marks are escaped (a stack of marks
/// can cover the characters around it).
const MARKS_PER_BASE: usize = 3;

/// Whether `c` is shown as an escape wherever it stands, by its Unicode general category
/// (table of the `unicode-properties` crate): controls (Cc: C0/C1 and DEL, where terminal
/// escape sequences start), format characters (Cf: zero-width characters, bidi embeddings,
/// overrides, isolates and marks, tag characters, soft hyphen, musical format controls),
/// private-use (Co) and unassigned (Cn) code points, line and paragraph separators (Zl, Zp),
/// and every space separator other than the ASCII space (Zs). Also the default-ignorable
/// characters outside these categories, which render as nothing: the variation selectors
/// (including the supplement U+E0100..U+E01EF), the combining grapheme joiner, the Mongolian
/// free variation selectors, the Khmer inherent vowels and the Hangul fillers.
pub fn is_hidden(c: char) -> bool {
    match c.general_category() {
        GeneralCategory::Control
        | GeneralCategory::Format
        | GeneralCategory::PrivateUse
        | GeneralCategory::Unassigned
        | GeneralCategory::Surrogate
        | GeneralCategory::LineSeparator
        | GeneralCategory::ParagraphSeparator => true,
        GeneralCategory::SpaceSeparator => c != ' ',
        _ => is_default_ignorable_mark_or_letter(c),
    }
}

/// The default-ignorable code points (Unicode `Default_Ignorable_Code_Point`) that are not
/// in a category [`is_hidden`] escapes as a whole: combining marks and letters that a
/// terminal draws as nothing.
fn is_default_ignorable_mark_or_letter(c: char) -> bool {
    matches!(
        c,
        '\u{034F}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FFA0}'
            | '\u{E0100}'..='\u{E01EF}'
    )
}

fn is_mark(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::NonspacingMark | GeneralCategory::EnclosingMark
    )
}

/// Which characters of `s` are shown as escapes: every [`is_hidden`] character, and every
/// non-spacing or enclosing combining mark that could hide: one that does not follow a
/// visible base character (at the start, after a space, a line feed or an escaped
/// character) or that follows more than a few marks on the same base.
fn hidden_flags(s: &str) -> impl Iterator<Item = (char, bool)> + '_ {
    // Marks on the current base; `None` when there is no visible base to carry a mark.
    let mut marks: Option<usize> = None;
    s.chars().map(move |c| {
        if is_hidden(c) {
            marks = None;
            return (c, true);
        }
        if is_mark(c) {
            return match marks.as_mut() {
                Some(n) if *n < MARKS_PER_BASE => {
                    *n += 1;
                    (c, false)
                }
                _ => (c, true),
            };
        }
        marks = (!c.is_whitespace()).then_some(0);
        (c, false)
    })
}

/// Whether `s` holds no character that [`escape`] escapes (line feeds included).
pub fn is_plain(s: &str) -> bool {
    !hidden_flags(s).any(|(_, hidden)| hidden)
}

/// `s` with every hidden character written as a visible escape (`\n`, `\t`, `\e`, `\u{202E}`),
/// and backslashes doubled so that an escape cannot be faked. With `keep_newlines`, line feeds
/// stay line feeds (multi-line statements stay readable) and only the others are escaped.
pub fn escape(s: &str, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for (c, hidden) in hidden_flags(s) {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' if keep_newlines => out.push('\n'),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{1b}' => out.push_str("\\e"),
            c if hidden => out.push_str(&format!("\\u{{{:04X}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_characters_become_visible() {
        assert_eq!(escape("a\u{1b}[2Kb", false), "a\\e[2Kb");
        assert_eq!(
            escape("x\u{202E}y\u{200B}z", false),
            "x\\u{202E}y\\u{200B}z"
        );
        assert_eq!(escape("a\\u{202E}", false), "a\\\\u{202E}");
        assert_eq!(escape("l1\nl2\r", true), "l1\nl2\\r");
        assert_eq!(escape("l1\nl2", false), "l1\\nl2");
        assert_eq!(escape("\u{9b}31m", false), "\\u{009B}31m");
        assert!(is_plain("UPDATE customers SET city = 'Gent'"));
        assert!(!is_plain("a\u{2066}b"));
        // By category, not by a list: the variation selectors supplement (Mn, default
        // ignorable), musical format controls (Cf), private use, unassigned, other spaces.
        assert_eq!(
            escape("Gh\u{E0100}ent\u{1D173}", false),
            "Gh\\u{E0100}ent\\u{1D173}"
        );
        assert_eq!(
            escape("a\u{F8FF}\u{0378}\u{00A0}b", false),
            "a\\u{F8FF}\\u{0378}\\u{00A0}b"
        );
        // A combining accent on a letter stays; one on nothing, or a stack, is escaped.
        assert_eq!(escape("Ge\u{0301}nt", false), "Ge\u{0301}nt");
        assert!(is_plain("Ge\u{0301}nt"));
        assert_eq!(escape(" \u{0301}", false), " \\u{0301}");
        assert_eq!(
            escape("e\u{0301}\u{0301}\u{0301}\u{0301}", false),
            "e\u{0301}\u{0301}\u{0301}\\u{0301}"
        );
    }
}
