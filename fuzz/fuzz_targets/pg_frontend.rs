//! A client's byte stream through the start-up packet reader, the message framing and the
//! readers of every message the session inspects (Query, Parse, Bind, Execute, Close,
//! Describe), as the session reads them.
//!
//! Properties: nothing panics; no body is allocated past its limit; every message read and
//! framed again is byte-identical to the bytes it was read from; an oversized message is
//! skipped exactly.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis_sidecar::approval::{justification_from_options, justification_from_set};
use portcullis_sidecar::masking::engine::bind_result_formats;
use portcullis_sidecar::postgres::codec::{put_message, read_message_limited, Fields, Read};
use portcullis_sidecar::postgres::session::fuzzing::bound_values;
use portcullis_sidecar::postgres::startup::{accept, Hello};

/// Small limits so that the fuzzer reaches them.
const STATEMENT_LIMIT: usize = 256;
const MESSAGE_LIMIT: usize = 1024;

fn inspect(tag: u8, body: &[u8]) {
    let mut f = Fields::new(body);
    match tag {
        b'Q' => {
            if let Ok(sql) = f.cstr() {
                let _ = justification_from_set(sql);
            }
        }
        b'P' => {
            let _ = f.cstr().and_then(|_| f.cstr_bytes());
        }
        b'B' => {
            let _ = f.cstr().and_then(|_| f.cstr());
            let _ = bind_result_formats(body);
            let _ = bound_values(body);
        }
        b'E' => {
            let _ = f.cstr().and_then(|_| f.i32());
        }
        b'C' | b'D' => {
            let _ = f.byte().and_then(|_| f.cstr());
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    portcullis_fuzz::block_on(async {
        let mut input = data;
        let mut conn = tokio::io::join(&mut input, tokio::io::sink());
        let hello = accept(&mut conn).await;
        drop(conn);
        match hello {
            Ok(Some(Hello::Startup(params))) => {
                if let Some(options) = params.get("options") {
                    let _ = justification_from_options(options);
                }
                let mut out = BytesMut::new();
                params.negotiation(&mut out);
            }
            _ => return,
        }
        loop {
            let before = input;
            let read = read_message_limited(
                &mut input,
                |tag| {
                    if matches!(tag, b'Q' | b'P') {
                        STATEMENT_LIMIT
                    } else {
                        MESSAGE_LIMIT
                    }
                },
                |tag| matches!(tag, b'Q' | b'P'),
            )
            .await;
            let consumed = before.len() - input.len();
            match read {
                Ok(Read::Message(m)) => {
                    assert!(m.body.len() <= MESSAGE_LIMIT);
                    let mut again = BytesMut::new();
                    put_message(&mut again, m.tag, &m.body);
                    assert_eq!(&again[..], &before[..consumed], "re-framed message differs");
                    inspect(m.tag, &m.body);
                }
                Ok(Read::Oversized { tag, len }) => {
                    assert!(matches!(tag, b'Q' | b'P') && len > STATEMENT_LIMIT);
                    assert_eq!(consumed, 5 + len, "oversized message not skipped exactly");
                }
                Ok(Read::Eof) | Err(_) => break,
            }
        }
    });
});
