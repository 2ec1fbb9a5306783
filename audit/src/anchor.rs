//! The witnessed head is the anchor of the log.
//!
//! The head published in the AuditRetention status (and the copy the service keeps in a head
//! file outside its data directory) says what the log held when it was signed. On start and
//! before every signature and publication the service proves, with an RFC 9162 consistency
//! proof from that head to its log, that its log extends it. A log that does not (cut,
//! rolled back, an entry changed, a head signed by another key) is a lasting failure:
//! nothing more is signed or published, tree heads and evidence are refused, the `Verified`
//! condition is `False` with reason `LogDoesNotExtendWitness`, a Warning Event is written and
//! the gauge `portcullis_audit_witness_diverged` is 1. Ingest goes on, so new records stay
//! safe. Only a person clears it, by annotating the AuditRetention with
//! `portcullis.dev/accept-log-head: "<witnessed size>:<witnessed root>-><size>:<root>"`, naming
//! the witnessed head being given up and a head of the log as it is; the service then writes a
//! `witnessReset` entry into the log and signs heads again.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use portcullis_crds::audit_log::{verify_consistency, verify_tree_head, TreeHead};
use portcullis_crds::SignedTreeHead;
use prometheus::IntGauge;
use thiserror::Error;

use crate::prune::{check_pruned, parse_prune};
use crate::store::Log;

/// Annotation by which a person accepts a log that does not extend the witnessed head.
pub const ACCEPT_ANNOTATION: &str = "portcullis.dev/accept-log-head";
/// Reason of the `Verified` condition while the log does not extend the witness.
pub const DIVERGED_REASON: &str = "LogDoesNotExtendWitness";

/// Why the log does not extend a head it must extend.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Divergence {
    /// The head does not verify with the service's key.
    #[error("the {which} head of size {size} does not verify with the signing key: {reason}")]
    BadHead {
        /// `witnessed` or `last signed`.
        which: &'static str,
        /// Its size.
        size: i64,
        /// Why.
        reason: String,
    },
    /// The log is smaller than the head.
    #[error("the log holds {entries} entries but the {which} head covers {size}: the log was cut or rolled back")]
    Shorter {
        /// `witnessed` or `last signed`.
        which: &'static str,
        /// Entries in the log.
        entries: u64,
        /// Size of the head.
        size: u64,
    },
    /// The consistency proof fails: entries up to the head's size were changed.
    #[error("the log does not extend the {which} head of size {size}: {reason}")]
    Rewritten {
        /// `witnessed` or `last signed`.
        which: &'static str,
        /// Size of the head.
        size: u64,
        /// Why the proof failed.
        reason: String,
    },
    /// Entries are gone from the log without a signed prune entry that retired them.
    #[error("{0}")]
    Unretired(String),
}

/// Check that the entries the log no longer holds were retired by prune entries within their
/// rule, covered by a signed head of size `signed_to` (entries pruned by hand on the volume,
/// with their leaf hashes moved into `pruned.leaves`, keep the tree but have none).
pub fn pruned_retired(log: &Log, signed_to: u64) -> Result<(), Divergence> {
    if log.pruned() == 0 {
        return Ok(());
    }
    let mut prunes = Vec::new();
    for index in log.pruned()..signed_to.min(log.size()) {
        match log.entry(index) {
            Ok(Some(entry)) => prunes.extend(parse_prune(index, &entry)),
            Ok(None) => {}
            Err(e) => return Err(Divergence::Unretired(format!("entry {index}: {e}"))),
        }
    }
    check_pruned(log.pruned(), &prunes, signed_to).map_err(Divergence::Unretired)
}

/// Check with a consistency proof that `log` extends `head`.
pub fn log_extends(log: &Log, head: &TreeHead, which: &'static str) -> Result<(), Divergence> {
    if head.tree_size > log.size() {
        return Err(Divergence::Shorter {
            which,
            entries: log.size(),
            size: head.tree_size,
        });
    }
    if head.tree_size == 0 {
        return Ok(());
    }
    let now = log.head(head.timestamp_ms);
    let proof = log
        .consistency_proof(head.tree_size, now.tree_size)
        .unwrap_or_default();
    verify_consistency(head, &now, &proof).map_err(|e| Divergence::Rewritten {
        which,
        size: head.tree_size,
        reason: e.to_string(),
    })
}

/// The anchor state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Not yet compared with the witness.
    Unknown,
    /// The log extends this head (`None`: nothing witnessed yet).
    Anchored(Option<TreeHead>),
    /// The log does not extend the witness.
    Diverged {
        /// Why.
        reason: String,
        /// The witnessed head given up if a person accepts the log.
        witnessed: Option<TreeHead>,
    },
}

/// The anchor of one log.
pub struct Anchor {
    state: Mutex<State>,
    head_file: Option<PathBuf>,
    public_key: Vec<u8>,
    gauge: IntGauge,
    given_up: Mutex<Option<TreeHead>>,
}

impl Anchor {
    /// An anchor for heads signed with `public_key`, keeping the last signed head in
    /// `head_file` (outside the data directory) when given.
    pub fn new(public_key: &[u8], head_file: Option<PathBuf>) -> Result<Self, prometheus::Error> {
        let gauge = IntGauge::new(
            "portcullis_audit_witness_diverged",
            "1 while the audit log does not extend the head witnessed in the AuditRetention status",
        )?;
        Ok(Self {
            state: Mutex::new(State::Unknown),
            head_file,
            public_key: public_key.to_vec(),
            gauge,
            given_up: Mutex::new(None),
        })
    }

    /// The gauge, for registering.
    pub fn gauge(&self) -> IntGauge {
        self.gauge.clone()
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn set(&self, state: State) {
        self.gauge
            .set(i64::from(matches!(state, State::Diverged { .. })));
        match self.state.lock() {
            Ok(mut s) => *s = state,
            Err(p) => *p.into_inner() = state,
        }
    }

    /// Why the log does not extend the witness, while it does not.
    pub fn diverged(&self) -> Option<String> {
        match self.state() {
            State::Diverged { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// The head the log is known to extend.
    pub fn anchored(&self) -> Option<TreeHead> {
        match self.state() {
            State::Anchored(h) => h,
            _ => None,
        }
    }

    /// Compare the log with the witnessed head and the head file; anchored on the larger of
    /// them when the log extends both, diverged otherwise. Returns the new state.
    pub fn establish(&self, log: &Log, witnessed: Option<&SignedTreeHead>) -> State {
        let witnessed_head = match witnessed.map(|w| self.check(w, "witnessed")) {
            Some(Err(d)) => return self.diverge(d, None),
            Some(Ok(h)) => Some(h),
            None => None,
        };
        let mut anchor = witnessed_head;
        match self.read_head_file() {
            Ok(Some(sth)) => match self.check(&sth, "last signed") {
                Ok(h) => {
                    if anchor.is_none_or(|a| h.tree_size > a.tree_size) {
                        anchor = Some(h);
                    }
                }
                Err(d) => return self.diverge(d, witnessed_head),
            },
            Ok(None) => {}
            Err(e) => {
                return self.diverge(
                    Divergence::BadHead {
                        which: "last signed",
                        size: -1,
                        reason: e,
                    },
                    witnessed_head,
                )
            }
        }
        for (head, which) in [(witnessed_head, "witnessed"), (anchor, "last signed")] {
            if let Some(h) = head {
                if let Err(d) = log_extends(log, &h, which) {
                    return self.diverge(d, witnessed_head);
                }
            }
        }
        if let Err(d) = pruned_retired(log, self.signed_to(log, anchor.as_ref())) {
            return self.diverge(d, witnessed_head);
        }
        let state = State::Anchored(anchor);
        self.set(state.clone());
        state
    }

    /// The largest size of a head signed with the service's key that the log is known to
    /// hold: the anchor, or a head recorded in the log whose root the log still has.
    pub fn signed_to(&self, log: &Log, anchor: Option<&TreeHead>) -> u64 {
        let recorded = log
            .heads()
            .iter()
            .filter_map(|sth| verify_tree_head(sth, &self.public_key).ok())
            .filter(|h| log.root_at(h.tree_size) == Some(h.root_hash))
            .map(|h| h.tree_size);
        recorded
            .chain(anchor.map(|a| a.tree_size))
            .max()
            .unwrap_or(0)
    }

    /// Before signing an evidence manifest over `log`: every entry it no longer holds must
    /// have been retired by a signed prune entry. Diverges (a lasting failure) when not.
    pub fn before_export(&self, log: &Log) -> Result<(), String> {
        let anchored = self.anchored();
        pruned_retired(log, self.signed_to(log, anchored.as_ref())).map_err(|d| {
            let reason = d.to_string();
            self.diverge(d, anchored);
            reason
        })
    }

    /// Check a witnessed head's signature with the service's key.
    pub fn check_witnessed(&self, sth: &SignedTreeHead) -> Result<TreeHead, Divergence> {
        self.check(sth, "witnessed")
    }

    /// Remember the witnessed head a person gave up (`None` once replaced in the witness).
    pub fn give_up(&self, head: Option<TreeHead>) {
        match self.given_up.lock() {
            Ok(mut g) => *g = head,
            Err(p) => *p.into_inner() = head,
        }
    }

    /// Whether `sth` is the witnessed head a person gave up, which publishing may replace.
    pub fn given_up_matches(&self, sth: &SignedTreeHead) -> bool {
        let given_up = self.given_up.lock().map(|g| *g).unwrap_or(None);
        given_up.is_some_and(|g| {
            i64::try_from(g.tree_size).ok() == Some(sth.tree_size)
                && hex::encode(g.root_hash) == sth.root_hash
        })
    }

    fn check(&self, sth: &SignedTreeHead, which: &'static str) -> Result<TreeHead, Divergence> {
        verify_tree_head(sth, &self.public_key).map_err(|e| Divergence::BadHead {
            which,
            size: sth.tree_size,
            reason: e.to_string(),
        })
    }

    /// Enter the diverged state (lasting until [`Anchor::accept`]).
    pub fn diverge(&self, d: Divergence, witnessed: Option<TreeHead>) -> State {
        tracing::error!(error = %d, "the audit log does not extend the witnessed head; signing stops until a person accepts the log");
        let state = State::Diverged {
            reason: d.to_string(),
            witnessed,
        };
        self.set(state.clone());
        state
    }

    /// Before signing `new`: prove the log extends the anchor. Diverges when it does not.
    pub fn before_signing(&self, log: &Log) -> Result<(), String> {
        match self.state() {
            State::Anchored(Some(h)) => log_extends(log, &h, "last signed").map_err(|d| {
                let reason = d.to_string();
                self.diverge(d, Some(h));
                reason
            }),
            State::Anchored(None) => Ok(()),
            State::Unknown => Err("not yet compared with the witnessed head".into()),
            State::Diverged { reason, .. } => Err(reason),
        }
    }

    /// After a head was signed: it is the new anchor, written to the head file.
    pub fn signed(&self, sth: &SignedTreeHead) -> Result<(), String> {
        let head = verify_tree_head(sth, &self.public_key).map_err(|e| e.to_string())?;
        if let Some(path) = &self.head_file {
            write_atomically(path, &serde_json::to_vec(sth).map_err(|e| e.to_string())?)?;
        }
        if matches!(self.state(), State::Anchored(_)) {
            self.set(State::Anchored(Some(head)));
        }
        Ok(())
    }

    /// The value of [`ACCEPT_ANNOTATION`] that accepts the log as it is now.
    pub fn accept_value(witnessed: Option<&TreeHead>, log: &Log) -> String {
        let now = log.head(0);
        let w = witnessed.map_or_else(
            || "0:".to_owned(),
            |w| format!("{}:{}", w.tree_size, hex::encode(w.root_hash)),
        );
        format!("{w}->{}:{}", now.tree_size, hex::encode(now.root_hash))
    }

    /// A person's acceptance: when `value` names the witnessed head this divergence gives up
    /// and a head the log extends, the anchor moves to that head. Returns the accepted head.
    pub fn accept(&self, log: &Log, value: &str) -> Option<(Option<TreeHead>, TreeHead)> {
        let State::Diverged { witnessed, .. } = self.state() else {
            return None;
        };
        let (given_up, accepted) = value.trim().split_once("->")?;
        let expected_given_up = witnessed.map_or_else(
            || "0:".to_owned(),
            |w| format!("{}:{}", w.tree_size, hex::encode(w.root_hash)),
        );
        if given_up != expected_given_up {
            return None;
        }
        let (size, root) = accepted.split_once(':')?;
        let size: u64 = size.parse().ok()?;
        let root: [u8; 32] = hex::decode(root).ok()?.try_into().ok()?;
        if size == 0 || log.root_at(size)? != root {
            return None;
        }
        let head = TreeHead {
            tree_size: size,
            root_hash: root,
            timestamp_ms: 0,
        };
        self.set(State::Anchored(Some(head)));
        Some((witnessed, head))
    }

    fn read_head_file(&self) -> Result<Option<SignedTreeHead>, String> {
        let Some(path) = &self.head_file else {
            return Ok(None);
        };
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}
