//! The admin endpoints: `/metrics` (Prometheus text), `/healthz` (the process runs) and
//! `/readyz` (listeners bound and the audit spool writable).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::audit::spool::Spool;
use crate::metrics::Metrics;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// Metrics.
    pub metrics: Metrics,
    /// The spool (its health and depth).
    pub spool: Spool,
    /// Set once every listener is bound.
    pub ready: Arc<AtomicBool>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    let depth = i64::try_from(s.spool.bytes()).unwrap_or(i64::MAX);
    s.metrics.spool_bytes.set(depth);
    s.metrics.audit_unshipped_bytes.set(depth);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if !s.ready.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "listeners not bound\n".to_owned(),
        );
    }
    if let Some(e) = s.spool.failure() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("audit spool: {e}\n"),
        );
    }
    (StatusCode::OK, "ready\n".to_owned())
}
