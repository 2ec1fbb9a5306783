//! SQL text through the statement analysis (guardrail facts) and the masking lineage.
//!
//! Properties: nothing panics or overflows; a statement whose effect is "reads only" has no
//! kind that writes; every statement that parsed can be analysed by the lineage against a
//! catalog with a masked column.
#![no_main]
use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use portcullis_crds::gateway_policy::StatementKind;
use portcullis_sidecar::masking::lineage::{Analyzer, Catalog, CatalogColumn};
use portcullis_sidecar::policy::analyze::{analyze, Analysis, Effect};

struct Shop;

impl Catalog for Shop {
    fn relation(&self, name: &[String]) -> Option<Vec<CatalogColumn>> {
        let col = |n: &str, rule: Option<&str>| CatalogColumn {
            name: n.to_owned(),
            rules: rule.into_iter().map(str::to_owned).collect(),
            unproven: BTreeSet::new(),
            computed: BTreeSet::new(),
        };
        match name.last()?.as_str() {
            "customers" => Some(vec![
                col("id", None),
                col("email", Some("p/email")),
                col("name", Some("p/name")),
            ]),
            "orders" => Some(vec![col("id", None), col("customer_id", None)]),
            _ => None,
        }
    }
}

const WRITING: &[StatementKind] = &[
    StatementKind::Insert,
    StatementKind::Update,
    StatementKind::Delete,
    StatementKind::Merge,
    StatementKind::Truncate,
    StatementKind::Ddl,
    StatementKind::Dcl,
    StatementKind::Copy,
    StatementKind::DoBlock,
    StatementKind::Call,
];

fuzz_target!(|sql: &str| {
    let sql = sql.to_owned();
    // Statements are analysed on the session workers' stack, as in the sidecar.
    portcullis_fuzz::on_session_stack(move || check(&sql));
});

fn check(sql: &str) {
    let Analysis::Statements(statements) = analyze(sql) else {
        return;
    };
    for facts in &statements {
        if facts.effect == Effect::Reads {
            let writes: Vec<_> = WRITING.iter().filter(|k| facts.kinds.contains(k)).collect();
            assert!(
                writes.is_empty(),
                "{sql:?} is called read-only but is of kinds {writes:?}"
            );
        }
        if let Some(ast) = &facts.ast {
            let lineage = Analyzer::new(&Shop).statement(ast);
            let _ = lineage.output.map(|s| s.total());
            let _ = ast.to_string();
        }
    }
}
