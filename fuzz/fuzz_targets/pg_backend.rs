//! A server's byte stream through the message framing and the result path of a session whose
//! masking detects a seeded sensitive value (RowDescription, DataRow, CopyOutResponse,
//! CopyData, errors, notices, notifications, parameter status, CommandComplete,
//! ReadyForQuery).
//!
//! Properties: nothing panics; every message read and framed again is byte-identical to the
//! bytes it was read from; no row value of a text column, COPY data, error, notice or
//! notification that reaches the client holds the seeded value.
#![no_main]
use std::time::Instant;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::{detector_session, holds_secret, text_column};
use portcullis_sidecar::masking::engine::{parse_row_description, CopyFormat, StatementPlan};
use portcullis_sidecar::masking::lineage::{Shape, Taint};
use portcullis_sidecar::postgres::codec::{put_message, read_message, Message, Read};
use portcullis_sidecar::postgres::results::{Inflight, InflightMasking, ResultPath, Tracker};

const MESSAGE_LIMIT: usize = 1 << 16;

fn plan(choice: u8) -> StatementPlan {
    StatementPlan {
        shape: Some(Shape::Opaque(Taint::default())),
        clean: false,
        copy: match choice % 4 {
            0 => None,
            1 => Some(CopyFormat::Text { delimiter: b'\t' }),
            2 => Some(CopyFormat::Csv {
                delimiter: b',',
                quote: b'"',
                escape: b'"',
                header: choice & 4 != 0,
            }),
            _ => Some(CopyFormat::Binary),
        },
        ddl: false,
        marks: Vec::new(),
        control: None,
    }
}

/// Check what the client receives.
fn check(out: &[u8], columns: &mut Option<Vec<(u32, bool)>>) {
    let mut p = 0;
    while p + 5 <= out.len() {
        let tag = out[p];
        let len = i32::from_be_bytes(out[p + 1..p + 5].try_into().expect("4 bytes")) as usize;
        let body = &out[p + 5..p + 1 + len];
        p += 1 + len;
        match tag {
            b'T' => {
                *columns = parse_row_description(body)
                    .map(|c| c.iter().map(|c| (c.type_oid, c.binary)).collect());
            }
            b'D' => {
                let n = u16::from_be_bytes([body[0], body[1]]) as usize;
                let mut q = 2;
                for i in 0..n {
                    let l = i32::from_be_bytes(body[q..q + 4].try_into().expect("4 bytes"));
                    q += 4;
                    if l < 0 {
                        continue;
                    }
                    let v = &body[q..q + l as usize];
                    q += l as usize;
                    let text = columns
                        .as_ref()
                        .and_then(|c| c.get(i))
                        .is_none_or(|(oid, binary)| text_column(*oid, *binary));
                    assert!(!(text && holds_secret(v)), "row value {i} leaks: {v:?}");
                }
            }
            b'd' | b'E' | b'N' | b'A' => {
                assert!(
                    !holds_secret(body),
                    "message {:?} leaks: {body:?}",
                    char::from(tag)
                );
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, stream)) = data.split_first() else {
        return;
    };
    let session = detector_session();
    let mut tracker = Tracker {
        masking: Some(session.clone()),
        ..Tracker::default()
    };
    let mut path = ResultPath::default();
    let mut columns = None;
    let mut input = stream;
    portcullis_fuzz::block_on(async {
        loop {
            // Every result belongs to a statement the session forwarded.
            while tracker.inflight.len() < 4 {
                tracker.batches_sent += 1;
                tracker.inflight.push_back(Inflight {
                    statement_id: tracker.batches_sent,
                    batch: tracker.batches_sent,
                    started: Instant::now(),
                    row_limits: Vec::new(),
                    portal_rows: None,
                    masking: Some(InflightMasking {
                        session: session.clone(),
                        plan: std::sync::Arc::new(plan(choice)),
                        prepared: None,
                    }),
                });
            }
            let before = input;
            let read = read_message(&mut input, MESSAGE_LIMIT, |_| false).await;
            let consumed = before.len() - input.len();
            let m: Message = match read {
                Ok(Read::Message(m)) => m,
                Ok(Read::Oversized { .. }) => panic!("nothing is discardable"),
                Ok(Read::Eof) | Err(_) => break,
            };
            let mut again = BytesMut::new();
            put_message(&mut again, m.tag, &m.body);
            assert_eq!(&again[..], &before[..consumed], "re-framed message differs");
            let mut out = BytesMut::new();
            let _ = path.on_message(&m, &mut tracker, &mut out);
            check(&out, &mut columns);
        }
    });
});
