//! The audit service: an HTTPS ingest endpoint for sidecars, the signer that makes a signed tree
//! head every few seconds and publishes it into the AuditRetention status (so the cluster's own
//! state witnesses the log), and read-only endpoints for tree heads and proofs.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /v1/records` | JSON lines of `AuditRecord`s; bearer token = the sidecar's projected token (audience `portcullis-audit`). Answers once the batch is durable. |
//! | `GET /v1/sth` | the latest signed tree head |
//! | `GET /v1/proofs/inclusion?index=I&size=S` | audit path of entry I in the tree of size S |
//! | `GET /v1/proofs/consistency?old=M&size=S` | consistency proof between sizes M and S |
//! | `GET /v1/entries?from=F&to=T&treeSize=S` | entries with their audit paths, for evidence readers (`get auditretentions/evidence`) |
//! | `PUT /v1/recordings/{sha256}` | a session recording (asciicast v2, at most 64 MiB), same token as `POST /v1/records`; stored under its SHA-256, which must match the body |
//! | `GET /v1/recordings/{sha256}` | a stored recording, for evidence readers (404 when not stored, 410 when its content no longer matches its name) |
//! | `POST /v1/manifests` | sign an evidence bundle's manifest after recomputing its selection; a recording it lists as missing must not be stored |
//! | `GET /healthz`, `GET /readyz` | liveness, readiness |
//!
//! Each record is stored inside an envelope that binds it to the pod the API server vouched
//! for, with its workload identity filled from the token (see `attribution`): a record that
//! states another workload, a principal it may not name, or a recording its pod did not
//! upload is refused.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use kube::Resource;
use portcullis_crds::audit::{AuditRecord, MAX_RECORD_BYTES};
use portcullis_crds::audit_log::LogSigner;
use portcullis_crds::conditions::{new_condition, set_condition, types};
use portcullis_crds::{AuditRetention, SignedTreeHead};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::anchor::{Anchor, State as AnchorState, ACCEPT_ANNOTATION, DIVERGED_REASON};
use crate::attribution::{
    bind_workload, recording_of, AttributionError, Attributor, InjectionScope,
};
use crate::auth::{Authenticator, Source};
use crate::manifest::Manifest;
use crate::recordings::{is_sha256, RecordingError, RecordingStore, Stored, MAX_RECORDING_BYTES};
use crate::store::Log;
use crate::writer::Appender;

/// Largest request body (one batch of JSON lines).
pub const MAX_BATCH_BYTES: usize = 8 << 20;
/// How long a batch waits for the anchor on start before it is refused (retry later).
pub const ANCHOR_WAIT: Duration = Duration::from_secs(10);

/// Where the signer publishes tree heads.
#[derive(Clone, Debug)]
pub struct Witness {
    /// Namespace of the AuditRetention.
    pub namespace: String,
    /// Name of the AuditRetention.
    pub name: String,
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AuditService {
    log: Arc<Mutex<Log>>,
    appender: Appender,
    auth: Arc<Authenticator>,
    witness: Option<Witness>,
    recordings: Arc<RecordingStore>,
    attributor: Arc<Attributor>,
    anchor: Option<Arc<Anchor>>,
    registry: prometheus::Registry,
    manifest_signer: Option<Arc<LogSigner>>,
}

/// An entry as stored in the log: the sidecar's record and who sent it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// Idempotency key: the sending pod's UID, the record's session and its sequence number.
    /// The session id is unique per sidecar process, so a sidecar restarted in the same pod,
    /// whose sequence numbers start again, never collides with what it sent before.
    pub id: String,
    /// When the service received the record.
    pub received_at: String,
    /// The workload the API server authenticated.
    pub source: Source,
    /// The record as the sidecar wrote it.
    pub record: AuditRecord,
}

/// Answer to a batch.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct BatchAck {
    /// Sequence numbers of the records now durable (resent ones included).
    pub acknowledged: Vec<u64>,
    /// Their log indexes.
    pub indexes: Vec<u64>,
    /// Size of the log after the batch.
    pub tree_size: u64,
}

/// A proof.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ProofResponse {
    /// Tree size the proof is for.
    pub tree_size: u64,
    /// Hashes, hex, in verification order.
    pub hashes: Vec<String>,
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

impl AuditService {
    /// A service over an open log. Recordings are stored in the log's directory, under
    /// `recordings/`.
    pub fn new(client: Client, log: Arc<Mutex<Log>>) -> Self {
        let data_dir = match log.lock() {
            Ok(l) => l.dir().to_path_buf(),
            Err(poisoned) => poisoned.into_inner().dir().to_path_buf(),
        };
        let attributor = Attributor::new(Some(client.clone()));
        remember_sessions(&data_dir, &attributor);
        Self {
            appender: Appender::start(log.clone()),
            log,
            auth: Arc::new(Authenticator::new(client)),
            witness: None,
            recordings: Arc::new(RecordingStore::new(&data_dir)),
            attributor: Arc::new(attributor),
            anchor: None,
            registry: prometheus::Registry::new(),
            manifest_signer: None,
        }
    }

    /// Name the AuditRetention whose `evidence` subresource gates reading entries
    /// (`GET /v1/entries`); without it, entries cannot be read over the network.
    pub fn with_witness(mut self, witness: Witness) -> Self {
        self.witness = Some(witness);
        self
    }

    /// Sign evidence bundle manifests (`POST /v1/manifests`) with the log's key.
    pub fn with_manifest_signer(mut self, signer: LogSigner) -> Self {
        self.manifest_signer = Some(Arc::new(signer));
        self
    }

    /// Refuse tree heads and evidence while `anchor` says the log does not extend the
    /// witnessed head, and export its gauge on `GET /metrics`.
    pub fn with_anchor(mut self, anchor: Arc<Anchor>) -> Self {
        if let Err(e) = self.registry.register(Box::new(anchor.gauge())) {
            tracing::warn!(error = %e, "witness gauge not registered");
        }
        self.anchor = Some(anchor);
        self
    }

    /// Cover the log up to `end` with a signed head kept in the head file before a batch is
    /// acknowledged (waiting up to [`ANCHOR_WAIT`] for the anchor on start). Without a
    /// signing key or anchor nothing is signed here; while the log does not extend its
    /// anchor nothing can be signed, and ingest goes on (the divergence is already a lasting
    /// failure that stops evidence).
    async fn sign_acknowledged(&self, end: u64) -> Result<(), String> {
        let (Some(anchor), Some(signer)) = (self.anchor.clone(), self.manifest_signer.clone())
        else {
            return Ok(());
        };
        let started = Instant::now();
        while matches!(anchor.state(), AnchorState::Unknown) {
            if started.elapsed() > ANCHOR_WAIT {
                return Err(
                    "the log is not yet compared with its witnessed head: retry later".into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            let log = log.lock().map_err(|_| "log lock poisoned".to_owned())?;
            match anchor.state() {
                AnchorState::Diverged { .. } => return Ok(()),
                AnchorState::Anchored(Some(h)) if h.tree_size >= end => return Ok(()),
                _ => {}
            }
            sign_head(&log, &signer, &anchor).map(|_| ())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Trust a pod's sidecar to name a person only in the namespaces `scope` selects (those
    /// the injection webhook guards); by default those labelled `portcullis.dev/inject:
    /// enabled`.
    pub fn with_injection_scope(self, scope: InjectionScope) -> Self {
        self.attributor.set_scope(scope);
        self
    }

    /// The refusal while the log does not extend the witnessed head.
    fn refuse_if_diverged(&self) -> Option<Response> {
        let reason = self.anchor.as_ref()?.diverged()?;
        Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{DIVERGED_REASON}: {reason}; nothing is exported as verified until a person accepts the log (annotation {ACCEPT_ANNOTATION})"),
        ))
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/records", post(ingest))
            .route("/v1/sth", get(latest_head))
            .route("/v1/proofs/inclusion", get(inclusion))
            .route("/v1/proofs/consistency", get(consistency))
            .route("/v1/entries", get(entries))
            .route("/v1/manifests", post(sign_manifest))
            .route(
                "/v1/recordings/{sha256}",
                put(upload_recording).get(read_recording),
            )
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(|| async { "ok" }))
            .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES))
            .with_state(self.clone())
    }
}

/// Rebuild the principal each stored session began with, from the log's segments.
fn remember_sessions(data_dir: &std::path::Path, attributor: &Attributor) {
    let seg_dir = data_dir.join("segments");
    let Ok(files) = crate::segment::segment_files(&seg_dir) else {
        return;
    };
    for (first, path) in files {
        let Ok((read, _)) = crate::segment::read_segment(&path, first) else {
            tracing::warn!(segment = %path.display(), "sessions of an unreadable segment not rebuilt");
            continue;
        };
        for bytes in &read.entries {
            if let Ok(entry) = serde_json::from_slice::<LogEntry>(bytes) {
                if let Some(uid) = &entry.source.pod_uid {
                    attributor.remember(uid, &entry.record);
                }
            }
        }
    }
}

fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// A sidecar: the workload of a pod-bound projected token (audience `portcullis-audit`), and
/// the UID of its pod. Answers 401 or 403 otherwise.
async fn authenticate_sidecar(
    svc: &AuditService,
    headers: &HeaderMap,
) -> Result<(Source, String), Response> {
    let source = svc
        .auth
        .authenticate(bearer(headers))
        .await
        .map_err(|e| error(StatusCode::UNAUTHORIZED, e.to_string()))?;
    let Some(pod_uid) = source.pod_uid.clone() else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "token is not bound to a pod: send the pod's projected service-account token",
        ));
    };
    Ok((source, pod_uid))
}

/// A person or tool allowed to read evidence of `namespaces` (`None`: the whole log, which
/// needs a cluster-wide binding): the user name. Answers 404 when reading is not enabled, 401
/// or 403 otherwise.
async fn authorize_reader(
    svc: &AuditService,
    headers: &HeaderMap,
    namespaces: Option<&[String]>,
) -> Result<String, Response> {
    if svc.witness.is_none() {
        return Err(error(
            StatusCode::NOT_FOUND,
            "reading evidence is not enabled on this service",
        ));
    }
    svc.auth
        .authorize_reader(bearer(headers), namespaces)
        .await
        .map_err(|e| match e {
            crate::auth::AuthError::Forbidden(m) => error(StatusCode::FORBIDDEN, m),
            e => error(StatusCode::UNAUTHORIZED, e.to_string()),
        })
}

/// The namespaces of a `namespaces=a,b` query parameter (`None`: the whole log).
fn namespace_list(q: &Option<String>) -> Option<Vec<String>> {
    q.as_ref().map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

async fn ingest(State(svc): State<AuditService>, headers: HeaderMap, body: Bytes) -> Response {
    let (source, pod_uid) = match authenticate_sidecar(&svc, &headers).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t,
        Err(_) => return error(StatusCode::BAD_REQUEST, "body is not UTF-8 JSON lines"),
    };
    let received_at = format!("{:.6}", Timestamp::now());
    let mut entries = Vec::new();
    let mut seqs = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        if line.len() > MAX_RECORD_BYTES {
            let seq = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["seq"].as_u64())
                .map(|s| format!(" (seq {s})"))
                .unwrap_or_default();
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "line {}{seq}: a record of {} bytes exceeds the limit of {MAX_RECORD_BYTES} bytes; send a stand-in (oversize) record naming its hash and size",
                    i + 1,
                    line.len()
                ),
            );
        }
        let record: AuditRecord = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("line {}: not an audit record: {e}", i + 1),
                )
            }
        };
        let mut record = record;
        if let Err(e) = bind_workload(&mut record, &source) {
            return error(StatusCode::FORBIDDEN, format!("line {}: {e}", i + 1));
        }
        if let Err(e) = svc
            .attributor
            .check_principal(&source, &pod_uid, &record)
            .await
        {
            let status = if e.retry_later() {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::FORBIDDEN
            };
            return error(status, format!("line {}: {e}", i + 1));
        }
        if let Some(sha256) = recording_of(&record) {
            if !svc.recordings.sent_by(sha256, &pod_uid) {
                return error(
                    StatusCode::CONFLICT,
                    format!(
                        "line {}: {}",
                        i + 1,
                        AttributionError::RecordingNotUploaded(sha256.to_owned())
                    ),
                );
            }
        }
        seqs.push(record.seq);
        let entry = LogEntry {
            id: format!("{pod_uid}:{}:{}", record.session_id, record.seq),
            received_at: received_at.clone(),
            source: source.clone(),
            record,
        };
        match serde_json::to_vec(&entry) {
            Ok(bytes) => entries.push(bytes),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    match svc.appender.append(entries).await {
        Ok(indexes) => {
            let tree_size = svc.log.lock().map(|l| l.size()).unwrap_or(0);
            // Acknowledged only once under a signed head kept outside the data directory:
            // the sidecar drops what is acknowledged, so nothing acknowledged may be left for
            // the holder of the volume to roll back unnoticed.
            let end = indexes.iter().max().map_or(0, |i| i + 1);
            if let Err(e) = svc.sign_acknowledged(end).await {
                return error(StatusCode::SERVICE_UNAVAILABLE, e);
            }
            Json(BatchAck {
                acknowledged: seqs,
                indexes,
                tree_size,
            })
            .into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn metrics(State(svc): State<AuditService>) -> Response {
    use prometheus::Encoder;
    let mut out = Vec::new();
    match prometheus::TextEncoder::new().encode(&svc.registry.gather(), &mut out) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            out,
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn latest_head(State(svc): State<AuditService>) -> Response {
    if let Some(refused) = svc.refuse_if_diverged() {
        return refused;
    }
    let head = svc.log.lock().ok().and_then(|l| l.heads().last().cloned());
    match head {
        Some(h) => Json(h).into_response(),
        None => error(StatusCode::NOT_FOUND, "no signed tree head yet"),
    }
}

#[derive(Deserialize)]
struct InclusionQuery {
    index: u64,
    size: u64,
}

async fn inclusion(State(svc): State<AuditService>, Query(q): Query<InclusionQuery>) -> Response {
    let proof = svc
        .log
        .lock()
        .ok()
        .and_then(|l| l.inclusion_proof(q.index, q.size));
    proof_response(q.size, proof, || {
        format!("no entry {} in a tree of size {}", q.index, q.size)
    })
}

#[derive(Deserialize)]
struct ConsistencyQuery {
    old: u64,
    size: u64,
}

async fn consistency(
    State(svc): State<AuditService>,
    Query(q): Query<ConsistencyQuery>,
) -> Response {
    let proof = svc
        .log
        .lock()
        .ok()
        .and_then(|l| l.consistency_proof(q.old, q.size));
    proof_response(q.size, proof, || {
        format!(
            "no consistency proof from size {} to size {}",
            q.old, q.size
        )
    })
}

fn proof_response(
    tree_size: u64,
    proof: Option<Vec<portcullis_crds::audit_log::Hash>>,
    missing: impl FnOnce() -> String,
) -> Response {
    match proof {
        Some(p) => Json(ProofResponse {
            tree_size,
            hashes: p.iter().map(hex::encode).collect(),
        })
        .into_response(),
        None => error(StatusCode::BAD_REQUEST, missing()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntriesQuery {
    from: u64,
    to: u64,
    tree_size: u64,
    /// Only entries sent from these namespaces (comma-separated); omitted: the whole log.
    #[serde(default)]
    namespaces: Option<String>,
}

/// Most entries returned by one `GET /v1/entries`.
pub const MAX_ENTRIES_PER_READ: u64 = 10_000;

/// One line of `GET /v1/entries`: the entry byte for byte, with its audit path.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct EntryLine {
    /// Log index.
    pub index: u64,
    /// Audit path to the tree of the requested size, hex.
    pub proof: Vec<String>,
    /// The stored entry, unchanged.
    pub entry: Box<serde_json::value::RawValue>,
}

async fn entries(
    State(svc): State<AuditService>,
    headers: HeaderMap,
    Query(q): Query<EntriesQuery>,
) -> Response {
    let namespaces = namespace_list(&q.namespaces);
    let reader = match authorize_reader(&svc, &headers, namespaces.as_deref()).await {
        Ok(u) => u,
        Err(refused) => return refused,
    };
    if let Some(refused) = svc.refuse_if_diverged() {
        return refused;
    }
    if q.to < q.from || q.to - q.from > MAX_ENTRIES_PER_READ {
        return error(
            StatusCode::BAD_REQUEST,
            format!("ask for at most {MAX_ENTRIES_PER_READ} entries, from <= to"),
        );
    }
    let Ok(log) = svc.log.lock() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "log lock poisoned");
    };
    if q.tree_size > log.size() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("the log holds {} entries, not {}", log.size(), q.tree_size),
        );
    }
    let mut out = Vec::new();
    for index in q.from.max(log.pruned())..q.to.min(q.tree_size) {
        let entry = match log.entry(index) {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
        if let Some(list) = &namespaces {
            let ns = serde_json::from_slice::<serde_json::Value>(&entry)
                .ok()
                .and_then(|v| v["source"]["namespace"].as_str().map(str::to_owned));
            if !ns.is_some_and(|ns| list.contains(&ns)) {
                continue;
            }
        }
        let Ok(raw) =
            serde_json::value::RawValue::from_string(String::from_utf8_lossy(&entry).into_owned())
        else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("entry {index} is not JSON"),
            );
        };
        let proof = log
            .inclusion_proof(index, q.tree_size)
            .unwrap_or_default()
            .iter()
            .map(hex::encode)
            .collect();
        let line = EntryLine {
            index,
            proof,
            entry: raw,
        };
        if serde_json::to_writer(&mut out, &line).is_err() {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "serialization failed");
        }
        out.push(b'\n');
    }
    tracing::info!(reader = %reader, from = q.from, to = q.to, "evidence read");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        out,
    )
        .into_response()
}

/// `POST /v1/manifests`: sign the manifest of an evidence bundle after recomputing its
/// selection over the log and checking that every recording it lists as missing is indeed not
/// stored (or damaged). The reader must be allowed to read every namespace it selects (the
/// whole log when it names none).
async fn sign_manifest(
    State(svc): State<AuditService>,
    headers: HeaderMap,
    Json(mut manifest): Json<Manifest>,
) -> Response {
    let reader =
        match authorize_reader(&svc, &headers, manifest.selection.namespaces.as_deref()).await {
            Ok(u) => u,
            Err(refused) => return refused,
        };
    if let Some(refused) = svc.refuse_if_diverged() {
        return refused;
    }
    let Some(signer) = svc.manifest_signer.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "signing evidence manifests is not enabled on this service",
        );
    };
    let log = svc.log.clone();
    let recordings = svc.recordings.clone();
    let anchor = svc.anchor.clone();
    let checked = tokio::task::spawn_blocking(move || -> Result<Manifest, (StatusCode, String)> {
        let bad = |m: String| (StatusCode::CONFLICT, m);
        let head = portcullis_crds::audit_log::verify_tree_head(&manifest.sth, signer.public_key())
            .map_err(|e| bad(format!("sth: {e}")))?;
        let log = log.lock().map_err(|_| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "log lock poisoned".to_owned(),
            )
        })?;
        // Entries gone without a signed prune entry: the log was pruned by hand on its volume.
        let retired = match &anchor {
            Some(a) => a.before_export(&log),
            None => crate::anchor::pruned_retired(&log, head.tree_size).map_err(|d| d.to_string()),
        };
        if let Err(reason) = retired {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!("evidence is refused: {reason}"),
            ));
        }
        if log.root_at(head.tree_size) != Some(head.root_hash) {
            return Err(bad(format!(
                "the signed tree head of size {} is not a head of this log",
                head.tree_size
            )));
        }
        if manifest.selection.to_index > head.tree_size
            || manifest.selection.from_index > manifest.selection.to_index
        {
            return Err(bad("the selection is not a range of the signed head".into()));
        }
        let mut expected = Vec::new();
        for index in manifest.selection.from_index.max(log.pruned())..manifest.selection.to_index {
            let entry = match log.entry(index) {
                Ok(Some(e)) => e,
                Ok(None) => continue,
                Err(e) => return Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
            };
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&entry) else {
                continue;
            };
            if manifest.selection.matches(&value) {
                expected.push(index);
            }
        }
        if expected != manifest.indexes {
            let missing = expected.iter().find(|i| !manifest.indexes.contains(i));
            let extra = manifest.indexes.iter().find(|i| !expected.contains(i));
            return Err(bad(format!(
                "the selection holds {} records, the manifest names {}{}{}",
                expected.len(),
                manifest.indexes.len(),
                missing
                    .map(|i| format!("; log index {i} is missing"))
                    .unwrap_or_default(),
                extra
                    .map(|i| format!("; log index {i} is not selected"))
                    .unwrap_or_default(),
            )));
        }
        // A recording listed as missing must really be unavailable: a reader cannot leave out
        // a recording the log holds by calling it missing.
        for m in &manifest.missing_recordings {
            if let Ok(Some(_)) = recordings.get(&m.sha256) {
                return Err(bad(format!(
                    "recording {} is stored: put it in the bundle instead of listing it as missing",
                    m.sha256
                )));
            }
        }
        manifest.first_kept = log.pruned();
        Ok(manifest)
    })
    .await;
    let mut manifest = match checked {
        Ok(Ok(m)) => m,
        Ok(Err((status, m))) => return error(status, m),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    manifest.exported_by = reader.clone();
    manifest.exported_at = format!("{:.3}", Timestamp::now());
    let Some(signer) = svc.manifest_signer.as_deref() else {
        return error(
            StatusCode::NOT_FOUND,
            "signing evidence manifests is not enabled",
        );
    };
    match crate::manifest::sign_manifest(signer, &manifest) {
        Ok(signed) => {
            tracing::info!(reader = %reader, records = manifest.indexes.len(), "evidence manifest signed");
            Json(signed).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn recording_error(e: RecordingError) -> Response {
    match e {
        RecordingError::BadName(_) | RecordingError::Mismatch { .. } => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        RecordingError::Damaged(_) | RecordingError::Io { .. } => {
            tracing::error!(error = %e, "recording storage failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// The refusal of a recording name that is not a SHA-256 in lowercase hex.
fn bad_recording_name(sha256: &str) -> Option<Response> {
    (!is_sha256(sha256)).then(|| recording_error(RecordingError::BadName(sha256.to_owned())))
}

/// `PUT /v1/recordings/{sha256}`: the sender is authenticated before the body is read.
async fn upload_recording(
    State(svc): State<AuditService>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (source, pod_uid) = match authenticate_sidecar(&svc, &headers).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    if let Some(refused) = bad_recording_name(&sha256) {
        return refused;
    }
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a recording may hold at most {MAX_RECORDING_BYTES} bytes"),
        )
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_RECORDING_BYTES as u64) {
        return too_large();
    }
    let content = match axum::body::to_bytes(body, MAX_RECORDING_BYTES).await {
        Ok(c) => c,
        Err(e) => {
            let length_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if length_limit {
                return too_large();
            }
            return error(
                StatusCode::BAD_REQUEST,
                format!("could not read the body: {e}"),
            );
        }
    };
    let store = svc.recordings.clone();
    let name = sha256.clone();
    let namespace = source.namespace.clone();
    let bytes = content.len();
    let stored = tokio::task::spawn_blocking(move || {
        let outcome = store.put(&name, &content)?;
        store.mark_sender(&name, &pod_uid, &namespace)?;
        Ok::<_, RecordingError>(outcome)
    })
    .await;
    match stored {
        Ok(Ok(outcome)) => {
            tracing::info!(
                sha256 = %sha256,
                bytes,
                source = %source.user,
                pod = source.pod.as_deref().unwrap_or("-"),
                already_present = outcome == Stored::AlreadyPresent,
                "recording stored"
            );
            let status = match outcome {
                Stored::Created => StatusCode::CREATED,
                Stored::AlreadyPresent => StatusCode::OK,
            };
            (
                status,
                Json(serde_json::json!({"sha256": sha256, "bytes": bytes})),
            )
                .into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(sha256 = %sha256, source = %source.user, error = %e, "recording refused");
            recording_error(e)
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /v1/recordings/{sha256}`, authorized like `GET /v1/entries`.
#[derive(Deserialize)]
struct RecordingQuery {
    /// The namespace the reader reads in; omitted: the whole log.
    #[serde(default)]
    namespace: Option<String>,
}

async fn read_recording(
    State(svc): State<AuditService>,
    Path(sha256): Path<String>,
    Query(q): Query<RecordingQuery>,
    headers: HeaderMap,
) -> Response {
    let scope = q.namespace.clone().map(|n| vec![n]);
    let reader = match authorize_reader(&svc, &headers, scope.as_deref()).await {
        Ok(u) => u,
        Err(refused) => return refused,
    };
    if let Some(refused) = bad_recording_name(&sha256) {
        return refused;
    }
    if let Some(ns) = &q.namespace {
        if !svc.recordings.sender_namespaces(&sha256).contains(ns) {
            return error(
                StatusCode::NOT_FOUND,
                format!("no recording {sha256} was sent from namespace {ns}"),
            );
        }
    }
    let store = svc.recordings.clone();
    let name = sha256.clone();
    match tokio::task::spawn_blocking(move || store.get(&name)).await {
        Ok(Ok(Some(content))) => {
            tracing::info!(reader = %reader, sha256 = %sha256, "recording read");
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-asciicast")],
                content,
            )
                .into_response()
        }
        Ok(Ok(None)) => error(
            StatusCode::NOT_FOUND,
            format!("no recording {sha256} is stored"),
        ),
        // Stored, but its content no longer hashes to its name: lost, as an export says.
        Ok(Err(e @ RecordingError::Damaged(_))) => {
            tracing::error!(error = %e, "recording damaged on the volume");
            error(StatusCode::GONE, e.to_string())
        }
        Ok(Err(e)) => recording_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Serve `router` over TLS on `listener` until `shutdown` resolves.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Sign a tree head whenever the log grew (checked every `every`), record it with the log and
/// publish it into the witness AuditRetention's status. Runs until `shutdown` resolves. The
/// log is anchored on the witnessed head (see [`run_anchored_signer`]); its head file is not
/// kept.
pub async fn run_signer(
    log: Arc<Mutex<Log>>,
    signer: LogSigner,
    every: Duration,
    client: Option<Client>,
    witness: Option<Witness>,
    shutdown: impl Future<Output = ()>,
) {
    let anchor = match Anchor::new(signer.public_key(), None) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            tracing::error!(error = %e, "signer cannot start");
            return;
        }
    };
    run_anchored_signer(log, signer, every, client, witness, anchor, shutdown).await
}

/// Sign and publish tree heads, each only after proving that the log extends the anchor (the
/// witnessed head, or the last signed one): on start the anchor is established from the
/// witness status and the head file; while the log does not extend it, nothing is signed or
/// published and the status says so until a person accepts the log (see `anchor`). The
/// witness status is written with optimistic concurrency (its resourceVersion) and never
/// replaced by a smaller head or one its log does not extend.
pub async fn run_anchored_signer(
    log: Arc<Mutex<Log>>,
    signer: LogSigner,
    every: Duration,
    client: Option<Client>,
    witness: Option<Witness>,
    anchor: Arc<Anchor>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let witness_api = match (&client, &witness) {
        (Some(c), Some(w)) => Some((
            c.clone(),
            w.clone(),
            Api::<AuditRetention>::namespaced(c.clone(), &w.namespace),
        )),
        _ => None,
    };
    let mut last_signed: Option<u64> = None;
    let mut unpublished: Option<SignedTreeHead> = None;
    let mut reported_divergence: Option<String> = None;
    let mut first = true;
    loop {
        // The first round at once: ingest waits for the anchor before acknowledging.
        let wait = if first { Duration::ZERO } else { every };
        first = false;
        tokio::select! {
            _ = &mut shutdown => {
                sign_at_shutdown(&log, &signer, &anchor);
                return;
            }
            _ = tokio::time::sleep(wait) => {}
        }
        // Read the witness once a round: the anchor on start, a person's acceptance while
        // diverged, and what publishing must extend.
        let witnessed = match &witness_api {
            Some((_, w, api)) => match api.get(&w.name).await {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, retention = %w.name, "could not read the witness");
                    continue;
                }
            },
            None => None,
        };
        let witnessed_head = witnessed
            .as_ref()
            .and_then(|r| r.status.as_ref())
            .and_then(|s| s.latest_signed_tree_head.clone());
        match anchor.state() {
            AnchorState::Unknown => {
                let Ok(l) = log.lock() else { return };
                anchor.establish(&l, witnessed_head.as_ref());
            }
            AnchorState::Diverged { .. } => {
                let value = witnessed.as_ref().and_then(|r| {
                    r.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(ACCEPT_ANNOTATION).cloned())
                });
                if let Some(value) = value {
                    accept_log(&log, &anchor, &value).await;
                }
            }
            AnchorState::Anchored(_) => {}
        }
        if let (Some(reason), Some((client, w, api))) = (anchor.diverged(), &witness_api) {
            if reported_divergence.as_ref() != Some(&reason) {
                let value = match (anchor.state(), log.lock()) {
                    (AnchorState::Diverged { witnessed, .. }, Ok(l)) => {
                        Anchor::accept_value(witnessed.as_ref(), &l)
                    }
                    _ => String::new(),
                };
                if report_divergence(client, w, api, &reason, &value)
                    .await
                    .is_ok()
                {
                    reported_divergence = Some(reason);
                }
            }
            continue;
        }
        reported_divergence = None;
        let signed = {
            let Ok(mut log) = log.lock() else {
                tracing::error!("audit log lock poisoned; signer stops");
                return;
            };
            if last_signed == Some(log.size()) {
                None
            } else {
                let sth = match sign_head(&log, &signer, &anchor) {
                    Ok(sth) => sth,
                    Err(reason) => {
                        tracing::error!(%reason, "not signing: the log does not extend its anchor");
                        continue;
                    }
                };
                if let Err(e) = log.record_head(&sth) {
                    tracing::error!(error = %e, "could not record a signed tree head");
                    continue;
                }
                last_signed = Some(log.size());
                Some(sth)
            }
        };
        if let Some(sth) = signed {
            unpublished = Some(sth);
        }
        let (Some(sth), Some((_, w, api))) = (unpublished.clone(), &witness_api) else {
            continue;
        };
        let Some(current) = witnessed else { continue };
        match publish_extending(api, current, &sth, &log, &anchor).await {
            Ok(()) => unpublished = None,
            Err(e) => {
                tracing::warn!(error = %e, retention = %w.name, "signed tree head not published yet")
            }
        }
    }
}

/// At shutdown: cover whatever the log holds beyond the anchor with a signed head.
fn sign_at_shutdown(log: &Mutex<Log>, signer: &LogSigner, anchor: &Anchor) {
    let Ok(mut log) = log.lock() else { return };
    let AnchorState::Anchored(h) = anchor.state() else {
        return;
    };
    if h.is_some_and(|h| h.tree_size >= log.size()) || log.size() == 0 {
        return;
    }
    match sign_head(&log, signer, anchor) {
        Ok(sth) => {
            if let Err(e) = log.record_head(&sth) {
                tracing::error!(error = %e, "could not record the signed tree head at shutdown");
            }
            tracing::info!(size = sth.tree_size, "signed tree head at shutdown");
        }
        Err(e) => tracing::error!(error = %e, "no signed tree head at shutdown"),
    }
}

/// Sign the log's head after proving it extends the anchor, and keep it as the new anchor
/// (in the head file, synced, when there is one).
pub fn sign_head(log: &Log, signer: &LogSigner, anchor: &Anchor) -> Result<SignedTreeHead, String> {
    anchor.before_signing(log)?;
    let now = u64::try_from(Timestamp::now().as_millisecond()).unwrap_or(0);
    let sth = signer.sign(&log.head(now));
    anchor.signed(&sth)?;
    Ok(sth)
}

/// A person's acceptance of the log as it is: the anchor moves, and the log records it.
async fn accept_log(log: &Arc<Mutex<Log>>, anchor: &Anchor, value: &str) {
    let Ok(mut l) = log.lock() else { return };
    let Some((given_up, accepted)) = anchor.accept(&l, value) else {
        return;
    };
    let entry = serde_json::json!({
        "id": format!("witness-reset:{}:{}", accepted.tree_size, hex::encode(accepted.root_hash)),
        "receivedAt": format!("{:.6}", Timestamp::now()),
        "witnessReset": {
            "givenUp": given_up.map(|h| serde_json::json!({
                "treeSize": h.tree_size, "rootHash": hex::encode(h.root_hash)
            })),
            "accepted": {"treeSize": accepted.tree_size, "rootHash": hex::encode(accepted.root_hash)},
            "annotation": ACCEPT_ANNOTATION,
        }
    });
    match serde_json::to_vec(&entry).map(|e| l.append(&[e])) {
        Ok(Ok(_)) => {
            tracing::warn!(
                size = accepted.tree_size,
                "a person accepted the log as the new anchor"
            )
        }
        Ok(Err(e)) => tracing::error!(error = %e, "could not record the accepted log"),
        Err(e) => tracing::error!(error = %e, "could not record the accepted log"),
    }
    anchor.give_up(given_up);
}

/// Why a head was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The API server refused or was unreachable (409: someone else wrote first).
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The witness holds a head this head does not extend.
    #[error("{0}")]
    NotExtending(String),
}

/// Write `sth` into the status of the witness object `current` (as read, with its
/// resourceVersion), after checking that the log extends the head it holds and that `sth` is
/// not smaller. A concurrent write makes the API server answer 409 and nothing is written.
pub async fn publish_extending(
    api: &Api<AuditRetention>,
    mut current: AuditRetention,
    sth: &SignedTreeHead,
    log: &Arc<Mutex<Log>>,
    anchor: &Anchor,
) -> Result<(), PublishError> {
    let witnessed = current
        .status
        .as_ref()
        .and_then(|s| s.latest_signed_tree_head.clone());
    if let Some(w) = witnessed.as_ref().filter(|w| !anchor.given_up_matches(w)) {
        if w == sth {
            return Ok(());
        }
        if w.tree_size > sth.tree_size {
            return Err(PublishError::NotExtending(format!(
                "the witness holds a head of size {}, larger than {}",
                w.tree_size, sth.tree_size
            )));
        }
        {
            let checked = anchor.check_witnessed(w).and_then(|head| {
                let l = log.lock().map_err(|_| crate::anchor::Divergence::BadHead {
                    which: "witnessed",
                    size: w.tree_size,
                    reason: "log lock poisoned".into(),
                })?;
                crate::anchor::log_extends(&l, &head, "witnessed").map(|_| head)
            });
            if let Err(d) = checked {
                let reason = d.to_string();
                let head = anchor.check_witnessed(w).ok();
                anchor.diverge(d, head);
                return Err(PublishError::NotExtending(reason));
            }
        }
    }
    let status = current.status.get_or_insert_with(Default::default);
    status.latest_signed_tree_head = Some(sth.clone());
    status.record_count = sth.tree_size;
    let name = current.metadata.name.clone().unwrap_or_default();
    api.replace_status(&name, &PostParams::default(), &current)
        .await?;
    anchor.give_up(None);
    Ok(())
}

/// Set `Verified=False` (reason [`DIVERGED_REASON`]) and write a Warning Event.
async fn report_divergence(
    client: &Client,
    w: &Witness,
    api: &Api<AuditRetention>,
    reason: &str,
    accept_value: &str,
) -> Result<(), kube::Error> {
    let message = format!(
        "{reason}. Signing and evidence export are stopped; new records are still stored. \
         When a person has established what happened and accepts the log as it is, annotate this \
         AuditRetention with {ACCEPT_ANNOTATION}={accept_value}"
    );
    let current = api.get(&w.name).await?;
    let mut conditions = current
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    set_condition(
        &mut conditions,
        new_condition(
            types::VERIFIED,
            false,
            DIVERGED_REASON,
            message.clone(),
            current.metadata.generation,
        ),
    );
    api.patch_status(
        &w.name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"conditions": conditions}})),
    )
    .await?;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "portcullis-audit".into(),
            instance: None,
        },
    );
    let _ = recorder
        .publish(
            &Event {
                type_: EventType::Warning,
                reason: DIVERGED_REASON.into(),
                note: Some(message.chars().take(1000).collect()),
                action: "Anchor".into(),
                secondary: None,
            },
            &current.object_ref(&()),
        )
        .await;
    Ok(())
}

/// Write a signed tree head into the status of the witness AuditRetention, unconditionally.
/// For tests and tools that set up a witness; the service itself uses [`publish_extending`].
pub async fn publish(
    client: &Client,
    w: &Witness,
    sth: &SignedTreeHead,
) -> Result<(), kube::Error> {
    let api: Api<AuditRetention> = Api::namespaced(client.clone(), &w.namespace);
    let patch = serde_json::json!({
        "status": {
            "latestSignedTreeHead": sth,
            "recordCount": sth.tree_size,
        }
    });
    api.patch_status(
        &w.name,
        &PatchParams::apply("portcullis-audit").force(),
        &Patch::Apply(serde_json::json!({
            "apiVersion": "portcullis.dev/v1alpha1",
            "kind": "AuditRetention",
            "status": patch["status"],
        })),
    )
    .await
    .map(|_| ())
}
