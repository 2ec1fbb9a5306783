//! Evidence bundles changed anywhere (a byte flipped, bytes inserted or removed, a file cut
//! short, lines swapped or repeated, a file removed) through the offline verifier.
//!
//! Property: verification never accepts a bundle whose bytes differ from the bundle the log
//! wrote; nothing panics.
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portcullis_audit::bundle::{verify_bundle, write_bundle};
use portcullis_audit::manifest::Selection;
use portcullis_audit::recordings::{sha256_hex, RecordingStore};
use portcullis_audit::store::{Log, LogOptions};
use portcullis_crds::audit_log::LogSigner;
use ring::rand::SystemRandom;
use ring::signature::Ed25519KeyPair;

struct Bundle {
    _dir: tempfile::TempDir,
    path: PathBuf,
    files: Vec<(PathBuf, Vec<u8>)>,
    public_key: Vec<u8>,
}

fn entry(i: u64, event: serde_json::Value) -> Vec<u8> {
    serde_json::json!({
        "id": format!("uid:s:{i}"), "receivedAt": "2026-11-23T06:00:00.000000Z",
        "source": {"user": "system:serviceaccount:agents:agent", "namespace": "agents",
                   "serviceAccount": "agent", "pod": "agent-0"},
        "record": {"version": "portcullis.dev/audit/v1alpha1", "seq": i,
                   "time": format!("2026-11-23T06:00:0{i}.000000Z"), "sessionId": "s",
                   "identity": {"kind": "ServiceAccount", "name": "agent", "namespace": "agents"},
                   "resource": "customers-db", "event": event}
    })
    .to_string()
    .into_bytes()
}

fn bundle() -> &'static Bundle {
    static B: OnceLock<Bundle> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tmp");
        let data = dir.path().join("log");
        let mut log = Log::open(
            &data,
            LogOptions {
                segment_bytes: 2048,
            },
        )
        .expect("log");
        let recording =
            b"{\"version\": 2, \"width\": 80, \"height\": 24}\n[0.2, \"o\", \"ok\\r\\n\"]\n";
        let sha = sha256_hex(recording);
        RecordingStore::new(&data)
            .put(&sha, recording)
            .expect("recording");
        let mut batch = Vec::new();
        for i in 0..6 {
            batch.push(entry(
                i,
                serde_json::json!({"type": "statement", "statementId": i,
                "protocol": "simple", "statement": "SELECT email FROM customers WHERE id = ?",
                "fingerprint": "abc", "kinds": ["select"], "tables": ["public.customers"],
                "decision": if i % 2 == 0 { "allow" } else { "deny" }}),
            ));
        }
        batch.push(entry(
            6,
            serde_json::json!({"type": "recording", "requestId": 3, "sha256": sha,
            "bytes": recording.len(), "events": 1, "durationMillis": 200,
            "protocol": "v5.channel.k8s.io", "target": "shop/web-0/web", "exitCode": 0}),
        ));
        log.append(&batch).expect("append");
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
        let signer = LogSigner::from_pkcs8(pkcs8.as_ref()).expect("signer");
        let sth = signer.sign(&log.head(1_800_000_000_000));
        let path = dir.path().join("bundle");
        write_bundle(&log, &sth, &Selection::default(), &signer, &path).expect("bundle");
        verify_bundle(&path, signer.public_key()).expect("the bundle as written verifies");
        let mut files = Vec::new();
        let mut dirs = vec![path.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("bundle dir") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    files.push((p.clone(), std::fs::read(&p).expect("file")));
                }
            }
        }
        files.sort();
        Bundle {
            _dir: dir,
            path,
            files,
            public_key: signer.public_key().to_vec(),
        }
    })
}

#[derive(Arbitrary, Debug)]
enum Change {
    Flip { at: u32, mask: u8 },
    Insert { at: u32, bytes: Vec<u8> },
    Remove { at: u32, len: u8 },
    Truncate { at: u32 },
    SwapLines { a: u8, b: u8 },
    RepeatLine { line: u8 },
    Delete,
}

#[derive(Arbitrary, Debug)]
struct Input {
    file: u8,
    changes: Vec<Change>,
}

fn apply(content: &mut Vec<u8>, change: &Change) -> bool {
    let at = |n: u32, len: usize| if len == 0 { 0 } else { n as usize % (len + 1) };
    match change {
        Change::Flip { at: n, mask } => {
            if content.is_empty() {
                return true;
            }
            let i = *n as usize % content.len();
            content[i] ^= mask;
        }
        Change::Insert { at: n, bytes } => {
            let i = at(*n, content.len());
            content.splice(i..i, bytes.iter().copied());
        }
        Change::Remove { at: n, len } => {
            let i = at(*n, content.len());
            let end = (i + usize::from(*len)).min(content.len());
            content.drain(i..end);
        }
        Change::Truncate { at: n } => content.truncate(at(*n, content.len())),
        Change::SwapLines { a, b } => {
            let mut lines: Vec<Vec<u8>> =
                content.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
            let n = lines.len();
            lines.swap(usize::from(*a) % n, usize::from(*b) % n);
            *content = lines.join(&b'\n');
        }
        Change::RepeatLine { line } => {
            let mut lines: Vec<Vec<u8>> =
                content.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
            let i = usize::from(*line) % lines.len();
            let l = lines[i].clone();
            lines.insert(i, l);
            *content = lines.join(&b'\n');
        }
        Change::Delete => return false,
    }
    true
}

fuzz_target!(|input: Input| {
    let b = bundle();
    let (path, original) = &b.files[usize::from(input.file) % b.files.len()];
    let mut content = original.clone();
    let mut keep = true;
    for c in input.changes.iter().take(4) {
        keep &= apply(&mut content, c);
    }
    if keep && &content == original {
        return;
    }
    if keep {
        std::fs::write(path, &content).expect("write");
    } else {
        std::fs::remove_file(path).expect("remove");
    }
    let verdict = verify_bundle(&b.path, &b.public_key);
    std::fs::write(path, original).expect("restore");
    if let Ok(report) = verdict {
        panic!(
            "a changed {} verifies ({report:?}); changes: {:?}",
            path.strip_prefix(&b.path).unwrap_or(path).display(),
            input.changes
        );
    }
});
