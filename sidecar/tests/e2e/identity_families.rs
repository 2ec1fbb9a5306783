//! Identity attacks, one row per attempt, each named by the family it belongs to: an OIDC
//! issuer of the test's own serves two realms (`staff` and `partner`) under one HTTP server,
//! two policies on one database each trust one realm, and tokens of every shape try to gain
//! what the other realm's people are granted, to name a person by an address nobody
//! verified, to outlive their expiry, to slip past NumericDate, audience and key checks, to
//! win over the token the client sent, or to connect from off the pod.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::header;
use axum::routing::get;
use axum::Router;
use portcullis_crds::audit::{AuditEvent, IdentitySource};
use portcullis_sidecar::identity::oidc::OidcOptions;
use serde_json::{json, Value};

use crate::common::{Proxy, ProxyBuilder};
use crate::identity::{connect_with, now, TestKey, AUDIENCE};

const STAFF_READ: &str = "SELECT count(*) FROM customers";
const GUARDRAIL: &str = "guardrail customers-dpo-only of policy staff";

/// A signing key an issuer realm publishes in its key set.
pub(crate) trait PublishedKey {
    /// The key's public JWK.
    fn jwk(&self) -> Value;
}

impl PublishedKey for TestKey {
    fn jwk(&self) -> Value {
        TestKey::jwk(self)
    }
}

struct RealmsState {
    base: String,
    keys: Mutex<HashMap<String, Vec<Value>>>,
}

/// An OIDC issuer with several realms on loopback (`<base>/realms/<name>`), each with its
/// own discovery document and key set.
pub(crate) struct Realms {
    state: Arc<RealmsState>,
    task: tokio::task::JoinHandle<()>,
}

async fn discovery(
    State(s): State<Arc<RealmsState>>,
    Path(realm): Path<String>,
) -> impl axum::response::IntoResponse {
    let url = format!("{}/realms/{realm}", s.base);
    let body = json!({
        "issuer": url,
        "jwks_uri": format!("{url}/keys"),
        "id_token_signing_alg_values_supported": ["ES256"],
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn jwks(
    State(s): State<Arc<RealmsState>>,
    Path(realm): Path<String>,
) -> impl axum::response::IntoResponse {
    let keys = s
        .keys
        .lock()
        .expect("keys")
        .get(&realm)
        .cloned()
        .unwrap_or_default();
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "keys": keys }).to_string(),
    )
}

impl Realms {
    pub(crate) async fn start() -> Realms {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind issuer");
        let addr = listener.local_addr().expect("issuer addr");
        let state = Arc::new(RealmsState {
            base: format!("http://127.0.0.1:{}", addr.port()),
            keys: Mutex::new(HashMap::new()),
        });
        let router = Router::new()
            .route(
                "/realms/{realm}/.well-known/openid-configuration",
                get(discovery),
            )
            .route("/realms/{realm}/keys", get(jwks))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Realms { state, task }
    }

    pub(crate) fn url(&self, realm: &str) -> String {
        format!("{}/realms/{realm}", self.state.base)
    }

    pub(crate) fn publish<K: PublishedKey>(&self, realm: &str, keys: &[&K]) {
        self.state
            .keys
            .lock()
            .expect("keys")
            .insert(realm.to_owned(), keys.iter().map(|k| k.jwk()).collect());
    }
}

impl Drop for Realms {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Claims of a person's token of `issuer`.
fn person(issuer: &str, email: &str, verified: Value, groups: &[&str]) -> Value {
    let mut c = json!({
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": format!("{email}-id"),
        "email": email,
        "groups": groups,
        "iat": now(),
        "nbf": now() - 5,
        "exp": now() + 600,
    });
    if !verified.is_null() {
        c["email_verified"] = verified;
    }
    c
}

fn issuer_yaml(url: &str) -> String {
    format!(
        "  - url: {url}
    audiences: [{AUDIENCE}]
    usernameClaim: email
    groupsClaim: groups
    algorithms: [ES256]
    clockSkewSeconds: 0
"
    )
}

/// What an attempt must come to.
enum Expect {
    /// Refused at connection, the message containing this.
    Refused(&'static str),
    /// Connected, and the read of customers is refused by the staff guardrail.
    Denied,
    /// Connected, and the read of customers is allowed (the staff exemption holds).
    Reads,
}

/// Run one attempt; `Err` says how it went instead.
async fn attempt(proxy: &Proxy, password: &str, expect: &Expect) -> Result<(), String> {
    let connected = connect_with(proxy, password).await;
    match (expect, connected) {
        (Expect::Refused(needle), Err(e)) => {
            let msg = e
                .as_db_error()
                .map(|d| format!("{} {}", d.severity(), d.message()))
                .unwrap_or_else(|| e.to_string());
            if msg.starts_with("FATAL") && msg.contains(needle) {
                Ok(())
            } else {
                Err(format!("refused, but not with {needle:?}: {msg}"))
            }
        }
        (Expect::Refused(_), Ok(_)) => Err("connected".into()),
        (_, Err(e)) => Err(format!("refused: {e}")),
        (Expect::Denied, Ok(c)) => match c.query_one(STAFF_READ, &[]).await {
            Err(e) if e.to_string().contains(GUARDRAIL) || format!("{e:?}").contains(GUARDRAIL) => {
                Ok(())
            }
            Err(e) => Err(format!("refused otherwise: {e:?}")),
            Ok(_) => Err("read the customers table".into()),
        },
        (Expect::Reads, Ok(c)) => c
            .query_one(STAFF_READ, &[])
            .await
            .map(|_| ())
            .map_err(|e| format!("read refused: {e:?}")),
    }
}

/// The identity source of the latest session start.
fn last_source(proxy: &Proxy) -> Option<IdentitySource> {
    proxy
        .records()
        .into_iter()
        .rev()
        .find_map(|r| match r.event {
            AuditEvent::SessionStart(s) => Some(s.identity_source),
            _ => None,
        })
        .flatten()
}

/// A local address that is not loopback, to connect from off loopback.
fn non_loopback_address() -> std::net::IpAddr {
    for target in [
        "192.0.2.1:9",
        "10.255.255.1:9",
        "172.31.255.1:9",
        "8.8.8.8:53",
    ] {
        let Ok(socket) = std::net::UdpSocket::bind("0.0.0.0:0") else {
            continue;
        };
        if socket.connect(target).is_err() {
            continue;
        }
        if let Ok(addr) = socket.local_addr() {
            if !addr.ip().is_loopback() && !addr.ip().is_unspecified() {
                return addr.ip();
            }
        }
    }
    panic!("this host has no non-loopback address to connect from");
}

#[tokio::test]
async fn identity_families_are_refused() {
    let realms = Realms::start().await;
    let staff = realms.url("staff");
    let partner = realms.url("partner");
    let staff_key = TestKey::generate("staff-1");
    let staff_old = TestKey::generate("staff-old");
    let partner_key = TestKey::generate("partner-1");
    realms.publish("staff", &[&staff_key, &staff_old]);
    realms.publish("partner", &[&partner_key]);
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "").expect("empty token file");

    let proxy = ProxyBuilder::default()
        .policy(
            "staff",
            &format!(
                "guardrails:
- name: customers-dpo-only
  tables: [customers]
  action: deny
  message: personal data is for the data protection officers
  exempt:
  - kind: Group
    name: dpo
  - kind: User
    name: alice@staff.example
identity:
  tokenFile: {}
  issuers:
{}",
                token_file.display(),
                issuer_yaml(&staff)
            ),
        )
        .policy(
            "partner",
            &format!("identity:\n  issuers:\n{}", issuer_yaml(&partner)),
        )
        .oidc(OidcOptions {
            jwks_min_refresh: Duration::from_millis(100),
            jwks_max_age: Duration::from_secs(1),
            ..OidcOptions::default()
        })
        .start()
        .await;

    let mut results: Vec<(&str, String, Result<(), String>)> = Vec::new();
    let yes = json!(true);
    let sign_staff = |c: &Value| staff_key.sign(c);
    let sign_partner = |c: &Value| partner_key.sign(c);

    let mut rows: Vec<(&str, &str, String, Expect)> = vec![
        (
            "issuer-bound principals",
            "staff dpo reads (control)",
            sign_staff(&person(&staff, "dora@staff.example", yes.clone(), &["dpo"])),
            Expect::Reads,
        ),
        (
            "issuer-bound principals",
            "partner realm's group dpo gains nothing from staff's exemption",
            sign_partner(&person(&partner, "mallory@partner.example", yes.clone(), &["dpo"])),
            Expect::Denied,
        ),
        (
            "issuer-bound principals",
            "partner realm's verified alice@staff.example gains nothing from staff's user exemption",
            sign_partner(&person(&partner, "alice@staff.example", yes.clone(), &[])),
            Expect::Denied,
        ),
        (
            "issuer-bound principals",
            "partner key signing a token that claims the staff issuer",
            sign_partner(&person(&staff, "dora@staff.example", yes.clone(), &["dpo"])),
            Expect::Refused("not among the published keys"),
        ),
        (
            "verified claims",
            "alice's address with email_verified false",
            sign_staff(&person(&staff, "alice@staff.example", json!(false), &[])),
            Expect::Refused("email is not verified"),
        ),
        (
            "verified claims",
            "alice's address with email_verified \"true\" (a string)",
            sign_staff(&person(&staff, "alice@staff.example", json!("true"), &[])),
            Expect::Refused("email is not verified"),
        ),
        (
            "verified claims",
            "alice's address without email_verified",
            sign_staff(&person(&staff, "alice@staff.example", Value::Null, &[])),
            Expect::Refused("email is not verified"),
        ),
        (
            "verified claims",
            "alice's verified address (control)",
            sign_staff(&person(&staff, "alice@staff.example", yes.clone(), &[])),
            Expect::Reads,
        ),
    ];
    let dora = || person(&staff, "dora@staff.example", json!(true), &["dpo"]);
    let mut c = dora();
    c["iat"] = json!(now() + 600);
    rows.push((
        "NumericDate claims",
        "iat ten minutes in the future",
        sign_staff(&c),
        Expect::Refused("issued in the future"),
    ));
    let mut c = dora();
    c["iat"] = json!(now().to_string());
    rows.push((
        "NumericDate claims",
        "iat as a string",
        sign_staff(&c),
        Expect::Refused("\"iat\" claim is not a NumericDate"),
    ));
    let mut c = dora();
    c["iat"] = json!(format!("{}", now() + 600));
    rows.push((
        "NumericDate claims",
        "a future iat as a string",
        sign_staff(&c),
        Expect::Refused("\"iat\" claim is not a NumericDate"),
    ));
    let mut c = dora();
    c["exp"] = json!((now() + 600).to_string());
    rows.push((
        "NumericDate claims",
        "exp as a string",
        sign_staff(&c),
        Expect::Refused("\"exp\" claim is not a NumericDate"),
    ));
    let mut c = dora();
    c["nbf"] = json!(true);
    rows.push((
        "NumericDate claims",
        "nbf as a boolean",
        sign_staff(&c),
        Expect::Refused("\"nbf\" claim is not a NumericDate"),
    ));
    let mut c = dora();
    #[allow(clippy::cast_precision_loss)]
    let fractional = now() as f64 - 0.5;
    c["iat"] = json!(fractional);
    rows.push((
        "NumericDate claims",
        "a fractional iat (control)",
        sign_staff(&c),
        Expect::Reads,
    ));
    let mut c = dora();
    c["aud"] = json!([AUDIENCE, "billing"]);
    rows.push((
        "authorized party",
        "several audiences without azp",
        sign_staff(&c),
        Expect::Refused("authorized party (azp) (none)"),
    ));
    c["azp"] = json!("billing");
    rows.push((
        "authorized party",
        "several audiences, azp another client",
        sign_staff(&c),
        Expect::Refused("authorized party (azp) \"billing\""),
    ));
    c["azp"] = json!(AUDIENCE);
    rows.push((
        "authorized party",
        "several audiences, azp this database (control)",
        sign_staff(&c),
        Expect::Reads,
    ));
    for (family, case, password, expect) in &rows {
        results.push((
            *family,
            (*case).to_owned(),
            attempt(&proxy, password, expect).await,
        ));
    }

    // Token precedence: the client's token, then the token file, then the workload, each
    // recorded with the session.
    let mut precedence = |case: &str, result: Result<(), String>| {
        results.push(("token precedence", case.to_owned(), result));
    };
    let r = attempt(&proxy, "-", &Expect::Denied).await;
    precedence(
        "no token anywhere: the workload, recorded",
        r.and_then(|()| match last_source(&proxy) {
            Some(IdentitySource::Workload) => Ok(()),
            other => Err(format!("recorded {other:?}")),
        }),
    );
    std::fs::write(&token_file, sign_staff(&dora())).expect("token file");
    let r = attempt(&proxy, "-", &Expect::Reads).await;
    precedence(
        "no client token: the token file's dpo, recorded",
        r.and_then(|()| match last_source(&proxy) {
            Some(IdentitySource::TokenFile) => Ok(()),
            other => Err(format!("recorded {other:?}")),
        }),
    );
    let client = sign_staff(&person(
        &staff,
        "sam@staff.example",
        json!(true),
        &["sales"],
    ));
    let r = attempt(&proxy, &client, &Expect::Denied).await;
    precedence(
        "the client's own token wins over the token file's dpo, recorded",
        r.and_then(|()| match last_source(&proxy) {
            Some(IdentitySource::ClientToken) => Ok(()),
            other => Err(format!("recorded {other:?}")),
        }),
    );
    let mut bad = person(&staff, "sam@staff.example", json!(true), &["sales"]);
    bad["aud"] = json!("elsewhere");
    let r = attempt(&proxy, &sign_staff(&bad), &Expect::Refused("audience")).await;
    precedence(
        "a client token that fails is refused, not replaced by the token file",
        r,
    );
    std::fs::write(&token_file, "").expect("token file");

    // Withdrawn keys: a key the issuer no longer publishes stops being trusted once the key
    // set is older than its maximum age (one second here).
    let old = staff_old.sign(&dora());
    results.push((
        "withdrawn keys",
        "a published key signs (control)".into(),
        attempt(&proxy, &old, &Expect::Reads).await,
    ));
    realms.publish("staff", &[&staff_key]);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    results.push((
        "withdrawn keys",
        "the same token after the issuer withdrew its key".into(),
        attempt(
            &proxy,
            &old,
            &Expect::Refused("not among the published keys"),
        )
        .await,
    ));

    // Identity lives as long as its token: a session outlives nothing, even mid-query.
    let mut short = dora();
    short["exp"] = json!(now() + 2);
    let expired = match connect_with(&proxy, &sign_staff(&short)).await {
        Err(e) => Err(format!("refused: {e}")),
        Ok(c) => match c.query_one("SELECT pg_sleep(6)", &[]).await {
            Ok(_) => Err("the session outlived its token".into()),
            Err(e) => {
                let msg = e
                    .as_db_error()
                    .map(|d| format!("{} {}", d.severity(), d.message()));
                match msg {
                    Some(m) if m.starts_with("FATAL") && m.contains("expired at") => Ok(()),
                    other => Err(format!("ended otherwise: {other:?} {e}")),
                }
            }
        },
    };
    // The session end is written once the relay has stopped: wait for it.
    let mut ended = false;
    for _ in 0..30 {
        ended = proxy.records().into_iter().any(
            |r| matches!(&r.event, AuditEvent::SessionEnd(s) if s.reason.contains("expired at")),
        );
        if ended {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    results.push((
        "token lifetime",
        "a session ends with FATAL when its token expires, and the audit log says why".into(),
        expired.and_then(|()| {
            ended
                .then_some(())
                .ok_or_else(|| "no session end naming the expiry".to_owned())
        }),
    ));
    proxy.stop().await;

    // requireOidc trusts its own issuers only, however many issuers the resource knows.
    let strict = ProxyBuilder::default()
        .policy(
            "staff-only",
            &format!(
                "identity:\n  requireOidc: true\n  issuers:\n{}",
                issuer_yaml(&staff)
            ),
        )
        .policy(
            "partner",
            &format!("identity:\n  issuers:\n{}", issuer_yaml(&partner)),
        )
        .start()
        .await;
    results.push((
        "issuer-bound principals",
        "requireOidc of a staff-only policy refuses a partner token".into(),
        attempt(
            &strict,
            &sign_partner(&person(
                &partner,
                "mallory@partner.example",
                yes.clone(),
                &["dpo"],
            )),
            &Expect::Refused("is not trusted by policy staff-only"),
        )
        .await,
    ));
    strict.stop().await;

    // Clients off loopback: they would act as the workload. Shown to connect where the
    // resource allows them, refused where it does not (the default).
    let remote_ip = non_loopback_address();
    for (allow, expect_ok) in [(true, true), (false, false)] {
        let settings = if allow {
            "  listenAddress: 0.0.0.0\n  allowRemoteClients: true\n"
        } else {
            "  listenAddress: 0.0.0.0\n"
        };
        let remote = ProxyBuilder::default()
            .resource_settings(settings)
            .start()
            .await;
        let mut config = tokio_postgres::Config::new();
        config
            .host(remote_ip.to_string())
            .port(remote.port)
            .user("agent")
            .dbname("shop");
        let outcome = match (config.connect(tokio_postgres::NoTls).await, expect_ok) {
            (Ok(_), true) => Ok(()),
            (Err(e), false)
                if e.as_db_error()
                    .is_some_and(|d| d.message().contains("accepts clients on loopback only")) =>
            {
                Ok(())
            }
            (Ok(_), false) => Err("a remote client connected".to_owned()),
            (Err(e), _) => Err(format!("{e:?}")),
        };
        results.push((
            "remote clients",
            format!("a client at {remote_ip} with allowRemoteClients {allow}"),
            outcome,
        ));
        remote.stop().await;
    }

    let failed: Vec<String> = results
        .iter()
        .filter_map(|(family, case, r)| r.as_ref().err().map(|e| format!("[{family}] {case}: {e}")))
        .collect();
    for (family, case, r) in &results {
        eprintln!(
            "{:<4} [{family}] {case}",
            if r.is_ok() { "ok" } else { "FAIL" }
        );
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// kubectl through the sidecar with `token` as the bearer token. Returns whether it
/// succeeded and what it printed.
async fn kubectl_with(
    dir: &std::path::Path,
    port: u16,
    ca: &std::path::Path,
    token: &str,
    args: &[&str],
) -> (bool, String) {
    let kubeconfig = dir.join(format!("kubeconfig-{}", rand_suffix()));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: sidecar
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority: {ca}
users:
- name: person
  user:
    token: {token}
contexts:
- name: sidecar
  context: {{cluster: sidecar, user: person}}
current-context: sidecar
",
            ca = ca.display()
        ),
    )
    .expect("kubeconfig");
    let kubectl = portcullis_e2e::harness().kubectl_path().to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(kubectl)
            .env("KUBECONFIG", &kubeconfig)
            .args(&args)
            .output()
            .expect("run kubectl");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .expect("kubectl")
}

/// A read every authenticated user may make.
const RAW: [&str; 3] = ["get", "--raw", "/api"];

/// A fresh file name for a manifest.
fn dir_for_pod() -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "identity-kube-pod-{}-{}.json",
        std::process::id(),
        rand_suffix()
    ))
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn identity_families_in_the_kubernetes_proxy() {
    let h = portcullis_e2e::harness();
    let realms = Realms::start().await;
    let staff = realms.url("staff");
    let partner = realms.url("partner");
    let staff_key = TestKey::generate("staff-1");
    let partner_key = TestKey::generate("partner-1");
    realms.publish("staff", &[&staff_key]);
    realms.publish("partner", &[&partner_key]);

    // A Kubernetes resource in front of the harness's API server, forwarding with a real
    // service-account token; OIDC required, of the staff realm only.
    let ns = h.namespace("identity-kube").await;
    h.service_account(&ns, "agent").await;
    for args in [
        vec![
            "create",
            "role",
            "exec",
            "--verb=get,list,watch,create",
            "--resource=pods,pods/exec",
        ],
        vec!["create", "rolebinding", "exec", "--role=exec"],
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
    // A pod on the node whose exec the harness serves (commands run as local processes).
    let pod_file = dir_for_pod();
    std::fs::write(
        &pod_file,
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": ns},
            "spec": {"nodeName": h.exec_node(), "containers": [{"name": "app", "image": "app:1"}]}
        })
        .to_string(),
    )
    .expect("pod manifest");
    let out = h.kubectl(&["apply", "-f", &pod_file.to_string_lossy()]);
    let _ = std::fs::remove_file(&pod_file);
    assert!(out.status.success(), "{out:?}");
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
        staff_issuer = issuer(&staff),
        partner_issuer = issuer(&partner),
    );
    let config =
        portcullis_crds::SidecarConfig::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let mut options = portcullis_sidecar::config::Options::service_account(&ns, "agent");
    options.oidc = OidcOptions {
        jwks_min_refresh: Duration::from_millis(100),
        ..OidcOptions::default()
    };
    let sidecar = portcullis_sidecar::start(config, options)
        .await
        .expect("sidecar starts");
    let port = sidecar.addr("cluster-api").expect("listening").port();
    let records = || {
        sidecar.spool().write_later().expect("spool");
        crate::common::read_spool(&dir.path().join("spool"))
    };

    let mut results: Vec<(&str, String, Result<(), String>)> = Vec::new();
    let dora = || person(&staff, "dora@staff.example", json!(true), &["dpo"]);
    let mut short = dora();
    short["exp"] = json!(now() + 2);
    let short = staff_key.sign(&short);
    let (ok, out) = kubectl_with(dir.path(), port, &cert_file, &short, &RAW).await;
    let recorded = records().into_iter().rev().find_map(|r| match r.event {
        AuditEvent::KubeRequest(k) => Some((k.identity_source, r.identity.principal)),
        _ => None,
    });
    results.push((
        "token precedence",
        "a staff token as the bearer token: the person, recorded as the client's token".into(),
        match (ok, recorded) {
            (true, Some((Some(IdentitySource::ClientToken), Some(p)))) if p.issuer == staff => {
                Ok(())
            }
            (ok, r) => Err(format!("{ok} {r:?} {out}")),
        },
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, out) = kubectl_with(dir.path(), port, &cert_file, &short, &RAW).await;
    let refused = records().into_iter().any(|r| {
        matches!(&r.event, AuditEvent::AuthenticationRefused(a) if a.reason.contains("has expired"))
    });
    results.push((
        "token lifetime",
        "the same token once it expired: the next request is refused".into(),
        if !ok && refused {
            Ok(())
        } else {
            Err(format!("succeeded {ok}, refusal recorded {refused}: {out}"))
        },
    ));
    let (ok, out) = kubectl_with(
        dir.path(),
        port,
        &cert_file,
        &partner_key.sign(&person(
            &partner,
            "dora@staff.example",
            json!(true),
            &["dpo"],
        )),
        &RAW,
    )
    .await;
    let refused = records().into_iter().any(|r| {
        matches!(&r.event, AuditEvent::AuthenticationRefused(a) if a.reason.contains("is not trusted by policy staff"))
    });
    results.push((
        "issuer-bound principals",
        "a partner token where requireOidc trusts the staff realm only".into(),
        if !ok && refused {
            Ok(())
        } else {
            Err(format!("succeeded {ok}, refusal recorded {refused}: {out}"))
        },
    ));
    let (ok, out) = kubectl_with(
        dir.path(),
        port,
        &cert_file,
        &staff_key.sign(&dora()),
        &["get", "--raw", "/api", "--as=system:admin"],
    )
    .await;
    results.push((
        "claimed identities",
        "a valid staff token with Impersonate-User: system:admin".into(),
        if !ok && out.contains("impersonation") {
            Ok(())
        } else {
            Err(format!("succeeded {ok}: {out}"))
        },
    ));
    // An exec stream opened with a token ends when the token does, whatever runs in it.
    let mut short = dora();
    short["exp"] = json!(now() + 3);
    let started = std::time::Instant::now();
    let (_, out) = kubectl_with(
        dir.path(),
        port,
        &cert_file,
        &staff_key.sign(&short),
        &["exec", "-n", &ns, "web-0", "--", "sleep", "30"],
    )
    .await;
    let took = started.elapsed();
    let recorded = records().into_iter().any(
        |r| matches!(&r.event, AuditEvent::Recording(rec) if rec.target.ends_with("web-0/app")),
    );
    results.push((
        "token lifetime",
        "an exec stream (sleep 30) closes when its token expires".into(),
        // It ran until the token expired (two to three seconds), not to the command's end.
        if took >= Duration::from_secs(2) && took < Duration::from_secs(15) && recorded {
            Ok(())
        } else {
            Err(format!("took {took:?}, recording kept {recorded}: {out}"))
        },
    ));
    // So does a watch: the API server would keep it open for 30 seconds.
    let mut short = dora();
    short["exp"] = json!(now() + 3);
    let started = std::time::Instant::now();
    let watch = format!("/api/v1/namespaces/{ns}/pods?watch=1&timeoutSeconds=30");
    let (_, out) = kubectl_with(
        dir.path(),
        port,
        &cert_file,
        &staff_key.sign(&short),
        &["get", "--raw", &watch],
    )
    .await;
    let took = started.elapsed();
    results.push((
        "token lifetime",
        "a watch (timeoutSeconds 30) ends when its token expires".into(),
        if took >= Duration::from_secs(2) && took < Duration::from_secs(15) && out.contains("ADDED")
        {
            Ok(())
        } else {
            Err(format!("took {took:?}: {out}"))
        },
    ));
    sidecar.shutdown().await;

    for (family, case, r) in &results {
        eprintln!(
            "{:<4} [{family}] {case}",
            if r.is_ok() { "ok" } else { "FAIL" }
        );
    }
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(family, case, r)| r.as_ref().err().map(|e| format!("[{family}] {case}: {e}")))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
