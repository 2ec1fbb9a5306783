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
    /// `method path` with an optional bearer token and body: the status and the body.
    fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Option<&[u8]>,
        extra_headers: &[&str],
    ) -> (u16, Vec<u8>) {
        let mut command = Command::new("curl");
        command.args([
            "-sS",
            "--max-time",
            "30",
            "--cacert",
            &self.ca,
            "-X",
            method,
            "-H",
            &format!("Content-Type: {content_type}"),
        ]);
        if let Some(token) = token {
            command.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        for header in extra_headers {
            command.args(["-H", header]);
        }
        if body.is_some() {
            command.args(["--data-binary", "@-"]);
        }
        let out = command
            .args(["-w", "\n%{http_code}", &format!("{}{path}", self.url)])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                let mut stdin = child.stdin.take().expect("stdin");
                if let Some(body) = body {
                    stdin.write_all(body)?;
                }
                drop(stdin);
                child.wait_with_output()
            })
            .expect("run curl");
        let text = out.stdout;
        let cut = text.iter().rposition(|b| *b == b'\n').unwrap_or(0);
        let code = String::from_utf8_lossy(&text[(cut + 1).min(text.len())..])
            .trim()
            .parse()
            .unwrap_or(0);
        (code, text[..cut].to_vec())
    }

    fn post(&self, path: &str, token: &str, body: &str) -> (u16, String) {
        let (code, body) = self.request(
            "POST",
            path,
            Some(token),
            "application/x-ndjson",
            Some(body.as_bytes()),
            &[],
        );
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    fn put(&self, path: &str, token: &str, body: &[u8]) -> (u16, String) {
        self.put_with(path, token, body, &[])
    }

    /// [`Curl::put`] with extra request headers.
    fn put_with(&self, path: &str, token: &str, body: &[u8], headers: &[&str]) -> (u16, String) {
        let (code, body) = self.request(
            "PUT",
            path,
            Some(token),
            "application/x-asciicast",
            Some(body),
            headers,
        );
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    fn get(&self, path: &str) -> (u16, String) {
        let (code, body) = self.request("GET", path, None, "application/json", None, &[]);
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    fn get_as(&self, path: &str, token: &str) -> (u16, Vec<u8>) {
        self.request("GET", path, Some(token), "application/json", None, &[])
    }
}

/// An audit service on loopback, with its signer publishing into the AuditRetention
/// `default` of `ns`.
struct Running {
    dir: tempfile::TempDir,
    log: Arc<Mutex<Log>>,
    public_key: Vec<u8>,
    curl: Curl,
    tls: Tls,
    stop_tx: tokio::sync::watch::Sender<bool>,
}

async fn start(client: &kube::Client, ns: &str) -> Running {
    let dir = tempfile::tempdir().expect("tmp");
    let log = Arc::new(Mutex::new(
        Log::open(dir.path(), LogOptions::default()).expect("open log"),
    ));
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
    let signer = LogSigner::from_pkcs8(pkcs8.as_ref()).expect("signer");
    let public_key = signer.public_key().to_vec();
    let witness = Witness {
        namespace: ns.to_owned(),
        name: "default".into(),
    };
    let service = AuditService::new(client.clone(), log.clone())
        .with_witness(witness.clone())
        .with_manifest_signer(LogSigner::from_pkcs8(pkcs8.as_ref()).expect("signer"));
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
        Some(witness),
        async move {
            let _ = stop2.changed().await;
        },
    ));
    let curl = Curl {
        url: format!("https://127.0.0.1:{port}"),
        ca: tls.ca_file.path().to_string_lossy().into_owned(),
    };
    Running {
        dir,
        log,
        public_key,
        curl,
        tls,
        stop_tx,
    }
}

async fn create_retention(client: &kube::Client, ns: &str) {
    let retention: AuditRetention = serde_json::from_value(serde_json::json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "AuditRetention",
        "metadata": {"name": "default"}, "spec": {"retainFor": "400d"}
    }))
    .expect("retention");
    Api::<AuditRetention>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &retention)
        .await
        .expect("create retention");
}

/// Let service account `reader` of `ns` read evidence (`get auditretentions/evidence`).
async fn grant_evidence(client: &kube::Client, ns: &str, reader: &str) {
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "evidence-reader"},
        "rules": [{"apiGroups": ["portcullis.dev"], "resources": ["auditretentions/evidence"], "verbs": ["get"]}]
    }))
    .expect("role");
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .expect("role");
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{reader}-reads-evidence")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "evidence-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": reader, "namespace": ns}]
    }))
    .expect("binding");
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");
}

/// Export the records of `ns` as an auditor would: entries with their proofs, the bundle
/// files, the recordings they name, and the manifest the service signs.
async fn export(
    shipper: &AuditClient,
    auditor: &str,
    ns: &str,
    sth: &portcullis_crds::SignedTreeHead,
    dir: &std::path::Path,
) -> usize {
    use portcullis_audit::bundle::{add_recording, referenced_recordings, write_bundle_from};
    use portcullis_audit::manifest::{self, Selection};
    let size = sth.tree_size as u64;
    let namespaces = vec![ns.to_owned()];
    let mut fetched = None;
    for _ in 0..50 {
        // RBAC changes take effect within moments.
        match shipper
            .entries_in(auditor, 0, size, size, Some(&namespaces))
            .await
        {
            Ok(f) => {
                fetched = Some(f);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let selection = Selection {
        to_index: size,
        namespaces: Some(namespaces),
        ..Selection::default()
    };
    let n = write_bundle_from(fetched.expect("entries"), sth, &selection, dir).expect("bundle");
    for s in referenced_recordings(dir).expect("references") {
        let content = shipper
            .recording_in(auditor, &s, Some(ns))
            .await
            .expect("recording");
        add_recording(dir, &s, &content).expect("add");
    }
    let unsigned = manifest::build(dir, sth, &selection, 0).expect("manifest");
    let signed = shipper
        .sign_manifest(auditor, &unsigned)
        .await
        .expect("signed manifest");
    manifest::write(dir, &signed).expect("write manifest");
    n
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
    create_retention(&client, &ns).await;

    let Running {
        dir: _dir,
        log,
        public_key,
        curl,
        tls,
        stop_tx,
    } = start(&client, &ns).await;

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
        body.contains("record claims namespace kube-system but the token proves"),
        "{body}"
    );
    let (code, body) = curl.post("/v1/records", &good, &record(&ns, "other-pod", 101));
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("record claims pod other-pod but the token proves agent-0"),
        "{body}"
    );
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
    grant_evidence(&client, &ns, "auditor").await;
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
    let bundle_dir = tempfile::tempdir().expect("tmp");
    let n = export(&shipper, &auditor, &ns, &sth, bundle_dir.path()).await;
    assert_eq!(n, 30);
    let report = portcullis_audit::bundle::verify_bundle(bundle_dir.path(), &public_key)
        .expect("bundle verifies offline");
    assert_eq!(report.records, 30);
    let only_ns = [ns.clone()];
    let err = shipper
        .entries_in(&nosy, 0, 30, 30, Some(&only_ns))
        .await
        .expect_err("nosy is refused");
    assert!(
        err.to_string()
            .contains("may not get auditretentions/evidence"),
        "{err}"
    );
    let err = shipper
        .entries_in("garbage", 0, 30, 30, Some(&only_ns))
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

/// A recording as the sidecar writes it: header, output, input and resize events.
fn cast(lines: &[&str]) -> Vec<u8> {
    let mut out =
        b"{\"version\": 2, \"width\": 80, \"height\": 24, \"timestamp\": 1795412400}\n".to_vec();
    for l in lines {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    out
}

fn kube_record(ns: &str, pod: &str, seq: u64, event: serde_json::Value) -> AuditRecord {
    serde_json::from_value(serde_json::json!({
        "version": "portcullis.dev/audit/v1alpha1",
        "seq": seq,
        "time": format!("2026-11-23T05:41:0{seq}.000000Z"),
        "sessionId": "k-1",
        "identity": {"kind": "ServiceAccount", "name": "agent", "namespace": ns, "pod": pod},
        "resource": "cluster-api",
        "event": event
    }))
    .expect("record")
}

// curl runs as a blocking child process; the server needs threads of its own meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_are_authenticated_content_addressed_and_bundled() {
    use portcullis_audit::asciicast::Cast;
    use portcullis_audit::bundle::{verify_bundle, BundleError};
    use portcullis_audit::client::Bytes;
    use portcullis_audit::recordings::{sha256_hex, MAX_RECORDING_BYTES};

    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let ns = h.namespace("recordings").await;
    h.service_account(&ns, "agent").await;
    let pod = h.pod(&ns, "agent-0", "agent").await;
    create_retention(&client, &ns).await;
    let Running {
        dir,
        log,
        public_key,
        curl,
        tls,
        stop_tx,
    } = start(&client, &ns).await;
    let recordings_dir = dir.path().join("recordings");
    let good = h
        .token(&ns, "agent", Some("portcullis-audit"), Some(&pod))
        .await;

    let recording = cast(&[
        r#"[0.1, "o", "$ "]"#,
        r#"[0.9, "i", "cat /etc/hostname\r"]"#,
        r#"[1.0, "o", "cat /etc/hostname\r\n"]"#,
        r#"[1.2, "r", "120x40"]"#,
        r#"[1.3, "o", "agent-0\r\n"]"#,
    ]);
    let sha = sha256_hex(&recording);

    // Content that does not hash to the name is refused, and nothing is stored.
    let other = sha256_hex(b"another recording");
    let (code, body) = curl.put(&format!("/v1/recordings/{other}"), &good, &recording);
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains(&format!("content has SHA-256 {sha}, not {other}")),
        "{body}"
    );
    let (code, body) = curl.put(
        &format!("/v1/recordings/{}", sha.to_uppercase()),
        &good,
        &recording,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("expected 64 lowercase hex digits"), "{body}");
    let (code, body) = curl.put("/v1/recordings/..%2F..%2Fsegments", &good, &recording);
    assert_eq!(code, 400, "{body}");
    assert!(
        !recordings_dir.exists() || std::fs::read_dir(&recordings_dir).expect("list").count() == 0,
        "refused uploads stored nothing"
    );

    // Without a valid pod-bound token of the audit audience: refused before the body counts.
    let path = format!("/v1/recordings/{sha}");
    let (code, body) = curl.put(&path, "", &recording);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("missing bearer token"), "{body}");
    let wrong_audience = h.token(&ns, "agent", None, Some(&pod)).await;
    let (code, body) = curl.put(&path, &wrong_audience, &recording);
    assert_eq!(code, 401, "{body}");
    let unbound = h.token(&ns, "agent", Some("portcullis-audit"), None).await;
    let (code, body) = curl.put(&path, &unbound, &recording);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("not bound to a pod"), "{body}");
    assert!(!recordings_dir.join(format!("{sha}.cast")).exists());

    // Stored under its SHA-256; storing it again changes nothing.
    let (code, body) = curl.put(&path, &good, &recording);
    assert_eq!(code, 201, "{body}");
    let stored = recordings_dir.join(format!("{sha}.cast"));
    assert_eq!(std::fs::read(&stored).expect("stored"), recording);
    let (code, body) = curl.put(&path, &good, &recording);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        std::fs::read_dir(&recordings_dir)
            .expect("list")
            .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_file()))
            .count(),
        1,
        "no temporary files left"
    );

    // More than a recording may hold is refused with 413, whether the length is announced
    // (refused before the body is read) or the body streams past the bound; nothing is kept.
    let huge = vec![b'x'; MAX_RECORDING_BYTES + 1];
    let huge_path = format!("/v1/recordings/{}", sha256_hex(&huge));
    for headers in [&[][..], &["Transfer-Encoding: chunked"][..]] {
        let (code, body) = curl.put_with(&huge_path, &good, &huge, headers);
        assert_eq!(code, 413, "{headers:?}: {body}");
        assert!(
            body.contains(&format!("at most {MAX_RECORDING_BYTES} bytes")),
            "{body}"
        );
    }
    drop(huge);
    assert_eq!(
        std::fs::read_dir(&recordings_dir)
            .expect("list")
            .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_file()))
            .count(),
        1,
        "nothing stored from refused uploads"
    );

    // The sidecar's client: idempotent, refusals it must not retry, and recordings larger
    // than a batch of records may be.
    let shipper =
        AuditClient::new(&curl.url, tls.ca_file.path(), Duration::from_secs(30)).expect("client");
    shipper
        .upload_recording(&good, &sha, Bytes::from(recording.clone()))
        .await
        .expect("uploaded again");
    let err = shipper
        .upload_recording(&good, &other, Bytes::from(recording.clone()))
        .await
        .expect_err("wrong hash");
    assert!(!err.retryable(), "{err}");
    assert!(err.to_string().contains("(400)"), "{err}");
    let err = shipper
        .upload_recording("", &sha, Bytes::from(recording.clone()))
        .await
        .expect_err("no token");
    assert!(!err.retryable(), "{err}");
    assert!(err.to_string().contains("(401)"), "{err}");
    let big: Vec<u8> = {
        let line = format!("[0.5, \"o\", \"{}\\r\\n\"]", "x".repeat(1000));
        let lines: Vec<&str> = std::iter::repeat_n(line.as_str(), 9 * 1024).collect();
        cast(&lines)
    };
    assert!(big.len() > portcullis_audit::service::MAX_BATCH_BYTES);
    let big_sha = sha256_hex(&big);
    shipper
        .upload_recording(&good, &big_sha, Bytes::from(big.clone()))
        .await
        .expect("a 9 MiB recording is taken");

    // Readers: authorized like GET /v1/entries.
    grant_evidence(&client, &ns, "auditor").await;
    h.service_account(&ns, "auditor").await;
    h.service_account(&ns, "nosy").await;
    let auditor = h.token(&ns, "auditor", None, None).await;
    let nosy = h.token(&ns, "nosy", None, None).await;
    let in_ns = format!("{path}?namespace={ns}");
    let mut read = None;
    for _ in 0..50 {
        // RBAC changes take effect within moments.
        let (code, body) = curl.get_as(&in_ns, &auditor);
        if code == 200 {
            read = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(read.expect("auditor reads the recording"), recording);
    let (code, body) = curl.get_as(&in_ns, &nosy);
    assert_eq!(code, 403, "{}", String::from_utf8_lossy(&body));
    // Reading without naming the namespace is reading the whole log: cluster-wide only.
    let (code, body) = curl.get_as(&path, &auditor);
    assert_eq!(code, 403, "{}", String::from_utf8_lossy(&body));
    let (code, _) = curl.get_as(&in_ns, "garbage");
    assert_eq!(code, 401);
    let (code, _) = curl.get(&in_ns);
    assert_eq!(code, 401);
    let (code, body) = curl.get_as(&format!("/v1/recordings/{other}?namespace={ns}"), &auditor);
    assert_eq!(code, 404, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        shipper
            .recording_in(&auditor, &big_sha, Some(&ns))
            .await
            .expect("read"),
        Bytes::from(big)
    );
    let err = shipper
        .recording_in(&auditor, &other, Some(&ns))
        .await
        .expect_err("absent");
    assert!(err.to_string().contains("(404)"), "{err}");

    // The exec request, its response and its recording go through the log; an evidence
    // bundle carries the recording and verifies it against the signed record.
    let records = vec![
        kube_record(
            &ns,
            "agent-0",
            1,
            serde_json::json!({"type": "kubeRequest", "requestId": 7, "method": "POST",
                "verb": "create", "resource": "pods", "subresource": "exec", "namespace": "shop",
                "name": "web-0", "exec": {"container": "web", "command": ["cat", "/etc/hostname"],
                "stdin": true, "tty": true}, "decision": "audit",
                "rule": {"policy": "exec-policy", "rule": "audit-exec"}}),
        ),
        kube_record(
            &ns,
            "agent-0",
            2,
            serde_json::json!({"type": "kubeResponse", "requestId": 7, "code": 101,
                "durationMicros": 1200}),
        ),
        kube_record(
            &ns,
            "agent-0",
            3,
            serde_json::json!({"type": "recording", "requestId": 7, "sha256": sha,
                "bytes": recording.len(), "events": 5, "durationMillis": 1300,
                "protocol": "v5.channel.k8s.io", "target": "shop/web-0/web", "exitCode": 0}),
        ),
    ];
    assert_eq!(
        shipper.ship(&good, &records).await.expect("shipped"),
        vec![1, 2, 3]
    );
    let mut sth = shipper.latest_head().await;
    for _ in 0..50 {
        if sth.as_ref().is_ok_and(|s| s.tree_size == 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        sth = shipper.latest_head().await;
    }
    let sth = sth.expect("sth");
    assert_eq!(sth.tree_size, 3);
    assert_eq!(log.lock().expect("lock").size(), 3);
    let bundle = tempfile::tempdir().expect("tmp");
    assert_eq!(
        export(&shipper, &auditor, &ns, &sth, bundle.path()).await,
        3
    );
    let report = verify_bundle(bundle.path(), &public_key).expect("bundle verifies");
    assert_eq!((report.records, report.recordings), (3, 1));
    let summary = std::fs::read_to_string(bundle.path().join("summary.md")).expect("summary");
    assert!(
        summary.contains(&format!(
            "| ServiceAccount {ns}/agent | shop/web-0/web | `cat /etc/hostname` | audit | 0 | `recordings/{sha}.cast` (1.3 s, 5 events) |"
        )),
        "{summary}"
    );
    assert!(
        summary.contains("`create pods/exec shop/web-0: cat /etc/hostname` | audit | exec-policy/audit-exec | 101 |"),
        "{summary}"
    );
    let ocsf = std::fs::read_to_string(bundle.path().join("records.ocsf.jsonl")).expect("ocsf");
    let first: serde_json::Value =
        serde_json::from_str(ocsf.lines().next().expect("line")).expect("json");
    assert_eq!(
        (first["class_uid"].as_u64(), first["type_uid"].as_u64()),
        (Some(6003), Some(600301))
    );
    assert_eq!(first["api"]["operation"], "create");

    // The bundled recording replays as the session's output.
    let bundled = bundle.path().join(format!("recordings/{sha}.cast"));
    let cast = Cast::parse(&std::fs::read(&bundled).expect("bundled")).expect("parse");
    assert_eq!(cast.output(), "$ cat /etc/hostname\r\nagent-0\r\n");

    // One flipped byte in the recording, or a missing one, fails verification naming the file.
    let mut altered = recording.clone();
    let at = altered.len() - 5;
    altered[at] ^= 0x01;
    std::fs::write(&bundled, &altered).expect("tamper");
    let err = verify_bundle(bundle.path(), &public_key).expect_err("altered recording");
    assert!(
        matches!(&err, BundleError::Recording { file, .. } if file == &format!("recordings/{sha}.cast")),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("recordings/{sha}.cast: altered")),
        "{err}"
    );
    std::fs::remove_file(&bundled).expect("remove");
    let err = verify_bundle(bundle.path(), &public_key).expect_err("missing recording");
    assert_eq!(
        err.to_string(),
        format!("recordings/{sha}.cast: missing; record 3 names it")
    );
    let _ = stop_tx.send(true);
}
