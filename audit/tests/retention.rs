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
use portcullis_e2e::{harness, User};
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

/// Create an AuditRetention as `client` in `ns`.
async fn create_retention(
    client: &kube::Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> Result<AuditRetention, kube::Error> {
    let r: AuditRetention = serde_json::from_value(serde_json::json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "AuditRetention",
        "metadata": {"name": name}, "spec": spec
    }))
    .expect("retention");
    Api::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &r)
        .await
}

/// A team namespace's AuditRetention that would weaken the cluster's (its own storage, a
/// shorter retainFor, its own verification schedule) is refused at admission by the chart's
/// policy for a namespace user; the same objects are accepted without the policy (the
/// baseline), and once stored the audit service reports them `Ready=False` naming what is not
/// honoured, while a stronger one is `Ready=True`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_retention_that_weakens_the_cluster_s_is_refused_or_reported() {
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let system = h.namespace("ret-system").await;
    let team = h.namespace("ret-team").await;
    let scope = team.clone();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .patch(
            &team,
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"labels": {"portcullis.dev/test": scope}}}),
            ),
        )
        .await
        .expect("label");
    create_retention(
        &client,
        &system,
        "default",
        serde_json::json!({"retainFor": "400d"}),
    )
    .await
    .expect("the cluster's AuditRetention");
    // alice edits AuditRetentions in the team namespace (nothing else of portcullis.dev).
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "retention-editor"},
        "rules": [{"apiGroups": ["portcullis.dev"], "resources": ["auditretentions"],
                   "verbs": ["get", "list", "create", "update", "patch", "delete"]}]
    }))
    .expect("role");
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(client.clone(), &team)
        .create(&PostParams::default(), &role)
        .await
        .expect("role");
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "alice-retention"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "retention-editor"},
        "subjects": [{"kind": "User", "name": User::Owner.name()}]
    }))
    .expect("binding");
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), &team)
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");
    let alice = h.client_as(User::Owner).await;

    let weakening = [
        (
            "storage",
            serde_json::json!({"retainFor": "500d", "storage": {"persistentVolume": {"claimName": "team-log"}}}),
            "spec.storage is set by the cluster's AuditRetention",
        ),
        (
            "shorter",
            serde_json::json!({"retainFor": "72h"}),
            "retainFor 72h is shorter than the cluster's 400d",
        ),
        (
            "schedule",
            serde_json::json!({"retainFor": "400d", "verifyEvery": "24h"}),
            "verifyEvery is set by the cluster's AuditRetention",
        ),
    ];
    // Baseline: without the policy the API server stores every one of them.
    for (name, spec, _) in &weakening {
        create_retention(&alice, &team, &format!("stored-{name}"), spec.clone())
            .await
            .unwrap_or_else(|e| panic!("without the policy {name} is stored: {e}"));
    }

    // The chart's policy, its binding scoped to this test's team namespace.
    let out = std::process::Command::new(h.helm_path())
        .args([
            "template",
            &format!("r{}", &team[team.len() - 6..]),
            &portcullis_e2e::repo_root()
                .join("charts/portcullis")
                .to_string_lossy(),
            "--kube-version",
            "1.34.0",
            "--namespace",
            &system,
            "--show-only",
            "templates/retention-policy.yaml",
            "--set",
            &format!("webhook.namespaceLabels.portcullis\\.dev/test={scope}"),
        ])
        .output()
        .expect("helm template");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        rendered.contains(&format!("portcullis.dev/test: {scope}")),
        "{rendered}"
    );
    let path = format!("{}/team-retention-{scope}.yaml", h.state_dir());
    std::fs::write(&path, rendered).expect("write policy");
    let applied = h.kubectl(&["apply", "-f", &path]);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );

    // The policy reaches the API server's cache asynchronously: wait for a dry-run refusal.
    let mut active = false;
    for _ in 0..300 {
        let probe: AuditRetention = serde_json::from_value(serde_json::json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "AuditRetention",
            "metadata": {"name": "probe"}, "spec": {"retainFor": "1h"}
        }))
        .expect("probe");
        let dry = PostParams {
            dry_run: true,
            ..Default::default()
        };
        if Api::<AuditRetention>::namespaced(alice.clone(), &team)
            .create(&dry, &probe)
            .await
            .is_err()
        {
            active = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(active, "the team retention policy never applied");

    for (name, spec, needle) in &weakening {
        match create_retention(&alice, &team, &format!("new-{name}"), spec.clone()).await {
            Err(kube::Error::Api(e)) if e.code == 422 || e.code == 403 => assert!(
                e.message.contains(needle),
                "{name}: refused, but not naming {needle:?}: {}",
                e.message
            ),
            other => panic!("{name}: expected a refusal naming {needle:?}, got {other:?}"),
        }
    }
    // The team examples shipped with the project pass the policy.
    for example in [
        vec!["-f", "examples/gdpr/auditretention.yaml"],
        vec!["-k", "examples/gitops/base"],
        vec!["-k", "examples/gitops/overlays/prod"],
    ] {
        let path = portcullis_e2e::repo_root().join(example[1]);
        let path = path.to_string_lossy();
        let out = h.kubectl(&["apply", "-n", &team, "--dry-run=server", example[0], &path]);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("auditretention"),
            "{}: {}{}",
            example[1],
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // An update that shortens a stored, honoured object is refused too.
    let longer = create_retention(
        &alice,
        &team,
        "longer",
        serde_json::json!({"retainFor": "2000d", "legalHold": true}),
    )
    .await
    .expect("a longer retention with a legal hold is accepted");
    let mut shortened = longer.clone();
    shortened.spec.retain_for = "30d".into();
    shortened.metadata.managed_fields = None;
    let err = Api::<AuditRetention>::namespaced(alice.clone(), &team)
        .replace("longer", &PostParams::default(), &shortened)
        .await
        .expect_err("shortening by update is refused");
    assert!(
        err.to_string()
            .contains("retainFor 30d is shorter than the cluster's 400d"),
        "{err}"
    );
    // alice cannot claim her object is honoured: the status is the audit service's.
    let claimed = Api::<AuditRetention>::namespaced(alice.clone(), &team)
        .patch_status(
            "stored-shorter",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"status": {"conditions": [{"type": "Ready",
                "status": "True", "reason": "Honoured", "message": "x",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
            ),
        )
        .await;
    assert!(
        claimed.is_err(),
        "a namespace user wrote the status: {claimed:?}"
    );

    // What was stored before the policy is reported by the audit service's round.
    let dir = tempfile::tempdir().expect("tmp");
    let mut log = Log::open(
        dir.path(),
        LogOptions {
            segment_bytes: 2048,
        },
    )
    .expect("log");
    log.append(&[entry(0, 1, None)]).expect("append");
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
    let signer = LogSigner::from_pkcs8(pkcs8.as_ref()).expect("signer");
    log.record_head(&signer.sign(&log.head(1_800_000_000_000)))
        .expect("record head");
    let witness = Witness {
        namespace: system.clone(),
        name: "default".into(),
    };
    let log = Arc::new(Mutex::new(log));
    reconcile_once(&client, &witness, &log, signer.public_key())
        .await
        .expect("round")
        .expect("verifies");
    let api: Api<AuditRetention> = Api::namespaced(client.clone(), &team);
    let ready = |r: AuditRetention| {
        r.status
            .and_then(|s| find_condition(&s.conditions, types::READY).cloned())
            .expect("Ready condition")
    };
    for (name, _, _) in &weakening {
        let c = ready(api.get(&format!("stored-{name}")).await.expect("get"));
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NotHonoured"),
            "{name}: {c:?}"
        );
        // Another test's round may have written it against its own cluster object, with the
        // same 400d: the message names whichever cluster object judged it.
        assert!(
            c.message.contains("the cluster's AuditRetention ")
                && c.message.contains("/default applies instead"),
            "{c:?}"
        );
    }
    let c = ready(api.get("stored-shorter").await.expect("get"));
    assert!(
        c.message
            .contains("retainFor 72h is shorter than the cluster's 400d")
            && c.message.contains("kept for 400d"),
        "{c:?}"
    );
    let c = ready(api.get("longer").await.expect("get"));
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "Honoured"),
        "{c:?}"
    );
    assert!(
        c.message
            .contains("kept for 2000d and not pruned while legalHold is set"),
        "{c:?}"
    );
    let _ = h.kubectl(&["delete", "-f", &path]);
}
