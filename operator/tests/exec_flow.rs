//! Kubernetes exec through the sidecar, end to end: kubectl and the Python kubernetes client
//! reach the real API server through the sidecar's Kubernetes API proxy; reads pass, secrets
//! and shells are refused with the rule's name, an approval-gated exec waits for an approver
//! and then runs; every request is in the audit spool; exec streams (WebSocket and SPDY) are
//! recorded in asciicast v2 with personal data masked, and a replay shows what was sent.
//!
//! The harness has no kubelet: its Node `portcullis-exec-peer` is served by the kubelet's own
//! streaming code (built from the pinned upstream module), which runs commands as local
//! processes, so exec goes the whole way through the real kube-apiserver.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, PostParams};
use portcullis_crds::audit::{AuditEvent, Decision};
use portcullis_crds::{AccessRequest, SidecarConfig};
use portcullis_e2e::{harness, User};
use portcullis_sidecar::approval::KubeAccess;
use portcullis_sidecar::config::Options;
use sha2::{Digest, Sha256};

const POLICY: &str = "ci-exec";
const PLACEHOLDER: &str = "portcullis-placeholder-token";

/// kubectl against the sidecar; `spdy` forces the SPDY transport.
fn kubectl(kubeconfig: &str, spdy: bool, stdin: Option<&str>, args: &[&str]) -> Output {
    let h = harness();
    let mut cmd = Command::new(h.kubectl_path());
    cmd.env("KUBECONFIG", kubeconfig)
        .env(
            "KUBECTL_REMOTE_COMMAND_WEBSOCKETS",
            if spdy { "false" } else { "true" },
        )
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().expect("run kubectl");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("kubectl output")
}

/// The output of an asciicast v2 recording: the data of its `o` events, in order.
fn recorded_output(path: &Path) -> (serde_json::Value, String, String) {
    let text = std::fs::read_to_string(path).expect("recording");
    let mut lines = text.lines();
    let header: serde_json::Value =
        serde_json::from_str(lines.next().expect("header")).expect("header json");
    let (mut output, mut input) = (String::new(), String::new());
    for line in lines {
        let event: serde_json::Value = serde_json::from_str(line).expect("event json");
        let data = event[2].as_str().unwrap_or_default();
        match event[1].as_str() {
            Some("o") => output.push_str(data),
            Some("i") => input.push_str(data),
            _ => {}
        }
    }
    (header, output, input)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_through_the_sidecar_is_decided_recorded_and_replayable() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let ns = h.namespace("exec-flow").await;

    // Admission stamps approvals (the approver's name) and refuses self-approval.
    common::label_namespace(&client, &ns, &[(common::TEST_LABEL, &ns)]).await;
    let webhook = common::Webhook::start(client.clone()).await;
    common::register(
        &client,
        &common::options(
            &format!("exec-flow-{ns}"),
            webhook.url(),
            Some(webhook.ca_pem.clone()),
            &ns,
        ),
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = format!(
        "apiVersion: portcullis.dev/v1alpha1
kind: GatewayPolicy
metadata:
  name: {POLICY}
spec:
  guardrails:
  - name: shells
    match:
      execCommands: [bash, \"sh -i*\"]
    action: deny
  - name: destructive
    match:
      execCommands: [\"rm *\"]
      execPodLabels: {{tier: web}}
    action: requireApproval
  - name: diagnostics
    match:
      execCommands: [\"echo *\", \"cat\", \"ls*\"]
    action: audit
  approval:
    approverGroups: [portcullis-approvers]
    timeout: 60s
    grantDuration: 1h
    grantScope: statement
"
    );
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(&policy_file, &policy).expect("policy file");
    let out = h.kubectl(&["apply", "-n", &ns, "-f", &policy_file.to_string_lossy()]);
    assert!(out.status.success(), "{}", common::text(&out));

    // The agent's service account: what RBAC lets it do is more than the sidecar allows, so
    // every refusal below is the sidecar's.
    h.service_account(&ns, "agent").await;
    common::create::<Role>(&client, &ns, serde_json::json!({
        "metadata": {"name": "agent"},
        "rules": [
            {"apiGroups": [""], "resources": ["pods", "secrets"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["pods/exec", "pods/attach", "pods/portforward"], "verbs": ["create", "get"]},
            {"apiGroups": ["portcullis.dev"], "resources": ["accessrequests"], "verbs": ["create", "get", "list", "watch"]},
            {"apiGroups": ["portcullis.dev"], "resources": ["accessrequests/status"], "verbs": ["get", "patch"]}
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
            "metadata": {"name": "agent"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "agent"},
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
    common::secret(&client, &ns, "db-credentials", &[("password", "s3cret")]).await;
    // The target: a pod on the exec peer's node.
    let target: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-0", "labels": {"tier": "web"}},
        "spec": {
            "nodeName": h.exec_node(),
            "containers": [{"name": "app", "image": "app:1"}]
        }
    }))
    .expect("pod");
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &target)
        .await
        .expect("create the target pod");

    // The sidecar: its serving certificate from a CA the agent trusts, the agent's real token
    // in a file only the sidecar reads.
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
    let agent_sa = dir.path().join("agent-sa");
    std::fs::create_dir_all(&agent_sa).expect("agent sa dir");
    std::fs::write(agent_sa.join("ca.crt"), &certs.ca_pem).expect("agent ca");
    std::fs::write(agent_sa.join("token"), PLACEHOLDER).expect("placeholder");
    let token = h.token(&ns, "agent", None, None).await;
    let token_file = dir.path().join("sidecar-token");
    std::fs::write(&token_file, &token).expect("token");
    let api_url: http::Uri = h.apiserver_url().parse().expect("api url");
    let spool = dir.path().join("spool");
    let config_text = format!(
        "apiVersion: portcullis.dev/sidecar-config/v1alpha1
namespace: {ns}
adminListen: 127.0.0.1:0
audit:
  spoolDir: {spool}
resources:
- name: cluster-api
  type: kubernetes
  listenPort: 0
  upstream:
    host: {host}
    port: {port}
    tlsMode: verify-full
    caFile: {ca}
  serverTls:
    certFile: {tls}/tls.crt
    keyFile: {tls}/tls.key
  tokenFile: {token_file}
  policies: [{POLICY}]
policies:
- name: {POLICY}
  purpose: Release verification
  guardrails:
  - name: shells
    execCommands: [bash, \"sh -i*\"]
    action: deny
  - name: destructive
    execCommands: [\"rm *\"]
    execPodLabels: {{tier: web}}
    action: requireApproval
  - name: diagnostics
    execCommands: [\"echo *\", \"cat\", \"ls*\"]
    action: audit
  approval:
    approverGroups: [portcullis-approvers]
    timeoutSeconds: 60
    grantSeconds: 3600
    grantScope: statement
",
        spool = spool.display(),
        host = api_url.host().expect("host"),
        port = api_url.port_u16().unwrap_or(443),
        ca = h.ca_file(),
        tls = tls.display(),
        token_file = token_file.display(),
    );
    let config_file = dir.path().join("sidecar.yaml");
    std::fs::write(&config_file, &config_text).expect("config file");
    let config = SidecarConfig::from_yaml(&config_text).expect("sidecar config");
    let mut options = Options::service_account(&ns, "agent");
    options.config_path = Some(config_file.clone());
    options.kube = KubeAccess::Kubeconfig(
        common::token_kubeconfig(
            &dir.path().join("approvals.kubeconfig"),
            h.apiserver_url(),
            h.ca_file(),
            &token,
            &ns,
        )
        .into(),
    );
    let sidecar = portcullis_sidecar::start(config, options)
        .await
        .expect("sidecar starts");
    let port = sidecar.addr("cluster-api").expect("listening").port();
    let agent = common::token_kubeconfig(
        &dir.path().join("agent.kubeconfig"),
        &format!("https://127.0.0.1:{port}"),
        &agent_sa.join("ca.crt").to_string_lossy(),
        PLACEHOLDER,
        &ns,
    );

    // 1. Reads pass through with the pod's own token (the placeholder is not one).
    let out = kubectl(&agent, false, None, &["get", "pods", "-o", "name"]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(
        common::text(&out).contains("pod/web-0"),
        "{}",
        common::text(&out)
    );
    let watch = kubectl(
        &agent,
        false,
        None,
        &["get", "pods", "--watch-only", "--request-timeout=2s"],
    );
    assert!(
        !common::text(&watch).contains("Forbidden"),
        "watch: {}",
        common::text(&watch)
    );

    // 2. Secrets and port forwarding are refused with the built-in rule's name.
    let out = kubectl(&agent, false, None, &["get", "secret", "db-credentials"]);
    assert!(!out.status.success());
    assert!(
        common::text(&out).contains("builtin/secret-reads"),
        "{}",
        common::text(&out)
    );
    let out = kubectl(&agent, false, None, &["get", "secrets"]);
    assert!(
        common::text(&out).contains("builtin/secret-reads"),
        "{}",
        common::text(&out)
    );

    // 3. An allowed exec over WebSocket: output, stderr and the exit code come through.
    let out = kubectl(
        &agent,
        false,
        None,
        &[
            "exec",
            "web-0",
            "-c",
            "app",
            "--",
            "sh",
            "-c",
            "echo hello-websocket; echo err-websocket >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", common::text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello-websocket"),
        "{}",
        common::text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("err-websocket"),
        "{}",
        common::text(&out)
    );

    // 4. The same over SPDY, with standard input: `cat` echoes what it is sent, personal data
    //    included (the live output is not masked by this policy; the recording is).
    let sent = "first line\ncontact: alice.meyer@example.com\nlast line\n";
    let out = kubectl(
        &agent,
        true,
        Some(sent),
        &["exec", "-i", "web-0", "-c", "app", "--", "cat"],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), sent);

    // 4b. A session without personal data, over WebSocket with standard input.
    let plain = "no personal data here\nsecond line\n";
    let out = kubectl(
        &agent,
        false,
        Some(plain),
        &["exec", "-i", "web-0", "-c", "app", "--", "cat"],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), plain);

    // 5. Refusals: a shell, a shell hidden in a script, and a script that cannot be analysed.
    for (args, expected) in [
        (vec!["bash"], "guardrail shells"),
        (vec!["sh", "-c", "echo x; bash"], "guardrail shells"),
        (
            vec!["sh", "-c", "eval \"$(printf id)\""],
            "cannot be analysed",
        ),
    ] {
        let mut full = vec!["exec", "web-0", "--"];
        full.extend(args.iter().copied());
        for spdy in [false, true] {
            let out = kubectl(&agent, spdy, None, &full);
            assert!(
                !out.status.success(),
                "{args:?} ran: {}",
                common::text(&out)
            );
            assert!(
                common::text(&out).contains(expected),
                "{args:?} (spdy {spdy}): {}",
                common::text(&out)
            );
        }
    }

    // 6. The Python kubernetes client, configured as an injected pod is (in-cluster
    //    environment and service-account directory).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/kube_client.py");
    let py = tokio::task::block_in_place(|| {
        Command::new("python3")
            .arg(&script)
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("KUBERNETES_SERVICE_PORT", port.to_string())
            .env("SA_DIR", &agent_sa)
            .env("NAMESPACE", &ns)
            .env("POD", "web-0")
            .output()
            .expect("run python3")
    });
    assert!(py.status.success(), "kube_client.py: {}", common::text(&py));

    // 7. An approval-gated exec waits for an approver, then runs: the file it removes (a
    //    local file, since the peer runs commands on this machine) is gone afterwards.
    let victim = dir.path().join("stale-cache");
    std::fs::write(&victim, "x").expect("victim file");
    let victim_arg = victim.to_string_lossy().into_owned();
    let agent2 = agent.clone();
    let held = tokio::task::spawn_blocking(move || {
        kubectl(
            &agent2,
            false,
            None,
            &["exec", "web-0", "--", "rm", "-f", &victim_arg],
        )
    });
    let requests: Api<AccessRequest> = Api::namespaced(client.clone(), &ns);
    let ar = common::eventually(Duration::from_secs(30), "an AccessRequest", || async {
        requests
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        ar.spec.operation.command,
        vec![
            "rm".to_owned(),
            "-f".to_owned(),
            victim.to_string_lossy().into_owned()
        ]
    );
    assert_eq!(
        ar.spec.operation.target.as_deref(),
        Some(format!("{ns}/web-0/app").as_str())
    );
    assert!(victim.exists(), "the exec must wait for the approval");
    let name = ar.metadata.name.clone().expect("name");
    let bob = h.kubeconfig_of(User::Approver);
    let approve = common::plugin(
        bob,
        &[
            "approve",
            &name,
            "-n",
            &ns,
            "--reason",
            "cache cleanup, ticket 77",
        ],
    );
    assert!(approve.status.success(), "{}", common::text(&approve));
    let out = held.await.expect("kubectl");
    assert!(
        out.status.success(),
        "approved exec: {}",
        common::text(&out)
    );
    assert!(!victim.exists(), "the approved exec ran");

    // 8. The audit spool holds every request, before forwarding, with its answer.
    let recs = common::eventually(Duration::from_secs(10), "recording records", || {
        let spool = spool.clone();
        async move {
            let recs = common::spool_records(&spool);
            let n = recs
                .iter()
                .filter(|r| matches!(r.event, AuditEvent::Recording(_)))
                .count();
            (n >= 5).then_some(recs)
        }
    })
    .await;
    let requests: Vec<_> = recs
        .iter()
        .filter_map(|r| match &r.event {
            AuditEvent::KubeRequest(k) => Some((r, k)),
            _ => None,
        })
        .collect();
    assert!(requests
        .iter()
        .any(|(_, k)| k.verb == "list" && k.resource == "pods" && k.decision == Decision::Allow));
    assert!(requests.iter().any(|(_, k)| k.resource == "secrets"
        && k.decision == Decision::Deny
        && k.rule.as_ref().is_some_and(|r| r.rule == "secret-reads")));
    let denied_execs = requests
        .iter()
        .filter(|(_, k)| k.subresource == "exec" && k.decision == Decision::Deny)
        .count();
    assert!(denied_execs >= 6, "{denied_execs} denied execs recorded");
    let approved = requests
        .iter()
        .find(|(_, k)| k.access_request.as_deref() == Some(name.as_str()))
        .expect("the approved exec's record");
    assert_eq!(approved.1.decision, Decision::RequireApproval);
    // Every forwarded request has its response.
    for (r, k) in requests
        .iter()
        .filter(|(_, k)| k.decision != Decision::Deny)
    {
        assert!(
            recs.iter().any(|x| x.session_id == r.session_id
                && matches!(&x.event, AuditEvent::KubeResponse(resp) if resp.request_id == k.request_id)),
            "no response recorded for {} {}",
            k.verb,
            k.resource
        );
    }

    // 9. Recordings: named by their hash, output masked, input recorded, exit codes kept; a
    //    replay shows what was sent.
    let recordings: Vec<_> = recs
        .iter()
        .filter_map(|r| match &r.event {
            AuditEvent::Recording(rec) => Some(rec),
            _ => None,
        })
        .collect();
    let mut seen_spdy = false;
    let mut seen_websocket = false;
    let (mut seen_plain, mut seen_masked) = (false, false);
    for rec in &recordings {
        let path = spool
            .join("recordings")
            .join(format!("{}.cast", rec.sha256));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(hex::encode(Sha256::digest(&bytes)), rec.sha256);
        assert_eq!(bytes.len() as u64, rec.bytes);
        seen_spdy |= rec.protocol.starts_with("SPDY/3.1");
        seen_websocket |=
            rec.protocol.starts_with("v5.channel") || rec.protocol.starts_with("v4.channel");
        let (header, output, input) = recorded_output(&path);
        assert_eq!(header["version"], 2);
        if output.contains("hello-websocket") {
            assert!(output.contains("err-websocket"), "{output}");
            assert_eq!(rec.exit_code, Some(3));
        }
        let replay = Command::new(common::PLUGIN)
            .args(["replay", &path.to_string_lossy(), "--instant"])
            .output()
            .expect("kubectl portcullis replay");
        assert!(replay.status.success(), "{}", common::text(&replay));
        assert_eq!(String::from_utf8_lossy(&replay.stdout), output);
        if input.contains("no personal data here") {
            // The replay shows exactly what was sent (and what the client received).
            assert_eq!(String::from_utf8_lossy(&replay.stdout), plain);
            assert!(rec.masked.is_empty());
            seen_plain = true;
        }
        if input.contains("first line") {
            assert!(!output.contains("example.com") && !input.contains("example.com"));
            assert_eq!(
                output,
                "first line\ncontact: ***********************\nlast line\n"
            );
            assert!(rec
                .masked
                .iter()
                .any(|m| m.rule.rule == "email" && m.values == 2));
            seen_masked = true;
        }
    }
    assert!(seen_spdy && seen_websocket, "{recordings:?}");
    assert!(seen_plain && seen_masked, "{recordings:?}");
    assert!(recordings.iter().any(|r| r.exit_code == Some(3)));
    let spool_text: String = std::fs::read_dir(&spool)
        .expect("spool")
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        !spool_text.contains("alice.meyer"),
        "personal data in the spool"
    );
    assert!(
        !spool_text.contains(&token),
        "the service-account token in the spool"
    );

    // 10. A policy change reaches the proxy without a restart: `ls` moves from audit to deny.
    let stricter = config_text.replace(
        "execCommands: [bash, \"sh -i*\"]",
        "execCommands: [bash, \"sh -i*\", \"ls*\"]",
    );
    assert_ne!(stricter, config_text);
    let out = kubectl(&agent, false, None, &["exec", "web-0", "--", "ls", "/"]);
    assert!(out.status.success(), "{}", common::text(&out));
    std::fs::write(&config_file, &stricter).expect("rewrite config");
    common::eventually(Duration::from_secs(15), "the reloaded exec policy", || {
        let agent = agent.clone();
        async move {
            let out = tokio::task::spawn_blocking(move || {
                kubectl(&agent, false, None, &["exec", "web-0", "--", "ls", "/"])
            })
            .await
            .ok()?;
            common::text(&out)
                .contains("guardrail shells")
                .then_some(())
        }
    })
    .await;

    sidecar.shutdown().await;
    common::unregister(&client, &format!("exec-flow-{ns}")).await;
    webhook.stop().await;
}
