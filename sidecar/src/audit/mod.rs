//! The audit trail: the durable local spool, and the shipper that sends it to the audit
//! service.

pub mod ship;
pub mod spool;
