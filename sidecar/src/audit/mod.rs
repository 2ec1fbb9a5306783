//! The audit trail: the durable local spool, the shipper that sends it to the audit
//! service, and the uploader of exec recordings.

pub mod recordings;
pub mod ship;
pub mod spool;
