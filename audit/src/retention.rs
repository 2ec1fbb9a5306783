//! Retention and scheduled verification, driven by an AuditRetention object.
//!
//! Records older than `retainFor` are pruned by whole segments (a segment goes once its newest
//! entry is older than the cut-off; the open segment is sealed first when it qualifies), never
//! while `legalHold` is set and never while the log does not extend the witnessed head. An
//! AuditRetention in a team namespace applies to the records sent from that namespace: they
//! are kept for the longer of its `retainFor` and the log's, and a segment holding any of them
//! is not pruned while its `legalHold` is set; its `Ready` condition says what is honoured and
//! what is not (see `team_retention`). A
//! prune is a signed act (see `prune`): the segments go only after a signed head covers the
//! prune entry; the pruned entries' leaf hashes stay, so the log and every signed head still
//! verify. Session recordings stored before the cut-off go too, once no kept record names
//! them. Every `verifyEvery` the whole log is walked and checked against its own heads, the
//! head the cluster witnessed in the AuditRetention status and its prune entries, and every
//! recording a kept record names is checked against its hash; the result lands in the status
//! (`Verified` condition, record count, bytes, oldest record, last verification time) with an
//! Event when it fails.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use portcullis_crds::conditions::{find_condition, new_condition, set_condition, types};
use portcullis_crds::AuditRetention;
use serde::Deserialize;

use crate::anchor::{Anchor, DIVERGED_REASON};
use crate::bundle::recording_named;
use crate::prune;
use crate::recordings::RecordingStore;
use crate::segment::{read_segment, segment_files};
use crate::service::Witness;
use crate::store::{Log, StoreError};
use crate::team_retention;
use crate::verify::{verify_log, Verified, VerifyError};

/// Parse `retainFor` (`400d`, `72h`).
pub fn parse_retain_for(s: &str) -> Option<Duration> {
    let (n, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    match unit {
        "d" => Some(Duration::from_secs(n.checked_mul(86_400)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3_600)?)),
        _ => None,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Received {
    received_at: String,
}

fn received_at(entry: &[u8]) -> Option<Timestamp> {
    serde_json::from_slice::<Received>(entry)
        .ok()?
        .received_at
        .parse()
        .ok()
}

/// Check every recording the kept entries of the log folder `dir` name: stored, and its
/// content still hashing to its name. Returns how many were checked.
pub fn verify_recordings(dir: &Path) -> Result<u64, String> {
    let named = named_recordings(dir)?;
    let store = RecordingStore::new(dir);
    for sha256 in &named {
        match store.get(sha256) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(format!("recording {sha256} named by the log is missing")),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(named.len() as u64)
}

/// The recordings that the entries kept in the log folder `dir` name. A damaged segment
/// other than the open one is an error: what it holds cannot be known.
fn named_recordings(dir: &Path) -> Result<BTreeSet<String>, String> {
    let seg_dir = dir.join("segments");
    let segments = segment_files(&seg_dir).map_err(|e| format!("{}: {e}", seg_dir.display()))?;
    let open = segments.last().map(|(first, _)| *first);
    let mut named = BTreeSet::new();
    for (first, path) in segments {
        let (read, damage) = read_segment(&path, first).map_err(|e| e.to_string())?;
        match damage {
            // The open segment may end in a frame being written right now.
            Some(e) if Some(first) != open => return Err(e.to_string()),
            _ => {}
        }
        named.extend(read.entries.iter().filter_map(|e| recording_named(e)));
    }
    Ok(named)
}

/// Delete the recordings in the log folder `dir` stored before `cutoff` that no kept entry
/// names; returns how many went. Nothing is deleted when the log cannot be read whole.
pub fn prune_recordings(dir: &Path, cutoff: SystemTime) -> Result<u64, String> {
    let named = named_recordings(dir)?;
    RecordingStore::new(dir)
        .prune(cutoff, &named)
        .map_err(|e| e.to_string())
}

/// Size figures of the log for the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Entries kept (pruned ones excluded).
    pub records: u64,
    /// Bytes of segments kept.
    pub bytes: u64,
    /// Time of the oldest entry kept.
    pub oldest: Option<Timestamp>,
}

/// Current size figures.
pub fn stats(log: &Log) -> Result<Stats, StoreError> {
    let segments = log.segments();
    let bytes = segments.iter().map(|(_, _, b)| b).sum();
    let oldest = match segments.first() {
        Some((first, count, _)) if *count > 0 => {
            log.entry(*first)?.as_deref().and_then(received_at)
        }
        _ => None,
    };
    Ok(Stats {
        records: log.size() - log.pruned(),
        bytes,
        oldest,
    })
}

/// One round: read the AuditRetention, enforce retention, verify the whole log against the
/// witnessed head, and write the result into the status.
pub async fn reconcile_once(
    client: &Client,
    witness: &Witness,
    log: &Arc<Mutex<Log>>,
    public_key: &[u8],
) -> Result<Result<Verified, VerifyError>, String> {
    reconcile_anchored(client, witness, log, public_key, None).await
}

/// How long a round waits for the signer to cover its prune entry before deleting segments
/// (otherwise they go in a later round).
const PRUNE_SIGNATURE_WAIT: Duration = Duration::from_secs(30);

/// [`reconcile_once`] that also honours the anchor: while the log does not extend the
/// witnessed head nothing is pruned and `Verified` stays `False` with its reason.
pub async fn reconcile_anchored(
    client: &Client,
    witness: &Witness,
    log: &Arc<Mutex<Log>>,
    public_key: &[u8],
    anchor: Option<&Anchor>,
) -> Result<Result<Verified, VerifyError>, String> {
    let api: Api<AuditRetention> = Api::namespaced(client.clone(), &witness.namespace);
    let retention = api.get(&witness.name).await.map_err(|e| e.to_string())?;
    let rule = prune::rule(
        &retention.spec.retain_for,
        retention.spec.legal_hold,
        &format!("{}/{}", witness.namespace, witness.name),
    )
    .ok_or_else(|| {
        format!(
            "retainFor {:?} is not NNNd or NNNh",
            retention.spec.retain_for
        )
    })?;
    let mut rule = rule;
    // Team namespaces' own AuditRetention objects: their records are kept for the longer
    // retention and never pruned under their legal hold; what they set that would weaken the
    // cluster's is not honoured and their `Ready` condition says so. When they cannot be
    // read, nothing is pruned this round.
    let cluster = format!("{}/{}", witness.namespace, witness.name);
    let mut team_conditions = Vec::new();
    match Api::<AuditRetention>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => {
            for r in list.items {
                let ns = r.metadata.namespace.clone().unwrap_or_default();
                let name = r.metadata.name.clone().unwrap_or_default();
                if ns == witness.namespace && name == witness.name {
                    continue;
                }
                let judged = team_retention::judge(&retention.spec, &r.spec);
                let condition = judged.condition(&cluster, r.metadata.generation);
                let current = r
                    .status
                    .as_ref()
                    .and_then(|s| find_condition(&s.conditions, types::READY));
                if current.is_none_or(|c| {
                    (&c.status, &c.reason, &c.message, c.observed_generation)
                        != (
                            &condition.status,
                            &condition.reason,
                            &condition.message,
                            condition.observed_generation,
                        )
                }) {
                    team_conditions.push((
                        ns.clone(),
                        name,
                        r.metadata.resource_version.clone(),
                        r.status.clone(),
                        condition,
                    ));
                }
                let Some(retain) = parse_retain_for(&judged.retain_for) else {
                    continue;
                };
                let e = rule.namespaces.entry(ns).or_insert(prune::NamespaceRule {
                    retain_for: judged.retain_for.clone(),
                    retain,
                    legal_hold: false,
                });
                if retain > e.retain {
                    e.retain = retain;
                    e.retain_for = judged.retain_for.clone();
                }
                e.legal_hold |= judged.legal_hold;
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "namespace AuditRetentions unreadable; nothing pruned this round");
            rule.legal_hold = true;
        }
    }
    // Written against the version listed (a conflict waits for the next round), so a status
    // written meanwhile is never replaced by an older copy.
    for (ns, name, resource_version, status, condition) in team_conditions {
        let mut conditions = status.map(|s| s.conditions).unwrap_or_default();
        let generation = condition.observed_generation;
        set_condition(&mut conditions, condition);
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": resource_version},
            "status": {"conditions": conditions, "observedGeneration": generation}
        });
        if let Err(e) = Api::<AuditRetention>::namespaced(client.clone(), &ns)
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            tracing::warn!(namespace = %ns, name = %name, error = %e, "team AuditRetention status not written");
        }
    }
    let diverged = anchor.and_then(Anchor::diverged);
    if diverged.is_none() {
        let mut awaiting = {
            let mut log = log.lock().map_err(|_| "log lock poisoned".to_owned())?;
            let done =
                prune::enforce(&mut log, &rule, Timestamp::now()).map_err(|e| e.to_string())?;
            if done.pruned > 0 {
                tracing::info!(pruned = done.pruned, "pruned audit records past retention");
            }
            done.awaiting_signature
        };
        let started = std::time::Instant::now();
        while awaiting.is_some() && started.elapsed() < PRUNE_SIGNATURE_WAIT {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut log = log.lock().map_err(|_| "log lock poisoned".to_owned())?;
            let done =
                prune::enforce(&mut log, &rule, Timestamp::now()).map_err(|e| e.to_string())?;
            if done.pruned > 0 {
                tracing::info!(
                    pruned = done.pruned,
                    "pruned audit records past retention after the signed prune entry"
                );
            }
            awaiting = done.awaiting_signature;
        }
    }
    let (dir, stats) = {
        let log = log.lock().map_err(|_| "log lock poisoned".to_owned())?;
        (
            log.dir().to_path_buf(),
            stats(&log).map_err(|e| e.to_string())?,
        )
    };
    if !retention.spec.legal_hold && diverged.is_none() {
        let cutoff = SystemTime::now()
            .checked_sub(rule.retain)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let log_dir = dir.clone();
        match tokio::task::spawn_blocking(move || prune_recordings(&log_dir, cutoff)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => tracing::info!(removed, "deleted recordings past retention"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "recordings not pruned: the log could not be read")
            }
            Err(e) => tracing::warn!(error = %e, "recordings not pruned"),
        }
    }
    let witnessed: Vec<_> = retention
        .status
        .as_ref()
        .and_then(|s| s.latest_signed_tree_head.clone())
        .into_iter()
        .collect();
    let key = public_key.to_vec();
    let result = tokio::task::spawn_blocking(move || -> Result<(Verified, u64), VerifyError> {
        let verified = verify_log(&dir, &key, &witnessed)?;
        let recordings = verify_recordings(&dir).map_err(VerifyError::Recording)?;
        Ok((verified, recordings))
    })
    .await
    .map_err(|e| e.to_string())?;

    let generation = retention.metadata.generation;
    let mut conditions = retention
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let verified = match (&result, &diverged) {
        (_, Some(reason)) => new_condition(
            types::VERIFIED,
            false,
            DIVERGED_REASON,
            reason.clone(),
            generation,
        ),
        (Ok((v, recordings)), None) => new_condition(
            types::VERIFIED,
            true,
            "LogVerified",
            format!(
                "{} entries verified against {} signed tree heads; {recordings} recordings checked",
                v.entries, v.heads
            ),
            generation,
        ),
        (Err(e), None) => new_condition(
            types::VERIFIED,
            false,
            "VerificationFailed",
            e.to_string(),
            generation,
        ),
    };
    set_condition(&mut conditions, verified);
    set_condition(
        &mut conditions,
        new_condition(
            types::READY,
            true,
            "Serving",
            "audit log open and accepting records",
            generation,
        ),
    );
    let status = serde_json::json!({
        "apiVersion": "portcullis.dev/v1alpha1",
        "kind": "AuditRetention",
        "status": {
            "conditions": conditions,
            "observedGeneration": generation,
            "recordCount": stats.records,
            "bytes": stats.bytes,
            "oldestRecord": stats.oldest.map(Time),
            "lastVerification": Time(Timestamp::now()),
        }
    });
    api.patch_status(
        &witness.name,
        &PatchParams::apply("portcullis-audit-retention").force(),
        &Patch::Apply(status),
    )
    .await
    .map_err(|e| e.to_string())?;
    if let Err(e) = &result {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "portcullis-audit".into(),
                instance: None,
            },
        );
        let reference: ObjectReference = retention.object_ref(&());
        let _ = recorder
            .publish(
                &Event {
                    type_: EventType::Warning,
                    reason: "VerificationFailed".into(),
                    note: Some(e.to_string()),
                    action: "Verify".into(),
                    secondary: None,
                },
                &reference,
            )
            .await;
    }
    Ok(result.map(|(v, _)| v))
}

/// Run [`reconcile_once`] every `verifyEvery` of the AuditRetention (re-read each round) until
/// `shutdown` resolves. Errors are logged and retried after a minute.
pub async fn run_retention(
    client: Client,
    witness: Witness,
    log: Arc<Mutex<Log>>,
    public_key: Vec<u8>,
    anchor: Option<Arc<Anchor>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let round =
            reconcile_anchored(&client, &witness, &log, &public_key, anchor.as_deref()).await;
        let wait = match round {
            Ok(Ok(v)) => {
                tracing::info!(entries = v.entries, heads = v.heads, "audit log verified");
                next_interval(&client, &witness).await
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "audit log verification failed");
                next_interval(&client, &witness).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention round failed; retrying in a minute");
                Duration::from_secs(60)
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn next_interval(client: &Client, witness: &Witness) -> Duration {
    Api::<AuditRetention>::namespaced(client.clone(), &witness.namespace)
        .get(&witness.name)
        .await
        .map(|r| Duration::from(r.spec.verify_every))
        .unwrap_or(Duration::from_secs(3600))
        .max(Duration::from_secs(60))
}
