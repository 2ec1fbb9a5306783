//! Guardrail cases: what the client sees and what the audit spool holds, including attempts
//! to slip a statement past the analyser.

use portcullis_crds::audit::{AuditEvent, Decision};
use tokio_postgres::error::SqlState;

use crate::common::{direct, Proxy, ProxyBuilder};

const POLICY: &str = r#"guardrails:
- name: no-ddl
  statementKinds: [ddl]
  action: deny
- name: no-dcl
  statementKinds: [dcl]
  action: deny
- name: no-set-role
  statementKinds: [setRole]
  action: deny
- name: no-do
  statementKinds: [doBlock]
  action: deny
- name: no-truncate
  statementKinds: [truncate]
  action: deny
- name: unbounded-writes
  missingWhere: true
  action: deny
  message: add a WHERE clause
- name: orders-deletes
  statementKinds: [delete]
  tables: [orders]
  action: requireApproval
- name: customers-copy
  statementKinds: [copy]
  tables: [customers]
  action: deny
- name: customer-updates
  statementKinds: [update]
  tables: [customers]
  action: audit
- name: no-terminate
  functions: [pg_terminate_backend, pg_cancel_*]
  action: deny
- name: customers-export
  tables: [customers]
  rowsOver: 50
  action: deny
approval:
  approverGroups: [dba]
  timeoutSeconds: 60
  grantSeconds: 60
  grantScope: statement
"#;

/// Expected outcome of a case.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Forwarded (decision allow).
    Allow,
    /// Forwarded and flagged (decision audit) by the named rule.
    Audit(&'static str),
    /// Refused (decision deny) by the named rule.
    Deny(&'static str),
    /// Refused pending approval by the named rule.
    Approval(&'static str),
}

const CASES: &[(&str, Expect)] = &[
    (
        "SELECT id, full_name FROM customers WHERE id = 1",
        Expect::Allow,
    ),
    ("DROP TABLE gr_items", Expect::Deny("no-ddl")),
    ("dRoP /* harmless */ TaBlE gr_items", Expect::Deny("no-ddl")),
    ("CREATE TABLE gr_other (id int)", Expect::Deny("no-ddl")),
    (
        "ALTER TABLE gr_items ADD COLUMN z int",
        Expect::Deny("no-ddl"),
    ),
    (
        "CREATE FUNCTION gr_f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql",
        Expect::Deny("no-ddl"),
    ),
    (
        "GRANT SELECT ON customers TO PUBLIC",
        Expect::Deny("no-dcl"),
    ),
    ("CREATE ROLE gr_evil", Expect::Deny("no-dcl")),
    ("SET ROLE postgres", Expect::Deny("no-set-role")),
    (
        "SET SESSION AUTHORIZATION postgres",
        Expect::Deny("no-set-role"),
    ),
    (
        "SELECT set_config('role', 'postgres', false)",
        Expect::Deny("no-set-role"),
    ),
    (
        "DO $$ BEGIN DELETE FROM orders; END $$",
        Expect::Deny("no-do"),
    ),
    (
        "do language plpgsql $x$ BEGIN PERFORM pg_read_file('/etc/passwd'); END $x$",
        Expect::Deny("server-file-access"),
    ),
    (
        "UPDATE gr_items SET v = 'x'",
        Expect::Deny("unbounded-writes"),
    ),
    (
        "DELETE FROM gr_items WHERE 1=1",
        Expect::Deny("unbounded-writes"),
    ),
    (
        "delete from gr_items where true",
        Expect::Deny("unbounded-writes"),
    ),
    (
        "UPDATE gr_items SET v = 'x' WHERE id = id",
        Expect::Deny("unbounded-writes"),
    ),
    (
        "DELETE FROM gr_items WHERE id = 1 OR 1 = 1",
        Expect::Deny("unbounded-writes"),
    ),
    (
        "/* DROP */ DELETE FROM gr_items",
        Expect::Deny("unbounded-writes"),
    ),
    (
        "WITH d AS (DELETE FROM gr_items RETURNING *) SELECT * FROM d",
        Expect::Deny("unbounded-writes"),
    ),
    (
        "PREPARE gr_p AS DELETE FROM gr_items",
        Expect::Deny("unbounded-writes"),
    ),
    (
        "EXPLAIN ANALYZE DELETE FROM gr_items",
        Expect::Deny("unbounded-writes"),
    ),
    ("DELETE FROM gr_items WHERE id = 1000", Expect::Allow),
    (
        "DELETE FROM orders WHERE id = 1",
        Expect::Approval("orders-deletes"),
    ),
    (
        "DELETE FROM \"orders\" WHERE id = 1",
        Expect::Approval("orders-deletes"),
    ),
    (
        "DELETE FROM public.ORDERS WHERE id = 1",
        Expect::Approval("orders-deletes"),
    ),
    ("SELECT 1; DROP TABLE gr_items", Expect::Deny("no-ddl")),
    (
        "SELECT 1; SELECT 2; TRUNCATE gr_items",
        Expect::Deny("no-truncate"),
    ),
    (
        "SELECT pg_read_file('/etc/passwd')",
        Expect::Deny("server-file-access"),
    ),
    (
        "SELECT pg_catalog.PG_READ_FILE('/etc/passwd')",
        Expect::Deny("server-file-access"),
    ),
    (
        "SELECT \"pg_read_binary_file\"('/etc/passwd')",
        Expect::Deny("server-file-access"),
    ),
    (
        "SELECT * FROM pg_ls_dir('.')",
        Expect::Deny("server-file-access"),
    ),
    (
        "SELECT lo_import('/etc/passwd')",
        Expect::Deny("server-file-access"),
    ),
    (
        "SELECT lo_export(1, '/tmp/x')",
        Expect::Deny("server-file-access"),
    ),
    (
        "SELECT dblink_connect('host=example')",
        Expect::Deny("server-file-access"),
    ),
    (
        "COPY gr_items TO PROGRAM 'id'",
        Expect::Deny("copy-program"),
    ),
    (
        "COPY gr_items FROM '/etc/passwd'",
        Expect::Deny("copy-server-file"),
    ),
    ("COPY customers TO STDOUT", Expect::Deny("customers-copy")),
    (
        "COPY (SELECT ssn FROM customers) TO STDOUT",
        Expect::Deny("customers-copy"),
    ),
    (
        "SELECT pg_terminate_backend(1)",
        Expect::Deny("no-terminate"),
    ),
    ("SELECT pg_cancel_backend(1)", Expect::Deny("no-terminate")),
    (
        "SET standard_conforming_strings = off",
        Expect::Deny("protected-setting"),
    ),
    ("SELEC 1", Expect::Deny("unanalyzable")),
    (
        "DELETE FROM U&\"gr_\\0069tems\"",
        Expect::Deny("unbounded-writes"),
    ),
    (
        "SELECT 1; DO $$ BEGIN NULL; END $$",
        Expect::Deny("unanalyzable"),
    ),
    ("SELECT $$; DROP TABLE gr_items; $$", Expect::Allow),
    ("SELECT 1 -- ; DROP TABLE gr_items", Expect::Allow),
    (
        "UPDATE customers SET city = city WHERE id = 1",
        Expect::Audit("customer-updates"),
    ),
    ("SET search_path = public", Expect::Allow),
];

async fn setup() {
    let d = direct().await;
    d.batch_execute(
        "CREATE TABLE IF NOT EXISTS gr_items (id int primary key, v text);
         INSERT INTO gr_items SELECT g, 'v' || g FROM generate_series(1, 20) g ON CONFLICT DO NOTHING;",
    )
    .await
    .expect("setup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardrail_cases_simple_protocol() {
    setup().await;
    let proxy = ProxyBuilder::default()
        .policy("agents", POLICY)
        .start()
        .await;
    let client = proxy.client().await;
    let mut seen = 0usize;
    for (sql, expect) in CASES {
        let result = client.simple_query(sql).await;
        let records = proxy.records();
        let new: Vec<_> = records[seen..]
            .iter()
            .filter_map(|r| match &r.event {
                AuditEvent::Statement(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        seen = records.len();
        match expect {
            Expect::Allow | Expect::Audit(_) => {
                if let Err(e) = &result {
                    panic!("{sql}: expected to be forwarded, got {e:?}");
                }
                let decision = match expect {
                    Expect::Audit(_) => Decision::Audit,
                    _ => Decision::Allow,
                };
                assert!(
                    new.iter().any(|s| s.decision == decision),
                    "{sql}: no {decision:?} record in {new:?}"
                );
                if let Expect::Audit(rule) = expect {
                    assert!(new
                        .iter()
                        .any(|s| s.rule.as_ref().is_some_and(|r| r.rule == *rule)));
                }
            }
            Expect::Deny(rule) | Expect::Approval(rule) => {
                let err = match result {
                    Ok(_) => panic!("{sql}: expected a refusal by {rule}, but it was forwarded"),
                    Err(e) => e,
                };
                let db = err
                    .as_db_error()
                    .unwrap_or_else(|| panic!("{sql}: {err:?}"));
                assert_eq!(
                    db.code(),
                    &SqlState::INSUFFICIENT_PRIVILEGE,
                    "{sql}: {db:?}"
                );
                assert!(
                    db.message().contains(rule),
                    "{sql}: message {:?} does not name {rule}",
                    db.message()
                );
                let decision = match expect {
                    Expect::Approval(_) => {
                        assert!(db.message().contains("approval"), "{sql}: {}", db.message());
                        Decision::RequireApproval
                    }
                    _ => Decision::Deny,
                };
                assert!(
                    new.iter().any(|s| s.decision == decision
                        && s.rule.as_ref().is_some_and(|r| r.rule == *rule)),
                    "{sql}: spool has no {decision:?} record naming {rule}: {new:?}"
                );
                // The session stays usable after every refusal.
                let rows = client
                    .simple_query("SELECT 41 + 1")
                    .await
                    .expect("session usable");
                assert!(rows.iter().any(
                    |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("42"))
                ));
                seen = proxy.records().len();
            }
        }
    }
    // Nothing refused ran: the table and its rows are intact, no role was created.
    let d = direct().await;
    let n: i64 = d
        .query_one("SELECT count(*) FROM gr_items", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 20);
    let roles: i64 = d
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = 'gr_evil'",
            &[],
        )
        .await
        .expect("roles")
        .get(0);
    assert_eq!(roles, 0);
    assert!(CASES.len() >= 30);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardrails_apply_to_every_parse_of_the_extended_protocol() {
    setup().await;
    let proxy = ProxyBuilder::default()
        .policy("agents", POLICY)
        .start()
        .await;
    let client = proxy.client().await;
    for (sql, expect) in CASES {
        // Parse cannot carry several statements or utility statements with parameters
        // everywhere; the server itself refuses multi-statement Parse.
        if sql.contains(';') && !sql.contains("$$") {
            continue;
        }
        let prepared = client.prepare(sql).await;
        match expect {
            Expect::Deny(rule) | Expect::Approval(rule) => {
                let err = prepared
                    .err()
                    .unwrap_or_else(|| panic!("{sql}: Parse was forwarded"));
                let db = err
                    .as_db_error()
                    .unwrap_or_else(|| panic!("{sql}: {err:?}"));
                assert_eq!(db.code(), &SqlState::INSUFFICIENT_PRIVILEGE, "{sql}");
                assert!(db.message().contains(rule), "{sql}: {}", db.message());
            }
            Expect::Allow | Expect::Audit(_) => {
                // Forwarded: whatever the server says (some statements cannot be prepared)
                // is the server's answer, not a refusal.
                if let Err(e) = prepared {
                    let code = e.as_db_error().map(|d| d.code().clone());
                    assert_ne!(code, Some(SqlState::INSUFFICIENT_PRIVILEGE), "{sql}: {e:?}");
                }
            }
        }
        let row = client
            .query_one("SELECT $1::int + 1", &[&41i32])
            .await
            .expect("usable");
        assert_eq!(row.get::<_, i32>(0), 42);
    }
    // A refused named statement does not exist afterwards; pipelined requests around a
    // refusal get their own answers in order.
    let good = client.prepare("SELECT id FROM gr_items WHERE id = $1");
    let bad = client.prepare("DELETE FROM gr_items");
    let good2 = client.prepare("SELECT v FROM gr_items WHERE id = $1");
    let (good, bad, good2) = tokio::join!(good, bad, good2);
    let good = good.expect("first prepare");
    assert!(bad.is_err());
    let good2 = good2.expect("third prepare");
    let row = client.query_one(&good, &[&3i32]).await.expect("execute");
    assert_eq!(row.get::<_, i32>(0), 3);
    let row = client.query_one(&good2, &[&3i32]).await.expect("execute");
    assert_eq!(row.get::<_, String>(0), "v3");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_are_written_ahead_without_literals() {
    setup().await;
    let proxy = ProxyBuilder::default()
        .policy("agents", POLICY)
        .start()
        .await;
    let client = proxy.client().await;
    let rows = client
        .query(
            "SELECT id FROM customers WHERE email = 'secret.person@example.com' OR id = $1",
            &[&7i32],
        )
        .await
        .expect("query");
    assert_eq!(rows.len(), 1);
    let statements = proxy.statements();
    let parse = statements
        .iter()
        .find(|s| s.statement.as_deref().is_some_and(|t| t.contains("email")))
        .expect("statement record");
    let text = parse.statement.as_deref().unwrap_or_default();
    assert!(
        !text.contains("secret.person"),
        "literal leaked into the audit record: {text}"
    );
    assert!(text.contains("email = ?"), "{text}");
    assert_eq!(parse.tables, vec!["public.customers".to_owned()]);
    // Every Execute has a write-ahead record and a completion.
    let exec = statements
        .iter()
        .find(|s| {
            s.protocol == portcullis_crds::audit::Protocol::Execute
                && s.fingerprint == parse.fingerprint
        })
        .expect("execute record");
    let done = proxy.completion(exec.statement_id).await;
    assert_eq!(done.rows, 1);
    assert!(done.error.is_none());
    assert!(done.bytes > 0);

    // The record of a refused statement is in the spool before the client sees the error.
    let err = client
        .simple_query("DROP TABLE customers")
        .await
        .expect_err("refused");
    assert!(err
        .as_db_error()
        .is_some_and(|d| d.message().contains("no-ddl")));
    let recorded = proxy.statements().into_iter().any(|s| {
        s.decision == Decision::Deny && s.statement.as_deref() == Some("DROP TABLE customers")
    });
    assert!(recorded);

    // Session records frame the statements.
    drop(client);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let records = proxy.records();
    assert!(matches!(
        records.first().map(|r| &r.event),
        Some(AuditEvent::SessionStart(_))
    ));
    assert!(records
        .iter()
        .any(|r| matches!(r.event, AuditEvent::SessionEnd(_))));
    assert!(records.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(records
        .iter()
        .all(|r| r.identity.name == "agent" && r.resource == "shop-db"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_limit_cuts_bulk_exports() {
    let proxy = ProxyBuilder::default()
        .policy("agents", POLICY)
        .start()
        .await;
    let client = proxy.client().await;
    // Under the limit: allowed.
    let rows = client
        .query("SELECT id FROM customers WHERE id <= 50", &[])
        .await
        .expect("50 rows");
    assert_eq!(rows.len(), 50);
    // Over the limit: the client gets at most 50 rows and then the refusal.
    let err = client
        .query("SELECT id, email FROM customers", &[])
        .await
        .expect_err("bulk export refused");
    let db = err.as_db_error().expect("db error");
    assert_eq!(db.code(), &SqlState::INSUFFICIENT_PRIVILEGE);
    assert!(db.message().contains("customers-export"));
    let rows = client.query("SELECT 1", &[]).await.expect("usable");
    assert_eq!(rows.len(), 1);
    // Other tables are not limited.
    let n = client
        .query("SELECT * FROM generate_series(1, 500)", &[])
        .await
        .expect("series");
    assert_eq!(n.len(), 500);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanalysable_statements_can_be_audit_only() {
    let proxy = ProxyBuilder::default()
        .policy("lenient", "onUnanalyzable: audit\n")
        .start()
        .await;
    let client = proxy.client().await;
    // The parser cannot read this, the server can.
    let rows = client
        .simple_query("SELECT 1 AS one; DO $$ BEGIN NULL; END $$")
        .await
        .expect("forwarded under onUnanalyzable: audit");
    assert!(!rows.is_empty());
    let s = proxy.statements();
    assert!(s.iter().any(|s| s.decision == Decision::Audit
        && s.rule.as_ref().is_some_and(|r| r.rule == "unanalyzable")
        && s.statement.is_none()));
    // A DO block's body cannot be analysed either: forwarded and flagged under audit.
    client
        .simple_query("DO $$ BEGIN PERFORM 1; END $$")
        .await
        .expect("DO forwarded under onUnanalyzable: audit");
    // Built-in rules still apply, also inside DO bodies.
    assert!(client
        .simple_query("SELECT pg_read_file('/etc/passwd')")
        .await
        .is_err());
    assert!(client
        .simple_query("DO $$ BEGIN PERFORM pg_ls_dir('.'); END $$")
        .await
        .is_err());
    proxy.stop().await;

    // Without a policy, unanalysable statements are refused.
    let strict = Proxy::plain().await;
    let c = strict.client().await;
    for sql in [
        "SELECT 1; DO $$ BEGIN NULL; END $$",
        "DO $$ BEGIN NULL; END $$",
    ] {
        let err = c.simple_query(sql).await.expect_err("refused");
        let db = err.as_db_error().expect("db error");
        assert_eq!(db.code(), &SqlState::INSUFFICIENT_PRIVILEGE, "{sql}");
        assert!(
            db.message().contains("unanalyzable"),
            "{sql}: {}",
            db.message()
        );
    }
    strict.stop().await;
}
