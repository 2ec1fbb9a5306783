//! Shipping the spool to a real audit service (in-process, authenticating the sidecar with a
//! real pod-bound projected token through the harness API server's TokenReview): every record
//! arrives exactly once across service and sidecar restarts, shipped segments are deleted,
//! `onAuditUnavailable` denies or keeps going while the service is down, no seeded personal
//! data reaches the spool or the log, and the evidence bundle of the run verifies offline.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_audit::service::{run_signer, serve_tls, AuditService, LogEntry};
use portcullis_audit::store::{Log, LogOptions};
use portcullis_crds::audit::AuditRecord;
use portcullis_crds::audit_log::LogSigner;
use portcullis_e2e::harness;
use ring::rand::SystemRandom;
use ring::signature::Ed25519KeyPair;

use crate::common::{direct, read_spool, Proxy, ProxyBuilder};

/// A namespace with a service account and pod, the pod's audit token, the service's TLS and
/// signing key.
struct Fixture {
    ns: String,
    tmp: tempfile::TempDir,
    token_file: PathBuf,
    ca_file: PathBuf,
    tls: Arc<rustls::ServerConfig>,
    key: Vec<u8>,
    public_key: Vec<u8>,
}

async fn fixture(prefix: &str) -> Fixture {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let h = harness();
    let ns = h.namespace(prefix).await;
    h.service_account(&ns, "agent").await;
    let pod = h.pod(&ns, "agent-0", "agent").await;
    let token = h
        .token(&ns, "agent", Some("portcullis-audit"), Some(&pod))
        .await;
    let tmp = tempfile::tempdir().expect("tmp");
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, token).expect("token file");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("certificate");
    let ca_file = tmp.path().join("ca.crt");
    std::fs::write(&ca_file, cert.cert.pem()).expect("ca file");
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key_der)
        .expect("server config");
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
    let public_key = LogSigner::from_pkcs8(pkcs8.as_ref())
        .expect("signer")
        .public_key()
        .to_vec();
    Fixture {
        ns,
        tmp,
        token_file,
        ca_file,
        tls: Arc::new(tls),
        key: pkcs8.as_ref().to_vec(),
        public_key,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The audit service on a runtime of its own, so that stopping it ends every connection and
/// task at once, like a killed process.
struct AuditServer {
    runtime: Option<tokio::runtime::Runtime>,
}

impl AuditServer {
    async fn start(f: &Fixture, data: &Path, port: u16) -> AuditServer {
        let (data, tls, key) = (data.to_path_buf(), f.tls.clone(), f.key.clone());
        let runtime = tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let client = harness().client().await;
                let log = Arc::new(Mutex::new(
                    Log::open(&data, LogOptions::default()).expect("open log"),
                ));
                let service = AuditService::new(client, log.clone());
                let mut listener = None;
                for _ in 0..100 {
                    match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                        Ok(l) => {
                            listener = Some(l);
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                let listener = listener.expect("bind the audit port");
                tokio::spawn(serve_tls(
                    listener,
                    tls,
                    service.router(),
                    std::future::pending(),
                ));
                let signer = LogSigner::from_pkcs8(&key).expect("signer");
                tokio::spawn(run_signer(
                    log,
                    signer,
                    Duration::from_millis(200),
                    None,
                    None,
                    std::future::pending(),
                ));
            });
            runtime
        })
        .await
        .expect("start the audit service");
        AuditServer {
            runtime: Some(runtime),
        }
    }

    /// Stop at once: requests in flight are cut off, as by a crash.
    async fn stop(mut self) {
        if let Some(rt) = self.runtime.take() {
            tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(10)))
                .await
                .expect("stop the audit service");
        }
    }
}

/// Every entry of a (stopped) service's log.
fn log_entries(data: &Path) -> Vec<LogEntry> {
    let log = Log::open(data, LogOptions::default()).expect("open log");
    (0..log.size())
        .filter_map(|i| log.entry(i).expect("read entry"))
        .map(|bytes| serde_json::from_slice(&bytes).expect("entry"))
        .collect()
}

fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("spool dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| portcullis_sidecar::audit::spool::segment_index(n).is_some())
        .collect();
    names.sort();
    names
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Wait until the spool holds nothing unacknowledged.
async fn drained(proxy: &Proxy) {
    for _ in 0..300 {
        if proxy.sidecar().spool().bytes() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "spool not drained: {} bytes unacknowledged",
        proxy.sidecar().spool().bytes()
    );
}

fn shipping_proxy(f: &Fixture, url: &str, spool: &Path) -> ProxyBuilder {
    ProxyBuilder::default()
        .identity(&f.ns, "agent", Some("agent-0"))
        .spool_dir(spool)
        .audit_service(url, &f.ca_file, &f.token_file)
}

fn key(r: &AuditRecord) -> (String, u64) {
    (r.session_id.clone(), r.seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_arrives_exactly_once_across_service_and_sidecar_restarts() {
    let f = fixture("ship").await;
    let data = f.tmp.path().join("log");
    let spool = f.tmp.path().join("spool");
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let server = AuditServer::start(&f, &data, port).await;
    let proxy = shipping_proxy(&f, &url, &spool).start().await;

    // Statements run continuously while the service is stopped and started again under them.
    let conn = proxy.conn_str();
    let load = tokio::spawn(async move {
        let client = crate::common::connect(&conn).await;
        let started = std::time::Instant::now();
        for i in 0..600u32 {
            client
                .simple_query(&format!(
                    "SELECT id, full_name FROM customers WHERE id = {}",
                    i % 500 + 1
                ))
                .await
                .expect("statement served while the audit service is down (no deny policy)");
        }
        started.elapsed()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop().await;
    // Whether or not the load is still running, records are made while the service is down.
    let during = proxy.client().await;
    for i in 0..20 {
        during
            .simple_query(&format!("SELECT count(*) FROM orders WHERE id < {i}"))
            .await
            .expect("served while the audit service is down");
    }
    drop(during);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = proxy.metrics().await;
    assert!(
        metric(&m, "portcullis_sidecar_audit_ship_failures_total") >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "portcullis_sidecar_audit_unshipped_bytes") > 0.0,
        "{m}"
    );
    let server = AuditServer::start(&f, &data, port).await;
    let elapsed = load.await.expect("load");
    drained(&proxy).await;
    let m = proxy.metrics().await;
    assert_eq!(
        metric(&m, "portcullis_sidecar_audit_unshipped_bytes"),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "portcullis_sidecar_audit_service_up"),
        1.0,
        "{m}"
    );
    proxy.stop().await;

    // The segment the first sidecar wrote is kept while it is the newest one.
    let first = segments(&spool);
    assert_eq!(first.len(), 1, "{first:?}");
    let mut expected: Vec<AuditRecord> = read_spool(&spool);
    assert!(expected.len() >= 1200, "{} records", expected.len());

    // A restarted sidecar (same pod, sequence numbers start again) ships its own records and
    // deletes the first segment, whose records were all acknowledged.
    let proxy = shipping_proxy(&f, &url, &spool).start().await;
    let client = proxy.client().await;
    for i in 0..20 {
        client
            .simple_query(&format!("SELECT count(*) FROM orders WHERE id > {i}"))
            .await
            .expect("statement");
    }
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    drained(&proxy).await;
    let mut remaining = segments(&spool);
    for _ in 0..50 {
        if !remaining.contains(&first[0]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        remaining = segments(&spool);
    }
    assert!(
        !remaining.contains(&first[0]),
        "the acknowledged segment {} is deleted once a newer one exists: {remaining:?}",
        first[0]
    );
    assert_eq!(remaining.len(), 1, "{remaining:?}");
    proxy.stop().await;
    expected.extend(read_spool(&spool));
    server.stop().await;

    // Every record is in the log exactly once, as spooled, bound to the pod.
    let entries = log_entries(&data);
    let ids: HashSet<&str> = entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), entries.len(), "no duplicate ids");
    let mut logged: BTreeMap<(String, u64), AuditRecord> = BTreeMap::new();
    for e in &entries {
        assert_eq!(e.source.pod.as_deref(), Some("agent-0"));
        assert_eq!(e.source.namespace, f.ns);
        assert!(
            logged.insert(key(&e.record), e.record.clone()).is_none(),
            "record {:?} logged twice",
            key(&e.record)
        );
    }
    // The service fills the workload identity the token proves (here the pod UID).
    let pod_uid = entries.first().and_then(|e| e.source.pod_uid.clone());
    assert!(pod_uid.is_some());
    let spooled: BTreeMap<(String, u64), AuditRecord> = expected
        .into_iter()
        .map(|mut r| {
            if r.identity.pod_uid.is_none() {
                r.identity.pod_uid = pod_uid.clone();
            }
            (key(&r), r)
        })
        .collect();
    assert_eq!(logged.len(), spooled.len(), "every record arrives");
    assert_eq!(logged, spooled);
    eprintln!(
        "shipped {} records; 600 statements took {elapsed:?} with one service restart",
        entries.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_audit_unavailable_deny_refuses_past_the_bound_and_continue_keeps_serving() {
    let f = fixture("ship-down").await;
    let data = f.tmp.path().join("log");
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");

    // deny: the service is down from the start; past 4000 unshipped bytes statements are
    // refused with 42501 naming the rule, and served again once the service drains the spool.
    let spool = f.tmp.path().join("spool-deny");
    let proxy = shipping_proxy(&f, &url, &spool)
        .policy(
            "audit-bound",
            "onAuditUnavailable: deny\nspoolLimitBytes: 4000\n",
        )
        .start()
        .await;
    let client = proxy.client().await;
    let mut refused = None;
    for i in 0..200 {
        match client
            .simple_query(&format!("SELECT id FROM customers WHERE id = {}", i + 1))
            .await
        {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (served, err) = refused.expect("refused once the spool passes its bound");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "42501", "{db:?}");
    assert!(
        db.message().contains("audit-unavailable"),
        "{}",
        db.message()
    );
    assert!(served >= 2, "served {served} statements before the bound");
    let m = failed_once(&proxy).await;
    assert!(
        metric(&m, "portcullis_sidecar_audit_ship_failures_total") >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "portcullis_sidecar_audit_unshipped_bytes") > 4000.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "portcullis_sidecar_audit_service_up"),
        0.0,
        "{m}"
    );
    let server = AuditServer::start(&f, &data, port).await;
    drained(&proxy).await;
    client
        .simple_query("SELECT id FROM customers WHERE id = 1")
        .await
        .expect("served again once the spool is shipped");
    drop(client);
    proxy.stop().await;
    server.stop().await;

    // continue: the service is down; statements keep being served and spooled far past the
    // bound.
    let spool = f.tmp.path().join("spool-continue");
    let proxy = shipping_proxy(&f, &url, &spool)
        .policy(
            "audit-relaxed",
            "onAuditUnavailable: continue\nspoolLimitBytes: 1000\n",
        )
        .start()
        .await;
    let client = proxy.client().await;
    for i in 0..50 {
        client
            .simple_query(&format!("SELECT id FROM customers WHERE id = {}", i + 1))
            .await
            .expect("served while the audit service is down");
    }
    let m = failed_once(&proxy).await;
    assert!(
        metric(&m, "portcullis_sidecar_audit_unshipped_bytes") > 10_000.0,
        "{m}"
    );
    assert!(
        metric(&m, "portcullis_sidecar_audit_ship_failures_total") >= 1.0,
        "{m}"
    );
    drop(client);
    proxy.stop().await;
}

/// The proxy's metrics once a shipping attempt has failed (or after 20 s). Reads do not wait
/// for the spool, so statements can outrun the shipper's first attempt.
async fn failed_once(proxy: &Proxy) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut m = proxy.metrics().await;
    while metric(&m, "portcullis_sidecar_audit_ship_failures_total") < 1.0
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = proxy.metrics().await;
    }
    m
}

/// Seeded personal data: every e-mail, SSN, card number and IBAN of the customers table.
async fn seeded_values() -> Vec<String> {
    let db = direct().await;
    let rows = db
        .query(
            "SELECT email, ssn, coalesce(card_number, ''), coalesce(iban, '') FROM customers",
            &[],
        )
        .await
        .expect("seeded customers");
    let mut out = Vec::new();
    for r in rows {
        for i in 0..4 {
            let v: String = r.get(i);
            if v.len() >= 6 {
                out.push(v);
            }
        }
    }
    assert!(out.len() > 1500, "{} values", out.len());
    out
}

/// Every byte of every file below `dir`, per file.
fn files_below(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).expect("read file")));
            }
        }
    }
    out
}

fn assert_no_personal_data(values: &[String], dirs: &[&Path]) -> usize {
    let mut bytes = 0;
    for dir in dirs {
        for (path, content) in files_below(dir) {
            bytes += content.len();
            let text = String::from_utf8_lossy(&content);
            for v in values {
                if let Some(at) = text.find(v.as_str()) {
                    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
                    panic!(
                        "seeded value {v} found in {}: {}",
                        path.display(),
                        &text[line_start..line_end]
                    );
                }
            }
        }
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_personal_data_reaches_the_spool_or_the_log_and_the_bundle_verifies_offline() {
    let f = fixture("ship-pii").await;
    let data = f.tmp.path().join("log");
    let spool = f.tmp.path().join("spool");
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let values = seeded_values().await;
    let db = direct().await;
    let row = db
        .query_one(
            "SELECT email, ssn, card_number, iban, full_name FROM customers WHERE card_number IS NOT NULL AND iban IS NOT NULL ORDER BY id LIMIT 1",
            &[],
        )
        .await
        .expect("a customer");
    let (email, ssn, card, iban): (String, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));

    let server = AuditServer::start(&f, &data, port).await;
    let proxy = shipping_proxy(&f, &url, &spool)
        .policy(
            "customer-support",
            "lawfulBasis: contract\npurpose: answer customer support tickets\nguardrails:\n- name: no-unbounded-delete\n  statementKinds: [delete]\n  missingWhere: true\n  action: deny\n",
        )
        .start()
        .await;
    let client = proxy.client().await;
    // Results full of personal data, and personal data as literals in every position.
    let rows = client
        .simple_query("SELECT * FROM customers ORDER BY id")
        .await
        .expect("select all");
    assert!(rows.len() > 500);
    let statements = [
        format!("SELECT id FROM customers WHERE email = '{email}'"),
        format!("SELECT id FROM customers WHERE ssn = '{ssn}' OR card_number = '{card}'"),
        format!(
            "SELECT id FROM customers WHERE iban LIKE '{}%'",
            &iban[..12]
        ),
        format!("SELECT id FROM customers WHERE iban IN ('{iban}', 'x')"),
        format!("SELECT upper('{email}'), length('{card}')"),
        format!("SELECT id FROM customers WHERE email = $${email}$$"),
        format!("SELECT E'{ssn}' AS s"),
        format!("BEGIN; UPDATE customers SET phone = '{iban}' WHERE email = '{email}'; ROLLBACK"),
    ];
    for s in &statements {
        client
            .simple_query(s)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    // Failing statements: the server's error message may quote the value.
    for s in [
        format!("SELECT '{email}'::int"),
        "SELECT email::int FROM customers ORDER BY id LIMIT 1".to_owned(),
        format!("SELECT id FROM customers WHERE id = '{card}'"),
        format!("SELEKT '{email}' FROM customers"),
        "DELETE FROM customers".to_owned(),
    ] {
        assert!(client.simple_query(&s).await.is_err(), "{s} fails");
    }
    // Extended protocol with the values as parameters.
    let by_email = client
        .query(
            "SELECT id, email FROM customers WHERE email = $1",
            &[&email],
        )
        .await
        .expect("extended");
    assert_eq!(by_email.len(), 1);
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    drained(&proxy).await;

    // Wait for a signed head covering everything, then stop and export the bundle offline.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let spool_bytes = assert_no_personal_data(&values, &[&spool]);
    proxy.stop().await;
    server.stop().await;
    let log_bytes = assert_no_personal_data(&values, &[&data]);
    assert!(
        log_bytes > 5_000,
        "the log holds the records ({log_bytes} bytes)"
    );
    eprintln!("no seeded value in {spool_bytes} spool bytes and {log_bytes} log bytes");

    let log = Log::open(&data, LogOptions::default()).expect("open log");
    let sth = log.heads().last().cloned().expect("a signed tree head");
    assert_eq!(
        sth.tree_size as u64,
        log.size(),
        "the last head covers the log"
    );
    let verified = portcullis_audit::verify::verify_log(&data, &f.public_key, &[])
        .expect("the log verifies offline");
    assert_eq!(verified.entries, log.size());

    let bundle = f.tmp.path().join("bundle");
    let signer = LogSigner::from_pkcs8(&f.key).expect("signer");
    let n = portcullis_audit::bundle::write_bundle(
        &log,
        &sth,
        &portcullis_audit::manifest::Selection::default(),
        &signer,
        &bundle,
    )
    .expect("bundle");
    assert_eq!(n as u64, log.size());
    let report =
        portcullis_audit::bundle::verify_bundle(&bundle, &f.public_key).expect("bundle verifies");
    assert_eq!(report.records as u64, log.size());
    assert_no_personal_data(&values, &[&bundle]);
    let summary = std::fs::read_to_string(bundle.join("summary.md")).expect("summary");
    for needle in [
        "customer-support",
        "contract",
        "answer customer support tickets",
        &format!("ServiceAccount {}/agent", f.ns),
        "no-unbounded-delete",
    ] {
        assert!(
            summary.contains(needle),
            "summary names {needle}:\n{summary}"
        );
    }

    // One flipped byte anywhere in the records is detected and the record named.
    let records = bundle.join("records.jsonl");
    let mut bytes = std::fs::read(&records).expect("records");
    let at = bytes.len() / 2;
    bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
    std::fs::write(&records, &bytes).expect("tamper");
    let err = portcullis_audit::bundle::verify_bundle(&bundle, &f.public_key)
        .expect_err("tampering is detected");
    assert!(err.to_string().contains("fails verification"), "{err}");
}

/// Shipping rate: a spool of 20,000 records (two segments, as after a sidecar restart) is
/// shipped to the service and acknowledged; the figure is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_shipped_in_batches_and_its_rate_reported() {
    use portcullis_sidecar::audit::ship::{Shipper, ShipperOptions, Step, UnavailablePolicies};
    let f = fixture("ship-rate").await;
    let data = f.tmp.path().join("log");
    let spool_dir = f.tmp.path().join("spool");
    std::fs::create_dir_all(&spool_dir).expect("spool dir");
    const N: u64 = 20_000;
    for (segment, range) in [(1u64, 1..=N / 2), (2, N / 2 + 1..=N)] {
        let mut text = String::new();
        for seq in range {
            text.push_str(
                &serde_json::json!({
                    "version": "portcullis.dev/audit/v1alpha1", "seq": seq,
                    "time": "2026-11-23T06:00:00.000000Z", "sessionId": "backlog-1",
                    "identity": {"kind": "ServiceAccount", "name": "agent", "namespace": f.ns, "pod": "agent-0"},
                    "resource": "shop-db",
                    "event": {"type": "statement", "statementId": seq, "protocol": "simple",
                              "statement": "SELECT id, full_name FROM customers WHERE id = ?",
                              "fingerprint": "0123456789abcdef", "kinds": ["select"],
                              "tables": ["public.customers"], "decision": "allow"}
                })
                .to_string(),
            );
            text.push('\n');
        }
        std::fs::write(spool_dir.join(format!("audit-{segment:010}.jsonl")), text)
            .expect("segment");
    }
    let port = free_port();
    let server = AuditServer::start(&f, &data, port).await;
    let spool = portcullis_sidecar::audit::spool::Spool::open(&spool_dir).expect("spool");
    let mut options = ShipperOptions::from_config(&portcullis_crds::sidecar_config::AuditConfig {
        spool_dir: spool_dir.clone(),
        service_url: Some(format!("https://127.0.0.1:{port}")),
        ca_file: Some(f.ca_file.clone()),
        token_file: Some(f.token_file.clone()),
    })
    .expect("options")
    .expect("shipping");
    options.request_timeout = Duration::from_secs(60);
    let mut shipper = Shipper::new(
        &spool_dir,
        spool.clone(),
        portcullis_sidecar::metrics::Metrics::new().expect("metrics"),
        options,
        UnavailablePolicies::default(),
    )
    .expect("shipper");
    let started = std::time::Instant::now();
    let (mut shipped, mut batches) = (0usize, 0usize);
    while let Step::Shipped(n) = shipper.step().await.expect("shipped") {
        shipped += n;
        batches += usize::from(n > 0);
    }
    let elapsed = started.elapsed();
    assert_eq!(shipped as u64, N);
    assert_eq!(spool.bytes(), 0);
    assert_eq!(
        segments(&spool_dir),
        vec!["audit-0000000002.jsonl".to_owned()],
        "the first segment is deleted, the newest kept"
    );
    server.stop().await;
    assert_eq!(log_entries(&data).len() as u64, N);
    eprintln!(
        "shipped {N} records in {batches} batches in {elapsed:?}: {:.0} records/s",
        N as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_reach_the_audit_service_and_leave_the_spool() {
    use sha2::{Digest, Sha256};
    let f = fixture("recordings").await;
    let data = f.tmp.path().join("log");
    let spool = f.tmp.path().join("spool");
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let server = AuditServer::start(&f, &data, port).await;
    // Two finished recordings as the exec relay leaves them, and one damaged after it was
    // named (its content no longer has the hash of its name).
    let dir = spool.join("recordings");
    std::fs::create_dir_all(&dir).expect("recordings dir");
    let mut names = Vec::new();
    for n in 0..2 {
        let body = format!(
            "{{\"version\":2,\"width\":80,\"height\":24}}\n[0.1,\"o\",\"session {n}\\r\\n\"]\n"
        );
        let sha = hex::encode(Sha256::digest(body.as_bytes()));
        std::fs::write(dir.join(format!("{sha}.cast")), &body).expect("recording");
        names.push(sha);
    }
    let damaged = "0".repeat(64);
    std::fs::write(dir.join(format!("{damaged}.cast")), "{\"version\":2}\n").expect("damaged");
    let proxy = shipping_proxy(&f, &url, &spool).start().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while names.iter().any(|n| dir.join(format!("{n}.cast")).exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "recordings not uploaded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for n in &names {
        let stored = data.join("recordings").join(format!("{n}.cast"));
        let bytes = std::fs::read(&stored).unwrap_or_else(|e| panic!("{}: {e}", stored.display()));
        assert_eq!(&hex::encode(Sha256::digest(&bytes)), n);
    }
    assert!(
        dir.join(format!("{damaged}.cast.refused")).exists(),
        "the damaged file is set aside"
    );
    assert!(!data
        .join("recordings")
        .join(format!("{damaged}.cast"))
        .exists());
    loop {
        let m = proxy.metrics().await;
        if metric(&m, "portcullis_sidecar_recordings_pending") == 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.stop().await;
    server.stop().await;
}

/// A standalone sidecar (no audit service) keeps its records in the local spool as the log of
/// record: the bound on records awaiting the audit service does not lock it out, neither while
/// it runs nor after a restart on the same spool. With an audit service configured but down,
/// the same policy and traffic are refused past the bound (the test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_sidecar_keeps_serving_past_the_spool_bound() {
    let f = fixture("standalone").await;
    let spool = f.tmp.path().join("spool-standalone");
    let standalone = || {
        ProxyBuilder::default()
            .identity(&f.ns, "agent", Some("agent-0"))
            .spool_dir(&spool)
            .policy(
                "audit-bound",
                "onAuditUnavailable: deny\nspoolLimitBytes: 4000\n",
            )
    };
    for round in 0..2 {
        let proxy = standalone().start().await;
        let client = proxy.client().await;
        for i in 0..100 {
            client
                .simple_query(&format!("SELECT id FROM customers WHERE id = {}", i + 1))
                .await
                .unwrap_or_else(|e| panic!("round {round}, statement {i}: {e:?}"));
        }
        drop(client);
        proxy.stop().await;
    }
    // Every statement of both runs is in the spool, far past the 4000-byte bound.
    let records = read_spool(&spool);
    let selects = records
        .iter()
        .filter(|r| matches!(&r.event, portcullis_crds::audit::AuditEvent::Statement(_)))
        .count();
    assert!(selects >= 200, "{selects} statement records in the spool");
    let bytes: u64 = std::fs::read_dir(&spool)
        .expect("spool dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    assert!(bytes > 40_000, "the spool holds {bytes} bytes");
}
