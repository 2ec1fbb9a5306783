//! The operator as it runs in a cluster (controllers, webhooks with its own CA, metrics), in
//! this process, against the real kube-apiserver. One operator serves every test of this
//! file; its webhook configurations are scoped to namespaces labelled for this file.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use portcullis_crds::conditions::find_condition;
use portcullis_crds::{GatewayPolicy, ProtectedResource, SidecarConfig};
use portcullis_e2e::harness;
use serde_json::json;

const SCOPE: &str = "operator-ctl";
const WEBHOOKS: &str = "portcullis-test-operator-ctl";

struct Running {
    settings: portcullis_operator::Settings,
}

/// Start the operator once, on a runtime of its own that lives as long as the test binary.
fn operator() -> &'static Running {
    static OP: OnceLock<Running> = OnceLock::new();
    OP.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let h = harness();
                h.install_crds().await;
                let client = h.client().await;
                let ns = h.namespace("portcullis-system").await;
                let settings = operator_settings(&ns, "replica-a", WEBHOOKS);
                let url = format!("https://{}", settings.webhook_addr);
                // Registered without a caBundle: the operator fills it in.
                register(&client, &options(WEBHOOKS, url, None, SCOPE)).await;
                let s2 = settings.clone();
                tokio::spawn(async move {
                    portcullis_operator::run(client, s2, std::future::pending())
                        .await
                        .expect("operator");
                });
                let _ = tx.send(Running { settings });
                std::future::pending::<()>().await;
            });
        });
        rx.recv().expect("operator started")
    })
}

async fn client() -> Client {
    operator();
    harness().client().await
}

async fn scoped_namespace(client: &Client, prefix: &str, inject: bool) -> String {
    let ns = harness().namespace(prefix).await;
    let mut labels = vec![(TEST_LABEL, SCOPE)];
    if inject {
        labels.push(("portcullis.dev/inject", "enabled"));
    }
    label_namespace(client, &ns, &labels).await;
    ns
}

fn policy(name: &str, spec: serde_json::Value) -> GatewayPolicy {
    serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1",
        "kind": "GatewayPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("policy")
}

async fn config(client: &Client, ns: &str) -> Option<(String, SidecarConfig)> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt("portcullis-sidecar-config")
        .await
        .ok()??;
    let hash = cm
        .metadata
        .annotations
        .as_ref()?
        .get("portcullis.dev/config-hash")?
        .clone();
    let cfg = SidecarConfig::from_yaml(cm.data.as_ref()?.get("sidecar.yaml")?)
        .expect("valid sidecar config");
    Some((hash, cfg))
}

async fn condition(
    api: &Api<ProtectedResource>,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let pr = api.get(name).await.ok()?;
    let c = find_condition(&pr.status?.conditions, type_)?.clone();
    Some((c.status, c.reason, c.message))
}

#[tokio::test]
async fn protected_resource_conditions_follow_the_credentials_secret() {
    let client = client().await;
    let ns = scoped_namespace(&client, "pr-status", false).await;
    let api: Api<ProtectedResource> = Api::namespaced(client.clone(), &ns);
    postgres_resource(
        &client,
        &ns,
        "customers-db",
        5432,
        "customers-db-credentials",
    )
    .await;
    let wait = |reason: &'static str| {
        let api = api.clone();
        async move {
            eventually(Duration::from_secs(60), reason, || {
                let api = api.clone();
                async move {
                    let (status, r, msg) =
                        condition(&api, "customers-db", "CredentialsResolved").await?;
                    (r == reason).then_some((status, msg))
                }
            })
            .await
        }
    };
    let (status, msg) = wait("SecretNotFound").await;
    assert_eq!(status, "False");
    assert!(
        msg.contains("Secret customers-db-credentials not found"),
        "{msg}"
    );
    let (ready, reason, _) = condition(&api, "customers-db", "Ready")
        .await
        .expect("Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "SecretNotFound")
    );
    let pr = api.get("customers-db").await.expect("get");
    assert_eq!(
        pr.status.as_ref().and_then(|s| s.observed_generation),
        Some(1)
    );

    secret(
        &client,
        &ns,
        "customers-db-credentials",
        &[("username", "app")],
    )
    .await;
    let (status, msg) = wait("KeyMissing").await;
    assert_eq!(status, "False");
    assert!(
        msg.contains("has no key password (keys present: username)"),
        "{msg}"
    );

    Api::<Secret>::namespaced(client.clone(), &ns)
        .patch(
            "customers-db-credentials",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"password": "s3cret"}})),
        )
        .await
        .expect("patch secret");
    let (status, _) = wait("Resolved").await;
    assert_eq!(status, "True");
    let (ready, _, msg) = eventually(Duration::from_secs(60), "Ready", || async {
        condition(&api, "customers-db", "Ready")
            .await
            .filter(|c| c.0 == "True")
    })
    .await;
    assert_eq!(ready, "True");
    assert!(msg.contains("127.0.0.1:5432"), "{msg}");

    // A second resource on the same local port is not Ready.
    postgres_resource(&client, &ns, "replica-db", 5432, "customers-db-credentials").await;
    let (_, reason, msg) = eventually(Duration::from_secs(60), "PortConflict", || async {
        condition(&api, "replica-db", "Ready")
            .await
            .filter(|c| c.1 == "PortConflict")
    })
    .await;
    assert!(
        msg.contains("already used by ProtectedResource customers-db"),
        "{msg}: {reason}"
    );

    // A MySQL resource is accepted but not served: Ready=False, NotServed, even with its
    // credentials resolved, and the compiled sidecar configuration leaves it out.
    let mysql: ProtectedResource = serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "ProtectedResource",
        "metadata": {"name": "orders-db"},
        "spec": {"type": "mysql", "endpoint": {"host": "orders.data.svc", "port": 3306},
                 "database": "orders", "credentialsSecretRef": {"name": "customers-db-credentials"},
                 "listenPort": 3306},
    }))
    .expect("mysql resource");
    api.create(&PostParams::default(), &mysql)
        .await
        .expect("a mysql resource is accepted");
    let (ready, _, msg) = eventually(Duration::from_secs(60), "NotServed", || async {
        condition(&api, "orders-db", "Ready")
            .await
            .filter(|c| c.1 == "NotServed")
    })
    .await;
    assert_eq!(ready, "False");
    assert!(msg.contains("type mysql is not served"), "{msg}");

    // Every state change left an Event.
    let events = Api::<Event>::namespaced(client.clone(), &ns);
    let reasons = eventually(Duration::from_secs(60), "events", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let reasons: Vec<String> = list.items.iter().filter_map(|e| e.reason.clone()).collect();
        (reasons.iter().any(|r| r == "Ready") && reasons.iter().any(|r| r == "KeyMissing"))
            .then_some(reasons)
    })
    .await;
    assert!(reasons.iter().any(|r| r == "SecretNotFound"), "{reasons:?}");
}

#[tokio::test]
async fn policy_edits_reach_the_config_map_and_a_broken_policy_keeps_the_last_good_config() {
    let client = client().await;
    // Not in the validating webhook's scope, so a broken policy reaches the controller.
    let ns = harness().namespace("gp-compile").await;
    secret(
        &client,
        &ns,
        "customers-db-credentials",
        &[("username", "app"), ("password", "p")],
    )
    .await;
    postgres_resource(
        &client,
        &ns,
        "customers-db",
        5432,
        "customers-db-credentials",
    )
    .await;
    let gps: Api<GatewayPolicy> = Api::namespaced(client.clone(), &ns);
    gps.create(
        &PostParams::default(),
        &policy(
            "gdpr",
            json!({
                "resourceSelector": {"matchLabels": {"tier": "data"}},
                "masking": [{"name": "emails", "detector": "email", "strategy": "partial"}],
                "lawfulBasis": "contract",
            }),
        ),
    )
    .await
    .expect("create policy");

    let (hash, cfg) = eventually(Duration::from_secs(60), "config map", || async {
        config(&client, &ns)
            .await
            .filter(|(_, c)| c.resources.first().is_some_and(|r| !r.policies.is_empty()))
    })
    .await;
    assert_eq!(hash, cfg.content_hash());
    assert_eq!(cfg.namespace, ns);
    assert_eq!(cfg.resources.len(), 1);
    assert_eq!(cfg.resources[0].policies, vec!["gdpr".to_owned()]);
    assert_eq!(
        cfg.resources[0]
            .credentials
            .as_ref()
            .map(|c| c.password_file.to_string_lossy().into_owned()),
        Some("/var/run/portcullis/credentials/customers-db/password".to_owned())
    );
    let status = eventually(Duration::from_secs(60), "policy status", || async {
        let gp = gps.get("gdpr").await.ok()?;
        gp.status
            .filter(|s| s.config_hash.as_deref() == Some(hash.as_str()))
    })
    .await;
    assert_eq!(
        find_condition(&status.conditions, "Accepted").map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(
        find_condition(&status.conditions, "Compiled").map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(status.selected_resources, 1);
    assert_eq!(status.observed_generation, Some(1));
    let gp = gps.get("gdpr").await.expect("get");
    assert!(gp
        .metadata
        .finalizers
        .unwrap_or_default()
        .contains(&"portcullis.dev/config-cleanup".to_owned()));

    // An edit propagates within seconds.
    let started = std::time::Instant::now();
    gps.patch("gdpr", &PatchParams::default(), &Patch::Merge(json!({"spec": {"guardrails": [
        {"name": "no-bulk-delete", "match": {"statementKinds": ["delete"], "missingWhere": true}, "action": "deny"}]}})))
        .await
        .expect("edit policy");
    let (hash2, cfg2) = eventually(Duration::from_secs(60), "edited config", || async {
        config(&client, &ns).await.filter(|(h, _)| *h != hash)
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(cfg2.policies[0].guardrails[0].name, "no-bulk-delete");
    eventually(Duration::from_secs(60), "status hash", || async {
        let gp = gps.get("gdpr").await.ok()?;
        (gp.status?.config_hash.as_deref() == Some(hash2.as_str())).then_some(())
    })
    .await;

    // A broken edit: Accepted=False with the compiler's message, the last good config stays.
    gps.patch(
        "gdpr",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"masking": [
        {"name": "emails", "detector": "email", "strategy": "partial"},
        {"name": "tickets", "detector": "regex", "pattern": "TICKET-(\\d+"}]}})),
    )
    .await
    .expect("broken edit");
    let accepted = eventually(Duration::from_secs(60), "Accepted=False", || async {
        let gp = gps.get("gdpr").await.ok()?;
        let c = find_condition(&gp.status?.conditions, "Accepted")?.clone();
        (c.status == "False").then_some(c)
    })
    .await;
    assert_eq!(accepted.reason, "CompileError");
    assert!(
        accepted.message.contains(
            "masking rule tickets: pattern \"TICKET-(\\\\d+\" is not a valid regular expression"
        ),
        "{}",
        accepted.message
    );
    assert!(
        accepted
            .message
            .contains("the last accepted version of this policy stays in force"),
        "{}",
        accepted.message
    );
    assert_eq!(accepted.observed_generation, Some(3));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (hash3, cfg3) = config(&client, &ns).await.expect("config");
    assert_eq!(hash3, hash2, "the last good configuration stays in force");
    assert_eq!(cfg3.policies[0].masking.len(), 1);
    let events = Api::<Event>::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(60), "CompileError event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("CompileError"))
            .then_some(())
    })
    .await;

    // Fixing it is accepted again.
    gps.patch(
        "gdpr",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"masking": [
        {"name": "emails", "detector": "email", "strategy": "partial"},
        {"name": "tickets", "detector": "regex", "pattern": "TICKET-(\\d+)"}]}})),
    )
    .await
    .expect("fixed edit");
    let (_, cfg4) = eventually(Duration::from_secs(60), "fixed config", || async {
        config(&client, &ns)
            .await
            .filter(|(_, c)| c.policies.first().is_some_and(|p| p.masking.len() == 2))
    })
    .await;
    assert_eq!(
        cfg4.policies[0].masking[1].pattern.as_deref(),
        Some("TICKET-(\\d+)")
    );

    // Deleting the policy takes it out of the configuration before it is gone.
    gps.delete("gdpr", &DeleteParams::default())
        .await
        .expect("delete");
    let (_, cfg5) = eventually(Duration::from_secs(60), "policy removed", || async {
        config(&client, &ns)
            .await
            .filter(|(_, c)| c.policies.is_empty())
    })
    .await;
    assert!(cfg5.resources[0].policies.is_empty());
    eventually(Duration::from_secs(60), "policy gone", || async {
        gps.get_opt("gdpr").await.ok()?.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn webhooks_use_the_operators_ca_refuse_bad_policies_and_stamp_the_config_hash() {
    let client = client().await;
    let settings = &operator().settings;
    // The operator put its CA into the webhook configuration.
    let ca = eventually(Duration::from_secs(60), "caBundle", || async {
        let cfg = Api::<MutatingWebhookConfiguration>::all(client.clone())
            .get(WEBHOOKS)
            .await
            .ok()?;
        cfg.webhooks?.first()?.client_config.ca_bundle.clone()
    })
    .await;
    let tls = Api::<Secret>::namespaced(client.clone(), &settings.namespace)
        .get("portcullis-webhook-tls")
        .await
        .expect("cert secret");
    assert_eq!(tls.data.as_ref().and_then(|d| d.get("ca.crt")), Some(&ca));

    let ns = scoped_namespace(&client, "gp-validate", true).await;
    wait_until_injecting(&client, &ns).await;
    let gps: Api<GatewayPolicy> = Api::namespaced(client.clone(), &ns);
    let err = gps
        .create(
            &PostParams::default(),
            &policy(
                "bad",
                json!({"masking": [{"name": "ids", "detector": "regex", "pattern": "[a-"}]}),
            ),
        )
        .await
        .expect_err("refused");
    let msg = err.to_string();
    assert!(msg.contains("GatewayPolicy bad does not compile: masking rule ids: pattern \"[a-\" is not a valid regular expression"), "{msg}");
    let err = gps
        .create(
            &PostParams::default(),
            &policy(
                "conflict",
                json!({"masking": [
            {"name": "a", "columns": ["customers.email"], "strategy": "hash"},
            {"name": "b", "columns": ["public.customers.email"], "strategy": "redact"}]}),
            ),
        )
        .await
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("conflicting masking rules: a and b both mask public.customers.email"),
        "{err}"
    );

    // A good policy compiles; a pod then starts with the hash of that configuration.
    secret(
        &client,
        &ns,
        "customers-db-credentials",
        &[("username", "app"), ("password", "p")],
    )
    .await;
    postgres_resource(
        &client,
        &ns,
        "customers-db",
        5432,
        "customers-db-credentials",
    )
    .await;
    gps.create(
        &PostParams::default(),
        &policy(
            "gdpr",
            json!({"masking": [{"name": "emails", "detector": "email"}]}),
        ),
    )
    .await
    .expect("good policy admitted");
    let (hash, _) = eventually(Duration::from_secs(60), "config", || async {
        config(&client, &ns)
            .await
            .filter(|(_, c)| !c.policies.is_empty() && !c.resources.is_empty())
    })
    .await;
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("portcullis-sidecar-config")
        .await
        .expect("cm");
    let data = cm.data.unwrap_or_default();
    assert!(data
        .get("ca.crt")
        .is_some_and(|c| c.contains("BEGIN CERTIFICATE")));
    assert_eq!(
        data.get("token").map(String::as_str),
        Some(portcullis_operator::inject::PLACEHOLDER_TOKEN)
    );
    eventually(Duration::from_secs(60), "sidecar TLS secret", || async {
        Api::<Secret>::namespaced(client.clone(), &ns)
            .get_opt("portcullis-sidecar-tls")
            .await
            .ok()?
    })
    .await;
    // The key of the hash masking strategy: made once, random, where the config points.
    let masking_key = || async {
        let secret = Api::<Secret>::namespaced(client.clone(), &ns)
            .get_opt("portcullis-masking-key")
            .await
            .ok()??;
        let key = secret.data?.get("key")?.0.clone();
        Some(String::from_utf8(key).expect("text"))
    };
    let key = eventually(Duration::from_secs(60), "masking key secret", masking_key).await;
    assert_eq!(key.len(), 64, "{key}");
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
    let config =
        SidecarConfig::from_yaml(data.get("sidecar.yaml").expect("config")).expect("parse");
    assert_eq!(
        config.masking.hash_key_file.as_deref(),
        Some(std::path::Path::new("/var/run/portcullis/masking-key/key"))
    );
    // The webhook reads the hash from its cache of the ConfigMaps, which follows the API
    // server by a watch event.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually(
        Duration::from_secs(60),
        "webhook sees the config",
        || async {
            let p = pods
                .create(&dry, &restricted_pod("agent", json!({})))
                .await
                .ok()?;
            (p.metadata.annotations?.get("portcullis.dev/config-hash") == Some(&hash)).then_some(())
        },
    )
    .await;
    let pod = create_pod(&client, &ns, &restricted_pod("agent", json!({})))
        .await
        .expect("pod");
    assert_eq!(
        pod.metadata
            .annotations
            .unwrap_or_default()
            .get("portcullis.dev/config-hash"),
        Some(&hash)
    );

    // The resource counts the pod bound to it.
    let prs: Api<ProtectedResource> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(60), "boundPods", || async {
        (prs.get("customers-db").await.ok()?.status?.bound_pods == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn metrics_health_and_readiness_are_served() {
    let client = client().await;
    let settings = &operator().settings;
    let port = settings.metrics_addr.expect("metrics addr").port();
    let (code, body) = eventually(Duration::from_secs(60), "readyz", || async {
        let (code, body) = http_get(port, "/readyz").await;
        (code == 200).then_some((code, body))
    })
    .await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    assert_eq!(http_get(port, "/healthz").await.0, 200);
    // Some reconciles have run by now.
    let ns = harness().namespace("metrics").await;
    postgres_resource(&client, &ns, "db", 5432, "missing").await;
    let body = eventually(Duration::from_secs(60), "reconcile metrics", || async {
        let (_, body) = http_get(port, "/metrics").await;
        body.contains("portcullis_reconcile_total{controller=\"protectedresource\",result=\"ok\"}")
            .then_some(body)
    })
    .await;
    for metric in [
        "portcullis_reconcile_duration_seconds_bucket",
        "portcullis_controller_queue_depth",
        "portcullis_leader 1",
    ] {
        assert!(body.contains(metric), "{metric} missing from:\n{body}");
    }
}

#[tokio::test]
async fn access_requests_move_through_their_phases_with_events() {
    let client = client().await;
    // In a namespace of its own with the decision webhooks of this operator.
    let ns = scoped_namespace(&client, "ar-lifecycle", false).await;
    let policy: GatewayPolicy = serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "GatewayPolicy",
        "metadata": {"name": "writes"},
        "spec": {
            "guardrails": [{"name": "writes", "match": {"statementKinds": ["delete"]}, "action": "requireApproval"}],
            "approval": {"approverUsers": ["e2e-admin"], "timeout": "8s", "grantDuration": "4s"}
        }
    }))
    .expect("policy");
    // The operator of this file may still be starting its webhook server.
    let policies = Api::<GatewayPolicy>::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(60), "the policy admitted", || async {
        policies.create(&PostParams::default(), &policy).await.ok()
    })
    .await;
    let api: Api<portcullis_crds::AccessRequest> = Api::namespaced(client.clone(), &ns);
    // Requests are created by the requester's own account (admission checks it).
    let agent = common::service_account_client(
        &client,
        &ns,
        "agent",
        json!([{"apiGroups": ["portcullis.dev"], "resources": ["accessrequests"], "verbs": ["create"]}]),
    )
    .await;
    let agent_api: Api<portcullis_crds::AccessRequest> = Api::namespaced(agent, &ns);
    let request = |name: &str| -> portcullis_crds::AccessRequest {
        common::with_fingerprint(serde_json::from_value(json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "AccessRequest",
            "metadata": {"name": name},
            "spec": {
                "requester": {"name": "agent", "serviceAccount": format!("system:serviceaccount:{ns}:agent")},
                "resource": "db", "policy": "writes", "rule": "writes",
                "operation": {"kind": "sql", "statement": "DELETE FROM t WHERE id = 1", "fingerprint": "f"}
            }
        }))
        .expect("request"))
    };
    for name in ["times-out", "approved", "denied"] {
        agent_api
            .create(&PostParams::default(), &request(name))
            .await
            .expect("create");
    }
    let phase = |name: &'static str| {
        let api = api.clone();
        async move {
            api.get(name)
                .await
                .ok()
                .and_then(|a| a.status)
                .map(|s| (s.phase, s.expires_at))
        }
    };
    eventually(Duration::from_secs(20), "times-out Pending", || async {
        phase("times-out")
            .await
            .filter(|(p, e)| *p == portcullis_crds::AccessRequestPhase::Pending && e.is_some())
    })
    .await;
    let decide = |name: &'static str, verdict: &'static str| {
        let api = api.clone();
        async move {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"spec": {"decision": {"verdict": verdict, "reason": "ticket 7"}}}),
                ),
            )
            .await
            .expect("decide");
        }
    };
    decide("approved", "Approved").await;
    decide("denied", "Denied").await;
    eventually(Duration::from_secs(20), "approved Approved", || async {
        phase("approved")
            .await
            .filter(|(p, e)| *p == portcullis_crds::AccessRequestPhase::Approved && e.is_some())
    })
    .await;
    eventually(Duration::from_secs(20), "denied Denied", || async {
        phase("denied")
            .await
            .filter(|(p, _)| *p == portcullis_crds::AccessRequestPhase::Denied)
    })
    .await;
    // The 8 s approval timeout and the 4 s grant run out.
    eventually(Duration::from_secs(30), "times-out Expired", || async {
        phase("times-out")
            .await
            .filter(|(p, _)| *p == portcullis_crds::AccessRequestPhase::Expired)
    })
    .await;
    eventually(Duration::from_secs(30), "approved Expired", || async {
        phase("approved")
            .await
            .filter(|(p, _)| *p == portcullis_crds::AccessRequestPhase::Expired)
    })
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let reasons = eventually(Duration::from_secs(20), "events", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let reasons: Vec<String> = list.items.iter().filter_map(|e| e.reason.clone()).collect();
        [
            "Requested",
            "Approved",
            "Denied",
            "TimedOut",
            "GrantExpired",
        ]
        .iter()
        .all(|r| reasons.iter().any(|x| x == r))
        .then_some(reasons)
    })
    .await;
    assert!(reasons.contains(&"GrantExpired".to_owned()));
    let stamped = api
        .get("approved")
        .await
        .expect("get")
        .spec
        .decision
        .expect("decision");
    assert_eq!(
        stamped.decided_by.as_deref(),
        Some("e2e-admin"),
        "stamped by the decision webhook"
    );
}
