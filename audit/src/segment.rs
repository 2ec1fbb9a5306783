//! Segment files: entries stored as frames `[u32 length][u32 CRC-32][payload]` (little
//! endian), appended and fsynced in batches.
//!
//! A segment is named after the index of its first entry (`00000000000000001234.seg`), so the
//! log's order is the order of the file names. A torn frame at the end of the last segment (a
//! crash during a write that was never acknowledged) is cut off on open; a damaged frame
//! anywhere else is corruption and is reported with its position.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Largest entry accepted (1 MiB): audit records are small; anything larger is a bug or abuse.
pub const MAX_ENTRY: usize = 1 << 20;
const HEADER: usize = 8;

/// Problems reading or writing segments.
#[derive(Debug, Error)]
pub enum SegmentError {
    /// An I/O error, with the file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A frame is damaged somewhere other than the torn tail of the last segment.
    #[error("{path}: entry {index} at byte {offset} is damaged: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Log index of the damaged entry.
        index: u64,
        /// Byte offset of its frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An entry larger than [`MAX_ENTRY`].
    #[error("entry of {0} bytes exceeds the limit of {MAX_ENTRY} bytes")]
    TooLarge(usize),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SegmentError + '_ {
    move |source| SegmentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// File name of the segment whose first entry is `first`.
pub fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

/// First index encoded in a segment file name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_suffix(".seg")?.parse().ok()
}

/// The segment files in `seg_dir`, by first index.
pub fn segment_files(seg_dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(seg_dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| parse_segment_name(&e.file_name().to_string_lossy()).map(|f| (f, e.path())))
        .collect();
    files.sort();
    Ok(files)
}

/// Encode one frame.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), SegmentError> {
    if payload.len() > MAX_ENTRY {
        return Err(SegmentError::TooLarge(payload.len()));
    }
    let len = u32::try_from(payload.len()).map_err(|_| SegmentError::TooLarge(payload.len()))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// The outcome of reading a segment.
pub struct ReadSegment {
    /// Entries, in order.
    pub entries: Vec<Vec<u8>>,
    /// Byte length of the valid frames (where the next frame goes).
    pub valid_len: u64,
    /// Whether a torn or damaged tail was found after `valid_len`.
    pub torn_tail: bool,
}

/// Read every frame of a segment. A damaged frame ends the read: the caller decides whether
/// that is a torn tail (last segment) or corruption (with [`SegmentError::Corrupt`]).
pub fn read_segment(
    path: &Path,
    first_index: u64,
) -> Result<(ReadSegment, Option<SegmentError>), SegmentError> {
    let file = File::open(path).map_err(io(path))?;
    let file_len = file.metadata().map_err(io(path))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut entries = Vec::new();
    let mut offset = 0u64;
    let mut header = [0u8; HEADER];
    let damage = loop {
        if offset == file_len {
            break None;
        }
        let index = first_index + entries.len() as u64;
        let corrupt = |reason: String| SegmentError::Corrupt {
            path: path.to_path_buf(),
            index,
            offset,
            reason,
        };
        if file_len - offset < HEADER as u64 {
            break Some(corrupt("truncated frame header".into()));
        }
        reader.read_exact(&mut header).map_err(io(path))?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_ENTRY {
            break Some(corrupt(format!("frame length {len} exceeds the limit")));
        }
        if file_len - offset - (HEADER as u64) < len as u64 {
            break Some(corrupt("truncated frame".into()));
        }
        let mut payload = vec![0u8; len];
        reader.read_exact(&mut payload).map_err(io(path))?;
        if crc32fast::hash(&payload) != crc {
            break Some(corrupt("checksum mismatch".into()));
        }
        entries.push(payload);
        offset += (HEADER + len) as u64;
    };
    Ok((
        ReadSegment {
            entries,
            valid_len: offset,
            torn_tail: damage.is_some(),
        },
        damage,
    ))
}

/// An open segment being appended to.
pub struct SegmentWriter {
    path: PathBuf,
    file: File,
    len: u64,
    first: u64,
    count: u64,
}

impl SegmentWriter {
    /// Create a new segment for entries from `first` on, and make its directory entry durable.
    pub fn create(dir: &Path, first: u64) -> Result<Self, SegmentError> {
        let path = dir.join(segment_name(first));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        sync_dir(dir)?;
        Ok(Self {
            path,
            file,
            len: 0,
            first,
            count: 0,
        })
    }

    /// Reopen an existing segment, cutting it to `valid_len` bytes holding `count` entries.
    pub fn reopen(
        path: &Path,
        first: u64,
        valid_len: u64,
        count: u64,
    ) -> Result<Self, SegmentError> {
        let mut file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        file.set_len(valid_len).map_err(io(path))?;
        file.seek(SeekFrom::End(0)).map_err(io(path))?;
        file.sync_all().map_err(io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len: valid_len,
            first,
            count,
        })
    }

    /// Append encoded frames (not yet durable).
    pub fn write(&mut self, frames: &[u8], count: u64) -> Result<(), SegmentError> {
        self.file.write_all(frames).map_err(io(&self.path))?;
        self.len += frames.len() as u64;
        self.count += count;
        Ok(())
    }

    /// Make everything written durable.
    pub fn sync(&mut self) -> Result<(), SegmentError> {
        self.file.sync_data().map_err(io(&self.path))
    }

    /// Bytes in the segment.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the segment holds no entry.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Index of the first entry.
    pub fn first(&self) -> u64 {
        self.first
    }
}

/// fsync a directory, so created or removed files survive a crash.
pub fn sync_dir(dir: &Path) -> Result<(), SegmentError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}
