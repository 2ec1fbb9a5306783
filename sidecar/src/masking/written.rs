//! Columns that received masked data, and how long they are known to hold it.
//!
//! A statement that copies masked values into a table (`INSERT ... SELECT`, `UPDATE ... SET`,
//! `CREATE TABLE AS`, `SELECT INTO`) makes the columns it writes carry the masking rules of
//! what it copied. That knowledge follows the transaction that wrote it:
//!
//! - the writing session sees its own writes masked from the moment the statement is planned;
//! - a write that failed, a transaction rolled back, and writes after a savepoint rolled back
//!   to are forgotten;
//! - other sessions see the written columns masked once the transaction commits (and while a
//!   statement that may commit it is in flight, so no result can overtake the commit);
//! - only the columns written with masked data are masked, not the whole table (every column
//!   when the statement does not say which column receives the values);
//! - a mark applies to the relations (OIDs) the table name resolved to when it committed
//!   (or at the first catalog read after, for a table made in the same transaction), so it
//!   follows a renamed table, and it expires with the data: once a catalog read that started
//!   after the commit finds none of those relations (dropped; a table made again under the
//!   same name is a new relation).
//!
//! The marks live in the sidecar's memory, per database.

use std::collections::BTreeMap;
use std::time::Instant;

use sqlparser::ast::Statement;

use super::lineage::{fold, Taint};

/// Masked values written into one column (`None`: any column) of the tables named `table`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Table name, last part, folded.
    pub table: String,
    /// Column name, folded; `None`: every column of the table.
    pub column: Option<String>,
    /// What the written values carry.
    pub taint: Taint,
}

impl Mark {
    /// A mark for a write into `table` as the statement wrote it (`[schema.]table`).
    pub fn new(table: &str, column: Option<String>, taint: Taint) -> Self {
        let last = table.rsplit('.').next().unwrap_or(table);
        let name = if last.starts_with('"') {
            last.trim_matches('"').to_owned()
        } else {
            last.to_lowercase()
        };
        Mark {
            table: name,
            column,
            taint,
        }
    }
}

/// What a statement does to the transaction, as far as written marks go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// `BEGIN`, `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `END` (with `AND CHAIN`: a new transaction starts).
    Commit {
        /// `AND CHAIN`.
        chain: bool,
    },
    /// `ROLLBACK`, `ABORT`.
    Rollback {
        /// `AND CHAIN`.
        chain: bool,
    },
    /// `SAVEPOINT name`.
    Savepoint(String),
    /// `ROLLBACK TO SAVEPOINT name`.
    RollbackTo(String),
    /// `RELEASE SAVEPOINT name`.
    Release(String),
}

/// The transaction control of a statement, if it is one.
pub fn control_of(statement: &Statement) -> Option<Control> {
    Some(match statement {
        Statement::StartTransaction { .. } => Control::Begin,
        Statement::Commit { chain, .. } => Control::Commit { chain: *chain },
        Statement::Rollback {
            savepoint: Some(name),
            ..
        } => Control::RollbackTo(fold(name)),
        Statement::Rollback { chain, .. } => Control::Rollback { chain: *chain },
        Statement::Savepoint { name } => Control::Savepoint(fold(name)),
        Statement::ReleaseSavepoint { name } => Control::Release(fold(name)),
        _ => return None,
    })
}

#[derive(Clone, Debug)]
struct Committed {
    mark: Mark,
    at: Instant,
    /// OIDs of the relations of that name, once a catalog read after the commit saw them.
    oids: Vec<u32>,
}

/// The marks of one database, shared by its sessions.
#[derive(Debug, Default)]
pub struct Written {
    committed: Vec<Committed>,
    in_flight: BTreeMap<u64, Vec<Mark>>,
}

impl Written {
    /// Marks of a committed transaction; `by_name` gives the OIDs of the relations of a
    /// name the catalog knows (none for a table it has not read yet).
    pub fn commit(&mut self, marks: Vec<Mark>, by_name: &dyn Fn(&str) -> Vec<u32>) {
        let at = Instant::now();
        for mark in marks {
            let oids = by_name(&mark.table);
            if let Some(c) = self.committed.iter_mut().find(|c| {
                c.mark.table == mark.table && c.mark.column == mark.column && c.oids == oids
            }) {
                c.mark.taint.absorb(&mark.taint);
                c.at = at;
            } else {
                self.committed.push(Committed { mark, at, oids });
            }
        }
    }

    /// Marks of `session` that a statement in flight may commit (replacing earlier ones).
    pub fn set_in_flight(&mut self, session: u64, marks: Vec<Mark>) {
        if marks.is_empty() {
            self.in_flight.remove(&session);
        } else {
            self.in_flight.insert(session, marks);
        }
    }

    /// Marks of `session` in flight become `marks`, if it has any in flight.
    pub fn narrow_in_flight(&mut self, session: u64, marks: Vec<Mark>) {
        if self.in_flight.contains_key(&session) {
            self.set_in_flight(session, marks);
        }
    }

    /// Marks every session sees, with the OIDs of the relations they apply to (none: every
    /// relation of the mark's name).
    pub fn marks(&self) -> Vec<(Mark, Vec<u32>)> {
        self.committed
            .iter()
            .map(|c| (c.mark.clone(), c.oids.clone()))
            .chain(
                self.in_flight
                    .values()
                    .flatten()
                    .map(|m| (m.clone(), Vec::new())),
            )
            .collect()
    }

    /// A catalog read that started at `started` found the relations `by_name` (name to
    /// OIDs) and `exists` (OID present): learn the OIDs of marks committed before the read
    /// that have none yet, and forget marks whose relations are all gone. A renamed table
    /// keeps its OID and its marks; a table dropped and made again under the same name is a
    /// new relation without them.
    pub fn expire(
        &mut self,
        started: Instant,
        by_name: &dyn Fn(&str) -> Vec<u32>,
        exists: &dyn Fn(u32) -> bool,
    ) {
        self.committed.retain_mut(|c| {
            if c.at >= started {
                return true;
            }
            if c.oids.is_empty() {
                c.oids = by_name(&c.mark.table);
            }
            c.oids.retain(|o| exists(*o));
            let keep = !c.oids.is_empty();
            if !keep {
                tracing::debug!(table = %c.mark.table, "masked-data mark expired: the table is gone");
            }
            keep
        });
    }
}

#[derive(Debug, Default)]
struct Frame {
    savepoint: Option<String>,
    marks: Vec<Mark>,
}

/// One session's writes that are not committed yet.
#[derive(Debug, Default)]
pub struct Pending {
    /// Writes of completed statements of the open transaction, by savepoint.
    frames: Vec<Frame>,
    /// Writes of statements planned since the last ReadyForQuery (the session's own view).
    planned: Vec<Mark>,
    /// Inside an explicit transaction block.
    explicit: bool,
}

/// What `Pending` asks the shared marks to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Publish {
    /// Nothing changes for other sessions.
    Nothing,
    /// These marks are committed.
    Commit(Vec<Mark>),
    /// The transaction ended without committing: what the session has in flight shrinks to
    /// what it still holds.
    Abandon,
}

impl Pending {
    /// Every mark the session itself must see.
    pub fn own(&self) -> Vec<Mark> {
        self.frames
            .iter()
            .flat_map(|f| f.marks.iter())
            .chain(self.planned.iter())
            .cloned()
            .collect()
    }

    /// A statement writing `marks` with transaction control `control` is planned. Returns
    /// the marks other sessions must see while it is in flight (it may commit them), if any.
    pub fn planned(&mut self, marks: &[Mark], control: Option<&Control>) -> Option<Vec<Mark>> {
        self.planned.extend(marks.iter().cloned());
        let may_commit = matches!(control, Some(Control::Commit { .. }))
            || (!self.explicit && !marks.is_empty());
        let all = self.own();
        (may_commit && !all.is_empty()).then_some(all)
    }

    /// A statement completed (`ran`: the server executed it; otherwise it failed or was
    /// skipped). `tag` is its command tag.
    pub fn completed(
        &mut self,
        marks: &[Mark],
        control: Option<&Control>,
        ran: bool,
        tag: Option<&str>,
    ) -> Publish {
        if !ran {
            // A failed COMMIT (a deferred constraint) rolls the transaction back, and so does
            // a failure outside an explicit block (its implicit transaction).
            if matches!(control, Some(Control::Commit { .. })) || !self.explicit {
                self.frames.clear();
                self.planned.clear();
                self.explicit = false;
                return Publish::Abandon;
            }
            return Publish::Nothing;
        }
        match control {
            Some(Control::Begin) => self.explicit = true,
            Some(Control::Commit { chain }) => {
                let marks: Vec<Mark> = self.frames.drain(..).flat_map(|f| f.marks).collect();
                self.explicit = *chain;
                // COMMIT of a failed transaction answers ROLLBACK.
                if tag.is_some_and(|t| t.starts_with("COMMIT")) && !marks.is_empty() {
                    return Publish::Commit(marks);
                }
                return Publish::Abandon;
            }
            Some(Control::Rollback { chain }) => {
                self.frames.clear();
                self.explicit = *chain;
                return Publish::Abandon;
            }
            Some(Control::Savepoint(name)) => self.frames.push(Frame {
                savepoint: Some(name.clone()),
                marks: Vec::new(),
            }),
            Some(Control::RollbackTo(name)) => {
                if let Some(i) = self.savepoint(name) {
                    self.frames.truncate(i + 1);
                    self.frames[i].marks.clear();
                }
            }
            Some(Control::Release(name)) => {
                if let Some(i) = self.savepoint(name) {
                    let released: Vec<Mark> =
                        self.frames.drain(i..).flat_map(|f| f.marks).collect();
                    self.top().marks.extend(released);
                }
            }
            None => {
                if !marks.is_empty() {
                    self.top().marks.extend(marks.iter().cloned());
                }
            }
        }
        Publish::Nothing
    }

    /// ReadyForQuery with transaction status `status` (`I`, `T`, `E`): every statement sent
    /// before it has completed. Idle means the (implicit) transaction ended; whatever is
    /// left of it committed (a failure would have cleared it).
    pub fn ready(&mut self, status: u8) -> Publish {
        self.planned.clear();
        if status == b'I' {
            self.explicit = false;
            let marks: Vec<Mark> = self.frames.drain(..).flat_map(|f| f.marks).collect();
            if !marks.is_empty() {
                return Publish::Commit(marks);
            }
        } else {
            self.explicit = true;
        }
        Publish::Nothing
    }

    fn savepoint(&self, name: &str) -> Option<usize> {
        self.frames
            .iter()
            .rposition(|f| f.savepoint.as_deref() == Some(name))
    }

    fn top(&mut self) -> &mut Frame {
        if self.frames.is_empty() {
            self.frames.push(Frame::default());
        }
        let last = self.frames.len() - 1;
        &mut self.frames[last]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(col: &str) -> Mark {
        let mut t = Taint::default();
        t.rules.insert("p/r".into());
        Mark::new("public.copy", Some(col.into()), t)
    }

    #[test]
    fn marks_follow_the_transaction() {
        let mut p = Pending::default();
        // Autocommit write: in flight at once, committed at ReadyForQuery idle.
        assert!(p.planned(&[mark("a")], None).is_some());
        assert_eq!(
            p.completed(&[mark("a")], None, true, Some("INSERT 0 1")),
            Publish::Nothing
        );
        assert_eq!(p.ready(b'I'), Publish::Commit(vec![mark("a")]));

        // A failed autocommit write is forgotten.
        p.planned(&[mark("b")], None);
        assert_eq!(
            p.completed(&[mark("b")], None, false, None),
            Publish::Abandon
        );
        assert_eq!(p.ready(b'I'), Publish::Nothing);
        assert!(p.own().is_empty());

        // BEGIN; write; ROLLBACK.
        p.completed(&[], Some(&Control::Begin), true, Some("BEGIN"));
        p.ready(b'T');
        assert!(p.planned(&[mark("c")], None).is_none(), "inside a block");
        p.completed(&[mark("c")], None, true, Some("INSERT 0 1"));
        p.ready(b'T');
        assert_eq!(p.own(), vec![mark("c")]);
        assert_eq!(
            p.completed(
                &[],
                Some(&Control::Rollback { chain: false }),
                true,
                Some("ROLLBACK")
            ),
            Publish::Abandon
        );
        assert_eq!(p.ready(b'I'), Publish::Nothing);

        // BEGIN; write a; SAVEPOINT s; write b; ROLLBACK TO s; COMMIT: only a.
        p.completed(&[], Some(&Control::Begin), true, Some("BEGIN"));
        p.completed(&[mark("a")], None, true, Some("INSERT 0 1"));
        p.completed(&[], Some(&Control::Savepoint("s".into())), true, None);
        p.completed(&[mark("b")], None, true, Some("INSERT 0 1"));
        p.completed(&[], Some(&Control::RollbackTo("s".into())), true, None);
        assert_eq!(
            p.completed(
                &[],
                Some(&Control::Commit { chain: false }),
                true,
                Some("COMMIT")
            ),
            Publish::Commit(vec![mark("a")])
        );
        assert_eq!(p.ready(b'I'), Publish::Nothing);

        // COMMIT of a failed block answers ROLLBACK: nothing is committed.
        p.completed(&[], Some(&Control::Begin), true, Some("BEGIN"));
        p.completed(&[mark("a")], None, true, Some("INSERT 0 1"));
        assert_eq!(
            p.completed(&[mark("b")], None, false, None),
            Publish::Nothing
        );
        assert_eq!(
            p.completed(
                &[],
                Some(&Control::Commit { chain: false }),
                true,
                Some("ROLLBACK")
            ),
            Publish::Abandon
        );
        assert_eq!(p.ready(b'I'), Publish::Nothing);

        // RELEASE keeps the savepoint's writes.
        p.completed(&[], Some(&Control::Begin), true, Some("BEGIN"));
        p.completed(&[], Some(&Control::Savepoint("s".into())), true, None);
        p.completed(&[mark("b")], None, true, Some("INSERT 0 1"));
        p.completed(&[], Some(&Control::Release("s".into())), true, None);
        assert_eq!(
            p.completed(
                &[],
                Some(&Control::Commit { chain: false }),
                true,
                Some("COMMIT")
            ),
            Publish::Commit(vec![mark("b")])
        );
    }

    #[test]
    fn marks_expire_with_the_table_not_with_its_name() {
        let mut w = Written::default();
        w.commit(vec![mark("a")], &|_| Vec::new());
        let before = Instant::now() - std::time::Duration::from_secs(1);
        // A read that started before the commit decides nothing.
        w.expire(before, &|_| Vec::new(), &|_| false);
        assert_eq!(w.marks().len(), 1);
        let after = Instant::now() + std::time::Duration::from_millis(1);
        w.expire(after, &|_| vec![42], &|o| o == 42);
        assert_eq!(w.marks()[0].1, vec![42]);
        // Renamed: the name is gone, the OID is not.
        w.expire(after, &|_| Vec::new(), &|o| o == 42);
        assert_eq!(w.marks().len(), 1);
        // Dropped and made again: a new OID under the same name.
        w.expire(after, &|_| vec![43], &|o| o == 43);
        assert!(w.marks().is_empty());
        // Known at commit: only that relation.
        w.commit(vec![mark("a")], &|_| vec![44]);
        assert_eq!(w.marks()[0].1, vec![44]);
    }
}
