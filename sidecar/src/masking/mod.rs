//! Masking personal data in flight.
//!
//! - [`lineage`]: for every result column, which masked sources it may carry, from the
//!   statement's syntax tree; fails closed (unproven columns are masked).
//! - [`detectors`]: value detectors (e-mail, payment cards with Luhn, IBAN with checksum,
//!   phone numbers, user patterns) applied to text values whatever their column; values
//!   computed from the columns of a detector rule are redacted instead (see [`engine`]).
//! - [`catalog`]: masked columns resolved to (table OID, attribute number) from the upstream
//!   catalog, views followed to their base columns, refreshed after DDL and on a timer.
//! - [`engine`]: the rules of a resource, a session's exemptions, the plan of a statement and
//!   the rewriting of results (DataRows in text and binary format, COPY TO STDOUT).
//! - [`written`]: columns that received masked data, following each writing transaction's
//!   outcome, and their expiry with the table.
//! - [`strategy`]: redact, null, partial and keyed-hash masking that keeps values valid for
//!   their column type in text and binary formats.

pub mod catalog;
pub mod detectors;
pub mod engine;
pub mod lineage;
pub mod prefix;
pub mod strategy;
pub mod written;
