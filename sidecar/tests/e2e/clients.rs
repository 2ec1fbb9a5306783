//! Real clients run unchanged through the proxy and see what they see directly: psql,
//! psycopg 3, asyncpg, SQLAlchemy and pgbench in its three query modes.

use std::path::PathBuf;
use std::process::Command;

use tokio::sync::OnceCell;

use crate::common::{direct, run, Proxy};

fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

const NOTICE_FUNCTION: &str =
    "CREATE OR REPLACE FUNCTION portcullis_notice_me(n int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  RAISE NOTICE 'notice number %', n;
  RETURN n;
END $$";

static SETUP: OnceCell<()> = OnceCell::const_new();

async fn setup() {
    SETUP
        .get_or_init(|| async {
            direct()
                .await
                .batch_execute(NOTICE_FUNCTION)
                .await
                .expect("notice function");
        })
        .await;
}

fn normalize_pids(s: &str) -> String {
    s.lines()
        .map(|l| match l.find("server process with PID ") {
            Some(i) => format!("{}server process with PID N.", &l[..i]),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn psql(url: &str) -> String {
    let (_, out, err) = run(Command::new("psql")
        .args(["-X", "-a", "-f", "psql_script.sql", url])
        .current_dir(clients_dir()));
    normalize_pids(&format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_script_output_equals_direct() {
    setup().await;
    let proxy = Proxy::plain().await;
    let h = portcullis_e2e::harness();
    let url = proxy.url();
    let (a, b) = tokio::task::spawn_blocking(move || (psql(h.pg_url()), psql(&url)))
        .await
        .expect("psql");
    assert_eq!(a, b);
    for expected in [
        "COPY 2",
        "NOTICE:  notice number 3",
        "Asynchronous notification \"psql_channel\" with payload \"payload\"",
        "ERROR:  division by zero",
        "ERROR:  current transaction is aborted",
        " three \n-------\n     3",
        "full_name   | ",
    ] {
        assert!(b.contains(expected), "psql output lacks {expected:?}:\n{b}");
    }
    proxy.stop().await;
}

fn python(script: &str, proxy: &Proxy) {
    let h = portcullis_e2e::harness();
    let (ok, out, err) = run(Command::new("python3")
        .arg(script)
        .env("DIRECT_URL", h.pg_url())
        .env("PROXY_URL", proxy.url())
        .current_dir(clients_dir()));
    assert!(
        ok,
        "{script} failed (install e2e/requirements.txt with pip):\n{out}\n{err}"
    );
    assert!(out.contains(": ok"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_results_equal_direct() {
    setup().await;
    let proxy = Proxy::plain().await;
    let p = &proxy;
    tokio::task::block_in_place(|| python("psycopg_client.py", p));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_results_equal_direct() {
    setup().await;
    let proxy = Proxy::plain().await;
    let p = &proxy;
    tokio::task::block_in_place(|| python("asyncpg_client.py", p));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_results_equal_direct() {
    setup().await;
    let proxy = Proxy::plain().await;
    let p = &proxy;
    tokio::task::block_in_place(|| python("sqlalchemy_client.py", p));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_in_all_query_modes() {
    let h = portcullis_e2e::harness();
    let (ok, _, err) = tokio::task::block_in_place(|| {
        run(Command::new("pgbench").args(["-i", "-q", "-s", "1", h.pg_url()]))
    });
    assert!(ok, "pgbench -i: {err}");
    let proxy = Proxy::plain().await;
    for mode in ["simple", "extended", "prepared"] {
        for script in [None, Some("-S")] {
            let url = proxy.url();
            let mut args = vec!["-n", "-c", "4", "-j", "2", "-t", "100", "-M", mode];
            args.extend(script);
            args.push(&url);
            let (ok, out, err) =
                tokio::task::block_in_place(|| run(Command::new("pgbench").args(&args)));
            assert!(ok, "pgbench {args:?}: {out}\n{err}");
            assert!(
                out.contains("number of transactions actually processed: 400/400"),
                "{args:?}: {out}"
            );
            assert!(
                out.contains("number of failed transactions: 0 "),
                "{args:?}: {out}"
            );
        }
    }
    // Every statement went through the spool.
    let statements = proxy.statements();
    assert!(
        statements.len() >= 3 * 400,
        "{} statement records",
        statements.len()
    );
    proxy.stop().await;
}
