//! Prepared statement names, one namespace as on the server: SQL `PREPARE`, `EXECUTE`,
//! `DEALLOCATE` and `DISCARD ALL` and the extended protocol's Parse, Bind and Close all
//! define, use and remove the same names, and every use of a name carries the decision,
//! masking plan and audit template of its definition.
//!
//! A definition or removal may not take effect on the server: a statement fails, or the
//! server skips it after an earlier error of its batch. Until the batch that made the change
//! has been answered without an error, a use of the name in a later batch may therefore
//! meet the definition the server held before as well as the new one; the use then carries
//! both (the stricter decision, every column masked). A name the sidecar never saw defined
//! is refused.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use sqlparser::ast::{visit_statements, DiscardObject, Statement};

use super::Prepared;
use crate::masking::engine::SessionMasking;
use crate::postgres::results::Tracker;

/// Names a session may leave behind (defined or removed) before the settled removals are
/// forgotten.
const MAX_SLOTS: usize = 4096;

/// What a name holds.
#[derive(Clone, Debug)]
struct Slot {
    /// The last definition (`None`: removed).
    current: Option<Prepared>,
    /// Batch of the last change.
    batch: u64,
    /// What the server may still hold if that change did not take effect.
    before: Option<Prepared>,
}

/// A change to the namespace made by a statement (applied when the statement is forwarded).
#[derive(Clone, Debug)]
pub(super) enum NameChange {
    /// `PREPARE name` or a Parse.
    Define(String, Box<Prepared>),
    /// `DEALLOCATE name` or a Close of a statement.
    Remove(String),
    /// `DEALLOCATE ALL`, `DISCARD ALL`.
    RemoveAll,
}

/// The prepared statement names of one session.
#[derive(Debug, Default)]
pub(super) struct Statements {
    slots: HashMap<String, Slot>,
}

/// Whether the answer to `batch` arrived without an error.
fn settled(batch: u64, t: &Tracker) -> bool {
    batch <= t.batches_done && !t.failed_batches.contains(&batch)
}

impl Statements {
    /// The definition a use of `name` in batch `now` runs, or `None` when the name is
    /// unknown.
    pub(super) fn resolve(
        &self,
        name: &str,
        now: u64,
        t: &Tracker,
        masking: Option<&Arc<SessionMasking>>,
    ) -> Option<Prepared> {
        let slot = self.slots.get(name)?;
        possible(slot, now, t, masking)
    }

    /// Apply a change made in batch `now`.
    pub(super) fn apply(
        &mut self,
        change: NameChange,
        now: u64,
        t: &Tracker,
        masking: Option<&Arc<SessionMasking>>,
    ) {
        match change {
            NameChange::Define(name, def) => self.set(name, Some(*def), now, t, masking),
            NameChange::Remove(name) => {
                if self.slots.contains_key(&name) {
                    self.set(name, None, now, t, masking);
                }
            }
            NameChange::RemoveAll => {
                let names: Vec<String> = self.slots.keys().cloned().collect();
                for name in names {
                    self.set(name, None, now, t, masking);
                }
            }
        }
        if self.slots.len() > MAX_SLOTS {
            self.slots
                .retain(|_, s| s.current.is_some() || !settled(s.batch, t));
        }
    }

    fn set(
        &mut self,
        name: String,
        current: Option<Prepared>,
        now: u64,
        t: &Tracker,
        masking: Option<&Arc<SessionMasking>>,
    ) {
        let before = self
            .slots
            .get(&name)
            .and_then(|s| possible(s, now, t, masking));
        // The unnamed statement is replaced by every Parse that runs; a named one must be
        // removed first, so a definition over a live name fails on the server and the old
        // one stays: both are possible until the batch is answered.
        self.slots.insert(
            name,
            Slot {
                current,
                batch: now,
                before,
            },
        );
    }
}

/// What a slot may hold on the server for a use in batch `now`.
fn possible(
    slot: &Slot,
    now: u64,
    t: &Tracker,
    masking: Option<&Arc<SessionMasking>>,
) -> Option<Prepared> {
    if slot.batch == now || settled(slot.batch, t) {
        return slot.current.clone();
    }
    match (&slot.current, &slot.before) {
        (Some(c), Some(b)) => Some(merge(c, b, masking)),
        (Some(only), None) | (None, Some(only)) => Some(only.clone()),
        (None, None) => None,
    }
}

/// A use that may run either definition.
fn merge(a: &Prepared, b: &Prepared, masking: Option<&Arc<SessionMasking>>) -> Prepared {
    if a.template.fingerprint == b.template.fingerprint && !a.ambiguous && !b.ambiguous {
        return a.clone();
    }
    let mut merged = a.clone();
    merged.ambiguous = true;
    merged.effect = a.effect.max(b.effect);
    for limit in &b.row_limits {
        if !merged.row_limits.iter().any(|l| Arc::ptr_eq(l, limit)) {
            merged.row_limits.push(limit.clone());
        }
    }
    merged.grant = match (&a.grant, &b.grant) {
        (Some(x), Some(y)) => Some(if x.expires_at <= y.expires_at {
            x.clone()
        } else {
            y.clone()
        }),
        (x, y) => x.clone().or_else(|| y.clone()),
    };
    merged.definitions.extend(b.definitions.iter().cloned());
    merged.fetches.extend(b.fetches.iter().cloned());
    // Which columns come back is not known: every one is masked.
    merged.masking = masking.map(|m| m.plan_unknown());
    merged
}

/// What a statement does with prepared statement and portal names.
#[derive(Debug, Default)]
pub(super) struct Uses {
    /// `PREPARE name AS statement`.
    pub prepare: Option<(String, Statement)>,
    /// Names it runs (`EXECUTE`, also inside `EXPLAIN`).
    pub executes: Vec<String>,
    /// Whether the statement is itself an `EXECUTE` (its result is the definition's).
    pub top_execute: bool,
    /// `DEALLOCATE name`.
    pub deallocate: Option<String>,
    /// `DEALLOCATE ALL`, `DISCARD ALL`.
    pub remove_all: bool,
    /// Cursors (portals) it declares.
    pub cursors: Vec<String>,
}

/// The prepared statement names a statement defines, runs or removes.
pub(super) fn uses(ast: &Statement) -> Uses {
    let mut u = Uses {
        top_execute: matches!(ast, Statement::Execute { .. }),
        ..Uses::default()
    };
    let _ = visit_statements(ast, |s| {
        match s {
            Statement::Prepare {
                name, statement, ..
            } if u.prepare.is_none() => {
                u.prepare = Some((crate::policy::names::fold(name), statement.as_ref().clone()));
            }
            Statement::Execute { name, .. } => {
                match name.as_ref().map(crate::policy::names::parts) {
                    Some(parts) if parts.len() == 1 => u.executes.extend(parts),
                    // Not a PostgreSQL prepared statement name: nothing can match it.
                    _ => u.executes.push(String::new()),
                }
            }
            Statement::Deallocate { name, .. } => {
                if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") {
                    u.remove_all = true;
                } else {
                    u.deallocate = Some(crate::policy::names::fold(name));
                }
            }
            Statement::Discard {
                object_type: DiscardObject::ALL,
            } => u.remove_all = true,
            Statement::Declare { stmts } => {
                for d in stmts {
                    u.cursors
                        .extend(d.names.iter().map(crate::policy::names::fold));
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    u
}
