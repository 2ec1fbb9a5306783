//! The shipper: sends the spool to the audit service in batches and forgets only what the
//! service acknowledged.
//!
//! It reads complete lines (ending in `\n`) from the spool's segment files in order, posts
//! them with the pod's projected service-account token (read afresh for every batch, the
//! kubelet rotates it), and moves a durable cursor (segment index and byte offset, written to
//! a temporary file, fsync'd and renamed) past what the service acknowledged. A segment file
//! is deleted once everything in it was acknowledged and a later segment exists, so the file
//! the spool appends to is never deleted. After a crash the records past the cursor are sent
//! again; the service keys records by pod, session and sequence number and does not append
//! them twice.
//!
//! While the service is unreachable or refuses, the shipper retries with exponential backoff
//! and jitter, counts the failure (`audit_ship_failures_total`), keeps the depth gauge
//! (`audit_unshipped_bytes`) current and says in the log what the policies'
//! `onAuditUnavailable` does about it: `deny` refuses new statements once the unacknowledged
//! spool exceeds `spoolLimitBytes` (the session checks [`Spool::bytes`]), `continue` keeps
//! serving and spooling.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_audit::client::{AuditClient, ShipError};
use portcullis_crds::audit::{AuditRecord, MAX_RECORD_BYTES};
use portcullis_crds::gateway_policy::AuditUnavailableAction;
use portcullis_crds::sidecar_config::{AuditConfig, PolicyConfig};
use rand::Rng;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::watch;

use crate::audit::spool::{segment_index, Spool};
use crate::metrics::Metrics;

/// Name of the cursor file in the spool directory.
pub const CURSOR_FILE: &str = "shipper.cursor";
/// Name of the file in the spool directory that keeps lines that are not audit records.
pub const REJECTED_FILE: &str = "rejected.jsonl";

/// Why the shipper cannot start or go on.
#[derive(Debug, Error)]
pub enum ShipperError {
    /// The configuration names an audit service but not how to reach it.
    #[error("audit shipping: {0}")]
    Config(String),
    /// The spool directory or the cursor cannot be read or written.
    #[error("audit shipping: {0}")]
    Io(String),
    /// The audit service did not acknowledge a batch.
    #[error(transparent)]
    Ship(#[from] ShipError),
    /// The service acknowledged less than it was sent.
    #[error("audit service acknowledged {acknowledged} of {sent} records")]
    Partial {
        /// Records sent.
        sent: usize,
        /// Records acknowledged.
        acknowledged: usize,
    },
}

impl ShipperError {
    /// The failure reason label of the metric.
    pub fn reason(&self) -> &'static str {
        match self {
            ShipperError::Config(_) => "config",
            ShipperError::Io(_) => "local",
            ShipperError::Ship(ShipError::Unreachable(_)) => "unreachable",
            ShipperError::Ship(ShipError::Refused { .. }) => "refused",
            ShipperError::Ship(ShipError::Failed { .. }) | ShipperError::Partial { .. } => "failed",
            ShipperError::Ship(ShipError::Local(_)) => "local",
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ShipperError + '_ {
    move |e| ShipperError::Io(format!("{}: {e}", path.display()))
}

/// How the shipper reaches the service and paces itself.
#[derive(Clone, Debug)]
pub struct ShipperOptions {
    /// Base URL of the audit service (`https://host:port`).
    pub url: String,
    /// PEM CA that verifies the service.
    pub ca_file: PathBuf,
    /// The projected service-account token (audience `portcullis-audit`).
    pub token_file: PathBuf,
    /// Most records per batch.
    pub batch_records: usize,
    /// Most bytes of spool lines per batch (a single longer line is sent alone).
    pub batch_bytes: usize,
    /// Bound on each request.
    pub request_timeout: Duration,
    /// How long to wait for new records before looking at the spool again.
    pub idle_poll: Duration,
    /// First retry delay after a failure.
    pub backoff_min: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
}

impl ShipperOptions {
    /// Options from the configuration's `audit` section; `None` when it names no service.
    pub fn from_config(audit: &AuditConfig) -> Result<Option<ShipperOptions>, ShipperError> {
        let Some(url) = &audit.service_url else {
            return Ok(None);
        };
        let ca_file = audit.ca_file.clone().ok_or_else(|| {
            ShipperError::Config("audit.serviceUrl is set but audit.caFile is not".into())
        })?;
        let token_file = audit.token_file.clone().ok_or_else(|| {
            ShipperError::Config("audit.serviceUrl is set but audit.tokenFile is not".into())
        })?;
        Ok(Some(ShipperOptions {
            url: url.clone(),
            ca_file,
            token_file,
            batch_records: 2000,
            batch_bytes: 2 << 20,
            request_timeout: Duration::from_secs(15),
            idle_poll: Duration::from_millis(500),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
        }))
    }
}

/// Everything before `offset` in segment `segment`, and every earlier segment, was
/// acknowledged by the audit service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Segment index.
    pub segment: u64,
    /// Byte offset in that segment.
    pub offset: u64,
}

impl Cursor {
    /// Read the cursor of a spool directory (the start when there is none).
    pub fn load(dir: &Path) -> Result<Cursor, ShipperError> {
        let path = dir.join(CURSOR_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ShipperError::Io(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor::default()),
            Err(e) => Err(ShipperError::Io(format!("{}: {e}", path.display()))),
        }
    }

    /// Write the cursor durably: a temporary file, fsync'd, renamed over the old one, and the
    /// directory fsync'd.
    pub fn store(&self, dir: &Path) -> Result<(), ShipperError> {
        let tmp = dir.join(format!("{CURSOR_FILE}.tmp"));
        let path = dir.join(CURSOR_FILE);
        let bytes = serde_json::to_vec(self).map_err(|e| ShipperError::Io(e.to_string()))?;
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(&bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
        Ok(())
    }
}

/// What the policies do while the service is unavailable (for the log lines).
#[derive(Clone, Debug, Default)]
pub struct UnavailablePolicies {
    /// The smallest bound of a `deny` policy, with that policy's name.
    pub deny: Option<(String, u64)>,
    /// Names of the `continue` policies.
    pub keep_going: Vec<String>,
}

impl UnavailablePolicies {
    /// From the compiled policies.
    pub fn from_policies(policies: &[PolicyConfig]) -> Self {
        let deny = policies
            .iter()
            .filter(|p| p.on_audit_unavailable == AuditUnavailableAction::Deny)
            .min_by_key(|p| p.spool_limit_bytes)
            .map(|p| (p.name.clone(), p.spool_limit_bytes));
        let keep_going = policies
            .iter()
            .filter(|p| p.on_audit_unavailable == AuditUnavailableAction::Continue)
            .map(|p| p.name.clone())
            .collect();
        Self { deny, keep_going }
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing new to ship.
    Idle,
    /// This many records were acknowledged (or a segment was finished).
    Shipped(usize),
}

struct Segment {
    index: u64,
    path: PathBuf,
    len: u64,
}

struct Batch {
    records: Vec<AuditRecord>,
    /// Bytes of spool the batch covers (lines shipped and lines set aside).
    consumed: u64,
    /// Lines that are not audit records, set aside instead of shipped.
    rejected: Vec<Vec<u8>>,
    /// The segment ends in bytes that are not a complete line.
    torn_tail: bool,
}

/// Ships one spool directory.
pub struct Shipper {
    dir: PathBuf,
    spool: Spool,
    metrics: Metrics,
    options: ShipperOptions,
    policies: UnavailablePolicies,
    client: Option<AuditClient>,
    cursor: Cursor,
    /// Bytes acknowledged since the spool was opened, the segments found then included.
    acknowledged: u64,
    consecutive_failures: u32,
    past_bound_logged: bool,
}

impl Shipper {
    /// A shipper of the spool in `dir` (the directory `spool` was opened on), resuming at the
    /// durable cursor.
    pub fn new(
        dir: &Path,
        spool: Spool,
        metrics: Metrics,
        options: ShipperOptions,
        policies: UnavailablePolicies,
    ) -> Result<Shipper, ShipperError> {
        let cursor = Cursor::load(dir)?;
        let mut shipper = Shipper {
            dir: dir.to_path_buf(),
            spool,
            metrics,
            options,
            policies,
            client: None,
            cursor,
            acknowledged: 0,
            consecutive_failures: 0,
            past_bound_logged: false,
        };
        // What the spool counted when it opened includes what an earlier run already shipped.
        for s in shipper.segments()? {
            if s.index < cursor.segment {
                shipper.acknowledged += s.len;
            } else if s.index == cursor.segment {
                shipper.acknowledged += cursor.offset.min(s.len);
            }
        }
        shipper.spool.set_acknowledged(shipper.acknowledged);
        shipper.update_gauge();
        shipper.metrics.audit_service_up.set(1);
        Ok(shipper)
    }

    /// The cursor.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    fn segments(&self) -> Result<Vec<Segment>, ShipperError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(index) = segment_index(&name) {
                let len = entry.metadata().map_err(io_err(&entry.path()))?.len();
                out.push(Segment {
                    index,
                    path: entry.path(),
                    len,
                });
            }
        }
        out.sort_by_key(|s| s.index);
        Ok(out)
    }

    fn update_gauge(&self) {
        let depth = self.spool.bytes();
        self.metrics
            .audit_unshipped_bytes
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.metrics
            .spool_bytes
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Move the cursor to the start of segment `next` and delete the finished segment.
    fn finish_segment(&mut self, finished: &Segment, next: u64) -> Result<(), ShipperError> {
        self.cursor = Cursor {
            segment: next,
            offset: 0,
        };
        self.cursor.store(&self.dir)?;
        remove(&finished.path)?;
        tracing::debug!(
            segment = finished.index,
            "audit spool segment shipped and deleted"
        );
        Ok(())
    }

    /// Ship one batch, or finish a segment. Errors leave the cursor where it was.
    pub async fn step(&mut self) -> Result<Step, ShipperError> {
        let segments = self.segments()?;
        // Segments before the cursor were acknowledged whole (a crash may have come between
        // moving the cursor and deleting the file).
        for s in segments.iter().filter(|s| s.index < self.cursor.segment) {
            remove(&s.path)?;
        }
        let Some(pos) = segments.iter().position(|s| s.index >= self.cursor.segment) else {
            return Ok(Step::Idle);
        };
        let current = &segments[pos];
        let next = segments.get(pos + 1).map(|s| s.index);
        if current.index > self.cursor.segment {
            self.cursor = Cursor {
                segment: current.index,
                offset: 0,
            };
        }
        let offset = self.cursor.offset.min(current.len);
        if offset >= current.len {
            return match next {
                Some(next) => {
                    self.finish_segment(current, next)?;
                    Ok(Step::Shipped(0))
                }
                None => Ok(Step::Idle),
            };
        }
        let path = current.path.clone();
        let (limit_records, limit_bytes) = (self.options.batch_records, self.options.batch_bytes);
        let batch = tokio::task::spawn_blocking(move || {
            read_batch(&path, offset, limit_records, limit_bytes)
        })
        .await
        .map_err(|e| ShipperError::Io(format!("reading the spool: {e}")))??;

        if batch.records.is_empty() && batch.rejected.is_empty() {
            // Only an incomplete line is left. In the segment being written that is a record
            // still being appended; in an earlier one it is the torn tail of a crash, which
            // no session was told was durable.
            return match next {
                Some(next) if batch.torn_tail => {
                    tracing::warn!(
                        segment = current.index,
                        bytes = current.len - offset,
                        "audit spool segment ends in an incomplete line (a crash while writing); skipped"
                    );
                    self.acknowledged += current.len - offset;
                    self.spool.set_acknowledged(self.acknowledged);
                    self.finish_segment(current, next)?;
                    Ok(Step::Shipped(0))
                }
                _ => Ok(Step::Idle),
            };
        }
        if !batch.rejected.is_empty() {
            self.set_aside(current.index, &batch.rejected)?;
        }
        let sent = batch.records.len();
        if sent > 0 {
            let client = match &self.client {
                Some(c) => c.clone(),
                None => {
                    let c = AuditClient::new(
                        &self.options.url,
                        &self.options.ca_file,
                        self.options.request_timeout,
                    )?;
                    self.client = Some(c.clone());
                    c
                }
            };
            let token = tokio::fs::read_to_string(&self.options.token_file)
                .await
                .map_err(|e| {
                    ShipError::Local(format!("{}: {e}", self.options.token_file.display()))
                })?;
            let acknowledged = client.ship(token.trim(), &batch.records).await?;
            let acked: std::collections::HashSet<u64> = acknowledged.into_iter().collect();
            let covered = batch
                .records
                .iter()
                .filter(|r| acked.contains(&r.seq))
                .count();
            if covered != sent {
                return Err(ShipperError::Partial {
                    sent,
                    acknowledged: covered,
                });
            }
        }
        self.cursor.offset = offset + batch.consumed;
        self.cursor.store(&self.dir)?;
        self.acknowledged += batch.consumed;
        self.spool.set_acknowledged(self.acknowledged);
        self.metrics.audit_shipped_records.inc_by(sent as u64);
        if self.cursor.offset >= current.len {
            if let Some(next) = next {
                self.finish_segment(current, next)?;
            }
        }
        Ok(Step::Shipped(sent))
    }

    /// Keep lines that are not audit records out of the log but on disk, for an operator to
    /// look at.
    fn set_aside(&self, segment: u64, lines: &[Vec<u8>]) -> Result<(), ShipperError> {
        let path = self.dir.join(REJECTED_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        for line in lines {
            file.write_all(line).map_err(io_err(&path))?;
        }
        file.sync_all().map_err(io_err(&path))?;
        tracing::error!(
            segment,
            lines = lines.len(),
            file = %path.display(),
            "audit spool lines that are not audit records were set aside, not shipped"
        );
        self.metrics
            .audit_ship_failures
            .with_label_values(&["unreadable"])
            .inc_by(lines.len() as u64);
        Ok(())
    }

    fn backoff(&self) -> Duration {
        let exp = self.consecutive_failures.saturating_sub(1).min(16);
        let base = self
            .options
            .backoff_min
            .saturating_mul(1u32 << exp)
            .min(self.options.backoff_max);
        // Full jitter over the upper half, so sidecars restarted together spread out.
        base.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    fn on_failure(&mut self, e: &ShipperError) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.metrics
            .audit_ship_failures
            .with_label_values(&[e.reason()])
            .inc();
        self.metrics.audit_service_up.set(0);
        let depth = self.spool.bytes();
        let n = self.consecutive_failures;
        if n == 1 || n.is_power_of_two() {
            let consequence = match (&self.policies.deny, self.policies.keep_going.is_empty()) {
                (Some((policy, limit)), _) => format!(
                    "onAuditUnavailable: deny (policy {policy}) refuses new statements once more than {limit} bytes are unshipped"
                ),
                (None, false) => format!(
                    "onAuditUnavailable: continue (policies {}) keeps serving and spooling",
                    self.policies.keep_going.join(", ")
                ),
                (None, true) => "no policy bounds the spool; serving and spooling".to_owned(),
            };
            tracing::warn!(
                error = %e,
                attempts = n,
                unshipped_bytes = depth,
                "audit service unavailable; records stay in the spool. {consequence}"
            );
        }
        if let Some((policy, limit)) = &self.policies.deny {
            if depth > *limit && !self.past_bound_logged {
                self.past_bound_logged = true;
                tracing::error!(
                    unshipped_bytes = depth,
                    limit,
                    %policy,
                    "audit spool past its bound while the audit service is unavailable: new statements are refused (onAuditUnavailable: deny)"
                );
            }
        }
    }

    fn on_success(&mut self) {
        if self.consecutive_failures > 0 {
            tracing::info!(
                after_attempts = self.consecutive_failures,
                unshipped_bytes = self.spool.bytes(),
                "audit service reachable again; shipping the spool"
            );
        }
        self.consecutive_failures = 0;
        self.metrics.audit_service_up.set(1);
        if let Some((_, limit)) = &self.policies.deny {
            if self.spool.bytes() <= *limit {
                self.past_bound_logged = false;
            }
        }
    }

    /// Ship until `stop` turns true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        tracing::info!(url = %self.options.url, cursor = ?self.cursor, "shipping the audit spool");
        loop {
            if *stop.borrow() {
                return;
            }
            let wait = match self.step().await {
                Ok(Step::Shipped(_)) => {
                    self.on_success();
                    None
                }
                Ok(Step::Idle) => Some(self.options.idle_poll),
                Err(e) => {
                    self.on_failure(&e);
                    if matches!(e, ShipperError::Ship(ShipError::Local(_))) {
                        // The CA may be mounted later: build the client again next time.
                        self.client = None;
                    }
                    Some(self.backoff())
                }
            };
            self.update_gauge();
            let Some(wait) = wait else { continue };
            let seen = self.spool.durable_seq();
            let idle = self.consecutive_failures == 0;
            let spool = self.spool.clone();
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                // While healthy, new records wake the shipper at once.
                _ = async move {
                    if idle {
                        let _ = spool.wait_durable(seen + 1).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                } => {}
            }
        }
    }
}

fn remove(path: &Path) -> Result<(), ShipperError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ShipperError::Io(format!("{}: {e}", path.display()))),
    }
}

/// Read complete lines from `offset`: up to `max_records` records and about `max_bytes`.
fn read_batch(
    path: &Path,
    offset: u64,
    max_records: usize,
    max_bytes: usize,
) -> Result<Batch, ShipperError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    file.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
    let mut reader = BufReader::new(file);
    let mut batch = Batch {
        records: Vec::new(),
        consumed: 0,
        rejected: Vec::new(),
        torn_tail: false,
    };
    let mut line = Vec::new();
    let mut bytes = 0usize;
    while batch.records.len() < max_records && bytes < max_bytes {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            batch.torn_tail = true;
            break;
        }
        let body = &line[..n - 1];
        if body.iter().all(u8::is_ascii_whitespace) {
            batch.consumed += n as u64;
            continue;
        }
        match serde_json::from_slice::<AuditRecord>(body) {
            Ok(record) => {
                // The service does not take records this large: ship a stand-in naming the
                // original's hash and size instead of retrying forever.
                let record = if body.len() > MAX_RECORD_BYTES {
                    tracing::warn!(
                        seq = record.seq,
                        bytes = body.len(),
                        "audit record too large to ship; shipping a stand-in with its hash and size"
                    );
                    record.stand_in(body)
                } else {
                    record
                };
                batch.records.push(record);
                batch.consumed += n as u64;
                bytes += n;
            }
            // Not a record: set it aside on its own, after the records before it shipped.
            Err(_) if batch.records.is_empty() => {
                batch.rejected.push(line.clone());
                batch.consumed += n as u64;
                break;
            }
            Err(_) => break,
        }
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> String {
        let r = AuditRecord {
            version: portcullis_crds::audit::AUDIT_RECORD_VERSION.to_owned(),
            seq,
            time: "2026-11-23T06:00:00.000000Z".into(),
            session_id: "p-1".into(),
            identity: Default::default(),
            resource: "shop-db".into(),
            event: portcullis_crds::audit::AuditEvent::SessionEnd(
                portcullis_crds::audit::SessionEnd {
                    statements: 0,
                    reason: "terminate".into(),
                },
            ),
        };
        format!("{}\n", serde_json::to_string(&r).expect("json"))
    }

    fn shipper(dir: &Path) -> Shipper {
        let spool = Spool::open(dir).expect("spool");
        let options = ShipperOptions::from_config(&AuditConfig {
            spool_dir: dir.to_path_buf(),
            service_url: Some("https://127.0.0.1:9".into()),
            ca_file: Some(dir.join("missing-ca.crt")),
            token_file: Some(dir.join("missing-token")),
        })
        .expect("options")
        .expect("shipping configured");
        Shipper::new(
            dir,
            spool,
            Metrics::new().expect("metrics"),
            options,
            UnavailablePolicies::default(),
        )
        .expect("shipper")
    }

    #[test]
    fn batches_hold_complete_lines_within_their_bounds() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit-0000000001.jsonl");
        let text: String = (1..=5).map(record).collect();
        std::fs::write(&path, format!("{text}{{\"partial")).expect("write");
        let b = read_batch(&path, 0, 3, 1 << 20).expect("batch");
        assert_eq!(
            b.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(
            b.consumed as usize,
            (1..=3).map(|i| record(i).len()).sum::<usize>()
        );
        let b = read_batch(&path, b.consumed, 10, 1 << 20).expect("batch");
        assert_eq!(b.records.len(), 2);
        assert!(b.torn_tail, "the incomplete last line is not shipped");
        // A byte bound stops after the line that crosses it.
        let b = read_batch(&path, 0, 10, 1).expect("batch");
        assert_eq!(b.records.len(), 1);
    }

    #[test]
    fn a_line_that_is_no_record_is_set_aside_after_the_records_before_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit-0000000001.jsonl");
        std::fs::write(&path, format!("{}not json\n{}", record(1), record(2))).expect("write");
        let b = read_batch(&path, 0, 10, 1 << 20).expect("batch");
        assert_eq!((b.records.len(), b.rejected.len()), (1, 0));
        let b = read_batch(&path, b.consumed, 10, 1 << 20).expect("batch");
        assert_eq!((b.records.len(), b.rejected.len()), (0, 1));
        assert_eq!(b.consumed, 9);
    }

    #[test]
    fn a_record_too_large_to_ship_goes_as_a_stand_in_naming_its_hash_and_size() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit-0000000001.jsonl");
        let mut big = record(2).replace(
            "\"reason\":\"terminate\"",
            &format!("\"reason\":\"{}\"", "x".repeat(MAX_RECORD_BYTES)),
        );
        assert!(big.len() > MAX_RECORD_BYTES);
        std::fs::write(&path, format!("{}{big}{}", record(1), record(3))).expect("write");
        let b = read_batch(&path, 0, 10, 4 << 20).expect("batch");
        assert_eq!(b.records.len(), 3);
        big.pop();
        match &b.records[1].event {
            portcullis_crds::audit::AuditEvent::Oversize(o) => {
                assert_eq!(o.bytes as usize, big.len());
                assert_eq!(o.original_type, "sessionEnd");
                assert_eq!(o.sha256.len(), 64);
            }
            other => panic!("no stand-in: {other:?}"),
        }
        assert_eq!(
            b.records[1].seq, 2,
            "the stand-in keeps the sequence number"
        );
    }

    #[test]
    fn the_cursor_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(Cursor::load(dir.path()).expect("load"), Cursor::default());
        let c = Cursor {
            segment: 7,
            offset: 1234,
        };
        c.store(dir.path()).expect("store");
        assert_eq!(Cursor::load(dir.path()).expect("load"), c);
        std::fs::write(dir.path().join(CURSOR_FILE), "garbage").expect("write");
        assert!(
            Cursor::load(dir.path()).is_err(),
            "a broken cursor is an error, not a restart from zero"
        );
    }

    #[tokio::test]
    async fn finished_and_torn_segments_are_deleted_but_never_the_newest() {
        let dir = tempfile::tempdir().expect("tmp");
        // Segment 1 was cut off by a crash in the middle of a line; segment 2 is newer.
        std::fs::write(dir.path().join("audit-0000000001.jsonl"), "{\"vers").expect("write");
        std::fs::write(dir.path().join("audit-0000000002.jsonl"), "not json\n").expect("write");
        let mut s = shipper(dir.path());
        assert_eq!(s.spool.bytes(), 15);
        assert_eq!(s.step().await.expect("step"), Step::Shipped(0));
        assert!(!dir.path().join("audit-0000000001.jsonl").exists());
        assert_eq!(
            s.cursor(),
            Cursor {
                segment: 2,
                offset: 0
            }
        );
        // The line of segment 2 is set aside; the segment stays, it is the newest.
        assert_eq!(s.step().await.expect("step"), Step::Shipped(0));
        assert_eq!(
            s.cursor(),
            Cursor {
                segment: 2,
                offset: 9
            }
        );
        assert_eq!(s.step().await.expect("step"), Step::Idle);
        assert!(dir.path().join("audit-0000000002.jsonl").exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join(REJECTED_FILE)).expect("set aside"),
            "not json\n"
        );
        assert_eq!(s.spool.bytes(), 0, "nothing left to ship");
        // A restarted shipper resumes at the cursor and counts what was shipped.
        drop(s);
        let s = shipper(dir.path());
        assert_eq!(
            s.cursor(),
            Cursor {
                segment: 2,
                offset: 9
            }
        );
        assert_eq!(s.spool.bytes(), 0);
    }

    #[tokio::test]
    async fn an_unreachable_service_keeps_the_cursor_and_counts_a_failure() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("audit-0000000001.jsonl"), record(1)).expect("write");
        let mut s = shipper(dir.path());
        let err = s.step().await.expect_err("no CA, no service");
        assert_eq!(err.reason(), "local");
        s.on_failure(&err);
        assert_eq!(s.cursor().offset, 0);
        assert_eq!(Cursor::load(dir.path()).expect("load"), Cursor::default());
        assert!(s.spool.bytes() > 0);
        assert_eq!(s.metrics.audit_service_up.get(), 0);
        assert_eq!(
            s.metrics
                .audit_ship_failures
                .with_label_values(&["local"])
                .get(),
            1
        );
        assert!(s.backoff() <= s.options.backoff_min);
    }
}
