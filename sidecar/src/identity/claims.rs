//! What a verified token says about its principal, following the shape of the Kubernetes API
//! server's structured authentication configuration: the issuer's claim mappings give the
//! user name and groups (a claim with a prefix, or a CEL expression over `claims`, evaluated
//! with the `cel` crate), and its claim validation rules must all hold (a claim with a
//! required value, or a CEL expression that must be `true`).
//!
//! Only claims the issuer vouches for name a person: a user name read from the `email`
//! claim needs `email_verified: true` in the same token, and unless `email_verified` is
//! exactly JSON `true`, every CEL expression (user name, groups, validation rules) is
//! evaluated over the claims with `email` removed, so no expression can read an unverified
//! address, however it spells the key.

use std::borrow::Cow;

use cel::{Context, Program, Value as CelValue};
use portcullis_crds::sidecar_config::OidcIssuerConfig;
use serde_json::{Map, Value};

use super::oidc::{claim_string, TokenError};

/// How one value (user name or groups) is read from the claims.
#[derive(Debug)]
enum Mapping {
    /// A claim, each value prefixed.
    Claim { claim: String, prefix: String },
    /// A CEL expression over `claims`.
    Expression { source: String, program: Program },
}

/// One rule every token must satisfy.
#[derive(Debug)]
enum Rule {
    /// The claim holds this value (or a list that contains it).
    Required { claim: String, value: String },
    /// The expression is `true`.
    Expression {
        source: String,
        program: Program,
        message: Option<String>,
    },
}

/// The claim mappings and validation rules of one issuer, with their CEL compiled.
#[derive(Debug)]
pub struct ClaimRules {
    username: Mapping,
    groups: Mapping,
    rules: Vec<Rule>,
    /// The user name is the `email` claim: `email_verified` must be `true`.
    needs_verified_email: bool,
}

fn compile(what: &str, source: &str) -> Result<Program, String> {
    Program::compile(source).map_err(|e| format!("{what} {source:?} is not valid CEL: {e}"))
}

/// Whether the issuer vouches for the token's `email`: `email_verified` is JSON `true`.
fn email_verified(claims: &Map<String, Value>) -> bool {
    claims.get("email_verified") == Some(&Value::Bool(true))
}

/// The claims an expression sees: all of them, but without `email` unless it is verified.
fn visible(claims: &Map<String, Value>) -> Cow<'_, Map<String, Value>> {
    if email_verified(claims) || !claims.contains_key("email") {
        Cow::Borrowed(claims)
    } else {
        let mut shown = claims.clone();
        shown.remove("email");
        Cow::Owned(shown)
    }
}

/// Evaluate an expression with `claims` bound to the token's payload, less an unverified
/// `email` ([`visible`]).
fn evaluate(
    program: &Program,
    source: &str,
    claims: &Map<String, Value>,
) -> Result<CelValue, TokenError> {
    let shown = visible(claims);
    let withheld = shown.len() != claims.len();
    let value = cel::to_value(shown.as_ref())
        .map_err(|e| TokenError::Rule(format!("the claims cannot be given to {source:?}: {e}")))?;
    let mut context = Context::default();
    context.add_variable_from_value("claims", value);
    program.execute(&context).map_err(|e| {
        TokenError::Rule(if withheld {
            format!(
                "{source:?} cannot be evaluated: {e} (the token's email is not verified, so expressions do not see it)"
            )
        } else {
            format!("{source:?} cannot be evaluated: {e}")
        })
    })
}

impl ClaimRules {
    /// Compile the mappings and rules of an issuer; the error names what is wrong.
    pub fn new(config: &OidcIssuerConfig) -> Result<ClaimRules, String> {
        let username = match &config.username_expression {
            Some(source) => Mapping::Expression {
                program: compile("claimMappings.username.expression", source)?,
                source: source.clone(),
            },
            None => Mapping::Claim {
                claim: config.username_claim.clone(),
                prefix: config.username_prefix.clone(),
            },
        };
        let groups = match &config.groups_expression {
            Some(source) => Mapping::Expression {
                program: compile("claimMappings.groups.expression", source)?,
                source: source.clone(),
            },
            None => Mapping::Claim {
                claim: config.groups_claim.clone(),
                prefix: config.groups_prefix.clone(),
            },
        };
        // Expressions never see an unverified email (`evaluate`), whatever they read.
        let needs_verified_email =
            matches!(&username, Mapping::Claim { claim, .. } if claim == "email");
        let mut rules = Vec::new();
        for (i, r) in config.claim_validation_rules.iter().enumerate() {
            match (&r.claim, &r.required_value, &r.expression) {
                (Some(claim), Some(value), None) => rules.push(Rule::Required {
                    claim: claim.clone(),
                    value: value.clone(),
                }),
                (None, None, Some(source)) => rules.push(Rule::Expression {
                    program: compile(&format!("claimValidationRules[{i}].expression"), source)?,
                    source: source.clone(),
                    message: r.message.clone(),
                }),
                _ => {
                    return Err(format!(
                    "claimValidationRules[{i}] needs either claim with requiredValue, or expression"
                ))
                }
            }
        }
        Ok(ClaimRules {
            username,
            groups,
            rules,
            needs_verified_email,
        })
    }

    /// Check the issuer's validation rules and that an `email` user name is verified.
    pub fn check(&self, claims: &Map<String, Value>) -> Result<(), TokenError> {
        if self.needs_verified_email && !email_verified(claims) {
            return Err(TokenError::UnverifiedEmail);
        }
        for rule in &self.rules {
            match rule {
                Rule::Required { claim, value } => {
                    let holds = match claims.get(claim) {
                        Some(Value::Array(list)) => {
                            list.iter().any(|v| v.as_str() == Some(value.as_str()))
                        }
                        Some(Value::String(s)) => s == value,
                        _ => false,
                    };
                    if !holds {
                        return Err(TokenError::Rule(format!(
                            "claim {claim:?} must be {value:?}"
                        )));
                    }
                }
                Rule::Expression {
                    source,
                    program,
                    message,
                } => match evaluate(program, source, claims)? {
                    CelValue::Bool(true) => {}
                    CelValue::Bool(false) => {
                        return Err(TokenError::Rule(
                            message
                                .clone()
                                .unwrap_or_else(|| format!("{source} is not true")),
                        ))
                    }
                    other => {
                        return Err(TokenError::Rule(format!(
                            "{source} gives {other:?}, not a boolean"
                        )))
                    }
                },
            }
        }
        Ok(())
    }

    /// The user name of the token.
    pub fn username(&self, claims: &Map<String, Value>) -> Result<String, TokenError> {
        match &self.username {
            Mapping::Claim { claim, prefix } => {
                let value = claims
                    .get(claim)
                    .and_then(claim_string)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| TokenError::Claim(claim.clone()))?;
                Ok(format!("{prefix}{value}"))
            }
            Mapping::Expression { source, program } => match evaluate(program, source, claims)? {
                CelValue::String(s) if !s.is_empty() => Ok(s.as_ref().clone()),
                other => Err(TokenError::Rule(format!(
                    "the user name expression {source} gives {other:?}, not a non-empty string"
                ))),
            },
        }
    }

    /// The groups of the token.
    pub fn groups(&self, claims: &Map<String, Value>) -> Result<Vec<String>, TokenError> {
        match &self.groups {
            Mapping::Claim { claim, prefix } => {
                let raw = match claims.get(claim) {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(list)) => list
                        .iter()
                        .map(|v| v.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| TokenError::Claim(claim.clone()))?,
                    Some(Value::String(s)) => vec![s.clone()],
                    Some(_) => return Err(TokenError::Claim(claim.clone())),
                };
                Ok(raw.into_iter().map(|g| format!("{prefix}{g}")).collect())
            }
            Mapping::Expression { source, program } => match evaluate(program, source, claims)? {
                CelValue::String(s) => Ok(vec![s.as_ref().clone()]),
                CelValue::List(list) => list
                    .iter()
                    .map(|v| match v {
                        CelValue::String(s) => Ok(s.as_ref().clone()),
                        other => Err(TokenError::Rule(format!(
                            "the groups expression {source} gives {other:?} in its list, not a string"
                        ))),
                    })
                    .collect(),
                CelValue::Null => Ok(Vec::new()),
                other => Err(TokenError::Rule(format!(
                    "the groups expression {source} gives {other:?}, not a string or a list of strings"
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_crds::gateway_policy::ClaimValidationRule;
    use serde_json::json;

    fn config() -> OidcIssuerConfig {
        serde_yaml::from_str("url: https://issuer.example\naudiences: [db]\n").expect("config")
    }

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn email_names_a_person_only_when_verified() {
        let mut c = config();
        c.username_claim = "email".into();
        let rules = ClaimRules::new(&c).expect("rules");
        let base = json!({"sub": "1", "email": "alice@example.com"});
        for verified in [json!(false), json!("true"), json!(1), Value::Null] {
            let mut t = base.clone();
            t["email_verified"] = verified.clone();
            assert_eq!(
                rules.check(&claims(t)),
                Err(TokenError::UnverifiedEmail),
                "{verified}"
            );
        }
        assert_eq!(
            rules.check(&claims(base.clone())),
            Err(TokenError::UnverifiedEmail)
        );
        let mut t = base;
        t["email_verified"] = json!(true);
        rules.check(&claims(t.clone())).expect("verified");
        assert_eq!(
            rules.username(&claims(t)).expect("name"),
            "alice@example.com"
        );
    }

    #[test]
    fn prefixes_expressions_and_rules() {
        let mut c = config();
        c.username_claim = "preferred_username".into();
        c.username_prefix = "staff:".into();
        c.groups_prefix = "staff:".into();
        c.claim_validation_rules = vec![
            ClaimValidationRule {
                claim: Some("hd".into()),
                required_value: Some("example.com".into()),
                expression: None,
                message: None,
            },
            ClaimValidationRule {
                claim: None,
                required_value: None,
                expression: Some("claims.acr == \"mfa\"".into()),
                message: Some("sign in with MFA".into()),
            },
        ];
        let rules = ClaimRules::new(&c).expect("rules");
        let t = claims(
            json!({"preferred_username": "alice", "groups": ["dpo"], "hd": "example.com", "acr": "mfa"}),
        );
        rules.check(&t).expect("rules hold");
        assert_eq!(rules.username(&t).expect("name"), "staff:alice");
        assert_eq!(rules.groups(&t).expect("groups"), vec!["staff:dpo"]);
        let t = claims(json!({"preferred_username": "alice", "hd": "example.com", "acr": "pwd"}));
        assert_eq!(
            rules.check(&t),
            Err(TokenError::Rule("sign in with MFA".into()))
        );
        let t = claims(json!({"preferred_username": "alice", "hd": "evil.com", "acr": "mfa"}));
        assert!(rules.check(&t).is_err());

        let mut c = config();
        c.username_expression = Some("claims.sub + \"@partner\"".into());
        c.groups_expression = Some("claims.roles".into());
        let rules = ClaimRules::new(&c).expect("rules");
        let t = claims(json!({"sub": "bob", "roles": ["a", "b"]}));
        assert_eq!(rules.username(&t).expect("name"), "bob@partner");
        assert_eq!(rules.groups(&t).expect("groups"), vec!["a", "b"]);
        let t = claims(json!({"sub": "bob", "roles": [1]}));
        assert!(rules.groups(&t).is_err());

        // However an expression spells `email`, it does not see an unverified one.
        for expr in [
            "claims.email",
            r#"claims["em" + "ail"]"#,
            r#"claims["\x65mail"]"#,
            r#"claims[claims.k]"#,
        ] {
            let mut c = config();
            c.username_expression = Some(expr.into());
            c.groups_expression = Some(format!("[{expr}]"));
            c.claim_validation_rules = vec![ClaimValidationRule {
                claim: None,
                required_value: None,
                expression: Some(format!("{expr} == \"a@b\"")),
                message: None,
            }];
            let rules = ClaimRules::new(&c).expect("rules");
            for verified in [json!(false), json!("true"), json!(1), Value::Null] {
                let t = claims(json!({"email": "a@b", "k": "email", "email_verified": verified}));
                assert!(rules.check(&t).is_err(), "{expr} {verified}");
                assert!(
                    matches!(rules.username(&t), Err(TokenError::Rule(m)) if m.contains("not verified")),
                    "{expr} {verified}"
                );
                assert!(rules.groups(&t).is_err(), "{expr} {verified}");
            }
            let t = claims(json!({"email": "a@b", "k": "email", "email_verified": true}));
            rules.check(&t).expect("verified");
            assert_eq!(rules.username(&t).expect("name"), "a@b", "{expr}");
            assert_eq!(rules.groups(&t).expect("groups"), vec!["a@b"], "{expr}");
        }

        let mut c = config();
        c.username_expression = Some("claims.(".into());
        assert!(ClaimRules::new(&c)
            .expect_err("bad CEL")
            .contains("not valid CEL"));
    }
}
