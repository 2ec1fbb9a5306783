//! Portcullis sidecar: the data plane. A PostgreSQL wire proxy that decides every statement
//! against the guardrails of its policies, records it durably in an audit spool before it is
//! forwarded, and reaches the server with a credential the agent never sees.
//!
//! ```no_run
//! # async fn demo(config: portcullis_crds::SidecarConfig) -> Result<(), portcullis_sidecar::StartError> {
//! let options = portcullis_sidecar::config::Options::service_account("shop", "agent");
//! let sidecar = portcullis_sidecar::start(config, options).await?;
//! println!("serving on {:?}", sidecar.addr("shop-db"));
//! sidecar.shutdown().await;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod approval;
pub mod audit;
pub mod config;
pub mod identity;
pub mod kube;
pub mod masking;
pub mod metrics;
pub mod policy;
pub mod postgres;
pub mod reload;
pub mod runtime;
pub mod shell;
pub mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use portcullis_crds::protected_resource::ResourceType;
use portcullis_crds::sidecar_config::{ResourceConfig, SidecarConfig};
use rand::Rng;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::audit::ship::{Shipper, ShipperError, ShipperOptions, UnavailablePolicies};
use crate::audit::spool::{Spool, SpoolError};
use crate::config::{ConfigError, Options};
use crate::metrics::Metrics;
use crate::runtime::{Resource, Shared};
use crate::workers::Workers;

/// Why the sidecar could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The audit spool cannot be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The audit shipper cannot start.
    #[error(transparent)]
    Shipper(#[from] ShipperError),
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The API server client for approvals cannot be built.
    #[error("approvals: {0}")]
    Approvals(#[from] approval::ApprovalError),
    /// The session worker threads cannot be started.
    #[error("cannot start the session workers: {0}")]
    Workers(std::io::Error),
}

/// A running sidecar.
pub struct Sidecar {
    addrs: Vec<(String, SocketAddr)>,
    admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    spool: Spool,
    approvals: Option<Arc<approval::Approvals>>,
}

impl Sidecar {
    /// The local address a resource is served on.
    pub fn addr(&self, resource: &str) -> Option<SocketAddr> {
        self.addrs
            .iter()
            .find(|(n, _)| n == resource)
            .map(|(_, a)| *a)
    }

    /// The admin endpoint's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The audit spool.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Stop accepting connections and end every task. Statements held for approval end first,
    /// with an error that tells their clients they did not run.
    pub async fn shutdown(mut self) {
        if let Some(approvals) = &self.approvals {
            approvals.close(std::time::Duration::from_secs(2)).await;
        }
        let _ = self.stop.send(true);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        if let Err(e) = self.spool.write_later() {
            tracing::error!(error = %e, "audit records could not be written at shutdown");
        }
    }
}

/// Start serving every resource of the configuration.
pub async fn start(config: SidecarConfig, options: Options) -> Result<Sidecar, StartError> {
    config.check().map_err(ConfigError::from)?;
    let spool = Spool::open(&config.audit.spool_dir)?;
    let metrics = Metrics::new()?;
    let approvals =
        approval::Approvals::connect(&options.kube, &config.namespace, &config.audit.spool_dir)
            .await?
            .map(Arc::new);
    let shared = Shared {
        approvals: approvals.clone(),
        spool: spool.clone(),
        metrics: metrics.clone(),
        cancel: Default::default(),
        cache: Default::default(),
        identity: options.identity.clone(),
        limits: options.limits,
        oidc: options.oidc,
        process_nonce: format!("{:08x}", rand::rng().random::<u32>()),
        session_counter: Default::default(),
        code: Default::default(),
    };
    // Recordings a stopped sidecar left unfinished are finished, reported and then uploaded
    // like any other, marked as cut short.
    kube::recover_recordings(&spool, &config.audit.spool_dir, &options.identity);
    let workers = Arc::new(Workers::start(options.workers).map_err(StartError::Workers)?);
    tracing::debug!(workers = workers.len(), "session workers started");
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    if let Some(ship) = ShipperOptions::from_config(&config.audit)? {
        let shipper = Shipper::new(
            &config.audit.spool_dir,
            spool.clone(),
            metrics.clone(),
            ship.clone(),
            UnavailablePolicies::from_policies(&config.policies),
        )?;
        tasks.spawn(shipper.run(stopped.clone()));
        tasks.spawn(audit::recordings::run(
            config.audit.spool_dir.clone(),
            spool.clone(),
            options.identity.clone(),
            ship.clone(),
            metrics.clone(),
            stopped.clone(),
        ));
    } else {
        // Nothing will ship or acknowledge the records: the spool is the log of record, and
        // a bound on what awaits shipping would refuse every statement once reached.
        spool.set_log_of_record();
        tracing::info!("no audit service configured: the local spool is the log of record");
    }
    let mut addrs = Vec::new();
    let mut served_resources = Vec::new();
    for resource in &config.resources {
        if resource.r#type == ResourceType::Kubernetes {
            let proxy = Arc::new(kube::KubeProxy::new(&config, resource, &shared)?);
            let (listener, local) = listen_on(resource).await?;
            tracing::info!(resource = %resource.name, %local, upstream = %proxy.upstream(), "serving the Kubernetes API");
            addrs.push((resource.name.clone(), local));
            let (current, receiver) = watch::channel(proxy);
            served_resources.push(reload::Served {
                config: resource.clone(),
                current: reload::Current::Kubernetes(current),
            });
            tasks.spawn(kube::serve(receiver, listener, stopped.clone()));
            continue;
        }
        if resource.r#type != ResourceType::Postgres {
            tracing::warn!(resource = %resource.name, kind = resource.r#type.as_str(), "resource type not served by this sidecar version; skipped");
            continue;
        }
        let served = Arc::new(Resource::postgres(&config, resource, &shared)?);
        let (listener, local) = listen_on(resource).await?;
        tracing::info!(resource = %resource.name, %local, upstream = %format!("{}:{}", served.upstream.config.host, served.upstream.config.port), "serving PostgreSQL");
        addrs.push((resource.name.clone(), local));
        let (current, receiver) = watch::channel(served);
        served_resources.push(reload::Served {
            config: resource.clone(),
            current: reload::Current::Postgres(current),
        });
        tasks.spawn(accept_loop(
            listener,
            receiver,
            workers.clone(),
            stopped.clone(),
        ));
    }
    if let Some(path) = &options.config_path {
        tasks.spawn(reload::watch(
            path.clone(),
            config.clone(),
            served_resources,
            shared,
            stopped.clone(),
        ));
    }

    let ready = Arc::new(AtomicBool::new(false));
    let admin = TcpListener::bind(&config.admin_listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.admin_listen.clone(),
            source,
        })?;
    let admin_addr = admin.local_addr().map_err(|source| StartError::Listen {
        addr: config.admin_listen.clone(),
        source,
    })?;
    let router = admin::router(admin::AdminState {
        metrics,
        spool: spool.clone(),
        ready: ready.clone(),
    });
    let mut admin_stop = stopped.clone();
    tasks.spawn(async move {
        let serve = axum::serve(admin, router).with_graceful_shutdown(async move {
            let _ = admin_stop.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "admin endpoint failed");
        }
    });
    ready.store(true, Ordering::Relaxed);
    tracing::info!(%admin_addr, "admin endpoint (/metrics, /healthz, /readyz)");
    Ok(Sidecar {
        addrs,
        admin_addr,
        stop,
        tasks,
        spool,
        approvals,
    })
}

/// Start, serve until `shutdown` resolves, then stop.
pub async fn run(
    config: SidecarConfig,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let sidecar = start(config, options).await?;
    shutdown.await;
    sidecar.shutdown().await;
    Ok(())
}

/// Bind the local listener of a resource; returns it with its bound address.
async fn listen_on(resource: &ResourceConfig) -> Result<(TcpListener, SocketAddr), StartError> {
    let addr = format!("{}:{}", resource.listen_address, resource.listen_port);
    let bound = listen(&addr)
        .await
        .and_then(|l| l.local_addr().map(|local| (l, local)));
    bound.map_err(|source| StartError::Listen { addr, source })
}

/// Bind a listener with a backlog deep enough for bursts of connections.
async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let resolved = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr} does not resolve")))?;
    let socket = if resolved.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(resolved)?;
    socket.listen(4096)
}

/// Accept clients of one resource; each session runs on a session worker, with the
/// resource's configuration as it was when the client connected.
async fn accept_loop(
    listener: TcpListener,
    resource: watch::Receiver<Arc<Resource>>,
    workers: Arc<Workers>,
    mut stop: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let current = resource.borrow().clone();
                    // The socket moves to the worker's own I/O driver.
                    match tcp.into_std() {
                        Ok(socket) => {
                            sessions.spawn_on(
                                async move {
                                    match tokio::net::TcpStream::from_std(socket) {
                                        Ok(tcp) => postgres::session::serve(tcp, peer, current).await,
                                        Err(e) => tracing::warn!(error = %e, %peer, "cannot serve a connection"),
                                    }
                                },
                                workers.next(),
                            );
                        }
                        Err(e) => tracing::warn!(error = %e, %peer, "cannot serve a connection"),
                    }
                }
                Err(e) => {
                    // Out of file descriptors and similar: keep serving the open sessions.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = stop.changed() => if *stop.borrow() { break },
        }
    }
    sessions.abort_all();
}
