//! The durable log: segment files of entries, the Merkle tree over them, idempotent batch
//! appends with one fsync per batch (group commit), signed tree heads, and pruning by whole
//! segments that keeps the pruned entries' leaf hashes so the remaining log still verifies.
//!
//! Directory layout:
//!
//! ```text
//! DIR/segments/00000000000000000000.seg   entries 0.. (frames, see segment.rs)
//! DIR/segments/00000000000000012345.seg   entries 12345..
//! DIR/pruned.leaves                       32-byte leaf hashes of pruned entries 0..p
//! DIR/heads.jsonl                         signed tree heads, one JSON object a line
//! ```
//!
//! Every entry is a JSON object with a string field `id`; an entry whose id is already in the
//! log is not appended again (its existing index is returned), so a sender that resends a batch
//! after a crash never creates duplicates.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use portcullis_crds::audit_log::{leaf_hash, Hash, TreeHead};
use portcullis_crds::SignedTreeHead;
use serde::Deserialize;
use thiserror::Error;

use crate::segment::{
    encode_frame, read_segment, segment_files, sync_dir, SegmentError, SegmentWriter,
};
use crate::tree::Tree;

/// Settings of a log.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// A segment is closed and a new one started once it holds this many bytes.
    pub segment_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
        }
    }
}

/// Errors of the log.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Reading or writing a segment failed, or a segment is damaged.
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// Another I/O error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// An entry is not a JSON object with a string `id`.
    #[error("entry {index}: {reason}")]
    BadEntry {
        /// Position in the batch or the log.
        index: u64,
        /// What is wrong.
        reason: String,
    },
    /// The stored files contradict each other.
    #[error("log is inconsistent: {0}")]
    Inconsistent(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

/// The id of an entry.
pub fn entry_id(entry: &[u8]) -> Result<String, String> {
    serde_json::from_slice::<IdOnly>(entry)
        .map(|e| e.id)
        .map_err(|e| format!("not a JSON object with a string id: {e}"))
}

#[derive(Clone, Debug)]
struct SegmentInfo {
    first: u64,
    path: PathBuf,
    // Byte offset of each entry's frame.
    offsets: Vec<u64>,
}

/// An open log.
pub struct Log {
    dir: PathBuf,
    options: LogOptions,
    tree: Tree,
    ids: HashMap<String, u64>,
    segments: Vec<SegmentInfo>,
    writer: Option<SegmentWriter>,
    pruned: u64,
    heads: Vec<SignedTreeHead>,
    repaired_tail: bool,
    seal: bool,
}

/// What opening a log found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenReport {
    /// Entries in the log, pruned ones included.
    pub entries: u64,
    /// Entries pruned.
    pub pruned: u64,
    /// Whether a torn frame at the end (an unacknowledged write cut by a crash) was removed.
    pub repaired_tail: bool,
}

impl Log {
    /// Open (or create) the log in `dir`, repairing a torn tail left by a crash.
    pub fn open(dir: &Path, options: LogOptions) -> Result<Self, StoreError> {
        let seg_dir = dir.join("segments");
        fs::create_dir_all(&seg_dir).map_err(io(&seg_dir))?;
        let mut tree = Tree::new();
        let pruned = load_pruned(&dir.join("pruned.leaves"), &mut tree)?;

        let names = segment_files(&seg_dir).map_err(io(&seg_dir))?;

        let mut ids = HashMap::new();
        let mut segments = Vec::new();
        let mut writer = None;
        let mut repaired_tail = false;
        let last = names.len().saturating_sub(1);
        for (i, (first, path)) in names.iter().enumerate() {
            if *first != tree.size() {
                return Err(StoreError::Inconsistent(format!(
                    "segment {} starts at entry {first}, expected {}",
                    path.display(),
                    tree.size()
                )));
            }
            let (read, damage) = read_segment(path, *first)?;
            if let Some(damage) = damage {
                if i != last {
                    return Err(damage.into());
                }
                tracing::warn!(segment = %path.display(), error = %damage, "cutting a torn tail left by an interrupted write");
                repaired_tail = true;
            }
            let mut offsets = Vec::with_capacity(read.entries.len());
            let mut offset = 0u64;
            for entry in &read.entries {
                let index = tree.size();
                let id =
                    entry_id(entry).map_err(|reason| StoreError::BadEntry { index, reason })?;
                ids.insert(id, index);
                tree.push(leaf_hash(entry));
                offsets.push(offset);
                offset += 8 + entry.len() as u64;
            }
            if i == last {
                writer = Some(SegmentWriter::reopen(
                    path,
                    *first,
                    read.valid_len,
                    read.entries.len() as u64,
                )?);
            }
            segments.push(SegmentInfo {
                first: *first,
                path: path.clone(),
                offsets,
            });
        }
        let heads = load_heads(&dir.join("heads.jsonl"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            options,
            tree,
            ids,
            segments,
            writer,
            pruned,
            heads,
            repaired_tail,
            seal: false,
        })
    }

    /// What opening found.
    pub fn open_report(&self) -> OpenReport {
        OpenReport {
            entries: self.tree.size(),
            pruned: self.pruned,
            repaired_tail: self.repaired_tail,
        }
    }

    /// Number of entries (pruned ones included: indexes never change).
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// Number of pruned entries (the first `pruned()` indexes).
    pub fn pruned(&self) -> u64 {
        self.pruned
    }

    /// Append a batch durably (one fsync) and return each entry's index. Entries whose id is
    /// already in the log, or earlier in the batch, are not appended again; their existing
    /// index is returned. Nothing of a batch with an invalid entry is written.
    pub fn append(&mut self, batch: &[Vec<u8>]) -> Result<Vec<u64>, StoreError> {
        let mut indexes = Vec::with_capacity(batch.len());
        let mut fresh: Vec<(String, &[u8])> = Vec::new();
        let mut batch_ids: HashMap<String, u64> = HashMap::new();
        let mut next = self.tree.size();
        for (i, entry) in batch.iter().enumerate() {
            let id = entry_id(entry).map_err(|reason| StoreError::BadEntry {
                index: i as u64,
                reason,
            })?;
            if let Some(existing) = self.ids.get(&id).or_else(|| batch_ids.get(&id)) {
                indexes.push(*existing);
                continue;
            }
            batch_ids.insert(id.clone(), next);
            indexes.push(next);
            next += 1;
            fresh.push((id, entry));
        }
        if fresh.is_empty() {
            return Ok(indexes);
        }
        let mut frames = Vec::new();
        let mut sizes = Vec::with_capacity(fresh.len());
        for (_, entry) in &fresh {
            let before = frames.len();
            encode_frame(entry, &mut frames)?;
            sizes.push((frames.len() - before) as u64);
        }
        let writer = self.writer_for_append()?;
        let base = writer.len();
        writer.write(&frames, fresh.len() as u64)?;
        writer.sync()?;
        let segment = self
            .segments
            .last_mut()
            .ok_or_else(|| StoreError::Inconsistent("no segment after append".into()))?;
        let mut offset = base;
        for ((id, entry), size) in fresh.into_iter().zip(sizes) {
            segment.offsets.push(offset);
            offset += size;
            let index = self.tree.size();
            self.ids.insert(id, index);
            self.tree.push(leaf_hash(entry));
        }
        Ok(indexes)
    }

    fn writer_for_append(&mut self) -> Result<&mut SegmentWriter, StoreError> {
        let roll = match &self.writer {
            None => true,
            Some(w) => (self.seal || w.len() >= self.options.segment_bytes) && !w.is_empty(),
        };
        if roll {
            self.seal = false;
            let seg_dir = self.dir.join("segments");
            let first = self.tree.size();
            let w = SegmentWriter::create(&seg_dir, first)?;
            self.segments.push(SegmentInfo {
                first,
                path: seg_dir.join(crate::segment::segment_name(first)),
                offsets: Vec::new(),
            });
            self.writer = Some(w);
        }
        self.writer
            .as_mut()
            .ok_or_else(|| StoreError::Inconsistent("no open segment".into()))
    }

    /// Seal the open segment: the next append starts a new one, so this one can be pruned.
    pub fn seal(&mut self) {
        self.seal = true;
    }

    /// Read entry `index` (`None` if pruned or beyond the end).
    pub fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(seg) = self.segments.iter().rev().find(|s| s.first <= index) else {
            return Ok(None);
        };
        let Some(&offset) = usize::try_from(index - seg.first)
            .ok()
            .and_then(|i| seg.offsets.get(i))
        else {
            return Ok(None);
        };
        let mut file = File::open(&seg.path).map_err(io(&seg.path))?;
        file.seek(SeekFrom::Start(offset)).map_err(io(&seg.path))?;
        let mut header = [0u8; 8];
        file.read_exact(&mut header).map_err(io(&seg.path))?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let mut payload = vec![0u8; len.min(crate::segment::MAX_ENTRY)];
        file.read_exact(&mut payload).map_err(io(&seg.path))?;
        if crc32fast::hash(&payload) != crc || self.tree.leaf(index) != Some(leaf_hash(&payload)) {
            return Err(SegmentError::Corrupt {
                path: seg.path.clone(),
                index,
                offset,
                reason: "entry changed since it was appended".into(),
            }
            .into());
        }
        Ok(Some(payload))
    }

    /// The head of the whole log now.
    pub fn head(&self, timestamp_ms: u64) -> TreeHead {
        self.tree
            .head_at(self.tree.size(), timestamp_ms)
            .unwrap_or(TreeHead {
                tree_size: 0,
                root_hash: portcullis_crds::audit_log::empty_root(),
                timestamp_ms,
            })
    }

    /// Root of the first `size` entries.
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        self.tree.root_at(size)
    }

    /// Inclusion proof of `index` in the tree of the first `size` entries.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        self.tree.inclusion_proof(index, size)
    }

    /// Consistency proof between the first `old` and the first `size` entries.
    pub fn consistency_proof(&self, old: u64, size: u64) -> Option<Vec<Hash>> {
        self.tree.consistency_proof(old, size)
    }

    /// Record a signed tree head durably.
    pub fn record_head(&mut self, sth: &SignedTreeHead) -> Result<(), StoreError> {
        let path = self.dir.join("heads.jsonl");
        let mut line =
            serde_json::to_vec(sth).map_err(|e| StoreError::Inconsistent(e.to_string()))?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(&line).map_err(io(&path))?;
        f.sync_data().map_err(io(&path))?;
        self.heads.push(sth.clone());
        Ok(())
    }

    /// Signed tree heads recorded so far, oldest first.
    pub fn heads(&self) -> &[SignedTreeHead] {
        &self.heads
    }

    /// Delete whole segments whose entries all come before `keep_from`, keeping their leaf
    /// hashes so the tree and every signed head still verify. The open segment is never
    /// deleted (seal it first, see [`Log::seal`]). The audit service calls this only through
    /// `prune::enforce`, after a signed prune entry. Returns the number of entries pruned by this call.
    pub fn prune_before(&mut self, keep_from: u64) -> Result<u64, StoreError> {
        let mut removed = 0;
        while self.segments.len() > 1 {
            let next_first = self.segments[1].first;
            if next_first > keep_from {
                break;
            }
            let seg = self.segments[0].clone();
            // Keep the leaf hashes first, then drop the entries.
            let path = self.dir.join("pruned.leaves");
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            let mut bytes = Vec::with_capacity(((next_first - seg.first) * 32) as usize);
            for index in seg.first..next_first {
                let leaf = self
                    .tree
                    .leaf(index)
                    .ok_or_else(|| StoreError::Inconsistent(format!("no leaf {index}")))?;
                bytes.extend_from_slice(&leaf);
            }
            f.write_all(&bytes).map_err(io(&path))?;
            f.sync_data().map_err(io(&path))?;
            fs::remove_file(&seg.path).map_err(io(&seg.path))?;
            sync_dir(&self.dir.join("segments"))?;
            self.segments.remove(0);
            removed += next_first - seg.first;
            self.pruned = next_first;
        }
        Ok(removed)
    }

    /// The segments kept, oldest first: (first index, entries, bytes on disk).
    pub fn segments(&self) -> Vec<(u64, u64, u64)> {
        self.segments
            .iter()
            .map(|s| {
                let bytes = fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0);
                (s.first, s.offsets.len() as u64, bytes)
            })
            .collect()
    }

    /// Directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn load_pruned(path: &Path, tree: &mut Tree) -> Result<u64, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(path)(e)),
    };
    if bytes.len() % 32 != 0 {
        return Err(StoreError::Inconsistent(format!(
            "{} holds {} bytes, not a whole number of 32-byte hashes",
            path.display(),
            bytes.len()
        )));
    }
    for chunk in bytes.chunks_exact(32) {
        let mut h = [0u8; 32];
        h.copy_from_slice(chunk);
        tree.push(h);
    }
    Ok((bytes.len() / 32) as u64)
}

fn load_heads(path: &Path) -> Result<Vec<SignedTreeHead>, StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path)(e)),
    };
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(io(path))?;
    let last = lines.len().saturating_sub(1);
    let mut heads = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(h) => heads.push(h),
            // A torn last line is a write cut by a crash, never acknowledged.
            Err(e) if i == last => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring a torn last tree head");
            }
            Err(e) => {
                return Err(StoreError::Inconsistent(format!(
                    "{} line {}: {e}",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    Ok(heads)
}
