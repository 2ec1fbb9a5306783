//! Bypass families: each attempt is first run on a direct connection (as the role the sidecar
//! uses), where it must have its effect, and then through the sidecar, where it must be
//! refused and have none.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::common::{admin, connect, ProxyBuilder};

/// Superuser the sidecar and the direct connections of these cases log in as (server
/// functions that write files need it).
pub(crate) const SUPERUSER: &str = "bypass_su";

pub(crate) const POLICY: &str = r#"guardrails:
- name: crm-deletes
  statementKinds: [delete]
  tables: [crm.contacts]
  action: requireApproval
- name: no-crm-purge
  functions: [crm.purge]
  action: deny
"#;

/// One attempt: statements run in order on one session; the sidecar must refuse one of
/// them (naming `rule`, usually at the last step). `effect` is a query (run as superuser afterwards)
/// that is true when the attempt did what it wanted; `{file}` stands for a fresh path.
pub(crate) struct Attempt {
    pub(crate) family: &'static str,
    pub(crate) steps: &'static [&'static str],
    pub(crate) rule: &'static str,
    pub(crate) effect: &'static str,
}

pub(crate) const CONTACT_1_GONE: &str =
    "SELECT NOT EXISTS (SELECT 1 FROM crm.contacts WHERE id = 1)";
const FILE_WRITTEN: &str = "SELECT (pg_catalog.pg_stat_file('{file}', true)).size IS NOT NULL";
pub(crate) const PURGED: &str = "SELECT EXISTS (SELECT 1 FROM crm.purges)";

const NAMES: &[Attempt] = &[
    Attempt {
        family: "1 escaped function name",
        steps: &[r#"SELECT U&"\006Co_export"(4242, '{file}')"#],
        rule: "server-file-access",
        effect: FILE_WRITTEN,
    },
    Attempt {
        family: "1 escaped function name with UESCAPE",
        steps: &[r#"SELECT pg_catalog.U&"!006C!+00006F_export" UESCAPE '!' (4242, '{file}')"#],
        rule: "server-file-access",
        effect: FILE_WRITTEN,
    },
    Attempt {
        family: "1 escaped table name",
        steps: &[r#"DELETE FROM U&"crm".U&"cont\0061cts" WHERE id = 1"#],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 case folding",
        steps: &[r#"DELETE FROM CRM."contacts" WHERE id = 1"#],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 search_path in the same query string",
        steps: &["SET search_path = crm, public; DELETE FROM contacts WHERE id = 1"],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 search_path set earlier",
        steps: &[
            "SET search_path TO 'crm'",
            "DELETE FROM contacts WHERE id = 1",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 SET SCHEMA (not analysable: refused)",
        steps: &["SET SCHEMA 'crm'", "DELETE FROM contacts WHERE id = 1"],
        rule: "unanalyzable",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 set_config",
        steps: &[
            "SELECT pg_catalog.set_config('search_path', 'crm', false)",
            "DELETE FROM contacts WHERE id = 1",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 SET LOCAL",
        steps: &[
            "BEGIN",
            "SET LOCAL search_path = crm",
            "DELETE FROM contacts WHERE id = 1; COMMIT",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 rollback restores a path",
        steps: &[
            "SET search_path = crm",
            "BEGIN",
            "SET search_path = public",
            "ROLLBACK",
            "DELETE FROM contacts WHERE id = 1",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 server function that sets the path",
        steps: &[
            "SELECT public.bypass_use_crm()",
            "DELETE FROM contacts WHERE id = 1",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 function deny list by resolved identity",
        steps: &["SET search_path = crm, public", "SELECT purge()"],
        rule: "no-crm-purge",
        effect: PURGED,
    },
    Attempt {
        family: "1 function deny list, escaped qualified name",
        steps: &[r#"SELECT U&"\0063rm".PURGE()"#],
        rule: "no-crm-purge",
        effect: PURGED,
    },
];

pub(crate) const ALLOW_LIST: &str = r#"functions:
  mode: allowList
  allow: [crm.safe_*]
"#;

const SERVER_CODE: &[Attempt] = &[
    Attempt {
        family: "4 dynamic DELETE inside a function",
        steps: &["SELECT public.b4_purge()"],
        rule: "functions",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "4 the same function, unqualified",
        steps: &["SELECT lower('A'), b4_purge()"],
        rule: "functions",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "4 procedure",
        steps: &["CALL public.b4_purge_proc()"],
        rule: "functions",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "4 function in FROM",
        steps: &["SELECT * FROM public.b4_purge()"],
        rule: "functions",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "4 DO block",
        steps: &["DO $$ BEGIN EXECUTE 'DELETE FROM crm.contacts WHERE id = 1'; END $$"],
        rule: "functions",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "4 an allowed name reached through search_path",
        steps: &[
            "SELECT crm.safe_count()",
            "SET search_path = public, crm",
            "SELECT safe_count(), b4_purge()",
        ],
        rule: "functions",
        effect: CONTACT_1_GONE,
    },
];

const UNBOUNDED: &str = r#"guardrails:
- name: unbounded-writes
  missingWhere: true
  action: deny
"#;

const ALL_GONE: &str = "SELECT NOT EXISTS (SELECT 1 FROM crm.contacts)";
const ALL_RENAMED: &str = "SELECT bool_and(name = 'x') FROM crm.contacts";
const ALL_IMPORTED: &str = "SELECT bool_and(name = 'imported') FROM crm.contacts";

/// Writes with a WHERE (or a source) that every row passes: each changes every row of
/// `crm.contacts` directly.
const UNBOUNDED_WRITES: &[Attempt] = &[
    Attempt {
        family: "2 constant expression",
        steps: &["DELETE FROM crm.contacts WHERE now() IS NOT NULL"],
        rule: "unbounded-writes",
        effect: ALL_GONE,
    },
    Attempt {
        family: "2 NOT NULL test on the primary key",
        steps: &["UPDATE crm.contacts SET name = 'x' WHERE id IS NOT NULL"],
        rule: "unbounded-writes",
        effect: ALL_RENAMED,
    },
    Attempt {
        family: "2 column compared with itself",
        steps: &["UPDATE crm.contacts SET name = 'x' WHERE id = id"],
        rule: "unbounded-writes",
        effect: ALL_RENAMED,
    },
    Attempt {
        family: "2 OR with a constant branch",
        steps: &["DELETE FROM crm.contacts WHERE id = 1 OR 2 > 1"],
        rule: "unbounded-writes",
        effect: ALL_GONE,
    },
    Attempt {
        family: "2 a predicate compared with a constant",
        steps: &["UPDATE crm.contacts SET name = 'x' WHERE (id IS NOT NULL) = true"],
        rule: "unbounded-writes",
        effect: ALL_RENAMED,
    },
    Attempt {
        family: "2 LIKE that every value matches",
        steps: &["UPDATE crm.contacts SET name = 'x' WHERE name LIKE '%%'"],
        rule: "unbounded-writes",
        effect: ALL_RENAMED,
    },
    Attempt {
        family: "2 IN a whole table",
        steps: &["DELETE FROM crm.contacts WHERE id IN (SELECT id FROM crm.contacts_import)"],
        rule: "unbounded-writes",
        effect: ALL_GONE,
    },
    Attempt {
        family: "2 DELETE USING a join on every row",
        steps: &["DELETE FROM crm.contacts c USING crm.contacts_import i WHERE c.id = i.id"],
        rule: "unbounded-writes",
        effect: ALL_GONE,
    },
    Attempt {
        family: "2 UPDATE FROM a join on every row",
        steps: &["UPDATE crm.contacts c SET name = i.name FROM crm.contacts_import i WHERE c.id = i.id"],
        rule: "unbounded-writes",
        effect: ALL_IMPORTED,
    },
    Attempt {
        family: "2 upsert fed from a whole table",
        steps: &["INSERT INTO crm.contacts SELECT * FROM crm.contacts_import ON CONFLICT (id) DO UPDATE SET name = excluded.name"],
        rule: "unbounded-writes",
        effect: ALL_IMPORTED,
    },
    Attempt {
        family: "2 upsert fed from a CTE",
        steps: &["WITH s AS (SELECT * FROM crm.contacts_import) INSERT INTO crm.contacts SELECT * FROM s ON CONFLICT (id) DO UPDATE SET name = excluded.name"],
        rule: "unbounded-writes",
        effect: ALL_IMPORTED,
    },
    Attempt {
        family: "2 MERGE of a whole table",
        steps: &["MERGE INTO crm.contacts c USING crm.contacts_import i ON c.id = i.id WHEN MATCHED THEN DELETE"],
        rule: "unbounded-writes",
        effect: ALL_GONE,
    },
    Attempt {
        family: "2 MERGE from a subquery of a whole table",
        steps: &["MERGE INTO crm.contacts c USING (SELECT id FROM crm.contacts_import) i ON c.id = i.id WHEN MATCHED THEN UPDATE SET name = 'x'"],
        rule: "unbounded-writes",
        effect: ALL_RENAMED,
    },
    Attempt {
        family: "2 data-modifying CTE",
        steps: &["WITH d AS (DELETE FROM crm.contacts WHERE id <> -1 RETURNING id) SELECT count(*) FROM d"],
        rule: "unbounded-writes",
        effect: ALL_GONE,
    },
    Attempt {
        family: "2 prepared and executed",
        steps: &["PREPARE b2 AS UPDATE crm.contacts SET name = $1 WHERE id = id", "EXECUTE b2('x')"],
        rule: "unbounded-writes",
        effect: ALL_RENAMED,
    },
];

pub(crate) fn admin_password() -> String {
    // postgresql://postgres:PASSWORD@host:port/postgres
    let url = portcullis_e2e::harness().pg_admin_url();
    url.split("://")
        .nth(1)
        .and_then(|rest| rest.split('@').next())
        .and_then(|userinfo| userinfo.split(':').nth(1))
        .expect("admin password in the harness URL")
        .to_owned()
}

pub(crate) fn superuser_conn_str() -> String {
    let h = portcullis_e2e::harness();
    format!(
        "host={} port={} user={SUPERUSER} password={} dbname=shop sslmode=disable",
        h.pg_host(),
        h.pg_port(),
        admin_password()
    )
}

/// Schema `crm` with `contacts` and `purges`, function `crm.purge()`, a function that sets
/// the caller's search_path, and the superuser role.
pub(crate) async fn setup() -> Client {
    let a = admin().await;
    let password = admin_password();
    a.batch_execute(&format!(
        "DO $$ BEGIN CREATE ROLE {SUPERUSER} SUPERUSER LOGIN PASSWORD '{password}';
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
    ))
    .await
    .expect("role");
    let shop = connect(&superuser_conn_str()).await;
    shop.batch_execute(
        "DO $$ BEGIN CREATE SCHEMA IF NOT EXISTS crm;
           EXCEPTION WHEN unique_violation OR duplicate_object THEN NULL; END $$;
         CREATE TABLE IF NOT EXISTS crm.contacts (id int PRIMARY KEY, name text);
         CREATE TABLE IF NOT EXISTS crm.purges (at timestamptz);
         CREATE OR REPLACE FUNCTION crm.purge() RETURNS void LANGUAGE sql
           AS $$ INSERT INTO crm.purges VALUES (now()) $$;
         CREATE OR REPLACE FUNCTION public.bypass_use_crm() RETURNS text LANGUAGE sql
           AS $$ SELECT pg_catalog.set_config('search_path', 'crm', false) $$;
         CREATE OR REPLACE FUNCTION public.b4_purge() RETURNS void LANGUAGE plpgsql
           AS $$ BEGIN EXECUTE format('DELETE FROM %I.%I WHERE id = %s', 'crm', 'contacts', 1); END $$;
         CREATE OR REPLACE PROCEDURE public.b4_purge_proc() LANGUAGE plpgsql
           AS $$ BEGIN EXECUTE 'DELETE FROM crm.contacts WHERE id = 1'; END $$;
         CREATE OR REPLACE FUNCTION crm.safe_count() RETURNS bigint LANGUAGE sql
           AS $$ SELECT count(*) FROM crm.contacts $$;
         CREATE TABLE IF NOT EXISTS crm.contacts_import (id int PRIMARY KEY, name text);
         INSERT INTO crm.contacts_import SELECT g, 'imported' FROM generate_series(1, 5) g
           ON CONFLICT DO NOTHING;
         CREATE TABLE IF NOT EXISTS crm.leads (id int PRIMARY KEY, email text);
         INSERT INTO crm.leads SELECT g, 'lead' || g || '@example.com'
           FROM generate_series(1, 100) g ON CONFLICT DO NOTHING;
         CREATE OR REPLACE VIEW crm.leads_view AS SELECT id, email FROM crm.leads;
         CREATE OR REPLACE VIEW crm.leads_view2 AS SELECT email FROM crm.leads_view;
         CREATE OR REPLACE FUNCTION crm.all_leads() RETURNS SETOF crm.leads LANGUAGE sql
           AS $$ SELECT * FROM crm.leads $$;
         SELECT pg_catalog.lo_from_bytea(4242, 'x')
           WHERE NOT EXISTS (SELECT 1 FROM pg_largeobject_metadata WHERE oid = 4242);",
    )
    .await
    .ok();
    shop
}

async fn restore(shop: &Client) {
    shop.batch_execute(
        "INSERT INTO crm.contacts SELECT g, 'contact ' || g FROM generate_series(1, 5) g
           ON CONFLICT DO NOTHING;
         UPDATE crm.contacts SET name = 'contact ' || id WHERE name <> 'contact ' || id;
         DELETE FROM crm.purges;",
    )
    .await
    .expect("restore");
}

async fn effect(shop: &Client, attempt: &Attempt, file: &str) -> bool {
    let sql = attempt.effect.replace("{file}", file);
    shop.query_one(sql.as_str(), &[])
        .await
        .unwrap_or_else(|e| panic!("{}: effect query: {e}", attempt.family))
        .get(0)
}

fn file_for(attempt: usize, via: &str) -> String {
    format!(
        "/tmp/portcullis-bypass-{}-{attempt}-{via}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    )
}

/// The attempt tables share the `crm` schema: one runs at a time.
pub(crate) static CRM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Run a table of attempts: each must work directly and be refused by the sidecar.
pub(crate) async fn run_attempts(attempts: &[Attempt], policy: &str) {
    let _crm = CRM.lock().await;
    let shop = setup().await;
    let proxy = ProxyBuilder::default()
        .credential(SUPERUSER, &admin_password())
        .policy("bypass", policy)
        .start()
        .await;
    for (i, attempt) in attempts.iter().enumerate() {
        // Directly: every step runs and the effect happens.
        restore(&shop).await;
        let file = file_for(i, "direct");
        let direct = connect(&superuser_conn_str()).await;
        for step in attempt.steps {
            let sql = step.replace("{file}", &file);
            direct.simple_query(&sql).await.unwrap_or_else(|e| {
                panic!(
                    "{}: {sql} fails on a direct connection: {e:?}",
                    attempt.family
                )
            });
        }
        drop(direct);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            effect(&shop, attempt, &file).await,
            "{}: no effect on a direct connection",
            attempt.family
        );
        let _ = std::fs::remove_file(&file);

        // Through the sidecar: the last step is refused and nothing happens.
        restore(&shop).await;
        let file = file_for(i, "proxy");
        let client = proxy.client().await;
        let mut refusal = None;
        for step in attempt.steps {
            let sql = step.replace("{file}", &file);
            if let Err(e) = client.simple_query(&sql).await {
                refusal = Some(e);
                break;
            }
        }
        let err = refusal.unwrap_or_else(|| {
            panic!(
                "{}: every step was forwarded by the sidecar",
                attempt.family
            )
        });
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{}: {err:?}", attempt.family));
        assert_eq!(
            db.code(),
            &SqlState::INSUFFICIENT_PRIVILEGE,
            "{}: {db:?}",
            attempt.family
        );
        assert!(
            db.message().contains(attempt.rule),
            "{}: refusal {:?} does not name {}",
            attempt.family,
            db.message(),
            attempt.rule
        );
        drop(client);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !effect(&shop, attempt, &file).await,
            "{}: the refused statement had its effect",
            attempt.family
        );
    }
    restore(&shop).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_resolved_before_they_are_matched() {
    run_attempts(NAMES, POLICY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_change_every_row_are_unbounded() {
    run_attempts(UNBOUNDED_WRITES, UNBOUNDED).await;
    // Writes that name their rows are forwarded.
    let _crm = CRM.lock().await;
    let shop = setup().await;
    restore(&shop).await;
    let proxy = ProxyBuilder::default()
        .credential(SUPERUSER, &admin_password())
        .policy("bypass", UNBOUNDED)
        .start()
        .await;
    let client = proxy.client().await;
    for sql in [
        "UPDATE crm.contacts SET name = 'x' WHERE id = 1",
        "UPDATE crm.contacts c SET name = 'x' FROM crm.contacts_import i WHERE c.id = i.id AND i.id = 2",
        "INSERT INTO crm.contacts VALUES (3, 'x') ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        "MERGE INTO crm.contacts c USING (VALUES (4)) s(id) ON c.id = s.id WHEN MATCHED THEN UPDATE SET name = 'x'",
        "DELETE FROM crm.contacts WHERE id > 4",
    ] {
        client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    let left: i64 = shop
        .query_one("SELECT count(*) FROM crm.contacts WHERE name <> 'x'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "the bounded writes ran");
    restore(&shop).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_allow_lists_keep_out_server_code() {
    run_attempts(SERVER_CODE, ALLOW_LIST).await;
}

pub(crate) const MASK_SSN: &str = "masking:
- name: national-id
  columns: [customers.ssn]
  strategy: redact
";

/// Run `tests/clients/named_statements.py` against `url`: variant to what the client saw.
fn named_statements(url: &str) -> serde_json::Map<String, serde_json::Value> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let (ok, out, err) = crate::common::run(
        std::process::Command::new("python3")
            .arg("named_statements.py")
            .arg(url)
            .current_dir(dir),
    );
    assert!(ok, "named_statements.py failed:\n{out}\n{err}");
    match serde_json::from_str(out.trim()) {
        Ok(serde_json::Value::Object(m)) => m,
        other => panic!("unexpected output {out}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_carry_their_definition() {
    let shop = setup().await;
    shop.batch_execute(
        "CREATE TABLE IF NOT EXISTS public.b13_log (v text);
         GRANT ALL ON public.b13_log TO app;
         CREATE OR REPLACE FUNCTION public.b13_prepare() RETURNS void LANGUAGE plpgsql
           AS $$ BEGIN EXECUTE 'PREPARE b13f AS SELECT ssn FROM customers WHERE id = 1'; END $$;",
    )
    .await
    .expect("named statement setup");
    let clear: String = shop
        .query_one("SELECT ssn FROM customers WHERE id = 1", &[])
        .await
        .expect("ssn")
        .get(0);
    let h = portcullis_e2e::harness();
    let direct = tokio::task::block_in_place(|| named_statements(h.pg_url()));
    let proxy = ProxyBuilder::default()
        .policy("mask", MASK_SSN)
        .start()
        .await;
    let url = proxy.url();
    let via = tokio::task::block_in_place(|| named_statements(&url));
    const INSERTS: &str = "SQL PREPARE of an INSERT, five protocol Executes";
    for (variant, seen) in &direct {
        let seen = seen.as_str().unwrap_or_default();
        let through = via[variant].as_str().unwrap_or_default();
        eprintln!("{variant}: directly {seen:?}, through the sidecar {through:?}");
        if variant == INSERTS {
            assert_eq!(seen, "5", "{variant} directly");
            assert_eq!(through, "5", "{variant} through the sidecar");
            continue;
        }
        // Family 13: each variant returns the clear value directly...
        assert_eq!(seen, clear, "13 {variant}: direct connection");
        // ...and never through the sidecar.
        assert!(
            !through.contains(&clear),
            "13 {variant}: clear value through the sidecar: {through}"
        );
        if variant.starts_with("prepared by server code") {
            assert!(
                through.contains("unknown-statement"),
                "13 {variant}: {through}"
            );
        }
    }
    // Every Execute of the INSERT prepared in SQL has its own write-ahead record.
    let inserts = proxy
        .statements()
        .into_iter()
        .filter(|s| {
            s.protocol == portcullis_crds::audit::Protocol::Execute
                && s.kinds.iter().any(|k| k == "insert")
        })
        .count();
    assert_eq!(inserts, 5, "execution records of the prepared INSERT");
    proxy.stop().await;
}

/// Every text field of a server error, as the client sees it.
pub(crate) fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{} | {} | {} | {} | {:?} | {}",
            db.message(),
            db.detail().unwrap_or_default(),
            db.hint().unwrap_or_default(),
            db.where_().unwrap_or_default(),
            db.position(),
            [
                db.schema(),
                db.table(),
                db.column(),
                db.datatype(),
                db.constraint()
            ]
            .iter()
            .map(|f| f.unwrap_or_default())
            .collect::<Vec<_>>()
            .join(",")
        ),
        None => e.to_string(),
    }
}

const ERROR_CARRIERS: &[(&str, &str)] = &[
    (
        "5 object name in the message",
        "SELECT (SELECT ssn FROM customers WHERE id = 1)::regclass",
    ),
    (
        "5 unknown setting",
        "SELECT set_config((SELECT ssn FROM customers WHERE id = 1), 'x', false)",
    ),
    ("5 CONTEXT of dynamic SQL", "SELECT public.b5_context(1)"),
    (
        "5 internal query and column name built by format()",
        "SELECT public.b5_internal(1)",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_fields_carry_no_masked_value() {
    let shop = setup().await;
    shop.batch_execute(
        "CREATE OR REPLACE FUNCTION public.b5_context(i int) RETURNS int LANGUAGE plpgsql AS $$
           DECLARE v text; r int;
           BEGIN SELECT ssn INTO v FROM customers WHERE id = i;
             EXECUTE format('SELECT %L::int', v) INTO r; RETURN r; END $$;
         CREATE OR REPLACE FUNCTION public.b5_internal(i int) RETURNS int LANGUAGE plpgsql AS $$
           DECLARE v text; r int;
           BEGIN SELECT ssn INTO v FROM customers WHERE id = i;
             EXECUTE format('SELECT %I FROM customers', v) INTO r; RETURN r; END $$;",
    )
    .await
    .expect("functions");
    let clear: String = shop
        .query_one("SELECT ssn FROM customers WHERE id = 1", &[])
        .await
        .expect("ssn")
        .get(0);
    let direct = crate::common::direct().await;
    let proxy = ProxyBuilder::default()
        .policy("mask", MASK_SSN)
        .start()
        .await;
    let client = proxy.client().await;
    for (family, sql) in ERROR_CARRIERS {
        let d = direct.simple_query(sql).await.expect_err(family);
        assert!(
            error_text(&d).contains(&clear),
            "{family}: the direct error does not carry the value: {}",
            error_text(&d)
        );
        let p = client.simple_query(sql).await.expect_err(family);
        let text = error_text(&p);
        assert!(!text.contains(&clear), "{family}: {text}");
        // The error still says what went wrong, unless the sidecar refused the statement.
        assert!(
            p.code() == d.code() || p.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{family}: {text}"
        );
    }
    // Names the client wrote itself are quoted back.
    let e = client
        .simple_query("SELECT * FROM b5_no_such_table")
        .await
        .expect_err("unknown table");
    assert!(
        error_text(&e).contains("b5_no_such_table"),
        "{}",
        error_text(&e)
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_hold_no_values_without_masking_rules() {
    let secret = "carol.secret@example.com";
    let direct = crate::common::direct().await;
    let cases = [
        format!("SELECT ('{secret}' || '.public.t')::regclass"),
        format!("SELECT * FROM {secret}.public.t"),
        format!("SELEC '{secret}'"),
        format!("SELECT 1 FROM customers WHERE email = '{secret}' AND id = 'x'"),
    ];
    // The server's own messages quote the value.
    let e = direct
        .simple_query(&cases[0])
        .await
        .expect_err("cross-database");
    assert!(error_text(&e).contains(secret), "{}", error_text(&e));
    let proxy = crate::common::Proxy::plain().await;
    let conn = format!("{} application_name={secret}", proxy.conn_str());
    let client = connect(&conn).await;
    for sql in &cases {
        let _ = client.simple_query(sql).await;
    }
    drop(client);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let spool = serde_json::to_string(&proxy.records()).expect("records");
    assert!(
        spool.contains("SessionStart") || spool.contains("session"),
        "{spool}"
    );
    assert!(
        !spool.contains("carol.secret"),
        "12: a value reached the audit spool: {spool}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_hashes_only_for_direct_references() {
    let policy = "masking:
- name: payment
  columns: [customers.card_number]
  strategy: hash
";
    // One row: the first digit of the card, and a digit known to the attacker computed from
    // the same column (its hash would be a dictionary entry).
    let sql = "SELECT card_number, substr(card_number, 1, 1), \
               substr(card_number || '4', length(card_number) + 1, 1) \
               FROM customers WHERE id = 1";
    let direct = crate::common::direct().await;
    let row = direct.query_one(sql, &[]).await.expect("direct");
    let first: String = row.get(1);
    let known: String = row.get(2);
    assert_eq!(known, "4");
    assert!(
        first.chars().all(|c| c.is_ascii_digit()),
        "7: directly {first}"
    );
    let proxy = ProxyBuilder::default()
        .policy("hash", policy)
        .hash_key("a test key that is long enough")
        .start()
        .await;
    let client = proxy.client().await;
    let row = client
        .query_one(sql, &[])
        .await
        .expect("through the sidecar");
    let whole: String = row.get(0);
    let first: String = row.get(1);
    let known: String = row.get(2);
    // The direct reference keeps its joinable hash; derived values are redacted.
    assert!(whole != "***" && !whole.contains(&first), "7: {whole}");
    assert_eq!(first, "***", "7: hash of a derived value");
    assert_eq!(known, "***", "7: hash of a derived value");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_of_statements_over_masked_data_are_masked() {
    let shop = setup().await;
    shop.batch_execute(
        "CREATE OR REPLACE FUNCTION public.b6_ssn(i int) RETURNS text LANGUAGE plpgsql IMMUTABLE
           AS $$ BEGIN RETURN (SELECT ssn FROM customers WHERE id = i); END $$;",
    )
    .await
    .expect("function");
    let clear: String = shop
        .query_one("SELECT ssn FROM customers WHERE id = 1", &[])
        .await
        .expect("ssn")
        .get(0);
    let attempts = [
        "EXPLAIN (VERBOSE, COSTS OFF) SELECT public.b6_ssn(1)",
        "EXPLAIN (VERBOSE, COSTS OFF, FORMAT JSON) SELECT public.b6_ssn(1)",
        "EXPLAIN (ANALYZE, VERBOSE, COSTS OFF, TIMING OFF, FORMAT YAML) SELECT public.b6_ssn(1)",
        "EXPLAIN (VERBOSE, COSTS OFF) SELECT 1 FROM customers WHERE ssn = public.b6_ssn(1)",
    ];
    let plan_text = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> String {
        rows.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let direct = crate::common::direct().await;
    let proxy = ProxyBuilder::default()
        .policy("mask", MASK_SSN)
        .start()
        .await;
    let client = proxy.client().await;
    for sql in attempts {
        let d = plan_text(direct.simple_query(sql).await.expect(sql));
        assert!(
            d.contains(&clear),
            "6 {sql}: the direct plan shows no value: {d}"
        );
        let p = plan_text(client.simple_query(sql).await.expect(sql));
        assert!(!p.contains(&clear), "6 {sql}: {p}");
    }
    // Plans of statements over clear columns stay readable.
    let p = plan_text(
        client
            .simple_query("EXPLAIN SELECT id FROM customers WHERE id = 1")
            .await
            .expect("plain explain"),
    );
    assert!(p.contains("customers"), "{p}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_side_effects_of_masked_data_are_refused() {
    let shop = setup().await;
    let clear: String = shop
        .query_one("SELECT ssn FROM customers WHERE id = 1", &[])
        .await
        .expect("ssn")
        .get(0);
    let digits: String = clear.chars().filter(char::is_ascii_digit).collect();
    let last4 = digits[digits.len() - 4..]
        .trim_start_matches('0')
        .to_owned();
    let attempts = [
        (
            "8 count over a set-returning function of a masked value",
            "SELECT count(*)::text FROM generate_series(1, (SELECT right(regexp_replace(ssn, '[^0-9]', '', 'g'), 4)::int FROM customers WHERE id = 1))",
        ),
        (
            "8 row count of a lateral set-returning function",
            "SELECT count(*)::text FROM customers c, generate_series(1, right(regexp_replace(c.ssn, '[^0-9]', '', 'g'), 4)::int) g WHERE c.id = 1",
        ),
        (
            "9 advisory lock keyed by a masked value, read back from pg_locks",
            "SELECT pg_advisory_lock(right(regexp_replace(ssn, '[^0-9]', '', 'g'), 4)::bigint) FROM customers WHERE id = 1; SELECT objid::text FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        ),
    ];
    let last_value = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> String {
        rows.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .last()
            .unwrap_or_default()
    };
    let proxy = ProxyBuilder::default()
        .policy("mask", MASK_SSN)
        .start()
        .await;
    for (family, sql) in attempts {
        let direct = crate::common::direct().await;
        let d = last_value(direct.simple_query(sql).await.expect(family));
        assert_eq!(d, last4, "{family}: directly");
        let client = proxy.client().await;
        match client.simple_query(sql).await {
            Ok(rows) => {
                let p = last_value(rows);
                panic!("{family}: forwarded, returned {p:?}");
            }
            Err(e) => {
                let db = e.as_db_error().unwrap_or_else(|| panic!("{family}: {e:?}"));
                assert_eq!(
                    db.code(),
                    &SqlState::INSUFFICIENT_PRIVILEGE,
                    "{family}: {db:?}"
                );
                assert!(
                    db.message().contains("masked data"),
                    "{family}: {}",
                    db.message()
                );
            }
        }
    }
    proxy.stop().await;
}

/// What a query string answered: the first column of its last row, or `tag N` (the row count
/// of its last command) when it returned no row.
pub(crate) fn answer(messages: &[tokio_postgres::SimpleQueryMessage]) -> String {
    let row = messages.iter().rev().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
        _ => None,
    });
    row.unwrap_or_else(|| {
        messages
            .iter()
            .rev()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(format!("tag {n}")),
                _ => None,
            })
            .unwrap_or_default()
    })
}

/// The clear data the predicate attempts ask about, read on a direct connection.
struct Truth {
    ssn: String,
    email: String,
    card_id: i32,
    card: String,
    min_ssn_id: i32,
    first_digit_count: i64,
    distinct_ssns: i64,
}

impl Truth {
    async fn read(direct: &Client) -> Truth {
        let one = direct
            .query_one("SELECT ssn, email FROM customers WHERE id = 1", &[])
            .await
            .expect("customer 1");
        let card = direct
            .query_one(
                "SELECT id, card_number FROM customers WHERE card_number IS NOT NULL ORDER BY id LIMIT 1",
                &[],
            )
            .await
            .expect("a card");
        let mut all: Vec<(String, i32)> = direct
            .query("SELECT ssn, id FROM customers", &[])
            .await
            .expect("all")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        all.sort();
        let ssn: String = one.get(0);
        let first = ssn.chars().next().unwrap_or('0');
        let distinct: std::collections::BTreeSet<&String> = all.iter().map(|(s, _)| s).collect();
        Truth {
            first_digit_count: all.iter().filter(|(s, _)| s.starts_with(first)).count() as i64,
            distinct_ssns: distinct.len() as i64,
            min_ssn_id: all[0].1,
            ssn,
            email: one.get(1),
            card_id: card.get(0),
            card: card.get(1),
        }
    }

    /// `sql` and its expected answer with the clear values filled in.
    fn fill(&self, text: &str) -> String {
        let first = self.ssn.chars().next().unwrap_or('0').to_string();
        text.replace("{d}", &first)
            .replace("{ssn}", &self.ssn)
            .replace("{rest}", &self.ssn[3..])
            .replace("{email}", &self.email)
            .replace("{card_id}", &self.card_id.to_string())
            .replace("{card}", &self.card)
            .replace("{min_ssn_id}", &self.min_ssn_id.to_string())
            .replace("{first_digit_count}", &self.first_digit_count.to_string())
            .replace("{distinct_ssns}", &self.distinct_ssns.to_string())
    }
}

pub(crate) const PREDICATES: &str = "masking:
- name: national-id
  columns: [customers.ssn]
  strategy: redact
  predicates: equality
- name: contact
  columns: [customers.email]
  strategy: partial
  predicates: equality
- name: payment
  columns: [customers.card_number]
  strategy: redact
  predicates: deny
";

/// (what, statement, answer on a direct connection, column and mode the refusal names).
const PREDICATE_ATTEMPTS: &[(&str, &str, &str, &str)] = &[
    ("LIKE", "SELECT count(*)::text FROM customers WHERE id = 1 AND ssn LIKE '{d}%'", "1", "ssn"),
    ("ILIKE", "SELECT count(*)::text FROM customers WHERE id = 1 AND ssn ILIKE '{d}%'", "1", "ssn"),
    ("regular expression", "SELECT count(*)::text FROM customers WHERE id = 1 AND ssn ~ '^{d}'", "1", "ssn"),
    ("SIMILAR TO", "SELECT count(*)::text FROM customers WHERE id = 1 AND ssn SIMILAR TO '{d}%'", "1", "ssn"),
    ("range", "SELECT count(*)::text FROM customers WHERE id = 1 AND ssn BETWEEN '{d}' AND '{d}~'", "1", "ssn"),
    ("function over the column", "SELECT count(*)::text FROM customers WHERE id = 1 AND left(ssn, 1) = '{d}'", "1", "ssn"),
    ("hash compared with a guess", "SELECT count(*)::text FROM customers WHERE id = 1 AND md5(ssn) = md5('{ssn}')", "1", "ssn"),
    ("cast that truncates", "SELECT count(*)::text FROM customers WHERE id = 1 AND ssn::char(1) = '{d}'", "1", "ssn"),
    ("ORDER BY", "SELECT id::text FROM customers ORDER BY ssn, id LIMIT 1", "{min_ssn_id}", "ssn"),
    ("ORDER BY an ordinal in a derived table", "SELECT s.id::text FROM (SELECT id, ssn FROM customers ORDER BY 2, 1 LIMIT 1) s", "{min_ssn_id}", "ssn"),
    ("window ordering", "SELECT id::text FROM (SELECT id, row_number() OVER (ORDER BY ssn, id) AS r FROM customers) s WHERE r = 1", "{min_ssn_id}", "ssn"),
    ("GROUP BY", "SELECT count(*)::text FROM customers GROUP BY left(ssn, 1) HAVING left(max(ssn), 1) = '{d}'", "{first_digit_count}", "ssn"),
    ("DISTINCT ON", "SELECT count(*)::text FROM (SELECT DISTINCT ON (ssn) id FROM customers) d", "{distinct_ssns}", "ssn"),
    ("HAVING", "SELECT count(*)::text FROM customers WHERE id = 1 GROUP BY id HAVING max(ssn) = '{ssn}'", "1", "ssn"),
    ("FILTER (WHERE)", "SELECT (count(*) FILTER (WHERE ssn LIKE '{d}%'))::text FROM customers WHERE id = 1", "1", "ssn"),
    ("CASE in the select list", "SELECT sum(CASE WHEN ssn LIKE '{d}%' THEN 1 ELSE 0 END)::text FROM customers WHERE id = 1", "1", "ssn"),
    ("EXISTS subquery", "SELECT EXISTS (SELECT 1 FROM customers WHERE id = 1 AND ssn LIKE '{d}%')::text", "true", "ssn"),
    ("CTE", "WITH x AS (SELECT id FROM customers WHERE ssn LIKE '{d}%') SELECT count(*)::text FROM x WHERE id = 1", "1", "ssn"),
    ("LATERAL", "SELECT count(*)::text FROM (VALUES (1)) v(n), LATERAL (SELECT 1 FROM customers c WHERE c.id = v.n AND c.ssn LIKE '{d}%') l", "1", "ssn"),
    ("JOIN ON", "SELECT count(*)::text FROM customers c JOIN (VALUES (1)) v(n) ON c.id = v.n AND c.ssn LIKE '{d}%'", "1", "ssn"),
    ("view", "SELECT count(*)::text FROM public.b19_people WHERE id = 1 AND ssn LIKE '{d}%'", "1", "ssn"),
    ("equality with a generated column", "SELECT g.x FROM customers c JOIN (SELECT to_char(n, 'FM000') || '{rest}' AS x FROM generate_series(100, 999) n) g ON c.ssn = g.x WHERE c.id = 1", "{ssn}", "ssn"),
    ("equality with a scalar subquery", "SELECT count(*)::text FROM customers WHERE id = 1 AND ssn = (SELECT '{ssn}'::text)", "1", "ssn"),
    ("UPDATE row count", "UPDATE customers SET city = city WHERE id = 1 AND ssn LIKE '{d}%'", "tag 1", "ssn"),
    ("e-mail domain", "SELECT count(*)::text FROM customers WHERE id = 1 AND email LIKE '%' || split_part('{email}', '@', 2)", "1", "email"),
    ("INTERSECT ALL", "SELECT count(*)::text FROM (SELECT ssn FROM customers WHERE id = 1 INTERSECT ALL SELECT to_char(n, 'FM000') || '{rest}' FROM generate_series(100, 999) n) s", "1", "ssn"),
    ("EXCEPT ALL in a CTE", "WITH s AS (SELECT ssn FROM customers WHERE id = 1 EXCEPT ALL SELECT to_char(n, 'FM000') || '{rest}' FROM generate_series(100, 999) n) SELECT count(*)::text FROM s", "0", "ssn"),
    ("UNION in a scalar subquery", "SELECT (SELECT count(*) FROM (SELECT email FROM customers WHERE id = 1 UNION SELECT '{email}') u)::text", "1", "email"),
    ("SELECT DISTINCT over two columns", "SELECT count(*)::text FROM (SELECT DISTINCT 1 AS k, email FROM (SELECT email FROM customers WHERE id = 1 UNION ALL SELECT '{email}') u) d", "1", "email"),
    ("recursive CTE with UNION", "WITH RECURSIVE r(ssn) AS (SELECT ssn FROM customers WHERE id = 1 UNION SELECT '{ssn}' FROM r) SELECT count(*)::text FROM r", "1", "ssn"),
    ("deny: equality", "SELECT count(*)::text FROM customers WHERE id = {card_id} AND card_number = '{card}'", "1", "card_number"),
    ("deny: IS NOT NULL", "SELECT count(*)::text FROM customers WHERE id = {card_id} AND card_number IS NOT NULL", "1", "card_number"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predicates_on_masked_columns_follow_the_rule() {
    let shop = setup().await;
    shop.batch_execute(
        "CREATE OR REPLACE VIEW public.b19_people AS SELECT id, ssn FROM customers;
         GRANT SELECT ON public.b19_people TO app;
         GRANT UPDATE ON customers TO app;",
    )
    .await
    .expect("view");
    let direct = crate::common::direct().await;
    let truth = Truth::read(&direct).await;
    let proxy = ProxyBuilder::default()
        .policy("people", PREDICATES)
        .start()
        .await;
    let client = proxy.client().await;
    for (what, sql, expected, column) in PREDICATE_ATTEMPTS {
        let sql = truth.fill(sql);
        // Directly, the statement answers the question about the masked value.
        let d = direct
            .simple_query(&sql)
            .await
            .unwrap_or_else(|e| panic!("{what}: {sql} directly: {e:?}"));
        assert_eq!(answer(&d), truth.fill(expected), "{what}: directly");
        // Through the sidecar it is refused, naming the column and the mode.
        let err = match client.simple_query(&sql).await {
            Ok(rows) => panic!("{what}: forwarded, answered {:?}", answer(&rows)),
            Err(e) => e,
        };
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{what}: {err:?}"));
        assert_eq!(
            db.code(),
            &SqlState::INSUFFICIENT_PRIVILEGE,
            "{what}: {db:?}"
        );
        let mode = if *column == "card_number" {
            "deny"
        } else {
            "equality"
        };
        assert!(
            db.message().contains(column) && db.message().contains(&format!("predicates: {mode}")),
            "{what}: {}",
            db.message()
        );
    }
    // Looking a person up by e-mail keeps working, with parameters and literals, and the
    // e-mail itself still comes back masked.
    let by_param = client
        .query_one(
            "SELECT id, email FROM customers WHERE email = $1",
            &[&truth.email],
        )
        .await
        .expect("lookup by e-mail with a parameter");
    assert_eq!(by_param.get::<_, i32>(0), 1);
    assert_ne!(by_param.get::<_, String>(1), truth.email);
    for sql in [
        "SELECT id::text FROM customers WHERE email = '{email}'",
        "SELECT id::text FROM customers WHERE email IN ('{email}', 'nobody@example.com')",
        "SELECT c.id::text FROM customers c LEFT JOIN orders o ON o.customer_id = c.id WHERE c.email = '{email}' LIMIT 1",
        "UPDATE customers SET city = city WHERE email = '{email}' RETURNING id::text",
        "SELECT a.id::text FROM customers a JOIN customers b ON a.email = b.email WHERE a.id = 1",
        "SELECT id::text FROM customers WHERE ssn = '{ssn}' AND email IS NOT NULL",
    ] {
        let sql = truth.fill(sql);
        let rows = client
            .simple_query(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        assert_eq!(answer(&rows), "1", "{sql}");
    }
    // Under `deny`, the column still reads (masked) in the select list.
    let rows = client
        .simple_query(&truth.fill("SELECT card_number FROM customers WHERE id = {card_id}"))
        .await
        .expect("select list");
    assert_ne!(answer(&rows), truth.card);
    // The refusal is in the audit record, naming the masking rule.
    let refused = proxy
        .statements()
        .into_iter()
        .filter(|s| {
            s.decision == portcullis_crds::audit::Decision::Deny
                && s.rule.as_ref().is_some_and(|r| r.rule == "national-id")
        })
        .count();
    assert!(refused >= 20, "refusals recorded: {refused}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_values_carry_nothing_through_where_limit_and_tags() {
    let shop = setup().await;
    let clear: String = shop
        .query_one("SELECT ssn FROM customers WHERE id = 1", &[])
        .await
        .expect("ssn")
        .get(0);
    let digits: String = clear.chars().filter(char::is_ascii_digit).collect();
    let last4: u32 = digits[digits.len() - 4..].parse().expect("digits");
    let last3 = last4 % 1000;
    const DIGITS: &str = "right(regexp_replace(ssn, '[^0-9]', '', 'g'), 4)::int";
    let attempts = [
        (
            "8 LIMIT computed from a masked value",
            format!("SELECT count(*)::text FROM (SELECT 1 FROM generate_series(1, 10000) LIMIT (SELECT {DIGITS} FROM customers WHERE id = 1)) s"),
            last4.to_string(),
        ),
        (
            "8 OFFSET computed from a masked value",
            format!("SELECT count(*)::text FROM (SELECT 1 FROM generate_series(1, 10000) OFFSET (SELECT 10000 - {DIGITS} FROM customers WHERE id = 1)) s"),
            last4.to_string(),
        ),
        (
            "8 set-returning function in WHERE",
            format!("SELECT count(*)::text FROM generate_series(1, 10000) g WHERE g IN (SELECT generate_series(1, {DIGITS}) FROM customers WHERE id = 1)"),
            last4.to_string(),
        ),
        (
            "8 row count in the tag of an UPDATE",
            format!("UPDATE orders SET status = status WHERE id IN (SELECT generate_series(1, {DIGITS} % 1000) FROM customers WHERE id = 1)"),
            format!("tag {last3}"),
        ),
        (
            "9 advisory lock in WHERE, read back from pg_locks",
            format!("SELECT count(*) FROM customers WHERE id = 1 AND pg_advisory_lock({DIGITS}::bigint) IS NOT NULL; SELECT objid::text FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"),
            last4.to_string(),
        ),
        (
            "9 advisory lock of a hash in a JOIN condition",
            format!("SELECT count(*) FROM customers c JOIN (VALUES (1)) v(n) ON c.id = v.n AND pg_try_advisory_lock({DIGITS}); SELECT objid::text FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"),
            last4.to_string(),
        ),
        (
            "9 set_config in WHERE",
            format!("SELECT count(*) FROM customers WHERE id = 1 AND set_config('b19.x', {DIGITS}::text, false) IS NOT NULL; SELECT current_setting('b19.x')"),
            last4.to_string(),
        ),
        (
            "9 set_config in ORDER BY",
            format!("SELECT id FROM customers WHERE id = 1 ORDER BY set_config('b19.y', {DIGITS}::text, false); SELECT current_setting('b19.y')"),
            last4.to_string(),
        ),
        (
            "9 sequence advanced in HAVING",
            format!("SELECT setval('public.b19_seq', 1); SELECT count(*) FROM customers WHERE id = 1 GROUP BY id HAVING setval('public.b19_seq', max({DIGITS})) > 0; SELECT last_value::text FROM public.b19_seq"),
            last4.to_string(),
        ),
    ];
    shop.batch_execute(
        "CREATE SEQUENCE IF NOT EXISTS public.b19_seq;
         GRANT ALL ON SEQUENCE public.b19_seq TO app;
         GRANT UPDATE ON orders TO app;",
    )
    .await
    .expect("sequence");
    let proxy = ProxyBuilder::default()
        .policy("mask", MASK_SSN)
        .start()
        .await;
    for (family, sql, expected) in &attempts {
        let direct = crate::common::direct().await;
        let d = direct
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{family}: {e:?}"));
        assert_eq!(&answer(&d), expected, "{family}: directly");
        let client = proxy.client().await;
        match client.simple_query(sql).await {
            Ok(rows) => panic!("{family}: forwarded, answered {:?}", answer(&rows)),
            Err(e) => {
                let db = e.as_db_error().unwrap_or_else(|| panic!("{family}: {e:?}"));
                assert_eq!(
                    db.code(),
                    &SqlState::INSUFFICIENT_PRIVILEGE,
                    "{family}: {db:?}"
                );
                assert!(
                    db.message().contains("masked data"),
                    "{family}: {}",
                    db.message()
                );
            }
        }
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_names_built_from_masked_values_are_withheld() {
    let shop = setup().await;
    shop.batch_execute(
        "CREATE OR REPLACE FUNCTION public.b19_cursor(i int) RETURNS refcursor LANGUAGE plpgsql AS $$
           DECLARE c refcursor := 'b19cur'; v text;
           BEGIN SELECT ssn INTO v FROM customers WHERE id = i;
             OPEN c FOR EXECUTE format('SELECT 1 AS %I, 2 AS plain', v); RETURN c; END $$;",
    )
    .await
    .expect("function");
    let clear: String = shop
        .query_one("SELECT ssn FROM customers WHERE id = 1", &[])
        .await
        .expect("ssn")
        .get(0);
    let names = |rows: &[tokio_postgres::SimpleQueryMessage]| -> Vec<String> {
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::RowDescription(cols) => {
                    Some(cols.iter().map(|c| c.name().to_owned()).collect())
                }
                _ => None,
            })
            .unwrap_or_default()
    };
    const STEPS: [&str; 2] = [
        "BEGIN; SELECT public.b19_cursor(1)",
        "FETCH ALL FROM b19cur",
    ];
    let direct = crate::common::direct().await;
    direct.simple_query(STEPS[0]).await.expect("open directly");
    let d = direct.simple_query(STEPS[1]).await.expect("fetch directly");
    assert_eq!(
        names(&d),
        vec![clear.clone(), "plain".to_owned()],
        "5: directly"
    );
    let proxy = ProxyBuilder::default()
        .policy("mask", MASK_SSN)
        .start()
        .await;
    let client = proxy.client().await;
    client
        .simple_query(STEPS[0])
        .await
        .expect("open through the sidecar");
    // A cursor opened by server code runs a query the sidecar never saw: the FETCH is refused,
    // so no name of it reaches the client (a fetch that is forwarded gets `?column?` names).
    match client.simple_query(STEPS[1]).await {
        Ok(p) => {
            let seen = names(&p);
            assert!(!seen.contains(&clear), "5: column name {seen:?}");
            // The statement that reads the cursor did not write `plain` either.
            assert_eq!(seen, vec!["?column?".to_owned(), "?column?".to_owned()]);
        }
        Err(e) => {
            let db = e.as_db_error().expect("refusal");
            assert_eq!(db.code(), &SqlState::INSUFFICIENT_PRIVILEGE, "5: {db:?}");
            assert!(!db.message().contains(&clear), "5: {db:?}");
            client.simple_query("ROLLBACK").await.expect("rollback");
        }
    }
    // Names the client wrote stay.
    let rows = client
        .simple_query("SELECT ssn AS national_id, id AS \"Customer\" FROM customers WHERE id = 1")
        .await
        .expect("aliases");
    assert_eq!(
        names(&rows),
        vec!["national_id".to_owned(), "Customer".to_owned()]
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_hold_no_values_in_identifiers() {
    let proxy = crate::common::Proxy::plain().await;
    let client = proxy.client().await;
    let cases = [
        r#"SELECT 1 AS "dave.secret@example.com""#,
        r#"SELECT id AS "4111 1111 1111 1111" FROM customers WHERE id = 1"#,
        r#"SELECT 1 AS "+44 20 7946 0958""#,
        r#"SELECT * FROM "DE89370400440532013000""#,
    ];
    let direct = crate::common::direct().await;
    let rows = direct.simple_query(cases[0]).await.expect("alias directly");
    assert!(
        matches!(&rows[0], tokio_postgres::SimpleQueryMessage::RowDescription(c) if c[0].name() == "dave.secret@example.com")
    );
    for sql in cases {
        let _ = client.simple_query(sql).await;
    }
    drop(client);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let statements = proxy.statements();
    assert!(statements.len() >= cases.len(), "{statements:?}");
    let spool = serde_json::to_string(&proxy.records()).expect("records");
    for secret in ["dave.secret", "4111 1111", "7946", "DE8937"] {
        assert!(
            !spool.contains(secret),
            "12: {secret} reached the audit spool: {spool}"
        );
    }
    // The records keep the leading keyword, a length and a fingerprint.
    assert!(
        statements
            .iter()
            .filter_map(|s| s.statement.as_deref())
            .any(|s| s.starts_with("SELECT") && s.contains("fingerprint")),
        "{statements:?}"
    );
    proxy.stop().await;
}

pub(crate) const LEADS_LIMIT: &str = r#"guardrails:
- name: leads-export
  tables: [crm.leads]
  rowsOver: 40
  action: deny
"#;

/// Ways the 100 rows of `crm.leads` (limited to 40 per statement, portal or cursor) leave
/// other than a plain SELECT of the table; each step list returns more than 40 rows directly.
const ROW_CARRIERS: &[(&str, &[&str])] = &[
    ("3 view", &["SELECT * FROM crm.leads_view"]),
    ("3 view over a view", &["SELECT email FROM crm.leads_view2"]),
    ("3 set-returning function", &["SELECT * FROM crm.all_leads()"]),
    (
        "3 set-returning function in the select list",
        &["SELECT crm.all_leads()"],
    ),
    (
        "3 view created in the session",
        &[
            "CREATE TEMP VIEW b3_leads AS SELECT * FROM crm.leads",
            "SELECT * FROM b3_leads",
        ],
    ),
    (
        "3 prepared statement",
        &["PREPARE b3p AS SELECT * FROM crm.leads", "EXECUTE b3p"],
    ),
    (
        "3 cursor fetched in pieces",
        &[
            "BEGIN",
            "DECLARE b3c CURSOR FOR SELECT * FROM crm.leads",
            "FETCH 30 FROM b3c",
            "FETCH 30 FROM b3c",
        ],
    ),
    (
        "3 FETCH ALL repeated after MOVE",
        &[
            "BEGIN",
            "DECLARE b3s SCROLL CURSOR FOR SELECT * FROM crm.leads WHERE id <= 30",
            "FETCH ALL FROM b3s",
            "MOVE ABSOLUTE 0 IN b3s",
            "FETCH ALL FROM b3s",
        ],
    ),
    (
        "3 cursor over a view in one query string",
        &["BEGIN; DECLARE b3v CURSOR FOR SELECT * FROM crm.leads_view; FETCH 25 FROM b3v; FETCH 25 FROM b3v"],
    ),
    (
        "3 cursor held past its transaction",
        &[
            "BEGIN; DECLARE b3h CURSOR WITH HOLD FOR SELECT * FROM crm.leads; COMMIT",
            "FETCH 30 FROM b3h",
            "FETCH 30 FROM b3h",
        ],
    ),
];

fn rows_of(messages: &[tokio_postgres::SimpleQueryMessage]) -> usize {
    messages
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count()
}

fn assert_cut(family: &str, err: &tokio_postgres::Error) {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{family}: {err:?}"));
    assert_eq!(
        db.code(),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        "{family}: {db:?}"
    );
    // A query text that cannot be read is refused by its own rule before the limit's.
    assert!(
        db.message().contains("leads-export") || db.message().contains("builtin/query-text"),
        "{family}: {}",
        db.message()
    );
}

/// All rows a COPY TO STDOUT sends, or its error.
async fn copy_lines(client: &Client, sql: &str) -> Result<usize, tokio_postgres::Error> {
    use futures_util::StreamExt;
    let stream = client.copy_out(sql).await?;
    futures_util::pin_mut!(stream);
    let mut lines = 0;
    while let Some(chunk) = stream.next().await {
        lines += chunk?.iter().filter(|b| **b == b'\n').count();
    }
    Ok(lines)
}

/// All rows of `sql` read through one portal, 30 per Execute, or the error.
async fn portal_rows(client: &mut Client, sql: &str) -> Result<usize, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let statement = tx.prepare(sql).await?;
    let portal = tx.bind(&statement, &[]).await?;
    let mut total = 0;
    loop {
        let rows = tx.query_portal(&portal, 30).await?;
        if rows.is_empty() {
            break;
        }
        total += rows.len();
    }
    tx.rollback().await?;
    Ok(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_limits_count_every_way_rows_leave() {
    let _crm = CRM.lock().await;
    let _shop = setup().await;
    let proxy = ProxyBuilder::default()
        .credential(SUPERUSER, &admin_password())
        .policy("bypass", LEADS_LIMIT)
        .start()
        .await;
    for (family, steps) in ROW_CARRIERS {
        let direct = connect(&superuser_conn_str()).await;
        let mut rows = 0;
        for step in *steps {
            let m = direct
                .simple_query(step)
                .await
                .unwrap_or_else(|e| panic!("{family}: {step} fails directly: {e:?}"));
            rows += rows_of(&m);
        }
        assert!(rows > 40, "{family}: only {rows} rows directly");
        let client = proxy.client().await;
        let mut through = 0;
        let mut cut = None;
        for step in *steps {
            match client.simple_query(step).await {
                Ok(m) => through += rows_of(&m),
                Err(e) => {
                    cut = Some(e);
                    break;
                }
            }
        }
        let err = cut.unwrap_or_else(|| panic!("{family}: {through} rows through the sidecar"));
        assert_cut(family, &err);
        assert!(through <= 40, "{family}: {through} rows before the cut");
    }

    // COPY, text format: one line per row.
    for (family, sql) in [
        ("3 COPY of the table", "COPY crm.leads TO STDOUT"),
        (
            "3 COPY of a query over a view",
            "COPY (SELECT * FROM crm.leads_view) TO STDOUT (FORMAT csv)",
        ),
    ] {
        let direct = connect(&superuser_conn_str()).await;
        let lines = copy_lines(&direct, sql).await.expect(family);
        assert_eq!(lines, 100, "{family}: directly");
        let client = proxy.client().await;
        let err = copy_lines(&client, sql)
            .await
            .expect_err("COPY over the limit is cut");
        assert_cut(family, &err);
    }

    // One portal executed 30 rows at a time.
    let family = "3 portal executed in several Executes";
    let sql = "SELECT * FROM crm.leads";
    let mut direct = connect(&superuser_conn_str()).await;
    assert_eq!(portal_rows(&mut direct, sql).await.expect(family), 100);
    let mut client = proxy.client().await;
    let err = portal_rows(&mut client, sql)
        .await
        .expect_err("portal over the limit is cut");
    assert_cut(family, &err);

    // Under the limit, and other relations, nothing is cut.
    let client = proxy.client().await;
    for (sql, expected) in [
        ("SELECT * FROM crm.leads WHERE id <= 40", 40),
        ("SELECT * FROM generate_series(1, 100)", 100),
        (
            "SELECT * FROM crm.contacts_import, generate_series(1, 20)",
            100,
        ),
    ] {
        let m = client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        assert_eq!(rows_of(&m), expected, "{sql}");
    }
    proxy.stop().await;
}

/// Ways the 100 leads leave in fewer than 40 result rows: folded into one value, read by a
/// function from a name or a query string, or copied where the limit would not count them.
/// Each step list carries more than 40 lead e-mails directly.
const ROW_ESCAPES: &[(&str, &[&str])] = &[
    // Folds.
    ("3 fold: array_agg", &["SELECT array_to_string(array_agg(email), ',') FROM crm.leads"]),
    ("3 fold: jsonb_agg over a view", &["SELECT jsonb_agg(email)::text FROM crm.leads_view"]),
    ("3 fold: json_object_agg", &["SELECT json_object_agg(id, email)::text FROM crm.leads"]),
    ("3 fold: xmlagg", &["SELECT xmlagg(('<e>' || email || '</e>')::xml)::text FROM crm.leads"]),
    ("3 fold: ARRAY(subquery)", &["SELECT ARRAY(SELECT email FROM crm.leads)::text"]),
    (
        "3 fold: string_agg in a scalar subquery of a CTE",
        &["WITH s AS (SELECT (SELECT string_agg(email, ',') FROM crm.leads) AS a) SELECT a FROM s"],
    ),
    (
        "3 fold: string_agg as a window function, one row kept",
        &["SELECT string_agg(email, ',') OVER () FROM crm.leads LIMIT 1"],
    ),
    (
        "3 fold: lead() puts other rows on each row",
        &["SELECT * FROM (SELECT id, email, lead(email, 1) OVER (ORDER BY id) AS n1, lead(email, 2) OVER (ORDER BY id) AS n2 FROM crm.leads) s WHERE id % 3 = 1"],
    ),
    (
        "3 fold: max() over a one-row frame",
        &["SELECT * FROM (SELECT id, email, max(email) OVER (ORDER BY id ROWS BETWEEN 1 FOLLOWING AND 1 FOLLOWING) AS n1, max(email) OVER (ORDER BY id ROWS BETWEEN 2 FOLLOWING AND 2 FOLLOWING) AS n2 FROM crm.leads) s WHERE id % 3 = 1"],
    ),
    (
        "3 fold: recursive CTE accumulating rows",
        &["WITH RECURSIVE r(i, s) AS (SELECT 0, ''::text UNION ALL SELECT i + 1, s || (SELECT email FROM crm.leads WHERE id = i + 1) || ',' FROM r WHERE i < 100) SELECT s FROM r WHERE i = 100"],
    ),
    (
        "3 fold: user-defined aggregate",
        &["SELECT crm.b19_concat(email || ',') FROM crm.leads"],
    ),
    (
        "3 fold: prepared, then executed",
        &["PREPARE b19f AS SELECT string_agg(email, ',') FROM crm.leads", "EXECUTE b19f"],
    ),
    (
        "3 fold: cursor over an aggregate",
        &[
            "BEGIN",
            "DECLARE b19c CURSOR FOR SELECT string_agg(email, ',') FROM crm.leads",
            "FETCH ALL FROM b19c",
        ],
    ),
    (
        "3 fold written into one row of the limited table, read back",
        &[
            "BEGIN",
            "UPDATE crm.leads SET email = (SELECT string_agg(email, ',') FROM crm.leads) WHERE id = 1",
            "SELECT email FROM crm.leads WHERE id = 1",
            "ROLLBACK",
        ],
    ),
    // Readers by name or query string.
    (
        "3 reader: table_to_xml_and_xmlschema",
        &["SELECT table_to_xml_and_xmlschema('crm.leads', true, false, '')::text"],
    ),
    (
        "3 reader: schema_to_xml",
        &["SELECT schema_to_xml('crm', true, false, '')::text"],
    ),
    (
        "3 reader: query_to_xml with a computed query string",
        &["SELECT query_to_xml('SELECT * FROM crm.' || 'leads', true, false, '')::text"],
    ),
    (
        "3 reader: query_to_xml in FROM",
        &["SELECT x::text FROM query_to_xml('SELECT email FROM crm.leads_view', true, false, '') x"],
    ),
    (
        "3 reader: cursor_to_xml of an open cursor",
        &[
            "BEGIN",
            "DECLARE b19x CURSOR FOR SELECT * FROM crm.leads",
            "SELECT cursor_to_xml('b19x', 100, true, false, '')::text",
        ],
    ),
    // Copies read back in pieces.
    (
        "3 copy: SELECT INTO a temporary table",
        &[
            "SELECT * INTO TEMP b19_into FROM crm.leads",
            "SELECT * FROM b19_into WHERE id <= 35",
            "SELECT * FROM b19_into WHERE id > 35 AND id <= 70",
            "SELECT * FROM b19_into WHERE id > 70",
        ],
    ),
    (
        "3 copy: INSERT ... SELECT into a temporary table",
        &[
            "CREATE TEMP TABLE b19_ins (id int, email text)",
            "INSERT INTO b19_ins SELECT id, email FROM crm.leads_view",
            "SELECT * FROM b19_ins WHERE id <= 35",
            "SELECT * FROM b19_ins WHERE id > 35 AND id <= 70",
            "SELECT * FROM b19_ins WHERE id > 70",
        ],
    ),
    (
        "3 copy: data-modifying CTE",
        &[
            "CREATE TEMP TABLE b19_cte (id int, email text)",
            "WITH w AS (INSERT INTO b19_cte SELECT * FROM crm.leads RETURNING 1) SELECT count(*) FROM w",
            "SELECT * FROM b19_cte WHERE id <= 35",
            "SELECT * FROM b19_cte WHERE id > 35 AND id <= 70",
            "SELECT * FROM b19_cte WHERE id > 70",
        ],
    ),
    (
        "3 copy: prepared INSERT ... SELECT",
        &[
            "CREATE TEMP TABLE b19_prep (id int, email text)",
            "PREPARE b19i AS INSERT INTO b19_prep SELECT * FROM crm.leads",
            "EXECUTE b19i",
            "SELECT * FROM b19_prep WHERE id <= 35",
            "SELECT * FROM b19_prep WHERE id > 35 AND id <= 70",
            "SELECT * FROM b19_prep WHERE id > 70",
        ],
    ),
    (
        "3 copy: EXPLAIN ANALYZE CREATE TABLE AS",
        &[
            "EXPLAIN ANALYZE CREATE TEMP TABLE b19_exp AS SELECT * FROM crm.leads",
            "SELECT * FROM b19_exp WHERE id <= 35",
            "SELECT * FROM b19_exp WHERE id > 35 AND id <= 70",
            "SELECT * FROM b19_exp WHERE id > 70",
        ],
    ),
    (
        "3 copy: UPDATE ... FROM into a temporary table",
        &[
            "CREATE TEMP TABLE b19_upd AS SELECT g AS id, ''::text AS email FROM generate_series(1, 100) g",
            "UPDATE b19_upd u SET email = l.email FROM crm.leads l WHERE l.id = u.id",
            "SELECT * FROM b19_upd WHERE id <= 35",
            "SELECT * FROM b19_upd WHERE id > 35 AND id <= 70",
            "SELECT * FROM b19_upd WHERE id > 70",
        ],
    ),
    (
        "3 copy: materialized view",
        &[
            "BEGIN",
            "CREATE MATERIALIZED VIEW crm.b19_mv AS SELECT * FROM crm.leads",
            "SELECT * FROM crm.b19_mv WHERE id <= 35",
            "SELECT * FROM crm.b19_mv WHERE id > 35 AND id <= 70",
            "SELECT * FROM crm.b19_mv WHERE id > 70",
            "ROLLBACK",
        ],
    ),
];

/// How many distinct lead e-mails a text holds (`lead1@` is not counted in `lead10@`).
fn distinct_leads(text: &str) -> usize {
    (1..=100)
        .filter(|i| {
            let e = format!("lead{i}@example.com");
            text.match_indices(&e)
                .any(|(at, _)| !text[at + e.len()..].starts_with(|c: char| c.is_ascii_digit()))
        })
        .count()
}

/// How many distinct lead e-mails the rows and errors of a step list carry, and the first
/// error (the steps stop there).
async fn leads_carried(client: &Client, steps: &[&str]) -> (usize, Option<tokio_postgres::Error>) {
    let mut text = String::new();
    for step in steps {
        match client.simple_query(step).await {
            Ok(messages) => {
                for m in &messages {
                    if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                        for i in 0..r.len() {
                            text.push_str(r.get(i).unwrap_or(""));
                            text.push('\n');
                        }
                    }
                }
            }
            Err(e) => {
                text.push_str(&error_text(&e));
                return (distinct_leads(&text), Some(e));
            }
        }
    }
    (distinct_leads(&text), None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_limits_refuse_rows_folded_read_by_name_or_copied() {
    let _crm = CRM.lock().await;
    let shop = setup().await;
    shop.batch_execute(
        "CREATE OR REPLACE AGGREGATE crm.b19_concat(text) (sfunc = textcat, stype = text, initcond = '');
         DROP MATERIALIZED VIEW IF EXISTS crm.b19_mv;",
    )
    .await
    .expect("aggregate");
    let proxy = ProxyBuilder::default()
        .credential(SUPERUSER, &admin_password())
        .policy("bypass", LEADS_LIMIT)
        .start()
        .await;
    for (family, steps) in ROW_ESCAPES {
        let direct = connect(&superuser_conn_str()).await;
        let (n, err) = leads_carried(&direct, steps).await;
        assert!(err.is_none(), "{family}: fails directly: {err:?}");
        assert!(n > 40, "{family}: only {n} leads directly");
        let client = proxy.client().await;
        let (n, err) = leads_carried(&client, steps).await;
        let err = err.unwrap_or_else(|| panic!("{family}: {n} leads through the sidecar"));
        assert_cut(family, &err);
        assert!(n <= 40, "{family}: {n} leads before the refusal");
    }
    // Summaries, ranking, other tables and writes into the limited table itself still run.
    let client = proxy.client().await;
    for sql in [
        "SELECT count(*), max(email), min(id), avg(id), sum(id) FROM crm.leads",
        "SELECT id, row_number() OVER (ORDER BY id), count(*) OVER () FROM crm.leads WHERE id <= 10",
        "SELECT email FROM crm.leads WHERE id <= 20 UNION ALL SELECT email FROM crm.leads_view WHERE id > 80",
        "SELECT string_agg(name, ',') FROM crm.contacts_import",
        "CREATE TEMP TABLE b19_other AS SELECT * FROM crm.contacts_import",
        "BEGIN; UPDATE crm.leads SET email = email WHERE id = 1; INSERT INTO crm.leads SELECT id + 1000, email FROM crm.leads WHERE id = 2; ROLLBACK",
    ] {
        client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    proxy.stop().await;
}

/// Free text under detector rules: the detectors keep the text readable and mask what they
/// find in the column's own values.
const NOTES_POLICY: &str = "masking:
- name: notes-email
  columns: [crm.b10_notes.notes]
  detector: email
  strategy: redact
- name: notes-iban
  columns: [crm.b10_notes.notes]
  detector: iban
  strategy: redact
- name: notes-card
  columns: [crm.b10_notes.notes]
  detector: paymentCard
  strategy: redact
";

const NOTE: &str = "Call alice.notes@example.com, pay to DE89 3704 0044 0532 0130 00, \
                    card 4111 1111 1111 1111";
/// The personal values in `NOTE`, letters and digits only.
const NOTE_SECRETS: &[&str] = &[
    "alicenotesexamplecom",
    "de89370400440532013000",
    "4111111111111111",
];

fn alnum_lower(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The secrets `text` still gives away once `undo` reverses the transform.
fn secrets_in(text: &str, undo: fn(&str) -> String) -> Vec<&'static str> {
    let plain = alnum_lower(&undo(text));
    NOTE_SECRETS
        .iter()
        .copied()
        .filter(|s| plain.contains(s))
        .collect()
}

fn same(s: &str) -> String {
    s.to_owned()
}

fn unbase64(s: &str) -> String {
    use base64::Engine;
    let compact: String = s.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Variant, query, and how to undo its transform.
type Transform = (&'static str, &'static str, fn(&str) -> String);

/// Reversible transforms of a free-text column.
const TRANSFORMS: &[Transform] = &[
    (
        "replace",
        "SELECT replace(notes, '@', ' at ') FROM crm.b10_notes WHERE id = 1",
        |s| s.replace(" at ", "@"),
    ),
    (
        "reverse",
        "SELECT reverse(notes) FROM crm.b10_notes WHERE id = 1",
        |s| s.chars().rev().collect(),
    ),
    (
        "translate",
        "SELECT translate(notes, '@0123456789', 'ZKQRSTUVWXY') FROM crm.b10_notes WHERE id = 1",
        |s| {
            s.chars()
                .map(|c| match "KQRSTUVWXY".find(c) {
                    Some(d) => char::from(b'0' + d as u8),
                    None if c == 'Z' => '@',
                    None => c,
                })
                .collect()
        },
    ),
    (
        "upper",
        "SELECT upper(notes) FROM crm.b10_notes WHERE id = 1",
        same,
    ),
    (
        "regexp_replace between digits",
        r"SELECT regexp_replace(notes, '(\d)', '\1-', 'g') FROM crm.b10_notes WHERE id = 1",
        same,
    ),
    (
        "overlay",
        "SELECT overlay(notes placing '#' from position('@' in notes) for 1) FROM crm.b10_notes WHERE id = 1",
        |s| s.replace('#', "@"),
    ),
    (
        "substr pieces re-joined",
        "SELECT substr(notes, 1, 16) || '|' || substr(notes, 17) FROM crm.b10_notes WHERE id = 1",
        same,
    ),
    (
        "base64 of the bytes",
        "SELECT encode(convert_to(notes, 'UTF8'), 'base64') FROM crm.b10_notes WHERE id = 1",
        unbase64,
    ),
    (
        "characters split and re-joined",
        "SELECT array_to_string(regexp_split_to_array(notes, ''), ' ') FROM crm.b10_notes WHERE id = 1",
        same,
    ),
    (
        "digit groups re-joined",
        "SELECT regexp_replace(notes, '[^0-9A-Za-z@.]', '', 'g') FROM crm.b10_notes WHERE id = 1",
        same,
    ),
    (
        "JSON of the row",
        "SELECT row_to_json(n)::text FROM crm.b10_notes n WHERE id = 1",
        same,
    ),
    (
        "a view that reverses",
        "SELECT r FROM crm.b10_reversed WHERE id = 1",
        |s| s.chars().rev().collect(),
    ),
    (
        "a table written from a transform",
        "INSERT INTO crm.b10_copy SELECT id, reverse(notes) FROM crm.b10_notes WHERE id = 1; \
         SELECT r FROM crm.b10_copy WHERE id = 1",
        |s| s.chars().rev().collect(),
    ),
];

fn last_text(rows: &[tokio_postgres::SimpleQueryMessage]) -> String {
    rows.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .last()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transforms_of_detector_columns_are_redacted() {
    let shop = setup().await;
    shop.batch_execute(&format!(
        "DROP TABLE IF EXISTS crm.b10_notes CASCADE;
         DROP TABLE IF EXISTS crm.b10_copy;
         CREATE TABLE crm.b10_notes (id int PRIMARY KEY, notes text);
         INSERT INTO crm.b10_notes VALUES (1, '{NOTE}');
         CREATE VIEW crm.b10_reversed AS SELECT id, reverse(notes) AS r FROM crm.b10_notes;
         CREATE TABLE crm.b10_copy (id int, r text);"
    ))
    .await
    .expect("notes table");
    let proxy = ProxyBuilder::default()
        .credential(SUPERUSER, &admin_password())
        .policy("notes", NOTES_POLICY)
        .start()
        .await;
    let direct = connect(&superuser_conn_str()).await;
    let client = proxy.client().await;
    for (variant, sql, undo) in TRANSFORMS {
        shop.batch_execute("DELETE FROM crm.b10_copy")
            .await
            .expect("empty copy");
        let d = last_text(&direct.simple_query(sql).await.expect(sql));
        assert_eq!(
            secrets_in(&d, *undo),
            NOTE_SECRETS.to_vec(),
            "10 {variant}: a direct connection gives the values away: {d}"
        );
        shop.batch_execute("DELETE FROM crm.b10_copy")
            .await
            .expect("empty copy");
        match client.simple_query(sql).await {
            Ok(rows) => {
                let p = last_text(&rows);
                assert!(
                    secrets_in(&p, *undo).is_empty(),
                    "10 {variant}: through the sidecar: {p}"
                );
            }
            // Refused (a set-returning function of masked data) is safe too.
            Err(e) => assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e:?}"),
        }
    }
    // The column itself stays readable text with the values masked in place.
    let p = last_text(
        &client
            .simple_query("SELECT notes FROM crm.b10_notes WHERE id = 1")
            .await
            .expect("notes"),
    );
    assert!(p.starts_with("Call ") && p.contains(", pay to "), "{p}");
    assert!(secrets_in(&p, same).is_empty(), "10 plain column: {p}");
    proxy.stop().await;
}

/// Masked data copied into a table by one session, as another session sees that table.
struct Blinding {
    pub(crate) family: &'static str,
    /// Run by the writing session, one query string each (errors are expected in some);
    /// `{t}` is the variant's own table.
    pub(crate) steps: &'static [&'static str],
    /// Through the sidecar, another session sees row 0's `full_name` and `ssn` in clear.
    clear: (bool, bool),
}

const BLINDINGS: &[Blinding] = &[
    Blinding {
        family: "11 rolled back",
        steps: &[
            "BEGIN",
            "INSERT INTO {t} SELECT id, full_name, ssn FROM customers WHERE id = 1",
            "ROLLBACK",
        ],
        clear: (true, true),
    },
    Blinding {
        family: "11 failed statement",
        steps: &["INSERT INTO {t} SELECT 0, full_name, ssn FROM customers WHERE id = 1"],
        clear: (true, true),
    },
    Blinding {
        family: "11 failure later in the same query string",
        steps: &[
            "INSERT INTO {t} SELECT id, full_name, ssn FROM customers WHERE id = 1; \
                  INSERT INTO {t} VALUES (0, 'again', 'again')",
        ],
        clear: (true, true),
    },
    Blinding {
        family: "11 failed transaction committed",
        steps: &[
            "BEGIN",
            "INSERT INTO {t} SELECT id, full_name, ssn FROM customers WHERE id = 1",
            "SELECT 1/0",
            "COMMIT",
        ],
        clear: (true, true),
    },
    Blinding {
        family: "11 rolled back to a savepoint",
        steps: &[
            "BEGIN",
            "SAVEPOINT s",
            "INSERT INTO {t} SELECT id, full_name, ssn FROM customers WHERE id = 1",
            "ROLLBACK TO SAVEPOINT s",
            "COMMIT",
        ],
        clear: (true, true),
    },
    Blinding {
        family: "11 transaction still open",
        steps: &[
            "BEGIN",
            "UPDATE {t} SET ssn = (SELECT ssn FROM customers WHERE id = 1) WHERE id = 0",
        ],
        clear: (true, true),
    },
    Blinding {
        family: "11 committed: only the written column",
        steps: &[
            "BEGIN",
            "UPDATE {t} SET ssn = (SELECT ssn FROM customers WHERE id = 1) WHERE id = 0",
            "COMMIT",
        ],
        clear: (true, false),
    },
    Blinding {
        family: "11 committed in autocommit, another column",
        steps: &[
            "UPDATE {t} SET full_name = (SELECT ssn FROM customers WHERE id = 1) WHERE id = 0",
        ],
        clear: (false, true),
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_cannot_blind_the_others() {
    let shop = setup().await;
    let table = |i: usize| format!("crm.b11_{i}");
    let make = |t: &str| {
        format!(
            "DROP TABLE IF EXISTS {t};
             CREATE TABLE {t} (id int PRIMARY KEY, full_name text, ssn text);
             INSERT INTO {t} VALUES (0, 'Clear Name', '000-00-0000');"
        )
    };
    for i in 0..=BLINDINGS.len() {
        shop.batch_execute(&make(&table(i)))
            .await
            .expect("copy table");
    }
    let (name, ssn): (String, String) = {
        let r = shop
            .query_one("SELECT full_name, ssn FROM customers WHERE id = 1", &[])
            .await
            .expect("customer");
        (r.get(0), r.get(1))
    };
    let read_of = |t: &str| format!("SELECT full_name, ssn FROM {t} WHERE id = 0");
    let row0 = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> (String, String) {
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                    r.get(0).unwrap_or_default().to_owned(),
                    r.get(1).unwrap_or_default().to_owned(),
                )),
                _ => None,
            })
            .expect("row 0")
    };
    let proxy = ProxyBuilder::default()
        .credential(SUPERUSER, &admin_password())
        .policy("mask", MASK_SSN)
        .start()
        .await;
    let direct = connect(&superuser_conn_str()).await;
    for (i, b) in BLINDINGS.iter().enumerate() {
        let t = table(i);
        let read = read_of(&t);
        let read = read.as_str();
        let writer = proxy.client().await;
        let reader = proxy.client().await;
        // The reader's own customers row stays clear before and after.
        let before = row0(reader.simple_query(read).await.expect(read));
        assert_eq!(
            before,
            ("Clear Name".into(), "000-00-0000".into()),
            "{}",
            b.family
        );
        for step in b.steps {
            let _ = writer.simple_query(&step.replace("{t}", &t)).await;
        }
        // What the table holds now, directly.
        let held = row0(direct.simple_query(read).await.expect(read));
        let seen = row0(reader.simple_query(read).await.expect(read));
        let fresh = row0(proxy.client().await.simple_query(read).await.expect(read));
        for (who, got) in [("the reader", &seen), ("a new session", &fresh)] {
            assert_eq!(
                got.0 == held.0,
                b.clear.0,
                "{}: {who} sees full_name {:?}, the table holds {:?}",
                b.family,
                got.0,
                held.0
            );
            assert_eq!(
                got.1 == held.1,
                b.clear.1,
                "{}: {who} sees ssn {:?}, the table holds {:?}",
                b.family,
                got.1,
                held.1
            );
        }
        // A masked value copied and committed is in the table in clear (a direct connection
        // reads it) and masked through the sidecar.
        if !b.clear.1 {
            assert_eq!(held.1, ssn, "{}", b.family);
        }
        if !b.clear.0 {
            assert_eq!(held.0, ssn, "{}", b.family);
        }
        // Customers' clear columns stay clear for everyone.
        let n = last_text(
            &reader
                .simple_query("SELECT full_name FROM customers WHERE id = 1")
                .await
                .expect("name"),
        );
        assert_eq!(n, name, "{}", b.family);
    }

    // The mark expires with the data: dropping the table (and making a new one of the same
    // name) clears it once the catalog is read again.
    let t = table(BLINDINGS.len());
    let read = read_of(&t);
    let read = read.as_str();
    let writer = proxy.client().await;
    writer
        .simple_query(&format!(
            "UPDATE {t} SET ssn = (SELECT ssn FROM customers WHERE id = 1) WHERE id = 0"
        ))
        .await
        .expect("copy");
    let reader = proxy.client().await;
    assert_ne!(row0(reader.simple_query(read).await.expect(read)).1, ssn);
    assert_eq!(row0(direct.simple_query(read).await.expect(read)).1, ssn);
    writer
        .batch_execute(&make(&t))
        .await
        .expect("drop and create");
    let mut cleared = false;
    for _ in 0..50 {
        if row0(reader.simple_query(read).await.expect(read)).1 == "000-00-0000" {
            cleared = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(cleared, "11: the mark outlived the dropped table");
    proxy.stop().await;
}
