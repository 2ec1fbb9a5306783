//! The policy engine: statement analysis, name resolution, guardrails and fingerprints.

pub mod analyze;
pub mod bounded;
pub mod cache;
pub mod code;
pub mod fingerprint;
pub mod guardrails;
pub mod limits;
pub mod names;
pub mod query_text;
pub mod row_folds;
pub mod row_sources;
