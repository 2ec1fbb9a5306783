//! Safe display of text that others wrote (statements, commands, justifications, reasons):
//! control characters, terminal escape sequences, bidi overrides and invisible characters are
//! written as visible escapes, so what a terminal or chat shows is what the text holds.

/// Whether `c` is shown as an escape: C0/C1 controls and DEL (terminal escape sequences start
/// with one), bidi embeddings, overrides, isolates and marks, zero-width and other invisible
/// formatting characters, line and paragraph separators, and the Unicode tag characters.
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// Whether `s` holds no character that [`is_hidden`] escapes.
pub fn is_plain(s: &str) -> bool {
    !s.chars().any(is_hidden)
}

/// `s` with every hidden character written as a visible escape (`\n`, `\t`, `\e`, `\u{202E}`),
/// and backslashes doubled so that an escape cannot be faked. With `keep_newlines`, line feeds
/// stay line feeds (multi-line statements stay readable) and only the others are escaped.
pub fn escape(s: &str, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' if keep_newlines => out.push('\n'),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{1b}' => out.push_str("\\e"),
            c if is_hidden(c) => out.push_str(&format!("\\u{{{:04X}}}", u32::from(c))),
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
    }
}
