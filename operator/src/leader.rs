//! Leader election on a `coordination.k8s.io/v1` Lease, so that two or more replicas are
//! safe: only the holder runs the controllers; every replica serves the webhooks.
//!
//! Every write is conditional on the Lease's resourceVersion, so two candidates never both
//! win. Expiry is judged by the local clock since the record was last seen to change (as
//! client-go does), so clock skew between replicas does not matter.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;

/// Lease parameters.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Namespace of the Lease (the operator's).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews, and candidates retry.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// Defaults of client-go: 15 s lease, 2 s retry.
    pub fn new(namespace: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: "portcullis-operator".to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One candidate's view of the Lease.
struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Option<(String, Instant)>,
}

impl Elector {
    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.settings.lease_duration.as_secs().max(1)).unwrap_or(15)
    }

    /// Acquire or renew. `Ok(true)` when this replica holds the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let me = self.settings.identity.clone();
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let mut lease = Lease {
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
                ..Lease::default()
            };
            lease.metadata.name = Some(self.settings.name.clone());
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let changed = self.observed.as_ref().is_none_or(|(v, _)| *v != version);
        if changed {
            self.observed = Some((version, Instant::now()));
        }
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15),
        );
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|(_, seen)| seen.elapsed() > duration);
        if holder != me && !holder.is_empty() && !expired {
            return Ok(false);
        }
        if holder != me {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(me);
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(self.lease_seconds());
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(l) => {
                self.observed = l.metadata.resource_version.map(|v| (v, Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Give the Lease up (on a graceful stop), so another replica takes over at once.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        if let Err(e) = self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "releasing the leader Lease");
        }
    }
}

/// Run `work` whenever this replica leads, until `shutdown` resolves. `work` gets a
/// receiver that turns `true` when leadership is lost; it must then stop promptly.
pub async fn run_elected<F, Fut>(
    client: Client,
    settings: LeaseSettings,
    metrics: crate::metrics::Metrics,
    shutdown: impl Future<Output = ()>,
    work: F,
) where
    F: Fn(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut elector = Elector {
        api: Api::namespaced(client, &settings.namespace),
        settings: settings.clone(),
        observed: None,
    };
    tokio::pin!(shutdown);
    loop {
        // Candidate.
        loop {
            match elector.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(settings.retry_period) => {}
            }
        }
        tracing::info!(identity = %settings.identity, lease = %settings.name, "became leader");
        metrics.leader.set(1);
        let (stop, stopped) = watch::channel(false);
        let mut task = AbortOnDrop(tokio::spawn(work(stopped)));
        let mut last_renewal = Instant::now();
        let graceful = loop {
            tokio::select! {
                _ = &mut shutdown => break true,
                _ = &mut task.0 => break false,
                _ = tokio::time::sleep(settings.retry_period) => {}
            }
            match elector.try_acquire_or_renew().await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => break false,
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the leader Lease");
                    // Stop before the Lease can expire under another replica's eyes.
                    if last_renewal.elapsed() + settings.retry_period > settings.lease_duration {
                        break false;
                    }
                }
            }
        };
        tracing::info!(identity = %settings.identity, "leadership ends");
        metrics.leader.set(0);
        let _ = stop.send(true);
        if tokio::time::timeout(Duration::from_secs(10), &mut task.0)
            .await
            .is_err()
        {
            task.0.abort();
        }
        if graceful {
            elector.release().await;
            return;
        }
        elector.observed = None;
    }
}

/// The leader's work is aborted when the election loop is dropped (the process stops).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
