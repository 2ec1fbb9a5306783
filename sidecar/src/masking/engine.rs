//! Masking applied: the rules of a resource, what one session may see, the plan of one
//! statement (its lineage), and the rewriting of one result (RowDescription + DataRows, or a
//! COPY TO STDOUT stream) with the counts that go into the completion record.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use portcullis_crds::audit::{Identity, MaskedColumn, RuleRef};
use portcullis_crds::gateway_policy::{Detector, MaskingStrategy, PredicateMode, Subject};
use portcullis_crds::sidecar_config::{MaskingConfig, PolicyConfig, QualifiedColumn};
use portcullis_crds::StatementKind;
use sqlparser::ast::{CopyLegacyOption, CopyOption, Statement};

use super::catalog::{Catalogs, DbCatalog, View};
use super::detectors::{compile_pattern, DetectorKind, Patterns};
use super::lineage::{Analyzer, PredicateUse, Shape, Taint};
use super::strategy::{self, Strategy};
use super::written::{control_of, Control, Mark, Pending, Publish};
use crate::policy::analyze::StatementFacts;
use crate::postgres::upstream::Upstream;

static NO_KEY: std::sync::LazyLock<strategy::HashKey> =
    std::sync::LazyLock::new(|| strategy::HashKey::new(b""));

/// Policy name of the rule that masks columns whose lineage is unproven.
pub const BUILTIN_POLICY: &str = "builtin";
/// Rule name of the rule that masks columns whose lineage is unproven.
pub const UNPROVEN_RULE: &str = "unproven-lineage";

/// Why masking could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MaskingError {
    /// A user pattern does not compile.
    #[error("masking rule {rule}: {source}")]
    Pattern {
        /// policy/rule.
        rule: String,
        /// The compile error.
        source: super::detectors::PatternError,
    },
    /// The built-in patterns do not compile (a bug).
    #[error("built-in detector patterns: {0}")]
    Builtin(#[from] regex::Error),
    /// The hash key file cannot be read.
    #[error("cannot read the masking hash key {path}: {source}")]
    Key {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The hash key file is empty.
    #[error("the masking hash key {0} is empty")]
    EmptyKey(String),
}

/// One masking rule of a policy.
#[derive(Debug)]
pub struct Rule {
    /// Policy and rule.
    pub rule: RuleRef,
    /// Key used in taints: `policy/rule`.
    pub key: String,
    /// Strategy.
    pub strategy: Strategy,
    /// Value detector.
    pub detector: Option<DetectorKind>,
    /// Masked columns.
    pub columns: Vec<QualifiedColumn>,
    /// Subjects that see the data in clear.
    pub exempt: Vec<Subject>,
    /// Where statements may use the columns outside the select list.
    pub predicates: PredicateMode,
}

/// The masking rules of one resource.
pub struct Masker {
    rules: Vec<Rule>,
    patterns: Patterns,
    key: Option<strategy::HashKey>,
    catalogs: Option<Catalogs>,
    namespace: String,
}

fn strategy_of(s: MaskingStrategy) -> Strategy {
    match s {
        MaskingStrategy::Redact => Strategy::Redact,
        MaskingStrategy::Null => Strategy::Null,
        MaskingStrategy::Partial => Strategy::Partial,
        MaskingStrategy::Hash => Strategy::Hash,
    }
}

/// Whether `identity` (the workload and the person or pipeline run of its token) is one of
/// `subjects`.
pub fn is_exempt(subjects: &[Subject], identity: &Identity, namespace: &str) -> bool {
    crate::identity::matches_any(subjects, identity, namespace)
}

impl Masker {
    /// The rules of `policies` (already those that apply to the caller).
    pub fn new(
        policies: &[PolicyConfig],
        config: &MaskingConfig,
        namespace: &str,
        upstream: Arc<Upstream>,
    ) -> Result<Masker, MaskingError> {
        let mut rules = Vec::new();
        for p in policies {
            for r in &p.masking {
                let key = format!("{}/{}", p.name, r.name);
                let detector = match r.detector {
                    None => None,
                    Some(Detector::Email) => Some(DetectorKind::Email),
                    Some(Detector::PaymentCard) => Some(DetectorKind::PaymentCard),
                    Some(Detector::Iban) => Some(DetectorKind::Iban),
                    Some(Detector::Phone) => Some(DetectorKind::Phone),
                    Some(Detector::Regex) => Some(DetectorKind::Regex(
                        compile_pattern(r.pattern.as_deref().unwrap_or("")).map_err(|source| {
                            MaskingError::Pattern {
                                rule: key.clone(),
                                source,
                            }
                        })?,
                    )),
                };
                rules.push(Rule {
                    rule: RuleRef {
                        policy: p.name.clone(),
                        rule: r.name.clone(),
                    },
                    key,
                    strategy: strategy_of(r.strategy),
                    detector,
                    columns: r.columns.clone(),
                    exempt: r.exempt.clone(),
                    predicates: r.predicates,
                });
            }
        }
        let key = match &config.hash_key_file {
            Some(path) => Some(strategy::HashKey::new(&read_key(path)?)),
            None => None,
        };
        let columns: Vec<(String, QualifiedColumn)> = rules
            .iter()
            .flat_map(|r| r.columns.iter().map(|c| (r.key.clone(), c.clone())))
            .collect();
        let catalogs = (!columns.is_empty()).then(|| {
            Catalogs::new(
                upstream,
                columns,
                std::time::Duration::from_secs(config.catalog_refresh_seconds),
            )
        });
        Ok(Masker {
            rules,
            patterns: Patterns::new()?,
            key,
            catalogs,
            namespace: namespace.to_owned(),
        })
    }

    /// Whether any rule exists.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The masking of one session of `identity` on `database`.
    pub async fn session(
        self: &Arc<Self>,
        identity: &Identity,
        database: &str,
        user: &str,
    ) -> Option<Arc<SessionMasking>> {
        let active: Vec<usize> = (0..self.rules.len())
            .filter(|i| !is_exempt(&self.rules[*i].exempt, identity, &self.namespace))
            .collect();
        if active.is_empty() {
            return None;
        }
        let column_rules = active.iter().any(|i| !self.rules[*i].columns.is_empty());
        let catalog = match (&self.catalogs, column_rules) {
            (Some(c), true) => Some(c.database(database, user).await),
            _ => None,
        };
        let detectors = active
            .iter()
            .copied()
            .filter(|i| self.rules[*i].detector.is_some())
            .collect();
        static SESSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Some(Arc::new(SessionMasking {
            masker: self.clone(),
            active_keys: active.iter().map(|i| self.rules[*i].key.clone()).collect(),
            detectors,
            catalog,
            settings_tainted: AtomicBool::new(false),
            id: SESSIONS.fetch_add(1, Ordering::Relaxed),
            pending: std::sync::Mutex::new(Pending::default()),
        }))
    }
}

fn read_key(path: &Path) -> Result<Vec<u8>, MaskingError> {
    let key = std::fs::read(path).map_err(|source| MaskingError::Key {
        path: path.display().to_string(),
        source,
    })?;
    let trimmed = key
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map(|end| key[..=end].to_vec())
        .unwrap_or_default();
    if trimmed.is_empty() {
        return Err(MaskingError::EmptyKey(path.display().to_string()));
    }
    Ok(trimmed)
}

/// The masking of one session.
pub struct SessionMasking {
    masker: Arc<Masker>,
    active_keys: BTreeSet<String>,
    detectors: Vec<usize>,
    catalog: Option<Arc<DbCatalog>>,
    settings_tainted: AtomicBool,
    /// Identifies the session's marks in flight.
    id: u64,
    /// The session's writes of masked data that are not committed.
    pending: std::sync::Mutex<Pending>,
}

impl Drop for SessionMasking {
    fn drop(&mut self) {
        // The server rolls back what the session left open.
        if let Some(c) = &self.catalog {
            c.written(|w| w.set_in_flight(self.id, Vec::new()));
        }
    }
}

impl std::fmt::Debug for SessionMasking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionMasking")
            .field("active", &self.active_keys)
            .field("columns", &self.catalog.is_some())
            .finish()
    }
}

/// COPY TO STDOUT format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyFormat {
    /// Text, with its delimiter.
    Text {
        /// Field delimiter.
        delimiter: u8,
    },
    /// CSV.
    Csv {
        /// Field delimiter.
        delimiter: u8,
        /// Quote character.
        quote: u8,
        /// Escape character.
        escape: u8,
        /// First row holds column names.
        header: bool,
    },
    /// Binary.
    Binary,
}

/// What the sidecar knows about one statement's result before it arrives.
#[derive(Debug)]
pub struct StatementPlan {
    /// Lineage of the output columns; `None` when the statement's output is not known.
    pub shape: Option<Shape>,
    /// The output cannot carry table data (`SHOW`, `EXPLAIN`).
    pub clean: bool,
    /// COPY TO STDOUT format.
    pub copy: Option<CopyFormat>,
    /// The statement changes the schema: re-read the catalog when it completes.
    pub ddl: bool,
    /// Columns it writes masked data into.
    pub marks: Vec<Mark>,
    /// What it does to the transaction.
    pub control: Option<Control>,
}

fn copy_format(statement: &Statement) -> Option<CopyFormat> {
    let Statement::Copy {
        to: true,
        target: sqlparser::ast::CopyTarget::Stdout,
        options,
        legacy_options,
        ..
    } = statement
    else {
        return None;
    };
    let mut format = "text".to_owned();
    let mut delimiter = None;
    let mut quote = b'"';
    let mut escape = None;
    let mut header = false;
    for o in options {
        match o {
            CopyOption::Format(f) => format = f.value.to_lowercase(),
            CopyOption::Delimiter(c) => delimiter = Some(*c as u8),
            CopyOption::Quote(c) => quote = *c as u8,
            CopyOption::Escape(c) => escape = Some(*c as u8),
            CopyOption::Header(h) => header = *h,
            _ => {}
        }
    }
    for o in legacy_options {
        match o {
            CopyLegacyOption::Binary => format = "binary".into(),
            CopyLegacyOption::Csv(more) => {
                format = "csv".into();
                for m in more {
                    match m {
                        sqlparser::ast::CopyLegacyCsvOption::Header => header = true,
                        sqlparser::ast::CopyLegacyCsvOption::Quote(c) => quote = *c as u8,
                        sqlparser::ast::CopyLegacyCsvOption::Escape(c) => escape = Some(*c as u8),
                        _ => {}
                    }
                }
            }
            CopyLegacyOption::Delimiter(c) => delimiter = Some(*c as u8),
            _ => {}
        }
    }
    Some(match format.as_str() {
        "binary" => CopyFormat::Binary,
        "csv" => CopyFormat::Csv {
            delimiter: delimiter.unwrap_or(b','),
            quote,
            escape: escape.unwrap_or(quote),
            header,
        },
        _ => CopyFormat::Text {
            delimiter: delimiter.unwrap_or(b'\t'),
        },
    })
}

/// What a statement writes into tables, including statements it carries (`EXPLAIN ANALYZE`
/// runs its statement; `PREPARE` is recorded as if it ran). A view's columns are followed
/// through its definition when the catalog is read again: only tables keep what was written.
fn writes_of(analyzer: &Analyzer<'_>, ast: &Statement, depth: usize) -> Vec<super::lineage::Write> {
    match ast {
        Statement::CreateView(_) => Vec::new(),
        Statement::Explain { statement, .. } | Statement::Prepare { statement, .. }
            if depth < 4 =>
        {
            writes_of(analyzer, statement, depth + 1)
        }
        other => analyzer.statement(other).writes,
    }
}

/// Policy rule name of statements refused because masking could not follow them.
pub const OPAQUE_RULE: &str = "masking-opaque";

impl SessionMasking {
    /// A refusal for statements that could move masked data where the sidecar cannot follow
    /// it (code bodies it cannot read, MERGE), when column rules apply to the session.
    pub fn refusal(&self, facts: &StatementFacts) -> Option<crate::policy::guardrails::Verdict> {
        self.catalog.as_ref()?;
        let carried;
        // A function body runs where results are not masked by column (its caller sees
        // only the function's name), whether or not the body can be read.
        let defines_code = facts
            .defines
            .iter()
            .any(|d| d.kind == crate::policy::code::ObjectKind::Function);
        let what = if facts.opaque_body || defines_code {
            "statements with code bodies the sidecar cannot analyse (DO, CREATE FUNCTION, CREATE PROCEDURE)"
        } else if facts.kinds.contains(&StatementKind::Merge) {
            "MERGE"
        } else if facts.kinds.contains(&StatementKind::Ddl) && self.names_masked_table(facts) {
            "schema changes of tables with masked columns (generated columns, constraints, index predicates, row security policies, partition bounds and defaults compute over their values on the server)"
        } else {
            let (carriers, uses) = self.uses(facts);
            if let Some(c) = carriers.into_iter().next() {
                carried = format!("statements where a {c}");
                carried.as_str()
            } else {
                return self.predicate_refusal(&uses);
            }
        };
        Some(crate::policy::guardrails::Verdict {
            decision: portcullis_crds::audit::Decision::Deny,
            rule: Some(RuleRef {
                policy: BUILTIN_POLICY.into(),
                rule: OPAQUE_RULE.into(),
            }),
            reason: Some(format!(
                "{what} are refused while masking rules apply: they could copy masked data to where results would not be masked (rule {BUILTIN_POLICY}/{OPAQUE_RULE})"
            )),
        })
    }

    /// Whether a table the statement names has a column that rules applying to the session
    /// mask (so DDL on it may compute over masked values on the server).
    fn names_masked_table(&self, facts: &StatementFacts) -> bool {
        let Some(cat) = &self.catalog else {
            return false;
        };
        // DDL that makes the server compute over a table's rows (columns, constraints, index
        // predicates, row security, triggers, partitions and inheritance) is what is refused; a
        // table or view defined by a query reads the tables it names as a query does.
        let mut ast = facts.ast.as_deref();
        while let Some(
            Statement::Explain { statement, .. } | Statement::Prepare { statement, .. },
        ) = ast
        {
            ast = Some(statement.as_ref());
        }
        let computes = match ast {
            // Renames follow the table (the catalog is read again after DDL).
            Some(Statement::AlterTable(at)) => !at.operations.iter().all(|o| {
                matches!(
                    o,
                    sqlparser::ast::AlterTableOperation::RenameTable { .. }
                        | sqlparser::ast::AlterTableOperation::RenameColumn { .. }
                )
            }),
            // A new table computes over another's rows only when it attaches to it.
            Some(Statement::CreateTable(t)) => {
                t.query.is_none()
                    && (t.inherits.is_some()
                        || t.partition_of.is_some()
                        || t.like.is_some()
                        || t.clone.is_some())
            }
            Some(
                Statement::CreateIndex(_)
                | Statement::CreatePolicy(_)
                | Statement::AlterPolicy(_)
                | Statement::CreateTrigger(_),
            ) => true,
            // Other DDL (DROP, COMMENT, views, tables defined by a query) computes nothing
            // over the rows of the tables it names.
            _ => false,
        };
        if !computes {
            return false;
        }
        let view = self.view(cat);
        facts.tables.iter().any(|t| {
            let name: Vec<String> = t.schema.iter().cloned().chain([t.name.clone()]).collect();
            super::lineage::Catalog::relation(&view, &name).is_some_and(|cols| {
                cols.iter().any(|c| {
                    c.rules.iter().any(|r| self.active_keys.contains(r)) || !c.unproven.is_empty()
                })
            })
        })
    }

    /// What of a statement carries masked data outside result values (row counts of
    /// set-returning functions and of `LIMIT`/`OFFSET`/`FETCH`, side effects of functions not
    /// known to be pure, anywhere in the statement), and its uses of masked data outside the
    /// select list, both restricted to the rules that apply to the session.
    fn uses(&self, facts: &StatementFacts) -> (Vec<String>, Vec<PredicateUse>) {
        let (Some(cat), Some(ast)) = (&self.catalog, facts.ast.as_deref()) else {
            return (Vec::new(), Vec::new());
        };
        // The analysis runs for statements that call a function that may carry masked data,
        // that bound their rows, or when a rule restricts predicates.
        let suspect = facts.functions.iter().any(|f| {
            !crate::policy::analyze::is_read_only_function(f)
                || super::lineage::SET_RETURNING.contains(&f.name.as_str())
        }) || ["LIMIT", "OFFSET", "FETCH"]
            .iter()
            .any(|k| facts.normalized.contains(k))
            || self.active_keys.iter().any(|k| {
                self.rule(k)
                    .is_some_and(|r| r.predicates != PredicateMode::Allow)
            });
        if !suspect {
            return (Vec::new(), Vec::new());
        }
        let view = self.view(cat);
        let analyzer = Analyzer::new(&view);
        let _ = analyzer.statement(ast);
        let carriers = analyzer
            .carriers()
            .into_iter()
            .filter(|(_, taint)| !self.active(taint).rules.is_empty())
            .map(|(what, _)| what)
            .collect();
        let uses = analyzer
            .predicate_uses()
            .into_iter()
            .filter_map(|mut u| {
                u.rules.retain(|r| self.active_keys.contains(r));
                (!u.rules.is_empty()).then_some(u)
            })
            .collect();
        (carriers, uses)
    }

    /// A refusal for a use of a masked column its rule's `predicates` mode does not allow.
    fn predicate_refusal(
        &self,
        uses: &[PredicateUse],
    ) -> Option<crate::policy::guardrails::Verdict> {
        for u in uses {
            for key in &u.rules {
                let Some(rule) = self.rule(key) else {
                    continue;
                };
                let allowed = match rule.predicates {
                    PredicateMode::Allow => true,
                    PredicateMode::Equality => u.equality,
                    PredicateMode::Deny => false,
                };
                if allowed {
                    continue;
                }
                let what = match rule.predicates {
                    PredicateMode::Equality => "may be used outside the select list only in = or IN against parameters or literals, IS [NOT] NULL, or a join equality, with no function over it",
                    _ => "may be used only in the select list",
                };
                return Some(crate::policy::guardrails::Verdict {
                    decision: portcullis_crds::audit::Decision::Deny,
                    rule: Some(rule.rule.clone()),
                    reason: Some(format!(
                        "column {} is masked by rule {} with predicates: {}: it {what}; refused for its use in {} (rule {})",
                        u.column,
                        rule.key,
                        rule.predicates.as_str(),
                        u.place,
                        rule.key
                    )),
                });
            }
        }
        None
    }

    /// Whether column rules apply (results need a lineage).
    pub fn has_columns(&self) -> bool {
        self.catalog.is_some()
    }

    /// Plan a statement before it is forwarded. Records what it writes into tables and
    /// marks the catalog stale for DDL, both before the statement runs.
    pub fn plan(
        &self,
        facts: &StatementFacts,
        path: &crate::policy::names::SearchPath,
    ) -> Arc<StatementPlan> {
        let ddl = facts.kinds.contains(&StatementKind::Ddl);
        if facts.functions.iter().any(|f| f.name == "set_config") {
            self.settings_tainted.store(true, Ordering::Release);
        }
        let Some(ast) = facts.ast.as_deref() else {
            return Arc::new(StatementPlan {
                shape: None,
                clean: false,
                copy: None,
                ddl,
                marks: Vec::new(),
                control: None,
            });
        };
        let copy = copy_format(ast);
        let clean = match ast {
            Statement::ExplainTable { .. } => true,
            Statement::ShowVariable { .. } | Statement::ShowVariables { .. } => {
                !self.settings_tainted.load(Ordering::Acquire)
            }
            _ => false,
        };
        let control = control_of(ast);
        let mut marks = Vec::new();
        let shape = match &self.catalog {
            Some(cat) => {
                let view = self.view(cat);
                let analyzer =
                    Analyzer::new(&view).with_shadowed_builtins(path.builtins_may_be_shadowed());
                let mut lineage = analyzer.statement(ast);
                // A plan shows constants the planner folded, filters and output expressions
                // of the statement explained: it is as masked as anything that statement
                // could return.
                if let Statement::Explain { statement, .. } = ast {
                    let mut inner = match analyzer.statement(statement).output {
                        Some(shape) => shape.total(),
                        None => Taint::unproven("the explained statement's output is not known"),
                    };
                    // Filters are not in the output's lineage: a value a server function
                    // computed (and the planner folded) can show in any plan line.
                    if facts
                        .functions
                        .iter()
                        .any(|f| !crate::policy::analyze::is_read_only_function(f))
                    {
                        inner.unproven.insert(
                            "the plan may show values server functions computed".to_owned(),
                        );
                    }
                    // Plan lines are text computed from the statement, not its values.
                    inner = inner.as_computed();
                    lineage.output = Some(Shape::Opaque(inner));
                }
                for w in writes_of(&analyzer, ast, 0) {
                    let taint = self.active(&w.taint);
                    if taint.must_mask() {
                        marks.push(Mark::new(&w.table, w.column, taint));
                    }
                }
                let in_flight = self.pending().planned(&marks, control.as_ref());
                if let Some(in_flight) = in_flight {
                    cat.written(|w| w.set_in_flight(self.id, in_flight));
                }
                if ddl {
                    cat.ddl_forwarded();
                }
                lineage.output
            }
            // Only detectors apply: every column is clean as far as lineage goes.
            None => Some(Shape::Opaque(Taint::default())),
        };
        Arc::new(StatementPlan {
            shape,
            clean,
            copy,
            ddl,
            marks,
            control,
        })
    }

    /// Plan for a statement that could not be analysed (forwarded under `onUnanalyzable:
    /// audit`): every column is unproven.
    pub fn plan_unknown(&self) -> Arc<StatementPlan> {
        Arc::new(StatementPlan {
            shape: self
                .catalog
                .as_ref()
                .map_or(Some(Shape::Opaque(Taint::default())), |_| None),
            clean: false,
            copy: None,
            ddl: false,
            marks: Vec::new(),
            control: None,
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The catalog as this session sees it: with its own uncommitted writes.
    fn view(&self, cat: &DbCatalog) -> View {
        cat.view(self.pending().own())
    }

    /// A statement completed: `ran` when the server executed it (its command tag `tag`),
    /// not when it failed or was skipped. Commits the marks of a committed transaction and
    /// re-reads the catalog after DDL.
    pub fn completed(&self, plan: &StatementPlan, ran: bool, tag: Option<&str>) {
        let Some(c) = &self.catalog else { return };
        if plan.ddl {
            c.request_refresh();
        }
        let publish = self
            .pending()
            .completed(&plan.marks, plan.control.as_ref(), ran, tag);
        // The transaction ended: before the client hears of it, other sessions see what it
        // committed and no longer what it did not.
        if let Publish::Commit(marks) = &publish {
            c.commit_written(marks.clone());
        }
        if publish != Publish::Nothing {
            let own = self.pending().own();
            c.written(|w| w.narrow_in_flight(self.id, own));
        }
    }

    /// ReadyForQuery with transaction status `status`: what the ended transaction wrote is
    /// committed, and nothing of this session is in flight any more.
    pub fn ready(&self, status: u8) {
        let Some(c) = &self.catalog else { return };
        if let Publish::Commit(marks) = self.pending().ready(status) {
            c.commit_written(marks);
        }
        c.written(|w| w.set_in_flight(self.id, Vec::new()));
    }

    /// The rules of `t` that apply to this session (exempt rules dropped).
    fn active(&self, t: &Taint) -> Taint {
        Taint {
            rules: t
                .rules
                .iter()
                .filter(|r| self.active_keys.contains(*r))
                .cloned()
                .collect(),
            unproven: t.unproven.clone(),
            computed: t.computed.clone(),
        }
    }

    fn rule(&self, key: &str) -> Option<&Rule> {
        self.masker.rules.iter().find(|r| r.key == key)
    }

    fn column_mask(&self, taint: &Taint, direct: bool) -> Option<ColumnMask> {
        let taint = self.active(taint);
        if !taint.must_mask() {
            return None;
        }
        let mut strategy: Option<Strategy> = None;
        let mut rules = Vec::new();
        for key in &taint.rules {
            let Some(r) = self.rule(key) else {
                // A rule this session does not know: fail closed.
                strategy = Some(Strategy::Redact);
                continue;
            };
            {
                // The columns of a detector rule hold free text: the detector masks what it
                // finds in the column's own values, and anything computed from them (which
                // the detector may no longer recognise) is redacted, or null.
                if r.detector.is_some() && !taint.computed.contains(key) {
                    continue;
                }
                let s = match r.strategy {
                    Strategy::Null if r.detector.is_some() => Strategy::Null,
                    _ if r.detector.is_some() => Strategy::Redact,
                    Strategy::Hash if self.masker.key.is_none() => Strategy::Redact,
                    // A keyed hash of a computed value (one character, a constant joined to
                    // the column) builds a dictionary that decodes the column: only direct
                    // references are hashed.
                    Strategy::Hash if !direct => Strategy::Redact,
                    // Keeping "part" of a computed value could keep the wrong part.
                    Strategy::Partial if !direct => Strategy::Redact,
                    s => s,
                };
                if strategy.is_none_or(|cur| strategy::strictness(s) > strategy::strictness(cur)) {
                    strategy = Some(s);
                }
                let sources: Vec<String> = r.columns.iter().map(ToString::to_string).collect();
                rules.push((
                    r.rule.clone(),
                    if direct {
                        format!("direct reference to {}", sources.join(", "))
                    } else {
                        format!("computed from {}", sources.join(", "))
                    },
                ));
            }
        }
        if !taint.unproven.is_empty() {
            if strategy.is_none_or(|cur| {
                strategy::strictness(cur) < strategy::strictness(Strategy::Redact)
            }) {
                strategy = Some(Strategy::Redact);
            }
            rules.push((
                RuleRef {
                    policy: BUILTIN_POLICY.into(),
                    rule: UNPROVEN_RULE.into(),
                },
                format!(
                    "lineage not proven free of masked sources: {}",
                    taint
                        .unproven
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ));
        }
        Some(ColumnMask {
            strategy: strategy?,
            rules,
        })
    }

    fn column_taint(
        &self,
        plan: &StatementPlan,
        view: Option<&View>,
        i: usize,
        origin: Option<(u32, i16)>,
    ) -> (Taint, bool) {
        if plan.clean {
            return (Taint::default(), false);
        }
        let lineage = match &plan.shape {
            Some(s) => s.column(i),
            None => Taint::unproven("the statement's output is not known to the analysis"),
        };
        if let (Some(view), Some((oid, attnum))) = (view, origin) {
            if oid != 0 && attnum > 0 {
                if let Some(mut t) = view.attribute(oid, attnum) {
                    // A direct reference carries exactly that column; the lineage's rules
                    // are added in case the server's origin is coarser than it looks.
                    t.rules.extend(lineage.rules.iter().cloned());
                    t.computed.extend(lineage.computed.iter().cloned());
                    return (t, true);
                }
            }
        }
        (lineage, false)
    }

    /// The masking of a result with the given columns (from RowDescription, or unknown).
    pub fn result(&self, plan: &StatementPlan, columns: &[ResultColumn]) -> ResultMasking {
        let view = self.catalog.as_ref().map(|c| self.view(c));
        let cols = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (taint, direct) = match &self.catalog {
                    Some(_) => self.column_taint(plan, view.as_ref(), i, c.origin),
                    None => (Taint::default(), false),
                };
                ColumnPlan {
                    name: c.name.clone(),
                    type_oid: c.type_oid,
                    binary: c.binary,
                    mask: self.column_mask(&taint, direct),
                    values: 0,
                    nulled: 0,
                    detected: Vec::new(),
                }
            })
            .collect();
        ResultMasking {
            cols,
            detect: !self.detectors.is_empty(),
            session: self.clone_handle(),
        }
    }

    /// The masking of a COPY TO STDOUT with `n` columns.
    pub fn copy(&self, plan: &StatementPlan, n: usize, binary: bool) -> ResultMasking {
        let columns: Vec<ResultColumn> = (0..n)
            .map(|i| ResultColumn {
                name: match &plan.shape {
                    Some(Shape::Columns(c)) => c.get(i).map(|c| c.name.clone()).unwrap_or_default(),
                    _ => String::new(),
                },
                type_oid: 0,
                binary,
                origin: None,
            })
            .collect();
        self.result(plan, &columns)
    }

    fn clone_handle(&self) -> SessionRef {
        SessionRef {
            masker: self.masker.clone(),
            detectors: self.detectors.clone(),
        }
    }
}

/// One column of a result as RowDescription (and Bind) describe it.
#[derive(Clone, Debug)]
pub struct ResultColumn {
    /// Name.
    pub name: String,
    /// Type OID (0: unknown).
    pub type_oid: u32,
    /// Binary format.
    pub binary: bool,
    /// Table OID and attribute number of a direct reference.
    pub origin: Option<(u32, i16)>,
}

/// Parse a RowDescription body.
pub fn parse_row_description(body: &[u8]) -> Option<Vec<ResultColumn>> {
    let mut p = 0usize;
    let n = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
    p += 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let end = p + body.get(p..)?.iter().position(|b| *b == 0)?;
        let name = String::from_utf8_lossy(&body[p..end]).into_owned();
        p = end + 1;
        let f = body.get(p..p + 18)?;
        let table = u32::from_be_bytes([f[0], f[1], f[2], f[3]]);
        let attnum = i16::from_be_bytes([f[4], f[5]]);
        let type_oid = u32::from_be_bytes([f[6], f[7], f[8], f[9]]);
        let format = i16::from_be_bytes([f[16], f[17]]);
        p += 18;
        out.push(ResultColumn {
            name,
            type_oid,
            binary: format == 1,
            origin: (table != 0).then_some((table, attnum)),
        });
    }
    Some(out)
}

/// The result format codes of a Bind body (empty: all text; one: for every column).
pub fn bind_result_formats(body: &[u8]) -> Option<Vec<i16>> {
    let mut p = 0usize;
    for _ in 0..2 {
        p += body.get(p..)?.iter().position(|b| *b == 0)? + 1;
    }
    let i16_at =
        |p: usize| -> Option<i16> { Some(i16::from_be_bytes([*body.get(p)?, *body.get(p + 1)?])) };
    let nf = i16_at(p)?.max(0) as usize;
    p += 2 + 2 * nf;
    let np = i16_at(p)?.max(0) as usize;
    p += 2;
    for _ in 0..np {
        let len = i32::from_be_bytes(body.get(p..p + 4)?.try_into().ok()?);
        p += 4 + len.max(0) as usize;
    }
    let nr = i16_at(p)?.max(0) as usize;
    p += 2;
    (0..nr).map(|i| i16_at(p + 2 * i)).collect()
}

/// Apply Bind's result format codes to described columns.
pub fn apply_formats(columns: &mut [ResultColumn], formats: &[i16]) {
    for (i, c) in columns.iter_mut().enumerate() {
        c.binary = match formats {
            [] => false,
            [one] => *one == 1,
            many => many.get(i).is_some_and(|f| *f == 1),
        };
    }
}

#[derive(Debug)]
struct ColumnMask {
    strategy: Strategy,
    rules: Vec<(RuleRef, String)>,
}

#[derive(Debug)]
struct ColumnPlan {
    name: String,
    type_oid: u32,
    binary: bool,
    mask: Option<ColumnMask>,
    values: u64,
    nulled: u64,
    // Detector rule index, values masked, values sent as NULL.
    detected: Vec<(usize, u64, u64)>,
}

struct SessionRef {
    masker: Arc<Masker>,
    detectors: Vec<usize>,
}

/// The masking of one result in progress.
pub struct ResultMasking {
    cols: Vec<ColumnPlan>,
    detect: bool,
    session: SessionRef,
}

/// A DataRow or COPY row that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("malformed row from the server")]
pub struct MalformedRow;

enum Field<'a> {
    Null,
    Value(std::borrow::Cow<'a, [u8]>),
}

impl ResultMasking {
    /// Whether any value can change (otherwise rows pass untouched).
    pub fn is_noop(&self) -> bool {
        !self.detect && self.cols.iter().all(|c| c.mask.is_none())
    }

    /// Whether a column is masked by lineage.
    pub fn any_masked(&self) -> bool {
        self.cols.iter().any(|c| c.mask.is_some())
    }

    /// Whether a COPY text or CSV field goes out unchanged: neither the value the client reads
    /// (`decoded`) nor the bytes as written (`raw`) hold anything masked. Otherwise the field
    /// goes out as a null.
    fn copy_field_passes(&mut self, i: usize, decoded: &[u8], raw: &[u8]) -> bool {
        matches!(self.mask_value(i, decoded, true), Field::Value(_))
            && (decoded == raw || matches!(self.mask_value(i, raw, true), Field::Value(_)))
    }

    fn mask_value<'a>(&mut self, i: usize, raw: &'a [u8], copy_text: bool) -> Field<'a> {
        let masker = &self.session.masker;
        let key = masker.key.as_ref().unwrap_or(&NO_KEY);
        let Some(col) = self.cols.get_mut(i) else {
            // More fields than described: fail closed.
            return Field::Null;
        };
        if let Some(m) = &col.mask {
            col.values += 1;
            if copy_text || col.type_oid == 0 {
                if m.strategy != Strategy::Null {
                    col.nulled += 1;
                }
                return Field::Null;
            }
            return match strategy::mask_field(m.strategy, col.type_oid, col.binary, raw, key) {
                strategy::Masked::Value(v) => Field::Value(v.into()),
                strategy::Masked::Null { type_fallback } => {
                    if type_fallback {
                        col.nulled += 1;
                    }
                    Field::Null
                }
            };
        }
        if !self.detect {
            return Field::Value(raw.into());
        }
        // Detectors see text values: text format, or binary of a text type.
        let text_like = strategy::is_text_like(col.type_oid);
        if col.binary && !text_like && !copy_text && col.type_oid != 0 {
            return Field::Value(raw.into());
        }
        // Binary jsonb starts with its version byte (1); a value that does not is scanned
        // whole rather than trusted to hold one.
        let offset =
            usize::from(col.binary && strategy::is_jsonb(col.type_oid) && raw.first() == Some(&1));
        let Some(payload) = raw.get(offset..) else {
            return Field::Value(raw.into());
        };
        // The detectors read text: a value that is not valid UTF-8 (a server in another
        // client encoding, bytes the client asked for) is read as its valid runs, each scanned
        // on its own; the bytes between them are kept as they are and cannot be part of a
        // match.
        let mut hits: Vec<(usize, std::ops::Range<usize>, usize)> = Vec::new();
        let mut runs: Vec<(&str, &[u8])> = Vec::new();
        for chunk in payload.utf8_chunks() {
            let text = chunk.valid();
            for d in &self.session.detectors {
                if let Some(kind) = &masker.rules[*d].detector {
                    for r in masker.patterns.find(kind, text) {
                        hits.push((runs.len(), r, *d));
                    }
                }
            }
            runs.push((text, chunk.invalid()));
        }
        if hits.is_empty() {
            return Field::Value(raw.into());
        }
        hits.sort_by_key(|(run, r, _)| (*run, r.start, std::cmp::Reverse(r.end)));
        let whole_null = hits
            .iter()
            .any(|(_, _, d)| masker.rules[*d].strategy == Strategy::Null);
        let must_null = whole_null || copy_text || !text_like;
        let mut counted: Vec<usize> = Vec::new();
        for (_, _, d) in &hits {
            if !counted.contains(d) {
                counted.push(*d);
            }
        }
        for d in counted {
            let nulled = u64::from(must_null && masker.rules[d].strategy != Strategy::Null);
            match col.detected.iter_mut().find(|(x, _, _)| *x == d) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += nulled;
                }
                None => col.detected.push((d, 1, nulled)),
            }
        }
        if must_null {
            return Field::Null;
        }
        let mut v = Vec::with_capacity(payload.len() + offset);
        if offset == 1 {
            v.push(1);
        }
        for (n, (text, invalid)) in runs.iter().enumerate() {
            let mut at = 0;
            for (_, r, d) in hits.iter().filter(|(run, _, _)| *run == n) {
                if r.start < at {
                    continue;
                }
                v.extend_from_slice(&text.as_bytes()[at..r.start]);
                let s = match masker.rules[*d].strategy {
                    Strategy::Hash if masker.key.is_none() => Strategy::Redact,
                    s => s,
                };
                v.extend_from_slice(
                    strategy::mask_text(s, &text[r.clone()], key)
                        .unwrap_or_default()
                        .as_bytes(),
                );
                at = r.end;
            }
            v.extend_from_slice(&text.as_bytes()[at..]);
            v.extend_from_slice(invalid);
        }
        Field::Value(v.into())
    }

    /// Rewrite one DataRow body into a framed DataRow appended to `out`. A row that does not
    /// parse leaves `out` as it was (no partial message reaches the client).
    pub fn data_row(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), MalformedRow> {
        let start = out.len();
        let written = self.write_row(body, out);
        if written.is_err() {
            out.truncate(start);
        }
        written
    }

    fn write_row(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), MalformedRow> {
        let n = u16::from_be_bytes([
            *body.first().ok_or(MalformedRow)?,
            *body.get(1).ok_or(MalformedRow)?,
        ]) as usize;
        let start = out.len();
        out.put_u8(b'D');
        out.put_i32(0);
        out.put_u16(n as u16);
        let mut p = 2usize;
        for i in 0..n {
            let len = i32::from_be_bytes(
                body.get(p..p + 4)
                    .ok_or(MalformedRow)?
                    .try_into()
                    .map_err(|_| MalformedRow)?,
            );
            p += 4;
            if len < 0 {
                out.put_i32(-1);
                continue;
            }
            let raw = body.get(p..p + len as usize).ok_or(MalformedRow)?;
            p += len as usize;
            match self.mask_value(i, raw, false) {
                Field::Null => out.put_i32(-1),
                Field::Value(v) => {
                    out.put_i32(v.len() as i32);
                    out.put_slice(&v);
                }
            }
        }
        let len = (out.len() - start - 1) as i32;
        out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// What goes into the completion record.
    pub fn report(&self) -> Vec<MaskedColumn> {
        let mut out = Vec::new();
        for (i, c) in self.cols.iter().enumerate() {
            // A column name that looks like a value stays out of the audit record.
            let name = if crate::policy::fingerprint::looks_like_value(&c.name) {
                WITHHELD_COLUMN_NAME.to_owned()
            } else {
                c.name.clone()
            };
            if let Some(m) = &c.mask {
                for (rule, reason) in &m.rules {
                    out.push(MaskedColumn {
                        column: i as u32,
                        name: name.clone(),
                        rule: rule.clone(),
                        reason: reason.clone(),
                        strategy: strategy::name(m.strategy).to_owned(),
                        values: c.values,
                        nulled_for_type: c.nulled,
                    });
                }
            }
            for (d, values, nulled) in &c.detected {
                let r = &self.session.masker.rules[*d];
                out.push(MaskedColumn {
                    column: i as u32,
                    name: name.clone(),
                    rule: r.rule.clone(),
                    reason: format!(
                        "value matched the {} detector",
                        detector_name(r.detector.as_ref())
                    ),
                    strategy: strategy::name(r.strategy).to_owned(),
                    values: *values,
                    nulled_for_type: *nulled,
                });
            }
        }
        out
    }
}

fn detector_name(d: Option<&DetectorKind>) -> &'static str {
    match d {
        Some(DetectorKind::Email) => "email",
        Some(DetectorKind::PaymentCard) => "paymentCard",
        Some(DetectorKind::Iban) => "iban",
        Some(DetectorKind::Phone) => "phone",
        Some(DetectorKind::Regex(_)) => "regex",
        None => "none",
    }
}

/// The fields of a COPY text row: split at each delimiter that no backslash escapes (the
/// server writes a delimiter inside a value as `\` and the delimiter).
fn text_fields(body: &[u8], delimiter: u8) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b if b == delimiter => {
                fields.push(&body[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    fields.push(&body[start.min(body.len())..]);
    fields
}

/// A COPY text field as the client reads it: `\b \f \n \r \t \v`, octal and `\x` hex escapes
/// resolved, any other escaped byte taken as itself.
fn unescape_text(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] != b'\\' || i + 1 == field.len() {
            out.push(field[i]);
            i += 1;
            continue;
        }
        let c = field[i + 1];
        i += 2;
        let digits = |from: usize, max: usize, radix: u32| {
            field[from..]
                .iter()
                .take(max)
                .take_while(|d| char::from(**d).is_digit(radix))
                .count()
        };
        out.push(match c {
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 11,
            b'0'..=b'7' => {
                let n = 1 + digits(i, 2, 8);
                let text = std::str::from_utf8(&field[i - 1..i - 1 + n]).unwrap_or("0");
                i += n - 1;
                u8::from_str_radix(text, 8).unwrap_or(0)
            }
            b'x' if digits(i, 2, 16) > 0 => {
                let n = digits(i, 2, 16);
                let text = std::str::from_utf8(&field[i..i + n]).unwrap_or("0");
                i += n;
                u8::from_str_radix(text, 16).unwrap_or(0)
            }
            other => other,
        });
    }
    out
}

/// A CSV field as the client reads it: a quoted field without its quotes, each escaped quote
/// (the escape character, or a doubled quote, then the quote) taken as the quote.
fn unquote_csv(field: &[u8], quote: u8, escape: u8) -> std::borrow::Cow<'_, [u8]> {
    let inner = match field {
        [first, inner @ .., last] if *first == quote && *last == quote => inner,
        _ => return std::borrow::Cow::Borrowed(field),
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        if inner[i] == escape && inner.get(i + 1) == Some(&quote) {
            out.push(quote);
            i += 2;
        } else {
            out.push(inner[i]);
            i += 1;
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Rewriting of a COPY TO STDOUT stream.
pub struct CopyMasking {
    result: ResultMasking,
    format: CopyFormat,
    // Binary: bytes not yet parsed, and whether the header was passed.
    pending: Vec<u8>,
    header_done: bool,
    finished: bool,
}

const BINARY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

impl CopyMasking {
    /// Masking of a COPY stream in `format`.
    pub fn new(result: ResultMasking, format: CopyFormat) -> Self {
        Self {
            result,
            format,
            pending: Vec::new(),
            header_done: false,
            finished: false,
        }
    }

    /// Whether nothing can change.
    pub fn is_noop(&self) -> bool {
        self.result.is_noop()
    }

    /// The completion record entries.
    pub fn report(&self) -> Vec<MaskedColumn> {
        self.result.report()
    }

    /// Rewrite one CopyData payload; returns the bytes to send (possibly empty).
    pub fn data(&mut self, payload: &[u8]) -> Result<Vec<u8>, MalformedRow> {
        match self.format.clone() {
            CopyFormat::Text { delimiter } => Ok(self.text_row(payload, delimiter)),
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                header,
            } => {
                if header && !self.header_done {
                    self.header_done = true;
                    return Ok(payload.to_vec());
                }
                self.csv_row(payload, delimiter, quote, escape)
            }
            CopyFormat::Binary => self.binary(payload),
        }
    }

    fn text_row(&mut self, row: &[u8], delimiter: u8) -> Vec<u8> {
        let (body, eol) = match row.strip_suffix(b"\n") {
            Some(b) => (b, true),
            None => (row, false),
        };
        let mut out = Vec::with_capacity(row.len());
        for (i, field) in text_fields(body, delimiter).into_iter().enumerate() {
            if i > 0 {
                out.push(delimiter);
            }
            if field == b"\\N" {
                out.extend_from_slice(field);
                continue;
            }
            // The detectors read the value the client will read (escapes resolved) and the
            // bytes as written; a field they leave alone goes out as the server wrote it.
            if self
                .result
                .copy_field_passes(i, &unescape_text(field), field)
            {
                out.extend_from_slice(field);
            } else {
                out.extend_from_slice(b"\\N");
            }
        }
        if eol {
            out.push(b'\n');
        }
        out
    }

    fn csv_row(
        &mut self,
        row: &[u8],
        delimiter: u8,
        quote: u8,
        escape: u8,
    ) -> Result<Vec<u8>, MalformedRow> {
        // Split into raw fields (quotes kept), honouring quoted delimiters and newlines.
        let (body, eol) = match row
            .strip_suffix(b"\r\n")
            .or_else(|| row.strip_suffix(b"\n"))
        {
            Some(b) => (b, &row[b.len()..]),
            None => (row, &b""[..]),
        };
        let mut fields: Vec<&[u8]> = Vec::new();
        let mut start = 0;
        let mut quoted = false;
        let mut i = 0;
        while i < body.len() {
            let b = body[i];
            if quoted {
                if b == escape && escape != quote && body.get(i + 1) == Some(&quote) {
                    i += 2;
                    continue;
                }
                if b == quote {
                    if escape == quote && body.get(i + 1) == Some(&quote) {
                        i += 2;
                        continue;
                    }
                    quoted = false;
                }
            } else if b == quote {
                quoted = true;
            } else if b == delimiter {
                fields.push(&body[start..i]);
                start = i + 1;
            }
            i += 1;
        }
        if quoted {
            return Err(MalformedRow);
        }
        fields.push(&body[start..]);
        let mut out = Vec::with_capacity(row.len());
        for (i, field) in fields.into_iter().enumerate() {
            if i > 0 {
                out.push(delimiter);
            }
            if field.is_empty() {
                continue;
            }
            // As in text: the value the client reads (quotes removed, escaped quotes
            // resolved) and the bytes as written; a null is an empty field.
            if self
                .result
                .copy_field_passes(i, &unquote_csv(field, quote, escape), field)
            {
                out.extend_from_slice(field);
            }
        }
        out.extend_from_slice(eol);
        Ok(out)
    }

    fn binary(&mut self, payload: &[u8]) -> Result<Vec<u8>, MalformedRow> {
        self.pending.extend_from_slice(payload);
        let buf = std::mem::take(&mut self.pending);
        let mut out = Vec::with_capacity(buf.len());
        let mut p = 0usize;
        if !self.header_done {
            if buf.len() < BINARY_SIGNATURE.len() + 8 {
                self.pending = buf;
                return Ok(out);
            }
            if &buf[..BINARY_SIGNATURE.len()] != BINARY_SIGNATURE {
                return Err(MalformedRow);
            }
            let ext_at = BINARY_SIGNATURE.len() + 4;
            let ext = u32::from_be_bytes(
                buf[ext_at..ext_at + 4]
                    .try_into()
                    .map_err(|_| MalformedRow)?,
            ) as usize;
            let end = ext_at + 4 + ext;
            if buf.len() < end {
                self.pending = buf;
                return Ok(out);
            }
            out.extend_from_slice(&buf[..end]);
            p = end;
            self.header_done = true;
        }
        loop {
            if self.finished {
                out.extend_from_slice(&buf[p..]);
                return Ok(out);
            }
            let Some(nb) = buf.get(p..p + 2) else { break };
            let n = i16::from_be_bytes([nb[0], nb[1]]);
            if n == -1 {
                out.extend_from_slice(nb);
                p += 2;
                self.finished = true;
                continue;
            }
            // Parse a whole tuple before emitting it.
            let mut q = p + 2;
            let mut spans = Vec::with_capacity(n.max(0) as usize);
            let mut complete = true;
            for _ in 0..n.max(0) {
                let Some(lb) = buf.get(q..q + 4) else {
                    complete = false;
                    break;
                };
                let len = i32::from_be_bytes([lb[0], lb[1], lb[2], lb[3]]);
                q += 4;
                if len < 0 {
                    spans.push(None);
                    continue;
                }
                if buf.len() < q + len as usize {
                    complete = false;
                    break;
                }
                spans.push(Some(q..q + len as usize));
                q += len as usize;
            }
            if !complete {
                break;
            }
            out.extend_from_slice(nb);
            for (i, s) in spans.into_iter().enumerate() {
                match s {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(r) => match self.result.mask_value(i, &buf[r], true) {
                        Field::Null => out.extend_from_slice(&(-1i32).to_be_bytes()),
                        Field::Value(v) => {
                            out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                            out.extend_from_slice(&v);
                        }
                    },
                }
            }
            p = q;
        }
        self.pending = buf[p..].to_vec();
        Ok(out)
    }
}

/// Remove values from a server error or notice when masking applies: PostgreSQL quotes the
/// offending value in data errors (`invalid input syntax for type integer: "..."`) and
/// repeats key values in constraint details (`Key (email)=(...)`), and user code raises
/// whatever it likes. Detectors run over what remains.
pub fn scrub_notice(
    session: &SessionMasking,
    body: &[u8],
    out: &mut BytesMut,
    tag: u8,
    known: &str,
) {
    const WITHHELD: &str = "(withheld by the sidecar: may carry masked data)";
    let fields = split_fields(body);
    let code = fields
        .iter()
        .find(|(t, _)| *t == b'C')
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let class = code.get(..2).unwrap_or("");
    let user_raised = class == "P0" || (tag == b'N' && !code.is_empty());
    // Names the client wrote (identifiers, not strings or comments) may be quoted back.
    let names: std::collections::HashSet<String> = if session.has_columns() {
        client_words(known)
    } else {
        Default::default()
    };
    let keep = |s: &str| names.contains(s);
    let mut body_out = Vec::with_capacity(body.len());
    for (t, v) in &fields {
        let v = if session.has_columns() {
            match *t {
                // Severity, code, positions and the server's source location carry no data.
                b'S' | b'V' | b'C' | b'P' | b'p' | b'F' | b'L' | b'R' => v.clone(),
                b'M' if user_raised => {
                    "(withheld by the sidecar: text raised by code may carry masked data)"
                        .to_owned()
                }
                // The message keeps its words and what the client wrote itself.
                b'M' => crate::postgres::results::without_values_except(v, &keep),
                // Detail, hint, context, internal query and object names: withheld.
                b'D' | b'H' | b'W' | b'q' => WITHHELD.to_owned(),
                _ => continue,
            }
        } else {
            v.clone()
        };
        let v = session.detect_in_text(&v);
        body_out.push(*t);
        body_out.extend_from_slice(v.as_bytes());
        body_out.push(0);
    }
    body_out.push(0);
    crate::postgres::codec::put_message(out, tag, &body_out);
}

/// The words (identifiers and keywords, not strings or comments) of what the client wrote, as
/// written and folded to lower case.
fn client_words(known: &str) -> std::collections::HashSet<String> {
    sqlparser::tokenizer::Tokenizer::new(&sqlparser::dialect::PostgreSqlDialect {}, known)
        .tokenize()
        .map(|tokens| {
            tokens
                .into_iter()
                .filter_map(|t| match t {
                    sqlparser::tokenizer::Token::Word(w) => Some(w.value),
                    _ => None,
                })
                .flat_map(|w| [w.to_ascii_lowercase(), w])
                .collect()
        })
        .unwrap_or_default()
}

/// Name given to result columns whose name the sidecar withholds (PostgreSQL's own name for
/// an unnamed column).
pub const WITHHELD_COLUMN_NAME: &str = "?column?";

impl SessionMasking {
    /// RowDescription field names are a result channel: server code can name a column after a
    /// value (`EXECUTE format('SELECT 1 AS %I', ssn)` behind a cursor). When the statement's
    /// output may carry masked data, a name is kept only if the client wrote it (`known`) or
    /// the lineage predicts it for that column (an alias, a catalog column); any other name is
    /// replaced by `?column?`. Returns the rewritten body when a name changed.
    pub fn scrub_row_description(
        &self,
        plan: &StatementPlan,
        body: &[u8],
        known: &str,
    ) -> Option<Vec<u8>> {
        self.catalog.as_ref()?;
        if plan.clean {
            return None;
        }
        // Names of relations the catalog does not know (system views) come from their
        // definitions; what can name a column at run time is server code and output the
        // analysis could not see.
        let reaches = match &plan.shape {
            Some(s) => {
                let t = self.active(&s.total());
                !t.rules.is_empty()
                    || t.unproven.iter().any(|r| {
                        !(r.starts_with("relation ") && r.ends_with("is not in the catalog"))
                    })
            }
            None => true,
        };
        if !reaches {
            return None;
        }
        let predicted: Vec<&str> = match &plan.shape {
            Some(Shape::Columns(cols)) => cols.iter().map(|c| c.name.as_str()).collect(),
            _ => Vec::new(),
        };
        let words = client_words(known);
        let n = u16::from_be_bytes([*body.first()?, *body.get(1)?]) as usize;
        let mut out = Vec::with_capacity(body.len());
        out.extend_from_slice(&body[..2]);
        let mut p = 2usize;
        let mut changed = false;
        for i in 0..n {
            let end = p + body.get(p..)?.iter().position(|b| *b == 0)?;
            let name = String::from_utf8_lossy(&body[p..end]);
            let keep = name == WITHHELD_COLUMN_NAME
                || name == "QUERY PLAN"
                || predicted.get(i).is_some_and(|x| *x == name)
                || words.contains(name.as_ref());
            if keep {
                out.extend_from_slice(&body[p..end]);
            } else {
                out.extend_from_slice(WITHHELD_COLUMN_NAME.as_bytes());
                changed = true;
            }
            out.push(0);
            p = end + 1;
            out.extend_from_slice(body.get(p..p + 18)?);
            p += 18;
        }
        changed.then_some(out)
    }
}

fn split_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut p = 0;
    while p < body.len() && body[p] != 0 {
        let t = body[p];
        p += 1;
        let end = body[p..]
            .iter()
            .position(|b| *b == 0)
            .map_or(body.len(), |e| p + e);
        out.push((t, String::from_utf8_lossy(&body[p..end]).into_owned()));
        p = end + 1;
    }
    out
}

impl SessionMasking {
    /// Mask detector matches in free text (error messages, notifications).
    pub fn detect_in_text(&self, text: &str) -> String {
        let masker = &self.masker;
        let mut out = text.to_owned();
        for d in &self.detectors {
            if let Some(kind) = &masker.rules[*d].detector {
                let ranges = masker.patterns.find(kind, &out);
                for r in ranges.into_iter().rev() {
                    out.replace_range(r, strategy::REDACTED);
                }
            }
        }
        out
    }

    /// Whether a notification payload or parameter value must be withheld.
    pub fn settings_tainted(&self) -> bool {
        self.settings_tainted.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_formats_are_read() {
        // portal "", statement "s", 1 param format (0), 1 param "ab", 2 result formats 1, 0.
        let mut b = Vec::new();
        b.extend_from_slice(b"\0s\0");
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&2i32.to_be_bytes());
        b.extend_from_slice(b"ab");
        b.extend_from_slice(&2i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        assert_eq!(bind_result_formats(&b), Some(vec![1, 0]));
    }

    #[test]
    fn quoted_values_are_redacted_unless_the_client_wrote_them() {
        let known = |s: &str| s == "custmers";
        assert_eq!(
            crate::postgres::results::without_values_except(
                r#"invalid input syntax for type integer: "olga@example.com""#,
                &known
            ),
            r#"invalid input syntax for type integer: "?""#
        );
        assert_eq!(
            crate::postgres::results::without_values_except(
                r#"relation "custmers" does not exist"#,
                &known
            ),
            r#"relation "custmers" does not exist"#
        );
    }

    fn detectors_only() -> Arc<SessionMasking> {
        let policy: PolicyConfig = serde_yaml::from_str(
            "name: p
masking:
- {name: cards, detector: paymentCard, strategy: redact}
- {name: mails, detector: email, strategy: partial}
",
        )
        .expect("policy");
        let upstream = Arc::new(Upstream {
            config: serde_yaml::from_str("{host: localhost, port: 5432, tlsMode: disable}")
                .expect("upstream"),
            tls: None,
            credentials: None,
        });
        let masker = Arc::new(
            Masker::new(&[policy], &MaskingConfig::default(), "ns", upstream).expect("masker"),
        );
        let identity = Identity {
            kind: "ServiceAccount".into(),
            name: "agent".into(),
            namespace: Some("ns".into()),
            pod: None,
            pod_uid: None,
            principal: None,
        };
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(masker.session(&identity, "db", "u"))
            .expect("rules apply")
    }

    fn plan() -> StatementPlan {
        StatementPlan {
            shape: Some(Shape::Opaque(Taint::default())),
            clean: false,
            copy: None,
            ddl: false,
            marks: Vec::new(),
            control: None,
        }
    }

    fn row(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = (fields.len() as u16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b
    }

    #[test]
    fn data_rows_are_rewritten_in_text_and_binary() {
        let s = detectors_only();
        let cols = vec![
            ResultColumn {
                name: "a".into(),
                type_oid: 25,
                binary: false,
                origin: None,
            },
            ResultColumn {
                name: "b".into(),
                type_oid: 25,
                binary: true,
                origin: None,
            },
            ResultColumn {
                name: "c".into(),
                type_oid: 1700,
                binary: false,
                origin: None,
            },
            ResultColumn {
                name: "d".into(),
                type_oid: 20,
                binary: true,
                origin: None,
            },
        ];
        let mut r = s.result(&plan(), &cols);
        let card = 4_111_111_111_111_111i64.to_be_bytes();
        let body = row(&[
            Some(b"mail olga@example.com"),
            Some(b"card 4111111111111111!"),
            Some(b"4111111111111111"),
            Some(&card),
        ]);
        let mut out = BytesMut::new();
        r.data_row(&body, &mut out).expect("row");
        let expected = row(&[
            Some(b"mail ***@example.com"),
            Some(b"card ***!"),
            None,
            Some(&card),
        ]);
        assert_eq!(&out[5..], &expected[..]);
        let report = r.report();
        assert!(report
            .iter()
            .any(|m| m.column == 2 && m.nulled_for_type == 1 && m.rule.rule == "cards"));
        assert!(report
            .iter()
            .any(|m| m.column == 0 && m.rule.rule == "mails"));
        let before = out.len();
        assert!(r.data_row(&body[..5], &mut out).is_err());
        assert_eq!(
            out.len(),
            before,
            "a malformed row leaves no partial message"
        );
    }

    #[test]
    fn binary_jsonb_without_its_version_byte_is_scanned_whole() {
        let s = detectors_only();
        let cols = vec![ResultColumn {
            name: "doc".into(),
            type_oid: 3802,
            binary: true,
            origin: None,
        }];
        let mut r = s.result(&plan(), &cols);
        // With its version byte the rest is the document; without one, the first byte is
        // text too (skipping it left 15 digits the card detector did not take for a card).
        let mut out = BytesMut::new();
        r.data_row(&row(&[Some(b"\x01\"4111111111111111\"")]), &mut out)
            .expect("row");
        assert_eq!(&out[5..], &row(&[Some(b"\x01\"***\"")])[..]);
        let mut out = BytesMut::new();
        r.data_row(&row(&[Some(b"4111111111111111")]), &mut out)
            .expect("row");
        assert_eq!(&out[5..], &row(&[Some(b"***")])[..]);
    }

    #[test]
    fn copy_text_fields_split_only_at_unescaped_delimiters() {
        let s = detectors_only();
        // A delimiter inside a value is escaped: splitting there would cut the card number
        // in parts that no detector takes for a card, and shift the fields after it.
        let text = s.copy(&plan(), 2, false);
        let mut c = CopyMasking::new(text, CopyFormat::Text { delimiter: b' ' });
        assert_eq!(
            c.data(b"4111\\ 1111\\ 1111\\ 1111 x\n").expect("row"),
            b"\\N x\n"
        );
        // The detectors read the value with its escapes resolved.
        assert_eq!(
            c.data(b"4111\\0401111\\x201111\\0401111 x\n").expect("row"),
            b"\\N x\n"
        );
        assert_eq!(c.data(b"a\\ b\\\\ c\n").expect("row"), b"a\\ b\\\\ c\n");
        assert_eq!(
            text_fields(b"a\\,b,c\\\\,d", b','),
            vec![&b"a\\,b"[..], &b"c\\\\"[..], &b"d"[..]]
        );
        assert_eq!(unescape_text(b"a\\tb\\101\\x41\\\\\\,"), b"a\tbAA\\,");
    }

    #[test]
    fn copy_streams_are_rewritten() {
        let s = detectors_only();
        let text = s.copy(&plan(), 2, false);
        let mut c = CopyMasking::new(text, CopyFormat::Text { delimiter: b'\t' });
        assert_eq!(c.data(b"1\tolga@example.com\n").expect("row"), b"1\t\\N\n");
        let csv = s.copy(&plan(), 3, false);
        let mut c = CopyMasking::new(
            csv,
            CopyFormat::Csv {
                delimiter: b',',
                quote: b'"',
                escape: b'"',
                header: true,
            },
        );
        assert_eq!(c.data(b"a,b,c\n").expect("header"), b"a,b,c\n");
        assert_eq!(
            c.data(b"\"x,\"\"y\"\"\",4111111111111111,z\n")
                .expect("row"),
            b"\"x,\"\"y\"\"\",,z\n"
        );
        let bin = s.copy(&plan(), 2, true);
        let mut c = CopyMasking::new(bin, CopyFormat::Binary);
        let mut stream = BINARY_SIGNATURE.to_vec();
        stream.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        stream.extend_from_slice(&row(&[Some(b"7"), Some(b"olga@example.com")]));
        stream.extend_from_slice(&(-1i16).to_be_bytes());
        // Split anywhere: the rewriter buffers partial tuples.
        let mut out = c.data(&stream[..15]).expect("part");
        out.extend(c.data(&stream[15..30]).expect("part"));
        out.extend(c.data(&stream[30..]).expect("rest"));
        let mut expected = BINARY_SIGNATURE.to_vec();
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&row(&[Some(b"7"), None]));
        expected.extend_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(out, expected);
    }

    #[test]
    fn values_with_invalid_utf8_are_scanned_around_it() {
        // As found by fuzzing: an e-mail address and a card number next to bytes that are not
        // UTF-8 (a server in another client encoding) went out unscanned.
        let s = detectors_only();
        let cols = vec![ResultColumn {
            name: "a".into(),
            type_oid: 25,
            binary: false,
            origin: None,
        }];
        for (value, expected) in [
            (
                &b"olga@example.co\xe2 4111111111111111"[..],
                &b"***@example.co\xe2 ***"[..],
            ),
            (
                b"\xff\xfeolga@example.com\xc3",
                b"\xff\xfe***@example.com\xc3",
            ),
            (
                b"{4111111111111111{\x80{-{olga@example.com{{",
                b"{***{\x80{-{***@example.com{{",
            ),
            (b"plain \xe9t\xe9", b"plain \xe9t\xe9"),
        ] {
            let mut r = s.result(&plan(), &cols);
            let mut out = BytesMut::new();
            r.data_row(&row(&[Some(value)]), &mut out).expect("row");
            assert_eq!(
                &out[5..],
                &row(&[Some(expected)])[..],
                "{}",
                String::from_utf8_lossy(value)
            );
        }
        // COPY text, CSV and binary null such a value.
        let text = s.copy(&plan(), 2, false);
        let mut c = CopyMasking::new(text, CopyFormat::Text { delimiter: b'\t' });
        assert_eq!(
            c.data(b"1\t\\xe2olga@example.com\\xff\n").expect("row"),
            b"1\t\\N\n"
        );
        assert_eq!(
            c.data(b"1\tx\xe2olga@example.com\n").expect("row"),
            b"1\t\\N\n"
        );
        let bin = s.copy(&plan(), 1, true);
        let mut c = CopyMasking::new(bin, CopyFormat::Binary);
        let mut stream = BINARY_SIGNATURE.to_vec();
        stream.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        stream.extend_from_slice(&row(&[Some(b"\xe2olga@example.com")]));
        let out = c.data(&stream).expect("stream");
        assert!(out.ends_with(&row(&[None])), "{out:?}");
    }

    #[test]
    fn csv_fields_are_scanned_as_the_client_reads_them() {
        let s = detectors_only();
        let csv = |quote: u8, escape: u8| {
            CopyMasking::new(
                s.copy(&plan(), 2, false),
                CopyFormat::Csv {
                    delimiter: b',',
                    quote,
                    escape,
                    header: false,
                },
            )
        };
        // A quote character inside the value, doubled or escaped, splits the address as
        // written; the client reads it whole.
        let mut c = csv(b'.', b'.');
        assert_eq!(c.data(b"1,.olga@example..com.\n").expect("row"), b"1,\n");
        let mut c = csv(b'o', b'\\');
        assert_eq!(c.data(b"1,o\\olga@example.c\\omo\n").expect("row"), b"1,\n");
        // Invalid UTF-8 next to the value.
        let mut c = csv(b'"', b'"');
        assert_eq!(
            c.data(b"1,\"\xe2 olga@example.com\"\n").expect("row"),
            b"1,\n"
        );
    }

    #[test]
    fn copy_formats_are_read() {
        use sqlparser::dialect::PostgreSqlDialect;
        use sqlparser::parser::Parser;
        let f = |sql: &str| {
            let s = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("parse");
            copy_format(&s[0])
        };
        assert_eq!(
            f("COPY customers TO STDOUT"),
            Some(CopyFormat::Text { delimiter: b'\t' })
        );
        assert_eq!(
            f("COPY customers TO STDOUT (FORMAT binary)"),
            Some(CopyFormat::Binary)
        );
        assert!(matches!(
            f("COPY (SELECT 1) TO STDOUT WITH CSV HEADER"),
            Some(CopyFormat::Csv { header: true, .. })
        ));
        assert_eq!(f("COPY customers FROM STDIN"), None);
    }
}
