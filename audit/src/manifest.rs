//! The manifest of an evidence bundle: what the bundle claims to be, signed by the audit
//! service with the log's key, so a bundle proves its set and not only each record.
//!
//! `manifest.json` names the signed tree head, the selection (log range, time range, subject,
//! resource, namespaces), the first index the log still held, the index of every record in
//! the bundle, who exported it and when, and the SHA-256 of every other file of the bundle
//! (records, proofs, the OCSF copy, the summary, policies, access requests, recordings).
//! A recording a record names that the log's storage could not give at export is listed in
//! `missingRecordings` with its expected SHA-256 and the first log index naming it, instead of
//! failing the export; the service signs such a list only when it holds no such recording.
//! The service signs it only after recomputing the selection over its own log and finding
//! exactly those indexes; `manifest.sig` holds the signature over
//! `portcullis.dev/evidence-manifest/v1\n<SHA-256 of manifest.json>\n`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use portcullis_crds::audit_log::{key_id, verify_other, LogError, LogSigner};
use portcullis_crds::SignedTreeHead;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::recordings::sha256_hex;

/// Format of the manifest, and first line of what is signed.
pub const MANIFEST_VERSION: &str = "portcullis.dev/evidence-manifest/v1";
/// The manifest file of a bundle.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The signature file of a bundle.
pub const SIGNATURE_FILE: &str = "manifest.sig";

/// Which records a bundle holds. Everything unset selects every record of the range.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Selection {
    /// First log index of the range.
    #[serde(default)]
    pub from_index: u64,
    /// End of the range (exclusive); the tree size of the signed head.
    pub to_index: u64,
    /// Only records made at or after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_time: Option<String>,
    /// Only records made before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_time: Option<String>,
    /// Only records of this subject: a workload as the service authenticated it (service
    /// account or user name), or, together with `issuer`, a person its sidecar named (by
    /// name or subject id). A person is (issuer, subject): without `issuer` no person's
    /// records are selected by name, so people of different issuers are never mixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Only records whose principal was issued by this OIDC issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Only records of this ProtectedResource (`NAME` or `NAMESPACE/NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Only records sent from these namespaces; unset: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
}

fn parse_time(s: &Option<String>) -> Option<k8s_openapi::jiff::Timestamp> {
    s.as_deref().and_then(|t| t.parse().ok())
}

impl Selection {
    /// Whether anything but the range narrows the selection.
    pub fn filtered(&self) -> bool {
        self.from_time.is_some()
            || self.to_time.is_some()
            || self.subject.is_some()
            || self.issuer.is_some()
            || self.resource.is_some()
            || self.namespaces.is_some()
    }

    /// Whether a log entry (its JSON) belongs to the selection. Records are attributed by
    /// the sender the service authenticated (`source`), never by what they state. Entries of
    /// the log itself (prune entries, witness resets) belong to every unfiltered selection.
    pub fn matches(&self, entry: &Value) -> bool {
        let r = &entry["record"];
        if r.is_null() {
            return !self.filtered();
        }
        let source = &entry["source"];
        let ns = source["namespace"].as_str().unwrap_or("");
        if let Some(list) = &self.namespaces {
            if !list.iter().any(|n| n == ns) {
                return false;
            }
        }
        let time = r["time"]
            .as_str()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok());
        if let Some(f) = parse_time(&self.from_time) {
            if time.is_none_or(|t| t < f) {
                return false;
            }
        }
        if let Some(end) = parse_time(&self.to_time) {
            if time.is_none_or(|t| t >= end) {
                return false;
            }
        }
        let principal = &r["identity"]["principal"];
        if let Some(i) = &self.issuer {
            if principal["issuer"].as_str() != Some(i.as_str()) {
                return false;
            }
        }
        if let Some(s) = &self.subject {
            let sa = source["serviceAccount"].as_str().unwrap_or("");
            let user = source["user"].as_str().unwrap_or("");
            let workload = self.issuer.is_none()
                && (user == s || format!("{ns}/{sa}") == *s || (!s.contains('/') && sa == s));
            // The issuer was matched above: a person only with the issuer named.
            let person = self.issuer.is_some()
                && (principal["name"].as_str() == Some(s.as_str())
                    || principal["subject"].as_str() == Some(s.as_str()));
            if !(workload || person) {
                return false;
            }
        }
        if let Some(res) = &self.resource {
            let name = r["resource"].as_str().unwrap_or("");
            let matches = match res.split_once('/') {
                Some((want_ns, want)) => want_ns == ns && want == name,
                None => res == name,
            };
            if !matches {
                return false;
            }
        }
        true
    }
}

impl crate::bundle::Select for Selection {
    fn keep(&self, entry: &Value) -> bool {
        self.matches(entry)
    }
}

/// The issuers of the people named `subject` in `entries` (log entry JSON): when a selection
/// names a subject without an issuer and this is not empty, the name is a person's and the
/// issuer must be given.
pub fn issuers_named<'a>(
    subject: &str,
    entries: impl IntoIterator<Item = &'a Value>,
) -> Vec<String> {
    let mut issuers: Vec<String> = entries
        .into_iter()
        .map(|e| &e["record"]["identity"]["principal"])
        .filter(|p| p["name"].as_str() == Some(subject) || p["subject"].as_str() == Some(subject))
        .filter_map(|p| p["issuer"].as_str().map(str::to_owned))
        .collect();
    issuers.sort();
    issuers.dedup();
    issuers
}

/// The manifest of a bundle.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always [`MANIFEST_VERSION`].
    pub version: String,
    /// The signed tree head every proof of the bundle leads to.
    pub sth: SignedTreeHead,
    /// What was selected.
    pub selection: Selection,
    /// First index the log still held when exported (earlier ones were pruned).
    #[serde(default)]
    pub first_kept: u64,
    /// Log index of every record in the bundle, in order.
    pub indexes: Vec<u64>,
    /// SHA-256 (hex) of every other file, by path relative to the bundle.
    pub files: BTreeMap<String, String>,
    /// Recordings records of the bundle name that the log's storage could not give at export
    /// (deleted or damaged): the bundle is complete except for them, and says so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_recordings: Vec<MissingRecording>,
    /// Who exported it (set by the service from the reader's token).
    #[serde(default)]
    pub exported_by: String,
    /// When the service signed it.
    #[serde(default)]
    pub exported_at: String,
}

/// A recording named by a record of the bundle and absent from it, because the log's storage
/// no longer held it (or held it damaged) at export.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MissingRecording {
    /// The SHA-256 the record names: what the recording's content must hash to.
    pub sha256: String,
    /// Log index of the first record of the bundle naming it.
    pub index: u64,
}

/// The signature of a manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ManifestSignature {
    /// Identifier of the signing key.
    pub key_id: String,
    /// ed25519 signature, base64.
    pub signature: String,
}

/// What the service answers to a manifest it signed.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct SignedManifest {
    /// The manifest exactly as signed (write it byte for byte).
    pub manifest: String,
    /// Its signature.
    pub signature: ManifestSignature,
}

/// Errors of manifests.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
    /// The manifest is malformed or does not match the bundle.
    #[error("{0}")]
    Invalid(String),
    /// The signature does not verify.
    #[error("manifest signature: {0}")]
    Signature(#[from] LogError),
}

/// The bytes that are signed for a manifest.
pub fn payload(manifest_bytes: &[u8]) -> Vec<u8> {
    format!("{MANIFEST_VERSION}\n{}\n", sha256_hex(manifest_bytes)).into_bytes()
}

/// Sign manifest bytes.
pub fn sign(signer: &LogSigner, manifest_bytes: &[u8]) -> Result<ManifestSignature, ManifestError> {
    Ok(ManifestSignature {
        key_id: key_id(signer.public_key()),
        signature: signer.sign_other(&payload(manifest_bytes))?,
    })
}

/// Check a manifest's signature with the log's public key.
pub fn verify_signature(
    manifest_bytes: &[u8],
    signature: &ManifestSignature,
    public_key: &[u8],
) -> Result<(), ManifestError> {
    let expected = key_id(public_key);
    if signature.key_id != expected {
        return Err(LogError::WrongKey {
            found: signature.key_id.clone(),
            expected,
        }
        .into());
    }
    verify_other(&payload(manifest_bytes), &signature.signature, public_key).map_err(|_| {
        ManifestError::Invalid(format!(
            "the signature does not verify with the given public key: {MANIFEST_FILE} was changed after the service signed it, or another key signed it"
        ))
    })
}

/// SHA-256 of every file below `dir` except the manifest and its signature, by path relative
/// to `dir` (`/`-separated).
pub fn file_digests(dir: &Path) -> Result<BTreeMap<String, String>, ManifestError> {
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut BTreeMap<String, String>,
    ) -> Result<(), ManifestError> {
        let entries =
            fs::read_dir(dir).map_err(|e| ManifestError::Io(format!("{}: {e}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| ManifestError::Io(format!("{}: {e}", dir.display())))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(|e| ManifestError::Io(format!("{}: {e}", path.display())))?;
            if kind.is_dir() {
                walk(root, &path, out)?;
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .map_err(|e| ManifestError::Io(e.to_string()))?
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            if rel == MANIFEST_FILE || rel == SIGNATURE_FILE {
                continue;
            }
            let bytes = fs::read(&path)
                .map_err(|e| ManifestError::Io(format!("{}: {e}", path.display())))?;
            out.insert(rel, sha256_hex(&bytes));
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// The indexes of the records of a bundle, from its `proofs.jsonl`.
pub fn bundle_indexes(dir: &Path) -> Result<Vec<u64>, ManifestError> {
    let path = dir.join("proofs.jsonl");
    let text = fs::read_to_string(&path)
        .map_err(|e| ManifestError::Io(format!("{}: {e}", path.display())))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<crate::bundle::ProofLine>(l)
                .map(|p| p.index)
                .map_err(|e| ManifestError::Invalid(format!("proofs.jsonl: {e}")))
        })
        .collect()
}

/// The recordings the records of the bundle in `dir` name and the bundle does not hold, each
/// once with the first log index naming it.
pub fn missing_recordings(dir: &Path) -> Result<Vec<MissingRecording>, ManifestError> {
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read(&path).map_err(|e| ManifestError::Io(format!("{}: {e}", path.display())))
    };
    let records = read("records.jsonl")?;
    let indexes = bundle_indexes(dir)?;
    let mut missing: Vec<MissingRecording> = Vec::new();
    for (line, index) in records
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .zip(indexes)
    {
        let Some(sha256) = crate::bundle::recording_named(line) else {
            continue;
        };
        let file = dir.join(crate::bundle::recording_file(&sha256));
        if !file.exists() && !missing.iter().any(|m| m.sha256 == sha256) {
            missing.push(MissingRecording { sha256, index });
        }
    }
    Ok(missing)
}

/// The unsigned manifest of the bundle in `dir` (all files written).
pub fn build(
    dir: &Path,
    sth: &SignedTreeHead,
    selection: &Selection,
    first_kept: u64,
) -> Result<Manifest, ManifestError> {
    Ok(Manifest {
        version: MANIFEST_VERSION.to_owned(),
        sth: sth.clone(),
        selection: selection.clone(),
        first_kept,
        indexes: bundle_indexes(dir)?,
        files: file_digests(dir)?,
        missing_recordings: missing_recordings(dir)?,
        exported_by: String::new(),
        exported_at: String::new(),
    })
}

/// Write a signed manifest into the bundle `dir`.
pub fn write(dir: &Path, signed: &SignedManifest) -> Result<(), ManifestError> {
    let m = dir.join(MANIFEST_FILE);
    fs::write(&m, signed.manifest.as_bytes())
        .map_err(|e| ManifestError::Io(format!("{}: {e}", m.display())))?;
    let s = dir.join(SIGNATURE_FILE);
    let sig = signature_file(&signed.signature)?;
    fs::write(&s, sig).map_err(|e| ManifestError::Io(format!("{}: {e}", s.display())))
}

/// The bytes of `manifest.sig` for a signature: the only form verification accepts.
pub fn signature_file(signature: &ManifestSignature) -> Result<Vec<u8>, ManifestError> {
    serde_json::to_vec_pretty(signature).map_err(|e| ManifestError::Io(e.to_string()))
}

/// Sign a manifest locally with the log's key (for a bundle written next to the log, by the
/// service's own tools).
pub fn sign_manifest(
    signer: &LogSigner,
    manifest: &Manifest,
) -> Result<SignedManifest, ManifestError> {
    let text =
        serde_json::to_string_pretty(manifest).map_err(|e| ManifestError::Io(e.to_string()))?;
    let signature = sign(signer, text.as_bytes())?;
    Ok(SignedManifest {
        manifest: text,
        signature,
    })
}

/// Check that `indexes` are exactly what `selection` picks from the log entries `[from, to)`
/// given by `entries` (index and JSON): the check the service makes before signing.
pub fn expected_indexes<'a>(
    selection: &Selection,
    entries: impl IntoIterator<Item = (u64, &'a Value)>,
) -> Vec<u64> {
    entries
        .into_iter()
        .filter(|(i, e)| {
            *i >= selection.from_index && *i < selection.to_index && selection.matches(e)
        })
        .map(|(i, _)| i)
        .collect()
}
