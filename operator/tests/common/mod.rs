//! Shared helpers of the operator's tests against the real kube-apiserver.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use portcullis_crds::ProtectedResource;
use portcullis_operator::certs::{self, ReloadableCert};
use portcullis_operator::inject::SidecarSettings;
use portcullis_operator::metrics::Metrics;
use portcullis_operator::webhook::config::{self, Options, Target};
use serde_json::json;
use tokio::net::TcpListener;

/// Label that scopes a test's webhook configurations to the test's own namespaces.
pub const TEST_LABEL: &str = "portcullis.dev/test";

/// A webhook server running in this process on 127.0.0.1.
pub struct Webhook {
    pub port: u16,
    pub ca_pem: String,
    pub metrics: Metrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Webhook {
    /// Start the webhook server with a fresh CA and a certificate for 127.0.0.1.
    pub async fn start(client: Client) -> Webhook {
        Self::start_trusting(client, Default::default()).await
    }

    /// [`Webhook::start`], trusting `opt_out` to opt pods out of injection.
    pub async fn start_trusting(
        client: Client,
        opt_out: portcullis_operator::webhook::OptOutTrust,
    ) -> Webhook {
        let bundle = certs::generate(
            &["127.0.0.1".to_owned()],
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        )
        .expect("certificates");
        let cert = ReloadableCert::new(&bundle.cert_pem, &bundle.key_pem).expect("cert");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let metrics = Metrics::new().expect("metrics");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let m = metrics.clone();
        let task = tokio::spawn(async move {
            portcullis_operator::serve_webhook_trusting(
                client,
                listener,
                cert,
                SidecarSettings::default(),
                opt_out,
                m,
                async {
                    let _ = rx.await;
                },
            )
            .await
            .expect("webhook server");
        });
        Webhook {
            port,
            ca_pem: bundle.ca_pem,
            metrics,
            stop: Some(tx),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Stop the server and close its connections.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Options of webhook configurations scoped to namespaces labelled `TEST_LABEL=scope`.
pub fn options(name: &str, url: String, ca: Option<String>, scope: &str) -> Options {
    Options {
        name: name.to_owned(),
        target: Target::Url(url),
        ca_bundle: ca,
        excluded_namespaces: vec!["kube-system".to_owned()],
        namespace_labels: BTreeMap::from([(TEST_LABEL.to_owned(), scope.to_owned())]),
    }
}

/// Register both webhook configurations (replacing earlier ones of the same name).
pub async fn register(client: &Client, opts: &Options) {
    let pp = PatchParams::apply("portcullis-tests").force();
    let m: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    m.patch(
        &opts.name,
        &pp,
        &Patch::Apply(with_kind(
            config::mutating(opts),
            "MutatingWebhookConfiguration",
        )),
    )
    .await
    .expect("register mutating webhook");
    let v: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    v.patch(
        &opts.name,
        &pp,
        &Patch::Apply(with_kind(
            config::validating(opts),
            "ValidatingWebhookConfiguration",
        )),
    )
    .await
    .expect("register validating webhook");
}

fn with_kind<T: serde::Serialize>(obj: T, kind: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).expect("json");
    v["apiVersion"] = json!("admissionregistration.k8s.io/v1");
    v["kind"] = json!(kind);
    v
}

/// Remove both webhook configurations.
pub async fn unregister(client: &Client, name: &str) {
    let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
    let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// Add labels to a namespace.
pub async fn label_namespace(client: &Client, ns: &str, labels: &[(&str, &str)]) {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": labels}})),
        )
        .await
        .expect("label namespace");
}

/// A pod that passes the restricted Pod Security Standard.
pub fn restricted_pod(name: &str, extra: serde_json::Value) -> Pod {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "agent",
                "image": "registry.example/agent:1",
                "env": [{"name": "OPENAI_MODEL", "value": "gpt"}, {"name": "PGHOST", "value": "db.example"}],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    });
    merge(&mut pod, extra);
    serde_json::from_value(pod).expect("pod")
}

/// JSON merge (objects merged recursively, everything else replaced).
pub fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// A postgres ProtectedResource with its credentials Secret.
pub async fn postgres_resource(
    client: &Client,
    ns: &str,
    name: &str,
    port: i32,
    secret: &str,
) -> ProtectedResource {
    let pr: ProtectedResource = serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1",
        "kind": "ProtectedResource",
        "metadata": {"name": name, "labels": {"tier": "data"}},
        "spec": {
            "type": "postgres",
            "endpoint": {"host": "customers-db.data.svc.cluster.local", "port": 5432},
            "database": "shop",
            "credentialsSecretRef": {"name": secret},
            "listenPort": port,
        },
    }))
    .expect("pr");
    Api::<ProtectedResource>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pr)
        .await
        .expect("create ProtectedResource")
}

/// A kubernetes ProtectedResource.
pub async fn kubernetes_resource(
    client: &Client,
    ns: &str,
    name: &str,
    port: i32,
) -> ProtectedResource {
    let pr: ProtectedResource = serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1",
        "kind": "ProtectedResource",
        "metadata": {"name": name},
        "spec": {"type": "kubernetes", "listenPort": port},
    }))
    .expect("pr");
    Api::<ProtectedResource>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pr)
        .await
        .expect("create ProtectedResource")
}

/// A credentials Secret with the given keys.
pub async fn secret(client: &Client, ns: &str, name: &str, keys: &[(&str, &str)]) {
    let data: BTreeMap<&str, &str> = keys.iter().copied().collect();
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data}))
        .expect("secret");
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .expect("create Secret");
}

/// Create a pod, returning the API server's answer.
pub async fn create_pod(client: &Client, ns: &str, pod: &Pod) -> Result<Pod, kube::Error> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), pod)
        .await
}

/// Wait until the API server calls the webhook for pods in `ns` (configuration changes
/// reach the API server's webhook cache asynchronously): dry-run pods until one is injected.
pub async fn wait_until_injecting(client: &Client, ns: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let probe = restricted_pod("probe", json!({}));
        if let Ok(p) = api.create(&pp, &probe).await {
            if p.spec
                .as_ref()
                .and_then(|s| s.init_containers.as_ref())
                .is_some_and(|c| !c.is_empty())
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "webhook not called for namespace {ns} within 20s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Poll `f` until it returns `Some`, or fail after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Settings of an in-process operator on 127.0.0.1 with its own CA.
pub fn operator_settings(
    namespace: &str,
    identity: &str,
    webhooks: &str,
) -> portcullis_operator::Settings {
    let mut s = portcullis_operator::Settings::new(namespace, identity, "portcullis-operator");
    s.webhook_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    s.metrics_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], free_port())));
    s.cert_source = portcullis_operator::certs::CertSource::SelfManaged {
        secret: "portcullis-webhook-tls".to_owned(),
        subject_alt_names: vec!["127.0.0.1".to_owned()],
        serving_validity: Duration::from_secs(3600),
        ca_validity: Duration::from_secs(24 * 3600),
    };
    s.mutating_webhooks = vec![webhooks.to_owned()];
    s.validating_webhooks = vec![webhooks.to_owned()];
    s.lease_duration = Duration::from_secs(4);
    s.lease_retry = Duration::from_millis(500);
    s
}

/// GET a path of a plain HTTP server on 127.0.0.1: (status code, body); code 0 when nothing
/// listens yet.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// The `kubectl-portcullis` binary of this build.
pub const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-portcullis");

/// Run the plugin with a kubeconfig.
pub fn plugin(kubeconfig: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(PLUGIN)
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl-portcullis")
}

/// Standard output then standard error of a finished command.
pub fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Create a namespaced object from JSON.
pub async fn create<K>(client: &Client, ns: &str, value: serde_json::Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
    K::DynamicType: Default,
{
    let object: K = serde_json::from_value(value).expect("object");
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &object)
        .await
        .expect("create");
}

/// Write a kubeconfig at `path` that reaches `server` (trusting `ca`) with a bearer `token`.
pub fn token_kubeconfig(
    path: &std::path::Path,
    server: &str,
    ca: &str,
    token: &str,
    ns: &str,
) -> String {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: u
  user:
    token: {token}
contexts:
- name: c
  context: {{cluster: c, user: u, namespace: {ns}}}
current-context: c
"
        ),
    )
    .expect("write kubeconfig");
    path.to_string_lossy().into_owned()
}

/// Every record of a sidecar's audit spool (its segment files), in order.
pub fn spool_records(spool: &std::path::Path) -> Vec<portcullis_crds::audit::AuditRecord> {
    let mut files: Vec<_> = std::fs::read_dir(spool)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.lines() {
            out.push(
                serde_json::from_str(line).unwrap_or_else(|e| panic!("bad record {line}: {e}")),
            );
        }
    }
    out
}

/// A client of service account `sa` of `ns` (created here) that RBAC allows `rules` in `ns`:
/// what a sidecar holding that account's token can do.
pub async fn service_account_client(
    client: &Client,
    ns: &str,
    sa: &str,
    rules: serde_json::Value,
) -> Client {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let h = portcullis_e2e::harness();
    h.service_account(ns, sa).await;
    let name = format!("{sa}-rights");
    create::<Role>(
        client,
        ns,
        json!({"metadata": {"name": name}, "rules": rules}),
    )
    .await;
    create::<RoleBinding>(
        client,
        ns,
        json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]
        }),
    )
    .await;
    let token = h.token(ns, sa, None, None).await;
    let dir = std::env::temp_dir().join(format!("portcullis-test-{ns}-{sa}"));
    std::fs::create_dir_all(&dir).expect("kubeconfig dir");
    let path = token_kubeconfig(
        &dir.join("kubeconfig"),
        h.apiserver_url(),
        h.ca_file(),
        &token,
        ns,
    );
    let kc = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("client config");
    Client::try_from(config).expect("client")
}

/// `ar` with the fingerprint of its shown operation, as the sidecar writes it.
pub fn with_fingerprint(mut ar: portcullis_crds::AccessRequest) -> portcullis_crds::AccessRequest {
    ar.spec.operation.fingerprint = ar.spec.operation.grant_fingerprint();
    ar
}

/// The agent's view through its own sidecar: a sidecar whose Kubernetes API proxy forwards to
/// the harness API server with `sidecar_token` (the pod's real token) for `namespace`, and a
/// client configured as an injected agent is (placeholder token, the sidecar's CA). The
/// directory holds the sidecar's files and must outlive it.
pub async fn agent_through_sidecar(
    namespace: &str,
    sidecar_token: &str,
) -> (tempfile::TempDir, portcullis_sidecar::Sidecar, kube::Client) {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = portcullis_operator::certs::generate(
        &["127.0.0.1".to_owned()],
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    )
    .expect("certificates");
    std::fs::write(dir.path().join("tls.crt"), &certs.cert_pem).expect("cert");
    std::fs::write(dir.path().join("tls.key"), &certs.key_pem).expect("key");
    std::fs::write(dir.path().join("ca.crt"), &certs.ca_pem).expect("ca");
    std::fs::write(dir.path().join("token"), sidecar_token).expect("token");
    let h = portcullis_e2e::harness();
    let api_url: http::Uri = h.apiserver_url().parse().expect("api url");
    let config_text = format!(
        "apiVersion: portcullis.dev/sidecar-config/v1alpha1
namespace: {namespace}
adminListen: 127.0.0.1:0
protectedSecrets: [customers-db-credentials]
audit:
  spoolDir: {dir}/spool
resources:
- name: cluster-api
  type: kubernetes
  listenPort: 0
  upstream: {{host: {host}, port: {port}, tlsMode: verify-full, caFile: {ca}}}
  serverTls: {{certFile: {dir}/tls.crt, keyFile: {dir}/tls.key}}
  tokenFile: {dir}/token
  policies: [agents]
policies:
- name: agents
  purpose: Agent work
",
        dir = dir.path().display(),
        host = api_url.host().expect("host"),
        port = api_url.port_u16().unwrap_or(443),
        ca = h.ca_file(),
    );
    let config = portcullis_crds::SidecarConfig::from_yaml(&config_text).expect("sidecar config");
    let sidecar = portcullis_sidecar::start(
        config,
        portcullis_sidecar::config::Options::service_account(namespace, "agent"),
    )
    .await
    .expect("sidecar starts");
    let port = sidecar.addr("cluster-api").expect("listening").port();
    let kubeconfig = token_kubeconfig(
        &dir.path().join("agent.kubeconfig"),
        &format!("https://127.0.0.1:{port}"),
        &dir.path().join("ca.crt").to_string_lossy(),
        portcullis_operator::inject::PLACEHOLDER_TOKEN,
        namespace,
    );
    let agent = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig"),
            &Default::default(),
        )
        .await
        .expect("config"),
    )
    .expect("agent client");
    (dir, sidecar, agent)
}
