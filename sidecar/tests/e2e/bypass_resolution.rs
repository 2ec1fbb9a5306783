//! Which object a name reaches at run time, and SQL run from strings: more variants of the
//! families the red team found (role changes moving `"$user"`, prepared statements the
//! server resolves again, query texts, writes that change every row). Each attempt first has
//! its effect on a direct connection, then is refused through the sidecar.

use crate::bypass::{
    admin_password, run_attempts, superuser_conn_str, Attempt, CONTACT_1_GONE, CRM, POLICY, PURGED,
    SUPERUSER,
};
use crate::bypass_redteam::{setup_rt, RT_UNBOUNDED_POLICY};
use crate::common::{connect, ProxyBuilder};

/// Role changes: `"$user"` in the default `search_path` follows the current role, so an
/// unqualified `contacts` reaches `crm.contacts` once the role is `crm`.
const ROLES: &[Attempt] = &[
    Attempt {
        family: "SET SESSION ROLE",
        steps: &["SET SESSION ROLE crm", "DELETE FROM contacts WHERE id = 1"],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "SET ROLE with a quoted name",
        steps: &["SET ROLE \"crm\"", "DELETE FROM contacts WHERE id = 1"],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "set_config('role') local to the transaction",
        steps: &[
            "BEGIN",
            "SELECT set_config('role', 'crm', true)",
            "DELETE FROM contacts WHERE id = 1",
            "COMMIT",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "set_config('role') with a computed role",
        steps: &[
            "SELECT set_config('role', 'cr' || 'm', false)",
            "DELETE FROM contacts WHERE id = 1",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "set_config with a computed setting name",
        steps: &[
            "SELECT set_config(lower('ROLE'), 'crm', false)",
            "DELETE FROM contacts WHERE id = 1",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "\"$user\" listed again after the role changed",
        steps: &[
            "SET search_path = public",
            "SET ROLE crm",
            "SET search_path = '$user', public",
            "DELETE FROM contacts WHERE id = 1",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "RESET ROLE after SET SESSION AUTHORIZATION keeps the new user",
        steps: &[
            "SET SESSION AUTHORIZATION crm",
            "RESET ROLE",
            "DELETE FROM contacts WHERE id = 1",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "SET SESSION AUTHORIZATION and DELETE in one query string",
        steps: &["SET SESSION AUTHORIZATION crm; DELETE FROM contacts WHERE id = 1"],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
];

/// Built-ins that run SQL given as text.
const QUERY_TEXTS: &[Attempt] = &[
    Attempt {
        family: "pg_catalog.query_to_xml_and_xmlschema",
        steps: &["SELECT pg_catalog.query_to_xml_and_xmlschema('SELECT crm.purge()', true, false, '')"],
        rule: "no-crm-purge",
        effect: PURGED,
    },
    Attempt {
        family: "query_to_xml with named arguments",
        steps: &["SELECT query_to_xml(query => 'SELECT crm.purge()', nulls => true, tableforest => false, targetns => '')"],
        rule: "no-crm-purge",
        effect: PURGED,
    },
    Attempt {
        family: "ts_stat with a dollar-quoted query",
        steps: &["SELECT * FROM ts_stat($q$SELECT to_tsvector(crm.purge()::text)$q$)"],
        rule: "no-crm-purge",
        effect: PURGED,
    },
    Attempt {
        family: "ts_rewrite with a query text",
        steps: &["SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery FROM (SELECT crm.purge()) s')"],
        rule: "no-crm-purge",
        effect: PURGED,
    },
    Attempt {
        family: "a query text in a query text",
        steps: &["SELECT query_to_xml('SELECT query_to_xml(''SELECT crm.purge()'', true, false, '''')', true, false, '')"],
        rule: "no-crm-purge",
        effect: PURGED,
    },
    Attempt {
        family: "a computed query text",
        steps: &["SELECT query_to_xml('SELECT crm.' || 'purge()', true, false, '')"],
        rule: "query-text",
        effect: PURGED,
    },
    Attempt {
        family: "a query text read from a row",
        steps: &["SELECT query_to_xml(q, true, false, '') FROM (VALUES ('SELECT crm.purge()')) v(q)"],
        rule: "query-text",
        effect: PURGED,
    },
];

const ALL_GONE: &str = "SELECT NOT EXISTS (SELECT 1 FROM crm.contacts)";
const ALL_RENAMED: &str = "SELECT bool_and(name = 'x') FROM crm.contacts";

/// Writes that change every row: TRUNCATE and filters on system columns.
const EVERY_ROW: &[Attempt] = &[
    Attempt {
        family: "TRUNCATE TABLE ONLY",
        steps: &["TRUNCATE TABLE ONLY crm.contacts"],
        rule: "unbounded-writes",
        effect: ALL_GONE,
    },
    Attempt {
        family: "TRUNCATE in a transaction with RESTART IDENTITY",
        steps: &["BEGIN", "TRUNCATE crm.contacts RESTART IDENTITY", "COMMIT"],
        rule: "unbounded-writes",
        effect: ALL_GONE,
    },
    Attempt {
        family: "a range on xmin",
        steps: &["UPDATE crm.contacts SET name = 'x' WHERE xmin::text::bigint > 0"],
        rule: "unbounded-writes",
        effect: ALL_RENAMED,
    },
    Attempt {
        family: "qualified tableoid cast to text",
        steps: &["DELETE FROM crm.contacts c WHERE c.tableoid::regclass::text = 'crm.contacts'"],
        rule: "unbounded-writes",
        effect: ALL_GONE,
    },
    Attempt {
        family: "tableoid IN a list",
        steps: &["DELETE FROM crm.contacts WHERE tableoid IN ('crm.contacts'::regclass)"],
        rule: "unbounded-writes",
        effect: ALL_GONE,
    },
    Attempt {
        family: "a range on ctid that covers every position",
        steps: &["DELETE FROM crm.contacts WHERE ctid >= '(0,0)'"],
        rule: "unbounded-writes",
        effect: ALL_GONE,
    },
];

async fn prepared() {
    let _crm = CRM.lock().await;
    setup_rt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_changes_move_user_schema() {
    prepared().await;
    run_attempts(ROLES, POLICY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_texts_are_analysed_or_refused() {
    prepared().await;
    run_attempts(QUERY_TEXTS, POLICY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_and_system_columns_are_unbounded() {
    prepared().await;
    run_attempts(EVERY_ROW, RT_UNBOUNDED_POLICY).await;
}

const RESTORE: &str =
    "INSERT INTO crm.contacts SELECT g, 'contact ' || g FROM generate_series(1, 5) g
       ON CONFLICT DO NOTHING;
     DELETE FROM crm.purges;";

/// A statement prepared through the protocol while `contacts` meant `public.contacts`, then
/// executed after each way of changing what it means: the server resolves it again, so the
/// sidecar decides it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_statements_are_decided_again_after_resolution_changes() {
    let _crm = CRM.lock().await;
    let shop = setup_rt().await;
    const DELETE: &str = "DELETE FROM contacts WHERE id = 1";
    let gone = || async {
        shop.query_one(CONTACT_1_GONE, &[])
            .await
            .expect("effect")
            .get::<_, bool>(0)
    };
    let changes = [
        "SET ROLE crm",
        "SET SESSION AUTHORIZATION crm",
        "SELECT set_config('search_path', 'crm, public', false)",
        "SELECT set_config('role', 'crm', false)",
        "SET search_path = crm, public",
    ];
    let proxy = ProxyBuilder::default()
        .credential(SUPERUSER, &admin_password())
        .policy("bypass", POLICY)
        .start()
        .await;
    for change in changes {
        shop.batch_execute(RESTORE).await.expect("restore");
        let direct = connect(&superuser_conn_str()).await;
        let stmt = direct.prepare(DELETE).await.expect("prepare directly");
        direct.simple_query(change).await.expect("change directly");
        direct.execute(&stmt, &[]).await.expect("execute directly");
        drop(direct);
        assert!(gone().await, "{change}: no effect directly");

        shop.batch_execute(RESTORE).await.expect("restore");
        let client = proxy.client().await;
        let outcome = async {
            let stmt = client.prepare(DELETE).await?;
            client.simple_query(change).await?;
            client.execute(&stmt, &[]).await
        }
        .await;
        drop(client);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        match outcome {
            Ok(n) => panic!("{change}: forwarded, {n} rows deleted"),
            Err(e) => {
                let db = e.as_db_error().unwrap_or_else(|| panic!("{change}: {e:?}"));
                assert_eq!(
                    db.code(),
                    &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE,
                    "{change}: {db:?}"
                );
                assert!(
                    db.message().contains("crm-deletes")
                        && db.message().contains("prepare it again"),
                    "{change}: {}",
                    db.message()
                );
            }
        }
        assert!(
            !gone().await,
            "{change}: the refused statement had its effect"
        );
    }
    // A change that leaves the statement's decision as it was lets it run.
    shop.batch_execute(RESTORE).await.expect("restore");
    let client = proxy.client().await;
    let stmt = client
        .prepare("DELETE FROM contacts WHERE id = 99")
        .await
        .expect("prepare");
    client
        .simple_query("SET search_path = public")
        .await
        .expect("path");
    client.execute(&stmt, &[]).await.expect("still runs");
    shop.batch_execute(RESTORE).await.expect("restore");
    proxy.stop().await;
}
