//! Session recordings in asciicast v2: a JSON header line, then one `[seconds, code, data]`
//! line per event (`o` output, `i` input, `r` resize, `m` marker).
//!
//! - Output and input pass the masking detectors as the screen shows them ([`super::screen`])
//!   before they are written, so a recording never holds the personal data they find.
//! - The file is written as the session goes: each event is appended to
//!   `<spool>/recordings/<name>.<part>.cast.partial` when it is released, and the file is
//!   synced at least every [`SYNC_BYTES`] bytes or [`SYNC_INTERVAL`]. When the session ends
//!   the file is synced and renamed to `<sha256>.cast`.
//! - A part never grows past the audit service's limit ([`MAX_RECORDING_BYTES`]): the
//!   recording goes on in a next part, each part hashed and reported on its own.
//! - At start, [`recover`] finishes every partial file a stopped sidecar left: the cut line
//!   is dropped, a marker says the recording was cut short, and it is named by its hash.

use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_crds::audit::{MaskedOutput, RuleRef};
use portcullis_crds::gateway_policy::Detector;
use portcullis_crds::sidecar_config::PolicyConfig;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::screen::{self, Direction, Scanner};
use crate::masking::detectors::{compile_pattern, DetectorKind, Patterns};
use crate::masking::prefix::Prefix;
use crate::policy::guardrails::BUILTIN_POLICY;

/// Directory of recordings under the spool directory (the audit service's name for it).
pub use portcullis_audit::recordings::RECORDINGS_DIR;

/// Largest part of a recording: the audit service's limit, the one setting both follow.
pub use portcullis_audit::recordings::MAX_RECORDING_BYTES;

/// Unsynced bytes after which the file is synced.
pub const SYNC_BYTES: u64 = 64 * 1024;

/// Longest time written events stay unsynced (checked when the next event is written).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Suffix of a recording still being written.
const PARTIAL: &str = ".cast.partial";

/// The detectors applied to exec output.
pub struct OutputMasker {
    patterns: Patterns,
    detectors: Vec<(RuleRef, DetectorKind)>,
    /// Each detector's pattern as a prefix automaton (see [`crate::masking::prefix`]).
    prefixes: Vec<Prefix>,
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
        let prefixes = detectors
            .iter()
            .map(|(_, kind)| Prefix::new(patterns.pattern(kind)))
            .collect();
        Ok(OutputMasker {
            patterns,
            detectors,
            prefixes,
        })
    }

    /// The first of `starts` (ascending byte offsets into `text`) from which the rest of
    /// `text` could still grow into a value some detector finds.
    pub fn first_unfinished(&self, text: &[u8], starts: &[usize]) -> Option<usize> {
        let mut caches: Vec<_> = self.prefixes.iter().map(Prefix::cache).collect();
        starts.iter().copied().find(|&i| {
            let before = i.checked_sub(1).and_then(|j| text.get(j).copied());
            let rest = text.get(i..).unwrap_or_default();
            self.prefixes
                .iter()
                .zip(caches.iter_mut())
                .any(|(p, c)| p.could_grow(c.as_mut(), before, rest))
        })
    }

    /// Every value the detectors find in `text`: the detector's index and the byte range.
    pub fn find(&self, text: &str) -> Vec<(usize, Range<usize>)> {
        let mut out = Vec::new();
        for (i, (_, kind)) in self.detectors.iter().enumerate() {
            out.extend(self.patterns.find(kind, text).into_iter().map(|r| (i, r)));
        }
        out
    }

    /// The rule of the detector at `index`.
    pub fn rule(&self, index: usize) -> Option<&RuleRef> {
        self.detectors.get(index).map(|(r, _)| r)
    }

    /// `text` with every value masked, read both as output and as typed input (for the
    /// fields of audit records: commands, reasons, errors).
    pub fn mask_text(&self, text: &str) -> String {
        let (once, _) = screen::mask_text(self, text, Direction::Output);
        screen::mask_text(self, &once, Direction::Input).0
    }
}

/// What a finished recording (or part of one) is.
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
    /// Length of the part.
    pub duration_millis: u64,
    /// Masked values per rule.
    pub masked: Vec<MaskedOutput>,
    /// Part number (from 1) when the session was recorded in several parts, else 0.
    pub part: u32,
    /// Another part follows.
    pub continued: bool,
    /// Why the recording ends before the session did.
    pub cut_short: Option<String>,
}

/// What the header of a recording says.
pub struct Header<'a> {
    /// The command line.
    pub command: &'a str,
    /// `NAMESPACE/POD/CONTAINER`.
    pub title: &'a str,
    /// Terminal size when known.
    pub size: (u16, u16),
    /// Session id of the audit records.
    pub session: &'a str,
    /// The request that opened the session.
    pub request_id: u64,
    /// The resource (ProtectedResource) the session went through.
    pub resource: &'a str,
    /// Stream protocol.
    pub protocol: &'a str,
}

/// Called with each part that is finished while the session goes on.
pub type PartSink = Box<dyn FnMut(Finished) + Send>;

/// One open part file.
struct Part {
    file: File,
    path: PathBuf,
    hasher: Sha256,
    bytes: u64,
    events: u64,
    unsynced: u64,
    last_sync: Instant,
    start: Instant,
    counts: Vec<u64>,
}

/// A recording being written.
pub struct Recorder {
    dir: PathBuf,
    name: String,
    header: serde_json::Value,
    number: u32,
    part: Option<Part>,
    limit: u64,
    masker: Arc<OutputMasker>,
    output: Scanner,
    input: Scanner,
    failed: Option<String>,
    on_part: PartSink,
    end_at_limit: bool,
    ended: Option<String>,
}

/// Bytes kept free at the end of a part for the marker that says why a session ended.
const MARKER_ROOM: u64 = 512;

impl Recorder {
    /// Start a recording in `<spool_dir>/recordings/` named `name` until it is finished.
    pub fn create(
        spool_dir: &Path,
        name: &str,
        header: &Header<'_>,
        masker: Arc<OutputMasker>,
        on_part: PartSink,
    ) -> std::io::Result<Self> {
        Self::with_limit(
            spool_dir,
            name,
            header,
            masker,
            on_part,
            MAX_RECORDING_BYTES as u64,
        )
    }

    /// [`Recorder::create`] with another part size (at least 4 KiB).
    pub fn with_limit(
        spool_dir: &Path,
        name: &str,
        header: &Header<'_>,
        masker: Arc<OutputMasker>,
        on_part: PartSink,
        limit: u64,
    ) -> std::io::Result<Self> {
        let dir = spool_dir.join(RECORDINGS_DIR);
        std::fs::create_dir_all(&dir)?;
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let head = json!({
            "version": 2,
            "width": header.size.0,
            "height": header.size.1,
            "timestamp": timestamp,
            "command": masker.mask_text(header.command),
            "title": header.title,
            "env": {"TERM": "xterm-256color", "SHELL": "/bin/sh"},
            "portcullis": {
                "name": name,
                "session": header.session,
                "requestId": header.request_id,
                "resource": header.resource,
                "protocol": header.protocol,
                "target": header.title,
            },
        });
        let mut recorder = Recorder {
            dir,
            name: name.to_owned(),
            header: head,
            number: 1,
            part: None,
            limit: limit.max(4096),
            masker,
            output: Scanner::with_size(
                Direction::Output,
                usize::from(header.size.0),
                usize::from(header.size.1),
            ),
            input: Scanner::new(Direction::Input),
            failed: None,
            on_part,
            end_at_limit: false,
            ended: None,
        };
        recorder.open_part()?;
        Ok(recorder)
    }

    /// The name the recording was started under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// End the session at the size limit instead of going on in a next part.
    pub fn set_end_at_limit(&mut self, end: bool) {
        self.end_at_limit = end;
    }

    /// Why the session must end now (the recording reached its size limit and the policy
    /// says `endSession`); nothing more is recorded, so nothing more may be relayed.
    pub fn ended(&self) -> Option<&str> {
        self.ended.as_deref()
    }

    fn open_part(&mut self) -> std::io::Result<()> {
        let path = self
            .dir
            .join(format!("{}.{}{PARTIAL}", self.name, self.number));
        let file = File::options().create_new(true).append(true).open(&path)?;
        let mut header = self.header.clone();
        header["portcullis"]["part"] = json!(self.number);
        let mut part = Part {
            file,
            path,
            hasher: Sha256::new(),
            bytes: 0,
            events: 0,
            unsynced: 0,
            last_sync: Instant::now(),
            start: Instant::now(),
            counts: Vec::new(),
        };
        let mut line = header.to_string().into_bytes();
        line.push(b'\n');
        part.file.write_all(&line)?;
        part.file.sync_all()?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        part.hasher.update(&line);
        part.bytes = line.len() as u64;
        self.part = Some(part);
        Ok(())
    }

    /// Write `data` as events small enough that each fits in a part (JSON escapes at most
    /// sextuple a byte), so no part grows past the limit, however much is released at once.
    fn events(&mut self, code: &str, data: &str) {
        let max = usize::try_from((self.limit - MARKER_ROOM) / 8)
            .unwrap_or(usize::MAX)
            .max(64);
        let mut rest = data;
        while !rest.is_empty() {
            let mut cut = rest.len().min(max);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            if cut == 0 {
                cut = rest.chars().next().map_or(rest.len(), char::len_utf8);
            }
            let (piece, tail) = rest.split_at(cut);
            self.event(code, piece);
            rest = tail;
        }
    }

    fn event(&mut self, code: &str, data: &str) {
        if self.failed.is_some() {
            return;
        }
        let Some(part) = self.part.as_ref() else {
            return;
        };
        let t = part.start.elapsed().as_secs_f64();
        let mut line = json!([(t * 1e6).round() / 1e6, code, data])
            .to_string()
            .into_bytes();
        line.push(b'\n');
        if self.ended.is_some() {
            return;
        }
        if self.end_at_limit && part.bytes + line.len() as u64 > self.limit - MARKER_ROOM {
            let message = format!(
                "session ended: its recording reached the size limit of {} bytes (policy recordingLimit: endSession)",
                self.limit
            );
            let mut marker = json!([(t * 1e6).round() / 1e6, "m", message])
                .to_string()
                .into_bytes();
            marker.push(b'\n');
            self.ended = Some(message);
            line = marker;
        } else if part.bytes + line.len() as u64 > self.limit && part.events > 0 {
            if let Err(e) = self.roll_over() {
                self.failed = Some(e);
                return;
            }
            // The event is written into the new part, timed from its start.
            line = json!([0.0, code, data]).to_string().into_bytes();
            line.push(b'\n');
        }
        let Some(part) = self.part.as_mut() else {
            return;
        };
        match part.file.write_all(&line) {
            Ok(()) => {
                part.hasher.update(&line);
                part.bytes += line.len() as u64;
                part.unsynced += line.len() as u64;
                part.events += 1;
            }
            Err(e) => {
                self.failed = Some(format!("writing {}: {e}", part.path.display()));
                return;
            }
        }
        if part.unsynced >= SYNC_BYTES || part.last_sync.elapsed() >= SYNC_INTERVAL {
            if let Err(e) = part.file.sync_data() {
                self.failed = Some(format!("syncing {}: {e}", part.path.display()));
                return;
            }
            part.unsynced = 0;
            part.last_sync = Instant::now();
        }
    }

    fn add_counts(&mut self, counts: Vec<u64>) {
        if let Some(part) = self.part.as_mut() {
            if part.counts.len() < counts.len() {
                part.counts.resize(counts.len(), 0);
            }
            for (i, n) in counts.into_iter().enumerate() {
                part.counts[i] += n;
            }
        }
    }

    /// Finish the current part (another follows) and open the next.
    fn roll_over(&mut self) -> Result<(), String> {
        let part = self.part.take().ok_or("no open part")?;
        let number = self.number;
        let done = self.close_part(part, number, true, None)?;
        (self.on_part)(done);
        self.number += 1;
        self.open_part()
            .map_err(|e| format!("starting part {} of {}: {e}", self.number, self.name))
    }

    fn close_part(
        &self,
        part: Part,
        number: u32,
        continued: bool,
        cut_short: Option<String>,
    ) -> Result<Finished, String> {
        part.file
            .sync_all()
            .map_err(|e| format!("syncing {}: {e}", part.path.display()))?;
        let sha256 = hex::encode(part.hasher.finalize());
        let path = self
            .dir
            .join(portcullis_audit::recordings::file_name(&sha256));
        std::fs::rename(&part.path, &path)
            .map_err(|e| format!("naming {}: {e}", path.display()))?;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(Finished {
            sha256,
            path,
            bytes: part.bytes,
            events: part.events,
            duration_millis: u64::try_from(part.start.elapsed().as_millis()).unwrap_or(u64::MAX),
            masked: self.masked(&part.counts),
            part: if continued || number > 1 { number } else { 0 },
            continued,
            cut_short,
        })
    }

    fn masked(&self, counts: &[u64]) -> Vec<MaskedOutput> {
        let mut out: Vec<MaskedOutput> = Vec::new();
        for (i, n) in counts.iter().enumerate() {
            let Some(rule) = self.masker.rule(i) else {
                continue;
            };
            if *n == 0 {
                continue;
            }
            match out.iter_mut().find(|m| &m.rule == rule) {
                Some(m) => m.values += n,
                None => out.push(MaskedOutput {
                    rule: rule.clone(),
                    values: *n,
                }),
            }
        }
        out
    }

    /// Output from the container (stdout and stderr alike, as a terminal shows them), written
    /// as the screen scanner releases it.
    pub fn output(&mut self, data: &[u8]) {
        let masker = self.masker.clone();
        let chunk = self.output.push(&masker, data);
        let counts = self.output.take_counts();
        self.add_counts(counts);
        if !chunk.is_empty() {
            self.events("o", &String::from_utf8_lossy(&chunk));
        }
    }

    /// Input sent to the container, masked line by line as a line editor shows it.
    pub fn input(&mut self, data: &[u8]) {
        let masker = self.masker.clone();
        let chunk = self.input.push(&masker, data);
        let counts = self.input.take_counts();
        self.add_counts(counts);
        if !chunk.is_empty() {
            self.events("i", &String::from_utf8_lossy(&chunk));
        }
    }

    /// A terminal resize.
    pub fn resize(&mut self, width: u16, height: u16) {
        let masker = self.masker.clone();
        self.output
            .resize(&masker, usize::from(width), usize::from(height));
        self.event("r", &format!("{width}x{height}"));
    }

    /// A marker (something the relay did, such as refusing a frame).
    pub fn marker(&mut self, label: &str) {
        let label = self.masker.mask_text(label);
        self.event("m", &label);
    }

    /// The detectors.
    pub fn masker(&self) -> Arc<OutputMasker> {
        self.masker.clone()
    }

    /// Release what is held, make the last part durable and name it by its hash.
    pub fn finish(mut self) -> Result<Finished, String> {
        let masker = self.masker.clone();
        let rest = self.input.flush(&masker);
        let counts = self.input.take_counts();
        self.add_counts(counts);
        if !rest.is_empty() {
            self.events("i", &String::from_utf8_lossy(&rest));
        }
        let rest = self.output.flush(&masker);
        let counts = self.output.take_counts();
        self.add_counts(counts);
        if !rest.is_empty() {
            self.events("o", &String::from_utf8_lossy(&rest));
        }
        let cut_short = self.failed.take();
        if let Some(e) = &cut_short {
            tracing::error!(recording = %self.name, error = %e, "a recording could not be written to its end");
        }
        let part = self.part.take().ok_or("the recording has no open part")?;
        let number = self.number;
        self.close_part(part, number, false, cut_short)
    }
}

/// A partial recording a stopped sidecar left, now finished and named by its hash.
#[derive(Clone, Debug)]
pub struct Recovered {
    /// The finished file.
    pub finished: Finished,
    /// Session id, request id, resource, protocol and target from its header.
    pub session: String,
    /// The request that opened the session.
    pub request_id: u64,
    /// ProtectedResource.
    pub resource: String,
    /// Stream protocol.
    pub protocol: String,
    /// `NAMESPACE/POD/CONTAINER`.
    pub target: String,
    /// Name it was started under.
    pub name: String,
}

/// Why recordings are cut short when the sidecar is found to have stopped mid-session.
pub const CUT_SHORT_RESTART: &str =
    "the sidecar stopped before the session ended; the recording holds what was written until then";

/// Finish every partial recording in `<spool_dir>/recordings/`: drop a cut last line, add a
/// marker that says the recording was cut short, sync, and name it by its hash.
pub fn recover(spool_dir: &Path) -> Vec<Recovered> {
    let dir = spool_dir.join(RECORDINGS_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = file_name.strip_suffix(PARTIAL) else {
            continue;
        };
        match recover_one(&dir, &entry.path(), stem) {
            Ok(r) => out.push(r),
            Err(e) => {
                tracing::error!(file = %entry.path().display(), error = %e, "cannot finish a partial recording")
            }
        }
    }
    out
}

fn recover_one(dir: &Path, path: &Path, stem: &str) -> Result<Recovered, String> {
    let mut content = std::fs::read(path).map_err(|e| e.to_string())?;
    // Drop a last line the stop cut in the middle.
    let keep = content
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    content.truncate(keep);
    let (name, number) = match stem.rsplit_once('.') {
        Some((n, p)) => (n.to_owned(), p.parse::<u32>().unwrap_or(0)),
        None => (stem.to_owned(), 0),
    };
    let header: serde_json::Value = content
        .split(|b| *b == b'\n')
        .next()
        .and_then(|l| serde_json::from_slice(l).ok())
        .filter(|h: &serde_json::Value| h["version"] == 2)
        .unwrap_or(serde_json::Value::Null);
    if header.is_null() {
        // Not even the header made it: a minimal one, so the file is a valid recording.
        let head = json!({"version": 2, "width": 80, "height": 24, "portcullis": {"name": name, "part": number}});
        content = head.to_string().into_bytes();
        content.push(b'\n');
    }
    let events = content
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        .saturating_sub(1) as u64;
    let last_time = content
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .skip(1)
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .filter_map(|v| v[0].as_f64())
        .fold(0.0, f64::max);
    let mut marker = json!([
        last_time,
        "m",
        format!("recording cut short: {CUT_SHORT_RESTART}")
    ])
    .to_string()
    .into_bytes();
    marker.push(b'\n');
    content.extend_from_slice(&marker);
    let sha256 = hex::encode(Sha256::digest(&content));
    let target = dir.join(portcullis_audit::recordings::file_name(&sha256));
    let tmp = dir.join(format!(".{sha256}.recovered"));
    (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&content)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        std::fs::remove_file(path)?;
        File::open(dir)?.sync_all()
    })()
    .map_err(|e| format!("finishing {}: {e}", path.display()))?;
    let meta = &header["portcullis"];
    let text = |k: &str| meta[k].as_str().unwrap_or_default().to_owned();
    Ok(Recovered {
        finished: Finished {
            sha256,
            path: target,
            bytes: content.len() as u64,
            events: events + 1,
            duration_millis: (last_time * 1000.0) as u64,
            masked: Vec::new(),
            part: if number > 1 { number } else { 0 },
            continued: false,
            cut_short: Some(CUT_SHORT_RESTART.to_owned()),
        },
        session: text("session"),
        request_id: meta["requestId"].as_u64().unwrap_or(0),
        resource: text("resource"),
        protocol: text("protocol"),
        target: text("target"),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn masker() -> Arc<OutputMasker> {
        Arc::new(OutputMasker::new(&[]).expect("detectors"))
    }

    fn header() -> Header<'static> {
        Header {
            command: "sh -c 'cat alice.meyer@example.com'",
            title: "shop/web-0/app",
            size: (80, 24),
            session: "abc-1",
            request_id: 7,
            resource: "cluster-api",
            protocol: "v5.channel.k8s.io",
        }
    }

    fn events(path: &Path) -> (serde_json::Value, Vec<serde_json::Value>) {
        let text = std::fs::read_to_string(path).expect("read");
        let mut lines = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"));
        (lines.next().expect("header"), lines.collect())
    }

    #[test]
    fn records_masked_asciicast_with_split_values_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Recorder::create(dir.path(), "s1-1", &header(), masker(), Box::new(|_| {}))
            .expect("create");
        r.output(b"hello\ncontact: alice.m");
        r.output(b"eyer@example.com and more\n");
        r.input(b"ec");
        r.input(b"ho bob@example.org\n");
        r.resize(120, 40);
        r.output("tail without newline \u{e9}".as_bytes());
        let done = r.finish().expect("finish");
        let text = std::fs::read_to_string(&done.path).expect("read");
        assert_eq!(done.sha256, hex::encode(Sha256::digest(text.as_bytes())));
        assert!(!text.contains("example"), "{text}");
        let (head, events) = events(&done.path);
        assert_eq!(head["version"], 2);
        assert_eq!(head["command"], "sh -c 'cat ***********************'");
        let output: String = events
            .iter()
            .filter(|e| e[1] == "o")
            .map(|e| e[2].as_str().unwrap_or_default().to_owned())
            .collect();
        assert!(
            output.contains("contact: *********************** and more"),
            "{output}"
        );
        assert!(output.ends_with("tail without newline \u{e9}"));
        assert_eq!(done.masked.len(), 1);
        assert_eq!(done.masked[0].rule.rule, "email");
        assert_eq!(done.masked[0].values, 2);
        assert_eq!((done.part, done.continued), (0, false));
        assert!(events.iter().any(|e| e[1] == "r" && e[2] == "120x40"));
        assert!(events
            .iter()
            .any(|e| e[1] == "i" && e[2] == "echo ***************\n"));
    }

    #[test]
    fn written_as_it_goes_and_recovered_after_a_stop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Recorder::create(dir.path(), "s2-3", &header(), masker(), Box::new(|_| {}))
            .expect("create");
        r.output(b"first line\nsecond line\n");
        r.input(b"ls\n");
        let partial = dir.path().join(RECORDINGS_DIR).join("s2-3.1.cast.partial");
        let written = std::fs::read_to_string(&partial).expect("partial");
        assert!(written.contains("second line"), "{written}");
        // A stop: the recorder is gone without finishing, a line half written.
        std::mem::forget(r);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&partial)
            .and_then(|mut f| f.write_all(b"[1.5, \"o\", \"cut"))
            .expect("append");
        let recovered = recover(dir.path());
        assert_eq!(recovered.len(), 1);
        let r = &recovered[0];
        assert_eq!((r.session.as_str(), r.request_id), ("abc-1", 7));
        assert_eq!(r.name, "s2-3");
        assert!(r.finished.cut_short.is_some());
        assert!(!partial.exists());
        let (_, events) = events(&r.finished.path);
        assert_eq!(events.last().expect("marker")[1], "m");
        assert!(events.iter().any(|e| e[2] == "ls\n"));
        assert_eq!(
            hex::encode(Sha256::digest(
                std::fs::read(&r.finished.path).expect("read")
            )),
            r.finished.sha256
        );
    }

    #[test]
    fn a_session_past_the_limit_ends_when_the_policy_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Recorder::with_limit(
            dir.path(),
            "s4-1",
            &header(),
            masker(),
            Box::new(|_| panic!("no second part")),
            8192,
        )
        .expect("create");
        r.set_end_at_limit(true);
        let mut lines = 0;
        while r.ended().is_none() {
            r.output(format!("line {lines} of the output\n").as_bytes());
            lines += 1;
            assert!(lines < 1000);
        }
        let done = r.finish().expect("finish");
        assert!(done.bytes <= 8192, "{}", done.bytes);
        let (_, events) = events(&done.path);
        let last = events.last().expect("marker");
        assert_eq!(last[1], "m");
        assert!(last[2].as_str().unwrap_or_default().contains("size limit"));
    }

    #[test]
    fn a_long_session_rolls_over_into_linked_parts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let parts = Arc::new(Mutex::new(Vec::new()));
        let sink = parts.clone();
        let mut r = Recorder::with_limit(
            dir.path(),
            "s3-1",
            &header(),
            masker(),
            Box::new(move |f| sink.lock().expect("lock").push(f)),
            8192,
        )
        .expect("create");
        let mut sent = String::new();
        for i in 0..400 {
            let line = format!("line {i} of the output\n");
            sent.push_str(&line);
            r.output(line.as_bytes());
        }
        // Released at once, more than a part holds: written in pieces across parts.
        let block: String = (0..800).map(|i| format!("block line {i}\n")).collect();
        sent.push_str(&block);
        r.output(block.as_bytes());
        let last = r.finish().expect("finish");
        let mut all = parts.lock().expect("lock").clone();
        assert!(all.len() >= 2, "{all:?}");
        all.push(last);
        let mut seen = String::new();
        for (i, p) in all.iter().enumerate() {
            assert_eq!(p.part as usize, i + 1);
            assert_eq!(p.continued, i + 1 < all.len());
            assert!(p.bytes <= 8192, "{}", p.bytes);
            let (head, events) = events(&p.path);
            assert_eq!(head["portcullis"]["part"], i + 1);
            for e in events {
                seen.push_str(e[2].as_str().unwrap_or_default());
            }
        }
        assert_eq!(seen, sent, "nothing lost across parts");
    }
}
