//! Offline verification of a log directory: every frame's checksum, the Merkle tree rebuilt
//! from the entries, and every signed tree head (those stored with the log and those the
//! caller trusts from elsewhere, such as the AuditRetention status) checked for its signature
//! and its root, and the entries the log no longer holds checked against the signed prune
//! entries that retired them (see `prune`). The first failure is named by its position.

use std::path::Path;

use portcullis_crds::audit_log::{leaf_hash, verify_tree_head, TreeBuilder, TreeHead};
use portcullis_crds::SignedTreeHead;
use thiserror::Error;

use crate::prune::{check_pruned, parse_prune};
use crate::segment::{read_segment, segment_files, SegmentError};

/// What a successful verification covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Entries walked (pruned ones counted through their kept leaf hashes).
    pub entries: u64,
    /// Signed tree heads checked.
    pub heads: usize,
    /// The largest verified head.
    pub latest: Option<TreeHead>,
}

/// The first failure found.
#[derive(Debug, Error)]
pub enum VerifyError {
    /// A file could not be read.
    #[error("{0}")]
    Io(String),
    /// An entry's frame is damaged (a flipped byte, a cut frame).
    #[error("entry {index} is damaged: {reason}")]
    Damaged {
        /// Log index.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// A signed tree head does not verify with the public key.
    #[error("signed tree head of size {size}: {reason}")]
    BadHead {
        /// Its tree size.
        size: i64,
        /// Why.
        reason: String,
    },
    /// The log holds fewer entries than a signed head covers (entries were removed).
    #[error("log holds {entries} entries but a signed tree head covers {head_size}: entries {entries}..{head_size} are missing")]
    Truncated {
        /// Entries found.
        entries: u64,
        /// Size the head covers.
        head_size: u64,
    },
    /// The entries up to a head's size do not hash to its root (entries altered, removed or
    /// inserted between the previous verified head and this one).
    #[error("entries {from}..{to} do not match the signed tree head of size {to} (signed {signed_at}): the log was altered in that range")]
    Mismatch {
        /// First index of the range that must contain the change.
        from: u64,
        /// Size of the head that fails.
        to: u64,
        /// When that head was signed.
        signed_at: String,
    },
    /// Segments are missing or out of order.
    #[error("segment layout: {0}")]
    Layout(String),
    /// A recording the log names is missing or damaged.
    #[error("recordings: {0}")]
    Recording(String),
    /// Entries are gone without a signed prune entry that retired them within its rule.
    #[error("pruning: {0}")]
    Prune(String),
}

/// Verify the log in `dir` against its own heads and `trusted` heads, with `public_key`.
pub fn verify_log(
    dir: &Path,
    public_key: &[u8],
    trusted: &[SignedTreeHead],
) -> Result<Verified, VerifyError> {
    let mut heads: Vec<(TreeHead, String)> = Vec::new();
    let stored = read_heads(&dir.join("heads.jsonl"))?;
    for sth in stored.iter().chain(trusted) {
        let head = verify_tree_head(sth, public_key).map_err(|e| VerifyError::BadHead {
            size: sth.tree_size,
            reason: e.to_string(),
        })?;
        heads.push((head, sth.timestamp.clone()));
    }
    heads.sort_by_key(|(h, _)| h.tree_size);
    let mut pending = heads.iter().peekable();
    let mut builder = TreeBuilder::new();
    let mut verified_to = 0u64;
    let mut latest = None;
    let mut checked = 0usize;

    let mut check_heads =
        |builder: &TreeBuilder, verified_to: &mut u64| -> Result<(), VerifyError> {
            while let Some((head, signed_at)) = pending.peek() {
                if head.tree_size > builder.size() {
                    break;
                }
                if head.tree_size == builder.size() {
                    if builder.root() != head.root_hash {
                        return Err(VerifyError::Mismatch {
                            from: *verified_to,
                            to: head.tree_size,
                            signed_at: signed_at.clone(),
                        });
                    }
                    *verified_to = head.tree_size;
                    latest = Some(*head);
                    checked += 1;
                }
                pending.next();
            }
            Ok(())
        };
    check_heads(&builder, &mut verified_to)?;

    let mut prunes = Vec::new();
    if let Ok(bytes) = std::fs::read(dir.join("pruned.leaves")) {
        for chunk in bytes.chunks_exact(32) {
            let mut h = [0u8; 32];
            h.copy_from_slice(chunk);
            builder.push(h);
            check_heads(&builder, &mut verified_to)?;
        }
    }
    let pruned = builder.size();
    let seg_dir = dir.join("segments");
    let names = segment_files(&seg_dir)
        .map_err(|e| VerifyError::Io(format!("{}: {e}", seg_dir.display())))?;
    for (first, path) in names {
        if first != builder.size() {
            return Err(VerifyError::Layout(format!(
                "segment {} starts at entry {first}, expected {}: entries {}..{first} are missing",
                path.display(),
                builder.size(),
                builder.size()
            )));
        }
        let (read, damage) =
            read_segment(&path, first).map_err(|e| VerifyError::Io(e.to_string()))?;
        for entry in &read.entries {
            if let Some(p) = parse_prune(builder.size(), entry) {
                prunes.push(p);
            }
            builder.push(leaf_hash(entry));
            check_heads(&builder, &mut verified_to)?;
        }
        if let Some(SegmentError::Corrupt { index, reason, .. }) = damage {
            return Err(VerifyError::Damaged { index, reason });
        }
    }
    if let Some((head, _)) = pending.next() {
        return Err(VerifyError::Truncated {
            entries: builder.size(),
            head_size: head.tree_size,
        });
    }
    check_pruned(pruned, &prunes, verified_to).map_err(VerifyError::Prune)?;
    Ok(Verified {
        entries: builder.size(),
        heads: checked,
        latest,
    })
}

fn read_heads(path: &Path) -> Result<Vec<SignedTreeHead>, VerifyError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(VerifyError::Io(format!("{}: {e}", path.display()))),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| VerifyError::BadHead {
                size: -1,
                reason: format!("{} line {}: {e}", path.display(), i + 1),
            })
        })
        .collect()
}

/// Read an ed25519 public key from a file holding its raw 32 bytes or their hex (the form
/// `portcullis-audit keygen` prints and the chart stores as `ed25519.pub`).
pub fn read_public_key(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() == 32 {
        return Ok(bytes);
    }
    hex::decode(String::from_utf8_lossy(&bytes).trim())
        .ok()
        .filter(|k| k.len() == 32)
        .ok_or_else(|| {
            format!(
                "{}: not a 32-byte ed25519 public key (raw or hex)",
                path.display()
            )
        })
}
