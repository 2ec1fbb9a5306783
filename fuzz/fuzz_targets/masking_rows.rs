//! A RowDescription and DataRows, in text and binary formats and of many types, through the
//! masking of a session whose rules detect a seeded sensitive value; every strategy applied
//! to the seeded value directly.
//!
//! Properties: nothing panics; no value of a text column that reaches the client holds the
//! seeded value; every strategy hides it whatever the column's type and format.
#![no_main]
use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::{detector_session, holds_secret, text_column};
use portcullis_sidecar::masking::engine::{ResultColumn, StatementPlan};
use portcullis_sidecar::masking::lineage::{Shape, Taint};
use portcullis_sidecar::masking::strategy::{mask_field, HashKey, Masked, Strategy};

const TYPES: &[u32] = &[
    0, 16, 17, 18, 19, 20, 21, 23, 25, 114, 700, 701, 1042, 1043, 1082, 1114, 1184, 1700, 2950,
    3802,
];

#[derive(Arbitrary, Debug)]
struct Column {
    type_index: u8,
    binary: bool,
}

#[derive(Arbitrary, Debug)]
enum Value {
    Null,
    Secret {
        n: u32,
        before: String,
        after: String,
    },
    Email {
        user: String,
    },
    Text(String),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    columns: Vec<Column>,
    rows: Vec<Vec<Value>>,
    strategy_value: u32,
}

fn secret(n: u32) -> String {
    format!("SECRET-{:06}", n % 1_000_000)
}

fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Null => None,
        Value::Secret { n, before, after } => {
            Some(format!("{before}{}{after}", secret(*n)).into_bytes())
        }
        Value::Email { user } => Some(format!("{user}@example.com").into_bytes()),
        Value::Text(t) => Some(t.clone().into_bytes()),
        Value::Raw(r) => Some(r.clone()),
    }
}

fuzz_target!(|input: Input| {
    let columns: Vec<ResultColumn> = input
        .columns
        .iter()
        .take(64)
        .enumerate()
        .map(|(i, c)| ResultColumn {
            name: format!("c{i}"),
            type_oid: TYPES[usize::from(c.type_index) % TYPES.len()],
            binary: c.binary,
            origin: None,
        })
        .collect();
    let session = detector_session();
    let plan = StatementPlan {
        shape: Some(Shape::Opaque(Taint::default())),
        clean: false,
        copy: None,
        ddl: false,
        marks: Vec::new(),
        control: None,
    };
    let mut masking = session.result(&plan, &columns);
    for row in input.rows.iter().take(32) {
        let mut body = (row.len() as u16).to_be_bytes().to_vec();
        for v in row {
            match bytes_of(v) {
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(b) => {
                    body.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    body.extend_from_slice(&b);
                }
            }
        }
        let mut out = BytesMut::new();
        masking
            .data_row(&body, &mut out)
            .expect("a well-formed row is masked");
        // Framed DataRow: tag, length, field count, fields.
        assert_eq!(out[0], b'D');
        let mut q = 7;
        for i in 0..row.len() {
            let l = i32::from_be_bytes(out[q..q + 4].try_into().expect("4 bytes"));
            q += 4;
            if l < 0 {
                continue;
            }
            let v = &out[q..q + l as usize];
            q += l as usize;
            // A field beyond the described columns is sent as NULL (fail closed).
            let text = columns
                .get(i)
                .is_none_or(|c| text_column(c.type_oid, c.binary));
            assert!(!(text && holds_secret(v)), "value {i} leaks: {v:?}");
        }
        assert_eq!(q, out.len());
    }
    let _ = masking.report();

    let value = secret(input.strategy_value);
    let key = HashKey::new(b"fuzz key");
    for strategy in [
        Strategy::Redact,
        Strategy::Null,
        Strategy::Partial,
        Strategy::Hash,
    ] {
        for oid in TYPES {
            for binary in [false, true] {
                if let Masked::Value(v) = mask_field(strategy, *oid, binary, value.as_bytes(), &key)
                {
                    assert!(!holds_secret(&v), "{strategy:?} of type {oid} leaks: {v:?}");
                }
            }
        }
    }
});
