//! The sidecar injection webhook against the real kube-apiserver: the webhook runs in this
//! process on 127.0.0.1 and is registered with `clientConfig.url`; each test scopes its
//! webhook configurations to its own namespaces.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use portcullis_crds::ProtectedResource;
use portcullis_e2e::harness;
use portcullis_operator::inject::{self, InjectInput, SidecarSettings, SERVICE_ACCOUNT_DIR};
use serde_json::json;

struct Setup {
    client: kube::Client,
    webhook: Webhook,
    name: String,
}

async fn setup(scope: &str) -> Setup {
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let webhook = Webhook::start(client.clone()).await;
    let name = format!("portcullis-test-{scope}");
    register(
        &client,
        &options(&name, webhook.url(), Some(webhook.ca_pem.clone()), scope),
    )
    .await;
    Setup {
        client,
        webhook,
        name,
    }
}

/// A namespace in the test's scope, optionally labelled for injection.
async fn namespace(s: &Setup, scope: &str, inject: bool, extra: &[(&str, &str)]) -> String {
    let ns = harness().namespace(scope).await;
    let mut labels = vec![(TEST_LABEL, scope)];
    if inject {
        labels.push(("portcullis.dev/inject", "enabled"));
    }
    labels.extend_from_slice(extra);
    label_namespace(&s.client, &ns, &labels).await;
    ns
}

fn containers(pod: &Pod) -> Vec<&Container> {
    let spec = pod.spec.as_ref().expect("spec");
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect()
}

fn sidecar(pod: &Pod) -> &Container {
    let spec = pod.spec.as_ref().expect("spec");
    let inits = spec.init_containers.as_ref().expect("init containers");
    assert_eq!(
        inits[0].name, "portcullis-sidecar",
        "the sidecar is the first init container"
    );
    &inits[0]
}

/// No volume an agent container mounts holds a Secret or a service-account token.
fn assert_agents_isolated(pod: &Pod) {
    let spec = pod.spec.as_ref().expect("spec");
    let volumes = spec.volumes.as_ref().expect("volumes");
    for v in volumes {
        assert!(
            !v.name.starts_with("kube-api-access-"),
            "token volume {} left in the pod",
            v.name
        );
    }
    for c in containers(pod)
        .into_iter()
        .filter(|c| c.name != "portcullis-sidecar")
    {
        for e in c.env.iter().flatten() {
            assert!(
                e.value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                    .is_none(),
                "{}: {e:?}",
                c.name
            );
        }
        for m in c.volume_mounts.iter().flatten() {
            let v = volumes
                .iter()
                .find(|v| v.name == m.name)
                .expect("mounted volume exists");
            assert!(
                v.secret.is_none(),
                "{} mounts secret volume {}",
                c.name,
                v.name
            );
            for s in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
                assert!(
                    s.secret.is_none(),
                    "{} mounts projected secret {}",
                    c.name,
                    v.name
                );
                assert!(
                    s.service_account_token.is_none(),
                    "{} mounts a token via {}",
                    c.name,
                    v.name
                );
            }
        }
    }
}

#[tokio::test]
async fn injected_pod_has_the_exact_sidecar_and_no_credential_reaches_the_agent() {
    let scope = "inject-exact";
    let s = setup(scope).await;
    let ns = namespace(
        &s,
        scope,
        true,
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await;
    secret(
        &s.client,
        &ns,
        "customers-db-credentials",
        &[("username", "app"), ("password", "s3cret")],
    )
    .await;
    postgres_resource(
        &s.client,
        &ns,
        "customers-db",
        5432,
        "customers-db-credentials",
    )
    .await;
    kubernetes_resource(&s.client, &ns, "cluster-api", 6443).await;
    wait_until_injecting(&s.client, &ns).await;

    // Pod Security "restricted" is enforced here: a pod that violates it is refused...
    let bad: Pod = serde_json::from_value(json!({
        "metadata": {"name": "privileged"},
        "spec": {"containers": [{"name": "agent", "image": "registry.example/agent:1"}]},
    }))
    .expect("pod");
    let err = create_pod(&s.client, &ns, &bad)
        .await
        .expect_err("restricted refuses it");
    assert!(
        err.to_string()
            .contains("violates PodSecurity \"restricted"),
        "{err}"
    );
    // ...and the injected pod passes it.
    let pod = create_pod(&s.client, &ns, &restricted_pod("agent", json!({})))
        .await
        .expect("injected pod admitted");

    let sc = serde_json::to_value(sidecar(&pod)).expect("json");
    let expected = json!({
        "name": "portcullis-sidecar",
        "image": SidecarSettings::default().image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "command": ["portcullis-sidecar"],
        "args": ["--config", "/etc/portcullis/config/sidecar.yaml"],
        "env": [
            {"name": "PORTCULLIS_RESOURCES", "value": "cluster-api,customers-db"},
            {"name": "PORTCULLIS_POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
            {"name": "PORTCULLIS_POD_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
            {"name": "PORTCULLIS_SERVICE_ACCOUNT", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.serviceAccountName"}}},
            {"name": "PORTCULLIS_POD_UID", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.uid"}}},
        ],
        "ports": [{"name": "portcullis-adm", "containerPort": 15090, "protocol": "TCP"}],
        "startupProbe": {
            "httpGet": {"path": "/readyz", "port": 15090, "scheme": "HTTP"},
            "periodSeconds": 1, "failureThreshold": 120, "timeoutSeconds": 1, "successThreshold": 1,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": 15090, "scheme": "HTTP"},
            "periodSeconds": 5, "failureThreshold": 3, "timeoutSeconds": 1, "successThreshold": 1,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": 15090, "scheme": "HTTP"},
            "periodSeconds": 10, "failureThreshold": 3, "timeoutSeconds": 1, "successThreshold": 1,
        },
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "privileged": false,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "portcullis-config", "mountPath": "/etc/portcullis/config", "readOnly": true},
            {"name": "portcullis-spool", "mountPath": "/var/run/portcullis/spool"},
            {"name": "portcullis-tls", "mountPath": "/var/run/portcullis/tls", "readOnly": true},
            {"name": "portcullis-masking-key", "mountPath": "/var/run/portcullis/masking-key", "readOnly": true},
            {"name": "portcullis-sidecar-token", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": true},
            {"name": "portcullis-cred-customers-db", "mountPath": "/var/run/portcullis/credentials/customers-db", "readOnly": true},
        ],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    assert_eq!(
        sc,
        expected,
        "sidecar container:\n{}",
        serde_json::to_string_pretty(&sc).unwrap_or_default()
    );

    // The sidecar is there exactly once.
    assert_eq!(
        containers(&pod)
            .iter()
            .filter(|c| c.name == "portcullis-sidecar")
            .count(),
        1
    );

    // The agent: same image, env rewritten to the sidecar, only the placeholder in-cluster config.
    let agent =
        serde_json::to_value(&pod.spec.as_ref().expect("spec").containers[0]).expect("json");
    let env = |n: &str, v: &str| json!({"name": n, "value": v});
    assert_eq!(
        agent["env"],
        json!([
            env("OPENAI_MODEL", "gpt"),
            env("PGHOST", "127.0.0.1"),
            env("PGPORT", "5432"),
            env("DATABASE_URL", "postgresql://127.0.0.1:5432/shop"),
            env("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            env("KUBERNETES_SERVICE_PORT", "6443"),
            env("KUBERNETES_SERVICE_PORT_HTTPS", "6443"),
            env("KUBERNETES_PORT", "tcp://127.0.0.1:6443"),
            env("KUBERNETES_PORT_443_TCP", "tcp://127.0.0.1:6443"),
            env("KUBERNETES_PORT_443_TCP_ADDR", "127.0.0.1"),
            env("KUBERNETES_PORT_443_TCP_PORT", "6443"),
            env("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
            env("PORTCULLIS_CLUSTER_API_HOST", "127.0.0.1"),
            env("PORTCULLIS_CLUSTER_API_PORT", "6443"),
            env("PORTCULLIS_CLUSTER_API_URL", "https://127.0.0.1:6443"),
            env("PORTCULLIS_CUSTOMERS_DB_HOST", "127.0.0.1"),
            env("PORTCULLIS_CUSTOMERS_DB_PORT", "5432"),
            env(
                "PORTCULLIS_CUSTOMERS_DB_URL",
                "postgresql://127.0.0.1:5432/shop"
            ),
        ]),
        "agent env"
    );
    assert_eq!(
        agent["volumeMounts"],
        json!([{"name": "portcullis-agent-serviceaccount", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": true}])
    );
    assert_eq!(agent["image"], json!("registry.example/agent:1"));

    // Volumes: the agent's in-cluster config has no token, the sidecar's has the real one.
    let volumes = serde_json::to_value(
        pod.spec
            .as_ref()
            .expect("spec")
            .volumes
            .as_ref()
            .expect("volumes"),
    )
    .expect("json");
    let volume = |name: &str| {
        volumes
            .as_array()
            .expect("array")
            .iter()
            .find(|v| v["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("volume {name} in {volumes:#}"))
    };
    assert_eq!(
        volume("portcullis-masking-key")["secret"],
        json!({"secretName": "portcullis-masking-key", "defaultMode": 0o644})
    );
    assert_eq!(
        volume("portcullis-agent-serviceaccount")["projected"]["sources"],
        json!([
            {"configMap": {"name": "portcullis-sidecar-config", "items": [{"key": "ca.crt", "path": "ca.crt"}, {"key": "token", "path": "token"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ])
    );
    let token_sources = &volume("portcullis-sidecar-token")["projected"]["sources"];
    assert_eq!(
        token_sources[0],
        json!({"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}})
    );
    assert_eq!(
        token_sources[1],
        json!({"serviceAccountToken": {"path": "audit-token", "audience": "portcullis-audit", "expirationSeconds": 3600}})
    );
    assert_eq!(
        volume("portcullis-cred-customers-db")["secret"]["secretName"],
        json!("customers-db-credentials")
    );
    assert_eq!(
        volume("portcullis-config")["configMap"]["name"],
        json!("portcullis-sidecar-config")
    );
    assert_eq!(volume("portcullis-spool")["emptyDir"], json!({}));
    assert_agents_isolated(&pod);

    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("portcullis.dev/bound-resources")
            .map(String::as_str),
        Some("cluster-api,customers-db")
    );
    assert_eq!(
        annotations
            .get("portcullis.dev/config-hash")
            .map(String::as_str),
        Some("pending")
    );
    assert_eq!(
        pod.metadata
            .labels
            .unwrap_or_default()
            .get("portcullis.dev/injected")
            .map(String::as_str),
        Some("true")
    );

    // A second pass over the admitted pod changes nothing.
    let resources: Vec<ProtectedResource> =
        Api::<ProtectedResource>::namespaced(s.client.clone(), &ns)
            .list(&Default::default())
            .await
            .expect("list")
            .items;
    let created: Pod = Api::<Pod>::namespaced(s.client.clone(), &ns)
        .get("agent")
        .await
        .expect("get");
    let again = inject::inject(
        &created,
        &InjectInput {
            namespace: &ns,
            resources: &resources,
            config_hash: Some("pending".into()),
            sidecar: &SidecarSettings::default(),
            token_secrets: Default::default(),
        },
    )
    .expect("second pass");
    assert_eq!(
        serde_json::to_value(&again).ok(),
        serde_json::to_value(&created).ok()
    );

    unregister(&s.client, &s.name).await;
    s.webhook.stop().await;
}

fn has_sidecar(pod: &Pod) -> bool {
    containers(pod)
        .iter()
        .any(|c| c.name == "portcullis-sidecar")
}

#[tokio::test]
async fn deployment_pods_are_injected_in_labelled_namespaces_only() {
    let scope = "inject-deploy";
    let s = setup(scope).await;
    let labelled = namespace(&s, scope, true, &[]).await;
    let plain = namespace(&s, scope, false, &[]).await;
    postgres_resource(
        &s.client,
        &labelled,
        "orders-db",
        5433,
        "orders-db-credentials",
    )
    .await;
    wait_until_injecting(&s.client, &labelled).await;

    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "agent", "image": "registry.example/agent:1"}]},
            },
        },
    }))
    .expect("deployment");
    for ns in [&labelled, &plain] {
        let d = Api::<Deployment>::namespaced(s.client.clone(), ns)
            .create(&PostParams::default(), &deployment)
            .await
            .expect("create deployment");
        // What the ReplicaSet controller creates from the template: a pod with a generated name.
        let template = d.spec.expect("spec").template;
        let mut pod = Pod {
            metadata: template.metadata.unwrap_or_default(),
            spec: template.spec,
            status: None,
        };
        pod.metadata.generate_name = Some("agent-7d9f8-".to_owned());
        let created = create_pod(&s.client, ns, &pod).await.expect("create pod");
        if ns == &labelled {
            assert!(has_sidecar(&created), "pod in labelled namespace injected");
            assert_eq!(
                containers(&created)
                    .iter()
                    .filter(|c| c.name == "portcullis-sidecar")
                    .count(),
                1
            );
            let agent = &created.spec.as_ref().expect("spec").containers[0];
            let env: Vec<(String, String)> = agent
                .env
                .iter()
                .flatten()
                .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
                .collect();
            assert!(
                env.contains(&("PGPORT".to_owned(), "5433".to_owned())),
                "{env:?}"
            );
            assert!(
                env.contains(&(
                    "DATABASE_URL".to_owned(),
                    "postgresql://127.0.0.1:5433/shop".to_owned()
                )),
                "{env:?}"
            );
            assert_agents_isolated(&created);
        } else {
            assert!(
                !has_sidecar(&created),
                "pod in unlabelled namespace untouched"
            );
            let volumes = created
                .spec
                .as_ref()
                .expect("spec")
                .volumes
                .clone()
                .unwrap_or_default();
            assert!(
                volumes
                    .iter()
                    .any(|v| v.name.starts_with("kube-api-access-")),
                "unlabelled pod keeps its ordinary token"
            );
            assert!(!created
                .metadata
                .annotations
                .unwrap_or_default()
                .contains_key("portcullis.dev/config-hash"));
        }
    }
    unregister(&s.client, &s.name).await;
    s.webhook.stop().await;
}

#[tokio::test]
async fn pods_opt_out_and_opt_in_by_annotation_and_bind_named_resources() {
    let scope = "inject-opt";
    let s = setup(scope).await;
    let labelled = namespace(&s, scope, true, &[]).await;
    let plain = namespace(&s, scope, false, &[]).await;
    for ns in [&labelled, &plain] {
        postgres_resource(
            &s.client,
            ns,
            "customers-db",
            5432,
            "customers-db-credentials",
        )
        .await;
        postgres_resource(&s.client, ns, "orders-db", 5433, "orders-db-credentials").await;
    }
    wait_until_injecting(&s.client, &labelled).await;

    let out = restricted_pod(
        "opted-out",
        json!({"metadata": {"annotations": {"portcullis.dev/inject": "disabled"}}}),
    );
    let err = create_pod(&s.client, &labelled, &out)
        .await
        .expect_err("opting out is a privilege nobody holds by default");
    assert!(
        err.to_string()
            .contains("opts a pod out of the Portcullis sidecar, which in a protected namespace only the users the operator is configured to trust (none are configured) may do"),
        "{err}"
    );

    let named = restricted_pod(
        "named",
        json!({"metadata": {"annotations": {"portcullis.dev/resources": "orders-db"}}}),
    );
    let created = create_pod(&s.client, &labelled, &named)
        .await
        .expect("named pod");
    assert_eq!(
        created
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .get("portcullis.dev/bound-resources")
            .map(String::as_str),
        Some("orders-db")
    );
    let mounts: Vec<String> = sidecar(&created)
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.clone())
        .collect();
    assert!(
        mounts.contains(&"/var/run/portcullis/credentials/orders-db".to_owned()),
        "{mounts:?}"
    );
    assert!(
        !mounts.contains(&"/var/run/portcullis/credentials/customers-db".to_owned()),
        "{mounts:?}"
    );

    let unknown = restricted_pod(
        "unknown",
        json!({"metadata": {"annotations": {"portcullis.dev/resources": "orders-db,payroll-db"}}}),
    );
    let err = create_pod(&s.client, &labelled, &unknown)
        .await
        .expect_err("unknown resource refused");
    assert!(
        err.to_string()
            .contains("names ProtectedResource \"payroll-db\", which does not exist"),
        "{err}"
    );

    // Elsewhere, a pod opts in by annotation.
    let opt_in = restricted_pod(
        "opted-in",
        json!({"metadata": {"annotations": {"portcullis.dev/inject": "enabled"}}}),
    );
    let created = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let api: Api<Pod> = Api::namespaced(s.client.clone(), &plain);
            let p = api
                .create(
                    &PostParams {
                        dry_run: true,
                        ..Default::default()
                    },
                    &opt_in,
                )
                .await
                .expect("dry run");
            if has_sidecar(&p) {
                break create_pod(&s.client, &plain, &opt_in)
                    .await
                    .expect("opted-in pod");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("opt-in webhook active");
    assert!(has_sidecar(&created));
    assert_agents_isolated(&created);
    let plain_pod = create_pod(&s.client, &plain, &restricted_pod("plain", json!({})))
        .await
        .expect("plain pod");
    assert!(!has_sidecar(&plain_pod));
    unregister(&s.client, &s.name).await;
    s.webhook.stop().await;
}

#[tokio::test]
async fn agent_containers_asking_for_the_credential_are_refused() {
    let scope = "inject-refuse";
    let s = setup(scope).await;
    let ns = namespace(&s, scope, true, &[]).await;
    secret(
        &s.client,
        &ns,
        "customers-db-credentials",
        &[("username", "app"), ("password", "s3cret")],
    )
    .await;
    secret(&s.client, &ns, "unrelated", &[("api-key", "k")]).await;
    postgres_resource(
        &s.client,
        &ns,
        "customers-db",
        5432,
        "customers-db-credentials",
    )
    .await;
    wait_until_injecting(&s.client, &ns).await;

    let cases = [
        (
            "env",
            json!({"spec": {"containers": [{"name": "agent", "image": "a", "env": [
            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "customers-db-credentials", "key": "password"}}}]}]}}),
            "(env var DB_PASSWORD valueFrom secretKeyRef)",
        ),
        (
            "envfrom",
            json!({"spec": {"containers": [{"name": "agent", "image": "a", "envFrom": [{"secretRef": {"name": "customers-db-credentials"}}]}]}}),
            "(envFrom secretRef)",
        ),
        (
            "volume",
            json!({"spec": {
            "volumes": [{"name": "creds", "secret": {"secretName": "customers-db-credentials"}}],
            "containers": [{"name": "agent", "image": "a", "volumeMounts": [{"name": "creds", "mountPath": "/creds"}]}]}}),
            "(volume creds)",
        ),
        (
            "projected",
            json!({"spec": {
            "volumes": [{"name": "creds", "projected": {"sources": [{"secret": {"name": "customers-db-credentials"}}]}}],
            "initContainers": [{"name": "migrate", "image": "a", "volumeMounts": [{"name": "creds", "mountPath": "/creds"}]}],
            "containers": [{"name": "agent", "image": "a"}]}}),
            "(projected volume creds)",
        ),
        (
            "unmounted",
            json!({"spec": {
            "volumes": [{"name": "later", "secret": {"secretName": "customers-db-credentials"}}],
            "containers": [{"name": "agent", "image": "a"}]}}),
            "(volume later)",
        ),
    ];
    for (name, extra, how) in cases {
        let mut pod = json!({"metadata": {"name": name}});
        merge(&mut pod, extra);
        let pod: Pod = serde_json::from_value(pod).expect("pod");
        let err = create_pod(&s.client, &ns, &pod).await.expect_err(name);
        let msg = err.to_string();
        assert!(
            msg.contains("reads Secret \"customers-db-credentials\""),
            "{name}: {msg}"
        );
        assert!(msg.contains(how), "{name}: {msg}");
        assert!(
            msg.contains("holds the credential of ProtectedResource \"customers-db\""),
            "{name}: {msg}"
        );
        assert!(
            msg.contains("Portcullis mounts credentials into its sidecar only"),
            "{name}: {msg}"
        );
        assert!(
            msg.contains("PGHOST, PGPORT, DATABASE_URL"),
            "{name}: {msg}"
        );
    }

    // So is the sidecar's masking key.
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "masking-key"}, "spec": {
        "volumes": [{"name": "key", "secret": {"secretName": "portcullis-masking-key"}}],
        "containers": [{"name": "agent", "image": "a", "volumeMounts": [{"name": "key", "mountPath": "/key"}]}]}}))
    .expect("pod");
    let msg = create_pod(&s.client, &ns, &pod)
        .await
        .expect_err("masking key")
        .to_string();
    assert!(
        msg.contains("reads Secret \"portcullis-masking-key\" (volume key)"),
        "{msg}"
    );

    // A token of its own is refused too.
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "own-token"}, "spec": {
        "volumes": [{"name": "tok", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}],
        "containers": [{"name": "agent", "image": "a", "volumeMounts": [{"name": "tok", "mountPath": "/tok"}]}]}}))
    .expect("pod");
    let err = create_pod(&s.client, &ns, &pod)
        .await
        .expect_err("own token");
    assert!(
        err.to_string().contains("projects a service-account token"),
        "{err}"
    );

    // Other Secrets stay usable.
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "other-secret"}, "spec": {"containers": [{"name": "agent", "image": "a", "env": [
        {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "unrelated", "key": "api-key"}}}]}]}}))
    .expect("pod");
    let created = create_pod(&s.client, &ns, &pod)
        .await
        .expect("unrelated secret allowed");
    assert!(has_sidecar(&created));

    // kubectl debug cannot reach the sidecar's credentials either.
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), &ns);
    let debug = |name: &str, mount: &str| {
        json!({"spec": {"ephemeralContainers": [{
            "name": name, "image": "busybox", "volumeMounts": [{"name": mount, "mountPath": "/x"}],
        }]}})
    };
    let err = pods
        .patch_ephemeral_containers(
            "other-secret",
            &PatchParams::default(),
            &Patch::Strategic(debug("steal", "portcullis-cred-customers-db")),
        )
        .await
        .expect_err("debug container mounting credentials refused");
    assert!(err.to_string().contains("ephemeral container \"steal\" refers to portcullis-cred-customers-db, which only the Portcullis sidecar may use"), "{err}");
    let err = pods
        .patch_ephemeral_containers(
            "other-secret",
            &PatchParams::default(),
            &Patch::Strategic(debug("token", "portcullis-sidecar-token")),
        )
        .await
        .expect_err("debug container mounting the real token refused");
    assert!(
        err.to_string().contains("portcullis-sidecar-token"),
        "{err}"
    );
    pods.patch_ephemeral_containers(
        "other-secret",
        &PatchParams::default(),
        &Patch::Strategic(debug("debug", "portcullis-agent-serviceaccount")),
    )
    .await
    .expect("an ordinary debug container is allowed");
    unregister(&s.client, &s.name).await;
    s.webhook.stop().await;
}

#[tokio::test]
async fn with_the_webhook_down_labelled_namespaces_refuse_pods_and_others_do_not() {
    let scope = "inject-down";
    let s = setup(scope).await;
    let labelled = namespace(&s, scope, true, &[]).await;
    let plain = namespace(&s, scope, false, &[]).await;
    wait_until_injecting(&s.client, &labelled).await;
    let before = create_pod(&s.client, &labelled, &restricted_pod("before", json!({})))
        .await
        .expect("admitted while up");
    assert!(has_sidecar(&before));
    let observed = s
        .webhook
        .metrics
        .admission_duration
        .with_label_values(&["inject", "true"])
        .get_sample_count();
    assert!(observed >= 1, "the webhook's own histogram saw the review");

    let Setup {
        client,
        webhook,
        name,
    } = s;
    webhook.stop().await;
    let err = create_pod(&client, &labelled, &restricted_pod("while-down", json!({})))
        .await
        .expect_err("refused while down");
    let msg = err.to_string();
    assert!(
        msg.contains("failed calling webhook \"inject.portcullis.dev\""),
        "{msg}"
    );
    let admitted = create_pod(&client, &plain, &restricted_pod("elsewhere", json!({})))
        .await
        .expect("unlabelled namespace unaffected");
    assert!(!has_sidecar(&admitted));
    let opted_in_elsewhere = restricted_pod(
        "opt-in-down",
        json!({"metadata": {"annotations": {"portcullis.dev/inject": "enabled"}}}),
    );
    create_pod(&client, &plain, &opted_in_elsewhere)
        .await
        .expect("opt-in webhook fails open outside labelled namespaces");
    unregister(&client, &name).await;
}

/// One escape attempt of the table: what is sent, and the refusal it must meet.
struct Attempt {
    family: &'static str,
    how: How,
    refused_with: &'static str,
}

enum How {
    /// Create this pod.
    Create(serde_json::Value),
    /// Strategic-merge patch pod `victim`.
    Update(serde_json::Value),
    /// Strategic-merge patch the ephemeral containers of pod `victim`.
    Ephemeral(serde_json::Value),
    /// Create this Secret.
    Secret(serde_json::Value),
    /// Request a token for service account `default`.
    TokenRequest,
}

/// Send an attempt as `client` into `ns`.
async fn attempt(client: &kube::Client, ns: &str, how: &How) -> Result<(), kube::Error> {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pp = PatchParams::default();
    match how {
        How::Create(pod) => {
            let pod: Pod = serde_json::from_value(pod.clone()).expect("pod");
            pods.create(&PostParams::default(), &pod).await.map(drop)
        }
        How::Update(patch) => pods
            .patch("victim", &pp, &Patch::Strategic(patch))
            .await
            .map(drop),
        How::Ephemeral(patch) => pods
            .patch_ephemeral_containers("victim", &pp, &Patch::Strategic(patch))
            .await
            .map(drop),
        How::Secret(secret) => {
            let secret: Secret = serde_json::from_value(secret.clone()).expect("secret");
            Api::<Secret>::namespaced(client.clone(), ns)
                .create(&PostParams::default(), &secret)
                .await
                .map(drop)
        }
        How::TokenRequest => Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .create_token_request("default", &PostParams::default(), &TokenRequest::default())
            .await
            .map(drop),
    }
}

fn agent_pod(name: &str, spec: serde_json::Value) -> serde_json::Value {
    let mut pod = json!({"metadata": {"name": name}, "spec": {
        "containers": [{"name": "agent", "image": "registry.example/agent:1"}]}});
    merge(&mut pod, json!({"spec": spec}));
    pod
}

/// Every family of escape the issue lists, as a namespace user with `edit` and
/// `pods/ephemeralcontainers` (alice), on creation, update and ephemeral containers: each is
/// first admitted in an unlabelled twin namespace (so the attempt is real), then refused in the
/// labelled one. Then the agent itself tries the same through its sidecar's Kubernetes API
/// proxy, which refuses with the webhook's message and records it.
#[tokio::test]
async fn escape_attempts_are_refused_on_every_path() {
    use k8s_openapi::api::core::v1::Secret;
    use portcullis_e2e::User;
    use portcullis_operator::webhook::OptOutTrust;

    let scope = "inject-escape";
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let webhook = Webhook::start_trusting(
        client.clone(),
        OptOutTrust {
            groups: vec!["system:masters".to_owned()],
            service_accounts: Vec::new(),
        },
    )
    .await;
    let name = format!("portcullis-test-{scope}");
    register(
        &client,
        &options(&name, webhook.url(), Some(webhook.ca_pem.clone()), scope),
    )
    .await;

    // Twin namespaces with the same Secrets (the token Secret is made before the
    // ValidatingAdmissionPolicy applies to the labelled one).
    let labelled = h.namespace(scope).await;
    let plain = h.namespace(scope).await;
    for ns in [&labelled, &plain] {
        label_namespace(&client, ns, &[(TEST_LABEL, scope)]).await;
        secret(
            &client,
            ns,
            "customers-db-credentials",
            &[("password", "s3cret")],
        )
        .await;
        create::<Secret>(
            &client,
            ns,
            json!({"metadata": {"name": "default-token",
            "annotations": {"kubernetes.io/service-account.name": "default"}},
            "type": "kubernetes.io/service-account-token"}),
        )
        .await;
        h.service_account(ns, "agent").await;
        // The rules of the built-in `edit` role these attempts use (the harness runs no
        // controller-manager, whose aggregation fills `edit`), plus the grant on
        // pods/ephemeralcontainers that teams add for kubectl debug.
        let all = [
            "get", "list", "watch", "create", "update", "patch", "delete",
        ];
        create::<k8s_openapi::api::rbac::v1::Role>(&client, ns, json!({"metadata": {"name": "edit-and-debug"}, "rules": [
            {"apiGroups": [""], "resources": ["pods", "secrets", "configmaps"], "verbs": all},
            {"apiGroups": ["apps"], "resources": ["deployments", "replicasets", "statefulsets", "daemonsets"], "verbs": all},
            {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": all},
            {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "verbs": ["get", "patch", "update"]}]}))
        .await;
        for (binding, role_kind, role) in [("edit-and-debug", "Role", "edit-and-debug")] {
            create::<k8s_openapi::api::rbac::v1::RoleBinding>(&client, ns, json!({
                "metadata": {"name": binding},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": User::Owner.name()},
                    {"kind": "ServiceAccount", "name": "agent", "namespace": ns},
                ]}))
            .await;
        }
    }
    postgres_resource(
        &client,
        &labelled,
        "customers-db",
        5432,
        "customers-db-credentials",
    )
    .await;
    // The sidecar's own token, requested before the policy applies.
    let sidecar_token = h.token(&labelled, "agent", None, None).await;
    label_namespace(&client, &labelled, &[("portcullis.dev/inject", "enabled")]).await;
    wait_until_injecting(&client, &labelled).await;

    // The chart's ValidatingAdmissionPolicy, scoped to this test's namespaces.
    let rendered = h.state_dir().to_owned() + "/escape-vap.yaml";
    let out = std::process::Command::new(h.helm_path())
        .args([
            "template",
            "escape",
            &portcullis_e2e::repo_root()
                .join("charts/portcullis")
                .to_string_lossy(),
            "--kube-version",
            "1.34.0",
            "--namespace",
            "portcullis-system",
            "--show-only",
            "templates/admission-policy.yaml",
            "--set",
            &format!("webhook.namespaceLabels.portcullis\\.dev/test={scope}"),
        ])
        .output()
        .expect("helm template");
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(&rendered, &out.stdout).expect("write policy");
    let applied = h.kubectl(&["apply", "-f", &rendered]);
    assert!(applied.status.success(), "{}", text(&applied));

    let alice = h.client_as(User::Owner).await;
    // The pod every update and ephemeral attempt targets: injected in the labelled
    // namespace; in the twin, a look-alike with the same container and volume names.
    attempt(
        &alice,
        &labelled,
        &How::Create(agent_pod("victim", json!({}))),
    )
    .await
    .expect("victim injected");
    attempt(&alice, &plain, &How::Create(agent_pod("victim", json!({
        "volumes": [{"name": "portcullis-cred-customers-db", "secret": {"secretName": "customers-db-credentials"}}],
        "initContainers": [{"name": "portcullis-sidecar", "image": "portcullis-sidecar:1", "restartPolicy": "Always",
            "volumeMounts": [{"name": "portcullis-cred-customers-db", "mountPath": "/creds"}]}]}))))
        .await
        .expect("look-alike victim");
    // The policy reaches the API server's cache asynchronously.
    let dry = alice.clone();
    eventually(Duration::from_secs(30), "the token policy to apply", || {
        let dry = dry.clone();
        let labelled = labelled.clone();
        async move {
            let api: Api<Secret> = Api::namespaced(dry, &labelled);
            let s: Secret = serde_json::from_value(json!({"metadata": {"name": "probe-token",
                "annotations": {"kubernetes.io/service-account.name": "default"}},
                "type": "kubernetes.io/service-account-token"}))
            .expect("secret");
            let pp = PostParams {
                dry_run: true,
                ..Default::default()
            };
            api.create(&pp, &s).await.is_err().then_some(())
        }
    })
    .await;

    // The operator's own objects (the chart's managed-objects policy): the twin namespace's
    // RBAC lets alice create them there; in the labelled one every create, update and delete
    // is refused, so nobody but the operator can point the sidecar elsewhere.
    let managed_refusal = "is managed by the Portcullis operator in namespaces it protects";
    for (kind, name) in [
        ("configmaps", "portcullis-sidecar-config"),
        ("secrets", "portcullis-masking-key"),
        ("secrets", "portcullis-sidecar-tls"),
    ] {
        write_managed(&alice, &plain, kind, name, false)
            .await
            .unwrap_or_else(|e| panic!("{kind}/{name} in the twin namespace: {e}"));
        for delete in [false, true] {
            if delete {
                // A cluster administrator may still write it (here: make sure it exists).
                write_managed(&client, &labelled, kind, name, false)
                    .await
                    .unwrap_or_else(|e| panic!("{kind}/{name} as an administrator: {e}"));
            }
            let refused = eventually(
                Duration::from_secs(30),
                "the managed-objects policy",
                || {
                    let alice = alice.clone();
                    let labelled = labelled.clone();
                    async move {
                        write_managed(&alice, &labelled, kind, name, delete)
                            .await
                            .err()
                    }
                },
            )
            .await;
            assert!(
                refused.contains(managed_refusal),
                "{kind}/{name} (delete: {delete}): {refused}"
            );
        }
    }

    let cred_env = json!([{"name": "P", "valueFrom": {"secretKeyRef": {"name": "customers-db-credentials", "key": "password"}}}]);
    let table = [
        Attempt { family: "opt-out annotation by an untrusted user", refused_with: "opts a pod out of the Portcullis sidecar",
            how: How::Create(json!({"metadata": {"name": "opt-out", "annotations": {"portcullis.dev/inject": "disabled"}},
                "spec": {"containers": [{"name": "agent", "image": "a"}]}})) },
        Attempt { family: "own init container named like the sidecar", refused_with: "is named like a part of the Portcullis sidecar",
            how: How::Create(agent_pod("impostor", json!({"initContainers": [{"name": "portcullis-sidecar", "image": "evil", "restartPolicy": "Always", "env": cred_env}]}))) },
        Attempt { family: "own volume named like the sidecar's", refused_with: "volume \"portcullis-spool\" is named like a part of the Portcullis sidecar",
            how: How::Create(agent_pod("impostor-volume", json!({"volumes": [{"name": "portcullis-spool", "secret": {"secretName": "customers-db-credentials"}}]}))) },
        Attempt { family: "update replaces the sidecar image", refused_with: "must stay exactly as the webhook injected it; this update changes its image",
            how: How::Update(json!({"spec": {"initContainers": [{"name": "portcullis-sidecar", "image": "evil:1"}]}})) },
        Attempt { family: "declared but unmounted credential volume", refused_with: "the pod (a volume no container mounts yet) reads Secret \"customers-db-credentials\" (volume later)",
            how: How::Create(agent_pod("unmounted", json!({"volumes": [{"name": "later", "secret": {"secretName": "customers-db-credentials"}}]}))) },
        Attempt { family: "declared but unmounted projected token", refused_with: "mounts volume \"later-token\", which projects a service-account token",
            how: How::Create(agent_pod("unmounted-token", json!({"volumes": [{"name": "later-token", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]}))) },
        Attempt { family: "ephemeral container mounts the sidecar's credential volume", refused_with: "ephemeral container \"steal\" refers to portcullis-cred-customers-db",
            how: How::Ephemeral(json!({"spec": {"ephemeralContainers": [{"name": "steal", "image": "busybox", "volumeMounts": [{"name": "portcullis-cred-customers-db", "mountPath": "/x"}]}]}})) },
        Attempt { family: "ephemeral container reads the credential from env", refused_with: "ephemeral container \"env\" reads Secret \"customers-db-credentials\"",
            how: How::Ephemeral(json!({"spec": {"ephemeralContainers": [{"name": "env", "image": "busybox", "env": cred_env}]}})) },
        Attempt { family: "ephemeral container targets the sidecar", refused_with: "targets container \"portcullis-sidecar\" (targetContainerName)",
            how: How::Ephemeral(json!({"spec": {"ephemeralContainers": [{"name": "join", "image": "busybox", "targetContainerName": "portcullis-sidecar"}]}})) },
        Attempt { family: "ephemeral container as the sidecar's uid", refused_with: "runs as user or group 65532, the Portcullis sidecar's",
            how: How::Ephemeral(json!({"spec": {"ephemeralContainers": [{"name": "same-uid", "image": "busybox", "securityContext": {"runAsUser": 65532}}]}})) },
        Attempt { family: "shareProcessNamespace", refused_with: "sets shareProcessNamespace: true, which puts every container in the Portcullis sidecar's process namespace",
            how: How::Create(agent_pod("shared", json!({"shareProcessNamespace": true}))) },
        Attempt { family: "shareProcessNamespace with agents of other ids", refused_with: "sets shareProcessNamespace: true",
            how: How::Create(agent_pod("shared-ids", json!({"shareProcessNamespace": true, "securityContext": {"runAsUser": 1000, "runAsGroup": 1000}}))) },
        Attempt { family: "hostPID", refused_with: "sets hostPID: true",
            how: How::Create(agent_pod("host-pid", json!({"hostPID": true}))) },
        Attempt { family: "agent runs as the sidecar's uid", refused_with: "runs as user or group 65532",
            how: How::Create(agent_pod("same-uid", json!({"securityContext": {"runAsUser": 65532, "runAsGroup": 65532}}))) },
        Attempt { family: "hostPath of the kubelet's pod directory", refused_with: "mounts host path \"/var/lib/kubelet/pods\"",
            how: How::Create(agent_pod("kubelet-pods", json!({"volumes": [{"name": "h", "hostPath": {"path": "/var/lib/kubelet/pods"}}]}))) },
        Attempt { family: "hostPath of a parent of it", refused_with: "mounts host path \"/var\"; hostPath volumes are refused",
            how: How::Create(agent_pod("var", json!({"volumes": [{"name": "h", "hostPath": {"path": "/var"}}]}))) },
        Attempt { family: "hostPath anywhere else", refused_with: "mounts host path \"/opt/cni/bin\"; hostPath volumes are refused",
            how: How::Create(agent_pod("cni", json!({"volumes": [{"name": "h", "hostPath": {"path": "/opt/cni/bin"}}]}))) },
        Attempt { family: "added capability outside the restricted allow-list", refused_with: "asks for capability net_admin (CAP_NET_ADMIN at run time)",
            how: How::Create(agent_pod("net-admin", json!({"containers": [{"name": "agent", "image": "a", "securityContext": {"capabilities": {"add": ["net_admin"]}}}]}))) },
        Attempt { family: "hostAliases", refused_with: "the pod sets hostAliases",
            how: How::Create(agent_pod("aliases", json!({"hostAliases": [{"ip": "127.0.0.2", "hostnames": ["db"]}]}))) },
        Attempt { family: "dnsConfig", refused_with: "the pod sets dnsConfig",
            how: How::Create(agent_pod("dns", json!({"dnsConfig": {"searches": ["attacker.example"]}}))) },
        Attempt { family: "token Secret made by a namespace user", refused_with: "Secrets of type kubernetes.io/service-account-token are refused",
            how: How::Secret(json!({"metadata": {"name": "stolen-token", "annotations": {"kubernetes.io/service-account.name": "default"}},
                "type": "kubernetes.io/service-account-token"})) },
        Attempt { family: "existing token Secret mounted by an agent", refused_with: "reads Secret \"default-token\" (volume tok), which is of type kubernetes.io/service-account-token",
            how: How::Create(agent_pod("token-secret", json!({"volumes": [{"name": "tok", "secret": {"secretName": "default-token"}}]}))) },
        Attempt { family: "existing token Secret read by an ephemeral container", refused_with: "ephemeral container \"tok\" reads Secret \"default-token\"",
            how: How::Ephemeral(json!({"spec": {"ephemeralContainers": [{"name": "tok", "image": "busybox", "envFrom": [{"secretRef": {"name": "default-token"}}]}]}})) },
        Attempt { family: "TokenRequest by a namespace user", refused_with: "TokenRequests for service account default are refused",
            how: How::TokenRequest },
        Attempt { family: "CSI nodePublishSecretRef naming the credential", refused_with: "(CSI volume csi nodePublishSecretRef)",
            how: How::Create(agent_pod("csi", json!({"volumes": [{"name": "csi", "csi": {"driver": "secrets.example", "nodePublishSecretRef": {"name": "customers-db-credentials"}}}]}))) },
    ];
    let mut failures = Vec::new();
    for a in &table {
        if let Err(e) = attempt(&alice, &plain, &a.how).await {
            failures.push(format!(
                "{}: not even possible without Portcullis: {e}",
                a.family
            ));
            continue;
        }
        match attempt(&alice, &labelled, &a.how).await {
            Ok(()) => failures.push(format!("{}: admitted", a.family)),
            Err(e) if e.to_string().contains(a.refused_with) => {}
            Err(e) => failures.push(format!(
                "{}: refused, but not with {:?}: {e}",
                a.family, a.refused_with
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "escape table:\n{}",
        failures.join("\n")
    );

    // Ordinary work still passes: an agent image update, a plain debug container.
    attempt(&alice, &labelled, &How::Update(json!({"spec": {"containers": [{"name": "agent", "image": "registry.example/agent:2"}]}})))
        .await
        .expect("agent image update");
    attempt(&alice, &labelled, &How::Ephemeral(json!({"spec": {"ephemeralContainers": [{"name": "debug", "image": "busybox", "targetContainerName": "agent"}]}})))
        .await
        .expect("a debug container next to the agent");

    // A trusted user may opt out, but an opted-out pod is checked all the same.
    let trusted_cases = [
        (agent_pod("trusted-impostor", json!({"initContainers": [{"name": "portcullis-sidecar", "image": "evil", "restartPolicy": "Always", "env": cred_env}]})),
            Some("init container \"portcullis-sidecar\" is named \"portcullis-sidecar\"")),
        (agent_pod("trusted-agent-token", json!({})), Some("runs without the Portcullis sidecar as service account \"default\", which the namespace's agents run as")),
        (agent_pod("trusted-plain", json!({"automountServiceAccountToken": false})), None),
    ];
    for (mut pod, refusal) in trusted_cases {
        merge(
            &mut pod,
            json!({"metadata": {"annotations": {"portcullis.dev/inject": "disabled"}}}),
        );
        let result = attempt(&client, &labelled, &How::Create(pod.clone())).await;
        match refusal {
            Some(m) => {
                let e = result.expect_err(m);
                assert!(e.to_string().contains(m), "{e}");
            }
            None => result.expect("a trusted opt-out of a pod that reaches nothing"),
        }
    }

    // The agent, through its own sidecar.
    let (dir, sidecar, agent) = agent_through_sidecar(&labelled, &sidecar_token).await;
    let deployment = |spec: serde_json::Value| {
        json!({"metadata": {"name": "agent-deploy"}, "spec": {"selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}}, "spec": spec}}})
    };
    let through_proxy: Vec<(&str, Result<(), kube::Error>, &str)> = vec![
        ("opt-out annotation", attempt(&agent, &labelled, &How::Create(json!({"metadata": {"name": "opt-out", "annotations": {"portcullis.dev/inject": "disabled"}},
            "spec": {"containers": [{"name": "agent", "image": "a"}]}}))).await, "opts a pod out of the Portcullis sidecar"),
        ("own container named like the sidecar", attempt(&agent, &labelled, &How::Create(agent_pod("impostor", json!({"initContainers": [{"name": "portcullis-sidecar", "image": "evil"}]})))).await,
            "is named \"portcullis-sidecar\""),
        ("update replaces the sidecar image", attempt(&agent, &labelled, &How::Update(json!({"spec": {"initContainers": [{"name": "portcullis-sidecar", "image": "evil:1"}]}}))).await,
            "is named \"portcullis-sidecar\""),
        ("ephemeral container targets the sidecar", attempt(&agent, &labelled, &How::Ephemeral(json!({"spec": {"ephemeralContainers": [{"name": "join", "image": "busybox", "targetContainerName": "portcullis-sidecar"}]}}))).await,
            "(rule builtin/ephemeral-containers)"),
        ("deployment template with hostPath", {
            let d: Deployment = serde_json::from_value(deployment(json!({"containers": [{"name": "a", "image": "a"}], "volumes": [{"name": "h", "hostPath": {"path": "/var/lib/kubelet"}}]}))).expect("deployment");
            Api::<Deployment>::namespaced(agent.clone(), &labelled).create(&PostParams::default(), &d).await.map(drop)
        }, "mounts host path \"/var/lib/kubelet\""),
        ("cronjob template reading the credential", {
            let cj: k8s_openapi::api::batch::v1::CronJob = serde_json::from_value(json!({"metadata": {"name": "cj"}, "spec": {"schedule": "* * * * *",
                "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "a", "env": cred_env}]}}}}}})).expect("cronjob");
            Api::<k8s_openapi::api::batch::v1::CronJob>::namespaced(agent.clone(), &labelled).create(&PostParams::default(), &cj).await.map(drop)
        }, "reads Secret \"customers-db-credentials\" (env var P valueFrom secretKeyRef)"),
        ("shared process namespace", attempt(&agent, &labelled, &How::Create(agent_pod("shared", json!({"shareProcessNamespace": true})))).await,
            "sets shareProcessNamespace: true"),
    ];
    let mut failures = Vec::new();
    for (family, result, message) in through_proxy {
        match result {
            Ok(()) => failures.push(format!("{family}: admitted through the proxy")),
            Err(e)
                if e.to_string().contains(message) && e.to_string().contains("(rule builtin/") => {}
            Err(e) => failures.push(format!(
                "{family}: not refused by the proxy with {message:?}: {e}"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "through the proxy:\n{}",
        failures.join("\n")
    );
    attempt(
        &agent,
        &labelled,
        &How::Create(agent_pod("through-proxy", json!({}))),
    )
    .await
    .expect("an ordinary pod passes the proxy and is injected");
    let spool = dir.path().join("spool");
    eventually(
        Duration::from_secs(10),
        "every proxy refusal in the audit spool",
        || {
            let refusals = spool_records(&spool)
                .into_iter()
                .filter(|r| {
                    serde_json::to_string(r)
                        .unwrap_or_default()
                        .contains("pod-guard")
                })
                .count();
            async move { (refusals >= 6).then_some(()) }
        },
    )
    .await;

    sidecar.shutdown().await;
    let _ = h.kubectl(&["delete", "-f", &rendered]);
    unregister(&client, &name).await;
    webhook.stop().await;
}

/// Write (patch, or create when missing) or delete an operator-managed ConfigMap or Secret.
async fn write_managed(
    client: &kube::Client,
    ns: &str,
    kind: &str,
    name: &str,
    delete: bool,
) -> Result<(), String> {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use kube::api::DeleteParams;
    let patch = Patch::Merge(json!({"metadata": {"labels": {"tampered": "yes"}}}));
    let pp = PatchParams::default();
    let result = match kind {
        "configmaps" => {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            if delete {
                api.delete(name, &DeleteParams::default()).await.map(|_| ())
            } else {
                match api.patch(name, &pp, &patch).await {
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        let cm = serde_json::from_value(json!({"metadata": {"name": name}}))
                            .map_err(|e| e.to_string())?;
                        api.create(&PostParams::default(), &cm).await.map(|_| ())
                    }
                    other => other.map(|_| ()),
                }
            }
        }
        _ => {
            let api: Api<Secret> = Api::namespaced(client.clone(), ns);
            if delete {
                api.delete(name, &DeleteParams::default()).await.map(|_| ())
            } else {
                match api.patch(name, &pp, &patch).await {
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        let secret = serde_json::from_value(json!({"metadata": {"name": name}}))
                            .map_err(|e| e.to_string())?;
                        api.create(&PostParams::default(), &secret)
                            .await
                            .map(|_| ())
                    }
                    other => other.map(|_| ()),
                }
            }
        }
    };
    result.map_err(|e| e.to_string())
}
