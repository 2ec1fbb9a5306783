//! The durable audit spool: records are appended as JSON lines to segment files.
//!
//! [`Spool::append`] writes a record to the active segment at once (one `write(2)` under the
//! spool's lock, so the file is in sequence order) and returns its sequence number: from then
//! on the record survives a crash of the sidecar process. [`Spool::append_later`] numbers a
//! record but leaves it in memory, to be written with the next appended record or by the sync
//! thread within [`BACKGROUND_SYNC`], whichever comes first: completion records take this way,
//! so a statement costs one `write(2)` rather than two (its statement record, written before
//! it is forwarded, always goes at once). A sync thread makes written records durable with
//! `fdatasync`, for all waiting sessions at once (group commit): on demand, when a session
//! calls [`Spool::wait_durable`] before it forwards a statement that may change data, and
//! otherwise at least every [`BACKGROUND_SYNC`].

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use portcullis_crds::audit::{AuditEvent, Identity, AUDIT_RECORD_VERSION};
use thiserror::Error;
use tokio::sync::watch;

/// Size past which a new segment file is started.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Longest time a written record waits for its fsync when no session is waiting for it.
pub const BACKGROUND_SYNC: Duration = Duration::from_millis(10);

/// Why the spool cannot record.
#[derive(Debug, Error, Clone)]
pub enum SpoolError {
    /// Writing or syncing failed; the spool refuses all further records.
    #[error("audit spool write failed: {0}")]
    Io(String),
    /// The spool holds more than the policy's bound.
    #[error("audit spool holds {size} bytes the audit service has not acknowledged, more than the bound of {limit} bytes (onAuditUnavailable: deny)")]
    Full {
        /// Current size.
        size: u64,
        /// The bound.
        limit: u64,
    },
}

/// The active segment and the sequence counter, under one lock.
struct Log {
    dir: PathBuf,
    next_seq: u64,
    index: u64,
    file: Option<Arc<File>>,
    file_bytes: u64,
    failed: Option<String>,
    /// Numbered records not written yet (see [`Spool::append_later`]), in sequence order.
    later: Vec<u8>,
}

/// What the sync thread is asked to do.
#[derive(Default)]
struct SyncRequest {
    /// Highest sequence number a session waits for.
    wanted: u64,
}

/// State shared by the sessions and the sync thread.
struct Inner {
    log: Mutex<Log>,
    /// Highest sequence number written to a segment.
    written: AtomicU64,
    requests: Mutex<SyncRequest>,
    wake: Condvar,
    durable: watch::Sender<Durable>,
    bytes: AtomicU64,
    acknowledged: AtomicU64,
    /// No audit service is configured: the spool is the log of record and nothing will ever
    /// acknowledge it, so the bound on unacknowledged bytes does not apply.
    of_record: std::sync::atomic::AtomicBool,
    /// Longest time between two rounds of the sync thread.
    background: Duration,
}

impl Inner {
    /// Write the records left for later (and a record just added to them); a failure stops
    /// the spool.
    fn write_later(&self, log: &mut Log) -> Result<(), SpoolError> {
        match log.write_later() {
            Ok(()) => {
                self.written.store(log.next_seq, Ordering::Release);
                Ok(())
            }
            Err(e) => Err(self.fail(log, e)),
        }
    }

    /// The log, unless the spool has failed.
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Log>, SpoolError> {
        let log = self
            .log
            .lock()
            .map_err(|_| SpoolError::Io("spool lock poisoned".into()))?;
        match &log.failed {
            Some(failure) => Err(SpoolError::Io(failure.clone())),
            None => Ok(log),
        }
    }

    /// Record a write failure: the spool refuses everything from now on.
    fn fail(&self, log: &mut Log, e: std::io::Error) -> SpoolError {
        let message = e.to_string();
        tracing::error!(error = %message, "audit spool write failed; refusing further statements");
        log.failed = Some(message.clone());
        self.durable
            .send_modify(|d| d.failed = Some(message.clone()));
        SpoolError::Io(message)
    }
}

/// Durability progress published by the sync thread.
#[derive(Clone, Debug, Default)]
struct Durable {
    seq: u64,
    failed: Option<String>,
}

/// A handle to the spool (cheap to clone).
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

/// Fields every record of a session shares, with their JSON encoding made once per session.
#[derive(Clone, Debug)]
pub struct RecordContext {
    session_id: String,
    identity: Identity,
    resource: String,
    /// `"sessionId":…,"identity":{…},"resource":…`, exactly as `serde_json` writes these
    /// fields of an [`AuditRecord`](portcullis_crds::audit::AuditRecord).
    encoded: Arc<[u8]>,
}

/// The context fields of an [`AuditRecord`](portcullis_crds::audit::AuditRecord), in its field order.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ContextFields<'a> {
    session_id: &'a str,
    identity: &'a Identity,
    resource: &'a str,
}

impl RecordContext {
    /// The context of one session's records.
    pub fn new(session_id: String, identity: Identity, resource: String) -> RecordContext {
        let object = serde_json::to_vec(&ContextFields {
            session_id: &session_id,
            identity: &identity,
            resource: &resource,
        })
        // Strings and string maps only: encoding cannot fail.
        .unwrap_or_default();
        // Without the enclosing braces: the fields go between `time` and `event`.
        let encoded = object
            .get(1..object.len().saturating_sub(1))
            .unwrap_or_default()
            .into();
        RecordContext {
            session_id,
            identity,
            resource,
            encoded,
        }
    }

    /// Session id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Caller identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Resource name.
    pub fn resource(&self) -> &str {
        &self.resource
    }
}

fn io_error(context: &Path, e: std::io::Error) -> SpoolError {
    SpoolError::Io(format!("{}: {e}", context.display()))
}

impl Spool {
    /// Open (create) the spool directory and start the sync thread.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        Spool::open_with(dir, BACKGROUND_SYNC)
    }

    /// [`Spool::open`] with the sync thread's longest wait.
    fn open_with(dir: &Path, background: Duration) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let mut existing = 0u64;
        let mut last_index = 0u64;
        for entry in std::fs::read_dir(dir)
            .map_err(|e| io_error(dir, e))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(index) = segment_index(&name) {
                last_index = last_index.max(index);
                existing += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        let (durable, _) = watch::channel(Durable::default());
        let inner = Arc::new(Inner {
            log: Mutex::new(Log {
                dir: dir.to_path_buf(),
                next_seq: 0,
                index: last_index + 1,
                file: None,
                file_bytes: 0,
                failed: None,
                later: Vec::new(),
            }),
            written: AtomicU64::new(0),
            requests: Mutex::new(SyncRequest::default()),
            wake: Condvar::new(),
            durable,
            bytes: AtomicU64::new(existing),
            acknowledged: AtomicU64::new(0),
            of_record: std::sync::atomic::AtomicBool::new(false),
            background,
        });
        let syncer = Arc::downgrade(&inner);
        thread::Builder::new()
            .name("audit-spool-sync".into())
            .spawn(move || {
                // Ends once every handle to the spool is gone.
                while let Some(inner) = syncer.upgrade() {
                    if !sync_once(&inner) {
                        return;
                    }
                }
            })
            .map_err(|e| SpoolError::Io(format!("cannot start the spool sync thread: {e}")))?;
        Ok(Spool { inner })
    }

    /// Bytes held in the spool that the audit service has not acknowledged (its depth).
    pub fn bytes(&self) -> u64 {
        self.inner
            .bytes
            .load(Ordering::Relaxed)
            .saturating_sub(self.inner.acknowledged.load(Ordering::Relaxed))
    }

    /// Set by the shipper: how many of the bytes counted since [`Spool::open`] (the segments
    /// found then included) the audit service has acknowledged. They no longer count towards
    /// the spool's depth, whether or not their segment file was deleted yet.
    pub fn set_acknowledged(&self, bytes: u64) {
        self.inner.acknowledged.store(bytes, Ordering::Relaxed);
    }

    /// With no audit service configured, the spool is the log of record: its records wait
    /// for no acknowledgement, so [`Spool::check_limit`] no longer refuses (the disk bounds
    /// it: a write that fails fails the sidecar's liveness).
    pub fn set_log_of_record(&self) {
        self.inner.of_record.store(true, Ordering::Relaxed);
    }

    /// Refuse when the records the audit service has not acknowledged are over a bound (a
    /// spool that is the log of record has no such records).
    pub fn check_limit(&self, limit: Option<u64>) -> Result<(), SpoolError> {
        if self.inner.of_record.load(Ordering::Relaxed) {
            return Ok(());
        }
        match limit {
            Some(limit) if self.bytes() > limit => Err(SpoolError::Full {
                size: self.bytes(),
                limit,
            }),
            _ => Ok(()),
        }
    }

    /// Write a record to the active segment (with the records [`Spool::append_later`] left
    /// before it); returns its sequence number. The record survives a crash of this process
    /// from here on; [`Spool::wait_durable`] waits for it to be on disk.
    pub fn append(&self, ctx: &RecordContext, event: AuditEvent) -> Result<u64, SpoolError> {
        self.add(ctx, event, false)
    }

    /// Number a record and keep it to be written with the next [`Spool::append`] or by the
    /// sync thread within [`BACKGROUND_SYNC`]; [`Spool::wait_durable`] on its number writes
    /// and syncs it. For records of what already happened (completions), whose statement's
    /// own record was written before the statement left.
    pub fn append_later(&self, ctx: &RecordContext, event: AuditEvent) -> Result<u64, SpoolError> {
        self.add(ctx, event, true)
    }

    fn add(&self, ctx: &RecordContext, event: AuditEvent, later: bool) -> Result<u64, SpoolError> {
        // The event is encoded before the lock is taken; number and time are added under it,
        // so the file is in sequence order.
        let event =
            serde_json::to_vec(&event).map_err(|e| SpoolError::Io(format!("encoding: {e}")))?;
        let mut log = self.inner.lock()?;
        let seq = log.next_seq + 1;
        let start = log.later.len();
        encode_record(
            &mut log.later,
            seq,
            std::time::SystemTime::now(),
            ctx,
            &event,
        );
        let len = (log.later.len() - start) as u64;
        log.next_seq = seq;
        self.inner.bytes.fetch_add(len, Ordering::Relaxed);
        if !later {
            self.inner.write_later(&mut log)?;
        }
        Ok(seq)
    }

    /// Write the records left for later now (they are written within [`BACKGROUND_SYNC`]
    /// anyway); at shutdown, and for readers of the spool files that need every record.
    pub fn write_later(&self) -> Result<(), SpoolError> {
        let mut log = self.inner.lock()?;
        self.inner.write_later(&mut log)
    }

    /// Wait until every record up to `seq` is on disk.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), SpoolError> {
        let mut rx = self.inner.durable.subscribe();
        {
            let current = rx.borrow();
            if current.seq >= seq {
                return Ok(());
            }
            if let Some(f) = &current.failed {
                return Err(SpoolError::Io(f.clone()));
            }
        }
        if let Ok(mut requests) = self.inner.requests.lock() {
            requests.wanted = requests.wanted.max(seq);
        }
        self.inner.wake.notify_one();
        let result = rx
            .wait_for(|d| d.seq >= seq || d.failed.is_some())
            .await
            .map_err(|_| SpoolError::Io("spool sync thread stopped".into()))?;
        match &result.failed {
            Some(f) if result.seq < seq => Err(SpoolError::Io(f.clone())),
            _ => Ok(()),
        }
    }

    /// The write failure that stopped the spool, if any.
    pub fn failure(&self) -> Option<String> {
        self.inner.durable.borrow().failed.clone()
    }

    /// Highest sequence number made durable.
    pub fn durable_seq(&self) -> u64 {
        self.inner.durable.borrow().seq
    }

    /// Highest sequence number written (durable or not yet).
    pub fn written_seq(&self) -> u64 {
        self.inner.written.load(Ordering::Acquire)
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // The last handle is gone: what was left for later is written now.
        if self.failed.is_none() {
            if let Err(e) = self.write_later() {
                tracing::error!(error = %e, "audit spool records lost at close");
            }
        }
    }
}

/// Append one record line: the JSON `serde_json` writes for an [`AuditRecord`](portcullis_crds::audit::AuditRecord) with these
/// fields (the context and the event already encoded), and a newline.
fn encode_record(
    out: &mut Vec<u8>,
    seq: u64,
    time: std::time::SystemTime,
    ctx: &RecordContext,
    event: &[u8],
) {
    out.extend_from_slice(b"{\"version\":\"");
    out.extend_from_slice(AUDIT_RECORD_VERSION.as_bytes());
    out.extend_from_slice(b"\",\"seq\":");
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "{seq},\"time\":\"{}",
        humantime::format_rfc3339_micros(time)
    );
    out.extend_from_slice(b"\",");
    out.extend_from_slice(&ctx.encoded);
    out.extend_from_slice(b",\"event\":");
    out.extend_from_slice(event);
    out.extend_from_slice(b"}\n");
}

/// The index of a spool segment file name (`audit-NNNNNNNNNN.jsonl`).
pub fn segment_index(name: &str) -> Option<u64> {
    name.strip_prefix("audit-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

impl Log {
    /// Write the records left for later, if any, in one write.
    fn write_later(&mut self) -> std::io::Result<()> {
        if self.later.is_empty() {
            return Ok(());
        }
        let mut later = std::mem::take(&mut self.later);
        let result = self.write(&later);
        later.clear();
        self.later = later;
        result
    }

    /// Append bytes to the active segment, starting a new one when it is full. The full
    /// segment is made durable before the new one is used, so durability is a prefix.
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() || self.file_bytes > SEGMENT_BYTES {
            if let Some(old) = self.file.take() {
                old.sync_data()?;
            }
            let path = self.dir.join(format!("audit-{:010}.jsonl", self.index));
            self.index += 1;
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            // Make the new file's directory entry durable too.
            File::open(&self.dir)?.sync_all()?;
            self.file = Some(Arc::new(file));
            self.file_bytes = 0;
        }
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| std::io::Error::other("no segment open"))?;
        (&**file).write_all(bytes)?;
        self.file_bytes += bytes.len() as u64;
        Ok(())
    }
}

/// One round of the sync thread: wait to be asked (or for [`BACKGROUND_SYNC`]), then fsync
/// what was written. Returns false when the spool has failed.
fn sync_once(inner: &Inner) -> bool {
    {
        let Ok(requests) = inner.requests.lock() else {
            return false;
        };
        if inner
            .wake
            .wait_timeout_while(requests, inner.background, |r| {
                r.wanted <= inner.durable.borrow().seq
            })
            .is_err()
        {
            return false;
        }
    }
    // Everything written up to `upto` is in this file or in segments already synced.
    let (file, upto) = match inner.log.lock() {
        Ok(mut log) => {
            if log.failed.is_some() || inner.write_later(&mut log).is_err() {
                return false;
            }
            (log.file.clone(), log.next_seq)
        }
        Err(_) => return false,
    };
    if upto <= inner.durable.borrow().seq {
        return true;
    }
    let Some(file) = file else { return true };
    match file.sync_data() {
        Ok(()) => {
            inner.durable.send_modify(|d| d.seq = d.seq.max(upto));
            true
        }
        Err(e) => {
            let message = e.to_string();
            tracing::error!(error = %message, "audit spool sync failed; refusing further statements");
            if let Ok(mut log) = inner.log.lock() {
                log.failed = Some(message.clone());
            }
            inner.durable.send_modify(|d| d.failed = Some(message));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_crds::audit::{AuditRecord, SessionEnd};

    fn ctx() -> RecordContext {
        RecordContext::new(
            "s-1".into(),
            Identity {
                kind: "ServiceAccount".into(),
                name: "agent".into(),
                namespace: Some("team".into()),
                pod: None,
                pod_uid: None,
                principal: None,
            },
            "customers-db".into(),
        )
    }

    fn event(n: u64) -> AuditEvent {
        AuditEvent::SessionEnd(SessionEnd {
            statements: n,
            reason: "terminate".into(),
        })
    }

    fn lines(dir: &Path) -> Vec<AuditRecord> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        names.sort();
        names
            .iter()
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<AuditRecord>>()
            })
            .collect()
    }

    #[test]
    fn records_are_encoded_exactly_as_serde_json_encodes_an_audit_record() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let full = Identity {
            kind: "User".into(),
            name: "zoë \"quoted\" \\ name\n\u{1}".into(),
            namespace: Some("team".into()),
            pod: Some("agent-0".into()),
            pod_uid: Some("0d9c".into()),
            principal: Some(portcullis_crds::audit::Principal {
                kind: "Pipeline".into(),
                issuer: "https://issuer.example".into(),
                subject: "ci|42".into(),
                name: "ci".into(),
                groups: vec!["dba".into(), "ops".into()],
                claims: [("repository".to_owned(), "org/app".to_owned())].into(),
                expires: Some(1_900_000_000),
                key_id: None,
            }),
        };
        let contexts = [
            ctx(),
            RecordContext::new("s-\u{2028}".into(), full, "db/ü".into()),
            RecordContext::new(String::new(), Identity::default(), String::new()),
        ];
        for (i, c) in contexts.iter().enumerate() {
            spool.append(c, event(i as u64)).unwrap();
            spool.append_later(c, event(u64::MAX)).unwrap();
        }
        spool.write_later().unwrap();
        let text = std::fs::read_to_string(dir.path().join("audit-0000000001.jsonl")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6);
        for (n, line) in lines.iter().enumerate() {
            let record: AuditRecord = serde_json::from_str(line).unwrap();
            assert_eq!(serde_json::to_string(&record).unwrap(), *line);
            let c = &contexts[n / 2];
            assert_eq!(record.seq, n as u64 + 1);
            assert_eq!(record.version, AUDIT_RECORD_VERSION);
            assert_eq!(
                (
                    record.session_id.as_str(),
                    &record.identity,
                    record.resource.as_str()
                ),
                (c.session_id(), c.identity(), c.resource())
            );
            let expected = if n % 2 == 0 {
                event((n / 2) as u64)
            } else {
                event(u64::MAX)
            };
            assert_eq!(record.event, expected);
        }
    }

    #[tokio::test]
    async fn records_are_in_the_file_before_append_returns_and_durable_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let seqs: Vec<u64> = (1..=5)
            .map(|n| spool.append(&ctx(), event(n)).unwrap())
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        assert_eq!(spool.written_seq(), 5);
        // Written (not necessarily synced) at once, in sequence order.
        let written = lines(dir.path());
        assert_eq!(written.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs);
        assert_eq!(written[4].event, event(5));
        spool.wait_durable(5).await.unwrap();
        assert!(spool.durable_seq() >= 5);
        assert_eq!(
            spool.bytes(),
            std::fs::metadata(dir.path().join("audit-0000000001.jsonl"))
                .unwrap()
                .len()
        );
    }

    #[tokio::test]
    async fn records_left_for_later_go_out_with_the_next_append_or_the_sync_thread() {
        let dir = tempfile::tempdir().unwrap();
        // A slow background round, so nothing is written behind the test's back.
        let spool = Spool::open_with(dir.path(), Duration::from_secs(1)).unwrap();
        assert_eq!(spool.append(&ctx(), event(1)).unwrap(), 1);
        assert_eq!(spool.append_later(&ctx(), event(2)).unwrap(), 2);
        assert_eq!(spool.append_later(&ctx(), event(3)).unwrap(), 3);
        // Numbered and counted, not written yet.
        assert_eq!(lines(dir.path()).len(), 1);
        assert_eq!(spool.written_seq(), 1);
        let held = spool.bytes();
        // The next record takes them along, in order, in one write.
        assert_eq!(spool.append(&ctx(), event(4)).unwrap(), 4);
        let records = lines(dir.path());
        assert_eq!(
            records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(records[2].event, event(3));
        assert!(spool.bytes() > held);
        assert_eq!(spool.written_seq(), 4);
        // Without another record, the sync thread writes and syncs them.
        assert_eq!(spool.append_later(&ctx(), event(5)).unwrap(), 5);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while spool.durable_seq() < 5 {
            assert!(std::time::Instant::now() < deadline, "never written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(lines(dir.path()).len(), 5);
        // Waiting for one writes it at once.
        let seq = spool.append_later(&ctx(), event(6)).unwrap();
        spool.wait_durable(seq).await.unwrap();
        assert_eq!(lines(dir.path()).len(), 6);
        spool.append_later(&ctx(), event(7)).unwrap();
        spool.write_later().unwrap();
        assert_eq!(lines(dir.path()).len(), 7);
        assert_eq!(
            spool.bytes(),
            std::fs::metadata(dir.path().join("audit-0000000001.jsonl"))
                .unwrap()
                .len()
        );
        spool.append_later(&ctx(), event(8)).unwrap();
        drop(spool);
        // The sync thread may hold the spool for one more round.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while lines(dir.path()).len() < 8 {
            assert!(
                std::time::Instant::now() < deadline,
                "not written when the spool closed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[tokio::test]
    async fn unwaited_records_are_synced_by_the_group_commit() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.append(&ctx(), event(1)).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while spool.durable_seq() < 1 {
            assert!(std::time::Instant::now() < deadline, "never synced");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn many_waiters_share_syncs_and_all_finish() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut tasks = Vec::new();
        for n in 0..32u64 {
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    let seq = spool.append(&ctx(), event(n * 100 + i)).unwrap();
                    spool.wait_durable(seq).await.unwrap();
                    assert!(spool.durable_seq() >= seq);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let records = lines(dir.path());
        assert_eq!(records.len(), 640);
        assert!(records.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    }

    #[tokio::test]
    async fn reopening_continues_in_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path()).unwrap();
            let seq = spool.append(&ctx(), event(1)).unwrap();
            spool.wait_durable(seq).await.unwrap();
        }
        let before = std::fs::metadata(dir.path().join("audit-0000000001.jsonl"))
            .unwrap()
            .len();
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.bytes(), before);
        spool.append(&ctx(), event(2)).unwrap();
        assert!(dir.path().join("audit-0000000002.jsonl").exists());
    }
}
