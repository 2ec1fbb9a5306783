//! The server-to-client direction: every backend message passes through here. This module
//! tracks which statement a result belongs to (for completion records and row limits),
//! replaces the errors of refused statements with the sidecar's own, and is the one place
//! that sees RowDescription and DataRow, so that result rewriting can be added here.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use portcullis_crds::audit::{AuditEvent, CompletionRecord, MaskedColumn, StatementError};
use portcullis_crds::gateway_policy::GuardrailAction;

use super::codec::{self, put_error, put_message, Message};
use crate::masking::engine::{
    apply_formats, parse_row_description, scrub_notice, CopyMasking, ResultColumn, ResultMasking,
    SessionMasking, StatementPlan,
};
use crate::policy::guardrails::RowLimit;

/// SQLSTATE of every refusal (insufficient_privilege).
pub const SQLSTATE_REFUSED: &str = "42501";

/// A statement forwarded and awaiting its result.
#[derive(Debug)]
pub struct Inflight {
    /// Statement id in the audit records.
    pub statement_id: u64,
    /// Batch (Sync or Query) it belongs to.
    pub batch: u64,
    /// When it was forwarded.
    pub started: Instant,
    /// Result-size guardrails.
    pub row_limits: Vec<Arc<RowLimit>>,
    /// Rows already sent through the portal or cursor the statement reads from (a protocol
    /// portal executed in several Executes, a cursor FETCHed several times): its limits count
    /// them all.
    pub portal_rows: Option<Arc<AtomicU64>>,
    /// How its result is masked (`None`: no masking rule applies to the session).
    pub masking: Option<InflightMasking>,
}

/// What the result path needs to mask one statement's result.
#[derive(Clone)]
pub struct InflightMasking {
    /// The session's masking.
    pub session: Arc<SessionMasking>,
    /// The statement's plan (lineage).
    pub plan: Arc<StatementPlan>,
    /// Extended protocol: the prepared statement (name, parse generation) and Bind's result
    /// format codes; the result has no RowDescription of its own.
    pub prepared: Option<(String, u64, Vec<i16>)>,
}

impl std::fmt::Debug for InflightMasking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflightMasking")
            .field("plan", &self.plan)
            .field("prepared", &self.prepared)
            .finish()
    }
}

/// A Describe sent to the server, awaiting its RowDescription or NoData.
#[derive(Debug)]
pub struct Describe {
    /// Batch it belongs to.
    pub batch: u64,
    /// The prepared statement described (name, parse generation).
    pub statement: Option<(String, u64)>,
}

/// A refused statement whose stand-in error will come back from the server.
#[derive(Debug)]
pub struct Marker {
    /// Text that identifies the stand-in error.
    pub token: String,
    /// Batch it belongs to.
    pub batch: u64,
    /// SQLSTATE for the client.
    pub code: &'static str,
    /// Message for the client.
    pub message: String,
}

/// Bookkeeping shared by both directions of a session.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Batches (Query, Sync, FunctionCall) forwarded.
    pub batches_sent: u64,
    /// ReadyForQuery messages received.
    pub batches_done: u64,
    /// Transaction status of the last ReadyForQuery: `I` idle, `T` in a transaction
    /// block, `E` in a failed block (0 before the first).
    pub transaction: u8,
    /// Refused statements in flight.
    pub markers: VecDeque<Marker>,
    /// Forwarded statements awaiting completion, in order.
    pub inflight: VecDeque<Inflight>,
    /// Describes awaiting their answer, in order.
    pub describes: VecDeque<Describe>,
    /// Columns of prepared statements, from the answers to Describe: name to (parse
    /// generation, columns).
    pub descriptions: HashMap<String, (u64, Arc<Vec<ResultColumn>>)>,
    /// The session's masking, for messages outside results (errors, notices, notifications).
    pub masking: Option<Arc<SessionMasking>>,
    /// Statement texts the client sent, by batch, while column masking applies: a quoted
    /// name in a server message that the client wrote itself is no masked value.
    pub batch_texts: VecDeque<(u64, Arc<str>)>,
    /// Recent batches whose answer held an error (a statement of them may not have run).
    pub failed_batches: std::collections::BTreeSet<u64>,
}

/// Failed batches remembered.
const FAILED_BATCHES_KEPT: usize = 65536;

/// Result state of the statement at the head of the queue.
#[derive(Debug, Default)]
struct Current {
    rows: u64,
    bytes: u64,
    cut: Option<String>,
    flagged: bool,
}

/// What the backend direction has to do after looking at a message.
pub struct Outcome {
    /// Completion records to append.
    pub completions: Vec<(CompletionRecord, f64)>,
}

/// Masking state of the result in progress.
#[derive(Default)]
enum MaskState {
    /// Not decided yet (decided at the first row or CopyOutResponse).
    #[default]
    Unset,
    /// Rows pass untouched.
    Pass,
    /// Rows are rewritten.
    Rows(Box<ResultMasking>),
    /// COPY data is rewritten.
    Copy(Box<CopyMasking>),
}

/// Per-session state of the result path.
#[derive(Default)]
pub struct ResultPath {
    current: Current,
    /// The last RowDescription (column names and types), kept for result rewriting.
    pub row_description: Option<bytes::Bytes>,
    /// Columns of the result in progress, from its RowDescription.
    columns: Option<Vec<ResultColumn>>,
    mask: MaskState,
}

const MASKING_FAILED: &str =
    "the result could not be masked and was withheld (rule builtin/masking)";

impl ResultPath {
    /// Decide how the result of the head statement is masked, at its first row.
    fn start_rows(&mut self, tracker: &Tracker, fields: usize) -> MaskState {
        let Some(m) = tracker.inflight.front().and_then(|h| h.masking.clone()) else {
            return MaskState::Pass;
        };
        let columns = match (self.columns.take(), &m.prepared) {
            (Some(c), _) => c,
            (None, Some((name, gen, formats))) => {
                let mut cols = match tracker.descriptions.get(name) {
                    Some((g, cols)) if g == gen && cols.len() == fields => cols.as_ref().clone(),
                    _ => unknown_columns(fields),
                };
                apply_formats(&mut cols, formats);
                cols
            }
            (None, None) => unknown_columns(fields),
        };
        let r = m.session.result(&m.plan, &columns);
        if r.is_noop() {
            MaskState::Pass
        } else {
            MaskState::Rows(Box::new(r))
        }
    }

    fn start_copy(&mut self, tracker: &Tracker, body: &[u8]) -> Result<MaskState, ()> {
        let Some(m) = tracker.inflight.front().and_then(|h| h.masking.clone()) else {
            return Ok(MaskState::Pass);
        };
        let binary = body.first().is_some_and(|f| *f == 1);
        let n = body
            .get(1..3)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
            .unwrap_or(0);
        let Some(format) = m.plan.copy.clone() else {
            // A COPY the analysis did not see as COPY TO STDOUT: its format is unknown.
            return Err(());
        };
        if binary != (format == crate::masking::engine::CopyFormat::Binary) {
            return Err(());
        }
        let c = CopyMasking::new(m.session.copy(&m.plan, n, binary), format);
        Ok(if c.is_noop() {
            MaskState::Pass
        } else {
            MaskState::Copy(Box::new(c))
        })
    }

    fn take_report(&mut self) -> Vec<MaskedColumn> {
        self.columns = None;
        match std::mem::take(&mut self.mask) {
            MaskState::Rows(r) => r.report(),
            MaskState::Copy(c) => c.report(),
            _ => Vec::new(),
        }
    }
}

/// What the client wrote in the batch being answered.
fn known_text(tracker: &Tracker) -> String {
    let answering = tracker.batches_done + 1;
    let mut text = String::new();
    for (_, t) in tracker.batch_texts.iter().filter(|(b, _)| *b == answering) {
        text.push_str(t);
        text.push('\n');
    }
    text
}

fn unknown_columns(n: usize) -> Vec<ResultColumn> {
    (0..n)
        .map(|_| ResultColumn {
            name: String::new(),
            type_oid: 0,
            binary: false,
            origin: None,
        })
        .collect()
}

fn describing(tracker: &Tracker) -> bool {
    let answering = tracker.batches_done + 1;
    tracker
        .describes
        .front()
        .is_some_and(|d| d.batch == answering)
}

fn rows_of_tag(tag: &str) -> u64 {
    tag.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

impl ResultPath {
    /// Handle one backend message: append what the client should see to `out` and return
    /// the completion records it produced.
    pub fn on_message(
        &mut self,
        msg: &Message,
        tracker: &mut Tracker,
        out: &mut BytesMut,
    ) -> Outcome {
        let mut completions = Vec::new();
        match msg.tag {
            b'T' => {
                if describing(tracker) {
                    if let Some(Describe {
                        statement: Some((name, gen)),
                        ..
                    }) = tracker.describes.pop_front()
                    {
                        let cols = parse_row_description(&msg.body).unwrap_or_default();
                        tracker.descriptions.insert(name, (gen, Arc::new(cols)));
                    }
                    self.row_description = Some(msg.body.clone());
                    put_message(out, msg.tag, &msg.body);
                } else {
                    self.mask = MaskState::Unset;
                    self.row_description = Some(msg.body.clone());
                    let scrubbed = tracker
                        .inflight
                        .front()
                        .and_then(|h| h.masking.as_ref())
                        .and_then(|m| {
                            m.session.scrub_row_description(
                                &m.plan,
                                &msg.body,
                                &known_text(tracker),
                            )
                        });
                    let body = scrubbed.as_deref().unwrap_or(&msg.body);
                    self.columns = parse_row_description(body);
                    put_message(out, msg.tag, body);
                }
            }
            b'n' => {
                if describing(tracker) {
                    if let Some(Describe {
                        statement: Some((name, gen)),
                        ..
                    }) = tracker.describes.pop_front()
                    {
                        tracker
                            .descriptions
                            .insert(name, (gen, Arc::new(Vec::new())));
                    }
                }
                put_message(out, msg.tag, &msg.body);
            }
            b'D' => {
                if matches!(self.mask, MaskState::Unset) {
                    let fields = msg
                        .body
                        .get(..2)
                        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                        .unwrap_or(0);
                    self.mask = self.start_rows(tracker, fields);
                }
                self.current.bytes += msg.body.len() as u64 + 5;
                self.count_row(tracker);
                if self.current.cut.is_none() {
                    match &mut self.mask {
                        MaskState::Rows(m) => {
                            if m.data_row(&msg.body, out).is_err() {
                                self.current.cut = Some(MASKING_FAILED.to_owned());
                            }
                        }
                        _ => put_message(out, msg.tag, &msg.body),
                    }
                }
            }
            b'H' => {
                match self.start_copy(tracker, &msg.body) {
                    Ok(state) => self.mask = state,
                    Err(()) => {
                        self.mask = MaskState::Pass;
                        self.current.cut = Some(
                            "COPY TO STDOUT of data under masking rules in a format the sidecar cannot mask is refused (rule builtin/masking)".to_owned(),
                        );
                    }
                }
                put_message(out, msg.tag, &msg.body);
            }
            b'C' | b's' | b'I' => {
                let tag = if msg.tag == b'C' {
                    codec::Fields::new(&msg.body).cstr().ok().map(str::to_owned)
                } else {
                    None
                };
                let cut = self.current.cut.take();
                match &cut {
                    Some(message) => put_error(out, "ERROR", SQLSTATE_REFUSED, message),
                    None => put_message(out, msg.tag, &msg.body),
                }
                let rows = match (&tag, msg.tag) {
                    (Some(t), _) if !t.starts_with("SELECT") && !t.starts_with("COPY") => {
                        rows_of_tag(t).max(self.current.rows)
                    }
                    (Some(t), _) => rows_of_tag(t),
                    _ => self.current.rows,
                };
                let error = cut.map(|message| StatementError {
                    sqlstate: SQLSTATE_REFUSED.to_owned(),
                    message,
                });
                if let Some(c) = self.complete(tracker, rows, tag, error, Ran::Yes) {
                    completions.push(c);
                }
            }
            b'E' => {
                tracker.failed_batches.insert(tracker.batches_done + 1);
                if tracker.failed_batches.len() > FAILED_BATCHES_KEPT {
                    tracker.failed_batches.pop_first();
                }
                let mut replaced = false;
                if !tracker.markers.is_empty() {
                    let fields = codec::parse_error_fields(&msg.body);
                    if let Some(i) = tracker
                        .markers
                        .iter()
                        .position(|m| fields.message.contains(&m.token))
                    {
                        if let Some(m) = tracker.markers.remove(i) {
                            put_error(out, "ERROR", m.code, &m.message);
                            replaced = true;
                        }
                    }
                }
                if !replaced {
                    match &tracker.masking {
                        Some(m) => scrub_notice(m, &msg.body, out, msg.tag, &known_text(tracker)),
                        None => put_message(out, msg.tag, &msg.body),
                    }
                    let fields = codec::parse_error_fields(&msg.body);
                    let error = Some(StatementError {
                        sqlstate: fields.code,
                        message: crate::policy::fingerprint::value_free(&fields.message),
                    });
                    let current_batch = tracker.batches_done + 1;
                    if tracker
                        .inflight
                        .front()
                        .is_some_and(|f| f.batch == current_batch)
                    {
                        if let Some(c) = self.complete(tracker, 0, None, error, Ran::Failed) {
                            completions.push(c);
                        }
                    }
                }
            }
            b'Z' => {
                tracker.batches_done += 1;
                tracker.transaction = msg.body.first().copied().unwrap_or(0);
                let done = tracker.batches_done;
                // Statements of the finished batch that produced no result were skipped
                // by the server after an earlier error.
                while tracker.inflight.front().is_some_and(|f| f.batch <= done) {
                    let error = Some(StatementError {
                        sqlstate: "00000".to_owned(),
                        message: "not executed".to_owned(),
                    });
                    match self.complete(tracker, 0, None, error, Ran::Skipped) {
                        Some(c) => completions.push(c),
                        // An entry of an older batch: drop it so the loop always advances.
                        None => {
                            tracker.inflight.pop_front();
                        }
                    }
                }
                tracker.markers.retain(|m| m.batch > done);
                while tracker.batch_texts.front().is_some_and(|(b, _)| *b <= done) {
                    tracker.batch_texts.pop_front();
                }
                // Describes of the finished batch that got no answer were skipped.
                tracker.describes.retain(|d| d.batch > done);
                if let Some(m) = &tracker.masking {
                    m.ready(tracker.transaction);
                }
                self.columns = None;
                self.mask = MaskState::Unset;
                put_message(out, msg.tag, &msg.body);
            }
            b'd' => {
                self.current.bytes += msg.body.len() as u64 + 5;
                // COPY TO STDOUT sends one row per message; the binary format's trailer is
                // no row.
                if msg.body.as_ref() != [0xff, 0xff] {
                    self.count_row(tracker);
                }
                if self.current.cut.is_none() {
                    match &mut self.mask {
                        MaskState::Copy(c) => match c.data(&msg.body) {
                            Ok(bytes) if bytes.is_empty() => {}
                            Ok(bytes) => put_message(out, msg.tag, &bytes),
                            Err(_) => self.current.cut = Some(MASKING_FAILED.to_owned()),
                        },
                        MaskState::Pass => put_message(out, msg.tag, &msg.body),
                        // COPY data that no CopyOutResponse announced (out of order, or a
                        // CopyBothResponse stream) has no format to mask by: withheld
                        // where masking applies.
                        MaskState::Unset | MaskState::Rows(_) if tracker.masking.is_some() => {
                            self.current.cut = Some(MASKING_FAILED.to_owned())
                        }
                        MaskState::Unset | MaskState::Rows(_) => {
                            put_message(out, msg.tag, &msg.body)
                        }
                    }
                }
            }
            b'c' => {
                if self.current.cut.is_none() {
                    put_message(out, msg.tag, &msg.body);
                }
            }
            b'N' => match &tracker.masking {
                Some(m) => scrub_notice(m, &msg.body, out, msg.tag, &known_text(tracker)),
                None => put_message(out, msg.tag, &msg.body),
            },
            b'A' => match &tracker.masking {
                Some(m) => put_notification(m, &msg.body, out),
                None => put_message(out, msg.tag, &msg.body),
            },
            b'S' => match &tracker.masking {
                Some(m) => put_parameter_status(m, &msg.body, out),
                None => put_message(out, msg.tag, &msg.body),
            },
            b'V' => match &tracker.masking {
                // A fast-path function result has no lineage: withheld.
                Some(m) if m.has_columns() => put_message(out, b'V', &(-1i32).to_be_bytes()),
                _ => put_message(out, msg.tag, &msg.body),
            },
            _ => put_message(out, msg.tag, &msg.body),
        }
        Outcome { completions }
    }

    /// Count one row of the result in progress against the row limits of its statement
    /// (and of the portal or cursor it reads from), and cut the result past a denying limit.
    fn count_row(&mut self, tracker: &Tracker) {
        self.current.rows += 1;
        let Some(head) = tracker.inflight.front() else {
            return;
        };
        let seen = match &head.portal_rows {
            Some(sent) => sent.fetch_add(1, Ordering::Relaxed) + 1,
            None => self.current.rows,
        };
        if self.current.cut.is_some() {
            return;
        }
        for limit in &head.row_limits {
            if seen > limit.limit {
                match limit.action {
                    GuardrailAction::Audit => self.current.flagged = true,
                    _ => self.current.cut = Some(limit.message.clone()),
                }
            }
        }
    }

    fn complete(
        &mut self,
        tracker: &mut Tracker,
        rows: u64,
        command_tag: Option<String>,
        error: Option<StatementError>,
        ran: Ran,
    ) -> Option<(CompletionRecord, f64)> {
        let at_ready = ran == Ran::Skipped;
        // Only a statement of the batch being answered can complete (at ReadyForQuery the
        // finished batch has already been counted).
        let answering = if at_ready {
            tracker.batches_done
        } else {
            tracker.batches_done + 1
        };
        if tracker
            .inflight
            .front()
            .is_none_or(|h| h.batch != answering)
        {
            self.current = Current::default();
            self.take_report();
            return None;
        }
        let current = std::mem::take(&mut self.current);
        let masked = self.take_report();
        let head = tracker.inflight.pop_front()?;
        if let Some(m) = &head.masking {
            m.session
                .completed(&m.plan, ran == Ran::Yes, command_tag.as_deref());
        }
        let elapsed = head.started.elapsed();
        let mut error = error;
        if current.flagged && error.is_none() {
            if let Some(l) = head.row_limits.first() {
                error = None;
                tracing::info!(rule = %l.rule.rule, rows, "result over rowsOver limit (audit)");
            }
        }
        Some((
            CompletionRecord {
                statement_id: head.statement_id,
                rows,
                bytes: current.bytes,
                duration_micros: elapsed.as_micros() as u64,
                command_tag,
                error,
                masked,
            },
            elapsed.as_secs_f64(),
        ))
    }
}

/// Whether the server executed a statement whose completion is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ran {
    /// It completed (even if the sidecar then withheld its result).
    Yes,
    /// It failed.
    Failed,
    /// It was skipped after an earlier error (found at ReadyForQuery).
    Skipped,
}

/// Parameters a client can set to any text with `set_config`, which reports them back.
const FREE_TEXT_PARAMETERS: &[&str] = &["application_name", "search_path"];

fn put_parameter_status(m: &SessionMasking, body: &[u8], out: &mut BytesMut) {
    let mut f = codec::Fields::new(body);
    let (Ok(name), Ok(value)) = (f.cstr(), f.cstr()) else {
        return;
    };
    // After set_config in this session, a reported free-text value may have been computed
    // from masked data (`set_config('application_name', (SELECT email ...), false)`).
    let value = if m.settings_tainted() && FREE_TEXT_PARAMETERS.contains(&name) {
        crate::masking::strategy::REDACTED.to_owned()
    } else {
        m.detect_in_text(value)
    };
    let mut b = Vec::with_capacity(body.len());
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(value.as_bytes());
    b.push(0);
    put_message(out, b'S', &b);
}

fn put_notification(m: &SessionMasking, body: &[u8], out: &mut BytesMut) {
    let mut f = codec::Fields::new(body);
    let (Ok(pid), Ok(channel), Ok(payload)) = (f.i32(), f.cstr(), f.cstr()) else {
        return;
    };
    // A payload is computed by whatever code notified; with column masking it has no
    // lineage and is withheld, otherwise detectors run over it.
    let payload = if m.has_columns() && !payload.is_empty() {
        crate::masking::strategy::REDACTED.to_owned()
    } else {
        m.detect_in_text(payload)
    };
    let mut b = Vec::with_capacity(body.len());
    b.extend_from_slice(&pid.to_be_bytes());
    b.extend_from_slice(channel.as_bytes());
    b.push(0);
    b.extend_from_slice(payload.as_bytes());
    b.push(0);
    put_message(out, b'A', &b);
}

/// The audit event of a completion.
pub fn completion_event(c: CompletionRecord) -> AuditEvent {
    AuditEvent::Completion(c)
}

/// A server error message fit for the audit record: PostgreSQL quotes the input values it
/// complains about (`invalid input syntax for type integer: "a@b.example"`) the same way as
/// names, so every quoted part becomes `"?"`, and runs of six or more digits (card and account
/// numbers outside quotes) become `?`. The SQLSTATE and the normalised statement say the rest.
pub fn without_values(message: &str) -> String {
    without_values_except(message, &|_| false)
}

/// [`without_values`], keeping quoted parts and numbers for which `keep` holds (names the
/// client wrote itself).
pub fn without_values_except(message: &str, keep: &dyn Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                // Up to the closing quote; an unterminated quote hides the rest.
                let mut inner = String::new();
                let mut closed = false;
                for d in chars.by_ref() {
                    if d == c {
                        closed = true;
                        break;
                    }
                    inner.push(d);
                }
                out.push(c);
                if closed && !inner.is_empty() && keep(&inner) {
                    out.push_str(&inner);
                } else {
                    out.push('?');
                }
                if closed {
                    out.push(c);
                }
            }
            c if c.is_ascii_digit() => {
                let mut run = String::from(c);
                while let Some(d) = chars.next_if(|d| d.is_ascii_digit() || *d == ' ' || *d == '-')
                {
                    run.push(d);
                }
                let trailing: String = run
                    .chars()
                    .rev()
                    .take_while(|d| !d.is_ascii_digit())
                    .collect();
                let digits = run.chars().filter(char::is_ascii_digit).count();
                let number = run.trim_end_matches(|d: char| !d.is_ascii_digit());
                if digits >= 6 && !keep(number) {
                    out.push('?');
                } else {
                    out.push_str(number);
                }
                out.extend(trailing.chars().rev());
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod value_tests {
    use super::without_values;

    #[test]
    fn quoted_values_and_long_numbers_leave_error_messages() {
        assert_eq!(
            without_values("invalid input syntax for type integer: \"anna.m@example.com\""),
            "invalid input syntax for type integer: \"?\""
        );
        assert_eq!(
            without_values("value \"4111 1111 1111 1111\" is out of range"),
            "value \"?\" is out of range"
        );
        assert_eq!(
            without_values("card 4111-1111-1111-1111 rejected at line 12"),
            "card ? rejected at line 12"
        );
        assert_eq!(
            without_values("unterminated 'DE89370400440532013000"),
            "unterminated '?"
        );
        assert_eq!(without_values("division by zero"), "division by zero");
        assert_eq!(
            without_values("numeric field overflow 10 2"),
            "numeric field overflow 10 2"
        );
    }
}
