//! The HTTPS server of the admission webhooks.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use portcullis_crds::ProtectedResource;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::certs::ReloadableCert;
use crate::inject::{self, InjectInput, SidecarSettings, CONFIG_HASH_ANNOTATION, CONFIG_MAP};
use crate::metrics::Metrics;

/// What the webhook handlers share: caches of the ProtectedResources and sidecar
/// ConfigMaps of every namespace, and a client for cache misses.
#[derive(Clone)]
pub struct WebhookState {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    resources: Store<ProtectedResource>,
    configs: Store<ConfigMap>,
    sidecar: SidecarSettings,
    metrics: Metrics,
    /// The operator's own API-server user: the only writer of AccessRequest status.
    operator_user: Option<String>,
}

impl WebhookState {
    /// Start the caches (as tasks on the current runtime, stopped when the returned
    /// [`JoinSet`] is dropped) and return the state once they are synced.
    pub async fn start(
        client: Client,
        sidecar: SidecarSettings,
        metrics: Metrics,
    ) -> (Self, JoinSet<()>) {
        let mut tasks = JoinSet::new();
        let (resources, writer) = reflector::store();
        let stream = watcher(
            Api::<ProtectedResource>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(crate::controller::slim)
        .reflect(writer);
        tasks.spawn(async move {
            stream.for_each(|_| futures::future::ready(())).await;
        });
        let (configs, writer) = reflector::store();
        let stream = watcher(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP}")),
        )
        .default_backoff()
        // Only the hash annotation is read here.
        .modify(|cm: &mut ConfigMap| {
            crate::controller::slim(cm);
            cm.data = None;
        })
        .reflect(writer);
        tasks.spawn(async move {
            stream.for_each(|_| futures::future::ready(())).await;
        });
        // The writers live in the tasks; ready fails only when a task ended.
        let _ = resources.wait_until_ready().await;
        let _ = configs.wait_until_ready().await;
        let operator_user = super::access_request::own_user(&client).await;
        let state = Self {
            inner: Arc::new(Inner {
                client,
                resources,
                configs,
                sidecar,
                metrics,
                operator_user,
            }),
        };
        (state, tasks)
    }

    async fn resources_in(
        &self,
        namespace: &str,
        wanted: Option<&str>,
    ) -> Result<Vec<ProtectedResource>, kube::Error> {
        let cached: Vec<ProtectedResource> = self
            .inner
            .resources
            .state_filter(|r| r.namespace().as_deref() == Some(namespace))
            .iter()
            .map(|r| (**r).clone())
            .collect();
        let complete = !cached.is_empty()
            && wanted.is_none_or(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .all(|n| cached.iter().any(|r| r.name_any() == n))
            });
        if complete {
            return Ok(cached);
        }
        // Cache miss (a resource created a moment ago): ask the API server.
        let api: Api<ProtectedResource> = Api::namespaced(self.inner.client.clone(), namespace);
        Ok(api.list(&ListParams::default()).await?.items)
    }

    async fn config_hash(&self, namespace: &str) -> Option<String> {
        let key = ObjectRef::<ConfigMap>::new(CONFIG_MAP).within(namespace);
        let cm = match self.inner.configs.get(&key) {
            Some(cm) => Some((*cm).clone()),
            None => Api::<ConfigMap>::namespaced(self.inner.client.clone(), namespace)
                .get_opt(CONFIG_MAP)
                .await
                .ok()
                .flatten(),
        };
        cm.and_then(|cm| cm.annotations().get(CONFIG_HASH_ANNOTATION).cloned())
    }
}

/// Deny with a message, as HTTP 403 Forbidden.
pub fn refuse(resp: AdmissionResponse, message: String) -> AdmissionResponse {
    let mut resp = resp.deny(message);
    resp.result.code = 403;
    resp.result.reason = "Forbidden".to_owned();
    resp
}

async fn mutate_pod(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
    namespace_labelled: bool,
) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if req.operation == Operation::Update
        && req.sub_resource.as_deref() == Some("ephemeralcontainers")
    {
        return ephemeral(state, req, resp).await;
    }
    if req.operation != Operation::Create {
        return resp;
    }
    let Some(obj) = &req.object else {
        return resp;
    };
    let original = match serde_json::to_value(obj) {
        Ok(v) => v,
        Err(e) => return refuse(resp, format!("pod cannot be read: {e}")),
    };
    let pod: Pod = match serde_json::from_value(original.clone()) {
        Ok(p) => p,
        Err(e) => return refuse(resp, format!("pod cannot be read: {e}")),
    };
    let namespace = req.namespace.clone().unwrap_or_default();
    let inject_it = inject::needs_injection(&pod, namespace_labelled);
    if !inject_it && !namespace_labelled {
        return resp;
    }
    let wanted = pod
        .annotations()
        .get(inject::RESOURCES_ANNOTATION)
        .map(String::as_str);
    let resources = match state.resources_in(&namespace, wanted).await {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                resp,
                format!("cannot read the ProtectedResources of namespace {namespace}: {e}"),
            )
        }
    };
    if !inject_it {
        // Opted out in a protected namespace: still never near a credential.
        return match inject::patch::check_isolation(&pod, &resources) {
            Ok(()) => resp,
            Err(e) => refuse(resp, e.to_string()),
        };
    }
    let input = InjectInput {
        namespace: &namespace,
        resources: &resources,
        config_hash: state.config_hash(&namespace).await,
        sidecar: &state.inner.sidecar,
    };
    let mutated = match inject::inject(&pod, &input) {
        Ok(p) => p,
        Err(e) => return refuse(resp, e.to_string()),
    };
    let mutated = match serde_json::to_value(&mutated) {
        Ok(v) => v,
        Err(e) => return refuse(resp, format!("cannot encode the injected pod: {e}")),
    };
    let patch = json_patch::diff(&original, &mutated);
    if patch.0.is_empty() {
        return resp;
    }
    match resp.clone().with_patch(patch) {
        Ok(r) => r,
        Err(e) => refuse(resp, format!("cannot encode the patch: {e}")),
    }
}

/// `kubectl debug` adds ephemeral containers to a running pod: they must not reach the
/// sidecar's credentials or token.
async fn ephemeral(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
    resp: AdmissionResponse,
) -> AdmissionResponse {
    let Some(obj) = &req.object else {
        return resp;
    };
    let pod: Pod = match serde_json::to_value(obj).and_then(serde_json::from_value) {
        Ok(p) => p,
        Err(e) => return refuse(resp, format!("pod cannot be read: {e}")),
    };
    let namespace = req.namespace.clone().unwrap_or_default();
    let resources = match state.resources_in(&namespace, None).await {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                resp,
                format!("cannot read the ProtectedResources of namespace {namespace}: {e}"),
            )
        }
    };
    match inject::patch::check_ephemeral(&pod, &resources) {
        Ok(()) => resp,
        Err(e) => refuse(resp, e.to_string()),
    }
}

async fn handle(
    state: &WebhookState,
    webhook: &'static str,
    review: AdmissionReview<DynamicObject>,
) -> Json<AdmissionReview<DynamicObject>> {
    let start = Instant::now();
    let req: Result<AdmissionRequest<DynamicObject>, _> = review.try_into();
    let resp = match req {
        Err(e) => AdmissionResponse::invalid(e.to_string()),
        Ok(req) => match webhook {
            "inject" => mutate_pod(state, &req, true).await,
            "inject-opt-in" => mutate_pod(state, &req, false).await,
            "stamp-decision" => super::access_request::stamp(&req),
            "authorize-decision" => {
                super::access_request::authorize(
                    &state.inner.client,
                    state.inner.operator_user.as_deref(),
                    &req,
                )
                .await
            }
            _ => super::validate::review(&req),
        },
    };
    state
        .inner
        .metrics
        .admission_duration
        .with_label_values(&[webhook, if resp.allowed { "true" } else { "false" }])
        .observe(start.elapsed().as_secs_f64());
    if !resp.allowed {
        tracing::info!(webhook, message = %resp.result.message, "admission refused");
    }
    Json(resp.into_review())
}

/// A POST route answering AdmissionReviews with the webhook named `webhook`.
fn review_route(webhook: &'static str) -> axum::routing::MethodRouter<WebhookState> {
    post(
        move |State(s): State<WebhookState>, Json(r): Json<AdmissionReview<DynamicObject>>| async move {
            handle(&s, webhook, r).await
        },
    )
}

/// The webhook routes.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/mutate-pods", review_route("inject"))
        .route("/mutate-pods-opt-in", review_route("inject-opt-in"))
        .route("/validate-gatewaypolicies", review_route("validate-policy"))
        .route("/mutate-accessrequests", review_route("stamp-decision"))
        .route(
            "/validate-accessrequests",
            review_route("authorize-decision"),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(state)
}

/// Serve the webhooks over TLS on `listener` until `shutdown` resolves. Open connections
/// are closed when it returns.
pub async fn serve(
    listener: TcpListener,
    cert: Arc<ReloadableCert>,
    state: WebhookState,
    shutdown: impl Future<Output = ()>,
) -> Result<(), crate::Error> {
    let acceptor = TlsAcceptor::from(Arc::new(cert.server_config()?));
    let app = router(state);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a webhook connection");
                    continue;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        connections.spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let service = TowerToHyperService::new(app);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "webhook connection ended");
            }
        });
    }
    connections.shutdown().await;
    Ok(())
}
