//! Evidence bundles verify offline with the public key alone, and any altered, reordered or
//! foreign record is named by its line.

use std::fs;

use portcullis_audit::bundle::{verify_bundle, write_bundle, BundleError};
use portcullis_audit::manifest::Selection;
use portcullis_audit::store::{Log, LogOptions};
use portcullis_crds::audit_log::LogSigner;
use ring::rand::SystemRandom;
use ring::signature::Ed25519KeyPair;
use serde_json::Value;

fn entry(i: u64) -> Vec<u8> {
    let (resource, statement, decision) = match i % 3 {
        0 => (
            "customers-db",
            "SELECT id, email FROM customers WHERE id = ?",
            "allow",
        ),
        1 => ("customers-db", "DELETE FROM customers", "deny"),
        _ => ("orders-db", "SELECT count(*) FROM orders", "allow"),
    };
    // Some sessions were started by a person with an OIDC token.
    let identity = if i % 9 == 3 {
        serde_json::json!({"kind": "ServiceAccount", "name": "agent", "namespace": "agents",
            "principal": {"kind": "User", "issuer": "https://sso.example.com", "subject": "u-17",
                          "name": "alice", "groups": ["dpo"]}})
    } else {
        serde_json::json!({"kind": "ServiceAccount", "name": "agent", "namespace": "agents"})
    };
    serde_json::json!({
        "id": format!("uid:{i}"),
        "receivedAt": "2026-11-23T06:00:00.000000Z",
        "source": {"user": "system:serviceaccount:agents:agent", "namespace": "agents", "serviceAccount": "agent", "pod": "agent-0"},
        "record": {
            "version": "portcullis.dev/audit/v1alpha1", "seq": i, "time": "2026-11-23T06:00:00.000000Z",
            "sessionId": "s-1", "identity": identity,
            "resource": resource,
            "event": {"type": "statement", "statementId": i, "protocol": "simple", "statement": statement,
                      "fingerprint": "abc", "kinds": [if decision == "deny" {"delete"} else {"select"}],
                      "tables": [if resource == "customers-db" {"public.customers"} else {"public.orders"}],
                      "lawfulBasis": "contract", "purpose": "support tickets",
                      "decision": decision, "rule": if decision == "deny" { serde_json::json!({"policy": "gdpr", "rule": "no-unbounded-delete"}) } else { Value::Null }}
        }
    })
    .to_string()
    .into_bytes()
}

fn setup() -> (tempfile::TempDir, Log, LogSigner) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut log = Log::open(
        &dir.path().join("log"),
        LogOptions {
            segment_bytes: 8192,
        },
    )
    .expect("open");
    let batch: Vec<Vec<u8>> = (0..90).map(entry).collect();
    log.append(&batch).expect("append");
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
    let signer = LogSigner::from_pkcs8(pkcs8.as_ref()).expect("signer");
    (dir, log, signer)
}

#[test]
fn a_bundle_verifies_with_the_public_key_alone() {
    let (dir, log, signer) = setup();
    let sth = signer.sign(&log.head(1_800_000_000_000));
    let out = dir.path().join("bundle");
    let only_customers = Selection {
        resource: Some("customers-db".into()),
        ..Selection::default()
    };
    let n = write_bundle(&log, &sth, &only_customers, &signer, &out).expect("bundle");
    assert_eq!(n, 60);
    let report = verify_bundle(&out, signer.public_key()).expect("verifies");
    assert_eq!((report.records, report.tree_size), (60, 90));

    let ocsf = fs::read_to_string(out.join("records.ocsf.jsonl")).expect("ocsf");
    let first: Value = serde_json::from_str(ocsf.lines().next().expect("line")).expect("json");
    assert_eq!(first["class_uid"], 6005);
    assert_eq!(first["type_uid"], 600502);
    assert_eq!(first["actor"]["user"]["name"], "agents/agent");
    let by_alice: Value = serde_json::from_str(ocsf.lines().nth(2).expect("line")).expect("json");
    assert_eq!(by_alice["actor"]["user"]["name"], "alice");
    assert_eq!(by_alice["actor"]["user"]["uid"], "u-17");
    assert_eq!(by_alice["actor"]["user"]["groups"][0]["name"], "dpo");
    assert_eq!(by_alice["actor"]["idp"]["name"], "https://sso.example.com");
    assert_eq!(by_alice["actor"]["app_name"], "agents/agent");
    let denied: Value = serde_json::from_str(ocsf.lines().nth(1).expect("line")).expect("json");
    assert_eq!(
        (denied["status"].as_str(), denied["activity_name"].as_str()),
        (Some("Failure"), Some("Delete"))
    );
    let summary = fs::read_to_string(out.join("summary.md")).expect("summary");
    assert!(
        summary.contains(
            "### ServiceAccount agents/agent\n\nPods: agent-0. Decisions: allow: 20, deny: 30."
        ),
        "{summary}"
    );
    assert!(
        summary.contains(
            "### ServiceAccount agents/agent as User alice\n\nPods: agent-0. Decisions: allow: 10."
        ),
        "{summary}"
    );
    assert!(
        summary.contains("`DELETE FROM customers` | deny | gdpr/no-unbounded-delete |"),
        "{summary}"
    );
    assert!(
        summary.contains("| gdpr | no-unbounded-delete | deny: 30 |"),
        "policies in force: {summary}"
    );
    assert!(summary.contains("| public.customers | 60 |"), "{summary}");
    assert!(
        summary.contains("| contract | support tickets | 60 | ServiceAccount agents/agent, ServiceAccount agents/agent as User alice |"),
        "{summary}"
    );
    assert!(!summary.contains("orders-db"), "only the selected records");
}

#[test]
fn altered_reordered_or_foreign_records_are_named() {
    let (dir, log, signer) = setup();
    let sth = signer.sign(&log.head(1_800_000_000_000));
    let out = dir.path().join("bundle");
    write_bundle(&log, &sth, &Selection::default(), &signer, &out).expect("bundle");
    let records = fs::read_to_string(out.join("records.jsonl")).expect("records");

    // One decision rewritten from deny to allow on line 5.
    let mut lines: Vec<String> = records.lines().map(str::to_owned).collect();
    assert!(lines[4].contains("\"deny\""));
    lines[4] = lines[4].replace("\"deny\"", "\"allow\"");
    fs::write(out.join("records.jsonl"), lines.join("\n") + "\n").expect("write");
    match verify_bundle(&out, signer.public_key()) {
        Err(BundleError::Record { line, index, .. }) => assert_eq!((line, index), (5, 4)),
        other => panic!("altered record not found: {other:?}"),
    }

    // Two records swapped.
    let mut lines: Vec<String> = records.lines().map(str::to_owned).collect();
    lines.swap(10, 11);
    fs::write(out.join("records.jsonl"), lines.join("\n") + "\n").expect("write");
    match verify_bundle(&out, signer.public_key()) {
        Err(BundleError::Record { line, .. }) => assert_eq!(line, 11),
        other => panic!("swap not found: {other:?}"),
    }

    // A record dropped.
    let mut lines: Vec<String> = records.lines().map(str::to_owned).collect();
    lines.remove(20);
    fs::write(out.join("records.jsonl"), lines.join("\n") + "\n").expect("write");
    assert!(verify_bundle(&out, signer.public_key()).is_err());

    // Intact records, but a head signed by someone else.
    fs::write(out.join("records.jsonl"), &records).expect("restore");
    verify_bundle(&out, signer.public_key()).expect("intact bundle verifies");
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
    let other = LogSigner::from_pkcs8(pkcs8.as_ref()).expect("signer");
    let err = verify_bundle(&out, other.public_key()).expect_err("foreign key");
    assert!(
        err.to_string()
            .starts_with("sth.json: tree head was signed by key"),
        "{err}"
    );
}

#[test]
fn masking_approval_and_unknown_events_are_listed_in_the_summary() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut log = Log::open(&dir.path().join("log"), LogOptions::default()).expect("open");
    let event = |i: u64, identity: Value, event: Value| {
        serde_json::json!({
            "id": format!("uid:s:{i}"), "receivedAt": "2026-11-23T06:00:00.000000Z",
            "source": {"user": "system:serviceaccount:agents:agent", "namespace": "agents", "serviceAccount": "agent", "pod": "agent-0"},
            "record": {"version": "portcullis.dev/audit/v1alpha1", "seq": i, "time": format!("2026-11-23T06:00:0{i}.000000Z"),
                       "sessionId": "s", "identity": identity, "resource": "customers-db", "event": event}
        })
        .to_string()
        .into_bytes()
    };
    let agent =
        serde_json::json!({"kind": "ServiceAccount", "name": "agent", "namespace": "agents"});
    let ci = serde_json::json!({"kind": "Pipeline", "name": "nightly"});
    let batch = vec![
        event(
            1,
            agent.clone(),
            serde_json::json!({"type": "statement", "statementId": 1, "protocol": "simple",
            "statement": "SELECT email FROM customers", "fingerprint": "f", "decision": "allow",
            "lawfulBasis": "contract", "purpose": "support", "maskedColumns": ["public.customers.email"]}),
        ),
        event(
            2,
            agent.clone(),
            serde_json::json!({"type": "masking", "statementId": 1, "columns": ["email"], "strategy": "redact"}),
        ),
        event(
            3,
            ci.clone(),
            serde_json::json!({"type": "approvalGranted", "accessRequest": "ar-1", "approver": "bob"}),
        ),
        event(
            4,
            ci,
            serde_json::json!({"type": "somethingNew", "detail": "x".repeat(300)}),
        ),
        event(5, agent, serde_json::json!("not an object")),
    ];
    log.append(&batch).expect("append");
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
    let signer = LogSigner::from_pkcs8(pkcs8.as_ref()).expect("signer");
    let sth = signer.sign(&log.head(1_800_000_000_000));
    let out = dir.path().join("bundle");
    assert_eq!(
        write_bundle(&log, &sth, &Selection::default(), &signer, &out).expect("bundle"),
        5
    );
    verify_bundle(&out, signer.public_key()).expect("verifies");
    let summary = fs::read_to_string(out.join("summary.md")).expect("summary");
    for needle in [
        "| masking | statement 1: maskedColumns [\"public.customers.email\"] |",
        "| ServiceAccount agents/agent | masking: masking | columns: [\"email\"]; statementId: 1; strategy: redact |",
        // Attributed by the authenticated sender, not by the identity the records state.
        "| ServiceAccount agents/agent | approval: approvalGranted | accessRequest: ar-1; approver: bob |",
        "| ServiceAccount agents/agent | other: somethingNew |",
        "| contract | support | 1 | ServiceAccount agents/agent |",
    ] {
        assert!(summary.contains(needle), "{needle}\n{summary}");
    }
    assert!(!summary.contains("Pipeline nightly"), "{summary}");
    assert!(!summary.contains(&"x".repeat(200)), "long fields are cut");
}

#[test]
fn exec_sessions_and_their_recordings_go_into_the_bundle() {
    use portcullis_audit::bundle::find_recording;
    use portcullis_audit::recordings::{sha256_hex, RecordingStore};

    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("log");
    let mut log = Log::open(&data, LogOptions::default()).expect("open");
    let recording =
        b"{\"version\": 2, \"width\": 80, \"height\": 24}\n[0.2, \"o\", \"total 0\\r\\n\"]\n"
            .to_vec();
    let sha = sha256_hex(&recording);
    RecordingStore::new(&data)
        .put(&sha, &recording)
        .expect("store");
    let event = |i: u64, event: Value| {
        serde_json::json!({
            "id": format!("uid:k:{i}"), "receivedAt": "2026-11-23T06:00:00.000000Z",
            "source": {"user": "system:serviceaccount:agents:agent", "namespace": "agents", "serviceAccount": "agent", "pod": "agent-0"},
            "record": {"version": "portcullis.dev/audit/v1alpha1", "seq": i, "time": format!("2026-11-23T06:00:0{i}.000000Z"),
                       "sessionId": "k", "identity": {"kind": "ServiceAccount", "name": "agent", "namespace": "agents"},
                       "resource": "cluster-api", "event": event}
        })
        .to_string()
        .into_bytes()
    };
    let batch = vec![
        event(
            1,
            serde_json::json!({"type": "kubeRequest", "requestId": 1, "method": "GET", "verb": "list",
                "resource": "pods", "namespace": "shop", "decision": "allow",
                "lawfulBasis": "contract", "purpose": "operations"}),
        ),
        event(
            2,
            serde_json::json!({"type": "kubeResponse", "requestId": 1, "code": 200, "durationMicros": 900}),
        ),
        event(
            3,
            serde_json::json!({"type": "kubeRequest", "requestId": 2, "method": "POST", "verb": "create",
                "resource": "pods", "subresource": "exec", "namespace": "shop", "name": "db-0",
                "exec": {"command": ["sh", "-c", "rm -rf /data"], "analysed": ["rm -rf /data"]},
                "decision": "deny", "rule": {"policy": "ops", "rule": "no-rm"}, "reason": "rm is not allowed"}),
        ),
        event(
            4,
            serde_json::json!({"type": "kubeRequest", "requestId": 3, "method": "POST", "verb": "create",
                "resource": "pods", "subresource": "exec", "namespace": "shop", "name": "web-0",
                "exec": {"container": "web", "command": ["ls", "-l"], "stdin": true, "tty": true},
                "decision": "allow"}),
        ),
        event(
            5,
            serde_json::json!({"type": "recording", "requestId": 3, "sha256": sha, "bytes": recording.len(),
                "events": 1, "durationMillis": 200, "protocol": "v5.channel.k8s.io",
                "target": "shop/web-0/web", "exitCode": 2,
                "masked": [{"rule": {"policy": "builtin", "rule": "email"}, "values": 3}]}),
        ),
    ];
    log.append(&batch).expect("append");
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
    let signer = LogSigner::from_pkcs8(pkcs8.as_ref()).expect("signer");
    let sth = signer.sign(&log.head(1_800_000_000_000));
    let out = dir.path().join("bundle");
    assert_eq!(
        write_bundle(&log, &sth, &Selection::default(), &signer, &out).expect("bundle"),
        5
    );
    let report = verify_bundle(&out, signer.public_key()).expect("verifies");
    assert_eq!((report.records, report.recordings), (5, 1));
    assert_eq!(
        find_recording(&out, &sha[..8]).expect("by prefix"),
        out.join(format!("recordings/{sha}.cast"))
    );
    assert!(find_recording(&out, "ffffffff").is_err());

    let summary = fs::read_to_string(out.join("summary.md")).expect("summary");
    for needle in [
        "| contract | operations | 1 | ServiceAccount agents/agent |".to_owned(),
        "Decisions: allow: 2, deny: 1.".to_owned(),
        "| 2026-11-23T06:00:01.000000Z | agents/cluster-api | `list pods -n shop` | allow | - | 200 |".to_owned(),
        "| ops | no-rm | deny: 1 |".to_owned(),
        "| 2026-11-23T06:00:03.000000Z | ServiceAccount agents/agent | shop/db-0 | `sh -c rm -rf /data` | deny | - | - |".to_owned(),
        format!("| 2026-11-23T06:00:05.000000Z | ServiceAccount agents/agent | shop/web-0/web | `ls -l` | allow | 2 | `recordings/{sha}.cast` (0.2 s, 1 events) |"),
        format!("| masking | recording recordings/{sha}.cast: 3 values by builtin/email |"),
    ] {
        assert!(summary.contains(&needle), "{needle}\n{summary}");
    }
    assert!(!summary.contains("other: kube"), "{summary}");

    let ocsf: Vec<Value> = fs::read_to_string(out.join("records.ocsf.jsonl"))
        .expect("ocsf")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(ocsf[0]["type_uid"], 600302);
    assert_eq!(ocsf[0]["resources"][0]["namespace"], "shop");
    assert_eq!(ocsf[1]["api"]["response"]["code"], 200);
    assert_eq!(
        (ocsf[2]["status"].as_str(), ocsf[2]["severity_id"].as_u64()),
        (Some("Failure"), Some(3))
    );
    assert_eq!(
        ocsf[2]["message"],
        "create pods/exec shop/db-0: sh -c rm -rf /data"
    );
    assert_eq!(ocsf[4]["unmapped"]["recording"]["sha256"], sha.as_str());
    assert_eq!(ocsf[4]["status"], "Failure", "exit code 2");

    // A recording the log's data directory lost does not fail the export: the bundle holds
    // every record, and its signed manifest lists the recording as missing with its hash.
    let complete = dir.path().join("complete");
    fs::rename(&out, &complete).expect("keep the complete bundle");
    fs::remove_file(data.join(format!("recordings/{sha}.cast"))).expect("remove");
    let b2 = dir.path().join("b2");
    assert_eq!(
        write_bundle(&log, &sth, &Selection::default(), &signer, &b2)
            .expect("the export goes on without the lost recording"),
        5
    );
    assert!(!b2.join(format!("recordings/{sha}.cast")).exists());
    let manifest: portcullis_audit::manifest::Manifest =
        serde_json::from_slice(&fs::read(b2.join("manifest.json")).expect("manifest"))
            .expect("manifest json");
    assert_eq!(
        manifest.missing_recordings,
        vec![portcullis_audit::manifest::MissingRecording {
            sha256: sha.clone(),
            index: 4
        }]
    );
    let report = verify_bundle(&b2, signer.public_key()).expect("the records verify");
    assert_eq!((report.records, report.recordings), (5, 0));
    assert_eq!(report.missing_recordings, manifest.missing_recordings);

    // Without the signed list the same absence is an error: a recording removed from a
    // complete bundle, or the list edited out of the manifest, is caught.
    fs::remove_file(complete.join(format!("recordings/{sha}.cast"))).expect("remove");
    let err = verify_bundle(&complete, signer.public_key()).expect_err("removed after export");
    assert!(
        err.to_string().contains(&format!(
            "recordings/{sha}.cast: missing; record 5 names it"
        )),
        "{err}"
    );
    let text = fs::read_to_string(b2.join("manifest.json")).expect("manifest");
    let mut edited = manifest.clone();
    edited.missing_recordings.clear();
    assert_ne!(serde_json::to_string_pretty(&edited).expect("json"), text);
    fs::write(
        b2.join("manifest.json"),
        serde_json::to_string_pretty(&edited).expect("json"),
    )
    .expect("edit");
    let err = verify_bundle(&b2, signer.public_key()).expect_err("list edited out");
    assert!(
        err.to_string()
            .contains("changed after the service signed it"),
        "{err}"
    );
}

#[test]
fn an_edited_signature_file_is_refused() {
    let (dir, log, signer) = setup();
    let sth = signer.sign(&log.head(1_800_000_000_000));
    let out = dir.path().join("bundle");
    write_bundle(&log, &sth, &Selection::default(), &signer, &out).expect("bundle");
    verify_bundle(&out, signer.public_key()).expect("verifies as written");
    let path = out.join("manifest.sig");
    let original = fs::read_to_string(&path).expect("sig");
    let lines: Vec<&str> = original.split('\n').collect();
    let key_line = lines
        .iter()
        .find(|l| l.contains("\"keyId\""))
        .expect("key line");
    // Each edit keeps the same key id and signature as JSON reads them.
    let edits = [
        // A repeated field with a misspelt name (an unknown field), as the fuzzer found it.
        original.replacen(
            key_line,
            &format!("{key_line}\n{}", key_line.replacen("keyId", "keyd", 1)),
            1,
        ),
        // An extra field.
        original.replacen('{', "{\n  \"note\": \"x\",", 1),
        // Other spacing.
        original.replace("  ", "   "),
        original.clone() + "\n",
        // Compact form.
        serde_json::to_string(&serde_json::from_str::<Value>(&original).expect("json"))
            .expect("compact"),
    ];
    for edited in edits {
        assert_ne!(edited, original);
        fs::write(&path, &edited).expect("write");
        match verify_bundle(&out, signer.public_key()) {
            Err(BundleError::Manifest(m)) => assert!(m.contains("manifest.sig"), "{m}"),
            other => panic!("{edited:?}: {other:?}"),
        }
    }
    fs::write(&path, &original).expect("restore");
    verify_bundle(&out, signer.public_key()).expect("verifies again");
}
