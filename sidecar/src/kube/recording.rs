//! Session recordings in asciicast v2: a JSON header line, then one `[seconds, code, data]`
//! line per event (`o` output, `i` input, `r` resize). Output passes the masking detectors
//! before it is written, so a recording never holds the personal data they find.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use portcullis_crds::audit::{MaskedOutput, RuleRef};
use portcullis_crds::gateway_policy::Detector;
use portcullis_crds::sidecar_config::PolicyConfig;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::masking::detectors::{compile_pattern, DetectorKind, Patterns};
use crate::policy::guardrails::BUILTIN_POLICY;

/// Directory of recordings under the spool directory (the audit service's name for it).
pub use portcullis_audit::recordings::RECORDINGS_DIR;

/// Output longer than this without a line end is written without waiting for one.
const MAX_PENDING: usize = 4096;

/// The detectors applied to exec output.
pub struct OutputMasker {
    patterns: Patterns,
    detectors: Vec<(RuleRef, DetectorKind)>,
}

impl OutputMasker {
    /// The detectors of the policies' masking rules, plus every built-in detector no rule
    /// already names (recordings are evidence that leaves the pod: they are always scanned).
    pub fn new(policies: &[PolicyConfig]) -> Result<Self, String> {
        let patterns = Patterns::new().map_err(|e| e.to_string())?;
        let mut detectors = Vec::new();
        for p in policies {
            for rule in &p.masking {
                let kind = match rule.detector {
                    Some(Detector::Email) => DetectorKind::Email,
                    Some(Detector::PaymentCard) => DetectorKind::PaymentCard,
                    Some(Detector::Iban) => DetectorKind::Iban,
                    Some(Detector::Phone) => DetectorKind::Phone,
                    Some(Detector::Regex) => match &rule.pattern {
                        Some(pattern) => DetectorKind::Regex(
                            compile_pattern(pattern).map_err(|e| e.to_string())?,
                        ),
                        None => continue,
                    },
                    None => continue,
                };
                detectors.push((
                    RuleRef {
                        policy: p.name.clone(),
                        rule: rule.name.clone(),
                    },
                    kind,
                ));
            }
        }
        for (name, kind) in [
            ("email", DetectorKind::Email),
            ("payment-card", DetectorKind::PaymentCard),
            ("iban", DetectorKind::Iban),
            ("phone", DetectorKind::Phone),
        ] {
            let covered = detectors
                .iter()
                .any(|(_, k)| std::mem::discriminant(k) == std::mem::discriminant(&kind));
            if !covered {
                detectors.push((
                    RuleRef {
                        policy: BUILTIN_POLICY.to_owned(),
                        rule: name.to_owned(),
                    },
                    kind,
                ));
            }
        }
        Ok(OutputMasker {
            patterns,
            detectors,
        })
    }

    /// Replace every byte of every match in `text` by `*` (the length stays the same, so a
    /// masked frame fits where the original was). Counts matches per rule into `counts`.
    pub fn mask_in_place(&self, text: &mut [u8], counts: &mut BTreeMap<(String, String), u64>) {
        let valid = match std::str::from_utf8(text) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        let mut ranges = Vec::new();
        if let Ok(s) = std::str::from_utf8(&text[..valid]) {
            for (rule, kind) in &self.detectors {
                let found = self.patterns.find(kind, s);
                if !found.is_empty() {
                    *counts
                        .entry((rule.policy.clone(), rule.rule.clone()))
                        .or_default() += found.len() as u64;
                    ranges.extend(found);
                }
            }
        }
        for r in ranges {
            if let Some(bytes) = text.get_mut(r) {
                bytes.fill(b'*');
            }
        }
    }
}

/// What a finished recording is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// Hex SHA-256 of the file.
    pub sha256: String,
    /// Where it is (`<spool>/recordings/<sha256>.cast`).
    pub path: PathBuf,
    /// Size.
    pub bytes: u64,
    /// Events written.
    pub events: u64,
    /// Length of the session.
    pub duration_millis: u64,
    /// Masked values per rule.
    pub masked: Vec<MaskedOutput>,
}

/// A recording being written.
pub struct Recorder {
    file: BufWriter<File>,
    hasher: Sha256,
    tmp: PathBuf,
    dir: PathBuf,
    start: Instant,
    events: u64,
    bytes: u64,
    masker: Arc<OutputMasker>,
    pending: Vec<u8>,
    counts: BTreeMap<(String, String), u64>,
    failed: Option<String>,
}

/// What the header of a recording says.
pub struct Header<'a> {
    /// The command line.
    pub command: &'a str,
    /// `NAMESPACE/POD/CONTAINER`.
    pub title: &'a str,
    /// Terminal size when known.
    pub size: (u16, u16),
}

impl Recorder {
    /// Start a recording in `<spool_dir>/recordings/`.
    pub fn create(
        spool_dir: &Path,
        name: &str,
        header: &Header<'_>,
        masker: Arc<OutputMasker>,
    ) -> std::io::Result<Self> {
        let dir = spool_dir.join(RECORDINGS_DIR);
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!("{name}.cast.partial"));
        let file = BufWriter::new(File::create(&tmp)?);
        let mut recorder = Recorder {
            file,
            hasher: Sha256::new(),
            tmp,
            dir,
            start: Instant::now(),
            events: 0,
            bytes: 0,
            masker,
            pending: Vec::new(),
            counts: BTreeMap::new(),
            failed: None,
        };
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut command = header.command.as_bytes().to_vec();
        recorder
            .masker
            .mask_in_place(&mut command, &mut recorder.counts);
        let head = json!({
            "version": 2,
            "width": header.size.0,
            "height": header.size.1,
            "timestamp": timestamp,
            "command": String::from_utf8_lossy(&command),
            "title": header.title,
            "env": {"TERM": "xterm-256color", "SHELL": "/bin/sh"},
        });
        recorder.line(&head.to_string());
        Ok(recorder)
    }

    fn line(&mut self, text: &str) {
        if self.failed.is_some() {
            return;
        }
        let mut bytes = Vec::with_capacity(text.len() + 1);
        bytes.extend_from_slice(text.as_bytes());
        bytes.push(b'\n');
        match self.file.write_all(&bytes) {
            Ok(()) => {
                self.hasher.update(&bytes);
                self.bytes += bytes.len() as u64;
            }
            Err(e) => self.failed = Some(e.to_string()),
        }
    }

    fn event(&mut self, code: &str, data: &str) {
        let t = self.start.elapsed().as_secs_f64();
        let line = json!([(t * 1e6).round() / 1e6, code, data]).to_string();
        self.line(&line);
        self.events += 1;
    }

    /// Output from the container (stdout and stderr alike, as a terminal shows them).
    /// Whole lines are masked and written; a partial line waits for its end (so a value split
    /// across frames is still found), up to [`MAX_PENDING`] bytes.
    pub fn output(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
        let cut = match self.pending.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if self.pending.len() >= MAX_PENDING => utf8_boundary(&self.pending),
            None => return,
        };
        let mut chunk: Vec<u8> = self.pending.drain(..cut).collect();
        self.write_output(&mut chunk);
    }

    fn write_output(&mut self, chunk: &mut [u8]) {
        if chunk.is_empty() {
            return;
        }
        self.masker.mask_in_place(chunk, &mut self.counts);
        let text = String::from_utf8_lossy(chunk).into_owned();
        self.event("o", &text);
    }

    /// Input sent to the container.
    pub fn input(&mut self, data: &[u8]) {
        let mut chunk = data.to_vec();
        self.masker.mask_in_place(&mut chunk, &mut self.counts);
        let text = String::from_utf8_lossy(&chunk).into_owned();
        self.event("i", &text);
    }

    /// A terminal resize.
    pub fn resize(&mut self, width: u16, height: u16) {
        self.event("r", &format!("{width}x{height}"));
    }

    /// The detectors.
    pub fn masker(&self) -> Arc<OutputMasker> {
        self.masker.clone()
    }

    /// Write what is pending, make the file durable and name it by its hash.
    pub fn finish(mut self) -> Result<Finished, String> {
        let mut rest = std::mem::take(&mut self.pending);
        self.write_output(&mut rest);
        if let Some(e) = self.failed.take() {
            return Err(format!("writing {}: {e}", self.tmp.display()));
        }
        let file = self
            .file
            .into_inner()
            .map_err(|e| format!("writing {}: {e}", self.tmp.display()))?;
        file.sync_all()
            .map_err(|e| format!("syncing {}: {e}", self.tmp.display()))?;
        let sha256 = hex::encode(self.hasher.finalize());
        let path = self
            .dir
            .join(portcullis_audit::recordings::file_name(&sha256));
        std::fs::rename(&self.tmp, &path).map_err(|e| format!("naming {}: {e}", path.display()))?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(Finished {
            sha256,
            path,
            bytes: self.bytes,
            events: self.events,
            duration_millis: u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX),
            masked: self
                .counts
                .into_iter()
                .map(|((policy, rule), values)| MaskedOutput {
                    rule: RuleRef { policy, rule },
                    values,
                })
                .collect(),
        })
    }
}

/// The longest prefix of `bytes` that does not end inside a UTF-8 sequence.
fn utf8_boundary(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to().max(1),
        Err(_) => bytes.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker() -> Arc<OutputMasker> {
        Arc::new(OutputMasker::new(&[]).expect("detectors"))
    }

    #[test]
    fn records_masked_asciicast_with_split_values_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let header = Header {
            command: "sh -c cat",
            title: "shop/web-0/app",
            size: (80, 24),
        };
        let mut r = Recorder::create(dir.path(), "s1-1", &header, masker()).expect("create");
        r.output(b"hello\ncontact: alice.m");
        r.output(b"eyer@example.com and more\n");
        r.input(b"ls\n");
        r.resize(120, 40);
        r.output("tail without newline \u{e9}".as_bytes());
        let done = r.finish().expect("finish");
        let text = std::fs::read_to_string(&done.path).expect("read");
        assert_eq!(done.sha256, hex::encode(Sha256::digest(text.as_bytes())));
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines[0]["version"], 2);
        let output: String = lines[1..]
            .iter()
            .filter(|e| e[1] == "o")
            .map(|e| e[2].as_str().unwrap_or_default().to_owned())
            .collect();
        assert!(!output.contains("example.com"), "{output}");
        assert!(
            output.contains("contact: *********************** and more"),
            "{output}"
        );
        assert!(output.ends_with("tail without newline \u{e9}"));
        assert_eq!(done.masked.len(), 1);
        assert_eq!(done.masked[0].rule.rule, "email");
        assert!(lines.iter().any(|e| e[1] == "r" && e[2] == "120x40"));
    }
}
