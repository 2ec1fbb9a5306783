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
//! | `GET /v1/recordings/{sha256}` | a stored recording, for evidence readers |
//! | `GET /healthz`, `GET /readyz` | liveness, readiness |
//!
//! Each record is stored inside an envelope that binds it to the pod the API server vouched
//! for; a record that claims another namespace or pod than its token's is refused.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use portcullis_crds::audit::AuditRecord;
use portcullis_crds::audit_log::LogSigner;
use portcullis_crds::{AuditRetention, SignedTreeHead};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::{Authenticator, Source};
use crate::recordings::{is_sha256, RecordingError, RecordingStore, Stored, MAX_RECORDING_BYTES};
use crate::store::Log;
use crate::writer::Appender;

/// Largest request body (one batch of JSON lines).
pub const MAX_BATCH_BYTES: usize = 8 << 20;

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
        Self {
            appender: Appender::start(log.clone()),
            log,
            auth: Arc::new(Authenticator::new(client)),
            witness: None,
            recordings: Arc::new(RecordingStore::new(&data_dir)),
        }
    }

    /// Name the AuditRetention whose `evidence` subresource gates reading entries
    /// (`GET /v1/entries`); without it, entries cannot be read over the network.
    pub fn with_witness(mut self, witness: Witness) -> Self {
        self.witness = Some(witness);
        self
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/records", post(ingest))
            .route("/v1/sth", get(latest_head))
            .route("/v1/proofs/inclusion", get(inclusion))
            .route("/v1/proofs/consistency", get(consistency))
            .route("/v1/entries", get(entries))
            .route(
                "/v1/recordings/{sha256}",
                put(upload_recording).get(read_recording),
            )
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(|| async { "ok" }))
            .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES))
            .with_state(self.clone())
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

/// A person or tool allowed to read evidence (`get` on the `evidence` subresource of the
/// witness AuditRetention): the user name. Answers 404 when reading is not enabled, 401 or 403
/// otherwise.
async fn authorize_reader(svc: &AuditService, headers: &HeaderMap) -> Result<String, Response> {
    let Some(w) = &svc.witness else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "reading evidence is not enabled on this service",
        ));
    };
    svc.auth
        .authorize_reader(bearer(headers), &w.namespace, &w.name)
        .await
        .map_err(|e| match e {
            crate::auth::AuthError::Forbidden(m) => error(StatusCode::FORBIDDEN, m),
            e => error(StatusCode::UNAUTHORIZED, e.to_string()),
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
        let record: AuditRecord = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("line {}: not an audit record: {e}", i + 1),
                )
            }
        };
        if let Some(ns) = &record.identity.namespace {
            if ns != &source.namespace {
                return error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "line {}: record claims namespace {ns} but the token is of {}",
                        i + 1,
                        source.user
                    ),
                );
            }
        }
        if let (Some(pod), Some(token_pod)) = (&record.identity.pod, &source.pod) {
            if pod != token_pod {
                return error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "line {}: record claims pod {pod} but the token is bound to pod {token_pod}",
                        i + 1
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

async fn latest_head(State(svc): State<AuditService>) -> Response {
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
    let reader = match authorize_reader(&svc, &headers).await {
        Ok(u) => u,
        Err(refused) => return refused,
    };
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
    let (source, _) = match authenticate_sidecar(&svc, &headers).await {
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
    let bytes = content.len();
    let stored = tokio::task::spawn_blocking(move || store.put(&name, &content)).await;
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
async fn read_recording(
    State(svc): State<AuditService>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Response {
    let reader = match authorize_reader(&svc, &headers).await {
        Ok(u) => u,
        Err(refused) => return refused,
    };
    if let Some(refused) = bad_recording_name(&sha256) {
        return refused;
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
/// publish it into the witness AuditRetention's status. Runs until `shutdown` resolves.
pub async fn run_signer(
    log: Arc<Mutex<Log>>,
    signer: LogSigner,
    every: Duration,
    client: Option<Client>,
    witness: Option<Witness>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut last_signed: Option<u64> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(every) => {}
        }
        let signed = {
            let Ok(mut log) = log.lock() else {
                tracing::error!("audit log lock poisoned; signer stops");
                return;
            };
            if last_signed == Some(log.size()) {
                continue;
            }
            let now = u64::try_from(Timestamp::now().as_millisecond()).unwrap_or(0);
            let sth = signer.sign(&log.head(now));
            if let Err(e) = log.record_head(&sth) {
                tracing::error!(error = %e, "could not record a signed tree head");
                continue;
            }
            last_signed = Some(log.size());
            sth
        };
        if let (Some(client), Some(w)) = (&client, &witness) {
            if let Err(e) = publish(client, w, &signed).await {
                tracing::warn!(error = %e, retention = %w.name, "could not publish the signed tree head");
            }
        }
    }
}

/// Write a signed tree head into the status of the witness AuditRetention.
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
