//! Test support for Portcullis: a real control plane (etcd and kube-apiserver built from
//! upstream source) and a real PostgreSQL, started once per test binary by
//! `e2e/scripts/harness.sh` and torn down when the test binary exits.
//!
//! When `PORTCULLIS_E2E_ENV` names the `env` file of a running harness, or
//! `PORTCULLIS_E2E_KUBECONFIG` names its admin kubeconfig (the `env` file sits beside it), the
//! tests attach to that harness instead of starting one.
//!
//! ```no_run
//! # async fn demo() {
//! let h = portcullis_e2e::harness();
//! let client = h.client().await;             // system:masters
//! let alice = h.client_as(portcullis_e2e::User::Owner).await;
//! let ns = h.namespace("crds").await;        // fresh namespace with a default ServiceAccount
//! let url = h.pg_url();                      // postgresql://app:...@127.0.0.1:PORT/shop
//! # }
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;

/// An ordinary (non-admin) user of the harness cluster, authenticated by client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum User {
    /// `alice`, group `agent-owners`: the person who owns the agent.
    Owner,
    /// `bob`, group `portcullis-approvers`: an approver.
    Approver,
}

impl User {
    /// Kubernetes user name.
    pub fn name(self) -> &'static str {
        match self {
            User::Owner => "alice",
            User::Approver => "bob",
        }
    }

    /// The group the user's certificate carries.
    pub fn group(self) -> &'static str {
        match self {
            User::Owner => "agent-owners",
            User::Approver => "portcullis-approvers",
        }
    }

    fn env_key(self) -> &'static str {
        match self {
            User::Owner => "PORTCULLIS_E2E_KUBECONFIG_OWNER",
            User::Approver => "PORTCULLIS_E2E_KUBECONFIG_APPROVER",
        }
    }
}

/// A running harness.
pub struct Harness {
    env: BTreeMap<String, String>,
    // Kept so the harness process lives as long as the test binary; it also watches our pid.
    _child: Option<Mutex<Child>>,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

/// The harness of this test binary, started on first use (or attached to, see the crate doc).
///
/// Panics with the harness's own error when it cannot start: a test cannot run without it.
pub fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| match Harness::attach_or_start() {
        Ok(h) => h,
        Err(e) => panic!("e2e harness unavailable: {e}"),
    })
}

/// Root of the repository.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Why the harness could not be started or attached to.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The harness script could not be run or exited early.
    #[error("harness script: {0}")]
    Start(String),
    /// The env file of a running harness could not be read.
    #[error("reading harness env file {path}: {source}")]
    Env {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn parse_env(path: &Path) -> Result<BTreeMap<String, String>, HarnessError> {
    let text = std::fs::read_to_string(path).map_err(|source| HarnessError::Env {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

impl Harness {
    fn attach_or_start() -> Result<Harness, HarnessError> {
        if let Ok(path) = std::env::var("PORTCULLIS_E2E_ENV") {
            return Ok(Harness {
                env: parse_env(Path::new(&path))?,
                _child: None,
            });
        }
        if let Ok(kubeconfig) = std::env::var("PORTCULLIS_E2E_KUBECONFIG") {
            let dir = Path::new(&kubeconfig)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            return Ok(Harness {
                env: parse_env(&dir.join("env"))?,
                _child: None,
            });
        }
        Self::start()
    }

    fn start() -> Result<Harness, HarnessError> {
        let script = repo_root().join("e2e/scripts/harness.sh");
        let mut child = Command::new("bash")
            .arg(&script)
            .arg("--watch-pid")
            .arg(std::process::id().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| HarnessError::Start(format!("cannot run {}: {e}", script.display())))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| HarnessError::Start("no stdout".into()))?;
        let deadline = Instant::now() + Duration::from_secs(30 * 60);
        let mut lines = BufReader::new(stdout).lines();
        let env_path = loop {
            if Instant::now() > deadline {
                return Err(HarnessError::Start("not ready within 30 minutes".into()));
            }
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(path) = line.strip_prefix("harness ready: ") {
                        break PathBuf::from(path);
                    }
                }
                Some(Err(e)) => return Err(HarnessError::Start(e.to_string())),
                None => {
                    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                    return Err(HarnessError::Start(format!(
                        "exited before it was ready ({status}); its log is above"
                    )));
                }
            }
        };
        // Keep draining stdout so the script never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Harness {
            env: parse_env(&env_path)?,
            _child: Some(Mutex::new(child)),
        })
    }

    /// A value of the harness env file (see `e2e/scripts/harness.sh`).
    pub fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("harness env has no {key}"))
    }

    /// Admin kubeconfig (`system:masters`).
    pub fn kubeconfig(&self) -> &str {
        self.var("PORTCULLIS_E2E_KUBECONFIG")
    }

    /// Kubeconfig of an ordinary user.
    pub fn kubeconfig_of(&self, user: User) -> &str {
        self.var(user.env_key())
    }

    /// URL of the API server.
    pub fn apiserver_url(&self) -> &str {
        self.var("PORTCULLIS_E2E_APISERVER")
    }

    /// PEM file of the cluster CA.
    pub fn ca_file(&self) -> &str {
        self.var("PORTCULLIS_E2E_CA")
    }

    /// The state directory of the harness (certificates, logs).
    pub fn state_dir(&self) -> &str {
        self.var("PORTCULLIS_E2E_STATE")
    }

    /// The kubectl built with the API server.
    pub fn kubectl_path(&self) -> &str {
        self.var("KUBECTL")
    }

    /// The helm built from upstream source.
    pub fn helm_path(&self) -> &str {
        self.var("HELM")
    }

    /// PostgreSQL URL of the SCRAM-SHA-256 user `app` on database `shop` (seeded `customers`
    /// and `orders` tables).
    pub fn pg_url(&self) -> &str {
        self.var("PORTCULLIS_E2E_PG_URL")
    }

    /// PostgreSQL URL of the superuser `postgres`.
    pub fn pg_admin_url(&self) -> &str {
        self.var("PORTCULLIS_E2E_PG_ADMIN_URL")
    }

    /// PostgreSQL host (always 127.0.0.1).
    pub fn pg_host(&self) -> &str {
        self.var("PORTCULLIS_E2E_PG_HOST")
    }

    /// PostgreSQL port.
    pub fn pg_port(&self) -> u16 {
        self.var("PORTCULLIS_E2E_PG_PORT").parse().unwrap_or(5432)
    }

    /// Password of the PostgreSQL user `app`.
    pub fn pg_password(&self) -> &str {
        self.var("PORTCULLIS_E2E_PG_PASSWORD")
    }

    /// The Node to bind a pod to (`spec.nodeName`) so that `pods/exec` and `pods/attach` reach
    /// a container: its kubelet endpoint is the exec peer, which serves the kubelet's streaming
    /// API (SPDY and WebSocket) and runs exec commands as local processes of the test machine
    /// (attach echoes stdin to stdout).
    pub fn exec_node(&self) -> &str {
        self.var("PORTCULLIS_EXEC_NODE")
    }

    /// Port of the exec peer (HTTPS on 127.0.0.1).
    pub fn exec_peer_port(&self) -> u16 {
        self.var("PORTCULLIS_EXEC_PEER_PORT")
            .parse()
            .unwrap_or_else(|e| panic!("harness env PORTCULLIS_EXEC_PEER_PORT: {e}"))
    }

    /// Log of the exec peer: one line per request (path, query, transport) and per exit code.
    pub fn exec_peer_log(&self) -> &str {
        self.var("PORTCULLIS_EXEC_PEER_LOG")
    }

    /// A kube client authenticated as `system:masters`.
    pub async fn client(&self) -> Client {
        client_from(self.kubeconfig()).await
    }

    /// A kube client authenticated as an ordinary user.
    pub async fn client_as(&self, user: User) -> Client {
        client_from(self.kubeconfig_of(user)).await
    }

    /// Run kubectl as `system:masters`.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(self.kubeconfig(), args)
    }

    /// Run kubectl as an ordinary user.
    pub fn kubectl_as(&self, user: User, args: &[&str]) -> Output {
        self.kubectl_with(self.kubeconfig_of(user), args)
    }

    fn kubectl_with(&self, kubeconfig: &str, args: &[&str]) -> Output {
        Command::new(self.kubectl_path())
            .env("KUBECONFIG", kubeconfig)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run kubectl: {e}"))
    }

    /// Create a fresh namespace `PREFIX-xxxxxx` with its `default` ServiceAccount (the harness
    /// runs no controller-manager, which would create it) and return its name.
    pub async fn namespace(&self, prefix: &str) -> String {
        let client = self.client().await;
        let suffix: String = (0..6)
            .map(|_| char::from(b'a' + rand::random_range(0..26u8)))
            .collect();
        let name = format!("{prefix}-{suffix}");
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name}
        }))
        .expect("namespace object");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "default"}
        }))
        .expect("service account object");
        Api::<ServiceAccount>::namespaced(client, &name)
            .create(&PostParams::default(), &sa)
            .await
            .unwrap_or_else(|e| panic!("create default ServiceAccount in {name}: {e}"));
        name
    }

    /// Create a ServiceAccount.
    pub async fn service_account(&self, namespace: &str, name: &str) {
        let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name}
        }))
        .expect("service account object");
        Api::<ServiceAccount>::namespaced(self.client().await, namespace)
            .create(&PostParams::default(), &sa)
            .await
            .unwrap_or_else(|e| panic!("create ServiceAccount {namespace}/{name}: {e}"));
    }

    /// Create a pod object running as `service_account` (the harness has no kubelet: the
    /// object exists, its containers never run; a pod bound to [`Harness::exec_node`] answers
    /// exec and attach) and return it as stored.
    pub async fn pod(&self, namespace: &str, name: &str, service_account: &str) -> Pod {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "serviceAccountName": service_account,
                "containers": [{"name": "agent", "image": "agent:1"}]
            }
        }))
        .expect("pod object");
        Api::<Pod>::namespaced(self.client().await, namespace)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("create pod {namespace}/{name}: {e}"))
    }

    /// A token of `service_account` (TokenRequest), for `audience` (the API server's own when
    /// `None`), bound to `pod` when given: what the kubelet projects into a pod.
    pub async fn token(
        &self,
        namespace: &str,
        service_account: &str,
        audience: Option<&str>,
        pod: Option<&Pod>,
    ) -> String {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audience.map(|a| vec![a.to_owned()]).unwrap_or_default(),
                bound_object_ref: pod.map(|p| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: p.metadata.name.clone(),
                    uid: p.metadata.uid.clone(),
                }),
                expiration_seconds: Some(3600),
            },
            ..Default::default()
        };
        Api::<ServiceAccount>::namespaced(self.client().await, namespace)
            .create_token_request(service_account, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("token for {namespace}/{service_account}: {e}"))
            .status
            .map(|s| s.token)
            .unwrap_or_default()
    }

    /// Install the Portcullis CRDs with server-side apply and wait until each is Established.
    pub async fn install_crds(&self) {
        static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
        DONE.get_or_init(|| async {
            let client = self.client().await;
            install_crds(&client).await;
        })
        .await;
    }
}

async fn client_from(kubeconfig: &str) -> Client {
    let config = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("read kubeconfig {kubeconfig}: {e}"));
    let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("load kubeconfig {kubeconfig}: {e}"));
    Client::try_from(config).unwrap_or_else(|e| panic!("kube client: {e}"))
}

/// Apply every Portcullis CRD server-side and wait until the API server reports it
/// Established.
pub async fn install_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    use kube::runtime::wait::{await_condition, conditions};

    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in portcullis_crds::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("portcullis-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not Established within 30s"))
        .unwrap_or_else(|e| panic!("watch CRD {name}: {e}"));
    }
    wait_for_openapi(client).await;
}

/// The API server publishes a new CRD's OpenAPI document (what `kubectl explain` and
/// server-side field validation read) a moment after it is Established; wait for all kinds.
async fn wait_for_openapi(client: &Client) {
    let kinds = [
        "ProtectedResource",
        "GatewayPolicy",
        "AccessRequest",
        "AuditRetention",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let request = http::Request::get("/openapi/v3/apis/portcullis.dev/v1alpha1")
            .body(Vec::new())
            .expect("request");
        if let Ok(doc) = client.request_text(request).await {
            if kinds
                .iter()
                .all(|k| doc.contains(&format!("dev.portcullis.v1alpha1.{k}\"")))
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the API server did not publish the OpenAPI schema of the Portcullis CRDs within 60s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
