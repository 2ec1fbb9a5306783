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
            {"apiGroups": ["portcullis.dev"], "resources": ["accessrequests"], "verbs": ["create", "get", "list", "watch"]}
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
            .args([
                "replay",
                &path.to_string_lossy(),
                "--instant",
                "--raw",
                "--hide-input",
            ])
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

/// kubectl exec with raw bytes on standard input.
fn kubectl_bytes(kubeconfig: &str, spdy: bool, stdin: &[u8], args: &[&str]) -> Output {
    use std::io::Write;
    let h = harness();
    let mut child = Command::new(h.kubectl_path())
        .env("KUBECONFIG", kubeconfig)
        .env(
            "KUBECTL_REMOTE_COMMAND_WEBSOCKETS",
            if spdy { "false" } else { "true" },
        )
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin).expect("write stdin");
    drop(pipe);
    child.wait_with_output().expect("kubectl output")
}

/// How an attack reaches the exec stream.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// kubectl over WebSocket (`v5.channel.k8s.io`).
    KubectlWebSocket,
    /// kubectl over SPDY/3.1.
    KubectlSpdy,
    /// The Python kubernetes client's stream(), in one of recording_attacks.py's modes.
    Python(&'static str),
}

/// Where a client connects.
struct Target<'a> {
    /// A kubeconfig (kubectl; Python when `sa_dir` is `None`).
    kubeconfig: &'a str,
    /// The sidecar's port and the agent's service-account directory (Python in-cluster).
    in_cluster: Option<(u16, &'a Path)>,
    namespace: &'a str,
}

/// Run `cat` in the target pod with `stdin`; returns (success, standard output).
fn run_cat(client: Client, target: &Target<'_>, stdin: &[u8]) -> (bool, String) {
    match client {
        Client::KubectlWebSocket | Client::KubectlSpdy => {
            let out = kubectl_bytes(
                target.kubeconfig,
                matches!(client, Client::KubectlSpdy),
                stdin,
                &[
                    "exec",
                    "-i",
                    "-n",
                    target.namespace,
                    "web-0",
                    "-c",
                    "app",
                    "--",
                    "cat",
                ],
            );
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        }
        Client::Python(mode) => {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/recording_attacks.py");
            let value = String::from_utf8_lossy(stdin)
                .trim_end_matches('\n')
                .to_owned();
            let mut cmd = Command::new("python3");
            cmd.arg(&script)
                .arg(mode)
                .arg(&value)
                .env("NAMESPACE", target.namespace)
                .env("POD", "web-0");
            match target.in_cluster {
                Some((port, sa)) => {
                    cmd.env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
                        .env("KUBERNETES_SERVICE_PORT", port.to_string())
                        .env("SA_DIR", sa);
                }
                None => {
                    cmd.env("KUBECONFIG_FILE", target.kubeconfig);
                }
            }
            let out = cmd.output().expect("run python3");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let result: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
                panic!("recording_attacks.py {mode}: {e}: {}", common::text(&out))
            });
            (
                result["open"].as_bool().unwrap_or(false),
                result["stdout"].as_str().unwrap_or_default().to_owned(),
            )
        }
    }
}

/// One attack of the table.
struct Attack {
    family: &'static str,
    client: Client,
    /// Sent to `cat`; holds a unique word that names the attack's recording.
    stdin: Vec<u8>,
    /// A value that the screen shows and the direct session returns, and that must not be in
    /// the recording, the records or (live masking on) the client's output.
    secret: Option<&'static str>,
}

/// The recording (file text, input, output) whose input holds `word`.
fn recording_with(spool: &Path, word: &str) -> Option<(String, String, String, serde_json::Value)> {
    let dir = spool.join("recordings");
    for entry in std::fs::read_dir(&dir).ok()?.flatten() {
        if !entry.file_name().to_string_lossy().ends_with(".cast") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).ok()?;
        let (header, output, input) = recorded_output(&entry.path());
        if input.contains(word) || output.contains(word) {
            return Some((text, input, output, header));
        }
    }
    None
}

/// Move the recording whose text is `text` out of the way, so the next case finds its own.
fn set_aside(spool: &Path, text: &str) {
    for entry in std::fs::read_dir(spool.join("recordings"))
        .expect("recordings")
        .flatten()
    {
        if std::fs::read_to_string(entry.path()).is_ok_and(|t| t == text) {
            let done = spool.join("checked");
            std::fs::create_dir_all(&done).expect("checked dir");
            std::fs::rename(entry.path(), done.join(entry.file_name())).expect("move");
        }
    }
}

/// The families of issue "recordings a reviewer can trust", each with kubectl (WebSocket and
/// SPDY) or the Python client, first directly against the API server (the attack's data runs
/// and shows), then through the sidecar (recorded, masked, refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_hold_every_input_and_no_masked_value() {
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let ns = h.namespace("recording-attacks").await;
    let dir = tempfile::tempdir().expect("temp dir");
    h.service_account(&ns, "agent").await;
    common::create::<Role>(
        &client,
        &ns,
        serde_json::json!({
            "metadata": {"name": "agent"},
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
        serde_json::json!({
            "metadata": {"name": "agent"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "agent"},
            "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": ns}]
        }),
    )
    .await;
    let target: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-0"},
        "spec": {"nodeName": h.exec_node(), "containers": [{"name": "app", "image": "app:1"}]}
    }))
    .expect("pod");
    Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &target)
        .await
        .expect("create the target pod");
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
  policies: [gdpr-exec]
policies:
- name: gdpr-exec
  masking:
  - name: ssn
    detector: regex
    pattern: '\\b\\d{{3}}-\\d{{2}}-\\d{{4}}\\b'
    strategy: redact
  guardrails:
  - name: destructive
    execCommands: [\"rm *\"]
    action: deny
  kubernetes:
    maskLiveOutput: true
",
        spool = spool.display(),
        host = api_url.host().expect("host"),
        port = api_url.port_u16().unwrap_or(443),
        ca = h.ca_file(),
        tls = tls.display(),
        token_file = token_file.display(),
    );
    let start = |config_text: String| async move {
        let config = SidecarConfig::from_yaml(&config_text).expect("sidecar config");
        let options = Options::service_account(&ns_of(&config_text), "agent");
        portcullis_sidecar::start(config, options)
            .await
            .expect("sidecar starts")
    };
    let sidecar = start(config_text.clone()).await;
    let port = sidecar.addr("cluster-api").expect("listening").port();
    let agent = common::token_kubeconfig(
        &dir.path().join("agent.kubeconfig"),
        &format!("https://127.0.0.1:{port}"),
        &agent_sa.join("ca.crt").to_string_lossy(),
        PLACEHOLDER,
        &ns,
    );
    let direct = Target {
        kubeconfig: h.kubeconfig(),
        in_cluster: None,
        namespace: &ns,
    };
    let through = |python: bool| Target {
        kubeconfig: if python { "" } else { &agent },
        in_cluster: python.then_some((port, agent_sa.as_path())),
        namespace: &ns,
    };

    let email = "alice.meyer@example.com";
    let long_line = {
        let mut l = b"fam-long ".to_vec();
        l.extend(std::iter::repeat_n(b'w', 4080));
        l.extend_from_slice(format!(" {email} end\n").as_bytes());
        l
    };
    let mut attacks = Vec::new();
    for client in [Client::KubectlWebSocket, Client::KubectlSpdy] {
        for (family, stdin, secret) in [
            (
                "colour codes inside a value",
                b"fam-colour \x1b[1malice\x1b[0m.meyer@example.com end\n".to_vec(),
                "meyer@example.com",
            ),
            (
                "backspace overstrike",
                b"fam-bs xxxxx\x08\x08\x08\x08\x08alice.meyer@example.com\n".to_vec(),
                email,
            ),
            (
                "carriage-return overstrike",
                b"fam-cr xxxxx.meyer@example.com\rfam-cr alice\n".to_vec(),
                "meyer@example.com",
            ),
            (
                "zero-width character inside a value",
                "fam-zw alice.me\u{200b}yer@example.com\n"
                    .as_bytes()
                    .to_vec(),
                "yer@example.com",
            ),
            (
                "invalid UTF-8 earlier in the line",
                b"fam-utf8 \xff\xfe alice.meyer@example.com\n".to_vec(),
                email,
            ),
            (
                "value straddling the 4096-byte flush",
                long_line.clone(),
                email,
            ),
            (
                "IBAN followed by the next column",
                b"fam-iban DE89370400440532013000 COBADEFFXXX\n".to_vec(),
                "DE89370400440532013000",
            ),
            (
                "policy regex detector (SSN)",
                b"fam-ssn 123-45-6789 x\n".to_vec(),
                "123-45-6789",
            ),
        ] {
            attacks.push(Attack {
                family,
                client,
                stdin,
                secret: Some(secret),
            });
        }
    }
    attacks.push(Attack {
        family: "stdin as WebSocket text frames",
        client: Client::Python("text-stdin"),
        stdin: b"fam-text ran-by-the-server\n".to_vec(),
        secret: None,
    });
    attacks.push(Attack {
        family: "colour codes in text frames",
        client: Client::Python("text-stdin"),
        stdin: b"fam-pycolour \x1b[1malice\x1b[0m.meyer@example.com end\n".to_vec(),
        secret: Some("meyer@example.com"),
    });
    attacks.push(Attack {
        family: "input typed one character per frame (live output split across frames)",
        client: Client::Python("per-char"),
        stdin: format!("fam-char {email}\n").into_bytes(),
        secret: Some(email),
    });
    attacks.push(Attack {
        family: "resize as a text frame",
        client: Client::Python("resize"),
        stdin: b"fam-resize\n".to_vec(),
        secret: None,
    });

    for attack in &attacks {
        let word = String::from_utf8_lossy(&attack.stdin)
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_owned();
        let what = format!("{} ({:?})", attack.family, attack.client);
        // Without the sidecar: the server runs it and the screen shows the value.
        let (ok, out) =
            tokio::task::block_in_place(|| run_cat(attack.client, &direct, &attack.stdin));
        assert!(
            ok || matches!(attack.client, Client::Python(_)),
            "{what}: direct session failed"
        );
        assert!(out.contains(&word), "{what}: direct output {out:?}");
        if let Some(secret) = attack.secret {
            assert!(out.contains(secret), "{what}: direct output {out:?}");
        }
        // Through the sidecar.
        let python = matches!(attack.client, Client::Python(_));
        let (_, out) =
            tokio::task::block_in_place(|| run_cat(attack.client, &through(python), &attack.stdin));
        assert!(
            out.contains(&word),
            "{what}: output through the sidecar {out:?}"
        );
        let (text, input, _output, header) = common::eventually(
            Duration::from_secs(15),
            &format!("the recording of {what}"),
            || {
                let spool = spool.clone();
                let word = word.clone();
                async move { recording_with(&spool, &word) }
            },
        )
        .await;
        assert!(
            input.contains(&word),
            "{what}: input not recorded: {input:?}"
        );
        if let Some(secret) = attack.secret {
            assert!(
                !text.contains(secret),
                "{what}: recording holds {secret}: {text}"
            );
            assert!(
                !out.contains(secret),
                "{what}: live output holds {secret}: {out:?}"
            );
        }
        if attack.family == "resize as a text frame" {
            assert!(text.contains("\"r\",\"123x45\""), "{what}: {text}");
        }
        assert_eq!(header["version"], 2);
        // The recording is moved out of the way so the next attack finds its own.
        set_aside(&spool, &text);
    }

    // Live output split across frames with a pause, decorated with colour codes or put
    // together by moving the cursor back: the screen shows the value (directly), the client
    // and the recording never get it in clear (through the sidecar), whether the pause is
    // shorter or longer than the longest hold.
    for (family, script, shown) in [
        (
            "live-pause",
            "printf 'fam-live-pause alice.meyer@exa'; sleep 0.3; printf 'mple.com end\\n'",
            "alice.meyer@example.com",
        ),
        (
            "live-long-pause",
            "printf 'fam-live-long-pause alice.meyer@exa'; sleep 1.5; printf 'mple.com end\\n'",
            "alice.meyer@example.com",
        ),
        (
            "live-colour",
            "printf 'fam-live-colour \\033[31malice.meyer@\\033[0mexa'; sleep 0.3; printf '\\033[1mmple\\033[0m.com end\\n'",
            "alice.meyer@",
        ),
        (
            "live-cursor",
            "printf 'fam-live-cursor alice.meyer@exaXY'; sleep 0.3; printf '\\033[2Dmple.com end\\n'",
            "alice.meyer@exa",
        ),
        (
            "live-drawn",
            "printf 'fam-live-drawn       @example.com'; sleep 0.3; printf '\\033[17D\\033[32malice\\033[0m\\n'",
            "@example.com",
        ),
    ] {
        for spdy in [false, true] {
            let what = format!("{family} (spdy {spdy})");
            let args = |ns: Option<&str>| {
                let mut a = vec!["exec".to_owned()];
                if let Some(ns) = ns {
                    a.extend(["-n".to_owned(), ns.to_owned()]);
                }
                a.extend(["web-0", "-c", "app", "--", "sh", "-c", script].map(str::to_owned));
                a
            };
            let direct_args = args(Some(&ns));
            let direct_args: Vec<&str> = direct_args.iter().map(String::as_str).collect();
            let out = tokio::task::block_in_place(|| kubectl(h.kubeconfig(), spdy, None, &direct_args));
            let screen = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "{what}: direct {}", common::text(&out));
            assert!(screen.contains(shown), "{what}: direct output {screen:?}");
            let through_args = args(None);
            let through_args: Vec<&str> = through_args.iter().map(String::as_str).collect();
            let out = tokio::task::block_in_place(|| kubectl(&agent, spdy, None, &through_args));
            let live = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "{what}: {}", common::text(&out));
            assert!(live.contains(&format!("fam-{family} ")), "{what}: {live:?}");
            assert!(
                live.contains(" end") || !script.contains(" end"),
                "{what}: {live:?}"
            );
            for part in ["alice", "meyer", "example", "mple.com"] {
                assert!(!live.contains(part), "{what}: live output holds {part}: {live:?}");
            }
            let word = format!("fam-{family}");
            let (text, _, _, _) = common::eventually(
                Duration::from_secs(15),
                &format!("the recording of {what}"),
                || {
                    let spool = spool.clone();
                    let word = word.clone();
                    async move { recording_with(&spool, &word) }
                },
            )
            .await;
            // The events (the header's command is the script as written, in fragments).
            let events = text.split_once('\n').map(|(_, e)| e).unwrap_or_default();
            for part in ["alice", "meyer", "example", "mple.com"] {
                assert!(!events.contains(part), "{what}: recording holds {part}: {text}");
            }
            set_aside(&spool, &text);
        }
    }

    // A session longer than a recording part: it rolls over into parts, each hashed, named
    // by its hash and reported in order; replaying the parts one after the other gives the
    // whole session. With `recordingLimit: endSession` the session ends at the limit instead,
    // with a message to the client. (Parts are ordinary finished recordings, which the
    // shipper uploads; see the sidecar's shipping tests.)
    const PART: u64 = 16 * 1024;
    let start_small = |config_text: String| async move {
        let config = SidecarConfig::from_yaml(&config_text).expect("sidecar config");
        let mut options = Options::service_account(&ns_of(&config_text), "agent");
        options.limits.max_recording_part_bytes = PART;
        portcullis_sidecar::start(config, options)
            .await
            .expect("sidecar starts")
    };
    let long_input: String = (0..2500)
        .map(|i| format!("roll-{i:05} contact alice.meyer@example.com\n"))
        .collect();
    let long_masked = long_input.replace("alice.meyer@example.com", &"*".repeat(23));
    let spool_parts = dir.path().join("spool-parts");
    let parts_sidecar = start_small(config_text.replace(
        &format!("spoolDir: {}", spool.display()),
        &format!("spoolDir: {}", spool_parts.display()),
    ))
    .await;
    let parts_port = parts_sidecar.addr("cluster-api").expect("listening").port();
    let parts_agent = common::token_kubeconfig(
        &dir.path().join("parts.kubeconfig"),
        &format!("https://127.0.0.1:{parts_port}"),
        &agent_sa.join("ca.crt").to_string_lossy(),
        PLACEHOLDER,
        &ns,
    );
    for spdy in [false, true] {
        let out = tokio::task::block_in_place(|| {
            kubectl_bytes(
                &parts_agent,
                spdy,
                long_input.as_bytes(),
                &["exec", "-i", "web-0", "-c", "app", "--", "cat"],
            )
        });
        assert!(out.status.success(), "spdy {spdy}: {}", common::text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            long_masked,
            "spdy {spdy}: live output"
        );
        let protocol = if spdy { "SPDY" } else { "v" };
        let parts = common::eventually(Duration::from_secs(20), "the parts' records", || {
            let spool = spool_parts.clone();
            async move {
                let records = common::spool_records(&spool);
                let mut parts: Vec<_> = records
                    .iter()
                    .filter_map(|r| match &r.event {
                        AuditEvent::Recording(rec) if rec.protocol.starts_with(protocol) => {
                            Some(rec.clone())
                        }
                        _ => None,
                    })
                    .collect();
                parts.sort_by_key(|p| p.part);
                parts.last().is_some_and(|p| !p.continued).then_some(parts)
            }
        })
        .await;
        assert!(parts.len() >= 4, "spdy {spdy}: {} parts", parts.len());
        let name = parts[0].name.clone();
        let (mut input, mut output, mut replayed) = (String::new(), String::new(), String::new());
        for (i, rec) in parts.iter().enumerate() {
            assert_eq!(
                rec.part as usize,
                i + 1,
                "spdy {spdy}: parts numbered in order"
            );
            assert_eq!(
                rec.name, name,
                "spdy {spdy}: every part names the session's recording"
            );
            assert_eq!(
                rec.continued,
                i + 1 < parts.len(),
                "spdy {spdy}: part {}",
                rec.part
            );
            assert!(
                rec.bytes <= PART,
                "spdy {spdy}: part {} of {} bytes",
                rec.part,
                rec.bytes
            );
            let path = spool_parts
                .join("recordings")
                .join(format!("{}.cast", rec.sha256));
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(hex::encode(Sha256::digest(&bytes)), rec.sha256);
            assert_eq!(bytes.len() as u64, rec.bytes);
            let (header, o, inp) = recorded_output(&path);
            assert_eq!(header["portcullis"]["part"], rec.part);
            output.push_str(&o);
            input.push_str(&inp);
            let replay = Command::new(common::PLUGIN)
                .args([
                    "replay",
                    &path.to_string_lossy(),
                    "--instant",
                    "--raw",
                    "--hide-input",
                ])
                .output()
                .expect("replay a part");
            assert!(replay.status.success(), "{}", common::text(&replay));
            replayed.push_str(&String::from_utf8_lossy(&replay.stdout));
        }
        assert_eq!(parts.last().and_then(|p| p.exit_code), Some(0));
        assert_eq!(
            output, long_masked,
            "spdy {spdy}: the parts hold the whole output"
        );
        assert_eq!(
            input, long_masked,
            "spdy {spdy}: the parts hold the whole input"
        );
        assert_eq!(
            replayed, long_masked,
            "spdy {spdy}: replaying the parts replays the session"
        );
        let masked: u64 = parts.iter().flat_map(|p| &p.masked).map(|m| m.values).sum();
        assert!(masked >= 2500, "spdy {spdy}: {masked} values counted");
    }
    parts_sidecar.shutdown().await;

    let spool_end = dir.path().join("spool-end");
    let end_config = config_text
        .replace(
            &format!("spoolDir: {}", spool.display()),
            &format!("spoolDir: {}", spool_end.display()),
        )
        .replace(
            "    maskLiveOutput: true\n",
            "    maskLiveOutput: true\n    recordingLimit: endSession\n",
        );
    assert!(end_config.contains("recordingLimit: endSession"));
    let end_sidecar = start_small(end_config).await;
    let end_port = end_sidecar.addr("cluster-api").expect("listening").port();
    let end_agent = common::token_kubeconfig(
        &dir.path().join("end.kubeconfig"),
        &format!("https://127.0.0.1:{end_port}"),
        &agent_sa.join("ca.crt").to_string_lossy(),
        PLACEHOLDER,
        &ns,
    );
    for spdy in [false, true] {
        let out = tokio::task::block_in_place(|| {
            kubectl_bytes(
                &end_agent,
                spdy,
                long_input.as_bytes(),
                &["exec", "-i", "web-0", "-c", "app", "--", "cat"],
            )
        });
        assert!(
            !out.status.success(),
            "spdy {spdy}: the session went on past the limit"
        );
        assert!(
            common::text(&out).contains("recording reached the size limit"),
            "spdy {spdy}: {}",
            common::text(&out)
        );
        let live = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            live.len() < long_masked.len(),
            "spdy {spdy}: {} bytes",
            live.len()
        );
        let protocol = if spdy { "SPDY" } else { "v" };
        let rec = common::eventually(
            Duration::from_secs(20),
            "the ended session's record",
            || {
                let spool = spool_end.clone();
                async move {
                    common::spool_records(&spool)
                        .iter()
                        .find_map(|r| match &r.event {
                            AuditEvent::Recording(rec) if rec.protocol.starts_with(protocol) => {
                                Some(rec.clone())
                            }
                            _ => None,
                        })
                }
            },
        )
        .await;
        assert!(
            rec.bytes <= PART && !rec.continued && rec.part == 0,
            "{rec:?}"
        );
        let path = spool_end
            .join("recordings")
            .join(format!("{}.cast", rec.sha256));
        let text = std::fs::read_to_string(&path).expect("recording");
        let last: serde_json::Value =
            serde_json::from_str(text.lines().last().unwrap_or_default()).expect("last event");
        assert_eq!(last[1], "m", "{text}");
        assert!(
            last[2].as_str().unwrap_or_default().contains("endSession"),
            "{last}"
        );
        // Nothing reached the client that the recording does not hold.
        let (_, recorded, _) = recorded_output(&path);
        assert!(
            recorded.starts_with(&live) || live.len() <= recorded.len(),
            "spdy {spdy}"
        );
        assert!(!text.contains("alice.meyer"), "{text}");
    }
    end_sidecar.shutdown().await;

    // A frame on a channel a client never writes: the API server ignores it, the relay
    // refuses it and ends the session; nothing sent after it runs.
    let (open, out) = tokio::task::block_in_place(|| {
        run_cat(Client::Python("bad-channel"), &direct, b"fam-after\n")
    });
    assert!(
        open && out.contains("fam-after"),
        "direct: open {open}, {out:?}"
    );
    let (_, out) = tokio::task::block_in_place(|| {
        run_cat(
            Client::Python("bad-channel"),
            &through(true),
            b"fam-after\n",
        )
    });
    assert!(!out.contains("fam-after"), "through the sidecar: {out:?}");
    let refused = common::eventually(
        Duration::from_secs(15),
        "the refused frame's recording",
        || {
            let spool = spool.clone();
            async move {
                let dir = spool.join("recordings");
                std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
                    if !e.file_name().to_string_lossy().ends_with(".cast") {
                        return None;
                    }
                    let t = std::fs::read_to_string(e.path()).ok()?;
                    t.contains("frame refused").then_some(t)
                })
            }
        },
    )
    .await;
    assert!(
        refused.contains("client data on output channel 1"),
        "{refused}"
    );

    // A command that is refused: its value is masked in every field of the record.
    let out = kubectl(
        &agent,
        false,
        None,
        &[
            "exec",
            "web-0",
            "--",
            "sh",
            "-c",
            &format!("rm -f /tmp/{email}"),
        ],
    );
    assert!(
        !out.status.success() && common::text(&out).contains("guardrail destructive"),
        "{}",
        common::text(&out)
    );

    // Replay: cursor-up-and-erase, clipboard and title sequences are shown as text; input
    // is shown, marked.
    let hostile =
        b"fam-replay hidden-line\n\x1b[1A\x1b[2K\x1b]52;c;aGk=\x07\x1b]0;pwned\x07shown\n";
    let out = kubectl_bytes(
        &agent,
        false,
        hostile,
        &["exec", "-i", "web-0", "--", "cat"],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    let (path, _) = common::eventually(Duration::from_secs(15), "the hostile recording", || {
        let spool = spool.clone();
        async move {
            let dir = spool.join("recordings");
            std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
                if !e.file_name().to_string_lossy().ends_with(".cast") {
                    return None;
                }
                let t = std::fs::read_to_string(e.path()).ok()?;
                t.contains("fam-replay").then_some((e.path(), t))
            })
        }
    })
    .await;
    // By default the output is run through a terminal emulator: the erased line is shown as
    // the screen before it changed, the final screen is what the user saw, nothing of the
    // sequences reaches the reviewer's terminal.
    let replay = Command::new(common::PLUGIN)
        .args(["replay", &path.to_string_lossy(), "--instant"])
        .output()
        .expect("replay");
    let shown = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "{}", common::text(&replay));
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
        "{shown:?}"
    );
    assert!(
        shown.contains("before it changed\u{27e7}\nfam-replay hidden-line\n\u{27e6}end of screen"),
        "{shown:?}"
    );
    assert!(
        shown.ends_with("\u{27e6}screen at the end\u{27e7}\nshown\n"),
        "{shown:?}"
    );
    assert!(shown.contains(" s: fam-replay hidden-line"), "{shown:?}");
    // With --escaped, the sequences are shown as text.
    let replay = Command::new(common::PLUGIN)
        .args(["replay", &path.to_string_lossy(), "--instant", "--escaped"])
        .output()
        .expect("replay --escaped");
    let shown = String::from_utf8_lossy(&replay.stdout);
    assert!(
        !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
        "{shown:?}"
    );
    assert!(
        shown.contains("hidden-line\n^[[1A^[[2K^[]52;c;aGk=^G^[]0;pwned^Gshown"),
        "{shown:?}"
    );
    assert!(
        shown.contains("\u{27e6}in: fam-replay hidden-line"),
        "{shown:?}"
    );
    let raw = Command::new(common::PLUGIN)
        .args([
            "replay",
            &path.to_string_lossy(),
            "--instant",
            "--raw",
            "--hide-input",
        ])
        .output()
        .expect("replay --raw");
    let raw = String::from_utf8_lossy(&raw.stdout);
    assert!(
        raw.contains("\u{1b}[1A") && !raw.contains("\u{1b}]52") && !raw.contains("\u{1b}]0;"),
        "{raw:?}"
    );

    // A sidecar stopped mid-session: the start is in the log, and the next start finishes,
    // reports and marks the partial recording.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/recording_attacks.py");
    let mut held = Command::new("python3")
        .arg(&script)
        .args(["hold", &format!("fam-kill {email}")])
        .env("NAMESPACE", &ns)
        .env("POD", "web-0")
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", port.to_string())
        .env("SA_DIR", &agent_sa)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 hold");
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(held.stdout.take().expect("stdout")));
    let first = tokio::task::block_in_place(|| lines.next())
        .and_then(Result::ok)
        .unwrap_or_default();
    assert!(first.contains("fam-kill"), "{first}");
    // What a killed sidecar leaves: the partial file as it is on disk now, and the spool.
    let partial = std::fs::read_dir(spool.join("recordings"))
        .expect("recordings")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".cast.partial"))
        .expect("the session's recording is on disk while it runs");
    let partial_name = partial.file_name();
    let snapshot = std::fs::read(partial.path()).expect("partial");
    assert!(String::from_utf8_lossy(&snapshot).contains("fam-kill"));
    let records = common::spool_records(&spool);
    let name = partial_name
        .to_string_lossy()
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(
        records
            .iter()
            .any(|r| matches!(&r.event, AuditEvent::RecordingStarted(s) if s.name == name)),
        "the recording's start is in the log while the session runs"
    );
    sidecar.shutdown().await;
    let _ = held.kill();
    let _ = held.wait();
    let spool2 = dir.path().join("spool-after-kill");
    std::fs::create_dir_all(spool2.join("recordings")).expect("spool2");
    std::fs::write(spool2.join("recordings").join(&partial_name), &snapshot).expect("snapshot");
    let sidecar = start(config_text.replace(
        &format!("spoolDir: {}", spool.display()),
        &format!("spoolDir: {}", spool2.display()),
    ))
    .await;
    let records = common::spool_records(&spool2);
    let recovered = records
        .iter()
        .find_map(|r| match &r.event {
            AuditEvent::Recording(rec) if rec.name == name => Some(rec.clone()),
            _ => None,
        })
        .expect("the partial recording is reported after the restart");
    assert!(recovered.cut_short.is_some(), "{recovered:?}");
    assert!(!spool2.join("recordings").join(&partial_name).exists());
    let file = spool2
        .join("recordings")
        .join(format!("{}.cast", recovered.sha256));
    let text = std::fs::read_to_string(&file).expect("recovered recording");
    assert_eq!(
        hex::encode(Sha256::digest(text.as_bytes())),
        recovered.sha256
    );
    assert!(text.contains("fam-kill") && !text.contains(email), "{text}");
    assert!(text.contains("recording cut short"), "{text}");

    // No masked value in any record of the spool.
    let spool_text: String = std::fs::read_dir(&spool)
        .expect("spool")
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    for secret in ["meyer@example", "DE89370400440532013000", "123-45-6789"] {
        assert!(!spool_text.contains(secret), "{secret} in the audit spool");
    }
    sidecar.shutdown().await;
}

fn ns_of(config_text: &str) -> String {
    config_text
        .lines()
        .find_map(|l| l.strip_prefix("namespace: "))
        .unwrap_or_default()
        .to_owned()
}
