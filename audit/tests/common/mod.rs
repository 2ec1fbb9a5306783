//! Start-up shared by the evidence tests: a TLS audit service anchored on a witness and a
//! head file, the records they ship, and the baselines that ingest without the service's checks.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use portcullis_audit::anchor::Anchor;
use portcullis_audit::auth::Source;
use portcullis_audit::bundle::{verify_bundle, write_bundle};
use portcullis_audit::client::AuditClient;
use portcullis_audit::manifest::Selection;
use portcullis_audit::recordings::RecordingStore;
use portcullis_audit::service::{run_anchored_signer, serve_tls, AuditService, LogEntry, Witness};
use portcullis_audit::store::{Log, LogOptions};
use portcullis_crds::audit::AuditRecord;
use portcullis_crds::audit_log::LogSigner;
use portcullis_crds::{AuditRetention, SignedTreeHead};

/// What an attempt did to the construction without the protection: `Ok(how it went
/// unnoticed)`, or `Err(why that was not shown)`.
pub type Baseline = Result<String, String>;

pub struct Tls {
    pub config: Arc<rustls::ServerConfig>,
    pub ca_file: tempfile::NamedTempFile,
}

pub fn tls() -> Tls {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
    let ca_file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(ca_file.path(), cert.cert.pem()).expect("write ca");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
    Tls {
        config: Arc::new(config),
        ca_file,
    }
}

/// A running audit service over `data`, anchored on the witness and a head file.
pub struct Service {
    pub url: String,
    pub client: AuditClient,
    pub log: Arc<Mutex<Log>>,
    pub anchor: Arc<Anchor>,
    pub stop: tokio::sync::watch::Sender<bool>,
}

pub async fn start(
    kube: &kube::Client,
    data: &Path,
    head_file: &Path,
    pkcs8: &[u8],
    tls: &Tls,
    witness: &Witness,
) -> Service {
    start_signing_every(
        kube,
        data,
        head_file,
        pkcs8,
        tls,
        witness,
        Duration::from_millis(100),
    )
    .await
}

/// As [`start`], signing a head every `sign_every`.
pub async fn start_signing_every(
    kube: &kube::Client,
    data: &Path,
    head_file: &Path,
    pkcs8: &[u8],
    tls: &Tls,
    witness: &Witness,
    sign_every: Duration,
) -> Service {
    let log = Arc::new(Mutex::new(
        Log::open(
            data,
            LogOptions {
                segment_bytes: 4096,
            },
        )
        .expect("open log"),
    ));
    let signer = LogSigner::from_pkcs8(pkcs8).expect("signer");
    let anchor =
        Arc::new(Anchor::new(signer.public_key(), Some(head_file.to_path_buf())).expect("anchor"));
    let service = AuditService::new(kube.clone(), log.clone())
        .with_witness(witness.clone())
        .with_anchor(anchor.clone())
        .with_manifest_signer(LogSigner::from_pkcs8(pkcs8).expect("signer"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut s1 = stopped.clone();
    tokio::spawn(serve_tls(
        listener,
        tls.config.clone(),
        service.router(),
        async move {
            let _ = s1.changed().await;
        },
    ));
    let mut s2 = stopped.clone();
    tokio::spawn(run_anchored_signer(
        log.clone(),
        signer,
        sign_every,
        Some(kube.clone()),
        Some(witness.clone()),
        anchor.clone(),
        async move {
            let _ = s2.changed().await;
        },
    ));
    let client =
        AuditClient::new(&url, tls.ca_file.path(), Duration::from_secs(20)).expect("client");
    Service {
        url,
        client,
        log,
        anchor,
        stop,
    }
}

pub fn record(
    ns: &str,
    identity: serde_json::Value,
    resource: &str,
    session: &str,
    seq: u64,
    event: serde_json::Value,
) -> AuditRecord {
    let mut identity = identity;
    if identity.get("kind").is_none() {
        identity["kind"] = "ServiceAccount".into();
    }
    if identity.get("namespace").is_none() {
        identity["namespace"] = ns.into();
    }
    serde_json::from_value(serde_json::json!({
        "version": "portcullis.dev/audit/v1alpha1", "seq": seq,
        "time": format!("2026-11-23T06:{:02}:00.000000Z", seq % 60),
        "sessionId": session, "identity": identity, "resource": resource, "event": event
    }))
    .expect("record")
}

pub fn statement(decision: &str) -> serde_json::Value {
    serde_json::json!({"type": "statement", "statementId": 1, "protocol": "simple",
        "statement": "DELETE FROM customers WHERE id = ?", "fingerprint": "f",
        "kinds": ["delete"], "decision": decision})
}

pub fn alice() -> serde_json::Value {
    serde_json::json!({"kind": "User", "issuer": "https://sso.example.com", "subject": "u-1", "name": "alice"})
}

pub fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).expect("parent");
    }
    let status = Command::new("cp")
        .args(["-a", &from.to_string_lossy(), &to.to_string_lossy()])
        .status()
        .expect("cp");
    assert!(status.success());
}

/// Label `ns` for injection (`portcullis.dev/inject=enabled`), as a namespace whose pods the
/// injection webhook guards: only there does a sidecar name a person.
pub async fn label_for_injection(kube: &kube::Client, ns: &str) {
    Api::<k8s_openapi::api::core::v1::Namespace>::all(kube.clone())
        .patch(
            ns,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "metadata": {"labels": {"portcullis.dev/inject": "enabled"}}
            })),
        )
        .await
        .expect("label the namespace for injection");
}

pub fn shown<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

/// The head the witness AuditRetention holds.
pub async fn witnessed(api: &Api<AuditRetention>) -> Option<SignedTreeHead> {
    api.get("default")
        .await
        .ok()
        .and_then(|r| r.status)
        .and_then(|s| s.latest_signed_tree_head)
}

/// Wait until the witness holds a head of `size`.
pub async fn witnessed_size(api: &Api<AuditRetention>, size: i64) -> SignedTreeHead {
    for _ in 0..100 {
        if let Some(h) = witnessed(api).await.filter(|h| h.tree_size == size) {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the witness never held a head of size {size}: {:?}",
        witnessed(api).await
    );
}

/// Ingest without its checks (attribution from the token, the session's principal, the
/// recording's uploader): each record stored as sent under the sender the API server
/// authenticated, then exported and verified like any bundle. `Ok` when the record reaches a
/// bundle that verifies and names `needle`.
pub fn unchecked_ingest(
    dir: &Path,
    signer: &LogSigner,
    source: &Source,
    records: &[AuditRecord],
    recordings: &[(&str, &[u8])],
    needle: &str,
) -> Baseline {
    let _ = std::fs::remove_dir_all(dir);
    let mut log = shown(Log::open(
        dir,
        LogOptions {
            segment_bytes: 4096,
        },
    ))?;
    let store = RecordingStore::new(dir);
    for (sha, content) in recordings {
        shown(store.put(sha, content))?;
    }
    let entries = records
        .iter()
        .map(|r| {
            serde_json::to_vec(&LogEntry {
                id: format!("twin:{}:{}", r.session_id, r.seq),
                received_at: format!("{:.6}", Timestamp::now()),
                source: source.clone(),
                record: r.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    shown(log.append(&entries))?;
    let sth = signer.sign(&log.head(1_800_000_000_000));
    shown(log.record_head(&sth))?;
    let out = dir.with_extension("bundle");
    shown(write_bundle(
        &log,
        &sth,
        &Selection::default(),
        signer,
        &out,
    ))?;
    let report = shown(verify_bundle(&out, signer.public_key()))?;
    let text = shown(std::fs::read_to_string(out.join("records.jsonl")))?;
    if !text.contains(needle) {
        return Err(format!("the verified bundle does not name {needle:?}"));
    }
    Ok(format!(
        "stored unchecked; its bundle verifies ({} records, {} recordings, {} missing) naming {needle}",
        report.records,
        report.recordings,
        report.missing_recordings.len()
    ))
}
