//! The admin endpoints: `/metrics` (Prometheus text), `/healthz` (the process can go on: its
//! audit spool has not failed) and `/readyz` (listeners bound and the audit spool writable).
//!
//! A spool write or sync that fails makes the sidecar refuse every statement from then on
//! (nothing unrecorded is forwarded); `/healthz` then answers 503 so that the kubelet's
//! liveness probe restarts the container, which reopens the spool once the disk has room
//! again. The endpoints show counters and states, never personal data; they answer whoever
//! reaches the admin address (the pod's network namespace, the agent included).

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
        .route("/healthz", get(healthz))
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

async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    match s.spool.failure() {
        Some(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("audit spool failed, restart needed: {e}\n"),
        ),
        None => (StatusCode::OK, "ok\n".to_owned()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use portcullis_crds::audit::{AuditEvent, Identity, SessionEnd};

    use crate::audit::spool::RecordContext;

    /// A spool whose segment write fails with ENOSPC (the segment is a link to `/dev/full`)
    /// fails liveness, and readiness with it; a fresh spool on a healthy disk passes both.
    #[tokio::test]
    async fn a_failed_spool_fails_liveness() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("spool");
        let state = AdminState {
            metrics: Metrics::new().expect("metrics"),
            spool: spool.clone(),
            ready: Arc::new(AtomicBool::new(true)),
        };
        let status = |r: axum::response::Response| r.status();
        assert_eq!(
            status(healthz(State(state.clone())).await.into_response()),
            StatusCode::OK
        );
        assert_eq!(
            status(readyz(State(state.clone())).await.into_response()),
            StatusCode::OK
        );
        std::os::unix::fs::symlink("/dev/full", dir.path().join("audit-0000000001.jsonl"))
            .expect("link");
        let ctx = RecordContext::new("s-1".into(), Identity::default(), "db".into());
        let end = AuditEvent::SessionEnd(SessionEnd {
            statements: 0,
            reason: "test".into(),
        });
        assert!(spool.append(&ctx, end).is_err(), "write to a full disk");
        assert_eq!(
            status(healthz(State(state.clone())).await.into_response()),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(readyz(State(state)).await.into_response()),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
