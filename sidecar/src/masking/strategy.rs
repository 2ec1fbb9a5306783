//! Masking strategies, applied so the masked value stays valid for the column's type in text
//! and binary result formats; where no valid masked value exists the value becomes NULL, and
//! the caller records that.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How a value is masked (mirrors the API's `MaskingStrategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// A fixed marker.
    Redact,
    /// NULL.
    Null,
    /// Keep a non-identifying part: an e-mail's domain, the last four digits of a number.
    Partial,
    /// Keyed HMAC-SHA-256, hex, so equal inputs give equal outputs.
    Hash,
}

/// The fixed marker of `redact`.
pub const REDACTED: &str = "***";

/// PostgreSQL type OIDs whose values are text on the wire in both formats.
const TEXT_TYPES: &[u32] = &[
    25,   // text
    1043, // varchar
    1042, // bpchar
    19,   // name
    18,   // "char"
];
const JSON: u32 = 114;
const JSONB: u32 = 3802;

/// Whether values of the type are text in both formats (JSON types included).
pub fn is_text_like(type_oid: u32) -> bool {
    TEXT_TYPES.contains(&type_oid) || type_oid == JSON || type_oid == JSONB
}

/// Whether the type is `jsonb` (binary values start with a version byte).
pub fn is_jsonb(type_oid: u32) -> bool {
    type_oid == JSONB
}

/// How strict a strategy is: the strictest of several rules on one column applies.
pub fn strictness(s: Strategy) -> u8 {
    match s {
        Strategy::Partial => 0,
        Strategy::Hash => 1,
        Strategy::Redact => 2,
        Strategy::Null => 3,
    }
}

/// The API name of a strategy.
pub fn name(s: Strategy) -> &'static str {
    match s {
        Strategy::Redact => "redact",
        Strategy::Null => "null",
        Strategy::Partial => "partial",
        Strategy::Hash => "hash",
    }
}

/// The result of masking one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Masked {
    /// Send these bytes as the field value.
    Value(Vec<u8>),
    /// Send NULL. `type_fallback` is true when the strategy asked for a value but the column's
    /// type has no valid masked form (recorded in the audit completion record).
    Null {
        /// NULL because of the type, not the strategy.
        type_fallback: bool,
    },
}

/// The key of the `hash` strategy, with the HMAC state after the key already computed (so
/// each value costs two SHA-256 compressions, not four).
#[derive(Clone)]
pub struct HashKey(Option<Hmac<Sha256>>);

impl HashKey {
    /// A key from its bytes.
    pub fn new(key: &[u8]) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        HashKey(<Hmac<Sha256> as Mac>::new_from_slice(key).ok())
    }
}

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(..)")
    }
}

/// Mask a text value with a strategy.
pub fn mask_text(strategy: Strategy, value: &str, key: &HashKey) -> Option<String> {
    match strategy {
        Strategy::Null => None,
        Strategy::Redact => Some(REDACTED.to_owned()),
        Strategy::Hash => Some(hash(value, key)),
        Strategy::Partial => Some(partial(value)),
    }
}

/// Keyed HMAC-SHA-256 of a value: `h:` and 32 hex characters (the first 128 bits).
pub fn hash(value: &str, key: &HashKey) -> String {
    let mut out = String::with_capacity(34);
    out.push_str("h:");
    if let Some(mac) = &key.0 {
        let mut mac = mac.clone();
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for b in &digest[..16] {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// Keep the domain of an e-mail address, or the last four digits of a number, or the first
/// character of anything else.
pub fn partial(value: &str) -> String {
    if let Some((_, domain)) = value.rsplit_once('@') {
        let mut out = String::with_capacity(REDACTED.len() + 1 + domain.len());
        out.push_str(REDACTED);
        out.push('@');
        out.push_str(domain);
        return out;
    }
    let digits = value.chars().filter(char::is_ascii_digit).count();
    if digits >= 8 {
        let mut keep = 4;
        let mut out: Vec<char> = value
            .chars()
            .rev()
            .map(|c| {
                if c.is_ascii_digit() {
                    if keep > 0 {
                        keep -= 1;
                        c
                    } else {
                        '*'
                    }
                } else {
                    c
                }
            })
            .collect();
        out.reverse();
        return out.into_iter().collect();
    }
    match value.chars().next() {
        Some(first) => format!("{first}{REDACTED}"),
        None => String::new(),
    }
}

/// Mask one field of a DataRow. `raw` is the field as the server sent it; `binary` is the
/// field's format code.
pub fn mask_field(
    strategy: Strategy,
    type_oid: u32,
    binary: bool,
    raw: &[u8],
    key: &HashKey,
) -> Masked {
    if strategy == Strategy::Null {
        return Masked::Null {
            type_fallback: false,
        };
    }
    let text_like = TEXT_TYPES.contains(&type_oid);
    let json_like = type_oid == JSON || type_oid == JSONB;
    if !(text_like || json_like) {
        return Masked::Null {
            type_fallback: true,
        };
    }
    let payload = if type_oid == JSONB && binary {
        raw.get(1..).unwrap_or_default()
    } else {
        raw
    };
    let value = match std::str::from_utf8(payload) {
        Ok(v) => std::borrow::Cow::Borrowed(v),
        Err(_) => String::from_utf8_lossy(payload),
    };
    // Keeping "part" of a whole JSON document has no meaning; redact it instead.
    let strategy = if json_like && strategy == Strategy::Partial {
        Strategy::Redact
    } else {
        strategy
    };
    let Some(masked) = mask_text(strategy, &value, key) else {
        return Masked::Null {
            type_fallback: false,
        };
    };
    let body = if json_like {
        // A masked JSON document is a JSON string, whatever the original held.
        serde_json_string(&masked)
    } else {
        masked
    };
    if type_oid == JSONB && binary {
        let mut out = Vec::with_capacity(body.len() + 1);
        out.push(1); // jsonb binary format version
        out.extend_from_slice(body.as_bytes());
        return Masked::Value(out);
    }
    Masked::Value(body.into_bytes())
}

fn serde_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_keeps_domain_or_last_four_digits() {
        assert_eq!(partial("olga.popescu1@example.com"), "***@example.com");
        assert_eq!(partial("4111 1111 1111 1111"), "**** **** **** 1111");
        assert_eq!(partial("277-72-1456"), "***-**-1456");
        assert_eq!(partial("Olga"), "O***");
        assert_eq!(partial(""), "");
    }

    #[test]
    fn hash_is_keyed_and_stable() {
        let (k1, k2) = (HashKey::new(b"k1"), HashKey::new(b"k2"));
        let a = hash("x@example.com", &k1);
        assert_eq!(a, hash("x@example.com", &k1));
        assert_ne!(a, hash("x@example.com", &k2));
        assert_ne!(a, hash("y@example.com", &k1));
        assert_eq!(a.len(), 34);
    }

    #[test]
    fn fields_stay_valid_for_their_type() {
        assert_eq!(
            mask_field(Strategy::Redact, 25, false, b"secret", &HashKey::new(b"k")),
            Masked::Value(b"***".to_vec())
        );
        assert_eq!(
            mask_field(
                Strategy::Redact,
                23,
                true,
                &[0, 0, 0, 1],
                &HashKey::new(b"k")
            ),
            Masked::Null {
                type_fallback: true
            }
        );
        assert_eq!(
            mask_field(
                Strategy::Partial,
                114,
                false,
                br#"{"email":"a@b.c"}"#,
                &HashKey::new(b"k")
            ),
            Masked::Value(br#""***""#.to_vec())
        );
        let Masked::Value(v) =
            mask_field(Strategy::Redact, 3802, true, b"\x01{}", &HashKey::new(b"k"))
        else {
            panic!("jsonb masks to a value");
        };
        assert_eq!(v, b"\x01\"***\"");
        assert_eq!(
            mask_field(Strategy::Null, 25, false, b"x", &HashKey::new(b"k")),
            Masked::Null {
                type_fallback: false
            }
        );
    }
}
