//! `portcullis-sidecar --config FILE`: serve the resources of a sidecar configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use portcullis_crds::audit::Identity;
use portcullis_sidecar::approval::KubeAccess;
use portcullis_sidecar::config::{self, Options};
use portcullis_sidecar::identity::oidc::OidcOptions;
use portcullis_sidecar::runtime::Limits;
use tracing_subscriber::EnvFilter;

/// Portcullis sidecar: a policy-enforcing PostgreSQL proxy with a write-ahead audit spool.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Sidecar configuration (YAML, SidecarConfig shape).
    #[arg(long, env = "PORTCULLIS_CONFIG")]
    config: PathBuf,
    /// Service account the agent runs as (the caller's identity).
    #[arg(long, env = "PORTCULLIS_SERVICE_ACCOUNT", default_value = "default")]
    service_account: String,
    /// Namespace of the service account (defaults to the configuration's namespace).
    #[arg(long, env = "PORTCULLIS_POD_NAMESPACE")]
    namespace: Option<String>,
    /// Name of the pod the agent runs in.
    #[arg(long, env = "PORTCULLIS_POD_NAME")]
    pod: Option<String>,
    /// UID of the pod the agent runs in.
    #[arg(long, env = "PORTCULLIS_POD_UID")]
    pod_uid: Option<String>,
    /// Least time between two fetches of an OIDC issuer's keys caused by unknown key ids.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    jwks_min_refresh: std::time::Duration,
    /// Age after which an OIDC issuer's cached keys are fetched again (a key the issuer
    /// withdrew is trusted at most this long).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    jwks_max_age: std::time::Duration,
    /// Largest Query or Parse message analysed, in bytes; larger ones are refused.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_statement_bytes: usize,
    /// Largest client message of any other kind (Bind, CopyData, ...), in bytes; a larger one
    /// ends the session.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    max_message_bytes: usize,
    /// Time a client has from connecting to a ready session (start-up and authentication).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    startup_timeout: std::time::Duration,
    /// Largest part of an exec session's recording, in bytes (at least 4096, at most the
    /// audit service's limit of 64 MiB, the default); a longer session is recorded in parts.
    #[arg(long, default_value_t = portcullis_audit::recordings::MAX_RECORDING_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(4096..=portcullis_audit::recordings::MAX_RECORDING_BYTES as u64))]
    max_recording_part_bytes: u64,
    /// Kubeconfig for approval requests (outside a pod). In a pod the sidecar uses its
    /// in-cluster configuration; without either, statements that require approval are refused.
    #[arg(long, env = "PORTCULLIS_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// How approval requests reach the API server: `auto` (kubeconfig when given, else the
    /// in-cluster configuration when the pod has one), `in-cluster`, or `off` (standalone).
    #[arg(long, env = "PORTCULLIS_APPROVALS", value_parser = ["auto", "in-cluster", "off"], default_value = "auto")]
    approvals: String,
    /// Threads that serve PostgreSQL sessions, each session on one of them (default: one per
    /// core the process may use).
    #[arg(long, env = "PORTCULLIS_WORKERS")]
    workers: Option<usize>,
    /// Log format.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if cli.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let config = match config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("portcullis-sidecar: {e}");
            return ExitCode::from(2);
        }
    };
    let options = Options {
        identity: Identity {
            kind: "ServiceAccount".to_owned(),
            name: cli.service_account,
            namespace: Some(cli.namespace.unwrap_or_else(|| config.namespace.clone())),
            pod: cli.pod,
            pod_uid: cli.pod_uid,
            principal: None,
        },
        limits: Limits {
            max_statement_bytes: cli.max_statement_bytes,
            max_message_bytes: cli.max_message_bytes,
            startup_timeout: cli.startup_timeout,
            max_recording_part_bytes: cli.max_recording_part_bytes,
        },
        kube: kube_access(&cli.approvals, cli.kubeconfig),
        oidc: OidcOptions {
            jwks_min_refresh: cli.jwks_min_refresh,
            jwks_max_age: cli.jwks_max_age,
            ..OidcOptions::default()
        },
        config_path: Some(cli.config.clone()),
        workers: cli
            .workers
            .unwrap_or_else(portcullis_sidecar::workers::default_count),
    };
    // Sessions run on their own worker threads (see `workers`); this runtime serves the
    // listeners, the admin endpoint, the shipper and the Kubernetes API proxy.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portcullis-sidecar: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(portcullis_sidecar::run(config, options, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sidecar stopped");
            eprintln!("portcullis-sidecar: {e}");
            ExitCode::FAILURE
        }
    }
}

fn kube_access(mode: &str, kubeconfig: Option<PathBuf>) -> KubeAccess {
    const TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
    match (mode, kubeconfig) {
        ("off", _) => KubeAccess::Off,
        ("in-cluster", _) => KubeAccess::InCluster,
        (_, Some(path)) => KubeAccess::Kubeconfig(path),
        _ if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
            && std::path::Path::new(TOKEN).exists() =>
        {
            KubeAccess::InCluster
        }
        _ => KubeAccess::Off,
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}
