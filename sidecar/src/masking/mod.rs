//! Masking personal data in flight.
//!
//! - [`lineage`]: for every result column, which masked sources it may carry, from the
//!   statement's syntax tree; fails closed (unproven columns are masked).
//! - [`detectors`]: value detectors (e-mail, payment cards with Luhn, IBAN with checksum,
//!   phone numbers, user patterns) applied to text values whatever their column.
//! - [`strategy`]: redact, null, partial and keyed-hash masking that keeps values valid for
//!   their column type in text and binary formats.

pub mod detectors;
pub mod lineage;
pub mod strategy;
