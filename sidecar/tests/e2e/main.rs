//! End-to-end tests of the sidecar against the harness PostgreSQL.

mod clients;
mod common;
mod guardrails;
mod masking;
mod passthrough;
mod robustness;
mod upstream;
