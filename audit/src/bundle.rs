//! Evidence bundles: a folder an auditor can check offline with the log's public key alone.
//!
//! ```text
//! DIR/records.jsonl        the log entries, byte for byte as stored, one a line
//! DIR/proofs.jsonl         for each line of records.jsonl: {"index", "treeSize", "hashes"}
//! DIR/records.ocsf.jsonl   the same records as OCSF events (Datastore Activity), for a SIEM
//! DIR/sth.json             the signed tree head every proof refers to
//! DIR/summary.md           a human-readable record of processing and list of access events
//! DIR/recordings/<sha256>.cast   each exec or attach session recording a record names
//! ```
//!
//! [`verify_bundle`] checks the signature of the head and the inclusion proof of every record
//! and names the first record that fails, then checks every recording a `recording` record
//! names against the SHA-256 in that record: the record is covered by its proof, so the proof
//! vouches for the file too. A recording the log's storage had lost at export is not in the
//! bundle; the signed manifest lists it (expected SHA-256, first log index naming it) and
//! verification reports it in [`BundleReport::missing_recordings`] instead of passing silently.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use portcullis_crds::audit_log::{
    verify_consistency, verify_inclusion, verify_tree_head, Hash, LogSigner, TreeHead,
};
use portcullis_crds::SignedTreeHead;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::manifest::{
    file_digests, verify_signature, Manifest, ManifestSignature, MissingRecording, Selection,
    MANIFEST_FILE, MANIFEST_VERSION, SIGNATURE_FILE,
};
use crate::recordings::{file_name, is_sha256, sha256_hex, RecordingStore, RECORDINGS_DIR};
use crate::store::Log;

/// One line of `proofs.jsonl`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ProofLine {
    /// Log index of the record.
    pub index: u64,
    /// Tree size of the head the proof leads to.
    pub tree_size: u64,
    /// Audit path, hex.
    pub hashes: Vec<String>,
}

/// Errors writing or verifying a bundle.
#[derive(Debug, Error)]
pub enum BundleError {
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// The signed tree head does not verify.
    #[error("sth.json: {0}")]
    Head(String),
    /// A record is not covered by its proof (altered, reordered or foreign).
    #[error("record {line} (log index {index}) fails verification: {reason}")]
    Record {
        /// 1-based line in records.jsonl.
        line: usize,
        /// Its log index.
        index: u64,
        /// Why.
        reason: String,
    },
    /// records.jsonl and proofs.jsonl do not line up.
    #[error("bundle layout: {0}")]
    Layout(String),
    /// The manifest is missing, unsigned, or does not describe this bundle.
    #[error("manifest: {0}")]
    Manifest(String),
    /// The records are not the set the manifest names (missing, repeated, reordered, extra).
    #[error("record set: {0}")]
    Set(String),
    /// A file derived from the records (OCSF copy, summary) or listed in the manifest was
    /// changed, added or removed.
    #[error("{0}")]
    Files(String),
    /// The bundle's head is not the trusted head or a proven prefix of it.
    #[error("trusted head: {0}")]
    Trust(String),
    /// A recording a record names is missing or does not match the record.
    #[error("{file}: {reason}")]
    Recording {
        /// The file, relative to the bundle (`recordings/<sha256>.cast`).
        file: String,
        /// Why.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |e| BundleError::Io(format!("{}: {e}", path.display()))
}

/// Which entries go into a bundle.
pub trait Select {
    /// Whether the entry (its JSON) belongs in the bundle.
    fn keep(&self, entry: &Value) -> bool;
}

impl<F: Fn(&Value) -> bool> Select for F {
    fn keep(&self, entry: &Value) -> bool {
        self(entry)
    }
}

/// An entry with its audit path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvenEntry {
    /// Log index.
    pub index: u64,
    /// The entry byte for byte.
    pub bytes: Vec<u8>,
    /// Audit path to the bundle's signed head.
    pub proof: Vec<Hash>,
}

/// Write a bundle of the entries `selection` keeps, with proofs to `sth` (which must be a head
/// of `log`), and its manifest signed with the log's key (`signer`). Returns the number of
/// records written.
pub fn write_bundle(
    log: &Log,
    sth: &SignedTreeHead,
    selection: &Selection,
    signer: &LogSigner,
    dir: &Path,
) -> Result<usize, BundleError> {
    let mut selection = selection.clone();
    let size =
        u64::try_from(sth.tree_size).map_err(|_| BundleError::Head("negative tree size".into()))?;
    if selection.to_index == 0 || selection.to_index > size {
        selection.to_index = size;
    }
    let n = write_bundle_files(log, sth, &selection, dir)?;
    let manifest = crate::manifest::build(dir, sth, &selection, log.pruned())
        .map_err(|e| BundleError::Manifest(e.to_string()))?;
    let signed = crate::manifest::sign_manifest(signer, &manifest)
        .map_err(|e| BundleError::Manifest(e.to_string()))?;
    crate::manifest::write(dir, &signed).map_err(|e| BundleError::Manifest(e.to_string()))?;
    Ok(n)
}

fn write_bundle_files(
    log: &Log,
    sth: &SignedTreeHead,
    select: &Selection,
    dir: &Path,
) -> Result<usize, BundleError> {
    let size =
        u64::try_from(sth.tree_size).map_err(|_| BundleError::Head("negative tree size".into()))?;
    let mut entries = Vec::new();
    let from = log.pruned().max(select.from_index);
    for index in from..size.min(log.size()).min(select.to_index) {
        let Some(bytes) = log
            .entry(index)
            .map_err(|e| BundleError::Io(e.to_string()))?
        else {
            continue;
        };
        let proof = log.inclusion_proof(index, size).ok_or_else(|| {
            BundleError::Layout(format!("no proof for index {index} at size {size}"))
        })?;
        entries.push(ProvenEntry {
            index,
            bytes,
            proof,
        });
    }
    let n = write_bundle_from(entries, sth, select, dir)?;
    let store = RecordingStore::new(log.dir());
    for sha256 in referenced_recordings(dir)? {
        // A recording the storage lost or holds damaged is left out and listed as missing by
        // the manifest: one lost file does not withhold the rest of the evidence.
        match store.get(&sha256) {
            Ok(Some(content)) => add_recording(dir, &sha256, &content)?,
            Ok(None) => {
                tracing::warn!(%sha256, "recording named by the log is not stored; the bundle lists it as missing")
            }
            Err(e) => {
                tracing::warn!(%sha256, error = %e, "recording named by the log is unreadable; the bundle lists it as missing")
            }
        }
    }
    Ok(n)
}

/// Path of a recording in a bundle, relative to the bundle: `recordings/<sha256>.cast`.
pub fn recording_file(sha256: &str) -> String {
    format!("{RECORDINGS_DIR}/{}", file_name(sha256))
}

/// The SHA-256 of the recording a log entry names, when it is a `recording` record.
pub fn recording_of(entry: &Value) -> Option<&str> {
    let event = &entry["record"]["event"];
    if event["type"] == "recording" {
        event["sha256"].as_str()
    } else {
        None
    }
}

/// The recording a log entry (its JSON bytes) names, if any. Entries that cannot name one
/// (no `"recording"` in their text and no `\u` escape that could spell it) are not parsed.
pub fn recording_named(entry: &[u8]) -> Option<String> {
    let contains = |needle: &[u8]| entry.windows(needle.len()).any(|w| w == needle);
    if !contains(b"\"recording\"") && !contains(b"\\u") {
        return None;
    }
    let value = serde_json::from_slice::<Value>(entry).ok()?;
    recording_of(&value).map(str::to_owned)
}

/// The recordings the records of a bundle name, each once, in the order first named.
pub fn referenced_recordings(dir: &Path) -> Result<Vec<String>, BundleError> {
    let records_path = dir.join("records.jsonl");
    let records = BufReader::new(fs::File::open(&records_path).map_err(io(&records_path))?);
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for line in records.split(b'\n') {
        let line = line.map_err(io(&records_path))?;
        if let Some(sha256) = recording_named(&line) {
            if seen.insert(sha256.clone()) {
                out.push(sha256);
            }
        }
    }
    Ok(out)
}

/// Put a recording into a bundle as `recordings/<sha256>.cast`, after checking that its
/// content matches `sha256`.
pub fn add_recording(dir: &Path, sha256: &str, content: &[u8]) -> Result<(), BundleError> {
    let file = recording_file(sha256);
    if !is_sha256(sha256) {
        return Err(BundleError::Recording {
            file,
            reason: "the record's sha256 is not 64 lowercase hex digits".into(),
        });
    }
    let actual = sha256_hex(content);
    if actual != sha256 {
        return Err(BundleError::Recording {
            file,
            reason: format!("content has SHA-256 {actual}"),
        });
    }
    let folder = dir.join(RECORDINGS_DIR);
    fs::create_dir_all(&folder).map_err(io(&folder))?;
    let path = dir.join(&file);
    fs::write(&path, content).map_err(io(&path))
}

/// The recording in a bundle whose SHA-256 starts with `prefix` (at least 4 hex digits, or a
/// whole SHA-256). Fails when none or more than one match.
pub fn find_recording(dir: &Path, prefix: &str) -> Result<PathBuf, BundleError> {
    let prefix = prefix.to_ascii_lowercase();
    let folder = dir.join(RECORDINGS_DIR);
    let not_found = |reason: String| BundleError::Recording {
        file: format!("{RECORDINGS_DIR}/{prefix}*.cast"),
        reason,
    };
    if prefix.len() < 4 || prefix.len() > 64 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found(
            "name a recording by its SHA-256 or a prefix of at least 4 hex digits".into(),
        ));
    }
    let mut matches = Vec::new();
    for entry in fs::read_dir(&folder).map_err(io(&folder))? {
        let entry = entry.map_err(io(&folder))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(sha256) = name.strip_suffix(".cast") {
            if is_sha256(sha256) && sha256.starts_with(&prefix) {
                matches.push(sha256.to_owned());
            }
        }
    }
    matches.sort();
    match matches.as_slice() {
        [one] => Ok(folder.join(file_name(one))),
        [] => Err(not_found(format!(
            "no recording in {} starts with {prefix}",
            folder.display()
        ))),
        many => Err(not_found(format!(
            "{prefix} is ambiguous: {}",
            many.join(", ")
        ))),
    }
}

/// Write a bundle from entries already fetched with their proofs (for example from the audit
/// service's `GET /v1/entries`). Returns the number of records written.
pub fn write_bundle_from(
    entries: impl IntoIterator<Item = ProvenEntry>,
    sth: &SignedTreeHead,
    select: &dyn Select,
    dir: &Path,
) -> Result<usize, BundleError> {
    fs::create_dir_all(dir).map_err(io(dir))?;
    let size =
        u64::try_from(sth.tree_size).map_err(|_| BundleError::Head("negative tree size".into()))?;
    let records_path = dir.join("records.jsonl");
    let proofs_path = dir.join("proofs.jsonl");
    let ocsf_path = dir.join("records.ocsf.jsonl");
    let mut records = fs::File::create(&records_path).map_err(io(&records_path))?;
    let mut proofs = fs::File::create(&proofs_path).map_err(io(&proofs_path))?;
    let mut ocsf = fs::File::create(&ocsf_path).map_err(io(&ocsf_path))?;
    let mut kept = Vec::new();
    for ProvenEntry {
        index,
        bytes: entry,
        proof: hashes,
    } in entries
    {
        let Ok(value) = serde_json::from_slice::<Value>(&entry) else {
            continue;
        };
        if !select.keep(&value) {
            continue;
        }
        records.write_all(&entry).map_err(io(&records_path))?;
        records.write_all(b"\n").map_err(io(&records_path))?;
        let line = ProofLine {
            index,
            tree_size: size,
            hashes: hashes.iter().map(hex::encode).collect(),
        };
        let mut text = serde_json::to_vec(&line).map_err(|e| BundleError::Io(e.to_string()))?;
        text.push(b'\n');
        proofs.write_all(&text).map_err(io(&proofs_path))?;
        let mut event =
            serde_json::to_vec(&to_ocsf(&value)).map_err(|e| BundleError::Io(e.to_string()))?;
        event.push(b'\n');
        ocsf.write_all(&event).map_err(io(&ocsf_path))?;
        kept.push(value);
    }
    let sth_path = dir.join("sth.json");
    fs::write(
        &sth_path,
        serde_json::to_vec_pretty(sth).map_err(|e| BundleError::Io(e.to_string()))?,
    )
    .map_err(io(&sth_path))?;
    let summary_path = dir.join("summary.md");
    fs::write(&summary_path, summary(&kept, sth)).map_err(io(&summary_path))?;
    Ok(kept.len())
}

/// What a verified bundle holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleReport {
    /// Records verified.
    pub records: usize,
    /// Size of the signed tree they are proven against.
    pub tree_size: u64,
    /// Recordings checked against the records that name them.
    pub recordings: usize,
    /// Recordings records name that the signed manifest lists as missing at export: the
    /// records verify, the bundle is complete except for these files.
    pub missing_recordings: Vec<MissingRecording>,
}

/// What an auditor trusts besides the public key.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// A head the auditor trusts (the cluster's witness): the bundle's head must be it, or a
    /// prefix of it proven by `consistency`, or extend it by `consistency`.
    pub expect_head: Option<SignedTreeHead>,
    /// Consistency proof between the bundle's head and `expect_head` (smaller to larger).
    pub consistency: Vec<Hash>,
    /// Accept a bundle whose head is a proven prefix of the trusted head (its records stop
    /// before the trusted head; it is older).
    pub allow_older: bool,
}

/// Verify a bundle offline with the log's raw ed25519 public key.
pub fn verify_bundle(dir: &Path, public_key: &[u8]) -> Result<BundleReport, BundleError> {
    verify_bundle_trusting(dir, public_key, &Trust::default())
}

fn read_manifest(
    dir: &Path,
    public_key: &[u8],
    sth: &SignedTreeHead,
) -> Result<Manifest, BundleError> {
    let bad = |m: String| BundleError::Manifest(m);
    let manifest_path = dir.join(MANIFEST_FILE);
    let bytes = match fs::read(&manifest_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad(format!(
                "{MANIFEST_FILE} is missing: without a signed manifest the bundle does not prove which records it should hold"
            )))
        }
        Err(e) => return Err(io(&manifest_path)(e)),
    };
    let sig_path = dir.join(SIGNATURE_FILE);
    let sig_bytes = fs::read(&sig_path).map_err(|e| bad(format!("{SIGNATURE_FILE}: {e}")))?;
    let sig: ManifestSignature =
        serde_json::from_slice(&sig_bytes).map_err(|e| bad(format!("{SIGNATURE_FILE}: {e}")))?;
    // The signature file is not covered by a hash of its own: it must be byte for byte the
    // form the service writes, so no edit to it (a repeated or extra field, other spacing)
    // passes.
    if crate::manifest::signature_file(&sig).ok().as_deref() != Some(sig_bytes.as_slice()) {
        return Err(bad(format!(
            "{SIGNATURE_FILE} is not the file the audit service wrote (its bytes were changed)"
        )));
    }
    verify_signature(&bytes, &sig, public_key).map_err(|e| bad(e.to_string()))?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("{MANIFEST_FILE}: {e}")))?;
    if manifest.version != MANIFEST_VERSION {
        return Err(bad(format!("unknown version {:?}", manifest.version)));
    }
    if &manifest.sth != sth {
        return Err(bad(
            "sth.json is not the signed tree head the manifest names".into(),
        ));
    }
    Ok(manifest)
}

/// Check the bundle's head against a trusted head.
fn check_trust(head: &TreeHead, trust: &Trust, public_key: &[u8]) -> Result<(), BundleError> {
    let Some(expected) = &trust.expect_head else {
        return Ok(());
    };
    let bad = |m: String| BundleError::Trust(m);
    let trusted = verify_tree_head(expected, public_key).map_err(|e| bad(e.to_string()))?;
    if trusted.tree_size == head.tree_size {
        return if trusted.root_hash == head.root_hash {
            Ok(())
        } else {
            Err(bad(format!(
                "the bundle's head of size {} has another root than the trusted head: the log was rewritten",
                head.tree_size
            )))
        };
    }
    if trusted.tree_size > head.tree_size {
        if trust.consistency.is_empty() {
            return Err(bad(format!(
                "the bundle's head covers {} entries, the trusted head {}: the bundle is older than the log (give a consistency proof and --allow-older to accept an older bundle)",
                head.tree_size, trusted.tree_size
            )));
        }
        verify_consistency(head, &trusted, &trust.consistency).map_err(|e| {
            bad(format!(
                "the bundle's head is not a prefix of the trusted head: {e}"
            ))
        })?;
        if !trust.allow_older {
            return Err(bad(format!(
                "the bundle's head covers {} entries, the trusted head {}: the bundle is older than the log",
                head.tree_size, trusted.tree_size
            )));
        }
        return Ok(());
    }
    verify_consistency(&trusted, head, &trust.consistency).map_err(|e| {
        bad(format!(
            "the bundle's head does not extend the trusted head of size {}: {e}",
            trusted.tree_size
        ))
    })
}

/// Verify a bundle offline with the log's raw ed25519 public key and a trusted head: the
/// head's signature; the manifest's signature and that it names this head; every record's
/// inclusion proof; that the records are exactly the manifest's indexes (distinct,
/// increasing, and every index of an unfiltered range), each inside the selection; that every
/// file is the one the manifest names, and the OCSF copy and the summary are those the records
/// give; each recording against the record naming it; and the head against `trust`.
pub fn verify_bundle_trusting(
    dir: &Path,
    public_key: &[u8],
    trust: &Trust,
) -> Result<BundleReport, BundleError> {
    let sth_path = dir.join("sth.json");
    let sth: SignedTreeHead = serde_json::from_slice(&fs::read(&sth_path).map_err(io(&sth_path))?)
        .map_err(|e| BundleError::Head(e.to_string()))?;
    let head = verify_tree_head(&sth, public_key).map_err(|e| BundleError::Head(e.to_string()))?;
    let manifest = read_manifest(dir, public_key, &sth)?;
    check_trust(&head, trust, public_key)?;
    let mut indexes: Vec<u64> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    let records_path = dir.join("records.jsonl");
    let proofs_path = dir.join("proofs.jsonl");
    let records = BufReader::new(fs::File::open(&records_path).map_err(io(&records_path))?);
    let proofs = BufReader::new(fs::File::open(&proofs_path).map_err(io(&proofs_path))?);
    let mut proof_lines = proofs.lines();
    let mut count = 0;
    // Recordings named by verified records: SHA-256 -> the first line naming it.
    let mut recordings: Vec<(String, usize)> = Vec::new();
    for (i, record) in records.split(b'\n').enumerate() {
        let line = i + 1;
        let record = record.map_err(io(&records_path))?;
        let proof = proof_lines
            .next()
            .ok_or_else(|| BundleError::Layout(format!("records.jsonl line {line} has no proof")))?
            .map_err(io(&proofs_path))?;
        let proof: ProofLine = serde_json::from_str(&proof)
            .map_err(|e| BundleError::Layout(format!("proofs.jsonl line {line}: {e}")))?;
        if proof.tree_size != head.tree_size {
            return Err(BundleError::Record {
                line,
                index: proof.index,
                reason: format!(
                    "proof is for tree size {}, the signed head is of size {}",
                    proof.tree_size, head.tree_size
                ),
            });
        }
        let hashes: Vec<Hash> = proof
            .hashes
            .iter()
            .map(|h| hex::decode(h).ok().and_then(|v| v.try_into().ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| BundleError::Record {
                line,
                index: proof.index,
                reason: "proof hash is not 32 hex bytes".into(),
            })?;
        verify_inclusion(&head, &record, proof.index, &hashes).map_err(|e| {
            BundleError::Record {
                line,
                index: proof.index,
                reason: e.to_string(),
            }
        })?;
        if let Some(prev) = indexes.last() {
            if proof.index <= *prev {
                return Err(BundleError::Set(format!(
                    "record {line} has log index {}, not after {prev}: records are repeated or out of order",
                    proof.index
                )));
            }
        }
        indexes.push(proof.index);
        let parsed = serde_json::from_slice::<Value>(&record).ok();
        let in_selection = parsed
            .as_ref()
            .is_some_and(|v| manifest.selection.matches(v))
            && proof.index >= manifest.selection.from_index
            && proof.index < manifest.selection.to_index;
        if !in_selection {
            return Err(BundleError::Set(format!(
                "record {line} (log index {}) is not part of the selection the manifest names",
                proof.index
            )));
        }
        if let Some(value) = parsed {
            values.push(value.clone());
            if value["record"]["event"]["type"] == "recording" {
                let sha256 = value["record"]["event"]["sha256"]
                    .as_str()
                    .filter(|s| is_sha256(s))
                    .ok_or_else(|| BundleError::Record {
                        line,
                        index: proof.index,
                        reason: "recording record without a valid sha256".into(),
                    })?;
                if !recordings.iter().any(|(s, _)| s == sha256) {
                    recordings.push((sha256.to_owned(), line));
                }
            }
        }
        count += 1;
    }
    if proof_lines.next().is_some() {
        return Err(BundleError::Layout(
            "proofs.jsonl has more lines than records.jsonl".into(),
        ));
    }

    if let Some(listed) = manifest
        .missing_recordings
        .iter()
        .find(|m| !recordings.iter().any(|(s, _)| *s == m.sha256))
    {
        return Err(BundleError::Manifest(format!(
            "the manifest lists recording {} as missing, but no record of the bundle names it",
            listed.sha256
        )));
    }
    let mut missing = Vec::new();
    for (sha256, line) in &recordings {
        let file = recording_file(sha256);
        let path = dir.join(&file);
        let content = match fs::read(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(listed) = manifest
                    .missing_recordings
                    .iter()
                    .find(|m| m.sha256 == *sha256)
                {
                    missing.push(listed.clone());
                    continue;
                }
                return Err(BundleError::Recording {
                    file,
                    reason: format!("missing; record {line} names it"),
                });
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let actual = sha256_hex(&content);
        if &actual != sha256 {
            return Err(BundleError::Recording {
                file,
                reason: format!(
                    "altered: its content has SHA-256 {actual}, record {line} names {sha256}"
                ),
            });
        }
    }
    check_set(&manifest, &indexes, head.tree_size)?;
    check_files(dir, &manifest, &values, &sth)?;
    Ok(BundleReport {
        records: count,
        tree_size: head.tree_size,
        recordings: recordings.len() - missing.len(),
        missing_recordings: missing,
    })
}

/// The records are the manifest's indexes, and all of an unfiltered range.
fn check_set(manifest: &Manifest, indexes: &[u64], tree_size: u64) -> Result<(), BundleError> {
    let first_difference = |expected: &[u64]| -> Option<String> {
        let missing = expected.iter().find(|i| indexes.binary_search(i).is_err());
        let extra = indexes.iter().find(|i| expected.binary_search(i).is_err());
        match (missing, extra) {
            (Some(i), _) => Some(format!("log index {i} is missing")),
            (None, Some(i)) => Some(format!("log index {i} was added")),
            (None, None) => None,
        }
    };
    if let Some(d) = first_difference(&manifest.indexes) {
        return Err(BundleError::Set(format!(
            "the manifest names {} records, the bundle holds {}: {d}",
            manifest.indexes.len(),
            indexes.len()
        )));
    }
    if manifest.selection.to_index > tree_size {
        return Err(BundleError::Set(format!(
            "the selection ends at {}, beyond the signed head of size {tree_size}",
            manifest.selection.to_index
        )));
    }
    if !manifest.selection.filtered() {
        let from = manifest.selection.from_index.max(manifest.first_kept);
        let expected: Vec<u64> = (from..manifest.selection.to_index).collect();
        if let Some(d) = first_difference(&expected) {
            return Err(BundleError::Set(format!(
                "an unfiltered range {from}..{} must hold every record: {d}",
                manifest.selection.to_index
            )));
        }
    }
    Ok(())
}

/// Every file is the one the manifest names; the derived files are those the records give.
fn check_files(
    dir: &Path,
    manifest: &Manifest,
    values: &[Value],
    sth: &SignedTreeHead,
) -> Result<(), BundleError> {
    let present = file_digests(dir).map_err(|e| BundleError::Io(e.to_string()))?;
    for (file, digest) in &manifest.files {
        match present.get(file) {
            None => {
                return Err(BundleError::Files(format!(
                    "{file}: missing; the manifest names it"
                )))
            }
            Some(d) if d != digest => {
                return Err(BundleError::Files(format!(
                    "{file}: changed since export (SHA-256 {d}, the manifest names {digest})"
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = present.keys().find(|f| !manifest.files.contains_key(*f)) {
        return Err(BundleError::Files(format!(
            "{extra}: not part of the exported bundle"
        )));
    }
    let mut ocsf = Vec::new();
    for v in values {
        serde_json::to_writer(&mut ocsf, &to_ocsf(v))
            .map_err(|e| BundleError::Io(e.to_string()))?;
        ocsf.push(b'\n');
    }
    let ocsf_path = dir.join("records.ocsf.jsonl");
    if fs::read(&ocsf_path).map_err(io(&ocsf_path))? != ocsf {
        return Err(BundleError::Files(
            "records.ocsf.jsonl: not the OCSF events of the verified records".into(),
        ));
    }
    let summary_path = dir.join("summary.md");
    if fs::read(&summary_path).map_err(io(&summary_path))? != summary(values, sth).into_bytes() {
        return Err(BundleError::Files(
            "summary.md: not the summary of the verified records".into(),
        ));
    }
    Ok(())
}

/// The OCSF 1.1 event for one log entry: API Activity (class 6003) for Kubernetes API
/// requests, their responses and session recordings, Datastore Activity (class 6005) for
/// everything else.
pub fn to_ocsf(entry: &Value) -> Value {
    match entry["record"]["event"]["type"].as_str() {
        Some("kubeRequest" | "kubeResponse" | "recording") => api_activity(entry),
        _ => datastore_activity(entry),
    }
}

fn time_ms(record: &Value) -> i64 {
    record["time"]
        .as_str()
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .map(|t| t.as_millisecond())
        .unwrap_or(0)
}

fn ocsf_metadata(entry: &Value) -> Value {
    serde_json::json!({
        "version": "1.1.0",
        "uid": entry["id"],
        "product": {"name": "Portcullis", "vendor_name": "Portcullis"},
        "logged_time": entry["receivedAt"],
    })
}

/// `verb resource/subresource namespace/name`, or `verb path` for a non-resource URL.
fn kube_request_text(event: &Value) -> String {
    let verb = text(&event["verb"], "-");
    let resource = match (
        text(&event["apiGroup"], ""),
        text(&event["resource"], ""),
        text(&event["subresource"], ""),
    ) {
        (_, "", _) => return format!("{verb} {}", text(&event["path"], "/")),
        ("", r, "") => r.to_owned(),
        ("", r, sub) => format!("{r}/{sub}"),
        (g, r, "") => format!("{r}.{g}"),
        (g, r, sub) => format!("{r}.{g}/{sub}"),
    };
    let object = match (text(&event["namespace"], ""), text(&event["name"], "")) {
        ("", "") => String::new(),
        ("", n) => format!(" {n}"),
        (ns, "") => format!(" -n {ns}"),
        (ns, n) => format!(" {ns}/{n}"),
    };
    format!("{verb} {resource}{object}")
}

/// The command of an exec request, space-separated; `None` when there is none.
fn exec_command(event: &Value) -> Option<String> {
    let words: Vec<&str> = event["exec"]["command"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// An OCSF 1.1 API Activity event (class 6003) for a Kubernetes request, response or recording.
fn api_activity(entry: &Value) -> Value {
    let record = &entry["record"];
    let event = &record["event"];
    let kind = text(&event["type"], "");
    let decision = text(&event["decision"], "");
    let (activity_id, activity) = match (kind, text(&event["verb"], "")) {
        ("kubeRequest", "get" | "list" | "watch") => (2, "Read"),
        ("kubeRequest", "create") => (1, "Create"),
        ("kubeRequest", "update" | "patch") => (3, "Update"),
        ("kubeRequest", "delete" | "deletecollection") => (4, "Delete"),
        _ => (99, "Other"),
    };
    let code = event["code"].as_u64();
    let (status_id, status) = match (kind, decision, code) {
        (_, "deny", _) => (2, "Failure"),
        (_, _, Some(c)) if c >= 400 => (2, "Failure"),
        ("recording", _, _) => match event["exitCode"].as_i64() {
            Some(0) | None => (1, "Success"),
            Some(_) => (2, "Failure"),
        },
        (_, "", None) => (0, "Unknown"),
        _ => (1, "Success"),
    };
    let message = match kind {
        "kubeRequest" => match exec_command(event) {
            Some(cmd) => format!("{}: {cmd}", kube_request_text(event)),
            None => kube_request_text(event),
        },
        "kubeResponse" => format!(
            "request {} answered {}",
            event["requestId"],
            code.map(|c| c.to_string()).unwrap_or_else(|| "-".into())
        ),
        _ => format!(
            "session {} recorded as {}",
            text(&event["target"], "-"),
            recording_file(text(&event["sha256"], "-"))
        ),
    };
    let mut out = serde_json::json!({
        "class_uid": 6003,
        "class_name": "API Activity",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": 6003 * 100 + activity_id,
        "time": time_ms(record),
        "severity_id": if decision == "deny" { 3 } else { 1 },
        "status_id": status_id,
        "status": status,
        "message": message,
        "actor": actor(entry),
        "src_endpoint": {"name": entry["source"]["pod"], "namespace": entry["source"]["namespace"]},
        "api": {
            "operation": event["verb"],
            "request": {"uid": event["requestId"].as_u64().map(|n| n.to_string())},
            "service": {"name": resource_of(entry)},
        },
        "metadata": ocsf_metadata(entry),
        "unmapped": {
            "type": kind,
            "decision": decision,
            "rule": event["rule"],
        },
    });
    match kind {
        "kubeRequest" => {
            out["resources"] = serde_json::json!([{
                "type": event["resource"],
                "name": event["name"],
                "namespace": event["namespace"],
                "group": {"name": event["apiGroup"]},
            }]);
            out["http_request"] = serde_json::json!({
                "http_method": event["method"],
                "url": {"path": event["path"]},
            });
            out["unmapped"]["subresource"] = event["subresource"].clone();
            out["unmapped"]["exec"] = event["exec"].clone();
            out["unmapped"]["reason"] = event["reason"].clone();
        }
        "kubeResponse" => {
            out["api"]["response"] = serde_json::json!({"code": event["code"]});
            out["unmapped"]["durationMicros"] = event["durationMicros"].clone();
        }
        _ => {
            out["unmapped"]["recording"] = serde_json::json!({
                "file": recording_file(text(&event["sha256"], "-")),
                "sha256": event["sha256"],
                "bytes": event["bytes"],
                "events": event["events"],
                "durationMillis": event["durationMillis"],
                "protocol": event["protocol"],
                "target": event["target"],
                "exitCode": event["exitCode"],
                "masked": event["masked"],
            });
        }
    }
    out
}

/// An OCSF 1.1 Datastore Activity event (class 6005) for a database log entry.
fn datastore_activity(entry: &Value) -> Value {
    let record = &entry["record"];
    let event = &record["event"];
    let decision = event["decision"].as_str().unwrap_or("");
    let (activity_id, activity) = match event["kinds"].get(0).and_then(Value::as_str) {
        Some("select") => (2, "Read"),
        Some("insert") => (1, "Create"),
        Some("update") | Some("merge") => (3, "Update"),
        Some("delete") | Some("truncate") => (4, "Delete"),
        _ => (99, "Other"),
    };
    let (status_id, status) = match decision {
        "deny" => (2, "Failure"),
        "" => (0, "Unknown"),
        _ => (1, "Success"),
    };
    serde_json::json!({
        "class_uid": 6005,
        "class_name": "Datastore Activity",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": 6005 * 100 + activity_id,
        "time": time_ms(record),
        "severity_id": if decision == "deny" { 3 } else { 1 },
        "status_id": status_id,
        "status": status,
        "message": event["statement"].as_str().unwrap_or(event["type"].as_str().unwrap_or("")),
        "actor": actor(entry),
        "src_endpoint": {"name": entry["source"]["pod"], "namespace": entry["source"]["namespace"]},
        "database": {"name": resource_of(entry)},
        "query_info": {"query_string": event["statement"]},
        "metadata": ocsf_metadata(entry),
        "unmapped": {
            "decision": decision,
            "rule": event["rule"],
            "fingerprint": event["fingerprint"],
        },
    })
}

/// The OCSF actor: the person or pipeline run of a validated OIDC token when there is one
/// (with the workload it acted through), else the workload.
fn actor(entry: &Value) -> Value {
    let identity = &entry["record"]["identity"];
    let session = &entry["record"]["sessionId"];
    let source = &entry["source"];
    let workload = format!(
        "{}/{}",
        text(&source["namespace"], "-"),
        text(&source["serviceAccount"], "-")
    );
    match identity.get("principal").filter(|p| p.is_object()) {
        Some(p) => serde_json::json!({
            "user": {
                "name": p["name"],
                "type": p["kind"],
                "uid": p["subject"],
                "groups": p["groups"]
                    .as_array()
                    .map(|g| g.iter().map(|n| serde_json::json!({"name": n})).collect::<Vec<_>>())
                    .unwrap_or_default(),
            },
            "idp": {"name": p["issuer"]},
            "app_name": workload,
            "session": {"uid": session},
        }),
        None => serde_json::json!({
            "user": {
                "name": workload,
                "type": "ServiceAccount",
                "uid": source["user"],
            },
            "session": {"uid": session},
        }),
    }
}

/// A Markdown table cell: one line, pipes escaped.
fn cell(v: &str) -> String {
    v.replace('\n', " ").replace('|', "\\|")
}

fn text<'a>(v: &'a Value, default: &'a str) -> &'a str {
    v.as_str().unwrap_or(default)
}

/// The workload that sent an entry, as its token proved it: `ServiceAccount ns/name`.
fn workload_of(entry: &Value) -> String {
    let source = &entry["source"];
    format!(
        "ServiceAccount {}/{}",
        text(&source["namespace"], "-"),
        text(&source["serviceAccount"], "-")
    )
}

/// The resource of an entry in the sender's namespace: `ns/resource`.
pub fn resource_of(entry: &Value) -> String {
    format!(
        "{}/{}",
        text(&entry["source"]["namespace"], "-"),
        text(&entry["record"]["resource"], "-")
    )
}

/// `ServiceAccount ns/name` of the authenticated sender, and the person or pipeline run
/// behind it when its sidecar named one (accepted only as the principal of that sidecar's
/// session): `ServiceAccount ns/name as User alice`.
fn identity_of(entry: &Value) -> String {
    let workload = workload_of(entry);
    match entry["record"]["identity"]
        .get("principal")
        .filter(|p| p.is_object())
    {
        Some(p) => format!(
            "{workload} as {} {}",
            text(&p["kind"], "-"),
            text(&p["name"], "-")
        ),
        None => workload,
    }
}

/// Event types the sidecar writes for every session, or that the summary has tables for;
/// anything else is listed as an event of its own (masking, approvals, and kinds this version
/// does not know yet).
const SESSION_EVENTS: [&str; 7] = [
    "sessionStart",
    "statement",
    "completion",
    "sessionEnd",
    "kubeRequest",
    "kubeResponse",
    "recording",
];

/// One line describing an event of a kind the summary has no table for: its fields, compact.
fn event_details(event: &Value) -> String {
    let Some(fields) = event.as_object() else {
        return String::new();
    };
    let mut parts = Vec::new();
    for (k, v) in fields {
        if k == "type" {
            continue;
        }
        let v = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let v: String = if v.chars().count() > 120 {
            v.chars().take(117).chain("...".chars()).collect()
        } else {
            v
        };
        parts.push(format!("{k}: {v}"));
    }
    parts.join("; ")
}

#[derive(Default)]
struct IdentitySummary {
    pods: std::collections::BTreeSet<String>,
    decisions: std::collections::BTreeMap<String, u64>,
    rows: Vec<String>,
    kube_rows: Vec<String>,
}

/// `policy/rule` of an event, or `-`.
fn rule_of(event: &Value) -> String {
    match (
        event["rule"]["policy"].as_str(),
        event["rule"]["rule"].as_str(),
    ) {
        (Some(p), Some(rule)) => format!("{p}/{rule}"),
        _ => "-".to_owned(),
    }
}

/// Identifies a Kubernetes request within the records: its session and request id.
type RequestKey = (String, u64);

fn request_key(record: &Value) -> Option<RequestKey> {
    Some((
        text(&record["sessionId"], "").to_owned(),
        record["event"]["requestId"].as_u64()?,
    ))
}

/// The exec and attach requests, their responses and their recordings, paired by session
/// and request id.
#[derive(Default)]
struct KubeIndex<'a> {
    requests: std::collections::BTreeMap<RequestKey, &'a Value>,
    codes: std::collections::BTreeMap<RequestKey, u64>,
    recorded: std::collections::BTreeSet<RequestKey>,
}

impl<'a> KubeIndex<'a> {
    fn new(entries: &'a [Value]) -> Self {
        let mut index = Self::default();
        for e in entries {
            let r = &e["record"];
            let Some(key) = request_key(r) else {
                continue;
            };
            match r["event"]["type"].as_str() {
                Some("kubeRequest") => {
                    index.requests.insert(key, &r["event"]);
                }
                Some("kubeResponse") => {
                    if let Some(code) = r["event"]["code"].as_u64() {
                        index.codes.insert(key, code);
                    }
                }
                Some("recording") => {
                    index.recorded.insert(key);
                }
                _ => {}
            }
        }
        index
    }
}

fn is_exec(request: &Value) -> bool {
    request["resource"] == "pods"
        && matches!(request["subresource"].as_str(), Some("exec" | "attach"))
}

/// `NAMESPACE/POD[/CONTAINER]` of an exec or attach request.
fn exec_target(request: &Value) -> String {
    let mut target = format!(
        "{}/{}",
        text(&request["namespace"], "-"),
        text(&request["name"], "-")
    );
    if let Some(c) = request["exec"]["container"]
        .as_str()
        .filter(|c| !c.is_empty())
    {
        target.push('/');
        target.push_str(c);
    }
    target
}

/// What an exec or attach request ran: its command, `(attach)`, or `-`.
fn exec_what(request: Option<&Value>) -> String {
    match request {
        Some(r) => exec_command(r).unwrap_or_else(|| {
            if r["subresource"] == "attach" {
                "(attach)".to_owned()
            } else {
                "-".to_owned()
            }
        }),
        None => "- (request not in this bundle)".to_owned(),
    }
}

/// (lawful basis, purpose) -> (operations, identities).
type Purposes =
    std::collections::BTreeMap<(String, String), (u64, std::collections::BTreeSet<String>)>;
/// policy -> rule -> decision -> count.
type PolicyTally = std::collections::BTreeMap<
    String,
    std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
>;

/// Count a decided operation (a statement or a Kubernetes request): its decision for the
/// identity, its purpose, and the rule that decided it. Returns (decision, lawful basis,
/// purpose) as the summary prints them.
fn tally(
    event: &Value,
    who: &str,
    id: &mut IdentitySummary,
    purposes: &mut Purposes,
    policies: &mut PolicyTally,
) -> (String, String, String) {
    let decision = text(&event["decision"], "-").to_owned();
    *id.decisions.entry(decision.clone()).or_default() += 1;
    let basis = text(&event["lawfulBasis"], "(none recorded)").to_owned();
    let purpose = text(&event["purpose"], "(none recorded)").to_owned();
    let p = purposes
        .entry((basis.clone(), purpose.clone()))
        .or_default();
    p.0 += 1;
    p.1.insert(who.to_owned());
    if let (Some(policy), Some(rule)) = (
        event["rule"]["policy"].as_str(),
        event["rule"]["rule"].as_str(),
    ) {
        *policies
            .entry(policy.to_owned())
            .or_default()
            .entry(rule.to_owned())
            .or_default()
            .entry(decision.clone())
            .or_default() += 1;
    }
    (decision, basis, purpose)
}

fn summary(entries: &[Value], sth: &SignedTreeHead) -> String {
    use std::collections::BTreeMap;
    let mut identities: BTreeMap<String, IdentitySummary> = BTreeMap::new();
    let mut resources: BTreeMap<String, u64> = BTreeMap::new();
    let mut tables: BTreeMap<String, u64> = BTreeMap::new();
    let mut purposes = Purposes::new();
    let mut policies = PolicyTally::new();
    let mut special = Vec::new();
    let kube = KubeIndex::new(entries);
    let mut exec_rows = Vec::new();
    let (mut first, mut last) = (None::<String>, None::<String>);
    for e in entries {
        let r = &e["record"];
        let event = &r["event"];
        let kind = text(&event["type"], "unknown");
        let time = text(&r["time"], "").to_owned();
        if !time.is_empty() {
            if first.as_ref().is_none_or(|f| &time < f) {
                first = Some(time.clone());
            }
            if last.as_ref().is_none_or(|l| &time > l) {
                last = Some(time.clone());
            }
        }
        let who = identity_of(e);
        let id = identities.entry(who.clone()).or_default();
        if let Some(pod) = e["source"]["pod"]
            .as_str()
            .or(r["identity"]["pod"].as_str())
        {
            id.pods.insert(pod.to_owned());
        }
        *resources.entry(resource_of(e)).or_default() += 1;
        if kind == "statement" {
            for t in event["tables"].as_array().into_iter().flatten() {
                *tables.entry(text(t, "-").to_owned()).or_default() += 1;
            }
            let (decision, basis, purpose) = tally(event, &who, id, &mut purposes, &mut policies);
            id.rows.push(format!(
                "| {} | {} | `{}` | {} | {} | {} | {} |",
                cell(&time),
                cell(&resource_of(e)),
                cell(text(&event["statement"], "(not parsed; text not recorded)")),
                cell(&decision),
                cell(&match (
                    event["rule"]["policy"].as_str(),
                    event["rule"]["rule"].as_str()
                ) {
                    (Some(p), Some(rule)) => format!("{p}/{rule}"),
                    _ => "-".to_owned(),
                }),
                cell(&basis),
                cell(&purpose),
            ));
            // Masked columns, when the sidecar records them on the statement.
            for field in ["masked", "maskedColumns", "masking"] {
                if !event[field].is_null() {
                    special.push(format!(
                        "| {} | {} | masking | {} |",
                        cell(&time),
                        cell(&who),
                        cell(&format!(
                            "statement {}: {field} {}",
                            event["statementId"], event[field]
                        ))
                    ));
                }
            }
        } else if kind == "kubeRequest" {
            let (decision, _, _) = tally(event, &who, id, &mut purposes, &mut policies);
            let key = request_key(r);
            let request = match exec_command(event) {
                Some(cmd) => format!("{}: {cmd}", kube_request_text(event)),
                None => kube_request_text(event),
            };
            id.kube_rows.push(format!(
                "| {} | {} | `{}` | {} | {} | {} |",
                cell(&time),
                cell(&resource_of(e)),
                cell(&request),
                cell(&decision),
                cell(&rule_of(event)),
                key.as_ref()
                    .and_then(|k| kube.codes.get(k))
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".to_owned()),
            ));
            // Exec and attach sessions without a recording in this bundle (refused ones, or
            // ones whose recording is outside the exported range) are listed too.
            if is_exec(event) && !key.as_ref().is_some_and(|k| kube.recorded.contains(k)) {
                exec_rows.push(format!(
                    "| {} | {} | {} | `{}` | {} | - | - |",
                    cell(&time),
                    cell(&who),
                    cell(&exec_target(event)),
                    cell(&exec_what(Some(event))),
                    cell(&decision),
                ));
            }
        } else if kind == "recording" {
            let request = request_key(r).and_then(|k| kube.requests.get(&k).copied());
            let sha256 = text(&event["sha256"], "-");
            exec_rows.push(format!(
                "| {} | {} | {} | `{}` | {} | {} | `{}` ({:.1} s, {} events) |",
                cell(&time),
                cell(&who),
                cell(text(&event["target"], "-")),
                cell(&exec_what(request)),
                cell(request.map_or("-", |q| text(&q["decision"], "-"))),
                event["exitCode"]
                    .as_i64()
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".to_owned()),
                cell(&recording_file(sha256)),
                event["durationMillis"].as_f64().unwrap_or(0.0) / 1000.0,
                event["events"].as_u64().unwrap_or(0),
            ));
            for m in event["masked"].as_array().into_iter().flatten() {
                special.push(format!(
                    "| {} | {} | masking | {} |",
                    cell(&time),
                    cell(&who),
                    cell(&format!(
                        "recording {}: {} values by {}",
                        recording_file(sha256),
                        m["values"],
                        rule_of(m)
                    ))
                ));
            }
        } else if !SESSION_EVENTS.contains(&kind) {
            let category = if kind.to_ascii_lowercase().contains("mask") {
                "masking"
            } else if kind.to_ascii_lowercase().contains("approv")
                || kind.to_ascii_lowercase().contains("accessrequest")
            {
                "approval"
            } else {
                "other"
            };
            special.push(format!(
                "| {} | {} | {category}: {} | {} |",
                cell(&time),
                cell(&who),
                cell(kind),
                cell(&event_details(event))
            ));
        }
    }

    let mut out = String::new();
    out.push_str("# Evidence bundle\n\n");
    out.push_str(&format!(
        "Signed tree head: size {}, root `{}`, signed {} by key `{}`.\n",
        sth.tree_size, sth.root_hash, sth.timestamp, sth.key_id
    ));
    out.push_str(&format!(
        "Records: {} from {} to {}.\n",
        entries.len(),
        first.as_deref().unwrap_or("-"),
        last.as_deref().unwrap_or("-")
    ));
    out.push_str(
        "Check every record offline: `kubectl portcullis verify DIR --public-key KEY`.\n\n",
    );
    out.push_str("## Record of processing (GDPR Article 30)\n\n");
    out.push_str("### Purposes and lawful basis\n\n| lawful basis | purpose | operations | identities |\n|---|---|---|---|\n");
    for ((basis, purpose), (n, who)) in &purposes {
        let who: Vec<&str> = who.iter().map(String::as_str).collect();
        out.push_str(&format!(
            "| {} | {} | {n} | {} |\n",
            cell(basis),
            cell(purpose),
            cell(&who.join(", "))
        ));
    }
    out.push_str(
        "\n### Categories of data (tables touched)\n\n| table | statements |\n|---|---|\n",
    );
    for (t, n) in &tables {
        out.push_str(&format!("| {} | {n} |\n", cell(t)));
    }
    out.push_str("\n### Recipients (protected resources)\n\n| resource | records |\n|---|---|\n");
    for (r, n) in &resources {
        out.push_str(&format!("| {} | {n} |\n", cell(r)));
    }
    out.push_str("\n### Policies in force\n\nPolicies whose rules decided statements in this bundle (`policies.yaml`, when the bundle was exported with `kubectl portcullis evidence`, holds each policy with its generation).\n\n| policy | rule | decisions |\n|---|---|---|\n");
    for (policy, rules) in &policies {
        for (rule, decisions) in rules {
            let d: Vec<String> = decisions.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                cell(policy),
                cell(rule),
                d.join(", ")
            ));
        }
    }
    out.push_str("\nRetention: as set by the AuditRetention of the audit service; statements are stored with literals replaced by placeholders, never with values.\n");
    out.push_str("\n## Access by identity (SOC 2 CC6, CC7)\n");
    for (who, id) in &identities {
        let d: Vec<String> = id
            .decisions
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let pods: Vec<&str> = id.pods.iter().map(String::as_str).collect();
        out.push_str(&format!(
            "\n### {who}\n\nPods: {}. Decisions: {}.\n\n",
            if pods.is_empty() {
                "-".to_owned()
            } else {
                pods.join(", ")
            },
            if d.is_empty() {
                "none".to_owned()
            } else {
                d.join(", ")
            }
        ));
        if !id.rows.is_empty() {
            out.push_str("| time | resource | statement | decision | rule | lawful basis | purpose |\n|---|---|---|---|---|---|---|\n");
            for row in &id.rows {
                out.push_str(row);
                out.push('\n');
            }
        }
        if !id.kube_rows.is_empty() {
            if !id.rows.is_empty() {
                out.push('\n');
            }
            out.push_str("| time | resource | Kubernetes request | decision | rule | code |\n|---|---|---|---|---|---|\n");
            for row in &id.kube_rows {
                out.push_str(row);
                out.push('\n');
            }
        }
    }
    out.push_str("\n## Exec sessions\n\n");
    if exec_rows.is_empty() {
        out.push_str("None in this bundle.\n");
    } else {
        out.push_str("Replay a recording with `kubectl portcullis replay --bundle DIR SHA256`.\n\n| time | identity | target | command | decision | exit code | recording |\n|---|---|---|---|---|---|---|\n");
        for row in &exec_rows {
            out.push_str(row);
            out.push('\n');
        }
    }
    out.push_str("\n## Masking and approval events\n\n");
    if special.is_empty() {
        out.push_str("None in this bundle.\n");
    } else {
        out.push_str("| time | identity | event | details |\n|---|---|---|---|\n");
        for row in &special {
            out.push_str(row);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recording_an_entry_names_is_found_even_when_escaped() {
        let sha = "a".repeat(64);
        let entry = |event: &str| format!(r#"{{"id":"x","record":{{"seq":1,"event":{event}}}}}"#);
        let plain = entry(&format!(r#"{{"type":"recording","sha256":"{sha}"}}"#));
        let escaped = entry(&format!(r#"{{"type":"\u0072ecording","sha256":"{sha}"}}"#));
        assert_eq!(recording_named(plain.as_bytes()), Some(sha.clone()));
        assert_eq!(recording_named(escaped.as_bytes()), Some(sha));
        let other = entry(r#"{"type":"statement","statement":"SELECT 'recording'"}"#);
        assert_eq!(recording_named(other.as_bytes()), None);
        assert_eq!(recording_named(b"not json \"recording\""), None);
    }
}
