//! The webhook configurations the operator is registered with (the Helm chart renders the
//! same objects; tests register them with a URL on 127.0.0.1).

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::ByteString;

use crate::inject::{INJECT_ENABLED, INJECT_LABEL};

/// Where the API server reaches the webhook server.
#[derive(Clone, Debug)]
pub enum Target {
    /// A base URL such as `https://127.0.0.1:8443`.
    Url(String),
    /// A Service of the cluster.
    Service {
        /// Namespace of the Service.
        namespace: String,
        /// Name of the Service.
        name: String,
        /// Port of the Service.
        port: i32,
    },
}

/// What the webhook configurations are built from.
#[derive(Clone, Debug)]
pub struct Options {
    /// Name of both configurations.
    pub name: String,
    /// Where the webhook server is.
    pub target: Target,
    /// PEM CA bundle; `None` leaves it to the operator (or cert-manager) to fill in.
    pub ca_bundle: Option<String>,
    /// Namespaces never sent to the webhooks (the operator's own, kube-system).
    pub excluded_namespaces: Vec<String>,
    /// Extra labels every matched namespace must carry (tests scope a configuration to their
    /// own namespaces with it).
    pub namespace_labels: BTreeMap<String, String>,
}

fn client_config(opts: &Options, path: &str) -> WebhookClientConfig {
    let ca_bundle = opts
        .ca_bundle
        .as_ref()
        .map(|c| ByteString(c.as_bytes().to_vec()));
    match &opts.target {
        Target::Url(base) => WebhookClientConfig {
            url: Some(format!("{}{path}", base.trim_end_matches('/'))),
            ca_bundle,
            service: None,
        },
        Target::Service {
            namespace,
            name,
            port,
        } => WebhookClientConfig {
            url: None,
            ca_bundle,
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(path.to_owned()),
                port: Some(*port),
            }),
        },
    }
}

fn selector(opts: &Options, inject: Option<(&str, Vec<String>)>) -> LabelSelector {
    let mut expressions = vec![LabelSelectorRequirement {
        key: "kubernetes.io/metadata.name".to_owned(),
        operator: "NotIn".to_owned(),
        values: Some(opts.excluded_namespaces.clone()),
    }];
    if let Some((operator, values)) = inject {
        expressions.push(LabelSelectorRequirement {
            key: INJECT_LABEL.to_owned(),
            operator: operator.to_owned(),
            values: Some(values),
        });
    }
    LabelSelector {
        match_labels: (!opts.namespace_labels.is_empty()).then(|| opts.namespace_labels.clone()),
        match_expressions: Some(expressions),
    }
}

fn access_request_rules() -> Vec<RuleWithOperations> {
    vec![RuleWithOperations {
        api_groups: Some(vec![portcullis_crds::GROUP.to_owned()]),
        api_versions: Some(vec![portcullis_crds::VERSION.to_owned()]),
        operations: Some(vec!["CREATE".to_owned(), "UPDATE".to_owned()]),
        // The status subresource too: only the operator writes it.
        resources: Some(vec![
            "accessrequests".to_owned(),
            "accessrequests/status".to_owned(),
        ]),
        scope: Some("Namespaced".to_owned()),
    }]
}

/// The pod rules of the injection webhooks, shared with the Helm chart.
pub const POD_RULES_YAML: &str =
    include_str!("../../../charts/portcullis/files/pod-admission-rules.yaml");

/// The pod rules of the injection webhooks: creation and update of pods, update of
/// `pods/ephemeralcontainers` ([`POD_RULES_YAML`], the chart's own file).
pub fn pod_rules() -> Vec<RuleWithOperations> {
    // The file is part of this build and parsed by a unit test; an empty list would leave
    // pods unchecked, so a parse failure is a build defect made loud at startup.
    serde_yaml::from_str(POD_RULES_YAML)
        .expect("charts/portcullis/files/pod-admission-rules.yaml parses")
}

/// The injection webhooks: `inject.portcullis.dev` for labelled namespaces (failurePolicy
/// Fail: no pod there is admitted without the sidecar) and `opt-in.portcullis.dev` for
/// pods that opt in elsewhere (failurePolicy Ignore: other namespaces never depend on the
/// operator).
pub fn mutating(opts: &Options) -> MutatingWebhookConfiguration {
    let common = |name: &str, path: &str, failure: &str, sel: LabelSelector| MutatingWebhook {
        name: name.to_owned(),
        admission_review_versions: vec!["v1".to_owned()],
        client_config: client_config(opts, path),
        failure_policy: Some(failure.to_owned()),
        match_policy: Some("Equivalent".to_owned()),
        namespace_selector: Some(sel),
        reinvocation_policy: Some("IfNeeded".to_owned()),
        rules: Some(pod_rules()),
        side_effects: "None".to_owned(),
        timeout_seconds: Some(10),
        ..MutatingWebhook::default()
    };
    let mut cfg = MutatingWebhookConfiguration {
        webhooks: Some(vec![
            common(
                "inject.portcullis.dev",
                "/mutate-pods",
                "Fail",
                selector(opts, Some(("In", vec![INJECT_ENABLED.to_owned()]))),
            ),
            common(
                "opt-in.portcullis.dev",
                "/mutate-pods-opt-in",
                "Ignore",
                selector(opts, Some(("NotIn", vec![INJECT_ENABLED.to_owned()]))),
            ),
            // Stamps who decided an AccessRequest; a decision is never recorded unstamped.
            MutatingWebhook {
                rules: Some(access_request_rules()),
                reinvocation_policy: Some("Never".to_owned()),
                ..common(
                    "accessrequests.portcullis.dev",
                    "/mutate-accessrequests",
                    "Fail",
                    selector(opts, None),
                )
            },
        ]),
        ..MutatingWebhookConfiguration::default()
    };
    cfg.metadata.name = Some(opts.name.clone());
    cfg
}

/// The GatewayPolicy validation webhook (failurePolicy Fail).
pub fn validating(opts: &Options) -> ValidatingWebhookConfiguration {
    let mut cfg = ValidatingWebhookConfiguration {
        webhooks: Some(vec![
            ValidatingWebhook {
                name: "gatewaypolicies.portcullis.dev".to_owned(),
                admission_review_versions: vec!["v1".to_owned()],
                client_config: client_config(opts, "/validate-gatewaypolicies"),
                failure_policy: Some("Fail".to_owned()),
                match_policy: Some("Equivalent".to_owned()),
                namespace_selector: Some(selector(opts, None)),
                rules: Some(vec![RuleWithOperations {
                    api_groups: Some(vec![portcullis_crds::GROUP.to_owned()]),
                    api_versions: Some(vec![portcullis_crds::VERSION.to_owned()]),
                    operations: Some(vec!["CREATE".to_owned(), "UPDATE".to_owned()]),
                    resources: Some(vec!["gatewaypolicies".to_owned()]),
                    scope: Some("Namespaced".to_owned()),
                }]),
                side_effects: "None".to_owned(),
                timeout_seconds: Some(10),
                ..ValidatingWebhook::default()
            },
            // Refuses self-approval and decisions by anyone not an approver of the policy.
            ValidatingWebhook {
                name: "accessrequests.portcullis.dev".to_owned(),
                admission_review_versions: vec!["v1".to_owned()],
                client_config: client_config(opts, "/validate-accessrequests"),
                failure_policy: Some("Fail".to_owned()),
                match_policy: Some("Equivalent".to_owned()),
                namespace_selector: Some(selector(opts, None)),
                rules: Some(access_request_rules()),
                side_effects: "None".to_owned(),
                timeout_seconds: Some(10),
                ..ValidatingWebhook::default()
            },
        ]),
        ..ValidatingWebhookConfiguration::default()
    };
    cfg.metadata.name = Some(opts.name.clone());
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_rules_cover_create_update_and_ephemeral_containers() {
        let rules = pod_rules();
        let has = |op: &str, res: &str| {
            rules.iter().any(|r| {
                r.operations.iter().flatten().any(|o| o == op)
                    && r.resources.iter().flatten().any(|x| x == res)
            })
        };
        assert!(has("CREATE", "pods"));
        assert!(has("UPDATE", "pods"));
        assert!(has("UPDATE", "pods/ephemeralcontainers"));
    }
}
