//! The proxy is transparent: the same queries give the same answers directly and through it,
//! over the simple and the extended protocol, with COPY, errors, notices, cancel and the
//! start-up variants clients use.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{pin_mut, SinkExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::common::{direct, Proxy};

/// Queries whose results must be identical directly and through the proxy.
pub const QUERIES: &[&str] = &[
    "SELECT 1::int2, 2::int4, 3::int8, 1.5::float4, 2.25::float8, 12345.6789::numeric",
    "SELECT 'text'::text, 'x'::char(3), 'v'::varchar, ''::text, NULL::text, E'tab\\there'",
    "SELECT true, false, NULL::bool",
    "SELECT '\\xdeadbeef'::bytea, NULL::bytea",
    "SELECT DATE '2024-02-29', TIMESTAMP '2024-01-01 12:34:56.789', TIMESTAMPTZ '2024-01-01 00:00:00+02', INTERVAL '1 day 2 hours'",
    "SELECT '{\"a\": [1, 2, null]}'::json, '{\"b\": {\"c\": true}}'::jsonb",
    "SELECT 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, ARRAY[1, 2, NULL]::int[], ARRAY['x', 'y']",
    "SELECT '127.0.0.1/32'::inet, point(1, 2), 'infinity'::float8, 'NaN'::numeric",
    "SELECT NULL, NULL, NULL",
    "SELECT id, full_name, email, ssn, card_number, iban, phone, street, city, country, birth_date FROM customers ORDER BY id LIMIT 40",
    "SELECT * FROM orders ORDER BY 1 LIMIT 40",
    "SELECT count(*), min(id), max(id) FROM customers",
    "SELECT g, md5(g::text) FROM generate_series(1, 5000) g",
    "SELECT repeat('x', 3000000) AS big, length(repeat('y', 1000))",
    "SELECT 'ünïcødé ✓ 日本語'",
    "SELECT 1 AS a; SELECT 2 AS b; SELECT 'three' AS c",
    "",
    ";",
];

/// Errors that must carry the same SQLSTATE directly and through the proxy.
pub const ERRORS: &[(&str, &str)] = &[
    ("SELECT 1/0", "22012"),
    ("SELECT * FROM no_such_table", "42P01"),
    ("SELECT no_such_column FROM customers", "42703"),
    ("SELECT 'abc'::int", "22P02"),
    ("SELECT 1; SELECT 1/0; SELECT 3", "22012"),
];

type Rows = Vec<Vec<Option<String>>>;

async fn simple(client: &Client, sql: &str) -> Result<Rows, (String, String)> {
    match client.simple_query(sql).await {
        Ok(messages) => Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                }
                SimpleQueryMessage::CommandComplete(n) => Some(vec![Some(format!("complete {n}"))]),
                _ => None,
            })
            .collect()),
        Err(e) => Err(match e.as_db_error() {
            Some(d) => (d.code().code().to_owned(), d.message().to_owned()),
            None => ("?".to_owned(), e.to_string()),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_protocol_results_equal_direct() {
    let proxy = Proxy::plain().await;
    let (d, p) = (direct().await, proxy.client().await);
    for sql in QUERIES {
        let a = simple(&d, sql).await;
        let b = simple(&p, sql).await;
        assert!(a.is_ok(), "{sql}: {a:?}");
        assert_eq!(a, b, "{sql}");
    }
    for (sql, code) in ERRORS {
        let a = simple(&d, sql).await;
        let b = simple(&p, sql).await;
        assert_eq!(a.as_ref().err().map(|e| e.0.as_str()), Some(*code), "{sql}");
        assert_eq!(a, b, "{sql}");
        // The session stays usable after an error.
        assert!(simple(&p, "SELECT 1").await.is_ok());
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_results_equal_direct() {
    let proxy = Proxy::plain().await;
    let (d, p) = (direct().await, proxy.client().await);
    for sql in QUERIES.iter().filter(|q| !q.contains(';') && !q.is_empty()) {
        let a = d.query(*sql, &[]).await.expect(sql);
        let b = p.query(*sql, &[]).await.expect(sql);
        assert_eq!(a.len(), b.len(), "{sql}");
        for (ra, rb) in a.iter().zip(&b) {
            assert_eq!(ra.len(), rb.len());
            for i in 0..ra.len() {
                let ta = ra.columns()[i].type_().clone();
                assert_eq!(&ta, rb.columns()[i].type_(), "{sql}");
                // Compare the raw binary values.
                let va: Option<RawValue> = ra.get(i);
                let vb: Option<RawValue> = rb.get(i);
                assert_eq!(va, vb, "{sql} column {i}");
            }
        }
    }
    // Parameters of many types, binary results.
    let sql = "SELECT $1::int8 + 1, $2::text || '!', $3::bool, $4::bytea, $5::float8 * 2, $6::text IS NULL";
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
        &41i64,
        &"hi",
        &true,
        &vec![0u8, 1, 2, 255],
        &1.25f64,
        &None::<String>,
    ];
    let a = d.query_one(sql, &params).await.expect("direct");
    let b = p.query_one(sql, &params).await.expect("proxy");
    assert_eq!(a.get::<_, i64>(0), b.get::<_, i64>(0));
    assert_eq!(a.get::<_, String>(1), b.get::<_, String>(1));
    assert_eq!(a.get::<_, Vec<u8>>(3), b.get::<_, Vec<u8>>(3));
    assert!(b.get::<_, bool>(5));
    // Errors keep their SQLSTATE over the extended protocol.
    for (sql, code) in ERRORS.iter().filter(|(q, _)| !q.contains(';')) {
        let e = p.query(*sql, &[]).await.expect_err(sql);
        assert_eq!(
            e.as_db_error()
                .map(|d| d.code().code().to_owned())
                .as_deref(),
            Some(*code)
        );
    }
    proxy.stop().await;
}

/// A column value as raw bytes, whatever its type.
#[derive(Debug, PartialEq)]
struct RawValue(Vec<u8>);

impl<'a> tokio_postgres::types::FromSql<'a> for RawValue {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(raw.to_vec()))
    }
    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_portals_and_pipelining() {
    let proxy = Proxy::plain().await;
    let mut p = proxy.client().await;
    // Named statements, reused.
    let stmt = p
        .prepare("SELECT id, email FROM customers WHERE id = $1")
        .await
        .expect("prepare");
    for id in 1..=20i32 {
        let row = p.query_one(&stmt, &[&id]).await.expect("execute");
        assert_eq!(row.get::<_, i32>(0), id);
    }
    // Pipelining: many requests in flight on one connection, answers in order.
    let futures: Vec<_> = (0..50i32)
        .map(|i| {
            let p = &p;
            async move { p.query_one("SELECT $1::int4 * 2", &[&i]).await }
        })
        .collect();
    let results = futures_util::future::join_all(futures).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.expect("pipelined").get::<_, i32>(0), i as i32 * 2);
    }
    // Named portals fetched in pieces.
    let tx = p.transaction().await.expect("begin");
    let stmt = tx
        .prepare("SELECT g FROM generate_series(1, 95) g")
        .await
        .expect("prepare");
    let portal = tx.bind(&stmt, &[]).await.expect("bind");
    let mut total = 0;
    loop {
        let rows = tx.query_portal(&portal, 10).await.expect("fetch");
        total += rows.len();
        if rows.len() < 10 {
            break;
        }
    }
    assert_eq!(total, 95);
    tx.commit().await.expect("commit");
    // Transactions behave: rollback discards.
    let tx = p.transaction().await.expect("begin");
    tx.execute("CREATE TEMP TABLE t_rb (id int)", &[])
        .await
        .expect("create");
    tx.rollback().await.expect("rollback");
    assert!(p.query("SELECT * FROM t_rb", &[]).await.is_err());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    let proxy = Proxy::plain().await;
    let (d, p) = (direct().await, proxy.client().await);
    p.batch_execute("CREATE TEMP TABLE t_copy (id int, v text)")
        .await
        .expect("temp table");
    let sink = p.copy_in("COPY t_copy FROM STDIN").await.expect("copy in");
    pin_mut!(sink);
    let mut data = String::new();
    for i in 0..10_000 {
        data.push_str(&format!("{i}\tvalue {i}\n"));
    }
    data.push_str("10000\t\\N\n");
    sink.send(Bytes::from(data)).await.expect("send");
    let n = sink.finish().await.expect("finish");
    assert_eq!(n, 10_001);
    let row = p
        .query_one("SELECT count(*), count(v) FROM t_copy", &[])
        .await
        .expect("count");
    assert_eq!(row.get::<_, i64>(0), 10_001);
    assert_eq!(row.get::<_, i64>(1), 10_000);

    // COPY out gives the same bytes as directly.
    let sql =
        "COPY (SELECT id, full_name, email FROM customers ORDER BY id) TO STDOUT WITH (FORMAT csv)";
    let a: Vec<Bytes> = d
        .copy_out(sql)
        .await
        .expect("direct")
        .try_collect()
        .await
        .expect("direct");
    let b: Vec<Bytes> = p
        .copy_out(sql)
        .await
        .expect("proxy")
        .try_collect()
        .await
        .expect("proxy");
    assert_eq!(a.concat(), b.concat());
    assert!(b.concat().len() > 10_000);

    // A failed COPY FROM (client CopyFail) leaves the session usable.
    {
        let sink = p
            .copy_in::<_, Bytes>("COPY t_copy FROM STDIN")
            .await
            .expect("copy in");
        pin_mut!(sink);
        sink.send(Bytes::from_static(b"not-a-number\tx\n"))
            .await
            .expect("send");
        assert!(sink.finish().await.is_err());
    }
    assert_eq!(
        p.query_one("SELECT 1", &[])
            .await
            .expect("usable")
            .get::<_, i32>(0),
        1
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_right_backend() {
    let proxy = Proxy::plain().await;
    let p = proxy.client().await;
    let other = proxy.client().await;
    let token = p.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move {
        let r = p.simple_query("SELECT pg_sleep(20)").await;
        (r, p)
    });
    // A second session runs undisturbed while the first sleeps.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bg = other.simple_query("SELECT pg_sleep(0.5), 'other'").await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel request sent");
    let (r, p) = sleeper.await.expect("join");
    let e = r.expect_err("cancelled");
    assert_eq!(
        e.as_db_error().map(|d| d.code().clone()),
        Some(SqlState::QUERY_CANCELED)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(bg.is_ok(), "the other session was not cancelled");
    assert!(p.simple_query("SELECT 1").await.is_ok());
    proxy.stop().await;
}

async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b))
        .await
        .expect("timely")
        .expect("read");
    b
}

fn startup(minor: i32, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&((3 << 16) | minor).to_be_bytes());
    for (k, v) in [("user", "agent"), ("database", "shop")]
        .iter()
        .chain(extra)
    {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gssenc_requests_are_declined_and_startup_continues() {
    let proxy = Proxy::plain().await;
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .expect("connect");
    // GSSENCRequest, then SSLRequest, each answered 'N'.
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
        .await
        .expect("gss");
    assert_eq!(read_n(&mut s, 1).await, b"N");
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .expect("ssl");
    assert_eq!(read_n(&mut s, 1).await, b"N");
    // Protocol 3.2 with an unknown _pq_ option: NegotiateProtocolVersion, then AuthenticationOk.
    s.write_all(&startup(
        2,
        &[("_pq_.unknown", "1"), ("application_name", "raw")],
    ))
    .await
    .expect("startup");
    let head = read_n(&mut s, 5).await;
    assert_eq!(head[0], b'v');
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let body = read_n(&mut s, len - 4).await;
    assert_eq!(&body[..4], &0i32.to_be_bytes());
    assert_eq!(&body[4..8], &1i32.to_be_bytes());
    let head = read_n(&mut s, 9).await;
    assert_eq!(head, [b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
    // Then parameters, key data and ReadyForQuery; a query works.
    let mut saw_key = false;
    loop {
        let head = read_n(&mut s, 5).await;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let _ = read_n(&mut s, len - 4).await;
        saw_key |= head[0] == b'K';
        if head[0] == b'Z' {
            break;
        }
    }
    assert!(saw_key);
    s.write_all(b"Q\0\0\0\x0eSELECT 7;\0").await.expect("query");
    let mut got = Vec::new();
    loop {
        let head = read_n(&mut s, 5).await;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let body = read_n(&mut s, len - 4).await;
        if head[0] == b'D' {
            got = body;
        }
        if head[0] == b'Z' {
            break;
        }
    }
    assert_eq!(&got[got.len() - 1..], b"7");
    s.write_all(b"X\0\0\0\x04").await.expect("terminate");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints() {
    let proxy = Proxy::plain().await;
    let c = proxy.client().await;
    c.simple_query("SELECT 1").await.expect("query");
    let _ = c.simple_query("SELECT pg_read_file('x')").await;
    let get = |path: &'static str| {
        let addr = proxy.admin;
        async move {
            let mut s = TcpStream::connect(addr).await.expect("admin");
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("request");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("response");
            out
        }
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    let m = get("/metrics").await;
    assert!(m.contains("portcullis_sidecar_connections_total 1"), "{m}");
    assert!(
        m.contains("portcullis_sidecar_statements_total{decision=\"deny\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_sidecar_statements_total{decision=\"allow\"}"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_sidecar_statement_duration_seconds_bucket"),
        "{m}"
    );
    assert!(m.contains("portcullis_sidecar_audit_spool_bytes"), "{m}");
    proxy.stop().await;
}
