//! Server code and views defined through the sidecar, and what running them does.
//!
//! What the server runs for a statement is its text and also the bodies of the functions it
//! calls and the queries of the views it names, and a session can define those. So:
//!
//! - A statement that defines such an object (`CREATE [OR REPLACE] FUNCTION`, `CREATE
//!   [TEMP|MATERIALIZED] VIEW`, in any schema, `pg_temp` included) is judged as if its body
//!   ran: the analysis merges the facts of an SQL body into the `CREATE`
//!   ([`function_body`]), and every definition is kept here ([`Definitions::define`]), per
//!   resource, for the life of the process.
//! - A later statement that calls such a function or names such a view is judged with the
//!   definition added ([`Definitions::expand`]): the statements of an SQL body, the tables
//!   beneath a view (a write through a view reaches the guardrails of its tables), and the
//!   same for the views over guarded tables that the catalog already holds.
//! - A function whose body the analysis cannot see into (PL/pgSQL, other languages, an SQL
//!   body it cannot parse) makes the statement that calls it run code of kind `doBlock`:
//!   a guardrail on that kind decides, else the unanalysable-statement rule (denied unless
//!   every policy says `onUnanalyzable: audit`).
//! - The text of every definition a statement runs is shown to an approver with it and bound
//!   into its grant: a grant never covers a redefinition or a shadowing definition.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use portcullis_crds::gateway_policy::StatementKind;
use portcullis_crds::sidecar_config::QualifiedTable;
use sqlparser::ast::{CreateFunction, CreateFunctionBody, Expr, Value};

use super::analyze::{analyze, Analysis, StatementFacts};
use super::names::{Qualified, SearchPath};
use super::row_sources::{Carried, RowSources};

/// Definitions kept per name before the oldest is forgotten.
const MAX_PER_NAME: usize = 64;
/// Definitions kept in all; past it every call of a function that is not a known built-in
/// runs code the sidecar does not know.
const MAX_DEFINITIONS: usize = 10_000;
/// How deep definitions that use definitions are followed.
const MAX_DEPTH: usize = 16;

/// What a definition defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// A function or procedure.
    Function,
    /// A view (or materialized view).
    Relation,
}

/// One object a statement defines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Definition {
    /// Function or view.
    pub kind: ObjectKind,
    /// Its name, as written (folded, escapes decoded).
    pub name: Qualified,
    /// The types of its arguments (a function's identity with its name); empty for a view.
    pub signature: String,
    /// What running it does; `None` when its body cannot be analysed.
    pub body: Option<Arc<StatementFacts>>,
    /// The defining statement, as shown to an approver.
    pub text: String,
}

/// The facts of an SQL function body written as a string (`AS '...'`, `AS $$...$$`), or of
/// a `RETURN expr` body (already part of the statement: `Some` of empty facts); `None` when
/// the body cannot be analysed (another language, a body the parser cannot read).
pub fn function_body(f: &CreateFunction) -> Option<StatementFacts> {
    let sql_language = f
        .language
        .as_ref()
        .is_none_or(|l| l.value.eq_ignore_ascii_case("sql"));
    if !sql_language {
        return None;
    }
    match f.function_body.as_ref()? {
        CreateFunctionBody::AsBeforeOptions {
            body: Expr::Value(v),
            link_symbol: None,
        }
        | CreateFunctionBody::AsAfterOptions(Expr::Value(v)) => {
            let text = match &v.value {
                Value::SingleQuotedString(s)
                | Value::EscapedStringLiteral(s)
                | Value::UnicodeStringLiteral(s) => s.as_str(),
                Value::DollarQuotedString(d) => d.value.as_str(),
                _ => return None,
            };
            match analyze(text) {
                Analysis::Statements(list) => {
                    let mut merged = StatementFacts::default();
                    for facts in &list {
                        merge(&mut merged, facts);
                    }
                    Some(merged)
                }
                Analysis::Unanalyzable { .. } => None,
            }
        }
        CreateFunctionBody::Return(_) => Some(StatementFacts::default()),
        _ => None,
    }
}

/// Add what `body` does to `facts`, as if it ran as part of the statement.
pub fn merge(facts: &mut StatementFacts, body: &StatementFacts) {
    facts.kinds.extend(body.kinds.iter().copied());
    facts.tables.extend(body.tables.iter().cloned());
    facts.functions.extend(body.functions.iter().cloned());
    facts.missing_where |= body.missing_where;
    facts.copy_program |= body.copy_program;
    facts.copy_file |= body.copy_file;
    facts.settings.extend(body.settings.iter().cloned());
    if body.opaque_body {
        facts.opaque_body = true;
        if facts.unseen.is_none() {
            facts.unseen.clone_from(&body.unseen);
        }
    }
    facts.defines.extend(body.defines.iter().cloned());
    facts.effect = facts.effect.max(body.effect);
}

/// Mark a statement as running code the analysis cannot see into, for `why`.
pub fn runs_unseen_code(facts: &mut StatementFacts, why: &str) {
    facts.opaque_body = true;
    facts.kinds.insert(StatementKind::DoBlock);
    facts.kinds.remove(&StatementKind::Other);
    if facts.unseen.is_none() {
        facts.unseen = Some(why.to_owned());
    }
    facts.effect = super::analyze::Effect::Other;
}

/// One kept definition.
#[derive(Clone, Debug)]
struct Kept {
    /// The schema it was created in (`pg_temp` for every temporary schema); `None` when it
    /// is not known (every schema).
    schema: Option<String>,
    signature: String,
    body: Option<Arc<StatementFacts>>,
    text: String,
}

/// The definitions made through this sidecar for one resource.
#[derive(Debug, Default)]
pub struct Definitions {
    kept: Mutex<Store>,
}

#[derive(Debug, Default)]
struct Store {
    by_name: HashMap<(ObjectKind, String), Vec<Kept>>,
    count: usize,
    /// More definitions were made than are kept.
    saturated: bool,
}

/// A statement with the definitions it runs: its facts as if they ran, and their texts.
#[derive(Clone, Debug, Default)]
pub struct Expanded {
    /// The statement's facts with the definitions it runs merged in.
    pub facts: StatementFacts,
    /// The texts of the definitions it runs, in the order found.
    pub runs: Vec<String>,
}

fn temp_schema(schema: &str) -> bool {
    schema.starts_with("pg_temp")
}

impl Definitions {
    /// Keep the definitions `facts` makes (a statement about to run), their unqualified
    /// names placed in the schema `path` creates objects in.
    pub fn define(&self, facts: &StatementFacts, path: &SearchPath) {
        if facts.defines.is_empty() {
            return;
        }
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        for d in &facts.defines {
            let schema = match &d.name.schema {
                Some(s) if temp_schema(s) => Some("pg_temp".to_owned()),
                Some(s) => Some(s.clone()),
                None => path.creation_schema().map(str::to_owned),
            };
            let key = (d.kind, d.name.name.clone());
            let entry = Kept {
                schema,
                signature: d.signature.clone(),
                body: d.body.clone(),
                text: d.text.clone(),
            };
            // A redefinition replaces the definition of the same schema and signature.
            let store = &mut *kept;
            let list = store.by_name.entry(key).or_default();
            let before = list.len();
            list.retain(|k| !(k.schema == entry.schema && k.signature == entry.signature));
            let removed = before - list.len();
            if list.len() >= MAX_PER_NAME {
                list.remove(0);
                store.saturated = true;
            }
            list.push(entry);
            store.count = (store.count + 1).saturating_sub(removed);
            if kept.count > MAX_DEFINITIONS {
                kept.by_name.clear();
                kept.count = 0;
                kept.saturated = true;
            }
        }
    }

    fn matching(&self, kind: ObjectKind, name: &Qualified, path: &SearchPath) -> Vec<Kept> {
        let Ok(kept) = self.kept.lock() else {
            return Vec::new();
        };
        let Some(list) = kept.by_name.get(&(kind, name.name.clone())) else {
            return Vec::new();
        };
        list.iter()
            .filter(|k| match (&name.schema, &k.schema) {
                (_, None) => true,
                (Some(written), Some(s)) => {
                    s == written || (temp_schema(written) && s == "pg_temp")
                }
                // Unqualified function calls never search the temporary schema; relations
                // are searched there first.
                (None, Some(s)) if s == "pg_temp" => kind == ObjectKind::Relation,
                (None, Some(s)) => path.may_resolve_to(s),
            })
            .cloned()
            .collect()
    }

    fn saturated(&self) -> bool {
        self.kept.lock().map_or(true, |k| k.saturated)
    }

    /// The statement `facts` with what it runs: the definitions kept here of the functions
    /// it calls and the relations it names (at any depth), and the guarded tables beneath the
    /// relations it names that the catalog knows (`sources`, read for `guarded`). `None` when
    /// it runs nothing of that.
    pub fn expand(
        &self,
        facts: &StatementFacts,
        path: &SearchPath,
        sources: &RowSources,
        guarded: &[QualifiedTable],
    ) -> Option<Expanded> {
        let mut out = Expanded {
            facts: facts.clone(),
            runs: Vec::new(),
        };
        let mut seen_functions: BTreeSet<Qualified> = BTreeSet::new();
        let mut seen_relations: BTreeSet<Qualified> = BTreeSet::new();
        let mut changed = false;
        for _ in 0..MAX_DEPTH {
            let functions: Vec<Qualified> = out
                .facts
                .functions
                .iter()
                .filter(|f| !seen_functions.contains(*f))
                .cloned()
                .collect();
            let relations: Vec<Qualified> = out
                .facts
                .tables
                .iter()
                .filter(|t| !seen_relations.contains(*t))
                .cloned()
                .collect();
            if functions.is_empty() && relations.is_empty() {
                break;
            }
            for f in functions {
                seen_functions.insert(f.clone());
                if self.saturated() && !super::analyze::is_known_builtin(&f) {
                    runs_unseen_code(
                        &mut out.facts,
                        &format!("function {f} may have been defined through the sidecar beyond the definitions it keeps"),
                    );
                    changed = true;
                }
                for k in self.matching(ObjectKind::Function, &f, path) {
                    changed = true;
                    if !out.runs.contains(&k.text) {
                        out.runs.push(k.text.clone());
                    }
                    match &k.body {
                        Some(body) => merge(&mut out.facts, body),
                        None => runs_unseen_code(
                            &mut out.facts,
                            "a function defined through the sidecar has a body the analysis cannot see into",
                        ),
                    }
                }
            }
            for r in relations {
                seen_relations.insert(r.clone());
                for k in self.matching(ObjectKind::Relation, &r, path) {
                    changed = true;
                    if !out.runs.contains(&k.text) {
                        out.runs.push(k.text.clone());
                    }
                    if let Some(body) = &k.body {
                        // What a view reads is what a statement naming it reaches.
                        out.facts.tables.extend(body.tables.iter().cloned());
                        out.facts.functions.extend(body.functions.iter().cloned());
                    }
                }
                let beneath: Vec<&QualifiedTable> = match sources.carried(&r, path) {
                    Carried::Roots(roots) => guarded
                        .iter()
                        .filter(|t| roots.contains(&format!("{}.{}", t.schema, t.table)))
                        .collect(),
                    Carried::Unknown => guarded.iter().collect(),
                };
                for t in beneath {
                    let q = Qualified {
                        schema: Some(t.schema.clone()),
                        name: t.table.clone(),
                    };
                    // The relation may be the table itself: nothing beneath it.
                    if r.may_be(&t.schema, &t.table, path) {
                        continue;
                    }
                    if out.facts.tables.insert(q) {
                        changed = true;
                    }
                }
            }
        }
        changed.then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sql: &str) -> StatementFacts {
        match analyze(sql) {
            Analysis::Statements(mut s) => s.remove(0),
            Analysis::Unanalyzable { reason, .. } => panic!("{sql}: {reason}"),
        }
    }

    fn path() -> SearchPath {
        SearchPath::from_setting("\"$user\", public", "app", Some("public".into()))
    }

    fn contacts() -> Qualified {
        Qualified {
            schema: Some("crm".into()),
            name: "contacts".into(),
        }
    }

    #[test]
    fn an_sql_body_is_judged_as_if_it_ran() {
        for sql in [
            "CREATE FUNCTION pg_temp.f() RETURNS void LANGUAGE sql AS 'DELETE FROM crm.contacts WHERE id = 1'",
            "CREATE OR REPLACE FUNCTION f() RETURNS void LANGUAGE SQL AS $$ DELETE FROM crm.contacts WHERE id = 1 $$",
            "CREATE FUNCTION f() RETURNS void AS $b$ SELECT 1; DELETE FROM crm.contacts WHERE id = 1 $b$ LANGUAGE sql",
        ] {
            let f = one(sql);
            assert!(f.kinds.contains(&StatementKind::Delete), "{sql}");
            assert!(f.tables.contains(&contacts()), "{sql}");
            assert!(!f.opaque_body, "{sql}");
            assert_eq!(f.defines.len(), 1, "{sql}");
        }
        let f =
            one("CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$");
        assert!(f.opaque_body && f.defines[0].body.is_none());
        assert!(!f.kinds.contains(&StatementKind::DoBlock));
    }

    #[test]
    fn calls_and_views_run_what_was_defined() {
        let defs = Definitions::default();
        let p = path();
        let none = RowSources::from_rows(&[]).expect("rows");
        defs.define(
            &one("CREATE FUNCTION pg_temp.f() RETURNS void LANGUAGE sql AS 'DELETE FROM crm.contacts WHERE id = 1'"),
            &p,
        );
        defs.define(
            &one("CREATE FUNCTION w() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$"),
            &p,
        );
        defs.define(
            &one("CREATE TEMP VIEW contacts AS SELECT * FROM crm.contacts"),
            &p,
        );
        let e = defs
            .expand(&one("SELECT pg_temp.f()"), &p, &none, &[])
            .expect("runs f");
        assert!(e.facts.kinds.contains(&StatementKind::Delete));
        assert_eq!(e.runs.len(), 1);
        let e = defs
            .expand(&one("SELECT w()"), &p, &none, &[])
            .expect("runs w");
        assert!(e.facts.kinds.contains(&StatementKind::DoBlock) && e.facts.opaque_body);
        let e = defs
            .expand(&one("DELETE FROM contacts WHERE id = 1"), &p, &none, &[])
            .expect("through the view");
        assert!(e.facts.tables.contains(&contacts()));
        // An unqualified call never reaches pg_temp; other names run nothing kept.
        assert!(defs.expand(&one("SELECT f()"), &p, &none, &[]).is_none());
        assert!(defs
            .expand(&one("DELETE FROM crm.other WHERE id = 1"), &p, &none, &[])
            .is_none());
        // A redefinition replaces the kept text.
        defs.define(
            &one("CREATE OR REPLACE FUNCTION w() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 2; END $$"),
            &p,
        );
        let e = defs.expand(&one("SELECT w()"), &p, &none, &[]).expect("w");
        assert_eq!(e.runs.len(), 1);
        assert!(e.runs[0].contains("RETURN 2"));
    }

    #[test]
    fn catalog_views_reach_the_guarded_tables() {
        let row = |s: &str, n: &str, r: &str| vec![Some(s.into()), Some(n.into()), Some(r.into())];
        let sources = RowSources::from_rows(&[
            row("crm", "contacts", "crm.contacts"),
            row("public", "rt_contacts", "crm.contacts"),
            row("public", "other", ""),
        ])
        .expect("rows");
        let guarded = [QualifiedTable {
            schema: "crm".into(),
            table: "contacts".into(),
        }];
        let defs = Definitions::default();
        let e = defs
            .expand(
                &one("DELETE FROM public.rt_contacts WHERE id = 1"),
                &path(),
                &sources,
                &guarded,
            )
            .expect("view");
        assert!(e.facts.tables.contains(&contacts()));
        assert!(defs
            .expand(
                &one("DELETE FROM other WHERE id = 1"),
                &path(),
                &sources,
                &guarded
            )
            .is_none());
        // A map that could not be read: every relation may be over every guarded table.
        let e = defs
            .expand(
                &one("DELETE FROM other WHERE id = 1"),
                &path(),
                &RowSources::unknown(),
                &guarded,
            )
            .expect("unknown");
        assert!(e.facts.tables.contains(&contacts()));
    }
}
