//! The audit service against the real kube-apiserver: sidecars authenticate with a pod-bound
//! projected token (TokenReview), batches are durable and idempotent, records cannot claim
//! another workload, and signed tree heads reach the AuditRetention status where anyone can
//! check them, with proofs, against the public key alone.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, PostParams};
use portcullis_audit::client::AuditClient;
use portcullis_audit::service::{
    run_signer, serve_tls, AuditService, BatchAck, ProofResponse, Witness,
};
use portcullis_audit::store::{Log, LogOptions};
use portcullis_crds::audit::AuditRecord;
use portcullis_crds::audit_log::{verify_inclusion, verify_tree_head, LogSigner};
use portcullis_crds::AuditRetention;
use portcullis_e2e::harness;
use ring::rand::SystemRandom;
use ring::signature::Ed25519KeyPair;

struct Tls {
    config: Arc<rustls::ServerConfig>,
    ca_file: tempfile::NamedTempFile,
}

fn tls() -> Tls {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("certificate");
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

fn record(ns: &str, pod: &str, seq: u64) -> String {
    serde_json::json!({
        "version": "portcullis.dev/audit/v1alpha1",
        "seq": seq,
        "time": "2026-11-23T05:40:00.000000Z",
        "sessionId": "s-1",
        "identity": {"kind": "ServiceAccount", "name": "agent", "namespace": ns, "pod": pod},
        "resource": "customers-db",
        "event": {"type": "sessionEnd", "statements": seq, "reason": "terminate"}
    })
    .to_string()
}

struct Curl {
    url: String,
    ca: String,
}

impl Curl {
    fn post(&self, path: &str, token: &str, body: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "30",
                "--cacert",
                &self.ca,
                "-X",
                "POST",
                "-H",
                "Content-Type: application/x-ndjson",
            ])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args([
                "--data-binary",
                "@-",
                "-w",
                "\n%{http_code}",
                &format!("{}{path}", self.url),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(body.as_bytes())?;
                child.wait_with_output()
            })
            .expect("run curl");
        split(&String::from_utf8_lossy(&out.stdout))
    }

    fn get(&self, path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "30",
                "--cacert",
                &self.ca,
                "-w",
                "\n%{http_code}",
                &format!("{}{path}", self.url),
            ])
            .output()
            .expect("run curl");
        split(&String::from_utf8_lossy(&out.stdout))
    }
}

fn split(out: &str) -> (u16, String) {
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (code.parse().unwrap_or(0), body.to_owned())
}

// curl runs as a blocking child process; the server needs threads of its own meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_batches_are_authenticated_durable_idempotent_and_witnessed() {
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let ns = h.namespace("audit").await;

    h.service_account(&ns, "agent").await;
    let pod = h.pod(&ns, "agent-0", "agent").await;
    let retention: AuditRetention = serde_json::from_value(serde_json::json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "AuditRetention",
        "metadata": {"name": "default"}, "spec": {"retainFor": "400d"}
    }))
    .expect("retention");
    Api::<AuditRetention>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &retention)
        .await
        .expect("create retention");

    let dir = tempfile::tempdir().expect("tmp");
    let log = Arc::new(Mutex::new(
        Log::open(dir.path(), LogOptions::default()).expect("open log"),
    ));
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
    let signer = LogSigner::from_pkcs8(pkcs8.as_ref()).expect("signer");
    let public_key = signer.public_key().to_vec();
    let service = AuditService::new(client.clone(), log.clone()).with_witness(Witness {
        namespace: ns.clone(),
        name: "default".into(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let tls = tls();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop1 = stop_rx.clone();
    tokio::spawn(serve_tls(
        listener,
        tls.config.clone(),
        service.router(),
        async move {
            let _ = stop1.changed().await;
        },
    ));
    let mut stop2 = stop_rx.clone();
    tokio::spawn(run_signer(
        log.clone(),
        signer,
        Duration::from_millis(200),
        Some(client.clone()),
        Some(Witness {
            namespace: ns.clone(),
            name: "default".into(),
        }),
        async move {
            let _ = stop2.changed().await;
        },
    ));
    let curl = Curl {
        url: format!("https://127.0.0.1:{port}"),
        ca: tls.ca_file.path().to_string_lossy().into_owned(),
    };

    let good = h
        .token(&ns, "agent", Some("portcullis-audit"), Some(&pod))
        .await;
    let batch: String = (1..=20).map(|s| record(&ns, "agent-0", s) + "\n").collect();
    let (code, body) = curl.post("/v1/records", &good, &batch);
    assert_eq!(code, 200, "{body}");
    let ack: BatchAck = serde_json::from_str(&body).expect("ack");
    assert_eq!(ack.acknowledged, (1..=20).collect::<Vec<u64>>());
    assert_eq!(ack.indexes, (0..20).collect::<Vec<u64>>());
    assert_eq!(ack.tree_size, 20);

    // A resend after a crash (records 15..=25) appends only the new ones.
    let resend: String = (15..=25)
        .map(|s| record(&ns, "agent-0", s) + "\n")
        .collect();
    let (code, body) = curl.post("/v1/records", &good, &resend);
    assert_eq!(code, 200, "{body}");
    let ack: BatchAck = serde_json::from_str(&body).expect("ack");
    assert_eq!(ack.indexes, (14..25).collect::<Vec<u64>>());
    assert_eq!(ack.tree_size, 25);

    // A token for the API server's audience is not accepted by the audit service.
    let wrong_audience = h.token(&ns, "agent", None, Some(&pod)).await;
    let (code, body) = curl.post("/v1/records", &wrong_audience, &record(&ns, "agent-0", 99));
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("token rejected by the API server"), "{body}");
    let (code, body) = curl.post("/v1/records", "", &record(&ns, "agent-0", 99));
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("missing bearer token"), "{body}");

    // Records cannot claim another namespace or pod than the token's.
    let (code, body) = curl.post("/v1/records", &good, &record("kube-system", "agent-0", 100));
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("record claims namespace kube-system"),
        "{body}"
    );
    let (code, body) = curl.post("/v1/records", &good, &record(&ns, "other-pod", 101));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("bound to pod agent-0"), "{body}");
    let (code, body) = curl.post("/v1/records", &good, "{not json\n");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("line 1: not an audit record"), "{body}");
    assert_eq!(
        log.lock().expect("lock").size(),
        25,
        "refused batches wrote nothing"
    );

    // The signed head reaches the AuditRetention status, and verifies with the public key.
    let api: Api<AuditRetention> = Api::namespaced(client.clone(), &ns);
    let mut published = None;
    for _ in 0..100 {
        let r = api.get("default").await.expect("get retention");
        if let Some(sth) = r.status.and_then(|s| s.latest_signed_tree_head) {
            if sth.tree_size == 25 {
                published = Some(sth);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sth = published.expect("signed tree head of size 25 published in the status");
    let head = verify_tree_head(&sth, &public_key).expect("signature verifies");
    let (code, body) = curl.get("/v1/sth");
    assert_eq!(code, 200, "{body}");

    // An inclusion proof from the service proves entry 17 is in the witnessed tree.
    let (code, body) = curl.get("/v1/proofs/inclusion?index=17&size=25");
    assert_eq!(code, 200, "{body}");
    let proof: ProofResponse = serde_json::from_str(&body).expect("proof");
    let hashes: Vec<[u8; 32]> = proof
        .hashes
        .iter()
        .map(|h| hex::decode(h).expect("hex").try_into().expect("32 bytes"))
        .collect();
    let entry = log
        .lock()
        .expect("lock")
        .entry(17)
        .expect("read")
        .expect("entry");
    verify_inclusion(&head, &entry, 17, &hashes).expect("included");
    let stored: serde_json::Value = serde_json::from_slice(&entry).expect("entry json");
    assert_eq!(stored["source"]["pod"], "agent-0");
    assert_eq!(stored["source"]["namespace"], ns.as_str());
    assert_eq!(stored["record"]["seq"], 18);
    let (code, _) = curl.get("/v1/proofs/inclusion?index=30&size=25");
    assert_eq!(code, 400);

    // The shipper's client: acknowledged sequence numbers, refusals that retrying cannot fix,
    // and an unreachable service that it can.
    let shipper =
        AuditClient::new(&curl.url, tls.ca_file.path(), Duration::from_secs(10)).expect("client");
    let records: Vec<AuditRecord> = (26..=30)
        .map(|s| serde_json::from_str(&record(&ns, "agent-0", s)).expect("record"))
        .collect();
    assert_eq!(
        shipper.ship(&good, &records).await.expect("shipped"),
        vec![26, 27, 28, 29, 30]
    );
    let foreign: Vec<AuditRecord> =
        vec![serde_json::from_str(&record("kube-system", "agent-0", 31)).expect("record")];
    let err = shipper.ship(&good, &foreign).await.expect_err("refused");
    assert!(!err.retryable(), "{err}");
    assert!(err.to_string().contains("refused the batch (403)"), "{err}");
    // Evidence: an auditor whose RBAC allows `get auditretentions/evidence` exports a bundle
    // over the network that verifies offline; anyone else is refused.
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "evidence-reader"},
        "rules": [{"apiGroups": ["portcullis.dev"], "resources": ["auditretentions/evidence"], "verbs": ["get"]}]
    }))
    .expect("role");
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .expect("role");
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "auditor-reads-evidence"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "evidence-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "auditor", "namespace": ns}]
    }))
    .expect("binding");
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");
    h.service_account(&ns, "auditor").await;
    h.service_account(&ns, "nosy").await;
    let auditor = h.token(&ns, "auditor", None, None).await;
    let nosy = h.token(&ns, "nosy", None, None).await;
    let mut sth = shipper.latest_head().await.expect("sth");
    for _ in 0..50 {
        if sth.tree_size == 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        sth = shipper.latest_head().await.expect("sth");
    }
    assert_eq!(sth.tree_size, 30);
    let fetched = shipper.entries(&auditor, 0, 30, 30).await.expect("entries");
    assert_eq!(fetched.len(), 30);
    let bundle_dir = tempfile::tempdir().expect("tmp");
    let n = portcullis_audit::bundle::write_bundle_from(
        fetched,
        &sth,
        &|_: &serde_json::Value| true,
        bundle_dir.path(),
    )
    .expect("bundle");
    assert_eq!(n, 30);
    let report = portcullis_audit::bundle::verify_bundle(bundle_dir.path(), &public_key)
        .expect("bundle verifies offline");
    assert_eq!(report.records, 30);
    let err = shipper
        .entries(&nosy, 0, 30, 30)
        .await
        .expect_err("nosy is refused");
    assert!(
        err.to_string()
            .contains("may not get auditretentions/evidence"),
        "{err}"
    );
    let err = shipper
        .entries("garbage", 0, 30, 30)
        .await
        .expect_err("no valid token");
    assert!(err.to_string().contains("(401)"), "{err}");

    let _ = stop_tx.send(true);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let nowhere = AuditClient::new(
        &format!("https://127.0.0.1:{closed}"),
        tls.ca_file.path(),
        Duration::from_secs(5),
    )
    .expect("client");
    let err = nowhere
        .ship(&good, &records)
        .await
        .expect_err("nothing listens");
    assert!(err.retryable(), "{err}");
    assert!(
        err.to_string().starts_with("audit service unreachable"),
        "{err}"
    );
}
