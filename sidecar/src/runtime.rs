//! Everything a session needs about the resource it serves, built once from the
//! configuration.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use portcullis_crds::audit::Identity;
use portcullis_crds::sidecar_config::{PolicyConfig, ResourceConfig, SidecarConfig};

use crate::approval::Approvals;
use crate::audit::spool::Spool;
use crate::config::ConfigError;
use crate::identity::oidc::OidcOptions;
use crate::identity::Authenticator;
use crate::masking::engine::Masker;
use crate::metrics::Metrics;
use crate::policy::cache::AnalysisCache;
use crate::postgres::cancel::CancelRegistry;
use crate::postgres::tls::upstream_tls;
use crate::postgres::upstream::Upstream;

/// Limits on what clients send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest Query or Parse message analysed; larger ones are read past without being
    /// kept and refused (the session stays).
    pub max_statement_bytes: usize,
    /// Largest message of any other kind (Bind with its parameters, CopyData, ...); a larger
    /// one ends the session with a FATAL error before its body is read.
    pub max_message_bytes: usize,
    /// Time a client has from connecting to a ready session (start-up packets, encryption
    /// negotiation and authentication), as PostgreSQL's `authentication_timeout`.
    pub startup_timeout: std::time::Duration,
    /// Largest part of an exec session's recording, in bytes: a longer session goes on in a
    /// next part (or ends, where a policy says `recordingLimit: endSession`). At most the
    /// audit service's limit, which is the default.
    pub max_recording_part_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_statement_bytes: 16 * 1024 * 1024,
            max_message_bytes: 64 * 1024 * 1024,
            startup_timeout: std::time::Duration::from_secs(60),
            max_recording_part_bytes: portcullis_audit::recordings::MAX_RECORDING_BYTES as u64,
        }
    }
}

/// A served resource.
pub struct Resource {
    /// ProtectedResource name.
    pub name: String,
    /// How to reach the server.
    pub upstream: Arc<Upstream>,
    /// The policies of the resource, in precedence order; each session applies those whose
    /// subjects name its identity (see `Guardrails::for_identity`).
    pub policies: Vec<PolicyConfig>,
    /// Namespace of the policies (the default namespace of ServiceAccount subjects).
    pub namespace: String,
    /// OIDC token validation, when the resource's policies name issuers.
    pub auth: Option<Authenticator>,
    /// Whether clients that are not on loopback are served.
    pub allow_remote_clients: bool,
    /// The audit spool.
    pub spool: Spool,
    /// Metrics.
    pub metrics: Metrics,
    /// The workload's identity (pod, namespace, service account); a session adds the person
    /// or pipeline run of its OIDC token.
    pub identity: Identity,
    /// Cancel keys of all sessions.
    pub cancel: CancelRegistry,
    /// Client limits.
    pub limits: Limits,
    /// Shared statement analyses.
    pub cache: AnalysisCache,
    /// Sessions started by this process (for session ids).
    pub session_counter: Arc<AtomicU64>,
    /// Random prefix of this process's session ids.
    pub process_nonce: String,
    /// Approvals through the API server; `None` in standalone mode.
    pub approvals: Option<Arc<Approvals>>,
    /// Masking rules (`None`: no policy of the resource masks anything).
    pub masker: Option<Arc<Masker>>,
    /// Functions and views defined through this sidecar for the resource (kept across
    /// configuration reloads).
    pub code: Arc<crate::policy::code::Definitions>,
}

/// Shared services every resource uses.
pub struct Shared {
    /// Approvals through the API server; `None` in standalone mode.
    pub approvals: Option<Arc<Approvals>>,
    /// The audit spool.
    pub spool: Spool,
    /// Metrics.
    pub metrics: Metrics,
    /// Cancel registry.
    pub cancel: CancelRegistry,
    /// Analysis cache.
    pub cache: AnalysisCache,
    /// Caller identity.
    pub identity: Identity,
    /// Client limits.
    pub limits: Limits,
    /// OIDC key-set caching.
    pub oidc: OidcOptions,
    /// Random prefix of session ids.
    pub process_nonce: String,
    /// Sessions started by this process (every resource, across configuration reloads).
    pub session_counter: Arc<AtomicU64>,
    /// Functions and views defined through this process, per resource name (across
    /// configuration reloads).
    pub code: Arc<
        std::sync::Mutex<std::collections::HashMap<String, Arc<crate::policy::code::Definitions>>>,
    >,
}

impl Resource {
    /// Build a PostgreSQL resource.
    pub fn postgres(
        config: &SidecarConfig,
        resource: &ResourceConfig,
        shared: &Shared,
    ) -> Result<Resource, ConfigError> {
        let upstream_config = resource.upstream.clone().ok_or_else(|| {
            ConfigError::Invalid(format!("resource {} has no upstream", resource.name))
        })?;
        let tls = upstream_tls(&upstream_config)
            .map_err(|e| ConfigError::Invalid(format!("resource {}: {e}", resource.name)))?;
        let policies: Vec<PolicyConfig> = config.policies_for(resource).cloned().collect();
        let policies = crate::identity::bind_policies(policies)
            .map_err(|e| ConfigError::Invalid(format!("resource {}: {e}", resource.name)))?;
        let auth = Authenticator::for_policies(&policies, &config.namespace, shared.oidc)
            .map_err(|e| ConfigError::Invalid(format!("resource {}: {e}", resource.name)))?;
        let upstream = Arc::new(Upstream {
            config: upstream_config,
            tls,
            credentials: resource.credentials.clone(),
        });
        // Masking follows every policy of the resource (a session's subjects never unmask
        // a column; exemptions are per rule).
        let masker = Masker::new(
            &policies,
            &config.masking,
            &config.namespace,
            upstream.clone(),
        )
        .map_err(|e| ConfigError::Invalid(format!("resource {}: {e}", resource.name)))?;
        Ok(Resource {
            name: resource.name.clone(),
            upstream,
            masker: (!masker.is_empty()).then(|| Arc::new(masker)),
            policies,
            namespace: config.namespace.clone(),
            auth,
            allow_remote_clients: resource.allow_remote_clients,
            spool: shared.spool.clone(),
            metrics: shared.metrics.clone(),
            identity: shared.identity.clone(),
            cancel: shared.cancel.clone(),
            limits: shared.limits,
            cache: shared.cache.clone(),
            session_counter: shared.session_counter.clone(),
            process_nonce: shared.process_nonce.clone(),
            approvals: shared.approvals.clone(),
            code: shared
                .code
                .lock()
                .map(|mut m| m.entry(resource.name.clone()).or_default().clone())
                // A poisoned map: this resource starts with no kept definition.
                .unwrap_or_default(),
        })
    }
}
