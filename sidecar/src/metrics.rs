//! Prometheus metrics of the sidecar.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The sidecar's metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Client connections accepted.
    pub connections_total: IntCounter,
    /// Client connections open.
    pub connections_active: IntGauge,
    /// Statements decided, by decision.
    pub statements: IntCounterVec,
    /// Time from forwarding a statement to its completion.
    pub statement_seconds: Histogram,
    /// Bytes held in the audit spool.
    pub spool_bytes: IntGauge,
    /// Connections refused or ended by a protocol error.
    pub protocol_errors: IntCounter,
    /// Spool bytes the audit service has not acknowledged yet.
    pub audit_unshipped_bytes: IntGauge,
    /// Records the audit service acknowledged.
    pub audit_shipped_records: IntCounter,
    /// Failed attempts to ship a batch, by reason (`unreachable`, `refused`, `failed`, `local`).
    pub audit_ship_failures: IntCounterVec,
    /// 1 while the last attempt to ship succeeded, 0 while the audit service is unavailable.
    pub audit_service_up: IntGauge,
    /// Batches held until their audit records were on disk.
    pub audit_sync_waits: IntCounter,
    /// Configuration reloads, by result (`applied`, `refused`).
    pub config_reloads: IntCounterVec,
    /// Connections refused at authentication (missing or invalid OIDC token).
    pub auth_failures: IntCounter,
    /// Kubernetes API requests decided, by verb class and decision.
    pub kube_requests: IntCounterVec,
    /// Exec and attach sessions recorded, by stream protocol.
    pub exec_sessions: IntCounterVec,
    /// Recordings waiting in the spool for the audit service.
    pub recordings_pending: IntGauge,
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("portcullis_sidecar".into()), None)?;
        let connections_total =
            IntCounter::new("connections_total", "Client connections accepted")?;
        let connections_active = IntGauge::new("connections_active", "Client connections open")?;
        let statements = IntCounterVec::new(
            Opts::new("statements_total", "Statements decided, by decision"),
            &["decision"],
        )?;
        let statement_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "statement_duration_seconds",
                "Time from forwarding a statement to its completion",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let spool_bytes = IntGauge::new("audit_spool_bytes", "Bytes held in the audit spool")?;
        let protocol_errors = IntCounter::new(
            "protocol_errors_total",
            "Connections refused or ended by a protocol error",
        )?;
        let audit_unshipped_bytes = IntGauge::new(
            "audit_unshipped_bytes",
            "Spool bytes the audit service has not acknowledged yet",
        )?;
        let audit_shipped_records = IntCounter::new(
            "audit_shipped_records_total",
            "Records the audit service acknowledged",
        )?;
        let audit_ship_failures = IntCounterVec::new(
            Opts::new(
                "audit_ship_failures_total",
                "Failed attempts to ship a batch to the audit service, by reason",
            ),
            &["reason"],
        )?;
        let audit_service_up = IntGauge::new(
            "audit_service_up",
            "1 while the audit service acknowledges batches, 0 while it is unavailable",
        )?;
        registry.register(Box::new(audit_unshipped_bytes.clone()))?;
        registry.register(Box::new(audit_shipped_records.clone()))?;
        registry.register(Box::new(audit_ship_failures.clone()))?;
        registry.register(Box::new(audit_service_up.clone()))?;
        registry.register(Box::new(connections_total.clone()))?;
        registry.register(Box::new(connections_active.clone()))?;
        registry.register(Box::new(statements.clone()))?;
        registry.register(Box::new(statement_seconds.clone()))?;
        registry.register(Box::new(spool_bytes.clone()))?;
        let audit_sync_waits = IntCounter::new(
            "audit_sync_waits_total",
            "Batches held until their audit records were on disk (statements that may change data)",
        )?;
        registry.register(Box::new(protocol_errors.clone()))?;
        registry.register(Box::new(audit_sync_waits.clone()))?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "config_reloads_total",
                "Configuration reloads, by result (applied, refused)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(config_reloads.clone()))?;
        let auth_failures = IntCounter::new(
            "auth_failures_total",
            "Connections refused at authentication (missing or invalid OIDC token)",
        )?;
        registry.register(Box::new(auth_failures.clone()))?;
        let kube_requests = IntCounterVec::new(
            Opts::new(
                "kube_requests_total",
                "Kubernetes API requests decided, by verb and decision",
            ),
            &["verb", "decision"],
        )?;
        registry.register(Box::new(kube_requests.clone()))?;
        let exec_sessions = IntCounterVec::new(
            Opts::new(
                "exec_sessions_total",
                "Exec and attach sessions recorded, by stream protocol",
            ),
            &["protocol"],
        )?;
        registry.register(Box::new(exec_sessions.clone()))?;
        let recordings_pending = IntGauge::new(
            "recordings_pending",
            "Exec recordings waiting in the spool for the audit service",
        )?;
        registry.register(Box::new(recordings_pending.clone()))?;
        Ok(Metrics {
            registry,
            connections_total,
            connections_active,
            statements,
            statement_seconds,
            spool_bytes,
            protocol_errors,
            audit_unshipped_bytes,
            audit_shipped_records,
            audit_ship_failures,
            audit_service_up,
            audit_sync_waits,
            config_reloads,
            auth_failures,
            kube_requests,
            exec_sessions,
            recordings_pending,
        })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
