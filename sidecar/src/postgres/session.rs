//! One client session: start-up, the upstream connection, then both directions of the relay.
//!
//! Client to server, every Query and Parse is analysed and decided before it is forwarded;
//! the audit record of each statement is queued at once and made durable before the bytes
//! that carry the statement leave for the server (one wait per flush, so pipelined messages
//! share one fsync). A refused statement is replaced by a stand-in statement that the server
//! rejects with a syntax error naming a per-session token; the result path swaps that error
//! for the refusal. The refusal therefore reaches the client in protocol order, the server
//! skips the rest of the batch exactly as after a real error, and the session stays usable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::BytesMut;
use portcullis_crds::audit::{
    AuditEvent, AuthenticationRefused, Decision, Protocol, RuleRef, SessionEnd, SessionStart,
    StatementRecord,
};
use rand::Rng;
use tokio::io::{AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::auth;
use super::codec::{self, put_error, put_message, Fields, Message, ProtocolError, Read};
use super::results::{
    Describe, Inflight, InflightMasking, Marker, ResultPath, Tracker, SQLSTATE_REFUSED,
};
use super::startup::{self, Hello};
use super::upstream::{UpstreamError, UpstreamStream};
use crate::approval::justification_from_options;
use crate::audit::spool::RecordContext;
use crate::identity::{expiry, SQLSTATE_AUTH};
use crate::masking::engine::{bind_result_formats, SessionMasking, StatementPlan};
use crate::policy::analyze::{kind_name, Analysis, Effect, StatementFacts};
use crate::policy::fingerprint;
use crate::policy::guardrails::{Guardrails, RowLimit, Verdict, BUILTIN_POLICY};
use crate::policy::names::{PathChange, SearchPath};
use crate::policy::row_sources::RowSources;
use crate::runtime::Resource;

mod cursors;
mod hold;
mod names;

/// Readers of client messages that the session keeps to itself, reachable for the fuzz
/// targets.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::hold::bound_values;
}

use cursors::{CursorChange, Cursors, PortalRows};
use names::{NameChange, Statements};

/// Flush to the peer once this much output is buffered, even mid-batch.
const FLUSH_BYTES: usize = 64 * 1024;
/// How long the server may take to answer what a departing client sent last.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// SQLSTATE for statements over the size limit (program_limit_exceeded).
const SQLSTATE_TOO_LARGE: &str = "54000";

/// Startup parameters passed on to the server; others (notably `options`, `role`,
/// `session_authorization`, `replication`) would change identity or how SQL is read.
const PASSED_PARAMETERS: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "intervalstyle",
    "extra_float_digits",
    "search_path",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "geqo",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
];

struct ActiveGuard(Arc<Resource>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.metrics.connections_active.dec();
    }
}

async fn refuse(stream: &mut TcpStream, code: &str, message: &str) {
    let mut out = BytesMut::new();
    put_error(&mut out, "FATAL", code, message);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

fn session_id(res: &Resource) -> String {
    let n = res
        .session_counter
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", res.process_nonce)
}

/// Serve one accepted client connection until it ends.
pub async fn serve(mut tcp: TcpStream, peer: SocketAddr, res: Arc<Resource>) {
    res.metrics.connections_total.inc();
    res.metrics.connections_active.inc();
    let _active = ActiveGuard(res.clone());
    let _ = tcp.set_nodelay(true);

    let started = tokio::time::Instant::now();
    let startup_timeout = res.limits.startup_timeout;
    let hello = match tokio::time::timeout(startup_timeout, startup::accept(&mut tcp)).await {
        Err(_) => {
            startup_timed_out(&mut tcp, peer, &res).await;
            return;
        }
        Ok(accepted) => accepted,
    };
    let hello = match hello {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(e) => {
            res.metrics.protocol_errors.inc();
            tracing::info!(%peer, error = %e, "refused a connection at start-up");
            refuse(&mut tcp, "08P01", &e.to_string()).await;
            return;
        }
    };
    let params = match hello {
        Hello::Cancel { pid, secret } => {
            res.cancel.cancel(pid, secret).await;
            return;
        }
        Hello::Startup(p) => p,
    };
    if params
        .get("replication")
        .is_some_and(|v| v != "false" && v != "off" && v != "0")
    {
        refuse(
            &mut tcp,
            SQLSTATE_REFUSED,
            "replication connections are refused by the sidecar",
        )
        .await;
        return;
    }
    let remaining = startup_timeout.saturating_sub(started.elapsed());
    let established =
        match tokio::time::timeout(remaining, auth::establish(&mut tcp, peer, &params, &res)).await
        {
            Err(_) => {
                startup_timed_out(&mut tcp, peer, &res).await;
                return;
            }
            Ok(established) => established,
        };
    let established = match established {
        Ok(e) => e,
        Err(e) => {
            res.metrics.auth_failures.inc();
            tracing::warn!(resource = %res.name, %peer, error = %e, "refused a connection at authentication");
            let ctx = RecordContext::new(session_id(&res), res.identity.clone(), res.name.clone());
            let _ = res.spool.append(
                &ctx,
                AuditEvent::AuthenticationRefused(AuthenticationRefused {
                    client_address: peer.to_string(),
                    reason: e.to_string(),
                }),
            );
            refuse(&mut tcp, SQLSTATE_AUTH, &e.to_string()).await;
            return;
        }
    };
    let identity = established.identity;
    let negotiated = established.negotiated;
    let identity_source = established.source;
    let deadline = res.auth.as_ref().and_then(|a| a.deadline(&identity));
    let signing_key = res.auth.as_ref().and_then(|a| a.signing_key(&identity));
    let user = params.get("user").unwrap_or_default().to_owned();
    let database = params.get("database").unwrap_or(&user).to_owned();
    let passed: Vec<(String, String)> = params
        .params
        .iter()
        .filter(|(k, _)| PASSED_PARAMETERS.contains(&k.to_ascii_lowercase().as_str()))
        .cloned()
        .collect();

    let mut established = match res.upstream.connect(&user, &database, &passed).await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(resource = %res.name, error = %e, "upstream session failed");
            let (code, message) = match &e {
                UpstreamError::Refused(f) => (f.code.clone(), format!("upstream: {}", f.message)),
                other => ("08006".to_owned(), other.to_string()),
            };
            refuse(&mut tcp, &code, &message).await;
            return;
        }
    };

    let search_path = session_search_path(&mut established.stream).await;
    let row_sources = session_row_sources(&mut established.stream, &res).await;
    let (pid, secret) = res
        .cancel
        .register(res.upstream.clone(), established.key.unwrap_or((0, 0)));
    let mut hello_out = BytesMut::new();
    if !negotiated {
        params.negotiation(&mut hello_out);
    }
    codec::put_auth_ok(&mut hello_out);
    hello_out.extend_from_slice(&established.relay);
    codec::put_backend_key(&mut hello_out, pid, secret);
    put_message(&mut hello_out, b'Z', b"I");
    if tcp.write_all(&hello_out).await.is_err() {
        res.cancel.unregister(pid);
        return;
    }

    let ctx = RecordContext::new(session_id(&res), identity, res.name.clone());
    let _ = res.spool.append(
        &ctx,
        AuditEvent::SessionStart(SessionStart {
            database: res
                .upstream
                .config
                .database
                .clone()
                .unwrap_or(database.clone()),
            // Chosen by the client: kept only as far as it carries no value.
            application_name: params
                .get("application_name")
                .map(crate::policy::fingerprint::value_free),
            client_address: peer.to_string(),
            identity_source,
        }),
    );
    tracing::debug!(session = %ctx.session_id(), %peer, "session started");

    let justification = params.get("options").and_then(justification_from_options);
    let masking = match &res.masker {
        Some(m) => {
            let db = res.upstream.config.database.as_deref().unwrap_or(&database);
            m.session(ctx.identity(), db, &user).await
        }
        None => None,
    };
    let (reason, statements) = relay(
        tcp,
        established.stream,
        res.clone(),
        ctx.clone(),
        SessionState {
            justification,
            masking,
            deadline,
            signing_key,
            search_path,
            row_sources,
        },
    )
    .await;
    res.cancel.unregister(pid);
    let _ = res.spool.append(
        &ctx,
        AuditEvent::SessionEnd(SessionEnd { statements, reason }),
    );
    res.metrics.spool_bytes.set(res.spool.bytes() as i64);
}

/// End a connection that did not finish its start-up within the limit.
async fn startup_timed_out(tcp: &mut TcpStream, peer: SocketAddr, res: &Resource) {
    res.metrics.protocol_errors.inc();
    tracing::info!(%peer, timeout = ?res.limits.startup_timeout, "closed a connection that did not finish its start-up in time");
    refuse(
        tcp,
        "08P01",
        &format!(
            "canceling authentication due to timeout: start-up not finished within {:?}",
            res.limits.startup_timeout
        ),
    )
    .await;
}

type ClientWriter = Arc<tokio::sync::Mutex<OwnedWriteHalf>>;

/// The `search_path` the upstream session starts with (set by the server's configuration,
/// the role, the database or the client's start-up parameter), asked of the server before
/// the client's first message; every schema is possible when it cannot be read.
async fn session_search_path(stream: &mut UpstreamStream) -> SearchPath {
    let query = "SELECT pg_catalog.current_setting('search_path'), current_user, (pg_catalog.current_schemas(false))[1]";
    let mut reader = tokio::io::BufReader::new(stream);
    match crate::masking::catalog::simple_query(&mut reader, query).await {
        Ok(sets) => match sets.first().and_then(|rows| rows.first()) {
            Some(row) => match (row.first(), row.get(1)) {
                (Some(Some(setting)), Some(Some(user))) => {
                    SearchPath::from_setting(setting, user, row.get(2).cloned().flatten())
                }
                _ => SearchPath::unknown(),
            },
            None => SearchPath::unknown(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "could not read the session's search_path; every schema is assumed");
            SearchPath::unknown()
        }
    }
}

/// The relations that may return rows of the tables the resource's `rowsOver` guardrails
/// limit, read from the server before the client's first message (no query when no
/// guardrail limits a table); every relation may when it cannot be read.
async fn session_row_sources(stream: &mut UpstreamStream, res: &Resource) -> RowSources {
    // The tables `rowsOver` guardrails limit, and those statement guardrails name (a write
    // through a view reaches the guardrails of the tables beneath it).
    let mut tables = Guardrails::limited_tables(&res.policies);
    for t in Guardrails::guarded_tables(&res.policies) {
        if !tables.contains(&t) {
            tables.push(t);
        }
    }
    let Some(query) = crate::policy::row_sources::query(&tables) else {
        return RowSources::unknown();
    };
    let mut reader = tokio::io::BufReader::new(stream);
    match crate::masking::catalog::simple_query(&mut reader, &query).await {
        Ok(sets) => match sets.first().and_then(|rows| RowSources::from_rows(rows)) {
            Some(sources) => sources,
            None => {
                tracing::warn!("unexpected answer to the row source query; every relation is assumed to return limited rows");
                RowSources::unknown()
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "could not read which relations return limited rows; every relation is assumed to");
            RowSources::unknown()
        }
    }
}

/// What a session starts its relay with, beyond its connections and resource.
struct SessionState {
    /// The justification given in the start-up options.
    justification: Option<String>,
    /// The session's masking, when the resource masks.
    masking: Option<Arc<SessionMasking>>,
    /// When the principal's token expires.
    deadline: Option<std::time::SystemTime>,
    /// The issuer key that signed the principal's token: the session ends if it is withdrawn.
    signing_key: Option<expiry::SigningKey>,
    /// The server's `search_path` at the start.
    search_path: SearchPath,
    /// Relations that may return rows of limited tables.
    row_sources: RowSources,
}

async fn relay(
    tcp: TcpStream,
    upstream: UpstreamStream,
    res: Arc<Resource>,
    ctx: RecordContext,
    state: SessionState,
) -> (String, u64) {
    let SessionState {
        justification,
        masking,
        deadline,
        signing_key,
        search_path,
        row_sources,
    } = state;
    let (cr, cw) = tcp.into_split();
    let (ur, uw) = tokio::io::split(upstream);
    let cw: ClientWriter = Arc::new(tokio::sync::Mutex::new(cw));
    let cw_end = cw.clone();
    let expires = expiry::until(deadline, ctx.identity().clone(), signing_key);
    let tracker = Arc::new(Mutex::new(Tracker {
        masking: masking.clone(),
        ..Tracker::default()
    }));
    let mut front = Frontend {
        guardrails: Guardrails::for_identity(res.policies.clone(), ctx.identity(), &res.namespace),
        res: res.clone(),
        ctx: ctx.clone(),
        tracker: tracker.clone(),
        client_out: cw.clone(),
        nonce: format!("{:016x}", rand::rng().random::<u64>()),
        markers: 0,
        statements: 0,
        statements_named: Statements::default(),
        portals: HashMap::new(),
        pending_seq: 0,
        deferred_seq: 0,
        waited_seq: 0,
        out: BytesMut::with_capacity(16 * 1024),
        held: None,
        justification,
        masking,
        parse_gen: 0,
        search_path,
        row_sources,
        cursors: Cursors::default(),
    };
    let back = backend(
        BufReader::with_capacity(64 * 1024, ur),
        cw,
        tracker,
        res,
        ctx,
    );
    tokio::pin!(back);
    let reader = BufReader::with_capacity(64 * 1024, cr);
    let reason = tokio::select! {
        (reason, drain) = front.run(reader, uw) => {
            // The client is done sending (Terminate or end of stream): let the server answer
            // what it already received, as it would on a direct connection, then close.
            if drain {
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, &mut back).await;
            }
            reason
        }
        r = &mut back => r,
        reason = expires => {
            // The person's rights end with their token: so does the session.
            tracing::info!(%reason, "closing a session whose token expired");
            let mut out = BytesMut::new();
            put_error(&mut out, "FATAL", crate::identity::SQLSTATE_AUTH, &reason);
            let mut w = cw_end.lock().await;
            let _ = w.write_all(&out).await;
            let _ = w.shutdown().await;
            reason
        }
    };
    (reason, front.statements)
}

/// What a Parse registered, for the Executes that follow.
#[derive(Clone, Debug)]
struct Prepared {
    template: StatementRecord,
    row_limits: Vec<Arc<RowLimit>>,
    /// What executing it can change.
    effect: Effect,
    /// The approval a held Parse (or Bind) obtained; each Execute checks it is still live.
    grant: Option<hold::GrantRef>,
    /// Approvals asked for at each Bind, with the bound values.
    at_bind: Vec<hold::Need>,
    /// Masking plan, statement name and parse generation, and (for a portal) Bind's result
    /// formats.
    masking: Option<Arc<StatementPlan>>,
    name: String,
    generation: u64,
    formats: Vec<i16>,
    /// Cursors it fetches from (a Parse of `FETCH`): each Execute counts its rows against the
    /// cursor's limits as they are when it runs.
    fetches: Vec<String>,
    /// The analysed definitions a use may run (one, or several when the server may hold
    /// either), decided again when SQL `EXECUTE` runs it.
    definitions: Vec<Arc<StatementFacts>>,
    /// The server may hold another definition under the same name.
    ambiguous: bool,
    /// The name resolution it was decided under. The server resolves the names of a
    /// prepared statement again when the `search_path` (or the role `"$user"` stands for)
    /// changed, so a use under another one is decided again.
    path: SearchPath,
}

struct Frontend {
    res: Arc<Resource>,
    /// The policies that apply to this session's identity.
    guardrails: Guardrails,
    ctx: RecordContext,
    tracker: Arc<Mutex<Tracker>>,
    client_out: ClientWriter,
    nonce: String,
    markers: u64,
    statements: u64,
    /// Prepared statement names (SQL and protocol share them).
    statements_named: Statements,
    portals: HashMap<String, Option<Prepared>>,
    /// Highest audit record that must be durable before the buffered messages leave.
    pending_seq: u64,
    /// Highest record of a write inside the open transaction block, which must be durable
    /// before the block's COMMIT leaves.
    deferred_seq: u64,
    /// Highest `pending_seq` already waited for.
    waited_seq: u64,
    out: BytesMut,
    /// A statement waiting for approval, resolved before the batch is flushed upstream.
    held: Option<hold::Held>,
    /// What the client said it needs its operations for (`SET portcullis.justification`).
    justification: Option<String>,
    masking: Option<Arc<SessionMasking>>,
    parse_gen: u64,
    /// The schemas unqualified names may resolve to, following every change the session's
    /// statements make to `search_path`.
    search_path: SearchPath,
    /// Relations that may return rows of limited tables.
    row_sources: RowSources,
    /// Open portals and cursors, with their row limits and the rows they sent.
    cursors: Cursors,
}

/// When a statement's audit record must be durable (it is always written to the spool
/// before the statement leaves, so it survives a crash of the sidecar).
///
/// Reads are not held back: their records are synced by the group commit within
/// [`crate::audit::spool::BACKGROUND_SYNC`]. A write inside a transaction block changes
/// nothing permanent or visible before COMMIT (the server rolls the block back if the
/// sidecar goes away), so its record must be durable before the COMMIT leaves. Everything
/// else waits for its own record's fsync before it is forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durable {
    /// Written only.
    Written,
    /// Durable before the transaction block commits.
    BeforeCommit,
    /// Durable, with every earlier record, before this statement leaves.
    BeforeForward,
}

/// A decision on one query string.
struct Decided {
    records: Vec<(StatementRecord, Vec<Arc<RowLimit>>)>,
    refusal: Option<(&'static str, String)>,
    /// What the whole string can change.
    effect: Effect,
    /// Statements that may run only with an approval.
    approvals: Vec<hold::Need>,
    analysis: Arc<Analysis>,
    /// Per statement: what it does to prepared statement and portal names.
    changes: Vec<Staged>,
}

/// A `PREPARE` of a query string, registered when the string is forwarded.
#[derive(Debug)]
struct StagedPrepare {
    name: String,
    /// Facts of the PREPARE statement (its kinds, tables and functions are the inner one's).
    facts: Arc<StatementFacts>,
    /// The statement prepared.
    inner: sqlparser::ast::Statement,
    template: StatementRecord,
    row_limits: Vec<Arc<RowLimit>>,
    effect: Effect,
    /// Approvals asked for at each use (Bind, or SQL `EXECUTE`), with the bound values: a
    /// `PREPARE` of a held statement with `$n` parameters whose grant covers values.
    at_bind: Vec<hold::Need>,
    /// The approval the `PREPARE` itself was held for; each Execute checks it is still live.
    grant: Option<hold::GrantRef>,
}

impl StagedPrepare {
    fn prepared(
        &self,
        masking: Option<Arc<StatementPlan>>,
        generation: u64,
        path: SearchPath,
    ) -> Prepared {
        Prepared {
            path,
            template: self.template.clone(),
            row_limits: self.row_limits.clone(),
            effect: self.effect,
            grant: self.grant.clone(),
            masking,
            name: self.name.clone(),
            generation,
            formats: Vec::new(),
            definitions: vec![self.facts.clone()],
            ambiguous: false,
            fetches: Vec::new(),
            at_bind: self.at_bind.clone(),
        }
    }
}

/// Severity of a decision, for running the strictest of several.
fn severity(d: Decision) -> u8 {
    match d {
        Decision::Allow => 0,
        Decision::Audit => 1,
        Decision::RequireApproval => 2,
        Decision::Deny => 3,
    }
}

/// Name changes of one statement, applied when its query string is forwarded.
#[derive(Debug, Default)]
struct Staged {
    /// `PREPARE`.
    prepare: Option<StagedPrepare>,
    /// Other namespace changes.
    names: Vec<NameChange>,
    /// Portals (cursors) it opens, or `None` for every portal (server code may open any).
    portals: Option<Vec<String>>,
    /// The statement runs this definition (`EXECUTE name`): its result has the definition's
    /// masking plan.
    executes: Option<String>,
    /// Rows already sent through the cursor it fetches from.
    portal_rows: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Cursors it opens and closes.
    cursors: Vec<CursorChange>,
}

fn empty_record(protocol: Protocol) -> StatementRecord {
    StatementRecord {
        statement_id: 0,
        protocol,
        statement: None,
        fingerprint: String::new(),
        kinds: Vec::new(),
        tables: Vec::new(),
        functions: Vec::new(),
        decision: Decision::Allow,
        rule: None,
        reason: None,
        lawful_basis: None,
        purpose: None,
        access_request: None,
    }
}

impl Frontend {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tracker> {
        // A poisoned lock means a panic elsewhere in this session; keep the data.
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Relay client messages until the session ends; returns why, and whether the server's
    /// remaining answers should still be delivered.
    async fn run(
        &mut self,
        mut reader: BufReader<OwnedReadHalf>,
        mut upstream: WriteHalf<UpstreamStream>,
    ) -> (String, bool) {
        let limit = self.res.limits.max_statement_bytes;
        let other_limit = self.res.limits.max_message_bytes;
        let is_statement = |tag: u8| tag == b'Q' || tag == b'P';
        let limit_of = |tag: u8| {
            if is_statement(tag) {
                limit
            } else {
                other_limit
            }
        };
        loop {
            let read = codec::read_message_limited(&mut reader, limit_of, is_statement);
            let read = match read.await {
                Ok(r) => r,
                Err(e) => return (self.fatal(e).await, false),
            };
            let result = match read {
                Read::Eof => {
                    put_message(&mut self.out, b'X', b"");
                    let drain = self.flush(&mut upstream).await.is_ok();
                    return ("client closed the connection".to_owned(), drain);
                }
                Read::Oversized { tag, len } => {
                    self.refuse_oversized(tag, len, limit);
                    Ok(true)
                }
                Read::Message(m) => self.on_message(m),
            };
            match result {
                Ok(true) => {}
                Ok(false) => {
                    let drain = self.flush(&mut upstream).await.is_ok();
                    return ("terminate".to_owned(), drain);
                }
                Err(e) => return (self.fatal(e).await, false),
            }
            if let Some(held) = self.held.take() {
                // What came before the held statement goes first; the hold awaits here, so
                // other sessions run on while this one waits.
                if let Err(e) = self.flush(&mut upstream).await {
                    return (e, false);
                }
                self.resolve(held).await;
            }
            if reader.buffer().is_empty() || self.out.len() >= FLUSH_BYTES {
                if let Err(e) = self.flush(&mut upstream).await {
                    return (e, false);
                }
            }
        }
    }

    async fn fatal(&mut self, e: ProtocolError) -> String {
        if matches!(e, ProtocolError::Io(_)) {
            return format!("client connection: {e}");
        }
        self.res.metrics.protocol_errors.inc();
        tracing::info!(session = %self.ctx.session_id(), error = %e, "closing a session after a protocol error");
        let mut out = BytesMut::new();
        put_error(&mut out, "FATAL", "08P01", &e.to_string());
        let mut w = self.client_out.lock().await;
        let _ = w.write_all(&out).await;
        let _ = w.shutdown().await;
        e.to_string()
    }

    async fn flush(&mut self, upstream: &mut WriteHalf<UpstreamStream>) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        if self.pending_seq > self.waited_seq {
            self.waited_seq = self.pending_seq;
            self.res.metrics.audit_sync_waits.inc();
        }
        if self.pending_seq > self.res.spool.durable_seq() {
            if let Err(e) = self.res.spool.wait_durable(self.pending_seq).await {
                // Nothing unrecorded may be forwarded: end the session.
                tracing::error!(error = %e, "audit record not durable; closing the session");
                let mut out = BytesMut::new();
                put_error(
                    &mut out,
                    "FATAL",
                    "58030",
                    &format!("audit log unavailable: {e}"),
                );
                let mut w = self.client_out.lock().await;
                let _ = w.write_all(&out).await;
                return Err(e.to_string());
            }
        }
        upstream
            .write_all(&self.out)
            .await
            .map_err(|e| format!("upstream connection: {e}"))?;
        upstream
            .flush()
            .await
            .map_err(|e| format!("upstream connection: {e}"))?;
        self.out.clear();
        Ok(())
    }

    /// Handle one client message; `Ok(false)` ends the session (Terminate).
    fn on_message(&mut self, m: Message) -> Result<bool, ProtocolError> {
        match m.tag {
            b'Q' => {
                let raw = Fields::new(&m.body).cstr_bytes()?;
                match std::str::from_utf8(raw) {
                    Ok(sql) => self.on_query(sql, &m),
                    Err(_) => self.refuse_undecodable(m.tag),
                }
            }
            b'P' => {
                let mut f = Fields::new(&m.body);
                let name = f.cstr()?.to_owned();
                match std::str::from_utf8(f.cstr_bytes()?) {
                    Ok(sql) => self.on_parse(name, sql, &m),
                    Err(_) => self.refuse_undecodable(m.tag),
                }
            }
            b'B' => {
                let mut f = Fields::new(&m.body);
                let portal = f.cstr()?.to_owned();
                let statement = f.cstr()?.to_owned();
                let resolved = self.resolve_statement(&statement);
                let refusal = resolved.as_ref().and_then(|p| self.redecide(p));
                match resolved {
                    Some(p) if refusal.is_some() => {
                        self.cursors.apply(CursorChange::Close(portal.clone()));
                        self.portals.insert(portal, None);
                        self.refuse_use(&p, refusal.unwrap_or_else(Verdict::allow));
                    }
                    Some(mut p) => {
                        self.replan(&mut p);
                        p.formats = bind_result_formats(&m.body).unwrap_or_default();
                        self.cursors.apply(CursorChange::Open(
                            portal.clone(),
                            PortalRows::new(p.row_limits.clone()),
                        ));
                        if p.at_bind.is_empty() {
                            self.portals.insert(portal, Some(p));
                            put_message(&mut self.out, m.tag, &m.body);
                        } else {
                            match hold::bound_values(&m.body) {
                                Some(values) => {
                                    let needs =
                                        p.at_bind.iter().map(|n| n.bound(&values)).collect();
                                    self.held = Some(hold::Held::Bind {
                                        portal,
                                        prepared: Box::new(p),
                                        message: m.clone(),
                                        needs,
                                    });
                                }
                                None => {
                                    self.portals.insert(portal, None);
                                    self.refuse(
                                        true,
                                        SQLSTATE_REFUSED,
                                        "the values of a Bind that requires approval cannot be read"
                                            .to_owned(),
                                    );
                                }
                            }
                        }
                    }
                    None => {
                        self.cursors.apply(CursorChange::Close(portal.clone()));
                        self.portals.insert(portal, None);
                        self.refuse_unknown("prepared statement", &statement);
                    }
                }
            }
            b'E' => {
                let portal = Fields::new(&m.body).cstr()?.to_owned();
                match self.portals.get(&portal).cloned().flatten() {
                    Some(prepared) => {
                        if self.on_execute(&portal, prepared) {
                            put_message(&mut self.out, m.tag, &m.body);
                        }
                    }
                    None => self.refuse_unknown("portal", &portal),
                }
            }
            b'C' => {
                let mut f = Fields::new(&m.body);
                let kind = f.byte()?;
                let name = f.cstr()?.to_owned();
                match kind {
                    b'S' => self.change_names(NameChange::Remove(name)),
                    b'P' => {
                        self.portals.remove(&name);
                        self.cursors.apply(CursorChange::Close(name));
                    }
                    _ => return Err(ProtocolError::Invalid("Close of an unknown kind".into())),
                }
                put_message(&mut self.out, m.tag, &m.body);
            }
            b'S' => {
                self.lock().batches_sent += 1;
                put_message(&mut self.out, m.tag, &m.body);
            }
            b'D' => {
                self.on_describe(&m)?;
                put_message(&mut self.out, m.tag, &m.body);
            }
            b'H' | b'd' | b'c' | b'f' => put_message(&mut self.out, m.tag, &m.body),
            b'F' => self.on_function_call(&m),
            b'X' => {
                put_message(&mut self.out, m.tag, &m.body);
                return Ok(false);
            }
            other => {
                return Err(ProtocolError::Invalid(format!(
                    "unexpected message type {:?}",
                    char::from(other)
                )))
            }
        }
        Ok(true)
    }

    fn next_statement_id(&mut self) -> u64 {
        self.statements += 1;
        self.statements
    }

    /// The batch the next forwarded message belongs to.
    fn current_batch(&self) -> u64 {
        self.lock().batches_sent + 1
    }

    /// The definition a use of the prepared statement `name` now runs.
    fn resolve_statement(&self, name: &str) -> Option<Prepared> {
        let now = self.current_batch();
        let t = self.lock();
        self.statements_named
            .resolve(name, now, &t, self.masking.as_ref())
    }

    fn change_names(&mut self, change: NameChange) {
        let now = self.current_batch();
        let t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        self.statements_named
            .apply(change, now, &t, self.masking.as_ref());
    }

    /// Refuse the use of a statement or portal name the sidecar has no definition for: it
    /// was not made through the sidecar (server code, a refused or unanalysable statement),
    /// so what it runs is not known.
    fn refuse_unknown(&mut self, what: &str, name: &str) {
        let message = format!(
            "{what} {name:?} was not prepared through the sidecar (or its preparation was refused), so what it runs is not known and it is refused (rule builtin/unknown-statement)"
        );
        self.refuse_builtin(b'P', "unknown-statement", SQLSTATE_REFUSED, message);
    }

    /// Analyse and decide a query string.
    fn decide(&mut self, sql: &str, protocol: Protocol) -> Decided {
        let analysis = self.res.cache.analyze(sql);
        let (lawful_basis, purpose) = self.guardrails.policy_context(None);
        let mut records = Vec::new();
        let mut approvals = Vec::new();
        let mut refusal: Option<(&'static str, String, RuleRef)> = None;
        let mut effect = Effect::Other;
        let mut changes: Vec<Staged> = Vec::new();
        match analysis.as_ref() {
            Analysis::Statements(list) => {
                effect = list.iter().map(|f| f.effect).max().unwrap_or(Effect::Reads);
                // A string that writes and commits must not leave before its writes' records.
                if effect == Effect::Commits && list.iter().any(|f| f.effect == Effect::Writes) {
                    effect = Effect::Other;
                }
                for facts in list {
                    let uses = facts.ast.as_deref().map(names::uses).unwrap_or_default();
                    // What the statement runs beyond its text: functions and views defined
                    // through the sidecar, views over guarded tables, cursors opened by
                    // server code.
                    let expanded = self.runs_beyond_text(facts, &changes);
                    let (facts, mut code_runs) = match &expanded {
                        Some(e) => (&e.facts, e.runs.clone()),
                        None => (facts, Vec::new()),
                    };
                    // The definitions the statement runs (`EXECUTE name`, also under EXPLAIN).
                    let mut runs: Vec<Prepared> = Vec::new();
                    let mut unknown: Option<String> = None;
                    for name in &uses.executes {
                        match self.lookup_staged(name, &changes) {
                            Some(p) => runs.push(p),
                            None => unknown = Some(name.clone()),
                        }
                    }
                    let mut decided_on: Arc<StatementFacts> = Arc::new(facts.clone());
                    let mut verdict = self.decide_one(facts);
                    if let Some(name) = &unknown {
                        verdict = Verdict::builtin(
                            "unknown-statement",
                            format!("prepared statement {name:?} was not prepared through the sidecar (or its preparation was refused), so what it runs is not known and it is refused (rule builtin/unknown-statement)"),
                        );
                    } else {
                        // Running a definition is decided as the definition is, with what
                        // it runs now (a function redefined since it was prepared).
                        for d in runs.iter().flat_map(|p| p.definitions.iter()) {
                            let d = match self.runs_beyond_text(d, &changes) {
                                Some(e) => {
                                    for text in e.runs {
                                        if !code_runs.contains(&text) {
                                            code_runs.push(text);
                                        }
                                    }
                                    Arc::new(e.facts)
                                }
                                None => d.clone(),
                            };
                            let v = self.decide_one(&d);
                            if severity(v.decision) > severity(verdict.decision) {
                                verdict = v;
                                decided_on = d;
                            }
                        }
                        let masked = self.masking.as_ref().is_some_and(|m| m.has_columns());
                        if !runs.is_empty() && !uses.top_execute && masked && verdict.forwards() {
                            verdict = Verdict::builtin(
                                crate::masking::engine::OPAQUE_RULE,
                                format!("a prepared statement run inside another statement (EXPLAIN EXECUTE) is refused while masking rules apply: its output would not be masked (rule {BUILTIN_POLICY}/{})", crate::masking::engine::OPAQUE_RULE),
                            );
                        }
                    }
                    // Rows of a limited table that would leave other than one result row
                    // each (folded, read by name, copied) are refused before anything runs.
                    if verdict.forwards() || verdict.decision == Decision::RequireApproval {
                        let escaped = std::iter::once(facts)
                            .chain(
                                runs.iter()
                                    .flat_map(|p| p.definitions.iter().map(|d| d.as_ref())),
                            )
                            .find_map(|f| {
                                self.guardrails
                                    .row_escape(f, &self.search_path, &self.row_sources)
                            });
                        if let Some(v) = escaped {
                            verdict = v;
                        }
                    }
                    let held = verdict.decision == Decision::RequireApproval;
                    if verdict.forwards() || held {
                        // Kept before it runs: a definition refused later by the server or
                        // by an approver is only judged more strictly.
                        self.res.code.define(facts, &self.search_path);
                    }
                    if held && self.res.approvals.is_none() {
                        verdict.reason = Some(hold::standalone_refusal(&verdict));
                    }
                    let mut row_limits = if verdict.forwards() || held {
                        self.guardrails
                            .row_limits(facts, &self.search_path, &self.row_sources)
                    } else {
                        Vec::new()
                    };
                    for p in &runs {
                        row_limits.extend(p.row_limits.iter().cloned());
                    }
                    let (portal_rows, cursor_changes) =
                        self.cursor_changes(facts, &mut row_limits, &changes);
                    let mut record = StatementRecord {
                        statement: Some(facts.normalized.clone()),
                        fingerprint: facts.fingerprint.clone(),
                        kinds: {
                            let mut k: Vec<String> = facts
                                .kinds
                                .iter()
                                .map(|k| kind_name(*k).to_owned())
                                .collect();
                            k.sort();
                            k
                        },
                        tables: facts
                            .tables
                            .iter()
                            .map(|t| fingerprint::name_for_record(self.search_path.record(t)))
                            .collect(),
                        functions: facts
                            .functions
                            .iter()
                            .map(|f| fingerprint::name_for_record(f.to_string()))
                            .collect(),
                        lawful_basis: lawful_basis.clone(),
                        purpose: purpose.clone(),
                        ..self.verdict_record(protocol, &verdict)
                    };
                    // `EXECUTE name` is recorded as what it runs.
                    if let ([def], true) = (runs.as_slice(), uses.top_execute) {
                        record.statement = def.template.statement.clone();
                        record.fingerprint = def.template.fingerprint.clone();
                        record.kinds = def.template.kinds.clone();
                        record.tables = def.template.tables.clone();
                        record.functions = def.template.functions.clone();
                    }
                    let mut staged = Staged {
                        names: uses
                            .deallocate
                            .iter()
                            .map(|n| NameChange::Remove(n.clone()))
                            .collect(),
                        // Server code may open cursors of any name.
                        portals: if facts.path_changes.contains(&PathChange::Unknown) {
                            None
                        } else {
                            Some(uses.cursors.clone())
                        },
                        executes: if uses.top_execute {
                            uses.executes.first().cloned()
                        } else {
                            None
                        },
                        portal_rows,
                        cursors: cursor_changes,
                        ..Staged::default()
                    };
                    if uses.remove_all {
                        staged.names.push(NameChange::RemoveAll);
                    }
                    // One need per approval rule the statement (or a definition it runs)
                    // matches, the deciding rule first: a grant covers only its own rule.
                    let mut needs: Vec<hold::Need> = Vec::new();
                    if held && self.res.approvals.is_some() {
                        let mut rules: Vec<Option<RuleRef>> = vec![verdict.rule.clone()];
                        if unknown.is_none() {
                            let ran = runs.iter().flat_map(|p| p.definitions.iter());
                            for f in std::iter::once(facts).chain(ran.map(|d| d.as_ref())) {
                                for r in self.guardrails.approval_rules(f, &self.search_path) {
                                    if !rules.contains(&Some(r.clone())) {
                                        rules.push(Some(r));
                                    }
                                }
                            }
                        }
                        // A use of a definition shows the definition it runs, apart from
                        // the client's text.
                        let mut ran =
                            hold::definitions(runs.iter().flat_map(|p| p.definitions.iter()));
                        ran.extend(code_runs.iter().cloned());
                        for rule in rules {
                            needs.push(hold::Need::new(
                                records.len(),
                                &decided_on,
                                &Verdict {
                                    rule,
                                    ..verdict.clone()
                                },
                                &self.guardrails,
                                sql,
                                ran.clone(),
                                !matches!(protocol, Protocol::Simple),
                            ));
                        }
                    }
                    if let Some((name, inner)) = uses.prepare {
                        // A PREPARE with `$n` parameters is asked for at each use, with the
                        // bound values, like a Parse: preparing runs nothing.
                        let mut at_use = Vec::new();
                        needs.retain(|n| match n.at_use(facts) {
                            Some(u) => {
                                at_use.push(u);
                                false
                            }
                            None => true,
                        });
                        if !at_use.is_empty() {
                            record.reason = Some(format!(
                                "{}; approval is asked for at each use (Bind or EXECUTE) of {name:?}, with the bound values",
                                record.reason.as_deref().unwrap_or("statement requires approval")
                            ));
                        }
                        staged.prepare = Some(StagedPrepare {
                            name,
                            facts: Arc::new(facts.clone()),
                            inner,
                            template: record.clone(),
                            row_limits: row_limits.clone(),
                            effect: facts.effect,
                            at_bind: at_use,
                            grant: None,
                        });
                    }
                    changes.push(staged);
                    if !needs.is_empty() {
                        approvals.extend(needs);
                    } else if held && self.res.approvals.is_some() {
                        // Asked for at each use of the prepared statement.
                    } else if !verdict.forwards() && refusal.is_none() {
                        refusal = Some((
                            SQLSTATE_REFUSED,
                            verdict.reason.clone().unwrap_or_default(),
                            verdict.rule.clone().unwrap_or(RuleRef {
                                policy: BUILTIN_POLICY.into(),
                                rule: "deny".into(),
                            }),
                        ));
                    }
                    records.push((record, row_limits));
                    // The statements after this one resolve names with its changes.
                    for change in &facts.path_changes {
                        self.search_path.apply(change);
                    }
                }
            }
            Analysis::Unanalyzable {
                reason,
                fingerprint,
            } => {
                let verdict = self.guardrails.decide_unanalyzable(reason);
                if verdict.forwards() {
                    // What it does to search_path, prepared statements and cursors is not
                    // known.
                    self.search_path.apply(&PathChange::Unknown);
                }
                changes.push(Staged {
                    names: vec![NameChange::RemoveAll],
                    portals: None,
                    cursors: vec![CursorChange::CloseAll],
                    ..Staged::default()
                });
                let record = StatementRecord {
                    fingerprint: fingerprint.clone(),
                    lawful_basis,
                    purpose,
                    ..self.verdict_record(protocol, &verdict)
                };
                if !verdict.forwards() {
                    refusal = Some((
                        SQLSTATE_REFUSED,
                        verdict.reason.clone().unwrap_or_default(),
                        verdict.rule.clone().unwrap_or(RuleRef {
                            policy: BUILTIN_POLICY.into(),
                            rule: "unanalyzable".into(),
                        }),
                    ));
                }
                records.push((record, Vec::new()));
            }
        }
        if refusal.is_none() {
            if let Err(e) = self.res.spool.check_limit(self.guardrails.spool_limit()) {
                refusal = Some((
                    SQLSTATE_REFUSED,
                    format!("statement refused because the audit log cannot record it: {e} (rule builtin/audit-unavailable)"),
                    RuleRef {
                        policy: BUILTIN_POLICY.into(),
                        rule: "audit-unavailable".into(),
                    },
                ));
            }
        }
        // A query string is forwarded whole or not at all: every statement of a refused
        // string is recorded as refused, naming the rule that refused it.
        if let Some((_, message, rule)) = &refusal {
            for (record, _) in records.iter_mut() {
                if matches!(record.decision, Decision::Allow | Decision::Audit) {
                    record.decision = Decision::Deny;
                    record.rule = Some(rule.clone());
                    record.reason = Some(format!(
                        "refused with the query string it belongs to: {message}"
                    ));
                }
            }
        }
        for (record, _) in records.iter_mut() {
            record.statement_id = self.next_statement_id();
        }
        Decided {
            records,
            refusal: refusal.map(|(code, message, _)| (code, message)),
            effect,
            approvals,
            analysis,
            changes,
        }
    }

    /// Why a use (Bind) of a prepared statement decided under another name resolution than
    /// the session's now is refused, if it is: the server resolves its names again, so it is
    /// decided again. A use is refused when it is now denied, or now needs an approval that
    /// its preparation did not ask for (the client prepares it again to ask).
    fn redecide(&self, p: &Prepared) -> Option<Verdict> {
        if p.path == self.search_path {
            return None;
        }
        for d in &p.definitions {
            let v = self.decide_one(d);
            let newly_held = v.decision == Decision::RequireApproval
                && (p.template.decision != Decision::RequireApproval
                    || self
                        .guardrails
                        .approval_rules(d, &self.search_path)
                        .iter()
                        .any(|r| !self.guardrails.approval_rules(d, &p.path).contains(r)));
            if v.decision == Decision::Deny || newly_held {
                let reason = format!(
                    "prepared statement {:?} was decided when its names resolved differently; since then search_path or the role changed, and the server resolves its names again: {} (prepare it again to have it decided, and held, under the current ones)",
                    p.name,
                    v.reason.as_deref().unwrap_or_default()
                );
                return Some(Verdict {
                    decision: Decision::Deny,
                    reason: Some(reason),
                    ..v
                });
            }
        }
        None
    }

    /// Refuse a use (Bind) of a prepared statement, recording it as an execution.
    fn refuse_use(&mut self, p: &Prepared, verdict: Verdict) {
        let message = verdict.reason.clone().unwrap_or_default();
        let record = StatementRecord {
            statement_id: self.next_statement_id(),
            protocol: Protocol::Execute,
            decision: Decision::Deny,
            rule: verdict.rule,
            reason: Some(message.clone()),
            ..p.template.clone()
        };
        self.record(record, Durable::Written);
        self.refuse(true, SQLSTATE_REFUSED, message);
    }

    /// Give a use of a prepared statement the masking plan of its definition under the
    /// session's name resolution now, when that changed since it was prepared.
    fn replan(&self, p: &mut Prepared) {
        if p.path == self.search_path {
            return;
        }
        if let Some(m) = self.masking.as_ref() {
            p.masking = Some(match p.definitions.as_slice() {
                [d] if !p.ambiguous => {
                    let inner = match d.ast.as_deref() {
                        Some(sqlparser::ast::Statement::Prepare { statement, .. }) => {
                            StatementFacts {
                                ast: Some(Arc::new(statement.as_ref().clone())),
                                ..d.as_ref().clone()
                            }
                        }
                        _ => d.as_ref().clone(),
                    };
                    m.plan(&inner, &self.search_path)
                }
                _ => m.plan_unknown(),
            });
        }
        p.path = self.search_path.clone();
    }

    /// The statement with what it runs beyond its text (see [`crate::policy::code`]): the
    /// functions and views defined through the sidecar that it runs, the guarded tables
    /// beneath the views it names, and, for a FETCH or MOVE of a cursor the sidecar did not
    /// see opened (by server code), code the analysis cannot see into. `None` when it runs
    /// nothing beyond its text.
    fn runs_beyond_text(
        &self,
        facts: &StatementFacts,
        staged: &[Staged],
    ) -> Option<crate::policy::code::Expanded> {
        let guarded = Guardrails::guarded_tables(&self.res.policies);
        let mut expanded =
            self.res
                .code
                .expand(facts, &self.search_path, &self.row_sources, &guarded);
        if let Some(ast) = facts.ast.as_deref() {
            for name in cursors::uses(ast).fetches {
                if self.lookup_cursor(&name, staged).is_none() {
                    let e = expanded.get_or_insert_with(|| crate::policy::code::Expanded {
                        facts: facts.clone(),
                        runs: Vec::new(),
                    });
                    crate::policy::code::runs_unseen_code(
                        &mut e.facts,
                        &format!("cursor {name:?} was not opened through the sidecar (server code opened it), so the query it runs cannot be analysed"),
                    );
                }
            }
        }
        expanded
    }

    /// The guardrail (or masking) verdict on one statement.
    fn decide_one(&self, facts: &StatementFacts) -> Verdict {
        match self.masking.as_ref().and_then(|m| m.refusal(facts)) {
            Some(refused) => refused,
            None => self.guardrails.decide(facts, &self.search_path),
        }
    }

    /// The cursor changes of a statement, and the rows count of the cursor it fetches from;
    /// adds that cursor's limits to `row_limits`.
    fn cursor_changes(
        &self,
        facts: &StatementFacts,
        row_limits: &mut Vec<Arc<RowLimit>>,
        staged: &[Staged],
    ) -> (Option<Arc<std::sync::atomic::AtomicU64>>, Vec<CursorChange>) {
        let mut changes = Vec::new();
        // Server code may open or close cursors of any name.
        if facts.path_changes.contains(&PathChange::Unknown) {
            changes.push(CursorChange::CloseAll);
        }
        let Some(ast) = facts.ast.as_deref() else {
            return (None, changes);
        };
        let uses = cursors::uses(ast);
        let mut portal_rows = None;
        for name in &uses.fetches {
            let rows = match self.lookup_cursor(name, staged) {
                Some(rows) => rows,
                None => {
                    let rows = PortalRows::new(self.guardrails.all_row_limits());
                    changes.push(CursorChange::Open(name.clone(), rows.clone()));
                    rows
                }
            };
            row_limits.extend(rows.limits.iter().cloned());
            portal_rows = Some(rows.sent.clone());
        }
        if uses.close_all {
            changes.push(CursorChange::CloseAll);
        }
        changes.extend(uses.closes.into_iter().map(CursorChange::Close));
        for name in uses.declares {
            changes.push(CursorChange::Open(
                name,
                PortalRows::new(row_limits.clone()),
            ));
        }
        (portal_rows, changes)
    }

    /// The open cursor `name` for a statement after the `staged` changes of the statements
    /// before it in the same query string.
    fn lookup_cursor(&self, name: &str, staged: &[Staged]) -> Option<Arc<PortalRows>> {
        for s in staged.iter().rev() {
            for c in s.cursors.iter().rev() {
                match c {
                    CursorChange::Open(n, rows) if n == name => return Some(rows.clone()),
                    CursorChange::Close(n) if n == name => return None,
                    CursorChange::CloseAll => return None,
                    _ => {}
                }
            }
        }
        self.cursors.get(name)
    }

    /// The open cursor an Execute fetches from; one the sidecar did not see opened (by
    /// server code) carries every row limit of the session.
    fn fetched(&mut self, name: &str) -> Arc<PortalRows> {
        if let Some(rows) = self.cursors.get(name) {
            return rows;
        }
        let rows = PortalRows::new(self.guardrails.all_row_limits());
        self.cursors
            .apply(CursorChange::Open(name.to_owned(), rows.clone()));
        rows
    }

    /// What `name` runs for a statement after the `staged` changes of the statements before
    /// it in the same query string.
    fn lookup_staged(&self, name: &str, staged: &[Staged]) -> Option<Prepared> {
        for s in staged.iter().rev() {
            if let Some(p) = s.prepare.as_ref().filter(|p| p.name == name) {
                return Some(p.prepared(None, 0, self.search_path.clone()));
            }
            if s.names.iter().any(|c| match c {
                NameChange::Remove(n) => n == name,
                NameChange::RemoveAll => true,
                NameChange::Define(n, _) => n == name,
            }) {
                return None;
            }
        }
        self.resolve_statement(name)
    }

    fn verdict_record(&self, protocol: Protocol, verdict: &Verdict) -> StatementRecord {
        StatementRecord {
            decision: verdict.decision,
            rule: verdict.rule.clone(),
            reason: verdict.reason.clone(),
            ..empty_record(protocol)
        }
    }

    /// How durable the record of a statement with this effect must be before the statement
    /// is forwarded.
    fn durability(&self, effect: Effect) -> Durable {
        match effect {
            Effect::Reads => Durable::Written,
            Effect::Writes => {
                // Inside a transaction block only when every batch sent so far has been
                // answered, so the last ReadyForQuery tells the block's state.
                let t = self.lock();
                if t.batches_done == t.batches_sent && t.transaction == b'T' {
                    Durable::BeforeCommit
                } else {
                    Durable::BeforeForward
                }
            }
            Effect::Commits if self.deferred_seq == 0 => Durable::Written,
            Effect::Commits | Effect::Other => Durable::BeforeForward,
        }
    }

    /// Write a statement's audit record and note when it must be durable.
    fn record(&mut self, record: StatementRecord, durable: Durable) {
        let decision = match record.decision {
            Decision::Allow => "allow",
            Decision::Audit => "audit",
            Decision::Deny => "deny",
            Decision::RequireApproval => "requireApproval",
        };
        self.res
            .metrics
            .statements
            .with_label_values(&[decision])
            .inc();
        if record.decision != Decision::Allow {
            tracing::info!(
                session = %self.ctx.session_id(),
                decision,
                rule = ?record.rule,
                statement = record.statement.as_deref().unwrap_or("<unanalysable>"),
                "statement decided"
            );
        }
        match self
            .res
            .spool
            .append(&self.ctx, AuditEvent::Statement(record))
        {
            Ok(seq) => match durable {
                Durable::Written => {}
                Durable::BeforeCommit => self.deferred_seq = self.deferred_seq.max(seq),
                // Waiting for this record waits for every earlier one, deferred ones too.
                Durable::BeforeForward => {
                    self.pending_seq = self.pending_seq.max(seq);
                    self.deferred_seq = 0;
                }
            },
            // The next flush waits for durability and fails the same way; make sure it does.
            Err(e) => {
                tracing::error!(error = %e, "audit record could not be queued");
                self.pending_seq = u64::MAX;
            }
        }
    }

    /// Forward a stand-in that the server rejects, and arrange for the rejection to be
    /// replaced by `message`.
    fn refuse(&mut self, as_parse: bool, code: &'static str, message: String) {
        self.markers += 1;
        let token = format!("portcullis_refused_{}_{}", self.nonce, self.markers);
        {
            let mut t = self.lock();
            let batch = t.batches_sent + 1;
            if !as_parse {
                t.batches_sent += 1;
            }
            t.markers.push_back(Marker {
                token: token.clone(),
                batch,
                code,
                message,
            });
        }
        if as_parse {
            put_message(&mut self.out, b'P', &codec::parse_body(&token));
        } else {
            put_message(&mut self.out, b'Q', &codec::query_body(&token));
        }
        // The stand-in replaces the unnamed statement on the server.
        self.change_names(NameChange::Remove(String::new()));
    }

    fn refuse_undecodable(&mut self, tag: u8) {
        let message = "statement text is not valid UTF-8 and cannot be analysed; use client_encoding UTF8 (rule builtin/unanalyzable)".to_owned();
        self.refuse_builtin(tag, "unanalyzable", SQLSTATE_REFUSED, message);
    }

    fn refuse_oversized(&mut self, tag: u8, len: usize, limit: usize) {
        let message = format!(
            "statement of {len} bytes exceeds the sidecar's limit of {limit} bytes (rule builtin/statement-size)"
        );
        self.refuse_builtin(tag, "statement-size", SQLSTATE_TOO_LARGE, message);
    }

    fn refuse_builtin(&mut self, tag: u8, rule: &str, code: &'static str, message: String) {
        let id = self.next_statement_id();
        let record = StatementRecord {
            statement_id: id,
            decision: Decision::Deny,
            rule: Some(RuleRef {
                policy: BUILTIN_POLICY.into(),
                rule: rule.into(),
            }),
            reason: Some(message.clone()),
            ..empty_record(if tag == b'Q' {
                Protocol::Simple
            } else {
                Protocol::Parse
            })
        };
        self.record(record, Durable::Written);
        self.refuse(tag == b'P', code, message);
    }

    /// Keep what the client wrote in the batch, to tell its own names in server messages
    /// from masked values.
    fn note_text(&mut self, sql: &str) {
        if self.masking.as_ref().is_some_and(|m| m.has_columns()) {
            let mut t = self.lock();
            let batch = t.batches_sent + 1;
            t.batch_texts.push_back((batch, Arc::from(sql)));
        }
    }

    fn on_query(&mut self, sql: &str, m: &Message) {
        self.note_text(sql);
        let decided = self.decide(sql, Protocol::Simple);
        if decided.refusal.is_none() {
            if !decided.approvals.is_empty() {
                self.held = Some(hold::Held::Query {
                    message: m.clone(),
                    decided,
                });
                return;
            }
            if let Some(j) = crate::approval::justification_from_set(sql) {
                self.justification = Some(j);
            }
        }
        self.finish_query(decided, m);
    }

    fn finish_query(&mut self, decided: Decided, m: &Message) {
        let batch;
        {
            let t = self.lock();
            batch = t.batches_sent + 1;
        }
        let forwards = decided.refusal.is_none();
        let durable = if forwards {
            self.durability(decided.effect)
        } else {
            Durable::Written
        };
        let now = Instant::now();
        let analysis = decided.analysis.clone();
        let list = match analysis.as_ref() {
            Analysis::Statements(list) => Some(list),
            Analysis::Unanalyzable { .. } => None,
        };
        let mut changes = decided.changes.into_iter();
        for (i, (record, row_limits)) in decided.records.into_iter().enumerate() {
            let statement_id = record.statement_id;
            self.record(record, durable);
            if forwards {
                let staged = changes.next().unwrap_or_default();
                let plan = self.plan_of(list.and_then(|l| l.get(i)), &staged);
                let portal_rows = staged.portal_rows.clone();
                self.apply_staged(staged);
                let masking = self.inflight_masking(plan, None);
                self.lock().inflight.push_back(Inflight {
                    statement_id,
                    batch,
                    started: now,
                    row_limits,
                    portal_rows,
                    masking,
                });
            }
        }
        match decided.refusal {
            Some((code, message)) => self.refuse(false, code, message),
            None => {
                // A simple Query replaces the unnamed statement on the server.
                self.change_names(NameChange::Remove(String::new()));
                self.lock().batches_sent += 1;
                put_message(&mut self.out, m.tag, &m.body);
            }
        }
    }

    /// The masking plan of a forwarded statement: that of the definition it runs
    /// (`EXECUTE name`), or its own.
    fn plan_of(
        &self,
        facts: Option<&StatementFacts>,
        staged: &Staged,
    ) -> Option<Arc<StatementPlan>> {
        let m = self.masking.as_ref()?;
        if let Some(name) = &staged.executes {
            return Some(
                self.resolve_statement(name)
                    .and_then(|mut p| {
                        self.replan(&mut p);
                        p.masking
                    })
                    .unwrap_or_else(|| m.plan_unknown()),
            );
        }
        Some(match facts {
            Some(f) => m.plan(f, &self.search_path),
            None => m.plan_unknown(),
        })
    }

    /// Apply the name changes of a statement that is forwarded.
    fn apply_staged(&mut self, staged: Staged) {
        if let Some(p) = staged.prepare {
            self.parse_gen += 1;
            let plan = self.masking.as_ref().map(|m| {
                let inner = StatementFacts {
                    ast: Some(Arc::new(p.inner.clone())),
                    ..(*p.facts).clone()
                };
                m.plan(&inner, &self.search_path)
            });
            let def = p.prepared(plan, self.parse_gen, self.search_path.clone());
            self.change_names(NameChange::Define(p.name.clone(), Box::new(def)));
        }
        for change in staged.names {
            self.change_names(change);
        }
        for change in staged.cursors {
            self.cursors.apply(change);
        }
        match staged.portals {
            Some(names) => {
                for n in names {
                    self.portals.remove(&n);
                }
            }
            None => self.portals.clear(),
        }
    }

    fn on_parse(&mut self, name: String, sql: &str, m: &Message) {
        self.note_text(sql);
        let mut decided = self.decide(sql, Protocol::Parse);
        if decided.refusal.is_none() && decided.approvals.iter().any(hold::Need::at_bind) {
            let at_bind = std::mem::take(&mut decided.approvals);
            self.finish_parse(name, decided, m, None, at_bind);
            return;
        }
        if decided.refusal.is_none() && !decided.approvals.is_empty() {
            self.held = Some(hold::Held::Parse {
                name,
                message: m.clone(),
                decided,
            });
            return;
        }
        self.finish_parse(name, decided, m, None, Vec::new());
    }

    fn finish_parse(
        &mut self,
        name: String,
        decided: Decided,
        m: &Message,
        grant: Option<hold::GrantRef>,
        at_bind: Vec<hold::Need>,
    ) {
        let analysis = decided.analysis.clone();
        let first_facts = match analysis.as_ref() {
            Analysis::Statements(list) => list.first(),
            Analysis::Unanalyzable { .. } => None,
        };
        let mut plan = None;
        if decided.refusal.is_none() {
            // What the statement does to names is applied at Parse (a later Execute of it
            // could only do the same again).
            let mut changes = decided.changes.into_iter().map(|mut staged| {
                // A PREPARE held at Parse runs under the Parse's grant.
                if let (Some(p), Some(g)) = (staged.prepare.as_mut(), &grant) {
                    p.grant = Some(g.clone());
                }
                staged
            });
            if let Some(staged) = changes.next() {
                plan = self.plan_of(first_facts, &staged);
                self.apply_staged(staged);
            } else {
                plan = self.plan_of(first_facts, &Staged::default());
            }
            for staged in changes {
                self.apply_staged(staged);
            }
        }
        self.parse_gen += 1;
        let fetches = first_facts
            .and_then(|f| f.ast.as_deref())
            .map(|a| cursors::uses(a).fetches)
            .unwrap_or_default();
        let definitions: Vec<Arc<StatementFacts>> = first_facts
            .map(|f| Arc::new(f.clone()))
            .into_iter()
            .collect();
        let mut first: Option<Prepared> = None;
        for (record, row_limits) in decided.records {
            if first.is_none() {
                first = Some(Prepared {
                    template: record.clone(),
                    row_limits,
                    effect: decided.effect,
                    grant: grant.clone(),
                    at_bind: at_bind.clone(),
                    masking: plan.clone(),
                    name: name.clone(),
                    generation: self.parse_gen,
                    formats: Vec::new(),
                    definitions: definitions.clone(),
                    ambiguous: false,
                    fetches: fetches.clone(),
                    path: self.search_path.clone(),
                });
            }
            // Parsing changes nothing; each Execute is recorded and waited for.
            self.record(record, Durable::Written);
        }
        match decided.refusal {
            // The server keeps what the name held; the stand-in replaces the unnamed one.
            Some((code, message)) => self.refuse(true, code, message),
            None => {
                let prepared = first.unwrap_or_else(|| Prepared {
                    template: empty_record(Protocol::Parse),
                    row_limits: Vec::new(),
                    effect: Effect::Reads,
                    grant: None,
                    at_bind: Vec::new(),
                    masking: plan.clone(),
                    name: name.clone(),
                    generation: self.parse_gen,
                    formats: Vec::new(),
                    definitions: Vec::new(),
                    ambiguous: false,
                    fetches: fetches.clone(),
                    path: self.search_path.clone(),
                });
                self.change_names(NameChange::Define(name, Box::new(prepared)));
                put_message(&mut self.out, m.tag, &m.body);
            }
        }
    }

    /// Record an Execute; `false` when it was refused instead of forwarded.
    fn on_execute(&mut self, portal: &str, prepared: Prepared) -> bool {
        let statement_id = self.next_statement_id();
        let mut record = StatementRecord {
            statement_id,
            protocol: Protocol::Execute,
            ..prepared.template.clone()
        };
        if let Some(grant) = &prepared.grant {
            if !self.use_prepared_grant(grant, &mut record) {
                return false;
            }
        } else if !prepared.at_bind.is_empty() {
            // Approved at Bind or not at all: a portal without its grant does not run.
            let message =
                "statement requires approval of its bound values, and this portal has none"
                    .to_owned();
            record.reason = Some(message.clone());
            self.record(record, Durable::Written);
            self.refuse(true, SQLSTATE_REFUSED, message);
            return false;
        }
        let durable = self.durability(prepared.effect);
        self.record(record, durable);
        let masking = self.inflight_masking(
            prepared.masking.clone(),
            Some((prepared.name, prepared.generation, prepared.formats)),
        );
        // Rows count per portal, across its Executes, and per cursor it fetches from.
        let mut row_limits = prepared.row_limits;
        let mut portal_rows = self.cursors.get(portal).map(|p| p.sent.clone());
        for name in &prepared.fetches {
            let rows = self.fetched(name);
            row_limits.extend(rows.limits.iter().cloned());
            portal_rows = Some(rows.sent.clone());
        }
        let mut t = self.lock();
        let batch = t.batches_sent + 1;
        t.inflight.push_back(Inflight {
            statement_id,
            batch,
            started: Instant::now(),
            row_limits,
            portal_rows,
            masking,
        });
        true
    }

    fn inflight_masking(
        &self,
        plan: Option<Arc<StatementPlan>>,
        prepared: Option<(String, u64, Vec<i16>)>,
    ) -> Option<InflightMasking> {
        let session = self.masking.clone()?;
        Some(InflightMasking {
            session: session.clone(),
            // Without a plan (a statement the sidecar did not analyse) everything is unknown.
            plan: plan.unwrap_or_else(|| session.plan_unknown()),
            prepared,
        })
    }

    /// A Describe: the result path learns from its answer the columns of a prepared
    /// statement, which Executes without a RowDescription of their own need.
    fn on_describe(&mut self, m: &Message) -> Result<(), ProtocolError> {
        if self.masking.is_none() {
            return Ok(());
        }
        let mut f = Fields::new(&m.body);
        let kind = f.byte()?;
        let name = f.cstr()?;
        let statement = match kind {
            b'S' => self
                .resolve_statement(name)
                .map(|p| (p.name.clone(), p.generation)),
            _ => self
                .portals
                .get(name)
                .cloned()
                .flatten()
                .map(|p| (p.name, p.generation)),
        };
        let mut t = self.lock();
        let batch = t.batches_sent + 1;
        t.describes.push_back(Describe { batch, statement });
        Ok(())
    }

    fn on_function_call(&mut self, m: &Message) {
        let verdict = self
            .guardrails
            .decide_unanalyzable("fast-path function calls cannot be analysed");
        let statement_id = self.next_statement_id();
        let record = StatementRecord {
            statement_id,
            ..self.verdict_record(Protocol::FunctionCall, &verdict)
        };
        let durable = if verdict.forwards() {
            Durable::BeforeForward
        } else {
            Durable::Written
        };
        self.record(record, durable);
        if verdict.forwards() {
            self.search_path.apply(&PathChange::Unknown);
            let mut t = self.lock();
            t.batches_sent += 1;
            drop(t);
            put_message(&mut self.out, m.tag, &m.body);
        } else {
            self.refuse(false, SQLSTATE_REFUSED, verdict.reason.unwrap_or_default());
        }
    }
}

async fn backend(
    mut reader: BufReader<ReadHalf<UpstreamStream>>,
    client: ClientWriter,
    tracker: Arc<Mutex<Tracker>>,
    res: Arc<Resource>,
    ctx: RecordContext,
) -> String {
    let mut path = ResultPath::default();
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        let read = codec::read_message(&mut reader, codec::HARD_MAX_MESSAGE, |_| false).await;
        let msg = match read {
            Ok(Read::Message(m)) => m,
            Ok(Read::Eof) | Ok(Read::Oversized { .. }) => {
                put_error(
                    &mut out,
                    "FATAL",
                    "08006",
                    "the upstream server closed the connection",
                );
                flush_client(&client, &mut out).await;
                return "server closed the connection".to_owned();
            }
            Err(e) => {
                put_error(
                    &mut out,
                    "FATAL",
                    "08006",
                    &format!("upstream connection failed: {e}"),
                );
                flush_client(&client, &mut out).await;
                return format!("server connection: {e}");
            }
        };
        let outcome = {
            let mut t = tracker.lock().unwrap_or_else(|p| p.into_inner());
            path.on_message(&msg, &mut t, &mut out)
        };
        for (completion, seconds) in outcome.completions {
            res.metrics.statement_seconds.observe(seconds);
            let _ = res
                .spool
                .append_later(&ctx, AuditEvent::Completion(completion));
        }
        if reader.buffer().is_empty() || out.len() >= FLUSH_BYTES {
            if !flush_client(&client, &mut out).await {
                return "client connection closed".to_owned();
            }
            res.metrics.spool_bytes.set(res.spool.bytes() as i64);
        }
    }
}

async fn flush_client(client: &ClientWriter, out: &mut BytesMut) -> bool {
    if out.is_empty() {
        return true;
    }
    let mut w = client.lock().await;
    let ok = w.write_all(out).await.is_ok();
    out.clear();
    ok
}
