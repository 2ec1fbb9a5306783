//! Just-in-time approval end to end, against the real API server and PostgreSQL: the
//! operator's admission webhooks and AccessRequest controller run in this process, and so does
//! a sidecar that reaches the API server with its service account's token. A client's write
//! to `customers` waits on an AccessRequest until an approver decides through the plugin;
//! the same statement then runs on the grant; a denied and a timed-out statement are refused
//! while the session stays usable; the requester cannot approve its own request; every step
//! is in the audit spool, linked by the request name.

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams};
use portcullis_crds::audit::{ApprovalStep, AuditEvent, AuditRecord, Decision};
use portcullis_crds::{AccessRequest, AccessRequestPhase, SidecarConfig};
use portcullis_e2e::{harness, User};
use portcullis_sidecar::approval::KubeAccess;
use portcullis_sidecar::config::Options;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

const POLICY: &str = "customers-gdpr";
/// Seconds a held statement waits for a decision.
const TIMEOUT_SECONDS: u64 = 8;
/// Seconds Denied and Expired requests are kept.
const RETENTION_SECONDS: u64 = 5;

/// A client of the sidecar whose notices arrive on the returned channel.
async fn connect(port: u16) -> (Client, mpsc::UnboundedReceiver<String>) {
    let conn = format!("host=127.0.0.1 port={port} user=agent dbname=shop sslmode=disable");
    let (client, mut connection) = tokio_postgres::connect(&conn, NoTls)
        .await
        .expect("connect to the sidecar");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notice(n)) => {
                    let _ = tx.send(n.message().to_owned());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    (client, rx)
}

/// The AccessRequests of `ns` other than `known`, once there is one.
async fn new_request(api: &Api<AccessRequest>, known: &[String]) -> AccessRequest {
    common::eventually(Duration::from_secs(20), "a new AccessRequest", || async {
        api.list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|ar| !known.contains(&ar.metadata.name.clone().unwrap_or_default()))
    })
    .await
}

fn steps(records: &[AuditRecord], request: &str) -> Vec<ApprovalStep> {
    records
        .iter()
        .filter_map(|r| match &r.event {
            AuditEvent::Approval(a) if a.request == request => Some(a.step),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_write_waits_for_an_approver_and_runs_on_the_grant() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let ns = h.namespace("approval-flow").await;

    // The operator: admission webhooks (stamping, approvers only) and the lifecycle
    // controller.
    common::label_namespace(&client, &ns, &[(common::TEST_LABEL, &ns)]).await;
    let webhook = common::Webhook::start(client.clone()).await;
    let hook_name = format!("approval-flow-{ns}");
    common::register(
        &client,
        &common::options(&hook_name, webhook.url(), Some(webhook.ca_pem.clone()), &ns),
    )
    .await;
    let ctx = std::sync::Arc::new(
        portcullis_operator::controller::Context::new(
            client.clone(),
            portcullis_operator::metrics::Metrics::new().expect("metrics"),
            "approval-flow-test",
            None,
        )
        .with_access_request_retention(Duration::from_secs(RETENTION_SECONDS)),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(portcullis_operator::controller::access_request::run(
        ctx,
        async move {
            let _ = stop_rx.await;
        },
    ));

    // The policy, as a GatewayPolicy (admission reads its approvers) and as the sidecar's
    // compiled configuration.
    let policy = format!(
        "apiVersion: portcullis.dev/v1alpha1
kind: GatewayPolicy
metadata:
  name: {POLICY}
spec:
  subjects:
  - kind: ServiceAccount
    name: agent
  guardrails:
  - name: customer-writes
    match:
      statementKinds: [insert, update, delete]
      tables: [customers]
    action: requireApproval
    grantCovers: shape
  approval:
    approverGroups: [portcullis-approvers]
    timeout: {TIMEOUT_SECONDS}s
    grantDuration: 1h
    grantScope: statement
"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(&policy_file, &policy).expect("policy file");
    let out = h.kubectl(&["apply", "-n", &ns, "-f", &policy_file.to_string_lossy()]);
    assert!(out.status.success(), "{}", common::text(&out));

    // The agent's service account may create and follow AccessRequests (what the sidecar
    // does), and may patch them, so that admission, not RBAC, must refuse its self-approval.
    h.service_account(&ns, "agent").await;
    common::create::<Role>(&client, &ns, serde_json::json!({
        "metadata": {"name": "sidecar"},
        "rules": [
            {"apiGroups": ["portcullis.dev"], "resources": ["accessrequests"], "verbs": ["create", "get", "list", "watch", "patch"]}
        ]
    }))
    .await;
    common::create::<Role>(&client, &ns, serde_json::json!({
        "metadata": {"name": "approver"},
        "rules": [{"apiGroups": ["portcullis.dev"], "resources": ["accessrequests"], "verbs": ["get", "list", "patch"]}]
    }))
    .await;
    common::create::<RoleBinding>(
        &client,
        &ns,
        serde_json::json!({
            "metadata": {"name": "sidecar"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sidecar"},
            "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}]
        }),
    )
    .await;
    common::create::<RoleBinding>(&client, &ns, serde_json::json!({
        "metadata": {"name": "approvers"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "approver"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "portcullis-approvers"}]
    }))
    .await;
    let token = h.token(&ns, "agent", None, None).await;
    let agent_kubeconfig = common::token_kubeconfig(
        &dir.path().join("agent.kubeconfig"),
        h.apiserver_url(),
        h.ca_file(),
        &token,
        &ns,
    );

    // The sidecar.
    let creds = dir.path().join("creds");
    std::fs::create_dir_all(&creds).expect("creds dir");
    std::fs::write(creds.join("username"), "app\n").expect("user file");
    std::fs::write(creds.join("password"), format!("{}\n", h.pg_password())).expect("password");
    let spool = dir.path().join("spool");
    let config = SidecarConfig::from_yaml(&format!(
        "apiVersion: portcullis.dev/sidecar-config/v1alpha1
namespace: {ns}
adminListen: 127.0.0.1:0
audit:
  spoolDir: {spool}
resources:
- name: shop-db
  type: postgres
  listenPort: 0
  upstream:
    host: {host}
    port: {port}
    tlsMode: disable
  credentials:
    usernameFile: {creds}/username
    passwordFile: {creds}/password
  policies: [{POLICY}]
policies:
- name: {POLICY}
  guardrails:
  - name: customer-writes
    statementKinds: [insert, update, delete]
    tables: [customers]
    action: requireApproval
    grantCovers: shape
  approval:
    approverGroups: [portcullis-approvers]
    timeoutSeconds: {TIMEOUT_SECONDS}
    grantSeconds: 3600
    grantScope: statement
",
        spool = spool.display(),
        host = h.pg_host(),
        port = h.pg_port(),
        creds = creds.display(),
    ))
    .expect("sidecar config");
    let mut options = Options::service_account(&ns, "agent");
    options.kube = KubeAccess::Kubeconfig(agent_kubeconfig.clone().into());
    let sidecar = portcullis_sidecar::start(config, options)
        .await
        .expect("sidecar starts");
    let port = sidecar.addr("shop-db").expect("listening").port();
    let api: Api<AccessRequest> = Api::namespaced(client.clone(), &ns);
    let bob = h.kubeconfig_of(User::Approver);

    // 1. A write waits; the request carries the statement with placeholders (the guardrail
    //    grants by shape), its fingerprint and the justification; the client is told how to
    //    approve it.
    let (agent, mut notices) = connect(port).await;
    agent
        .batch_execute("SET portcullis.justification = 'ticket 4711: customer moved to Ghent'")
        .await
        .expect("justification");
    let held = tokio::spawn(async move {
        let r = agent
            .simple_query("UPDATE customers SET city = 'Ghent' WHERE id = 7")
            .await;
        (agent, r)
    });
    let ar = new_request(&api, &[]).await;
    let name = ar.metadata.name.clone().expect("name");
    let op = &ar.spec.operation;
    assert_eq!(
        op.statement.as_deref(),
        Some("UPDATE customers SET city = ? WHERE id = ?"),
        "{ar:?}"
    );
    assert_eq!(op.covers, portcullis_crds::GrantCovers::Shape, "{ar:?}");
    assert_eq!(op.fingerprint, op.grant_fingerprint(), "{ar:?}");
    assert_eq!(
        ar.spec.justification.as_deref(),
        Some("ticket 4711: customer moved to Ghent")
    );
    assert_eq!(
        ar.spec.requester.service_account,
        format!("system:serviceaccount:{ns}:agent")
    );
    assert_eq!(
        (ar.spec.policy.as_str(), ar.spec.rule.as_str()),
        (POLICY, "customer-writes")
    );
    let notice = tokio::time::timeout(Duration::from_secs(10), notices.recv())
        .await
        .expect("a notice while the statement waits")
        .expect("notice");
    assert!(
        notice.contains(&format!(
            "kubectl portcullis approve {name} -n {ns} --reason"
        )),
        "{notice}"
    );

    // Holding one session does not hold another.
    let (other, _) = connect(port).await;
    let started = Instant::now();
    other.simple_query("SELECT 1").await.expect("other session");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!held.is_finished(), "the write must wait for a decision");

    // 2. The requester cannot approve its own request (admission refuses, not RBAC).
    let out = common::plugin(
        &agent_kubeconfig,
        &["approve", &name, "-n", &ns, "--reason", "I approve myself"],
    );
    assert!(!out.status.success());
    assert!(
        common::text(&out).contains("requested this operation and cannot decide it"),
        "{}",
        common::text(&out)
    );
    assert!(!held.is_finished());

    // 3. bob approves through the plugin; the statement runs.
    let out = common::plugin(
        bob,
        &[
            "approve",
            &name,
            "-n",
            &ns,
            "--reason",
            "checked ticket 4711",
        ],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    let (agent, result) = tokio::time::timeout(Duration::from_secs(20), held)
        .await
        .expect("the write completes after approval")
        .expect("task");
    let rows = result.expect("approved write runs");
    assert!(
        rows.iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::CommandComplete(1))),
        "{rows:?}"
    );
    let ar = api.get(&name).await.expect("request");
    let decision = ar.spec.decision.expect("decision");
    assert_eq!(decision.decided_by.as_deref(), Some("bob"));

    // 4. The same statement (other literals) runs on the grant, without a new request.
    let started = Instant::now();
    agent
        .simple_query("UPDATE customers SET city = 'Antwerp' WHERE id = 8")
        .await
        .expect("runs on the grant");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        api.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    // Uses are audit records (step 8), not written to the request.
    common::eventually(Duration::from_secs(10), "the grant Approved", || async {
        let ar = api.get(&name).await.ok()?;
        (ar.status?.phase == AccessRequestPhase::Approved).then_some(())
    })
    .await;

    // 5. Extended protocol: a parameterised write is held at Parse; bob approves; the
    //    Execute runs and counts as a use, and so does the next Execute on the grant.
    let held = tokio::spawn(async move {
        let r = agent
            .execute(
                "UPDATE customers SET city = $1 WHERE id = $2",
                &[&"Leuven", &11i32],
            )
            .await;
        (agent, r)
    });
    let ar = new_request(&api, std::slice::from_ref(&name)).await;
    let extended_name = ar.metadata.name.clone().expect("name");
    assert_eq!(
        ar.spec.operation.statement.as_deref(),
        Some("UPDATE customers SET city = $1 WHERE id = $2")
    );
    let out = common::plugin(
        bob,
        &[
            "approve",
            &extended_name,
            "-n",
            &ns,
            "--reason",
            "ticket 4712",
        ],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    let (agent, result) = tokio::time::timeout(Duration::from_secs(20), held)
        .await
        .expect("the prepared write completes after approval")
        .expect("task");
    assert_eq!(result.expect("approved prepared write runs"), 1);
    let n = agent
        .execute(
            "UPDATE customers SET city = $1 WHERE id = $2",
            &[&"Mechelen", &12i32],
        )
        .await
        .expect("runs on the grant");
    assert_eq!(n, 1);

    // 6. Extended protocol: a different write is held at Parse; bob denies it.
    let known = vec![name.clone(), extended_name.clone()];
    let denied = tokio::spawn(async move {
        let r = agent
            .execute(
                "UPDATE customers SET phone = $1 WHERE id = $2",
                &[&"+32 2 555 01 01", &9i32],
            )
            .await;
        (agent, r)
    });
    let ar = new_request(&api, &known).await;
    let denied_name = ar.metadata.name.clone().expect("name");
    assert_eq!(
        ar.spec.operation.statement.as_deref(),
        Some("UPDATE customers SET phone = $1 WHERE id = $2")
    );
    let out = common::plugin(
        bob,
        &[
            "deny",
            &denied_name,
            "-n",
            &ns,
            "--reason",
            "no ticket for this",
        ],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    let (agent, result) = tokio::time::timeout(Duration::from_secs(20), denied)
        .await
        .expect("the denied write returns")
        .expect("task");
    let err = result.expect_err("denied");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "42501");
    assert!(
        db.message()
            .starts_with("Denied by bob: no ticket for this"),
        "{}",
        db.message()
    );
    agent
        .simple_query("SELECT 1")
        .await
        .expect("session usable");

    // 7. Nobody decides: the statement times out; the session stays usable.
    let known = vec![name.clone(), extended_name.clone(), denied_name.clone()];
    let started = Instant::now();
    let err = agent
        .simple_query("DELETE FROM customers WHERE id = 123456")
        .await
        .expect_err("timed out");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "42501");
    assert!(db.message().starts_with("Timed out"), "{}", db.message());
    // The operator may expire the request a little earlier than the sidecar's own timer
    // (creationTimestamp has a resolution of one second).
    assert!(started.elapsed() >= Duration::from_secs(TIMEOUT_SECONDS - 2));
    let timed_out = new_request(&api, &known).await;
    let timed_out_name = timed_out.metadata.name.clone().expect("name");
    agent
        .simple_query("SELECT 1")
        .await
        .expect("session usable");
    // The operator expires it.
    common::eventually(Duration::from_secs(20), "the request expired", || async {
        let ar = api.get(&timed_out_name).await.ok()?;
        (ar.status?.phase == AccessRequestPhase::Expired).then_some(())
    })
    .await;

    // 8. The audit spool holds every step, linked by the request name.
    let records = common::spool_records(&spool);
    assert_eq!(
        steps(&records, &name),
        vec![
            ApprovalStep::Requested,
            ApprovalStep::Approved,
            ApprovalStep::Used,
            ApprovalStep::Used
        ]
    );
    let approved = records
        .iter()
        .find_map(|r| match &r.event {
            AuditEvent::Approval(a) if a.request == name && a.step == ApprovalStep::Approved => {
                Some(a.clone())
            }
            _ => None,
        })
        .expect("approved record");
    assert_eq!(approved.decided_by.as_deref(), Some("bob"));
    assert_eq!(
        steps(&records, &extended_name),
        vec![
            ApprovalStep::Requested,
            ApprovalStep::Approved,
            ApprovalStep::Used,
            ApprovalStep::Used
        ]
    );
    assert_eq!(
        steps(&records, &denied_name),
        vec![ApprovalStep::Requested, ApprovalStep::Denied]
    );
    assert_eq!(
        steps(&records, &timed_out_name),
        vec![ApprovalStep::Requested, ApprovalStep::TimedOut]
    );
    let statements: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.event {
            AuditEvent::Statement(s) if s.decision == Decision::RequireApproval => Some(s),
            _ => None,
        })
        .collect();
    assert!(
        statements
            .iter()
            .filter(|s| s.access_request.as_deref() == Some(name.as_str()))
            .count()
            >= 2,
        "{statements:?}"
    );

    // 9. The operator deletes the denied and the expired request after the retention period,
    //    with an Event; the live grant stays.
    common::eventually(
        Duration::from_secs(30),
        "denied and expired requests deleted",
        || async {
            let names: Vec<String> = api
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter_map(|ar| ar.metadata.name)
                .collect();
            (!names.contains(&denied_name) && !names.contains(&timed_out_name)).then_some(names)
        },
    )
    .await;
    let ar = api.get(&name).await.expect("the approved grant is kept");
    assert_eq!(
        ar.status.map(|s| s.phase),
        Some(AccessRequestPhase::Approved)
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    common::eventually(
        Duration::from_secs(10),
        "GarbageCollected events",
        || async {
            let collected = events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("GarbageCollected"))
                .count();
            (collected >= 2).then_some(())
        },
    )
    .await;

    // 10. The sidecar stops while a statement is held: the client gets a clear error, the
    //    statement did not run, and the request does not stay Pending.
    let known: Vec<String> = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|ar| ar.metadata.name)
        .collect();
    let (agent, _notices) = connect(port).await;
    let held = tokio::spawn(async move {
        agent
            .simple_query("UPDATE customers SET street = 'Nowhere' WHERE id = 10")
            .await
    });
    let pending = new_request(&api, &known).await;
    let pending_name = pending.metadata.name.clone().expect("name");
    sidecar.shutdown().await;
    let err = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held statement ends with the sidecar")
        .expect("task")
        .expect_err("not run");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "57P01", "{db:?}");
    assert!(db.message().contains("shutting down"), "{}", db.message());
    let (direct, connection) = tokio_postgres::connect(h.pg_url(), NoTls)
        .await
        .expect("direct connection");
    tokio::spawn(connection);
    let row = direct
        .query_one("SELECT street FROM customers WHERE id = 10", &[])
        .await
        .expect("row");
    assert_ne!(row.get::<_, Option<String>>(0).as_deref(), Some("Nowhere"));
    common::eventually(
        Duration::from_secs(30),
        "the orphaned request expired",
        || async {
            match api.get_opt(&pending_name).await.ok()? {
                None => Some(()),
                Some(ar) => (ar.status?.phase == AccessRequestPhase::Expired).then_some(()),
            }
        },
    )
    .await;

    let _ = stop_tx.send(());
    let _ = controller.await;
    webhook.stop().await;
    common::unregister(&client, &hook_name).await;
}

/// A sidecar of the test below, with a values-granting guardrail on writes to `customers`.
struct Flow {
    ns: String,
    api: Api<AccessRequest>,
    bob: String,
    kubeconfig: String,
    dir: tempfile::TempDir,
}

impl Flow {
    fn config(&self, spool: &std::path::Path) -> SidecarConfig {
        let h = harness();
        let creds = self.dir.path().join("creds");
        SidecarConfig::from_yaml(&format!(
            "apiVersion: portcullis.dev/sidecar-config/v1alpha1
namespace: {ns}
adminListen: 127.0.0.1:0
audit:
  spoolDir: {spool}
resources:
- name: shop-db
  type: postgres
  listenPort: 0
  upstream:
    host: {host}
    port: {port}
    tlsMode: disable
  credentials:
    usernameFile: {creds}/username
    passwordFile: {creds}/password
  policies: [{POLICY}]
policies:
- name: {POLICY}
  guardrails:
  - name: customer-writes
    statementKinds: [insert, update, delete]
    tables: [customers]
    action: requireApproval
  approval:
    approverGroups: [portcullis-approvers]
    timeoutSeconds: 20
    grantSeconds: 3600
    grantScope: statement
",
            ns = self.ns,
            spool = spool.display(),
            host = h.pg_host(),
            port = h.pg_port(),
            creds = creds.display(),
        ))
        .expect("sidecar config")
    }

    async fn sidecar(&self, spool: &std::path::Path) -> portcullis_sidecar::Sidecar {
        let mut options = Options::service_account(&self.ns, "agent");
        options.kube = KubeAccess::Kubeconfig(self.kubeconfig.clone().into());
        portcullis_sidecar::start(self.config(spool), options)
            .await
            .expect("sidecar starts")
    }

    async fn names(&self) -> Vec<String> {
        self.api
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .into_iter()
            .filter_map(|a| a.metadata.name)
            .collect()
    }

    /// Decide the next new request with `verb`; its shown statement.
    async fn decide_next(&self, known: &[String], verb: &str) -> String {
        let ar = new_request(&self.api, known).await;
        let name = ar.metadata.name.clone().expect("name");
        let out = common::plugin(
            &self.bob,
            &[
                verb,
                &name,
                "-n",
                &self.ns,
                "--reason",
                "checked the values",
            ],
        );
        assert!(out.status.success(), "{}", common::text(&out));
        // The client's statement, then what the sidecar read, from their own fields.
        let op = ar.spec.operation;
        let mut shown = op.statement.unwrap_or_default();
        for definition in &op.runs {
            shown.push_str(&format!("\n-- runs: {definition}"));
        }
        if !op.bound_values.is_empty() {
            shown.push_str(&format!(
                "\n-- bound values: {}",
                op.bound_values.join(", ")
            ));
        }
        shown
    }
}

/// `prepared_values.py` against `url`.
fn prepared(
    url: String,
    mode: &'static str,
    low: u32,
    high: u32,
    rollback: bool,
) -> tokio::task::JoinHandle<serde_json::Value> {
    tokio::task::spawn_blocking(move || {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/clients/prepared_values.py");
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(&script)
            .arg(&url)
            .arg(mode)
            .arg(low.to_string())
            .arg(high.to_string());
        if rollback {
            cmd.arg("rollback");
        }
        let out = cmd.output().expect("run python3");
        assert!(
            out.status.success(),
            "prepared_values.py: {}",
            common::text(&out)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    })
}

/// A statement prepared with SQL `PREPARE` asks at each use, with the values bound through
/// the protocol or given to SQL `EXECUTE`: an approval of one row does not run 500. And a
/// sealed, approved grant survives a restart of the sidecar that keeps its spool (as a
/// restarted sidecar container keeps its emptyDir), but not one with another key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_values_are_asked_for_and_grants_survive_a_sidecar_restart() {
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let ns = h.namespace("prepared-values").await;
    common::label_namespace(&client, &ns, &[(common::TEST_LABEL, &ns)]).await;
    let webhook = common::Webhook::start(client.clone()).await;
    let hook_name = format!("prepared-values-{ns}");
    common::register(
        &client,
        &common::options(&hook_name, webhook.url(), Some(webhook.ca_pem.clone()), &ns),
    )
    .await;
    let policy = format!(
        "apiVersion: portcullis.dev/v1alpha1
kind: GatewayPolicy
metadata:
  name: {POLICY}
spec:
  subjects: [{{kind: ServiceAccount, name: agent}}]
  guardrails:
  - name: customer-writes
    match: {{statementKinds: [insert, update, delete], tables: [customers]}}
    action: requireApproval
  approval:
    approverGroups: [portcullis-approvers]
    timeout: 20s
    grantDuration: 1h
"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(&policy_file, &policy).expect("policy file");
    let out = h.kubectl(&["apply", "-n", &ns, "-f", &policy_file.to_string_lossy()]);
    assert!(out.status.success(), "{}", common::text(&out));
    h.service_account(&ns, "agent").await;
    for (name, rules) in [
        (
            "sidecar",
            serde_json::json!([{"apiGroups": ["portcullis.dev"], "resources": ["accessrequests"], "verbs": ["create", "get", "list", "watch"]}]),
        ),
        (
            "approver",
            serde_json::json!([{"apiGroups": ["portcullis.dev"], "resources": ["accessrequests"], "verbs": ["get", "list", "patch"]}]),
        ),
    ] {
        common::create::<Role>(
            &client,
            &ns,
            serde_json::json!({"metadata": {"name": name}, "rules": rules}),
        )
        .await;
    }
    common::create::<RoleBinding>(
        &client,
        &ns,
        serde_json::json!({
            "metadata": {"name": "sidecar"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "sidecar"},
            "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}]
        }),
    )
    .await;
    common::create::<RoleBinding>(&client, &ns, serde_json::json!({
        "metadata": {"name": "approvers"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "approver"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "portcullis-approvers"}]
    }))
    .await;
    let token = h.token(&ns, "agent", None, None).await;
    let kubeconfig = common::token_kubeconfig(
        &dir.path().join("agent.kubeconfig"),
        h.apiserver_url(),
        h.ca_file(),
        &token,
        &ns,
    );
    let creds = dir.path().join("creds");
    std::fs::create_dir_all(&creds).expect("creds dir");
    std::fs::write(creds.join("username"), "app\n").expect("user file");
    std::fs::write(creds.join("password"), format!("{}\n", h.pg_password())).expect("password");
    let flow = Flow {
        ns: ns.clone(),
        api: Api::namespaced(client.clone(), &ns),
        bob: h.kubeconfig_of(User::Approver).to_owned(),
        kubeconfig,
        dir,
    };
    let spool = flow.dir.path().join("spool");
    let sidecar = flow.sidecar(&spool).await;
    let url = |s: &portcullis_sidecar::Sidecar| {
        format!(
            "postgresql://agent@127.0.0.1:{}/shop?sslmode=disable",
            s.addr("shop-db").expect("listening").port()
        )
    };
    let through = url(&sidecar);

    // Without the sidecar, the prepared update touches every row its bound range names.
    for mode in ["bind", "execute"] {
        let direct = prepared(h.pg_url().to_owned(), mode, 1, 500, true)
            .await
            .expect("direct");
        assert!(
            direct["run"]["rows"].as_u64().is_some_and(|n| n > 1),
            "direct {mode}: {direct}"
        );
    }

    // Through it: PREPARE runs nothing and is not held; the Bind is, with its values.
    let known = flow.names().await;
    let one = prepared(through.clone(), "bind", 1, 1, false);
    let shown = flow.decide_next(&known, "approve").await;
    let one = one.await.expect("client");
    assert_eq!(one["run"]["rows"], 1, "{one}");
    assert!(
        shown.contains("PREPARE pv AS UPDATE customers")
            && shown.contains("-- bound values: $1 = '1', $2 = '1'"),
        "{shown}"
    );
    // The same prepared statement bound to 1..500 asks again, and is refused when denied.
    let known = flow.names().await;
    let wide = prepared(through.clone(), "bind", 1, 500, false);
    let shown = flow.decide_next(&known, "deny").await;
    let wide = wide.await.expect("client");
    assert!(shown.contains("$2 = '500'"), "{shown}");
    assert!(
        wide["run"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("Denied by bob")),
        "{wide}"
    );
    // SQL EXECUTE with its arguments: asked for with them, the definition shown.
    let known = flow.names().await;
    let wide = prepared(through.clone(), "execute", 1, 500, false);
    let shown = flow.decide_next(&known, "deny").await;
    let wide = wide.await.expect("client");
    assert!(
        shown.starts_with("EXECUTE pv(1, 500)") && shown.contains("-- runs: PREPARE pv AS UPDATE"),
        "{shown}"
    );
    assert!(
        wide["run"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("Denied by bob")),
        "{wide}"
    );

    // A grant survives a restart of the sidecar with its spool (and so its seal key).
    let one_row = "UPDATE customers SET full_name = full_name WHERE id = 41";
    let (agent, _notices) = connect(sidecar.addr("shop-db").expect("listening").port()).await;
    let known = flow.names().await;
    let held = tokio::spawn(async move { agent.simple_query(one_row).await.map(|_| ()) });
    flow.decide_next(&known, "approve").await;
    held.await.expect("task").expect("runs when approved");
    sidecar.shutdown().await;
    let restarted = flow.sidecar(&spool).await;
    let (agent, _notices) = connect(restarted.addr("shop-db").expect("listening").port()).await;
    let before = flow.names().await;
    agent
        .simple_query(one_row)
        .await
        .expect("the grant sealed before the restart is honoured");
    assert_eq!(flow.names().await.len(), before.len(), "no new request");
    restarted.shutdown().await;
    // A sidecar with another spool has another key: the same statement asks again.
    let fresh = flow.sidecar(&flow.dir.path().join("other-spool")).await;
    let (agent, _notices) = connect(fresh.addr("shop-db").expect("listening").port()).await;
    let known = flow.names().await;
    let held = tokio::spawn(async move { agent.simple_query(one_row).await.map(|_| ()) });
    flow.decide_next(&known, "deny").await;
    let refused = held.await.expect("task");
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("Denied by bob")
                || e.as_db_error()
                    .is_some_and(|d| d.message().contains("Denied by bob"))),
        "{refused:?}"
    );
    fresh.shutdown().await;

    common::unregister(&client, &hook_name).await;
    webhook.stop().await;
}
