//! Configuration reloads: the operator rewrites the namespace's ConfigMap when a policy
//! changes, and the kubelet swaps the mounted file in place. The sidecar checks the file every
//! [`RELOAD_INTERVAL`]; a new version that parses and passes its checks replaces each
//! resource's policies, masking rules and upstream settings for the sessions that start from
//! then on (sessions already open keep the configuration they started with); for the
//! Kubernetes API proxy, connections opened from then on, with its serving certificate read
//! again. A version that
//! does not parse or check is refused with a log line and a metric, and the last good
//! configuration stays in force. Changes that need new listeners (resources added or removed,
//! listen addresses) take effect when the sidecar restarts, which the log says.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portcullis_crds::sidecar_config::{ResourceConfig, SidecarConfig};
use tokio::sync::watch;

use crate::config;
use crate::kube::KubeProxy;
use crate::runtime::{Resource, Shared};

/// How often the configuration file is checked.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// A served resource: the configuration it listens with and the state new sessions use.
pub struct Served {
    /// The resource's configuration when its listener was opened.
    pub config: ResourceConfig,
    /// What new sessions (PostgreSQL) or connections (Kubernetes API) of the resource use.
    pub current: Current,
}

/// The state of a served resource, by kind.
pub enum Current {
    /// A PostgreSQL resource.
    Postgres(watch::Sender<Arc<Resource>>),
    /// The Kubernetes API proxy.
    Kubernetes(watch::Sender<Arc<KubeProxy>>),
}

/// A resource built from a new configuration, with the channel that switches to it.
enum Switch<'a> {
    Postgres(&'a watch::Sender<Arc<Resource>>, Arc<Resource>),
    Kubernetes(&'a watch::Sender<Arc<KubeProxy>>, Arc<KubeProxy>),
}

/// Watch `path` until `stop`, applying each new valid version of the configuration.
pub async fn watch(
    path: PathBuf,
    mut active: SidecarConfig,
    served: Vec<Served>,
    shared: Shared,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_text = tokio::fs::read_to_string(&path).await.ok();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RELOAD_INTERVAL) => {}
            _ = stop.changed() => if *stop.borrow() { return },
        }
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "configuration file unreadable; keeping the last good configuration");
                continue;
            }
        };
        if last_text.as_deref() == Some(text.as_str()) {
            continue;
        }
        last_text = Some(text.clone());
        match apply(&text, &active, &served, &shared) {
            Ok(next) => {
                shared
                    .metrics
                    .config_reloads
                    .with_label_values(&["applied"])
                    .inc();
                tracing::info!(path = %path.display(), hash = %next.content_hash(), "configuration reloaded");
                active = next;
            }
            Err(e) => {
                shared
                    .metrics
                    .config_reloads
                    .with_label_values(&["refused"])
                    .inc();
                tracing::error!(path = %path.display(), error = %e, "new configuration refused; keeping the last good configuration");
            }
        }
    }
}

/// Check a new version and, when every served resource can be built from it, switch them all.
fn apply(
    text: &str,
    active: &SidecarConfig,
    served: &[Served],
    shared: &Shared,
) -> Result<SidecarConfig, config::ConfigError> {
    let next = SidecarConfig::from_yaml(text)?;
    next.check()?;
    let mut built = Vec::with_capacity(served.len());
    for s in served {
        let Some(resource) = next.resources.iter().find(|r| r.name == s.config.name) else {
            tracing::warn!(resource = %s.config.name, "resource removed from the configuration; it keeps its last configuration until the sidecar restarts");
            continue;
        };
        if resource.listen_address != s.config.listen_address
            || resource.listen_port != s.config.listen_port
            || resource.r#type != s.config.r#type
        {
            tracing::warn!(resource = %resource.name, "listen address or type changed; takes effect when the sidecar restarts");
        }
        built.push(match &s.current {
            Current::Postgres(tx) => {
                Switch::Postgres(tx, Arc::new(Resource::postgres(&next, resource, shared)?))
            }
            Current::Kubernetes(tx) => {
                Switch::Kubernetes(tx, Arc::new(KubeProxy::new(&next, resource, shared)?))
            }
        });
    }
    for r in &next.resources {
        if !active.resources.iter().any(|a| a.name == r.name) {
            tracing::warn!(resource = %r.name, "new resource in the configuration; served after the sidecar restarts");
        }
    }
    for switch in built {
        match switch {
            Switch::Postgres(tx, r) => {
                tx.send_replace(r);
            }
            Switch::Kubernetes(tx, p) => {
                tx.send_replace(p);
            }
        }
    }
    Ok(next)
}
