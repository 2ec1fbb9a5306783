//! `portcullis-operator`: controllers, admission webhooks, certificates, leader election.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use portcullis_operator::certs::CertSource;
use portcullis_operator::Settings;

/// The Portcullis operator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Namespace of the operator (Lease, certificate Secret).
    #[arg(long, env = "POD_NAMESPACE", default_value = "portcullis-system")]
    namespace: String,
    /// Identity for leader election (the pod name).
    #[arg(long, env = "POD_NAME", default_value = "portcullis-operator")]
    identity: String,
    /// Name of the operator's Service (the webhook certificate is issued for it).
    #[arg(long, default_value = "portcullis-operator")]
    service: String,
    /// Webhook server address (HTTPS).
    #[arg(long, default_value = "0.0.0.0:8443")]
    webhook_addr: SocketAddr,
    /// Metrics and health address (HTTP).
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Extra DNS names or IP addresses of the self-managed serving certificate (for example
    /// 127.0.0.1 when the API server reaches the webhook by URL).
    #[arg(long, value_delimiter = ',')]
    webhook_san: Vec<String>,
    /// Use `tls.crt`/`tls.key` from this directory (cert-manager) instead of the
    /// operator's own CA.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// MutatingWebhookConfigurations whose caBundle the operator keeps current.
    #[arg(long, value_delimiter = ',', default_value = "portcullis-injector")]
    mutating_webhooks: Vec<String>,
    /// ValidatingWebhookConfigurations whose caBundle the operator keeps current.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "portcullis-policy-validator"
    )]
    validating_webhooks: Vec<String>,
    /// Sidecar image.
    #[arg(long, env = "PORTCULLIS_SIDECAR_IMAGE")]
    sidecar_image: Option<String>,
    /// CPU request of the injected sidecar.
    #[arg(long, default_value = "50m")]
    sidecar_cpu_request: String,
    /// Memory request of the injected sidecar.
    #[arg(long, default_value = "64Mi")]
    sidecar_memory_request: String,
    /// CPU limit of the injected sidecar (none when omitted).
    #[arg(long)]
    sidecar_cpu_limit: Option<String>,
    /// Memory limit of the injected sidecar.
    #[arg(long, default_value = "256Mi")]
    sidecar_memory_limit: String,
    /// Base URL of the audit service the sidecars ship their spool to.
    #[arg(long, env = "PORTCULLIS_AUDIT_URL", requires = "audit_ca_file")]
    audit_url: Option<String>,
    /// PEM CA certificate of the audit service (copied into each namespace's sidecar
    /// ConfigMap).
    #[arg(long, env = "PORTCULLIS_AUDIT_CA_FILE")]
    audit_ca_file: Option<PathBuf>,
    /// Leader Lease duration in seconds.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Hours Denied and Expired AccessRequests are kept before they are deleted (the audit
    /// log keeps their steps).
    #[arg(
        long,
        env = "PORTCULLIS_ACCESS_REQUEST_RETENTION_HOURS",
        default_value_t = 168
    )]
    access_request_retention_hours: u64,
    /// Groups whose members may opt pods out of injection in labelled namespaces (pod
    /// annotation `portcullis.dev/inject: disabled`); nobody may when empty.
    #[arg(long, value_delimiter = ',')]
    opt_out_group: Vec<String>,
    /// Service accounts (`namespace/name`) that may opt pods out of injection.
    #[arg(long, value_delimiter = ',')]
    opt_out_service_account: Vec<String>,
    /// Register the webhook configurations with this base URL (for example
    /// `https://127.0.0.1:8443`) before starting: for a local control plane without the Helm
    /// chart. The operator fills in their caBundle as usual.
    #[arg(long)]
    register_webhooks: Option<String>,
}

/// Server-side apply the mutating and validating webhook configurations, reached by URL.
async fn register_webhooks(
    client: &kube::Client,
    url: &str,
    namespace: &str,
) -> anyhow::Result<()> {
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    };
    use kube::api::{Api, Patch, PatchParams};
    use portcullis_operator::webhook::config::{self, Options, Target};
    let opts = Options {
        name: "portcullis-injector".to_owned(),
        target: Target::Url(url.to_owned()),
        ca_bundle: None,
        excluded_namespaces: vec![namespace.to_owned(), "kube-system".to_owned()],
        namespace_labels: Default::default(),
    };
    let pp = PatchParams::apply("portcullis-operator");
    let mut mutating = serde_json::to_value(config::mutating(&opts))?;
    mutating["apiVersion"] = "admissionregistration.k8s.io/v1".into();
    mutating["kind"] = "MutatingWebhookConfiguration".into();
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch("portcullis-injector", &pp, &Patch::Apply(mutating))
        .await?;
    let opts = Options {
        name: "portcullis-policy-validator".to_owned(),
        ..opts
    };
    let mut validating = serde_json::to_value(config::validating(&opts))?;
    validating["apiVersion"] = "admissionregistration.k8s.io/v1".into();
    validating["kind"] = "ValidatingWebhookConfiguration".into();
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(
            "portcullis-policy-validator",
            &pp,
            &Patch::Apply(validating),
        )
        .await?;
    tracing::info!(%url, "registered the webhook configurations");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .json()
        .init();
    let args = Args::parse();
    let mut settings = Settings::new(&args.namespace, &args.identity, &args.service);
    settings.webhook_addr = args.webhook_addr;
    settings.metrics_addr = Some(args.metrics_addr);
    settings.lease_duration = Duration::from_secs(args.lease_seconds.max(2));
    settings.lease_retry = settings.lease_duration / 7;
    settings.access_request_retention =
        Duration::from_secs(args.access_request_retention_hours.saturating_mul(3600));
    settings.mutating_webhooks = args.mutating_webhooks;
    settings.validating_webhooks = args.validating_webhooks;
    if let CertSource::SelfManaged {
        subject_alt_names, ..
    } = &mut settings.cert_source
    {
        subject_alt_names.extend(args.webhook_san);
    }
    if let Some(dir) = args.cert_dir {
        settings.cert_source = CertSource::Directory(dir);
    }
    settings.opt_out.groups = args.opt_out_group;
    settings.opt_out.service_accounts = args.opt_out_service_account;
    settings.sidecar.cpu_request = args.sidecar_cpu_request;
    settings.sidecar.memory_request = args.sidecar_memory_request;
    settings.sidecar.cpu_limit = args.sidecar_cpu_limit;
    settings.sidecar.memory_limit = args.sidecar_memory_limit;
    if let Some(image) = args.sidecar_image {
        settings.sidecar.image = image;
    }
    if let (Some(url), Some(ca)) = (args.audit_url, args.audit_ca_file) {
        let ca_pem = std::fs::read_to_string(&ca)
            .map_err(|e| anyhow::anyhow!("audit CA {}: {e}", ca.display()))?;
        settings.audit = Some(portcullis_operator::compile::AuditTarget { url, ca_pem });
    }
    let client = kube::Client::try_default().await?;
    if let Some(url) = &args.register_webhooks {
        register_webhooks(&client, url, &args.namespace).await?;
    }
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "installing the SIGTERM handler");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    portcullis_operator::run(client, settings, shutdown).await?;
    Ok(())
}
