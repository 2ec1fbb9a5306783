//! The checked-in CRD YAML matches the types, every example parses, and every manifest of the
//! invalid table is refused with the message written for it.

use std::path::{Path, PathBuf};

use portcullis_crds::manifest::{parse_manifests, Manifest};
use portcullis_crds::{
    crd_files, GuardrailAction, MaskingStrategy, PolicyConfig, StatementKind, CHART_CRD_DIR,
    CRD_DIR, REGENERATE_COMMAND,
};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crds/ has a parent")
        .to_path_buf()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn checked_in_crds_match_the_types() {
    let root = repo_root();
    let generated = crd_files().expect("CRDs serialize");
    assert_eq!(generated.len(), 4);
    for dir in [CRD_DIR, CHART_CRD_DIR] {
        for (name, text) in &generated {
            let path = root.join(dir).join(name);
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == *text,
                "{dir}/{name} is out of date with the Rust types in crds/src; run `{REGENERATE_COMMAND}` and commit the result"
            );
        }
        let names: Vec<String> = yaml_files(&root.join(dir))
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        let mut expected: Vec<String> = generated.iter().map(|(n, _)| n.clone()).collect();
        expected.sort();
        assert_eq!(
            names, expected,
            "{dir} holds files the types do not generate; run `{REGENERATE_COMMAND}` and remove stale files"
        );
    }
}

#[test]
fn generated_crds_parse_back_with_the_expected_names() {
    for (name, text) in crd_files().expect("CRDs serialize") {
        let body = text.split_once('\n').map(|(_, b)| b).unwrap_or_default();
        let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_yaml::from_str(body).expect("generated YAML parses");
        assert_eq!(
            format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("")),
            name
        );
        assert_eq!(crd.spec.group, "portcullis.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["portcullis".to_owned()][..])
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name} has a status subresource"
        );
        assert!(
            version
                .additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 4),
            "{name} has printer columns"
        );
        let short = crd.spec.names.short_names.clone().unwrap_or_default();
        assert_eq!(short.len(), 1, "{name} has one short name");
    }
}

#[test]
fn every_example_parses_into_the_types() {
    let root = repo_root();
    let files = yaml_files(&root.join("examples"));
    assert!(!files.is_empty(), "examples/ holds manifests");
    let mut portcullis_objects = 0;
    let mut sidecar_configs = 0;
    for path in files {
        // Kustomize JSON patches (`*.patch.yaml`) are not objects; the e2e tests build the
        // layout they belong to.
        if path.to_string_lossy().ends_with(".patch.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read example");
        // examples/local holds standalone sidecar configurations, not Kubernetes objects.
        if path.starts_with(root.join("examples/local")) {
            portcullis_crds::SidecarConfig::from_yaml(&text)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            sidecar_configs += 1;
            continue;
        }
        let manifests = parse_manifests(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        portcullis_objects += manifests
            .iter()
            .filter(|m| !matches!(m, Manifest::Other { .. }))
            .count();
    }
    assert!(portcullis_objects >= 4, "examples cover the API kinds");
    assert!(sidecar_configs >= 1, "a standalone sidecar configuration");
}

#[test]
fn gdpr_example_masks_email_and_ssn_and_blocks_unbounded_delete() {
    let text = std::fs::read_to_string(repo_root().join("examples/gdpr/gatewaypolicy.yaml"))
        .expect("read example policy");
    let manifests = parse_manifests(&text).expect("example parses");
    let Some(Manifest::GatewayPolicy(policy)) = manifests.into_iter().next() else {
        panic!("first document is a GatewayPolicy");
    };
    let compiled = PolicyConfig::compile("customers-gdpr", 1, &policy.spec).expect("compiles");
    let masked: Vec<String> = compiled
        .masking
        .iter()
        .flat_map(|r| r.columns.iter().map(|c| c.to_string()))
        .collect();
    assert!(masked.contains(&"public.customers.email".to_owned()));
    assert!(masked.contains(&"public.customers.ssn".to_owned()));
    let ssn_rule = compiled
        .masking
        .iter()
        .find(|r| r.columns.iter().any(|c| c.column == "ssn"))
        .expect("ssn rule");
    assert_eq!(ssn_rule.strategy, MaskingStrategy::Redact);
    let delete_rule = compiled
        .guardrails
        .iter()
        .find(|g| g.missing_where && g.statement_kinds.contains(&StatementKind::Delete))
        .expect("a guardrail on DELETE without WHERE");
    assert_eq!(delete_rule.action, GuardrailAction::Deny);
    let approval = compiled.approval.expect("approval settings");
    assert_eq!(approval.timeout_seconds, 600);
    assert_eq!(approval.grant_seconds, 3600);
}

/// The expectation written at the top of an invalid manifest for the local checks.
fn local_expectation(text: &str) -> String {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("# expect-local: ")
                .or_else(|| l.strip_prefix("# expect: "))
        })
        .expect("invalid manifest has an # expect: line")
        .to_owned()
}

#[test]
fn every_invalid_manifest_is_refused_with_its_message() {
    let files = yaml_files(&repo_root().join("crds/tests/invalid"));
    assert!(files.len() >= 15, "the invalid table has at least 15 cases");
    for path in files {
        let text = std::fs::read_to_string(&path).expect("read invalid manifest");
        let expected = local_expectation(&text);
        match parse_manifests(&text) {
            Ok(_) => panic!("{} was accepted, expected: {expected}", path.display()),
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.contains(&expected),
                    "{}: message {message:?} does not contain {expected:?}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn malformed_yaml_is_a_clear_error() {
    let err = parse_manifests("apiVersion: portcullis.dev/v1alpha1\nkind: [unclosed\n")
        .expect_err("malformed YAML is refused");
    assert!(
        err.to_string()
            .starts_with("document 1: not a Kubernetes object"),
        "{err}"
    );
    let err = parse_manifests(
        "apiVersion: portcullis.dev/v1alpha1\nkind: Gateway\nmetadata: {name: x}\n",
    )
    .expect_err("unknown kind is refused");
    assert_eq!(
        err.to_string(),
        "document 1: unknown kind Gateway in portcullis.dev/v1alpha1"
    );
    let err = parse_manifests("apiVersion: portcullis.dev/v1alpha1\nkind: ProtectedResource\nmetadata: {name: x}\nspec: {type: postgres}\n")
        .expect_err("missing listenPort is refused");
    assert!(
        err.to_string()
            .contains("ProtectedResource x: spec: missing field `listenPort`"),
        "{err}"
    );
}
