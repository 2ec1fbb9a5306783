//! The world the approval red-team tables attack: a real kube-apiserver with the chart's RBAC,
//! the operator's webhooks and controller, a sidecar in front of the harness PostgreSQL, an
//! approver and a namespace user, and the table their attempts are written to.
#![allow(dead_code)]

use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams};
use portcullis_crds::{AccessRequest, SidecarConfig};
use portcullis_e2e::{harness, repo_root, User};
use portcullis_sidecar::approval::KubeAccess;
use portcullis_sidecar::config::Options;
use serde::Deserialize;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

pub const TIMEOUT_SECONDS: u64 = 30;
pub const PLACEHOLDER: &str = "portcullis-placeholder-token";

/// One attempt and what came of it.
pub struct Row {
    pub family: &'static str,
    pub actor: &'static str,
    pub attempt: String,
    /// `Ok(evidence)` when the attempt was refused (or a baseline allowed) as expected.
    pub result: Result<String, String>,
}

pub struct Table(pub Vec<Row>);

impl Table {
    pub fn row(
        &mut self,
        family: &'static str,
        actor: &'static str,
        attempt: impl Into<String>,
        result: Result<String, String>,
    ) {
        self.0.push(Row {
            family,
            actor,
            attempt: attempt.into(),
            result,
        });
    }
}

/// The server's message of a PostgreSQL error.
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// The first value of the first row of a simple query's answer.
pub fn first_value(m: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    m.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

pub fn first_line(s: &str) -> String {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(160)
        .collect()
}

/// The rules of a ClusterRole of the chart's golden rendering.
pub fn chart_rules(role: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(repo_root().join("charts/portcullis/tests/golden/defaults.yaml"))
            .expect("golden rendering");
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let Ok(v) = serde_json::Value::deserialize(doc) else {
            continue;
        };
        if v["kind"] == "ClusterRole" && v["metadata"]["name"] == role {
            return v["rules"].clone();
        }
    }
    panic!("ClusterRole {role} is not in the chart");
}

pub async fn connect(port: u16) -> Arc<Client> {
    let conn = format!("host=127.0.0.1 port={port} user=agent dbname=shop sslmode=disable");
    let (client, connection) = tokio_postgres::connect(&conn, NoTls)
        .await
        .expect("connect to the sidecar");
    tokio::spawn(connection);
    Arc::new(client)
}

/// The names of the requests of the namespace.
pub async fn names(api: &Api<AccessRequest>) -> Vec<String> {
    api.list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|a| a.metadata.name)
                .collect()
        })
        .unwrap_or_default()
}

/// A request not in `known`, once there is one (within 20 s).
pub async fn new_request(api: &Api<AccessRequest>, known: &[String]) -> Option<AccessRequest> {
    for _ in 0..200 {
        if let Ok(list) = api.list(&ListParams::default()).await {
            if let Some(ar) = list
                .items
                .into_iter()
                .find(|ar| !known.contains(&ar.metadata.name.clone().unwrap_or_default()))
            {
                return Some(ar);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

pub type Held =
    tokio::task::JoinHandle<Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>>;

pub fn run(client: &Arc<Client>, sql: &str) -> Held {
    let client = client.clone();
    let sql = sql.to_owned();
    tokio::spawn(async move { client.simple_query(&sql).await })
}

pub struct Env {
    pub ns: String,
    pub api: Api<AccessRequest>,
    pub bob: String,
}

impl Env {
    pub fn decide(&self, verb: &str, name: &str, reason: &str) -> Output {
        crate::common::plugin(&self.bob, &[verb, name, "-n", &self.ns, "--reason", reason])
    }

    /// Run `sql`, which must be held: the new request is returned (after `check` looked at
    /// it), then denied, and the statement must end refused.
    pub async fn held_then_denied(
        &self,
        client: &Arc<Client>,
        sql: &str,
    ) -> Result<AccessRequest, String> {
        let known = names(&self.api).await;
        let task = run(client, sql);
        let mut found = None;
        for _ in 0..200 {
            let list = self.api.list(&ListParams::default()).await.ok();
            found = list.and_then(|l| {
                l.items
                    .into_iter()
                    .find(|ar| !known.contains(&ar.metadata.name.clone().unwrap_or_default()))
            });
            if found.is_some() || task.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some(ar) = found else {
            return match task.await {
                Ok(Ok(_)) => Err("it ran without a new approval".into()),
                Ok(Err(e)) => Err(format!("refused without a request: {}", pg_message(&e))),
                Err(e) => Err(e.to_string()),
            };
        };
        let name = ar.metadata.name.clone().unwrap_or_default();
        let out = self.decide("deny", &name, "refused by the attack table");
        if !out.status.success() {
            return Err(format!("cannot deny {name}: {}", crate::common::text(&out)));
        }
        match tokio::time::timeout(Duration::from_secs(20), task).await {
            Ok(Ok(Err(e))) if pg_message(&e).contains("Denied by bob") => Ok(ar),
            other => Err(format!("held statement ended with {other:?}")),
        }
    }

    /// Run `sql`, which must not run: held (then denied) or refused at once (by the denial
    /// of the same operation moments ago).
    pub async fn not_run(&self, client: &Arc<Client>, sql: &str) -> Result<String, String> {
        match self.held_then_denied(client, sql).await {
            Ok(_) => Ok("held for a new approval".into()),
            Err(e) if e.starts_with("refused without a request: Denied by") => {
                Ok(format!("refused: {e}"))
            }
            Err(e) => Err(e),
        }
    }

    /// Run `sql`; when it is held, approve it: `Err` when it is refused or not held.
    pub async fn try_approved(
        &self,
        client: &Arc<Client>,
        sql: &str,
    ) -> Result<AccessRequest, String> {
        let known = names(&self.api).await;
        let task = run(client, sql);
        let Some(ar) = new_request(&self.api, &known).await else {
            return match task.await {
                Ok(Ok(_)) => Err("ran without approval".into()),
                Ok(Err(e)) => Err(pg_message(&e)),
                Err(e) => Err(e.to_string()),
            };
        };
        let name = ar.metadata.name.clone().expect("name");
        let out = self.decide("approve", &name, "checked");
        if !out.status.success() {
            return Err(crate::common::text(&out));
        }
        // A statement that matches several approval guardrails asks one request of each:
        // every request it makes is approved.
        let mut approved = vec![name];
        for _ in 0..100 {
            if task.is_finished() {
                break;
            }
            let fresh: Vec<String> = names(&self.api)
                .await
                .into_iter()
                .filter(|n| !known.contains(n) && !approved.contains(n))
                .collect();
            for more in fresh {
                let out = self.decide("approve", &more, "checked");
                if !out.status.success() {
                    return Err(crate::common::text(&out));
                }
                approved.push(more);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match tokio::time::timeout(Duration::from_secs(20), task).await {
            Ok(Ok(Ok(_))) => Ok(ar),
            other => Err(format!("{other:?}")),
        }
    }

    /// Run `sql`, which must be held; approve it and expect it to run.
    pub async fn approved(&self, client: &Arc<Client>, sql: &str) -> AccessRequest {
        let known = names(&self.api).await;
        let task = run(client, sql);
        let ar = new_request(&self.api, &known)
            .await
            .unwrap_or_else(|| panic!("{sql} must be held"));
        let name = ar.metadata.name.clone().expect("name");
        let out = self.decide("approve", &name, "checked");
        assert!(out.status.success(), "{}", crate::common::text(&out));
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("runs after approval")
            .expect("task")
            .unwrap_or_else(|e| panic!("{sql} after approval: {e}"));
        ar
    }
}
/// Everything an attack needs: the webhooks, the AccessRequest controller, the chart's RBAC,
/// the agent's sidecar and a direct connection to PostgreSQL.
pub struct World {
    pub client: kube::Client,
    pub ns: String,
    pub env: Env,
    pub pg_port: u16,
    pub direct_pg: Arc<Client>,
    pub sidecar: portcullis_sidecar::Sidecar,
    pub webhook: crate::common::Webhook,
    pub hook_name: String,
    pub stop_tx: tokio::sync::oneshot::Sender<()>,
    pub controller: tokio::task::JoinHandle<()>,
    pub _dir: tempfile::TempDir,
    /// Held for the world's life: the attempts of one table change the shared `customers`
    /// rows, so two worlds at once can deadlock each other's direct baselines.
    pub _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// One world at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn affected(m: &[tokio_postgres::SimpleQueryMessage]) -> u64 {
    m.iter()
        .map(|m| match m {
            tokio_postgres::SimpleQueryMessage::CommandComplete(n) => *n,
            _ => 0,
        })
        .sum()
}

pub const AGENT_SQL: &str = "agent, SQL through the sidecar";

pub async fn world(label: &str) -> World {
    let serial = SERIAL.lock().await;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let ns = h.namespace(label).await;
    crate::common::label_namespace(&client, &ns, &[(crate::common::TEST_LABEL, &ns)]).await;
    let webhook = crate::common::Webhook::start(client.clone()).await;
    let hook_name = format!("{label}-{ns}");
    crate::common::register(
        &client,
        &crate::common::options(&hook_name, webhook.url(), Some(webhook.ca_pem.clone()), &ns),
    )
    .await;
    let ctx = Arc::new(portcullis_operator::controller::Context::new(
        client.clone(),
        portcullis_operator::metrics::Metrics::new().expect("metrics"),
        "approval-redteam-test",
        None,
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(portcullis_operator::controller::access_request::run(
        ctx,
        async move {
            let _ = stop_rx.await;
        },
    ));

    // Two policies for the agent: statement grants (customers, DO blocks) and session grants
    // (orders, two guardrails).
    let dir = tempfile::tempdir().expect("temp dir");
    let policies = format!(
        "apiVersion: portcullis.dev/v1alpha1
kind: GatewayPolicy
metadata: {{name: shop}}
spec:
  subjects: [{{kind: ServiceAccount, name: agent}}]
  guardrails:
  - name: customer-writes
    match: {{statementKinds: [insert, update, delete], tables: [customers]}}
    action: requireApproval
  - name: code
    match: {{statementKinds: [doBlock]}}
    action: requireApproval
  - name: removals
    match: {{execCommands: [\"rm *\"]}}
    action: requireApproval
  - name: fixer
    match: {{functions: [rt_fix]}}
    action: requireApproval
  approval:
    approverGroups: [portcullis-approvers, agent-owners]
    timeout: {TIMEOUT_SECONDS}s
    grantDuration: 1h
    maxPending: 2
---
apiVersion: portcullis.dev/v1alpha1
kind: GatewayPolicy
metadata: {{name: orders}}
spec:
  subjects: [{{kind: ServiceAccount, name: agent}}]
  guardrails:
  - name: order-updates
    match: {{statementKinds: [update], tables: [orders]}}
    action: requireApproval
  - name: order-inserts
    match: {{statementKinds: [insert], tables: [orders]}}
    action: requireApproval
  approval:
    approverGroups: [portcullis-approvers]
    timeout: {TIMEOUT_SECONDS}s
    grantDuration: 1h
    grantScope: session
"
    );
    let policy_file = dir.path().join("policies.yaml");
    std::fs::write(&policy_file, &policies).expect("policy file");
    let out = h.kubectl(&["apply", "-n", &ns, "-f", &policy_file.to_string_lossy()]);
    assert!(out.status.success(), "{}", crate::common::text(&out));

    // The chart's RBAC: the sidecar role for the agent's account, the approver role for the
    // approver groups. alice (agent-owners) also has every right on AccessRequests and their
    // status, as an edit user has where the cluster aggregates them into edit.
    h.service_account(&ns, "agent").await;
    for (name, rules) in [
        (
            "sidecar-approvals",
            chart_rules("portcullis-sidecar-approvals"),
        ),
        ("approver", chart_rules("portcullis-approver")),
        (
            "accessrequest-editor",
            serde_json::json!([{"apiGroups": ["portcullis.dev"], "resources": ["accessrequests", "accessrequests/status"], "verbs": ["*"]}]),
        ),
    ] {
        crate::common::create::<Role>(
            &client,
            &ns,
            serde_json::json!({"metadata": {"name": name}, "rules": rules}),
        )
        .await;
    }
    let bind = |name: &str, role: &str, subjects: serde_json::Value| {
        serde_json::json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": subjects
        })
    };
    crate::common::create::<RoleBinding>(
        &client,
        &ns,
        bind(
            "sidecar",
            "sidecar-approvals",
            serde_json::json!([{"kind": "ServiceAccount", "name": "agent", "namespace": ns}]),
        ),
    )
    .await;
    crate::common::create::<RoleBinding>(&client, &ns, bind("approvers", "approver", serde_json::json!([
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "portcullis-approvers"},
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "agent-owners"}
    ])))
    .await;
    crate::common::create::<RoleBinding>(
        &client,
        &ns,
        bind(
            "alice-edit",
            "accessrequest-editor",
            serde_json::json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]),
        ),
    )
    .await;

    // What else the agent may do with its token: read pods and exec into them.
    crate::common::create::<Role>(
        &client,
        &ns,
        serde_json::json!({
            "metadata": {"name": "agent-exec"},
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]}
            ]
        }),
    )
    .await;
    crate::common::create::<RoleBinding>(
        &client,
        &ns,
        bind(
            "agent-exec",
            "agent-exec",
            serde_json::json!([{"kind": "ServiceAccount", "name": "agent", "namespace": ns}]),
        ),
    )
    .await;
    let target: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-0"},
        "spec": {"nodeName": h.exec_node(), "containers": [{"name": "app", "image": "app:1"}]}
    }))
    .expect("pod");
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &ns)
        .create(&Default::default(), &target)
        .await
        .expect("create the target pod");

    // The sidecar: PostgreSQL and the Kubernetes API, with the agent's token.
    let token = h.token(&ns, "agent", None, None).await;
    let direct = crate::common::token_kubeconfig(
        &dir.path().join("direct.kubeconfig"),
        h.apiserver_url(),
        h.ca_file(),
        &token,
        &ns,
    );
    let token_file = dir.path().join("sidecar-token");
    std::fs::write(&token_file, &token).expect("token");
    let certs = portcullis_operator::certs::generate(
        &["127.0.0.1".to_owned(), "localhost".to_owned()],
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    )
    .expect("certificates");
    let tls = dir.path().join("tls");
    std::fs::create_dir_all(&tls).expect("tls dir");
    std::fs::write(tls.join("tls.crt"), &certs.cert_pem).expect("cert");
    std::fs::write(tls.join("tls.key"), &certs.key_pem).expect("key");
    std::fs::write(tls.join("ca.crt"), &certs.ca_pem).expect("ca");
    let creds = dir.path().join("creds");
    std::fs::create_dir_all(&creds).expect("creds dir");
    std::fs::write(creds.join("username"), "app\n").expect("user file");
    std::fs::write(creds.join("password"), format!("{}\n", h.pg_password())).expect("password");
    let api_url: http::Uri = h.apiserver_url().parse().expect("api url");
    let config_text = |spool: &std::path::Path, kube: bool| {
        let kube_resource = if kube {
            format!(
                "- name: cluster-api
  type: kubernetes
  listenPort: {}
  upstream:
    host: {host}
    port: {port}
    tlsMode: verify-full
    caFile: {ca}
  serverTls:
    certFile: {tls}/tls.crt
    keyFile: {tls}/tls.key
  tokenFile: {token_file}
  policies: [shop]
",
                crate::common::free_port(),
                host = api_url.host().expect("host"),
                port = api_url.port_u16().unwrap_or(443),
                ca = h.ca_file(),
                tls = tls.display(),
                token_file = token_file.display(),
            )
        } else {
            String::new()
        };
        format!(
            "apiVersion: portcullis.dev/sidecar-config/v1alpha1
namespace: {ns}
adminListen: 127.0.0.1:0
audit:
  spoolDir: {spool}
resources:
- name: shop-db
  type: postgres
  listenPort: {pg_listen}
  upstream:
    host: {pg_host}
    port: {pg_port}
    tlsMode: disable
  credentials:
    usernameFile: {creds}/username
    passwordFile: {creds}/password
  policies: [shop, orders]
{kube_resource}policies:
- name: shop
  subjects: [{{kind: ServiceAccount, name: agent}}]
  guardrails:
  - name: customer-writes
    statementKinds: [insert, update, delete]
    tables: [customers]
    action: requireApproval
  - name: code
    statementKinds: [doBlock]
    action: requireApproval
  - name: removals
    execCommands: [\"rm *\"]
    action: requireApproval
  - name: fixer
    functions: [rt_fix]
    action: requireApproval
  approval:
    approverGroups: [portcullis-approvers, agent-owners]
    timeoutSeconds: {TIMEOUT_SECONDS}
    grantSeconds: 3600
    grantScope: statement
    maxPending: 2
- name: orders
  subjects: [{{kind: ServiceAccount, name: agent}}]
  guardrails:
  - name: order-updates
    statementKinds: [update]
    tables: [orders]
    action: requireApproval
  - name: order-inserts
    statementKinds: [insert]
    tables: [orders]
    action: requireApproval
  approval:
    approverGroups: [portcullis-approvers]
    timeoutSeconds: {TIMEOUT_SECONDS}
    grantSeconds: 3600
    grantScope: session
",
            spool = spool.display(),
            pg_listen = crate::common::free_port(),
            pg_host = h.pg_host(),
            pg_port = h.pg_port(),
            creds = creds.display(),
        )
    };
    let spool = dir.path().join("spool");
    let text = config_text(&spool, true);
    let config_file = dir.path().join("sidecar.yaml");
    std::fs::write(&config_file, &text).expect("config file");
    let mut options = Options::service_account(&ns, "agent");
    options.config_path = Some(config_file);
    options.kube = KubeAccess::Kubeconfig(direct.clone().into());
    let sidecar = portcullis_sidecar::start(
        SidecarConfig::from_yaml(&text).expect("sidecar config"),
        options,
    )
    .await
    .expect("sidecar starts");
    let pg_port = sidecar.addr("shop-db").expect("listening").port();
    let kube_port = sidecar.addr("cluster-api").expect("listening").port();
    let _proxy = crate::common::token_kubeconfig(
        &dir.path().join("agent.kubeconfig"),
        &format!("https://127.0.0.1:{kube_port}"),
        &tls.join("ca.crt").to_string_lossy(),
        PLACEHOLDER,
        &ns,
    );
    let env = Env {
        ns: ns.clone(),
        api: Api::namespaced(client.clone(), &ns),
        bob: h.kubeconfig_of(User::Approver).to_owned(),
    };

    // A direct connection to PostgreSQL, the unprotected twin of the agent's session.
    let direct_pg = {
        let conn = format!(
            "host={} port={} user=app password={} dbname=shop sslmode=disable",
            h.pg_host(),
            h.pg_port(),
            h.pg_password()
        );
        let (client, connection) = tokio_postgres::connect(&conn, NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(connection);
        Arc::new(client)
    };

    World {
        _serial: serial,
        client,
        ns,
        env,
        pg_port,
        direct_pg,
        sidecar,
        webhook,
        hook_name,
        stop_tx,
        controller,
        _dir: dir,
    }
}

impl World {
    /// Print the table, stop everything, fail on any row not refused as expected.
    pub async fn finish(self, t: Table) {
        // The table.
        let mut failures = 0;
        println!("{:<32} {:<46} {:<70} result", "family", "actor", "attempt");
        for r in &t.0 {
            let (mark, detail) = match &r.result {
                Ok(d) => ("ok", d.clone()),
                Err(d) => {
                    failures += 1;
                    ("FAILED", d.clone())
                }
            };
            println!(
                "{:<32} {:<46} {:<70} {mark}: {}",
                r.family,
                r.actor,
                r.attempt,
                first_line(&detail)
            );
            if mark == "FAILED" {
                eprintln!(
                    "FAILED {} / {} / {}: {detail}",
                    r.family, r.actor, r.attempt
                );
            }
        }
        self.sidecar.shutdown().await;
        let _ = self.stop_tx.send(());
        let _ = self.controller.await;
        self.webhook.stop().await;
        crate::common::unregister(&self.client, &self.hook_name).await;
        assert_eq!(
            failures, 0,
            "{failures} attempts were not refused as expected"
        );
    }
}
