//! The namespace compiler: for each namespace, compile every GatewayPolicy with the
//! ProtectedResources it selects into the [`SidecarConfig`] stored in the ConfigMap
//! [`CONFIG_MAP`], and report on each policy: `Accepted`, `Compiled`, the content hash of
//! the configuration that carries it, and the number of resources it selects.
//!
//! A policy that does not compile is reported `Accepted=False` with the compiler's message;
//! its last compiled version stays in the configuration, so a bad edit never loosens
//! enforcement.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Resource, ResourceExt};
use portcullis_crds::conditions::{self, new_condition, set_condition, types};
use portcullis_crds::{GatewayPolicy, ProtectedResource, SidecarConfig};
use serde_json::json;

use super::{Context, ReconcileError, FINALIZER};
use crate::compile::{compile_namespace, Compiled};
use crate::inject::{
    CA_KEY, CONFIG_HASH_ANNOTATION, CONFIG_KEY, CONFIG_MAP, MANAGER, MASKING_KEY_KEY,
    MASKING_KEY_SECRET, PLACEHOLDER_TOKEN, SIDECAR_TLS_SECRET, TOKEN_KEY,
};

const CONTROLLER: &str = "gatewaypolicy";

struct Stores {
    policies: Store<GatewayPolicy>,
    resources: Store<ProtectedResource>,
}

/// Run the namespace compiler until `stop` resolves.
pub async fn run(ctx: Arc<Context>, stop: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let (policies, gp_writer) = reflector::store();
    let (resources, pr_writer) = reflector::store();
    let to_ns = |ns: Option<String>| ns.map(|n| ObjectRef::<Namespace>::new(&n));
    let gp_stream = watcher(
        Api::<GatewayPolicy>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(super::slim)
    .reflect(gp_writer)
    .touched_objects();
    let pr_stream = watcher(
        Api::<ProtectedResource>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(super::slim)
    .reflect(pr_writer)
    .touched_objects();
    let cm_stream = watcher(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP}")),
    )
    .default_backoff()
    .touched_objects();
    let stores = Arc::new(Stores {
        policies,
        resources,
    });
    let ctx2 = ctx.clone();
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches_stream(gp_stream, move |o: GatewayPolicy| to_ns(o.namespace()))
    .watches_stream(pr_stream, move |o: ProtectedResource| to_ns(o.namespace()))
    .watches_stream(cm_stream, move |o: ConfigMap| to_ns(o.namespace()))
    .graceful_shutdown_on(stop)
    .run(
        move |ns, stores: Arc<Stores>| {
            let ctx = ctx2.clone();
            async move {
                let key = ns.name_any();
                ctx.instrument(CONTROLLER, key, reconcile(&ns, &stores, &ctx))
                    .await
            }
        },
        {
            let ctx = ctx.clone();
            move |ns: Arc<Namespace>, e: &ReconcileError, _| {
                ctx.backoff(CONTROLLER, ns.name_any(), e)
            }
        },
        stores,
    )
    .for_each(|_| futures::future::ready(()))
    .await;
}

async fn reconcile(
    ns: &Namespace,
    stores: &Stores,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let namespace = ns.name_any();
    let policies: Vec<Arc<GatewayPolicy>> = stores
        .policies
        .state_filter(|p| p.namespace().as_deref() == Some(namespace.as_str()));
    let resources: Vec<Arc<ProtectedResource>> = stores
        .resources
        .state_filter(|r| r.namespace().as_deref() == Some(namespace.as_str()));
    if ns.metadata.deletion_timestamp.is_some() {
        // The namespace goes with its pods and ConfigMap: let its objects go.
        for p in policies
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
        {
            remove_finalizer(
                &Api::<GatewayPolicy>::namespaced(ctx.client.clone(), &namespace),
                p.as_ref(),
            )
            .await?;
        }
        for r in resources
            .iter()
            .filter(|r| r.metadata.deletion_timestamp.is_some())
        {
            remove_finalizer(
                &Api::<ProtectedResource>::namespaced(ctx.client.clone(), &namespace),
                r.as_ref(),
            )
            .await?;
        }
        return Ok(Action::await_change());
    }
    let cm_api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let current = if policies.is_empty() && resources.is_empty() {
        match cm_api.get_opt(CONFIG_MAP).await? {
            // Nothing to compile and nothing compiled before: not a Portcullis namespace.
            None => return Ok(Action::await_change()),
            Some(cm) => Some(cm),
        }
    } else {
        cm_api.get_opt(CONFIG_MAP).await?
    };

    let previous = current
        .as_ref()
        .and_then(|cm| cm.data.as_ref())
        .and_then(|d| d.get(CONFIG_KEY))
        .and_then(|text| SidecarConfig::from_yaml(text).ok());
    let policy_refs: Vec<&GatewayPolicy> = policies.iter().map(|p| p.as_ref()).collect();
    let resource_refs: Vec<&ProtectedResource> = resources.iter().map(|r| r.as_ref()).collect();
    let mut compiled =
        compile_namespace(&namespace, &policy_refs, &resource_refs, previous.as_ref());
    if let Some(audit) = &ctx.audit {
        crate::compile::ship_to(&mut compiled.config, audit);
    }
    let hash = compiled.config.content_hash();

    // Finalizers first, so nothing that is in the configuration can vanish unnoticed.
    let policy_api = Api::<GatewayPolicy>::namespaced(ctx.client.clone(), &namespace);
    let resource_api = Api::<ProtectedResource>::namespaced(ctx.client.clone(), &namespace);
    sync_finalizers(&policy_api, &policy_refs, Finalizers::AddToLive).await?;
    sync_finalizers(&resource_api, &resource_refs, Finalizers::AddToLive).await?;

    let current_hash = current
        .as_ref()
        .and_then(|cm| cm.annotations().get(CONFIG_HASH_ANNOTATION).cloned());
    let data = config_data(ctx, &compiled)?;
    // The data itself is compared, not only the annotation: a change that keeps the
    // annotation (a namespace user editing the ConfigMap) is put back.
    let data_differs = data.iter().any(|(key, value)| {
        current
            .as_ref()
            .and_then(|cm| cm.data.as_ref())
            .and_then(|d| d.get(key))
            != Some(value)
    });
    if current_hash.as_deref() != Some(hash.as_str()) || data_differs {
        write_config(&cm_api, data, &hash).await?;
        if data_differs && current_hash.as_deref() == Some(hash.as_str()) {
            tracing::warn!(
                namespace,
                hash,
                "sidecar configuration was changed outside the operator; restored"
            );
        } else {
            tracing::info!(namespace, hash, "sidecar configuration updated");
        }
    }
    ensure_sidecar_tls(ctx, &namespace).await?;
    ensure_masking_key(ctx, &namespace).await?;

    for p in &policy_refs {
        if p.metadata.deletion_timestamp.is_none() {
            update_policy_status(ctx, p, &compiled, &hash, current_hash.as_deref()).await?;
        }
    }
    // The configuration no longer carries deleted objects: let them go.
    sync_finalizers(&policy_api, &policy_refs, Finalizers::RemoveFromDeleted).await?;
    sync_finalizers(&resource_api, &resource_refs, Finalizers::RemoveFromDeleted).await?;
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// Which objects [`sync_finalizers`] changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Finalizers {
    /// Add the finalizer to objects not being deleted.
    AddToLive,
    /// Remove it from objects being deleted.
    RemoveFromDeleted,
}

async fn sync_finalizers<K>(
    api: &Api<K>,
    objs: &[&K],
    what: Finalizers,
) -> Result<(), ReconcileError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    for obj in objs {
        let deleting = obj.meta().deletion_timestamp.is_some();
        match (what, deleting) {
            (Finalizers::AddToLive, false) => ensure_finalizer(api, *obj).await?,
            (Finalizers::RemoveFromDeleted, true) => remove_finalizer(api, *obj).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn ensure_finalizer<K>(api: &Api<K>, obj: &K) -> Result<(), ReconcileError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if obj.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let mut finalizers = obj.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    set_finalizers(api, obj, finalizers).await
}

async fn remove_finalizer<K>(api: &Api<K>, obj: &K) -> Result<(), ReconcileError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if !obj.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let finalizers = obj
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    set_finalizers(api, obj, finalizers).await
}

/// Replace the finalizer list of the version of `obj` that was read.
async fn set_finalizers<K>(
    api: &Api<K>,
    obj: &K,
    finalizers: Vec<String>,
) -> Result<(), ReconcileError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()}});
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Changed meanwhile: the next event brings the new version.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The data of [`CONFIG_MAP`] for a compiled configuration.
fn config_data(
    ctx: &Context,
    compiled: &Compiled,
) -> Result<BTreeMap<String, String>, ReconcileError> {
    let yaml = compiled.config.to_yaml()?;
    let ca = ctx
        .ca
        .as_ref()
        .map(|c| c.ca_pem.clone())
        .unwrap_or_default();
    let mut data = BTreeMap::from([
        (CONFIG_KEY.to_owned(), yaml),
        (CA_KEY.to_owned(), ca),
        (TOKEN_KEY.to_owned(), PLACEHOLDER_TOKEN.to_owned()),
    ]);
    if let Some(audit) = &ctx.audit {
        data.insert(
            crate::compile::AUDIT_CA_KEY.to_owned(),
            audit.ca_pem.clone(),
        );
    }
    Ok(data)
}

async fn write_config(
    api: &Api<ConfigMap>,
    data: BTreeMap<String, String>,
    hash: &str,
) -> Result<(), ReconcileError> {
    let cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIG_MAP,
            "labels": {"app.kubernetes.io/managed-by": MANAGER},
            "annotations": {CONFIG_HASH_ANNOTATION: hash},
        },
        "data": data,
    });
    api.patch(
        CONFIG_MAP,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(cm),
    )
    .await?;
    Ok(())
}

/// The sidecar's local serving certificate (for the Kubernetes API proxy), signed by the
/// operator's CA, whose certificate agents find as `ca.crt` of their in-cluster config.
async fn ensure_sidecar_tls(ctx: &Context, namespace: &str) -> Result<(), ReconcileError> {
    let Some(ca) = &ctx.ca else {
        return Ok(());
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    if api.get_opt(SIDECAR_TLS_SECRET).await?.is_some() {
        return Ok(());
    }
    let (cert, key, _) = crate::certs::issue_serving(
        &ca.ca_key_pem,
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
        Duration::from_secs(365 * 24 * 3600),
    )?;
    create_managed_secret(
        &api,
        SIDECAR_TLS_SECRET,
        "kubernetes.io/tls",
        BTreeMap::from([
            ("tls.crt".to_owned(), ByteString(cert.into_bytes())),
            ("tls.key".to_owned(), ByteString(key.into_bytes())),
        ]),
    )
    .await
}

/// The key of the `hash` masking strategy: 32 random bytes as hex, made once and kept, so
/// that a value hashes the same in every pod of the namespace and across restarts.
async fn ensure_masking_key(ctx: &Context, namespace: &str) -> Result<(), ReconcileError> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    if api.get_opt(MASKING_KEY_SECRET).await?.is_some() {
        return Ok(());
    }
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| ReconcileError::Random("the masking key"))?;
    create_managed_secret(
        &api,
        MASKING_KEY_SECRET,
        "Opaque",
        BTreeMap::from([(
            MASKING_KEY_KEY.to_owned(),
            ByteString(hex::encode(key).into_bytes()),
        )]),
    )
    .await
}

/// Create a Secret the operator manages, unless it exists: one made by another reconcile in
/// the meantime is kept.
async fn create_managed_secret(
    api: &Api<Secret>,
    name: &str,
    type_: &str,
    data: BTreeMap<String, ByteString>,
) -> Result<(), ReconcileError> {
    let mut secret = Secret {
        type_: Some(type_.to_owned()),
        data: Some(data),
        ..Secret::default()
    };
    secret.metadata.name = Some(name.to_owned());
    secret.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_owned(),
        MANAGER.to_owned(),
    )]));
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn update_policy_status(
    ctx: &Context,
    policy: &GatewayPolicy,
    compiled: &Compiled,
    hash: &str,
    previous_hash: Option<&str>,
) -> Result<(), ReconcileError> {
    let name = policy.name_any();
    let Some(outcome) = compiled.policies.get(&name) else {
        return Ok(());
    };
    let generation = policy.metadata.generation;
    let old = policy.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let in_config = outcome.error.is_none() || outcome.kept_previous;
    match &outcome.error {
        None => set_condition(
            &mut status.conditions,
            new_condition(
                types::ACCEPTED,
                true,
                "Compiled",
                "the policy compiles",
                generation,
            ),
        ),
        Some(e) => {
            let tail = if outcome.kept_previous {
                "; the last accepted version of this policy stays in force"
            } else {
                "; the policy is not enforced until it compiles"
            };
            set_condition(
                &mut status.conditions,
                new_condition(
                    types::ACCEPTED,
                    false,
                    "CompileError",
                    format!("{e}{tail}"),
                    generation,
                ),
            );
        }
    }
    if in_config {
        set_condition(
            &mut status.conditions,
            new_condition(
                types::COMPILED,
                true,
                "ConfigWritten",
                format!("in ConfigMap {CONFIG_MAP}, content hash {hash}"),
                generation,
            ),
        );
        status.config_hash = Some(hash.to_owned());
    } else {
        set_condition(
            &mut status.conditions,
            new_condition(
                types::COMPILED,
                false,
                "NotCompiled",
                "no version of this policy compiles",
                generation,
            ),
        );
        status.config_hash = None;
    }
    status.observed_generation = generation;
    status.selected_resources = outcome.selected;
    if status == old {
        return Ok(());
    }
    let api: Api<GatewayPolicy> =
        Api::namespaced(ctx.client.clone(), &policy.namespace().unwrap_or_default());
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    let was_accepted =
        conditions::find_condition(&old.conditions, types::ACCEPTED).map(|c| c.status.clone());
    let accepted_now = conditions::is_true(&status.conditions, types::ACCEPTED);
    if was_accepted.as_deref()
        != Some(if accepted_now {
            conditions::TRUE
        } else {
            conditions::FALSE
        })
        || (!accepted_now && old.observed_generation != generation)
    {
        match &outcome.error {
            None => {
                ctx.event(
                    policy,
                    EventType::Normal,
                    "Accepted",
                    "Compile",
                    "the policy compiles".to_owned(),
                )
                .await
            }
            Some(e) => {
                ctx.event(
                    policy,
                    EventType::Warning,
                    "CompileError",
                    "Compile",
                    e.clone(),
                )
                .await
            }
        }
    }
    if old.config_hash != status.config_hash && previous_hash != Some(hash) {
        ctx.event(
            policy,
            EventType::Normal,
            "ConfigUpdated",
            "WriteConfig",
            format!("sidecar configuration {hash} written to ConfigMap {CONFIG_MAP}"),
        )
        .await;
    }
    Ok(())
}
