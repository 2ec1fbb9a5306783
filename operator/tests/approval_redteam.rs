//! Red team (rt33) against issue 33: an approval means exactly what the approver saw. Families
//! not in the approval attack table: another statement in the same string, a cursor moved under
//! a grant, a function redefined under a grant, a prepared name re-pointed, a concurrent flood
//! of requests against maxPending, and zero-width characters outside the escaped set. Each row
//! shows the attack on the unprotected path where it makes sense, then asserts the safe outcome
//! through the sidecar. The tests marked `ignore` are the attacks that succeed today (they
//! assert the safe outcome); run them with `-- --ignored --test-threads=1` (the trigger test
//! touches the shared `customers` table).

mod common;

#[path = "common/approval_world.rs"]
mod approval_world;
use approval_world::*;

use portcullis_e2e::{harness, User};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_redteam_holds() {
    let w = world("rt-holds").await;
    let (env, pg_port, direct_pg, ns) = (&w.env, w.pg_port, w.direct_pg.clone(), w.ns.clone());
    let _ = (&ns, &direct_pg);
    let mut t = Table(Vec::new());
    // 1. Another statement in the same string as an approved one.
    let c1 = connect(pg_port).await;
    let shown = "UPDATE customers SET city = 'Ghent' WHERE id = 21";
    env.approved(&c1, shown).await;
    let extended = format!("{shown}; UPDATE customers SET city = 'Ghent' WHERE id > 400");
    let base = direct_pg
        .simple_query(&extended)
        .await
        .map(|m| affected(&m));
    t.row(
        "other statement, same string",
        "direct PostgreSQL (baseline)",
        "the approved statement followed by a bulk one",
        match base {
            Ok(n) if n > 1 => Ok(format!("{n} rows")),
            other => Err(format!("{other:?}")),
        },
    );
    t.row(
        "other statement, same string",
        AGENT_SQL,
        "the approved statement followed by a bulk one",
        env.not_run(&c1, &extended).await,
    );

    // 2. A cursor: `WHERE CURRENT OF c` is the same text for every row the cursor reaches.
    let c2 = connect(pg_port).await;
    c2.simple_query(
        "BEGIN; DECLARE rt_c CURSOR FOR SELECT id FROM customers WHERE id BETWEEN 30 AND 40 ORDER BY id FOR UPDATE; FETCH NEXT FROM rt_c",
    )
    .await
    .expect("cursor");
    let current = "UPDATE customers SET city = 'Cursor' WHERE CURRENT OF rt_c";
    let result = match env.try_approved(&c2, current).await {
        Err(e) => Ok(format!("the first use is not granted: {e}")),
        Ok(_) => {
            c2.simple_query("FETCH NEXT FROM rt_c")
                .await
                .expect("fetch");
            env.not_run(&c2, current).await
        }
    };
    t.row(
        "cursor moved under a grant",
        AGENT_SQL,
        "approved `WHERE CURRENT OF c` for row 30, cursor moved to row 31, same text again",
        result,
    );
    let _ = c2.simple_query("ROLLBACK").await;

    // 4. SQL PREPARE / EXECUTE: the name re-pointed at another statement.
    let c4 = connect(pg_port).await;
    c4.simple_query("PREPARE rt_p(text, int) AS UPDATE customers SET city = $1 WHERE id = $2")
        .await
        .expect("prepare");
    let exec = "EXECUTE rt_p('Ghent', 22)";
    let first = env.try_approved(&c4, exec).await;
    let repointed = c4
        .simple_query(
            "DEALLOCATE rt_p; PREPARE rt_p(text, int) AS UPDATE customers SET city = $1 WHERE id > $2",
        )
        .await;
    t.row(
        "prepared name re-pointed",
        AGENT_SQL,
        format!(
            "approved `{exec}`, rt_p re-prepared as a bulk update ({}), executed with the same text",
            if repointed.is_ok() { "allowed" } else { "refused" }
        ),
        match &first {
            Err(e) => Ok(format!("the first EXECUTE is not granted: {e}")),
            Ok(_) => env.not_run(&c4, exec).await,
        },
    );
    let c5 = connect(pg_port).await;
    c5.simple_query("PREPARE rt_p(text, int) AS UPDATE customers SET city = $1 WHERE id > $2")
        .await
        .expect("prepare");
    t.row(
        "prepared name re-pointed",
        AGENT_SQL,
        format!("approved `{exec}` in one session, another session's rt_p is a bulk update"),
        env.not_run(&c5, exec).await,
    );

    // 5. A flood from many sessions at once: the pending limit is counted before create.
    let known = names(&env.api).await;
    let mut flood = Vec::new();
    for i in 0..12 {
        let c = connect(pg_port).await;
        flood.push((
            c.clone(),
            run(
                &c,
                &format!("UPDATE customers SET city = 'Flood' WHERE id = {}", 100 + i),
            ),
        ));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let now = names(&env.api).await;
    let fresh: Vec<String> = now.into_iter().filter(|n| !known.contains(n)).collect();
    t.row(
        "limits",
        "agent, 12 sessions at once",
        "12 held statements sent concurrently with maxPending: 2",
        (fresh.len() <= 2)
            .then(|| format!("{} requests", fresh.len()))
            .ok_or_else(|| format!("{} pending requests with maxPending 2", fresh.len())),
    );
    for name in &fresh {
        let _ = env.decide("deny", name, "flood");
    }
    for (_, task) in flood {
        let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    }

    w.finish(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_redefined_under_a_grant() {
    let w = world("rt-fn").await;
    let (env, pg_port, direct_pg, ns) = (&w.env, w.pg_port, w.direct_pg.clone(), w.ns.clone());
    let _ = (&ns, &direct_pg);
    let mut t = Table(Vec::new());
    // 3. A function approved by its call, then redefined (the policy holds no DDL, as the
    // chart's example policy).
    let c3 = connect(pg_port).await;
    let define = |name: &str, body: &str| {
        format!(
            "CREATE OR REPLACE FUNCTION {name}() RETURNS int LANGUAGE plpgsql AS $f$ DECLARE n int := 1; BEGIN {body} RETURN n; END $f$"
        )
    };
    let bulk_body = "EXECUTE 'UPD' || 'ATE custo' || 'mers SET city = city WHERE id > 0'; GET DIAGNOSTICS n = ROW_COUNT;";
    let base = async {
        direct_pg
            .simple_query(&define("rt_twin", bulk_body))
            .await?;
        direct_pg.simple_query("SELECT rt_twin()").await
    }
    .await;
    t.row(
        "function redefined under a grant",
        "direct PostgreSQL (baseline)",
        "a function redefined as a bulk update, then called",
        match base.as_deref().map(first_value) {
            Ok(Some(n)) if n != "1" => Ok(format!("{n} rows updated")),
            other => Err(format!("{other:?}")),
        },
    );
    let created = c3.simple_query(&define("rt_fix", "PERFORM 1;")).await;
    t.row(
        "function redefined under a grant",
        AGENT_SQL,
        "create a harmless rt_fix()",
        created
            .map(|_| "created".to_owned())
            .map_err(|e| pg_message(&e)),
    );
    let call = "SELECT rt_fix()";
    let first = env.try_approved(&c3, call).await;
    let shown_call = first
        .as_ref()
        .ok()
        .and_then(|ar| ar.spec.operation.statement.clone())
        .unwrap_or_default();
    let redefined = match c3.simple_query(&define("rt_fix", bulk_body)).await {
        Ok(_) => "redefined without approval".to_owned(),
        Err(e) => format!("redefinition refused: {}", pg_message(&e)),
    };
    let known = names(&env.api).await;
    let again = tokio::time::timeout(Duration::from_secs(5), c3.simple_query(call)).await;
    let result = match (&first, again) {
        (Err(e), _) => Ok(format!("the first call is not granted: {e}")),
        (Ok(_), Ok(Ok(m))) => Err(format!(
            "ran on the grant of {shown_call:?}: {} rows updated",
            first_value(&m).unwrap_or_default()
        )),
        (Ok(_), Ok(Err(e))) => Ok(format!("refused: {}", pg_message(&e))),
        (Ok(_), Err(_)) => {
            let fresh: Vec<String> = names(&env.api)
                .await
                .into_iter()
                .filter(|n| !known.contains(n))
                .collect();
            for n in &fresh {
                let _ = env.decide("deny", n, "redefined");
            }
            Ok(format!("held for a new approval ({})", fresh.join(", ")))
        }
    };
    t.row(
        "function redefined under a grant",
        AGENT_SQL,
        format!("approved `{call}`, rt_fix() redefined ({redefined}), called again"),
        result,
    );
    // The same in another session, by a function of the same name earlier on the search path.
    let c3b = connect(pg_port).await;
    let shadow = c3b
        .simple_query(&format!(
            "CREATE SCHEMA IF NOT EXISTS rt_shadow; {}; SET search_path = rt_shadow, public",
            define("rt_shadow.rt_fix", bulk_body)
        ))
        .await;
    let known = names(&env.api).await;
    let again = tokio::time::timeout(Duration::from_secs(5), c3b.simple_query(call)).await;
    let result = match (&first, again) {
        (Err(e), _) => Ok(format!("the first call is not granted: {e}")),
        (Ok(_), Ok(Ok(m))) => Err(format!(
            "ran on the grant of {shown_call:?}: {} rows updated",
            first_value(&m).unwrap_or_default()
        )),
        (Ok(_), Ok(Err(e))) => Ok(format!("refused: {}", pg_message(&e))),
        (Ok(_), Err(_)) => {
            let fresh: Vec<String> = names(&env.api)
                .await
                .into_iter()
                .filter(|n| !known.contains(n))
                .collect();
            for n in &fresh {
                let _ = env.decide("deny", n, "shadowed");
            }
            Ok(format!("held for a new approval ({})", fresh.join(", ")))
        }
    };
    t.row(
        "function redefined under a grant",
        AGENT_SQL,
        format!(
            "another session shadows rt_fix() on its search path ({}), calls `{call}`",
            if shadow.is_ok() { "allowed" } else { "refused" }
        ),
        result,
    );

    w.finish(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_attached_under_a_grant() {
    let w = world("rt-trg").await;
    let (env, pg_port, direct_pg, ns) = (&w.env, w.pg_port, w.direct_pg.clone(), w.ns.clone());
    let _ = (&ns, &direct_pg);
    let mut t = Table(Vec::new());
    // 1. Another statement in the same string as an approved one.
    let c1 = connect(pg_port).await;
    let shown = "UPDATE customers SET city = 'Ghent' WHERE id = 21";
    env.approved(&c1, shown).await;
    let extended = format!("{shown}; UPDATE customers SET city = 'Ghent' WHERE id > 400");
    let base = direct_pg
        .simple_query(&extended)
        .await
        .map(|m| affected(&m));
    t.row(
        "other statement, same string",
        "direct PostgreSQL (baseline)",
        "the approved statement followed by a bulk one",
        match base {
            Ok(n) if n > 1 => Ok(format!("{n} rows")),
            other => Err(format!("{other:?}")),
        },
    );
    t.row(
        "other statement, same string",
        AGENT_SQL,
        "the approved statement followed by a bulk one",
        env.not_run(&c1, &extended).await,
    );

    // 3b. A trigger attached under a statement grant: the approved one-row update, run again,
    // fires a bulk update.
    let trigger = "CREATE OR REPLACE FUNCTION rt_trg() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN IF pg_trigger_depth() < 2 THEN EXECUTE 'UPD' || 'ATE custo' || 'mers SET city = ''Trig'' WHERE id > 450'; END IF; RETURN NULL; END $f$; CREATE TRIGGER rt_t AFTER UPDATE ON customers FOR EACH STATEMENT EXECUTE FUNCTION rt_trg()";
    let _ = direct_pg
        .simple_query(
            "DROP TRIGGER IF EXISTS rt_t ON customers; UPDATE customers SET city = 'Reset' WHERE city = 'Trig'",
        )
        .await;
    let attached = c1.simple_query(trigger).await;
    let again = tokio::time::timeout(Duration::from_secs(5), c1.simple_query(shown)).await;
    let trig_rows = direct_pg
        .simple_query("SELECT count(*) FROM customers WHERE city = 'Trig'")
        .await
        .ok()
        .as_deref()
        .and_then(first_value)
        .unwrap_or_default();
    let _ = direct_pg
        .simple_query("DROP TRIGGER IF EXISTS rt_t ON customers")
        .await;
    t.row(
        "trigger attached under a grant",
        AGENT_SQL,
        format!(
            "trigger attached ({}), approved `{shown}` run again",
            match &attached {
                Ok(_) => "allowed".to_owned(),
                Err(e) => pg_message(e),
            }
        ),
        if trig_rows == "0" {
            Ok(format!(
                "no bulk rows ({:?})",
                again.map(|r| r.map(|_| ()).map_err(|e| pg_message(&e)))
            ))
        } else {
            Err(format!(
                "{trig_rows} rows rewritten by the trigger on the grant of one row"
            ))
        },
    );

    w.finish(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_escapes_every_zero_width_character() {
    let w = world("rt-show").await;
    let (env, pg_port, direct_pg, ns) = (&w.env, w.pg_port, w.direct_pg.clone(), w.ns.clone());
    let _ = (&ns, &direct_pg);
    let mut t = Table(Vec::new());
    // 6. Hidden characters the display does not escape: variation selectors of the supplement
    // and musical format controls (category Cf, not Cc), zero-width in the terminal.
    let c6 = connect(pg_port).await;
    let known = names(&env.api).await;
    let hidden = "UPDATE customers SET city = 'Gh\u{E0100}ent\u{1D173}' WHERE id = 23";
    let task = run(&c6, hidden);
    let ar = new_request(&env.api, &known).await.expect("held");
    let name = ar.metadata.name.clone().expect("name");
    let shown = common::plugin(&env.bob, &["show", &name, "-n", &ns]);
    let text = common::text(&shown);
    t.row(
        "safe display",
        "approver, kubectl portcullis show",
        "zero-width U+E0100 and U+1D173 in a literal",
        (!text.contains('\u{E0100}') && !text.contains('\u{1D173}') && shown.status.success())
            .then(|| "escaped".to_owned())
            .ok_or_else(|| format!("shown raw: {:?}", first_line(&text))),
    );
    let _ = env.decide("deny", &name, "hidden");
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;

    w.finish(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_guardrail_spellings() {
    let w = world("rt-fnname").await;
    let (env, pg_port, direct_pg) = (&w.env, w.pg_port, w.direct_pg.clone());
    let mut t = Table(Vec::new());
    let c = connect(pg_port).await;
    let _ = direct_pg
        .simple_query(
            "CREATE OR REPLACE FUNCTION rt_fix() RETURNS int LANGUAGE sql AS 'SELECT 1'; GRANT EXECUTE ON FUNCTION rt_fix() TO PUBLIC",
        )
        .await;
    for spelling in [
        "SELECT rt_fix()",
        "SELECT public.rt_fix()",
        "SELECT \"rt_fix\"()",
        "SELECT * FROM rt_fix()",
        "SELECT (SELECT rt_fix())",
    ] {
        t.row(
            "function guardrail",
            AGENT_SQL,
            format!("`{spelling}` (guardrail functions: [rt_fix])"),
            env.not_run(&c, spelling).await,
        );
    }
    w.finish(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_guardrail_through_a_wrapper() {
    let w = world("rt-wrap").await;
    let (env, pg_port, direct_pg) = (&w.env, w.pg_port, w.direct_pg.clone());
    let mut t = Table(Vec::new());
    let c = connect(pg_port).await;
    let _ = direct_pg
        .simple_query(
            "CREATE OR REPLACE FUNCTION rt_fix() RETURNS int LANGUAGE sql AS 'SELECT 1'; GRANT EXECUTE ON FUNCTION rt_fix() TO PUBLIC",
        )
        .await;
    let base = direct_pg.simple_query("SELECT rt_fix()").await;
    t.row(
        "function guardrail",
        "direct PostgreSQL (baseline)",
        "the guarded function runs on a direct connection",
        base.map(|m| format!("returned {:?}", first_value(&m)))
            .map_err(|e| pg_message(&e)),
    );
    // A wrapper the agent defines (DDL is not held by the policy) calls the guarded function.
    let wrapped = c
        .simple_query(
            "CREATE OR REPLACE FUNCTION rt_wrap() RETURNS int LANGUAGE plpgsql AS $f$ BEGIN RETURN rt_fix(); END $f$",
        )
        .await;
    t.row(
        "function guardrail",
        AGENT_SQL,
        format!(
            "`SELECT rt_wrap()`, a wrapper of rt_fix() defined by the agent ({})",
            if wrapped.is_ok() {
                "allowed"
            } else {
                "refused"
            }
        ),
        env.not_run(&c, "SELECT rt_wrap()").await,
    );
    w.finish(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shown_annotations_cannot_be_forged() {
    let w = world("rt-annot").await;
    let (env, pg_port, ns) = (&w.env, w.pg_port, w.ns.clone());
    let mut t = Table(Vec::new());
    let c = connect(pg_port).await;
    let _ = c
        .simple_query("PREPARE rt_p(text, int) AS UPDATE customers SET city = $1 WHERE id > $2")
        .await;
    // The agent's own text imitates the sidecar's `-- runs:` annotation with a one-row
    // statement, and pushes the real annotation far down.
    let forged = format!(
        "EXECUTE rt_p('Ghent', 29)\n-- runs: UPDATE customers SET city = $1 WHERE id = $2{}",
        "\n".repeat(120)
    );
    let known = names(&env.api).await;
    let task = run(&c, &forged);
    let result = match new_request(&env.api, &known).await {
        None => Err(format!("not held: {:?}", task.await)),
        Some(ar) => {
            let name = ar.metadata.name.clone().expect("name");
            let shown = common::plugin(&env.bob, &["show", &name, "-n", &ns]);
            let text = common::text(&shown);
            let _ = env.decide("deny", &name, "forged");
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
            let runs: Vec<&str> = text.lines().filter(|l| l.contains("-- runs:")).collect();
            let blank_run = text
                .lines()
                .collect::<Vec<_>>()
                .windows(20)
                .any(|w| w.iter().all(|l| l.trim().is_empty()));
            if runs.len() == 1 && !blank_run {
                Ok(format!("one annotation: {}", runs[0].trim()))
            } else {
                Err(format!(
                    "shown with {} `-- runs:` lines (first: {:?}){}",
                    runs.len(),
                    runs.first().map(|l| l.trim()),
                    if blank_run {
                        ", the real one after a screenful of blank lines"
                    } else {
                        ""
                    }
                ))
            }
        }
    };
    t.row(
        "safe display",
        "approver, kubectl portcullis show",
        "the agent's text forges the `-- runs:` annotation of a bulk EXECUTE",
        result,
    );
    w.finish(t).await;
}

/// A bare PostgreSQL frontend on the agent's side: the simple queries `setup`, then a protocol
/// Bind of the SQL-prepared statement `statement` with the text `values`, Execute and Sync.
/// The command tag, or the server's message.
async fn raw_bind(
    port: u16,
    setup: &[String],
    statement: &str,
    values: &[&str],
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(i32::try_from(body.len() + 4).expect("len")).to_be_bytes());
        m.extend_from_slice(body);
        m
    }
    async fn until_ready(
        s: &mut tokio::net::TcpStream,
    ) -> Result<(Option<String>, Option<String>), String> {
        let (mut tag_seen, mut error) = (None, None);
        loop {
            let mut head = [0u8; 5];
            s.read_exact(&mut head).await.map_err(|e| e.to_string())?;
            let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4;
            let mut body = vec![0u8; len];
            s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
            match head[0] {
                b'C' => tag_seen = Some(String::from_utf8_lossy(&body[..len - 1]).into_owned()),
                b'E' => {
                    let mut fields = body.split(|b| *b == 0);
                    error = fields
                        .find(|f| f.first() == Some(&b'M'))
                        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned());
                }
                b'Z' => return Ok((tag_seen, error)),
                _ => {}
            }
        }
    }
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let mut startup = 196_608i32.to_be_bytes().to_vec();
    startup.extend_from_slice(b"user\0agent\0database\0shop\0\0");
    let mut m = (i32::try_from(startup.len() + 4).expect("len"))
        .to_be_bytes()
        .to_vec();
    m.extend_from_slice(&startup);
    s.write_all(&m).await.map_err(|e| e.to_string())?;
    until_ready(&mut s).await?;
    for q in setup {
        let mut body = q.as_bytes().to_vec();
        body.push(0);
        s.write_all(&msg(b'Q', &body))
            .await
            .map_err(|e| e.to_string())?;
        if let (_, Some(e)) = until_ready(&mut s).await? {
            return Err(format!("setup {q:?}: {e}"));
        }
    }
    let mut bind = b"\0".to_vec();
    bind.extend_from_slice(statement.as_bytes());
    bind.push(0);
    bind.extend_from_slice(&0i16.to_be_bytes());
    bind.extend_from_slice(&(i16::try_from(values.len()).expect("n")).to_be_bytes());
    for v in values {
        bind.extend_from_slice(&(i32::try_from(v.len()).expect("len")).to_be_bytes());
        bind.extend_from_slice(v.as_bytes());
    }
    bind.extend_from_slice(&0i16.to_be_bytes());
    let mut out = msg(b'B', &bind);
    out.extend(msg(b'E', b"\0\0\0\0\0"));
    out.extend(msg(b'S', b""));
    s.write_all(&out).await.map_err(|e| e.to_string())?;
    match until_ready(&mut s).await? {
        (_, Some(e)) => Err(e),
        (Some(tag), None) => Ok(tag),
        (None, None) => Err("no answer".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_bind_of_a_sql_prepared_statement() {
    let w = world("rt-bind").await;
    let (env, pg_port, direct_pg) = (&w.env, w.pg_port, w.direct_pg.clone());
    let mut t = Table(Vec::new());
    let prepare =
        "PREPARE rt_q(text, int) AS UPDATE customers SET city = $1 WHERE id > $2".to_owned();
    let base = direct_pg
        .simple_query(&format!(
            "{prepare}; EXECUTE rt_q('Bound', 450); DEALLOCATE rt_q"
        ))
        .await
        .map(|m| format!("{} rows", affected(&m)))
        .map_err(|e| pg_message(&e));
    t.row(
        "protocol Bind of a SQL-prepared statement",
        "direct PostgreSQL (baseline)",
        "rt_q is a bulk update",
        base,
    );
    // Through the sidecar: without any approval, and after an approved EXECUTE of it.
    for approved_first in [false, true] {
        let known = names(&env.api).await;
        let setup = vec![prepare.clone()];
        if approved_first {
            let c = connect(pg_port).await;
            let _ = c.simple_query(&prepare).await;
            let _ = env.try_approved(&c, "EXECUTE rt_q('Bound', 450)").await;
        }
        let known2 = names(&env.api).await;
        let task =
            tokio::spawn(async move { raw_bind(pg_port, &setup, "rt_q", &["Bound", "0"]).await });
        let _ = known;
        let mut result = None;
        for _ in 0..100 {
            if task.is_finished() {
                break;
            }
            if let Some(ar) = new_request(&env.api, &known2).await {
                let name = ar.metadata.name.clone().expect("name");
                let statement = ar.spec.operation.statement.clone().unwrap_or_default();
                let _ = env.decide("deny", &name, "bind");
                result = Some(Ok(format!(
                    "held for a new approval showing {:?}",
                    first_line(&statement.replace('\n', " "))
                )));
                break;
            }
        }
        let ended = tokio::time::timeout(Duration::from_secs(20), task).await;
        let result = result.unwrap_or_else(|| match ended {
            Ok(Ok(Ok(tag))) => Err(format!("ran without a new approval: {tag}")),
            Ok(Ok(Err(e))) => Ok(format!("refused: {e}")),
            other => Err(format!("{other:?}")),
        });
        t.row(
            "protocol Bind of a SQL-prepared statement",
            AGENT_SQL,
            if approved_first {
                "after `EXECUTE rt_q('Bound', 450)` was approved, Bind rt_q ('Bound', 0), Execute"
            } else {
                "Bind rt_q ('Bound', 0), Execute, no approval"
            },
            result,
        );
    }
    w.finish(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_guardrail_through_an_agent_view() {
    let w = world("rt-view").await;
    let (env, pg_port, direct_pg) = (&w.env, w.pg_port, w.direct_pg.clone());
    let mut t = Table(Vec::new());
    let base = direct_pg
        .simple_query(
            "CREATE OR REPLACE VIEW rt_twin_v AS SELECT * FROM customers; UPDATE rt_twin_v SET city = city WHERE id > 480",
        )
        .await;
    t.row(
        "agent-defined object",
        "direct PostgreSQL (baseline)",
        "an updatable view over customers writes customers",
        base.map(|m| format!("{} rows", affected(&m)))
            .map_err(|e| pg_message(&e)),
    );
    let c = connect(pg_port).await;
    let made = c
        .simple_query("CREATE OR REPLACE VIEW rt_v AS SELECT * FROM customers")
        .await;
    t.row(
        "agent-defined object",
        AGENT_SQL,
        format!(
            "view rt_v over customers created ({}), `UPDATE rt_v ... WHERE id > 480`",
            if made.is_ok() { "allowed" } else { "refused" }
        ),
        env.not_run(&c, "UPDATE rt_v SET city = city WHERE id > 480")
            .await,
    );
    w.finish(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_under_a_concurrent_flood() {
    let w = world("rt-flood").await;
    let (env, pg_port) = (&w.env, w.pg_port);
    let mut t = Table(Vec::new());
    // A flood from many sessions at once: the pending limit is counted before create.
    let known = names(&env.api).await;
    let mut sessions = Vec::new();
    for _ in 0..20 {
        sessions.push(connect(pg_port).await);
    }
    // Every session connected first, then all statements sent at once.
    let flood: Vec<_> = sessions
        .iter()
        .enumerate()
        .map(|(i, c)| {
            run(
                c,
                &format!("UPDATE customers SET city = 'Flood' WHERE id = {}", 100 + i),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let now = names(&env.api).await;
    let fresh: Vec<String> = now.into_iter().filter(|n| !known.contains(n)).collect();
    t.row(
        "limits",
        "agent, 20 sessions at once",
        "20 held statements sent at once with maxPending: 2",
        (fresh.len() <= 2)
            .then(|| format!("{} requests", fresh.len()))
            .ok_or_else(|| format!("{} pending requests with maxPending 2", fresh.len())),
    );
    for name in &fresh {
        let _ = env.decide("deny", name, "flood");
    }
    for task in flood {
        let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    }

    w.finish(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_statement_two_guardrails() {
    let w = world("rt-two").await;
    let (env, pg_port, direct_pg) = (&w.env, w.pg_port, w.direct_pg.clone());
    let mut t = Table(Vec::new());
    let _ = direct_pg
        .simple_query("DELETE FROM orders WHERE id >= 900000")
        .await;
    // A session grant for order-updates; then one statement that also inserts into orders
    // (order-inserts) and updates customers (customer-writes, another policy).
    let c = connect(pg_port).await;
    let first = env
        .try_approved(&c, "UPDATE orders SET status = status WHERE id = 1")
        .await;
    t.row(
        "one statement, two guardrails",
        AGENT_SQL,
        "a session grant for order-updates",
        first
            .map(|ar| format!("granted by {}", ar.metadata.name.unwrap_or_default()))
            .map_err(|e| format!("not granted: {e}")),
    );
    let both = "WITH i AS (INSERT INTO orders (id, customer_id, amount, status, placed_at) VALUES (900001, 1, 1, 'new', now()) RETURNING 1) UPDATE orders SET status = status WHERE id = 1";
    let fresh = connect(pg_port).await;
    t.row(
        "one statement, two guardrails",
        AGENT_SQL,
        "the same CTE statement in a session without a grant (it is classified and held)",
        env.not_run(&fresh, both).await,
    );
    t.row(
        "one statement, two guardrails",
        AGENT_SQL,
        "order-updates granted in the session, then an UPDATE with an INSERT into orders in a CTE",
        env.not_run(&c, both).await,
    );
    let cross = "WITH u AS (UPDATE customers SET city = city WHERE id > 0 RETURNING 1) UPDATE orders SET status = status WHERE id = 1";
    t.row(
        "one statement, two guardrails",
        AGENT_SQL,
        "order-updates granted in the session, then an UPDATE of orders with a bulk customers UPDATE in a CTE",
        env.not_run(&c, cross).await,
    );
    let _ = direct_pg
        .simple_query("DELETE FROM orders WHERE id >= 900000")
        .await;
    w.finish(t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_statement_two_policies() {
    let w = world("rt-twopol").await;
    let (env, pg_port, ns) = (&w.env, w.pg_port, w.ns.clone());
    let mut t = Table(Vec::new());
    let alice = harness().kubeconfig_of(User::Owner).to_owned();
    // customer-writes (policy shop) may be approved by agent-owners (alice); order-updates
    // (policy orders) only by portcullis-approvers. One statement needs both.
    let c = connect(pg_port).await;
    let both = "WITH o AS (UPDATE orders SET status = status WHERE id > 0 RETURNING 1) UPDATE customers SET city = 'Ghent' WHERE id = 24";
    let known = names(&env.api).await;
    let task = run(&c, both);
    let result = match new_request(&env.api, &known).await {
        None => match task.await {
            Ok(Ok(_)) => Err("ran without a request".to_owned()),
            Ok(Err(e)) => Ok(format!("refused: {}", pg_message(&e))),
            Err(e) => Err(e.to_string()),
        },
        Some(ar) => {
            let name = ar.metadata.name.clone().expect("name");
            let out = common::plugin(
                &alice,
                &["approve", &name, "-n", &ns, "--reason", "one customer"],
            );
            let ended = tokio::time::timeout(Duration::from_secs(20), task).await;
            match ended {
                Ok(Ok(Ok(m))) => Err(format!(
                    "asked only {}/{}; approved by alice (agent-owners, not an orders approver), ran (tag: {} rows, the CTE's orders rows not counted)",
                    ar.spec.policy,
                    ar.spec.rule,
                    affected(&m)
                )),
                other => Ok(format!(
                    "asked {}/{}; alice's approval {}: {:?}",
                    ar.spec.policy,
                    ar.spec.rule,
                    if out.status.success() {
                        "accepted"
                    } else {
                        "refused"
                    },
                    other.map(|r| r.map(|r| r.map(|_| ()).map_err(|e| pg_message(&e))))
                )),
            }
        }
    };
    t.row(
        "one statement, two policies",
        "approver of one policy only (alice)",
        "a bulk orders UPDATE in the CTE of a one-customer UPDATE",
        result,
    );
    w.finish(t).await;
}
