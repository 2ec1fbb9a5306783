//! Bad input and load: garbage and truncated wire messages, a 100 MB query and 1,000
//! concurrent connections end in clean errors, never a crash, and the proxy keeps serving.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;

use crate::common::{startup_packet, Proxy, ProxyBuilder};

/// Everything the proxy sends until it closes the connection (or 10 s pass).
async fn exchange(port: u16, chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    for c in chunks {
        if s.write_all(c).await.is_err() {
            break;
        }
    }
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    out
}

/// Messages of a server byte stream after start-up, as (tag, body).
fn messages(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 5 {
        let len = i32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        if len < 4 || b.len() < len + 1 {
            break;
        }
        out.push((b[0], b[5..len + 1].to_vec()));
        b = &b[len + 1..];
    }
    out
}

fn fatal_with(out: &[u8], code: &str) -> bool {
    messages(out).iter().any(|(tag, body)| {
        *tag == b'E'
            && String::from_utf8_lossy(body).contains("FATAL")
            && String::from_utf8_lossy(body).contains(code)
    })
}

async fn still_serving(proxy: &Proxy) {
    let c = proxy.client().await;
    let row = c
        .query_one("SELECT 40 + 2", &[])
        .await
        .expect("proxy still serves");
    assert_eq!(row.get::<_, i32>(0), 42);
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_messages_get_clean_errors() {
    let proxy = Proxy::plain().await;
    let port = proxy.port;
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    // Before start-up.
    let out = exchange(port, std::slice::from_ref(&garbage)).await;
    assert!(fatal_with(&out, "08P01"), "garbage start-up: {out:?}");
    let out = exchange(port, &[vec![0, 0, 0, 3]]).await;
    assert!(fatal_with(&out, "08P01"));
    let out = exchange(port, &[vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]]).await;
    assert!(fatal_with(&out, "08P01"));
    let out = exchange(port, &[vec![0, 0, 0, 100, 0, 3, 0, 0, b'u']]).await;
    assert!(out.is_empty() || fatal_with(&out, "08P01"));
    let v2 = vec![0, 0, 0, 9, 0, 2, 0, 0, 0];
    let out = exchange(port, &[v2]).await;
    assert!(fatal_with(&out, "unsupported frontend protocol"), "{out:?}");
    // A CancelRequest with a key nobody holds is ignored.
    let mut cancel = vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e];
    cancel.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
    assert!(exchange(port, &[cancel]).await.is_empty());
    still_serving(&proxy).await;

    // After start-up.
    let after = |m: Vec<u8>| vec![startup_packet(), m];
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("length below 4", after(vec![b'Q', 0, 0, 0, 2])),
        ("negative length", after(vec![b'Q', 0xff, 0xff, 0xff, 0xf0])),
        ("unknown message type", after(msg(b'z', b"hello\0"))),
        ("query without terminator", after(msg(b'Q', b"SELECT 1"))),
        (
            "parse without terminator",
            after(msg(b'P', b"stmt\0SELECT")),
        ),
        ("close of unknown kind", after(msg(b'C', b"Zname\0"))),
        ("garbage", after(garbage.clone())),
    ];
    for (name, chunks) in cases {
        let out = exchange(port, &chunks).await;
        assert!(fatal_with(&out, "08P01"), "{name}: {:?}", messages(&out));
    }
    // Truncated message: header promises more than arrives before the client goes away.
    let mut truncated = vec![b'Q', 0, 0, 3, 0xe8];
    truncated.extend_from_slice(b"SELECT 1");
    let _ = exchange(port, &after(truncated)).await;
    // Malformed Bind: passed on, the server answers with its own protocol error.
    let out = exchange(
        port,
        &after([msg(b'B', b"\0nostatement\0\xff\xff"), msg(b'S', b"")].concat()),
    )
    .await;
    assert!(
        messages(&out).iter().any(|(t, _)| *t == b'E'),
        "bind: {:?}",
        messages(&out)
    );
    still_serving(&proxy).await;

    // Invalid UTF-8 in a query is refused, and the session goes on.
    let out = exchange(
        port,
        &after(
            [
                msg(b'Q', b"SELECT '\xff\xfe'\0"),
                msg(b'Q', b"SELECT 5\0"),
                msg(b'X', b""),
            ]
            .concat(),
        ),
    )
    .await;
    let msgs = messages(&out);
    assert!(msgs
        .iter()
        .any(|(t, b)| *t == b'E' && String::from_utf8_lossy(b).contains("42501")));
    assert!(
        msgs.iter().any(|(t, b)| *t == b'D' && b.ends_with(b"5")),
        "{msgs:?}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabyte_query_is_refused_and_the_session_survives() {
    let proxy = ProxyBuilder::default()
        .max_statement_bytes(16 * 1024 * 1024)
        .start()
        .await;
    let client = proxy.client().await;
    let huge = format!("SELECT length('{}')", "x".repeat(100 * 1024 * 1024));
    let err = client.simple_query(&huge).await.expect_err("refused");
    let db = err.as_db_error().expect("db error");
    assert_eq!(db.code(), &SqlState::PROGRAM_LIMIT_EXCEEDED);
    assert!(db.message().contains("statement-size"), "{}", db.message());
    let err = client.prepare(&huge).await.expect_err("refused");
    assert_eq!(
        err.as_db_error().map(|d| d.code().clone()),
        Some(SqlState::PROGRAM_LIMIT_EXCEEDED)
    );
    drop(huge);
    let row = client.query_one("SELECT 1", &[]).await.expect("usable");
    assert_eq!(row.get::<_, i32>(0), 1);
    // Below the limit, a large statement is analysed and forwarded.
    let big = format!("SELECT length('{}')", "y".repeat(4 * 1024 * 1024));
    let rows = client.simple_query(&big).await.expect("4 MB query");
    assert!(rows.iter().any(
        |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("4194304"))
    ));
    // A large parameter (Bind) is not limited by the statement size.
    let blob = vec![7u8; 32 * 1024 * 1024];
    let row = client
        .query_one("SELECT length($1::bytea)", &[&blob])
        .await
        .expect("bind");
    assert_eq!(row.get::<_, i32>(0), 32 * 1024 * 1024);
    let refused = proxy
        .statements()
        .into_iter()
        .filter(|s| s.rule.as_ref().is_some_and(|r| r.rule == "statement-size"))
        .count();
    assert_eq!(refused, 2);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_connections() {
    const N: usize = 1000;
    let proxy = Proxy::plain().await;
    let conn = proxy.conn_str();
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let conn = conn.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let connected = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await;
                // All N sessions are open at the same time here (failures wait too, so
                // that one failure cannot hang the others).
                barrier.wait().await;
                let (client, connection) = connected.map_err(|e| format!("connect {i}: {e:?}"))?;
                let driver = tokio::spawn(connection);
                let row = client
                    .query_one("SELECT $1::int4", &[&(i as i32)])
                    .await
                    .map_err(|e| format!("query {i}: {e:?}"))?;
                drop(client);
                let _ = driver.await;
                Ok::<i32, String>(row.get(0))
            })
        })
        .collect();
    // Garbage connections at the same time do not disturb anyone.
    for _ in 0..50 {
        let _ = exchange(proxy.port, &[b"GET / HTTP/1.1\r\n\r\n".to_vec()]).await;
    }
    let mut sum = 0i64;
    let mut errors = Vec::new();
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(120), t).await {
            Ok(Ok(Ok(v))) => sum += v as i64,
            Ok(Ok(Err(e))) => errors.push(e),
            other => errors.push(format!("{other:?}")),
        }
    }
    assert!(
        errors.is_empty(),
        "{} failures, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert_eq!(sum, (0..N as i64).sum::<i64>());
    eprintln!("{N} concurrent sessions in {:?}", started.elapsed());
    still_serving(&proxy).await;
    proxy.stop().await;
}
