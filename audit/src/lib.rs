//! The Portcullis audit log: an append-only Merkle tree (RFC 6962 hashing, see
//! `portcullis_crds::audit_log`) stored durably in segment files, with signed tree heads,
//! inclusion and consistency proofs, pruning by whole segments, and a verifier that walks the
//! whole log and names the first entry that does not match.
//!
//! The audit service of the operator runs on top of [`store::Log`]; the kubectl plugin's
//! `verify` uses [`verify`].

pub mod anchor;
pub mod asciicast;
pub mod attribution;
pub mod auth;
pub mod bundle;
pub mod client;
pub mod emulator;
pub mod manifest;
pub mod prune;
pub mod recordings;
pub mod retention;
pub mod sanitize;
pub mod segment;
pub mod service;
pub mod store;
pub mod team_retention;
pub mod tree;
pub mod verify;
pub mod writer;
