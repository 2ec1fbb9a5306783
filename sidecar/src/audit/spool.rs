//! The durable audit spool: records are appended as JSON lines to segment files and made
//! durable (written and fsync'd) by one writer thread that commits whole groups at once.
//!
//! Sessions [`Spool::append`] a record, which returns its sequence number without waiting,
//! and [`Spool::wait_durable`] before they forward anything the record covers. Several
//! sessions' records share one fsync (group commit).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use portcullis_crds::audit::{AuditEvent, AuditRecord, Identity, AUDIT_RECORD_VERSION};
use thiserror::Error;
use tokio::sync::watch;

/// Size past which a new segment file is started.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

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

struct Pending {
    seq: u64,
    line: Vec<u8>,
}

/// State shared by the sessions and the writer.
struct Inner {
    next_seq: Mutex<u64>,
    sender: Mutex<Option<mpsc::Sender<Pending>>>,
    durable: watch::Sender<Durable>,
    bytes: AtomicU64,
    acknowledged: AtomicU64,
}

/// Durability progress published by the writer.
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

/// Fields every record of a session shares.
#[derive(Clone, Debug)]
pub struct RecordContext {
    /// Session id.
    pub session_id: String,
    /// Caller identity.
    pub identity: Identity,
    /// Resource name.
    pub resource: String,
}

/// RFC 3339 time with microseconds, UTC.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()
}

impl Spool {
    /// Open (create) the spool directory and start the writer thread.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| SpoolError::Io(format!("{}: {e}", dir.display())))?;
        let mut existing = 0u64;
        let mut last_index = 0u64;
        let entries = std::fs::read_dir(dir)
            .map_err(|e| SpoolError::Io(format!("{}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(index) = segment_index(&name) {
                last_index = last_index.max(index);
                existing += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        let (tx, rx) = mpsc::channel::<Pending>();
        let (durable, _) = watch::channel(Durable::default());
        let inner = Arc::new(Inner {
            next_seq: Mutex::new(0),
            sender: Mutex::new(Some(tx)),
            durable,
            bytes: AtomicU64::new(existing),
            acknowledged: AtomicU64::new(0),
        });
        let writer = Writer {
            dir: dir.to_path_buf(),
            index: last_index + 1,
            file: None,
            file_bytes: 0,
            inner: inner.clone(),
        };
        thread::Builder::new()
            .name("audit-spool".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| SpoolError::Io(format!("cannot start the spool writer: {e}")))?;
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

    /// Refuse when the spool is over a bound.
    pub fn check_limit(&self, limit: Option<u64>) -> Result<(), SpoolError> {
        match limit {
            Some(limit) if self.bytes() > limit => Err(SpoolError::Full {
                size: self.bytes(),
                limit,
            }),
            _ => Ok(()),
        }
    }

    /// Queue a record; returns its sequence number. Durability is awaited separately.
    pub fn append(&self, ctx: &RecordContext, event: AuditEvent) -> Result<u64, SpoolError> {
        if let Some(failure) = &self.inner.durable.borrow().failed {
            return Err(SpoolError::Io(failure.clone()));
        }
        // Sequence numbers are assigned and queued under one lock so the file is in order.
        let mut next = self
            .inner
            .next_seq
            .lock()
            .map_err(|_| SpoolError::Io("spool lock poisoned".into()))?;
        *next += 1;
        let seq = *next;
        let record = AuditRecord {
            version: AUDIT_RECORD_VERSION.to_owned(),
            seq,
            time: now_rfc3339(),
            session_id: ctx.session_id.clone(),
            identity: ctx.identity.clone(),
            resource: ctx.resource.clone(),
            event,
        };
        let mut line =
            serde_json::to_vec(&record).map_err(|e| SpoolError::Io(format!("encoding: {e}")))?;
        line.push(b'\n');
        let sender = self
            .inner
            .sender
            .lock()
            .map_err(|_| SpoolError::Io("spool lock poisoned".into()))?;
        match sender.as_ref() {
            Some(tx) => tx
                .send(Pending { seq, line })
                .map_err(|_| SpoolError::Io("spool writer stopped".into()))?,
            None => return Err(SpoolError::Io("spool closed".into())),
        }
        Ok(seq)
    }

    /// Wait until every record up to `seq` is on disk.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), SpoolError> {
        let mut rx = self.inner.durable.subscribe();
        let result = rx
            .wait_for(|d| d.seq >= seq || d.failed.is_some())
            .await
            .map_err(|_| SpoolError::Io("spool writer stopped".into()))?;
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
}

/// The index of a spool segment file name (`audit-NNNNNNNNNN.jsonl`).
pub fn segment_index(name: &str) -> Option<u64> {
    name.strip_prefix("audit-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

struct Writer {
    dir: PathBuf,
    index: u64,
    file: Option<File>,
    file_bytes: u64,
    inner: Arc<Inner>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Pending>) {
        let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
        while let Ok(first) = rx.recv() {
            batch.clear();
            let mut last = first.seq;
            batch.extend_from_slice(&first.line);
            while let Ok(more) = rx.try_recv() {
                last = more.seq;
                batch.extend_from_slice(&more.line);
                if batch.len() > 4 * 1024 * 1024 {
                    break;
                }
            }
            match self.commit(&batch) {
                Ok(()) => {
                    self.inner
                        .bytes
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    self.inner.durable.send_modify(|d| d.seq = last);
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit spool write failed; refusing further statements");
                    self.inner
                        .durable
                        .send_modify(|d| d.failed = Some(e.to_string()));
                    return;
                }
            }
        }
    }

    fn commit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() || self.file_bytes > SEGMENT_BYTES {
            let path = self.dir.join(format!("audit-{:010}.jsonl", self.index));
            self.index += 1;
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            // Make the new file's directory entry durable too.
            if let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
            self.file = Some(file);
            self.file_bytes = 0;
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no segment open"))?;
        file.write_all(bytes)?;
        file.sync_data()?;
        self.file_bytes += bytes.len() as u64;
        Ok(())
    }
}
