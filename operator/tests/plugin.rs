//! The kubectl plugin against the real API server and a real audit service: approvers decide
//! with `approve`/`deny` (RBAC and the API's CEL rules apply), `evidence` exports a bundle that
//! `verify` checks offline with the public key alone, and names a tampered record.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use portcullis_audit::service::{run_signer, serve_tls, AuditService, Witness};
use portcullis_audit::store::{Log, LogOptions};
use portcullis_crds::audit_log::LogSigner;
use portcullis_e2e::{harness, repo_root, User};

/// An asciicast v2 recording with these event lines.
fn cast(lines: &[&str]) -> Vec<u8> {
    let mut out =
        b"{\"version\": 2, \"width\": 80, \"height\": 24, \"timestamp\": 1795412400}\n".to_vec();
    for l in lines {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    out
}

#[test]
fn replay_plays_a_recording_file_and_refuses_a_damaged_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("session.cast");
    std::fs::write(
        &file,
        cast(&[
            r#"[0.01, "o", "$ "]"#,
            r#"[0.02, "i", "ls\r"]"#,
            r#"[0.03, "r", "100x30"]"#,
            r#"[0.05, "o", "ls\r\n\u001b[0ma.txt\r\n"]"#,
        ]),
    )
    .expect("write");
    let file_s = file.to_string_lossy().into_owned();
    let out = common::plugin(
        "/nonexistent",
        &["replay", &file_s, "--speed", "4", "--raw", "--hide-input"],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "$ ls\r\n\u{1b}[0ma.txt\r\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    // By default: the screen as a terminal showed it (colours dropped), input on lines of
    // its own, marked, with its time.
    let out = common::plugin("/nonexistent", &["replay", &file_s, "--instant"]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "\u{27e6}in 0.020 s: ls^M\u{27e7}\n\u{27e6}screen at the end\u{27e7}\n$ ls\na.txt\n"
    );

    std::fs::write(&file, b"{\"version\": 1}\n[0.1, \"o\", \"x\"]\n").expect("write");
    let out = common::plugin("/nonexistent", &["replay", &file_s, "--instant"]);
    assert!(!out.status.success());
    assert!(
        common::text(&out)
            .contains("line 1: asciicast version 1 is not supported (only version 2)"),
        "{}",
        common::text(&out)
    );
    std::fs::write(&file, cast(&[r#"[0.1, "o", "x"]"#, "[0.2, \"o\""])).expect("write");
    let out = common::plugin("/nonexistent", &["replay", &file_s, "--instant"]);
    assert!(!out.status.success());
    assert!(
        common::text(&out).contains("line 3: not valid JSON"),
        "{}",
        common::text(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "nothing played");

    let out = common::plugin("/nonexistent", &["replay", "0123abcd", "--instant"]);
    assert!(!out.status.success());
    assert!(
        common::text(&out).contains("pass --bundle DIR or --audit-url URL"),
        "{}",
        common::text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_and_deny_follow_rbac_and_the_api_rules() {
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let ns = h.namespace("plugin").await;
    let example = repo_root().join("examples/gdpr/accessrequest.yaml");
    let out = h.kubectl(&["apply", "-n", &ns, "-f", &example.to_string_lossy()]);
    assert!(out.status.success(), "{}", common::text(&out));
    let bob = h.kubeconfig_of(User::Approver);

    // Without RBAC, bob is refused by the API server.
    let out = common::plugin(
        bob,
        &[
            "approve",
            "support-agent-7f3a9c",
            "--reason",
            "ticket 4711",
            "-n",
            &ns,
        ],
    );
    assert!(!out.status.success());
    assert!(
        common::text(&out).contains("forbidden"),
        "{}",
        common::text(&out)
    );

    common::create::<Role>(&client, &ns, serde_json::json!({
        "metadata": {"name": "approver"},
        "rules": [{"apiGroups": ["portcullis.dev"], "resources": ["accessrequests"], "verbs": ["get", "patch"]}]
    }))
    .await;
    common::create::<RoleBinding>(&client, &ns, serde_json::json!({
        "metadata": {"name": "approvers"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "approver"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "portcullis-approvers"}]
    }))
    .await;
    let out = common::plugin(
        bob,
        &["approve", "support-agent-7f3a9c", "--reason", "", "-n", &ns],
    );
    assert!(!out.status.success());
    assert!(
        common::text(&out).contains("a decision needs a reason"),
        "{}",
        common::text(&out)
    );
    let mut approved = None;
    for _ in 0..50 {
        // RBAC changes take effect within moments.
        let out = common::plugin(
            bob,
            &[
                "approve",
                "support-agent-7f3a9c",
                "--reason",
                "ticket 4711",
                "-n",
                &ns,
            ],
        );
        if out.status.success() {
            approved = Some(out);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = approved.expect("approved once RBAC allows it");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "accessrequest.portcullis.dev/support-agent-7f3a9c approved"
    );
    let out = h.kubectl(&[
        "get",
        "ar",
        "-n",
        &ns,
        "support-agent-7f3a9c",
        "-o",
        "jsonpath={.spec.decision.verdict}/{.spec.decision.reason}",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Approved/ticket 4711");
    // A decision cannot be changed.
    let out = common::plugin(
        bob,
        &[
            "deny",
            "support-agent-7f3a9c",
            "--reason",
            "changed my mind",
            "-n",
            &ns,
        ],
    );
    assert!(!out.status.success());
    assert!(
        common::text(&out).contains("a decision cannot be changed or withdrawn once made"),
        "{}",
        common::text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_exports_a_bundle_that_verifies_offline() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let ns = h.namespace("evidence").await;
    common::create::<portcullis_crds::AuditRetention>(
        &client,
        &ns,
        serde_json::json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "AuditRetention",
            "metadata": {"name": "default"}, "spec": {"retainFor": "400d"}
        }),
    )
    .await;
    let policy = repo_root().join("examples/gdpr/gatewaypolicy.yaml");
    let out = h.kubectl(&["apply", "-n", &ns, "-f", &policy.to_string_lossy()]);
    assert!(out.status.success(), "{}", common::text(&out));

    // An audit service with records from two agents.
    let work = tempfile::tempdir().expect("tmp");
    let mut log = Log::open(&work.path().join("log"), LogOptions::default()).expect("log");
    let entries: Vec<Vec<u8>> = (0..40u64)
        .map(|i| {
            let agent = if i % 2 == 0 { "support-agent" } else { "billing-agent" };
            serde_json::json!({
                "id": format!("uid:{i}"), "receivedAt": "2026-11-23T06:00:00.000000Z",
                "source": {"user": format!("system:serviceaccount:{ns}:{agent}"), "namespace": ns, "serviceAccount": agent},
                "record": {"version": "portcullis.dev/audit/v1alpha1", "seq": i, "time": format!("2026-11-23T06:{:02}:00.000000Z", i),
                           "sessionId": "s", "identity": {"kind": "ServiceAccount", "name": agent, "namespace": ns},
                           "resource": "customers-db",
                           "event": {"type": "statement", "statementId": i, "protocol": "simple",
                                     "statement": "SELECT id, email FROM customers WHERE id = ?", "fingerprint": "f", "kinds": ["select"], "decision": "allow"}}
            })
            .to_string()
            .into_bytes()
        })
        .collect();
    log.append(&entries).expect("append");
    // An exec session of support-agent, recorded: the sidecar stored the recording with the
    // audit service before it wrote the record naming it.
    let recording = cast(&[
        r#"[0.1, "o", "$ "]"#,
        r#"[0.4, "i", "id\r"]"#,
        r#"[0.5, "o", "id\r\nuid=0(root)\r\n"]"#,
    ]);
    let sha = portcullis_audit::recordings::sha256_hex(&recording);
    let store = portcullis_audit::recordings::RecordingStore::new(&work.path().join("log"));
    store.put(&sha, &recording).expect("store recording");
    store
        .mark_sender(&sha, "uid", &ns)
        .expect("uploaded from the namespace");
    let exec = |seq: u64, event: serde_json::Value| {
        serde_json::json!({
            "id": format!("uid:{seq}"), "receivedAt": "2026-11-23T06:50:00.000000Z",
            "source": {"user": format!("system:serviceaccount:{ns}:support-agent"), "namespace": ns, "serviceAccount": "support-agent"},
            "record": {"version": "portcullis.dev/audit/v1alpha1", "seq": seq, "time": format!("2026-11-23T06:{seq}:00.000000Z"),
                       "sessionId": "k", "identity": {"kind": "ServiceAccount", "name": "support-agent", "namespace": ns},
                       "resource": "cluster-api", "event": event}
        })
        .to_string()
        .into_bytes()
    };
    log.append(&[
        exec(40, serde_json::json!({"type": "kubeRequest", "requestId": 1, "method": "POST", "verb": "create",
            "resource": "pods", "subresource": "exec", "namespace": ns, "name": "web-0",
            "exec": {"command": ["id"], "stdin": true, "tty": true}, "decision": "allow"})),
        exec(41, serde_json::json!({"type": "recording", "requestId": 1, "sha256": sha, "bytes": recording.len(),
            "events": 3, "durationMillis": 500, "protocol": "v5.channel.k8s.io",
            "target": format!("{ns}/web-0/web"), "exitCode": 0})),
    ])
    .expect("append exec session");
    let log = Arc::new(Mutex::new(log));
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .expect("key");
    let signer = LogSigner::from_pkcs8(pkcs8.as_ref()).expect("signer");
    let key_file = work.path().join("audit.pub");
    std::fs::write(&key_file, hex::encode(signer.public_key())).expect("public key");
    let witness = Witness {
        namespace: ns.clone(),
        name: "default".into(),
    };
    let service = AuditService::new(client.clone(), log.clone())
        .with_witness(witness.clone())
        .with_manifest_signer(LogSigner::from_pkcs8(pkcs8.as_ref()).expect("signer"));
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("cert");
    let ca = work.path().join("ca.crt");
    std::fs::write(&ca, cert.cert.pem()).expect("ca");
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
        )
        .expect("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut s1 = stopped.clone();
    tokio::spawn(serve_tls(
        listener,
        Arc::new(tls),
        service.router(),
        async move {
            let _ = s1.changed().await;
        },
    ));
    let mut s2 = stopped.clone();
    tokio::spawn(run_signer(
        log,
        signer,
        Duration::from_millis(100),
        Some(client.clone()),
        Some(witness),
        async move {
            let _ = s2.changed().await;
        },
    ));

    // An auditor allowed to read evidence.
    h.service_account(&ns, "auditor").await;
    common::create::<Role>(&client, &ns, serde_json::json!({
        "metadata": {"name": "evidence"},
        "rules": [{"apiGroups": ["portcullis.dev"], "resources": ["auditretentions/evidence", "gatewaypolicies", "accessrequests"], "verbs": ["get", "list"]}]
    }))
    .await;
    common::create::<RoleBinding>(&client, &ns, serde_json::json!({
        "metadata": {"name": "auditor"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "evidence"},
        "subjects": [{"kind": "ServiceAccount", "name": "auditor", "namespace": ns}]
    }))
    .await;
    let token_file = work.path().join("token");
    std::fs::write(&token_file, h.token(&ns, "auditor", None, None).await).expect("token");
    tokio::time::sleep(Duration::from_millis(500)).await; // a signed head exists

    let bundle = work.path().join("bundle");
    let (ca_s, token_s, bundle_s, key_s) = (
        ca.to_string_lossy().into_owned(),
        token_file.to_string_lossy().into_owned(),
        bundle.to_string_lossy().into_owned(),
        key_file.to_string_lossy().into_owned(),
    );
    let out = common::plugin(
        h.kubeconfig(),
        &[
            "evidence",
            "-n",
            &ns,
            "--audit-url",
            &url,
            "--ca",
            &ca_s,
            "--token-file",
            &token_s,
            "--subject",
            "support-agent",
            "--from",
            "2026-11-23T06:10:00Z",
            "-o",
            &bundle_s,
        ],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    // Records 10..40 of support-agent: the even ones, 15 of them, and its exec session.
    assert!(
        common::text(&out).starts_with(
            "wrote 17 records and 1 recording, proofs to the signed tree head of size 42, 1 policies"
        ),
        "{}",
        common::text(&out)
    );
    assert_eq!(
        std::fs::read(bundle.join(format!("recordings/{sha}.cast"))).expect("bundled recording"),
        recording
    );
    let policies = std::fs::read_to_string(bundle.join("policies.yaml")).expect("policies");
    assert!(policies.contains("customers-gdpr"));
    let out = common::plugin(
        h.kubeconfig(),
        &["verify", &bundle_s, "--public-key", &key_s],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "verified 17 records and 1 recording against the signed tree head of size 42"
    );
    // Pinned to the head the cluster witnesses.
    let out = common::plugin(
        h.kubeconfig(),
        &[
            "verify",
            &bundle_s,
            "--public-key",
            &key_s,
            "--from-cluster",
            "-n",
            &ns,
        ],
    );
    assert!(out.status.success(), "{}", common::text(&out));

    // The session replays from the bundle (by a prefix of its SHA-256) and from the service.
    let out = common::plugin(
        h.kubeconfig(),
        &[
            "replay",
            &sha[..10],
            "--bundle",
            &bundle_s,
            "--instant",
            "--raw",
            "--hide-input",
        ],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "$ id\r\nuid=0(root)\r\n"
    );
    let out = common::plugin(
        h.kubeconfig(),
        &[
            "replay",
            &sha,
            "-n",
            &ns,
            "--audit-url",
            &url,
            "--ca",
            &ca_s,
            "--token-file",
            &token_s,
            "--instant",
            "--show-input",
        ],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "\u{27e6}screen at the end\u{27e7}\n$ id\nuid=0(root)\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "id^M");

    // One flipped byte in the recording: verify names the file.
    let bundled = bundle.join(format!("recordings/{sha}.cast"));
    let mut altered = recording.clone();
    altered[recording.len() - 8] ^= 0x20;
    std::fs::write(&bundled, &altered).expect("tamper recording");
    let out = common::plugin(
        h.kubeconfig(),
        &["verify", &bundle_s, "--public-key", &key_s],
    );
    assert!(!out.status.success());
    assert!(
        common::text(&out).contains(&format!(
            "verification failed: recordings/{sha}.cast: altered"
        )),
        "{}",
        common::text(&out)
    );
    let out = common::plugin(
        h.kubeconfig(),
        &["replay", &sha[..10], "--bundle", &bundle_s],
    );
    assert!(!out.status.success());
    assert!(
        common::text(&out).contains("content does not match its name"),
        "{}",
        common::text(&out)
    );
    std::fs::write(&bundled, &recording).expect("restore recording");

    // One record rewritten: verify names it.
    let records = std::fs::read_to_string(bundle.join("records.jsonl")).expect("records");
    std::fs::write(
        bundle.join("records.jsonl"),
        records.replacen("\"allow\"", "\"deny\"", 1),
    )
    .expect("tamper");
    let out = common::plugin(
        h.kubeconfig(),
        &["verify", &bundle_s, "--public-key", &key_s],
    );
    assert!(!out.status.success());
    assert!(
        common::text(&out)
            .contains("verification failed: record 1 (log index 10) fails verification"),
        "{}",
        common::text(&out)
    );

    // The recording lost from the service's volume: the export still writes every record and
    // says the recording is missing; verify names it and fails as incomplete evidence.
    std::fs::remove_file(store.path(&sha)).expect("lose the recording");
    let lost = work.path().join("bundle-lost");
    let lost_s = lost.to_string_lossy().into_owned();
    let out = common::plugin(
        h.kubeconfig(),
        &[
            "evidence",
            "-n",
            &ns,
            "--audit-url",
            &url,
            "--ca",
            &ca_s,
            "--token-file",
            &token_s,
            "--subject",
            "support-agent",
            "--from",
            "2026-11-23T06:10:00Z",
            "-o",
            &lost_s,
        ],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(
        common::text(&out).starts_with("wrote 17 records, proofs")
            && common::text(&out).contains(
                "1 recordings named by the records are missing from the audit service and listed as missing in the signed manifest"
            ),
        "{}",
        common::text(&out)
    );
    let out = common::plugin(h.kubeconfig(), &["verify", &lost_s, "--public-key", &key_s]);
    assert!(!out.status.success(), "{}", common::text(&out));
    assert!(
        common::text(&out).contains(
            "incomplete evidence: verified 17 records against the signed tree head of size 42, but 1 recordings they name are missing"
        ) && common::text(&out).contains(&format!(
            "recordings/{sha}.cast (SHA-256 {sha}, named by log index 41)"
        )),
        "{}",
        common::text(&out)
    );
    let _ = stop.send(true);
}
