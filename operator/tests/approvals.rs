//! AccessRequest decisions at admission, against the real API server: the decider is stamped
//! from the authenticated user whatever the client wrote, only approvers of the policy may
//! decide, and nobody decides their own request.

mod common;

use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};
use portcullis_crds::AccessRequest;
use portcullis_e2e::{harness, repo_root, User};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_stamped_and_only_approvers_decide() {
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let ns = h.namespace("approvals").await;
    common::label_namespace(&client, &ns, &[(common::TEST_LABEL, &ns)]).await;
    let webhook = common::Webhook::start(client.clone()).await;
    let name = format!("approvals-{ns}");
    common::register(
        &client,
        &common::options(&name, webhook.url(), Some(webhook.ca_pem.clone()), &ns),
    )
    .await;

    let path = repo_root().join("examples/gdpr/gatewaypolicy.yaml");
    let out = h.kubectl(&["apply", "-n", &ns, "-f", &path.to_string_lossy()]);
    assert!(out.status.success(), "{}", common::text(&out));
    // The example request, created as the sidecar creates it: by the requester's own account
    // (admission checks that the requester is the creating user and the fingerprint is the
    // shown statement's, which the example carries).
    let rights = serde_json::json!([{"apiGroups": ["portcullis.dev"], "resources": ["accessrequests"], "verbs": ["create"]}]);
    let agent = common::service_account_client(&client, &ns, "support-agent", rights.clone()).await;
    let text = std::fs::read_to_string(repo_root().join("examples/gdpr/accessrequest.yaml"))
        .expect("example");
    let mut example: AccessRequest = serde_yaml::from_str(&text).expect("example request");
    assert_eq!(
        example.spec.operation.fingerprint,
        example.spec.operation.grant_fingerprint(),
        "the example's fingerprint is the one of its statement"
    );
    example.spec.requester.service_account = format!("system:serviceaccount:{ns}:support-agent");
    Api::<AccessRequest>::namespaced(agent, &ns)
        .create(&PostParams::default(), &example)
        .await
        .expect("create the example request");
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "decide"},
        "rules": [{"apiGroups": ["portcullis.dev"], "resources": ["accessrequests"], "verbs": ["get", "patch", "create"]}]
    }))
    .expect("role");
    Api::<Role>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .expect("role");
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "decide"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "decide"},
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"},
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}
        ]
    }))
    .expect("binding");
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");

    let decide = |user: User, ar: &str, body: &str| {
        h.kubectl_as(
            user,
            &["patch", "ar", ar, "-n", &ns, "--type=merge", "-p", body],
        )
    };
    // alice is not in portcullis-approvers.
    let out = decide(
        User::Owner,
        "support-agent-7f3a9c",
        r#"{"spec":{"decision":{"verdict":"Approved","reason":"ok"}}}"#,
    );
    assert!(!out.status.success());
    assert!(
        common::text(&out).contains("alice is not an approver of GatewayPolicy customers-gdpr: ask a member of groups [portcullis-approvers]"),
        "{}",
        common::text(&out)
    );
    // bob approves, claiming to be somebody else: the stamp says bob.
    let out = decide(
        User::Approver,
        "support-agent-7f3a9c",
        r#"{"spec":{"decision":{"verdict":"Approved","reason":"ticket 4711","decidedBy":"mallory","decidedAt":"2020-01-01T00:00:00Z"}}}"#,
    );
    assert!(out.status.success(), "{}", common::text(&out));
    let api: Api<AccessRequest> = Api::namespaced(client.clone(), &ns);
    let decision = api
        .get("support-agent-7f3a9c")
        .await
        .expect("get")
        .spec
        .decision
        .expect("decision");
    assert_eq!(decision.decided_by.as_deref(), Some("bob"));
    let at = decision.decided_at.expect("decidedAt").0;
    assert!(
        k8s_openapi::jiff::Timestamp::now()
            .duration_since(at)
            .as_secs()
            < 120
    );
    // Rewriting only the stamp is ignored.
    let out = decide(
        User::Approver,
        "support-agent-7f3a9c",
        r#"{"spec":{"decision":{"decidedBy":"mallory"}}}"#,
    );
    assert!(out.status.success(), "{}", common::text(&out));
    let stored = api
        .get("support-agent-7f3a9c")
        .await
        .expect("get")
        .spec
        .decision
        .expect("decision");
    assert_eq!(stored.decided_by.as_deref(), Some("bob"));
    assert_eq!(
        stored.decided_at,
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at))
    );

    // bob cannot decide a request he made himself (through a pipeline token, say).
    let own: AccessRequest = common::with_fingerprint(serde_json::from_value(serde_json::json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "AccessRequest",
        "metadata": {"name": "bobs-own"},
        "spec": {
            "requester": {"name": "bob", "serviceAccount": format!("system:serviceaccount:{ns}:ci"), "user": "bob"},
            "resource": "customers-db", "policy": "customers-gdpr", "rule": "customer-writes",
            "operation": {"kind": "sql", "statement": "DELETE FROM customers WHERE id = 1", "fingerprint": "f1"}
        }
    }))
    .expect("request"));
    let ci = Api::<AccessRequest>::namespaced(
        common::service_account_client(&client, &ns, "ci", rights).await,
        &ns,
    );
    ci.create(&PostParams::default(), &own)
        .await
        .expect("create");
    let out = decide(
        User::Approver,
        "bobs-own",
        r#"{"spec":{"decision":{"verdict":"Approved","reason":"mine"}}}"#,
    );
    assert!(!out.status.success());
    assert!(
        common::text(&out)
            .contains("bob requested this operation and cannot decide it: another approver must"),
        "{}",
        common::text(&out)
    );
    // Nor can a request be created already decided by its requester's side.
    let mut pre = own.clone();
    pre.metadata.name = Some("pre-decided".into());
    pre.spec.requester.user = None;
    pre.spec.decision = Some(portcullis_crds::Decision {
        verdict: portcullis_crds::Verdict::Approved,
        reason: "self-service".into(),
        decided_by: None,
        decided_at: None,
    });
    let err = ci
        .create(&PostParams::default(), &pre)
        .await
        .expect_err("pre-decided");
    assert!(
        err.to_string()
            .contains("requested this operation and cannot decide it"),
        "{err}"
    );

    common::unregister(&client, &name).await;
    webhook.stop().await;
}
