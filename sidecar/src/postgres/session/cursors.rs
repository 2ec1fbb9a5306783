//! Rows sent through portals and cursors. SQL cursors (`DECLARE`) and the extended
//! protocol's portals (Bind) share one namespace on the server, and so they do here: each
//! open name carries the row limits of the statement that opened it and a count of the rows
//! sent through it, so that a limit holds across every `FETCH` of a cursor and every Execute
//! of a portal, not per message.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use sqlparser::ast::{visit_statements, CloseCursor, DiscardObject, Statement};

use crate::policy::guardrails::RowLimit;

/// Open names kept before the oldest are forgotten (a forgotten name gets every limit of the
/// session when it is fetched from).
const MAX_OPEN: usize = 4096;

/// The limits of an open portal or cursor and the rows it sent.
#[derive(Debug)]
pub(super) struct PortalRows {
    /// Limits of the statement that opened it.
    pub limits: Vec<Arc<RowLimit>>,
    /// Rows sent through it so far.
    pub sent: Arc<AtomicU64>,
}

impl PortalRows {
    pub(super) fn new(limits: Vec<Arc<RowLimit>>) -> Arc<PortalRows> {
        Arc::new(PortalRows {
            limits,
            sent: Arc::new(AtomicU64::new(0)),
        })
    }
}

/// A change to the open names, applied when the statement that makes it is forwarded.
#[derive(Debug)]
pub(super) enum CursorChange {
    /// `DECLARE`, a Bind, or a name first fetched from.
    Open(String, Arc<PortalRows>),
    /// `CLOSE name`, a Close of a portal.
    Close(String),
    /// `CLOSE ALL`, `DISCARD ALL`, or a statement that may open or close any name.
    CloseAll,
}

/// The open portals and cursors of one session.
#[derive(Debug, Default)]
pub(super) struct Cursors {
    open: HashMap<String, Arc<PortalRows>>,
}

impl Cursors {
    pub(super) fn get(&self, name: &str) -> Option<Arc<PortalRows>> {
        self.open.get(name).cloned()
    }

    pub(super) fn apply(&mut self, change: CursorChange) {
        match change {
            CursorChange::Open(name, rows) => {
                if self.open.len() >= MAX_OPEN && !self.open.contains_key(&name) {
                    self.open.clear();
                }
                self.open.insert(name, rows);
            }
            CursorChange::Close(name) => {
                self.open.remove(&name);
            }
            CursorChange::CloseAll => self.open.clear(),
        }
    }
}

/// What a statement does with cursors.
#[derive(Debug, Default)]
pub(super) struct CursorUses {
    /// Cursors it declares.
    pub declares: Vec<String>,
    /// Cursors it fetches from or moves (MOVE is analysed as FETCH).
    pub fetches: Vec<String>,
    /// Cursors it closes.
    pub closes: Vec<String>,
    /// It closes every cursor.
    pub close_all: bool,
}

/// The cursors a statement declares, fetches from and closes.
pub(super) fn uses(ast: &Statement) -> CursorUses {
    let fold = crate::policy::names::fold;
    let mut u = CursorUses::default();
    let _ = visit_statements(ast, |s| {
        match s {
            Statement::Declare { stmts } => {
                for d in stmts {
                    u.declares.extend(d.names.iter().map(fold));
                }
            }
            Statement::Fetch { name, .. } => u.fetches.push(fold(name)),
            Statement::Close { cursor } => match cursor {
                CloseCursor::All => u.close_all = true,
                CloseCursor::Specific { name } => u.closes.push(fold(name)),
            },
            Statement::Discard {
                object_type: DiscardObject::ALL,
            } => u.close_all = true,
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    u
}
