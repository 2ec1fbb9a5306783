//! A bearer token through the parsing that happens before its signature is checked (header,
//! payload, issuer selection) and the claim mappings and validation rules applied after.
//!
//! Properties: nothing panics; a token longer than the limit is refused before decoding.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis_crds::sidecar_config::OidcIssuerConfig;
use portcullis_sidecar::identity::claims::ClaimRules;
use portcullis_sidecar::identity::oidc::{
    claim_string, format_date, numeric_date, peek, TokenError,
};

fn rules() -> &'static [ClaimRules] {
    static RULES: std::sync::OnceLock<Vec<ClaimRules>> = std::sync::OnceLock::new();
    RULES.get_or_init(|| {
        let plain: OidcIssuerConfig =
            serde_yaml::from_str("{url: 'https://sso.example.com', audiences: [portcullis]}")
                .expect("issuer");
        let mapped: OidcIssuerConfig = serde_yaml::from_str(
            r#"
url: https://sso.example.com
audiences: [portcullis]
usernameExpression: 'claims.preferred_username + "@" + claims.tenant'
groupsExpression: 'claims.roles.map(r, "role:" + r)'
claimValidationRules:
- {claim: tenant, requiredValue: acme}
- {expression: 'claims.exp - claims.iat <= 3600', message: short-lived tokens only}
"#,
        )
        .expect("issuer");
        [plain, mapped]
            .iter()
            .map(|c| ClaimRules::new(c).expect("rules"))
            .collect()
    })
}

fuzz_target!(|token: &str| {
    let peeked = match peek(token) {
        Ok(p) => p,
        Err(TokenError::TooLong) => return,
        Err(_) => return,
    };
    for claim in ["exp", "iat", "nbf"] {
        if let Some(secs) = peeked.claims.get(claim).and_then(numeric_date) {
            let _ = format_date(secs);
        }
    }
    for v in peeked.claims.values() {
        let _ = claim_string(v);
    }
    for r in rules() {
        let _ = r.check(&peeked.claims);
        let _ = r.username(&peeked.claims);
        let _ = r.groups(&peeked.claims);
    }
});
