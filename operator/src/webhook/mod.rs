//! The admission webhooks: sidecar injection (`/mutate-pods` for labelled namespaces,
//! `/mutate-pods-opt-in` for pods that opt in elsewhere) and GatewayPolicy validation
//! (`/validate-gatewaypolicies`), served over TLS.

pub mod config;
pub mod server;
pub mod validate;

pub use server::{serve, WebhookState};
