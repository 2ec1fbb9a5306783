//! COPY TO STDOUT streams in text, CSV and binary, built from rows of values (some holding a
//! seeded sensitive value) and cut into CopyData messages anywhere, through the COPY masking
//! of a session whose rules detect that value.
//!
//! Properties: nothing panics; no CopyData that reaches the client holds the seeded value (a
//! CSV header row, which holds column names, excepted).
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::{detector_session, holds_secret};
use portcullis_sidecar::masking::engine::{CopyFormat, CopyMasking, StatementPlan};
use portcullis_sidecar::masking::lineage::{Shape, Taint};

#[derive(Arbitrary, Debug)]
enum Format {
    Text {
        delimiter: u8,
    },
    Csv {
        delimiter: u8,
        quote: u8,
        escape: u8,
        header: bool,
    },
    Binary,
}

#[derive(Arbitrary, Debug)]
enum Value {
    Null,
    Secret {
        n: u32,
        before: String,
        after: String,
    },
    Text(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    format: Format,
    columns: u8,
    rows: Vec<Vec<Value>>,
    /// Binary streams: where CopyData messages are cut.
    cuts: Vec<u8>,
    /// Raw CopyData payloads after the rows.
    raw: Vec<Vec<u8>>,
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Secret { n, before, after } => {
            Some(format!("{before}SECRET-{:06}{after}", n % 1_000_000))
        }
        Value::Text(t) => Some(t.clone()),
    }
}

fn text_row(row: &[Value], delimiter: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, v) in row.iter().enumerate() {
        if i > 0 {
            out.push(delimiter);
        }
        match value_text(v) {
            None => out.extend_from_slice(b"\\N"),
            Some(t) => {
                for b in t.bytes() {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        b if b == delimiter => {
                            out.push(b'\\');
                            out.push(b);
                        }
                        b => out.push(b),
                    }
                }
            }
        }
    }
    out.push(b'\n');
    out
}

fn csv_row(row: &[Value], delimiter: u8, quote: u8, escape: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, v) in row.iter().enumerate() {
        if i > 0 {
            out.push(delimiter);
        }
        if let Some(t) = value_text(v) {
            out.push(quote);
            for b in t.bytes() {
                if b == quote || b == escape {
                    out.push(escape);
                }
                out.push(b);
            }
            out.push(quote);
        }
    }
    out.push(b'\n');
    out
}

fn binary_stream(rows: &[Vec<Value>]) -> Vec<u8> {
    let mut out = b"PGCOPY\n\xff\r\n\0".to_vec();
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    for row in rows {
        out.extend_from_slice(&(row.len() as i16).to_be_bytes());
        for v in row {
            match value_text(v) {
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(t) => {
                    out.extend_from_slice(&(t.len() as i32).to_be_bytes());
                    out.extend_from_slice(t.as_bytes());
                }
            }
        }
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

fuzz_target!(|input: Input| {
    // Delimiters and quotes PostgreSQL accepts: one single-byte character, not a line end.
    let ok = |b: u8| b.is_ascii() && b != b'\n' && b != b'\r' && b != 0;
    let format = match input.format {
        Format::Text { delimiter } if ok(delimiter) && delimiter != b'\\' => {
            CopyFormat::Text { delimiter }
        }
        Format::Csv {
            delimiter,
            quote,
            escape,
            header,
        } if ok(delimiter) && ok(quote) && ok(escape) && delimiter != quote => CopyFormat::Csv {
            delimiter,
            quote,
            escape,
            header,
        },
        Format::Binary => CopyFormat::Binary,
        _ => return,
    };
    let n = usize::from(input.columns % 16);
    let rows: Vec<Vec<Value>> = input.rows.into_iter().take(32).collect();
    let payloads: Vec<Vec<u8>> = match &format {
        CopyFormat::Text { delimiter } => rows.iter().map(|r| text_row(r, *delimiter)).collect(),
        CopyFormat::Csv {
            delimiter,
            quote,
            escape,
            ..
        } => rows
            .iter()
            .map(|r| csv_row(r, *delimiter, *quote, *escape))
            .collect(),
        CopyFormat::Binary => {
            let stream = binary_stream(&rows);
            let mut out = Vec::new();
            let mut at = 0;
            for c in &input.cuts {
                let end = (at + usize::from(*c)).min(stream.len());
                out.push(stream[at..end].to_vec());
                at = end;
            }
            out.push(stream[at..].to_vec());
            out
        }
    };
    let binary = format == CopyFormat::Binary;
    let header = matches!(format, CopyFormat::Csv { header: true, .. });
    let plan = StatementPlan {
        shape: Some(Shape::Opaque(Taint::default())),
        clean: false,
        copy: Some(format.clone()),
        ddl: false,
        marks: Vec::new(),
        control: None,
    };
    let session = detector_session();
    let mut copy = CopyMasking::new(session.copy(&plan, n, binary), format);
    let mut first = true;
    for p in payloads.iter().chain(input.raw.iter().take(8)) {
        let Ok(out) = copy.data(p) else {
            break;
        };
        if !(header && first) {
            assert!(!holds_secret(&out), "CopyData leaks: {out:?} from {p:?}");
        }
        first = false;
    }
    let _ = copy.report();
});
