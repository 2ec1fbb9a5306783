//! Red-team attempts (rt-35) against the identity claim: a principal is (issuer, subject),
//! only verified claims name a person, rights end with the token, one token precedence.
//! Each row is an attack; a passing row means the attack was refused. Attacks that
//! succeeded are separate `#[ignore]`d tests marked `BROKEN:`.

use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_sidecar::identity::oidc::OidcOptions;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use crate::common::{Proxy, ProxyBuilder};
use crate::identity::{connect_with, now, AUDIENCE};
use crate::identity_families::{PublishedKey, Realms};

const READ: &str = "SELECT count(*) FROM customers";
const GUARDRAIL: &str = "guardrail customers-dpo-only of policy staff";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

struct Key {
    kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl PublishedKey for Key {
    fn jwk(&self) -> Value {
        Key::jwk(self)
    }
}

impl Key {
    fn generate(kid: &str) -> Key {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generate key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("parse key");
        Key {
            kid: kid.to_owned(),
            pkcs8: pkcs8.as_ref().to_vec(),
            public: pair.public_key().as_ref().to_vec(),
        }
    }
    fn jwk(&self) -> Value {
        json!({
            "kty": "EC", "crv": "P-256",
            "x": b64(&self.public[1..33]), "y": b64(&self.public[33..65]),
            "kid": self.kid, "use": "sig", "alg": "ES256",
        })
    }
    fn sign_with(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &EncodingKey::from_ec_der(&self.pkcs8)).expect("sign")
    }
    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        self.sign_with(&h, claims)
    }
}

fn person(issuer: &str, email: &str, verified: Value, groups: &[&str]) -> Value {
    let mut c = json!({
        "iss": issuer, "aud": AUDIENCE, "sub": format!("{email}-id"), "email": email,
        "groups": groups, "iat": now(), "nbf": now() - 5, "exp": now() + 600,
    });
    if !verified.is_null() {
        c["email_verified"] = verified;
    }
    c
}

fn issuer_yaml(url: &str, username: &str) -> String {
    format!(
        "  - url: {url}
    audiences: [{AUDIENCE}]
    {username}
    groupsClaim: groups
    algorithms: [ES256]
    clockSkewSeconds: 0
"
    )
}

fn guardrail_policy(issuers: &str, exempt_user: &str) -> String {
    format!(
        "guardrails:
- name: customers-dpo-only
  tables: [customers]
  action: deny
  message: personal data is for the data protection officers
  exempt:
  - kind: Group
    name: dpo
  - kind: User
    name: {exempt_user}
identity:
  issuers:
{issuers}"
    )
}

enum Expect {
    /// Refused at connection with a FATAL containing this.
    Refused(&'static str),
    /// Connected, read of customers denied by the guardrail.
    Denied,
    /// Connected and reads (control).
    Reads,
    /// Refused at connection, or connected and denied: either way gains nothing.
    NoGain,
}

async fn attempt(proxy: &Proxy, password: &str, expect: &Expect) -> Result<(), String> {
    let connected = connect_with(proxy, password).await;
    let fatal = |e: &tokio_postgres::Error| {
        e.as_db_error()
            .map(|d| format!("{} {}", d.severity(), d.message()))
            .unwrap_or_else(|| e.to_string())
    };
    match (expect, connected) {
        (Expect::Refused(_) | Expect::NoGain, Err(e)) => {
            let msg = fatal(&e);
            let needle = if let Expect::Refused(n) = expect {
                *n
            } else {
                ""
            };
            if msg.starts_with("FATAL") && msg.contains(needle) {
                Ok(())
            } else {
                Err(format!("refused, but not with FATAL {needle:?}: {msg}"))
            }
        }
        (Expect::Refused(_), Ok(_)) => Err("connected".into()),
        (_, Err(e)) => Err(format!("refused: {}", fatal(&e))),
        (Expect::Denied | Expect::NoGain, Ok(c)) => match c.query_one(READ, &[]).await {
            Err(e) if format!("{e:?}").contains(GUARDRAIL) => Ok(()),
            Err(e) => Err(format!("refused otherwise: {e:?}")),
            Ok(_) => Err("read the customers table".into()),
        },
        (Expect::Reads, Ok(c)) => c
            .query_one(READ, &[])
            .await
            .map(|_| ())
            .map_err(|e| format!("read refused: {e:?}")),
    }
}

fn report(results: &[(String, Result<(), String>)]) {
    for (case, r) in results {
        eprintln!(
            "{:<5} {case}{}",
            if r.is_ok() { "held" } else { "FAIL" },
            r.as_ref()
                .err()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(c, r)| r.as_ref().err().map(|e| format!("{c}: {e}")))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

fn raw_token(header: &Value, claims: &Value, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

#[tokio::test]
async fn identity_redteam_tokens_are_refused() {
    let realms = Realms::start().await;
    let staff = realms.url("staff");
    let partner = realms.url("partner");
    let staff_key = Key::generate("staff-1");
    let staff_two = Key::generate("staff-2");
    let partner_key = Key::generate("partner-1");
    realms.publish("staff", &[&staff_key, &staff_two]);
    realms.publish("partner", &[&partner_key, &staff_key]);

    let proxy = ProxyBuilder::default()
        .policy(
            "staff",
            &guardrail_policy(
                &issuer_yaml(&staff, "usernameClaim: email"),
                "alice@staff.example",
            ),
        )
        .policy(
            "partner",
            &format!(
                "identity:\n  issuers:\n{}",
                issuer_yaml(&partner, "usernameClaim: email")
            ),
        )
        .oidc(OidcOptions {
            jwks_min_refresh: Duration::from_millis(100),
            jwks_max_age: Duration::from_secs(1),
            ..OidcOptions::default()
        })
        .start()
        .await;

    let yes = json!(true);
    let dora = || person(&staff, "dora@staff.example", json!(true), &["dpo"]);
    let attacker = Key::generate("staff-1");
    let mut rows: Vec<(String, String, Expect)> = Vec::new();
    let mut row = |case: &str, token: String, e: Expect| rows.push((case.to_owned(), token, e));

    row(
        "control: staff dpo reads",
        staff_key.sign(&dora()),
        Expect::Reads,
    );
    // Issuer spelling variants: the token's iss must be exactly the trusted URL.
    for (label, iss) in [
        ("iss with trailing slash", format!("{staff}/")),
        (
            "iss upper-case host part",
            staff.replace("http://127.0.0.1", "HTTP://127.0.0.1"),
        ),
        (
            "iss percent-encoded path",
            staff.replace("/realms/staff", "/realms/%73taff"),
        ),
        ("iss with userinfo", staff.replace("http://", "http://x@")),
        (
            "iss with :80 default port",
            staff.replace("127.0.0.1:", "127.0.0.1:80"),
        ),
        ("iss with trailing whitespace", format!("{staff} ")),
        ("iss as array [staff]", String::new()),
    ] {
        let mut c = dora();
        c["iss"] = if iss.is_empty() {
            json!([staff.clone()])
        } else {
            json!(iss)
        };
        row(label, staff_key.sign(&c), Expect::Refused(""));
    }
    // Algorithm and key confusion.
    row(
        "alg none, empty signature",
        raw_token(&json!({"alg": "none", "kid": "staff-1"}), &dora(), ""),
        Expect::Refused(""),
    );
    row(
        "alg None (case) ",
        raw_token(&json!({"alg": "None", "kid": "staff-1"}), &dora(), ""),
        Expect::Refused(""),
    );
    {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("staff-1".into());
        let secret = serde_json::to_vec(&staff_key.jwk()).expect("jwk");
        let t = jsonwebtoken::encode(&h, &dora(), &EncodingKey::from_secret(&secret)).expect("hs");
        row(
            "HS256 with the public JWK as secret",
            t,
            Expect::Refused(""),
        );
        let t = jsonwebtoken::encode(&h, &dora(), &EncodingKey::from_secret(&staff_key.public))
            .expect("hs");
        row(
            "HS256 with the raw public key as secret",
            t,
            Expect::Refused(""),
        );
    }
    row(
        "attacker key reusing kid staff-1",
        attacker.sign(&dora()),
        Expect::Refused(""),
    );
    {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("staff-1".into());
        h.jku = Some(format!("{partner}/keys"));
        row(
            "jku header pointing at partner key set, signed by partner",
            partner_key.sign_with(&h, &dora()),
            Expect::Refused(""),
        );
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("attacker".into());
        h.jwk = serde_json::from_value(attacker.jwk()).ok();
        row(
            "embedded jwk header with the attacker's key",
            attacker.sign_with(&h, &dora()),
            Expect::Refused(""),
        );
        let mut h = Header::new(Algorithm::ES256);
        h.kid = None;
        row(
            "no kid while the issuer publishes two keys",
            staff_key.sign_with(&h, &dora()),
            Expect::Refused(""),
        );
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("partner-1".into());
        row(
            "partner kid and key with staff iss",
            partner_key.sign_with(&h, &dora()),
            Expect::Refused(""),
        );
    }
    // Audience.
    for (label, aud) in [
        ("aud empty array", json!([])),
        ("aud another client", json!("billing")),
        (
            "aud [this] plus azp other, single element",
            json!([AUDIENCE]),
        ),
        (
            "aud duplicate [this, this] without azp",
            json!([AUDIENCE, AUDIENCE]),
        ),
        ("aud with trailing space", json!(format!("{AUDIENCE} "))),
        ("aud upper-case", json!(AUDIENCE.to_uppercase())),
    ] {
        let mut c = dora();
        c["aud"] = aud;
        if label.contains("azp other") {
            c["azp"] = json!("billing");
        }
        let e = if label.contains("single element") || label.contains("duplicate") {
            // Not an attack on another audience: only says whether it connects at all.
            Expect::NoGain
        } else {
            Expect::Refused("")
        };
        // A single-element aud naming us is legitimately ours; dpo may read.
        let e = if label.contains("single element") {
            Expect::Reads
        } else {
            e
        };
        row(label, staff_key.sign(&c), e);
    }
    {
        let mut c = dora();
        c["aud"] = json!([AUDIENCE, "billing"]);
        c["azp"] = json!([AUDIENCE]);
        row(
            "several audiences, azp as array",
            staff_key.sign(&c),
            Expect::Refused("azp"),
        );
    }
    // Verified claims.
    for (label, v) in [
        ("email_verified 1", json!(1)),
        ("email_verified \"TRUE\"", json!("TRUE")),
        ("email_verified [true]", json!([true])),
        ("email_verified {\"value\":true}", json!({"value": true})),
    ] {
        row(
            label,
            staff_key.sign(&person(&staff, "alice@staff.example", v, &[])),
            Expect::Refused("email is not verified"),
        );
    }
    for (label, email) in [
        (
            "email upper-case ALICE@STAFF.EXAMPLE (verified)",
            "ALICE@STAFF.EXAMPLE",
        ),
        (
            "email with trailing space (verified)",
            "alice@staff.example ",
        ),
        (
            "email with fullwidth @ (verified)",
            "alice\u{FF20}staff.example",
        ),
        (
            "email with Cyrillic a (verified)",
            "\u{0430}lice@staff.example",
        ),
    ] {
        row(
            label,
            staff_key.sign(&person(&staff, email, yes.clone(), &[])),
            Expect::Denied,
        );
    }
    // Groups in other shapes.
    for (label, g) in [
        ("groups as string \"dpo \"", json!("dpo ")),
        ("groups nested [[\"dpo\"]]", json!([["dpo"]])),
        ("groups [\"DPO\"]", json!(["DPO"])),
        ("groups [{\"name\":\"dpo\"}]", json!([{"name": "dpo"}])),
        ("groups [\"*\"]", json!(["*"])),
    ] {
        let mut c = person(&staff, "sam@staff.example", yes.clone(), &[]);
        c["groups"] = g;
        row(label, staff_key.sign(&c), Expect::NoGain);
    }
    // Partner realm impersonating staff people.
    row(
        "partner alice@staff.example with group dpo and staff azp",
        {
            let mut c = person(&partner, "alice@staff.example", yes.clone(), &["dpo"]);
            c["azp"] = json!(AUDIENCE);
            partner_key.sign(&c)
        },
        Expect::Denied,
    );
    // Two issuers sharing a key (a multi-tenant IdP with one key set): the signed iss decides.
    {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("staff-1".into());
        row(
            "partner iss signed by a key both realms publish (shared kid staff-1)",
            staff_key.sign_with(
                &h,
                &person(&partner, "dora@staff.example", yes.clone(), &["dpo"]),
            ),
            Expect::Denied,
        );
    }
    // NumericDate edge cases.
    for (label, claim, v) in [
        ("exp negative", "exp", json!(-1)),
        ("exp NaN-like string", "exp", json!("NaN")),
        ("exp null", "exp", Value::Null),
        ("exp in the past as float", "exp", json!(1.5)),
        ("exp just expired", "exp", json!(now() - 1)),
        ("nbf in the future", "nbf", json!(now() + 120)),
        ("iat one minute ahead", "iat", json!(now() + 60)),
        ("exp huge 1e300 float", "exp", json!(1e300)),
        ("exp as object", "exp", json!({"$numberLong": "9999999999"})),
    ] {
        let mut c = dora();
        c[claim] = v;
        row(label, staff_key.sign(&c), Expect::Refused(""));
    }
    {
        let mut c = dora();
        c.as_object_mut().expect("obj").remove("exp");
        row("exp missing", staff_key.sign(&c), Expect::Refused(""));
        let mut c = dora();
        c.as_object_mut().expect("obj").remove("sub");
        row("sub missing", staff_key.sign(&c), Expect::Refused(""));
        let mut c = dora();
        c["sub"] = json!("");
        row("sub empty", staff_key.sign(&c), Expect::Refused(""));
    }
    // Huge (but integral) NumericDates: must be refused or survived, and the sidecar must keep
    // serving afterwards.
    for (label, claim, v) in [
        (
            "exp 1e19 (beyond i64 seconds)",
            "exp",
            json!(10_000_000_000_000_000_000_u64),
        ),
        (
            "nbf 1e19 (beyond i64 seconds)",
            "nbf",
            json!(10_000_000_000_000_000_000_u64),
        ),
        ("exp u64::MAX", "exp", json!(u64::MAX)),
        ("iat u64::MAX", "iat", json!(u64::MAX)),
    ] {
        let mut c = dora();
        c[claim] = v;
        let token = staff_key.sign(&c);
        let outcome = match connect_with(&proxy, &token).await {
            Ok(cl) => format!(
                "connected; read: {:?}",
                cl.query_one(READ, &[])
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            ),
            Err(e) => e.as_db_error().map_or_else(
                || format!("no FATAL: {e}"),
                |d| format!("{} {}", d.severity(), d.message()),
            ),
        };
        eprintln!("info  {label}: {outcome}");
        row(
            &format!("after {label}: sidecar still serves (control)"),
            staff_key.sign(&dora()),
            Expect::Reads,
        );
    }
    // Precedence / password shapes.
    row("password of whitespace only", " \t ".into(), Expect::Denied);
    row(
        "token with surrounding whitespace of the partner realm",
        format!(
            " {} ",
            partner_key.sign(&person(&partner, "m@p.example", yes.clone(), &["dpo"]))
        ),
        Expect::Denied,
    );
    row(
        "two tokens joined by a space (partner first)",
        format!(
            "{} {}",
            partner_key.sign(&person(&partner, "m@p.example", yes.clone(), &["dpo"])),
            staff_key.sign(&dora())
        ),
        // Not a JWT at all: the workload (documented), which the guardrail denies.
        Expect::NoGain,
    );
    row(
        "Bearer-prefixed staff token with a forged signature",
        {
            let t = staff_key.sign(&dora());
            let (hp, _) = t.rsplit_once('.').expect("jwt");
            let mut forged = dora();
            forged["email"] = json!("alice@staff.example");
            let header = hp.split('.').next().expect("h");
            format!(
                "Bearer {header}.{}.{}",
                b64(forged.to_string().as_bytes()),
                t.rsplit_once('.').expect("s").1
            )
        },
        Expect::Refused(""),
    );

    let mut results = Vec::new();
    for (case, token, expect) in &rows {
        results.push((case.clone(), attempt(&proxy, token, expect).await));
    }

    // Rights end with the token, whatever the session is doing.
    let short = |secs: u64| {
        let mut c = dora();
        c["exp"] = json!(now() + secs);
        staff_key.sign(&c)
    };
    let ended = |r: Result<(), String>| r;
    // idle in a transaction past expiry, then a read
    let r = match connect_with(&proxy, &short(2)).await {
        Err(e) => Err(format!("refused: {e}")),
        Ok(c) => {
            let _ = c.batch_execute("BEGIN").await;
            tokio::time::sleep(Duration::from_secs(4)).await;
            match c.query_one(READ, &[]).await {
                Ok(_) => Err("read after expiry inside a transaction".into()),
                Err(_) => Ok(()),
            }
        }
    };
    results.push((
        "idle in transaction past expiry, then read".into(),
        ended(r),
    ));
    // statement prepared before expiry, executed after
    let r = match connect_with(&proxy, &short(2)).await {
        Err(e) => Err(format!("refused: {e}")),
        Ok(c) => match c.prepare(READ).await {
            Err(e) => Err(format!("prepare refused: {e:?}")),
            Ok(st) => {
                let _ = c.query_one(&st, &[]).await;
                tokio::time::sleep(Duration::from_secs(4)).await;
                match c.query_one(&st, &[]).await {
                    Ok(_) => Err("prepared read after expiry".into()),
                    Err(_) => Ok(()),
                }
            }
        },
    };
    results.push(("prepared statement executed past expiry".into(), r));
    // a COPY FROM STDIN left open across the expiry
    let r = match connect_with(&proxy, &short(2)).await {
        Err(e) => Err(format!("refused: {e}")),
        Ok(c) => {
            let _ = c.batch_execute("CREATE TEMP TABLE rt_copy (v text)").await;
            match c
                .copy_in::<_, bytes::Bytes>("COPY rt_copy FROM STDIN")
                .await
            {
                Err(_) => Ok(()), // COPY not allowed at all: nothing gained
                Ok(sink) => {
                    use futures_util::SinkExt;
                    let mut sink = Box::pin(sink);
                    let _ = sink.send(bytes::Bytes::from_static(b"a\n")).await;
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    let _ = sink.send(bytes::Bytes::from_static(b"b\n")).await;
                    match sink.as_mut().finish().await {
                        Ok(n) => Err(format!("COPY of {n} rows completed after expiry")),
                        Err(_) => Ok(()),
                    }
                }
            }
        }
    };
    results.push(("COPY FROM STDIN held open across expiry".into(), r));
    // a long query started just before expiry (a cursor of pg_sleep rows)
    let r = match connect_with(&proxy, &short(2)).await {
        Err(e) => Err(format!("refused: {e}")),
        Ok(c) => match c
            .query("SELECT pg_sleep(1), g FROM generate_series(1,5) g", &[])
            .await
        {
            Ok(rows) => Err(format!("{} rows after expiry", rows.len())),
            Err(_) => Ok(()),
        },
    };
    results.push(("row stream crossing the expiry".into(), r));

    // A session opened with a key the issuer then withdraws (informational, see report).
    match connect_with(&proxy, &{
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("staff-2".into());
        staff_two.sign_with(&h, &dora())
    })
    .await
    {
        Err(e) => eprintln!("info  withdrawn key session: refused at start {e}"),
        Ok(c) => {
            let before = c.query_one(READ, &[]).await.is_ok();
            realms.publish("staff", &[&staff_key]);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            // a new session triggers the key-set read
            let _ = connect_with(&proxy, &staff_key.sign(&dora())).await;
            let mut h = Header::new(Algorithm::ES256);
            h.kid = Some("staff-2".into());
            let fresh = attempt(
                &proxy,
                &staff_two.sign_with(&h, &dora()),
                &Expect::Refused("not among the published keys"),
            )
            .await;
            results.push((
                "a new session with the withdrawn key after the next read".into(),
                fresh,
            ));
            let after = c.query_one(READ, &[]).await;
            eprintln!(
                "info  withdrawn key session: read before withdrawal {before}, after the next key-set read: {:?}",
                after.map(|_| ()).map_err(|e| e.to_string())
            );
        }
    }

    report(&results);
}

/// A username expression that reads `email` without spelling it (`"em" + "ail"`): the
/// verified-email rule must still apply.
async fn cel_email_proxy(realms: &Realms, expr: &str) -> Proxy {
    let url = realms.url("cel");
    ProxyBuilder::default()
        .policy(
            "staff",
            &guardrail_policy(
                &issuer_yaml(&url, &format!("usernameExpression: '{expr}'")),
                "alice@staff.example",
            ),
        )
        .start()
        .await
}

#[tokio::test]
async fn identity_redteam_cel_email_spelled_plainly_is_checked() {
    let realms = Realms::start().await;
    let key = Key::generate("cel-1");
    realms.publish("cel", &[&key]);
    let url = realms.url("cel");
    let proxy = cel_email_proxy(&realms, "claims.email").await;
    let t = key.sign(&person(&url, "alice@staff.example", json!(false), &[]));
    let r = attempt(&proxy, &t, &Expect::Refused("email is not verified")).await;
    report(&[("usernameExpression claims.email, unverified".into(), r)]);
}

// A usernameExpression that reads `email` without spelling the word (CEL string
// concatenation or an escape) must not name a person by an unverified address: expressions
// are evaluated over the claims without `email` unless email_verified is true, so a token
// with email_verified false gains nothing (it was once decided on the expression's text).
#[tokio::test]
async fn identity_redteam_cel_email_by_concatenation() {
    let realms = Realms::start().await;
    let key = Key::generate("cel-1");
    realms.publish("cel", &[&key]);
    let url = realms.url("cel");
    let mut results = Vec::new();
    for expr in [r#"claims["em" + "ail"]"#, r#"claims["\x65mail"]"#] {
        let proxy = cel_email_proxy(&realms, expr).await;
        let t = key.sign(&person(&url, "alice@staff.example", json!(false), &[]));
        // Held: refused as unverified, or at least no exemption (guardrail denies).
        let r = attempt(&proxy, &t, &Expect::NoGain).await;
        results.push((
            format!("usernameExpression {expr}, email_verified false"),
            r,
        ));
    }
    report(&results);
}

/// curl against the sidecar's Kubernetes port: (HTTP status, body).
async fn curl(port: u16, path: &str, headers: Vec<String>, extra: Vec<String>) -> (u16, String) {
    let url = format!("https://127.0.0.1:{port}{path}");
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sk", "-m", "20", "-o", "-", "-w", "\n%{http_code}"]);
        for h in &headers {
            cmd.args(["-H", h]);
        }
        cmd.args(&extra);
        cmd.arg(&url);
        let out = cmd.output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    })
    .await
    .expect("curl task")
}

#[tokio::test]
async fn identity_redteam_kubernetes_proxy() {
    let h = portcullis_e2e::harness();
    let realms = Realms::start().await;
    let staff = realms.url("staff");
    let partner = realms.url("partner");
    let staff_key = Key::generate("staff-1");
    let partner_key = Key::generate("partner-1");
    realms.publish("staff", &[&staff_key]);
    realms.publish("partner", &[&partner_key]);
    let (sidecar, port, _dir, ns) = kube_sidecar(h, &staff, &partner).await;
    let st = staff_key.sign(&person(&staff, "dora@staff.example", json!(true), &["dpo"]));
    let pt = partner_key.sign(&person(
        &partner,
        "dora@staff.example",
        json!(true),
        &["dpo"],
    ));
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    let ws = |t: &str| {
        format!(
            "Sec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.{}, v5.channel.k8s.io",
            b64(t.as_bytes())
        )
    };
    let sa_user = format!("system:serviceaccount:{ns}:agent");
    let review = "/apis/authentication.k8s.io/v1/selfsubjectreviews";
    let post = || {
        vec![
            "-X".to_owned(),
            "POST".to_owned(),
            "-H".to_owned(),
            "Content-Type: application/json".to_owned(),
            "-d".to_owned(),
            r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#.to_owned(),
        ]
    };
    enum K {
        /// Not 2xx.
        Refused,
        /// 2xx and the API server saw the workload's service account, nobody else.
        AsWorkload,
    }
    /// Family, attempt, headers, extra curl arguments, expected outcome.
    type Row<'a> = (&'a str, &'a str, Vec<String>, Vec<String>, K);
    let rows: Vec<Row> = vec![
        (
            "control: staff bearer, SelfSubjectReview shows the workload",
            review,
            vec![bearer(&st)],
            post(),
            K::AsWorkload,
        ),
        (
            "no token at all (requireOidc)",
            review,
            vec![],
            post(),
            K::Refused,
        ),
        (
            "partner bearer (requireOidc trusts staff only)",
            review,
            vec![bearer(&pt)],
            post(),
            K::Refused,
        ),
        (
            "staff token in ?access_token= only",
            "/api?access_token=X",
            vec![],
            vec![],
            K::Refused,
        ),
        (
            "staff token in WebSocket subprotocol only",
            "/api",
            vec![ws(&st)],
            vec![],
            K::Refused,
        ),
        (
            "partner bearer + staff token in WebSocket subprotocol",
            "/api",
            vec![bearer(&pt), ws(&st)],
            vec![],
            K::Refused,
        ),
        (
            "staff token as Basic password",
            "/api",
            vec![],
            vec!["-u".into(), format!("x:{st}")],
            K::Refused,
        ),
        (
            "Authorization: Basic base64(staff token)",
            "/api",
            vec![format!(
                "Authorization: Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("x:{st}"))
            )],
            vec![],
            K::Refused,
        ),
        (
            "two Authorization headers: partner then staff",
            "/api",
            vec![bearer(&pt), bearer(&st)],
            vec![],
            K::Refused,
        ),
        // Not refused (the first header is used), but gains nothing: the API server sees the workload.
        (
            "two Authorization headers: staff then partner",
            review,
            vec![bearer(&st), bearer(&pt)],
            post(),
            K::AsWorkload,
        ),
        (
            "Authorization: Bearer - (not a JWT, requireOidc)",
            "/api",
            vec![bearer("-")],
            vec![],
            K::Refused,
        ),
        (
            "Authorization: Bearer <partner>. (trailing dot)",
            "/api",
            vec![bearer(&format!("{pt}."))],
            vec![],
            K::Refused,
        ),
        (
            "Authorization: Bearer <partner> <staff>",
            "/api",
            vec![bearer(&format!("{pt} {st}"))],
            vec![],
            K::Refused,
        ),
        (
            "Proxy-Authorization with staff token, no Authorization",
            "/api",
            vec![format!("Proxy-Authorization: Bearer {st}")],
            vec![],
            K::Refused,
        ),
        (
            "impersonate-user (lower case)",
            review,
            vec![bearer(&st), "impersonate-user: system:admin".into()],
            post(),
            K::Refused,
        ),
        (
            "IMPERSONATE-GROUP (upper case)",
            review,
            vec![bearer(&st), "IMPERSONATE-GROUP: system:masters".into()],
            post(),
            K::Refused,
        ),
        (
            "Impersonate-Uid alone",
            review,
            vec![bearer(&st), "Impersonate-Uid: 1234".into()],
            post(),
            K::Refused,
        ),
        (
            "Impersonate-Extra-scopes alone",
            review,
            vec![bearer(&st), "Impersonate-Extra-scopes: view".into()],
            post(),
            K::Refused,
        ),
        (
            "X-Remote-User / X-Remote-Group / X-Remote-Extra",
            review,
            vec![
                bearer(&st),
                "X-Remote-User: system:admin".into(),
                "x-remote-group: system:masters".into(),
                "X-Remote-Extra-Foo: bar".into(),
            ],
            post(),
            K::AsWorkload,
        ),
        (
            "header folded via underscore Impersonate_User",
            review,
            vec![bearer(&st), "Impersonate_User: system:admin".into()],
            post(),
            K::AsWorkload,
        ),
    ];
    let mut results = Vec::new();
    for (label, path, headers, extra, expect) in rows {
        let path = if path.contains("access_token=X") {
            format!("/api?access_token={st}")
        } else {
            path.to_owned()
        };
        let (code, body) = curl(port, &path, headers, extra).await;
        let ok = (200..300).contains(&code);
        let r = match expect {
            K::Refused if !ok => Ok(()),
            K::Refused => Err(format!("{code}: {}", &body[..body.len().min(300)])),
            K::AsWorkload
                if ok
                    && body.contains(&sa_user)
                    && !body.contains("system:admin")
                    && !body.contains("system:masters")
                    && !body.contains("scopes") =>
            {
                Ok(())
            }
            K::AsWorkload => Err(format!("{code}: {}", &body[..body.len().min(300)])),
        };
        results.push((label.to_owned(), r));
    }
    // Keep-alive: the second request on the same connection brings no token, or the
    // partner's; each request is checked on its own.
    for (label, second) in [
        ("keep-alive: second request without a token", vec![]),
        (
            "keep-alive: second request with the partner token",
            vec![bearer(&pt)],
        ),
    ] {
        let url = format!("https://127.0.0.1:{port}/api");
        let first = bearer(&st);
        let out = tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new("curl");
            cmd.args(["-skv", "-m", "20", "-o", "/dev/null", "-w", "%{http_code} "]);
            cmd.args([
                "-H",
                &first,
                &url,
                "--next",
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ]);
            for h in &second {
                cmd.args(["-H", h]);
            }
            cmd.arg(&url);
            cmd.output().expect("curl")
        })
        .await
        .expect("curl task");
        let codes = String::from_utf8_lossy(&out.stdout).to_string();
        let reused = String::from_utf8_lossy(&out.stderr).contains("Re-using existing");
        let mut it = codes.split_whitespace();
        let (a, b) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
        results.push((
            format!("{label} (connection reused: {reused})"),
            if a.starts_with('2') && !b.starts_with('2') {
                Ok(())
            } else {
                Err(format!("codes {a} {b}"))
            },
        ));
    }
    // Withdrawn key: each request is checked, so after the next key-set read the same token
    // is refused.
    let (code, _) = curl(port, "/api", vec![bearer(&st)], vec![]).await;
    let control = if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("{code}"))
    };
    results.push(("control: staff token before withdrawal".into(), control));
    let new_key = Key::generate("staff-9");
    realms.publish("staff", &[&new_key]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, body) = curl(port, "/api", vec![bearer(&st)], vec![]).await;
    results.push((
        "same staff token after its key was withdrawn (next read)".into(),
        if (200..300).contains(&code) {
            Err(format!("{code}: {body}"))
        } else {
            Ok(())
        },
    ));
    sidecar.shutdown().await;
    report(&results);
}

/// A Kubernetes resource in front of the harness API server; requireOidc trusts staff only.
async fn kube_sidecar(
    h: &portcullis_e2e::Harness,
    staff: &str,
    partner: &str,
) -> (portcullis_sidecar::Sidecar, u16, tempfile::TempDir, String) {
    let ns = h.namespace("identity-rt").await;
    h.service_account(&ns, "agent").await;
    let sa_token = h.token(&ns, "agent", None, None).await;
    let dir = tempfile::tempdir().expect("dir");
    let sa_file = dir.path().join("sa-token");
    std::fs::write(&sa_file, sa_token).expect("sa token");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, cert.cert.pem()).expect("cert file");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("key file");
    let api: http::Uri = h.apiserver_url().parse().expect("api url");
    let issuer = |url: &str| {
        format!(
            "    - url: {url}\n      audiences: [{AUDIENCE}]\n      usernameClaim: email\n      algorithms: [ES256]\n      clockSkewSeconds: 0\n"
        )
    };
    let yaml = format!(
        "apiVersion: portcullis.dev/sidecar-config/v1alpha1
namespace: {ns}
adminListen: 127.0.0.1:0
audit:
  spoolDir: {spool}
resources:
- name: cluster-api
  type: kubernetes
  listenPort: 0
  upstream:
    host: {host}
    port: {port}
    tlsMode: verify-full
    caFile: {ca}
  serverTls:
    certFile: {cert}
    keyFile: {key}
  tokenFile: {sa}
  policies: [staff, partner]
policies:
- name: staff
  identity:
    requireOidc: true
    issuers:
{staff_issuer}- name: partner
  identity:
    issuers:
{partner_issuer}",
        spool = dir.path().join("spool").display(),
        host = api.host().expect("host"),
        port = api.port_u16().unwrap_or(443),
        ca = h.ca_file(),
        cert = cert_file.display(),
        key = key_file.display(),
        sa = sa_file.display(),
        staff_issuer = issuer(staff),
        partner_issuer = issuer(partner),
    );
    let config =
        portcullis_crds::SidecarConfig::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let mut options = portcullis_sidecar::config::Options::service_account(&ns, "agent");
    options.oidc = OidcOptions {
        jwks_min_refresh: Duration::from_millis(100),
        jwks_max_age: Duration::from_secs(1),
        ..OidcOptions::default()
    };
    let sidecar = portcullis_sidecar::start(config, options)
        .await
        .expect("sidecar starts");
    let port = sidecar.addr("cluster-api").expect("listening").port();

    for args in [
        vec![
            "create",
            "role",
            "watch",
            "--verb=get,list,watch",
            "--resource=pods",
        ],
        vec!["create", "rolebinding", "watch", "--role=watch"],
    ] {
        let mut args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        if args[1] == "rolebinding" {
            args.push(format!("--serviceaccount={ns}:agent"));
        }
        args.extend(["-n".to_owned(), ns.clone()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = h.kubectl(&refs);
        assert!(out.status.success(), "{out:?}");
    }
    (sidecar, port, dir, ns)
}

// A Kubernetes watch opened with a token whose signing key the issuer then withdraws must
// stop at the next key-set read, as a fresh request with the same token is refused: a
// stream bounded by the token's exp alone would last as long as a holder of a compromised
// key chooses.
#[tokio::test]
async fn identity_redteam_kube_watch_outlives_withdrawn_key() {
    let h = portcullis_e2e::harness();
    let realms = Realms::start().await;
    let staff = realms.url("staff");
    let partner = realms.url("partner");
    let staff_key = Key::generate("staff-1");
    let partner_key = Key::generate("partner-1");
    realms.publish("staff", &[&staff_key]);
    realms.publish("partner", &[&partner_key]);
    let (sidecar, port, _dir, ns) = kube_sidecar(h, &staff, &partner).await;
    let st = staff_key.sign(&person(&staff, "dora@staff.example", json!(true), &["dpo"]));
    let watch = format!("/api/v1/namespaces/{ns}/pods?watch=1&timeoutSeconds=14");
    let started = std::time::Instant::now();
    let auth = format!("Authorization: Bearer {st}");
    let w = tokio::spawn(async move { curl(port, &watch, vec![auth], vec![]).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    realms.publish("staff", &[&Key::generate("staff-9")]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, _) = curl(
        port,
        "/api",
        vec![format!("Authorization: Bearer {st}")],
        vec![],
    )
    .await;
    assert!(
        !(200..300).contains(&code),
        "a fresh request with the withdrawn key: {code}"
    );
    let (code, _) = w.await.expect("watch");
    let took = started.elapsed();
    sidecar.shutdown().await;
    assert!(
        took < Duration::from_secs(8),
        "the watch (status {code}) ran {took:?} after its key was withdrawn at 1.5s"
    );
}

// A PostgreSQL session opened with a token whose signing key the issuer then withdraws
// must lose the person's rights at the next key-set read (as new sessions with that token
// are refused), not at the token's exp, which a holder of a compromised key picks (here ten
// years).
#[tokio::test]
async fn identity_redteam_pg_session_outlives_withdrawn_key() {
    let realms = Realms::start().await;
    let staff = realms.url("staff");
    let stolen = Key::generate("staff-1");
    let successor = Key::generate("staff-2");
    realms.publish("staff", &[&stolen, &successor]);
    let proxy = ProxyBuilder::default()
        .policy(
            "staff",
            &guardrail_policy(
                &issuer_yaml(&staff, "usernameClaim: email"),
                "alice@staff.example",
            ),
        )
        .oidc(OidcOptions {
            jwks_min_refresh: Duration::from_millis(100),
            jwks_max_age: Duration::from_secs(1),
            ..OidcOptions::default()
        })
        .start()
        .await;
    let mut forged = person(&staff, "dora@staff.example", json!(true), &["dpo"]);
    forged["exp"] = json!(now() + 10 * 365 * 86400);
    let c = connect_with(&proxy, &stolen.sign(&forged))
        .await
        .expect("connect");
    c.query_one(READ, &[])
        .await
        .expect("dpo reads before the withdrawal");
    realms.publish("staff", &[&successor]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The next key-set read happens here; the withdrawn key is refused for new sessions.
    let fresh = attempt(
        &proxy,
        &stolen.sign(&forged),
        &Expect::Refused("not among the published keys"),
    )
    .await;
    assert!(fresh.is_ok(), "{fresh:?}");
    let after = c.query_one(READ, &[]).await;
    assert!(
        after.is_err(),
        "the session still reads customers as dpo after its key was withdrawn"
    );
}

// Robustness, not a gain of rights: a signed token whose exp/nbf/iat lies beyond what
// SystemTime can hold (1e19 seconds, u64::MAX) makes the session worker panic ("overflow when
// adding duration to instant": UNIX_EPOCH + Duration in the expiry deadline and in the error
// text of an immature token); the client sees the connection closed with no FATAL and no
// reason. The sidecar keeps serving other sessions.
#[tokio::test]
async fn identity_redteam_huge_numeric_dates_get_a_clear_error() {
    let realms = Realms::start().await;
    let staff = realms.url("staff");
    let key = Key::generate("staff-1");
    realms.publish("staff", &[&key]);
    let proxy = ProxyBuilder::default()
        .policy(
            "staff",
            &guardrail_policy(
                &issuer_yaml(&staff, "usernameClaim: email"),
                "alice@staff.example",
            ),
        )
        .start()
        .await;
    let mut results = Vec::new();
    for (claim, v) in [
        ("exp", json!(10_000_000_000_000_000_000_u64)),
        ("nbf", json!(10_000_000_000_000_000_000_u64)),
        ("exp", json!(u64::MAX)),
    ] {
        let mut c = person(&staff, "dora@staff.example", json!(true), &["dpo"]);
        c[claim] = v.clone();
        let r = match connect_with(&proxy, &key.sign(&c)).await {
            Ok(cl) => cl.query_one(READ, &[]).await.map(|_| ()).map_err(|e| {
                e.as_db_error()
                    .map_or_else(|| format!("no FATAL: {e}"), |d| d.message().to_owned())
            }),
            Err(e) => match e.as_db_error() {
                Some(d) if d.severity() == "FATAL" => Ok(()),
                _ => Err(format!("no FATAL: {e}")),
            },
        };
        results.push((format!("{claim} = {v}"), r));
    }
    report(&results);
}
