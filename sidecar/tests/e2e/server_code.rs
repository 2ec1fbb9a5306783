//! Server code and views a session defines, then runs: each attempt first has its effect on
//! a direct connection, then is refused through the sidecar (at the definition, or where the
//! definition runs), because the guardrails judge what the server runs, not only the text.

use crate::bypass::{run_attempts, setup, Attempt, CONTACT_1_GONE, CRM, POLICY, PURGED};

/// Objects in the database before the agent comes: a view over the guarded table and a
/// function that opens a cursor over a DELETE.
async fn setup_code() {
    let shop = setup().await;
    shop.batch_execute(
        "CREATE OR REPLACE VIEW public.sc_contacts AS SELECT * FROM crm.contacts;
         CREATE OR REPLACE FUNCTION public.sc_open_delete() RETURNS refcursor LANGUAGE plpgsql AS $$
           DECLARE c refcursor := 'sc_del_c';
           BEGIN OPEN c FOR EXECUTE 'DELETE FROM crm.contacts WHERE id = 1 RETURNING id'; RETURN c; END $$;",
    )
    .await
    .expect("server code setup");
}

/// Function bodies: an SQL body is judged as if it ran; a body the sidecar cannot read is
/// refused where it runs (the policy has no guardrail on `doBlock`).
const BODIES: &[Attempt] = &[
    Attempt {
        family: "SQL body in dollar quotes, function in a permanent schema",
        steps: &[
            "CREATE OR REPLACE FUNCTION public.sc_f() RETURNS void LANGUAGE sql AS $$ DELETE FROM crm.contacts WHERE id = 1 $$",
            "SELECT public.sc_f()",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "SQL body that calls a denied function",
        steps: &[
            "CREATE FUNCTION pg_temp.sc_p() RETURNS void LANGUAGE sql AS 'SELECT crm.purge()'",
            "SELECT pg_temp.sc_p()",
        ],
        rule: "no-crm-purge",
        effect: PURGED,
    },
    Attempt {
        family: "PL/pgSQL body, called after it is defined",
        steps: &[
            "CREATE FUNCTION pg_temp.sc_w() RETURNS void LANGUAGE plpgsql AS $$ BEGIN DELETE FROM crm.contacts WHERE id = 1; END $$",
            "SELECT pg_temp.sc_w()",
        ],
        rule: "unanalyzable",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "a harmless SQL function redefined in PL/pgSQL, then called",
        steps: &[
            "CREATE FUNCTION pg_temp.sc_h() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "SELECT pg_temp.sc_h()",
            "CREATE OR REPLACE FUNCTION pg_temp.sc_h() RETURNS int LANGUAGE plpgsql AS $$ BEGIN DELETE FROM crm.contacts WHERE id = 1; RETURN 1; END $$",
            "SELECT pg_temp.sc_h()",
        ],
        rule: "unanalyzable",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "an SQL wrapper of a PL/pgSQL function the session defined",
        steps: &[
            "CREATE FUNCTION pg_temp.sc_inner() RETURNS int LANGUAGE plpgsql AS $$ BEGIN DELETE FROM crm.contacts WHERE id = 1; RETURN 1; END $$",
            "CREATE FUNCTION pg_temp.sc_outer() RETURNS int LANGUAGE sql AS 'SELECT pg_temp.sc_inner()'",
            "SELECT pg_temp.sc_outer()",
        ],
        rule: "unanalyzable",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "a procedure with an SQL body",
        steps: &[
            "CREATE PROCEDURE pg_temp.sc_pr() LANGUAGE sql AS $$ DELETE FROM crm.contacts WHERE id = 1 $$",
            "CALL pg_temp.sc_pr()",
        ],
        rule: "unanalyzable",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "a trigger on a session table runs a PL/pgSQL function",
        steps: &[
            "CREATE TEMP TABLE sc_t (id int)",
            "CREATE FUNCTION pg_temp.sc_tf() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN DELETE FROM crm.contacts WHERE id = NEW.id; RETURN NEW; END $$",
            "CREATE TRIGGER sc_tr BEFORE INSERT ON sc_t FOR EACH ROW EXECUTE FUNCTION pg_temp.sc_tf()",
            "INSERT INTO sc_t VALUES (1)",
        ],
        rule: "unanalyzable",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "a session view renamed to a name nothing kept",
        steps: &[
            "CREATE TEMP VIEW sc_rv AS SELECT * FROM crm.contacts",
            "ALTER TABLE sc_rv RENAME TO sc_rv2",
            "DELETE FROM sc_rv2 WHERE id = 1",
        ],
        rule: "unanalyzable",
        effect: CONTACT_1_GONE,
    },
];

/// Writes through views reach the guardrails of the tables beneath them.
const VIEWS: &[Attempt] = &[
    Attempt {
        family: "a temporary view over a temporary view over the guarded table",
        steps: &[
            "CREATE TEMP VIEW sc_v1 AS SELECT * FROM crm.contacts",
            "CREATE TEMP VIEW sc_v2 AS SELECT id, name FROM sc_v1",
            "DELETE FROM sc_v2 WHERE id = 1",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "a view the session creates in a permanent schema",
        steps: &[
            "CREATE OR REPLACE VIEW public.sc_pv AS SELECT * FROM crm.contacts",
            "DELETE FROM public.sc_pv WHERE id = 1",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "a session view over a view the database already had",
        steps: &[
            "CREATE TEMP VIEW sc_d AS SELECT * FROM public.sc_contacts",
            "DELETE FROM sc_d WHERE id = 1",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "a data-modifying CTE through a view the database already had",
        steps: &["WITH d AS (DELETE FROM public.sc_contacts WHERE id = 1 RETURNING id) SELECT count(*) FROM d"],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "an unqualified name that the search path resolves to a view",
        steps: &[
            "SET search_path = public",
            "DELETE FROM sc_contacts WHERE id = 1",
        ],
        rule: "crm-deletes",
        effect: CONTACT_1_GONE,
    },
];

/// Cursors opened by server code run a query the sidecar never saw.
const CURSORS: &[Attempt] = &[
    Attempt {
        family: "MOVE through a cursor opened in server code",
        steps: &[
            "BEGIN",
            "SELECT public.sc_open_delete()",
            "MOVE FORWARD ALL IN sc_del_c",
            "COMMIT",
        ],
        rule: "unanalyzable",
        effect: CONTACT_1_GONE,
    },
    Attempt {
        family: "FETCH of one row of a cursor opened in server code",
        steps: &[
            "BEGIN",
            "SELECT public.sc_open_delete()",
            "FETCH 1 FROM sc_del_c",
            "COMMIT",
        ],
        rule: "unanalyzable",
        effect: CONTACT_1_GONE,
    },
];

async fn attempts(a: &[Attempt]) {
    {
        let _crm = CRM.lock().await;
        setup_code().await;
    }
    run_attempts(a, POLICY).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_bodies_are_judged_as_they_run() {
    attempts(BODIES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_views_reach_the_tables_beneath() {
    attempts(VIEWS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_opened_by_server_code_are_not_fetched() {
    attempts(CURSORS).await;
}
