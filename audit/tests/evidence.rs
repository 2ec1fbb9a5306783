//! Attacks on audit evidence, as a table: each attempt names its family and must be refused by
//! the service or caught by verification (online or offline). Tried against the real
//! kube-apiserver (TokenReview, SubjectAccessReview, the AuditRetention witness):
//!
//! - forged attribution: records naming another workload, a person, a resource of another
//!   namespace, or a recording the sender never uploaded;
//! - cross-namespace readers: a reader bound in one namespace asking for another's evidence
//!   or the whole log, or a manifest for a set the selection does not give;
//! - volume tampering with restarts: the log rolled back or an entry rewritten while the
//!   service was down;
//! - unsigned pruning: segments deleted by whoever holds the volume;
//! - bundles: trimmed, reordered, duplicated, stale, with edited derived files or manifest.
//!
//! Every attempt is first made against the construction without the protection that catches
//! it, and must go unnoticed there: ingest without its attribution checks (the record stored
//! as sent, exported and verified), the service's data read by a reader the namespace check
//! lets through, a bundle checked without its manifest (each record's inclusion proof only),
//! the service's start without the anchor (the log rebuilt, its head signed and force-written
//! over a twin witness, then verified against it), the log's own tree without the signed prune
//! rule, a prune round without the legal hold or the namespace's rule. So each protection is
//! shown to be what catches its attempt.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use portcullis_audit::anchor::{Anchor, ACCEPT_ANNOTATION, DIVERGED_REASON};
use portcullis_audit::auth::Authenticator;
use portcullis_audit::bundle::{
    add_recording, referenced_recordings, verify_bundle, verify_bundle_trusting, write_bundle,
    write_bundle_from, ProofLine, Trust,
};
use portcullis_audit::client::{Bytes, ShipError};
use portcullis_audit::manifest::{self, Selection};
use portcullis_audit::prune::{enforce, rule};
use portcullis_audit::recordings::sha256_hex;
use portcullis_audit::service::{publish, Witness};
use portcullis_audit::store::{Log, LogOptions};
use portcullis_audit::verify::verify_log;
use portcullis_crds::audit::AuditRecord;
use portcullis_crds::audit_log::{verify_inclusion, verify_tree_head, Hash, LogSigner};
use portcullis_crds::conditions::{find_condition, types};
use portcullis_crds::{AuditRetention, SignedTreeHead};
use portcullis_e2e::harness;
use ring::rand::SystemRandom;
use ring::signature::Ed25519KeyPair;

/// The outcome of every attempt, with its baseline.
#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

struct Row {
    family: &'static str,
    attempt: String,
    baseline: Baseline,
    outcome: Result<String, String>,
}

impl Table {
    /// Record an attempt: first what it did without the protection (`baseline`: it must have
    /// gone unnoticed there), then `Ok(how it was refused or caught)` or `Err(what got
    /// through)` with the protection.
    fn row(
        &mut self,
        family: &'static str,
        attempt: &str,
        baseline: Baseline,
        outcome: Result<String, String>,
    ) {
        let short = |s: &str| s.chars().take(140).collect::<String>();
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
        self.rows.push(Row {
            family,
            attempt: attempt.to_owned(),
            baseline,
            outcome,
        });
    }

    fn assert_all_caught(&self) {
        let missed: Vec<String> = self
            .rows
            .iter()
            .flat_map(|r| {
                let baseline = r.baseline.as_ref().err().map(|e| {
                    format!(
                        "{}: {}: without the protection it was not shown to go unnoticed: {e}",
                        r.family, r.attempt
                    )
                });
                let outcome = r
                    .outcome
                    .as_ref()
                    .err()
                    .map(|e| format!("{}: {}: {e}", r.family, r.attempt));
                baseline.into_iter().chain(outcome)
            })
            .collect();
        assert!(
            missed.is_empty(),
            "attempts not caught, or baselines not shown:\n{}",
            missed.join("\n")
        );
        eprintln!(
            "{} attempts: each went unnoticed without its protection and was caught with it",
            self.rows.len()
        );
    }
}

/// A bundle checked without its manifest (nor the set, order and file checks it carries):
/// the signed head and each record's inclusion proof, as offline verification did before.
fn records_only(dir: &Path, public_key: &[u8]) -> Baseline {
    let sth: SignedTreeHead = shown(serde_json::from_slice(&shown(std::fs::read(
        dir.join("sth.json"),
    ))?))?;
    let head = shown(verify_tree_head(&sth, public_key))?;
    let records = shown(std::fs::read(dir.join("records.jsonl")))?;
    let proofs = shown(std::fs::read_to_string(dir.join("proofs.jsonl")))?;
    let mut n = 0;
    for (record, proof) in records
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .zip(proofs.lines())
    {
        let p: ProofLine = shown(serde_json::from_str(proof))?;
        let hashes = p
            .hashes
            .iter()
            .map(|h| hex::decode(h).ok().and_then(|v| v.try_into().ok()))
            .collect::<Option<Vec<Hash>>>()
            .ok_or("a proof hash is not 32 bytes")?;
        shown(verify_inclusion(&head, record, p.index, &hashes))?;
        n += 1;
    }
    Ok(format!(
        "without the manifest each of its {n} records still proves its inclusion in the signed head"
    ))
}

/// The service's start without the anchor: the log rebuilt from whatever `tampered` holds
/// (its stored heads dropped when `drop_heads`, as the holder of the volume would for a
/// rewritten entry), its head signed and force-written over the witness `twin`, which held
/// `before`; then the log walked against that witnessed head. `Ok` when it verifies.
async fn unanchored_restart(
    kube: &kube::Client,
    twin: &Witness,
    tampered: &Path,
    dir: &Path,
    signer: &LogSigner,
    before: &SignedTreeHead,
    drop_heads: bool,
) -> Baseline {
    copy_dir(tampered, dir);
    if drop_heads {
        shown(std::fs::remove_file(dir.join("heads.jsonl")))?;
    }
    shown(publish(kube, twin, before).await)?;
    let mut log = shown(Log::open(
        dir,
        LogOptions {
            segment_bytes: 4096,
        },
    ))?;
    let sth = signer.sign(&log.head(1_800_000_000_000));
    shown(log.record_head(&sth))?;
    drop(log);
    shown(publish(kube, twin, &sth).await)?;
    let witnessed = shown(
        Api::<AuditRetention>::namespaced(kube.clone(), &twin.namespace)
            .get(&twin.name)
            .await,
    )?
    .status
    .and_then(|s| s.latest_signed_tree_head)
    .ok_or("the twin witness holds no head")?;
    if witnessed != sth {
        return Err(format!("the twin witness holds {witnessed:?}"));
    }
    let verified = shown(verify_log(dir, signer.public_key(), &[witnessed]))?;
    Ok(format!(
        "without the anchor a head of size {} replaced the witnessed {} and the log verifies against it ({} entries)",
        sth.tree_size, before.tree_size, verified.entries
    ))
}

/// `entries` without the one of log index `index`.
fn trimmed_entries(
    entries: &[portcullis_audit::bundle::ProvenEntry],
    index: u64,
) -> Vec<portcullis_audit::bundle::ProvenEntry> {
    entries
        .iter()
        .filter(|e| e.index != index)
        .cloned()
        .collect()
}

/// The Merkle tree of a log folder still matches its last signed head: what pruning by hand
/// leaves intact, so that only the signed prune rule tells.
fn tree_matches_head(dir: &Path, public_key: &[u8]) -> Baseline {
    let log = shown(Log::open(
        dir,
        LogOptions {
            segment_bytes: 2048,
        },
    ))?;
    let sth = log.heads().last().cloned().ok_or("no signed head")?;
    let head = shown(verify_tree_head(&sth, public_key))?;
    if log.root_at(head.tree_size) != Some(head.root_hash) {
        return Err("the tree no longer matches its signed head".into());
    }
    Ok(format!(
        "{} entries retired without a signed prune; the tree still matches the signed head of size {}",
        log.pruned(),
        head.tree_size
    ))
}

/// A prune round on a copy of the log folder `dir` under `rule`: `Ok` when it retires
/// entries or writes a prune entry (the segments go once a head covers it).
fn would_prune(dir: &Path, copy: &Path, rule: &portcullis_audit::prune::Rule) -> Baseline {
    copy_dir(dir, copy);
    let mut log = shown(Log::open(
        copy,
        LogOptions {
            segment_bytes: 2048,
        },
    ))?;
    let done = shown(enforce(&mut log, rule, Timestamp::now()))?;
    if done.pruned > 0 || done.awaiting_signature.is_some() {
        Ok(format!("without it the same round prunes: {done:?}"))
    } else {
        Err(format!("nothing pruned even without it: {done:?}"))
    }
}

/// A refusal with `status` and a message containing `needle`.
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

fn caught<T: std::fmt::Debug, E: std::fmt::Display>(
    result: Result<T, E>,
    needle: &str,
) -> Result<String, String> {
    match result {
        Err(e) if e.to_string().contains(needle) => Ok(e.to_string()),
        Err(e) => Err(format!("failed, but not naming {needle:?}: {e}")),
        Ok(v) => Err(format!("accepted: {v:?}")),
    }
}

/// Rewrite entry `nth` of a segment file (a valid frame, checksum recomputed).
fn rewrite_entry(segment: &Path, nth: usize, edit: impl Fn(&str) -> String) {
    let bytes = std::fs::read(segment).expect("segment");
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("len")) as usize;
        let mut payload = bytes[at + 8..at + 8 + len].to_vec();
        if i == nth {
            payload = edit(&String::from_utf8_lossy(&payload)).into_bytes();
        }
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        at += 8 + len;
        i += 1;
    }
    std::fs::write(segment, out).expect("write segment");
}

fn segments(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data.join("segments"))
        .expect("segments")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

fn curl_get(url: &str, ca: &Path) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--cacert", &ca.to_string_lossy(), url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copy a bundle folder for one attempt.
fn copy_bundle(from: &Path, to: &Path) -> PathBuf {
    copy_dir(from, to);
    to.to_path_buf()
}

fn edit_lines(path: &Path, edit: impl Fn(&mut Vec<String>)) {
    let text = std::fs::read_to_string(path).expect("read");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    edit(&mut lines);
    std::fs::write(path, lines.join("\n") + "\n").expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_attacks_are_refused_or_caught() {
    let h = harness();
    h.install_crds().await;
    let kube = h.client().await;
    let ns_a = h.namespace("evidence-a").await;
    let ns_b = h.namespace("evidence-b").await;
    for (ns, sa) in [
        (&ns_a, "agent"),
        (&ns_b, "agent"),
        (&ns_a, "reader"),
        (&ns_b, "reader"),
    ] {
        h.service_account(ns, sa).await;
    }
    let pod_a = h.pod(&ns_a, "agent-0", "agent").await;
    let pod_b = h.pod(&ns_b, "agent-0", "agent").await;
    // A pod the injection webhook gave a sidecar (its mark and the sidecar container), in a
    // namespace labelled for injection.
    label_for_injection(&kube, &ns_a).await;
    let sidecar_pod: Pod = Api::<Pod>::namespaced(kube.clone(), &ns_a)
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
    let retention: AuditRetention = serde_json::from_value(serde_json::json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "AuditRetention",
        "metadata": {"name": "default"}, "spec": {"retainFor": "400d"}
    }))
    .expect("retention");
    let retentions: Api<AuditRetention> = Api::namespaced(kube.clone(), &ns_a);
    retentions
        .create(&PostParams::default(), &retention)
        .await
        .expect("witness");
    for ns in [&ns_a, &ns_b] {
        let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "evidence-reader"},
            "rules": [{"apiGroups": ["portcullis.dev"], "resources": ["auditretentions/evidence"], "verbs": ["get"]}]
        }))
        .expect("role");
        Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(kube.clone(), ns)
            .create(&PostParams::default(), &role)
            .await
            .expect("role");
        let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "evidence-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]
        }))
        .expect("binding");
        Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(kube.clone(), ns)
            .create(&PostParams::default(), &binding)
            .await
            .expect("binding");
    }
    let witness = Witness {
        namespace: ns_a.clone(),
        name: "default".into(),
    };
    let work = tempfile::tempdir().expect("tmp");
    let data = work.path().join("data");
    let head_file = work.path().join("last-head.json");
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
    let public_key = LogSigner::from_pkcs8(pkcs8.as_ref())
        .expect("signer")
        .public_key()
        .to_vec();
    let tls = tls();
    let svc = start(&kube, &data, &head_file, pkcs8.as_ref(), &tls, &witness).await;
    let token_a = h
        .token(&ns_a, "agent", Some("portcullis-audit"), Some(&pod_a))
        .await;
    let token_b = h
        .token(&ns_b, "agent", Some("portcullis-audit"), Some(&pod_b))
        .await;
    let token_sidecar = h
        .token(&ns_a, "agent", Some("portcullis-audit"), Some(&sidecar_pod))
        .await;
    let reader_a = h.token(&ns_a, "reader", None, None).await;
    let reader_b = h.token(&ns_b, "reader", None, None).await;
    // A reader bound cluster-wide: what the service serves to a reader the scope lets through.
    h.service_account(&ns_a, "auditor").await;
    let cluster_reader = format!("evidence-auditor-{ns_a}");
    let role: k8s_openapi::api::rbac::v1::ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": cluster_reader},
        "rules": [{"apiGroups": ["portcullis.dev"], "resources": ["auditretentions/evidence"], "verbs": ["get"]}]
    }))
    .expect("cluster role");
    Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(kube.clone())
        .create(&PostParams::default(), &role)
        .await
        .expect("cluster role");
    let binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": cluster_reader},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_reader},
        "subjects": [{"kind": "ServiceAccount", "name": "auditor", "namespace": ns_a}]
    }))
    .expect("cluster role binding");
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(kube.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("cluster role binding");
    let auditor = h.token(&ns_a, "auditor", None, None).await;
    // The senders as the API server authenticates them, for the unprotected twin of ingest.
    let authenticator = Authenticator::new(kube.clone());
    let source_a = authenticator
        .authenticate(&token_a)
        .await
        .expect("source a");
    let source_b = authenticator
        .authenticate(&token_b)
        .await
        .expect("source b");
    let source_sidecar = authenticator
        .authenticate(&token_sidecar)
        .await
        .expect("source of the sidecar pod");
    let twin = work.path().join("twin");
    let twin_signer = LogSigner::from_pkcs8(pkcs8.as_ref()).expect("signer");
    let mut t = Table::default();
    let sa = |name: &str| serde_json::json!({"name": name});

    // What honest sidecars send: the baseline the attempts are measured against.
    let honest: Vec<AuditRecord> = (1..=20)
        .map(|i| {
            record(
                &ns_a,
                sa("agent"),
                "customers-db",
                "s-1",
                i,
                statement(if i % 4 == 0 { "deny" } else { "allow" }),
            )
        })
        .collect();
    svc.client
        .ship(&token_a, &honest)
        .await
        .expect("honest records");
    let cast = b"{\"version\": 2, \"width\": 80, \"height\": 24}\n[0.1, \"o\", \"$ \"]\n".to_vec();
    let cast_sha = sha256_hex(&cast);
    svc.client
        .upload_recording(&token_a, &cast_sha, Bytes::from(cast.clone()))
        .await
        .expect("upload");
    let recording_event = |sha: &str| {
        serde_json::json!({"type": "recording", "requestId": 1, "sha256": sha, "bytes": 10,
            "events": 1, "durationMillis": 100, "protocol": "v5.channel.k8s.io", "target": "x/y/z"})
    };
    svc.client
        .ship(
            &token_a,
            &[record(
                &ns_a,
                sa("agent"),
                "cluster-api",
                "k-1",
                21,
                recording_event(&cast_sha),
            )],
        )
        .await
        .expect("recording record after its upload");
    svc.client
        .ship(
            &token_b,
            &[record(
                &ns_b,
                sa("agent"),
                "orders-db",
                "s-b",
                1,
                statement("allow"),
            )],
        )
        .await
        .expect("team b's record");
    let principal_session = record(
        &ns_a,
        serde_json::json!({"name": "agent", "principal": alice()}),
        "customers-db",
        "p-1",
        1,
        statement("allow"),
    );
    svc.client
        .ship(&token_sidecar, std::slice::from_ref(&principal_session))
        .await
        .expect("a sidecar names the person of its session");
    let size = svc.log.lock().expect("lock").size();
    assert_eq!(size, 23);

    // Forged attribution: each refused, nothing written.
    let family = "forged attribution";
    let forged = [
        (
            "record names another service account (an approver's)",
            record(
                &ns_a,
                sa("approver"),
                "customers-db",
                "s-1",
                30,
                statement("allow"),
            ),
            403,
            "service account approver",
            "\"approver\"".to_owned(),
        ),
        (
            "record names another namespace",
            record(
                &ns_b,
                sa("agent"),
                "customers-db",
                "s-1",
                31,
                statement("allow"),
            ),
            403,
            "namespace",
            ns_b.clone(),
        ),
        (
            "record names another pod",
            record(
                &ns_a,
                serde_json::json!({"name": "agent", "pod": "agent-9"}),
                "customers-db",
                "s-1",
                32,
                statement("allow"),
            ),
            403,
            "pod agent-9",
            "agent-9".to_owned(),
        ),
        (
            "record names another pod UID",
            record(
                &ns_a,
                serde_json::json!({"name": "agent", "podUid": "0000"}),
                "customers-db",
                "s-1",
                33,
                statement("allow"),
            ),
            403,
            "pod UID",
            "\"0000\"".to_owned(),
        ),
        (
            "record names a person as the workload",
            record(
                &ns_a,
                serde_json::json!({"kind": "User", "name": "alice"}),
                "customers-db",
                "s-1",
                34,
                statement("allow"),
            ),
            403,
            "identity kind User",
            "alice".to_owned(),
        ),
        (
            "a pod without a sidecar names a person",
            record(
                &ns_a,
                serde_json::json!({"name": "agent", "principal": alice()}),
                "customers-db",
                "s-9",
                35,
                statement("allow"),
            ),
            403,
            "has no Portcullis sidecar",
            "alice".to_owned(),
        ),
        (
            "record names another namespace's resource",
            record(
                &ns_a,
                sa("agent"),
                "evidence-b/orders-db",
                "s-1",
                36,
                statement("allow"),
            ),
            403,
            "not a ProtectedResource name",
            "evidence-b/orders-db".to_owned(),
        ),
        (
            "recording record for a recording never uploaded",
            record(
                &ns_a,
                sa("agent"),
                "cluster-api",
                "k-1",
                37,
                recording_event(&"a".repeat(64)),
            ),
            409,
            "has not uploaded",
            "a".repeat(64),
        ),
    ];
    for (i, (attempt, r, status, needle, names)) in forged.into_iter().enumerate() {
        let baseline = unchecked_ingest(
            &twin.join(format!("forged-{i}")),
            &twin_signer,
            &source_a,
            std::slice::from_ref(&r),
            &[],
            &names,
        );
        t.row(
            family,
            attempt,
            baseline,
            refused_any(svc.client.ship(&token_a, &[r]).await, status, needle),
        );
    }
    let mut bob = principal_session.clone();
    bob.seq = 2;
    bob.identity.principal.as_mut().expect("principal").name = "bob".into();
    t.row(
        family,
        "a sidecar names another person within its session",
        unchecked_ingest(
            &twin.join("bob"),
            &twin_signer,
            &source_sidecar,
            &[principal_session.clone(), bob.clone()],
            &[],
            "\"bob\"",
        ),
        refused_any(
            svc.client.ship(&token_sidecar, &[bob]).await,
            403,
            "which began as User alice",
        ),
    );
    let b_names_a_recording = record(
        &ns_b,
        sa("agent"),
        "cluster-api",
        "k-b",
        2,
        recording_event(&cast_sha),
    );
    t.row(
        family,
        "another namespace's pod files a recording record for team a's upload",
        unchecked_ingest(
            &twin.join("b-names-a"),
            &twin_signer,
            &source_b,
            std::slice::from_ref(&b_names_a_recording),
            &[(cast_sha.as_str(), cast.as_slice())],
            &cast_sha,
        ),
        refused_any(
            svc.client
                .ship(&token_b, std::slice::from_ref(&b_names_a_recording))
                .await,
            409,
            "has not uploaded",
        ),
    );
    assert_eq!(
        svc.log.lock().expect("lock").size(),
        size,
        "refused records wrote nothing"
    );

    // A record too large for the log is refused with 413 (not retried forever); the stand-in
    // the sidecar sends instead names its hash and size.
    let mut huge = record(
        &ns_a,
        sa("agent"),
        "customers-db",
        "o-1",
        1,
        statement("allow"),
    );
    if let portcullis_crds::audit::AuditEvent::Statement(s) = &mut huge.event {
        s.statement = Some("x".repeat(portcullis_crds::audit::MAX_RECORD_BYTES));
    }
    t.row(
        "oversize record",
        "a record over the limit",
        unchecked_ingest(
            &twin.join("oversize"),
            &twin_signer,
            &source_a,
            std::slice::from_ref(&huge),
            &[],
            "xxxxxxxx",
        ),
        refused_any(
            svc.client.ship(&token_a, &[huge.clone()]).await,
            413,
            "send a stand-in",
        ),
    );
    let line = serde_json::to_vec(&huge).expect("json");
    svc.client
        .ship(&token_a, &[huge.stand_in(&line)])
        .await
        .expect("the stand-in is taken");
    let size = svc.log.lock().expect("lock").size();

    // Cross-namespace readers.
    let family = "cross-namespace reader";
    let only = |ns: &str| vec![ns.to_owned()];
    let mut fetched_a = Err(ShipError::Local("not asked".into()));
    for _ in 0..50 {
        fetched_a = svc
            .client
            .entries_in(&reader_a, 0, size, size, Some(&only(&ns_a)))
            .await;
        if fetched_a.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fetched_a = fetched_a.expect("reader a reads namespace a");
    assert_eq!(
        fetched_a.len(),
        23,
        "all of team a's records, none of team b's"
    );
    let fetched_b = svc
        .client
        .entries_in(&reader_b, 0, size, size, Some(&only(&ns_b)))
        .await
        .expect("reader b reads b");
    assert_eq!(fetched_b.len(), 1, "team b reads its own record");
    t.row(
        family,
        "reader of a asks for b's records",
        Ok(format!(
            "the same request without the namespace refusal (b's reader) gets {} record",
            fetched_b.len()
        )),
        refused_any(
            svc.client
                .entries_in(&reader_a, 0, size, size, Some(&only(&ns_b)))
                .await,
            403,
            "in namespace",
        ),
    );
    t.row(
        family,
        "reader of a asks for the whole log",
        svc.client
            .entries_in(&auditor, 0, size, size, None)
            .await
            .map_err(|e| e.to_string())
            .and_then(|all| {
                (all.len() as u64 == size)
                    .then(|| {
                        format!(
                            "the same request through a cluster-wide binding gets all {} records",
                            all.len()
                        )
                    })
                    .ok_or_else(|| format!("a cluster-wide reader got {} of {size}", all.len()))
            }),
        refused_any(
            svc.client.entries_in(&reader_a, 0, size, size, None).await,
            403,
            "cluster-wide",
        ),
    );
    let recording_served = svc
        .client
        .recording_in(&reader_a, &cast_sha, Some(&ns_a))
        .await
        .map(|c| {
            format!(
                "the recording exists and is served ({} bytes) where the reader's namespace scope lets it through",
                c.len()
            )
        })
        .map_err(|e| e.to_string());
    t.row(
        family,
        "reader of a reads a's recording as b's",
        recording_served.clone(),
        refused_any(
            svc.client
                .recording_in(&reader_a, &cast_sha, Some(&ns_b))
                .await,
            403,
            "in namespace",
        ),
    );
    t.row(
        family,
        "reader of b reads a's recording in b",
        recording_served,
        refused_any(
            svc.client
                .recording_in(&reader_b, &cast_sha, Some(&ns_b))
                .await,
            404,
            "was sent from namespace",
        ),
    );

    // A bundle exported through the service; its manifest is signed after the service
    // recomputed the selection.
    let sth = witnessed_size(&retentions, size as i64).await;
    let exported = work.path().join("exported");
    let selection = Selection {
        to_index: size,
        namespaces: Some(only(&ns_a)),
        ..Selection::default()
    };
    write_bundle_from(fetched_a.clone(), &sth, &selection, &exported).expect("bundle");
    for s in referenced_recordings(&exported).expect("refs") {
        let content = svc
            .client
            .recording_in(&reader_a, &s, Some(&ns_a))
            .await
            .expect("recording");
        add_recording(&exported, &s, &content).expect("add");
    }
    std::fs::write(
        exported.join("policies.yaml"),
        "- kind: GatewayPolicy\n  metadata: {name: gdpr}\n",
    )
    .expect("policies");
    let unsigned = manifest::build(&exported, &sth, &selection, 0).expect("manifest");
    // A manifest of b's selection, with b's record.
    let mut selecting_b = unsigned.clone();
    selecting_b.selection.namespaces = Some(only(&ns_b));
    selecting_b.indexes = fetched_b.iter().map(|e| e.index).collect();
    t.row(
        family,
        "reader of a has a manifest for b's records signed",
        svc.client
            .sign_manifest(&reader_b, &selecting_b)
            .await
            .map(|_| {
                "the same manifest is signed where the namespace check lets the reader through (b's reader)".to_owned()
            })
            .map_err(|e| e.to_string()),
        refused_any(
            svc.client.sign_manifest(&reader_a, &selecting_b).await,
            403,
            "in namespace",
        ),
    );
    let mut trimmed = unsigned.clone();
    trimmed.indexes.remove(3);
    // Without the service's recomputation: the bundle rewritten without log index 3 (its
    // derived files regenerated), its manifest signed as asked, verifies.
    let trimmed_baseline = (|| -> Baseline {
        let dir = copy_bundle(&exported, &work.path().join("scratch").join("signed-trim"));
        let dropped = trimmed_entries(&fetched_a, 3);
        shown(write_bundle_from(dropped, &sth, &selection, &dir))?;
        let m = shown(manifest::build(&dir, &sth, &selection, 0))?;
        if m.indexes != trimmed.indexes {
            return Err(format!("the rewritten bundle holds {:?}", m.indexes));
        }
        shown(manifest::write(
            &dir,
            &shown(manifest::sign_manifest(&twin_signer, &m))?,
        ))?;
        let r = shown(verify_bundle(&dir, &public_key))?;
        Ok(format!(
            "signed without recomputing the selection, the bundle without log index 3 verifies ({} records)",
            r.records
        ))
    })();
    t.row(
        "trimmed bundle",
        "manifest naming fewer records than the selection holds",
        trimmed_baseline,
        refused_any(
            svc.client.sign_manifest(&reader_a, &trimmed).await,
            409,
            "is missing",
        ),
    );
    let signed = svc
        .client
        .sign_manifest(&reader_a, &unsigned)
        .await
        .expect("signed manifest");
    manifest::write(&exported, &signed).expect("write manifest");
    let report = verify_bundle(&exported, &public_key).expect("the exported bundle verifies");
    assert_eq!((report.records, report.recordings), (23, 1));

    // A recording the service holds cannot be left out of a bundle by calling it missing.
    let b = copy_bundle(
        &exported,
        &work.path().join("scratch").join("hidden-recording"),
    );
    std::fs::remove_file(b.join(format!("recordings/{cast_sha}.cast"))).expect("rm");
    for f in ["manifest.json", "manifest.sig"] {
        std::fs::remove_file(b.join(f)).expect("rm");
    }
    let hiding = manifest::build(&b, &sth, &selection, 0).expect("manifest");
    assert_eq!(hiding.missing_recordings.len(), 1);
    let hidden_baseline = manifest::sign_manifest(&twin_signer, &hiding)
        .map_err(|e| e.to_string())
        .and_then(|signed| {
            let dir = work.path().join("scratch").join("hidden-recording-twin");
            copy_dir(&b, &dir);
            shown(manifest::write(&dir, &signed))?;
            let r = shown(verify_bundle(&dir, &public_key))?;
            if r.missing_recordings.len() == 1 && r.recordings == 0 {
                Ok("signed without asking the store, the bundle verifies without the recording, reported as lost".to_owned())
            } else {
                Err(format!("{r:?}"))
            }
        });
    t.row(
        "trimmed bundle",
        "a recording the service holds listed as missing",
        hidden_baseline,
        refused_any(
            svc.client.sign_manifest(&reader_a, &hiding).await,
            409,
            "is stored: put it in the bundle",
        ),
    );

    // Bundles changed after export.
    let scratch = work.path().join("scratch");
    let attempt = |name: &str| copy_bundle(&exported, &scratch.join(name));
    let b = attempt("trim");
    edit_lines(&b.join("records.jsonl"), |l| {
        l.remove(5);
    });
    edit_lines(&b.join("proofs.jsonl"), |l| {
        l.remove(5);
    });
    t.row(
        "trimmed bundle",
        "a record (a refused statement) and its proof dropped",
        records_only(&b, &public_key),
        caught(verify_bundle(&b, &public_key), "is missing"),
    );
    let b = attempt("reorder");
    edit_lines(&b.join("records.jsonl"), |l| l.swap(2, 3));
    edit_lines(&b.join("proofs.jsonl"), |l| l.swap(2, 3));
    t.row(
        "reordered bundle",
        "two records swapped with their proofs",
        records_only(&b, &public_key),
        caught(verify_bundle(&b, &public_key), "out of order"),
    );
    let b = attempt("dup");
    edit_lines(&b.join("records.jsonl"), |l| {
        let x = l[4].clone();
        l.insert(5, x);
    });
    edit_lines(&b.join("proofs.jsonl"), |l| {
        let x = l[4].clone();
        l.insert(5, x);
    });
    t.row(
        "duplicated bundle",
        "a record repeated with its proof",
        records_only(&b, &public_key),
        caught(verify_bundle(&b, &public_key), "repeated"),
    );
    let b = attempt("ocsf");
    let ocsf = std::fs::read_to_string(b.join("records.ocsf.jsonl")).expect("ocsf");
    std::fs::write(
        b.join("records.ocsf.jsonl"),
        ocsf.replacen("\"Failure\"", "\"Success\"", 1),
    )
    .expect("edit");
    t.row(
        "edited derived file",
        "OCSF copy says a refused statement succeeded",
        records_only(&b, &public_key),
        caught(verify_bundle(&b, &public_key), "records.ocsf.jsonl"),
    );
    let b = attempt("summary");
    let summary = std::fs::read_to_string(b.join("summary.md")).expect("summary");
    std::fs::write(b.join("summary.md"), summary.replacen("deny", "allow", 1)).expect("edit");
    t.row(
        "edited derived file",
        "summary.md rewritten",
        records_only(&b, &public_key),
        caught(verify_bundle(&b, &public_key), "summary.md"),
    );
    let b = attempt("policies");
    std::fs::write(
        b.join("policies.yaml"),
        "- kind: GatewayPolicy\n  metadata: {name: lenient}\n",
    )
    .expect("edit");
    t.row(
        "edited derived file",
        "policies.yaml replaced",
        records_only(&b, &public_key),
        caught(verify_bundle(&b, &public_key), "policies.yaml: changed"),
    );
    let b = attempt("extra");
    std::fs::write(b.join("records-extra.jsonl"), "{}\n").expect("extra");
    t.row(
        "edited derived file",
        "a file added",
        records_only(&b, &public_key),
        caught(
            verify_bundle(&b, &public_key),
            "not part of the exported bundle",
        ),
    );
    let b = attempt("manifest");
    edit_lines(&b.join("records.jsonl"), |l| {
        l.remove(5);
    });
    edit_lines(&b.join("proofs.jsonl"), |l| {
        l.remove(5);
    });
    let text = std::fs::read_to_string(b.join("manifest.json")).expect("manifest");
    let mut m: manifest::Manifest = serde_json::from_str(&text).expect("manifest json");
    m.indexes.remove(5);
    std::fs::write(
        b.join("manifest.json"),
        serde_json::to_string_pretty(&m).expect("json"),
    )
    .expect("edit");
    t.row(
        "trimmed bundle",
        "record dropped and the manifest edited to match",
        records_only(&b, &public_key),
        caught(
            verify_bundle(&b, &public_key),
            "manifest.json was changed after the service signed it",
        ),
    );
    let b = attempt("nomanifest");
    std::fs::remove_file(b.join("manifest.json")).expect("rm");
    t.row(
        "trimmed bundle",
        "manifest removed",
        records_only(&b, &public_key),
        caught(verify_bundle(&b, &public_key), "manifest.json is missing"),
    );

    // An unfiltered bundle must hold every record of its range.
    {
        let log = svc.log.lock().expect("lock");
        let whole = work.path().join("whole");
        write_bundle(
            &log,
            &sth,
            &Selection::default(),
            &LogSigner::from_pkcs8(pkcs8.as_ref()).expect("signer"),
            &whole,
        )
        .expect("whole bundle");
        verify_bundle(&whole, &public_key).expect("the whole-log bundle verifies");
        let b = copy_bundle(&whole, &scratch.join("whole-trim"));
        edit_lines(&b.join("records.jsonl"), |l| {
            l.pop();
        });
        edit_lines(&b.join("proofs.jsonl"), |l| {
            l.pop();
        });
        t.row(
            "trimmed bundle",
            "last record of an unfiltered range dropped",
            records_only(&b, &public_key),
            caught(verify_bundle(&b, &public_key), "is missing"),
        );
    }

    // Stale: the log went on; the bundle is pinned to the cluster's head.
    svc.client
        .ship(
            &token_a,
            &[record(
                &ns_a,
                sa("agent"),
                "customers-db",
                "s-1",
                22,
                statement("deny"),
            )],
        )
        .await
        .expect("more records");
    let newer = witnessed_size(&retentions, size as i64 + 1).await;
    let proof = svc
        .client
        .consistency(size, size + 1)
        .await
        .expect("consistency");
    let pinned = Trust {
        expect_head: Some(newer.clone()),
        consistency: proof.clone(),
        allow_older: false,
    };
    t.row(
        "stale bundle",
        "an older bundle handed over as current",
        verify_bundle(&exported, &public_key)
            .map(|r| {
                format!(
                    "without a trusted head the bundle of size {} verifies",
                    r.tree_size
                )
            })
            .map_err(|e| e.to_string()),
        caught(
            verify_bundle_trusting(&exported, &public_key, &pinned),
            "older than the log",
        ),
    );
    verify_bundle_trusting(
        &exported,
        &public_key,
        &Trust {
            allow_older: true,
            ..pinned.clone()
        },
    )
    .expect("an older bundle proven a prefix is accepted when asked for");

    // Volume tampering with restarts: the log rolled back to a copy taken earlier.
    let snapshot = work.path().join("snapshot");
    copy_dir(&data, &snapshot);
    svc.client
        .ship(
            &token_a,
            &(23..=30)
                .map(|i| {
                    record(
                        &ns_a,
                        sa("agent"),
                        "customers-db",
                        "s-1",
                        i,
                        statement("deny"),
                    )
                })
                .collect::<Vec<_>>(),
        )
        .await
        .expect("records after the snapshot");
    let before = witnessed_size(&retentions, size as i64 + 9).await;
    let _ = svc.stop.send(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    copy_dir(&snapshot, &data);
    let svc = start(&kube, &data, &head_file, pkcs8.as_ref(), &tls, &witness).await;
    let family = "volume tampering";
    // The twin witness the unanchored start publishes to.
    let twin_witness = Witness {
        namespace: ns_a.clone(),
        name: "twin".into(),
    };
    let mut twin_retention = retention.clone();
    twin_retention.metadata.name = Some("twin".into());
    retentions
        .create(&PostParams::default(), &twin_retention)
        .await
        .expect("twin witness");
    let rollback_baseline = unanchored_restart(
        &kube,
        &twin_witness,
        &snapshot,
        &twin.join("rollback"),
        &twin_signer,
        &before,
        false,
    )
    .await;
    let mut diverged = None;
    for _ in 0..50 {
        if let Some(reason) = svc.anchor.diverged() {
            diverged = Some(reason);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.row(
        family,
        "log rolled back while the service was down, then restarted",
        rollback_baseline.clone(),
        diverged
            .clone()
            .ok_or_else(|| "the rolled-back log was accepted".to_owned()),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    t.row(
        family,
        "rolled-back log: tree heads refused",
        rollback_baseline.clone(),
        caught(svc.client.latest_head().await, DIVERGED_REASON),
    );
    t.row(
        family,
        "rolled-back log: no smaller head published",
        rollback_baseline.clone(),
        match witnessed(&retentions).await {
            Some(h) if h == before => Ok(format!(
                "the witness still holds the head of size {}",
                h.tree_size
            )),
            other => Err(format!("witness now {other:?}")),
        },
    );
    let cond = retentions
        .get("default")
        .await
        .ok()
        .and_then(|r| r.status)
        .and_then(|s| find_condition(&s.conditions, types::VERIFIED).cloned());
    t.row(
        family,
        "rolled-back log: Verified condition",
        rollback_baseline.clone(),
        match cond {
            Some(c) if c.status == "False" && c.reason == DIVERGED_REASON => Ok(c.message),
            other => Err(format!("{other:?}")),
        },
    );
    let metrics = curl_get(&format!("{}/metrics", svc.url), tls.ca_file.path());
    t.row(
        family,
        "rolled-back log: metric",
        rollback_baseline.clone(),
        if metrics.contains("portcullis_audit_witness_diverged 1") {
            Ok("portcullis_audit_witness_diverged 1".into())
        } else {
            Err(metrics)
        },
    );
    let events = Api::<CoreEvent>::namespaced(kube.clone(), &ns_a)
        .list(&ListParams::default())
        .await
        .expect("events");
    t.row(
        family,
        "rolled-back log: Warning Event",
        rollback_baseline.clone(),
        if events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some(DIVERGED_REASON))
        {
            Ok("Event written".into())
        } else {
            Err("no Event".into())
        },
    );
    // Ingest goes on: new records are kept safe while the divergence waits for a person.
    svc.client
        .ship(
            &token_a,
            &[record(
                &ns_a,
                sa("agent"),
                "customers-db",
                "s-2",
                1,
                statement("allow"),
            )],
        )
        .await
        .expect("ingest keeps records while diverged");
    // A person accepts the log as it is: signing resumes and the log records the reset.
    let value = {
        let log = svc.log.lock().expect("lock");
        let given_up =
            portcullis_crds::audit_log::verify_tree_head(&before, &public_key).expect("head");
        Anchor::accept_value(Some(&given_up), &log)
    };
    retentions
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {ACCEPT_ANNOTATION: value}}}),
            ),
        )
        .await
        .expect("annotate");
    let accepted_size = svc.log.lock().expect("lock").size() as i64 + 1;
    witnessed_size(&retentions, accepted_size).await;
    assert!(svc.anchor.diverged().is_none());

    // An entry rewritten (a denial turned into an allow, checksum recomputed) while down.
    let _ = svc.stop.send(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = segments(&data).into_iter().next().expect("segment");
    rewrite_entry(&first, 3, |e| e.replace("\"deny\"", "\"allow\""));
    let rewritten = work.path().join("rewritten");
    copy_dir(&data, &rewritten);
    let before_rewrite = witnessed(&retentions).await.expect("witnessed head");
    let svc = start(&kube, &data, &head_file, pkcs8.as_ref(), &tls, &witness).await;
    let mut diverged = None;
    for _ in 0..50 {
        if let Some(reason) = svc.anchor.diverged() {
            diverged = Some(reason);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.row(
        family,
        "a decision rewritten on the volume, then restarted",
        unanchored_restart(
            &kube,
            &twin_witness,
            &rewritten,
            &twin.join("rewritten"),
            &twin_signer,
            &before_rewrite,
            true,
        )
        .await,
        diverged.ok_or_else(|| "the rewritten log was accepted".to_owned()),
    );
    let _ = svc.stop.send(true);
    // A recording deleted from the volume: scheduled verification names it.
    portcullis_audit::retention::verify_recordings(&data).expect("recordings intact");
    std::fs::remove_file(data.join("recordings").join(format!("{cast_sha}.cast"))).expect("rm");
    let no_recording = twin.join("no-recording");
    copy_dir(&snapshot, &no_recording);
    std::fs::remove_file(
        no_recording
            .join("recordings")
            .join(format!("{cast_sha}.cast")),
    )
    .expect("rm");
    t.row(
        family,
        "a recording deleted from the volume",
        verify_log(&no_recording, &public_key, &[])
            .map(|v| {
                format!(
                    "the log walk without the recordings check stays green ({} entries)",
                    v.entries
                )
            })
            .map_err(|e| e.to_string()),
        caught(
            portcullis_audit::retention::verify_recordings(&data),
            "is missing",
        ),
    );

    // Unsigned pruning, offline: entries from 500 days ago in small segments.
    let family = "unsigned pruning";
    let dir = work.path().join("prune");
    let signer = LogSigner::from_pkcs8(pkcs8.as_ref()).expect("signer");
    let mut log = Log::open(
        &dir,
        LogOptions {
            segment_bytes: 2048,
        },
    )
    .expect("log");
    for i in 0..120u64 {
        let at = Timestamp::now() - SignedDuration::from_hours(24 * if i < 80 { 500 } else { 1 });
        let e = serde_json::json!({"id": format!("p:{i}"), "receivedAt": format!("{at:.6}"), "record": {"seq": i}});
        log.append(&[e.to_string().into_bytes()]).expect("append");
    }
    log.record_head(&signer.sign(&log.head(1))).expect("head");
    drop(log);
    let unsigned_dir = work.path().join("prune-unsigned");
    copy_dir(&dir, &unsigned_dir);
    {
        let mut l = Log::open(
            &unsigned_dir,
            LogOptions {
                segment_bytes: 2048,
            },
        )
        .expect("log");
        l.prune_before(60).expect("segments deleted by hand");
    }
    t.row(
        family,
        "first segments deleted by whoever holds the volume",
        tree_matches_head(&unsigned_dir, &public_key),
        caught(
            verify_log(&unsigned_dir, &public_key, &[]),
            "no prune entry covered by a signed tree head",
        ),
    );
    let held = rule("400d", true, "a/default").expect("rule");
    let unheld = would_prune(
        &dir,
        &twin.join("prune-unheld"),
        &rule("400d", false, "a/default").expect("rule"),
    );
    let mut log = Log::open(
        &dir,
        LogOptions {
            segment_bytes: 2048,
        },
    )
    .expect("log");
    let done = enforce(&mut log, &held, Timestamp::now()).expect("enforce");
    t.row(
        family,
        "pruning under legal hold",
        unheld,
        if done.pruned == 0 && done.awaiting_signature.is_none() && log.pruned() == 0 {
            Ok("nothing retired, no prune entry".into())
        } else {
            Err(format!("{done:?}"))
        },
    );
    let r = rule("400d", false, "a/default").expect("rule");
    let first_round = enforce(&mut log, &r, Timestamp::now()).expect("enforce");
    assert!(
        first_round.awaiting_signature.is_some(),
        "segments wait for a signed head"
    );
    assert_eq!(log.pruned(), 0);
    log.record_head(&signer.sign(&log.head(2))).expect("head");
    let second = enforce(&mut log, &r, Timestamp::now()).expect("enforce");
    assert!(
        second.pruned > 0,
        "the signed prune retires the old segments"
    );
    let kept_from = log.pruned();
    drop(log);
    verify_log(&dir, &public_key, &[]).expect("a signed prune verifies");
    {
        let mut l = Log::open(
            &dir,
            LogOptions {
                segment_bytes: 2048,
            },
        )
        .expect("log");
        l.prune_before(100).expect("more segments deleted by hand");
        assert!(l.pruned() > kept_from);
    }
    t.row(
        family,
        "segments past the signed boundary deleted by hand",
        tree_matches_head(&dir, &public_key),
        caught(
            verify_log(&dir, &public_key, &[]),
            "no signed prune entry retired them",
        ),
    );

    // Team namespaces' own AuditRetention objects apply to their records.
    let family = "namespace retention";
    let dir = work.path().join("prune-ns");
    let mut log = Log::open(
        &dir,
        LogOptions {
            segment_bytes: 2048,
        },
    )
    .expect("log");
    for i in 0..80u64 {
        let at = Timestamp::now() - SignedDuration::from_hours(24 * if i < 60 { 500 } else { 1 });
        let ns = if i % 2 == 0 { "team-a" } else { "team-b" };
        let e = serde_json::json!({"id": format!("n:{i}"), "receivedAt": format!("{at:.6}"),
            "source": {"namespace": ns}, "record": {"seq": i}});
        log.append(&[e.to_string().into_bytes()]).expect("append");
    }
    log.record_head(&signer.sign(&log.head(1))).expect("head");
    let team_rule = |retain_for: &str, legal_hold: bool| {
        let mut r = rule("400d", false, "a/default").expect("rule");
        r.namespaces.insert(
            "team-b".into(),
            portcullis_audit::prune::NamespaceRule {
                retain_for: retain_for.into(),
                retain: portcullis_audit::retention::parse_retain_for(retain_for).expect("retain"),
                legal_hold,
            },
        );
        r
    };
    let cluster_rule_only = rule("400d", false, "a/default").expect("rule");
    let without_team_hold = would_prune(&dir, &twin.join("ns-hold"), &cluster_rule_only);
    let without_team_retention = would_prune(&dir, &twin.join("ns-longer"), &cluster_rule_only);
    let done = enforce(&mut log, &team_rule("30d", true), Timestamp::now()).expect("enforce");
    t.row(
        family,
        "pruning records of a namespace under its own legal hold",
        without_team_hold,
        if done == Default::default() {
            Ok("nothing retired".into())
        } else {
            Err(format!("{done:?}"))
        },
    );
    let done = enforce(&mut log, &team_rule("1000d", false), Timestamp::now()).expect("enforce");
    t.row(
        family,
        "pruning records a namespace keeps longer than the log",
        without_team_retention,
        if done == Default::default() {
            Ok("nothing retired".into())
        } else {
            Err(format!("{done:?}"))
        },
    );
    enforce(&mut log, &team_rule("450d", false), Timestamp::now()).expect("enforce");
    log.record_head(&signer.sign(&log.head(2))).expect("head");
    let done = enforce(&mut log, &team_rule("450d", false), Timestamp::now()).expect("enforce");
    assert!(done.pruned > 0, "records past both retentions go: {done:?}");
    drop(log);
    verify_log(&dir, &public_key, &[]).expect("the prune names the namespace's rule and verifies");

    t.assert_all_caught();
}
