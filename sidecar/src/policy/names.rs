//! Names as the server resolves them.
//!
//! Every comparison of a table or function name with a policy goes through this module:
//! Unicode-escaped identifiers (`U&"..."`, with an optional `UESCAPE`) are decoded before the
//! statement is parsed, unquoted identifiers are folded to lower case the way PostgreSQL
//! folds them (ASCII letters only), and an unqualified name is compared with every schema
//! the session's `search_path` could make it resolve to ([`SearchPath`]), `"$user"` standing
//! for every role the session may have become (`SET ROLE`, `SET SESSION AUTHORIZATION`,
//! their `LOCAL` forms, `set_config('role', ...)`).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use sqlparser::ast::{Expr, Ident, ObjectName, ObjectNamePart, Value};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};
use thiserror::Error;

/// A statement whose names cannot be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    /// A `U&"..."` identifier with an escape that is not a valid code point.
    #[error("invalid Unicode escape in a U&\"...\" identifier")]
    BadEscape,
    /// A `UESCAPE` clause the decoder does not accept.
    #[error("invalid UESCAPE clause")]
    BadUescape,
    /// The text could not be tokenized.
    #[error("{0}")]
    Tokenize(String),
}

/// Fold an identifier as PostgreSQL does: quoted names are kept, unquoted names have their
/// ASCII letters lower-cased (other characters are kept, as in a UTF-8 database).
pub fn fold(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

/// The folded parts of a name.
pub fn parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => fold(i),
            ObjectNamePart::Function(f) => fold(&f.name),
        })
        .collect()
}

/// A table or function name: its schema when written, and its own name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Qualified {
    /// The schema as written (`None`: resolved through `search_path`).
    pub schema: Option<String>,
    /// The object's name.
    pub name: String,
}

impl Qualified {
    /// The name of an object name (`db.schema.name`, `schema.name` or `name`).
    pub fn of(name: &ObjectName) -> Option<Qualified> {
        let parts = parts(name);
        match parts.as_slice() {
            [] => None,
            [name] => Some(Qualified {
                schema: None,
                name: name.clone(),
            }),
            [.., schema, name] => Some(Qualified {
                schema: Some(schema.clone()),
                name: name.clone(),
            }),
        }
    }

    /// An unqualified name.
    pub fn bare(name: &str) -> Qualified {
        Qualified {
            schema: None,
            name: name.to_owned(),
        }
    }

    /// Whether the name may denote `schema.name` in a session with `path`.
    pub fn may_be(&self, schema: &str, name: &str, path: &SearchPath) -> bool {
        self.name == name
            && match &self.schema {
                Some(s) => s == schema,
                None => path.may_resolve_to(schema),
            }
    }

    /// Whether a call of this name is a call of the built-in function `name` (unqualified,
    /// or qualified with `pg_catalog`).
    pub fn is_builtin(&self, name: &str) -> bool {
        self.name == name && self.schema.as_deref().is_none_or(|s| s == "pg_catalog")
    }
}

impl fmt::Display for Qualified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// How a statement changes the session's `search_path`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathChange {
    /// Set to these schemas (as the setting lists them; `$user` included as written).
    Set(Vec<String>),
    /// Back to the session's default (RESET, `SET ... TO DEFAULT`, DISCARD ALL).
    Default,
    /// Changed to a value the analysis cannot know (a computed `set_config`).
    Unknown,
    /// The current role may have become this one (`SET ROLE`, `SET SESSION
    /// AUTHORIZATION`, their `LOCAL` forms, `set_config('role', ...)`): `"$user"` in the path
    /// may name its schema. `None`: a role the analysis cannot know.
    Role(Option<String>),
}

/// The schemas an unqualified name may resolve to in one session.
///
/// The set only grows during a session: a `SET` adds its schemas (the old ones stay, since a
/// rollback, a failed statement or the end of a `SET LOCAL` can bring them back), and a change
/// the analysis cannot read makes every schema possible. `pg_catalog` and the temporary
/// schemas are always possible, as the server searches them implicitly.
///
/// `"$user"` is resolved by the server with the current role, which `SET ROLE` and `SET
/// SESSION AUTHORIZATION` change: once any path of the session listed `"$user"`, the schema
/// of every role the session may have become is possible, and every schema once a role
/// change could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchPath {
    schemas: BTreeSet<String>,
    any: bool,
    /// A path of the session listed `"$user"`.
    user_listed: bool,
    /// The roles the session may have as its current role.
    roles: BTreeSet<String>,
    /// A role change the analysis could not read.
    any_role: bool,
    /// The schema recorded for an unqualified name: the first existing schema of the path
    /// the session started with, or of the last path set.
    first: Option<String>,
    /// A path listed `pg_catalog` after another schema.
    shadowed: bool,
}

impl SearchPath {
    /// A session whose path is not known: every schema is possible.
    pub fn unknown() -> SearchPath {
        SearchPath {
            schemas: BTreeSet::new(),
            any: true,
            user_listed: true,
            roles: BTreeSet::new(),
            any_role: true,
            first: None,
            shadowed: true,
        }
    }

    /// A session that started with the setting `value` (as `SHOW search_path` prints it),
    /// connected as `user`, whose first existing schema is `first`.
    pub fn from_setting(value: &str, user: &str, first: Option<String>) -> SearchPath {
        let mut path = SearchPath {
            schemas: BTreeSet::new(),
            any: false,
            user_listed: false,
            roles: BTreeSet::from([user.to_owned()]),
            any_role: false,
            first,
            shadowed: false,
        };
        match split_setting(value) {
            Some(list) => path.add(list),
            None => path.any = true,
        }
        path
    }

    fn add(&mut self, list: Vec<String>) {
        if list
            .iter()
            .position(|s| s == "pg_catalog")
            .is_some_and(|i| i > 0)
        {
            self.shadowed = true;
        }
        for s in list {
            if s == "$user" {
                self.user_listed = true;
            } else {
                self.schemas.insert(s);
            }
        }
    }

    /// Apply a change made by a statement that will run.
    pub fn apply(&mut self, change: &PathChange) {
        match change {
            PathChange::Set(list) => {
                self.first = list
                    .iter()
                    .find(|s| s.as_str() != "$user" && s.as_str() != "pg_catalog")
                    .cloned()
                    .or(self.first.take());
                self.add(list.clone());
            }
            PathChange::Default => {}
            PathChange::Unknown => self.any = true,
            PathChange::Role(Some(role)) => {
                self.roles.insert(role.clone());
            }
            PathChange::Role(None) => self.any_role = true,
        }
    }

    /// Whether an unqualified name may resolve to an object of `schema`.
    pub fn may_resolve_to(&self, schema: &str) -> bool {
        self.any
            || schema == "pg_catalog"
            || schema.starts_with("pg_temp")
            || self.schemas.contains(schema)
            || (self.user_listed && (self.any_role || self.roles.contains(schema)))
    }

    /// The schema an object created with an unqualified name goes to, when known.
    pub fn creation_schema(&self) -> Option<&str> {
        if self.any {
            None
        } else {
            self.first.as_deref()
        }
    }

    /// Whether a path set in the session lists `pg_catalog` after another schema.
    pub fn catalog_not_first(&self) -> bool {
        self.shadowed
    }

    /// Whether an unqualified call of a built-in function's name may run a function of
    /// another schema: the path puts a schema before `pg_catalog`, or is not known.
    pub fn builtins_may_be_shadowed(&self) -> bool {
        self.any || self.shadowed
    }

    /// How an unqualified name is written in audit records.
    pub fn record(&self, name: &Qualified) -> String {
        match (&name.schema, &self.first) {
            (None, Some(first)) => format!("{first}.{}", name.name),
            _ => name.to_string(),
        }
    }
}

/// Split a list setting as PostgreSQL's `SplitIdentifierString` does: comma-separated,
/// double-quoted elements kept (doubled quotes undone), others trimmed and lower-cased.
/// `None` for a malformed list.
pub fn split_setting(value: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return if out.is_empty() { Some(out) } else { None };
        }
        let mut item = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        item.push('"');
                    }
                    '"' => break,
                    c => item.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                item.push(c);
                chars.next();
            }
            item = item.trim_end().to_ascii_lowercase();
            if item.is_empty() {
                return None;
            }
        }
        out.push(item);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(out),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// The schemas a `SET search_path` lists: identifiers folded, string constants taken as
/// written (the server quotes them), `DEFAULT` for the default. `None` when a value is
/// neither.
pub fn set_values(values: &[Expr]) -> PathChange {
    let mut list = Vec::new();
    for v in values {
        match v {
            Expr::Identifier(i)
                if i.quote_style.is_none()
                    && i.value.eq_ignore_ascii_case("default")
                    && values.len() == 1 =>
            {
                return PathChange::Default
            }
            Expr::Identifier(i) => list.push(fold(i)),
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s)
                | Value::EscapedStringLiteral(s)
                | Value::UnicodeStringLiteral(s) => list.push(s.clone()),
                _ => return PathChange::Unknown,
            },
            _ => return PathChange::Unknown,
        }
    }
    PathChange::Set(list)
}

/// The text with every `U&"..."` identifier (and its `UESCAPE 'c'` clause) replaced by the
/// plain quoted identifier it denotes, so that the parser sees the name the server will use.
/// Unchanged (borrowed) when the text has none.
pub fn decode_unicode_identifiers(sql: &str) -> Result<Cow<'_, str>, NameError> {
    if !sql.contains('&') {
        return Ok(Cow::Borrowed(sql));
    }
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| NameError::Tokenize(e.to_string()))?;
    // Byte offset of each (line, column) location, both 1-based and counted in characters.
    let mut line_starts = vec![0usize];
    for (i, c) in sql.char_indices() {
        if c == '\n' {
            line_starts.push(i + 1);
        }
    }
    let offset = |line: u64, column: u64| -> Option<usize> {
        let start = *line_starts.get(usize::try_from(line).ok()?.checked_sub(1)?)?;
        let col = usize::try_from(column).ok()?.checked_sub(1)?;
        match sql[start..].char_indices().nth(col) {
            Some((i, _)) => Some(start + i),
            None => Some(sql.len()),
        }
    };
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0usize;
    let mut i = 0usize;
    let mut changed = false;
    while i < tokens.len() {
        let is_u = matches!(&tokens[i].token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("u"));
        let amp = matches!(tokens.get(i + 1).map(|t| &t.token), Some(Token::Ampersand));
        let ident = match tokens.get(i + 2).map(|t| &t.token) {
            Some(Token::Word(w)) if w.quote_style == Some('"') => Some(w.value.clone()),
            _ => None,
        };
        let (true, true, Some(raw)) = (is_u, amp, ident) else {
            i += 1;
            continue;
        };
        // The three tokens must be adjacent (`U&"`), as the server's lexer requires.
        let start = offset(tokens[i].span.start.line, tokens[i].span.start.column)
            .ok_or(NameError::BadUescape)?;
        let amp_start = offset(
            tokens[i + 1].span.start.line,
            tokens[i + 1].span.start.column,
        )
        .ok_or(NameError::BadUescape)?;
        let quote_start = offset(
            tokens[i + 2].span.start.line,
            tokens[i + 2].span.start.column,
        )
        .ok_or(NameError::BadUescape)?;
        if amp_start != start + 1 || quote_start != amp_start + 1 {
            i += 1;
            continue;
        }
        let mut end_token = i + 2;
        let mut escape = '\\';
        // An optional `UESCAPE 'c'`.
        let mut j = i + 3;
        while matches!(
            tokens.get(j).map(|t| &t.token),
            Some(Token::Whitespace(
                Whitespace::Space | Whitespace::Newline | Whitespace::Tab
            ))
        ) {
            j += 1;
        }
        if matches!(tokens.get(j).map(|t| &t.token), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("uescape"))
        {
            let mut k = j + 1;
            while matches!(tokens.get(k).map(|t| &t.token), Some(Token::Whitespace(_))) {
                k += 1;
            }
            match tokens.get(k).map(|t| &t.token) {
                Some(Token::SingleQuotedString(s)) => {
                    let mut cs = s.chars();
                    match (cs.next(), cs.next()) {
                        (Some(c), None)
                            if !c.is_ascii_hexdigit()
                                && !matches!(c, '+' | '\'' | '"')
                                && !c.is_whitespace() =>
                        {
                            escape = c
                        }
                        _ => return Err(NameError::BadUescape),
                    }
                    end_token = k;
                }
                _ => return Err(NameError::BadUescape),
            }
        }
        let decoded = decode_escapes(&raw, escape)?;
        let end = match tokens.get(end_token + 1) {
            Some(t) => {
                offset(t.span.start.line, t.span.start.column).ok_or(NameError::BadUescape)?
            }
            None => sql.len(),
        };
        // The replaced text ends where the next token (whitespace included) starts.
        out.push_str(&sql[copied..start]);
        out.push('"');
        out.push_str(&decoded.replace('"', "\"\""));
        out.push('"');
        copied = end;
        changed = true;
        i = end_token + 1;
    }
    if !changed {
        return Ok(Cow::Borrowed(sql));
    }
    out.push_str(&sql[copied..]);
    Ok(Cow::Owned(out))
}

/// Decode the escapes of a Unicode identifier body: `\XXXX`, `\+XXXXXX` and `\\` (with
/// `escape` in place of the backslash).
fn decode_escapes(raw: &str, escape: char) -> Result<String, NameError> {
    let bad = || NameError::BadEscape;
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c != escape {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&escape) {
            chars.next();
            out.push(escape);
            continue;
        }
        let digits = if chars.peek() == Some(&'+') {
            chars.next();
            6
        } else {
            4
        };
        let mut code = 0u32;
        for _ in 0..digits {
            let d = chars.next().and_then(|d| d.to_digit(16)).ok_or_else(bad)?;
            code = code * 16 + d;
        }
        out.push(
            char::from_u32(code)
                .filter(|c| *c != '\0')
                .ok_or_else(bad)?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicode_identifiers_are_decoded() {
        assert_eq!(
            decode_unicode_identifiers(r#"SELECT U&"\006Co_export"(1, '/tmp/x')"#).unwrap(),
            r#"SELECT "lo_export"(1, '/tmp/x')"#
        );
        assert_eq!(
            decode_unicode_identifiers(r#"SELECT u&"!0070g_read_file" UESCAPE '!' ('x')"#).unwrap(),
            r#"SELECT "pg_read_file" ('x')"#
        );
        assert_eq!(
            decode_unicode_identifiers("DELETE FROM U&\"crm\".U&\"\\+000063ontacts\" WHERE id = 1")
                .unwrap(),
            "DELETE FROM \"crm\".\"contacts\" WHERE id = 1"
        );
        // Not adjacent: not a Unicode identifier (the server reads `U & "x"`).
        assert_eq!(
            decode_unicode_identifiers(r#"SELECT U & "x""#).unwrap(),
            r#"SELECT U & "x""#
        );
        assert!(decode_unicode_identifiers(r#"SELECT U&"\00zz""#).is_err());
        assert!(decode_unicode_identifiers(r#"SELECT U&"x" UESCAPE 'ab'"#).is_err());
    }

    #[test]
    fn settings_split_like_the_server() {
        assert_eq!(
            split_setting("\"$user\", public").unwrap(),
            vec!["$user".to_owned(), "public".to_owned()]
        );
        assert_eq!(
            split_setting("CRM ,\"My\"\"S\"").unwrap(),
            vec!["crm".to_owned(), "My\"S".to_owned()]
        );
        assert_eq!(split_setting("").unwrap(), Vec::<String>::new());
        assert!(split_setting("a,,b").is_none());
    }

    #[test]
    fn unqualified_names_match_every_possible_schema() {
        let mut path = SearchPath::from_setting("\"$user\", public", "app", Some("public".into()));
        let contacts = Qualified::bare("contacts");
        assert!(contacts.may_be("public", "contacts", &path));
        assert!(contacts.may_be("app", "contacts", &path));
        assert!(!contacts.may_be("crm", "contacts", &path));
        path.apply(&PathChange::Set(vec!["crm".into(), "public".into()]));
        assert!(contacts.may_be("crm", "contacts", &path));
        // Still possible after a rollback.
        assert!(contacts.may_be("public", "contacts", &path));
        path.apply(&PathChange::Unknown);
        assert!(contacts.may_be("anything", "contacts", &path));
    }

    #[test]
    fn user_stands_for_every_role_the_session_may_have() {
        let contacts = Qualified::bare("contacts");
        let mut path = SearchPath::from_setting("\"$user\", public", "app", Some("public".into()));
        path.apply(&PathChange::Role(Some("crm".into())));
        assert!(contacts.may_be("crm", "contacts", &path));
        assert!(contacts.may_be("app", "contacts", &path));
        assert!(!contacts.may_be("hr", "contacts", &path));
        path.apply(&PathChange::Role(None));
        assert!(contacts.may_be("hr", "contacts", &path));
        // Without "$user" in any path, the role does not matter, until a path lists it.
        let mut path = SearchPath::from_setting("public", "app", Some("public".into()));
        path.apply(&PathChange::Role(Some("crm".into())));
        assert!(!contacts.may_be("crm", "contacts", &path));
        path.apply(&PathChange::Set(vec!["$user".into()]));
        assert!(contacts.may_be("crm", "contacts", &path));
    }
}
