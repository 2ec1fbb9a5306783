//! Red-team attempts (rt19) against the guardrail and masking guarantees: each attempt first
//! has its effect on a direct connection, then must be refused (or carry nothing) through the
//! sidecar. Rows that break are kept asserting the safe outcome and marked `#[ignore]`.

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::bypass::{
    admin_password, answer, error_text, run_attempts, setup, superuser_conn_str, Attempt,
    ALLOW_LIST, CONTACT_1_GONE, CRM, LEADS_LIMIT, MASK_SSN, POLICY, PREDICATES, PURGED, SUPERUSER,
};
use crate::common::{connect, ProxyBuilder};

/// Objects the attempts below rely on (all already in the database before the agent comes).
pub(crate) async fn setup_rt() -> Client {
    let shop = setup().await;
    shop.batch_execute(
        "CREATE TABLE IF NOT EXISTS public.contacts (id int PRIMARY KEY, name text);
         DO $$ BEGIN CREATE ROLE crm NOLOGIN;
           EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
         GRANT USAGE ON SCHEMA crm TO crm;
         GRANT ALL ON crm.contacts TO crm;
         CREATE OR REPLACE VIEW public.rt_contacts AS SELECT * FROM crm.contacts;
         CREATE OR REPLACE FUNCTION public.rt_open_delete() RETURNS refcursor LANGUAGE plpgsql AS $$
           DECLARE c refcursor := 'rt_del_c';
           BEGIN OPEN c FOR EXECUTE 'DELETE FROM crm.contacts WHERE id = 1 RETURNING id'; RETURN c; END $$;
         CREATE OR REPLACE FUNCTION crm.rt_open_leads() RETURNS refcursor LANGUAGE plpgsql AS $$
           DECLARE c refcursor := 'rt_leads_c';
           BEGIN OPEN c FOR SELECT * FROM crm.leads; RETURN c; END $$;",
    )
    .await
    .expect("red-team setup");
    shop
}

// ---------------------------------------------------------------------------------------
// Family 1: names resolved to what the server will use.

const RT_GUARDS: &[Attempt] = &[
    Attempt {
        family: "1/4 guarded delete inside a temporary SQL function the session creates",
        steps: &[
            "CREATE FUNCTION pg_temp.rt_f() RETURNS void LANGUAGE sql AS 'DELETE FROM crm.contacts WHERE id = 1'",
            "SELECT pg_temp.rt_f()",
        ],
        rule: "",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1/4 guarded delete inside a BEGIN ATOMIC temporary function",
        steps: &[
            "CREATE FUNCTION pg_temp.rt_g() RETURNS void LANGUAGE sql BEGIN ATOMIC DELETE FROM crm.contacts WHERE id = 1; END",
            "SELECT pg_temp.rt_g()",
        ],
        rule: "",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 temporary view named like a table, searched first",
        steps: &[
            "CREATE TEMP VIEW contacts AS SELECT * FROM crm.contacts",
            "DELETE FROM contacts WHERE id = 1",
        ],
        rule: "",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 rule on a temporary table that deletes from the guarded table",
        steps: &[
            "CREATE TEMP TABLE rt_trigger (id int)",
            "CREATE RULE rt_r AS ON INSERT TO rt_trigger DO ALSO DELETE FROM crm.contacts WHERE id = NEW.id",
            "INSERT INTO rt_trigger VALUES (1)",
        ],
        rule: "",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 SET ROLE changes what \"$user\" in the default search_path resolves to",
        steps: &["SET ROLE crm", "DELETE FROM contacts WHERE id = 1"],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 SET SESSION AUTHORIZATION changes \"$user\"",
        steps: &[
            "SET SESSION AUTHORIZATION crm",
            "DELETE FROM contacts WHERE id = 1",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 SET ROLE and DELETE in one query string",
        steps: &["SET ROLE crm; DELETE FROM contacts WHERE id = 1"],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 prepared statement re-parsed by the server under a new search_path",
        steps: &[
            "PREPARE rt_del AS DELETE FROM contacts WHERE id = 1",
            "SET search_path = crm, public",
            "EXECUTE rt_del",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 ROLLBACK TO SAVEPOINT restores a path",
        steps: &[
            "SET search_path = crm, public",
            "BEGIN",
            "SAVEPOINT s",
            "SET search_path = public",
            "ROLLBACK TO SAVEPOINT s",
            "DELETE FROM contacts WHERE id = 1",
            "COMMIT",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 set_config with a Unicode-escaped string literal",
        steps: &[
            r"SELECT set_config('search_path', U&'cr\006d', false)",
            "DELETE FROM contacts WHERE id = 1",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 set_config with a computed value",
        steps: &[
            "SELECT set_config('search_path', 'cr' || chr(109), false)",
            "DELETE FROM contacts WHERE id = 1",
        ],
        rule: "",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 set_config hidden in a WHERE clause",
        steps: &[
            "SELECT 1 WHERE pg_catalog.set_config('search_path', 'crm', false) IS NOT NULL",
            "DELETE FROM contacts WHERE id = 1",
        ],
        rule: "",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 delete through a view over the guarded table",
        steps: &["DELETE FROM public.rt_contacts WHERE id = 1"],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1/4 denied function called inside query_to_xml's query string",
        steps: &["SELECT query_to_xml('SELECT crm.purge()', true, false, '')"],
        rule: "",
        effect: PURGED,
    },
    Attempt {
        family: "1/4 denied function called inside ts_stat's query string",
        steps: &["SELECT * FROM ts_stat('SELECT to_tsvector(crm.purge()::text)')"],
        rule: "",
        effect: PURGED,
    },
    Attempt {
        family: "1/4 guarded delete run by a cursor opened in server code",
        steps: &[
            "BEGIN",
            "SELECT public.rt_open_delete()",
            "FETCH ALL FROM rt_del_c",
            "COMMIT",
        ],
        rule: "",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 denied function in a session view",
        steps: &[
            "CREATE TEMP VIEW rt_pv AS SELECT crm.purge()::text AS x",
            "SELECT * FROM rt_pv",
        ],
        rule: "",
        effect: PURGED,
    },
    Attempt {
        family: "1 denied function in a column default of a session table",
        steps: &[
            "CREATE TEMP TABLE rt_def (x text DEFAULT crm.purge()::text)",
            "INSERT INTO rt_def DEFAULT VALUES",
        ],
        rule: "",
        effect: PURGED,
    },
    Attempt {
        family: "1 denied function in a CHECK constraint of a session table",
        steps: &[
            "CREATE TEMP TABLE rt_chk (x int CHECK (crm.purge() IS NULL OR x > 0))",
            "INSERT INTO rt_chk VALUES (1)",
        ],
        rule: "",
        effect: PURGED,
    },
    Attempt {
        family: "1 denied function in a cursor fetched later",
        steps: &[
            "BEGIN",
            "DECLARE rt_pc CURSOR FOR SELECT crm.purge()",
            "FETCH ALL FROM rt_pc",
            "COMMIT",
        ],
        rule: "",
        effect: PURGED,
    },
    Attempt {
        family: "1 SET LOCAL ROLE changes \"$user\" for the transaction",
        steps: &[
            "BEGIN",
            "SET LOCAL ROLE crm",
            "DELETE FROM contacts WHERE id = 1",
            "COMMIT",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "1 set_config('role') changes \"$user\"",
        steps: &[
            "SELECT set_config('role', 'crm', false)",
            "DELETE FROM contacts WHERE id = 1",
        ],
        rule: "",
        effect: CONTACT_1_GONE,
    },
];

const RT_ALLOW: &[Attempt] = &[
    Attempt {
        family: "4 allowList: server code run from query_to_xml's query string",
        steps: &["SELECT query_to_xml('SELECT public.b4_purge()', true, false, '')"],
        rule: "",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "4 allowList: server code run from ts_stat's query string",
        steps: &["SELECT * FROM ts_stat('SELECT to_tsvector(public.b4_purge()::text)')"],
        rule: "",
        effect: CONTACT_1_GONE,
    },
];

pub(crate) const RT_UNBOUNDED_POLICY: &str = r#"guardrails:
- name: unbounded-writes
  missingWhere: true
  action: deny
"#;

const RT_ALL_GONE: &str = "SELECT NOT EXISTS (SELECT 1 FROM crm.contacts)";
const RT_ALL_RENAMED: &str = "SELECT bool_and(name = 'x') FROM crm.contacts";

const RT_UNBOUNDED: &[Attempt] = &[
    Attempt {
        family: "2 system column ctid IS NOT NULL",
        steps: &["DELETE FROM crm.contacts WHERE ctid IS NOT NULL"],
        rule: "",
        effect: RT_ALL_GONE,
    },
    Attempt {
        family: "2 tableoid equals the table",
        steps: &["UPDATE crm.contacts SET name = 'x' WHERE tableoid = 'crm.contacts'::regclass"],
        rule: "",
        effect: RT_ALL_RENAMED,
    },
    Attempt {
        family: "2 correlated subquery returning the row's own key",
        steps: &["DELETE FROM crm.contacts c WHERE c.id = (SELECT c.id)"],
        rule: "",
        effect: RT_ALL_GONE,
    },
    Attempt {
        family: "2 NOT IN a constant subquery",
        steps: &["DELETE FROM crm.contacts WHERE id NOT IN (SELECT -1)"],
        rule: "",
        effect: RT_ALL_GONE,
    },
    Attempt {
        family: "2 scalar subquery of true",
        steps: &["UPDATE crm.contacts SET name = 'x' WHERE (SELECT true)"],
        rule: "",
        effect: RT_ALL_RENAMED,
    },
    Attempt {
        family: "2 null-safe self comparison of a nullable column",
        steps: &["UPDATE crm.contacts SET name = 'x' WHERE name IS NOT DISTINCT FROM name"],
        rule: "",
        effect: RT_ALL_RENAMED,
    },
    Attempt {
        family: "2 MERGE ON true",
        steps: &["MERGE INTO crm.contacts c USING (VALUES (1)) v(x) ON true WHEN MATCHED THEN DELETE"],
        rule: "",
        effect: RT_ALL_GONE,
    },
    Attempt {
        family: "2 upsert fed from the target table itself",
        steps: &["INSERT INTO crm.contacts SELECT id, 'x' FROM crm.contacts ON CONFLICT (id) DO UPDATE SET name = excluded.name"],
        rule: "",
        effect: RT_ALL_RENAMED,
    },
    Attempt {
        family: "2 upsert fed from a huge generated series",
        steps: &["INSERT INTO crm.contacts SELECT g, 'x' FROM generate_series(-100000, 100000) g ON CONFLICT (id) DO UPDATE SET name = excluded.name"],
        rule: "",
        effect: RT_ALL_RENAMED,
    },
    Attempt {
        family: "2 IS DISTINCT FROM NULL on the key",
        steps: &["DELETE FROM crm.contacts WHERE id IS DISTINCT FROM NULL"],
        rule: "",
        effect: RT_ALL_GONE,
    },
    Attempt {
        family: "2 coalesce compared with itself",
        steps: &["UPDATE crm.contacts SET name = 'x' WHERE coalesce(id, 0) = coalesce(id, 0)"],
        rule: "",
        effect: RT_ALL_RENAMED,
    },
    Attempt {
        family: "2 EXISTS of a constant",
        steps: &["DELETE FROM crm.contacts WHERE EXISTS (SELECT 1)"],
        rule: "",
        effect: RT_ALL_GONE,
    },
    Attempt {
        family: "2 = ANY of the whole table's keys",
        steps: &["DELETE FROM crm.contacts WHERE id = ANY (ARRAY(SELECT id FROM crm.contacts))"],
        rule: "",
        effect: RT_ALL_GONE,
    },
    Attempt {
        family: "2 IN a generated series",
        steps: &["UPDATE crm.contacts SET name = 'x' WHERE id IN (SELECT generate_series(-100000, 100000))"],
        rule: "",
        effect: RT_ALL_RENAMED,
    },
    Attempt {
        family: "2 a boolean cast of a constant",
        steps: &["DELETE FROM crm.contacts WHERE 't'::boolean"],
        rule: "",
        effect: RT_ALL_GONE,
    },
    Attempt {
        family: "2 a NOT NULL test on the text cast of the key",
        steps: &["UPDATE crm.contacts SET name = 'x' WHERE id::text IS NOT NULL"],
        rule: "",
        effect: RT_ALL_RENAMED,
    },
    Attempt {
        family: "2 TRUNCATE",
        steps: &["TRUNCATE crm.contacts"],
        rule: "",
        effect: RT_ALL_GONE,
    },
    Attempt {
        family: "2 data-modifying CTE feeding an INSERT",
        steps: &["WITH d AS (DELETE FROM crm.contacts WHERE id IS DISTINCT FROM NULL RETURNING id) INSERT INTO crm.purges SELECT now() FROM d"],
        rule: "",
        effect: RT_ALL_GONE,
    },
];

async fn guards(a: &[Attempt]) {
    {
        let _crm = CRM.lock().await;
        setup_rt().await;
    }
    run_attempts(a, POLICY).await;
}

async fn allow(a: &[Attempt]) {
    {
        let _crm = CRM.lock().await;
        setup_rt().await;
    }
    run_attempts(a, ALLOW_LIST).await;
}

async fn unbounded(a: &[Attempt]) {
    {
        let _crm = CRM.lock().await;
        setup_rt().await;
    }
    run_attempts(a, RT_UNBOUNDED_POLICY).await;
}

/// One test per row of a table, so that one row that breaks does not hide the others.
macro_rules! rows {
    ($runner:ident, $table:ident, $($(#[$m:meta])* $name:ident = $i:expr),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$m])*
            async fn $name() {
                $runner(&$table[$i..=$i]).await;
            }
        )*
    };
}

rows!(
    guards,
    RT_GUARDS,
    rt_g00 = 4,
    rt_g01 = 5,
    rt_g02 = 6,
    rt_g03 = 7,
    rt_g04 = 8,
    rt_g05 = 9,
    rt_g06 = 10,
    rt_g07 = 11,
    rt_g08 = 12,
    rt_g09 = 13,
    rt_g10 = 14,
    rt_g11 = 15,
    rt_g12 = 0,
    rt_g13 = 1,
    rt_g14 = 2,
    rt_g15 = 3,
    rt_g16 = 16,
    rt_g17 = 17,
    rt_g18 = 18,
    rt_g19 = 19,
    rt_g20 = 20,
    rt_g21 = 21,
);
rows!(allow, RT_ALLOW, rt_a00 = 0, rt_a01 = 1);
rows!(
    unbounded,
    RT_UNBOUNDED,
    rt_u00 = 6,
    rt_u01 = 7,
    rt_u02 = 8,
    rt_u03 = 9,
    rt_u04 = 10,
    rt_u05 = 11,
    rt_u06 = 12,
    rt_u07 = 13,
    rt_u08 = 14,
    rt_u09 = 15,
    rt_u10 = 16,
    rt_u11 = 17,
    rt_u12 = 0,
    rt_u13 = 1,
    rt_u14 = 2,
    rt_u15 = 3,
    rt_u16 = 4,
    rt_u17 = 5,
);

// ---------------------------------------------------------------------------------------
// Family 3: row limits.

/// Every text the client received: all columns of all rows.
fn all_text(messages: &[SimpleQueryMessage]) -> String {
    let mut out = String::new();
    for m in messages {
        if let SimpleQueryMessage::Row(r) = m {
            for i in 0..r.len() {
                out.push_str(r.get(i).unwrap_or(""));
                out.push('\n');
            }
        }
    }
    out
}

/// Ways the 100 leads leave in fewer than 40 rows.
const RT_ROW_CARRIERS: &[(&str, &[&str])] = &[
    (
        "3 temporary SQL function over the limited table",
        &[
            "CREATE FUNCTION pg_temp.rt_l() RETURNS SETOF crm.leads LANGUAGE sql AS 'SELECT * FROM crm.leads'",
            "SELECT * FROM pg_temp.rt_l()",
        ],
    ),
    (
        "3 UPDATE ... RETURNING every row",
        &["UPDATE crm.leads SET email = email RETURNING email"],
    ),
    (
        "3 DELETE ... RETURNING in a transaction rolled back",
        &["BEGIN", "DELETE FROM crm.leads RETURNING email", "ROLLBACK"],
    ),
    (
        "3 all rows in the message of an exception raised by a DO block",
        &["DO $$ BEGIN RAISE EXCEPTION '%', (SELECT string_agg(email, ',') FROM crm.leads); END $$"],
    ),
    (
        "3 all rows folded into one by string_agg",
        &["SELECT string_agg(email, ',') FROM crm.leads"],
    ),
    (
        "3 all rows folded into one by json_agg of the whole row",
        &["SELECT json_agg(l)::text FROM crm.leads l"],
    ),
    (
        "3 all rows in one XML document (table_to_xml)",
        &["SELECT table_to_xml('crm.leads', true, false, '')::text"],
    ),
    (
        "3 all rows in one XML document (query_to_xml)",
        &["SELECT query_to_xml('SELECT * FROM crm.leads', true, false, '')::text"],
    ),
    (
        "3 cursor opened in server code, fetched by name",
        &[
            "BEGIN",
            "SELECT crm.rt_open_leads()",
            "FETCH ALL FROM rt_leads_c",
        ],
    ),
    (
        "3 rows copied into a temporary table, then read in pieces",
        &[
            "CREATE TEMP TABLE rt_leads AS SELECT * FROM crm.leads",
            "SELECT * FROM rt_leads WHERE id <= 35",
            "SELECT * FROM rt_leads WHERE id > 35 AND id <= 70",
            "SELECT * FROM rt_leads WHERE id > 70",
        ],
    ),
    (
        "3 rows folded by array_agg, unfolded by unnest",
        &["SELECT unnest(array_agg(email)) FROM crm.leads"],
    ),
    (
        "3 whole rows folded, unfolded in a lateral unnest",
        &["SELECT u.email FROM (SELECT array_agg(l) AS a FROM crm.leads l) s, unnest(s.a) u"],
    ),
];

/// How many distinct lead e-mails a text holds.
fn leads_in(text: &str) -> usize {
    (1..=100)
        .filter(|i| text.contains(&format!("lead{i}@example.com")))
        .count()
}

async fn rt_row_limits(attempts: &[(&str, &[&str])]) {
    let _crm = CRM.lock().await;
    setup_rt().await;
    let proxy = ProxyBuilder::default()
        .credential(SUPERUSER, &admin_password())
        .policy("leads", LEADS_LIMIT)
        .start()
        .await;
    for (family, steps) in attempts {
        let direct = connect(&superuser_conn_str()).await;
        let mut text = String::new();
        for step in *steps {
            match direct.simple_query(step).await {
                Ok(rows) => text.push_str(&all_text(&rows)),
                Err(e) => text.push_str(&error_text(&e)),
            }
        }
        assert!(
            leads_in(&text) > 40,
            "{family}: directly {}",
            leads_in(&text)
        );
        let client = proxy.client().await;
        let mut text = String::new();
        for step in *steps {
            match client.simple_query(step).await {
                Ok(rows) => text.push_str(&all_text(&rows)),
                Err(e) => {
                    text.push_str(&error_text(&e));
                    break;
                }
            }
        }
        let n = leads_in(&text);
        assert!(n <= 40, "{family}: {n} leads left through the sidecar");
    }
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------
// Masking: values that leave through query strings, server errors, temporary copies.

/// (family, steps). `{tr}` in the check stands for the SSN with its digits turned to letters.
const RT_MASK_CARRIERS: &[(&str, &[&str], &str)] = &[
    (
        "temporary SQL function with the query in a string body",
        &[
            "CREATE FUNCTION pg_temp.rt_s() RETURNS text LANGUAGE sql AS 'SELECT ssn FROM customers WHERE id = 1'",
            "SELECT pg_temp.rt_s()",
        ],
        "{ssn}",
    ),
    (
        "temporary BEGIN ATOMIC function",
        &[
            "CREATE FUNCTION pg_temp.rt_t() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT ssn FROM customers WHERE id = 1; END",
            "SELECT pg_temp.rt_t()",
        ],
        "{ssn}",
    ),
    (
        "5/query string: ts_rewrite runs a query the sidecar never parses",
        &["SELECT ts_rewrite('x'::tsquery, 'SELECT ''x''::tsquery, to_tsquery(''simple'', translate(ssn, ''0123456789-'', ''abcdefghijz'')) FROM customers WHERE id = 1')::text"],
        "{tr}",
    ),
    (
        "5 masked value in the message of an exception raised by a DO block",
        &["DO $$ BEGIN RAISE EXCEPTION '%', (SELECT translate(ssn, '0123456789', 'abcdefghij') FROM customers WHERE id = 1); END $$"],
        "{tr}",
    ),
    (
        "5 transform in an error message (regnamespace)",
        &["SELECT translate(ssn, '0123456789', 'abcdefghij')::regnamespace FROM customers WHERE id = 1"],
        "{tr}",
    ),
    (
        "5 transform in an error message (out of range)",
        &["SELECT translate(ssn, '-', '')::int2 FROM customers WHERE id = 1"],
        "{ssn}",
    ),
    (
        "lineage: object keys of a JSON built from the column",
        &["SELECT k FROM customers c, jsonb_object_keys(jsonb_build_object(c.ssn, 1)) k WHERE c.id = 1"],
        "{ssn}",
    ),
    (
        "lineage: XMLTABLE column",
        &["SELECT x.v FROM customers c, XMLTABLE('/r' PASSING xmlelement(name r, c.ssn) COLUMNS v text PATH '.') x WHERE c.id = 1"],
        "{ssn}",
    ),
    (
        "lineage: field of a whole row passed through a derived table",
        &["SELECT (s.c).ssn FROM (SELECT c FROM customers c WHERE id = 1) s"],
        "{ssn}",
    ),
    (
        "lineage: jsonb_populate_record of the row",
        &["SELECT (jsonb_populate_record(NULL::customers, to_jsonb(c))).ssn FROM customers c WHERE id = 1"],
        "{ssn}",
    ),
    (
        "lineage: recursive CTE peeling characters",
        &["WITH RECURSIVE r(i, ch) AS (SELECT 0, ''::text UNION ALL SELECT i + 1, substr((SELECT ssn FROM customers WHERE id = 1), i + 1, 1) FROM r WHERE i < 20) SELECT string_agg(ch, '' ORDER BY i) FROM r"],
        "{ssn}",
    ),
    (
        "cursor opened in server code, fetched by name",
        &["BEGIN", "SELECT public.rt_open_ssn()", "FETCH ALL FROM rt_ssn_c"],
        "{ssn}",
    ),
    (
        "binary cursor",
        &["BEGIN", "DECLARE rt_bin BINARY CURSOR FOR SELECT ssn FROM customers WHERE id = 1", "FETCH ALL FROM rt_bin"],
        "{ssn}",
    ),
    (
        "5/query string: query_to_xml runs a query the sidecar never parses",
        &["SELECT query_to_xml('SELECT ssn FROM customers WHERE id = 1', true, false, '')::text"],
        "{ssn}",
    ),
    (
        "5/query string: table_to_xml",
        &["SELECT table_to_xml('public.customers', true, false, '')::text"],
        "{ssn}",
    ),
    (
        "5/query string: ts_stat",
        &["SELECT string_agg(word, ' ') FROM ts_stat('SELECT to_tsvector(''simple'', translate(ssn, ''0123456789-'', ''abcdefghijz'')) FROM customers WHERE id = 1')"],
        "{tr}",
    ),
    (
        "5 error COLUMN field set by server code",
        &["SELECT public.rt_raise_column(1)"],
        "{tr}",
    ),
    (
        "5 error HINT field set by server code",
        &["SELECT public.rt_raise_hint(1)"],
        "{tr}",
    ),
    (
        "5/11 temporary copy of a transform, read back",
        &[
            "CREATE TEMP TABLE rt_t AS SELECT translate(ssn, '0123456789', 'abcdefghij') AS x FROM customers WHERE id = 1",
            "SELECT x FROM rt_t",
        ],
        "{tr}",
    ),
];

fn translated(ssn: &str) -> String {
    ssn.chars()
        .map(|c| match c.to_digit(10) {
            Some(d) => (b'a' + d as u8) as char,
            None => c,
        })
        .collect()
}

const RT_MASK_FUNCTIONS: &str = "CREATE OR REPLACE FUNCTION public.rt_raise_column(i int) RETURNS int LANGUAGE plpgsql AS $$
           DECLARE v text;
           BEGIN SELECT ssn INTO v FROM customers WHERE id = i;
             RAISE EXCEPTION 'nothing to see' USING COLUMN = translate(v, '0123456789', 'abcdefghij');
           END $$;
         CREATE OR REPLACE FUNCTION public.rt_raise_hint(i int) RETURNS int LANGUAGE plpgsql AS $$
           DECLARE v text;
           BEGIN SELECT ssn INTO v FROM customers WHERE id = i;
             RAISE EXCEPTION 'nothing to see' USING HINT = translate(v, '0123456789', 'abcdefghij');
           END $$;
         CREATE OR REPLACE FUNCTION public.rt_open_ssn() RETURNS refcursor LANGUAGE plpgsql AS $$
           DECLARE c refcursor := 'rt_ssn_c';
           BEGIN OPEN c FOR SELECT ssn FROM customers WHERE id = 1; RETURN c; END $$;";

async fn rt_mask(attempts: &[(&str, &[&str], &str)]) {
    let shop = setup().await;
    // Tests running at once replace the same functions: the server refuses one of two
    // concurrent replacements ("tuple concurrently updated"), which a retry settles.
    let mut tries = 0;
    while let Err(e) = shop.batch_execute(RT_MASK_FUNCTIONS).await {
        tries += 1;
        let concurrent = e
            .as_db_error()
            .is_some_and(|d| d.message().contains("concurrently"));
        assert!(concurrent && tries < 10, "functions: {e:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let clear: String = shop
        .query_one("SELECT ssn FROM customers WHERE id = 1", &[])
        .await
        .expect("ssn")
        .get(0);
    let fill = |s: &str| {
        s.replace("{ssn}", &clear)
            .replace("{tr}", &translated(&clear).replace('-', "z"))
    };
    let proxy = ProxyBuilder::default()
        .policy("mask", MASK_SSN)
        .start()
        .await;
    for (family, steps, marker) in attempts {
        let marker = fill(marker);
        let run = |client: Client| async move {
            let mut text = String::new();
            for step in *steps {
                match client.simple_query(step).await {
                    Ok(rows) => text.push_str(&all_text(&rows)),
                    Err(e) => {
                        text.push_str(&error_text(&e));
                        break;
                    }
                }
            }
            text
        };
        let d = run(crate::common::direct().await).await;
        // Loose form: the marker with separators removed also counts.
        let loose = |t: &str| t.replace(['-', ' ', 'z'], "");
        assert!(
            loose(&d).contains(&loose(&marker)),
            "{family}: direct output does not carry the value: {d}"
        );
        let p = run(proxy.client().await).await;
        assert!(
            !loose(&p).contains(&loose(&marker)),
            "{family}: masked value through the sidecar: {p}"
        );
    }
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------
// Predicates: questions about masked columns answered one bit at a time.

/// (what, statement, answer directly or `error <code>`; `*` for any answer).
const RT_PREDICATES: &[(&str, &str, &str)] = &[
    (
        "LIKE inside query_to_xml's query string",
        "SELECT query_to_xml('SELECT count(*) AS n FROM customers WHERE id = 1 AND ssn LIKE ''{d}%''', true, false, '')::text",
        "*",
    ),
    (
        "LIKE decided in a DO block, answered by whether it raises",
        "DO $$ BEGIN IF (SELECT ssn FROM customers WHERE id = 1) LIKE '{d}%' THEN RAISE EXCEPTION 'yes'; END IF; END $$",
        "error P0001",
    ),
    (
        "error oracle: division by zero iff the first digit is the guess",
        "SELECT (1 / (ascii(ssn) - ascii('{d}')))::text FROM customers WHERE id = 1",
        "error 22012",
    ),
    (
        "hypothetical-set aggregate ranks a guess among the values",
        "SELECT (rank('{d}') WITHIN GROUP (ORDER BY ssn))::text FROM customers",
        "*",
    ),
    (
        "ORDER BY inside an aggregate",
        "SELECT ((array_agg(id ORDER BY ssn, id))[1])::text FROM customers",
        "{min_ssn_id}",
    ),
    (
        "row comparison is a range",
        "SELECT count(*)::text FROM customers WHERE id = 1 AND (ssn, id) >= ('{d}', 0) AND (ssn, id) < ('{d}~', 0)",
        "1",
    ),
    (
        "JOIN USING against a generated column",
        "SELECT g.ssn FROM customers c JOIN (SELECT to_char(n, 'FM000') || '{rest}' AS ssn FROM generate_series(100, 999) n) g USING (ssn) WHERE c.id = 1",
        "{ssn}",
    ),
    (
        "IN a subquery of the masked column, generated candidates",
        "SELECT x FROM (SELECT to_char(n, 'FM000') || '{rest}' AS x FROM generate_series(100, 999) n) g WHERE x IN (SELECT ssn FROM customers WHERE id = 1)",
        "{ssn}",
    ),
    (
        "= ANY of a generated array",
        "SELECT count(*)::text FROM customers WHERE id = 1 AND ssn = ANY (ARRAY(SELECT to_char(n, 'FM000') || '{rest}' FROM generate_series(100, 999) n))",
        "1",
    ),
    (
        "INTERSECT with generated candidates",
        "SELECT count(*)::text FROM (SELECT ssn FROM customers WHERE id = 1 INTERSECT SELECT to_char(n, 'FM000') || '{rest}' FROM generate_series(100, 999) n) s",
        "1",
    ),
    (
        "window PARTITION BY a function of the column",
        "SELECT c::text FROM (SELECT id, count(*) OVER (PARTITION BY left(ssn, 1)) c FROM customers) s WHERE id = 1",
        "{first_digit_count}",
    ),
    (
        "count(DISTINCT column)",
        "SELECT count(DISTINCT ssn)::text FROM customers",
        "{distinct_ssns}",
    ),
    (
        "deny: count(column) tells null from not null",
        "SELECT count(card_number)::text FROM customers WHERE id = {card_id}",
        "1",
    ),
    (
        "NATURAL JOIN against generated candidates",
        "SELECT s.ssn FROM (SELECT id, ssn FROM customers WHERE id = 1) c NATURAL JOIN (SELECT 1 AS id, to_char(n, 'FM000') || '{rest}' AS ssn FROM generate_series(100, 999) n) s",
        "{ssn}",
    ),
    (
        "EXCEPT with generated candidates",
        "SELECT count(*)::text FROM (SELECT ssn FROM customers WHERE id = 1 EXCEPT SELECT to_char(n, 'FM000') || '{rest}' FROM generate_series(100, 999) n) s",
        "0",
    ),
    (
        "UNION deduplicates the value against generated candidates",
        "SELECT count(*)::text FROM (SELECT ssn FROM customers WHERE id = 1 UNION SELECT to_char(n, 'FM000') || '{rest}' FROM generate_series(100, 999) n) s",
        "900",
    ),
    (
        "DISTINCT over the value and a guess",
        "SELECT count(*)::text FROM (SELECT DISTINCT x FROM (SELECT ssn AS x FROM customers WHERE id = 1 UNION ALL SELECT '{ssn}') u) d",
        "1",
    ),
];

struct Truth {
    ssn: String,
    card_id: i32,
    min_ssn_id: i32,
    first_digit_count: i64,
    distinct_ssns: i64,
}

impl Truth {
    fn fill(&self, text: &str) -> String {
        let first = self.ssn.chars().next().unwrap_or('0').to_string();
        text.replace("{d}", &first)
            .replace("{ssn}", &self.ssn)
            .replace("{rest}", &self.ssn[3..])
            .replace("{card_id}", &self.card_id.to_string())
            .replace("{min_ssn_id}", &self.min_ssn_id.to_string())
            .replace("{first_digit_count}", &self.first_digit_count.to_string())
            .replace("{distinct_ssns}", &self.distinct_ssns.to_string())
    }
}

async fn truth(direct: &Client) -> Truth {
    let one = direct
        .query_one("SELECT ssn FROM customers WHERE id = 1", &[])
        .await
        .expect("customer 1");
    let card_id: i32 = direct
        .query_one(
            "SELECT id FROM customers WHERE card_number IS NOT NULL ORDER BY id LIMIT 1",
            &[],
        )
        .await
        .expect("a card")
        .get(0);
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
        card_id,
    }
}

async fn rt_predicates(attempts: &[(&str, &str, &str)]) {
    setup().await;
    let direct = crate::common::direct().await;
    let truth = truth(&direct).await;
    let proxy = ProxyBuilder::default()
        .policy("people", PREDICATES)
        .start()
        .await;
    for (what, sql, expected) in attempts {
        let sql = truth.fill(sql);
        let d = match direct.simple_query(&sql).await {
            Ok(rows) => answer(&rows),
            Err(e) => format!("error {}", e.code().map(|c| c.code()).unwrap_or("?")),
        };
        if *expected != "*" {
            assert_eq!(d, truth.fill(expected), "{what}: directly");
        } else {
            assert!(!d.starts_with("error"), "{what}: directly {d}");
        }
        let client = proxy.client().await;
        match client.simple_query(&sql).await {
            // A masked answer carries nothing.
            Ok(rows) if answer(&rows) != d => {}
            Ok(rows) => panic!("{what}: forwarded, answered {:?}", answer(&rows)),
            Err(e) => {
                let db = e.as_db_error().unwrap_or_else(|| panic!("{what}: {e:?}"));
                assert_eq!(
                    db.code(),
                    &SqlState::INSUFFICIENT_PRIVILEGE,
                    "{what}: the server answered: {db:?}"
                );
            }
        }
    }
    proxy.stop().await;
}

rows!(
    rt_row_limits,
    RT_ROW_CARRIERS,
    rt_r00 = 1,
    rt_r01 = 2,
    rt_r02 = 3,
    rt_r03 = 4,
    rt_r04 = 5,
    rt_r05 = 6,
    rt_r06 = 7,
    rt_r07 = 8,
    rt_r08 = 9,
    rt_r09 = 0,
    rt_r10 = 10,
    rt_r11 = 11,
);
rows!(
    rt_mask,
    RT_MASK_CARRIERS,
    rt_m00 = 2,
    rt_m01 = 3,
    rt_m02 = 4,
    rt_m03 = 5,
    rt_m04 = 6,
    rt_m05 = 7,
    rt_m06 = 8,
    rt_m07 = 9,
    rt_m08 = 10,
    rt_m09 = 11,
    rt_m10 = 12,
    rt_m11 = 13,
    rt_m12 = 14,
    rt_m13 = 15,
    rt_m14 = 16,
    rt_m15 = 17,
    rt_m16 = 18,
    rt_m17 = 0,
    rt_m18 = 1,
);
rows!(
    rt_predicates,
    RT_PREDICATES,
    rt_p00 = 0,
    rt_p01 = 1,
    rt_p02 = 2,
    rt_p03 = 3,
    rt_p04 = 4,
    rt_p05 = 5,
    rt_p06 = 6,
    rt_p07 = 7,
    rt_p08 = 8,
    rt_p09 = 9,
    rt_p10 = 10,
    rt_p11 = 11,
    rt_p12 = 12,
    rt_p13 = 13,
    rt_p14 = 14,
    rt_p15 = 15,
    rt_p16 = 16,
);

const RT_RESTORE: &str =
    "INSERT INTO crm.contacts SELECT g, 'contact ' || g FROM generate_series(1, 5) g
       ON CONFLICT DO NOTHING;
     DELETE FROM crm.purges;";

async fn contact_1_gone(shop: &Client) -> bool {
    shop.query_one(CONTACT_1_GONE, &[])
        .await
        .expect("effect")
        .get(0)
}

fn assert_refused(what: &str, e: &tokio_postgres::Error) {
    let db = e.as_db_error().unwrap_or_else(|| panic!("{what}: {e:?}"));
    assert_eq!(
        db.code(),
        &SqlState::INSUFFICIENT_PRIVILEGE,
        "{what}: {db:?}"
    );
}

/// Family 1 through the extended protocol: a statement parsed (named) while `contacts` meant
/// `public.contacts` is re-parsed by the server under the search_path of its execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt_protocol_statement_reparsed_under_new_path() {
    let _crm = CRM.lock().await;
    let shop = setup_rt().await;
    const WHAT: &str = "1 protocol Parse, then SET search_path, then Bind/Execute";
    shop.batch_execute(RT_RESTORE).await.expect("restore");
    let direct = connect(&superuser_conn_str()).await;
    let stmt = direct
        .prepare("DELETE FROM contacts WHERE id = 1")
        .await
        .expect("prepare directly");
    direct
        .simple_query("SET search_path = crm, public")
        .await
        .expect("path");
    direct.execute(&stmt, &[]).await.expect("execute directly");
    assert!(contact_1_gone(&shop).await, "{WHAT}: no effect directly");
    shop.batch_execute(RT_RESTORE).await.expect("restore");
    let proxy = ProxyBuilder::default()
        .credential(SUPERUSER, &admin_password())
        .policy("bypass", POLICY)
        .start()
        .await;
    let client = proxy.client().await;
    let outcome = async {
        let stmt = client.prepare("DELETE FROM contacts WHERE id = 1").await?;
        client.simple_query("SET search_path = crm, public").await?;
        client.execute(&stmt, &[]).await
    }
    .await;
    let gone = contact_1_gone(&shop).await;
    shop.batch_execute(RT_RESTORE).await.expect("restore");
    proxy.stop().await;
    match outcome {
        Ok(n) => panic!("{WHAT}: forwarded, {n} rows deleted (contact 1 gone: {gone})"),
        Err(e) => assert_refused(WHAT, &e),
    }
    assert!(!gone, "{WHAT}: the refused statement had its effect");
}

/// Family 1: a role setting written through the sidecar becomes the search_path of the next
/// session, which the sidecar does not see change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt_role_setting_sets_next_sessions_path() {
    let _crm = CRM.lock().await;
    let shop = setup_rt().await;
    const WHAT: &str = "1 ALTER ROLE SET search_path, then a new session";
    const ALTER: &str = "ALTER ROLE CURRENT_USER SET search_path = crm, public";
    const RESET: &str = "ALTER ROLE bypass_su RESET search_path";
    const DELETE: &str = "DELETE FROM contacts WHERE id = 1";
    shop.batch_execute(RT_RESTORE).await.expect("restore");
    let direct = connect(&superuser_conn_str()).await;
    direct.simple_query(ALTER).await.expect("alter directly");
    drop(direct);
    let direct = connect(&superuser_conn_str()).await;
    direct.simple_query(DELETE).await.expect("delete directly");
    drop(direct);
    shop.batch_execute(RESET).await.expect("reset");
    assert!(contact_1_gone(&shop).await, "{WHAT}: no effect directly");
    shop.batch_execute(RT_RESTORE).await.expect("restore");
    let proxy = ProxyBuilder::default()
        .credential(SUPERUSER, &admin_password())
        .policy("bypass", POLICY)
        .start()
        .await;
    let first = proxy.client().await;
    let altered = first.simple_query(ALTER).await;
    drop(first);
    let outcome = match altered {
        Err(e) => Err(e),
        Ok(_) => proxy.client().await.simple_query(DELETE).await.map(|_| ()),
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let gone = contact_1_gone(&shop).await;
    shop.batch_execute(RESET).await.expect("reset");
    shop.batch_execute(RT_RESTORE).await.expect("restore");
    proxy.stop().await;
    match outcome {
        Ok(()) => panic!("{WHAT}: forwarded (contact 1 gone: {gone})"),
        Err(e) => assert_refused(WHAT, &e),
    }
    assert!(!gone, "{WHAT}: the refused statement had its effect");
}

/// Family 1: `ALTER SYSTEM` and a configuration reload change the search_path of the session
/// that ran them (and of every session that never set it), which the sidecar does not see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rt_system_setting_reloaded_changes_path() {
    let _crm = CRM.lock().await;
    let shop = setup_rt().await;
    const WHAT: &str = "1 ALTER SYSTEM SET search_path and pg_reload_conf";
    const ALTER: &str = "ALTER SYSTEM SET search_path = crm, public";
    const RELOAD: &str = "SELECT pg_reload_conf()";
    const RESET: &str = "ALTER SYSTEM RESET search_path";
    const DELETE: &str = "DELETE FROM contacts WHERE id = 1";
    let reset = || async {
        shop.simple_query(RESET).await.expect("reset");
        shop.simple_query(RELOAD).await.expect("reload");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    shop.batch_execute(RT_RESTORE).await.expect("restore");
    let direct = connect(&superuser_conn_str()).await;
    let mut outcome = direct.simple_query(ALTER).await.map(|_| ());
    if outcome.is_ok() {
        outcome = direct.simple_query(RELOAD).await.map(|_| ());
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    if outcome.is_ok() {
        outcome = direct.simple_query(DELETE).await.map(|_| ());
    }
    drop(direct);
    reset().await;
    outcome.expect("directly");
    assert!(contact_1_gone(&shop).await, "{WHAT}: no effect directly");
    shop.batch_execute(RT_RESTORE).await.expect("restore");
    let proxy = ProxyBuilder::default()
        .credential(SUPERUSER, &admin_password())
        .policy("bypass", POLICY)
        .start()
        .await;
    let client = proxy.client().await;
    let mut outcome = client.simple_query(ALTER).await.map(|_| ());
    if outcome.is_ok() {
        outcome = client.simple_query(RELOAD).await.map(|_| ());
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    if outcome.is_ok() {
        outcome = client.simple_query(DELETE).await.map(|_| ());
    }
    drop(client);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let gone = contact_1_gone(&shop).await;
    reset().await;
    shop.batch_execute(RT_RESTORE).await.expect("restore");
    proxy.stop().await;
    match outcome {
        Ok(()) => panic!("{WHAT}: forwarded (contact 1 gone: {gone})"),
        Err(e) => assert_refused(WHAT, &e),
    }
    assert!(!gone, "{WHAT}: the refused statement had its effect");
}
