//! The upstream side: TLS (require and verify-full against the harness CA), SCRAM-SHA-256 and
//! MD5 authentication with the credential from files, and clean refusals when the upstream
//! cannot be reached or refuses the credential.

use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::sync::OnceCell;

use crate::common::{admin, run, Proxy, ProxyBuilder};

static SETUP: OnceCell<()> = OnceCell::const_new();

fn state() -> PathBuf {
    PathBuf::from(portcullis_e2e::harness().state_dir())
}

fn install(from: &Path, to: &Path, mode: &str) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    // PostgreSQL runs as user postgres when the harness runs as root.
    let _ = run(Command::new("chown").arg("postgres:postgres").arg(to));
    let (ok, _, err) = run(Command::new("chmod").arg(mode).arg(to));
    assert!(ok, "{err}");
}

/// Turn on TLS in the harness PostgreSQL (certificate from the harness CA, valid for
/// 127.0.0.1) and add an MD5 user with its pg_hba line.
async fn setup() {
    SETUP
        .get_or_init(|| async {
            let pgdata = state().join("postgres");
            let pki = state().join("pki");
            install(
                &pki.join("apiserver.crt"),
                &pgdata.join("portcullis-server.crt"),
                "0644",
            );
            install(
                &pki.join("apiserver.key"),
                &pgdata.join("portcullis-server.key"),
                "0600",
            );
            let hba_path = pgdata.join("pg_hba.conf");
            let hba = std::fs::read_to_string(&hba_path).expect("pg_hba.conf");
            if !hba.contains("md5user") {
                std::fs::write(
                    &hba_path,
                    format!("host all md5user 127.0.0.1/32 md5\n{hba}"),
                )
                .expect("write pg_hba.conf");
            }
            let a = admin().await;
            for sql in [
                "ALTER SYSTEM SET ssl = on",
                "ALTER SYSTEM SET ssl_cert_file = 'portcullis-server.crt'",
                "ALTER SYSTEM SET ssl_key_file = 'portcullis-server.key'",
                "SET password_encryption = 'md5'",
                "DO $$ BEGIN
                   IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'md5user') THEN
                     CREATE ROLE md5user LOGIN PASSWORD 'md5-secret';
                   END IF;
                 END $$",
                "SELECT pg_reload_conf()",
            ] {
                a.batch_execute(sql)
                    .await
                    .unwrap_or_else(|e| panic!("configure PostgreSQL ({sql}): {e:?}"));
            }
            // Reload is asynchronous.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        })
        .await;
}

async fn ssl_in_use(proxy: &Proxy) -> (bool, String) {
    let c = proxy.client().await;
    let row = c
        .query_one(
            "SELECT ssl, current_user::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("query over the proxy");
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_require_and_verify_full() {
    setup().await;
    let plain = ProxyBuilder::default().start().await;
    assert_eq!(ssl_in_use(&plain).await, (false, "app".to_owned()));
    plain.stop().await;

    let require = ProxyBuilder::default()
        .tls("require", None, None)
        .start()
        .await;
    assert_eq!(ssl_in_use(&require).await, (true, "app".to_owned()));
    require.stop().await;

    let ca = state().join("pki/ca.crt");
    let verified = ProxyBuilder::default()
        .tls("verify-full", Some(ca.clone()), None)
        .start()
        .await;
    assert_eq!(ssl_in_use(&verified).await, (true, "app".to_owned()));
    // Cancel travels over TLS too.
    let c = verified.client().await;
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(20)").await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("cancel");
    let err = sleeper.await.expect("join").expect_err("cancelled");
    assert_eq!(
        err.as_db_error().map(|d| d.code().clone()),
        Some(tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    verified.stop().await;

    // A certificate that does not match the expected name is refused: the client gets a
    // clean FATAL error and nothing reaches the server.
    let wrong = ProxyBuilder::default()
        .tls("verify-full", Some(ca.clone()), Some("db.other.example"))
        .start()
        .await;
    let err = tokio_postgres::connect(&wrong.conn_str(), tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused");
    let db = err.as_db_error().expect("FATAL from the proxy");
    assert_eq!(db.code().code(), "08006");
    assert!(db.message().contains("TLS"), "{}", db.message());
    wrong.stop().await;

    // A CA file without certificates is a configuration error at start-up.
    let empty = tempfile::NamedTempFile::new().expect("temp");
    let result = std::panic::AssertUnwindSafe(
        ProxyBuilder::default()
            .tls("verify-full", Some(empty.path().to_path_buf()), None)
            .try_start(),
    )
    .await;
    assert!(result.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_and_scram_credentials_from_files() {
    setup().await;
    let md5 = ProxyBuilder::default()
        .credential("md5user", "md5-secret")
        .start()
        .await;
    let c = md5.client().await;
    let row = c
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("md5 session");
    assert_eq!(row.get::<_, String>(0), "md5user");
    md5.stop().await;

    // Over TLS as well.
    let md5_tls = ProxyBuilder::default()
        .credential("md5user", "md5-secret")
        .tls("require", None, None)
        .start()
        .await;
    assert_eq!(ssl_in_use(&md5_tls).await, (true, "md5user".to_owned()));
    md5_tls.stop().await;

    // A wrong credential: the client sees the server's refusal, the proxy keeps serving.
    let wrong = ProxyBuilder::default()
        .credential("app", "not-the-password")
        .start()
        .await;
    let err = tokio_postgres::connect(&wrong.conn_str(), tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused");
    let db = err.as_db_error().expect("FATAL");
    assert_eq!(db.code().code(), "28P01");
    // The password file is read per session: fixing it fixes new sessions.
    std::fs::write(
        wrong.dir.path().join("creds/password"),
        portcullis_e2e::harness().pg_password(),
    )
    .expect("rotate");
    let c = wrong.client().await;
    assert_eq!(
        c.query_one("SELECT 1", &[])
            .await
            .expect("after rotation")
            .get::<_, i32>(0),
        1
    );
    wrong.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_gives_a_clean_error() {
    let proxy = ProxyBuilder::default().upstream_port(1).start().await;
    let err = tokio_postgres::connect(&proxy.conn_str(), tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused");
    let db = err.as_db_error().expect("FATAL from the proxy");
    assert_eq!(db.code().code(), "08006");
    proxy.stop().await;
}
