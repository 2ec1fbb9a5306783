//! Identity: OIDC ID tokens as the PostgreSQL password, validated against a real issuer on
//! loopback (discovery document and JWKS served by the test, keys generated here), and
//! policies applied per session identity (groups, pipeline branches).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::routing::get;
use axum::Router;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_crds::audit::{AuditEvent, Decision, Principal, Protocol};
use portcullis_sidecar::identity::oidc::OidcOptions;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use tokio_postgres::{Client, NoTls};

use crate::common::{Proxy, ProxyBuilder};

pub(crate) const AUDIENCE: &str = "portcullis-db";

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An ES256 signing key generated for the test.
pub(crate) struct TestKey {
    kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl TestKey {
    pub(crate) fn generate(kid: &str) -> TestKey {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generate key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("parse key");
        TestKey {
            kid: kid.to_owned(),
            pkcs8: pkcs8.as_ref().to_vec(),
            public: pair.public_key().as_ref().to_vec(),
        }
    }

    pub(crate) fn jwk(&self) -> Value {
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": b64(&self.public[1..33]),
            "y": b64(&self.public[33..65]),
            "kid": self.kid,
            "use": "sig",
            "alg": "ES256",
        })
    }

    pub(crate) fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_der(&self.pkcs8)).expect("sign")
    }
}

#[derive(Default)]
struct IssuerState {
    url: String,
    keys: Mutex<Vec<Value>>,
    jwks_fetches: AtomicUsize,
}

/// A minimal OIDC issuer on loopback: discovery document and JWKS.
struct Issuer {
    state: Arc<IssuerState>,
    task: tokio::task::JoinHandle<()>,
}

async fn discovery(State(s): State<Arc<IssuerState>>) -> impl axum::response::IntoResponse {
    let body = json!({
        "issuer": s.url,
        "jwks_uri": format!("{}/keys", s.url),
        "id_token_signing_alg_values_supported": ["ES256"],
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn jwks(State(s): State<Arc<IssuerState>>) -> impl axum::response::IntoResponse {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let keys = s.keys.lock().expect("keys").clone();
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "keys": keys }).to_string(),
    )
}

impl Issuer {
    async fn start(keys: &[&TestKey]) -> Issuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind issuer");
        let addr = listener.local_addr().expect("issuer addr");
        let state = Arc::new(IssuerState {
            url: format!("http://127.0.0.1:{}", addr.port()),
            keys: Mutex::new(keys.iter().map(|k| k.jwk()).collect()),
            jwks_fetches: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/keys", get(jwks))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Issuer { state, task }
    }

    fn url(&self) -> &str {
        &self.state.url
    }

    fn publish(&self, keys: &[&TestKey]) {
        *self.state.keys.lock().expect("keys") = keys.iter().map(|k| k.jwk()).collect();
    }

    fn fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Claims of a person's token.
fn person(issuer: &str, name: &str, groups: &[&str]) -> Value {
    json!({
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": format!("{name}-id"),
        "preferred_username": name,
        "groups": groups,
        "iat": now(),
        "nbf": now() - 5,
        "exp": now() + 600,
    })
}

/// Claims of a GitHub Actions token for a branch.
fn pipeline(issuer: &str, branch: &str) -> Value {
    json!({
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": format!("repo:acme/agents:ref:refs/heads/{branch}"),
        "repository": "acme/agents",
        "repository_owner": "acme",
        "ref": format!("refs/heads/{branch}"),
        "ref_type": "branch",
        "workflow": "nightly-migrations",
        "run_id": "4242",
        "actor": "octocat",
        "iat": now(),
        "exp": now() + 600,
    })
}

fn issuer_yaml(url: &str, principal: &str) -> String {
    format!(
        "  issuers:
  - url: {url}
    audiences: [{AUDIENCE}, other-service]
    principal: {principal}
    usernameClaim: {claim}
    groupsClaim: groups
    algorithms: [ES256]
    clockSkewSeconds: 30
",
        claim = if principal == "User" {
            "preferred_username"
        } else {
            "sub"
        }
    )
}

pub(crate) async fn connect_with(
    proxy: &Proxy,
    password: &str,
) -> Result<Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(proxy.port)
        .user("agent")
        .dbname("shop")
        .password(password);
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Connect and expect a refusal at authentication; returns the server's message.
pub(crate) async fn refused(proxy: &Proxy, password: &str) -> String {
    let err = match connect_with(proxy, password).await {
        Ok(_) => panic!("connection with password {password:.40}... was accepted"),
        Err(e) => e,
    };
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"));
    assert_eq!(db.code().code(), "28000", "{}", db.message());
    assert_eq!(db.severity(), "FATAL");
    db.message().to_owned()
}

pub(crate) fn assert_contains(message: &str, needle: &str) {
    assert!(
        message.contains(needle),
        "expected {needle:?} in the client's error: {message}"
    );
}

fn principals(proxy: &Proxy) -> Vec<Option<Principal>> {
    proxy
        .records()
        .into_iter()
        .filter(|r| matches!(r.event, AuditEvent::SessionStart(_)))
        .map(|r| r.identity.principal)
        .collect()
}

fn fast_refresh() -> OidcOptions {
    OidcOptions {
        jwks_min_refresh: Duration::from_millis(100),
        ..OidcOptions::default()
    }
}

#[tokio::test]
async fn identity_tokens_are_validated_and_refusals_say_what_to_send() {
    let k1 = TestKey::generate("key-1");
    let k2 = TestKey::generate("key-2");
    let issuer = Issuer::start(&[&k1]).await;
    let url = issuer.url().to_owned();
    let policy = format!(
        "subjects:
- kind: Group
  name: analysts
- kind: User
  name: dana
identity:
  requireOidc: true
{}",
        issuer_yaml(&url, "User")
    );
    let proxy = ProxyBuilder::default()
        .policy("people-only", &policy)
        .oidc(fast_refresh())
        .start()
        .await;

    // A valid token of a group the policy names.
    let token = k1.sign(&person(&url, "alice", &["analysts"]));
    let client = connect_with(&proxy, &token).await.expect("valid token");
    let row = client
        .query_one("SELECT 1 AS one", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(issuer.fetches(), 1, "keys fetched once and cached");
    // A named user, without the group.
    let client2 = connect_with(&proxy, &k1.sign(&person(&url, "dana", &[])))
        .await
        .expect("named user");
    drop(client2);
    assert_eq!(issuer.fetches(), 1, "cached keys are reused");

    // No token: the refusal says what to send.
    let msg = refused(&proxy, "").await;
    assert_contains(
        &msg,
        &format!("this resource requires an OIDC ID token as the password (issuer {url}, audience {AUDIENCE} or other-service)"),
    );
    // Something that is not a token.
    assert_contains(&refused(&proxy, "hunter2").await, "not an OIDC ID token");

    // Expired beyond the clock skew.
    let mut claims = person(&url, "alice", &["analysts"]);
    claims["exp"] = json!(now() - 600);
    claims["iat"] = json!(now() - 1200);
    assert_contains(&refused(&proxy, &k1.sign(&claims)).await, "has expired");
    // Expired, but within the tolerated skew: accepted.
    claims["exp"] = json!(now() - 5);
    connect_with(&proxy, &k1.sign(&claims))
        .await
        .expect("expired within the clock skew");
    // Not valid yet.
    let mut claims = person(&url, "alice", &["analysts"]);
    claims["nbf"] = json!(now() + 600);
    assert_contains(&refused(&proxy, &k1.sign(&claims)).await, "not valid yet");

    // Wrong audience.
    let mut claims = person(&url, "alice", &["analysts"]);
    claims["aud"] = json!("someone-else");
    let msg = refused(&proxy, &k1.sign(&claims)).await;
    assert_contains(&msg, "audience \"someone-else\" is not accepted");

    // Wrong issuer (signed by a trusted key, claiming another issuer).
    let claims = person("https://evil.example", "alice", &["analysts"]);
    let msg = refused(&proxy, &k1.sign(&claims)).await;
    assert_contains(&msg, "issuer \"https://evil.example\" is not trusted");

    // alg none.
    let claims = person(&url, "alice", &["analysts"]);
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"key-1"}"#),
        b64(claims.to_string().as_bytes())
    );
    let msg = refused(&proxy, &unsigned).await;
    assert_contains(
        &msg,
        "signed with algorithm none, which is not accepted (accepted: ES256)",
    );

    // HS256 signed with the issuer's public key as the HMAC secret (key confusion), both as
    // the raw point and as the published JWK text.
    for secret in [k1.public.clone(), k1.jwk().to_string().into_bytes()] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("key-1".into());
        let forged = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&secret))
            .expect("hs256");
        let msg = refused(&proxy, &forged).await;
        assert_contains(&msg, "signed with algorithm HS256, which is not accepted");
    }

    // A signature by another key under a published key id.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("key-1".into());
    let forged =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(&k2.pkcs8)).expect("sign");
    assert_contains(&refused(&proxy, &forged).await, "signature is not valid");

    // A valid token of a group the policy does not name.
    let msg = refused(&proxy, &k1.sign(&person(&url, "mallory", &["sales"]))).await;
    assert_contains(
        &msg,
        "OIDC identity User mallory (groups sales) is not among the subjects of policy people-only (Group analysts; User dana)",
    );

    // Unknown key id: the sidecar fetches the keys again, still does not find it.
    let before = issuer.fetches();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let msg = refused(&proxy, &k2.sign(&person(&url, "alice", &["analysts"]))).await;
    assert_contains(
        &msg,
        &format!("signing key \"key-2\" is not among the published keys of issuer {url}"),
    );
    assert_eq!(
        issuer.fetches(),
        before + 1,
        "unknown kid fetches the keys again"
    );

    // Rotation: the issuer publishes key-2 and retires key-1.
    issuer.publish(&[&k2]);
    tokio::time::sleep(Duration::from_millis(150)).await;
    connect_with(&proxy, &k2.sign(&person(&url, "alice", &["analysts"])))
        .await
        .expect("rotated key accepted after a refetch");
    assert_eq!(issuer.fetches(), before + 2);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let msg = refused(&proxy, &k1.sign(&person(&url, "alice", &["analysts"]))).await;
    assert_contains(
        &msg,
        "signing key \"key-1\" is not among the published keys",
    );

    // Audit: sessions carry the person behind them, next to the workload.
    let records = proxy.records();
    let start = records
        .iter()
        .find(|r| matches!(r.event, AuditEvent::SessionStart(_)))
        .expect("session start");
    assert_eq!(start.identity.kind, "ServiceAccount");
    assert_eq!(start.identity.name, "agent");
    let p = start.identity.principal.as_ref().expect("principal");
    assert_eq!(p.kind, "User");
    assert_eq!(p.name, "alice");
    assert_eq!(p.subject, "alice-id");
    assert_eq!(p.issuer, url);
    assert_eq!(p.groups, vec!["analysts".to_owned()]);
    assert!(
        p.claims.is_empty(),
        "a person's claims are not recorded: {p:?}"
    );
    let statement = records
        .iter()
        .find(|r| matches!(r.event, AuditEvent::Statement(_)))
        .expect("statement record");
    assert_eq!(statement.identity, start.identity);
    assert!(
        principals(&proxy).iter().all(Option::is_some),
        "every session of this resource has a principal"
    );
    // Refusals are audited with the reason the client saw, never with the token.
    let refusals: Vec<String> = records
        .iter()
        .filter_map(|r| match &r.event {
            AuditEvent::AuthenticationRefused(a) => Some(a.reason.clone()),
            _ => None,
        })
        .collect();
    assert!(refusals.len() >= 12, "{refusals:?}");
    assert!(refusals.iter().any(|r| r.contains("has expired")));
    assert!(refusals.iter().any(|r| r.contains("mallory")));
    assert!(
        !records.iter().any(|r| serde_json::to_string(r)
            .expect("json")
            .contains(&token[token.len() - 40..])),
        "no token in the audit records"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn identity_unknown_key_ids_refetch_at_most_once_per_interval() {
    let k1 = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&k1]).await;
    let url = issuer.url().to_owned();
    let proxy = ProxyBuilder::default()
        .policy(
            "people",
            &format!(
                "identity:\n  requireOidc: true\n{}",
                issuer_yaml(&url, "User")
            ),
        )
        .oidc(OidcOptions {
            jwks_min_refresh: Duration::from_secs(3600),
            ..OidcOptions::default()
        })
        .start()
        .await;
    connect_with(&proxy, &k1.sign(&person(&url, "alice", &[])))
        .await
        .expect("valid token");
    assert_eq!(issuer.fetches(), 1);
    for i in 0..5 {
        let k = TestKey::generate(&format!("made-up-{i}"));
        let msg = refused(&proxy, &k.sign(&person(&url, "alice", &[]))).await;
        assert_contains(&msg, "is not among the published keys");
    }
    assert_eq!(
        issuer.fetches(),
        1,
        "made-up key ids do not flood the issuer"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn identity_group_exempt_from_a_guardrail() {
    let k1 = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&k1]).await;
    let url = issuer.url().to_owned();
    let policy = format!(
        "guardrails:
- name: customers-dpo-only
  tables: [customers]
  action: deny
  message: personal data is for the data protection officer
  exempt:
  - kind: Group
    name: dpo
identity:
{}",
        issuer_yaml(&url, "User")
    );
    let proxy = ProxyBuilder::default()
        .policy("gdpr", &policy)
        .oidc(fast_refresh())
        .start()
        .await;
    let sql = "SELECT count(*) FROM customers";

    let dpo = connect_with(&proxy, &k1.sign(&person(&url, "dora", &["dpo"])))
        .await
        .expect("dpo token");
    let n: i64 = dpo.query_one(sql, &[]).await.expect("dpo reads").get(0);
    assert!(n > 0);

    let sales = connect_with(&proxy, &k1.sign(&person(&url, "sam", &["sales"])))
        .await
        .expect("sales token");
    let err = sales.query_one(sql, &[]).await.expect_err("sales refused");
    let db = err.as_db_error().expect("db error");
    assert_contains(db.message(), "guardrail customers-dpo-only of policy gdpr");
    sales
        .query_one("SELECT 1", &[])
        .await
        .expect("session stays usable");

    // OIDC is optional here: a password that is not a token connects as the workload alone,
    // and the guardrail applies to it.
    let workload = connect_with(&proxy, "-").await.expect("no token");
    assert!(workload.query_one(sql, &[]).await.is_err());
    // But a token that fails validation is refused, not ignored.
    let mut claims = person(&url, "dora", &["dpo"]);
    claims["aud"] = json!("elsewhere");
    assert_contains(&refused(&proxy, &k1.sign(&claims)).await, "audience");

    let statements: Vec<_> = proxy
        .records()
        .into_iter()
        .filter_map(|r| match r.event {
            AuditEvent::Statement(s)
                if s.protocol != Protocol::Execute
                    && s.tables.iter().any(|t| t == "public.customers") =>
            {
                Some((r.identity, s.decision))
            }
            _ => None,
        })
        .collect();
    assert_eq!(statements.len(), 3, "{statements:?}");
    let dpo_record = &statements[0];
    assert_eq!(dpo_record.1, Decision::Allow);
    let p = dpo_record.0.principal.as_ref().expect("principal");
    assert_eq!(
        (p.name.as_str(), p.groups.clone()),
        ("dora", vec!["dpo".to_owned()])
    );
    assert_eq!(statements[1].1, Decision::Deny);
    assert_eq!(
        statements[1].0.principal.as_ref().map(|p| p.name.as_str()),
        Some("sam")
    );
    assert_eq!(statements[2].1, Decision::Deny);
    assert!(statements[2].0.principal.is_none());
    proxy.stop().await;
}

#[tokio::test]
async fn identity_writes_only_from_the_main_branch_pipeline() {
    let k1 = TestKey::generate("ci-key");
    let issuer = Issuer::start(&[&k1]).await;
    let url = issuer.url().to_owned();
    let policy = format!(
        "guardrails:
- name: writes-from-main-only
  statementKinds: [insert, update, delete, merge, truncate]
  action: deny
  message: writes come from the main branch pipeline
  exempt:
  - kind: Pipeline
    claims:
      repository: acme/agents
      ref: refs/heads/main
identity:
{}",
        issuer_yaml(&url, "Pipeline")
    );
    let proxy = ProxyBuilder::default()
        .policy("ci-writes", &policy)
        .oidc(fast_refresh())
        .start()
        .await;
    let setup = "CREATE TEMP TABLE id_writes (v text)";
    let write = "INSERT INTO id_writes VALUES ('x')";

    let main = connect_with(&proxy, &k1.sign(&pipeline(&url, "main")))
        .await
        .expect("main pipeline");
    main.batch_execute(setup).await.expect("temp table");
    let n = main.execute(write, &[]).await.expect("main writes");
    assert_eq!(n, 1);

    let feature = connect_with(&proxy, &k1.sign(&pipeline(&url, "feature/x")))
        .await
        .expect("feature pipeline");
    feature.batch_execute(setup).await.expect("temp table");
    let err = feature
        .execute(write, &[])
        .await
        .expect_err("feature refused");
    let msg = err.as_db_error().expect("db error").message().to_owned();
    assert_contains(
        &msg,
        "statement refused by guardrail writes-from-main-only of policy ci-writes: writes come from the main branch pipeline",
    );
    let rows = feature
        .query("SELECT * FROM id_writes", &[])
        .await
        .expect("reads stay allowed");
    assert!(rows.is_empty());

    let inserts: Vec<_> = proxy
        .records()
        .into_iter()
        .filter_map(|r| match r.event {
            AuditEvent::Statement(s) if s.kinds.iter().any(|k| k == "insert") => {
                Some((r.identity, s.decision))
            }
            _ => None,
        })
        .collect();
    let main_record = inserts
        .iter()
        .find(|(_, d)| *d != Decision::Deny)
        .expect("main's insert");
    let p = main_record.0.principal.as_ref().expect("principal");
    assert_eq!(p.kind, "Pipeline");
    assert_eq!(p.name, "repo:acme/agents:ref:refs/heads/main");
    assert_eq!(
        p.claims.get("repository").map(String::as_str),
        Some("acme/agents")
    );
    assert_eq!(
        p.claims.get("ref").map(String::as_str),
        Some("refs/heads/main")
    );
    assert_eq!(
        p.claims.get("workflow").map(String::as_str),
        Some("nightly-migrations")
    );
    assert_eq!(p.claims.get("run_id").map(String::as_str), Some("4242"));
    let feature_record = inserts
        .iter()
        .find(|(_, d)| *d == Decision::Deny)
        .expect("feature's insert");
    assert_eq!(
        feature_record
            .0
            .principal
            .as_ref()
            .and_then(|p| p.claims.get("ref"))
            .map(String::as_str),
        Some("refs/heads/feature/x")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn identity_from_a_mounted_token_file() {
    let k1 = TestKey::generate("ci-key");
    let issuer = Issuer::start(&[&k1]).await;
    let url = issuer.url().to_owned();
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("token");
    let policy = format!(
        "identity:\n  requireOidc: true\n  tokenFile: {}\n{}",
        file.display(),
        issuer_yaml(&url, "Pipeline")
    );
    let proxy = ProxyBuilder::default()
        .policy("ci", &policy)
        .oidc(fast_refresh())
        .start()
        .await;
    // Before the job writes its token, the password is asked for (and required).
    assert_contains(&refused(&proxy, "").await, "requires an OIDC ID token");
    std::fs::write(&file, format!("{}\n", k1.sign(&pipeline(&url, "main")))).expect("token");
    // With the file in place, a password that is not a token selects it.
    let client = connect_with(&proxy, "-").await.expect("token file");
    client.query_one("SELECT 1", &[]).await.expect("query");
    let last = principals(&proxy).pop().flatten().expect("principal");
    assert_eq!(
        last.claims.get("ref").map(String::as_str),
        Some("refs/heads/main")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn identity_psql_sends_the_token_from_pgpassword() {
    let k1 = TestKey::generate("key-1");
    let issuer = Issuer::start(&[&k1]).await;
    let url = issuer.url().to_owned();
    let proxy = ProxyBuilder::default()
        .policy(
            "people",
            &format!(
                "identity:\n  requireOidc: true\n{}",
                issuer_yaml(&url, "User")
            ),
        )
        .oidc(fast_refresh())
        .start()
        .await;
    let psql = |password: String| {
        let proxy_url = proxy.url();
        tokio::task::spawn_blocking(move || {
            crate::common::run(
                std::process::Command::new("psql")
                    .args(["-X", "-w", "-tA", "-c", "SELECT 'hello'", &proxy_url])
                    .env("PGPASSWORD", password)
                    .env("PGCONNECT_TIMEOUT", "10"),
            )
        })
    };
    let (ok, out, err) = psql(k1.sign(&person(&url, "alice", &["analysts"])))
        .await
        .expect("psql");
    assert!(ok, "psql with a valid token: {err}");
    assert_eq!(out.trim(), "hello");

    let mut claims = person(&url, "alice", &["analysts"]);
    claims["exp"] = json!(now() - 3600);
    let (ok, _, err) = psql(k1.sign(&claims)).await.expect("psql");
    assert!(!ok);
    assert_contains(&err, "FATAL:  OIDC ID token refused: the token has expired");
    assert_contains(
        &err,
        &format!("(issuer {url}, audience {AUDIENCE} or other-service)"),
    );
    proxy.stop().await;
}
