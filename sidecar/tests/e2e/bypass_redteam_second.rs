//! Second red team (r19) against the guardrail, row-limit and masking guarantees: objects are
//! identified by what they are (their oid), not by the name a policy wrote. Each attempt first
//! has its effect on a direct connection, then must be refused (or carry nothing) through the
//! sidecar. Rows that break are kept asserting the safe outcome and marked `#[ignore]`.

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::bypass::{
    admin_password, error_text, setup, superuser_conn_str, CONTACT_1_GONE, CRM, LEADS_LIMIT,
    MASK_SSN, POLICY, PURGED, SUPERUSER,
};
use crate::common::{connect, ProxyBuilder};

/// One attempt with the statements (run as superuser afterwards, whatever happened) that put
/// the schema back.
struct Rt {
    family: &'static str,
    steps: &'static [&'static str],
    rule: &'static str,
    effect: &'static str,
    cleanup: &'static str,
}

const RESTORE: &str =
    "INSERT INTO crm.contacts SELECT g, 'contact ' || g FROM generate_series(1, 5) g
       ON CONFLICT DO NOTHING;
     UPDATE crm.contacts SET name = 'contact ' || id WHERE name <> 'contact ' || id;
     DELETE FROM crm.purges;";

async fn effect(shop: &Client, a: &Rt) -> bool {
    shop.query_one(a.effect, &[])
        .await
        .unwrap_or_else(|e| panic!("{}: effect query: {e}", a.family))
        .get(0)
}

async fn cleanup(shop: &Client, a: &Rt) {
    if let Err(e) = shop.batch_execute(a.cleanup).await {
        panic!("{}: cleanup: {e:?}", a.family);
    }
}

/// Each attempt works directly, and through the sidecar one step is refused and nothing happens.
async fn run_rt(attempts: &[Rt], policy: &str) {
    let _crm = CRM.lock().await;
    let shop = setup().await;
    let proxy = ProxyBuilder::default()
        .credential(SUPERUSER, &admin_password())
        .policy("bypass", policy)
        .start()
        .await;
    for a in attempts {
        cleanup(&shop, a).await;
        shop.batch_execute(RESTORE).await.expect("restore");
        let direct = connect(&superuser_conn_str()).await;
        let mut failed = None;
        for step in a.steps {
            if let Err(e) = direct.simple_query(step).await {
                failed = Some(format!("{step}: {e:?}"));
                break;
            }
        }
        drop(direct);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        cleanup(&shop, a).await;
        if let Some(f) = failed {
            panic!("{}: fails on a direct connection: {f}", a.family);
        }
        assert!(
            effect(&shop, a).await,
            "{}: no effect on a direct connection",
            a.family
        );

        shop.batch_execute(RESTORE).await.expect("restore");
        let client = proxy.client().await;
        let mut refusal = None;
        for step in a.steps {
            if let Err(e) = client.simple_query(step).await {
                refusal = Some(e);
                break;
            }
        }
        drop(client);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        cleanup(&shop, a).await;
        let happened = effect(&shop, a).await;
        shop.batch_execute(RESTORE).await.expect("restore");
        let err = refusal.unwrap_or_else(|| {
            panic!(
                "{}: every step was forwarded by the sidecar (effect: {happened})",
                a.family
            )
        });
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{}: {err:?}", a.family));
        assert_eq!(
            db.code(),
            &SqlState::INSUFFICIENT_PRIVILEGE,
            "{}: {db:?} (effect: {happened})",
            a.family
        );
        assert!(
            db.message().contains(a.rule),
            "{}: refusal {:?} does not name {}",
            a.family,
            db.message(),
            a.rule
        );
        assert!(
            !happened,
            "{}: the refused statement had its effect",
            a.family
        );
    }
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------
// Family 1: the guarded object under another name (rename, move, inherit, cascade).

const UNDO_CONTACTS: &str = "DO $$ BEGIN
       IF to_regclass('public.rt_pt') IS NOT NULL AND to_regclass('crm.contacts') IS NOT NULL AND EXISTS (
            SELECT 1 FROM pg_inherits WHERE inhparent = to_regclass('public.rt_pt')) THEN
         ALTER TABLE public.rt_pt DETACH PARTITION crm.contacts; END IF;
     END $$;
     DROP TABLE IF EXISTS public.rt_pt CASCADE;
     DO $$ BEGIN
       IF to_regclass('crm.rt_c') IS NOT NULL THEN ALTER TABLE crm.rt_c RENAME TO contacts; END IF;
       IF to_regclass('public.contacts') IS NOT NULL AND to_regclass('crm.contacts') IS NULL THEN
         ALTER TABLE public.contacts SET SCHEMA crm; END IF;
       IF to_regnamespace('rt_crm2') IS NOT NULL THEN ALTER SCHEMA rt_crm2 RENAME TO crm; END IF;
       IF to_regprocedure('crm.rt_harmless()') IS NOT NULL THEN
         ALTER FUNCTION crm.rt_harmless() RENAME TO purge; END IF;
       IF to_regprocedure('public.purge()') IS NOT NULL AND to_regprocedure('crm.purge()') IS NULL THEN
         ALTER FUNCTION public.purge() SET SCHEMA crm; END IF;
     END $$;
     DO $$ BEGIN
       IF to_regclass('public.rt_parent') IS NOT NULL AND to_regclass('crm.contacts') IS NOT NULL AND EXISTS (
            SELECT 1 FROM pg_inherits WHERE inhparent = to_regclass('public.rt_parent')) THEN
         ALTER TABLE crm.contacts NO INHERIT public.rt_parent; END IF;
     END $$;
     DROP TABLE IF EXISTS public.rt_parent CASCADE;
     DROP EVENT TRIGGER IF EXISTS rt_et;
     DROP TRIGGER IF EXISTS rt_trg ON crm.contacts;
     DELETE FROM crm.contacts WHERE id >= 100;
     DROP DOMAIN IF EXISTS public.rt_d;";

const RENAMES: &[Rt] = &[
    Rt {
        family: "1 guarded table renamed, deleted from under its new name",
        steps: &[
            "ALTER TABLE crm.contacts RENAME TO rt_c",
            "DELETE FROM crm.rt_c WHERE id = 1",
            "ALTER TABLE crm.rt_c RENAME TO contacts",
        ],
        rule: "",
        effect: CONTACT_1_GONE,
        cleanup: UNDO_CONTACTS,
    },
    Rt {
        family: "1 guarded table moved to another schema",
        steps: &[
            "CREATE SCHEMA IF NOT EXISTS rt2_elsewhere",
            "ALTER TABLE crm.contacts SET SCHEMA rt2_elsewhere",
            "DELETE FROM rt2_elsewhere.contacts WHERE id = 1",
            "ALTER TABLE rt2_elsewhere.contacts SET SCHEMA crm",
        ],
        rule: "",
        effect: CONTACT_1_GONE,
        cleanup: UNDO_CONTACTS,
    },
    Rt {
        family: "1 guarded table's schema renamed",
        steps: &[
            "ALTER SCHEMA crm RENAME TO rt_crm2",
            "DELETE FROM rt_crm2.contacts WHERE id = 1",
            "ALTER SCHEMA rt_crm2 RENAME TO crm",
        ],
        rule: "",
        effect: CONTACT_1_GONE,
        cleanup: UNDO_CONTACTS,
    },
    Rt {
        family: "1 denied function renamed, called under its new name",
        steps: &[
            "ALTER FUNCTION crm.purge() RENAME TO rt_harmless",
            "SELECT crm.rt_harmless()",
            "ALTER FUNCTION crm.rt_harmless() RENAME TO purge",
        ],
        rule: "",
        effect: PURGED,
        cleanup: UNDO_CONTACTS,
    },
    Rt {
        family: "1 denied function moved to another schema",
        steps: &[
            "ALTER FUNCTION crm.purge() SET SCHEMA public",
            "SELECT public.purge()",
            "ALTER FUNCTION public.purge() SET SCHEMA crm",
        ],
        rule: "",
        effect: PURGED,
        cleanup: UNDO_CONTACTS,
    },
    Rt {
        family: "1 delete cascaded by a foreign key from another table",
        steps: &[
            "CREATE TABLE public.rt_parent (id int PRIMARY KEY)",
            "INSERT INTO public.rt_parent SELECT id FROM crm.contacts",
            "ALTER TABLE crm.contacts ADD CONSTRAINT rt_fk FOREIGN KEY (id) REFERENCES public.rt_parent ON DELETE CASCADE",
            "DELETE FROM public.rt_parent WHERE id = 1",
        ],
        rule: "",
        effect: CONTACT_1_GONE,
        cleanup: UNDO_CONTACTS,
    },
    Rt {
        family: "1 delete through the parent of an inheritance the session adds",
        steps: &[
            "CREATE TABLE public.rt_parent (id int, name text)",
            "ALTER TABLE crm.contacts INHERIT public.rt_parent",
            "DELETE FROM public.rt_parent WHERE id = 1",
        ],
        rule: "",
        effect: CONTACT_1_GONE,
        cleanup: UNDO_CONTACTS,
    },
    Rt {
        family: "1 delete through a partitioned table the guarded table is attached to",
        steps: &[
            "CREATE TABLE public.rt_pt (id int, name text) PARTITION BY RANGE (id)",
            "ALTER TABLE public.rt_pt ATTACH PARTITION crm.contacts FOR VALUES FROM (0) TO (1000)",
            "DELETE FROM public.rt_pt WHERE id = 1",
        ],
        rule: "",
        effect: CONTACT_1_GONE,
        cleanup: UNDO_CONTACTS,
    },
    Rt {
        family: "1 denied function in a trigger WHEN clause",
        steps: &[
            "CREATE TABLE public.rt_parent (id int)",
            "INSERT INTO public.rt_parent VALUES (1)",
            "CREATE TRIGGER rt_w BEFORE UPDATE ON public.rt_parent FOR EACH ROW WHEN (crm.purge() IS NULL) EXECUTE FUNCTION suppress_redundant_updates_trigger()",
            "UPDATE public.rt_parent SET id = 2",
        ],
        rule: "",
        effect: PURGED,
        cleanup: UNDO_CONTACTS,
    },
    Rt {
        family: "1 denied function in a domain CHECK, run by a cast",
        steps: &[
            "CREATE DOMAIN public.rt_d AS int CHECK (crm.purge() IS NULL OR VALUE > 0)",
            "SELECT 1::public.rt_d",
        ],
        rule: "",
        effect: PURGED,
        cleanup: UNDO_CONTACTS,
    },
    Rt {
        family: "1/4 event trigger runs a guarded delete on the next DDL",
        steps: &[
            "CREATE OR REPLACE FUNCTION public.rt_et_f() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN DELETE FROM crm.contacts WHERE id = 1; END $$",
            "CREATE EVENT TRIGGER rt_et ON ddl_command_end EXECUTE FUNCTION public.rt_et_f()",
            "CREATE TEMP TABLE rt_any (i int)",
        ],
        rule: "",
        effect: CONTACT_1_GONE,
        cleanup: UNDO_CONTACTS,
    },
    Rt {
        family: "1/4 trigger on the guarded table itself, fired by an allowed UPDATE",
        steps: &[
            "CREATE OR REPLACE FUNCTION public.rt_trg_f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN DELETE FROM crm.contacts WHERE id = 1; RETURN NULL; END $$",
            "CREATE TRIGGER rt_trg AFTER UPDATE ON crm.contacts FOR EACH STATEMENT EXECUTE FUNCTION public.rt_trg_f()",
            "UPDATE crm.contacts SET name = name WHERE id = 2",
        ],
        rule: "",
        effect: CONTACT_1_GONE,
        cleanup: UNDO_CONTACTS,
    },
];

const TRUNCATE_POLICY: &str = r#"guardrails:
- name: crm-truncates
  statementKinds: [truncate]
  tables: [crm.contacts]
  action: deny
- name: crm-updates
  statementKinds: [update]
  tables: [crm.contacts]
  action: requireApproval
"#;

/// A guard on TRUNCATE of the table, reached by truncating another table.
const TRUNCATES: &[Rt] = &[
    Rt {
        family: "1 TRUNCATE of the guarded table (control for the next row)",
        steps: &["TRUNCATE crm.contacts"],
        rule: "",
        effect: CONTACT_1_GONE,
        cleanup: UNDO_CONTACTS,
    },
    Rt {
        family: "1 TRUNCATE ... CASCADE of a table the guarded table references",
        steps: &[
            "CREATE TABLE public.rt_parent (id int PRIMARY KEY)",
            "INSERT INTO public.rt_parent SELECT id FROM crm.contacts",
            "ALTER TABLE crm.contacts ADD CONSTRAINT rt_fk FOREIGN KEY (id) REFERENCES public.rt_parent",
            "TRUNCATE public.rt_parent CASCADE",
        ],
        rule: "",
        effect: CONTACT_1_GONE,
        cleanup: UNDO_CONTACTS,
    },
    Rt {
        family: "1 UPDATE of the guarded table (control for the next row)",
        steps: &["UPDATE crm.contacts SET id = 100 WHERE id = 1"],
        rule: "crm-updates",
        effect: CONTACT_1_GONE,
        cleanup: UNDO_CONTACTS,
    },
    Rt {
        family: "1 guarded rows updated by ON UPDATE CASCADE from another table",
        steps: &[
            "CREATE TABLE public.rt_parent (id int PRIMARY KEY)",
            "INSERT INTO public.rt_parent SELECT id FROM crm.contacts",
            "ALTER TABLE crm.contacts ADD CONSTRAINT rt_fk FOREIGN KEY (id) REFERENCES public.rt_parent ON UPDATE CASCADE",
            "UPDATE public.rt_parent SET id = 100 WHERE id = 1",
        ],
        rule: "",
        effect: CONTACT_1_GONE,
        cleanup: UNDO_CONTACTS,
    },
];

async fn truncates(a: &[Rt]) {
    run_rt(a, TRUNCATE_POLICY).await;
}

// ---------------------------------------------------------------------------------------
// Family 2: unbounded writes.

const MISSING_WHERE: &str = r#"guardrails:
- name: unbounded-writes
  missingWhere: true
  action: deny
"#;

const ALL_GONE: &str = "SELECT NOT EXISTS (SELECT 1 FROM crm.contacts)";
const ALL_RENAMED: &str = "SELECT bool_and(name = 'x') FROM crm.contacts";
const UNDO_UNBOUNDED: &str = "DROP TABLE IF EXISTS public.rt_parent CASCADE;
     DROP TABLE IF EXISTS rt_t CASCADE;
     ALTER TABLE crm.contacts DROP COLUMN IF EXISTS rt_k;";

const UNBOUNDED: &[Rt] = &[
    Rt {
        family: "2 ALTER COLUMN TYPE ... USING rewrites every row",
        steps: &["ALTER TABLE crm.contacts ALTER COLUMN name TYPE text USING 'x'"],
        rule: "",
        effect: ALL_RENAMED,
        cleanup: UNDO_UNBOUNDED,
    },
    Rt {
        family: "2 postfix NOTNULL on the key",
        steps: &["DELETE FROM crm.contacts WHERE id NOTNULL"],
        rule: "",
        effect: ALL_GONE,
        cleanup: UNDO_UNBOUNDED,
    },
    Rt {
        family: "2 NOT (key IS NULL)",
        steps: &["UPDATE crm.contacts SET name = 'x' WHERE NOT (id IS NULL)"],
        rule: "",
        effect: ALL_RENAMED,
        cleanup: UNDO_UNBOUNDED,
    },
    Rt {
        family: "2 a value or its negation",
        steps: &["DELETE FROM crm.contacts WHERE id = 1 OR id <> 1"],
        rule: "",
        effect: ALL_GONE,
        cleanup: UNDO_UNBOUNDED,
    },
    Rt {
        family: "2 num_nulls of the key",
        steps: &["UPDATE crm.contacts SET name = 'x' WHERE num_nulls(id) = 0"],
        rule: "",
        effect: ALL_RENAMED,
        cleanup: UNDO_UNBOUNDED,
    },
    Rt {
        family: "2 self comparison through the operator's function",
        steps: &["DELETE FROM crm.contacts WHERE pg_catalog.int4eq(id, id)"],
        rule: "",
        effect: ALL_GONE,
        cleanup: UNDO_UNBOUNDED,
    },
    Rt {
        family: "2 self comparison with OPERATOR()",
        steps: &["DELETE FROM crm.contacts WHERE id OPERATOR(pg_catalog.=) id"],
        rule: "",
        effect: ALL_GONE,
        cleanup: UNDO_UNBOUNDED,
    },
    Rt {
        family: "2 nullable column null or not null",
        steps: &["UPDATE crm.contacts SET name = 'x' WHERE name IS NULL OR name IS NOT NULL"],
        rule: "",
        effect: ALL_RENAMED,
        cleanup: UNDO_UNBOUNDED,
    },
    Rt {
        family: "2 unbounded DELETE inside a DO block",
        steps: &["DO $$ BEGIN DELETE FROM crm.contacts; END $$"],
        rule: "",
        effect: ALL_GONE,
        cleanup: UNDO_UNBOUNDED,
    },
    Rt {
        family: "2 unbounded DELETE built as text in a DO block",
        steps: &["DO $$ BEGIN EXECUTE 'DELETE FROM ' || 'crm.contacts'; END $$"],
        rule: "",
        effect: ALL_GONE,
        cleanup: UNDO_UNBOUNDED,
    },
    Rt {
        family: "2 unbounded DELETE in a temporary SQL function",
        steps: &[
            "CREATE FUNCTION pg_temp.rt_d() RETURNS void LANGUAGE sql AS 'DELETE FROM crm.contacts'",
            "SELECT pg_temp.rt_d()",
        ],
        rule: "",
        effect: ALL_GONE,
        cleanup: UNDO_UNBOUNDED,
    },
    Rt {
        family: "2 unbounded DELETE in a rule on a temporary table",
        steps: &[
            "CREATE TEMP TABLE rt_t (i int)",
            "CREATE RULE rt_r AS ON INSERT TO rt_t DO ALSO DELETE FROM crm.contacts",
            "INSERT INTO rt_t VALUES (1)",
        ],
        rule: "",
        effect: ALL_GONE,
        cleanup: UNDO_UNBOUNDED,
    },
    Rt {
        family: "2 every row cascaded from one bounded delete of a parent",
        steps: &[
            "CREATE TABLE public.rt_parent (k int PRIMARY KEY)",
            "INSERT INTO public.rt_parent VALUES (0)",
            "ALTER TABLE crm.contacts ADD COLUMN rt_k int NOT NULL DEFAULT 0 REFERENCES public.rt_parent ON DELETE CASCADE",
            "DELETE FROM public.rt_parent WHERE k = 0",
        ],
        rule: "",
        effect: ALL_GONE,
        cleanup: UNDO_UNBOUNDED,
    },
    Rt {
        family: "2 every row set by a foreign key ON UPDATE CASCADE",
        steps: &[
            "CREATE TABLE public.rt_parent (k text PRIMARY KEY)",
            "INSERT INTO public.rt_parent SELECT DISTINCT name FROM crm.contacts",
            "ALTER TABLE crm.contacts ADD CONSTRAINT rt_fk FOREIGN KEY (name) REFERENCES public.rt_parent ON UPDATE CASCADE",
            "UPDATE public.rt_parent SET k = 'x' || k WHERE k IS NOT NULL",
        ],
        rule: "",
        effect: "SELECT bool_and(name LIKE 'x%') FROM crm.contacts",
        cleanup: UNDO_UNBOUNDED,
    },
];

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

async fn renames(a: &[Rt]) {
    run_rt(a, POLICY).await;
}

async fn unbounded(a: &[Rt]) {
    run_rt(a, MISSING_WHERE).await;
}

rows!(
    renames,
    RENAMES,
    rt2_g00 = 0,
    rt2_g01 = 1,
    rt2_g02 = 2,
    rt2_g03 = 3,
    rt2_g04 = 4,
    rt2_g05 = 5,
    rt2_g06 = 6,
    rt2_g07 = 7,
    rt2_g08 = 8,
    rt2_g09 = 9,
    rt2_g10 = 10,
    rt2_g11 = 11,
);
rows!(
    truncates,
    TRUNCATES,
    rt2_t00 = 0,
    rt2_t01 = 1,
    rt2_t02 = 2,
    rt2_t03 = 3,
);
rows!(
    unbounded,
    UNBOUNDED,
    #[ignore = "baseline: views other tests keep over crm.contacts make the direct ALTER COLUMN TYPE fail (the rewrite is covered in bypass_resolution)"]
    rt2_u00 = 0,
    rt2_u01 = 1,
    rt2_u02 = 2,
    rt2_u03 = 3,
    rt2_u04 = 4,
    rt2_u05 = 5,
    rt2_u06 = 6,
    rt2_u07 = 7,
    rt2_u08 = 8,
    rt2_u09 = 9,
    rt2_u10 = 10,
    rt2_u11 = 11,
    rt2_u12 = 12,
    rt2_u13 = 13,
);

// ---------------------------------------------------------------------------------------
// Family 3: row limits.

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

fn leads_in(text: &str) -> usize {
    (1..=100)
        .filter(|i| text.contains(&format!("lead{i}@example.com")))
        .count()
}

const UNDO_LEADS: &str = "DO $$ BEGIN
       IF to_regclass('public.rt_lpt') IS NOT NULL AND to_regclass('crm.leads') IS NOT NULL AND EXISTS (
            SELECT 1 FROM pg_inherits WHERE inhparent = to_regclass('public.rt_lpt')) THEN
         ALTER TABLE public.rt_lpt DETACH PARTITION crm.leads; END IF;
     END $$;
     DROP TABLE IF EXISTS public.rt_lpt CASCADE;
     DO $$ BEGIN
       IF to_regclass('crm.rt_l') IS NOT NULL THEN ALTER TABLE crm.rt_l RENAME TO leads; END IF;
       IF to_regclass('public.leads') IS NOT NULL AND to_regclass('crm.leads') IS NULL THEN
         ALTER TABLE public.leads SET SCHEMA crm; END IF;
     END $$;
     DO $$ BEGIN
       IF to_regclass('public.rt_lp') IS NOT NULL AND to_regclass('crm.leads') IS NOT NULL AND EXISTS (
            SELECT 1 FROM pg_inherits WHERE inhparent = to_regclass('public.rt_lp')) THEN
         ALTER TABLE crm.leads NO INHERIT public.rt_lp; END IF;
     END $$;
     DROP TABLE IF EXISTS public.rt_lp CASCADE;
     DROP TABLE IF EXISTS public.rt_copy CASCADE;
     DROP TRIGGER IF EXISTS rt_lt ON crm.leads;";

/// (family, steps, cleanup).
const ROWS: &[(&str, &[&str])] = &[
    (
        "3 limited table renamed, read under its new name",
        &[
            "ALTER TABLE crm.leads RENAME TO rt_l",
            "SELECT * FROM crm.rt_l",
        ],
    ),
    (
        "3 limited table moved to another schema",
        &[
            "ALTER TABLE crm.leads SET SCHEMA public",
            "SELECT * FROM public.leads",
        ],
    ),
    (
        "3 rows read through the parent of an inheritance the session adds",
        &[
            "CREATE TABLE public.rt_lp (id int, email text)",
            "ALTER TABLE crm.leads INHERIT public.rt_lp",
            "SELECT * FROM public.rt_lp",
        ],
    ),
    (
        "3 rows read through a partitioned table the limited table is attached to",
        &[
            "CREATE TABLE public.rt_lpt (id int, email text) PARTITION BY RANGE (id)",
            "ALTER TABLE public.rt_lpt ATTACH PARTITION crm.leads FOR VALUES FROM (0) TO (1000)",
            "SELECT * FROM public.rt_lpt",
        ],
    ),
    (
        "3 rows copied by a trigger on the limited table, read back",
        &[
            "CREATE TABLE public.rt_copy (id int, email text)",
            "CREATE OR REPLACE FUNCTION public.rt_lt_f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.rt_copy VALUES (NEW.id, NEW.email); RETURN NEW; END $$",
            "CREATE TRIGGER rt_lt AFTER UPDATE ON crm.leads FOR EACH ROW EXECUTE FUNCTION public.rt_lt_f()",
            "UPDATE crm.leads SET email = email",
            "SELECT * FROM public.rt_copy",
        ],
    ),
    (
        "3 TABLE shorthand",
        &["TABLE crm.leads"],
    ),
    (
        "3 COPY to a server file, read back with pg_read_file",
        &[
            "COPY crm.leads TO '/tmp/portcullis-rt2-leads.csv'",
            "SELECT pg_read_file('/tmp/portcullis-rt2-leads.csv')",
        ],
    ),
    (
        "3 the table's data file read with pg_read_binary_file",
        &[
            "CHECKPOINT",
            "SELECT encode(pg_read_binary_file(pg_relation_filepath('crm.leads')), 'escape')",
        ],
    ),
    (
        "3 rows read by the statistics collector (pg_stats histogram)",
        &[
            "ALTER TABLE crm.leads ALTER COLUMN email SET STATISTICS 1000",
            "ANALYZE crm.leads",
            "SELECT histogram_bounds::text FROM pg_stats WHERE schemaname = 'crm' AND tablename = 'leads' AND attname = 'email'",
        ],
    ),
    (
        "3 rows read by the statistics catalog itself (pg_statistic)",
        &[
            "ALTER TABLE crm.leads ALTER COLUMN email SET STATISTICS 1000",
            "ANALYZE crm.leads",
            "SELECT stavalues1::text || coalesce(stavalues2::text, '') FROM pg_statistic WHERE starelid = 'crm.leads'::regclass AND staattnum = 2",
        ],
    ),
];

async fn row_limits(attempts: &[(&str, &[&str])]) {
    let _crm = CRM.lock().await;
    let shop = setup().await;
    let undo = || async {
        shop.batch_execute(UNDO_LEADS).await.expect("undo leads");
        shop.batch_execute("ALTER TABLE crm.leads ALTER COLUMN email SET STATISTICS -1")
            .await
            .expect("stats");
        let _ = std::fs::remove_file("/tmp/portcullis-rt2-leads.csv");
    };
    let proxy = ProxyBuilder::default()
        .credential(SUPERUSER, &admin_password())
        .policy("leads", LEADS_LIMIT)
        .start()
        .await;
    for (family, steps) in attempts {
        undo().await;
        let direct = connect(&superuser_conn_str()).await;
        let mut text = String::new();
        for step in *steps {
            match direct.simple_query(step).await {
                Ok(rows) => text.push_str(&all_text(&rows)),
                Err(e) => text.push_str(&error_text(&e)),
            }
        }
        drop(direct);
        undo().await;
        assert!(
            leads_in(&text) > 40,
            "{family}: directly {} ({text})",
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
        drop(client);
        undo().await;
        let n = leads_in(&text);
        assert!(n <= 40, "{family}: {n} leads left through the sidecar");
    }
    proxy.stop().await;
}

rows!(
    row_limits,
    ROWS,
    rt2_r00 = 0,
    rt2_r01 = 1,
    rt2_r02 = 2,
    rt2_r03 = 3,
    rt2_r04 = 4,
    rt2_r05 = 5,
    rt2_r06 = 6,
    rt2_r07 = 7,
    rt2_r08 = 8,
    rt2_r09 = 9,
);

// ---------------------------------------------------------------------------------------
// Family 4 (masking): the masked column under another name, or read off disk or statistics.

const UNDO_CUSTOMERS: &str = "DO $$ BEGIN
       IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('public.customers')
                  AND attname = 'rt_x' AND NOT attisdropped) THEN
         ALTER TABLE public.customers RENAME COLUMN rt_x TO ssn; END IF;
     END $$;
     DO $$ BEGIN
       IF to_regclass('public.rt_cust') IS NOT NULL THEN ALTER TABLE public.rt_cust RENAME TO customers; END IF;
       IF to_regclass('crm.customers') IS NOT NULL THEN ALTER TABLE crm.customers SET SCHEMA public; END IF;
     END $$;
     ALTER TABLE public.customers DROP COLUMN IF EXISTS rt_g;
     DROP STATISTICS IF EXISTS public.rt_st;
     DROP INDEX IF EXISTS public.rt_ei;
     DO $$ BEGIN
       IF to_regclass('public.rt_par') IS NOT NULL AND to_regclass('public.customers') IS NOT NULL AND EXISTS (
            SELECT 1 FROM pg_inherits WHERE inhparent = to_regclass('public.rt_par')) THEN
         ALTER TABLE public.customers NO INHERIT public.rt_par; END IF;
     END $$;
     DROP TABLE IF EXISTS public.rt_par CASCADE;
     DROP TABLE IF EXISTS public.rt_ssn_copy CASCADE;
     DROP TRIGGER IF EXISTS rt_ct ON public.customers;
     ALTER TABLE public.customers ALTER COLUMN ssn SET STATISTICS -1;";

const MASK: &[(&str, &[&str])] = &[
    (
        "masked column renamed, read under its new name",
        &[
            "ALTER TABLE customers RENAME COLUMN ssn TO rt_x",
            "SELECT rt_x FROM customers WHERE id = 1",
        ],
    ),
    (
        "masked table renamed",
        &[
            "ALTER TABLE customers RENAME TO rt_cust",
            "SELECT ssn FROM rt_cust WHERE id = 1",
        ],
    ),
    (
        "masked table moved to another schema",
        &[
            "ALTER TABLE public.customers SET SCHEMA crm",
            "SELECT ssn FROM crm.customers WHERE id = 1",
        ],
    ),
    (
        "masked column read through the parent of an inheritance",
        &[
            "CREATE TABLE public.rt_par (id int, ssn text)",
            "ALTER TABLE public.customers INHERIT public.rt_par",
            "SELECT ssn FROM public.rt_par WHERE id = 1",
        ],
    ),
    (
        "stored generated column added over the masked column",
        &[
            "ALTER TABLE public.customers ADD COLUMN rt_g text GENERATED ALWAYS AS (translate(ssn, '0123456789', 'abcdefghij')) STORED",
            "SELECT rt_g FROM customers WHERE id = 1",
        ],
    ),
    (
        "stored generated column, read after the sidecar had time to reload",
        &[
            "ALTER TABLE public.customers ADD COLUMN rt_g text GENERATED ALWAYS AS (translate(ssn, '0123456789', 'abcdefghij')) STORED",
            "SELECT pg_sleep(3)",
            "SELECT rt_g FROM customers WHERE id = 1",
        ],
    ),
    (
        "trigger copies the masked value on an UPDATE of another column",
        &[
            "CREATE TABLE public.rt_ssn_copy (v text)",
            "CREATE OR REPLACE FUNCTION public.rt_ct_f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.rt_ssn_copy VALUES (translate(NEW.ssn, '0123456789', 'abcdefghij')); RETURN NEW; END $$",
            "CREATE TRIGGER rt_ct AFTER UPDATE ON public.customers FOR EACH ROW EXECUTE FUNCTION public.rt_ct_f()",
            "UPDATE customers SET id = id WHERE id = 1",
            "SELECT v FROM public.rt_ssn_copy",
        ],
    ),
    (
        "COPY of the masked column to a server file, read back",
        &[
            "COPY (SELECT ssn FROM customers WHERE id = 1) TO '/tmp/portcullis-rt2-ssn.txt'",
            "SELECT pg_read_file('/tmp/portcullis-rt2-ssn.txt')",
        ],
    ),
    (
        "the table's data file read with pg_read_binary_file",
        &[
            "CHECKPOINT",
            "SELECT encode(pg_read_binary_file(pg_relation_filepath('customers')), 'escape')",
        ],
    ),
    (
        "the statistics catalog itself (pg_statistic)",
        &[
            "ALTER TABLE customers ALTER COLUMN ssn SET STATISTICS 1000",
            "ANALYZE customers",
            "SELECT string_agg(coalesce(stavalues1::text, '') || coalesce(stavalues2::text, ''), ',') FROM pg_statistic WHERE starelid = 'public.customers'::regclass AND staattnum = (SELECT attnum FROM pg_attribute WHERE attrelid = 'public.customers'::regclass AND attname = 'ssn')",
        ],
    ),
    (
        "stored generated column copying the column unchanged, after a reload",
        &[
            "ALTER TABLE public.customers ADD COLUMN rt_g text GENERATED ALWAYS AS (ssn) STORED",
            "SELECT pg_sleep(3)",
            "SELECT rt_g FROM customers WHERE id = 1",
        ],
    ),
    (
        "error of ALTER COLUMN TYPE ... USING quotes the value",
        &["ALTER TABLE customers ALTER COLUMN ssn TYPE int USING CASE WHEN id = 1 THEN translate(ssn, '0123456789', 'abcdefghij')::int ELSE 0 END"],
    ),
    (
        "extended statistics on an expression of the column (pg_stats_ext_exprs)",
        &[
            "CREATE STATISTICS public.rt_st ON (translate(ssn, '0123456789', 'abcdefghij')) FROM customers",
            "ALTER STATISTICS public.rt_st SET STATISTICS 1000",
            "ANALYZE customers",
            "SELECT string_agg(coalesce(histogram_bounds::text, '') || coalesce(most_common_vals::text, ''), ',') FROM pg_stats_ext_exprs WHERE statistics_name = 'rt_st'",
        ],
    ),
    (
        "statistics of an expression index (pg_stats of the index)",
        &[
            "CREATE INDEX rt_ei ON customers ((translate(ssn, '0123456789', 'abcdefghij')))",
            "ALTER INDEX rt_ei ALTER COLUMN 1 SET STATISTICS 1000",
            "ANALYZE customers",
            "SELECT coalesce(histogram_bounds::text, '') || coalesce(most_common_vals::text, '') FROM pg_stats WHERE tablename = 'rt_ei'",
        ],
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

async fn mask(attempts: &[(&str, &[&str])]) {
    let _crm = CRM.lock().await;
    let shop = setup().await;
    let undo = || async {
        shop.batch_execute(UNDO_CUSTOMERS)
            .await
            .expect("undo customers");
        let _ = std::fs::remove_file("/tmp/portcullis-rt2-ssn.txt");
    };
    undo().await;
    let clear: String = shop
        .query_one("SELECT ssn FROM customers WHERE id = 1", &[])
        .await
        .expect("ssn")
        .get(0);
    let tr = translated(&clear);
    let carries = |t: &str| t.contains(&clear) || t.contains(&tr);
    let proxy = ProxyBuilder::default()
        .credential(SUPERUSER, &admin_password())
        .policy("mask", MASK_SSN)
        .start()
        .await;
    for (family, steps) in attempts {
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
        undo().await;
        let d = run(connect(&superuser_conn_str()).await).await;
        undo().await;
        assert!(
            carries(&d),
            "{family}: direct output does not carry the value: {d}"
        );
        let p = run(proxy.client().await).await;
        undo().await;
        assert!(!carries(&p), "{family}: masked value through the sidecar");
    }
    proxy.stop().await;
}

rows!(
    mask,
    MASK,
    rt2_m00 = 0,
    rt2_m01 = 1,
    rt2_m02 = 2,
    rt2_m03 = 3,
    rt2_m04 = 4,
    rt2_m05 = 5,
    rt2_m06 = 6,
    rt2_m07 = 7,
    rt2_m08 = 8,
    rt2_m09 = 9,
    rt2_m10 = 10,
    #[ignore = "baseline: a view another test leaves over customers.ssn makes the direct ALTER COLUMN TYPE fail, so the row cannot show its attack"]
    rt2_m11 = 11,
    rt2_m12 = 12,
    rt2_m13 = 13,
);

// ---------------------------------------------------------------------------------------
// Predicates answered by the schema: constraints, generated columns, write tags.

/// (what, statement, answer directly or `error <code>`).
const PREDICATE_DDL: &[(&str, &str, &str)] = &[
    (
        "CHECK constraint validated against the rows",
        "ALTER TABLE customers ADD CONSTRAINT rt_chk CHECK (id <> 1 OR ssn NOT LIKE '{d}%')",
        "error 23514",
    ),
    (
        "generated column of a predicate",
        "ALTER TABLE customers ADD COLUMN rt_b bool GENERATED ALWAYS AS (ssn LIKE '{d}%') STORED; SELECT rt_b::text FROM customers WHERE id = 1",
        "true",
    ),
    (
        "UPDATE with LIKE, answered by the tag's row count",
        "UPDATE customers SET id = id WHERE id = 1 AND ssn LIKE '{d}%'",
        "tag 1",
    ),
    (
        "domain CHECK applied to the column by a cast",
        "CREATE DOMAIN public.rt_dom AS text CHECK (VALUE NOT LIKE '{d}%'); SELECT count(*)::text FROM customers WHERE id = 1 AND ssn::public.rt_dom IS NOT NULL",
        "error 23514",
    ),
    (
        "deny: UPDATE with IS NOT NULL, answered by the tag's row count",
        "UPDATE customers SET id = id WHERE id = {card_id} AND card_number IS NOT NULL",
        "tag 1",
    ),
    (
        "row count of a partial index, read from pg_class",
        "CREATE INDEX rt_pi ON customers (id) WHERE id = 1 AND ssn LIKE '{d}%' ;; SELECT reltuples::text FROM pg_class WHERE relname = 'rt_pi'",
        "1",
    ),
    (
        "generated column of a predicate, read after a reload",
        "ALTER TABLE customers ADD COLUMN rt_b bool GENERATED ALWAYS AS (ssn LIKE '{d}%') STORED ;; SELECT pg_sleep(3) ;; SELECT rt_b::text FROM customers WHERE id = 1",
        "true",
    ),
    (
        "CHECK constraint added NOT VALID, then validated",
        "ALTER TABLE customers ADD CONSTRAINT rt_chk CHECK (id <> 1 OR ssn NOT LIKE '{d}%') NOT VALID ;; ALTER TABLE customers VALIDATE CONSTRAINT rt_chk",
        "error 23514",
    ),
    (
        "trigger WHEN clause suppresses the update, answered by the tag",
        "CREATE TRIGGER rt_sup BEFORE UPDATE ON customers FOR EACH ROW WHEN (NEW.ssn LIKE '{d}%') EXECUTE FUNCTION suppress_redundant_updates_trigger() ;; UPDATE customers SET id = id WHERE id = 1",
        "tag 0",
    ),
    (
        "rule WHERE clause turns the update into nothing, answered by the tag",
        "CREATE RULE rt_ru AS ON UPDATE TO customers WHERE OLD.ssn LIKE '{d}%' DO INSTEAD NOTHING ;; UPDATE customers SET id = id WHERE id = 1",
        "tag 0",
    ),
    (
        "forced row-level security policy over a LIKE",
        "ALTER TABLE customers ENABLE ROW LEVEL SECURITY ;; ALTER TABLE customers FORCE ROW LEVEL SECURITY ;; CREATE POLICY rt_pol ON customers USING (ssn NOT LIKE '{d}%') ;; SELECT count(*)::text FROM customers WHERE id = 1",
        "0",
    ),
    (
        "deny: trigger WHEN clause on IS NOT NULL, answered by the tag",
        "CREATE TRIGGER rt_sup BEFORE UPDATE ON customers FOR EACH ROW WHEN (NEW.card_number IS NOT NULL) EXECUTE FUNCTION suppress_redundant_updates_trigger() ;; UPDATE customers SET id = id WHERE id = {card_id}",
        "tag 0",
    ),
    (
        "partition routing of a copy: the insert fails unless the bound holds",
        "CREATE TABLE public.rt_pp (s text) PARTITION BY RANGE (s) ;; CREATE TABLE public.rt_pp1 PARTITION OF public.rt_pp FOR VALUES FROM ('{d}') TO ('{d}~') ;; INSERT INTO public.rt_pp SELECT ssn FROM customers WHERE id = 1",
        "tag 1",
    ),
];

/// Run the ` ;; `-separated statements of `sql` one query string at a time: the last answer.
async fn steps(
    client: &Client,
    sql: &str,
) -> Result<Vec<SimpleQueryMessage>, tokio_postgres::Error> {
    let mut last = Vec::new();
    for step in sql.split(" ;; ") {
        last = client.simple_query(step).await?;
    }
    Ok(last)
}

const UNDO_PREDICATES: &str = "ALTER TABLE customers DROP CONSTRAINT IF EXISTS rt_chk;
     ALTER TABLE customers DROP COLUMN IF EXISTS rt_b;
     DROP DOMAIN IF EXISTS public.rt_dom;
     DROP INDEX IF EXISTS public.rt_pi;
     DROP TABLE IF EXISTS public.rt_pp;
     DROP TRIGGER IF EXISTS rt_sup ON customers;
     DROP RULE IF EXISTS rt_ru ON customers;
     DROP POLICY IF EXISTS rt_pol ON customers;
     ALTER TABLE customers NO FORCE ROW LEVEL SECURITY;
     ALTER TABLE customers DISABLE ROW LEVEL SECURITY;";

async fn predicates(attempts: &[(&str, &str, &str)]) {
    let _crm = CRM.lock().await;
    setup().await;
    let direct = crate::common::direct().await;
    direct
        .batch_execute(UNDO_PREDICATES)
        .await
        .expect("undo predicates");
    let ssn: String = direct
        .query_one("SELECT ssn FROM customers WHERE id = 1", &[])
        .await
        .expect("customer 1")
        .get(0);
    let card_id: i32 = direct
        .query_one(
            "SELECT id FROM customers WHERE card_number IS NOT NULL ORDER BY id LIMIT 1",
            &[],
        )
        .await
        .expect("a card")
        .get(0);
    let fill = |t: &str| {
        t.replace("{d}", &ssn[..1])
            .replace("{card_id}", &card_id.to_string())
    };
    let proxy = ProxyBuilder::default()
        .policy("people", crate::bypass::PREDICATES)
        .start()
        .await;
    for (what, sql, expected) in attempts {
        let sql = fill(sql);
        let d = match steps(&direct, &sql).await {
            Ok(rows) => crate::bypass::answer(&rows),
            Err(e) => format!("error {}", e.code().map(|c| c.code()).unwrap_or("?")),
        };
        direct
            .batch_execute(UNDO_PREDICATES)
            .await
            .expect("undo predicates");
        assert_eq!(d, fill(expected), "{what}: directly");
        let client = proxy.client().await;
        let outcome = steps(&client, &sql).await;
        direct
            .batch_execute(UNDO_PREDICATES)
            .await
            .expect("undo predicates");
        match outcome {
            Ok(rows) if crate::bypass::answer(&rows) != d => {}
            Ok(rows) => panic!(
                "{what}: forwarded, answered {:?}",
                crate::bypass::answer(&rows)
            ),
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
    predicates,
    PREDICATE_DDL,
    rt2_p00 = 0,
    rt2_p01 = 1,
    rt2_p02 = 2,
    rt2_p03 = 3,
    rt2_p04 = 4,
    rt2_p05 = 5,
    rt2_p06 = 6,
    rt2_p07 = 7,
    #[ignore = "baseline: the direct run's command tag depends on rows other rows leave; it held when run alone"]
    rt2_p08 = 8,
    rt2_p09 = 9,
    rt2_p10 = 10,
    #[ignore = "baseline: the direct run's command tag depends on customers rows other tests change at the same time; it held when run alone"]
    rt2_p11 = 11,
    #[ignore = "red team: routing a copy of the masked value into a partition the session bounds answers a range predicate by success or failure"]
    rt2_p12 = 12,
);
