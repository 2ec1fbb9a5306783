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
use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec, Secret};
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
use crate::inject::{
    self, InjectInput, SidecarSettings, CONFIG_HASH_ANNOTATION, CONFIG_MAP, INJECTED_LABEL,
};
use crate::metrics::Metrics;
use portcullis_crds::pod_guard;

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
    opt_out: OptOutTrust,
    metrics: Metrics,
    /// The operator's own API-server user: the only writer of AccessRequest status.
    operator_user: Option<String>,
}

/// Who may opt a pod out of injection in a labelled namespace (nobody by default).
#[derive(Clone, Debug, Default)]
pub struct OptOutTrust {
    /// Groups whose members may.
    pub groups: Vec<String>,
    /// Service accounts (`namespace/name`) that may.
    pub service_accounts: Vec<String>,
}

impl OptOutTrust {
    fn allows(&self, user: &str, groups: &[String]) -> bool {
        groups.iter().any(|g| self.groups.contains(g))
            || self.service_accounts.iter().any(|sa| {
                sa.split_once('/')
                    .is_some_and(|(ns, name)| user == format!("system:serviceaccount:{ns}:{name}"))
            })
    }

    fn describe(&self) -> String {
        let mut who: Vec<String> = self.groups.iter().map(|g| format!("group {g}")).collect();
        who.extend(
            self.service_accounts
                .iter()
                .map(|s| format!("service account {s}")),
        );
        if who.is_empty() {
            "the users the operator is configured to trust (none are configured)".to_owned()
        } else {
            who.join(", ")
        }
    }
}

impl WebhookState {
    /// Start the caches (as tasks on the current runtime, stopped when the returned
    /// [`JoinSet`] is dropped) and return the state once they are synced.
    pub async fn start(
        client: Client,
        sidecar: SidecarSettings,
        opt_out: OptOutTrust,
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
                opt_out,
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

    /// Refuse an opt-out by a user the operator does not trust to opt out.
    fn may_opt_out(&self, req: &AdmissionRequest<DynamicObject>) -> Result<(), String> {
        let user = req.user_info.username.clone().unwrap_or_default();
        let groups = req.user_info.groups.clone().unwrap_or_default();
        if self.inner.opt_out.allows(&user, &groups) {
            return Ok(());
        }
        Err(pod_guard::Violation::OptOut {
            user: format!("user {user:?}"),
            trusted: self.inner.opt_out.describe(),
        }
        .to_string())
    }

    /// The Secrets `spec` refers to that are of type `kubernetes.io/service-account-token`.
    async fn token_secrets(
        &self,
        namespace: &str,
        spec: &PodSpec,
    ) -> Result<BTreeSet<String>, String> {
        let api: Api<Secret> = Api::namespaced(self.inner.client.clone(), namespace);
        let mut out = BTreeSet::new();
        for name in pod_guard::secret_names(spec) {
            let secret = api
                .get_opt(&name)
                .await
                .map_err(|e| format!("cannot read Secret {name} to check its type: {e}"))?;
            if secret.and_then(|s| s.type_).as_deref()
                == Some("kubernetes.io/service-account-token")
            {
                out.insert(name);
            }
        }
        Ok(out)
    }

    /// The service accounts the injected pods of `namespace` run as.
    async fn agent_service_accounts(&self, namespace: &str) -> Result<BTreeSet<String>, String> {
        let api: Api<Pod> = Api::namespaced(self.inner.client.clone(), namespace);
        let pods = api
            .list(&ListParams::default().labels(&format!("{INJECTED_LABEL}=true")))
            .await
            .map_err(|e| format!("cannot list the agent pods of namespace {namespace}: {e}"))?;
        Ok(pods
            .items
            .iter()
            .filter_map(|p| p.spec.as_ref())
            .map(|s| {
                s.service_account_name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "default".to_owned())
            })
            .collect())
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
    let result = match (&req.operation, req.sub_resource.as_deref()) {
        (Operation::Create, None) => create_pod(state, req, namespace_labelled).await,
        (Operation::Update, None | Some("ephemeralcontainers")) => {
            update_pod(state, req, namespace_labelled).await
        }
        _ => Ok(None),
    };
    match result {
        Ok(None) => resp,
        Ok(Some(patch)) => match resp.clone().with_patch(patch) {
            Ok(r) => r,
            Err(e) => refuse(resp, format!("cannot encode the patch: {e}")),
        },
        Err(message) => refuse(resp, message),
    }
}

fn read_pod(obj: Option<&DynamicObject>) -> Result<(serde_json::Value, Pod), String> {
    let obj = obj.ok_or_else(|| "the review carries no pod".to_owned())?;
    let value = serde_json::to_value(obj).map_err(|e| format!("pod cannot be read: {e}"))?;
    let pod =
        serde_json::from_value(value.clone()).map_err(|e| format!("pod cannot be read: {e}"))?;
    Ok((value, pod))
}

/// A new pod: injected (its other containers checked), or, opted out by a trusted user in a
/// labelled namespace, checked as a pod without the sidecar.
async fn create_pod(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
    namespace_labelled: bool,
) -> Result<Option<json_patch::Patch>, String> {
    let (original, pod) = read_pod(req.object.as_ref())?;
    let namespace = req.namespace.clone().unwrap_or_default();
    let inject_it = inject::needs_injection(&pod, namespace_labelled);
    if !inject_it && !namespace_labelled {
        return Ok(None);
    }
    if !inject_it {
        state.may_opt_out(req)?;
    }
    let wanted = pod
        .annotations()
        .get(inject::RESOURCES_ANNOTATION)
        .map(String::as_str);
    let resources = state
        .resources_in(&namespace, wanted)
        .await
        .map_err(|e| format!("cannot read the ProtectedResources of namespace {namespace}: {e}"))?;
    let spec = pod.spec.clone().unwrap_or_default();
    let token_secrets = state.token_secrets(&namespace, &spec).await?;
    if !inject_it {
        // Opted out in a protected namespace: still never near a credential or a token.
        let mut guard = inject::protected(&resources, state.inner.sidecar.run_as_user);
        guard.token_secrets = token_secrets;
        guard.service_accounts = state.agent_service_accounts(&namespace).await?;
        pod_guard::check(&spec, None, &guard).map_err(|e| e.to_string())?;
        return Ok(None);
    }
    let input = InjectInput {
        namespace: &namespace,
        resources: &resources,
        config_hash: state.config_hash(&namespace).await,
        sidecar: &state.inner.sidecar,
        token_secrets,
    };
    let mutated = inject::inject(&pod, &input).map_err(|e| e.to_string())?;
    let mutated = serde_json::to_value(&mutated)
        .map_err(|e| format!("cannot encode the injected pod: {e}"))?;
    let patch = json_patch::diff(&original, &mutated);
    Ok((!patch.0.is_empty()).then_some(patch))
}

/// An update of a pod or of its ephemeral containers: the sidecar stays exactly what was
/// stored, and a changed spec passes the same check as at creation.
async fn update_pod(
    state: &WebhookState,
    req: &AdmissionRequest<DynamicObject>,
    namespace_labelled: bool,
) -> Result<Option<json_patch::Patch>, String> {
    let (_, old) = read_pod(req.old_object.as_ref())?;
    let (_, new) = read_pod(req.object.as_ref())?;
    let old_spec = old.spec.clone().unwrap_or_default();
    let new_spec = new.spec.clone().unwrap_or_default();
    // Outside labelled namespaces only pods this webhook injected (opted in) are its concern.
    let injected = old
        .labels()
        .get(INJECTED_LABEL)
        .is_some_and(|v| v == "true");
    if !namespace_labelled && !injected {
        return Ok(None);
    }
    let sidecar = pod_guard::stored_sidecar(&old_spec);
    if let Some(s) = sidecar {
        pod_guard::sidecar_unchanged(s, pod_guard::stored_sidecar(&new_spec))
            .map_err(|e| e.to_string())?;
    }
    if old_spec == new_spec {
        // Labels, annotations, finalizers: nothing that runs changes.
        return Ok(None);
    }
    let namespace = req.namespace.clone().unwrap_or_default();
    let resources = state
        .resources_in(&namespace, None)
        .await
        .map_err(|e| format!("cannot read the ProtectedResources of namespace {namespace}: {e}"))?;
    let mut guard = inject::protected(&resources, state.inner.sidecar.run_as_user);
    guard.token_secrets = state.token_secrets(&namespace, &new_spec).await?;
    if sidecar.is_none() {
        guard.service_accounts = state.agent_service_accounts(&namespace).await?;
    }
    pod_guard::check(&new_spec, sidecar, &guard).map_err(|e| e.to_string())?;
    Ok(None)
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
