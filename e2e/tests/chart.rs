//! The Helm chart with the upstream-built helm and the real kube-apiserver: lint, a matrix of
//! values, refusal of wrong values with the schema's message, a golden rendering of the
//! defaults, and an install whose every object the API server validates.

use std::process::{Command, Output};

use portcullis_e2e::{harness, repo_root};

const KUBE_VERSION: &str = "1.34.4";

fn helm(args: &[&str]) -> Output {
    let h = harness();
    Command::new(h.helm_path())
        .env("KUBECONFIG", h.kubeconfig())
        .env("HELM_CACHE_HOME", format!("{}/helm/cache", h.state_dir()))
        .env("HELM_CONFIG_HOME", format!("{}/helm/config", h.state_dir()))
        .env("HELM_DATA_HOME", format!("{}/helm/data", h.state_dir()))
        .args(args)
        .output()
        .expect("run helm")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn chart() -> String {
    repo_root()
        .join("charts/portcullis")
        .to_string_lossy()
        .into_owned()
}

fn template(extra: &[&str]) -> Output {
    let chart = chart();
    let mut args = vec![
        "template",
        "portcullis",
        chart.as_str(),
        "-n",
        "portcullis-system",
        "--kube-version",
        KUBE_VERSION,
    ];
    args.extend_from_slice(extra);
    helm(&args)
}

fn kinds(rendered: &str) -> Vec<String> {
    let mut k: Vec<String> = rendered
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(str::to_owned)
        .collect();
    k.sort();
    k
}

#[test]
fn lint_passes() {
    let chart = chart();
    let out = helm(&[
        "lint",
        chart.as_str(),
        "--kube-version",
        KUBE_VERSION,
        "--strict",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("1 chart(s) linted, 0 chart(s) failed"),
        "{}",
        text(&out)
    );
}

#[test]
fn values_matrix_renders_what_each_value_asks_for() {
    let defaults = template(&[]);
    assert!(defaults.status.success(), "{}", text(&defaults));
    let d = String::from_utf8_lossy(&defaults.stdout).into_owned();
    assert!(kinds(&d).contains(&"AuditRetention".to_owned()));
    assert!(d.contains("failurePolicy: Fail"));
    assert!(d.contains("replicas: 2"));
    assert!(d.contains("image: ghcr.io/portcullis-dev/portcullis-operator:0.1.0"));
    assert!(d.contains("--sidecar-image=ghcr.io/portcullis-dev/portcullis-sidecar:0.1.0"));
    assert!(d.contains("--sidecar-memory-limit=256Mi"));
    assert!(d.contains("image: ghcr.io/portcullis-dev/portcullis-audit:0.1.0"));
    assert!(
        d.contains(
            r#"values: ["portcullis-system","kube-system","kube-public","kube-node-lease"]"#
        ),
        "{d}"
    );
    assert!(!d.contains("cert-manager.io"));

    let cm = template(&["--set", "webhook.certManager.enabled=true"]);
    let cm = text(&cm);
    assert!(
        cm.contains("kind: Certificate") && cm.contains("kind: Issuer"),
        "{cm}"
    );
    assert!(cm.contains("cert-manager.io/inject-ca-from: portcullis-system/portcullis-webhook"));
    assert!(cm.contains("--cert-dir=/etc/portcullis/webhook-tls"));

    let no_audit =
        String::from_utf8_lossy(&template(&["--set", "audit.enabled=false"]).stdout).into_owned();
    assert!(!kinds(&no_audit).contains(&"AuditRetention".to_owned()));
    assert!(!kinds(&no_audit).contains(&"PersistentVolumeClaim".to_owned()));

    let sm = template(&[
        "--set",
        "serviceMonitor.enabled=true",
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
    ]);
    assert!(text(&sm).contains("kind: ServiceMonitor"), "{}", text(&sm));
    let sm_missing = template(&["--set", "serviceMonitor.enabled=true"]);
    assert!(!sm_missing.status.success());
    assert!(text(&sm_missing)
        .contains("serviceMonitor.enabled needs the Prometheus Operator's ServiceMonitor CRD"));

    let scoped = text(&template(&[
        "--set",
        "webhook.namespaceLabels.team=agents",
        "--set",
        "operator.replicas=3",
    ]));
    assert_eq!(
        scoped.matches("team: agents").count(),
        8,
        "the injection, decision and validation webhooks, the token, managed-objects and team-retention policies: {scoped}"
    );
    assert!(kinds(&d).contains(&"ValidatingAdmissionPolicy".to_owned()));
    assert!(d.contains("operations: [CREATE, UPDATE], resources: [pods]"));
    assert!(!d.contains("--opt-out-group"));
    let trusting = text(&template(&[
        "--set",
        "webhook.optOut.trustedGroups={platform-admins}",
        "--set",
        "webhook.optOut.trustedServiceAccounts={ci/deployer}",
        "--set",
        "webhook.admissionPolicy.enabled=false",
    ]));
    assert!(
        trusting.contains("--opt-out-group=platform-admins"),
        "{trusting}"
    );
    assert!(
        trusting.contains("--opt-out-service-account=ci/deployer"),
        "{trusting}"
    );
    // Only the team-retention policy stays: it belongs to the audit service, not the webhook.
    assert_eq!(
        trusting
            .matches("kind: ValidatingAdmissionPolicy\n")
            .count(),
        1,
        "{trusting}"
    );
    assert!(trusting.contains("-team-retention"), "{trusting}");
    assert!(d.contains("parameterNotFoundAction: Deny"), "{d}");
    assert!(d.contains("--head-file=/var/lib/portcullis/audit-head/last-head.json"));
    assert!(d.contains("--segment-bytes=67108864"), "{d}");
    assert!(scoped.contains("replicas: 3"));
}

#[test]
fn wrong_values_fail_with_the_schema_message() {
    let cases = [
        (
            "audit.retention.retainFor=forever",
            "at '/audit/retention/retainFor': 'forever' does not match pattern",
        ),
        (
            "operator.replicas=0",
            "at '/operator/replicas': minimum: got 0, want 1",
        ),
        (
            "audit.replicas=2",
            "at '/audit/replicas': maximum: got 2, want 1",
        ),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy'"),
        ("approval.notifyUrl=slack", "at '/approval/notifyUrl'"),
        (
            "operatr.replicas=1",
            "additional properties 'operatr' not allowed",
        ),
    ];
    for (set, message) in cases {
        let out = template(&["--set", set]);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(text(&out).contains(message), "{set}: {}", text(&out));
    }
}

/// The generated certificate differs on every render; everything else must not.
fn normalize(rendered: &str) -> String {
    rendered
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("tls.crt:") || t.starts_with("tls.key:") || t.starts_with("ca.crt:") {
                format!(
                    "{}<generated>",
                    &l[..l.len() - t.len() + t.find(':').map_or(0, |i| i + 1)]
                )
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
fn rendered_defaults_match_the_golden_file() {
    let out = template(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let rendered = normalize(&String::from_utf8_lossy(&out.stdout));
    let golden = repo_root().join("charts/portcullis/tests/golden/defaults.yaml");
    if std::env::var_os("PORTCULLIS_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden.parent().expect("parent")).expect("mkdir");
        std::fs::write(&golden, &rendered).expect("write golden");
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    assert!(
        rendered == expected,
        "the rendered defaults differ from charts/portcullis/tests/golden/defaults.yaml; review the change and run `PORTCULLIS_UPDATE_GOLDEN=1 cargo test -p portcullis-e2e --test chart` to accept it"
    );
}

#[tokio::test]
async fn install_into_the_cluster_creates_every_object() {
    let h = harness();
    h.install_crds().await;
    let ns = h.namespace("chart").await;
    let chart = chart();
    // Scope the webhooks to namespaces carrying this test's label, so the installed
    // configuration (whose service has no running pods here) affects no other test.
    let scope = format!("webhook.namespaceLabels.portcullis\\.dev/chart-test={ns}");
    let out = helm(&["install", &ns, chart.as_str(), "-n", &ns, "--set", &scope]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("kubectl label namespace agents portcullis.dev/inject=enabled"),
        "NOTES: {}",
        text(&out)
    );
    let fullname = format!("{ns}-portcullis");
    for (kind, name) in [
        ("deployment", format!("{fullname}-operator")),
        ("deployment", format!("{fullname}-audit")),
        ("service", format!("{fullname}-operator")),
        ("poddisruptionbudget", format!("{fullname}-operator")),
        ("persistentvolumeclaim", format!("{fullname}-audit-log")),
        ("auditretention", "default".to_owned()),
        ("role", format!("{fullname}-operator")),
    ] {
        let out = h.kubectl(&["get", "-n", &ns, kind, &name]);
        assert!(out.status.success(), "{kind}/{name}: {}", text(&out));
    }
    for (kind, name) in [
        (
            "mutatingwebhookconfiguration",
            format!("{fullname}-injector"),
        ),
        (
            "validatingwebhookconfiguration",
            format!("{fullname}-policy-validator"),
        ),
        ("clusterrole", format!("{fullname}-operator")),
    ] {
        let out = h.kubectl(&["get", kind, &name]);
        assert!(out.status.success(), "{kind}/{name}: {}", text(&out));
    }
    let out = h.kubectl(&[
        "get",
        "auditretention",
        "default",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.retainFor}",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400d");
    // The operator's service account may do what the operator needs and no more.
    let sa = format!("system:serviceaccount:{ns}:{fullname}-operator");
    let can = |verb: &str, resource: &str, namespace: &str| {
        let out = h.kubectl(&[
            "auth", "can-i", verb, resource, "-n", namespace, "--as", &sa,
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(can("watch", "gatewaypolicies.portcullis.dev", "default"));
    assert!(can("create", "configmaps", "default"));
    assert!(
        can("create", "secrets", "default"),
        "the sidecar TLS Secret of each namespace"
    );
    assert!(
        !can("update", "secrets", "default"),
        "no Secret changes outside its namespace"
    );
    assert!(!can("delete", "pods", "default"));
    assert!(
        can("delete", "accessrequests.portcullis.dev", "default"),
        "garbage collection of decided requests"
    );
    let out = helm(&["uninstall", &ns, "-n", &ns]);
    assert!(out.status.success(), "{}", text(&out));
    let out = h.kubectl(&[
        "get",
        "mutatingwebhookconfiguration",
        &format!("{fullname}-injector"),
    ]);
    assert!(!out.status.success(), "uninstall removes the webhooks");
}
