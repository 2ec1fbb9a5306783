//! The admission webhooks: sidecar injection (`/mutate-pods` for labelled namespaces,
//! `/mutate-pods-opt-in` for pods that opt in elsewhere; pod creations and updates and
//! ephemeral-container updates, each checked with [`portcullis_crds::pod_guard`]) and GatewayPolicy validation
//! (`/validate-gatewaypolicies`), AccessRequest decisions (`/mutate-accessrequests` stamps who
//! decided, `/validate-accessrequests` refuses self-approval and non-approvers), served over TLS.

pub mod access_request;
pub mod config;
pub mod server;
pub mod validate;

pub use server::{serve, OptOutTrust, WebhookState};
