//! End-to-end tests of the sidecar against the harness PostgreSQL.

mod bypass;
mod bypass_redteam;
mod bypass_redteam_second;
mod bypass_resolution;
mod clients;
mod common;
mod durability;
mod guardrails;
mod identity;
mod identity_families;
mod identity_redteam;
mod limits;
mod masking;
mod passthrough;
mod reload;
mod robustness;
mod server_code;
mod shipping;
mod upstream;
