//! When statements wait for their audit record's fsync: every record is in the spool before
//! its statement is forwarded; statements that may change data also wait for the fsync, and
//! writes inside a transaction block wait at COMMIT.

use crate::common::Proxy;
use portcullis_crds::audit::AuditEvent;

const WAITS: &str = "portcullis_sidecar_audit_sync_waits_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_statements_that_change_data_wait_for_the_fsync() {
    let proxy = Proxy::plain().await;
    let c = proxy.client().await;
    let mut expected = proxy.metric(WAITS).await;
    let mut step = |sql: &'static str, waits: f64| {
        expected += waits;
        (sql, expected)
    };
    let script = [
        // Reads: written to the spool, synced by the group commit, never held.
        step("SELECT 1", 0.0),
        step("SELECT count(*), lower(min(email)) FROM customers", 0.0),
        step("SHOW search_path", 0.0),
        step("SET application_name = 'durability'", 0.0),
        // A write outside a transaction block commits at once: it waits.
        step("UPDATE orders SET status = status WHERE id = 1", 1.0),
        // Writes inside a block wait once, at COMMIT.
        step("BEGIN", 0.0),
        step("UPDATE orders SET status = status WHERE id = 1", 0.0),
        step("UPDATE orders SET status = status WHERE id = 2", 0.0),
        step("SELECT status FROM orders WHERE id = 1", 0.0),
        step("COMMIT", 1.0),
        // A block that only read commits without waiting.
        step("BEGIN", 0.0),
        step("SELECT 1", 0.0),
        step("COMMIT", 0.0),
        // A rolled-back block never waits.
        step("BEGIN", 0.0),
        step("UPDATE orders SET status = status WHERE id = 3", 0.0),
        step("ROLLBACK", 0.0),
        // A function outside the known read-only ones may change anything: it waits.
        step("SELECT pg_backend_pid()", 1.0),
        // Writing and committing in one string waits before the string leaves.
        step("BEGIN", 0.0),
        step(
            "UPDATE orders SET status = status WHERE id = 4; COMMIT",
            1.0,
        ),
    ];
    for (sql, waits) in script {
        c.simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(proxy.metric(WAITS).await, waits, "after {sql}");
    }
    // Extended protocol: the Execute of a write waits, of a read does not.
    let before = proxy.metric(WAITS).await;
    c.query("SELECT id FROM orders WHERE id = $1", &[&1i32])
        .await
        .expect("read");
    assert_eq!(proxy.metric(WAITS).await, before);
    c.execute("UPDATE orders SET status = status WHERE id = $1", &[&1i32])
        .await
        .expect("write");
    assert_eq!(proxy.metric(WAITS).await, before + 1.0);

    // Every statement's record is in the spool, ahead of its completion.
    let records = proxy.records();
    let mut statements = std::collections::HashSet::new();
    for r in &records {
        match &r.event {
            AuditEvent::Statement(s) => {
                statements.insert(s.statement_id);
            }
            AuditEvent::Completion(done) => {
                assert!(statements.contains(&done.statement_id), "{done:?}");
            }
            _ => {}
        }
    }
    assert!(statements.len() >= 22, "{}", statements.len());
    proxy.stop().await;
}
