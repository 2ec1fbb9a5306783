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

/// `requiredApprovals: 2` and `ownerGroups`: one approver's decision is refused until another
/// approver approved first, the same approver twice counts once, the requester never counts,
/// a member of an owner group may deny but not approve, and a stamped approval cannot be
/// rewritten or withdrawn. Each refusal is first shown to pass with the policy's defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_approvers_and_no_owner_approves() {
    let h = harness();
    h.install_crds().await;
    let client = h.client().await;
    let ns = h.namespace("approvers").await;
    common::label_namespace(&client, &ns, &[(common::TEST_LABEL, &ns)]).await;
    let webhook = common::Webhook::start(client.clone()).await;
    let name = format!("approvers-{ns}");
    common::register(
        &client,
        &common::options(&name, webhook.url(), Some(webhook.ca_pem.clone()), &ns),
    )
    .await;
    let path = repo_root().join("examples/gdpr/gatewaypolicy.yaml");
    let out = h.kubectl(&["apply", "-n", &ns, "-f", &path.to_string_lossy()]);
    assert!(out.status.success(), "{}", common::text(&out));
    // alice (agent-owners) and bob and carol (portcullis-approvers) are approvers.
    let out = h.kubectl(&[
        "patch",
        "gatewaypolicy",
        "customers-gdpr",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"approval":{"approverGroups":["portcullis-approvers","agent-owners"]}}}"#,
    ]);
    assert!(out.status.success(), "{}", common::text(&out));
    let rights = serde_json::json!([{"apiGroups": ["portcullis.dev"], "resources": ["accessrequests"], "verbs": ["create"]}]);
    let agent = Api::<AccessRequest>::namespaced(
        common::service_account_client(&client, &ns, "support-agent", rights).await,
        &ns,
    );
    let text = std::fs::read_to_string(repo_root().join("examples/gdpr/accessrequest.yaml"))
        .expect("example");
    let example: AccessRequest = serde_yaml::from_str(&text).expect("example request");
    // As the sidecar makes it: the policy's requiredApprovals in the (sealed) spec.
    let create = |name: &str, required: u32| {
        let mut ar = example.clone();
        ar.metadata.name = Some(name.to_owned());
        ar.spec.required_approvals = required;
        ar.spec.requester.service_account = format!("system:serviceaccount:{ns}:support-agent");
        let agent = agent.clone();
        async move {
            agent
                .create(&PostParams::default(), &ar)
                .await
                .expect("create a request");
        }
    };
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "decide"},
        "rules": [{"apiGroups": ["portcullis.dev"], "resources": ["accessrequests"], "verbs": ["get", "patch"]}]
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
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "agent-owners"},
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "portcullis-approvers"}
        ]
    }))
    .expect("binding");
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");
    // carol: a third approver, by impersonation.
    let carol = |args: &[&str]| {
        let mut all = vec!["--as", "carol", "--as-group", "portcullis-approvers"];
        all.extend_from_slice(args);
        h.kubectl(&all)
    };
    let plugin = |user: User, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-n", &ns]);
        common::plugin(h.kubeconfig_of(user), &all)
    };
    let api: Api<AccessRequest> = Api::namespaced(client.clone(), &ns);
    let refused = |out: &std::process::Output, expected: &str| {
        assert!(
            !out.status.success() && common::text(out).contains(expected),
            "expected a refusal naming {expected:?}: {}",
            common::text(out)
        );
    };

    // Baseline, the defaults: one approver decides, and an owner may approve.
    create("one-approver", 1).await;
    let out = plugin(User::Owner, &["approve", "one-approver", "--reason", "ok"]);
    assert!(out.status.success(), "{}", common::text(&out));
    let ar = api.get("one-approver").await.expect("get");
    assert_eq!(ar.spec.approvers(), vec!["alice"]);

    let out = h.kubectl(&[
        "patch",
        "gatewaypolicy",
        "customers-gdpr",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"approval":{"requiredApprovals":2,"ownerGroups":["agent-owners"]}}}"#,
    ]);
    assert!(out.status.success(), "{}", common::text(&out));

    // Two distinct approvers: bob's decision alone is refused.
    create("two-approvers", 2).await;
    let out = h.kubectl_as(
        User::Approver,
        &[
            "patch",
            "ar",
            "two-approvers",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"decision":{"verdict":"Approved","reason":"alone"}}}"#,
        ],
    );
    refused(&out, "requires 2 distinct approvers and 0 approved before");
    // The plugin adds bob's approval (stamped bob whatever the client writes) ...
    let out = plugin(
        User::Approver,
        &["approve", "two-approvers", "--reason", "first look"],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(
        common::text(&out).contains("approval 1 of 2 recorded"),
        "{}",
        common::text(&out)
    );
    let ar = api.get("two-approvers").await.expect("get");
    assert_eq!(ar.spec.decision, None);
    assert_eq!(ar.spec.approvals[0].approved_by.as_deref(), Some("bob"));
    // ... which cannot be rewritten as somebody else's, nor withdrawn.
    let out = carol(&[
        "patch",
        "ar",
        "two-approvers",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"approvals":[{"reason":"first look","approvedBy":"dave"}]}}"#,
    ]);
    let stored = api.get("two-approvers").await.expect("get");
    assert!(
        !out.status.success() || stored.spec.approvals[0].approved_by.as_deref() == Some("bob"),
        "{}",
        common::text(&out)
    );
    let out = carol(&[
        "patch",
        "ar",
        "two-approvers",
        "-n",
        &ns,
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/approvals"}]"#,
    ]);
    refused(&out, "cannot be");
    // bob again is the same approver.
    let out = plugin(
        User::Approver,
        &["approve", "two-approvers", "--reason", "me again"],
    );
    refused(&out, "bob already approved this AccessRequest");
    // alice owns the agent: she may not approve it ...
    let out = plugin(
        User::Owner,
        &["approve", "two-approvers", "--reason", "my agent"],
    );
    refused(&out, "owners may not approve their own workloads' requests");
    // ... carol, a second approver, decides.
    let out = carol(&[
        "patch",
        "ar",
        "two-approvers",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"decision":{"verdict":"Approved","reason":"second look"}}}"#,
    ]);
    assert!(out.status.success(), "{}", common::text(&out));
    let ar = api.get("two-approvers").await.expect("get");
    assert_eq!(ar.spec.approvers(), vec!["bob", "carol"]);
    // Nothing can be added once decided.
    let out = plugin(
        User::Owner,
        &["approve", "two-approvers", "--reason", "late"],
    );
    assert!(!out.status.success(), "{}", common::text(&out));

    // A request that asks for fewer approvers than the policy now requires gets the
    // policy's number.
    create("stale-count", 1).await;
    let out = plugin(
        User::Approver,
        &["approve", "stale-count", "--reason", "alone"],
    );
    refused(&out, "requires 2 distinct approvers and 0 approved before");

    // One denial denies, and an owner may deny.
    create("owner-denies", 2).await;
    let out = plugin(
        User::Approver,
        &["approve", "owner-denies", "--reason", "fine"],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    let out = plugin(
        User::Owner,
        &["deny", "owner-denies", "--reason", "not this one"],
    );
    assert!(out.status.success(), "{}", common::text(&out));
    let ar = api.get("owner-denies").await.expect("get");
    assert_eq!(
        ar.spec.decision.map(|d| (d.verdict, d.decided_by)),
        Some((portcullis_crds::Verdict::Denied, Some("alice".to_owned())))
    );

    // `show` says how many approvers are required and who approved.
    let out = plugin(User::Approver, &["show", "two-approvers"]);
    let shown = common::text(&out);
    assert!(shown.contains("2 distinct approvers required"), "{shown}");
    assert!(shown.contains("approval 1:  by bob"), "{shown}");

    common::unregister(&client, &name).await;
    webhook.stop().await;
}
