//! Crash consistency of the real audit service process: it is killed with SIGKILL 50 times
//! while a sender streams batches (resending whatever was not acknowledged, as a sidecar does).
//! Afterwards every acknowledged record is in the log exactly once and the log verifies
//! against every tree head signed along the way.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_audit::store::{Log, LogOptions};
use portcullis_audit::verify::verify_log;
use portcullis_e2e::harness;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-audit");

fn record(ns: &str, seq: u64) -> String {
    serde_json::json!({
        "version": "portcullis.dev/audit/v1alpha1",
        "seq": seq,
        "time": "2026-11-23T05:40:00.000000Z",
        "sessionId": "s-1",
        "identity": {"kind": "ServiceAccount", "name": "agent", "namespace": ns, "pod": "agent-0"},
        "resource": "customers-db",
        "event": {"type": "sessionEnd", "statements": seq, "reason": "terminate"}
    })
    .to_string()
}

fn post(url: &str, ca: &str, token: &str, body: &str) -> Option<Vec<u64>> {
    let mut child = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert", ca, "-X", "POST"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--data-binary", "@-", "-w", "\n%{http_code}", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(body.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.trim_end().rsplit_once('\n')?;
    if code != "200" {
        return None;
    }
    let ack: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(
        ack["acknowledged"]
            .as_array()?
            .iter()
            .filter_map(|v| v.as_u64())
            .collect(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_kills_lose_no_acknowledged_record_and_duplicate_none() {
    let h = harness();
    let ns = h.namespace("crash").await;
    h.service_account(&ns, "agent").await;
    let pod = h.pod(&ns, "agent-0", "agent").await;
    let token = h
        .token(&ns, "agent", Some("portcullis-audit"), Some(&pod))
        .await;

    let work = tempfile::tempdir().expect("tmp");
    let data = work.path().join("log");
    let key = work.path().join("key.pk8");
    let out = Command::new(BIN)
        .arg("keygen")
        .arg(&key)
        .output()
        .expect("keygen");
    assert!(out.status.success());
    let public_key = hex::decode(String::from_utf8_lossy(&out.stdout).trim()).expect("hex key");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
    let (crt, pem_key) = (work.path().join("tls.crt"), work.path().join("tls.key"));
    std::fs::write(&crt, cert.cert.pem()).expect("crt");
    std::fs::write(&pem_key, cert.signing_key.serialize_pem()).expect("key");
    let ca = crt.to_string_lossy().into_owned();

    let start_service = |port: u16| -> Child {
        Command::new(BIN)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--sign-every-ms",
                "50",
            ])
            .arg("--data-dir")
            .arg(&data)
            .arg("--tls-cert")
            .arg(&crt)
            .arg("--tls-key")
            .arg(&pem_key)
            .arg("--signing-key")
            .arg(&key)
            .env("KUBECONFIG", h.kubeconfig())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start audit service")
    };

    let mut acked: BTreeSet<u64> = BTreeSet::new();
    let mut next_seq = 1u64;
    let mut unacked: Vec<u64> = Vec::new();
    let mut kills = 0;
    let began = Instant::now();
    while kills < 50 {
        let port = free_port();
        let mut child = start_service(port);
        let url = format!("https://127.0.0.1:{port}/v1/records");
        // Wait until it answers.
        let ready = Instant::now();
        while Command::new("curl")
            .args([
                "-sf",
                "--max-time",
                "1",
                "--cacert",
                &ca,
                &format!("https://127.0.0.1:{port}/readyz"),
            ])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            assert!(
                ready.elapsed() < Duration::from_secs(20),
                "audit service did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Stream batches for a random short while, then kill -9 mid-stream.
        let deadline = Instant::now() + Duration::from_millis(100 + (kills as u64 * 37) % 250);
        let killer = {
            let pid = child.id();
            std::thread::spawn(move || {
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            })
        };
        loop {
            // Resend what was not acknowledged, then new records.
            let mut batch = std::mem::take(&mut unacked);
            while batch.len() < 40 {
                batch.push(next_seq);
                next_seq += 1;
            }
            let body: String = batch.iter().map(|s| record(&ns, *s) + "\n").collect();
            match post(&url, &ca, &token, &body) {
                Some(seqs) => acked.extend(seqs),
                None => {
                    unacked = batch;
                    break;
                }
            }
        }
        let _ = killer.join();
        let _ = child.wait();
        kills += 1;
    }
    assert!(acked.len() > 500, "load ran: {} acknowledged", acked.len());

    let log = Log::open(&data, LogOptions::default()).expect("open after 50 kills");
    let mut seen: HashMap<u64, u64> = HashMap::new();
    for index in 0..log.size() {
        let entry = log.entry(index).expect("read").expect("entry");
        let v: serde_json::Value = serde_json::from_slice(&entry).expect("json");
        let seq = v["record"]["seq"].as_u64().expect("seq");
        *seen.entry(seq).or_default() += 1;
    }
    let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "duplicated records: {duplicates:?}");
    let missing: Vec<_> = acked.iter().filter(|s| !seen.contains_key(s)).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    drop(log);
    let verified = verify_log(&data, &public_key, &[]).expect("log verifies after 50 kills");
    assert!(verified.heads > 0, "tree heads were signed during the run");
    eprintln!(
        "50 kills in {:?}: {} records acknowledged, {} in the log, {} signed heads verified",
        began.elapsed(),
        acked.len(),
        seen.len(),
        verified.heads
    );
}
