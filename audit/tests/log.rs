//! The durable log on a real file system: appends survive reopening, resends are idempotent,
//! a torn tail is cut, proofs verify with the public key alone, pruning keeps proofs working
//! (and verification refuses pruning without a signed prune entry), and every kind of tampering is found with its position.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use portcullis_audit::store::{Log, LogOptions};
use portcullis_audit::verify::{verify_log, VerifyError};
use portcullis_crds::audit_log::{verify_consistency, verify_inclusion, LogSigner};
use ring::rand::SystemRandom;
use ring::signature::Ed25519KeyPair;

fn signer() -> LogSigner {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
    LogSigner::from_pkcs8(pkcs8.as_ref()).expect("load key")
}

fn entry(i: u64) -> Vec<u8> {
    format!(r#"{{"id":"sidecar-a:{i}","seq":{i},"event":{{"type":"statement","statement":"SELECT ? FROM customers"}}}}"#)
        .into_bytes()
}

fn small_segments() -> LogOptions {
    LogOptions {
        segment_bytes: 4096,
    }
}

fn fill(dir: &Path, n: u64, signer: &LogSigner) -> Log {
    let mut log = Log::open(dir, small_segments()).expect("open");
    let batch: Vec<Vec<u8>> = (0..n).map(entry).collect();
    for chunk in batch.chunks(25) {
        log.append(chunk).expect("append");
        let head = log.head(1_800_000_000_000 + log.size());
        log.record_head(&signer.sign(&head)).expect("head");
    }
    log
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join("segments"))
        .expect("segments")
        .map(|e| e.expect("entry").path())
        .collect();
    v.sort();
    v
}

#[test]
fn appends_survive_reopen_and_resends_are_idempotent() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = signer();
    let log = fill(dir.path(), 300, &key);
    let root = log.root_at(300);
    drop(log);
    assert!(segments(dir.path()).len() > 3, "several segments");

    let mut log = Log::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(log.size(), 300);
    assert_eq!(log.root_at(300), root);
    // A sender that crashed after sending but before the ack resends entries 290..310.
    let resend: Vec<Vec<u8>> = (290..310).map(entry).collect();
    let indexes = log.append(&resend).expect("append");
    assert_eq!(indexes, (290..310).collect::<Vec<u64>>());
    assert_eq!(log.size(), 310);
    // Duplicates inside one batch are stored once.
    let dup = vec![entry(400), entry(400)];
    assert_eq!(log.append(&dup).expect("append"), vec![310, 310]);
    assert_eq!(log.entry(120).expect("read"), Some(entry(120)));
    // A batch with a malformed entry writes nothing.
    let err = log
        .append(&[entry(500), b"not json".to_vec()])
        .expect_err("bad entry");
    assert!(
        err.to_string()
            .starts_with("entry 1: not a JSON object with a string id"),
        "{err}"
    );
    assert_eq!(log.size(), 311);
}

#[test]
fn a_torn_tail_is_cut_on_open() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = signer();
    drop(fill(dir.path(), 60, &key));
    let last = segments(dir.path()).pop().expect("segment");
    // An interrupted write: half a frame at the end of the last segment.
    let mut f = OpenOptions::new().append(true).open(&last).expect("open");
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{', b'"'])
        .expect("write");
    drop(f);
    let mut log = Log::open(dir.path(), small_segments()).expect("reopen repairs");
    assert!(log.open_report().repaired_tail);
    assert_eq!(log.size(), 60);
    log.append(&[entry(60)]).expect("append after repair");
    drop(log);
    let log = Log::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(log.size(), 61);
    assert!(!log.open_report().repaired_tail);
    verify_log(dir.path(), key.public_key(), &[]).expect("verifies");
}

#[test]
fn proofs_verify_with_the_public_key_alone() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = signer();
    let log = fill(dir.path(), 200, &key);
    let sth = log.heads().last().expect("head").clone();
    let head =
        portcullis_crds::audit_log::verify_tree_head(&sth, key.public_key()).expect("signed");
    for index in [0u64, 1, 77, 199] {
        let proof = log.inclusion_proof(index, head.tree_size).expect("proof");
        assert!(proof.len() <= 8, "O(log n): {}", proof.len());
        let body = log.entry(index).expect("read").expect("present");
        verify_inclusion(&head, &body, index, &proof).expect("included");
    }
    let old_sth = &log.heads()[2];
    let old =
        portcullis_crds::audit_log::verify_tree_head(old_sth, key.public_key()).expect("signed");
    let proof = log
        .consistency_proof(old.tree_size, head.tree_size)
        .expect("proof");
    verify_consistency(&old, &head, &proof).expect("consistent");
}

#[test]
fn pruning_by_segment_keeps_proofs_and_unsigned_pruning_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = signer();
    let mut log = fill(dir.path(), 300, &key);
    let before = segments(dir.path()).len();
    let pruned = log.prune_before(150).expect("prune");
    assert!(pruned > 0 && pruned <= 150, "{pruned}");
    assert_eq!(
        segments(dir.path()).len(),
        before - (before - segments(dir.path()).len())
    );
    assert!(
        log.entry(0).expect("read").is_none(),
        "pruned entries are gone"
    );
    let root = log.root_at(300);
    drop(log);
    let log = Log::open(dir.path(), small_segments()).expect("reopen");
    assert_eq!(log.pruned(), pruned);
    assert_eq!(log.root_at(300), root);
    // Segments deleted without a signed prune entry: the tree still matches every head, but
    // verification refuses the missing entries (pruning is a signed act, see prune::enforce).
    match verify_log(dir.path(), key.public_key(), &[]) {
        Err(VerifyError::Prune(m)) => assert!(
            m.contains("no prune entry covered by a signed tree head"),
            "{m}"
        ),
        other => panic!("unsigned pruning accepted: {other:?}"),
    }
    // Proofs for kept entries still work.
    let head = log.head(0);
    let proof = log.inclusion_proof(299, 300).expect("proof");
    verify_inclusion(&head, &entry(299), 299, &proof).expect("included");
}

#[test]
fn tampering_is_found_with_its_position() {
    let key = signer();

    // A flipped byte inside entry data.
    let dir = tempfile::tempdir().expect("tmp");
    drop(fill(dir.path(), 100, &key));
    let seg = segments(dir.path())[1].clone();
    let mut bytes = fs::read(&seg).expect("read");
    bytes[20] ^= 0x01;
    fs::write(&seg, &bytes).expect("write");
    match verify_log(dir.path(), key.public_key(), &[]) {
        Err(VerifyError::Damaged { index, reason }) => {
            // Byte 20 lies in the first frame of the segment.
            let first = portcullis_audit::segment::parse_segment_name(
                &seg.file_name().expect("name").to_string_lossy(),
            )
            .expect("segment name");
            assert_eq!(index, first);
            assert_eq!(reason, "checksum mismatch");
        }
        other => panic!("flipped byte not found: {other:?}"),
    }

    // A truncated last segment.
    let dir = tempfile::tempdir().expect("tmp");
    drop(fill(dir.path(), 100, &key));
    let last = segments(dir.path()).pop().expect("segment");
    let len = fs::metadata(&last).expect("meta").len();
    OpenOptions::new()
        .write(true)
        .open(&last)
        .expect("open")
        .set_len(len / 2)
        .expect("truncate");
    let err = verify_log(dir.path(), key.public_key(), &[]).expect_err("truncation found");
    assert!(
        matches!(
            err,
            VerifyError::Damaged { .. } | VerifyError::Truncated { .. }
        ),
        "{err}"
    );

    // A record dropped, the segment rewritten with valid frames (consistent but forged).
    let dir = tempfile::tempdir().expect("tmp");
    drop(fill(dir.path(), 100, &key));
    let segs = segments(dir.path());
    let victim = segs[1].clone();
    let (read, _) = portcullis_audit::segment::read_segment(&victim, 0).expect("read");
    assert!(read.entries.len() > 3);
    let mut forged = Vec::new();
    for (i, e) in read.entries.iter().enumerate() {
        if i != 3 {
            portcullis_audit::segment::encode_frame(e, &mut forged).expect("frame");
        }
    }
    fs::write(&victim, &forged).expect("write");
    let victim_first = portcullis_audit::segment::parse_segment_name(
        &victim.file_name().expect("name").to_string_lossy(),
    )
    .expect("segment name");
    match verify_log(dir.path(), key.public_key(), &[]) {
        // The first signed head after the dropped entry no longer matches.
        Err(VerifyError::Mismatch { from, to, .. }) => {
            assert!(
                from <= victim_first + 3 && victim_first + 3 < to,
                "{from}..{to}"
            );
        }
        other => panic!("dropped record not found: {other:?}"),
    }

    // The whole log replaced by a consistent forgery with its own (unsigned) history: the heads
    // the cluster witnessed no longer match.
    let dir = tempfile::tempdir().expect("tmp");
    let genuine = fill(dir.path(), 50, &key);
    let witnessed = genuine.heads().last().expect("head").clone();
    drop(genuine);
    let forged_dir = tempfile::tempdir().expect("tmp");
    let mut forged_log = Log::open(forged_dir.path(), small_segments()).expect("open");
    let mut entries: Vec<Vec<u8>> = (0..50).map(entry).collect();
    entries[7] = br#"{"id":"sidecar-a:7","seq":7,"event":{"type":"statement","statement":"SELECT ? FROM orders"}}"#.to_vec();
    forged_log.append(&entries).expect("append");
    drop(forged_log);
    match verify_log(forged_dir.path(), key.public_key(), &[witnessed]) {
        Err(VerifyError::Mismatch { from, to, .. }) => assert_eq!((from, to), (0, 50)),
        other => panic!("forgery not found: {other:?}"),
    }

    // A head signed by another key.
    let other = signer();
    let dir = tempfile::tempdir().expect("tmp");
    drop(fill(dir.path(), 10, &other));
    let err = verify_log(dir.path(), key.public_key(), &[]).expect_err("foreign head");
    assert!(
        err.to_string().contains("tree head was signed by key"),
        "{err}"
    );
}

#[test]
fn segments_refuse_oversized_entries() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut log = Log::open(dir.path(), small_segments()).expect("open");
    let mut big = br#"{"id":"big","pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 2 << 20));
    big.extend_from_slice(br#""}"#);
    let err = log.append(&[big]).expect_err("too large");
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    assert_eq!(log.size(), 0);
    // The log keeps working.
    log.append(&[entry(1)]).expect("append");
    let mut f = OpenOptions::new()
        .read(true)
        .open(&segments(dir.path())[0])
        .expect("open");
    f.seek(SeekFrom::Start(0)).expect("seek");
}
