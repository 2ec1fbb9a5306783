//! The audit trail: the durable local spool (shipping to the audit service comes later).

pub mod spool;
