//! OIDC ID-token validation for one issuer: the discovery document and key set (JWKS) are
//! fetched on first use and cached, fetched again when they are older than the maximum age
//! (default five minutes) or when a token names a key the cache does not know (at most once
//! per minimum interval, so tokens with made-up key ids cannot flood the issuer). Each
//! successful fetch replaces the cached keys, so a key the issuer withdrew is no longer
//! trusted after the next fetch (and sessions opened with a token it signed end: see
//! [`super::expiry`]). Every token is checked for its signature, algorithm (the
//! issuer's allowed list), `iss`, `aud`, `exp` and `nbf` by `jsonwebtoken`; here, `exp`,
//! `nbf` and `iat` must be JSON numbers no later than the year 9999 ([`MAX_NUMERIC_DATE`]),
//! `iat` must not lie in the future, and a token with
//! several audiences must name an accepted one as its authorized party (`azp`). The issuer's
//! claim mappings and validation rules ([`super::claims`]) then give the principal.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portcullis_crds::audit::Principal;
use portcullis_crds::gateway_policy::{PrincipalKind, SigningAlgorithm};
use portcullis_crds::sidecar_config::OidcIssuerConfig;
use serde_json::{Map, Value};
use thiserror::Error;

use super::claims::ClaimRules;
use super::http::HttpClient;

/// Largest NumericDate accepted: 9999-12-31T23:59:59Z. Later dates are refused rather than
/// turned into times, so that every accepted date is a time and can be printed.
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

/// Largest token accepted.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// How key sets are cached and fetched.
#[derive(Clone, Copy, Debug)]
pub struct OidcOptions {
    /// Least time between two fetches caused by unknown key ids.
    pub jwks_min_refresh: Duration,
    /// Age after which cached keys are fetched again before use.
    pub jwks_max_age: Duration,
    /// Time limit of one HTTP request.
    pub http_timeout: Duration,
}

impl Default for OidcOptions {
    fn default() -> Self {
        OidcOptions {
            jwks_min_refresh: Duration::from_secs(10),
            jwks_max_age: Duration::from_secs(300),
            http_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a token was not accepted. The messages are shown to the client.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts.
    #[error("the password is not an OIDC ID token (a JWT of three base64url parts)")]
    NotAJwt,
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("the token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    /// The header or payload is not JSON.
    #[error("the token is malformed: {0}")]
    Malformed(String),
    /// An algorithm the issuer's settings do not accept (`none`, HS256, ...).
    #[error(
        "the token is signed with algorithm {alg}, which is not accepted (accepted: {accepted})"
    )]
    Algorithm {
        /// The token's `alg`.
        alg: String,
        /// The accepted algorithms.
        accepted: String,
    },
    /// No configured issuer has this `iss`.
    #[error("the token's issuer {found:?} is not trusted for this resource (trusted: {trusted})")]
    UntrustedIssuer {
        /// The token's `iss`.
        found: String,
        /// The configured issuers.
        trusted: String,
    },
    /// The key id is not in the issuer's key set, even after fetching it again.
    #[error("the token's signing key {kid:?} is not among the published keys of issuer {issuer}")]
    UnknownKey {
        /// The token's `kid`.
        kid: String,
        /// The issuer.
        issuer: String,
    },
    /// The key named is of another type than the algorithm needs.
    #[error("the token's signing key {kid:?} cannot verify {alg} signatures")]
    KeyMismatch {
        /// The key id.
        kid: String,
        /// The token's algorithm.
        alg: String,
    },
    /// The issuer's metadata could not be fetched.
    #[error("the keys of issuer {issuer} cannot be fetched: {reason}")]
    Jwks {
        /// The issuer.
        issuer: String,
        /// Why.
        reason: String,
    },
    /// Bad signature.
    #[error("the token's signature is not valid")]
    Signature,
    /// `exp` has passed.
    #[error("the token has expired{0}")]
    Expired(String),
    /// `nbf` is in the future.
    #[error("the token is not valid yet{0}")]
    NotYetValid(String),
    /// `aud` holds none of the accepted audiences.
    #[error("the token's audience {found} is not accepted (accepted: {accepted})")]
    Audience {
        /// The token's `aud`.
        found: String,
        /// The configured audiences.
        accepted: String,
    },
    /// A required claim is missing or of the wrong type.
    #[error("the token lacks a valid {0:?} claim")]
    Claim(String),
    /// `exp`, `nbf` or `iat` is not a JSON number (RFC 7519 NumericDate).
    #[error("the token's {0:?} claim is not a NumericDate (a JSON number of seconds)")]
    NotNumericDate(String),
    /// `exp`, `nbf` or `iat` lies beyond the last second of year 9999, which no clock or
    /// RFC 3339 timestamp holds.
    #[error("the token's {0:?} claim lies beyond the year 9999 ({MAX_NUMERIC_DATE} seconds), which is not a time this gateway accepts")]
    DateOutOfRange(String),
    /// `iat` lies in the future beyond the leeway.
    #[error("the token was issued in the future{0}")]
    IssuedInFuture(String),
    /// Several audiences and no accepted authorized party.
    #[error("the token has several audiences ({found}) and its authorized party (azp) {azp} is not an accepted audience ({accepted})")]
    AuthorizedParty {
        /// The token's `aud`.
        found: String,
        /// The token's `azp`.
        azp: String,
        /// The configured audiences.
        accepted: String,
    },
    /// The user name is read from `email` but the issuer does not vouch for the address.
    #[error("the token's email is not verified (email_verified is not true), so it names nobody")]
    UnverifiedEmail,
    /// One of the issuer's claim validation rules does not hold.
    #[error("the token fails a claim validation rule of its issuer: {0}")]
    Rule(String),
    /// Any other validation failure.
    #[error("the token is not valid: {0}")]
    Invalid(String),
}

/// The parts of a token read before its signature is checked, to pick the issuer and key.
#[derive(Debug)]
pub struct Unverified {
    /// `alg` of the header.
    pub alg: String,
    /// `kid` of the header.
    pub kid: Option<String>,
    /// The payload.
    pub claims: Map<String, Value>,
}

fn b64_json(part: &str, what: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed(format!("the {what} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| TokenError::Malformed(format!("the {what} is not a JSON object")))
}

/// Split a token and read its header and payload without verifying anything.
pub fn peek(token: &str) -> Result<Unverified, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLong);
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, _signature] = parts.as_slice() else {
        return Err(TokenError::NotAJwt);
    };
    if header.is_empty() || payload.is_empty() {
        return Err(TokenError::NotAJwt);
    }
    let header = b64_json(header, "header")?;
    let claims = b64_json(payload, "payload")?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| TokenError::Malformed("the header has no alg".into()))?
        .to_owned();
    let kid = header.get("kid").and_then(Value::as_str).map(str::to_owned);
    Ok(Unverified { alg, kid, claims })
}

fn algorithm(a: SigningAlgorithm) -> Algorithm {
    match a {
        SigningAlgorithm::RS256 => Algorithm::RS256,
        SigningAlgorithm::RS384 => Algorithm::RS384,
        SigningAlgorithm::RS512 => Algorithm::RS512,
        SigningAlgorithm::PS256 => Algorithm::PS256,
        SigningAlgorithm::PS384 => Algorithm::PS384,
        SigningAlgorithm::PS512 => Algorithm::PS512,
        SigningAlgorithm::ES256 => Algorithm::ES256,
        SigningAlgorithm::ES384 => Algorithm::ES384,
        SigningAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

fn key_algorithm(a: SigningAlgorithm) -> KeyAlgorithm {
    match a {
        SigningAlgorithm::RS256 => KeyAlgorithm::RS256,
        SigningAlgorithm::RS384 => KeyAlgorithm::RS384,
        SigningAlgorithm::RS512 => KeyAlgorithm::RS512,
        SigningAlgorithm::PS256 => KeyAlgorithm::PS256,
        SigningAlgorithm::PS384 => KeyAlgorithm::PS384,
        SigningAlgorithm::PS512 => KeyAlgorithm::PS512,
        SigningAlgorithm::ES256 => KeyAlgorithm::ES256,
        SigningAlgorithm::ES384 => KeyAlgorithm::ES384,
        SigningAlgorithm::EdDSA => KeyAlgorithm::EdDSA,
    }
}

/// Whether a public key of the set can verify `alg`. Symmetric (`oct`) keys never can.
fn key_fits(jwk: &Jwk, alg: SigningAlgorithm) -> bool {
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return false;
    }
    if jwk
        .common
        .key_algorithm
        .is_some_and(|k| k != key_algorithm(alg))
    {
        return false;
    }
    match (&jwk.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            SigningAlgorithm::RS256
            | SigningAlgorithm::RS384
            | SigningAlgorithm::RS512
            | SigningAlgorithm::PS256
            | SigningAlgorithm::PS384
            | SigningAlgorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(p), SigningAlgorithm::ES256) => {
            p.curve == EllipticCurve::P256
        }
        (AlgorithmParameters::EllipticCurve(p), SigningAlgorithm::ES384) => {
            p.curve == EllipticCurve::P384
        }
        (AlgorithmParameters::OctetKeyPair(p), SigningAlgorithm::EdDSA) => {
            p.curve == EllipticCurve::Ed25519
        }
        _ => false,
    }
}

#[derive(Default)]
struct KeyCache {
    keys: Vec<Jwk>,
    fetched: Option<Instant>,
    last_attempt: Option<Instant>,
}

impl KeyCache {
    /// Whether the keys are older than `max_age` (or were never fetched).
    fn stale(&self, max_age: Duration) -> bool {
        self.fetched.is_none_or(|t| t.elapsed() >= max_age)
    }

    /// Whether a fetch may be tried: the last attempt is at least `min_refresh` ago.
    fn may_refresh(&self, min_refresh: Duration) -> bool {
        self.last_attempt.is_none_or(|t| t.elapsed() >= min_refresh)
    }
}

/// Validates the tokens of one issuer.
pub struct IssuerVerifier {
    config: OidcIssuerConfig,
    rules: ClaimRules,
    http: HttpClient,
    options: OidcOptions,
    cache: tokio::sync::Mutex<KeyCache>,
}

impl std::fmt::Debug for IssuerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerVerifier")
            .field("issuer", &self.config.url)
            .finish()
    }
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The principal it identifies (claims not yet filtered for recording).
    pub principal: Principal,
    /// Every claim of the token.
    pub claims: Map<String, Value>,
}

/// A claim as a string: strings as they are, numbers and booleans printed.
pub fn claim_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn describe_aud(claims: &Map<String, Value>) -> String {
    match claims.get("aud") {
        Some(Value::String(s)) => format!("{s:?}"),
        Some(Value::Array(a)) => {
            let list: Vec<String> = a.iter().filter_map(claim_string).collect();
            format!("[{}]", list.join(", "))
        }
        _ => "(none)".to_owned(),
    }
}

/// A NumericDate claim as whole seconds since the epoch (fractions dropped), if it is a
/// non-negative JSON number.
pub fn numeric_date(v: &Value) -> Option<u64> {
    let f = v.as_f64()?;
    // Truncation is intended: NumericDate seconds, fractions dropped.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (f.is_finite() && f >= 0.0).then_some(f as u64)
}

/// A NumericDate as a time, if it is at most [`MAX_NUMERIC_DATE`].
pub fn date_time(secs: u64) -> Option<std::time::SystemTime> {
    if secs > MAX_NUMERIC_DATE {
        return None;
    }
    std::time::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// A NumericDate in RFC 3339, or its number of seconds when it is no printable time.
pub fn format_date(secs: u64) -> String {
    date_time(secs).map_or_else(
        || format!("{secs} seconds after 1970"),
        |at| humantime::format_rfc3339_seconds(at).to_string(),
    )
}

fn time_suffix(claims: &Map<String, Value>, claim: &str, word: &str) -> String {
    claims
        .get(claim)
        .and_then(numeric_date)
        .map(|t| format!(" ({word} {})", format_date(t)))
        .unwrap_or_default()
}

impl IssuerVerifier {
    /// A verifier for one configured issuer; fails when its claim mappings or rules do not
    /// compile.
    pub fn new(
        config: OidcIssuerConfig,
        http: HttpClient,
        options: OidcOptions,
    ) -> Result<Self, String> {
        let rules = ClaimRules::new(&config).map_err(|e| format!("issuer {}: {e}", config.url))?;
        Ok(IssuerVerifier {
            config,
            rules,
            http,
            options,
            cache: tokio::sync::Mutex::new(KeyCache::default()),
        })
    }

    /// The issuer's settings.
    pub fn config(&self) -> &OidcIssuerConfig {
        &self.config
    }

    async fn fetch(&self) -> Result<Vec<Jwk>, String> {
        let base = self.config.url.trim_end_matches('/');
        let discovery = self
            .http
            .get_json(&format!("{base}/.well-known/openid-configuration"))
            .await?;
        let issuer = discovery.get("issuer").and_then(Value::as_str);
        if issuer != Some(self.config.url.as_str()) {
            return Err(format!(
                "the discovery document names issuer {issuer:?}, not {}",
                self.config.url
            ));
        }
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or("the discovery document has no jwks_uri")?;
        let set = self.http.get_json(jwks_uri).await?;
        let keys = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the key set has no keys")?;
        // Keys this sidecar cannot use (encryption keys, unknown types) are skipped, not fatal.
        Ok(keys
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter(|k| !matches!(k.algorithm, AlgorithmParameters::OctetKey(_)))
            .collect())
    }

    async fn refresh(&self, cache: &mut KeyCache) -> Result<(), TokenError> {
        cache.last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(issuer = %self.config.url, keys = keys.len(), "fetched the issuer's signing keys");
                cache.keys = keys;
                cache.fetched = Some(Instant::now());
                Ok(())
            }
            Err(reason) => {
                tracing::warn!(issuer = %self.config.url, %reason, "cannot fetch the issuer's signing keys");
                Err(TokenError::Jwks {
                    issuer: self.config.url.clone(),
                    reason,
                })
            }
        }
    }

    fn find(
        keys: &[Jwk],
        kid: Option<&str>,
        alg: SigningAlgorithm,
    ) -> Option<Result<DecodingKey, TokenError>> {
        let candidates: Vec<&Jwk> = match kid {
            Some(kid) => keys
                .iter()
                .filter(|k| k.common.key_id.as_deref() == Some(kid))
                .collect(),
            None => keys.iter().filter(|k| key_fits(k, alg)).collect(),
        };
        let jwk = match candidates.as_slice() {
            [] => return None,
            [one] => *one,
            // Without a kid, more than one usable key is ambiguous: refuse rather than guess.
            _ if kid.is_none() => {
                return Some(Err(TokenError::Malformed(
                    "the header has no kid and the issuer publishes several keys".into(),
                )))
            }
            [first, ..] => *first,
        };
        let kid = kid.unwrap_or_default().to_owned();
        if !key_fits(jwk, alg) {
            return Some(Err(TokenError::KeyMismatch {
                kid,
                alg: alg.as_str().to_owned(),
            }));
        }
        Some(DecodingKey::from_jwk(jwk).map_err(|e| TokenError::Invalid(e.to_string())))
    }

    async fn key_for(
        &self,
        kid: Option<&str>,
        alg: SigningAlgorithm,
    ) -> Result<DecodingKey, TokenError> {
        let mut cache = self.cache.lock().await;
        let stale = cache.stale(self.options.jwks_max_age);
        let may_refresh = cache.may_refresh(self.options.jwks_min_refresh);
        let mut refreshed = false;
        if stale && may_refresh {
            refreshed = true;
            if let Err(e) = self.refresh(&mut cache).await {
                // Keep using keys fetched before, if any: an outage of the issuer does not
                // lock everybody out until they expire.
                if cache.keys.is_empty() {
                    return Err(e);
                }
            }
        }
        if let Some(found) = Self::find(&cache.keys, kid, alg) {
            return found;
        }
        // Unknown key: the issuer may have rotated. Fetch again, unless that just happened.
        let may_refresh = cache.may_refresh(self.options.jwks_min_refresh);
        if !refreshed && may_refresh {
            self.refresh(&mut cache).await?;
            if let Some(found) = Self::find(&cache.keys, kid, alg) {
                return found;
            }
        }
        Err(TokenError::UnknownKey {
            kid: kid.unwrap_or("(none)").to_owned(),
            issuer: self.config.url.clone(),
        })
    }

    /// How often a session checks that the key of its token is still published: the key
    /// set's maximum age.
    pub fn key_check_interval(&self) -> Duration {
        self.options.jwks_max_age.max(Duration::from_millis(100))
    }

    /// Whether the key `kid` is still among the issuer's published keys, reading the key
    /// set again when the cached one is older than its maximum age. When the issuer cannot
    /// be reached, the keys fetched before stand (as for new tokens).
    pub async fn publishes(&self, kid: &str) -> bool {
        let mut cache = self.cache.lock().await;
        let stale = cache.stale(self.options.jwks_max_age);
        let may_refresh = cache.may_refresh(self.options.jwks_min_refresh);
        if stale && may_refresh {
            if let Err(e) = self.refresh(&mut cache).await {
                tracing::warn!(issuer = %self.config.url, error = %e, "key set not re-read; the keys fetched before stand");
            }
        }
        cache
            .keys
            .iter()
            .any(|k| k.common.key_id.as_deref() == Some(kid))
    }

    /// Verify a token whose header and payload were read by [`peek`].
    pub async fn verify(&self, token: &str, peeked: &Unverified) -> Result<Verified, TokenError> {
        let accepted = || {
            self.config
                .algorithms
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(alg) = self
            .config
            .algorithms
            .iter()
            .copied()
            .find(|a| a.as_str() == peeked.alg)
        else {
            return Err(TokenError::Algorithm {
                alg: peeked.alg.clone(),
                accepted: accepted(),
            });
        };
        // NumericDate claims are JSON numbers; a string or anything else is refused rather
        // than skipped.
        for claim in ["exp", "nbf", "iat"] {
            if let Some(v) = peeked.claims.get(claim) {
                match numeric_date(v) {
                    None => return Err(TokenError::NotNumericDate(claim.to_owned())),
                    Some(t) if t > MAX_NUMERIC_DATE => {
                        return Err(TokenError::DateOutOfRange(claim.to_owned()))
                    }
                    Some(_) => {}
                }
            }
        }
        let key = self.key_for(peeked.kid.as_deref(), alg).await?;

        let mut validation = Validation::new(algorithm(alg));
        validation.set_issuer(&[self.config.url.as_str()]);
        validation.set_audience(&self.config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.config.clock_skew_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidSignature => TokenError::Signature,
                    K::ExpiredSignature => {
                        TokenError::Expired(time_suffix(&peeked.claims, "exp", "at"))
                    }
                    K::ImmatureSignature => {
                        TokenError::NotYetValid(time_suffix(&peeked.claims, "nbf", "before"))
                    }
                    K::InvalidAudience => TokenError::Audience {
                        found: describe_aud(&peeked.claims),
                        accepted: self.config.audiences.join(", "),
                    },
                    K::InvalidIssuer => TokenError::UntrustedIssuer {
                        found: peeked
                            .claims
                            .get("iss")
                            .and_then(claim_string)
                            .unwrap_or_default(),
                        trusted: self.config.url.clone(),
                    },
                    K::MissingRequiredClaim(c) | K::InvalidClaimFormat(c) => {
                        TokenError::Claim(c.clone())
                    }
                    K::InvalidAlgorithm | K::MissingAlgorithm | K::InvalidAlgorithmName => {
                        TokenError::Algorithm {
                            alg: peeked.alg.clone(),
                            accepted: accepted(),
                        }
                    }
                    other => TokenError::Invalid(format!("{other:?}")),
                }
            })?;
        let claims = data.claims;
        // `iat` in the future beyond the leeway is as suspicious as a future `nbf`.
        if let Some(iat) = claims.get("iat") {
            let iat = numeric_date(iat).ok_or_else(|| TokenError::NotNumericDate("iat".into()))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            if iat > now.saturating_add(self.config.clock_skew_seconds) {
                return Err(TokenError::IssuedInFuture(time_suffix(
                    &claims, "iat", "at",
                )));
            }
        }
        // Several audiences: the party the token was issued to (azp) must be one of ours.
        if let Some(Value::Array(aud)) = claims.get("aud") {
            if aud.len() > 1 {
                let azp = claims.get("azp").and_then(Value::as_str);
                if !azp.is_some_and(|a| self.config.audiences.iter().any(|x| x == a)) {
                    return Err(TokenError::AuthorizedParty {
                        found: describe_aud(&claims),
                        azp: azp.map_or_else(|| "(none)".to_owned(), |a| format!("{a:?}")),
                        accepted: self.config.audiences.join(", "),
                    });
                }
            }
        }
        self.rules.check(&claims)?;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| TokenError::Claim("sub".into()))?
            .to_owned();
        let name = self.rules.username(&claims)?;
        let groups = self.rules.groups(&claims)?;
        let principal = Principal {
            kind: match self.config.principal {
                PrincipalKind::User => "User",
                PrincipalKind::Pipeline => "Pipeline",
            }
            .to_owned(),
            issuer: self.config.url.clone(),
            subject,
            name,
            groups,
            claims: BTreeMap::new(),
            expires: claims.get("exp").and_then(numeric_date),
            key_id: peeked.kid.clone(),
        };
        Ok(Verified { principal, claims })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    #[test]
    fn peek_reads_header_and_payload() {
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"none","kid":"k1"}"#),
            b64(r#"{"iss":"https://i","sub":"s"}"#)
        );
        let p = peek(&token).expect("peek");
        assert_eq!(p.alg, "none");
        assert_eq!(p.kid.as_deref(), Some("k1"));
        assert_eq!(p.claims["iss"], "https://i");
        assert_eq!(peek("secret").unwrap_err(), TokenError::NotAJwt);
        assert_eq!(peek("a.b").unwrap_err(), TokenError::NotAJwt);
        assert!(matches!(
            peek("!!.??.x").unwrap_err(),
            TokenError::Malformed(_)
        ));
        assert_eq!(
            peek(&"a.".repeat(MAX_TOKEN_BYTES)).unwrap_err(),
            TokenError::TooLong
        );
    }

    #[test]
    fn symmetric_keys_never_fit() {
        let oct: Jwk =
            serde_json::from_str(r#"{"kty":"oct","k":"c2VjcmV0","kid":"h"}"#).expect("jwk");
        for alg in [SigningAlgorithm::RS256, SigningAlgorithm::ES256] {
            assert!(!key_fits(&oct, alg));
        }
        let ec: Jwk = serde_json::from_str(
            r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"e","use":"sig"}"#,
        )
        .expect("jwk");
        assert!(key_fits(&ec, SigningAlgorithm::ES256));
        assert!(!key_fits(&ec, SigningAlgorithm::ES384));
        assert!(!key_fits(&ec, SigningAlgorithm::RS256));
    }
}
