//! Red team (rt34) on the audit evidence claim: a table of further attempts, each first shown
//! to go unnoticed on the construction without the protection that should catch it, then made
//! against the product with the safe outcome asserted. Tried against the real kube-apiserver
//! (TokenReview, SubjectAccessReview, the AuditRetention witness), as in `evidence.rs`.
//!
//! Families:
//! - forged attribution through a pod that only looks injected: the audit service decides
//!   "this pod carries a Portcullis sidecar" from the pod's label and an init container's
//!   name, both chosen by whoever creates the pod; outside the namespaces the injection
//!   webhook guards (`portcullis.dev/inject=enabled`, or `webhook.namespaceLabels`) nothing
//!   stops a namespace user with `edit` from creating such a pod and minting its
//!   `portcullis-audit` token, so it may name any person as the principal of its sessions;
//! - hand pruning on the volume: the holder of the log volume deletes the first segments and
//!   moves their leaf hashes into `pruned.leaves`; the Merkle tree still matches every signed
//!   head, so the anchor's consistency proof passes on restart, and the service exports and
//!   signs manifests whose `firstKept` it takes from that file;
//! - controls that hold: a pod without the mark naming a person, a manifest that lists a
//!   stored recording as missing, an unfiltered bundle with its first record dropped.
//!
//! Rows the product does not catch are `#[ignore]`d with the finding, and assert the safe
//! outcome (run them with `--ignored` to see them fail).

mod common;
use common::*;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use portcullis_audit::anchor::State;
use portcullis_audit::auth::Authenticator;
use portcullis_audit::bundle::{
    add_recording, referenced_recordings, verify_bundle, verify_bundle_trusting, write_bundle_from,
    Trust,
};
use portcullis_audit::client::{Bytes, ShipError};
use portcullis_audit::manifest::{self, MissingRecording, Selection};
use portcullis_audit::recordings::sha256_hex;
use portcullis_audit::service::Witness;
use portcullis_audit::store::{Log, LogOptions};
use portcullis_audit::verify::verify_log;
use portcullis_crds::audit::AuditRecord;
use portcullis_crds::audit_log::{verify_tree_head, LogSigner};
use portcullis_crds::AuditRetention;
use portcullis_e2e::{harness, User};
use ring::rand::SystemRandom;
use ring::signature::Ed25519KeyPair;

#[derive(Default)]
struct Table {
    rows: Vec<(&'static str, String, Baseline, Result<String, String>)>,
}

impl Table {
    fn row(
        &mut self,
        family: &'static str,
        attempt: &str,
        baseline: Baseline,
        outcome: Result<String, String>,
    ) {
        let short = |s: &str| s.chars().take(200).collect::<String>();
        eprintln!(
            "{family:<28} {attempt:<60}\n    without: {}\n    with:    {}",
            match &baseline {
                Ok(how) => format!("unnoticed: {}", short(how)),
                Err(e) => format!("BASELINE NOT SHOWN: {e}"),
            },
            match &outcome {
                Ok(how) => format!("caught: {}", short(how)),
                Err(e) => format!("NOT CAUGHT: {e}"),
            }
        );
        self.rows
            .push((family, attempt.to_owned(), baseline, outcome));
    }

    fn assert_all_caught(&self) {
        let missed: Vec<String> = self
            .rows
            .iter()
            .flat_map(|(family, attempt, baseline, outcome)| {
                let b = baseline.as_ref().err().map(|e| {
                    format!("{family}: {attempt}: baseline not shown (without the protection it was not unnoticed): {e}")
                });
                let o = outcome
                    .as_ref()
                    .err()
                    .map(|e| format!("{family}: {attempt}: {e}"));
                b.into_iter().chain(o)
            })
            .collect();
        assert!(
            missed.is_empty(),
            "attempts not caught, or baselines not shown:\n{}",
            missed.join("\n")
        );
        eprintln!("{} attempts caught", self.rows.len());
    }
}

fn refused_any<T: std::fmt::Debug>(
    result: Result<T, ShipError>,
    status: u16,
    needle: &str,
) -> Result<String, String> {
    match result {
        Err(ShipError::Refused { status: s, message })
        | Err(ShipError::Failed { status: s, message })
            if s == status && message.contains(needle) =>
        {
            Ok(format!("{s} {message}"))
        }
        other => Err(format!(
            "expected {status} naming {needle:?}, got {other:?}"
        )),
    }
}

/// The rules of the built-in `edit` ClusterRole this attempt uses (pods, and tokens of the
/// namespace's service accounts), as a Role bound to `user` in `ns`: the harness runs no
/// controller manager, so the aggregated `edit` ClusterRole has no rules there.
async fn bind_edit(kube: &kube::Client, ns: &str, user: &str) {
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "edit-subset"},
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete", "get", "list", "patch", "update"]},
            {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}
        ]
    }))
    .expect("role");
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(kube.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .expect("role");
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{user}-edit")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "edit-subset"},
        "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": user}]
    }))
    .expect("binding");
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(kube.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("edit binding");
}

/// A cluster-wide evidence reader (service account `auditor` in `ns`) and its token.
async fn cluster_reader(kube: &kube::Client, ns: &str) -> String {
    let h = harness();
    h.service_account(ns, "auditor").await;
    let name = format!("rt34-auditor-{ns}");
    let role: k8s_openapi::api::rbac::v1::ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "rules": [{"apiGroups": ["portcullis.dev"], "resources": ["auditretentions/evidence"], "verbs": ["get"]}]
    }))
    .expect("cluster role");
    Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(kube.clone())
        .create(&PostParams::default(), &role)
        .await
        .expect("cluster role");
    let binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "auditor", "namespace": ns}]
    }))
    .expect("binding");
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(kube.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("cluster role binding");
    h.token(ns, "auditor", None, None).await
}

/// The witness AuditRetention `default` in `ns`.
async fn witness_in(kube: &kube::Client, ns: &str) -> (Witness, Api<AuditRetention>) {
    let retention: AuditRetention = serde_json::from_value(serde_json::json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "AuditRetention",
        "metadata": {"name": "default"}, "spec": {"retainFor": "400d"}
    }))
    .expect("retention");
    let api: Api<AuditRetention> = Api::namespaced(kube.clone(), ns);
    api.create(&PostParams::default(), &retention)
        .await
        .expect("witness");
    (
        Witness {
            namespace: ns.to_owned(),
            name: "default".into(),
        },
        api,
    )
}

/// A `portcullis-audit` token of `sa` bound to `pod`, requested by `client` (a namespace user).
async fn token_as(
    client: &kube::Client,
    ns: &str,
    sa: &str,
    pod: &Pod,
) -> Result<String, kube::Error> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["portcullis-audit".into()],
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            expiration_seconds: Some(3600),
        },
        ..Default::default()
    };
    Ok(Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &request)
        .await?
        .status
        .map(|s| s.token)
        .unwrap_or_default())
}

fn new_key() -> (Vec<u8>, Vec<u8>) {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
    let public_key = LogSigner::from_pkcs8(pkcs8.as_ref())
        .expect("signer")
        .public_key()
        .to_vec();
    (pkcs8.as_ref().to_vec(), public_key)
}

/// (a) A namespace user with `edit`, in a namespace the injection webhook does not guard,
/// creates a pod that only looks injected (the `portcullis.dev/injected` label and an init
/// container named `portcullis-sidecar`, any image) and mints its `portcullis-audit` token
/// (or lets the kubelet mount one from a projected volume the pod declares). The audit
/// service reads those two marks from the API server and takes the pod for a sidecar's, so
/// the pod may write records in a person's name: alice, a person of another team, whose
/// sessions an auditor exports by `--subject alice`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_only_looks_injected_cannot_name_a_person() {
    let h = harness();
    h.install_crds().await;
    let kube = h.client().await;
    let ns_a = h.namespace("rt34-victim").await;
    let ns_x = h.namespace("rt34-attacker").await;
    h.service_account(&ns_x, "agent").await;
    h.service_account(&ns_a, "agent").await;
    // bob: a namespace user with the built-in edit role in his own namespace, nothing else.
    bind_edit(&kube, &ns_x, User::Approver.name()).await;
    let bob = h.client_as(User::Approver).await;
    let (witness, _) = witness_in(&kube, &ns_a).await;
    let work = tempfile::tempdir().expect("tmp");
    let (pkcs8, public_key) = new_key();
    let tls = tls();
    let svc = start(
        &kube,
        &work.path().join("data"),
        &work.path().join("head.json"),
        &pkcs8,
        &tls,
        &witness,
    )
    .await;
    let mut t = Table::default();
    let family = "forged sidecar pod";

    // The pod bob creates: no webhook runs in his namespace (not labelled
    // portcullis.dev/inject=enabled: the opt-in webhook admits a pod that does not opt in
    // unchanged), so its marks are his own.
    let fake: Pod = Api::<Pod>::namespaced(bob.clone(), &ns_x)
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "looks-injected", "labels": {"portcullis.dev/injected": "true"}},
                "spec": {"serviceAccountName": "agent",
                         "initContainers": [{"name": "portcullis-sidecar", "image": "bobs-own-image:1",
                                             "restartPolicy": "Always"}],
                         "containers": [{"name": "agent", "image": "agent:1"}]}
            }))
            .expect("pod"),
        )
        .await
        .expect("bob creates the pod with edit");
    let (token, minted_by) = match token_as(&bob, &ns_x, "agent", &fake).await {
        Ok(t) if !t.is_empty() => (t, "bob's own TokenRequest"),
        // What the kubelet mounts from a projected serviceAccountToken volume bob declares.
        _ => (
            h.token(&ns_x, "agent", Some("portcullis-audit"), Some(&fake))
                .await,
            "the pod's projected token (kubelet)",
        ),
    };
    let source = Authenticator::new(kube.clone())
        .authenticate(&token)
        .await
        .expect("the API server authenticates the pod's token");
    let forged = record(
        &ns_x,
        serde_json::json!({"name": "agent", "principal": alice()}),
        "customers-db",
        "forged-1",
        1,
        statement("allow"),
    );
    let baseline = unchecked_ingest(
        &work.path().join("twin"),
        &LogSigner::from_pkcs8(&pkcs8).expect("signer"),
        &source,
        std::slice::from_ref(&forged),
        &[],
        "\"alice\"",
    );
    let shipped = svc.client.ship(&token, std::slice::from_ref(&forged)).await;
    let outcome = match shipped {
        Err(ShipError::Refused { status, message })
        | Err(ShipError::Failed { status, message })
            if status == 403 =>
        {
            Ok(format!("{status} {message}"))
        }
        Err(e) => Err(format!("refused, but not as forbidden: {e}")),
        Ok(indexes) => {
            // What an auditor exporting alice's records receives.
            let size = svc.log.lock().expect("lock").size();
            let entries: Vec<(u64, serde_json::Value)> = {
                let log = svc.log.lock().expect("lock");
                (0..size)
                    .filter_map(|i| {
                        let e = log.entry(i).ok().flatten()?;
                        Some((i, serde_json::from_slice(&e).ok()?))
                    })
                    .collect()
            };
            let by_subject = Selection {
                to_index: size,
                subject: Some("alice".into()),
                ..Selection::default()
            };
            let chosen =
                manifest::expected_indexes(&by_subject, entries.iter().map(|(i, v)| (*i, v)));
            Err(format!(
                "accepted (ack {indexes:?}) from pod {ns_x}/looks-injected (token: {minted_by}); an export with --subject alice selects {chosen:?}"
            ))
        }
    };
    t.row(
        family,
        "pod with the injected label and a portcullis-sidecar init container of its own names alice",
        baseline,
        outcome,
    );
    let _ = public_key;
    let _ = svc.stop.send(true);
    t.assert_all_caught();
}

/// (b)/(c)/(d) The holder of the log volume (not the signing key) deletes the first segments
/// while the service is down and appends their leaf hashes to `pruned.leaves`: no signed
/// prune entry retires them. The tree still matches every signed head, so the anchor's
/// consistency proof passes at start; the service then serves the remaining entries and signs
/// a manifest whose `firstKept` it reads from `pruned.leaves`, and the unfiltered bundle
/// verifies offline, pinned to the cluster's witnessed head, without the deleted records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_pruning_on_the_volume_stops_exports() {
    let h = harness();
    h.install_crds().await;
    let kube = h.client().await;
    let ns = h.namespace("rt34-prune").await;
    h.service_account(&ns, "agent").await;
    let pod = h.pod(&ns, "agent-0", "agent").await;
    let (witness, retentions) = witness_in(&kube, &ns).await;
    let auditor = cluster_reader(&kube, &ns).await;
    let work = tempfile::tempdir().expect("tmp");
    let data = work.path().join("data");
    let head_file = work.path().join("head.json");
    let (pkcs8, public_key) = new_key();
    let tls = tls();
    let svc = start(&kube, &data, &head_file, &pkcs8, &tls, &witness).await;
    let token = h
        .token(&ns, "agent", Some("portcullis-audit"), Some(&pod))
        .await;
    let records: Vec<AuditRecord> = (1..=40)
        .map(|i| {
            record(
                &ns,
                serde_json::json!({"name": "agent"}),
                "customers-db",
                "s-1",
                i,
                statement(if i <= 10 { "deny" } else { "allow" }),
            )
        })
        .collect();
    for chunk in records.chunks(5) {
        svc.client.ship(&token, chunk).await.expect("records");
    }
    let size = svc.log.lock().expect("lock").size();
    let before = witnessed_size(&retentions, size as i64).await;
    let _ = svc.stop.send(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(svc);

    // The volume holder's edit: the first segments go, their leaf hashes into pruned.leaves.
    let keep_from = {
        let mut log = Log::open(
            &data,
            LogOptions {
                segment_bytes: 4096,
            },
        )
        .expect("log");
        let segs = log.segments();
        assert!(segs.len() > 2, "several segments: {segs:?}");
        let cut = segs[segs.len() / 2].0;
        log.prune_before(cut).expect("segments deleted by hand")
    };
    let mut t = Table::default();
    let family = "hand pruning";
    let baseline = {
        let log = Log::open(
            &data,
            LogOptions {
                segment_bytes: 4096,
            },
        )
        .expect("log");
        let head = verify_tree_head(&before, &public_key).expect("head");
        if log.pruned() > 0 && log.root_at(head.tree_size) == Some(head.root_hash) {
            Ok(format!(
                "{} entries gone without a prune entry; the tree still matches the witnessed head of size {}",
                log.pruned(),
                head.tree_size
            ))
        } else {
            Err(format!("pruned {} / tree changed", log.pruned()))
        }
    };
    let offline = verify_log(&data, &public_key, std::slice::from_ref(&before))
        .map(|v| format!("{} entries", v.entries))
        .map_err(|e| e.to_string());
    assert!(
        offline.is_err(),
        "the offline walk catches it (the existing protection): {offline:?}"
    );

    let svc = start(&kube, &data, &head_file, &pkcs8, &tls, &witness).await;
    let mut state = svc.anchor.state();
    for _ in 0..50 {
        if !matches!(state, State::Unknown) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        state = svc.anchor.state();
    }
    let outcome = async {
        if let State::Diverged { reason, .. } = &state {
            return Ok(format!("diverged at start: {reason}"));
        }
        let entries = match svc.client.entries(&auditor, 0, size, size).await {
            Err(e) => return Ok(format!("entries refused: {e}")),
            Ok(e) => e,
        };
        let dir = work.path().join("bundle");
        let selection = Selection {
            to_index: size,
            ..Selection::default()
        };
        write_bundle_from(entries, &before, &selection, &dir).map_err(|e| e.to_string())?;
        let unsigned = manifest::build(&dir, &before, &selection, 0).map_err(|e| e.to_string())?;
        let signed = match svc.client.sign_manifest(&auditor, &unsigned).await {
            Err(e) => return Ok(format!("manifest refused: {e}")),
            Ok(s) => s,
        };
        manifest::write(&dir, &signed).map_err(|e| e.to_string())?;
        let trust = Trust {
            expect_head: witnessed(&retentions).await,
            ..Trust::default()
        };
        match verify_bundle_trusting(&dir, &public_key, &trust) {
            Err(e) => Ok(format!("verify caught it: {e}")),
            Ok(report) => Err(format!(
                "anchor {:?}; exported and verified against the witnessed head: {} records of a {size}-entry log, entries 0..{keep_from} silently absent (firstKept {keep_from} read from pruned.leaves; the offline walk says: {})",
                matches!(state, State::Anchored(_)),
                report.records,
                offline.clone().err().unwrap_or_default()
            )),
        }
    }
    .await;
    t.row(
        family,
        "first segments deleted by hand, leaf hashes put in pruned.leaves, restarted",
        baseline,
        outcome,
    );
    let _ = svc.stop.send(true);
    t.assert_all_caught();
}

/// Controls that hold: the same pod without the marks naming a person; a manifest listing a
/// stored recording as missing; an unfiltered bundle whose first record was dropped and
/// whose manifest claims the log began after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_hold() {
    let h = harness();
    h.install_crds().await;
    let kube = h.client().await;
    let ns = h.namespace("rt34-ctl").await;
    h.service_account(&ns, "agent").await;
    h.service_account(&ns, "reader").await;
    let pod = h.pod(&ns, "agent-0", "agent").await;
    let (witness, retentions) = witness_in(&kube, &ns).await;
    let auditor = cluster_reader(&kube, &ns).await;
    let work = tempfile::tempdir().expect("tmp");
    let data = work.path().join("data");
    let (pkcs8, public_key) = new_key();
    let signer = LogSigner::from_pkcs8(&pkcs8).expect("signer");
    let tls = tls();
    let svc = start(
        &kube,
        &data,
        &work.path().join("head.json"),
        &pkcs8,
        &tls,
        &witness,
    )
    .await;
    let token = h
        .token(&ns, "agent", Some("portcullis-audit"), Some(&pod))
        .await;
    let source = Authenticator::new(kube.clone())
        .authenticate(&token)
        .await
        .expect("source");
    let mut t = Table::default();

    // A plain pod naming alice.
    let forged = record(
        &ns,
        serde_json::json!({"name": "agent", "principal": alice()}),
        "customers-db",
        "p-1",
        1,
        statement("allow"),
    );
    t.row(
        "forged attribution",
        "a pod without the sidecar's marks names alice",
        unchecked_ingest(
            &work.path().join("twin"),
            &signer,
            &source,
            std::slice::from_ref(&forged),
            &[],
            "\"alice\"",
        ),
        refused_any(
            svc.client.ship(&token, std::slice::from_ref(&forged)).await,
            403,
            "sidecar",
        ),
    );

    let honest: Vec<AuditRecord> = (1..=6)
        .map(|i| {
            record(
                &ns,
                serde_json::json!({"name": "agent"}),
                "customers-db",
                "s-1",
                i,
                statement("allow"),
            )
        })
        .collect();
    svc.client.ship(&token, &honest).await.expect("records");
    let cast = b"{\"version\": 2, \"width\": 80, \"height\": 24}\n[0.1, \"o\", \"$ \"]\n".to_vec();
    let cast_sha = sha256_hex(&cast);
    svc.client
        .upload_recording(&token, &cast_sha, Bytes::from(cast.clone()))
        .await
        .expect("upload");
    svc.client
        .ship(
            &token,
            &[record(
                &ns,
                serde_json::json!({"name": "agent"}),
                "cluster-api",
                "k-1",
                7,
                serde_json::json!({"type": "recording", "requestId": 1, "sha256": cast_sha, "bytes": 10,
                    "events": 1, "durationMillis": 100, "protocol": "v5.channel.k8s.io", "target": "x/y/z"}),
            )],
        )
        .await
        .expect("recording record");
    let size = svc.log.lock().expect("lock").size();
    let sth = witnessed_size(&retentions, size as i64).await;
    let entries = svc
        .client
        .entries(&auditor, 0, size, size)
        .await
        .expect("entries");
    let selection = Selection {
        to_index: size,
        ..Selection::default()
    };

    // A manifest that calls a stored recording missing (the bundle left it out).
    let dir = work.path().join("no-cast");
    write_bundle_from(entries.clone(), &sth, &selection, &dir).expect("bundle");
    let mut unsigned = manifest::build(&dir, &sth, &selection, 0).expect("manifest");
    unsigned.missing_recordings = vec![MissingRecording {
        sha256: cast_sha.clone(),
        index: size - 1,
    }];
    let baseline = {
        let local = manifest::sign_manifest(&signer, &unsigned).map_err(|e| e.to_string());
        local.and_then(|s| {
            let copy = work.path().join("no-cast-local");
            copy_dir(&dir, &copy);
            manifest::write(&copy, &s).map_err(|e| e.to_string())?;
            verify_bundle(&copy, &public_key)
                .map(|r| {
                    format!(
                        "signed as asked, the bundle verifies with the recording reported missing: {:?}",
                        r.missing_recordings
                    )
                })
                .map_err(|e| e.to_string())
        })
    };
    t.row(
        "lost recording",
        "reader calls a stored recording missing to leave it out",
        baseline,
        refused_any(
            svc.client.sign_manifest(&auditor, &unsigned).await,
            409,
            "is stored",
        ),
    );

    // An unfiltered bundle without its first record, whose manifest claims the log began
    // after it (firstKept): the service sets firstKept from its own log.
    let dir = work.path().join("first-dropped");
    write_bundle_from(
        entries.iter().filter(|e| e.index != 0).cloned(),
        &sth,
        &selection,
        &dir,
    )
    .expect("bundle");
    for s in referenced_recordings(&dir).expect("refs") {
        add_recording(&dir, &s, &cast).expect("add");
    }
    let mut unsigned = manifest::build(&dir, &sth, &selection, 1).expect("manifest");
    unsigned.first_kept = 1;
    let baseline = {
        let copy = work.path().join("first-dropped-local");
        copy_dir(&dir, &copy);
        manifest::sign_manifest(&signer, &unsigned)
            .map_err(|e| e.to_string())
            .and_then(|s| manifest::write(&copy, &s).map_err(|e| e.to_string()))
            .and_then(|()| {
                verify_bundle(&copy, &public_key)
                    .map(|r| {
                        format!(
                            "firstKept 1 signed as asked: {} of {size} records verify",
                            r.records
                        )
                    })
                    .map_err(|e| e.to_string())
            })
    };
    let outcome = match svc.client.sign_manifest(&auditor, &unsigned).await {
        Err(e) => Ok(format!("manifest refused: {e}")),
        Ok(signed) => {
            manifest::write(&dir, &signed).expect("write");
            match verify_bundle(&dir, &public_key) {
                Err(e) => Ok(format!("signed with the log's own firstKept; verify: {e}")),
                Ok(r) => Err(format!("verified with {} records", r.records)),
            }
        }
    };
    t.row(
        "trimmed bundle",
        "first record dropped, manifest claims firstKept 1",
        baseline,
        outcome,
    );
    let _ = svc.stop.send(true);
    t.assert_all_caught();
}

/// (a) A person's name is not the person: the sidecar of a team that lists its own OIDC
/// issuer in its GatewayPolicy (a Keycloak the team runs) names whoever that issuer's tokens
/// say, `alice` included. The service accepts it from the genuine sidecar (rightly: it is the
/// session's principal as that issuer states it), but an export by `--subject alice` selects
/// by the principal's name alone, so team x's "alice" lands in the evidence of the person
/// alice of the company's SSO, with nothing in the selection telling them apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_export_does_not_mix_issuers() {
    let h = harness();
    h.install_crds().await;
    let kube = h.client().await;
    let ns_a = h.namespace("rt34-sso").await;
    let ns_x = h.namespace("rt34-ownidp").await;
    let mut sidecar_tokens = Vec::new();
    for ns in [&ns_a, &ns_x] {
        h.service_account(ns, "agent").await;
        label_for_injection(&kube, ns).await;
        // A pod the injection webhook gave a sidecar, in a labelled namespace.
        let pod: Pod = Api::<Pod>::namespaced(kube.clone(), ns)
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "agent-1", "labels": {"portcullis.dev/injected": "true"}},
                    "spec": {"serviceAccountName": "agent",
                             "initContainers": [{"name": "portcullis-sidecar", "image": "sidecar:1",
                                             "restartPolicy": "Always"}],
                             "containers": [{"name": "agent", "image": "agent:1"}]}
                }))
                .expect("pod"),
            )
            .await
            .expect("sidecar pod");
        sidecar_tokens.push(
            h.token(ns, "agent", Some("portcullis-audit"), Some(&pod))
                .await,
        );
    }
    let (witness, _) = witness_in(&kube, &ns_a).await;
    let work = tempfile::tempdir().expect("tmp");
    let (pkcs8, _) = new_key();
    let tls = tls();
    let svc = start(
        &kube,
        &work.path().join("data"),
        &work.path().join("head.json"),
        &pkcs8,
        &tls,
        &witness,
    )
    .await;
    let real = record(
        &ns_a,
        serde_json::json!({"name": "agent", "principal": alice()}),
        "customers-db",
        "a-1",
        1,
        statement("allow"),
    );
    svc.client
        .ship(&sidecar_tokens[0], std::slice::from_ref(&real))
        .await
        .expect("alice of the company's SSO");
    let other_alice = record(
        &ns_x,
        serde_json::json!({"name": "agent", "principal": {"kind": "User",
            "issuer": "https://keycloak.team-x.example", "subject": "x-1", "name": "alice"}}),
        "orders-db",
        "x-1",
        1,
        statement("deny"),
    );
    let source_x = Authenticator::new(kube.clone())
        .authenticate(&sidecar_tokens[1])
        .await
        .expect("source");
    let baseline = unchecked_ingest(
        &work.path().join("twin"),
        &LogSigner::from_pkcs8(&pkcs8).expect("signer"),
        &source_x,
        std::slice::from_ref(&other_alice),
        &[],
        "keycloak.team-x.example",
    );
    let mut t = Table::default();
    let outcome = match svc
        .client
        .ship(&sidecar_tokens[1], std::slice::from_ref(&other_alice))
        .await
    {
        Err(e) => Ok(format!("refused: {e}")),
        Ok(_) => {
            let log = svc.log.lock().expect("lock");
            let entries: Vec<(u64, serde_json::Value)> = (0..log.size())
                .filter_map(|i| {
                    let e = log.entry(i).ok().flatten()?;
                    Some((i, serde_json::from_slice(&e).ok()?))
                })
                .collect();
            // A person is (issuer, subject): alice of the company's SSO is selected with
            // its issuer; the name alone selects no person, and the export refuses a name
            // people of several issuers carry (the issuers it names).
            let by_subject = Selection {
                to_index: log.size(),
                subject: Some("alice".into()),
                issuer: Some("https://sso.example.com".into()),
                ..Selection::default()
            };
            let by_name_only = Selection {
                issuer: None,
                ..by_subject.clone()
            };
            let by_name =
                manifest::expected_indexes(&by_name_only, entries.iter().map(|(i, v)| (*i, v)));
            let issuers = manifest::issuers_named("alice", entries.iter().map(|(_, v)| v));
            let chosen: Vec<(u64, String)> =
                manifest::expected_indexes(&by_subject, entries.iter().map(|(i, v)| (*i, v)))
                    .into_iter()
                    .map(|i| {
                        let v = &entries.iter().find(|(j, _)| *j == i).expect("entry").1;
                        (
                            i,
                            v["record"]["identity"]["principal"]["issuer"]
                                .as_str()
                                .unwrap_or("")
                                .to_owned(),
                        )
                    })
                    .collect();
            if chosen.len() == 1
                && chosen[0].1 == "https://sso.example.com"
                && by_name.is_empty()
                && issuers.len() == 2
            {
                Ok(format!("--subject alice --issuer https://sso.example.com selects only {chosen:?}; the name alone selects none and is refused as naming people of {issuers:?}"))
            } else if !by_name.is_empty() || issuers.len() != 2 {
                Err(format!(
                    "--subject alice alone selects {by_name:?}; issuers named: {issuers:?}"
                ))
            } else {
                Err(format!(
                    "--subject alice selects records of two issuers: {chosen:?}"
                ))
            }
        }
    };
    t.row(
        "forged attribution",
        "a team's own issuer names alice; export by --subject alice",
        baseline,
        outcome,
    );
    let _ = svc.stop.send(true);
    t.assert_all_caught();
}

/// Rewrite entry `nth` of a segment file (a valid frame, checksum recomputed).
fn rewrite_entry(segment: &Path, nth: usize, edit: impl Fn(&str) -> String) -> bool {
    let bytes = std::fs::read(segment).expect("segment");
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    let mut done = false;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("len")) as usize;
        let mut payload = bytes[at + 8..at + 8 + len].to_vec();
        if i == nth {
            payload = edit(&String::from_utf8_lossy(&payload)).into_bytes();
            done = true;
        }
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        at += 8 + len;
        i += 1;
    }
    std::fs::write(segment, out).expect("write segment");
    done
}

/// (b) Records the service acknowledged (the sidecar then drops them from its spool) but
/// had not yet covered by a signed head when it stopped: the holder of the log volume rolls
/// them back, or rewrites one, before the restart. The log still extends the witnessed head
/// and the last signed head (neither covers them), so the anchor passes and signing goes on
/// over the edited log. The window is the signing interval (`signEveryMs`, 2 s by default;
/// 5 s here, so the stop lands in it deterministically) and the service signs no head when it
/// stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_cannot_be_rolled_back() {
    let h = harness();
    h.install_crds().await;
    let kube = h.client().await;
    let ns = h.namespace("rt34-tail").await;
    h.service_account(&ns, "agent").await;
    let pod = h.pod(&ns, "agent-0", "agent").await;
    let (witness, retentions) = witness_in(&kube, &ns).await;
    let work = tempfile::tempdir().expect("tmp");
    let data = work.path().join("data");
    let head_file = work.path().join("head.json");
    let (pkcs8, public_key) = new_key();
    let tls = tls();
    let every = Duration::from_secs(5);
    let svc = start_signing_every(&kube, &data, &head_file, &pkcs8, &tls, &witness, every).await;
    let token = h
        .token(&ns, "agent", Some("portcullis-audit"), Some(&pod))
        .await;
    let rec = |i: u64, decision: &str| {
        record(
            &ns,
            serde_json::json!({"name": "agent"}),
            "customers-db",
            "s-1",
            i,
            statement(decision),
        )
    };
    let first: Vec<AuditRecord> = (1..=10).map(|i| rec(i, "allow")).collect();
    svc.client
        .ship(&token, &first)
        .await
        .expect("first records");
    let before = witnessed_size(&retentions, 10).await;
    let snapshot = work.path().join("snapshot");
    copy_dir(&data, &snapshot);
    // Acknowledged, then the service stops before its next signature.
    let tail: Vec<AuditRecord> = (11..=15).map(|i| rec(i, "deny")).collect();
    svc.client
        .ship(&token, &tail)
        .await
        .expect("acknowledged records");
    let acked = svc.log.lock().expect("lock").size();
    assert_eq!(acked, 15);
    let _ = svc.stop.send(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(svc);
    let stopped = work.path().join("stopped");
    copy_dir(&data, &stopped);
    let mut t = Table::default();
    let family = "unsigned tail";

    for (attempt, edit) in [
        (
            "acknowledged records rolled back while the service was down",
            0,
        ),
        (
            "an acknowledged deny rewritten to allow while the service was down",
            1,
        ),
    ] {
        copy_dir(&stopped, &data);
        if edit == 0 {
            copy_dir(&snapshot, &data);
        } else {
            let segs: Vec<_> = {
                let mut v: Vec<_> = std::fs::read_dir(data.join("segments"))
                    .expect("segments")
                    .map(|e| e.expect("entry").path())
                    .collect();
                v.sort();
                v
            };
            let last = segs.last().expect("segment");
            let log = Log::open(
                &data,
                LogOptions {
                    segment_bytes: 4096,
                },
            )
            .expect("log");
            let (first, count, _) = *log.segments().last().expect("segment");
            drop(log);
            // Entry 12 (seq 13), a deny, within the last segment.
            let nth = (12 - first) as usize;
            assert!(12 >= first && 12 < first + count);
            assert!(rewrite_entry(last, nth, |e| e.replace("\"deny\"", "\"allow\"")));
        }
        let baseline = verify_log(&data, &public_key, std::slice::from_ref(&before))
            .map(|v| {
                format!(
                    "the edited log ({} entries) verifies against the witnessed head of size {}",
                    v.entries, before.tree_size
                )
            })
            .map_err(|e| e.to_string());
        let svc =
            start_signing_every(&kube, &data, &head_file, &pkcs8, &tls, &witness, every).await;
        let mut state = svc.anchor.state();
        for _ in 0..50 {
            if !matches!(state, State::Unknown) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            state = svc.anchor.state();
        }
        let outcome = match &state {
            State::Diverged { reason, .. } => Ok(format!("diverged: {reason}")),
            other => {
                let size = svc.log.lock().expect("lock").size();
                let text: Vec<String> = {
                    let log = svc.log.lock().expect("lock");
                    (0..size)
                        .filter_map(|i| log.entry(i).ok().flatten())
                        .map(|e| String::from_utf8_lossy(&e).into_owned())
                        .collect()
                };
                let denies = text.iter().filter(|e| e.contains("\"deny\"")).count();
                Err(format!(
                    "anchor {other:?}: the service signs on over {size} entries ({denies} denies) after acknowledging 15 (5 denies)"
                ))
            }
        };
        t.row(family, attempt, baseline, outcome);
        let _ = svc.stop.send(true);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    t.assert_all_caught();
}
