//! Running the operator in-process: webhook server, metrics server, certificate rotation,
//! and (while this replica leads) the controllers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::net::TcpListener;

use crate::certs::{self, CertSource, ReloadableCert};
use crate::controller::{self, Context};
use crate::inject::SidecarSettings;
use crate::leader::{self, LeaseSettings};
use crate::metrics::{self, Health, Metrics};
use crate::webhook::{self, OptOutTrust, WebhookState};
use crate::Error;

/// Everything the operator is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The operator's own namespace (its Lease and certificate Secret live there).
    pub namespace: String,
    /// This replica's identity for leader election (its pod name).
    pub identity: String,
    /// Leader election Lease name.
    pub lease_name: String,
    /// How long the Lease holds without renewal.
    pub lease_duration: Duration,
    /// How often the Lease is renewed or retried.
    pub lease_retry: Duration,
    /// Address of the webhook server (HTTPS).
    pub webhook_addr: SocketAddr,
    /// Address of `/metrics`, `/healthz`, `/readyz` (plain HTTP); `None` turns it off.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the webhook serving certificate comes from.
    pub cert_source: CertSource,
    /// How often certificates are checked for renewal (or re-read from their directory) and
    /// the `caBundle` of the webhook configurations is checked.
    pub cert_check_interval: Duration,
    /// MutatingWebhookConfigurations whose `caBundle` the operator keeps current.
    pub mutating_webhooks: Vec<String>,
    /// ValidatingWebhookConfigurations whose `caBundle` the operator keeps current.
    pub validating_webhooks: Vec<String>,
    /// The injected sidecar.
    pub sidecar: SidecarSettings,
    /// Who may opt pods out of injection in labelled namespaces.
    pub opt_out: OptOutTrust,
    /// The audit service sidecars ship their spool to; `None` keeps records in the spools.
    pub audit: Option<crate::compile::AuditTarget>,
    /// How long Denied and Expired AccessRequests are kept before they are deleted.
    pub access_request_retention: Duration,
}

impl Settings {
    /// Defaults for an operator in `namespace` whose Service is `service`.
    pub fn new(namespace: &str, identity: &str, service: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            identity: identity.to_owned(),
            lease_name: "portcullis-operator".to_owned(),
            lease_duration: Duration::from_secs(15),
            lease_retry: Duration::from_secs(2),
            webhook_addr: SocketAddr::from(([0, 0, 0, 0], 8443)),
            metrics_addr: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            cert_source: CertSource::SelfManaged {
                secret: "portcullis-webhook-tls".to_owned(),
                subject_alt_names: vec![
                    format!("{service}.{namespace}.svc"),
                    format!("{service}.{namespace}.svc.cluster.local"),
                ],
                serving_validity: Duration::from_secs(30 * 24 * 3600),
                ca_validity: Duration::from_secs(5 * 365 * 24 * 3600),
            },
            cert_check_interval: Duration::from_secs(30),
            mutating_webhooks: vec!["portcullis-injector".to_owned()],
            validating_webhooks: vec!["portcullis-policy-validator".to_owned()],
            sidecar: SidecarSettings::default(),
            opt_out: OptOutTrust::default(),
            audit: None,
            access_request_retention: controller::DEFAULT_ACCESS_REQUEST_RETENTION,
        }
    }
}

async fn load_certs(
    client: &Client,
    settings: &Settings,
) -> Result<(String, String, Option<certs::CertBundle>), Error> {
    match &settings.cert_source {
        CertSource::SelfManaged {
            secret,
            subject_alt_names,
            serving_validity,
            ca_validity,
        } => {
            let bundle = certs::ensure_secret(
                client,
                &settings.namespace,
                secret,
                subject_alt_names,
                *ca_validity,
                *serving_validity,
            )
            .await?;
            certs::patch_ca_bundles(
                client,
                &settings.mutating_webhooks,
                &settings.validating_webhooks,
                &bundle.ca_bundle(),
            )
            .await?;
            Ok((
                bundle.cert_pem.clone(),
                bundle.key_pem.clone(),
                Some(bundle),
            ))
        }
        CertSource::Directory(dir) => {
            let (cert, key) = certs::read_dir(dir)?;
            Ok((cert, key, None))
        }
    }
}

/// Serve the webhooks alone on `listener` with the given certificate until `shutdown`
/// resolves.
pub async fn serve_webhook(
    client: Client,
    listener: TcpListener,
    cert: Arc<ReloadableCert>,
    sidecar: SidecarSettings,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    serve_webhook_trusting(
        client,
        listener,
        cert,
        sidecar,
        OptOutTrust::default(),
        metrics,
        shutdown,
    )
    .await
}

/// [`serve_webhook`], trusting `opt_out` to opt pods out of injection.
pub async fn serve_webhook_trusting(
    client: Client,
    listener: TcpListener,
    cert: Arc<ReloadableCert>,
    sidecar: SidecarSettings,
    opt_out: OptOutTrust,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let (state, _caches) = WebhookState::start(client, sidecar, opt_out, metrics).await;
    webhook::serve(listener, cert, state, shutdown).await
}

/// Run the operator until `shutdown` resolves: webhooks and metrics on every replica,
/// controllers on the leader.
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let metrics = Metrics::new()?;
    let health = Health::default();
    let (cert_pem, key_pem, bundle) = load_certs(&client, &settings).await?;
    let cert = ReloadableCert::new(&cert_pem, &key_pem)?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();

    if let Some(addr) = settings.metrics_addr {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Bind(addr.to_string(), e))?;
        let app = metrics::router(metrics.clone(), health.clone());
        let stop = stopped();
        tasks.spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!(error = %e, "metrics server");
            }
        });
    }

    // Certificate rotation.
    {
        let client = client.clone();
        let settings = settings.clone();
        let cert = cert.clone();
        let mut stop = Box::pin(stopped());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(settings.cert_check_interval) => {}
                }
                match load_certs(&client, &settings).await {
                    Ok((c, k, _)) => {
                        if let Err(e) = cert.set(&c, &k) {
                            tracing::error!(error = %e, "loading the renewed webhook certificate");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "renewing the webhook certificate"),
                }
            }
        });
    }

    let listener = TcpListener::bind(settings.webhook_addr)
        .await
        .map_err(|e| Error::Bind(settings.webhook_addr.to_string(), e))?;
    let (state, caches) = WebhookState::start(
        client.clone(),
        settings.sidecar.clone(),
        settings.opt_out.clone(),
        metrics.clone(),
    )
    .await;
    {
        let stop = stopped();
        let cert = cert.clone();
        tasks.spawn(async move {
            let _caches = caches;
            if let Err(e) = webhook::serve(listener, cert, state, stop).await {
                tracing::error!(error = %e, "webhook server");
            }
        });
    }
    health.set_ready(true);

    {
        let client = client.clone();
        let lease = LeaseSettings {
            namespace: settings.namespace.clone(),
            name: settings.lease_name.clone(),
            identity: settings.identity.clone(),
            lease_duration: settings.lease_duration,
            retry_period: settings.lease_retry,
        };
        let ctx = Arc::new(
            Context::new(client.clone(), metrics.clone(), &settings.identity, bundle)
                .with_audit(settings.audit.clone())
                .with_access_request_retention(settings.access_request_retention),
        );
        let stop = stopped();
        let metrics = metrics.clone();
        tasks.spawn(async move {
            leader::run_elected(client, lease, metrics, stop, move |mut lost| {
                let ctx = ctx.clone();
                async move {
                    controller::run(ctx, async move {
                        let _ = lost.wait_for(|l| *l).await;
                    })
                    .await;
                }
            })
            .await;
        });
    }

    shutdown.await;
    health.set_ready(false);
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}
