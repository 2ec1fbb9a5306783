//! The ProtectedResource controller: resolves the credentials Secret (and reacts when it
//! changes), checks the endpoint and the local port, counts the pods bound to the resource,
//! and reports `CredentialsResolved` and `Ready` with reasons users can act on
//! (`SecretNotFound`, `KeyMissing`, `PortConflict`, ...).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::ResourceExt;
use portcullis_crds::conditions::{find_condition, new_condition, set_condition, types};
use portcullis_crds::{ProtectedResource, ResourceType};
use serde_json::json;

use super::{key, Context, ReconcileError};
use crate::compile::not_served;
use crate::inject::{BOUND_ANNOTATION, INJECTED_LABEL};

const CONTROLLER: &str = "protectedresource";

/// Run the controller until `stop` resolves.
pub async fn run(ctx: Arc<Context>, stop: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let (store, writer) = reflector::store();
    let resources = watcher(
        Api::<ProtectedResource>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(super::slim)
    .reflect(writer)
    .applied_objects();
    let controller = Controller::for_stream(resources, store.clone());
    // Secrets by metadata only: the operator never caches credential values.
    let secrets = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();
    let pods = watcher(
        Api::<PartialObjectMeta<Pod>>::all(client.clone()),
        watcher::Config::default().labels(&format!("{INJECTED_LABEL}=true")),
    )
    .default_backoff()
    .touched_objects();
    let by_secret = store.clone();
    let ctx2 = ctx.clone();
    controller
        .watches_stream(secrets, move |s| {
            referencing(&by_secret, s.namespace(), &s.name_any())
        })
        .watches_stream(pods, move |p| {
            bound_to(p.namespace(), p.annotations().get(BOUND_ANNOTATION))
        })
        .graceful_shutdown_on(stop)
        .run(
            move |pr, ctx: Arc<Context>| {
                let store = store.clone();
                async move {
                    let k = key(pr.as_ref());
                    ctx.instrument(CONTROLLER, k, reconcile(&pr, &ctx, &store))
                        .await
                }
            },
            move |pr, e, _| ctx2.backoff(CONTROLLER, key(pr.as_ref()), e),
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn referencing(
    store: &Store<ProtectedResource>,
    namespace: Option<String>,
    secret: &str,
) -> Vec<ObjectRef<ProtectedResource>> {
    store
        .state_filter(|r| {
            r.namespace() == namespace
                && (r
                    .spec
                    .credentials_secret_ref
                    .as_ref()
                    .is_some_and(|c| c.name == secret)
                    || r.spec
                        .tls
                        .as_ref()
                        .and_then(|t| t.ca_secret_ref.as_ref())
                        .is_some_and(|c| c.name == secret))
        })
        .iter()
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

fn bound_to(
    namespace: Option<String>,
    bound: Option<&String>,
) -> Vec<ObjectRef<ProtectedResource>> {
    let Some(ns) = namespace else {
        return Vec::new();
    };
    let names: Vec<&str> = bound
        .map(|b| b.split(',').filter(|n| !n.is_empty()).collect())
        .unwrap_or_default();
    names
        .into_iter()
        .map(|n| ObjectRef::new(n).within(&ns))
        .collect()
}

/// Why the credentials are not usable, as (reason, message).
async fn check_credentials(
    ctx: &Context,
    pr: &ProtectedResource,
    namespace: &str,
) -> Result<Result<String, (&'static str, String)>, ReconcileError> {
    let Some(reference) = &pr.spec.credentials_secret_ref else {
        return Ok(match pr.spec.r#type {
            ResourceType::Kubernetes => {
                Ok("the sidecar uses the pod's own service-account token".to_owned())
            }
            _ => Err((
                "SecretNotSet",
                "spec.credentialsSecretRef is not set".to_owned(),
            )),
        });
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(secret) = api.get_opt(&reference.name).await? else {
        return Ok(Err((
            "SecretNotFound",
            format!(
                "Secret {} not found in namespace {namespace}; create it with the keys {} and {}",
                reference.name, reference.username_key, reference.password_key
            ),
        )));
    };
    let keys: Vec<String> = secret
        .data
        .iter()
        .flat_map(|d| d.keys().cloned())
        .chain(secret.string_data.iter().flat_map(|d| d.keys().cloned()))
        .collect();
    let missing: Vec<&str> = [
        reference.username_key.as_str(),
        reference.password_key.as_str(),
    ]
    .into_iter()
    .filter(|k| !keys.iter().any(|x| x == k))
    .collect();
    if !missing.is_empty() {
        return Ok(Err((
            "KeyMissing",
            format!(
                "Secret {} has no key {} (keys present: {})",
                reference.name,
                missing.join(" and no key "),
                if keys.is_empty() {
                    "none".to_owned()
                } else {
                    keys.join(", ")
                }
            ),
        )));
    }
    if let Some(ca) = pr.spec.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
        match api.get_opt(&ca.name).await? {
            None => {
                return Ok(Err((
                    "CASecretNotFound",
                    format!(
                        "Secret {} (spec.tls.caSecretRef) not found in namespace {namespace}",
                        ca.name
                    ),
                )))
            }
            Some(s) if !s.data.as_ref().is_some_and(|d| d.contains_key(&ca.key)) => {
                return Ok(Err((
                    "KeyMissing",
                    format!(
                        "Secret {} (spec.tls.caSecretRef) has no key {}",
                        ca.name, ca.key
                    ),
                )))
            }
            Some(_) => {}
        }
    }
    Ok(Ok(format!(
        "Secret {} has keys {} and {}",
        reference.name, reference.username_key, reference.password_key
    )))
}

fn endpoint_problem(
    pr: &ProtectedResource,
    others: &[ProtectedResource],
) -> Option<(&'static str, String)> {
    if let Some(e) = &pr.spec.endpoint {
        let host = e.host.trim();
        if host.is_empty() || host.contains("://") || host.contains('/') || host.contains(' ') {
            return Some((
                "InvalidEndpoint",
                format!(
                    "spec.endpoint.host {:?} is not a host name or IP address",
                    e.host
                ),
            ));
        }
        if !(1..=65535).contains(&e.port) {
            return Some((
                "InvalidEndpoint",
                format!("spec.endpoint.port {} is out of range", e.port),
            ));
        }
    } else if pr.spec.r#type != ResourceType::Kubernetes {
        return Some((
            "InvalidEndpoint",
            "spec.endpoint is required for database resources".to_owned(),
        ));
    }
    let name = pr.name_any();
    let mut clash: Vec<String> = others
        .iter()
        .filter(|o| {
            o.name_any() != name
                && o.spec.listen_port == pr.spec.listen_port
                && o.metadata.deletion_timestamp.is_none()
        })
        .map(|o| o.name_any())
        .collect();
    clash.sort();
    // The first by name keeps the port (as the compiler does).
    if clash.first().is_some_and(|first| *first < name) {
        return Some((
            "PortConflict",
            format!(
                "listenPort {} is already used by ProtectedResource {} in this namespace; choose another port",
                pr.spec.listen_port,
                clash.join(", ")
            ),
        ));
    }
    None
}

async fn reconcile(
    pr: &ProtectedResource,
    ctx: &Context,
    store: &Store<ProtectedResource>,
) -> Result<Action, ReconcileError> {
    if pr.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = pr.namespace().unwrap_or_default();
    let name = pr.name_any();
    let generation = pr.metadata.generation;
    let api: Api<ProtectedResource> = Api::namespaced(ctx.client.clone(), &namespace);

    let credentials = check_credentials(ctx, pr, &namespace).await?;
    let others: Vec<ProtectedResource> = store
        .state_filter(|r| r.namespace().as_deref() == Some(namespace.as_str()))
        .iter()
        .map(|r| (**r).clone())
        .collect();
    let endpoint = endpoint_problem(pr, &others);
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &namespace)
        .list_metadata(&ListParams::default().labels(&format!("{INJECTED_LABEL}=true")))
        .await?;
    let bound = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.annotations()
                .get(BOUND_ANNOTATION)
                .is_some_and(|b| b.split(',').any(|n| n == name))
        })
        .count();

    let old = pr.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let resolved = match &credentials {
        Ok(msg) => new_condition(
            types::CREDENTIALS_RESOLVED,
            true,
            "Resolved",
            msg.clone(),
            generation,
        ),
        Err((reason, problem)) => new_condition(
            types::CREDENTIALS_RESOLVED,
            false,
            reason,
            problem.clone(),
            generation,
        ),
    };
    set_condition(&mut status.conditions, resolved);
    let (ready, reason, message) = match (&credentials, &endpoint) {
        _ if !pr.spec.r#type.is_served() => (false, "NotServed", not_served(pr.spec.r#type)),
        (Ok(_), None) => (
            true,
            "Ready",
            format!(
                "serving on 127.0.0.1:{} in the pods that bind it",
                pr.spec.listen_port
            ),
        ),
        (Ok(_), Some((reason, problem))) | (Err((reason, problem)), _) => {
            (false, *reason, problem.clone())
        }
    };
    set_condition(
        &mut status.conditions,
        new_condition(types::READY, ready, reason, message.clone(), generation),
    );
    status.observed_generation = generation;
    status.bound_pods = i32::try_from(bound).unwrap_or(i32::MAX);
    if status != old {
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
        let before = find_condition(&old.conditions, types::READY)
            .map(|c| (c.status.clone(), c.reason.clone()));
        let now = find_condition(&status.conditions, types::READY)
            .map(|c| (c.status.clone(), c.reason.clone()));
        if before != now {
            let type_ = if ready {
                EventType::Normal
            } else {
                EventType::Warning
            };
            ctx.event(pr, type_, reason, "Resolve", message).await;
        }
    }
    // Re-check now and then: a Secret's keys can change without a metadata change we map.
    Ok(Action::requeue(Duration::from_secs(if ready {
        300
    } else {
        30
    })))
}
