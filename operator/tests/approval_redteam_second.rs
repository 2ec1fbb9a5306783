//! Red team, second round (r33) against issue 33: a write a guardrail holds runs only after a
//! named human approves it. The first round (`approval_redteam.rs`) covered other statements in
//! the same string, cursors, redefined functions, triggers on the guarded table, views, SQL
//! PREPARE, floods and hidden characters. This round tries code the server runs on its own,
//! without the agent's statement naming the guarded table or any function: referential actions
//! of a foreign key the agent adds, table inheritance, rewrite rules, column defaults and check
//! constraints, operators and COPY. Each attack runs first on a direct connection inside a
//! transaction that is rolled back (it changes `customers` there), then through the sidecar,
//! also in a rolled-back transaction, where `customers` must not change without an approval.
//! The setup (the `world` fixture and its helpers) is shared with `approval_redteam.rs`.
#![allow(dead_code)]

mod common;

#[path = "common/approval_world.rs"]
mod approval_world;
use approval_world::*;

use portcullis_e2e::{harness, User};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

/// What came of one statement through the sidecar: every request it made is denied.
async fn attempt(env: &Env, client: &Arc<Client>, sql: &str) -> (String, Option<String>) {
    let known = names(&env.api).await;
    let task = run(client, sql);
    let mut denied = Vec::new();
    for _ in 0..100 {
        if task.is_finished() {
            break;
        }
        for name in names(&env.api).await {
            if !known.contains(&name) && !denied.contains(&name) {
                let _ = env.decide("deny", &name, "refused by the second attack table");
                denied.push(name);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = if denied.is_empty() {
        ""
    } else {
        "held, denied; "
    };
    match tokio::time::timeout(Duration::from_secs(40), task).await {
        Ok(Ok(Ok(m))) => (format!("{held}ran"), first_value(&m)),
        Ok(Ok(Err(e))) => (format!("{held}refused: {}", pg_message(&e)), None),
        other => (format!("{held}{other:?}"), None),
    }
}

/// The attack `steps` then `check` (the number of `customers` rows changed) on the direct
/// connection, in a transaction rolled back.
async fn on_direct(direct: &Client, steps: &[&str], check: &str) -> Result<i64, String> {
    direct
        .simple_query("BEGIN")
        .await
        .map_err(|e| pg_message(&e))?;
    let mut out = Ok(0);
    for s in steps {
        if let Err(e) = direct.simple_query(s).await {
            out = Err(format!("{s}: {}", pg_message(&e)));
            break;
        }
    }
    if out.is_ok() {
        out = match direct.simple_query(check).await {
            Ok(m) => Ok(first_value(&m).and_then(|v| v.parse().ok()).unwrap_or(-1)),
            Err(e) => Err(pg_message(&e)),
        };
    }
    let _ = direct.simple_query("ROLLBACK").await;
    out
}

/// The same through the sidecar (every request denied): `Ok` when `customers` did not change.
async fn through_sidecar(w: &World, steps: &[&str], check: &str) -> Result<String, String> {
    let c = connect(w.pg_port).await;
    let mut log = Vec::new();
    let _ = c.simple_query("BEGIN").await;
    for s in steps {
        let (what, _) = attempt(&w.env, &c, s).await;
        log.push(format!(
            "[{}] {what}",
            s.chars().take(40).collect::<String>()
        ));
    }
    let (what, value) = attempt(&w.env, &c, check).await;
    let _ = c.simple_query("ROLLBACK").await;
    let changed: i64 = value.and_then(|v| v.parse().ok()).unwrap_or(0);
    let log = log.join("; ");
    if changed > 0 {
        Err(format!(
            "{changed} customers rows changed without an approval; {log}; check {what}"
        ))
    } else {
        Ok(format!("customers unchanged; {log}; check {what}"))
    }
}

/// One attack: shown on the direct connection, then asserted safe through the sidecar.
async fn attack(w: &World, t: &mut Table, family: &'static str, steps: &[&str], check: &str) {
    match on_direct(&w.direct_pg, steps, check).await {
        Ok(n) if n > 0 => t.row(
            family,
            "direct PostgreSQL (baseline)",
            steps.last().copied().unwrap_or_default(),
            Ok(format!("{n} customers rows changed")),
        ),
        other => t.row(
            family,
            "direct PostgreSQL (baseline)",
            steps.last().copied().unwrap_or_default(),
            Err(format!(
                "the attack does not work without the sidecar: {other:?}"
            )),
        ),
    }
    let result = through_sidecar(w, steps, check).await;
    t.row(
        family,
        AGENT_SQL,
        steps.last().copied().unwrap_or_default(),
        result,
    );
}

const PWNED: &str = "SELECT count(*) FROM customers WHERE city = 'pwned'";

/// A function the analysis cannot see into: its body builds the guarded statement at run time.
const OPAQUE_FN: &str = "CREATE FUNCTION rt2_pwn() RETURNS integer LANGUAGE plpgsql AS \
    $$BEGIN EXECUTE 'UPDATE cust' || 'omers SET city = ''pwned'' WHERE id > 0'; RETURN 1; END$$";

/// A function with a body the analysis reads, harmless.
const HARMLESS_FN: &str = "CREATE FUNCTION rt2_h() RETURNS integer LANGUAGE sql AS 'SELECT 1'";
/// The same function redefined with a body nothing can see into, that updates customers.
const REDEFINED_FN: &str =
    "CREATE OR REPLACE FUNCTION rt2_h() RETURNS integer LANGUAGE plpgsql AS \
    $$BEGIN EXECUTE 'UPDATE cust' || 'omers SET city = ''pwned'' WHERE id > 0'; RETURN 1; END$$";

fn family_steps(family: &str) -> (Vec<&'static str>, &'static str) {
    match family {
        "fk on update cascade" => (
            vec![
                "CREATE TABLE rt2_cities (name text PRIMARY KEY)",
                "INSERT INTO rt2_cities VALUES ('Berlin')",
                "ALTER TABLE customers ADD CONSTRAINT rt2_fk FOREIGN KEY (city) \
                 REFERENCES rt2_cities (name) ON UPDATE CASCADE NOT VALID",
                "UPDATE rt2_cities SET name = 'pwned' WHERE name = 'Berlin'",
            ],
            PWNED,
        ),
        "fk on delete set default" => (
            vec![
                "CREATE TABLE rt2_cities (name text PRIMARY KEY)",
                "INSERT INTO rt2_cities VALUES ('Berlin'), ('pwned')",
                "ALTER TABLE customers ALTER COLUMN city SET DEFAULT 'pwned'",
                "ALTER TABLE customers ADD CONSTRAINT rt2_fk FOREIGN KEY (city) \
                 REFERENCES rt2_cities (name) ON DELETE SET DEFAULT NOT VALID",
                "DELETE FROM rt2_cities WHERE name = 'Berlin'",
            ],
            PWNED,
        ),
        "inheritance parent" => (
            vec![
                "CREATE TABLE rt2_parent (LIKE customers)",
                "ALTER TABLE customers INHERIT rt2_parent",
                "UPDATE rt2_parent SET city = 'pwned' WHERE id > 0",
            ],
            PWNED,
        ),
        "rewrite rule" => (
            vec![
                "CREATE TABLE rt2_log (x integer)",
                "CREATE RULE rt2_rule AS ON INSERT TO rt2_log DO ALSO \
                 UPDATE customers SET city = 'pwned' WHERE id > 0",
                "INSERT INTO rt2_log VALUES (1)",
            ],
            PWNED,
        ),
        "trigger on another table" => (
            vec![
                "CREATE TABLE rt2_log (x integer)",
                "CREATE FUNCTION rt2_tf() RETURNS trigger LANGUAGE plpgsql AS \
                 $$BEGIN UPDATE customers SET city = 'pwned' WHERE id > 0; RETURN NEW; END$$",
                "CREATE TRIGGER rt2_t AFTER INSERT ON rt2_log FOR EACH ROW EXECUTE FUNCTION rt2_tf()",
                "INSERT INTO rt2_log VALUES (1)",
            ],
            PWNED,
        ),
        "opaque function called" => (vec![OPAQUE_FN, "SELECT rt2_pwn()"], PWNED),
        "column default" => (
            vec![
                OPAQUE_FN,
                "CREATE TABLE rt2_log (x integer, y integer DEFAULT rt2_pwn())",
                "INSERT INTO rt2_log (x) VALUES (1)",
            ],
            PWNED,
        ),
        "check constraint" => (
            vec![
                OPAQUE_FN,
                "CREATE TABLE rt2_log (x integer CHECK (x < rt2_pwn() + 10))",
                "INSERT INTO rt2_log (x) VALUES (1)",
            ],
            PWNED,
        ),
        "operator" => (
            vec![
                "CREATE FUNCTION rt2_op(integer, integer) RETURNS integer LANGUAGE plpgsql AS \
                 $$BEGIN EXECUTE 'UPDATE cust' || 'omers SET city = ''pwned'' WHERE id > 0'; \
                 RETURN 1; END$$",
                "CREATE OPERATOR ### (LEFTARG = integer, RIGHTARG = integer, FUNCTION = rt2_op)",
                "SELECT 1 ### 1",
            ],
            PWNED,
        ),
        "type input function" => (
            vec![
                OPAQUE_FN,
                "CREATE DOMAIN rt2_dom AS integer CHECK (VALUE < rt2_pwn() + 10)",
                "SELECT 1::rt2_dom",
            ],
            PWNED,
        ),
        "operator shadowing a built-in" => (
            vec![
                "CREATE FUNCTION rt2_op(integer, integer) RETURNS integer LANGUAGE plpgsql AS \
                 $$BEGIN EXECUTE 'UPDATE cust' || 'omers SET city = ''pwned'' WHERE id > 0'; \
                 RETURN 1; END$$",
                "CREATE OPERATOR public.+ (LEFTARG = integer, RIGHTARG = integer, FUNCTION = rt2_op)",
                "SET LOCAL search_path = public, pg_catalog",
                "SELECT 1 + 1",
            ],
            PWNED,
        ),
        "truncate cascade" => (
            vec![
                "CREATE TABLE rt2_cities (name text PRIMARY KEY)",
                "ALTER TABLE customers ADD CONSTRAINT rt2_fk FOREIGN KEY (city) \
                 REFERENCES rt2_cities (name) NOT VALID",
                "TRUNCATE rt2_cities CASCADE",
            ],
            "SELECT 500 - count(*) FROM customers",
        ),
        "query_to_xml" => (
            vec![
                OPAQUE_FN,
                "SELECT query_to_xml('SELECT rt2_pwn()', true, false, '')",
            ],
            PWNED,
        ),
        "query_to_xml_and_xmlschema" => (
            vec![
                OPAQUE_FN,
                "SELECT query_to_xml_and_xmlschema('SELECT rt2_pwn()', true, false, '')",
            ],
            PWNED,
        ),
        "ts_rewrite" => (
            vec![
                OPAQUE_FN,
                "SELECT ts_rewrite('a'::tsquery, \
                 'SELECT ''a''::tsquery, ''b''::tsquery FROM rt2_pwn()')",
            ],
            PWNED,
        ),
        "function guardrail via operator" => (
            vec![
                "CREATE FUNCTION rt_fix(integer, integer) RETURNS integer LANGUAGE plpgsql AS \
                 $$BEGIN EXECUTE 'UPDATE cust' || 'omers SET city = ''pwned'' WHERE id > 0'; \
                 RETURN 1; END$$",
                "CREATE OPERATOR ##> (LEFTARG = integer, RIGHTARG = integer, FUNCTION = rt_fix)",
                "SELECT 1 ##> 1",
            ],
            PWNED,
        ),
        "matview refreshed" => (
            vec![
                HARMLESS_FN,
                "CREATE MATERIALIZED VIEW rt2_mv AS SELECT rt2_h() AS x",
                REDEFINED_FN,
                "REFRESH MATERIALIZED VIEW rt2_mv",
            ],
            PWNED,
        ),
        "view over a redefined function" => (
            vec![
                HARMLESS_FN,
                "CREATE VIEW rt2_vv AS SELECT rt2_h() AS x",
                REDEFINED_FN,
                "SELECT x FROM rt2_vv",
            ],
            PWNED,
        ),
        "default redefined" => (
            vec![
                HARMLESS_FN,
                "CREATE TABLE rt2_log (x integer, y integer DEFAULT rt2_h())",
                REDEFINED_FN,
                "INSERT INTO rt2_log (x) VALUES (1)",
            ],
            PWNED,
        ),
        "check redefined" => (
            vec![
                HARMLESS_FN,
                "CREATE TABLE rt2_log (x integer CHECK (x < rt2_h() + 10))",
                REDEFINED_FN,
                "INSERT INTO rt2_log (x) VALUES (1)",
            ],
            PWNED,
        ),
        "domain redefined" => (
            vec![
                HARMLESS_FN,
                "CREATE DOMAIN rt2_dom AS integer CHECK (VALUE < rt2_h() + 10)",
                REDEFINED_FN,
                "SELECT 1::rt2_dom",
            ],
            PWNED,
        ),
        "row policy redefined" => (
            vec![
                HARMLESS_FN,
                "CREATE TABLE rt2_log (x integer)",
                "INSERT INTO rt2_log VALUES (1)",
                "ALTER TABLE rt2_log ENABLE ROW LEVEL SECURITY",
                "ALTER TABLE rt2_log FORCE ROW LEVEL SECURITY",
                "CREATE POLICY rt2_p ON rt2_log USING (rt2_h() > 0)",
                REDEFINED_FN,
                "SELECT count(*) FROM rt2_log",
            ],
            PWNED,
        ),
        "partition parent" => (
            vec![
                "CREATE TABLE rt2_parent (LIKE customers) PARTITION BY RANGE (id)",
                "ALTER TABLE rt2_parent ATTACH PARTITION customers FOR VALUES FROM (0) TO (1000000)",
                "UPDATE rt2_parent SET city = 'pwned' WHERE id > 0",
            ],
            PWNED,
        ),
        "unicode escaped table name" => (
            vec!["UPDATE U&\"cust\\006fmers\" SET city = 'pwned' WHERE id > 0"],
            PWNED,
        ),
        "unicode escaped table name with UESCAPE" => (
            vec!["UPDATE U&\"cust!006fmers\" UESCAPE '!' SET city = 'pwned' WHERE id > 0"],
            PWNED,
        ),
        "catalog-qualified table name" => (
            vec!["UPDATE shop.public.customers SET city = 'pwned' WHERE id > 0"],
            PWNED,
        ),
        "function path over a temporary shadow" => (
            vec![
                "CREATE TEMP TABLE customers (id integer, city text)",
                "CREATE FUNCTION rt2_s() RETURNS integer LANGUAGE sql \
                 SET search_path = public, pg_temp \
                 AS 'UPDATE customers SET city = ''pwned'' WHERE id > 0 RETURNING 1'",
                "SELECT rt2_s()",
            ],
            "SELECT count(*) FROM public.customers WHERE city = 'pwned'",
        ),
        "procedure called" => (
            vec![
                "CREATE PROCEDURE rt2_p() LANGUAGE plpgsql AS \
                 $$BEGIN EXECUTE 'UPDATE cust' || 'omers SET city = ''pwned'' WHERE id > 0'; END$$",
                "CALL rt2_p()",
            ],
            PWNED,
        ),
        "column type rewrite" => (
            vec!["ALTER TABLE customers ALTER COLUMN city TYPE text USING 'pwned'"],
            PWNED,
        ),
        "aggregate" => (
            vec![
                "CREATE FUNCTION rt2_op(integer, integer) RETURNS integer LANGUAGE plpgsql AS \
                 $$BEGIN EXECUTE 'UPDATE cust' || 'omers SET city = ''pwned'' WHERE id > 0'; \
                 RETURN 1; END$$",
                "CREATE AGGREGATE rt2_agg (integer) (SFUNC = rt2_op, STYPE = integer)",
                "SELECT rt2_agg(x) FROM (VALUES (1)) AS v (x)",
            ],
            PWNED,
        ),
        "cast" => (
            vec![
                "CREATE TYPE rt2_t AS (a integer)",
                "CREATE FUNCTION rt2_cast(integer) RETURNS rt2_t LANGUAGE plpgsql AS \
                 $$BEGIN EXECUTE 'UPDATE cust' || 'omers SET city = ''pwned'' WHERE id > 0'; \
                 RETURN ROW($1)::rt2_t; END$$",
                "CREATE CAST (integer AS rt2_t) WITH FUNCTION rt2_cast(integer)",
                "SELECT 1::rt2_t",
            ],
            PWNED,
        ),
        "row security policy" => (
            vec![
                OPAQUE_FN,
                "CREATE TABLE rt2_log (x integer)",
                "INSERT INTO rt2_log VALUES (1)",
                "ALTER TABLE rt2_log ENABLE ROW LEVEL SECURITY",
                "ALTER TABLE rt2_log FORCE ROW LEVEL SECURITY",
                "CREATE POLICY rt2_p ON rt2_log USING (rt2_pwn() > 0)",
                "SELECT count(*) FROM rt2_log",
            ],
            PWNED,
        ),
        "default set later" => (
            vec![
                OPAQUE_FN,
                "CREATE TABLE rt2_log (x integer, y integer)",
                "ALTER TABLE rt2_log ALTER COLUMN y SET DEFAULT rt2_pwn()",
                "INSERT INTO rt2_log (x) VALUES (1)",
            ],
            PWNED,
        ),
        "check added later" => (
            vec![
                OPAQUE_FN,
                "CREATE TABLE rt2_log (x integer)",
                "ALTER TABLE rt2_log ADD CONSTRAINT rt2_c CHECK (rt2_pwn() > 0) NOT VALID",
                "INSERT INTO rt2_log (x) VALUES (1)",
            ],
            PWNED,
        ),
        "domain check added later" => (
            vec![
                OPAQUE_FN,
                "CREATE DOMAIN rt2_dom AS integer",
                "ALTER DOMAIN rt2_dom ADD CONSTRAINT rt2_c CHECK (rt2_pwn() > 0) NOT VALID",
                "SELECT 1::rt2_dom",
            ],
            PWNED,
        ),
        other => panic!("no family {other}"),
    }
}

const FAMILIES: &[&str] = &[
    "fk on update cascade",
    "fk on delete set default",
    "inheritance parent",
    "rewrite rule",
    "trigger on another table",
    "opaque function called",
    "column default",
    "check constraint",
    "operator",
    "type input function",
    "operator shadowing a built-in",
    "aggregate",
    "cast",
    "row security policy",
    "default set later",
    "check added later",
    "domain check added later",
    "column type rewrite",
    "truncate cascade",
    "query_to_xml",
    "query_to_xml_and_xmlschema",
    "ts_rewrite",
    "function guardrail via operator",
    "matview refreshed",
    "view over a redefined function",
    "default redefined",
    "check redefined",
    "domain redefined",
    "row policy redefined",
    "partition parent",
    "unicode escaped table name",
    "unicode escaped table name with UESCAPE",
    "catalog-qualified table name",
    "function path over a temporary shadow",
    "procedure called",
];

async fn families(label: &str, which: &[&'static str]) {
    let w = world(label).await;
    let mut t = Table(Vec::new());
    for family in which {
        let (steps, check) = family_steps(family);
        attack(&w, &mut t, family, &steps, check).await;
    }
    w.finish(t).await;
}

/// The families that hold today (the others are the ignored tests below).
const HOLDING: &[&str] = &[
    "inheritance parent",
    "rewrite rule",
    "trigger on another table",
    "opaque function called",
    "column default",
    "check constraint",
    "type input function",
    "aggregate",
    "cast",
    "row security policy",
    "default set later",
    "check added later",
    "domain check added later",
    "query_to_xml",
    "query_to_xml_and_xmlschema",
    "ts_rewrite",
    "matview refreshed",
    "view over a redefined function",
    "default redefined",
    "check redefined",
    "domain redefined",
    "row policy redefined",
    "partition parent",
    "unicode escaped table name",
    "unicode escaped table name with UESCAPE",
    "catalog-qualified table name",
    "function path over a temporary shadow",
    "procedure called",
];

/// `RT2_ONLY=family,family` runs only those families (for a quick look).
fn only(from: &[&'static str]) -> Vec<&'static str> {
    match std::env::var("RT2_ONLY") {
        Ok(v) => FAMILIES
            .iter()
            .copied()
            .filter(|f| v.split(',').any(|x| x == *f))
            .collect(),
        Err(_) => from.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_code_holds() {
    families("rt2-holds", &only(HOLDING)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_key_on_update_cascade() {
    families("rt2-fk-upd", &["fk on update cascade"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_key_on_delete_set_default() {
    families("rt2-fk-del", &["fk on delete set default"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_runs_opaque_code() {
    families("rt2-op", &["operator"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_shadowing_a_builtin() {
    families("rt2-op-shadow", &["operator shadowing a built-in"]).await;
}

/// The statement an approver approves: one customer row.
const GRANTED: &str = "UPDATE customers SET city = 'rt2-granted' WHERE id = 21";
const GRANTED_COUNT: &str = "SELECT count(*) FROM customers WHERE city = 'rt2-granted'";
/// An `=` for integers in `public` that is true for every row: the granted statement's
/// `id = 21` then matches all of them.
const EVERY_ROW_EQUALS: [&str; 2] = [
    "CREATE FUNCTION rt2_yes(integer, integer) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
    "CREATE OPERATOR public.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = rt2_yes)",
];

/// A statement grant, then an operator defined under it that changes what the approved text
/// does: the session's path lists `public` before `pg_catalog` from the start (before the
/// approval, so the approver's statement ran under the same path).
async fn grant_then_operator(w: &World, t: &mut Table) {
    let family = "operator redefined under a grant";
    // Baseline: on the direct connection, the same text reaches every row.
    let mut steps = vec!["SET LOCAL search_path = public, pg_catalog"];
    steps.extend(EVERY_ROW_EQUALS);
    steps.push(GRANTED);
    match on_direct(&w.direct_pg, &steps, GRANTED_COUNT).await {
        Ok(n) if n > 1 => t.row(
            family,
            "direct PostgreSQL (baseline)",
            GRANTED,
            Ok(format!("{n} rows")),
        ),
        other => t.row(
            family,
            "direct PostgreSQL (baseline)",
            GRANTED,
            Err(format!("{other:?}")),
        ),
    }
    let c = connect(w.pg_port).await;
    let (set, _) = attempt(&w.env, &c, "SET search_path = public, pg_catalog").await;
    let granted = w.env.try_approved(&c, GRANTED).await;
    let before = w
        .direct_pg
        .simple_query(GRANTED_COUNT)
        .await
        .ok()
        .and_then(|m| first_value(&m))
        .unwrap_or_default();
    let mut log = vec![
        format!("set path: {set}"),
        format!("granted: {}", granted.is_ok()),
    ];
    let _ = c.simple_query("BEGIN").await;
    for s in EVERY_ROW_EQUALS.iter().chain([GRANTED].iter()) {
        let (what, _) = attempt(&w.env, &c, s).await;
        log.push(format!(
            "[{}] {what}",
            s.chars().take(40).collect::<String>()
        ));
    }
    let (_, n) = attempt(&w.env, &c, GRANTED_COUNT).await;
    let _ = c.simple_query("ROLLBACK").await;
    let n: i64 = n.and_then(|v| v.parse().ok()).unwrap_or(0);
    let log = log.join("; ");
    t.row(
        family,
        AGENT_SQL,
        "the approved one-row UPDATE again, after CREATE OPERATOR public.=",
        if granted.is_err() {
            Err(format!("the approval itself failed: {granted:?}"))
        } else if n > 1 {
            Err(format!(
                "{n} rows changed under a one-row grant (before {before}); {log}"
            ))
        } else {
            Ok(format!("{n} row; {log}"))
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_redefined_under_a_grant() {
    let w = world("rt2-op-grant").await;
    let mut t = Table(Vec::new());
    grant_then_operator(&w, &mut t).await;
    w.finish(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "baseline: a view another test leaves over customers.city makes the direct ALTER fail; through the sidecar the rewrite is held (ALTER TABLE counts as a write of its table)"]
async fn column_type_rewrite() {
    families("rt2-type", &["column type rewrite"]).await;
}

/// COPY ... FROM STDIN of one row into customers on `client`, in a transaction; every request
/// it makes is denied. What came of it, and the number of `pwned` rows before the rollback.
async fn copy_in(env: Option<&Env>, client: &Arc<Client>) -> (String, i64) {
    use futures::SinkExt;
    let known = match env {
        Some(env) => names(&env.api).await,
        None => Vec::new(),
    };
    let _ = client.simple_query("BEGIN").await;
    let c = client.clone();
    let task = tokio::spawn(async move {
        let sink = c
            .copy_in::<_, &'static [u8]>(
                "COPY customers (id, full_name, email, ssn, city, created_at) FROM STDIN",
            )
            .await?;
        let mut sink = Box::pin(sink);
        sink.send(b"9001\tX Y\tx9001@example.com\t000-00-0000\tpwned\t2026-01-01\n".as_slice())
            .await?;
        sink.as_mut().finish().await
    });
    let mut denied = Vec::new();
    for _ in 0..100 {
        if task.is_finished() {
            break;
        }
        if let Some(env) = env {
            for name in names(&env.api).await {
                if !known.contains(&name) && !denied.contains(&name) {
                    let _ = env.decide("deny", &name, "refused by the second attack table");
                    denied.push(name);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let what = match tokio::time::timeout(Duration::from_secs(40), task).await {
        Ok(Ok(Ok(n))) => format!("copied {n}"),
        Ok(Ok(Err(e))) => format!("refused: {}", pg_message(&e)),
        other => format!("{other:?}"),
    };
    let n = client
        .simple_query(PWNED)
        .await
        .ok()
        .and_then(|m| first_value(&m))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let _ = client.simple_query("ROLLBACK").await;
    let held = if denied.is_empty() {
        ""
    } else {
        "held, denied; "
    };
    (format!("{held}{what}"), n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_stdin_into_customers() {
    let w = world("rt2-copy").await;
    let mut t = Table(Vec::new());
    let family = "COPY FROM STDIN";
    let (what, n) = copy_in(None, &w.direct_pg).await;
    t.row(
        family,
        "direct PostgreSQL (baseline)",
        "COPY customers FROM STDIN",
        if n > 0 { Ok(what) } else { Err(what) },
    );
    let c = connect(w.pg_port).await;
    let (what, n) = copy_in(Some(&w.env), &c).await;
    t.row(
        family,
        AGENT_SQL,
        "COPY customers FROM STDIN",
        if n > 0 {
            Err(format!("a row was copied in without an approval: {what}"))
        } else {
            Ok(what)
        },
    );
    w.finish(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_cascade_through_an_added_foreign_key() {
    families("rt2-trunc", &["truncate cascade"]).await;
}

/// The granted statement of the view rows: it reaches the ids `rt2_v` lists (`tag` keeps the
/// grants of the rows apart).
fn granted_via(tag: &str) -> String {
    format!("UPDATE customers SET city = 'rt2-granted-{tag}' WHERE id IN (SELECT id FROM rt2_v)")
}
const GRANTED_VIA_COUNT: &str = "SELECT count(*) FROM customers WHERE city LIKE 'rt2-granted-%'";

/// In one transaction through the sidecar: `before`, then `GRANTED_VIA` approved (one row),
/// then `after`, then `GRANTED_VIA` again: it must not reach more rows than approved.
async fn grant_then(
    tag: &str,
    w: &World,
    t: &mut Table,
    family: &'static str,
    before: &[&str],
    after: &[&str],
) {
    let granted_text = granted_via(tag);
    let granted_via = granted_text.as_str();
    let mut steps: Vec<&str> = before.to_vec();
    steps.push(granted_via);
    steps.extend(after);
    steps.push(granted_via);
    match on_direct(&w.direct_pg, &steps, GRANTED_VIA_COUNT).await {
        Ok(n) if n > 1 => t.row(
            family,
            "direct PostgreSQL (baseline)",
            granted_via,
            Ok(format!("{n} rows")),
        ),
        other => t.row(
            family,
            "direct PostgreSQL (baseline)",
            granted_via,
            Err(format!("{other:?}")),
        ),
    }
    let c = connect(w.pg_port).await;
    let _ = c.simple_query("BEGIN").await;
    let mut log = Vec::new();
    for s in before {
        let (what, _) = attempt(&w.env, &c, s).await;
        log.push(format!(
            "[{}] {what}",
            s.chars().take(40).collect::<String>()
        ));
    }
    let granted = w.env.try_approved(&c, granted_via).await;
    log.push(format!("granted: {}", granted.is_ok()));
    for s in after.iter().chain([granted_via].iter()) {
        let (what, _) = attempt(&w.env, &c, s).await;
        log.push(format!(
            "[{}] {what}",
            s.chars().take(40).collect::<String>()
        ));
    }
    let (_, n) = attempt(&w.env, &c, GRANTED_VIA_COUNT).await;
    let _ = c.simple_query("ROLLBACK").await;
    let n: i64 = n.and_then(|v| v.parse().ok()).unwrap_or(0);
    let log = log.join("; ");
    t.row(
        family,
        AGENT_SQL,
        after.last().copied().unwrap_or_default(),
        if granted.is_err() {
            Err(format!("the approval itself failed: {granted:?}; {log}"))
        } else if n > 1 {
            Err(format!("{n} rows changed under a one-row grant; {log}"))
        } else {
            Ok(format!("{n} row; {log}"))
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relation_changed_under_a_grant() {
    let w = world("rt2-view-grant").await;
    let mut t = Table(Vec::new());
    let view = ["CREATE VIEW rt2_v AS SELECT 21 AS id"];
    grant_then(
        "v1",
        &w,
        &mut t,
        "view replaced under a grant",
        &view,
        &["CREATE OR REPLACE VIEW rt2_v AS SELECT id FROM customers"],
    )
    .await;
    grant_then(
        "v2",
        &w,
        &mut t,
        "temporary view shadows under a grant",
        &view,
        &["CREATE TEMP VIEW rt2_v AS SELECT id FROM customers"],
    )
    .await;
    grant_then(
        "v3",
        &w,
        &mut t,
        "view dropped, table of the name",
        &view,
        &[
            "DROP VIEW rt2_v",
            "CREATE TABLE rt2_v (id integer)",
            "INSERT INTO rt2_v SELECT g FROM generate_series(1, 500) AS g",
        ],
    )
    .await;
    grant_then(
        "v4",
        &w,
        &mut t,
        "view over a function redefined",
        &[
            "CREATE FUNCTION rt2_ids() RETURNS SETOF integer LANGUAGE sql AS 'SELECT 21'",
            "CREATE VIEW rt2_v AS SELECT rt2_ids() AS id",
        ],
        &[
            "CREATE OR REPLACE FUNCTION rt2_ids() RETURNS SETOF integer LANGUAGE sql \
           AS 'SELECT g FROM generate_series(1, 500) AS g'",
        ],
    )
    .await;
    w.finish(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_guardrail_through_an_operator() {
    families("rt2-fix-op", &["function guardrail via operator"]).await;
}

/// A customers update approved by alice (agent-owners may approve the shop policy, not the
/// orders policy), after the agent made the orders foreign key cascade: the approved
/// statement also rewrites orders rows, which only portcullis-approvers may approve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_update_cascades_into_another_policy() {
    let w = world("rt2-cascade").await;
    let mut t = Table(Vec::new());
    let family = "cascade into another policy";
    let cid: i64 = w
        .direct_pg
        .simple_query("SELECT customer_id::text FROM orders ORDER BY id LIMIT 1")
        .await
        .ok()
        .and_then(|m| first_value(&m))
        .and_then(|v| v.parse().ok())
        .expect("an order");
    let alter = [
        "ALTER TABLE orders DROP CONSTRAINT orders_customer_id_fkey",
        "ALTER TABLE orders ADD CONSTRAINT rt2_ofk FOREIGN KEY (customer_id) \
         REFERENCES customers (id) ON UPDATE CASCADE",
    ];
    let update = format!(
        "UPDATE customers SET id = {} WHERE id = {cid}",
        cid + 100_000
    );
    let count = format!(
        "SELECT count(*) FROM orders WHERE customer_id = {}",
        cid + 100_000
    );
    let mut steps: Vec<&str> = alter.to_vec();
    steps.push(&update);
    match on_direct(&w.direct_pg, &steps, &count).await {
        Ok(n) if n > 0 => t.row(
            family,
            "direct PostgreSQL (baseline)",
            update.clone(),
            Ok(format!("{n} orders rows changed")),
        ),
        other => t.row(
            family,
            "direct PostgreSQL (baseline)",
            update.clone(),
            Err(format!("{other:?}")),
        ),
    }
    let alice = harness().kubeconfig_of(User::Owner).to_owned();
    let c = connect(w.pg_port).await;
    let _ = c.simple_query("BEGIN").await;
    let mut log = Vec::new();
    for s in alter {
        let (what, _) = attempt(&w.env, &c, s).await;
        log.push(format!(
            "[{}] {what}",
            s.chars().take(40).collect::<String>()
        ));
    }
    let known = names(&w.env.api).await;
    let task = run(&c, &update);
    let mut decided: Vec<String> = Vec::new();
    for _ in 0..150 {
        if task.is_finished() {
            break;
        }
        for name in names(&w.env.api).await {
            if known.contains(&name) || decided.contains(&name) {
                continue;
            }
            // alice approves what she may; what she may not is denied by bob.
            let out = common::plugin(
                &alice,
                &["approve", &name, "-n", &w.ns, "--reason", "one customer"],
            );
            let ok = out.status.success();
            log.push(format!("alice approves {name}: {ok}"));
            if !ok {
                let _ = w.env.decide("deny", &name, "not alice's to approve");
            }
            decided.push(name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ran = match tokio::time::timeout(Duration::from_secs(40), task).await {
        Ok(Ok(Ok(_))) => "ran".to_owned(),
        Ok(Ok(Err(e))) => format!("refused: {}", pg_message(&e)),
        other => format!("{other:?}"),
    };
    log.push(format!("update {ran}"));
    let (_, n) = attempt(&w.env, &c, &count).await;
    let _ = c.simple_query("ROLLBACK").await;
    let n: i64 = n.and_then(|v| v.parse().ok()).unwrap_or(0);
    let log = log.join("; ");
    t.row(
        family,
        "agent, approved by alice (agent-owners) only",
        update.clone(),
        if n > 0 {
            Err(format!(
                "{n} orders rows changed with alice's approval alone; {log}"
            ))
        } else {
            Ok(format!("orders unchanged; {log}"))
        },
    );
    w.finish(t).await;
}
