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
    let created = create_pod(&s.client, &labelled, &out)
        .await
        .expect("opted-out pod");
    assert!(!has_sidecar(&created));

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
            "opted-out",
            json!({"metadata": {"annotations": {"portcullis.dev/inject": "disabled"}}, "spec": {"containers": [{"name": "agent", "image": "a", "env": [
            {"name": "DB_USER", "valueFrom": {"secretKeyRef": {"name": "customers-db-credentials", "key": "username"}}}]}]}}),
            "(env var DB_USER valueFrom secretKeyRef)",
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
