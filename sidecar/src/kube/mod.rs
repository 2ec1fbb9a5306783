//! The Kubernetes API proxy: the agent's in-cluster configuration points here (HTTPS on
//! loopback, with a certificate from the operator's CA), and every request is decided,
//! recorded and forwarded to the real API server with the pod's own service-account token,
//! which only the sidecar can read.
//!
//! - Requests are read like the API server reads them (verb, group, resource, namespace, name,
//!   subresource) and recorded before they are forwarded; the response code follows.
//! - Built-in rules refuse reads of secrets, port forwarding and proxying, token requests and
//!   ephemeral containers unless a policy allows them ([`decide`]).
//! - Pod, pod-template and ephemeral-container writes in the sidecar's namespace pass the
//!   injection webhook's checks before they are forwarded ([`pod_writes`]).
//! - `pods/exec` and `pods/attach` are read as kube-apiserver reads them ([`request`]); the
//!   command is analysed with the shell's semantics ([`crate::shell`]) and judged by the exec
//!   guardrails and allow-lists ([`decide`]); an approval-gated exec waits for an
//!   AccessRequest decision.
//! - Upgraded streams (WebSocket channel protocols and SPDY/3.1) are relayed and recorded in
//!   asciicast v2 ([`stream`], [`recording`]); the finished recording is named by its SHA-256,
//!   which the audit record carries, and uploaded to the audit service.

mod approval_objects;
pub mod decide;
pub mod line_editor;
mod pod_writes;
pub mod recording;
pub mod request;
pub mod screen;
mod spdy_dictionary;
pub mod stream;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_crds::audit::{
    ApprovalRecord, ApprovalStep, AuditEvent, AuthenticationRefused, Decision, ExecDetails,
    Identity, KubeRequestRecord, KubeResponseRecord, RecordingRecord, RecordingStart,
    RecordingUnavailable, RuleRef,
};
use portcullis_crds::gateway_policy::RecordingLimit;
use portcullis_crds::protected_resource::TlsMode;
use portcullis_crds::sidecar_config::{
    PolicyConfig, ResourceConfig, SidecarConfig, UpstreamConfig,
};
use portcullis_crds::GrantCovers;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::approval::{Approvals, Ask, GrantKey, Outcome};
use crate::audit::spool::{RecordContext, Spool};
use crate::config::ConfigError;
use crate::identity::Authenticator;
use crate::metrics::Metrics;
use crate::policy::fingerprint;
use crate::policy::guardrails::{Guardrails, Verdict, BUILTIN_POLICY};
use crate::postgres::tls::upstream_tls;
use crate::runtime::Shared;
use crate::shell::{self, Analysis};
use decide::ExecTarget;
use recording::{Header, OutputMasker, Recorder};
use request::{ExecParams, RequestInfo};
use stream::{StreamSession, WEBSOCKET_PROTOCOLS};

/// Where the in-cluster service-account files are.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

type Body = BoxBody<Bytes, hyper::Error>;
type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A served Kubernetes API resource.
pub struct KubeProxy {
    /// ProtectedResource name.
    pub name: String,
    namespace: String,
    policies: Vec<PolicyConfig>,
    auth: Option<Authenticator>,
    allow_remote_clients: bool,
    base: String,
    client: HttpClient,
    token_file: PathBuf,
    acceptor: TlsAcceptor,
    spool: Spool,
    spool_dir: PathBuf,
    metrics: Metrics,
    identity: Identity,
    approvals: Option<Arc<Approvals>>,
    session_counter: Arc<AtomicU64>,
    process_nonce: String,
    masker: Arc<OutputMasker>,
    /// Largest part of a recording.
    recording_part_bytes: u64,
    pod_writes: pod_writes::PodWriteGuard,
}

fn invalid(resource: &str, what: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid(format!("resource {resource}: {what}"))
}

/// The API server the pod itself would talk to: its service environment and CA.
fn in_cluster() -> Option<UpstreamConfig> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT")
        .ok()?
        .parse()
        .ok()?;
    Some(UpstreamConfig {
        host,
        port,
        database: None,
        tls_mode: TlsMode::VerifyFull,
        ca_file: Some(PathBuf::from(format!("{SERVICE_ACCOUNT_DIR}/ca.crt"))),
        server_name: None,
    })
}

fn server_tls(resource: &ResourceConfig) -> Result<TlsAcceptor, ConfigError> {
    let files = resource.server_tls.as_ref().ok_or_else(|| {
        invalid(
            &resource.name,
            "a kubernetes resource needs serverTls (the proxy's serving certificate)",
        )
    })?;
    let certs = CertificateDer::pem_file_iter(&files.cert_file)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            invalid(
                &resource.name,
                format!("{}: {e}", files.cert_file.display()),
            )
        })?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| invalid(&resource.name, format!("{}: {e}", files.key_file.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&resource.name, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(&resource.name, e))?;
    // HTTP/1.1 only: upgrades (exec, attach) are HTTP/1.1, and clients fall back to it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl KubeProxy {
    /// Build the proxy of a `kubernetes` resource.
    pub fn new(
        config: &SidecarConfig,
        resource: &ResourceConfig,
        shared: &Shared,
    ) -> Result<Self, ConfigError> {
        let upstream = resource
            .upstream
            .clone()
            .or_else(in_cluster)
            .ok_or_else(|| {
                invalid(
                    &resource.name,
                    "no upstream, and KUBERNETES_SERVICE_HOST/PORT are not set",
                )
            })?;
        if upstream.tls_mode != TlsMode::VerifyFull {
            return Err(invalid(
                &resource.name,
                "the Kubernetes API is reached over verified TLS only (tls mode verify-full): the sidecar's service-account token must never go to a server it cannot verify",
            ));
        }
        let tls = upstream_tls(&upstream)
            .map_err(|e| invalid(&resource.name, e))?
            .ok_or_else(|| invalid(&resource.name, "TLS settings missing"))?;
        // HTTP/1.1 only (the connector sets ALPN): upgrades are HTTP/1.1.
        let client_config = (*tls.config).clone();
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_config)
            .https_only();
        let connector = match &upstream.server_name {
            Some(name) => {
                let name = rustls_pki_types::ServerName::try_from(name.clone())
                    .map_err(|e| invalid(&resource.name, e))?;
                builder
                    .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
                    .enable_http1()
                    .build()
            }
            None => builder.enable_http1().build(),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let host = if upstream.host.contains(':') {
            format!("[{}]", upstream.host)
        } else {
            upstream.host.clone()
        };
        let policies: Vec<PolicyConfig> = config.policies_for(resource).cloned().collect();
        let policies =
            crate::identity::bind_policies(policies).map_err(|e| invalid(&resource.name, e))?;
        let auth = Authenticator::for_policies(&policies, &config.namespace, shared.oidc)
            .map_err(|e| invalid(&resource.name, e))?;
        let masker = OutputMasker::new(&policies).map_err(|e| invalid(&resource.name, e))?;
        Ok(KubeProxy {
            name: resource.name.clone(),
            namespace: config.namespace.clone(),
            policies,
            auth,
            allow_remote_clients: resource.allow_remote_clients,
            base: format!("https://{host}:{}", upstream.port),
            client,
            token_file: resource
                .token_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{SERVICE_ACCOUNT_DIR}/token"))),
            acceptor: server_tls(resource)?,
            spool: shared.spool.clone(),
            spool_dir: config.audit.spool_dir.clone(),
            metrics: shared.metrics.clone(),
            identity: shared.identity.clone(),
            approvals: shared.approvals.clone(),
            session_counter: shared.session_counter.clone(),
            process_nonce: shared.process_nonce.clone(),
            masker: Arc::new(masker),
            recording_part_bytes: shared
                .limits
                .max_recording_part_bytes
                .min(recording::MAX_RECORDING_BYTES as u64),
            pod_writes: pod_writes::PodWriteGuard::new(config, &shared.identity),
        })
    }

    /// The upstream base URL.
    pub fn upstream(&self) -> &str {
        &self.base
    }
}

/// Accept TLS connections and serve each with HTTP/1.1 (with upgrades); each connection runs
/// with the proxy's configuration as it was when the connection was accepted.
pub async fn serve(
    proxy: watch::Receiver<Arc<KubeProxy>>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let current = proxy.borrow().clone();
                    connections.spawn(connection(current, tcp, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.changed() => if *stop.borrow() { break },
        }
    }
    connections.abort_all();
}

/// One client connection: a session of the audit log.
struct Session {
    id: String,
    requests: AtomicU64,
    peer: SocketAddr,
}

async fn connection(proxy: Arc<KubeProxy>, tcp: tokio::net::TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(Duration::from_secs(10), proxy.acceptor.accept(tcp)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            proxy.metrics.protocol_errors.inc();
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    proxy.metrics.connections_total.inc();
    proxy.metrics.connections_active.inc();
    let n = proxy.session_counter.fetch_add(1, Ordering::Relaxed) + 1;
    let session = Arc::new(Session {
        id: format!("{}-{n}", proxy.process_nonce),
        requests: AtomicU64::new(0),
        peer,
    });
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let proxy = proxy.clone();
        let session = session.clone();
        async move { Ok::<_, Infallible>(handle(proxy, session, req).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades()
        .await
    {
        tracing::debug!(%peer, error = %e, "Kubernetes API client connection ended");
    }
}

/// A Kubernetes `Status` response.
fn status(
    code: StatusCode,
    reason: &str,
    message: &str,
    info: Option<&RequestInfo>,
) -> Response<Body> {
    let mut body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some(info) = info {
        body["details"] =
            serde_json::json!({"name": info.name, "group": info.api_group, "kind": info.resource});
    }
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

struct Decided {
    verdict: Verdict,
    exec: Option<(ExecParams, Analysis)>,
}

impl KubeProxy {
    fn record(&self, ctx: &RecordContext, event: AuditEvent) -> Option<u64> {
        match self.spool.append(ctx, event) {
            Ok(seq) => Some(seq),
            Err(e) => {
                tracing::error!(error = %e, "cannot write an audit record");
                None
            }
        }
    }

    fn masked_words(&self, words: &[String]) -> Vec<String> {
        words.iter().map(|w| self.masker.mask_text(w)).collect()
    }

    /// A text bound for an audit record (a reason, an error) with every value masked.
    fn masked(&self, text: Option<String>) -> Option<String> {
        text.map(|t| self.masker.mask_text(&t))
    }

    /// The sidecar's own service-account token, read afresh (the kubelet rotates it).
    async fn token(&self) -> Result<String, String> {
        tokio::fs::read_to_string(&self.token_file)
            .await
            .map(|t| t.trim().to_owned())
            .map_err(|e| {
                format!(
                    "cannot read the service-account token {}: {e}",
                    self.token_file.display()
                )
            })
    }

    /// The labels of a pod, read with the sidecar's token; `None` when they cannot be read.
    async fn pod_labels(&self, namespace: &str, pod: &str) -> Option<BTreeMap<String, String>> {
        let token = self.token().await.ok()?;
        let request = Request::get(format!(
            "{}/api/v1/namespaces/{namespace}/pods/{pod}",
            self.base
        ))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::ACCEPT, "application/json")
        .body(empty())
        .ok()?;
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
            .await
            .ok()?
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = response.into_body().collect().await.ok()?.to_bytes();
        let pod: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let labels = pod["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        Some(
            labels
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_owned())))
                .collect(),
        )
    }

    async fn decide(
        &self,
        guardrails: &Guardrails,
        info: &RequestInfo,
        query: Option<&str>,
    ) -> Decided {
        let stream = info.api_group.is_empty()
            && info.resource == "pods"
            && matches!(info.subresource.as_str(), "exec" | "attach");
        if !stream {
            let verdict = decide::decide_builtin(guardrails, info).unwrap_or_else(Verdict::allow);
            return Decided {
                verdict,
                exec: None,
            };
        }
        let params = ExecParams::from_query(query);
        let attach = info.subresource == "attach";
        let analysis = if attach {
            let mut a = Analysis {
                commands: vec![shell::Command {
                    argv: vec![shell::Word::Known("attach".into())],
                    own: 1,
                    ..Default::default()
                }],
                unproven: Vec::new(),
            };
            if params.stdin {
                a.unproven.push(shell::Unproven {
                    word: "stdin".into(),
                    why: "attach with standard input types into the container's running process"
                        .into(),
                });
            }
            a
        } else {
            shell::analyse(&params.command, params.stdin)
        };
        let wants_labels = guardrails.policies().iter().any(|p| {
            p.guardrails.iter().any(|g| !g.exec_pod_labels.is_empty())
                || p.exec
                    .iter()
                    .flat_map(|e| &e.allow)
                    .any(|a| !a.pod_labels.is_empty())
        });
        let labels = if wants_labels {
            self.pod_labels(&info.namespace, &info.name).await
        } else {
            None
        };
        let target = ExecTarget {
            namespace: info.namespace.clone(),
            pod: info.name.clone(),
            container: params.container.clone(),
            labels,
        };
        let verdict = decide::decide_exec(guardrails, &target, &analysis, attach);
        Decided {
            verdict,
            exec: Some((params, analysis)),
        }
    }
}

/// Headers that belong to one connection and are not forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_upgrade(headers: &HeaderMap) -> Option<String> {
    let connection = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if !connection {
        return None;
    }
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Count and record a request refused at authentication, under the workload's identity.
fn refuse_authentication(proxy: &KubeProxy, session: &Session, reason: String) {
    proxy.metrics.auth_failures.inc();
    let ctx = RecordContext::new(
        session.id.clone(),
        proxy.identity.clone(),
        proxy.name.clone(),
    );
    proxy.record(
        &ctx,
        AuditEvent::AuthenticationRefused(AuthenticationRefused {
            client_address: session.peer.to_string(),
            reason,
        }),
    );
}

async fn handle(
    proxy: Arc<KubeProxy>,
    session: Arc<Session>,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let request_id = session.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let token = bearer(req.headers()).map(str::to_owned);
    if !crate::identity::is_loopback(&session.peer) && !proxy.allow_remote_clients {
        let e = crate::identity::AuthError::RemoteClient {
            peer: session.peer.to_string(),
        };
        refuse_authentication(&proxy, &session, e.to_string());
        return status(StatusCode::FORBIDDEN, "Forbidden", &e.to_string(), None);
    }
    // Every request is authenticated on its own: an expired token stops working at once.
    let (identity, identity_source) = match &proxy.auth {
        Some(auth) => match auth.resolve(&proxy.identity, token.as_deref()).await {
            Ok((identity, source)) => (identity, Some(source)),
            Err(e) => {
                refuse_authentication(&proxy, &session, proxy.masker.mask_text(&e.to_string()));
                return status(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    &e.to_string(),
                    None,
                );
            }
        },
        None => (proxy.identity.clone(), None),
    };
    let ctx = RecordContext::new(session.id.clone(), identity.clone(), proxy.name.clone());
    let info = RequestInfo::resolve(req.method(), req.uri().path(), req.uri().query());
    let guardrails = Guardrails::for_identity(proxy.policies.clone(), &identity, &proxy.namespace);
    let mut decided = proxy.decide(&guardrails, &info, req.uri().query()).await;
    if req
        .headers()
        .keys()
        .any(|k| k.as_str().starts_with("impersonate-"))
    {
        decided.verdict = Verdict::builtin("impersonation", "impersonation headers are refused: requests run as this pod's service account (rule builtin/impersonation)".into());
    }
    if let Some(refused) = approval_objects::refusal(req.method(), req.uri().path()) {
        decided.verdict = refused;
    }
    if let Some(message) = pod_writes::managed_object_write(&info) {
        decided.verdict = Verdict::builtin(
            "operator-objects",
            format!("{message} (rule builtin/operator-objects)"),
        );
    }
    // Pod and pod-template writes pass the injection webhook's checks here too.
    let mut req = req.map(BodyExt::boxed);
    if decided.verdict.forwards() && proxy.pod_writes.applies(&info) {
        let (screened, verdict) = proxy.pod_writes.screen(&info, req).await;
        req = screened;
        if let Err(message) = verdict {
            decided.verdict =
                Verdict::builtin("pod-guard", format!("{message} (rule builtin/pod-guard)"));
        }
    }
    let upgrade = is_upgrade(req.headers());
    if let Some(u) = &upgrade {
        let known = u.eq_ignore_ascii_case("websocket") || u.eq_ignore_ascii_case("SPDY/3.1");
        if !known || decided.exec.is_none() {
            decided.verdict = Verdict::builtin(
                "unknown-upgrade",
                format!(
                    "upgrade to {u} on {} is not relayed (rule builtin/unknown-upgrade)",
                    info.full_resource()
                ),
            );
        }
    }
    if decided.verdict.forwards() {
        if let Err(e) = proxy.spool.check_limit(guardrails.spool_limit()) {
            decided.verdict = Verdict::builtin("audit-unavailable", format!("request refused because the audit log cannot record it: {e} (rule builtin/audit-unavailable)"));
        }
    }
    let (lawful_basis, purpose) = guardrails.policy_context(decided.verdict.rule.as_ref());
    let exec_details = decided.exec.as_ref().map(|(p, a)| ExecDetails {
        container: p.container.clone(),
        command: proxy.masked_words(&p.command),
        analysed: proxy.masked_words(&a.lines()),
        unanalysable: proxy.masked(a.first_unproven()),
        stdin: p.stdin,
        tty: p.tty,
    });
    let mut record = KubeRequestRecord {
        request_id,
        method: req.method().as_str().to_owned(),
        verb: info.verb.clone(),
        api_group: info.api_group.clone(),
        resource: info.resource.clone(),
        subresource: info.subresource.clone(),
        namespace: info.namespace.clone(),
        name: info.name.clone(),
        path: info.path.clone(),
        exec: exec_details,
        decision: decided.verdict.decision,
        rule: decided.verdict.rule.clone(),
        reason: proxy.masked(decided.verdict.reason.clone()),
        lawful_basis,
        purpose,
        access_request: None,
        identity_source,
    };
    let verb_class = if decided.exec.is_some() {
        info.subresource.as_str()
    } else {
        info.verb.as_str()
    };
    let decision_label = |d: Decision| match d {
        Decision::Allow => "allow",
        Decision::Audit => "audit",
        Decision::Deny => "deny",
        Decision::RequireApproval => "requireApproval",
    };
    proxy
        .metrics
        .kube_requests
        .with_label_values(&[verb_class, decision_label(decided.verdict.decision)])
        .inc();

    match decided.verdict.decision {
        Decision::Deny => {
            proxy.record(&ctx, AuditEvent::KubeRequest(record));
            let message = decided.verdict.reason.unwrap_or_else(|| "refused".into());
            return status(StatusCode::FORBIDDEN, "Forbidden", &message, Some(&info));
        }
        Decision::RequireApproval => {
            let Some((params, _)) = decided.exec.as_ref() else {
                proxy.record(&ctx, AuditEvent::KubeRequest(record));
                return status(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "approval is required",
                    Some(&info),
                );
            };
            match approve(
                &proxy,
                &ctx,
                &guardrails,
                &decided.verdict,
                &info,
                params,
                request_id,
            )
            .await
            {
                Ok(name) => record.access_request = Some(name),
                Err(message) => {
                    record.decision = Decision::Deny;
                    record.reason = proxy.masked(Some(message.clone()));
                    proxy.record(&ctx, AuditEvent::KubeRequest(record));
                    return status(StatusCode::FORBIDDEN, "Forbidden", &message, Some(&info));
                }
            }
        }
        Decision::Allow | Decision::Audit => {}
    }

    // Write-ahead: the record is on disk before anything that may change the cluster or run
    // a command is forwarded; reads are made durable by the spool's group commit.
    let changes = !matches!(info.verb.as_str(), "get" | "list" | "watch") || decided.exec.is_some();
    let exec = decided.exec.take();
    let Some(seq) = proxy.record(&ctx, AuditEvent::KubeRequest(record)) else {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the audit log cannot record this request",
            Some(&info),
        );
    };
    if changes {
        proxy.metrics.audit_sync_waits.inc();
        if let Err(e) = proxy.spool.wait_durable(seq).await {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                &format!("the audit log cannot record this request: {e}"),
                Some(&info),
            );
        }
    }

    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let forwarded = match forward_request(&proxy, req, upgrade.is_some()).await {
        Ok(r) => r,
        Err(message) => {
            proxy.record(
                &ctx,
                AuditEvent::KubeResponse(KubeResponseRecord {
                    request_id,
                    code: 502,
                    duration_micros: micros(started),
                }),
            );
            return status(
                StatusCode::BAD_GATEWAY,
                "ServiceUnavailable",
                &message,
                Some(&info),
            );
        }
    };
    let mut response = forwarded;
    proxy.record(
        &ctx,
        AuditEvent::KubeResponse(KubeResponseRecord {
            request_id,
            code: response.status().as_u16(),
            duration_micros: micros(started),
        }),
    );
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let (Some(client_upgrade), Some((params, _))) = (client_upgrade, exec) else {
            return status(
                StatusCode::BAD_GATEWAY,
                "InternalError",
                "the API server switched protocols unexpectedly",
                Some(&info),
            );
        };
        let spdy = upgrade
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case("SPDY/3.1"));
        let sub = response
            .headers()
            .get(if spdy {
                "x-stream-protocol-version"
            } else {
                "sec-websocket-protocol"
            })
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let protocol = if spdy { format!("SPDY/3.1+{sub}") } else { sub };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let (parts, _) = response.into_parts();
        let proxy2 = proxy.clone();
        tokio::spawn(async move {
            let (client_io, upstream_io) = match tokio::join!(client_upgrade, upstream_upgrade) {
                (Ok(c), Ok(u)) => (c, u),
                (c, u) => {
                    tracing::warn!(client = ?c.err(), upstream = ?u.err(), "exec upgrade failed");
                    return;
                }
            };
            relay(
                proxy2,
                ctx,
                info,
                params,
                protocol,
                spdy,
                request_id,
                client_io,
                upstream_io,
            )
            .await;
        });
        return Response::from_parts(parts, empty());
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // A watch (or any long response) ends when the rights of the token that asked for it do.
    let deadline = proxy.auth.as_ref().and_then(|a| a.deadline(&identity));
    let key = proxy.auth.as_ref().and_then(|a| a.signing_key(&identity));
    if deadline.is_none() && key.is_none() {
        return Response::from_parts(parts, body.boxed());
    }
    Response::from_parts(
        parts,
        crate::identity::expiry::UntilDeadline::new(body, deadline, identity.clone(), key).boxed(),
    )
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
}

/// Forward the request with the sidecar's credentials.
async fn forward_request(
    proxy: &KubeProxy,
    req: Request<Body>,
    upgrade: bool,
) -> Result<Response<Incoming>, String> {
    let token = proxy.token().await?;
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = format!("{}{path}", proxy.base)
        .parse()
        .map_err(|e| format!("cannot build the upstream URL: {e}"))?;
    let upgrade_value = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    crate::identity::http::strip_identity_headers(&mut parts.headers);
    parts.headers.remove(header::HOST);
    parts.headers.remove(header::AUTHORIZATION);
    let auth = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the service-account token is not a valid header value".to_owned())?;
    parts.headers.insert(header::AUTHORIZATION, auth);
    if upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Some(u) = upgrade_value {
            parts.headers.insert(header::UPGRADE, u);
        }
        // Offer only the WebSocket subprotocols whose framing the recorder reads.
        let offered: Vec<String> = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_owned())
            .filter(|p| WEBSOCKET_PROTOCOLS.contains(&p.as_str()))
            .collect();
        if parts.headers.contains_key(header::SEC_WEBSOCKET_PROTOCOL) {
            parts.headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
            if offered.is_empty() {
                return Err(format!(
                    "none of the offered WebSocket subprotocols can be recorded; supported: {}",
                    WEBSOCKET_PROTOCOLS.join(", ")
                ));
            }
            if let Ok(v) = HeaderValue::from_str(&offered.join(", ")) {
                parts.headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
            }
        }
        // SPDY clients name their stream protocols the same way; keep those the relay reads.
        let spdy: Vec<HeaderValue> = parts
            .headers
            .get_all(HeaderName::from_static("x-stream-protocol-version"))
            .iter()
            .filter(|v| {
                v.to_str()
                    .is_ok_and(|s| WEBSOCKET_PROTOCOLS.contains(&s.trim()))
            })
            .cloned()
            .collect();
        if parts.headers.contains_key("x-stream-protocol-version") {
            parts.headers.remove("x-stream-protocol-version");
            for v in spdy {
                parts
                    .headers
                    .append(HeaderName::from_static("x-stream-protocol-version"), v);
            }
        }
    }
    let request = Request::from_parts(parts, body);
    proxy.client.request(request).await.map_err(|e| {
        format!(
            "cannot reach the Kubernetes API server at {}: {e}",
            proxy.base
        )
    })
}

/// Relay and record an upgraded exec or attach stream.
#[allow(clippy::too_many_arguments)]
async fn relay(
    proxy: Arc<KubeProxy>,
    ctx: RecordContext,
    info: RequestInfo,
    params: ExecParams,
    protocol: String,
    spdy: bool,
    request_id: u64,
    client: hyper::upgrade::Upgraded,
    upstream: hyper::upgrade::Upgraded,
) {
    let target = format!("{}/{}/{}", info.namespace, info.name, params.container);
    let command = if info.subresource == "attach" {
        "attach".to_owned()
    } else {
        shell::join(params.command.iter().map(String::as_str))
    };
    let name = format!("{}-{request_id}", ctx.session_id());
    let header = Header {
        command: &command,
        title: &target,
        size: (80, 24),
        session: ctx.session_id(),
        request_id,
        resource: &proxy.name,
        protocol: &protocol,
    };
    // The start is in the log before any of the stream is relayed: a recording that never
    // finishes is still known, and a restarted sidecar finishes it (see `recording::recover`).
    let started = proxy.record(
        &ctx,
        AuditEvent::RecordingStarted(RecordingStart {
            request_id,
            name: name.clone(),
            protocol: protocol.clone(),
            target: target.clone(),
        }),
    );
    if started.is_none() {
        tracing::error!("cannot record the start of a recording; exec stream closed");
        return;
    }
    let on_part: recording::PartSink = {
        let proxy = proxy.clone();
        let ctx = ctx.clone();
        let (protocol, target, name) = (protocol.clone(), target.clone(), name.clone());
        Box::new(move |done: recording::Finished| {
            proxy.record(
                &ctx,
                AuditEvent::Recording(recording_record(
                    request_id, &done, &protocol, &target, &name, None,
                )),
            );
        })
    };
    let mut recorder = match Recorder::with_limit(
        &proxy.spool_dir,
        &name,
        &header,
        proxy.masker.clone(),
        on_part,
        proxy.recording_part_bytes,
    ) {
        Ok(r) => r,
        Err(e) => {
            // No recording, no session (fail closed): both ends are dropped.
            tracing::error!(error = %e, "cannot start a recording; exec stream closed");
            proxy.record(
                &ctx,
                AuditEvent::RecordingUnavailable(RecordingUnavailable {
                    sha256: String::new(),
                    reason: format!(
                        "recording {name} could not be started, so the session was closed: {e}"
                    ),
                }),
            );
            return;
        }
    };
    recorder.set_end_at_limit(
        proxy
            .policies
            .iter()
            .any(|p| p.kubernetes.recording_limit == RecordingLimit::EndSession),
    );
    let live = proxy
        .policies
        .iter()
        .any(|p| p.kubernetes.mask_live_output)
        .then(|| stream::LiveMask::new(proxy.masker.clone()));
    let mut session = StreamSession::new(recorder, live);
    proxy
        .metrics
        .exec_sessions
        .with_label_values(&[if spdy { "spdy" } else { "websocket" }])
        .inc();
    // The stream lasts no longer than the token of the person who opened it.
    let deadline = proxy.auth.as_ref().and_then(|a| a.deadline(ctx.identity()));
    let key = proxy
        .auth
        .as_ref()
        .and_then(|a| a.signing_key(ctx.identity()));
    let relayed = async {
        if spdy {
            stream::relay_spdy(client, upstream, &mut session).await;
        } else {
            let sub = protocol.as_str();
            stream::relay_websocket(client, upstream, sub, &mut session).await;
        }
    };
    tokio::select! {
        () = relayed => {}
        reason = crate::identity::expiry::until(deadline, ctx.identity().clone(), key) => {
            tracing::info!(session = %ctx.session_id(), request_id, %reason, "closed an exec stream whose token expired");
        }
    }
    let exit_code = session.exit_code;
    match session.recorder.finish() {
        Ok(done) => {
            tracing::info!(session = %ctx.session_id(), request_id, sha256 = %done.sha256, events = done.events, "exec session recorded");
            proxy.record(
                &ctx,
                AuditEvent::Recording(recording_record(
                    request_id, &done, &protocol, &target, &name, exit_code,
                )),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot finish a recording");
            proxy.record(
                &ctx,
                AuditEvent::RecordingUnavailable(RecordingUnavailable {
                    sha256: String::new(),
                    reason: proxy
                        .masker
                        .mask_text(&format!("recording {name} could not be finished: {e}")),
                }),
            );
        }
    }
}

/// The record of a finished recording (or part).
fn recording_record(
    request_id: u64,
    done: &recording::Finished,
    protocol: &str,
    target: &str,
    name: &str,
    exit_code: Option<i32>,
) -> RecordingRecord {
    RecordingRecord {
        request_id,
        sha256: done.sha256.clone(),
        bytes: done.bytes,
        events: done.events,
        duration_millis: done.duration_millis,
        protocol: protocol.to_owned(),
        target: target.to_owned(),
        exit_code: if done.continued { None } else { exit_code },
        masked: done.masked.clone(),
        name: name.to_owned(),
        part: done.part,
        continued: done.continued,
        cut_short: done.cut_short.clone(),
    }
}

/// Finish the recordings a stopped sidecar left (cut short) and record each.
pub fn recover_recordings(spool: &Spool, spool_dir: &std::path::Path, identity: &Identity) {
    for r in recording::recover(spool_dir) {
        tracing::warn!(recording = %r.name, sha256 = %r.finished.sha256, "finished a recording cut short by a sidecar stop");
        let ctx = RecordContext::new(r.session.clone(), identity.clone(), r.resource.clone());
        let record = recording_record(
            r.request_id,
            &r.finished,
            &r.protocol,
            &r.target,
            &r.name,
            None,
        );
        if let Err(e) = spool.append(&ctx, AuditEvent::Recording(record)) {
            tracing::error!(error = %e, "cannot record a recovered recording");
        }
    }
}

/// Obtain an approval for an exec: a live grant, or a new AccessRequest's decision.
#[allow(clippy::too_many_arguments)]
async fn approve(
    proxy: &KubeProxy,
    ctx: &RecordContext,
    guardrails: &Guardrails,
    verdict: &Verdict,
    info: &RequestInfo,
    params: &ExecParams,
    request_id: u64,
) -> Result<String, String> {
    let Some(approvals) = proxy.approvals.clone() else {
        return Err("exec requires approval, but this sidecar runs without a connection to the Kubernetes API for approvals".into());
    };
    let rule = verdict.rule.clone().unwrap_or(RuleRef {
        policy: BUILTIN_POLICY.into(),
        rule: "require-approval".into(),
    });
    let settings = guardrails
        .policies()
        .iter()
        .find(|p| p.name == rule.policy)
        .and_then(|p| p.approval.clone())
        .ok_or_else(|| {
            format!(
                "exec requires approval under policy {}, which has no approval settings",
                rule.policy
            )
        })?;
    let target = if params.container.is_empty() {
        format!("{}/{}", info.namespace, info.name)
    } else {
        format!("{}/{}/{}", info.namespace, info.name, params.container)
    };
    // The approver is shown, and the grant covers, the command as it will run; under a
    // guardrail with `grantCovers: shape`, its program and options with any operands, when
    // the command is one plain program (code, commands and scripts are granted by value).
    let opted = guardrails
        .policies()
        .iter()
        .find(|p| p.name == rule.policy)
        .and_then(|p| p.guardrails.iter().find(|g| g.name == rule.rule))
        .map_or(GrantCovers::Values, |g| g.grant_covers);
    let shape = (opted == GrantCovers::Shape)
        .then(|| shell::shape(&params.command, params.stdin))
        .flatten();
    let mut shown = match shape {
        Some(words) => crate::approval::exec_operation(words, target, GrantCovers::Shape),
        None => {
            crate::approval::exec_operation(params.command.clone(), target, GrantCovers::Values)
        }
    };
    shown.statement = Some(format!(
        "pods/{}{}{}",
        info.subresource,
        if params.stdin { " with stdin" } else { "" },
        if params.tty { " and a terminal" } else { "" }
    ));
    shown.fingerprint = shown.grant_fingerprint();
    let statement = format!(
        "{} {}: {}",
        info.subresource,
        shown.target.as_deref().unwrap_or_default(),
        shell::join(
            proxy
                .masked_words(&params.command)
                .iter()
                .map(String::as_str)
        )
    );
    let fp = fingerprint::of(&statement);
    let workload = &proxy.identity;
    let requester = crate::approval::requester(
        workload,
        ctx.identity(),
        Some(approvals.namespace().to_owned()),
    );
    let key = GrantKey {
        resource: proxy.name.clone(),
        service_account: requester.service_account.clone(),
        policy: rule.policy.clone(),
        rule: rule.rule.clone(),
        fingerprint: shown.fingerprint.clone(),
        scope: settings.grant_scope,
        session: ctx.session_id().to_owned(),
        grant_seconds: settings.grant_seconds,
        required_approvals: settings.required_approvals,
    };
    let step = |step, request: &str| ApprovalRecord {
        step,
        request: request.to_owned(),
        namespace: approvals.namespace().to_owned(),
        statement_id: Some(request_id),
        fingerprint: fp.clone(),
        rule: rule.clone(),
        decided_by: None,
        reason: None,
        justification: None,
        expires_at: None,
    };
    // A failed step says why, as the client is told.
    let failed = |message: &str, request: &str| ApprovalRecord {
        reason: proxy.masked(Some(message.to_owned())),
        ..step(ApprovalStep::Failed, request)
    };
    let unavailable = |e: &dyn std::fmt::Display| {
        format!("exec requires approval ({} of policy {}), but the approval service is unavailable: {e}", rule.rule, rule.policy)
    };
    match approvals.find_grant(&key).await {
        Ok(Some(grant)) => {
            proxy.record(
                ctx,
                AuditEvent::Approval(ApprovalRecord {
                    decided_by: Some(grant.decided_by.clone()),
                    ..step(ApprovalStep::Used, &grant.name)
                }),
            );
            return Ok(grant.name);
        }
        Ok(None) => {}
        Err(e) => {
            let message = unavailable(&e);
            proxy.record(ctx, AuditEvent::Approval(failed(&message, "")));
            return Err(message);
        }
    }
    let ask = Ask {
        key,
        requester,
        operation: shown,
        justification: None,
        timeout_seconds: settings.timeout_seconds,
        max_pending: settings.max_pending,
    };
    let name = match approvals.request(&ask).await {
        Ok((n, reused)) => {
            if !reused {
                proxy.record(ctx, AuditEvent::Approval(step(ApprovalStep::Requested, &n)));
            }
            n
        }
        Err(e) => {
            let message = unavailable(&e);
            proxy.record(ctx, AuditEvent::Approval(failed(&message, "")));
            return Err(message);
        }
    };
    tracing::info!(session = %ctx.session_id(), request = %name, rule = %rule.rule, "exec held for approval");
    let _holding = approvals.holding();
    let outcome = approvals
        .wait(
            &name,
            Duration::from_secs(settings.timeout_seconds),
            settings.grant_seconds,
            settings.required_approvals,
        )
        .await;
    match outcome {
        Ok(Outcome::Approved(grant)) => {
            proxy.record(
                ctx,
                AuditEvent::Approval(ApprovalRecord {
                    decided_by: Some(grant.decided_by.clone()),
                    reason: proxy.masked(Some(grant.reason.clone())),
                    expires_at: Some(format!("{:.0}", grant.expires_at)),
                    ..step(ApprovalStep::Approved, &name)
                }),
            );
            proxy.record(
                ctx,
                AuditEvent::Approval(ApprovalRecord {
                    decided_by: Some(grant.decided_by),
                    ..step(ApprovalStep::Used, &name)
                }),
            );
            Ok(name)
        }
        Ok(Outcome::Denied { decided_by, reason }) => {
            proxy.record(
                ctx,
                AuditEvent::Approval(ApprovalRecord {
                    decided_by: Some(decided_by.clone()),
                    reason: proxy.masked(Some(reason.clone())),
                    ..step(ApprovalStep::Denied, &name)
                }),
            );
            Err(format!(
                "exec denied by {decided_by}: {reason} (AccessRequest {name})"
            ))
        }
        Ok(Outcome::TimedOut) => {
            let message = format!(
                "exec timed out waiting for approval (AccessRequest {name}, {}s); it was not run",
                settings.timeout_seconds
            );
            proxy.record(
                ctx,
                AuditEvent::Approval(ApprovalRecord {
                    reason: proxy.masked(Some(message.clone())),
                    ..step(ApprovalStep::TimedOut, &name)
                }),
            );
            Err(message)
        }
        Err(e) => {
            let message = unavailable(&e);
            proxy.record(ctx, AuditEvent::Approval(failed(&message, &name)));
            Err(message)
        }
    }
}
