//! The controllers, run by the leader only:
//!
//! - [`gateway_policy`]: per namespace, compile every GatewayPolicy with the
//!   ProtectedResources it selects into the sidecar ConfigMap, and report each policy's
//!   status.
//! - [`protected_resource`]: resolve each ProtectedResource's credentials Secret, check its
//!   endpoint and port, count the pods bound to it.
//! - [`access_request`]: move each AccessRequest through Pending, Approved, Denied and
//!   Expired, with an Event for every transition, and delete Denied and Expired requests
//!   after the retention period.

pub mod access_request;
pub mod gateway_policy;
pub mod protected_resource;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};

use crate::certs::CertBundle;
use crate::inject::MANAGER;
use crate::metrics::Metrics;

/// Default time Denied and Expired AccessRequests are kept before they are deleted: a week.
pub const DEFAULT_ACCESS_REQUEST_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Finalizer on GatewayPolicies and ProtectedResources: the object leaves the namespace's
/// sidecar configuration before it is gone.
pub const FINALIZER: &str = "portcullis.dev/config-cleanup";

/// Errors of a reconcile. Each is retried with exponential backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The Kubernetes API refused a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The sidecar configuration could not be serialized.
    #[error("sidecar configuration: {0}")]
    Config(#[from] portcullis_crds::ConfigError),
    /// A certificate could not be issued.
    #[error("certificate: {0}")]
    Certs(#[from] crate::certs::CertError),
    /// The system's random number generator failed.
    #[error("no random bytes for {0}")]
    Random(&'static str),
}

impl ReconcileError {
    fn kind(&self) -> &'static str {
        match self {
            ReconcileError::Kube(_) => "kube",
            ReconcileError::Config(_) => "config",
            ReconcileError::Certs(_) => "certs",
            ReconcileError::Random(_) => "random",
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    /// Client of the operator.
    pub client: Client,
    /// Metrics.
    pub metrics: Metrics,
    /// Event recorder.
    pub recorder: Recorder,
    /// The operator's CA, which signs the sidecars' local serving certificates; `None` when
    /// certificates come from cert-manager.
    pub ca: Option<CertBundle>,
    /// The audit service the compiled configurations point the sidecars at.
    pub audit: Option<crate::compile::AuditTarget>,
    /// How long Denied and Expired AccessRequests are kept before they are deleted (their
    /// steps stay in the audit log, which the sidecar wrote as they happened).
    pub access_request_retention: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context for the controllers.
    pub fn new(client: Client, metrics: Metrics, identity: &str, ca: Option<CertBundle>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.to_owned(),
                instance: Some(identity.to_owned()),
            },
        );
        Self {
            client,
            metrics,
            recorder,
            ca,
            audit: None,
            access_request_retention: DEFAULT_ACCESS_REQUEST_RETENTION,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Ship the sidecars' spools to this audit service.
    pub fn with_audit(mut self, audit: Option<crate::compile::AuditTarget>) -> Self {
        self.audit = audit;
        self
    }

    /// Keep Denied and Expired AccessRequests for `retention` before deleting them.
    pub fn with_access_request_retention(mut self, retention: Duration) -> Self {
        self.access_request_retention = retention;
        self
    }

    /// Publish an Event about an object; failures are logged, never fatal.
    pub async fn event<K>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) where
        K: Resource<DynamicType = ()>,
    {
        let ev = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "publishing an event");
        }
    }

    /// Time a reconcile, count it, and reset the object's backoff on success.
    pub async fn instrument<F>(
        &self,
        controller: &str,
        key: String,
        fut: F,
    ) -> Result<Action, ReconcileError>
    where
        F: Future<Output = Result<Action, ReconcileError>>,
    {
        let gauge = self.metrics.queue_depth.with_label_values(&[controller]);
        gauge.inc();
        let start = Instant::now();
        let result = fut.await;
        gauge.dec();
        self.metrics
            .reconcile_duration
            .with_label_values(&[controller])
            .observe(start.elapsed().as_secs_f64());
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .reconciles
            .with_label_values(&[controller, outcome])
            .inc();
        if result.is_ok() {
            if let Ok(mut f) = self.failures.lock() {
                f.remove(&key);
            }
        }
        result
    }

    /// Exponential backoff: 1 s, 2 s, 4 s ... at most 5 minutes.
    pub fn backoff(&self, controller: &str, key: String, error: &ReconcileError) -> Action {
        self.metrics
            .reconcile_errors
            .with_label_values(&[controller, error.kind()])
            .inc();
        let n = match self.failures.lock() {
            Ok(mut f) => {
                let n = f.entry(key.clone()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            Err(_) => 1,
        };
        let delay =
            Duration::from_secs(1u64 << n.saturating_sub(1).min(9)).min(Duration::from_secs(300));
        tracing::warn!(controller, object = %key, error = %error, retry_in = ?delay, "reconcile failed");
        Action::requeue(delay)
    }
}

/// Drop what the operator never reads from cached objects (managed fields, kubectl's
/// last-applied copy), which is most of their memory.
pub fn slim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// `namespace/name` of an object.
pub fn key<K: Resource>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Run every controller until `stop` resolves.
pub async fn run(ctx: Arc<Context>, stop: impl Future<Output = ()> + Send + Sync + 'static) {
    let stop = futures::FutureExt::shared(Box::pin(stop));
    tokio::join!(
        gateway_policy::run(ctx.clone(), stop.clone()),
        protected_resource::run(ctx.clone(), stop.clone()),
        access_request::run(ctx.clone(), stop),
    );
}
