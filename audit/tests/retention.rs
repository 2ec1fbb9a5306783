//! Retention and scheduled verification against the real API server: a legal hold stops
//! pruning, pruning by segment keeps the log verifiable against the head the cluster
//! witnessed, and a tampered segment turns the Verified condition False with the position and
//! a Warning Event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use portcullis_audit::recordings::{sha256_hex, RecordingStore};
use portcullis_audit::retention::reconcile_once;
use portcullis_audit::service::{publish, run_signer, Witness};
use portcullis_audit::store::{Log, LogOptions};
use portcullis_crds::audit_log::LogSigner;
use portcullis_crds::conditions::{find_condition, types};
use portcullis_crds::AuditRetention;
use portcullis_e2e::harness;
use ring::rand::SystemRandom;
use ring::signature::Ed25519KeyPair;

fn entry(i: u64, days_ago: i64, recording: Option<&str>) -> Vec<u8> {
    let at = Timestamp::now() - SignedDuration::from_hours(24 * days_ago);
    let record = match recording {
        Some(sha256) => {
            serde_json::json!({"seq": i, "event": {"type": "recording", "sha256": sha256}})
        }
        None => serde_json::json!({"seq": i}),
    };
    serde_json::json!({
        "id": format!("pod-uid:{i}"),
        "receivedAt": format!("{at:.6}"),
        "source": {"user": "system:serviceaccount:agents:agent", "namespace": "agents", "serviceAccount": "agent"},
        "record": record
    })
    .to_string()
    .into_bytes()
}

/// Store a recording and date it `days_ago`.
fn recording(store: &RecordingStore, text: &str, days_ago: u64) -> String {
    let sha = sha256_hex(text.as_bytes());
    store.put(&sha, text.as_bytes()).expect("put");
    std::fs::File::options()
        .append(true)
        .open(store.path(&sha))
        .and_then(|f| {
            f.set_modified(std::time::SystemTime::now() - Duration::from_secs(86_400 * days_ago))
        })
        .expect("date the recording");
    sha
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legal_hold_retention_and_scheduled_verification() {
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let ns = h.namespace("retention").await;
    let api: Api<AuditRetention> = Api::namespaced(client.clone(), &ns);
    let retention: AuditRetention = serde_json::from_value(serde_json::json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "AuditRetention",
        "metadata": {"name": "default"}, "spec": {"retainFor": "400d", "legalHold": true}
    }))
    .expect("retention");
    api.create(&PostParams::default(), &retention)
        .await
        .expect("create");
    let witness = Witness {
        namespace: ns.clone(),
        name: "default".into(),
    };

    // 120 entries from 500 days ago, then 80 from today, in small segments.
    let dir = tempfile::tempdir().expect("tmp");
    let mut log = Log::open(
        dir.path(),
        LogOptions {
            segment_bytes: 2048,
        },
    )
    .expect("open");
    // Recordings: one old and named by a record kept, one old and named only by a record
    // that retention prunes, one recent and named by none.
    let store = RecordingStore::new(dir.path());
    let named_kept = recording(&store, "session kept", 500);
    let named_pruned = recording(&store, "session pruned", 500);
    let recent = recording(&store, "session recent", 0);
    for chunk in (0..200u64).collect::<Vec<_>>().chunks(10) {
        let batch: Vec<Vec<u8>> = chunk
            .iter()
            .map(|&i| {
                let named = match i {
                    0 => Some(named_pruned.as_str()),
                    150 => Some(named_kept.as_str()),
                    _ => None,
                };
                entry(i, if i < 120 { 500 } else { 0 }, named)
            })
            .collect();
        log.append(&batch).expect("append");
    }
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
    let signer = LogSigner::from_pkcs8(pkcs8.as_ref()).expect("signer");
    let sth = signer.sign(&log.head(1_800_000_000_000));
    log.record_head(&sth).expect("record head");
    publish(&client, &witness, &sth).await.expect("publish");
    let log = Arc::new(Mutex::new(log));
    // The signer covers prune entries with signed heads (pruning waits for that).
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut stopped1 = stopped.clone();
    tokio::spawn(run_signer(
        log.clone(),
        LogSigner::from_pkcs8(pkcs8.as_ref()).expect("signer"),
        Duration::from_millis(100),
        None,
        None,
        async move {
            let _ = stopped1.changed().await;
        },
    ));

    // Legal hold: nothing pruned, verified.
    let verified = reconcile_once(&client, &witness, &log, signer.public_key())
        .await
        .expect("round");
    assert_eq!(verified.expect("verifies").entries, 200);
    let status = api
        .get("default")
        .await
        .expect("get")
        .status
        .expect("status");
    assert_eq!(status.record_count, 200);
    assert!(status.bytes > 0);
    assert!(status.last_verification.is_some());
    let cond = find_condition(&status.conditions, types::VERIFIED).expect("Verified");
    assert_eq!(cond.status, "True", "{cond:?}");
    assert_eq!(log.lock().expect("lock").pruned(), 0);
    for sha in [&named_kept, &named_pruned, &recent] {
        assert!(store.path(sha).exists(), "legal hold keeps recordings");
    }

    // Hold lifted: the old segments go, the log still verifies against the witnessed head.
    api.patch(
        "default",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"legalHold": false}})),
    )
    .await
    .expect("lift hold");
    let verified = reconcile_once(&client, &witness, &log, signer.public_key())
        .await
        .expect("round");
    // 200 records and the signed prune entry that retired the old segments.
    assert_eq!(verified.expect("verifies after pruning").entries, 201);
    let pruned = log.lock().expect("lock").pruned();
    assert!(pruned > 0 && pruned <= 120, "pruned {pruned}");
    assert!(store.path(&named_kept).exists(), "named by a kept record");
    assert!(!store.path(&named_pruned).exists(), "its record was pruned");
    assert!(store.path(&recent).exists(), "stored within retention");
    let status = api
        .get("default")
        .await
        .expect("get")
        .status
        .expect("status");
    assert_eq!(status.record_count as u64, 201 - pruned);
    let oldest = status.oldest_record.expect("oldest").0;
    assert!(Timestamp::now().duration_since(oldest) < SignedDuration::from_hours(24 * 501));

    // Tampering: a byte flipped in a kept segment.
    let segments = log.lock().expect("lock").segments();
    let (first, _, _) = *segments.last().expect("segment");
    let path = dir
        .path()
        .join("segments")
        .join(portcullis_audit::segment::segment_name(first));
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[30] ^= 0x20;
    std::fs::write(&path, &bytes).expect("write");
    let verified = reconcile_once(&client, &witness, &log, signer.public_key())
        .await
        .expect("round");
    let err = verified.expect_err("tampering found");
    assert_eq!(
        err.to_string(),
        format!("entry {first} is damaged: checksum mismatch")
    );
    let status = api
        .get("default")
        .await
        .expect("get")
        .status
        .expect("status");
    let cond = find_condition(&status.conditions, types::VERIFIED).expect("Verified");
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "VerificationFailed")
    );
    assert!(
        cond.message.contains(&format!("entry {first} is damaged")),
        "{cond:?}"
    );
    let events: Api<CoreEvent> = Api::namespaced(client.clone(), &ns);
    let mut found = false;
    for _ in 0..50 {
        let list = events.list(&ListParams::default()).await.expect("events");
        if list
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("VerificationFailed"))
        {
            found = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(found, "a VerificationFailed event was published");
    let _ = stop.send(true);
}
