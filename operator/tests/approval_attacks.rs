//! The approval families, attacked: as the agent (through its sidecar's Kubernetes API proxy,
//! and directly with the token the sidecar holds, to show what the proxy refuses), as a
//! namespace user with edit rights on AccessRequests, and as an approver who is not the
//! decider. Against the real API server with the chart's RBAC (its golden rendering), the
//! operator's webhooks and AccessRequest controller, and a sidecar that serves PostgreSQL and
//! the Kubernetes API with the agent's service account. Every attempt is a row of one table,
//! named by its family; the table is printed, and the test fails on any row that is not
//! refused (or, for the baselines, not allowed).

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams};
use portcullis_crds::audit::{AuditEvent, Decision};
use portcullis_crds::{AccessRequest, GrantCovers, SidecarConfig};
use portcullis_e2e::{harness, repo_root, User};
use portcullis_sidecar::approval::KubeAccess;
use portcullis_sidecar::config::Options;
use serde::Deserialize;
use tokio_postgres::{Client, NoTls};

const TIMEOUT_SECONDS: u64 = 30;
const PLACEHOLDER: &str = "portcullis-placeholder-token";

/// One attempt and what came of it.
struct Row {
    family: &'static str,
    actor: &'static str,
    attempt: String,
    /// `Ok(evidence)` when the attempt was refused (or a baseline allowed) as expected.
    result: Result<String, String>,
}

struct Table(Vec<Row>);

impl Table {
    fn row(
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

    /// A refusal: the command failed and its output names `expected`.
    fn refused(
        &mut self,
        family: &'static str,
        actor: &'static str,
        attempt: impl Into<String>,
        out: &Output,
        expected: &str,
    ) {
        let text = common::text(out);
        let result = if !out.status.success() && text.contains(expected) {
            Ok(first_line(&text))
        } else {
            Err(format!(
                "expected a refusal naming {expected:?}, got: {text}"
            ))
        };
        self.row(family, actor, attempt, result);
    }

    /// A baseline: the command succeeded.
    fn allowed(
        &mut self,
        family: &'static str,
        actor: &'static str,
        attempt: impl Into<String>,
        out: &Output,
    ) {
        let text = common::text(out);
        let result = if out.status.success() {
            Ok(format!("allowed (baseline): {}", first_line(&text)))
        } else {
            Err(format!("the baseline should succeed: {text}"))
        };
        self.row(family, actor, attempt, result);
    }
}

/// The server's message of a PostgreSQL error.
fn pg_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

fn first_line(s: &str) -> String {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(160)
        .collect()
}

/// The rules of a ClusterRole of the chart's golden rendering.
fn chart_rules(role: &str) -> serde_json::Value {
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

fn kubectl(kubeconfig: &str, args: &[&str]) -> Output {
    Command::new(harness().kubectl_path())
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kubectl")
}

async fn connect(port: u16) -> Arc<Client> {
    let conn = format!("host=127.0.0.1 port={port} user=agent dbname=shop sslmode=disable");
    let (client, connection) = tokio_postgres::connect(&conn, NoTls)
        .await
        .expect("connect to the sidecar");
    tokio::spawn(connection);
    Arc::new(client)
}

/// The names of the requests of the namespace.
async fn names(api: &Api<AccessRequest>) -> Vec<String> {
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
async fn new_request(api: &Api<AccessRequest>, known: &[String]) -> Option<AccessRequest> {
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

type Held =
    tokio::task::JoinHandle<Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>>;

fn run(client: &Arc<Client>, sql: &str) -> Held {
    let client = client.clone();
    let sql = sql.to_owned();
    tokio::spawn(async move { client.simple_query(&sql).await })
}

struct Env {
    ns: String,
    api: Api<AccessRequest>,
    bob: String,
}

impl Env {
    fn decide(&self, verb: &str, name: &str, reason: &str) -> Output {
        common::plugin(&self.bob, &[verb, name, "-n", &self.ns, "--reason", reason])
    }

    /// Run `sql`, which must be held: the new request is returned (after `check` looked at
    /// it), then denied, and the statement must end refused.
    async fn held_then_denied(
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
            return Err(format!("cannot deny {name}: {}", common::text(&out)));
        }
        match tokio::time::timeout(Duration::from_secs(20), task).await {
            Ok(Ok(Err(e))) if pg_message(&e).contains("Denied by bob") => Ok(ar),
            other => Err(format!("held statement ended with {other:?}")),
        }
    }

    /// Run `sql`, which must not run: held (then denied) or refused at once (by the denial
    /// of the same operation moments ago).
    async fn not_run(&self, client: &Arc<Client>, sql: &str) -> Result<String, String> {
        match self.held_then_denied(client, sql).await {
            Ok(_) => Ok("held for a new approval".into()),
            Err(e) if e.starts_with("refused without a request: Denied by") => {
                Ok(format!("refused: {e}"))
            }
            Err(e) => Err(e),
        }
    }

    /// Run `sql`, which must be held; approve it and expect it to run.
    async fn approved(&self, client: &Arc<Client>, sql: &str) -> AccessRequest {
        let known = names(&self.api).await;
        let task = run(client, sql);
        let ar = new_request(&self.api, &known)
            .await
            .unwrap_or_else(|| panic!("{sql} must be held"));
        let name = ar.metadata.name.clone().expect("name");
        let out = self.decide("approve", &name, "checked");
        assert!(out.status.success(), "{}", common::text(&out));
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("runs after approval")
            .expect("task")
            .unwrap_or_else(|e| panic!("{sql} after approval: {e}"));
        ar
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_attacks_are_refused() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let ns = h.namespace("approval-attacks").await;
    common::label_namespace(&client, &ns, &[(common::TEST_LABEL, &ns)]).await;
    let webhook = common::Webhook::start(client.clone()).await;
    let hook_name = format!("approval-attacks-{ns}");
    common::register(
        &client,
        &common::options(&hook_name, webhook.url(), Some(webhook.ca_pem.clone()), &ns),
    )
    .await;
    let ctx = Arc::new(portcullis_operator::controller::Context::new(
        client.clone(),
        portcullis_operator::metrics::Metrics::new().expect("metrics"),
        "approval-attacks-test",
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
    assert!(out.status.success(), "{}", common::text(&out));

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
        common::create::<Role>(
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
    common::create::<RoleBinding>(
        &client,
        &ns,
        bind(
            "sidecar",
            "sidecar-approvals",
            serde_json::json!([{"kind": "ServiceAccount", "name": "agent", "namespace": ns}]),
        ),
    )
    .await;
    common::create::<RoleBinding>(&client, &ns, bind("approvers", "approver", serde_json::json!([
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "portcullis-approvers"},
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "agent-owners"}
    ])))
    .await;
    common::create::<RoleBinding>(
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
    common::create::<Role>(
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
    common::create::<RoleBinding>(
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
    let direct = common::token_kubeconfig(
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
                common::free_port(),
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
            pg_listen = common::free_port(),
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
    let proxy = common::token_kubeconfig(
        &dir.path().join("agent.kubeconfig"),
        &format!("https://127.0.0.1:{kube_port}"),
        &tls.join("ca.crt").to_string_lossy(),
        PLACEHOLDER,
        &ns,
    );
    let alice = h.kubeconfig_of(User::Owner).to_owned();
    let env = Env {
        ns: ns.clone(),
        api: Api::namespaced(client.clone(), &ns),
        bob: h.kubeconfig_of(User::Approver).to_owned(),
    };
    let mut t = Table(Vec::new());
    const AGENT_PROXY: &str = "agent, through its proxy";
    const AGENT_DIRECT: &str = "agent's token, direct (baseline)";
    const EDITOR: &str = "namespace user with edit (alice)";
    const APPROVER: &str = "approver, not the decider (alice)";
    const AGENT_SQL: &str = "agent, SQL through the sidecar";

    // What is shown is what is granted: the values the approver saw.
    let c1 = connect(pg_port).await;
    let shown = "UPDATE customers SET city = 'Ghent' WHERE id = 7";
    let ar1 = env.approved(&c1, shown).await;
    let ar1_name = ar1.metadata.name.clone().expect("name");
    let op = &ar1.spec.operation;
    t.row(
        "shown is granted",
        AGENT_SQL,
        "the request shows the statement with its values",
        (op.statement.as_deref() == Some(shown)
            && op.covers == GrantCovers::Values
            && op.fingerprint == op.grant_fingerprint())
        .then(|| format!("shown: {shown}"))
        .ok_or_else(|| format!("{op:?}")),
    );
    c1.simple_query(shown)
        .await
        .expect("the approved statement runs again on its grant");
    let wider = "UPDATE customers SET city = 'Ghent' WHERE id > 0";
    t.row(
        "placeholders hide values",
        AGENT_SQL,
        format!("approved `{shown}`, then `{wider}`"),
        env.held_then_denied(&c1, wider)
            .await
            .map(|_| "held for a new approval".into()),
    );

    // A prepared statement asks at Bind, with the values (tokio-postgres binds them binary).
    let prepared = "UPDATE customers SET city = $1 WHERE id = $2";
    let bind = |client: &Arc<Client>, id: i32| {
        let client = client.clone();
        tokio::spawn(async move { client.execute(prepared, &[&"Leuven", &id]).await })
    };
    let known = names(&env.api).await;
    let task = bind(&c1, 12);
    let ar = new_request(&env.api, &known).await.expect("held at Bind");
    let name = ar.metadata.name.clone().expect("name");
    // The statement, then the bound values the sidecar read (in their own field).
    let statement = format!(
        "{}\n-- bound values: {}",
        ar.spec.operation.statement.clone().unwrap_or_default(),
        ar.spec.operation.bound_values.join(", ")
    );
    let out = env.decide("approve", &name, "checked");
    assert!(out.status.success(), "{}", common::text(&out));
    let ran = tokio::time::timeout(Duration::from_secs(20), task).await;
    t.row(
        "placeholders hide values",
        AGENT_SQL,
        "a prepared statement is shown with its bound values",
        (statement.contains(
            "-- bound values: $1 = '\\x4c657576656e' (binary), $2 = '\\x0000000c' (binary)",
        ) && matches!(ran, Ok(Ok(Ok(1)))))
        .then(|| statement.replace('\n', " "))
        .ok_or_else(|| format!("{statement:?}, {ran:?}")),
    );
    let known = names(&env.api).await;
    let task = bind(&c1, 13);
    let held = new_request(&env.api, &known).await;
    if let Some(ar) = &held {
        let out = env.decide(
            "deny",
            ar.metadata.name.as_deref().unwrap_or(""),
            "other values",
        );
        assert!(out.status.success(), "{}", common::text(&out));
    }
    let ended = tokio::time::timeout(Duration::from_secs(20), task).await;
    t.row(
        "placeholders hide values",
        AGENT_SQL,
        "the same prepared statement bound to other values",
        match (&held, &ended) {
            (Some(_), Ok(Ok(Err(e)))) if pg_message(e).contains("Denied by bob") => {
                Ok("held at Bind for a new approval".to_owned())
            }
            other => Err(format!("{other:?}")),
        },
    );

    // DO blocks: the body is shown and hashed.
    let harmless = "DO $$ BEGIN PERFORM 1; END $$";
    let ar = env.approved(&c1, harmless).await;
    t.row(
        "DO blocks",
        AGENT_SQL,
        "the request shows the whole body",
        (ar.spec.operation.statement.as_deref() == Some(harmless))
            .then(|| "body shown".to_owned())
            .ok_or_else(|| format!("{:?}", ar.spec.operation)),
    );
    let rewriting = "DO $$ BEGIN UPDATE customers SET city = city WHERE id > 0; END $$";
    t.row(
        "DO blocks",
        AGENT_SQL,
        "approved a harmless DO block, then a block that rewrites a table",
        env.held_then_denied(&c1, rewriting)
            .await
            .map(|_| "held for a new approval".into()),
    );

    // Safe display: control characters, escapes and bidi overrides in the statement and the
    // justification.
    c1.simple_query(
        "SET portcullis.justification = 'ticket 9\u{1b}[2K\u{1b}[1Aapproved by security'",
    )
    .await
    .expect("justification");
    let known = names(&env.api).await;
    let sneaky = "UPDATE customers SET city = '\u{1b}[1A\u{1b}[2KGhent\u{202e}tneG' WHERE id = 7";
    let task = run(&c1, sneaky);
    let ar = new_request(&env.api, &known).await.expect("held");
    let name = ar.metadata.name.clone().expect("name");
    let raw = kubectl(
        &env.bob,
        &[
            "get",
            "ar",
            &name,
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.operation.statement}",
        ],
    );
    t.row(
        "safe display",
        "approver, raw jsonpath (baseline)",
        "the statement holds terminal escapes",
        String::from_utf8_lossy(&raw.stdout)
            .contains('\u{1b}')
            .then(|| "raw output carries ESC (what show must escape)".to_owned())
            .ok_or_else(|| common::text(&raw)),
    );
    let show = common::plugin(&env.bob, &["show", &name, "-n", &ns]);
    let shown_text = String::from_utf8_lossy(&show.stdout).into_owned();
    t.row(
        "safe display",
        "approver, kubectl portcullis show",
        "escapes, bidi overrides in statement and justification",
        (show.status.success()
            && !shown_text.contains('\u{1b}')
            && !shown_text.contains('\u{202e}')
            && shown_text.contains("\\e[1A\\e[2KGhent\\u{202E}tneG")
            && shown_text.contains("ticket 9\\e[2K\\e[1Aapproved by security")
            && shown_text.contains("Warning:"))
        .then(|| "escaped visibly, with a warning".to_owned())
        .ok_or_else(|| common::text(&show)),
    );
    let out = env.decide("deny", &name, "no\u{1b}[2K");
    assert!(out.status.success(), "{}", common::text(&out));
    let _ = task.await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let mut note = String::new();
    for _ in 0..100 {
        if let Some(n) = events
            .list(&ListParams::default())
            .await
            .ok()
            .and_then(|l| {
                l.items.into_iter().find_map(|e| {
                    (e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())
                        && e.reason.as_deref() == Some("Denied"))
                    .then(|| e.note.unwrap_or_default())
                })
            })
        {
            note = n;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.row(
        "safe display",
        "operator Event",
        "a decision reason with an escape sequence",
        (note.contains("no\\e[2K") && !note.contains('\u{1b}'))
            .then(|| note.clone())
            .ok_or_else(|| format!("event note {note:?}")),
    );
    c1.simple_query("SET portcullis.justification = 'attack table'")
        .await
        .expect("justification");

    // Limits: a retried operation reuses its request; at most maxPending (2) wait.
    let (c2, c3, c4, c5) = (
        connect(pg_port).await,
        connect(pg_port).await,
        connect(pg_port).await,
        connect(pg_port).await,
    );
    let known = names(&env.api).await;
    let retried = "UPDATE customers SET city = 'Leuven' WHERE id = 9";
    let first = run(&c2, retried);
    let ar6 = new_request(&env.api, &known).await.expect("held");
    let ar6_name = ar6.metadata.name.clone().expect("name");
    let second = run(&c3, retried);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = names(&env.api).await;
    t.row(
        "limits",
        AGENT_SQL,
        "the same operation asked again from another session",
        (now.len() == known.len() + 1)
            .then(|| format!("one request ({ar6_name}) for both"))
            .ok_or_else(|| format!("{} new requests", now.len() - known.len())),
    );
    let other = run(&c4, "UPDATE customers SET city = 'Mons' WHERE id = 10");
    let ar7 = new_request(&env.api, &now).await.expect("held");
    let third = c5
        .simple_query("UPDATE customers SET city = 'Liege' WHERE id = 11")
        .await;
    t.row(
        "limits",
        AGENT_SQL,
        "a third pending request with approval.maxPending: 2",
        match &third {
            Err(e) if pg_message(e).contains("approval.maxPending is 2") => {
                Ok("refused at once".to_owned())
            }
            other => Err(format!("{other:?}")),
        },
    );
    // Before the decision only the decision may be added.
    let out = kubectl(
        &alice,
        &[
            "patch",
            "ar",
            &ar6_name,
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"justification":"rewritten before the decision"}}"#,
        ],
    );
    t.refused(
        "immutable after decision",
        APPROVER,
        "change the justification of a pending request",
        &out,
        "only spec.decision may change",
    );
    for name in [ar6_name.clone(), ar7.metadata.name.clone().expect("name")] {
        let out = env.decide("deny", &name, "limits row");
        assert!(out.status.success(), "{}", common::text(&out));
    }
    for task in [first, second, other] {
        let r = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("ends")
            .expect("task");
        assert!(r.is_err(), "denied: {r:?}");
    }

    // A retried kubectl exec waits on the request already made.
    // kubectl's own fallback from WebSocket to SPDY after the refusal asks again too.
    let exec = |proxy: String, ns: String| {
        tokio::task::spawn_blocking(move || {
            Command::new(harness().kubectl_path())
                .env("KUBECONFIG", &proxy)
                .args([
                    "exec",
                    "web-0",
                    "-n",
                    &ns,
                    "--",
                    "rm",
                    "-f",
                    "/nonexistent/portcullis",
                ])
                .stdin(Stdio::null())
                .output()
                .expect("run kubectl")
        })
    };
    let known = names(&env.api).await;
    let first = exec(proxy.clone(), ns.clone());
    let ar = new_request(&env.api, &known).await.expect("exec held");
    let retry = exec(proxy.clone(), ns.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = env.decide(
        "deny",
        ar.metadata.name.as_deref().unwrap_or(""),
        "limits row",
    );
    assert!(out.status.success(), "{}", common::text(&out));
    let (a, b) = (first.await.expect("kubectl"), retry.await.expect("kubectl"));
    let after = names(&env.api).await;
    t.row(
        "limits",
        "agent, kubectl exec through its proxy",
        "a retried kubectl exec",
        (after.len() == known.len() + 1
            && common::text(&a).contains("exec denied by bob")
            && common::text(&b).contains("exec denied by bob"))
        .then(|| {
            "one request for both and kubectl's fallbacks; all refused on the denial".to_owned()
        })
        .ok_or_else(|| {
            format!(
                "{} new requests; {} / {}",
                after.len() - known.len(),
                common::text(&a),
                common::text(&b)
            )
        }),
    );

    // Session grants: only the guardrail and the session they name, from the spec.
    let c6 = connect(pg_port).await;
    let ar8 = env
        .approved(&c6, "UPDATE orders SET status = status WHERE id = 1")
        .await;
    let ar8_name = ar8.metadata.name.clone().expect("name");
    c6.simple_query("UPDATE orders SET status = status WHERE id = 2")
        .await
        .expect("the session grant covers its guardrail in its session");
    t.row(
        "session grant, other guardrail",
        AGENT_SQL,
        "an order-updates session grant, then an order insert",
        env.held_then_denied(
            &c6,
            "INSERT INTO orders (id, customer_id, amount, status, placed_at) VALUES (999999, 1, 1, 'x', now())",
        )
        .await
        .map(|_| "held for a new approval".into()),
    );
    let c7 = connect(pg_port).await;
    let other_session = env
        .held_then_denied(&c7, "UPDATE orders SET status = status WHERE id = 3")
        .await
        .expect("another session is held");
    let label = other_session
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("portcullis.dev/session"))
        .cloned()
        .expect("session label");
    let patch = format!(r#"{{"metadata":{{"labels":{{"portcullis.dev/session":"{label}"}}}}}}"#);
    let out = kubectl(
        &alice,
        &[
            "patch",
            "ar",
            &ar8_name,
            "-n",
            &ns,
            "--type=merge",
            "-p",
            &patch,
        ],
    );
    t.allowed(
        "session grant by labels",
        EDITOR,
        "relabel an approved session grant to another session",
        &out,
    );
    t.row(
        "session grant by labels",
        AGENT_SQL,
        "the relabelled grant in the other session",
        env.held_then_denied(&c7, "UPDATE orders SET status = status WHERE id = 4")
            .await
            .map(|_| "held: the grant's session is read from its sealed spec".into()),
    );
    let out = kubectl(
        &alice,
        &[
            "patch",
            "ar",
            &ar8_name,
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"session":"another"}}"#,
        ],
    );
    t.refused(
        "session grant by labels",
        EDITOR,
        "move a decided grant's spec.session",
        &out,
        "a decided AccessRequest cannot change",
    );

    // Immutable after the decision.
    for (what, body) in [
        (
            "justification",
            r#"{"spec":{"justification":"rewritten afterwards"}}"#,
        ),
        (
            "requested duration",
            r#"{"spec":{"requestedDuration":"876000h"}}"#,
        ),
    ] {
        let out = kubectl(
            &alice,
            &[
                "patch",
                "ar",
                &ar1_name,
                "-n",
                &ns,
                "--type=merge",
                "-p",
                body,
            ],
        );
        t.refused(
            "immutable after decision",
            APPROVER,
            format!("change the {what} of an approved request"),
            &out,
            "a decided AccessRequest cannot change",
        );
    }

    // Status: written by the operator only, and never a grant.
    let expired = r#"{"status":{"phase":"Approved","expiresAt":"2099-01-01T00:00:00Z"}}"#;
    // kubectl patch reads the object first, which RBAC already refuses: the write itself is
    // sent raw (an update of the status subresource).
    let mut revived = env.api.get(&ar1_name).await.expect("request");
    revived.status = serde_json::from_value(
        serde_json::json!({"phase": "Approved", "expiresAt": "2099-01-01T00:00:00Z"}),
    )
    .expect("status");
    let revived_file = dir.path().join("revived.json");
    std::fs::write(
        &revived_file,
        serde_json::to_string(&revived).expect("json"),
    )
    .expect("file");
    let status_path =
        format!("/apis/portcullis.dev/v1alpha1/namespaces/{ns}/accessrequests/{ar1_name}/status");
    let revived_file = revived_file.to_string_lossy().into_owned();
    let out = kubectl(
        &proxy,
        &["replace", "--raw", &status_path, "-f", &revived_file],
    );
    t.refused(
        "status",
        AGENT_PROXY,
        "update accessrequests/status to Approved until 2099",
        &out,
        "builtin/approval-objects",
    );
    let out = kubectl(
        &direct,
        &["replace", "--raw", &status_path, "-f", &revived_file],
    );
    t.refused(
        "status",
        "agent's token, direct (chart RBAC)",
        "update accessrequests/status",
        &out,
        "forbidden",
    );
    let out = kubectl(
        &alice,
        &[
            "patch",
            "ar",
            &ar6_name,
            "-n",
            &ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            expired,
        ],
    );
    t.refused(
        "status",
        EDITOR,
        "revive a denied request through its status",
        &out,
        "the operator writes it",
    );

    // Requests the agent makes itself.
    let forged = |statement: &str, fingerprint_of: &str, requester: &str| -> AccessRequest {
        // Labelled as the sidecar labels its own requests, so that only the seal tells them
        // apart.
        let fingerprint = portcullis_sidecar::approval::sql_operation(
            fingerprint_of.to_owned(),
            GrantCovers::Values,
        )
        .fingerprint;
        let mut ar: AccessRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "portcullis.dev/v1alpha1", "kind": "AccessRequest",
            "metadata": {"generateName": "forged-", "labels": {
                "portcullis.dev/resource": "shop-db",
                "portcullis.dev/requester": "agent",
                "portcullis.dev/fingerprint": fingerprint,
                "portcullis.dev/session": "forged"
            }},
            "spec": {
                "requester": {"name": "agent", "serviceAccount": requester},
                "resource": "shop-db", "policy": "shop", "rule": "customer-writes",
                "operation": {"kind": "sql", "statement": fingerprint_of, "fingerprint": "x"},
                "scope": "statement", "session": "forged"
            }
        }))
        .expect("request");
        ar.spec.operation.fingerprint = ar.spec.operation.grant_fingerprint();
        ar.spec.operation.statement = Some(statement.to_owned());
        ar
    };
    let agent_sa = format!("system:serviceaccount:{ns}:agent");
    let write = |ar: &AccessRequest, name: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_string(ar).expect("json")).expect("file");
        path.to_string_lossy().into_owned()
    };
    let mismatched = write(&forged(shown, wider, &agent_sa), "mismatched.json");
    let out = kubectl(&proxy, &["create", "-n", &ns, "-f", &mismatched]);
    t.refused(
        "agent creates a request",
        AGENT_PROXY,
        "create an AccessRequest (shown one row, fingerprint of all rows)",
        &out,
        "builtin/approval-objects",
    );
    let gp_path = format!("/apis/portcullis.dev/v1alpha1/namespaces/{ns}/gatewaypolicies/shop");
    let gp = Api::<portcullis_crds::GatewayPolicy>::namespaced(client.clone(), &ns)
        .get("shop")
        .await
        .expect("policy");
    let gp_file = dir.path().join("gp.json");
    std::fs::write(&gp_file, serde_json::to_string(&gp).expect("json")).expect("file");
    let gp_file = gp_file.to_string_lossy().into_owned();
    for (attempt, args) in [
        (
            "delete an AccessRequest",
            vec!["delete", "ar", ar1_name.as_str(), "-n", ns.as_str()],
        ),
        (
            "add a decision",
            vec![
                "patch",
                "ar",
                ar6_name.as_str(),
                "-n",
                ns.as_str(),
                "--type=merge",
                "-p",
                r#"{"spec":{"decision":{"verdict":"Approved","reason":"me"}}}"#,
            ],
        ),
        (
            "replace a GatewayPolicy",
            vec!["replace", "--raw", gp_path.as_str(), "-f", gp_file.as_str()],
        ),
    ] {
        let out = kubectl(&proxy, &args);
        t.refused(
            "agent writes approval state",
            AGENT_PROXY,
            attempt,
            &out,
            "builtin/approval-objects",
        );
    }
    let mut audited = false;
    for _ in 0..50 {
        audited = common::spool_records(&spool).iter().any(|r| {
            matches!(&r.event, AuditEvent::KubeRequest(k) if k.decision == Decision::Deny
                && k.resource == "accessrequests"
                && k.verb == "create"
                && k.rule.as_ref().is_some_and(|r| r.rule == "approval-objects"))
        });
        if audited {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.row(
        "agent creates a request",
        AGENT_PROXY,
        "the refusal is in the audit log",
        audited
            .then(|| "KubeRequest deny, rule builtin/approval-objects".to_owned())
            .ok_or_else(|| "no audit record".to_owned()),
    );
    let out = kubectl(&direct, &["create", "-n", &ns, "-f", &mismatched]);
    t.refused(
        "agent creates a request",
        AGENT_DIRECT,
        "a fingerprint that is not the shown statement's",
        &out,
        "not the fingerprint of the shown operation",
    );
    let other_requester = write(
        &forged(wider, wider, &format!("system:serviceaccount:{ns}:other")),
        "other.json",
    );
    let out = kubectl(&direct, &["create", "-n", &ns, "-f", &other_requester]);
    t.refused(
        "agent creates a request",
        AGENT_DIRECT,
        "naming another service account as requester",
        &out,
        "creates this AccessRequest",
    );
    let as_agent = write(&forged(wider, wider, &agent_sa), "as-agent.json");
    let out = kubectl(&alice, &["create", "-n", &ns, "-f", &as_agent]);
    t.refused(
        "agent creates a request",
        EDITOR,
        "create a request in the agent's name",
        &out,
        "creates this AccessRequest",
    );
    let out = kubectl(
        &direct,
        &["create", "-n", &ns, "-f", &as_agent, "-o", "name"],
    );
    t.allowed(
        "agent creates a request",
        AGENT_DIRECT,
        "a well-formed request for all rows, in its own name",
        &out,
    );
    let created = String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let out = env.decide("approve", &created, "looks fine");
    t.allowed(
        "agent creates a request",
        "approver (bob)",
        "approve the well-formed forged request",
        &out,
    );
    t.row(
        "agent creates a request",
        AGENT_SQL,
        "the statement of the approved forged request",
        env.not_run(&c1, wider)
            .await
            .map(|r| format!("not run ({r}): the sidecar honours only requests it sealed")),
    );
    // Status that says Approved does not make a denied request a grant.
    let denied = env.api.get(&ar6_name).await.expect("denied request");
    let _ = Api::<AccessRequest>::namespaced(client.clone(), &ns)
        .patch_status(
            &ar6_name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"phase": "Approved", "expiresAt": "2099-01-01T00:00:00Z"}})),
        )
        .await;
    t.row(
        "status",
        AGENT_SQL,
        "a denied request whose status says Approved until 2099",
        env.not_run(
            &c2,
            denied
                .spec
                .operation
                .statement
                .as_deref()
                .unwrap_or(retried),
        )
        .await
        .map(|r| format!("not run ({r}): grants come from the stamped decision, not status")),
    );

    // Workloads no policy names get the resource's policies, not none.
    let other_spool = dir.path().join("other-spool");
    let other_text = config_text(&other_spool, false);
    let other_sidecar = portcullis_sidecar::start(
        SidecarConfig::from_yaml(&other_text).expect("config"),
        Options::service_account(&ns, "other"),
    )
    .await
    .expect("second sidecar");
    let unnamed = connect(other_sidecar.addr("shop-db").expect("listening").port()).await;
    let write_sql = "UPDATE customers SET city = city WHERE id = 1";
    let (pg, connection) = tokio_postgres::connect(h.pg_url(), NoTls)
        .await
        .expect("direct connection");
    tokio::spawn(connection);
    t.row(
        "workloads no policy names",
        "another service account, direct to PostgreSQL (baseline)",
        write_sql,
        pg.simple_query(write_sql)
            .await
            .map(|_| "runs (baseline)".to_owned())
            .map_err(|e| e.to_string()),
    );
    t.row(
        "workloads no policy names",
        "another service account, through its sidecar",
        write_sql,
        match unnamed.simple_query(write_sql).await {
            Err(e) if pg_message(&e).contains("standalone mode") => {
                Ok("held by the resource's policies (refused: no approvals here)".into())
            }
            other => Err(format!("{other:?}")),
        },
    );
    other_sidecar.shutdown().await;

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
    sidecar.shutdown().await;
    let _ = stop_tx.send(());
    let _ = controller.await;
    webhook.stop().await;
    common::unregister(&client, &hook_name).await;
    assert_eq!(
        failures, 0,
        "{failures} attempts were not refused as expected"
    );
}
