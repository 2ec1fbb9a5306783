//! The CRDs against the real kube-apiserver: they install and become Established, the API
//! server serves their doc text and printer columns, every example is accepted and every
//! manifest of the invalid table is refused with the message written for it.

use std::path::{Path, PathBuf};

use portcullis_e2e::{harness, repo_root, User};

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn crds_install_and_explain_shows_the_doc_text() {
    let h = harness();
    h.install_crds().await;
    let out = h.kubectl(&["explain", "gatewaypolicy.spec"]);
    let explain = text(&out);
    assert!(out.status.success(), "{explain}");
    assert!(explain.contains("GROUP:      portcullis.dev"), "{explain}");
    assert!(
        explain.contains("Masking rules applied to query results before they reach the agent"),
        "{explain}"
    );
    assert!(explain.contains("guardrails"), "{explain}");
    let out = h.kubectl(&["explain", "protectedresource.spec.listenPort"]);
    assert!(
        text(&out).contains("Port the sidecar listens on at 127.0.0.1 inside the agent pod"),
        "{}",
        text(&out)
    );
    // Short names and the category resolve.
    for short in ["pr", "gp", "ar", "ret", "portcullis"] {
        let out = h.kubectl(&["get", short, "-A"]);
        assert!(out.status.success(), "kubectl get {short}: {}", text(&out));
    }
}

#[tokio::test]
async fn every_example_is_accepted_by_the_server() {
    let h = harness();
    h.install_crds().await;
    let ns = h.namespace("examples").await;
    let local = repo_root().join("examples/local");
    let gitops = repo_root().join("examples/gitops");
    let files: Vec<PathBuf> = yaml_files(&repo_root().join("examples"))
        .into_iter()
        // Standalone sidecar configurations are not Kubernetes objects, and the GitOps
        // layout is applied through its kustomizations below.
        .filter(|f| !f.starts_with(&local) && !f.starts_with(&gitops))
        .collect();
    assert!(files.len() >= 6, "{files:?}");
    for file in files {
        let f = file.to_string_lossy();
        let out = h.kubectl(&["apply", "-n", &ns, "--dry-run=server", "-f", &f]);
        assert!(out.status.success(), "{f}: {}", text(&out));
        assert!(
            text(&out).contains("(server dry run)"),
            "{f}: {}",
            text(&out)
        );
    }
}

#[tokio::test]
async fn the_gitops_layout_builds_and_is_accepted_by_the_server() {
    let h = harness();
    h.install_crds().await;
    let ns = h.namespace("gitops").await;
    for layer in ["base", "overlays/prod"] {
        let dir = repo_root().join("examples/gitops").join(layer);
        let d = dir.to_string_lossy();
        let out = h.kubectl(&["apply", "-n", &ns, "--dry-run=server", "-k", &d]);
        assert!(out.status.success(), "{layer}: {}", text(&out));
        for kind in ["protectedresource", "gatewaypolicy", "auditretention"] {
            assert!(text(&out).contains(kind), "{layer}: {}", text(&out));
        }
    }
    // The overlay keeps the base's rules and adds production's.
    let prod = repo_root().join("examples/gitops/overlays/prod");
    let out = h.kubectl(&["kustomize", &prod.to_string_lossy()]);
    assert!(out.status.success(), "{}", text(&out));
    let docs: Vec<serde_yaml::Value> = String::from_utf8_lossy(&out.stdout)
        .split("\n---\n")
        .map(|d| serde_yaml::from_str(d).expect("yaml"))
        .collect();
    let policy = docs
        .iter()
        .find(|d| d["kind"] == "GatewayPolicy")
        .expect("policy");
    let names = |list: &str| -> Vec<String> {
        policy["spec"][list]
            .as_sequence()
            .expect("list")
            .iter()
            .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(
        names("masking"),
        [
            "contact-details",
            "national-id",
            "payment-cards",
            "bank-accounts"
        ]
    );
    assert_eq!(
        names("guardrails"),
        ["no-unbounded-writes", "customer-writes", "bulk-export"]
    );
    assert_eq!(policy["spec"]["masking"][1]["strategy"], "hash");
    let retention = docs
        .iter()
        .find(|d| d["kind"] == "AuditRetention")
        .expect("retention");
    assert_eq!(retention["spec"]["retainFor"], "2555d");
    assert!(
        retention["spec"]["storage"].is_null(),
        "a team's AuditRetention leaves storage to the cluster's"
    );
}

#[tokio::test]
async fn every_invalid_manifest_is_rejected_with_its_message() {
    let h = harness();
    h.install_crds().await;
    let ns = h.namespace("invalid").await;
    let files = yaml_files(&repo_root().join("crds/tests/invalid"));
    assert!(files.len() >= 15);
    for file in files {
        let body = std::fs::read_to_string(&file).expect("read");
        let expected = body
            .lines()
            .find_map(|l| {
                l.strip_prefix("# expect-server: ")
                    .or_else(|| l.strip_prefix("# expect: "))
            })
            .expect("expectation line");
        let f = file.to_string_lossy();
        let out = h.kubectl(&["apply", "-n", &ns, "--dry-run=server", "-f", &f]);
        assert!(!out.status.success(), "{f} was accepted");
        assert!(
            text(&out).contains(expected),
            "{f}: server said {:?}, expected {expected:?}",
            text(&out)
        );
    }
}

#[tokio::test]
async fn printer_columns_show_in_kubectl_get() {
    let h = harness();
    h.install_crds().await;
    let ns = h.namespace("columns").await;
    for f in [
        "customers-db.yaml",
        "gatewaypolicy.yaml",
        "auditretention.yaml",
        "accessrequest.yaml",
    ] {
        let path = repo_root().join("examples/gdpr").join(f);
        let out = h.kubectl(&["apply", "-n", &ns, "-f", &path.to_string_lossy()]);
        assert!(out.status.success(), "{f}: {}", text(&out));
    }
    let header = |kind: &str| {
        let out = h.kubectl(&["get", kind, "-n", &ns]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pr = header("protectedresources");
    assert!(
        pr.lines()
            .next()
            .is_some_and(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["NAME", "TYPE", "ENDPOINT", "PORT", "READY", "PODS", "AGE"]),
        "{pr}"
    );
    assert!(
        pr.contains("customers-db   postgres   customers-db.data.svc.cluster.local   5432"),
        "{pr}"
    );
    let gp = header("gp");
    assert!(gp.starts_with("NAME"), "{gp}");
    assert!(
        gp.lines().next().is_some_and(|l| l.contains("ACCEPTED")
            && l.contains("RESOURCES")
            && l.contains("CONFIG")),
        "{gp}"
    );
    let ar = header("ar");
    assert!(
        ar.lines()
            .next()
            .is_some_and(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    "NAME",
                    "PHASE",
                    "REQUESTER",
                    "RESOURCE",
                    "COVERS",
                    "APPROVERS",
                    "DECIDED-BY",
                    "AGE"
                ]),
        "{ar}"
    );
    assert!(
        ar.contains("system:serviceaccount:agents:support-agent"),
        "{ar}"
    );
    let ret = header("ret");
    assert!(
        ret.lines()
            .next()
            .is_some_and(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["NAME", "RETAIN", "LEGAL-HOLD", "RECORDS", "VERIFIED", "AGE"]),
        "{ret}"
    );
    assert!(ret.contains("400d"), "{ret}");
    // The category lists every kind at once.
    let all = h.kubectl(&["get", "portcullis", "-n", &ns]);
    let all = text(&all);
    for kind in [
        "protectedresource.portcullis.dev/customers-db",
        "gatewaypolicy.portcullis.dev/customers-gdpr",
        "auditretention.portcullis.dev/default",
    ] {
        assert!(all.contains(kind), "{all}");
    }
}

#[tokio::test]
async fn a_decision_cannot_be_changed_once_made() {
    let h = harness();
    h.install_crds().await;
    let ns = h.namespace("decision").await;
    let path = repo_root().join("examples/gdpr/accessrequest.yaml");
    let out = h.kubectl(&["apply", "-n", &ns, "-f", &path.to_string_lossy()]);
    assert!(out.status.success(), "{}", text(&out));
    let decide = |verdict: &str| {
        let patch = format!(
            r#"{{"spec":{{"decision":{{"verdict":"{verdict}","reason":"ticket 4711"}}}}}}"#
        );
        h.kubectl(&[
            "patch",
            "-n",
            &ns,
            "ar",
            "support-agent-7f3a9c",
            "--type=merge",
            "-p",
            &patch,
        ])
    };
    let first = decide("Approved");
    assert!(first.status.success(), "{}", text(&first));
    let second = decide("Denied");
    assert!(!second.status.success());
    assert!(
        text(&second).contains("a decision cannot be changed or withdrawn once made"),
        "{}",
        text(&second)
    );
    let withdraw = h.kubectl(&[
        "patch",
        "-n",
        &ns,
        "ar",
        "support-agent-7f3a9c",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/decision"}]"#,
    ]);
    assert!(!withdraw.status.success());
    assert!(
        text(&withdraw).contains("a decision cannot be changed or withdrawn once made"),
        "{}",
        text(&withdraw)
    );
    let retarget = h.kubectl(&[
        "patch",
        "-n",
        &ns,
        "ar",
        "support-agent-7f3a9c",
        "--type=merge",
        "-p",
        r#"{"spec":{"resource":"other-db"}}"#,
    ]);
    assert!(!retarget.status.success());
    assert!(
        text(&retarget).contains("only spec.decision may change"),
        "{}",
        text(&retarget)
    );
}

#[tokio::test]
async fn ordinary_users_are_authenticated_but_not_authorized_by_default() {
    let h = harness();
    h.install_crds().await;
    // RBAC is real: alice is authenticated by her certificate and has no rights yet.
    let out = h.kubectl_as(
        User::Owner,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alice",
        "{}",
        text(&out)
    );
    let out = h.kubectl_as(User::Approver, &["get", "accessrequests", "-A"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("User \"bob\" cannot list resource \"accessrequests\""),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn the_tools_are_the_pinned_upstream_builds() {
    let h = harness();
    let versions = std::fs::read_to_string(repo_root().join("e2e/versions.env")).expect("versions");
    let pinned = |key: &str| {
        versions
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .expect("pinned version")
            .to_owned()
    };
    let out = h.kubectl(&["version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("kubectl version json");
    assert_eq!(
        v["serverVersion"]["gitVersion"],
        pinned("KUBERNETES_VERSION"),
        "{v}"
    );
    assert_eq!(
        v["clientVersion"]["gitVersion"],
        pinned("KUBERNETES_VERSION"),
        "{v}"
    );
    let helm = std::process::Command::new(h.helm_path())
        .args(["version", "--template", "{{.Version}}"])
        .output()
        .expect("run helm");
    assert_eq!(
        String::from_utf8_lossy(&helm.stdout),
        pinned("HELM_VERSION")
    );
}
