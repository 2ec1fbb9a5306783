//! Value detectors: find personal data in text whatever column it arrives through.
//!
//! Each candidate found by a pattern is confirmed the way the data itself is checked (a Luhn
//! check digit for payment cards, the ISO 13616 checksum and per-country length for IBANs), so
//! order numbers and other digit runs are not masked by accident. A pattern finds a candidate
//! run (digit groups, or a country code and check digits with the groups that follow); the
//! value is then the longest valid part of the run from each possible start, so text that
//! follows or precedes a value in the same run (the next column, a BIC, a year) does not
//! hide it.
//!
//! Detectors read text as a reader sees it, not as it is encoded: text that is not plain
//! ASCII is first normalised ([`normalise`]: Unicode compatibility forms, so fullwidth digits
//! and a fullwidth `@` read as their ASCII forms; every space separator, the no-break space
//! among them, as a space; invisible format characters dropped), and what is found is mapped
//! back to the original text. IBANs are found in either case, card numbers grouped with
//! spaces, dashes or dots, e-mail addresses with internationalised names and address
//! literals.

use std::ops::Range;

use unicode_normalization::UnicodeNormalization;

use regex::Regex;

/// What a detector looks for.
#[derive(Clone, Debug)]
pub enum DetectorKind {
    /// E-mail addresses.
    Email,
    /// Payment card numbers (13 to 19 digits, spaces, dashes or dots allowed, Luhn-valid).
    PaymentCard,
    /// IBANs (checksum and country length verified).
    Iban,
    /// Telephone numbers written with a leading `+` or `00` country code.
    Phone,
    /// A user-defined pattern.
    Regex(Regex),
}

/// The compiled patterns of the built-in detectors.
pub struct Patterns {
    email: Regex,
    card: Regex,
    iban: Regex,
    phone: Regex,
}

/// Why a user-defined pattern was refused.
#[derive(Debug, thiserror::Error)]
#[error("pattern {pattern:?} is not a valid regular expression: {source}")]
pub struct PatternError {
    pattern: String,
    source: regex::Error,
}

/// Compile a user-defined detector pattern (size-limited, so a policy cannot make the sidecar
/// build a huge automaton).
pub fn compile_pattern(pattern: &str) -> Result<Regex, PatternError> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .map_err(|source| PatternError {
            pattern: pattern.to_owned(),
            source,
        })
}

impl Patterns {
    /// Compile the built-in patterns (once, when a configuration is loaded).
    pub fn new() -> Result<Self, regex::Error> {
        Ok(Self {
            email: Regex::new(
                r"(?i)[\p{L}\p{N}._%+-]+@(?:[\p{L}\p{N}-]+(?:\.[\p{L}\p{N}-]+)*\.\p{L}{2,}|\[[0-9a-z.:]+\])",
            )?,
            card: Regex::new(r"[0-9](?:[ .-]?[0-9])*")?,
            iban: Regex::new(r"(?i)\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9])+")?,
            phone: Regex::new(r"(?:\+|\b00)\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){1,6}")?,
        })
    }

    /// The pattern a detector's candidates are found with (its checks come after).
    pub fn pattern<'a>(&'a self, kind: &'a DetectorKind) -> &'a str {
        match kind {
            DetectorKind::Email => self.email.as_str(),
            DetectorKind::PaymentCard => self.card.as_str(),
            DetectorKind::Iban => self.iban.as_str(),
            DetectorKind::Phone => self.phone.as_str(),
            DetectorKind::Regex(re) => re.as_str(),
        }
    }

    /// Byte ranges of `text` the detector finds, in order, not overlapping; text that is not
    /// plain ASCII is read [`normalise`]d.
    pub fn find(&self, kind: &DetectorKind, text: &str) -> Vec<Range<usize>> {
        if text.is_ascii() {
            return self.find_normalised(kind, text);
        }
        let (normal, origin) = normalise(text);
        self.find_normalised(kind, &normal)
            .into_iter()
            .filter_map(|r| {
                let start = *origin.get(r.start)?;
                let last = *origin.get(r.end.checked_sub(1)?)?;
                let end = last + text[last..].chars().next().map_or(1, char::len_utf8);
                Some(start..end)
            })
            .collect()
    }

    fn find_normalised(&self, kind: &DetectorKind, text: &str) -> Vec<Range<usize>> {
        if !may_match(kind, text) {
            return Vec::new();
        }
        match kind {
            DetectorKind::Email => self.email.find_iter(text).map(|m| m.range()).collect(),
            DetectorKind::PaymentCard => self
                .card
                .find_iter(text)
                .flat_map(|m| {
                    let at = m.start();
                    cards_in(m.as_str())
                        .into_iter()
                        .map(move |r| at + r.start..at + r.end)
                })
                .collect(),
            DetectorKind::Iban => self
                .iban
                .find_iter(text)
                .flat_map(|m| {
                    let at = m.start();
                    ibans_in(m.as_str())
                        .into_iter()
                        .map(move |r| at + r.start..at + r.end)
                })
                .collect(),
            DetectorKind::Phone => self
                .phone
                .find_iter(text)
                .filter(|m| m.as_str().chars().filter(char::is_ascii_digit).count() >= 8)
                .map(|m| m.range())
                .collect(),
            DetectorKind::Regex(re) => re.find_iter(text).map(|m| m.range()).collect(),
        }
    }
}

/// `text` as the detectors read it, with, for each byte of the result, the byte offset in
/// `text` of the character it comes from: each character in its compatibility form (NFKC:
/// fullwidth and other presentation forms read as the plain character), every space
/// separator (general category Zs, the no-break space among them) as a space, invisible
/// format characters (zero-width spaces and joiners, byte-order marks, soft hyphens) left
/// out.
pub fn normalise(text: &str) -> (String, Vec<usize>) {
    let mut out = String::with_capacity(text.len());
    let mut origin = Vec::with_capacity(text.len());
    for (at, c) in text.char_indices() {
        if c.is_ascii() {
            out.push(c);
            origin.push(at);
            continue;
        }
        if is_space_separator(c) {
            out.push(' ');
            origin.push(at);
            continue;
        }
        if is_invisible_format(c) {
            continue;
        }
        for n in std::iter::once(c).nfkc() {
            let n = if is_space_separator(n) { ' ' } else { n };
            out.push(n);
            origin.extend(std::iter::repeat_n(at, n.len_utf8()));
        }
    }
    (out, origin)
}

/// Space separators (general category Zs).
fn is_space_separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}' | '\u{202f}' | '\u{205f}' | '\u{3000}'
    )
}

/// Format characters that draw nothing between two characters of a value.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{ad}' | '\u{180e}' | '\u{200b}'..='\u{200d}' | '\u{2060}'..='\u{2064}' | '\u{feff}'
    )
}

/// A cheap necessary condition for a built-in detector to find anything: most values (ids,
/// names, dates, prose) fail it in one pass over their bytes, without running the pattern.
fn may_match(kind: &DetectorKind, text: &str) -> bool {
    let bytes = text.as_bytes();
    match kind {
        DetectorKind::Email => bytes.contains(&b'@'),
        DetectorKind::PaymentCard => bytes.iter().filter(|b| b.is_ascii_digit()).count() >= 13,
        DetectorKind::Iban => {
            // Two letters and two check digits open every IBAN.
            bytes.len() >= 15
                && bytes.windows(4).any(|w| {
                    w[0].is_ascii_alphabetic()
                        && w[1].is_ascii_alphabetic()
                        && w[2].is_ascii_digit()
                        && w[3].is_ascii_digit()
                })
        }
        DetectorKind::Phone => {
            (bytes.contains(&b'+') || bytes.windows(2).any(|w| w == b"00"))
                && bytes.iter().filter(|b| b.is_ascii_digit()).count() >= 8
        }
        DetectorKind::Regex(_) => true,
    }
}

/// The card numbers in a run of digit groups: from each group start, the longest run of whole
/// groups (13 to 19 digits, not preceded by a digit) that is Luhn-valid; a digit run with no
/// separators is only a card number whole.
fn cards_in(run: &str) -> Vec<Range<usize>> {
    let b = run.as_bytes();
    if b.iter().filter(|c| c.is_ascii_digit()).count() < 13 {
        return Vec::new();
    }
    let starts: Vec<usize> = (0..b.len())
        .filter(|&i| b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit()))
        .collect();
    let ends: Vec<usize> = (1..=b.len())
        .filter(|&i| b[i - 1].is_ascii_digit() && (i == b.len() || !b[i].is_ascii_digit()))
        .collect();
    let mut out = Vec::new();
    let mut from = 0;
    for &start in &starts {
        if start < from {
            continue;
        }
        let found = ends
            .iter()
            .rev()
            .filter(|&&end| end > start && end <= start + 38)
            .find(|&&end| is_card_number(&run[start..end]));
        if let Some(&end) = found {
            out.push(start..end);
            from = end;
        }
    }
    out
}

/// The IBANs in a candidate run: from each start (two letters, in either case, and two digits
/// after a space or at the run's start), the longest prefix that is a valid IBAN.
fn ibans_in(run: &str) -> Vec<Range<usize>> {
    let b = run.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    for start in 0..b.len() {
        if start < from
            || !(start == 0 || b[start - 1] == b' ')
            || b.len() < start + 4
            || !(b[start].is_ascii_alphabetic()
                && b[start + 1].is_ascii_alphabetic()
                && b[start + 2].is_ascii_digit()
                && b[start + 3].is_ascii_digit())
        {
            continue;
        }
        let found = (start + 15..=b.len().min(start + 42))
            .rev()
            .filter(|&end| b[end - 1] != b' ')
            .find(|&end| is_iban(&run[start..end]));
        if let Some(end) = found {
            out.push(start..end);
            from = end;
        }
    }
    out
}

/// Whether `s` (digits with optional spaces, dashes or dots) is a Luhn-valid card number.
pub fn is_card_number(s: &str) -> bool {
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    (13..=19).contains(&digits.len()) && luhn::valid(&digits)
}

/// Whether `s` is a valid IBAN (country length and ISO 13616 mod-97 checksum).
pub fn is_iban(s: &str) -> bool {
    let compact: String = s
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    compact.parse::<iban::Iban>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(kind: DetectorKind, text: &str) -> Vec<String> {
        let p = Patterns::new().expect("built-in patterns compile");
        p.find(&kind, text)
            .into_iter()
            .map(|r| text[r].to_owned())
            .collect()
    }

    #[test]
    fn payment_cards_true_and_false_positives() {
        // Valid test numbers of the major schemes (Luhn-valid).
        for card in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "378282246310005",
            "6011111111111117",
        ] {
            assert_eq!(
                found(
                    DetectorKind::PaymentCard,
                    &format!("paid with {card} today")
                ),
                vec![card],
                "{card}"
            );
        }
        // Luhn-invalid, too short, too long, order ids.
        for not_card in [
            "4111111111111112",
            "1234 5678 9012 3456",
            "411111111111",
            "order 20261123000001",
            "12345678901234567890",
        ] {
            assert!(
                found(DetectorKind::PaymentCard, not_card).is_empty(),
                "{not_card}"
            );
        }
    }

    #[test]
    fn ibans_true_and_false_positives() {
        for iban in [
            "DE89370400440532013000",
            "GB82WEST12345698765432",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
            "DE89 3704 0044 0532 0130 00",
        ] {
            assert_eq!(
                found(DetectorKind::Iban, &format!("iban {iban}.")),
                vec![iban],
                "{iban}"
            );
        }
        // Text after the value, even text an IBAN could continue with, does not hide it.
        for (text, iban) in [
            (
                "DE89370400440532013000 BIC COBADEFFXXX",
                "DE89370400440532013000",
            ),
            (
                "DE89 3704 0044 0532 0130 00 AB12 x",
                "DE89 3704 0044 0532 0130 00",
            ),
            ("iban=GB82WEST12345698765432 2026", "GB82WEST12345698765432"),
        ] {
            assert_eq!(found(DetectorKind::Iban, text), vec![iban], "{text}");
        }
        assert_eq!(
            found(
                DetectorKind::PaymentCard,
                "card 4111 1111 1111 1111 12 2026"
            ),
            vec!["4111 1111 1111 1111"]
        );
        assert_eq!(
            found(DetectorKind::PaymentCard, "qty 12 4111111111111111 7"),
            vec!["4111111111111111"]
        );
        for not_iban in [
            "DE89370400440532013001",
            "GB82WEST1234569876543",
            "XX89370400440532013000",
            "DE12",
        ] {
            assert!(found(DetectorKind::Iban, not_iban).is_empty(), "{not_iban}");
        }
    }

    #[test]
    fn emails_and_phones() {
        assert_eq!(
            found(
                DetectorKind::Email,
                "mail Olga.Popescu1@mail.example.org now"
            ),
            vec!["Olga.Popescu1@mail.example.org"]
        );
        assert!(found(DetectorKind::Email, "no at sign here, or @ alone").is_empty());
        assert_eq!(
            found(DetectorKind::Phone, "call +49 876 5566038."),
            vec!["+49 876 5566038"]
        );
        assert_eq!(
            found(DetectorKind::Phone, "call 0033 1 42 68 53 00"),
            vec!["0033 1 42 68 53 00"]
        );
        assert!(found(DetectorKind::Phone, "version 1.2.3, +12").is_empty());
    }

    #[test]
    fn user_patterns_are_size_limited() {
        let re = compile_pattern(r"ORD-\d{6}").expect("compiles");
        assert_eq!(
            found(DetectorKind::Regex(re), "ticket ORD-123456"),
            vec!["ORD-123456"]
        );
        assert!(compile_pattern("(unclosed").is_err());
        assert!(compile_pattern(r"\w{1000}{1000}").is_err());
    }
}
