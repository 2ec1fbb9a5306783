//! Everything a session needs about the resource it serves, built once from the
//! configuration.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use portcullis_crds::audit::Identity;
use portcullis_crds::sidecar_config::{ResourceConfig, SidecarConfig};

use crate::audit::spool::Spool;
use crate::config::ConfigError;
use crate::masking::engine::Masker;
use crate::metrics::Metrics;
use crate::policy::cache::AnalysisCache;
use crate::policy::guardrails::Guardrails;
use crate::postgres::cancel::CancelRegistry;
use crate::postgres::tls::upstream_tls;
use crate::postgres::upstream::Upstream;

/// Limits on what clients send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest Query or Parse message analysed; larger ones are refused (the session stays).
    pub max_statement_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_statement_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A served resource.
pub struct Resource {
    /// ProtectedResource name.
    pub name: String,
    /// How to reach the server.
    pub upstream: Arc<Upstream>,
    /// Guardrails for the caller.
    pub guardrails: Guardrails,
    /// The audit spool.
    pub spool: Spool,
    /// Metrics.
    pub metrics: Metrics,
    /// The caller's identity.
    pub identity: Identity,
    /// Cancel keys of all sessions.
    pub cancel: CancelRegistry,
    /// Client limits.
    pub limits: Limits,
    /// Shared statement analyses.
    pub cache: AnalysisCache,
    /// Sessions started (for session ids).
    pub session_counter: AtomicU64,
    /// Random prefix of this process's session ids.
    pub process_nonce: String,
    /// Masking rules (`None`: no policy of the resource masks anything).
    pub masker: Option<Arc<Masker>>,
}

/// Shared services every resource uses.
pub struct Shared {
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
    /// Random prefix of session ids.
    pub process_nonce: String,
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
        let policies = config.policies_for(resource).cloned().collect();
        let upstream = Arc::new(Upstream {
            config: upstream_config,
            tls,
            credentials: resource.credentials.clone(),
        });
        let guardrails = Guardrails::for_identity(policies, &shared.identity, &config.namespace);
        let masker = Masker::new(
            guardrails.policies(),
            &config.masking,
            &config.namespace,
            upstream.clone(),
        )
        .map_err(|e| ConfigError::Invalid(format!("resource {}: {e}", resource.name)))?;
        Ok(Resource {
            name: resource.name.clone(),
            upstream,
            guardrails,
            masker: (!masker.is_empty()).then(|| Arc::new(masker)),
            spool: shared.spool.clone(),
            metrics: shared.metrics.clone(),
            identity: shared.identity.clone(),
            cancel: shared.cancel.clone(),
            limits: shared.limits,
            cache: shared.cache.clone(),
            session_counter: AtomicU64::new(1),
            process_nonce: shared.process_nonce.clone(),
        })
    }
}
