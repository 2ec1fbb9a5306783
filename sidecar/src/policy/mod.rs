//! The policy engine: statement analysis, guardrails and fingerprints.

pub mod analyze;
pub mod cache;
pub mod fingerprint;
pub mod guardrails;
pub mod limits;
