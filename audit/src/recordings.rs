//! Session recordings (asciicast v2 files of exec and attach sessions), stored content-addressed
//! next to the log: `DATA_DIR/recordings/<sha256>.cast`.
//!
//! The sidecar uploads a recording before it appends the `recording` record that names the
//! file's SHA-256, so the signed log vouches for the content and any copy can be checked against
//! it. A file is written to a temporary name, synced and renamed into place, so a reader never
//! sees half a recording; storing the same content again changes nothing.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Largest recording the service takes.
pub const MAX_RECORDING_BYTES: usize = 64 << 20;

/// Folder of the recordings, in the data directory and in an evidence bundle.
pub const RECORDINGS_DIR: &str = "recordings";

/// Folder (inside the recordings folder) noting which pod uploaded which recording.
const SENDERS_DIR: &str = "senders";

/// Why a recording was not stored or read.
#[derive(Debug, Error)]
pub enum RecordingError {
    /// The name is not a SHA-256 in lowercase hex.
    #[error("{0:?} is not a SHA-256: expected 64 lowercase hex digits")]
    BadName(String),
    /// The content does not hash to the name it was sent under.
    #[error("content has SHA-256 {actual}, not {expected}")]
    Mismatch {
        /// The name it was sent under.
        expected: String,
        /// What the content hashes to.
        actual: String,
    },
    /// A stored file no longer hashes to its name.
    #[error("stored recording {0} is damaged: its content no longer matches its name")]
    Damaged(String),
    /// Storage failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RecordingError + '_ {
    move |source| RecordingError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `s` is a SHA-256 in lowercase hex, the only form recordings are named by.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// File name of a recording: `<sha256>.cast`.
pub fn file_name(sha256: &str) -> String {
    format!("{sha256}.cast")
}

/// What [`RecordingStore::put`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// The recording is new.
    Created,
    /// The same content was already stored.
    AlreadyPresent,
}

/// The recordings folder of the audit service.
#[derive(Debug)]
pub struct RecordingStore {
    dir: PathBuf,
    temp_counter: AtomicU64,
}

impl RecordingStore {
    /// The store in `data_dir/recordings` (created on the first write).
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join(RECORDINGS_DIR),
            temp_counter: AtomicU64::new(0),
        }
    }

    /// The folder holding the recordings.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the recording named `sha256` (which must be valid, see [`is_sha256`]).
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(file_name(sha256))
    }

    /// Store `content` under `sha256` after checking that it hashes to that name. Durable when
    /// this returns: the file and the folder entry are synced.
    pub fn put(&self, sha256: &str, content: &[u8]) -> Result<Stored, RecordingError> {
        if !is_sha256(sha256) {
            return Err(RecordingError::BadName(sha256.to_owned()));
        }
        let actual = sha256_hex(content);
        if actual != sha256 {
            return Err(RecordingError::Mismatch {
                expected: sha256.to_owned(),
                actual,
            });
        }
        let path = self.path(sha256);
        match fs::read(&path) {
            Ok(existing) if sha256_hex(&existing) == sha256 => {
                // Stored again: its retention starts again (see [`RecordingStore::prune`]).
                fs::File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()))
                    .map_err(io(&path))?;
                return Ok(Stored::AlreadyPresent);
            }
            // A damaged copy is replaced by the good one below.
            Ok(_) => tracing::warn!(sha256, "replacing a damaged stored recording"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let temp = self.dir.join(format!(
            ".{sha256}.{}.{}.tmp",
            std::process::id(),
            self.temp_counter.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = fs::File::create(&temp).map_err(io(&temp))?;
            file.write_all(content).map_err(io(&temp))?;
            file.sync_all().map_err(io(&temp))?;
            fs::rename(&temp, &path).map_err(io(&path))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(Stored::Created)
    }

    /// Note durably that the pod with UID `pod_uid` of `namespace` uploaded the recording
    /// `sha256`, so its `recording` records are accepted (see [`RecordingStore::sent_by`]) and
    /// readers of that namespace may read it.
    pub fn mark_sender(
        &self,
        sha256: &str,
        pod_uid: &str,
        namespace: &str,
    ) -> Result<(), RecordingError> {
        let path = self.sender_path(sha256, pod_uid)?;
        if path.exists() {
            return Ok(());
        }
        let senders = self.dir.join(SENDERS_DIR);
        fs::create_dir_all(&senders).map_err(io(&senders))?;
        fs::File::create(&path)
            .and_then(|mut f| {
                f.write_all(namespace.as_bytes())?;
                f.sync_all()
            })
            .map_err(io(&path))?;
        fs::File::open(&senders)
            .and_then(|d| d.sync_all())
            .map_err(io(&senders))
    }

    /// Whether the pod with UID `pod_uid` uploaded the recording `sha256` and it is stored.
    pub fn sent_by(&self, sha256: &str, pod_uid: &str) -> bool {
        self.sender_path(sha256, pod_uid)
            .is_ok_and(|p| p.exists() && self.path(sha256).exists())
    }

    /// The namespaces of the pods that uploaded the recording `sha256`.
    pub fn sender_namespaces(&self, sha256: &str) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.dir.join(SENDERS_DIR)) else {
            return Vec::new();
        };
        let prefix = format!("{sha256}.");
        entries
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(&prefix) && name.ends_with(".sender")
            })
            .filter_map(|e| fs::read_to_string(e.path()).ok())
            .collect()
    }

    fn sender_path(&self, sha256: &str, pod_uid: &str) -> Result<PathBuf, RecordingError> {
        if !is_sha256(sha256) {
            return Err(RecordingError::BadName(sha256.to_owned()));
        }
        if pod_uid.is_empty()
            || pod_uid.len() > 64
            || !pod_uid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(RecordingError::BadName(pod_uid.to_owned()));
        }
        Ok(self
            .dir
            .join(SENDERS_DIR)
            .join(format!("{sha256}.{pod_uid}.sender")))
    }

    /// Delete the recordings stored before `cutoff` that no record in `keep` names (the
    /// retention of the records that name them has passed); returns how many went. Files
    /// that are not recordings are left alone.
    pub fn prune(
        &self,
        cutoff: std::time::SystemTime,
        keep: &BTreeSet<String>,
    ) -> Result<u64, RecordingError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name();
            let Some(sha256) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".cast"))
                .filter(|s| is_sha256(s))
            else {
                continue;
            };
            if keep.contains(sha256) {
                continue;
            }
            let path = entry.path();
            let stored = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_err(io(&path))?;
            if stored < cutoff {
                fs::remove_file(&path).map_err(io(&path))?;
                tracing::info!(sha256, "deleted a recording past retention");
                removed += 1;
            }
        }
        if removed > 0 {
            fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir))?;
        }
        Ok(removed)
    }

    /// The recording named `sha256`, checked against its name; `None` when it is not stored.
    pub fn get(&self, sha256: &str) -> Result<Option<Vec<u8>>, RecordingError> {
        if !is_sha256(sha256) {
            return Err(RecordingError::BadName(sha256.to_owned()));
        }
        let path = self.path(sha256);
        let content = match fs::read(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        if sha256_hex(&content) != sha256 {
            return Err(RecordingError::Damaged(sha256.to_owned()));
        }
        Ok(Some(content))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prunes_old_unnamed_recordings_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordingStore::new(dir.path());
        let now = std::time::SystemTime::now();
        let day = std::time::Duration::from_secs(86_400);
        let mut names = Vec::new();
        for (i, age_days) in [(0u8, 500u64), (1, 500), (2, 0)] {
            let content = format!("recording {i}").into_bytes();
            let sha = sha256_hex(&content);
            store.put(&sha, &content).unwrap();
            fs::File::options()
                .append(true)
                .open(store.path(&sha))
                .unwrap()
                .set_modified(now - day * age_days as u32)
                .unwrap();
            names.push(sha);
        }
        fs::write(store.dir().join("notes.txt"), "x").unwrap();
        let keep: BTreeSet<String> = [names[0].clone()].into();
        let cutoff = now - day * 400;
        assert_eq!(store.prune(cutoff, &keep).unwrap(), 1);
        // Old but still named by a kept record; old and named by none; recent.
        assert!(store.path(&names[0]).exists());
        assert!(!store.path(&names[1]).exists());
        assert!(store.path(&names[2]).exists());
        assert!(store.dir().join("notes.txt").exists());
        // Stored again, an old recording's retention starts again.
        fs::File::options()
            .append(true)
            .open(store.path(&names[2]))
            .unwrap()
            .set_modified(now - day * 500)
            .unwrap();
        assert_eq!(
            store.put(&names[2], b"recording 2").unwrap(),
            Stored::AlreadyPresent
        );
        assert_eq!(store.prune(cutoff, &BTreeSet::new()).unwrap(), 1);
        assert!(!store.path(&names[0]).exists());
        assert!(store.path(&names[2]).exists());
        assert_eq!(
            RecordingStore::new(&dir.path().join("none"))
                .prune(cutoff, &keep)
                .unwrap(),
            0
        );
    }

    #[test]
    fn stores_content_addressed_and_idempotently() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = RecordingStore::new(dir.path());
        let content = b"{\"version\": 2, \"width\": 80, \"height\": 24}\n[0.1, \"o\", \"hi\"]\n";
        let sha = sha256_hex(content);
        assert_eq!(store.get(&sha).expect("get"), None);
        assert_eq!(store.put(&sha, content).expect("put"), Stored::Created);
        assert_eq!(
            store.put(&sha, content).expect("put again"),
            Stored::AlreadyPresent
        );
        assert_eq!(store.get(&sha).expect("get").as_deref(), Some(&content[..]));
        let names: Vec<String> = fs::read_dir(store.dir())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![file_name(&sha)], "no temporary file left");
    }

    #[test]
    fn refuses_wrong_names_and_content() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = RecordingStore::new(dir.path());
        let sha = sha256_hex(b"one");
        assert!(matches!(
            store.put(&sha, b"two"),
            Err(RecordingError::Mismatch { .. })
        ));
        for bad in [&sha.to_uppercase(), "abc", "../../etc/passwd", &sha[1..]] {
            assert!(
                matches!(store.put(bad, b"one"), Err(RecordingError::BadName(_))),
                "{bad}"
            );
            assert!(matches!(store.get(bad), Err(RecordingError::BadName(_))));
        }
        assert!(!store.dir().exists(), "nothing stored");
    }

    #[test]
    fn a_damaged_copy_is_detected_and_replaced() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = RecordingStore::new(dir.path());
        let sha = sha256_hex(b"one");
        store.put(&sha, b"one").expect("put");
        fs::write(store.path(&sha), b"onE").expect("damage");
        assert!(matches!(store.get(&sha), Err(RecordingError::Damaged(_))));
        assert_eq!(store.put(&sha, b"one").expect("put"), Stored::Created);
        assert_eq!(store.get(&sha).expect("get").as_deref(), Some(&b"one"[..]));
    }
}
