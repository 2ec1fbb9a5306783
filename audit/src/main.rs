//! `portcullis-audit`: the audit service (its own Deployment, storage on a PersistentVolume).
//!
//!   portcullis-audit serve --data-dir /var/lib/portcullis/audit --tls-cert tls.crt --tls-key tls.key \
//!       --signing-key /etc/portcullis/audit-key/ed25519.pk8 --witness portcullis-system/default
//!   portcullis-audit keygen FILE        write a new ed25519 signing key (PKCS#8 DER)
//!   portcullis-audit verify DIR --public-key FILE   verify a log directory offline

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand};
use portcullis_audit::anchor::Anchor;
use portcullis_audit::attribution::InjectionScope;
use portcullis_audit::retention::run_retention;
use portcullis_audit::service::{run_anchored_signer, serve_tls, AuditService, Witness};
use portcullis_audit::store::{Log, LogOptions};
use portcullis_audit::verify::{read_public_key, verify_log};
use portcullis_crds::audit_log::LogSigner;

#[derive(Parser)]
#[command(name = "portcullis-audit", version, about = "Portcullis audit service")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8443", env = "PORTCULLIS_AUDIT_LISTEN")]
    listen: SocketAddr,
    /// Directory of the log (a PersistentVolume in the cluster).
    #[arg(long, env = "PORTCULLIS_AUDIT_DATA_DIR")]
    data_dir: PathBuf,
    /// PEM certificate chain of the service.
    #[arg(long)]
    tls_cert: PathBuf,
    /// PEM private key of the service.
    #[arg(long)]
    tls_key: PathBuf,
    /// ed25519 signing key, PKCS#8 DER (a mounted Secret key).
    #[arg(long, conflicts_with = "signing_key_secret")]
    signing_key: Option<PathBuf>,
    /// Secret (NAMESPACE/NAME) holding the signing key under `ed25519.pk8`; created with a
    /// new key on first start when missing.
    #[arg(long)]
    signing_key_secret: Option<String>,
    /// How often a new tree head is signed while records arrive, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    sign_every_ms: u64,
    /// AuditRetention (NAMESPACE/NAME) whose status receives each signed tree head.
    #[arg(long)]
    witness: Option<String>,
    /// File (outside the data directory, on other storage) that keeps the last signed tree
    /// head; on start the log must extend it as well as the witnessed head.
    #[arg(long, env = "PORTCULLIS_AUDIT_HEAD_FILE")]
    head_file: Option<PathBuf>,
    /// Size at which a log segment is closed and a new one started, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    segment_bytes: u64,
    /// A label (KEY=VALUE) the injection webhook requires of a namespace besides
    /// `portcullis.dev/inject=enabled` (repeatable): a sidecar names a person only there.
    #[arg(long = "injection-namespace-label", value_parser = parse_label)]
    injection_namespace_labels: Vec<(String, String)>,
    /// A namespace the injection webhook never sees (repeatable): no sidecar there names a
    /// person.
    #[arg(long = "injection-excluded-namespace")]
    injection_excluded_namespaces: Vec<String>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s}: expected KEY=VALUE"))
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the ingest, tree-head and proof endpoints over HTTPS.
    Serve(Box<ServeArgs>),
    /// Write a new ed25519 signing key (PKCS#8 DER) to FILE and print its public key (hex).
    Keygen {
        /// Where to write the key.
        file: PathBuf,
    },
    /// Verify a log directory offline: checksums, Merkle tree and every signed tree head.
    Verify {
        /// The log directory.
        dir: PathBuf,
        /// File holding the raw 32-byte ed25519 public key, or its hex.
        #[arg(long)]
        public_key: PathBuf,
    },
}

fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).map_err(|e| format!("{}: {e}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).map_err(|e| format!("{}: {e}", key.display()))?,
    ))
    .map_err(|e| format!("{}: {e}", key.display()))?
    .ok_or_else(|| format!("{}: no private key", key.display()))?;
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS configuration: {e}"))
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let ServeArgs {
        listen,
        data_dir,
        tls_cert,
        tls_key,
        signing_key,
        signing_key_secret,
        sign_every_ms,
        witness,
        head_file,
        segment_bytes,
        injection_namespace_labels,
        injection_excluded_namespaces,
    } = args;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("Kubernetes client: {e}"))?;
    let key = match (signing_key, signing_key_secret) {
        (Some(path), _) => std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?,
        (None, Some(secret)) => signing_key_from_secret(&client, &secret).await?,
        (None, None) => {
            return Err("one of --signing-key or --signing-key-secret is required".into())
        }
    };
    let signer = LogSigner::from_pkcs8(&key).map_err(|e| e.to_string())?;
    let manifest_signer = LogSigner::from_pkcs8(&key).map_err(|e| e.to_string())?;
    tracing::info!(public_key = %hex::encode(signer.public_key()), "signing tree heads");
    let witness = match witness {
        Some(w) => {
            let (namespace, name) = w
                .split_once('/')
                .ok_or_else(|| format!("--witness {w}: expected NAMESPACE/NAME"))?;
            Some(Witness {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
        }
        None => None,
    };
    if let Some(h) = &head_file {
        if h.starts_with(&data_dir) {
            return Err(format!(
                "--head-file {} is inside the data directory; keep it on other storage",
                h.display()
            ));
        }
    }
    if segment_bytes < 4096 {
        return Err("--segment-bytes must be at least 4096".into());
    }
    let anchor = Arc::new(Anchor::new(signer.public_key(), head_file).map_err(|e| e.to_string())?);
    let log = Log::open(&data_dir, LogOptions { segment_bytes }).map_err(|e| e.to_string())?;
    let report = log.open_report();
    tracing::info!(
        entries = report.entries,
        pruned = report.pruned,
        repaired_tail = report.repaired_tail,
        "audit log open"
    );
    let log = Arc::new(Mutex::new(log));
    let tls = Arc::new(tls_config(&tls_cert, &tls_key)?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listen on {listen}: {e}"))?;
    tracing::info!(%listen, "audit service listening");
    let mut service = AuditService::new(client.clone(), log.clone())
        .with_anchor(anchor.clone())
        .with_manifest_signer(manifest_signer)
        .with_injection_scope(InjectionScope {
            namespace_labels: injection_namespace_labels.into_iter().collect(),
            excluded_namespaces: injection_excluded_namespaces,
        });
    if let Some(w) = &witness {
        service = service.with_witness(w.clone());
    }
    let retention_task = witness.clone().map(|w| {
        tokio::spawn(run_retention(
            client.clone(),
            w,
            log.clone(),
            signer.public_key().to_vec(),
            Some(anchor.clone()),
            shutdown_signal(),
        ))
    });
    let signer_task = tokio::spawn(run_anchored_signer(
        log,
        signer,
        Duration::from_millis(sign_every_ms),
        Some(client),
        witness,
        anchor,
        shutdown_signal(),
    ));
    serve_tls(listener, tls, service.router(), shutdown_signal()).await;
    signer_task.abort();
    if let Some(t) = retention_task {
        t.abort();
    }
    Ok(())
}

/// Key of the signing key in its Secret.
const SIGNING_KEY_FIELD: &str = "ed25519.pk8";

/// Read the signing key from a Secret, creating the Secret with a new key when it is missing.
/// The public key is also stored (`ed25519.pub`, hex) for auditors.
async fn signing_key_from_secret(client: &kube::Client, secret: &str) -> Result<Vec<u8>, String> {
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::ByteString;
    use kube::api::{Api, PostParams};

    let (namespace, name) = secret
        .split_once('/')
        .ok_or_else(|| format!("--signing-key-secret {secret}: expected NAMESPACE/NAME"))?;
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Some(existing) = api
        .get_opt(name)
        .await
        .map_err(|e| format!("read Secret {secret}: {e}"))?
    {
        return existing
            .data
            .and_then(|mut d| d.remove(SIGNING_KEY_FIELD))
            .map(|b| b.0)
            .ok_or_else(|| format!("Secret {secret} has no key {SIGNING_KEY_FIELD}"));
    }
    let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .map_err(|e| format!("key generation: {e}"))?;
    let public = LogSigner::from_pkcs8(doc.as_ref()).map_err(|e| e.to_string())?;
    let mut s = Secret::default();
    s.metadata.name = Some(name.to_owned());
    s.data = Some(
        [
            (
                SIGNING_KEY_FIELD.to_owned(),
                ByteString(doc.as_ref().to_vec()),
            ),
            (
                "ed25519.pub".to_owned(),
                ByteString(hex::encode(public.public_key()).into_bytes()),
            ),
        ]
        .into(),
    );
    match api.create(&PostParams::default(), &s).await {
        Ok(_) => {
            tracing::info!(secret, "created a new audit signing key");
            Ok(doc.as_ref().to_vec())
        }
        // Another replica created it first: use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            Box::pin(signing_key_from_secret(client, secret)).await
        }
        Err(e) => Err(format!("create Secret {secret}: {e}")),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Serve(args) => tokio::runtime::Runtime::new()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(serve(*args))),
        Cmd::Keygen { file } => {
            let rng = ring::rand::SystemRandom::new();
            ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|e| format!("key generation: {e}"))
                .and_then(|doc| {
                    std::fs::write(&file, doc.as_ref())
                        .map_err(|e| format!("{}: {e}", file.display()))?;
                    let signer = LogSigner::from_pkcs8(doc.as_ref()).map_err(|e| e.to_string())?;
                    println!("{}", hex::encode(signer.public_key()));
                    Ok(())
                })
        }
        Cmd::Verify { dir, public_key } => read_public_key(&public_key).and_then(|key| {
            verify_log(&dir, &key, &[])
                .map(|v| {
                    println!(
                        "verified {} entries against {} signed tree heads",
                        v.entries, v.heads
                    );
                })
                .map_err(|e| format!("verification failed: {e}"))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis-audit: {e}");
            ExitCode::FAILURE
        }
    }
}
