//! The upstream catalog as masking needs it: every relation's columns by (table OID,
//! attribute number) with the masking rules that cover them, view columns resolved to the base
//! columns they are computed from, and the columns that received masked data (see
//! [`super::written`]).
//!
//! The sidecar reads the catalog over its own upstream connection (the resource's credential),
//! keeps one snapshot per database, and reads it again after DDL and on a timer. Everything it
//! is unsure about is *unproven* and therefore masked: a view whose definition it cannot follow,
//! any view while a refresh after DDL is pending, a relation it does not know.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bytes::BytesMut;
use portcullis_crds::sidecar_config::QualifiedColumn;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use tokio::io::{AsyncWriteExt, BufReader};

use super::lineage::{Analyzer, Catalog, CatalogColumn, Taint};
use super::written::{Mark, Written};
use crate::postgres::codec::{self, put_message, Fields, Read};
use crate::postgres::upstream::{Upstream, UpstreamError};

/// How long a session waits for the first catalog of its database.
const FIRST_LOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Passes over the views (views over views converge in as many passes as they nest).
const VIEW_PASSES: usize = 8;

/// Why the catalog could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Connecting or authenticating failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The server answered a catalog query with an error.
    #[error("catalog query failed: {0}")]
    Query(String),
    /// The server's answer was not what the catalog queries produce.
    #[error("unexpected catalog answer: {0}")]
    Protocol(String),
}

impl From<codec::ProtocolError> for CatalogError {
    fn from(e: codec::ProtocolError) -> Self {
        CatalogError::Protocol(e.to_string())
    }
}

impl From<std::io::Error> for CatalogError {
    fn from(e: std::io::Error) -> Self {
        CatalogError::Protocol(e.to_string())
    }
}

/// A column of a relation in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Attribute number.
    pub attnum: i16,
    /// Name.
    pub name: String,
    /// What the column may carry.
    pub taint: Taint,
}

/// A relation in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// `r`, `p`, `v`, `m`, `f`.
    pub kind: char,
    /// Columns in attribute order.
    pub columns: Vec<Column>,
}

impl Relation {
    fn is_view(&self) -> bool {
        matches!(self.kind, 'v' | 'm')
    }
}

/// Raw catalog rows, as read from the server.
#[derive(Clone, Debug, Default)]
pub struct RawCatalog {
    /// (oid, schema, name, kind, attnum, attname), ordered by oid and attnum.
    pub columns: Vec<(u32, String, String, char, i16, String)>,
    /// View definitions with fully qualified names.
    pub views: HashMap<u32, String>,
    /// Columns each view's rewrite rule references: view oid to (relation oid, attnum).
    pub view_deps: HashMap<u32, Vec<(u32, i16)>>,
    /// (child, parent) of table inheritance and partitioning.
    pub inherits: Vec<(u32, u32)>,
}

/// One read of the catalog, with masking rules applied.
#[derive(Debug, Default)]
pub struct Snapshot {
    relations: HashMap<u32, Relation>,
    by_name: HashMap<String, Vec<u32>>,
    /// DDL mark when the read started: views are unproven once newer DDL was forwarded.
    pub ddl_mark: u64,
}

/// Catalog relations whose content may repeat values of other tables (statistics, query
/// texts): unproven whatever their definition says.
const DATA_BEARING_CATALOG: &[&str] = &[
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic",
    "pg_statistic_ext_data",
    "pg_stat_activity",
    "pg_stat_statements",
    "pg_prepared_statements",
    "pg_cursors",
    "pg_largeobject",
];

fn is_system_schema(schema: &str) -> bool {
    schema == "pg_catalog" || schema == "information_schema"
}

impl Snapshot {
    /// Build a snapshot: rules by name, sticky rules by (oid, attnum) from the previous
    /// snapshot (so renaming a column or table keeps it masked), inheritance, views.
    pub fn build(
        raw: RawCatalog,
        rules: &[(String, QualifiedColumn)],
        previous: Option<&Snapshot>,
        ddl_mark: u64,
    ) -> Snapshot {
        let mut relations: HashMap<u32, Relation> = HashMap::new();
        for (oid, schema, name, kind, attnum, attname) in raw.columns {
            let rel = relations.entry(oid).or_insert_with(|| Relation {
                schema: schema.clone(),
                name: name.clone(),
                kind,
                columns: Vec::new(),
            });
            let mut taint = Taint::default();
            for (rule, col) in rules {
                if col.schema == schema && col.table == name && col.column == attname {
                    taint.rules.insert(rule.clone());
                }
            }
            if let Some(prev) = previous.and_then(|p| p.column(oid, attnum)) {
                if !rel.is_view() {
                    taint.rules.extend(prev.taint.rules.iter().cloned());
                }
            }
            if is_system_schema(&schema) && DATA_BEARING_CATALOG.contains(&name.as_str()) {
                taint
                    .unproven
                    .insert(format!("{schema}.{name} may repeat values of other tables"));
            }
            rel.columns.push(Column {
                attnum,
                name: attname,
                taint,
            });
        }
        // Inheritance and partitions: a child's column of the same name as a masked parent
        // column holds the same data.
        for _ in 0..VIEW_PASSES {
            let mut changed = false;
            for (child, parent) in &raw.inherits {
                let Some(parent_cols) = relations.get(parent).map(|p| p.columns.clone()) else {
                    continue;
                };
                if let Some(c) = relations.get_mut(child) {
                    for col in &mut c.columns {
                        if let Some(p) = parent_cols.iter().find(|p| p.name == col.name) {
                            if !p.taint.rules.is_subset(&col.taint.rules) {
                                col.taint.rules.extend(p.taint.rules.iter().cloned());
                                changed = true;
                            }
                        }
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let mut snap = Snapshot {
            by_name: HashMap::new(),
            relations,
            ddl_mark,
        };
        snap.index();
        // Views: start unproven, then follow each definition over the current state until
        // nothing changes.
        let view_oids: Vec<u32> = snap
            .relations
            .iter()
            .filter(|(_, r)| r.is_view() && !is_system_schema(&r.schema))
            .map(|(o, _)| *o)
            .collect();
        for oid in &view_oids {
            if let Some(r) = snap.relations.get_mut(oid) {
                for c in &mut r.columns {
                    c.taint = Taint::unproven("view not analysed yet");
                }
            }
        }
        for _ in 0..VIEW_PASSES {
            let mut changed = false;
            for oid in &view_oids {
                let cols = snap.view_columns(*oid, raw.views.get(oid), raw.view_deps.get(oid));
                if let Some(r) = snap.relations.get_mut(oid) {
                    for (c, t) in r.columns.iter_mut().zip(cols) {
                        if c.taint != t {
                            c.taint = t;
                            changed = true;
                        }
                    }
                }
            }
            if !changed {
                break;
            }
        }
        snap
    }

    fn index(&mut self) {
        self.by_name.clear();
        for (oid, r) in &self.relations {
            self.by_name.entry(r.name.clone()).or_default().push(*oid);
        }
        for oids in self.by_name.values_mut() {
            oids.sort_unstable();
        }
    }

    /// Taints of a view's columns: the lineage of its definition; where that is unproven,
    /// the rules of every column its rewrite rule references (pg_depend), and unproven still
    /// if those are themselves unproven or there are none.
    fn view_columns(
        &self,
        oid: u32,
        definition: Option<&String>,
        deps: Option<&Vec<(u32, i16)>>,
    ) -> Vec<Taint> {
        let n = self
            .relations
            .get(&oid)
            .map(|r| r.columns.len())
            .unwrap_or(0);
        let mut fallback = Taint::default();
        for (rel, attnum) in deps.map(|d| d.as_slice()).unwrap_or(&[]) {
            match self.column(*rel, *attnum) {
                Some(c) => fallback.absorb(&c.taint),
                None => fallback.absorb(&Taint::unproven("view references an unknown column")),
            }
        }
        let shape = definition.and_then(|sql| {
            let stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
            match stmts.as_slice() {
                [sqlparser::ast::Statement::Query(q)] => {
                    Some(Analyzer::new(self as &dyn Catalog).query_shape(q))
                }
                _ => None,
            }
        });
        (0..n)
            .map(|i| {
                let mut t = match &shape {
                    Some(s) => s.column(i),
                    None => Taint::unproven("view definition could not be analysed"),
                };
                if !t.unproven.is_empty()
                    && fallback.unproven.is_empty()
                    && !fallback.rules.is_empty()
                {
                    // Proven by the dependency list instead: the view can only carry what it
                    // references.
                    t.unproven.clear();
                    t.rules.extend(fallback.rules.iter().cloned());
                    t.computed.extend(fallback.rules.iter().cloned());
                }
                t
            })
            .collect()
    }

    /// The column with attribute number `attnum` of relation `oid`.
    pub fn column(&self, oid: u32, attnum: i16) -> Option<&Column> {
        self.relations
            .get(&oid)?
            .columns
            .iter()
            .find(|c| c.attnum == attnum)
    }

    /// The relation `oid`.
    pub fn relation_by_oid(&self, oid: u32) -> Option<&Relation> {
        self.relations.get(&oid)
    }

    /// Number of relations known.
    pub fn len(&self) -> usize {
        self.relations.len()
    }

    /// Whether no relation is known.
    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }
}

impl Catalog for Snapshot {
    fn relation(&self, name: &[String]) -> Option<Vec<CatalogColumn>> {
        let (schema, rel) = match name {
            [r] => (None, r),
            [s, r] => (Some(s), r),
            [_, s, r] => (Some(s), r),
            _ => return None,
        };
        let oids = self.by_name.get(rel)?;
        let candidates: Vec<&Relation> = oids
            .iter()
            .filter_map(|o| self.relations.get(o))
            .filter(|r| match schema {
                Some(s) => &r.schema == s,
                // An unqualified name resolves through the session's search_path, which the
                // sidecar does not follow: every relation of that name may be meant.
                None => true,
            })
            .collect();
        let first = candidates.first()?;
        let mut cols: Vec<CatalogColumn> = first
            .columns
            .iter()
            .map(|c| CatalogColumn {
                name: c.name.clone(),
                rules: c.taint.rules.clone(),
                unproven: c.taint.unproven.clone(),
                computed: c.taint.computed.clone(),
            })
            .collect();
        if candidates.len() > 1 {
            // Ambiguous: every column carries what any candidate may carry.
            let mut all = Taint::default();
            for r in &candidates {
                for c in &r.columns {
                    all.absorb(&c.taint);
                }
            }
            for c in &mut cols {
                c.rules.extend(all.rules.iter().cloned());
                c.unproven.extend(all.unproven.iter().cloned());
                c.computed.extend(all.rules.iter().cloned());
            }
        }
        Some(cols)
    }
}

/// The catalog of one database as sessions see it: the latest snapshot, columns that received
/// masked data, and the DDL mark.
pub struct DbCatalog {
    database: String,
    user: String,
    upstream: Arc<Upstream>,
    rules: Arc<Vec<(String, QualifiedColumn)>>,
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    /// Columns that received masked data.
    written: RwLock<Written>,
    ddl: AtomicU64,
    refresh: tokio::sync::Notify,
    loaded: tokio::sync::watch::Sender<bool>,
}

/// What a session consults: one snapshot plus the columns that received masked data and the
/// DDL state.
pub struct View {
    snapshot: Option<Arc<Snapshot>>,
    marks: Vec<(Mark, Vec<u32>)>,
    stale: bool,
}

impl DbCatalog {
    /// A consistent view for one statement of a session whose own uncommitted writes are
    /// `own`.
    pub fn view(&self, own: Vec<Mark>) -> View {
        let snapshot = self.snapshot.read().ok().and_then(|s| s.clone());
        let stale = snapshot
            .as_ref()
            .is_none_or(|s| s.ddl_mark < self.ddl.load(Ordering::Acquire));
        let mut marks = self.written.read().map(|w| w.marks()).unwrap_or_default();
        marks.extend(own.into_iter().map(|m| (m, Vec::new())));
        View {
            snapshot,
            marks,
            stale,
        }
    }

    /// Marks of a committed transaction, bound to the relations the current snapshot has
    /// under their names.
    pub fn commit_written(&self, marks: Vec<Mark>) {
        let snap = self.snapshot.read().ok().and_then(|s| s.clone());
        self.written(|w| {
            w.commit(marks, &|name| {
                snap.as_ref()
                    .and_then(|s| s.by_name.get(name).cloned())
                    .unwrap_or_default()
            })
        });
    }

    /// Change the marks every session sees.
    pub fn written(&self, change: impl FnOnce(&mut Written)) {
        match self.written.write() {
            Ok(mut w) => change(&mut w),
            Err(p) => change(&mut p.into_inner()),
        }
    }

    /// A statement that changes the schema was forwarded: views are unproven until the next
    /// read, which is requested at once (and again when the statement completes).
    pub fn ddl_forwarded(&self) {
        self.ddl.fetch_add(1, Ordering::AcqRel);
        self.refresh.notify_one();
    }

    /// Ask for a fresh read.
    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    async fn load(&self) -> Result<(), CatalogError> {
        let mark = self.ddl.load(Ordering::Acquire);
        let started = std::time::Instant::now();
        let raw = read_catalog(&self.upstream, &self.user, &self.database).await?;
        let previous = self.snapshot.read().ok().and_then(|s| s.clone());
        let snap = Snapshot::build(raw, &self.rules, previous.as_deref(), mark);
        tracing::debug!(database = %self.database, relations = snap.len(), "catalog read");
        self.written(|w| {
            w.expire(
                started,
                &|name| snap.by_name.get(name).cloned().unwrap_or_default(),
                &|oid| snap.relations.contains_key(&oid),
            )
        });
        if let Ok(mut s) = self.snapshot.write() {
            *s = Some(Arc::new(snap));
        }
        self.loaded.send_replace(true);
        Ok(())
    }
}

impl View {
    /// What the result column of relation `oid`, attribute `attnum` carries; `None` when the
    /// relation is unknown (then the statement's lineage decides).
    pub fn attribute(&self, oid: u32, attnum: i16) -> Option<Taint> {
        let snap = self.snapshot.as_ref()?;
        let rel = snap.relation_by_oid(oid)?;
        let col = rel.columns.iter().find(|c| c.attnum == attnum)?;
        let mut t = col.taint.clone();
        let names: Vec<&str> = rel.columns.iter().map(|c| c.name.as_str()).collect();
        for (m, oids) in &self.marks {
            let applies = if oids.is_empty() {
                m.table == rel.name
            } else {
                oids.contains(&oid)
            };
            if applies && reaches(m, &col.name, &names) {
                t.absorb(&m.taint);
            }
        }
        if self.stale && rel.is_view() {
            t.unproven
                .insert("catalog refresh pending after DDL".to_owned());
        }
        Some(t)
    }
}

impl Catalog for View {
    fn relation(&self, name: &[String]) -> Option<Vec<CatalogColumn>> {
        let snap = self.snapshot.as_ref()?;
        let mut cols = snap.relation(name)?;
        let last = name.last().map(String::as_str).unwrap_or("");
        let oids = snap.by_name.get(last).cloned().unwrap_or_default();
        let names: Vec<String> = cols.iter().map(|c| c.name.clone()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        for (m, marked) in &self.marks {
            let applies = if marked.is_empty() {
                m.table == last
            } else {
                marked.iter().any(|o| oids.contains(o))
            };
            if !applies {
                continue;
            }
            for c in &mut cols {
                if reaches(m, &c.name, &names) {
                    c.rules.extend(m.taint.rules.iter().cloned());
                    c.unproven.extend(m.taint.unproven.iter().cloned());
                    c.computed.extend(m.taint.computed.iter().cloned());
                }
            }
        }
        if self.stale {
            let is_view = name.last().is_some_and(|n| {
                snap.by_name.get(n).is_some_and(|oids| {
                    oids.iter()
                        .any(|o| snap.relation_by_oid(*o).is_some_and(Relation::is_view))
                })
            });
            if is_view {
                for c in &mut cols {
                    c.unproven
                        .insert("catalog refresh pending after DDL".to_owned());
                }
            }
        }
        Some(cols)
    }
}

/// Whether mark `m` of a relation with columns `names` covers column `column`: a mark of
/// every column, of this column, or of a column the relation no longer has (renamed: which
/// one holds the values is not known).
fn reaches(m: &Mark, column: &str, names: &[&str]) -> bool {
    match &m.column {
        None => true,
        Some(c) => c == column || !names.contains(&c.as_str()),
    }
}

/// The catalogs of one resource, one per database, each refreshed by its own task.
pub struct Catalogs {
    upstream: Arc<Upstream>,
    rules: Arc<Vec<(String, QualifiedColumn)>>,
    refresh_every: Duration,
    dbs: std::sync::Mutex<HashMap<String, Arc<DbCatalog>>>,
}

impl Catalogs {
    /// Catalogs for the masked columns `rules` (rule name, column).
    pub fn new(
        upstream: Arc<Upstream>,
        rules: Vec<(String, QualifiedColumn)>,
        refresh_every: Duration,
    ) -> Self {
        Self {
            upstream,
            rules: Arc::new(rules),
            refresh_every: refresh_every.max(Duration::from_secs(1)),
            dbs: Default::default(),
        }
    }

    /// The catalog of `database`, read the first time it is asked for (waiting a bounded
    /// time for the first read; until it succeeds every relation is unknown, so results are
    /// masked wholesale). `user` is the client's user, used when no credential is configured.
    pub async fn database(&self, database: &str, user: &str) -> Arc<DbCatalog> {
        let (db, fresh) = {
            let mut dbs = self.dbs.lock().unwrap_or_else(|p| p.into_inner());
            match dbs.get(database) {
                Some(d) => (d.clone(), false),
                None => {
                    let (loaded, _) = tokio::sync::watch::channel(false);
                    let d = Arc::new(DbCatalog {
                        database: database.to_owned(),
                        user: user.to_owned(),
                        upstream: self.upstream.clone(),
                        rules: self.rules.clone(),
                        snapshot: RwLock::new(None),
                        written: Default::default(),
                        ddl: AtomicU64::new(0),
                        refresh: tokio::sync::Notify::new(),
                        loaded,
                    });
                    dbs.insert(database.to_owned(), d.clone());
                    (d, true)
                }
            }
        };
        if fresh {
            tokio::spawn(refresh_loop(Arc::downgrade(&db), self.refresh_every));
        }
        let mut loaded = db.loaded.subscribe();
        let _ = tokio::time::timeout(FIRST_LOAD_TIMEOUT, loaded.wait_for(|l| *l)).await;
        db
    }
}

async fn refresh_loop(db: Weak<DbCatalog>, every: Duration) {
    let mut failures = 0u32;
    loop {
        let Some(d) = db.upgrade() else { return };
        if let Err(e) = d.load().await {
            failures += 1;
            tracing::warn!(database = %d.database, error = %e, "cannot read the catalog for masking; results stay masked wholesale until it can be read");
        } else {
            failures = 0;
        }
        let wait = if failures > 0 {
            Duration::from_millis(500 * u64::from(failures.min(20)))
        } else {
            every
        };
        let notified = {
            let d2 = d.clone();
            drop(d);
            async move {
                let _ = tokio::time::timeout(wait, d2.refresh.notified()).await;
            }
        };
        notified.await;
    }
}

const COLUMNS_SQL: &str = "SELECT c.oid, n.nspname, c.relname, c.relkind, a.attnum, a.attname \
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
WHERE c.relkind IN ('r','p','v','m','f') AND n.nspname NOT LIKE 'pg\\_toast%' \
ORDER BY c.oid, a.attnum";
const VIEWS_SQL: &str = "SELECT c.oid, pg_catalog.pg_get_viewdef(c.oid) \
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relkind IN ('v','m') AND n.nspname NOT IN ('pg_catalog', 'information_schema')";
const DEPS_SQL: &str = "SELECT DISTINCT r.ev_class, d.refobjid, d.refobjsubid \
FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_depend d \
ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid \
WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjsubid > 0 \
AND d.refobjid <> r.ev_class";
const INHERITS_SQL: &str = "SELECT inhrelid, inhparent FROM pg_catalog.pg_inherits";

/// The text rows of one result set.
pub(crate) type Rows = Vec<Vec<Option<String>>>;

/// Read the catalog over a fresh upstream connection. An empty `search_path` makes
/// `pg_get_viewdef` qualify every relation name.
pub async fn read_catalog(
    upstream: &Upstream,
    user: &str,
    database: &str,
) -> Result<RawCatalog, CatalogError> {
    let params = vec![
        ("search_path".to_owned(), String::new()),
        (
            "application_name".to_owned(),
            "portcullis-catalog".to_owned(),
        ),
    ];
    let established = upstream.connect(user, database, &params).await?;
    let mut stream = BufReader::new(established.stream);
    let sql = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {COLUMNS_SQL}; {VIEWS_SQL}; {DEPS_SQL}; {INHERITS_SQL}; COMMIT"
    );
    let sets = simple_query(&mut stream, &sql).await?;
    let mut out = BytesMut::new();
    put_message(&mut out, b'X', b"");
    let _ = stream.get_mut().write_all(&out).await;
    let [cols, views, deps, inherits] = <[Rows; 4]>::try_from(sets)
        .map_err(|s| CatalogError::Protocol(format!("{} result sets", s.len())))?;
    let mut raw = RawCatalog::default();
    let text = |r: &[Option<String>], i: usize| -> Result<String, CatalogError> {
        r.get(i)
            .cloned()
            .flatten()
            .ok_or_else(|| CatalogError::Protocol("missing field".into()))
    };
    let num = |r: &[Option<String>], i: usize| -> Result<i64, CatalogError> {
        text(r, i)?
            .parse::<i64>()
            .map_err(|e| CatalogError::Protocol(e.to_string()))
    };
    for r in &cols {
        raw.columns.push((
            num(r, 0)? as u32,
            text(r, 1)?,
            text(r, 2)?,
            text(r, 3)?.chars().next().unwrap_or('r'),
            num(r, 4)? as i16,
            text(r, 5)?,
        ));
    }
    for r in &views {
        // pg_get_viewdef can be NULL for a view dropped concurrently.
        if let Some(def) = r.get(1).cloned().flatten() {
            raw.views.insert(num(r, 0)? as u32, def);
        }
    }
    for r in &deps {
        raw.view_deps
            .entry(num(r, 0)? as u32)
            .or_default()
            .push((num(r, 1)? as u32, num(r, 2)? as i16));
    }
    for r in &inherits {
        raw.inherits.push((num(r, 0)? as u32, num(r, 1)? as u32));
    }
    Ok(raw)
}

/// Run a simple query and collect the text rows of every result set that has rows.
pub(crate) async fn simple_query<S>(stream: &mut S, sql: &str) -> Result<Vec<Rows>, CatalogError>
where
    S: tokio::io::AsyncBufRead + tokio::io::AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    put_message(&mut out, b'Q', &codec::query_body(sql));
    stream.write_all(&out).await?;
    stream.flush().await?;
    let mut sets: Vec<Rows> = Vec::new();
    let mut error: Option<String> = None;
    loop {
        let msg = match codec::read_message(stream, codec::HARD_MAX_MESSAGE, |_| false).await? {
            Read::Message(m) => m,
            Read::Eof | Read::Oversized { .. } => {
                return Err(CatalogError::Protocol("connection closed".into()))
            }
        };
        match msg.tag {
            b'T' => sets.push(Vec::new()),
            b'D' => {
                let row = data_row_text(&msg.body)?;
                match sets.last_mut() {
                    Some(s) => s.push(row),
                    None => return Err(CatalogError::Protocol("row before description".into())),
                }
            }
            b'E' => error = Some(codec::parse_error_fields(&msg.body).message),
            b'Z' => break,
            _ => {}
        }
    }
    match error {
        Some(e) => Err(CatalogError::Query(e)),
        None => Ok(sets),
    }
}

fn data_row_text(body: &[u8]) -> Result<Vec<Option<String>>, CatalogError> {
    let mut f = Fields::new(body);
    let n = u16::from_be_bytes([f.byte()?, f.byte()?]);
    let mut row = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = f.i32()?;
        if len < 0 {
            row.push(None);
            continue;
        }
        let mut v = Vec::with_capacity(len as usize);
        for _ in 0..len {
            v.push(f.byte()?);
        }
        row.push(Some(String::from_utf8_lossy(&v).into_owned()));
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawCatalog {
        let mut r = RawCatalog::default();
        for (i, c) in ["id", "full_name", "email", "ssn"].iter().enumerate() {
            r.columns.push((
                100,
                "public".into(),
                "customers".into(),
                'r',
                i as i16 + 1,
                (*c).into(),
            ));
        }
        for (i, c) in ["who", "mail", "n"].iter().enumerate() {
            r.columns.push((
                200,
                "public".into(),
                "v".into(),
                'v',
                i as i16 + 1,
                (*c).into(),
            ));
        }
        r.views.insert(
            200,
            "SELECT c.full_name AS who, lower(c.email) AS mail, length(c.ssn) > 3 AS n FROM public.customers c".into(),
        );
        r.view_deps.insert(200, vec![(100, 2), (100, 3), (100, 4)]);
        for (i, c) in ["x"].iter().enumerate() {
            r.columns.push((
                300,
                "public".into(),
                "w".into(),
                'v',
                i as i16 + 1,
                (*c).into(),
            ));
        }
        r.views
            .insert(300, "SELECT v.mail AS x FROM public.v".into());
        r.view_deps.insert(300, vec![(200, 2)]);
        for (i, c) in ["id", "email"].iter().enumerate() {
            r.columns.push((
                400,
                "public".into(),
                "customers_2026".into(),
                'r',
                i as i16 + 1,
                (*c).into(),
            ));
        }
        r.inherits.push((400, 100));
        r
    }

    fn rules() -> Vec<(String, QualifiedColumn)> {
        vec![
            ("contact".into(), "customers.email".parse().expect("name")),
            (
                "national-id".into(),
                "public.customers.ssn".parse().expect("name"),
            ),
        ]
    }

    #[test]
    fn rules_resolve_to_attributes_views_and_children() {
        let s = Snapshot::build(raw(), &rules(), None, 0);
        assert!(s.column(100, 1).is_some_and(|c| !c.taint.must_mask()));
        assert!(s
            .column(100, 3)
            .is_some_and(|c| c.taint.rules.contains("contact")));
        assert!(s.column(200, 1).is_some_and(|c| !c.taint.must_mask()));
        assert!(s
            .column(200, 2)
            .is_some_and(|c| c.taint.rules.contains("contact")));
        assert!(s
            .column(200, 3)
            .is_some_and(|c| c.taint.rules.contains("national-id")));
        assert!(s
            .column(300, 1)
            .is_some_and(|c| c.taint.rules.contains("contact")));
        assert!(s
            .column(400, 2)
            .is_some_and(|c| c.taint.rules.contains("contact")));
    }

    #[test]
    fn renamed_columns_stay_masked_and_unreadable_views_fall_back_to_dependencies() {
        let first = Snapshot::build(raw(), &rules(), None, 0);
        let mut renamed = raw();
        for c in &mut renamed.columns {
            if c.0 == 100 && c.5 == "email" {
                c.5 = "e_mail".into();
            }
        }
        renamed.views.insert(200, "not sql at all".into());
        let second = Snapshot::build(renamed, &rules(), Some(&first), 1);
        assert!(second
            .column(100, 3)
            .is_some_and(|c| c.taint.rules.contains("contact")));
        // The view's definition cannot be read: every column carries what it references.
        assert!(second.column(200, 1).is_some_and(|c| c.taint.must_mask()));
    }
}
