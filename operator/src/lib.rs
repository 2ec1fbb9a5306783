//! Portcullis operator: the control plane.
//!
//! - [`controller`]: ProtectedResource status, and the namespace compiler that turns the
//!   GatewayPolicies and ProtectedResources of a namespace into the sidecar ConfigMap.
//! - [`webhook`]: sidecar injection ([`inject`]) and GatewayPolicy validation, over TLS.
//! - [`certs`]: the webhook CA and serving certificate, rotated, with `caBundle` patching.
//! - [`leader`]: leader election on a `coordination.k8s.io/v1` Lease.
//! - [`metrics`]: `/metrics`, `/healthz`, `/readyz`.
//!
//! [`run`] runs all of it in-process (the binary is a thin wrapper); [`serve_webhook`] runs
//! the webhook server alone.

pub mod certs;
pub mod compile;
pub mod controller;
pub mod inject;
pub mod leader;
pub mod metrics;
pub mod notify;
pub mod run;
pub mod webhook;

pub use run::{run, serve_webhook, serve_webhook_trusting, Settings};

/// Errors of the operator's long-running parts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Certificates could not be made or loaded.
    #[error(transparent)]
    Certs(#[from] certs::CertError),
    /// The Kubernetes API refused a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A socket could not be bound.
    #[error("binding {0}: {1}")]
    Bind(String, std::io::Error),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}
