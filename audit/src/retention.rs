//! Retention and scheduled verification, driven by an AuditRetention object.
//!
//! Records older than `retainFor` are pruned by whole segments (a segment goes once its newest
//! entry is older than the cut-off), never while `legalHold` is set; the pruned entries' leaf
//! hashes stay, so the log and every signed head still verify. Session recordings stored
//! before the cut-off go too, once no kept record names them. Every `verifyEvery` the whole
//! log is walked and checked against its own heads and the head the cluster witnessed in the
//! AuditRetention status; the result lands in the status (`Verified` condition, record count,
//! bytes, oldest record, last verification time) with an Event when it fails.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use portcullis_crds::conditions::{new_condition, set_condition, types};
use portcullis_crds::AuditRetention;
use serde::Deserialize;

use crate::bundle::recording_named;
use crate::recordings::RecordingStore;
use crate::segment::{read_segment, segment_files};
use crate::service::Witness;
use crate::store::{Log, StoreError};
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

/// Prune the segments whose newest entry is older than `now - retain_for`, unless
/// `legal_hold`. Returns the entries pruned.
pub fn enforce(
    log: &mut Log,
    retain_for: Duration,
    legal_hold: bool,
    now: Timestamp,
) -> Result<u64, StoreError> {
    if legal_hold {
        return Ok(0);
    }
    let cutoff = now - SignedDuration::try_from(retain_for).unwrap_or(SignedDuration::MAX);
    let segments = log.segments();
    let mut keep_from = None;
    // Never the open (last) segment.
    for (first, count, _) in segments.iter().take(segments.len().saturating_sub(1)) {
        let newest = match count.checked_sub(1) {
            Some(last) => log.entry(first + last)?.as_deref().and_then(received_at),
            None => None,
        };
        match newest {
            Some(t) if t < cutoff => keep_from = Some(first + count),
            _ => break,
        }
    }
    match keep_from {
        Some(k) => log.prune_before(k),
        None => Ok(0),
    }
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
    let api: Api<AuditRetention> = Api::namespaced(client.clone(), &witness.namespace);
    let retention = api.get(&witness.name).await.map_err(|e| e.to_string())?;
    let retain_for = parse_retain_for(&retention.spec.retain_for).ok_or_else(|| {
        format!(
            "retainFor {:?} is not NNNd or NNNh",
            retention.spec.retain_for
        )
    })?;
    let (dir, stats) = {
        let mut log = log.lock().map_err(|_| "log lock poisoned".to_owned())?;
        let pruned = enforce(
            &mut log,
            retain_for,
            retention.spec.legal_hold,
            Timestamp::now(),
        )
        .map_err(|e| e.to_string())?;
        if pruned > 0 {
            tracing::info!(pruned, "pruned audit records past retention");
        }
        (
            log.dir().to_path_buf(),
            stats(&log).map_err(|e| e.to_string())?,
        )
    };
    if !retention.spec.legal_hold {
        let cutoff = SystemTime::now()
            .checked_sub(retain_for)
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
    let result = tokio::task::spawn_blocking(move || verify_log(&dir, &key, &witnessed))
        .await
        .map_err(|e| e.to_string())?;

    let generation = retention.metadata.generation;
    let mut conditions = retention
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let verified = match &result {
        Ok(v) => new_condition(
            types::VERIFIED,
            true,
            "LogVerified",
            format!(
                "{} entries verified against {} signed tree heads",
                v.entries, v.heads
            ),
            generation,
        ),
        Err(e) => new_condition(
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
    Ok(result)
}

/// Run [`reconcile_once`] every `verifyEvery` of the AuditRetention (re-read each round) until
/// `shutdown` resolves. Errors are logged and retried after a minute.
pub async fn run_retention(
    client: Client,
    witness: Witness,
    log: Arc<Mutex<Log>>,
    public_key: Vec<u8>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let wait = match reconcile_once(&client, &witness, &log, &public_key).await {
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
