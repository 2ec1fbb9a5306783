//! A limit on every input: one unit more than allowed is refused with a clear message, and a
//! normal client is served meanwhile. The deep-statement shapes are first run directly against
//! PostgreSQL (which answers them), then through the sidecar, whose analysis must neither crash
//! nor refuse them; beyond the limit they are refused before parsing. Memory and start-up
//! limits are checked on the sidecar binary as a process of its own, with its peak memory read
//! from `/proc`.

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::SimpleQueryMessage;

use crate::common::{direct, startup_packet, Proxy, ProxyBuilder};

const POLICY: &str = "masking:
- name: contact
  columns: [customers.email]
  strategy: partial
";

fn or_chain(n: usize) -> String {
    let mut s = String::from("SELECT count(*) FROM customers WHERE email = 'a0'");
    for i in 1..=n {
        s.push_str(&format!(" OR email = 'a{i}'"));
    }
    s
}

fn union_chain(n: usize) -> String {
    vec!["SELECT email FROM customers WHERE id = 1"; n + 1].join(" UNION ")
}

fn concat_chain(n: usize) -> String {
    format!(
        "SELECT email {} FROM customers WHERE id = 1",
        " || 'x'".repeat(n)
    )
}

async fn rows(c: &tokio_postgres::Client, sql: &str) -> Result<usize, tokio_postgres::Error> {
    let out = c.simple_query(sql).await?;
    Ok(out
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count())
}

async fn still_serving(proxy: &Proxy) {
    let c = proxy.client().await;
    let row = c.query_one("SELECT 40 + 2", &[]).await.expect("served");
    assert_eq!(row.get::<_, i32>(0), 42);
}

/// The shapes that overflowed the analysis (576 UNIONs, 2,109 ORs, 1,776 `||`) are answered
/// through the sidecar as directly, with masking on; ten times longer they are refused before
/// parsing (`expression-depth`), and the sidecar keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_statements_are_analysed_or_refused_never_crash() {
    let db = direct().await;
    let proxy = ProxyBuilder::default().policy("gdpr", POLICY).start().await;
    let c = proxy.client().await;
    for (name, sql) in [
        ("2,109 ORs", or_chain(2_109)),
        ("576 UNIONs", union_chain(576)),
        ("1,776 ||", concat_chain(1_776)),
    ] {
        let expected = rows(&db, &sql).await.expect("direct");
        let got = rows(&c, &sql)
            .await
            .unwrap_or_else(|e| panic!("{name} through the sidecar: {e}"));
        assert_eq!(got, expected, "{name}");
    }
    // The masking still applies to the deep statements' results.
    let out = c.simple_query(&concat_chain(1_776)).await.expect("concat");
    for m in &out {
        if let SimpleQueryMessage::Row(r) = m {
            assert!(!r.get(0).unwrap_or("").contains('@'), "masked");
        }
    }
    for (name, sql) in [
        ("21,090 ORs", or_chain(21_090)),
        ("10,001 UNIONs", union_chain(10_001)),
        ("17,760 ||", concat_chain(17_760)),
    ] {
        let err = c.simple_query(&sql).await.expect_err(name);
        let db_err = err.as_db_error().expect("db error");
        assert!(
            db_err.message().contains("expression-depth:"),
            "{name}: {}",
            db_err.message()
        );
        still_serving(&proxy).await;
    }
    // The same session goes on.
    assert_eq!(rows(&c, "SELECT 1").await.expect("session usable"), 1);
    proxy.stop().await;
}

/// A query string of 100,000 statements is refused at once (`statement-count`) and a
/// normal client is served while it is sent; 10,000 statements run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_count_is_limited() {
    let proxy = Proxy::plain().await;
    let c = proxy.client().await;
    let many = "SELECT 1;".repeat(100_000);
    let started = Instant::now();
    let err = c.simple_query(&many).await.expect_err("refused");
    assert!(
        err.as_db_error()
            .is_some_and(|d| d.message().contains("statement-count:")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    still_serving(&proxy).await;
    let allowed = "SELECT 1;".repeat(10_000);
    assert_eq!(rows(&c, &allowed).await.expect("10,000 statements"), 10_000);
    proxy.stop().await;
}

/// The sidecar binary, started as a process on a configuration of the builder's.
struct SidecarProcess {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl SidecarProcess {
    async fn start(extra: &[&str]) -> SidecarProcess {
        let template = ProxyBuilder::default().start().await;
        let yaml = std::fs::read_to_string(template.config_file()).expect("config");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut lines = Vec::new();
        for line in yaml.lines() {
            let key = line.trim_start().split(':').next().unwrap_or("");
            let indent = &line[..line.len() - line.trim_start().len()];
            let value = line.split_once(": ").map(|(_, v)| v).unwrap_or("");
            lines.push(match key {
                "listenPort" => format!("{indent}listenPort: {port}"),
                "spoolDir" => format!("{indent}spoolDir: {}", dir.path().join("spool").display()),
                // Credential files are copied out of the template's directory.
                "usernameFile" | "passwordFile" => {
                    let copy = dir.path().join(key);
                    std::fs::copy(value, &copy).expect("credential file");
                    format!("{indent}{key}: {}", copy.display())
                }
                _ => line.to_owned(),
            });
        }
        template.stop().await;
        let config = dir.path().join("sidecar.yaml");
        std::fs::File::create(&config)
            .and_then(|mut f| f.write_all(lines.join("\n").as_bytes()))
            .expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis-sidecar"))
            .arg("--config")
            .arg(&config)
            .args(["--approvals", "off", "--workers", "2"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the sidecar binary");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "sidecar did not listen");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        SidecarProcess {
            child,
            port,
            _dir: dir,
        }
    }

    /// Peak resident memory of the process, in KiB.
    fn peak_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=agent dbname=shop sslmode=disable",
            self.port
        )
    }

    async fn serves(&self) {
        let (c, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        let row = c.query_one("SELECT 40 + 2", &[]).await.expect("served");
        assert_eq!(row.get::<_, i32>(0), 42);
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Read until the sidecar closes the connection; returns what it sent and when it closed.
async fn until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    (out, started.elapsed())
}

/// Eight clients each send a 200 MB query at once: each is refused as over the statement
/// limit, and the sidecar's peak memory grows by far less than one such query, because an
/// oversized statement is read past without being kept. A Bind over `--max-message-bytes`
/// ends its session before the body is read. Connections that never finish start-up (silent,
/// truncated, one byte at a time) are closed after `--startup-timeout` with a FATAL error.
/// Meanwhile a normal client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_process_bounds_memory_and_start_up_time() {
    let sidecar =
        SidecarProcess::start(&["--startup-timeout", "2s", "--max-message-bytes", "1048576"]).await;
    sidecar.serves().await;
    let before = sidecar.peak_kib();

    const QUERY: usize = 200 * 1024 * 1024;
    let chunk = vec![b'x'; 1024 * 1024];
    let sends: Vec<_> = (0..8)
        .map(|_| {
            let url = sidecar.url();
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("connect");
                tokio::spawn(conn);
                // A raw second connection streams the oversized Query from one buffer, so the
                // test itself holds 1 MB, not 200 MB.
                let mut raw = TcpStream::connect(url_port(&url)).await.expect("raw");
                raw.write_all(&startup_packet()).await.expect("startup");
                let mut head = [0u8; 1];
                // Wait for ReadyForQuery ('Z' ... 'I').
                let mut seen = Vec::new();
                while !seen.ends_with(b"Z\0\0\0\x05I") {
                    raw.read_exact(&mut head).await.expect("hello");
                    seen.push(head[0]);
                }
                let mut q = vec![b'Q'];
                q.extend_from_slice(&((QUERY + 4 + 1) as i32).to_be_bytes());
                raw.write_all(&q).await.expect("head");
                for _ in 0..QUERY / chunk.len() {
                    raw.write_all(&chunk).await.expect("body");
                }
                raw.write_all(&[0]).await.expect("end");
                let mut answer = vec![0u8; 512];
                let n = raw.read(&mut answer).await.expect("answer");
                let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
                // The first client is served meanwhile.
                let row = c.query_one("SELECT 1", &[]).await.expect("served");
                assert_eq!(row.get::<_, i32>(0), 1);
                answer
            })
        })
        .collect();
    for s in sends {
        let answer = s.await.expect("task");
        assert!(
            answer.contains("54000") && answer.contains("statement-size"),
            "{answer}"
        );
    }
    let grown_mib = sidecar.peak_kib().saturating_sub(before) / 1024;
    eprintln!("peak memory grew by {grown_mib} MiB for 8 concurrent 200 MB queries");
    assert!(grown_mib < 100, "peak memory grew by {grown_mib} MiB");
    sidecar.serves().await;

    // A Bind that announces 1 GiB is refused before its body arrives.
    let mut s = TcpStream::connect(("127.0.0.1", sidecar.port))
        .await
        .expect("connect");
    s.write_all(&startup_packet()).await.expect("startup");
    let mut bind = vec![b'B'];
    bind.extend_from_slice(&(1i32 << 30).to_be_bytes());
    bind.extend_from_slice(b"only a few bytes");
    s.write_all(&bind).await.expect("bind");
    let (out, took) = until_closed(&mut s, Duration::from_secs(10)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("FATAL") && text.contains("exceeds the limit of 1048576 bytes"),
        "{text}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");

    // Start-ups that never finish are closed after the timeout; one byte a second included.
    let mut silent = TcpStream::connect(("127.0.0.1", sidecar.port))
        .await
        .expect("connect");
    let mut truncated = TcpStream::connect(("127.0.0.1", sidecar.port))
        .await
        .expect("connect");
    truncated
        .write_all(&startup_packet()[..6])
        .await
        .expect("part");
    let slow_port = sidecar.port;
    let slow = tokio::spawn(async move {
        let mut s = TcpStream::connect(("127.0.0.1", slow_port))
            .await
            .expect("connect");
        let started = Instant::now();
        for b in startup_packet() {
            if s.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            if started.elapsed() > Duration::from_secs(10) {
                break;
            }
        }
        let (out, _) = until_closed(&mut s, Duration::from_secs(5)).await;
        (out, started.elapsed())
    });
    sidecar.serves().await;
    for s in [&mut silent, &mut truncated] {
        let (out, took) = until_closed(s, Duration::from_secs(10)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("FATAL") && text.contains("timeout"), "{text}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
    let (out, took) = slow.await.expect("slow client");
    assert!(
        String::from_utf8_lossy(&out).contains("timeout"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    sidecar.serves().await;
}

fn url_port(url: &str) -> (String, u16) {
    let port = url
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .expect("port");
    ("127.0.0.1".to_owned(), port)
}
